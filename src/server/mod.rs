//! The accept loop shared by the public gateway listener, the admin listener and the
//! reference store: HTTP/1.1 and h2 on one port (hyper-util `auto`), and the rule that
//! every connection makes progress or is closed.
//!
//! - [`accept`]: plain TCP or a TLS handshake before HTTP.
//! - [`limits`]: the open-file limit, the connection cap derived from it, accept-error
//!   back-off.
//! - [`connection`]: one connection's deadlines (first request, idle) and graceful close.
//! - [`clients`]: connections per client address.
//!
//! Fair share (`[limits.connections]`, public listener only): a client address past
//! `per_client` open connections is still accepted, answered once and closed at once
//! (HTTP/1.1 `503` with `Connection: close`; HTTP/2 `REFUSED_STREAM`, then `GOAWAY`),
//! so the socket is never held and the client learns why. Each HTTP/2 connection's
//! requests carry a [`StreamBudget`] of `h2_streams_per_connection` backend-bound
//! streams; an answer marked [`RefuseStream`] becomes `REFUSED_STREAM` on HTTP/2.
//!
//! Limits: at most `max_connections` connections are open; past it the listener stops
//! accepting (the kernel backlog holds the rest) so descriptors stay free for the admin
//! listener and upstream connections. A connection must deliver a complete first
//! request within `header_read_timeout` of being accepted (TLS handshake and HTTP/2
//! preface included); later request heads on HTTP/1 have the same bound (hyper); a
//! connection with no request in flight for `idle_timeout` is closed (GOAWAY on h2);
//! h2 peers are pinged every `idle_timeout / 2` and dropped if they do not answer.
//!
//! Shutdown: when `shutdown` resolves the listener is dropped (no new connections).
//! For `drain_delay` open connections keep being served, each HTTP/1 answer carrying
//! `Connection: close` (a load balancer may still send on a connection it opened
//! before it saw the pod go unready); then every connection is told to finish its
//! in-flight requests and close (idle ones close at once), and `serve` returns when
//! they are all gone or when `shutdown_grace` (counted from the signal, drain delay
//! included) has passed, whichever is first.

pub mod accept;
pub mod clients;
pub mod config;
pub mod connection;
pub mod limits;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

pub use self::accept::{Accept, Plain};
use self::clients::{ClientConnections, Counted};
use self::connection::{Activity, Bounds, Closed};
use self::limits::AcceptBackoff;
use crate::settings::{defaults, Cidr};

pub use self::config::ServerConfig;
use crate::error::GatewayError;
pub use crate::error::RefuseStream;
pub use crate::httputil::{Body, BoxError};
use crate::limits::{LimitMetrics, Rejection, StreamBudget};

/// `[limits.connections]` on a listener.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Open connections per client address.
    pub per_client: usize,
    /// Peers exempt from `per_client` (their connections carry many clients).
    pub trusted_proxies: Vec<Cidr>,
    /// Backend-bound streams per HTTP/2 connection.
    pub h2_streams: usize,
    pub metrics: LimitMetrics,
}

/// Connection-level settings of one listener.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// A client that has not sent complete request headers by then is disconnected;
    /// for the first request this counts from the accept (TLS handshake included).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections at most; the listener stops accepting at the cap.
    pub max_connections: usize,
    /// Header fields hyper accepts on HTTP/1 (its default is 100). Set it above the
    /// gateway's own count limit so the gateway answers 431 itself.
    pub max_headers: usize,
    /// After shutdown begins, open connections are still served for this long, HTTP/1
    /// answers carrying `Connection: close`.
    pub drain_delay: Duration,
    /// hyper's read buffer bound; requests whose head exceeds it are refused by hyper.
    /// Keep it above the gateway's own header limit so the gateway answers 431 itself.
    pub max_buf_size: usize,
    /// How long in-flight requests may run after shutdown begins.
    pub shutdown_grace: Duration,
    /// Connections per client and streams per connection; `None`: unlimited.
    pub limits: Option<ConnectionLimits>,
}

impl ServeOptions {
    /// For the admin listener and the store, whose clients send small heads: the
    /// default header timeout, header count and grace, a 64 KiB buffer, no drain delay,
    /// an idle timeout that outlasts the gateway's upstream pool's
    /// ([`defaults::INTERNAL_IDLE_TIMEOUT`]), and the connection cap that follows the
    /// open-file limit (the admin listener sets its own). The public listener's come
    /// from `ServerConfig::serve_options`.
    pub fn internal() -> ServeOptions {
        ServeOptions {
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
            idle_timeout: defaults::INTERNAL_IDLE_TIMEOUT,
            max_connections: limits::default_max_connections(),
            max_headers: defaults::MAX_HEADERS,
            drain_delay: Duration::ZERO,
            max_buf_size: defaults::INTERNAL_MAX_BUF_SIZE,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            limits: None,
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` resolves, then drains.
pub async fn serve<A, H, F>(
    listener: TcpListener,
    acceptor: A,
    options: ServeOptions,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    A: Accept,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let gate = Gate::new(options.max_connections);
    let clients = options
        .limits
        .as_ref()
        .map(|l| ClientConnections::new(l.per_client, l.trusted_proxies.clone()));
    let served = Served {
        acceptor,
        builder: http_builder(&options),
        options,
        handler,
        draining: gate.draining.subscribe(),
        close: gate.close.subscribe(),
    };
    let mut backoff = AcceptBackoff::new();
    tokio::pin!(shutdown);
    while let Some((stream, peer, permit)) =
        next_connection(&listener, &gate.permits, &mut backoff, &mut shutdown).await
    {
        let accepted = Accepted::admit(stream, peer, permit, clients.as_ref(), &served.options);
        tokio::spawn(served.clone().run(accepted));
    }
    gate.drain(listener, &served.options).await;
}

/// HTTP/1.1 and HTTP/2 settings of one listener.
fn http_builder(options: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_headers(options.max_headers)
        .max_buf_size(options.max_buf_size);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.idle_timeout / 2)
        .keep_alive_timeout(options.header_read_timeout);
    builder
}

/// The next accepted connection and its slot, backing off after accept errors; `None`
/// once `shutdown` resolves.
async fn next_connection<S>(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    backoff: &mut AcceptBackoff,
    shutdown: &mut S,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)>
where
    S: Future<Output = ()> + Unpin,
{
    loop {
        let accepted = tokio::select! {
            accepted = accept_within_cap(listener, permits) => accepted,
            () = &mut *shutdown => return None,
        };
        match accepted {
            Ok(accepted) => {
                backoff.succeeded();
                return Some(accepted);
            }
            Err(error) => {
                let delay = backoff.failed(&error);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut *shutdown => return None,
                }
            }
        }
    }
}

/// The listener's connection slots and its two shutdown signals.
struct Gate {
    /// One permit per open connection, bounded so that shutdown can wait for every
    /// permit with one `acquire_many`.
    permits: Arc<Semaphore>,
    cap: u32,
    /// Answer with `Connection: close` from now on.
    draining: watch::Sender<bool>,
    /// Finish in-flight requests and close now.
    close: watch::Sender<bool>,
}

impl Gate {
    fn new(max_connections: usize) -> Gate {
        let cap = max_connections.min(u32::MAX as usize).max(1);
        Gate {
            permits: Arc::new(Semaphore::new(cap)),
            cap: u32::try_from(cap).expect("cap is at most u32::MAX"),
            draining: watch::Sender::new(false),
            close: watch::Sender::new(false),
        }
    }

    /// Stops accepting, serves open connections for `drain_delay` (while any is open),
    /// then tells them to close and waits for them until `shutdown_grace` has passed.
    async fn drain(self, listener: TcpListener, options: &ServeOptions) {
        let grace_ends = tokio::time::Instant::now() + options.shutdown_grace;
        self.draining.send_replace(true);
        drop(listener);
        if !options.drain_delay.is_zero() {
            // The delay is for requests on open connections: once none is open, it is over.
            let delay_ends = grace_ends.min(tokio::time::Instant::now() + options.drain_delay);
            tokio::select! {
                () = tokio::time::sleep_until(delay_ends) => {}
                _ = self.permits.acquire_many(self.cap) => {}
            }
        }
        self.close.send_replace(true);
        // Every connection task holds a permit: all are back when every connection is gone.
        tokio::select! {
            _ = self.permits.acquire_many(self.cap) => {}
            () = tokio::time::sleep_until(grace_ends) => {
                tracing::warn!(grace = ?options.shutdown_grace, "shutdown grace elapsed; closing remaining connections");
            }
        }
    }
}

/// One accepted connection, admitted or (past `per_client`) to be refused.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    at: tokio::time::Instant,
    /// Held until the connection is gone: its slot under `max_connections`.
    permit: OwnedSemaphorePermit,
    /// Held likewise: its place in the client's count, when it got one.
    counted: Option<Counted>,
    /// Past `per_client`: served only to be refused.
    refused: bool,
}

impl Accepted {
    fn admit(
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        clients: Option<&ClientConnections>,
        options: &ServeOptions,
    ) -> Accepted {
        let at = tokio::time::Instant::now();
        let _ = stream.set_nodelay(true);
        let counted = clients.map(|c| c.enter(peer.ip()));
        let refused = matches!(counted, Some(None));
        if let (true, Some(limits)) = (refused, &options.limits) {
            limits.metrics.rejected(Rejection::ClientConnections);
        }
        Accepted {
            stream,
            peer,
            at,
            permit,
            counted: counted.flatten(),
            refused,
        }
    }
}

/// What every connection's task takes from its listener (cloned per connection).
#[derive(Clone)]
struct Served<A, H> {
    acceptor: A,
    builder: auto::Builder<TokioExecutor>,
    options: ServeOptions,
    handler: H,
    draining: watch::Receiver<bool>,
    close: watch::Receiver<bool>,
}

impl<A, H, F> Served<A, H>
where
    A: Accept,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    /// Serves one connection to its end: handshake and first request within
    /// `header_read_timeout` of the accept, then requests until it idles out or closes.
    async fn run(self, accepted: Accepted) {
        let Accepted {
            stream,
            peer,
            at,
            permit: _permit,
            counted: _counted,
            refused,
        } = accepted;
        let activity = Arc::new(Activity::new());
        let first_request_by = at + self.options.header_read_timeout;
        let io = match tokio::time::timeout_at(first_request_by, self.acceptor.accept(stream)).await
        {
            Ok(Ok(io)) => io,
            Ok(Err(error)) => {
                tracing::debug!(%error, %peer, "handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "handshake timed out");
                return;
            }
        };
        // A refused connection closes once its first answer is out (GOAWAY on h2): its
        // own close signal, sent by the refusal, stands in for the listener's.
        let (refusal_sent, refusal) = watch::channel(false);
        let close = if refused { refusal } else { self.close.clone() };
        let refusal_sent = refused.then_some(Arc::new(refusal_sent));
        let budget = (self.options.limits.as_ref()).map(|l| StreamBudget::new(l.h2_streams));
        let (handler, draining) = (self.handler.clone(), self.draining.clone());
        let service_activity = activity.clone();
        let service = service_fn(move |mut request: Request<Incoming>| {
            // Each HTTP/2 request carries its connection's budget of backend streams.
            if let (http::Version::HTTP_2, Some(budget)) = (request.version(), &budget) {
                request.extensions_mut().insert(budget.clone());
            }
            answer(
                request,
                peer,
                handler.clone(),
                service_activity.clone(),
                draining.clone(),
                refusal_sent.clone(),
            )
        });
        let bounds = Bounds {
            activity: &activity,
            first_request_by,
            idle_timeout: self.options.idle_timeout,
            close,
        };
        // `serve_connection_with_upgrades` sniffs the protocol whatever the builder
        // says, so a connection ALPN settled on h2 is served without it (HTTP/2 has
        // no upgrades).
        let ended = if A::negotiated_h2(&io) {
            let builder = self.builder.http2_only();
            let connection = builder.serve_connection(TokioIo::new(io), service);
            connection::drive(
                connection.into_owned(),
                |connection: Pin<&mut _>| connection.graceful_shutdown(),
                bounds,
            )
            .await
        } else {
            let builder = self.builder;
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            connection::drive(
                connection.into_owned(),
                |connection: Pin<&mut _>| connection.graceful_shutdown(),
                bounds,
            )
            .await
        };
        match ended {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            Err(Closed::NoFirstRequest) => {
                tracing::debug!(%peer, "no request within the header read timeout; closed");
            }
        }
    }
}

/// One request on a connection: counted as activity, answered by the handler (or
/// refused, on a connection past `per_client`, whose refusal then closes it), and
/// marked `Connection: close` on HTTP/1 while the listener drains.
async fn answer<H, F>(
    request: Request<Incoming>,
    peer: SocketAddr,
    handler: H,
    activity: Arc<Activity>,
    draining: watch::Receiver<bool>,
    refusal_sent: Option<Arc<watch::Sender<bool>>>,
) -> Result<Response<Body>, h2::Error>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F,
    F: Future<Output = Response<Body>>,
{
    let _running = activity.request();
    let h2 = request.version() == http::Version::HTTP_2;
    let refused = refusal_sent.is_some();
    let mut response = match refusal_sent {
        Some(sent) => {
            sent.send_replace(true);
            GatewayError::TooManyConnections.into_response()
        }
        None => handler(request, peer).await,
    };
    if h2 && (refused || response.extensions().get::<RefuseStream>().is_some()) {
        // hyper resets the stream with the reason it finds in the error.
        return Err(h2::Error::from(h2::Reason::REFUSED_STREAM));
    }
    if !h2 && *draining.borrow() {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    Ok(response)
}

/// Waits for a free connection slot, then accepts.
async fn accept_within_cap(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed");
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, permit))
}
