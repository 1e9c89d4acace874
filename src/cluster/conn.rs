//! The command connection: one multiplexed [`ConnectionManager`] per process, made in
//! the background so that start-up never waits for Redis, and every operation bounded
//! by `op_timeout` (past it the operation is cancelled and counts as a miss).
//!
//! Locking: `manager` is a `std::sync::RwLock` held only to clone the handle out,
//! never across an `.await`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};

use super::metrics::OpOutcome;

/// Why a Redis operation produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("redis operation timed out")]
    Timeout,
    #[error("redis is not connected yet")]
    NotConnected,
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

impl OpError {
    pub fn outcome(&self) -> OpOutcome {
        match self {
            OpError::Timeout => OpOutcome::Timeout,
            OpError::NotConnected | OpError::Redis(_) => OpOutcome::Error,
        }
    }
}

/// A handle on the command connection. Cheap to clone.
#[derive(Clone)]
pub struct Conn {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("op_timeout", &self.inner.op_timeout)
            .finish_non_exhaustive()
    }
}

/// Failures in a row (timeouts or a broken link) after which, with nothing answered
/// for [`REPLACE_AFTER`], the connection is replaced: a silently dropped connection
/// (a NAT or firewall that forgot it) never answers again, and the manager only
/// reconnects on an error it sees.
const REPLACE_FAILURES: u32 = 3;
/// See [`REPLACE_FAILURES`]: a Redis that is only slow keeps answering something.
const REPLACE_AFTER: Duration = Duration::from_secs(1);

struct Inner {
    client: Client,
    manager: RwLock<Option<ConnectionManager>>,
    op_timeout: Duration,
    /// Failed operations in a row.
    failures: AtomicU32,
    /// When an operation last succeeded (ms since `epoch`).
    last_ok_ms: AtomicU64,
    /// A replacement connection is being made.
    replacing: AtomicBool,
    /// Connections made (the first included).
    made: AtomicU64,
    epoch: Instant,
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// The command connection as `/healthz` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnHealth {
    /// A connection has been made (it may be failing since).
    pub made: bool,
    /// Operations failed in a row.
    pub failures: u32,
    /// Time since an operation last succeeded; `None` before the first.
    pub last_ok: Option<Duration>,
    /// Connections made, replacements included.
    pub connections: u64,
}

impl Conn {
    /// Starts connecting in the background (retrying with backoff until it succeeds;
    /// once made, the manager reconnects by itself on the errors it sees, and this
    /// handle replaces it when it stops answering).
    pub fn start(client: Client, op_timeout: Duration) -> Conn {
        let conn = Conn {
            inner: Arc::new(Inner {
                client,
                manager: RwLock::new(None),
                op_timeout,
                failures: AtomicU32::new(0),
                last_ok_ms: AtomicU64::new(u64::MAX),
                replacing: AtomicBool::new(true),
                made: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        };
        tokio::spawn(connect(Arc::downgrade(&conn.inner)));
        conn
    }

    pub fn op_timeout(&self) -> Duration {
        self.inner.op_timeout
    }

    /// True once the command connection has been made (it may be down since).
    pub fn is_made(&self) -> bool {
        self.manager().is_some()
    }

    /// What `/healthz` says about this connection.
    pub fn health(&self) -> ConnHealth {
        let inner = &self.inner;
        let last = inner.last_ok_ms.load(Ordering::Acquire);
        ConnHealth {
            made: self.is_made(),
            failures: inner.failures.load(Ordering::Acquire),
            last_ok: (last != u64::MAX)
                .then(|| Duration::from_millis(inner.now_ms().saturating_sub(last))),
            connections: inner.made.load(Ordering::Acquire),
        }
    }

    fn manager(&self) -> Option<ConnectionManager> {
        self.inner
            .manager
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `PUBLISH`es `payload` on `channel`, bounded by `op_timeout`; returns how many
    /// subscribers took it.
    pub async fn publish(&self, channel: String, payload: String) -> Result<i64, OpError> {
        self.run(|mut manager| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<i64>(&mut manager)
                .await
        })
        .await
    }

    /// Runs `op` on the connection, bounded by `op_timeout`.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, OpError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.run_within(self.inner.op_timeout, op).await
    }

    /// Runs `op` on the connection, bounded by `bound` (the bus's own work, which no
    /// client waits on, allows a slow Redis more than `op_timeout`).
    pub async fn run_within<T, F, Fut>(&self, bound: Duration, op: F) -> Result<T, OpError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let manager = self.manager().ok_or(OpError::NotConnected)?;
        let result = match tokio::time::timeout(bound, op(manager)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(OpError::Redis(error)),
            Err(_) => Err(OpError::Timeout),
        };
        self.record(&result);
        result
    }

    /// Counts an outcome, and replaces the connection once it has failed
    /// [`REPLACE_FAILURES`] times in a row with nothing answered for [`REPLACE_AFTER`].
    fn record<T>(&self, result: &Result<T, OpError>) {
        let inner = &self.inner;
        let link_failed = match result {
            Ok(_) => {
                inner.failures.store(0, Ordering::Release);
                inner.last_ok_ms.store(inner.now_ms(), Ordering::Release);
                return;
            }
            Err(OpError::Timeout) => true,
            Err(OpError::NotConnected) => false,
            // A reply that is an error (a script's, OOM) proves the link works.
            Err(OpError::Redis(error)) => {
                error.is_io_error() || error.is_connection_dropped() || error.is_timeout()
            }
        };
        if !link_failed {
            inner.failures.store(0, Ordering::Release);
            inner.last_ok_ms.store(inner.now_ms(), Ordering::Release);
            return;
        }
        let failures = inner.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let last = inner.last_ok_ms.load(Ordering::Acquire);
        let silent_for = if last == u64::MAX {
            Duration::MAX
        } else {
            Duration::from_millis(inner.now_ms().saturating_sub(last))
        };
        if failures >= REPLACE_FAILURES
            && silent_for >= REPLACE_AFTER
            && !inner.replacing.swap(true, Ordering::AcqRel)
        {
            tracing::warn!(
                failures,
                "redis command connection stopped answering; replacing it"
            );
            tokio::spawn(connect(Arc::downgrade(inner)));
        }
    }
}

/// Makes a connection (retrying with backoff until it succeeds or the handle is gone)
/// and installs it in place of the old one.
async fn connect(weak: std::sync::Weak<Inner>) {
    let Some(inner) = weak.upgrade() else { return };
    let (client, op_timeout) = (inner.client.clone(), inner.op_timeout);
    drop(inner);
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(op_timeout.max(Duration::from_millis(250))))
        // No response timeout of its own (the crate's default is 500 ms): every call
        // is bounded by its caller (`op_timeout` on the request path, the bus's link
        // timeout for deliveries and heartbeats), and a longer bound that an operator
        // configured must not be cut to 500 ms underneath it.
        .set_response_timeout(None)
        // One attempt per reconnect, no retries of its own: its retries back off
        // from 1 s (and a call waits on them), so a Redis that returns would be
        // found only seconds later. The next call starts the next attempt, and
        // the bus makes calls every heartbeat, so a returning Redis is used again
        // within about a quarter of a second.
        .set_number_of_retries(0);
    let mut backoff = Backoff::default();
    let mut warned = false;
    loop {
        if weak.strong_count() == 0 {
            return;
        }
        match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
            Ok(manager) => {
                if let Some(inner) = weak.upgrade() {
                    *inner.manager.write().unwrap_or_else(|p| p.into_inner()) = Some(manager);
                    inner.made.fetch_add(1, Ordering::AcqRel);
                    inner.failures.store(0, Ordering::Release);
                    // A fresh connection gets a fresh allowance before it is judged.
                    inner.last_ok_ms.store(inner.now_ms(), Ordering::Release);
                    inner.replacing.store(false, Ordering::Release);
                }
                return;
            }
            Err(error) if !warned => {
                // Once at WARN: the fleet runs degraded until Redis answers.
                warned = true;
                tracing::warn!(
                    %error,
                    "redis is unreachable; the fleet runs degraded (local entries \
                     live degraded_ttl) and keeps trying"
                );
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => {
                tracing::debug!(%error, "redis command connection not made yet");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Reconnect delays: 25 ms doubling to 500 ms, so a returning Redis is found again
/// within half a second (the fleet must be coherent within 1 s of Redis returning).
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(25);
    const MAX: Duration = Duration::from_millis(500);

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}
