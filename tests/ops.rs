//! Operations: load shedding, the header read timeout, metrics, passive health and
//! ejection, readiness, TLS.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

#[tokio::test]
async fn past_the_in_flight_bound_requests_are_shed_with_503() {
    let upstream = FakeUpstream::start(Reply::Gate(Box::new(Reply::json(200, "[]")))).await;
    let gw = start_gateway("[server]\nmax_inflight = 2\n", &[upstream.url()]).await;
    let url = gw.url("/genesys/1/cs/customers/C1/services");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    upstream.wait_for_count(2).await;

    let shed = get(&url).await;
    assert_eq!(shed.status, 503);
    assert_eq!(
        shed.json(),
        serde_json::json!({"message": "the gateway is overloaded; retry later", "exception": "Overloaded"})
    );
    assert_eq!(shed.header("retry-after").as_deref(), Some("1"));
    assert_eq!(
        upstream.count(),
        2,
        "the shed request never reached the upstream"
    );

    upstream.set_default(Reply::json(200, "[]"));
    upstream.release();
    for request in held {
        assert_eq!(request.await.expect("held").status, 200);
    }
    assert_eq!(get(&url).await.status, 200, "capacity is back");
}

#[tokio::test]
async fn a_slowloris_connection_is_closed_after_the_header_timeout() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(
        "[server]\nheader_read_timeout = \"300ms\"\n",
        &[upstream.url()],
    )
    .await;
    let mut slow = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /genesys/1/cs/customers/C1/services HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    // Never finish the headers. The gateway must close the connection by itself.
    let mut buffer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buffer)).await;
    assert!(
        closed.is_ok(),
        "connection still open after the header timeout"
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn metrics_move_with_traffic_and_label_routes_by_name() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway("", &[upstream.url()]).await;
    let key = "secret-4088327799";
    for _ in 0..2 {
        let a = get(&gw.url(&format!("/genesys/1/cs/services/anonymous/{key}/active"))).await;
        assert_eq!(a.status, 200);
    }
    assert_eq!(
        get(&gw.url("/genesys/1/cs/customers/CUST-77/services"))
            .await
            .status,
        200
    );
    assert_eq!(
        get(&gw.url("/genesys/1/cs/customers/CUST-77/services?active_states=maybe"))
            .await
            .status,
        400
    );

    let metrics = get(&gw.admin_url("/metrics")).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    let upstream_label = format!("upstream=\"{}\"", upstream.url());
    for expected in [
        "csgate_http_requests_total{route=\"anonymous_services_active\",method=\"GET\",status=\"200\"} 2".to_owned(),
        "csgate_http_requests_total{route=\"customer_services\",method=\"GET\",status=\"200\"} 1".to_owned(),
        "csgate_http_requests_total{route=\"customer_services\",method=\"GET\",status=\"400\"} 1".to_owned(),
        "csgate_cache_requests_total{result=\"miss\"} 1".to_owned(),
        "csgate_cache_requests_total{result=\"hit\"} 1".to_owned(),
        format!("csgate_upstream_requests_total{{{upstream_label},outcome=\"success\"}} 2"),
        format!("csgate_upstream_healthy{{{upstream_label}}} 1"),
        "csgate_cache_entries 1".to_owned(),
        "csgate_inflight_requests 0".to_owned(),
        "csgate_http_request_duration_seconds_count{route=\"customer_services\"} 2".to_owned(),
    ] {
        assert!(text.contains(&expected), "missing {expected}\n{text}");
    }
    assert!(text.contains("csgate_upstream_request_duration_seconds_bucket"));
    assert!(!text.contains(key), "a contact key leaked into metrics");
    assert!(
        !text.contains("CUST-77"),
        "a customer id leaked into metrics"
    );

    // Admin endpoints exist only on the admin listener.
    assert_eq!(get(&gw.url("/metrics")).await.status, 404);
    assert_eq!(get(&gw.url("/healthz")).await.status, 404);
    assert_eq!(get(&gw.admin_url("/healthz")).await.status, 200);
}

#[tokio::test]
async fn a_dead_upstream_is_ejected_and_traffic_moves_to_the_healthy_one() {
    let healthy = FakeUpstream::start(Reply::json(200, r#"[{"service_id":1}]"#)).await;
    let dead = refused_url().await;
    let gw = start_gateway(
        "[upstream]\neject_after = 2\neject_for = \"60s\"\n",
        &[dead.clone(), healthy.url()],
    )
    .await;
    let url = gw.url("/genesys/1/cs/customers/C1/services");
    for _ in 0..10 {
        let answer = get(&url).await;
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (200, r#"[{"service_id":1}]"#),
            "no client error while one upstream is down"
        );
    }
    assert_eq!(healthy.count(), 10);
    let text = get(&gw.admin_url("/metrics")).await.text();
    assert!(
        text.contains(&format!("csgate_upstream_healthy{{upstream=\"{dead}\"}} 0")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "csgate_upstream_requests_total{{upstream=\"{dead}\",outcome=\"connect_error\"}} 2"
        )),
        "ejected after two failures, then skipped:\n{text}"
    );
    assert_eq!(get(&gw.admin_url("/readyz")).await.status, 200);
}

#[tokio::test]
async fn with_every_upstream_ejected_requests_still_go_upstream_and_readiness_holds() {
    let dead = refused_url().await;
    let gw = start_gateway(
        "[upstream]\neject_after = 1\neject_for = \"60s\"\n[cache]\nenabled = false\n",
        std::slice::from_ref(&dead),
    )
    .await;
    let url = gw.url("/genesys/1/cs/customers/C1/services");
    // Panic mode: the ejected upstream is still tried, so the client learns what the
    // upstream did (refused: 502), never a 503 the gateway made up.
    for _ in 0..3 {
        let answer = get(&url).await;
        assert_eq!(answer.status, 502);
        assert_eq!(answer.json()["exception"], "UpstreamUnavailable");
    }
    let text = get(&gw.admin_url("/metrics")).await.text();
    for expected in [
        format!(
            "csgate_upstream_requests_total{{upstream=\"{dead}\",outcome=\"connect_error\"}} 3"
        ),
        format!("csgate_upstream_healthy{{upstream=\"{dead}\"}} 0"),
        "csgate_upstream_panic 1".to_owned(),
    ] {
        assert!(text.contains(&expected), "missing {expected}\n{text}");
    }
    assert_eq!(get(&gw.admin_url("/readyz")).await.status, 200);
}

#[tokio::test]
async fn tls_with_a_self_signed_certificate() {
    let upstream = FakeUpstream::start(Reply::json(200, r#"[{"service_id":7}]"#)).await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write");
    let gw = start_gateway(
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        ),
        &[upstream.url()],
    )
    .await;

    let answer = get_tls(
        gw.addr,
        "localhost",
        cert.cert.der().clone(),
        "/genesys/1/cs/customers/C1/services",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], br#"[{"service_id":7}]"#);
    let forwarded = &upstream.requests()[0];
    assert_eq!(
        forwarded
            .headers
            .get("x-forwarded-proto")
            .map(|v| v.as_bytes()),
        Some(&b"https"[..])
    );

    // ALPN h2 settles the protocol: HTTP/1.1 bytes on such a connection are a broken
    // HTTP/2 preface, a connection error, never an HTTP/1.1 answer (RFC 9113 §3.4).
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let mut client_config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(csgate::tls::provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    client_config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config));
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut h2 = connector.connect(name, tcp).await.expect("TLS handshake");
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2.write_all(b"GET /genesys/1/cs/customers/C1/services HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), h2.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // The server's frames: 9-byte headers (length, type, flags, stream), then payload.
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(head) = answer.get(at..at + 9) {
        let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        frames.push(head[3]);
        at += 9 + length;
    }
    // Only HTTP/2 frames came back (the server's SETTINGS, perhaps a GOAWAY, which
    // §3.4 lets a server omit after an invalid preface), and the connection closed.
    assert_eq!(at, answer.len(), "HTTP/2 frames only: {answer:?}");
    assert!(
        frames.iter().all(|kind| [0x4, 0x7, 0x8].contains(kind)),
        "{frames:?}"
    );

    // Plain HTTP on the TLS port does not get an answer.
    let mut plain = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    plain
        .write_all(b"GET /genesys/1/cs/customers/C1/services HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buffer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut buffer)).await;
    assert!(!String::from_utf8_lossy(&buffer).contains("200 OK"));
}

/// Issue 23: each exposition format with its own content type, chosen by `Accept`.
#[tokio::test]
async fn metrics_are_served_in_the_format_accept_asks_for() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway("", &[upstream.url()]).await;
    // One request, so the request counter family has a series to describe.
    assert_eq!(
        get(&gw.url("/genesys/1/cs/services/anonymous/4088327799"))
            .await
            .status,
        200
    );
    let url = gw.admin_url("/metrics");
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                      version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for (accept, content_type, counter_type) in [
        (
            None,
            "text/plain; version=0.0.4; charset=utf-8",
            "# TYPE csgate_http_requests_total counter",
        ),
        (
            Some(prometheus),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "# TYPE csgate_http_requests counter",
        ),
    ] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let answer = get_with(&url, &headers).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("content-type").as_deref(), Some(content_type));
        assert_eq!(answer.header("vary").as_deref(), Some("Accept"));
        let text = answer.text();
        assert!(text.contains(counter_type), "{accept:?}: {text}");
        assert!(text.contains("csgate_build_info{version=\""), "{text}");
        assert!(text.contains("\nprocess_open_fds "), "{text}");
    }
}
