//! Stage `log`: the access line and the request metric for every request, and the
//! one error line for failures that are not the client's.

use std::net::{IpAddr, SocketAddr};

use http::header::HeaderMap;
use http::Response;
use hyper::body::Body as _;

use super::{Exchange, Gateway};
use crate::cache::CacheOutcome;
use crate::error::{Blame, GatewayError};
use crate::server::Body;

impl Gateway {
    /// The access line (target `csgate::access`): request id, client address (after
    /// `trusted_proxies`), method, route name, status, bytes in (the declared request
    /// length) and out (the answer's length when known before it streams), cache
    /// result, owner (hashed), upstream and its time, total time, and on failure the
    /// cause (the error kind). Unknown values are "-" (-1 for the times).
    pub(super) fn log(&self, exchange: &Exchange, response: &Response<Body>) {
        let status = response.status();
        let total = exchange.started.elapsed();
        let cache = exchange.cache.as_ref().map(CacheOutcome::label);
        self.inner
            .metrics
            .observe_request(exchange.route, &exchange.method, status, total);
        tracing::info!(
            target: "csgate::access",
            request_id = exchange.id.to_str().unwrap_or("-"),
            client = %Dash(exchange.client),
            method = %exchange.method,
            route = exchange.route,
            status = status.as_u16(),
            bytes_in = %Dash(exchange.bytes_in),
            bytes_out = %Dash(response.body().size_hint().exact()),
            cause = exchange.cause.unwrap_or("-"),
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

    /// Who the client is: the peer, or, from a peer in `trusted_proxies`, the nearest
    /// `X-Forwarded-For` entry that is not itself a trusted proxy (the leftmost when
    /// all are).
    pub(super) fn client_address(&self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        let trusted = &self.inner.settings.trusted_proxies;
        let is_trusted = |ip: IpAddr| trusted.iter().any(|block| block.contains(ip));
        let ip = peer.ip().to_canonical();
        if !is_trusted(ip) {
            return ip;
        }
        let mut hops: Vec<IpAddr> = headers
            .get_all(&crate::httputil::X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .collect();
        hops.reverse();
        hops.iter()
            .copied()
            .find(|hop| !is_trusted(*hop))
            .or(hops.last().copied())
            .unwrap_or(ip)
    }

    /// Client mistakes are not logged as errors; ours and the upstream's are, once.
    pub(super) fn log_error(&self, error: &GatewayError, exchange: &Exchange) {
        match error.blame() {
            Blame::Downstream | Blame::Overload => {}
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

/// A value for the access line, "-" when unknown.
struct Dash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Dash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}
