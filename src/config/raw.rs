//! Step 1: the file as written. Every key is optional (a missing key takes its default
//! in step 2) and an unknown key is refused by serde, naming it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    pub cache: RawCache,
    pub admin: RawAdmin,
    pub log: RawLog,
    pub store: RawStore,
    pub cluster: crate::cluster::RawCluster,
    pub tracing: crate::trace::RawTracing,
    pub limits: crate::limits::RawLimits,
    pub business_attributes: BTreeMap<String, BTreeMap<String, i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub listen: Option<String>,
    pub shutdown_grace: Option<String>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub max_inflight: Option<usize>,
    pub max_query_bytes: Option<Size>,
    pub max_header_bytes: Option<Size>,
    pub max_body_bytes: Option<Size>,
    pub max_key_bytes: Option<Size>,
    pub max_tenant_bytes: Option<Size>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub max_headers: Option<usize>,
    pub drain_delay: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub via: Option<String>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstream {
    pub urls: Option<Vec<String>>,
    pub path_prefix: Option<String>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub deadline: Option<String>,
    pub max_response_bytes: Option<Size>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_host: Option<usize>,
    pub retry_budget: Option<f64>,
    pub max_retries: Option<u32>,
    pub eject_after: Option<u32>,
    pub eject_for: Option<String>,
    pub eject_on: Option<Vec<String>>,
    pub retry_on: Option<Vec<String>>,
    pub preserve_host: Option<bool>,
    pub tls: RawUpstreamTls,
}

/// `[upstream.tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstreamTls {
    pub ca_file: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCache {
    pub enabled: Option<bool>,
    pub ttl: Option<String>,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
    pub max_bytes: Option<Size>,
    pub max_entry_bytes: Option<Size>,
    pub share_across_credentials: Option<bool>,
    pub downstream_cache_control: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    pub listen: Option<String>,
    pub token_file: Option<PathBuf>,
    pub metrics_open: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
    pub redact: Option<bool>,
    pub redact_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    pub db: Option<PathBuf>,
    pub legacy: Option<bool>,
    pub sweep_interval: Option<String>,
    pub max_memory_bytes: Option<Size>,
}

/// A byte size: an integer, or a string such as `"8KiB"`, `"256MiB"`, `"1GiB"`, `"512B"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum Size {
    Bytes(u64),
    Text(String),
}
