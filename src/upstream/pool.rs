//! The pool of upstream targets: each base URL parsed once, the keep-alive client
//! (hyper-util, TLS through rustls), round-robin selection over the targets in rotation
//! (or all of them in panic mode), and the recording of every outcome against a
//! target's health. The TCP probe of half-open targets runs here too.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use url::Url;

use super::config::{UpstreamConfig, UpstreamTls};
use super::health::{Change, Health, State, TrialGuard};
use super::policy::{Outcome, RetryBudget};
use crate::httputil::Body;

/// Receives one call per attempt, and one more when an answer's body fails (metrics).
pub type AttemptObserver = Arc<dyn Fn(&str, Outcome, Duration) + Send + Sync>;

/// One upstream base URL and its health.
#[derive(Debug)]
pub struct Target {
    /// `scheme://host:port` — used in metrics and logs, never in client messages.
    pub label: Arc<str>,
    /// `scheme://authority` + path prefix, no trailing slash.
    base: String,
    /// `base` in parts, parsed once: `scheme://authority` (`None` if it does not parse
    /// as a URI, when requests are built from `base` as text) and the path prefix.
    pub(super) origin: Option<(Scheme, Authority)>,
    prefix: String,
    health: Health,
}

impl Target {
    /// The URI of a request for `path_and_query`: the same as parsing `base` followed by
    /// it, without formatting and re-parsing the origin for every request (~1k
    /// instructions, callgrind).
    pub(super) fn uri(&self, path_and_query: &str) -> Uri {
        let parsed = || -> Option<Uri> {
            let (scheme, authority) = self.origin.clone()?;
            let path_and_query = if self.prefix.is_empty() {
                PathAndQuery::try_from(path_and_query)
            } else {
                let mut path = String::with_capacity(self.prefix.len() + path_and_query.len());
                path.push_str(&self.prefix);
                path.push_str(path_and_query);
                PathAndQuery::try_from(path)
            };
            let mut parts = uri::Parts::default();
            parts.scheme = Some(scheme);
            parts.authority = Some(authority);
            parts.path_and_query = Some(path_and_query.ok()?);
            Uri::from_parts(parts).ok()
        };
        parsed()
            .or_else(|| format!("{}{path_and_query}", self.base).parse().ok())
            .unwrap_or_else(|| Uri::from_static("/"))
    }
}

/// The set of upstreams. Cheap to clone.
#[derive(Clone)]
pub struct Upstreams {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) client: Client<HttpsConnector<HttpConnector>, Body>,
    pub(super) targets: Vec<Target>,
    next: AtomicUsize,
    pub(super) budget: RetryBudget,
    pub(super) config: UpstreamConfig,
    epoch: Instant,
    /// No target is in rotation: every one takes traffic anyway.
    panic: AtomicBool,
    observer: Option<AttemptObserver>,
}

/// A target chosen for one attempt; holds the half-open trial slot when it is a trial.
pub(super) struct Pick<'a> {
    pub(super) index: usize,
    _trial: Option<TrialGuard<'a>>,
}

impl Upstreams {
    /// Builds the pool for `urls` (the configured ones, or the embedded store's).
    pub fn new(
        config: &UpstreamConfig,
        urls: &[Url],
        observer: Option<AttemptObserver>,
    ) -> Upstreams {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        // The TLS layer below takes `https://` URIs; plain ones pass through it.
        connector.enforce_http(false);
        let connector = https_connector(&config.tls, connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let targets = urls
            .iter()
            .map(|url| {
                let authority = match url.port_or_known_default() {
                    Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
                    None => url.host_str().unwrap_or_default().to_owned(),
                };
                let origin = format!("{}://{authority}", url.scheme());
                let path = url.path().trim_end_matches('/');
                let prefix = if path.is_empty() {
                    config.path_prefix.as_str()
                } else {
                    path
                };
                let parsed = origin.parse::<Uri>().ok();
                Target {
                    label: Arc::from(origin.as_str()),
                    base: format!("{origin}{prefix}"),
                    origin: parsed.and_then(|uri| {
                        let parts = uri.into_parts();
                        Some((parts.scheme?, parts.authority?))
                    }),
                    prefix: prefix.to_owned(),
                    health: Health::default(),
                }
            })
            .collect();
        Upstreams {
            inner: Arc::new(Inner {
                client,
                targets,
                next: AtomicUsize::new(0),
                budget: RetryBudget::new(config.retry_budget),
                config: config.clone(),
                epoch: Instant::now(),
                panic: AtomicBool::new(false),
                observer,
            }),
        }
    }

    /// The targets, for health reporting.
    pub fn targets(&self) -> &[Target] {
        &self.inner.targets
    }

    /// Is this target in rotation (not ejected, not half-open)?
    pub fn is_healthy(&self, target: &Target) -> bool {
        target.health.in_rotation()
    }

    /// Requests are sent upstream: true whenever an upstream is configured, since panic
    /// mode sends traffic to ejected upstreams rather than refusing it. Readiness.
    pub fn takes_traffic(&self) -> bool {
        !self.inner.targets.is_empty()
    }

    /// Every target is ejected and all of them take traffic anyway.
    pub fn in_panic(&self) -> bool {
        self.inner.panic.load(Ordering::Acquire)
    }

    /// Keeps half-open targets that refuse a TCP connect out for another cool-down, so
    /// no client request is spent on them as a trial. Never brings a target back before
    /// `eject_for`, nor after it: only a request's answer does. Runs until dropped.
    pub async fn probe_loop(self) {
        let interval = (self.inner.config.eject_for / 4).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(interval).await;
            for target in &self.inner.targets {
                // Half-open and no trial in flight; the probe takes no trial slot, so
                // it never keeps a client request from being the trial.
                if !target.health.awaits_trial(self.now_ms()) {
                    continue;
                }
                let Some(authority) = target.label.split("://").nth(1) else {
                    continue;
                };
                let connect = tokio::net::TcpStream::connect(authority);
                if !matches!(
                    tokio::time::timeout(self.inner.config.connect_timeout, connect).await,
                    Ok(Ok(_))
                ) {
                    target.health.keep_out(self.now_ms(), self.eject_for_ms());
                }
            }
        }
    }

    /// Round-robin over the targets not yet tried: the first in rotation, or a half-open
    /// one whose trial slot is free. When no target at all is in rotation (panic mode),
    /// any target not yet tried.
    pub(super) fn pick(&self, tried: &[usize]) -> Option<Pick<'_>> {
        let targets = &self.inner.targets;
        let n = targets.len();
        if n == 0 {
            return None;
        }
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let untried = || {
            (0..n)
                .map(move |i| (start + i) % n)
                .filter(|i| !tried.contains(i))
        };
        for index in untried() {
            let health = &targets[index].health;
            match health.state(now) {
                State::InRotation => {
                    return Some(Pick {
                        index,
                        _trial: None,
                    })
                }
                State::HalfOpen => {
                    if let Some(trial) = health.try_trial(now) {
                        return Some(Pick {
                            index,
                            _trial: Some(trial),
                        });
                    }
                }
                State::Ejected => {}
            }
        }
        if targets.iter().any(|t| t.health.in_rotation()) {
            return None;
        }
        untried().next().map(|index| Pick {
            index,
            _trial: None,
        })
    }

    /// Feeds one outcome to the observer and to the target's health; logs ejections,
    /// returns, and panic mode starting or ending.
    pub(super) fn record(&self, index: usize, outcome: Outcome, elapsed: Duration) {
        let target = &self.inner.targets[index];
        if let Some(observer) = &self.inner.observer {
            observer(&target.label, outcome, elapsed);
        }
        let config = &self.inner.config;
        let change = if outcome == Outcome::ClientBody {
            Change::None
        } else if config.eject_on.names(outcome) {
            target
                .health
                .fail(self.now_ms(), config.eject_after, self.eject_for_ms())
        } else {
            target.health.succeed()
        };
        match change {
            Change::None => return,
            Change::Ejected { failures } => tracing::warn!(
                upstream = %target.label,
                failures,
                outcome = outcome.label(),
                cool_down = ?config.eject_for,
                "upstream ejected"
            ),
            Change::StillOut => tracing::debug!(
                upstream = %target.label,
                outcome = outcome.label(),
                "ejected upstream failed again; out for another cool-down"
            ),
            Change::Restored => {
                tracing::info!(upstream = %target.label, "upstream back in rotation");
            }
        }
        let panic = !self.inner.targets.iter().any(|t| t.health.in_rotation());
        if self.inner.panic.swap(panic, Ordering::AcqRel) != panic {
            if panic {
                tracing::warn!(
                    upstreams = self.inner.targets.len(),
                    "upstream panic mode: every upstream is ejected; sending traffic to all of them"
                );
            } else {
                tracing::info!(upstream = %target.label, "upstream panic mode ended");
            }
        }
    }

    pub(super) fn label(&self, index: usize) -> Arc<str> {
        self.inner.targets[index].label.clone()
    }

    fn eject_for_ms(&self) -> u64 {
        self.inner.config.eject_for.as_millis() as u64
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }
}

/// `http://` upstreams as they are; `https://` ones through rustls, verified against
/// `[upstream.tls]` (its CAs or the platform's, its `server_name` or the URL's host),
/// presenting its client certificate when one is configured. A certificate or name
/// that does not verify fails the connect, which the attempt logic treats and logs
/// like any connect failure (502, the cause in the log line).
fn https_connector(tls: &UpstreamTls, http: HttpConnector) -> HttpsConnector<HttpConnector> {
    let client = tls.client.as_deref().cloned().unwrap_or_else(|| {
        // No https:// upstream: a configuration that trusts nothing, never used.
        rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    });
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client)
        .https_or_http();
    // Checked to be a DNS name or an IP address by the configuration.
    let fixed = tls
        .server_name
        .as_deref()
        .and_then(|name| rustls::pki_types::ServerName::try_from(name.to_owned()).ok());
    let builder = match fixed {
        Some(name) => {
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    builder.enable_http1().wrap_connector(http)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams(toml: &str) -> Upstreams {
        let config =
            crate::config::Config::from_toml(toml, std::path::Path::new("t"), &Default::default())
                .expect("valid");
        Upstreams::new(&config.upstream, config.upstream.urls(), None)
    }

    #[test]
    fn targets_take_the_url_path_or_the_configured_prefix() {
        let ups = upstreams(
            "[upstream]\nurls = [\"http://a:81\", \"http://b/custom/cs/\"]\npath_prefix = \"/x/cs\"",
        );
        let bases: Vec<_> = ups.targets().iter().map(|t| t.base.as_str()).collect();
        assert_eq!(bases, ["http://a:81/x/cs", "http://b:80/custom/cs"]);
    }

    /// Built from parts, the request URI is the one parsing `base` + path used to give,
    /// fallback included.
    #[test]
    fn request_uris_equal_the_parsed_concatenation() {
        let ups = upstreams(
            "[upstream]\nurls = [\"http://a:81\", \"http://b/custom/cs/\", \"http://[::1]:8443\"]",
        );
        let paths = [
            "/customers/c1/services?active_states=true",
            "/services/anonymous/%2B1%20555?x=%C3%A9&y",
            "/",
            "",
            "/a b",
            "/genesys/1/cs/services/7/states",
        ];
        for target in ups.targets() {
            for path in paths {
                let before: Uri = format!("{}{path}", target.base)
                    .parse()
                    .unwrap_or_else(|_| Uri::from_static("/"));
                assert_eq!(target.uri(path), before, "{} + {path:?}", target.base);
                assert_eq!(target.uri(path).to_string(), before.to_string());
            }
        }
    }
}
