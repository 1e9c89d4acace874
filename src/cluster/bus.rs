//! The invalidation bus: publishing this replica's writes, and a subscriber task that
//! hands the other replicas' messages to the cache (fleet contract §2, §3).
//!
//! The subscriber reconnects with backoff. While it is not subscribed the replica is
//! *degraded*: it cannot hear invalidations, so the cache may serve an entry only for
//! `degraded_ttl` after it was stored ([`Bus::may_serve`]). Every (re-)subscription and
//! every sign of a lost message (a gap in an origin's sequence, a message this version
//! cannot read) is a [`BusEvent::Flush`]: anything may have been missed.
//!
//! A publish that fails (Redis gone, or just back and this replica's command connection
//! not yet) must not leave the other replicas stale until this replica's next write: the
//! message stays in the [`Outbox`] and a republisher task sends it as soon as Redis
//! answers (backoff from 25 ms to 500 ms, and at once when this replica's own
//! subscription comes back). Later messages queue behind it, so order is kept. The
//! outbox is bounded: past [`MAX_PENDING`] messages they collapse into one that
//! invalidates more (the writer's whole tenant, or everything).
//!
//! Locking: a message is queued under the outbox's `std::sync::Mutex` (held for queue
//! operations only, never across an `.await`), so a write's message is always queued,
//! however busy Redis is. Delivery takes the outbox's `tokio::sync::Mutex` across the
//! Redis calls on purpose, so that messages leave in sequence order and receivers see
//! a gap only when one was lost; every holder is bounded (the writer by
//! [`Outbox::write_bound`]). Publishing is rare: one per write.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::Client;
use tokio::sync::{watch, Mutex, Notify};
use tokio::task::JoinHandle;

use super::conn::{Conn, OpError};
use super::message::{now_us, Decoded, Message, Partition, ReplicaId, Scope, MESSAGE_VERSION};
use super::metrics::{ClusterMetrics, OpOutcome};
use super::shared::SharedTier;
use super::Backoff;
use crate::cache::Invalidation;

/// How often the subscriber pings Redis, so a silent half-open link (a paused or
/// partitioned Redis) is noticed within about a second, not at the next TCP timeout.
const PING_EVERY: Duration = Duration::from_millis(500);
/// How long a subscription attempt or a ping may take before the link counts as down.
const LINK_TIMEOUT: Duration = Duration::from_millis(500);
/// Messages a replica holds while Redis does not take them; one per write, so at a
/// few hundred bytes each this bounds the outbox to well under a MiB. Past it they
/// collapse into one broader message ([`Outbox::collapse`]).
pub const MAX_PENDING: usize = 1024;

/// What the subscriber hands the cache, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// Another replica's write: apply it like a local one.
    Invalidate(Message),
    /// Drop every local entry: messages may have been missed.
    Flush(FlushReason),
}

/// Why the cache must flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushReason {
    /// The subscription is (again) up after `down_for` without one; the first
    /// subscription after start-up is one too.
    Resubscribed { down_for: Duration },
    /// `origin`'s sequence jumped from `last` to `got`.
    SequenceGap {
        origin: ReplicaId,
        last: u64,
        got: u64,
    },
    /// A message this version cannot read (a newer format, or garbage).
    Unreadable { origin: Option<ReplicaId> },
}

/// The subscription as the cache sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusState {
    /// Subscribed: invalidations are heard.
    pub connected: bool,
    /// When the current degraded period began; `None` while connected.
    pub degraded_since: Option<Instant>,
    /// How many times the subscription has been made.
    pub subscriptions: u64,
}

/// Why a publish did not reach Redis. The writer answers its client anyway: the bus
/// keeps the message and publishes it as soon as Redis answers again (see [`Outbox`]).
#[derive(Debug, thiserror::Error)]
#[error("invalidation not published yet (kept to republish): {0}")]
pub struct PublishError(#[from] pub OpError);

/// Receives the bus's events; called from the subscriber task, in order. It should
/// return quickly (hand async work to a channel); a flush should take effect before it
/// returns, since degraded mode ends right after.
pub type EventSink = Arc<dyn Fn(BusEvent) + Send + Sync>;

/// The bus. Cheap to clone; the subscriber stops when the last clone is dropped.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    subscriber: JoinHandle<()>,
    republisher: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.subscriber.abort();
        self.republisher.abort();
    }
}

/// What [`Bus::start`] joins.
pub struct Link {
    /// For the subscription (a connection of its own).
    pub client: Client,
    /// For publishing.
    pub conn: Conn,
    /// The namespace's channel ([`Names::channel`](super::keys::Names::channel)).
    pub channel: String,
    /// This replica in the fleet (random per process).
    pub id: ReplicaId,
    /// The shared tier, whose entries a message's invalidation reaches first.
    pub tier: Option<SharedTier>,
}

/// This replica's messages on their way out: the sequence, and those not yet taken
/// by Redis, in order. Delivering one is two steps, each retried until done: the shared
/// tier's entries it concerns made unservable, then the `PUBLISH` (fleet contract §2).
struct Outbox {
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
}

/// A message not yet delivered.
#[derive(Debug, Clone)]
struct Held {
    message: Message,
    /// Its shared-tier invalidation is done (or there is no shared tier).
    shared_done: bool,
    /// The highest ticket it stands for (more than one after a collapse).
    ticket: u64,
}

/// What the subscriber task and the handles share.
struct Shared {
    id: ReplicaId,
    degraded: AtomicBool,
    degraded_ttl: Duration,
    state: watch::Sender<BusState>,
    metrics: ClusterMetrics,
}

impl Bus {
    /// Starts the subscriber on `link.client` (its own connection) and publishes
    /// through `link.conn`. Starts degraded until the first subscription is made.
    pub fn start(
        link: Link,
        degraded_ttl: Duration,
        metrics: ClusterMetrics,
        on_event: EventSink,
    ) -> Bus {
        let (state, _) = watch::channel(BusState {
            connected: false,
            degraded_since: Some(Instant::now()),
            subscriptions: 0,
        });
        metrics.set_connected(false);
        let shared = Arc::new(Shared {
            id: link.id,
            degraded: AtomicBool::new(true),
            degraded_ttl,
            state,
            metrics,
        });
        let outbox = Arc::new(Outbox {
            conn: link.conn,
            channel: link.channel.clone(),
            tier: link.tier,
            queue: std::sync::Mutex::new(Queue::default()),
            delivery: Mutex::new(()),
            failed: Notify::new(),
            metrics: shared.metrics.clone(),
        });
        let republisher = tokio::spawn(republish_loop(
            Arc::clone(&outbox),
            shared.state.subscribe(),
        ));
        let subscriber = tokio::spawn(subscribe_loop(
            link.client,
            link.channel,
            Arc::clone(&shared),
            on_event,
        ));
        Bus {
            inner: Arc::new(Inner {
                shared,
                outbox,
                subscriber,
                republisher,
            }),
        }
    }

    /// This replica's id (random per bus, i.e. per process).
    pub fn id(&self) -> ReplicaId {
        self.inner.shared.id
    }

    /// True while invalidations cannot be heard. An atomic load: fine on the hit path.
    pub fn is_degraded(&self) -> bool {
        self.inner.shared.degraded.load(Ordering::Acquire)
    }

    /// Whether an entry stored at `stored_at` may be served at `now`: always while
    /// subscribed, for `degraded_ttl` after it was stored while degraded.
    pub fn may_serve(&self, stored_at: Instant, now: Instant) -> bool {
        !self.is_degraded()
            || now.saturating_duration_since(stored_at) <= self.inner.shared.degraded_ttl
    }

    pub fn degraded_ttl(&self) -> Duration {
        self.inner.shared.degraded_ttl
    }

    /// The subscription state, to watch.
    pub fn state(&self) -> watch::Receiver<BusState> {
        self.inner.shared.state.subscribe()
    }

    /// Publishes a local cache invalidation (nothing for a start without a contact
    /// key). The writer awaits this *before* answering its client.
    pub async fn publish_invalidation(
        &self,
        invalidation: &Invalidation,
        started_service_id: Option<&str>,
    ) -> Result<Option<Message>, PublishError> {
        match Message::body_of(invalidation, started_service_id) {
            Some((partition, scope)) => self.publish(partition, scope).await.map(Some),
            None => Ok(None),
        }
    }

    /// Delivers one invalidation: the shared entries it concerns made unservable, then
    /// the message published, after any message still held from an earlier failure;
    /// bounded by [`Outbox::write_bound`] (waiting for another delivery included).
    /// Returns the message as made; on an error it is held and delivered when Redis
    /// answers again.
    pub async fn publish(
        &self,
        partition: Partition,
        scope: Scope,
    ) -> Result<Message, PublishError> {
        let inner = &self.inner;
        let outbox = &inner.outbox;
        let (message, ticket) = {
            let mut queue = outbox.lock_queue();
            queue.last_seq += 1;
            queue.last_ticket += 1;
            let message = Message {
                v: MESSAGE_VERSION,
                origin: inner.shared.id,
                seq: queue.last_seq,
                sent_at_us: now_us(),
                partition,
                scope,
            };
            let ticket = queue.last_ticket;
            queue.push(Held {
                message: message.clone(),
                shared_done: outbox.tier.is_none(),
                ticket,
            });
            outbox.metrics.set_pending(queue.pending.len());
            (message, ticket)
        };
        let mut sent = 0;
        let delivering = outbox.deliver(&mut sent);
        let result = match tokio::time::timeout(outbox.write_bound(), delivering).await {
            Ok(result) => result,
            Err(_) => Err(OpError::Timeout),
        };
        // Another delivery (the republisher's) may have taken it while this one waited.
        let result = match result {
            Err(_) if outbox.lock_queue().delivered >= ticket => Ok(()),
            other => other,
        };
        let outcome = result
            .as_ref()
            .map_or_else(OpError::outcome, |()| OpOutcome::Ok);
        inner.shared.metrics.published(outcome);
        if let Err(error) = &result {
            outbox.failed.notify_one();
            tracing::warn!(%error, "invalidation not published; kept to republish");
        }
        result?;
        Ok(message)
    }

    /// Messages held to republish (failed publishes not yet taken by Redis).
    pub fn pending(&self) -> usize {
        self.inner.outbox.lock_queue().pending.len()
    }
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
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
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
            self.conn
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
async fn republish_loop(outbox: Arc<Outbox>, mut state: watch::Receiver<BusState>) {
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

impl Shared {
    fn set_connected(&self, connected: bool) {
        self.degraded.store(!connected, Ordering::Release);
        self.metrics.set_connected(connected);
        self.state.send_modify(|state| {
            state.connected = connected;
            if connected {
                state.degraded_since = None;
                state.subscriptions += 1;
            } else if state.degraded_since.is_none() {
                state.degraded_since = Some(Instant::now());
            }
        });
    }
}

async fn subscribe_loop(client: Client, channel: String, shared: Arc<Shared>, on_event: EventSink) {
    let mut backoff = Backoff::default();
    let mut down_since = Instant::now();
    loop {
        let subscribed = tokio::time::timeout(LINK_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match subscribed {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(error)) => {
                tracing::debug!(%error, "invalidation subscription not made");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(_) => {
                tracing::debug!("invalidation subscription timed out");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        backoff.reset();
        shared.metrics.resubscribed();
        on_event(BusEvent::Flush(FlushReason::Resubscribed {
            down_for: down_since.elapsed(),
        }));
        shared.set_connected(true);
        tracing::info!("invalidation bus subscribed");
        listen(pubsub, &shared, &on_event).await;
        down_since = Instant::now();
        shared.set_connected(false);
        tracing::warn!(
            degraded_ttl = ?shared.degraded_ttl,
            "invalidation bus lost; serving local entries only within degraded_ttl"
        );
    }
}

/// Reads one subscription until it fails.
async fn listen(pubsub: redis::aio::PubSub, shared: &Shared, on_event: &EventSink) {
    let (mut sink, mut stream) = pubsub.split();
    let mut last_seq: HashMap<ReplicaId, u64> = HashMap::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = stream.next() => {
                let Some(received) = received else { return };
                handle(Message::decode(received.get_payload_bytes()), shared, on_event, &mut last_seq);
            }
            _ = ping.tick() => {
                match tokio::time::timeout(LINK_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "subscription ping failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("subscription ping timed out");
                        return;
                    }
                }
            }
        }
    }
}

fn handle(
    decoded: Decoded,
    shared: &Shared,
    on_event: &EventSink,
    last_seq: &mut HashMap<ReplicaId, u64>,
) {
    match decoded {
        Decoded::Message(message) if message.origin == shared.id => {}
        Decoded::Message(message) => {
            shared.metrics.received();
            let seen = last_seq.entry(message.origin).or_insert(message.seq);
            // A repeat (a republished message whose first publish did reach Redis)
            // is applied again, harmlessly; only a jump means a message was lost.
            if message.seq > *seen + 1 {
                on_event(BusEvent::Flush(FlushReason::SequenceGap {
                    origin: message.origin,
                    last: *seen,
                    got: message.seq,
                }));
            }
            *seen = (*seen).max(message.seq);
            on_event(BusEvent::Invalidate(message));
        }
        Decoded::Unreadable { origin } if origin == Some(shared.id) => {}
        Decoded::Unreadable { origin } => {
            shared.metrics.received();
            on_event(BusEvent::Flush(FlushReason::Unreadable { origin }));
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
                shared_done: seq % 2 == 0,
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
