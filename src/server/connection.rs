//! One connection's life: it must deliver its first request within the header read
//! timeout (TLS handshake and protocol detection included), it is closed once idle
//! for the idle timeout (GOAWAY on h2), and it closes gracefully when the listener
//! shuts down.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What a connection's requests tell its driver. Locking: `last_active` is locked only
/// for a read or a write of one `Instant`, never across an `.await`.
#[derive(Debug)]
pub struct Activity {
    started: AtomicBool,
    in_flight: AtomicUsize,
    last_active: Mutex<Instant>,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            started: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
        }
    }

    /// Marks a request as running until the guard drops.
    pub fn request(&self) -> InFlight<'_> {
        self.started.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }

    fn has_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// When the connection may be closed as idle, if nothing happens before then.
    fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = *self.last_active.lock().unwrap_or_else(|p| p.into_inner());
        Some(last + idle_timeout)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// A running request; dropping it (even on panic) ends it and restarts the idle clock.
pub struct InFlight<'a>(&'a Activity);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        *self.0.last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why the driver stopped a connection early, for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No complete first request within the header read timeout.
    NoFirstRequest,
}

/// What bounds one connection's life.
pub struct Bounds<'a> {
    pub activity: &'a Activity,
    /// The first complete request is due by then (accept + header read timeout).
    pub first_request_by: Instant,
    pub idle_timeout: Duration,
    /// Fires when the connection must finish its in-flight requests and close.
    pub close: tokio::sync::watch::Receiver<bool>,
}

/// Drives a hyper connection future until it ends, enforcing the first-request
/// deadline and the idle timeout, and closing gracefully when `close` fires.
/// `graceful` asks the connection to finish (hyper's `graceful_shutdown`).
pub async fn drive<C, G, O>(connection: C, graceful: G, bounds: Bounds<'_>) -> Result<O, Closed>
where
    C: Future<Output = O>,
    G: Fn(Pin<&mut C>),
{
    let Bounds {
        activity,
        first_request_by,
        idle_timeout,
        mut close,
    } = bounds;
    tokio::pin!(connection);
    let mut closing = false;
    let mut wake = first_request_by.min(Instant::now() + idle_timeout);
    loop {
        tokio::select! {
            result = connection.as_mut() => return Ok(result),
            () = tokio::time::sleep_until(wake), if !closing => {
                if !activity.has_started() {
                    if Instant::now() >= first_request_by {
                        return Err(Closed::NoFirstRequest);
                    }
                    wake = first_request_by;
                    continue;
                }
                match activity.idle_deadline(idle_timeout) {
                    Some(at) if at <= Instant::now() => {
                        graceful(connection.as_mut());
                        closing = true;
                    }
                    Some(at) => wake = at,
                    // Busy: look again after a full idle period.
                    None => wake = Instant::now() + idle_timeout,
                }
            }
            changed = close.wait_for(|close| *close), if !closing => {
                let _ = changed;
                graceful(connection.as_mut());
                closing = true;
            }
        }
    }
}
