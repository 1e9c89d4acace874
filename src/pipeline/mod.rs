//! The public request pipeline, as named stages, one module each:
//!
//! [`admit`] (limits, load shedding, the tenant) → `route` ([`crate::routes`], the one
//! path table) → [`validate`] → [`lookup`] (the cache, anonymous routes) → [`forward`]
//! → [`post_filter`] → [`respond`] → [`log`]; and [`proxy`], the transparent path for
//! everything else, whose writes go through [`write`] (invalidation on the 2xx head).
//!
//! Query Services answers are always computed by `post_filter` from an indexed upstream
//! (or cached) Service[]; everything else under the public prefix is streamed through
//! untouched but for hop-by-hop headers. `forward` is the only stage that talks to the
//! upstreams.

mod admit;
mod broad;
mod fleet;
mod forward;
mod log;
mod lookup;
mod post_filter;
mod proxy;
mod respond;
mod validate;
mod write;

pub use lookup::Cached;
pub use respond::respond_json;
pub use validate::{Owner, Validated};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use tokio::sync::Semaphore;

use crate::cache::CacheConfig;
use crate::cache::{Cache, CacheOutcome};
use crate::cluster::Cluster;
use crate::cluster::ClusterConfig;
use crate::error::GatewayError;
use crate::httputil;
use crate::identity::Tenant;
use crate::limits::{BackendPass, LimitsConfig, StreamBudget, Ticket};
use crate::logging::{LogConfig, Redactor};
use crate::query::params::{self, Limits};
use crate::query::{Lifecycle, TypeMap};
use crate::routes::{self, PathOwner, Route};
use crate::server::{Body, ServerConfig};
use crate::settings::Cidr;
use crate::telemetry::Metrics;
use crate::trace::{self, Span, Tracer};
use crate::upstream::{UpstreamConfig, Upstreams};

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
    /// `[tracing]`; `None` (off) makes no span, and every span site is one test of it.
    tracer: Option<Tracer>,
    metrics: Metrics,
    /// Rates, the backend's fair share, streams per connection (`[limits]`).
    limits: crate::limits::Limits,
    inflight: Arc<Semaphore>,
    /// Scheme clients reached us by, for `X-Forwarded-Proto`.
    scheme: &'static str,
}

/// The sections of the configuration the pipeline reads, handed over by the loader
/// (`Config::pipeline`), so that the pipeline does not depend on the loader.
#[derive(Clone, Debug)]
pub struct Sections<'a> {
    pub server: &'a ServerConfig,
    pub upstream: &'a UpstreamConfig,
    pub cache: &'a CacheConfig,
    pub log: &'a LogConfig,
    pub limits: &'a LimitsConfig,
    pub cluster: &'a ClusterConfig,
    /// `[business_attributes.service_type]`.
    pub service_types: TypeMap,
}

/// The per-request settings derived from the configuration once.
#[derive(Clone, Debug)]
pub struct Settings {
    pub service_types: TypeMap,
    pub limits: Limits,
    pub max_query_bytes: usize,
    /// The longest tenant header value (`[server] max_tenant_bytes`).
    pub max_tenant_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    /// Time spent waiting for a request body, summed; past it 408.
    pub body_read_timeout: Duration,
    /// How long a replica waits for another's fetch of a cold key (the fleet lock)
    /// before fetching itself: the upstream deadline.
    pub fleet_wait: Duration,
    pub redactor: Redactor,
    /// `Cache-Control` on Query Services answers (`[cache] downstream_cache_control`).
    pub downstream_cache_control: HeaderValue,
    /// Peers whose forwarding headers are extended instead of replaced.
    pub trusted_proxies: Vec<Cidr>,
    /// The `Via` pseudonym; `None` sends no `Via`.
    pub via: Option<String>,
    /// `via`'s entry per protocol version, built once.
    pub via_entries: Option<httputil::ViaEntries>,
    /// Forward the client's `Host` unchanged.
    pub preserve_host: bool,
}

impl Settings {
    pub fn from_config(config: &Sections<'_>) -> Settings {
        Settings {
            service_types: config.service_types.clone(),
            limits: Limits {
                max_key_bytes: config.server.max_key_bytes,
                ..Limits::default()
            },
            max_query_bytes: config.server.max_query_bytes,
            max_tenant_bytes: config.server.max_tenant_bytes,
            max_header_bytes: config.server.max_header_bytes,
            max_headers: config.server.max_headers,
            max_body_bytes: config.server.max_body_bytes,
            body_read_timeout: config.server.body_read_timeout,
            redactor: Redactor::from_config(config.log),
            downstream_cache_control: config.cache.downstream_cache_control.clone(),
            trusted_proxies: config.server.trusted_proxies.clone(),
            via: config.server.via.clone(),
            via_entries: config
                .server
                .via
                .as_deref()
                .and_then(httputil::ViaEntries::new),
            preserve_host: config.upstream.preserve_host,
            fleet_wait: config.upstream.deadline,
        }
    }
}

/// What the access log line says about one request; filled in by the stages.
struct Exchange {
    id: HeaderValue,
    method: Method,
    /// The client's protocol version, for the `Via` csgate adds upstream.
    version: Version,
    route: &'static str,
    started: Instant,
    /// The contact key or customer id, decoded. Personal data: logged only through
    /// `Redactor::personal`, which is computed only when the access line is enabled.
    owner: Option<String>,
    cache: Option<CacheOutcome>,
    upstream: Option<Arc<str>>,
    upstream_time: Option<Duration>,
    /// The client's address: the peer, or from a peer in `trusted_proxies` the
    /// nearest untrusted `X-Forwarded-For` entry.
    client: Option<std::net::IpAddr>,
    /// The request body's declared length (`Content-Length`), when it has one.
    bytes_in: Option<u64>,
    /// The error kind of a failed request (the CS `exception`), for the access line.
    cause: Option<&'static str>,
    /// The request's server span, when tracing is on and the request sampled.
    span: Option<Span>,
    /// Who the request is for the limits, once `admit` has read its tenant.
    ticket: Option<Ticket>,
}

impl Exchange {
    fn new(headers: &HeaderMap, method: Method) -> Exchange {
        Exchange {
            id: httputil::request_id(headers),
            method,
            version: Version::HTTP_11,
            route: "unmatched",
            started: Instant::now(),
            owner: None,
            cache: None,
            upstream: None,
            upstream_time: None,
            client: None,
            bytes_in: None,
            cause: None,
            span: None,
            ticket: None,
        }
    }
}

impl Gateway {
    pub fn new(
        config: Sections<'_>,
        upstreams: Upstreams,
        cache: Option<Cache>,
        metrics: Metrics,
    ) -> Gateway {
        Gateway::in_fleet(config, upstreams, cache, None, None, metrics)
    }

    /// [`Gateway::new`] in a fleet: `cluster` is consulted on misses and writes; with a
    /// `tracer`, requests make spans.
    pub fn in_fleet(
        config: Sections<'_>,
        upstreams: Upstreams,
        cache: Option<Cache>,
        cluster: Option<Cluster>,
        tracer: Option<Tracer>,
        metrics: Metrics,
    ) -> Gateway {
        let limits = crate::limits::Limits::new(
            config.limits,
            upstreams.targets().len(),
            config.cluster,
            metrics.limits().clone(),
        );
        Gateway {
            inner: Arc::new(Inner {
                settings: Settings::from_config(&config),
                upstreams,
                cache,
                cluster,
                tracer,
                limits,
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

    /// The span exporter, when `[tracing]` is on.
    pub fn tracer(&self) -> Option<&Tracer> {
        self.inner.tracer.as_ref()
    }

    /// The limits (`[limits]`): rates, the backend's fair share.
    pub fn limits(&self) -> &crate::limits::Limits {
        &self.inner.limits
    }

    /// What a request needs before it reaches the backend (see [`crate::limits::Limits::backend`]);
    /// `None` for a request the limits do not know (the lookup stage driven alone).
    async fn backend_pass(&self, exchange: &Exchange) -> Result<Option<BackendPass>, GatewayError> {
        match &exchange.ticket {
            Some(ticket) => self.inner.limits.backend(ticket).await.map(Some),
            None => Ok(None),
        }
    }

    /// Serves one request. Never fails: every error becomes a response.
    pub async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        httputil::host_from_authority(&mut parts);
        let mut exchange = Exchange::new(&parts.headers, parts.method.clone());
        if let Some(tracer) = &self.inner.tracer {
            exchange.span = tracer.server_span(&parts.headers, "request");
        }
        exchange.version = parts.version;
        exchange.client = Some(self.client_address(&parts.headers, peer));
        exchange.bytes_in = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let _inflight = self.inner.metrics.inflight_guard();
        let result = match self.inner.inflight.clone().try_acquire_owned() {
            Ok(permit) => {
                let response = self.dispatch(parts, body, peer, &mut exchange).await;
                drop(permit);
                response
            }
            Err(_) => Err(GatewayError::Overloaded),
        };
        if let Err(error) = &result {
            exchange.cause = Some(error.status_and_kind().1);
        }
        let response = self.respond(result, &exchange);
        self.log(&exchange, &response);
        if let Some(span) = exchange.span.take() {
            end_server_span(span, &exchange, &response, self.inner.scheme);
        }
        response
    }

    async fn dispatch(
        &self,
        parts: Parts,
        body: Incoming,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        let tenant = self.admit(&parts)?;
        let limits = &self.inner.limits;
        let ticket = limits.ticket(
            &tenant,
            parts.headers.get(http::header::AUTHORIZATION),
            parts.extensions.get::<StreamBudget>().cloned(),
        );
        if limits.count_hits() {
            limits.check_rates(&ticket).await?;
        }
        exchange.ticket = Some(ticket);
        // The `Uri` shares its bytes: the clone lets the route borrow the path while
        // the proxy takes the request's parts.
        let uri = parts.uri.clone();
        let path = routes::canonicalise(uri.path())?;
        let route = routes::route(&parts.method, &path)?;
        exchange.route = route.name();
        let s = &self.inner.settings;
        let cache_control = &s.downstream_cache_control;
        match route {
            Route::QueryServices { owner, lifecycle } => {
                read_to_end(body, s.max_body_bytes, s.body_read_timeout).await?;
                self.query_services(&parts, owner, lifecycle, &tenant, peer, exchange)
                    .await
                    .map(|r| httputil::with_cache_control(r, cache_control))
            }
            Route::ServiceById { service_id } => {
                read_to_end(body, s.max_body_bytes, s.body_read_timeout).await?;
                self.service_by_id(&parts, service_id, peer, exchange)
                    .await
                    .map(|r| httputil::with_cache_control(r, cache_control))
            }
            Route::Proxy { rest, write } => {
                self.proxy(parts, body, rest, write, &tenant, peer, exchange)
                    .await
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
        tenant: &Tenant,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        let validated = self.validate(parts, owner, lifecycle, exchange)?;
        if let Some(response) = self.lookup(parts, &validated, tenant, exchange).await? {
            return Ok(response);
        }
        let headers = self.query_headers(&parts.headers, peer, exchange);
        let path_and_query = with_query(&validated.route_path, &validated.query.upstream_query());
        let fetched = self.forward(&path_and_query, &headers, exchange).await?;
        if !fetched.status.is_success() {
            return Ok(respond::upstream_error(&parts.method, fetched));
        }
        let _span = trace::child(exchange.span.as_ref(), "post_filter", trace::Kind::Internal);
        let broad = post_filter::parse(fetched.body)?;
        let body = self.post_filter(&broad, &validated.query, exchange);
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
        let headers = self.query_headers(&parts.headers, peer, exchange);
        // `service_id` is a segment of the canonical path already.
        let path_and_query = with_query(&format!("/services/{service_id}"), &query);
        let fetched = self.forward(&path_and_query, &headers, exchange).await?;
        if !fetched.status.is_success() {
            return Ok(respond::upstream_error(&parts.method, fetched));
        }
        let _span = trace::child(exchange.span.as_ref(), "post_filter", trace::Kind::Internal);
        let body = post_filter::trim_one(&fetched.body, include)?;
        Ok(respond_json(&parts.method, body, None))
    }
}

/// The server span's name and attributes (HTTP semantic conventions), set once the
/// answer is known. No `url.path` or `url.query`: they hold contact keys and customer
/// ids; `http.route` is the route's name.
fn end_server_span(
    mut span: Span,
    exchange: &Exchange,
    response: &Response<Body>,
    scheme: &'static str,
) {
    let method = exchange.method.as_str();
    span.set_name(format!("{method} {}", exchange.route));
    span.set("http.request.method", method.to_owned());
    span.set("http.route", exchange.route);
    span.set("url.scheme", scheme);
    span.set(
        "network.protocol.version",
        match exchange.version {
            Version::HTTP_10 => "1.0",
            Version::HTTP_2 => "2",
            _ => "1.1",
        },
    );
    let status = response.status().as_u16();
    span.set("http.response.status_code", i64::from(status));
    if let Ok(id) = exchange.id.to_str() {
        span.set("csgate.request_id", id.to_owned());
    }
    if let Some(cache) = &exchange.cache {
        span.set("csgate.cache.result", cache.label());
    }
    if let Some(cause) = exchange.cause {
        span.set("error.type", cause);
        if status >= 500 {
            span.set_error(cause);
        }
    }
}

/// Reads a Query Services request to its end (bounded by `max_body_bytes`) and drops
/// it: nothing is answered before the client's message is complete, so an HTTP/2
/// stream whose DATA disagree with its content-length, or whose trailers are malformed,
/// ends in the stream error h2 raises instead of an answer (RFC 9113 §8.1.1).
async fn read_to_end(body: Incoming, max: usize, timeout: Duration) -> Result<(), GatewayError> {
    use http_body_util::{BodyExt, LengthLimitError, Limited};
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => {
            Err(GatewayError::PayloadTooLarge { max })
        }
        Ok(Err(_)) => Err(GatewayError::UnreadableBody),
        Err(_) => Err(GatewayError::BodyReadTimeout { after: timeout }),
    }
}

/// `path?query`, or `path` when the query is empty. Concatenated, not `format!`ted:
/// every forwarded request builds one.
fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        return path.to_owned();
    }
    let mut out = String::with_capacity(path.len() + 1 + query.len());
    out.push_str(path);
    out.push('?');
    out.push_str(query);
    out
}
