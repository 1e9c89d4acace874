//! Token buckets kept in this process, as GCRA (the generic cell rate algorithm: one
//! "theoretical arrival time" per bucket, updated by compare-and-swap, no timer). A
//! bucket idle for longer than it takes to refill is full again, so forgetting it is
//! exact: buckets live in a bounded moka cache that drops them after that idle time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::Rate;

/// Buckets kept at most; a client that invents credentials cannot grow memory past
/// this (an evicted bucket is full again, which lets such a client spend at most one
/// extra burst per evicted key).
const MAX_BUCKETS: u64 = 100_000;

/// The decision on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused; a token is back after this long.
    Deny {
        retry_after: Duration,
    },
}

/// A theoretical arrival time in nanoseconds since the limiter's epoch.
#[derive(Debug, Default)]
struct Bucket(AtomicU64);

impl Bucket {
    /// GCRA: a request at `now` moves the arrival time one interval on from
    /// `max(tat, now)`; it is allowed while that lies within `burst` intervals of now.
    fn take(&self, now: u64, rate: Rate) -> Decision {
        self.decide(now, rate, true)
    }

    /// `take` without spending: what it would decide now.
    fn peek(&self, now: u64, rate: Rate) -> Decision {
        self.decide(now, rate, false)
    }

    fn decide(&self, now: u64, rate: Rate, spend: bool) -> Decision {
        let interval = duration_nanos(rate.interval());
        let tolerance = interval.saturating_mul(u64::from(rate.burst));
        let mut tat = self.0.load(Ordering::Acquire);
        loop {
            let next = tat.max(now).saturating_add(interval);
            let ahead = next - now;
            if ahead > tolerance {
                return Decision::Deny {
                    retry_after: Duration::from_nanos(ahead - tolerance),
                };
            }
            if !spend {
                return Decision::Allow;
            }
            match self
                .0
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Decision::Allow,
                Err(current) => tat = current,
            }
        }
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// Local buckets by key (a hash of the scope and the tenant or credential). Cheap to
/// clone.
#[derive(Clone)]
pub struct LocalBuckets {
    buckets: moka::sync::Cache<u64, Arc<Bucket>>,
    epoch: Instant,
}

impl LocalBuckets {
    /// `longest_refill`: the longest time any configured bucket takes to fill up from
    /// empty, after which an idle bucket is forgotten.
    pub fn new(longest_refill: Duration) -> LocalBuckets {
        LocalBuckets {
            buckets: moka::sync::Cache::builder()
                .max_capacity(MAX_BUCKETS)
                .time_to_idle(longest_refill.max(Duration::from_millis(1)))
                .build(),
            epoch: Instant::now(),
        }
    }

    /// Takes a token from bucket `key` at `rate`.
    pub fn take(&self, key: u64, rate: Rate) -> Decision {
        self.take_at(key, rate, Instant::now())
    }

    /// Takes a token from every bucket of `spends` or from none: the first that would
    /// refuse is named with its wait. (Two requests racing for the last tokens of two
    /// buckets may each spend one and be refused by the other; never more than burst.)
    pub fn take_all(&self, spends: &[(u64, Rate)]) -> Result<(), (usize, Duration)> {
        let now = duration_nanos(Instant::now().saturating_duration_since(self.epoch));
        let buckets: Vec<_> = spends
            .iter()
            .map(|(key, _)| self.buckets.get_with(*key, Arc::default))
            .collect();
        for (i, (bucket, (_, rate))) in buckets.iter().zip(spends).enumerate() {
            if let Decision::Deny { retry_after } = bucket.peek(now, *rate) {
                return Err((i, retry_after));
            }
        }
        for (i, (bucket, (_, rate))) in buckets.iter().zip(spends).enumerate() {
            if let Decision::Deny { retry_after } = bucket.take(now, *rate) {
                return Err((i, retry_after));
            }
        }
        Ok(())
    }

    fn take_at(&self, key: u64, rate: Rate, at: Instant) -> Decision {
        let now = duration_nanos(at.saturating_duration_since(self.epoch));
        self.buckets.get_with(key, Arc::default).take(now, rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let buckets = LocalBuckets::new(Duration::from_secs(10));
        let rate = Rate {
            per_second: 10.0,
            burst: 3,
        };
        let t0 = Instant::now() + Duration::from_secs(1);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let decisions: Vec<_> = (0..4).map(|_| buckets.take_at(1, rate, at(0))).collect();
        assert_eq!(&decisions[..3], &[Decision::Allow; 3]);
        assert_eq!(
            decisions[3],
            Decision::Deny {
                retry_after: Duration::from_millis(100)
            }
        );
        // Another key has its own bucket.
        assert_eq!(buckets.take_at(2, rate, at(0)), Decision::Allow);
        // One interval later, one more token; not two.
        assert_eq!(buckets.take_at(1, rate, at(100)), Decision::Allow);
        assert!(matches!(
            buckets.take_at(1, rate, at(100)),
            Decision::Deny { .. }
        ));
        // Idle long enough, the bucket is full again.
        let full: Vec<_> = (0..4).map(|_| buckets.take_at(1, rate, at(1000))).collect();
        assert_eq!(full.iter().filter(|d| **d == Decision::Allow).count(), 3);
    }

    #[test]
    fn a_request_spends_from_all_its_buckets_or_from_none() {
        let buckets = LocalBuckets::new(Duration::from_secs(10));
        let slow = Rate {
            per_second: 0.001,
            burst: 1,
        };
        let roomy = Rate {
            per_second: 0.001,
            burst: 2,
        };
        assert_eq!(buckets.take_all(&[(1, roomy), (2, slow)]), Ok(()));
        // Bucket 2 refuses: bucket 1 keeps its last token.
        assert_eq!(
            buckets.take_all(&[(1, roomy), (2, slow)]).map_err(|e| e.0),
            Err(1)
        );
        assert_eq!(buckets.take_all(&[(1, roomy), (3, slow)]), Ok(()));
        assert_eq!(buckets.take_all(&[(1, roomy)]).map_err(|e| e.0), Err(0));
    }
}
