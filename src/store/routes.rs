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

/// One segment of a [`TABLE`] pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seg {
    /// This word exactly.
    Word(&'static str),
    /// Any segment, kept raw for the handler.
    Param,
    /// `states` or `tasks`.
    Items,
    /// `active` or `completed`.
    Life,
}

use Seg::{Items, Life, Param, Word};

/// What a matched path gives the route builders.
struct Captures<'a> {
    params: [&'a str; 3],
    /// The `Items` segment's kind (`State` when the pattern has none).
    kind: Kind,
    /// The `Life` segment's lifecycle (`All` when the pattern has none).
    lifecycle: Lifecycle,
}

impl Captures<'_> {
    fn param(&self, i: usize) -> String {
        self.params[i].to_owned()
    }
}

type Build = fn(&Captures) -> Route;

/// The methods a pattern allows, each with the route it makes (none: a 404).
type Methods = &'static [(Method, Build)];

/// The store's paths after [`PREFIX`], first match wins; the first pattern a path
/// matches decides its methods (others 405). The fixed words (`anonymous`, `start`,
/// `transition`, `active`, `completed`) come before the parameters they could be taken
/// for, and a pattern without methods claims its paths for a 404.
static TABLE: &[(&[Seg], Methods)] = &[
    (
        &[Word("services"), Word("start")],
        &[(Method::POST, |_| Route::StartService)],
    ),
    (
        &[Word("services"), Word("anonymous"), Param],
        &[(Method::GET, anonymous)],
    ),
    (
        &[Word("services"), Word("anonymous"), Param, Life],
        &[(Method::GET, anonymous)],
    ),
    (&[Word("services"), Word("anonymous"), Param, Param], &[]),
    (
        &[Word("customers"), Param, Word("services")],
        &[(Method::GET, customer)],
    ),
    (
        &[Word("customers"), Param, Word("services"), Life],
        &[(Method::GET, customer)],
    ),
    (
        &[Word("customers"), Param, Word("services"), Param],
        &[(Method::POST, associate)],
    ),
    (
        &[Word("services"), Param],
        &[
            (Method::GET, |c| Route::GetService {
                service: c.param(0),
            }),
            (Method::PUT, |c| Route::UpdateService {
                service: c.param(0),
            }),
            (Method::DELETE, |c| Route::DeleteService {
                service: c.param(0),
            }),
        ],
    ),
    (
        &[Word("services"), Param, Word("end")],
        &[(Method::POST, |c| Route::CompleteService {
            service: c.param(0),
        })],
    ),
    (
        &[Word("services"), Param, Word("extensions"), Param],
        &[(Method::PUT, |c| service_extension(c, false))],
    ),
    (
        &[
            Word("services"),
            Param,
            Word("extensions"),
            Param,
            Word("merge"),
        ],
        &[(Method::PUT, |c| service_extension(c, true))],
    ),
    (
        &[Word("services"), Param, Items],
        &[(Method::GET, list_items)],
    ),
    (
        &[Word("services"), Param, Items, Word("start")],
        &[(Method::POST, start_item)],
    ),
    (
        &[Word("services"), Param, Word("states"), Word("transition")],
        &[(Method::POST, |c| Route::Transition {
            service: c.param(0),
        })],
    ),
    (
        &[Word("services"), Param, Items, Life],
        &[(Method::GET, list_items)],
    ),
    (
        &[Word("services"), Param, Items, Param],
        &[(Method::GET, get_item)],
    ),
    (
        &[Word("services"), Param, Items, Param, Word("end")],
        &[(Method::POST, end_item)],
    ),
    (
        &[
            Word("services"),
            Param,
            Items,
            Param,
            Word("extensions"),
            Param,
        ],
        &[(Method::PUT, |c| item_extension(c, false))],
    ),
    (
        &[
            Word("services"),
            Param,
            Items,
            Param,
            Word("extensions"),
            Param,
            Word("merge"),
        ],
        &[(Method::PUT, |c| item_extension(c, true))],
    ),
    (
        &[Word("metadata"), Word("business-attributes")],
        &[(Method::GET, |_| Route::BusinessAttributes { name: None })],
    ),
    (
        &[Word("metadata"), Word("business-attributes"), Param],
        &[(Method::GET, |c| Route::BusinessAttributes {
            name: Some(c.param(0)),
        })],
    ),
    (
        &[Word("maintenance"), Word("purge")],
        &[(Method::POST, |_| Route::Purge)],
    ),
];

fn anonymous(c: &Captures) -> Route {
    Route::QueryServices {
        owner: OwnerSegment::Anonymous(c.param(0)),
        lifecycle: c.lifecycle,
    }
}

fn customer(c: &Captures) -> Route {
    Route::QueryServices {
        owner: OwnerSegment::Customer(c.param(0)),
        lifecycle: c.lifecycle,
    }
}

fn associate(c: &Captures) -> Route {
    Route::Associate {
        customer_id: c.param(0),
        service: c.param(1),
    }
}

fn service_extension(c: &Captures, merge: bool) -> Route {
    Route::ServiceExtension {
        service: c.param(0),
        name: c.param(1),
        merge,
    }
}

fn list_items(c: &Captures) -> Route {
    Route::ListItems {
        service: c.param(0),
        kind: c.kind,
        lifecycle: c.lifecycle,
    }
}

fn start_item(c: &Captures) -> Route {
    Route::StartItem {
        service: c.param(0),
        kind: c.kind,
    }
}

fn get_item(c: &Captures) -> Route {
    Route::GetItem {
        service: c.param(0),
        kind: c.kind,
        item: c.param(1),
    }
}

fn end_item(c: &Captures) -> Route {
    Route::EndItem {
        service: c.param(0),
        kind: c.kind,
        item: c.param(1),
    }
}

fn item_extension(c: &Captures, merge: bool) -> Route {
    Route::ItemExtension {
        service: c.param(0),
        kind: c.kind,
        item: c.param(1),
        name: c.param(2),
        merge,
    }
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
    let (captures, methods) = TABLE
        .iter()
        .find_map(|(pattern, methods)| Some((captures(pattern, &segments)?, *methods)))
        .filter(|(_, methods)| !methods.is_empty())
        .ok_or_else(no_route)?;
    match methods.iter().find(|(m, _)| m == method) {
        Some((_, build)) => Ok(build(&captures)),
        None => Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            allow: methods
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The path's parameters, kind and lifecycle if it fits `pattern` segment for segment.
fn captures<'a>(pattern: &[Seg], segments: &[&'a str]) -> Option<Captures<'a>> {
    if pattern.len() != segments.len() {
        return None;
    }
    let mut out = Captures {
        params: [""; 3],
        kind: Kind::State,
        lifecycle: Lifecycle::All,
    };
    let mut params = out.params.iter_mut();
    for (seg, segment) in pattern.iter().zip(segments) {
        match seg {
            Word(word) if word == segment => {}
            Word(_) => return None,
            Param => *params.next()? = segment,
            Items => out.kind = kind(segment)?,
            Life => out.lifecycle = lifecycle(segment)?,
        }
    }
    Some(out)
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
    ("/services/{service_id}/states", &[Method::GET]),
    ("/services/{service_id}/tasks", &[Method::GET]),
    ("/services/{service_id}/states/start", &[Method::POST]),
    ("/services/{service_id}/tasks/start", &[Method::POST]),
    ("/services/{service_id}/states/transition", &[Method::POST]),
    ("/services/{service_id}/states/active", &[Method::GET]),
    ("/services/{service_id}/tasks/active", &[Method::GET]),
    ("/services/{service_id}/states/completed", &[Method::GET]),
    ("/services/{service_id}/tasks/completed", &[Method::GET]),
    ("/services/{service_id}/states/{state_id}", &[Method::GET]),
    ("/services/{service_id}/tasks/{task_id}", &[Method::GET]),
    (
        "/services/{service_id}/states/{state_id}/end",
        &[Method::POST],
    ),
    (
        "/services/{service_id}/tasks/{task_id}/end",
        &[Method::POST],
    ),
    (
        "/services/{service_id}/states/{state_id}/extensions/{name}",
        &[Method::PUT],
    ),
    (
        "/services/{service_id}/tasks/{task_id}/extensions/{name}",
        &[Method::PUT],
    ),
    (
        "/services/{service_id}/states/{state_id}/extensions/{name}/merge",
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

    /// Every method on every template (parameters filled with `7`) resolves exactly when
    /// [`ROUTES`] lists it, and a 405 allows what [`ROUTES`] lists.
    #[test]
    fn the_route_table_is_what_the_router_resolves() {
        use Method as M;
        let methods = [M::GET, M::HEAD, M::POST, M::PUT, M::DELETE, M::PATCH];
        for (template, allowed) in ROUTES {
            let filled: Vec<&str> = template
                .split('/')
                .map(|seg| if seg.starts_with('{') { "7" } else { seg })
                .collect();
            let path = format!("{PREFIX}{}", filled.join("/"));
            let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            for method in &methods {
                match resolve(method, &path) {
                    Ok(_) => assert!(allowed.contains(method), "{method} {template} resolves"),
                    Err(ApiError::MethodNotAllowed { allow: got, .. }) => {
                        assert!(!allowed.contains(method), "{method} {template}: 405");
                        assert_eq!(got, allow.join(", "), "{template}");
                    }
                    Err(other) => panic!("{method} {template}: {other}"),
                }
            }
        }
    }
}
