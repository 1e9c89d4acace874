//! The one start-up path: from a validated config and bound listeners to a serving
//! gateway, with the embedded store when no upstream is configured, reload on request,
//! and an orderly shutdown (public listener drains, then admin, then the store).
//!
//! The binary calls [`run`] with signal-driven `shutdown` and `reloads`; tests call it
//! with a channel and a oneshot, so SIGHUP and the embedded store are tested in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use url::Url;

use crate::admin::{self, Draining};
use crate::cache::{Cache, Clock, SystemClock};
use crate::cluster::{self, Cluster, SharedPolicy};
use crate::config::{defaults, Config, ConfigError, Overrides, Upstream};
use crate::logging::LevelHandle;
use crate::pipeline::Gateway;
use crate::server::{self, Plain, ServeOptions};
use crate::store::{self, Store, StoreConfig};
use crate::telemetry::Metrics;
use crate::tls::Tls;
use crate::trace::Tracer;
use crate::upstream::{AttemptObserver, Upstreams};

/// The listeners [`run`] serves on, bound by the caller (tests bind `127.0.0.1:0`).
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `server.listen` and `admin.listen`; an error names the key.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        Ok(Listeners {
            public: bind(&config.server.listen.to_string(), "server.listen").await?,
            admin: bind(&config.admin.listen.to_string(), "admin.listen").await?,
        })
    }
}

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

/// The config file read when `--config` is not given (if it exists), relative to the
/// working directory.
pub const DEFAULT_CONFIG: &str = "config/csgate.toml";

/// Where the configuration comes from, so a reload reads it the same way start-up did:
/// the file, and the command-line and environment overrides already merged
/// (`Overrides::over`). [`Sources::load`] is the only place they are applied.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The config file; `None` means built-in defaults only.
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

impl Sources {
    /// What the binary reads: `--config` (else [`DEFAULT_CONFIG`] when it exists), with
    /// the command-line `flags` over the process environment (`CSGATE_*`).
    pub fn from_process(config: Option<PathBuf>, flags: Overrides) -> Sources {
        Sources {
            path: config.or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists())),
            overrides: flags.over(Overrides::from_env(std::env::vars())),
        }
    }

    /// Reads, overrides and validates the configuration.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.path.as_deref(), &self.overrides)
    }
}

/// A request to re-read the configuration from the [`Sources`] (SIGHUP, or a test).
#[derive(Debug, Default)]
pub struct Reload {
    reply: Option<oneshot::Sender<Result<Reloaded, ReloadError>>>,
}

impl Reload {
    /// A reload whose outcome is only logged (SIGHUP).
    pub fn new() -> Reload {
        Reload::default()
    }

    /// A reload and the receiver that learns whether it was applied.
    pub fn with_reply() -> (Reload, oneshot::Receiver<Result<Reloaded, ReloadError>>) {
        let (tx, rx) = oneshot::channel();
        (Reload { reply: Some(tx) }, rx)
    }
}

/// A reload that was applied, but for the keys that need a restart (their running
/// values stay, and the log line names them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub not_applied: Vec<&'static str>,
}

/// Why a reload was refused; the previous configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] ConfigError),
    #[error("upstream.urls is empty and no embedded store runs")]
    NoEmbeddedStore,
}

/// What [`run`] lets a caller change; `Options::default()` is what the binary uses.
pub struct Options {
    /// The cache's clock (tests inject a `ManualClock`).
    pub clock: Arc<dyn Clock>,
    /// Where reload sets the log level; `None` when logging was not set up by us.
    pub log_level: Option<LevelHandle>,
    /// Told the control handle once the gateway is built (tests reach the cache and the
    /// upstreams through it).
    pub started: Option<oneshot::Sender<Control>>,
    /// Where to write the [`ReadyFile`] once the gateway is built (`--ready-file`).
    pub ready_file: Option<PathBuf>,
}

impl Options {
    /// The defaults, with reload setting the log level through `log_level`.
    pub fn with_log_level(log_level: Option<LevelHandle>) -> Options {
        Options {
            log_level,
            ..Options::default()
        }
    }

    /// These options, writing the [`ReadyFile`] to `path` when it is given.
    #[must_use]
    pub fn ready_file(self, path: Option<PathBuf>) -> Options {
        Options {
            ready_file: path,
            ..self
        }
    }
}

/// What `--ready-file PATH` holds once the gateway serves: the addresses the listeners
/// are bound to, as JSON (`{"listen": "127.0.0.1:8080", "admin": "127.0.0.1:9090"}`).
/// It is how a supervisor or a test that asked for port 0 learns the ports without
/// reading logs; whether the gateway is ready is `GET /readyz` on `admin`. The file is
/// written to a temporary name and renamed, so a reader never sees half of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadyFile {
    /// The public listener's bound address.
    pub listen: SocketAddr,
    /// The admin listener's bound address.
    pub admin: SocketAddr,
}

impl ReadyFile {
    fn write(&self, path: &Path) -> anyhow::Result<()> {
        let partial = path.with_extension("partial");
        let json = serde_json::to_vec(self).context("encoding the ready file")?;
        std::fs::write(&partial, json)
            .and_then(|()| std::fs::rename(&partial, path))
            .with_context(|| format!("--ready-file: cannot write {}", path.display()))
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            clock: Arc::new(SystemClock),
            log_level: None,
            started: None,
            ready_file: None,
        }
    }
}

/// Serves the gateway until `shutdown` resolves, applying each request from `reloads`
/// (re-read from `sources`), then drains within `server.shutdown_grace`. When the
/// config names no upstream, the embedded store is started first and stopped last.
pub async fn run(
    config: Config,
    sources: Sources,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    mut reloads: mpsc::Receiver<Reload>,
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
            let store = store.store_config(&config.business_attributes);
            Some(start_embedded(store, stopped(store_stopped)).await?)
        }
        Upstream::Urls(_) => None,
    };
    let embedded_url = embedded.as_ref().map(|e| e.url.clone());
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
        &config,
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

    let draining = Draining::default();
    // Its own connection cap keeps the admin listener reachable when the public one is
    // saturated; its clients get the configured header read timeout.
    let admin_options = ServeOptions {
        header_read_timeout: config.server.header_read_timeout,
        max_connections: defaults::ADMIN_MAX_CONNECTIONS,
        ..ServeOptions::internal()
    };
    let admin = tokio::spawn(server::serve(
        listeners.admin,
        Plain,
        admin_options,
        {
            let control = control.clone();
            let draining = draining.clone();
            let access = admin::Access::from_config(&config.admin);
            if access.token.is_none() && !config.admin.listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %config.admin.listen,
                    "the admin listener is on a routable address and asks for no token: \
                     anyone who reaches it can purge the cache; set [admin] token_file \
                     (or CSGATE_ADMIN_TOKEN_FILE)"
                );
            }
            move |request, _peer| {
                admin::handle(control.gateway(), draining.clone(), access.clone(), request)
            }
        },
        stopped(admin_stopped),
    ));
    let handler = {
        let control = control.clone();
        move |request, peer| {
            let gateway = control.gateway();
            async move { gateway.handle(request, peer).await }
        }
    };
    let options = ServeOptions {
        limits: Some(server::ConnectionLimits {
            per_client: config.limits.connections.per_client,
            trusted_proxies: config.server.trusted_proxies.clone(),
            h2_streams: config.limits.connections.h2_streams_per_connection,
            metrics: control.gateway().metrics().limits().clone(),
        }),
        ..config.server.serve_options()
    };
    let public = async {
        let stop = stopped(public_stopped);
        match tls {
            Some(tls) => server::serve(listeners.public, tls, options, handler, stop).await,
            None => server::serve(listeners.public, Plain, options, handler, stop).await,
        }
    };
    let reloader = async {
        while let Some(reload) = reloads.recv().await {
            if let Some((slot, _)) = &server_cert {
                // Logged either way; a bad pair leaves the old one serving.
                let _ = slot.reload();
            }
            let outcome = sources
                .load()
                .map_err(ReloadError::from)
                .and_then(|config| control.reload(&config));
            match &outcome {
                Ok(_) => {}
                Err(ReloadError::Invalid(error)) => tracing::error!(
                    %error,
                    "reload refused: invalid configuration; keeping the previous configuration"
                ),
                Err(ReloadError::NoEmbeddedStore) => tracing::error!(
                    "reload refused: upstream.urls is empty and no embedded store runs; keeping the previous configuration"
                ),
            }
            if let Some(reply) = reload.reply {
                let _ = reply.send(outcome);
            }
        }
        std::future::pending::<()>().await;
    };
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
    control.stop_probe();
    if let Some(cluster) = control.gateway().cluster() {
        // Drained: no more writes. The peers stop counting on this replica at once
        // (unless it still holds invalidations; then they wait for peer_timeout).
        cluster.bus.leave().await;
    }
    if let Some((_, watch)) = server_cert {
        watch.abort();
    }
    let _ = store_stop.send(true);
    if let Some(embedded) = embedded {
        let _ = embedded.task.await;
    }
    if let Some(tracer) = control.gateway().tracer() {
        tracer.flush(TRACE_FLUSH_ON_SHUTDOWN).await;
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Runs the reference store on its own (`csgate store`) until `shutdown` resolves:
/// `[store]` with the subcommand's `--db` and `--legacy` over it.
pub async fn run_store(
    config: &Config,
    db: Option<PathBuf>,
    legacy: bool,
    listen: &str,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = bind(listen, "--listen").await?;
    let mut store = config.store.store_config(&config.business_attributes);
    store.db = db.unwrap_or(store.db);
    store.legacy |= legacy;
    let db = store.db.clone();
    let opened =
        Store::open(store).with_context(|| format!("opening the store at {}", db.display()))?;
    tracing::info!(listen = %listener.local_addr()?, db = %db.display(), legacy, "store started");
    store::serve(listener, opened, shutdown).await;
    Ok(())
}

/// The embedded store, serving on a loopback port of its own.
struct Embedded {
    url: Url,
    task: tokio::task::JoinHandle<()>,
}

async fn start_embedded(
    config: StoreConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Embedded> {
    let db = config.db.clone();
    let legacy = config.legacy;
    let store = Store::open(config)
        .with_context(|| format!("opening the embedded store at {}", db.display()))?;
    let listener = bind("127.0.0.1:0", "embedded store").await?;
    let address = listener.local_addr()?;
    tracing::info!(db = %db.display(), %address, legacy, "embedded store started");
    Ok(Embedded {
        url: Url::parse(&format!("http://{address}"))?,
        task: tokio::spawn(store::serve(listener, store, shutdown)),
    })
}

/// Resolves once `true` is sent (or the sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

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
    fn start(
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

    fn stop_probe(&self) {
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
    Gateway::in_fleet(config, upstreams, cache, cluster, tracer, metrics)
}

/// The longest shutdown waits for the last spans to reach the collector: after the
/// drain (`shutdown_grace`, 25 s by default) and within Kubernetes' 30 s termination
/// grace; a collector slower than that loses them (counted as `export_failed`).
const TRACE_FLUSH_ON_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

/// How often certificate files are looked at for a change (length, modification time).
const CERT_POLL: std::time::Duration = std::time::Duration::from_secs(2);

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
