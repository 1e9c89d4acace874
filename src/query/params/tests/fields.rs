//! Parsed fields, limits, include flags and path parameters.

use super::*;

#[test]
fn every_reserved_field_is_refused_as_a_filter() {
    for field in RESERVED_FIELDS {
        let query = format!("{field}=1");
        let result = normalised(&query, ALL);
        if FLAG_PARAMS.contains(&field) {
            // The flags are parsed as flags and never reach the filter check.
            assert_eq!(result, Ok(format!("{field}=true")), "{field}");
        } else {
            assert_eq!(
                result,
                Err(format!(
                    "parameter '{field}': '1' cannot be used as an extension filter: \
                     '{field}' is a Service field"
                )),
                "{field}"
            );
        }
    }
}

#[test]
fn service_type_names_are_checked_against_a_configured_map() {
    let types = type_map();
    let limits = Limits::default();
    let ok = parse_with("service_types=Sales,Billing,2,7", ALL, &types, &limits)
        .expect("known names and any ID");
    // Names are kept as names, not translated to IDs.
    assert_eq!(
        ok.service_types,
        vec![
            ServiceType::Id(2),
            ServiceType::Id(7),
            ServiceType::Name("Billing".to_owned()),
            ServiceType::Name("Sales".to_owned()),
        ]
    );
    assert_eq!(ok.upstream_query(), "service_types=2,7,Billing,Sales");
    let refused = [
        (
            "service_types=1,Marketing",
            "parameter 'service_types': 'Marketing' is not a configured service type name",
        ),
        (
            "service_types=billing",
            "parameter 'service_types': 'billing' is not a configured service type name",
        ),
        (
            "service_types=99999999999999999999",
            "parameter 'service_types': '99999999999999999999' is not a configured service type name",
        ),
    ];
    for (query, message) in refused {
        assert_eq!(
            parse_with(query, ALL, &types, &limits).map_err(|e| e.to_string()),
            Err(message.to_owned()),
            "{query}"
        );
    }
}

#[test]
fn filter_values_are_json_literals_or_strings() {
    let cases = [
        ("score=85", json!(85), "85"),
        ("score=-1.5", json!(-1.5), "-1.5"),
        (
            "id=9007199254740993",
            json!(9_007_199_254_740_993u64),
            "9007199254740993",
        ),
        ("vip=true", json!(true), "true"),
        ("gone=null", json!(null), "null"),
        ("name=%22Bob%22", json!("Bob"), "\"Bob\""),
        (
            "obj=%7B%22a%22%3A%5B1%5D%7D",
            json!({"a": [1]}),
            "{\"a\":[1]}",
        ),
        ("padded=+85+", json!(85), " 85 "),
        ("word=Bob", json!("Bob"), "Bob"),
        ("list=1,2", json!("1,2"), "1,2"),
        // Beyond f64, still a JSON number: its text is kept (arbitrary_precision).
        (
            "huge=1e400",
            serde_json::from_str::<Value>("1e400").expect("a JSON number"),
            "1e400",
        ),
        ("bare", json!(""), ""),
        ("empty=", json!(""), ""),
    ];
    for (query, value, raw) in cases {
        let q = parse(query, ALL).expect("valid filter");
        let key = query.split(['=']).next().expect("split yields one piece");
        assert_eq!(
            q.filters,
            vec![ExtensionFilter {
                key: key.to_owned(),
                value,
                raw: raw.to_owned(),
            }],
            "{query}"
        );
    }
}

#[test]
fn parsed_fields_carry_exact_values() {
    let q = parse_service_query(
        Some(
            "started_from=2009-05-07T14:05:20.1579%2B02:00&completed_to=2010-01-01T00:00:00Z\
             &service_types=b,2&active_tasks&extensions=x&k=1&j=%22v%22",
        ),
        COMPLETED,
        true,
        &TypeMap::default(),
        &Limits::default(),
    )
    .expect("valid query");
    assert_eq!(
        q,
        ServiceQuery {
            lifecycle: COMPLETED,
            anonymous: true,
            started: Window {
                from: Some(utc("2009-05-07T12:05:20.157Z")),
                to: None,
            },
            completed: Window {
                from: None,
                to: Some(utc("2010-01-01T00:00:00Z")),
            },
            service_types: vec![ServiceType::Id(2), ServiceType::Name("b".to_owned())],
            include: Include {
                active_tasks: true,
                ..Include::default()
            },
            extensions: Extensions::Names(vec!["j".into(), "k".into(), "x".into()]),
            filters: vec![
                ExtensionFilter {
                    key: "k".into(),
                    value: json!(1),
                    raw: "1".into(),
                },
                ExtensionFilter {
                    key: "j".into(),
                    value: json!("v"),
                    raw: "\"v\"".into(),
                },
            ],
        }
    );
    let none = parse_service_query(None, ACTIVE, false, &TypeMap::default(), &Limits::default())
        .expect("no query is valid");
    assert_eq!(
        none,
        ServiceQuery {
            lifecycle: ACTIVE,
            anonymous: false,
            started: Window::default(),
            completed: Window::default(),
            service_types: vec![],
            include: Include::default(),
            extensions: Extensions::None,
            filters: vec![],
        }
    );
    assert_eq!(none.upstream_query(), "");
}

#[test]
fn filter_count_is_limited() {
    let limits = Limits::default();
    assert_eq!(limits.max_filters, 32);
    assert_eq!(limits.max_key_bytes, 256);
    let at_limit: Vec<String> = (0..32).map(|i| format!("k{i}=1")).collect();
    let q = parse(&at_limit.join("&"), ALL).expect("32 filters are allowed");
    assert_eq!(q.filters.len(), 32);
    // Other parameters do not count.
    let with_others = format!("{}&extensions=a&active_states", at_limit.join("&"));
    assert!(parse(&with_others, ALL).is_ok());
    let over = format!("{}&k32=1", at_limit.join("&"));
    assert_eq!(
        normalised(&over, ALL),
        Err("parameter 'k32': too many extension filters (at most 32 are allowed)".into())
    );
    // A repeated key counts each time.
    let small = Limits {
        max_filters: 2,
        ..Limits::default()
    };
    assert_eq!(
        parse_with("a=1&a=2&a=3", ALL, &TypeMap::default(), &small).map_err(|e| e.to_string()),
        Err("parameter 'a': too many extension filters (at most 2 are allowed)".into())
    );
}

#[test]
fn include_flags_for_service_by_id() {
    let accepted: &[(Option<&str>, Include, &str)] = &[
        (None, Include::default(), ""),
        (Some("&&a=1&&"), Include::default(), "a=1"),
        (
            Some("foo=a%20b&active_states&bar"),
            Include {
                active_states: true,
                ..Include::default()
            },
            "active_states=true&foo=a%20b&bar",
        ),
        (
            Some("x=1&completed_tasks=TRUE&active_states=0&y=%G1&%FF"),
            Include {
                completed_tasks: true,
                ..Include::default()
            },
            "completed_tasks=true&x=1&y=%G1&%FF",
        ),
        (
            Some("active%5Fstates=1&completed_states=true&active_tasks=1&completed_tasks"),
            Include::ALL,
            "active_states=true&completed_states=true&active_tasks=true&completed_tasks=true",
        ),
    ];
    for (query, include, normal) in accepted {
        assert_eq!(
            parse_include_flags(*query),
            Ok((*include, normal.to_string())),
            "{query:?}"
        );
    }
    let refused = [
        (
            "active_states=yes",
            "parameter 'active_states': 'yes' is not a boolean (true, false, 1 or 0)",
        ),
        (
            "active_tasks=1&active_tasks=1",
            "parameter 'active_tasks' is given more than once",
        ),
        (
            "completed_states=%G",
            "parameter 'completed_states': '%G' has a malformed percent escape",
        ),
    ];
    for (query, message) in refused {
        assert_eq!(
            parse_include_flags(Some(query)).map_err(|e| e.to_string()),
            Err(message.to_owned()),
            "{query}"
        );
    }
}

#[test]
fn path_parameters_decode_strictly() {
    let exact_limit = "x".repeat(256);
    let accepted = [
        ("abc", "abc"),
        ("a%20b", "a b"),
        ("a+b", "a+b"),
        ("caf%C3%A9", "café"),
        ("%e2%82%ac", "€"),
        ("361-a3", "361-a3"),
        (exact_limit.as_str(), exact_limit.as_str()),
    ];
    for (raw, decoded) in accepted {
        assert_eq!(
            decode_path_param("contact_key", raw, 256).as_deref(),
            Ok(decoded),
            "{raw}"
        );
    }
    let over_limit = "x".repeat(257);
    let over_limit_message = format!(
        "parameter 'contact_key': '{}…' is 257 bytes long; at most 256 are allowed",
        "x".repeat(200)
    );
    let refused = [
        ("", 256, "parameter 'contact_key' is empty".to_owned()),
        (
            "%G1",
            256,
            "parameter 'contact_key': '%G1' has a malformed percent escape".to_owned(),
        ),
        (
            "ab%4",
            256,
            "parameter 'contact_key': 'ab%4' has a malformed percent escape".to_owned(),
        ),
        (
            "%FF",
            256,
            "parameter 'contact_key': '%FF' is not UTF-8 once percent-decoded".to_owned(),
        ),
        (
            "a%0Ab",
            256,
            "parameter 'contact_key': 'a%0Ab' contains a control character".to_owned(),
        ),
        (
            "%7F",
            256,
            "parameter 'contact_key': '%7F' contains a control character".to_owned(),
        ),
        (
            "%C2%85",
            256,
            "parameter 'contact_key': '%C2%85' contains a control character".to_owned(),
        ),
        (
            "%E2%82%AC%E2%82%AC",
            5,
            "parameter 'contact_key': '%E2%82%AC%E2%82%AC' is 6 bytes long; at most 5 are allowed"
                .to_owned(),
        ),
        (over_limit.as_str(), 256, over_limit_message),
    ];
    for (raw, max, message) in refused {
        assert_eq!(
            decode_path_param("contact_key", raw, max).map_err(|e| e.to_string()),
            Err(message),
            "{raw}"
        );
    }
    assert_eq!(
        decode_path_param("customer_id", "", 256).map_err(|e| e.to_string()),
        Err("parameter 'customer_id' is empty".to_owned())
    );
}

#[test]
fn path_parameters_encode_canonically() {
    let cases = [
        ("AZaz09-._~", "AZaz09-._~"),
        ("a b", "a%20b"),
        ("a+b", "a%2Bb"),
        ("/?#%&=,*", "%2F%3F%23%25%26%3D%2C%2A"),
        ("€", "%E2%82%AC"),
    ];
    for (value, encoded) in cases {
        assert_eq!(encode_path_param(value), encoded, "{value}");
    }
}
