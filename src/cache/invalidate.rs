//! Applying what a successful write invalidates (gateway contract §3.3), and the
//! admin purges. Which writes invalidate what is decided by the one path table
//! (`routes`) and the pipeline's write stage; this module only applies it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::key::{CacheOwner, Key};
use super::lock;
use crate::identity::{ContactKey, ServiceId, Tenant};

/// What a successful write invalidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// One owner's entries: a start naming a contact key, the admin's purge of one key.
    Owner { owner: CacheOwner },
    /// A write to one service: every entry holding it.
    Service { service_id: ServiceId },
    /// A write the gateway cannot attribute to keys (`POST /maintenance/...`): every
    /// entry of the writer's tenant partition, and no other tenant's.
    Tenant { tenant: Tenant },
    /// Every entry of every tenant (the admin purge, a fleet flush).
    Everything,
}

impl super::Cache {
    /// Applies a successful write, made through this gateway or announced by another
    /// replica. `started_service_id` is the id a start answered with.
    pub async fn invalidate(
        &self,
        invalidation: &Invalidation,
        started_service_id: Option<&ServiceId>,
    ) {
        let epoch = self.inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let now = self.inner.clock.now();
        let (keys, owners): (Vec<Arc<Key>>, Option<Vec<CacheOwner>>) = {
            let mut index = lock(&self.inner.index);
            index.prune(now, self.inner.wait_bound * 2);
            let marked = match invalidation {
                Invalidation::Owner { owner } => {
                    index.mark_owner(owner, epoch, now);
                    if let Some(id) = started_service_id {
                        index.note_started(id, owner);
                    }
                    let keys = index
                        .by_owner
                        .get(owner)
                        .map(|keys| keys.keys().cloned().collect())
                        .unwrap_or_default();
                    (keys, Some(vec![owner.clone()]))
                }
                Invalidation::Service { service_id } => {
                    index.mark_service(service_id.as_str(), epoch, now);
                    let keys: Vec<Arc<Key>> = index
                        .by_service
                        .get(service_id.as_str())
                        .map(|keys| keys.keys().cloned().collect())
                        .unwrap_or_default();
                    let mut owners: Vec<CacheOwner> =
                        keys.iter().map(|k| k.owner.clone()).collect();
                    owners.extend(index.started.get(service_id.as_str()).cloned());
                    owners.sort_by(|a, b| a.contact_key().cmp(b.contact_key()));
                    owners.dedup();
                    for owner in &owners {
                        index.mark_owner(owner, epoch, now);
                    }
                    // Unknown owner: any in-flight fetch might hold the service.
                    (keys, (!owners.is_empty()).then_some(owners))
                }
                Invalidation::Tenant { tenant } => {
                    index.mark_tenant(tenant, epoch, now);
                    let keys = index
                        .by_owner
                        .iter()
                        .filter(|(owner, _)| owner.in_partition(tenant))
                        .flat_map(|(_, keys)| keys.keys().cloned())
                        .collect();
                    (keys, Some(Vec::new()))
                }
                Invalidation::Everything => {
                    index.all_written = epoch;
                    (Vec::new(), None)
                }
            };
            // Past its byte bound, the write tracking collapses to one mark at this
            // epoch: every fetch that started before now is then not stored, which is
            // safe, and the memory is given back.
            index.bound_tracking(epoch);
            marked
        };
        {
            let mut inflight = lock(&self.inner.inflight);
            match (&owners, invalidation) {
                (_, Invalidation::Tenant { tenant }) => {
                    inflight.retain(|key, _| !key.owner.in_partition(tenant));
                }
                (Some(owners), _) => inflight.retain(|key, _| !owners.contains(&key.owner)),
                (None, _) => inflight.clear(),
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

    /// Drops everything at once, without waiting (a fleet flush: messages may have
    /// been missed). Fetches in flight are detached and will not be stored.
    pub fn flush(&self) {
        let epoch = self.inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.inner.index).all_written = epoch;
        lock(&self.inner.inflight).clear();
        self.inner.entries.invalidate_all();
        self.inner.variants.invalidate_all();
    }

    /// Admin: drops everything.
    pub async fn purge_all(&self) {
        self.invalidate(&Invalidation::Everything, None).await;
        self.inner.uncacheable.invalidate_all();
        self.inner.entries.run_pending_tasks().await;
    }

    /// Admin: drops one contact key's entries in `tenant`. Returns how many entries
    /// were dropped.
    pub async fn purge_contact(&self, tenant: Tenant, contact_key: ContactKey) -> usize {
        let owner = CacheOwner::new(tenant, contact_key);
        let count = lock(&self.inner.index)
            .by_owner
            .get(&owner)
            .map_or(0, HashMap::len);
        self.invalidate(&Invalidation::Owner { owner }, None).await;
        count
    }
}
