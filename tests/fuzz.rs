//! Fuzz-style: random paths (random bytes percent-encoded, broken escapes, random route
//! shapes) and random query strings (known and unknown keys, dates, flags, types, broken
//! escapes) against the gateway in front of healthy upstreams. With a healthy upstream the
//! gateway answers only 2xx or 4xx, never 5xx, never hangs; every 4xx it makes is the CS
//! error shape and sent nothing upstream; every 2xx Query Services answer satisfies its
//! route.
mod common;

use std::time::Duration;

use bytes::Bytes;
use csgate::query::Lifecycle;
use csgate::routes::{self, PathOwner, Route};
use http::Method;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

use common::*;

const SERVICES: &str = r#"[{"service_id":"a-1","contact_key":"k","service_type":1,"started":{"timestamp":"2023-03-01T10:00:00.000Z"},"segment":"gold","score":85,"active_states":[{"state_id":1,"active_tasks":[]}],"active_tasks":[]},{"service_id":9007199254740993,"service_type":"DeliveringService","started":{"timestamp":"2023-03-01T12:00:00"},"completed":{"timestamp":"2023-03-02T09:30:00.5"},"score":"85","tags":["gold"],"completed_states":[]},{"customer_id":"ABC","service_id":3,"service_type":2,"started":{"timestamp":"2023-03-02T08:00:00+01:00"},"completed":{"timestamp":"bad"}},{"service_id":4,"service_type":"Sales","started":{"timestamp":"2023-03-03 07:00:00"},"active_states":null}]"#;
const SERVICE: &str = r#"{"service_id":42,"service_type":1,"started":{"timestamp":"2023-03-01T10:00:00Z"},"active_states":[{"state_id":1,"completed_tasks":[]}],"completed_tasks":[]}"#;
const MAP: &str = "[business_attributes.service_type]\nDeliveringService = 8\nSales = 2\n";

/// Characters a URI may carry literally in a path segment besides the unreserved ones.
const SAFE: &str = "ABCXYZabcxyz0189-._~!$'()*,;:@";

/// One piece of percent-encoded text: a literal, a random byte escaped, or a broken escape.
fn piece(extra: &'static str) -> impl Strategy<Value = String> {
    let literals: Vec<char> = SAFE.chars().chain(extra.chars()).collect();
    prop_oneof![
        4 => select(literals).prop_map(String::from),
        3 => any::<u8>().prop_map(|b| format!("%{b:02X}")),
        1 => any::<u8>().prop_map(|b| format!("%{b:02x}")),
        1 => select(vec!["%", "%G1", "%4", "%%", "%C3", "%E2%82", "%F0%9F%98%80", "%C3%A9", "%2F", "%3F"])
            .prop_map(str::to_owned),
    ]
}

fn text(extra: &'static str, max: usize) -> impl Strategy<Value = String> {
    vec(piece(extra), 0..max).prop_map(|pieces| pieces.concat())
}

/// A path parameter: mostly a plausible key, else random text or one around the
/// 256-byte limit.
fn path_param() -> BoxedStrategy<String> {
    let plausible = vec(
        prop_oneof![
            4 => select("abcXYZ0189-._~".chars().collect::<Vec<_>>()).prop_map(String::from),
            1 => select(vec!["%20", "%2B", "+", "%C3%A9", "%40", "%2F", "%e2%82%ac"]).prop_map(str::to_owned),
        ],
        1..20,
    )
    .prop_map(|pieces| pieces.concat());
    prop_oneof![
        6 => plausible,
        3 => text("+=", 30),
        1 => (250usize..262).prop_map(|n| "k".repeat(n)),
        1 => select(vec!["active", "completed", "services", "%2B1%20408"]).prop_map(str::to_owned),
    ]
    .boxed()
}

/// A date-time the contract accepts (the window may still be inverted).
fn valid_date() -> impl Strategy<Value = String> {
    (
        1990u32..2030,
        1u32..13,
        1u32..29,
        0u32..24,
        0u32..60,
        0u32..60,
        0usize..10,
        select(vec!["", "Z", "%2B01:00", "-05:30", "%2B00:00", "-00:00"]),
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, offset)| {
            let fraction = if frac == 0 {
                String::new()
            } else {
                format!(".{}", &"123456789"[..frac])
            };
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}{offset}")
        })
}

/// A date-time that is often invalid: impossible fields, out of range, wrong offsets.
fn date() -> impl Strategy<Value = String> {
    let offsets = vec![
        "", "Z", "z", "%2B01:00", "-05:30", "%2B23:59", "%2B24:00", "+01:00", "%2B0100", "-00:00",
    ];
    (
        prop_oneof![Just(0u32), Just(9999u32), 1970u32..2100],
        0u32..14,
        0u32..33,
        0u32..26,
        0u32..61,
        0u32..62,
        0usize..11,
        select(offsets),
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, offset)| {
            let fraction = if frac == 0 {
                String::new()
            } else {
                format!(".{}", &"1234567890"[..frac])
            };
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}{offset}")
        })
}

fn value() -> BoxedStrategy<String> {
    let words = vec![
        "true",
        "TRUE",
        "False",
        "1",
        "0",
        "",
        "yes",
        "*",
        "gold",
        "85",
        "%2285%22",
        "null",
        "%5B1%5D",
        "%7B%22a%22%3A1%7D",
        "1e400",
        "9007199254740993",
    ];
    let types = vec![
        "1",
        "8",
        "-3",
        "007",
        "Sales",
        "DeliveringService",
        "Marketing",
        "",
        "%20",
        "99999999999999999999",
    ];
    prop_oneof![
        3 => date(),
        2 => select(words).prop_map(str::to_owned),
        2 => vec(select(types), 0..5).prop_map(|items| items.join(",")),
        3 => text("=/?+", 20),
    ]
    .boxed()
}

fn key() -> BoxedStrategy<String> {
    let known = vec![
        "started_from",
        "started_to",
        "completed_from",
        "completed_to",
        "service_types",
        "active_states",
        "completed_states",
        "active_tasks",
        "completed_tasks",
        "extensions",
        "service_id",
        "customer_id",
        "disposition",
        "segment",
        "score",
        "tags",
        "",
    ];
    prop_oneof![
        3 => select(known).prop_map(str::to_owned),
        1 => text("+", 8),
    ]
    .boxed()
}

/// A pair whose value fits its key most of the time.
fn typed_pair() -> BoxedStrategy<String> {
    let dates = select(vec![
        "started_from",
        "started_to",
        "completed_from",
        "completed_to",
    ]);
    let flags = select(vec![
        "active_states",
        "completed_states",
        "active_tasks",
        "completed_tasks",
    ]);
    let flag_words = select(vec!["true", "1", "0", "false", "TRUE", "False", "yes", ""]);
    let types = vec(
        select(vec!["1", "2", "8", "Sales", "DeliveringService", "3"]),
        1..4,
    );
    let filters = (
        select(vec!["segment", "score", "tags", "note"]),
        select(vec![
            "gold",
            "85",
            "%2285%22",
            "silver",
            "9007199254740993",
            "%5B%5D",
        ]),
    );
    prop_oneof![
        3 => (dates, prop_oneof![4 => valid_date().boxed(), 1 => date().boxed()])
            .prop_map(|(k, v)| format!("{k}={v}")),
        3 => (flags.clone(), flag_words).prop_map(|(k, v)| format!("{k}={v}")),
        1 => flags.prop_map(str::to_owned),
        2 => types.prop_map(|t| format!("service_types={}", t.join(","))),
        1 => select(vec!["extensions=*", "extensions=segment,tags", "extensions=x"]).prop_map(str::to_owned),
        2 => filters.prop_map(|(k, v)| format!("{k}={v}")),
    ]
    .boxed()
}

fn query() -> BoxedStrategy<Option<String>> {
    let random = (key(), proptest::option::weighted(0.8, value()))
        .prop_map(|(k, v)| v.map_or(k.clone(), |v| format!("{k}={v}")));
    let pair = prop_oneof![6 => typed_pair(), 1 => random.boxed()];
    let pairs = prop_oneof![
        4 => vec(pair.clone(), 0..5),
        1 => vec(pair, 5..40),
    ];
    let padding = prop_oneof![19 => Just(0usize), 1 => 8000usize..8400];
    proptest::option::weighted(0.9, (pairs, padding))
        .prop_map(|q| {
            q.map(|(pairs, pad)| {
                let mut q = pairs.join("&");
                if pad > 0 {
                    q.push_str(&format!("&pad={}", "p".repeat(pad)));
                }
                q
            })
        })
        .boxed()
}

fn path() -> BoxedStrategy<String> {
    let lifecycle = select(vec!["", "", "/active", "/completed", "/other", "/active/x"]);
    let slash = select(vec!["", "/"]);
    prop_oneof![
        3 => (path_param(), lifecycle.clone(), slash.clone())
            .prop_map(|(p, l, s)| format!("/genesys/1/cs/services/anonymous/{p}{l}{s}")),
        3 => (path_param(), lifecycle, slash)
            .prop_map(|(p, l, s)| format!("/genesys/1/cs/customers/{p}/services{l}{s}")),
        1 => text("+=", 12).prop_map(|id| format!("/genesys/1/cs/services/{id}")),
        1 => vec(text("+=", 8), 0..5).prop_map(|s| format!("/genesys/1/cs/{}", s.join("/"))),
        1 => vec(text("+=", 8), 0..3).prop_map(|s| format!("/{}", s.join("/"))),
    ]
    .boxed()
}

fn method() -> impl Strategy<Value = Method> {
    select(vec![
        Method::GET,
        Method::GET,
        Method::GET,
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::DELETE,
    ])
}

/// Where a request goes: Query Services to the gateways whose upstream answers a Service[],
/// everything else to the one whose upstream answers a single Service.
enum Kind {
    Query {
        anonymous: bool,
        lifecycle: Lifecycle,
    },
    Other,
}

fn kind(method: &Method, path: &str) -> Kind {
    match routes::route(method, path) {
        Ok(Route::QueryServices { owner, lifecycle }) => Kind::Query {
            anonymous: matches!(owner, PathOwner::Anonymous { .. }),
            lifecycle,
        },
        _ => Kind::Other,
    }
}

struct Target<'a> {
    name: &'a str,
    gateway: &'a TestGateway,
    upstream: &'a FakeUpstream,
}

async fn check(
    target: &Target<'_>,
    method: &Method,
    path_and_query: &str,
    kind: &Kind,
) -> Result<(), TestCaseError> {
    let before = target.upstream.count();
    let url = target.gateway.url(path_and_query);
    let body = if *method == Method::POST { "{}" } else { "" };
    let sent = send(
        method.clone(),
        &url,
        &[],
        Bytes::from_static(body.as_bytes()),
    );
    let answer = tokio::time::timeout(Duration::from_secs(5), sent)
        .await
        .map_err(|_| {
            TestCaseError::fail(format!(
                "{} {method} {path_and_query}: no answer in 5 s",
                target.name
            ))
        })?;
    let context = format!(
        "{} {method} {path_and_query} -> {} {}",
        target.name,
        answer.status,
        answer.text()
    );
    prop_assert!(
        (200..300).contains(&answer.status) || (400..500).contains(&answer.status),
        "{}",
        context
    );

    if answer.status >= 400 {
        prop_assert_eq!(
            target.upstream.count(),
            before,
            "a refusal went upstream: {}",
            context
        );
        let content_type = answer.header("content-type");
        prop_assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "{}",
            context
        );
        if *method != Method::HEAD {
            let error: Value = serde_json::from_slice(&answer.body)
                .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {context}")))?;
            let object = error
                .as_object()
                .ok_or_else(|| TestCaseError::fail(format!("not an object: {context}")))?;
            prop_assert_eq!(object.len(), 2, "{}", context);
            prop_assert!(
                object.get("message").is_some_and(Value::is_string),
                "{}",
                context
            );
            prop_assert!(
                object.get("exception").is_some_and(Value::is_string),
                "{}",
                context
            );
        }
        return Ok(());
    }
    if let (
        Kind::Query {
            anonymous,
            lifecycle,
        },
        &Method::GET,
    ) = (kind, method)
    {
        let services: Vec<Value> = serde_json::from_slice(&answer.body)
            .map_err(|e| TestCaseError::fail(format!("not an array ({e}): {context}")))?;
        for service in &services {
            prop_assert!(
                !anonymous || service.get("customer_id").is_none(),
                "{}",
                context
            );
            match lifecycle {
                Lifecycle::All => {}
                Lifecycle::Active => {
                    prop_assert!(service.get("completed").is_none(), "{}", context)
                }
                Lifecycle::Completed => {
                    prop_assert!(service.get("completed").is_some(), "{}", context)
                }
            }
        }
    }
    Ok(())
}

#[test]
fn random_paths_and_queries_get_only_2xx_or_cs_shaped_4xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (lists, object, cached, uncached, by_id) = runtime.block_on(async {
        let lists = FakeUpstream::start(Reply::json(200, SERVICES)).await;
        let object = FakeUpstream::start(Reply::json(200, SERVICE)).await;
        let cached = start_gateway(MAP, &[lists.url()]).await;
        let uncached =
            start_gateway(&format!("{MAP}[cache]\nenabled = false\n"), &[lists.url()]).await;
        let by_id = start_gateway(MAP, &[object.url()]).await;
        (lists, object, cached, uncached, by_id)
    });
    let list_targets = [
        Target {
            name: "cached",
            gateway: &cached,
            upstream: &lists,
        },
        Target {
            name: "uncached",
            gateway: &uncached,
            upstream: &lists,
        },
    ];
    let other_target = [Target {
        name: "other",
        gateway: &by_id,
        upstream: &object,
    }];

    let mut runner = TestRunner::new(Config {
        cases: 800,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (method(), path(), query());
    let result = runner.run(&strategy, |(method, path, query)| {
        let path_and_query = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let kind = kind(&method, &path);
        let targets: &[Target] = match kind {
            Kind::Query { .. } => &list_targets,
            Kind::Other => &other_target,
        };
        runtime.block_on(async {
            for target in targets {
                check(target, &method, &path_and_query, &kind).await?;
            }
            Ok(())
        })
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    // The run exercised both sides of the contract.
    assert!(lists.count() > 0 && object.count() > 0);
}
