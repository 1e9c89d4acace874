//! Step 2: the validated settings, one type per section, each built by one documented
//! `TryFrom<Raw…>` that parses every value once and names the key at fault; and the
//! values derived from them, as methods, so each formula is written once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::parse::{
    addr, at_least_one, duration, failures, header_value, positive, size, upstream_url,
};
use super::raw::{RawAdmin, RawCache, RawLog, RawServer, RawStore, RawUpstream, RawUpstreamTls};
use super::{defaults, invalid, Cidr, ConfigError};
use crate::cache::Policy;
use crate::query::params::Limits;
use crate::query::TypeMap;
use crate::server::{limits, ServeOptions};
use crate::store::StoreConfig;
use crate::upstream::FailureSet;

/// `[server]`: the public listener and request limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    /// Time spent waiting for a request body, summed; past it 408.
    pub body_read_timeout: Duration,
    pub max_inflight: usize,
    pub max_query_bytes: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub max_key_bytes: usize,
    /// Longest `ContactCenterId` or `GroupId` value; longer is 400.
    pub max_tenant_bytes: usize,
    /// Keep-alive connections with no request in flight are closed after this.
    pub idle_timeout: Duration,
    /// Open public connections; `None`: derived from the open-file limit at start.
    pub max_connections: Option<usize>,
    /// Request header fields; more get 431.
    pub max_headers: usize,
    /// After SIGTERM, requests on open connections are still answered (with
    /// `Connection: close`) for this long before connections are closed.
    pub drain_delay: Duration,
    /// Peers whose `Forwarded`/`X-Forwarded-*`/`X-Real-IP` headers are extended rather
    /// than replaced.
    pub trusted_proxies: Vec<Cidr>,
    /// The pseudonym csgate adds to `Via`; `None` (configured empty) adds none.
    pub via: Option<String>,
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: PEM files.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[server]`: durations and sizes parsed, counts at least one; `max_connections` left
/// absent when not set (the default depends on the open-file limit at start).
impl TryFrom<RawServer> for ServerConfig {
    type Error = ConfigError;

    fn try_from(s: RawServer) -> Result<Self, ConfigError> {
        Ok(ServerConfig {
            listen: addr("server.listen", s.listen.as_deref(), defaults::LISTEN)?,
            shutdown_grace: duration(
                "server.shutdown_grace",
                s.shutdown_grace,
                defaults::SHUTDOWN_GRACE,
            )?,
            header_read_timeout: positive(
                "server.header_read_timeout",
                s.header_read_timeout,
                defaults::HEADER_READ_TIMEOUT,
            )?,
            body_read_timeout: positive(
                "server.body_read_timeout",
                s.body_read_timeout,
                defaults::BODY_READ_TIMEOUT,
            )?,
            max_inflight: at_least_one(
                "server.max_inflight",
                s.max_inflight.unwrap_or(defaults::MAX_INFLIGHT),
            )?,
            max_query_bytes: size(
                "server.max_query_bytes",
                s.max_query_bytes,
                defaults::MAX_QUERY_BYTES,
            )?,
            max_header_bytes: size(
                "server.max_header_bytes",
                s.max_header_bytes,
                defaults::MAX_HEADER_BYTES,
            )?,
            max_body_bytes: size(
                "server.max_body_bytes",
                s.max_body_bytes,
                defaults::MAX_BODY_BYTES,
            )?,
            max_key_bytes: size(
                "server.max_key_bytes",
                s.max_key_bytes,
                defaults::MAX_KEY_BYTES,
            )?,
            max_tenant_bytes: size(
                "server.max_tenant_bytes",
                s.max_tenant_bytes,
                defaults::MAX_TENANT_BYTES,
            )?,
            idle_timeout: positive(
                "server.idle_timeout",
                s.idle_timeout,
                defaults::IDLE_TIMEOUT,
            )?,
            max_connections: s
                .max_connections
                .map(|n| at_least_one("server.max_connections", n))
                .transpose()?,
            max_headers: at_least_one(
                "server.max_headers",
                s.max_headers.unwrap_or(defaults::MAX_HEADERS),
            )?,
            drain_delay: duration("server.drain_delay", s.drain_delay, defaults::DRAIN_DELAY)?,
            trusted_proxies: s
                .trusted_proxies
                .unwrap_or_else(|| {
                    defaults::TRUSTED_PROXIES
                        .iter()
                        .map(|t| (*t).to_owned())
                        .collect()
                })
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    text.parse::<Cidr>()
                        .map_err(|m| invalid(&format!("server.trusted_proxies[{i}]"), m))
                })
                .collect::<Result<_, _>>()?,
            via: via(s.via.as_deref().unwrap_or(defaults::VIA))?,
            tls: s.tls.map(|t| TlsConfig {
                cert: t.cert,
                key: t.key,
            }),
        })
    }
}

/// `[server] via`: empty disables `Via`; otherwise a token (RFC 9110 `pseudonym`) or
/// a `host:port`, so it cannot break the header it is written into.
fn via(text: &str) -> Result<Option<String>, ConfigError> {
    if text.is_empty() {
        return Ok(None);
    }
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:".contains(c);
    if !text.chars().all(tchar) {
        return Err(invalid(
            "server.via",
            format!("'{text}' is not a token such as \"csgate\" (or empty to send no Via)"),
        ));
    }
    Ok(Some(text.to_owned()))
}

impl ServerConfig {
    /// Connection settings of the public listener. hyper's read buffer is four times
    /// the gateway's own head limits (and at least [`defaults::PUBLIC_MAX_BUF_FLOOR`]),
    /// and hyper's header count twice the gateway's (at least twice
    /// [`defaults::MAX_HEADERS`]), so the gateway answers 414/431 itself, in the CS error
    /// shape. Without `max_connections` the cap follows the open-file limit (read now,
    /// after start-up has raised it).
    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self
                .max_connections
                .unwrap_or_else(limits::default_max_connections),
            max_headers: self
                .max_headers
                .saturating_mul(2)
                .max(2 * defaults::MAX_HEADERS),
            drain_delay: self.drain_delay,
            max_buf_size: ((self.max_header_bytes + self.max_query_bytes) * 4)
                .max(defaults::PUBLIC_MAX_BUF_FLOOR),
            shutdown_grace: self.shutdown_grace,
            // Set from `[limits.connections]` where the listener is started.
            limits: None,
        }
    }

    /// The Query Services parameter limits: the configured key length, the contract's
    /// filter count.
    pub fn limits(&self) -> Limits {
        Limits {
            max_key_bytes: self.max_key_bytes,
            max_filters: defaults::MAX_FILTERS,
        }
    }
}

/// Where requests go: remote Context Services backends, or the embedded reference store
/// that `app::run` starts when the config names no upstream.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// `[upstream] urls`, never empty.
    Urls(Vec<Url>),
    /// No URL configured: run the store with these `[store]` settings and use it.
    Embedded(StoreSettings),
}

/// `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The backends. `RawConfig::validate` turns an empty `urls` into
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

/// `[cache]`.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub enabled: bool,
    pub ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub max_bytes: usize,
    pub max_entry_bytes: usize,
    pub share_across_credentials: bool,
    /// `Cache-Control` on the Query Services answers csgate computes.
    pub downstream_cache_control: http::HeaderValue,
}

/// `[cache]`: durations and sizes parsed; one entry never larger than the whole cache.
impl TryFrom<RawCache> for CacheConfig {
    type Error = ConfigError;

    fn try_from(c: RawCache) -> Result<Self, ConfigError> {
        let cache = CacheConfig {
            enabled: c.enabled.unwrap_or(defaults::CACHE_ENABLED),
            ttl: duration("cache.ttl", c.ttl, defaults::CACHE_TTL)?,
            stale_while_revalidate: duration(
                "cache.stale_while_revalidate",
                c.stale_while_revalidate,
                defaults::CACHE_STALE_WHILE_REVALIDATE,
            )?,
            stale_if_error: duration(
                "cache.stale_if_error",
                c.stale_if_error,
                defaults::CACHE_STALE_IF_ERROR,
            )?,
            max_bytes: size("cache.max_bytes", c.max_bytes, defaults::CACHE_MAX_BYTES)?,
            max_entry_bytes: size(
                "cache.max_entry_bytes",
                c.max_entry_bytes,
                defaults::CACHE_MAX_ENTRY_BYTES,
            )?,
            share_across_credentials: c
                .share_across_credentials
                .unwrap_or(defaults::CACHE_SHARE_ACROSS_CREDENTIALS),
            downstream_cache_control: header_value(
                "cache.downstream_cache_control",
                c.downstream_cache_control.as_deref(),
                defaults::DOWNSTREAM_CACHE_CONTROL,
            )?,
        };
        if cache.max_entry_bytes > cache.max_bytes {
            return Err(invalid(
                "cache.max_entry_bytes",
                "must not exceed cache.max_bytes",
            ));
        }
        Ok(cache)
    }
}

impl CacheConfig {
    /// The freshness times, as the cache applies them (also on reload).
    pub fn policy(&self) -> Policy {
        Policy {
            ttl: self.ttl,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The bearer token every admin request but `/healthz` and `/readyz` (and
    /// `/metrics` while `metrics_open`) must carry; `None` asks for none.
    pub token: Option<AdminToken>,
    /// `/metrics` without the token (Prometheus scrapes it).
    pub metrics_open: bool,
}

/// The admin bearer token, kept only as its SHA-256 digest: compared in constant time
/// (digest against digest, whatever the lengths), never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    /// The token a file holds: its text without surrounding whitespace (a trailing
    /// newline is usual). Empty is an error: it would let everyone in.
    pub fn from_file(key: &str, path: &std::path::Path) -> Result<AdminToken, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                key,
                format!("cannot read the token file '{}': {e}", path.display()),
            )
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(invalid(
                key,
                format!("the token file '{}' is empty", path.display()),
            ));
        }
        Ok(AdminToken::new(token.as_bytes()))
    }

    pub fn new(token: &[u8]) -> AdminToken {
        use sha2::{Digest, Sha256};
        AdminToken(Sha256::digest(token).into())
    }

    /// Does `presented` (the bearer token of a request) match? Constant time in the
    /// token's content: both sides are hashed, and the digests compared byte for byte
    /// without an early exit.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let other = AdminToken::new(presented);
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// `[admin]`: the address parsed (that it differs from `server.listen` is checked by
/// `RawConfig::validate`, which sees both) and the token file read.
impl TryFrom<RawAdmin> for AdminConfig {
    type Error = ConfigError;

    fn try_from(a: RawAdmin) -> Result<Self, ConfigError> {
        let token = match &a.token_file {
            Some(path) => Some(AdminToken::from_file("admin.token_file", path)?),
            None => None,
        };
        Ok(AdminConfig {
            listen: addr("admin.listen", a.listen.as_deref(), defaults::ADMIN_LISTEN)?,
            token,
            metrics_open: a.metrics_open.unwrap_or(true),
        })
    }
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `csgate=debug`.
    pub level: String,
    /// Hash contact keys and customer ids in logs.
    pub redact: bool,
    /// The HMAC key for redaction (`CSGATE_REDACT_KEY` wins over it).
    pub redact_key_file: Option<PathBuf>,
}

/// `[log]`: the format one of the two known, the level a valid `tracing` filter, the
/// redaction key file (when named) readable and not empty.
impl TryFrom<RawLog> for LogConfig {
    type Error = ConfigError;

    fn try_from(l: RawLog) -> Result<Self, ConfigError> {
        let format = match l.format.as_deref().unwrap_or(defaults::LOG_FORMAT) {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("'{other}' is not one of: text, json"),
                ))
            }
        };
        let level = l.level.unwrap_or_else(|| defaults::LOG_LEVEL.to_owned());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            return Err(invalid(
                "log.level",
                format!("'{level}' is not a valid filter: {e}"),
            ));
        }
        // `tracing` reads a bare word that is not a level ("warning") as a target with
        // every level on, so nothing else is ever logged: refused, naming the fix.
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        for directive in level.split(',').map(str::trim) {
            let bare = !directive.contains(['=', '[']);
            if bare
                && !directive.is_empty()
                && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive))
            {
                return Err(invalid(
                    "log.level",
                    format!(
                        "'{directive}' is not a level (one of {}); to log every level of a \
                         target write '{directive}=trace'",
                        LEVELS.join(", ")
                    ),
                ));
            }
        }
        if let Some(path) = &l.redact_key_file {
            match std::fs::read(path) {
                Ok(key) if !key.trim_ascii().is_empty() => {}
                Ok(_) => return Err(invalid("log.redact_key_file", "the key file is empty")),
                Err(e) => {
                    return Err(invalid(
                        "log.redact_key_file",
                        format!("cannot read {}: {e}", path.display()),
                    ))
                }
            }
        }
        Ok(LogConfig {
            format,
            level,
            redact: l.redact.unwrap_or(defaults::LOG_REDACT),
            redact_key_file: l.redact_key_file,
        })
    }
}

/// `[store]`: the reference store, embedded or run with `csgate store`.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub db: PathBuf,
    pub legacy: bool,
    pub sweep_interval: Duration,
    /// SQLite's heap limit, which also sizes every connection's page cache.
    pub max_memory_bytes: usize,
}

impl StoreSettings {
    /// What the store is opened with: these settings, the business-attribute maps
    /// (shared with the gateway), and the store's body bound.
    pub fn store_config(&self, business_attributes: &BTreeMap<String, TypeMap>) -> StoreConfig {
        StoreConfig {
            db: self.db.clone(),
            legacy: self.legacy,
            business_attributes: business_attributes.clone(),
            sweep_interval: self.sweep_interval,
            max_body_bytes: defaults::STORE_MAX_BODY_BYTES,
            max_memory_bytes: self.max_memory_bytes,
        }
    }
}

/// `[store]`: the sweep interval positive, the memory limit at least 1 MiB.
impl TryFrom<RawStore> for StoreSettings {
    type Error = ConfigError;

    fn try_from(st: RawStore) -> Result<Self, ConfigError> {
        let max_memory_bytes = size(
            "store.max_memory_bytes",
            st.max_memory_bytes,
            defaults::STORE_MAX_MEMORY_BYTES,
        )?;
        if max_memory_bytes < defaults::STORE_MIN_MEMORY_BYTES {
            return Err(invalid("store.max_memory_bytes", "must be at least 1MiB"));
        }
        Ok(StoreSettings {
            max_memory_bytes,
            db: st.db.unwrap_or_else(|| PathBuf::from(defaults::STORE_DB)),
            legacy: st.legacy.unwrap_or(defaults::STORE_LEGACY),
            sweep_interval: positive(
                "store.sweep_interval",
                st.sweep_interval,
                defaults::STORE_SWEEP_INTERVAL,
            )?,
        })
    }
}

/// `[business_attributes.*]`: names non-empty and not integers, IDs unique per map.
pub(super) fn business_attributes(
    raw: BTreeMap<String, BTreeMap<String, i64>>,
) -> Result<BTreeMap<String, TypeMap>, ConfigError> {
    let mut out = BTreeMap::new();
    for (attribute, pairs) in raw {
        let mut seen = BTreeMap::new();
        for (name, id) in &pairs {
            if name.is_empty() {
                return Err(invalid(
                    &format!("business_attributes.{attribute}"),
                    "empty name",
                ));
            }
            if name.parse::<i64>().is_ok() {
                return Err(invalid(
                    &format!("business_attributes.{attribute}.{name}"),
                    "a name must not be an integer (it would be read as an ID)",
                ));
            }
            if let Some(other) = seen.insert(*id, name.clone()) {
                return Err(invalid(
                    &format!("business_attributes.{attribute}.{name}"),
                    format!("ID {id} is already used by '{other}'"),
                ));
            }
        }
        out.insert(attribute, TypeMap::new(pairs));
    }
    Ok(out)
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
