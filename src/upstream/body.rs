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

use super::policy::{chain, Outcome};
use super::Upstreams;
use crate::error::GatewayError;
use crate::httputil::full;
use crate::server::{Body, BoxError};

/// Why the client's request body did not arrive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the request body is larger than the limit of {max} bytes")]
    TooLarge { max: usize },
    /// Invalid framing (a bad chunk), or the client went away mid-body.
    #[error("the request body could not be read: {0}")]
    Unreadable(String),
    #[error("the request body did not arrive within {0:?}")]
    Timeout(Duration),
}

impl From<ClientBodyError> for GatewayError {
    fn from(e: ClientBodyError) -> GatewayError {
        match e {
            ClientBodyError::TooLarge { max } => GatewayError::PayloadTooLarge { max },
            ClientBodyError::Unreadable(_) => GatewayError::UnreadableBody,
            ClientBodyError::Timeout(after) => GatewayError::BodyReadTimeout { after },
        }
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
        super::later(since, budget.saturating_sub(waits.done))
    }

    fn stop_waiting(&self) {
        let mut waits = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = waits.since.take() {
            waits.done += since.elapsed();
        }
    }
}

/// The client's request body, bounded in size and in waiting time.
pub struct ClientBody {
    inner: Body,
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
        ClientBody {
            inner: body.map_err(Into::into).boxed(),
            max,
            read: 0,
            timeout,
            clock: Arc::default(),
            sleep: None,
        }
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
        self.clock.clone()
    }

    fn fail(&mut self, error: ClientBodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.clock.stop_waiting();
        self.inner = http_body_util::Empty::new().map_err(Into::into).boxed();
        Poll::Ready(Some(Err(Box::new(error))))
    }
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(item) => {
                this.clock.stop_waiting();
                match item {
                    None => Poll::Ready(None),
                    Some(Ok(frame)) => {
                        this.read += frame.data_ref().map_or(0, Bytes::len);
                        if this.read > this.max {
                            return this.fail(ClientBodyError::TooLarge { max: this.max });
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(error)) => this.fail(ClientBodyError::Unreadable(chain(&*error))),
                }
            }
            Poll::Pending => {
                if this.timeout == Duration::MAX {
                    return Poll::Pending;
                }
                let until = tokio::time::Instant::from_std(this.clock.waiting(this.timeout));
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                if sleep.deadline() != until {
                    sleep.as_mut().reset(until);
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    let timeout = this.timeout;
                    return this.fail(ClientBodyError::Timeout(timeout));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why an upstream answer body stopped before its end.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error("the upstream answer body did not finish in time")]
    Timeout,
    #[error("the upstream answer body broke off: {0}")]
    Broken(String),
}

/// An upstream answer body with a deadline for its last byte. A failure is recorded
/// against the target's health and yielded as an error.
pub struct UpstreamBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    report: Option<Report>,
}

/// Whom a body failure is told to. Taken on the first failure, so it is told once.
struct Report {
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
        UpstreamBody {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
                deadline,
            ))),
            report: Some(Report {
                upstreams,
                index,
                started: Instant::now(),
                log,
            }),
        }
    }

    fn fail(&mut self, error: UpstreamBodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(report) = self.report.take() {
            let outcome = match error {
                UpstreamBodyError::Timeout => Outcome::Timeout { before_head: false },
                UpstreamBodyError::Broken(_) => Outcome::Reset { before_head: false },
            };
            report
                .upstreams
                .record(report.index, outcome, report.started.elapsed());
            if let Some(id) = report.log {
                tracing::warn!(
                    request_id = id.to_str().unwrap_or("-"),
                    upstream = %report.upstreams.label(report.index),
                    error = %error,
                    "upstream failure: answer body aborted, client connection closed"
                );
            }
        }
        Poll::Ready(Some(Err(Box::new(error))))
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.report.is_none() {
            // Failed before: stay failed.
            return Poll::Ready(Some(Err(Box::new(UpstreamBodyError::Timeout))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(error))) => this.fail(UpstreamBodyError::Broken(chain(&error))),
            Poll::Ready(other) => Poll::Ready(other.map(|frame| frame.map_err(Into::into))),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return this.fail(UpstreamBodyError::Timeout);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
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
