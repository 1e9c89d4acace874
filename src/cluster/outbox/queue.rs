//! The outbox's queue: the messages held in order, their delivery state, and the
//! collapse into one broader message past [`MAX_PENDING`].

use std::collections::VecDeque;

use crate::cluster::message::{Message, Partition, Scope};

/// Messages a replica holds while Redis does not take them; one per write, so at a
/// few hundred bytes each this bounds the outbox to well under a MiB. Past it they
/// collapse into one broader message ([`Queue::collapse`]).
pub const MAX_PENDING: usize = 1024;

#[derive(Default)]
pub(super) struct Queue {
    /// The sequence number of the last message made.
    pub(super) last_seq: u64,
    /// The highest sequence number published, for heartbeats.
    pub(super) published_seq: u64,
    /// Counts messages made, never reused (a collapse reuses sequence numbers).
    pub(super) last_ticket: u64,
    pub(super) pending: VecDeque<Held>,
    /// How many subscribers took each recently published message (`PUBLISH`'s reply),
    /// by sequence number: the acknowledgements its writer waits for.
    pub(super) receivers: std::collections::BTreeMap<u64, i64>,
}

/// Receiver counts kept; a writer reads its own right after its delivery.
const RECEIVERS_KEPT: usize = 256;

/// A message not yet delivered.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) message: Message,
    /// Its shared-tier step is done (or there is no shared tier).
    pub(super) shared_done: bool,
    /// It is in Redis (its shared step may still be owed).
    pub(super) published: bool,
    /// An attempt to deliver it failed: held, not merely on its way.
    pub(super) failed: bool,
    /// The tickets it stands for (more than one after a collapse).
    pub(super) tickets: std::ops::RangeInclusive<u64>,
}

impl Queue {
    /// Queues a message; past [`MAX_PENDING`], collapses the queue.
    pub(super) fn push(&mut self, held: Held) {
        self.pending.push_back(held);
        if self.pending.len() > MAX_PENDING {
            self.collapse();
        }
    }

    /// Replaces the queue by one message that invalidates at least as much: the whole
    /// tenant when every message stays in one tenant partition, else everything. It
    /// takes the first held sequence number (the sequence continues from there, so
    /// receivers see no gap), and the first one's time, so the delay metric shows how
    /// long the fleet went without it.
    fn collapse(&mut self) {
        let Some(first) = self.pending.front() else {
            return;
        };
        let partition = first.message.partition.clone();
        let one_tenant = self.pending.iter().all(|held| {
            held.message.partition == partition && held.message.scope.within_partition()
        });
        let (partition, scope) = if one_tenant {
            (partition, Scope::WholeTenant)
        } else {
            (Partition::default(), Scope::Everything)
        };
        // Every ticket the held messages stand for (the queue is not empty).
        let (low, high) = self
            .pending
            .iter()
            .fold((u64::MAX, 0), |(low, high), held| {
                (
                    low.min(*held.tickets.start()),
                    high.max(*held.tickets.end()),
                )
            });
        let collapsed = Held {
            message: Message {
                partition,
                scope,
                shared_pending: false,
                ..first.message.clone()
            },
            shared_done: self.pending.iter().all(|held| held.shared_done),
            published: false,
            failed: true,
            tickets: low..=high,
        };
        tracing::warn!(
            held = self.pending.len(),
            scope = ?collapsed.message.scope,
            "too many invalidations held while Redis is away: collapsed into one"
        );
        self.last_seq = collapsed.message.seq;
        self.pending.clear();
        self.pending.push_back(collapsed);
    }

    /// (held after a failure or owing its shared step, on its way at all).
    pub(super) fn counts(&self) -> (usize, usize) {
        let held = self
            .pending
            .iter()
            .filter(|h| h.failed || (h.published && !h.shared_done))
            .count();
        (held, self.pending.len())
    }

    /// Records what the reply for `held` said (`None`: refused). Returns (published by this
    /// reply, still owes something it was sent for); a message collapsed meanwhile
    /// owes nothing itself: the broader one is still owed.
    pub(super) fn settle(&mut self, held: &Held, outcome: Option<(bool, i64)>) -> (bool, bool) {
        let Some(slot) = self
            .pending
            .iter_mut()
            .find(|h| h.message.seq == held.message.seq && h.tickets == held.tickets)
        else {
            return (false, false);
        };
        let Some((shared_done, receivers)) = outcome else {
            slot.failed = true;
            return (false, true);
        };
        let now_published = !slot.published;
        if now_published {
            queue_receivers(&mut self.receivers, held.message.seq, receivers);
        }
        slot.published = true;
        slot.shared_done |= shared_done;
        if !slot.shared_done {
            tracing::warn!(
                seq = slot.message.seq,
                "shared tier refused an invalidation's generation write; \
                 the fleet refills nothing from it until it is done"
            );
        }
        (now_published, !slot.shared_done)
    }

    /// Drops the delivered messages at the front and moves the published sequence
    /// number (for heartbeats) past every published one before the first unpublished.
    pub(super) fn drop_delivered(&mut self) {
        while self
            .pending
            .front()
            .is_some_and(|h| h.published && h.shared_done)
        {
            let done = self.pending.pop_front().expect("front exists");
            self.published_seq = self.published_seq.max(done.message.seq);
        }
        if let Some(seq) = self
            .pending
            .iter()
            .take_while(|h| h.published)
            .map(|h| h.message.seq)
            .max()
        {
            self.published_seq = self.published_seq.max(seq);
        }
    }

    /// Whether the message of `ticket` is in Redis.
    pub(super) fn is_published(&self, ticket: u64) -> bool {
        !self
            .pending
            .iter()
            .any(|h| h.tickets.contains(&ticket) && !h.published)
    }
}

pub(super) fn queue_receivers(
    receivers: &mut std::collections::BTreeMap<u64, i64>,
    seq: u64,
    n: i64,
) {
    receivers.insert(seq, n);
    while receivers.len() > RECEIVERS_KEPT {
        receivers.pop_first();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::message::{ReplicaId, MESSAGE_VERSION};
    use bytes::Bytes;

    fn message(seq: u64, tenant: Option<&'static str>, scope: Scope) -> Message {
        Message {
            v: MESSAGE_VERSION,
            origin: ReplicaId(uuid::Uuid::nil()),
            seq,
            sent_at_us: seq * 1000,
            partition: Partition {
                contact_center_id: tenant.map(|t| Bytes::from_static(t.as_bytes())),
                group_id: None,
            },
            scope,
            shared_pending: false,
        }
    }

    fn start(contact_key: &str) -> Scope {
        Scope::Touched {
            contact_keys: vec![contact_key.into()],
            customer_ids: Vec::new(),
            service_ids: vec!["42".into()],
        }
    }

    fn service(id: &str) -> Scope {
        Scope::Touched {
            contact_keys: Vec::new(),
            customer_ids: Vec::new(),
            service_ids: vec![id.into()],
        }
    }

    /// Fills a queue from sequence 10 on, as `publish` does.
    fn queued(scopes: impl IntoIterator<Item = (Option<&'static str>, Scope)>) -> Queue {
        let mut queue = Queue {
            last_seq: 9,
            ..Queue::default()
        };
        for (tenant, scope) in scopes {
            queue.last_seq += 1;
            let seq = queue.last_seq;
            queue.push(Held {
                message: message(seq, tenant, scope),
                shared_done: seq.is_multiple_of(2),
                published: false,
                failed: false,
                tickets: seq..=seq,
            });
        }
        queue
    }

    #[test]
    fn the_outbox_keeps_order_up_to_its_bound() {
        let queue = queued((0..MAX_PENDING).map(|i| (Some("t1"), start(&i.to_string()))));
        assert_eq!(queue.pending.len(), MAX_PENDING);
        let seqs: Vec<u64> = queue.pending.iter().map(|h| h.message.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(queue.last_seq, 9 + MAX_PENDING as u64);
    }

    #[test]
    fn an_overflowing_outbox_collapses_into_one_broader_message() {
        // (what was held, what it collapses into)
        let cases = [
            (
                vec![(Some("t1"), start("1"))],
                Some("t1"),
                Scope::WholeTenant,
            ),
            (
                vec![(Some("t1"), Scope::WholeTenant)],
                Some("t1"),
                Scope::WholeTenant,
            ),
            // Another tenant, a bare service id or a purge of everything reach further.
            (vec![(Some("t2"), start("1"))], None, Scope::Everything),
            (vec![(None, service("42"))], None, Scope::Everything),
            (vec![(Some("t1"), Scope::PurgeAll)], None, Scope::Everything),
        ];
        for (extra, tenant, scope) in cases {
            let held = (0..MAX_PENDING)
                .map(|i| (Some("t1"), start(&i.to_string())))
                .chain(extra.clone());
            let queue = queued(held);
            assert_eq!(queue.pending.len(), 1, "{extra:?}");
            // Some shared invalidations were not done: the collapsed one still owes it.
            assert!(!queue.pending[0].shared_done);
            let collapsed = &queue.pending[0].message;
            assert_eq!(
                (
                    collapsed.partition.contact_center_id.as_deref(),
                    &collapsed.scope
                ),
                (tenant.map(str::as_bytes), &scope),
                "{extra:?}"
            );
            // It takes the first held number and time; the sequence goes on from it.
            assert_eq!((collapsed.seq, collapsed.sent_at_us), (10, 10_000));
            // It stands for the last message it replaced.
            assert_eq!(queue.pending[0].tickets, 10..=10 + MAX_PENDING as u64);
            assert_eq!(queue.last_seq, 10);
        }
    }
}
