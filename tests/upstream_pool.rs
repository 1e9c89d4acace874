//! The upstream pool: what counts toward ejection (`eject_on`), panic mode when every
//! upstream is ejected, the `eject_for` cool-down and its half-open trial, retries only
//! when nothing came back (`retry_on`), and a client's failing body never counted
//! against an upstream (issues 14 items 1–2 and 10 items 1 and 7).

mod common;
mod raw_upstream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use raw_upstream::{RawUpstream, Then};

const CS: &str = "/genesys/1/cs";
const BUSY: &str = r#"{"message":"tenant 7 is being migrated","exception":"Unavailable"}"#;
const NO_CACHE: &str = "[cache]\nenabled = false\n";

/// The value of the metric line starting with `series`, if any.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn metrics(gw: &TestGateway) -> String {
    get(&gw.admin_url("/metrics")).await.text()
}

/// A body that fits the route: Query Services want an array, by-id an object.
fn body_for(path: &str) -> &'static str {
    if path.ends_with("/services") || path.contains("/anonymous/") {
        "[]"
    } else if path.ends_with("/services/42") {
        r#"{"service_id":"42"}"#
    } else {
        "{}"
    }
}

#[tokio::test]
async fn an_upstream_answering_503_to_everything_is_still_used_and_serves_again_at_once() {
    let recovered = Arc::new(AtomicBool::new(false));
    let flag = recovered.clone();
    // One route stays broken for good (a tenant's bad request); the rest recover.
    let upstream = FnUpstream::start(move |r: &Recorded| {
        if r.path.ends_with("/services/13/end") || !flag.load(Ordering::SeqCst) {
            Reply::json(503, BUSY)
        } else {
            Reply::json(200, body_for(&r.path))
        }
    })
    .await;
    let gw = start_gateway(
        "[upstream]\neject_after = 2\neject_for = \"60s\"\n",
        &[upstream.url()],
    )
    .await;
    let requests = [
        (Method::GET, format!("{CS}/customers/C1/services")),
        (Method::GET, format!("{CS}/services/anonymous/k1/active")),
        (Method::GET, format!("{CS}/services/42")),
        (Method::GET, format!("{CS}/services/42/states")),
        (Method::POST, format!("{CS}/services/13/end")),
    ];

    // The upstream is ejected after two 503s, then every upstream is ejected: panic
    // mode keeps sending traffic, and the client gets the upstream's own answer.
    for round in 0..4 {
        for (method, path) in &requests {
            let answer = send(method.clone(), &gw.url(path), &[], Bytes::new()).await;
            assert_eq!(
                (answer.status, answer.text().as_str()),
                (503, BUSY),
                "round {round}: {method} {path} got the gateway's answer, not the upstream's"
            );
        }
    }
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, "csgate_upstream_panic"), Some(1.0), "{text}");
    assert_eq!(get(&gw.admin_url("/readyz")).await.status, 200);

    // It answers again: served at once, not after eject_for; the broken route still
    // passes its 503 through.
    recovered.store(true, Ordering::SeqCst);
    for round in 0..2 {
        for (method, path) in &requests {
            let answer = send(method.clone(), &gw.url(path), &[], Bytes::new()).await;
            let want = if path.ends_with("/13/end") {
                (503, BUSY)
            } else {
                (200, body_for(path))
            };
            assert_eq!(
                (answer.status, answer.text().as_str()),
                want,
                "round {round}: {method} {path}"
            );
        }
    }
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, "csgate_upstream_panic"), Some(0.0), "{text}");
    assert_eq!(
        upstream.count(),
        requests.len() * 6 - 1,
        "every request reached it but the last anonymous lookup, a cache hit"
    );
}

#[tokio::test]
async fn eject_on_decides_which_outcomes_count() {
    let upstream = FakeUpstream::start(Reply::json(503, BUSY)).await;
    let gw = start_gateway(
        "[upstream]\neject_after = 1\neject_on = [\"connect-failure\", \"reset\", \"timeout\"]\n",
        &[upstream.url()],
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            get(&gw.url(&format!("{CS}/services/42/states")))
                .await
                .status,
            503
        );
    }
    let text = metrics(&gw).await;
    let label = format!("csgate_upstream_healthy{{upstream=\"{}\"}}", upstream.url());
    assert_eq!(
        metric(&text, &label),
        Some(1.0),
        "503 is not in eject_on\n{text}"
    );
    assert_eq!(metric(&text, "csgate_upstream_panic"), Some(0.0), "{text}");
}

#[tokio::test]
async fn an_ejected_upstream_stays_out_for_eject_for_then_one_trial_decides() {
    let failing = FakeUpstream::start(Reply::json(503, BUSY)).await;
    let healthy = FakeUpstream::start(Reply::json(200, "[]")).await;
    let eject_for = Duration::from_millis(1000);
    let gw = start_gateway(
        "[upstream]\neject_after = 1\neject_for = \"1s\"\n[cache]\nenabled = false\n",
        &[failing.url(), healthy.url()],
    )
    .await;
    // A write: never retried, so every answer shows which upstream took it.
    let url = gw.url(&format!("{CS}/services/42/end"));
    let post = |url: String| async move { send(Method::POST, &url, &[], "{}").await };

    // Round-robin starts at the first upstream: one 503, passed through, ejects it.
    assert_eq!(post(url.clone()).await.status, 503);
    let ejected_at = Instant::now();
    assert_eq!(failing.count(), 1);

    // Through most of the cool-down nothing reaches it, whatever a TCP probe says (it
    // accepts connections all along).
    let mut served = 0;
    while ejected_at.elapsed() < eject_for * 8 / 10 {
        let answer = post(url.clone()).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        served += 1;
    }
    assert!(served > 0);
    assert_eq!(failing.count(), 1, "back in rotation before eject_for");

    // Half-open: of ten concurrent requests exactly one is the trial.
    failing.set_default(Reply::Gate(Box::new(Reply::json(503, BUSY))));
    tokio::time::sleep_until((ejected_at + eject_for).into()).await;
    let before = healthy.count();
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post(url.clone()).await.status })
        })
        .collect();
    healthy.wait_for_count(before + 9).await;
    failing.wait_for_count(2).await;
    assert_eq!(failing.count(), 2, "one trial at a time");
    failing.release();
    let mut statuses = Vec::new();
    for request in burst {
        statuses.push(request.await.expect("request"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 200, 200, 503]);

    // The failed trial rested it again; once it answers well, the next trial brings it
    // back and it shares the traffic.
    failing.set_default(Reply::json(200, "[]"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while failing.count() < 3 {
        assert!(Instant::now() < deadline, "no second trial");
        assert_eq!(post(url.clone()).await.status, 200);
    }
    for _ in 0..4 {
        assert_eq!(post(url.clone()).await.status, 200);
    }
    assert!(
        failing.count() >= 4,
        "the trial's success put it back in rotation"
    );
}

#[tokio::test]
async fn a_read_is_retried_only_when_nothing_came_back_and_never_with_a_body() {
    let cases: [(&str, Reply, u16, usize); 4] = [
        // The connection closes before any byte of an answer: retried.
        ("reset before the head", Reply::Hangup, 200, 1),
        // No head within request_timeout: retried.
        (
            "timeout before the head",
            Reply::Delay(Duration::from_secs(5), Box::new(Reply::json(200, "[]"))),
            200,
            1,
        ),
        // An answer came back: passed through, the second upstream never asked.
        ("502 answer", Reply::json(502, BUSY), 502, 0),
        ("504 answer", Reply::json(504, BUSY), 504, 0),
    ];
    for (case, reply, status, second_count) in cases {
        for path in [
            format!("{CS}/customers/C1/services"),
            format!("{CS}/services/42/states"),
        ] {
            let first = FakeUpstream::start(reply.clone()).await;
            let second = FakeUpstream::start(Reply::json(200, "[]")).await;
            let gw = start_gateway(
                "[upstream]\nrequest_timeout = \"300ms\"\n[cache]\nenabled = false\n",
                &[first.url(), second.url()],
            )
            .await;
            let answer = get(&gw.url(&path)).await;
            assert_eq!(answer.status, status, "{case} {path}: {}", answer.text());
            assert_eq!(
                (first.count(), second.count()),
                (1, second_count),
                "{case} {path}"
            );
        }
    }

    // A request with a body is sent once, whatever happened.
    let first = FakeUpstream::start(Reply::Hangup).await;
    let second = FakeUpstream::start(Reply::json(200, "{}")).await;
    let gw = start_gateway(NO_CACHE, &[first.url(), second.url()]).await;
    let answer = send(
        Method::POST,
        &gw.url(&format!("{CS}/services/42/end")),
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(answer.status, 502);
    assert_eq!((first.count(), second.count()), (1, 0));

    // The head came, the body broke off: not retried (something was received).
    let broken = RawUpstream::start(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[{",
        Then::Close,
    )
    .await;
    let second = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(NO_CACHE, &[broken.url(), second.url()]).await;
    let answer = get(&gw.url(&format!("{CS}/customers/C1/services"))).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!((broken.count(), second.count()), (1, 0));
}

/// Writes `request` on a fresh connection, then (unless `close_write` is false) keeps it
/// open; returns the status line the gateway answered, or "" if it closed without one.
async fn raw_status(addr: std::net::SocketAddr, request: &[u8], half_close: bool) -> String {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        if half_close {
            stream.shutdown().await.expect("shutdown");
        }
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        out
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the gateway answered or closed within 10 s");
    split_raw(&answer).0
}

#[tokio::test]
async fn a_client_body_that_fails_to_arrive_is_the_clients_fault_not_the_upstreams() {
    let upstream = FakeUpstream::start(Reply::json(200, "{}")).await;
    let gw = start_gateway(
        "[server]\nbody_read_timeout = \"300ms\"\n[upstream]\neject_after = 1\nrequest_timeout = \"5s\"\n",
        &[upstream.url()],
    )
    .await;
    let head = format!(
        "POST {CS}/services/42/end HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
    );
    for _ in 0..3 {
        // Invalid chunked framing: 400 in the CS shape.
        let bad_chunk = format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n");
        let answer = raw_exchange(gw.addr, bad_chunk.as_bytes()).await;
        let (status, body) = split_raw(&answer);
        assert!(status.starts_with("HTTP/1.1 400"), "{status}");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("CS error shape");
        assert_eq!(body["exception"], "InvalidParameter");

        // A body that stalls: 408 after body_read_timeout, not the upstream's 504.
        let stalled = format!("{head}Content-Length: 100\r\n\r\n{{\"a\":");
        let status = raw_status(gw.addr, stalled.as_bytes(), false).await;
        assert!(status.starts_with("HTTP/1.1 408"), "{status}");

        // A client that goes away mid-body: whatever it is told, nothing is counted.
        let gone = format!("{head}Content-Length: 100\r\n\r\n{{\"a\":");
        let status = raw_status(gw.addr, gone.as_bytes(), true).await;
        assert!(
            status.is_empty() || status.starts_with("HTTP/1.1 400"),
            "{status}"
        );
    }

    // None of it touched the upstream's standing: still in rotation, ready, serving.
    let text = metrics(&gw).await;
    let label = format!("upstream=\"{}\"", upstream.url());
    assert_eq!(
        metric(&text, &format!("csgate_upstream_healthy{{{label}}}")),
        Some(1.0),
        "{text}"
    );
    for outcome in [
        "reset",
        "timeout",
        "connect_error",
        "invalid_response",
        "bad_status",
    ] {
        assert_eq!(
            metric(
                &text,
                &format!("csgate_upstream_requests_total{{{label},outcome=\"{outcome}\"}}")
            ),
            None,
            "{outcome}\n{text}"
        );
    }
    assert_eq!(get(&gw.admin_url("/readyz")).await.status, 200);
    let answer = send(
        Method::POST,
        &gw.url(&format!("{CS}/services/42/end")),
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(answer.status, 200);
}
