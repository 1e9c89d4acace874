//! This replica's invalidations on their way out (fleet contract §2, §3), and its
//! heartbeats.
//!
//! One task, [`deliver_loop`], owns the way out. Whatever is held goes in one pipeline,
//! in order: for each message, one script that does its shared-tier step (generation
//! and markers) and then publishes it, whether that step worked or not (a message
//! whose step failed says so, `shared_pending`, and stays held until the step is
//! done). So a message never waits on the shared tier, and never on another message
//! beyond the round trip already under way: messages that arrive meanwhile go in the
//! next pipeline, and a failed pipeline is retried with everything held, newest
//! included, after a short backoff (25 ms doubling to one heartbeat interval).
//!
//! Every heartbeat interval the task also publishes this replica's heartbeat
//! ([`liveness`](super::liveness)): after everything delivered before it, with the last
//! delivered sequence number and how many messages are still held.
//!
//! A writer waits for its message to be published at most `op_timeout`, then answers
//! its client anyway: the message stays held (this replica is then degraded, and its
//! heartbeats say so, which degrades the others until it is delivered).
//!
//! The outbox is bounded: past [`MAX_PENDING`] messages they collapse into one that
//! invalidates more (the writer's whole tenant, or everything).
//!
//! Locking: `queue` is a `std::sync::Mutex` held for queue operations only, never
//! across an `.await`, so a write's message is always queued, however busy Redis is.

use std::collections::VecDeque;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use redis::Value;
use tokio::sync::Notify;

use super::conn::{Conn, OpError};
use super::liveness::{Beat, Liveness};
use super::message::{now_us, Message, Partition, ReplicaId, Scope, MESSAGE_VERSION};
use super::metrics::{ClusterMetrics, OpOutcome};
use super::shared::SharedTier;

/// Messages a replica holds while Redis does not take them; one per write, so at a
/// few hundred bytes each this bounds the outbox to well under a MiB. Past it they
/// collapse into one broader message ([`Queue::collapse`]).
pub const MAX_PENDING: usize = 1024;

/// Messages in one pipeline at most (the rest go in the next).
const BATCH: usize = 256;

/// This replica's messages on their way out.
pub(super) struct Outbox {
    conn: Conn,
    channel: String,
    heartbeat_channel: String,
    /// The fleet's member list ([`Names::members`](super::keys::Names::members)).
    members: String,
    tier: Option<SharedTier>,
    queue: std::sync::Mutex<Queue>,
    /// Wakes the delivery task: a message was queued.
    wake: Notify,
    /// Wakes writers: a pipeline finished.
    delivered: Notify,
    metrics: ClusterMetrics,
    liveness: Arc<Liveness>,
    me: ReplicaId,
}

#[derive(Default)]
struct Queue {
    /// The sequence number of the last message made.
    last_seq: u64,
    /// The highest sequence number published, for heartbeats.
    published_seq: u64,
    /// Counts messages made, never reused (a collapse reuses sequence numbers).
    last_ticket: u64,
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
    /// Its shared-tier step is done (or there is no shared tier).
    shared_done: bool,
    /// It is in Redis (its shared step may still be owed).
    published: bool,
    /// An attempt to deliver it failed: held, not merely on its way.
    failed: bool,
    /// The tickets it stands for (more than one after a collapse).
    tickets: std::ops::RangeInclusive<u64>,
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
        let low = self
            .pending
            .iter()
            .map(|held| *held.tickets.start())
            .min()
            .unwrap_or(0);
        let high = self
            .pending
            .iter()
            .map(|held| *held.tickets.end())
            .max()
            .unwrap_or(0);
        let collapsed = Held {
            message: Message {
                partition,
                scope,
                shared_pending: false,
                ..first.message.clone()
            },
            shared_done: self.pending.iter().all(|held| held.shared_done),
            published: false,
            failed: true,
            tickets: low..=high,
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

    /// (held after a failure or owing its shared step, on its way at all).
    fn counts(&self) -> (usize, usize) {
        let held = self
            .pending
            .iter()
            .filter(|h| h.failed || (h.published && !h.shared_done))
            .count();
        (held, self.pending.len())
    }

    /// Whether the message of `ticket` is in Redis.
    fn is_published(&self, ticket: u64) -> bool {
        !self
            .pending
            .iter()
            .any(|h| h.tickets.contains(&ticket) && !h.published)
    }
}

impl Outbox {
    pub(super) fn new(
        conn: Conn,
        channels: (String, String, String),
        tier: Option<SharedTier>,
        metrics: ClusterMetrics,
        liveness: Arc<Liveness>,
        me: ReplicaId,
    ) -> Outbox {
        Outbox {
            conn,
            channel: channels.0,
            heartbeat_channel: channels.1,
            members: channels.2,
            tier,
            queue: std::sync::Mutex::new(Queue::default()),
            wake: Notify::new(),
            delivered: Notify::new(),
            metrics,
            liveness,
            me,
        }
    }

    /// Makes a message and queues it for the delivery task; returns it with its ticket.
    /// Synchronous: once this returns, this replica knows it has an invalidation on its
    /// way (no refill from the shared tier until it is delivered).
    pub(super) fn queue(&self, partition: Partition, scope: Scope) -> (Message, u64) {
        let (message, ticket) = {
            let mut queue = self.lock_queue();
            queue.last_seq += 1;
            queue.last_ticket += 1;
            let message = Message {
                v: MESSAGE_VERSION,
                origin: self.me,
                seq: queue.last_seq,
                sent_at_us: now_us(),
                partition,
                scope,
                shared_pending: false,
            };
            let ticket = queue.last_ticket;
            queue.push(Held {
                message: message.clone(),
                shared_done: self.tier.is_none(),
                published: false,
                failed: false,
                tickets: ticket..=ticket,
            });
            self.counted(&queue);
            (message, ticket)
        };
        self.wake.notify_one();
        (message, ticket)
    }

    /// Waits until the message of `ticket` is in Redis, at most `bound`.
    pub(super) async fn published(&self, ticket: u64, bound: Duration) -> Result<(), OpError> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let notified = self.delivered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock_queue().is_published(ticket) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return if self.lock_queue().is_published(ticket) {
                    Ok(())
                } else {
                    Err(OpError::Timeout)
                };
            }
        }
    }

    /// How many subscribers took message `seq` when it was published, if it was.
    pub(super) fn receivers(&self, seq: u64) -> Option<i64> {
        self.lock_queue().receivers.get(&seq).copied()
    }

    /// Messages on their way (held or in flight).
    pub(super) fn pending(&self) -> usize {
        self.lock_queue().pending.len()
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn counted(&self, queue: &Queue) {
        let (held, in_flight) = queue.counts();
        self.metrics.set_pending(held);
        self.liveness.outbox(held, in_flight);
    }

    /// One pipeline: every message owing something, in order (shared step and
    /// publish in one script, or what is left of them). Returns how many were
    /// published and whether any still owes something it was sent for, or the error
    /// that failed the whole pipeline.
    async fn deliver(&self, bound: Duration) -> Result<(usize, bool), OpError> {
        let batch: Vec<Held> = self
            .lock_queue()
            .pending
            .iter()
            .take(BATCH)
            .cloned()
            .collect();
        if batch.is_empty() {
            return Ok((0, false));
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for held in &batch {
            let publish = (!held.published).then(|| {
                let failed = Message {
                    shared_pending: true,
                    ..held.message.clone()
                };
                (
                    self.channel.as_str(),
                    held.message.encode(),
                    failed.encode(),
                )
            });
            match (&self.tier, held.shared_done) {
                (Some(tier), false) => {
                    pipe.add_command(tier.invalidate_cmd(
                        &held.message.partition,
                        &held.message.scope,
                        publish,
                    ));
                }
                _ => {
                    let (channel, payload, _) = publish.unwrap_or_default();
                    pipe.cmd("PUBLISH").arg(channel).arg(payload);
                }
            }
        }
        let replies: Vec<redis::RedisResult<Value>> = self
            .conn
            .run_within(bound, |mut manager| async move {
                pipe.query_async(&mut manager).await
            })
            .await
            .inspect_err(|_| self.failed(&batch))?;
        let mut published = 0;
        let mut refused = false;
        let mut queue = self.lock_queue();
        for (held, reply) in batch.iter().zip(replies) {
            // (shared step done, subscribers that took it), when published now.
            let outcome = match (&self.tier, held.shared_done, reply) {
                (_, _, Err(error)) => {
                    tracing::debug!(%error, seq = held.message.seq, "invalidation step refused");
                    None
                }
                (Some(_), false, Ok(Value::Array(parts))) => {
                    let int = |i: usize| match parts.get(i) {
                        Some(Value::Int(n)) => *n,
                        _ => 0,
                    };
                    Some((int(0) == 1, int(1)))
                }
                (_, _, Ok(Value::Int(receivers))) => Some((true, receivers)),
                (_, _, Ok(_)) => None,
            };
            let q = &mut *queue;
            let Some(slot) = q
                .pending
                .iter_mut()
                .find(|h| h.message.seq == held.message.seq && h.tickets == held.tickets)
            else {
                continue; // collapsed meanwhile: the broader one is still owed
            };
            match outcome {
                Some((shared_done, receivers)) => {
                    if !slot.published {
                        published += 1;
                        queue_receivers(&mut q.receivers, held.message.seq, receivers);
                    }
                    slot.published = true;
                    slot.shared_done |= shared_done;
                    if !slot.shared_done {
                        refused = true;
                        tracing::warn!(
                            seq = slot.message.seq,
                            "shared tier refused an invalidation's generation write; \
                             the fleet refills nothing from it until it is done"
                        );
                    }
                }
                None => {
                    slot.failed = true;
                    refused = true;
                }
            }
        }
        while queue
            .pending
            .front()
            .is_some_and(|h| h.published && h.shared_done)
        {
            let done = queue.pending.pop_front().expect("front exists");
            queue.published_seq = queue.published_seq.max(done.message.seq);
        }
        if let Some(seq) = queue
            .pending
            .iter()
            .take_while(|h| h.published)
            .map(|h| h.message.seq)
            .max()
        {
            queue.published_seq = queue.published_seq.max(seq);
        }
        self.counted(&queue);
        drop(queue);
        self.delivered.notify_waiters();
        Ok((published, refused))
    }

    /// A whole pipeline failed: its messages are held.
    fn failed(&self, batch: &[Held]) {
        let mut queue = self.lock_queue();
        for held in batch {
            if let Some(slot) = queue
                .pending
                .iter_mut()
                .find(|h| h.message.seq == held.message.seq && h.tickets == held.tickets)
            {
                slot.failed = true;
            }
        }
        self.counted(&queue);
        drop(queue);
        self.delivered.notify_waiters();
    }

    /// Publishes one heartbeat (after everything delivered so far).
    async fn beat(&self, beat: u64, bound: Duration) -> Result<(), OpError> {
        let (seq, pending) = {
            let queue = self.lock_queue();
            let (held, _) = queue.counts();
            (queue.published_seq, u32::try_from(held).unwrap_or(u32::MAX))
        };
        let payload = Beat::Alive {
            origin: self.me,
            beat,
            seq,
            pending,
        }
        .encode();
        self.liveness.sent(beat, Instant::now());
        // With the heartbeat, this replica's entry in the member list, and the list
        // read back (members silent for peer_timeout dropped first).
        let now_ms = super::message::now_us() / 1000;
        let timeout_ms = self.liveness.timing().peer_timeout.as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH")
            .arg(&self.heartbeat_channel)
            .arg(payload)
            .ignore()
            .cmd("ZADD")
            .arg(&self.members)
            .arg(now_ms)
            .arg(self.me.to_string())
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&self.members)
            .arg("-inf")
            .arg(format!("({}", now_ms.saturating_sub(timeout_ms)))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&self.members)
            .arg(timeout_ms * 2)
            .ignore()
            .cmd("ZRANGE")
            .arg(&self.members)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        let (listed,): (Vec<(String, f64)>,) = self
            .conn
            .run_within(bound, |mut manager| async move {
                pipe.query_async(&mut manager).await
            })
            .await?;
        let members: Vec<(ReplicaId, Duration)> = listed
            .into_iter()
            .filter_map(|(id, at_ms)| {
                let id = ReplicaId(uuid::Uuid::parse_str(&id).ok()?);
                let age = now_ms.saturating_sub(at_ms.max(0.0) as u64);
                Some((id, Duration::from_millis(age)))
            })
            .collect();
        self.liveness.members(&members, Instant::now());
        Ok(())
    }

    /// Says goodbye (shutdown), so the peers stop waiting for this replica at once.
    pub(super) async fn leave(&self) {
        let payload = Beat::Leaving { origin: self.me }.encode();
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(&self.members)
            .arg(self.me.to_string())
            .ignore()
            .cmd("PUBLISH")
            .arg(&self.heartbeat_channel)
            .arg(payload)
            .ignore();
        let _ = self
            .conn
            .run(|mut manager| async move { pipe.query_async::<()>(&mut manager).await })
            .await;
    }
}

fn queue_receivers(receivers: &mut std::collections::BTreeMap<u64, i64>, seq: u64, n: i64) {
    receivers.insert(seq, n);
    while receivers.len() > RECEIVERS_KEPT {
        receivers.pop_first();
    }
}

/// The way out: delivers what is queued (at once, and again after a failure with
/// backoff from 25 ms to one heartbeat interval), publishes a heartbeat every
/// interval, and lets the liveness drop peers gone silent. `bound` limits each
/// round trip (no client waits on this task).
pub(super) async fn deliver_loop(outbox: Arc<Outbox>, bound: Duration) {
    let interval = outbox.liveness.timing().interval;
    let mut next_beat = tokio::time::Instant::now();
    let mut retry: Option<(tokio::time::Instant, Duration)> = None;
    let mut beat = 0u64;
    loop {
        let wake_at = match retry {
            Some((at, _)) => at.min(next_beat),
            None => next_beat,
        };
        tokio::select! {
            () = outbox.wake.notified(), if retry.is_none() => {}
            () = tokio::time::sleep_until(wake_at) => {}
        }
        let now = tokio::time::Instant::now();
        let due = retry.is_none_or(|(at, _)| now >= at);
        if due && outbox.pending() > 0 {
            let attempt = outbox.deliver(bound).await;
            let failed = match attempt {
                Ok((published, refused)) => {
                    outbox.metrics.published(OpOutcome::Ok);
                    if retry.is_some() && published > 0 {
                        outbox.metrics.republished(published as u64);
                        tracing::info!(messages = published, "held invalidations published");
                    }
                    refused
                }
                Err(ref error) => {
                    outbox.metrics.published(error.outcome());
                    // Once per episode at WARN (the first failure after a success);
                    // the retries at DEBUG, the recovery at INFO above.
                    if retry.is_none() {
                        tracing::warn!(
                            %error,
                            held = outbox.pending(),
                            "invalidations not delivered; held and retried (this replica \
                             and its peers are degraded until they are delivered)"
                        );
                    } else {
                        tracing::debug!(%error, "invalidations still not delivered; held");
                    }
                    true
                }
            };
            // After a failure, again with everything held after a backoff; messages
            // queued meanwhile after a success go at once (their wake-up is pending).
            retry = if failed && outbox.pending() > 0 {
                let delay = retry.map_or(Duration::from_millis(25), |(_, d)| (d * 2).min(interval));
                Some((tokio::time::Instant::now() + delay, delay))
            } else {
                None
            };
        }
        if tokio::time::Instant::now() >= next_beat {
            beat += 1;
            next_beat = tokio::time::Instant::now() + interval;
            if let Err(error) = outbox.beat(beat, bound).await {
                tracing::debug!(%error, "heartbeat not published");
            }
            let now = Instant::now();
            outbox.liveness.tick(now);
            let report = outbox.liveness.report(now);
            outbox
                .metrics
                .set_liveness(report.degraded, report.peers.len());
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
            shared_pending: false,
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
                published: false,
                failed: false,
                tickets: seq..=seq,
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
            assert_eq!(queue.pending[0].tickets, 10..=10 + MAX_PENDING as u64);
            assert_eq!(queue.last_seq, 10);
        }
    }
}
