//! The `[store]` section: the file as written ([`RawStore`]), validated once into the
//! [`StoreConfig`] the store is opened with.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::query::TypeMap;
use crate::settings::{defaults, invalid, positive, size, ConfigError, Size};

/// Step 1: `[store]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub db: Option<PathBuf>,
    pub legacy: Option<bool>,
    pub sweep_interval: Option<String>,
    pub max_memory_bytes: Option<Size>,
}

/// How the store is set up: `[store]` validated, plus the business-attribute maps the
/// loader hands over from `[business_attributes]` (shared with the gateway). Tests and
/// `csgate store` build it directly.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The SQLite file; its parent directory is created when missing.
    pub db: PathBuf,
    /// Answer Query Services the way older backends do: every query parameter ignored,
    /// all sections, all extensions, tasks nested in their states.
    pub legacy: bool,
    /// Business-attribute maps by attribute name (`service_type`, `media_type`, ...).
    /// When a map is configured for an attribute, a name unknown to it is refused.
    pub business_attributes: BTreeMap<String, TypeMap>,
    /// How often the sweeper runs; zero disables it.
    pub sweep_interval: Duration,
    /// Largest request body accepted (`settings::defaults::STORE_MAX_BODY_BYTES`);
    /// larger is 413.
    pub max_body_bytes: usize,
    /// SQLite's memory bound (`[store] max_memory_bytes`): its heap limit, half of it
    /// split between the connections' page caches.
    pub max_memory_bytes: usize,
}

/// `[store]`: the sweep interval positive, the memory limit at least 1 MiB; no
/// business-attribute maps yet (the loader adds them) and the default body bound. positive, the memory limit at least 1 MiB.
impl TryFrom<RawStore> for StoreConfig {
    type Error = ConfigError;

    fn try_from(st: RawStore) -> Result<Self, ConfigError> {
        let max_memory_bytes = size(
            "store.max_memory_bytes",
            st.max_memory_bytes,
            defaults::STORE_MAX_MEMORY_BYTES,
        )?;
        if max_memory_bytes < defaults::STORE_MIN_MEMORY_BYTES {
            return Err(invalid("store.max_memory_bytes", "must be at least 1MiB"));
        }
        Ok(StoreConfig {
            max_memory_bytes,
            db: st.db.unwrap_or_else(|| PathBuf::from(defaults::STORE_DB)),
            legacy: st.legacy.unwrap_or(defaults::STORE_LEGACY),
            business_attributes: BTreeMap::new(),
            sweep_interval: positive(
                "store.sweep_interval",
                st.sweep_interval,
                defaults::STORE_SWEEP_INTERVAL,
            )?,
            max_body_bytes: defaults::STORE_MAX_BODY_BYTES,
        })
    }
}
