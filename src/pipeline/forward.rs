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
use crate::server::Body;
use crate::upstream::{Fetched, Streamed, UpstreamError, Upstreams};

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
            if let UpstreamError::Connect(detail) | UpstreamError::Transport(detail) = &e {
                tracing::warn!(request_id = ?exchange.id, %detail, "upstream request failed");
            }
            GatewayError::from(e)
        })
    }

    /// Sends a proxied request. A bodiless read (`body` is `None`) may be retried at
    /// another upstream; anything else is sent once.
    pub(super) async fn forward_stream(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Option<Body>,
        exchange: &mut Exchange,
    ) -> Result<Streamed, UpstreamError> {
        let upstreams = &self.inner.upstreams;
        let streamed = match body {
            None => upstreams.stream_read(method, path_and_query, headers).await,
            Some(body) => {
                upstreams
                    .stream(method, path_and_query, headers, body)
                    .await
            }
        }?;
        exchange.upstream = Some(streamed.target.clone());
        exchange.upstream_time = Some(streamed.elapsed);
        Ok(streamed)
    }

    /// The whitelisted request headers of a Query Services request, plus request id
    /// and forwarding headers.
    pub(super) fn query_headers(
        &self,
        incoming: &HeaderMap,
        peer: SocketAddr,
        id: &HeaderValue,
    ) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for name in QUERY_FORWARD_HEADERS {
            for value in incoming.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        self.forwarding_headers(&mut headers, incoming, peer, id);
        headers
    }

    pub(super) fn forwarding_headers(
        &self,
        headers: &mut HeaderMap,
        incoming: &HeaderMap,
        peer: SocketAddr,
        id: &HeaderValue,
    ) {
        crate::cache::drop_empty_tenant_headers(headers);
        headers.insert(&httputil::X_REQUEST_ID, id.clone());
        let forwarded_for = match incoming
            .get(&httputil::X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
        {
            Some(previous) => format!("{previous}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(&httputil::X_FORWARDED_FOR, value);
        }
        // The scheme this hop was reached by: a client cannot claim https over http.
        headers.insert(
            &httputil::X_FORWARDED_PROTO,
            HeaderValue::from_static(self.inner.scheme),
        );
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
