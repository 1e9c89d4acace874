//! Fetching broad answers: single-flight (one upstream request per key, run as its own
//! task so no client can cancel it), the background refresh of stale entries, and
//! storing an answer unless a write raced it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, CACHE_CONTROL, SET_COOKIE};
use http::Method;
use tokio::sync::watch;

use super::*;
use crate::error::GatewayError;
use crate::query::filter::{self, Service};
use crate::upstream::Upstreams;

pub(super) type Shared = Arc<Result<Fetch, LookupError>>;

#[derive(Debug)]
pub(super) struct Fetch {
    pub(super) entry: Arc<Entry>,
    pub(super) services: Vec<Service>,
    pub(super) stored: bool,
    pub(super) target: Arc<str>,
    pub(super) elapsed: std::time::Duration,
}

impl Cache {
    /// Starts the one background refresh of a stale entry.
    ///
    /// The single-flight map alone does not make it one: a stale hit that read the
    /// entry just before the refresh stored its successor, and reaches the map just
    /// after the refresh left it, would start a second. So the first stale hit of an
    /// entry claims its refresh; the claim is given back only if the refresh fails.
    pub(super) fn refresh(
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
    pub(super) fn join_or_start(
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

    pub(super) async fn wait(&self, mut receiver: watch::Receiver<Option<Shared>>) -> Shared {
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
}
