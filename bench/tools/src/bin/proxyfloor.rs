//! The proxy floor: the least a gateway built on hyper can do on the miss path — a hyper 1
//! server on csgate's runtime shape (tokio multi-thread, one worker per CPU it may use)
//! that forwards every request to `--upstream` through hyper-util's pooled client (the
//! client csgate uses) and streams the answer back. No validation, no header handling,
//! no post-filter: what the HTTP stack costs on its own, which no hyper-based gateway's
//! miss path can beat. The miss-path twin of `floor`.
//!
//! Usage: `proxyfloor --listen ADDR --upstream http://HOST:PORT`

use std::convert::Infallible;

use bytes::Bytes;
use csgate_bench_tools::{authority, Args};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

fn main() {
    let args = Args::parse();
    let listen = args.req("listen").to_owned();
    let upstream = authority(args.req("upstream"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        let listener = TcpListener::bind(&listen).await.expect("bind --listen");
        println!("listening {listen}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let client = client.clone();
                    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
                    let uri = format!("http://{upstream}{path}").parse::<Uri>();
                    async move {
                        let (mut parts, body) = request.into_parts();
                        let answer = match uri {
                            Ok(uri) => {
                                parts.uri = uri;
                                client.request(Request::from_parts(parts, body)).await.ok()
                            }
                            Err(_) => None,
                        };
                        let response = match answer {
                            Some(answer) => answer.map(Either::Left),
                            None => Response::builder()
                                .status(StatusCode::BAD_GATEWAY)
                                .body(Either::Right(Empty::<Bytes>::new()))
                                .expect("static response"),
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
