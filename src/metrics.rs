//! Prometheus metrics (prometheus-client), exposed by the admin listener in either
//! exposition format ([`Format`], chosen by the scraper's `Accept`), with
//! `csgate_build_info` and the standard process metrics ([`process`]).
//!
//! Label values are route *names*, upstream origins, outcomes and cache results:
//! never a contact key, a customer id or anything else from a request path.

mod process;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Latency buckets, seconds: 100 µs to 10 s. Cache hits live in the first buckets,
/// upstream round trips in the middle, timeouts at the end.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The labels of `csgate_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    /// The git commit built (build.rs), `unknown` when there was none.
    commit: &'static str,
}

/// The two exposition formats `/metrics` serves, each with its own content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text: counters' metadata under the family name (without
    /// `_total`), `# EOF` at the end.
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }

    /// OpenMetrics when `Accept` asks for `application/openmetrics-text` with a quality
    /// above zero and no lower than the text format's (Prometheus itself asks this way);
    /// otherwise, and without `Accept`, the Prometheus text format, which every scraper
    /// reads.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let mut openmetrics = 0.0_f32;
        let mut text = 0.0_f32;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim();
            let quality = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if media.eq_ignore_ascii_case("application/openmetrics-text") {
                openmetrics = openmetrics.max(quality);
            } else if ["text/plain", "text/*", "*/*"]
                .iter()
                .any(|m| media.eq_ignore_ascii_case(m))
            {
                text = text.max(quality);
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

/// A method as a static label: the standard ones by name, anything else `OTHER`, so a
/// client cannot grow the label set (and no label is allocated per request).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamOutcome {
    upstream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

/// The route names `observe_request` is called with (`routes::Route::name` and
/// `unmatched`), each with a slot of resolved handles.
const ROUTES: [&str; 9] = [
    "unmatched",
    "anonymous_services",
    "anonymous_services_active",
    "anonymous_services_completed",
    "customer_services",
    "customer_services_active",
    "customer_services_completed",
    "service_by_id",
    "proxy",
];

/// The `csgate_cache_requests` results, each with a resolved handle.
const CACHE_RESULTS: [&str; 5] = ["hit", "miss", "stale", "coalesced", "bypass"];

/// A route's metric handles for its common answers, resolved through the families on
/// first use and kept: `Family::get_or_create` hashes the labels with SipHash and
/// takes a lock on every call (~1k instructions per request, callgrind). Resolved
/// lazily, not at start-up, so that the exposition lists exactly the label sets that
/// were observed, as before.
#[derive(Default)]
struct RouteHandles {
    duration: OnceLock<Histogram>,
    /// `GET` and `HEAD` answered `200`.
    get_ok: OnceLock<Counter>,
    head_ok: OnceLock<Counter>,
}

fn route_index(route: &str) -> Option<usize> {
    ROUTES.iter().position(|r| *r == route)
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// All metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    upstream_requests: Family<UpstreamOutcome, Counter>,
    upstream_duration: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    upstream_healthy: Family<UpstreamLabel, Gauge>,
    upstream_panic: Gauge,
    cache_requests: Family<ResultLabel, Counter>,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    cache_evictions: Family<CauseLabel, Counter>,
    inflight: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Indexed like `ROUTES`.
    routes: [RouteHandles; ROUTES.len()],
    /// Indexed like `CACHE_RESULTS`.
    cache_results: [OnceLock<Counter>; CACHE_RESULTS.len()],
    /// `csgate_cluster_*`: registered always (zero without a fleet), so dashboards
    /// need no second shape.
    cluster: crate::cluster::ClusterMetrics,
    /// `csgate_trace_spans_*`: registered always (zero with tracing off).
    trace: crate::trace::TraceCounters,
    /// `csgate_limit_*`, `csgate_backend_*`.
    limits: crate::limits::LimitMetrics,
}

/// The label of `csgate_trace_spans_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropReason {
    /// `queue_full` (`[tracing] max_queue` spans were waiting) or `export_failed`
    /// (the collector refused the batch or did not answer in time).
    reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "csgate_http_requests",
            "Requests answered, by route name, method and status",
            requests.clone(),
        );
        let request_duration =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "csgate_http_request_duration_seconds",
            "Time from request head to response head, by route name",
            request_duration.clone(),
        );
        let upstream_requests = Family::<UpstreamOutcome, Counter>::default();
        registry.register(
            "csgate_upstream_requests",
            "Upstream attempts, by upstream origin and outcome",
            upstream_requests.clone(),
        );
        let upstream_duration =
            Family::<UpstreamLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "csgate_upstream_request_duration_seconds",
            "Time of one upstream attempt",
            upstream_duration.clone(),
        );
        let upstream_healthy = Family::<UpstreamLabel, Gauge>::default();
        registry.register(
            "csgate_upstream_healthy",
            "1 while the upstream takes traffic, 0 while ejected",
            upstream_healthy.clone(),
        );
        let upstream_panic = Gauge::default();
        registry.register(
            "csgate_upstream_panic",
            "1 while every upstream is ejected and all of them take traffic (panic mode)",
            upstream_panic.clone(),
        );
        let cache_requests = Family::<ResultLabel, Counter>::default();
        registry.register(
            "csgate_cache_requests",
            "Anonymous lookups by cache result (hit, miss, stale, coalesced, bypass)",
            cache_requests.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "csgate_cache_entries",
            "Entries in the anonymous-lookup cache",
            cache_entries.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "csgate_cache_bytes",
            "Weighted size of the cache in bytes",
            cache_bytes.clone(),
        );
        let cache_evictions = Family::<CauseLabel, Counter>::default();
        registry.register(
            "csgate_cache_evictions",
            "Entries removed, by cause (size, expired, explicit, replaced)",
            cache_evictions.clone(),
        );
        let inflight = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "csgate_inflight_requests",
            "Requests being served now",
            inflight.clone(),
        );
        let cluster = crate::cluster::ClusterMetrics::default();
        cluster.register(&mut registry);
        let limits = crate::limits::LimitMetrics::default();
        limits.register(&mut registry);
        registry.register(
            "csgate_build",
            "The csgate build: version and git commit",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("CSGATE_GIT_COMMIT"),
            }),
        );
        registry.register_collector(Box::new(process::ProcessCollector));
        let dropped = Family::<DropReason, Counter>::default();
        // Clones of the family's own counters: the exporter increments what is exposed.
        let trace = crate::trace::TraceCounters {
            exported: Counter::default(),
            dropped_queue_full: dropped.get_or_create_owned(&DropReason {
                reason: "queue_full",
            }),
            dropped_export_failed: dropped.get_or_create_owned(&DropReason {
                reason: "export_failed",
            }),
        };
        registry.register(
            "csgate_trace_spans_exported",
            "Spans the OTLP collector accepted",
            trace.exported.clone(),
        );
        registry.register(
            "csgate_trace_spans_dropped",
            "Spans not exported: the queue was full, or the collector refused the batch or \
             did not answer in time",
            dropped,
        );
        Metrics {
            inner: Arc::new(Inner {
                cluster,
                trace,
                limits,
                registry,
                requests,
                request_duration,
                upstream_requests,
                upstream_duration,
                upstream_healthy,
                upstream_panic,
                cache_requests,
                cache_entries,
                cache_bytes,
                cache_evictions,
                inflight,
                routes: Default::default(),
                cache_results: Default::default(),
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
        let inner = &*self.inner;
        let count = || {
            inner
                .requests
                .get_or_create(&RequestLabels {
                    route,
                    method: method_label(method),
                    status: status.as_u16(),
                })
                .clone()
        };
        let duration = || {
            inner
                .request_duration
                .get_or_create(&RouteLabel { route })
                .clone()
        };
        let Some(handles) = route_index(route).map(|i| &inner.routes[i]) else {
            count().inc();
            duration().observe(elapsed.as_secs_f64());
            return;
        };
        let ok = match *method {
            _ if status != StatusCode::OK => None,
            Method::GET => Some(&handles.get_ok),
            Method::HEAD => Some(&handles.head_ok),
            _ => None,
        };
        match ok {
            Some(slot) => slot.get_or_init(count).inc(),
            None => count().inc(),
        };
        handles
            .duration
            .get_or_init(duration)
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_upstream(&self, upstream: &str, outcome: &'static str, elapsed: Duration) {
        self.inner
            .upstream_requests
            .get_or_create(&UpstreamOutcome {
                upstream: upstream.to_owned(),
                outcome,
            })
            .inc();
        self.inner
            .upstream_duration
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn set_upstream_healthy(&self, upstream: &str, healthy: bool) {
        self.inner
            .upstream_healthy
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_owned(),
            })
            .set(i64::from(healthy));
    }

    pub fn set_upstream_panic(&self, panic: bool) {
        self.inner.upstream_panic.set(i64::from(panic));
    }

    pub fn cache_result(&self, result: &'static str) {
        let count = || {
            self.inner
                .cache_requests
                .get_or_create(&ResultLabel { result })
                .clone()
        };
        match CACHE_RESULTS.iter().position(|r| *r == result) {
            Some(i) => self.inner.cache_results[i].get_or_init(count).inc(),
            None => count().inc(),
        };
    }

    pub fn cache_eviction(&self, cause: &'static str) {
        self.inner
            .cache_evictions
            .get_or_create(&CauseLabel { cause })
            .inc();
    }

    pub fn set_cache_size(&self, entries: u64, bytes: u64) {
        self.inner.cache_entries.set(entries as i64);
        self.inner.cache_bytes.set(bytes as i64);
    }

    /// Counts one in-flight request until the guard is dropped.
    /// The fleet's metrics (`csgate_cluster_*`).
    pub fn cluster(&self) -> &crate::cluster::ClusterMetrics {
        &self.inner.cluster
    }

    /// The trace exporter's counters.
    pub fn trace(&self) -> &crate::trace::TraceCounters {
        &self.inner.trace
    }

    /// The limits' metrics (`csgate_limit_*`, `csgate_backend_*`).
    pub fn limits(&self) -> &crate::limits::LimitMetrics {
        &self.inner.limits
    }

    pub fn inflight_guard(&self) -> InflightGuard {
        self.inner.inflight.inc();
        InflightGuard(self.inner.inflight.clone())
    }

    /// Every metric in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut out = String::new();
        let registry = &self.inner.registry;
        match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry),
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
            }
        }
        .expect("writing to a String cannot fail");
        out
    }
}

/// Decrements `csgate_inflight_requests` on drop, whatever path the request took.
pub struct InflightGuard(Gauge<i64, std::sync::atomic::AtomicI64>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_chooses_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, expected) in [
            (None, Format::Prometheus),
            (Some(""), Format::Prometheus),
            (Some("*/*"), Format::Prometheus),
            (Some("text/plain"), Format::Prometheus),
            (Some(prometheus), Format::OpenMetrics),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; version=1.0.0"),
                Format::OpenMetrics,
            ),
            (Some("application/openmetrics-text;q=0"), Format::Prometheus),
            (
                Some("application/openmetrics-text;q=0.3, text/plain"),
                Format::Prometheus,
            ),
            (
                Some("text/plain;q=0.2, application/openmetrics-text;q=0.5"),
                Format::OpenMetrics,
            ),
            (Some("application/json"), Format::Prometheus),
        ] {
            assert_eq!(Format::negotiate(accept), expected, "{accept:?}");
        }
        assert_eq!(
            Format::OpenMetrics.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert_eq!(
            Format::Prometheus.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }

    /// Counters' metadata: OpenMetrics names the family without `_total` and ends with
    /// `# EOF`; the text format names the series. Both carry the build and process
    /// metrics.
    #[test]
    fn each_format_names_counters_its_own_way() {
        let m = Metrics::new();
        m.cache_result("hit");
        let open = m.encode(Format::OpenMetrics);
        assert!(
            open.contains("# TYPE csgate_cache_requests counter\n"),
            "{open}"
        );
        assert!(open.ends_with("# EOF\n"));
        let text = m.encode(Format::Prometheus);
        assert!(
            text.contains("# TYPE csgate_cache_requests_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        let build = format!(
            "csgate_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            env!("CSGATE_GIT_COMMIT")
        );
        for body in [&open, &text] {
            assert!(body.contains(&build), "missing {build}\n{body}");
            assert!(body.contains("csgate_cache_requests_total{result=\"hit\"} 1"));
            #[cfg(target_os = "linux")]
            for series in [
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_open_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(body.contains(series), "missing {series}\n{body}");
            }
        }
    }

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
        m.cache_result("hit");
        m.cache_eviction("size");
        m.set_cache_size(3, 300);
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

    /// The handles kept per route count into the same series as the families.
    #[test]
    fn kept_handles_and_families_count_the_same_series() {
        let m = Metrics::new();
        let ms = Duration::from_millis(1);
        for (route, method, status) in [
            ("anonymous_services", Method::GET, StatusCode::OK),
            ("anonymous_services", Method::GET, StatusCode::OK),
            ("anonymous_services", Method::HEAD, StatusCode::OK),
            ("anonymous_services", Method::GET, StatusCode::NOT_FOUND),
            ("anonymous_services", Method::POST, StatusCode::OK),
            ("not_a_route", Method::GET, StatusCode::OK),
        ] {
            m.observe_request(route, &method, status, ms);
        }
        for result in ["hit", "hit", "miss", "unknown"] {
            m.cache_result(result);
        }
        let text = m.encode(Format::Prometheus);
        for line in [
            "csgate_http_requests_total{route=\"anonymous_services\",method=\"GET\",status=\"200\"} 2",
            "csgate_http_requests_total{route=\"anonymous_services\",method=\"HEAD\",status=\"200\"} 1",
            "csgate_http_requests_total{route=\"anonymous_services\",method=\"GET\",status=\"404\"} 1",
            "csgate_http_requests_total{route=\"anonymous_services\",method=\"POST\",status=\"200\"} 1",
            "csgate_http_requests_total{route=\"not_a_route\",method=\"GET\",status=\"200\"} 1",
            "csgate_http_request_duration_seconds_count{route=\"anonymous_services\"} 5",
            "csgate_http_request_duration_seconds_count{route=\"not_a_route\"} 1",
            "csgate_cache_requests_total{result=\"hit\"} 2",
            "csgate_cache_requests_total{result=\"miss\"} 1",
            "csgate_cache_requests_total{result=\"unknown\"} 1",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(
            !text.contains("route=\"proxy\""),
            "only observed series are listed"
        );
        assert!(
            !text.contains("result=\"stale\""),
            "only observed series are listed"
        );
    }
}
