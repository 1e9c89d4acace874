//! The single flight: one fetch per key, run as its own task so no client can cancel
//! it; the background refresh of stale entries; storing an answer unless a write
//! raced it.

use std::any::Any;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::{HeaderMap, CACHE_CONTROL, SET_COOKIE};
use tokio::sync::watch;

use super::*;

/// What a fetch task publishes to its waiters. The error is the fetch's own type,
/// erased so that one in-flight map serves every caller; [`Cache::wait`] restores it.
pub(super) type Shared = Arc<Result<Fetched, Arc<dyn Any + Send + Sync>>>;

/// A fetched entry, and whether it was stored.
#[derive(Debug, Clone)]
pub(super) struct Fetched {
    pub(super) entry: Arc<Entry>,
    pub(super) stored: bool,
}

impl Cache {
    /// Starts the one background refresh of a stale entry.
    ///
    /// The single-flight map alone does not make it one: a stale hit that read the
    /// entry just before the refresh stored its successor, and reaches the map just
    /// after the refresh left it, would start a second. So the first stale hit of an
    /// entry claims its refresh; the claim is given back only if the refresh fails.
    pub(super) fn refresh<F, Fut, E>(&self, key: &Arc<Key>, entry: &Arc<Entry>, fetch: F)
    where
        F: FnOnce(&Key) -> Fut,
        Fut: Future<Output = Result<Fill, E>> + Send + 'static,
        E: FetchError,
    {
        if entry.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (mut receiver, _) = self.join_or_start(key, fetch);
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

    /// Joins the in-flight fetch for `key`, or starts `fetch` as its own task.
    pub(super) fn join_or_start<F, Fut, E>(
        &self,
        key: &Arc<Key>,
        fetch: F,
    ) -> (watch::Receiver<Option<Shared>>, bool)
    where
        F: FnOnce(&Key) -> Fut,
        Fut: Future<Output = Result<Fill, E>> + Send + 'static,
        E: FetchError,
    {
        let mut inflight = lock(&self.inner.inflight);
        if let Some(receiver) = inflight.get(key) {
            return (receiver.clone(), false);
        }
        let (sender, receiver) = watch::channel(None);
        inflight.insert(key.clone(), receiver.clone());
        drop(inflight);

        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        let fetching = fetch(key);
        let this = self.clone();
        let key = key.clone();
        let mine = receiver.clone();
        tokio::spawn(async move {
            let result = match fetching.await {
                Ok(fill) => Ok(this.store(&key, fill, epoch).await),
                Err(error) => Err(Arc::new(error) as Arc<dyn Any + Send + Sync>),
            };
            let _ = sender.send(Some(Arc::new(result)));
            let mut inflight = lock(&this.inner.inflight);
            if inflight.get(&key).is_some_and(|r| r.same_channel(&mine)) {
                inflight.remove(&key);
            }
        });
        (receiver, true)
    }

    pub(super) async fn wait<E: FetchError>(
        &self,
        mut receiver: watch::Receiver<Option<Shared>>,
    ) -> Result<Fetched, E> {
        let _waiting = Waiting::enter(&self.inner.stats.waiting);
        let waited = tokio::time::timeout(
            self.inner.wait_bound,
            receiver.wait_for(|value| value.is_some()),
        )
        .await;
        let shared = match waited {
            Ok(Ok(value)) => value.clone(),
            Ok(Err(_)) => return Err(E::fetch_lost()),
            Err(_) => return Err(E::wait_timed_out()),
        };
        match shared.as_deref() {
            Some(Ok(fetched)) => Ok(fetched.clone()),
            // Every fetch of a key comes from the same caller type; a mismatch would
            // be our bug, and is answered as a lost fetch rather than a panic.
            Some(Err(error)) => Err(error
                .downcast_ref::<E>()
                .cloned()
                .unwrap_or_else(E::fetch_lost)),
            None => Err(E::fetch_lost()),
        }
    }

    /// Stores a fetched answer unless it is too large, forbidden, or raced a write.
    async fn store(&self, key: &Arc<Key>, fill: Fill, epoch: u64) -> Fetched {
        let entry = Arc::new(Entry {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            // A copy: the fetched body may be a slice of hyper's connection read
            // buffer, and keeping it would pin that whole buffer (8 KiB or more).
            broad: fill.broad.with_own_body(),
            service_ids: fill.service_ids,
            source: fill.source,
            fetch_time: fill.fetch_time,
            fetched_at: {
                let now = self.inner.clock.now();
                now.checked_sub(fill.age).unwrap_or(now)
            },
            refreshing: AtomicBool::new(false),
        });
        let too_large = entry.body().len() > self.inner.max_entry_bytes
            || entry_weight(key, &entry) > self.inner.entry_budget;
        if too_large {
            let until = self.inner.clock.now() + self.inner.uncacheable_for;
            self.inner.uncacheable.insert(key.clone(), until);
        }
        let cacheable = !too_large && fill.storable;
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
        Fetched { entry, stored }
    }
}

/// May an upstream answer with these headers be stored? Not with
/// `Cache-Control: no-store`/`private`, nor with `Set-Cookie`.
pub fn may_store(headers: &HeaderMap) -> bool {
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
            assert_eq!(may_store(&h), expected, "{pairs:?}");
        }
    }
}
