//! Passive health of one upstream target, as a small state machine:
//!
//! - **in rotation** — takes traffic; `eject_after` consecutive failures (those
//!   `[upstream] eject_on` names) eject it;
//! - **ejected** — for `eject_for`, whatever a TCP probe says;
//! - **half-open** — after `eject_for`: exactly one trial request at a time; its outcome
//!   decides (back in rotation, or ejected for another `eject_for`).
//!
//! When no target is in rotation the pool is in *panic mode* (`Upstreams::pick`): every
//! target takes traffic anyway, because ejection chooses among upstreams and never
//! refuses all of them. Any answer that is not a failure brings its target back.
//!
//! All state is atomics; nothing here locks.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Where a target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    InRotation,
    Ejected,
    HalfOpen,
}

/// One target's health. Times are milliseconds since the pool's epoch.
#[derive(Debug, Default)]
pub struct Health {
    consecutive_failures: AtomicU32,
    /// Until when the target is ejected; 0 while it is in rotation.
    ejected_until: AtomicU64,
    /// A half-open trial (or a probe standing in for one) is in flight.
    trial: AtomicBool,
}

/// Held while a half-open trial runs; dropping it (the outcome recorded, or the request
/// abandoned) frees the slot for the next trial.
#[derive(Debug)]
pub struct TrialGuard<'a>(&'a AtomicBool);

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What a recorded outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Left rotation (`failures` in a row).
    Ejected {
        failures: u32,
    },
    /// A trial (or a panic-mode attempt) failed: out for another cool-down.
    StillOut,
    /// Back in rotation.
    Restored,
}

impl Health {
    pub fn state(&self, now_ms: u64) -> State {
        match self.ejected_until.load(Ordering::Acquire) {
            0 => State::InRotation,
            until if now_ms < until => State::Ejected,
            _ => State::HalfOpen,
        }
    }

    pub fn in_rotation(&self) -> bool {
        self.ejected_until.load(Ordering::Acquire) == 0
    }

    /// Half-open, and no trial in flight.
    pub fn awaits_trial(&self, now_ms: u64) -> bool {
        self.state(now_ms) == State::HalfOpen && !self.trial.load(Ordering::Acquire)
    }

    /// Takes the half-open trial slot, if the target is half-open and the slot is free.
    pub fn try_trial(&self, now_ms: u64) -> Option<TrialGuard<'_>> {
        if self.state(now_ms) != State::HalfOpen {
            return None;
        }
        self.trial
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| TrialGuard(&self.trial))
    }

    /// A failure that counts: ejects after `eject_after` in a row, or at once when the
    /// target was already out (a failed trial, a failed panic-mode attempt).
    pub fn fail(&self, now_ms: u64, eject_after: u32, eject_for_ms: u64) -> Change {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let until = (now_ms + eject_for_ms).max(1);
        if !self.in_rotation() {
            self.ejected_until.store(until, Ordering::Release);
            return Change::StillOut;
        }
        if failures >= eject_after
            && self
                .ejected_until
                .compare_exchange(0, until, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Change::Ejected { failures };
        }
        Change::None
    }

    /// An outcome that does not count as a failure.
    pub fn succeed(&self) -> Change {
        self.consecutive_failures.store(0, Ordering::Release);
        if self.ejected_until.swap(0, Ordering::AcqRel) != 0 {
            Change::Restored
        } else {
            Change::None
        }
    }

    /// A half-open target that refused a TCP connect: out for another cool-down. Never
    /// brings a target back (only a request's answer can).
    pub fn keep_out(&self, now_ms: u64, eject_for_ms: u64) {
        if !self.in_rotation() {
            self.ejected_until
                .store((now_ms + eject_for_ms).max(1), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejected_for_the_cool_down_then_one_trial_decides() {
        let h = Health::default();
        assert_eq!(h.fail(0, 2, 1000), Change::None);
        assert_eq!(h.fail(10, 2, 1000), Change::Ejected { failures: 2 });
        assert_eq!(h.state(500), State::Ejected);
        assert!(h.try_trial(500).is_none(), "no trial during the cool-down");
        assert_eq!(h.state(1010), State::HalfOpen);
        let trial = h.try_trial(1010).expect("the first trial");
        assert!(h.try_trial(1010).is_none(), "one trial at a time");
        assert_eq!(h.fail(1020, 2, 1000), Change::StillOut);
        drop(trial);
        assert_eq!(
            h.state(1500),
            State::Ejected,
            "a failed trial rests it again"
        );
        let trial = h.try_trial(2020).expect("the next trial");
        assert_eq!(h.succeed(), Change::Restored);
        drop(trial);
        assert_eq!(h.state(2030), State::InRotation);
        assert_eq!(h.fail(2040, 2, 1000), Change::None, "the count restarted");
    }

    #[test]
    fn an_abandoned_trial_frees_the_slot_and_a_probe_never_restores() {
        let h = Health::default();
        h.fail(0, 1, 100);
        drop(h.try_trial(100).expect("trial"));
        assert!(
            h.try_trial(100).is_some(),
            "the dropped guard freed the slot"
        );
        h.keep_out(100, 100);
        assert_eq!(h.state(150), State::Ejected);
        assert!(!h.in_rotation());
    }
}
