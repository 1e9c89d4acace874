//! Issue 10 item 1 under load: 5 bad request bodies a second for 10 s (invalid chunked
//! framing, a client that goes away mid-body, a client that stalls mid-body past
//! `body_read_timeout`), on a Query Services route and a proxied write route, alongside
//! several clients doing real reads and writes against the reference store. No
//! legitimate request may fail, the one upstream may never be ejected, `/readyz` stays
//! 200, and no bad body is ever sent upstream twice.
//!
//! The upstream is the real store (`common::store::TestStore`) behind a recording relay,
//! so the test counts what reached the upstream; it is csgate's only `[upstream] urls`
//! entry, so ejecting it would be visible (and fatal) at once.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{interval, Instant, MissedTickBehavior};

use common::store::{test_config, TestStore};
use common::*;

const CS: &str = "/genesys/1/cs";
const TENANT: (&str, &str) = ("ContactCenterId", "cc-load");
const JSON: (&str, &str) = ("Content-Type", "application/json");
/// The scenario of issue 10 item 1.
const RUN: Duration = Duration::from_secs(10);
const BAD_PER_SECOND: u32 = 5;
/// Concurrent legitimate clients, each sending a request every `LEGIT_EVERY`.
const CLIENTS: usize = 4;
const LEGIT_EVERY: Duration = Duration::from_millis(50);
const BODY_READ_TIMEOUT: &str = "500ms";
/// Bad writes go to service ids no legitimate client has, one id per bad request, so
/// the relay's count per path is the number of times that request reached the upstream.
const BAD_ID_BASE: u64 = 9_000_000;

/// What reached the upstream: one line per request, and whether its body arrived whole.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, bool)>>>);

/// A relay in front of the store that records every request it receives and forwards
/// the ones whose body arrived whole.
async fn relay(store: SocketAddr, seen: Seen) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("addr");
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (client, seen) = (client.clone(), seen.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (client, seen) = (client.clone(), seen.clone());
                    async move { forward(store, &client, &seen, request).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

async fn forward(
    store: SocketAddr,
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    seen: &Seen,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (mut parts, body) = request.into_parts();
    let line = format!("{} {}", parts.method, parts.uri.path());
    let body = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes);
    seen.0.lock().expect("seen").push((line, body.is_ok()));
    let Ok(body) = body else {
        // csgate gave up on this request mid-body; nobody reads this answer.
        let mut answer = Response::new(Full::new(Bytes::new()));
        *answer.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(answer);
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("http://{store}{path_and_query}")
        .parse()
        .expect("store uri");
    match client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(answer) => {
            let (head, body) = answer.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Response::from_parts(head, Full::new(body)))
        }
        Err(e) => panic!("the relay could not reach the store: {e}"),
    }
}

/// The three ways a request body fails to arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Bad {
    /// `Transfer-Encoding: chunked`, then `zz\r\n\r\n`.
    InvalidChunk,
    /// Announces 100 bytes, sends 6, then shuts its sending side and waits.
    GoneMidBody,
    /// Announces 100 bytes, sends 6, then sends nothing more.
    StallsMidBody,
}

const KINDS: [Bad; 3] = [Bad::InvalidChunk, Bad::GoneMidBody, Bad::StallsMidBody];

/// One bad request on a fresh raw connection; the status code csgate answered, or 0
/// when it closed the connection without an answer.
async fn bad_request(addr: SocketAddr, kind: Bad, path: &str, method: &str) -> u16 {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: gw\r\nContactCenterId: cc-load\r\n\
         Content-Type: application/json\r\nConnection: close\r\n"
    );
    let request = match kind {
        Bad::InvalidChunk => format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n"),
        Bad::GoneMidBody | Bad::StallsMidBody => {
            format!("{head}Content-Length: 100\r\n\r\n{{\"a\":1")
        }
    };
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        if kind == Bad::GoneMidBody {
            stream.shutdown().await.expect("shutdown");
        }
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        out
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("{kind:?} {path}: neither answered nor closed in 10 s"));
    let (line, _) = split_raw(&answer);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One legitimate client: start a service, find it, end it, find it again; repeated,
/// one request every `LEGIT_EVERY`, until `stop`.
async fn legitimate(gw: SocketAddr, client: usize, stop: Arc<AtomicBool>) -> Tally {
    let key = format!("legit-{client}");
    let lookup = format!("http://{gw}{CS}/services/anonymous/{key}/active");
    let mut pace = interval(LEGIT_EVERY);
    pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tally = Tally::default();
    let mut service: Option<String> = None;
    let mut step = 0usize;
    while !stop.load(Ordering::SeqCst) {
        pace.tick().await;
        let (what, answer) = match (step % 4, &service) {
            (0, _) => {
                let body = format!(r#"{{"contact_key":"{key}","service_type":1}}"#);
                let url = format!("http://{gw}{CS}/services/start");
                let answer = send_json(Method::POST, &url, body).await;
                service = answer
                    .as_ref()
                    .filter(|a| a.status == 201)
                    .map(|a| a.json()["service_id"].to_string());
                ("start", expect(answer, 201))
            }
            (2, Some(id)) => {
                let url = format!("http://{gw}{CS}/services/{id}/end");
                let answer = send_json(Method::POST, &url, "{}".to_owned()).await;
                service = None;
                ("end", expect(answer, 204))
            }
            (step, _) => {
                let answer =
                    try_send_body(Method::GET, &lookup, &[TENANT], Full::new(Bytes::new())).await;
                // Right after the start the active service is listed (the write
                // invalidated the cached answer); right after the end it is gone.
                let expected = step == 1 && service.is_some();
                let outcome = expect(answer, 200).and_then(|a| {
                    let ids: Vec<String> = a.json().as_array().map_or_else(Vec::new, |all| {
                        all.iter().map(|s| s["service_id"].to_string()).collect()
                    });
                    let listed = service.as_ref().is_some_and(|id| ids.contains(id));
                    if listed == expected {
                        Ok(a)
                    } else {
                        Err(format!(
                            "service {service:?} listed: {listed}, in {}",
                            a.text()
                        ))
                    }
                });
                ("lookup", outcome)
            }
        };
        tally.sent += 1;
        step += 1;
        match answer {
            Ok(_) => tally.ok += 1,
            Err(e) => tally.failures.push(format!("{what}: {e}")),
        }
    }
    tally
}

/// What the legitimate clients saw.
#[derive(Default)]
struct Tally {
    sent: usize,
    ok: usize,
    failures: Vec<String>,
}

/// The answer, if it came with the `expected` status.
fn expect(answer: Option<Answer>, expected: u16) -> Result<Answer, String> {
    match answer {
        Some(a) if a.status == expected => Ok(a),
        Some(a) => Err(format!("{} {}", a.status, a.text())),
        None => Err("no answer".to_owned()),
    }
}

async fn send_json(method: Method, url: &str, body: String) -> Option<Answer> {
    try_send_body(method, url, &[TENANT, JSON], Full::new(Bytes::from(body))).await
}

/// The value of the metric line starting with `series`, if any.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_bad_bodies_a_second_for_ten_seconds_fail_no_legitimate_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = TestStore::serve(test_config(dir.path().join("load.sqlite"))).await;
    let seen = Seen::default();
    let upstream = relay(store.addr, seen.clone()).await;
    // One upstream, ejected after a single counted failure and kept out for longer than
    // the run: any bad body counted against it would show until the end.
    let gw = start_gateway(
        &format!(
            "[server]\nbody_read_timeout = \"{BODY_READ_TIMEOUT}\"\n\
             [upstream]\neject_after = 1\neject_for = \"60s\"\n"
        ),
        std::slice::from_ref(&upstream),
    )
    .await;
    let healthy = format!("csgate_upstream_healthy{{upstream=\"{upstream}\"}}");
    let stop = Arc::new(AtomicBool::new(false));

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(legitimate(gw.addr, c, stop.clone())))
        .collect();

    // Readiness and the upstream's standing, polled throughout.
    let watch = {
        let (admin, stop, healthy) = (gw.admin, stop.clone(), healthy.clone());
        tokio::spawn(async move {
            let mut pace = interval(Duration::from_millis(100));
            let (mut polls, mut failures) = (0usize, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                pace.tick().await;
                polls += 1;
                let ready = try_get(&format!("http://{admin}/readyz")).await;
                if ready.as_ref().map(|a| a.status) != Some(200) {
                    failures.push(format!("/readyz: {:?}", ready.map(|a| a.status)));
                }
                let text = try_get(&format!("http://{admin}/metrics"))
                    .await
                    .map(|a| a.text());
                let up = text.as_deref().and_then(|t| metric(t, &healthy));
                if up != Some(1.0) {
                    failures.push(format!("{healthy} = {up:?}"));
                }
            }
            (polls, failures)
        })
    };

    // 5 bad bodies a second, cycling through every (kind, route) pair.
    let started = Instant::now();
    let mut pace = interval(Duration::from_secs(1) / BAD_PER_SECOND);
    let mut bad = Vec::new();
    for i in 0..(RUN.as_secs() as u32 * BAD_PER_SECOND) {
        pace.tick().await;
        let kind = KINDS[i as usize % KINDS.len()];
        let (route, method, path) = if (i as usize / KINDS.len()).is_multiple_of(2) {
            ("query", "GET", format!("{CS}/services/anonymous/bad-{i}"))
        } else {
            let id = BAD_ID_BASE + u64::from(i);
            ("write", "POST", format!("{CS}/services/{id}/end"))
        };
        let addr = gw.addr;
        bad.push(tokio::spawn(async move {
            let status = bad_request(addr, kind, &path, method).await;
            (kind, route, path, status)
        }));
    }
    let mut outcomes: BTreeMap<(Bad, &str, u16), usize> = BTreeMap::new();
    let mut bad_paths = Vec::new();
    for task in bad {
        let (kind, route, path, status) = task.await.expect("bad request task");
        *outcomes.entry((kind, route, status)).or_default() += 1;
        bad_paths.push((route, path));
    }
    // The legitimate clients run the whole 10 s and past the last bad request's answer.
    tokio::time::sleep_until(started + RUN).await;
    stop.store(true, Ordering::SeqCst);

    let (mut sent, mut ok, mut failures) = (0, 0, Vec::new());
    for client in clients {
        let tally = client.await.expect("client task");
        sent += tally.sent;
        ok += tally.ok;
        failures.extend(tally.failures);
    }
    let (polls, watch_failures) = watch.await.expect("watch task");
    let arrivals = seen.0.lock().expect("seen").clone();

    eprintln!("legitimate: {sent} sent, {ok} got the expected 2xx");
    for ((kind, route, status), n) in &outcomes {
        let status = if *status == 0 {
            "closed".to_owned()
        } else {
            status.to_string()
        };
        eprintln!("bad {kind:?} on {route}: {n} × {status}");
    }
    eprintln!(
        "readiness/health polls: {polls}, failed: {}; upstream saw {} requests ({} with a body that failed)",
        watch_failures.len(),
        arrivals.len(),
        arrivals.iter().filter(|(_, whole)| !whole).count()
    );

    assert!(
        sent >= CLIENTS * 50,
        "only {sent} legitimate requests were sent"
    );
    assert_eq!(ok, sent, "legitimate requests failed: {failures:#?}");
    assert!(polls >= 50, "only {polls} readiness polls");
    assert!(watch_failures.is_empty(), "{watch_failures:#?}");
    for ((kind, route, status), n) in &outcomes {
        let allowed: &[u16] = match kind {
            Bad::InvalidChunk => &[400],
            Bad::StallsMidBody => &[408],
            Bad::GoneMidBody => &[400, 0],
        };
        assert!(
            allowed.contains(status),
            "{n} × {kind:?} on {route} answered {status}, expected one of {allowed:?}"
        );
    }
    assert_eq!(
        outcomes.values().sum::<usize>(),
        (RUN.as_secs() as u32 * BAD_PER_SECOND) as usize
    );
    for (route, path) in &bad_paths {
        let times = arrivals
            .iter()
            .filter(|(line, _)| line.ends_with(path.as_str()))
            .count();
        // A Query Services body is read whole before anything is sent; a proxied write
        // streams its body, so its head may reach the upstream once, never twice.
        let most = usize::from(*route == "write");
        assert!(times <= most, "{path} reached the upstream {times} times");
    }
    let text = get(&gw.admin_url("/metrics")).await.text();
    assert_eq!(metric(&text, &healthy), Some(1.0), "{text}");
    for outcome in [
        "reset",
        "timeout",
        "connect_error",
        "invalid_response",
        "bad_status",
    ] {
        let series = format!(
            "csgate_upstream_requests_total{{upstream=\"{upstream}\",outcome=\"{outcome}\"}}"
        );
        assert_eq!(metric(&text, &series), None, "{series}\n{text}");
    }
    gw.stop().await;
}
