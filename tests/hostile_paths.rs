//! Issue 10, items 3, 6 and 15 (Host): paths that could escape the API prefix, duplicate
//! tenant or credential headers, and a missing or repeated `Host` are refused with `400`
//! in the CS error shape before anything is forwarded. Raw sockets, so that no client
//! library normalises what is sent.

mod common;

use common::{raw_exchange, split_raw, start_gateway, FakeUpstream, Reply};

const CS: &str = "/genesys/1/cs";
const NO_CACHE: &str = "[cache]\nenabled = false\n";

/// A raw request on a fresh connection; returns the status line and the body.
async fn raw(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    headers: &str,
) -> (String, Vec<u8>) {
    let body = if method == "POST" { "{}" } else { "" };
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: gw.example\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    split_raw(&raw_exchange(addr, request.as_bytes()).await)
}

fn cs_error(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn paths_that_could_leave_the_prefix_are_refused_on_every_route_and_never_forwarded() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let paths = [
        format!("{CS}/../../../internal/secret.txt"),
        format!("{CS}/customers/%2e%2e/services"),
        format!("{CS}/customers/%2E%2e/services/active"),
        format!("{CS}/services/anonymous/..%2F..%2Finternal"),
        format!("{CS}/services/anonymous/./active"),
        format!("{CS}/services/.%2e/42"),
        format!("{CS}/services/42%2fstates"),
        format!("{CS}/services/42%5C..%5Cx"),
        format!("{CS}/services/42\\..\\x"),
        format!("{CS}/services/42%00"),
        format!("{CS}/services/42;jsessionid=1"),
        format!("{CS}/customers/c;v=1/services"),
        format!("{CS}/services/anonymous/k%00/completed"),
    ];
    for path in &paths {
        for method in ["GET", "HEAD", "POST", "PUT", "DELETE"] {
            let (status, body) = raw(gw.addr, method, path, "").await;
            assert!(
                status.starts_with("HTTP/1.1 400"),
                "{method} {path}: {status}"
            );
            if method != "HEAD" {
                let error = cs_error(&body);
                assert_eq!(error["exception"], "InvalidParameter", "{method} {path}");
                let message = error["message"].as_str().expect("message");
                assert!(message.contains(path.as_str()), "{path}: {message}");
            }
        }
    }
    assert_eq!(upstream.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn decoded_keys_and_ids_carry_no_path_syntax() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    for (path, name) in [
        (format!("{CS}/services/anonymous/a%3Bb"), "contact_key"),
        (
            format!("{CS}/services/anonymous/a%3bb/active"),
            "contact_key",
        ),
        (format!("{CS}/customers/x%3B1/services"), "customer_id"),
    ] {
        let (status, body) = raw(gw.addr, "GET", &path, "").await;
        assert!(status.starts_with("HTTP/1.1 400"), "{path}: {status}");
        let error = cs_error(&body);
        assert_eq!(error["exception"], "InvalidParameter");
        assert!(
            error["message"].as_str().expect("message").contains(name),
            "{path}: {error}"
        );
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn what_is_forwarded_is_canonical_and_under_the_prefix() {
    let upstream = FakeUpstream::start(Reply::json(200, "{}")).await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    for (sent, forwarded) in [
        ("/services/%34%32/states", "/services/42/states"),
        (
            "/services/42/extensions/a%7eb",
            "/services/42/extensions/a~b",
        ),
        (
            "/services/42/extensions/caf%c3%a9",
            "/services/42/extensions/caf%C3%A9",
        ),
        ("/services/%34%32", "/services/42"),
    ] {
        let (status, _) = raw(gw.addr, "GET", &format!("{CS}{sent}"), "").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{sent}: {status}");
        let got = upstream.requests().pop().expect("forwarded");
        assert_eq!(got.path, format!("{CS}{forwarded}"), "{sent}");
    }
}

#[tokio::test]
async fn repeated_tenant_or_credential_headers_are_refused_and_nothing_is_forwarded() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let cached = start_gateway("", &[upstream.url()]).await;
    let uncached = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let repeated = [
        (
            "ContactCenterId",
            "ContactCenterId: t1\r\nContactCenterId: t2\r\n",
        ),
        ("GroupId", "GroupId: g1\r\ngroupid: g2\r\n"),
        (
            "Authorization",
            "Authorization: Basic YTpi\r\nAuthorization: Basic Yzpk\r\n",
        ),
    ];
    for gw in [&cached, &uncached] {
        for path in [
            format!("{CS}/services/anonymous/4088327799"),
            format!("{CS}/customers/ABC/services/active"),
            format!("{CS}/services/42"),
            format!("{CS}/services/42/states"),
        ] {
            for (name, headers) in repeated {
                let (status, body) = raw(gw.addr, "GET", &path, headers).await;
                assert!(
                    status.starts_with("HTTP/1.1 400"),
                    "{name} on {path}: {status}"
                );
                let error = cs_error(&body);
                assert_eq!(error["exception"], "InvalidParameter");
                assert_eq!(
                    error["message"],
                    format!("header '{name}' is given 2 times; it must be given at most once")
                );
            }
        }
        let (status, _) = raw(
            gw.addr,
            "POST",
            &format!("{CS}/services/start"),
            "ContactCenterId: t1\r\nContactCenterId: t1\r\n",
        )
        .await;
        assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    }
    assert_eq!(upstream.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn http_1_1_requires_exactly_one_valid_host() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let path = format!("{CS}/customers/ABC/services");
    let cases = [
        (
            format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n"),
            "missing",
        ),
        (
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"),
            "given 2 times",
        ),
        (
            format!("GET {path} HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n"),
            "not a host name",
        ),
    ];
    for (request, problem) in cases {
        let (status, body) = split_raw(&raw_exchange(gw.addr, request.as_bytes()).await);
        assert!(status.starts_with("HTTP/1.1 400"), "{request:?}: {status}");
        let error = cs_error(&body);
        assert_eq!(error["exception"], "InvalidParameter");
        let message = error["message"].as_str().expect("message");
        assert!(
            message.contains("'Host'") && message.contains(problem),
            "{message}"
        );
    }
    assert_eq!(upstream.count(), 0);
    // HTTP/1.0 has no Host requirement.
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    let (status, _) = split_raw(&raw_exchange(gw.addr, request.as_bytes()).await);
    assert!(status.contains(" 200"), "{status}");
    assert_eq!(upstream.count(), 1);
}

// --- issue 10.16: HTTP/2 stream errors -------------------------------------------------

use common::h2frames::{
    frame, header_block, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, SETTINGS,
};

/// Reads frames until `until` says stop; returns (type, stream) of every frame read.
async fn read_frames(
    stream: &mut tokio::net::TcpStream,
    mut until: impl FnMut(u8, u32) -> bool,
) -> Vec<(u8, u32)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
            seen.push((head[3], id));
            if until(head[3], id) {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("the gateway answered within 10 s");
    seen
}

/// Opens stream 1 as a Query Services GET that stays open (announcing `content-length:
/// 10`) beside a complete request on stream 3, checks that stream 1 is not answered while
/// it is open (even though the answer, a cache hit, is ready at once), then sends
/// `ending` for stream 1 and checks that the stream ends in a stream error (RST_STREAM,
/// or GOAWAY), never in an answer.
async fn malformed_stream_is_reset_not_answered(ending: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway("", &[upstream.url()]).await;
    let path = format!("{CS}/services/anonymous/4088327799");
    // Warm the cache, so that answers need no upstream and are ready at once.
    let warm = common::get(&gw.url(&path)).await;
    assert_eq!(warm.status, 200);

    let mut stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let authority = gw.addr.to_string();
    let request = |extra: &[(&'static str, &'static str)]| {
        let mut fields = vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":path", path.as_str()),
            (":authority", authority.as_str()),
        ];
        fields.extend_from_slice(extra);
        header_block(&fields)
    };
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(frame(SETTINGS, 0, 0, &[]));
    opening.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &request(&[("content-length", "10")]),
    ));
    opening.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &request(&[])));
    stream.write_all(&opening).await.expect("write");

    let before = read_frames(&mut stream, |kind, id| kind == HEADERS && id == 3).await;
    assert!(
        !before.contains(&(HEADERS, 1)),
        "stream 1 was answered before its request ended: {before:?}"
    );
    stream.write_all(ending).await.expect("write");
    let after = read_frames(&mut stream, |kind, id| {
        (kind == RST_STREAM && id == 1) || kind == GOAWAY
    })
    .await;
    assert!(
        !after.contains(&(HEADERS, 1)),
        "a malformed stream was answered: {after:?}"
    );
    assert!(
        after.contains(&(RST_STREAM, 1)) || after.iter().any(|(kind, _)| *kind == GOAWAY),
        "no stream error: {after:?}"
    );
}

/// RFC 9113 §8.1.1: DATA that disagree with the content-length make the request
/// malformed.
#[tokio::test]
async fn an_http2_request_whose_data_disagree_with_its_content_length_gets_a_stream_error() {
    // Three bytes where ten were announced, and the end of the stream.
    malformed_stream_is_reset_not_answered(&frame(DATA, END_STREAM, 1, b"abc")).await;
}

/// RFC 9113 §8.1: a second HEADERS frame (trailers) must end the stream.
#[tokio::test]
async fn an_http2_request_with_a_second_headers_without_end_stream_gets_a_stream_error() {
    let mut ending = frame(DATA, 0, 1, b"0123456789");
    ending.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &header_block(&[("x-t", "1")]),
    ));
    malformed_stream_is_reset_not_answered(&ending).await;
}
