//! Where the configuration comes from, and reload: a request to read it again (SIGHUP,
//! or a test), its outcome, and the loop that applies each request (certificates
//! first, then the configuration).

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use super::Control;
use crate::config::{Config, Overrides};
use crate::settings::ConfigError;
use crate::tls::CertSlot;

/// The config file read when `--config` is not given (if it exists), relative to the
/// working directory.
pub const DEFAULT_CONFIG: &str = "config/csgate.toml";

/// Where the configuration comes from, so a reload reads it the same way start-up did:
/// the file, and the command-line and environment overrides already merged
/// (`Overrides::over`). [`Sources::load`] is the only place they are applied.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The config file; `None` means built-in defaults only.
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

impl Sources {
    /// What the binary reads: `--config` (else [`DEFAULT_CONFIG`] when it exists), with
    /// the command-line `flags` over the process environment (`CSGATE_*`).
    pub fn from_process(config: Option<PathBuf>, flags: Overrides) -> Sources {
        Sources {
            path: config.or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists())),
            overrides: flags.over(Overrides::from_env(std::env::vars())),
        }
    }

    /// Reads, overrides and validates the configuration.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.path.as_deref(), &self.overrides)
    }
}

/// A request to re-read the configuration from the [`Sources`] (SIGHUP, or a test).
#[derive(Debug, Default)]
pub struct Reload {
    reply: Option<oneshot::Sender<Result<Reloaded, ReloadError>>>,
}

impl Reload {
    /// A reload whose outcome is only logged (SIGHUP).
    pub fn new() -> Reload {
        Reload::default()
    }

    /// A reload and the receiver that learns whether it was applied.
    pub fn with_reply() -> (Reload, oneshot::Receiver<Result<Reloaded, ReloadError>>) {
        let (tx, rx) = oneshot::channel();
        (Reload { reply: Some(tx) }, rx)
    }
}

/// A reload that was applied, but for the keys that need a restart (their running
/// values stay, and the log line names them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub not_applied: Vec<&'static str>,
}

/// Why a reload was refused; the previous configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] ConfigError),
    #[error("upstream.urls is empty and no embedded store runs")]
    NoEmbeddedStore,
}

/// Applies each request from `reloads` until the channel closes (then waits forever,
/// so the caller's `select!` is decided by the listeners). Each request re-reads the
/// public listener's certificate pair (`server_cert`) and then the configuration.
pub(super) async fn apply_reloads(
    mut reloads: mpsc::Receiver<Reload>,
    sources: &Sources,
    control: &Control,
    server_cert: Option<&CertSlot>,
) {
    while let Some(reload) = reloads.recv().await {
        if let Some(slot) = server_cert {
            // Logged either way; a bad pair leaves the old one serving.
            let _ = slot.reload();
        }
        let outcome = sources
            .load()
            .map_err(ReloadError::from)
            .and_then(|config| control.reload(&config));
        match &outcome {
            Ok(_) => {}
            Err(ReloadError::Invalid(error)) => tracing::error!(
                %error,
                "reload refused: invalid configuration; keeping the previous configuration"
            ),
            Err(ReloadError::NoEmbeddedStore) => tracing::error!(
                "reload refused: upstream.urls is empty and no embedded store runs; keeping the previous configuration"
            ),
        }
        if let Some(reply) = reload.reply {
            let _ = reply.send(outcome);
        }
    }
    std::future::pending::<()>().await;
}
