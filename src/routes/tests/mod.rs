//! The router's table-driven tests: which route, or which refusal, each method and
//! path gets.

mod canonical;
mod table;

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
