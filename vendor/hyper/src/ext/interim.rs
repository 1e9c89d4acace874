//! csgate patch (see csgate's `vendor/PATCHES.md`): lets a server's service send
//! 1xx informational responses ahead of its final response, which hyper 1.x cannot do
//! (hyperium/hyper#4114). The connection puts an [`InformationalSender`] into each
//! request's extensions where the protocol allows interim responses (HTTP/1.1 and
//! HTTP/2, never HTTP/1.0); it writes what was sent while no final head has been
//! written, and refuses anything sent after.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// Interim responses queued and not yet written, at most: a service that sends more
/// while the connection cannot write has the extra ones refused.
const MAX_QUEUED: usize = 16;

/// Sends 1xx informational responses (102 to 199; not `100 Continue`, which hyper
/// sends itself, nor `101`, which is an upgrade) before the final response.
///
/// Found in a server request's extensions on HTTP/1.1 and HTTP/2 connections.
///
/// ```
/// # fn handle(req: http::Request<()>) {
/// if let Some(interim) = req.extensions().get::<hyper::ext::InformationalSender>() {
///     let hints = http::Response::builder()
///         .status(103)
///         .header("link", "</style.css>; rel=preload; as=style")
///         .body(())
///         .unwrap();
///     let _ = interim.send(hints);
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct InformationalSender {
    shared: Arc<Shared>,
}

struct Shared {
    /// `None` once the final response head is on its way: nothing more is written.
    queue: Mutex<Option<VecDeque<http::Response<()>>>>,
    /// Set (after the push, under the lock) when something was queued: the connection
    /// polls every request, and almost none sends anything, so it checks this flag
    /// instead of taking the lock.
    queued: AtomicBool,
    waker: AtomicWaker,
}

/// The connection's end.
pub(crate) struct InformationalReceiver {
    shared: Arc<Shared>,
}

/// Why an interim response was not queued; it is handed back.
#[derive(Debug)]
pub struct InformationalRefused(pub http::Response<()>);

impl fmt::Display for InformationalRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interim response {} refused (not 102-199, final response begun, or queue full)",
            self.0.status().as_u16()
        )
    }
}

impl std::error::Error for InformationalRefused {}

pub(crate) fn channel() -> (InformationalSender, InformationalReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Some(VecDeque::new())),
        queued: AtomicBool::new(false),
        waker: AtomicWaker::new(),
    });
    (
        InformationalSender {
            shared: shared.clone(),
        },
        InformationalReceiver { shared },
    )
}

impl InformationalSender {
    /// Queues `response` to be written before the final response. Refused when its
    /// status is not 102 to 199, when the final response has begun (or the
    /// connection is gone), or when too many are waiting to be written.
    pub fn send(&self, response: http::Response<()>) -> Result<(), InformationalRefused> {
        let status = response.status().as_u16();
        if !(102..=199).contains(&status) {
            return Err(InformationalRefused(response));
        }
        {
            let mut queue = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match queue.as_mut() {
                Some(queue) if queue.len() < MAX_QUEUED => queue.push_back(response),
                _ => return Err(InformationalRefused(response)),
            }
            self.shared.queued.store(true, Ordering::Release);
        }
        self.shared.waker.wake();
        Ok(())
    }
}

impl fmt::Debug for InformationalSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InformationalSender").finish()
    }
}

impl InformationalReceiver {
    /// The next queued interim response, or `Pending` (waker registered) when none.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<http::Response<()>> {
        if let Some(next) = self.try_recv() {
            return Poll::Ready(next);
        }
        self.shared.waker.register(cx.waker());
        match self.try_recv() {
            Some(next) => Poll::Ready(next),
            None => Poll::Pending,
        }
    }

    /// The next queued interim response, if any.
    pub(crate) fn try_recv(&self) -> Option<http::Response<()>> {
        if !self.shared.queued.load(Ordering::Acquire) {
            return None;
        }
        let mut queue = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.as_mut().and_then(VecDeque::pop_front)
    }

    /// The final response has been produced: later sends are refused. What is still
    /// queued is returned, to be written before the final head.
    pub(crate) fn close(&self) -> VecDeque<http::Response<()>> {
        let mut queue = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.take().unwrap_or_default()
    }
}

impl Drop for InformationalReceiver {
    fn drop(&mut self) {
        drop(self.close());
    }
}
