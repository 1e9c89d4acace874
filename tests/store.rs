//! The reference store over real HTTP on loopback: every operation's success and error
//! answers, tenancy, legacy mode, the sweeper, concurrency and durability.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use csgate::query::TypeMap;
use csgate::store::{StoreConfig, SweepReport};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

mod common;

use common::send;
use common::store::TestStore;

const NOT_FOUND: &str = "com.genesyslab.gms.cs.exceptions.NotFoundException";
const VALIDATION: &str = "com.genesyslab.gms.cs.exceptions.ValidationException";
const CS: &str = "/genesys/1/cs";

/// A store served on an ephemeral loopback port, through the common harness.
struct Harness {
    served: TestStore,
    _dir: Option<tempfile::TempDir>,
}

fn config(db: &Path, legacy: bool) -> StoreConfig {
    let mut business_attributes = BTreeMap::new();
    business_attributes.insert(
        "service_type".to_owned(),
        TypeMap::new([
            ("OpenAccount".to_owned(), 1),
            ("DeliveringService".to_owned(), 8),
        ]),
    );
    business_attributes.insert(
        "media_type".to_owned(),
        TypeMap::new([("voice".to_owned(), 1001), ("email".to_owned(), 1003)]),
    );
    StoreConfig {
        db: db.to_owned(),
        legacy,
        business_attributes,
        sweep_interval: Duration::ZERO,
        max_body_bytes: csgate::config::defaults::STORE_MAX_BODY_BYTES,
        max_memory_bytes: csgate::config::defaults::STORE_MAX_MEMORY_BYTES,
    }
}

impl Harness {
    async fn start(legacy: bool) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("data/cs.db");
        let mut harness = Harness::on(&db, legacy).await;
        harness._dir = Some(dir);
        harness
    }

    async fn on(db: &Path, legacy: bool) -> Harness {
        Harness {
            served: TestStore::serve(config(db, legacy)).await,
            _dir: None,
        }
    }

    async fn shutdown(&mut self) {
        self.served.shutdown().await;
    }

    /// Sends a request; `tenant` is (`ContactCenterId`, `GroupId`).
    async fn call_as(
        &self,
        tenant: Option<(&str, &str)>,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, hyper::HeaderMap, Value) {
        let uri = if path.starts_with('/') && !path.starts_with(CS) && !path.starts_with("/x") {
            format!("{}{CS}{path}", self.served.url())
        } else {
            format!("{}{path}", self.served.url())
        };
        let mut headers = Vec::new();
        if let Some((cc, group)) = tenant {
            headers.extend([("ContactCenterId", cc), ("GroupId", group)]);
        }
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let answer = send(method, &uri, &headers, body.unwrap_or("").to_owned()).await;
        let status = StatusCode::from_u16(answer.status).expect("status");
        let (headers, bytes) = (answer.headers, answer.body);
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        (status, headers, value)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let text = body.map(|b| b.to_string());
        let (status, _, value) = self.call_as(None, method, path, text.as_deref()).await;
        (status, value)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, value) = self.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {value}");
        value
    }

    async fn start_service(&self, body: Value) -> i64 {
        let (status, value) = self.call(Method::POST, "/services/start", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{value}");
        value["service_id"].as_i64().expect("integer service_id")
    }

    async fn start_item(&self, service: i64, what: &str, body: Value) -> i64 {
        let path = format!("/services/{service}/{what}s/start");
        let (status, value) = self.call(Method::POST, &path, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{value}");
        value[format!("{what}_id")].as_i64().expect("integer id")
    }

    async fn expect(&self, method: Method, path: &str, body: Option<Value>, status: u16) -> Value {
        let (got, value) = self.call(method.clone(), path, body).await;
        assert_eq!(got.as_u16(), status, "{method} {path}: {value}");
        value
    }
}

fn error(value: &Value) -> (&str, &str) {
    (
        value["message"].as_str().expect("message"),
        value["exception"].as_str().expect("exception"),
    )
}

fn ids(services: &Value) -> Vec<i64> {
    services
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["service_id"].as_i64().expect("id"))
        .collect()
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("timestamp")
}

#[tokio::test]
async fn service_lifecycle_answers() {
    let h = Harness::start(false).await;
    let id = h
        .start_service(json!({
            "contact_key": "408-832-7799", "service_type": 8, "est_duration": 600,
            "timestamp": "2024-05-07T12:05:20.157Z", "session_id": "s-1",
            "media_type": "voice", "segment": "gold"
        }))
        .await;
    let got = h.get(&format!("/services/{id}")).await;
    assert_eq!(
        got,
        json!({
            "service_id": id, "service_type": 8, "contact_key": "408-832-7799",
            "est_duration": 600,
            "started": {"timestamp": "2024-05-07T12:05:20.157Z", "session_id": "s-1", "media_type": "voice"}
        })
    );

    let value = h
        .expect(
            Method::POST,
            &format!("/services/{id}/end"),
            Some(json!({"timestamp": "2024-05-07T12:15:20.157Z", "disposition": "done", "disposition_desc": "ok", "segment": "silver"})),
            204,
        )
        .await;
    assert_eq!(value, Value::Null);
    let got = h
        .get(&format!("/services/{id}?extensions=*&active_states=true"))
        .await;
    assert_eq!(got["duration"], 600_000);
    assert_eq!(
        got["completed"],
        json!({"timestamp": "2024-05-07T12:15:20.157Z"})
    );
    assert_eq!(got["disposition"], "done");
    assert_eq!(got["disposition_desc"], "ok");
    assert_eq!(got["segment"], "silver", "complete-time extensions replace");
    assert_eq!(got["active_states"], json!([]));
    assert!(got.get("completed_states").is_none());

    let again = h
        .expect(Method::POST, &format!("/services/{id}/end"), None, 400)
        .await;
    assert_eq!(
        error(&again),
        (&*format!("service {id} is already completed"), VALIDATION)
    );

    h.expect(Method::DELETE, &format!("/services/{id}"), None, 200)
        .await;
    let gone = h
        .expect(Method::GET, &format!("/services/{id}"), None, 400)
        .await;
    assert_eq!(
        error(&gone),
        (
            &*format!("There are no service found for : {id}"),
            NOT_FOUND
        )
    );
    let gone = h
        .expect(Method::DELETE, &format!("/services/{id}"), None, 400)
        .await;
    assert_eq!(error(&gone).1, NOT_FOUND);
    let gone = h.expect(Method::GET, "/services/abc", None, 400).await;
    assert_eq!(
        error(&gone),
        ("There are no service found for : abc", NOT_FOUND)
    );
}

#[tokio::test]
async fn service_start_refusals_name_the_field() {
    let h = Harness::start(false).await;
    let cases = [
        (json!({}), "field 'customer_id': a service needs a customer_id or a contact_key"),
        (json!({"contact_key": 7}), "field 'contact_key': must be a string, not a number"),
        (
            json!({"contact_key": "k", "timestamp": "2024-13-01T00:00:00Z"}),
            "field 'timestamp': '2024-13-01T00:00:00Z' is not a valid date-time: no such date or time",
        ),
        (
            json!({"contact_key": "k", "service_type": "Nope"}),
            "field 'service_type': 'Nope' is not a configured service_type name",
        ),
        (
            json!({"contact_key": "k", "media_type": "pigeon"}),
            "field 'media_type': 'pigeon' is not a configured media_type name",
        ),
        (
            json!({"contact_key": "k", "session_id": "s".repeat(33)}),
            "field 'session_id': is longer than 32 characters",
        ),
        (
            json!({"contact_key": "k", "est_duration": "long"}),
            "field 'est_duration': must be a non-negative integer, not a string",
        ),
        (
            json!({"contact_key": "k", "service_id": 5}),
            "field 'service_id': cannot be set in this request",
        ),
    ];
    for (body, message) in cases {
        let value = h
            .expect(Method::POST, "/services/start", Some(body.clone()), 400)
            .await;
        assert_eq!(error(&value), (message, VALIDATION), "body {body}");
    }
    let (status, _, value) = h
        .call_as(
            None,
            Method::POST,
            "/services/start",
            Some("{\"contact_key\":"),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(error(&value).1, VALIDATION);
    assert!(error(&value)
        .0
        .starts_with("the request body is not valid JSON"));
    // A configured name is accepted.
    h.start_service(json!({"customer_id": "c", "service_type": "DeliveringService"}))
        .await;
}

#[tokio::test]
async fn routing_errors() {
    let h = Harness::start(false).await;
    let (status, headers, value) = h.call_as(None, Method::GET, "/services/start", None).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");
    assert_eq!(error(&value).1, "MethodNotAllowed");
    let (status, headers, _) = h.call_as(None, Method::PATCH, "/services/1", None).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, PUT, DELETE");
    let value = h
        .expect(Method::GET, "/services/1/nothing", None, 404)
        .await;
    assert_eq!(error(&value).1, "NotFound");
    let value = h.expect(Method::GET, "/x/elsewhere", None, 404).await;
    assert_eq!(
        error(&value),
        ("no such resource: /x/elsewhere", "NotFound")
    );
}

#[tokio::test]
async fn extensions_are_returned_only_when_named() {
    let h = Harness::start(false).await;
    let id = h
        .start_service(json!({"customer_id": "c1", "a": 1, "b": {"x": 1}, "c": [1, 2]}))
        .await;
    let path = format!("/services/{id}");
    let plain = h.get(&path).await;
    assert!(plain.get("a").is_none() && plain.get("b").is_none());
    let some = h.get(&format!("{path}?extensions=a,c")).await;
    assert_eq!(
        (some["a"].clone(), some["c"].clone()),
        (json!(1), json!([1, 2]))
    );
    assert!(some.get("b").is_none());

    h.expect(
        Method::PUT,
        &format!("{path}/extensions/a"),
        Some(json!("replaced")),
        204,
    )
    .await;
    h.expect(
        Method::PUT,
        &format!("{path}/extensions/b/merge"),
        Some(json!({"y": 2, "x": 0})),
        204,
    )
    .await;
    h.expect(
        Method::PUT,
        &format!("{path}/extensions/new/merge"),
        Some(json!({"z": 1})),
        204,
    )
    .await;
    let all = h.get(&format!("{path}?extensions=*")).await;
    assert_eq!(all["a"], "replaced");
    assert_eq!(all["b"], json!({"x": 0, "y": 2}));
    assert_eq!(all["new"], json!({"z": 1}));

    let value = h
        .expect(
            Method::PUT,
            &format!("{path}/extensions/c/merge"),
            Some(json!({"z": 1})),
            400,
        )
        .await;
    assert_eq!(
        error(&value),
        (
            "field 'c': the existing value is not a JSON object and cannot be merged into",
            VALIDATION
        )
    );
    let value = h
        .expect(
            Method::PUT,
            &format!("{path}/extensions/b/merge"),
            Some(json!([1])),
            400,
        )
        .await;
    assert_eq!(
        error(&value),
        ("field 'b': a merge body must be a JSON object", VALIDATION)
    );
    let value = h
        .expect(
            Method::PUT,
            &format!("{path}/extensions/duration"),
            Some(json!(1)),
            400,
        )
        .await;
    assert_eq!(error(&value).1, VALIDATION);
    let value = h
        .expect(
            Method::PUT,
            "/services/999999/extensions/a",
            Some(json!(1)),
            400,
        )
        .await;
    assert_eq!(
        error(&value),
        ("There are no service found for : 999999", NOT_FOUND)
    );
    let (status, _, _) = h
        .call_as(None, Method::PUT, &format!("{path}/extensions/a"), Some(""))
        .await;
    assert_eq!(status, 400, "an extension body must be a JSON value");
}

#[tokio::test]
async fn states_and_tasks() {
    let h = Harness::start(false).await;
    let id = h.start_service(json!({"customer_id": "c1"})).await;
    let s1 = h
        .start_item(
            id,
            "state",
            json!({"state_type": 4, "timestamp": "2024-01-01T00:00:00Z", "queue": "q1"}),
        )
        .await;
    assert_eq!(s1, 1);
    let t1 = h
        .start_item(
            id,
            "task",
            json!({"task_type": 2, "state_id": s1, "note": "n"}),
        )
        .await;
    let t2 = h.start_item(id, "task", json!({"task_type": 3})).await;
    assert_eq!((t1, t2), (1, 2));

    let (status, value) = h
        .call(
            Method::POST,
            &format!("/services/{id}/states/transition"),
            Some(json!({"from": {"state_id": s1, "timestamp": "2024-01-01T00:01:00Z", "disposition": "answered"},
                        "to": {"state_type": 8, "timestamp": "2024-01-01T00:01:00Z"}})),
        )
        .await;
    assert_eq!(status, 201);
    let s2 = value["state_id"].as_i64().expect("state id");
    assert_eq!(s2, 2);

    let states = h.get(&format!("/services/{id}/states")).await;
    assert_eq!(states.as_array().map(Vec::len), Some(2));
    assert_eq!(
        states[0],
        json!({"state_id": 1, "state_type": 4, "duration": 60000,
               "started": {"timestamp": "2024-01-01T00:00:00.000Z"},
               "completed": {"timestamp": "2024-01-01T00:01:00.000Z"},
               "disposition": "answered", "queue": "q1"})
    );
    let active = h.get(&format!("/services/{id}/states/active")).await;
    assert_eq!(
        active
            .as_array()
            .map(|a| a.iter().map(|s| s["state_id"].clone()).collect::<Vec<_>>()),
        Some(vec![json!(2)])
    );
    let done = h
        .get(&format!(
            "/services/{id}/states/completed?active_tasks=true"
        ))
        .await;
    assert_eq!(done[0]["active_tasks"][0]["task_id"], t1);
    assert!(done[0].get("completed_tasks").is_none());
    let typed = h.get(&format!("/services/{id}/states?state_types=8")).await;
    assert_eq!(typed.as_array().map(Vec::len), Some(1));
    let one = h.get(&format!("/services/{id}/states/{s2}")).await;
    assert_eq!(one["state_type"], 8);

    let value = h
        .expect(
            Method::POST,
            &format!("/services/{id}/states/{s1}/end"),
            None,
            400,
        )
        .await;
    assert_eq!(error(&value), ("state 1 is already completed", VALIDATION));
    let value = h
        .expect(
            Method::POST,
            &format!("/services/{id}/states/99/end"),
            None,
            400,
        )
        .await;
    assert_eq!(
        error(&value),
        ("There are no state found for : 99", NOT_FOUND)
    );
    let value = h
        .expect(Method::GET, &format!("/services/{id}/tasks/99"), None, 400)
        .await;
    assert_eq!(
        error(&value),
        ("There are no task found for : 99", NOT_FOUND)
    );
    let value = h
        .expect(
            Method::POST,
            &format!("/services/{id}/tasks/start"),
            Some(json!({"state_id": 42})),
            400,
        )
        .await;
    assert_eq!(
        error(&value),
        ("There are no state found for : 42", NOT_FOUND)
    );
    let value = h
        .expect(
            Method::POST,
            &format!("/services/{id}/states/transition"),
            Some(json!({"from": {"state_id": s1}, "to": {"state_type": 9}})),
            400,
        )
        .await;
    assert_eq!(error(&value).0, "state 1 is already completed");
    assert_eq!(
        h.get(&format!("/services/{id}/states"))
            .await
            .as_array()
            .map(Vec::len),
        Some(2),
        "a failed transition starts nothing"
    );

    h.expect(
        Method::POST,
        &format!("/services/{id}/tasks/{t1}/end"),
        Some(json!({"note": "m"})),
        204,
    )
    .await;
    let value = h
        .expect(
            Method::POST,
            &format!("/services/{id}/tasks/{t1}/end"),
            None,
            400,
        )
        .await;
    assert_eq!(error(&value), ("task 1 is already completed", VALIDATION));
    let tasks = h.get(&format!("/services/{id}/tasks?state_id={s1}")).await;
    assert_eq!(ids_of(&tasks, "task_id"), vec![t1]);
    assert_eq!(tasks[0]["note"], "m");
    assert_eq!(
        ids_of(
            &h.get(&format!("/services/{id}/tasks/active")).await,
            "task_id"
        ),
        vec![t2]
    );
    assert_eq!(
        ids_of(
            &h.get(&format!("/services/{id}/tasks/completed")).await,
            "task_id"
        ),
        vec![t1]
    );
    assert_eq!(
        ids_of(
            &h.get(&format!("/services/{id}/tasks?task_types=3")).await,
            "task_id"
        ),
        vec![t2]
    );
    let task = h.get(&format!("/services/{id}/tasks/{t2}")).await;
    assert_eq!(task["task_type"], 3);

    h.expect(
        Method::PUT,
        &format!("/services/{id}/states/{s2}/extensions/q"),
        Some(json!({"a": 1})),
        204,
    )
    .await;
    h.expect(
        Method::PUT,
        &format!("/services/{id}/states/{s2}/extensions/q/merge"),
        Some(json!({"b": 2})),
        204,
    )
    .await;
    h.expect(
        Method::PUT,
        &format!("/services/{id}/tasks/{t2}/extensions/w"),
        Some(json!(5)),
        204,
    )
    .await;
    h.expect(
        Method::PUT,
        &format!("/services/{id}/tasks/77/extensions/w"),
        Some(json!(5)),
        400,
    )
    .await;
    assert_eq!(
        h.get(&format!("/services/{id}/states/{s2}")).await["q"],
        json!({"a": 1, "b": 2})
    );
    assert_eq!(h.get(&format!("/services/{id}/tasks/{t2}")).await["w"], 5);

    // Sections of the service itself.
    let full = h
        .get(&format!("/services/{id}?active_states=1&completed_states&active_tasks=true&completed_tasks=true"))
        .await;
    assert_eq!(ids_of(&full["active_states"], "state_id"), vec![s2]);
    assert_eq!(ids_of(&full["completed_states"], "state_id"), vec![s1]);
    assert_eq!(ids_of(&full["active_tasks"], "task_id"), vec![t2]);
    assert_eq!(ids_of(&full["completed_tasks"], "task_id"), vec![t1]);
    assert!(full["active_states"][0].get("active_tasks").is_none());

    // A completed service takes no new states.
    h.expect(Method::POST, &format!("/services/{id}/end"), None, 204)
        .await;
    let value = h
        .expect(
            Method::POST,
            &format!("/services/{id}/states/start"),
            None,
            400,
        )
        .await;
    assert_eq!(
        error(&value).0,
        format!("service {id} is already completed")
    );
}

fn ids_of(items: &Value, key: &str) -> Vec<i64> {
    items
        .as_array()
        .expect("array")
        .iter()
        .map(|i| i[key].as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn query_services_and_association() {
    let h = Harness::start(false).await;
    let a = h
        .start_service(json!({"contact_key": "k1", "service_type": 1, "timestamp": "2024-01-01T00:00:00Z", "segment": "gold"}))
        .await;
    let b = h
        .start_service(json!({"contact_key": "k1", "service_type": 8, "timestamp": "2024-01-02T00:00:00Z", "segment": "silver"}))
        .await;
    let c = h
        .start_service(json!({"contact_key": "k1", "timestamp": "2024-01-03T00:00:00Z"}))
        .await;
    h.start_service(json!({"contact_key": "other"})).await;
    h.expect(
        Method::POST,
        &format!("/services/{b}/end"),
        Some(json!({"timestamp": "2024-01-02T01:00:00Z"})),
        204,
    )
    .await;
    h.start_item(a, "state", json!({"state_type": 4})).await;

    assert_eq!(ids(&h.get("/services/anonymous/k1").await), vec![a, b, c]);
    assert_eq!(
        ids(&h.get("/services/anonymous/k1/active").await),
        vec![a, c]
    );
    assert_eq!(
        ids(&h.get("/services/anonymous/k1/completed").await),
        vec![b]
    );
    assert_eq!(
        ids(&h
            .get("/services/anonymous/k1?started_from=2024-01-02T00:00:00Z")
            .await),
        vec![b, c]
    );
    assert_eq!(
        ids(&h
            .get("/services/anonymous/k1?started_to=2024-01-02T00:00:00Z")
            .await),
        vec![a]
    );
    assert_eq!(
        ids(&h
            .get("/services/anonymous/k1?completed_from=2024-01-01T00:00:00Z")
            .await),
        vec![b]
    );
    assert_eq!(
        ids(&h
            .get("/services/anonymous/k1?service_types=DeliveringService,1")
            .await),
        vec![a, b]
    );
    let filtered = h.get("/services/anonymous/k1?segment=gold").await;
    assert_eq!(ids(&filtered), vec![a]);
    assert_eq!(filtered[0]["segment"], "gold", "filter keys are returned");
    let plain = h.get("/services/anonymous/k1").await;
    assert!(
        plain[0].get("segment").is_none(),
        "no extensions unless named"
    );
    assert!(plain[0].get("active_states").is_none());
    let with_states = h
        .get("/services/anonymous/k1/active?active_states=true&extensions=*")
        .await;
    assert_eq!(with_states[0]["active_states"][0]["state_type"], 4);
    assert_eq!(with_states[1]["active_states"], json!([]));
    assert_eq!(with_states[0]["segment"], "gold");

    let value = h
        .expect(
            Method::GET,
            "/services/anonymous/k1?started_from=yesterday",
            None,
            400,
        )
        .await;
    assert_eq!(error(&value).1, "InvalidParameter");
    assert!(error(&value).0.contains("started_from"), "{value}");
    let value = h
        .expect(
            Method::GET,
            "/services/anonymous/k1/active?completed_from=2024-01-01T00:00:00Z",
            None,
            400,
        )
        .await;
    assert_eq!(error(&value).1, "InvalidParameter");
    let value = h
        .expect(
            Method::GET,
            "/services/anonymous/k1?service_types=Nope",
            None,
            400,
        )
        .await;
    assert_eq!(error(&value).1, "InvalidParameter");

    // Association: the service leaves anonymous results and appears under the customer.
    h.expect(
        Method::POST,
        &format!("/customers/cust-9/services/{a}"),
        None,
        204,
    )
    .await;
    assert_eq!(ids(&h.get("/services/anonymous/k1").await), vec![b, c]);
    let owned = h.get("/customers/cust-9/services").await;
    assert_eq!(ids(&owned), vec![a]);
    assert_eq!(owned[0]["customer_id"], "cust-9");
    assert_eq!(owned[0]["contact_key"], "k1");
    // Last association wins.
    h.expect(
        Method::POST,
        &format!("/customers/cust-10/services/{a}"),
        None,
        204,
    )
    .await;
    assert_eq!(
        ids(&h.get("/customers/cust-9/services").await),
        Vec::<i64>::new()
    );
    assert_eq!(
        ids(&h.get("/customers/cust-10/services/active").await),
        vec![a]
    );
    assert_eq!(
        ids(&h.get("/customers/cust-10/services/completed").await),
        Vec::<i64>::new()
    );
    let value = h
        .expect(
            Method::POST,
            "/customers/cust-10/services/424242",
            None,
            400,
        )
        .await;
    assert_eq!(
        error(&value),
        ("There are no service found for : 424242", NOT_FOUND)
    );
    // Percent-encoded keys.
    let spaced = h.start_service(json!({"contact_key": "a b/c"})).await;
    assert_eq!(
        ids(&h.get("/services/anonymous/a%20b%2Fc").await),
        vec![spaced]
    );
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let h = Harness::start(false).await;
    let t1 = Some(("cc1", ""));
    let t2 = Some(("cc2", "g"));
    let body = r#"{"contact_key": "same", "x": 1}"#;
    let (_, _, v1) = h
        .call_as(t1, Method::POST, "/services/start", Some(body))
        .await;
    let (_, _, v2) = h
        .call_as(t2, Method::POST, "/services/start", Some(body))
        .await;
    let (id1, id2) = (
        v1["service_id"].as_i64().expect("id"),
        v2["service_id"].as_i64().expect("id"),
    );
    assert_ne!(id1, id2, "service ids are unique across tenants");

    let (_, _, list1) = h
        .call_as(t1, Method::GET, "/services/anonymous/same", None)
        .await;
    let (_, _, list2) = h
        .call_as(t2, Method::GET, "/services/anonymous/same", None)
        .await;
    let (_, _, none) = h
        .call_as(None, Method::GET, "/services/anonymous/same", None)
        .await;
    assert_eq!(
        (ids(&list1), ids(&list2), ids(&none)),
        (vec![id1], vec![id2], vec![])
    );
    let (_, _, same_cc_other_group) = h
        .call_as(
            Some(("cc1", "g")),
            Method::GET,
            "/services/anonymous/same",
            None,
        )
        .await;
    assert_eq!(ids(&same_cc_other_group), Vec::<i64>::new());

    let other = format!("/services/{id2}");
    let writes: [(Method, String, Option<&str>); 8] = [
        (Method::GET, other.clone(), None),
        (Method::POST, format!("{other}/end"), None),
        (Method::PUT, other.clone(), Some(r#"{"ttl": 1}"#)),
        (Method::PUT, format!("{other}/extensions/x"), Some("2")),
        (Method::POST, format!("{other}/states/start"), None),
        (Method::GET, format!("{other}/states"), None),
        (Method::POST, format!("/customers/c/services/{id2}"), None),
        (Method::DELETE, other.clone(), None),
    ];
    for (method, path, body) in writes {
        let (status, _, value) = h.call_as(t1, method.clone(), &path, body).await;
        assert_eq!(status, 400, "{method} {path}");
        assert_eq!(
            error(&value),
            (
                &*format!("There are no service found for : {id2}"),
                NOT_FOUND
            ),
            "{method} {path}"
        );
    }
    let (_, _, untouched) = h
        .call_as(t2, Method::GET, &format!("{other}?extensions=*"), None)
        .await;
    assert_eq!(untouched["x"], 1);
    assert!(untouched.get("completed").is_none() && untouched.get("customer_id").is_none());

    // Purge only touches the caller's tenant.
    h.call_as(t2, Method::POST, &format!("{other}/end"), None)
        .await;
    let (_, _, purged) = h
        .call_as(t1, Method::POST, "/maintenance/purge", None)
        .await;
    assert_eq!(purged, json!({"purged": 0}));
    let (_, _, purged) = h
        .call_as(t2, Method::POST, "/maintenance/purge", None)
        .await;
    assert_eq!(purged, json!({"purged": 1}));
}

#[tokio::test]
async fn legacy_mode_returns_everything_nested() {
    let h = Harness::start(true).await;
    let id = h
        .start_service(json!({"contact_key": "k", "seg": "gold"}))
        .await;
    let state = h.start_item(id, "state", json!({"state_type": 4})).await;
    let task = h.start_item(id, "task", json!({"state_id": state})).await;
    let done = h.start_service(json!({"contact_key": "k"})).await;
    h.expect(Method::POST, &format!("/services/{done}/end"), None, 204)
        .await;

    // Every parameter is ignored, even invalid ones.
    let all = h
        .get("/services/anonymous/k?started_from=2999-01-01T00:00:00Z&seg=silver&active_states=nonsense")
        .await;
    assert_eq!(ids(&all), vec![id, done]);
    let first = &all[0];
    assert_eq!(first["seg"], "gold");
    assert_eq!(
        first["active_states"][0]["active_tasks"][0]["task_id"],
        task
    );
    assert_eq!(first["active_states"][0]["completed_tasks"], json!([]));
    assert_eq!(first["active_tasks"][0]["task_id"], task);
    assert_eq!(first["completed_states"], json!([]));
    assert_eq!(first["completed_tasks"], json!([]));
    assert_eq!(ids(&h.get("/services/anonymous/k/active").await), vec![id]);

    // Older backends also return associated services on anonymous lookups.
    h.expect(
        Method::POST,
        &format!("/customers/c/services/{id}"),
        None,
        204,
    )
    .await;
    let still = h.get("/services/anonymous/k").await;
    assert_eq!(ids(&still), vec![id, done]);
    assert_eq!(still[0]["customer_id"], "c");
    let by_id = h.get(&format!("/services/{id}")).await;
    assert_eq!(by_id["seg"], "gold");
    assert_eq!(
        by_id["active_states"][0]["active_tasks"][0]["task_id"],
        task
    );
}

#[tokio::test]
async fn sweeper_auto_completes_and_expires() {
    let h = Harness::start(false).await;
    let t0 = "2024-01-01T00:00:00Z";
    let auto = h
        .start_service(json!({"contact_key": "k", "timestamp": t0, "auto_complete_after": 60}))
        .await;
    let ttl = h
        .start_service(json!({"contact_key": "k", "timestamp": t0, "ttl": 120}))
        .await;
    let until = h
        .start_service(
            json!({"contact_key": "k", "timestamp": t0, "expiration_time": "2024-01-01T00:03:00Z"}),
        )
        .await;
    let forever = h
        .start_service(json!({"contact_key": "k", "timestamp": t0}))
        .await;

    let report = h
        .served
        .store
        .sweep_at(at("2024-01-01T00:00:59.999Z"))
        .await
        .expect("sweep");
    assert_eq!(report, SweepReport::default());
    let report = h
        .served
        .store
        .sweep_at(at("2024-01-01T00:01:00Z"))
        .await
        .expect("sweep");
    assert_eq!(
        report,
        SweepReport {
            auto_completed: 1,
            expired: 0
        }
    );
    let done = h.get(&format!("/services/{auto}")).await;
    assert_eq!(
        done["completed"],
        json!({"timestamp": "2024-01-01T00:01:00.000Z"})
    );
    assert_eq!(done["duration"], 60_000);

    let report = h
        .served
        .store
        .sweep_at(at("2024-01-01T00:02:00Z"))
        .await
        .expect("sweep");
    assert_eq!(
        report,
        SweepReport {
            auto_completed: 0,
            expired: 1
        }
    );
    h.expect(Method::GET, &format!("/services/{ttl}"), None, 400)
        .await;
    let report = h
        .served
        .store
        .sweep_at(at("2024-01-01T00:03:00Z"))
        .await
        .expect("sweep");
    assert_eq!(report.expired, 1);
    h.expect(Method::GET, &format!("/services/{until}"), None, 400)
        .await;
    assert_eq!(
        ids(&h.get("/services/anonymous/k").await),
        vec![auto, forever]
    );

    // PUT /services/{id}: ttl counts from the update; null removes the expiration.
    h.expect(
        Method::PUT,
        &format!("/services/{forever}"),
        Some(json!({"expiration_time": "2024-01-01T00:10:00Z"})),
        204,
    )
    .await;
    h.expect(
        Method::PUT,
        &format!("/services/{auto}"),
        Some(json!({"ttl": 3600})),
        204,
    )
    .await;
    let report = h
        .served
        .store
        .sweep_at(at("2024-01-01T00:10:00Z"))
        .await
        .expect("sweep");
    assert_eq!(report.expired, 1);
    assert_eq!(ids(&h.get("/services/anonymous/k").await), vec![auto]);
    h.expect(
        Method::PUT,
        &format!("/services/{auto}"),
        Some(json!({"ttl": null})),
        204,
    )
    .await;
    let report = h
        .served
        .store
        .sweep_at(at("2999-01-01T00:00:00Z"))
        .await
        .expect("sweep");
    assert_eq!(report.expired, 0);

    let value = h
        .expect(
            Method::PUT,
            &format!("/services/{auto}"),
            Some(json!({})),
            400,
        )
        .await;
    assert_eq!(error(&value).1, VALIDATION);
    let value = h
        .expect(
            Method::PUT,
            &format!("/services/{auto}"),
            Some(json!({"expiration_time": "soon"})),
            400,
        )
        .await;
    assert!(error(&value).0.starts_with("field 'expiration_time'"));
}

#[tokio::test]
async fn the_sweeper_runs_in_the_background() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(&dir.path().join("cs.db"), false);
    cfg.sweep_interval = Duration::from_millis(50);
    let mut served = TestStore::serve(cfg).await;
    let base = served.url();
    let response = send(
        Method::POST,
        &format!("{base}{CS}/services/start"),
        &[],
        r#"{"contact_key": "k", "ttl": 0}"#,
    )
    .await;
    assert_eq!(response.status, 201);
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let body = common::get(&format!("{base}{CS}/services/anonymous/k"))
            .await
            .body;
        if &body[..] == b"[]" {
            gone = true;
            break;
        }
    }
    assert!(gone, "the expired service was swept");
    served.shutdown().await;
}

#[tokio::test]
async fn fifty_concurrent_state_starts_get_distinct_ids() {
    let h = Harness::start(false).await;
    let id = h.start_service(json!({"customer_id": "c"})).await;
    let path = format!("{}{CS}/services/{id}/states/start", h.served.url());
    let mut tasks = Vec::new();
    for n in 0..50 {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"state_type": n}).to_string();
            let response = send(Method::POST, &path, &[], body).await;
            assert_eq!(response.status, 201);
            let value: Value = serde_json::from_slice(&response.body).expect("json");
            value["state_id"].as_i64().expect("state id")
        }));
    }
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.expect("task"));
    }
    got.sort_unstable();
    assert_eq!(got, (1..=50).collect::<Vec<i64>>());
    let states = h.get(&format!("/services/{id}/states")).await;
    assert_eq!(states.as_array().map(Vec::len), Some(50));
}

#[tokio::test]
async fn data_survives_a_restart() {
    let mut h = Harness::start(false).await;
    let id = h
        .start_service(json!({"contact_key": "durable", "seg": 1}))
        .await;
    let state = h.start_item(id, "state", json!({"state_type": 3})).await;
    h.shutdown().await;
    let db = h.served.db.clone();
    // A process killed with -9 runs no destructors: leak the old store's connections so
    // nothing is checkpointed or closed, then open the file afresh.
    std::mem::forget(h.served.store.clone());
    let reopened = Harness::on(&db, false).await;
    let found = reopened
        .get(&format!("/services/{id}?extensions=*&active_states=true"))
        .await;
    assert_eq!(found["contact_key"], "durable");
    assert_eq!(found["seg"], 1);
    assert_eq!(found["active_states"][0]["state_id"], state);
    let next = reopened
        .start_service(json!({"contact_key": "durable"}))
        .await;
    assert!(next > id, "ids keep increasing after a restart");
    drop(h);
}

/// The child half of `acknowledged_writes_survive_kill_9`: does nothing unless the
/// parent test names a database in the environment of the child process.
#[tokio::test]
async fn kill_9_child() {
    let Some(db) = std::env::var_os("CSGATE_STORE_KILL9_DB") else {
        return;
    };
    let h = Harness::on(Path::new(&db), false).await;
    let id = h
        .start_service(json!({"contact_key": "k9", "seg": 9}))
        .await;
    let state = h.start_item(id, "state", json!({"state_type": 2})).await;
    println!("ACK {id} {state}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Writes acknowledged with 201 survive `kill -9` of the store's process.
#[test]
fn acknowledged_writes_survive_kill_9() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("cs.db");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["kill_9_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("CSGATE_STORE_KILL9_DB", &db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    let ack = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest prints "test kill_9_child ... " without a newline before the output.
        .find_map(|line| line.split_once("ACK ").map(|(_, rest)| rest.to_owned()))
        .expect("the child acknowledged its writes");
    child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix.
    child.wait().expect("reaped");
    let numbers: Vec<i64> = ack
        .split_whitespace()
        .map(|n| n.parse().expect("id"))
        .collect();
    let (id, state) = (numbers[0], numbers[1]);

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let h = Harness::on(&db, false).await;
        let found = h
            .get(&format!("/services/{id}?extensions=*&active_states=true"))
            .await;
        assert_eq!(found["seg"], 9);
        assert_eq!(found["active_states"][0]["state_id"], state);
    });
}

#[tokio::test]
async fn business_attributes_and_purge() {
    let h = Harness::start(false).await;
    let all = h.get("/metadata/business-attributes").await;
    assert_eq!(
        all,
        json!([
            {"name": "media_type", "values": [{"id": 1001, "name": "voice"}, {"id": 1003, "name": "email"}]},
            {"name": "service_type", "values": [{"id": 1, "name": "OpenAccount"}, {"id": 8, "name": "DeliveringService"}]}
        ])
    );
    assert_eq!(
        h.get("/metadata/business-attributes/media_type").await,
        all[0]
    );
    let value = h
        .expect(Method::GET, "/metadata/business-attributes/nope", None, 400)
        .await;
    assert_eq!(
        error(&value),
        (
            "There are no business attribute found for : nope",
            NOT_FOUND
        )
    );

    let old = h
        .start_service(json!({"contact_key": "p", "timestamp": "2020-01-01T00:00:00Z"}))
        .await;
    let new = h
        .start_service(json!({"contact_key": "p", "timestamp": "2020-01-01T00:00:00Z"}))
        .await;
    let active = h.start_service(json!({"contact_key": "p"})).await;
    h.start_item(old, "state", json!({})).await;
    h.expect(
        Method::POST,
        &format!("/services/{old}/end"),
        Some(json!({"timestamp": "2020-01-02T00:00:00Z"})),
        204,
    )
    .await;
    h.expect(
        Method::POST,
        &format!("/services/{new}/end"),
        Some(json!({"timestamp": "2020-03-01T00:00:00Z"})),
        204,
    )
    .await;
    let purged = h
        .expect(
            Method::POST,
            "/maintenance/purge",
            Some(json!({"before": "2020-02-01T00:00:00Z"})),
            200,
        )
        .await;
    assert_eq!(purged, json!({"purged": 1}));
    assert_eq!(
        ids(&h.get("/services/anonymous/p").await),
        vec![new, active]
    );
    let purged = h
        .expect(Method::POST, "/maintenance/purge", None, 200)
        .await;
    assert_eq!(purged, json!({"purged": 1}));
    assert_eq!(ids(&h.get("/services/anonymous/p").await), vec![active]);
    let value = h
        .expect(
            Method::POST,
            "/maintenance/purge",
            Some(json!({"before": 5})),
            400,
        )
        .await;
    assert_eq!(error(&value).1, VALIDATION);
}
