//! The invalidation bus: publishing this replica's writes, and a subscriber task that
//! hands the other replicas' messages to the cache (fleet contract §2, §3).
//!
//! The subscriber reconnects with backoff. While it is not subscribed the replica is
//! *degraded*: it cannot hear invalidations, so the cache may serve an entry only for
//! `degraded_ttl` after it was stored ([`Bus::may_serve`]). Every (re-)subscription and
//! every sign of a lost message (a gap in an origin's sequence, a message this version
//! cannot read) is a [`BusEvent::Flush`]: anything may have been missed.
//!
//! Locking: `seq` is a `tokio::sync::Mutex` held across the `PUBLISH` on purpose, so
//! that messages leave in sequence order and receivers see a gap only when one was lost.
//! Publishing is rare (one per write), and the whole call is bounded by `op_timeout`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::Client;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use super::conn::{Conn, OpError};
use super::keys::Names;
use super::message::{now_us, Decoded, Message, Partition, ReplicaId, Scope, MESSAGE_VERSION};
use super::metrics::{ClusterMetrics, OpOutcome};
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

/// Why a publish did not reach Redis. The writer answers its client anyway: the other
/// replicas will see a gap in this replica's sequence at its next message and flush.
#[derive(Debug, thiserror::Error)]
#[error("invalidation not published: {0}")]
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
    conn: Conn,
    channel: String,
    seq: Mutex<u64>,
    subscriber: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
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
    /// Starts the subscriber on `client` (its own connection) and publishes through
    /// `conn`. Starts degraded until the first subscription is made.
    pub fn start(
        client: Client,
        conn: Conn,
        names: &Names,
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
            id: ReplicaId::random(),
            degraded: AtomicBool::new(true),
            degraded_ttl,
            state,
            metrics,
        });
        let channel = names.channel();
        let subscriber = tokio::spawn(subscribe_loop(
            client,
            channel.clone(),
            Arc::clone(&shared),
            on_event,
        ));
        Bus {
            inner: Arc::new(Inner {
                shared,
                conn,
                channel,
                seq: Mutex::new(0),
                subscriber,
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

    /// Publishes one invalidation, bounded by `op_timeout` (waiting for the sequence
    /// lock included). Returns the message as sent.
    pub async fn publish(
        &self,
        partition: Partition,
        scope: Scope,
    ) -> Result<Message, PublishError> {
        let inner = &self.inner;
        let sending = async {
            let mut seq = inner.seq.lock().await;
            *seq += 1;
            let message = Message {
                v: MESSAGE_VERSION,
                origin: inner.shared.id,
                seq: *seq,
                sent_at_us: now_us(),
                partition,
                scope,
            };
            let payload = message.encode();
            let channel = inner.channel.clone();
            inner
                .conn
                .run(|mut manager| async move {
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload)
                        .query_async::<i64>(&mut manager)
                        .await
                })
                .await?;
            Ok::<Message, OpError>(message)
        };
        let result = match tokio::time::timeout(inner.conn.op_timeout(), sending).await {
            Ok(result) => result,
            Err(_) => Err(OpError::Timeout),
        };
        let outcome = result
            .as_ref()
            .map_or_else(OpError::outcome, |_| OpOutcome::Ok);
        inner.shared.metrics.published(outcome);
        if let Err(error) = &result {
            tracing::warn!(%error, "invalidation not published; other replicas will flush");
        }
        Ok(result?)
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
            if let Some(last) = last_seq.insert(message.origin, message.seq) {
                if message.seq != last + 1 {
                    on_event(BusEvent::Flush(FlushReason::SequenceGap {
                        origin: message.origin,
                        last,
                        got: message.seq,
                    }));
                }
            }
            on_event(BusEvent::Invalidate(message));
        }
        Decoded::Unreadable { origin } if origin == Some(shared.id) => {}
        Decoded::Unreadable { origin } => {
            shared.metrics.received();
            on_event(BusEvent::Flush(FlushReason::Unreadable { origin }));
        }
    }
}
