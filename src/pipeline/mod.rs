//! The public request pipeline, as named stages, one module each:
//!
//! [`admit`] (limits, load shedding) → `route` ([`crate::routes`]) → [`validate`] →
//! [`lookup`] (the cache, anonymous routes) → [`forward`] → [`post_filter`] →
//! [`respond`] → [`log`]; and [`proxy`], the transparent path for everything else.
//!
//! Query Services answers are always computed by `post_filter` from a parsed upstream
//! (or cached) Service[]; everything else under the public prefix is streamed through
//! untouched but for hop-by-hop headers. `forward` is the only stage that talks to the
//! upstreams.

mod admit;
mod fleet;
mod forward;
mod log;
mod lookup;
mod post_filter;
mod proxy;
mod respond;
mod validate;

pub use lookup::Cached;
pub use respond::respond_json;
pub use validate::Validated;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::sync::Semaphore;

use crate::cache::{Cache, CacheOutcome};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::GatewayError;
use crate::httputil;
use crate::logging::Redactor;
use crate::metrics::Metrics;
use crate::query::filter;
use crate::query::params::{self, Limits};
use crate::query::{Lifecycle, TypeMap};
use crate::routes::{self, PathOwner, Route};
use crate::server::Body;
use crate::upstream::Upstreams;

/// The gateway. Cheap to clone; every clone shares the same state.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    upstreams: Upstreams,
    cache: Option<Cache>,
    /// The fleet this replica is in (`[cluster]`); `None` runs alone.
    cluster: Option<Cluster>,
    metrics: Metrics,
    inflight: Arc<Semaphore>,
    /// Scheme clients reached us by, for `X-Forwarded-Proto`.
    scheme: &'static str,
}

/// The per-request settings derived from `Config` once.
#[derive(Clone, Debug)]
pub struct Settings {
    pub service_types: TypeMap,
    pub limits: Limits,
    pub max_query_bytes: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    /// How long a replica waits for another's fetch of a cold key (the fleet lock)
    /// before fetching itself: the upstream deadline.
    pub fleet_wait: Duration,
    pub redactor: Redactor,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            service_types: config.service_types(),
            limits: Limits {
                max_key_bytes: config.server.max_key_bytes,
                ..Limits::default()
            },
            max_query_bytes: config.server.max_query_bytes,
            max_header_bytes: config.server.max_header_bytes,
            max_body_bytes: config.server.max_body_bytes,
            fleet_wait: config.upstream.deadline,
            redactor: Redactor {
                redact: config.log.redact,
            },
        }
    }
}

/// What the access log line says about one request; filled in by the stages.
struct Exchange {
    id: HeaderValue,
    method: Method,
    route: &'static str,
    started: Instant,
    /// The contact key or customer id, decoded. Personal data: logged only through
    /// `Redactor::personal`, which is computed only when the access line is enabled.
    owner: Option<String>,
    cache: Option<CacheOutcome>,
    upstream: Option<Arc<str>>,
    upstream_time: Option<Duration>,
}

impl Exchange {
    fn new(headers: &HeaderMap, method: Method) -> Exchange {
        Exchange {
            id: httputil::request_id(headers),
            method,
            route: "unmatched",
            started: Instant::now(),
            owner: None,
            cache: None,
            upstream: None,
            upstream_time: None,
        }
    }
}

impl Gateway {
    pub fn new(
        config: &Config,
        upstreams: Upstreams,
        cache: Option<Cache>,
        metrics: Metrics,
    ) -> Gateway {
        Gateway::in_fleet(config, upstreams, cache, None, metrics)
    }

    /// [`Gateway::new`] in a fleet: `cluster` is consulted on misses and writes.
    pub fn in_fleet(
        config: &Config,
        upstreams: Upstreams,
        cache: Option<Cache>,
        cluster: Option<Cluster>,
        metrics: Metrics,
    ) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                settings: Settings::from_config(config),
                upstreams,
                cache,
                cluster,
                metrics,
                inflight: Arc::new(Semaphore::new(config.server.max_inflight)),
                scheme: if config.server.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
            }),
        }
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.inner.upstreams
    }

    pub fn cache(&self) -> Option<&Cache> {
        self.inner.cache.as_ref()
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        self.inner.cluster.as_ref()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Serves one request. Never fails: every error becomes a response.
    pub async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let mut exchange = Exchange::new(&parts.headers, parts.method.clone());
        let _inflight = self.inner.metrics.inflight_guard();
        let result = match self.inner.inflight.clone().try_acquire_owned() {
            Ok(permit) => {
                let response = self.dispatch(parts, body, peer, &mut exchange).await;
                drop(permit);
                response
            }
            Err(_) => Err(GatewayError::Overloaded),
        };
        let response = self.respond(result, &exchange);
        self.log(&exchange, response.status());
        response
    }

    async fn dispatch(
        &self,
        parts: Parts,
        body: Incoming,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        self.admit(&parts)?;
        let route = routes::route(&parts.method, parts.uri.path())?;
        exchange.route = route.name();
        match route {
            Route::QueryServices { owner, lifecycle } => {
                self.query_services(&parts, owner, lifecycle, peer, exchange)
                    .await
            }
            Route::ServiceById { service_id } => {
                self.service_by_id(&parts, service_id, peer, exchange).await
            }
            Route::Proxy { rest } => {
                let rest = rest.to_owned();
                self.proxy(parts, body, &rest, peer, exchange).await
            }
        }
    }

    /// The six Query Services routes: validate, then the cache (anonymous routes) or
    /// the client's own query upstream, post-filtered either way.
    async fn query_services(
        &self,
        parts: &Parts,
        owner: PathOwner<'_>,
        lifecycle: Lifecycle,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        let validated = self.validate(parts, owner, lifecycle, exchange)?;
        if let Some(response) = self.lookup(parts, &validated, peer, exchange).await? {
            return Ok(response);
        }
        let headers = self.query_headers(&parts.headers, peer, &exchange.id);
        let path_and_query = with_query(&validated.route_path, &validated.query.upstream_query());
        let fetched = self.forward(&path_and_query, &headers, exchange).await?;
        if !fetched.status.is_success() {
            return Ok(respond::upstream_error(&parts.method, fetched));
        }
        let services = filter::parse_services(&fetched.body)
            .map_err(|e| GatewayError::UpstreamInvalidResponse(e.to_string()))?;
        let body = self.post_filter(services, &validated.query, exchange);
        Ok(respond_json(&parts.method, body, None))
    }

    /// Query Service by ID: include flags validated, the answer trimmed to them.
    async fn service_by_id(
        &self,
        parts: &Parts,
        service_id: &str,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        let (include, query) = params::parse_include_flags(parts.uri.query())
            .map_err(|e| GatewayError::InvalidParameter(e.to_string()))?;
        let headers = self.query_headers(&parts.headers, peer, &exchange.id);
        let path_and_query = with_query(&format!("/services/{service_id}"), &query);
        let fetched = self.forward(&path_and_query, &headers, exchange).await?;
        if !fetched.status.is_success() {
            return Ok(respond::upstream_error(&parts.method, fetched));
        }
        let body = post_filter::trim_one(&fetched.body, include)?;
        Ok(respond_json(&parts.method, body, None))
    }
}

fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}
