//! TLS on the public listener (`[server.tls] cert`, `key`), with rustls: no OpenSSL,
//! ALPN offering h2 and http/1.1 so hyper-util's auto builder serves either.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;
use crate::server::Accept;

/// Accepts TLS connections with one certificate chain.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
}

/// Why the certificate or key could not be used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.cert {path}: {message}")]
    Cert { path: String, message: String },
    #[error("server.tls.key {path}: {message}")]
    Key { path: String, message: String },
    #[error("server.tls: {0}")]
    Config(String),
}

impl Tls {
    pub fn load(config: &TlsConfig) -> Result<Tls, TlsError> {
        let certs = read_certs(&config.cert)?;
        let key = read_key(&config.key)?;
        #[allow(
            deprecated,
            reason = "rustls 0.23.48 deprecates ring's provider for lacking post-quantum key \
                      exchange; csgate and its Redis client are built on ring (no C toolchain \
                      for aws-lc-rs), a choice to revisit on its own"
        )]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        })
    }
}

impl Accept for Tls {
    type Io = TlsStream<TcpStream>;

    async fn accept(&self, stream: TcpStream) -> std::io::Result<Self::Io> {
        self.acceptor.accept(stream).await
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "TLS material is read once, at start-up and by --check, before anything is served"
)]
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError::Cert {
        path: path.display().to_string(),
        message,
    };
    let file = File::open(path).map_err(|e| error(e.to_string()))?;
    let certs = CertificateDer::pem_reader_iter(file)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no PEM certificate found".into()));
    }
    Ok(certs)
}

#[allow(
    clippy::disallowed_methods,
    reason = "TLS material is read once, at start-up and by --check, before anything is served"
)]
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let error = |message: String| TlsError::Key {
        path: path.display().to_string(),
        message,
    };
    let file = File::open(path).map_err(|e| error(e.to_string()))?;
    PrivateKeyDer::from_pem_reader(file).map_err(|e| match e {
        pem::Error::NoItemsFound => error("no PEM private key found".into()),
        other => error(other.to_string()),
    })
}
