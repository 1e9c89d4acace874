//! The fleet lock (fleet contract §3): `SET NX PX` on a cold key, so N replicas cold
//! on one key send one upstream request; the others wait for the holder's entry in the
//! shared tier, bounded by the fetch deadline, then fetch themselves. The lock's value
//! is the replica id and a random token (the owner token), it is released only by its
//! owner (compare-and-delete), and it lives [`lock_ttl`] (2 × `op_timeout`, at least
//! 250 ms), renewed by its holder every third of that while the fetch runs. So:
//! - a `SET NX` whose reply comes after `op_timeout` (the caller has given up on it)
//!   is released by a compare-and-delete sent right behind it on the same connection
//!   (Redis runs it right after the `SET`): no lock is owned by nobody;
//! - a holder that dies stops renewing: its lock is gone within the lock ttl, and a
//!   waiter, which checks the lock as it polls, fetches itself right after.

use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::Script;

use super::conn::Conn;
use super::keys;
use super::shared::{Generation, Looked, SharedEntry, SharedLookup, SharedTier};
use crate::cache::Key;

/// Lock checks in a row that Redis may leave unanswered before a waiter gives up on
/// the holder and fetches itself.
const MAX_UNANSWERED: u32 = 3;

static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW));

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// How long a fleet lock lives unless renewed: 2 × `op_timeout`, at least 250 ms (its
/// holder renews it every third of that, and a busy process must not miss a renewal
/// and let a second replica fetch). A `SET` whose reply came late is released sooner,
/// by the compare-and-delete sent right behind it.
pub fn lock_ttl(op_timeout: Duration) -> Duration {
    (op_timeout * 2).max(Duration::from_millis(250))
}

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// What [`SharedTier::coalesce`] produced.
#[derive(Debug)]
pub enum Coalesced<T> {
    /// From the shared tier (directly, or after waiting for another replica's fetch).
    Shared(SharedEntry),
    /// This replica's own fetch.
    Fetched(T),
}

impl SharedTier {
    /// Tries to take the fleet lock of `key`; held, it is renewed until released.
    pub async fn try_lock(&self, key: &Key) -> LockAttempt {
        let name = self.names.lock(&keys::key_hash(key));
        let token = format!("{}:{}", self.replica, uuid::Uuid::new_v4());
        let ttl = lock_ttl(self.conn.op_timeout());
        let ttl_ms = ttl.as_millis() as u64;
        let (lock_name, value) = (name.clone(), token.clone());
        let reply = self
            .conn
            .run(|mut manager| async move {
                redis::cmd("SET")
                    .arg(lock_name)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<Option<String>>(&mut manager)
                    .await
            })
            .await;
        match reply {
            Ok(Some(_)) => {
                let renewer =
                    tokio::spawn(renew(self.conn.clone(), name.clone(), token.clone(), ttl));
                LockAttempt::Acquired(FleetLock {
                    conn: Some(self.conn.clone()),
                    name,
                    token,
                    renewer: Some(renewer),
                })
            }
            Ok(None) => LockAttempt::Held,
            Err(error) => {
                // The `SET` may still land after this: release it behind it (same
                // connection, so in order), else it expires within its short ttl.
                tokio::spawn(release(self.conn.clone(), name, token));
                tracing::debug!(%error, "fleet lock unavailable");
                LockAttempt::Unavailable
            }
        }
    }

    /// Waits for another replica's fetch of `key` to land in the shared tier, until
    /// `deadline`, or until its lock is gone without an entry (that fetch failed or was
    /// not storable), or Redis has left [`MAX_UNANSWERED`] checks in a row unanswered.
    /// Polls: 2 ms, doubling to 25 ms.
    pub async fn wait_for(&self, key: &Key, deadline: Instant) -> Option<SharedEntry> {
        let lock = self.names.lock(&keys::key_hash(key));
        let mut pause = Duration::from_millis(2);
        // Redis not answering about the lock is not the lock gone: a single slow reply
        // (a loaded replica) must not start a second upstream request for the key. Only
        // a Redis that stays silent makes this replica fetch itself.
        let mut unanswered = 0;
        loop {
            let now = Instant::now();
            if now >= deadline || !self.may_refill() {
                self.metrics.lock_wait("fallback");
                return None;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(25));
            if let Some(entry) = self.fresh(key).await {
                self.metrics.lock_wait("filled");
                return Some(entry);
            }
            let name = lock.clone();
            let held = self
                .conn
                .run(|mut manager| async move {
                    redis::cmd("EXISTS")
                        .arg(name)
                        .query_async::<i64>(&mut manager)
                        .await
                })
                .await;
            match held {
                Ok(1) => {
                    unanswered = 0;
                    continue;
                }
                Ok(_) => {}
                Err(_) if unanswered < MAX_UNANSWERED => {
                    unanswered += 1;
                    continue;
                }
                Err(_) => {}
            }
            // One last look: the holder stores, then releases.
            if let Some(entry) = self.fresh(key).await {
                self.metrics.lock_wait("filled");
                return Some(entry);
            }
            self.metrics.lock_wait("fallback");
            return None;
        }
    }

    /// The shared entry of `key` if there is one young enough to refill from.
    async fn fresh(&self, key: &Key) -> Option<SharedEntry> {
        match self.lookup_raw(key).await {
            Ok(Looked::Hit(entry)) if entry.age < self.policy.ttl => Some(entry),
            _ => None,
        }
    }

    /// A cold local miss, fleet-wide: the shared entry if there is one; else, if this
    /// replica takes the fleet lock (or Redis cannot say), `fetch` with the generation
    /// to store under (the closure stores, so the lock is released after the store);
    /// else waits for the holder's entry until `deadline`, then fetches itself.
    pub async fn coalesce<T, F, Fut>(&self, key: &Key, deadline: Instant, fetch: F) -> Coalesced<T>
    where
        F: FnOnce(Option<Generation>) -> Fut,
        Fut: Future<Output = T>,
    {
        if !self.may_refill() {
            // Degraded: neither refill from this tier nor coordinate through it; the
            // local single flight still makes this one fetch per replica.
            self.metrics.shared("degraded");
            return Coalesced::Fetched(fetch(None).await);
        }
        let generation = match self.lookup(key).await {
            // Checked again once the answer is here: a reply that arrives after the
            // replica became degraded (a Redis that was paused) is not used.
            SharedLookup::Hit(entry) if self.may_refill() => return Coalesced::Shared(entry),
            SharedLookup::Hit(_) => return Coalesced::Fetched(fetch(None).await),
            SharedLookup::Miss(generation) => generation,
        };
        // A lookup that went unanswered (one slow reply on a busy replica) still tries
        // the lock: giving up on coordination at once would send this replica's fetch
        // beside the holder's. A Redis that is really away does not answer the lock
        // either, and a degraded replica never got here.
        match self.try_lock(key).await {
            LockAttempt::Acquired(lock) => {
                // The previous holder may have stored and released between the lookup
                // and the lock: look again, or two replicas fetch one cold key. This
                // look also gives the generation to store under when the first one
                // went unanswered.
                let generation = match self.lookup(key).await {
                    SharedLookup::Hit(entry) if self.may_refill() => {
                        lock.release().await;
                        return Coalesced::Shared(entry);
                    }
                    SharedLookup::Hit(_) => None,
                    SharedLookup::Miss(again) => again.or(generation),
                };
                let fetched = fetch(generation).await;
                lock.release().await;
                Coalesced::Fetched(fetched)
            }
            LockAttempt::Unavailable => Coalesced::Fetched(fetch(generation).await),
            LockAttempt::Held => match self.wait_for(key, deadline).await {
                Some(entry) if self.may_refill() => Coalesced::Shared(entry),
                _ => Coalesced::Fetched(fetch(generation).await),
            },
        }
    }
}

/// The result of [`SharedTier::try_lock`].
#[derive(Debug)]
pub enum LockAttempt {
    Acquired(FleetLock),
    /// Another replica is fetching.
    Held,
    /// Redis did not answer: fetch without coordination.
    Unavailable,
}

/// A held fleet lock, released by its owner only (compare-and-delete). Dropping it
/// without [`FleetLock::release`] releases it in the background.
#[derive(Debug)]
pub struct FleetLock {
    conn: Option<Conn>,
    name: String,
    token: String,
    /// Keeps the lock alive while the fetch runs.
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl FleetLock {
    /// Stops renewing without releasing, as a holder that crashed leaves its lock
    /// (tests): it expires within its ttl.
    pub fn abandon(mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        self.conn = None;
    }

    pub async fn release(mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        if let Some(conn) = self.conn.take() {
            release(
                conn,
                std::mem::take(&mut self.name),
                std::mem::take(&mut self.token),
            )
            .await;
        }
    }
}

impl Drop for FleetLock {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        if let Some(conn) = self.conn.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (name, token) = (
                    std::mem::take(&mut self.name),
                    std::mem::take(&mut self.token),
                );
                runtime.spawn(release(conn, name, token));
            }
        }
    }
}

async fn release(conn: Conn, name: String, token: String) {
    let released = conn
        .run(|mut manager| async move {
            RELEASE_SCRIPT
                .key(name)
                .arg(token)
                .invoke_async::<i64>(&mut manager)
                .await
        })
        .await;
    if let Err(error) = released {
        tracing::debug!(%error, "fleet lock not released; it expires by itself");
    }
}

/// Renews a held lock every third of its ttl until aborted, or until it is found not
/// to be this holder's any more.
async fn renew(conn: Conn, name: String, token: String, ttl: Duration) {
    let ttl_ms = ttl.as_millis() as u64;
    loop {
        tokio::time::sleep(ttl / 3).await;
        let (name, token) = (name.clone(), token.clone());
        let renewed = conn
            .run(|mut manager| async move {
                RENEW_SCRIPT
                    .key(name)
                    .arg(token)
                    .arg(ttl_ms)
                    .invoke_async::<i64>(&mut manager)
                    .await
            })
            .await;
        match renewed {
            Ok(0) => return, // expired meanwhile: someone else may hold it now
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "fleet lock not renewed"),
        }
    }
}
