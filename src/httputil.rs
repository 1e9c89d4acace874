//! Small HTTP helpers shared by the gateway, the admin listener and the store:
//! body constructors, hop-by-hop header handling, request ids.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Response;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Errors carried inside response and request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type every handler answers with.
pub type Body = BoxBody<Bytes, BoxError>;

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

/// Joins every value of `name` into one comma-separated list (RFC 9110 §5.3), or `None`.
pub fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for value in headers.get_all(name) {
        let list = out.get_or_insert_with(Vec::new);
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(value.as_bytes());
    }
    out
}

/// `name` with `item` appended to whatever list it already holds, as one field.
pub fn append_to_list(headers: &mut HeaderMap, name: &HeaderName, item: &str) {
    append_joined(headers, name, item.as_bytes());
}

/// [`append_to_list`] with an item built once: when the list is absent (the common
/// case) the value is shared as it is, with no copy and no validation.
pub fn append_value_to_list(headers: &mut HeaderMap, name: &HeaderName, item: &HeaderValue) {
    if headers.contains_key(name) {
        append_joined(headers, name, item.as_bytes());
    } else {
        headers.insert(name.clone(), item.clone());
    }
}

/// [`append_to_list`] with an item the caller built for it: when the list is absent
/// (the common case) the header value takes the bytes over, with no copy.
pub fn append_owned_to_list(headers: &mut HeaderMap, name: &HeaderName, item: Vec<u8>) {
    if headers.contains_key(name) {
        append_joined(headers, name, &item);
    } else if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(item)) {
        headers.insert(name.clone(), value);
    }
}

fn append_joined(headers: &mut HeaderMap, name: &HeaderName, item: &[u8]) {
    let mut list = joined(headers, name).unwrap_or_default();
    if !list.is_empty() {
        list.extend_from_slice(b", ");
    }
    list.extend_from_slice(item);
    if let Ok(value) = HeaderValue::from_bytes(&list) {
        headers.insert(name.clone(), value);
    }
}

/// The protocol name of `version` in a `Via` entry.
fn via_protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The `Via` entry for a message received over `version` (RFC 9110 §7.6.3).
pub fn via_entry(version: http::Version, pseudonym: &str) -> String {
    format!("{} {pseudonym}", via_protocol(version))
}

/// The `Via` entries of one pseudonym, one per protocol version, built once: every
/// answer through csgate carries one.
#[derive(Clone, Debug)]
pub struct ViaEntries {
    http09: HeaderValue,
    http10: HeaderValue,
    http11: HeaderValue,
    http2: HeaderValue,
    http3: HeaderValue,
}

impl ViaEntries {
    /// `None` when the pseudonym cannot be a header value (then no `Via` is sent, as
    /// [`append_to_list`] would send none).
    pub fn new(pseudonym: &str) -> Option<ViaEntries> {
        let entry = |version| HeaderValue::from_str(&via_entry(version, pseudonym)).ok();
        Some(ViaEntries {
            http09: entry(http::Version::HTTP_09)?,
            http10: entry(http::Version::HTTP_10)?,
            http11: entry(http::Version::HTTP_11)?,
            http2: entry(http::Version::HTTP_2)?,
            http3: entry(http::Version::HTTP_3)?,
        })
    }

    /// The entry for a message received over `version` ([`via_entry`]).
    pub fn get(&self, version: http::Version) -> &HeaderValue {
        match version {
            http::Version::HTTP_09 => &self.http09,
            http::Version::HTTP_10 => &self.http10,
            http::Version::HTTP_2 => &self.http2,
            http::Version::HTTP_3 => &self.http3,
            _ => &self.http11,
        }
    }
}

/// A complete body.
/// A short text written without allocating: header values built on every request
/// (`Cache-Status` of a hit, the client address in the forwarding headers).
pub struct StackText {
    bytes: [u8; 64],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl StackText {
    /// Appends `text`; past 64 bytes nothing is written and the result is an error.
    pub fn push(&mut self, text: &[u8]) -> std::fmt::Result {
        let end = self.len + text.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(text);
        self.len = end;
        Ok(())
    }

    /// Appends the decimal digits of `n`.
    pub fn push_integer(&mut self, n: impl itoa::Integer) -> std::fmt::Result {
        self.push(itoa::Buffer::new().format(n).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes())
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// `application/json`.
pub fn json_content_type() -> HeaderValue {
    HeaderValue::from_static("application/json")
}

/// The hop-by-hop headers of RFC 9110 §7.6.1, plus those listed in `Connection`.
/// These describe one connection and are never forwarded, in either direction.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names settles that without
    // hashing, where nine `remove`s hash nine names (~3k instructions per proxied
    // request, callgrind). `Connection` is one of them, so what it lists is seen too.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// One of the fixed hop-by-hop names [`strip_hop_by_hop`] removes.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// Removes every `names` present in `headers`, after one pass over the map's names
/// that finds which are (most often none), so absent ones cost no hash each. More than
/// 64 names are simply removed one by one.
pub fn remove_present(headers: &mut HeaderMap, names: &[&HeaderName]) {
    if names.len() > 64 {
        for name in names {
            headers.remove(*name);
        }
        return;
    }
    let mut present = 0u64;
    for key in headers.keys() {
        if let Some(i) = names.iter().position(|name| *name == key) {
            present |= 1 << i;
        }
    }
    for (i, name) in names.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_connection_listed_ones_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("contactcenterid", HeaderValue::from_static("t1"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eA=="),
        );
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["contactcenterid", "authorization"]);
    }

    /// Whatever a message carries, the fast paths leave exactly what removing each
    /// name in turn leaves.
    #[test]
    fn stripping_equals_removing_each_name() {
        use proptest::prelude::*;
        let names = [
            "connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
            "keep-alive",
            "proxy-connection",
            "x-private",
            "via",
            "host",
            "x-forwarded-for",
            "accept",
            "contactcenterid",
        ];
        let header = (
            0..names.len(),
            prop::sample::select(vec!["1", "x-private", "te, via"]),
        );
        proptest!(|(set in prop::collection::vec(header, 0..12))| {
            let mut map = HeaderMap::new();
            for (name, value) in &set {
                map.append(names[*name], HeaderValue::from_static(value));
            }
            let mut fast = map.clone();
            strip_hop_by_hop(&mut fast);
            let mut slow = map.clone();
            let listed: Vec<HeaderName> = slow
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .collect();
            for name in listed {
                slow.remove(name);
            }
            for name in &names[..9] {
                slow.remove(*name);
            }
            prop_assert_eq!(&fast, &slow);

            let some = [&header::VIA, &header::HOST, &X_FORWARDED_FOR, &header::TE];
            let mut fast = map.clone();
            remove_present(&mut fast, &some);
            let mut slow = map;
            for name in some {
                slow.remove(name);
            }
            prop_assert_eq!(fast, slow);
        });
    }

    #[test]
    fn remove_present_takes_any_number_of_names() {
        let custom: Vec<HeaderName> = (0..70)
            .map(|i| HeaderName::from_bytes(format!("x-h-{i}").as_bytes()).expect("a name"))
            .collect();
        for count in [1, 64, 65, 70] {
            let mut map = HeaderMap::new();
            for name in &custom {
                map.insert(name.clone(), HeaderValue::from_static("v"));
            }
            let names: Vec<&HeaderName> = custom.iter().take(count).collect();
            remove_present(&mut map, &names);
            assert_eq!(map.len(), 70 - count, "{count} names");
            assert!(names.iter().all(|name| !map.contains_key(*name)));
        }
    }

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
    fn prebuilt_via_entries_equal_the_formatted_ones() {
        use http::Version;
        let entries = ViaEntries::new("csgate").expect("a token is a header value");
        for version in [
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_3,
        ] {
            assert_eq!(entries.get(version), via_entry(version, "csgate").as_str());
            for existing in [None, Some("1.1 edge"), Some("")] {
                let mut by_text = HeaderMap::new();
                if let Some(v) = existing {
                    by_text.insert(header::VIA, HeaderValue::from_static(v));
                }
                let mut by_value = by_text.clone();
                let mut by_owned = by_text.clone();
                let entry = via_entry(version, "csgate");
                append_to_list(&mut by_text, &header::VIA, &entry);
                append_value_to_list(&mut by_value, &header::VIA, entries.get(version));
                append_owned_to_list(&mut by_owned, &header::VIA, entry.into_bytes());
                assert_eq!(by_text, by_value, "{version:?} {existing:?}");
                assert_eq!(by_text, by_owned, "{version:?} {existing:?}");
            }
        }
        assert!(ViaEntries::new("bad\x01name").is_none());
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
