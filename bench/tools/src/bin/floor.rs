//! The floor: the least a server can do to answer the hit-path URIs — a hyper 1 server
//! on the same runtime shape as csgate (tokio multi-thread, one worker per CPU it may
//! use) that looks the request URI up in a map and writes the stored bytes.
//!
//! At start it fetches every URI in `--urls` once through `--prime-from` (csgate) with
//! the given headers and keeps exactly the bytes csgate answered, so both send the same
//! bodies. Prints `primed N` on stdout when ready; unknown URIs answer 404.
//!
//! Usage: `floor --listen ADDR --urls FILE --prime-from http://HOST:PORT [--header "K: V"]...`

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use csgate_bench_tools::{authority, connect, http_get, read_lines, Args};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn main() {
    let args = Args::parse();
    let listen = args.req("listen").to_owned();
    let urls = read_lines(args.req("urls"));
    let prime = authority(args.req("prime-from"));
    let headers = args.headers();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let mut map = HashMap::with_capacity(urls.len());
        let mut sender = connect(&prime).await.expect("connect to --prime-from");
        for url in &urls {
            let (status, body) =
                http_get(&mut sender, &prime, url, &headers, Duration::from_secs(30))
                    .await
                    .unwrap_or_else(|e| panic!("priming {url}: {e}"));
            assert_eq!(status, 200, "priming {url}: status {status}");
            map.insert(url.clone(), body);
        }
        let map: Arc<HashMap<String, Bytes>> = Arc::new(map);
        let listener = TcpListener::bind(&listen).await.expect("bind --listen");
        println!("primed {}", map.len());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let map = map.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let found = request
                        .uri()
                        .path_and_query()
                        .and_then(|pq| map.get(pq.as_str()).cloned());
                    async move {
                        let response = match found {
                            Some(body) => Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(body)),
                            None => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::new())),
                        };
                        Ok::<_, Infallible>(response.expect("static response"))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
