//! OpenTelemetry traces (issue 24 item 4), end to end: the real gateway exports to an
//! OTLP/HTTP receiver started here, which decodes what it gets with the OpenTelemetry
//! project's own generated types (`opentelemetry-proto`, not csgate's), and the span tree
//! of a miss with one retry is checked and printed.
mod common;
#[path = "cluster/redis.rs"]
mod redis_harness;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

use common::*;

const KEY: &str = "408-832-7799";
const CUSTOMER: &str = "C42-secret";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SERVICES: &str = r#"[{"service_id":"383-aaa","service_type":1,"contact_key":"408-832-7799",
  "customer_id":"C42-secret","started":{"timestamp":"2024-03-01T10:00:00.000Z"}}]"#;

/// An OTLP/HTTP trace receiver: decodes every `POST /v1/traces` and keeps the spans.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
        let kept = spans.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let content_type = request
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let body = request.into_body().collect().await?.to_bytes();
                            assert_eq!(content_type, "application/x-protobuf");
                            let export = ExportTraceServiceRequest::decode(body)
                                .expect("an ExportTraceServiceRequest");
                            for resource in export.resource_spans {
                                let service = resource
                                    .resource
                                    .iter()
                                    .flat_map(|r| &r.attributes)
                                    .find(|kv| kv.key == "service.name")
                                    .map(text)
                                    .unwrap_or_default();
                                for scope in resource.scope_spans {
                                    for span in scope.spans {
                                        kept.lock().expect("spans").push((service.clone(), span));
                                    }
                                }
                            }
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            url: format!("http://{addr}/v1/traces"),
            spans,
        }
    }

    /// The spans of `trace_id` once `n` have arrived (the exporter batches them).
    async fn wait_for(&self, trace_id: &str, n: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .expect("spans")
                .iter()
                .filter(|(_, s)| hex(&s.trace_id) == trace_id)
                .map(|(_, s)| s.clone())
                .collect();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} spans of {trace_id} exported",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(n)) => n.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).map(text)
}

fn kind(span: &Span) -> &'static str {
    match span.kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        _ => "other",
    }
}

/// The tree under `parent`, one span a line, children in start order.
fn render(spans: &[Span], parent: &[u8], depth: usize, out: &mut String) {
    let mut children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent)
        .collect();
    children.sort_by_key(|s| s.start_time_unix_nano);
    for span in children {
        let attributes: Vec<String> = span
            .attributes
            .iter()
            .filter(|kv| kv.key != "csgate.request_id")
            .map(|kv| format!("{}={}", kv.key, text(kv)))
            .collect();
        let status = match span.status.as_ref().map(|s| s.code) {
            Some(2) => " ERROR",
            _ => "",
        };
        out.push_str(&format!(
            "{}{} [{}{status}] span={} {}\n",
            "  ".repeat(depth),
            span.name,
            kind(span),
            hex(&span.span_id),
            attributes.join(" ")
        ));
        render(spans, &span.span_id, depth + 1, out);
    }
}

fn tracing_toml(endpoint: &str, extra: &str) -> String {
    format!(
        "[tracing]\nenabled = true\nendpoint = \"{endpoint}\"\nexport_interval = \"50ms\"\n\
         service_name = \"csgate-test\"\n{extra}"
    )
}

/// A miss whose first upstream attempt is refused: the server span continues the
/// caller's trace, the cache span holds both attempts (the retry visible), the
/// post-filter follows, the upstream sees the second attempt's span as its parent, and
/// no contact key or customer id is in any span.
#[tokio::test]
async fn a_miss_with_one_retry_exports_its_span_tree() {
    let receiver = Receiver::start().await;
    let upstream = FakeUpstream::start(Reply::json(200, SERVICES)).await;
    // Round-robin starts at the first target: the refused one.
    let urls = [refused_url().await, upstream.url()];
    let gw = start_gateway(&tracing_toml(&receiver.url, ""), &urls).await;
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let answer = send(
        Method::GET,
        &gw.url(&format!("/genesys/1/cs/services/anonymous/{KEY}")),
        &[
            ("traceparent", &traceparent),
            ("ContactCenterId", "tenant-1"),
        ],
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    let spans = receiver.wait_for(TRACE_ID, 5).await;
    let mut tree = String::new();
    render(&spans, &hex_decode(CALLER_SPAN), 0, &mut tree);
    println!("span tree of a miss with one retry (caller span {CALLER_SPAN}):\n{tree}");

    let server: Vec<&Span> = spans.iter().filter(|s| s.kind == 2).collect();
    assert_eq!(server.len(), 1, "{tree}");
    let server = server[0];
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(server.name, "GET anonymous_services");
    assert_eq!(
        attr(server, "http.route").as_deref(),
        Some("anonymous_services")
    );
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    let children_of = |parent: &Span| -> Vec<&Span> {
        let mut c: Vec<&Span> = spans
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id)
            .collect();
        c.sort_by_key(|s| s.start_time_unix_nano);
        c
    };
    let names: Vec<&str> = children_of(server)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["cache miss", "post_filter"], "{tree}");
    let cache = children_of(server)[0];
    assert_eq!(attr(cache, "csgate.cache.result").as_deref(), Some("miss"));
    let attempts = children_of(cache);
    assert_eq!(attempts.len(), 2, "{tree}");
    assert!(attempts.iter().all(|a| a.kind == 3 && a.name == "GET"));
    assert_eq!(
        attr(attempts[0], "error.type").as_deref(),
        Some("connect_error")
    );
    assert_eq!(attr(attempts[0], "http.request.resend_count"), None);
    assert_eq!(attempts[0].status.as_ref().map(|s| s.code), Some(2));
    assert_eq!(
        attr(attempts[1], "http.request.resend_count").as_deref(),
        Some("1")
    );
    assert_eq!(
        attr(attempts[1], "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(attempts[1], "server.address").as_deref(),
        Some("127.0.0.1")
    );
    // Every span is in the caller's trace, sampled, and ended after it started.
    for span in &spans {
        assert_eq!(span.flags & 1, 1);
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }

    // The upstream got the second attempt's span as its parent, in the same trace.
    let sent = upstream.requests();
    assert_eq!(sent.len(), 1);
    let upstream_parent = sent[0]
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("a traceparent upstream")
        .to_owned();
    assert_eq!(
        upstream_parent,
        format!("00-{TRACE_ID}-{}-01", hex(&attempts[1].span_id))
    );

    // A customer route too: the customer id stays out of the spans like the key.
    let customer_trace = "0af7651916cd43dd8448eb211c80319c";
    let answer = send(
        Method::GET,
        &gw.url(&format!("/genesys/1/cs/customers/{CUSTOMER}/services")),
        &[
            (
                "traceparent",
                &format!("00-{customer_trace}-b7ad6b7169203331-01"),
            ),
            ("ContactCenterId", "tenant-1"),
        ],
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let customer_spans = receiver.wait_for(customer_trace, 3).await;
    let server = customer_spans
        .iter()
        .find(|s| s.kind == 2)
        .expect("server span");
    assert_eq!(
        attr(server, "http.route").as_deref(),
        Some("customer_services")
    );

    let everything = receiver.spans.lock().expect("spans").clone();
    assert!(everything
        .iter()
        .all(|(service, _)| service == "csgate-test"));
    for (_, span) in &everything {
        for kv in &span.attributes {
            let value = text(kv);
            assert!(
                !value.contains(KEY) && !value.contains(CUSTOMER),
                "{} = {value} in {}",
                kv.key,
                span.name
            );
        }
        assert!(!span.name.contains(KEY) && !span.name.contains(CUSTOMER));
    }
    gw.stop().await;
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A hit is a server span with a `cache hit` child and a memoised post-filter; a
/// caller that did not sample its trace gets no span, and its `traceparent` goes
/// upstream unchanged.
#[tokio::test]
async fn hits_are_traced_and_unsampled_callers_are_left_alone() {
    let receiver = Receiver::start().await;
    let upstream = FakeUpstream::start(Reply::json(200, SERVICES)).await;
    let gw = start_gateway(&tracing_toml(&receiver.url, ""), &[upstream.url()]).await;
    let url = gw.url(&format!("/genesys/1/cs/services/anonymous/{KEY}"));
    let unsampled = format!("00-{TRACE_ID}-{CALLER_SPAN}-00");
    let answer = send(
        Method::GET,
        &url,
        &[("traceparent", &unsampled), ("ContactCenterId", "t")],
        "",
    )
    .await;
    assert_eq!(answer.status, 200);
    // The fill sends no client trace context; an unsampled request makes no span.
    assert_eq!(upstream.requests()[0].headers.get("traceparent"), None);
    let hit_trace = "11111111111111111111111111111111";
    for _ in 0..2 {
        let answer = send(
            Method::GET,
            &url,
            &[
                (
                    "traceparent",
                    &format!("00-{hit_trace}-2222222222222222-01"),
                ),
                ("ContactCenterId", "t"),
            ],
            "",
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    let spans = receiver.wait_for(hit_trace, 6).await;
    let mut tree = String::new();
    render(&spans, &hex_decode("2222222222222222"), 0, &mut tree);
    println!("span tree of two hits:\n{tree}");
    let hits = spans.iter().filter(|s| s.name == "cache hit").count();
    assert_eq!(hits, 2, "{tree}");
    assert!(spans
        .iter()
        .any(|s| attr(s, "csgate.post_filter.memoised").as_deref() == Some("true")));
    assert!(receiver
        .spans
        .lock()
        .expect("spans")
        .iter()
        .all(|(_, s)| hex(&s.trace_id) != TRACE_ID));
    gw.stop().await;
}

/// A collector that accepts connections and never answers: requests are served at
/// their usual speed, and what cannot be queued is dropped and counted.
#[tokio::test]
async fn a_stuck_collector_never_blocks_requests_and_drops_are_counted() {
    let black_hole = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = black_hole.local_addr().expect("addr");
    let held: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();
    let holding = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = black_hole.accept().await {
            holding.lock().expect("held").push(stream);
        }
    });
    let upstream = FakeUpstream::start(Reply::json(200, SERVICES)).await;
    let toml = tracing_toml(
        &format!("http://{addr}/v1/traces"),
        "max_queue = 8\nbatch = 4\nexport_timeout = \"30s\"\n",
    );
    let gw = start_gateway(&toml, &[upstream.url()]).await;
    let url = gw.url(&format!("/genesys/1/cs/services/anonymous/{KEY}"));
    let started = Instant::now();
    for _ in 0..50 {
        let answer = send(Method::GET, &url, &[("ContactCenterId", "t")], "").await;
        assert_eq!(answer.status, 200);
    }
    // 50 requests against a local fake: far under a second each even on a loaded CI
    // machine; an exporter that blocked would hold them for export_timeout (30 s).
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let trace = gw.gateway.metrics().trace().clone();
    wait_until("spans dropped for a full queue", || {
        trace.dropped_queue_full.get() > 0
    })
    .await;
    assert_eq!(trace.exported.get(), 0);
    let metrics = get(&gw.admin_url("/metrics")).await.text();
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("csgate_trace_spans_dropped_total{reason=\"queue_full\"}"))
        .expect("the dropped counter is exported");
    let count: f64 = dropped
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number");
    assert!(count > 0.0, "{dropped}");
    assert!(metrics.contains("csgate_trace_spans_exported_total 0"));
    gw.stop().await;
}

/// Off (the default), the upstream gets the caller's `traceparent` unchanged, as before.
#[tokio::test]
async fn with_tracing_off_the_callers_traceparent_goes_upstream_unchanged() {
    let upstream = FakeUpstream::start(Reply::json(200, SERVICES)).await;
    let gw = start_gateway("", &[upstream.url()]).await;
    assert!(gw.gateway.tracer().is_none());
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let answer = send(
        Method::GET,
        &gw.url(&format!("/genesys/1/cs/customers/{CUSTOMER}/services")),
        &[("traceparent", &traceparent), ("ContactCenterId", "t")],
        "",
    )
    .await;
    assert_eq!(answer.status, 200);
    let sent = upstream.requests();
    assert_eq!(
        sent[0]
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
        Some(traceparent.as_str())
    );
    gw.stop().await;
}

/// A collector that refuses connections: the batch is dropped and counted as
/// `export_failed`, and the request was answered as usual.
#[tokio::test]
async fn a_refused_export_is_dropped_and_counted() {
    let upstream = FakeUpstream::start(Reply::json(200, SERVICES)).await;
    let collector = refused_url().await;
    let toml = tracing_toml(&format!("{collector}/v1/traces"), "");
    let gw = start_gateway(&toml, &[upstream.url()]).await;
    let url = gw.url(&format!("/genesys/1/cs/services/anonymous/{KEY}"));
    let answer = send(Method::GET, &url, &[("ContactCenterId", "t")], "").await;
    assert_eq!(answer.status, 200);
    let trace = gw.gateway.metrics().trace().clone();
    wait_until("a failed export counted", || {
        trace.dropped_export_failed.get() >= 3
    })
    .await;
    assert_eq!(trace.exported.get(), 0);
    assert_eq!(trace.dropped_queue_full.get(), 0);
    gw.stop().await;
}

/// In a fleet, a miss's Redis work is in the tree: a `fleet` span (the shared tier's
/// entry, lock and wait) under the cache span, and `redis store` under it once the
/// upstream answered. Skipped without `redis-server` (CI requires it).
#[tokio::test]
async fn a_fleet_miss_shows_its_redis_work() {
    let Some(redis) = redis_harness::RedisServer::start("a_fleet_miss_shows_its_redis_work") else {
        return;
    };
    let receiver = Receiver::start().await;
    let upstream = FakeUpstream::start(Reply::json(200, SERVICES)).await;
    let toml = format!(
        "{}[cluster]\nredis_url = \"{}\"\nop_timeout = \"2s\"\n",
        tracing_toml(&receiver.url, ""),
        redis.url()
    );
    let gw = start_gateway(&toml, &[upstream.url()]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Subscribed and confirmed (its own heartbeat came back): only then does a miss
    // use the shared tier.
    while get(&gw.admin_url("/healthz")).await.json()["cluster"]["degraded"] != false {
        assert!(Instant::now() < deadline, "the replica never subscribed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fleet_trace = "33333333333333333333333333333333";
    let answer = send(
        Method::GET,
        &gw.url(&format!("/genesys/1/cs/services/anonymous/{KEY}")),
        &[
            (
                "traceparent",
                &format!("00-{fleet_trace}-4444444444444444-01"),
            ),
            ("ContactCenterId", "tenant-1"),
        ],
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let spans = receiver.wait_for(fleet_trace, 6).await;
    let mut tree = String::new();
    render(&spans, &hex_decode("4444444444444444"), 0, &mut tree);
    println!("span tree of a fleet miss:\n{tree}");
    let named = |name: &str| -> &Span {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in\n{tree}"))
    };
    let cache = named("cache miss");
    let fleet = named("fleet");
    let store = named("redis store");
    assert_eq!(fleet.parent_span_id, cache.span_id, "{tree}");
    assert_eq!(store.parent_span_id, fleet.span_id, "{tree}");
    assert_eq!(attr(fleet, "db.system.name").as_deref(), Some("redis"));
    assert_eq!(
        attr(fleet, "csgate.fleet.result").as_deref(),
        Some("fetched")
    );
    assert_eq!(named("GET").parent_span_id, cache.span_id, "{tree}");
    gw.stop().await;
}

/// Spans still waiting for their batch when the gateway stops are sent before it exits.
#[tokio::test]
async fn shutdown_sends_the_spans_still_queued() {
    let receiver = Receiver::start().await;
    let upstream = FakeUpstream::start(Reply::json(200, SERVICES)).await;
    let toml = format!(
        "[tracing]\nenabled = true\nendpoint = \"{}\"\nexport_interval = \"1h\"\n",
        receiver.url
    );
    let gw = start_gateway(&toml, &[upstream.url()]).await;
    let shutdown_trace = "55555555555555555555555555555555";
    let answer = send(
        Method::GET,
        &gw.url(&format!("/genesys/1/cs/services/anonymous/{KEY}")),
        &[
            (
                "traceparent",
                &format!("00-{shutdown_trace}-6666666666666666-01"),
            ),
            ("ContactCenterId", "t"),
        ],
        "",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(receiver.spans.lock().expect("spans").is_empty());
    gw.stop().await;
    let spans = receiver.wait_for(shutdown_trace, 4).await;
    assert!(spans.iter().any(|s| s.kind == 2));
}
