//! Issue 14 item 3: the upstream's `1xx` interim answers (`102`, `103 Early Hints` with its
//! `Link` headers) reach HTTP/1.1 and HTTP/2 clients of pass-through routes before the
//! final answer, hop-by-hop headers stripped; `100` is not forwarded, HTTP/1.0 clients get
//! none, a `101` stays `502`. Issue 10 item 16: HTTP/2 trailers carrying a pseudo-header
//! are a stream error. A raw-socket upstream scripts the interim answers and holds the
//! final one until the test has seen them, so "before the final answer" is observed, not
//! inferred; raw HTTP/2 frames send what no client library would.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use common::{start_gateway, FakeUpstream, Reply};

const CS: &str = "/genesys/1/cs";
const NO_CACHE: &str = "[cache]\nenabled = false\n";
/// A pass-through route.
const PASS_THROUGH: &str = "/genesys/1/cs/services/42/states";

/// `100` (hop-by-hop: never forwarded), `102`, then a `103` with two `Link` headers and
/// hop-by-hop ones (`Connection` naming `X-Secret`, `Keep-Alive`) that must not pass.
const INTERIM: &str = "HTTP/1.1 100 Continue\r\n\r\n\
    HTTP/1.1 102 Processing\r\n\r\n\
    HTTP/1.1 103 Early Hints\r\n\
    Link: </a.css>; rel=preload; as=style\r\n\
    Link: </b.js>; rel=preload; as=script\r\n\
    Connection: x-secret\r\n\
    X-Secret: 1\r\n\
    Keep-Alive: timeout=5\r\n\r\n";
const FINAL: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

/// A raw-socket upstream: for each connection it reads one request head, writes `first`,
/// waits for a permit from [`Scripted::release`] when gated, then writes `then` and
/// closes.
struct Scripted {
    addr: SocketAddr,
    gate: Arc<Semaphore>,
}

impl Scripted {
    async fn start(first: &'static str, then: &'static str, gated: bool) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let gate = Arc::new(Semaphore::new(0));
        let held = gate.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let gate = held.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(n) if n > 0 => head.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    if stream.write_all(first.as_bytes()).await.is_err() {
                        return;
                    }
                    if gated {
                        let Ok(permit) = gate.acquire().await else {
                            return;
                        };
                        permit.forget();
                    }
                    let _ = stream.write_all(then.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Scripted { addr, gate }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn release(&self) {
        self.gate.add_permits(1);
    }
}

/// One answer head: status line and header lines.
#[derive(Debug)]
struct Head {
    status: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(text: &str) -> Head {
        let mut lines = text.split("\r\n");
        let status = lines.next().unwrap_or_default().to_owned();
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Head { status, headers }
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Reads from `stream` until `buffer` holds `n` complete heads, within 10 s.
async fn read_heads(stream: &mut TcpStream, buffer: &mut Vec<u8>, n: usize) {
    let read = async {
        let mut chunk = [0u8; 4096];
        while buffer.windows(4).filter(|w| *w == b"\r\n\r\n").count() < n {
            match stream.read(&mut chunk).await {
                Ok(k) if k > 0 => buffer.extend_from_slice(&chunk[..k]),
                _ => return,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the heads arrived within 10 s");
}

/// Sends `GET path` over `version` ("1.1" or "1.0") and returns the connection.
async fn raw_get(addr: SocketAddr, path: &str, version: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/{version}\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream
}

/// Reads the rest of the answer until the gateway closes, within 10 s.
async fn read_to_end(stream: &mut TcpStream, buffer: &mut Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(buffer))
        .await
        .expect("the gateway closed within 10 s")
        .expect("read");
}

/// The heads in a raw exchange, interim ones first; the body after the last is ignored.
fn heads(raw: &[u8]) -> Vec<Head> {
    let text = String::from_utf8_lossy(raw);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some((head, after)) = rest.split_once("\r\n\r\n") {
        out.push(Head::parse(head));
        let interim = out.last().is_some_and(|h| {
            h.status
                .split(' ')
                .nth(1)
                .is_some_and(|s| s.starts_with('1'))
        });
        if !interim {
            break;
        }
        rest = after;
    }
    out
}

/// What a forwarded `103` must carry: both `Link`s in order, `Via`, no hop-by-hop header.
fn assert_early_hints(links: &[&str], has: impl Fn(&str) -> bool, via: &[&str]) {
    assert_eq!(
        links,
        [
            "</a.css>; rel=preload; as=style",
            "</b.js>; rel=preload; as=script"
        ]
    );
    for hop in ["connection", "x-secret", "keep-alive"] {
        assert!(!has(hop), "{hop} was forwarded on the 103");
    }
    assert!(
        via.iter().any(|v| v.ends_with("csgate")),
        "no Via on the 103: {via:?}"
    );
}

#[tokio::test]
async fn an_http_1_1_client_gets_the_102_and_103_before_the_final_answer() {
    let upstream = Scripted::start(INTERIM, FINAL, true).await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let mut stream = raw_get(gw.addr, PASS_THROUGH, "1.1").await;
    let mut buffer = Vec::new();
    // The upstream holds its final answer until the interim ones have been seen.
    read_heads(&mut stream, &mut buffer, 2).await;
    let interim = heads(&buffer);
    let statuses: Vec<_> = interim.iter().map(|h| h.status.as_str()).collect();
    assert_eq!(
        statuses,
        ["HTTP/1.1 102 Processing", "HTTP/1.1 103 Early Hints"]
    );
    let hints = &interim[1];
    assert_early_hints(
        &hints.all("link"),
        |name| !hints.all(name).is_empty(),
        &hints.all("via"),
    );

    upstream.release();
    read_to_end(&mut stream, &mut buffer).await;
    let all = heads(&buffer);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[2].status, "HTTP/1.1 200 OK");
    assert!(buffer.ends_with(b"{}"));
}

#[tokio::test]
async fn an_http_2_client_gets_the_102_and_103_before_the_final_answer() {
    let upstream = Scripted::start(INTERIM, FINAL, true).await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("h2 ready");
    let request = http::Request::builder()
        .uri(format!("http://{}{PASS_THROUGH}", gw.addr))
        .body(())
        .expect("request");
    let (mut response, _) = client.send_request(request, true).expect("send");

    let mut interim = Vec::new();
    let collect = async {
        while interim.len() < 2 {
            match std::future::poll_fn(|cx| response.poll_informational(cx)).await {
                Some(Ok(answer)) => interim.push(answer),
                Some(Err(e)) => panic!("stream failed: {e}"),
                None => panic!("the final answer came first: {interim:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .expect("two interim answers within 10 s");
    let statuses: Vec<_> = interim.iter().map(|a| a.status().as_u16()).collect();
    assert_eq!(statuses, [102, 103]);
    let hints = interim[1].headers();
    let strings = |name: &str| -> Vec<&str> {
        hints
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect()
    };
    assert_early_hints(
        &strings("link"),
        |name| hints.contains_key(name),
        &strings("via"),
    );

    upstream.release();
    let answer = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("final answer within 10 s")
        .expect("final answer");
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    assert_eq!(bytes, b"{}");
}

#[tokio::test]
async fn an_http_1_0_client_gets_no_interim_answer_where_an_http_1_1_client_does() {
    let upstream = Scripted::start(INTERIM, FINAL, false).await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    for (version, expected) in [
        ("1.1", vec!["HTTP/1.1 102", "HTTP/1.1 103", "HTTP/1.1 200"]),
        ("1.0", vec!["HTTP/1.0 200"]),
    ] {
        let mut stream = raw_get(gw.addr, PASS_THROUGH, version).await;
        let mut buffer = Vec::new();
        read_to_end(&mut stream, &mut buffer).await;
        let statuses: Vec<String> = heads(&buffer)
            .iter()
            .map(|h| h.status.chars().take(12).collect())
            .collect();
        assert_eq!(statuses, expected, "HTTP/{version}");
    }
}

#[tokio::test]
async fn a_101_after_a_forwarded_103_is_still_502() {
    let upstream = Scripted::start(
        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        false,
    )
    .await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let mut stream = raw_get(gw.addr, PASS_THROUGH, "1.1").await;
    let mut buffer = Vec::new();
    read_to_end(&mut stream, &mut buffer).await;
    let all = heads(&buffer);
    let statuses: Vec<String> = all
        .iter()
        .map(|h| h.status.chars().take(12).collect())
        .collect();
    assert_eq!(statuses, ["HTTP/1.1 103", "HTTP/1.1 502"], "{all:?}");
    assert_eq!(all[0].all("link"), ["</a.css>; rel=preload"]);
    assert!(all[1].all("upgrade").is_empty());
}

// --- issue 10 item 16: a pseudo-header in HTTP/2 trailers ------------------------------

use common::h2frames::{
    frame, header_block, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, SETTINGS,
};
const PROTOCOL_ERROR: u32 = 0x1;

/// Sends `method path` on stream 1 with a 10-byte body and trailers that start with the
/// pseudo-header `pseudo`, then reads frames until stream 1 is answered or reset.
/// Returns the frames read as (type, stream, payload).
async fn trailers_with_pseudo(
    addr: SocketAddr,
    method: &str,
    path: &str,
    pseudo: (&str, &str),
) -> Vec<(u8, u32, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let authority = addr.to_string();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    let request = header_block(&[
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", &authority),
        ("content-type", "application/json"),
        ("content-length", "10"),
    ]);
    bytes.extend(frame(HEADERS, END_HEADERS, 1, &request));
    bytes.extend(frame(DATA, 0, 1, b"{\"a\":\"bc\"}"));
    let trailers = header_block(&[pseudo, ("x-t", "1")]);
    bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailers));
    stream.write_all(&bytes).await.expect("write");

    let mut seen = Vec::new();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
            if head[3] == SETTINGS && head[4] & 0x1 == 0 {
                let _ = stream.write_all(&frame(SETTINGS, 0x1, 0, &[])).await;
            }
            let done =
                (head[3] == HEADERS || head[3] == RST_STREAM) && id == 1 || head[3] == GOAWAY;
            seen.push((head[3], id, payload));
            if done {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("stream 1 ended within 10 s");
    seen
}

fn assert_reset_with_protocol_error(frames: &[(u8, u32, Vec<u8>)], what: &str) {
    let kinds: Vec<_> = frames.iter().map(|(kind, id, _)| (*kind, *id)).collect();
    assert!(
        !kinds.contains(&(HEADERS, 1)),
        "{what}: answered, not reset: {kinds:?}"
    );
    let reset = frames
        .iter()
        .find(|(kind, id, _)| *kind == RST_STREAM && *id == 1)
        .unwrap_or_else(|| panic!("{what}: no RST_STREAM on stream 1: {kinds:?}"));
    let code = u32::from_be_bytes(reset.2[..4].try_into().expect("4-byte error code"));
    assert_eq!(code, PROTOCOL_ERROR, "{what}");
}

#[tokio::test]
async fn http2_trailers_with_a_pseudo_header_reset_the_stream() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway("", &[upstream.url()]).await;
    let query = format!("{CS}/services/anonymous/4088327799");
    // A cache hit: the answer is ready at once, so only the trailers can stop it.
    assert_eq!(common::get(&gw.url(&query)).await.status, 200);
    for (method, path) in [
        ("GET", query.as_str()),
        ("POST", &format!("{CS}/services/42/end")),
    ] {
        for pseudo in [(":path", "/other"), (":status", "200")] {
            let frames = trailers_with_pseudo(gw.addr, method, path, pseudo).await;
            assert_reset_with_protocol_error(&frames, &format!("{method} {path} {pseudo:?}"));
        }
    }
}
