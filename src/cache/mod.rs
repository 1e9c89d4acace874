//! The anonymous-lookup cache (gateway contract §3), on moka.
//!
//! One entry per [`Key`] holds the *broad* upstream answer for a contact key (the
//! "all" route, every include flag, the key's extension set) as the raw JSON bytes;
//! every variant a client asks for is computed from it by the same
//! [`filter::filter_services`] the miss path uses, and its rendered bytes are memoised
//! (`variants`, keyed by entry id) so a repeated hit does no JSON work at all.
//!
//! Concurrency:
//! - Misses are single-flight: the first request for a key spawns the fetch as its own
//!   task (a client that disconnects cancels nothing), later ones wait on a `watch`
//!   channel, bounded by the upstream deadline. Errors are shared with the waiters of
//!   that fetch and never stored.
//! - Writes invalidate through `Index` (service id → keys, owner → keys). A fetch
//!   that started before an invalidation touching its owner or one of its services is
//!   not stored (write epochs, checked before and after the insert), and in-flight
//!   fetches of invalidated owners are detached so later readers fetch anew: a client
//!   reads its own writes through one gateway.
//!
//! Locking: `index` and `inflight` are `std::sync::Mutex`es held for map operations
//! only, never across an `.await` and never while calling into moka (whose eviction
//! listener takes `index`).

mod fetch;
mod freshness;
mod index;
mod invalidate;
mod key;
mod stats;

pub use freshness::{CacheOutcome, Clock, Freshness, ManualClock, Policy, SystemClock};
pub use invalidate::{id_text, Invalidation};
pub use key::{Key, Owner};

use fetch::Shared;
use index::Index;
use stats::{Stats, Waiting};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, CACHE_CONTROL};
use moka::notification::RemovalCause;
use tokio::sync::watch;

use crate::config::CacheConfig;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::query::filter::{self, Service};
use crate::query::{Lifecycle, ServiceQuery, TypeMap};
use crate::upstream::{Fetched, Upstreams};

/// How long a key whose answer was too large bypasses the cache (at most `ttl`).
const UNCACHEABLE_FOR: Duration = Duration::from_secs(10);

/// A cached broad answer.
#[derive(Debug)]
pub struct Entry {
    /// Unique per stored answer; memoised variants are keyed by it, so replacing or
    /// dropping the entry orphans its variants (and the byte-bounded LRU reclaims them).
    id: u64,
    body: Bytes,
    fetched_at: Instant,
    service_ids: Vec<String>,
    /// Set by the stale hit that starts this entry's background refresh; cleared if
    /// the refresh fails, so that a later stale hit tries again.
    refreshing: AtomicBool,
}

/// Why a lookup has no body to serve.
#[derive(Debug, Clone)]
pub enum LookupError {
    /// The upstream answered non-2xx: passed through unchanged.
    Upstream(Box<Fetched>),
    /// Connect error, timeout, invalid body, no healthy upstream.
    Gateway(GatewayError),
}

/// A served variant.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub body: Bytes,
    /// Set when served from a stored entry (the `Age` header).
    pub age: Option<Duration>,
}

/// The result of [`Cache::lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// Not for the cache (`no-store`, or the key is remembered as uncacheable): the
    /// caller forwards the client's own query as on a customer route.
    Bypass,
    Served(Answer),
}

/// A lookup the cache handled.
#[derive(Debug)]
pub struct Answer {
    pub result: Result<Rendered, LookupError>,
    pub outcome: CacheOutcome,
    pub upstream: Option<Arc<str>>,
    pub upstream_time: Option<Duration>,
}

/// What the pipeline hands the cache for one anonymous lookup.
pub struct LookupRequest<'a> {
    /// The client's request headers: the key's tenant, group and credential.
    pub client_headers: &'a HeaderMap,
    /// Builds the headers to send upstream; called only when a fetch starts.
    pub forward_headers: &'a (dyn Fn() -> HeaderMap + Sync),
    /// Decoded.
    pub contact_key: &'a str,
    /// `/services/anonymous/{canonically encoded key}`.
    pub key_path: &'a str,
    pub query: &'a ServiceQuery,
    /// The client's raw query string: with the lifecycle, the memo key of the variant.
    pub raw_query: &'a str,
    /// Request `Cache-Control: no-cache`.
    pub no_cache: bool,
}

impl std::fmt::Debug for LookupRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupRequest")
            .field("key_path", &self.key_path)
            .field("query", &self.query)
            .field("no_cache", &self.no_cache)
            .finish_non_exhaustive()
    }
}

/// Identifies one variant of an entry without allocating: the lifecycle and the
/// client's raw query, hashed. The memoised value repeats both, and a hit compares
/// them, so a hash collision can only cost a recomputation, never a wrong answer.
#[derive(Clone, Copy)]
struct VariantKey<'a> {
    lifecycle: Lifecycle,
    raw_query: &'a str,
    hash: u64,
}

impl<'a> VariantKey<'a> {
    fn new(lifecycle: Lifecycle, raw_query: &'a str) -> VariantKey<'a> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        lifecycle.hash(&mut hasher);
        raw_query.hash(&mut hasher);
        VariantKey {
            lifecycle,
            raw_query,
            hash: hasher.finish(),
        }
    }
}

/// A memoised variant.
struct Variant {
    lifecycle: Lifecycle,
    raw_query: Box<str>,
    body: Bytes,
}

/// The cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    entries: moka::future::Cache<Arc<Key>, Arc<Entry>>,
    /// (entry id, variant hash) → rendered bytes.
    variants: moka::future::Cache<(u64, u64), Arc<Variant>>,
    /// Keys whose answers were too large to store, remembered briefly so their
    /// requests bypass instead of queueing behind a fetch that will not be stored.
    /// The value is when the mark ends, on `clock` (moka's own TTL is only a backstop
    /// that bounds memory).
    uncacheable: moka::sync::Cache<Arc<Key>, Instant>,
    uncacheable_for: Duration,
    inflight: Mutex<HashMap<Arc<Key>, watch::Receiver<Option<Shared>>>>,
    index: Arc<Mutex<Index>>,
    epoch: AtomicU64,
    next_id: AtomicU64,
    policy: RwLock<Policy>,
    max_entry_bytes: usize,
    /// The answers' share of `max_bytes`: moka would evict a heavier entry at once.
    entry_budget: usize,
    share_across_credentials: bool,
    /// How long a waiter waits for a fetch (the upstream deadline plus slack).
    wait_bound: Duration,
    /// The `service_type` map the variants were computed with (reloadable).
    types: RwLock<TypeMap>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    stats: Arc<Stats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What an entry costs in the byte budget.
/// What one stored answer costs in memory: the body, the key, and the bookkeeping
/// the weigher would otherwise not see (moka's node and deque entries, the `Entry`,
/// the owner and service-id index entries, allocator rounding). The constants were
/// set from RSS measured by `bench/run.sh --only memory`.
fn entry_weight(key: &Key, entry: &Entry) -> usize {
    const PER_ENTRY: usize = 768;
    const PER_SERVICE_ID: usize = 192;
    entry.body.len()
        + key.weight()
        + entry.service_ids.iter().map(String::len).sum::<usize>()
        + PER_SERVICE_ID * entry.service_ids.len()
        + PER_ENTRY
}

/// One memoised variant: its bytes, its memo key and moka's node.
fn variant_weight(query: &str, body: &Bytes) -> usize {
    const PER_VARIANT: usize = 256;
    body.len() + query.len() + PER_VARIANT
}

/// moka weighs in u32.
fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl Cache {
    pub fn new(
        config: &CacheConfig,
        wait_bound: Duration,
        types: TypeMap,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
    ) -> Cache {
        let policy = Policy {
            ttl: config.ttl,
            stale_while_revalidate: config.stale_while_revalidate,
            stale_if_error: config.stale_if_error,
        };
        let index = Arc::new(Mutex::new(Index::default()));
        let stats = Arc::new(Stats::default());
        // Three quarters of the byte budget for answers, one for memoised variants.
        let entry_budget = (config.max_bytes as u64) / 4 * 3;
        let variant_budget = config.max_bytes as u64 - entry_budget;
        let listener_index = index.clone();
        let listener_stats = stats.clone();
        let listener_metrics = metrics.clone();
        let entries = moka::future::Cache::builder()
            .max_capacity(entry_budget)
            .weigher(|key: &Arc<Key>, entry: &Arc<Entry>| weight(entry_weight(key, entry)))
            .time_to_live(policy.retention())
            .eviction_listener(move |key: Arc<Arc<Key>>, entry: Arc<Entry>, cause| {
                let (counter, label) = match cause {
                    RemovalCause::Size => (&listener_stats.evicted_size, "size"),
                    RemovalCause::Expired => (&listener_stats.evicted_expired, "expired"),
                    RemovalCause::Explicit => (&listener_stats.evicted_explicit, "explicit"),
                    RemovalCause::Replaced => (&listener_stats.evicted_replaced, "replaced"),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                listener_metrics.cache_eviction(label);
                // On `Replaced` too: the new entry is indexed already, and `remove`
                // only drops mappings that still name the old entry's id, i.e. the
                // services the new answer no longer holds.
                lock(&listener_index).remove(&key, &entry);
            })
            .build();
        let variants = moka::future::Cache::builder()
            .max_capacity(variant_budget)
            .weigher(|_: &(u64, u64), variant: &Arc<Variant>| {
                weight(variant_weight(&variant.raw_query, &variant.body))
            })
            .time_to_live(policy.retention())
            .build();
        let uncacheable_for = policy.ttl.min(UNCACHEABLE_FOR);
        let uncacheable = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(uncacheable_for)
            .build();
        Cache {
            inner: Arc::new(Inner {
                entries,
                variants,
                uncacheable,
                uncacheable_for,
                inflight: Mutex::new(HashMap::new()),
                index,
                epoch: AtomicU64::new(0),
                next_id: AtomicU64::new(1),
                policy: RwLock::new(policy),
                max_entry_bytes: config.max_entry_bytes,
                entry_budget: usize::try_from(entry_budget).unwrap_or(usize::MAX),
                share_across_credentials: config.share_across_credentials,
                wait_bound,
                types: RwLock::new(types),
                clock,
                metrics,
                stats,
            }),
        }
    }

    /// Replaces the freshness policy (config reload). Stored entries keep their age.
    /// Replaces the `service_type` map (config reload). Memoised variants were computed
    /// with the old one, so they are dropped when it changes; stored answers stay.
    pub fn set_types(&self, types: TypeMap) {
        let mut current = self.inner.types.write().unwrap_or_else(|p| p.into_inner());
        if *current != types {
            *current = types;
            drop(current);
            self.inner.variants.invalidate_all();
        }
    }

    pub fn set_policy(&self, policy: Policy) {
        *self.inner.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    fn policy(&self) -> Policy {
        *self.inner.policy.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves an anonymous lookup from the cache, fetching the broad answer when needed.
    pub async fn lookup(&self, upstreams: &Upstreams, request: LookupRequest<'_>) -> Lookup {
        let key = Arc::new(Key::new(
            request.client_headers,
            request.contact_key,
            &request.query.extensions,
            self.inner.share_across_credentials,
        ));
        let variant = VariantKey::new(request.query.lifecycle, request.raw_query);
        let policy = self.policy();
        let existing = self.inner.entries.get(&key).await;
        if let (Some(entry), false) = (&existing, request.no_cache) {
            let age = self.age(entry);
            match policy.freshness(age) {
                Freshness::Fresh => {
                    return self.hit(entry, request.query, variant, age, false).await
                }
                Freshness::Stale => {
                    self.refresh(upstreams, &key, &request, entry);
                    return self.hit(entry, request.query, variant, age, false).await;
                }
                Freshness::Expired => {}
            }
        }
        // Checked only without a usable entry: an answer too large to store also
        // drops the entry it could not replace.
        if self.is_uncacheable(&key) {
            self.count_outcome(&CacheOutcome::Bypass);
            return Lookup::Bypass;
        }

        let (receiver, leader) = self.join_or_start(upstreams, &key, &request);
        let shared = self.wait(receiver).await;
        match shared.as_ref() {
            Ok(fetch) => {
                let outcome = if request.no_cache {
                    CacheOutcome::Revalidated {
                        stored: fetch.stored,
                    }
                } else {
                    CacheOutcome::Miss {
                        stored: fetch.stored,
                        collapsed: !leader,
                    }
                };
                self.count_outcome(&outcome);
                let result = self
                    .variant(
                        &fetch.entry,
                        Some(&fetch.services),
                        request.query,
                        variant,
                        fetch.stored,
                    )
                    .await
                    .map(|body| Rendered { body, age: None })
                    .map_err(LookupError::Gateway);
                Lookup::Served(Answer {
                    result,
                    outcome,
                    upstream: Some(fetch.target.clone()),
                    upstream_time: Some(fetch.elapsed),
                })
            }
            Err(error) => {
                if let Some(entry) = existing.filter(|_| is_upstream_failure(error)) {
                    let age = self.age(&entry);
                    if policy.usable_if_error(age) {
                        return self.hit(&entry, request.query, variant, age, true).await;
                    }
                }
                let outcome = CacheOutcome::Miss {
                    stored: false,
                    collapsed: !leader,
                };
                self.count_outcome(&outcome);
                let upstream = match error {
                    LookupError::Upstream(fetched) => Some(fetched.target.clone()),
                    LookupError::Gateway(_) => None,
                };
                Lookup::Served(Answer {
                    result: Err(error.clone()),
                    outcome,
                    upstream,
                    upstream_time: None,
                })
            }
        }
    }

    fn is_uncacheable(&self, key: &Arc<Key>) -> bool {
        match self.inner.uncacheable.get(key) {
            Some(until) if self.inner.clock.now() < until => true,
            Some(_) => {
                self.inner.uncacheable.invalidate(key);
                false
            }
            None => false,
        }
    }

    fn age(&self, entry: &Entry) -> Duration {
        self.inner
            .clock
            .now()
            .saturating_duration_since(entry.fetched_at)
    }

    async fn hit(
        &self,
        entry: &Entry,
        query: &ServiceQuery,
        variant: VariantKey<'_>,
        age: Duration,
        stale_if_error: bool,
    ) -> Lookup {
        let outcome = CacheOutcome::Hit {
            ttl: self.policy().ttl_left(age),
            stale_if_error,
        };
        if stale_if_error {
            self.inner
                .stats
                .stale_if_error
                .fetch_add(1, Ordering::Relaxed);
        }
        self.count_outcome(&outcome);
        let result = self
            .variant(entry, None, query, variant, true)
            .await
            .map(|body| Rendered {
                body,
                age: Some(age),
            })
            .map_err(LookupError::Gateway);
        Lookup::Served(Answer {
            result,
            outcome,
            upstream: None,
            upstream_time: None,
        })
    }

    /// Counts a lookup that bypassed the cache on the client's request (`no-store`).
    pub fn note_bypass(&self) {
        self.count_outcome(&CacheOutcome::Bypass);
    }

    fn count_outcome(&self, outcome: &CacheOutcome) {
        let stats = &self.inner.stats;
        let counter = match outcome.label() {
            "hit" => &stats.hits,
            "stale" => &stats.stale,
            "coalesced" => &stats.coalesced,
            "bypass" => &stats.bypass,
            _ => &stats.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.cache_result(outcome.label());
    }

    /// The rendered bytes of one variant of an entry: memoised, or computed by the
    /// shared post-filter from the entry's services.
    async fn variant(
        &self,
        entry: &Entry,
        services: Option<&[Service]>,
        query: &ServiceQuery,
        variant: VariantKey<'_>,
        memoise: bool,
    ) -> Result<Bytes, GatewayError> {
        let memo_key = (entry.id, variant.hash);
        if memoise {
            if let Some(memo) = self.inner.variants.get(&memo_key).await {
                if memo.lifecycle == variant.lifecycle && *memo.raw_query == *variant.raw_query {
                    return Ok(memo.body.clone());
                }
            }
        }
        let services = match services {
            Some(services) => services.to_vec(),
            None => filter::parse_services(&entry.body).map_err(|e| {
                GatewayError::Internal(format!("a stored entry does not parse: {e}"))
            })?,
        };
        let filtered = {
            // Held for the synchronous filter only.
            let types = self.inner.types.read().unwrap_or_else(|p| p.into_inner());
            filter::filter_services(services, query, &types)
        };
        if filtered.unparseable_timestamps > 0 {
            tracing::warn!(
                count = filtered.unparseable_timestamps,
                "upstream data error: services with unparseable timestamps excluded"
            );
        }
        let body = Bytes::from(filter::render(&filtered.services));
        if memoise {
            let memo = Variant {
                lifecycle: variant.lifecycle,
                raw_query: variant.raw_query.into(),
                body: body.clone(),
            };
            self.inner.variants.insert(memo_key, Arc::new(memo)).await;
        }
        Ok(body)
    }
}

/// Failures a stale entry may stand in for: connect errors, timeouts, 5xx.
fn is_upstream_failure(error: &LookupError) -> bool {
    match error {
        LookupError::Upstream(fetched) => fetched.status.is_server_error(),
        LookupError::Gateway(e) => matches!(
            e,
            GatewayError::UpstreamUnavailable
                | GatewayError::UpstreamTimeout
                | GatewayError::NoHealthyUpstream
        ),
    }
}

/// Request `Cache-Control` directives that steer the cache.
pub fn request_directives(headers: &HeaderMap) -> (bool, bool) {
    let mut no_cache = false;
    let mut no_store = false;
    for directive in headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        match directive.trim().to_ascii_lowercase().as_str() {
            "no-cache" => no_cache = true,
            "no-store" => no_store = true,
            _ => {}
        }
    }
    if headers
        .get(http::header::PRAGMA)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
    {
        no_cache = true;
    }
    (no_cache, no_store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn request_directives_are_read() {
        let mut h = HeaderMap::new();
        assert_eq!(request_directives(&h), (false, false));
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("max-age=0, No-Cache"),
        );
        assert_eq!(request_directives(&h), (true, false));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert_eq!(request_directives(&h), (false, true));
        h.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
        assert_eq!(request_directives(&h), (true, true));
    }
}
