//! Lifecycle of the real `csgate` binary: SIGTERM drains (readiness 503, in-flight
//! requests finish, exit 0), idle keep-alive connections do not hold the exit, SIGHUP
//! reloads a valid file and refuses a broken one, and logs hash personal data.
#![cfg(unix)]

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::process::Process;
use common::*;

#[tokio::test]
async fn sigterm_flips_readiness_finishes_in_flight_requests_and_exits_zero() {
    let upstream = FakeUpstream::start(Reply::Gate(Box::new(Reply::json(200, "[]")))).await;
    let mut process = Process::start(
        &common::process::json_logs("[server]\nshutdown_grace = \"30s\"\n"),
        &["--upstream", &upstream.url()],
    )
    .await;
    assert_eq!(get(&process.admin_url("/readyz")).await.status, 200);

    let slow = tokio::spawn({
        let url = process.url("/genesys/1/cs/customers/C1/services");
        async move { get(&url).await }
    });
    upstream.wait_for_count(1).await;
    process.signal("TERM");
    process.wait_for_readyz(503).await;

    let ready = get(&process.admin_url("/readyz")).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "draining");
    assert!(
        tokio::net::TcpStream::connect(&process.listen)
            .await
            .is_err(),
        "new connections are refused while draining"
    );

    upstream.release();
    let answer = slow.await.expect("in-flight request");
    assert_eq!((answer.status, answer.text().as_str()), (200, "[]"));
    let status = process.exit_within(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_does_not_delay_exit() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    // A grace far longer than the bound below: if the idle connection held the exit,
    // the test would fail.
    let mut process = Process::start(
        &common::process::json_logs("[server]\nshutdown_grace = \"120s\"\n"),
        &["--upstream", &upstream.url()],
    )
    .await;
    let mut idle = tokio::net::TcpStream::connect(&process.listen)
        .await
        .expect("connect");
    idle.write_all(b"GET /genesys/1/cs/customers/C1/services HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buffer = vec![0u8; 4096];
    let n = idle.read(&mut buffer).await.expect("read");
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));

    process.signal("TERM");
    let status = process.exit_within(Duration::from_secs(20)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}; printed: {:#?}",
        process.lines.lock().expect("lines")
    );
    drop(idle);
}

#[tokio::test]
async fn sighup_applies_a_valid_file_and_refuses_a_broken_one() {
    let first = FakeUpstream::start(Reply::json(200, r#"[{"service_id":1}]"#)).await;
    let second = FakeUpstream::start(Reply::json(200, r#"[{"service_id":2}]"#)).await;
    let config =
        |url: &str| common::process::json_logs(&format!("[upstream]\nurls = [\"{url}\"]\n"));
    let process = Process::start(&config(&first.url()), &[]).await;
    let url = process.url("/genesys/1/cs/customers/C1/services");
    assert_eq!(get(&url).await.text(), r#"[{"service_id":1}]"#);

    // Keep a connection open across the reload: it must keep working.
    std::fs::write(&process.config_path, config(&second.url())).expect("rewrite");
    process.signal("HUP");
    process
        .wait_for_line(|l| l.contains("configuration reloaded"))
        .await;
    assert_eq!(get(&url).await.text(), r#"[{"service_id":2}]"#);
    let first_count = first.count();

    std::fs::write(
        &process.config_path,
        format!(
            "{}[upstream]\nurlz = [\"{}\"]\n",
            common::process::json_logs(""),
            first.url()
        ),
    )
    .expect("rewrite");
    process.signal("HUP");
    let refused = process
        .wait_for_line(|l| l.contains("reload refused"))
        .await;
    assert!(
        refused.contains("urlz"),
        "the log names the bad key: {refused}"
    );
    let answer = get(&url).await;
    assert_eq!(
        answer.text(),
        r#"[{"service_id":2}]"#,
        "the old config stays"
    );
    assert_eq!(first.count(), first_count);
}

#[tokio::test]
async fn access_logs_hash_contact_keys_and_customer_ids() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let process = Process::start(
        &common::process::json_logs(""),
        &["--upstream", &upstream.url()],
    )
    .await;
    let anonymous = get(&process.url("/genesys/1/cs/services/anonymous/408-832-7799")).await;
    let customer = get(&process.url("/genesys/1/cs/customers/ABC1234/services")).await;
    assert_eq!((anonymous.status, customer.status), (200, 200));
    let line = process
        .wait_for_line(|l| l.contains("customer_services") && l.contains("csgate::access"))
        .await;
    let fields: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(fields["route"], "customer_services");
    assert_eq!(fields["status"], 200);
    assert!(fields["owner"].as_str().expect("owner").starts_with("h:"));
    assert!(fields["request_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    let printed = process.lines.lock().expect("lines").join("\n");
    assert!(!printed.contains("408-832-7799"), "contact key in logs");
    assert!(!printed.contains("ABC1234"), "customer id in logs");
}

#[tokio::test]
async fn check_validates_the_config_and_names_the_bad_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[server]\nlisten = \"127.0.0.1:8080\"\n").expect("write");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[upstream]\nconnect_timeout = \"soon\"\n").expect("write");
    let run = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_csgate"))
            .arg("--check")
            .arg("--config")
            .arg(path)
            .output()
            .expect("run")
    };
    let ok = run(&good);
    assert_eq!(ok.status.code(), Some(0));
    let refused = run(&bad);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("upstream.connect_timeout"), "{stderr}");
}

#[tokio::test]
async fn check_loads_the_tls_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        "[server.tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_csgate"))
        .arg("--check")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.tls.cert"), "{stderr}");
}

/// An unreachable Redis at start-up is said at WARN (the fleet runs degraded), not only
/// at DEBUG; the gateway still starts and serves.
#[tokio::test]
async fn an_unreachable_redis_at_start_is_a_warning() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let process = Process::start(
        &common::process::json_logs(&format!(
            "[cluster]\nredis_url = \"redis://127.0.0.1:{closed}\"\n"
        )),
        &["--upstream", &upstream.url()],
    )
    .await;
    let line = process
        .wait_for_line(|l| l.contains("redis is unreachable"))
        .await;
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(json["level"], "WARN", "{line}");
    let answer = get(&process.url("/genesys/1/cs/customers/C1/services")).await;
    assert_eq!(answer.status, 200);
}

/// The access line carries what operators grep for: the client address after
/// `trusted_proxies`, bytes in and out, and on failure the cause; the request id as
/// the client sent it.
#[tokio::test]
async fn access_lines_name_the_client_the_bytes_and_the_cause() {
    let upstream = FakeUpstream::start(Reply::json(200, r#"{"service_id":7}"#)).await;
    let process = Process::start(
        &common::process::json_logs("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n"),
        &["--upstream", &upstream.url()],
    )
    .await;
    let body = r#"{"customer_id":"C1","service_type":1}"#;
    let started = send(
        http::Method::POST,
        &process.url("/genesys/1/cs/services/start"),
        &[
            ("Content-Type", "application/json"),
            ("X-Forwarded-For", "203.0.113.7, 10.0.0.1, 127.0.0.1"),
            ("X-Request-Id", "access-1"),
        ],
        body,
    )
    .await;
    assert_eq!(started.status, 200);
    let line = process
        .wait_for_line(|l| l.contains("csgate::access") && l.contains("access-1"))
        .await;
    let fields: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    // 10.0.0.1 is not a trusted proxy: it is the nearest untrusted hop.
    assert_eq!(fields["client"], "10.0.0.1", "{line}");
    assert_eq!(fields["request_id"], "access-1");
    assert_eq!(fields["bytes_in"], body.len().to_string(), "{line}");
    assert_eq!(
        fields["bytes_out"],
        started.body.len().to_string(),
        "{line}"
    );
    assert_eq!(fields["cause"], "-");

    // Without a trusted peer's header the client is the peer; a failure names its cause.
    upstream.set_default(Reply::json(200, "not json"));
    let failed = get_with(
        &process.url("/genesys/1/cs/customers/C1/services"),
        &[("X-Request-Id", "access-2")],
    )
    .await;
    assert_eq!(failed.status, 502);
    let line = process
        .wait_for_line(|l| l.contains("csgate::access") && l.contains("access-2"))
        .await;
    let fields: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(fields["client"], "127.0.0.1", "{line}");
    assert_eq!(fields["cause"], "UpstreamInvalidResponse", "{line}");
    assert_eq!(fields["bytes_in"], "-", "{line}");
}
