//! The loader: reads the TOML file into `RawConfig` (each table the serde struct of the
//! module that owns it; unknown keys refused), applies [`Overrides`], and calls each
//! owner's `TryFrom` to build [`Config`]. What spans sections (the admin and public
//! listeners apart, an empty upstream list meaning the embedded store) is checked here.
//! Every default lives in [`crate::settings::defaults`].
//!
//! Precedence, highest first: command-line flags > environment (`CSGATE_*`) > file >
//! defaults. [`Overrides`] carries the first two; [`Config::load`] applies them in that
//! order, so there is exactly one function where precedence is decided.

mod overrides;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::admin::config::{AdminConfig, RawAdmin};
use crate::cache::config::{CacheConfig, RawCache};
use crate::cluster::config::{ClusterConfig, RawCluster};
use crate::limits::config::{LimitsConfig, RawLimits};
use crate::logging::config::{LogConfig, RawLog};
use crate::query::config::{business_attributes, RawBusinessAttributes};
use crate::query::TypeMap;
use crate::server::config::{RawServer, ServerConfig};
use crate::settings::invalid;
use crate::store::config::{RawStore, StoreConfig};
use crate::trace::config::{RawTracing, TracingConfig};
use crate::upstream::config::{RawUpstream, Upstream, UpstreamConfig};

pub use crate::settings::{defaults, parse_duration, parse_size, ConfigError};
pub use overrides::Overrides;

/// Step 1: the file as written. Every key is optional (a missing key takes its default
/// in the owner's `TryFrom`) and an unknown key is refused by serde, naming it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    upstream: RawUpstream,
    cache: RawCache,
    admin: RawAdmin,
    log: RawLog,
    store: RawStore,
    cluster: RawCluster,
    tracing: RawTracing,
    limits: RawLimits,
    business_attributes: RawBusinessAttributes,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// `[store]`, with the business-attribute maps.
    pub store: StoreConfig,
    /// `[cluster]`: a fleet on one Redis; no `redis_url` runs alone.
    pub cluster: ClusterConfig,
    /// `[tracing]`: OpenTelemetry spans over OTLP, with the `OTEL_*` variables applied.
    pub tracing: TracingConfig,
    /// `[limits]`: rate limits, the backend's fair share, connection limits.
    pub limits: LimitsConfig,
    /// `[business_attributes.<attribute>]` name = id maps; `service_type` drives
    /// `service_types` validation and matching.
    pub business_attributes: BTreeMap<String, TypeMap>,
}

impl Config {
    /// The sections the request pipeline reads.
    pub fn pipeline(&self) -> crate::pipeline::Sections<'_> {
        crate::pipeline::Sections {
            server: &self.server,
            upstream: &self.upstream,
            cache: &self.cache,
            log: &self.log,
            limits: &self.limits,
            cluster: &self.cluster,
            service_types: self.service_types(),
        }
    }

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
            store: StoreConfig::try_from(self.store)?,
            cluster: ClusterConfig::try_from(self.cluster)?,
            tracing: TracingConfig::try_from(self.tracing)?,
            limits: LimitsConfig::try_from(self.limits)?,
            business_attributes: business_attributes(self.business_attributes)?,
        };
        config.store.business_attributes = config.business_attributes.clone();
        if config.upstream.urls().is_empty() {
            config.upstream.target = Upstream::Embedded(config.store.clone());
        }
        Ok(config)
    }
}
