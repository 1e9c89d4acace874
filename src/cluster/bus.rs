//! The invalidation bus: publishing this replica's writes, and a subscriber task that
//! hands the other replicas' messages to the cache (fleet contract §2, §3).
//!
//! The subscriber reconnects with backoff. Whether this replica may serve its entries
//! past `degraded_ttl` is decided by its [`Liveness`]: only while it can prove it hears
//! every invalidation (its own heartbeats come back through its subscription, every
//! peer's heartbeats arrive, and nobody holds undelivered invalidations). Every
//! (re-)subscription and every sign of a lost message (a gap in an origin's sequence,
//! seen in its messages or its heartbeats, a message this version cannot read) is a
//! [`BusEvent::Flush`]: anything may have been missed.
//!
//! Publishing goes through the [`Outbox`](super::outbox): a message is queued at once
//! (this replica then refills nothing from the shared tier until it is delivered),
//! and a writer waits for its delivery at most `op_timeout`; what Redis does not take
//! is held and delivered as soon as it answers.
//!
//! The subscriber also listens on the ack channel: once a writer's message is
//! published, the writer waits (at most `op_timeout`) for every other replica that
//! took it to acknowledge having applied it ([`ack`](super::ack)), so the client's
//! next read finds the change whichever replica it reaches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ack::{self, Acks, AppliedReceiver};
use super::conn::{Conn, OpError};
use super::liveness::{Beat, Liveness};
use super::message::{Decoded, Message, Partition, ReplicaId, Scope};
use super::metrics::ClusterMetrics;
use super::outbox::{deliver_loop, Outbox};
use super::shared::SharedTier;
use super::Backoff;
use crate::cache::Invalidation;

/// How often the subscriber pings Redis, so a silent half-open link (a paused or
/// partitioned Redis) is noticed within about a second, not at the next TCP timeout.
const PING_EVERY: Duration = Duration::from_millis(500);
/// How long a subscription attempt or a ping may take before the link counts as down,
/// and how long the bus's own round trips (deliveries, heartbeats) may take: half of
/// `degraded_ttl`, at least 500 ms (500 ms with the default `degraded_ttl` of 1 s). An
/// operator who allows a longer `degraded_ttl` tolerates a slower link, not only a
/// later heartbeat: a process starved of CPU for more than 500 ms (a loaded host)
/// otherwise drops and remakes a healthy subscription, which flushes the local cache
/// and detaches the fetches in flight.
pub fn link_timeout(degraded_ttl: Duration) -> Duration {
    (degraded_ttl / 2).max(Duration::from_millis(500))
}

/// What the subscriber hands the cache, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// Another replica's write: apply it like a local one.
    Invalidate(Message),
    /// Drop every local entry: messages may have been missed.
    Flush(FlushReason),
    /// A heartbeat, after the messages published before it: once everything before it
    /// is applied, the applier reports it back ([`Applied::Beat`](super::ack::Applied::Beat)).
    Heartbeat(Beat),
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
    /// A replica went silent for `peer_timeout` without saying goodbye: whatever it
    /// held undelivered will never come.
    PeerGone { origin: ReplicaId },
}

/// The subscription as the cache sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusState {
    /// Subscribed: invalidations are heard.
    pub connected: bool,
    /// When the current period without a subscription began; `None` while subscribed.
    pub degraded_since: Option<Instant>,
    /// How many times the subscription has been made.
    pub subscriptions: u64,
}

/// Why a publish did not reach Redis in time. The writer answers its client anyway:
/// the bus keeps the message and publishes it as soon as Redis answers again.
#[derive(Debug, thiserror::Error)]
#[error("invalidation not published yet (kept to republish): {0}")]
pub struct PublishError(#[from] pub OpError);

/// Receives the bus's events; called from the subscriber task, in order. It should
/// return quickly (hand async work to a channel); a flush should take effect before it
/// returns.
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
    deliverer: JoinHandle<()>,
    confirmer: Option<JoinHandle<()>>,
    /// How long a writer waits for its delivery, then for the other replicas' apply
    /// acknowledgements (each).
    op_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.subscriber.abort();
        self.deliverer.abort();
        if let Some(confirmer) = &self.confirmer {
            confirmer.abort();
        }
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
    /// The namespace's ack channel ([`Names::ack_channel`](super::keys::Names::ack_channel)).
    pub ack_channel: String,
    /// The namespace's heartbeat channel.
    pub heartbeat_channel: String,
    /// The namespace's member list.
    pub members: String,
    /// What the applier has applied: messages to acknowledge, heartbeats to confirm.
    /// `None`: the subscriber confirms heartbeats as it hands them over (a replica
    /// whose sink applies synchronously, as some tests' do) and acknowledges nothing.
    pub applied: Option<AppliedReceiver>,
    /// This replica in the fleet (random per process).
    pub id: ReplicaId,
    /// The shared tier, whose entries a message's invalidation reaches first.
    pub tier: Option<SharedTier>,
    /// This replica's proof of hearing every invalidation.
    pub liveness: Arc<Liveness>,
}

/// What the subscriber task and the handles share.
struct Shared {
    id: ReplicaId,
    degraded_ttl: Duration,
    /// [`link_timeout`] of `degraded_ttl`.
    link_timeout: Duration,
    state: watch::Sender<BusState>,
    metrics: ClusterMetrics,
    /// Acknowledgements of this replica's own messages.
    acks: Acks,
    liveness: Arc<Liveness>,
    /// Confirm heartbeats in the subscriber (no applier reports them).
    confirm_inline: bool,
}

/// A message queued by [`Bus::announce`], to await with [`Bus::delivered`].
#[derive(Debug)]
pub struct Announced {
    message: Message,
    ticket: u64,
}

impl Bus {
    /// Starts the subscriber on `link.client` (its own connection) and publishes
    /// through `link.conn`. Degraded until an own heartbeat comes back.
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
            degraded_ttl,
            link_timeout: link_timeout(degraded_ttl),
            state,
            metrics,
            acks: Acks::default(),
            liveness: Arc::clone(&link.liveness),
            confirm_inline: link.applied.is_none(),
        });
        let op_timeout = link.conn.op_timeout();
        let confirmer = link.applied.map(|applied| {
            tokio::spawn(ack::confirm_loop(
                link.conn.clone(),
                link.ack_channel.clone(),
                link.id,
                applied,
                Arc::clone(&link.liveness),
            ))
        });
        let outbox = Arc::new(Outbox::new(
            link.conn,
            (
                link.channel.clone(),
                link.heartbeat_channel.clone(),
                link.members,
            ),
            link.tier,
            shared.metrics.clone(),
            link.liveness,
            link.id,
        ));
        let deliverer = tokio::spawn(deliver_loop(Arc::clone(&outbox), shared.link_timeout));
        let subscriber = tokio::spawn(subscribe_loop(
            link.client,
            [link.channel, link.ack_channel, link.heartbeat_channel],
            Arc::clone(&shared),
            on_event,
        ));
        Bus {
            inner: Arc::new(Inner {
                shared,
                outbox,
                subscriber,
                deliverer,
                confirmer,
                op_timeout,
            }),
        }
    }

    /// This replica's id (random per bus, i.e. per process).
    pub fn id(&self) -> ReplicaId {
        self.inner.shared.id
    }

    /// True while this replica cannot prove it hears every invalidation. An atomic
    /// load and a clock read: fine on the hit path.
    pub fn is_degraded(&self) -> bool {
        !self.inner.shared.liveness.confirmed(Instant::now())
    }

    /// Whether an entry stored at `stored_at` may be served at `now`: while this
    /// replica can prove it hears every invalidation, or for `degraded_ttl` after it
    /// was stored.
    pub fn may_serve(&self, stored_at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(stored_at) <= self.inner.shared.degraded_ttl
            || self.inner.shared.liveness.confirmed(now)
    }

    /// Whether a local miss may be filled from the shared tier now.
    pub fn may_refill(&self) -> bool {
        self.inner.shared.liveness.may_refill(Instant::now())
    }

    pub fn degraded_ttl(&self) -> Duration {
        self.inner.shared.degraded_ttl
    }

    /// The subscription state, to watch.
    pub fn state(&self) -> watch::Receiver<BusState> {
        self.inner.shared.state.subscribe()
    }

    /// This replica's liveness (degraded or not, and why).
    pub fn liveness(&self) -> &Liveness {
        &self.inner.shared.liveness
    }

    /// Queues a local cache invalidation's message (nothing for a start without a
    /// contact key). Synchronous, so the writer queues it before anything can cancel
    /// it, then applies its own invalidation, then awaits [`Bus::delivered`].
    pub fn announce(
        &self,
        invalidation: &Invalidation,
        started_service_id: Option<&crate::identity::ServiceId>,
    ) -> Option<Announced> {
        let (partition, scope) = Message::body_of(invalidation, started_service_id)?;
        Some(self.queue(partition, scope))
    }

    fn queue(&self, partition: Partition, scope: Scope) -> Announced {
        let (message, ticket) = self.inner.outbox.queue(partition, scope);
        Announced { message, ticket }
    }

    /// Waits (at most `op_timeout`) for an announced message to be in Redis, then (at
    /// most `op_timeout`) for the other replicas to acknowledge having applied it. On
    /// an error it stays held and is delivered when Redis answers again.
    pub async fn delivered(&self, announced: Announced) -> Result<Message, PublishError> {
        let Announced { message, ticket } = announced;
        let delivered = self
            .inner
            .outbox
            .published(ticket, self.inner.op_timeout)
            .await;
        if let Err(error) = &delivered {
            // Not an error yet: the delivery task holds it, retries it, and logs the
            // failure once (a Redis slower than op_timeout would make this every write).
            tracing::debug!(%error, seq = message.seq, "invalidation not published within op_timeout; the writer answers");
        }
        delivered?;
        self.await_applied(&message).await;
        Ok(message)
    }

    /// [`Bus::announce`] then [`Bus::delivered`]; `None` for a start without a
    /// contact key.
    pub async fn publish_invalidation(
        &self,
        invalidation: &Invalidation,
        started_service_id: Option<&crate::identity::ServiceId>,
    ) -> Result<Option<Message>, PublishError> {
        match self.announce(invalidation, started_service_id) {
            Some(announced) => self.delivered(announced).await.map(Some),
            None => Ok(None),
        }
    }

    /// [`Bus::announce`] then [`Bus::delivered`] (purges, tests).
    pub async fn publish(
        &self,
        partition: Partition,
        scope: Scope,
    ) -> Result<Message, PublishError> {
        let announced = self.queue(partition, scope);
        self.delivered(announced).await
    }

    /// Waits, at most `op_timeout`, until every other replica that took `message` has
    /// applied it ([`ack`]): then a client holding the write's 2xx finds the change on
    /// whichever replica it asks next.
    async fn await_applied(&self, message: &Message) {
        let Some(receivers) = self.inner.outbox.receivers(message.seq) else {
            return;
        };
        // This replica's own subscription took it too, when it is up.
        let own = usize::from(self.inner.shared.state.borrow().connected);
        let others = usize::try_from(receivers).unwrap_or(0).saturating_sub(own);
        if others == 0 {
            return;
        }
        let shared = &self.inner.shared;
        if shared
            .acks
            .wait(message.seq, others, self.inner.op_timeout)
            .await
        {
            shared.metrics.apply_wait("applied");
        } else {
            shared.metrics.apply_wait("timeout");
            tracing::debug!(
                seq = message.seq,
                replicas = others,
                "not every replica acknowledged the invalidation within op_timeout"
            );
        }
    }

    /// Messages on their way out (held after a failure, or in flight).
    pub fn pending(&self) -> usize {
        self.inner.outbox.pending()
    }

    /// Says goodbye to the fleet (shutdown): the peers stop counting on this replica's
    /// heartbeats at once instead of after `peer_timeout`.
    pub async fn leave(&self) {
        let deadline = Instant::now() + self.inner.shared.link_timeout * 2;
        while self.pending() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.pending() > 0 {
            tracing::warn!(
                held = self.pending(),
                "shutting down with invalidations undelivered: the fleet stays degraded \
                 until peer_timeout"
            );
            return;
        }
        self.inner.outbox.leave().await;
    }
}

impl Shared {
    fn set_connected(&self, connected: bool) {
        self.liveness.subscribed(connected);
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

/// `channels`: the invalidation channel, the ack channel, the heartbeat channel.
async fn subscribe_loop(
    client: Client,
    channels: [String; 3],
    shared: Arc<Shared>,
    on_event: EventSink,
) {
    let mut backoff = Backoff::default();
    let mut down_since = Instant::now();
    loop {
        let subscribed = tokio::time::timeout(shared.link_timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channels[..]).await?;
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
        listen(pubsub, &channels, &shared, &on_event).await;
        down_since = Instant::now();
        shared.set_connected(false);
        tracing::warn!(
            degraded_ttl = ?shared.degraded_ttl,
            "invalidation bus lost; serving local entries only within degraded_ttl"
        );
    }
}

/// Reads one subscription until it fails.
async fn listen(
    pubsub: redis::aio::PubSub,
    channels: &[String; 3],
    shared: &Shared,
    on_event: &EventSink,
) {
    let (mut sink, mut stream) = pubsub.split();
    let mut last_seq: HashMap<ReplicaId, u64> = HashMap::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = stream.next() => {
                let Some(received) = received else { return };
                let channel = received.get_channel_name();
                let payload = received.get_payload_bytes();
                if channel == channels[1] {
                    match ack::decode(payload) {
                        Some((origin, seq)) if origin == shared.id => {
                            shared.acks.record(seq);
                            shared.liveness.acknowledged();
                        }
                        _ => {}
                    }
                } else if channel == channels[2] {
                    if let Some(beat) = Beat::decode(payload) {
                        heartbeat(beat, shared, on_event, &mut last_seq);
                    }
                } else {
                    handle(Message::decode(payload), shared, on_event, &mut last_seq);
                }
            }
            _ = ping.tick() => {
                let gone = shared.liveness.owed_flush();
                if !gone.is_empty() {
                    for origin in &gone {
                        on_event(BusEvent::Flush(FlushReason::PeerGone { origin: *origin }));
                    }
                    shared.liveness.flushed(&gone);
                }
                match tokio::time::timeout(shared.link_timeout, sink.ping::<redis::Value>()).await {
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

/// A heartbeat: a peer's shows a lost message at once (its sequence number is past
/// the last message heard from it); every heartbeat goes to the applier, in order,
/// and is confirmed once what came before it is applied.
fn heartbeat(
    beat: Beat,
    shared: &Shared,
    on_event: &EventSink,
    last_seq: &mut HashMap<ReplicaId, u64>,
) {
    if let Beat::Alive { origin, seq, .. } = beat {
        if origin != shared.id {
            let seen = last_seq.entry(origin).or_insert(seq);
            if seq > *seen {
                on_event(BusEvent::Flush(FlushReason::SequenceGap {
                    origin,
                    last: *seen,
                    got: seq,
                }));
                *seen = seq;
            }
        }
    }
    on_event(BusEvent::Heartbeat(beat));
    if shared.confirm_inline {
        shared.liveness.heard(beat, Instant::now());
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
            if message.shared_pending {
                shared.liveness.peer_shared_pending(message.origin);
            }
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
