//! What the default build (stock hyper and h2) does with the upstream's `1xx` interim
//! answers and with pseudo-headers in HTTP/2 trailers (`docs/requests.md` "Proxying" and
//! `docs/security.md` "Hostile input"). hyper's client reads past an interim answer to the final one and its
//! server cannot send one, so a `102` or `103 Early Hints` is not forwarded: HTTP/1.1,
//! HTTP/1.0 and HTTP/2 clients get the final answer alone, and a `101` after a `103`
//! stays `502`. h2 drops pseudo-header fields from trailers, so such a request is
//! answered as if they were absent and they never reach the upstream. A raw-socket
//! upstream scripts the interim answers; raw HTTP/2 frames send what no client library
//! would.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
/// then `then`, and closes.
struct Scripted {
    addr: SocketAddr,
}

impl Scripted {
    async fn start(first: &'static str, then: &'static str) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
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
                    let _ = stream.write_all(then.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Scripted { addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
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

    fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }
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

/// The statuses of the heads in a raw exchange, as `HTTP/1.x NNN`.
fn statuses(raw: &[u8]) -> Vec<String> {
    heads(raw)
        .iter()
        .map(|h| h.status.chars().take(12).collect())
        .collect()
}

#[tokio::test]
async fn an_interim_answer_is_not_forwarded_and_the_final_answer_arrives() {
    let upstream = Scripted::start(INTERIM, FINAL).await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    for version in ["1.1", "1.0"] {
        let mut stream = raw_get(gw.addr, PASS_THROUGH, version).await;
        let mut buffer = Vec::new();
        read_to_end(&mut stream, &mut buffer).await;
        assert_eq!(
            statuses(&buffer),
            [format!("HTTP/{version} 200")],
            "HTTP/{version}"
        );
        let all = heads(&buffer);
        assert!(!all[0].has("link"), "a 103's Link reached the final answer");
        assert!(buffer.ends_with(b"{}"), "HTTP/{version}");
    }
}

#[tokio::test]
async fn an_http_2_client_gets_no_interim_answer_and_the_final_answer_arrives() {
    let upstream = Scripted::start(INTERIM, FINAL).await;
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

    // `None`: the final answer came, and no interim one before it.
    let interim = tokio::time::timeout(
        Duration::from_secs(10),
        std::future::poll_fn(|cx| response.poll_informational(cx)),
    )
    .await
    .expect("an answer within 10 s");
    assert!(
        interim.is_none(),
        "an interim answer was forwarded: {interim:?}"
    );
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
async fn a_101_after_a_103_is_502_and_the_103_is_not_forwarded() {
    let upstream = Scripted::start(
        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let mut stream = raw_get(gw.addr, PASS_THROUGH, "1.1").await;
    let mut buffer = Vec::new();
    read_to_end(&mut stream, &mut buffer).await;
    assert_eq!(statuses(&buffer), ["HTTP/1.1 502"]);
    let all = heads(&buffer);
    assert!(!all[0].has("upgrade") && !all[0].has("link"), "{all:?}");
}

// --- a pseudo-header in HTTP/2 trailers: dropped by h2 -----------------------------------

use common::h2frames::{
    frame, header_block, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, SETTINGS,
};

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

/// Stream 1 was answered `200`, not reset: h2 writes `:status: 200` first, as HPACK
/// static-table index 8 (`0x88`).
fn assert_answered_200(frames: &[(u8, u32, Vec<u8>)], what: &str) {
    let kinds: Vec<_> = frames.iter().map(|(kind, id, _)| (*kind, *id)).collect();
    let head = frames
        .iter()
        .find(|(kind, id, _)| *kind == HEADERS && *id == 1)
        .unwrap_or_else(|| panic!("{what}: not answered: {kinds:?}"));
    assert_eq!(head.2.first(), Some(&0x88), "{what}: not :status 200");
}

/// RFC 9113 §8.1 makes such a request malformed; stock h2 drops the pseudo-header fields
/// from trailers instead (csgate's vendored patch that reset the stream is gone, issue
/// 23), so the request is answered as if they were absent and they never reach the
/// upstream.
#[tokio::test]
async fn http2_trailers_with_a_pseudo_header_are_dropped_and_never_reach_the_upstream() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway("", &[upstream.url()]).await;
    let query = format!("{CS}/services/anonymous/4088327799");
    assert_eq!(common::get(&gw.url(&query)).await.status, 200);
    for (method, path) in [
        ("GET", query.as_str()),
        ("POST", &format!("{CS}/services/42/end")),
    ] {
        for pseudo in [(":path", "/other"), (":status", "200")] {
            let frames = trailers_with_pseudo(gw.addr, method, path, pseudo).await;
            assert_answered_200(&frames, &format!("{method} {path} {pseudo:?}"));
        }
    }
    for request in upstream.requests() {
        assert_ne!(request.path, "/other", "a trailer's :path was followed");
        for name in request.headers.keys() {
            let name = name.as_str();
            assert!(
                !name.starts_with(':') && name != "path" && name != "status",
                "{name} reached the upstream"
            );
        }
    }
    let ends: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/services/42/end"))
        .collect();
    assert_eq!(ends.len(), 2, "each POST reached the upstream once");
    for end in ends {
        assert_eq!(&end.body[..], b"{\"a\":\"bc\"}");
    }
}
