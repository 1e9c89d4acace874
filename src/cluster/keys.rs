//! Names in Redis (fleet contract §4). Everything is under `{namespace}:v{FORMAT}:`, and
//! whatever identifies a person (contact keys, tenant headers) appears only as a hash:
//! SHA-256 over a length-prefixed encoding, so no two different keys can collide by
//! concatenation, truncated to 128 bits (short, uniform keys; collisions are not a
//! practical concern at that width).

use sha2::{Digest, Sha256};

use crate::cache::{CacheOwner, Key};
use crate::query::Extensions;

/// Version of everything csgate stores in Redis; a change of layout bumps it, so two
/// csgate versions in one fleet never read each other's entries.
pub const FORMAT: u32 = 1;

/// A 128-bit hash, as 32 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hash(String);

impl Hash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds a [`Hash`] from length-prefixed fields.
struct Hasher(Sha256);

impl Hasher {
    fn new(domain: &[u8]) -> Hasher {
        let mut hasher = Hasher(Sha256::new());
        hasher.field(domain);
        hasher
    }

    fn field(&mut self, bytes: &[u8]) -> &mut Hasher {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    fn optional(&mut self, bytes: Option<&[u8]>) -> &mut Hasher {
        match bytes {
            None => self.field(b"-"),
            Some(bytes) => self.field(b"+").field(bytes),
        }
    }

    fn finish(self) -> Hash {
        let digest = self.0.finalize();
        let mut text = String::with_capacity(32);
        for byte in &digest[..16] {
            text.push_str(&format!("{byte:02x}"));
        }
        Hash(text)
    }
}

/// The tenant partition of a cache key: `ContactCenterId` and `GroupId` as sent.
pub fn tenant_hash(tenant: Option<&[u8]>, group: Option<&[u8]>) -> Hash {
    let mut h = Hasher::new(b"tenant");
    h.optional(tenant).optional(group);
    h.finish()
}

/// One owner (tenant partition + contact key): what a start invalidates.
pub fn owner_hash(owner: &CacheOwner) -> Hash {
    let mut h = Hasher::new(b"owner");
    h.optional(owner.tenant().center().map(|c| &c[..]))
        .optional(owner.tenant().group().map(|g| &g[..]))
        .field(owner.contact_key().as_str().as_bytes());
    h.finish()
}

/// A service id. Not tenant-scoped, like the local cache's service index: a write may
/// name a service without the tenant headers its readers sent.
pub fn service_hash(service_id: &str) -> Hash {
    let mut h = Hasher::new(b"service");
    h.field(service_id.as_bytes());
    h.finish()
}

/// The full cache key: tenant partition, credential partition, contact key, extensions.
pub fn key_hash(key: &Key) -> Hash {
    let mut h = Hasher::new(b"entry");
    h.optional(key.owner.tenant().center().map(|c| &c[..]))
        .optional(key.owner.tenant().group().map(|g| &g[..]))
        .field(key.owner.contact_key().as_str().as_bytes())
        .optional(key.credential.as_ref().map(|c| c.as_slice()));
    match &key.extensions {
        Extensions::None => h.field(b"none"),
        Extensions::All => h.field(b"all"),
        Extensions::Names(names) => {
            h.field(b"names").field(&(names.len() as u64).to_be_bytes());
            for name in names {
                h.field(name.as_bytes());
            }
            &mut h
        }
    };
    h.finish()
}

/// Key and channel names of one namespace.
#[derive(Clone, Debug)]
pub struct Names {
    /// `{namespace}:v{FORMAT}:`
    prefix: String,
}

impl Names {
    pub fn new(namespace: &str) -> Names {
        Names {
            prefix: format!("{namespace}:v{FORMAT}:"),
        }
    }

    /// The pub/sub channel of invalidations.
    pub fn channel(&self) -> String {
        format!("{}inv", self.prefix)
    }

    /// The pub/sub channel of apply acknowledgements ([`ack`](super::ack)).
    pub fn ack_channel(&self) -> String {
        format!("{}ack", self.prefix)
    }

    /// The pub/sub channel of heartbeats ([`liveness`](super::liveness)). A channel of
    /// its own, so a replica that predates heartbeats never reads one as an unreadable
    /// invalidation; Redis still delivers it in order with the invalidations, since a
    /// subscriber gets every channel's messages in the order they were published.
    pub fn heartbeat_channel(&self) -> String {
        format!("{}hb", self.prefix)
    }

    /// `…m`: the fleet's members (a sorted set: replica id, wall-clock ms of its last
    /// heartbeat).
    pub fn members(&self) -> String {
        format!("{}m", self.prefix)
    }

    /// `…b:`: the shared tier's byte budgets (`…b:all`, `…b:t:{tenant}`).
    pub fn budget_prefix(&self) -> String {
        format!("{}b:", self.prefix)
    }

    /// `…e:{hash}`: a stored entry (a Redis hash).
    pub fn entry(&self, hash: &Hash) -> String {
        format!("{}e:{hash}", self.prefix)
    }

    /// `…l:{hash}`: the fleet lock of a cold key.
    pub fn lock(&self, hash: &Hash) -> String {
        format!("{}l:{hash}", self.prefix)
    }

    /// `…w`: the write counter every invalidation advances (the generation).
    pub fn counter(&self) -> String {
        format!("{}w", self.prefix)
    }

    /// `…id`: a random token naming this Redis's lifetime; a restarted Redis (which lost
    /// the counter) gets a new one, so generations from before the restart never match.
    pub fn lifetime(&self) -> String {
        format!("{}id", self.prefix)
    }

    /// `…m:`: prefix of write markers (`m:o:`, `m:s:`, `m:t:`, `m:all`), each holding
    /// the counter value of the last write that touched it.
    pub fn marker_prefix(&self) -> String {
        format!("{}m:", self.prefix)
    }

    /// `…i:`: prefix of index sets (`i:o:{owner}`, `i:s:{service}`) listing entry hashes.
    pub fn index_prefix(&self) -> String {
        format!("{}i:", self.prefix)
    }

    /// `…e:`: prefix of entries, for scripts that delete by hash.
    pub fn entry_prefix(&self) -> String {
        format!("{}e:", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn key(tenant: Option<&'static str>, contact: &str, extensions: Extensions) -> Key {
        Key {
            owner: CacheOwner::new(
                crate::identity::Tenant::new(
                    tenant.map(|t| Bytes::from_static(t.as_bytes())),
                    None,
                ),
                crate::identity::ContactKey::new(contact),
            ),
            credential: Some([7; 16]),
            extensions,
        }
    }

    #[test]
    fn every_part_of_the_key_partitions_the_hash() {
        let base = key_hash(&key(Some("t1"), "408", Extensions::None));
        assert_eq!(base.as_str().len(), 32);
        assert_eq!(base, key_hash(&key(Some("t1"), "408", Extensions::None)));
        let mut no_credential = key(Some("t1"), "408", Extensions::None);
        no_credential.credential = None;
        let differing = [
            key(Some("t2"), "408", Extensions::None),
            key(None, "408", Extensions::None),
            key(Some("t1"), "409", Extensions::None),
            key(Some("t1"), "408", Extensions::All),
            key(Some("t1"), "408", Extensions::Names(vec!["a".into()])),
            no_credential,
        ];
        for other in differing {
            assert_ne!(base, key_hash(&other), "{other:?}");
        }
        // Length prefixes: moving a byte between fields changes the hash.
        assert_ne!(
            key_hash(&key(
                Some("t1"),
                "408",
                Extensions::Names(vec!["ab".into()])
            )),
            key_hash(&key(
                Some("t1"),
                "408",
                Extensions::Names(vec!["a".into(), "b".into()])
            ))
        );
        assert_ne!(
            tenant_hash(Some(b"ab"), None),
            tenant_hash(Some(b"a"), Some(b"b"))
        );
    }

    #[test]
    fn names_carry_namespace_and_format_version() {
        let names = Names::new("fleet-a");
        let hash = service_hash("42");
        assert_eq!(names.channel(), "fleet-a:v1:inv");
        assert_eq!(names.entry(&hash), format!("fleet-a:v1:e:{hash}"));
        assert_eq!(names.lock(&hash), format!("fleet-a:v1:l:{hash}"));
        assert!(!names
            .entry(&owner_hash(&key(Some("t"), "408", Extensions::None).owner))
            .contains("408"));
    }
}
