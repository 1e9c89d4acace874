//! Logging set-up (text or JSON through `tracing-subscriber`) and the redaction of
//! personal data: contact keys and customer ids appear in logs only as a short hash
//! unless `[log] redact = false`.

use sha2::{Digest, Sha256};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

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

/// How personal data is written to logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redactor {
    pub redact: bool,
}

impl Redactor {
    /// `h:` + the first 16 hex digits of SHA-256, or the value itself when not redacting.
    /// Stable across processes, so one caller's requests can be correlated without
    /// storing the number.
    pub fn personal(&self, value: &str) -> String {
        if !self.redact {
            return value.to_owned();
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(value.as_bytes());
        let mut out = String::with_capacity(18);
        out.push_str("h:");
        for byte in &digest[..8] {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_data_is_hashed_unless_told_otherwise() {
        let on = Redactor { redact: true };
        let hashed = on.personal("408-832-7799");
        assert!(hashed.starts_with("h:") && hashed.len() == 18, "{hashed}");
        assert!(!hashed.contains("7799"));
        assert_eq!(hashed, on.personal("408-832-7799"), "stable");
        assert_ne!(hashed, on.personal("408-832-7798"));
        assert_eq!(
            Redactor { redact: false }.personal("408-832-7799"),
            "408-832-7799"
        );
    }
}
