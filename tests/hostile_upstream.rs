//! Broken or hostile upstreams (issue 10 items 8–10): a body that stalls or ends short
//! never reaches the client as a clean end; 1xx and HTTP/1.0 oddities; `CONNECT`; large
//! answers on proxied routes stream through. Raw sockets where framing matters.

mod common;
mod raw_upstream;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use raw_upstream::{RawUpstream, Then};

const CS: &str = "/genesys/1/cs";
const NO_CACHE: &str = "[cache]\nenabled = false\n";

/// A `GET path` with `Connection: close`, read until the gateway closes (at most 5 s,
/// so a gateway that holds the client fails the test). Returns the raw answer and how
/// long it took.
async fn raw_get(addr: SocketAddr, path: &str) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        out
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("the gateway let the client go within 5 s");
    (answer, started.elapsed())
}

/// The value of `name` in a raw answer head.
fn raw_header(answer: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(answer);
    let head = text.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// Decodes a chunked body; `None` unless it ends with the last chunk.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).ok()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// Did the client get a complete body? Content-Length honoured, or a terminated chunked
/// body.
fn complete(answer: &[u8]) -> bool {
    let (_, body) = split_raw(answer);
    match raw_header(answer, "content-length") {
        Some(length) => length.parse::<usize>().ok() == Some(body.len()),
        None => dechunk(&body).is_some(),
    }
}

#[tokio::test]
async fn an_upstream_body_that_stalls_aborts_the_client_within_request_timeout() {
    for head in [
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":",
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n",
    ] {
        let upstream = RawUpstream::start(head, Then::Hold).await;
        let gw = start_gateway(
            "[upstream]\nrequest_timeout = \"500ms\"\n",
            &[upstream.url()],
        )
        .await;
        let (answer, took) = raw_get(gw.addr, &format!("{CS}/services/42/states")).await;
        let (status, _) = split_raw(&answer);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(!complete(&answer), "a stalled body ended cleanly: {answer:?}");
        assert!(took < Duration::from_secs(3), "held the client {took:?}");

        // Query Services read the whole body: 504 in the CS shape.
        let answer = get(&gw.url(&format!("{CS}/customers/C1/services"))).await;
        assert_eq!(answer.status, 504, "{}", answer.text());
        assert_eq!(answer.json()["exception"], "UpstreamTimeout");

        let text = get(&gw.admin_url("/metrics")).await.text();
        let series = format!(
            "csgate_upstream_requests_total{{upstream=\"{}\",outcome=\"timeout\"}} 2",
            upstream.url()
        );
        assert!(text.contains(&series), "missing {series}\n{text}");
    }
}

#[tokio::test]
async fn an_upstream_body_that_ends_short_is_never_a_clean_end() {
    for head in [
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":",
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n",
    ] {
        let upstream = RawUpstream::start(head, Then::Close).await;
        let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
        let (answer, _) = raw_get(gw.addr, &format!("{CS}/services/42/states")).await;
        assert!(!complete(&answer), "a short body ended cleanly: {answer:?}");
        let answer = get(&gw.url(&format!("{CS}/customers/C1/services"))).await;
        assert_eq!(answer.status, 502, "{}", answer.text());
        let text = get(&gw.admin_url("/metrics")).await.text();
        let series = format!(
            "csgate_upstream_requests_total{{upstream=\"{}\",outcome=\"reset\"}} 2",
            upstream.url()
        );
        assert!(text.contains(&series), "missing {series}\n{text}");
    }
}

#[tokio::test]
async fn a_101_or_a_lone_interim_answer_from_the_upstream_is_502() {
    for (script, then) in [
        (
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            Then::Hold,
        ),
        ("HTTP/1.1 102 Processing\r\n\r\n", Then::Close),
    ] {
        let upstream = RawUpstream::start(script, then).await;
        let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
        for path in [
            format!("{CS}/services/42/states"),
            format!("{CS}/customers/C1/services"),
            format!("{CS}/services/42"),
        ] {
            let (answer, _) = raw_get(gw.addr, &path).await;
            // No route forwards the 102 (tests/interim.rs): the 502 is the first head.
            let (status, body) = split_raw(&answer);
            assert!(
                status.starts_with("HTTP/1.1 502"),
                "{script:?} {path}: {status}"
            );
            let body = match raw_header(&answer, "content-length") {
                Some(_) => body,
                None => dechunk(&body).expect("complete"),
            };
            let body: serde_json::Value = serde_json::from_slice(&body).expect("CS shape");
            assert!(body["exception"]
                .as_str()
                .is_some_and(|e| e.starts_with("Upstream")));
        }
    }
}

#[tokio::test]
async fn an_http_1_0_upstream_still_gives_the_client_an_http_1_1_answer() {
    let upstream = RawUpstream::start(
        "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"state\":\"ok\"}",
        Then::Close,
    )
    .await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let (answer, _) = raw_get(gw.addr, &format!("{CS}/services/42/states")).await;
    let (status, body) = split_raw(&answer);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let body = match raw_header(&answer, "content-length") {
        Some(_) => body,
        None => dechunk(&body).expect("a terminated chunked body"),
    };
    assert_eq!(body, br#"{"state":"ok"}"#);
}

#[tokio::test]
async fn connect_is_405_and_never_sent_upstream() {
    let upstream = FakeUpstream::start(Reply::json(200, "{}")).await;
    let gw = start_gateway("", &[upstream.url()]).await;
    for target in [format!("{CS}/services/42"), "example.com:443".to_owned()] {
        let request = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n"
        );
        let answer = raw_exchange(gw.addr, request.as_bytes()).await;
        let (status, _) = split_raw(&answer);
        assert!(status.starts_with("HTTP/1.1 405"), "{target}: {status}");
        let allow = raw_header(&answer, "allow").expect("Allow");
        assert!(
            !allow.contains("CONNECT") && allow.contains("POST"),
            "{allow}"
        );
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn answers_on_proxied_routes_stream_through_whatever_their_size() {
    let pad = "x".repeat(3 << 20);
    let big = format!(r#"{{"service_id":"9001","pad":"{pad}"}}"#);
    let upstream = FnUpstream::start({
        let big = big.clone();
        move |r: &Recorded| {
            if r.path.ends_with("/customers/C1/services") {
                Reply::json(200, format!("[{big}]"))
            } else if r.method == Method::POST {
                Reply::json(201, big.clone())
            } else {
                Reply::json(200, big.clone())
            }
        }
    })
    .await;
    // Both limits below the answer: neither applies to a proxied route.
    let gw = start_gateway(
        "[server]\nmax_body_bytes = \"1MiB\"\n[upstream]\nmax_response_bytes = \"2MiB\"\n",
        &[upstream.url()],
    )
    .await;
    // A start answer (read for the cache's service-id index) over the limit: still 201
    // with the whole body, not a 502 after the write happened.
    let answer = send(
        Method::POST,
        &gw.url(&format!("{CS}/services/start")),
        &[("content-type", "application/json")],
        r#"{"contact_key":"k1"}"#,
    )
    .await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.body, Bytes::from(big.clone()));
    let answer = get(&gw.url(&format!("{CS}/services/42/states"))).await;
    assert_eq!((answer.status, answer.body.len()), (200, big.len()));

    // Where the gateway must read the whole answer, max_response_bytes still applies.
    let answer = get(&gw.url(&format!("{CS}/customers/C1/services"))).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.json()["exception"], "UpstreamInvalidResponse");
}
