//! The `[tracing]` section: the file as written ([`RawTracing`]), the standard `OTEL_*`
//! variables over it ([`OtelEnv`]), validated once into [`TracingConfig`]. Every default
//! lives in [`defaults`], each with the reason for it.

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use url::Url;

use crate::settings::{positive, ConfigError};

/// Every default of `[tracing]`, once.
pub mod defaults {
    use std::time::Duration;

    /// Off: an operator who has no collector pays nothing, and one who has opts in.
    pub const ENABLED: bool = false;
    /// The OTLP/HTTP port the OpenTelemetry Collector listens on, on this host (a
    /// sidecar or node agent), at the signal's standard path.
    pub const ENDPOINT: &str = "http://127.0.0.1:4318/v1/traces";
    /// What the span's `service.name` resource says unless told otherwise.
    pub const SERVICE_NAME: &str = "csgate";
    /// The OpenTelemetry SDK's default (`parentbased_always_on`): a caller that
    /// sampled its trace gets csgate's spans in it, one that did not gets none.
    pub const SAMPLER: &str = "parentbased_always_on";
    /// The ratio of the `*traceidratio` samplers when none is given: everything.
    pub const SAMPLER_ARG: f64 = 1.0;
    /// The SDK's `OTEL_BSP_MAX_QUEUE_SIZE`: about four hundred requests' spans, a few
    /// hundred kilobytes at most, so a collector that is away costs bounded memory.
    pub const MAX_QUEUE: usize = 2048;
    /// The SDK's `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: one POST carries at most this many.
    pub const BATCH: usize = 512;
    /// The SDK's `OTEL_BSP_SCHEDULE_DELAY`: how long a span may wait for its batch.
    pub const EXPORT_INTERVAL: Duration = Duration::from_secs(5);
    /// The SDK's `OTEL_EXPORTER_OTLP_TIMEOUT`: one POST, connect included.
    pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Step 1: `[tracing]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTracing {
    /// Export spans at all (default false).
    pub enabled: Option<bool>,
    /// The OTLP/HTTP traces URL, path included (`http://collector:4318/v1/traces`).
    pub endpoint: Option<String>,
    /// The `service.name` resource attribute.
    pub service_name: Option<String>,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
    /// `parentbased_always_off` or `parentbased_traceidratio`.
    pub sampler: Option<String>,
    /// The ratio (0 to 1) of the `*traceidratio` samplers.
    pub sampler_arg: Option<f64>,
    /// Sent with every export (e.g. an API key of a hosted collector).
    pub headers: Option<BTreeMap<String, String>>,
    /// Spans waiting for export at most; past it they are dropped and counted.
    pub max_queue: Option<usize>,
    /// Spans per export request at most.
    pub batch: Option<usize>,
    /// e.g. `"5s"`: the longest a span waits for a batch to fill.
    pub export_interval: Option<String>,
    /// e.g. `"10s"`: one export request, connect included.
    pub export_timeout: Option<String>,
}

/// The standard OpenTelemetry variables csgate reads. Precedence, as for `CSGATE_*`:
/// environment over file; `OTEL_EXPORTER_OTLP_TRACES_*` over `OTEL_EXPORTER_OTLP_*`.
#[derive(Debug, Default, Clone)]
pub struct OtelEnv {
    /// `OTEL_SDK_DISABLED=true` turns tracing off whatever the file says.
    pub sdk_disabled: bool,
    pub service_name: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// with `/v1/traces` appended (the OTLP exporter specification's rule).
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`: `key=value,…`, values percent-encoded.
    pub headers: Option<String>,
    pub sampler: Option<String>,
    pub sampler_arg: Option<String>,
    /// `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`: only `http/protobuf` is spoken.
    pub protocol: Option<String>,
}

impl OtelEnv {
    /// Reads the `OTEL_*` variables from `vars` (pass `std::env::vars()`); empty values
    /// count as unset, as the specification asks.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> OtelEnv {
        let mut out = OtelEnv::default();
        let (mut base, mut traces) = (None, None);
        let (mut headers, mut traces_headers) = (None, None);
        let (mut protocol, mut traces_protocol) = (None, None);
        for (name, value) in vars {
            if value.trim().is_empty() {
                continue;
            }
            match name.as_str() {
                "OTEL_SDK_DISABLED" => out.sdk_disabled = value.trim() == "true",
                "OTEL_SERVICE_NAME" => out.service_name = Some(value),
                "OTEL_EXPORTER_OTLP_ENDPOINT" => base = Some(value),
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => traces = Some(value),
                "OTEL_EXPORTER_OTLP_HEADERS" => headers = Some(value),
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => traces_headers = Some(value),
                "OTEL_EXPORTER_OTLP_PROTOCOL" => protocol = Some(value),
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" => traces_protocol = Some(value),
                "OTEL_TRACES_SAMPLER" => out.sampler = Some(value),
                "OTEL_TRACES_SAMPLER_ARG" => out.sampler_arg = Some(value),
                _ => {}
            }
        }
        out.endpoint = traces.or_else(|| {
            base.map(|base| format!("{}/v1/traces", base.trim().trim_end_matches('/')))
        });
        out.headers = traces_headers.or(headers);
        out.protocol = traces_protocol.or(protocol);
        out
    }
}

/// Which requests are traced (the OpenTelemetry SDK's samplers, by their
/// `OTEL_TRACES_SAMPLER` names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// The trace id decides, for `ratio` (0 to 1) of the traces.
    TraceIdRatio(f64),
    /// The caller's sampled flag when it sent a `traceparent`, else the inner sampler.
    ParentBased(Root),
}

/// The sampler a parent-based sampler uses for a request with no `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

/// Step 2: `[tracing]` validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    pub enabled: bool,
    pub endpoint: Url,
    pub service_name: String,
    pub sampler: Sampler,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub max_queue: usize,
    pub batch: usize,
    pub export_interval: Duration,
    pub export_timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig::try_from(RawTracing::default()).expect("the defaults are valid")
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("tracing.{key}"),
        message: message.into(),
    }
}

impl RawTracing {
    /// `env` over the file (the one place the `OTEL_*` variables are applied).
    pub fn apply(&mut self, env: &OtelEnv) -> Result<(), ConfigError> {
        if env.sdk_disabled {
            self.enabled = Some(false);
        }
        if let Some(protocol) = &env.protocol {
            if protocol.trim() != "http/protobuf" {
                return Err(invalid(
                    "endpoint",
                    format!(
                        "OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: csgate exports \
                         http/protobuf only"
                    ),
                ));
            }
        }
        if let Some(name) = &env.service_name {
            self.service_name = Some(name.clone());
        }
        if let Some(endpoint) = &env.endpoint {
            self.endpoint = Some(endpoint.trim().to_owned());
        }
        if let Some(headers) = &env.headers {
            self.headers = Some(parse_header_list(headers)?);
        }
        if let Some(sampler) = &env.sampler {
            self.sampler = Some(sampler.trim().to_owned());
        }
        if let Some(arg) = &env.sampler_arg {
            let arg = arg.trim().parse::<f64>().map_err(|_| {
                invalid(
                    "sampler_arg",
                    format!("OTEL_TRACES_SAMPLER_ARG={arg}: not a number"),
                )
            })?;
            self.sampler_arg = Some(arg);
        }
        Ok(())
    }
}

/// `key=value,key2=value2`, each value percent-decoded (the OTLP exporter
/// specification's format of `OTEL_EXPORTER_OTLP_HEADERS`).
fn parse_header_list(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(invalid(
                "headers",
                "OTEL_EXPORTER_OTLP_HEADERS: an entry without '='",
            ));
        };
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| invalid("headers", "OTEL_EXPORTER_OTLP_HEADERS: not UTF-8"))?;
        out.insert(key.trim().to_owned(), value.into_owned());
    }
    Ok(out)
}

impl TryFrom<RawTracing> for TracingConfig {
    type Error = ConfigError;

    fn try_from(raw: RawTracing) -> Result<TracingConfig, ConfigError> {
        let endpoint_text = raw.endpoint.as_deref().unwrap_or(defaults::ENDPOINT);
        let endpoint = Url::parse(endpoint_text)
            .map_err(|e| invalid("endpoint", format!("'{endpoint_text}': {e}")))?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(invalid(
                "endpoint",
                format!("'{endpoint_text}' must be an http:// or https:// URL"),
            ));
        }
        let service_name = raw
            .service_name
            .unwrap_or_else(|| defaults::SERVICE_NAME.to_owned());
        if service_name.trim().is_empty() {
            return Err(invalid("service_name", "must not be empty"));
        }
        let arg = raw.sampler_arg.unwrap_or(defaults::SAMPLER_ARG);
        if !(0.0..=1.0).contains(&arg) {
            return Err(invalid(
                "sampler_arg",
                format!("{arg} is not between 0 and 1"),
            ));
        }
        let sampler_name = raw.sampler.as_deref().unwrap_or(defaults::SAMPLER);
        let sampler = match sampler_name {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatio(arg),
            "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
            "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
            "parentbased_traceidratio" => Sampler::ParentBased(Root::TraceIdRatio(arg)),
            other => {
                return Err(invalid(
                    "sampler",
                    format!(
                        "'{other}' is not one of always_on, always_off, traceidratio, \
                         parentbased_always_on, parentbased_always_off, \
                         parentbased_traceidratio"
                    ),
                ))
            }
        };
        let headers = raw
            .headers
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| {
                let header = HeaderName::try_from(name.as_str())
                    .map_err(|_| invalid("headers", format!("'{name}' is not a header name")))?;
                let value = HeaderValue::try_from(value)
                    .map_err(|_| invalid("headers", format!("{name}: not a header value")))?;
                Ok((header, value))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let max_queue = raw.max_queue.unwrap_or(defaults::MAX_QUEUE);
        let batch = raw.batch.unwrap_or(defaults::BATCH);
        if max_queue == 0 || batch == 0 {
            return Err(invalid("max_queue", "max_queue and batch must be above 0"));
        }
        if batch > max_queue {
            return Err(invalid(
                "batch",
                format!("{batch} is larger than max_queue ({max_queue})"),
            ));
        }
        let duration = |key: &str, text: Option<String>, default: Duration| {
            positive(&format!("tracing.{key}"), text, default)
        };
        Ok(TracingConfig {
            enabled: raw.enabled.unwrap_or(defaults::ENABLED),
            endpoint,
            service_name,
            sampler,
            headers,
            max_queue,
            batch,
            export_interval: duration(
                "export_interval",
                raw.export_interval,
                defaults::EXPORT_INTERVAL,
            )?,
            export_timeout: duration(
                "export_timeout",
                raw.export_timeout,
                defaults::EXPORT_TIMEOUT,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn with_env(raw: RawTracing, pairs: &[(&str, &str)]) -> Result<TracingConfig, ConfigError> {
        let mut raw = raw;
        raw.apply(&OtelEnv::from_env(vars(pairs)))?;
        TracingConfig::try_from(raw)
    }

    #[test]
    fn defaults_are_off_local_and_parent_based() {
        let config = TracingConfig::default();
        assert!(!config.enabled);
        assert_eq!(config.endpoint.as_str(), defaults::ENDPOINT);
        assert_eq!(config.service_name, "csgate");
        assert_eq!(config.sampler, Sampler::ParentBased(Root::AlwaysOn));
        assert_eq!((config.max_queue, config.batch), (2048, 512));
    }

    #[test]
    fn otel_variables_beat_the_file_and_traces_ones_beat_the_general_ones() {
        let file = RawTracing {
            enabled: Some(true),
            endpoint: Some("http://file:4318/v1/traces".into()),
            service_name: Some("from-file".into()),
            ..RawTracing::default()
        };
        let config = with_env(
            file.clone(),
            &[
                ("OTEL_SERVICE_NAME", "from-env"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318/"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,x-tenant=t"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ],
        )
        .expect("valid");
        assert!(config.enabled);
        assert_eq!(config.service_name, "from-env");
        assert_eq!(config.endpoint.as_str(), "http://base:4318/v1/traces");
        assert_eq!(
            config.sampler,
            Sampler::ParentBased(Root::TraceIdRatio(0.25))
        );
        assert_eq!(config.headers[0].0, "api-key");
        assert_eq!(config.headers[0].1, "a b");
        let config = with_env(
            file.clone(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://traces:4318/x",
                ),
                ("OTEL_SDK_DISABLED", "true"),
            ],
        )
        .expect("valid");
        assert_eq!(config.endpoint.as_str(), "https://traces:4318/x");
        assert!(!config.enabled);
        // An empty variable is unset.
        let config = with_env(file, &[("OTEL_SERVICE_NAME", "")]).expect("valid");
        assert_eq!(config.service_name, "from-file");
    }

    #[test]
    fn invalid_settings_name_their_key() {
        let cases: [(&[(&str, &str)], &str); 5] = [
            (&[("OTEL_TRACES_SAMPLER", "sometimes")], "tracing.sampler"),
            (&[("OTEL_TRACES_SAMPLER_ARG", "2")], "tracing.sampler_arg"),
            (
                &[("OTEL_TRACES_SAMPLER_ARG", "half")],
                "tracing.sampler_arg",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                "tracing.endpoint",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x")],
                "tracing.endpoint",
            ),
        ];
        for (env, key) in cases {
            match with_env(RawTracing::default(), env) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{env:?}"),
                other => panic!("{env:?}: {other:?}"),
            }
        }
        let raw = RawTracing {
            batch: Some(10),
            max_queue: Some(5),
            ..RawTracing::default()
        };
        assert!(matches!(
            TracingConfig::try_from(raw),
            Err(ConfigError::Invalid { key, .. }) if key == "tracing.batch"
        ));
    }
}
