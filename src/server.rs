//! The accept loop shared by the public gateway listener, the admin listener and the
//! reference store: HTTP/1.1 and h2 on one port (hyper-util `auto`), a header read
//! timeout against slow clients, and graceful shutdown.
//!
//! Shutdown: when `shutdown` resolves the listener is dropped (no new connections),
//! every open connection is told to finish its in-flight requests and close (idle
//! keep-alive connections close at once), and `serve` returns when they are all gone
//! or when `grace` has passed, whichever is first.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::config::defaults;

/// Errors carried inside response and request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type every handler answers with.
pub type Body = BoxBody<Bytes, BoxError>;

/// Connection-level settings of one listener.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// A client that has not sent complete request headers by then is disconnected.
    pub header_read_timeout: Duration,
    /// hyper's read buffer bound; requests whose head exceeds it are refused by hyper.
    /// Keep it above the gateway's own header limit so the gateway answers 431 itself.
    pub max_buf_size: usize,
    /// How long in-flight requests may run after shutdown begins.
    pub shutdown_grace: Duration,
}

impl ServeOptions {
    /// For the admin listener and the store, whose clients send small heads: the
    /// default header timeout and grace, a 64 KiB buffer. The public listener's come
    /// from `ServerConfig::serve_options`.
    pub fn internal() -> ServeOptions {
        ServeOptions {
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
            max_buf_size: defaults::INTERNAL_MAX_BUF_SIZE,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
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
        .max_buf_size(options.max_buf_size);
    builder.http2().timer(TokioTimer::new());

    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let response = handler(request, peer);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let io = match acceptor.accept(stream).await {
                Ok(io) => io,
                Err(error) => {
                    tracing::debug!(%error, %peer, "handshake failed");
                    return;
                }
            };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!(grace = ?options.shutdown_grace, "shutdown grace elapsed; closing remaining connections");
        }
    }
}
