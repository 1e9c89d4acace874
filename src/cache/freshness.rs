//! Freshness decisions, in our code and on an injectable clock (moka keeps its own
//! clock, which tests cannot move), and the RFC 9211 `Cache-Status` values.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::httputil::StackText;

/// Where "now" comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Instant>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            now: Mutex::new(Instant::now()),
        }
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The freshness settings (`[cache]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

/// What an entry of a given age may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Serve it.
    Fresh,
    /// Serve it and refresh in the background.
    Stale,
    /// Fetch; the entry may only stand in if the fetch fails (see `usable_if_error`).
    Expired,
}

impl Policy {
    pub fn freshness(&self, age: Duration) -> Freshness {
        if age < self.ttl {
            Freshness::Fresh
        } else if age < self.ttl + self.stale_while_revalidate {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }

    /// May an entry of this age stand in for a failed upstream?
    pub fn usable_if_error(&self, age: Duration) -> bool {
        age < self.ttl + self.stale_if_error
    }

    /// Remaining freshness in whole seconds, negative once stale (RFC 9211 `ttl`).
    pub fn ttl_left(&self, age: Duration) -> i64 {
        let left = self.ttl.as_secs_f64() - age.as_secs_f64();
        left.floor() as i64
    }

    /// How long moka keeps an entry at all: past this it is useless for any purpose.
    pub fn retention(&self) -> Duration {
        self.ttl + self.stale_while_revalidate.max(self.stale_if_error)
    }
}

/// How one lookup was served; becomes `Cache-Status` and a metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from an entry. `ttl` is negative when the entry was stale.
    Hit { ttl: i64, stale_if_error: bool },
    /// Fetched because there was no usable entry. `collapsed`: waited on another
    /// request's fetch.
    Miss { stored: bool, collapsed: bool },
    /// Fetched because the request said `Cache-Control: no-cache`.
    Revalidated { stored: bool },
    /// The cache was not used (`no-store`, or an uncacheable key).
    Bypass,
}

impl CacheOutcome {
    /// The `Cache-Status` field value, as text.
    pub fn header(&self) -> String {
        self.header_value()
            .to_str()
            .expect("Cache-Status values are ASCII")
            .to_owned()
    }

    /// The `Cache-Status` field value. Built on every anonymous answer: the fixed
    /// values are static, and a hit's is written on the stack and copied once.
    pub fn header_value(&self) -> HeaderValue {
        let fixed = match self {
            CacheOutcome::Hit {
                ttl,
                stale_if_error,
            } => {
                let mut value = StackText::default();
                let written = value
                    .push(b"csgate; hit; ttl=")
                    .and_then(|()| value.push_integer(*ttl))
                    .and_then(|()| match stale_if_error {
                        true => value.push(b"; detail=stale-if-error"),
                        false => Ok(()),
                    });
                // At most 17 + 20 + 23 bytes: it always fits.
                written.expect("a hit's Cache-Status fits in 64 bytes");
                return HeaderValue::from_bytes(value.as_bytes())
                    .expect("a hit's Cache-Status is ASCII text and digits");
            }
            CacheOutcome::Miss {
                stored: false,
                collapsed: false,
            } => "csgate; fwd=uri-miss",
            CacheOutcome::Miss {
                stored: true,
                collapsed: false,
            } => "csgate; fwd=uri-miss; stored",
            CacheOutcome::Miss {
                stored: false,
                collapsed: true,
            } => "csgate; fwd=uri-miss; collapsed",
            CacheOutcome::Miss {
                stored: true,
                collapsed: true,
            } => "csgate; fwd=uri-miss; collapsed; stored",
            CacheOutcome::Revalidated { stored: false } => "csgate; fwd=request",
            CacheOutcome::Revalidated { stored: true } => "csgate; fwd=request; stored",
            CacheOutcome::Bypass => "csgate; fwd=bypass",
        };
        HeaderValue::from_static(fixed)
    }

    /// The `result` label of `csgate_cache_requests_total` and the log field.
    pub fn label(&self) -> &'static str {
        match self {
            CacheOutcome::Hit { ttl, .. } if *ttl < 0 => "stale",
            CacheOutcome::Hit { .. } => "hit",
            CacheOutcome::Miss {
                collapsed: true, ..
            } => "coalesced",
            CacheOutcome::Miss { .. } | CacheOutcome::Revalidated { .. } => "miss",
            CacheOutcome::Bypass => "bypass",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        ttl: Duration::from_secs(30),
        stale_while_revalidate: Duration::from_secs(10),
        stale_if_error: Duration::from_secs(300),
    };

    #[test]
    fn ages_map_to_freshness() {
        let s = Duration::from_secs;
        let cases = [
            (s(0), Freshness::Fresh, 30, true),
            (Duration::from_millis(29_999), Freshness::Fresh, 0, true),
            (s(30), Freshness::Stale, 0, true),
            (Duration::from_millis(30_001), Freshness::Stale, -1, true),
            (s(39), Freshness::Stale, -9, true),
            (s(40), Freshness::Expired, -10, true),
            (s(329), Freshness::Expired, -299, true),
            (s(330), Freshness::Expired, -300, false),
        ];
        for (age, freshness, ttl, usable) in cases {
            assert_eq!(POLICY.freshness(age), freshness, "age {age:?}");
            assert_eq!(POLICY.ttl_left(age), ttl, "age {age:?}");
            assert_eq!(POLICY.usable_if_error(age), usable, "age {age:?}");
        }
        assert_eq!(POLICY.retention(), s(330));
    }

    #[test]
    fn cache_status_values() {
        let cases = [
            (
                CacheOutcome::Hit {
                    ttl: 12,
                    stale_if_error: false,
                },
                "csgate; hit; ttl=12",
                "hit",
            ),
            (
                CacheOutcome::Hit {
                    ttl: -3,
                    stale_if_error: false,
                },
                "csgate; hit; ttl=-3",
                "stale",
            ),
            (
                CacheOutcome::Hit {
                    ttl: -40,
                    stale_if_error: true,
                },
                "csgate; hit; ttl=-40; detail=stale-if-error",
                "stale",
            ),
            (
                CacheOutcome::Miss {
                    stored: true,
                    collapsed: false,
                },
                "csgate; fwd=uri-miss; stored",
                "miss",
            ),
            (
                CacheOutcome::Miss {
                    stored: true,
                    collapsed: true,
                },
                "csgate; fwd=uri-miss; collapsed; stored",
                "coalesced",
            ),
            (
                CacheOutcome::Miss {
                    stored: false,
                    collapsed: false,
                },
                "csgate; fwd=uri-miss",
                "miss",
            ),
            (
                CacheOutcome::Miss {
                    stored: false,
                    collapsed: true,
                },
                "csgate; fwd=uri-miss; collapsed",
                "coalesced",
            ),
            (
                CacheOutcome::Revalidated { stored: true },
                "csgate; fwd=request; stored",
                "miss",
            ),
            (
                CacheOutcome::Revalidated { stored: false },
                "csgate; fwd=request",
                "miss",
            ),
            (CacheOutcome::Bypass, "csgate; fwd=bypass", "bypass"),
        ];
        for (outcome, header, label) in cases {
            assert_eq!(outcome.header(), header);
            assert_eq!(outcome.header_value(), header);
            assert_eq!(outcome.label(), label);
        }
    }

    #[test]
    fn integers_are_written_like_display() {
        for n in [
            0,
            7,
            -7,
            10,
            -10,
            29,
            300,
            -300,
            i64::MAX,
            i64::MIN,
            1_000_000_007,
        ] {
            let mut out = StackText::default();
            out.push_integer(n).expect("fits");
            assert_eq!(out.as_bytes(), n.to_string().as_bytes());
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::default();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.now() - t0, Duration::from_secs(5));
    }
}
