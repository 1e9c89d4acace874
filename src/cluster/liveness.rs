//! "Can this replica prove it hears every invalidation?" (fleet contract §3, gray
//! failures). When it cannot, it is *degraded*: local entries serve only within
//! `degraded_ttl` of being stored, and nothing is refilled from the shared tier.
//!
//! The proof is made of heartbeats. Every replica publishes one every
//! [`Timing::interval`] on the heartbeat channel, after everything it has published
//! before, carrying its last invalidation's sequence number and how many of its
//! invalidations are still undelivered. Redis hands a subscriber every message in the
//! order it executed the `PUBLISH`es, so:
//! - hearing (and having applied, in order) **its own** heartbeat sent at `t` proves
//!   this replica has applied every invalidation published before `t`;
//! - hearing a **peer's** heartbeat proves the peer is alive and its link to Redis
//!   works, and its `pending` says whether it holds undelivered invalidations; its
//!   sequence number shows a lost message at once (a gap).
//!
//! Confirmed until = the earliest of (own heartbeat sent + window) and, for each peer,
//! (heard + window), and nothing while this replica or a peer holds undelivered
//! invalidations or the subscription is down. The hit path compares `now` with that
//! instant: one atomic load, and a replica that stops hearing anything (a silently
//! dropped subscription, a stalled Redis, a process that was stopped) is degraded
//! within one window without any task having to notice.
//!
//! A peer silent for `peer_timeout` is taken for gone (a replica that was killed); one
//! that says goodbye on shutdown is dropped at once.
//!
//! Locking: `state` is a `std::sync::Mutex`, held for bookkeeping only, never across an
//! `.await`; the hit path reads only the atomic.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::beat::Beat;
use super::message::ReplicaId;

/// How often heartbeats go out and how long one proves anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between two heartbeats of one replica.
    pub interval: Duration,
    /// How long a heartbeat heard proves the link: a replica that hears nothing for
    /// this long is degraded.
    pub window: Duration,
    /// A peer not heard for this long is taken for gone.
    pub peer_timeout: Duration,
    /// `op_timeout`: how long a writer waits for its message to be applied. An own
    /// heartbeat that takes longer than this from publish to applied, three times in a
    /// row, shows a bus slower than writers wait for: degraded.
    pub slow_bus: Duration,
}

impl Timing {
    /// The window is 0.8 × `degraded_ttl` (800 ms by default: the contract's "missing
    /// for longer than about 1 s", with room for the time it takes to notice), so that
    /// a pre-write answer is never served longer than `degraded_ttl` after the write's
    /// 2xx; four heartbeats per window. A longer `degraded_ttl` is a looser bound, and
    /// buys tolerance of a replica starved of CPU for a moment.
    pub fn new(degraded_ttl: Duration, peer_timeout: Duration, op_timeout: Duration) -> Timing {
        let window = degraded_ttl.mul_f64(0.8);
        Timing {
            interval: window / 4,
            window,
            peer_timeout,
            slow_bus: op_timeout,
        }
    }
}

/// This replica's proof, shared by the bus's tasks and read by the hit path.
pub struct Liveness {
    me: ReplicaId,
    timing: Timing,
    epoch: Instant,
    /// Nanoseconds since `epoch` until which local entries may be served past
    /// `degraded_ttl`; 0 while degraded.
    confirmed_until: AtomicU64,
    /// Refill from the shared tier allowed: confirmed, and no invalidation of this
    /// replica or of a peer on its way (its shared-tier step may not be done yet).
    refill: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    subscribed: bool,
    /// Own heartbeats sent and not heard back yet: (beat, sent).
    sent: VecDeque<(u64, Instant)>,
    /// When the last own heartbeat heard back (and applied) was sent.
    own: Option<Instant>,
    /// The last own heartbeats' publish-to-applied times, newest last.
    round_trips: VecDeque<Duration>,
    /// Own invalidations held after a failure, or whose shared step failed.
    held: usize,
    /// Own invalidations on their way (first attempt included).
    in_flight: usize,
    peers: HashMap<ReplicaId, Peer>,
    /// When the last apply acknowledgement for an own message arrived.
    last_ack: Option<Instant>,
    /// Peers taken for gone while silent: what they may have published unheard is
    /// unknown, so the local cache must be flushed before this replica is confirmed.
    flush_owed: Vec<ReplicaId>,
    /// Peers taken for gone or that said goodbye: the member list does not bring them
    /// back (a heartbeat does).
    gone: std::collections::HashSet<ReplicaId>,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    heard: Instant,
    seq: u64,
    pending: u32,
}

/// Own heartbeats remembered while waiting to hear them back.
const SENT_KEPT: usize = 64;
/// Own heartbeats in a row slower than `slow_bus` that make the bus count as slow.
const SLOW_IN_A_ROW: usize = 3;

impl State {
    /// The last [`SLOW_IN_A_ROW`] own heartbeats all took longer than `slow_bus`.
    fn bus_slow(&self, slow_bus: Duration) -> bool {
        self.round_trips.len() == SLOW_IN_A_ROW && self.round_trips.iter().all(|rt| *rt > slow_bus)
    }
}

impl Liveness {
    pub fn new(me: ReplicaId, timing: Timing) -> Liveness {
        Liveness {
            me,
            timing,
            epoch: Instant::now(),
            confirmed_until: AtomicU64::new(0),
            refill: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// True while this replica can prove it hears every invalidation. An atomic load
    /// and a clock read: fine on the hit path.
    pub fn confirmed(&self, now: Instant) -> bool {
        self.nanos(now) < self.confirmed_until.load(Ordering::Acquire)
    }

    /// True when a local miss may be filled from the shared tier.
    pub fn may_refill(&self, now: Instant) -> bool {
        self.refill.load(Ordering::Acquire) && self.confirmed(now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The subscription is up (`true`: a fresh one, which proves nothing until an own
    /// heartbeat comes back through it) or down.
    pub fn subscribed(&self, up: bool) {
        let mut state = self.lock();
        state.subscribed = up;
        state.own = None;
        state.sent.clear();
        state.round_trips.clear();
        self.recompute(&mut state, Instant::now());
    }

    /// An own heartbeat is about to be published.
    pub fn sent(&self, beat: u64, at: Instant) {
        let mut state = self.lock();
        state.sent.push_back((beat, at));
        while state.sent.len() > SENT_KEPT {
            state.sent.pop_front();
        }
    }

    /// The outbox's counts changed.
    pub fn outbox(&self, held: usize, in_flight: usize) {
        let mut state = self.lock();
        state.held = held;
        state.in_flight = in_flight;
        self.recompute(&mut state, Instant::now());
    }

    /// An apply acknowledgement for an own message arrived.
    pub fn acknowledged(&self) {
        self.lock().last_ack = Some(Instant::now());
    }

    /// A heartbeat heard, after every message published before it was applied.
    pub fn heard(&self, beat: Beat, now: Instant) {
        let mut state = self.lock();
        match beat {
            Beat::Alive { origin, beat, .. } if origin == self.me => {
                if let Some(at) = state.sent.iter().position(|(b, _)| *b == beat) {
                    let sent = state.sent[at].1;
                    state.sent.drain(..=at);
                    state.own = Some(sent);
                    state
                        .round_trips
                        .push_back(now.saturating_duration_since(sent));
                    while state.round_trips.len() > SLOW_IN_A_ROW {
                        state.round_trips.pop_front();
                    }
                }
            }
            Beat::Alive {
                origin,
                seq,
                pending,
                ..
            } => {
                state.gone.remove(&origin);
                let known = state.peers.insert(
                    origin,
                    Peer {
                        heard: now,
                        seq,
                        pending,
                    },
                );
                if known.is_none() {
                    tracing::info!(peer = %origin, "cluster: a replica joined");
                }
            }
            Beat::Leaving { origin } => {
                state.gone.insert(origin);
                if state.peers.remove(&origin).is_some() {
                    tracing::info!(peer = %origin, "cluster: a replica left");
                }
            }
        }
        self.recompute(&mut state, now);
    }

    /// The fleet's member list (each replica's last heartbeat, as Redis keeps it):
    /// members not heard yet are counted as peers from the time of their last
    /// heartbeat, so a replica that starts while another is cut off from Redis (and may
    /// hold undelivered invalidations) is degraded until it hears from it, or until
    /// `peer_timeout` after its last heartbeat.
    pub fn members(&self, members: &[(ReplicaId, Duration)], now: Instant) {
        let mut state = self.lock();
        let mut added = false;
        for (id, age) in members {
            if *id == self.me || state.gone.contains(id) || state.peers.contains_key(id) {
                continue;
            }
            let Some(heard) = now.checked_sub(*age) else {
                continue;
            };
            state.peers.insert(
                *id,
                Peer {
                    heard,
                    seq: 0,
                    pending: 0,
                },
            );
            added = true;
        }
        if added {
            self.recompute(&mut state, now);
        }
    }

    /// A peer's invalidation arrived whose shared-tier step failed: no refill from the
    /// shared tier until its next heartbeat says it caught up.
    pub fn peer_shared_pending(&self, origin: ReplicaId) {
        let mut state = self.lock();
        if let Some(peer) = state.peers.get_mut(&origin) {
            peer.pending = peer.pending.max(1);
        } else {
            state.peers.insert(
                origin,
                Peer {
                    heard: Instant::now(),
                    seq: 0,
                    pending: 1,
                },
            );
        }
        self.recompute(&mut state, Instant::now());
    }

    /// Peers taken for gone since the last call: the caller flushes the local cache,
    /// then calls [`Liveness::flushed`].
    pub fn owed_flush(&self) -> Vec<ReplicaId> {
        self.lock().flush_owed.clone()
    }

    /// The flush [`Liveness::owed_flush`] asked for is done.
    pub fn flushed(&self, peers: &[ReplicaId]) {
        let mut state = self.lock();
        state.flush_owed.retain(|p| !peers.contains(p));
        self.recompute(&mut state, Instant::now());
    }

    /// The last sequence number `origin` said it delivered, if it is known.
    pub fn peer_seq(&self, origin: ReplicaId) -> Option<u64> {
        self.lock().peers.get(&origin).map(|p| p.seq)
    }

    fn recompute(&self, state: &mut State, now: Instant) {
        let timing = self.timing;
        let mut gone = Vec::new();
        state.peers.retain(|origin, peer| {
            let alive = now.saturating_duration_since(peer.heard) < timing.peer_timeout;
            if !alive {
                tracing::warn!(
                    peer = %origin,
                    silent_for = ?timing.peer_timeout,
                    "cluster: a replica has not been heard for peer_timeout; taken for gone"
                );
                gone.push(*origin);
            }
            alive
        });
        state.gone.extend(gone.iter().copied());
        state.flush_owed.extend(gone);
        let peers_pending = state.peers.values().any(|p| p.pending > 0);
        let until = match (state.subscribed, state.own) {
            (true, Some(own))
                if state.held == 0
                    && !peers_pending
                    && state.flush_owed.is_empty()
                    && !state.bus_slow(timing.slow_bus) =>
            {
                state
                    .peers
                    .values()
                    .map(|p| p.heard + timing.window)
                    .fold(own + timing.window, Instant::min)
            }
            _ => self.epoch,
        };
        self.confirmed_until
            .store(self.nanos(until), Ordering::Release);
        self.refill.store(
            state.in_flight == 0 && state.held == 0 && !peers_pending,
            Ordering::Release,
        );
    }

    /// Peers silent past `peer_timeout` are dropped on the next event; this drops them
    /// now too (the heartbeat task calls it every interval).
    pub fn tick(&self, now: Instant) {
        let mut state = self.lock();
        self.recompute(&mut state, now);
    }

    /// What `/healthz` shows: whether degraded, why, and each peer.
    pub fn report(&self, now: Instant) -> LivenessReport {
        let state = self.lock();
        let ms = |at: Instant| now.saturating_duration_since(at).as_millis() as u64;
        let mut reasons = Vec::new();
        if !state.subscribed {
            reasons.push("subscription down".to_owned());
        }
        match state.own {
            None if state.subscribed => {
                reasons.push("own heartbeat not heard back yet".to_owned());
            }
            Some(own) if now.saturating_duration_since(own) >= self.timing.window => {
                reasons.push(format!("own heartbeat not heard back for {} ms", ms(own)));
            }
            _ => {}
        }
        if state.held > 0 {
            reasons.push(format!("{} invalidations undelivered", state.held));
        }
        if state.bus_slow(self.timing.slow_bus) {
            reasons.push(format!(
                "own heartbeats take {} ms from publish to applied, more than op_timeout",
                state.round_trips.back().map_or(0, |rt| rt.as_millis())
            ));
        }
        for peer in &state.flush_owed {
            reasons.push(format!("peer {peer} gone: local cache to flush"));
        }
        let mut peers: Vec<PeerReport> = state
            .peers
            .iter()
            .map(|(id, p)| PeerReport {
                id: *id,
                last_heard_ms: ms(p.heard),
                seq: p.seq,
                pending: p.pending,
            })
            .collect();
        peers.sort_by_key(|p| p.id.0);
        for peer in &peers {
            if peer.last_heard_ms >= self.timing.window.as_millis() as u64 {
                reasons.push(format!(
                    "peer {} silent for {} ms",
                    peer.id, peer.last_heard_ms
                ));
            }
            if peer.pending > 0 {
                reasons.push(format!(
                    "peer {} holds {} undelivered invalidations",
                    peer.id, peer.pending
                ));
            }
        }
        LivenessReport {
            degraded: !self.confirmed(now),
            reasons,
            own_heartbeat_ms: state.own.map(ms),
            undelivered: state.held,
            in_flight: state.in_flight,
            last_ack_ms: state.last_ack.map(ms),
            peers,
        }
    }
}

/// [`Liveness::report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessReport {
    pub degraded: bool,
    pub reasons: Vec<String>,
    /// Age of the own heartbeat last heard back.
    pub own_heartbeat_ms: Option<u64>,
    pub undelivered: usize,
    pub in_flight: usize,
    pub last_ack_ms: Option<u64>,
    pub peers: Vec<PeerReport>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReport {
    pub id: ReplicaId,
    /// Age of the last message (heartbeat) from this peer.
    pub last_heard_ms: u64,
    pub seq: u64,
    pub pending: u32,
}

#[cfg(test)]
mod tests;
