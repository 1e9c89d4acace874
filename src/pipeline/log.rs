//! Stage `log`: the access line and the request metric for every request, and the
//! one error line for failures that are not the client's.

use http::StatusCode;

use super::{Exchange, Gateway};
use crate::cache::CacheOutcome;
use crate::error::{Blame, GatewayError};

impl Gateway {
    pub(super) fn log(&self, exchange: &Exchange, status: StatusCode) {
        let total = exchange.started.elapsed();
        let cache = exchange.cache.as_ref().map(CacheOutcome::label);
        self.inner
            .metrics
            .observe_request(exchange.route, &exchange.method, status, total);
        tracing::info!(
            target: "csgate::access",
            request_id = exchange.id.to_str().unwrap_or("-"),
            method = %exchange.method,
            route = exchange.route,
            status = status.as_u16(),
            cache = cache.unwrap_or("-"),
            owner = exchange
                .owner
                .as_deref()
                .map_or_else(|| "-".to_owned(), |o| self.inner.settings.redactor.personal(o)),
            upstream = exchange.upstream.as_deref().unwrap_or("-"),
            upstream_ms = exchange.upstream_time.map_or(-1.0, |d| d.as_secs_f64() * 1000.0),
            total_ms = total.as_secs_f64() * 1000.0,
        );
    }

    /// Client mistakes are not logged as errors; ours and the upstream's are, once.
    pub(super) fn log_error(&self, error: &GatewayError, exchange: &Exchange) {
        match error.blame() {
            Blame::Downstream => {}
            Blame::Upstream => tracing::warn!(
                request_id = exchange.id.to_str().unwrap_or("-"),
                route = exchange.route,
                upstream = exchange.upstream.as_deref().unwrap_or("-"),
                error = %error,
                "upstream failure"
            ),
            Blame::Internal => {
                if let GatewayError::Internal(detail) = error {
                    tracing::error!(request_id = exchange.id.to_str().unwrap_or("-"), route = exchange.route, %detail, "internal error");
                }
            }
        }
    }
}
