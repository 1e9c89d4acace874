//! Fleet-wide rate limits (`[cluster]` on): every decision is one Redis round trip, a
//! Lua script running GCRA on Redis's own clock over every bucket the request spends
//! from (tenant, credential), taking from all or none. Only requests that are limited
//! pay it: with `count_hits = false` a cache hit never reaches this module.
//!
//! Redis unreachable, slow (past `op_timeout`) or not connected yet: the decision is
//! taken locally on this replica's share, the limit divided by the live replicas as
//! last seen in Redis, so the fleet as a whole stays near its limit, neither failing
//! open (every replica allowing the whole limit) nor closed (refusing everyone). After
//! a failure Redis is left alone for [`RETRY_AFTER_FAILURE`], so a dead Redis costs
//! each request nothing.
//!
//! Membership: each replica writes a heartbeat (a sorted set scored by time) every
//! [`HEARTBEAT`] and reads how many replicas wrote one within [`LIVE_WITHIN`].
//!
//! This module opens its own Redis connection from `[cluster]` (its own response
//! timeout, `op_timeout`) and shares nothing else with `crate::cluster`.
//!
//! Locking: `manager` is a `std::sync::RwLock` held only to clone the handle out.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::config::Rate;
use super::metrics::LimitMetrics;
use crate::cluster::ClusterConfig;

/// How often a replica says it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// A replica that has not written a heartbeat for this long is not counted.
pub const LIVE_WITHIN: Duration = Duration::from_secs(3);
/// After a failed decision, how long decisions stay local before Redis is asked again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(250);

/// GCRA over `KEYS` (each with an interval and a tolerance in µs in `ARGV`), on Redis's
/// clock: all buckets allow, and all are spent; or the first that refuses is named with
/// the wait until it allows. Times are written with `%.0f`: Lua's `tostring` would
/// write a microsecond timestamp in exponent notation and lose its precision.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local n = tat + interval
  if n - now > tolerance then
    return {0, i, math.floor(n - now - tolerance)}
  end
  next[i] = n
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.0f', next[i]), 'PX', math.floor((next[i] - now) / 1000) + 1)
end
return {1, 0, 0}
";

/// What Redis decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetDecision {
    Allow,
    /// The bucket at this index of the request's list refuses; a token is back after
    /// the duration.
    Deny(usize, Duration),
}

/// The fleet's limiter. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    manager: RwLock<Option<ConnectionManager>>,
    script: redis::Script,
    prefix: String,
    op_timeout: Duration,
    id: String,
    live: AtomicUsize,
    /// Milliseconds since `epoch` before which Redis is not asked.
    quiet_until: AtomicU64,
    epoch: Instant,
    metrics: LimitMetrics,
}

impl Fleet {
    /// Starts connecting and heartbeating in the background; `None` without a
    /// `redis_url` (or with one the client cannot use, which `[cluster]` reports).
    pub fn start(config: &ClusterConfig, metrics: LimitMetrics) -> Option<Fleet> {
        let url = config.redis_url.as_ref()?;
        let nodelay = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let client = redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .map(|info| info.set_tcp_settings(nodelay))
            .and_then(redis::Client::open)
            .ok()?;
        let fleet = Fleet {
            inner: Arc::new(Inner {
                manager: RwLock::new(None),
                script: redis::Script::new(GCRA),
                prefix: format!("{}:limit", config.namespace),
                op_timeout: config.op_timeout,
                id: uuid::Uuid::new_v4().simple().to_string(),
                live: AtomicUsize::new(1),
                quiet_until: AtomicU64::new(0),
                epoch: Instant::now(),
                metrics,
            }),
        };
        tokio::spawn(run(Arc::downgrade(&fleet.inner), client, config.op_timeout));
        Some(fleet)
    }

    /// Live replicas as last seen in Redis (1 until Redis has been seen).
    pub fn live_replicas(&self) -> usize {
        self.inner.live.load(Ordering::Acquire).max(1)
    }

    /// The Redis key of a bucket.
    pub fn key(&self, scope: &str, id: &[u8]) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(id);
        let mut key = format!("{}:{scope}:", self.inner.prefix);
        for byte in &digest[..16] {
            key.push_str(&format!("{byte:02x}"));
        }
        key
    }

    /// Spends one token from every bucket of `buckets` fleet-wide, or says which
    /// refuses; `None` when Redis could not decide (take the local share).
    pub async fn decide(&self, buckets: &[(String, Rate)]) -> Option<FleetDecision> {
        let inner = &self.inner;
        if inner.elapsed_ms() < inner.quiet_until.load(Ordering::Acquire) {
            return None;
        }
        let mut manager = inner
            .manager
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let mut invocation = inner.script.prepare_invoke();
        for (key, rate) in buckets {
            let interval = micros(rate.interval()).max(1);
            invocation
                .key(key)
                .arg(interval)
                .arg(interval.saturating_mul(u64::from(rate.burst)));
        }
        let answer = tokio::time::timeout(
            inner.op_timeout,
            invocation.invoke_async::<(i64, i64, i64)>(&mut manager),
        )
        .await;
        match answer {
            Ok(Ok((1, _, _))) => Some(FleetDecision::Allow),
            Ok(Ok((_, index, wait))) => Some(FleetDecision::Deny(
                usize::try_from(index - 1).unwrap_or(0),
                Duration::from_micros(u64::try_from(wait).unwrap_or(0)),
            )),
            Ok(Err(error)) => {
                tracing::debug!(%error, "fleet rate limit: redis failed; local share");
                inner.quiet();
                None
            }
            Err(_) => {
                tracing::debug!("fleet rate limit: redis timed out; local share");
                inner.quiet();
                None
            }
        }
    }
}

impl Inner {
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn quiet(&self) {
        let until = self.elapsed_ms() + micros(RETRY_AFTER_FAILURE) / 1000;
        self.quiet_until.store(until, Ordering::Release);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Connects (retrying), then heartbeats until the fleet is dropped.
async fn run(weak: Weak<Inner>, client: redis::Client, op_timeout: Duration) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(op_timeout.max(Duration::from_millis(250))))
        .set_response_timeout(Some(op_timeout))
        .set_number_of_retries(0);
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let manager = inner
            .manager
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut manager = match manager {
            Some(manager) => manager,
            None => {
                match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                    Ok(manager) => {
                        *inner.manager.write().unwrap_or_else(|p| p.into_inner()) =
                            Some(manager.clone());
                        manager
                    }
                    Err(error) => {
                        tracing::debug!(%error, "fleet rate limit: redis not connected yet");
                        continue;
                    }
                }
            }
        };
        if let Ok(Ok(live)) =
            tokio::time::timeout(op_timeout, heartbeat(&inner, &mut manager)).await
        {
            let live = usize::try_from(live).unwrap_or(1).max(1);
            inner.live.store(live, Ordering::Release);
            inner.metrics.set_fleet_replicas(live);
        }
    }
}

/// Writes this replica's heartbeat and counts the live ones, in one round trip.
async fn heartbeat(inner: &Inner, manager: &mut ConnectionManager) -> redis::RedisResult<u64> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let key = format!("{}:replicas", inner.prefix);
    let oldest = now.saturating_sub(u64::try_from(LIVE_WITHIN.as_millis()).unwrap_or(0));
    let (_, _, live, _): (i64, i64, u64, i64) = redis::pipe()
        .atomic()
        .zadd(&key, &inner.id, now)
        .zrembyscore(&key, "-inf", format!("({oldest}"))
        .zcard(&key)
        .pexpire(
            &key,
            10 * i64::try_from(LIVE_WITHIN.as_millis()).unwrap_or(0),
        )
        .query_async(manager)
        .await?;
    Ok(live)
}
