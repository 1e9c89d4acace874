//! Issue 20, items 1–7: a client never reads an answer older than its own acknowledged
//! write, whatever the spelling of its contact key, its write path or its tenant; a
//! cache fill does not carry one client's headers into everyone's answer; and an
//! upstream's contradictory framing never reaches a client as a clean, short answer.
//! The real gateway in-process, over real HTTP on loopback, before the reference store
//! (SQLite) where read-your-writes is checked and before fakes where what is forwarded
//! is.

mod common;
mod raw_upstream;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::store::{test_config, TestStore};
use common::*;
use raw_upstream::{RawUpstream, Then};

const CS: &str = "/genesys/1/cs";
/// Entries outlive every test: a stale hit can only end by invalidation.
const LONG_TTL: &str = "[cache]\nttl = \"1h\"\n";
const JSON: (&str, &str) = ("content-type", "application/json");

/// The reference store in a fresh SQLite file, and the gateway (cache on, long TTL) in
/// front of it. The directory lives as long as the returned handle.
struct Stack {
    gw: TestGateway,
    _store: TestStore,
    _dir: tempfile::TempDir,
}

async fn store_stack() -> Stack {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = TestStore::serve(test_config(dir.path().join("ryw.sqlite"))).await;
    let gw = start_gateway(LONG_TTL, &[store.url()]).await;
    Stack {
        gw,
        _store: store,
        _dir: dir,
    }
}

/// Every byte outside RFC 3986's unreserved set percent-encoded: a path segment.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A service id from JSON as text, whether the store wrote it as a number or a string.
fn id_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The service ids a Query Services answer lists.
fn listed(answer: &Answer) -> Vec<String> {
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer
        .json()
        .as_array()
        .unwrap_or_else(|| panic!("not a Service[]: {}", answer.text()))
        .iter()
        .map(|service| id_of(&service["service_id"]))
        .collect()
}

/// `POST path` with a JSON body; the started service's id when the answer is 201.
async fn start_at(gw: &TestGateway, path: &str, body: &str) -> Result<String, Answer> {
    let answer = send(Method::POST, &gw.url(path), &[JSON], body.to_owned()).await;
    if answer.status != 201 {
        return Err(answer);
    }
    Ok(id_of(&answer.json()["service_id"]))
}

/// A start through the usual path, which must succeed.
async fn start(gw: &TestGateway, contact_key: &str) -> String {
    let body = serde_json::json!({ "contact_key": contact_key, "service_type": 1 }).to_string();
    start_at(gw, &format!("{CS}/services/start"), &body)
        .await
        .unwrap_or_else(|answer| panic!("start {contact_key}: {} {}", answer.status, answer.text()))
}

/// The read of `route` after a write, checked with `fresh`; a stale read is described in
/// `problems` with the `Cache-Status` it carried.
async fn read_after(
    gw: &TestGateway,
    route: &str,
    what: &str,
    fresh: impl Fn(&[String]) -> bool,
    problems: &mut Vec<String>,
) {
    let answer = get(&gw.url(route)).await;
    let ids = listed(&answer);
    if !fresh(&ids) {
        problems.push(format!(
            "{what}: GET {route} then lists {ids:?} (cache-status: {:?})",
            answer.header("cache-status")
        ));
    }
}

#[track_caller]
fn assert_none(problems: &[String]) {
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// An upstream that starts service 1 (201), answers other writes 204 and reads `[]`.
async fn any_upstream() -> FnUpstream {
    FnUpstream::start(|request| match request.method {
        Method::GET | Method::HEAD => Reply::json(200, "[]"),
        _ if request.path.ends_with("/start") => Reply::json(201, r#"{"service_id":"1"}"#),
        _ => Reply::json(204, ""),
    })
    .await
}

/// A refusal in the CS error shape with the kind `GatewayError::InvalidHeader` and
/// `InvalidParameter` share; `None` when it is one, else what was answered.
fn not_a_refusal(status: u16, body: &[u8]) -> Option<String> {
    let exception = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["exception"].as_str().map(str::to_owned));
    match (status, exception.as_deref()) {
        (400, Some("InvalidParameter")) => None,
        _ => Some(format!("{status} {}", String::from_utf8_lossy(body))),
    }
}

// --- item 1 ---------------------------------------------------------------------------

/// E.164 and leading-zero numbers are the ordinary shape of a caller's number: the start
/// and the read must name the same contact key.
#[tokio::test]
async fn a_start_with_an_e164_or_leading_zero_key_is_read_back_at_once() {
    let stack = store_stack().await;
    let gw = &stack.gw;
    let mut problems = Vec::new();
    for key in ["+14088327799", "0612345678", "000", "+0"] {
        let route = format!("{CS}/services/anonymous/{}", encode(key));
        assert_eq!(listed(&get(&gw.url(&route)).await), Vec::<String>::new());
        let id = start(gw, key).await;
        let what = format!("start {key:?} answered service {id}");
        read_after(gw, &route, &what, |ids| ids == [id.as_str()], &mut problems).await;
    }
    // A JSON number as the contact key is its decimal text, if the store takes one (the
    // reference store refuses it today: "field 'contact_key': must be a string, not a
    // number"; a plain number cannot fail on today's main anyway).
    let route = format!("{CS}/services/anonymous/4088327799");
    assert_eq!(listed(&get(&gw.url(&route)).await), Vec::<String>::new());
    let numeric = r#"{"contact_key": 4088327799, "service_type": 1}"#;
    match start_at(gw, &format!("{CS}/services/start"), numeric).await {
        Ok(id) => {
            let what = format!("start with the number 4088327799 answered service {id}");
            read_after(gw, &route, &what, |ids| ids == [id.as_str()], &mut problems).await;
        }
        Err(refused) => assert_eq!(refused.status, 400, "{}", refused.text()),
    }
    assert_none(&problems);
}

// --- item 2 ---------------------------------------------------------------------------

/// A write path with percent-encoded letters is the write the upstream applies: it
/// invalidates what it writes. A path the upstream would not route as csgate does
/// (`//`, a capital letter) is refused before it is forwarded.
#[tokio::test]
async fn percent_encoded_write_paths_invalidate_and_misspelt_ones_are_refused() {
    let stack = store_stack().await;
    let gw = &stack.gw;
    let mut problems = Vec::new();

    // A start at `/services/%73tart`.
    let route = format!("{CS}/services/anonymous/started-encoded");
    assert_eq!(listed(&get(&gw.url(&route)).await), Vec::<String>::new());
    let body = r#"{"contact_key":"started-encoded","service_type":1}"#;
    match start_at(gw, &format!("{CS}/services/%73tart"), body).await {
        Ok(id) => {
            let what = format!("POST /services/%73tart answered service {id}");
            read_after(gw, &route, &what, |ids| ids == [id.as_str()], &mut problems).await;
        }
        Err(answer) => problems.push(format!(
            "POST /services/%73tart: {} {}",
            answer.status,
            answer.text()
        )),
    }

    // An end at `/%73ervices/{id}/end`: the active list no longer has it.
    let id = start(gw, "ended-encoded").await;
    let active = format!("{CS}/services/anonymous/ended-encoded/active");
    assert_eq!(listed(&get(&gw.url(&active)).await), [id.as_str()]);
    let path = format!("{CS}/%73ervices/{id}/end");
    let ended = send(Method::POST, &gw.url(&path), &[JSON], "{}").await;
    assert_eq!(ended.status, 204, "POST {path}: {}", ended.text());
    let what = format!("POST {path} answered 204");
    read_after(gw, &active, &what, |ids| !ids.contains(&id), &mut problems).await;

    // An association at `/%63ustomers/C1/services/{id}`: the service is no longer
    // anonymous, so the anonymous list no longer has it.
    let id = start(gw, "associated-encoded").await;
    let anonymous = format!("{CS}/services/anonymous/associated-encoded");
    assert_eq!(listed(&get(&gw.url(&anonymous)).await), [id.as_str()]);
    let path = format!("{CS}/%63ustomers/C1/services/{id}");
    let associated = send(Method::POST, &gw.url(&path), &[JSON], "{}").await;
    assert_eq!(associated.status, 204, "POST {path}: {}", associated.text());
    let what = format!("POST {path} answered 204");
    read_after(
        gw,
        &anonymous,
        &what,
        |ids| !ids.contains(&id),
        &mut problems,
    )
    .await;

    // Spellings the upstream routes differently, or not at all: refused, not forwarded.
    let upstream = any_upstream().await;
    let fake = start_gateway(LONG_TTL, &[upstream.url()]).await;
    for path in [
        format!("{CS}//services/start"),
        format!("{CS}/services/Start"),
    ] {
        let body = r#"{"contact_key":"k","service_type":1}"#;
        let answer = send(Method::POST, &fake.url(&path), &[JSON], body).await;
        if let Some(got) = not_a_refusal(answer.status, &answer.body) {
            problems.push(format!("POST {path}: expected a 400 refusal, got {got}"));
        }
    }
    let forwarded: Vec<String> = upstream.requests().iter().map(|r| r.path.clone()).collect();
    if !forwarded.is_empty() {
        problems.push(format!("the upstream received {forwarded:?}"));
    }
    assert_none(&problems);
}

// --- item 3 ---------------------------------------------------------------------------

/// One request over HTTP/2 with prior knowledge on a fresh connection: (status, body).
async fn h2_send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Bytes) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, http::HeaderValue::from_str(value).expect("value"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 answer");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("h2 body")
        .to_bytes();
    (status, body)
}

/// RFC 9113 §8.2.1: a field value with trailing whitespace is malformed. Accepted, the
/// store trims it and csgate keys it as another tenant.
#[tokio::test]
async fn an_http2_tenant_with_trailing_whitespace_is_refused_and_never_forwarded() {
    let upstream = any_upstream().await;
    let gw = start_gateway(LONG_TTL, &[upstream.url()]).await;
    let tenant = [("contactcenterid", "CC "), JSON];
    let mut problems = Vec::new();
    for (method, path, body) in [
        (
            Method::GET,
            format!("{CS}/services/anonymous/4088327799"),
            "",
        ),
        (
            Method::GET,
            format!("{CS}/customers/C1/services/active"),
            "",
        ),
        (
            Method::POST,
            format!("{CS}/services/start"),
            r#"{"contact_key":"4088327799","service_type":1}"#,
        ),
    ] {
        let (status, answer) = h2_send(gw.addr, method.clone(), &path, &tenant, body).await;
        if let Some(got) = not_a_refusal(status, &answer) {
            problems.push(format!(
                "{method} {path} with contactcenterid \"CC \": expected a 400 refusal, got {got}"
            ));
        }
    }
    if upstream.count() != 0 {
        problems.push(format!(
            "the upstream received {} requests",
            upstream.count()
        ));
    }
    assert_none(&problems);
}

// --- item 4 ---------------------------------------------------------------------------

/// One response read from `stream`: status, head, and the body as its framing says
/// (Content-Length, chunked, or until close), bounded by 10 s.
async fn read_one(stream: &mut tokio::net::TcpStream) -> (u16, String, Vec<u8>) {
    let exchange = async {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before a response head: {buffer:?}");
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut rest = buffer[head_end..].to_vec();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status: {head:?}"));
        let body = if let Some(length) = raw_header(&head, "content-length") {
            let length: usize = length.parse().expect("a length");
            while rest.len() < length {
                let n = stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "closed inside a {length}-byte body");
                rest.extend_from_slice(&chunk[..n]);
            }
            rest.truncate(length);
            rest
        } else if raw_header(&head, "transfer-encoding").is_some() {
            loop {
                if let Some(body) = dechunk(&rest) {
                    break body;
                }
                let n = stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "closed inside a chunked body");
                rest.extend_from_slice(&chunk[..n]);
            }
        } else {
            let _ = stream.read_to_end(&mut rest).await;
            rest
        };
        (status, head, body)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("a whole response within 10 s")
}

/// The value of `name` in a raw response head.
fn raw_header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// A chunked body decoded; `None` until its last chunk has arrived.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[..line_end]).ok()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// `Connection` may not make a tenant, credential or `Host` header hop-by-hop: stripped,
/// the write lands in another tenant than the one csgate invalidates.
#[tokio::test]
async fn a_connection_header_naming_a_tenant_credential_or_host_is_refused() {
    let upstream = any_upstream().await;
    let gw = start_gateway(LONG_TTL, &[upstream.url()]).await;
    let body = r#"{"contact_key":"4088327799","service_type":1}"#;
    let mut problems = Vec::new();
    for connection in [
        "ContactCenterId",
        "contactcenterid",
        "keep-alive, contactcenterid",
        "GroupId",
        "Authorization",
        "Host",
        "HOST",
    ] {
        let request = format!(
            "POST {CS}/services/start HTTP/1.1\r\nHost: gw.example\r\nContactCenterId: X\r\n\
             GroupId: G\r\nAuthorization: Basic YTpi\r\nConnection: {connection}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let (status, _, answer) = read_one(&mut stream).await;
        let message = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_default();
        match not_a_refusal(status, &answer) {
            Some(got) => problems.push(format!(
                "Connection: {connection}: expected a 400 refusal, got {got}"
            )),
            None if !message.contains("Connection") => problems.push(format!(
                "Connection: {connection}: the refusal does not name 'Connection': {message}"
            )),
            None => {}
        }
    }
    if upstream.count() != 0 {
        problems.push(format!(
            "the upstream received {} requests",
            upstream.count()
        ));
    }
    assert_none(&problems);
}

// --- item 5 ---------------------------------------------------------------------------

/// Tenant values are bounded (`[server] max_tenant_bytes`, 256 by default): every
/// distinct one is kept by the write-tracking index.
#[tokio::test]
async fn a_tenant_value_over_the_limit_is_refused_and_one_at_the_limit_is_not() {
    let upstream = any_upstream().await;
    let gw = start_gateway(LONG_TTL, &[upstream.url()]).await;
    let body_for = |method: &Method| {
        if *method == Method::POST {
            r#"{"contact_key":"4088327799","service_type":1}"#
        } else {
            ""
        }
    };
    let requests = [
        (
            Method::GET,
            format!("{CS}/services/anonymous/4088327799"),
            200,
        ),
        (Method::POST, format!("{CS}/services/start"), 201),
    ];
    let at_limit = "c".repeat(256);
    for (method, path, expected) in &requests {
        for tenant in [
            [("ContactCenterId", at_limit.as_str()), ("GroupId", "g")],
            [("ContactCenterId", "cc"), ("GroupId", at_limit.as_str())],
        ] {
            let headers = [tenant[0], tenant[1], JSON];
            let answer = send(method.clone(), &gw.url(path), &headers, body_for(method)).await;
            assert_eq!(
                answer.status,
                *expected,
                "{method} {path}: {}",
                answer.text()
            );
        }
    }
    let accepted = upstream.count();
    assert!(accepted > 0, "the accepted requests reached the upstream");

    let (long, group) = ("c".repeat(15_000), "g".repeat(300));
    let mut problems = Vec::new();
    for (method, path, _) in &requests {
        for (name, tenant) in [
            (
                "ContactCenterId",
                [("ContactCenterId", long.as_str()), ("GroupId", "g")],
            ),
            (
                "GroupId",
                [("ContactCenterId", "cc"), ("GroupId", group.as_str())],
            ),
        ] {
            let headers = [tenant[0], tenant[1], JSON];
            let answer = send(method.clone(), &gw.url(path), &headers, body_for(method)).await;
            if let Some(got) = not_a_refusal(answer.status, &answer.body) {
                let size = tenant
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.len());
                problems.push(format!(
                    "{method} {path} with a {size:?}-byte {name}: expected a 400 refusal, got {got}"
                ));
            }
        }
    }
    if upstream.count() != accepted {
        problems.push(format!(
            "the upstream received {} requests with an oversized tenant",
            upstream.count() - accepted
        ));
    }
    assert_none(&problems);
}

// --- item 6 ---------------------------------------------------------------------------

/// A fill's answer is served to every client of the partition: it must not vary with
/// whichever client happened to fill it.
#[tokio::test]
async fn a_cache_fill_sends_fixed_headers_not_the_filling_clients() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(LONG_TTL, &[upstream.url()]).await;
    let route = format!("{CS}/services/anonymous/4088327799");
    let answer = get_with(
        &gw.url(&route),
        &[
            ("host", "evil.example"),
            ("x-forwarded-host", "evil.example"),
            ("accept", "text/xml"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "x=y"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let fills: Vec<Recorded> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with(&route))
        .collect();
    assert_eq!(fills.len(), 1, "one fill: {fills:?}");
    let fill = &fills[0];
    let seen = |name: &str| -> Vec<String> {
        fill.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let authority = upstream.addr.to_string();
    let mut problems = Vec::new();
    for (name, expected) in [
        ("host", vec![authority]),
        ("accept", vec!["application/json".to_owned()]),
        ("x-forwarded-host", vec![]),
        ("forwarded", vec![]),
        ("x-forwarded-for", vec![]),
        ("x-real-ip", vec![]),
        ("traceparent", vec![]),
        ("tracestate", vec![]),
    ] {
        let got = seen(name);
        if got != expected {
            problems.push(format!("fill {name}: {got:?}, expected {expected:?}"));
        }
    }
    assert_none(&problems);
}

// --- item 7 ---------------------------------------------------------------------------

/// RFC 9112 §6.3: with both `Transfer-Encoding` and `Content-Length`, the chunked framing
/// wins (the length is dropped), or the answer is a 502; never the first bytes of the
/// body presented as the whole of it.
#[tokio::test]
async fn an_upstream_answer_framed_both_ways_is_never_cut_to_its_content_length() {
    let prefix = r#"[{"state_id":"1","state_type":"2","pad":""#;
    let suffix = r#""}]"#;
    let json = format!(
        "{prefix}{}{suffix}",
        "x".repeat(446 - prefix.len() - suffix.len())
    );
    assert_eq!(json.len(), 446);
    let script = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{json}\r\n0\r\n\r\n",
        json.len()
    );
    let upstream = RawUpstream::start(script, Then::Close).await;
    let gw = start_gateway(LONG_TTL, &[upstream.url()]).await;
    let path = format!("{CS}/services/42/states");
    let mut stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let (status, head, body) = read_one(&mut stream).await;
    assert_eq!(upstream.count(), 1, "the request reached the upstream");
    let shown = String::from_utf8_lossy(&body);
    assert!(
        !(status == 200 && body.len() == 2),
        "a 200 cut to the upstream's Content-Length: {head}{shown}"
    );
    if status == 200 {
        assert_eq!(shown, json, "the whole chunked body: {head}");
        let length = raw_header(&head, "content-length");
        assert!(
            length.is_none() || length.as_deref() == Some("446"),
            "content-length {length:?}: {head}"
        );
    } else {
        assert_eq!(status, 502, "{head}{shown}");
    }
}
