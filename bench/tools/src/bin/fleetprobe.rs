//! Coherence probe for a fleet of two csgate replicas (`bench/fleet.sh`). Prints one
//! JSON object on stdout.
//!
//! `fleetprobe --a URL --b URL --b-admin URL [--rounds N] [--keys K] [--window-ms W]
//!  [--header "Name: value"]...`
//!
//! Each round, on contact key `fleet-{round % K}`: B is read twice (so it holds the
//! entry: the second read should be a hit), a service is started through A, and from
//! the moment A's 2xx is received B is read back to back for W ms (at least until its
//! first fresh answer, at most 1 s). A read is *fresh* when it shows the new service.
//!
//! Reported:
//! - `fresh_us`: A's 2xx → B's first fresh answer received (one HTTP round trip to B
//!   included), p50/p99/max, measured here;
//! - `bus_delay`: the `csgate_cluster_bus_delay_seconds` histogram of B over the run
//!   (publish, i.e. the message's timestamp, to applied on B), as bucket bounds;
//! - `stale`: B's answers that did not show the write, by when they were sent: any time
//!   after A's 2xx, and after A's 2xx plus the bus delay p99 (the issue's measure,
//!   which must be 0).

use std::time::{Duration, Instant};

use bytes::Bytes;
use csgate_bench_tools::{authority, Args};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);
const LOOKUP: &str = "/genesys/1/cs/services/anonymous/";

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
    headers: Vec<(String, String)>,
}

struct Answer {
    status: u16,
    hit: bool,
    body: Bytes,
}

impl Conn {
    async fn open(target: &str, headers: &[(String, String)]) -> Conn {
        let authority = authority(target);
        let stream = TcpStream::connect(&authority).await.expect("connects");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Conn {
            sender,
            authority,
            headers: headers.to_vec(),
        }
    }

    async fn send(&mut self, method: http::Method, path: &str, body: Bytes) -> Answer {
        self.sender.ready().await.expect("connection alive");
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority);
        if !body.is_empty() {
            builder = builder.header("content-type", "application/json");
        }
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder.body(Full::new(body)).expect("a request");
        let exchange = async {
            let response = self.sender.send_request(request).await.expect("answer");
            let status = response.status().as_u16();
            let hit = response
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("; hit"));
            let body = response.into_body().collect().await.expect("body").to_bytes();
            Answer { status, hit, body }
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .expect("answered within 10 s")
    }

    /// The number of services B shows for `key`, and whether it was a hit.
    async fn services(&mut self, key: &str) -> (usize, bool) {
        let answer = self
            .send(http::Method::GET, &format!("{LOOKUP}{key}"), Bytes::new())
            .await;
        assert_eq!(answer.status, 200, "lookup: {:?}", answer.body);
        let parsed: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
        (parsed.as_array().map_or(0, Vec::len), answer.hit)
    }
}

/// Percentile `p` (0..=100) of sorted values.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `(upper bound in seconds, cumulative count)` of the bus delay histogram.
async fn bus_delay_buckets(admin: &str) -> Vec<(f64, u64)> {
    let mut conn = Conn::open(admin, &[]).await;
    let answer = conn.send(http::Method::GET, "/metrics", Bytes::new()).await;
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    text.lines()
        .filter_map(|line| line.strip_prefix("csgate_cluster_bus_delay_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound under which a fraction `q` of the observations fall.
fn bucket_quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil() as u64;
    buckets.iter().find(|(_, c)| *c >= rank).map(|(le, _)| *le)
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!("{}", runtime.block_on(probe(&args)));
}

async fn probe(args: &Args) -> serde_json::Value {
    let headers = args.headers();
    let rounds: usize = args.num("rounds", 200);
    let keys: usize = args.num("keys", 20);
    let window = Duration::from_millis(args.num("window-ms", 20));
    let b_admin = args.req("b-admin").to_owned();
    let mut a = Conn::open(args.req("a"), &headers).await;
    let mut b = Conn::open(args.req("b"), &headers).await;
    let before = bus_delay_buckets(&b_admin).await;

    let mut fresh_us = Vec::with_capacity(rounds);
    // When each stale read was sent, µs after A's 2xx.
    let mut stale_sent_us = Vec::new();
    let (mut reads, mut hits_before, mut never_fresh) = (0u64, 0u64, 0u64);
    for round in 0..rounds {
        let key = format!("fleet-{}", round % keys);
        b.services(&key).await;
        let (before_write, hit) = b.services(&key).await;
        hits_before += u64::from(hit);
        let start = format!(r#"{{"contact_key":"{key}","service_type":1}}"#);
        let written = a
            .send(
                http::Method::POST,
                "/genesys/1/cs/services/start",
                Bytes::from(start),
            )
            .await;
        assert_eq!(written.status, 201, "start: {:?}", written.body);
        let acked = Instant::now();
        let mut first_fresh = None;
        loop {
            let sent = acked.elapsed();
            let (count, _) = b.services(&key).await;
            reads += 1;
            if count > before_write {
                first_fresh.get_or_insert(acked.elapsed());
            } else {
                stale_sent_us.push(sent.as_micros() as u64);
            }
            let elapsed = acked.elapsed();
            if (first_fresh.is_some() && elapsed >= window) || elapsed >= Duration::from_secs(1)
            {
                break;
            }
        }
        match first_fresh {
            Some(delay) => fresh_us.push(delay.as_micros() as u64),
            None => never_fresh += 1,
        }
    }

    let after = bus_delay_buckets(&b_admin).await;
    let run: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, count)| {
            let earlier = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0, |(_, c)| *c);
            (*le, count - earlier)
        })
        .collect();
    let p50 = bucket_quantile(&run, 0.50);
    let p99 = bucket_quantile(&run, 0.99);
    let p99_us = p99.map_or(0, |s| (s * 1e6) as u64);
    fresh_us.sort_unstable();
    let stale_after_p99 = stale_sent_us.iter().filter(|us| **us >= p99_us).count();
    json!({
        "rounds": rounds,
        "keys": keys,
        "reads_after_write": reads,
        "hits_before_write": hits_before,
        "never_fresh": never_fresh,
        "fresh_us": {
            "p50": pct(&fresh_us, 50.0),
            "p99": pct(&fresh_us, 99.0),
            "max": fresh_us.last().copied().unwrap_or(0),
        },
        "bus_delay": {
            "buckets": run
                .iter()
                .filter(|(le, _)| le.is_finite())
                .map(|(le, c)| json!([le, c]))
                .collect::<Vec<_>>(),
            "messages": run.last().map_or(0, |(_, c)| *c),
            "p50_le_s": p50,
            "p99_le_s": p99,
        },
        "stale": {
            "after_2xx": stale_sent_us.len(),
            "after_2xx_plus_bus_p99": stale_after_p99,
            "latest_sent_us": stale_sent_us.iter().max().copied().unwrap_or(0),
        },
    })
}
