//! Route matching for the public listener: the six Query Services routes, Query
//! Service by ID, and everything else under `/genesys/1/cs` (proxied transparently).
//!
//! Matching works on the raw (still percent-encoded) path, so an encoded `/` inside a
//! contact key cannot change the route; path parameters are decoded and validated by
//! the pipeline's validate stage. `/services/anonymous/...` is matched before
//! `/services/{service_id}`.
//!
//! Before matching, [`check_path`] refuses every path an upstream could resolve outside
//! the API prefix or read differently from csgate: dot-segments (raw or encoded, any
//! case), an encoded `/` or `\`, a backslash, NUL and `;` parameters. What is forwarded
//! is [`canonical_path`]: the same segments, escapes normalised.

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

/// Whose services a Query Services route asks for, as the raw path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathOwner<'a> {
    Anonymous { contact_key: &'a str },
    Customer { customer_id: &'a str },
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
    /// Anything else under the prefix; `rest` starts with `/` (or is empty).
    Proxy { rest: &'a str },
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

/// Matches `method` and `path` (no query). Paths outside the prefix are `NotFound`;
/// other methods on the Query Services routes are `MethodNotAllowed`.
pub fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, GatewayError> {
    if *method == Method::CONNECT {
        return Err(GatewayError::MethodNotAllowed {
            method: method.to_string(),
            allow: PROXY_METHODS,
        });
    }
    check_path(path)?;
    let rest = match path.strip_prefix(PUBLIC_PREFIX) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => {
            return Err(GatewayError::NotFound(format!(
                "no such resource; the Context Services API is served under {PUBLIC_PREFIX}/"
            )))
        }
    };
    let trimmed = rest.strip_suffix('/').unwrap_or(rest);
    // No route has more than four segments; a fifth only makes the path a proxy path
    // (every pattern below has an exact length), so five slots suffice and nothing is
    // allocated.
    let mut slots = [""; 5];
    let mut count = 0;
    for segment in segments(trimmed).skip(1).take(slots.len()) {
        slots[count] = segment;
        count += 1;
    }
    let segments = &slots[..count];

    let matched = match segments {
        ["services", "anonymous", key] => Some(query(anonymous(key), Lifecycle::All)),
        ["services", "anonymous", key, "active"] => Some(query(anonymous(key), Lifecycle::Active)),
        ["services", "anonymous", key, "completed"] => {
            Some(query(anonymous(key), Lifecycle::Completed))
        }
        // No contact key at all: the route is meant, the key is empty.
        ["services", "anonymous"] => Some(query(anonymous(""), Lifecycle::All)),
        ["customers", id, "services"] => Some(query(customer(id), Lifecycle::All)),
        ["customers", id, "services", "active"] => Some(query(customer(id), Lifecycle::Active)),
        ["customers", id, "services", "completed"] => {
            Some(query(customer(id), Lifecycle::Completed))
        }
        ["services", service_id] if *method == Method::GET && !service_id.is_empty() => {
            return Ok(Route::ServiceById { service_id });
        }
        _ => None,
    };
    match matched {
        Some(route) if *method == Method::GET || *method == Method::HEAD => Ok(route),
        Some(_) => Err(GatewayError::MethodNotAllowed {
            method: method.to_string(),
            allow: READ_METHODS,
        }),
        None => Ok(Route::Proxy { rest }),
    }
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
/// backslash, `;`, NUL, an escape of one of them or of `/`, a dot-segment).
fn is_clean(path: &[u8]) -> bool {
    let (mut dots, mut other) = (0usize, false);
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        match b {
            b'/' => {
                if !other && (dots == 1 || dots == 2) {
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

/// Two hex digits as a byte.
fn hex_pair(hex: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(hex[0])? * 16 + digit(hex[1])?) as u8)
}

/// What [`check_path`] refuses a path for: the first offending segment's problem.
fn first_problem(path: &str) -> Option<&'static str> {
    for segment in path.split('/') {
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
            let escape = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            match escape {
                // Not an escape: a literal '%' (forwarded as %25); a key with one is
                // refused by the validate stage, naming the parameter.
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

/// The path csgate forwards for a path that passed [`check_path`]: escapes of
/// unreserved characters decoded, other escapes in upper case, and any byte a path may
/// not carry literally encoded (RFC 3986 §6.2.2). Segments are never joined, split or
/// removed, so the result stays under the prefix it is appended to.
pub fn canonical_path(path: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    let literal = |b: u8| unreserved(b) || b"/!$&'()*+,=:@".contains(&b);
    let bytes = path.as_bytes();
    // The usual path needs no change: one pass says so.
    if bytes.iter().all(|&b| literal(b)) {
        return path.to_owned();
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
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(decoded) if unreserved(decoded) => out.push(char::from(decoded)),
            Some(decoded) => push_encoded(&mut out, decoded),
            None if literal(b) => out.push(char::from(b)),
            None => push_encoded(&mut out, b),
        }
        i += if escaped.is_some() { 3 } else { 1 };
    }
    out
}

fn query(owner: PathOwner<'_>, lifecycle: Lifecycle) -> Route<'_> {
    Route::QueryServices { owner, lifecycle }
}

fn anonymous(contact_key: &str) -> PathOwner<'_> {
    PathOwner::Anonymous { contact_key }
}

fn customer(customer_id: &str) -> PathOwner<'_> {
    PathOwner::Customer { customer_id }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(method: Method, path: &str) -> Result<&'static str, u16> {
        route(&method, path)
            .map(|r| r.name())
            .map_err(|e| e.status_and_kind().0.as_u16())
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
                let error = route(&method, &path).expect_err(&path);
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
            assert!(route(&Method::GET, &allowed).is_ok(), "{allowed}");
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
        ] {
            assert!(!is_clean(path.as_bytes()), "{path}");
            assert!(first_problem(path).is_some(), "{path}");
        }
        // A literal '%' is not clean, and not refused either.
        assert!(!is_clean(b"/a%zz"));
        assert_eq!(first_problem("/a%zz"), None);
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
