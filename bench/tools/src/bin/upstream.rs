//! The fake Context Services upstream: answers any path with a realistic Service[]
//! (about 2 KB, see `body`), counts the requests it served, and exposes the count.
//!
//! - `GET /__count` → `{"total":N,"marked":M}` (not counted); `M` counts requests whose
//!   path contains `--slow-marker`.
//! - `GET /__reset` zeroes both counters.
//! - Requests whose path contains `--slow-marker` are answered after `--slow-ms`, so that
//!   concurrent cold requests overlap (the stampede test).
//! - Customer paths with an id starting `big-` get 50 services (about 40 KB,
//!   [`body::large`]); with an id starting `deep-`, one service whose attached data nests
//!   1,000 levels ([`body::deep`]). `GET /__body/big` and `/__body/deep` return them
//!   uncounted, so the benchmark can compare what the gateway forwarded.
//!
//! Usage: `upstream --listen 127.0.0.1:PORT [--slow-marker stampede] [--slow-ms 200]`

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use csgate_bench_tools::{body, Args};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
struct Counts {
    total: AtomicU64,
    marked: AtomicU64,
}

fn main() {
    let args = Args::parse();
    let listen = args.req("listen").to_owned();
    let marker = args.get("slow-marker").unwrap_or("stampede").to_owned();
    let slow = Duration::from_millis(args.num("slow-ms", 200));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen).await.expect("bind --listen");
        let counts = Arc::new(Counts::default());
        let marker: Arc<str> = Arc::from(marker);
        let anonymous = Bytes::from_static(body::ANONYMOUS.as_bytes());
        let customer = Bytes::from_static(body::CUSTOMER.as_bytes());
        let large = Bytes::from(body::large(50));
        let deep = Bytes::from(body::deep(1000));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let counts = counts.clone();
            let marker = marker.clone();
            let bodies = (
                anonymous.clone(),
                customer.clone(),
                large.clone(),
                deep.clone(),
            );
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let counts = counts.clone();
                    let marker = marker.clone();
                    let (anonymous, customer, large, deep) = bodies.clone();
                    async move {
                        let path = request.uri().path();
                        let json = |text: String| {
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(text)))
                                .expect("static response")
                        };
                        if path == "/__count" {
                            return Ok::<_, Infallible>(json(format!(
                                r#"{{"total":{},"marked":{}}}"#,
                                counts.total.load(Ordering::SeqCst),
                                counts.marked.load(Ordering::SeqCst)
                            )));
                        }
                        if let Some(name) = path.strip_prefix("/__body/") {
                            let body = if name == "big" { large } else { deep };
                            return Ok(Response::new(Full::new(body)));
                        }
                        if path == "/__reset" {
                            counts.total.store(0, Ordering::SeqCst);
                            counts.marked.store(0, Ordering::SeqCst);
                            return Ok(json("{}".into()));
                        }
                        counts.total.fetch_add(1, Ordering::SeqCst);
                        if path.contains(&*marker) {
                            counts.marked.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(slow).await;
                        }
                        let body = if path.contains("/services/anonymous/") {
                            anonymous
                        } else if path.contains("/customers/big-") {
                            large
                        } else if path.contains("/customers/deep-") {
                            deep
                        } else {
                            customer
                        };
                        Ok(Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                            .expect("static response"))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
