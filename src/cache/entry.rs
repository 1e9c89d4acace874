//! What the cache holds per key ([`Entry`]), and what a fetch hands it ([`Fill`]).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::query::raw::Broad;

/// A cached broad answer: the upstream bytes with the index the fetch built, plus what
/// the cache itself needs (the service ids for the invalidation index).
#[derive(Debug)]
pub struct Entry {
    /// Unique per fetched answer; memoised variants are keyed by it, so replacing or
    /// dropping the entry orphans its variants (and the byte-bounded LRU reclaims them).
    pub(super) id: u64,
    pub(super) broad: Broad,
    pub(super) service_ids: Vec<String>,
    /// Where the answer came from and how long that took (the access log's fields).
    pub(super) source: Arc<str>,
    pub(super) fetch_time: Duration,
    pub(super) fetched_at: Instant,
    /// Set by the stale hit that starts this entry's background refresh; cleared if
    /// the refresh fails, so that a later stale hit tries again.
    pub(super) refreshing: AtomicBool,
}

impl Entry {
    /// Identifies this answer among all the cache ever held (the memo key).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The broad answer, as fetched.
    pub fn body(&self) -> &Bytes {
        self.broad.body()
    }

    /// The broad answer with its index, what every variant is rendered from.
    pub fn broad(&self) -> &Broad {
        &self.broad
    }

    pub fn service_ids(&self) -> &[String] {
        &self.service_ids
    }

    /// The upstream (or tier) that produced the answer.
    pub fn source(&self) -> &Arc<str> {
        &self.source
    }

    pub fn fetch_time(&self) -> Duration {
        self.fetch_time
    }
}

/// What a fetch hands the cache: the answer and what the cache needs to store and
/// invalidate it. Built by the caller's fetch (the pipeline parses; the cache does not).
#[derive(Debug)]
pub struct Fill {
    /// The upstream answer, indexed.
    pub broad: Broad,
    /// Every service id the answer holds, as text (see [`crate::identity::ServiceId`]).
    pub service_ids: Vec<String>,
    /// False when the upstream forbade storing it (see [`may_store`](super::may_store)).
    pub storable: bool,
    pub source: Arc<str>,
    pub fetch_time: Duration,
    /// How old the answer already is: zero from the upstream, its age there from a
    /// shared tier (the entry then expires when the shared one does).
    pub age: Duration,
}
