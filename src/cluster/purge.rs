//! The admin purges, fleet-wide (`DELETE /cache`, `DELETE /cache/anonymous/{key}`):
//! the shared entries concerned made unservable (and, for everything, deleted), then a
//! purge message on the bus, in the order of a write's side effects (fleet contract
//! §2); the admin route then purges the local cache and answers with [`FleetPurge`].

use std::time::{Duration, Instant};

use serde::Serialize;

use super::member::Cluster;
use super::message::{Partition, Scope};
use crate::identity::Tenant;

/// How long `DELETE /cache` spends deleting shared entries (they are unservable from
/// the first step on; this only frees Redis memory sooner, the rest expires).
const DELETE_ENTRIES_FOR: Duration = Duration::from_secs(2);

/// What a purge reached beyond this replica, as the admin answer's `fleet` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetPurge {
    /// The purge message is in Redis: every subscribed replica has it applied within
    /// the bus delay (one that is not subscribed flushes when it subscribes again).
    pub reached: bool,
    /// Not reached: the message is held and published as soon as Redis answers.
    pub republishing: bool,
    /// The shared tier: `purged` (its entries concerned are unservable fleet-wide),
    /// `pending` (Redis did not answer: done with the republish) or `off`
    /// (`shared_cache = false`).
    pub shared_cache: &'static str,
    /// `DELETE /cache` only: shared entries deleted (the scan stops after 2 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_entries_deleted: Option<u64>,
}

impl Cluster {
    /// `DELETE /cache`, fleet-wide.
    pub async fn purge_all(&self) -> FleetPurge {
        self.purge(Partition::default(), Scope::PurgeAll).await
    }

    /// `DELETE /cache/anonymous/{contact_key}`, fleet-wide, in the tenant the
    /// request's headers name.
    pub async fn purge_contact(&self, tenant: &Tenant, contact_key: &str) -> FleetPurge {
        let partition = Partition::of(tenant);
        let scope = Scope::PurgeContact {
            contact_key: contact_key.to_owned(),
        };
        self.purge(partition, scope).await
    }

    async fn purge(&self, partition: Partition, scope: Scope) -> FleetPurge {
        let everything = scope == Scope::PurgeAll;
        // Shared tier, then the message; logged by the bus when it fails.
        let reached = self.bus.publish(partition, scope).await.is_ok();
        let shared_cache = match (&self.shared, reached) {
            (None, _) => "off",
            (Some(_), true) => "purged",
            (Some(_), false) => "pending",
        };
        let shared_entries_deleted = match (&self.shared, everything && reached) {
            (Some(tier), true) => {
                let (deleted, finished) = tier
                    .delete_all_entries(Instant::now() + DELETE_ENTRIES_FOR)
                    .await;
                if !finished {
                    tracing::warn!(deleted, "admin purge: shared entries left to expire");
                }
                Some(deleted)
            }
            _ => None,
        };
        tracing::info!(reached, shared_cache, "admin purge sent to the fleet");
        FleetPurge {
            reached,
            republishing: !reached,
            shared_cache,
            shared_entries_deleted,
        }
    }
}
