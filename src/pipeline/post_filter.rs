//! Stage `post_filter`: makes any upstream (or cached) Service[] satisfy the client's
//! query, and renders it. Owns the memoised variants of cached entries: the rendering
//! of one entry for one client query is computed once and kept in the cache's memo
//! store under the entry's id, so a repeated hit does no JSON work at all.

use std::hash::{Hash, Hasher};

use bytes::Bytes;

use super::{Exchange, Gateway};
use crate::cache::{id_text, Cache, Entry, Memo};
use crate::error::GatewayError;
use crate::query::filter::{self, Service};
use crate::query::{Include, Lifecycle, ServiceQuery};

impl Gateway {
    /// Filters and renders `services` for `query`. The one place the timestamp
    /// warning is logged.
    pub(super) fn post_filter(
        &self,
        services: Vec<Service>,
        query: &ServiceQuery,
        exchange: &Exchange,
    ) -> Bytes {
        let filtered = filter::filter_services(services, query, &self.inner.settings.service_types);
        if filtered.unparseable_timestamps > 0 {
            tracing::warn!(
                request_id = ?exchange.id,
                upstream = exchange.upstream.as_deref().unwrap_or("-"),
                count = filtered.unparseable_timestamps,
                "upstream data error: services with unparseable timestamps excluded"
            );
        }
        Bytes::from(filter::render(&filtered.services))
    }

    /// The rendering of a cache entry for `query`: memoised, or computed by
    /// [`Gateway::post_filter`] and memoised when `memoise` (the entry is stored).
    pub(super) async fn post_filter_entry(
        &self,
        cache: &Cache,
        entry: &Entry,
        query: &ServiceQuery,
        raw_query: &str,
        memoise: bool,
        exchange: &Exchange,
    ) -> Result<Bytes, GatewayError> {
        let variant = VariantKey::new(query.lifecycle, raw_query);
        if memoise {
            if let Some(memo) = cache.memo(entry, variant.hash).await {
                if variant.matches(&memo.tag) {
                    return Ok(memo.body.clone());
                }
            }
        }
        let services = filter::parse_services(entry.body())
            .map_err(|e| GatewayError::Internal(format!("a stored entry does not parse: {e}")))?;
        let body = self.post_filter(services, query, exchange);
        if memoise {
            let memo = Memo {
                tag: variant.tag(),
                body: body.clone(),
            };
            cache.memoise(entry, variant.hash, memo).await;
        }
        Ok(body)
    }
}

/// The service ids of a broad answer, for the cache's invalidation index.
pub(super) fn service_ids(services: &[Service]) -> Vec<String> {
    services
        .iter()
        .filter_map(|s| s.get("service_id"))
        .map(id_text)
        .collect()
}

/// Query Service by ID: the one service, trimmed to the include flags.
pub(super) fn trim_one(body: &[u8], include: Include) -> Result<Bytes, GatewayError> {
    let mut service = filter::parse_service(body)
        .map_err(|e| GatewayError::UpstreamInvalidResponse(e.to_string()))?;
    filter::trim_service(&mut service, include);
    let body = serde_json::to_vec(&service)
        .map_err(|e| GatewayError::Internal(format!("serialising a service: {e}")))?;
    Ok(Bytes::from(body))
}

/// Identifies one variant of an entry without allocating: the lifecycle and the
/// client's raw query, hashed. The memo repeats both (as its tag), and a hit compares
/// them, so a hash collision can only cost a recomputation, never a wrong answer.
#[derive(Clone, Copy)]
struct VariantKey<'a> {
    lifecycle: Lifecycle,
    raw_query: &'a str,
    hash: u64,
}

impl<'a> VariantKey<'a> {
    fn new(lifecycle: Lifecycle, raw_query: &'a str) -> VariantKey<'a> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        lifecycle.hash(&mut hasher);
        raw_query.hash(&mut hasher);
        VariantKey {
            lifecycle,
            raw_query,
            hash: hasher.finish(),
        }
    }

    /// One character for the lifecycle, then the raw query.
    fn lifecycle_mark(&self) -> char {
        match self.lifecycle {
            Lifecycle::All => 'a',
            Lifecycle::Active => 'A',
            Lifecycle::Completed => 'C',
        }
    }

    fn tag(&self) -> Box<str> {
        let mut tag = String::with_capacity(self.raw_query.len() + 1);
        tag.push(self.lifecycle_mark());
        tag.push_str(self.raw_query);
        tag.into()
    }

    fn matches(&self, tag: &str) -> bool {
        tag.strip_prefix(self.lifecycle_mark()) == Some(self.raw_query)
    }
}
