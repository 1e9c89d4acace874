//! Unit and property tests of the post-filter.

use super::*;
use crate::query::{date, ExtensionFilter, Lifecycle, ServiceType, Window};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::json;

mod properties;
mod shape;

fn query() -> ServiceQuery {
    ServiceQuery::plain()
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
/// `q` keeps exactly the services `expected` names, and reports `bad` bad timestamps.
fn assert_keeps(input: &Value, q: &ServiceQuery, expected: &[&str], bad: usize) {
    assert_eq!(
        run(input, q, &TypeMap::default()),
        (pick(input, expected), bad),
        "{q:?}"
    );
}

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
    // Without a window nothing is dropped, whatever its timestamp.
    let every = [
        &all_good[..],
        &["garbage", "number", "no-timestamp", "no-started"],
    ]
    .concat();
    let cases: [(Window, &[&str], usize); 8] = [
        (Window::default(), &every, 0),
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
        assert_keeps(&input, &q, expected, bad);
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
        assert_keeps(&input, &q, expected, bad);
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

use crate::query::test_support::filter;
