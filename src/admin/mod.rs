//! The admin listener (a separate address, never the public port): health,
//! readiness, Prometheus metrics and cache administration.
//!
//! - `GET /healthz` — 200 while the process serves.
//! - `GET /readyz` — 200 while an upstream is configured (panic mode keeps sending to
//!   ejected ones, so a failing upstream does not make the gateway unready); 503 with a
//!   JSON reason while draining.
//! - `GET /metrics` — Prometheus text format 0.0.4, or OpenMetrics when `Accept` asks for it.
//! - `GET /cache/stats`, `DELETE /cache`, `DELETE /cache/anonymous/{contact_key}`
//!   (tenant from `ContactCenterId`/`GroupId`); with `[cluster]` the purges reach the
//!   whole fleet, and the answer's `fleet` says whether they did.
//! - `GET /openapi/csgate.yaml`, `GET /openapi/admin.yaml` — the OpenAPI documents of
//!   the public and the admin listener, built into the binary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::cluster::FleetPurge;
use crate::error::{error_body, GatewayError};
use crate::httputil::{full, json_content_type};
use crate::metrics::Format;
use crate::pipeline::Gateway;
use crate::query::params;
use crate::server::Body;

pub mod config;
pub use config::{AdminConfig, AdminToken};

/// OpenAPI 3.1 document of the public listener.
pub const OPENAPI_CSGATE: &str = include_str!("../../openapi/csgate.yaml");
/// OpenAPI 3.1 document of this listener.
pub const OPENAPI_ADMIN: &str = include_str!("../../openapi/admin.yaml");

/// Set when shutdown begins; readiness then answers 503.
#[derive(Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Who may use the admin listener: `[admin] token_file` and `metrics_open`.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub token: Option<AdminToken>,
    pub metrics_open: bool,
}

impl Access {
    pub fn from_config(config: &AdminConfig) -> Access {
        Access {
            token: config.token.clone(),
            metrics_open: config.metrics_open,
        }
    }

    /// May this request reach `path`? The probes always; `/metrics` while
    /// `metrics_open`; everything else with `Authorization: Bearer <token>` when a token
    /// is configured.
    fn allows(&self, path: &str, headers: &http::HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        if matches!(path, "/healthz" | "/readyz") || (path == "/metrics" && self.metrics_open) {
            return true;
        }
        headers
            .get(header::AUTHORIZATION)
            .and_then(|value| bearer(value.as_bytes()))
            .is_some_and(|presented| token.matches(presented))
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme without case, RFC 6750).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Serves one admin request.
pub async fn handle(
    gateway: Gateway,
    draining: Draining,
    access: Access,
    request: Request<Incoming>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    if !access.allows(&path, request.headers()) {
        let mut response = GatewayError::Unauthorized.into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"csgate-admin\""),
        );
        return response;
    }
    match (method.clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/healthz") => match gateway.cluster() {
            // The fleet is reported, never a reason to fail: Redis is an accelerator.
            Some(cluster) => json(
                StatusCode::OK,
                serde_json::json!({"status": "ok", "cluster": cluster.health()}).to_string(),
            ),
            None => json(StatusCode::OK, r#"{"status":"ok"}"#),
        },
        (Method::GET | Method::HEAD, "/readyz") => readiness(&gateway, &draining),
        (Method::GET | Method::HEAD, "/metrics") => {
            let accept = request.headers().get(header::ACCEPT);
            let format = Format::negotiate(accept.and_then(|v| v.to_str().ok()));
            metrics(&gateway, format).await
        }
        (Method::GET | Method::HEAD, "/openapi/csgate.yaml") => yaml(OPENAPI_CSGATE),
        (Method::GET | Method::HEAD, "/openapi/admin.yaml") => yaml(OPENAPI_ADMIN),
        (Method::GET | Method::HEAD, "/cache/stats") => match gateway.cache() {
            Some(cache) => json(StatusCode::OK, cache.stats().await.to_string()),
            None => cache_disabled(),
        },
        (Method::DELETE, "/cache") => match gateway.cache() {
            Some(cache) => {
                // Fleet first, as for a write: shared tier, bus, then this replica.
                let fleet = match gateway.cluster() {
                    Some(cluster) => Some(cluster.purge_all().await),
                    None => None,
                };
                cache.purge_all().await;
                tracing::info!("admin: cache purged");
                purged(serde_json::json!("all"), fleet)
            }
            None => cache_disabled(),
        },
        (Method::DELETE, p) if p.starts_with("/cache/anonymous/") => {
            let raw = &p["/cache/anonymous/".len()..];
            let key = match params::decode_path_param("contact_key", raw, usize::MAX) {
                Ok(key) => key,
                Err(e) => return GatewayError::InvalidParameter(e.to_string()).into_response(),
            };
            // The tenant as the public listener's `admit` reads it.
            let tenant = match crate::identity::Tenant::from_headers(request.headers(), usize::MAX)
            {
                Ok(tenant) => tenant,
                Err(e) => return GatewayError::InvalidHeader(e.to_string()).into_response(),
            };
            match gateway.cache() {
                Some(cache) => {
                    let fleet = match gateway.cluster() {
                        Some(cluster) => Some(cluster.purge_contact(&tenant, &key).await),
                        None => None,
                    };
                    let key = crate::identity::ContactKey::new(&key);
                    let count = cache.purge_contact(tenant, key).await;
                    purged(count.into(), fleet)
                }
                None => cache_disabled(),
            }
        }
        (
            _,
            "/healthz"
            | "/readyz"
            | "/metrics"
            | "/cache/stats"
            | "/openapi/csgate.yaml"
            | "/openapi/admin.yaml",
        ) => GatewayError::MethodNotAllowed {
            method: method.to_string(),
            allow: "GET, HEAD",
        }
        .into_response(),
        _ => GatewayError::NotFound(format!("no admin resource at {path}")).into_response(),
    }
}

/// The answer of a purge: what this replica dropped, and with `[cluster]`, what the
/// fleet was told.
fn purged(local: serde_json::Value, fleet: Option<FleetPurge>) -> Response<Body> {
    let mut body = serde_json::json!({ "purged": local });
    if let Some(fleet) = fleet {
        body["fleet"] = serde_json::to_value(fleet).expect("FleetPurge serialises to JSON");
    }
    json(StatusCode::OK, body.to_string())
}

fn readiness(gateway: &Gateway, draining: &Draining) -> Response<Body> {
    if draining.is_draining() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"draining","reason":"shutting down"}"#,
        );
    }
    if !gateway.upstreams().takes_traffic() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"unavailable","reason":"no healthy upstream"}"#,
        );
    }
    json(StatusCode::OK, r#"{"status":"ready"}"#)
}

async fn metrics(gateway: &Gateway, format: Format) -> Response<Body> {
    let upstreams = gateway.upstreams();
    for target in upstreams.targets() {
        gateway
            .metrics()
            .set_upstream_healthy(&target.label, upstreams.is_healthy(target));
    }
    gateway.metrics().set_upstream_panic(upstreams.in_panic());
    if let Some(cache) = gateway.cache() {
        cache.size().await;
    }
    let mut response = Response::new(full(gateway.metrics().encode(format)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}

/// RFC 9512 media type.
fn yaml(document: &'static str) -> Response<Body> {
    let mut response = Response::new(full(document));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    response
}

fn cache_disabled() -> Response<Body> {
    let mut response = Response::new(full(error_body(
        "the cache is disabled ([cache] enabled = false)",
        "NotFound",
    )));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, json_content_type());
    response
}

fn json(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, json_content_type());
    response
}
