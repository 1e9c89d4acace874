//! End-to-end smoke: the documented example through the gateway.
mod common;

use common::*;

const SERVICES: &str = r#"[
 {"customer_id":"ABC1234","service_id":4692834,"service_type":1,"est_duration":86400,
  "started":{"timestamp":"2009-05-07T12:05:20.157"},
  "active_states":[{"state_id":5005,"state_type":8,"started":{"timestamp":"2009-05-07T12:08:53.298"},"active_tasks":[]}],
  "completed_states":[],"x_unknown":{"b":1,"a":2}},
 {"customer_id":"ABC1234","service_id":9007199254740993,"service_type":2,
  "started":{"timestamp":"2009-05-01T00:00:00Z"},"completed":{"timestamp":"2009-05-02T00:00:00Z"}}
]"#;

#[tokio::test]
async fn documented_example_is_filtered_and_trimmed() {
    let upstream = FakeUpstream::start(Reply::json(200, SERVICES)).await;
    let gw = start_gateway("", &[upstream.url()]).await;
    let answer =
        get(&gw.url("/genesys/1/cs/customers/ABC1234/services/active?active_states=true")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.text(),
        r#"[{"customer_id":"ABC1234","service_id":4692834,"service_type":1,"est_duration":86400,"started":{"timestamp":"2009-05-07T12:05:20.157"},"active_states":[{"state_id":5005,"state_type":8,"started":{"timestamp":"2009-05-07T12:08:53.298"}}],"x_unknown":{"b":1,"a":2}}]"#
    );
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].path,
        "/genesys/1/cs/customers/ABC1234/services/active"
    );
    assert_eq!(seen[0].query.as_deref(), Some("active_states=true"));
    assert!(answer.header("x-request-id").is_some());
    gw.stop().await;
}

#[tokio::test]
async fn every_number_keeps_its_text_and_a_client_cannot_claim_https() {
    let body = r#"[{"service_id":123456789012345678901234567890,"big":1e400,"f":1E2,"neg":-0,"x":0.10000000000000000555,"started":{"timestamp":"2024-01-01T00:00:00Z"}}]"#;
    let upstream = FakeUpstream::start(Reply::json(200, body)).await;
    let gw = start_gateway("", &[upstream.url()]).await;
    let answer = get_with(
        &gw.url("/genesys/1/cs/customers/C1/services"),
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    // Every number keeps its exact text, exponents included: the post-filter copies the
    // upstream's bytes (issue 12; the tree filter respelled `1E2` as `1e+2`).
    assert_eq!(answer.text(), body);
    let seen = &upstream.requests()[0];
    assert_eq!(
        seen.headers.get("x-forwarded-proto").map(|v| v.as_bytes()),
        Some(&b"http"[..])
    );
}

#[tokio::test]
async fn anonymous_answers_say_bypass_when_the_cache_is_disabled() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway("[cache]\nenabled = false\n", &[upstream.url()]).await;
    let anonymous = get(&gw.url("/genesys/1/cs/services/anonymous/k1/active")).await;
    assert_eq!(anonymous.status, 200);
    assert_eq!(
        anonymous.header("cache-status").as_deref(),
        Some("csgate; fwd=bypass")
    );
    let customer = get(&gw.url("/genesys/1/cs/customers/c1/services")).await;
    assert_eq!(
        customer.header("cache-status"),
        None,
        "customer routes are not cached"
    );
}
