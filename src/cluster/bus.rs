//! The invalidation bus: publishing this replica's writes, and a subscriber task that
//! hands the other replicas' messages to the cache (fleet contract §2, §3).
//!
//! The subscriber reconnects with backoff. While it is not subscribed the replica is
//! *degraded*: it cannot hear invalidations, so the cache may serve an entry only for
//! `degraded_ttl` after it was stored ([`Bus::may_serve`]). Every (re-)subscription and
//! every sign of a lost message (a gap in an origin's sequence, a message this version
//! cannot read) is a [`BusEvent::Flush`]: anything may have been missed.
//!
//! Publishing goes through the [`Outbox`](super::outbox): a message that Redis does not
//! take is held and delivered as soon as it answers, so a failed publish does not leave
//! the other replicas stale until this replica's next write.
//!
//! The subscriber also listens on the ack channel: once a writer's message is
//! published, the writer waits (at most `op_timeout`) for every other replica that
//! took it to acknowledge having applied it ([`ack`](super::ack)), so the client's
//! next read finds the change whichever replica it reaches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ack::{self, Acks, AppliedReceiver};
use super::conn::{Conn, OpError};
use super::message::{Decoded, Message, Partition, ReplicaId, Scope};
use super::metrics::{ClusterMetrics, OpOutcome};
use super::outbox::{republish_loop, Outbox};
use super::shared::SharedTier;
use super::Backoff;
use crate::cache::Invalidation;

/// How often the subscriber pings Redis, so a silent half-open link (a paused or
/// partitioned Redis) is noticed within about a second, not at the next TCP timeout.
const PING_EVERY: Duration = Duration::from_millis(500);
/// How long a subscription attempt or a ping may take before the link counts as down.
const LINK_TIMEOUT: Duration = Duration::from_millis(500);
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
/// keeps the message and publishes it as soon as Redis answers again.
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
    acknowledger: Option<JoinHandle<()>>,
    /// How long a writer waits for the other replicas' apply acknowledgements.
    ack_bound: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.subscriber.abort();
        self.republisher.abort();
        if let Some(acknowledger) = &self.acknowledger {
            acknowledger.abort();
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
    /// Messages the applier has applied, to acknowledge; `None` acknowledges nothing
    /// (a replica that only listens, as some tests do).
    pub applied: Option<AppliedReceiver>,
    /// This replica in the fleet (random per process).
    pub id: ReplicaId,
    /// The shared tier, whose entries a message's invalidation reaches first.
    pub tier: Option<SharedTier>,
}

/// What the subscriber task and the handles share.
struct Shared {
    id: ReplicaId,
    degraded: AtomicBool,
    degraded_ttl: Duration,
    state: watch::Sender<BusState>,
    metrics: ClusterMetrics,
    /// Acknowledgements of this replica's own messages.
    acks: Acks,
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
            acks: Acks::default(),
        });
        let ack_bound = link.conn.op_timeout();
        let acknowledger = link.applied.map(|applied| {
            tokio::spawn(ack::publish_loop(
                link.conn.clone(),
                link.ack_channel.clone(),
                link.id,
                applied,
            ))
        });
        let outbox = Arc::new(Outbox::new(
            link.conn,
            link.channel.clone(),
            link.tier,
            shared.metrics.clone(),
        ));
        let republisher = tokio::spawn(republish_loop(
            Arc::clone(&outbox),
            shared.state.subscribe(),
        ));
        let subscriber = tokio::spawn(subscribe_loop(
            link.client,
            [link.channel, link.ack_channel],
            Arc::clone(&shared),
            on_event,
        ));
        Bus {
            inner: Arc::new(Inner {
                shared,
                outbox,
                subscriber,
                republisher,
                acknowledger,
                ack_bound,
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
        started_service_id: Option<&crate::identity::ServiceId>,
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
        let (message, delivered) = self.inner.outbox.send(self.id(), partition, scope).await;
        let outcome = delivered
            .as_ref()
            .map_or_else(OpError::outcome, |()| OpOutcome::Ok);
        self.inner.shared.metrics.published(outcome);
        if let Err(error) = &delivered {
            tracing::warn!(%error, "invalidation not published; kept to republish");
        }
        delivered?;
        self.await_applied(&message).await;
        Ok(message)
    }

    /// Waits, at most `op_timeout`, until every other replica that took `message` has
    /// applied it ([`ack`]): then a client holding the write's 2xx finds the change on
    /// whichever replica it asks next.
    async fn await_applied(&self, message: &Message) {
        let Some(receivers) = self.inner.outbox.receivers(message.seq) else {
            return;
        };
        // This replica's own subscription took it too, when it is up.
        let own = usize::from(!self.is_degraded());
        let others = usize::try_from(receivers).unwrap_or(0).saturating_sub(own);
        if others == 0 {
            return;
        }
        let shared = &self.inner.shared;
        if shared
            .acks
            .wait(message.seq, others, self.inner.ack_bound)
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

    /// Messages held to republish (failed publishes not yet taken by Redis).
    pub fn pending(&self) -> usize {
        self.inner.outbox.pending()
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

/// `channels`: the invalidation channel, then the ack channel.
async fn subscribe_loop(
    client: Client,
    channels: [String; 2],
    shared: Arc<Shared>,
    on_event: EventSink,
) {
    let mut backoff = Backoff::default();
    let mut down_since = Instant::now();
    loop {
        let subscribed = tokio::time::timeout(LINK_TIMEOUT, async {
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
        listen(pubsub, &channels[1], &shared, &on_event).await;
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
    ack_channel: &str,
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
                if received.get_channel_name() == ack_channel {
                    match ack::decode(received.get_payload_bytes()) {
                        Some((origin, seq)) if origin == shared.id => shared.acks.record(seq),
                        _ => {}
                    }
                    continue;
                }
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
