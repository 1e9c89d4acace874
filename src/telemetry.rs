//! The gateway's metric set: the core's families ([`crate::metrics`]) and each
//! owner's (cache, cluster, limits, tracer), registered in one registry in the order
//! the exposition lists them, and the one handle the pipeline, the admin listener and
//! the start-up path share. Cheap to clone.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::cache::CacheMetrics;
use crate::cluster::ClusterMetrics;
use crate::limits::LimitMetrics;
use crate::metrics::{
    self, Format, Inflight, InflightGuard, Registry, RequestMetrics, UpstreamMetrics,
};
use crate::trace::TraceCounters;

/// All metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: RequestMetrics,
    upstream: UpstreamMetrics,
    cache: CacheMetrics,
    inflight: Inflight,
    /// `csgate_cluster_*`: registered always (zero without a fleet), so dashboards
    /// need no second shape.
    cluster: ClusterMetrics,
    /// `csgate_limit_*`, `csgate_backend_*`.
    limits: LimitMetrics,
    /// `csgate_trace_spans_*`: registered always (zero with tracing off).
    trace: TraceCounters,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        // In the order of the exposition.
        let requests = RequestMetrics::register(&mut registry);
        let upstream = UpstreamMetrics::register(&mut registry);
        let cache = CacheMetrics::register(&mut registry);
        let inflight = Inflight::register(&mut registry);
        let cluster = ClusterMetrics::default();
        cluster.register(&mut registry);
        let limits = LimitMetrics::default();
        limits.register(&mut registry);
        metrics::register_build(&mut registry);
        let trace = TraceCounters::register(&mut registry);
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                upstream,
                cache,
                inflight,
                cluster,
                limits,
                trace,
            }),
        }
    }

    pub fn observe_request(
        &self,
        route: &'static str,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        self.inner.requests.observe(route, method, status, elapsed);
    }

    pub fn observe_upstream(&self, upstream: &str, outcome: &'static str, elapsed: Duration) {
        self.inner.upstream.observe(upstream, outcome, elapsed);
    }

    pub fn set_upstream_healthy(&self, upstream: &str, healthy: bool) {
        self.inner.upstream.set_healthy(upstream, healthy);
    }

    pub fn set_upstream_panic(&self, panic: bool) {
        self.inner.upstream.set_panic(panic);
    }

    /// Counts one in-flight request until the guard is dropped.
    pub fn inflight_guard(&self) -> InflightGuard {
        self.inner.inflight.guard()
    }

    /// The cache's metrics (`csgate_cache_*`).
    pub fn cache(&self) -> &CacheMetrics {
        &self.inner.cache
    }

    /// The fleet's metrics (`csgate_cluster_*`).
    pub fn cluster(&self) -> &ClusterMetrics {
        &self.inner.cluster
    }

    /// The trace exporter's counters.
    pub fn trace(&self) -> &TraceCounters {
        &self.inner.trace
    }

    /// The limits' metrics (`csgate_limit_*`, `csgate_backend_*`).
    pub fn limits(&self) -> &LimitMetrics {
        &self.inner.limits
    }

    /// Every metric in `format`.
    pub fn encode(&self, format: Format) -> String {
        metrics::encode(&self.inner.registry, format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_in_the_exposition() {
        let m = Metrics::new();
        m.observe_request(
            "anonymous_services",
            &Method::GET,
            StatusCode::OK,
            Duration::from_millis(2),
        );
        m.observe_upstream("http://127.0.0.1:1", "success", Duration::from_millis(1));
        m.set_upstream_healthy("http://127.0.0.1:1", true);
        m.cache().result("hit");
        m.cache().eviction("size");
        m.cache().set_size(3, 300);
        let guard = m.inflight_guard();
        let text = m.encode(Format::Prometheus);
        for line in [
            "csgate_http_requests_total{route=\"anonymous_services\",method=\"GET\",status=\"200\"} 1",
            "csgate_http_request_duration_seconds_count{route=\"anonymous_services\"} 1",
            "csgate_upstream_requests_total{upstream=\"http://127.0.0.1:1\",outcome=\"success\"} 1",
            "csgate_upstream_healthy{upstream=\"http://127.0.0.1:1\"} 1",
            "csgate_cache_requests_total{result=\"hit\"} 1",
            "csgate_cache_evictions_total{cause=\"size\"} 1",
            "csgate_cache_entries 3",
            "csgate_cache_bytes 300",
            "csgate_inflight_requests 1",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        drop(guard);
        assert!(m
            .encode(Format::Prometheus)
            .contains("csgate_inflight_requests 0"));
    }

    /// The families in the order the exposition has always listed them (dashboards
    /// and the alert rules read names only, but a diff of two scrapes stays quiet).
    /// A family is listed once it has a sample.
    #[test]
    fn families_keep_their_order() {
        let m = Metrics::new();
        m.observe_request("proxy", &Method::GET, StatusCode::OK, Duration::ZERO);
        m.observe_upstream("http://127.0.0.1:1", "success", Duration::ZERO);
        m.set_upstream_healthy("http://127.0.0.1:1", true);
        m.cache().result("hit");
        m.cache().eviction("size");
        let text = m.encode(Format::OpenMetrics);
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .filter(|name| name.starts_with("csgate_"))
            .collect();
        let position = |name: &str| {
            families
                .iter()
                .position(|f| *f == name)
                .unwrap_or_else(|| panic!("{name} missing: {families:?}"))
        };
        let order = [
            "csgate_http_requests",
            "csgate_http_request_duration_seconds",
            "csgate_upstream_requests",
            "csgate_upstream_request_duration_seconds",
            "csgate_upstream_healthy",
            "csgate_upstream_panic",
            "csgate_cache_requests",
            "csgate_cache_entries",
            "csgate_cache_bytes",
            "csgate_cache_evictions",
            "csgate_inflight_requests",
            "csgate_cluster_connected",
            "csgate_limit_rejections",
            "csgate_build",
            "csgate_trace_spans_exported",
            "csgate_trace_spans_dropped",
        ];
        let positions: Vec<usize> = order.iter().map(|name| position(name)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{families:?}");
    }
}
