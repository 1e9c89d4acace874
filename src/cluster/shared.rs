//! The shared tier: broad entries in Redis, so a replica's local miss can be another
//! replica's earlier fetch (fleet contract §2, §4). The fleet lock is in `lock`.
//!
//! Nothing here is on the hit path: the cache calls [`SharedTier::lookup`] only after a
//! local miss. Every call is bounded by `op_timeout`; a timeout or an error is a shared
//! miss (counted), never an error for the client.
//!
//! No resurrection, across replicas and Redis restarts:
//! - One counter (`…w`) is advanced by every invalidation, which also writes a *marker*
//!   per thing it touched (owner, service, tenant, everything) holding the new counter
//!   value, kept for as long as any entry or in-flight fetch can live.
//! - A lookup returns the counter as a [`Generation`]; a fetch stores its answer with
//!   the generation it started under, and the store script drops it if any relevant
//!   marker is newer (a write happened during the fetch).
//! - A lookup drops an entry that a newer marker covers, so `WholeTenant` and
//!   `Everything` need no scan; owner and service invalidations also delete the entries
//!   they index (`…i:o:`, `…i:s:` sets), to free memory at once.
//! - `…id` names the Redis's lifetime: a generation from before a Redis restart (which
//!   lost counter and markers) never matches, so such a fetch is not stored.
//!
//! This needs a single Redis (or a primary), not Redis Cluster: scripts compute keys.
//! Markers must not be evicted (an evicted marker could let a pre-write entry be
//! served): run Redis with `maxmemory-policy noeviction` and enough memory. Markers and
//! entries carry expiries, so every `volatile-*` policy could evict them too.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::{Script, ScriptInvocation, Value};

use super::conn::{Conn, OpError};
use super::keys::{self, Hash, Names};
use super::liveness::Liveness;
use super::message::ReplicaId;
use super::metrics::ClusterMetrics;
use crate::cache::Key;

mod invalidate;

/// How long a shared tier keeps things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedPolicy {
    /// ttl + stale-while-revalidate + stale-if-error: an entry's whole useful life.
    pub entry_ttl: Duration,
    /// The longest a fetch can take (the upstream deadline with its retries); also
    /// the fleet lock's expiry, so a replica that dies holding it blocks no one longer.
    pub fetch_window: Duration,
    /// `[cache] max_entry_bytes`: a body the local cache would refuse is not written
    /// to Redis, and one read from Redis over it (written by a replica with a larger
    /// bound) is a miss, counted as `too_large`.
    pub max_entry_bytes: usize,
    /// `[cache] ttl`: an entry older than this is never used for a refill (it lives
    /// on only for stale-if-error), so a write that bypasses every replica is seen
    /// within `ttl` fleet-wide, as on one replica.
    pub ttl: Duration,
    /// `[cluster] shared_max_bytes`: bytes the whole namespace may store per
    /// `entry_ttl` window; past it an entry is not stored (counted `over_budget`).
    pub max_bytes: u64,
    /// `[cluster] shared_tenant_max_bytes`: the same, per tenant partition.
    pub tenant_max_bytes: u64,
}

impl SharedPolicy {
    fn marker_ttl(&self) -> Duration {
        self.entry_ttl.max(self.fetch_window) + Duration::from_secs(1)
    }
}

/// The generation a fetch started under; pass it to [`SharedTier::store`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    lifetime: String,
    counter: i64,
}

/// A broad answer from the shared tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedEntry {
    pub body: Bytes,
    /// The generation current when it was read (a refill of an expired entry is
    /// fetched under it).
    pub generation: Generation,
    /// Time since the fetch that produced it (the `Age` of a local entry made from it:
    /// store it locally as fetched `age` ago).
    pub age: Duration,
    pub service_ids: Vec<String>,
}

/// What [`SharedTier::lookup`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SharedLookup {
    Hit(SharedEntry),
    /// Fetch; store the answer under this generation. `None` when Redis did not answer
    /// (then the answer must not be stored in the shared tier).
    Miss(Option<Generation>),
}

/// What the lookup script found, before it is counted.
pub(super) enum Looked {
    Hit(SharedEntry),
    Miss(Generation),
    /// An entry over `max_entry_bytes`: a miss, counted apart.
    TooLarge(Generation),
}

/// The shared tier. Cheap to clone.
#[derive(Clone)]
pub struct SharedTier {
    pub(super) conn: Conn,
    pub(super) names: Names,
    pub(super) policy: SharedPolicy,
    pub(super) replica: ReplicaId,
    pub(super) metrics: ClusterMetrics,
    /// Degraded: no refill from this tier ([`Liveness::may_refill`]).
    pub(super) liveness: std::sync::Arc<Liveness>,
}

static LOOKUP_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LOOKUP));
static STORE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(STORE));

const LOOKUP: &str = r"
local id = redis.call('GET', KEYS[6])
if not id then redis.call('SET', KEYS[6], ARGV[1]); id = ARGV[1] end
local w = redis.call('GET', KEYS[5]) or '0'
local e = redis.call('HMGET', KEYS[1], 'b', 'at', 'w', 'sh', 's', 'id')
if not e[1] then return {id, w} end
if #e[1] > tonumber(ARGV[3]) then return {id, w, 0} end
local ew = tonumber(e[3])
local function newer(k) local m = redis.call('GET', k); return m and tonumber(m) > ew end
local stale = e[6] ~= id or newer(KEYS[2]) or newer(KEYS[3]) or newer(KEYS[4])
if not stale then
  for h in string.gmatch(e[4], '[^,]+') do
    if newer(ARGV[2] .. h) then stale = true; break end
  end
end
if stale then redis.call('DEL', KEYS[1]); return {id, w} end
return {id, w, e[1], e[2], e[5]}
";

const STORE: &str = r"
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return 0 end
local size = tonumber(ARGV[14])
local function over(k, max)
  local used = tonumber(redis.call('GET', k) or '0')
  return used + size > tonumber(max)
end
if over(KEYS[7], ARGV[12]) or over(KEYS[8], ARGV[13]) then return 2 end
local w0 = tonumber(ARGV[2])
local function newer(k) local m = redis.call('GET', k); return m and tonumber(m) > w0 end
if newer(KEYS[2]) or newer(KEYS[3]) or newer(KEYS[4]) then return 0 end
for h in string.gmatch(ARGV[5], '[^,]+') do
  if newer(ARGV[9] .. 's:' .. h) then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'b', ARGV[3], 'at', ARGV[4], 'w', ARGV[2], 'sh', ARGV[5], 's', ARGV[6], 'id', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
for _, k in ipairs({KEYS[7], KEYS[8]}) do
  if redis.call('INCRBY', k, size) == size then redis.call('PEXPIRE', k, ARGV[8]) end
end
redis.call('SADD', KEYS[6], ARGV[11])
redis.call('PEXPIRE', KEYS[6], ARGV[8])
for h in string.gmatch(ARGV[5], '[^,]+') do
  local idx = ARGV[10] .. 's:' .. h
  redis.call('SADD', idx, ARGV[11])
  redis.call('PEXPIRE', idx, ARGV[8])
end
return 1
";

/// Where one cache key's things live.
struct Located {
    entry_hash: Hash,
    entry: String,
    owner: Hash,
    tenant: Hash,
    owner_marker: String,
    tenant_marker: String,
    all_marker: String,
}

impl Located {
    /// `script` with the keys every entry script starts with: the entry, then its
    /// owner's, its tenant's and everything's markers.
    fn invocation<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&self.entry)
            .key(&self.owner_marker)
            .key(&self.tenant_marker)
            .key(&self.all_marker);
        invocation
    }
}

impl SharedTier {
    pub fn new(
        conn: Conn,
        names: Names,
        policy: SharedPolicy,
        replica: ReplicaId,
        metrics: ClusterMetrics,
        liveness: std::sync::Arc<Liveness>,
    ) -> SharedTier {
        SharedTier {
            conn,
            names,
            policy,
            replica,
            metrics,
            liveness,
        }
    }

    /// Whether a local miss may be filled from this tier now: not while degraded, nor
    /// while an invalidation (this replica's or a peer's) may not have reached it.
    pub fn may_refill(&self) -> bool {
        self.liveness.may_refill(std::time::Instant::now())
    }

    fn locate(&self, key: &Key) -> Located {
        let entry_hash = keys::key_hash(key);
        let owner = keys::owner_hash(&key.owner);
        let tenant = keys::tenant_hash(
            key.owner.tenant().center().map(|c| &c[..]),
            key.owner.tenant().group().map(|g| &g[..]),
        );
        let markers = self.names.marker_prefix();
        Located {
            entry: self.names.entry(&entry_hash),
            entry_hash,
            owner_marker: format!("{markers}o:{owner}"),
            tenant_marker: format!("{markers}t:{tenant}"),
            all_marker: format!("{markers}all"),
            owner,
            tenant,
        }
    }

    /// After a local miss: the shared entry, or the generation to fetch under.
    pub async fn lookup(&self, key: &Key) -> SharedLookup {
        match self.lookup_raw(key).await {
            Ok(Looked::Hit(entry)) if entry.age < self.policy.ttl => {
                self.metrics.shared("hit");
                SharedLookup::Hit(entry)
            }
            Ok(Looked::Hit(entry)) => {
                // Kept for stale-if-error, never for a refill: a write that bypassed
                // every replica must show within `ttl`.
                self.metrics.shared("expired");
                SharedLookup::Miss(Some(entry.generation))
            }
            Ok(Looked::Miss(generation)) => {
                self.metrics.shared("miss");
                SharedLookup::Miss(Some(generation))
            }
            Ok(Looked::TooLarge(generation)) => {
                self.metrics.shared("too_large");
                SharedLookup::Miss(Some(generation))
            }
            Err(error) => {
                self.metrics.shared("error");
                tracing::debug!(%error, "shared tier lookup failed: a miss");
                SharedLookup::Miss(None)
            }
        }
    }

    pub(super) async fn lookup_raw(&self, key: &Key) -> Result<Looked, OpError> {
        let at = self.locate(key);
        let counter = self.names.counter();
        let lifetime = self.names.lifetime();
        let fresh_lifetime = uuid::Uuid::new_v4().to_string();
        let service_markers = format!("{}s:", self.names.marker_prefix());
        let max_entry_bytes = self.policy.max_entry_bytes;
        let reply: Vec<Value> = self
            .conn
            .run(|mut manager| async move {
                at.invocation(&LOOKUP_SCRIPT)
                    .key(counter)
                    .key(lifetime)
                    .arg(fresh_lifetime)
                    .arg(service_markers)
                    .arg(max_entry_bytes)
                    .invoke_async(&mut manager)
                    .await
            })
            .await?;
        let text = |i: usize| reply.get(i).and_then(value_bytes);
        let generation = match (text(0), text(1)) {
            (Some(lifetime), Some(counter)) => Generation {
                lifetime: String::from_utf8_lossy(&lifetime).into_owned(),
                counter: String::from_utf8_lossy(&counter)
                    .parse()
                    .map_err(|_| unexpected())?,
            },
            _ => return Err(unexpected()),
        };
        if reply.len() == 3 {
            return Ok(Looked::TooLarge(generation));
        }
        let (Some(body), Some(stored_at)) = (text(2), text(3)) else {
            return Ok(Looked::Miss(generation));
        };
        let stored_at_ms: u64 = String::from_utf8_lossy(&stored_at)
            .parse()
            .map_err(|_| unexpected())?;
        let service_ids: Vec<String> = text(4)
            .and_then(|ids| serde_json::from_slice(&ids).ok())
            .unwrap_or_default();
        Ok(Looked::Hit(SharedEntry {
            generation,
            body: Bytes::from(body),
            age: Duration::from_millis(now_ms().saturating_sub(stored_at_ms)),
            service_ids,
        }))
    }

    /// Stores a fetched broad answer (`age` old: zero for a fresh fetch) unless a write
    /// touching it happened since `generation`, or the body is over `max_entry_bytes`
    /// (the local cache would not keep it either). Returns whether it was stored.
    pub async fn store(
        &self,
        key: &Key,
        generation: &Generation,
        body: &Bytes,
        service_ids: &[String],
        age: Duration,
    ) -> Result<bool, OpError> {
        if body.len() > self.policy.max_entry_bytes {
            return Ok(false);
        }
        let Some(remaining) = self
            .policy
            .entry_ttl
            .checked_sub(age)
            .filter(|d| !d.is_zero())
        else {
            return Ok(false);
        };
        let at = self.locate(key);
        let service_hashes: Vec<String> = service_ids
            .iter()
            .map(|id| keys::service_hash(id).to_string())
            .collect();
        let ids_json = serde_json::to_vec(service_ids).expect("strings serialise");
        let stored_at_ms = now_ms().saturating_sub(age.as_millis() as u64);
        let owner_index = format!("{}o:{}", self.names.index_prefix(), at.owner);
        let budget_all = format!("{}all", self.names.budget_prefix());
        let budget_tenant = format!("{}t:{}", self.names.budget_prefix(), at.tenant);
        let (max_bytes, tenant_max_bytes) = (self.policy.max_bytes, self.policy.tenant_max_bytes);
        let lifetime = self.names.lifetime();
        let (markers, indexes) = (self.names.marker_prefix(), self.names.index_prefix());
        let entry_ttl_ms = self.policy.entry_ttl.as_millis() as u64;
        let generation = generation.clone();
        let body = body.clone();
        let stored: i64 = self
            .conn
            .run(|mut manager| async move {
                at.invocation(&STORE_SCRIPT)
                    .key(lifetime)
                    .key(owner_index)
                    .key(budget_all)
                    .key(budget_tenant)
                    .arg(&generation.lifetime)
                    .arg(generation.counter)
                    .arg(body.as_ref())
                    .arg(stored_at_ms)
                    .arg(service_hashes.join(","))
                    .arg(ids_json)
                    .arg(remaining.as_millis() as u64)
                    .arg(entry_ttl_ms)
                    .arg(markers)
                    .arg(indexes)
                    .arg(at.entry_hash.as_str())
                    .arg(max_bytes)
                    .arg(tenant_max_bytes)
                    .arg(body.len())
                    .invoke_async(&mut manager)
                    .await
            })
            .await?;
        if stored == 2 {
            self.metrics.shared("over_budget");
        }
        Ok(stored == 1)
    }
}

fn value_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) => Some(text.as_bytes().to_vec()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

fn unexpected() -> OpError {
    OpError::Redis(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from a csgate script",
    )))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
