//! Logging set-up (text or JSON through `tracing-subscriber`) and the redaction of
//! personal data: contact keys and customer ids appear in logs only as a short keyed
//! hash (HMAC-SHA256) unless `[log] redact = false`.
//!
//! The key, first found wins: the environment variable `CSGATE_REDACT_KEY`, the file
//! `[log] redact_key_file`, else a random key made once per process. A plain hash of a
//! phone number is reversed by brute force in seconds; without the key it is not. Give
//! every replica the same key to correlate one caller across replicas and restarts;
//! with the random key a hash is stable only within one process.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tracing_subscriber::EnvFilter;

pub mod config;
pub use config::{LogConfig, LogFormat};

/// Keeps the background log writer alive; dropping it flushes what is queued.
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// Installs the global subscriber, writing to stdout from a background thread so a
/// slow terminal or pipe never stalls a request task (non-lossy: when the queue is
/// full, writers wait rather than drop lines). Returns a handle that can change the
/// level later (SIGHUP reload) and the guard to keep until exit. Calling it twice is
/// harmless (the second install is ignored).
pub fn init(config: &LogConfig) -> (Option<LevelHandle>, LogGuard) {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stdout());
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match config.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_target(true)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .try_init(),
    };
    (
        installed.ok().map(|()| LevelHandle(handle)),
        LogGuard(Some(guard)),
    )
}

/// Changes the log level of the installed subscriber.
#[derive(Clone)]
pub struct LevelHandle(tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>);

impl LevelHandle {
    pub fn set(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        self.0.reload(filter).map_err(|e| e.to_string())
    }
}

/// The environment variable holding the redaction key (it beats `redact_key_file`).
pub const REDACT_KEY_ENV: &str = "CSGATE_REDACT_KEY";

/// How personal data is written to logs.
#[derive(Clone)]
pub struct Redactor {
    redact: bool,
    key: Arc<[u8]>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("redact", &self.redact)
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// The redactor `[log]` asks for, keyed as the module documentation says.
    pub fn from_config(config: &LogConfig) -> Redactor {
        let key = std::env::var(REDACT_KEY_ENV)
            .ok()
            .filter(|key| !key.is_empty())
            .map(String::into_bytes)
            .or_else(|| config.redact_key_file.as_deref().and_then(key_from_file))
            .map(Arc::from)
            .unwrap_or_else(process_key);
        Redactor::with_key(config.redact, key)
    }

    /// A redactor with an explicit key.
    pub fn with_key(redact: bool, key: impl Into<Arc<[u8]>>) -> Redactor {
        Redactor {
            redact,
            key: key.into(),
        }
    }

    /// `h:` + the first 16 hex digits of HMAC-SHA256(key, value), or the value itself
    /// when not redacting. Stable for one key, so one caller's requests can be
    /// correlated without storing the number.
    pub fn personal(&self, value: &str) -> String {
        if !self.redact {
            return value.to_owned();
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(18);
        out.push_str("h:");
        for byte in &digest[..8] {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        out
    }
}

/// The key in `path` (surrounding whitespace trimmed). Config validation has checked
/// it is readable; if it has gone since, the process key stands in, loudly.
fn key_from_file(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) if !bytes.trim_ascii().is_empty() => Some(bytes.trim_ascii().to_vec()),
        Ok(_) => {
            tracing::error!(path = %path.display(), "log.redact_key_file is empty; using a random per-process key");
            None
        }
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "log.redact_key_file unreadable; using a random per-process key");
            None
        }
    }
}

/// 32 random bytes made once per process, so hashes stay stable across reloads.
fn process_key() -> Arc<[u8]> {
    static KEY: OnceLock<Arc<[u8]>> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = Vec::with_capacity(32);
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        Arc::from(key)
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_data_is_hashed_unless_told_otherwise() {
        let on = Redactor::with_key(true, b"k1".to_vec());
        let hashed = on.personal("408-832-7799");
        assert!(hashed.starts_with("h:") && hashed.len() == 18, "{hashed}");
        assert!(!hashed.contains("7799"));
        assert_eq!(hashed, on.personal("408-832-7799"), "stable");
        assert_ne!(hashed, on.personal("408-832-7798"));
        assert_eq!(
            Redactor::with_key(false, b"k1".to_vec()).personal("408-832-7799"),
            "408-832-7799"
        );
    }

    #[test]
    fn the_hash_is_keyed_hmac_sha256() {
        // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let jefe = Redactor::with_key(true, b"Jefe".to_vec());
        assert_eq!(
            jefe.personal("what do ya want for nothing?"),
            "h:5bdcc146bf60754e"
        );
        let other = Redactor::with_key(true, b"Jeff".to_vec());
        assert_ne!(
            other.personal("408-832-7799"),
            jefe.personal("408-832-7799")
        );
        // Without a configured key, one random key serves the whole process.
        assert_eq!(process_key(), process_key());
        assert_eq!(process_key().len(), 32);
    }
}
