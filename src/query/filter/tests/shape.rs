//! Service types, attached-data filters, trimming, pass-through, refusals and number equality.

use super::*;

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
