//! Issue 10, items 4 and 5: a write the gateway cannot attribute to keys invalidates
//! only the writer's tenant, and aliased ids (`+7`, `007`, an empty tenant header)
//! invalidate what they alias. The real gateway in-process before a fake upstream.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::Method;

use common::*;

const KEY: &str = "408-832-7799";
const LOOKUP: &str = "/genesys/1/cs/services/anonymous/408-832-7799";

/// GETs answer one service (numeric id 7) whose `version` counts the writes so far;
/// a start answers 201 with service id 7, every other write 204.
async fn versioned_upstream() -> (FnUpstream, Arc<AtomicU64>) {
    let version = Arc::new(AtomicU64::new(1));
    let v = version.clone();
    let upstream = FnUpstream::start(move |request| {
        if request.method == Method::GET {
            let version = v.load(Ordering::SeqCst);
            return Reply::json(
                200,
                format!(
                    r#"[{{"service_id":7,"service_type":1,"started":{{"timestamp":"2024-03-01T10:00:00.000Z"}},"version":{version}}}]"#
                ),
            );
        }
        v.fetch_add(1, Ordering::SeqCst);
        if request.path.ends_with("/services/start") {
            Reply::json(201, r#"{"service_id":7}"#)
        } else {
            Reply::json(204, "")
        }
    })
    .await;
    (upstream, version)
}

/// The `Cache-Status` without the `ttl` (the clock is real).
fn status_of(answer: &Answer) -> String {
    let status = answer.header("cache-status").unwrap_or_default();
    match status.split_once("; ttl=") {
        Some((head, _)) => head.to_owned(),
        None => status,
    }
}

fn version_of(answer: &Answer) -> u64 {
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()[0]["version"].as_u64().expect("version")
}

const HIT: &str = "csgate; hit";
const MISS: &str = "csgate; fwd=uri-miss; stored";

#[tokio::test]
async fn a_maintenance_write_flushes_only_the_writers_tenant() {
    let (upstream, _) = versioned_upstream().await;
    let gw = start_gateway("", &[upstream.url()]).await;
    let lookup = gw.url(LOOKUP);
    let tenants: [&[(&str, &str)]; 4] = [
        &[("ContactCenterId", "victim")],
        &[("ContactCenterId", "writer")],
        &[("ContactCenterId", "writer"), ("GroupId", "g")],
        &[],
    ];
    for tenant in tenants {
        assert_eq!(status_of(&get_with(&lookup, tenant).await), MISS);
        assert_eq!(status_of(&get_with(&lookup, tenant).await), HIT);
    }
    let purge = send(
        Method::POST,
        &gw.url("/genesys/1/cs/maintenance/purge"),
        &[("ContactCenterId", "writer")],
        "{}".to_owned(),
    )
    .await;
    assert_eq!(purge.status, 204, "{}", purge.text());
    // The writer's partition (ContactCenterId + GroupId) is refetched …
    assert_eq!(
        status_of(&get_with(&lookup, &[("ContactCenterId", "writer")]).await),
        MISS
    );
    // … and no other tenant's entry, not even another group of the same centre.
    for tenant in [tenants[0], tenants[2], tenants[3]] {
        assert_eq!(
            status_of(&get_with(&lookup, tenant).await),
            HIT,
            "{tenant:?}"
        );
    }
}

#[tokio::test]
async fn aliased_service_ids_invalidate_the_service_they_name() {
    let (upstream, _) = versioned_upstream().await;
    let gw = start_gateway("", &[upstream.url()]).await;
    let lookup = gw.url(LOOKUP);
    let tenant = [("ContactCenterId", "t1")];
    for alias in ["+7", "007", "%2B7", "7"] {
        let before = get_with(&lookup, &tenant).await;
        if status_of(&before) != MISS {
            assert_eq!(status_of(&before), HIT, "before {alias}");
        }
        let path = gw.url(&format!("/genesys/1/cs/services/{alias}/end"));
        let written = send(Method::POST, &path, &tenant, "{}".to_owned()).await;
        assert_eq!(written.status, 204, "{alias}: {}", written.text());
        let after = get_with(&lookup, &tenant).await;
        assert_eq!(status_of(&after), MISS, "a write to service {alias}");
        assert_eq!(version_of(&after), version_of(&before) + 1, "{alias}");
    }
}

#[tokio::test]
async fn an_empty_tenant_header_is_no_tenant_to_the_key_the_write_and_the_upstream() {
    let (upstream, _) = versioned_upstream().await;
    let gw = start_gateway("", &[upstream.url()]).await;
    let lookup = gw.url(LOOKUP);
    let empty = [("ContactCenterId", ""), ("GroupId", "")];
    let first = get_with(&lookup, &empty).await;
    assert_eq!(status_of(&first), MISS);
    // The same entry as no header at all.
    assert_eq!(status_of(&get_with(&lookup, &[]).await), HIT);
    // A start with empty tenant headers invalidates the no-tenant entry.
    let start = send(
        Method::POST,
        &gw.url("/genesys/1/cs/services/start"),
        &empty,
        format!(r#"{{"contact_key":"{KEY}","service_type":1}}"#),
    )
    .await;
    assert_eq!(start.status, 201, "{}", start.text());
    let after = get_with(&lookup, &[]).await;
    assert_eq!(status_of(&after), MISS);
    assert_eq!(version_of(&after), version_of(&first) + 1);
    // And the upstream never saw an empty tenant header: it read the same tenant.
    for request in upstream.requests() {
        for name in ["contactcenterid", "groupid"] {
            assert!(
                !request.headers.contains_key(name),
                "{} {} carried {name}",
                request.method,
                request.path
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_write_leaves_other_tenants_fetches_in_flight() {
    let upstream = FakeUpstream::start(Reply::Gate(Box::new(Reply::json(
        200,
        r#"[{"service_id":"1","service_type":1,"started":{"timestamp":"2024-03-01T10:00:00.000Z"}}]"#,
    ))))
    .await;
    let gw = start_gateway("", &[upstream.url()]).await;
    let lookup = gw.url(LOOKUP);
    let victim = tokio::spawn({
        let lookup = lookup.clone();
        async move { get_with(&lookup, &[("ContactCenterId", "victim")]).await }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while upstream.count() == 0 {
        assert!(std::time::Instant::now() < deadline, "no upstream request");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    upstream.push(Reply::json(204, ""));
    let purge = send(
        Method::POST,
        &gw.url("/genesys/1/cs/maintenance/purge"),
        &[("ContactCenterId", "writer")],
        "{}".to_owned(),
    )
    .await;
    assert_eq!(purge.status, 204, "{}", purge.text());
    upstream.release();
    let answer = victim.await.expect("victim request");
    assert_eq!(
        status_of(&answer),
        MISS,
        "the victim's fetch is still stored"
    );
    assert_eq!(
        status_of(&get_with(&lookup, &[("ContactCenterId", "victim")]).await),
        HIT
    );
    assert_eq!(upstream.count(), 2, "the victim's lookup and the purge");
}
