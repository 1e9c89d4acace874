//! Parsers for single values, each naming the key in its error: the one duration
//! parser and the one byte-size parser every section uses.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// A byte size as written: an integer, or a string such as `"8KiB"`, `"256MiB"`,
/// `"1GiB"`, `"512B"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

/// A socket address, or `default` when absent.
pub fn addr(key: &str, value: Option<&str>, default: &str) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or(default);
    text.parse().map_err(|_| {
        invalid(
            key,
            format!("'{text}' is not a socket address like 127.0.0.1:8080"),
        )
    })
}

/// A header value written in the file: visible ASCII, not empty.
pub fn header_value(
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

/// Parses a humantime duration such as `"2s"`, `"500ms"`, `"1m 30s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("'{text}' is not a duration: {e}"))
}

/// A duration, or `default` when absent.
pub fn duration(
    key: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => parse_duration(&text).map_err(|m| invalid(key, m)),
    }
}

/// A duration above zero, or `default` when absent.
pub fn positive(
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

/// A count of at least one.
pub fn at_least_one(key: &str, value: usize) -> Result<usize, ConfigError> {
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

/// A byte size, or `default` when absent.
pub fn size(key: &str, value: Option<Size>, default: usize) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(Size::Bytes(n)) => usize::try_from(n).map_err(|_| invalid(key, "too large")),
        Some(Size::Text(text)) => parse_size(&text).map_err(|m| invalid(key, m)),
    }
}
