//! Stage `validate`: decodes the path parameter and validates every query parameter
//! of a Query Services request.

use http::request::Parts;

use super::{Exchange, Gateway};
use crate::error::GatewayError;
use crate::query::params;
use crate::query::{Lifecycle, ServiceQuery};
use crate::routes::PathOwner;

/// A validated Query Services request.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub query: ServiceQuery,
    /// The decoded contact key (anonymous routes) or customer id.
    pub owner_id: String,
    /// The upstream path of the owner's "all" route, relative to the API prefix
    /// (`/services/anonymous/{key}`, `/customers/{id}/services`), canonically encoded.
    pub owner_path: String,
    /// The upstream path of the requested route (`owner_path` plus the lifecycle).
    pub route_path: String,
}

impl Validated {
    pub fn is_anonymous(&self) -> bool {
        self.query.anonymous
    }
}

impl Gateway {
    pub(super) fn validate(
        &self,
        parts: &Parts,
        owner: PathOwner<'_>,
        lifecycle: Lifecycle,
        exchange: &mut Exchange,
    ) -> Result<Validated, GatewayError> {
        let s = &self.inner.settings;
        let max = s.limits.max_key_bytes;
        let (anonymous, owner_path, owner_id) = match owner {
            PathOwner::Anonymous { contact_key } => {
                let key = params::decode_path_param("contact_key", contact_key, max)
                    .map_err(|e| GatewayError::InvalidParameter(e.to_string()))?;
                exchange.owner = Some(key.clone());
                let path = format!("/services/anonymous/{}", params::encode_path_param(&key));
                (true, path, key)
            }
            PathOwner::Customer { customer_id } => {
                let id = params::decode_path_param("customer_id", customer_id, max)
                    .map_err(|e| GatewayError::InvalidParameter(e.to_string()))?;
                exchange.owner = Some(id.clone());
                let path = format!("/customers/{}/services", params::encode_path_param(&id));
                (false, path, id)
            }
        };
        let query = params::parse_service_query(
            parts.uri.query(),
            lifecycle,
            anonymous,
            &s.service_types,
            &s.limits,
        )
        .map_err(|e| GatewayError::InvalidParameter(e.to_string()))?;
        let route_path = match lifecycle {
            Lifecycle::All => owner_path.clone(),
            Lifecycle::Active => format!("{owner_path}/active"),
            Lifecycle::Completed => format!("{owner_path}/completed"),
        };
        Ok(Validated {
            query,
            owner_id,
            owner_path,
            route_path,
        })
    }
}
