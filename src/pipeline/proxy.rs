//! Transparent proxying of everything else under the public prefix: hop-by-hop
//! headers stripped, forwarding headers set, bodies streamed (the client's bounded in
//! size and waiting time by [`ClientBody`], the upstream's by the attempt's deadline),
//! and a successful write invalidating the cache entries it can change. A client body
//! that fails is the client's: 413, 400 (unreadable) or 408 (`body_read_timeout`).
//! The upstream's `1xx` interim answers are not forwarded: hyper's client reads past
//! them to the final answer, and hyper's server cannot send one (`docs/requests.md`, "Proxying").

use std::net::SocketAddr;

use http::header;
use http::request::Parts;
use http::{Method, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::forward::Outgoing;
use super::write::Pending;
use super::{with_query, Exchange, Gateway};
use crate::error::GatewayError;
use crate::httputil;
use crate::identity::Tenant;
use crate::limits::BackendPass;
use crate::routes::Write;
use crate::server::Body;
use crate::upstream::ClientBody;

impl Gateway {
    /// Proxies a request whose canonical path after the prefix is `rest`; `write` is
    /// what the path table made of it (see the `write` stage).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn proxy(
        &self,
        parts: Parts,
        body: Incoming,
        rest: &str,
        write: Option<Write<'_>>,
        tenant: &Tenant,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        let max = self.inner.settings.max_body_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(GatewayError::PayloadTooLarge { max });
        }
        let mut headers = parts.headers.clone();
        httputil::strip_hop_by_hop(&mut headers);
        // `Host` too goes in `forwarding_headers` (kept with `preserve_host`).
        self.forwarding_headers(
            &mut headers,
            Outgoing::Client,
            &parts.headers,
            peer,
            exchange,
        );
        let path_and_query = with_query(rest, parts.uri.query().unwrap_or(""));

        // Without a cache nothing is invalidated, so nothing is classified.
        let pending = write
            .filter(|_| self.inner.cache.is_some())
            .map(|write| Pending::of(write, tenant));
        let body = ClientBody::new(body, max, self.inner.settings.body_read_timeout);
        let (upstream_body, pending) = match pending {
            Some(start) if start.needs_body() => {
                let bytes = body.collect().await?;
                let pending = start.with_body(&bytes);
                (ClientBody::full(bytes), pending)
            }
            other => (body, other),
        };
        let upstream_body = (!is_bodiless_read(&parts)).then_some(upstream_body);
        let (streamed, pass) = self
            .forward_stream(
                parts.method.clone(),
                &path_and_query,
                &headers,
                upstream_body,
                exchange,
            )
            .await?;

        let (mut head, incoming) = streamed.response.into_parts();
        httputil::strip_hop_by_hop(&mut head.headers);
        match pending {
            Some(pending) if head.status.is_success() => {
                let response = self.complete_write(pending, head, incoming, max).await;
                drop(pass);
                response
            }
            _ => Ok(Response::from_parts(
                head,
                Held::new(incoming.map_err(Into::into).boxed(), pass).boxed(),
            )),
        }
    }
}

/// A GET or HEAD that announces no body: safe to send again to another upstream.
fn is_bodiless_read(parts: &Parts) -> bool {
    let read = parts.method == Method::GET || parts.method == Method::HEAD;
    let no_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() == b"0");
    read && no_length && !parts.headers.contains_key(header::TRANSFER_ENCODING)
}

/// An answer body streamed from the backend, holding the backend slot (and the
/// connection's stream) until it ends or is dropped: the backend is busy until then.
struct Held {
    body: Body,
    _pass: Option<BackendPass>,
}

impl Held {
    fn new(body: Body, pass: Option<BackendPass>) -> Held {
        Held { body, _pass: pass }
    }
}

impl hyper::body::Body for Held {
    type Data = bytes::Bytes;
    type Error = crate::server::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
