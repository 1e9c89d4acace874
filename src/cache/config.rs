//! The `[cache]` section: the file as written ([`RawCache`]), validated once into
//! [`CacheConfig`], and the freshness [`Policy`] derived from it.

use std::time::Duration;

use serde::Deserialize;

use super::freshness::Policy;
use crate::settings::{defaults, duration, header_value, invalid, size, ConfigError, Size};

/// Step 1: `[cache]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub enabled: Option<bool>,
    pub ttl: Option<String>,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
    pub max_bytes: Option<Size>,
    pub max_entry_bytes: Option<Size>,
    pub share_across_credentials: Option<bool>,
    pub downstream_cache_control: Option<String>,
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
