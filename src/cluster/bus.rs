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

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ack::{self, Acks, AppliedReceiver};
use super::conn::{Conn, OpError};
use super::liveness::Liveness;
use super::message::{Message, Partition, ReplicaId, Scope};
use super::metrics::ClusterMetrics;
use super::outbox::{deliver_loop, Outbox};
use super::shared::SharedTier;
use crate::cache::Invalidation;

mod subscriber;

pub use subscriber::link_timeout;
use subscriber::{subscribe_loop, Shared};
pub use subscriber::{BusEvent, BusState, EventSink, FlushReason};

/// Why a publish did not reach Redis in time. The writer answers its client anyway:
/// the bus keeps the message and publishes it as soon as Redis answers again.
#[derive(Debug, thiserror::Error)]
#[error("invalidation not published yet (kept to republish): {0}")]
pub struct PublishError(#[from] pub OpError);

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
