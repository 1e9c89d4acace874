//! The `[upstream]` section: the file as written ([`RawUpstream`]), validated once into
//! [`UpstreamConfig`] (every URL checked, the `[upstream.tls]` client configuration
//! built), and the values derived from it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::policy::FailureSet;
use crate::settings::{at_least_one, defaults, invalid, positive, size, ConfigError, Size};
use crate::store::StoreConfig;

/// Step 1: `[upstream]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub urls: Option<Vec<String>>,
    pub path_prefix: Option<String>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub deadline: Option<String>,
    pub max_response_bytes: Option<Size>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_host: Option<usize>,
    pub retry_budget: Option<f64>,
    pub max_retries: Option<u32>,
    pub eject_after: Option<u32>,
    pub eject_for: Option<String>,
    pub eject_on: Option<Vec<String>>,
    pub retry_on: Option<Vec<String>>,
    pub preserve_host: Option<bool>,
    pub tls: RawUpstreamTls,
}

/// `[upstream.tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamTls {
    pub ca_file: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

/// Where requests go: remote Context Services backends, or the embedded reference store
/// that `app::run` starts when the config names no upstream.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// `[upstream] urls`, never empty.
    Urls(Vec<Url>),
    /// No URL configured: run the store with these `[store]` settings and use it.
    Embedded(StoreConfig),
}

/// `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The backends. The loader (`config`) turns an empty `urls` into
    /// [`Upstream::Embedded`].
    pub target: Upstream,
    /// Prefix of the Context Services API on the upstreams (when a URL has no path).
    pub path_prefix: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub deadline: Duration,
    pub max_response_bytes: usize,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub retry_budget: f64,
    pub max_retries: u32,
    pub eject_after: u32,
    pub eject_for: Duration,
    /// Outcomes that count toward `eject_after`.
    pub eject_on: FailureSet,
    /// Outcomes after which a bodiless GET/HEAD is tried at the next upstream.
    pub retry_on: FailureSet,
    /// Forward the client's `Host` instead of the upstream's own authority.
    pub preserve_host: bool,
    /// `[upstream.tls]`: how `https://` upstreams are verified (and csgate presents
    /// itself to them), built once.
    pub tls: UpstreamTls,
}

/// `[upstream.tls]`, with the client configuration it describes already built (the
/// files read and checked), so a bad file is a configuration error at start and in
/// `--check`, never a failure on the first request.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Trusted CAs: this PEM file, or the platform's trust store when unset.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain and key (PEM) for upstreams that ask for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name to verify the upstream's certificate against (and send as SNI) in
    /// place of each URL's host.
    pub server_name: Option<String>,
    /// The rustls client configuration; `None` when no upstream is `https://` and no
    /// `[upstream.tls]` key is set.
    pub client: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The client certificate, which reloads re-read (SIGHUP, the files changing).
    pub identity: Option<std::sync::Arc<crate::tls::CertSlot>>,
}

/// `[upstream]`: every URL checked (http, a host, no query), the prefix absolute, the
/// retry budget a fraction, `eject_on`/`retry_on` known outcome names or status codes.
impl TryFrom<RawUpstream> for UpstreamConfig {
    type Error = ConfigError;

    fn try_from(u: RawUpstream) -> Result<Self, ConfigError> {
        let urls = u
            .urls
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, text)| upstream_url(&format!("upstream.urls[{i}]"), text))
            .collect::<Result<Vec<_>, _>>()?;
        let path_prefix = u
            .path_prefix
            .unwrap_or_else(|| defaults::PATH_PREFIX.to_owned());
        if !path_prefix.starts_with('/') {
            return Err(invalid(
                "upstream.path_prefix",
                format!("'{path_prefix}' must start with '/'"),
            ));
        }
        let retry_budget = u.retry_budget.unwrap_or(defaults::RETRY_BUDGET);
        if !(0.0..=1.0).contains(&retry_budget) {
            return Err(invalid(
                "upstream.retry_budget",
                format!("{retry_budget} is not a fraction between 0 and 1"),
            ));
        }
        let tls = upstream_tls(u.tls, urls.iter().any(|url| url.scheme() == "https"))?;
        Ok(UpstreamConfig {
            tls,
            target: Upstream::Urls(urls),
            path_prefix: path_prefix.trim_end_matches('/').to_owned(),
            connect_timeout: positive(
                "upstream.connect_timeout",
                u.connect_timeout,
                defaults::CONNECT_TIMEOUT,
            )?,
            request_timeout: positive(
                "upstream.request_timeout",
                u.request_timeout,
                defaults::REQUEST_TIMEOUT,
            )?,
            deadline: positive("upstream.deadline", u.deadline, defaults::DEADLINE)?,
            max_response_bytes: size(
                "upstream.max_response_bytes",
                u.max_response_bytes,
                defaults::MAX_RESPONSE_BYTES,
            )?,
            pool_idle_timeout: positive(
                "upstream.pool_idle_timeout",
                u.pool_idle_timeout,
                defaults::POOL_IDLE_TIMEOUT,
            )?,
            pool_max_idle_per_host: u
                .pool_max_idle_per_host
                .unwrap_or(defaults::POOL_MAX_IDLE_PER_HOST),
            retry_budget,
            max_retries: u.max_retries.unwrap_or(defaults::MAX_RETRIES),
            eject_after: u32::try_from(at_least_one(
                "upstream.eject_after",
                u.eject_after.unwrap_or(defaults::EJECT_AFTER) as usize,
            )?)
            .map_err(|_| invalid("upstream.eject_after", "too large"))?,
            eject_for: positive("upstream.eject_for", u.eject_for, defaults::EJECT_FOR)?,
            eject_on: failures("upstream.eject_on", u.eject_on, defaults::EJECT_ON)?,
            retry_on: failures("upstream.retry_on", u.retry_on, defaults::RETRY_ON)?,
            preserve_host: u.preserve_host.unwrap_or(defaults::PRESERVE_HOST),
        })
    }
}

impl UpstreamConfig {
    /// The configured URLs; empty when the embedded store serves.
    pub fn urls(&self) -> &[Url] {
        match &self.target {
            Upstream::Urls(urls) => urls,
            Upstream::Embedded(_) => &[],
        }
    }

    /// How long a request waits for another request's fetch of the same cache key:
    /// the fetch's own deadline plus [`defaults::CACHE_WAIT_SLACK`].
    pub fn cache_wait(&self) -> Duration {
        self.deadline + defaults::CACHE_WAIT_SLACK
    }
}

fn upstream_url(key: &str, text: &str) -> Result<Url, ConfigError> {
    // A URL that may hold a credential is never echoed into an error (or a log).
    let url = Url::parse(text).map_err(|e| match text.contains('@') {
        true => invalid(key, e.to_string()),
        false => invalid(key, format!("'{text}': {e}")),
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        // Never echo the URL: it holds a credential.
        return Err(invalid(
            key,
            "credentials (user:password@) in an upstream URL are refused; they would not be sent",
        ));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            key,
            format!("'{text}': only http:// and https:// upstreams are supported"),
        ));
    }
    if url.host().is_none() {
        return Err(invalid(key, format!("'{text}': no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            key,
            format!("'{text}': a base URL has no query or fragment"),
        ));
    }
    Ok(url)
}

/// An `eject_on`/`retry_on` list: the default when absent, the first bad name named.
fn failures(
    key: &str,
    value: Option<Vec<String>>,
    default: &[&str],
) -> Result<FailureSet, ConfigError> {
    match value {
        None => FailureSet::parse(default),
        Some(names) => FailureSet::parse(&names),
    }
    .map_err(|m| invalid(key, m))
}

/// `[upstream.tls]` checked and built: a certificate needs its key and the other way
/// round, a `server_name` must be a DNS name or an IP address, and every file must load.
fn upstream_tls(t: RawUpstreamTls, https: bool) -> Result<UpstreamTls, ConfigError> {
    let identity = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                "upstream.tls.key",
                "is needed with upstream.tls.cert",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "upstream.tls.cert",
                "is needed with upstream.tls.key",
            ))
        }
    };
    if let Some(name) = &t.server_name {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            return Err(invalid(
                "upstream.tls.server_name",
                format!("'{name}' is not a DNS name or an IP address"),
            ));
        }
    }
    let identity = match identity {
        Some((cert, key)) => Some(std::sync::Arc::new(
            crate::tls::CertSlot::load("upstream.tls", cert, key).map_err(|e| {
                let key = match e {
                    crate::tls::TlsError::Cert { .. } => "upstream.tls.cert",
                    _ => "upstream.tls.key",
                };
                invalid(key, e.detail())
            })?,
        )),
        None => None,
    };
    let wanted = https || t.ca_file.is_some() || identity.is_some() || t.server_name.is_some();
    let client = if wanted {
        let client = crate::tls::upstream_client_config(t.ca_file.as_deref(), identity.clone())
            .map_err(|e| invalid(e.key(), e.to_string()))?;
        Some(std::sync::Arc::new(client))
    } else {
        None
    };
    Ok(UpstreamTls {
        ca_file: t.ca_file,
        cert: t.cert,
        key: t.key,
        server_name: t.server_name,
        client,
        identity,
    })
}
