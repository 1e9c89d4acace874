//! Stage `forward`: the only code that talks to the upstreams. Buffered GETs for the
//! Query Services routes (the client's own query, or the cache's broad query, run as
//! the cache's fetch task), streamed requests for the transparent proxy, and the
//! headers each carries upstream.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

use super::{Exchange, Gateway};
use crate::error::GatewayError;
use crate::httputil;
use crate::upstream::{ClientBody, Fetched, Interim, Streamed, Upstreams};

/// Request headers forwarded on Query Services routes (the contract's list; the
/// `X-Forwarded-*` and `X-Request-Id` headers are set by `forwarding_headers`).
static QUERY_FORWARD_HEADERS: [&HeaderName; 7] = [
    &httputil::CONTACT_CENTER_ID,
    &httputil::GROUP_ID,
    &header::AUTHORIZATION,
    &header::ACCEPT,
    &header::CONTENT_TYPE,
    &httputil::TRACEPARENT,
    &httputil::TRACESTATE,
];

impl Gateway {
    /// GETs `path_and_query` for this request and notes the upstream in the exchange.
    pub(super) async fn forward(
        &self,
        path_and_query: &str,
        headers: &HeaderMap,
        exchange: &mut Exchange,
    ) -> Result<Fetched, GatewayError> {
        let result = self
            .inner
            .upstreams
            .fetch(Method::GET, path_and_query, headers)
            .await;
        if let Ok(fetched) = &result {
            exchange.upstream = Some(fetched.target.clone());
            exchange.upstream_time = Some(fetched.elapsed);
        }
        result.map_err(|e| {
            if let Some(detail) = e.detail() {
                tracing::warn!(request_id = ?exchange.id, %detail, "upstream request failed");
            }
            GatewayError::from(e)
        })
    }

    /// Sends a proxied request. A bodiless read (`body` is `None`) may be retried at
    /// another upstream; anything else is sent once. A failing client body is the
    /// client's error (413/400/408), never counted against the upstream. The upstream's
    /// interim answers go to `interim` as they arrive.
    pub(super) async fn forward_stream(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Option<ClientBody>,
        interim: Option<&Interim>,
        exchange: &mut Exchange,
    ) -> Result<Streamed, GatewayError> {
        let upstreams = &self.inner.upstreams;
        let streamed = match body {
            None => {
                upstreams
                    .stream_read(method, path_and_query, headers, interim)
                    .await
            }
            Some(body) => {
                upstreams
                    .stream(method, path_and_query, headers, body, interim)
                    .await
            }
        }?;
        exchange.upstream = Some(streamed.target.clone());
        exchange.upstream_time = Some(streamed.elapsed);
        Ok(streamed)
    }

    /// The whitelisted request headers of a Query Services request, plus request id
    /// and forwarding headers (and the client's `Host` with `preserve_host`).
    pub(super) fn query_headers(
        &self,
        incoming: &HeaderMap,
        peer: SocketAddr,
        exchange: &Exchange,
    ) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for name in QUERY_FORWARD_HEADERS {
            for value in incoming.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        self.forwarding_headers(&mut headers, incoming, peer, exchange);
        headers
    }

    /// Sets what csgate says about this hop on a request it forwards: its request id,
    /// `Via`, and who the client is. From a peer in `[server] trusted_proxies` the
    /// client's `Forwarded`, `X-Forwarded-For` are extended and its `X-Forwarded-Host`,
    /// `X-Forwarded-Proto`, `X-Real-IP` kept; from anyone else all five are replaced
    /// by what csgate saw, so a client cannot forge its address, host or scheme.
    pub(super) fn forwarding_headers(
        &self,
        headers: &mut HeaderMap,
        incoming: &HeaderMap,
        peer: SocketAddr,
        exchange: &Exchange,
    ) {
        crate::cache::drop_empty_tenant_headers(headers);
        let s = &self.inner.settings;
        headers.insert(&httputil::X_REQUEST_ID, exchange.id.clone());
        let ip = peer.ip().to_canonical();
        let trusted = s.trusted_proxies.iter().any(|block| block.contains(ip));
        let host = incoming.get(header::HOST);
        let scheme = self.inner.scheme;
        for name in [
            &header::FORWARDED,
            &httputil::X_FORWARDED_FOR,
            &httputil::X_FORWARDED_HOST,
            &httputil::X_FORWARDED_PROTO,
            &httputil::X_REAL_IP,
        ] {
            headers.remove(name);
            if trusted {
                for value in incoming.get_all(name) {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        // Lists get this hop appended; single values are set when the trusted proxy
        // sent none (or always, from an untrusted peer, whose ones were removed above).
        httputil::append_to_list(headers, &httputil::X_FORWARDED_FOR, &ip.to_string());
        let node = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        // `Host` was checked to be an authority by `admit`: no quote or backslash.
        let element = match host.and_then(|h| h.to_str().ok()) {
            Some(host) => format!("for={node};host=\"{host}\";proto={scheme}"),
            None => format!("for={node};proto={scheme}"),
        };
        httputil::append_to_list(headers, &header::FORWARDED, &element);
        if let (false, Some(host)) = (headers.contains_key(&httputil::X_FORWARDED_HOST), host) {
            headers.insert(&httputil::X_FORWARDED_HOST, host.clone());
        }
        if !headers.contains_key(&httputil::X_FORWARDED_PROTO) {
            headers.insert(
                &httputil::X_FORWARDED_PROTO,
                HeaderValue::from_static(scheme),
            );
        }
        if !headers.contains_key(&httputil::X_REAL_IP) {
            if let Ok(value) = HeaderValue::from_str(&ip.to_string()) {
                headers.insert(&httputil::X_REAL_IP, value);
            }
        }
        if let Some(pseudonym) = &s.via {
            // The client's own Via (kept on proxied routes) is extended, never replaced.
            headers.remove(header::VIA);
            for value in incoming.get_all(header::VIA) {
                headers.append(header::VIA, value.clone());
            }
            let entry = httputil::via_entry(exchange.version, pseudonym);
            httputil::append_to_list(headers, &header::VIA, &entry);
        }
        match host {
            Some(host) if s.preserve_host => {
                headers.insert(header::HOST, host.clone());
            }
            _ => {
                headers.remove(header::HOST);
            }
        }
    }
}

/// GETs a broad query for the cache. Owned, so the cache can run it as its own task
/// (a client that disconnects cancels nothing); the exchange of the request that
/// started it is filled in from the entry instead.
pub(super) async fn forward_detached(
    upstreams: Upstreams,
    path_and_query: String,
    headers: HeaderMap,
) -> Result<Fetched, GatewayError> {
    upstreams
        .fetch(Method::GET, &path_and_query, &headers)
        .await
        .map_err(GatewayError::from)
}
