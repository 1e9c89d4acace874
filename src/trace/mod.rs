//! OpenTelemetry traces: spans made by the pipeline's stages, exported over
//! OTLP/HTTP (protobuf) in batches.
//!
//! - [`config`]: `[tracing]` and the standard `OTEL_*` variables.
//! - [`export`]: the bounded queue and the batch exporter (never blocks a request;
//!   what it cannot queue or send is counted as dropped).
//! - [`proto`]: the OTLP messages, as prost structs.
//!
//! A small recorder rather than the OpenTelemetry SDK: with tracing off the gateway
//! holds no [`Tracer`], and every span call site is one `Option` test, so the hit
//! path pays a few branches (bench/results/otlp-overhead-*.md has the count). With
//! tracing on, a span is an id, two clock readings and a few attributes, handed to the
//! exporter's queue when it ends (when it is dropped, so an early return or a
//! cancelled request still ends its spans).
//!
//! What spans never carry: contact keys, customer ids, paths or queries (which hold
//! them). `http.route` is the route's *name*.

pub mod config;
pub mod export;
pub mod proto;

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderValue};

pub use config::{OtelEnv, RawTracing, Sampler, TracingConfig};
pub use export::TraceCounters;

use crate::httputil;
use config::Root;

/// The W3C trace context of one span: what a `traceparent` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl SpanContext {
    /// Reads a version-00 `traceparent` (W3C Trace Context §3.2); `None` for anything
    /// malformed, all-zero ids included, which then starts a new trace.
    pub fn from_traceparent(value: &HeaderValue) -> Option<SpanContext> {
        let bytes = value.as_bytes();
        // version "-" trace-id "-" parent-id "-" flags; a later version may append
        // fields after the flags, version 00 may not.
        if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let version = hex_byte(&bytes[0..2])?;
        if version == 0xff || (version == 0 && bytes.len() != 55) {
            return None;
        }
        if bytes.len() > 55 && bytes[55] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&bytes[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, out) in span_id.iter_mut().enumerate() {
            *out = hex_byte(&bytes[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&bytes[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(SpanContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> HeaderValue {
        let mut text = [0u8; 55];
        text[..3].copy_from_slice(b"00-");
        write_hex(&mut text[3..35], &self.trace_id);
        text[35] = b'-';
        write_hex(&mut text[36..52], &self.span_id);
        text[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        HeaderValue::from_bytes(&text).expect("hex digits and dashes are a header value")
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    // Lowercase only (§3.2.2.1).
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// An attribute value. Keys are `&'static str`: attribute names are csgate's own.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Value {
        Value::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(Cow::Owned(s))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

/// OTLP's `SpanKind`, the three csgate makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// A finished span, as queued for export.
#[derive(Clone, Debug)]
pub struct SpanData {
    pub context: SpanContext,
    pub parent: Option<[u8; 8]>,
    pub name: Cow<'static, str>,
    pub kind: Kind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// `Some(message)`: the span's status is ERROR.
    pub error: Option<Cow<'static, str>>,
}

/// The tracing side of the gateway: the sampler and the exporter's queue. Cheap to
/// clone; one per process, shared by every gateway a reload builds.
#[derive(Clone)]
pub struct Tracer {
    inner: Arc<TracerInner>,
}

struct TracerInner {
    sampler: Sampler,
    queue: export::Queue,
    /// Span and trace ids: a per-process random seed (foldhash) over a counter. Ids
    /// must be unique and unpredictable enough not to collide, not secret.
    ids: foldhash::quality::RandomState,
    next: AtomicU64,
}

impl Tracer {
    /// Starts the exporter (a task on the current runtime) when `config.enabled`.
    pub fn start(config: &TracingConfig, counters: TraceCounters) -> Option<Tracer> {
        if !config.enabled {
            return None;
        }
        let queue = export::start(config, counters);
        Some(Tracer {
            inner: Arc::new(TracerInner {
                sampler: config.sampler,
                queue,
                ids: foldhash::quality::RandomState::default(),
                next: AtomicU64::new(1),
            }),
        })
    }

    /// Sends every span ended so far, waiting at most `within` (shutdown: the spans of
    /// the last requests would otherwise wait for the next batch that never comes).
    pub async fn flush(&self, within: std::time::Duration) {
        let _ = tokio::time::timeout(within, self.inner.queue.flush()).await;
    }

    fn random_u64(&self) -> u64 {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        // Never zero: an all-zero id is invalid.
        self.inner.ids.hash_one(n).max(1)
    }

    fn span_id(&self) -> [u8; 8] {
        self.random_u64().to_be_bytes()
    }

    fn trace_id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.random_u64().to_be_bytes());
        id[8..].copy_from_slice(&self.random_u64().to_be_bytes());
        id
    }

    /// The server span of a request: continues the caller's `traceparent` (or starts
    /// a trace), `None` when the sampler says no. A request that is not sampled keeps
    /// today's behaviour: its `traceparent`, if any, goes upstream unchanged.
    pub fn server_span(&self, headers: &HeaderMap, name: &'static str) -> Option<Span> {
        let parent = headers
            .get(&httputil::TRACEPARENT)
            .and_then(SpanContext::from_traceparent);
        let trace_id = parent.map_or_else(|| self.trace_id(), |p| p.trace_id);
        if !self.sampled(parent.as_ref(), &trace_id) {
            return None;
        }
        let context = SpanContext {
            trace_id,
            span_id: self.span_id(),
            sampled: true,
        };
        Some(Span::new(
            self.clone(),
            context,
            parent.map(|p| p.span_id),
            Kind::Server,
            Cow::Borrowed(name),
        ))
    }

    fn sampled(&self, parent: Option<&SpanContext>, trace_id: &[u8; 16]) -> bool {
        let root = match (self.inner.sampler, parent) {
            (Sampler::ParentBased(_), Some(parent)) => return parent.sampled,
            (Sampler::ParentBased(root), None) => root,
            (Sampler::AlwaysOn, _) => Root::AlwaysOn,
            (Sampler::AlwaysOff, _) => Root::AlwaysOff,
            (Sampler::TraceIdRatio(ratio), _) => Root::TraceIdRatio(ratio),
        };
        match root {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::TraceIdRatio(ratio) => ratio_sampled(ratio, trace_id),
        }
    }
}

/// The OpenTelemetry SDK's `TraceIdRatioBased`: the trace id's low 63 bits below
/// `ratio` of their range, so every service with the same ratio agrees on a trace.
fn ratio_sampled(ratio: f64, trace_id: &[u8; 16]) -> bool {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let bound = (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64;
    (u64::from_be_bytes(low) >> 1) < bound
}

fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A span being recorded. Ends, and is queued for export, when dropped.
pub struct Span {
    tracer: Tracer,
    /// `Some` until the span ends (in `drop`).
    data: Option<Box<SpanData>>,
}

/// What a child span needs of its parent, owned: handed to work that outlives the
/// borrow of the parent (the cache's fill task).
#[derive(Clone)]
pub struct Parent {
    tracer: Tracer,
    context: SpanContext,
}

impl Parent {
    /// A child span, started now.
    pub fn child(&self, name: &'static str, kind: Kind) -> Span {
        let context = SpanContext {
            span_id: self.tracer.span_id(),
            ..self.context
        };
        Span::new(
            self.tracer.clone(),
            context,
            Some(self.context.span_id),
            kind,
            Cow::Borrowed(name),
        )
    }
}

impl Span {
    fn new(
        tracer: Tracer,
        context: SpanContext,
        parent: Option<[u8; 8]>,
        kind: Kind,
        name: Cow<'static, str>,
    ) -> Span {
        Span {
            tracer,
            data: Some(Box::new(SpanData {
                context,
                parent,
                name,
                kind,
                start_unix_nanos: now_unix_nanos(),
                end_unix_nanos: 0,
                attributes: Vec::with_capacity(8),
                error: None,
            })),
        }
    }

    /// A child span, started now.
    pub fn child(&self, name: &'static str, kind: Kind) -> Span {
        self.parent().child(name, kind)
    }

    /// This span as the parent of spans made elsewhere.
    pub fn parent(&self) -> Parent {
        Parent {
            tracer: self.tracer.clone(),
            context: self.context(),
        }
    }

    pub fn context(&self) -> SpanContext {
        self.data.as_ref().map_or(
            SpanContext {
                trace_id: [0; 16],
                span_id: [0; 8],
                sampled: false,
            },
            |d| d.context,
        )
    }

    /// This span's `traceparent`, for a request it sends.
    pub fn traceparent(&self) -> HeaderValue {
        self.context().traceparent()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(data) = &mut self.data {
            data.attributes.push((key, value.into()));
        }
    }

    pub fn set_name(&mut self, name: impl Into<Cow<'static, str>>) {
        if let Some(data) = &mut self.data {
            data.name = name.into();
        }
    }

    /// Marks the span failed; `message` is csgate's own text (an error kind), never a
    /// detail that could quote a request.
    pub fn set_error(&mut self, message: impl Into<Cow<'static, str>>) {
        if let Some(data) = &mut self.data {
            data.error = Some(message.into());
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(mut data) = self.data.take() {
            data.end_unix_nanos = now_unix_nanos();
            self.tracer.inner.queue.push(data);
        }
    }
}

/// A child of `parent`, when there is one: the call sites' one `Option` test.
pub fn child(parent: Option<&Span>, name: &'static str, kind: Kind) -> Option<Span> {
    parent.map(|p| p.child(name, kind))
}

/// The label of `csgate_trace_spans_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DropReason {
    /// `queue_full` (`[tracing] max_queue` spans were waiting) or `export_failed`
    /// (the collector refused the batch or did not answer in time).
    reason: &'static str,
}

impl TraceCounters {
    /// The exporter's families (`csgate_trace_spans_*`), registered in `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> TraceCounters {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;

        let dropped = Family::<DropReason, Counter>::default();
        // Clones of the family's own counters: the exporter increments what is exposed.
        let trace = TraceCounters {
            exported: Counter::default(),
            dropped_queue_full: dropped.get_or_create_owned(&DropReason {
                reason: "queue_full",
            }),
            dropped_export_failed: dropped.get_or_create_owned(&DropReason {
                reason: "export_failed",
            }),
        };
        registry.register(
            "csgate_trace_spans_exported",
            "Spans the OTLP collector accepted",
            trace.exported.clone(),
        );
        registry.register(
            "csgate_trace_spans_dropped",
            "Spans not exported: the queue was full, or the collector refused the batch or \
             did not answer in time",
            dropped,
        );
        trace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_refuses_malformed_values() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context =
            SpanContext::from_traceparent(&HeaderValue::from_static(text)).expect("valid");
        assert!(context.sampled);
        assert_eq!(
            context.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(context.traceparent(), text);
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        let context =
            SpanContext::from_traceparent(&HeaderValue::from_static(later)).expect("valid");
        assert!(!context.sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                SpanContext::from_traceparent(&HeaderValue::from_static(bad)),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn ratio_sampling_follows_the_low_bits_of_the_trace_id() {
        let mut id = [0u8; 16];
        assert!(ratio_sampled(0.5, &id));
        assert!(!ratio_sampled(0.0, &id));
        id[8] = 0xff;
        assert!(!ratio_sampled(0.5, &id));
        assert!(ratio_sampled(1.0, &id));
    }
}
