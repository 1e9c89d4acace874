//! The cache's counters (`GET /cache/stats`, metrics) and its size.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// Counters behind `GET /cache/stats`.
#[derive(Default)]
pub(super) struct Stats {
    pub(super) hits: AtomicU64,
    pub(super) stale: AtomicU64,
    pub(super) stale_if_error: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) coalesced: AtomicU64,
    pub(super) bypass: AtomicU64,
    pub(super) evicted_size: AtomicU64,
    pub(super) evicted_expired: AtomicU64,
    pub(super) evicted_explicit: AtomicU64,
    pub(super) evicted_replaced: AtomicU64,
    /// Requests waiting on a fetch right now (a gauge, not a counter).
    pub(super) waiting: AtomicU64,
}

/// Counts one request in `Stats::waiting` while it waits; a request future dropped
/// mid-wait (client gone) cannot leak the count.
pub(super) struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    pub(super) fn enter(gauge: &'a AtomicU64) -> Waiting<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cache {
    /// Admin and metrics: entry count and weighted bytes (answers plus variants),
    /// after moka's pending housekeeping.
    pub async fn size(&self) -> (u64, u64) {
        self.inner.entries.run_pending_tasks().await;
        self.inner.variants.run_pending_tasks().await;
        let entries = self.inner.entries.entry_count();
        let bytes = self.inner.entries.weighted_size() + self.inner.variants.weighted_size();
        self.inner.metrics.set_size(entries, bytes);
        (entries, bytes)
    }

    /// `GET /cache/stats`.
    pub async fn stats(&self) -> serde_json::Value {
        let (entries, bytes) = self.size().await;
        let s = &self.inner.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "entries": entries,
            "bytes": bytes,
            "variants": self.inner.variants.entry_count(),
            "hits": get(&s.hits),
            "stale": get(&s.stale),
            "stale_if_error": get(&s.stale_if_error),
            "misses": get(&s.misses),
            "coalesced": get(&s.coalesced),
            "bypass": get(&s.bypass),
            "waiting": get(&s.waiting),
            "evictions": {
                "size": get(&s.evicted_size),
                "expired": get(&s.evicted_expired),
                "explicit": get(&s.evicted_explicit),
                "replaced": get(&s.evicted_replaced),
            },
        })
    }
}
