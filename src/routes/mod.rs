//! The one table of the API's paths: every request on the public listener is
//! classified here, reads and writes alike, from the same canonical path that is
//! forwarded (percent-escapes of unreserved characters decoded, so `/services/%73tart`
//! is `/services/start` to csgate as it is to the upstream).
//!
//! [`route`] takes a path [`canonicalise`] returned, and finds the first entry of
//! the table (`table`) that matches: the six Query Services routes and Query Service by ID
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
//!
//! - `table`: the path table and how a path's segments meet a pattern;
//! - `path`: which spellings are refused, and the canonical form.

mod path;
mod table;
#[cfg(test)]
mod tests;

use http::Method;

use crate::error::GatewayError;
use crate::query::Lifecycle;
use path::has_stray_percent;
pub use path::{canonical_path, canonicalise, check_path};
use table::{match_pattern, Kind, Match, Segments, TABLE};

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
    let split = Segments::of(rest.strip_suffix('/').unwrap_or(rest));
    let segments = split.named();
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
        if !kind.applies(method) {
            continue;
        }
        let params = match match_pattern(pattern, segments, split.more()) {
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
        if !matches!(kind, Kind::Query { .. }) {
            refuse_stray_percent()?;
        }
        return matched(*kind, method, rest, |n| segments[params[n]]);
    }
    refuse_stray_percent()?;
    Ok(Route::Proxy { rest, write: None })
}

/// The route a [`TABLE`](table::TABLE) entry of `kind` makes of a request that matched
/// its pattern; `param(n)` is the path's `n`th parameter.
fn matched<'a>(
    kind: Kind,
    method: &Method,
    rest: &'a str,
    param: impl Fn(usize) -> &'a str,
) -> Result<Route<'a>, GatewayError> {
    let pass = Route::Proxy { rest, write: None };
    let write = |write| {
        Ok(Route::Proxy {
            rest,
            write: Some(write),
        })
    };
    match kind {
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
        Kind::Start => write(Write::Start),
        Kind::ServiceWrite { id } => write(Write::Service {
            service_id: param(id),
        }),
        Kind::TenantWrite => write(Write::Tenant),
        Kind::Pass => Ok(pass),
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
