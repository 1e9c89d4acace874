//! Small HTTP helpers shared by the gateway, the admin listener and the store:
//! body constructors, hop-by-hop header handling, request ids.
//!
//! - `body`: the [`Body`] type and its constructors, [`StackText`];
//! - `lists`: list-valued headers and `Via`;
//! - `hop`: hop-by-hop headers, [`remove_present`].

mod body;
mod hop;
mod lists;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Response;

pub use body::{empty, full, Body, BoxError, StackText};
pub use hop::{remove_present, strip_hop_by_hop};
pub use lists::{
    append_owned_to_list, append_to_list, append_value_to_list, joined, via_entry, ViaEntries,
};

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// RFC 9211 `Cache-Status`.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// Tenant header (GMS spells it `ContactCenterId`; header names are case-insensitive).
pub static CONTACT_CENTER_ID: HeaderName = HeaderName::from_static("contactcenterid");
/// Business-unit header.
pub static GROUP_ID: HeaderName = HeaderName::from_static("groupid");
/// W3C trace context.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Gives an HTTP/2 request (whose host is its `:authority`, in the URI) the `Host`
/// header an HTTP/1.1 request carries, so every later stage reads the client's host in
/// one place. A `Host` the client sent is left alone.
pub fn host_from_authority(parts: &mut http::request::Parts) {
    if parts.headers.contains_key(header::HOST) {
        return;
    }
    if let Some(authority) = parts.uri.authority() {
        if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, value);
        }
    }
}

/// `application/json`.
pub fn json_content_type() -> HeaderValue {
    HeaderValue::from_static("application/json")
}

/// The client's `X-Request-Id` when it is a sane token (1..=128 visible ASCII), else a
/// fresh one. A hostile id must not be able to forge log lines.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// `<16 hex digits random per process>-<16 hex digits counter>`: unique across
/// processes without a random-number syscall per request.
fn new_request_id() -> HeaderValue {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut text = [b'-'; 33];
    for (i, word) in [prefix, n].into_iter().enumerate() {
        for digit in 0..16 {
            let nibble = (word >> (60 - 4 * digit)) & 0xf;
            text[i * 17 + digit] = HEX[nibble as usize];
        }
    }
    HeaderValue::from_bytes(&text).expect("hex digits and a dash are a valid header value")
}

/// `Cache-Control` of errors csgate makes: never stored by anyone.
pub fn no_store() -> HeaderValue {
    HeaderValue::from_static("no-store")
}

/// `Cache-Control` on a Query Services answer: `value` (`[cache]
/// downstream_cache_control`) on a success, which csgate computed from personal data; an
/// error keeps the `Cache-Control` it has (the upstream's, passed through) and gets
/// `no-store` when it has none.
pub fn with_cache_control(mut response: Response<Body>, value: &HeaderValue) -> Response<Body> {
    let success = response.status().is_success();
    let headers = response.headers_mut();
    if success {
        headers.insert(header::CACHE_CONTROL, value.clone());
    } else if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, no_store());
    }
    response
}

/// Bytes the request head's header fields take on the wire (`name: value\r\n`).
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// A path that an OpenAPI path `template` (relative to `prefix`) matches: every
/// `{parameter}` segment filled with `7`. Route tables are held to their routers with it.
#[cfg(test)]
pub(crate) fn example_path(prefix: &str, template: &str) -> String {
    let mut path = String::from(prefix);
    for segment in template.split('/').skip(1) {
        path.push('/');
        path.push_str(if segment.starts_with('{') {
            "7"
        } else {
            segment
        });
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_answers_get_the_configured_cache_control_and_errors_no_store() {
        use http::StatusCode;
        let configured = HeaderValue::from_static("private, max-age=5");
        let answer = |status: StatusCode, upstream: Option<&'static str>| {
            let mut response = Response::new(empty());
            *response.status_mut() = status;
            if let Some(v) = upstream {
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static(v));
            }
            let response = with_cache_control(response, &configured);
            response.headers()[header::CACHE_CONTROL].clone()
        };
        let cases = [
            (StatusCode::OK, None, "private, max-age=5"),
            (StatusCode::OK, Some("max-age=60"), "private, max-age=5"),
            (StatusCode::BAD_REQUEST, None, "no-store"),
            (StatusCode::FORBIDDEN, Some("max-age=5"), "max-age=5"),
        ];
        for (status, upstream, expected) in cases {
            assert_eq!(answer(status, upstream), expected, "{status} {upstream:?}");
        }
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_replaced_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        let generated = request_id(&h);
        assert_eq!(generated.len(), 33, "a fresh id replaces {generated:?}");
        assert_ne!(generated, "has space");
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }
}
