//! The route table against the router, and the fast path checks against their
//! references.

use super::super::path::{first_problem, has_stray_percent, is_clean};
use super::super::table::segments;
use super::super::{route, Route, PUBLIC_PREFIX, ROUTES};
use http::Method;

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
        let path = crate::httputil::example_path(PUBLIC_PREFIX, pattern);
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
