//! The OpenAPI documents and the routers agree: every route csgate answers itself
//! (`csgate::routes::ROUTES`) and every route of the embedded store
//! (`csgate::store::ROUTES`) is in `openapi/csgate.yaml` with the same methods, and every
//! operation of the document reaches an operation of a router. The admin listener serves
//! both documents. Schemathesis (`.ci/conformance.sh`) then checks the answers.

use std::collections::{BTreeMap, BTreeSet};

use http::Method;
use serde_norway::Value;

mod common;

/// Path template → methods (upper case).
type Operations = BTreeMap<String, BTreeSet<String>>;

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document(name: &str) -> Value {
    let path = format!("{}/openapi/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The operations a document declares.
fn documented(doc: &Value) -> Operations {
    let paths = doc["paths"].as_mapping().expect("a paths object");
    paths
        .iter()
        .map(|(path, item)| {
            let path = path.as_str().expect("path keys are strings").to_owned();
            let item = item.as_mapping().expect("a path item object");
            let methods = item
                .keys()
                .filter_map(Value::as_str)
                .filter(|k| HTTP_METHODS.contains(k))
                .map(str::to_uppercase)
                .collect();
            (path, methods)
        })
        .collect()
}

/// What the routers know: the gateway's own routes and the store's, merged per path.
fn routed() -> Operations {
    let mut out = Operations::new();
    for (pattern, methods) in csgate::routes::ROUTES.iter().chain(csgate::store::ROUTES) {
        out.entry((*pattern).to_owned())
            .or_default()
            .extend(methods.iter().map(|m| m.as_str().to_owned()));
    }
    out
}

/// A concrete path for a template: every `{parameter}` becomes `7`.
fn sample(template: &str) -> String {
    let mut path = String::from(csgate::routes::PUBLIC_PREFIX);
    for segment in template.split('/').skip(1) {
        path.push('/');
        path.push_str(if segment.starts_with('{') {
            "7"
        } else {
            segment
        });
    }
    path
}

/// Does `method` on `template` reach an operation of the gateway or of the store?
fn reaches_a_router(method: &str, template: &str) -> bool {
    let method = Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let path = sample(template);
    let gateway = matches!(
        csgate::routes::route(&method, &path),
        Ok(csgate::routes::Route::QueryServices { .. } | csgate::routes::Route::ServiceById { .. })
    );
    gateway || csgate::store::is_routed(&method, &path)
}

/// Every disagreement between the document and the routers, as readable lines.
fn disagreements(doc: &Operations, routers: &Operations) -> Vec<String> {
    let mut out = Vec::new();
    for (path, methods) in routers {
        match doc.get(path) {
            None => out.push(format!(
                "{path}: routed ({methods:?}) but not in the document"
            )),
            Some(documented) if documented != methods => out.push(format!(
                "{path}: the document says {documented:?}, the routers {methods:?}"
            )),
            Some(_) => {}
        }
    }
    for (path, methods) in doc {
        if !routers.contains_key(path) {
            out.push(format!("{path}: documented but in no route table"));
        }
        for method in methods {
            if !reaches_a_router(method, path) {
                out.push(format!("{method} {path}: documented but does not route"));
            }
        }
    }
    out
}

#[test]
fn the_public_document_and_the_routers_agree() {
    let doc = documented(&document("csgate.yaml"));
    let problems = disagreements(&doc, &routed());
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(
        doc.len(),
        32,
        "the six Query Services routes and the store's other 26"
    );
}

#[test]
fn a_route_missing_from_the_document_is_found() {
    let routers = routed();
    let mut doc = documented(&document("csgate.yaml"));
    doc.remove("/services/{service_id}/states/transition");
    assert_eq!(
        disagreements(&doc, &routers),
        ["/services/{service_id}/states/transition: routed ({\"POST\"}) but not in the document"]
    );

    // A route added to a router (here: its table) without the document.
    let doc = documented(&document("csgate.yaml"));
    let mut routers = routers;
    routers.insert("/services/{service_id}/notes".into(), ["GET".into()].into());
    assert_eq!(
        disagreements(&doc, &routers),
        ["/services/{service_id}/notes: routed ({\"GET\"}) but not in the document"]
    );

    // A method the document gives a path that the router does not have.
    let mut doc = documented(&document("csgate.yaml"));
    doc.get_mut("/maintenance/purge")
        .expect("documented")
        .insert("DELETE".into());
    let problems = disagreements(&doc, &routed());
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[1].starts_with("DELETE /maintenance/purge: documented but does not route"));
}

#[test]
fn every_path_is_relative_to_the_public_prefix_and_every_operation_is_named() {
    let doc = document("csgate.yaml");
    assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
    assert_eq!(
        doc["servers"][0]["url"].as_str(),
        Some(csgate::routes::PUBLIC_PREFIX)
    );
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_mapping().expect("paths") {
        let path = path.as_str().expect("a string");
        assert!(
            !path.starts_with("/genesys"),
            "{path} is relative to the server URL"
        );
        for (method, operation) in item.as_mapping().expect("a path item") {
            if HTTP_METHODS.contains(&method.as_str().unwrap_or("")) {
                let id = operation["operationId"].as_str().expect("an operationId");
                assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
            }
        }
    }
}

#[test]
fn every_exception_csgate_makes_is_documented_with_its_status() {
    use csgate::error::GatewayError;
    let doc = document("csgate.yaml");
    let schema = &doc["components"]["schemas"]["GatewayError"]["properties"]["exception"];
    let kinds: BTreeSet<&str> = schema["enum"]
        .as_sequence()
        .expect("an enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let description = schema["description"].as_str().expect("a description");
    let description = description.split_whitespace().collect::<Vec<_>>().join(" ");
    let errors = [
        GatewayError::InvalidParameter(String::new()),
        GatewayError::NotFound(String::new()),
        GatewayError::MethodNotAllowed {
            method: "POST".into(),
            allow: "GET, HEAD",
        },
        GatewayError::QueryTooLong { len: 0, max: 0 },
        GatewayError::HeadersTooLarge { len: 0, max: 0 },
        GatewayError::PayloadTooLarge { max: 0 },
        GatewayError::UpstreamUnavailable,
        GatewayError::NoHealthyUpstream,
        GatewayError::UpstreamTimeout,
        GatewayError::UpstreamInvalidResponse(String::new()),
        GatewayError::Overloaded,
        GatewayError::Internal(String::new()),
    ];
    let mut made = BTreeSet::new();
    for error in errors {
        let (status, kind) = error.status_and_kind();
        made.insert(kind);
        let status = status.as_u16().to_string();
        let line = description
            .split(", ")
            .find(|part| part.trim().starts_with(&format!("`{kind}`")))
            .unwrap_or_else(|| panic!("{kind} is not described"));
        assert!(line.contains(&status), "{kind} {status}: {line}");
    }
    assert_eq!(made, kinds, "every kind csgate makes, and only those");
}

#[tokio::test]
async fn the_admin_listener_serves_both_documents() {
    let upstream = common::FakeUpstream::start(common::Reply::json(200, "[]")).await;
    let gateway = common::start_gateway("", &[upstream.url()]).await;
    for name in ["csgate.yaml", "admin.yaml"] {
        let answer = common::get(&gateway.admin_url(&format!("/openapi/{name}"))).await;
        assert_eq!(answer.status, 200, "{name}");
        assert_eq!(
            answer.header("content-type").as_deref(),
            Some("application/yaml")
        );
        let served: Value = serde_norway::from_slice(&answer.body).expect("YAML");
        assert_eq!(served, document(name), "{name} is the file in openapi/");
    }
    let answer = common::send(
        Method::POST,
        &gateway.admin_url("/openapi/csgate.yaml"),
        &[],
        "",
    )
    .await;
    assert_eq!(
        (answer.status, answer.header("allow").as_deref()),
        (405, Some("GET, HEAD"))
    );
    gateway.stop().await;
}

/// Personal data is cached by csgate only: its Query Services answers say `no-store`
/// (or what `[cache] downstream_cache_control` says), its errors `no-store` too, and
/// proxied answers keep the upstream's header.
#[tokio::test]
async fn downstream_caches_are_told_what_they_may_store() {
    let upstream = common::FakeUpstream::start(
        common::Reply::json(200, "[]").with_header("cache-control", "max-age=600"),
    )
    .await;
    let gateway = common::start_gateway("", &[upstream.url()]).await;
    let cache_control = |path: &'static str| {
        let url = gateway.url(&format!("/genesys/1/cs{path}"));
        async move {
            let answer = common::get(&url).await;
            (answer.status, answer.header("cache-control"))
        }
    };
    let private = Some("no-store".to_owned());
    for path in [
        "/services/anonymous/408-832-7799",
        "/services/anonymous/408-832-7799/active",
        "/customers/ABC/services/completed",
    ] {
        assert_eq!(cache_control(path).await, (200, private.clone()), "{path}");
    }
    // A hit says it too.
    assert_eq!(
        cache_control("/services/anonymous/408-832-7799").await,
        (200, private.clone())
    );
    assert_eq!(
        cache_control("/services/anonymous/k?active_states=maybe").await,
        (400, Some("no-store".to_owned()))
    );
    assert_eq!(
        cache_control("/services/42/states").await,
        (200, Some("max-age=600".to_owned())),
        "a proxied answer keeps the upstream's header"
    );
    gateway.stop().await;

    let gateway = common::start_gateway(
        "[cache]\ndownstream_cache_control = \"private, max-age=5\"\n",
        &[upstream.url()],
    )
    .await;
    let answer = common::get(&gateway.url("/genesys/1/cs/customers/ABC/services")).await;
    assert_eq!(
        answer.header("cache-control").as_deref(),
        Some("private, max-age=5")
    );
    gateway.stop().await;
}

#[test]
fn the_admin_document_lists_the_admin_routes() {
    let doc = documented(&document("admin.yaml"));
    let both = |p: &str| (p.to_owned(), ["GET".to_owned(), "HEAD".to_owned()].into());
    let expected: Operations = [
        both("/healthz"),
        both("/readyz"),
        both("/metrics"),
        both("/cache/stats"),
        ("/cache".to_owned(), ["DELETE".to_owned()].into()),
        (
            "/cache/anonymous/{contact_key}".to_owned(),
            ["DELETE".to_owned()].into(),
        ),
        both("/openapi/csgate.yaml"),
        both("/openapi/admin.yaml"),
    ]
    .into();
    assert_eq!(doc, expected);
}

/// Found by httplint: a `201 Created` names what it created in `Location`; the store's
/// answers are personal data or errors and say `no-store`, except the Query Services
/// lists, which a gateway in front may cache.
#[tokio::test]
async fn the_store_names_what_it_creates_and_forbids_caching_but_for_query_lists() {
    use csgate::store::StoreConfig;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = common::store::TestStore::serve(StoreConfig {
        db: dir.path().join("cs.sqlite"),
        legacy: false,
        business_attributes: BTreeMap::new(),
        sweep_interval: std::time::Duration::ZERO,
        max_body_bytes: csgate::config::defaults::STORE_MAX_BODY_BYTES,
        max_memory_bytes: csgate::config::defaults::STORE_MAX_MEMORY_BYTES,
    })
    .await;
    let base = format!("{}/genesys/1/cs", store.url());
    let json = [("content-type", "application/json")];
    let post = |path: &str, body: &'static str| {
        let url = format!("{base}{path}");
        async move { common::send(Method::POST, &url, &json, body).await }
    };
    let started = post("/services/start", r#"{"contact_key": "k"}"#).await;
    assert_eq!(started.status, 201);
    let id = started.json()["service_id"].to_string();
    let created = [
        (started, format!("/genesys/1/cs/services/{id}")),
        (
            post(&format!("/services/{id}/states/start"), "{}").await,
            format!("/genesys/1/cs/services/{id}/states/1"),
        ),
        (
            post(&format!("/services/{id}/tasks/start"), "{}").await,
            format!("/genesys/1/cs/services/{id}/tasks/1"),
        ),
        (
            post(
                &format!("/services/{id}/states/transition"),
                r#"{"from": {"state_id": 1}, "to": {}}"#,
            )
            .await,
            format!("/genesys/1/cs/services/{id}/states/2"),
        ),
    ];
    for (answer, location) in created {
        assert_eq!(answer.status, 201, "{}", answer.text());
        assert_eq!(answer.header("location"), Some(location));
        assert_eq!(answer.header("cache-control").as_deref(), Some("no-store"));
    }
    for (path, cache_control) in [
        (format!("/services/{id}/states"), Some("no-store")),
        (format!("/services/{id}"), Some("no-store")),
        ("/services/999/tasks".to_owned(), Some("no-store")),
        ("/services/anonymous/k".to_owned(), None),
        ("/customers/c/services/active".to_owned(), None),
    ] {
        let answer = common::get(&format!("{base}{path}")).await;
        assert_eq!(
            answer.header("cache-control").as_deref(),
            cache_control,
            "{path}"
        );
    }
}

#[test]
fn downstream_cache_control_is_a_header_value_or_a_startup_error_naming_the_key() {
    use csgate::config::{Config, Overrides};
    let load = |value: &str| {
        Config::from_toml(
            &format!("[cache]\ndownstream_cache_control = {value:?}\n"),
            std::path::Path::new("t.toml"),
            &Overrides::default(),
        )
    };
    let config = load("private, max-age=5").expect("valid");
    assert_eq!(config.cache.downstream_cache_control, "private, max-age=5");
    assert_eq!(Config::default().cache.downstream_cache_control, "no-store");
    for bad in ["", " ", "privé"] {
        let error = load(bad).expect_err(bad).to_string();
        assert!(
            error.starts_with("cache.downstream_cache_control:"),
            "{bad:?}: {error}"
        );
    }
}
