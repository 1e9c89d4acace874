//! Route matching for the public listener: the six Query Services routes, Query
//! Service by ID, and everything else under `/genesys/1/cs` (proxied transparently).
//!
//! Matching works on the raw (still percent-encoded) path, so an encoded `/` inside a
//! contact key cannot change the route; path parameters are decoded and validated by
//! the pipeline's validate stage. `/services/anonymous/...` is matched before
//! `/services/{service_id}`.

use http::Method;

use crate::error::GatewayError;
use crate::query::Lifecycle;

/// The public API prefix clients use (as on GMS).
pub const PUBLIC_PREFIX: &str = "/genesys/1/cs";

/// Methods the read-only routes allow.
pub const READ_METHODS: &str = "GET, HEAD";

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
    for segment in trimmed.split('/').skip(1).take(slots.len()) {
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
    fn path_parameters_stay_raw() {
        let r = route(
            &Method::GET,
            "/genesys/1/cs/services/anonymous/%2B1%20408%2F832/active",
        )
        .expect("matches");
        assert_eq!(
            r,
            Route::QueryServices {
                owner: PathOwner::Anonymous {
                    contact_key: "%2B1%20408%2F832"
                },
                lifecycle: Lifecycle::Active
            }
        );
    }
}
