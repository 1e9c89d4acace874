//! The exporter: a bounded queue of finished spans and one task that sends them in
//! batches to the OTLP/HTTP endpoint (`POST`, `application/x-protobuf`).
//!
//! A request never waits on it: a span is queued with an atomic counter check and an
//! unbounded channel send; past `max_queue` spans waiting it is dropped and counted
//! (`csgate_trace_spans_dropped_total{reason="queue_full"}`). A batch the collector
//! refuses, or that times out, is dropped and counted too (`reason="export_failed"`):
//! spans are telemetry, not worth retrying at the cost of memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::proto;
use super::{SpanData, TracingConfig, Value};

/// The exporter's metrics (`csgate_trace_spans_*`, registered by
/// [`TraceCounters::register`]).
#[derive(Clone, Debug, Default)]
pub struct TraceCounters {
    /// Spans the collector accepted.
    pub exported: Counter,
    /// Spans dropped because `max_queue` were already waiting.
    pub dropped_queue_full: Counter,
    /// Spans in a batch the collector refused or did not answer in time.
    pub dropped_export_failed: Counter,
}

/// The sending side, held by the [`super::Tracer`].
pub(super) struct Queue {
    tx: mpsc::UnboundedSender<Box<SpanData>>,
    /// Spans sent and not yet taken by the exporter: the queue's bound is on this.
    waiting: Arc<AtomicUsize>,
    max: usize,
    counters: TraceCounters,
    flushes: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl Queue {
    /// Sends every span queued so far; resolves when that is done (or the exporter is
    /// gone).
    pub(super) async fn flush(&self) {
        let (done, sent) = oneshot::channel();
        if self.flushes.send(done).is_ok() {
            let _ = sent.await;
        }
    }

    /// Queues a finished span, or drops and counts it. Never waits.
    pub(super) fn push(&self, span: Box<SpanData>) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.counters.dropped_queue_full.inc();
            return;
        }
        if self.tx.send(span).is_err() {
            // The exporter is gone (the runtime is shutting down).
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.counters.dropped_queue_full.inc();
        }
    }
}

/// Starts the export task on the current runtime.
pub(super) fn start(config: &TracingConfig, counters: TraceCounters) -> Queue {
    let (tx, rx) = mpsc::unbounded_channel();
    let (flush_tx, flushes) = mpsc::unbounded_channel();
    let waiting = Arc::new(AtomicUsize::new(0));
    let exporter = Exporter {
        rx,
        waiting: waiting.clone(),
        counters: counters.clone(),
        client: client(config.export_timeout),
        endpoint: config
            .endpoint
            .as_str()
            .parse()
            .unwrap_or_else(|_| Uri::from_static("http://127.0.0.1:4318/v1/traces")),
        headers: config.headers.clone(),
        resource: resource(&config.service_name),
        batch: config.batch,
        interval: config.export_interval,
        timeout: config.export_timeout,
        flushes,
        failing: false,
    };
    tokio::spawn(exporter.run());
    Queue {
        tx,
        waiting,
        max: config.max_queue,
        counters,
        flushes: flush_tx,
    }
}

struct Exporter {
    rx: mpsc::UnboundedReceiver<Box<SpanData>>,
    waiting: Arc<AtomicUsize>,
    counters: TraceCounters,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    endpoint: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    resource: proto::Resource,
    batch: usize,
    interval: Duration,
    timeout: Duration,
    /// Flush requests ([`Queue::flush`]), each answered once what was queued is sent.
    flushes: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    /// Logged when exports start failing and when they work again, not per batch: a
    /// collector that is away would otherwise write a line every `export_interval`.
    failing: bool,
}

impl Exporter {
    /// Collects up to `batch` spans, or what came within `interval` of the first, sends
    /// them, repeats; ends when every sender is gone. A flush request cuts the wait
    /// short, sends everything queued, and is answered.
    async fn run(mut self) {
        let mut spans = Vec::with_capacity(self.batch);
        loop {
            let mut flush = None;
            tokio::select! {
                received = self.rx.recv_many(&mut spans, self.batch) => {
                    if received == 0 {
                        return;
                    }
                }
                Some(done) = self.flushes.recv() => flush = Some(done),
            }
            let due = tokio::time::Instant::now() + self.interval;
            while flush.is_none() && spans.len() < self.batch {
                let more = self.batch - spans.len();
                tokio::select! {
                    received = tokio::time::timeout_at(due, self.rx.recv_many(&mut spans, more)) => {
                        if !matches!(received, Ok(n) if n > 0) {
                            break;
                        }
                    }
                    Some(done) = self.flushes.recv() => flush = Some(done),
                }
            }
            self.export(&mut spans).await;
            if let Some(done) = flush {
                // Everything queued before the request, in batches.
                while let Ok(span) = self.rx.try_recv() {
                    spans.push(span);
                    if spans.len() == self.batch {
                        self.export(&mut spans).await;
                    }
                }
                self.export(&mut spans).await;
                let _ = done.send(());
            }
        }
    }

    /// Sends `spans` (emptying it) as one request, and counts the outcome.
    // The spans come boxed through the channel (a pointer per send); unboxing them here
    // would only copy each once more.
    #[allow(clippy::vec_box)]
    async fn export(&mut self, spans: &mut Vec<Box<SpanData>>) {
        if spans.is_empty() {
            return;
        }
        self.waiting.fetch_sub(spans.len(), Ordering::AcqRel);
        let count = spans.len() as u64;
        let body = encode(&self.resource, spans.drain(..));
        let sent = match tokio::time::timeout(self.timeout, self.send(body)).await {
            Ok(sent) => sent,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match sent {
            Ok(()) => {
                self.counters.exported.inc_by(count);
                if std::mem::take(&mut self.failing) {
                    tracing::info!(endpoint = %self.endpoint, "trace export works again");
                }
            }
            Err(cause) => {
                self.counters.dropped_export_failed.inc_by(count);
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        %cause,
                        "trace export failed; spans are dropped (counted in \
                         csgate_trace_spans_dropped_total) until it works again"
                    );
                }
            }
        }
    }

    async fn send(&self, body: Bytes) -> Result<(), String> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.endpoint.clone();
        let headers = request.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        for (name, value) in &self.headers {
            headers.insert(name, value.clone());
        }
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // Read the answer to its end, so the connection goes back to the pool.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        }
    }
}

/// A pooled client for the collector: plain HTTP, or HTTPS with the platform's trust
/// store.
fn client(timeout: Duration) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A certificate the platform ships that rustls cannot read is skipped.
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

fn resource(service_name: &str) -> proto::Resource {
    proto::Resource {
        attributes: vec![
            key_value("service.name", &Value::Str(service_name.to_owned().into())),
            key_value("service.version", &Value::from(env!("CARGO_PKG_VERSION"))),
            key_value("telemetry.sdk.name", &Value::from("csgate")),
            key_value("telemetry.sdk.language", &Value::from("rust")),
        ],
    }
}

fn key_value(key: &str, value: &Value) -> proto::KeyValue {
    use proto::any_value::Value as V;
    let value = match value {
        Value::Str(s) => V::StringValue(s.to_string()),
        Value::Int(n) => V::IntValue(*n),
        Value::Bool(b) => V::BoolValue(*b),
    };
    proto::KeyValue {
        key: key.to_owned(),
        value: Some(proto::AnyValue { value: Some(value) }),
    }
}

/// One `ExportTraceServiceRequest` holding `spans`, protobuf-encoded.
pub fn encode(resource: &proto::Resource, spans: impl Iterator<Item = Box<SpanData>>) -> Bytes {
    let spans = spans
        .map(|span| proto::Span {
            trace_id: span.context.trace_id.to_vec(),
            span_id: span.context.span_id.to_vec(),
            parent_span_id: span.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: span.name.to_string(),
            kind: span.kind as i32,
            start_time_unix_nano: span.start_unix_nanos,
            end_time_unix_nano: span.end_unix_nanos,
            attributes: span
                .attributes
                .iter()
                .map(|(key, value)| key_value(key, value))
                .collect(),
            status: span.error.as_ref().map(|message| proto::Status {
                message: message.to_string(),
                code: 2,
            }),
            flags: u32::from(span.context.sampled),
        })
        .collect();
    let request = proto::ExportTraceServiceRequest {
        resource_spans: vec![proto::ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![proto::ScopeSpans {
                scope: Some(proto::InstrumentationScope {
                    name: "csgate".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                }),
                spans,
            }],
        }],
    };
    Bytes::from(request.encode_to_vec())
}
