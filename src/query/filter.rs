//! The post-filter: makes an upstream Service[] satisfy a `ServiceQuery`.
//!
//! The miss path, the cache (which computes every variant from one broad answer) and the
//! reference store all run upstream JSON through here, so "what a query keeps" has one
//! definition. The filter re-applies every criterion whatever the upstream already did
//! (legacy backends ignore some parameters), then trims each kept Service to the include
//! flags. Everything it does not decide on passes through untouched: key order
//! (`preserve_order`), unknown fields, and 64-bit integers, which are never read as floats.

use serde_json::{Map, Number, Value};

use super::{date, json_kind, Include, Lifecycle, Section, ServiceQuery, TypeMap, Window};

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

/// The verdict on one Service.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    Keep,
    /// Fails a criterion of the query.
    Drop,
    /// Passes every other criterion, but a timestamp a bounded date window needs is missing
    /// or unparseable: excluded, and worth reporting as an upstream data error.
    DropBadTimestamp,
}

impl Match {
    pub fn is_keep(self) -> bool {
        self == Match::Keep
    }
}

/// Keep the services that satisfy `q` (in upstream order) and trim each to `q.include`.
pub fn filter_services(mut services: Vec<Service>, q: &ServiceQuery, types: &TypeMap) -> Filtered {
    let matcher = Matcher::new(q, types);
    let mut unparseable_timestamps = 0;
    // In place: kept services are neither cloned nor moved to a new allocation.
    services.retain_mut(|service| match matcher.check(service) {
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
    Matcher::new(q, types).check(service)
}

/// A query with its service types resolved through the map, ready to test many services.
struct Matcher<'q> {
    q: &'q ServiceQuery,
    types: &'q TypeMap,
    /// Every DB ID a listed type stands for (listed IDs, and the IDs of listed names).
    type_ids: Vec<i64>,
    /// Every name a listed type stands for (listed names, and the names of listed IDs).
    type_names: Vec<&'q str>,
}

impl<'q> Matcher<'q> {
    fn new(q: &'q ServiceQuery, types: &'q TypeMap) -> Matcher<'q> {
        let (type_ids, type_names) = crate::query::listed_types(q, types);
        Matcher {
            q,
            types,
            type_ids,
            type_names,
        }
    }

    fn check(&self, service: &Service) -> Match {
        let q = self.q;
        if q.anonymous && service.get("customer_id").is_some_and(|v| !v.is_null()) {
            return Match::Drop;
        }
        let completed = service.get("completed").filter(|v| !v.is_null());
        let lifecycle_ok = match q.lifecycle {
            Lifecycle::All => true,
            Lifecycle::Active => completed.is_none(),
            Lifecycle::Completed => completed.is_some(),
        };
        // A bounded `completed` window asks about history: an active service has no
        // completion to place in it (and no data error either).
        if !lifecycle_ok || (completed.is_none() && !q.completed.is_unbounded()) {
            return Match::Drop;
        }
        if !self.type_listed(service.get("service_type")) {
            return Match::Drop;
        }
        let extensions_ok = q.filters.iter().all(|f| {
            service
                .get(&f.key)
                .is_some_and(|have| extension_matches(&f.value, have))
        });
        if !extensions_ok {
            return Match::Drop;
        }
        // Dates last: a bad timestamp is only reported when it alone decided.
        match (
            in_window(&q.started, service.get("started")),
            in_window(&q.completed, completed),
        ) {
            (Some(false), _) | (_, Some(false)) => Match::Drop,
            (None, _) | (_, None) => Match::DropBadTimestamp,
            (Some(true), Some(true)) => Match::Keep,
        }
    }

    fn type_listed(&self, service_type: Option<&Value>) -> bool {
        if self.q.service_types.is_empty() {
            return true;
        }
        match service_type {
            Some(Value::Number(n)) => self
                .type_ids
                .iter()
                .any(|&id| number_eq_int(n, i128::from(id))),
            Some(Value::String(s)) => {
                // Resolving the service's name too covers several names mapped to one ID.
                let id = type_id_text(s).or_else(|| self.types.id_of(s));
                self.type_names.contains(&s.as_str())
                    || id.is_some_and(|id| self.type_ids.contains(&id))
            }
            _ => false,
        }
    }
}

/// `Some(contains)` for an event whose timestamp reads; `None` when a bounded window needs a
/// timestamp the event does not have in readable form. An unbounded window needs nothing.
fn in_window(window: &Window, event: Option<&Value>) -> Option<bool> {
    if window.is_unbounded() {
        return Some(true);
    }
    let t = event?
        .get("timestamp")?
        .as_str()
        .and_then(date::parse_lenient)?;
    Some(window.contains(t))
}

/// A service type written as a decimal integer string (`"8"`, `"-3"`, `"08"`).
fn type_id_text(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
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
        (Value::Number(w), Value::String(s)) => number_text(s).is_some_and(|h| numbers_eq(w, &h)),
        _ => json_eq(want, have),
    }
}

/// The text of a string that is exactly a JSON number (the grammar a filter value is read
/// with), so `"85"` and `"8.5e1"` count but `" 85"`, `"+85"` and `"0x55"` do not.
fn number_text(s: &str) -> Option<Number> {
    let b = s.as_bytes();
    let starts = matches!(b.first(), Some(b'-' | b'0'..=b'9'));
    let ends = b.last().is_some_and(u8::is_ascii_digit);
    if !(starts && ends) {
        return None;
    }
    serde_json::from_str(s).ok()
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => numbers_eq(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Numeric equality, exact for 64-bit integers (never through f64 for two integers).
fn numbers_eq(a: &Number, b: &Number) -> bool {
    match (int_of(a), int_of(b)) {
        (Some(x), Some(y)) => x == y,
        (Some(x), None) => number_eq_int(b, x),
        (None, Some(y)) => number_eq_int(a, y),
        (None, None) => a.as_f64() == b.as_f64(),
    }
}

fn int_of(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Is `n` (integer or float) exactly the integer `i`?
fn number_eq_int(n: &Number, i: i128) -> bool {
    if let Some(x) = int_of(n) {
        return x == i;
    }
    // -2^63 ..= 2^64 covers every JSON integer serde_json holds exactly; within it an
    // integral f64 converts to i128 without loss.
    const MIN: f64 = -9_223_372_036_854_775_808.0;
    const MAX: f64 = 18_446_744_073_709_551_616.0;
    n.as_f64()
        .is_some_and(|f| f.fract() == 0.0 && (MIN..=MAX).contains(&f) && f as i128 == i)
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
