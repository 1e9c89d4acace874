//! The metrics core (prometheus-client): the registry every owner registers its own
//! families in, the two exposition formats ([`Format`], chosen by the scraper's
//! `Accept`, [`encode`]), the latency buckets, `csgate_build_info` and the standard
//! process metrics ([`process`]), and the families of the gateway's own edges
//! (requests, upstream attempts: [`RequestMetrics`], [`UpstreamMetrics`],
//! [`Inflight`]). The cache, the cluster, the limits and the tracer define theirs
//! beside their code; the gateway's whole set is put together above them.
//!
//! Label values are route *names*, upstream origins, outcomes and cache results:
//! never a contact key, a customer id or anything else from a request path.

mod format;
mod process;
mod requests;

pub use format::{encode, Format};
pub use prometheus_client::registry::Registry;
pub use requests::{Inflight, InflightGuard, RequestMetrics, UpstreamMetrics};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;

/// Latency buckets, seconds: 100 µs to 10 s. Cache hits live in the first buckets,
/// upstream round trips in the middle, timeouts at the end.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram over [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The labels of `csgate_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    /// The git commit built (build.rs), `unknown` when there was none.
    commit: &'static str,
}

/// Registers `csgate_build_info` and the standard process metrics.
pub fn register_build(registry: &mut Registry) {
    registry.register(
        "csgate_build",
        "The csgate build: version and git commit",
        Info::new(BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            commit: env!("CSGATE_GIT_COMMIT"),
        }),
    );
    registry.register_collector(Box::new(process::ProcessCollector));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Method, StatusCode};

    use super::*;

    /// Counters' metadata: OpenMetrics names the family without `_total` and ends with
    /// `# EOF`; the text format names the series. Both carry the build and process
    /// metrics.
    #[test]
    fn each_format_names_counters_its_own_way() {
        let mut registry = Registry::default();
        let requests = RequestMetrics::register(&mut registry);
        register_build(&mut registry);
        requests.observe("proxy", &Method::GET, StatusCode::OK, Duration::ZERO);
        let open = encode(&registry, Format::OpenMetrics);
        assert!(
            open.contains("# TYPE csgate_http_requests counter\n"),
            "{open}"
        );
        assert!(open.ends_with("# EOF\n"));
        let text = encode(&registry, Format::Prometheus);
        assert!(
            text.contains("# TYPE csgate_http_requests_total counter\n"),
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
            assert!(body.contains(
                "csgate_http_requests_total{route=\"proxy\",method=\"GET\",status=\"200\"} 1"
            ));
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

    /// The handles kept per route count into the same series as the families.
    #[test]
    fn kept_handles_and_families_count_the_same_series() {
        let mut registry = Registry::default();
        let m = RequestMetrics::register(&mut registry);
        let ms = Duration::from_millis(1);
        for (route, method, status) in [
            ("anonymous_services", Method::GET, StatusCode::OK),
            ("anonymous_services", Method::GET, StatusCode::OK),
            ("anonymous_services", Method::HEAD, StatusCode::OK),
            ("anonymous_services", Method::GET, StatusCode::NOT_FOUND),
            ("anonymous_services", Method::POST, StatusCode::OK),
            ("not_a_route", Method::GET, StatusCode::OK),
        ] {
            m.observe(route, &method, status, ms);
        }
        let text = encode(&registry, Format::Prometheus);
        for line in [
            "csgate_http_requests_total{route=\"anonymous_services\",method=\"GET\",status=\"200\"} 2",
            "csgate_http_requests_total{route=\"anonymous_services\",method=\"HEAD\",status=\"200\"} 1",
            "csgate_http_requests_total{route=\"anonymous_services\",method=\"GET\",status=\"404\"} 1",
            "csgate_http_requests_total{route=\"anonymous_services\",method=\"POST\",status=\"200\"} 1",
            "csgate_http_requests_total{route=\"not_a_route\",method=\"GET\",status=\"200\"} 1",
            "csgate_http_request_duration_seconds_count{route=\"anonymous_services\"} 5",
            "csgate_http_request_duration_seconds_count{route=\"not_a_route\"} 1",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(
            !text.contains("route=\"proxy\""),
            "only observed series are listed"
        );
    }
}
