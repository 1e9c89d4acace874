//! TLS on the public listener (`[server.tls] cert`, `key`), with rustls: no OpenSSL,
//! ALPN offering h2 and http/1.1 so hyper-util's auto builder serves either.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// `[server.tls]`: PEM files, as written (both keys required, no others) and as used.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Accepts TLS connections with the certificate chain of `[server.tls]`, which
/// [`Tls::slot`] re-reads (SIGHUP, or its files changing) without a restart.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    slot: Arc<CertSlot>,
}

/// A certificate chain and key read from two PEM files, swapped whole when the files
/// hold a new valid pair: handshakes after the swap get the new one, connections
/// already open keep the one they shook hands with, and a bad new pair is refused
/// (logged) with the old one kept. Serves rustls as the server's certificate resolver
/// or as a client's (mutual TLS to the upstreams).
pub struct CertSlot {
    what: &'static str,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    /// The files' (length, modification time) when last read, to notice a change.
    seen: std::sync::Mutex<Option<FileStamp>>,
}

type FileStamp = [(u64, Option<std::time::SystemTime>); 2];

impl std::fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSlot")
            .field("what", &self.what)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertSlot {
    /// Reads the pair; `what` names the setting in logs (`server.tls`).
    pub fn load(what: &'static str, cert: &Path, key: &Path) -> Result<CertSlot, TlsError> {
        let seen = stamp(cert, key);
        let current = certified_key(cert, key)?;
        Ok(CertSlot {
            what,
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: std::sync::RwLock::new(current),
            seen: std::sync::Mutex::new(seen),
        })
    }

    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again and swaps in the pair when it is valid (SIGHUP). Returns
    /// the error, logged, when it is not; the old pair stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let seen = stamp(&self.cert, &self.key);
        *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = seen;
        match certified_key(&self.cert, &self.key) {
            Ok(new) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
                tracing::info!(what = self.what, cert = %self.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(
                    what = self.what,
                    %error,
                    "TLS certificate reload refused; the old certificate stays"
                );
                Err(error)
            }
        }
    }

    /// Reloads when either file changed since it was last read (Kubernetes and
    /// cert-manager rewrite them in place). Polled: no watcher to lose events.
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.cert, &self.key);
        let changed = {
            let seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            now.is_some() && *seen != now
        };
        if changed {
            let _ = self.reload();
        }
    }

    /// Polls the files every `every` until the process ends.
    pub fn watch(self: Arc<Self>, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let slot = self.clone();
                // Reading files blocks: off the async workers.
                let _ = tokio::task::spawn_blocking(move || slot.reload_if_changed()).await;
            }
        })
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The files' lengths and modification times, `None` when either cannot be read.
#[allow(
    clippy::disallowed_methods,
    reason = "metadata of two files, from the watcher's blocking thread or start-up"
)]
fn stamp(cert: &Path, key: &Path) -> Option<FileStamp> {
    let one = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    Some([one(cert)?, one(key)?])
}

/// A chain and its key, checked to belong together.
fn certified_key(cert: &Path, key: &Path) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let chain = read_certs(cert)?;
    let private = read_key(key)?;
    let provider = provider();
    rustls::sign::CertifiedKey::from_der(chain, private, &provider)
        .map(Arc::new)
        .map_err(|e| TlsError::Key {
            path: key.display().to_string(),
            message: format!("does not fit the certificate {}: {e}", cert.display()),
        })
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
        let slot = Arc::new(CertSlot::load("server.tls", &config.cert, &config.key)?);
        let provider = Arc::new(provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(slot.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            slot,
        })
    }

    /// The certificate this listener serves, for reloads.
    pub fn slot(&self) -> Arc<CertSlot> {
        self.slot.clone()
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
    identity: Option<Arc<CertSlot>>,
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
    let provider = Arc::new(provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("upstream.tls")(e.to_string()))?
        .with_root_certificates(roots);
    let client = match identity {
        Some(slot) => builder.with_client_cert_resolver(slot),
        None => builder.with_no_client_auth(),
    };
    // ALPN (http/1.1) is the connector's to set: hyper-rustls refuses a preset one.
    Ok(client)
}

impl TlsError {
    /// The file and the problem, without the server setting's name.
    pub fn detail(&self) -> String {
        match self {
            TlsError::Cert { path, message } | TlsError::Key { path, message } => {
                format!("{path}: {message}")
            }
            TlsError::Config(message) => message.clone(),
        }
    }
}

impl Tls {
    /// The TLS handshake on an accepted connection.
    pub async fn handshake(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }

    /// Did the handshake settle on HTTP/2 (ALPN `h2`)?
    pub fn negotiated_h2(io: &TlsStream<TcpStream>) -> bool {
        io.get_ref().1.alpn_protocol() == Some(b"h2")
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

/// The crypto provider of every TLS configuration csgate makes: ring.
#[allow(
    deprecated,
    reason = "rustls 0.23.48 deprecates ring's provider for lacking post-quantum key \
              exchange; csgate and its Redis client are built on ring (no C toolchain \
              for aws-lc-rs), a choice to revisit on its own"
)]
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
