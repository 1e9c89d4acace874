//! Stage `respond`: the response heads the pipeline builds (JSON answers, passed-through
//! upstream errors, the gateway's own errors) and the headers every answer carries.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response};

use super::{Exchange, Gateway};
use crate::error::GatewayError;
use crate::httputil::{self, empty, full, json_content_type};
use crate::server::Body;
use crate::upstream::Fetched;

impl Gateway {
    /// Turns a stage's result into the response, with `X-Request-Id` (the upstream's
    /// when it sent one, else csgate's), `Via` on answers that came through csgate
    /// (not on the errors it makes itself) and, on anonymous routes, `Cache-Status`.
    /// Errors are logged here, once.
    pub(super) fn respond(
        &self,
        result: Result<Response<Body>, GatewayError>,
        exchange: &Exchange,
    ) -> Response<Body> {
        let mut response = match result {
            Ok(mut response) => {
                if let Some(entries) = &self.inner.settings.via_entries {
                    let entry = entries.get(response.version());
                    httputil::append_value_to_list(response.headers_mut(), &header::VIA, entry);
                }
                response
            }
            Err(error) => {
                self.log_error(&error, exchange);
                error.into_response()
            }
        };
        response
            .headers_mut()
            .entry(&httputil::X_REQUEST_ID)
            .or_insert_with(|| exchange.id.clone());
        if let Some(outcome) = &exchange.cache {
            response
                .headers_mut()
                .insert(&httputil::CACHE_STATUS, outcome.header_value());
        }
        response
    }
}

/// The headers a JSON answer ends with: `Content-Type`, `Content-Length`, `Age`,
/// `Cache-Control`, `Via`, `X-Request-Id`, `Cache-Status`. Sized once: a map grown
/// from empty reallocates at the seventh (~700 instructions per hit, callgrind).
const JSON_ANSWER_HEADERS: usize = 7;

/// `200` JSON; for HEAD the same headers and no body.
pub fn respond_json(method: &Method, body: Bytes, age: Option<Duration>) -> Response<Body> {
    let length = body.len();
    let mut response = Response::new(if *method == Method::HEAD {
        empty()
    } else {
        full(body)
    });
    *response.headers_mut() = HeaderMap::with_capacity(JSON_ANSWER_HEADERS);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, json_content_type());
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Some(age) = age {
        headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
    }
    response
}

/// A non-2xx upstream answer, passed through with its status, headers and body.
pub(super) fn upstream_error(method: &Method, fetched: Fetched) -> Response<Body> {
    let mut headers = fetched.headers;
    httputil::strip_hop_by_hop(&mut headers);
    let mut response = Response::new(if *method == Method::HEAD {
        empty()
    } else {
        full(fetched.body)
    });
    *response.status_mut() = fetched.status;
    *response.headers_mut() = headers;
    response
}
