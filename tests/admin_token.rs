//! The admin listener's bearer token (`[admin] token_file`, `CSGATE_ADMIN_TOKEN_FILE`):
//! required for everything but the probes, and for `/metrics` unless `metrics_open`.

mod common;

use http::Method;

use common::*;
use csgate::config::{Config, Overrides};

const TOKEN: &str = "s3cr3t-admin-token";

/// A token file holding `TOKEN` and a newline, as `echo` writes one.
fn token_file() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), format!("{TOKEN}\n")).expect("written");
    file
}

fn admin_toml(file: &tempfile::NamedTempFile, extra: &str) -> String {
    format!(
        "[admin]\ntoken_file = {:?}\n{extra}",
        file.path().display().to_string()
    )
}

async fn admin(gw: &TestGateway, method: Method, path: &str, auth: Option<&str>) -> Answer {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    send(method, &gw.admin_url(path), &headers, bytes::Bytes::new()).await
}

#[tokio::test]
async fn admin_endpoints_need_the_token_and_the_probes_do_not() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let file = token_file();
    let gw = start_gateway(&admin_toml(&file, ""), &[upstream.url()]).await;

    for probe in ["/healthz", "/readyz", "/metrics"] {
        let answer = admin(&gw, Method::GET, probe, None).await;
        assert_ne!(answer.status, 401, "{probe} is open");
    }
    let refused = [
        "Basic c2VjcmV0",
        "Bearer wrong",
        "Bearer ",
        "s3cr3t-admin-token",
        "Bearer s3cr3t-admin-token-and-more",
    ];
    for (method, path) in [
        (Method::DELETE, "/cache"),
        (Method::DELETE, "/cache/anonymous/408"),
        (Method::GET, "/cache/stats"),
        (Method::GET, "/openapi/admin.yaml"),
    ] {
        for auth in std::iter::once(None).chain(refused.iter().map(|a| Some(*a))) {
            let answer = admin(&gw, method.clone(), path, auth).await;
            assert_eq!(answer.status, 401, "{method} {path} with {auth:?}");
            assert_eq!(answer.json()["exception"], "Unauthorized");
            assert_eq!(
                answer.header("www-authenticate").as_deref(),
                Some("Bearer realm=\"csgate-admin\"")
            );
        }
        for auth in [format!("Bearer {TOKEN}"), format!("bearer {TOKEN}")] {
            let answer = admin(&gw, method.clone(), path, Some(&auth)).await;
            assert_eq!(answer.status, 200, "{method} {path} with the token");
        }
    }
}

#[tokio::test]
async fn metrics_need_the_token_when_not_open() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let file = token_file();
    let gw = start_gateway(
        &admin_toml(&file, "metrics_open = false\n"),
        &[upstream.url()],
    )
    .await;
    assert_eq!(admin(&gw, Method::GET, "/metrics", None).await.status, 401);
    let auth = format!("Bearer {TOKEN}");
    assert_eq!(
        admin(&gw, Method::GET, "/metrics", Some(&auth))
            .await
            .status,
        200
    );
    assert_eq!(admin(&gw, Method::GET, "/healthz", None).await.status, 200);
}

#[tokio::test]
async fn without_a_token_the_admin_listener_asks_for_none() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway("", &[upstream.url()]).await;
    assert_eq!(
        admin(&gw, Method::GET, "/cache/stats", None).await.status,
        200
    );
}

#[test]
fn the_token_file_comes_from_the_environment_and_an_empty_or_missing_one_is_refused() {
    let file = token_file();
    let env = Overrides::from_env([(
        "CSGATE_ADMIN_TOKEN_FILE".to_owned(),
        file.path().display().to_string(),
    )]);
    let config = Config::from_toml("", std::path::Path::new("t.toml"), &env).expect("valid");
    let token = config.admin.token.expect("a token");
    assert!(token.matches(TOKEN.as_bytes()));
    assert!(!token.matches(b"s3cr3t-admin-toke"));
    assert!(!format!("{token:?}").contains(TOKEN), "never printed");

    let empty = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(empty.path(), "  \n").expect("written");
    for (path, problem) in [
        (empty.path().display().to_string(), "is empty"),
        ("/nonexistent/csgate-token".to_owned(), "cannot read"),
    ] {
        let toml = format!("[admin]\ntoken_file = {path:?}\n");
        let error = Config::from_toml(&toml, std::path::Path::new("t.toml"), &Overrides::default())
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("admin.token_file") && error.contains(problem),
            "{error}"
        );
    }
}
