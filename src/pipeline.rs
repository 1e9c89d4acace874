//! The public request pipeline, as named stages:
//!
//! `admit` (limits, load shedding) → `route` → `validate` → `lookup` (cache, anonymous
//! routes) → `forward` → `post_filter` → `respond` → `log`.
//!
//! Query Services answers are always computed by `post_filter` from a parsed upstream
//! (or cached) Service[]; everything else under `/genesys/1/cs` is streamed through
//! untouched but for hop-by-hop headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::Semaphore;

use crate::cache::{Cache, CacheOutcome, Invalidation, Lookup, LookupError, LookupRequest};
use crate::config::Config;
use crate::error::{Blame, GatewayError};
use crate::httputil::{self, empty, full, json_content_type};
use crate::logging::Redactor;
use crate::metrics::Metrics;
use crate::query::filter::{self, Service};
use crate::query::params::{self, Limits};
use crate::query::{Lifecycle, ServiceQuery, TypeMap};
use crate::routes::{self, Owner, Route};
use crate::server::Body;
use crate::upstream::{Fetched, UpstreamError, Upstreams};

/// Request headers forwarded on Query Services routes (the contract's list; the
/// `X-Forwarded-*` and `X-Request-Id` headers are set by `forwarding_headers`).
const QUERY_FORWARD_HEADERS: [&str; 7] = [
    "contactcenterid",
    "groupid",
    "authorization",
    "accept",
    "content-type",
    "traceparent",
    "tracestate",
];

/// The gateway. Cheap to clone; every clone shares the same state.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    upstreams: Upstreams,
    cache: Option<Cache>,
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
    pub redactor: Redactor,
    pub downstream_cache_control: HeaderValue,
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
            redactor: Redactor {
                redact: config.log.redact,
            },
            downstream_cache_control: config.cache.downstream_cache_control.clone(),
        }
    }
}

/// What the access log line says about one request.
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

impl Gateway {
    pub fn new(
        config: &Config,
        upstreams: Upstreams,
        cache: Option<Cache>,
        metrics: Metrics,
    ) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                settings: Settings::from_config(config),
                upstreams,
                cache,
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

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Serves one request. Never fails: every error becomes a response.
    pub async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let mut exchange = Exchange {
            id: httputil::request_id(&parts.headers),
            method: parts.method.clone(),
            route: "unmatched",
            started: Instant::now(),
            owner: None,
            cache: None,
            upstream: None,
            upstream_time: None,
        };
        let _inflight = self.inner.metrics.inflight_guard();
        let result = match self.inner.inflight.clone().try_acquire_owned() {
            Ok(permit) => {
                let response = self.dispatch(parts, body, peer, &mut exchange).await;
                drop(permit);
                response
            }
            Err(_) => Err(GatewayError::Overloaded),
        };
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                self.log_error(&error, &exchange);
                error.into_response()
            }
        };
        response
            .headers_mut()
            .insert(&httputil::X_REQUEST_ID, exchange.id.clone());
        if let Some(outcome) = &exchange.cache {
            if let Ok(value) = HeaderValue::from_str(&outcome.header()) {
                response
                    .headers_mut()
                    .insert(&httputil::CACHE_STATUS, value);
            }
        }
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
        let cache_control = &self.inner.settings.downstream_cache_control;
        match route {
            Route::QueryServices { owner, lifecycle } => self
                .query_services(&parts, owner, lifecycle, peer, exchange)
                .await
                .map(|r| httputil::with_cache_control(r, cache_control)),
            Route::ServiceById { service_id } => self
                .service_by_id(&parts, service_id, peer, exchange)
                .await
                .map(|r| httputil::with_cache_control(r, cache_control)),
            Route::Proxy { rest } => {
                let rest = rest.to_owned();
                self.proxy(parts, body, &rest, peer, exchange).await
            }
        }
    }

    // --- stage: admit --------------------------------------------------------------

    /// Request-size limits, checked before anything else looks at the request.
    fn admit(&self, parts: &Parts) -> Result<(), GatewayError> {
        let s = &self.inner.settings;
        let header_bytes = httputil::header_bytes(&parts.headers);
        if header_bytes > s.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge {
                len: header_bytes,
                max: s.max_header_bytes,
            });
        }
        let query_len = parts.uri.query().map_or(0, str::len);
        if query_len > s.max_query_bytes {
            return Err(GatewayError::QueryTooLong {
                len: query_len,
                max: s.max_query_bytes,
            });
        }
        Ok(())
    }

    // --- Query Services ------------------------------------------------------------

    async fn query_services(
        &self,
        parts: &Parts,
        owner: Owner<'_>,
        lifecycle: Lifecycle,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        let (query, base, path, contact_key) = self.validate(parts, owner, lifecycle, exchange)?;
        // Built only when a request goes upstream: a cache hit never needs them.
        let request_id = exchange.id.clone();
        let forward_headers = || self.query_headers(&parts.headers, peer, &request_id);

        if let (Owner::Anonymous { .. }, Some(cache)) = (owner, &self.inner.cache) {
            let (no_cache, no_store) = crate::cache::request_directives(&parts.headers);
            if no_store {
                cache.note_bypass();
                exchange.cache = Some(CacheOutcome::Bypass);
            } else {
                let lookup = cache
                    .lookup(
                        &self.inner.upstreams,
                        LookupRequest {
                            client_headers: &parts.headers,
                            forward_headers: &forward_headers,
                            contact_key: &contact_key,
                            key_path: &base,
                            query: &query,
                            raw_query: parts.uri.query().unwrap_or(""),
                            no_cache,
                        },
                    )
                    .await;
                match lookup {
                    Lookup::Bypass => exchange.cache = Some(CacheOutcome::Bypass),
                    Lookup::Served(answer) => {
                        exchange.cache = Some(answer.outcome);
                        exchange.upstream = answer.upstream;
                        exchange.upstream_time = answer.upstream_time;
                        return match answer.result {
                            Ok(rendered) => {
                                Ok(respond_json(&parts.method, rendered.body, rendered.age))
                            }
                            Err(LookupError::Upstream(fetched)) => {
                                Ok(respond_upstream_error(&parts.method, *fetched))
                            }
                            Err(LookupError::Gateway(error)) => Err(error),
                        };
                    }
                }
            }
        }

        if matches!(owner, Owner::Anonymous { .. }) && self.inner.cache.is_none() {
            // The contract puts Cache-Status on every anonymous answer.
            exchange.cache = Some(CacheOutcome::Bypass);
        }
        let path_and_query = with_query(&path, &query.upstream_query());
        let fetched = self
            .forward(&path_and_query, &forward_headers(), exchange)
            .await?;
        if !fetched.status.is_success() {
            return Ok(respond_upstream_error(&parts.method, fetched));
        }
        let services = filter::parse_services(&fetched.body)
            .map_err(|e| GatewayError::UpstreamInvalidResponse(e.to_string()))?;
        let body = self.post_filter(services, &query, exchange);
        Ok(respond_json(&parts.method, body, None))
    }

    // --- stage: validate -----------------------------------------------------------

    /// Decodes the path parameter and validates every query parameter. Returns the
    /// query, the normalised upstream path of the owner's "all" route and of the
    /// requested route (both relative to the API prefix), and the decoded path parameter.
    fn validate(
        &self,
        parts: &Parts,
        owner: Owner<'_>,
        lifecycle: Lifecycle,
        exchange: &mut Exchange,
    ) -> Result<(ServiceQuery, String, String, String), GatewayError> {
        let s = &self.inner.settings;
        let max = s.limits.max_key_bytes;
        let (anonymous, base, decoded) = match owner {
            Owner::Anonymous { contact_key } => {
                let key = params::decode_path_param("contact_key", contact_key, max)
                    .map_err(|e| GatewayError::InvalidParameter(e.to_string()))?;
                exchange.owner = Some(key.clone());
                let path = format!("/services/anonymous/{}", params::encode_path_param(&key));
                (true, path, key)
            }
            Owner::Customer { customer_id } => {
                let id = params::decode_path_param("customer_id", customer_id, max)
                    .map_err(|e| GatewayError::InvalidParameter(e.to_string()))?;
                exchange.owner = Some(id.clone());
                let path = format!("/customers/{}/services", params::encode_path_param(&id));
                (false, path, id)
            }
        };
        let query = params::parse_service_query(
            parts.uri.query(),
            lifecycle,
            anonymous,
            &s.service_types,
            &s.limits,
        )
        .map_err(|e| GatewayError::InvalidParameter(e.to_string()))?;
        let path = match lifecycle {
            Lifecycle::All => base.clone(),
            Lifecycle::Active => format!("{base}/active"),
            Lifecycle::Completed => format!("{base}/completed"),
        };
        Ok((query, base, path, decoded))
    }

    // --- stage: forward ------------------------------------------------------------

    async fn forward(
        &self,
        path_and_query: &str,
        headers: &HeaderMap,
        exchange: &mut Exchange,
    ) -> Result<Fetched, GatewayError> {
        let result = self
            .inner
            .upstreams
            .fetch(Method::GET, path_and_query, headers)
            .await;
        if let Ok(fetched) = &result {
            exchange.upstream = Some(fetched.target.clone());
            exchange.upstream_time = Some(fetched.elapsed);
        }
        result.map_err(|e| {
            if let UpstreamError::Connect(detail) | UpstreamError::Transport(detail) = &e {
                tracing::warn!(request_id = ?exchange.id, %detail, "upstream request failed");
            }
            GatewayError::from(e)
        })
    }

    /// The whitelisted request headers of a Query Services request, plus request id
    /// and forwarding headers.
    fn query_headers(&self, incoming: &HeaderMap, peer: SocketAddr, id: &HeaderValue) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for name in QUERY_FORWARD_HEADERS {
            for value in incoming.get_all(name) {
                headers.append(name, value.clone());
            }
        }
        self.forwarding_headers(&mut headers, incoming, peer, id);
        headers
    }

    fn forwarding_headers(
        &self,
        headers: &mut HeaderMap,
        incoming: &HeaderMap,
        peer: SocketAddr,
        id: &HeaderValue,
    ) {
        headers.insert(&httputil::X_REQUEST_ID, id.clone());
        let forwarded_for = match incoming
            .get(&httputil::X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
        {
            Some(previous) => format!("{previous}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(&httputil::X_FORWARDED_FOR, value);
        }
        // The scheme this hop was reached by: a client cannot claim https over http.
        headers.insert(
            &httputil::X_FORWARDED_PROTO,
            HeaderValue::from_static(self.inner.scheme),
        );
    }

    // --- stage: post_filter --------------------------------------------------------

    fn post_filter(
        &self,
        services: Vec<Service>,
        query: &ServiceQuery,
        exchange: &Exchange,
    ) -> Bytes {
        let filtered = filter::filter_services(services, query, &self.inner.settings.service_types);
        if filtered.unparseable_timestamps > 0 {
            tracing::warn!(
                request_id = ?exchange.id,
                upstream = exchange.upstream.as_deref().unwrap_or("-"),
                count = filtered.unparseable_timestamps,
                "upstream data error: services with unparseable timestamps excluded"
            );
        }
        Bytes::from(filter::render(&filtered.services))
    }

    // --- Query Service by ID -------------------------------------------------------

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
            return Ok(respond_upstream_error(&parts.method, fetched));
        }
        let mut service = filter::parse_service(&fetched.body)
            .map_err(|e| GatewayError::UpstreamInvalidResponse(e.to_string()))?;
        filter::trim_service(&mut service, include);
        let body = serde_json::to_vec(&service)
            .map_err(|e| GatewayError::Internal(format!("serialising a service: {e}")))?;
        Ok(respond_json(&parts.method, Bytes::from(body), None))
    }

    // --- transparent proxy ---------------------------------------------------------

    async fn proxy(
        &self,
        parts: Parts,
        body: Incoming,
        rest: &str,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        let max = self.inner.settings.max_body_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(GatewayError::PayloadTooLarge { max });
        }
        let mut headers = parts.headers.clone();
        httputil::strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        self.forwarding_headers(&mut headers, &parts.headers, peer, &exchange.id);

        let path_and_query = with_query(rest, parts.uri.query().unwrap_or(""));
        let invalidation = self
            .inner
            .cache
            .as_ref()
            .and_then(|_| Invalidation::for_write(&parts.method, rest, &parts.headers));

        // A start names its contact key in the body: read it (it is small and bounded),
        // then forward the same bytes.
        let (upstream_body, invalidation): (Body, _) = match invalidation {
            Some(start @ Invalidation::ServiceStart { .. }) => {
                let bytes = read_bounded(body, max).await?;
                let start = start.with_start_body(&parts.headers, &bytes);
                (full(bytes), Some(start))
            }
            other => (Limited::new(body, max).map_err(Into::into).boxed(), other),
        };
        // A bodiless read may be retried at another upstream; anything else is sent once.
        let streamed = if is_bodiless_read(&parts) {
            self.inner
                .upstreams
                .stream_read(parts.method.clone(), &path_and_query, &headers)
                .await
        } else {
            self.inner
                .upstreams
                .stream(
                    parts.method.clone(),
                    &path_and_query,
                    &headers,
                    upstream_body,
                )
                .await
        };
        let streamed = match streamed {
            Ok(s) => s,
            Err(UpstreamError::RequestBodyTooLarge) => {
                return Err(GatewayError::PayloadTooLarge { max })
            }
            Err(e) => return Err(e.into()),
        };
        exchange.upstream = Some(streamed.target.clone());
        exchange.upstream_time = Some(streamed.elapsed);

        let (mut head, incoming) = streamed.response.into_parts();
        httputil::strip_hop_by_hop(&mut head.headers);
        if let (true, Some(cache), Some(invalidation)) =
            (head.status.is_success(), &self.inner.cache, invalidation)
        {
            if let Invalidation::ServiceStart { owner: Some(_) } = invalidation {
                // The answer names the new service id, for the service-id index.
                let bytes = read_bounded(incoming, self.inner.settings.max_body_bytes)
                    .await
                    .map_err(|_| GatewayError::UpstreamUnavailable)?;
                let id = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("service_id").map(crate::cache::id_text));
                cache.invalidate(&invalidation, id.as_deref()).await;
                return Ok(Response::from_parts(head, full(bytes)));
            }
            cache.invalidate(&invalidation, None).await;
        }
        Ok(Response::from_parts(
            head,
            incoming.map_err(Into::into).boxed(),
        ))
    }

    // --- stage: log ----------------------------------------------------------------

    fn log(&self, exchange: &Exchange, status: StatusCode) {
        let total = exchange.started.elapsed();
        let cache = exchange.cache.as_ref().map(CacheOutcome::label);
        self.inner
            .metrics
            .observe_request(exchange.route, &exchange.method, status, total);
        tracing::info!(
            target: "csgate::access",
            request_id = exchange.id.to_str().unwrap_or("-"),
            method = %exchange.method,
            route = exchange.route,
            status = status.as_u16(),
            cache = cache.unwrap_or("-"),
            owner = exchange
                .owner
                .as_deref()
                .map_or_else(|| "-".to_owned(), |o| self.inner.settings.redactor.personal(o)),
            upstream = exchange.upstream.as_deref().unwrap_or("-"),
            upstream_ms = exchange.upstream_time.map_or(-1.0, |d| d.as_secs_f64() * 1000.0),
            total_ms = total.as_secs_f64() * 1000.0,
        );
    }

    fn log_error(&self, error: &GatewayError, exchange: &Exchange) {
        match error.blame() {
            Blame::Downstream => {}
            Blame::Upstream => tracing::warn!(
                request_id = exchange.id.to_str().unwrap_or("-"),
                route = exchange.route,
                upstream = exchange.upstream.as_deref().unwrap_or("-"),
                error = %error,
                "upstream failure"
            ),
            Blame::Internal => {
                if let GatewayError::Internal(detail) = error {
                    tracing::error!(request_id = exchange.id.to_str().unwrap_or("-"), route = exchange.route, %detail, "internal error");
                }
            }
        }
    }
}

/// Reads a whole body, refusing one over `max` bytes.
async fn read_bounded<B>(body: B, max: usize) -> Result<Bytes, GatewayError>
where
    B: hyper::body::Body,
    B::Error: Into<crate::server::BoxError>,
{
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::PayloadTooLarge { max })
        }
        Err(_) => Err(GatewayError::InvalidParameter(
            "the request body could not be read".into(),
        )),
    }
}

/// A GET or HEAD that announces no body: safe to send again to another upstream.
fn is_bodiless_read(parts: &Parts) -> bool {
    let read = parts.method == Method::GET || parts.method == Method::HEAD;
    let no_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() == b"0");
    read && no_length && !parts.headers.contains_key(header::TRANSFER_ENCODING)
}

fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// `200` JSON; for HEAD the same headers and no body.
pub fn respond_json(method: &Method, body: Bytes, age: Option<Duration>) -> Response<Body> {
    let length = body.len();
    let mut response = Response::new(if *method == Method::HEAD {
        empty()
    } else {
        full(body)
    });
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, json_content_type());
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Some(age) = age {
        headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
    }
    response
}

/// A non-2xx upstream answer, passed through with its status, headers and body.
fn respond_upstream_error(method: &Method, fetched: Fetched) -> Response<Body> {
    let mut headers = fetched.headers;
    httputil::strip_hop_by_hop(&mut headers);
    let mut response = Response::new(if *method == Method::HEAD {
        empty()
    } else {
        full(fetched.body)
    });
    *response.status_mut() = fetched.status;
    *response.headers_mut() = headers;
    response
}
