//! The cache's side of the bus: received invalidations applied like local writes, in
//! the order they arrived; flushes applied before the subscriber carries on; and the
//! hit-path gate (degraded mode) as an atomic load on the bus.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;

use super::ack::{Applied, AppliedSender};
use super::beat::Beat;
use super::bus::{Bus, BusEvent, EventSink};
use super::message::Scope;
use super::metrics::ClusterMetrics;
use crate::cache::{Cache, ServeGate};

impl ServeGate for Bus {
    fn may_serve(&self, stored_at: Instant, now: Instant) -> bool {
        Bus::may_serve(self, stored_at, now)
    }
}

/// The applier's queue: messages to apply, heartbeats to confirm after them.
enum Work {
    Apply(super::message::Message),
    Confirm(Beat),
}

/// The event sink that applies the bus's events to `cache`. Messages are handed to
/// one task (applying one awaits moka), so they are applied in order; a flush is
/// synchronous, so it has taken effect when the subscriber leaves degraded mode.
/// Each applied message is reported on `applied`, which the bus acknowledges to its
/// writer ([`ack`](super::ack)). Must be called inside a runtime.
pub fn apply_to(
    cache: Cache,
    metrics: ClusterMetrics,
    applied: Option<AppliedSender>,
) -> EventSink {
    let (sender, mut receiver) = mpsc::unbounded_channel::<Work>();
    let applier = cache.clone();
    tokio::spawn(async move {
        while let Some(work) = receiver.recv().await {
            let message = match work {
                Work::Apply(message) => message,
                Work::Confirm(beat) => {
                    if let Some(applied) = &applied {
                        let _ = applied.send(Applied::Beat(beat));
                    }
                    continue;
                }
            };
            if message.scope == Scope::PurgeAll {
                // As the admin purge does locally (uncacheable marks included).
                applier.purge_all().await;
            } else {
                for (invalidation, started) in message.invalidations() {
                    applier.invalidate(&invalidation, started.as_ref()).await;
                }
            }
            metrics.applied(message.delay(SystemTime::now()));
            if let Some(applied) = &applied {
                // The bus may be gone while shutting down: nobody is waiting then.
                let _ = applied.send(Applied::Message(message.origin, message.seq));
            }
        }
    });
    Arc::new(move |event| match event {
        BusEvent::Heartbeat(beat) => {
            // Confirmed once every message before it is applied; if the applier is
            // gone, never (the replica stays degraded, which is safe).
            let _ = sender.send(Work::Confirm(beat));
        }
        BusEvent::Invalidate(message) => {
            if sender.send(Work::Apply(message)).is_err() {
                // The applier is gone (shutting down): dropping everything is the
                // only safe reading of a message that cannot be applied.
                cache.flush();
            }
        }
        BusEvent::Flush(reason) => {
            tracing::info!(?reason, "cluster: flushing the local cache");
            cache.flush();
        }
    })
}
