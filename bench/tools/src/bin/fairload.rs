//! The noisy-neighbour benchmark's two halves (bench/fair.sh). Prints JSON on stdout.
//!
//! - `fairload backend --listen ADDR [--slots 20] [--service-ms 20]`: a backend like GMS:
//!   `slots` requests served at once, each for `service-ms`, the rest queued inside it.
//!   It answers `[]` to any path and tracks how many requests it holds at once (served
//!   or queued: what "the backend sees"). `GET /__stats` → `{"total":N,"max_inflight":M}`
//!   (not counted); `GET /__reset` zeroes both.
//! - `fairload tenants --target URL --tenant NAME:RPS [--tenant ...] --duration S
//!   [--timeout S]`: each tenant sends customer-route misses
//!   (`/genesys/1/cs/customers/NAME-n/services/active`, `ContactCenterId: NAME`) open
//!   loop at its rate, a request every 1/RPS whatever the answers do (a request is
//!   spawned at its intended time; connections come from the tenant's own pool of idle
//!   keep-alive connections, a new one when none is idle). Latency is from the intended
//!   send time to the whole answer. Per tenant: answers by status, answers refused
//!   (429/503) without `Retry-After`, transport errors and timeouts, and latency
//!   percentiles of the 200s.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use csgate_bench_tools::{authority, connect, Args};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    match args.positional.first().map(String::as_str) {
        Some("backend") => runtime.block_on(backend(&args)),
        Some("tenants") => {
            let out = runtime.block_on(tenants(&args));
            println!("{out}");
        }
        _ => {
            eprintln!("usage: fairload backend|tenants ...");
            std::process::exit(2)
        }
    }
}

#[derive(Default)]
struct Seen {
    total: AtomicU64,
    inflight: AtomicU64,
    max_inflight: AtomicU64,
}

async fn backend(args: &Args) {
    let listener = TcpListener::bind(args.req("listen"))
        .await
        .expect("bind --listen");
    let slots = Arc::new(Semaphore::new(args.num("slots", 20)));
    let service = Duration::from_millis(args.num("service-ms", 20));
    let seen = Arc::new(Seen::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (slots, seen) = (slots.clone(), seen.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |request: Request<Incoming>| {
                let (slots, seen) = (slots.clone(), seen.clone());
                async move {
                    let path = request.uri().path().to_owned();
                    let body = match path.as_str() {
                        "/__stats" => json!({
                            "total": seen.total.load(Ordering::SeqCst),
                            "max_inflight": seen.max_inflight.load(Ordering::SeqCst),
                        })
                        .to_string(),
                        "/__reset" => {
                            seen.total.store(0, Ordering::SeqCst);
                            seen.max_inflight.store(0, Ordering::SeqCst);
                            "{}".to_owned()
                        }
                        _ => {
                            seen.total.fetch_add(1, Ordering::SeqCst);
                            let now = seen.inflight.fetch_add(1, Ordering::SeqCst) + 1;
                            seen.max_inflight.fetch_max(now, Ordering::SeqCst);
                            {
                                let _slot = slots.acquire().await.expect("never closed");
                                tokio::time::sleep(service).await;
                            }
                            seen.inflight.fetch_sub(1, Ordering::SeqCst);
                            "[]".to_owned()
                        }
                    };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// What one tenant saw.
#[derive(Default)]
struct Tally {
    statuses: BTreeMap<u16, u64>,
    refused_without_retry_after: u64,
    errors: u64,
    ok_latency_us: Vec<u32>,
}

type Pool = Arc<Mutex<Vec<SendRequest<Empty<Bytes>>>>>;

async fn tenants(args: &Args) -> serde_json::Value {
    let target = authority(args.req("target"));
    let duration = Duration::from_secs_f64(args.num("duration", 10.0));
    let timeout = Duration::from_secs_f64(args.num("timeout", 5.0));
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut runs = Vec::new();
    for spec in args.all("tenant") {
        let (name, rps) = spec.split_once(':').expect("--tenant NAME:RPS");
        let rps: f64 = rps.parse().expect("a rate");
        let (name, target) = (name.to_owned(), target.clone());
        runs.push(tokio::spawn(async move {
            let tally = Arc::new(Mutex::new(Tally::default()));
            let pool: Pool = Arc::default();
            let period = Duration::from_secs_f64(1.0 / rps);
            let mut tasks = Vec::new();
            let mut n: u64 = 0;
            let mut intended = start;
            while intended < start + duration {
                tokio::time::sleep_until(intended).await;
                let path = format!("/genesys/1/cs/customers/{name}-{n}/services/active");
                let (target, name, pool, tally) =
                    (target.clone(), name.clone(), pool.clone(), tally.clone());
                tasks.push(tokio::spawn(async move {
                    let outcome =
                        tokio::time::timeout(timeout, one(&target, &path, &name, &pool)).await;
                    let mut tally = tally.lock().expect("tally");
                    match outcome {
                        Ok(Ok((status, retry_after))) => {
                            *tally.statuses.entry(status).or_default() += 1;
                            if status == 200 {
                                let us = intended.elapsed().as_micros();
                                tally
                                    .ok_latency_us
                                    .push(u32::try_from(us).unwrap_or(u32::MAX));
                            } else if matches!(status, 429 | 503) && !retry_after {
                                tally.refused_without_retry_after += 1;
                            }
                        }
                        Ok(Err(_)) | Err(_) => tally.errors += 1,
                    }
                }));
                n += 1;
                intended += period;
            }
            for task in tasks {
                let _ = task.await;
            }
            let mut tally = std::mem::take(&mut *tally.lock().expect("tally"));
            tally.ok_latency_us.sort_unstable();
            let lat = &tally.ok_latency_us;
            json!({
                "tenant": name,
                "target_rps": rps,
                "sent": n,
                "statuses": tally.statuses,
                "refused_without_retry_after": tally.refused_without_retry_after,
                "errors": tally.errors,
                "ok_p50_us": pct(lat, 50.0),
                "ok_p90_us": pct(lat, 90.0),
                "ok_p99_us": pct(lat, 99.0),
                "ok_max_us": lat.last().copied().unwrap_or(0),
            })
        }));
    }
    let mut out = Vec::new();
    for run in runs {
        out.push(run.await.expect("tenant task"));
    }
    json!({ "tenants": out, "duration_s": duration.as_secs_f64() })
}

/// One GET on a pooled connection: status, and whether `Retry-After` came with it.
async fn one(target: &str, path: &str, tenant: &str, pool: &Pool) -> Result<(u16, bool), String> {
    let idle = pool.lock().expect("pool").pop();
    let mut sender = match idle {
        Some(sender) => sender,
        None => connect(target).await.map_err(|e| e.to_string())?,
    };
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = http::Request::get(path)
        .header("host", target)
        .header("ContactCenterId", tenant)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key(http::header::RETRY_AFTER);
    let close = response
        .headers()
        .get(http::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if !close {
        pool.lock().expect("pool").push(sender);
    }
    Ok((status, retry_after))
}

/// Percentile `p` (0..=100) of sorted microseconds.
fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
