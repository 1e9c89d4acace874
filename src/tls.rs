//! TLS on the public listener (`[server.tls] cert`, `key`), with rustls: no OpenSSL,
//! ALPN offering h2 and http/1.1 so hyper-util's auto builder serves either.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

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

/// Why `[upstream.tls]` cannot be used; [`UpstreamTlsError::key`] names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UpstreamTlsError {
    key: &'static str,
    message: String,
}

impl UpstreamTlsError {
    pub fn key(&self) -> &'static str {
        self.key
    }
}

/// The rustls client configuration for `https://` upstreams: the CAs of `ca_file`, or
/// the platform's trust store; with `identity` (certificate chain and key files) a
/// client certificate for upstreams that ask for one (mutual TLS).
pub fn upstream_client_config(
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, UpstreamTlsError> {
    let fail = |key: &'static str| move |message: String| UpstreamTlsError { key, message };
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = read_certs(path).map_err(|e| fail("upstream.tls.ca_file")(e.detail()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(fail("upstream.tls.ca_file")(format!(
                    "{}: no usable CA certificate",
                    path.display()
                )));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(fail("upstream.tls.ca_file")(
                    "the platform's trust store holds no CA certificate; name one with \
                     upstream.tls.ca_file"
                        .to_owned(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("upstream.tls")(e.to_string()))?
        .with_root_certificates(roots);
    let client = match identity {
        Some((cert, key)) => {
            let chain = read_certs(cert).map_err(|e| fail("upstream.tls.cert")(e.detail()))?;
            let key = read_key(key).map_err(|e| fail("upstream.tls.key")(e.detail()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| fail("upstream.tls.key")(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    // ALPN (http/1.1) is the connector's to set: hyper-rustls refuses a preset one.
    Ok(client)
}

impl TlsError {
    /// The file and the problem, without the server setting's name.
    fn detail(&self) -> String {
        match self {
            TlsError::Cert { path, message } | TlsError::Key { path, message } => {
                format!("{path}: {message}")
            }
            TlsError::Config(message) => message.clone(),
        }
    }
}

impl Accept for Tls {
    type Io = TlsStream<TcpStream>;

    async fn accept(&self, stream: TcpStream) -> std::io::Result<Self::Io> {
        self.acceptor.accept(stream).await
    }

    fn negotiated_h2(io: &Self::Io) -> bool {
        io.get_ref().1.alpn_protocol() == Some(b"h2")
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "TLS material is read once, at start-up and by --check, before anything is served"
)]
fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError::Cert {
        path: path.display().to_string(),
        message,
    };
    let file = File::open(path).map_err(|e| error(e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
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
fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    let error = |message: String| TlsError::Key {
        path: path.display().to_string(),
        message,
    };
    let file = File::open(path).map_err(|e| error(e.to_string()))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| error(e.to_string()))?
        .ok_or_else(|| error("no PEM private key found".into()))
}
