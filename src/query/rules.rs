//! What a Query Services query keeps, written once. Both post-filters read a service
//! their own way — [`super::filter`] from a `serde_json` tree, `raw::matcher` from the
//! spans of an indexed body — and hand the facts to [`Rules::check`]: anonymity,
//! lifecycle, service type, attached-data filters and date windows, in that order.
//! The number rules (a 64-bit integer is never compared through `f64`) live here too.
//! The differential tests in `raw/tests` hold the two readers together.

use std::borrow::Cow;

use serde_json::{Number, Value};

use super::{date, ExtensionFilter, Lifecycle, ServiceQuery, ServiceType, TypeMap, Window};

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

/// A service's `service_type` as the rules compare it.
pub(crate) enum TypeFact<'a> {
    Number(Num),
    Text(Cow<'a, str>),
    /// Absent, null, or any other kind of value: never a listed type.
    Other,
}

/// What the rules read of one service, however it is held. Each method is called only
/// when the query needs its answer.
pub(crate) trait Facts {
    /// `customer_id` is present and not null.
    fn has_customer(&self) -> bool;
    /// `completed` is present and not null.
    fn is_completed(&self) -> bool;
    fn service_type(&self) -> TypeFact<'_>;
    /// The attached data under `filter.key` satisfies `filter.value`.
    fn has_extension(&self, filter: &ExtensionFilter) -> bool;
    /// The text of `started.timestamp`, if that is a string.
    fn started_at(&self) -> Option<Cow<'_, str>>;
    /// The text of `completed.timestamp`, if that is a string (asked only of a
    /// completed service).
    fn completed_at(&self) -> Option<Cow<'_, str>>;
}

/// A query with its service types resolved through the map, ready to test many services.
pub(crate) struct Rules<'q> {
    q: &'q ServiceQuery,
    types: &'q TypeMap,
    /// Every DB ID a listed type stands for (listed IDs, and the IDs of listed names).
    type_ids: Vec<i64>,
    /// Every name a listed type stands for (listed names, and the names of listed IDs).
    type_names: Vec<&'q str>,
}

impl<'q> Rules<'q> {
    pub fn new(q: &'q ServiceQuery, types: &'q TypeMap) -> Rules<'q> {
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
        Rules {
            q,
            types,
            type_ids,
            type_names,
        }
    }

    pub fn check(&self, service: &impl Facts) -> Match {
        let q = self.q;
        if q.anonymous && service.has_customer() {
            return Match::Drop;
        }
        let completed = service.is_completed();
        let lifecycle_ok = match q.lifecycle {
            Lifecycle::All => true,
            Lifecycle::Active => !completed,
            Lifecycle::Completed => completed,
        };
        // A bounded `completed` window asks about history: an active service has no
        // completion to place in it (and no data error either).
        if !lifecycle_ok || (!completed && !q.completed.is_unbounded()) {
            return Match::Drop;
        }
        if !q.service_types.is_empty() && !self.type_listed(service.service_type()) {
            return Match::Drop;
        }
        if !q.filters.iter().all(|f| service.has_extension(f)) {
            return Match::Drop;
        }
        // Dates last: a bad timestamp is only reported when it alone decided.
        let completed_at = || service.completed_at().filter(|_| completed);
        match (
            in_window(&q.started, || service.started_at()),
            in_window(&q.completed, completed_at),
        ) {
            (Some(false), _) | (_, Some(false)) => Match::Drop,
            (None, _) | (_, None) => Match::DropBadTimestamp,
            (Some(true), Some(true)) => Match::Keep,
        }
    }

    fn type_listed(&self, service_type: TypeFact<'_>) -> bool {
        match service_type {
            TypeFact::Number(n) => self
                .type_ids
                .iter()
                .any(|&id| number_eq_int(&n, i128::from(id))),
            TypeFact::Text(s) => {
                // Resolving the service's name too covers several names mapped to one ID.
                let id = type_id_text(&s).or_else(|| self.types.id_of(&s));
                self.type_names.contains(&&*s) || id.is_some_and(|id| self.type_ids.contains(&id))
            }
            TypeFact::Other => false,
        }
    }
}

/// `Some(contains)` for an event whose timestamp reads; `None` when a bounded window needs a
/// timestamp the event does not have in readable form. An unbounded window needs nothing.
fn in_window<'a>(
    window: &Window,
    timestamp: impl FnOnce() -> Option<Cow<'a, str>>,
) -> Option<bool> {
    if window.is_unbounded() {
        return Some(true);
    }
    let t = date::parse_lenient(&timestamp()?)?;
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

/// Could this string be exactly a JSON number? Its first and last bytes say no to
/// `" 85"`, `"+85"` and `"0x55"`; each reader then checks the whole grammar.
pub(crate) fn number_shaped(s: &str) -> bool {
    let b = s.as_bytes();
    let starts = matches!(b.first(), Some(b'-' | b'0'..=b'9'));
    let ends = b.last().is_some_and(u8::is_ascii_digit);
    starts && ends
}

/// A number as serde_json's `as_i64`/`as_u64`/`as_f64` read it (with arbitrary_precision
/// they parse the text). The float is read only for a number that is no 64-bit integer,
/// the only case that compares it.
pub(crate) struct Num {
    int: Option<i128>,
    float: Option<f64>,
}

impl Num {
    /// A number's JSON text, as written in a body.
    pub fn text(text: &[u8]) -> Num {
        let text = std::str::from_utf8(text).unwrap_or("");
        let int = text
            .parse::<i64>()
            .ok()
            .map(i128::from)
            .or_else(|| text.parse::<u64>().ok().map(i128::from));
        Num {
            int,
            float: match int {
                Some(_) => None,
                None => text.parse::<f64>().ok().filter(|f| f.is_finite()),
            },
        }
    }

    pub fn of(n: &Number) -> Num {
        let int = n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from));
        Num {
            int,
            float: match int {
                Some(_) => None,
                None => n.as_f64(),
            },
        }
    }
}

/// JSON equality with numbers compared by value ([`numbers_eq`]).
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => numbers_eq(&Num::of(x), &Num::of(y)),
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
pub(crate) fn numbers_eq(a: &Num, b: &Num) -> bool {
    match (a.int, b.int) {
        (Some(x), Some(y)) => x == y,
        (Some(x), None) => number_eq_int(b, x),
        (None, Some(y)) => number_eq_int(a, y),
        (None, None) => a.float == b.float,
    }
}

/// Is `n` (integer or float) exactly the integer `i`?
fn number_eq_int(n: &Num, i: i128) -> bool {
    if let Some(x) = n.int {
        return x == i;
    }
    // -2^63 ..= 2^64 covers every JSON integer serde_json holds exactly; within it an
    // integral f64 converts to i128 without loss.
    const MIN: f64 = -9_223_372_036_854_775_808.0;
    const MAX: f64 = 18_446_744_073_709_551_616.0;
    n.float
        .is_some_and(|f| f.fract() == 0.0 && (MIN..=MAX).contains(&f) && f as i128 == i)
}
