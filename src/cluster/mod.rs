//! A fleet of replicas sharing one Redis (issue 11; fleet contract in
//! `shared/spec/fleet.md`): the invalidation bus, the shared cache tier and the fleet
//! lock. Optional: without `[cluster] redis_url` nothing here runs.
//!
//! - [`config`]: `[cluster]`, raw and validated, and `CSGATE_REDIS_URL`.
//! - [`keys`]: names in Redis and the hashes of cache keys.
//! - [`message`]: the versioned invalidation message.
//! - [`conn`]: the command connection, every operation bounded by `op_timeout`.
//! - [`apply`]: the bus's events applied to the local cache; the hit-path gate.
//! - [`bus`]: publishing, and the subscriber with degraded mode and flush signals.
//! - [`ack`]: apply acknowledgements, so a writer answers once the fleet has applied.
//! - [`liveness`]: heartbeats, and whether this replica can prove it hears every
//!   invalidation (degraded when not).
//! - [`outbox`]: this replica's messages and heartbeats on their way out, held and
//!   retried while Redis does not take them.
//! - [`shared`]: the shared tier (generations, markers).
//! - [`lock`]: the fleet lock and cold-miss coalescing across replicas.
//! - [`purge`]: the admin purges, fleet-wide.
//! - [`metrics`]: Prometheus metrics, `csgate_cluster_*`.
//!
//! How the cache uses it (the hit path never touches Redis):
//! - local miss → [`SharedTier::coalesce`] (lookup; fleet lock; wait or fetch; the
//!   fetch closure calls [`SharedTier::store`] with the generation it was given);
//! - local hit → serve only if [`Bus::may_serve`] (an atomic load and a clock read);
//! - write's 2xx → [`Bus::announce`] (the message queued: no shared refill here until
//!   it is delivered), the local invalidation, then [`Bus::delivered`] (the shared
//!   step and the publish in one script; at most `op_timeout`, then the other
//!   replicas' apply acknowledgements, at most `op_timeout`; held and retried if
//!   Redis fails), then answer;
//! - [`BusEvent::Invalidate`] → apply like a local write, then
//!   [`ClusterMetrics::applied`] with [`Message::delay`], then an acknowledgement;
//!   [`BusEvent::Flush`] → drop every local entry;
//! - admin purge → [`Cluster::purge_all`] / [`Cluster::purge_contact`] (shared tier,
//!   then the bus), then the local purge.

pub mod ack;
pub mod apply;
pub mod bus;
pub mod config;
pub mod conn;
pub mod keys;
pub mod liveness;
pub mod lock;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod purge;
pub mod shared;

pub use ack::{applied_channel, AppliedReceiver, AppliedSender};
pub use apply::apply_to;
pub use bus::{Announced, Bus, BusEvent, BusState, EventSink, FlushReason, PublishError};
pub use config::{ClusterConfig, ClusterConfigError, RawCluster};
pub use conn::{Conn, OpError};
pub use liveness::{Liveness, LivenessReport, Timing};
pub use lock::{Coalesced, FleetLock, LockAttempt};
pub use message::{Message, Partition, ReplicaId, Scope};
pub use metrics::ClusterMetrics;
pub use purge::FleetPurge;
pub use shared::{Generation, SharedEntry, SharedLookup, SharedPolicy, SharedTier};

use std::time::Duration;

use keys::Names;

/// A replica's cluster membership: the bus, and the shared tier when enabled.
#[derive(Clone)]
pub struct Cluster {
    pub bus: Bus,
    /// `None` with `shared_cache = false`.
    pub shared: Option<SharedTier>,
    pub metrics: ClusterMetrics,
    /// The Redis URL with any password replaced (logs, `/healthz`).
    pub redis: String,
    /// The command connection (its health for `/healthz`).
    conn: Conn,
}

impl Cluster {
    /// Starts the bus (and the shared tier) for `config`; `None` without a
    /// `redis_url`. Never waits for Redis: connections are made in the background, and
    /// until the subscription is up the bus is degraded. Must run inside a runtime.
    pub fn start(
        config: &ClusterConfig,
        policy: SharedPolicy,
        metrics: ClusterMetrics,
        on_event: EventSink,
        applied: Option<AppliedReceiver>,
    ) -> Result<Option<Cluster>, ClusterConfigError> {
        let Some(url) = &config.redis_url else {
            return Ok(None);
        };
        // TCP_NODELAY: every operation is one small request waiting on its reply, which
        // Nagle's algorithm would hold back (redis 1.x made it a setting, off by default).
        let nodelay = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let client = redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .map(|info| info.set_tcp_settings(nodelay))
            .and_then(redis::Client::open)
            .map_err(|e| ClusterConfigError {
                key: "redis_url",
                // The error names the kind of problem; the URL (with its password) is not
                // repeated.
                message: format!("not a usable Redis URL ({:?})", e.kind()),
            })?;
        let names = Names::new(&config.namespace);
        let id = ReplicaId::random();
        let liveness = std::sync::Arc::new(Liveness::new(
            id,
            Timing::new(config.degraded_ttl, config.peer_timeout, config.op_timeout),
        ));
        let conn = Conn::start(client.clone(), config.op_timeout);
        let policy = SharedPolicy {
            max_bytes: config.shared_max_bytes,
            tenant_max_bytes: config.shared_tenant_max_bytes,
            ..policy
        };
        let shared = config.shared_cache.then(|| {
            SharedTier::new(
                conn.clone(),
                names.clone(),
                policy,
                id,
                metrics.clone(),
                std::sync::Arc::clone(&liveness),
            )
        });
        let link = bus::Link {
            client,
            conn: conn.clone(),
            channel: names.channel(),
            ack_channel: names.ack_channel(),
            heartbeat_channel: names.heartbeat_channel(),
            members: names.members(),
            applied,
            id,
            tier: shared.clone(),
            liveness,
        };
        let bus = Bus::start(link, config.degraded_ttl, metrics.clone(), on_event);
        tracing::info!(
            redis = %config::redacted(url),
            namespace = %config.namespace,
            shared_cache = config.shared_cache,
            "cluster on"
        );
        Ok(Some(Cluster {
            bus,
            shared,
            metrics,
            redis: config::redacted(url),
            conn,
        }))
    }
}

impl Cluster {
    /// What `/healthz` says about the fleet: whether this replica is degraded and why,
    /// the subscription, the command connection, undelivered invalidations, the last
    /// acknowledgement, and the age of the last message from each peer.
    pub fn health(&self) -> serde_json::Value {
        let state = *self.bus.state().borrow();
        let live = self.bus.liveness().report(std::time::Instant::now());
        let conn = self.conn.health();
        let peers: Vec<serde_json::Value> = live
            .peers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id.to_string(),
                    "last_message_ms": p.last_heard_ms,
                    "seq": p.seq,
                    "undelivered": p.pending,
                })
            })
            .collect();
        serde_json::json!({
            "redis": self.redis,
            "replica": self.bus.id().to_string(),
            "degraded": live.degraded,
            "reasons": live.reasons,
            "connected": state.connected,
            "degraded_for_ms": state
                .degraded_since
                .map(|since| since.elapsed().as_millis() as u64),
            "subscriptions": state.subscriptions,
            "own_heartbeat_ms": live.own_heartbeat_ms,
            "undelivered": live.undelivered,
            "in_flight": live.in_flight,
            "last_ack_ms": live.last_ack_ms,
            "peers": peers,
            "command_connection": {
                "made": conn.made,
                "failures": conn.failures,
                "last_ok_ms": conn.last_ok.map(|d| d.as_millis() as u64),
                "connections": conn.connections,
            },
            "shared_cache": self.shared.is_some(),
        })
    }
}

/// Reconnect delays: 25 ms doubling to 500 ms, so a returning Redis is found again
/// within half a second (the fleet must be coherent within 1 s of Redis returning).
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(25);
    const MAX: Duration = Duration::from_millis(500);

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}
