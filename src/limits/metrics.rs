//! The limits' Prometheus metrics, `csgate_limit_*` and `csgate_backend_*`. Labels are
//! scopes and paths, a fixed set: never a tenant, a credential or an address.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use crate::error::Rejection;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

/// Queue wait buckets, seconds: 100 µs to the default deadline and past it.
const WAIT_BUCKETS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 2.0,
];

/// The limits' metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LimitMetrics {
    rejections: Family<ScopeLabel, Counter>,
    backend_inflight: Gauge,
    queue_depth: Gauge,
    queue_wait: Histogram,
    fleet_decisions: Family<PathLabel, Counter>,
    fleet_replicas: Gauge,
}

impl Default for LimitMetrics {
    fn default() -> Self {
        let metrics = LimitMetrics {
            rejections: Family::default(),
            backend_inflight: Gauge::default(),
            queue_depth: Gauge::default(),
            queue_wait: Histogram::new(WAIT_BUCKETS),
            fleet_decisions: Family::default(),
            fleet_replicas: Gauge::default(),
        };
        // Every scope shows from the start, at zero.
        for rejection in Rejection::ALL {
            let _ = metrics.rejections.get_or_create(&ScopeLabel {
                scope: rejection.name(),
            });
        }
        metrics.fleet_replicas.set(1);
        metrics
    }
}

impl LimitMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "csgate_limit_rejections",
            "Requests and connections refused by a limit, by scope (tenant, credential: 429; queue_full, queue_deadline: 503; client_connections, h2_streams: refused)",
            self.rejections.clone(),
        );
        registry.register(
            "csgate_backend_inflight",
            "Requests holding a backend slot now (at most [limits.backend] max_concurrent)",
            self.backend_inflight.clone(),
        );
        registry.register(
            "csgate_backend_queue_depth",
            "Requests waiting for a backend slot now",
            self.queue_depth.clone(),
        );
        registry.register(
            "csgate_backend_queue_wait_seconds",
            "Time requests waited for a backend slot (those that got one)",
            self.queue_wait.clone(),
        );
        registry.register(
            "csgate_limit_fleet_decisions",
            "Rate-limit decisions in a fleet, by path (redis: fleet-wide; local: this replica's share while Redis is unreachable)",
            self.fleet_decisions.clone(),
        );
        registry.register(
            "csgate_limit_fleet_replicas",
            "Live replicas the fleet-wide rate limits are shared by, as last seen in Redis",
            self.fleet_replicas.clone(),
        );
    }

    pub fn rejected(&self, rejection: Rejection) {
        self.rejections
            .get_or_create(&ScopeLabel {
                scope: rejection.name(),
            })
            .inc();
    }

    pub fn set_backend(&self, inflight: usize, queued: usize) {
        self.backend_inflight
            .set(i64::try_from(inflight).unwrap_or(i64::MAX));
        self.queue_depth
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
    }

    pub fn waited(&self, wait: Duration) {
        self.queue_wait.observe(wait.as_secs_f64());
    }

    pub fn fleet_decision(&self, path: &'static str) {
        self.fleet_decisions
            .get_or_create(&PathLabel { path })
            .inc();
    }

    pub fn set_fleet_replicas(&self, n: usize) {
        self.fleet_replicas
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
