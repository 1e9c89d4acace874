//! The oracle's HTTP clients (HTTP/1.1 in two header spellings, HTTP/2 with prior
//! knowledge), the requests and answers it records, and their rendering as curl.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request as HttpRequest};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::ops::Proto;

type Pool = Client<HttpConnector, Full<Bytes>>;

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A gateway replica (index into the deployment's gateways).
    Gateway(u8),
    /// The store directly.
    Store,
}

/// One request as sent.
#[derive(Clone, Debug)]
pub struct Request {
    pub proto: Proto,
    pub target: Target,
    pub method: Method,
    /// Path and query, exactly as sent.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

/// One answer as received (`status` 0 when the exchange failed; `error` says why).
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub cache_status: Option<String>,
    pub body: Bytes,
    pub error: Option<String>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Status, cache status and body, for a report.
    pub fn show(&self) -> String {
        let mut body = String::from_utf8_lossy(&self.body).into_owned();
        if body.len() > 600 {
            let cut = (0..=600)
                .rev()
                .find(|&i| body.is_char_boundary(i))
                .unwrap_or(0);
            body.truncate(cut);
            body.push_str("...");
        }
        match (&self.error, &self.cache_status) {
            (Some(error), _) => format!("(no answer: {error})"),
            (None, Some(cache)) => format!("{} [Cache-Status: {cache}] {body}", self.status),
            (None, None) => format!("{} {body}", self.status),
        }
    }
}

/// Pooled clients for one deployment.
pub struct Clients {
    h1: Pool,
    h1_title: Pool,
    h2: Pool,
}

impl Clients {
    pub fn new() -> Clients {
        // Without TCP_NODELAY a request whose body goes out in a second write waits for
        // the peer's delayed ACK (40 ms on Linux).
        let connector = || {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            connector
        };
        let h1 = Client::builder(TokioExecutor::new()).build(connector());
        let h1_title = Client::builder(TokioExecutor::new())
            .http1_title_case_headers(true)
            .build(connector());
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector());
        Clients { h1, h1_title, h2 }
    }

    /// Sends `request` to `base` (a deployment URL) and reads the whole answer.
    pub async fn send(&self, base: &str, request: &Request) -> Answer {
        let pool = match request.proto {
            Proto::H1 => &self.h1,
            Proto::H1Title => &self.h1_title,
            Proto::H2 => &self.h2,
        };
        let failed = |error: String| Answer {
            status: 0,
            cache_status: None,
            body: Bytes::new(),
            error: Some(error),
        };
        let mut outgoing = HttpRequest::new(Full::new(Bytes::from(
            request.body.clone().unwrap_or_default(),
        )));
        *outgoing.method_mut() = request.method.clone();
        match format!("{base}{}", request.path).parse() {
            Ok(uri) => *outgoing.uri_mut() = uri,
            Err(e) => return failed(format!("unusable URI: {e}")),
        }
        for (name, value) in &request.headers {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                return failed(format!("unusable header {name}: {value}"));
            };
            outgoing.headers_mut().append(name, value);
        }
        let response = match pool.request(outgoing).await {
            Ok(response) => response,
            Err(e) => return failed(format!("{e:?}")),
        };
        let (parts, body) = response.into_parts();
        match body.collect().await {
            Ok(body) => Answer {
                status: parts.status.as_u16(),
                cache_status: parts
                    .headers
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: body.to_bytes(),
                error: None,
            },
            Err(e) => failed(format!("body: {e}")),
        }
    }
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The request as a curl command line, against `$CSGATE` (the gateway, replica `$CSGATE`,
/// `$CSGATE_1`, ...) or `$STORE`.
pub fn curl(request: &Request) -> String {
    let mut line = String::from("curl -sS -i --path-as-is");
    if request.proto == Proto::H2 {
        line.push_str(" --http2-prior-knowledge");
    }
    if request.method != Method::GET {
        line.push_str(&format!(" -X {}", request.method));
    }
    for (name, value) in &request.headers {
        let name = match request.proto {
            Proto::H1Title => title_case(name),
            _ => name.clone(),
        };
        line.push_str(&format!(" -H {}", quote(&format!("{name}: {value}"))));
    }
    if let Some(body) = &request.body {
        line.push_str(&format!(" --data-binary {}", quote(body)));
    }
    let base = match request.target {
        Target::Gateway(0) => "$CSGATE".to_owned(),
        Target::Gateway(n) => format!("$CSGATE_{n}"),
        Target::Store => "$STORE".to_owned(),
    };
    line.push_str(&format!(" \"{base}\"{}", quote(&request.path)));
    line
}

/// How hyper's title-case option writes a header name (`contactcenterid` →
/// `Contactcenterid`).
fn title_case(name: &str) -> String {
    let mut out = String::new();
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '-';
    }
    out
}
