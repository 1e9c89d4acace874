//! The fleet's part of the lookup, when `[cluster]` is on: a local miss
//! asks the shared tier (and the fleet lock) before the upstream. (A write's 2xx is
//! made known fleet-wide by the `write` stage.) Without a cluster this is the
//! single-instance behaviour.

use std::future::Future;
use std::time::{Duration, Instant};

use super::broad::BroadError;
use super::Gateway;
use crate::cache::{Fill, Key};
use crate::cluster::{Coalesced, SharedTier};
use crate::trace::{Kind, Parent, Span};

impl Gateway {
    /// The shared tier, when this replica is in a fleet with `shared_cache`.
    pub(super) fn shared_tier(&self) -> Option<SharedTier> {
        self.inner.cluster.as_ref()?.shared.clone()
    }
}

/// A local miss in a fleet: the shared entry, or the upstream's answer (fetched under
/// the fleet lock, stored in the shared tier unless a write raced it). Runs inside the
/// cache's single flight, so one replica asks Redis once per cold key.
///
/// `trace`: the cache span; the shared tier's work (entry, lock, waiting on another
/// replica) is a `fleet` span under it, and storing the answer a `redis store` span.
pub(super) async fn fleet_fill(
    shared: Option<SharedTier>,
    key: Key,
    wait: Duration,
    upstream: impl Future<Output = Result<Fill, BroadError>>,
    trace: Option<Parent>,
) -> Result<Fill, BroadError> {
    let Some(shared) = shared else {
        return upstream.await;
    };
    let deadline = Instant::now() + wait;
    let (tier, at) = (&shared, &key);
    let mut span = trace.map(|t| t.child("fleet", Kind::Internal));
    if let Some(span) = &mut span {
        span.set("db.system.name", "redis");
    }
    let store_parent = span.as_ref().map(Span::parent);
    let coalesced = shared
        .coalesce(&key, deadline, |generation| async move {
            let fill = upstream.await?;
            if let (Some(generation), true) = (&generation, fill.storable) {
                let mut store = store_parent.map(|p| p.child("redis store", Kind::Client));
                if let Some(store) = &mut store {
                    store.set("db.system.name", "redis");
                    store.set("db.operation.name", "store");
                }
                // Failures are counted by the tier; the answer is served anyway.
                let stored = tier
                    .store(
                        at,
                        generation,
                        fill.broad.body(),
                        &fill.service_ids,
                        Duration::ZERO,
                    )
                    .await;
                if let (Some(store), Err(_)) = (&mut store, stored) {
                    store.set_error("shared tier store failed");
                }
            }
            Ok(fill)
        })
        .await;
    if let Some(span) = &mut span {
        let result = match &coalesced {
            Coalesced::Fetched(_) => "fetched",
            Coalesced::Shared(_) => "shared",
        };
        span.set("csgate.fleet.result", result);
    }
    drop(span);
    match coalesced {
        Coalesced::Fetched(fetched) => fetched,
        Coalesced::Shared(entry) => Ok(Fill {
            broad: super::post_filter::parse(entry.body).map_err(BroadError::Gateway)?,
            service_ids: entry.service_ids,
            storable: true,
            source: SHARED_SOURCE.into(),
            fetch_time: Duration::ZERO,
            age: entry.age,
        }),
    }
}

/// The access log's `upstream` for an answer the shared tier gave.
const SHARED_SOURCE: &str = "redis";
