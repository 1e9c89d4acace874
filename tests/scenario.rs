//! The README's session scenario, through the real binary with its embedded store: a
//! caller from 408-832-7799 gets an anonymous service and a "waiting for agent" state,
//! rings back and is found by contact key, is identified as ABC1234, completes; then
//! the process restarts on the same database file and finds everything again.
#![cfg(unix)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use common::process::{json_logs, Process};
use common::*;

const TENANT: (&str, &str) = ("ContactCenterId", "cc-1");
const JSON: (&str, &str) = ("Content-Type", "application/json");

async fn post(process: &Process, path: &str, body: Value) -> Answer {
    send(
        Method::POST,
        &process.url(path),
        &[TENANT, JSON],
        Bytes::from(body.to_string()),
    )
    .await
}

async fn query(process: &Process, path: &str) -> Value {
    let answer = get_with(&process.url(path), &[TENANT]).await;
    assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    answer.json()
}

fn config(db: &std::path::Path) -> String {
    json_logs(&format!("[store]\ndb = \"{}\"\n", db.display()))
}

#[tokio::test]
async fn caller_rings_back_is_identified_completes_and_survives_a_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let db = data.path().join("store.sqlite");
    let mut process = Process::start(&config(&db), &[]).await;
    let cs = "/genesys/1/cs";

    // The IVR starts an anonymous service for the caller's number.
    let started = post(
        &process,
        &format!("{cs}/services/start"),
        json!({"contact_key": "408-832-7799", "service_type": 1, "media_type": "voice", "reason": "new wireless account"}),
    )
    .await;
    assert_eq!(started.status, 201, "{}", started.text());
    let service_id = started.json()["service_id"].clone();
    assert!(service_id.is_i64(), "{service_id}");

    // The caller waits for an agent (state type 4).
    let state = post(
        &process,
        &format!("{cs}/services/{service_id}/states/start"),
        json!({"state_type": 4}),
    )
    .await;
    assert_eq!(state.status, 201, "{}", state.text());
    let state_id = state.json()["state_id"].clone();

    // The call drops; the caller rings back from the same number and is found.
    let found = query(
        &process,
        &format!(
            "{cs}/services/anonymous/408-832-7799/active?active_states=true&extensions=reason"
        ),
    )
    .await;
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(found[0]["service_id"], service_id);
    assert_eq!(found[0]["reason"], "new wireless account");
    assert_eq!(found[0]["active_states"][0]["state_id"], state_id);
    assert_eq!(found[0]["active_states"][0]["state_type"], 4);
    // Ringing back again is answered from the cache (same extension set, any variant).
    let again = get_with(
        &process.url(&format!(
            "{cs}/services/anonymous/408-832-7799?extensions=reason"
        )),
        &[TENANT],
    )
    .await;
    let cache_status = again.header("cache-status").unwrap_or_default();
    assert!(
        cache_status.starts_with("csgate; hit; ttl="),
        "{cache_status}"
    );
    assert_eq!(again.json()[0]["service_id"], service_id);

    // The agent identifies the caller as customer ABC1234.
    let associated = post(
        &process,
        &format!("{cs}/customers/ABC1234/services/{service_id}"),
        json!({}),
    )
    .await;
    assert!(
        (200..300).contains(&associated.status),
        "{}",
        associated.text()
    );
    let anonymous = query(
        &process,
        &format!("{cs}/services/anonymous/408-832-7799/active"),
    )
    .await;
    assert_eq!(anonymous, json!([]), "no longer anonymous");
    let customer = query(&process, &format!("{cs}/customers/ABC1234/services")).await;
    assert_eq!(customer[0]["service_id"], service_id);
    assert_eq!(customer[0]["customer_id"], "ABC1234");

    // The service completes and moves to the completed list.
    let completed = post(
        &process,
        &format!("{cs}/services/{service_id}/end"),
        json!({"disposition": 1}),
    )
    .await;
    assert_eq!(completed.status, 204, "{}", completed.text());
    assert_eq!(
        query(&process, &format!("{cs}/customers/ABC1234/services/active")).await,
        json!([])
    );
    let history = query(
        &process,
        &format!("{cs}/customers/ABC1234/services/completed"),
    )
    .await;
    assert_eq!(history[0]["service_id"], service_id);
    assert!(history[0]["completed"]["timestamp"].is_string());

    // Restart on the same database file.
    process.signal("TERM");
    assert_eq!(
        process.exit_within(Duration::from_secs(20)).await.code(),
        Some(0)
    );
    let process = Process::start(&config(&db), &[]).await;
    let after = query(
        &process,
        &format!("{cs}/customers/ABC1234/services/completed?completed_states=false"),
    )
    .await;
    assert_eq!(after, history, "the same history after a restart");
    let tenant_less = get(&process.url(&format!("{cs}/customers/ABC1234/services"))).await;
    assert_eq!(tenant_less.json(), json!([]), "another tenant sees nothing");
}

#[tokio::test]
async fn an_acknowledged_write_survives_kill_9() {
    let data = tempfile::tempdir().expect("tempdir");
    let db = data.path().join("store.sqlite");
    let mut process = Process::start(&config(&db), &[]).await;
    let started = post(
        &process,
        "/genesys/1/cs/services/start",
        json!({"contact_key": "555-0100", "service_type": 2}),
    )
    .await;
    assert_eq!(started.status, 201);
    process.signal("KILL");
    let _ = process.exit_within(Duration::from_secs(20)).await;

    let process = Process::start(&config(&db), &[]).await;
    let found = query(&process, "/genesys/1/cs/services/anonymous/555-0100").await;
    assert_eq!(found[0]["service_id"], started.json()["service_id"]);
}
