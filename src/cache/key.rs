//! Cache keys. An entry belongs to one tenant (`ContactCenterId`, `GroupId`), one
//! contact key, one credential partition and one extension set; nothing else may make
//! two requests share an entry, and nothing less may either.

use http::header::{HeaderMap, AUTHORIZATION};
use sha2::{Digest, Sha256};

use crate::identity::{ContactKey, Tenant};
use crate::query::Extensions;

/// Whose anonymous services: the unit that writes invalidate. Built only by
/// [`CacheOwner::new`], from a [`Tenant`] as `admit` read it and a [`ContactKey`] as
/// written, so a read, a write and a fleet message name an owner alike.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CacheOwner {
    tenant: Tenant,
    contact_key: ContactKey,
}

impl CacheOwner {
    /// The one constructor: a tenant as `admit` read it and a contact key as written.
    pub fn new(tenant: Tenant, contact_key: ContactKey) -> CacheOwner {
        CacheOwner {
            tenant,
            contact_key,
        }
    }

    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    pub fn contact_key(&self) -> &ContactKey {
        &self.contact_key
    }

    /// Is this owner in the tenant partition `tenant`?
    pub fn in_partition(&self, tenant: &Tenant) -> bool {
        self.tenant == *tenant
    }

    /// Heap bytes held, for byte bounds.
    pub fn bytes(&self) -> usize {
        self.tenant.bytes() + self.contact_key.len()
    }
}

/// Removes empty tenant headers from a request about to be forwarded, so the upstream
/// reads the tenant [`Tenant::from_headers`] read.
pub fn drop_empty_tenant_headers(headers: &mut HeaderMap) {
    use crate::httputil::{CONTACT_CENTER_ID, GROUP_ID};
    for name in [&CONTACT_CENTER_ID, &GROUP_ID] {
        let empty = headers
            .get_all(name)
            .iter()
            .all(|v| v.as_bytes().trim_ascii().is_empty());
        if empty {
            headers.remove(name);
        }
    }
}

/// The full cache key.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    pub owner: CacheOwner,
    /// First 16 bytes of SHA-256 of the `Authorization` header; `None` when the header
    /// is absent or `cache.share_across_credentials = true`.
    pub credential: Option<[u8; 16]>,
    pub extensions: Extensions,
}

impl Key {
    pub fn new(
        headers: &HeaderMap,
        owner: CacheOwner,
        extensions: &Extensions,
        share_across_credentials: bool,
    ) -> Key {
        let credential = if share_across_credentials {
            None
        } else {
            headers.get(AUTHORIZATION).map(|value| {
                let digest = Sha256::digest(value.as_bytes());
                let mut partition = [0u8; 16];
                partition.copy_from_slice(&digest[..16]);
                partition
            })
        };
        Key {
            owner,
            credential,
            extensions: extensions.clone(),
        }
    }

    /// Approximate heap bytes of the key, for the weigher.
    pub fn weight(&self) -> usize {
        let extensions = match &self.extensions {
            Extensions::Names(names) => names.iter().map(|n| n.len() + 24).sum(),
            Extensions::None | Extensions::All => 0,
        };
        self.owner.bytes() + extensions + 128
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_static(value));
        }
        h
    }

    fn key(h: &HeaderMap, contact: &str, extensions: &Extensions, share: bool) -> Key {
        let tenant = Tenant::from_headers(h, 256).expect("a valid tenant");
        let owner = CacheOwner::new(tenant, ContactKey::new(contact));
        Key::new(h, owner, extensions, share)
    }

    #[test]
    fn tenants_groups_credentials_and_extension_sets_partition_the_cache() {
        let none = Extensions::None;
        let base = key(
            &headers(&[("contactcenterid", "t1"), ("authorization", "Basic YQ==")]),
            "408",
            &none,
            false,
        );
        let same = key(
            &headers(&[("ContactCenterId", "t1"), ("Authorization", "Basic YQ==")]),
            "408",
            &none,
            false,
        );
        assert_eq!(base, same, "header name case does not matter");
        let differing = [
            key(
                &headers(&[("contactcenterid", "t2"), ("authorization", "Basic YQ==")]),
                "408",
                &none,
                false,
            ),
            key(
                &headers(&[
                    ("contactcenterid", "t1"),
                    ("groupid", "g"),
                    ("authorization", "Basic YQ=="),
                ]),
                "408",
                &none,
                false,
            ),
            key(
                &headers(&[("contactcenterid", "t1"), ("authorization", "Basic Yg==")]),
                "408",
                &none,
                false,
            ),
            key(
                &headers(&[("contactcenterid", "t1"), ("authorization", "Basic YQ==")]),
                "409",
                &none,
                false,
            ),
            key(
                &headers(&[("contactcenterid", "t1"), ("authorization", "Basic YQ==")]),
                "408",
                &Extensions::All,
                false,
            ),
        ];
        for other in differing {
            assert_ne!(base, other);
        }
        let shared_a = key(
            &headers(&[("authorization", "Basic YQ==")]),
            "408",
            &none,
            true,
        );
        let shared_b = key(
            &headers(&[("authorization", "Basic Yg==")]),
            "408",
            &none,
            true,
        );
        assert_eq!(shared_a, shared_b, "share_across_credentials = true");
    }
}
