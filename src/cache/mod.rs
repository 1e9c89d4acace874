//! The anonymous-lookup cache (gateway contract §3): a single-flight store on moka.
//!
//! One entry per [`Key`] holds the *broad* answer for a contact key (the "all" route,
//! every include flag, the key's extension set) as the caller's fetch produced it — a
//! [`Broad`](crate::query::raw::Broad): the upstream bytes and their index of service spans — with the service ids
//! the invalidation index needs. The cache neither forwards nor parses (it names
//! `Broad` only to hold it, weigh it and own its bytes): [`Cache::get_or_fetch`] runs the caller's fetch (the
//! pipeline's `forward` of the broad query), and the pipeline's `post_filter` computes
//! every variant from the entry and memoises its rendering here ([`Memo`], keyed by
//! entry id), so that memos share the byte budget, the stats and the purges.
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

pub mod config;
mod directives;
mod entry;
mod fetch;
mod freshness;
mod index;
mod invalidate;
mod key;
mod metrics;
mod stats;

pub use directives::{request_directives, CacheDirectives};
pub use entry::{Entry, Fill};
pub use fetch::may_store;
pub use freshness::{CacheOutcome, Clock, Freshness, ManualClock, Policy, SystemClock};
pub use invalidate::Invalidation;
pub use key::{drop_empty_tenant_headers, CacheOwner, Key};
pub use metrics::CacheMetrics;

use fetch::Shared;
use index::Index;
use stats::{Stats, Waiting};

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderMap;
use moka::notification::RemovalCause;
use tokio::sync::watch;

use crate::query::{Extensions, TypeMap};
pub use config::CacheConfig;

/// The hasher of the cache's maps: foldhash, seeded per process. SipHash (the std
/// default) cost ~1.5k instructions per hit over the key, the memo key and the moka
/// maps; a random seed keeps bucket placement unpredictable to clients all the same.
type KeyHasher = foldhash::fast::RandomState;

/// How long a key whose answer was too large bypasses the cache (at most `ttl`).
const UNCACHEABLE_FOR: Duration = Duration::from_secs(10);

/// Decides whether a stored entry may still be served, beyond its freshness: a fleet
/// that cannot hear invalidations serves local entries only briefly. Asked on every
/// hit, so it must be cheap (an atomic load).
pub trait ServeGate: Send + Sync {
    fn may_serve(&self, stored_at: Instant, now: Instant) -> bool;
}

/// An entry [`Cache::get_or_fetch`] found or fetched.
#[derive(Debug)]
pub struct Found {
    pub entry: Arc<Entry>,
    pub outcome: CacheOutcome,
    /// Set when served from a stored entry (the `Age` header).
    pub age: Option<Duration>,
}

/// Why [`Cache::get_or_fetch`] has no entry.
#[derive(Debug)]
pub enum NoEntry<E> {
    /// The key is remembered as uncacheable: the caller forwards the client's own query.
    Uncacheable,
    /// The fetch this lookup started or joined failed (its error is shared with every
    /// waiter, never stored), or the wait for it ran out.
    Failed { error: E, outcome: CacheOutcome },
}

/// The error type of a fetch: shared with its waiters, and told what the cache itself
/// can go wrong with while waiting.
pub trait FetchError: Clone + Send + Sync + 'static {
    /// May a stale entry stand in for this failure (stale-if-error)?
    fn is_upstream_failure(&self) -> bool;
    /// A waiter gave up after the cache's wait bound.
    fn wait_timed_out() -> Self;
    /// The fetch task ended without an answer.
    fn fetch_lost() -> Self;
}

/// One memoised rendering of an entry. `tag` is what the caller's hash was computed
/// from; the caller compares it on a hit, so a hash collision can only cost a
/// recomputation, never a wrong answer.
#[derive(Debug)]
pub struct Memo {
    pub tag: Box<str>,
    pub body: Bytes,
}

/// The cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    entries: moka::future::Cache<Arc<Key>, Arc<Entry>, KeyHasher>,
    /// (entry id, variant hash) → rendered bytes.
    variants: moka::future::Cache<(u64, u64), Arc<Memo>, KeyHasher>,
    /// Keys whose answers were too large to store, remembered briefly so their
    /// requests bypass instead of queueing behind a fetch that will not be stored.
    /// The value is when the mark ends, on `clock` (moka's own TTL is only a backstop
    /// that bounds memory).
    uncacheable: moka::sync::Cache<Arc<Key>, Instant, KeyHasher>,
    uncacheable_for: Duration,
    inflight: Mutex<HashMap<Arc<Key>, watch::Receiver<Option<Shared>>, KeyHasher>>,
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
    /// Set once when the replica joins a fleet; `None` serves every fresh entry.
    gate: std::sync::OnceLock<Arc<dyn ServeGate>>,
    metrics: CacheMetrics,
    stats: Arc<Stats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one stored answer costs in memory: the body and its index, the key, and the bookkeeping
/// the weigher would otherwise not see (moka's node and deque entries, the `Entry`,
/// the owner and service-id index entries, allocator rounding). The constants were
/// set from RSS measured by `bench/run.sh --only memory` (2.3 KB answers) and
/// `bench/flood.sh` (unique keys with small or empty answers: 768 and 256 left the
/// cache resident at 1.2 x its weighed bytes; 1,280 and 384 measured 0.95 x).
fn entry_weight(key: &Key, entry: &Entry) -> usize {
    const PER_ENTRY: usize = 1280;
    const PER_SERVICE_ID: usize = 192;
    entry.broad.weight()
        + key.weight()
        + entry.service_ids.iter().map(String::len).sum::<usize>()
        + PER_SERVICE_ID * entry.service_ids.len()
        + PER_ENTRY
}

/// One memoised variant: its bytes, its memo key and moka's node.
fn variant_weight(query: &str, body: &Bytes) -> usize {
    const PER_VARIANT: usize = 384;
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
        metrics: CacheMetrics,
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
                listener_metrics.eviction(label);
                // On `Replaced` too: the new entry is indexed already, and `remove`
                // only drops mappings that still name the old entry's id, i.e. the
                // services the new answer no longer holds.
                lock(&listener_index).remove(&key, &entry);
            })
            .build_with_hasher(KeyHasher::default());
        let variants = moka::future::Cache::builder()
            .max_capacity(variant_budget)
            .weigher(|_: &(u64, u64), memo: &Arc<Memo>| {
                weight(variant_weight(&memo.tag, &memo.body))
            })
            .time_to_live(policy.retention())
            .build_with_hasher(KeyHasher::default());
        let uncacheable_for = policy.ttl.min(UNCACHEABLE_FOR);
        let uncacheable = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(uncacheable_for)
            .build_with_hasher(KeyHasher::default());
        Cache {
            inner: Arc::new(Inner {
                entries,
                variants,
                uncacheable,
                uncacheable_for,
                inflight: Mutex::new(HashMap::default()),
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
                gate: std::sync::OnceLock::new(),
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

    /// The key of an owner's entry for a request with these headers (its credential)
    /// and this extension set.
    pub fn key(&self, headers: &HeaderMap, owner: CacheOwner, extensions: &Extensions) -> Key {
        Key::new(
            headers,
            owner,
            extensions,
            self.inner.share_across_credentials,
        )
    }

    /// The entry for `key`: stored and fresh (or stale, refreshed in the background
    /// once), or fetched by `fetch` as its own task, single-flight: concurrent misses
    /// of a key share one fetch, a client that goes away cancels nothing, and a fetch
    /// that started before an invalidation touching its answer is not stored.
    /// `no_cache` skips stored entries (request `Cache-Control: no-cache`) but still
    /// stores the answer. A failed fetch may be covered by a stale entry
    /// (stale-if-error).
    ///
    /// `fetch` is given the key, and called only when the lookup fetches: a hit builds
    /// nothing for it. This is the seam a shared second tier plugs into: it is asked on a
    /// local miss, inside the single flight, before `fetch`.
    pub async fn get_or_fetch<F, Fut, E>(
        &self,
        key: Key,
        no_cache: bool,
        fetch: F,
    ) -> Result<Found, NoEntry<E>>
    where
        F: FnOnce(&Key) -> Fut,
        Fut: Future<Output = Result<Fill, E>> + Send + 'static,
        E: FetchError,
    {
        let key = Arc::new(key);
        let policy = self.policy();
        let existing = self
            .inner
            .entries
            .get(&key)
            .await
            .filter(|entry| self.may_serve(entry));
        if let (Some(entry), false) = (&existing, no_cache) {
            let age = self.age(entry);
            match policy.freshness(age) {
                Freshness::Fresh => return Ok(self.hit(entry, age, false)),
                Freshness::Stale => {
                    self.refresh(&key, entry, fetch);
                    return Ok(self.hit(entry, age, false));
                }
                Freshness::Expired => {}
            }
        }
        // Checked only without a usable entry: an answer too large to store also
        // drops the entry it could not replace.
        if self.is_uncacheable(&key) {
            self.count_outcome(&CacheOutcome::Bypass);
            return Err(NoEntry::Uncacheable);
        }

        let (receiver, leader) = self.join_or_start(&key, fetch);
        match self.wait::<E>(receiver).await {
            Ok(fetched) => {
                let outcome = if no_cache {
                    CacheOutcome::Revalidated {
                        stored: fetched.stored,
                    }
                } else {
                    CacheOutcome::Miss {
                        stored: fetched.stored,
                        collapsed: !leader,
                    }
                };
                self.count_outcome(&outcome);
                // A fill from a shared tier is as old as that tier's entry: `Age` says
                // so (a fresh upstream answer has none).
                let age = Some(self.age(&fetched.entry)).filter(|a| *a >= Duration::from_secs(1));
                Ok(Found {
                    entry: fetched.entry,
                    outcome,
                    age,
                })
            }
            Err(error) => {
                if let Some(entry) = existing.filter(|_| error.is_upstream_failure()) {
                    let age = self.age(&entry);
                    if policy.usable_if_error(age) {
                        return Ok(self.hit(&entry, age, true));
                    }
                }
                let outcome = CacheOutcome::Miss {
                    stored: false,
                    collapsed: !leader,
                };
                self.count_outcome(&outcome);
                Err(NoEntry::Failed { error, outcome })
            }
        }
    }

    /// Joins a fleet: from now on a hit is served only if `gate` allows it.
    pub fn set_gate(&self, gate: Arc<dyn ServeGate>) {
        let _ = self.inner.gate.set(gate);
    }

    fn may_serve(&self, entry: &Entry) -> bool {
        self.inner
            .gate
            .get()
            .is_none_or(|gate| gate.may_serve(entry.fetched_at, self.inner.clock.now()))
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

    fn hit(&self, entry: &Arc<Entry>, age: Duration, stale_if_error: bool) -> Found {
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
        Found {
            entry: entry.clone(),
            outcome,
            age: Some(age),
        }
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
        self.inner.metrics.result(outcome.label());
    }

    /// A memoised rendering of an entry (see [`Memo`]); `hash` is the caller's.
    pub async fn memo(&self, entry: &Entry, hash: u64) -> Option<Arc<Memo>> {
        self.inner.variants.get(&(entry.id, hash)).await
    }

    /// Memoises a rendering of an entry. It is weighed into the byte budget and
    /// dropped with the entry's invalidation-wide purges and on a `service_type`
    /// map change.
    pub async fn memoise(&self, entry: &Entry, hash: u64, memo: Memo) {
        self.inner
            .variants
            .insert((entry.id, hash), Arc::new(memo))
            .await;
    }
}
