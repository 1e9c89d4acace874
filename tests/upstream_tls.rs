//! `https://` upstreams: verified against `[upstream.tls] ca_file` (or the platform's
//! trust store), with a `server_name` override and a client certificate for upstreams
//! that ask for one. A certificate that does not verify is a connect failure: 502 in
//! the CS error shape, and a log line that names the cause.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use common::process::{json_logs, Process};
use common::*;

const ANSWER: &str = r#"[{"service_id":7}]"#;

/// A certificate authority the test makes.
struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA");
        let issuer = rcgen::Issuer::new(params, key);
        Ca { cert, issuer }
    }

    /// A leaf for `names`, valid now unless `expired`.
    fn issue(&self, names: &[&str], expired: bool) -> (rcgen::Certificate, KeyPair) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert, key)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// An HTTPS upstream answering `ANSWER` to every request, with `cert` for its name; when
/// `client_ca` is given it requires a client certificate that CA issued.
struct TlsUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    /// The client certificate (DER) each handshake presented, in order.
    clients: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl TlsUpstream {
    async fn start(cert: &rcgen::Certificate, key: &KeyPair, client_ca: Option<&Ca>) -> Self {
        let provider = Arc::new(csgate::tls::provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.cert.der().clone()).expect("root");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = builder
            .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], key)
            .expect("server config");
        // Full handshakes only: a resumed session would carry the first client
        // certificate over and hide a rotation.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let clients = Arc::new(std::sync::Mutex::new(Vec::new()));
        let presented = clients.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                let presented = presented.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Some(chain) = tls.get_ref().1.peer_certificates() {
                        presented
                            .lock()
                            .expect("clients")
                            .push(chain[0].as_ref().to_vec());
                    }
                    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let mut response = Response::new(Full::new(Bytes::from(ANSWER)));
                            response.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            // A handshake per request: the client certificate shows.
                            response.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            requests,
            clients,
        }
    }

    fn url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.addr.port())
    }
}

/// A csgate process in front of `url` with `[upstream.tls]` lines; its answer to a
/// Query Services request.
async fn through_csgate(url: &str, tls: &str) -> (Process, Answer) {
    let config = json_logs(&format!(
        "[upstream]\nurls = [\"{url}\"]\n[upstream.tls]\n{tls}"
    ));
    let process = Process::start(&config, &[]).await;
    let answer = get(&process.url("/genesys/1/cs/customers/C1/services")).await;
    (process, answer)
}

fn path_line(key: &str, path: &Path) -> String {
    format!("{key} = {:?}\n", path.display().to_string())
}

#[tokio::test]
async fn a_trusted_upstream_answers_and_untrusted_ones_are_502_with_the_cause_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("csgate test CA");
    let other_ca = Ca::new("another CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());
    let other_ca_file = write(dir.path(), "other-ca.pem", &other_ca.cert.pem());

    let (cert, key) = ca.issue(&["localhost"], false);
    let good = TlsUpstream::start(&cert, &key, None).await;
    let (_p, answer) =
        through_csgate(&good.url("localhost"), &path_line("ca_file", &ca_file)).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, ANSWER));

    // Wrong CA, wrong name, expired: each refused at the handshake, never retried as
    // if the upstream had answered, and the log line names why.
    let (other_name, other_key) = ca.issue(&["upstream.example"], false);
    let misnamed = TlsUpstream::start(&other_name, &other_key, None).await;
    let (expired_cert, expired_key) = ca.issue(&["localhost"], true);
    let expired = TlsUpstream::start(&expired_cert, &expired_key, None).await;
    let cases = [
        (&good, path_line("ca_file", &other_ca_file), "UnknownIssuer"),
        (
            &misnamed,
            path_line("ca_file", &ca_file),
            "not valid for name",
        ),
        (&expired, path_line("ca_file", &ca_file), "expired"),
    ];
    for (upstream, tls, cause) in cases {
        let served_before = upstream.requests.load(Ordering::SeqCst);
        let (process, answer) = through_csgate(&upstream.url("localhost"), &tls).await;
        assert_eq!(answer.status, 502, "{cause}: {}", answer.text());
        assert_eq!(answer.json()["exception"], "UpstreamUnavailable", "{cause}");
        let line = process
            .wait_for_line(|l| l.contains("upstream request failed"))
            .await;
        assert!(line.contains(cause), "{cause} not in {line}");
        assert_eq!(
            upstream.requests.load(Ordering::SeqCst),
            served_before,
            "{cause}: no request reached the upstream"
        );
    }

    // `server_name` verifies (and sends as SNI) another name than the URL's host.
    let (_p, answer) = through_csgate(
        &misnamed.url("127.0.0.1"),
        &format!(
            "{}server_name = \"upstream.example\"\n",
            path_line("ca_file", &ca_file)
        ),
    )
    .await;
    assert_eq!((answer.status, answer.text().as_str()), (200, ANSWER));
}

#[tokio::test]
async fn an_upstream_that_asks_for_a_client_certificate_gets_the_configured_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("csgate test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());
    let (cert, key) = ca.issue(&["localhost"], false);
    let upstream = TlsUpstream::start(&cert, &key, Some(&ca)).await;

    let (process, answer) =
        through_csgate(&upstream.url("localhost"), &path_line("ca_file", &ca_file)).await;
    assert_eq!(
        answer.status,
        502,
        "no client certificate: {}",
        answer.text()
    );
    let line = process
        .wait_for_line(|l| l.contains("upstream request failed"))
        .await;
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    drop(process);

    let (client_cert, client_key) = ca.issue(&["csgate-client"], false);
    let cert_file = write(dir.path(), "client.pem", &client_cert.pem());
    let key_file = write(dir.path(), "client.key", &client_key.serialize_pem());
    let tls = format!(
        "{}{}{}",
        path_line("ca_file", &ca_file),
        path_line("cert", &cert_file),
        path_line("key", &key_file)
    );
    let (_p, answer) = through_csgate(&upstream.url("localhost"), &tls).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, ANSWER));
}

#[test]
fn broken_upstream_tls_settings_are_refused_naming_the_key() {
    use csgate::config::{Config, Overrides};
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = write(dir.path(), "not.pem", "not a certificate");
    let cases = [
        (path_line("ca_file", &not_pem), "upstream.tls.ca_file"),
        (path_line("cert", &not_pem), "upstream.tls.key"),
        (
            "server_name = \"not a name\"\n".to_owned(),
            "upstream.tls.server_name",
        ),
    ];
    for (tls, key) in cases {
        let toml = format!("[upstream]\nurls = [\"https://gms.example\"]\n[upstream.tls]\n{tls}");
        let error = Config::from_toml(&toml, Path::new("t.toml"), &Overrides::default())
            .expect_err(key)
            .to_string();
        assert!(error.contains(key), "{key}: {error}");
    }
}

/// Rewrites a PEM file the way Kubernetes and cert-manager do: a new file renamed over
/// the old one, so a reader never sees half of it.
fn replace(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

/// The client certificate rotates without a restart: when its files change, the next
/// handshakes present the new one; a pair that does not fit is refused, logged, and
/// the old certificate stays.
#[tokio::test]
async fn the_upstream_client_certificate_rotates_when_its_files_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("csgate test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());
    let (cert, key) = ca.issue(&["localhost"], false);
    let upstream = TlsUpstream::start(&cert, &key, Some(&ca)).await;
    let (first, first_key) = ca.issue(&["csgate-client-1"], false);
    let cert_file = write(dir.path(), "client.pem", &first.pem());
    let key_file = write(dir.path(), "client.key", &first_key.serialize_pem());
    let tls = format!(
        "{}{}{}",
        path_line("ca_file", &ca_file),
        path_line("cert", &cert_file),
        path_line("key", &key_file)
    );
    let (process, answer) = through_csgate(&upstream.url("localhost"), &tls).await;
    assert_eq!(answer.status, 200);
    let presented = |n: usize| upstream.clients.lock().expect("clients").get(n).cloned();
    assert_eq!(presented(0).as_deref(), Some(first.der().as_ref()));

    // A key that does not fit the certificate: refused, the old pair keeps working.
    let (second, second_key) = ca.issue(&["csgate-client-2"], false);
    replace(&cert_file, &second.pem());
    process
        .wait_for_line(|l| l.contains("TLS certificate reload refused"))
        .await;
    let answer = get(&process.url("/genesys/1/cs/customers/C1/services")).await;
    assert_eq!(answer.status, 200);
    let last = upstream.clients.lock().expect("clients").len() - 1;
    assert_eq!(presented(last).as_deref(), Some(first.der().as_ref()));

    // The matching key arrives: the next handshakes present the new certificate.
    replace(&key_file, &second_key.serialize_pem());
    process
        .wait_for_line(|l| l.contains("TLS certificate reloaded"))
        .await;
    let answer = get(&process.url("/genesys/1/cs/customers/C1/services")).await;
    assert_eq!(answer.status, 200);
    let last = upstream.clients.lock().expect("clients").len() - 1;
    assert_eq!(presented(last).as_deref(), Some(second.der().as_ref()));
}

/// The public listener's certificate rotates on SIGHUP and when its files change; a
/// connection opened before keeps working, and a bad new pair leaves the old one.
#[tokio::test]
async fn the_listeners_certificate_rotates_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = FakeUpstream::start(Reply::json(200, ANSWER)).await;
    let first = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_file = write(dir.path(), "cert.pem", &first.cert.pem());
    let key_file = write(dir.path(), "key.pem", &first.signing_key.serialize_pem());
    let config = json_logs(&format!(
        "[server.tls]\n{}{}",
        path_line("cert", &cert_file),
        path_line("key", &key_file)
    ));
    let process = Process::start(&config, &["--upstream", &upstream.url()]).await;
    let addr: SocketAddr = process.listen.parse().expect("address");
    let path = "/genesys/1/cs/customers/C1/services";
    let answer = get_tls(addr, "localhost", first.cert.der().clone(), path).await;
    assert_eq!(answer.status, 200);
    let open = TlsConnection::open(addr, first.cert.der().clone()).await;

    // A certificate without its key: refused on SIGHUP, the old one serves.
    let second = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    replace(&cert_file, &second.cert.pem());
    process.signal("HUP");
    process
        .wait_for_line(|l| l.contains("TLS certificate reload refused"))
        .await;
    let answer = get_tls(addr, "localhost", first.cert.der().clone(), path).await;
    assert_eq!(answer.status, 200);

    // Its key arrives: the file change is noticed; new handshakes get the new one.
    replace(&key_file, &second.signing_key.serialize_pem());
    process
        .wait_for_line(|l| l.contains("TLS certificate reloaded"))
        .await;
    let answer = get_tls(addr, "localhost", second.cert.der().clone(), path).await;
    assert_eq!(answer.status, 200);
    // The connection opened before the rotation still works, on the old certificate.
    assert_eq!(open.get(path).await, 200);
}

/// One TLS connection kept open across requests.
struct TlsConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl TlsConnection {
    async fn open(addr: SocketAddr, root: CertificateDer<'static>) -> TlsConnection {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).expect("root");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(csgate::tls::provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = connector.connect(name, tcp).await.expect("handshake");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("http");
        tokio::spawn(connection);
        TlsConnection { sender }
    }

    async fn get(mut self, path: &str) -> u16 {
        let request = Request::builder()
            .uri(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = self.sender.send_request(request).await.expect("answer");
        response.status().as_u16()
    }
}
