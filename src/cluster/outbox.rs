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

use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use redis::Value;
use tokio::sync::Notify;

use super::conn::{Conn, OpError};
use super::liveness::Liveness;
use super::message::{now_us, Message, Partition, ReplicaId, Scope, MESSAGE_VERSION};
use super::metrics::{ClusterMetrics, OpOutcome};
use super::shared::SharedTier;

mod heartbeat;
mod queue;

pub use queue::MAX_PENDING;
use queue::{Held, Queue};

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
        let pipe = self.pipeline(&batch);
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
            let (now_published, owes) = queue.settle(held, self.outcome(held, reply));
            published += usize::from(now_published);
            refused |= owes;
        }
        queue.drop_delivered();
        self.counted(&queue);
        drop(queue);
        self.delivered.notify_waiters();
        Ok((published, refused))
    }

    /// The pipeline for `batch`: per message its shared-tier step and publish in one
    /// script, or only the publish once the step is done (an empty one when both are).
    fn pipeline(&self, batch: &[Held]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for held in batch {
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
        pipe
    }

    /// What one message's reply says: (shared step done, subscribers that took it),
    /// or `None` when Redis refused the step.
    fn outcome(&self, held: &Held, reply: redis::RedisResult<Value>) -> Option<(bool, i64)> {
        match (&self.tier, held.shared_done, reply) {
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
        }
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
