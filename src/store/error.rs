//! The store's errors and the one place that turns them into responses.
//!
//! [`StoreError`] is a failure of the storage itself (never the client's fault: `500`
//! with a generic message, logged once here). [`ApiError`] is everything a request can
//! end with; it follows the GMS error shape `{"message", "exception"}`, including GMS's
//! habit of answering an unknown id with `400` and a `NotFoundException`.

use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::server::Body;

const NOT_FOUND_EXCEPTION: &str = "com.genesyslab.gms.cs.exceptions.NotFoundException";
const VALIDATION_EXCEPTION: &str = "com.genesyslab.gms.cs.exceptions.ValidationException";

/// A failure of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("creating the database directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the database schema is at version {found}; this build knows versions up to {known}")]
    SchemaTooNew { found: i64, known: usize },
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    #[error("a blocking database task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What kind of object an id or name referred to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    Service,
    State,
    Task,
    BusinessAttribute,
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Entity::Service => "service",
            Entity::State => "state",
            Entity::Task => "task",
            Entity::BusinessAttribute => "business attribute",
        })
    }
}

/// Everything a request can fail with. Display is the client-facing `message`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Unknown id, or an id of another tenant (indistinguishable on purpose).
    #[error("There are no {kind} found for : {id}")]
    NotFound { kind: Entity, id: String },
    /// A documented body field with a wrong type or value.
    #[error("field '{field}': {reason}")]
    Invalid { field: String, reason: String },
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{kind} {id} is already completed")]
    AlreadyCompleted { kind: Entity, id: i64 },
    /// A query or path parameter refused by `query::params` or the state/task list parser.
    #[error("{0}")]
    InvalidParameter(String),
    #[error("no such resource: {0}")]
    NoRoute(String),
    #[error("method {method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: String },
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body could not be read")]
    BodyRead,
    #[error("Invalid tenant specified")]
    InvalidTenant,
    #[error(transparent)]
    Internal(#[from] StoreError),
}

impl From<rusqlite::Error> for ApiError {
    fn from(error: rusqlite::Error) -> ApiError {
        ApiError::Internal(StoreError::Sqlite(error))
    }
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(kind: Entity, id: impl fmt::Display) -> ApiError {
        ApiError::NotFound {
            kind,
            id: id.to_string(),
        }
    }

    /// Status, `exception` and (for 405) the `Allow` value. Exhaustive on purpose: a new
    /// variant must decide how it is answered.
    fn classify(&self) -> (StatusCode, &'static str, Option<&str>) {
        match self {
            ApiError::NotFound { .. } => (StatusCode::BAD_REQUEST, NOT_FOUND_EXCEPTION, None),
            ApiError::Invalid { .. }
            | ApiError::MalformedJson(_)
            | ApiError::AlreadyCompleted { .. } => {
                (StatusCode::BAD_REQUEST, VALIDATION_EXCEPTION, None)
            }
            ApiError::InvalidParameter(_) => (StatusCode::BAD_REQUEST, "InvalidParameter", None),
            ApiError::InvalidTenant => (StatusCode::BAD_REQUEST, "InvalidTenant", None),
            ApiError::BodyRead => (StatusCode::BAD_REQUEST, "BadRequest", None),
            ApiError::NoRoute(_) => (StatusCode::NOT_FOUND, "NotFound", None),
            ApiError::MethodNotAllowed { allow, .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                Some(allow.as_str()),
            ),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", None),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError", None),
        }
    }

    /// The response for this error; internal errors are logged here, once.
    pub fn into_response(self) -> Response<Body> {
        let (status, exception, allow) = self.classify();
        let message = match &self {
            ApiError::Internal(error) => {
                tracing::error!(%error, "store request failed");
                "internal error in the context services store".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = json_response(
            status,
            &json!({ "message": message, "exception": exception }),
        );
        if let Some(allow) = allow.and_then(|a| HeaderValue::from_str(a).ok()) {
            response.headers_mut().insert(ALLOW, allow);
        }
        response
    }
}

/// A JSON body with `status`.
pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("a serde_json::Value always serialises");
    let mut response = Response::new(full(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An empty body with `status`.
pub fn empty_response(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_has_its_status_and_exception() {
        let cases: Vec<(ApiError, u16, &str, &str)> = vec![
            (
                ApiError::not_found(Entity::Service, 42),
                400,
                NOT_FOUND_EXCEPTION,
                "There are no service found for : 42",
            ),
            (
                ApiError::invalid("session_id", "longer than 32 characters"),
                400,
                VALIDATION_EXCEPTION,
                "field 'session_id': longer than 32 characters",
            ),
            (
                ApiError::AlreadyCompleted {
                    kind: Entity::State,
                    id: 3,
                },
                400,
                VALIDATION_EXCEPTION,
                "state 3 is already completed",
            ),
            (
                ApiError::NoRoute("/x".into()),
                404,
                "NotFound",
                "no such resource: /x",
            ),
            (
                ApiError::TooLarge(10),
                413,
                "PayloadTooLarge",
                "the request body is larger than 10 bytes",
            ),
            (
                ApiError::Internal(StoreError::Corrupt("secret detail".into())),
                500,
                "InternalError",
                "internal error in the context services store",
            ),
        ];
        for (error, status, exception, message) in cases {
            let (s, e, _) = error.classify();
            assert_eq!((s.as_u16(), e), (status, exception), "{error:?}");
            let shown = match &error {
                ApiError::Internal(_) => "internal error in the context services store".into(),
                other => other.to_string(),
            };
            assert_eq!(shown, message);
        }
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let response = ApiError::MethodNotAllowed {
            method: "GET".into(),
            allow: "POST".into(),
        }
        .into_response();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[ALLOW], "POST");
    }
}
