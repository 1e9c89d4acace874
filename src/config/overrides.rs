//! [`Overrides`]: the command line and the environment, over the file.

use super::RawConfig;
use crate::settings::ConfigError;
use crate::trace::config::OtelEnv;

/// Values from the command line and the environment that beat the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    /// Replaces `[admin] token_file`.
    pub admin_token_file: Option<String>,
    /// Replaces `[upstream] urls` when non-empty.
    pub upstreams: Vec<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    /// Replaces `[cluster] redis_url`.
    pub redis_url: Option<String>,
    /// The standard `OTEL_*` variables, over `[tracing]` (no flag sets them).
    pub otel: OtelEnv,
}

impl Overrides {
    /// Reads `CSGATE_LISTEN`, `CSGATE_ADMIN_LISTEN`, `CSGATE_ADMIN_TOKEN_FILE`,
    /// `CSGATE_UPSTREAMS` (comma-separated),
    /// `CSGATE_LOG_LEVEL`, `CSGATE_LOG_FORMAT`, `CSGATE_REDIS_URL` from `vars` (pass
    /// `std::env::vars()`), and the `OTEL_*` ones [`OtelEnv`] names.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Overrides {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let mut out = Overrides {
            otel: OtelEnv::from_env(vars.iter().cloned()),
            ..Overrides::default()
        };
        for (name, value) in vars {
            match name.as_str() {
                "CSGATE_LISTEN" => out.listen = Some(value),
                "CSGATE_ADMIN_LISTEN" => out.admin_listen = Some(value),
                "CSGATE_ADMIN_TOKEN_FILE" if !value.trim().is_empty() => {
                    out.admin_token_file = Some(value);
                }
                "CSGATE_UPSTREAMS" => {
                    out.upstreams = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "CSGATE_LOG_LEVEL" => out.log_level = Some(value),
                "CSGATE_LOG_FORMAT" => out.log_format = Some(value),
                "CSGATE_REDIS_URL" if !value.trim().is_empty() => out.redis_url = Some(value),
                _ => {}
            }
        }
        out
    }

    /// `self` (the command line) over `env`.
    pub fn over(self, env: Overrides) -> Overrides {
        Overrides {
            listen: self.listen.or(env.listen),
            admin_listen: self.admin_listen.or(env.admin_listen),
            admin_token_file: self.admin_token_file.or(env.admin_token_file),
            upstreams: if self.upstreams.is_empty() {
                env.upstreams
            } else {
                self.upstreams
            },
            log_level: self.log_level.or(env.log_level),
            log_format: self.log_format.or(env.log_format),
            redis_url: self.redis_url.or(env.redis_url),
            otel: env.otel,
        }
    }
}

impl RawConfig {
    pub(super) fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(listen) = &o.listen {
            self.server.listen = Some(listen.clone());
        }
        if let Some(listen) = &o.admin_listen {
            self.admin.listen = Some(listen.clone());
        }
        if let Some(path) = &o.admin_token_file {
            self.admin.token_file = Some(path.into());
        }
        if !o.upstreams.is_empty() {
            self.upstream.urls = Some(o.upstreams.clone());
        }
        if let Some(level) = &o.log_level {
            self.log.level = Some(level.clone());
        }
        if let Some(format) = &o.log_format {
            self.log.format = Some(format.clone());
        }
        if let Some(url) = &o.redis_url {
            self.cluster.redis_url = Some(url.clone());
        }
        self.tracing.apply(&o.otel)
    }
}
