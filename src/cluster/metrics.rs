//! The cluster's Prometheus metrics. [`ClusterMetrics::register`] adds them to the
//! gateway's registry; labels are fixed words, never a key or an id.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Bus delay buckets, seconds: 100 µs to 1 s. The target is p99 ≤ 5 ms on loopback,
/// so the resolution is in the first buckets.
const DELAY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// How a Redis operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    Ok,
    /// Past `op_timeout`: cancelled.
    Timeout,
    /// Refused, disconnected, not connected yet, or an unexpected reply.
    Error,
}

impl OpOutcome {
    pub fn label(self) -> &'static str {
        match self {
            OpOutcome::Ok => "ok",
            OpOutcome::Timeout => "timeout",
            OpOutcome::Error => "error",
        }
    }
}

/// The cluster's metrics. Cheap to clone (every field is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    connected: Gauge,
    degraded: Gauge,
    peers: Gauge,
    published: Family<OutcomeLabel, Counter>,
    received: Counter,
    applied: Counter,
    resubscriptions: Counter,
    republished: Counter,
    pending: Gauge,
    bus_delay: Histogram,
    shared: Family<ResultLabel, Counter>,
    lock_waits: Family<OutcomeLabel, Counter>,
    apply_waits: Family<OutcomeLabel, Counter>,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        ClusterMetrics {
            connected: Gauge::default(),
            degraded: Gauge::default(),
            peers: Gauge::default(),
            published: Family::default(),
            received: Counter::default(),
            applied: Counter::default(),
            resubscriptions: Counter::default(),
            republished: Counter::default(),
            pending: Gauge::default(),
            bus_delay: Histogram::new(DELAY_BUCKETS),
            shared: Family::default(),
            lock_waits: Family::default(),
            apply_waits: Family::default(),
        }
    }
}

impl ClusterMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "csgate_cluster_connected",
            "1 while the invalidation subscription is up, 0 while degraded",
            self.connected.clone(),
        );
        registry.register(
            "csgate_cluster_degraded",
            "1 while this replica cannot prove it hears every invalidation (subscription down, a heartbeat missing for 1 s, invalidations undelivered here or at a peer): local entries live degraded_ttl, no shared-tier refill",
            self.degraded.clone(),
        );
        registry.register(
            "csgate_cluster_peers",
            "Other replicas heard from within peer_timeout",
            self.peers.clone(),
        );
        registry.register(
            "csgate_cluster_invalidations_published",
            "Invalidation messages this replica published, by outcome (ok, timeout, error)",
            self.published.clone(),
        );
        registry.register(
            "csgate_cluster_invalidations_received",
            "Invalidation messages received from other replicas",
            self.received.clone(),
        );
        registry.register(
            "csgate_cluster_invalidations_applied",
            "Invalidation messages from other replicas applied to the local cache",
            self.applied.clone(),
        );
        registry.register(
            "csgate_cluster_resubscriptions",
            "Subscriptions (re-)established; each one flushes the local cache",
            self.resubscriptions.clone(),
        );
        registry.register(
            "csgate_cluster_invalidations_republished",
            "Invalidation messages published late, after a failed publish (Redis back)",
            self.republished.clone(),
        );
        registry.register(
            "csgate_cluster_invalidations_pending",
            "Invalidation messages this replica failed to publish and still holds to retry",
            self.pending.clone(),
        );
        registry.register(
            "csgate_cluster_bus_delay_seconds",
            "From publishing (the message's timestamp) to applying it on this replica",
            self.bus_delay.clone(),
        );
        registry.register(
            "csgate_cluster_shared_requests",
            "Shared-tier lookups, by result (hit, miss, too_large: over max_entry_bytes, a miss; error: a timeout is one)",
            self.shared.clone(),
        );
        registry.register(
            "csgate_cluster_lock_waits",
            "Cold misses that waited for another replica's fetch, by outcome (filled, fallback)",
            self.lock_waits.clone(),
        );
        registry.register(
            "csgate_cluster_apply_waits",
            "Writes that waited for the other replicas to apply their invalidation before answering, by outcome (applied, timeout: past op_timeout)",
            self.apply_waits.clone(),
        );
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.set(i64::from(up));
    }

    pub(crate) fn set_liveness(&self, degraded: bool, peers: usize) {
        self.degraded.set(i64::from(degraded));
        self.peers.set(i64::try_from(peers).unwrap_or(i64::MAX));
    }

    pub(crate) fn published(&self, outcome: OpOutcome) {
        self.published
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
    }

    pub(crate) fn republished(&self, messages: u64) {
        self.republished.inc_by(messages);
    }

    pub(crate) fn set_pending(&self, messages: usize) {
        self.pending
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    pub(crate) fn received(&self) {
        self.received.inc();
    }

    pub(crate) fn resubscribed(&self) {
        self.resubscriptions.inc();
    }

    /// The cache calls this once it has applied another replica's message.
    pub fn applied(&self, delay: Duration) {
        self.applied.inc();
        self.bus_delay.observe(delay.as_secs_f64());
    }

    pub(crate) fn shared(&self, result: &'static str) {
        self.shared.get_or_create(&ResultLabel { result }).inc();
    }

    /// A writer's wait for the other replicas' apply acknowledgements ended: `applied`
    /// (all of them) or `timeout` (past `op_timeout`).
    pub(crate) fn apply_wait(&self, outcome: &'static str) {
        self.apply_waits
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub(crate) fn lock_wait(&self, outcome: &'static str) {
        self.lock_waits
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counters read back, for tests and `/healthz`.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let shared = |result| self.shared.get_or_create(&ResultLabel { result }).get();
        MetricsSnapshot {
            connected: self.connected.get() == 1,
            received: self.received.get(),
            applied: self.applied.get(),
            resubscriptions: self.resubscriptions.get(),
            shared_hits: shared("hit"),
            shared_misses: shared("miss"),
            shared_errors: shared("error"),
            shared_too_large: shared("too_large"),
            republished: self.republished.get(),
        }
    }
}

/// A reading of the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub connected: bool,
    pub received: u64,
    pub applied: u64,
    pub resubscriptions: u64,
    pub shared_hits: u64,
    pub shared_misses: u64,
    pub shared_errors: u64,
    pub shared_too_large: u64,
    pub republished: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_under_its_documented_name() {
        let metrics = ClusterMetrics::default();
        metrics.set_connected(true);
        metrics.published(OpOutcome::Ok);
        metrics.applied(Duration::from_millis(1));
        metrics.shared("hit");
        metrics.lock_wait("filled");
        metrics.apply_wait("applied");
        metrics.set_liveness(true, 2);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for name in [
            "csgate_cluster_connected 1",
            "csgate_cluster_degraded 1",
            "csgate_cluster_peers 2",
            "csgate_cluster_invalidations_published_total{outcome=\"ok\"} 1",
            "csgate_cluster_invalidations_received_total 0",
            "csgate_cluster_invalidations_applied_total 1",
            "csgate_cluster_bus_delay_seconds_count 1",
            "csgate_cluster_shared_requests_total{result=\"hit\"} 1",
            "csgate_cluster_lock_waits_total{outcome=\"filled\"} 1",
            "csgate_cluster_apply_waits_total{outcome=\"applied\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
