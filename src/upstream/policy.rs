//! What an upstream attempt concluded ([`Outcome`]), which conclusions count toward
//! ejection or allow a retry ([`FailureSet`]: `[upstream] eject_on` and `retry_on`), the
//! retry budget, and deadline arithmetic ([`later`]).
//!
//! Locking: `RetryBudget` holds a `std::sync::Mutex` for a few arithmetic operations and
//! never across an `.await`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::StatusCode;

use super::error::UpstreamError;

/// What one attempt concluded, for health, retries and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered (any status; whether it counts is `FailureSet`'s call).
    Answered(StatusCode),
    /// No TCP connection.
    ConnectFailure,
    /// The connection broke: before any byte of the answer (`before_head`), or in its body.
    Reset { before_head: bool },
    /// No answer head in time (`before_head`), or the body stalled past the deadline.
    Timeout { before_head: bool },
    /// The upstream answered something that is not a usable HTTP answer (a malformed
    /// head, a `101` to a request that asked for no upgrade).
    InvalidResponse,
    /// The client's request body failed to arrive: not the upstream's doing.
    ClientBody,
}

impl Outcome {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Answered(status) if status.is_server_error() => "bad_status",
            Outcome::Answered(_) => "success",
            Outcome::ConnectFailure => "connect_error",
            Outcome::Reset { .. } => "reset",
            Outcome::Timeout { .. } => "timeout",
            Outcome::InvalidResponse => "invalid_response",
            Outcome::ClientBody => "client_body",
        }
    }

    /// The `eject_on`/`retry_on` name this outcome goes by; `None` for the client's
    /// own failure, which neither list can name.
    fn failure(self) -> Option<Failure> {
        match self {
            Outcome::Answered(status) => Some(Failure::Status(status.as_u16())),
            Outcome::ConnectFailure => Some(Failure::ConnectFailure),
            Outcome::Reset { .. } => Some(Failure::Reset),
            Outcome::Timeout { .. } => Some(Failure::Timeout),
            Outcome::InvalidResponse => Some(Failure::InvalidResponse),
            Outcome::ClientBody => None,
        }
    }

    /// Nothing of an answer was received: sending the request again cannot repeat
    /// anything the client could have seen.
    fn nothing_received(self) -> bool {
        matches!(
            self,
            Outcome::ConnectFailure
                | Outcome::Reset { before_head: true }
                | Outcome::Timeout { before_head: true }
        )
    }

    /// The outcome of a failed attempt that produced `error`.
    pub fn of_error(error: &UpstreamError) -> Outcome {
        match error {
            UpstreamError::Connect(_) | UpstreamError::NoHealthy => Outcome::ConnectFailure,
            UpstreamError::Reset(_) => Outcome::Reset { before_head: true },
            UpstreamError::Timeout => Outcome::Timeout { before_head: true },
            UpstreamError::BodyTimeout => Outcome::Timeout { before_head: false },
            UpstreamError::BodyFailed(_) => Outcome::Reset { before_head: false },
            UpstreamError::TooLarge(_) | UpstreamError::Invalid(_) => Outcome::InvalidResponse,
            UpstreamError::ClientBody(_) => Outcome::ClientBody,
        }
    }
}

/// One name in `eject_on` / `retry_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    ConnectFailure,
    Reset,
    Timeout,
    InvalidResponse,
    /// An answer with this status.
    Status(u16),
}

/// The set of failures a list names (`[upstream] eject_on`, `retry_on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureSet(Vec<Failure>);

impl FailureSet {
    /// Parses names: `connect-failure`, `reset`, `timeout`, `invalid-response`, or a
    /// status code 100..=599. The error names the first bad entry.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<FailureSet, String> {
        let mut set = Vec::new();
        for name in names {
            let name = name.as_ref().trim();
            let failure = match name {
                "connect-failure" => Failure::ConnectFailure,
                "reset" => Failure::Reset,
                "timeout" => Failure::Timeout,
                "invalid-response" => Failure::InvalidResponse,
                code => match code.parse::<u16>() {
                    Ok(code @ 100..=599) => Failure::Status(code),
                    _ => {
                        return Err(format!(
                            "'{name}' is not one of connect-failure, reset, timeout, \
                             invalid-response or a status code"
                        ))
                    }
                },
            };
            if !set.contains(&failure) {
                set.push(failure);
            }
        }
        Ok(FailureSet(set))
    }

    /// Does the set name this outcome?
    pub fn names(&self, outcome: Outcome) -> bool {
        outcome.failure().is_some_and(|f| self.0.contains(&f))
    }

    /// May a bodiless read that ended with `outcome` be sent again? Only when the set
    /// names it, and, unless a status was named explicitly, only when nothing came back.
    pub fn allows_retry(&self, outcome: Outcome) -> bool {
        self.names(outcome)
            && (outcome.nothing_received() || matches!(outcome, Outcome::Answered(_)))
    }
}

/// `at + by`, saturating at a far future instead of overflowing on an absurd setting.
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    at.checked_add(by.min(FAR))
        .unwrap_or_else(|| at + Duration::from_secs(24 * 3600))
}

/// Finagle-style retry budget: every request deposits `ratio` of a token, every retry
/// costs one, with a floor of 10 tokens so a quiet gateway can still retry. Counted in
/// milli-tokens so that ten deposits of 0.2 make exactly two tokens.
pub struct RetryBudget {
    deposit_milli: u64,
    milli_tokens: Mutex<u64>,
}

impl RetryBudget {
    const FLOOR: u64 = 10_000;
    const CAP: u64 = 1_000_000;
    const ONE: u64 = 1_000;

    pub fn new(ratio: f64) -> RetryBudget {
        RetryBudget {
            deposit_milli: (ratio * Self::ONE as f64).round() as u64,
            milli_tokens: Mutex::new(Self::FLOOR),
        }
    }

    pub fn deposit(&self) {
        let mut tokens = self.milli_tokens.lock().unwrap_or_else(|p| p.into_inner());
        *tokens = (*tokens + self.deposit_milli).min(Self::CAP);
    }

    pub fn withdraw(&self) -> bool {
        let mut tokens = self.milli_tokens.lock().unwrap_or_else(|p| p.into_inner());
        if *tokens >= Self::ONE {
            *tokens -= Self::ONE;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::defaults;

    #[test]
    fn retry_budget_allows_the_floor_then_the_ratio() {
        let budget = RetryBudget::new(0.2);
        let allowed = (0..20).filter(|_| budget.withdraw()).count();
        assert_eq!(allowed, 10);
        for _ in 0..10 {
            budget.deposit();
        }
        assert!(budget.withdraw(), "ten requests at 20% buy two retries");
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
    }

    #[test]
    fn the_defaults_eject_on_gateway_statuses_and_retry_only_when_nothing_came_back() {
        let eject = FailureSet::parse(defaults::EJECT_ON).expect("default parses");
        let retry = FailureSet::parse(defaults::RETRY_ON).expect("default parses");
        let s = |code| Outcome::Answered(StatusCode::from_u16(code).expect("status"));
        let table = [
            // outcome, ejects, retried
            (s(200), false, false),
            (s(404), false, false),
            (s(500), false, false),
            (s(502), true, false),
            (s(503), true, false),
            (s(504), true, false),
            (Outcome::ConnectFailure, true, true),
            (Outcome::Reset { before_head: true }, true, true),
            (Outcome::Reset { before_head: false }, true, false),
            (Outcome::Timeout { before_head: true }, true, true),
            (Outcome::Timeout { before_head: false }, true, false),
            (Outcome::InvalidResponse, false, false),
            (Outcome::ClientBody, false, false),
        ];
        for (outcome, ejects, retried) in table {
            assert_eq!(eject.names(outcome), ejects, "eject {outcome:?}");
            assert_eq!(retry.allows_retry(outcome), retried, "retry {outcome:?}");
        }
    }

    #[test]
    fn a_status_named_in_retry_on_is_retried_and_a_bad_name_is_refused() {
        let retry = FailureSet::parse(&["connect-failure", "503"]).expect("parses");
        assert!(retry.allows_retry(Outcome::Answered(StatusCode::SERVICE_UNAVAILABLE)));
        assert!(!retry.allows_retry(Outcome::Answered(StatusCode::BAD_GATEWAY)));
        for bad in ["5xx", "600", "reset-before", ""] {
            let error = FailureSet::parse(&[bad]).expect_err(bad);
            assert!(error.contains(&format!("'{bad}'")), "{error}");
        }
    }
}
