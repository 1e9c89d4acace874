//! A service's indexed facts as the query rules read them ([`crate::query::rules`]), and
//! attached-data values compared from their bytes the way `filter.rs` compares them in
//! a tree; the differential tests in `tests/` hold the two readers together.

use std::borrow::Cow;

use serde_json::Value;

use super::index::{ServiceIndex, Tables};
use super::respell::decode_string;
use super::scan::Scanner;
use crate::query::rules::Match;
use crate::query::rules::{json_eq, number_shaped, numbers_eq, Facts, Num, Rules, TypeFact};
use crate::query::{ExtensionFilter, ServiceQuery, TypeMap};

/// The query's rules, ready to test the services of one indexed body.
pub(super) struct Matcher<'q>(Rules<'q>);

impl<'q> Matcher<'q> {
    pub fn new(q: &'q ServiceQuery, types: &'q TypeMap) -> Matcher<'q> {
        Matcher(Rules::new(q, types))
    }

    pub fn check(&self, body: &[u8], tables: &Tables, service: &ServiceIndex) -> Match {
        self.0.check(&Indexed {
            body,
            tables,
            service,
        })
    }
}

/// One service of an indexed body.
struct Indexed<'a> {
    body: &'a [u8],
    tables: &'a Tables,
    service: &'a ServiceIndex,
}

impl Facts for Indexed<'_> {
    fn has_customer(&self) -> bool {
        self.service.customer
    }

    fn is_completed(&self) -> bool {
        self.service.completed
    }

    fn service_type(&self) -> TypeFact<'_> {
        match self.service.service_type.map(|span| span.of(self.body)) {
            Some(text @ [b'"', ..]) => TypeFact::Text(decode_string(text)),
            Some(text @ [b'-' | b'0'..=b'9', ..]) => TypeFact::Number(Num::text(text)),
            _ => TypeFact::Other,
        }
    }

    fn has_extension(&self, filter: &ExtensionFilter) -> bool {
        let (from, to) = self.service.members;
        self.tables.members[from as usize..to as usize]
            .iter()
            .find(|m| m.key.inner(self.body) == filter.key.as_bytes())
            .is_some_and(|m| extension_matches(&filter.value, m.value.of(self.body)))
    }

    fn started_at(&self) -> Option<Cow<'_, str>> {
        Some(decode_string(self.service.started_at?.of(self.body)))
    }

    fn completed_at(&self) -> Option<Cow<'_, str>> {
        Some(decode_string(self.service.completed_at?.of(self.body)))
    }
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

/// A string that is exactly a JSON number.
fn number_text(s: &str) -> Option<Num> {
    if !number_shaped(s) {
        return None;
    }
    let mut scan = Scanner::new(s.as_bytes());
    (scan.number().is_ok() && scan.at_end()).then(|| Num::text(s.as_bytes()))
}
