//! The `[cluster]` section: the file as written ([`RawCluster`]), validated once into
//! [`ClusterConfig`]. Every default lives in [`defaults`], each with the reason for it.
//! No section and no `CSGATE_REDIS_URL` means a single instance, exactly as before.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::settings::{self, ConfigError};

/// Every default of `[cluster]`, once.
pub mod defaults {
    use std::time::Duration;

    /// Prefix of every Redis key and channel, so several fleets can share one Redis.
    pub const NAMESPACE: &str = "csgate";
    /// How long a local entry may be served while the subscription is down: csgate
    /// cannot hear other replicas' writes then, so this bounds how stale a read can be.
    /// One second is the staleness a caller ringing back cannot notice.
    pub const DEGRADED_TTL: Duration = Duration::from_secs(1);
    /// Bound on every Redis operation. A Redis round trip on a LAN is ~0.2 ms; 50 ms
    /// covers a busy Redis and still costs a miss less than an upstream request does.
    pub const OP_TIMEOUT: Duration = Duration::from_millis(50);
    /// How long a replica may go unheard before the others take it for gone (and
    /// flush). Until then they stay degraded: a replica cut off from Redis may still be
    /// answering writes whose invalidations it cannot deliver, so a short value trades
    /// correctness for hit ratio. 30 s covers a Redis failover or a network blip; a
    /// replica that shuts down cleanly says goodbye and costs nothing.
    pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);
    /// Bytes the whole namespace's shared entries may take per entry lifetime: far
    /// below the 200 MB the shipped Redis has, so invalidation writes always find room.
    pub const SHARED_MAX_BYTES: u64 = 64 * 1024 * 1024;
    /// The same per tenant partition, so one tenant cannot take the whole budget.
    pub const SHARED_TENANT_MAX_BYTES: u64 = 8 * 1024 * 1024;
}

/// Step 1: `[cluster]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCluster {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS).
    pub redis_url: Option<String>,
    /// Prefix of keys and channels.
    pub namespace: Option<String>,
    /// Store broad entries in Redis too (default: true when `redis_url` is set).
    pub shared_cache: Option<bool>,
    /// e.g. `"1s"`.
    pub degraded_ttl: Option<String>,
    /// e.g. `"50ms"`.
    pub op_timeout: Option<String>,
    /// e.g. `"30s"`.
    pub peer_timeout: Option<String>,
    /// Bytes, per entry lifetime, for the whole namespace's shared entries.
    pub shared_max_bytes: Option<u64>,
    /// Bytes, per entry lifetime, for one tenant's shared entries.
    pub shared_tenant_max_bytes: Option<u64>,
}

/// Step 2: `[cluster]` validated.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `None`: a single instance, no Redis.
    pub redis_url: Option<Url>,
    pub namespace: String,
    pub shared_cache: bool,
    pub degraded_ttl: Duration,
    pub op_timeout: Duration,
    pub peer_timeout: Duration,
    pub shared_max_bytes: u64,
    pub shared_tenant_max_bytes: u64,
}

/// A `[cluster]` problem: the loader's [`ConfigError`], naming the key as
/// `cluster.<key>`.
fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    settings::invalid(&format!("cluster.{key}"), message)
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig::try_from(RawCluster::default()).expect("the defaults are valid")
    }
}

impl TryFrom<RawCluster> for ClusterConfig {
    type Error = ConfigError;

    fn try_from(raw: RawCluster) -> Result<ClusterConfig, ConfigError> {
        let redis_url = raw.redis_url.as_deref().map(redis_url).transpose()?;
        let namespace = raw
            .namespace
            .unwrap_or_else(|| defaults::NAMESPACE.to_owned());
        if namespace.is_empty()
            || !namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                "namespace",
                format!("'{namespace}' must be non-empty ASCII letters, digits, '-', '_' or '.'"),
            ));
        }
        let shared_cache = match (raw.shared_cache, &redis_url) {
            (Some(true), None) => {
                return Err(invalid("shared_cache", "needs cluster.redis_url"));
            }
            (Some(value), _) => value,
            (None, url) => url.is_some(),
        };
        let degraded_ttl = duration("degraded_ttl", raw.degraded_ttl, defaults::DEGRADED_TTL)?;
        let op_timeout = duration("op_timeout", raw.op_timeout, defaults::OP_TIMEOUT)?;
        let peer_timeout = duration("peer_timeout", raw.peer_timeout, defaults::PEER_TIMEOUT)?;
        if peer_timeout < Duration::from_secs(2) {
            return Err(invalid(
                "peer_timeout",
                "must be at least 2s (a few heartbeats; a live replica must not be taken for gone)",
            ));
        }
        let shared_max_bytes = raw.shared_max_bytes.unwrap_or(defaults::SHARED_MAX_BYTES);
        let shared_tenant_max_bytes = raw
            .shared_tenant_max_bytes
            .unwrap_or(defaults::SHARED_TENANT_MAX_BYTES);
        if shared_max_bytes == 0 || shared_tenant_max_bytes == 0 {
            let key = if shared_max_bytes == 0 {
                "shared_max_bytes"
            } else {
                "shared_tenant_max_bytes"
            };
            return Err(invalid(
                key,
                "must be greater than zero (shared_cache = false turns the tier off)",
            ));
        }
        Ok(ClusterConfig {
            redis_url,
            namespace,
            shared_cache,
            degraded_ttl,
            op_timeout,
            peer_timeout,
            shared_max_bytes,
            shared_tenant_max_bytes,
        })
    }
}

/// A `[cluster]` duration above zero, or `default` when absent.
fn duration(key: &str, text: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    settings::positive(&format!("cluster.{key}"), text, default)
}

/// Parses a Redis URL; the error never repeats the URL, which may hold a password.
fn redis_url(text: &str) -> Result<Url, ConfigError> {
    let url =
        Url::parse(text.trim()).map_err(|e| invalid("redis_url", format!("not a URL ({e})")))?;
    match url.scheme() {
        "redis" | "rediss" => {}
        other => {
            return Err(invalid(
                "redis_url",
                format!("scheme '{other}' is not redis:// or rediss://"),
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("redis_url", "has no host"));
    }
    Ok(url)
}

/// The URL with any password replaced, for logs and `/healthz`.
pub fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Setting a password on a URL that already has one cannot fail.
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &self.redis_url.as_ref().map(redacted))
            .field("namespace", &self.namespace)
            .field("shared_cache", &self.shared_cache)
            .field("degraded_ttl", &self.degraded_ttl)
            .field("op_timeout", &self.op_timeout)
            .field("peer_timeout", &self.peer_timeout)
            .field("shared_max_bytes", &self.shared_max_bytes)
            .field("shared_tenant_max_bytes", &self.shared_tenant_max_bytes)
            .finish()
    }
}

impl ClusterConfig {
    /// True when a Redis is configured.
    pub fn enabled(&self) -> bool {
        self.redis_url.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<ClusterConfig, String> {
        let raw: RawCluster = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        ClusterConfig::try_from(raw).map_err(|e| e.to_string())
    }

    #[test]
    fn no_section_is_a_single_instance_with_the_documented_defaults() {
        let config = ClusterConfig::default();
        assert_eq!(config.redis_url, None);
        assert!(!config.enabled());
        assert_eq!(config.namespace, "csgate");
        assert!(!config.shared_cache);
        assert_eq!(config.degraded_ttl, Duration::from_secs(1));
        assert_eq!(config.op_timeout, Duration::from_millis(50));
        assert_eq!(config.peer_timeout, Duration::from_secs(30));
        assert_eq!(config.shared_max_bytes, 64 * 1024 * 1024);
        assert_eq!(config.shared_tenant_max_bytes, 8 * 1024 * 1024);
    }

    #[test]
    fn a_redis_url_turns_the_shared_cache_on() {
        let config = parse(r#"redis_url = "redis://10.0.0.5:6379/2""#).expect("valid");
        assert!(config.enabled());
        assert!(config.shared_cache);
        let off = parse("redis_url = \"rediss://r:6380\"\nshared_cache = false").expect("valid");
        assert!(!off.shared_cache);
    }

    #[test]
    fn invalid_sections_name_the_key() {
        let cases = [
            (r#"redis_url = "http://r:6379""#, "cluster.redis_url"),
            (r#"redis_url = "nonsense""#, "cluster.redis_url"),
            ("shared_cache = true", "cluster.shared_cache"),
            (r#"namespace = "a b""#, "cluster.namespace"),
            (r#"namespace = """#, "cluster.namespace"),
            (r#"degraded_ttl = "soon""#, "cluster.degraded_ttl"),
            (r#"op_timeout = "0ms""#, "cluster.op_timeout"),
            (r#"peer_timeout = "1s""#, "cluster.peer_timeout"),
            ("shared_max_bytes = 0", "cluster.shared_max_bytes"),
            (
                "shared_tenant_max_bytes = 0",
                "cluster.shared_tenant_max_bytes",
            ),
            ("redis = 1", "unknown field"),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn a_password_is_never_shown() {
        let config = parse(r#"redis_url = "redis://app:s3cret@r:6379""#).expect("valid");
        assert!(!format!("{config:?}").contains("s3cret"));
        let error = parse(r#"redis_url = "ftp://app:s3cret@r""#).expect_err("scheme");
        assert!(!error.contains("s3cret"), "{error}");
    }
}
