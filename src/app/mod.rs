//! The one start-up path: from a validated config and bound listeners to a serving
//! gateway, with the embedded store when no upstream is configured, reload on request,
//! and an orderly shutdown (public listener drains, then admin, then the store).
//!
//! The binary calls [`run`] with signal-driven `shutdown` and `reloads`; tests call it
//! with a channel and a oneshot, so SIGHUP and the embedded store are tested in-process.
//!
//! - `listeners`: the public and admin listeners;
//! - `reload`: where the configuration comes from, and applying a reload;
//! - `control`: the handle on the running gateway, which a reload swaps;
//! - `embedded`: the reference store, embedded or on its own;
//! - `options`: what a caller may change, and the ready file.

mod control;
mod embedded;
mod listeners;
mod options;
mod reload;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use url::Url;

pub use control::Control;
pub use embedded::run_store;
pub use listeners::Listeners;
pub use options::{Options, ReadyFile};
pub use reload::{Reload, ReloadError, Reloaded, Sources, DEFAULT_CONFIG};

use crate::admin::Draining;
use crate::config::Config;
use crate::tls::{CertSlot, Tls};
use crate::upstream::Upstream;
use embedded::{start_embedded, Embedded};

async fn bind(address: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("{what}: cannot bind {address}"))
}

/// `csgate --check`: what validation cannot see without reading other files (TLS
/// material), so a missing or unreadable file fails the check, not the start.
pub fn check(config: &Config) -> anyhow::Result<()> {
    if let Some(tls) = &config.server.tls {
        Tls::load(tls)?;
    }
    if let Some(url) = &config.cluster.redis_url {
        // What the client would refuse at start (e.g. rediss:// without TLS support);
        // the URL is not repeated, it may hold a password.
        redis::Client::open(url.as_str())
            .map_err(|e| anyhow::anyhow!("cluster.redis_url: not usable ({:?})", e.kind()))?;
    }
    Ok(())
}

/// Serves the gateway until `shutdown` resolves, applying each request from `reloads`
/// (re-read from `sources`), then drains within `server.shutdown_grace`. When the
/// config names no upstream, the embedded store is started first and stopped last.
pub async fn run(
    config: Config,
    sources: Sources,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    reloads: mpsc::Receiver<Reload>,
    options: Options,
) -> anyhow::Result<()> {
    let tls = config.server.tls.as_ref().map(Tls::load).transpose()?;
    // Certificates rotate without a restart: their files are polled, and SIGHUP re-reads
    // them (the upstream client certificate with the rest of the configuration).
    let server_cert = tls.as_ref().map(|tls| {
        let slot = tls.slot();
        (slot.clone(), slot.watch(CERT_POLL))
    });
    // Stopped in this order: public (drains), admin (readiness stayed visible), store
    // (the drained requests may have needed it).
    let (public_stop, public_stopped) = watch::channel(false);
    let (admin_stop, admin_stopped) = watch::channel(false);
    let (store_stop, store_stopped) = watch::channel(false);

    let embedded = match &config.upstream.target {
        Upstream::Embedded(store) => {
            let store = store.clone();
            Some(start_embedded(store, stopped(store_stopped)).await?)
        }
        Upstream::Urls(_) => None,
    };
    let control = start(&config, &listeners, embedded.as_ref(), options)?;

    let draining = Draining::default();
    let admin = tokio::spawn(listeners::serve_admin(
        listeners.admin,
        &config,
        &control,
        &draining,
        stopped(admin_stopped),
    ));
    let public = listeners::serve_public(
        listeners.public,
        tls,
        &config,
        &control,
        stopped(public_stopped),
    );
    let slot = server_cert.as_ref().map(|(slot, _)| &**slot);
    let reloader = reload::apply_reloads(reloads, &sources, &control, slot);
    let trigger = async {
        shutdown.await;
        tracing::info!("shutdown: draining");
        draining.start();
        let _ = public_stop.send(true);
    };
    tokio::select! {
        _ = async { tokio::join!(public, trigger) } => {}
        () = reloader => {}
    }
    let _ = admin_stop.send(true);
    let _ = admin.await;
    let stopping = Stopping {
        control,
        server_cert,
        store_stop,
        embedded,
    };
    stopping.finish().await;
    Ok(())
}

/// Builds the gateway (over the configured upstreams, else the embedded store) and
/// tells whoever asked (`options.started`, `options.ready_file`) that it is built.
fn start(
    config: &Config,
    listeners: &Listeners,
    embedded: Option<&Embedded>,
    options: Options,
) -> anyhow::Result<Control> {
    let embedded_url = embedded.map(|e| e.url.clone());
    let urls = match (&config.upstream.target, &embedded_url) {
        (Upstream::Urls(urls), _) => urls.clone(),
        (Upstream::Embedded(_), url) => url.iter().cloned().collect(),
    };
    tracing::info!(
        listen = %listeners.public.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        upstreams = ?urls.iter().map(Url::as_str).collect::<Vec<_>>(),
        "csgate started"
    );
    let control = Control::start(
        config,
        &urls,
        embedded_url,
        options.clock,
        options.log_level,
    )?;
    if let Some(started) = options.started {
        let _ = started.send(control.clone());
    }
    if let Some(path) = &options.ready_file {
        let bound = ReadyFile {
            listen: listeners.public.local_addr()?,
            admin: listeners.admin.local_addr()?,
        };
        bound.write(path)?;
    }
    Ok(control)
}

/// What is left to stop once both listeners have: the background tasks, the fleet
/// membership, the embedded store, and the trace exporter.
struct Stopping {
    control: Control,
    server_cert: Option<(Arc<CertSlot>, tokio::task::JoinHandle<()>)>,
    store_stop: watch::Sender<bool>,
    embedded: Option<Embedded>,
}

impl Stopping {
    async fn finish(self) {
        let control = self.control;
        control.stop_probe();
        if let Some(cluster) = control.gateway().cluster() {
            // Drained: no more writes. The peers stop counting on this replica at once
            // (unless it still holds invalidations; then they wait for peer_timeout).
            cluster.bus.leave().await;
        }
        if let Some((_, watch)) = self.server_cert {
            watch.abort();
        }
        let _ = self.store_stop.send(true);
        if let Some(embedded) = self.embedded {
            let _ = embedded.task.await;
        }
        if let Some(tracer) = control.gateway().tracer() {
            tracer.flush(TRACE_FLUSH_ON_SHUTDOWN).await;
        }
        tracing::info!("shutdown complete");
    }
}

/// Resolves once `true` is sent (or the sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The longest shutdown waits for the last spans to reach the collector: after the
/// drain (`shutdown_grace`, 25 s by default) and within Kubernetes' 30 s termination
/// grace; a collector slower than that loses them (counted as `export_failed`).
const TRACE_FLUSH_ON_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

/// How often certificate files are looked at for a change (length, modification time).
const CERT_POLL: std::time::Duration = std::time::Duration::from_secs(2);
