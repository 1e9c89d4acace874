//! The cache's indexes over stored entries (service id → keys, owner → keys) and the
//! write epochs that keep a fetch which raced a write from being stored.
//!
//! Locking: one `Mutex<Index>` in the cache, held for map operations only (never across
//! an `.await`, never while calling into moka, whose eviction listener takes it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::key::{CacheOwner, Key};
use super::Entry;

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
    pub(super) tenant_written: HashMap<(Option<Bytes>, Option<Bytes>), (u64, Instant)>,
    pub(super) all_written: u64,
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
                .get(&(owner.tenant.clone(), owner.group.clone()))
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

    /// Forgets write marks older than any fetch can be, as of `now` (the cache's clock).
    pub(super) fn prune(&mut self, now: Instant, older_than: Duration) {
        const LIMIT: usize = 4096;
        if self.owner_written.len() > LIMIT {
            self.owner_written
                .retain(|_, (_, at)| now.duration_since(*at) < older_than);
        }
        if self.service_written.len() > LIMIT {
            self.service_written
                .retain(|_, (_, at)| now.duration_since(*at) < older_than);
        }
        if self.tenant_written.len() > LIMIT {
            self.tenant_written
                .retain(|_, (_, at)| now.duration_since(*at) < older_than);
        }
        if self.started.len() > 100_000 {
            self.started.clear();
        }
    }
}
