//! Hostile and broken clients (issue 10): connections that never make progress, header
//! floods, drain after SIGTERM, credentials in config, and keyed log redaction. Raw TCP
//! where framing matters; real HTTP over loopback everywhere.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use common::{refused_url, start_gateway};
use csgate::config::{Config, Overrides};
use csgate::logging::Redactor;

/// Reads until the peer closes (or errors), bounded; returns when that happened.
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(bound, stream.read_to_end(&mut sink))
        .await
        .ok()
        .map(|_| started.elapsed())
}

/// Reads one HTTP/1.1 response with a Content-Length body from a kept-alive stream:
/// (head, body), or `None` if the peer closed first.
async fn read_response(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some((head, body))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// One `GET path` on a fresh connection; the status code, or `None` when no answer
/// came within `bound`.
async fn status_of(addr: SocketAddr, path: &str, bound: Duration) -> Option<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        text.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(bound, exchange).await.ok().flatten()
}

// --- item 2: every connection makes progress or is closed ----------------------------

#[tokio::test]
async fn silent_and_half_preface_connections_are_closed_within_header_read_timeout() {
    let gw = start_gateway(
        "[server]\nheader_read_timeout = \"1s\"",
        &[refused_url().await],
    )
    .await;
    let silent = async {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        closed_within(&mut stream, Duration::from_secs(5)).await
    };
    let half_preface = async {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        stream
            .write_all(b"PRI * HTTP/2.0\r\n")
            .await
            .expect("write");
        closed_within(&mut stream, Duration::from_secs(5)).await
    };
    let preface_only = async {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .expect("write");
        closed_within(&mut stream, Duration::from_secs(5)).await
    };
    let admin_silent = async {
        let mut stream = TcpStream::connect(gw.admin).await.expect("connect");
        closed_within(&mut stream, Duration::from_secs(5)).await
    };
    let (a, b, c, d) = tokio::join!(silent, half_preface, preface_only, admin_silent);
    for (what, closed) in [
        ("silent", a),
        ("half preface", b),
        ("preface, no request", c),
        ("silent admin", d),
    ] {
        let after = closed.unwrap_or_else(|| panic!("{what}: still open after 5 s"));
        assert!(
            after >= Duration::from_millis(900) && after <= Duration::from_secs(2),
            "{what}: closed after {after:?}, expected header_read_timeout (1 s) + at most 1 s"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_idle_timeout() {
    let gw = start_gateway(
        "[server]\nheader_read_timeout = \"5s\"\nidle_timeout = \"1s\"",
        &[refused_url().await],
    )
    .await;

    // HTTP/1.1: one request, then silence on a keep-alive connection.
    let h1 = async {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        stream
            .write_all(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let (head, _) = read_response(&mut stream).await.expect("an answer");
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        closed_within(&mut stream, Duration::from_secs(5)).await
    };

    // HTTP/2 (prior knowledge): one request, then an idle connection that answers pings.
    let h2 = async {
        let stream = TcpStream::connect(gw.addr).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .expect("h2 handshake");
        let driver = tokio::spawn(connection);
        let request = http::Request::get(format!("http://{}/nope", gw.addr))
            .body(http_body_util::Empty::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("h2 answer");
        assert_eq!(response.status(), 404);
        drop(response);
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), driver)
            .await
            .ok()
            .map(|_| started.elapsed())
    };
    let (h1, h2) = tokio::join!(h1, h2);
    for (what, closed) in [("HTTP/1.1", h1), ("HTTP/2", h2)] {
        let after =
            closed.unwrap_or_else(|| panic!("{what}: idle connection still open after 5 s"));
        assert!(
            after <= Duration::from_secs(2),
            "{what}: idle connection closed after {after:?}, expected idle_timeout (1 s)"
        );
    }
    gw.stop().await;
}

/// The binary under `ulimit -n 128` (soft and hard), with JSON logs captured.
struct Limited {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Limited {
    async fn start(config: &str) -> (Limited, SocketAddr, SocketAddr) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("csgate.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 128 && exec \"$@\"")
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_csgate"))
            .arg("--config")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn csgate");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().expect("lines").push(line);
            }
        });
        let limited = Limited {
            child,
            lines,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let started = loop {
            let found = limited
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|l| l.contains("csgate started"))
                .cloned();
            if let Some(line) = found {
                break line;
            }
            assert!(Instant::now() < deadline, "csgate did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let fields: serde_json::Value = serde_json::from_str(&started).expect("JSON line");
        let public = fields["listen"]
            .as_str()
            .expect("listen")
            .parse()
            .expect("addr");
        let admin = fields["admin"]
            .as_str()
            .expect("admin")
            .parse()
            .expect("addr");
        (limited, public, admin)
    }

    fn count(&self, needle: &str) -> usize {
        let lines = self.lines.lock().expect("lines");
        lines.iter().filter(|l| l.contains(needle)).count()
    }
}

#[tokio::test]
async fn idle_sockets_up_to_the_file_limit_neither_lock_out_admin_nor_stay_open() {
    let upstream = refused_url().await;
    let config = format!(
        "[server]\nheader_read_timeout = \"1s\"\n[upstream]\nurls = [\"{upstream}\"]\n\
         [log]\nformat = \"json\"\nlevel = \"info\"\n"
    );
    let (mut csgate, public, admin) = Limited::start(&config).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(admin, "/healthz", Duration::from_secs(1)).await != Some(200) {
        assert!(Instant::now() < deadline, "admin never became healthy");
    }

    // More idle sockets than the process has descriptors.
    const IDLE: usize = 140;
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        let mut stream = TcpStream::connect(public).await.expect("connect");
        idle.push(tokio::spawn(async move {
            closed_within(&mut stream, Duration::from_secs(30))
                .await
                .map(|_| opened.elapsed())
        }));
    }

    // Admin answers throughout, while the idle sockets are being closed.
    let mut probes = 0;
    while idle.iter().any(|task| !task.is_finished()) {
        assert_eq!(
            status_of(admin, "/healthz", Duration::from_secs(2)).await,
            Some(200),
            "admin /healthz failed after {:?} (probe {probes})",
            opened.elapsed()
        );
        probes += 1;
        // Pacing, not synchronisation: a probe every 50 ms is plenty.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            opened.elapsed() < Duration::from_secs(40),
            "idle sockets stay open"
        );
    }
    let mut closed = Vec::new();
    for task in idle {
        closed.push(task.await.expect("task").expect("closed within 30 s"));
    }
    closed.sort();
    // The first wave (everything csgate accepted at once) goes after header_read_timeout;
    // the rest waited in the kernel backlog and go in later waves of the same length.
    let first = closed[0];
    let last = closed[closed.len() - 1];
    eprintln!("{IDLE} idle sockets: first closed after {first:?}, last after {last:?}; {probes} admin probes all 200");
    assert!(
        first <= Duration::from_secs(2),
        "first idle sockets closed after {first:?}"
    );
    // Public still serves once the idle crowd is gone.
    assert_eq!(
        status_of(public, "/nope", Duration::from_secs(5)).await,
        Some(404)
    );
    let accept_errors = csgate.count("accept failed");
    assert!(
        accept_errors as u64 <= last.as_secs() + 1,
        "{accept_errors} accept-error lines in {last:?}"
    );
    let _ = csgate.child.start_kill();
    let _ = csgate.child.wait().await;
}

// --- item 12: every error in the CS shape -----------------------------------------------

#[tokio::test]
async fn oversized_heads_get_the_cs_error_shape() {
    let gw = start_gateway("", &[refused_url().await]).await;
    let path = "/genesys/1/cs/customers/c1/services";
    let many: String = (0..101).map(|i| format!("X-H-{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(17 * 1024));
    let long_query = format!("{path}?x={}", "q".repeat(9 * 1024));
    let cases = [
        (
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n{many}Connection: close\r\n\r\n"),
            431,
            "header fields",
        ),
        (
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n{big}Connection: close\r\n\r\n"),
            431,
            "bytes",
        ),
        (
            format!("GET {long_query} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
            414,
            "query string",
        ),
    ];
    for (request, status, says) in cases {
        let answer = common::raw_exchange(gw.addr, request.as_bytes()).await;
        let (line, body) = common::split_raw(&answer);
        assert!(line.starts_with(&format!("HTTP/1.1 {status}")), "{line}");
        let body: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{status}: not the CS shape: {answer:?}"));
        assert_eq!(body["exception"], "PayloadTooLarge", "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains(says)),
            "{body}"
        );
    }
    // 100 header fields are fine (the route answers, not the limit).
    let hundred: String = (0..97).map(|i| format!("X-H-{i}: v\r\n")).collect();
    let request = format!("GET /nope HTTP/1.1\r\nHost: t\r\n{hundred}Connection: close\r\n\r\n");
    let answer = common::raw_exchange(gw.addr, request.as_bytes()).await;
    let (line, _) = common::split_raw(&answer);
    assert!(line.starts_with("HTTP/1.1 404"), "{line}");
    gw.stop().await;
}

// --- request smuggling: Content-Length and Transfer-Encoding together ---------------------

/// RFC 9112 §6.1 and §6.3: a request with both is read by its chunked framing alone, the
/// upstream never sees the conflicting `Content-Length`, and the connection is closed
/// after the answer, so a request smuggled behind the body is never served.
#[tokio::test]
async fn a_request_with_content_length_and_chunked_framing_closes_the_connection() {
    let upstream = common::FakeUpstream::start(common::Reply::json(200, "{}")).await;
    let gw = start_gateway("", &[upstream.url()]).await;
    let smuggled = "GET /genesys/1/cs/customers/c1/profile HTTP/1.1\r\nHost: t\r\n\r\n";
    let request = format!(
        "POST /genesys/1/cs/services/1/states HTTP/1.1\r\nHost: t\r\nContactCenterId: t1\r\n\
         Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"
    );
    let answer = common::raw_exchange(gw.addr, request.as_bytes()).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "one answer, then close: {text}"
    );
    let seen = upstream.requests();
    assert_eq!(
        seen.len(),
        1,
        "the smuggled GET never reached the upstream: {seen:?}"
    );
    assert_eq!(seen[0].method, http::Method::POST);
    assert_eq!(&seen[0].body[..], b"hello", "read by its chunked framing");
    assert!(
        seen[0].headers.get(http::header::CONTENT_LENGTH).is_none()
            || seen[0].headers[http::header::CONTENT_LENGTH] == "5",
        "the conflicting Content-Length is not forwarded: {:?}",
        seen[0].headers
    );
    gw.stop().await;
}

// --- item 13: keyed redaction --------------------------------------------------------------

#[test]
fn redaction_is_a_keyed_hash() {
    let phone = "408-832-7799";
    let a = Redactor::with_key(true, b"key-a".to_vec()).personal(phone);
    let b = Redactor::with_key(true, b"key-b".to_vec()).personal(phone);
    assert_ne!(a, b, "the hash depends on the key");
    assert_eq!(
        a,
        Redactor::with_key(true, b"key-a".to_vec()).personal(phone)
    );
    assert!(a.starts_with("h:") && a.len() == 18, "{a}");
    // Not the unkeyed SHA-256 prefix that could be brute-forced.
    use sha2::Digest;
    let plain: String = sha2::Sha256::digest(phone.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_ne!(a, format!("h:{plain}"));
}

// --- item 14: no credentials in upstream URLs ------------------------------------------------

#[test]
fn upstream_credentials_are_refused_without_echoing_them() {
    let toml = "[upstream]\nurls = [\"http://gms:8080\", \"http://svc:s3cr3t@gms:8080\"]";
    let error = Config::from_toml(toml, std::path::Path::new("t.toml"), &Overrides::default())
        .expect_err("credentials in an upstream URL must be refused");
    let message = error.to_string();
    assert!(message.contains("upstream.urls[1]"), "{message}");
    assert!(
        !message.contains("s3cr3t"),
        "the password leaked: {message}"
    );
}

// --- item 17: drain ----------------------------------------------------------------------------

#[tokio::test]
async fn requests_on_open_connections_during_drain_delay_get_connection_close() {
    answered_during_the_drain("[server]\ndrain_delay = \"3s\"").await;
}

/// With the default drain delay, a request a client sends on its keep-alive connection
/// just after SIGTERM is answered (with `Connection: close`), not met by a close.
#[tokio::test]
async fn by_default_a_request_sent_just_after_sigterm_is_answered() {
    answered_during_the_drain("").await;
}

/// The drain delay is for open connections: with none open, it ends at once.
#[tokio::test]
async fn the_drain_delay_ends_when_no_connection_is_open() {
    let gw = start_gateway("[server]\ndrain_delay = \"600s\"", &[refused_url().await]).await;
    tokio::time::timeout(Duration::from_secs(60), gw.stop())
        .await
        .expect("stops long before the 600 s drain delay");
}

async fn answered_during_the_drain(config: &str) {
    let gw = start_gateway(config, &[refused_url().await]).await;
    let admin = gw.admin;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    stream
        .write_all(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_response(&mut stream).await.expect("first answer");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(header(&head, "connection"), None, "{head}");

    let public = gw.addr;
    let stopping = tokio::spawn(gw.stop());
    // The drain has begun once the public listener refuses new connections.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(public).await.is_ok() {
        assert!(Instant::now() < deadline, "the listener never closed");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        status_of(admin, "/readyz", Duration::from_secs(1)).await,
        Some(503),
        "readiness is 503 while draining"
    );

    stream
        .write_all(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write during drain");
    let (head, body) = read_response(&mut stream)
        .await
        .expect("a request on an open connection during the drain delay is answered");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    assert!(!body.is_empty());
    assert!(
        closed_within(&mut stream, Duration::from_secs(2))
            .await
            .is_some(),
        "the connection closes after the answer"
    );
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stops after the drain delay")
        .expect("stop task");
}
