//! Sending a request upstream: the one attempt loop behind [`Upstreams::fetch`],
//! [`Upstreams::stream_read`] and [`Upstreams::stream`]. Each attempt picks a target,
//! carries its own client span, is bounded by `request_timeout` (less the time spent
//! waiting on the client's body), and has its head outcome recorded against the
//! target's health. A bodiless read moves on to another target while `retry_on`,
//! `max_retries`, the overall `deadline` and the retry budget allow; a request with a
//! body is sent once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::body::{ClientBody, UpstreamBody};
use super::error::{classify, UpstreamBodyError, UpstreamError};
use super::policy::{later, Outcome};
use super::pool::{Target, Upstreams};
use crate::httputil::{self, empty, Body};
use crate::trace::{Kind, Parent, Span};

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

/// An answer head, not yet recorded as the final outcome of its body.
struct Head {
    response: Response<Incoming>,
    index: usize,
    /// When the last byte of the body is due.
    body_deadline: Instant,
}

impl Upstreams {
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
            .send(&method, path_and_query, headers, None, trace)
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
            .send(&method, path_and_query, headers, None, trace)
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
        let head = self
            .send(&method, path_and_query, headers, Some(body), trace)
            .await?;
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

    /// The attempt loop. A bodiless read goes to successive targets while `retry_on`
    /// allows it, within `max_retries`, the overall `deadline` and the retry budget; a
    /// request with the client's `body` is sent once, its timeout stretched by the time
    /// spent waiting on that body. Every attempt's head outcome is recorded; the body is
    /// the caller's to read, by the returned deadline.
    async fn send(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        mut body: Option<ClientBody>,
        trace: Option<&Parent>,
    ) -> Result<Head, UpstreamError> {
        let config = &self.inner.config;
        let clock = body.as_ref().map(ClientBody::clock);
        let deadline = body
            .is_none()
            .then(|| later(Instant::now(), config.deadline));
        self.inner.budget.deposit();
        let mut tried: Vec<usize> = Vec::new();
        let mut pick = self.pick(&tried).ok_or(UpstreamError::NoHealthy)?;
        loop {
            let index = pick.index;
            tried.push(index);
            let target = &self.inner.targets[index];
            let payload = body.take().map_or_else(empty, ClientBody::boxed);
            let mut request = build(target, method, path_and_query, headers, payload);
            let mut span = attempt_span(trace, target, method, tried.len() - 1, &mut request);
            let attempt_started = Instant::now();
            // The upstream's own time: elapsed minus what the client's body kept us waiting.
            let due = || {
                let waited = clock
                    .as_ref()
                    .map_or(Duration::ZERO, |clock| clock.waited(Instant::now()));
                let due = later(
                    attempt_started,
                    config.request_timeout.saturating_add(waited),
                );
                deadline.map_or(due, |deadline| due.min(deadline))
            };
            let result = tokio::select! {
                biased;
                sent = self.inner.client.request(request) => match sent {
                    Ok(response) => usable_head(response),
                    Err(error) => Err(classify(&error)),
                },
                () = passed(&due) => Err(UpstreamError::Timeout),
            };
            let outcome = outcome_of(&result);
            end_attempt_span(span.as_mut(), outcome);
            drop(span);
            self.record(index, outcome, attempt_started.elapsed());
            drop(pick);
            if deadline.is_some_and(|deadline| Instant::now() < deadline)
                && config.retry_on.allows_retry(outcome)
                && tried.len() <= config.max_retries as usize
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
                body_deadline: due(),
            });
        }
    }
}

/// Resolves once `due()` has passed; `due` may move later while it waits.
async fn passed(due: impl Fn() -> Instant) {
    loop {
        let at = due();
        if Instant::now() >= at {
            return;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }
}

fn build(
    target: &Target,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Body,
) -> Request<Body> {
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = target.uri(path_and_query);
    *request.headers_mut() = headers.clone();
    request
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
