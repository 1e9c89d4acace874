//! Values the filter and raw tests share: the service types and attached-data filters
//! their generated queries pick from.

use serde_json::{json, Value};

use super::{ExtensionFilter, Include, Lifecycle, ServiceQuery, ServiceType, TypeMap, Window};

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

/// What a query generator draws: lifecycle, anonymous, the started and completed
/// windows, listed types, the four include flags, and filters.
pub(crate) type QueryParts = (
    Lifecycle,
    bool,
    Window,
    Window,
    Vec<ServiceType>,
    Vec<bool>,
    Vec<ExtensionFilter>,
);

/// The query a generator's draw stands for.
pub(crate) fn query_of(parts: QueryParts) -> ServiceQuery {
    let (lifecycle, anonymous, started, completed, service_types, include, filters) = parts;
    ServiceQuery {
        lifecycle,
        anonymous,
        started,
        completed,
        service_types,
        include: Include::from_flags(&include),
        filters,
        ..ServiceQuery::plain()
    }
}

/// The type map of a generated case: two of the listed names mapped to their ids, or
/// no map at all.
pub(crate) fn type_map(mapped: bool) -> TypeMap {
    if mapped {
        TypeMap::new([
            ("DeliveringService".to_owned(), 8),
            ("Offering".to_owned(), 5),
        ])
    } else {
        TypeMap::default()
    }
}

/// A generated service's top-level fields, in the order both generators write them;
/// `None` leaves a field out. `(customer, kind, score, tier, started, completed)`.
pub(crate) type ServiceFields<T> = (
    Option<T>,
    Option<T>,
    Option<T>,
    Option<T>,
    Option<T>,
    Option<T>,
);

/// The named, present fields of a [`ServiceFields`].
pub(crate) fn service_fields<T>(fields: ServiceFields<T>) -> Vec<(&'static str, T)> {
    let (customer, kind, score, tier, started, completed) = fields;
    [
        ("customer_id", customer),
        ("service_type", kind),
        ("score", score),
        ("tier", tier),
        ("started", started),
        ("completed", completed),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v)))
    .collect()
}
