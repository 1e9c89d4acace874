//! Parsers for single values, each naming the key in its error.

use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

use super::raw::Size;
use super::{invalid, ConfigError};
use crate::upstream::FailureSet;

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

/// A header value written in the file: visible ASCII, not empty.
pub(super) fn header_value(
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

pub(super) fn upstream_url(key: &str, text: &str) -> Result<Url, ConfigError> {
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

/// An `eject_on`/`retry_on` list: the default when absent, the first bad name named.
pub(super) fn failures(
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
