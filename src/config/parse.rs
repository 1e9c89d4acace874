//! Parsers for single values, each naming the key in its error.

use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

use super::raw::Size;
use super::{invalid, ConfigError};

pub(super) fn addr(
    key: &str,
    value: Option<&str>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or(default);
    text.parse().map_err(|_| {
        invalid(
            key,
            format!("'{text}' is not a socket address like 127.0.0.1:8080"),
        )
    })
}

pub(super) fn upstream_url(key: &str, text: &str) -> Result<Url, ConfigError> {
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

pub(super) fn duration(
    key: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => parse_duration(&text).map_err(|m| invalid(key, m)),
    }
}

pub(super) fn positive(
    key: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(key, value, default)?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

pub(super) fn at_least_one(key: &str, value: usize) -> Result<usize, ConfigError> {
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

pub(super) fn size(key: &str, value: Option<Size>, default: usize) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(Size::Bytes(n)) => usize::try_from(n).map_err(|_| invalid(key, "too large")),
        Some(Size::Text(text)) => parse_size(&text).map_err(|m| invalid(key, m)),
    }
}
