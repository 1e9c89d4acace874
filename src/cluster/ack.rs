//! Apply acknowledgements: how a writer knows the other replicas have applied its
//! invalidation before it answers its client (fleet contract §2: B's very
//! next lookup after A's 2xx).
//!
//! Publishing alone puts the message in Redis, not in B's cache: a client that reads
//! through B the instant it holds A's 2xx can reach B before B's subscriber has applied
//! the message. So every replica, once it has applied another replica's message,
//! publishes a short acknowledgement on the namespace's ack channel, and the writer,
//! after its `PUBLISH` (whose reply says how many subscribers took the message), waits
//! for that many acknowledgements less its own, at most `op_timeout`. A replica that is
//! slow or gone costs a write that bound, never an error: past it the writer answers and
//! the bus delay is what the fleet contract allows.
//!
//! The ack payload is text, `"{origin} {seq} {acker}"`; unreadable ones are ignored.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::conn::Conn;
use super::message::ReplicaId;

/// Acknowledgements kept for this replica's recent messages; older ones are dropped
/// (their writers have stopped waiting long ago).
const KEPT: usize = 1024;

/// What the applier reports, in the order it applied things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Another replica's message (origin, sequence number): acknowledge it.
    Message(ReplicaId, u64),
    /// A heartbeat, everything before it applied: it proves what it proves now.
    Beat(super::beat::Beat),
}

/// The applier's end: report each message once it is applied.
pub type AppliedSender = mpsc::UnboundedSender<Applied>;
/// The bus's end: publishes an acknowledgement for each.
pub type AppliedReceiver = mpsc::UnboundedReceiver<Applied>;

pub fn applied_channel() -> (AppliedSender, AppliedReceiver) {
    mpsc::unbounded_channel()
}

/// Acknowledgements received for this replica's own messages, by sequence number.
#[derive(Default)]
pub(super) struct Acks {
    counts: Mutex<BTreeMap<u64, usize>>,
    arrived: Notify,
}

impl Acks {
    /// One more replica has applied message `seq`.
    pub(super) fn record(&self, seq: u64) {
        {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            *counts.entry(seq).or_default() += 1;
            while counts.len() > KEPT {
                counts.pop_first();
            }
        }
        self.arrived.notify_waiters();
    }

    fn count(&self, seq: u64) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&seq).copied().unwrap_or(0)
    }

    /// Waits until `needed` replicas have acknowledged `seq`, at most `bound`. True when
    /// they all did.
    pub(super) async fn wait(&self, seq: u64, needed: usize, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            // Registered before the count is read, so an ack in between is not missed.
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.count(seq) >= needed {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.count(seq) >= needed;
            }
        }
    }
}

pub(super) fn encode(origin: ReplicaId, seq: u64, acker: ReplicaId) -> String {
    format!("{origin} {seq} {acker}")
}

/// `(origin, seq)` of an ack payload, or `None` when it is not one.
pub(super) fn decode(payload: &[u8]) -> Option<(ReplicaId, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut fields = text.split(' ');
    let origin = uuid::Uuid::parse_str(fields.next()?).ok()?;
    let seq = fields.next()?.parse().ok()?;
    Some((ReplicaId(origin), seq))
}

/// Handles what the applier reports: each heartbeat is confirmed at once; each
/// message gets its acknowledgement published, bounded by `op_timeout`, on a task of
/// its own (a slow Redis must not hold up the heartbeats behind it). One that fails
/// only makes its writer wait out its bound.
pub(super) async fn confirm_loop(
    conn: Conn,
    channel: String,
    me: ReplicaId,
    mut applied: AppliedReceiver,
    liveness: std::sync::Arc<super::liveness::Liveness>,
) {
    while let Some(report) = applied.recv().await {
        let (origin, seq) = match report {
            Applied::Beat(beat) => {
                liveness.heard(beat, std::time::Instant::now());
                continue;
            }
            Applied::Message(origin, seq) => (origin, seq),
        };
        let payload = encode(origin, seq, me);
        let (conn, channel) = (conn.clone(), channel.clone());
        tokio::spawn(async move {
            if let Err(error) = conn.publish(channel, payload).await {
                tracing::debug!(%error, %origin, seq, "apply acknowledgement not published");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_reads_back_as_written_and_garbage_is_not_one() {
        let (origin, acker) = (ReplicaId::random(), ReplicaId::random());
        let payload = encode(origin, 42, acker);
        assert_eq!(decode(payload.as_bytes()), Some((origin, 42)));
        assert_eq!(decode(b"not an ack"), None);
        assert_eq!(decode(format!("{origin} x {acker}").as_bytes()), None);
    }

    #[tokio::test]
    async fn a_writer_waits_for_the_acks_it_needs_and_no_longer_than_its_bound() {
        let acks = std::sync::Arc::new(Acks::default());
        acks.record(7);
        assert!(acks.wait(7, 1, Duration::from_secs(5)).await);
        assert!(!acks.wait(7, 2, Duration::from_millis(20)).await);
        let late = acks.clone();
        let waiting = tokio::spawn(async move { late.wait(8, 2, Duration::from_secs(5)).await });
        acks.record(8);
        acks.record(8);
        assert!(waiting.await.expect("the waiter"));
        assert!(acks.wait(9, 0, Duration::ZERO).await, "nobody to wait for");
    }
}
