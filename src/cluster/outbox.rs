//! This replica's invalidations on their way out (fleet contract §2): the sequence,
//! and the messages Redis has not taken yet, in order. Delivering one is two steps,
//! each retried until done: the shared tier's entries it concerns made unservable,
//! then the `PUBLISH`.
//!
//! A publish that fails (Redis gone, or just back and this replica's command connection
//! not yet) must not leave the other replicas stale until this replica's next write: the
//! message stays held and a republisher task sends it as soon as Redis answers (backoff
//! from 25 ms to 500 ms, and at once when this replica's own subscription comes back).
//! Later messages queue behind it, so order is kept. The outbox is bounded: past
//! [`MAX_PENDING`] messages they collapse into one that invalidates more (the writer's
//! whole tenant, or everything).
//!
//! Locking: a message is queued under `queue`, a `std::sync::Mutex` held for queue
//! operations only, never across an `.await`, so a write's message is always queued,
//! however busy Redis is. Delivery takes `delivery`, a `tokio::sync::Mutex`, across the
//! Redis calls on purpose, so that messages leave in sequence order and receivers see a
//! gap only when one was lost; every holder is bounded (a writer by
//! [`Outbox::write_bound`]). Publishing is rare: one per write.

use std::collections::VecDeque;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Mutex, Notify};

use super::bus::BusState;
use super::conn::{Conn, OpError};
use super::message::{now_us, Message, Partition, ReplicaId, Scope, MESSAGE_VERSION};
use super::metrics::ClusterMetrics;
use super::shared::SharedTier;
use super::Backoff;

/// Messages a replica holds while Redis does not take them; one per write, so at a
/// few hundred bytes each this bounds the outbox to well under a MiB. Past it they
/// collapse into one broader message ([`Outbox::collapse`]).
pub const MAX_PENDING: usize = 1024;

/// This replica's messages on their way out: the sequence, and those not yet taken
/// by Redis, in order. Delivering one is two steps, each retried until done: the shared
/// tier's entries it concerns made unservable, then the `PUBLISH` (fleet contract §2).
pub(super) struct Outbox {
    conn: Conn,
    channel: String,
    tier: Option<SharedTier>,
    queue: std::sync::Mutex<Queue>,
    /// Held by whoever is delivering, so that messages leave in order.
    delivery: Mutex<()>,
    /// Signalled when a publish leaves messages behind (a permit is kept if the
    /// republisher is not waiting yet).
    failed: Notify,
    metrics: ClusterMetrics,
}

#[derive(Default)]
struct Queue {
    /// The sequence number of the last message made.
    last_seq: u64,
    /// Counts messages made, never reused (a collapse reuses sequence numbers): a
    /// writer's message is delivered once `delivered` reaches its ticket.
    last_ticket: u64,
    delivered: u64,
    pending: VecDeque<Held>,
    /// How many subscribers took each recently published message (`PUBLISH`'s reply),
    /// by sequence number: the acknowledgements its writer waits for.
    receivers: std::collections::BTreeMap<u64, i64>,
}

/// Receiver counts kept; a writer reads its own right after its delivery.
const RECEIVERS_KEPT: usize = 256;

/// A message not yet delivered.
#[derive(Debug, Clone)]
struct Held {
    message: Message,
    /// Its shared-tier invalidation is done (or there is no shared tier).
    shared_done: bool,
    /// The highest ticket it stands for (more than one after a collapse).
    ticket: u64,
}

impl Queue {
    /// Queues a message; past [`MAX_PENDING`], collapses the queue.
    fn push(&mut self, held: Held) {
        self.pending.push_back(held);
        if self.pending.len() > MAX_PENDING {
            self.collapse();
        }
    }

    /// Replaces the queue by one message that invalidates at least as much: the whole
    /// tenant when every message stays in one tenant partition, else everything. It
    /// takes the first held sequence number (the sequence continues from there, so
    /// receivers see no gap), and the first one's time, so the delay metric shows how
    /// long the fleet went without it.
    fn collapse(&mut self) {
        let Some(first) = self.pending.front() else {
            return;
        };
        let partition = first.message.partition.clone();
        let one_tenant = self.pending.iter().all(|held| {
            held.message.partition == partition && held.message.scope.within_partition()
        });
        let (partition, scope) = if one_tenant {
            (partition, Scope::WholeTenant)
        } else {
            (Partition::default(), Scope::Everything)
        };
        let collapsed = Held {
            message: Message {
                partition,
                scope,
                ..first.message.clone()
            },
            shared_done: self.pending.iter().all(|held| held.shared_done),
            ticket: self
                .pending
                .iter()
                .map(|held| held.ticket)
                .max()
                .unwrap_or(0),
        };
        tracing::warn!(
            held = self.pending.len(),
            scope = ?collapsed.message.scope,
            "too many invalidations held while Redis is away: collapsed into one"
        );
        self.last_seq = collapsed.message.seq;
        self.pending.clear();
        self.pending.push_back(collapsed);
    }
}

impl Outbox {
    pub(super) fn new(
        conn: Conn,
        channel: String,
        tier: Option<SharedTier>,
        metrics: ClusterMetrics,
    ) -> Outbox {
        Outbox {
            conn,
            channel,
            tier,
            queue: std::sync::Mutex::new(Queue::default()),
            delivery: Mutex::new(()),
            failed: Notify::new(),
            metrics,
        }
    }

    /// Makes a message from `origin` and delivers it, after any still held, within
    /// [`Outbox::write_bound`] (waiting for another delivery included). Returns the
    /// message as made; on an error it stays held and the republisher delivers it.
    pub(super) async fn send(
        &self,
        origin: ReplicaId,
        partition: Partition,
        scope: Scope,
    ) -> (Message, Result<(), OpError>) {
        let (message, ticket) = {
            let mut queue = self.lock_queue();
            queue.last_seq += 1;
            queue.last_ticket += 1;
            let message = Message {
                v: MESSAGE_VERSION,
                origin,
                seq: queue.last_seq,
                sent_at_us: now_us(),
                partition,
                scope,
            };
            let ticket = queue.last_ticket;
            queue.push(Held {
                message: message.clone(),
                shared_done: self.tier.is_none(),
                ticket,
            });
            self.metrics.set_pending(queue.pending.len());
            (message, ticket)
        };
        let mut sent = 0;
        let result = match tokio::time::timeout(self.write_bound(), self.deliver(&mut sent)).await {
            Ok(result) => result,
            Err(_) => Err(OpError::Timeout),
        };
        // Another delivery (the republisher's) may have taken it while this one waited.
        let result = match result {
            Err(_) if self.lock_queue().delivered >= ticket => Ok(()),
            other => other,
        };
        if result.is_err() {
            self.failed.notify_one();
        }
        (message, result)
    }

    /// How many subscribers took message `seq` when it was published, if it was.
    pub(super) fn receivers(&self, seq: u64) -> Option<i64> {
        self.lock_queue().receivers.get(&seq).copied()
    }

    /// Messages held (not yet taken by Redis).
    pub(super) fn pending(&self) -> usize {
        self.lock_queue().pending.len()
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a writer waits for its message to be delivered: one `op_timeout` per
    /// Redis operation it needs (the shared tier's, then the `PUBLISH`).
    fn write_bound(&self) -> Duration {
        let operations = if self.tier.is_some() { 2 } else { 1 };
        self.conn.op_timeout() * operations
    }

    /// Delivers the held messages in order (shared tier, then `PUBLISH`), removing
    /// each once Redis took it, until none is left; stops at the first failure.
    /// Counts the messages it delivered in `sent`. Cancel-safe: a message cancelled
    /// mid-`PUBLISH` stays held (it may then arrive twice; receivers apply a repeat
    /// without flushing). A collapse while a message is in flight replaces it by a
    /// broader one with the same sequence number, which is then delivered too.
    async fn deliver(&self, sent: &mut u64) -> Result<(), OpError> {
        let _turn = self.delivery.lock().await;
        loop {
            let Some(front) = self.lock_queue().pending.front().cloned() else {
                return Ok(());
            };
            if !front.shared_done {
                if let Some(tier) = &self.tier {
                    tier.invalidate(&front.message.partition, &front.message.scope)
                        .await?;
                }
                let mut queue = self.lock_queue();
                if let Some(held) = queue.pending.front_mut() {
                    if held.message == front.message {
                        held.shared_done = true;
                    }
                }
                continue;
            }
            let payload = front.message.encode();
            let channel = self.channel.clone();
            let receivers = self
                .conn
                .run(|mut manager| async move {
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload)
                        .query_async::<i64>(&mut manager)
                        .await
                })
                .await?;
            *sent += 1;
            let mut queue = self.lock_queue();
            queue.receivers.insert(front.message.seq, receivers);
            while queue.receivers.len() > RECEIVERS_KEPT {
                queue.receivers.pop_first();
            }
            if queue
                .pending
                .front()
                .is_some_and(|held| held.message == front.message)
            {
                queue.pending.pop_front();
            }
            queue.delivered = queue.delivered.max(front.ticket);
            self.metrics.set_pending(queue.pending.len());
        }
    }
}

/// Sends what failed publishes left in the outbox, as soon as Redis answers: retries
/// with backoff (25 ms doubling to 500 ms), and at once when this replica's own
/// subscription is made again (Redis is back).
pub(super) async fn republish_loop(outbox: Arc<Outbox>, mut state: watch::Receiver<BusState>) {
    loop {
        outbox.failed.notified().await;
        let mut backoff = Backoff::default();
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                changed = state.wait_for(|s| s.connected) => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            let mut sent = 0;
            // No client waits on this: a few operations' worth per attempt.
            let bound = outbox.write_bound() * 4;
            let drained = tokio::time::timeout(bound, outbox.deliver(&mut sent)).await;
            outbox.metrics.republished(sent);
            if outbox.lock_queue().pending.is_empty() {
                if sent > 0 {
                    tracing::info!(messages = sent, "held invalidations republished");
                }
                break;
            }
            if let Ok(Err(error)) = drained {
                tracing::debug!(%error, "republishing held invalidations failed");
            }
            if state.borrow().connected {
                // Subscribed but the command connection is not: wait for the backoff,
                // not for a change of subscription state that already happened.
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(seq: u64, tenant: Option<&'static str>, scope: Scope) -> Message {
        Message {
            v: MESSAGE_VERSION,
            origin: ReplicaId(uuid::Uuid::nil()),
            seq,
            sent_at_us: seq * 1000,
            partition: Partition {
                contact_center_id: tenant.map(|t| Bytes::from_static(t.as_bytes())),
                group_id: None,
            },
            scope,
        }
    }

    fn start(contact_key: &str) -> Scope {
        Scope::Touched {
            contact_keys: vec![contact_key.into()],
            customer_ids: Vec::new(),
            service_ids: vec!["42".into()],
        }
    }

    fn service(id: &str) -> Scope {
        Scope::Touched {
            contact_keys: Vec::new(),
            customer_ids: Vec::new(),
            service_ids: vec![id.into()],
        }
    }

    /// Fills a queue from sequence 10 on, as `publish` does.
    fn queued(scopes: impl IntoIterator<Item = (Option<&'static str>, Scope)>) -> Queue {
        let mut queue = Queue {
            last_seq: 9,
            ..Queue::default()
        };
        for (tenant, scope) in scopes {
            queue.last_seq += 1;
            let seq = queue.last_seq;
            queue.push(Held {
                message: message(seq, tenant, scope),
                shared_done: seq.is_multiple_of(2),
                ticket: seq,
            });
        }
        queue
    }

    #[test]
    fn the_outbox_keeps_order_up_to_its_bound() {
        let queue = queued((0..MAX_PENDING).map(|i| (Some("t1"), start(&i.to_string()))));
        assert_eq!(queue.pending.len(), MAX_PENDING);
        let seqs: Vec<u64> = queue.pending.iter().map(|h| h.message.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(queue.last_seq, 9 + MAX_PENDING as u64);
    }

    #[test]
    fn an_overflowing_outbox_collapses_into_one_broader_message() {
        // (what was held, what it collapses into)
        let cases = [
            (
                vec![(Some("t1"), start("1"))],
                Some("t1"),
                Scope::WholeTenant,
            ),
            (
                vec![(Some("t1"), Scope::WholeTenant)],
                Some("t1"),
                Scope::WholeTenant,
            ),
            // Another tenant, a bare service id or a purge of everything reach further.
            (vec![(Some("t2"), start("1"))], None, Scope::Everything),
            (vec![(None, service("42"))], None, Scope::Everything),
            (vec![(Some("t1"), Scope::PurgeAll)], None, Scope::Everything),
        ];
        for (extra, tenant, scope) in cases {
            let held = (0..MAX_PENDING)
                .map(|i| (Some("t1"), start(&i.to_string())))
                .chain(extra.clone());
            let queue = queued(held);
            assert_eq!(queue.pending.len(), 1, "{extra:?}");
            // Some shared invalidations were not done: the collapsed one still owes it.
            assert!(!queue.pending[0].shared_done);
            let collapsed = &queue.pending[0].message;
            assert_eq!(
                (
                    collapsed.partition.contact_center_id.as_deref(),
                    &collapsed.scope
                ),
                (tenant.map(str::as_bytes), &scope),
                "{extra:?}"
            );
            // It takes the first held number and time; the sequence goes on from it.
            assert_eq!((collapsed.seq, collapsed.sent_at_us), (10, 10_000));
            // It stands for the last message it replaced.
            assert_eq!(queue.pending[0].ticket, 10 + MAX_PENDING as u64);
            assert_eq!(queue.last_seq, 10);
        }
    }
}
