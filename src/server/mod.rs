//! The accept loop shared by the public gateway listener, the admin listener and the
//! reference store: HTTP/1.1 and h2 on one port (hyper-util `auto`), and the rule that
//! every connection makes progress or is closed.
//!
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

pub mod clients;
pub mod config;
pub mod connection;
pub mod limits;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use self::clients::ClientConnections;
use self::connection::{Activity, Closed};
use self::limits::AcceptBackoff;
use crate::settings::{defaults, Cidr};

pub use self::config::ServerConfig;
use crate::error::GatewayError;
use crate::limits::{LimitMetrics, Rejection, StreamBudget};

/// Marks an answer that refuses its stream: `REFUSED_STREAM` on HTTP/2 (the client may
/// retry it safely, RFC 9113 §8.7), the answer itself on HTTP/1.1.
#[derive(Clone, Copy, Debug)]
pub struct RefuseStream;

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

/// Errors carried inside response and request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type every handler answers with.
pub type Body = BoxBody<Bytes, BoxError>;

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

/// Turns an accepted TCP stream into the stream HTTP is spoken on (TLS or plain).
pub trait Accept: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(
        &self,
        stream: tokio::net::TcpStream,
    ) -> impl Future<Output = std::io::Result<Self::Io>> + Send;

    /// Did the handshake settle on HTTP/2 (TLS ALPN `h2`)? Such a connection is served
    /// as HTTP/2 only: anything but the HTTP/2 preface then gets a GOAWAY, never an
    /// HTTP/1.1 answer (RFC 9113 §3.4).
    fn negotiated_h2(_io: &Self::Io) -> bool {
        false
    }
}

/// Plain TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

impl Accept for Plain {
    type Io = tokio::net::TcpStream;
    async fn accept(&self, stream: tokio::net::TcpStream) -> std::io::Result<Self::Io> {
        Ok(stream)
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

    // Bounded so that shutdown can wait for every permit with one `acquire_many`.
    let cap = options.max_connections.min(u32::MAX as usize).max(1);
    let permits = Arc::new(Semaphore::new(cap));
    // `draining`: answer with `Connection: close`; `close`: finish and close now.
    let (draining_tx, draining_rx) = watch::channel(false);
    let (close_tx, close_rx) = watch::channel(false);
    let mut backoff = AcceptBackoff::new();
    let clients = options
        .limits
        .as_ref()
        .map(|l| ClientConnections::new(l.per_client, l.trusted_proxies.clone()));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = accept_within_cap(&listener, &permits) => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer, permit) = match accepted {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(error) => {
                let delay = backoff.failed(&error);
                tokio::select! {
                    () = tokio::time::sleep(delay) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let accepted_at = tokio::time::Instant::now();
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        // Past `per_client`, the connection is served only to be refused.
        let counted = clients.as_ref().map(|c| c.enter(peer.ip()));
        let refused = matches!(counted, Some(None));
        if refused {
            if let Some(limits) = &options.limits {
                limits.metrics.rejected(Rejection::ClientConnections);
            }
        }
        let streams = options.limits.as_ref().map(|l| l.h2_streams);
        // A refused connection closes once its first answer is out (GOAWAY on h2): its
        // own close signal, sent by the refusal, stands in for the listener's.
        let (refusal_sent, refusal) = watch::channel(false);
        let close = if refused { refusal } else { close_rx.clone() };
        let service = {
            let handler = handler.clone();
            let activity = activity.clone();
            let draining = draining_rx.clone();
            let budget = streams.map(StreamBudget::new);
            let refusal_sent = Arc::new(refusal_sent);
            service_fn(move |mut request: Request<Incoming>| {
                let refusal_sent = refusal_sent.clone();
                let handler = handler.clone();
                let activity = activity.clone();
                let draining = draining.clone();
                let h2 = request.version() == http::Version::HTTP_2;
                if let (true, Some(budget)) = (h2, &budget) {
                    request.extensions_mut().insert(budget.clone());
                }
                async move {
                    let _running = activity.request();
                    let mut response = if refused {
                        refusal_sent.send_replace(true);
                        GatewayError::TooManyConnections.into_response()
                    } else {
                        handler(request, peer).await
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
                    Ok::<_, h2::Error>(response)
                }
            })
        };
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let options = options.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _counted = counted;
            let first_request_by = accepted_at + options.header_read_timeout;
            let io = match tokio::time::timeout_at(first_request_by, acceptor.accept(stream)).await
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
            // `serve_connection_with_upgrades` sniffs the protocol whatever the
            // builder says, so a connection ALPN settled on h2 is served without it
            // (HTTP/2 has no upgrades).
            let ended = if A::negotiated_h2(&io) {
                let connection = builder
                    .http2_only()
                    .serve_connection(TokioIo::new(io), service)
                    .into_owned();
                connection::drive(
                    connection,
                    |connection: std::pin::Pin<&mut _>| connection.graceful_shutdown(),
                    &activity,
                    first_request_by,
                    options.idle_timeout,
                    close,
                )
                .await
            } else {
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service)
                    .into_owned();
                connection::drive(
                    connection,
                    |connection: std::pin::Pin<&mut _>| connection.graceful_shutdown(),
                    &activity,
                    first_request_by,
                    options.idle_timeout,
                    close,
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
        });
    }
    let grace_ends = tokio::time::Instant::now() + options.shutdown_grace;
    let _ = draining_tx.send(true);
    drop(listener);
    let all = u32::try_from(cap).expect("cap is at most u32::MAX");
    if !options.drain_delay.is_zero() {
        // The delay is for requests on open connections: once none is open, it is over.
        let delay_ends = grace_ends.min(tokio::time::Instant::now() + options.drain_delay);
        tokio::select! {
            () = tokio::time::sleep_until(delay_ends) => {}
            _ = permits.acquire_many(all) => {}
        }
    }
    let _ = close_tx.send(true);
    // Every connection task holds a permit: all are back when every connection is gone.
    tokio::select! {
        _ = permits.acquire_many(all) => {}
        () = tokio::time::sleep_until(grace_ends) => {
            tracing::warn!(grace = ?options.shutdown_grace, "shutdown grace elapsed; closing remaining connections");
        }
    }
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
