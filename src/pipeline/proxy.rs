//! Transparent proxying of everything else under the public prefix: hop-by-hop
//! headers stripped, forwarding headers set, bodies streamed (the client's bounded in
//! size and waiting time by [`ClientBody`], the upstream's by the attempt's deadline),
//! and a successful write invalidating the cache entries it can change. A client body
//! that fails is the client's: 413, 400 (unreadable) or 408 (`body_read_timeout`).
//! The upstream's `1xx` interim answers are not forwarded: hyper's client reads past
//! them to the final answer, and hyper's server cannot send one (README, "Proxying").

use std::net::SocketAddr;

use http::header;
use http::request::Parts;
use http::{Method, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::forward::Outgoing;
use super::{with_query, Exchange, Gateway};
use crate::cache::Invalidation;
use crate::error::GatewayError;
use crate::httputil::{self, full};
use crate::server::Body;
use crate::upstream::{ClientBody, Prefix};

impl Gateway {
    pub(super) async fn proxy(
        &self,
        parts: Parts,
        body: Incoming,
        rest: &str,
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

        let path_and_query = with_query(
            &crate::routes::canonical_path(rest),
            parts.uri.query().unwrap_or(""),
        );
        let invalidation = self
            .inner
            .cache
            .as_ref()
            .and_then(|_| Invalidation::for_write(&parts.method, rest, &parts.headers));

        // A start names its contact key in the body: read it (it is small and bounded),
        // then forward the same bytes.
        let body = ClientBody::new(body, max, self.inner.settings.body_read_timeout);
        let (upstream_body, invalidation) = match invalidation {
            Some(start @ Invalidation::ServiceStart { .. }) => {
                let bytes = body.collect().await?;
                let start = start.with_start_body(&parts.headers, &bytes);
                (ClientBody::full(bytes), Some(start))
            }
            other => (body, other),
        };
        let upstream_body = (!is_bodiless_read(&parts)).then_some(upstream_body);
        let streamed = self
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
        if let (true, Some(cache), Some(invalidation)) =
            (head.status.is_success(), &self.inner.cache, invalidation)
        {
            if let Invalidation::ServiceStart { owner: Some(_) } = invalidation {
                // The answer names the new service id, for the service-id index; one too
                // large to read is streamed on all the same (the write has happened).
                let bytes = match Prefix::read(incoming, max).await {
                    Ok(Prefix::Whole(bytes)) => bytes,
                    Ok(Prefix::Partial(body)) => {
                        cache.invalidate(&invalidation, None).await;
                        return Ok(Response::from_parts(head, body));
                    }
                    Err(_) => return Err(GatewayError::UpstreamUnavailable),
                };
                let id = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("service_id").map(crate::cache::id_text));
                self.invalidate_write(cache, &invalidation, id.as_deref())
                    .await;
                return Ok(Response::from_parts(head, full(bytes)));
            }
            self.invalidate_write(cache, &invalidation, None).await;
        }
        Ok(Response::from_parts(
            head,
            incoming.map_err(Into::into).boxed(),
        ))
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
