//! The post-filter: makes an upstream Service[] satisfy a `ServiceQuery`.
//!
//! The miss path, the cache (which computes every variant from one broad answer) and the
//! reference store all run upstream JSON through here, so "what a query keeps" has one
//! definition. The filter re-applies every criterion whatever the upstream already did
//! (legacy backends ignore some parameters), then trims each kept Service to the include
//! flags. Everything it does not decide on passes through untouched: key order
//! (`preserve_order`), unknown fields, and 64-bit integers, which are never read as floats.

use serde_json::{Map, Number, Value};

use super::{
    date, json_kind, Include, Lifecycle, Section, ServiceQuery, ServiceType, TypeMap, Window,
};

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
        let mut type_ids = Vec::new();
        let mut type_names = Vec::new();
        for listed in &q.service_types {
            match listed {
                ServiceType::Id(id) => {
                    type_ids.push(*id);
                    type_names.extend(types.name_of(*id));
                }
                ServiceType::Name(name) => {
                    type_names.push(name.as_str());
                    type_ids.extend(types.id_of(name));
                }
            }
        }
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
mod tests {
    use super::*;
    use crate::query::{ExtensionFilter, Extensions};
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;
    use serde_json::json;

    fn query() -> ServiceQuery {
        ServiceQuery {
            lifecycle: Lifecycle::All,
            anonymous: false,
            started: Window::default(),
            completed: Window::default(),
            service_types: Vec::new(),
            include: Include::default(),
            extensions: Extensions::None,
            filters: Vec::new(),
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        date::parse_param(text).expect("test instant is valid")
    }

    fn window(from: Option<&str>, to: Option<&str>) -> Window {
        Window {
            from: from.map(at),
            to: to.map(at),
        }
    }

    fn services(value: Value) -> Vec<Service> {
        parse_services(value.to_string().as_bytes()).expect("test input is an array of objects")
    }

    fn text(services: &[Service]) -> String {
        String::from_utf8(render(services)).expect("render writes UTF-8")
    }

    /// The input services whose `service_id` is listed, in input order, rendered.
    fn pick(input: &Value, ids: &[&str]) -> String {
        let kept: Vec<Value> = input
            .as_array()
            .expect("test input is an array")
            .iter()
            .filter(|s| ids.contains(&s["service_id"].as_str().expect("string id")))
            .cloned()
            .collect();
        Value::Array(kept).to_string()
    }

    /// Runs the filter and returns (rendered output, unparseable count).
    fn run(input: &Value, q: &ServiceQuery, types: &TypeMap) -> (String, usize) {
        let out = filter_services(services(input.clone()), q, types);
        (text(&out.services), out.unparseable_timestamps)
    }

    #[test]
    fn lifecycle_and_anonymous() {
        let input = json!([
            {"service_id": "anon-active", "started": {"timestamp": "2020-01-01T00:00:00Z"}},
            {"service_id": "anon-null-active", "customer_id": null, "completed": null},
            {"service_id": "anon-completed", "customer_id": null,
             "completed": {"timestamp": "2020-01-02T00:00:00Z"}},
            {"service_id": "cust-active", "customer_id": "ABC1234"},
            {"service_id": "cust-completed", "customer_id": "ABC1234",
             "completed": {"timestamp": "2020-01-02T00:00:00Z"}},
            {"service_id": "cust-empty-completed", "customer_id": "", "completed": {}},
        ]);
        use Lifecycle::*;
        let cases: [(Lifecycle, bool, &[&str]); 6] = [
            (
                All,
                false,
                &[
                    "anon-active",
                    "anon-null-active",
                    "anon-completed",
                    "cust-active",
                    "cust-completed",
                    "cust-empty-completed",
                ],
            ),
            (
                Active,
                false,
                &["anon-active", "anon-null-active", "cust-active"],
            ),
            (
                Completed,
                false,
                &["anon-completed", "cust-completed", "cust-empty-completed"],
            ),
            (
                All,
                true,
                &["anon-active", "anon-null-active", "anon-completed"],
            ),
            (Active, true, &["anon-active", "anon-null-active"]),
            (Completed, true, &["anon-completed"]),
        ];
        for (lifecycle, anonymous, expected) in cases {
            let q = ServiceQuery {
                lifecycle,
                anonymous,
                ..query()
            };
            assert_eq!(
                run(&input, &q, &TypeMap::default()),
                (pick(&input, expected), 0),
                "{lifecycle:?} anonymous={anonymous}"
            );
        }
    }

    #[test]
    fn started_window_reads_non_canonical_timestamps() {
        let input = json!([
            {"service_id": "canonical", "started": {"timestamp": "2020-01-01T10:00:00.000Z"}},
            {"service_id": "no-z", "started": {"timestamp": "2020-01-01T11:00:00.000"}},
            {"service_id": "no-millis", "started": {"timestamp": "2020-01-01T12:00:00Z"}},
            {"service_id": "space", "started": {"timestamp": "2020-01-01 13:00:00"}},
            {"service_id": "offset", "started": {"timestamp": "2020-01-01T16:00:00+02:00"}},
            {"service_id": "sub-milli", "started": {"timestamp": "2020-01-01T14:59:59.9995Z"}},
            {"service_id": "garbage", "started": {"timestamp": "yesterday"}},
            {"service_id": "number", "started": {"timestamp": 1577872800000_i64}},
            {"service_id": "no-timestamp", "started": {"session_id": "s"}},
            {"service_id": "no-started"},
        ]);
        let all_good = [
            "canonical",
            "no-z",
            "no-millis",
            "space",
            "offset",
            "sub-milli",
        ];
        let cases: [(Window, &[&str], usize); 8] = [
            (
                Window::default(),
                &[
                    "canonical",
                    "no-z",
                    "no-millis",
                    "space",
                    "offset",
                    "sub-milli",
                    "garbage",
                    "number",
                    "no-timestamp",
                    "no-started",
                ],
                0,
            ),
            (window(Some("2000-01-01T00:00:00Z"), None), &all_good, 4),
            (window(None, Some("2030-01-01T00:00:00Z")), &all_good, 4),
            // from is inclusive, to exclusive, compared at full upstream precision.
            (
                window(Some("2020-01-01T11:00:00Z"), Some("2020-01-01T13:00:00Z")),
                &["no-z", "no-millis"],
                4,
            ),
            (
                window(
                    Some("2020-01-01T13:00:00.001Z"),
                    Some("2020-01-01T14:00:00Z"),
                ),
                &[],
                4,
            ),
            (
                window(Some("2020-01-01T14:00:00Z"), None),
                &["offset", "sub-milli"],
                4,
            ),
            (
                window(None, Some("2020-01-01T14:59:59.999Z")),
                &["canonical", "no-z", "no-millis", "space", "offset"],
                4,
            ),
            (
                window(
                    Some("2020-01-01T14:59:59.999Z"),
                    Some("2020-01-01T15:00:00Z"),
                ),
                &["sub-milli"],
                4,
            ),
        ];
        for (started, expected, bad) in cases {
            let q = ServiceQuery { started, ..query() };
            assert_eq!(
                run(&input, &q, &TypeMap::default()),
                (pick(&input, expected), bad),
                "{started:?}"
            );
        }
    }

    #[test]
    fn completed_window_asks_about_history() {
        let input = json!([
            {"service_id": "active"},
            {"service_id": "active-null", "completed": null},
            {"service_id": "early", "completed": {"timestamp": "2020-01-01T00:00:00"}},
            {"service_id": "late", "completed": {"timestamp": "2020-03-01T00:00:00.000+00:00"}},
            {"service_id": "bad", "completed": {"timestamp": "2020-02-30T00:00:00Z"}},
            {"service_id": "no-timestamp", "completed": {}},
            {"service_id": "not-object", "completed": true},
        ]);
        let feb = window(Some("2020-02-01T00:00:00Z"), None);
        let cases: [(Lifecycle, Window, &[&str], usize); 5] = [
            (
                Lifecycle::All,
                Window::default(),
                &[
                    "active",
                    "active-null",
                    "early",
                    "late",
                    "bad",
                    "no-timestamp",
                    "not-object",
                ],
                0,
            ),
            (Lifecycle::All, feb, &["late"], 3),
            (
                Lifecycle::All,
                window(None, Some("2020-03-01T00:00:00Z")),
                &["early"],
                3,
            ),
            (Lifecycle::Completed, feb, &["late"], 3),
            (
                Lifecycle::Completed,
                Window::default(),
                &["early", "late", "bad", "no-timestamp", "not-object"],
                0,
            ),
        ];
        for (lifecycle, completed, expected, bad) in cases {
            let q = ServiceQuery {
                lifecycle,
                completed,
                ..query()
            };
            assert_eq!(
                run(&input, &q, &TypeMap::default()),
                (pick(&input, expected), bad),
                "{lifecycle:?} {completed:?}"
            );
        }
    }

    #[test]
    fn bad_timestamp_is_reported_only_when_it_decided() {
        let input = json!([
            // Outside the completed window: dropped for that, not reported.
            {"service_id": "a", "started": {"timestamp": "junk"},
             "completed": {"timestamp": "2019-01-01T00:00:00Z"}},
            // Fails the anonymous rule first.
            {"service_id": "b", "customer_id": "C", "started": {"timestamp": "junk"},
             "completed": {"timestamp": "2020-06-01T00:00:00Z"}},
            // Would be kept but for the started timestamp.
            {"service_id": "c", "started": {"timestamp": "junk"},
             "completed": {"timestamp": "2020-06-01T00:00:00Z"}},
            {"service_id": "d", "started": {"timestamp": "2020-01-01T00:00:00Z"},
             "completed": {"timestamp": "2020-06-01T00:00:00Z"}},
        ]);
        let q = ServiceQuery {
            anonymous: true,
            started: window(Some("2000-01-01T00:00:00Z"), None),
            completed: window(Some("2020-01-01T00:00:00Z"), None),
            ..query()
        };
        assert_eq!(
            run(&input, &q, &TypeMap::default()),
            (pick(&input, &["d"]), 1)
        );
        let list = services(input.clone());
        let verdicts: Vec<Match> = list
            .iter()
            .map(|s| matches(s, &q, &TypeMap::default()))
            .collect();
        assert_eq!(
            verdicts,
            [
                Match::Drop,
                Match::Drop,
                Match::DropBadTimestamp,
                Match::Keep
            ]
        );
        assert!(verdicts[3].is_keep());
    }

    #[test]
    fn service_types_with_and_without_a_map() {
        let input = json!([
            {"service_id": "n8", "service_type": 8},
            {"service_id": "s8", "service_type": "8"},
            {"service_id": "name8", "service_type": "DeliveringService"},
            {"service_id": "f8", "service_type": 8.0},
            {"service_id": "n5", "service_type": 5},
            {"service_id": "name5", "service_type": "Offering"},
            {"service_id": "unknown", "service_type": "Unmapped"},
            {"service_id": "null", "service_type": null},
            {"service_id": "absent"},
            {"service_id": "object", "service_type": {"id": 8}},
        ]);
        let map = TypeMap::new([
            ("DeliveringService".to_owned(), 8),
            ("Offering".to_owned(), 5),
        ]);
        let none = TypeMap::default();
        let alias = TypeMap::new([
            ("DeliveringService".to_owned(), 8),
            ("Unmapped".to_owned(), 8),
        ]);
        let id = ServiceType::Id;
        let name = |n: &str| ServiceType::Name(n.to_owned());
        let cases: Vec<(Vec<ServiceType>, &TypeMap, &[&str])> = vec![
            (
                vec![],
                &map,
                &[
                    "n8", "s8", "name8", "f8", "n5", "name5", "unknown", "null", "absent", "object",
                ],
            ),
            (vec![id(8)], &map, &["n8", "s8", "name8", "f8"]),
            (
                vec![name("DeliveringService")],
                &map,
                &["n8", "s8", "name8", "f8"],
            ),
            (
                vec![id(5), name("DeliveringService")],
                &map,
                &["n8", "s8", "name8", "f8", "n5", "name5"],
            ),
            (vec![id(3)], &map, &[]),
            (vec![id(8)], &alias, &["n8", "s8", "name8", "f8", "unknown"]),
            (vec![id(8)], &none, &["n8", "s8", "f8"]),
            (vec![name("DeliveringService")], &none, &["name8"]),
            (vec![name("Unmapped"), id(5)], &none, &["n5", "unknown"]),
        ];
        for (service_types, types, expected) in cases {
            let q = ServiceQuery {
                service_types: service_types.clone(),
                ..query()
            };
            assert_eq!(
                run(&input, &q, types),
                (pick(&input, expected), 0),
                "{service_types:?} map={}",
                !types.is_empty()
            );
        }
    }

    fn filter(key: &str, value: Value) -> ExtensionFilter {
        ExtensionFilter {
            key: key.to_owned(),
            raw: value.to_string(),
            value,
        }
    }

    #[test]
    fn extension_filters() {
        let input = json!([
            {"service_id": "int", "score": 85, "tier": "gold"},
            {"service_id": "float", "score": 85.0},
            {"service_id": "str", "score": "85", "tier": ["silver", "gold"]},
            {"service_id": "str-float", "score": "8.5e1"},
            {"service_id": "str-space", "score": " 85"},
            {"service_id": "array", "score": [1, "85"], "tier": "silver"},
            {"service_id": "other", "score": 86, "tier": "Gold"},
            {"service_id": "missing"},
            {"service_id": "null", "score": null},
            {"service_id": "big", "score": 9007199254740993_u64},
            {"service_id": "big-neighbour", "score": 9007199254740992_u64},
            {"service_id": "max", "score": u64::MAX},
            {"service_id": "obj", "score": {"a": [1, 2.0]}},
        ]);
        let cases: Vec<(Vec<ExtensionFilter>, &[&str])> = vec![
            (
                vec![filter("score", json!(85))],
                &["int", "float", "str", "str-float", "array"],
            ),
            (
                vec![filter("score", json!(85.0))],
                &["int", "float", "str", "str-float", "array"],
            ),
            (vec![filter("score", json!("85"))], &["str", "array"]),
            (vec![filter("tier", json!("gold"))], &["int", "str"]),
            (
                vec![filter("score", json!(85)), filter("tier", json!("gold"))],
                &["int", "str"],
            ),
            (
                vec![filter("score", json!(85)), filter("tier", json!("silver"))],
                &["str", "array"],
            ),
            (vec![filter("score", json!(null))], &["null"]),
            (vec![filter("score", json!(9007199254740993_u64))], &["big"]),
            (vec![filter("score", json!(u64::MAX))], &["max"]),
            (vec![filter("score", json!({"a": [1.0, 2]}))], &["obj"]),
            (vec![filter("nope", json!(1))], &[]),
        ];
        for (filters, expected) in cases {
            let q = ServiceQuery {
                filters: filters.clone(),
                ..query()
            };
            assert_eq!(
                run(&input, &q, &TypeMap::default()),
                (pick(&input, expected), 0),
                "{filters:?}"
            );
        }
    }

    #[test]
    fn trims_to_exactly_the_requested_sections() {
        let full = json!({
            "service_id": "full",
            "active_states": [{"state_id": 1, "active_tasks": [{"task_id": 1}], "x": 1,
                               "completed_tasks": []}],
            "completed_states": [{"state_id": 2, "completed_tasks": [{"task_id": 2}]}],
            "active_tasks": [{"task_id": 3}],
            "completed_tasks": [{"task_id": 4}],
            "tail": true,
        });
        let states = [
            json!([{"state_id": 1, "x": 1}]),
            json!([{"state_id": 2}]),
            json!([{"task_id": 3}]),
            json!([{"task_id": 4}]),
        ];
        for bits in 0u8..16 {
            let flags = [bits & 1 != 0, bits & 2 != 0, bits & 4 != 0, bits & 8 != 0];
            let include = Include {
                active_states: flags[0],
                completed_states: flags[1],
                active_tasks: flags[2],
                completed_tasks: flags[3],
            };
            let q = ServiceQuery { include, ..query() };
            let input = json!([full, {"service_id": "bare", "active_states": null}]);

            let mut expected_full = Map::new();
            expected_full.insert("service_id".into(), json!("full"));
            let mut expected_bare = Map::new();
            expected_bare.insert("service_id".into(), json!("bare"));
            for (i, section) in SECTIONS.iter().enumerate() {
                if flags[i] {
                    expected_full.insert((*section).into(), states[i].clone());
                    expected_bare.insert((*section).into(), json!([]));
                }
            }
            expected_full.insert("tail".into(), json!(true));
            let expected = json!([expected_full, expected_bare]).to_string();
            assert_eq!(
                run(&input, &q, &TypeMap::default()),
                (expected, 0),
                "{include:?}"
            );
        }
    }

    #[test]
    fn passes_everything_else_through_byte_for_byte() {
        let body = concat!(
            r#"[{"zeta":1,"service_id":9007199254740993,"alpha":18446744073709551615,"#,
            r#""neg":-9223372036854775808,"f":1.5,"e":1e300,"s":"\u00e9\n","#,
            r#""nested":{"b":[true,null,{"z":0,"a":-0.25}],"a":{}},"customer_id":null,"#,
            r#""started":{"timestamp":"2020-01-01T00:00:00.000Z","x":9007199254740993}},"#,
            r#"{"service_id":"383-f9a62aec","completed":{"timestamp":"2020-01-02"}}]"#
        );
        let input = parse_services(body.as_bytes()).expect("valid body");
        let q = ServiceQuery {
            lifecycle: Lifecycle::Active,
            anonymous: true,
            started: window(Some("2019-01-01T00:00:00Z"), None),
            filters: vec![filter("service_id", json!(9007199254740993_u64))],
            ..query()
        };
        // serde_json re-spells escapes and floats canonically; values are unchanged.
        let respelled = |text: &str| text.replace("\\u00e9", "é").replace("1e300", "1e+300");
        let out = filter_services(input, &q, &TypeMap::default());
        let expected = body
            .split_once(",{\"service_id\":\"383")
            .expect("two services")
            .0;
        let expected = respelled(expected) + "]";
        assert_eq!(text(&out.services), expected);

        // And with no filter at all, the whole body round-trips.
        let all = filter_services(
            parse_services(body.as_bytes()).expect("valid"),
            &query(),
            &TypeMap::default(),
        );
        assert_eq!(text(&all.services), respelled(body));
    }

    #[test]
    fn refuses_bodies_that_are_not_service_arrays() {
        let cases: [(&[u8], &str); 9] = [
            (
                b"",
                "not JSON: EOF while parsing a value at line 1 column 0",
            ),
            (b"<html>", "not JSON: expected value at line 1 column 1"),
            (
                b"[{}] x",
                "not JSON: trailing characters at line 1 column 6",
            ),
            (
                b"[{\"a\":1}",
                "not JSON: EOF while parsing a list at line 1 column 8",
            ),
            (
                b"{\"service_id\":1}",
                "expected a JSON array of services, got an object",
            ),
            (b"null", "expected a JSON array of services, got null"),
            (b"\"[]\"", "expected a JSON array of services, got a string"),
            (
                b"[{}, 3]",
                "element 1 of the service array is a number, not an object",
            ),
            (
                b"[[]]",
                "element 0 of the service array is an array, not an object",
            ),
        ];
        for (body, message) in cases {
            assert_eq!(
                parse_services(body),
                Err(InvalidBody(message.to_owned())),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(parse_services(b" [ ] "), Ok(Vec::new()));

        assert_eq!(
            parse_service(b"[{}]"),
            Err(InvalidBody(
                "expected a JSON service object, got an array".into()
            ))
        );
        assert_eq!(
            parse_service(b"{\"a\""),
            Err(InvalidBody(
                "not JSON: EOF while parsing an object at line 1 column 4".into()
            ))
        );
        let one = parse_service(b"{\"b\":1,\"a\":2}").expect("object");
        assert_eq!(text(std::slice::from_ref(&one)), r#"[{"b":1,"a":2}]"#);
    }

    #[test]
    fn number_equality_is_exact() {
        let n = |v: Value| match v {
            Value::Number(n) => n,
            other => panic!("not a number: {other}"),
        };
        let cases = [
            (json!(85), json!(85.0), true),
            (json!(-1), json!(-1.0), true),
            (json!(0), json!(-0.0), true),
            (
                json!(9007199254740993_u64),
                json!(9007199254740992_u64),
                false,
            ),
            (
                json!(9007199254740993_u64),
                json!(9007199254740992.0),
                false,
            ),
            (json!(9007199254740992_u64), json!(9007199254740992.0), true),
            (json!(u64::MAX), json!(-1), false),
            (json!(i64::MIN), json!(i64::MIN), true),
            (json!(85), json!(85.5), false),
            (json!(0.1), json!(0.1), true),
        ];
        for (a, b, equal) in cases {
            assert_eq!(
                numbers_eq(&n(a.clone()), &n(b.clone())),
                equal,
                "{a} vs {b}"
            );
            assert_eq!(
                numbers_eq(&n(b.clone()), &n(a.clone())),
                equal,
                "{b} vs {a}"
            );
        }
    }

    // ---- properties -------------------------------------------------------------------

    /// Upstream timestamps with the instant each stands for, in microseconds after
    /// 2020-01-01T00:00:00Z (`None`: unreadable).
    const STAMPS: [(&str, Option<i64>); 7] = [
        ("2020-01-01T00:00:00.000Z", Some(0)),
        ("2020-01-01T00:00:00.0005Z", Some(500)),
        ("2020-01-01T00:00:01", Some(1_000_000)),
        ("2020-01-01 00:00:02.5", Some(2_500_000)),
        ("2020-01-01T02:00:03+02:00", Some(3_000_000)),
        ("2019-12-31T23:00:04-0100", Some(4_000_000)),
        ("not a date", None),
    ];
    const BOUNDS: [i64; 7] = [0, 500, 1_000, 1_000_000, 2_500_000, 3_000_001, 5_000_000];

    fn micros(m: i64) -> DateTime<Utc> {
        at("2020-01-01T00:00:00Z") + chrono::Duration::microseconds(m)
    }

    /// An event: absent, null, without a timestamp, a numeric timestamp, or one of STAMPS.
    fn event() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            Just(Some(json!({"session_id": "s"}))),
            Just(Some(json!({"timestamp": 1577836800000_i64}))),
            (0..STAMPS.len()).prop_map(|i| Some(json!({"timestamp": STAMPS[i].0, "x": 1}))),
        ]
    }

    fn pool(values: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
        prop_oneof![Just(None), proptest::sample::select(values).prop_map(Some)]
    }

    fn service() -> impl Strategy<Value = Service> {
        (
            pool(vec![json!(null), json!("C1")]),
            pool(vec![
                json!(null),
                json!(8),
                json!("8"),
                json!("DeliveringService"),
                json!(5),
                json!("Offering"),
                json!("Other"),
                json!(8.0),
            ]),
            pool(vec![
                json!(null),
                json!(85),
                json!("85"),
                json!(85.0),
                json!("gold"),
                json!([1, 85]),
                json!(["gold"]),
                json!(9007199254740993_u64),
            ]),
            pool(vec![
                json!("gold"),
                json!(["gold", "x"]),
                json!(1),
                json!("1"),
            ]),
            (event(), event()),
            proptest::collection::vec(any::<bool>(), 4),
        )
            .prop_map(
                |(customer, kind, score, tier, (started, completed), sections)| {
                    let mut s = Map::new();
                    s.insert("first".into(), json!(0));
                    let fields = [
                        ("customer_id", customer),
                        ("service_type", kind),
                        ("score", score),
                        ("tier", tier),
                        ("started", started),
                        ("completed", completed),
                    ];
                    for (key, value) in fields {
                        if let Some(value) = value {
                            s.insert(key.into(), value);
                        }
                    }
                    for (i, present) in sections.into_iter().enumerate() {
                        if present {
                            s.insert(
                                SECTIONS[i].into(),
                                json!([{"id": i, "active_tasks": [], "completed_tasks": [1]}]),
                            );
                        }
                    }
                    s
                },
            )
    }

    fn window_strategy() -> impl Strategy<Value = Window> {
        let bound = proptest::option::of(proptest::sample::select(BOUNDS.to_vec()));
        (bound.clone(), bound).prop_map(|(from, to)| Window {
            from: from.map(micros),
            to: to.map(micros),
        })
    }

    fn query_strategy() -> impl Strategy<Value = ServiceQuery> {
        let types = vec![
            ServiceType::Id(8),
            ServiceType::Id(5),
            ServiceType::Id(3),
            ServiceType::Name("DeliveringService".into()),
            ServiceType::Name("Offering".into()),
            ServiceType::Name("Other".into()),
        ];
        let filters = vec![
            filter("score", json!(85)),
            filter("score", json!("85")),
            filter("score", json!("gold")),
            filter("tier", json!("gold")),
            filter("tier", json!(1)),
            filter("score", json!(9007199254740993_u64)),
        ];
        (
            proptest::sample::select(vec![
                Lifecycle::All,
                Lifecycle::Active,
                Lifecycle::Completed,
            ]),
            any::<bool>(),
            window_strategy(),
            window_strategy(),
            proptest::sample::subsequence(types, 0..=2),
            proptest::collection::vec(any::<bool>(), 4),
            proptest::sample::subsequence(filters, 0..=2),
        )
            .prop_map(
                |(lifecycle, anonymous, started, completed, service_types, inc, filters)| {
                    ServiceQuery {
                        lifecycle,
                        anonymous,
                        started,
                        completed,
                        service_types,
                        include: Include {
                            active_states: inc[0],
                            completed_states: inc[1],
                            active_tasks: inc[2],
                            completed_tasks: inc[3],
                        },
                        extensions: Extensions::None,
                        filters,
                    }
                },
            )
    }

    fn type_map() -> impl Strategy<Value = TypeMap> {
        any::<bool>().prop_map(|mapped| {
            if mapped {
                TypeMap::new([
                    ("DeliveringService".to_owned(), 8),
                    ("Offering".to_owned(), 5),
                ])
            } else {
                TypeMap::default()
            }
        })
    }

    /// Independent oracle: `Some(true)` keep, `Some(false)` drop, `None` dropped for a bad
    /// timestamp. Written against the generators' small value pools.
    fn oracle(s: &Service, q: &ServiceQuery, types: &TypeMap) -> Option<bool> {
        let present = |key: &str| s.get(key).filter(|v| !v.is_null());
        if q.anonymous && present("customer_id").is_some() {
            return Some(false);
        }
        let done = present("completed").is_some();
        match q.lifecycle {
            Lifecycle::Active if done => return Some(false),
            Lifecycle::Completed if !done => return Some(false),
            _ => {}
        }
        if !done && (q.completed.from.is_some() || q.completed.to.is_some()) {
            return Some(false);
        }
        if !q.service_types.is_empty() {
            let spell = |id: i64| vec![json!(id), json!(id as f64), json!(id.to_string())];
            let mut accepted = Vec::new();
            for t in &q.service_types {
                match t {
                    ServiceType::Id(id) => {
                        accepted.extend(spell(*id));
                        accepted.extend(types.name_of(*id).map(|n| json!(n)));
                    }
                    ServiceType::Name(n) => {
                        accepted.push(json!(n));
                        accepted.extend(types.id_of(n).into_iter().flat_map(spell));
                    }
                }
            }
            if !s.get("service_type").is_some_and(|t| accepted.contains(t)) {
                return Some(false);
            }
        }
        let scalar = |want: &Value, have: &Value| match (want, have) {
            // The pools hold no negative numbers: u64 is exact for integers, f64 for the rest.
            (Value::Number(w), Value::Number(h)) => match (w.as_u64(), h.as_u64()) {
                (Some(w), Some(h)) => w == h,
                _ => w.as_f64() == h.as_f64(),
            },
            (Value::Number(w), Value::String(h)) => h.parse::<f64>().ok() == w.as_f64(),
            _ => want == have,
        };
        for f in &q.filters {
            let ok = match s.get(&f.key) {
                None => false,
                Some(Value::Array(items)) => items.iter().any(|i| scalar(&f.value, i)),
                Some(have) => scalar(&f.value, have),
            };
            if !ok {
                return Some(false);
            }
        }
        let instant = |event: Option<&Value>| {
            let text = event?.get("timestamp")?.as_str()?;
            STAMPS.iter().find(|(t, _)| *t == text)?.1.map(micros)
        };
        let mut bad = false;
        for (w, event) in [
            (&q.started, s.get("started")),
            (&q.completed, present("completed")),
        ] {
            if w.from.is_none() && w.to.is_none() {
                continue;
            }
            match instant(event) {
                None => bad = true,
                Some(t) => {
                    if w.from.is_some_and(|f| t < f) || w.to.is_some_and(|to| t >= to) {
                        return Some(false);
                    }
                }
            }
        }
        if bad {
            None
        } else {
            Some(true)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The output is exactly the services the oracle keeps, in input order, each trimmed,
        /// and the unparseable count is the oracle's.
        #[test]
        fn keeps_exactly_what_the_oracle_keeps(
            input in proptest::collection::vec(service(), 0..12),
            q in query_strategy(),
            types in type_map(),
        ) {
            let input: Vec<Service> = input
                .into_iter()
                .enumerate()
                .map(|(i, mut s)| { s.insert("_i".into(), json!(i)); s })
                .collect();
            let out = filter_services(input.clone(), &q, &types);

            let verdicts: Vec<Option<bool>> = input.iter().map(|s| oracle(s, &q, &types)).collect();
            let expected: Vec<usize> = (0..input.len()).filter(|&i| verdicts[i] == Some(true)).collect();
            let got: Vec<usize> = out.services.iter()
                .map(|s| s["_i"].as_u64().expect("index survives") as usize)
                .collect();
            prop_assert_eq!(&got, &expected);
            prop_assert_eq!(out.unparseable_timestamps, verdicts.iter().filter(|v| v.is_none()).count());

            let flags = [q.include.active_states, q.include.completed_states,
                q.include.active_tasks, q.include.completed_tasks];
            for (s, &i) in out.services.iter().zip(&got) {
                for (section, wanted) in SECTIONS.iter().zip(flags) {
                    prop_assert_eq!(s.contains_key(*section), wanted);
                }
                // Apart from the sections, the kept service is the input one, key order too.
                let strip = |m: &Service| {
                    let mut m = m.clone();
                    m.retain(|k, _| !SECTIONS.contains(&k.as_str()));
                    text(&[m])
                };
                prop_assert_eq!(strip(s), strip(&input[i]));
                let verdict = matches(&input[i], &q, &types);
                prop_assert_eq!(verdict, Match::Keep);
            }
        }

        /// Filtering is idempotent: a filtered answer already satisfies its query.
        #[test]
        fn filtering_twice_is_filtering_once(
            input in proptest::collection::vec(service(), 0..12),
            q in query_strategy(),
            types in type_map(),
        ) {
            let once = filter_services(input, &q, &types);
            let expected = text(&once.services);
            let twice = filter_services(once.services, &q, &types);
            prop_assert_eq!(text(&twice.services), expected);
            prop_assert_eq!(twice.unparseable_timestamps, 0);
        }

        /// The cache path: filtering the broad answer equals filtering upstream's raw answer.
        #[test]
        fn broad_then_narrow_equals_narrow(
            input in proptest::collection::vec(service(), 0..12),
            q in query_strategy(),
            types in type_map(),
        ) {
            let direct = filter_services(input.clone(), &q, &types);
            let broad = filter_services(input, &q.broad(), &types);
            let narrowed = filter_services(broad.services, &q, &types);
            prop_assert_eq!(text(&narrowed.services), text(&direct.services));
        }
    }
}
