//! Errors the gateway answers itself, and the one place that turns them into
//! responses: `{"message": "...", "exception": "..."}`, the same two keys GMS uses, so
//! clients written against GMS read them unchanged.
//!
//! Blame decides the status: the client's mistakes are 4xx, the upstream's failures
//! 502/503/504, our own bugs 500 with a generic message. Messages never carry internal
//! detail (upstream addresses, stack traces); that goes to the log, once, at the edge.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::httputil::{full, json_content_type, no_store, Body};

/// Something the gateway answers without a usable upstream answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// A query or path parameter broke a rule; the message names it and quotes it.
    #[error("{0}")]
    InvalidParameter(String),
    /// A request header is missing, repeated or malformed where it must be given once;
    /// the message names it.
    #[error("{0}")]
    InvalidHeader(String),
    #[error("{0}")]
    NotFound(String),
    /// An admin request without the configured bearer token (`[admin] token_file`).
    #[error("this admin endpoint needs 'Authorization: Bearer <token>' with the configured token")]
    Unauthorized,
    #[error("method {method} is not allowed on this resource; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("query string is {len} bytes; the limit is {max}")]
    QueryTooLong { len: usize, max: usize },
    #[error("request headers are {len} bytes; the limit is {max}")]
    HeadersTooLarge { len: usize, max: usize },
    #[error("request has {count} header fields; the limit is {max}")]
    TooManyHeaders { count: usize, max: usize },
    #[error("request body is larger than the limit of {max} bytes")]
    PayloadTooLarge { max: usize },
    /// The request body's framing was invalid, or the client went away mid-body.
    #[error("the request body could not be read")]
    UnreadableBody,
    /// The client took longer than `[server] body_read_timeout` to send its body.
    #[error("the request body did not arrive within {}", humantime::format_duration(*after))]
    BodyReadTimeout { after: std::time::Duration },
    /// Connection refused, reset, or the upstream closed mid-answer.
    #[error("the Context Services upstream is unavailable")]
    UpstreamUnavailable,
    /// Every upstream is ejected (or none is configured).
    #[error("no healthy Context Services upstream is available")]
    NoHealthyUpstream,
    #[error("the Context Services upstream did not answer in time")]
    UpstreamTimeout,
    /// The upstream answered 2xx with a body the gateway cannot use.
    #[error("the Context Services upstream sent an invalid response: {0}")]
    UpstreamInvalidResponse(String),
    /// An answer the gateway must read whole (Query Services) is over
    /// `[upstream] max_response_bytes`.
    #[error("the Context Services upstream sent an answer larger than {max} bytes")]
    UpstreamBodyTooLarge { max: usize },
    #[error("the gateway is overloaded; retry later")]
    Overloaded,
    /// A tenant or credential spent its rate (`[limits] tenant`, `credential`, an
    /// override); a token is back after `retry_after`.
    #[error("the {} rate limit is exceeded; retry later", rejection.name())]
    RateLimited {
        rejection: Rejection,
        retry_after: std::time::Duration,
    },
    /// No backend slot within `[limits.backend] queue_deadline`, or the queue is full.
    #[error("the Context Services backend is busy; retry later")]
    BackendBusy { rejection: Rejection },
    /// The HTTP/2 connection holds `h2_streams_per_connection` backend-bound streams
    /// already; answered `REFUSED_STREAM` on HTTP/2.
    #[error("too many requests in flight on this connection; retry on another")]
    StreamRefused,
    /// The client address holds `[limits.connections] per_client` connections already.
    #[error("too many connections from this client; retry later")]
    TooManyConnections,
    /// Our own bug. The detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl GatewayError {
    /// The status and the stable `exception` kind. Exhaustive on purpose: a new variant
    /// must decide both.
    pub fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            GatewayError::InvalidParameter(_) => (StatusCode::BAD_REQUEST, "InvalidParameter"),
            GatewayError::InvalidHeader(_) => (StatusCode::BAD_REQUEST, "InvalidParameter"),
            GatewayError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            GatewayError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed")
            }
            GatewayError::QueryTooLong { .. } => (StatusCode::URI_TOO_LONG, "PayloadTooLarge"),
            GatewayError::HeadersTooLarge { .. } | GatewayError::TooManyHeaders { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "PayloadTooLarge",
            ),
            GatewayError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge")
            }
            GatewayError::UnreadableBody => (StatusCode::BAD_REQUEST, "InvalidParameter"),
            GatewayError::BodyReadTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "RequestTimeout"),
            GatewayError::UpstreamUnavailable => (StatusCode::BAD_GATEWAY, "UpstreamUnavailable"),
            GatewayError::NoHealthyUpstream => {
                (StatusCode::SERVICE_UNAVAILABLE, "UpstreamUnavailable")
            }
            GatewayError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "UpstreamTimeout"),
            GatewayError::UpstreamInvalidResponse(_)
            | GatewayError::UpstreamBodyTooLarge { .. } => {
                (StatusCode::BAD_GATEWAY, "UpstreamInvalidResponse")
            }
            GatewayError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "Overloaded"),
            GatewayError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
            GatewayError::BackendBusy { .. }
            | GatewayError::StreamRefused
            | GatewayError::TooManyConnections => (StatusCode::SERVICE_UNAVAILABLE, "Overloaded"),
            GatewayError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            GatewayError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Internal"),
        }
    }

    /// Whose fault it is, for logging: client mistakes are not logged as errors.
    pub fn blame(&self) -> Blame {
        match self {
            GatewayError::InvalidParameter(_)
            | GatewayError::InvalidHeader(_)
            | GatewayError::NotFound(_)
            | GatewayError::Unauthorized
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::QueryTooLong { .. }
            | GatewayError::HeadersTooLarge { .. }
            | GatewayError::TooManyHeaders { .. }
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::UnreadableBody
            | GatewayError::BodyReadTimeout { .. } => Blame::Downstream,
            GatewayError::UpstreamUnavailable
            | GatewayError::NoHealthyUpstream
            | GatewayError::UpstreamTimeout
            | GatewayError::UpstreamInvalidResponse(_)
            | GatewayError::UpstreamBodyTooLarge { .. } => Blame::Upstream,
            GatewayError::Overloaded
            | GatewayError::RateLimited { .. }
            | GatewayError::BackendBusy { .. }
            | GatewayError::StreamRefused
            | GatewayError::TooManyConnections => Blame::Overload,
            GatewayError::Internal(_) => Blame::Internal,
        }
    }

    /// The response: CS error shape, JSON.
    pub fn into_response(self) -> Response<Body> {
        let (status, kind) = self.status_and_kind();
        let body = error_body(&self.to_string(), kind);
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, json_content_type());
        headers.insert(header::CACHE_CONTROL, no_store());
        if let GatewayError::MethodNotAllowed { allow, .. } = &self {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        match &self {
            GatewayError::Overloaded
            | GatewayError::NoHealthyUpstream
            | GatewayError::BackendBusy { .. }
            | GatewayError::StreamRefused => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::TooManyConnections => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            GatewayError::RateLimited { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, retry_after_seconds(*retry_after));
            }
            _ => {}
        }
        if self == GatewayError::StreamRefused {
            response.extensions_mut().insert(RefuseStream);
        }
        response
    }
}

/// `Retry-After` in whole seconds, rounded up (at least 1: `0` would invite an
/// immediate retry that is refused again).
fn retry_after_seconds(after: std::time::Duration) -> HeaderValue {
    let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    HeaderValue::from(seconds.max(1))
}

/// What refused a request: a limit (`[limits]`) or the connection cap. Its name is
/// the `scope` label of the limits' metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The tenant's rate (`429`).
    Tenant,
    /// The credential's rate (`429`).
    Credential,
    /// The backend queue was full (`503`).
    QueueFull,
    /// No backend slot within `queue_deadline` (`503`).
    QueueDeadline,
    /// Too many connections from one client address.
    ClientConnections,
    /// Too many backend-bound streams on one HTTP/2 connection.
    H2Streams,
}

impl Rejection {
    pub const ALL: [Rejection; 6] = [
        Rejection::Tenant,
        Rejection::Credential,
        Rejection::QueueFull,
        Rejection::QueueDeadline,
        Rejection::ClientConnections,
        Rejection::H2Streams,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rejection::Tenant => "tenant",
            Rejection::Credential => "credential",
            Rejection::QueueFull => "queue_full",
            Rejection::QueueDeadline => "queue_deadline",
            Rejection::ClientConnections => "client_connections",
            Rejection::H2Streams => "h2_streams",
        }
    }
}

/// Marks an answer that refuses its stream: `REFUSED_STREAM` on HTTP/2 (the client may
/// retry it safely, RFC 9113 §8.7), the answer itself on HTTP/1.1.
#[derive(Clone, Copy, Debug)]
pub struct RefuseStream;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client: its request was bad, too big, or did not arrive.
    Downstream,
    Upstream,
    /// Nobody's mistake: the gateway is at its in-flight bound and sheds load. Counted by
    /// the request metrics, not logged per request (that would add load while shedding).
    Overload,
    Internal,
}

/// `{"message": ..., "exception": ...}` as bytes.
pub fn error_body(message: &str, exception: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "message": message, "exception": exception }))
        .expect("a map of two strings serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn render(e: GatewayError) -> (u16, Option<String>, serde_json::Value) {
        let response = e.into_response();
        let status = response.status().as_u16();
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let allow = response
            .headers()
            .get(header::ALLOW)
            .map(|v| v.to_str().expect("ascii").to_owned());
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("full body")
            .to_bytes();
        (status, allow, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn every_kind_maps_to_its_status_and_shape() {
        use serde_json::json;
        let cases = [
            (
                GatewayError::InvalidParameter("parameter 'x': 'y' is bad".into()),
                400,
                json!({"message": "parameter 'x': 'y' is bad", "exception": "InvalidParameter"}),
            ),
            (
                GatewayError::InvalidHeader("header 'GroupId' is given 2 times".into()),
                400,
                json!({"message": "header 'GroupId' is given 2 times", "exception": "InvalidParameter"}),
            ),
            (
                GatewayError::NotFound("no route for /x".into()),
                404,
                json!({"message": "no route for /x", "exception": "NotFound"}),
            ),
            (
                GatewayError::QueryTooLong {
                    len: 9000,
                    max: 8192,
                },
                414,
                json!({"message": "query string is 9000 bytes; the limit is 8192", "exception": "PayloadTooLarge"}),
            ),
            (
                GatewayError::HeadersTooLarge {
                    len: 20000,
                    max: 16384,
                },
                431,
                json!({"message": "request headers are 20000 bytes; the limit is 16384", "exception": "PayloadTooLarge"}),
            ),
            (
                GatewayError::TooManyHeaders {
                    count: 101,
                    max: 100,
                },
                431,
                json!({"message": "request has 101 header fields; the limit is 100", "exception": "PayloadTooLarge"}),
            ),
            (
                GatewayError::PayloadTooLarge { max: 10 },
                413,
                json!({"message": "request body is larger than the limit of 10 bytes", "exception": "PayloadTooLarge"}),
            ),
            (
                GatewayError::UnreadableBody,
                400,
                json!({"message": "the request body could not be read", "exception": "InvalidParameter"}),
            ),
            (
                GatewayError::BodyReadTimeout {
                    after: std::time::Duration::from_secs(10),
                },
                408,
                json!({"message": "the request body did not arrive within 10s", "exception": "RequestTimeout"}),
            ),
            (
                GatewayError::UpstreamBodyTooLarge { max: 64 },
                502,
                json!({"message": "the Context Services upstream sent an answer larger than 64 bytes", "exception": "UpstreamInvalidResponse"}),
            ),
            (
                GatewayError::UpstreamUnavailable,
                502,
                json!({"message": "the Context Services upstream is unavailable", "exception": "UpstreamUnavailable"}),
            ),
            (
                GatewayError::NoHealthyUpstream,
                503,
                json!({"message": "no healthy Context Services upstream is available", "exception": "UpstreamUnavailable"}),
            ),
            (
                GatewayError::UpstreamTimeout,
                504,
                json!({"message": "the Context Services upstream did not answer in time", "exception": "UpstreamTimeout"}),
            ),
            (
                GatewayError::UpstreamInvalidResponse("not a JSON array".into()),
                502,
                json!({"message": "the Context Services upstream sent an invalid response: not a JSON array", "exception": "UpstreamInvalidResponse"}),
            ),
            (
                GatewayError::Overloaded,
                503,
                json!({"message": "the gateway is overloaded; retry later", "exception": "Overloaded"}),
            ),
            (
                GatewayError::RateLimited {
                    rejection: Rejection::Tenant,
                    retry_after: std::time::Duration::from_millis(1500),
                },
                429,
                json!({"message": "the tenant rate limit is exceeded; retry later", "exception": "TooManyRequests"}),
            ),
            (
                GatewayError::BackendBusy {
                    rejection: Rejection::QueueDeadline,
                },
                503,
                json!({"message": "the Context Services backend is busy; retry later", "exception": "Overloaded"}),
            ),
            (
                GatewayError::StreamRefused,
                503,
                json!({"message": "too many requests in flight on this connection; retry on another", "exception": "Overloaded"}),
            ),
            (
                GatewayError::TooManyConnections,
                503,
                json!({"message": "too many connections from this client; retry later", "exception": "Overloaded"}),
            ),
            (
                GatewayError::Internal("secret detail 10.0.0.7".into()),
                500,
                json!({"message": "internal error", "exception": "Internal"}),
            ),
        ];
        for (error, status, body) in cases {
            assert_eq!(render(error).await, (status, None, body));
        }
        let (status, allow, _) = render(GatewayError::MethodNotAllowed {
            method: "POST".into(),
            allow: "GET, HEAD",
        })
        .await;
        assert_eq!((status, allow.as_deref()), (405, Some("GET, HEAD")));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        use std::time::Duration;
        for (after, header) in [
            (Duration::ZERO, "1"),
            (Duration::from_millis(1), "1"),
            (Duration::from_secs(1), "1"),
            (Duration::from_millis(1001), "2"),
            (Duration::from_secs(30), "30"),
        ] {
            let response = GatewayError::RateLimited {
                rejection: Rejection::Tenant,
                retry_after: after,
            }
            .into_response();
            assert_eq!(response.headers()[header::RETRY_AFTER], header, "{after:?}");
        }
        let refused = GatewayError::StreamRefused.into_response();
        assert!(refused.extensions().get::<RefuseStream>().is_some());
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn every_kind_has_its_blame() {
        use std::time::Duration;
        let cases = [
            (
                GatewayError::InvalidParameter(String::new()),
                Blame::Downstream,
            ),
            (GatewayError::NotFound(String::new()), Blame::Downstream),
            (
                GatewayError::MethodNotAllowed {
                    method: "POST".into(),
                    allow: "GET",
                },
                Blame::Downstream,
            ),
            (
                GatewayError::QueryTooLong { len: 1, max: 0 },
                Blame::Downstream,
            ),
            (
                GatewayError::HeadersTooLarge { len: 1, max: 0 },
                Blame::Downstream,
            ),
            (GatewayError::PayloadTooLarge { max: 0 }, Blame::Downstream),
            (GatewayError::UnreadableBody, Blame::Downstream),
            (
                GatewayError::BodyReadTimeout {
                    after: Duration::from_secs(1),
                },
                Blame::Downstream,
            ),
            (GatewayError::UpstreamUnavailable, Blame::Upstream),
            (GatewayError::NoHealthyUpstream, Blame::Upstream),
            (GatewayError::UpstreamTimeout, Blame::Upstream),
            (
                GatewayError::UpstreamInvalidResponse(String::new()),
                Blame::Upstream,
            ),
            (
                GatewayError::UpstreamBodyTooLarge { max: 0 },
                Blame::Upstream,
            ),
            (GatewayError::Overloaded, Blame::Overload),
            (
                GatewayError::RateLimited {
                    rejection: Rejection::Credential,
                    retry_after: Duration::ZERO,
                },
                Blame::Overload,
            ),
            (
                GatewayError::BackendBusy {
                    rejection: Rejection::QueueFull,
                },
                Blame::Overload,
            ),
            (GatewayError::StreamRefused, Blame::Overload),
            (GatewayError::TooManyConnections, Blame::Overload),
            (GatewayError::Internal(String::new()), Blame::Internal),
        ];
        for (error, blame) in cases {
            assert_eq!(error.blame(), blame, "{error:?}");
        }
    }
}
