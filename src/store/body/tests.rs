//! Unit tests of body parsing.

use super::*;
use crate::query::{date, TypeMap};
use serde_json::json;

struct NoMaps;
impl Attributes for NoMaps {
    fn map(&self, _: &str) -> Option<&TypeMap> {
        None
    }
}

struct ServiceTypes(TypeMap);
impl Attributes for ServiceTypes {
    fn map(&self, attribute: &str) -> Option<&TypeMap> {
        (attribute == "service_type").then_some(&self.0)
    }
}

fn now() -> DateTime<Utc> {
    date::parse_param("2024-01-02T03:04:05.678Z").expect("valid")
}

fn message(error: ApiError) -> String {
    error.to_string()
}

#[test]
fn service_start_splits_documented_fields_from_extensions() {
    let body = json!({
        "zeta": 1,
        "contact_key": "408-832-7799",
        "service_type": 8,
        "session_id": "s1",
        "timestamp": "2024-01-02T04:04:05+01:00",
        "media_type": "voice",
        "est_duration": 600,
        "ttl": 3600,
        "alpha": {"nested": true},
    });
    let start = service_start(body, &NoMaps, now()).expect("valid");
    assert_eq!(start.contact_key.as_deref(), Some("408-832-7799"));
    assert_eq!(start.customer_id, None);
    assert_eq!(start.service_type, Some(json!(8)));
    assert_eq!(start.est_duration, Some(600));
    assert_eq!(start.expiry, Some(Expiry::Ttl(3600)));
    assert_eq!(
        Value::Object(start.event.fields),
        json!({"timestamp": "2024-01-02T03:04:05.000Z", "session_id": "s1", "media_type": "voice"})
    );
    let keys: Vec<&str> = start.extensions.keys().map(String::as_str).collect();
    assert_eq!(keys, ["zeta", "alpha"]);
}

#[test]
fn timestamp_defaults_to_now() {
    let start = service_start(json!({"customer_id": "c"}), &NoMaps, now()).expect("valid");
    assert_eq!(start.event.at, now());
    assert_eq!(start.event.fields["timestamp"], "2024-01-02T03:04:05.678Z");
}

#[test]
fn refusals_name_the_field() {
    let cases = [
        (json!({}), "field 'customer_id': a service needs a customer_id or a contact_key"),
        (json!([1]), "field 'body': must be a JSON object, not an array"),
        (json!({"customer_id": 5}), "field 'customer_id': must be a string, not a number"),
        (json!({"customer_id": ""}), "field 'customer_id': is empty"),
        (
            json!({"contact_key": "408\u{92}832"}),
            "field 'contact_key': contains a control character",
        ),
        (
            json!({"customer_id": "é".repeat(129)}),
            "field 'customer_id': is 258 bytes; the limit is 256",
        ),
        (
            json!({"customer_id": "c", "timestamp": "2023-02-30T00:00:00Z"}),
            "field 'timestamp': '2023-02-30T00:00:00Z' is not a valid date-time: no such date or time",
        ),
        (
            json!({"customer_id": "c", "session_id": "x".repeat(33)}),
            "field 'session_id': is longer than 32 characters",
        ),
        (
            json!({"customer_id": "c", "interaction_id": "x".repeat(51)}),
            "field 'interaction_id': is longer than 50 characters",
        ),
        (
            json!({"customer_id": "c", "disposition_desc": "x".repeat(65)}),
            "field 'disposition_desc': is longer than 64 characters",
        ),
        (
            json!({"customer_id": "c", "est_duration": -1}),
            "field 'est_duration': must be a non-negative integer, not a number",
        ),
        (
            json!({"customer_id": "c", "ttl": "10"}),
            "field 'ttl': must be a non-negative integer, not a string",
        ),
        (
            json!({"customer_id": "c", "ttl": 1, "expiration_time": "2030-01-01T00:00:00Z"}),
            "field 'ttl': give either 'ttl' or 'expiration_time', not both",
        ),
        (
            json!({"customer_id": "c", "service_type": true}),
            "field 'service_type': must be a string or an integer, not a boolean",
        ),
        (
            json!({"customer_id": "c", "duration": 5}),
            "field 'duration': cannot be set in this request",
        ),
    ];
    for (body, expected) in cases {
        let got = service_start(body.clone(), &NoMaps, now())
            .map(|_| ())
            .map_err(message);
        assert_eq!(got, Err(expected.to_owned()), "body {body}");
    }
}

#[test]
fn configured_maps_refuse_unknown_names_only() {
    let attrs = ServiceTypes(TypeMap::new([("DeliveringService".to_owned(), 8)]));
    let ok = service_start(
        json!({"customer_id": "c", "service_type": "DeliveringService"}),
        &attrs,
        now(),
    );
    assert!(ok.is_ok());
    let ok = service_start(
        json!({"customer_id": "c", "service_type": 99}),
        &attrs,
        now(),
    );
    assert!(ok.is_ok());
    let err = service_start(
        json!({"customer_id": "c", "service_type": "Nope"}),
        &attrs,
        now(),
    )
    .map(|_| ())
    .map_err(message);
    assert_eq!(
        err,
        Err("field 'service_type': 'Nope' is not a configured service_type name".to_owned())
    );
    // No map for media_type: any name goes.
    assert!(service_start(
        json!({"customer_id": "c", "media_type": "pigeon"}),
        &attrs,
        now()
    )
    .is_ok());
}

#[test]
fn transition_names_nested_fields() {
    let t = transition(
        json!({"from": {"state_id": 2, "disposition": "done", "x": 1}, "to": {"state_type": 8, "y": 2}}),
        &NoMaps,
        now(),
    )
    .expect("valid");
    assert_eq!(t.from_state_id, 2);
    assert_eq!(t.end.outcome.disposition, Some(json!("done")));
    assert_eq!(
        t.end.extensions,
        json!({"x": 1}).as_object().cloned().expect("object")
    );
    assert_eq!(t.start.item_type, Some(json!(8)));
    let cases = [
        (json!({"to": {}}), "field 'from': is required"),
        (
            json!({"from": {}, "to": {}}),
            "field 'from.state_id': is required",
        ),
        (
            json!({"from": {"state_id": "1"}, "to": {}}),
            "field 'from.state_id': must be a positive integer, not a string",
        ),
        (
            json!({"from": {"state_id": 1}, "to": 3}),
            "field 'to': must be a JSON object, not a number",
        ),
        (
            json!({"from": {"state_id": 1}, "to": {"timestamp": 3}}),
            "field 'to.timestamp': must be an ISO 8601 date-time string, not a number",
        ),
    ];
    for (body, expected) in cases {
        let got = transition(body.clone(), &NoMaps, now())
            .map(|_| ())
            .map_err(message);
        assert_eq!(got, Err(expected.to_owned()), "body {body}");
    }
}

#[test]
fn expiry_update_needs_exactly_one_field() {
    assert_eq!(
        expiry_update(json!({"ttl": 5}), &NoMaps).ok(),
        Some(Some(Expiry::Ttl(5)))
    );
    assert_eq!(
        expiry_update(json!({"ttl": null}), &NoMaps).ok(),
        Some(None)
    );
    assert!(expiry_update(json!({}), &NoMaps).is_err());
    assert!(expiry_update(json!({"ttl": 5, "other": 1}), &NoMaps).is_err());
}

#[test]
fn merge_is_shallow_and_needs_objects() {
    let merged = merge(
        "x",
        Some(json!({"a": 1, "b": {"c": 1}})),
        json!({"b": {"d": 2}, "e": 3}),
    );
    assert_eq!(merged.ok(), Some(json!({"a": 1, "b": {"d": 2}, "e": 3})));
    assert_eq!(
        merge("x", None, json!({"a": 1})).ok(),
        Some(json!({"a": 1}))
    );
    assert!(merge("x", Some(json!([1])), json!({"a": 1})).is_err());
    assert!(merge("x", Some(json!({})), json!(5)).is_err());
}

#[test]
fn empty_body_is_an_empty_object() {
    assert_eq!(json(b"").ok(), Some(json!({})));
    assert_eq!(json(b" \n").ok(), Some(json!({})));
    assert!(json(b"{").is_err());
    assert!(json_value(b"").is_err());
}
