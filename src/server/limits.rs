//! Descriptor budget: raising the open-file limit at start, the default connection
//! cap derived from it, and rate-limited reporting of accept errors (EMFILE).

use std::time::{Duration, Instant};

/// Descriptors kept out of the public connection budget: listeners, the admin
/// listener's connections, the log writer, the embedded store's database.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft open-file limit to the hard limit and returns the new soft limit
/// (`None` where the platform has no such limit). Called once at start: the default
/// soft limit (often 1024) is far below what a gateway needs, and the hard limit is
/// what the operator granted.
/// Logs the limit it ends with.
pub fn raise_open_file_limit() -> Option<u64> {
    let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(error) => {
            tracing::warn!(%error, "could not raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    };
    tracing::info!(?open_files, "open-file limit");
    open_files
}

/// The default `[server] max_connections` for the current open-file limit: a third of
/// what is left after the reserve, because each client connection may hold an upstream
/// connection too, and with the embedded store that upstream connection costs two
/// descriptors (both ends live in this process).
pub fn default_max_connections() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    derive_max_connections(soft)
}

fn derive_max_connections(open_files: u64) -> usize {
    let budget = open_files.saturating_sub(RESERVED_DESCRIPTORS) / 3;
    usize::try_from(budget).unwrap_or(usize::MAX).max(1)
}

/// Backs off after accept errors (EMFILE, ENFILE, ENOBUFS) and logs at most once a
/// second, with the number of errors since the last line.
#[derive(Debug)]
pub struct AcceptBackoff {
    delay: Duration,
    suppressed: u64,
    last_logged: Option<Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(1);

    pub fn new() -> AcceptBackoff {
        AcceptBackoff {
            delay: Self::FIRST,
            suppressed: 0,
            last_logged: None,
        }
    }

    /// Records a failed accept; returns how long to wait before the next one.
    pub fn failed(&mut self, error: &std::io::Error) -> Duration {
        self.suppressed += 1;
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= Self::LOG_EVERY)
        {
            tracing::warn!(%error, errors = self.suppressed, "accept failed; backing off");
            self.suppressed = 0;
            self.last_logged = Some(now);
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        delay
    }

    /// Records a successful accept.
    pub fn succeeded(&mut self) {
        self.delay = Self::FIRST;
    }
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_budget_follows_the_file_limit() {
        for (files, connections) in [(0, 1), (64, 1), (128, 21), (1024, 320), (1 << 20, 349_504)] {
            assert_eq!(derive_max_connections(files), connections, "{files}");
        }
    }

    #[test]
    fn accept_backoff_doubles_to_a_second_and_resets() {
        let mut backoff = AcceptBackoff::new();
        let error = std::io::Error::from_raw_os_error(24);
        let delays: Vec<_> = (0..9).map(|_| backoff.failed(&error)).collect();
        assert_eq!(delays[0], Duration::from_millis(10));
        assert_eq!(delays[8], Duration::from_secs(1));
        backoff.succeeded();
        assert_eq!(backoff.failed(&error), Duration::from_millis(10));
    }
}
