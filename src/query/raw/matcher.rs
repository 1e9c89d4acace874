//! The query criteria applied to a service's indexed facts. Each rule mirrors one in
//! `filter.rs` (`Matcher::check`, `type_listed`, `extension_matches`, `numbers_eq`), read
//! from bytes; the differential test in `tests.rs` holds the two together.

use serde_json::{Number, Value};

use super::index::{ServiceIndex, Tables};
use super::scan::{decode_string, Scanner, Span};
use crate::query::filter::Match;
use crate::query::{date, Lifecycle, ServiceQuery, TypeMap, Window};

/// A query with its service types resolved through the map, ready to test many services.
pub(super) struct Matcher<'q> {
    q: &'q ServiceQuery,
    types: &'q TypeMap,
    type_ids: Vec<i64>,
    type_names: Vec<&'q str>,
}

impl<'q> Matcher<'q> {
    pub fn new(q: &'q ServiceQuery, types: &'q TypeMap) -> Matcher<'q> {
        let (type_ids, type_names) = crate::query::listed_types(q, types);
        Matcher {
            q,
            types,
            type_ids,
            type_names,
        }
    }

    pub fn check(&self, body: &[u8], tables: &Tables, service: &ServiceIndex) -> Match {
        let q = self.q;
        if q.anonymous && service.customer {
            return Match::Drop;
        }
        let completed = service.completed;
        let lifecycle_ok = match q.lifecycle {
            Lifecycle::All => true,
            Lifecycle::Active => !completed,
            Lifecycle::Completed => completed,
        };
        if !lifecycle_ok || (!completed && !q.completed.is_unbounded()) {
            return Match::Drop;
        }
        if !self.type_listed(service.service_type.map(|span| span.of(body))) {
            return Match::Drop;
        }
        let (from, to) = service.members;
        let members = &tables.members[from as usize..to as usize];
        let extensions_ok = q.filters.iter().all(|f| {
            members
                .iter()
                .find(|m| m.key.inner(body) == f.key.as_bytes())
                .is_some_and(|m| extension_matches(&f.value, m.value.of(body)))
        });
        if !extensions_ok {
            return Match::Drop;
        }
        let completed_at = service.completed_at.filter(|_| completed);
        match (
            in_window(&q.started, body, service.started_at),
            in_window(&q.completed, body, completed_at),
        ) {
            (Some(false), _) | (_, Some(false)) => Match::Drop,
            (None, _) | (_, None) => Match::DropBadTimestamp,
            (Some(true), Some(true)) => Match::Keep,
        }
    }

    fn type_listed(&self, service_type: Option<&[u8]>) -> bool {
        if self.q.service_types.is_empty() {
            return true;
        }
        match service_type {
            Some(text @ [b'"', ..]) => {
                let s = decode_string(text);
                let id = type_id_text(&s).or_else(|| self.types.id_of(&s));
                self.type_names.contains(&&*s) || id.is_some_and(|id| self.type_ids.contains(&id))
            }
            Some(text @ [b'-' | b'0'..=b'9', ..]) => {
                let n = Num::text(text);
                self.type_ids
                    .iter()
                    .any(|&id| number_eq_int(&n, i128::from(id)))
            }
            _ => false,
        }
    }
}

fn in_window(window: &Window, body: &[u8], at: Option<Span>) -> Option<bool> {
    if window.is_unbounded() {
        return Some(true);
    }
    let text = decode_string(at?.of(body));
    let t = date::parse_lenient(&text)?;
    Some(window.contains(t))
}

fn type_id_text(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn extension_matches(want: &Value, have: &[u8]) -> bool {
    value_matches(want, have) || (have.first() == Some(&b'[') && elements(have, want))
}

/// Does any element of the (validated) array `have` match `want`?
fn elements(have: &[u8], want: &Value) -> bool {
    let mut s = Scanner::new(have);
    s.enter();
    let mut first = true;
    while let Ok(true) = s.next_element(&mut first) {
        match s.skip_value() {
            Ok(item) if value_matches(want, item.of(have)) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

fn value_matches(want: &Value, have: &[u8]) -> bool {
    match (want, have.first()) {
        (Value::Number(w), Some(b'"')) => {
            number_text(&decode_string(have)).is_some_and(|h| numbers_eq(&Num::of(w), &h))
        }
        _ => json_eq_bytes(want, have),
    }
}

fn json_eq_bytes(want: &Value, have: &[u8]) -> bool {
    match (want, have.first()) {
        (Value::Null, _) => have == b"null",
        (Value::Bool(b), _) => have == if *b { &b"true"[..] } else { b"false" },
        (Value::Number(w), Some(b'-' | b'0'..=b'9')) => numbers_eq(&Num::of(w), &Num::text(have)),
        (Value::String(w), Some(b'"')) => decode_string(have) == w.as_str(),
        (Value::Array(_), Some(b'[')) | (Value::Object(_), Some(b'{')) => {
            // Filter values are small; a value too deep for serde_json cannot equal one.
            serde_json::from_slice::<Value>(have).is_ok_and(|have| json_eq(want, &have))
        }
        _ => false,
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
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

/// A number as serde_json's `as_i64`/`as_u64`/`as_f64` read it (with arbitrary_precision
/// they parse the text), without allocating.
struct Num {
    int: Option<i128>,
    float: Option<f64>,
}

impl Num {
    fn text(text: &[u8]) -> Num {
        let text = std::str::from_utf8(text).unwrap_or("");
        Num {
            int: text
                .parse::<i64>()
                .ok()
                .map(i128::from)
                .or_else(|| text.parse::<u64>().ok().map(i128::from)),
            float: text.parse::<f64>().ok().filter(|f| f.is_finite()),
        }
    }

    fn of(n: &Number) -> Num {
        Num {
            int: n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from)),
            float: n.as_f64(),
        }
    }
}

/// A string that is exactly a JSON number.
fn number_text(s: &str) -> Option<Num> {
    let b = s.as_bytes();
    let starts = matches!(b.first(), Some(b'-' | b'0'..=b'9'));
    let ends = b.last().is_some_and(u8::is_ascii_digit);
    if !(starts && ends) {
        return None;
    }
    let mut scan = Scanner::new(b);
    (scan.number().is_ok() && scan.at_end()).then(|| Num::text(b))
}

fn numbers_eq(a: &Num, b: &Num) -> bool {
    match (a.int, b.int) {
        (Some(x), Some(y)) => x == y,
        (Some(x), None) => number_eq_int(b, x),
        (None, Some(y)) => number_eq_int(a, y),
        (None, None) => a.float == b.float,
    }
}

fn number_eq_int(n: &Num, i: i128) -> bool {
    if let Some(x) = n.int {
        return x == i;
    }
    const MIN: f64 = -9_223_372_036_854_775_808.0;
    const MAX: f64 = 18_446_744_073_709_551_616.0;
    n.float
        .is_some_and(|f| f.fract() == 0.0 && (MIN..=MAX).contains(&f) && f as i128 == i)
}
