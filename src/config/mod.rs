//! Configuration: a serde mirror of the TOML file (`raw`, unknown keys refused),
//! validated once into typed settings (`sections`, one `TryFrom` per section), with
//! every default in one place (`defaults`).
//!
//! Precedence, highest first: command-line flags > environment (`CSGATE_*`) > file >
//! defaults. [`Overrides`] carries the first two; [`Config::load`] applies them in that
//! order, so there is exactly one function where precedence is decided.

mod cidr;
pub mod defaults;
mod parse;
mod raw;
mod sections;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cluster::ClusterConfig;
use crate::query::TypeMap;
use raw::RawConfig;

pub use cidr::Cidr;
pub use parse::{parse_duration, parse_size};
pub use sections::{
    AdminConfig, AdminToken, CacheConfig, LogConfig, LogFormat, ServerConfig, StoreSettings,
    TlsConfig, Upstream, UpstreamConfig, UpstreamTls,
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

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub store: StoreSettings,
    /// `[cluster]`: a fleet on one Redis; no `redis_url` runs alone.
    pub cluster: ClusterConfig,
    /// `[tracing]`: OpenTelemetry spans over OTLP, with the `OTEL_*` variables applied.
    pub tracing: crate::trace::TracingConfig,
    /// `[limits]`: rate limits, the backend's fair share, connection limits.
    pub limits: crate::limits::LimitsConfig,
    /// `[business_attributes.<attribute>]` name = id maps; `service_type` drives
    /// `service_types` validation and matching.
    pub business_attributes: BTreeMap<String, TypeMap>,
}

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
    pub otel: crate::trace::OtelEnv,
}

impl Overrides {
    /// Reads `CSGATE_LISTEN`, `CSGATE_ADMIN_LISTEN`, `CSGATE_ADMIN_TOKEN_FILE`,
    /// `CSGATE_UPSTREAMS` (comma-separated),
    /// `CSGATE_LOG_LEVEL`, `CSGATE_LOG_FORMAT`, `CSGATE_REDIS_URL` from `vars` (pass
    /// `std::env::vars()`), and the `OTEL_*` ones [`crate::trace::OtelEnv`] names.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Overrides {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let mut out = Overrides {
            otel: crate::trace::OtelEnv::from_env(vars.iter().cloned()),
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

impl Config {
    /// Reads `path` (or no file: all defaults), applies `overrides`, validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Config::from_toml(&text, path.unwrap_or(Path::new("<defaults>")), overrides)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(
        text: &str,
        origin: &Path,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        raw.apply(overrides)?;
        raw.validate()
    }

    /// The `service_type` map (empty when none is configured).
    pub fn service_types(&self) -> TypeMap {
        self.business_attributes
            .get("service_type")
            .cloned()
            .unwrap_or_default()
    }
}

impl Default for Config {
    fn default() -> Self {
        RawConfig::default()
            .validate()
            .expect("the built-in defaults are valid")
    }
}

impl RawConfig {
    fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
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

    /// Validates each section by its `TryFrom`, then what spans sections: admin and
    /// public listeners apart, and an empty upstream list meaning the embedded store.
    fn validate(self) -> Result<Config, ConfigError> {
        let server = ServerConfig::try_from(self.server)?;
        let admin = AdminConfig::try_from(self.admin)?;
        if admin.listen == server.listen && admin.listen.port() != 0 {
            return Err(invalid(
                "admin.listen",
                "must differ from server.listen: admin endpoints never share the public port",
            ));
        }
        let mut config = Config {
            server,
            upstream: UpstreamConfig::try_from(self.upstream)?,
            cache: CacheConfig::try_from(self.cache)?,
            admin,
            log: LogConfig::try_from(self.log)?,
            store: StoreSettings::try_from(self.store)?,
            cluster: ClusterConfig::try_from(self.cluster)
                .map_err(|e| invalid(&format!("cluster.{}", e.key), e.message))?,
            tracing: crate::trace::TracingConfig::try_from(self.tracing)?,
            limits: crate::limits::LimitsConfig::try_from(self.limits)
                .map_err(|e| invalid(&e.key, e.message))?,
            business_attributes: sections::business_attributes(self.business_attributes)?,
        };
        if config.upstream.urls().is_empty() {
            config.upstream.target = Upstream::Embedded(config.store.clone());
        }
        Ok(config)
    }
}
