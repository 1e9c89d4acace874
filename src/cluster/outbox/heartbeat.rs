//! The outbox's heartbeats ([`liveness`](crate::cluster::liveness)): published after
//! everything delivered before them, with this replica's entry in the member list.

use std::time::{Duration, Instant};

use super::Outbox;
use crate::cluster::beat::Beat;
use crate::cluster::conn::OpError;
use crate::cluster::message::{now_us, ReplicaId};

impl Outbox {
    /// Publishes one heartbeat (after everything delivered so far).
    pub(super) async fn beat(&self, beat: u64, bound: Duration) -> Result<(), OpError> {
        let (seq, pending) = {
            let queue = self.lock_queue();
            let (held, _) = queue.counts();
            (queue.published_seq, u32::try_from(held).unwrap_or(u32::MAX))
        };
        let payload = Beat::Alive {
            origin: self.me,
            beat,
            seq,
            pending,
        }
        .encode();
        self.liveness.sent(beat, Instant::now());
        // With the heartbeat, this replica's entry in the member list, and the list
        // read back (members silent for peer_timeout dropped first).
        let now_ms = now_us() / 1000;
        let timeout_ms = self.liveness.timing().peer_timeout.as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH")
            .arg(&self.heartbeat_channel)
            .arg(payload)
            .ignore()
            .cmd("ZADD")
            .arg(&self.members)
            .arg(now_ms)
            .arg(self.me.to_string())
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&self.members)
            .arg("-inf")
            .arg(format!("({}", now_ms.saturating_sub(timeout_ms)))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&self.members)
            .arg(timeout_ms * 2)
            .ignore()
            .cmd("ZRANGE")
            .arg(&self.members)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        let (listed,): (Vec<(String, f64)>,) = self
            .conn
            .run_within(bound, |mut manager| async move {
                pipe.query_async(&mut manager).await
            })
            .await?;
        let members: Vec<(ReplicaId, Duration)> = listed
            .into_iter()
            .filter_map(|(id, at_ms)| {
                let id = ReplicaId(uuid::Uuid::parse_str(&id).ok()?);
                let age = now_ms.saturating_sub(at_ms.max(0.0) as u64);
                Some((id, Duration::from_millis(age)))
            })
            .collect();
        self.liveness.members(&members, Instant::now());
        Ok(())
    }

    /// Says goodbye (shutdown), so the peers stop waiting for this replica at once.
    pub(in crate::cluster) async fn leave(&self) {
        let payload = Beat::Leaving { origin: self.me }.encode();
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(&self.members)
            .arg(self.me.to_string())
            .ignore()
            .cmd("PUBLISH")
            .arg(&self.heartbeat_channel)
            .arg(payload)
            .ignore();
        let _ = self
            .conn
            .run(|mut manager| async move { pipe.query_async::<()>(&mut manager).await })
            .await;
    }
}
