//! The two bodies that cross the gateway on a proxied exchange, each with its own
//! blame:
//!
//! - [`ClientBody`]: the client's request body on its way upstream. It enforces the
//!   size limit and `[server] body_read_timeout` (time spent *waiting on the client*,
//!   summed), and fails with a [`ClientBodyError`] that the upstream client surfaces in
//!   its error's source chain, so the failure is classified as the client's (400/408),
//!   never as the upstream's (no ejection, no retry). Its [`WaitClock`] lets the
//!   upstream timeout leave out the time the client took.
//! - [`UpstreamBody`]: an upstream answer body on its way to the client. It enforces
//!   the attempt's deadline from first byte to last, and turns a stall or an early end
//!   into an error (hyper then aborts the client connection: never a clean end),
//!   recorded against the upstream's health and logged once.
//!
//! Both are a [`Watched`] body: the polling is written once, each [`Watch`] says what
//! it checks and whom a fault is told to.
//!
//! Locking: `WaitClock` holds a `std::sync::Mutex` for a few arithmetic operations,
//! never across an `.await`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::time::Sleep;

use super::error::{chain, ClientBodyError, UpstreamBodyError};
use super::policy::{later, Outcome};
use super::pool::Upstreams;
use crate::httputil::{full, Body, BoxError};

/// What a [`Watched`] body checks on its way through. Both bodies have this shape:
/// poll the inner body, judge the frame or the wait, and fail for good on the first
/// fault.
pub trait Watch: Unpin {
    /// The body watched.
    type Inner: hyper::body::Body<Data = Bytes> + Unpin;
    /// Why the body stopped.
    type Fault: std::error::Error + Clone + Unpin + Send + Sync + 'static;
    /// The inner body answered (a frame, its end or an error): a wait is over.
    fn settled(&mut self) {}
    /// A frame is passing through; a fault stops the body instead.
    fn frame(&mut self, _frame: &Frame<Bytes>) -> Result<(), Self::Fault> {
        Ok(())
    }
    /// The inner body failed.
    fn broken(&mut self, error: &<Self::Inner as hyper::body::Body>::Error) -> Self::Fault;
    /// The inner body has nothing yet: a fault once a deadline has passed.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Option<Self::Fault>;
    /// The body's first fault, before it is yielded: tell whom it concerns.
    fn failed(&mut self, fault: &Self::Fault);
}

/// A body under a [`Watch`]. After its first fault every poll yields that fault again:
/// a failed body never ends cleanly.
pub struct Watched<W: Watch> {
    inner: W::Inner,
    watch: W,
    fault: Option<W::Fault>,
}

impl<W: Watch> Watched<W> {
    fn watch(inner: W::Inner, watch: W) -> Watched<W> {
        Watched {
            inner,
            watch,
            fault: None,
        }
    }
}

impl<W: Watch> hyper::body::Body for Watched<W> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(fault) = &this.fault {
            return Poll::Ready(Some(Err(Box::new(fault.clone()))));
        }
        let fault = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(item) => {
                this.watch.settled();
                match item {
                    None => return Poll::Ready(None),
                    Some(Ok(frame)) => match this.watch.frame(&frame) {
                        Ok(()) => return Poll::Ready(Some(Ok(frame))),
                        Err(fault) => fault,
                    },
                    Some(Err(error)) => this.watch.broken(&error),
                }
            }
            Poll::Pending => match this.watch.stalled(cx) {
                Some(fault) => fault,
                None => return Poll::Pending,
            },
        };
        this.watch.failed(&fault);
        this.fault = Some(fault.clone());
        Poll::Ready(Some(Err(Box::new(fault))))
    }

    fn is_end_stream(&self) -> bool {
        self.fault.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Time spent waiting for the client's body, summed over every wait so far.
#[derive(Debug, Default)]
pub struct WaitClock(Mutex<Waits>);

#[derive(Debug, Default)]
struct Waits {
    done: Duration,
    since: Option<Instant>,
}

impl WaitClock {
    /// Total waiting time up to `now`, the current wait included.
    pub fn waited(&self, now: Instant) -> Duration {
        let waits = self.0.lock().unwrap_or_else(|p| p.into_inner());
        waits.done
            + waits
                .since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// Starts (or continues) a wait; returns when a `budget` of waiting runs out.
    fn waiting(&self, budget: Duration) -> Instant {
        let mut waits = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let since = *waits.since.get_or_insert_with(Instant::now);
        later(since, budget.saturating_sub(waits.done))
    }

    fn stop_waiting(&self) {
        let mut waits = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = waits.since.take() {
            waits.done += since.elapsed();
        }
    }
}

/// The client's request body, bounded in size and in waiting time.
pub type ClientBody = Watched<ClientWatch>;

/// The bounds of a [`ClientBody`]: its size, and its summed waiting time.
pub struct ClientWatch {
    max: usize,
    read: usize,
    timeout: Duration,
    clock: Arc<WaitClock>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl ClientBody {
    /// Wraps a body still arriving from the client.
    pub fn new<B>(body: B, max: usize, timeout: Duration) -> ClientBody
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let watch = ClientWatch {
            max,
            read: 0,
            timeout,
            clock: Arc::default(),
            sleep: None,
        };
        Watched::watch(body.map_err(Into::into).boxed(), watch)
    }

    /// A body the gateway already holds in full.
    pub fn full(bytes: Bytes) -> ClientBody {
        ClientBody::new(full(bytes), usize::MAX, Duration::MAX)
    }

    /// Reads the whole body.
    pub async fn collect(self) -> Result<Bytes, ClientBodyError> {
        match BodyExt::collect(self).await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) => Err(match error.downcast::<ClientBodyError>() {
                Ok(e) => *e,
                Err(other) => ClientBodyError::Unreadable(other.to_string()),
            }),
        }
    }

    pub(super) fn clock(&self) -> Arc<WaitClock> {
        self.watch.clock.clone()
    }
}

impl Watch for ClientWatch {
    type Inner = Body;
    type Fault = ClientBodyError;

    fn settled(&mut self) {
        self.clock.stop_waiting();
    }

    fn frame(&mut self, frame: &Frame<Bytes>) -> Result<(), ClientBodyError> {
        self.read += frame.data_ref().map_or(0, Bytes::len);
        if self.read > self.max {
            return Err(ClientBodyError::TooLarge { max: self.max });
        }
        Ok(())
    }

    fn broken(&mut self, error: &BoxError) -> ClientBodyError {
        ClientBodyError::Unreadable(chain(&**error))
    }

    fn stalled(&mut self, cx: &mut Context<'_>) -> Option<ClientBodyError> {
        if self.timeout == Duration::MAX {
            return None;
        }
        let until = tokio::time::Instant::from_std(self.clock.waiting(self.timeout));
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if sleep.deadline() != until {
            sleep.as_mut().reset(until);
        }
        let due = sleep.as_mut().poll(cx).is_ready();
        due.then_some(ClientBodyError::Timeout(self.timeout))
    }

    fn failed(&mut self, _fault: &ClientBodyError) {
        self.clock.stop_waiting();
    }
}

/// An upstream answer body with a deadline for its last byte. A failure is recorded
/// against the target's health and yielded as an error.
pub type UpstreamBody = Watched<UpstreamWatch>;

/// The deadline of an [`UpstreamBody`], and whom its failure is told to.
pub struct UpstreamWatch {
    deadline: Pin<Box<Sleep>>,
    upstreams: Upstreams,
    index: usize,
    started: Instant,
    /// Log the failure here: a streamed answer has no later edge that could.
    log: Option<HeaderValue>,
}

impl UpstreamBody {
    /// `log` carries the request id when the failure must be logged here.
    pub(super) fn new(
        inner: Incoming,
        upstreams: Upstreams,
        index: usize,
        deadline: Instant,
        log: Option<HeaderValue>,
    ) -> UpstreamBody {
        let deadline = tokio::time::Instant::from_std(deadline);
        let watch = UpstreamWatch {
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            upstreams,
            index,
            started: Instant::now(),
            log,
        };
        Watched::watch(inner, watch)
    }
}

impl Watch for UpstreamWatch {
    type Inner = Incoming;
    type Fault = UpstreamBodyError;

    fn broken(&mut self, error: &hyper::Error) -> UpstreamBodyError {
        UpstreamBodyError::Broken(chain(error))
    }

    fn stalled(&mut self, cx: &mut Context<'_>) -> Option<UpstreamBodyError> {
        let due = self.deadline.as_mut().poll(cx).is_ready();
        due.then_some(UpstreamBodyError::Timeout)
    }

    fn failed(&mut self, fault: &UpstreamBodyError) {
        let outcome = match fault {
            UpstreamBodyError::Timeout => Outcome::Timeout { before_head: false },
            UpstreamBodyError::Broken(_) => Outcome::Reset { before_head: false },
        };
        self.upstreams
            .record(self.index, outcome, self.started.elapsed());
        if let Some(id) = &self.log {
            tracing::warn!(
                request_id = id.to_str().unwrap_or("-"),
                upstream = %self.upstreams.label(self.index),
                error = %fault,
                "upstream failure: answer body aborted, client connection closed"
            );
        }
    }
}

/// The start of an upstream answer body, read so that the gateway can look at it.
pub enum Prefix {
    /// The whole body fit within the limit.
    Whole(Bytes),
    /// It did not: the bytes read so far followed by the rest, still streaming.
    Partial(Body),
}

impl Prefix {
    /// Reads `body` up to `max` bytes. Never refuses a large answer: past `max` the
    /// answer is handed back for streaming.
    pub async fn read<B>(body: B, max: usize) -> Result<Prefix, BoxError>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let mut body = body;
        let mut read = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(Into::into)?;
            if let Some(data) = frame.data_ref() {
                read.extend_from_slice(data);
            }
            if read.len() > max {
                let rest = Prefixed {
                    prefix: Some(read.freeze()),
                    rest: body.map_err(Into::into).boxed(),
                };
                return Ok(Prefix::Partial(rest.boxed()));
            }
        }
        Ok(Prefix::Whole(read.freeze()))
    }
}

/// Bytes already read, then the rest of the body.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: Body,
}

impl hyper::body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.prefix.take() {
            Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + prefix);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + prefix);
        }
        hint
    }
}
