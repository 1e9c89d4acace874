//! The shared tier's side of an invalidation: markers newer than every entry it
//! touched (the step the outbox runs before publishing), and the admin's purge.

use super::SharedTier;
use crate::cache::Invalidation;
use crate::cluster::conn::OpError;
use crate::cluster::keys;
use crate::cluster::message::{Message, Partition, Scope};

/// The shared-tier step of an invalidation, and its message published right after it
/// in the same script (so the message never waits for a second round trip): the
/// step runs under `pcall`, so a Redis that refuses it (out of memory) still publishes
/// the message, then marked `shared_pending` (ARGV[8]) instead of ARGV[7]. ARGV[6] is
/// the channel, empty when only the step is owed. Returns {step done, receivers}.
const INVALIDATE: &str = r"
local done = pcall(function()
  if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[2], ARGV[2]) end
  local w = redis.call('INCR', KEYS[1])
  for i = 9, #ARGV do
    local t = ARGV[i]
    redis.call('SET', ARGV[3] .. t, w, 'PX', ARGV[1])
    local idx = ARGV[4] .. t
    for _, h in ipairs(redis.call('SMEMBERS', idx)) do redis.call('DEL', ARGV[5] .. h) end
    redis.call('DEL', idx)
  end
end)
local n = 0
if ARGV[6] ~= '' then
  if done then n = redis.call('PUBLISH', ARGV[6], ARGV[7])
  else n = redis.call('PUBLISH', ARGV[6], ARGV[8]) end
end
if done then return {1, n} end
return {0, n}
";

impl SharedTier {
    /// The script that makes everything a write touched unservable fleet-wide and
    /// deletes the entries it indexes, then (with `publish`: channel, payload, payload
    /// if the step failed) publishes its message. Customer ids are not part of any
    /// cache key, so they invalidate the whole tenant.
    pub(in crate::cluster) fn invalidate_cmd(
        &self,
        partition: &Partition,
        scope: &Scope,
        publish: Option<(&str, Vec<u8>, Vec<u8>)>,
    ) -> redis::Cmd {
        let tenant = || {
            format!(
                "t:{}",
                keys::tenant_hash(
                    partition.contact_center_id.as_deref(),
                    partition.group_id.as_deref()
                )
            )
        };
        let targets: Vec<String> = match scope {
            Scope::Everything | Scope::PurgeAll => vec!["all".to_owned()],
            Scope::WholeTenant => vec![tenant()],
            Scope::PurgeContact { contact_key } => {
                vec![format!(
                    "o:{}",
                    keys::owner_hash(&partition.owner(contact_key))
                )]
            }
            Scope::Touched { customer_ids, .. } if !customer_ids.is_empty() => vec![tenant()],
            Scope::Touched {
                contact_keys,
                service_ids,
                ..
            } => contact_keys
                .iter()
                .map(|ck| format!("o:{}", keys::owner_hash(&partition.owner(ck))))
                .chain(
                    service_ids
                        .iter()
                        .map(|id| format!("s:{}", keys::service_hash(id))),
                )
                .collect(),
        };
        let (channel, payload, failed) = publish.unwrap_or_default();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(INVALIDATE)
            .arg(2)
            .arg(self.names.counter())
            .arg(self.names.lifetime())
            .arg(self.policy.marker_ttl().as_millis() as u64)
            .arg(uuid::Uuid::new_v4().to_string())
            .arg(self.names.marker_prefix())
            .arg(self.names.index_prefix())
            .arg(self.names.entry_prefix())
            .arg(channel)
            .arg(payload)
            .arg(failed);
        for target in targets {
            cmd.arg(target);
        }
        cmd
    }

    /// The shared-tier step alone (no message), bounded by `op_timeout`.
    pub async fn invalidate(&self, partition: &Partition, scope: &Scope) -> Result<(), OpError> {
        let cmd = self.invalidate_cmd(partition, scope, None);
        let (done, _): (i64, i64) = self
            .conn
            .run(|mut manager| async move { cmd.query_async(&mut manager).await })
            .await?;
        if done == 1 {
            Ok(())
        } else {
            Err(OpError::Redis(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the shared tier refused an invalidation",
            ))))
        }
    }

    /// Deletes every shared entry of the namespace (the admin's `DELETE /cache`, after
    /// [`SharedTier::invalidate`] has made them unservable): `SCAN` + `UNLINK` in
    /// batches, each bounded by `op_timeout`, until `deadline`. Returns how many were
    /// deleted, and whether the scan finished (if not, their expiry ends the rest).
    pub async fn delete_all_entries(&self, deadline: std::time::Instant) -> (u64, bool) {
        let pattern = format!("{}*", self.names.entry_prefix());
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            if std::time::Instant::now() >= deadline {
                return (deleted, false);
            }
            let pattern = pattern.clone();
            let batch = self
                .conn
                .run(|mut manager| async move {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut manager)
                        .await?;
                    let unlinked = if keys.is_empty() {
                        0
                    } else {
                        redis::cmd("UNLINK")
                            .arg(keys)
                            .query_async::<u64>(&mut manager)
                            .await?
                    };
                    Ok((next, unlinked))
                })
                .await;
            match batch {
                Ok((next, unlinked)) => {
                    deleted += unlinked;
                    if next == 0 {
                        return (deleted, true);
                    }
                    cursor = next;
                }
                Err(error) => {
                    tracing::warn!(%error, "shared entries not all deleted; they expire");
                    return (deleted, false);
                }
            }
        }
    }

    /// [`SharedTier::invalidate`] for a local cache invalidation.
    pub async fn invalidate_local(
        &self,
        invalidation: &Invalidation,
        started_service_id: Option<&crate::identity::ServiceId>,
    ) -> Result<(), OpError> {
        match Message::body_of(invalidation, started_service_id) {
            Some((partition, scope)) => self.invalidate(&partition, &scope).await,
            None => Ok(()),
        }
    }
}
