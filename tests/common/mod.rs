//! Test harness: a scripted fake upstream that records what it receives, the real
//! gateway started in-process on listeners bound to `127.0.0.1:0` and handed over
//! already bound, and a small HTTP client.
#![allow(dead_code)]

pub mod h2frames;
pub mod process;
pub mod store;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use csgate::cache::{Clock, SystemClock};
use csgate::config::{Config, Overrides};
use csgate::pipeline::Gateway;

/// One request the fake upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Played<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<Response<Full<Bytes>>, std::io::Error>> + Send + 'a,
    >,
>;

/// A permit-style gate for `Reply::Gate`: every request takes a ticket when it arrives,
/// and `release` opens the gate for every ticket handed out so far. A request that has
/// been counted but has not reached the gate yet cannot miss a release.
#[derive(Clone, Default)]
pub struct Gate {
    arrived: Arc<AtomicUsize>,
    released: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Gate {
    fn arrive(&self) -> usize {
        self.arrived.fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn pass(&self, ticket: usize) {
        let mut released = self.released.subscribe();
        let _ = released.wait_for(|upto| *upto >= ticket).await;
    }

    fn release(&self) {
        self.released
            .send_replace(self.arrived.load(Ordering::SeqCst));
    }

    /// Plays a scripted reply; `ticket` is the request's place at the gate.
    fn play(&self, reply: Reply, ticket: usize) -> Played<'_> {
        Box::pin(async move {
            match reply {
                Reply::Full(status, headers, body) => {
                    let mut response = Response::new(Full::new(body));
                    *response.status_mut() = StatusCode::from_u16(status).expect("status");
                    for (name, value) in headers {
                        response.headers_mut().append(
                            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                            HeaderValue::from_str(&value).expect("value"),
                        );
                    }
                    Ok(response)
                }
                Reply::Delay(delay, then) => {
                    tokio::time::sleep(delay).await;
                    self.play(*then, ticket).await
                }
                Reply::Gate(then) => {
                    self.pass(ticket).await;
                    self.play(*then, ticket).await
                }
                Reply::Hangup => Err(std::io::Error::other("hang up")),
            }
        })
    }
}

impl Recorded {
    /// Reads a whole request as a fake upstream records it.
    async fn read(request: Request<Incoming>) -> Recorded {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Recorded {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
        }
    }
}

/// A scripted reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status, extra headers, body.
    Full(u16, Vec<(String, String)>, Bytes),
    /// Wait, then reply.
    Delay(Duration, Box<Reply>),
    /// Wait until `FakeUpstream::release` is called, then reply.
    Gate(Box<Reply>),
    /// Close the connection without answering.
    Hangup,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply::Full(
            status,
            vec![("content-type".into(), "application/json".into())],
            Bytes::from(body.into()),
        )
    }

    pub fn with_header(self, name: &str, value: &str) -> Reply {
        match self {
            Reply::Full(status, mut headers, body) => {
                headers.push((name.into(), value.into()));
                Reply::Full(status, headers, body)
            }
            other => other,
        }
    }
}

struct Script {
    default: Reply,
    queue: VecDeque<Reply>,
}

/// A fake Context Services backend that ignores the query (like a legacy backend) and
/// answers what the script says.
#[derive(Clone)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<Script>>,
    gate: Gate,
    count: Arc<AtomicUsize>,
}

impl FakeUpstream {
    pub async fn start(default: Reply) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let upstream = FakeUpstream {
            addr,
            log: Arc::default(),
            script: Arc::new(Mutex::new(Script {
                default,
                queue: VecDeque::new(),
            })),
            gate: Gate::default(),
            count: Arc::default(),
        };
        let server = upstream.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let server = server.clone();
                        async move { server.answer(request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn answer(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let recorded = Recorded::read(request).await;
        self.log.lock().expect("log").push(recorded);
        let ticket = self.gate.arrive();
        self.count.fetch_add(1, Ordering::SeqCst);
        let reply = {
            let mut script = self.script.lock().expect("script");
            script
                .queue
                .pop_front()
                .unwrap_or_else(|| script.default.clone())
        };
        self.play(reply, ticket).await
    }

    fn play(&self, reply: Reply, ticket: usize) -> Played<'_> {
        self.gate.play(reply, ticket)
    }

    /// Replies for the next requests, in order; then the default again.
    pub fn push(&self, reply: Reply) {
        self.script.lock().expect("script").queue.push_back(reply);
    }

    pub fn set_default(&self, reply: Reply) {
        self.script.lock().expect("script").default = reply;
    }

    /// Lets every request that has arrived so far through its `Reply::Gate`, whether it
    /// is already waiting there or not yet.
    pub fn release(&self) {
        self.gate.release();
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("log").clone()
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests have arrived (bounded, so a bug fails instead of hanging).
    pub async fn wait_for_count(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.count() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "upstream saw {} requests, expected {n}",
                self.count()
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A serve task and the channel that stops it: the shape every in-process server of the
/// harness shares. Dropping it stops serving without waiting; [`Serving::stop`] waits.
pub struct Serving {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Serving {
    /// Spawns `serve(stopped)`; `stopped` resolves on [`Serving::stop`] or drop.
    pub fn spawn<F>(serve: impl FnOnce(oneshot::Receiver<()>) -> F) -> Serving
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        Serving {
            stop: Some(stop),
            task: Some(tokio::spawn(serve(stopped))),
        }
    }

    /// Stops serving and waits for the serve task; `Err` if it panicked.
    pub async fn stop(&mut self) -> Result<(), tokio::task::JoinError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await,
            None => Ok(()),
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A running gateway.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub gateway: Gateway,
    serving: Serving,
}

impl TestGateway {
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub async fn stop(mut self) {
        let _ = self.serving.stop().await;
    }
}

/// A config from TOML text, with `upstreams` as `[upstream] urls`.
pub fn config(toml: &str, upstreams: &[String]) -> Config {
    let overrides = Overrides {
        upstreams: upstreams.to_vec(),
        ..Overrides::default()
    };
    Config::from_toml(toml, std::path::Path::new("test.toml"), &overrides).expect("valid config")
}

/// Starts the gateway in front of `upstreams` with extra TOML config.
pub async fn start_gateway(toml: &str, upstreams: &[String]) -> TestGateway {
    start_gateway_with_clock(toml, upstreams, Arc::new(SystemClock)).await
}

pub async fn start_gateway_with_clock(
    toml: &str,
    upstreams: &[String],
    clock: Arc<dyn Clock>,
) -> TestGateway {
    let config = config(toml, upstreams);
    let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = public.local_addr().expect("addr");
    let admin_addr = admin.local_addr().expect("addr");
    let (started, control) = oneshot::channel();
    let options = csgate::app::Options {
        clock,
        started: Some(started),
        ..csgate::app::Options::default()
    };
    // No reload is ever sent: the sender is dropped at once.
    let (_, reloads) = tokio::sync::mpsc::channel(1);
    let serving = Serving::spawn(|stopped| async move {
        csgate::app::run(
            config,
            csgate::app::Sources::default(),
            csgate::app::Listeners { public, admin },
            async move {
                let _ = stopped.await;
            },
            reloads,
            options,
        )
        .await
        .expect("gateway runs");
    });
    let gateway = control.await.expect("the gateway starts").gateway();
    TestGateway {
        addr,
        admin: admin_addr,
        gateway,
        serving,
    }
}

/// A finished response.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_owned())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    send_body(method, url, headers, Full::new(body.into())).await
}

/// Sends one request with any body type and collects the whole answer: the one
/// client every test uses.
pub async fn send_body<B>(method: Method, url: &str, headers: &[(&str, &str)], body: B) -> Answer
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    try_send_body(method, url, headers, body)
        .await
        .expect("request")
}

/// [`send_body`], with a failed exchange (refused, reset) as `None` instead of a panic.
pub async fn try_send_body<B>(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: B,
) -> Option<Answer>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client: Client<_, B> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = url.parse().expect("uri");
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    Answer::read(client.request(request).await.ok()?).await
}

impl Answer {
    /// Collects a whole response; `None` when the body fails midway.
    async fn read(response: Response<Incoming>) -> Option<Answer> {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

/// The TLS variant of [`get`]: one GET over HTTP/1.1 on a fresh TLS connection to
/// `addr`, trusting only `root` and verifying the certificate for `server_name` (sent as
/// SNI and `Host`).
pub async fn get_tls(
    addr: SocketAddr,
    server_name: &str,
    root: rustls::pki_types::CertificateDer<'static>,
    path: &str,
) -> Answer {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).expect("root");
    #[allow(deprecated, reason = "the gateway's provider (src/tls.rs): ring")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http handshake");
    tokio::spawn(connection);
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("host", server_name)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    Answer::read(response).await.expect("body")
}

pub async fn get(url: &str) -> Answer {
    send(Method::GET, url, &[], Bytes::new()).await
}

/// A GET that may fail to connect (a server still starting or already gone).
pub async fn try_get(url: &str) -> Option<Answer> {
    try_send_body(Method::GET, url, &[], Full::new(Bytes::new())).await
}

pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Answer {
    send(Method::GET, url, headers, Bytes::new()).await
}

/// Sockets that hold the ports handed out by `refused_url`, for the whole test binary.
static RESERVED: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());

/// An address where connecting is refused: a socket bound to it but never listening, kept
/// for the life of the test binary, so no other socket can take the port meanwhile (a
/// port bound and dropped could be reused by anything).
pub async fn refused_url() -> String {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    RESERVED.lock().expect("reserved").push(socket);
    format!("http://{addr}")
}

/// A request body sent in the given chunks with no length announced, so the client
/// uses `Transfer-Encoding: chunked`.
pub struct Chunked(VecDeque<Bytes>);

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .pop_front()
                .map(|chunk| Ok(hyper::body::Frame::data(chunk))),
        )
    }
}

/// Sends one request whose body is streamed in `chunks` (chunked transfer encoding).
pub async fn send_chunked(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    chunks: Vec<Bytes>,
) -> Answer {
    send_body(method, url, headers, Chunked(chunks.into())).await
}

/// Writes `request` as raw bytes on a fresh connection (send `Connection: close`) and
/// returns everything the server wrote until it closed, bounded by 10 s.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        out
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the server answered and closed within 10 s")
}

/// The first line of a raw HTTP answer and its body (after the blank line).
pub fn split_raw(answer: &[u8]) -> (String, Vec<u8>) {
    let text = String::from_utf8_lossy(answer);
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| answer[i + 4..].to_vec())
        .unwrap_or_default();
    (status, body)
}

// --- appended for tests/cache.rs -----------------------------------------------------

/// What a [`FnUpstream`] responder decides for one request.
pub type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A fake upstream whose replies are computed from each request (tenant headers,
/// method, path) by a closure, and which can be stopped: `stop` closes the listener and
/// every open connection, so later connects are refused.
#[derive(Clone)]
pub struct FnUpstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    responder: Arc<Mutex<Responder>>,
    gate: Gate,
    tasks: Arc<Mutex<Option<tokio::task::JoinSet<()>>>>,
}

impl FnUpstream {
    pub async fn start(
        responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> FnUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let upstream = FnUpstream {
            addr,
            log: Arc::default(),
            responder: Arc::new(Mutex::new(Arc::new(responder))),
            gate: Gate::default(),
            tasks: Arc::new(Mutex::new(Some(tokio::task::JoinSet::new()))),
        };
        let server = upstream.clone();
        let accept = async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let server2 = server.clone();
                let connection = async move {
                    let service = service_fn(move |request| {
                        let server = server2.clone();
                        async move { server.answer(request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                };
                if let Some(tasks) = server.tasks.lock().expect("tasks").as_mut() {
                    tasks.spawn(connection);
                }
            }
        };
        if let Some(tasks) = upstream.tasks.lock().expect("tasks").as_mut() {
            tasks.spawn(accept);
        }
        upstream
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn answer(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let recorded = Recorded::read(request).await;
        let responder = self.responder.lock().expect("responder").clone();
        let reply = responder(&recorded);
        let ticket = self.gate.arrive();
        self.log.lock().expect("log").push(recorded);
        self.play(reply, ticket).await
    }

    fn play(&self, reply: Reply, ticket: usize) -> Played<'_> {
        self.gate.play(reply, ticket)
    }

    /// Replaces the responder for the following requests.
    pub fn set(&self, responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        *self.responder.lock().expect("responder") = Arc::new(responder);
    }

    /// Lets every request that has arrived so far through its `Reply::Gate`, whether it
    /// is already waiting there or not yet.
    pub fn release(&self) {
        self.gate.release();
    }

    /// Closes the listener and every connection: from now on, connecting is refused.
    pub fn stop(&self) {
        if let Some(mut tasks) = self.tasks.lock().expect("tasks").take() {
            tasks.abort_all();
            tasks.detach_all();
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("log").clone()
    }

    pub fn count(&self) -> usize {
        self.log.lock().expect("log").len()
    }

    /// Waits until `n` requests have arrived (bounded, so a bug fails instead of hanging).
    pub async fn wait_for_count(&self, n: usize) {
        wait_until(&format!("upstream to see {n} requests"), || {
            self.count() >= n
        })
        .await;
    }
}

/// Polls `condition` until it holds, for at most 10 s (a bug fails instead of hanging).
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
