//! Values the filter and raw tests share: the service types and attached-data filters
//! their generated queries pick from.

use serde_json::{json, Value};

use super::{ExtensionFilter, ServiceType};

/// A filter `key=value` whose value was written as `value`'s JSON.
pub(crate) fn filter(key: &str, value: Value) -> ExtensionFilter {
    ExtensionFilter {
        key: key.to_owned(),
        raw: value.to_string(),
        value,
    }
}

/// Service types a generated query lists: ids and names, mapped and not.
pub(crate) fn listed_types() -> Vec<ServiceType> {
    vec![
        ServiceType::Id(8),
        ServiceType::Id(5),
        ServiceType::Id(3),
        ServiceType::Name("DeliveringService".into()),
        ServiceType::Name("Offering".into()),
        ServiceType::Name("Other".into()),
    ]
}

/// Filters both generators use (each adds its own).
pub(crate) fn common_filters() -> Vec<ExtensionFilter> {
    vec![
        filter("score", json!(85)),
        filter("score", json!("85")),
        filter("score", json!("gold")),
    ]
}
