//! The invalidation message, as JSON on the namespace's channel (fleet contract §2).
//!
//! JSON because a message is published once per write (not per read), a person
//! debugging a fleet can read it with `redis-cli SUBSCRIBE`, and the version field
//! lets a replica recognise a format it does not know. A replica that cannot read a
//! message must not ignore it (it would miss an invalidation): it reports it as
//! [`Decoded::Unreadable`], and the cache flushes. So a scope kind can be added within
//! a version when flushing everything is a safe reading of it for a replica that
//! predates it (the purge kinds were added so); anything else bumps the version.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::cache::{CacheOwner, Invalidation};
use crate::identity::{ContactKey, ServiceId, Tenant};

/// Version of the message format; see [`Decoded::Unreadable`].
pub const MESSAGE_VERSION: u32 = 1;

/// Names one process in the fleet: random per [`Bus`](super::Bus), so a restarted
/// replica is a new origin with a new sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplicaId(pub uuid::Uuid);

impl ReplicaId {
    pub fn random() -> ReplicaId {
        ReplicaId(uuid::Uuid::new_v4())
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A tenant partition: `ContactCenterId` and `GroupId` as the client sent them
/// (header bytes; text in JSON when they are UTF-8, which they practically always are).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Partition {
    #[serde(
        with = "header_bytes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub contact_center_id: Option<Bytes>,
    #[serde(
        with = "header_bytes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub group_id: Option<Bytes>,
}

impl Partition {
    /// The partition of `tenant`.
    pub fn of(tenant: &Tenant) -> Partition {
        Partition {
            contact_center_id: tenant.center().cloned(),
            group_id: tenant.group().cloned(),
        }
    }

    /// The tenant this partition names.
    pub fn tenant(&self) -> Tenant {
        Tenant::new(self.contact_center_id.clone(), self.group_id.clone())
    }

    /// The owner of `contact_key` in this partition.
    pub fn owner(&self, contact_key: &str) -> CacheOwner {
        CacheOwner::new(self.tenant(), ContactKey::new(contact_key))
    }
}

/// What a write touched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    /// These contact keys (in the message's partition), customers and services.
    Touched {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        contact_keys: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        customer_ids: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        service_ids: Vec<String>,
    },
    /// Every entry of the message's partition.
    WholeTenant,
    /// Every entry of every partition (a collapsed outbox, see
    /// [`Queue`](super::bus)).
    Everything,
    /// The admin's `DELETE /cache`: every entry of every partition, and the keys
    /// remembered as uncacheable, as the local purge drops them.
    PurgeAll,
    /// The admin's `DELETE /cache/anonymous/{contact_key}`: one contact key's entries
    /// in the message's partition.
    PurgeContact { contact_key: String },
}

impl Scope {
    /// True when everything it touches is in the message's tenant partition (a
    /// service id, and a purge of everything, reach across partitions).
    pub fn within_partition(&self) -> bool {
        match self {
            Scope::Touched {
                contact_keys,
                customer_ids,
                service_ids,
            } => service_ids.is_empty() || !contact_keys.is_empty() || !customer_ids.is_empty(),
            Scope::WholeTenant | Scope::PurgeContact { .. } => true,
            Scope::Everything | Scope::PurgeAll => false,
        }
    }
}

/// One invalidation, as published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// [`MESSAGE_VERSION`].
    pub v: u32,
    pub origin: ReplicaId,
    /// Per origin, from 1, without gaps: a gap means a message was lost.
    pub seq: u64,
    /// Wall-clock publishing time, µs since the Unix epoch: for the delay metric only,
    /// never for ordering (replicas' clocks differ).
    pub sent_at_us: u64,
    pub partition: Partition,
    pub scope: Scope,
    /// The shared tier's step for this message failed (Redis refused the generation
    /// write): a receiver must not refill from the shared tier until the origin's
    /// heartbeat says it has caught up. Absent (false) in the usual case, so older
    /// replicas read the message as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_pending: bool,
}

/// What a replica made of a payload from the channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Message(Message),
    /// Not a message this version can read (a newer format, or garbage): the
    /// receiver cannot know what it invalidated, so it must flush.
    Unreadable {
        origin: Option<ReplicaId>,
    },
}

#[derive(Deserialize)]
struct Envelope {
    v: u32,
    origin: Option<ReplicaId>,
}

impl Message {
    /// The message body without its envelope (origin, seq, time), which
    /// [`Bus::publish`](super::Bus::publish) fills in.
    pub fn body_of(
        invalidation: &Invalidation,
        started_service_id: Option<&ServiceId>,
    ) -> Option<(Partition, Scope)> {
        match invalidation {
            Invalidation::Owner { owner } => Some((
                Partition::of(owner.tenant()),
                Scope::Touched {
                    contact_keys: vec![owner.contact_key().to_string()],
                    customer_ids: Vec::new(),
                    service_ids: started_service_id
                        .map(|id| id.as_str().to_owned())
                        .into_iter()
                        .collect(),
                },
            )),
            Invalidation::Service { service_id } => Some((
                Partition::default(),
                Scope::Touched {
                    contact_keys: Vec::new(),
                    customer_ids: Vec::new(),
                    service_ids: vec![service_id.as_str().to_owned()],
                },
            )),
            Invalidation::Tenant { tenant } => Some((Partition::of(tenant), Scope::WholeTenant)),
            Invalidation::Everything => Some((Partition::default(), Scope::Everything)),
        }
    }

    /// What a receiving replica applies to its cache, with the same rules as a local
    /// write (the inverse of [`Message::body_of`]). Customer ids are in no cache key,
    /// so a message naming one invalidates the whole tenant.
    pub fn invalidations(&self) -> Vec<(Invalidation, Option<ServiceId>)> {
        let tenant = || Invalidation::Tenant {
            tenant: self.partition.tenant(),
        };
        match &self.scope {
            Scope::Everything | Scope::PurgeAll => vec![(Invalidation::Everything, None)],
            Scope::PurgeContact { contact_key } => vec![(
                Invalidation::Owner {
                    owner: self.partition.owner(contact_key),
                },
                None,
            )],
            Scope::WholeTenant => vec![(tenant(), None)],
            Scope::Touched { customer_ids, .. } if !customer_ids.is_empty() => {
                vec![(tenant(), None)]
            }
            Scope::Touched {
                contact_keys,
                service_ids,
                ..
            } if !contact_keys.is_empty() => contact_keys
                .iter()
                .map(|key| {
                    let owner = self.partition.owner(key);
                    (
                        Invalidation::Owner { owner },
                        service_ids.first().map(|id| ServiceId::normalise(id)),
                    )
                })
                .collect(),
            Scope::Touched { service_ids, .. } => service_ids
                .iter()
                .map(|id| {
                    let service_id = ServiceId::normalise(id);
                    (Invalidation::Service { service_id }, None)
                })
                .collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Message always serialises to JSON")
    }

    pub fn decode(payload: &[u8]) -> Decoded {
        match serde_json::from_slice::<Envelope>(payload) {
            Ok(envelope) if envelope.v == MESSAGE_VERSION => {
                match serde_json::from_slice::<Message>(payload) {
                    Ok(message) => Decoded::Message(message),
                    Err(_) => Decoded::Unreadable {
                        origin: envelope.origin,
                    },
                }
            }
            Ok(envelope) => Decoded::Unreadable {
                origin: envelope.origin,
            },
            Err(_) => Decoded::Unreadable { origin: None },
        }
    }

    /// Publish-to-now, from the message's own clock; zero when the clocks disagree.
    pub fn delay(&self, now: SystemTime) -> Duration {
        let now_us = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Duration::from_micros(now_us.saturating_sub(self.sent_at_us))
    }
}

/// Wall-clock µs since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Header bytes as a JSON string when UTF-8, else as an array of bytes.
mod header_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Raw(Vec<u8>),
    }

    pub fn serialize<S: Serializer>(value: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => Repr::Text(text.to_owned()).serialize(s),
                Err(_) => Repr::Raw(bytes.to_vec()).serialize(s),
            },
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        Ok(Option::<Repr>::deserialize(d)?.map(|repr| match repr {
            Repr::Text(text) => Bytes::from(text),
            Repr::Raw(raw) => Bytes::from(raw),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(scope: Scope) -> Message {
        Message {
            v: MESSAGE_VERSION,
            origin: ReplicaId::random(),
            seq: 7,
            sent_at_us: 1_700_000_000_000_000,
            partition: Partition {
                contact_center_id: Some(Bytes::from_static(b"t1")),
                group_id: Some(Bytes::from_static(&[0xff, 0x41])),
            },
            scope,
            shared_pending: false,
        }
    }

    #[test]
    fn messages_round_trip() {
        let scopes = [
            Scope::Touched {
                contact_keys: vec!["408-832-7799".into()],
                customer_ids: vec!["ABC".into()],
                service_ids: vec!["42".into()],
            },
            Scope::WholeTenant,
            Scope::Everything,
            Scope::PurgeAll,
            Scope::PurgeContact {
                contact_key: "408".into(),
            },
        ];
        for scope in scopes {
            let sent = message(scope);
            assert_eq!(Message::decode(&sent.encode()), Decoded::Message(sent));
        }
    }

    #[test]
    fn purges_have_their_own_kinds_on_the_wire() {
        let purge = message(Scope::PurgeContact {
            contact_key: "408".into(),
        });
        let json: serde_json::Value = serde_json::from_slice(&purge.encode()).expect("JSON");
        assert_eq!(
            json["scope"],
            serde_json::json!({"kind": "purge_contact", "contact_key": "408"})
        );
        let owner = purge.partition.owner("408");
        assert_eq!(
            purge.invalidations(),
            vec![(Invalidation::Owner { owner }, None)]
        );
        let all = message(Scope::PurgeAll);
        let json: serde_json::Value = serde_json::from_slice(&all.encode()).expect("JSON");
        assert_eq!(json["scope"], serde_json::json!({"kind": "purge_all"}));
        assert_eq!(all.invalidations(), vec![(Invalidation::Everything, None)]);
    }

    #[test]
    fn unknown_versions_and_garbage_are_unreadable_not_ignored() {
        let mut newer = message(Scope::WholeTenant);
        newer.v = 2;
        let origin = newer.origin;
        assert_eq!(
            Message::decode(&newer.encode()),
            Decoded::Unreadable {
                origin: Some(origin)
            }
        );
        assert_eq!(
            Message::decode(b"not json"),
            Decoded::Unreadable { origin: None }
        );
        let bad_scope = br#"{"v":1,"origin":"00000000-0000-0000-0000-000000000001","seq":1,"sent_at_us":0,"partition":{},"scope":{"kind":"galaxy"}}"#;
        assert!(matches!(
            Message::decode(bad_scope),
            Decoded::Unreadable { origin: Some(_) }
        ));
    }

    #[test]
    fn cache_invalidations_become_message_bodies() {
        let owner = CacheOwner::new(
            Tenant::new(Some(Bytes::from_static(b"t1")), None),
            ContactKey::new("+0408"),
        );
        let (partition, scope) = Message::body_of(
            &Invalidation::Owner {
                owner: owner.clone(),
            },
            Some(&ServiceId::normalise("042")),
        )
        .expect("a start with a contact key invalidates");
        assert_eq!(partition.owner("+0408"), owner);
        assert_eq!(
            scope,
            Scope::Touched {
                contact_keys: vec!["+0408".into()],
                customer_ids: vec![],
                service_ids: vec!["42".into()],
            }
        );
        assert_eq!(
            Message::body_of(&Invalidation::Everything, None).map(|b| b.1),
            Some(Scope::Everything)
        );
    }
}
