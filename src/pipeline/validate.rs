//! Stage `validate`: decodes the path parameter and validates every query parameter
//! of a Query Services request.

use http::request::Parts;

use super::{Exchange, Gateway};
use crate::error::GatewayError;
use crate::identity::ContactKey;
use crate::query::params;
use crate::query::{Lifecycle, ServiceQuery};
use crate::routes::PathOwner;

/// A validated Query Services request.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub query: ServiceQuery,
    /// Whose services: the decoded, typed owner of the path.
    pub owner: Owner,
    /// The upstream path of the owner's "all" route, relative to the API prefix
    /// (`/services/anonymous/{key}`, `/customers/{id}/services`), canonically encoded.
    pub owner_path: String,
    /// The upstream path of the requested route (`owner_path` plus the lifecycle).
    pub route_path: String,
}

/// The owner a Query Services path names, percent-decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    /// `/services/anonymous/{contact_key}`: the key as written, typed from here on
    /// (the cache, the fleet's Redis keys and the invalidations all take it as is).
    Contact(ContactKey),
    /// `/customers/{customer_id}/...`: never cached.
    Customer(String),
}

impl Validated {
    pub fn is_anonymous(&self) -> bool {
        self.query.anonymous
    }

    /// The contact key of an anonymous request.
    pub fn contact_key(&self) -> Option<&ContactKey> {
        match &self.owner {
            Owner::Contact(key) => Some(key),
            Owner::Customer(_) => None,
        }
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
        let (anonymous, owner_path, owner) = match owner {
            PathOwner::Anonymous { contact_key } => {
                let key = params::decode_path_param("contact_key", contact_key, max)
                    .map_err(|e| GatewayError::InvalidParameter(e.to_string()))?;
                path_safe("contact_key", &key)?;
                exchange.owner = Some(key.clone());
                let path = owner_path("/services/anonymous/", &key, "");
                (true, path, Owner::Contact(ContactKey::new(&key)))
            }
            PathOwner::Customer { customer_id } => {
                let id = params::decode_path_param("customer_id", customer_id, max)
                    .map_err(|e| GatewayError::InvalidParameter(e.to_string()))?;
                path_safe("customer_id", &id)?;
                exchange.owner = Some(id.clone());
                let path = owner_path("/customers/", &id, "/services");
                (false, path, Owner::Customer(id))
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
        let suffix = match lifecycle {
            Lifecycle::All => "",
            Lifecycle::Active => "/active",
            Lifecycle::Completed => "/completed",
        };
        let mut route_path = String::with_capacity(owner_path.len() + suffix.len());
        route_path.push_str(&owner_path);
        route_path.push_str(suffix);
        Ok(Validated {
            query,
            owner,
            owner_path,
            route_path,
        })
    }
}

/// `{before}{owner, canonically encoded}{after}`, written without the formatting
/// machinery: every Query Services request, hits included, builds one.
fn owner_path(before: &str, owner: &str, after: &str) -> String {
    let mut path = String::with_capacity(before.len() + owner.len() * 3 + after.len());
    path.push_str(before);
    params::push_encoded_path_param(&mut path, owner);
    path.push_str(after);
    path
}

/// A decoded contact key or customer id may not carry what a path may not (see
/// `routes::check_path`): an upstream that decodes before routing must not see a
/// separator, a parameter or a dot-segment in it.
fn path_safe(name: &str, value: &str) -> Result<(), GatewayError> {
    let problem = if value == "." || value == ".." {
        "is a dot-segment"
    } else if value.contains('/') {
        "contains '/'"
    } else if value.contains('\\') {
        "contains '\\'"
    } else if value.contains(';') {
        "contains ';'"
    } else if value.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(GatewayError::InvalidParameter(format!(
        "parameter '{name}': '{}' {problem}",
        params::shown(value)
    )))
}

#[cfg(test)]
mod tests {
    use super::{owner_path, path_safe};
    use crate::query::params;

    #[test]
    fn owner_paths_are_the_encoded_owner_between_fixed_parts() {
        for owner in ["key-1", "+1 408 832", "a.b~c_d", "ünï/cødé%", ""] {
            assert_eq!(
                owner_path("/customers/", owner, "/services"),
                format!("/customers/{}/services", params::encode_path_param(owner))
            );
        }
    }

    #[test]
    fn decoded_keys_may_not_carry_path_syntax() {
        for bad in [".", "..", "a/b", "a\\b", "a;b", "a\0b"] {
            assert!(path_safe("contact_key", bad).is_err(), "{bad:?}");
        }
        for good in ["+1 408 832", "a.b", "...", "x@y.com", "a=b"] {
            assert_eq!(path_safe("contact_key", good), Ok(()), "{good:?}");
        }
        assert_eq!(
            path_safe("customer_id", "a;b").map_err(|e| e.to_string()),
            Err("parameter 'customer_id': 'a;b' contains ';'".to_owned())
        );
    }
}
