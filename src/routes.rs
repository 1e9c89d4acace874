//! The one table of the API's paths: every request on the public listener is
//! classified here, reads and writes alike, from the same canonical path that is
//! forwarded (percent-escapes of unreserved characters decoded, so `/services/%73tart`
//! is `/services/start` to csgate as it is to the upstream).
//!
//! [`route`] takes a path [`canonicalise`] returned, and finds the first entry of
//! [`TABLE`] that matches: the six Query Services routes and Query Service by ID
//! (answered by csgate), the writes (which the pipeline's write stage invalidates the
//! cache for on their 2xx), and everything else under `/genesys/1/cs` (passed through).
//!
//! One rule for spellings csgate cannot be sure the upstream reads as it does:
//! - [`check_path`] refuses, on every route, dot-segments (raw or encoded, any case),
//!   an encoded `/` or `\`, a backslash, NUL, `;` parameters, an empty segment (`//`)
//!   and a `%` that does not start an escape;
//! - a path that matches an entry only when its words are compared without case
//!   (`/services/Start`, `/Customers/c/services`) is refused, naming the word: an
//!   upstream that routes without case would apply a write csgate could not see.

use std::borrow::Cow;

use http::Method;

use crate::error::GatewayError;
use crate::query::Lifecycle;

/// The public API prefix clients use (as on GMS).
pub const PUBLIC_PREFIX: &str = "/genesys/1/cs";

/// Methods the read-only routes allow.
pub const READ_METHODS: &str = "GET, HEAD";

/// Methods the proxied routes allow: everything but `CONNECT` (and `TRACE`, which the
/// upstream may refuse itself), since no route is a tunnel.
pub const PROXY_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Whose services a Query Services route asks for, as the (canonical) path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathOwner<'a> {
    Anonymous { contact_key: &'a str },
    Customer { customer_id: &'a str },
}

/// What a write changes, as far as the cache is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write<'a> {
    /// `POST /services/start`: the contact key is in the body.
    Start,
    /// A write to one service (its id as the canonical path segment).
    Service { service_id: &'a str },
    /// A write csgate cannot attribute to keys (`POST /maintenance/...`): the writer's
    /// whole tenant partition.
    Tenant,
}

/// A matched request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// One of the six Query Services routes.
    QueryServices {
        owner: PathOwner<'a>,
        lifecycle: Lifecycle,
    },
    /// `GET /services/{service_id}`: include flags validated, answer trimmed.
    ServiceById { service_id: &'a str },
    /// Anything else under the prefix, forwarded as it is; `rest` is the canonical path
    /// after the prefix (starts with `/`, or is empty). `write` says what a 2xx answer
    /// invalidates.
    Proxy {
        rest: &'a str,
        write: Option<Write<'a>>,
    },
}

impl Route<'_> {
    /// A stable name for logs and metric labels; never contains a key or an id.
    pub fn name(&self) -> &'static str {
        match self {
            Route::QueryServices { owner, lifecycle } => match (owner, lifecycle) {
                (PathOwner::Anonymous { .. }, Lifecycle::All) => "anonymous_services",
                (PathOwner::Anonymous { .. }, Lifecycle::Active) => "anonymous_services_active",
                (PathOwner::Anonymous { .. }, Lifecycle::Completed) => {
                    "anonymous_services_completed"
                }
                (PathOwner::Customer { .. }, Lifecycle::All) => "customer_services",
                (PathOwner::Customer { .. }, Lifecycle::Active) => "customer_services_active",
                (PathOwner::Customer { .. }, Lifecycle::Completed) => "customer_services_completed",
            },
            Route::ServiceById { .. } => "service_by_id",
            Route::Proxy { .. } => "proxy",
        }
    }
}

/// One segment of a [`TABLE`] pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    /// This word, exactly.
    Word(&'static str),
    /// A path parameter (a contact key, customer id, service id...).
    Param,
    /// Any number of further segments, none included.
    Rest,
}

/// What a [`TABLE`] entry makes of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A Query Services read: `GET`/`HEAD` only, other methods 405. `key` is the index
    /// of the owner's parameter, `None` for the route without one (an empty key).
    Query {
        anonymous: bool,
        lifecycle: Lifecycle,
        key: Option<usize>,
    },
    /// Query Service by ID (`GET` only; other methods try the entries after it).
    ById,
    /// `POST /services/start` (other methods try the entries after it).
    Start,
    /// A write to the service whose id is parameter `id` (any method but the reads;
    /// reads pass through).
    ServiceWrite { id: usize },
    /// A whole-tenant write (any method but the reads; reads pass through).
    TenantWrite,
    /// Passed through, changing nothing csgate caches.
    Pass,
}

use Seg::{Param, Rest, Word};

/// The API's paths, after [`PUBLIC_PREFIX`], first match wins. A path no entry matches
/// is passed through as a read would be (it changes nothing csgate caches).
static TABLE: &[(&[Seg], Kind)] = &[
    (
        &[Word("services"), Word("anonymous")],
        query(true, Lifecycle::All, None),
    ),
    (
        &[Word("services"), Word("anonymous"), Param],
        query(true, Lifecycle::All, Some(0)),
    ),
    (
        &[Word("services"), Word("anonymous"), Param, Word("active")],
        query(true, Lifecycle::Active, Some(0)),
    ),
    (
        &[
            Word("services"),
            Word("anonymous"),
            Param,
            Word("completed"),
        ],
        query(true, Lifecycle::Completed, Some(0)),
    ),
    (&[Word("services"), Word("anonymous"), Rest], Kind::Pass),
    (
        &[Word("customers"), Param, Word("services")],
        query(false, Lifecycle::All, Some(0)),
    ),
    (
        &[Word("customers"), Param, Word("services"), Word("active")],
        query(false, Lifecycle::Active, Some(0)),
    ),
    (
        &[
            Word("customers"),
            Param,
            Word("services"),
            Word("completed"),
        ],
        query(false, Lifecycle::Completed, Some(0)),
    ),
    (&[Word("services"), Word("start")], Kind::Start),
    (&[Word("services"), Param], Kind::ById),
    (
        &[Word("services"), Param, Rest],
        Kind::ServiceWrite { id: 0 },
    ),
    (
        &[Word("customers"), Param, Word("services"), Param],
        Kind::ServiceWrite { id: 1 },
    ),
    (&[Word("maintenance"), Rest], Kind::TenantWrite),
];

const fn query(anonymous: bool, lifecycle: Lifecycle, key: Option<usize>) -> Kind {
    Kind::Query {
        anonymous,
        lifecycle,
        key,
    }
}

/// The most segments a [`TABLE`] pattern names before its `Rest`.
const MAX_SEGMENTS: usize = 4;

/// How a path's segments meet a pattern.
enum Match {
    /// Word for word; the parameters' positions in the path.
    Exact([usize; 2]),
    /// Only when words are compared without case: the path's segment and the word.
    CaseVariant(usize, &'static str),
    No,
}

fn match_pattern(pattern: &[Seg], segments: &[&str], more: bool) -> Match {
    let rest = pattern.last() == Some(&Rest);
    let fixed = if rest {
        &pattern[..pattern.len() - 1]
    } else {
        pattern
    };
    let length_fits = if rest {
        segments.len() >= fixed.len()
    } else {
        segments.len() == fixed.len() && !more
    };
    if !length_fits {
        return Match::No;
    }
    let (mut params, mut count, mut variant) = ([0usize; 2], 0, None);
    for (i, (seg, segment)) in fixed.iter().zip(segments).enumerate() {
        match seg {
            Word(word) if word == segment => {}
            Word(word) if word.eq_ignore_ascii_case(segment) => {
                variant.get_or_insert((i, *word));
            }
            Word(_) => return Match::No,
            Param => {
                if let Some(slot) = params.get_mut(count) {
                    *slot = i;
                    count += 1;
                }
            }
            Rest => {}
        }
    }
    match variant {
        Some((i, word)) => Match::CaseVariant(i, word),
        None => Match::Exact(params),
    }
}

/// Checks a path (no query) and returns what csgate classifies and forwards: its
/// canonical form ([`canonical_path`]). Refused paths are `400 InvalidParameter`
/// naming the path and the problem (see [`check_path`]).
pub fn canonicalise(path: &str) -> Result<Cow<'_, str>, GatewayError> {
    // Nearly every path is clean and needs no re-encoding: one pass each says so
    // (every request runs this, hits included).
    if is_clean(path.as_bytes()) {
        return Ok(canonical_path(path));
    }
    check_path(path)?;
    // A '%' that starts no escape has no canonical form (decoding the escapes after it
    // could make it start one): such a path is left as it is, and `route` refuses it
    // unless the '%' is in a Query Services parameter, which the validate stage refuses
    // naming the parameter.
    if has_stray_percent(path) {
        return Ok(Cow::Borrowed(path));
    }
    Ok(canonical_path(path))
}

/// Matches `method` and a path [`canonicalise`] returned. Paths outside the prefix are
/// `NotFound`; other methods on the Query Services routes are `MethodNotAllowed`.
pub fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, GatewayError> {
    if *method == Method::CONNECT {
        return Err(GatewayError::MethodNotAllowed {
            method: method.to_string(),
            allow: PROXY_METHODS,
        });
    }
    let rest = match path.strip_prefix(PUBLIC_PREFIX) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => {
            return Err(GatewayError::NotFound(format!(
                "no such resource; the Context Services API is served under {PUBLIC_PREFIX}/"
            )))
        }
    };
    let trimmed = rest.strip_suffix('/').unwrap_or(rest);
    // Patterns name at most MAX_SEGMENTS segments before their `Rest`: a longer path
    // can only match a `Rest`, so one more slot says "there is more" and nothing is
    // allocated.
    let mut slots = [""; MAX_SEGMENTS + 1];
    let mut count = 0;
    for segment in segments(trimmed).skip(1).take(slots.len()) {
        slots[count] = segment;
        count += 1;
    }
    let more = count > MAX_SEGMENTS;
    let segments = &slots[..count.min(MAX_SEGMENTS)];
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let pass = Route::Proxy { rest, write: None };
    // Only a Query Services parameter may hold a '%' that starts no escape (the validate
    // stage refuses it, naming the parameter); anything csgate forwards as it is may not.
    let refuse_stray_percent = || {
        if has_stray_percent(rest) {
            return Err(GatewayError::InvalidParameter(format!(
                "path '{}' is refused: it contains a '%' that does not start an escape \
                 (a literal '%' is %25)",
                crate::query::params::shown(path)
            )));
        }
        Ok(())
    };
    for (pattern, kind) in TABLE {
        let applies = match kind {
            Kind::Query { .. } | Kind::Pass => true,
            Kind::ById => *method == Method::GET,
            Kind::Start => *method == Method::POST,
            Kind::ServiceWrite { .. } | Kind::TenantWrite => !read,
        };
        if !applies {
            continue;
        }
        let params = match match_pattern(pattern, segments, more) {
            Match::No => continue,
            Match::CaseVariant(i, word) => {
                return Err(GatewayError::InvalidParameter(format!(
                    "path '{}' is refused: its segment '{}' must be spelled '{word}'",
                    crate::query::params::shown(path),
                    crate::query::params::shown(segments[i]),
                )))
            }
            Match::Exact(params) => params,
        };
        let param = |n: usize| segments[params[n]];
        if !matches!(kind, Kind::Query { .. }) {
            refuse_stray_percent()?;
        }
        return match *kind {
            Kind::Query {
                anonymous,
                lifecycle,
                key,
            } => {
                if !matches!(*method, Method::GET | Method::HEAD) {
                    return Err(GatewayError::MethodNotAllowed {
                        method: method.to_string(),
                        allow: READ_METHODS,
                    });
                }
                let value = key.map_or("", param);
                let owner = if anonymous {
                    PathOwner::Anonymous { contact_key: value }
                } else {
                    PathOwner::Customer { customer_id: value }
                };
                Ok(Route::QueryServices { owner, lifecycle })
            }
            Kind::ById if param(0).is_empty() => Ok(pass),
            Kind::ById => Ok(Route::ServiceById {
                service_id: param(0),
            }),
            Kind::Start => Ok(Route::Proxy {
                rest,
                write: Some(Write::Start),
            }),
            Kind::ServiceWrite { id } => Ok(Route::Proxy {
                rest,
                write: Some(Write::Service {
                    service_id: param(id),
                }),
            }),
            Kind::TenantWrite => Ok(Route::Proxy {
                rest,
                write: Some(Write::Tenant),
            }),
            Kind::Pass => Ok(pass),
        };
    }
    refuse_stray_percent()?;
    Ok(pass)
}

/// Does `path` hold a '%' not followed by two hex digits?
fn has_stray_percent(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' && bytes.get(i + 1..i + 3).and_then(hex_pair).is_none())
}

/// `path.split('/')` by hand: `split` searches for a `char` with `memchr`, whose set-up
/// outweighs the search on segments this short (~600 instructions per request in
/// `route`, callgrind).
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(path);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.bytes().position(|b| b == b'/') {
            Some(slash) => {
                rest = Some(&current[slash + 1..]);
                Some(&current[..slash])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// Refuses a path that could escape the prefix or mean something else to the upstream
/// (`400 InvalidParameter` naming the path and the problem).
pub fn check_path(path: &str) -> Result<(), GatewayError> {
    // This runs on every request, hits included: one pass decides that the path is
    // clean (nearly every one is); `first_problem`, the reference, names what is wrong
    // with the others. Splitting by segment and searching each for three bytes cost
    // ~2k instructions per request (callgrind).
    if is_clean(path.as_bytes()) {
        return Ok(());
    }
    match first_problem(path) {
        None => Ok(()),
        Some(problem) => Err(GatewayError::InvalidParameter(format!(
            "path '{}' is refused: {problem}",
            crate::query::params::shown(path)
        ))),
    }
}

/// True when [`first_problem`] finds nothing; false on anything it might refuse (a
/// backslash, `;`, NUL, an escape of one of them or of `/`, a dot-segment, an empty
/// segment, a `%` that starts no escape).
fn is_clean(path: &[u8]) -> bool {
    let (mut dots, mut other) = (0usize, false);
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        match b {
            b'/' => {
                if !other && (dots == 1 || dots == 2) {
                    return false;
                }
                if i > 0 && path[i - 1] == b'/' {
                    return false;
                }
                (dots, other) = (0, false);
            }
            b'.' => dots += 1,
            b'\\' | b';' | b'\0' => return false,
            b'%' => match path.get(i + 1..i + 3).and_then(hex_pair) {
                Some(b'/' | b'\\' | 0) => return false,
                Some(b'.') => {
                    dots += 1;
                    i += 3;
                    continue;
                }
                Some(_) => {
                    other = true;
                    i += 3;
                    continue;
                }
                // A literal '%': `first_problem` says what it makes of it.
                None => return false,
            },
            _ => other = true,
        }
        i += 1;
    }
    other || !(dots == 1 || dots == 2)
}

/// Two hex digits as a byte (no sign, unlike `u8::from_str_radix`).
fn hex_pair(hex: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(*hex.first()?)? * 16 + digit(*hex.get(1)?)?) as u8)
}

/// What [`check_path`] refuses a path for: the first offending segment's problem.
fn first_problem(path: &str) -> Option<&'static str> {
    let last = path.split('/').count() - 1;
    for (n, segment) in path.split('/').enumerate() {
        // The empty segment before a leading '/' and after a trailing one are the
        // path's ends, not segments.
        if segment.is_empty() && n != 0 && n != last {
            return Some("it contains an empty segment ('//')");
        }
        if segment.contains('\\') {
            return Some("it contains a backslash");
        }
        if segment.contains(';') {
            return Some("it contains a ';' parameter");
        }
        if segment.contains('\0') {
            return Some("it contains NUL");
        }
        // A dot-segment however spelled: only dots, raw or encoded, one or two of them.
        let (mut dots, mut other) = (0usize, false);
        let bytes = segment.as_bytes();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b != b'%' {
                if b == b'.' {
                    dots += 1;
                } else {
                    other = true;
                }
                i += 1;
                continue;
            }
            let escape = bytes.get(i + 1..i + 3).and_then(hex_pair);
            match escape {
                // Not an escape: in a Query Services parameter the validate stage refuses
                // it naming the parameter; anywhere else `route` refuses it.
                None => {
                    other = true;
                    i += 1;
                    continue;
                }
                Some(b'/') => return Some("it contains an encoded '/' (%2F)"),
                Some(b'\\') => return Some("it contains an encoded '\\' (%5C)"),
                Some(0) => return Some("it contains an encoded NUL (%00)"),
                Some(b'.') => dots += 1,
                Some(_) => other = true,
            }
            i += 3;
        }
        if !other && (dots == 1 || dots == 2) {
            return Some("it contains a dot-segment ('.' or '..')");
        }
    }
    None
}

/// The bytes a path may carry literally (RFC 3986 `pchar` and `/`, less `%` and `;`):
/// unreserved characters and the sub-delimiters csgate keeps as they are.
static LITERAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'/'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b':'
                    | b'@'
            );
        b += 1;
    }
    table
};

/// The path csgate forwards for a path that passed [`check_path`]: escapes of
/// unreserved characters decoded, other escapes in upper case, and any byte a path may
/// not carry literally encoded (RFC 3986 §6.2.2). Segments are never joined, split or
/// removed, so the result stays under the prefix it is appended to.
pub fn canonical_path(path: &str) -> Cow<'_, str> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    let literal = |b: u8| LITERAL[usize::from(b)];
    let bytes = path.as_bytes();
    // The usual path needs no change: one pass over a table says so (the closures'
    // `contains` per byte cost ~900 instructions per request, callgrind).
    if bytes.iter().all(|&b| literal(b)) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let push_encoded = |out: &mut String, b: u8| {
        out.push('%');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    };
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(hex_pair);
        match escaped {
            Some(decoded) if unreserved(decoded) => out.push(char::from(decoded)),
            Some(decoded) => push_encoded(&mut out, decoded),
            None if literal(b) => out.push(char::from(b)),
            None => push_encoded(&mut out, b),
        }
        i += if escaped.is_some() { 3 } else { 1 };
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `dispatch` does: canonicalise, then route.
    fn checked(method: &Method, path: &str) -> Result<&'static str, GatewayError> {
        let canonical = canonicalise(path)?;
        route(method, &canonical).map(|r| r.name())
    }

    fn name(method: Method, path: &str) -> Result<&'static str, u16> {
        checked(&method, path).map_err(|e| e.status_and_kind().0.as_u16())
    }

    #[test]
    fn table() {
        let p = PUBLIC_PREFIX;
        let cases = [
            (
                Method::GET,
                format!("{p}/services/anonymous/k"),
                Ok("anonymous_services"),
            ),
            (
                Method::GET,
                format!("{p}/services/anonymous/k/"),
                Ok("anonymous_services"),
            ),
            (
                Method::HEAD,
                format!("{p}/services/anonymous/k/active"),
                Ok("anonymous_services_active"),
            ),
            (
                Method::GET,
                format!("{p}/services/anonymous/k/completed/"),
                Ok("anonymous_services_completed"),
            ),
            (
                Method::GET,
                format!("{p}/services/anonymous"),
                Ok("anonymous_services"),
            ),
            (
                Method::GET,
                format!("{p}/customers/ABC1234/services"),
                Ok("customer_services"),
            ),
            (
                Method::GET,
                format!("{p}/customers/ABC1234/services/active"),
                Ok("customer_services_active"),
            ),
            (
                Method::GET,
                format!("{p}/customers/ABC1234/services/completed/"),
                Ok("customer_services_completed"),
            ),
            (Method::GET, format!("{p}/services/42"), Ok("service_by_id")),
            (
                Method::GET,
                format!("{p}/services/42/"),
                Ok("service_by_id"),
            ),
            (Method::PUT, format!("{p}/services/42"), Ok("proxy")),
            (Method::DELETE, format!("{p}/services/42"), Ok("proxy")),
            (Method::POST, format!("{p}/services/start"), Ok("proxy")),
            (
                Method::POST,
                format!("{p}/customers/ABC/services/42"),
                Ok("proxy"),
            ),
            (
                Method::GET,
                format!("{p}/services/42/states/active"),
                Ok("proxy"),
            ),
            (
                Method::GET,
                format!("{p}/metadata/business-attributes"),
                Ok("proxy"),
            ),
            (Method::GET, p.to_string(), Ok("proxy")),
            (Method::POST, format!("{p}/services/anonymous/k"), Err(405)),
            (
                Method::DELETE,
                format!("{p}/customers/c/services/active"),
                Err(405),
            ),
            (
                Method::GET,
                "/genesys/1/csx/services/anonymous/k".to_string(),
                Err(404),
            ),
            (Method::GET, "/other".to_string(), Err(404)),
            (Method::GET, "/".to_string(), Err(404)),
        ];
        for (method, path, expected) in cases {
            assert_eq!(name(method.clone(), &path), expected, "{method} {path}");
        }
    }

    /// The write a request is, as the path table classifies it after canonicalising.
    fn write_of(method: Method, path: &str) -> Result<Option<String>, String> {
        let canonical = canonicalise(path).map_err(|e| e.to_string())?;
        match route(&method, &canonical).map_err(|e| e.to_string())? {
            Route::Proxy { write, .. } => Ok(write.map(|w| match w {
                Write::Start => "start".to_owned(),
                Write::Service { service_id } => format!("service {service_id}"),
                Write::Tenant => "tenant".to_owned(),
            })),
            other => Ok(Some(format!("read {}", other.name()))),
        }
    }

    #[test]
    fn writes_are_classified_from_the_canonical_path() {
        let p = PUBLIC_PREFIX;
        let start = Ok(Some("start".to_owned()));
        let service = |id: &str| Ok(Some(format!("service {id}")));
        let cases = [
            (Method::POST, "/services/start", start.clone()),
            (Method::POST, "/services/start/", start.clone()),
            (Method::POST, "/services/%73tart", start.clone()),
            (Method::POST, "/%73ervices/%73%74%61%72%74", start.clone()),
            (Method::POST, "/services/42/end", service("42")),
            (Method::POST, "/%73ervices/42/end", service("42")),
            (Method::POST, "/services/%34%32/end", service("42")),
            (Method::POST, "/services/%2B7/end", service("%2B7")),
            (Method::PUT, "/services/42", service("42")),
            (Method::DELETE, "/services/42/", service("42")),
            (
                Method::PUT,
                "/services/383-f9a6/extensions/x/merge",
                service("383-f9a6"),
            ),
            (Method::POST, "/services/42/states/7/end", service("42")),
            (Method::POST, "/services/42/tasks/start", service("42")),
            (
                Method::POST,
                "/services/42/tasks/7/extensions/a/merge",
                service("42"),
            ),
            (Method::POST, "/customers/ABC/services/42", service("42")),
            (Method::POST, "/%63ustomers/ABC/services/42", service("42")),
            (
                Method::POST,
                "/maintenance/purge",
                Ok(Some("tenant".to_owned())),
            ),
            (Method::GET, "/services/42/states", Ok(None)),
            (Method::OPTIONS, "/services/42", Ok(None)),
            (Method::POST, "/metadata/business-attributes", Ok(None)),
            (Method::POST, "/services/anonymous/k/x", Ok(None)),
            (
                Method::GET,
                "/services/anonymous/%2B14088327799",
                Ok(Some("read anonymous_services".to_owned())),
            ),
            (
                Method::GET,
                "/services/start",
                Ok(Some("read service_by_id".to_owned())),
            ),
        ];
        for (method, rest, expected) in cases {
            let path = format!("{p}{rest}");
            assert_eq!(write_of(method.clone(), &path), expected, "{method} {rest}");
        }
    }

    #[test]
    fn words_in_another_case_and_empty_segments_are_refused() {
        let p = PUBLIC_PREFIX;
        let refused = [
            (
                Method::POST,
                "/services/Start",
                "segment 'Start' must be spelled 'start'",
            ),
            (
                Method::POST,
                "/SERVICES/start",
                "'SERVICES' must be spelled 'services'",
            ),
            (
                Method::POST,
                "/Customers/C/services/42",
                "must be spelled 'customers'",
            ),
            (
                Method::POST,
                "/customers/C/Services/42",
                "must be spelled 'services'",
            ),
            (
                Method::GET,
                "/services/Anonymous/k",
                "must be spelled 'anonymous'",
            ),
            (
                Method::GET,
                "/services/anonymous/k/Active",
                "must be spelled 'active'",
            ),
            (
                Method::GET,
                "/customers/c/services/COMPLETED",
                "must be spelled 'completed'",
            ),
            (
                Method::POST,
                "/Maintenance/purge",
                "must be spelled 'maintenance'",
            ),
            (Method::POST, "//services/start", "empty segment"),
            (Method::POST, "/services//start", "empty segment"),
            (Method::GET, "/services/anonymous//active", "empty segment"),
            (
                Method::POST,
                "/services/42%/end",
                "does not start an escape",
            ),
        ];
        for (method, rest, problem) in refused {
            let path = format!("{p}{rest}");
            let message = write_of(method.clone(), &path).expect_err(&path);
            assert!(
                message.starts_with("path '") && message.contains(problem),
                "{method} {rest}: {message}"
            );
        }
        // A parameter in any case is a parameter.
        for (method, rest) in [
            (Method::GET, "/services/anonymous/Active"),
            (Method::GET, "/customers/Services/services"),
            (Method::POST, "/services/42/states/Start"),
        ] {
            let path = format!("{p}{rest}");
            assert!(write_of(method.clone(), &path).is_ok(), "{method} {rest}");
        }
    }

    #[test]
    fn paths_that_could_escape_the_prefix_are_refused() {
        let p = PUBLIC_PREFIX;
        let refused = [
            (format!("{p}/../../../internal/secret.txt"), "dot-segment"),
            (format!("{p}/services/./42"), "dot-segment"),
            (format!("{p}/customers/%2e%2e/services"), "dot-segment"),
            (format!("{p}/customers/%2E%2e/services"), "dot-segment"),
            (format!("{p}/customers/.%2E/services"), "dot-segment"),
            (format!("{p}/services/anonymous/%2e"), "dot-segment"),
            (format!("{p}/services/anonymous/.."), "dot-segment"),
            (format!("{p}/.."), "dot-segment"),
            (format!("{p}/services/a%2fb"), "encoded '/'"),
            (format!("{p}/services/anonymous/a%2Fb"), "encoded '/'"),
            (format!("{p}/services/a%5cb"), "encoded '\\'"),
            (format!("{p}/services/a%5C..%5Cb"), "encoded '\\'"),
            (format!("{p}/services/a\\b"), "backslash"),
            (format!("{p}/services/a%00"), "encoded NUL"),
            (format!("{p}/services/42;jsessionid=x"), "';' parameter"),
            (format!("{p}/customers/c;x/services"), "';' parameter"),
            ("/x/../genesys/1/cs/services/1".to_owned(), "dot-segment"),
        ];
        for (path, problem) in refused {
            for method in [Method::GET, Method::POST, Method::DELETE] {
                let error = checked(&method, &path).expect_err(&path);
                let GatewayError::InvalidParameter(message) = &error else {
                    panic!("{path}: {error:?}");
                };
                assert!(
                    message.starts_with(&format!("path '{path}' is refused"))
                        && message.contains(problem),
                    "{path}: {message}"
                );
            }
        }
        for allowed in [
            format!("{p}/services/anonymous/a.b"),
            format!("{p}/services/anonymous/..."),
            format!("{p}/services/anonymous/.a"),
            format!("{p}/services/anonymous/%2B1%20408"),
            format!("{p}/services/1/extensions/x%3Dy"),
        ] {
            assert!(checked(&Method::GET, &allowed).is_ok(), "{allowed}");
        }
    }

    #[test]
    fn forwarded_paths_are_canonical() {
        let cases = [
            ("/services/42", "/services/42"),
            ("/services/%34%32", "/services/42"),
            ("/services/a%7e%2db", "/services/a~-b"),
            ("/services/a%3db%3D", "/services/a%3Db%3D"),
            ("/services/caf%c3%a9", "/services/caf%C3%A9"),
            ("/services/a b\"{}|^`", "/services/a%20b%22%7B%7D%7C%5E%60"),
            ("/customers/x@y:z/services/1", "/customers/x@y:z/services/1"),
            ("/services/%2E%2E%2E", "/services/..."),
            ("/services/a%zz%4", "/services/a%25zz%254"),
        ];
        for (raw, canonical) in cases {
            assert_eq!(canonical_path(raw), canonical, "{raw}");
            assert_eq!(canonical_path(canonical), canonical, "idempotent on {raw}");
        }
    }

    proptest::proptest! {
        /// Whatever passes the check, its canonical form has the same segments and none
        /// of them is a dot-segment or hides a separator: the forwarded path stays
        /// under the prefix.
        #[test]
        fn a_checked_path_stays_under_the_prefix(
            segments in proptest::collection::vec("([a-z.%/;\\\\]|%2[eEfF]|%5[cC]|%00|%41){0,6}", 0..6)
        ) {
            let path = format!("{PUBLIC_PREFIX}/{}", segments.join("/"));
            if check_path(&path).is_ok() {
                let forwarded = canonical_path(&path);
                let original: Vec<&str> = path.split('/').collect();
                let canonical: Vec<&str> = forwarded.split('/').collect();
                proptest::prop_assert_eq!(original.len(), canonical.len());
                for segment in canonical {
                    proptest::prop_assert!(segment != "." && segment != "..", "{}", forwarded);
                    let lower = segment.to_ascii_lowercase();
                    proptest::prop_assert!(!lower.contains("%2f") && !lower.contains("%5c") && !segment.contains('\\'));
                }
                proptest::prop_assert!(forwarded.starts_with(PUBLIC_PREFIX));
            }
        }
    }

    #[test]
    fn path_parameters_stay_raw() {
        let r = route(
            &Method::GET,
            "/genesys/1/cs/services/anonymous/%2B1%20408%20832/active",
        )
        .expect("matches");
        assert_eq!(
            r,
            Route::QueryServices {
                owner: PathOwner::Anonymous {
                    contact_key: "%2B1%20408%20832"
                },
                lifecycle: Lifecycle::Active
            }
        );
    }
}

/// The routes csgate answers itself, as OpenAPI path templates relative to
/// [`PUBLIC_PREFIX`], with the methods each one allows. Everything else under the prefix
/// is proxied; the embedded store's routes are `store::ROUTES`. `tests/openapi.rs` holds
/// `openapi/csgate.yaml` to both tables, and the test below holds [`route`] to this one.
pub const ROUTES: &[(&str, &[Method])] = &[
    (
        "/services/anonymous/{contact_key}",
        &[Method::GET, Method::HEAD],
    ),
    (
        "/services/anonymous/{contact_key}/active",
        &[Method::GET, Method::HEAD],
    ),
    (
        "/services/anonymous/{contact_key}/completed",
        &[Method::GET, Method::HEAD],
    ),
    (
        "/customers/{customer_id}/services",
        &[Method::GET, Method::HEAD],
    ),
    (
        "/customers/{customer_id}/services/active",
        &[Method::GET, Method::HEAD],
    ),
    (
        "/customers/{customer_id}/services/completed",
        &[Method::GET, Method::HEAD],
    ),
    ("/services/{service_id}", &[Method::GET]),
];

#[cfg(test)]
mod table_tests {
    use super::*;

    #[test]
    fn the_route_table_is_what_the_router_answers_itself() {
        let methods = [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ];
        for (pattern, allowed) in ROUTES {
            let mut path = String::from(PUBLIC_PREFIX);
            for segment in pattern.split('/').skip(1) {
                path.push('/');
                path.push_str(if segment.starts_with('{') {
                    "7"
                } else {
                    segment
                });
            }
            for method in &methods {
                let answered = matches!(
                    route(method, &path),
                    Ok(Route::QueryServices { .. } | Route::ServiceById { .. })
                );
                assert_eq!(answered, allowed.contains(method), "{method} {pattern}");
            }
        }
    }

    #[test]
    fn clean_paths_are_exactly_those_without_a_problem() {
        for path in [
            "/genesys/1/cs/services/anonymous/key-1/active",
            "/a/.../b",
            "/a/%2e%2E%2e/b",
            "/a/%41b",
            "/",
            "",
        ] {
            assert!(is_clean(path.as_bytes()), "{path}");
            assert_eq!(first_problem(path), None, "{path}");
        }
        for path in [
            "/a/./b",
            "/a/..",
            "/a/%2e%2E",
            "/a\\b",
            "/a;b",
            "/a/%2F",
            "/a/%5c",
            "/%00",
            "/a//b",
            "//a",
            "/a//",
        ] {
            assert!(!is_clean(path.as_bytes()), "{path}");
            assert!(first_problem(path).is_some(), "{path}");
        }
        // A '%' that starts no escape is not clean, and left to `route` (or the
        // validate stage) to refuse.
        for path in ["/a%zz", "/a%2", "/a%+2f"] {
            assert!(!is_clean(path.as_bytes()), "{path}");
            assert_eq!(first_problem(path), None, "{path}");
            assert!(has_stray_percent(path), "{path}");
        }
    }

    proptest::proptest! {
        #[test]
        fn segments_are_what_split_gives(path in "[a/.]{0,12}") {
            proptest::prop_assert_eq!(
                segments(&path).collect::<Vec<_>>(),
                path.split('/').collect::<Vec<_>>()
            );
        }

        #[test]
        fn a_clean_path_has_no_problem(path in "[a/.%25;\\\\\\x000-9A-Fa-f+]{0,16}") {
            if is_clean(path.as_bytes()) {
                proptest::prop_assert_eq!(first_problem(&path), None);
            }
        }
    }
}

#[cfg(test)]
mod canonical_tests {
    use super::*;

    proptest::proptest! {
        /// The fast paths give what the reference does: `check_path` then the stray-'%'
        /// rule then `canonical_path`.
        #[test]
        fn canonicalise_is_check_then_canonical(path in "[a-z/.%;+~:@A-F0-9 é]{0,16}") {
            let reference = check_path(&path).map(|()| {
                if has_stray_percent(&path) {
                    path.clone()
                } else {
                    canonical_path(&path).into_owned()
                }
            });
            proptest::prop_assert_eq!(
                canonicalise(&path).map(Cow::into_owned).map_err(|e| e.to_string()),
                reference.map_err(|e| e.to_string())
            );
        }

        #[test]
        fn the_literal_table_is_the_rule(b in 0u8..=255) {
            let rule = b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,=:@".contains(&b);
            proptest::prop_assert_eq!(LITERAL[usize::from(b)], rule);
        }
    }
}
