//! The families of the gateway's own edges: requests answered
//! (`csgate_http_requests`, `csgate_http_request_duration_seconds`), requests in
//! flight (`csgate_inflight_requests`) and upstream attempts (`csgate_upstream_*`).

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::latency_histogram;

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

/// `csgate_http_requests` and `csgate_http_request_duration_seconds`. Cheap to clone.
#[derive(Clone)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// Indexed like `ROUTES`.
    routes: Arc<[RouteHandles; ROUTES.len()]>,
}

impl RequestMetrics {
    pub fn register(registry: &mut Registry) -> RequestMetrics {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "csgate_http_requests",
            "Requests answered, by route name, method and status",
            requests.clone(),
        );
        let duration = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "csgate_http_request_duration_seconds",
            "Time from request head to response head, by route name",
            duration.clone(),
        );
        RequestMetrics {
            requests,
            duration,
            routes: Arc::default(),
        }
    }

    pub fn observe(
        &self,
        route: &'static str,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let count = || {
            self.requests
                .get_or_create(&RequestLabels {
                    route,
                    method: method_label(method),
                    status: status.as_u16(),
                })
                .clone()
        };
        let duration = || self.duration.get_or_create(&RouteLabel { route }).clone();
        let Some(handles) = route_index(route).map(|i| &self.routes[i]) else {
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
}

/// `csgate_upstream_*`: attempts, their time, each upstream's health, panic mode.
#[derive(Clone)]
pub struct UpstreamMetrics {
    requests: Family<UpstreamOutcome, Counter>,
    duration: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    healthy: Family<UpstreamLabel, Gauge>,
    panic: Gauge,
}

impl UpstreamMetrics {
    pub fn register(registry: &mut Registry) -> UpstreamMetrics {
        let requests = Family::<UpstreamOutcome, Counter>::default();
        registry.register(
            "csgate_upstream_requests",
            "Upstream attempts, by upstream origin and outcome",
            requests.clone(),
        );
        let duration = Family::<UpstreamLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "csgate_upstream_request_duration_seconds",
            "Time of one upstream attempt",
            duration.clone(),
        );
        let healthy = Family::<UpstreamLabel, Gauge>::default();
        registry.register(
            "csgate_upstream_healthy",
            "1 while the upstream takes traffic, 0 while ejected",
            healthy.clone(),
        );
        let panic = Gauge::default();
        registry.register(
            "csgate_upstream_panic",
            "1 while every upstream is ejected and all of them take traffic (panic mode)",
            panic.clone(),
        );
        UpstreamMetrics {
            requests,
            duration,
            healthy,
            panic,
        }
    }

    pub fn observe(&self, upstream: &str, outcome: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&UpstreamOutcome {
                upstream: upstream.to_owned(),
                outcome,
            })
            .inc();
        self.duration
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn set_healthy(&self, upstream: &str, healthy: bool) {
        self.healthy
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_owned(),
            })
            .set(i64::from(healthy));
    }

    pub fn set_panic(&self, panic: bool) {
        self.panic.set(i64::from(panic));
    }
}

/// `csgate_inflight_requests`.
#[derive(Clone, Default)]
pub struct Inflight(Gauge<i64, AtomicI64>);

impl Inflight {
    pub fn register(registry: &mut Registry) -> Inflight {
        let inflight = Inflight::default();
        registry.register(
            "csgate_inflight_requests",
            "Requests being served now",
            inflight.0.clone(),
        );
        inflight
    }

    /// Counts one in-flight request until the guard is dropped.
    pub fn guard(&self) -> InflightGuard {
        self.0.inc();
        InflightGuard(self.0.clone())
    }
}

/// Decrements `csgate_inflight_requests` on drop, whatever path the request took.
pub struct InflightGuard(Gauge<i64, AtomicI64>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
