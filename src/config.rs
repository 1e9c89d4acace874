//! Configuration: a serde mirror of the TOML file (`Raw*`, unknown keys refused),
//! validated once into typed settings (`Config`), with every default in one place.
//!
//! Precedence, highest first: command-line flags > environment (`CSGATE_*`) > file >
//! defaults. [`Overrides`] carries the first two; [`Config::load`] applies them in that
//! order, so there is exactly one function where precedence is decided.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::query::TypeMap;

/// Every default, each with the reason for its value.
pub mod defaults {
    use std::time::Duration;

    /// Loopback only: exposing the gateway is an explicit decision.
    pub const LISTEN: &str = "127.0.0.1:8080";
    /// Admin endpoints (purge, metrics) must never share the public port.
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
    /// Longer than any sane request, shorter than a Kubernetes 30 s termination grace.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
    /// A client that cannot send its headers in 10 s is broken or hostile (slowloris).
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Far above what one core serves at the target latency; past it, shed fast.
    pub const MAX_INFLIGHT: usize = 4096;
    /// Contract: a query string over 8 KiB is answered 414.
    pub const MAX_QUERY_BYTES: usize = 8 * 1024;
    /// Contract: request headers over 16 KiB are answered 431.
    pub const MAX_HEADER_BYTES: usize = 16 * 1024;
    /// Start/end bodies carry attached data; 1 MiB is generous and bounds memory.
    pub const MAX_BODY_BYTES: usize = 1024 * 1024;
    /// Contract: contact keys and customer ids are 1..=256 bytes by default.
    pub const MAX_KEY_BYTES: usize = 256;
    /// Contract: at most 32 extension filters.
    pub const MAX_FILTERS: usize = 32;

    /// GMS serves Context Services under this prefix.
    pub const PATH_PREFIX: &str = "/genesys/1/cs";
    /// Loopback/LAN connects take milliseconds; 2 s means the upstream is gone.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// One upstream attempt; Context Services queries are indexed look-ups.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// All attempts of one request together, retries included.
    pub const DEADLINE: Duration = Duration::from_secs(15);
    /// A Service[] answer larger than this is not a sane answer for one key.
    pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
    /// Keep-alive connections idle longer than this are closed.
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Enough idle connections per upstream to absorb a burst without reconnecting.
    pub const POOL_MAX_IDLE_PER_HOST: usize = 256;
    /// Retries may add at most 20% to upstream load (Envoy/Finagle retry budgets).
    pub const RETRY_BUDGET: f64 = 0.2;
    /// At most this many extra attempts per request.
    pub const MAX_RETRIES: u32 = 2;
    /// Consecutive failures before an upstream is ejected.
    pub const EJECT_AFTER: u32 = 5;
    /// Ejection cool-down before an active probe may bring it back.
    pub const EJECT_FOR: Duration = Duration::from_secs(10);

    /// Contract default: 30 s bounds staleness for writes that bypass the gateway.
    pub const CACHE_TTL: Duration = Duration::from_secs(30);
    /// A stale entry may be served for this long while one refresh runs.
    pub const CACHE_STALE_WHILE_REVALIDATE: Duration = Duration::from_secs(30);
    /// A stale entry may stand in for a failing upstream for this long.
    pub const CACHE_STALE_IF_ERROR: Duration = Duration::from_secs(300);
    /// Bounded in bytes, not entries: answers vary from 100 B to megabytes.
    pub const CACHE_MAX_BYTES: usize = 256 * 1024 * 1024;
    /// One runaway key must not evict thousands of normal ones.
    pub const CACHE_MAX_ENTRY_BYTES: usize = 1024 * 1024;
    /// Query Services answers are personal data: only csgate's own cache, which
    /// partitions by tenant and credential and is invalidated by writes, may keep them.
    /// `no-store` forbids every other cache, shared (a CDN, a proxy) or private; adding
    /// `private` would change nothing (RFC 9111 §5.2.2.5: no-store overrides it), and
    /// httplint warns that it is ignored.
    pub const DOWNSTREAM_CACHE_CONTROL: &str = "no-store";

    /// Relative to the working directory; `data/` is git-ignored.
    pub const STORE_DB: &str = "data/csgate-store.sqlite";
    /// Expiry and auto-complete are minute-grained in practice; 1 s is plenty.
    pub const STORE_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------
// Step 1: the file as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    upstream: RawUpstream,
    cache: RawCache,
    admin: RawAdmin,
    log: RawLog,
    store: RawStore,
    business_attributes: BTreeMap<String, BTreeMap<String, i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: Option<String>,
    shutdown_grace: Option<String>,
    header_read_timeout: Option<String>,
    max_inflight: Option<usize>,
    max_query_bytes: Option<Size>,
    max_header_bytes: Option<Size>,
    max_body_bytes: Option<Size>,
    max_key_bytes: Option<Size>,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    urls: Option<Vec<String>>,
    path_prefix: Option<String>,
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    deadline: Option<String>,
    max_response_bytes: Option<Size>,
    pool_idle_timeout: Option<String>,
    pool_max_idle_per_host: Option<usize>,
    retry_budget: Option<f64>,
    max_retries: Option<u32>,
    eject_after: Option<u32>,
    eject_for: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCache {
    enabled: Option<bool>,
    ttl: Option<String>,
    stale_while_revalidate: Option<String>,
    stale_if_error: Option<String>,
    max_bytes: Option<Size>,
    max_entry_bytes: Option<Size>,
    share_across_credentials: Option<bool>,
    downstream_cache_control: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
    redact: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    db: Option<PathBuf>,
    legacy: Option<bool>,
    sweep_interval: Option<String>,
}

/// A byte size: an integer, or a string such as `"8KiB"`, `"256MiB"`, `"1GiB"`, `"512B"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

// ---------------------------------------------------------------------------------
// Step 2: validated settings.

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub store: StoreSettings,
    /// `[business_attributes.<attribute>]` name = id maps; `service_type` drives
    /// `service_types` validation and matching.
    pub business_attributes: BTreeMap<String, TypeMap>,
}

/// `[server]`: the public listener and request limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    pub max_inflight: usize,
    pub max_query_bytes: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub max_key_bytes: usize,
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: PEM files.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URLs. Empty means "run the embedded store and use it".
    pub urls: Vec<Url>,
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

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
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
}

/// `[store]`: the embedded reference store.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub db: PathBuf,
    pub legacy: bool,
    pub sweep_interval: Duration,
}

/// Values from the command line and the environment that beat the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    /// Replaces `[upstream] urls` when non-empty.
    pub upstreams: Vec<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

impl Overrides {
    /// Reads `CSGATE_LISTEN`, `CSGATE_ADMIN_LISTEN`, `CSGATE_UPSTREAMS` (comma-separated),
    /// `CSGATE_LOG_LEVEL`, `CSGATE_LOG_FORMAT` from `vars` (pass `std::env::vars()`).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Overrides {
        let mut out = Overrides::default();
        for (name, value) in vars {
            match name.as_str() {
                "CSGATE_LISTEN" => out.listen = Some(value),
                "CSGATE_ADMIN_LISTEN" => out.admin_listen = Some(value),
                "CSGATE_UPSTREAMS" => {
                    out.upstreams = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "CSGATE_LOG_LEVEL" => out.log_level = Some(value),
                "CSGATE_LOG_FORMAT" => out.log_format = Some(value),
                _ => {}
            }
        }
        out
    }

    /// `self` (the command line) over `env`.
    pub fn over(self, env: Overrides) -> Overrides {
        Overrides {
            listen: self.listen.or(env.listen),
            admin_listen: self.admin_listen.or(env.admin_listen),
            upstreams: if self.upstreams.is_empty() {
                env.upstreams
            } else {
                self.upstreams
            },
            log_level: self.log_level.or(env.log_level),
            log_format: self.log_format.or(env.log_format),
        }
    }
}

impl Config {
    /// Reads `path` (or no file: all defaults), applies `overrides`, validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Config::from_toml(&text, path.unwrap_or(Path::new("<defaults>")), overrides)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(
        text: &str,
        origin: &Path,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        raw.apply(overrides);
        raw.validate()
    }

    /// The `service_type` map (empty when none is configured).
    pub fn service_types(&self) -> TypeMap {
        self.business_attributes
            .get("service_type")
            .cloned()
            .unwrap_or_default()
    }
}

impl Default for Config {
    fn default() -> Self {
        RawConfig::default()
            .validate()
            .expect("the built-in defaults are valid")
    }
}

impl RawConfig {
    fn apply(&mut self, o: &Overrides) {
        if let Some(listen) = &o.listen {
            self.server.listen = Some(listen.clone());
        }
        if let Some(listen) = &o.admin_listen {
            self.admin.listen = Some(listen.clone());
        }
        if !o.upstreams.is_empty() {
            self.upstream.urls = Some(o.upstreams.clone());
        }
        if let Some(level) = &o.log_level {
            self.log.level = Some(level.clone());
        }
        if let Some(format) = &o.log_format {
            self.log.format = Some(format.clone());
        }
    }

    fn validate(self) -> Result<Config, ConfigError> {
        let s = self.server;
        let server = ServerConfig {
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
            tls: s.tls.map(|t| TlsConfig {
                cert: t.cert,
                key: t.key,
            }),
        };

        let u = self.upstream;
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
        let upstream = UpstreamConfig {
            urls,
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
            eject_after: at_least_one(
                "upstream.eject_after",
                u.eject_after.unwrap_or(defaults::EJECT_AFTER) as usize,
            )? as u32,
            eject_for: positive("upstream.eject_for", u.eject_for, defaults::EJECT_FOR)?,
        };

        let c = self.cache;
        let cache = CacheConfig {
            enabled: c.enabled.unwrap_or(true),
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
            share_across_credentials: c.share_across_credentials.unwrap_or(false),
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

        let admin = AdminConfig {
            listen: addr(
                "admin.listen",
                self.admin.listen.as_deref(),
                defaults::ADMIN_LISTEN,
            )?,
        };
        if admin.listen == server.listen && admin.listen.port() != 0 {
            return Err(invalid(
                "admin.listen",
                "must differ from server.listen: admin endpoints never share the public port",
            ));
        }

        let l = self.log;
        let format = match l.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("'{other}' is not one of: text, json"),
                ))
            }
        };
        let level = l.level.unwrap_or_else(|| "info".to_owned());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            return Err(invalid(
                "log.level",
                format!("'{level}' is not a valid filter: {e}"),
            ));
        }
        let log = LogConfig {
            format,
            level,
            redact: l.redact.unwrap_or(true),
        };

        let st = self.store;
        let store = StoreSettings {
            db: st.db.unwrap_or_else(|| PathBuf::from(defaults::STORE_DB)),
            legacy: st.legacy.unwrap_or(false),
            sweep_interval: positive(
                "store.sweep_interval",
                st.sweep_interval,
                defaults::STORE_SWEEP_INTERVAL,
            )?,
        };

        let mut business_attributes = BTreeMap::new();
        for (attribute, pairs) in self.business_attributes {
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
            business_attributes.insert(attribute, TypeMap::new(pairs));
        }

        Ok(Config {
            server,
            upstream,
            cache,
            admin,
            log,
            store,
            business_attributes,
        })
    }
}

fn addr(key: &str, value: Option<&str>, default: &str) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or(default);
    text.parse().map_err(|_| {
        invalid(
            key,
            format!("'{text}' is not a socket address like 127.0.0.1:8080"),
        )
    })
}

/// A header value written in the file: visible ASCII, not empty.
fn header_value(
    key: &str,
    value: Option<&str>,
    default: &str,
) -> Result<http::HeaderValue, ConfigError> {
    let text = value.unwrap_or(default).trim();
    match http::HeaderValue::from_str(text) {
        Ok(v) if !text.is_empty() && text.is_ascii() => Ok(v),
        _ => Err(invalid(
            key,
            format!("'{text}' is not a header value (visible ASCII, not empty)"),
        )),
    }
}

fn upstream_url(key: &str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| invalid(key, format!("'{text}': {e}")))?;
    if url.scheme() != "http" {
        return Err(invalid(
            key,
            format!("'{text}': only http:// upstreams are supported"),
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

/// Parses a humantime duration such as `"2s"`, `"500ms"`, `"1m 30s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("'{text}' is not a duration: {e}"))
}

fn duration(key: &str, value: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => parse_duration(&text).map_err(|m| invalid(key, m)),
    }
}

fn positive(key: &str, value: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let d = duration(key, value, default)?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

fn at_least_one(key: &str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(value)
}

/// Parses `"512"`, `"512B"`, `"8KiB"`, `"256MiB"`, `"1GiB"` (also KB/MB/GB as powers of 10).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size like \"256MiB\""))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(format!("'{text}': unknown unit (use B, KiB, MiB, GiB)")),
    };
    number
        .checked_mul(factor)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn size(key: &str, value: Option<Size>, default: usize) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(Size::Bytes(n)) => usize::try_from(n).map_err(|_| invalid(key, "too large")),
        Some(Size::Text(text)) => parse_size(&text).map_err(|m| invalid(key, m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml(text, Path::new("test.toml"), &Overrides::default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = load("").expect("defaults");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.upstream.path_prefix, "/genesys/1/cs");
        assert!(c.upstream.urls.is_empty());
        assert_eq!(c.cache.ttl, Duration::from_secs(30));
        assert_eq!(c.cache.max_bytes, 256 << 20);
        assert_eq!(c.cache.max_entry_bytes, 1 << 20);
        assert!(!c.cache.share_across_credentials);
        assert!(c.log.redact);
        assert_eq!(c.server.max_query_bytes, 8192);
        assert_eq!(c.server.max_header_bytes, 16384);
    }

    #[test]
    fn values_are_parsed_once_into_types() {
        let c = load(
            r#"
            [server]
            listen = "0.0.0.0:8081"
            max_body_bytes = "2MiB"
            [upstream]
            urls = ["http://gms-1:8080", "http://gms-2:8080/genesys/1/cs"]
            connect_timeout = "250ms"
            request_timeout = "3s"
            [cache]
            max_bytes = 1048576
            max_entry_bytes = "64KiB"
            ttl = "1m"
            [business_attributes.service_type]
            Wireless = 45
            DeliveringService = 8
            "#,
        )
        .expect("valid");
        assert_eq!(c.server.max_body_bytes, 2 << 20);
        assert_eq!(c.upstream.urls.len(), 2);
        assert_eq!(c.upstream.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.cache.max_entry_bytes, 64 << 10);
        assert_eq!(c.cache.ttl, Duration::from_secs(60));
        assert_eq!(c.service_types().id_of("Wireless"), Some(45));
        assert_eq!(c.service_types().name_of(8), Some("DeliveringService"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\nlisten = \"nope\"", "server.listen"),
            ("[server]\nlistne = \"127.0.0.1:1\"", "listne"),
            ("[upstream]\nurls = [\"ftp://x\"]", "upstream.urls[0]"),
            (
                "[upstream]\nconnect_timeout = \"soon\"",
                "upstream.connect_timeout",
            ),
            (
                "[upstream]\nrequest_timeout = \"0s\"",
                "upstream.request_timeout",
            ),
            ("[upstream]\nretry_budget = 2.0", "upstream.retry_budget"),
            ("[cache]\nmax_bytes = \"lots\"", "cache.max_bytes"),
            (
                "[cache]\nmax_bytes = \"1MiB\"\nmax_entry_bytes = \"2MiB\"",
                "cache.max_entry_bytes",
            ),
            ("[log]\nformat = \"xml\"", "log.format"),
            ("[cachee]\nttl = \"1s\"", "cachee"),
            (
                "[business_attributes.service_type]\nA = 1\nB = 1",
                "business_attributes.service_type.B",
            ),
            (
                "[server]\nlisten = \"127.0.0.1:7000\"\n[admin]\nlisten = \"127.0.0.1:7000\"",
                "admin.listen",
            ),
        ];
        for (text, key) in cases {
            let error = load(text).expect_err(text);
            assert!(error.contains(key), "{error:?} should name {key}");
        }
    }

    #[test]
    fn precedence_is_cli_over_env_over_file() {
        let file = "[server]\nlisten = \"127.0.0.1:1000\"\n[upstream]\nurls = [\"http://file:1\"]";
        let env = Overrides::from_env([
            ("CSGATE_LISTEN".to_owned(), "127.0.0.1:2000".to_owned()),
            (
                "CSGATE_UPSTREAMS".to_owned(),
                "http://env:1, http://env:2".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ]);
        let from_env = Config::from_toml(file, Path::new("f"), &env.clone()).expect("valid");
        assert_eq!(from_env.server.listen.port(), 2000);
        assert_eq!(from_env.upstream.urls.len(), 2);

        let cli = Overrides {
            listen: Some("127.0.0.1:3000".to_owned()),
            ..Overrides::default()
        };
        let both = Config::from_toml(file, Path::new("f"), &cli.over(env)).expect("valid");
        assert_eq!(both.server.listen.port(), 3000);
        assert_eq!(both.upstream.urls[0].host_str(), Some("env"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("8KiB"), Ok(8192));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
