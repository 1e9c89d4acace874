//! Stage `write`: what a write that passes through csgate invalidates, decided from the
//! route the path table gave it ([`Write`]), and applied exactly once, when its
//! upstream answer's head is a 2xx, locally and (in a fleet) on the bus, before the
//! client hears the answer.
//!
//! A start names its contact key in the body: the stage reads the body (small and
//! bounded) and forwards the same bytes, and reads the answer for the new service id
//! (for the service-id index) before passing it on. A `contact_key` is a
//! [`ContactKey`] as written, never a number: `+14088327799` and `0612345678` are
//! invalidated as the reads name them.

use bytes::Bytes;
use http::response::Parts as ResponseParts;
use http::Response;
use http_body_util::BodyExt;
use serde_json::Value;

use super::Gateway;
use crate::cache::{CacheOwner, Invalidation};
use crate::error::GatewayError;
use crate::httputil::full;
use crate::identity::{ContactKey, ServiceId, Tenant};
use crate::routes::Write;
use crate::server::Body;
use crate::upstream::{Prefix, UpstreamBody};

/// What a write's 2xx will invalidate, known before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Pending {
    /// A start, whose body has not been read yet.
    Start { tenant: Tenant },
    /// Known from the path (or the start's body).
    Known(Invalidation),
    /// A start that names a contact key: its answer names the new service id.
    Started(CacheOwner),
}

impl Pending {
    /// Classifies a write routed by the path table; `None` when it invalidates nothing.
    pub(super) fn of(write: Write<'_>, tenant: &Tenant) -> Pending {
        match write {
            Write::Start => Pending::Start {
                tenant: tenant.clone(),
            },
            Write::Service { service_id } => Pending::Known(Invalidation::Service {
                service_id: ServiceId::normalise(
                    &percent_encoding::percent_decode_str(service_id).decode_utf8_lossy(),
                ),
            }),
            Write::Tenant => Pending::Known(Invalidation::Tenant {
                tenant: tenant.clone(),
            }),
        }
    }

    /// Does classifying it need the request body?
    pub(super) fn needs_body(&self) -> bool {
        matches!(self, Pending::Start { .. })
    }

    /// A start once its body is read: its owner, or nothing to invalidate (a start for
    /// a customer only, or a body that is not JSON: the upstream refuses it).
    pub(super) fn with_body(self, body: &[u8]) -> Option<Pending> {
        match self {
            Pending::Start { tenant } => serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("contact_key").and_then(ContactKey::from_json))
                .map(|key| Pending::Started(CacheOwner::new(tenant, key))),
            other => Some(other),
        }
    }
}

impl Gateway {
    /// Completes a write whose answer head is a 2xx: invalidates, then hands back the
    /// answer to send. A start's answer is read first for its service id (one too
    /// large is streamed on all the same); an answer that fails after its head still
    /// invalidates, since the write has happened.
    pub(super) async fn complete_write(
        &self,
        pending: Pending,
        head: ResponseParts,
        incoming: UpstreamBody,
        max: usize,
    ) -> Result<Response<Body>, GatewayError> {
        let (invalidation, answer) = match pending {
            Pending::Started(owner) => {
                let invalidation = Invalidation::Owner { owner };
                match Prefix::read(incoming, max).await {
                    Ok(Prefix::Whole(bytes)) => {
                        let id = started_service_id(&bytes);
                        self.apply_write(&invalidation, id.as_ref()).await;
                        return Ok(Response::from_parts(head, full(bytes)));
                    }
                    Ok(Prefix::Partial(body)) => (invalidation, Ok(body)),
                    Err(_) => (invalidation, Err(GatewayError::UpstreamUnavailable)),
                }
            }
            Pending::Known(invalidation) => {
                (invalidation, Ok(incoming.map_err(Into::into).boxed()))
            }
            // Not classified (no body was read): nothing known to invalidate.
            Pending::Start { .. } => {
                return Ok(Response::from_parts(
                    head,
                    incoming.map_err(Into::into).boxed(),
                ))
            }
        };
        self.apply_write(&invalidation, None).await;
        answer.map(|body| Response::from_parts(head, body))
    }

    /// Applies a successful write, in this order: its message queued for the fleet
    /// (from then on this replica refills nothing from the shared tier until it is
    /// delivered), the local cache invalidated, then the delivery awaited (at most
    /// `op_timeout`, then the other replicas' acknowledgements, at most `op_timeout`).
    /// It runs on a task of its own, so a client that goes away mid-write cannot cancel
    /// the local invalidation or the delivery. Redis failing costs no client an error:
    /// the bus holds what it could not deliver and delivers it when Redis answers.
    pub(super) async fn apply_write(
        &self,
        invalidation: &Invalidation,
        started_service_id: Option<&ServiceId>,
    ) {
        let Some(cache) = self.inner.cache.clone() else {
            return;
        };
        let bus = self.inner.cluster.as_ref().map(|c| c.bus.clone());
        let announced = bus
            .as_ref()
            .and_then(|bus| bus.announce(invalidation, started_service_id));
        let (invalidation, started) = (invalidation.clone(), started_service_id.cloned());
        let applying = tokio::spawn(async move {
            cache.invalidate(&invalidation, started.as_ref()).await;
            if let (Some(bus), Some(announced)) = (bus, announced) {
                // Logged by the bus.
                let _ = bus.delivered(announced).await;
            }
        });
        // A panic inside is a bug that the task's own report shows; the write's
        // answer goes out either way.
        let _ = applying.await;
    }
}

/// The `service_id` a start answered with.
fn started_service_id(answer: &Bytes) -> Option<ServiceId> {
    serde_json::from_slice::<Value>(answer)
        .ok()
        .and_then(|v| v.get("service_id").map(ServiceId::from_json))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> Tenant {
        Tenant::new(Some(Bytes::from_static(b"t1")), None)
    }

    #[test]
    fn a_start_is_owned_by_its_contact_key_as_written() {
        for key in ["+14088327799", "0612345678", "000", "+0", "408-832-7799"] {
            let body = serde_json::json!({"contact_key": key, "service_type": 1}).to_string();
            assert_eq!(
                Pending::of(Write::Start, &tenant()).with_body(body.as_bytes()),
                Some(Pending::Started(CacheOwner::new(
                    tenant(),
                    ContactKey::new(key)
                ))),
                "{key}"
            );
        }
        let numeric =
            Pending::of(Write::Start, &tenant()).with_body(br#"{"contact_key": 4088327799}"#);
        assert_eq!(
            numeric,
            Some(Pending::Started(CacheOwner::new(
                tenant(),
                ContactKey::new("4088327799")
            )))
        );
        for no_key in [&br#"{"customer_id": "ABC"}"#[..], b"not json", b"[]"] {
            assert_eq!(Pending::of(Write::Start, &tenant()).with_body(no_key), None);
        }
    }

    #[test]
    fn a_service_write_names_the_service_as_the_upstream_reads_it() {
        for (segment, id) in [("42", "42"), ("%2B7", "7"), ("007", "7"), ("a%20b", "a b")] {
            assert_eq!(
                Pending::of(
                    Write::Service {
                        service_id: segment
                    },
                    &tenant()
                ),
                Pending::Known(Invalidation::Service {
                    service_id: ServiceId::normalise(id)
                }),
                "{segment}"
            );
        }
        assert_eq!(
            Pending::of(Write::Tenant, &tenant()),
            Pending::Known(Invalidation::Tenant { tenant: tenant() })
        );
        assert!(Pending::of(Write::Start, &tenant()).needs_body());
    }
}
