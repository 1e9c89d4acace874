//! Unit and property tests of query-parameter parsing.

use super::*;
use chrono::{Duration, TimeZone};
use proptest::prelude::*;
use serde_json::json;

const ALL: Lifecycle = Lifecycle::All;
const ACTIVE: Lifecycle = Lifecycle::Active;
const COMPLETED: Lifecycle = Lifecycle::Completed;

fn type_map() -> TypeMap {
    TypeMap::new([("Billing".to_owned(), 1), ("Sales".to_owned(), 2)])
}

fn parse_with(
    query: &str,
    lifecycle: Lifecycle,
    types: &TypeMap,
    limits: &Limits,
) -> Result<ServiceQuery, ParamError> {
    parse_service_query(Some(query), lifecycle, false, types, limits)
}

fn parse(query: &str, lifecycle: Lifecycle) -> Result<ServiceQuery, ParamError> {
    parse_with(query, lifecycle, &TypeMap::default(), &Limits::default())
}

fn normalised(query: &str, lifecycle: Lifecycle) -> Result<String, String> {
    parse(query, lifecycle)
        .map(|q| q.upstream_query())
        .map_err(|e| e.to_string())
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("test date is RFC 3339")
        .with_timezone(&Utc)
}

#[test]
fn accepted_queries_normalise_exactly() {
    let cases: &[(&str, Lifecycle, &str)] = &[
        // Nothing, or only empty pieces.
        ("", ALL, ""),
        ("&&&", ACTIVE, ""),
        // Dates: canonical UTC millis, ':' percent-encoded like every reserved byte.
        (
            "started_from=2009-05-07T14:05:20%2B02:00",
            ALL,
            "started_from=2009-05-07T12:05:20.000Z",
        ),
        (
            "started_to=2009-05-07T12:05:20.1234567Z",
            ACTIVE,
            "started_to=2009-05-07T12:05:20.123Z",
        ),
        (
            "started_to=2009-05-07T12:05:20&started_from=2009-05-07T12:05:19",
            ALL,
            "started_from=2009-05-07T12:05:19.000Z&started_to=2009-05-07T12:05:20.000Z",
        ),
        // from == to is an empty window, not an error.
        (
            "started_from=2023-01-01T00:00:00Z&started_to=2023-01-01T00:00:00Z",
            ALL,
            "started_from=2023-01-01T00:00:00.000Z&started_to=2023-01-01T00:00:00.000Z",
        ),
        // Compared after truncation to millis: equal, so accepted.
        (
            "started_from=2023-01-01T00:00:00.0009Z&started_to=2023-01-01T00:00:00.0001Z",
            ALL,
            "started_from=2023-01-01T00:00:00.000Z&started_to=2023-01-01T00:00:00.000Z",
        ),
        // Same instant written with different offsets.
        (
            "completed_from=2023-01-01T01:00:00%2B01:00&completed_to=2023-01-01T00:00:00Z",
            ALL,
            "completed_from=2023-01-01T00:00:00.000Z&completed_to=2023-01-01T00:00:00.000Z",
        ),
        (
            "completed_to=2023-01-01T00:00:00Z",
            COMPLETED,
            "completed_to=2023-01-01T00:00:00.000Z",
        ),
        // service_types: merged, trimmed, integers canonical, deduplicated, sorted.
        (
            "service_types=3,1,%20Billing%20,1&service_types=007,-2",
            ALL,
            "service_types=-2,1,3,7,Billing",
        ),
        ("service_types=+2+,-0", ALL, "service_types=0,2"),
        ("service_types=1%2C2", ALL, "service_types=1,2"),
        ("service_types=b,a,b,%09a", ALL, "service_types=a,b"),
        ("service_types=a%20b,%2B5", ALL, "service_types=%2B5,a%20b"),
        // Too big for i64: a name (accepted as such when no map is configured).
        (
            "service_types=99999999999999999999",
            ALL,
            "service_types=99999999999999999999",
        ),
        // Include flags.
        ("active_states", ALL, "active_states=true"),
        (
            "active_states=TRUE&completed_states=1&active_tasks=False&completed_tasks=0",
            ALL,
            "active_states=true&completed_states=true",
        ),
        (
            "completed_tasks=tRuE&active_tasks",
            ALL,
            "active_tasks=true&completed_tasks=true",
        ),
        ("active_states=false", ALL, ""),
        // extensions: merged, empty items ignored, sorted, deduplicated.
        ("extensions=b,a,,b", ALL, "extensions=a,b"),
        ("extensions=a&extensions=c,b", ALL, "extensions=a,b,c"),
        ("extensions=a,*", ALL, "extensions=*"),
        ("extensions=&extensions", ALL, ""),
        ("extensions=,,", ALL, ""),
        ("extensions=a%20b", ALL, "extensions=a%20b"),
        // Filters widen extensions, unless `*`.
        ("score=85", ALL, "extensions=score&score=85"),
        ("extensions=a&z=1&b=2", ALL, "extensions=a,b,z&z=1&b=2"),
        ("extensions=*&score=85", ALL, "extensions=*&score=85"),
        ("k=1&k=2", ALL, "extensions=k&k=1&k=2"),
        ("name=%22Bob%22", ALL, "extensions=name&name=%22Bob%22"),
        (
            "note=hello+world",
            ALL,
            "extensions=note&note=hello%20world",
        ),
        ("flag", ALL, "extensions=flag&flag="),
        ("list=1,2", ALL, "extensions=list&list=1%2C2"),
        // A key is widened as the upstream reads an `extensions` list.
        ("a%2Cb=1", ALL, "extensions=a,b&a%2Cb=1"),
        ("*=1", ALL, "extensions=*&%2A=1"),
        (",=1", ALL, "%2C=1"),
        // Keys are case-sensitive: these are filters, not parameters.
        (
            "Service_ID=5&Active_States=true",
            ALL,
            "extensions=Active_States,Service_ID&Service_ID=5&Active_States=true",
        ),
        // Everything at once, given in reverse order.
        (
            "z=%7B%22a%22%3A1%7D&extensions=x&completed_tasks&active_tasks=1\
             &completed_states=true&active_states=1&service_types=2,1\
             &completed_to=2023-01-02T00:00:00Z&completed_from=2023-01-01T00:00:00Z\
             &started_to=2022-01-02T00:00:00Z&started_from=2022-01-01T00:00:00Z",
            ALL,
            "started_from=2022-01-01T00:00:00.000Z&started_to=2022-01-02T00:00:00.000Z\
             &completed_from=2023-01-01T00:00:00.000Z&completed_to=2023-01-02T00:00:00.000Z\
             &service_types=1,2&active_states=true&completed_states=true&active_tasks=true\
             &completed_tasks=true&extensions=x,z&z=%7B%22a%22%3A1%7D",
        ),
    ];
    for (query, lifecycle, expected) in cases {
        assert_eq!(
            normalised(query, *lifecycle).as_deref(),
            Ok(*expected),
            "query {query:?} on {lifecycle:?}"
        );
    }
}

#[test]
fn refused_queries_say_exactly_why() {
    let long = "x".repeat(300);
    let long_query = format!("active_states={long}");
    let long_message = format!(
        "parameter 'active_states': '{}…' is not a boolean (true, false, 1 or 0)",
        "x".repeat(200)
    );
    let cases: &[(&str, Lifecycle, &str)] = &[
        // Dates.
        (
            "started_from=2023-02-30T00:00:00Z",
            ALL,
            "parameter 'started_from': '2023-02-30T00:00:00Z' is not a valid date-time: no such date or time",
        ),
        (
            "started_to=yesterday",
            ALL,
            "parameter 'started_to': 'yesterday' is not a valid date-time: expected YYYY-MM-DDTHH:mm:ss[.fff][Z|±hh:mm]",
        ),
        (
            "started_from",
            ALL,
            "parameter 'started_from': '' is not a valid date-time: expected YYYY-MM-DDTHH:mm:ss[.fff][Z|±hh:mm]",
        ),
        (
            "completed_to=",
            COMPLETED,
            "parameter 'completed_to': '' is not a valid date-time: expected YYYY-MM-DDTHH:mm:ss[.fff][Z|±hh:mm]",
        ),
        // A literal '+' is a space in a query string.
        (
            "started_from=2009-05-07T14:05:20+02:00",
            ALL,
            "parameter 'started_from': '2009-05-07T14:05:20 02:00' is not a valid date-time: expected YYYY-MM-DDTHH:mm:ss[.fff][Z|±hh:mm]",
        ),
        (
            "started_from=9999-12-31T23:00:00-01:00",
            ALL,
            "parameter 'started_from': '9999-12-31T23:00:00-01:00' is not a valid date-time: out of the supported range (years 0000-9999 in UTC)",
        ),
        (
            "started_from=2023-01-01T00:00:00Z&started_from=2023-01-01T00:00:00Z",
            ALL,
            "parameter 'started_from' is given more than once",
        ),
        (
            "completed_to=2023-01-01T00:00:00Z&completed_to=x",
            ALL,
            "parameter 'completed_to' is given more than once",
        ),
        (
            "started_from=2023-02-01T00:00:00Z&started_to=2023-01-01T00:00:00Z",
            ALL,
            "parameter 'started_from': '2023-02-01T00:00:00Z' is later than parameter 'started_to': '2023-01-01T00:00:00Z'",
        ),
        (
            "started_to=2023-01-01T01:00:00%2B01:00&started_from=2023-01-01T00:00:00.001Z",
            ALL,
            "parameter 'started_from': '2023-01-01T00:00:00.001Z' is later than parameter 'started_to': '2023-01-01T01:00:00+01:00'",
        ),
        (
            "completed_from=2023-01-02T00:00:00Z&completed_to=2023-01-01T00:00:00Z",
            COMPLETED,
            "parameter 'completed_from': '2023-01-02T00:00:00Z' is later than parameter 'completed_to': '2023-01-01T00:00:00Z'",
        ),
        // History-only parameters on /active, whatever their value.
        (
            "completed_from=2023-01-01T00:00:00Z",
            ACTIVE,
            "parameter 'completed_from' only applies to service history and is not accepted on an /active route",
        ),
        (
            "completed_to=garbage",
            ACTIVE,
            "parameter 'completed_to' only applies to service history and is not accepted on an /active route",
        ),
        // service_types.
        ("service_types=1,,2", ALL, "parameter 'service_types': '1,,2' has an empty item"),
        ("service_types=", ALL, "parameter 'service_types': '' has an empty item"),
        ("service_types", ALL, "parameter 'service_types': '' has an empty item"),
        ("service_types=1,", ALL, "parameter 'service_types': '1,' has an empty item"),
        ("service_types=1,+", ALL, "parameter 'service_types': '1, ' has an empty item"),
        (
            "service_types=1&service_types=",
            ALL,
            "parameter 'service_types': '' has an empty item",
        ),
        // Include flags.
        (
            "active_states=",
            ALL,
            "parameter 'active_states': '' is not a boolean (true, false, 1 or 0)",
        ),
        (
            "completed_states=yes",
            ALL,
            "parameter 'completed_states': 'yes' is not a boolean (true, false, 1 or 0)",
        ),
        (
            "active_tasks=2",
            ALL,
            "parameter 'active_tasks': '2' is not a boolean (true, false, 1 or 0)",
        ),
        (
            "completed_tasks=+true",
            ALL,
            "parameter 'completed_tasks': ' true' is not a boolean (true, false, 1 or 0)",
        ),
        (
            "active_states&active_states=false",
            ALL,
            "parameter 'active_states' is given more than once",
        ),
        // Control characters are escaped, long values cut.
        (
            "active_states=%0A",
            ALL,
            "parameter 'active_states': '\\n' is not a boolean (true, false, 1 or 0)",
        ),
        (&long_query, ALL, &long_message),
        // Filters.
        (
            "service_id=5",
            ALL,
            "parameter 'service_id': '5' cannot be used as an extension filter: 'service_id' is a Service field",
        ),
        (
            "disposition_desc",
            ALL,
            "parameter 'disposition_desc': '' cannot be used as an extension filter: 'disposition_desc' is a Service field",
        ),
        (
            "=x",
            ALL,
            "parameter '': an empty parameter name is not allowed (value 'x')",
        ),
        ("=", ALL, "parameter '': an empty parameter name is not allowed (value '')"),
        // Encoding, of keys and of values.
        ("a%G1=1", ALL, "parameter name 'a%G1' has a malformed percent escape"),
        ("%FF=1", ALL, "parameter name '%FF' is not UTF-8 once percent-decoded"),
        ("k=%4", ALL, "parameter 'k': '%4' has a malformed percent escape"),
        ("k=%", ALL, "parameter 'k': '%' has a malformed percent escape"),
        ("k=%C3%28", ALL, "parameter 'k': '%C3%28' is not UTF-8 once percent-decoded"),
        (
            "started_from=2023%",
            ALL,
            "parameter 'started_from': '2023%' has a malformed percent escape",
        ),
        // The first problem in query order wins.
        (
            "active_states=yes&started_from=bad",
            ALL,
            "parameter 'active_states': 'yes' is not a boolean (true, false, 1 or 0)",
        ),
    ];
    for (query, lifecycle, expected) in cases {
        assert_eq!(
            normalised(query, *lifecycle),
            Err(expected.to_string()),
            "query {query:?} on {lifecycle:?}"
        );
    }
}

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

// ---- properties ----

fn lifecycle() -> impl Strategy<Value = Lifecycle> {
    prop_oneof![Just(ALL), Just(ACTIVE), Just(COMPLETED)]
}

fn types() -> impl Strategy<Value = TypeMap> {
    prop_oneof![Just(TypeMap::default()), Just(type_map())]
}

/// Query-shaped text: mostly plausible pairs for each kind of key, some garbage
/// (odd keys, bad escapes, impossible dates) so refusals are exercised too.
fn query_text() -> impl Strategy<Value = String> {
    let date_key = prop_oneof![
        Just("started_from"),
        Just("started_to"),
        Just("completed_from"),
        Just("completed_to"),
    ];
    let date = "20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,4})?(Z|%2B0[0-9]:[0-5][0-9]|-0[0-9]:30)?";
    let flag_key = prop_oneof![
        Just("active_states"),
        Just("completed_states"),
        Just("active_tasks"),
        Just("completed_tasks"),
    ];
    let flag_value = prop_oneof![
        Just("=true"),
        Just("=FALSE"),
        Just("=1"),
        Just("=0"),
        Just(""),
        Just("=yes"),
    ];
    let any_key = prop_oneof![
        Just("service_id".to_owned()),
        Just("extensions".to_owned()),
        Just("started_from".to_owned()),
        "[a-c%2C*+,]{0,4}",
    ];
    let piece = prop_oneof![
        3 => (date_key, date).prop_map(|(k, v)| format!("{k}={v}")),
        3 => "[0-9a-c +,-]{1,6}|Billing,Sales,2|%2B5,007|Billing%2CSales"
            .prop_map(|v| format!("service_types={v}")),
        3 => (flag_key, flag_value).prop_map(|(k, v)| format!("{k}{v}")),
        2 => "[a-c*,+]{0,5}|a%2Cb".prop_map(|v| format!("extensions={v}")),
        3 => ("[a-c%2C*+,]{1,4}", "[0-9a-c,%+* \"-]{0,8}")
            .prop_map(|(k, v)| format!("{k}={v}")),
        1 => (any_key, proptest::option::of("[0-9a-c,%+* \"-]{0,8}|(%[0-9A-Fa-f]{2}){1,3}"))
            .prop_map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k,
            }),
    ];
    proptest::collection::vec(piece, 0..7).prop_map(|pieces| pieces.join("&"))
}

fn check_idempotent(
    query: &str,
    lifecycle: Lifecycle,
    types: &TypeMap,
) -> Result<(), TestCaseError> {
    let limits = Limits::default();
    match parse_service_query(Some(query), lifecycle, true, types, &limits) {
        Ok(first) => {
            let upstream = first.upstream_query();
            let second = parse_service_query(Some(&upstream), lifecycle, true, types, &limits);
            prop_assert_eq!(second.as_ref(), Ok(&first), "upstream {}", upstream);
            prop_assert_eq!(second.map(|q| q.upstream_query()), Ok(upstream));
        }
        Err(e) => {
            // At most three quoted client texts of 200 characters each (escaped).
            prop_assert!(e.to_string().chars().count() < 3 * 4 * 201 + 200);
        }
    }
    if let Ok((include, upstream)) = parse_include_flags(Some(query)) {
        prop_assert_eq!(
            parse_include_flags(Some(&upstream)),
            Ok((include, upstream))
        );
    }
    Ok(())
}

/// An optional instant: milliseconds since the epoch and the offset it is written with.
type Bound = Option<(i64, i32)>;

/// Model of a valid query, written in one of many equivalent spellings.
#[derive(Debug, Clone)]
struct Model {
    lifecycle: Lifecycle,
    started: (Bound, Bound),
    completed: (Bound, Bound),
    ids: Vec<i64>,
    names: Vec<String>,
    types_repeated: bool,
    flags: [Option<(bool, usize)>; 4],
    extensions: Vec<String>,
    star: bool,
    filters: Vec<(String, FilterValue)>,
    reverse: bool,
}

#[derive(Debug, Clone)]
enum FilterValue {
    Int(i64),
    Quoted(String),
    Word(String),
}

/// Milliseconds since the epoch up to 2096, and an offset in minutes.
fn instant() -> impl Strategy<Value = (i64, i32)> {
    (0i64..4_000_000_000_000, -(14 * 60)..=(14 * 60))
}

fn bounds() -> impl Strategy<Value = (Bound, Bound)> {
    (
        proptest::option::of(instant()),
        proptest::option::of(instant()),
    )
        .prop_map(|(a, b)| match (a, b) {
            (Some(a), Some(b)) if a.0 > b.0 => (Some(b), Some(a)),
            other => other,
        })
}

fn model() -> impl Strategy<Value = Model> {
    let filter_value = prop_oneof![
        any::<i64>().prop_map(FilterValue::Int),
        "[a-z ]{0,5}".prop_map(FilterValue::Quoted),
        "w[a-z]{0,4}".prop_map(FilterValue::Word),
    ];
    let flag = proptest::option::of((any::<bool>(), 0usize..4));
    (
        lifecycle(),
        bounds(),
        bounds(),
        proptest::collection::vec(any::<i64>(), 0..4),
        proptest::collection::vec("[A-Za-z]([A-Za-z _+]{0,5}[A-Za-z])?", 0..4),
        any::<bool>(),
        [flag.clone(), flag.clone(), flag.clone(), flag],
        proptest::collection::vec("[a-z][a-z0-9_ ]{0,5}", 0..3),
        proptest::bool::weighted(0.2),
        proptest::collection::vec(("x[a-z0-9_]{0,5}", filter_value), 0..4),
        any::<bool>(),
    )
        .prop_map(
            |(
                lifecycle,
                started,
                completed,
                ids,
                names,
                types_repeated,
                flags,
                extensions,
                star,
                filters,
                reverse,
            )| Model {
                completed: if lifecycle == ACTIVE {
                    (None, None)
                } else {
                    completed
                },
                lifecycle,
                started,
                ids,
                names,
                types_repeated,
                flags,
                extensions,
                star,
                filters,
                reverse,
            },
        )
}

fn date_text((millis, offset_min): (i64, i32)) -> String {
    let t = Utc.timestamp_millis_opt(millis).single().expect("in range");
    let local = t.naive_utc() + Duration::minutes(i64::from(offset_min));
    let offset = if offset_min == 0 {
        "Z".to_owned()
    } else {
        let sign = if offset_min < 0 { "-" } else { "%2B" };
        format!(
            "{sign}{:02}:{:02}",
            offset_min.abs() / 60,
            offset_min.abs() % 60
        )
    };
    format!("{}{offset}", local.format("%Y-%m-%dT%H:%M:%S%.3f"))
}

impl Model {
    fn query(&self) -> String {
        let mut pieces: Vec<String> = Vec::new();
        let dates = [
            self.started.0,
            self.started.1,
            self.completed.0,
            self.completed.1,
        ];
        for (name, bound) in DATE_PARAMS.iter().zip(dates) {
            if let Some(b) = bound {
                pieces.push(format!("{name}={}", date_text(b)));
            }
        }
        let items: Vec<String> = self
            .ids
            .iter()
            .map(|id| format!("+{id}"))
            .chain(self.names.iter().map(|n| encode(n)))
            .collect();
        if !items.is_empty() {
            if self.types_repeated {
                pieces.extend(items.iter().map(|i| format!("service_types={i}")));
            } else {
                pieces.push(format!("service_types={}", items.join("%2C")));
            }
        }
        const TRUE: [&str; 4] = ["true", "TRUE", "1", ""];
        const FALSE: [&str; 4] = ["false", "False", "0", "FALSE"];
        for (name, flag) in FLAG_PARAMS.iter().zip(self.flags) {
            match flag {
                Some((true, 3)) => pieces.push((*name).to_owned()),
                Some((true, i)) => pieces.push(format!("{name}={}", TRUE[i])),
                Some((false, i)) => pieces.push(format!("{name}={}", FALSE[i])),
                None => {}
            }
        }
        let mut names: Vec<String> = self.extensions.iter().map(|n| encode(n)).collect();
        if self.star {
            names.push("*".to_owned());
        }
        if !names.is_empty() {
            pieces.push(format!("extensions=,{}", names.join(",")));
        }
        if self.reverse {
            pieces.reverse();
        }
        for (key, value) in &self.filters {
            let raw = match value {
                FilterValue::Int(n) => n.to_string(),
                FilterValue::Quoted(s) => format!("%22{}%22", s.replace(' ', "+")),
                FilterValue::Word(w) => w.clone(),
            };
            pieces.push(format!("{key}={raw}"));
        }
        pieces.join("&")
    }

    fn expected(&self) -> ServiceQuery {
        let at = |b: Option<(i64, i32)>| {
            b.map(|(ms, _)| Utc.timestamp_millis_opt(ms).single().expect("in range"))
        };
        let mut types: BTreeSet<ServiceType> =
            self.ids.iter().map(|id| ServiceType::Id(*id)).collect();
        types.extend(self.names.iter().map(|n| ServiceType::Name(n.clone())));
        let flag = |i: usize| matches!(self.flags[i], Some((true, _)));
        let mut names: BTreeSet<String> = self.extensions.iter().cloned().collect();
        names.extend(self.filters.iter().map(|(k, _)| k.clone()));
        let extensions = if self.star {
            Extensions::All
        } else if names.is_empty() {
            Extensions::None
        } else {
            Extensions::Names(names.into_iter().collect())
        };
        ServiceQuery {
            lifecycle: self.lifecycle,
            anonymous: false,
            started: Window {
                from: at(self.started.0),
                to: at(self.started.1),
            },
            completed: Window {
                from: at(self.completed.0),
                to: at(self.completed.1),
            },
            service_types: types.into_iter().collect(),
            include: Include {
                active_states: flag(0),
                completed_states: flag(1),
                active_tasks: flag(2),
                completed_tasks: flag(3),
            },
            extensions,
            filters: self
                .filters
                .iter()
                .map(|(key, value)| {
                    let (value, raw) = match value {
                        FilterValue::Int(n) => (json!(n), n.to_string()),
                        FilterValue::Quoted(s) => (json!(s), format!("\"{s}\"")),
                        FilterValue::Word(w) => (json!(w), w.clone()),
                    };
                    ExtensionFilter {
                        key: key.clone(),
                        value,
                        raw,
                    }
                })
                .collect(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary text never panics any entry point.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,80}|[%&=+,a-f0-9]{0,40}", lc in lifecycle()) {
        let _ = parse_service_query(Some(&text), lc, false, &type_map(), &Limits::default());
        let _ = parse_include_flags(Some(&text));
        let _ = decode_path_param("contact_key", &text, 16);
        let _ = encode_path_param(&text);
    }

    /// Whatever is accepted normalises to a fixed point.
    #[test]
    fn normalisation_is_idempotent(query in query_text(), lc in lifecycle(), types in types()) {
        check_idempotent(&query, lc, &types)?;
    }

    /// The same for completely arbitrary text (mostly filters and refusals).
    #[test]
    fn normalisation_of_arbitrary_text_is_idempotent(query in "\\PC{0,60}", lc in lifecycle()) {
        check_idempotent(&query, lc, &TypeMap::default())?;
    }

    /// A valid query, however it is spelled, parses to what it means and round-trips.
    #[test]
    fn generated_valid_query_round_trips(m in model()) {
        let query = m.query();
        let expected = m.expected();
        let parsed = parse(&query, m.lifecycle);
        prop_assert_eq!(parsed.as_ref(), Ok(&expected), "query {}", query);
        let upstream = expected.upstream_query();
        prop_assert_eq!(parse(&upstream, m.lifecycle), Ok(expected), "upstream {}", upstream);
    }

    /// Path parameters: encode then decode is the identity for every acceptable value.
    #[test]
    fn path_parameter_round_trips(value in "\\PC{1,40}") {
        prop_assume!(!value.chars().any(char::is_control));
        let encoded = encode_path_param(&value);
        prop_assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
        prop_assert_eq!(decode_path_param("contact_key", &encoded, 1024), Ok(value));
    }
}
