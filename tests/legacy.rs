//! The gateway's post-filter end to end: the same journeys are written into a normal
//! store and a legacy store (which ignores every query parameter, returns all sections
//! and extensions and nests tasks in states). Through the gateway, every query gets the
//! same answer from both, with the cache on and off.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use common::*;
use csgate::query::SERVICE_FIELDS;
use csgate::store::StoreConfig;

async fn start_store(dir: &std::path::Path, legacy: bool) -> store::TestStore {
    store::TestStore::serve(StoreConfig {
        db: dir.join(if legacy {
            "legacy.sqlite"
        } else {
            "normal.sqlite"
        }),
        legacy,
        business_attributes: BTreeMap::new(),
        sweep_interval: Duration::ZERO,
        max_body_bytes: csgate::config::defaults::STORE_MAX_BODY_BYTES,
        max_memory_bytes: csgate::config::defaults::STORE_MAX_MEMORY_BYTES,
    })
    .await
}

const TENANT: (&str, &str) = ("ContactCenterId", "cc-9");

async fn write(gateway: &TestGateway, path: &str, body: Value) -> Value {
    let answer = send(
        Method::POST,
        &gateway.url(&format!("/genesys/1/cs{path}")),
        &[TENANT, ("Content-Type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await;
    assert!(
        (200..300).contains(&answer.status),
        "{path}: {} {}",
        answer.status,
        answer.text()
    );
    if answer.body.is_empty() {
        Value::Null
    } else {
        answer.json()
    }
}

/// The same journeys, with explicit timestamps so both stores hold identical data.
async fn seed(gateway: &TestGateway) {
    let journeys = [
        (
            "408-832-7799",
            1,
            "2024-03-01T10:00:00.000Z",
            Some("2024-03-01T10:30:00.000Z"),
            None,
            json!({"segment": "gold", "score": 85}),
        ),
        (
            "408-832-7799",
            2,
            "2024-03-02T09:00:00.000Z",
            None,
            None,
            json!({"segment": "silver", "tags": ["vip", "loyal"]}),
        ),
        (
            "408-832-7799",
            3,
            "2024-03-03T08:00:00.000Z",
            None,
            Some("ABC1234"),
            json!({"segment": "gold", "score": "85"}),
        ),
        (
            "408-832-7799",
            1,
            "2024-03-04T07:00:00.000Z",
            Some("2024-03-05T07:00:00.000Z"),
            None,
            json!({"score": 70}),
        ),
        (
            "555-0100",
            2,
            "2024-03-05T12:00:00.000Z",
            None,
            None,
            json!({"segment": "gold"}),
        ),
    ];
    for (contact_key, service_type, started, completed, customer, extensions) in journeys {
        let mut body =
            json!({"contact_key": contact_key, "service_type": service_type, "timestamp": started});
        for (k, v) in extensions.as_object().expect("object") {
            body[k] = v.clone();
        }
        let id = write(gateway, "/services/start", body).await["service_id"].clone();
        let state = write(
            gateway,
            &format!("/services/{id}/states/start"),
            json!({"state_type": 4, "timestamp": started}),
        )
        .await["state_id"]
            .clone();
        write(
            gateway,
            &format!("/services/{id}/tasks/start"),
            json!({"task_type": 9, "state_id": state, "timestamp": started}),
        )
        .await;
        if let Some(customer) = customer {
            write(
                gateway,
                &format!("/customers/{customer}/services/{id}"),
                json!({}),
            )
            .await;
        }
        if let Some(completed) = completed {
            write(
                gateway,
                &format!("/services/{id}/states/{state}/end"),
                json!({"timestamp": completed}),
            )
            .await;
            write(
                gateway,
                &format!("/services/{id}/end"),
                json!({"timestamp": completed}),
            )
            .await;
        }
    }
}

/// Each query, and the attached-data names it asks for (by `extensions` or as a
/// filter key; `*` for all).
const QUERIES: [(&str, &[&str]); 16] = [
    ("/services/anonymous/408-832-7799", &[]),
    ("/services/anonymous/408-832-7799/active", &[]),
    ("/services/anonymous/408-832-7799/completed", &[]),
    ("/services/anonymous/408-832-7799?active_states=true&completed_states=true", &[]),
    ("/services/anonymous/408-832-7799?active_tasks=true&completed_tasks=1", &[]),
    ("/services/anonymous/408-832-7799/active?active_states&active_tasks", &[]),
    ("/services/anonymous/408-832-7799?started_from=2024-03-02T00:00:00Z", &[]),
    ("/services/anonymous/408-832-7799?started_to=2024-03-02T09:00:00Z", &[]),
    (
        "/services/anonymous/408-832-7799?completed_from=2024-03-01T00:00:00Z&completed_to=2024-03-02T00:00:00Z",
        &[],
    ),
    ("/services/anonymous/408-832-7799?service_types=2,1", &[]),
    ("/services/anonymous/408-832-7799?segment=gold", &["segment"]),
    ("/services/anonymous/408-832-7799?score=85&extensions=segment", &["score", "segment"]),
    ("/services/anonymous/408-832-7799?tags=vip", &["tags"]),
    ("/services/anonymous/408-832-7799?extensions=*", &["*"]),
    ("/customers/ABC1234/services?active_states=true&extensions=score", &["score"]),
    ("/customers/ABC1234/services/completed", &[]),
];

/// A legacy backend returns attached data nobody named, and the contract passes
/// top-level keys through untouched (the gateway cannot tell attached data from an
/// unknown field). Compare the documented fields and the attached data asked for.
fn asked_for(answer: Value, names: &[&str]) -> Value {
    let services = answer.as_array().expect("a JSON array").clone();
    Value::Array(
        services
            .into_iter()
            .map(|mut service| {
                let object = service.as_object_mut().expect("an object");
                object.retain(|key, _| {
                    SERVICE_FIELDS.contains(&key.as_str())
                        || names.contains(&"*")
                        || names.contains(&key.as_str())
                });
                service
            })
            .collect(),
    )
}

#[tokio::test]
async fn a_legacy_backend_answers_like_a_faithful_one_through_the_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let normal_store = start_store(dir.path(), false).await;
    let legacy_store = start_store(dir.path(), true).await;
    let (normal, legacy) = (normal_store.url(), legacy_store.url());
    for cache in ["true", "false"] {
        let toml = format!("[cache]\nenabled = {cache}\n");
        let via_normal = start_gateway(&toml, std::slice::from_ref(&normal)).await;
        let via_legacy = start_gateway(&toml, std::slice::from_ref(&legacy)).await;
        if cache == "true" {
            seed(&via_normal).await;
            seed(&via_legacy).await;
        }
        let mut answered = 0;
        for (query, names) in QUERIES {
            let a = get_with(&via_normal.url(&format!("/genesys/1/cs{query}")), &[TENANT]).await;
            let b = get_with(&via_legacy.url(&format!("/genesys/1/cs{query}")), &[TENANT]).await;
            assert_eq!(a.status, 200, "{query}: {}", a.text());
            assert_eq!(b.status, 200, "{query}: {}", b.text());
            assert_eq!(
                asked_for(a.json(), names),
                asked_for(b.json(), names),
                "{query} (cache {cache}): the legacy answer differs after post-filtering"
            );
            answered += usize::from(a.json().as_array().is_some_and(|a| !a.is_empty()));
        }
        assert!(answered >= 12, "only {answered} queries found services");
    }

    // The legacy store really does ignore the query: straight from it, the anonymous
    // /active route still returns the associated service and nested tasks.
    let raw = get_with(
        &format!("{legacy}/genesys/1/cs/services/anonymous/408-832-7799/active"),
        &[TENANT],
    )
    .await
    .json();
    let raw = raw.as_array().expect("array");
    assert!(
        raw.iter().any(|s| s.get("customer_id").is_some()),
        "{raw:?}"
    );
    assert!(raw
        .iter()
        .any(|s| s["active_states"][0].get("active_tasks").is_some()));
}
