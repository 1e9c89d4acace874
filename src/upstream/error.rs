//! Why an upstream exchange failed, by whose fault: [`UpstreamError`] for an attempt,
//! [`ClientBodyError`] for the client's request body, [`UpstreamBodyError`] for an
//! answer body; how a hyper client error is classified; and how each becomes the
//! gateway's answer.

use std::time::Duration;

use crate::error::GatewayError;

/// Why no usable answer came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection closed or reset before any byte of the answer.
    #[error("connection reset: {0}")]
    Reset(String),
    /// No answer head in time.
    #[error("timed out")]
    Timeout,
    /// The answer body did not finish in time.
    #[error("answer body timed out")]
    BodyTimeout,
    /// The answer body broke off (reset, or shorter than announced).
    #[error("answer body failed: {0}")]
    BodyFailed(String),
    /// Not a usable HTTP answer (malformed, or a `101` nobody asked for).
    #[error("invalid answer: {0}")]
    Invalid(String),
    /// No target configured.
    #[error("no upstream")]
    NoHealthy,
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// The client's request body failed: the client's fault, not the upstream's.
    #[error("{0}")]
    ClientBody(ClientBodyError),
}

impl UpstreamError {
    /// Detail for the log (never for the client).
    pub fn detail(&self) -> Option<&str> {
        match self {
            UpstreamError::Connect(d)
            | UpstreamError::Reset(d)
            | UpstreamError::BodyFailed(d)
            | UpstreamError::Invalid(d) => Some(d),
            UpstreamError::Timeout
            | UpstreamError::BodyTimeout
            | UpstreamError::NoHealthy
            | UpstreamError::TooLarge(_)
            | UpstreamError::ClientBody(_) => None,
        }
    }
}

impl From<UpstreamError> for GatewayError {
    fn from(e: UpstreamError) -> GatewayError {
        match e {
            UpstreamError::Connect(_) | UpstreamError::Reset(_) | UpstreamError::BodyFailed(_) => {
                GatewayError::UpstreamUnavailable
            }
            UpstreamError::Timeout | UpstreamError::BodyTimeout => GatewayError::UpstreamTimeout,
            UpstreamError::Invalid(_) => {
                GatewayError::UpstreamInvalidResponse("not a usable HTTP answer".to_owned())
            }
            UpstreamError::NoHealthy => GatewayError::NoHealthyUpstream,
            UpstreamError::TooLarge(max) => GatewayError::UpstreamBodyTooLarge { max },
            UpstreamError::ClientBody(e) => e.into(),
        }
    }
}

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

/// Why an upstream answer body stopped before its end.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error("the upstream answer body did not finish in time")]
    Timeout,
    #[error("the upstream answer body broke off: {0}")]
    Broken(String),
}

/// Turns a hyper client error into an [`UpstreamError`]: the client's own body failing
/// (found anywhere in the source chain) first, then connect failures, then a connection
/// that closed or reset before the answer head, else an invalid answer.
pub fn classify(error: &(dyn std::error::Error + 'static)) -> UpstreamError {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut reset = false;
    while let Some(e) = current {
        if let Some(client) = e.downcast_ref::<ClientBodyError>() {
            return UpstreamError::ClientBody(client.clone());
        }
        if let Some(e) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            if e.is_connect() {
                return UpstreamError::Connect(chain(error));
            }
        }
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            reset |= e.is_incomplete_message() || e.is_canceled() || e.is_closed();
        }
        if let Some(e) = e.downcast_ref::<std::io::Error>() {
            reset |= matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        current = e.source();
    }
    if reset {
        UpstreamError::Reset(chain(error))
    } else {
        UpstreamError::Invalid(chain(error))
    }
}

/// An error and its sources, for logs.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
