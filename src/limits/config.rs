//! `[limits]`: the file's keys (step 1), the validated settings (step 2) and every
//! default with the reason for its value.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use crate::settings::{at_least_one, invalid, positive, ConfigError};

/// Every default of `[limits]`, each with why.
pub mod defaults {
    use std::time::Duration;

    /// GMS answers with a pool of 20 connections per route and queues the rest: more
    /// concurrent requests than that only wait inside GMS, where csgate cannot order
    /// them fairly.
    pub const BACKEND_MAX_CONCURRENT: usize = 20;
    /// A request that has waited 2 s for a backend slot is better answered `503` with
    /// `Retry-After` than kept: clients of a contact centre time out in a few seconds.
    pub const BACKEND_QUEUE_DEADLINE: Duration = Duration::from_secs(2);
    /// What the default pool serves within the default deadline at GMS's usual ~40 ms
    /// per request (20 slots / 40 ms × 2 s = 1000); past it a waiter could not be served
    /// before its deadline anyway, so it is refused at once.
    pub const BACKEND_MAX_QUEUE: usize = 1000;
    /// Connections one client address may hold open: a browser opens 6, a pooled
    /// service client a few dozen, a load balancer or a NAT gateway in front of many
    /// clients hundreds (the fleet tests send 1,000 concurrent requests from one
    /// address over three replicas). 1024 keeps those while one address can no longer
    /// take an instance's whole default connection budget (a third of the open-file
    /// limit); an instance with a small descriptor budget sets it lower.
    pub const PER_CLIENT_CONNECTIONS: usize = 1024;
    /// Backend-bound streams one HTTP/2 connection may hold: the backend's own pool
    /// size, so that one connection never holds more of the backend than it has (hyper
    /// lets a peer open 200 streams). Beyond it the stream is refused (`REFUSED_STREAM`,
    /// which clients retry safely).
    pub const H2_STREAMS_PER_CONNECTION: usize = 20;
    /// Hits stay free: only requests that reach the backend spend the backend's
    /// capacity, which is what the limits protect.
    pub const COUNT_HITS: bool = false;
}

/// `[limits]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub tenant: Option<RawRate>,
    pub credential: Option<RawRate>,
    pub count_hits: Option<bool>,
    #[serde(rename = "override")]
    pub overrides: Vec<RawOverride>,
    pub backend: RawBackend,
    pub connections: RawConnections,
}

/// `{ rate = .., burst = .. }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub rate: f64,
    pub burst: u32,
}

/// `[[limits.override]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    pub contact_center_id: String,
    pub group_id: Option<String>,
    pub rate: f64,
    pub burst: u32,
}

/// `[limits.backend]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBackend {
    pub max_concurrent: Option<usize>,
    pub queue_deadline: Option<String>,
    pub max_queue: Option<usize>,
}

/// `[limits.connections]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConnections {
    pub per_client: Option<usize>,
    pub h2_streams_per_connection: Option<usize>,
}

/// A token bucket: `per_second` requests on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// The time one request costs (GCRA's emission interval).
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second)
    }

    /// This replica's share of a fleet-wide rate when `replicas` enforce it each on
    /// its own: the rate divided, the burst divided and rounded up (at least 1).
    pub fn share(&self, replicas: usize) -> Rate {
        let n = replicas.max(1);
        Rate {
            per_second: self.per_second / n as f64,
            burst: self
                .burst
                .div_ceil(u32::try_from(n).unwrap_or(u32::MAX))
                .max(1),
        }
    }
}

/// A tenant's own rate: `(ContactCenterId, GroupId)`; a `None` group matches every
/// group of the centre without an override of its own.
pub type Overrides = HashMap<(Bytes, Option<Bytes>), Rate>;

/// `[limits]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Per tenant (`ContactCenterId` + `GroupId`); `None`: unlimited.
    pub tenant: Option<Rate>,
    /// Per `Authorization` value; `None`: unlimited.
    pub credential: Option<Rate>,
    /// Cache hits spend tokens too.
    pub count_hits: bool,
    pub overrides: Overrides,
    pub backend: BackendLimits,
    pub connections: ConnectionLimits,
}

/// `[limits.backend]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendLimits {
    /// Requests in flight to the upstream pool at most (per target with one target).
    pub max_concurrent: usize,
    /// Longest wait for a slot; past it `503` + `Retry-After`.
    pub queue_deadline: Duration,
    /// Waiters at most; past it `503` at once.
    pub max_queue: usize,
}

/// `[limits.connections]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionLimits {
    /// Open connections per client address (peers in `trusted_proxies` exempt).
    pub per_client: usize,
    /// Backend-bound streams per HTTP/2 connection.
    pub h2_streams_per_connection: usize,
}

fn rate(key: &str, per_second: f64, burst: u32) -> Result<Rate, ConfigError> {
    if !per_second.is_finite() || per_second <= 0.0 || 1.0 / per_second > 1e9 {
        return Err(invalid(
            key,
            format!("rate {per_second} is not a positive number of requests per second"),
        ));
    }
    if burst == 0 {
        return Err(invalid(key, "burst must be at least 1"));
    }
    Ok(Rate { per_second, burst })
}

fn tenant_value(key: &str, text: &str) -> Result<Bytes, ConfigError> {
    if text.is_empty()
        || text.trim() != text
        || !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(invalid(
            key,
            format!("'{text}' is not a tenant header value (visible ASCII, no edge whitespace)"),
        ));
    }
    Ok(Bytes::copy_from_slice(text.as_bytes()))
}

impl TryFrom<RawLimits> for LimitsConfig {
    type Error = ConfigError;

    fn try_from(raw: RawLimits) -> Result<Self, ConfigError> {
        let tenant = raw
            .tenant
            .map(|r| rate("limits.tenant", r.rate, r.burst))
            .transpose()?;
        let credential = raw
            .credential
            .map(|r| rate("limits.credential", r.rate, r.burst))
            .transpose()?;
        let mut overrides = Overrides::new();
        for (i, o) in raw.overrides.into_iter().enumerate() {
            let key = format!("limits.override[{i}]");
            let center = tenant_value(&format!("{key}.contact_center_id"), &o.contact_center_id)?;
            let group = o
                .group_id
                .as_deref()
                .map(|g| tenant_value(&format!("{key}.group_id"), g))
                .transpose()?;
            let rate = rate(&key, o.rate, o.burst)?;
            if overrides.insert((center, group), rate).is_some() {
                return Err(invalid(&key, "this tenant has an override already"));
            }
        }
        let queue_deadline = positive(
            "limits.backend.queue_deadline",
            raw.backend.queue_deadline,
            defaults::BACKEND_QUEUE_DEADLINE,
        )?;
        Ok(LimitsConfig {
            tenant,
            credential,
            count_hits: raw.count_hits.unwrap_or(defaults::COUNT_HITS),
            overrides,
            backend: BackendLimits {
                max_concurrent: at_least_one(
                    "limits.backend.max_concurrent",
                    raw.backend
                        .max_concurrent
                        .unwrap_or(defaults::BACKEND_MAX_CONCURRENT),
                )?,
                queue_deadline,
                max_queue: raw.backend.max_queue.unwrap_or(defaults::BACKEND_MAX_QUEUE),
            },
            connections: ConnectionLimits {
                per_client: at_least_one(
                    "limits.connections.per_client",
                    raw.connections
                        .per_client
                        .unwrap_or(defaults::PER_CLIENT_CONNECTIONS),
                )?,
                h2_streams_per_connection: at_least_one(
                    "limits.connections.h2_streams_per_connection",
                    raw.connections
                        .h2_streams_per_connection
                        .unwrap_or(defaults::H2_STREAMS_PER_CONNECTION),
                )?,
            },
        })
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig::try_from(RawLimits::default()).expect("the built-in defaults are valid")
    }
}

impl LimitsConfig {
    /// The tenant rate for `(center, group)`: its override, its centre's, or the
    /// default tenant rate.
    pub fn tenant_rate(&self, center: Option<&Bytes>, group: Option<&Bytes>) -> Option<Rate> {
        if let Some(center) = center {
            if let Some(rate) =
                group.and_then(|g| self.overrides.get(&(center.clone(), Some(g.clone()))))
            {
                return Some(*rate);
            }
            if let Some(rate) = self.overrides.get(&(center.clone(), None)) {
                return Some(*rate);
            }
        }
        self.tenant
    }

    /// Is any rate limit configured?
    pub fn has_rates(&self) -> bool {
        self.tenant.is_some() || self.credential.is_some() || !self.overrides.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LimitsConfig, String> {
        let raw: RawLimits = toml::from_str(text).map_err(|e| e.to_string())?;
        LimitsConfig::try_from(raw).map_err(|e| e.to_string())
    }

    #[test]
    fn limits_are_off_by_default_but_the_backend_bound_and_connection_limits() {
        let config = parse("").expect("defaults");
        assert_eq!(config, LimitsConfig::default());
        assert!(!config.has_rates());
        assert!(!config.count_hits);
        assert_eq!(config.backend.max_concurrent, 20);
        assert_eq!(config.backend.queue_deadline, Duration::from_secs(2));
        assert_eq!(config.connections.per_client, 1024);
        assert_eq!(config.connections.h2_streams_per_connection, 20);
    }

    #[test]
    fn overrides_win_over_the_tenant_rate_most_specific_first() {
        let config = parse(
            r#"
            tenant = { rate = 10, burst = 20 }
            [[override]]
            contact_center_id = "big"
            rate = 100
            burst = 200
            [[override]]
            contact_center_id = "big"
            group_id = "vip"
            rate = 1000
            burst = 2000
            "#,
        )
        .expect("valid");
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        let rate = |c: Option<&Bytes>, g: Option<&Bytes>| config.tenant_rate(c, g).map(|r| r.burst);
        assert_eq!(rate(Some(&b("big")), Some(&b("vip"))), Some(2000));
        assert_eq!(rate(Some(&b("big")), Some(&b("other"))), Some(200));
        assert_eq!(rate(Some(&b("big")), None), Some(200));
        assert_eq!(rate(Some(&b("small")), None), Some(20));
        assert_eq!(rate(None, None), Some(20));
    }

    #[test]
    fn invalid_values_name_their_key() {
        for (text, key) in [
            ("tenant = { rate = 0, burst = 1 }", "limits.tenant"),
            ("credential = { rate = 1, burst = 0 }", "limits.credential"),
            ("tenant = { rate = 1, burst = 1, brst = 2 }", "brst"),
            (
                "[backend]\nmax_concurrent = 0",
                "limits.backend.max_concurrent",
            ),
            (
                "[backend]\nqueue_deadline = \"0s\"",
                "limits.backend.queue_deadline",
            ),
            (
                "[connections]\nper_client = 0",
                "limits.connections.per_client",
            ),
            (
                "[[override]]\ncontact_center_id = \" x\"\nrate = 1\nburst = 1",
                "limits.override[0].contact_center_id",
            ),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.contains(key), "{text}: {error}");
        }
    }

    #[test]
    fn a_fleet_share_divides_rate_and_burst() {
        let rate = Rate {
            per_second: 10.0,
            burst: 5,
        };
        assert_eq!(rate.share(1), rate);
        assert_eq!(
            rate.share(2),
            Rate {
                per_second: 5.0,
                burst: 3
            }
        );
        assert_eq!(rate.share(10).burst, 1);
        assert_eq!(rate.share(0), rate);
    }
}
