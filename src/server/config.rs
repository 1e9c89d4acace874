//! The `[server]` section: the file as written ([`RawServer`]), validated once into
//! [`ServerConfig`], and the listener options derived from it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{limits, ServeOptions};
use crate::settings::{
    addr, at_least_one, defaults, duration, invalid, positive, size, Cidr, ConfigError, Size,
};
use crate::tls::TlsConfig;

/// Step 1: `[server]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: Option<String>,
    pub shutdown_grace: Option<String>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub max_inflight: Option<usize>,
    pub max_query_bytes: Option<Size>,
    pub max_header_bytes: Option<Size>,
    pub max_body_bytes: Option<Size>,
    pub max_key_bytes: Option<Size>,
    pub max_tenant_bytes: Option<Size>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub max_headers: Option<usize>,
    pub drain_delay: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub via: Option<String>,
    pub tls: Option<TlsConfig>,
}

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
            tls: s.tls,
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
}
