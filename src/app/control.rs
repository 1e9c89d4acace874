//! The running gateway's control handle: which `Gateway` serves new requests, and
//! configuration reload (what it applies, and which keys need a restart).

use std::sync::{Arc, Mutex, RwLock};

use url::Url;

use super::{ReloadError, Reloaded, CERT_POLL};
use crate::cache::{Cache, Clock};
use crate::cluster::{self, Cluster, SharedPolicy};
use crate::config::Config;
use crate::logging::LevelHandle;
use crate::pipeline::Gateway;
use crate::telemetry::Metrics;
use crate::trace::Tracer;
use crate::upstream::Upstream;
use crate::upstream::{AttemptObserver, Upstreams};

/// The running gateway's control handle: which `Gateway` serves new requests, and
/// configuration reload.
///
/// Reload builds a new `Gateway` (upstreams, limits, service types) that shares the
/// old one's cache and metrics, and swaps it in; requests already running finish on
/// the old one and no connection is touched. Locking: `current` is read once per
/// request (an `Arc` clone) and written only by `reload`; neither holds it across an
/// `.await`. `probe` is held only to swap the task handle.
#[derive(Clone)]
pub struct Control {
    current: Arc<RwLock<Gateway>>,
    log_level: Option<LevelHandle>,
    probe: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// The embedded store's URL, used whenever the config names no upstream.
    embedded: Option<Url>,
    /// What the running process was started with, for the keys a reload cannot apply.
    started_with: Arc<Config>,
    /// The poll of the upstream client certificate's files.
    identity_watch: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Control {
    /// Builds the first gateway (with the cache, which lives as long as the process)
    /// and starts the health probe.
    pub(super) fn start(
        config: &Config,
        urls: &[Url],
        embedded: Option<Url>,
        clock: Arc<dyn Clock>,
        log_level: Option<LevelHandle>,
    ) -> anyhow::Result<Control> {
        let metrics = Metrics::new();
        let cache = config.cache.enabled.then(|| {
            Cache::new(
                &config.cache,
                config.upstream.cache_wait(),
                config.service_types(),
                metrics.cache().clone(),
                clock,
            )
        });
        let cluster = join_fleet(config, cache.as_ref(), &metrics)?;
        // One exporter for the process: `[tracing]` needs a restart, like `[cluster]`.
        let tracer = Tracer::start(&config.tracing, metrics.trace().clone());
        if tracer.is_some() {
            tracing::info!(
                endpoint = %config.tracing.endpoint,
                sampler = ?config.tracing.sampler,
                "exporting OpenTelemetry traces"
            );
        }
        let control = Control {
            current: Arc::new(RwLock::new(gateway(
                config, urls, cache, cluster, tracer, metrics,
            ))),
            log_level,
            probe: Arc::default(),
            embedded,
            started_with: Arc::new(config.clone()),
            identity_watch: Arc::default(),
        };
        control.watch_identity(config);
        control.start_probe();
        Ok(control)
    }

    /// The gateway serving new requests.
    pub fn gateway(&self) -> Gateway {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a new, already validated configuration: upstreams, request limits,
    /// service types, cache freshness times, log level. Listen addresses, TLS, the
    /// cache size bound, `[cache] enabled` and `[store]` need a restart.
    pub fn reload(&self, config: &Config) -> Result<Reloaded, ReloadError> {
        let urls = match (&config.upstream.target, &self.embedded) {
            (Upstream::Urls(urls), _) => urls.clone(),
            (Upstream::Embedded(_), Some(url)) => vec![url.clone()],
            (Upstream::Embedded(_), None) => return Err(ReloadError::NoEmbeddedStore),
        };
        let old = self.gateway();
        let metrics = old.metrics().clone();
        let cache = old.cache().cloned();
        if let Some(cache) = &cache {
            cache.set_policy(config.cache.policy());
            cache.set_types(config.service_types());
        }
        // `[cluster]` needs a restart: the fleet membership carries over.
        let cluster = old.cluster().cloned();
        let tracer = old.tracer().cloned();
        let new = gateway(config, &urls, cache, cluster, tracer, metrics);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        self.watch_identity(config);
        self.start_probe();
        if let Some(handle) = &self.log_level {
            if let Err(error) = handle.set(&config.log.level) {
                tracing::warn!(%error, "log level not changed");
            }
        }
        let upstreams = urls.iter().map(Url::as_str).collect::<Vec<_>>();
        let not_applied = needs_restart(&self.started_with, config);
        if not_applied.is_empty() {
            tracing::info!(?upstreams, "configuration reloaded");
        } else {
            tracing::warn!(
                ?upstreams,
                not_applied = %not_applied.join(", "),
                "configuration reloaded, except keys that need a restart (the running \
                 values stay)"
            );
        }
        Ok(Reloaded { not_applied })
    }

    /// (Re)starts the active health probe for the current upstreams.
    fn start_probe(&self) {
        let task = tokio::spawn(self.gateway().upstreams().clone().probe_loop());
        if let Some(old) = self
            .probe
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    pub(super) fn stop_probe(&self) {
        if let Some(task) = self.probe.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        if let Some(task) = self
            .identity_watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }

    /// Polls the upstream client certificate's files of `config` (replacing the watch
    /// of an earlier configuration's).
    fn watch_identity(&self, config: &Config) {
        let task = config
            .upstream
            .tls
            .identity
            .clone()
            .map(|slot| slot.watch(CERT_POLL));
        let old = std::mem::replace(
            &mut *self
                .identity_watch
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            task,
        );
        if let Some(old) = old {
            old.abort();
        }
    }
}

/// Joins the fleet `[cluster]` names (never waiting for Redis): received invalidations
/// and flushes go to `cache`, whose hits the bus gates. `None` runs alone, as does a
/// gateway without a cache (it has nothing to keep coherent).
fn join_fleet(
    config: &Config,
    cache: Option<&Cache>,
    metrics: &Metrics,
) -> anyhow::Result<Option<Cluster>> {
    if !config.cluster.enabled() {
        return Ok(None);
    }
    let Some(cache) = cache else {
        tracing::warn!("[cluster] is ignored: [cache] enabled = false");
        return Ok(None);
    };
    let policy = SharedPolicy {
        entry_ttl: config.cache.policy().retention(),
        fetch_window: config.upstream.cache_wait(),
        max_entry_bytes: config.cache.max_entry_bytes,
        ttl: config.cache.policy().ttl,
        // Set from `[cluster]` by `Cluster::start`.
        max_bytes: 0,
        tenant_max_bytes: 0,
    };
    let (applied, acks) = cluster::applied_channel();
    let sink = cluster::apply_to(cache.clone(), metrics.cluster().clone(), Some(applied));
    let cluster = Cluster::start(
        &config.cluster,
        policy,
        metrics.cluster().clone(),
        sink,
        Some(acks),
    )?;
    if let Some(cluster) = &cluster {
        cache.set_gate(Arc::new(cluster.bus.clone()));
    }
    Ok(cluster)
}

/// A gateway over `urls` that shares `cache`, `cluster`, `tracer` and `metrics` with
/// its predecessor.
fn gateway(
    config: &Config,
    urls: &[Url],
    cache: Option<Cache>,
    cluster: Option<Cluster>,
    tracer: Option<Tracer>,
    metrics: Metrics,
) -> Gateway {
    let observer_metrics = metrics.clone();
    let observer: AttemptObserver = Arc::new(move |target, outcome, elapsed| {
        observer_metrics.observe_upstream(target, outcome.label(), elapsed);
    });
    let upstreams = Upstreams::new(&config.upstream, urls, Some(observer));
    Gateway::in_fleet(
        config.pipeline(),
        upstreams,
        cache,
        cluster,
        tracer,
        metrics,
    )
}

/// The keys whose change `new` makes that a reload leaves as they were at start:
/// listeners, TLS, the admin settings, the cache's existence and byte bounds, the
/// embedded store and the fleet.
fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let checks: [(&'static str, bool); 10] = [
        ("server.listen", running.server.listen != new.server.listen),
        ("server.tls", differs(&running.server.tls, &new.server.tls)),
        ("admin", differs(&running.admin, &new.admin)),
        ("cache.enabled", running.cache.enabled != new.cache.enabled),
        (
            "cache.max_bytes",
            running.cache.max_bytes != new.cache.max_bytes,
        ),
        (
            "cache.max_entry_bytes",
            running.cache.max_entry_bytes != new.cache.max_entry_bytes,
        ),
        ("store", differs(&running.store, &new.store)),
        ("cluster", differs(&running.cluster, &new.cluster)),
        ("log.format", differs(&running.log.format, &new.log.format)),
        ("tracing", running.tracing != new.tracing),
    ];
    checks
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
}
