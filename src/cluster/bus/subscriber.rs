//! The bus's subscriber task: one subscription to the invalidation, ack and heartbeat
//! channels, made again with backoff whenever it fails; what it hears goes to the
//! cache as [`BusEvent`]s, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::Client;
use tokio::sync::watch;

use crate::cluster::ack::{self, Acks};
use crate::cluster::beat::Beat;
use crate::cluster::conn::Backoff;
use crate::cluster::liveness::Liveness;
use crate::cluster::message::{Decoded, Message, ReplicaId};
use crate::cluster::metrics::ClusterMetrics;

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
    /// is applied, the applier reports it back ([`Applied::Beat`](crate::cluster::ack::Applied::Beat)).
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

/// Receives the bus's events; called from the subscriber task, in order. It should
/// return quickly (hand async work to a channel); a flush should take effect before it
/// returns.
pub type EventSink = Arc<dyn Fn(BusEvent) + Send + Sync>;

/// What the subscriber task and the handles share.
pub(super) struct Shared {
    pub(super) id: ReplicaId,
    pub(super) degraded_ttl: Duration,
    /// [`link_timeout`] of `degraded_ttl`.
    pub(super) link_timeout: Duration,
    pub(super) state: watch::Sender<BusState>,
    pub(super) metrics: ClusterMetrics,
    /// Acknowledgements of this replica's own messages.
    pub(super) acks: Acks,
    pub(super) liveness: Arc<Liveness>,
    /// Confirm heartbeats in the subscriber (no applier reports them).
    pub(super) confirm_inline: bool,
}

impl Shared {
    pub(super) fn set_connected(&self, connected: bool) {
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
pub(super) async fn subscribe_loop(
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
