//! The upstream Context Services stores: a pooled keep-alive HTTP/1.1 client
//! (hyper-util), round-robin over the targets in rotation, and the policies around it:
//!
//! - [`pool`]: the targets, the client, selection and the recording of outcomes;
//! - [`attempt`]: the one attempt loop behind `fetch`, `stream_read` and `stream`;
//! - [`error`]: what failed and whose fault it was, and how it becomes an answer;
//! - [`health`]: passive health per target — ejection on the failures `eject_on`
//!   names, `eject_for` cool-down, half-open trial — and panic mode for the pool;
//! - [`policy`]: what an attempt concluded, `eject_on`/`retry_on`, the retry budget;
//! - [`body`]: the client's request body and the upstream's answer body, each with its
//!   own limits and its own blame;
//!
//! Retries: only bodiless GET/HEAD, only when `retry_on` names the outcome (by default
//! only when nothing came back), within `max_retries`, the overall `deadline` and the
//! retry budget. A request with a body is sent once.
//!
//! Timeouts: `request_timeout` covers one attempt from the request to the last byte of
//! the answer, minus the time spent waiting on the client's own body.

pub mod attempt;
pub mod body;
pub mod config;
pub mod error;
pub mod health;
pub mod policy;
pub mod pool;

pub use self::attempt::{Fetched, Streamed};
pub use self::body::{ClientBody, Prefix, UpstreamBody};
pub use self::config::{Upstream, UpstreamConfig, UpstreamTls};
pub use self::error::{ClientBodyError, UpstreamBodyError, UpstreamError};
pub use self::policy::{FailureSet, Outcome};
pub use self::pool::{AttemptObserver, Target, Upstreams};
