//! Unit and property tests of the post-filter.

use super::*;
use crate::query::{date, ExtensionFilter, Extensions, Lifecycle, ServiceType, Window};
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
        Value::Number(n) => crate::query::rules::Num::of(&n),
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
