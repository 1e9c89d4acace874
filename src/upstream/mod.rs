//! The upstream Context Services stores: a pooled keep-alive HTTP/1.1 client
//! (hyper-util), round-robin over the targets in rotation, and the policies around it:
//!
//! - [`health`]: passive health per target — ejection on the failures `eject_on`
//!   names, `eject_for` cool-down, half-open trial — and panic mode for the pool;
//! - [`policy`]: what an attempt concluded, `eject_on`/`retry_on`, the retry budget;
//! - [`body`]: the client's request body and the upstream's answer body, each with its
//!   own limits and its own blame;
//!
//! Retries: only bodiless GET/HEAD, only when `retry_on` names the outcome (by default
//! only when nothing came back), within `max_retries`, the overall `deadline` and the
//! retry budget. A request with a body is sent once.
//!
//! Timeouts: `request_timeout` covers one attempt from the request to the last byte of
//! the answer, minus the time spent waiting on the client's own body.

pub mod body;
pub mod config;
pub mod health;
pub mod policy;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderMap;
use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use url::Url;

pub use self::body::{ClientBody, ClientBodyError, Prefix, UpstreamBody, UpstreamBodyError};
pub use self::config::{Upstream, UpstreamConfig, UpstreamTls};
use self::health::{Change, Health, State, TrialGuard};
use self::policy::{classify, RetryBudget};
pub use self::policy::{FailureSet, Outcome};
use crate::error::GatewayError;
use crate::httputil::{self, empty};
use crate::server::Body;
use crate::trace::{Kind, Parent, Span};

/// Why no usable answer came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection closed or reset before any byte of the answer.
    #[error("connection reset: {0}")]
    Reset(String),
    /// No answer head in time.
    #[error("timed out")]
    Timeout,
    /// The answer body did not finish in time.
    #[error("answer body timed out")]
    BodyTimeout,
    /// The answer body broke off (reset, or shorter than announced).
    #[error("answer body failed: {0}")]
    BodyFailed(String),
    /// Not a usable HTTP answer (malformed, or a `101` nobody asked for).
    #[error("invalid answer: {0}")]
    Invalid(String),
    /// No target configured.
    #[error("no upstream")]
    NoHealthy,
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// The client's request body failed: the client's fault, not the upstream's.
    #[error("{0}")]
    ClientBody(ClientBodyError),
}

impl UpstreamError {
    /// Detail for the log (never for the client).
    pub fn detail(&self) -> Option<&str> {
        match self {
            UpstreamError::Connect(d)
            | UpstreamError::Reset(d)
            | UpstreamError::BodyFailed(d)
            | UpstreamError::Invalid(d) => Some(d),
            UpstreamError::Timeout
            | UpstreamError::BodyTimeout
            | UpstreamError::NoHealthy
            | UpstreamError::TooLarge(_)
            | UpstreamError::ClientBody(_) => None,
        }
    }
}

impl From<UpstreamError> for GatewayError {
    fn from(e: UpstreamError) -> GatewayError {
        match e {
            UpstreamError::Connect(_) | UpstreamError::Reset(_) | UpstreamError::BodyFailed(_) => {
                GatewayError::UpstreamUnavailable
            }
            UpstreamError::Timeout | UpstreamError::BodyTimeout => GatewayError::UpstreamTimeout,
            UpstreamError::Invalid(_) => {
                GatewayError::UpstreamInvalidResponse("not a usable HTTP answer".to_owned())
            }
            UpstreamError::NoHealthy => GatewayError::NoHealthyUpstream,
            UpstreamError::TooLarge(max) => GatewayError::UpstreamBodyTooLarge { max },
            UpstreamError::ClientBody(e) => e.into(),
        }
    }
}

/// A fully read upstream answer.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Label of the target that answered (for logs and metrics).
    pub target: Arc<str>,
    /// Time spent upstream, all attempts.
    pub elapsed: Duration,
}

/// A streamed upstream answer: HTTP/1.1 whatever the upstream spoke, its body bounded by
/// the attempt's deadline.
pub struct Streamed {
    pub response: Response<UpstreamBody>,
    pub target: Arc<str>,
    pub elapsed: Duration,
}

/// Receives one call per attempt, and one more when an answer's body fails (metrics).
pub type AttemptObserver = Arc<dyn Fn(&str, Outcome, Duration) + Send + Sync>;

/// One upstream base URL and its health.
#[derive(Debug)]
pub struct Target {
    /// `scheme://host:port` — used in metrics and logs, never in client messages.
    pub label: Arc<str>,
    /// `scheme://authority` + path prefix, no trailing slash.
    base: String,
    /// `base` in parts, parsed once: `scheme://authority` (`None` if it does not parse
    /// as a URI, when requests are built from `base` as text) and the path prefix.
    origin: Option<(Scheme, Authority)>,
    prefix: String,
    health: Health,
}

impl Target {
    /// The URI of a request for `path_and_query`: the same as parsing `base` followed by
    /// it, without formatting and re-parsing the origin for every request (~1k
    /// instructions, callgrind).
    fn uri(&self, path_and_query: &str) -> Uri {
        let parsed = || -> Option<Uri> {
            let (scheme, authority) = self.origin.clone()?;
            let path_and_query = if self.prefix.is_empty() {
                PathAndQuery::try_from(path_and_query)
            } else {
                let mut path = String::with_capacity(self.prefix.len() + path_and_query.len());
                path.push_str(&self.prefix);
                path.push_str(path_and_query);
                PathAndQuery::try_from(path)
            };
            let mut parts = uri::Parts::default();
            parts.scheme = Some(scheme);
            parts.authority = Some(authority);
            parts.path_and_query = Some(path_and_query.ok()?);
            Uri::from_parts(parts).ok()
        };
        parsed()
            .or_else(|| format!("{}{path_and_query}", self.base).parse().ok())
            .unwrap_or_else(|| Uri::from_static("/"))
    }
}

/// The set of upstreams. Cheap to clone.
#[derive(Clone)]
pub struct Upstreams {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    targets: Vec<Target>,
    next: AtomicUsize,
    budget: RetryBudget,
    config: UpstreamConfig,
    epoch: Instant,
    /// No target is in rotation: every one takes traffic anyway.
    panic: AtomicBool,
    observer: Option<AttemptObserver>,
}

/// A target chosen for one attempt; holds the half-open trial slot when it is a trial.
struct Pick<'a> {
    index: usize,
    _trial: Option<TrialGuard<'a>>,
}

/// An answer head, not yet recorded as the final outcome of its body.
struct Head {
    response: Response<Incoming>,
    index: usize,
    /// When the last byte of the body is due.
    body_deadline: Instant,
}

impl Upstreams {
    /// Builds the pool for `urls` (the configured ones, or the embedded store's).
    pub fn new(
        config: &UpstreamConfig,
        urls: &[Url],
        observer: Option<AttemptObserver>,
    ) -> Upstreams {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        // The TLS layer below takes `https://` URIs; plain ones pass through it.
        connector.enforce_http(false);
        let connector = https_connector(&config.tls, connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let targets = urls
            .iter()
            .map(|url| {
                let authority = match url.port_or_known_default() {
                    Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
                    None => url.host_str().unwrap_or_default().to_owned(),
                };
                let origin = format!("{}://{authority}", url.scheme());
                let path = url.path().trim_end_matches('/');
                let prefix = if path.is_empty() {
                    config.path_prefix.as_str()
                } else {
                    path
                };
                let parsed = origin.parse::<Uri>().ok();
                Target {
                    label: Arc::from(origin.as_str()),
                    base: format!("{origin}{prefix}"),
                    origin: parsed.and_then(|uri| {
                        let parts = uri.into_parts();
                        Some((parts.scheme?, parts.authority?))
                    }),
                    prefix: prefix.to_owned(),
                    health: Health::default(),
                }
            })
            .collect();
        Upstreams {
            inner: Arc::new(Inner {
                client,
                targets,
                next: AtomicUsize::new(0),
                budget: RetryBudget::new(config.retry_budget),
                config: config.clone(),
                epoch: Instant::now(),
                panic: AtomicBool::new(false),
                observer,
            }),
        }
    }

    /// The targets, for health reporting.
    pub fn targets(&self) -> &[Target] {
        &self.inner.targets
    }

    /// Is this target in rotation (not ejected, not half-open)?
    pub fn is_healthy(&self, target: &Target) -> bool {
        target.health.in_rotation()
    }

    /// Requests are sent upstream: true whenever an upstream is configured, since panic
    /// mode sends traffic to ejected upstreams rather than refusing it. Readiness.
    pub fn takes_traffic(&self) -> bool {
        !self.inner.targets.is_empty()
    }

    /// Every target is ejected and all of them take traffic anyway.
    pub fn in_panic(&self) -> bool {
        self.inner.panic.load(Ordering::Acquire)
    }

    /// Keeps half-open targets that refuse a TCP connect out for another cool-down, so
    /// no client request is spent on them as a trial. Never brings a target back before
    /// `eject_for`, nor after it: only a request's answer does. Runs until dropped.
    pub async fn probe_loop(self) {
        let interval = (self.inner.config.eject_for / 4).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(interval).await;
            for target in &self.inner.targets {
                // Half-open and no trial in flight; the probe takes no trial slot, so
                // it never keeps a client request from being the trial.
                if !target.health.awaits_trial(self.now_ms()) {
                    continue;
                }
                let Some(authority) = target.label.split("://").nth(1) else {
                    continue;
                };
                let connect = tokio::net::TcpStream::connect(authority);
                if !matches!(
                    tokio::time::timeout(self.inner.config.connect_timeout, connect).await,
                    Ok(Ok(_))
                ) {
                    target.health.keep_out(self.now_ms(), self.eject_for_ms());
                }
            }
        }
    }

    /// GET/HEAD with retries; reads the whole answer (bounded by `max_response_bytes`).
    /// `path_and_query` is relative to the API prefix (`/services/...?...`).
    /// With `trace`, each attempt is a client span under it, and carries that span's
    /// `traceparent`.
    pub async fn fetch(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        trace: Option<&Parent>,
    ) -> Result<Fetched, UpstreamError> {
        let started = Instant::now();
        let max = self.inner.config.max_response_bytes;
        let head = self
            .send_read(&method, path_and_query, headers, trace)
            .await?;
        let (parts, incoming) = head.response.into_parts();
        let body = UpstreamBody::new(incoming, self.clone(), head.index, head.body_deadline, None);
        let body = match Limited::new(body, max).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(UpstreamError::TooLarge(max))
            }
            Err(error) => {
                return Err(match error.downcast::<UpstreamBodyError>() {
                    Ok(e) if matches!(*e, UpstreamBodyError::Timeout) => UpstreamError::BodyTimeout,
                    Ok(e) => UpstreamError::BodyFailed(e.to_string()),
                    Err(other) => UpstreamError::BodyFailed(other.to_string()),
                })
            }
        };
        Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body,
            target: self.label(head.index),
            elapsed: started.elapsed(),
        })
    }

    /// A bodiless GET/HEAD with the answer streamed back, retried like [`Self::fetch`].
    pub async fn stream_read(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        trace: Option<&Parent>,
    ) -> Result<Streamed, UpstreamError> {
        let started = Instant::now();
        let head = self
            .send_read(&method, path_and_query, headers, trace)
            .await?;
        Ok(self.streamed(head, headers, started))
    }

    /// Any method, body streamed both ways, sent once (a request with a body is never
    /// repeated). The timeout runs while the gateway waits on the upstream, not while it
    /// waits on the client's body; a failing client body is `UpstreamError::ClientBody`
    /// and leaves the upstream's health alone.
    pub async fn stream(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: ClientBody,
        trace: Option<&Parent>,
    ) -> Result<Streamed, UpstreamError> {
        let started = Instant::now();
        self.inner.budget.deposit();
        let pick = self.pick(&[]).ok_or(UpstreamError::NoHealthy)?;
        let clock = body.clock();
        let target = &self.inner.targets[pick.index];
        let mut request = self.build(target, &method, path_and_query, headers, body.boxed());
        let mut span = attempt_span(trace, target, &method, 0, &mut request);
        let timeout = self.inner.config.request_timeout;
        // The upstream's own time: elapsed minus what the client's body kept us waiting.
        let upstream_deadline = || {
            later(
                started,
                timeout.saturating_add(clock.waited(Instant::now())),
            )
        };
        let timer = async {
            loop {
                let due = upstream_deadline();
                if Instant::now() >= due {
                    return;
                }
                tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            }
        };
        let result = tokio::select! {
            sent = self.inner.client.request(request) => match sent {
                Ok(response) => usable_head(response),
                Err(error) => Err(classify(&error)),
            },
            () = timer => Err(UpstreamError::Timeout),
        };
        let outcome = outcome_of(&result);
        end_attempt_span(span.as_mut(), outcome);
        drop(span);
        self.record(pick.index, outcome, started.elapsed());
        let response = result?;
        let head = Head {
            response,
            index: pick.index,
            body_deadline: upstream_deadline(),
        };
        drop(pick);
        Ok(self.streamed(head, headers, started))
    }

    fn streamed(&self, head: Head, headers: &HeaderMap, started: Instant) -> Streamed {
        let request_id = headers.get(&httputil::X_REQUEST_ID).cloned();
        let (mut parts, incoming) = head.response.into_parts();
        // The client gets an HTTP/1.1 answer even from an HTTP/1.0 upstream.
        parts.version = Version::HTTP_11;
        let body = UpstreamBody::new(
            incoming,
            self.clone(),
            head.index,
            head.body_deadline,
            Some(request_id.unwrap_or_else(|| http::HeaderValue::from_static("-"))),
        );
        Streamed {
            response: Response::from_parts(parts, body),
            target: self.label(head.index),
            elapsed: started.elapsed(),
        }
    }

    /// Sends a bodiless read to successive targets while `retry_on` allows it. Every
    /// attempt's head outcome is recorded; the body is the caller's to read, by the
    /// returned deadline.
    async fn send_read(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        trace: Option<&Parent>,
    ) -> Result<Head, UpstreamError> {
        let config = &self.inner.config;
        let deadline = later(Instant::now(), config.deadline);
        self.inner.budget.deposit();
        let mut tried: Vec<usize> = Vec::new();
        let mut pick = self.pick(&tried).ok_or(UpstreamError::NoHealthy)?;
        loop {
            let index = pick.index;
            tried.push(index);
            let target = &self.inner.targets[index];
            let mut request = self.build(target, method, path_and_query, headers, empty());
            let mut span = attempt_span(trace, target, method, tried.len() - 1, &mut request);
            let attempt_started = Instant::now();
            let attempt_deadline = later(attempt_started, config.request_timeout).min(deadline);
            let sent = tokio::time::timeout_at(
                tokio::time::Instant::from_std(attempt_deadline),
                self.inner.client.request(request),
            )
            .await;
            let result = match sent {
                Err(_) => Err(UpstreamError::Timeout),
                Ok(Err(error)) => Err(classify(&error)),
                Ok(Ok(response)) => usable_head(response),
            };
            let outcome = outcome_of(&result);
            end_attempt_span(span.as_mut(), outcome);
            drop(span);
            self.record(index, outcome, attempt_started.elapsed());
            drop(pick);
            if config.retry_on.allows_retry(outcome)
                && tried.len() <= config.max_retries as usize
                && Instant::now() < deadline
            {
                if let Some(next) = self.pick(&tried) {
                    if self.inner.budget.withdraw() {
                        pick = next;
                        continue;
                    }
                }
            }
            return result.map(|response| Head {
                response,
                index,
                body_deadline: attempt_deadline,
            });
        }
    }

    fn build(
        &self,
        target: &Target,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Request<Body> {
        let uri = target.uri(path_and_query);
        let mut request = Request::new(body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers.clone();
        request
    }

    /// Round-robin over the targets not yet tried: the first in rotation, or a half-open
    /// one whose trial slot is free. When no target at all is in rotation (panic mode),
    /// any target not yet tried.
    fn pick(&self, tried: &[usize]) -> Option<Pick<'_>> {
        let targets = &self.inner.targets;
        let n = targets.len();
        if n == 0 {
            return None;
        }
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let untried = || {
            (0..n)
                .map(move |i| (start + i) % n)
                .filter(|i| !tried.contains(i))
        };
        for index in untried() {
            let health = &targets[index].health;
            match health.state(now) {
                State::InRotation => {
                    return Some(Pick {
                        index,
                        _trial: None,
                    })
                }
                State::HalfOpen => {
                    if let Some(trial) = health.try_trial(now) {
                        return Some(Pick {
                            index,
                            _trial: Some(trial),
                        });
                    }
                }
                State::Ejected => {}
            }
        }
        if targets.iter().any(|t| t.health.in_rotation()) {
            return None;
        }
        untried().next().map(|index| Pick {
            index,
            _trial: None,
        })
    }

    /// Feeds one outcome to the observer and to the target's health; logs ejections,
    /// returns, and panic mode starting or ending.
    fn record(&self, index: usize, outcome: Outcome, elapsed: Duration) {
        let target = &self.inner.targets[index];
        if let Some(observer) = &self.inner.observer {
            observer(&target.label, outcome, elapsed);
        }
        let config = &self.inner.config;
        let change = if outcome == Outcome::ClientBody {
            Change::None
        } else if config.eject_on.names(outcome) {
            target
                .health
                .fail(self.now_ms(), config.eject_after, self.eject_for_ms())
        } else {
            target.health.succeed()
        };
        match change {
            Change::None => return,
            Change::Ejected { failures } => tracing::warn!(
                upstream = %target.label,
                failures,
                outcome = outcome.label(),
                cool_down = ?config.eject_for,
                "upstream ejected"
            ),
            Change::StillOut => tracing::debug!(
                upstream = %target.label,
                outcome = outcome.label(),
                "ejected upstream failed again; out for another cool-down"
            ),
            Change::Restored => {
                tracing::info!(upstream = %target.label, "upstream back in rotation");
            }
        }
        let panic = !self.inner.targets.iter().any(|t| t.health.in_rotation());
        if self.inner.panic.swap(panic, Ordering::AcqRel) != panic {
            if panic {
                tracing::warn!(
                    upstreams = self.inner.targets.len(),
                    "upstream panic mode: every upstream is ejected; sending traffic to all of them"
                );
            } else {
                tracing::info!(upstream = %target.label, "upstream panic mode ended");
            }
        }
    }

    fn label(&self, index: usize) -> Arc<str> {
        self.inner.targets[index].label.clone()
    }

    fn eject_for_ms(&self) -> u64 {
        self.inner.config.eject_for.as_millis() as u64
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }
}

/// `at + by`, saturating at a far future instead of overflowing on an absurd setting.
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    at.checked_add(by.min(FAR))
        .unwrap_or_else(|| at + Duration::from_secs(24 * 3600))
}

/// `http://` upstreams as they are; `https://` ones through rustls, verified against
/// `[upstream.tls]` (its CAs or the platform's, its `server_name` or the URL's host),
/// presenting its client certificate when one is configured. A certificate or name
/// that does not verify fails the connect, which the attempt logic treats and logs
/// like any connect failure (502, the cause in the log line).
fn https_connector(tls: &UpstreamTls, http: HttpConnector) -> HttpsConnector<HttpConnector> {
    let client = tls.client.as_deref().cloned().unwrap_or_else(|| {
        // No https:// upstream: a configuration that trusts nothing, never used.
        rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    });
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client)
        .https_or_http();
    // Checked to be a DNS name or an IP address by the configuration.
    let fixed = tls
        .server_name
        .as_deref()
        .and_then(|name| rustls::pki_types::ServerName::try_from(name.to_owned()).ok());
    let builder = match fixed {
        Some(name) => {
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    builder.enable_http1().wrap_connector(http)
}

/// Refuses an answer the gateway cannot pass on: `101 Switching Protocols` when no
/// upgrade was asked for (hyper's client reads past the other 1xx, interim answers that
/// csgate does not forward, to the final answer). An answer framed by
/// `Transfer-Encoding` loses any `Content-Length` beside it: the body was read by the
/// transfer coding (RFC 9112 §6.3), and a length passed on would frame it differently
/// for the client.
fn usable_head(mut response: Response<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
    if response.status().is_informational() {
        return Err(UpstreamError::Invalid(format!(
            "interim answer {} as the final answer",
            response.status().as_u16()
        )));
    }
    let headers = response.headers_mut();
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        headers.remove(http::header::CONTENT_LENGTH);
    }
    Ok(response)
}

/// The client span of one attempt (HTTP semantic conventions: `http.request.method`,
/// `server.address`, `server.port`, `http.request.resend_count` from the first retry),
/// whose `traceparent` replaces the one the request would otherwise carry. No
/// `url.full`: the path holds contact keys and customer ids.
fn attempt_span(
    trace: Option<&Parent>,
    target: &Target,
    method: &Method,
    resend: usize,
    request: &mut Request<Body>,
) -> Option<Span> {
    let mut span = trace?.child("HTTP", Kind::Client);
    span.set_name(method.as_str().to_owned());
    span.set("http.request.method", method.as_str().to_owned());
    if let Some((scheme, authority)) = &target.origin {
        span.set("url.scheme", scheme.as_str().to_owned());
        span.set("server.address", authority.host().to_owned());
        if let Some(port) = authority.port_u16() {
            span.set("server.port", i64::from(port));
        }
    }
    if resend > 0 {
        span.set(
            "http.request.resend_count",
            i64::try_from(resend).unwrap_or(i64::MAX),
        );
    }
    request
        .headers_mut()
        .insert(&httputil::TRACEPARENT, span.traceparent());
    Some(span)
}

/// What an attempt came to, on its span: the status, or `error.type` (the outcome's
/// metric label, e.g. `connect_error`).
fn end_attempt_span(span: Option<&mut Span>, outcome: Outcome) {
    let Some(span) = span else { return };
    span.set("csgate.upstream.outcome", outcome.label());
    match outcome {
        Outcome::Answered(status) => {
            span.set("http.response.status_code", i64::from(status.as_u16()));
            if status.is_server_error() {
                span.set("error.type", status.as_str().to_owned());
                span.set_error("upstream answered 5xx");
            }
        }
        Outcome::ConnectFailure
        | Outcome::Reset { .. }
        | Outcome::Timeout { .. }
        | Outcome::InvalidResponse
        | Outcome::ClientBody => {
            span.set("error.type", outcome.label());
            span.set_error(outcome.label());
        }
    }
}

fn outcome_of(result: &Result<Response<Incoming>, UpstreamError>) -> Outcome {
    match result {
        Ok(response) => Outcome::Answered(response.status()),
        Err(error) => Outcome::of_error(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_the_url_path_or_the_configured_prefix() {
        let config = crate::config::Config::from_toml(
            "[upstream]\nurls = [\"http://a:81\", \"http://b/custom/cs/\"]\npath_prefix = \"/x/cs\"",
            std::path::Path::new("t"),
            &Default::default(),
        )
        .expect("valid");
        let ups = Upstreams::new(&config.upstream, config.upstream.urls(), None);
        let bases: Vec<_> = ups.targets().iter().map(|t| t.base.as_str()).collect();
        assert_eq!(bases, ["http://a:81/x/cs", "http://b:80/custom/cs"]);
    }

    /// Built from parts, the request URI is the one parsing `base` + path used to give,
    /// fallback included.
    #[test]
    fn request_uris_equal_the_parsed_concatenation() {
        let config = crate::config::Config::from_toml(
            "[upstream]\nurls = [\"http://a:81\", \"http://b/custom/cs/\", \"http://[::1]:8443\"]",
            std::path::Path::new("t"),
            &Default::default(),
        )
        .expect("valid");
        let ups = Upstreams::new(&config.upstream, config.upstream.urls(), None);
        let paths = [
            "/customers/c1/services?active_states=true",
            "/services/anonymous/%2B1%20555?x=%C3%A9&y",
            "/",
            "",
            "/a b",
            "/genesys/1/cs/services/7/states",
        ];
        for target in ups.targets() {
            for path in paths {
                let before: Uri = format!("{}{path}", target.base)
                    .parse()
                    .unwrap_or_else(|_| Uri::from_static("/"));
                assert_eq!(target.uri(path), before, "{} + {path:?}", target.base);
                assert_eq!(target.uri(path).to_string(), before.to_string());
            }
        }
    }
}
