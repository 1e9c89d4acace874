//! The error of the broad fetch behind an anonymous lookup: what the cache shares
//! with the requests waiting on that fetch, whether it came through the fleet's shared
//! tier or straight from the upstream.

use std::sync::Arc;

use crate::cache::FetchError;
use crate::error::GatewayError;
use crate::upstream::Fetched;

/// Why the broad fetch has no answer to store; shared with the requests waiting on it.
#[derive(Debug, Clone)]
pub(super) enum BroadError {
    /// The upstream answered non-2xx: passed through unchanged.
    Answered(Arc<Fetched>),
    /// Connect error, timeout, invalid body, no healthy upstream.
    Gateway(GatewayError),
}

impl FetchError for BroadError {
    /// Connect errors, timeouts, 5xx.
    fn is_upstream_failure(&self) -> bool {
        match self {
            BroadError::Answered(fetched) => fetched.status.is_server_error(),
            BroadError::Gateway(e) => matches!(
                e,
                GatewayError::UpstreamUnavailable
                    | GatewayError::UpstreamTimeout
                    | GatewayError::NoHealthyUpstream
            ),
        }
    }

    fn wait_timed_out() -> Self {
        BroadError::Gateway(GatewayError::UpstreamTimeout)
    }

    fn fetch_lost() -> Self {
        BroadError::Gateway(GatewayError::Internal(
            "cache fetch task ended without an answer".into(),
        ))
    }
}
