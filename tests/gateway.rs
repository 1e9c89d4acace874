//! The gateway core from outside: the real gateway in-process in front of fake upstreams
//! that ignore the query and answer everything, so what a client gets is the gateway's own
//! routing, validation, filtering, trimming and proxying (gateway contract §1, §2, §4, §5).
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::{json, Map, Value};

use common::*;

// --- fixtures ------------------------------------------------------------------------

/// Anonymous, active, type by ID; all four sections, states with nested task arrays.
const SA: &str = r#"{"service_id":"383-f9a62aec-e6f2-45cb-aa01-0d9404f905bd","contact_key":"+1 408 832 7799","service_type":1,"est_duration":600,"started":{"timestamp":"2023-03-01T10:00:00.000Z","session_id":"s-1","media_type":1001},"segment":"gold","score":85,"tags":["vip","new"],"active_states":[{"state_id":2,"state_type":4,"started":{"timestamp":"2023-03-01T10:00:05"},"active_tasks":[{"task_id":70}],"completed_tasks":[{"task_id":71}]}],"completed_states":[{"state_id":1,"state_type":1,"started":{"timestamp":"2023-03-01T10:00:00"},"completed":{"timestamp":"2023-03-01T10:00:05"},"completed_tasks":[{"task_id":60}]}],"active_tasks":[{"task_id":70,"task_type":3,"state_id":2,"started":{"timestamp":"2023-03-01T10:00:06"}}],"completed_tasks":[{"task_id":60,"task_type":2,"completed":{"timestamp":"2023-03-01T10:00:04"}},{"task_id":71}]}"#;
/// Anonymous, completed, 64-bit ID, type by name, timestamps without `Z`, score as a
/// string, unknown fields; some sections, one missing.
const SB: &str = r#"{"service_id":9007199254740993,"contact_key":"+1 408 832 7799","service_type":"DeliveringService","started":{"timestamp":"2023-03-01T12:00:00"},"completed":{"timestamp":"2023-03-02T09:30:00.5","disposition":"resolved"},"duration":77400000,"segment":"silver","score":"85","x_unknown":{"z":1,"a":[1.5,-0.25,true,null]},"active_states":[],"completed_states":[{"state_id":1,"state_type":8,"started":{"timestamp":"2023-03-01T12:00:00"},"completed":{"timestamp":"2023-03-02T09:30:00"},"active_tasks":[]}],"completed_tasks":[]}"#;
/// A customer's active service; offset timestamp.
const SC: &str = r#"{"customer_id":"ABC1234","service_id":4692834,"service_type":2,"est_duration":86400,"started":{"timestamp":"2023-03-02T08:00:00.000+01:00"},"segment":"gold","score":85,"active_states":[{"state_id":5005,"state_type":8,"started":{"timestamp":"2009-05-07T12:08:53.298"},"active_tasks":[{"task_id":1}]}]}"#;
/// A customer's completed service, type by name, no sections at all.
const SD: &str = r#"{"customer_id":"ABC1234","service_id":4692835,"service_type":"Sales","started":{"timestamp":"2023-02-28T23:59:59.999Z"},"completed":{"timestamp":"2023-03-01T00:00:00Z"},"tags":["gold"]}"#;
/// Anonymous, active, the largest u64 ID, a space instead of `T`, a `null` section.
const SE: &str = r#"{"service_id":18446744073709551615,"contact_key":"+1 408 832 7799","service_type":8,"started":{"timestamp":"2023-03-03 07:00:00"},"tags":["gold","silver"],"score":90,"active_states":null,"active_tasks":[{"task_id":5}]}"#;
/// Anonymous, completed, a type missing from the map, a float, a nested look-alike key.
const SF: &str = r#"{"service_id":"s-6","contact_key":"+1 408 832 7799","service_type":3,"started":{"timestamp":"2023-03-04T00:00:00Z"},"completed":{"timestamp":"2023-03-04T01:00:00Z"},"segment":"gold","score":85.0,"nested":{"segment":"silver"}}"#;

const A: &str = "383-f9a62aec-e6f2-45cb-aa01-0d9404f905bd";
const B: &str = "9007199254740993";
const C: &str = "4692834";
const D: &str = "4692835";
const E: &str = "18446744073709551615";
const F: &str = "s-6";

fn services_body() -> String {
    format!("[{SA},{SB},{SC},{SD},{SE},{SF}]")
}

fn services_value() -> Vec<Value> {
    serde_json::from_str(&services_body()).expect("fixture is JSON")
}

const MAP: &str =
    "[business_attributes.service_type]\nDeliveringService = 8\nSales = 2\nBilling = 1\n";
const NO_CACHE: &str = "[cache]\nenabled = false\n";
const CS: &str = "/genesys/1/cs";
const ANON: &str = "/genesys/1/cs/services/anonymous/4088327799";
const CUST: &str = "/genesys/1/cs/customers/ABC1234/services";
const NOT_FOUND_BODY: &str = r#"{"message":"There are no service found for : 361-a3f0","exception":"com.genesyslab.gms.cs.exceptions.NotFoundException"}"#;

/// An upstream answering the fixture, and two gateways in front of it: cache on, cache off.
async fn both_gateways(extra: &str) -> (FakeUpstream, TestGateway, TestGateway) {
    let upstream = FakeUpstream::start(Reply::json(200, services_body())).await;
    let cached = start_gateway(extra, &[upstream.url()]).await;
    let uncached = start_gateway(&format!("{NO_CACHE}{extra}"), &[upstream.url()]).await;
    (upstream, cached, uncached)
}

/// The exact body of a gateway-made error.
fn cs_error(message: &str, exception: &str) -> String {
    serde_json::to_string(&json!({"message": message, "exception": exception})).expect("serialises")
}

#[track_caller]
fn assert_cs_error(answer: &Answer, status: u16, exception: &str, message: &str, context: &str) {
    assert_eq!(
        (answer.status, answer.text()),
        (status, cs_error(message, exception)),
        "{context}"
    );
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/json"),
        "{context}"
    );
}

/// The `service_id`s of an answer, as JSON text (strings unquoted), in order.
fn ids(answer: &Answer) -> Vec<String> {
    answer
        .json()
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {}", answer.text()))
        .iter()
        .map(|s| match &s["service_id"] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .collect()
}

const SECTIONS: [&str; 4] = [
    "active_states",
    "completed_states",
    "active_tasks",
    "completed_tasks",
];

/// What the contract says a kept service looks like for `flags`: sections present exactly
/// when asked (`[]` for a missing or `null` one; a missing one goes last), state objects
/// without task arrays, every other key untouched and in place.
fn trimmed(service: &Value, flags: [bool; 4]) -> Value {
    let mut out = Map::new();
    for (key, value) in service.as_object().expect("a service is an object") {
        match SECTIONS.iter().position(|s| s == key) {
            None => {
                out.insert(key.clone(), value.clone());
            }
            Some(i) if !flags[i] => {}
            Some(i) => {
                let mut value = if value.is_null() {
                    json!([])
                } else {
                    value.clone()
                };
                if i < 2 {
                    for state in value.as_array_mut().into_iter().flatten() {
                        let state = state.as_object_mut().expect("a state is an object");
                        state.shift_remove("active_tasks");
                        state.shift_remove("completed_tasks");
                    }
                }
                out.insert(key.clone(), value);
            }
        }
    }
    for (section, on) in SECTIONS.iter().zip(flags) {
        if on && !out.contains_key(*section) {
            out.insert((*section).to_owned(), json!([]));
        }
    }
    Value::Object(out)
}

fn flag_query(flags: [bool; 4]) -> String {
    SECTIONS
        .iter()
        .zip(flags)
        .map(|(name, on)| format!("{name}={on}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The four flags of combination `n` (0..16).
fn combination(n: usize) -> [bool; 4] {
    [n & 1 != 0, n & 2 != 0, n & 4 != 0, n & 8 != 0]
}

/// Independent of `trimmed`: sections present exactly when asked, arrays, no nested tasks.
#[track_caller]
fn assert_sections(service: &Value, flags: [bool; 4], context: &str) {
    for (section, on) in SECTIONS.iter().zip(flags) {
        let value = service.get(*section);
        assert_eq!(value.is_some(), on, "{section} in {service} ({context})");
        if let Some(value) = value {
            let items = value
                .as_array()
                .unwrap_or_else(|| panic!("{section} is not an array ({context})"));
            if section.ends_with("_states") {
                for state in items {
                    assert!(
                        state.get("active_tasks").is_none()
                            && state.get("completed_tasks").is_none(),
                        "nested tasks in {state} ({context})"
                    );
                }
            }
        }
    }
}

// --- routes --------------------------------------------------------------------------

#[tokio::test]
async fn the_six_routes_with_and_without_a_trailing_slash_select_by_owner_and_lifecycle() {
    let (upstream, cached, uncached) = both_gateways(MAP).await;
    let cases: [(&str, &[&str]); 6] = [
        (ANON, &[A, B, E, F]),
        (
            "/genesys/1/cs/services/anonymous/4088327799/active",
            &[A, E],
        ),
        (
            "/genesys/1/cs/services/anonymous/4088327799/completed",
            &[B, F],
        ),
        (CUST, &[A, B, C, D, E, F]),
        (
            "/genesys/1/cs/customers/ABC1234/services/active",
            &[A, C, E],
        ),
        (
            "/genesys/1/cs/customers/ABC1234/services/completed",
            &[B, D, F],
        ),
    ];
    for gw in [&cached, &uncached] {
        for (path, expected) in cases {
            for path in [path.to_owned(), format!("{path}/")] {
                let answer = get(&gw.url(&path)).await;
                assert_eq!(answer.status, 200, "{path}: {}", answer.text());
                assert_eq!(ids(&answer), expected, "{path}");
                assert_eq!(
                    answer.header("content-type").as_deref(),
                    Some("application/json"),
                    "{path}"
                );
            }
        }
    }
    // The cached gateway fetched the anonymous key once, broadly; every other request went
    // upstream on the route's own path, without the slash.
    let broad = "active_states=true&completed_states=true&active_tasks=true&completed_tasks=true";
    let mut want: Vec<(String, Option<String>)> = vec![(ANON.to_owned(), Some(broad.to_owned()))];
    let routes: Vec<&str> = cases.iter().map(|(path, _)| *path).collect();
    for path in routes.iter().filter(|p| p.contains("/customers/")) {
        want.extend([(path.to_string(), None), (path.to_string(), None)]);
    }
    for path in &routes {
        want.extend([(path.to_string(), None), (path.to_string(), None)]);
    }
    let seen: Vec<(String, Option<String>)> = upstream
        .requests()
        .into_iter()
        .map(|r| (r.path, r.query))
        .collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let (_upstream, cached, uncached) = both_gateways("").await;
    let routes = [
        ANON.to_owned(),
        format!("{ANON}/active"),
        format!("{ANON}/completed/"),
        CUST.to_owned(),
        format!("{CUST}/active/"),
        format!("{CUST}/completed"),
    ];
    for gw in [&cached, &uncached] {
        for path in &routes {
            let full = get(&gw.url(path)).await;
            let head = send(Method::HEAD, &gw.url(path), &[], Bytes::new()).await;
            assert_eq!((head.status, head.body.len()), (200, 0), "HEAD {path}");
            assert_eq!(
                head.header("content-type").as_deref(),
                Some("application/json"),
                "HEAD {path}"
            );
            assert_eq!(
                head.header("content-length"),
                Some(full.body.len().to_string()),
                "HEAD {path}"
            );
        }
    }
}

#[tokio::test]
async fn other_methods_on_the_query_routes_are_405_with_allow() {
    let (upstream, cached, uncached) = both_gateways("").await;
    let routes = [
        ANON.to_owned(),
        format!("{ANON}/"),
        format!("{ANON}/active"),
        format!("{ANON}/completed/"),
        CUST.to_owned(),
        format!("{CUST}/active"),
        format!("{CUST}/completed"),
        format!("{CUST}/completed/"),
    ];
    for gw in [&cached, &uncached] {
        for path in &routes {
            for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
                let answer = send(method.clone(), &gw.url(path), &[], "{}").await;
                let context = format!("{method} {path}");
                assert_cs_error(
                    &answer,
                    405,
                    "MethodNotAllowed",
                    &format!("method {method} is not allowed on this resource; allowed: GET, HEAD"),
                    &context,
                );
                assert_eq!(
                    answer.header("allow").as_deref(),
                    Some("GET, HEAD"),
                    "{context}"
                );
            }
        }
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn paths_outside_the_api_are_404_in_cs_shape() {
    let (upstream, cached, _uncached) = both_gateways("").await;
    let message = "no such resource; the Context Services API is served under /genesys/1/cs/";
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/other"),
        (Method::GET, "/genesys/1"),
        (Method::GET, "/genesys/1/csx/services/anonymous/k"),
        (Method::GET, "/genesys/2/cs/services/anonymous/k"),
        (Method::GET, "/GENESYS/1/cs/services/anonymous/k"),
        (Method::POST, "/services/start"),
        (Method::DELETE, "/genesys/1/c"),
    ] {
        let answer = send(method.clone(), &cached.url(path), &[], Bytes::new()).await;
        assert_cs_error(
            &answer,
            404,
            "NotFound",
            message,
            &format!("{method} {path}"),
        );
    }
    assert_eq!(upstream.count(), 0);
}

// --- parameters: refusals --------------------------------------------------------------

const SYNTAX: &str = "expected YYYY-MM-DDTHH:mm:ss[.fff][Z|±hh:mm]";
const IMPOSSIBLE: &str = "no such date or time";

fn bad_date(name: &str, value: &str, reason: &str) -> String {
    format!("parameter '{name}': '{value}' is not a valid date-time: {reason}")
}

fn not_boolean(name: &str, value: &str) -> String {
    format!("parameter '{name}': '{value}' is not a boolean (true, false, 1 or 0)")
}

/// (path and query, exact message) for every refusal of section 2.1.
fn refusals() -> Vec<(String, String)> {
    let mut cases: Vec<(String, String)> = vec![
        // Dates: impossible.
        (
            format!("{CUST}?started_from=2023-02-30T00:00:00Z"),
            bad_date("started_from", "2023-02-30T00:00:00Z", IMPOSSIBLE),
        ),
        (
            format!("{ANON}?started_to=2023-02-29T00:00:00Z"),
            bad_date("started_to", "2023-02-29T00:00:00Z", IMPOSSIBLE),
        ),
        (
            format!("{CUST}?started_from=2023-13-01T00:00:00Z"),
            bad_date("started_from", "2023-13-01T00:00:00Z", IMPOSSIBLE),
        ),
        (
            format!("{CUST}?completed_from=2023-01-01T24:00:00Z"),
            bad_date("completed_from", "2023-01-01T24:00:00Z", IMPOSSIBLE),
        ),
        (
            format!("{ANON}/completed?completed_to=2023-01-01T00:00:60Z"),
            bad_date("completed_to", "2023-01-01T00:00:60Z", IMPOSSIBLE),
        ),
        (
            format!("{CUST}?started_from=2023-01-01T00:00:00%2B24:00"),
            bad_date("started_from", "2023-01-01T00:00:00+24:00", IMPOSSIBLE),
        ),
        // Dates: not the grammar.
        (
            format!("{CUST}?started_from=2023-01-01"),
            bad_date("started_from", "2023-01-01", SYNTAX),
        ),
        (
            format!("{CUST}?started_from=2023-01-01T00:00Z"),
            bad_date("started_from", "2023-01-01T00:00Z", SYNTAX),
        ),
        (
            format!("{CUST}?started_from=2023-01-01T00:00:00.Z"),
            bad_date("started_from", "2023-01-01T00:00:00.Z", SYNTAX),
        ),
        (
            format!("{CUST}?started_from=2023-01-01T00:00:00.1234567890Z"),
            bad_date("started_from", "2023-01-01T00:00:00.1234567890Z", SYNTAX),
        ),
        (
            format!("{CUST}?started_from=2023-01-01T00:00:00%2B0100"),
            bad_date("started_from", "2023-01-01T00:00:00+0100", SYNTAX),
        ),
        // A literal '+' in a query string is a space.
        (
            format!("{ANON}?started_from=2023-01-01T00:00:00+01:00"),
            bad_date("started_from", "2023-01-01T00:00:00 01:00", SYNTAX),
        ),
        (
            format!("{CUST}?started_to=2023-01-01%2000:00:00Z"),
            bad_date("started_to", "2023-01-01 00:00:00Z", SYNTAX),
        ),
        (
            format!("{CUST}?started_to=1683461120"),
            bad_date("started_to", "1683461120", SYNTAX),
        ),
        (
            format!("{CUST}?started_from"),
            bad_date("started_from", "", SYNTAX),
        ),
        // Dates: twice, inverted, history-only.
        (
            format!("{ANON}?started_from=2023-01-01T00:00:00Z&started_from=2023-01-02T00:00:00Z"),
            "parameter 'started_from' is given more than once".into(),
        ),
        (
            format!("{CUST}/completed?completed_to=2023-01-01T00:00:00Z&completed_to=2023-01-01T00:00:00Z"),
            "parameter 'completed_to' is given more than once".into(),
        ),
        (
            format!("{CUST}?started_from=2023-01-02T00:00:00Z&started_to=2023-01-01T00:00:00Z"),
            "parameter 'started_from': '2023-01-02T00:00:00Z' is later than parameter 'started_to': '2023-01-01T00:00:00Z'".into(),
        ),
        (
            format!("{ANON}/completed?completed_to=2023-01-01T01:00:00%2B01:00&completed_from=2023-01-01T00:00:00.001Z"),
            "parameter 'completed_from': '2023-01-01T00:00:00.001Z' is later than parameter 'completed_to': '2023-01-01T01:00:00+01:00'".into(),
        ),
        (
            format!("{ANON}/active?completed_from=2023-01-01T00:00:00Z"),
            "parameter 'completed_from' only applies to service history and is not accepted on an /active route".into(),
        ),
        (
            format!("{CUST}/active?completed_to=2023-01-01T00:00:00Z"),
            "parameter 'completed_to' only applies to service history and is not accepted on an /active route".into(),
        ),
        (
            format!("{CUST}/active/?completed_to=junk"),
            "parameter 'completed_to' only applies to service history and is not accepted on an /active route".into(),
        ),
        // service_types.
        (
            format!("{CUST}?service_types=1,,2"),
            "parameter 'service_types': '1,,2' has an empty item".into(),
        ),
        (
            format!("{CUST}?service_types="),
            "parameter 'service_types': '' has an empty item".into(),
        ),
        (
            format!("{ANON}?service_types=1&service_types=2,"),
            "parameter 'service_types': '2,' has an empty item".into(),
        ),
        (
            format!("{CUST}?service_types=Marketing"),
            "parameter 'service_types': 'Marketing' is not a configured service type name".into(),
        ),
        (
            format!("{ANON}?service_types=8,sales"),
            "parameter 'service_types': 'sales' is not a configured service type name".into(),
        ),
        // Include flags.
        (format!("{CUST}?active_states=yes"), not_boolean("active_states", "yes")),
        (format!("{ANON}?completed_states=2"), not_boolean("completed_states", "2")),
        (format!("{CUST}?active_tasks="), not_boolean("active_tasks", "")),
        (format!("{CUST}/completed?completed_tasks=on"), not_boolean("completed_tasks", "on")),
        (format!("{CUST}?active_states=truee"), not_boolean("active_states", "truee")),
        (
            format!("{CUST}?active_states=true&active_states=true"),
            "parameter 'active_states' is given more than once".into(),
        ),
        (
            format!("{ANON}?completed_tasks&completed_tasks=0"),
            "parameter 'completed_tasks' is given more than once".into(),
        ),
        // Filters.
        (
            format!("{CUST}?=x"),
            "parameter '': an empty parameter name is not allowed (value 'x')".into(),
        ),
        (
            format!("{ANON}?k=%G1"),
            "parameter 'k': '%G1' has a malformed percent escape".into(),
        ),
        (
            format!("{ANON}?%FF=1"),
            "parameter name '%FF' is not UTF-8 once percent-decoded".into(),
        ),
        // Path parameters.
        (
            "/genesys/1/cs/services/anonymous/".into(),
            "parameter 'contact_key' is empty".into(),
        ),
        (
            "/genesys/1/cs/services/anonymous//active".into(),
            "path '/genesys/1/cs/services/anonymous//active' is refused: it contains an empty \
             segment ('//')"
                .into(),
        ),
        (
            "/genesys/1/cs/customers//services".into(),
            "path '/genesys/1/cs/customers//services' is refused: it contains an empty \
             segment ('//')"
                .into(),
        ),
        (
            format!("/genesys/1/cs/services/anonymous/{}", "a".repeat(17)),
            format!(
                "parameter 'contact_key': '{}' is 17 bytes long; at most 16 are allowed",
                "a".repeat(17)
            ),
        ),
        (
            format!("/genesys/1/cs/customers/{}/services", "%C3%A9".repeat(9)),
            format!(
                "parameter 'customer_id': '{}' is 18 bytes long; at most 16 are allowed",
                "%C3%A9".repeat(9)
            ),
        ),
        (
            "/genesys/1/cs/services/anonymous/a%0Ab/completed".into(),
            "parameter 'contact_key': 'a%0Ab' contains a control character".into(),
        ),
        (
            "/genesys/1/cs/services/anonymous/a%7F".into(),
            "parameter 'contact_key': 'a%7F' contains a control character".into(),
        ),
        (
            "/genesys/1/cs/customers/%01/services/active".into(),
            "parameter 'customer_id': '%01' contains a control character".into(),
        ),
        (
            "/genesys/1/cs/services/anonymous/%FF".into(),
            "parameter 'contact_key': '%FF' is not UTF-8 once percent-decoded".into(),
        ),
        (
            "/genesys/1/cs/customers/%C3%28/services".into(),
            "parameter 'customer_id': '%C3%28' is not UTF-8 once percent-decoded".into(),
        ),
        (
            "/genesys/1/cs/customers/ab%4/services".into(),
            "parameter 'customer_id': 'ab%4' has a malformed percent escape".into(),
        ),
        (
            "/genesys/1/cs/services/anonymous/%G1/active".into(),
            "parameter 'contact_key': '%G1' has a malformed percent escape".into(),
        ),
        (
            "/genesys/1/cs/services/anonymous/100%".into(),
            "parameter 'contact_key': '100%' has a malformed percent escape".into(),
        ),
    ];
    for field in [
        "service_id",
        "service_type",
        "customer_id",
        "contact_key",
        "started",
        "completed",
        "est_duration",
        "duration",
        "disposition",
        "disposition_desc",
    ] {
        cases.push((
            format!("{ANON}?{field}=1"),
            format!("parameter '{field}': '1' cannot be used as an extension filter: '{field}' is a Service field"),
        ));
    }
    let filters: Vec<String> = (1..=33).map(|i| format!("k{i}=v")).collect();
    cases.push((
        format!("{CUST}?{}", filters.join("&")),
        "parameter 'k33': too many extension filters (at most 32 are allowed)".into(),
    ));
    cases
}

#[tokio::test]
async fn every_refusal_is_400_naming_the_parameter_and_never_reaches_the_upstream() {
    let (upstream, cached, uncached) =
        both_gateways(&format!("{MAP}[server]\nmax_key_bytes = 16\n")).await;
    for gw in [&cached, &uncached] {
        for (path, message) in refusals() {
            for method in [Method::GET, Method::HEAD] {
                let answer = send(method.clone(), &gw.url(&path), &[], Bytes::new()).await;
                if method == Method::HEAD {
                    assert_eq!((answer.status, answer.body.len()), (400, 0), "HEAD {path}");
                } else {
                    assert_cs_error(&answer, 400, "InvalidParameter", &message, &path);
                }
            }
        }
    }
    assert_eq!(upstream.count(), 0, "{:?}", upstream.requests());
}

#[tokio::test]
async fn path_parameters_at_the_byte_limit_pass_and_the_default_limit_is_256() {
    let (upstream, cached, uncached) = both_gateways("[server]\nmax_key_bytes = 16\n").await;
    for gw in [&cached, &uncached] {
        for path in [
            format!("{CS}/services/anonymous/{}", "a".repeat(16)),
            format!("{CS}/customers/{}/services", "%C3%A9".repeat(8)),
        ] {
            assert_eq!(get(&gw.url(&path)).await.status, 200, "{path}");
        }
    }
    assert_eq!(upstream.count(), 4, "one per gateway and key");

    let (_upstream, default, _) = both_gateways("").await;
    let ok = get(&default.url(&format!("{CS}/customers/{}/services", "b".repeat(256)))).await;
    assert_eq!(ok.status, 200);
    let long = "b".repeat(257);
    let refused = get(&default.url(&format!("{CS}/services/anonymous/{long}"))).await;
    assert_cs_error(
        &refused,
        400,
        "InvalidParameter",
        &format!(
            "parameter 'contact_key': '{}…' is 257 bytes long; at most 256 are allowed",
            "b".repeat(200)
        ),
        "257 bytes",
    );
}

#[tokio::test]
async fn a_query_over_8_kib_is_414_and_headers_over_16_kib_are_431() {
    let (upstream, cached, uncached) = both_gateways("").await;
    for gw in [&cached, &uncached] {
        // Exactly 8 KiB of query passes.
        let at_limit = format!("{CUST}?k={}", "x".repeat(8192 - 2));
        assert_eq!(get(&gw.url(&at_limit)).await.status, 200);
        for path in [
            format!("{CUST}?k={}", "x".repeat(8192 - 1)),
            format!("{ANON}/active?k={}", "x".repeat(8192 - 1)),
            format!("{CS}/services/42?k={}", "x".repeat(8192 - 1)),
        ] {
            let answer = get(&gw.url(&path)).await;
            assert_cs_error(
                &answer,
                414,
                "PayloadTooLarge",
                "query string is 8193 bytes; the limit is 8192",
                "8193-byte query",
            );
        }
        let big = "h".repeat(17 * 1024);
        let answer = get_with(&gw.url(ANON), &[("x-big", &big)]).await;
        assert_eq!(answer.status, 431, "{}", answer.text());
        assert_eq!(answer.json()["exception"], "PayloadTooLarge");
        let message = answer.json()["message"]
            .as_str()
            .expect("message")
            .to_owned();
        assert!(
            message.starts_with("request headers are ")
                && message.ends_with(" bytes; the limit is 16384"),
            "{message}"
        );
        let fine = "h".repeat(15 * 1024);
        assert_eq!(
            get_with(&gw.url(CUST), &[("x-big", &fine)]).await.status,
            200
        );
    }
    let forwarded = upstream.count();
    assert_eq!(forwarded, 4, "only the accepted requests went upstream");
}

// --- parameters: what goes upstream ------------------------------------------------------

/// (client query, normalised query the upstream must receive; `None` for no query).
fn normalisations() -> Vec<(String, Option<String>)> {
    let mut cases = vec![
        (String::new(), None),
        ("?".into(), None),
        ("?&&".into(), None),
        (
            "?started_from=2023-01-01T00:00:00Z".into(),
            Some("started_from=2023-01-01T00:00:00.000Z".into()),
        ),
        (
            "?started_from=2023-01-01T00:00:00".into(),
            Some("started_from=2023-01-01T00:00:00.000Z".into()),
        ),
        (
            "?started_to=2023-01-01T00:00:00.1Z".into(),
            Some("started_to=2023-01-01T00:00:00.100Z".into()),
        ),
        (
            "?started_to=2023-01-01T00:00:00.123456789Z".into(),
            Some("started_to=2023-01-01T00:00:00.123Z".into()),
        ),
        (
            "?started_from=2023-01-01T01:00:00%2B01:00".into(),
            Some("started_from=2023-01-01T00:00:00.000Z".into()),
        ),
        (
            "?started_from=2022-12-31T23:00:00-01:00".into(),
            Some("started_from=2023-01-01T00:00:00.000Z".into()),
        ),
        (
            "?started_from=2023-01-01T00:00:00.5-00:30".into(),
            Some("started_from=2023-01-01T00:30:00.500Z".into()),
        ),
        (
            "?started_from=2023-01-01T00%3A00%3A00%2B00%3A00".into(),
            Some("started_from=2023-01-01T00:00:00.000Z".into()),
        ),
        (
            "?started_to=2024-02-29T23:59:59.999Z&started_from=2024-02-29T23:59:59.999Z".into(),
            Some(
                "started_from=2024-02-29T23:59:59.999Z&started_to=2024-02-29T23:59:59.999Z".into(),
            ),
        ),
        (
            "?completed_to=2023-01-02T00:00:00Z&completed_from=2023-01-01T00:00:00Z\
             &started_to=2022-01-02T00:00:00Z&started_from=2022-01-01T00:00:00Z"
                .into(),
            Some(
                "started_from=2022-01-01T00:00:00.000Z&started_to=2022-01-02T00:00:00.000Z\
                 &completed_from=2023-01-01T00:00:00.000Z&completed_to=2023-01-02T00:00:00.000Z"
                    .into(),
            ),
        ),
        (
            "?service_types=3,1&service_types=1,2".into(),
            Some("service_types=1,2,3".into()),
        ),
        (
            "?service_types=Sales,8,DeliveringService,008".into(),
            Some("service_types=8,DeliveringService,Sales".into()),
        ),
        ("?active_states".into(), Some("active_states=true".into())),
        (
            "?completed_tasks=TRUE&active_tasks=1&completed_states=True&active_states=true".into(),
            Some(
                "active_states=true&completed_states=true&active_tasks=true&completed_tasks=true"
                    .into(),
            ),
        ),
        (
            "?active_states=false&completed_states=FALSE&active_tasks=0&completed_tasks=False"
                .into(),
            None,
        ),
        (
            "?completed_tasks&active_states=0&active_tasks=tRUe".into(),
            Some("active_tasks=true&completed_tasks=true".into()),
        ),
        (
            "?extensions=b,a&extensions=c".into(),
            Some("extensions=a,b,c".into()),
        ),
        ("?extensions=*".into(), Some("extensions=*".into())),
        (
            "?segment=gold".into(),
            Some("extensions=segment&segment=gold".into()),
        ),
        (
            "?extensions=a&segment=gold&score=85".into(),
            Some("extensions=a,score,segment&segment=gold&score=85".into()),
        ),
        (
            "?extensions=*&segment=gold".into(),
            Some("extensions=*&segment=gold".into()),
        ),
        (
            "?note=hello+world".into(),
            Some("extensions=note&note=hello%20world".into()),
        ),
        (
            "?name=%22Bob%22".into(),
            Some("extensions=name&name=%22Bob%22".into()),
        ),
        (
            "?Service_ID=5".into(),
            Some("extensions=Service_ID&Service_ID=5".into()),
        ),
        (
            "?segment=gold&extensions=x&completed_tasks&active_states=1&service_types=2,1\
             &started_to=2022-01-02T00:00:00Z&started_from=2022-01-01T00:00:00Z"
                .into(),
            Some(
                "started_from=2022-01-01T00:00:00.000Z&started_to=2022-01-02T00:00:00.000Z\
                 &service_types=1,2&active_states=true&completed_tasks=true\
                 &extensions=segment,x&segment=gold"
                    .into(),
            ),
        ),
    ];
    let keys: Vec<String> = (1..=32).map(|i| format!("k{i:02}")).collect();
    let filters: Vec<String> = keys.iter().map(|k| format!("{k}=v")).collect();
    cases.push((
        format!("?{}", filters.join("&")),
        Some(format!(
            "extensions={}&{}",
            keys.join(","),
            filters.join("&")
        )),
    ));
    cases
}

#[tokio::test]
async fn the_upstream_receives_the_normalised_query_on_every_route() {
    let upstream = FakeUpstream::start(Reply::json(200, services_body())).await;
    let gw = start_gateway(&format!("{NO_CACHE}{MAP}"), &[upstream.url()]).await;
    let mut expected = Vec::new();
    for (query, normalised) in normalisations() {
        for route in [ANON, CUST] {
            let path = format!("{route}{query}");
            let answer = get(&gw.url(&path)).await;
            assert_eq!(answer.status, 200, "{path}: {}", answer.text());
            expected.push((route.to_owned(), normalised.clone()));
        }
    }
    // The lifecycle suffix and a history window on /completed.
    for (route, query, normalised) in [
        (
            format!("{ANON}/completed/"),
            "?completed_from=2023-01-01T00:00:00Z",
            Some("completed_from=2023-01-01T00:00:00.000Z".to_owned()),
        ),
        (
            format!("{CUST}/active"),
            "?started_to=2023-01-01T00:00:00Z&active_tasks",
            Some("started_to=2023-01-01T00:00:00.000Z&active_tasks=true".to_owned()),
        ),
    ] {
        let answer = get(&gw.url(&format!("{route}{query}"))).await;
        assert_eq!(answer.status, 200, "{route}{query}");
        expected.push((route.trim_end_matches('/').to_owned(), normalised));
    }
    let seen: Vec<(String, Option<String>)> = upstream
        .requests()
        .into_iter()
        .map(|r| (r.path, r.query))
        .collect();
    assert_eq!(seen.len(), expected.len());
    for (got, want) in seen.iter().zip(&expected) {
        assert_eq!(got, want);
    }
    assert!(upstream.requests().iter().all(|r| r.method == Method::GET));
}

#[tokio::test]
async fn the_cache_fetches_the_broad_query_with_the_extension_set_only() {
    let upstream = FakeUpstream::start(Reply::json(200, services_body())).await;
    let gw = start_gateway(MAP, &[upstream.url()]).await;
    let broad = "active_states=true&completed_states=true&active_tasks=true&completed_tasks=true";
    let cases = [
        (
            format!("{ANON}/active?started_from=2023-01-01T00:00:00Z&service_types=8"),
            broad.to_owned(),
        ),
        (
            format!("{ANON}?segment=gold&extensions=b"),
            format!("{broad}&extensions=b,segment"),
        ),
        (
            format!("{ANON}/completed?extensions=*"),
            format!("{broad}&extensions=*"),
        ),
    ];
    for (path, _) in &cases {
        assert_eq!(get(&gw.url(path)).await.status, 200, "{path}");
    }
    let seen: Vec<(String, Option<String>)> = upstream
        .requests()
        .into_iter()
        .map(|r| (r.path, r.query))
        .collect();
    let want: Vec<(String, Option<String>)> = cases
        .iter()
        .map(|(_, q)| (ANON.to_owned(), Some(q.clone())))
        .collect();
    assert_eq!(seen, want);
}

// --- filtering and trimming ---------------------------------------------------------------

#[tokio::test]
async fn the_gateway_filters_whatever_the_upstream_returns() {
    let (_upstream, cached, uncached) = both_gateways(MAP).await;
    let cases: &[(&str, &str, &[&str])] = &[
        (ANON, "started_from=2023-03-01T12:00:00Z", &[B, E, F]),
        (ANON, "started_to=2023-03-01T12:00:00Z", &[A]),
        (
            ANON,
            "started_from=2023-03-01T13:00:00%2B01:00&started_to=2023-03-03T07:00:00.001Z",
            &[B, E],
        ),
        (ANON, "completed_from=2023-03-02T09:30:00.500Z", &[B, F]),
        (ANON, "completed_to=2023-03-02T09:30:00.500Z", &[]),
        (ANON, "completed_to=2023-03-04T01:00:00Z", &[B]),
        (ANON, "completed_from=2023-01-01T00:00:00Z", &[B, F]),
        (ANON, "service_types=8", &[B, E]),
        (ANON, "service_types=DeliveringService", &[B, E]),
        (ANON, "service_types=1&service_types=3", &[A, F]),
        (ANON, "service_types=Billing,3", &[A, F]),
        (ANON, "service_types=2", &[]),
        (ANON, "segment=gold", &[A, F]),
        (ANON, "score=85", &[A, B, F]),
        (ANON, "score=%2285%22", &[B]),
        (ANON, "tags=gold", &[E]),
        (ANON, "tags=vip", &[A]),
        (ANON, "segment=gold&score=85", &[A, F]),
        (ANON, "segment=silver&service_types=DeliveringService", &[B]),
        (ANON, "extensions=*&segment=gold", &[A, F]),
        (ANON, "nosuch=1", &[]),
        (CUST, "", &[A, B, C, D, E, F]),
        (
            CUST,
            "started_from=2023-03-02T07:00:00Z&started_to=2023-03-03T07:00:00Z",
            &[C],
        ),
        (CUST, "started_from=2023-03-02T08:00:00%2B01:00", &[C, E, F]),
        (CUST, "started_to=2023-03-01T00:00:00Z", &[D]),
        (CUST, "completed_from=2023-03-01T00:00:00Z", &[B, D, F]),
        (CUST, "completed_to=2023-03-02T09:30:00.501Z", &[B, D]),
        (CUST, "service_types=2", &[C, D]),
        (CUST, "service_types=Sales", &[C, D]),
        (CUST, "segment=gold", &[A, C, F]),
        (CUST, "score=85", &[A, B, C, F]),
        (CUST, "tags=gold", &[D, E]),
    ];
    let suffixed: &[(&str, &str, &str, &[&str])] = &[
        (
            ANON,
            "/completed",
            "completed_from=2023-03-03T00:00:00Z",
            &[F],
        ),
        (ANON, "/active", "started_from=2023-03-02T00:00:00Z", &[E]),
        (
            ANON,
            "/completed",
            "score=85&started_from=2023-03-02T00:00:00Z",
            &[F],
        ),
        (CUST, "/active", "service_types=8&tags=silver", &[E]),
        (
            CUST,
            "/completed",
            "started_to=2023-03-04T00:00:00Z",
            &[B, D],
        ),
    ];
    let all = cases
        .iter()
        .map(|(route, query, want)| (*route, "", *query, *want))
        .chain(suffixed.iter().copied());
    for (route, suffix, query, want) in all {
        for (name, gw) in [("cached", &cached), ("uncached", &uncached)] {
            let path = format!("{route}{suffix}?{query}");
            let answer = get(&gw.url(&path)).await;
            assert_eq!(answer.status, 200, "{name} {path}: {}", answer.text());
            assert_eq!(ids(&answer), want, "{name} {path}");
        }
    }
}

#[tokio::test]
async fn untouched_services_pass_byte_for_byte_with_64_bit_ids_and_key_order() {
    let (_upstream, cached, uncached) = both_gateways(MAP).await;
    for gw in [&cached, &uncached] {
        // Services without sections come back exactly as the upstream wrote them.
        let answer = get(&gw.url(&format!("{CUST}/completed?service_types=Sales"))).await;
        assert_eq!(answer.text(), format!("[{SD}]"));
        let answer = get(&gw.url(&format!("{ANON}/completed?segment=gold"))).await;
        assert_eq!(answer.text(), format!("[{SF}]"));
        // With every section asked for, only the states' nested task arrays go.
        let all = "active_states&completed_states&active_tasks&completed_tasks";
        let answer = get(&gw.url(&format!("{ANON}/active?{all}&tags=vip"))).await;
        let want_a = SA
            .replace(
                r#","active_tasks":[{"task_id":70}],"completed_tasks":[{"task_id":71}]}]"#,
                "}]",
            )
            .replace(r#","completed_tasks":[{"task_id":60}]}]"#, "}]");
        assert_eq!(answer.text(), format!("[{want_a}]"));
        // No flags: the sections go, everything else (64-bit IDs, unknown fields) stays.
        let answer = get(&gw.url(&format!("{ANON}?service_types=8"))).await;
        assert_eq!(
            answer.text(),
            concat!(
                r#"[{"service_id":9007199254740993,"contact_key":"+1 408 832 7799","service_type":"DeliveringService","started":{"timestamp":"2023-03-01T12:00:00"},"completed":{"timestamp":"2023-03-02T09:30:00.5","disposition":"resolved"},"duration":77400000,"segment":"silver","score":"85","x_unknown":{"z":1,"a":[1.5,-0.25,true,null]}},"#,
                r#"{"service_id":18446744073709551615,"contact_key":"+1 408 832 7799","service_type":8,"started":{"timestamp":"2023-03-03 07:00:00"},"tags":["gold","silver"],"score":90}]"#
            )
        );
    }
}

#[tokio::test]
async fn each_of_the_16_flag_combinations_trims_exactly() {
    let (_upstream, cached, uncached) = both_gateways(MAP).await;
    let input = services_value();
    let anonymous = |s: &&Value| s.get("customer_id").is_none();
    for n in 0..16 {
        let flags = combination(n);
        let query = flag_query(flags);
        // Bare keys and `1` mean true too; `0` false.
        let spelled: Vec<String> = SECTIONS
            .iter()
            .zip(flags)
            .map(|(name, on)| {
                if on {
                    (*name).to_owned()
                } else {
                    format!("{name}=0")
                }
            })
            .collect();
        let spelled = spelled.join("&");
        for (route, keep) in [(ANON, true), (CUST, false)] {
            let want: Vec<Value> = input
                .iter()
                .filter(|s| !keep || anonymous(s))
                .map(|s| trimmed(s, flags))
                .collect();
            let want = serde_json::to_string(&want).expect("serialises");
            for (name, gw) in [("cached", &cached), ("uncached", &uncached)] {
                for q in [&query, &spelled] {
                    let path = format!("{route}?{q}");
                    let answer = get(&gw.url(&path)).await;
                    assert_eq!(answer.status, 200, "{name} {path}");
                    assert_eq!(answer.text(), want, "{name} {path}");
                    for service in answer.json().as_array().expect("array") {
                        assert_sections(service, flags, &format!("{name} {path}"));
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn sections_asked_for_but_absent_upstream_are_empty_arrays() {
    let (_upstream, cached, uncached) = both_gateways(MAP).await;
    for gw in [&cached, &uncached] {
        let answer = get(&gw.url(&format!(
            "{CUST}/completed?service_types=Sales&active_states&completed_tasks=1"
        )))
        .await;
        let want = format!(
            "[{}]",
            SD.strip_suffix('}').expect("object").to_owned()
                + r#","active_states":[],"completed_tasks":[]}"#
        );
        assert_eq!(answer.text(), want);
        // A `null` section counts as absent and becomes [] where it stood.
        let answer = get(&gw.url(&format!("{ANON}/active?tags=silver&active_states"))).await;
        assert_eq!(
            answer.text(),
            r#"[{"service_id":18446744073709551615,"contact_key":"+1 408 832 7799","service_type":8,"started":{"timestamp":"2023-03-03 07:00:00"},"tags":["gold","silver"],"score":90,"active_states":[]}]"#
        );
    }
}

#[tokio::test]
async fn an_unreadable_timestamp_excludes_a_service_only_from_date_filtered_answers() {
    let body = r#"[{"service_id":1,"started":{"timestamp":"yesterday"}},{"service_id":2,"started":{"timestamp":"2023-01-01T00:00:00"}},{"service_id":3},{"service_id":4,"started":{"timestamp":20230101}}]"#;
    let upstream = FakeUpstream::start(Reply::json(200, body)).await;
    let cached = start_gateway("", &[upstream.url()]).await;
    let uncached = start_gateway(NO_CACHE, &[upstream.url()]).await;
    for gw in [&cached, &uncached] {
        for route in [ANON, CUST] {
            let all = get(&gw.url(route)).await;
            assert_eq!(ids(&all), ["1", "2", "3", "4"], "{route}");
            let dated = get(&gw.url(&format!("{route}?started_from=2022-01-01T00:00:00Z"))).await;
            assert_eq!(ids(&dated), ["2"], "{route}");
        }
    }
}

// --- path parameters and encoding -------------------------------------------------------

#[tokio::test]
async fn a_percent_encoded_contact_key_reaches_the_upstream_canonically_encoded() {
    let upstream = FakeUpstream::start(Reply::json(200, services_body())).await;
    let uncached = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let cases = [
        ("%2B1%20408%20832%207799", "%2B1%20408%20832%207799"),
        // A literal '+' in a path is a plus; lower-case escapes become upper-case.
        ("+1%20408%20832%207799", "%2B1%20408%20832%207799"),
        ("%2b1%20408%20832%207799", "%2B1%20408%20832%207799"),
        ("caf%C3%A9", "caf%C3%A9"),
        ("a.b_c-d~e", "a.b_c-d~e"),
        ("%61%62c", "abc"),
        ("x@y.com", "x%40y.com"),
        ("a%3Db%3Dc", "a%3Db%3Dc"),
    ];
    for (raw, canonical) in cases {
        for (suffix, route) in [
            ("", ""),
            ("/active", "/active"),
            ("/completed/", "/completed"),
        ] {
            let answer =
                get(&uncached.url(&format!("{CS}/services/anonymous/{raw}{suffix}"))).await;
            assert_eq!(answer.status, 200, "{raw}{suffix}");
            let last = upstream.requests().pop().expect("forwarded");
            assert_eq!(
                last.path,
                format!("{CS}/services/anonymous/{canonical}{route}")
            );
        }
        let answer = get(&uncached.url(&format!("{CS}/customers/{raw}/services/active"))).await;
        assert_eq!(answer.status, 200, "{raw}");
        let last = upstream.requests().pop().expect("forwarded");
        assert_eq!(
            last.path,
            format!("{CS}/customers/{canonical}/services/active")
        );
    }

    // Through the cache: the broad fetch carries the same canonical path.
    let cached_upstream = FakeUpstream::start(Reply::json(200, services_body())).await;
    let cached = start_gateway("", &[cached_upstream.url()]).await;
    let answer = get(&cached.url(&format!(
        "{CS}/services/anonymous/%2B1%20408%20832%207799/active"
    )))
    .await;
    assert_eq!(ids(&answer), [A, E]);
    let seen = cached_upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].path,
        format!("{CS}/services/anonymous/%2B1%20408%20832%207799")
    );
}

#[tokio::test]
async fn contact_keys_named_like_a_lifecycle_keep_their_path_through_the_cache() {
    let (upstream, cached, uncached) = both_gateways("").await;
    let mut allowed = Vec::new();
    for key in ["active", "completed"] {
        for suffix in ["", "/active", "/completed"] {
            allowed.push(format!("{CS}/services/anonymous/{key}{suffix}"));
            for gw in [&cached, &uncached] {
                let answer = get(&gw.url(&format!("{CS}/services/anonymous/{key}{suffix}"))).await;
                assert_eq!(answer.status, 200, "{key}{suffix}");
            }
        }
    }
    let seen = upstream.requests();
    assert_eq!(
        seen.len(),
        2 + 6,
        "one broad fetch per key, and every uncached request"
    );
    for request in seen {
        assert!(allowed.contains(&request.path), "went to {}", request.path);
    }
}

// --- headers ------------------------------------------------------------------------------

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn header(recorded: &Recorded, name: &str) -> Option<String> {
    recorded
        .headers
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
}

/// A gateway-generated request id: a per-process random prefix and a counter, each
/// 16 hex digits.
fn is_generated_id(text: &str) -> bool {
    text.split('-').map(str::len).collect::<Vec<_>>() == [16, 16]
        && text.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

#[tokio::test]
async fn tenant_auth_trace_and_request_id_headers_are_forwarded_on_every_route_kind() {
    let upstream = FakeUpstream::start(Reply::json(200, services_body())).await;
    let cached = start_gateway("", &[upstream.url()]).await;
    let uncached = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let sent = [
        ("ContactCenterId", "tenant-1"),
        ("GroupId", "bu-7"),
        ("Authorization", "Basic dXNlcjpwYXNz"),
        ("traceparent", TRACEPARENT),
        ("Accept", "application/json"),
        ("X-Request-Id", "req-123"),
    ];
    let paths = [
        format!("{ANON}/active"),
        format!("{CUST}/completed"),
        format!("{CS}/services/42/states"),
    ];
    for gw in [&cached, &uncached] {
        for path in &paths {
            let before = upstream.count();
            let answer = get_with(&gw.url(path), &sent).await;
            assert_eq!(answer.status, 200, "{path}");
            assert_eq!(answer.header("x-request-id").as_deref(), Some("req-123"));
            assert_eq!(upstream.count(), before + 1, "{path}: one request upstream");
            let got = upstream.requests().pop().expect("forwarded");
            if std::ptr::eq(gw, &cached) && path.starts_with(ANON) {
                // A cache fill sends fixed headers, whoever fills (issue 20.6): the
                // tenant, the credential, the request id; no trace context and no
                // forwarding headers of the filling client.
                for (name, value) in sent {
                    let expected = (name != "traceparent").then_some(value);
                    assert_eq!(header(&got, name).as_deref(), expected, "{name} on fill");
                }
                assert_eq!(header(&got, "x-forwarded-for"), None);
                continue;
            }
            for (name, value) in sent {
                assert_eq!(
                    header(&got, name).as_deref(),
                    Some(value),
                    "{name} on {path}"
                );
            }
            assert_eq!(
                header(&got, "x-forwarded-for").as_deref(),
                Some("127.0.0.1")
            );
            assert_eq!(header(&got, "x-forwarded-proto").as_deref(), Some("http"));
        }
    }
    // A different tenant is a different cache entry: it is fetched with its own headers.
    let before = upstream.count();
    let answer = get_with(
        &cached.url(&format!("{ANON}/active")),
        &[("ContactCenterId", "tenant-2")],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.count(), before + 1);
    let got = upstream.requests().pop().expect("forwarded");
    assert_eq!(header(&got, "contactcenterid").as_deref(), Some("tenant-2"));
    assert_eq!(header(&got, "groupid"), None);
}

#[tokio::test]
async fn a_request_id_is_generated_when_absent_or_insane_echoed_and_forwarded() {
    let upstream = FakeUpstream::start(Reply::json(200, services_body())).await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let long = "r".repeat(129);
    let cases: [&[(&str, &str)]; 4] = [
        &[],
        &[("x-request-id", "has space")],
        &[("x-request-id", long.as_str())],
        &[("x-request-id", "")],
    ];
    let mut seen_ids = Vec::new();
    for path in [
        CUST.to_owned(),
        format!("{CS}/services/42/tasks"),
        "/nowhere".to_owned(),
    ] {
        for headers in cases {
            let before = upstream.count();
            let answer = get_with(&gw.url(&path), headers).await;
            let id = answer.header("x-request-id").expect("echoed");
            assert!(is_generated_id(&id), "{id:?} for {headers:?}");
            if path != "/nowhere" {
                assert_eq!(upstream.count(), before + 1);
                let got = upstream.requests().pop().expect("forwarded");
                assert_eq!(header(&got, "x-request-id"), Some(id.clone()));
            } else {
                assert_eq!(answer.status, 404);
            }
            seen_ids.push(id);
        }
    }
    seen_ids.sort();
    seen_ids.dedup();
    assert_eq!(seen_ids.len(), 12, "every generated id is new");
    // Sane ids, including a 128-character one, are kept.
    let sane = "a".repeat(128);
    for id in [
        "abc-123",
        "550e8400-e29b-41d4-a716-446655440000",
        sane.as_str(),
    ] {
        let answer = get_with(&gw.url(CUST), &[("x-request-id", id)]).await;
        assert_eq!(answer.header("x-request-id").as_deref(), Some(id));
        let got = upstream.requests().pop().expect("forwarded");
        assert_eq!(header(&got, "x-request-id").as_deref(), Some(id));
    }
    // Gateway-made errors carry it too.
    let answer = get_with(
        &gw.url(&format!("{CUST}?active_states=x")),
        &[("x-request-id", "err-1")],
    )
    .await;
    assert_eq!(
        (answer.status, answer.header("x-request-id").as_deref()),
        (400, Some("err-1"))
    );
}

#[tokio::test]
async fn forwarding_headers_append_to_a_trusted_proxys_and_replace_anyone_elses() {
    let upstream = FakeUpstream::start(Reply::json(200, services_body())).await;
    let trusted = start_gateway(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[cache]\nenabled = false\n",
        &[upstream.url()],
    )
    .await;
    let untrusted = start_gateway(NO_CACHE, &[upstream.url()]).await;
    for (gw, expected) in [(&trusted, "10.0.0.1, 127.0.0.1"), (&untrusted, "127.0.0.1")] {
        for path in [CUST.to_owned(), format!("{CS}/services/42/states")] {
            let answer = get_with(&gw.url(&path), &[("x-forwarded-for", "10.0.0.1")]).await;
            assert_eq!(answer.status, 200);
            let got = upstream.requests().pop().expect("forwarded");
            assert_eq!(
                header(&got, "x-forwarded-for").as_deref(),
                Some(expected),
                "{path}"
            );
        }
    }
}

const HOP_REQUEST: [(&str, &str); 6] = [
    ("connection", "x-hop"),
    ("x-hop", "1"),
    ("keep-alive", "timeout=5"),
    ("te", "trailers"),
    ("proxy-authorization", "Basic Zm9vOmJhcg=="),
    ("x-end-to-end", "kept"),
];

fn hop_reply(status: u16, body: &str) -> Reply {
    Reply::json(status, body)
        .with_header("connection", "x-hop-resp")
        .with_header("x-hop-resp", "1")
        .with_header("keep-alive", "timeout=5")
        .with_header("proxy-authenticate", "Basic realm=\"cs\"")
        .with_header("x-end-resp", "kept")
        .with_header("etag", "\"v1\"")
}

#[track_caller]
fn assert_no_hop_headers(headers: &http::HeaderMap, names: &[&str], context: &str) {
    for name in names {
        assert!(
            !headers.contains_key(*name),
            "{name} passed ({context}): {headers:?}"
        );
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let upstream = FakeUpstream::start(hop_reply(200, &services_body())).await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let request_hops = ["x-hop", "keep-alive", "te", "proxy-authorization"];
    let response_hops = ["x-hop-resp", "keep-alive", "proxy-authenticate"];

    // Proxied: everything end-to-end passes, hop-by-hop does not.
    for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
        let answer = send(
            method.clone(),
            &gw.url(&format!("{CS}/services/42/tasks")),
            &HOP_REQUEST,
            "{}",
        )
        .await;
        assert_eq!(answer.status, 200, "{method}");
        let got = upstream.requests().pop().expect("forwarded");
        assert_eq!(header(&got, "x-end-to-end").as_deref(), Some("kept"));
        assert_no_hop_headers(&got.headers, &request_hops, &format!("{method} upstream"));
        assert_eq!(header(&got, "connection"), None, "{method}");
        assert_eq!(answer.header("x-end-resp").as_deref(), Some("kept"));
        assert_eq!(answer.header("etag").as_deref(), Some("\"v1\""));
        assert_no_hop_headers(&answer.headers, &response_hops, &format!("{method} client"));
    }
    // Query routes: hop-by-hop never goes upstream; an upstream error keeps its end-to-end
    // headers and loses its hop-by-hop ones.
    upstream.set_default(hop_reply(400, NOT_FOUND_BODY));
    for path in [CUST.to_owned(), format!("{CS}/services/42")] {
        let answer = get_with(&gw.url(&path), &HOP_REQUEST).await;
        assert_eq!(
            (answer.status, answer.text()),
            (400, NOT_FOUND_BODY.to_owned())
        );
        let got = upstream.requests().pop().expect("forwarded");
        assert_no_hop_headers(&got.headers, &request_hops, &path);
        assert_eq!(
            answer.header("x-end-resp").as_deref(),
            Some("kept"),
            "{path}"
        );
        assert_no_hop_headers(&answer.headers, &response_hops, &path);
    }
}

// --- Query Service by ID -------------------------------------------------------------------

#[tokio::test]
async fn service_by_id_validates_the_flags_and_trims_the_single_object() {
    let upstream = FakeUpstream::start(Reply::json(200, SA)).await;
    let gw = start_gateway("", &[upstream.url()]).await;
    let sa: Value = serde_json::from_str(SA).expect("fixture");
    for n in 0..16 {
        let flags = combination(n);
        let path = format!("{CS}/services/{A}?{}", flag_query(flags));
        let answer = get(&gw.url(&path)).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(
            answer.text(),
            serde_json::to_string(&trimmed(&sa, flags)).expect("serialises"),
            "{path}"
        );
        assert_sections(&answer.json(), flags, &path);
        let got = upstream.requests().pop().expect("forwarded");
        assert_eq!(got.path, format!("{CS}/services/{A}"));
        let want_query: Vec<String> = SECTIONS
            .iter()
            .zip(flags)
            .filter(|(_, on)| *on)
            .map(|(name, _)| format!("{name}=true"))
            .collect();
        let want_query = (!want_query.is_empty()).then(|| want_query.join("&"));
        assert_eq!(got.query, want_query, "{path}");
    }
    // Other parameters are forwarded as written, after the normalised flags.
    let answer = get(&gw.url(&format!(
        "{CS}/services/42/?foo=bar&completed_states=1&x=%20+y&active_tasks=FALSE"
    )))
    .await;
    assert_eq!(answer.status, 200);
    let got = upstream.requests().pop().expect("forwarded");
    assert_eq!(got.path, format!("{CS}/services/42"));
    assert_eq!(
        got.query.as_deref(),
        Some("completed_states=true&foo=bar&x=%20+y")
    );

    let count = upstream.count();
    for (query, message) in [
        ("active_states=maybe", not_boolean("active_states", "maybe")),
        ("completed_tasks=", not_boolean("completed_tasks", "")),
        (
            "x=1&active_tasks&active_tasks=1",
            "parameter 'active_tasks' is given more than once".to_owned(),
        ),
        (
            "completed_states=%G0",
            "parameter 'completed_states': '%G0' has a malformed percent escape".to_owned(),
        ),
    ] {
        let answer = get(&gw.url(&format!("{CS}/services/42?{query}"))).await;
        assert_cs_error(&answer, 400, "InvalidParameter", &message, query);
    }
    assert_eq!(
        upstream.count(),
        count,
        "refused requests never go upstream"
    );
}

#[tokio::test]
async fn service_by_id_passes_upstream_errors_and_refuses_a_non_object() {
    let upstream =
        FakeUpstream::start(Reply::json(400, NOT_FOUND_BODY).with_header("x-upstream", "gms-1"))
            .await;
    let gw = start_gateway("", &[upstream.url()]).await;
    let answer = get(&gw.url(&format!("{CS}/services/361-a3f0?active_states=true"))).await;
    assert_eq!(
        (answer.status, answer.text()),
        (400, NOT_FOUND_BODY.to_owned())
    );
    assert_eq!(answer.header("x-upstream").as_deref(), Some("gms-1"));
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/json")
    );

    upstream.set_default(Reply::json(
        403,
        r#"{"message":"denied","exception":"Forbidden"}"#,
    ));
    let answer = get(&gw.url(&format!("{CS}/services/1"))).await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (403, r#"{"message":"denied","exception":"Forbidden"}"#)
    );

    upstream.set_default(Reply::json(200, format!("[{SA}]")));
    let answer = get(&gw.url(&format!("{CS}/services/1"))).await;
    assert_cs_error(
        &answer,
        502,
        "UpstreamInvalidResponse",
        "the Context Services upstream sent an invalid response: expected a JSON service object, got an array",
        "array for a single service",
    );
}

// --- transparent proxying --------------------------------------------------------------------

fn binary_body(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i * 7 % 256) as u8).collect::<Vec<u8>>())
}

#[tokio::test]
async fn writes_are_proxied_byte_for_byte_with_status_and_headers() {
    let upstream = FakeUpstream::start(Reply::json(200, "{}")).await;
    for toml in ["", NO_CACHE] {
        let gw = start_gateway(toml, &[upstream.url()]).await;
        let cases = [
            (
                Method::POST,
                "/services/start?x=1&y=%2F+z",
                Bytes::from_static(
                    br#"{"contact_key":"+1 408 832 7799","service_type":1, "x":[1.50]}"#,
                ),
            ),
            (Method::POST, "/services/42/end", binary_body(3000)),
            (
                Method::PUT,
                "/services/42",
                Bytes::from_static(br#"{"ttl":60}"#),
            ),
            (
                Method::PUT,
                "/services/42/extensions/cart/merge",
                Bytes::from_static(br#"{"items":2}"#),
            ),
            (Method::DELETE, "/services/42", Bytes::new()),
            (Method::POST, "/customers/ABC1234/services/42", Bytes::new()),
            (
                Method::GET,
                "/services/42/states/active?state_types=1,2&active_tasks=yes",
                Bytes::new(),
            ),
            (
                Method::PATCH,
                "/metadata/business-attributes",
                Bytes::from_static(b"odd"),
            ),
        ];
        for (status, (method, rest, body)) in [201u16, 204, 200, 200, 200, 200, 200, 202]
            .into_iter()
            .zip(cases)
        {
            let reply_body = if status == 204 {
                String::new()
            } else {
                format!(r#"{{"service_id":9007199254740993,"s":{status}}}"#)
            };
            upstream.push(
                Reply::json(status, reply_body.clone())
                    .with_header("location", "/genesys/1/cs/services/9007199254740993")
                    .with_header("x-gms-node", "n1")
                    .with_header("set-cookie", "JSESSIONID=abc; Path=/"),
            );
            let answer = send(
                method.clone(),
                &gw.url(&format!("{CS}{rest}")),
                &[
                    ("content-type", "application/json;charset=UTF-8"),
                    ("ContactCenterId", "t1"),
                    ("x-custom", "c"),
                ],
                body.clone(),
            )
            .await;
            let context = format!("{method} {rest}");
            assert_eq!(
                (answer.status, answer.text()),
                (status, reply_body),
                "{context}"
            );
            assert_eq!(
                answer.header("location").as_deref(),
                Some("/genesys/1/cs/services/9007199254740993"),
                "{context}"
            );
            assert_eq!(
                answer.header("x-gms-node").as_deref(),
                Some("n1"),
                "{context}"
            );
            assert_eq!(
                answer.header("set-cookie").as_deref(),
                Some("JSESSIONID=abc; Path=/"),
                "{context}"
            );
            assert_eq!(
                answer.header("content-type").as_deref(),
                Some("application/json"),
                "{context}"
            );
            let got = upstream.requests().pop().expect("forwarded");
            let (path, query) = match rest.split_once('?') {
                Some((p, q)) => (p, Some(q.to_owned())),
                None => (rest, None),
            };
            assert_eq!(
                (got.method.clone(), got.path.clone(), got.query.clone()),
                (method.clone(), format!("{CS}{path}"), query),
                "{context}"
            );
            assert_eq!(got.body, body, "{context}");
            assert_eq!(
                header(&got, "content-type").as_deref(),
                Some("application/json;charset=UTF-8"),
                "{context}"
            );
            assert_eq!(
                header(&got, "contactcenterid").as_deref(),
                Some("t1"),
                "{context}"
            );
            assert_eq!(header(&got, "x-custom").as_deref(), Some("c"), "{context}");
        }
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_large_chunked_body_is_streamed_through_unchanged() {
    let upstream = FakeUpstream::start(Reply::json(201, r#"{"service_id":7}"#)).await;
    for toml in ["", NO_CACHE] {
        let gw = start_gateway(toml, &[upstream.url()]).await;
        let body = binary_body(900 * 1024);
        for rest in [
            "/services/start",
            "/services/7/end",
            "/services/7/extensions/blob",
        ] {
            let chunks: Vec<Bytes> = body.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
            let method = if rest.ends_with("blob") {
                Method::PUT
            } else {
                Method::POST
            };
            let answer =
                send_chunked(method.clone(), &gw.url(&format!("{CS}{rest}")), &[], chunks).await;
            assert_eq!(
                (answer.status, answer.text().as_str()),
                (201, r#"{"service_id":7}"#),
                "{rest}"
            );
            let got = upstream.requests().pop().expect("forwarded");
            assert_eq!(
                (got.method, got.path.as_str()),
                (method, format!("{CS}{rest}").as_str())
            );
            assert_eq!(got.body.len(), body.len(), "{rest}");
            assert!(got.body == body, "{rest}: body changed in transit");
        }
    }
}

#[tokio::test]
async fn upstream_errors_pass_through_untouched_on_every_route_kind() {
    let upstream = FakeUpstream::start(Reply::Full(
        400,
        vec![(
            "content-type".into(),
            "application/json;charset=UTF-8".into(),
        )],
        Bytes::from_static(NOT_FOUND_BODY.as_bytes()),
    ))
    .await;
    let cached = start_gateway("", &[upstream.url()]).await;
    let uncached = start_gateway(NO_CACHE, &[upstream.url()]).await;
    for gw in [&cached, &uncached] {
        for (method, path) in [
            (Method::POST, format!("{CS}/services/361-a3f0/end")),
            (Method::PUT, format!("{CS}/services/361-a3f0")),
            (Method::DELETE, format!("{CS}/services/361-a3f0")),
            (Method::GET, format!("{CS}/services/361-a3f0/tasks")),
            (Method::GET, format!("{ANON}/active?segment=gold")),
            (Method::GET, format!("{CUST}/completed")),
            (Method::GET, format!("{CS}/services/361-a3f0")),
        ] {
            let answer = send(method.clone(), &gw.url(&path), &[], Bytes::new()).await;
            assert_eq!(
                (answer.status, answer.text()),
                (400, NOT_FOUND_BODY.to_owned()),
                "{method} {path}"
            );
            assert_eq!(
                answer.header("content-type").as_deref(),
                Some("application/json;charset=UTF-8"),
                "{method} {path}"
            );
        }
    }
    // A 5xx from the only upstream is passed through as well (not replaced).
    upstream.set_default(Reply::json(
        500,
        r#"{"message":"boom","exception":"java.lang.NullPointerException"}"#,
    ));
    for path in [CUST.to_owned(), format!("{CS}/services/1/states")] {
        let answer = get(&uncached.url(&path)).await;
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (
                500,
                r#"{"message":"boom","exception":"java.lang.NullPointerException"}"#
            ),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_in_cs_shape() {
    let upstream = FakeUpstream::start(Reply::json(201, r#"{"service_id":1}"#)).await;
    let message = "request body is larger than the limit of 1024 bytes";
    for toml in [
        "[server]\nmax_body_bytes = 1024\n",
        "[server]\nmax_body_bytes = 1024\n[cache]\nenabled = false\n",
    ] {
        let gw = start_gateway(toml, &[upstream.url()]).await;
        for rest in ["/services/start", "/services/5/end"] {
            let url = gw.url(&format!("{CS}{rest}"));
            // At the limit: through.
            let answer = send(Method::POST, &url, &[], binary_body(1024)).await;
            assert_eq!(answer.status, 201, "{rest}");
            assert_eq!(
                upstream.requests().pop().expect("forwarded").body.len(),
                1024
            );
            // Declared over the limit: refused before anything goes upstream.
            let before = upstream.count();
            let answer = send(Method::POST, &url, &[], binary_body(1025)).await;
            assert_cs_error(&answer, 413, "PayloadTooLarge", message, rest);
            assert_eq!(upstream.count(), before, "{rest}");
            // Chunked, found over the limit while streaming.
            let chunks: Vec<Bytes> = (0..4).map(|_| binary_body(512)).collect();
            let answer = send_chunked(Method::POST, &url, &[], chunks).await;
            assert_cs_error(&answer, 413, "PayloadTooLarge", message, rest);
        }
    }
}

// --- upstream failures -----------------------------------------------------------------------

#[track_caller]
fn assert_no_address(answer: &Answer, upstream: &str) {
    let port = upstream.rsplit(':').next().expect("port");
    let text = answer.text();
    assert!(
        !text.contains("127.0.0.1") && !text.contains(port),
        "address leaked: {text}"
    );
}

#[tokio::test]
async fn a_body_that_is_not_an_array_of_objects_is_502() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let cached = start_gateway("", &[upstream.url()]).await;
    let uncached = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let prefix = "the Context Services upstream sent an invalid response: ";
    for (body, detail) in [
        (
            "<html>oops</html>",
            "not JSON: expected value at line 1 column 1",
        ),
        (
            r#"{"services":[]}"#,
            "expected a JSON array of services, got an object",
        ),
        (
            r#"[{"service_id":1},2]"#,
            "element 1 of the service array is a number, not an object",
        ),
        (
            r#"[{"service_id":1}"#,
            "not JSON: EOF while parsing a list at line 1 column 17",
        ),
        ("", "not JSON: EOF while parsing a value at line 1 column 0"),
    ] {
        upstream.set_default(Reply::json(200, body));
        for gw in [&cached, &uncached] {
            for path in [ANON.to_owned(), format!("{ANON}/active"), CUST.to_owned()] {
                let answer = get(&gw.url(&path)).await;
                assert_cs_error(
                    &answer,
                    502,
                    "UpstreamInvalidResponse",
                    &format!("{prefix}{detail}"),
                    &format!("{body} {path}"),
                );
                assert_no_address(&answer, &upstream.url());
            }
        }
    }
}

#[tokio::test]
async fn a_refused_connection_is_502_upstream_unavailable() {
    let dead = refused_url().await;
    let cached = start_gateway("", std::slice::from_ref(&dead)).await;
    let uncached = start_gateway(NO_CACHE, std::slice::from_ref(&dead)).await;
    for gw in [&cached, &uncached] {
        for (method, path) in [
            (Method::GET, ANON.to_owned()),
            (Method::GET, format!("{CUST}/active")),
            (Method::GET, format!("{CS}/services/42")),
            (Method::POST, format!("{CS}/services/start")),
        ] {
            let answer = send(method.clone(), &gw.url(&path), &[], "{}").await;
            assert_cs_error(
                &answer,
                502,
                "UpstreamUnavailable",
                "the Context Services upstream is unavailable",
                &format!("{method} {path}"),
            );
            assert_no_address(&answer, &dead);
        }
    }
}

#[tokio::test]
async fn a_slow_upstream_is_504_upstream_timeout() {
    let slow = Reply::Delay(
        Duration::from_secs(3),
        Box::new(Reply::json(200, services_body())),
    );
    let upstream = FakeUpstream::start(slow).await;
    let timeout = "[upstream]\nrequest_timeout = \"200ms\"\n";
    let cached = start_gateway(timeout, &[upstream.url()]).await;
    let uncached = start_gateway(&format!("{timeout}{NO_CACHE}"), &[upstream.url()]).await;
    for gw in [&cached, &uncached] {
        for (method, path) in [
            (Method::GET, ANON.to_owned()),
            (Method::GET, format!("{CUST}/completed")),
            (Method::GET, format!("{CS}/services/42")),
            (Method::POST, format!("{CS}/services/42/end")),
        ] {
            let started = Instant::now();
            let answer = send(method.clone(), &gw.url(&path), &[], "{}").await;
            let took = started.elapsed();
            assert_cs_error(
                &answer,
                504,
                "UpstreamTimeout",
                "the Context Services upstream did not answer in time",
                &format!("{method} {path}"),
            );
            assert_no_address(&answer, &upstream.url());
            assert!(
                took < Duration::from_secs(2),
                "{method} {path} took {took:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_503_answer_is_passed_through_not_retried_and_a_post_never_is() {
    let busy = r#"{"message":"busy","exception":"Unavailable"}"#;
    for toml in ["", NO_CACHE] {
        for path in [
            CUST.to_owned(),
            format!("{ANON}/active"),
            format!("{CS}/services/42/states"),
        ] {
            // Something was received: the client gets it, not a second upstream's answer.
            let first = FakeUpstream::start(Reply::json(503, busy)).await;
            let second = FakeUpstream::start(Reply::json(200, services_body())).await;
            let gw = start_gateway(toml, &[first.url(), second.url()]).await;
            let answer = get(&gw.url(&path)).await;
            assert_eq!(
                (answer.status, answer.text().as_str()),
                (503, busy),
                "{toml} {path}"
            );
            assert_eq!((first.count(), second.count()), (1, 0), "{toml} {path}");
        }
        let first = FakeUpstream::start(Reply::json(503, busy)).await;
        let second = FakeUpstream::start(Reply::json(503, busy)).await;
        let gw = start_gateway(toml, &[first.url(), second.url()]).await;
        let answer = send(
            Method::POST,
            &gw.url(&format!("{CS}/services/start")),
            &[],
            r#"{"contact_key":"k"}"#,
        )
        .await;
        assert_eq!((answer.status, answer.text().as_str()), (503, busy));
        assert_eq!(first.count() + second.count(), 1, "a POST is sent once");
    }
}

#[tokio::test]
async fn a_read_is_retried_after_a_refused_connection_on_every_route_kind() {
    let dead = refused_url().await;
    for toml in ["", NO_CACHE] {
        for (method, path) in [
            (Method::GET, CUST.to_owned()),
            (Method::GET, ANON.to_owned()),
            (Method::GET, format!("{CS}/services/{F}")),
            (Method::GET, format!("{CS}/services/42/states")),
            (Method::HEAD, format!("{CS}/services/42/states")),
        ] {
            // By ID and proxied paths answer one object, Query Services an array.
            let body = if path.contains("/services/") && !path.contains("/anonymous/") {
                SF.to_owned()
            } else {
                format!("[{SF}]")
            };
            let live = FakeUpstream::start(Reply::json(200, body.clone())).await;
            let gw = start_gateway(toml, &[dead.clone(), live.url()]).await;
            let answer = send(method.clone(), &gw.url(&path), &[], Bytes::new()).await;
            let want = if method == Method::HEAD {
                String::new()
            } else {
                body
            };
            assert_eq!(
                (answer.status, answer.text()),
                (200, want),
                "{toml} {method} {path}"
            );
            assert_eq!(live.count(), 1, "{toml} {method} {path}");
        }
    }
}

#[tokio::test]
async fn with_503_in_retry_on_a_read_is_retried_and_gets_the_last_answer() {
    let busy = r#"{"message":"busy","exception":"Unavailable"}"#;
    let toml =
        format!("{NO_CACHE}\n[upstream]\nretry_on = [\"connect-failure\", \"503\", \"502\"]\n");
    for path in [CUST.to_owned(), format!("{CS}/services/42/states")] {
        let first = FakeUpstream::start(Reply::json(503, busy)).await;
        let second = FakeUpstream::start(Reply::json(502, busy)).await;
        let gw = start_gateway(&toml, &[first.url(), second.url()]).await;
        let answer = get(&gw.url(&path)).await;
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (502, busy),
            "{path}"
        );
        assert_eq!((first.count(), second.count()), (1, 1), "{path}");
    }
}

/// Attached data nested 10,000 deep (arrays and objects alternating): the gateway never
/// looks inside it, so no route refuses it.
fn deep_value() -> String {
    format!("{}1{}", r#"[{"d":"#.repeat(5_000), "}]".repeat(5_000))
}

#[tokio::test]
async fn attached_data_nested_10000_deep_is_served_on_every_route() {
    let deep = deep_value();
    let started = r#""started":{"timestamp":"2023-03-01T10:00:00Z"}"#;
    let completed = r#""completed":{"timestamp":"2023-03-01T11:00:00Z"}"#;
    // Sections last, so that an answer without them is the service's first part.
    let active = format!(
        r#"{{"service_id":"da","contact_key":"k","service_type":1,{started},"attached":{deep}"#
    );
    let states = format!(
        r#","active_states":[{{"state_id":1,"attached":{deep},"active_tasks":[{{"task_id":2}}]}}]}}"#
    );
    let done = format!(
        r#"{{"service_id":"db","contact_key":"k",{started},{completed},"attached":{deep}}}"#
    );
    let customers = format!(
        r#"{{"customer_id":"C1","service_id":"dc",{started},{completed},"attached":{deep}}}"#
    );
    let upstream_body = format!("[{active}{states},{done},{customers}]");
    let upstream = FakeUpstream::start(Reply::json(200, upstream_body)).await;
    let cached = start_gateway("", &[upstream.url()]).await;
    let uncached = start_gateway(NO_CACHE, &[upstream.url()]).await;

    let da = format!("{active}}}");
    let cust = "/genesys/1/cs/customers/C1/services";
    let cases = [
        (ANON.to_owned(), format!("[{da},{done}]")),
        (format!("{ANON}/active"), format!("[{da}]")),
        (format!("{ANON}/completed"), format!("[{done}]")),
        (cust.to_owned(), format!("[{da},{done},{customers}]")),
        (format!("{cust}/active"), format!("[{da}]")),
        (format!("{cust}/completed"), format!("[{done},{customers}]")),
        // The state keeps its attached data and loses its nested tasks; a section asked
        // for but absent is an empty array.
        (
            format!("{ANON}?active_states=true"),
            format!(
                r#"[{active},"active_states":[{{"state_id":1,"attached":{deep}}}]}},{},"active_states":[]}}]"#,
                &done[..done.len() - 1]
            ),
        ),
    ];
    for (name, gw) in [("cached", &cached), ("uncached", &uncached)] {
        for (path, want) in &cases {
            let answer = get(&gw.url(path)).await;
            assert_eq!(answer.status, 200, "{name} {path}");
            let text = answer.text();
            let at = text
                .bytes()
                .zip(want.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            assert!(
                text == *want,
                "{name} {path}: wrong body from byte {at}: {:?} vs {:?}",
                &text[at.saturating_sub(40)..(at + 40).min(text.len())],
                &want[at.saturating_sub(40)..(at + 40).min(want.len())]
            );
        }
    }
    // The anonymous answers above were one broad fetch, then hits on the stored entry.
    let hit = get(&cached.url(ANON)).await;
    assert_eq!(hit.status, 200);
    assert!(
        hit.header("cache-status")
            .unwrap_or_default()
            .contains("hit"),
        "{:?}",
        hit.header("cache-status")
    );
    assert!(hit.text() == cases[0].1, "cached hit: wrong body");

    let by_id = FakeUpstream::start(Reply::json(200, format!("{active}{states}"))).await;
    let gw = start_gateway("", &[by_id.url()]).await;
    let answer = get(&gw.url(&format!("{CS}/services/da"))).await;
    assert_eq!(answer.status, 200);
    assert!(answer.text() == da, "by id: wrong body");
    let answer = get(&gw.url(&format!("{CS}/services/da?active_states=true"))).await;
    assert_eq!(answer.status, 200);
    let with_states = format!(r#"{active},"active_states":[{{"state_id":1,"attached":{deep}}}]}}"#);
    assert!(
        answer.text() == with_states,
        "by id with states: wrong body"
    );
}
