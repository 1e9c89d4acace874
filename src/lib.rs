//! csgate: a caching, validating gateway for the Genesys Context Services API.
//!
//! # Layout
//! - [`config`]: the TOML file, validated once into typed settings; defaults; precedence.
//! - [`server`]: the accept loop every listener uses (HTTP/1.1 + h2, graceful shutdown).
//! - [`routes`]: which route a request is (six Query Services routes, by-id, proxy).
//! - [`query`]: Query Services parameters (`params`, `date`) and the post-filter (`filter`).
//! - [`pipeline`]: the public request pipeline as named stages, and transparent proxying.
//! - [`upstream`]: pooled client, health, retries, deadlines.
//! - [`cache`]: the anonymous-lookup cache (moka), its freshness and invalidation.
//! - [`cluster`]: a fleet on one Redis: invalidation bus, shared tier, fleet lock.
//! - [`admin`]: health, readiness, metrics, cache administration on the admin listener.
//! - [`metrics`]: Prometheus metrics.
//! - [`error`]: gateway-made errors and the one place they become responses.
//! - [`logging`]: tracing set-up and redaction of personal data.
//! - [`httputil`]: body constructors, hop-by-hop headers, request ids.
//! - [`tls`]: rustls on the public listener.
//! - [`store`]: the reference Context Services store on SQLite (embedded by default).
#![forbid(unsafe_code)]

pub mod admin;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod error;
pub mod httputil;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod query;
pub mod routes;
pub mod server;
pub mod store;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};

use tokio::net::TcpListener;

use crate::admin::Draining;
use crate::cache::{Cache, Clock, Policy, SystemClock};
use crate::config::Config;
use crate::logging::LevelHandle;
use crate::metrics::Metrics;
use crate::pipeline::Gateway;
use crate::server::{Plain, ServeOptions};
use crate::tls::Tls;
use crate::upstream::Upstreams;

/// The listeners `run` serves on, bound by the caller (tests bind `127.0.0.1:0`).
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

fn upstreams_for(config: &Config, metrics: &Metrics) -> Upstreams {
    let observer_metrics = metrics.clone();
    let observer: upstream::AttemptObserver = Arc::new(move |target, outcome, elapsed| {
        observer_metrics.observe_upstream(target, outcome.label(), elapsed);
    });
    Upstreams::new(&config.upstream, Some(observer))
}

fn policy_for(config: &Config) -> Policy {
    Policy {
        ttl: config.cache.ttl,
        stale_while_revalidate: config.cache.stale_while_revalidate,
        stale_if_error: config.cache.stale_if_error,
    }
}

/// Builds the gateway for `config` (whose `upstream.urls` must be final).
pub fn build_gateway(config: &Config, clock: Arc<dyn Clock>) -> Gateway {
    let metrics = Metrics::new();
    let upstreams = upstreams_for(config, &metrics);
    let cache = config.cache.enabled.then(|| {
        Cache::new(
            &config.cache,
            config.upstream.deadline + std::time::Duration::from_secs(1),
            config.service_types(),
            metrics.clone(),
            clock,
        )
    });
    Gateway::new(config, upstreams, cache, metrics)
}

/// The running gateway's control handle: which `Gateway` serves new requests, and
/// configuration reload (SIGHUP).
///
/// Reload builds a new `Gateway` (upstreams, limits, service types) that shares the
/// old one's cache and metrics, and swaps it in; requests already running finish on
/// the old one and no connection is touched. Locking: `current` is read once per
/// request (an `Arc` clone) and written only by `reload`; neither holds it across an
/// `.await`.
#[derive(Clone)]
pub struct Control {
    current: Arc<RwLock<Gateway>>,
    log_level: Option<LevelHandle>,
    probe: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Control {
    pub fn new(gateway: Gateway, log_level: Option<LevelHandle>) -> Control {
        Control {
            current: Arc::new(RwLock::new(gateway)),
            log_level,
            probe: Arc::default(),
        }
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
    /// cache size bound and `[cache] enabled` need a restart.
    pub fn reload(&self, config: &Config) {
        let old = self.gateway();
        let metrics = old.metrics().clone();
        let cache = old.cache().cloned();
        if let Some(cache) = &cache {
            cache.set_policy(policy_for(config));
            cache.set_types(config.service_types());
        }
        let upstreams = upstreams_for(config, &metrics);
        let new = Gateway::new(config, upstreams, cache, metrics);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        self.start_probe();
        if let Some(handle) = &self.log_level {
            if let Err(error) = handle.set(&config.log.level) {
                tracing::warn!(%error, "log level not changed");
            }
        }
        tracing::info!(
            upstreams = ?config.upstream.urls.iter().map(url::Url::as_str).collect::<Vec<_>>(),
            "configuration reloaded"
        );
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

    fn stop_probe(&self) {
        if let Some(task) = self.probe.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// Serves the gateway until `shutdown` resolves, then drains within
/// `server.shutdown_grace`. `config.upstream.urls` must be non-empty (the binary starts
/// the embedded store first when it is not).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let control = Control::new(build_gateway(&config, Arc::new(SystemClock)), None);
    serve(control, &config, listeners, shutdown).await
}

/// `run` with a gateway built by the caller (tests inject a clock this way).
pub async fn serve_gateway(
    gateway: Gateway,
    config: &Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve(Control::new(gateway, None), config, listeners, shutdown).await
}

/// Serves through `control` (so the caller can reload) until `shutdown` resolves.
pub async fn serve(
    control: Control,
    config: &Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.upstream.urls.is_empty(),
        "upstream.urls is empty and no embedded store was started"
    );
    let tls = config.server.tls.as_ref().map(Tls::load).transpose()?;
    let draining = Draining::default();
    let options = ServeOptions {
        header_read_timeout: config.server.header_read_timeout,
        // Well above the gateway's own limits, so the gateway answers 414/431 itself (in
        // the CS error shape) for all but absurd heads; hyper refuses those with a bare 431.
        max_buf_size: ((config.server.max_header_bytes + config.server.max_query_bytes) * 4)
            .max(256 * 1024),
        shutdown_grace: config.server.shutdown_grace,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The admin listener outlives the public one: probes must see readiness go 503
    // while the public listener drains.
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    control.start_probe();

    let admin_control = control.clone();
    let admin_draining = draining.clone();
    let admin = tokio::spawn(server::serve(
        listeners.admin,
        Plain,
        ServeOptions::default(),
        move |request, _peer| {
            admin::handle(admin_control.gateway(), admin_draining.clone(), request)
        },
        stopped(admin_stop_rx),
    ));

    let public_control = control.clone();
    let handler = move |request, peer| {
        let gateway = public_control.gateway();
        async move { gateway.handle(request, peer).await }
    };
    let public = async {
        match tls {
            Some(tls) => {
                server::serve(
                    listeners.public,
                    tls,
                    options,
                    handler,
                    stopped(stop_rx.clone()),
                )
                .await
            }
            None => {
                server::serve(
                    listeners.public,
                    Plain,
                    options,
                    handler,
                    stopped(stop_rx.clone()),
                )
                .await
            }
        }
    };
    let trigger = async {
        shutdown.await;
        tracing::info!("shutdown: draining");
        draining.start();
        let _ = stop_tx.send(true);
    };
    tokio::join!(public, trigger);
    let _ = admin_stop_tx.send(true);
    let _ = admin.await;
    control.stop_probe();
    tracing::info!("shutdown complete");
    Ok(())
}
