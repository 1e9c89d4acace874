//! The `[log]` section: the file as written ([`RawLog`]), validated once into
//! [`LogConfig`].

use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::{defaults, invalid, ConfigError};

/// Step 1: `[log]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
    pub redact: Option<bool>,
    pub redact_key_file: Option<PathBuf>,
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
