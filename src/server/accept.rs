//! How an accepted TCP stream becomes the stream HTTP is spoken on: as it is
//! ([`Plain`]), or after a TLS handshake ([`Tls`], whose certificates `crate::tls` owns).

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::tls::Tls;

/// Turns an accepted TCP stream into the stream HTTP is spoken on (TLS or plain).
pub trait Accept: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self, stream: TcpStream) -> impl Future<Output = std::io::Result<Self::Io>> + Send;

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
    type Io = TcpStream;
    async fn accept(&self, stream: TcpStream) -> std::io::Result<Self::Io> {
        Ok(stream)
    }
}

impl Accept for Tls {
    type Io = TlsStream<TcpStream>;

    async fn accept(&self, stream: TcpStream) -> std::io::Result<Self::Io> {
        self.handshake(stream).await
    }

    fn negotiated_h2(io: &Self::Io) -> bool {
        Tls::negotiated_h2(io)
    }
}
