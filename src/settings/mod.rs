//! What every section owner needs to validate its part of the config file, and nothing
//! of the crate above it: [`ConfigError`] (which names the key at fault), the one
//! duration parser and the one byte-size parser, [`Cidr`], and every default
//! ([`defaults`]). Each owner (`server`, `upstream`, `cache`, `store`, ...) keeps its
//! section's serde `Raw…` struct and typed config beside itself and builds the one from
//! the other with these; `config` only reads the file and calls them.

mod cidr;
pub mod defaults;
mod parse;

use std::path::PathBuf;

pub use cidr::Cidr;
pub use parse::{
    addr, at_least_one, duration, header_value, parse_duration, parse_size, positive, size, Size,
};

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

/// The [`ConfigError::Invalid`] for `key`.
pub fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}
