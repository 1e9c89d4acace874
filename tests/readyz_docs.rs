//! `/readyz` as the code answers it, and as every document that describes it says: 503
//! only while the gateway drains; an upstream that is down or ejected keeps it at 200.
//! The behaviour is checked on the real binary, and the documents (the admin OpenAPI
//! document, deploy/README.md, the Kubernetes readiness probe's comment and
//! docs/operations.md) must say the same, and nothing about a healthy upstream.
#![cfg(unix)]

mod common;

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use common::process::Process;

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What each document must say about an upstream outage, in these words.
const UPSTREAM_DOWN: &str = "an upstream that is down or ejected keeps";

/// What none may say: readiness tied to upstream health.
const WRONG: [&str; 4] = [
    "no healthy upstream",
    "upstream is reachable",
    "upstream takes traffic",
    "an upstream is healthy",
];

/// Lowercased, with line breaks and comment markers folded into single spaces.
fn flat(text: &str) -> String {
    text.lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn check(name: &str, text: &str) {
    let text = flat(text);
    assert!(
        text.contains(UPSTREAM_DOWN),
        "{name} must say that {UPSTREAM_DOWN:?} /readyz at 200:\n{text}"
    );
    assert!(
        text.contains("drain"),
        "{name} must say /readyz is 503 while draining:\n{text}"
    );
    for wrong in WRONG {
        assert!(!text.contains(wrong), "{name} says {wrong:?}:\n{text}");
    }
}

#[test]
fn the_admin_openapi_document_says_what_readyz_does() {
    let doc: serde_norway::Value =
        serde_norway::from_str(&repo_file("openapi/admin.yaml")).expect("YAML");
    let readyz = &doc["paths"]["/readyz"];
    let mut text = String::new();
    for method in ["get", "head"] {
        let operation = &readyz[method];
        for field in ["summary", "description"] {
            if let Some(s) = operation[field].as_str() {
                text.push_str(s);
                text.push('\n');
            }
        }
        let responses = operation["responses"].as_mapping().expect("responses");
        for (status, response) in responses {
            let description = response["description"].as_str().unwrap_or_default();
            text.push_str(description);
            text.push('\n');
            if status.as_str() == Some("503") {
                assert!(
                    description.to_lowercase().contains("drain"),
                    "{method} /readyz 503: {description}"
                );
            }
        }
    }
    check("openapi/admin.yaml /readyz", &text);
}

#[test]
fn deploy_readme_says_what_readyz_does() {
    let readme = repo_file("deploy/README.md");
    let probes = readme
        .split("\n- ")
        .find(|item| item.starts_with("Probes:"))
        .expect("deploy/README.md has a `- Probes:` item");
    check("deploy/README.md, Probes", probes);
}

#[test]
fn the_kubernetes_readiness_probe_comment_says_what_readyz_does() {
    let manifest = repo_file("deploy/k8s/deployment.yaml");
    let lines: Vec<&str> = manifest.lines().collect();
    let probe = lines
        .iter()
        .position(|l| l.trim() == "readinessProbe:")
        .expect("a readinessProbe");
    let comment: Vec<&str> = lines[..probe]
        .iter()
        .rev()
        .take_while(|l| l.trim().starts_with('#'))
        .copied()
        .collect();
    assert!(
        !comment.is_empty(),
        "the readinessProbe has no comment above it"
    );
    let comment: Vec<&str> = comment.into_iter().rev().collect();
    check(
        "deploy/k8s/deployment.yaml, readinessProbe",
        &comment.join("\n"),
    );
}

#[test]
fn the_operations_guide_says_what_readyz_does() {
    let guide = repo_file("docs/operations.md");
    let section = guide
        .split("\n## ")
        .find(|s| s.starts_with("Readiness"))
        .expect("docs/operations.md has a ## Readiness section");
    check("docs/operations.md, Readiness", section);
}

/// The behaviour the documents describe: the only upstream refuses connections and is
/// ejected, in panic mode, and `/readyz` stays 200; after SIGTERM it is 503 `draining`.
#[tokio::test]
async fn readyz_stays_ready_with_every_upstream_down_and_fails_only_while_draining() {
    let upstream = common::refused_url().await;
    let config =
        "[upstream]\neject_after = 1\neject_for = \"1m\"\n[server]\ndrain_delay = \"10s\"\n";
    let mut process = Process::start(config, &["--upstream", &upstream]).await;

    let answer = common::get(&process.url("/genesys/1/cs/customers/C1/services")).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    let metrics = common::get(&process.admin_url("/metrics")).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("csgate_upstream_healthy{") && l.ends_with(" 0")),
        "the upstream is not reported ejected:\n{metrics}"
    );
    let ready = common::get(&process.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json(), serde_json::json!({"status": "ready"}));

    // An open keep-alive connection holds the drain for drain_delay, so the admin
    // listener is still there to ask.
    let mut held = tokio::net::TcpStream::connect(&process.listen)
        .await
        .expect("connect");
    held.write_all(b"GET /genesys/1/cs/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    process.signal("TERM");
    process.wait_for_readyz(503).await;
    let draining = common::get(&process.admin_url("/readyz")).await;
    assert_eq!(draining.status, 503);
    assert_eq!(draining.json()["status"], "draining", "{}", draining.text());
    drop(held);
    process.exit_within(Duration::from_secs(30)).await;
}
