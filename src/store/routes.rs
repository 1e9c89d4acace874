//! Method + path → [`Route`]. Path segments are kept raw (still percent-encoded); the
//! handler decodes and validates them. `/services/anonymous/...` and the fixed words
//! (`start`, `transition`, `active`, `completed`) are matched before ids.

use hyper::Method;

use super::error::ApiError;
use super::model::Kind;
use crate::query::Lifecycle;

/// The store serves the API where GMS does, which is the gateway's default upstream
/// prefix.
pub const PREFIX: &str = crate::settings::defaults::PATH_PREFIX;

/// Whose services a Query Services route lists (raw path segment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerSegment {
    Anonymous(String),
    Customer(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    StartService,
    QueryServices {
        owner: OwnerSegment,
        lifecycle: Lifecycle,
    },
    Associate {
        customer_id: String,
        service: String,
    },
    CompleteService {
        service: String,
    },
    GetService {
        service: String,
    },
    UpdateService {
        service: String,
    },
    DeleteService {
        service: String,
    },
    ServiceExtension {
        service: String,
        name: String,
        merge: bool,
    },
    StartItem {
        service: String,
        kind: Kind,
    },
    Transition {
        service: String,
    },
    EndItem {
        service: String,
        kind: Kind,
        item: String,
    },
    ListItems {
        service: String,
        kind: Kind,
        lifecycle: Lifecycle,
    },
    GetItem {
        service: String,
        kind: Kind,
        item: String,
    },
    ItemExtension {
        service: String,
        kind: Kind,
        item: String,
        name: String,
        merge: bool,
    },
    BusinessAttributes {
        name: Option<String>,
    },
    Purge,
}

/// Resolves a request; 404 for an unknown path, 405 (with the allowed methods) for a
/// known path with the wrong method.
pub fn resolve(method: &Method, path: &str) -> Result<Route, ApiError> {
    let no_route = || ApiError::NoRoute(path.to_owned());
    let rest = path.strip_prefix(PREFIX).ok_or_else(no_route)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let rest = rest.strip_prefix('/').ok_or_else(no_route)?;
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(no_route());
    }
    let candidates = candidates(&segments).ok_or_else(no_route)?;
    let allow = candidates
        .iter()
        .map(|(m, _)| m.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    candidates
        .into_iter()
        .find(|(m, _)| m == method)
        .map(|(_, route)| route)
        .ok_or_else(|| ApiError::MethodNotAllowed {
            method: method.to_string(),
            allow,
        })
}

fn lifecycle(word: &str) -> Option<Lifecycle> {
    match word {
        "active" => Some(Lifecycle::Active),
        "completed" => Some(Lifecycle::Completed),
        _ => None,
    }
}

fn kind(word: &str) -> Option<Kind> {
    match word {
        "states" => Some(Kind::State),
        "tasks" => Some(Kind::Task),
        _ => None,
    }
}

/// Every (method, route) a path shape accepts.
fn candidates(segments: &[&str]) -> Option<Vec<(Method, Route)>> {
    let s = |x: &str| x.to_owned();
    let only = |method: Method, route: Route| Some(vec![(method, route)]);
    match segments {
        ["services", "start"] => only(Method::POST, Route::StartService),
        ["services", "anonymous", key] => only(
            Method::GET,
            Route::QueryServices {
                owner: OwnerSegment::Anonymous(s(key)),
                lifecycle: Lifecycle::All,
            },
        ),
        ["services", "anonymous", key, word] => only(
            Method::GET,
            Route::QueryServices {
                owner: OwnerSegment::Anonymous(s(key)),
                lifecycle: lifecycle(word)?,
            },
        ),
        ["customers", customer, "services"] => only(
            Method::GET,
            Route::QueryServices {
                owner: OwnerSegment::Customer(s(customer)),
                lifecycle: Lifecycle::All,
            },
        ),
        ["customers", customer, "services", word] => match lifecycle(word) {
            Some(lifecycle) => only(
                Method::GET,
                Route::QueryServices {
                    owner: OwnerSegment::Customer(s(customer)),
                    lifecycle,
                },
            ),
            None => only(
                Method::POST,
                Route::Associate {
                    customer_id: s(customer),
                    service: s(word),
                },
            ),
        },
        ["services", id] => Some(vec![
            (Method::GET, Route::GetService { service: s(id) }),
            (Method::PUT, Route::UpdateService { service: s(id) }),
            (Method::DELETE, Route::DeleteService { service: s(id) }),
        ]),
        ["services", id, "end"] => only(Method::POST, Route::CompleteService { service: s(id) }),
        ["services", id, "extensions", name] => only(
            Method::PUT,
            Route::ServiceExtension {
                service: s(id),
                name: s(name),
                merge: false,
            },
        ),
        ["services", id, "extensions", name, "merge"] => only(
            Method::PUT,
            Route::ServiceExtension {
                service: s(id),
                name: s(name),
                merge: true,
            },
        ),
        ["services", id, items] => only(
            Method::GET,
            Route::ListItems {
                service: s(id),
                kind: kind(items)?,
                lifecycle: Lifecycle::All,
            },
        ),
        ["services", id, items, "start"] => only(
            Method::POST,
            Route::StartItem {
                service: s(id),
                kind: kind(items)?,
            },
        ),
        ["services", id, "states", "transition"] => {
            only(Method::POST, Route::Transition { service: s(id) })
        }
        ["services", id, items, word] => match lifecycle(word) {
            Some(lifecycle) => only(
                Method::GET,
                Route::ListItems {
                    service: s(id),
                    kind: kind(items)?,
                    lifecycle,
                },
            ),
            None => only(
                Method::GET,
                Route::GetItem {
                    service: s(id),
                    kind: kind(items)?,
                    item: s(word),
                },
            ),
        },
        ["services", id, items, item, "end"] => only(
            Method::POST,
            Route::EndItem {
                service: s(id),
                kind: kind(items)?,
                item: s(item),
            },
        ),
        ["services", id, items, item, "extensions", name] => only(
            Method::PUT,
            Route::ItemExtension {
                service: s(id),
                kind: kind(items)?,
                item: s(item),
                name: s(name),
                merge: false,
            },
        ),
        ["services", id, items, item, "extensions", name, "merge"] => only(
            Method::PUT,
            Route::ItemExtension {
                service: s(id),
                kind: kind(items)?,
                item: s(item),
                name: s(name),
                merge: true,
            },
        ),
        ["metadata", "business-attributes"] => {
            only(Method::GET, Route::BusinessAttributes { name: None })
        }
        ["metadata", "business-attributes", name] => only(
            Method::GET,
            Route::BusinessAttributes {
                name: Some(s(name)),
            },
        ),
        ["maintenance", "purge"] => only(Method::POST, Route::Purge),
        _ => None,
    }
}

#[cfg(test)]
mod tests;

/// Every route of the store as an OpenAPI path template relative to [`PREFIX`], with the
/// methods it allows (its `Allow` on a 405). `tests/openapi.rs` holds
/// `openapi/csgate.yaml` to this table; the test below holds [`resolve`] to it.
pub const ROUTES: &[(&str, &[Method])] = &[
    ("/services/start", &[Method::POST]),
    ("/services/anonymous/{contact_key}", &[Method::GET]),
    ("/services/anonymous/{contact_key}/active", &[Method::GET]),
    (
        "/services/anonymous/{contact_key}/completed",
        &[Method::GET],
    ),
    ("/customers/{customer_id}/services", &[Method::GET]),
    ("/customers/{customer_id}/services/active", &[Method::GET]),
    (
        "/customers/{customer_id}/services/completed",
        &[Method::GET],
    ),
    (
        "/customers/{customer_id}/services/{service_id}",
        &[Method::POST],
    ),
    (
        "/services/{service_id}",
        &[Method::GET, Method::PUT, Method::DELETE],
    ),
    ("/services/{service_id}/end", &[Method::POST]),
    ("/services/{service_id}/extensions/{name}", &[Method::PUT]),
    (
        "/services/{service_id}/extensions/{name}/merge",
        &[Method::PUT],
    ),
    ("/services/{service_id}/states/start", &[Method::POST]),
    ("/services/{service_id}/states/transition", &[Method::POST]),
    (
        "/services/{service_id}/states/{state_id}/end",
        &[Method::POST],
    ),
    ("/services/{service_id}/states", &[Method::GET]),
    ("/services/{service_id}/states/active", &[Method::GET]),
    ("/services/{service_id}/states/completed", &[Method::GET]),
    ("/services/{service_id}/states/{state_id}", &[Method::GET]),
    (
        "/services/{service_id}/states/{state_id}/extensions/{name}",
        &[Method::PUT],
    ),
    (
        "/services/{service_id}/states/{state_id}/extensions/{name}/merge",
        &[Method::PUT],
    ),
    ("/services/{service_id}/tasks/start", &[Method::POST]),
    (
        "/services/{service_id}/tasks/{task_id}/end",
        &[Method::POST],
    ),
    ("/services/{service_id}/tasks", &[Method::GET]),
    ("/services/{service_id}/tasks/active", &[Method::GET]),
    ("/services/{service_id}/tasks/completed", &[Method::GET]),
    ("/services/{service_id}/tasks/{task_id}", &[Method::GET]),
    (
        "/services/{service_id}/tasks/{task_id}/extensions/{name}",
        &[Method::PUT],
    ),
    (
        "/services/{service_id}/tasks/{task_id}/extensions/{name}/merge",
        &[Method::PUT],
    ),
    ("/metadata/business-attributes", &[Method::GET]),
    ("/metadata/business-attributes/{name}", &[Method::GET]),
    ("/maintenance/purge", &[Method::POST]),
];

/// Whether `method` on `path` reaches an operation of the store (neither 404 nor 405).
pub fn is_routed(method: &Method, path: &str) -> bool {
    resolve(method, path).is_ok()
}

#[cfg(test)]
mod table_tests {
    use super::*;

    #[test]
    fn the_route_table_is_what_the_router_resolves() {
        let methods = [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ];
        for (pattern, allowed) in ROUTES {
            let mut path = String::from(PREFIX);
            for segment in pattern.split('/').skip(1) {
                path.push('/');
                path.push_str(if segment.starts_with('{') {
                    "7"
                } else {
                    segment
                });
            }
            let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            for method in &methods {
                match resolve(method, &path) {
                    Ok(_) => assert!(allowed.contains(method), "{method} {pattern} resolves"),
                    Err(ApiError::MethodNotAllowed { allow: got, .. }) => {
                        assert!(!allowed.contains(method), "{method} {pattern}: 405");
                        assert_eq!(got, allow.join(", "), "{pattern}");
                    }
                    Err(other) => panic!("{method} {pattern}: {other}"),
                }
            }
        }
    }
}
