//! Cache keys. An entry belongs to one tenant (`ContactCenterId`, `GroupId`), one
//! contact key, one credential partition and one extension set; nothing else may make
//! two requests share an entry, and nothing less may either.

use bytes::Bytes;
use http::header::{HeaderMap, AUTHORIZATION};
use sha2::{Digest, Sha256};

use crate::httputil::{CONTACT_CENTER_ID, GROUP_ID};
use crate::query::Extensions;

/// Whose anonymous services: the unit that writes invalidate.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CacheOwner {
    pub tenant: Option<Bytes>,
    pub group: Option<Bytes>,
    pub contact_key: Box<str>,
}

impl CacheOwner {
    /// The owner named by a request's tenant headers and a decoded contact key.
    pub fn from_headers(headers: &HeaderMap, contact_key: &str) -> CacheOwner {
        let (tenant, group) = tenant_of(headers);
        CacheOwner {
            tenant,
            group,
            contact_key: contact_key.into(),
        }
    }

    /// Is this owner in the tenant partition `(tenant, group)`?
    pub fn in_partition(&self, tenant: &Option<Bytes>, group: &Option<Bytes>) -> bool {
        self.tenant == *tenant && self.group == *group
    }
}

/// The tenant partition (`ContactCenterId`, `GroupId`) a request names. An empty
/// header is the same as an absent one (issue 10.5): the forwarded request drops it
/// too (see [`drop_empty_tenant_headers`]), so the cache key, the invalidation and the
/// upstream all read one tenant.
pub fn tenant_of(headers: &HeaderMap) -> (Option<Bytes>, Option<Bytes>) {
    let read = |name| {
        headers
            .get(name)
            .filter(|v| !v.as_bytes().trim_ascii().is_empty())
            .map(|v| Bytes::copy_from_slice(v.as_bytes()))
    };
    (read(&CONTACT_CENTER_ID), read(&GROUP_ID))
}

/// Removes empty tenant headers from a request about to be forwarded.
pub fn drop_empty_tenant_headers(headers: &mut HeaderMap) {
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
        contact_key: &str,
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
            owner: CacheOwner::from_headers(headers, contact_key),
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
        self.owner.contact_key.len()
            + self.owner.tenant.as_ref().map_or(0, Bytes::len)
            + self.owner.group.as_ref().map_or(0, Bytes::len)
            + extensions
            + 128
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

    #[test]
    fn tenants_groups_credentials_and_extension_sets_partition_the_cache() {
        let none = Extensions::None;
        let base = Key::new(
            &headers(&[("contactcenterid", "t1"), ("authorization", "Basic YQ==")]),
            "408",
            &none,
            false,
        );
        let same = Key::new(
            &headers(&[("ContactCenterId", "t1"), ("Authorization", "Basic YQ==")]),
            "408",
            &none,
            false,
        );
        assert_eq!(base, same, "header name case does not matter");
        let differing = [
            Key::new(
                &headers(&[("contactcenterid", "t2"), ("authorization", "Basic YQ==")]),
                "408",
                &none,
                false,
            ),
            Key::new(
                &headers(&[
                    ("contactcenterid", "t1"),
                    ("groupid", "g"),
                    ("authorization", "Basic YQ=="),
                ]),
                "408",
                &none,
                false,
            ),
            Key::new(
                &headers(&[("contactcenterid", "t1"), ("authorization", "Basic Yg==")]),
                "408",
                &none,
                false,
            ),
            Key::new(
                &headers(&[("contactcenterid", "t1"), ("authorization", "Basic YQ==")]),
                "409",
                &none,
                false,
            ),
            Key::new(
                &headers(&[("contactcenterid", "t1"), ("authorization", "Basic YQ==")]),
                "408",
                &Extensions::All,
                false,
            ),
        ];
        for other in differing {
            assert_ne!(base, other);
        }
        let shared_a = Key::new(
            &headers(&[("authorization", "Basic YQ==")]),
            "408",
            &none,
            true,
        );
        let shared_b = Key::new(
            &headers(&[("authorization", "Basic Yg==")]),
            "408",
            &none,
            true,
        );
        assert_eq!(shared_a, shared_b, "share_across_credentials = true");
    }
}
