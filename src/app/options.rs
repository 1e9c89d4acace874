//! What [`run`](super::run) lets a caller change, and the ready file it writes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::oneshot;

use super::Control;
use crate::cache::{Clock, SystemClock};
use crate::logging::LevelHandle;

/// What [`run`](super::run) lets a caller change; `Options::default()` is what the
/// binary uses.
pub struct Options {
    /// The cache's clock (tests inject a `ManualClock`).
    pub clock: Arc<dyn Clock>,
    /// Where reload sets the log level; `None` when logging was not set up by us.
    pub log_level: Option<LevelHandle>,
    /// Told the control handle once the gateway is built (tests reach the cache and the
    /// upstreams through it).
    pub started: Option<oneshot::Sender<Control>>,
    /// Where to write the [`ReadyFile`] once the gateway is built (`--ready-file`).
    pub ready_file: Option<PathBuf>,
}

impl Options {
    /// The defaults, with reload setting the log level through `log_level`.
    pub fn with_log_level(log_level: Option<LevelHandle>) -> Options {
        Options {
            log_level,
            ..Options::default()
        }
    }

    /// These options, writing the [`ReadyFile`] to `path` when it is given.
    #[must_use]
    pub fn ready_file(self, path: Option<PathBuf>) -> Options {
        Options {
            ready_file: path,
            ..self
        }
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            clock: Arc::new(SystemClock),
            log_level: None,
            started: None,
            ready_file: None,
        }
    }
}

/// What `--ready-file PATH` holds once the gateway serves: the addresses the listeners
/// are bound to, as JSON (`{"listen": "127.0.0.1:8080", "admin": "127.0.0.1:9090"}`).
/// It is how a supervisor or a test that asked for port 0 learns the ports without
/// reading logs; whether the gateway is ready is `GET /readyz` on `admin`. The file is
/// written to a temporary name and renamed, so a reader never sees half of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadyFile {
    /// The public listener's bound address.
    pub listen: SocketAddr,
    /// The admin listener's bound address.
    pub admin: SocketAddr,
}

impl ReadyFile {
    pub(super) fn write(&self, path: &Path) -> anyhow::Result<()> {
        let partial = path.with_extension("partial");
        let json = serde_json::to_vec(self).context("encoding the ready file")?;
        std::fs::write(&partial, json)
            .and_then(|()| std::fs::rename(&partial, path))
            .with_context(|| format!("--ready-file: cannot write {}", path.display()))
    }
}
