//! A replica's cluster membership: the bus and the shared tier started together for
//! `[cluster]`, and what `/healthz` says about them.

use std::sync::Arc;

use super::ack::AppliedReceiver;
use super::bus::{self, Bus, EventSink};
use super::config::{self, ClusterConfig};
use super::conn::Conn;
use super::keys::Names;
use super::liveness::{Liveness, Timing};
use super::message::ReplicaId;
use super::metrics::ClusterMetrics;
use super::shared::{SharedPolicy, SharedTier};
use crate::settings::{self, ConfigError};

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
    ) -> Result<Option<Cluster>, ConfigError> {
        let Some(url) = &config.redis_url else {
            return Ok(None);
        };
        // TCP_NODELAY: every operation is one small request waiting on its reply, which
        // Nagle's algorithm would hold back (redis 1.x made it a setting, off by default).
        let nodelay = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let client = redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .map(|info| info.set_tcp_settings(nodelay))
            .and_then(redis::Client::open)
            .map_err(|e| {
                // The error names the kind of problem; the URL (with its password) is not
                // repeated.
                settings::invalid(
                    "cluster.redis_url",
                    format!("not a usable Redis URL ({:?})", e.kind()),
                )
            })?;
        let names = Names::new(&config.namespace);
        let id = ReplicaId::random();
        let liveness = Arc::new(Liveness::new(
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
                Arc::clone(&liveness),
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
