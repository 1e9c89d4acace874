//! Generators for the differential test: services, their spellings, queries and type maps.

use super::*;

// ---- the differential property test ----------------------------------------------------

/// A JSON value with the spelling choices the writer makes left open.
#[derive(Clone, Debug)]
pub(super) enum J {
    Null,
    Bool(bool),
    /// As upstream spells it.
    Num(&'static str),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
    /// `levels` nested arrays around a number.
    Deep(usize),
}

pub(super) const NUMBERS: [&str; 16] = [
    "0",
    "-0",
    "85",
    "85.0",
    "8.5e1",
    "850E-1",
    "8.5E+1",
    "1e400",
    "9007199254740993",
    "-12.50",
    "18446744073709551616",
    "8",
    "8.0",
    "8e0",
    "0.1",
    "5",
];

/// Characters that exercise every escape rule.
pub(super) const CHARS: [char; 15] = [
    '\u{1f}', 'a', 'é', '😀', '"', '\\', '/', '\u{1}', '\n', '\t', '\u{7f}', '\u{2028}', '\u{8}',
    ' ', '8',
];

/// Upstream timestamps; the filter tests in filter.rs pin their meaning.
pub(super) const STAMPS: [&str; 7] = [
    "2020-01-01T00:00:00.000Z",
    "2020-01-01T00:00:00.0005Z",
    "2020-01-01T00:00:01",
    "2020-01-01 00:00:02.5",
    "2020-01-01T02:00:03+02:00",
    "2019-12-31T23:00:04-0100",
    "not a date",
];
pub(super) const BOUNDS: [i64; 7] = [0, 500, 1_000, 1_000_000, 2_500_000, 3_000_001, 5_000_000];

pub(super) fn micros(m: i64) -> DateTime<Utc> {
    date::parse_param("2020-01-01T00:00:00Z").expect("valid") + chrono::Duration::microseconds(m)
}

pub(super) fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(CHARS.to_vec()), 0..5)
        .prop_map(|chars| chars.into_iter().collect())
}

pub(super) fn scalar() -> impl Strategy<Value = J> {
    prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        proptest::sample::select(NUMBERS.to_vec()).prop_map(J::Num),
        text().prop_map(J::Str),
    ]
}

/// Attached data: anything, sometimes deep (below serde_json's limit of 128, so that the
/// oracle can answer), sometimes with a duplicate key.
pub(super) fn attached() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![4 => scalar(), 1 => (1usize..100).prop_map(J::Deep)];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            proptest::collection::vec(("[a-c]{1,2}", inner), 0..4).prop_map(J::Obj),
        ]
    })
}

pub(super) fn event() -> impl Strategy<Value = Option<J>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(J::Null)),
        1 => Just(Some(J::Obj(vec![(
            "session_id".into(),
            J::Str("s".into())
        )]))),
        1 => Just(Some(J::Obj(vec![(
            "timestamp".into(),
            J::Num("1577836800000")
        )]))),
        1 => Just(Some(J::Str("2020-01-01T00:00:00Z".into()))),
        6 => (0..STAMPS.len(), attached()).prop_map(|(i, x)| Some(J::Obj(vec![
            ("timestamp".into(), J::Str(STAMPS[i].into())),
            ("x".into(), x),
        ]))),
    ]
}

pub(super) fn item(nested: bool) -> impl Strategy<Value = J> {
    (any::<bool>(), any::<bool>(), attached()).prop_map(move |(a, c, x)| {
        let mut members = vec![("id".to_owned(), J::Num("1")), ("x".to_owned(), x)];
        if nested && a {
            members.push(("active_tasks".into(), J::Arr(vec![J::Num("1")])));
        }
        if nested && c {
            members.insert(1, ("completed_tasks".into(), J::Arr(Vec::new())));
        }
        J::Obj(members)
    })
}

pub(super) fn section(state: bool) -> impl Strategy<Value = Option<J>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(J::Null)),
        1 => Just(Some(J::Str("x".into()))),
        4 => proptest::collection::vec(prop_oneof![4 => item(state), 1 => scalar()], 0..3)
            .prop_map(|items| Some(J::Arr(items))),
    ]
}

pub(super) fn pool(values: Vec<J>) -> impl Strategy<Value = Option<J>> {
    prop_oneof![Just(None), proptest::sample::select(values).prop_map(Some)]
}

pub(super) fn service() -> impl Strategy<Value = J> {
    let num = |n| J::Num(n);
    let s = |t: &str| J::Str(t.into());
    (
        (
            pool(vec![J::Null, s("C1")]),
            pool(vec![
                J::Null,
                num("8"),
                s("8"),
                s("DeliveringService"),
                num("5"),
                s("Offering"),
                s("Other"),
                num("8.0"),
                num("8e0"),
                s("\\u0038"),
            ]),
            pool(vec![
                J::Null,
                num("85"),
                s("85"),
                num("85.0"),
                num("8.5E1"),
                s("gold"),
                J::Arr(vec![num("1"), num("85")]),
                J::Arr(vec![s("gold")]),
                num("9007199254740993"),
                J::Obj(vec![("a".into(), num("1"))]),
                J::Arr(vec![J::Arr(vec![num("1")])]),
            ]),
            pool(vec![
                s("gold"),
                J::Arr(vec![s("gold"), s("x")]),
                num("1"),
                s("1"),
            ]),
            (event(), event()),
        ),
        (section(true), section(true), section(false), section(false)),
        attached(),
        any::<u8>(),
    )
        .prop_map(
            |((customer, kind, score, tier, (started, completed)), sections, extra, dup)| {
                let (a, b, c, d) = sections;
                let top = (customer, kind, score, tier, started, completed);
                let sections = [
                    ("active_states", a),
                    ("completed_states", b),
                    ("active_tasks", c),
                    ("completed_tasks", d),
                    ("extra", Some(extra)),
                ];
                let mut members: Vec<(String, J)> = vec![("service_id".into(), J::Num("1"))];
                members.extend(
                    crate::query::test_support::service_fields(top)
                        .into_iter()
                        .chain(sections.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))))
                        .map(|(k, v)| (k.to_owned(), v)),
                );
                // Now and then a duplicate key, which the oracle resolves its own way.
                if dup < 8 && members.len() > 2 {
                    let (k, _) = members[1 + dup as usize % (members.len() - 1)].clone();
                    members.push((k, J::Null));
                }
                J::Obj(members)
            },
        )
        .prop_shuffle_members()
}

/// Shuffles an object's members (the service's key order is upstream's business).
pub(super) trait ShuffleMembers {
    fn prop_shuffle_members(self) -> BoxedStrategy<J>;
}

impl<S: Strategy<Value = J> + 'static> ShuffleMembers for S {
    fn prop_shuffle_members(self) -> BoxedStrategy<J> {
        self.prop_flat_map(|j| match j {
            J::Obj(members) => Just(members).prop_shuffle().prop_map(J::Obj).boxed(),
            other => Just(other).boxed(),
        })
        .boxed()
    }
}

pub(super) fn roll(rng: &mut u64, n: u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng % n
}

/// Writes `j` with whitespace and escapes chosen by `rng`.
pub(super) fn write(j: &J, rng: &mut u64, out: &mut String) {
    write_styled(j, rng, false, out);
}

/// Writes `j` as upstreams usually do: no whitespace, and every character that would need
/// an escape replaced by a plain one, so that the body is on the tape's fast path.
pub(super) fn write_compact(j: &J, out: &mut String) {
    write_styled(j, &mut 1, true, out);
}

pub(super) fn write_styled(j: &J, rng: &mut u64, compact: bool, out: &mut String) {
    let ws = |r: u64, out: &mut String| {
        if r < 3 && !compact {
            out.push_str([" ", "\n\t", "\r\n  "][r as usize]);
        }
    };
    ws(roll(rng, 8), out);
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) => out.push_str(n),
        J::Str(s) if s.starts_with("\\u") => {
            // Already an escape sequence (a service type spelt `"\u0038"`).
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        J::Str(s) if compact => write_plain(s, out),
        J::Str(s) => write_string(s, roll(rng, 4) == 0, rng, out),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_styled(item, rng, compact, out);
            }
            out.push(']');
        }
        J::Obj(members) => {
            out.push('{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let r = roll(rng, 8);
                ws(r, out);
                if compact {
                    write_plain(k, out);
                } else {
                    write_string(k, r == 7, rng, out);
                }
                ws(roll(rng, 8), out);
                out.push(':');
                write_styled(v, rng, compact, out);
            }
            out.push('}');
        }
        J::Deep(levels) => out.push_str(&deep(*levels)),
    }
    ws(roll(rng, 8), out);
}

/// A string with the characters that need an escape replaced.
pub(super) fn write_plain(s: &str, out: &mut String) {
    out.push('"');
    out.extend(s.chars().map(|c| match c {
        '"' => 'q',
        '\\' => 'b',
        c if (c as u32) < 0x20 => 'c',
        c => c,
    }));
    out.push('"');
}

pub(super) fn write_string(s: &str, escape_all: bool, rng: &mut u64, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        *rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pick = (*rng >> 33) % 3;
        match c {
            '"' => out.push_str(if pick == 0 { "\\u0022" } else { "\\\"" }),
            '\\' => out.push_str(if pick == 0 { "\\u005C" } else { "\\\\" }),
            '/' if pick == 0 => out.push_str("\\/"),
            '\n' => out.push_str(if pick == 0 { "\\u000A" } else { "\\n" }),
            '\t' => out.push_str(if pick == 0 { "\\u0009" } else { "\\t" }),
            '\u{8}' => out.push_str(if pick == 0 { "\\u0008" } else { "\\b" }),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if escape_all || pick == 1 && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&if pick == 2 {
                        format!("\\u{unit:04X}")
                    } else {
                        format!("\\u{unit:04x}")
                    });
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

pub(super) fn window() -> impl Strategy<Value = Window> {
    // Mostly unbounded: a bounded window drops most services, which would leave little
    // output to compare.
    let bound = proptest::option::weighted(0.15, proptest::sample::select(BOUNDS.to_vec()));
    (bound.clone(), bound).prop_map(|(from, to)| Window {
        from: from.map(micros),
        to: to.map(micros),
    })
}

pub(super) use crate::query::test_support::filter as filter_of;

pub(super) fn query_strategy() -> impl Strategy<Value = ServiceQuery> {
    let types = crate::query::test_support::listed_types();
    let mut filters = crate::query::test_support::common_filters();
    filters.extend([
        filter_of("score", json!(null)),
        filter_of("score", json!([1])),
        filter_of("score", json!({"a": 1.0})),
        filter_of("tier", json!("gold")),
        filter_of("tier", json!(1)),
        filter_of("score", json!(9007199254740993_u64)),
        filter_of("extra", json!(true)),
        filter_of("missing", json!(1)),
    ]);
    (
        proptest::sample::select(vec![
            Lifecycle::All,
            Lifecycle::Active,
            Lifecycle::Completed,
        ]),
        any::<bool>(),
        window(),
        window(),
        prop_oneof![
            2 => Just(Vec::new()),
            1 => proptest::sample::subsequence(types, 1..=2),
        ],
        proptest::collection::vec(any::<bool>(), 4),
        prop_oneof![
            2 => Just(Vec::new()),
            1 => proptest::sample::subsequence(filters, 1..=2),
        ],
    )
        .prop_map(crate::query::test_support::query_of)
}

pub(super) fn type_map() -> impl Strategy<Value = TypeMap> {
    any::<bool>().prop_map(crate::query::test_support::type_map)
}
