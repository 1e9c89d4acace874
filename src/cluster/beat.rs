//! The heartbeat as it travels on the heartbeat channel ([`liveness`](super::liveness)
//! reads what it proves).

use super::message::ReplicaId;

/// A heartbeat as published: `hb {origin} {beat} {seq} {pending}`, or `bye {origin}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Alive {
        origin: ReplicaId,
        /// Counts this replica's heartbeats (its own are matched by it).
        beat: u64,
        /// The sequence number of its last delivered invalidation.
        seq: u64,
        /// Its undelivered invalidations (held after a failure, or whose shared-tier
        /// step failed).
        pending: u32,
    },
    /// A replica shutting down: drop it at once.
    Leaving { origin: ReplicaId },
}

impl Beat {
    pub fn origin(&self) -> ReplicaId {
        match self {
            Beat::Alive { origin, .. } | Beat::Leaving { origin } => *origin,
        }
    }

    pub fn encode(&self) -> String {
        match self {
            Beat::Alive {
                origin,
                beat,
                seq,
                pending,
            } => format!("hb {origin} {beat} {seq} {pending}"),
            Beat::Leaving { origin } => format!("bye {origin}"),
        }
    }

    pub fn decode(payload: &[u8]) -> Option<Beat> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut fields = text.split(' ');
        let kind = fields.next()?;
        let origin = ReplicaId(uuid::Uuid::parse_str(fields.next()?).ok()?);
        match kind {
            "hb" => Some(Beat::Alive {
                origin,
                beat: fields.next()?.parse().ok()?,
                seq: fields.next()?.parse().ok()?,
                pending: fields.next()?.parse().ok()?,
            }),
            "bye" => Some(Beat::Leaving { origin }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_reads_back_as_written_and_garbage_is_none() {
        let origin = ReplicaId::random();
        for beat in [
            Beat::Alive {
                origin,
                beat: 7,
                seq: 42,
                pending: 3,
            },
            Beat::Leaving { origin },
        ] {
            assert_eq!(Beat::decode(beat.encode().as_bytes()), Some(beat));
        }
        for garbage in [&b"hb"[..], b"hb x 1 2 3", b"nonsense", b"\xff"] {
            assert_eq!(Beat::decode(garbage), None);
        }
    }
}
