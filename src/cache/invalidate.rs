//! Which cache entries a write can change (gateway contract §3.3).
//!
//! A write is classified from its method and path before it is forwarded; its 2xx
//! answer then invalidates. A start names its contact key in the body (the pipeline
//! reads it), every other write names a service id, found through the service-id index.
//! Applying an invalidation (and the admin purges) lives here too.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::HeaderMap;
use http::Method;
use percent_encoding::percent_decode_str;
use serde_json::Value;

use bytes::Bytes;

use super::key::{tenant_of, CacheOwner, Key};
use super::lock;

/// What a successful write invalidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// `POST /services/start`: the contact key's entries (when the body has one).
    ServiceStart { owner: Option<CacheOwner> },
    /// A write to one service: every entry holding it.
    Service { service_id: String },
    /// A write the gateway cannot attribute to keys (`POST /maintenance/...`): every
    /// entry of the writer's tenant partition, and no other tenant's (issue 10.4).
    Tenant {
        tenant: Option<Bytes>,
        group: Option<Bytes>,
    },
    /// Every entry of every tenant (the admin purge, a fleet flush).
    Everything,
}

impl Invalidation {
    /// Classifies a request under the API prefix (`rest` is the path after it;
    /// `headers` name the writer's tenant). Reads are `None`; so are writes that cannot
    /// change a Service[] answer.
    pub fn for_write(method: &Method, rest: &str, headers: &HeaderMap) -> Option<Invalidation> {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return None;
        }
        let trimmed = rest.strip_suffix('/').unwrap_or(rest);
        let segments: Vec<&str> = trimmed.split('/').skip(1).collect();
        match segments.as_slice() {
            ["services", "start"] if *method == Method::POST => {
                Some(Invalidation::ServiceStart { owner: None })
            }
            ["services", "anonymous", ..] => None,
            ["services", id, ..] => Some(Invalidation::Service {
                service_id: decode(id),
            }),
            ["customers", _, "services", id] => Some(Invalidation::Service {
                service_id: decode(id),
            }),
            ["maintenance", ..] => {
                let (tenant, group) = tenant_of(headers);
                Some(Invalidation::Tenant { tenant, group })
            }
            _ => None,
        }
    }

    /// Fills in the owner of a start from its JSON body (anonymous starts only matter,
    /// but a customer start with a contact key is invalidated too: harmless and safe).
    pub fn with_start_body(self, headers: &HeaderMap, body: &[u8]) -> Invalidation {
        match self {
            Invalidation::ServiceStart { .. } => {
                let contact_key = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v.get("contact_key").map(id_text));
                Invalidation::ServiceStart {
                    owner: contact_key.map(|key| CacheOwner::from_headers(headers, &key)),
                }
            }
            other => other,
        }
    }
}

/// A service id (or contact key) as text, whether the JSON has it as a number or a
/// string, so ids from paths and from bodies compare equal (see [`normalise_id`]).
pub fn id_text(value: &Value) -> String {
    match value {
        Value::String(s) => normalise_id(s),
        other => normalise_id(&other.to_string()),
    }
}

/// An id as the upstream reads it (issue 10.5): a decimal integer by its value (`+7`,
/// `007` and `7` are one service), anything else as written.
pub fn normalise_id(id: &str) -> String {
    let (negative, digits) = match id.as_bytes().first() {
        Some(b'+') => (false, &id[1..]),
        Some(b'-') => (true, &id[1..]),
        _ => (false, id),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return id.to_owned();
    }
    let value = digits.trim_start_matches('0');
    match (value.is_empty(), negative) {
        (true, _) => "0".to_owned(),
        (false, true) => format!("-{value}"),
        (false, false) => value.to_owned(),
    }
}

fn decode(segment: &str) -> String {
    normalise_id(&percent_decode_str(segment).decode_utf8_lossy())
}

impl super::Cache {
    /// Applies a successful write, made through this gateway or (later) announced by
    /// another replica. `started_service_id` is the id a start answered with.
    pub async fn invalidate(&self, invalidation: &Invalidation, started_service_id: Option<&str>) {
        let epoch = self.inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let now = self.inner.clock.now();
        let (keys, owners): (Vec<Arc<Key>>, Option<Vec<CacheOwner>>) = {
            let mut index = lock(&self.inner.index);
            index.prune(now, self.inner.wait_bound * 2);
            match invalidation {
                Invalidation::ServiceStart { owner: None } => return,
                Invalidation::ServiceStart { owner: Some(owner) } => {
                    index.owner_written.insert(owner.clone(), (epoch, now));
                    if let Some(id) = started_service_id {
                        index.started.insert(id.to_owned(), owner.clone());
                    }
                    let keys = index
                        .by_owner
                        .get(owner)
                        .map(|keys| keys.keys().cloned().collect())
                        .unwrap_or_default();
                    (keys, Some(vec![owner.clone()]))
                }
                Invalidation::Service { service_id } => {
                    index
                        .service_written
                        .insert(service_id.clone(), (epoch, now));
                    let keys: Vec<Arc<Key>> = index
                        .by_service
                        .get(service_id)
                        .map(|keys| keys.keys().cloned().collect())
                        .unwrap_or_default();
                    let mut owners: Vec<CacheOwner> =
                        keys.iter().map(|k| k.owner.clone()).collect();
                    owners.extend(index.started.get(service_id).cloned());
                    owners.sort_by(|a, b| a.contact_key.cmp(&b.contact_key));
                    owners.dedup();
                    for owner in &owners {
                        index.owner_written.insert(owner.clone(), (epoch, now));
                    }
                    // Unknown owner: any in-flight fetch might hold the service.
                    (keys, (!owners.is_empty()).then_some(owners))
                }
                Invalidation::Tenant { tenant, group } => {
                    index
                        .tenant_written
                        .insert((tenant.clone(), group.clone()), (epoch, now));
                    let keys = index
                        .by_owner
                        .iter()
                        .filter(|(owner, _)| owner.in_partition(tenant, group))
                        .flat_map(|(_, keys)| keys.keys().cloned())
                        .collect();
                    (keys, Some(Vec::new()))
                }
                Invalidation::Everything => {
                    index.all_written = epoch;
                    (Vec::new(), None)
                }
            }
        };
        {
            let mut inflight = lock(&self.inner.inflight);
            match (&owners, invalidation) {
                (_, Invalidation::Tenant { tenant, group }) => {
                    inflight.retain(|key, _| !key.owner.in_partition(tenant, group));
                }
                (Some(owners), _) => inflight.retain(|key, _| !owners.contains(&key.owner)),
                (None, _) => inflight.clear(),
            }
        }
        if matches!(invalidation, Invalidation::Everything) {
            self.inner.entries.invalidate_all();
            self.inner.variants.invalidate_all();
            return;
        }
        for key in keys {
            self.inner.entries.invalidate(&key).await;
        }
    }

    /// Drops everything at once, without waiting (a fleet flush: messages may have
    /// been missed). Fetches in flight are detached and will not be stored.
    pub fn flush(&self) {
        let epoch = self.inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.inner.index).all_written = epoch;
        lock(&self.inner.inflight).clear();
        self.inner.entries.invalidate_all();
        self.inner.variants.invalidate_all();
    }

    /// Admin: drops everything.
    pub async fn purge_all(&self) {
        self.invalidate(&Invalidation::Everything, None).await;
        self.inner.uncacheable.invalidate_all();
        self.inner.entries.run_pending_tasks().await;
    }

    /// Admin: drops one contact key's entries in the tenant named by `headers`.
    /// Returns how many entries were dropped.
    pub async fn purge_contact(&self, headers: &HeaderMap, contact_key: &str) -> usize {
        let owner = CacheOwner::from_headers(headers, contact_key);
        let count = lock(&self.inner.index)
            .by_owner
            .get(&owner)
            .map_or(0, HashMap::len);
        self.invalidate(&Invalidation::ServiceStart { owner: Some(owner) }, None)
            .await;
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(method: Method, rest: &str) -> Option<Invalidation> {
        Invalidation::for_write(&method, rest, &HeaderMap::new())
    }

    fn service(id: &str) -> Option<Invalidation> {
        Some(Invalidation::Service {
            service_id: id.to_owned(),
        })
    }

    #[test]
    fn writes_are_classified() {
        let cases = [
            (
                Method::POST,
                "/services/start",
                Some(Invalidation::ServiceStart { owner: None }),
            ),
            (Method::POST, "/services/42/end", service("42")),
            (Method::PUT, "/services/42", service("42")),
            (Method::DELETE, "/services/42/", service("42")),
            (
                Method::PUT,
                "/services/383-f9a6/extensions/x/merge",
                service("383-f9a6"),
            ),
            (Method::POST, "/services/42/states/start", service("42")),
            (Method::POST, "/services/42/states/7/end", service("42")),
            (Method::POST, "/services/42/tasks/start", service("42")),
            (Method::POST, "/customers/ABC/services/42", service("42")),
            (Method::POST, "/services/a%20b/end", service("a b")),
            (
                Method::POST,
                "/maintenance/purge",
                Some(Invalidation::Tenant {
                    tenant: None,
                    group: None,
                }),
            ),
            (Method::POST, "/services/+7/end", service("7")),
            (Method::POST, "/services/007/end", service("7")),
            (Method::POST, "/services/%2B7/end", service("7")),
            (Method::GET, "/services/42", None),
            (Method::HEAD, "/services/42/states", None),
            (Method::POST, "/metadata/business-attributes", None),
        ];
        for (method, rest, expected) in cases {
            assert_eq!(classify(method.clone(), rest), expected, "{method} {rest}");
        }
    }

    #[test]
    fn ids_are_normalised_as_the_upstream_reads_them() {
        for (id, expected) in [
            ("7", "7"),
            ("+7", "7"),
            ("007", "7"),
            ("000", "0"),
            ("-07", "-7"),
            ("+", "+"),
            ("7a", "7a"),
            ("383-f9a6", "383-f9a6"),
            ("", ""),
        ] {
            assert_eq!(normalise_id(id), expected, "{id:?}");
        }
        assert_eq!(id_text(&serde_json::json!(7)), "7");
        assert_eq!(id_text(&serde_json::json!("007")), "7");
    }

    #[test]
    fn a_maintenance_write_names_the_writers_tenant_and_an_empty_header_is_none() {
        let mut headers = HeaderMap::new();
        headers.insert("contactcenterid", "t1".parse().expect("valid"));
        headers.insert("groupid", "".parse().expect("valid"));
        assert_eq!(
            Invalidation::for_write(&Method::POST, "/maintenance/purge", &headers),
            Some(Invalidation::Tenant {
                tenant: Some(Bytes::from_static(b"t1")),
                group: None,
            })
        );
    }

    #[test]
    fn a_start_body_names_the_owner() {
        let mut headers = HeaderMap::new();
        headers.insert("contactcenterid", "t1".parse().expect("valid"));
        let start = Invalidation::ServiceStart { owner: None };
        let filled = start.clone().with_start_body(
            &headers,
            br#"{"contact_key": "408-832-7799", "service_type": 1}"#,
        );
        assert_eq!(
            filled,
            Invalidation::ServiceStart {
                owner: Some(CacheOwner::from_headers(&headers, "408-832-7799"))
            }
        );
        let numeric = start
            .clone()
            .with_start_body(&headers, br#"{"contact_key": 4088327799}"#);
        assert_eq!(
            numeric,
            Invalidation::ServiceStart {
                owner: Some(CacheOwner::from_headers(&headers, "4088327799"))
            }
        );
        let customer = start.with_start_body(&headers, br#"{"customer_id": "ABC"}"#);
        assert_eq!(customer, Invalidation::ServiceStart { owner: None });
    }
}
