//! The post-filter: makes an upstream Service[] satisfy a `ServiceQuery`.
//!
//! The miss path, the cache (which computes every variant from one broad answer) and the
//! reference store all run upstream JSON through here, so "what a query keeps" has one
//! definition. The filter re-applies every criterion whatever the upstream already did
//! (legacy backends ignore some parameters), then trims each kept Service to the include
//! flags. Everything it does not decide on passes through untouched: key order
//! (`preserve_order`), unknown fields, and 64-bit integers, which are never read as floats.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

pub use super::rules::Match;
use super::rules::{json_eq, number_shaped, numbers_eq, Facts, Num, Rules, TypeFact};
use super::{json_kind, ExtensionFilter, Include, Section, ServiceQuery, TypeMap};

/// The upstream body was not a JSON array of objects (or not a JSON object, for `parse_service`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidBody(pub String);

/// One Service object, keys in upstream order.
pub type Service = Map<String, Value>;

/// Parses a Query Services answer: a JSON array whose every element is an object.
pub fn parse_services(body: &[u8]) -> Result<Vec<Service>, InvalidBody> {
    match parse_json(body)? {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(service) => Ok(service),
                other => Err(InvalidBody(format!(
                    "element {i} of the service array is {}, not an object",
                    json_kind(&other)
                ))),
            })
            .collect(),
        other => Err(InvalidBody(format!(
            "expected a JSON array of services, got {}",
            json_kind(&other)
        ))),
    }
}

/// Parses a Query Service by ID answer: one JSON object.
pub fn parse_service(body: &[u8]) -> Result<Service, InvalidBody> {
    match parse_json(body)? {
        Value::Object(service) => Ok(service),
        other => Err(InvalidBody(format!(
            "expected a JSON service object, got {}",
            json_kind(&other)
        ))),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, InvalidBody> {
    // serde_json's syntax errors name a position, never the input, so no body leaks into logs.
    serde_json::from_slice(body).map_err(|e| InvalidBody(format!("not JSON: {e}")))
}

/// What the filter kept, plus data problems found upstream (for one log line by the caller).
#[derive(Debug, Default)]
pub struct Filtered {
    pub services: Vec<Service>,
    /// Services that satisfied every other criterion but were dropped because a timestamp
    /// a date filter needed was missing, not a string, or unreadable.
    pub unparseable_timestamps: usize,
}

/// Keep the services that satisfy `q` (in upstream order) and trim each to `q.include`.
pub fn filter_services(mut services: Vec<Service>, q: &ServiceQuery, types: &TypeMap) -> Filtered {
    let rules = Rules::new(q, types);
    let mut unparseable_timestamps = 0;
    // In place: kept services are neither cloned nor moved to a new allocation.
    services.retain_mut(|service| match rules.check(&Tree(service)) {
        Match::Keep => {
            trim_service(service, q.include);
            true
        }
        Match::Drop => false,
        Match::DropBadTimestamp => {
            unparseable_timestamps += 1;
            false
        }
    });
    Filtered {
        services,
        unparseable_timestamps,
    }
}

/// Does one service satisfy `q`? Prefer [`filter_services`] for many services: it resolves
/// the listed service types once.
pub fn matches(service: &Service, q: &ServiceQuery, types: &TypeMap) -> Match {
    Rules::new(q, types).check(&Tree(service))
}

/// One parsed Service as the rules read it.
struct Tree<'s>(&'s Service);

impl Facts for Tree<'_> {
    fn has_customer(&self) -> bool {
        self.0.get("customer_id").is_some_and(|v| !v.is_null())
    }

    fn is_completed(&self) -> bool {
        self.0.get("completed").is_some_and(|v| !v.is_null())
    }

    fn service_type(&self) -> TypeFact<'_> {
        match self.0.get("service_type") {
            Some(Value::Number(n)) => TypeFact::Number(Num::of(n)),
            Some(Value::String(s)) => TypeFact::Text(Cow::Borrowed(s)),
            _ => TypeFact::Other,
        }
    }

    fn has_extension(&self, filter: &ExtensionFilter) -> bool {
        self.0
            .get(&filter.key)
            .is_some_and(|have| extension_matches(&filter.value, have))
    }

    fn started_at(&self) -> Option<Cow<'_, str>> {
        timestamp(self.0.get("started"))
    }

    fn completed_at(&self) -> Option<Cow<'_, str>> {
        timestamp(self.0.get("completed"))
    }
}

fn timestamp(event: Option<&Value>) -> Option<Cow<'_, str>> {
    event?.get("timestamp")?.as_str().map(Cow::Borrowed)
}

/// Does an attached-data value satisfy a filter value? Equal by [`value_matches`], or an
/// array with one element that is.
fn extension_matches(want: &Value, have: &Value) -> bool {
    value_matches(want, have)
        || matches!(have, Value::Array(items) if items.iter().any(|item| value_matches(want, item)))
}

/// JSON equality with numbers compared by value, where a number filter also matches a
/// string whose text is a JSON number of that value (`85` matches `"85"` and `"85.0"`).
fn value_matches(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Number(w), Value::String(s)) => {
            number_text(s).is_some_and(|h| numbers_eq(&Num::of(w), &Num::of(&h)))
        }
        _ => json_eq(want, have),
    }
}

/// The text of a string that is exactly a JSON number (the grammar a filter value is read
/// with), so `"85"` and `"8.5e1"` count but `" 85"`, `"+85"` and `"0x55"` do not.
fn number_text(s: &str) -> Option<Number> {
    if !number_shaped(s) {
        return None;
    }
    serde_json::from_str(s).ok()
}

/// The section names, in `Section::ALL` order (for the tests' tables).
#[cfg(test)]
const SECTIONS: [&str; 4] = [
    Section::ActiveStates.name(),
    Section::CompletedStates.name(),
    Section::ActiveTasks.name(),
    Section::CompletedTasks.name(),
];

/// Make the four sections present exactly when their flag is true (an empty array when true and
/// absent upstream), absent otherwise; state objects inside active_states/completed_states lose any
/// nested `active_tasks`/`completed_tasks` arrays. Nothing else changes.
///
/// A section that is `null` upstream counts as absent. Removals keep the order of the other
/// keys; a section added because it was missing goes last.
pub fn trim_service(service: &mut Service, include: Include) {
    let unwanted = |key: &str| Section::from_name(key).is_some_and(|s| !include.get(s));
    if Section::ALL
        .iter()
        .any(|s| !include.get(*s) && service.contains_key(s.name()))
    {
        service.retain(|key, _| !unwanted(key));
    }
    for section in Section::ALL.into_iter().filter(|s| include.get(*s)) {
        match service.get_mut(section.name()) {
            Some(Value::Null) | None => {
                service.insert(section.name().to_owned(), Value::Array(Vec::new()));
            }
            Some(Value::Array(items)) if section.holds_states() => {
                for state in items.iter_mut().filter_map(Value::as_object_mut) {
                    for nested in Section::ALL.into_iter().filter(|s| s.holds_tasks()) {
                        state.shift_remove(nested.name());
                    }
                }
            }
            Some(_) => {}
        }
    }
}

/// Serialise services as a JSON array (compact).
pub fn render(services: &[Service]) -> Vec<u8> {
    serde_json::to_vec(services).expect("a map with string keys always serialises")
}

#[cfg(test)]
mod tests;
