//! The `[admin]` section: the file as written ([`RawAdmin`]), validated once into
//! [`AdminConfig`], with the bearer token kept as an [`AdminToken`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::{addr, defaults, invalid, ConfigError};

/// Step 1: `[admin]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_file: Option<PathBuf>,
    pub metrics_open: Option<bool>,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The bearer token every admin request but `/healthz` and `/readyz` (and
    /// `/metrics` while `metrics_open`) must carry; `None` asks for none.
    pub token: Option<AdminToken>,
    /// `/metrics` without the token (Prometheus scrapes it).
    pub metrics_open: bool,
}

/// The admin bearer token, kept only as its SHA-256 digest: compared in constant time
/// (digest against digest, whatever the lengths), never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    /// The token a file holds: its text without surrounding whitespace (a trailing
    /// newline is usual). Empty is an error: it would let everyone in.
    pub fn from_file(key: &str, path: &std::path::Path) -> Result<AdminToken, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                key,
                format!("cannot read the token file '{}': {e}", path.display()),
            )
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(invalid(
                key,
                format!("the token file '{}' is empty", path.display()),
            ));
        }
        Ok(AdminToken::new(token.as_bytes()))
    }

    pub fn new(token: &[u8]) -> AdminToken {
        use sha2::{Digest, Sha256};
        AdminToken(Sha256::digest(token).into())
    }

    /// Does `presented` (the bearer token of a request) match? Constant time in the
    /// token's content: both sides are hashed, and the digests compared byte for byte
    /// without an early exit.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let other = AdminToken::new(presented);
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// `[admin]`: the address parsed (that it differs from `server.listen` is checked by
/// the loader, `config`, which sees both) and the token file read.
impl TryFrom<RawAdmin> for AdminConfig {
    type Error = ConfigError;

    fn try_from(a: RawAdmin) -> Result<Self, ConfigError> {
        let token = match &a.token_file {
            Some(path) => Some(AdminToken::from_file("admin.token_file", path)?),
            None => None,
        };
        Ok(AdminConfig {
            listen: addr("admin.listen", a.listen.as_deref(), defaults::ADMIN_LISTEN)?,
            token,
            metrics_open: a.metrics_open.unwrap_or(true),
        })
    }
}
