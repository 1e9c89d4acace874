//! Fair share (issue 25) over real HTTP on loopback: rate limits per tenant and per
//! credential (`429` + `Retry-After`, hits free unless `count_hits`), the backend's
//! bound with per-tenant queues (`503` + `Retry-After` past the deadline or a full
//! queue), connections per client address and backend-bound streams per HTTP/2
//! connection. Rates are tiny (one token per 1000 s) so that no token comes back while
//! a test runs: the tests count requests, never time.
mod common;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Empty};

use common::*;

/// A miss every time: customer routes go upstream with the client's own query.
const MISS: &str = "/genesys/1/cs/customers/C42/services/active";
/// Cached after its first request.
const LOOKUP: &str = "/genesys/1/cs/services/anonymous/4088327799";

fn tenant(center: &str) -> [(&'static str, String); 1] {
    [("ContactCenterId", center.to_owned())]
}

async fn get_as(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    get_with(&gw.url(path), headers).await
}

/// The CS error shape, the status and a `Retry-After` of at least a second.
fn assert_refused(answer: &Answer, status: u16, exception: &str) {
    assert_eq!(answer.status, status, "{}", answer.text());
    assert_eq!(answer.json()["exception"], exception, "{}", answer.text());
    let retry: u64 = answer
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!(retry >= 1);
}

async fn limit_metric(gw: &TestGateway, scope: &str) -> u64 {
    let text = get(&gw.admin_url("/metrics")).await.text();
    let line = format!("csgate_limit_rejections_total{{scope=\"{scope}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in /metrics"))
        .trim()
        .parse()
        .expect("a count")
}

#[tokio::test]
async fn a_tenant_past_its_burst_gets_429_and_other_tenants_do_not() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(
        "[limits]\ntenant = { rate = 0.001, burst = 2 }\n",
        &[upstream.url()],
    )
    .await;
    let a = [("ContactCenterId", "tenant-a")];
    for _ in 0..2 {
        assert_eq!(get_as(&gw, MISS, &a).await.status, 200);
    }
    let refused = get_as(&gw, MISS, &a).await;
    assert_refused(&refused, 429, "TooManyRequests");
    assert_eq!(
        refused.json()["message"],
        "the tenant rate limit is exceeded; retry later"
    );
    // Another group is another tenant; so is no tenant at all.
    let other_group = [("ContactCenterId", "tenant-a"), ("GroupId", "g2")];
    assert_eq!(get_as(&gw, MISS, &other_group).await.status, 200);
    assert_eq!(get_as(&gw, MISS, &[]).await.status, 200);
    // The refused request never reached the backend.
    assert_eq!(upstream.count(), 4);
    assert_eq!(limit_metric(&gw, "tenant").await, 1);
    gw.stop().await;
}

#[tokio::test]
async fn cache_hits_are_free_unless_count_hits() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(
        "[limits]\ntenant = { rate = 0.001, burst = 1 }\n",
        &[upstream.url()],
    )
    .await;
    let a = tenant("tenant-a");
    let a = [(a[0].0, a[0].1.as_str())];
    // The fill spends the one token; every hit after it is served.
    for _ in 0..5 {
        let answer = get_as(&gw, LOOKUP, &a).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!(upstream.count(), 1);
    // A miss has no token left.
    assert_refused(&get_as(&gw, MISS, &a).await, 429, "TooManyRequests");
    gw.stop().await;

    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(
        "[limits]\ncount_hits = true\ntenant = { rate = 0.001, burst = 1 }\n",
        &[upstream.url()],
    )
    .await;
    assert_eq!(get_as(&gw, LOOKUP, &a).await.status, 200);
    assert_refused(&get_as(&gw, LOOKUP, &a).await, 429, "TooManyRequests");
    assert_eq!(upstream.count(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_credential_has_its_own_bucket_and_an_override_its_own_rate() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(
        r#"
[limits]
credential = { rate = 0.001, burst = 1 }
tenant = { rate = 0.001, burst = 1 }
[[limits.override]]
contact_center_id = "big"
rate = 0.001
burst = 3
"#,
        &[upstream.url()],
    )
    .await;
    let key =
        |c: &'static str, auth: &'static str| [("ContactCenterId", c), ("Authorization", auth)];
    assert_eq!(
        get_as(&gw, MISS, &key("big", "Bearer one")).await.status,
        200
    );
    let refused = get_as(&gw, MISS, &key("big", "Bearer one")).await;
    assert_refused(&refused, 429, "TooManyRequests");
    assert_eq!(
        refused.json()["message"],
        "the credential rate limit is exceeded; retry later"
    );
    // The override gives "big" three; "small" has the default one.
    assert_eq!(
        get_as(&gw, MISS, &key("big", "Bearer two")).await.status,
        200
    );
    assert_eq!(
        get_as(&gw, MISS, &key("big", "Bearer three")).await.status,
        200
    );
    let refused = get_as(&gw, MISS, &key("big", "Bearer four")).await;
    assert_eq!(
        refused.json()["message"],
        "the tenant rate limit is exceeded; retry later"
    );
    assert_eq!(
        get_as(&gw, MISS, &key("small", "Bearer five")).await.status,
        200
    );
    assert_refused(
        &get_as(&gw, MISS, &key("small", "Bearer six")).await,
        429,
        "TooManyRequests",
    );
    assert_eq!(upstream.count(), 4);
    gw.stop().await;
}

/// Waits until the backend gate holds `busy` slots and `queued` waiters.
async fn wait_for_load(gw: &TestGateway, busy: usize, queued: usize) {
    let gate = gw.gateway.limits().fair_share().clone();
    wait_until(&format!("{busy} busy, {queued} queued"), || {
        gate.load() == (busy, queued)
    })
    .await;
}

fn center_of(recorded: &Recorded) -> String {
    recorded.headers["contactcenterid"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

#[tokio::test]
async fn a_flooding_tenant_waits_behind_itself_and_the_backend_never_sees_more_than_its_bound() {
    let upstream = FakeUpstream::start(Reply::Gate(Box::new(Reply::json(200, "[]")))).await;
    let gw = start_gateway(
        "[limits.backend]\nmax_concurrent = 2\nqueue_deadline = \"60s\"\n",
        &[upstream.url()],
    )
    .await;
    let mut flood = Vec::new();
    for _ in 0..6 {
        let url = gw.url(MISS);
        flood.push(tokio::spawn(async move {
            get_with(&url, &[("ContactCenterId", "flood")]).await.status
        }));
    }
    upstream.wait_for_count(2).await;
    wait_for_load(&gw, 2, 4).await;
    let url = gw.url(MISS);
    let quiet =
        tokio::spawn(async move { get_with(&url, &[("ContactCenterId", "quiet")]).await.status });
    wait_for_load(&gw, 2, 5).await;
    assert_eq!(upstream.count(), 2, "the backend saw more than its bound");
    // Two slots free: one to each waiting tenant in turn, so "quiet" goes next, ahead
    // of the four "flood" requests that queued before it.
    upstream.release();
    upstream.wait_for_count(4).await;
    let next: Vec<String> = upstream.requests()[2..4].iter().map(center_of).collect();
    assert!(next.contains(&"quiet".to_owned()), "served next: {next:?}");
    wait_for_load(&gw, 2, 3).await;
    while upstream.count() < 7 {
        upstream.release();
        tokio::task::yield_now().await;
        let (busy, _) = gw.gateway.limits().fair_share().load();
        assert!(busy <= 2);
    }
    upstream.release();
    assert_eq!(quiet.await.expect("task"), 200);
    for request in flood {
        assert_eq!(request.await.expect("task"), 200);
    }
    wait_for_load(&gw, 0, 0).await;
    gw.stop().await;
}

#[tokio::test]
async fn past_the_queue_deadline_or_a_full_queue_the_answer_is_503_with_retry_after() {
    let upstream = FakeUpstream::start(Reply::Gate(Box::new(Reply::json(200, "[]")))).await;
    let gw = start_gateway(
        "[limits.backend]\nmax_concurrent = 1\nmax_queue = 1\nqueue_deadline = \"50ms\"\n",
        &[upstream.url()],
    )
    .await;
    let url = gw.url(MISS);
    let holder =
        tokio::spawn(async move { get_with(&url, &[("ContactCenterId", "a")]).await.status });
    upstream.wait_for_count(1).await;
    wait_for_load(&gw, 1, 0).await;
    // Waits its 50 ms in the queue, then 503: the slot is held until released below.
    let waited = get_as(&gw, MISS, &[("ContactCenterId", "b")]).await;
    assert_refused(&waited, 503, "Overloaded");
    assert_eq!(limit_metric(&gw, "queue_deadline").await, 1);
    // With one waiter queued, the next is refused at once.
    let url = gw.url(MISS);
    let queued =
        tokio::spawn(async move { get_with(&url, &[("ContactCenterId", "c")]).await.status });
    wait_for_load(&gw, 1, 1).await;
    assert_refused(
        &get_as(&gw, MISS, &[("ContactCenterId", "d")]).await,
        503,
        "Overloaded",
    );
    assert_eq!(limit_metric(&gw, "queue_full").await, 1);
    assert_eq!(upstream.count(), 1);
    upstream.release();
    assert_eq!(holder.await.expect("task"), 200);
    // The queued one timed out while the gate was shut, or got the slot: never more.
    let _ = queued.await.expect("task");
    while upstream.count() > 1 && gw.gateway.limits().fair_share().load().0 > 0 {
        upstream.release();
        tokio::task::yield_now().await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_client_past_its_connections_is_answered_503_and_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway("[limits.connections]\nper_client = 2\n", &[upstream.url()]).await;
    let request = b"GET /genesys/1/cs/customers/C42/services/active HTTP/1.1\r\nHost: x\r\n\r\n";
    // Two keep-alive connections, each answered once (so each is counted).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        stream.write_all(request).await.expect("write");
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.expect("read");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        held.push(stream);
    }
    // The third is answered and closed (raw_exchange reads to the end).
    let answer = raw_exchange(gw.addr, request).await;
    let (status, body) = split_raw(&answer);
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["exception"], "Overloaded");
    assert_eq!(limit_metric(&gw, "client_connections").await, 1);
    // A connection closed gives its place back.
    drop(held.pop());
    let url = gw.url(MISS);
    wait_until_async(|| {
        let url = url.clone();
        async move { try_get(&url).await.is_some_and(|a| a.status == 200) }
    })
    .await;
    gw.stop().await;
}

/// Polls an async condition, bounded.
async fn wait_until_async<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An HTTP/2 (prior knowledge) connection to the gateway.
async fn h2_connection(gw: &TestGateway) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    h2_connection_and_driver(gw).await.0
}

/// An HTTP/2 connection and the task driving it, which ends when the server closes it.
async fn h2_connection_and_driver(
    gw: &TestGateway,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driver)
}

fn h2_get(gw: &TestGateway, path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::builder()
        .method(Method::GET)
        .uri(gw.url(path))
        .header("ContactCenterId", "a")
        .body(Empty::new())
        .expect("request")
}

/// The h2 reason a request failed with.
fn reset_reason(error: &hyper::Error) -> Option<h2::Reason> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        source = e.source();
    }
    None
}

#[tokio::test]
async fn an_h2_connection_past_its_backend_streams_gets_refused_stream_and_hits_still_pass() {
    let upstream = FakeUpstream::start(Reply::Gate(Box::new(Reply::json(200, "[]")))).await;
    let gw = start_gateway(
        "[limits.connections]\nh2_streams_per_connection = 1\n",
        &[upstream.url()],
    )
    .await;
    let mut sender = h2_connection(&gw).await;
    let first = sender.send_request(h2_get(&gw, MISS));
    let first = tokio::spawn(first);
    upstream.wait_for_count(1).await;
    let refused = sender
        .send_request(h2_get(&gw, MISS))
        .await
        .expect_err("the second backend-bound stream is refused");
    assert_eq!(
        reset_reason(&refused),
        Some(h2::Reason::REFUSED_STREAM),
        "{refused:?}"
    );
    assert_eq!(limit_metric(&gw, "h2_streams").await, 1);
    // Another connection has its own streams.
    let mut other = h2_connection(&gw).await;
    let second = tokio::spawn(other.send_request(h2_get(&gw, MISS)));
    upstream.wait_for_count(2).await;
    upstream.release();
    for answer in [first, second] {
        let answer = answer.await.expect("task").expect("answered");
        assert_eq!(answer.status(), 200);
        let _ = answer.into_body().collect().await;
    }
    // The stream came back with the answer.
    upstream.set_default(Reply::json(200, "[]"));
    let again = sender
        .send_request(h2_get(&gw, MISS))
        .await
        .expect("answered");
    assert_eq!(again.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn an_h2_connection_past_the_client_limit_gets_refused_stream() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway("[limits.connections]\nper_client = 1\n", &[upstream.url()]).await;
    let mut first = h2_connection(&gw).await;
    let answer = first
        .send_request(h2_get(&gw, MISS))
        .await
        .expect("answered");
    assert_eq!(answer.status(), 200);
    let (mut second, driver) = h2_connection_and_driver(&gw).await;
    let refused = second
        .send_request(h2_get(&gw, MISS))
        .await
        .expect_err("refused");
    assert_eq!(
        reset_reason(&refused),
        Some(h2::Reason::REFUSED_STREAM),
        "{refused:?}"
    );
    // Then the server closes it (GOAWAY), well before the header read timeout (10 s)
    // would have: the socket is not held.
    tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the refused connection is closed at once")
        .expect("driver");
    assert_eq!(upstream.count(), 1);
    gw.stop().await;
}
