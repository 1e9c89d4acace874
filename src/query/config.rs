//! The `[business_attributes.<attribute>]` tables: name = ID maps as written
//! ([`RawBusinessAttributes`]), validated once into [`TypeMap`]s.

use std::collections::BTreeMap;

use super::TypeMap;
use crate::settings::{invalid, ConfigError};

/// Step 1: every `[business_attributes.<attribute>]` table as written.
pub type RawBusinessAttributes = BTreeMap<String, BTreeMap<String, i64>>;

/// `[business_attributes.*]`: names non-empty and not integers, IDs unique per map.
pub fn business_attributes(
    raw: RawBusinessAttributes,
) -> Result<BTreeMap<String, TypeMap>, ConfigError> {
    let mut out = BTreeMap::new();
    for (attribute, pairs) in raw {
        let mut seen = BTreeMap::new();
        for (name, id) in &pairs {
            if name.is_empty() {
                return Err(invalid(
                    &format!("business_attributes.{attribute}"),
                    "empty name",
                ));
            }
            if name.parse::<i64>().is_ok() {
                return Err(invalid(
                    &format!("business_attributes.{attribute}.{name}"),
                    "a name must not be an integer (it would be read as an ID)",
                ));
            }
            if let Some(other) = seen.insert(*id, name.clone()) {
                return Err(invalid(
                    &format!("business_attributes.{attribute}.{name}"),
                    format!("ID {id} is already used by '{other}'"),
                ));
            }
        }
        out.insert(attribute, TypeMap::new(pairs));
    }
    Ok(out)
}
