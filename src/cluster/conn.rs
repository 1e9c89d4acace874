//! The command connection: one multiplexed [`ConnectionManager`] per process, made in
//! the background so that start-up never waits for Redis, and every operation bounded
//! by `op_timeout` (past it the operation is cancelled and counts as a miss).
//!
//! Locking: `manager` is a `std::sync::RwLock` held only to clone the handle out,
//! never across an `.await`.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};

use super::metrics::OpOutcome;
use super::Backoff;

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

struct Inner {
    manager: RwLock<Option<ConnectionManager>>,
    op_timeout: Duration,
}

impl Conn {
    /// Starts connecting in the background (retrying with backoff until it succeeds;
    /// once made, the manager reconnects by itself).
    pub fn start(client: Client, op_timeout: Duration) -> Conn {
        let conn = Conn {
            inner: Arc::new(Inner {
                manager: RwLock::new(None),
                op_timeout,
            }),
        };
        let weak = Arc::downgrade(&conn.inner);
        tokio::spawn(async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(op_timeout.max(Duration::from_millis(250))))
                // One attempt per reconnect, no retries of its own: its retries back off
                // from 1 s (and a call waits on them), so a Redis that returns would be
                // found only seconds later. The next call starts the next attempt, and
                // the bus's republisher makes calls every ≤ 500 ms while it holds
                // messages, so a returning Redis is used again within about half a second.
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
                            *inner.manager.write().unwrap_or_else(|p| p.into_inner()) =
                                Some(manager);
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
        });
        conn
    }

    pub fn op_timeout(&self) -> Duration {
        self.inner.op_timeout
    }

    /// True once the command connection has been made (it may be down since).
    pub fn is_made(&self) -> bool {
        self.manager().is_some()
    }

    fn manager(&self) -> Option<ConnectionManager> {
        self.inner
            .manager
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `op` on the connection, bounded by `op_timeout`.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, OpError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let manager = self.manager().ok_or(OpError::NotConnected)?;
        match tokio::time::timeout(self.inner.op_timeout, op(manager)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(OpError::Timeout),
        }
    }
}
