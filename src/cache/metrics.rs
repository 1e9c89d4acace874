//! The cache's metric families: `csgate_cache_requests` (lookups by result),
//! `csgate_cache_entries`, `csgate_cache_bytes` and `csgate_cache_evictions`.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

/// The `csgate_cache_requests` results, each with a resolved handle.
const RESULTS: [&str; 5] = ["hit", "miss", "stale", "coalesced", "bypass"];

/// The cache's metrics. Cheap to clone. [`Default`] makes them unregistered (tests).
#[derive(Clone, Default)]
pub struct CacheMetrics {
    requests: Family<ResultLabel, Counter>,
    entries: Gauge,
    bytes: Gauge,
    evictions: Family<CauseLabel, Counter>,
    /// Indexed like `RESULTS`, resolved on first use (`Family::get_or_create` hashes
    /// and locks on every call) so that only observed results are listed.
    results: Arc<[OnceLock<Counter>; RESULTS.len()]>,
}

impl CacheMetrics {
    /// The cache's families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> CacheMetrics {
        let metrics = CacheMetrics::default();
        registry.register(
            "csgate_cache_requests",
            "Anonymous lookups by cache result (hit, miss, stale, coalesced, bypass)",
            metrics.requests.clone(),
        );
        registry.register(
            "csgate_cache_entries",
            "Entries in the anonymous-lookup cache",
            metrics.entries.clone(),
        );
        registry.register(
            "csgate_cache_bytes",
            "Weighted size of the cache in bytes",
            metrics.bytes.clone(),
        );
        registry.register(
            "csgate_cache_evictions",
            "Entries removed, by cause (size, expired, explicit, replaced)",
            metrics.evictions.clone(),
        );
        metrics
    }

    /// Counts one lookup by its result.
    pub fn result(&self, result: &'static str) {
        let count = || self.requests.get_or_create(&ResultLabel { result }).clone();
        match RESULTS.iter().position(|r| *r == result) {
            Some(i) => self.results[i].get_or_init(count).inc(),
            None => count().inc(),
        };
    }

    pub fn eviction(&self, cause: &'static str) {
        self.evictions.get_or_create(&CauseLabel { cause }).inc();
    }

    pub fn set_size(&self, entries: u64, bytes: u64) {
        self.entries.set(entries as i64);
        self.bytes.set(bytes as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{encode, Format};

    #[test]
    fn names_and_labels_in_the_exposition() {
        let mut registry = Registry::default();
        let m = CacheMetrics::register(&mut registry);
        for result in ["hit", "hit", "miss", "unknown"] {
            m.result(result);
        }
        m.eviction("size");
        m.set_size(3, 300);
        let open = encode(&registry, Format::OpenMetrics);
        assert!(
            open.contains("# TYPE csgate_cache_requests counter\n"),
            "{open}"
        );
        let text = encode(&registry, Format::Prometheus);
        assert!(
            text.contains("# TYPE csgate_cache_requests_total counter\n"),
            "{text}"
        );
        for line in [
            "csgate_cache_requests_total{result=\"hit\"} 2",
            "csgate_cache_requests_total{result=\"miss\"} 1",
            "csgate_cache_requests_total{result=\"unknown\"} 1",
            "csgate_cache_evictions_total{cause=\"size\"} 1",
            "csgate_cache_entries 3",
            "csgate_cache_bytes 300",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(
            !text.contains("result=\"stale\""),
            "only observed series are listed"
        );
    }
}
