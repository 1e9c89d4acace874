//! `app::run` in-process: a reload request re-reads the config file (and refuses a broken
//! one), and the embedded store it starts answers a write then a read through the
//! gateway. Readiness is read from the admin health endpoint.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use common::*;
use csgate::app::{self, Listeners, Options, Reload, ReloadError, Reloaded, Sources};

/// `app::run` started the way the binary starts it, from a config file.
struct Running {
    public: String,
    admin: String,
    reloads: mpsc::Sender<Reload>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(path: &Path) -> Running {
        let sources = Sources {
            path: Some(path.to_owned()),
            ..Sources::default()
        };
        let config = sources.load().expect("valid config");
        let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let running_public = format!("http://{}", public.local_addr().expect("addr"));
        let running_admin = format!("http://{}", admin.local_addr().expect("addr"));
        let (reloads, reload_rx) = mpsc::channel(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app::run(
            config,
            sources,
            Listeners { public, admin },
            async move {
                let _ = stopped.await;
            },
            reload_rx,
            Options::default(),
        ));
        let running = Running {
            public: running_public,
            admin: running_admin,
            reloads,
            stop: Some(stop),
            task,
        };
        running.wait_healthy().await;
        running
    }

    /// Polls `GET /healthz` on the admin listener until it answers 200 (at most 10 s).
    async fn wait_healthy(&self) {
        let url = format!("{}/healthz", self.admin);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while get(&url).await.status != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.public)
    }

    async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let (reload, outcome) = Reload::with_reply();
        self.reloads.send(reload).await.expect("app runs");
        outcome.await.expect("the reload is answered")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .await
            .expect("app task")
            .expect("app::run returns Ok");
    }
}

fn upstream_config(url: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurls = [\"{url}\"]\n")
}

#[tokio::test]
async fn a_reload_applies_a_valid_file_and_refuses_a_broken_one() {
    let first = FakeUpstream::start(Reply::json(200, r#"[{"service_id":1}]"#)).await;
    let second = FakeUpstream::start(Reply::json(200, r#"[{"service_id":2}]"#)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("csgate.toml");
    std::fs::write(&path, upstream_config(&first.url())).expect("write");
    let running = Running::start(&path).await;
    let url = running.url("/genesys/1/cs/customers/C1/services");
    assert_eq!(get(&url).await.text(), r#"[{"service_id":1}]"#);

    std::fs::write(&path, upstream_config(&second.url())).expect("rewrite");
    let reloaded = running.reload().await.expect("a valid file is applied");
    assert_eq!(reloaded.not_applied, Vec::<&str>::new());
    assert_eq!(get(&url).await.text(), r#"[{"service_id":2}]"#);

    // Keys that need a restart are named, and their running values stay.
    std::fs::write(
        &path,
        format!(
            "{}[cache]\nmax_bytes = \"64MiB\"\n[log]\nformat = \"json\"\n",
            upstream_config(&second.url())
        ),
    )
    .expect("rewrite");
    assert_eq!(
        running.reload().await.expect("applied but for two keys"),
        Reloaded {
            not_applied: vec!["cache.max_bytes", "log.format"]
        }
    );
    assert_eq!(get(&url).await.text(), r#"[{"service_id":2}]"#);
    let first_count = first.count();

    std::fs::write(&path, format!("[upstream]\nurlz = [\"{}\"]\n", first.url())).expect("rewrite");
    let refused = running
        .reload()
        .await
        .expect_err("a broken file is refused");
    assert!(
        matches!(refused, ReloadError::Invalid(_)) && refused.to_string().contains("urlz"),
        "the refusal names the bad key: {refused}"
    );
    assert_eq!(
        get(&url).await.text(),
        r#"[{"service_id":2}]"#,
        "the old config stays"
    );
    assert_eq!(first.count(), first_count);
    running.stop().await;
}

#[tokio::test]
async fn a_reload_to_no_upstream_is_refused_without_an_embedded_store() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("csgate.toml");
    std::fs::write(&path, upstream_config(&upstream.url())).expect("write");
    let running = Running::start(&path).await;

    std::fs::write(&path, "[admin]\nlisten = \"127.0.0.1:0\"\n").expect("rewrite");
    let refused = running
        .reload()
        .await
        .expect_err("no store to fall back on");
    assert!(matches!(refused, ReloadError::NoEmbeddedStore), "{refused}");
    let answer = get(&running.url("/genesys/1/cs/customers/C1/services")).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "[]"));
    running.stop().await;
}

#[tokio::test]
async fn the_embedded_store_answers_a_write_then_a_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("csgate.toml");
    let db = dir.path().join("store.sqlite");
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[store]\ndb = \"{}\"\n",
            db.display()
        ),
    )
    .expect("write");
    let running = Running::start(&path).await;
    let tenant = ("ContactCenterId", "cc-1");

    let started = send(
        Method::POST,
        &running.url("/genesys/1/cs/services/start"),
        &[tenant, ("Content-Type", "application/json")],
        Bytes::from(json!({"contact_key": "408-832-7799", "service_type": 1}).to_string()),
    )
    .await;
    assert_eq!(started.status, 201, "{}", started.text());
    let service_id = started.json()["service_id"].clone();

    let found = get_with(
        &running.url("/genesys/1/cs/services/anonymous/408-832-7799"),
        &[tenant],
    )
    .await;
    assert_eq!(found.status, 200, "{}", found.text());
    let services = found.json();
    assert_eq!(services.as_array().map(Vec::len), Some(1), "{services}");
    assert_eq!(services[0]["service_id"], service_id);
    assert!(db.exists(), "the store wrote its database file");

    // A reload keeps using the running store when the file still names no upstream.
    running
        .reload()
        .await
        .expect("reload onto the embedded store");
    let again = get_with(
        &running.url("/genesys/1/cs/services/anonymous/408-832-7799"),
        &[tenant],
    )
    .await;
    assert_eq!(again.json()[0]["service_id"], service_id);
    running.stop().await;
}
