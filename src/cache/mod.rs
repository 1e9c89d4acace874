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

mod freshness;
mod invalidate;
mod key;

pub use freshness::{CacheOutcome, Clock, Freshness, ManualClock, Policy, SystemClock};
pub use invalidate::{id_text, Invalidation};
pub use key::{Key, Owner};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, CACHE_CONTROL, SET_COOKIE};
use http::Method;
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

type Shared = Arc<Result<Fetch, LookupError>>;

#[derive(Debug)]
struct Fetch {
    entry: Arc<Entry>,
    services: Vec<Service>,
    stored: bool,
    target: Arc<str>,
    elapsed: Duration,
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

/// Service-id and owner indexes over stored entries, and the write epochs.
#[derive(Default)]
struct Index {
    by_service: HashMap<String, HashMap<Arc<Key>, u64>>,
    by_owner: HashMap<Owner, HashMap<Arc<Key>, u64>>,
    /// Service id → owner, from start answers: a write to a service whose owner has no
    /// stored entry yet still detaches that owner's in-flight fetches.
    started: HashMap<String, Owner>,
    owner_written: HashMap<Owner, (u64, Instant)>,
    service_written: HashMap<String, (u64, Instant)>,
    all_written: u64,
}

impl Index {
    fn add(&mut self, key: &Arc<Key>, entry: &Entry) {
        for id in &entry.service_ids {
            self.by_service
                .entry(id.clone())
                .or_default()
                .insert(key.clone(), entry.id);
        }
        self.by_owner
            .entry(key.owner.clone())
            .or_default()
            .insert(key.clone(), entry.id);
    }

    fn remove(&mut self, key: &Arc<Key>, entry: &Entry) {
        for id in &entry.service_ids {
            if let Some(keys) = self.by_service.get_mut(id) {
                if keys.get(key) == Some(&entry.id) {
                    keys.remove(key);
                }
                if keys.is_empty() {
                    self.by_service.remove(id);
                }
            }
        }
        if let Some(keys) = self.by_owner.get_mut(&key.owner) {
            if keys.get(key) == Some(&entry.id) {
                keys.remove(key);
            }
            if keys.is_empty() {
                self.by_owner.remove(&key.owner);
            }
        }
    }

    /// Was the owner, or any of the services, written after `epoch`?
    fn written_since(&self, owner: &Owner, service_ids: &[String], epoch: u64) -> bool {
        self.all_written > epoch
            || self
                .owner_written
                .get(owner)
                .is_some_and(|(e, _)| *e > epoch)
            || service_ids.iter().any(|id| {
                self.service_written
                    .get(id)
                    .is_some_and(|(e, _)| *e > epoch)
            })
    }

    /// Forgets write marks older than any fetch can be.
    fn prune(&mut self, older_than: Duration) {
        const LIMIT: usize = 4096;
        let now = Instant::now();
        if self.owner_written.len() > LIMIT {
            self.owner_written
                .retain(|_, (_, at)| now.duration_since(*at) < older_than);
        }
        if self.service_written.len() > LIMIT {
            self.service_written
                .retain(|_, (_, at)| now.duration_since(*at) < older_than);
        }
        if self.started.len() > 100_000 {
            self.started.clear();
        }
    }
}

/// Counters behind `GET /cache/stats`.
#[derive(Default)]
struct Stats {
    hits: AtomicU64,
    stale: AtomicU64,
    stale_if_error: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    bypass: AtomicU64,
    evicted_size: AtomicU64,
    evicted_expired: AtomicU64,
    evicted_explicit: AtomicU64,
    evicted_replaced: AtomicU64,
    /// Requests waiting on a fetch right now (a gauge, not a counter).
    waiting: AtomicU64,
}

/// Counts one request in `Stats::waiting` while it waits; a request future dropped
/// mid-wait (client gone) cannot leak the count.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn enter(gauge: &'a AtomicU64) -> Waiting<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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

    /// Starts the one background refresh of a stale entry.
    ///
    /// The single-flight map alone does not make it one: a stale hit that read the
    /// entry just before the refresh stored its successor, and reaches the map just
    /// after the refresh left it, would start a second. So the first stale hit of an
    /// entry claims its refresh; the claim is given back only if the refresh fails.
    fn refresh(
        &self,
        upstreams: &Upstreams,
        key: &Arc<Key>,
        request: &LookupRequest<'_>,
        entry: &Arc<Entry>,
    ) {
        if entry.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (mut receiver, _) = self.join_or_start(upstreams, key, request);
        let entry = entry.clone();
        tokio::spawn(async move {
            let succeeded = receiver
                .wait_for(Option::is_some)
                .await
                .is_ok_and(|done| done.as_ref().is_some_and(|result| result.is_ok()));
            if !succeeded {
                entry.refreshing.store(false, Ordering::Release);
            }
        });
    }

    /// Joins the in-flight fetch for `key`, or starts one as its own task.
    fn join_or_start(
        &self,
        upstreams: &Upstreams,
        key: &Arc<Key>,
        request: &LookupRequest<'_>,
    ) -> (watch::Receiver<Option<Shared>>, bool) {
        let mut inflight = lock(&self.inner.inflight);
        if let Some(receiver) = inflight.get(key) {
            return (receiver.clone(), false);
        }
        let (sender, receiver) = watch::channel(None);
        inflight.insert(key.clone(), receiver.clone());
        drop(inflight);

        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        let broad = request.query.broad();
        let path_and_query = format!("{}?{}", request.key_path, broad.upstream_query());
        let headers = (request.forward_headers)();
        let this = self.clone();
        let upstreams = upstreams.clone();
        let key = key.clone();
        let mine = receiver.clone();
        tokio::spawn(async move {
            let result = this
                .fetch_and_store(&upstreams, &key, &headers, &path_and_query, epoch)
                .await;
            let _ = sender.send(Some(Arc::new(result)));
            let mut inflight = lock(&this.inner.inflight);
            if inflight.get(&key).is_some_and(|r| r.same_channel(&mine)) {
                inflight.remove(&key);
            }
        });
        (receiver, true)
    }

    async fn wait(&self, mut receiver: watch::Receiver<Option<Shared>>) -> Shared {
        let _waiting = Waiting::enter(&self.inner.stats.waiting);
        let waited = tokio::time::timeout(
            self.inner.wait_bound,
            receiver.wait_for(|value| value.is_some()),
        )
        .await;
        match waited {
            Ok(Ok(value)) => value.clone().expect("wait_for returned a set value"),
            Ok(Err(_)) => Arc::new(Err(LookupError::Gateway(GatewayError::Internal(
                "cache fetch task ended without an answer".into(),
            )))),
            Err(_) => Arc::new(Err(LookupError::Gateway(GatewayError::UpstreamTimeout))),
        }
    }

    async fn fetch_and_store(
        &self,
        upstreams: &Upstreams,
        key: &Arc<Key>,
        headers: &HeaderMap,
        path_and_query: &str,
        epoch: u64,
    ) -> Result<Fetch, LookupError> {
        let fetched = upstreams
            .fetch(Method::GET, path_and_query, headers)
            .await
            .map_err(|e| LookupError::Gateway(e.into()))?;
        if !fetched.status.is_success() {
            return Err(LookupError::Upstream(Box::new(fetched)));
        }
        let services = filter::parse_services(&fetched.body).map_err(|e| {
            LookupError::Gateway(GatewayError::UpstreamInvalidResponse(e.to_string()))
        })?;
        let entry = Arc::new(Entry {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            // A copy: `fetched.body` is a slice of hyper's connection read buffer, and
            // keeping it would pin that whole buffer (8 KiB or more) per entry.
            body: Bytes::copy_from_slice(&fetched.body),
            fetched_at: self.inner.clock.now(),
            service_ids: services
                .iter()
                .filter_map(|s| s.get("service_id"))
                .map(id_text)
                .collect(),
            refreshing: AtomicBool::new(false),
        });
        let too_large = entry.body.len() > self.inner.max_entry_bytes
            || entry_weight(key, &entry) > self.inner.entry_budget;
        if too_large {
            let until = self.inner.clock.now() + self.inner.uncacheable_for;
            self.inner.uncacheable.insert(key.clone(), until);
        }
        let cacheable = !too_large && storable(&fetched.headers);
        if !cacheable {
            // Whatever the key held is older than the answer being served now; left in
            // place it would be served as fresh to the next client.
            self.inner.entries.invalidate(key).await;
        }
        let mut stored = cacheable;
        if stored {
            let mut index = lock(&self.inner.index);
            stored = !index.written_since(&key.owner, &entry.service_ids, epoch);
            if stored {
                index.add(key, &entry);
            }
        }
        if stored {
            self.inner.entries.insert(key.clone(), entry.clone()).await;
            // An invalidation may have run between the check and the insert.
            let raced =
                lock(&self.inner.index).written_since(&key.owner, &entry.service_ids, epoch);
            if raced {
                self.inner.entries.invalidate(key).await;
                stored = false;
            }
        }
        Ok(Fetch {
            entry,
            services,
            stored,
            target: fetched.target,
            elapsed: fetched.elapsed,
        })
    }

    /// Applies a successful write. `started_service_id` is the id a start answered with.
    pub async fn invalidate(&self, invalidation: &Invalidation, started_service_id: Option<&str>) {
        let epoch = self.inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let now = Instant::now();
        let (keys, owners): (Vec<Arc<Key>>, Option<Vec<Owner>>) = {
            let mut index = lock(&self.inner.index);
            index.prune(self.inner.wait_bound * 2);
            match invalidation {
                Invalidation::ServiceStart { owner: None } => return,
                Invalidation::ServiceStart { owner: Some(owner) } => {
                    index.owner_written.insert(owner.clone(), (epoch, now));
                    if let Some(id) = started_service_id {
                        index.started.insert(id.to_owned(), owner.clone());
                    }
                    let keys = index
                        .by_owner
                        .get(owner)
                        .map(|keys| keys.keys().cloned().collect())
                        .unwrap_or_default();
                    (keys, Some(vec![owner.clone()]))
                }
                Invalidation::Service { service_id } => {
                    index
                        .service_written
                        .insert(service_id.clone(), (epoch, now));
                    let keys: Vec<Arc<Key>> = index
                        .by_service
                        .get(service_id)
                        .map(|keys| keys.keys().cloned().collect())
                        .unwrap_or_default();
                    let mut owners: Vec<Owner> = keys.iter().map(|k| k.owner.clone()).collect();
                    owners.extend(index.started.get(service_id).cloned());
                    owners.sort_by(|a, b| a.contact_key.cmp(&b.contact_key));
                    owners.dedup();
                    for owner in &owners {
                        index.owner_written.insert(owner.clone(), (epoch, now));
                    }
                    // Unknown owner: any in-flight fetch might hold the service.
                    (keys, (!owners.is_empty()).then_some(owners))
                }
                Invalidation::Everything => {
                    index.all_written = epoch;
                    (Vec::new(), None)
                }
            }
        };
        {
            let mut inflight = lock(&self.inner.inflight);
            match &owners {
                Some(owners) => inflight.retain(|key, _| !owners.contains(&key.owner)),
                None => inflight.clear(),
            }
        }
        if matches!(invalidation, Invalidation::Everything) {
            self.inner.entries.invalidate_all();
            self.inner.variants.invalidate_all();
            return;
        }
        for key in keys {
            self.inner.entries.invalidate(&key).await;
        }
    }

    /// Admin: drops everything.
    pub async fn purge_all(&self) {
        self.invalidate(&Invalidation::Everything, None).await;
        self.inner.uncacheable.invalidate_all();
        self.inner.entries.run_pending_tasks().await;
    }

    /// Admin: drops one contact key's entries in the tenant named by `headers`.
    /// Returns how many entries were dropped.
    pub async fn purge_contact(&self, headers: &HeaderMap, contact_key: &str) -> usize {
        let owner = Owner::from_headers(headers, contact_key);
        let count = lock(&self.inner.index)
            .by_owner
            .get(&owner)
            .map_or(0, HashMap::len);
        self.invalidate(&Invalidation::ServiceStart { owner: Some(owner) }, None)
            .await;
        count
    }

    /// Admin and metrics: entry count and weighted bytes (answers plus variants),
    /// after moka's pending housekeeping.
    pub async fn size(&self) -> (u64, u64) {
        self.inner.entries.run_pending_tasks().await;
        self.inner.variants.run_pending_tasks().await;
        let entries = self.inner.entries.entry_count();
        let bytes = self.inner.entries.weighted_size() + self.inner.variants.weighted_size();
        self.inner.metrics.set_cache_size(entries, bytes);
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

/// May this upstream answer be stored? Not with `Cache-Control: no-store`/`private`,
/// nor with `Set-Cookie`.
fn storable(headers: &HeaderMap) -> bool {
    if headers.contains_key(SET_COOKIE) {
        return false;
    }
    !headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            d.trim()
                .split('=')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        })
        .any(|d| d == "no-store" || d == "private")
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
    fn upstream_answers_that_must_not_be_stored() {
        let cases: [(&[(&str, &str)], bool); 6] = [
            (&[], true),
            (&[("cache-control", "max-age=10")], true),
            (&[("cache-control", "no-store")], false),
            (&[("cache-control", "max-age=0, Private")], false),
            (&[("cache-control", "private=\"x\"")], false),
            (&[("set-cookie", "a=b")], false),
        ];
        for (pairs, expected) in cases {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(*n, HeaderValue::from_str(v).expect("valid"));
            }
            assert_eq!(storable(&h), expected, "{pairs:?}");
        }
    }

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
