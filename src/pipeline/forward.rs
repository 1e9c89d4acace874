//! Stage `forward`: the only code that talks to the upstreams. Buffered GETs for the
//! Query Services routes (the client's own query, or the cache's broad query, run as
//! the cache's fetch task), streamed requests for the transparent proxy, and the
//! headers each carries upstream.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

use super::{Exchange, Gateway};
use crate::error::GatewayError;
use crate::httputil::{self, StackText};
use crate::identity::Tenant;
use crate::limits::BackendPass;
use crate::trace::{Parent, Span};
use crate::upstream::{ClientBody, Fetched, Streamed, Upstreams};

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

/// What the map handed to [`Gateway::forwarding_headers`] holds already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outgoing {
    /// Only [`QUERY_FORWARD_HEADERS`]: none of the headers `forwarding_headers` sets
    /// or removes, so it skips the removals (~900 instructions per request).
    Whitelisted,
    /// The client's headers (proxied routes): any of them may be there.
    Client,
}

impl Gateway {
    /// GETs `path_and_query` for this request and notes the upstream in the exchange.
    pub(super) async fn forward(
        &self,
        path_and_query: &str,
        headers: &HeaderMap,
        exchange: &mut Exchange,
    ) -> Result<Fetched, GatewayError> {
        let trace = exchange.span.as_ref().map(Span::parent);
        let _pass = self.backend_pass(exchange).await?;
        let result = self
            .inner
            .upstreams
            .fetch(Method::GET, path_and_query, headers, trace.as_ref())
            .await;
        if let Ok(fetched) = &result {
            exchange.upstream = Some(fetched.target.clone());
            exchange.upstream_time = Some(fetched.elapsed);
        }
        result.map_err(|e| failed(e, &exchange.id))
    }

    /// Sends a proxied request. A bodiless read (`body` is `None`) may be retried at
    /// another upstream; anything else is sent once. A failing client body is the
    /// client's error (413/400/408), never counted against the upstream. The pass is
    /// the backend slot, for the caller to hold until the answer's body has ended.
    pub(super) async fn forward_stream(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Option<ClientBody>,
        exchange: &mut Exchange,
    ) -> Result<(Streamed, Option<BackendPass>), GatewayError> {
        let pass = self.backend_pass(exchange).await?;
        let upstreams = &self.inner.upstreams;
        let trace = exchange.span.as_ref().map(Span::parent);
        let trace = trace.as_ref();
        let streamed = match body {
            None => {
                upstreams
                    .stream_read(method, path_and_query, headers, trace)
                    .await
            }
            Some(body) => {
                upstreams
                    .stream(method, path_and_query, headers, body, trace)
                    .await
            }
        }
        .map_err(|e| failed(e, &exchange.id))?;
        exchange.upstream = Some(streamed.target.clone());
        exchange.upstream_time = Some(streamed.elapsed);
        Ok((streamed, pass))
    }

    /// The whitelisted request headers of a Query Services request, plus request id
    /// and forwarding headers (and the client's `Host` with `preserve_host`).
    pub(super) fn query_headers(
        &self,
        incoming: &HeaderMap,
        peer: SocketAddr,
        exchange: &Exchange,
    ) -> HeaderMap {
        // Sized for the usual request: a map grown from empty reallocates at the 7th.
        let mut headers = HeaderMap::with_capacity(12);
        for name in QUERY_FORWARD_HEADERS {
            for value in incoming.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        self.forwarding_headers(
            &mut headers,
            Outgoing::Whitelisted,
            incoming,
            peer,
            exchange,
        );
        headers
    }

    /// The headers of a cache fill, the broad query whose answer everyone sharing the
    /// key is served: fixed, whoever fills. The tenant as `admit` read it, the
    /// `Authorization` the key is partitioned by (any one of the partition's when
    /// `share_across_credentials`), `Accept: application/json`, csgate's `Via` and the
    /// filling request's id (for the logs; no answer depends on it). Nothing else of
    /// the client's: no `Host` (the upstream's authority is sent), no forwarding
    /// headers, no trace context (the fill is its own work, not the client's span).
    pub(super) fn fill_headers(
        &self,
        tenant: &Tenant,
        incoming: &HeaderMap,
        exchange: &Exchange,
    ) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(8);
        for (name, value) in [
            (&httputil::CONTACT_CENTER_ID, tenant.center()),
            (&httputil::GROUP_ID, tenant.group()),
        ] {
            // `admit` read the tenant from these headers: the value is the header's.
            let Some(value) = value else { continue };
            let value = HeaderValue::from_maybe_shared(value.clone())
                .ok()
                .or_else(|| incoming.get(name).cloned());
            if let Some(value) = value {
                headers.insert(name, value);
            }
        }
        if let Some(credential) = incoming.get(header::AUTHORIZATION) {
            headers.insert(header::AUTHORIZATION, credential.clone());
        }
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(&httputil::X_REQUEST_ID, exchange.id.clone());
        if let Some(entries) = &self.inner.settings.via_entries {
            headers.insert(header::VIA, entries.get(exchange.version).clone());
        }
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
        outgoing: Outgoing,
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
        let forwarding = [
            &header::FORWARDED,
            &httputil::X_FORWARDED_FOR,
            &httputil::X_FORWARDED_HOST,
            &httputil::X_FORWARDED_PROTO,
            &httputil::X_REAL_IP,
        ];
        if outgoing == Outgoing::Client {
            // The two others a client's map may hold, removed below only when present.
            let host_via = if s.via_entries.is_some() { 2 } else { 1 };
            let names = [
                forwarding[0],
                forwarding[1],
                forwarding[2],
                forwarding[3],
                forwarding[4],
                &header::HOST,
                &header::VIA,
            ];
            httputil::remove_present(headers, &names[..5 + host_via]);
        }
        for name in forwarding {
            if trusted {
                for value in incoming.get_all(name) {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        // Lists get this hop appended; single values are set when the trusted proxy
        // sent none (or always, from an untrusted peer, whose ones were removed above).
        // The address is written once, on the stack, for all three headers: formatting
        // it per header (and the `Forwarded` element with `format!`) cost ~14k
        // instructions per forwarded request (callgrind).
        let ip_text = ip_text(ip);
        let ip_value = HeaderValue::from_bytes(ip_text.as_bytes())
            .expect("an IP address's text is a valid header value");
        httputil::append_value_to_list(headers, &httputil::X_FORWARDED_FOR, &ip_value);
        let element = forwarded_element(&ip_text, ip.is_ipv6(), host, scheme);
        httputil::append_owned_to_list(headers, &header::FORWARDED, element);
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
            headers.insert(&httputil::X_REAL_IP, ip_value);
        }
        if let Some(entries) = &s.via_entries {
            // The client's own Via (kept on proxied routes) is extended, never replaced.
            // On proxied routes the client's `Via` was removed above with the others.
            for value in incoming.get_all(header::VIA) {
                headers.append(header::VIA, value.clone());
            }
            httputil::append_value_to_list(headers, &header::VIA, entries.get(exchange.version));
        }
        match host {
            Some(host) if s.preserve_host => {
                headers.insert(header::HOST, host.clone());
            }
            // Removed above on proxied routes; the upstream's authority is sent instead.
            _ => {}
        }
    }
}

/// This hop's `Forwarded` element (RFC 7239 §4): `for=` the client (an IPv6 address
/// quoted and bracketed), `host=` the client's `Host` when it is text, `proto=`.
/// Written in one allocation, which the header value then owns.
fn forwarded_element(
    ip: &StackText,
    ipv6: bool,
    host: Option<&HeaderValue>,
    scheme: &str,
) -> Vec<u8> {
    // `Host` was checked to be an authority by `admit`: no quote or backslash.
    let host = host.and_then(|h| h.to_str().ok());
    let mut element = Vec::with_capacity(
        "for=\"[]\";host=\"\";proto=".len()
            + ip.as_bytes().len()
            + host.map_or(0, str::len)
            + scheme.len(),
    );
    element.extend_from_slice(b"for=");
    if ipv6 {
        element.extend_from_slice(b"\"[");
        element.extend_from_slice(ip.as_bytes());
        element.extend_from_slice(b"]\"");
    } else {
        element.extend_from_slice(ip.as_bytes());
    }
    if let Some(host) = host {
        element.extend_from_slice(b";host=\"");
        element.extend_from_slice(host.as_bytes());
        element.extend_from_slice(b"\"");
    }
    element.extend_from_slice(b";proto=");
    element.extend_from_slice(scheme.as_bytes());
    element
}

/// An IP address as text (`Display`), on the stack: at most 39 bytes for IPv6
/// (`ffff:…:ffff`), 45 for an IPv4-mapped one (`::ffff:255.255.255.255`).
fn ip_text(ip: IpAddr) -> StackText {
    let mut text = StackText::default();
    let written = match ip {
        // The common case, without the formatting machinery.
        IpAddr::V4(v4) => v4
            .octets()
            .into_iter()
            .enumerate()
            .try_for_each(|(i, octet)| {
                if i > 0 {
                    text.push(b".")?;
                }
                text.push_integer(octet)
            }),
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            write!(text, "{v6}")
        }
    };
    written.expect("an IP address's text fits in 64 bytes");
    text
}

/// GETs a broad query for the cache. Owned, so the cache can run it as its own task
/// (a client that disconnects cancels nothing); the exchange of the request that
/// started it is filled in from the entry instead. `trace`: the cache span the
/// attempts' spans go under.
pub(super) async fn forward_detached(
    upstreams: Upstreams,
    path_and_query: String,
    headers: HeaderMap,
    trace: Option<Parent>,
) -> Result<Fetched, GatewayError> {
    upstreams
        .fetch(Method::GET, &path_and_query, &headers, trace.as_ref())
        .await
        .map_err(|e| {
            let id = headers.get(&httputil::X_REQUEST_ID).cloned();
            failed(e, &id.unwrap_or(HeaderValue::from_static("-")))
        })
}

/// An upstream failure as the client's error, its cause logged once with the request
/// id (a refused connection, a reset, a certificate or name that did not verify...).
fn failed(error: crate::upstream::UpstreamError, request_id: &HeaderValue) -> GatewayError {
    if let Some(detail) = error.detail() {
        tracing::warn!(
            request_id = request_id.to_str().unwrap_or("-"),
            %detail,
            "upstream request failed"
        );
    }
    GatewayError::from(error)
}

#[cfg(test)]
mod tests {
    use super::{forwarded_element, ip_text};
    use http::HeaderValue;
    use std::net::IpAddr;

    /// The header values as `Display` and `format!` wrote them before.
    #[test]
    fn addresses_and_forwarded_elements_are_written_as_formatted() {
        let ips = [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "9.99.199.200",
            "::1",
            "::",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "fe80::1:2:3:4",
        ];
        let host = HeaderValue::from_static("api.example.com:8443");
        for ip in ips {
            let ip: IpAddr = ip.parse().expect("a test address");
            let text = ip_text(ip);
            assert_eq!(text.as_bytes(), ip.to_string().as_bytes());
            let node = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("\"[{v6}]\""),
            };
            for scheme in ["http", "https"] {
                assert_eq!(
                    forwarded_element(&text, ip.is_ipv6(), Some(&host), scheme),
                    format!("for={node};host=\"api.example.com:8443\";proto={scheme}").into_bytes()
                );
                assert_eq!(
                    forwarded_element(&text, ip.is_ipv6(), None, scheme),
                    format!("for={node};proto={scheme}").into_bytes()
                );
            }
        }
    }
}
