//! Stage `post_filter`: makes any upstream (or cached) Service[] satisfy the client's
//! query, and renders it by copying byte spans of the upstream answer
//! ([`crate::query::raw`]; no JSON tree is built, and attached data of any depth passes).
//! Rendering from the index is not free on large answers (40 KB: ~9 µs against ~0.7 µs
//! for a memo lookup, `query::raw::tests::memo_or_render`), so hits still use the memo. Owns the memoised variants of cached entries: the rendering
//! of one entry for one client query is computed once and kept in the cache's memo
//! store under the entry's id, so a repeated hit does no JSON work at all.

use std::hash::{BuildHasher, Hash, Hasher};

use bytes::Bytes;
use serde::de::IgnoredAny;

use super::{Exchange, Gateway};
use crate::cache::{Cache, Entry, Memo};
use crate::error::GatewayError;
use crate::query::raw::{self, Broad, ScanError};
use crate::query::{Include, Lifecycle, ServiceQuery};
use crate::trace::{self, Kind};

impl Gateway {
    /// Filters and renders `broad` for `query`. The one place the timestamp warning
    /// is logged.
    pub(super) fn post_filter(
        &self,
        broad: &Broad,
        query: &ServiceQuery,
        exchange: &Exchange,
    ) -> Bytes {
        let rendered = broad.render(query, &self.inner.settings.service_types);
        if rendered.unparseable_timestamps > 0 {
            tracing::warn!(
                request_id = exchange.id.to_str().unwrap_or("-"),
                upstream = exchange.upstream.as_deref().unwrap_or("-"),
                count = rendered.unparseable_timestamps,
                "upstream data error: services with unparseable timestamps excluded"
            );
        }
        rendered.body
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
        let mut span = trace::child(exchange.span.as_ref(), "post_filter", Kind::Internal);
        let variant = VariantKey::new(query.lifecycle, raw_query);
        if memoise {
            if let Some(memo) = cache.memo(entry, variant.hash).await {
                if variant.matches(&memo.tag) {
                    if let Some(span) = &mut span {
                        span.set("csgate.post_filter.memoised", true);
                    }
                    return Ok(memo.body.clone());
                }
            }
        }
        let body = self.post_filter(entry.broad(), query, exchange);
        if memoise {
            // A copy of just the bytes: the rendering's buffer was sized for the whole
            // broad answer, and the cache counts only the length.
            let memo = Memo {
                tag: variant.tag(),
                body: Bytes::copy_from_slice(&body),
            };
            cache.memoise(entry, variant.hash, memo).await;
        }
        Ok(body)
    }
}

/// An upstream Service[] answer, indexed for [`Gateway::post_filter`].
pub(super) fn parse(body: Bytes) -> Result<Broad, GatewayError> {
    Broad::parse(body.clone()).map_err(|e| invalid(&body, e))
}

/// Query Service by ID: the one service, trimmed to the include flags.
pub(super) fn trim_one(body: &[u8], include: Include) -> Result<Bytes, GatewayError> {
    raw::trim_by_id(body, include).map_err(|e| invalid(body, e))
}

/// The 502 for a body that is not what the route answers. A syntax error is described
/// by serde_json, with the line and column clients have always been told; this path
/// is rare enough that reading the body once more costs nothing that matters.
fn invalid(body: &[u8], e: ScanError) -> GatewayError {
    let detail = match e {
        ScanError::Syntax { .. } => match serde_json::from_slice::<IgnoredAny>(body) {
            Err(json) => format!("not JSON: {json}"),
            Ok(_) => e.to_string(),
        },
        ScanError::NotArray { .. }
        | ScanError::NotObject { .. }
        | ScanError::NotService { .. }
        | ScanError::TooLarge => e.to_string(),
    };
    GatewayError::UpstreamInvalidResponse(detail)
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
        // foldhash, not SipHash: this runs on every hit. Fixed seed, as SipHash's
        // `DefaultHasher::new()` was; the memo map above it is seeded per process.
        let mut hasher = foldhash::fast::FixedState::default().build_hasher();
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
