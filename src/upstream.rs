//! The upstream Context Services stores: a pooled keep-alive HTTP/1.1 client
//! (hyper-util), round-robin over the healthy targets, passive health (ejection after
//! consecutive failures, for a cool-down), retries of GET/HEAD on connect errors and
//! 502/503/504 to another target within a retry budget, and an overall deadline.
//!
//! Locking: `RetryBudget` holds a `std::sync::Mutex` for a few arithmetic operations and
//! never across an `.await`; health is lock-free atomics.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use url::Url;

use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use crate::httputil::empty;
use crate::server::Body;

/// Why no usable answer came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    #[error("no healthy upstream")]
    NoHealthy,
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// The client's request body went over the gateway's limit while streaming.
    #[error("request body over the limit")]
    RequestBodyTooLarge,
    #[error("transport error: {0}")]
    Transport(String),
}

impl From<UpstreamError> for GatewayError {
    fn from(e: UpstreamError) -> GatewayError {
        match e {
            UpstreamError::Connect(_) | UpstreamError::Transport(_) => {
                GatewayError::UpstreamUnavailable
            }
            UpstreamError::Timeout => GatewayError::UpstreamTimeout,
            UpstreamError::NoHealthy => GatewayError::NoHealthyUpstream,
            UpstreamError::TooLarge(max) => {
                GatewayError::UpstreamInvalidResponse(format!("answer larger than {max} bytes"))
            }
            UpstreamError::RequestBodyTooLarge => GatewayError::PayloadTooLarge { max: 0 },
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

/// A streamed upstream answer.
#[derive(Debug)]
pub struct Streamed {
    pub response: Response<Incoming>,
    pub target: Arc<str>,
    pub elapsed: Duration,
}

/// What one attempt concluded, for health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The upstream answered 502/503/504.
    BadStatus,
    ConnectError,
    Timeout,
    TransportError,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::BadStatus => "bad_status",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
            Outcome::TransportError => "transport_error",
        }
    }
}

/// Receives one call per attempt (metrics hook).
pub type AttemptObserver = Arc<dyn Fn(&str, Outcome, Duration) + Send + Sync>;

/// One upstream base URL and its health.
#[derive(Debug)]
pub struct Target {
    /// `scheme://host:port` — used in metrics and logs, never in client messages.
    pub label: Arc<str>,
    /// `scheme://authority` + path prefix, no trailing slash.
    base: String,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `Upstreams::epoch` until which the target is ejected; 0 = in.
    ejected_until: AtomicU64,
}

/// The set of upstreams. Cheap to clone.
#[derive(Clone)]
pub struct Upstreams {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client<HttpConnector, Body>,
    targets: Vec<Target>,
    next: AtomicUsize,
    budget: RetryBudget,
    config: UpstreamConfig,
    epoch: Instant,
    observer: Option<AttemptObserver>,
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
        connector.enforce_http(true);
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
                Target {
                    label: Arc::from(origin.as_str()),
                    base: format!("{origin}{prefix}"),
                    consecutive_failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
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
                observer,
            }),
        }
    }

    /// The targets, for health reporting.
    pub fn targets(&self) -> &[Target] {
        &self.inner.targets
    }

    /// Is this target currently taking traffic?
    pub fn is_healthy(&self, target: &Target) -> bool {
        target.ejected_until.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// At least one target is taking traffic.
    pub fn any_healthy(&self) -> bool {
        self.inner.targets.iter().any(|t| self.is_healthy(t))
    }

    /// Probes ejected targets whose cool-down has passed with a TCP connect and brings
    /// back those that answer. Runs until the returned future is dropped.
    pub async fn probe_loop(self) {
        let interval = (self.inner.config.eject_for / 4).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(interval).await;
            for target in &self.inner.targets {
                if target.ejected_until.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                let Some(authority) = target.label.split("://").nth(1) else {
                    continue;
                };
                let connect = tokio::net::TcpStream::connect(authority);
                if let Ok(Ok(_)) =
                    tokio::time::timeout(self.inner.config.connect_timeout, connect).await
                {
                    target.consecutive_failures.store(0, Ordering::Relaxed);
                    target.ejected_until.store(0, Ordering::Relaxed);
                    tracing::info!(upstream = %target.label, "upstream back in rotation after probe");
                }
            }
        }
    }

    /// GET/HEAD with retries; reads the whole answer (bounded by `max_response_bytes`).
    /// `path_and_query` is relative to the API prefix (`/services/...?...`).
    pub async fn fetch(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<Fetched, UpstreamError> {
        let max = self.inner.config.max_response_bytes;
        let client = &self.inner.client;
        let ((parts, body), target, elapsed) = self
            .retried(&method, path_and_query, headers, |request| async move {
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| classify(&e, max))?;
                let (parts, body) = response.into_parts();
                let bytes = Limited::new(body, max)
                    .collect()
                    .await
                    .map_err(|e| classify(e.as_ref(), max))?
                    .to_bytes();
                Ok((parts.status, (parts, bytes)))
            })
            .await?;
        Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body,
            target,
            elapsed,
        })
    }

    /// A bodiless GET/HEAD with the answer streamed back, retried like [`Self::fetch`]
    /// (a refused or 502/503/504 attempt is dropped and the next target tried). The
    /// timeout covers the wait for the response head of each attempt.
    pub async fn stream_read(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<Streamed, UpstreamError> {
        let client = &self.inner.client;
        let (response, target, elapsed) = self
            .retried(&method, path_and_query, headers, |request| async move {
                let response = client.request(request).await.map_err(|e| classify(&e, 0))?;
                Ok((response.status(), response))
            })
            .await?;
        Ok(Streamed {
            response,
            target,
            elapsed,
        })
    }

    /// Sends a bodiless request to successive healthy targets until an attempt is not
    /// worth retrying (see `retry`). `attempt` sends one request and reads as much of the
    /// answer as the caller needs; it gets `request_timeout`, capped by what is left of
    /// the overall deadline. Returns the value, the target that gave it, and the time
    /// spent over all attempts.
    async fn retried<T, F, Fut>(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        attempt: F,
    ) -> Result<(T, Arc<str>, Duration), UpstreamError>
    where
        F: Fn(Request<Body>) -> Fut,
        Fut: std::future::Future<Output = Result<(StatusCode, T), UpstreamError>>,
    {
        let started = Instant::now();
        let deadline = started + self.inner.config.deadline;
        self.inner.budget.deposit();
        let mut tried: Vec<usize> = Vec::new();
        loop {
            let index = self.pick(&tried).ok_or(UpstreamError::NoHealthy)?;
            tried.push(index);
            let target = &self.inner.targets[index];
            let request = self.build(target, method, path_and_query, headers, empty());
            let attempt_started = Instant::now();
            let budget = self
                .inner
                .config
                .request_timeout
                .min(deadline.saturating_duration_since(attempt_started));
            let result = match tokio::time::timeout(budget, attempt(request)).await {
                Err(_) => Err(UpstreamError::Timeout),
                Ok(result) => result,
            };
            let outcome = match &result {
                Ok((status, _)) if is_retryable_status(*status) => Outcome::BadStatus,
                Ok(_) => Outcome::Success,
                Err(e) => outcome_of(e),
            };
            self.record(index, outcome, attempt_started.elapsed());
            if self.retry(outcome, &tried, deadline) {
                continue;
            }
            return result.map(|(_, value)| (value, target.label.clone(), started.elapsed()));
        }
    }

    /// May a GET/HEAD whose last attempt ended with `outcome` try another target?
    fn retry(&self, outcome: Outcome, tried: &[usize], deadline: Instant) -> bool {
        matches!(outcome, Outcome::BadStatus | Outcome::ConnectError)
            && tried.len() <= self.inner.config.max_retries as usize
            && Instant::now() < deadline
            && self.pick(tried).is_some()
            && self.inner.budget.withdraw()
    }

    /// Any method, body streamed both ways, no retry (a POST is never repeated). The
    /// timeout covers the wait for the response head.
    pub async fn stream(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Streamed, UpstreamError> {
        let started = Instant::now();
        self.inner.budget.deposit();
        let index = self.pick(&[]).ok_or(UpstreamError::NoHealthy)?;
        let target = &self.inner.targets[index];
        let request = self.build(target, &method, path_and_query, headers, body);
        let timeout = self.inner.config.request_timeout;
        let result = match tokio::time::timeout(timeout, self.inner.client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(error)) if caused_by_body_limit(&error) => {
                Err(UpstreamError::RequestBodyTooLarge)
            }
            Ok(Err(error)) => Err(classify(&error, 0)),
            Ok(Ok(response)) => Ok(response),
        };
        let outcome = match &result {
            Ok(r) if is_retryable_status(r.status()) => Outcome::BadStatus,
            Ok(_) => Outcome::Success,
            Err(e) => outcome_of(e),
        };
        self.record(index, outcome, started.elapsed());
        result.map(|response| Streamed {
            response,
            target: target.label.clone(),
            elapsed: started.elapsed(),
        })
    }

    fn build(
        &self,
        target: &Target,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Request<Body> {
        let uri: Uri = format!("{}{path_and_query}", target.base)
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
        let mut request = Request::new(body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers.clone();
        request
    }

    /// Round-robin over healthy targets not yet tried; if every healthy one was tried,
    /// none. If every target is ejected, none.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.inner.targets.len();
        if n == 0 {
            return None;
        }
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|i| !tried.contains(i) && self.is_healthy(&self.inner.targets[*i]))
    }

    fn record(&self, index: usize, outcome: Outcome, elapsed: Duration) {
        let target = &self.inner.targets[index];
        if let Some(observer) = &self.inner.observer {
            observer(&target.label, outcome, elapsed);
        }
        if outcome == Outcome::Success {
            target.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = target.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.inner.config.eject_after {
            let until = self.now_ms() + self.inner.config.eject_for.as_millis() as u64;
            let was = target.ejected_until.swap(until.max(1), Ordering::Relaxed);
            if was <= self.now_ms() {
                tracing::warn!(upstream = %target.label, failures, cool_down = ?self.inner.config.eject_for, "upstream ejected");
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }
}

fn is_retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

fn outcome_of(e: &UpstreamError) -> Outcome {
    match e {
        UpstreamError::Connect(_) | UpstreamError::NoHealthy => Outcome::ConnectError,
        UpstreamError::Timeout => Outcome::Timeout,
        UpstreamError::TooLarge(_)
        | UpstreamError::Transport(_)
        | UpstreamError::RequestBodyTooLarge => Outcome::TransportError,
    }
}

fn classify(error: &(dyn std::error::Error + 'static), max: usize) -> UpstreamError {
    if error
        .downcast_ref::<http_body_util::LengthLimitError>()
        .is_some()
    {
        return UpstreamError::TooLarge(max);
    }
    if let Some(e) = error.downcast_ref::<hyper_util::client::legacy::Error>() {
        if e.is_connect() {
            return UpstreamError::Connect(chain(error));
        }
    }
    UpstreamError::Transport(chain(error))
}

/// Did the client's request body hit the gateway's size limit?
fn caused_by_body_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}

fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Finagle-style retry budget: every request deposits `ratio` of a token, every retry
/// costs one, with a floor of 10 tokens so a quiet gateway can still retry. Counted in
/// milli-tokens so that ten deposits of 0.2 make exactly two tokens.
struct RetryBudget {
    deposit_milli: u64,
    milli_tokens: Mutex<u64>,
}

impl RetryBudget {
    const FLOOR: u64 = 10_000;
    const CAP: u64 = 1_000_000;
    const ONE: u64 = 1_000;

    fn new(ratio: f64) -> RetryBudget {
        RetryBudget {
            deposit_milli: (ratio * Self::ONE as f64).round() as u64,
            milli_tokens: Mutex::new(Self::FLOOR),
        }
    }

    fn deposit(&self) {
        let mut tokens = self.milli_tokens.lock().unwrap_or_else(|p| p.into_inner());
        *tokens = (*tokens + self.deposit_milli).min(Self::CAP);
    }

    fn withdraw(&self) -> bool {
        let mut tokens = self.milli_tokens.lock().unwrap_or_else(|p| p.into_inner());
        if *tokens >= Self::ONE {
            *tokens -= Self::ONE;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budget_allows_the_floor_then_the_ratio() {
        let budget = RetryBudget::new(0.2);
        let allowed = (0..20).filter(|_| budget.withdraw()).count();
        assert_eq!(allowed, 10);
        for _ in 0..10 {
            budget.deposit();
        }
        assert!(budget.withdraw(), "ten requests at 20% buy two retries");
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
    }

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
}
