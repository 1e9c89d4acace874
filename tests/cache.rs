//! The anonymous-lookup cache (gateway contract §3), end to end: the real gateway
//! in-process in front of fake upstreams, time moved by a `ManualClock`.
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Value};

use common::*;
use csgate::cache::ManualClock;
use csgate::identity::ContactKey;
use csgate::pipeline::{Cached, Owner, Validated};
use csgate::query::params::{self, Limits};
use csgate::query::{Lifecycle, TypeMap};

const KEY: &str = "408-832-7799";
const KEY_PATH: &str = "/genesys/1/cs/services/anonymous/408-832-7799";
const BROAD: &str =
    "active_states=true&completed_states=true&active_tasks=true&completed_tasks=true";

/// A realistic answer for one contact key, as a legacy backend that ignores the query
/// returns it: anonymous and customer services, active and completed, states, tasks,
/// extensions of several shapes, non-canonical timestamps, a 64-bit id.
const SERVICES: &str = r#"[
 {"service_id":"383-aaa","service_type":1,"contact_key":"408-832-7799","est_duration":600,
  "started":{"timestamp":"2024-03-01T10:00:00.000Z","session_id":"s1","media_type":1001},
  "active_states":[{"state_id":1,"state_type":4,"started":{"timestamp":"2024-03-01T10:00:05.000Z"},
     "active_tasks":[{"task_id":11,"task_type":2,"started":{"timestamp":"2024-03-01T10:00:06.000Z"}}]}],
  "completed_states":[{"state_id":0,"state_type":1,"started":{"timestamp":"2024-03-01T10:00:00.100Z"},
     "completed":{"timestamp":"2024-03-01T10:00:04.000Z"}}],
  "active_tasks":[{"task_id":11,"task_type":2,"state_id":1,"started":{"timestamp":"2024-03-01T10:00:06.000Z"}}],
  "completed_tasks":[],
  "segment":"gold","score":85,"tags":["vip","callback"],"x_unknown":{"b":1,"a":2}},
 {"service_id":9007199254740993,"service_type":"billing","contact_key":"408-832-7799",
  "started":{"timestamp":"2024-02-01T09:00:00"},"completed":{"timestamp":"2024-02-01T10:30:00.5+01:00"},
  "duration":1800500,"disposition":1,"disposition_desc":"resolved",
  "completed_states":[{"state_id":3,"state_type":8,"started":{"timestamp":"2024-02-01T09:05:00.000Z"},
     "completed":{"timestamp":"2024-02-01T09:29:00.000Z"},"completed_tasks":[{"task_id":31}]}],
  "completed_tasks":[{"task_id":31,"task_type":5,"started":{"timestamp":"2024-02-01T09:06:00.000Z"},
     "completed":{"timestamp":"2024-02-01T09:20:00.000Z"}}],
  "segment":"silver","score":"85","tags":"vip"},
 {"customer_id":"C42","service_id":"383-ccc","service_type":1,"contact_key":"408-832-7799",
  "started":{"timestamp":"2024-03-02T08:00:00.000Z"},"segment":"gold","score":85},
 {"service_id":"383-ddd","service_type":2,"contact_key":"408-832-7799",
  "started":{"timestamp":"2024-03-05T12:00:00.000+02:00"},"active_states":null,
  "segment":"gold","score":90.5,"tags":["callback"]},
 {"service_id":"383-eee","service_type":"sales","contact_key":"408-832-7799",
  "started":{"timestamp":"2023-12-31T23:59:59.999Z"},"completed":{"timestamp":"2024-01-01T00:00:00.000Z"},
  "segment":{"tier":"gold"},"active_tasks":[],"completed_tasks":null}
]"#;

const TYPES: &str = "[business_attributes.service_type]\nsales = 1\nbilling = 2\n";

/// An anonymous request for `key`, as the validate stage hands it on.
fn anonymous(key: &str, query: &csgate::query::ServiceQuery) -> Validated {
    let owner_path = format!("/services/anonymous/{key}");
    Validated {
        query: query.clone(),
        owner: Owner::Contact(ContactKey::new(key)),
        route_path: owner_path.clone(),
        owner_path,
    }
}

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::default())
}

async fn start(toml: &str, upstream: &str, clock: &Arc<ManualClock>) -> TestGateway {
    start_gateway_with_clock(toml, &[upstream.to_owned()], clock.clone()).await
}

fn status_of(answer: &Answer) -> String {
    answer.header("cache-status").unwrap_or_default()
}

async fn stats(gw: &TestGateway) -> Value {
    let answer = get(&gw.admin_url("/cache/stats")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()
}

/// Waits until `n` requests are waiting on fetches in the cache.
async fn wait_for_waiting(gw: &TestGateway, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting = stats(gw).await["waiting"].as_u64().expect("waiting");
        if waiting == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{waiting} requests waiting, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `FakeUpstream::release` wakes only the requests already parked at the gate, and a
/// request the upstream has counted may not be parked yet: release until `done`.
async fn release_until(upstream: &FakeUpstream, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        upstream.release();
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not done after releasing the gate"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Service ids of a JSON answer, as text.
fn ids(answer: &Answer) -> Vec<String> {
    answer
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|s| match &s["service_id"] {
            Value::String(id) => id.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// One service whose `version` extension says which upstream state it came from.
fn versioned(service_id: &str, version: u64) -> String {
    format!(
        r#"[{{"service_id":"{service_id}","service_type":1,"started":{{"timestamp":"2024-03-01T10:00:00.000Z"}},"version":{version}}}]"#
    )
}

fn version_of(answer: &Answer) -> u64 {
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()[0]["version"].as_u64().expect("version")
}

// ------------------------------------------------------------------------------------
// Coalescing

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_cold_misses_make_one_upstream_request() {
    let upstream = FakeUpstream::start(Reply::Gate(Box::new(Reply::json(200, SERVICES)))).await;
    let clock = manual_clock();
    let gw = start(TYPES, &upstream.url(), &clock).await;
    let url = gw.url(&format!("{KEY_PATH}/active?active_states=true"));

    let mut tasks = Vec::new();
    for _ in 0..200 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { get(&url).await }));
    }
    upstream.wait_for_count(1).await;
    // Every request is queued behind the one fetch before it is let go.
    wait_for_waiting(&gw, 200).await;
    release_until(&upstream, || tasks.iter().all(|t| t.is_finished())).await;
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("request task"));
    }

    assert_eq!(upstream.count(), 1);
    let expected = r#"[{"service_id":"383-aaa","service_type":1,"contact_key":"408-832-7799","est_duration":600,"started":{"timestamp":"2024-03-01T10:00:00.000Z","session_id":"s1","media_type":1001},"active_states":[{"state_id":1,"state_type":4,"started":{"timestamp":"2024-03-01T10:00:05.000Z"}}],"segment":"gold","score":85,"tags":["vip","callback"],"x_unknown":{"b":1,"a":2}},{"service_id":"383-ddd","service_type":2,"contact_key":"408-832-7799","started":{"timestamp":"2024-03-05T12:00:00.000+02:00"},"active_states":[],"segment":"gold","score":90.5,"tags":["callback"]}]"#;
    let mut leaders = 0;
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), expected);
        match status_of(answer).as_str() {
            "csgate; fwd=uri-miss; stored" => leaders += 1,
            "csgate; fwd=uri-miss; collapsed; stored" => {}
            other => panic!("unexpected Cache-Status {other:?}"),
        }
        assert_eq!(answer.header("age"), None, "a miss has no Age");
    }
    assert_eq!(leaders, 1);
    let s = stats(&gw).await;
    assert_eq!(
        (&s["misses"], &s["coalesced"], &s["hits"], &s["waiting"]),
        (&json!(1), &json!(199), &json!(0), &json!(0))
    );

    let again = get(&url).await;
    assert_eq!(status_of(&again), "csgate; hit; ttl=30");
    assert_eq!(again.header("age").as_deref(), Some("0"));
    assert_eq!(again.text(), expected);
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_mid_fetch_cancels_nothing() {
    let upstream = FakeUpstream::start(Reply::Gate(Box::new(Reply::json(200, SERVICES)))).await;
    let clock = manual_clock();
    let gw = start("", &upstream.url(), &clock).await;
    let url = gw.url(KEY_PATH);

    // The leader: its request started the fetch.
    let leader = tokio::spawn({
        let url = url.clone();
        async move { get(&url).await }
    });
    upstream.wait_for_count(1).await;
    let followers: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    wait_for_waiting(&gw, 3).await;

    // The leader's client goes away: its connection closes and the gateway drops its
    // request future.
    leader.abort();
    assert!(leader.await.expect_err("aborted").is_cancelled());
    wait_for_waiting(&gw, 2).await;

    release_until(&upstream, || followers.iter().all(|t| t.is_finished())).await;
    for follower in followers {
        let answer = follower.await.expect("request task");
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(
            status_of(&answer),
            "csgate; fwd=uri-miss; collapsed; stored"
        );
        assert_eq!(
            ids(&answer),
            ["383-aaa", "9007199254740993", "383-ddd", "383-eee"]
        );
    }
    let later = get(&url).await;
    assert_eq!(
        status_of(&later),
        "csgate; hit; ttl=30",
        "the fetch was stored"
    );
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_lookup_future_leaves_the_fetch_to_the_others() {
    // The same through the cache API, without HTTP in between: the leader's lookup
    // future is dropped while the upstream is held.
    let upstream = FakeUpstream::start(Reply::Gate(Box::new(Reply::json(200, SERVICES)))).await;
    let clock = manual_clock();
    let gw = start("", &upstream.url(), &clock).await;
    assert!(gw.gateway.cache().is_some(), "cache enabled");
    let query = params::parse_service_query(
        None,
        Lifecycle::All,
        true,
        &TypeMap::default(),
        &Limits::default(),
    )
    .expect("valid query");
    let lookup = |gateway: csgate::pipeline::Gateway| {
        let query = query.clone();
        async move {
            let headers = HeaderMap::new();
            let validated = anonymous(KEY, &query);
            match gateway.lookup_cached(&headers, &validated, "", false).await {
                Some((Some(outcome), Ok(Cached::Answer { body, .. }))) => (outcome.header(), body),
                other => panic!("not served from the cache: {other:?}"),
            }
        }
    };
    let leader = tokio::spawn(lookup(gw.gateway.clone()));
    upstream.wait_for_count(1).await;
    let follower = tokio::spawn(lookup(gw.gateway.clone()));
    wait_for_waiting(&gw, 2).await;
    leader.abort();
    assert!(leader.await.expect_err("aborted").is_cancelled());
    wait_for_waiting(&gw, 1).await;
    release_until(&upstream, || follower.is_finished()).await;
    let (status, body) = follower.await.expect("follower");
    assert_eq!(status, "csgate; fwd=uri-miss; collapsed; stored");
    assert!(body.starts_with(br#"[{"service_id":"383-aaa""#));
    assert_eq!(upstream.count(), 1);
}

// ------------------------------------------------------------------------------------
// One broad fetch serves every variant, byte-identical to the miss path

/// Query strings, grouped by extension set: each group is served by one fetch.
const VARIANT_GROUPS: [&[&str]; 4] = [
    &[
        "",
        "active_states=true",
        "completed_states=1&active_tasks",
        "active_states=true&completed_states=true&active_tasks=true&completed_tasks=true",
        "completed_tasks=TRUE&active_states=false",
        "started_from=2024-02-01T09:00:00Z",
        "started_from=2024-01-01T00:00:00.000Z&started_to=2024-03-01T10:00:00Z",
        "started_to=2024-03-05T10:00:00.001Z",
        "started_from=2024-03-05T10:00:00Z&started_to=2024-03-05T10:00:00.001Z",
        "started_from=2024-03-05T12:00:00%2B02:00",
        "started_to=2024-01-01T00:00:00.000Z",
        "completed_from=2024-02-01T09:30:00.500Z",
        "completed_to=2024-02-01T09:30:00.500Z",
        "completed_from=2023-01-01T00:00:00Z&completed_to=2025-01-01T00:00:00Z&completed_states=true",
        "service_types=1",
        "service_types=billing",
        "service_types=sales,2",
        "service_types=2&service_types=1&active_tasks=true",
        "service_types=99",
        "service_types=1&started_from=2024-03-01T00:00:00Z&active_states=true&completed_tasks=true",
    ],
    &[
        "extensions=segment",
        "segment=gold",
        "segment=silver",
        "segment=%22gold%22",
        "segment=platinum",
        "extensions=segment&segment=silver&completed_states=true",
        "segment=gold&service_types=2",
        "segment=gold&started_from=2024-03-01T00:00:00Z&active_states=true",
    ],
    &["score=85", "score=90.5", "score=%2285%22&completed_tasks=true"],
    &[
        "extensions=*",
        "extensions=*&tags=vip",
        "extensions=*&tags=callback&score=85",
        "extensions=*&segment=gold&completed_states=true",
    ],
];

#[tokio::test]
async fn every_variant_is_served_from_one_fetch_and_matches_the_miss_path() {
    let cached_upstream = FakeUpstream::start(Reply::json(200, SERVICES)).await;
    let plain_upstream = FakeUpstream::start(Reply::json(200, SERVICES)).await;
    let clock = manual_clock();
    let cached = start(TYPES, &cached_upstream.url(), &clock).await;
    let uncached = start(
        &format!("{TYPES}[cache]\nenabled = false\n"),
        &plain_upstream.url(),
        &clock,
    )
    .await;

    let mut bodies = BTreeSet::new();
    let mut answered = 0;
    for (group, queries) in VARIANT_GROUPS.iter().enumerate() {
        let fetches_before = cached_upstream.count();
        let mut first = true;
        for lifecycle in ["", "/active", "/completed"] {
            for query in *queries {
                if lifecycle == "/active" && query.contains("completed_") && query.contains("_from")
                    || lifecycle == "/active" && query.contains("completed_to")
                {
                    continue; // 400 on /active: history filters only.
                }
                let path = format!("{KEY_PATH}{lifecycle}?{query}");
                let hit = get(&cached.url(&path)).await;
                let miss = get(&uncached.url(&path)).await;
                assert_eq!(hit.status, 200, "{path}: {}", hit.text());
                assert_eq!(miss.status, 200, "{path}: {}", miss.text());
                assert_eq!(hit.text(), miss.text(), "{path}");
                assert_eq!(hit.header("content-type"), miss.header("content-type"));
                let expected_status = if first {
                    "csgate; fwd=uri-miss; stored"
                } else {
                    "csgate; hit; ttl=30"
                };
                assert_eq!(status_of(&hit), expected_status, "{path}");
                assert_eq!(
                    miss.header("cache-status").as_deref(),
                    Some("csgate; fwd=bypass"),
                    "{path}: the cache-disabled gateway says so"
                );
                first = false;
                bodies.insert(hit.text());
                answered += 1;
            }
        }
        assert_eq!(
            cached_upstream.count(),
            fetches_before + 1,
            "group {group} ({queries:?}) took one fetch"
        );
    }
    assert_eq!(plain_upstream.count(), answered);
    // The variants really differ: a cache that served one answer for all would fail above,
    // and so would one that filters nothing.
    assert_eq!(bodies.len(), 32);
    assert!(bodies.contains("[]"));

    // Spot checks of what the shared filter keeps.
    let spot = [
        ("/active", "", vec!["383-aaa", "383-ddd"]),
        ("/completed", "", vec!["9007199254740993", "383-eee"]),
        (
            "",
            "service_types=billing",
            vec!["9007199254740993", "383-ddd"],
        ),
        (
            "",
            "started_to=2024-03-05T10:00:00.001Z",
            vec!["383-aaa", "9007199254740993", "383-ddd", "383-eee"],
        ),
        (
            "",
            "started_to=2024-03-05T10:00:00Z",
            vec!["383-aaa", "9007199254740993", "383-eee"],
        ),
        ("", "completed_to=2024-02-01T09:30:00.500Z", vec!["383-eee"]),
        ("", "segment=gold", vec!["383-aaa", "383-ddd"]),
        ("", "score=85", vec!["383-aaa", "9007199254740993"]),
        (
            "",
            "extensions=*&tags=vip",
            vec!["383-aaa", "9007199254740993"],
        ),
    ];
    for (lifecycle, query, expected) in spot {
        let answer = get(&cached.url(&format!("{KEY_PATH}{lifecycle}?{query}"))).await;
        assert_eq!(ids(&answer), expected, "{lifecycle}?{query}");
    }
    assert_eq!(cached_upstream.count(), VARIANT_GROUPS.len());
}

#[tokio::test]
async fn a_miss_asks_the_upstream_for_the_broad_answer() {
    let upstream = FakeUpstream::start(Reply::json(200, SERVICES)).await;
    let clock = manual_clock();
    let gw = start(TYPES, &upstream.url(), &clock).await;
    let cases = [
        (
            "/completed?service_types=1&started_from=2024-01-01T00:00:00Z&completed_tasks=true",
            BROAD.to_owned(),
        ),
        (
            "/active?extensions=tags&segment=gold&active_states=true",
            format!("{BROAD}&extensions=segment,tags"),
        ),
        ("?extensions=*&score=85", format!("{BROAD}&extensions=*")),
    ];
    for (i, (suffix, expected_query)) in cases.iter().enumerate() {
        let answer = get(&gw.url(&format!("{KEY_PATH}{suffix}"))).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(status_of(&answer), "csgate; fwd=uri-miss; stored");
        let seen = upstream.requests();
        assert_eq!(seen.len(), i + 1);
        let last = &seen[i];
        assert_eq!(last.method, Method::GET);
        assert_eq!(last.path, KEY_PATH, "{suffix}");
        assert_eq!(
            last.query.as_deref(),
            Some(expected_query.as_str()),
            "{suffix}"
        );
    }
    // `?segment=silver` shares the `segment` entry with `?extensions=segment`; the
    // `segment,tags` entry is another one.
    let shared = get(&gw.url(&format!(
        "{KEY_PATH}?extensions=segment,tags&segment=silver"
    )))
    .await;
    assert_eq!(status_of(&shared), "csgate; hit; ttl=30");
    assert_eq!(upstream.count(), 3);
}

// ------------------------------------------------------------------------------------
// Partitions: tenants, groups, credentials

fn tenant_reply(request: &Recorded) -> Reply {
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .map(|v| v.to_str().expect("ascii").to_owned())
            .unwrap_or_else(|| "-".into())
    };
    let id = format!("{}/{}", header("contactcenterid"), header("groupid"));
    Reply::json(
        200,
        format!(
            r#"[{{"service_id":"{id}","started":{{"timestamp":"2024-03-01T10:00:00.000Z"}}}}]"#
        ),
    )
}

#[tokio::test]
async fn tenants_and_groups_never_share_an_entry() {
    let upstream = FnUpstream::start(tenant_reply).await;
    let clock = manual_clock();
    let gw = start("", &upstream.url(), &clock).await;
    let url = gw.url(KEY_PATH);
    let tenants: [(&[(&str, &str)], &str); 5] = [
        (&[], "-/-"),
        (&[("ContactCenterId", "t1")], "t1/-"),
        (&[("ContactCenterId", "t2")], "t2/-"),
        (&[("ContactCenterId", "t1"), ("GroupId", "g1")], "t1/g1"),
        (&[("ContactCenterId", "t1"), ("GroupId", "g2")], "t1/g2"),
    ];
    for (i, (headers, id)) in tenants.iter().enumerate() {
        let answer = get_with(&url, headers).await;
        assert_eq!(ids(&answer), [*id], "{headers:?}");
        assert_eq!(status_of(&answer), "csgate; fwd=uri-miss; stored");
        assert_eq!(upstream.count(), i + 1);
    }
    for (headers, id) in tenants {
        let answer = get_with(&url, headers).await;
        assert_eq!(ids(&answer), [id], "{headers:?}");
        assert_eq!(status_of(&answer), "csgate; hit; ttl=30");
    }
    assert_eq!(upstream.count(), 5);
    // The upstream saw each tenant's own headers.
    let seen: Vec<_> = upstream
        .requests()
        .iter()
        .map(|r| {
            (
                r.headers.get("contactcenterid").cloned(),
                r.headers.get("groupid").cloned(),
            )
        })
        .collect();
    assert_eq!(seen[3].0.as_ref().map(|v| v.as_bytes()), Some(&b"t1"[..]));
    assert_eq!(seen[3].1.as_ref().map(|v| v.as_bytes()), Some(&b"g1"[..]));
}

fn auth_reply(request: &Recorded) -> Reply {
    let auth = request
        .headers
        .get("authorization")
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_else(|| "none".into());
    Reply::json(
        200,
        format!(
            r#"[{{"service_id":"{auth}","started":{{"timestamp":"2024-03-01T10:00:00.000Z"}}}}]"#
        ),
    )
}

#[tokio::test]
async fn credentials_partition_the_cache_unless_shared() {
    let clock = manual_clock();
    let alice = [("Authorization", "Basic YWxpY2U6MQ==")];
    let bob = [("Authorization", "Basic Ym9iOjI=")];

    let upstream = FnUpstream::start(auth_reply).await;
    let gw = start("", &upstream.url(), &clock).await;
    let url = gw.url(KEY_PATH);
    for headers in [&alice[..], &bob[..], &[][..]] {
        let miss = get_with(&url, headers).await;
        assert_eq!(
            status_of(&miss),
            "csgate; fwd=uri-miss; stored",
            "{headers:?}"
        );
    }
    assert_eq!(ids(&get_with(&url, &alice).await), ["Basic YWxpY2U6MQ=="]);
    assert_eq!(ids(&get_with(&url, &bob).await), ["Basic Ym9iOjI="]);
    assert_eq!(ids(&get_with(&url, &[]).await), ["none"]);
    assert_eq!(upstream.count(), 3);

    let shared_upstream = FnUpstream::start(auth_reply).await;
    let shared = start(
        "[cache]\nshare_across_credentials = true\n",
        &shared_upstream.url(),
        &clock,
    )
    .await;
    let url = shared.url(KEY_PATH);
    let first = get_with(&url, &alice).await;
    assert_eq!(status_of(&first), "csgate; fwd=uri-miss; stored");
    let second = get_with(&url, &bob).await;
    assert_eq!(status_of(&second), "csgate; hit; ttl=30");
    assert_eq!(ids(&second), ["Basic YWxpY2U6MQ=="]);
    assert_eq!(shared_upstream.count(), 1);
}

// ------------------------------------------------------------------------------------
// Writes invalidate

/// An upstream whose anonymous answer carries a version that every write bumps (even a
/// write it refuses, so that a cache that wrongly keeps serving is caught, and one that
/// wrongly invalidates is too).
struct Versioned {
    upstream: FnUpstream,
    version: Arc<AtomicU64>,
}

impl Versioned {
    async fn start(write_status: Arc<AtomicU64>) -> Versioned {
        let version = Arc::new(AtomicU64::new(1));
        let v = version.clone();
        let upstream = FnUpstream::start(move |request| {
            if request.method == Method::GET {
                return Reply::json(200, versioned("383-aaa", v.load(Ordering::SeqCst)));
            }
            v.fetch_add(1, Ordering::SeqCst);
            let status = write_status.load(Ordering::SeqCst) as u16;
            if status >= 400 {
                return Reply::json(
                    status,
                    r#"{"message":"no","exception":"com.genesyslab.NotFoundException"}"#,
                );
            }
            let body = match request.path.as_str() {
                "/genesys/1/cs/services/start" => r#"{"service_id":"383-new"}"#,
                p if p.ends_with("/states/start") => r#"{"state_id":2}"#,
                _ => "",
            };
            Reply::json(status, body)
        })
        .await;
        Versioned { upstream, version }
    }
}

#[tokio::test]
async fn each_successful_write_makes_the_next_lookup_fetch_fresh_data() {
    let write_status = Arc::new(AtomicU64::new(0));
    let fake = Versioned::start(write_status.clone()).await;
    let clock = manual_clock();
    let gw = start("", &fake.upstream.url(), &clock).await;
    let tenant = [("ContactCenterId", "t1")];
    let lookup = gw.url(&format!("{KEY_PATH}/active"));

    let writes: [(Method, &str, &str, u64); 6] = [
        (
            Method::POST,
            "/genesys/1/cs/services/start",
            r#"{"contact_key":"408-832-7799","service_type":1}"#,
            201,
        ),
        (
            Method::POST,
            "/genesys/1/cs/services/383-aaa/end",
            "{}",
            204,
        ),
        (
            Method::POST,
            "/genesys/1/cs/customers/C42/services/383-aaa",
            "",
            200,
        ),
        (
            Method::POST,
            "/genesys/1/cs/services/383-aaa/states/start",
            r#"{"state_type":4}"#,
            201,
        ),
        (
            Method::PUT,
            "/genesys/1/cs/services/383-aaa/extensions/segment",
            r#""gold""#,
            200,
        ),
        // A service that was started through the gateway: known from the start answer.
        (
            Method::POST,
            "/genesys/1/cs/services/383-new/end",
            "{}",
            204,
        ),
    ];
    let first = get_with(&lookup, &tenant).await;
    assert_eq!(version_of(&first), 1);
    for (i, (method, path, body, status)) in writes.into_iter().enumerate() {
        if path.contains("383-new") {
            // The entry must hold 383-new for the id index to find it.
            fake.upstream.set({
                let v = fake.version.clone();
                let status = write_status.clone();
                move |request| {
                    if request.method == Method::GET {
                        let version = v.load(Ordering::SeqCst);
                        return Reply::json(200, versioned("383-new", version));
                    }
                    v.fetch_add(1, Ordering::SeqCst);
                    Reply::json(status.load(Ordering::SeqCst) as u16, "")
                }
            });
            let refetch = get_with(
                &lookup,
                &[("ContactCenterId", "t1"), ("Cache-Control", "no-cache")],
            )
            .await;
            assert_eq!(status_of(&refetch), "csgate; fwd=request; stored");
        }
        let before = get_with(&lookup, &tenant).await;
        assert_eq!(
            status_of(&before),
            "csgate; hit; ttl=30",
            "before {method} {path}"
        );
        let version = version_of(&before);

        write_status.store(status, Ordering::SeqCst);
        let written = send(method.clone(), &gw.url(path), &tenant, body.to_owned()).await;
        assert_eq!(
            written.status as u64,
            status,
            "{method} {path}: {}",
            written.text()
        );
        if status == 201 {
            assert!(
                !written.body.is_empty(),
                "the start answer is passed through"
            );
        }

        let after = get_with(&lookup, &tenant).await;
        assert_eq!(
            status_of(&after),
            "csgate; fwd=uri-miss; stored",
            "write {i}: {method} {path}"
        );
        assert_eq!(
            version_of(&after),
            version + 1,
            "write {i}: {method} {path}"
        );
    }
}

/// Upstream status, method, path, body, request headers.
type Write<'a> = (u64, Method, &'a str, &'a str, &'a [(&'a str, &'a str)]);

#[tokio::test]
async fn writes_elsewhere_and_failed_writes_invalidate_nothing() {
    let write_status = Arc::new(AtomicU64::new(201));
    let fake = Versioned::start(write_status.clone()).await;
    let clock = manual_clock();
    let gw = start("", &fake.upstream.url(), &clock).await;
    let tenant = [("ContactCenterId", "t1")];
    let lookup = gw.url(KEY_PATH);
    assert_eq!(version_of(&get_with(&lookup, &tenant).await), 1);

    let cases: [Write; 8] = [
        // Successful writes that cannot change this entry.
        (
            201,
            Method::POST,
            "/genesys/1/cs/services/start",
            r#"{"contact_key":"other"}"#,
            &tenant,
        ),
        (
            201,
            Method::POST,
            "/genesys/1/cs/services/start",
            r#"{"contact_key":"408-832-7799"}"#,
            &[("ContactCenterId", "t2")],
        ),
        (
            204,
            Method::POST,
            "/genesys/1/cs/services/999/end",
            "{}",
            &tenant,
        ),
        // Failed writes that would have.
        (
            400,
            Method::POST,
            "/genesys/1/cs/services/start",
            r#"{"contact_key":"408-832-7799"}"#,
            &tenant,
        ),
        (
            404,
            Method::POST,
            "/genesys/1/cs/services/383-aaa/end",
            "{}",
            &tenant,
        ),
        (
            403,
            Method::POST,
            "/genesys/1/cs/customers/C42/services/383-aaa",
            "",
            &tenant,
        ),
        (
            500,
            Method::POST,
            "/genesys/1/cs/services/383-aaa/states/start",
            "{}",
            &tenant,
        ),
        (
            503,
            Method::PUT,
            "/genesys/1/cs/services/383-aaa/extensions/segment",
            "1",
            &tenant,
        ),
    ];
    for (status, method, path, body, headers) in cases {
        write_status.store(status, Ordering::SeqCst);
        let written = send(method.clone(), &gw.url(path), headers, body.to_owned()).await;
        assert_eq!(written.status as u64, status, "{method} {path}");
        let after = get_with(&lookup, &tenant).await;
        assert_eq!(
            status_of(&after),
            "csgate; hit; ttl=30",
            "{status} {method} {path}"
        );
        assert_eq!(version_of(&after), 1, "{status} {method} {path}");
    }
    // The upstream did change, and a fetch shows it.
    assert_eq!(fake.version.load(Ordering::SeqCst), 9);
    let fresh = get_with(
        &lookup,
        &[("ContactCenterId", "t1"), ("Cache-Control", "no-cache")],
    )
    .await;
    assert_eq!(version_of(&fresh), 9);
}

// ------------------------------------------------------------------------------------
// Freshness

const SWR: &str = "[cache]\nttl = \"30s\"\nstale_while_revalidate = \"10s\"\nstale_if_error = \"60s\"\n[upstream]\neject_after = 1000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_entries_are_served_while_one_background_refresh_runs() {
    let upstream = FakeUpstream::start(Reply::json(200, versioned("383-aaa", 1))).await;
    let clock = manual_clock();
    let gw = start(SWR, &upstream.url(), &clock).await;
    let url = gw.url(KEY_PATH);
    assert_eq!(version_of(&get(&url).await), 1);

    clock.advance(Duration::from_secs(35));
    upstream.set_default(Reply::Gate(Box::new(Reply::json(
        200,
        versioned("383-aaa", 2),
    ))));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    // Served at once although the refresh is held at the upstream.
    for task in tasks {
        let answer = task.await.expect("request task");
        assert_eq!(version_of(&answer), 1);
        assert_eq!(status_of(&answer), "csgate; hit; ttl=-5");
        assert_eq!(answer.header("age").as_deref(), Some("35"));
    }
    upstream.wait_for_count(2).await;
    assert_eq!(upstream.count(), 2);
    upstream.set_default(Reply::json(200, versioned("383-aaa", 3)));

    // Once the refresh has landed, the new answer is fresh.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        upstream.release();
        let answer = get(&url).await;
        if version_of(&answer) == 2 {
            assert_eq!(status_of(&answer), "csgate; hit; ttl=30");
            assert_eq!(answer.header("age").as_deref(), Some("0"));
            break;
        }
        assert_eq!(status_of(&answer), "csgate; hit; ttl=-5");
        assert!(
            tokio::time::Instant::now() < deadline,
            "refresh never stored"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(upstream.count(), 2, "exactly one background refresh");
    let s = stats(&gw).await;
    assert_eq!((&s["misses"], &s["coalesced"]), (&json!(1), &json!(0)));
    assert!(s["stale"].as_u64().expect("stale") >= 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_stale_hits_refreshes_once_even_when_the_refresh_is_fast() {
    // No gate: the refresh lands while the burst is still arriving, so a stale hit can
    // read the old entry after the refresh finished.
    let upstream = FakeUpstream::start(Reply::json(200, versioned("383-aaa", 1))).await;
    let clock = manual_clock();
    let gw = start(SWR, &upstream.url(), &clock).await;
    let url = gw.url(KEY_PATH);
    for round in 0..5u64 {
        upstream.set_default(Reply::json(200, versioned("383-aaa", round + 1)));
        let answer = get_with(&url, &[("Cache-Control", "no-cache")]).await;
        assert_eq!(version_of(&answer), round + 1);
        let fetched = upstream.count();
        clock.advance(Duration::from_secs(31));
        upstream.set_default(Reply::json(200, versioned("383-aaa", 100 + round)));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { get(&url).await })
            })
            .collect();
        for task in tasks {
            let answer = task.await.expect("request task");
            assert_eq!(answer.status, 200);
        }
        upstream.wait_for_count(fetched + 1).await;
        // Stale hits go on until the refresh has landed; none starts another.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while version_of(&get(&url).await) != 100 + round {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: no refresh"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(upstream.count(), fetched + 1, "round {round}: one refresh");
    }
}

#[tokio::test]
async fn stale_if_error_stands_in_for_a_failing_upstream_within_its_window() {
    let upstream = FakeUpstream::start(Reply::json(200, versioned("383-aaa", 1))).await;
    let clock = manual_clock();
    let gw = start(SWR, &upstream.url(), &clock).await;
    let url = gw.url(KEY_PATH);
    assert_eq!(version_of(&get(&url).await), 1);

    let unavailable = Reply::json(
        503,
        r#"{"message":"Service Unavailable","exception":"ServiceUnavailableException"}"#,
    );
    upstream.set_default(unavailable);
    clock.advance(Duration::from_secs(45)); // past ttl + swr (40 s), within ttl + sie (90 s)
    for attempt in 0..2 {
        let answer = get(&url).await;
        assert_eq!(version_of(&answer), 1);
        assert_eq!(
            status_of(&answer),
            "csgate; hit; ttl=-15; detail=stale-if-error"
        );
        assert_eq!(answer.header("age").as_deref(), Some("45"));
        // Every request tried the upstream: the error was not cached.
        assert_eq!(upstream.count(), 2 + attempt);
    }
    clock.advance(Duration::from_secs(45)); // age 90: beyond ttl + stale_if_error
    let failed = get(&url).await;
    assert_eq!(failed.status, 503);
    assert_eq!(
        failed.text(),
        r#"{"message":"Service Unavailable","exception":"ServiceUnavailableException"}"#
    );
    assert_eq!(status_of(&failed), "csgate; fwd=uri-miss");
    assert_eq!(upstream.count(), 4);

    upstream.set_default(Reply::json(200, versioned("383-aaa", 2)));
    let recovered = get(&url).await;
    assert_eq!(version_of(&recovered), 2);
    assert_eq!(status_of(&recovered), "csgate; fwd=uri-miss; stored");
    let s = stats(&gw).await;
    assert_eq!(s["stale_if_error"], json!(2));
}

#[tokio::test]
async fn stale_if_error_covers_a_refused_upstream() {
    let fake = FnUpstream::start(|_| Reply::json(200, versioned("383-aaa", 1))).await;
    let clock = manual_clock();
    let gw = start(SWR, &fake.url(), &clock).await;
    let url = gw.url(KEY_PATH);
    assert_eq!(version_of(&get(&url).await), 1);

    fake.stop();
    clock.advance(Duration::from_secs(89));
    let answer = get(&url).await;
    assert_eq!(version_of(&answer), 1);
    assert_eq!(
        status_of(&answer),
        "csgate; hit; ttl=-59; detail=stale-if-error"
    );
    clock.advance(Duration::from_secs(1));
    let failed = get(&url).await;
    assert_eq!(failed.status, 502, "{}", failed.text());
    assert_eq!(failed.json()["exception"], "UpstreamUnavailable");
    assert_eq!(status_of(&failed), "csgate; fwd=uri-miss");
}

#[tokio::test]
async fn stale_while_revalidate_survives_a_failing_refresh_and_retries_it() {
    let upstream = FakeUpstream::start(Reply::json(200, versioned("383-aaa", 1))).await;
    let clock = manual_clock();
    let gw = start(SWR, &upstream.url(), &clock).await;
    let url = gw.url(KEY_PATH);
    assert_eq!(version_of(&get(&url).await), 1);
    upstream.set_default(Reply::json(500, r#"{"message":"boom","exception":"E"}"#));
    clock.advance(Duration::from_secs(32));
    let stale = get(&url).await;
    assert_eq!(version_of(&stale), 1);
    assert_eq!(status_of(&stale), "csgate; hit; ttl=-2");
    upstream.wait_for_count(2).await;
    // The failed refresh is not remembered: a later stale hit starts another.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while upstream.count() < 3 {
        let again = get(&url).await;
        assert_eq!(version_of(&again), 1);
        assert_eq!(status_of(&again), "csgate; hit; ttl=-2");
        assert!(tokio::time::Instant::now() < deadline, "no second refresh");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    upstream.set_default(Reply::json(200, versioned("383-aaa", 2)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get(&url).await;
        if version_of(&answer) == 2 {
            assert_eq!(status_of(&answer), "csgate; hit; ttl=30");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no successful refresh"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn errors_are_never_cached() {
    let upstream =
        FakeUpstream::start(Reply::json(500, r#"{"message":"x","exception":"E"}"#)).await;
    let clock = manual_clock();
    let gw = start("", &upstream.url(), &clock).await;
    let url = gw.url(KEY_PATH);
    for n in 1..=2 {
        let answer = get(&url).await;
        assert_eq!(answer.status, 500);
        assert_eq!(answer.text(), r#"{"message":"x","exception":"E"}"#);
        assert_eq!(status_of(&answer), "csgate; fwd=uri-miss");
        assert_eq!(upstream.count(), n);
    }
    upstream.set_default(Reply::json(200, "{\"not\":\"an array\"}"));
    let invalid = get(&url).await;
    assert_eq!(invalid.status, 502);
    assert_eq!(invalid.json()["exception"], "UpstreamInvalidResponse");
    upstream.set_default(Reply::json(200, versioned("383-aaa", 1)));
    let ok = get(&url).await;
    assert_eq!(status_of(&ok), "csgate; fwd=uri-miss; stored");
    assert_eq!(upstream.count(), 4);
    let hit = get(&url).await;
    assert_eq!(status_of(&hit), "csgate; hit; ttl=30");
    assert_eq!(upstream.count(), 4);
}

// ------------------------------------------------------------------------------------
// Cache-Control, request and response

#[tokio::test]
async fn request_no_cache_refetches_and_stores_no_store_bypasses() {
    let upstream = FakeUpstream::start(Reply::json(200, versioned("383-aaa", 1))).await;
    let clock = manual_clock();
    let gw = start("", &upstream.url(), &clock).await;
    let url = gw.url(KEY_PATH);
    assert_eq!(version_of(&get(&url).await), 1);

    upstream.set_default(Reply::json(200, versioned("383-aaa", 2)));
    let refreshed = get_with(&url, &[("Cache-Control", "no-cache")]).await;
    assert_eq!(status_of(&refreshed), "csgate; fwd=request; stored");
    assert_eq!(version_of(&refreshed), 2);
    assert_eq!(upstream.count(), 2);
    assert_eq!(upstream.requests()[1].query.as_deref(), Some(BROAD));
    let hit = get(&url).await;
    assert_eq!(status_of(&hit), "csgate; hit; ttl=30");
    assert_eq!(version_of(&hit), 2);

    upstream.set_default(Reply::json(200, versioned("383-aaa", 3)));
    let bypass_path = format!("{KEY_PATH}/active?active_states=true&segment=gold");
    let bypassed = get_with(&gw.url(&bypass_path), &[("Cache-Control", "no-store")]).await;
    assert_eq!(status_of(&bypassed), "csgate; fwd=bypass");
    assert_eq!(bypassed.status, 200);
    assert_eq!(upstream.count(), 3);
    let seen = &upstream.requests()[2];
    assert_eq!(seen.path, format!("{KEY_PATH}/active"));
    assert_eq!(
        seen.query.as_deref(),
        Some("active_states=true&extensions=segment&segment=gold"),
        "the client's own (normalised) query"
    );
    // Nothing was stored: the old entry still answers.
    let hit = get(&url).await;
    assert_eq!(version_of(&hit), 2);

    // On a cold key, no-store leaves nothing behind.
    let cold = gw.url("/genesys/1/cs/services/anonymous/cold");
    let bypassed = get_with(&cold, &[("Cache-Control", "no-store")]).await;
    assert_eq!(status_of(&bypassed), "csgate; fwd=bypass");
    let miss = get(&cold).await;
    assert_eq!(status_of(&miss), "csgate; fwd=uri-miss; stored");
    assert_eq!(upstream.count(), 5);
    // Both no-store requests are counted as bypasses.
    let stats = get(&gw.admin_url("/cache/stats")).await.json();
    assert_eq!(stats["bypass"], 2, "{stats}");
}

#[tokio::test]
async fn upstream_answers_marked_private_are_not_stored() {
    let cases = [
        ("cache-control", "no-store"),
        ("cache-control", "private"),
        ("cache-control", "max-age=60, Private"),
        ("set-cookie", "JSESSIONID=abc; Path=/"),
    ];
    for (name, value) in cases {
        let upstream =
            FakeUpstream::start(Reply::json(200, versioned("383-aaa", 1)).with_header(name, value))
                .await;
        let clock = manual_clock();
        let gw = start("", &upstream.url(), &clock).await;
        let url = gw.url(KEY_PATH);
        for n in 1..=2 {
            let answer = get(&url).await;
            assert_eq!(version_of(&answer), 1);
            assert_eq!(
                status_of(&answer),
                "csgate; fwd=uri-miss",
                "{name}: {value}"
            );
            assert_eq!(upstream.count(), n, "{name}: {value}");
        }
        assert_eq!(stats(&gw).await["entries"], json!(0));
    }
}

#[tokio::test]
async fn an_uncacheable_answer_replaces_what_the_cache_held() {
    // A no-cache refresh that comes back `no-store` must not leave the older stored
    // answer to be served as fresh to the next client.
    let upstream = FakeUpstream::start(Reply::json(200, versioned("383-aaa", 1))).await;
    let clock = manual_clock();
    let gw = start("", &upstream.url(), &clock).await;
    let url = gw.url(KEY_PATH);
    assert_eq!(version_of(&get(&url).await), 1);
    upstream.set_default(
        Reply::json(200, versioned("383-aaa", 2)).with_header("cache-control", "no-store"),
    );
    let refreshed = get_with(&url, &[("Cache-Control", "no-cache")]).await;
    assert_eq!(version_of(&refreshed), 2);
    assert_eq!(status_of(&refreshed), "csgate; fwd=request");
    let next = get(&url).await;
    assert_eq!(version_of(&next), 2, "{}", status_of(&next));
    assert_eq!(status_of(&next), "csgate; fwd=uri-miss");
}

#[tokio::test]
async fn oversize_answers_are_served_not_stored_and_then_bypassed_for_a_while() {
    let big: String = {
        let padding = "x".repeat(4000);
        format!(
            r#"[{{"service_id":"383-big","started":{{"timestamp":"2024-03-01T10:00:00.000Z"}},"pad":"{padding}","version":1}}]"#
        )
    };
    let upstream = FakeUpstream::start(Reply::json(200, big.clone())).await;
    let clock = manual_clock();
    let gw = start(
        "[cache]\nttl = \"30s\"\nmax_entry_bytes = \"2KiB\"\n",
        &upstream.url(),
        &clock,
    )
    .await;
    let url = gw.url(&format!("{KEY_PATH}/active?active_tasks=true"));
    let first = get(&url).await;
    assert_eq!(first.status, 200);
    assert_eq!(status_of(&first), "csgate; fwd=uri-miss");
    assert_eq!(first.json()[0]["pad"].as_str().map(str::len), Some(4000));
    assert_eq!(first.json()[0]["active_tasks"], json!([]));
    assert_eq!(upstream.requests()[0].query.as_deref(), Some(BROAD));

    for n in 2..=3 {
        let answer = get(&url).await;
        assert_eq!(status_of(&answer), "csgate; fwd=bypass");
        assert_eq!(answer.body, first.body);
        assert_eq!(upstream.count(), n);
        let seen = &upstream.requests()[n - 1];
        assert_eq!(seen.path, format!("{KEY_PATH}/active"));
        assert_eq!(seen.query.as_deref(), Some("active_tasks=true"));
    }
    assert_eq!(stats(&gw).await["entries"], json!(0));

    // "A short time": once it is over, the cache tries again.
    clock.advance(Duration::from_secs(11));
    upstream.set_default(Reply::json(200, versioned("383-aaa", 2)));
    let retried = get(&url).await;
    assert_eq!(status_of(&retried), "csgate; fwd=uri-miss; stored");
    let hit = get(&url).await;
    assert_eq!(status_of(&hit), "csgate; hit; ttl=30");
    assert_eq!(version_of(&hit), 2);
}

#[tokio::test]
async fn an_answer_that_grows_too_large_does_not_resurrect_the_old_entry() {
    let upstream = FakeUpstream::start(Reply::json(200, versioned("383-aaa", 1))).await;
    let clock = manual_clock();
    let gw = start(
        "[cache]\nttl = \"60s\"\nmax_entry_bytes = \"2KiB\"\n",
        &upstream.url(),
        &clock,
    )
    .await;
    let url = gw.url(KEY_PATH);
    assert_eq!(version_of(&get(&url).await), 1);
    let padding = "x".repeat(4000);
    upstream.set_default(Reply::json(
        200,
        format!(
            r#"[{{"service_id":"383-aaa","started":{{"timestamp":"2024-03-01T10:00:00.000Z"}},"pad":"{padding}","version":2}}]"#
        ),
    ));
    let grown = get_with(&url, &[("Cache-Control", "no-cache")]).await;
    assert_eq!(version_of(&grown), 2);
    assert_eq!(status_of(&grown), "csgate; fwd=request");
    clock.advance(Duration::from_secs(11));
    // The uncacheable mark is over; the entry stored before must not come back.
    let next = get(&url).await;
    assert_eq!(version_of(&next), 2, "{}", status_of(&next));
    assert_eq!(status_of(&next), "csgate; fwd=uri-miss");
}

// ------------------------------------------------------------------------------------
// Byte bound

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_byte_bound_holds_under_a_hundred_thousand_keys() {
    const KEYS: usize = 100_000;
    const WORKERS: usize = 64;
    let upstream = FnUpstream::start(|_| Reply::json(200, versioned("383-aaa", 1))).await;
    let clock = manual_clock();
    let gw = start(
        &format!(
            "{TYPES}[cache]\nmax_bytes = \"4MiB\"\n[upstream]\npool_max_idle_per_host = 128\n"
        ),
        &upstream.url(),
        &clock,
    )
    .await;
    assert!(gw.gateway.cache().is_some(), "cache enabled");
    let types =
        csgate::config::Config::from_toml(TYPES, std::path::Path::new("t"), &Default::default())
            .expect("valid")
            .service_types();
    let query = params::parse_service_query(
        Some("active_states=true"),
        Lifecycle::Active,
        true,
        &types,
        &Limits::default(),
    )
    .expect("valid query");
    let mut headers = HeaderMap::new();
    headers.insert("contactcenterid", HeaderValue::from_static("t1"));

    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let (gateway, query, headers) = (gw.gateway.clone(), query.clone(), headers.clone());
        workers.spawn(async move {
            let mut stored = 0usize;
            for i in (worker..KEYS).step_by(WORKERS) {
                let key = format!("key-{i:06}");
                let validated = anonymous(&key, &query);
                match gateway.lookup_cached(&headers, &validated, "", false).await {
                    Some((Some(outcome), Ok(Cached::Answer { body, .. }))) => {
                        assert!(body.starts_with(br#"[{"service_id":"383-aaa""#));
                        stored += usize::from(outcome.header().ends_with("stored"));
                    }
                    other => panic!("not served from the cache: {other:?}"),
                }
            }
            stored
        });
    }
    let mut stored = 0;
    while let Some(done) = workers.join_next().await {
        stored += done.expect("worker");
    }
    assert_eq!(stored, KEYS);
    assert_eq!(upstream.count(), KEYS);

    let s = stats(&gw).await;
    let bytes = s["bytes"].as_u64().expect("bytes");
    let entries = s["entries"].as_u64().expect("entries");
    assert!(bytes <= 4 << 20, "{bytes} bytes cached: {s}");
    assert!(bytes > 2 << 20, "the budget is used: {s}");
    assert!(entries > 1000 && entries < KEYS as u64, "{s}");
    let evicted = s["evictions"]["size"].as_u64().expect("size evictions");
    assert!(evicted > 0, "{s}");
    assert_eq!(s["misses"], json!(KEYS));
}

// ------------------------------------------------------------------------------------
// Admin

#[tokio::test]
async fn admin_purges_one_tenants_key_or_everything() {
    let upstream = FnUpstream::start(tenant_reply).await;
    let clock = manual_clock();
    let gw = start("", &upstream.url(), &clock).await;
    let url = gw.url(KEY_PATH);
    let other = gw.url("/genesys/1/cs/services/anonymous/other");
    let t1 = [("ContactCenterId", "t1")];
    let t2 = [("ContactCenterId", "t2")];
    for (url, headers) in [(&url, &t1), (&url, &t2), (&other, &t1)] {
        let miss = get_with(url, headers).await;
        assert_eq!(status_of(&miss), "csgate; fwd=uri-miss; stored");
    }
    assert_eq!(upstream.count(), 3);

    let purged = send(
        Method::DELETE,
        &gw.admin_url(&format!("/cache/anonymous/{KEY}")),
        &t1,
        Bytes::new(),
    )
    .await;
    assert_eq!(purged.status, 200);
    assert_eq!(purged.json(), json!({"purged": 1}));
    assert_eq!(status_of(&get_with(&url, &t2).await), "csgate; hit; ttl=30");
    assert_eq!(
        status_of(&get_with(&other, &t1).await),
        "csgate; hit; ttl=30"
    );
    assert_eq!(upstream.count(), 3);
    let refetched = get_with(&url, &t1).await;
    assert_eq!(status_of(&refetched), "csgate; fwd=uri-miss; stored");
    assert_eq!(ids(&refetched), ["t1/-"]);
    assert_eq!(upstream.count(), 4);

    let all = send(Method::DELETE, &gw.admin_url("/cache"), &[], Bytes::new()).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.json(), json!({"purged": "all"}));
    assert_eq!(stats(&gw).await["entries"], json!(0));
    for (url, headers) in [(&url, &t1), (&url, &t2), (&other, &t1)] {
        let miss = get_with(url, headers).await;
        assert_eq!(status_of(&miss), "csgate; fwd=uri-miss; stored");
    }
    assert_eq!(upstream.count(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_count_every_outcome() {
    let upstream = FakeUpstream::start(Reply::json(200, versioned("383-aaa", 1))).await;
    let clock = manual_clock();
    let gw = start(SWR, &upstream.url(), &clock).await;
    let url = gw.url(KEY_PATH);
    let zero = json!({
        "entries": 0, "bytes": 0, "variants": 0, "hits": 0, "stale": 0, "stale_if_error": 0,
        "misses": 0, "coalesced": 0, "bypass": 0, "waiting": 0,
        "evictions": {"size": 0, "expired": 0, "explicit": 0, "replaced": 0},
    });
    assert_eq!(stats(&gw).await, zero);

    get(&url).await; // miss
    get(&url).await; // hit
    get(&format!("{url}/active")).await; // hit
                                         // Three concurrent misses for another key: one fetch, two coalesced waits.
    upstream.set_default(Reply::Gate(Box::new(Reply::json(
        200,
        versioned("383-bbb", 1),
    ))));
    let other = gw.url("/genesys/1/cs/services/anonymous/other");
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let other = other.clone();
            tokio::spawn(async move { get(&other).await })
        })
        .collect();
    upstream.wait_for_count(2).await;
    wait_for_waiting(&gw, 3).await;
    release_until(&upstream, || tasks.iter().all(|t| t.is_finished())).await;
    for task in tasks {
        assert_eq!(task.await.expect("task").status, 200);
    }
    upstream.set_default(Reply::json(500, "{}"));
    clock.advance(Duration::from_secs(31));
    get(&url).await; // stale
    upstream.wait_for_count(3).await;
    clock.advance(Duration::from_secs(20));
    get(&url).await; // stale-if-error

    let mut s = stats(&gw).await;
    let bytes = s["bytes"].take();
    assert!(bytes.as_u64().expect("bytes") > 0);
    assert_eq!(
        s,
        json!({
            "entries": 2, "bytes": null, "variants": 3, "hits": 2, "stale": 2,
            "stale_if_error": 1, "misses": 2, "coalesced": 2, "bypass": 0, "waiting": 0,
            "evictions": {"size": 0, "expired": 0, "explicit": 0, "replaced": 0},
        })
    );
    let purged = send(Method::DELETE, &gw.admin_url("/cache"), &[], Bytes::new()).await;
    assert_eq!(purged.status, 200);
    let s = stats(&gw).await;
    assert_eq!(s["entries"], json!(0));
    assert_eq!(s["evictions"]["explicit"], json!(2));
}

#[tokio::test]
async fn admin_paths_are_not_served_on_the_public_port() {
    let upstream = FakeUpstream::start(Reply::json(200, SERVICES)).await;
    let clock = manual_clock();
    let gw = start("", &upstream.url(), &clock).await;
    assert_eq!(
        status_of(&get(&gw.url(KEY_PATH)).await),
        "csgate; fwd=uri-miss; stored"
    );
    for (method, path) in [
        (Method::GET, "/cache/stats"),
        (Method::DELETE, "/cache"),
        (Method::DELETE, &*format!("/cache/anonymous/{KEY}")),
    ] {
        let answer = send(method.clone(), &gw.url(path), &[], Bytes::new()).await;
        assert_eq!(answer.status, 404, "{method} {path}");
        assert_eq!(answer.json()["exception"], "NotFound");
    }
    assert_eq!(
        status_of(&get(&gw.url(KEY_PATH)).await),
        "csgate; hit; ttl=30"
    );
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn an_answer_too_large_for_the_byte_budget_is_not_reported_stored() {
    // max_entry_bytes may be as large as max_bytes, but answers only get three quarters
    // of the budget: an answer that cannot fit must be treated like an oversize one,
    // not claimed `stored` and then silently evicted.
    let padding = "x".repeat(7000);
    let big = format!(
        r#"[{{"service_id":"383-big","started":{{"timestamp":"2024-03-01T10:00:00.000Z"}},"pad":"{padding}"}}]"#
    );
    let upstream = FakeUpstream::start(Reply::json(200, big)).await;
    let clock = manual_clock();
    let gw = start(
        "[cache]\nmax_bytes = \"8KiB\"\nmax_entry_bytes = \"8KiB\"\n",
        &upstream.url(),
        &clock,
    )
    .await;
    let url = gw.url(KEY_PATH);
    let first = get(&url).await;
    assert_eq!(first.status, 200);
    assert_eq!(status_of(&first), "csgate; fwd=uri-miss");
    let second = get(&url).await;
    assert_eq!(status_of(&second), "csgate; fwd=bypass");
    assert_eq!(second.body, first.body);
    assert_eq!(upstream.count(), 2);
    assert_eq!(stats(&gw).await["entries"], json!(0));
}

#[tokio::test]
async fn a_replaced_entry_is_indexed_by_its_own_services_only() {
    // After a refresh drops service 383-old from the answer, a write to 383-old no
    // longer touches the key's entry (and the index keeps nothing for it).
    let two = r#"[{"service_id":"383-old","started":{"timestamp":"2024-03-01T10:00:00.000Z"}},
                  {"service_id":"383-aaa","started":{"timestamp":"2024-03-02T10:00:00.000Z"}}]"#;
    let answer = Arc::new(std::sync::Mutex::new(two.to_owned()));
    let current = answer.clone();
    let upstream = FnUpstream::start(move |request| {
        if request.method == Method::GET {
            Reply::json(200, current.lock().expect("answer").clone())
        } else {
            Reply::json(204, "")
        }
    })
    .await;
    let set = |body: String| *answer.lock().expect("answer") = body;
    let clock = manual_clock();
    let gw = start("", &upstream.url(), &clock).await;
    let url = gw.url(KEY_PATH);
    assert_eq!(ids(&get(&url).await), ["383-old", "383-aaa"]);
    set(versioned("383-aaa", 2));
    let refreshed = get_with(&url, &[("Cache-Control", "no-cache")]).await;
    assert_eq!(ids(&refreshed), ["383-aaa"]);

    set(versioned("383-aaa", 3));
    let end = |id: &str| {
        let url = gw.url(&format!("/genesys/1/cs/services/{id}/end"));
        async move { send(Method::POST, &url, &[], "{}").await }
    };
    assert_eq!(end("383-old").await.status, 204);
    let after = get(&url).await;
    assert_eq!(status_of(&after), "csgate; hit; ttl=30");
    assert_eq!(version_of(&after), 2);

    // A write to a service the entry does hold still invalidates it.
    assert_eq!(end("383-aaa").await.status, 204);
    let after = get(&url).await;
    assert_eq!(status_of(&after), "csgate; fwd=uri-miss; stored");
    assert_eq!(version_of(&after), 3);
    assert_eq!(upstream.count(), 5);
}

#[tokio::test]
async fn a_contact_key_named_like_a_lifecycle_is_fetched_at_its_own_path() {
    let upstream = FakeUpstream::start(Reply::json(200, SERVICES)).await;
    let clock = manual_clock();
    let gw = start("", &upstream.url(), &clock).await;
    for (n, key) in ["active", "completed"].into_iter().enumerate() {
        for suffix in ["", "/active"] {
            let answer =
                get(&gw.url(&format!("/genesys/1/cs/services/anonymous/{key}{suffix}"))).await;
            assert_eq!(answer.status, 200, "{}", answer.text());
        }
        let seen = upstream.requests();
        assert_eq!(seen.len(), n + 1);
        assert_eq!(
            seen[n].path,
            format!("/genesys/1/cs/services/anonymous/{key}")
        );
        assert_eq!(seen[n].query.as_deref(), Some(BROAD));
    }
}
