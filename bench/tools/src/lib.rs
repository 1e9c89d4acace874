//! Shared pieces of the csgate benchmark tools.
//!
//! # Layout
//! - [`Args`]: a tiny `--flag value` parser (no clap: these tools must build fast on a
//!   busy machine).
//! - [`body`]: the realistic Service[] answers the fake upstream serves.
//! - [`http_get`]: one GET over a fresh or reused HTTP/1.1 connection (warming, priming).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// `--name value` pairs and bare `--flag`s, in order; repeated names keep every value.
pub struct Args {
    values: HashMap<String, Vec<String>>,
    pub positional: Vec<String>,
}

impl Args {
    pub fn parse() -> Args {
        Args::from(std::env::args().skip(1))
    }

    pub fn from(raw: impl IntoIterator<Item = String>) -> Args {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        let mut positional = Vec::new();
        let mut raw = raw.into_iter().peekable();
        while let Some(arg) = raw.next() {
            if let Some(name) = arg.strip_prefix("--") {
                let value = match raw.peek() {
                    Some(next) if !next.starts_with("--") => raw.next().unwrap_or_default(),
                    _ => String::from("true"),
                };
                values.entry(name.to_owned()).or_default().push(value);
            } else {
                positional.push(arg);
            }
        }
        Args { values, positional }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    pub fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    /// A required value; exits with a usage message naming the flag.
    pub fn req(&self, name: &str) -> &str {
        self.get(name).unwrap_or_else(|| {
            eprintln!("missing --{name}");
            std::process::exit(2)
        })
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.get(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{name}: not a number: {v}");
                std::process::exit(2)
            }),
        }
    }

    /// `--header "Name: value"` pairs.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.all("header")
            .iter()
            .filter_map(|h| h.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect()
    }
}

/// The realistic answers of the fake upstream: a few services with states, tasks and
/// attached data (about 2 KB), in the shapes real backends produce (timestamps with and
/// without `Z`, 64-bit ids, an unknown field).
pub mod body {
    /// For `/services/anonymous/...`: three anonymous services (one active with states
    /// and tasks, one completed, one active and small) and one that an association
    /// gave a `customer_id`, which the gateway must drop.
    pub const ANONYMOUS: &str = r#"[{"service_id":9007199254740993,"service_type":1,"contact_key":"bench","est_duration":86400,"started":{"timestamp":"2024-03-01T10:00:00.000Z","session_id":"S-7781","interaction_id":"0001KaCB5PJC000A","application_type":"IVR","application_id":120,"resource_type":"channel","resource_id":301,"media_type":"voice"},"active_states":[{"state_id":3,"state_type":8,"started":{"timestamp":"2024-03-01T10:02:11.410Z","session_id":"S-7781","media_type":"voice"}}],"completed_states":[{"state_id":1,"state_type":1,"started":{"timestamp":"2024-03-01T10:00:00.500Z"},"completed":{"timestamp":"2024-03-01T10:01:02.000Z","disposition":1}},{"state_id":2,"state_type":4,"started":{"timestamp":"2024-03-01T10:01:02.010Z"},"completed":{"timestamp":"2024-03-01T10:02:11.400Z","disposition":1}}],"active_tasks":[{"task_id":11,"task_type":3,"state_id":3,"started":{"timestamp":"2024-03-01T10:02:12.000Z"}}],"completed_tasks":[{"task_id":10,"task_type":1,"state_id":1,"started":{"timestamp":"2024-03-01T10:00:01.000Z"},"completed":{"timestamp":"2024-03-01T10:00:59.000Z"}}],"segment":"gold","score":85,"language":"en-US","ivr_path":["main","billing","agent"],"x_vendor":{"crm":"sf","ticket":"INC0042"}},{"service_id":4692834,"service_type":2,"contact_key":"bench","est_duration":3600,"duration":421000,"started":{"timestamp":"2024-02-10T09:15:20.157","session_id":"S-6602","media_type":"chat"},"completed":{"timestamp":"2024-02-10T09:22:21.157","disposition":2,"disposition_desc":"resolved in self-service"},"completed_states":[{"state_id":1,"state_type":9,"started":{"timestamp":"2024-02-10T09:15:21.000Z"},"completed":{"timestamp":"2024-02-10T09:22:20.000Z","disposition":2}}],"completed_tasks":[{"task_id":5,"task_type":2,"started":{"timestamp":"2024-02-10T09:16:00.000Z"},"completed":{"timestamp":"2024-02-10T09:20:00.000Z"}}],"segment":"silver","score":"72","language":"fr-FR"},{"service_id":"383-f9a62aec-e6f2-45cb-aa01-0d9404f905bd","service_type":3,"contact_key":"bench","est_duration":600,"started":{"timestamp":"2024-03-05T16:40:00.000+01:00","media_type":"email"},"active_states":[{"state_id":1,"state_type":2,"started":{"timestamp":"2024-03-05T15:40:01.000Z"}}],"segment":"gold"},{"service_id":5550001,"service_type":1,"customer_id":"ABC1234","contact_key":"bench","started":{"timestamp":"2024-03-02T08:00:00.000Z"},"segment":"gold"}]"#;

    /// For every other path (customer routes): the same services owned by a customer.
    pub const CUSTOMER: &str = r#"[{"service_id":9007199254740993,"service_type":1,"customer_id":"ABC1234","est_duration":86400,"started":{"timestamp":"2024-03-01T10:00:00.000Z","session_id":"S-7781","interaction_id":"0001KaCB5PJC000A","application_type":"IVR","application_id":120,"resource_type":"channel","resource_id":301,"media_type":"voice"},"active_states":[{"state_id":3,"state_type":8,"started":{"timestamp":"2024-03-01T10:02:11.410Z","session_id":"S-7781","media_type":"voice"}}],"completed_states":[{"state_id":1,"state_type":1,"started":{"timestamp":"2024-03-01T10:00:00.500Z"},"completed":{"timestamp":"2024-03-01T10:01:02.000Z","disposition":1}},{"state_id":2,"state_type":4,"started":{"timestamp":"2024-03-01T10:01:02.010Z"},"completed":{"timestamp":"2024-03-01T10:02:11.400Z","disposition":1}}],"active_tasks":[{"task_id":11,"task_type":3,"state_id":3,"started":{"timestamp":"2024-03-01T10:02:12.000Z"}}],"completed_tasks":[{"task_id":10,"task_type":1,"state_id":1,"started":{"timestamp":"2024-03-01T10:00:01.000Z"},"completed":{"timestamp":"2024-03-01T10:00:59.000Z"}}],"segment":"gold","score":85,"language":"en-US","ivr_path":["main","billing","agent"],"x_vendor":{"crm":"sf","ticket":"INC0042"}},{"service_id":4692834,"service_type":2,"customer_id":"ABC1234","est_duration":3600,"duration":421000,"started":{"timestamp":"2024-02-10T09:15:20.157","session_id":"S-6602","media_type":"chat"},"completed":{"timestamp":"2024-02-10T09:22:21.157","disposition":2,"disposition_desc":"resolved in self-service"},"completed_states":[{"state_id":1,"state_type":9,"started":{"timestamp":"2024-02-10T09:15:21.000Z"},"completed":{"timestamp":"2024-02-10T09:22:20.000Z","disposition":2}}],"completed_tasks":[{"task_id":5,"task_type":2,"started":{"timestamp":"2024-02-10T09:16:00.000Z"},"completed":{"timestamp":"2024-02-10T09:20:00.000Z"}}],"segment":"silver","score":"72","language":"fr-FR"},{"service_id":"383-f9a62aec-e6f2-45cb-aa01-0d9404f905bd","service_type":3,"customer_id":"ABC1234","est_duration":600,"started":{"timestamp":"2024-03-05T16:40:00.000+01:00","media_type":"email"},"active_states":[{"state_id":1,"state_type":2,"started":{"timestamp":"2024-03-05T15:40:01.000Z"}}],"segment":"gold"}]"#;

    /// The answer for a request path.
    pub fn for_path(path: &str) -> &'static str {
        if path.contains("/services/anonymous/") {
            ANONYMOUS
        } else {
            CUSTOMER
        }
    }

    /// A large customer answer: `count` services cycled from [`CUSTOMER`]'s three, each
    /// with its own `service_id` (50 services are about 40 KB).
    pub fn large(count: usize) -> String {
        let services = split_services(CUSTOMER);
        let mut out = String::from("[");
        for i in 0..count {
            if i > 0 {
                out.push(',');
            }
            let service = services[i % services.len()];
            let rest = service
                .strip_prefix(r#"{"service_id":"#)
                .and_then(|r| r.split_once(','))
                .map(|(_, rest)| rest)
                .expect("every CUSTOMER service starts with its service_id");
            out.push_str(&format!(r#"{{"service_id":{},{rest}"#, 1_000_000 + i));
        }
        out.push(']');
        out
    }

    /// One customer service whose attached data `x_deep` nests `levels` objects: the
    /// gateway never looks inside attached data, so it must pass through unchanged.
    pub fn deep(levels: usize) -> String {
        format!(
            r#"[{{"service_id":77,"service_type":1,"customer_id":"ABC1234","started":{{"timestamp":"2024-03-01T10:00:00.000Z"}},"x_deep":{}1{}}}]"#,
            r#"{"d":"#.repeat(levels),
            "}".repeat(levels)
        )
    }

    /// The top-level objects of a JSON array of objects (no strings contain braces here
    /// that are not balanced; quoted text is skipped anyway).
    fn split_services(array: &str) -> Vec<&str> {
        let bytes = array.as_bytes();
        let (mut depth, mut start, mut in_string, mut escaped) = (0usize, 0usize, false, false);
        let mut out = Vec::new();
        for (i, &b) in bytes.iter().enumerate() {
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' => {
                    if depth == 0 {
                        start = i;
                    }
                    depth += 1;
                }
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        out.push(&array[start..=i]);
                    }
                }
                _ => {}
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn large_and_deep_answers_are_json_of_the_advertised_shape() {
            let large: serde_json::Value = serde_json::from_str(&super::large(50)).unwrap();
            let services = large.as_array().unwrap();
            assert_eq!(services.len(), 50);
            assert!((35_000..45_000).contains(&super::large(50).len()));
            let ids: std::collections::HashSet<_> =
                services.iter().map(|s| s["service_id"].clone()).collect();
            assert_eq!(ids.len(), 50);
            let deep = super::deep(1000);
            assert_eq!(deep.matches(r#"{"d":"#).count(), 1000);
            assert_eq!(deep.matches('{').count(), deep.matches('}').count());
        }
    }
}

/// An HTTP/1.1 connection to `addr` (`host:port`).
pub async fn connect(addr: &str) -> std::io::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// GETs `path` on `sender`, returning status and body.
pub async fn http_get(
    sender: &mut SendRequest<Empty<Bytes>>,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let mut builder = http::Request::get(path).header("host", authority);
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let request = builder.body(Empty::new()).map_err(|e| e.to_string())?;
    let fut = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| "timeout".to_owned())?
}

/// `http://host:port` → `host:port`.
pub fn authority(target: &str) -> String {
    target
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// The non-empty lines of a file.
pub fn read_lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| {
            eprintln!("cannot read {path}: {e}");
            std::process::exit(2)
        })
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}
