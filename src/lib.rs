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
//! - [`admin`]: health, readiness, metrics, cache administration on the admin listener.
//! - [`metrics`]: Prometheus metrics.
//! - [`error`]: gateway-made errors and the one place they become responses.
//! - [`logging`]: tracing set-up and redaction of personal data.
//! - [`httputil`]: body constructors, hop-by-hop headers, request ids.
//! - [`store`]: the reference Context Services store on SQLite (embedded by default).
#![forbid(unsafe_code)]

pub mod admin;
pub mod cache;
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
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::admin::Draining;
use crate::cache::{Cache, Clock, SystemClock};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::Gateway;
use crate::server::{Plain, ServeOptions};
use crate::upstream::Upstreams;

/// The listeners `run` serves on, bound by the caller (tests bind `127.0.0.1:0`).
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

/// Builds the gateway for `config` (whose `upstream.urls` must be final).
pub fn build_gateway(config: &Config, clock: Arc<dyn Clock>) -> Gateway {
    let metrics = Metrics::new();
    let observer_metrics = metrics.clone();
    let observer: upstream::AttemptObserver = Arc::new(move |target, outcome, elapsed| {
        observer_metrics.observe_upstream(target, outcome.label(), elapsed);
    });
    let upstreams = Upstreams::new(&config.upstream, Some(observer));
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

/// Serves the gateway until `shutdown` resolves, then drains within
/// `server.shutdown_grace`. `config.upstream.urls` must be non-empty (the binary starts
/// the embedded store first when it is not).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let gateway = build_gateway(&config, Arc::new(SystemClock));
    serve_gateway(gateway, &config, listeners, shutdown).await
}

/// `run` with a gateway built by the caller (tests inject a clock this way).
pub async fn serve_gateway(
    gateway: Gateway,
    config: &Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.upstream.urls.is_empty(),
        "upstream.urls is empty and no embedded store was started"
    );
    let draining = Draining::default();
    let options = ServeOptions {
        header_read_timeout: config.server.header_read_timeout,
        // Above the gateway's own header limit, so the gateway answers 431 itself.
        max_buf_size: (config.server.max_header_bytes + config.server.max_query_bytes)
            .max(16 * 1024)
            * 2,
        shutdown_grace: config.server.shutdown_grace,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let probe = tokio::spawn(gateway.upstreams().clone().probe_loop());

    let admin_gateway = gateway.clone();
    let admin_draining = draining.clone();
    let admin = tokio::spawn(server::serve(
        listeners.admin,
        Plain,
        ServeOptions::default(),
        move |request, _peer| admin::handle(admin_gateway.clone(), admin_draining.clone(), request),
        stopped(stop_rx.clone()),
    ));

    let public_gateway = gateway.clone();
    let handler = move |request, peer| {
        let gateway = public_gateway.clone();
        async move { gateway.handle(request, peer).await }
    };
    let public = server::serve(
        listeners.public,
        Plain,
        options,
        handler,
        stopped(stop_rx.clone()),
    );
    let trigger = async {
        shutdown.await;
        tracing::info!("shutdown: draining");
        draining.start();
        let _ = stop_tx.send(true);
    };
    tokio::join!(public, trigger);
    let _ = admin.await;
    probe.abort();
    tracing::info!("shutdown complete");
    Ok(())
}
