//! The cache's indexes over stored entries (service id → keys, owner → keys) and the
//! write epochs that keep a fetch which raced a write from being stored.
//!
//! Locking: one `Mutex<Index>` in the cache, held for map operations only (never across
//! an `.await`, never while calling into moka, whose eviction listener takes it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::key::{CacheOwner, Key};
use super::Entry;
use crate::identity::{ServiceId, Tenant};

/// The byte bound of the write tracking (the marks and the start index). Tenant and
/// contact-key values are bounded per request (`max_tenant_bytes`, `max_key_bytes`),
/// so this holds tens of thousands of writes; past it the tracking collapses to one
/// mark (see [`Index::bound_tracking`]).
pub(super) const TRACKING_BYTES: usize = 8 << 20;

/// What one tracked entry costs beside its text: map slot, epoch, instant, pointers.
const TRACKED_OVERHEAD: usize = 64;

/// Service-id and owner indexes over stored entries, and the write epochs.
#[derive(Default)]
pub(super) struct Index {
    pub(super) by_service: HashMap<String, HashMap<Arc<Key>, u64>>,
    pub(super) by_owner: HashMap<CacheOwner, HashMap<Arc<Key>, u64>>,
    /// Service id → owner, from start answers: a write to a service whose owner has no
    /// stored entry yet still detaches that owner's in-flight fetches.
    pub(super) started: HashMap<String, CacheOwner>,
    pub(super) owner_written: HashMap<CacheOwner, (u64, Instant)>,
    pub(super) service_written: HashMap<String, (u64, Instant)>,
    /// Tenant partition (`ContactCenterId`, `GroupId`) → last whole-tenant write.
    pub(super) tenant_written: HashMap<Tenant, (u64, Instant)>,
    pub(super) all_written: u64,
    /// Bytes held by the marks and `started`, as counted when inserted (a replaced
    /// entry is counted again: the count only errs high, and is recounted on prune).
    pub(super) tracked_bytes: usize,
}

impl Index {
    pub(super) fn add(&mut self, key: &Arc<Key>, entry: &Entry) {
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

    pub(super) fn remove(&mut self, key: &Arc<Key>, entry: &Entry) {
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
    pub(super) fn written_since(
        &self,
        owner: &CacheOwner,
        service_ids: &[String],
        epoch: u64,
    ) -> bool {
        self.all_written > epoch
            || self
                .tenant_written
                .get(owner.tenant())
                .is_some_and(|(e, _)| *e > epoch)
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

    /// Marks `owner` written at `epoch`.
    pub(super) fn mark_owner(&mut self, owner: &CacheOwner, epoch: u64, now: Instant) {
        self.tracked_bytes += owner.bytes() + TRACKED_OVERHEAD;
        self.owner_written.insert(owner.clone(), (epoch, now));
    }

    /// Marks a service written at `epoch`.
    pub(super) fn mark_service(&mut self, service_id: &str, epoch: u64, now: Instant) {
        self.tracked_bytes += service_id.len() + TRACKED_OVERHEAD;
        self.service_written
            .insert(service_id.to_owned(), (epoch, now));
    }

    /// Marks a whole tenant partition written at `epoch`.
    pub(super) fn mark_tenant(&mut self, tenant: &Tenant, epoch: u64, now: Instant) {
        self.tracked_bytes += tenant.bytes() + TRACKED_OVERHEAD;
        self.tenant_written.insert(tenant.clone(), (epoch, now));
    }

    /// Remembers whose service a start created.
    pub(super) fn note_started(&mut self, service_id: &ServiceId, owner: &CacheOwner) {
        self.tracked_bytes += service_id.as_str().len() + owner.bytes() + TRACKED_OVERHEAD;
        self.started
            .insert(service_id.as_str().to_owned(), owner.clone());
    }

    /// Keeps the write tracking within [`TRACKING_BYTES`]: past it, every mark is
    /// replaced by one at `epoch` (`all_written`), so a fetch that started before now
    /// is not stored, exactly as if each mark had been kept; and the start index is
    /// forgotten, so a later write to one of those services detaches every fetch in
    /// flight instead of its owner's alone. Both only cost a refetch, never a stale
    /// answer.
    pub(super) fn bound_tracking(&mut self, epoch: u64) {
        if self.tracked_bytes <= TRACKING_BYTES {
            return;
        }
        self.all_written = self.all_written.max(epoch);
        self.owner_written = HashMap::new();
        self.service_written = HashMap::new();
        self.tenant_written = HashMap::new();
        self.started = HashMap::new();
        self.tracked_bytes = 0;
    }

    /// Forgets write marks older than any fetch can be, as of `now` (the cache's clock).
    pub(super) fn prune(&mut self, now: Instant, older_than: Duration) {
        const LIMIT: usize = 4096;
        let mut pruned = false;
        if self.owner_written.len() > LIMIT {
            self.owner_written.retain(younger_than(now, older_than));
            pruned = true;
        }
        if self.service_written.len() > LIMIT {
            self.service_written.retain(younger_than(now, older_than));
            pruned = true;
        }
        if self.tenant_written.len() > LIMIT {
            self.tenant_written.retain(younger_than(now, older_than));
            pruned = true;
        }
        if self.started.len() > 100_000 {
            self.started.clear();
            pruned = true;
        }
        if pruned {
            self.tracked_bytes = self.recount();
        }
    }

    /// The bytes the marks and `started` hold now.
    fn recount(&self) -> usize {
        let owners: usize = self.owner_written.keys().map(CacheOwner::bytes).sum();
        let services: usize = self.service_written.keys().map(String::len).sum();
        let tenants: usize = self.tenant_written.keys().map(Tenant::bytes).sum();
        let started: usize = self
            .started
            .iter()
            .map(|(id, owner)| id.len() + owner.bytes())
            .sum();
        let count = self.owner_written.len()
            + self.service_written.len()
            + self.tenant_written.len()
            + self.started.len();
        owners + services + tenants + started + count * TRACKED_OVERHEAD
    }
}

/// A `retain` predicate: marks made less than `age` before `now`.
fn younger_than<K>(now: Instant, age: Duration) -> impl FnMut(&K, &mut (u64, Instant)) -> bool {
    move |_, (_, at)| now.duration_since(*at) < age
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ContactKey;
    use bytes::Bytes;

    fn owner(n: usize, tenant_bytes: usize) -> CacheOwner {
        let mut center = vec![b'c'; tenant_bytes];
        center.extend_from_slice(n.to_string().as_bytes());
        CacheOwner::new(
            Tenant::new(Some(Bytes::from(center)), None),
            ContactKey::new(&format!("+{n:011}")),
        )
    }

    /// 20,000 starts with 15 KB tenants (300 MB of marks if each were kept) stay
    /// within the bound, and a fetch that started before any of them is still refused
    /// storage, for an owner marked before the collapse and one marked after.
    #[test]
    fn write_tracking_is_bounded_in_bytes_and_stays_safe() {
        let mut index = Index::default();
        let now = Instant::now();
        let fetch_started_at = 0;
        for n in 0..20_000u64 {
            let epoch = n + 1;
            let owner = owner(n as usize, 15_000);
            index.mark_owner(&owner, epoch, now);
            index.note_started(&ServiceId::normalise(&n.to_string()), &owner);
            index.bound_tracking(epoch);
            assert!(index.tracked_bytes <= TRACKING_BYTES, "after {n} writes");
        }
        let heap: usize = index
            .owner_written
            .keys()
            .map(CacheOwner::bytes)
            .sum::<usize>()
            + index.started.values().map(CacheOwner::bytes).sum::<usize>();
        assert!(heap <= TRACKING_BYTES, "{heap} bytes held");
        for n in [0, 19_999] {
            assert!(
                index.written_since(&owner(n, 15_000), &[], fetch_started_at),
                "owner {n}"
            );
        }
        // A fetch that starts after the last write is stored again.
        assert!(!index.written_since(&owner(7, 15_000), &[], 20_000));
    }
}
