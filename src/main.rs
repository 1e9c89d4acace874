//! The `csgate` binary: parses the command line, loads the config, sets up logging,
//! binds the listeners, starts the embedded store when no upstream is configured, and
//! hands over to the library. SIGTERM/SIGINT drain and exit 0.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use std::sync::Arc;

use csgate::cache::SystemClock;
use csgate::config::{Config, Overrides};
use csgate::store::{Store, StoreConfig};
use csgate::Control;
use csgate::Listeners;

/// mimalloc instead of glibc malloc: the gateway allocates many small, short-lived
/// objects per request (header maps, JSON values), and glibc's malloc/free took about
/// a fifth of the CPU on the miss path (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The config file read when `--config` is not given (if it exists).
const DEFAULT_CONFIG: &str = "config/csgate.toml";

#[derive(Parser, Debug)]
#[command(
    name = "csgate",
    version,
    about = "A caching, validating gateway for the Genesys Context Services API"
)]
struct Cli {
    /// Config file (TOML). Default: config/csgate.toml when it exists.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Public listener address; overrides [server] listen.
    #[arg(long)]
    listen: Option<String>,
    /// Admin listener address; overrides [admin] listen.
    #[arg(long)]
    admin_listen: Option<String>,
    /// Upstream base URL; repeat for several. Overrides [upstream] urls.
    #[arg(long = "upstream")]
    upstreams: Vec<String>,
    /// Validate the configuration and exit: 0 when valid, 1 with the key named otherwise.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the reference Context Services store on its own.
    Store {
        /// Address to serve the store's API on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// SQLite database file (created on first run).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Answer Query Services the way older backends do (ignore every parameter).
        #[arg(long)]
        legacy: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("csgate: invalid configuration: {error:#}");
            return ExitCode::from(1);
        }
    };
    if cli.check {
        // TLS material is part of the configuration: a missing or unreadable file
        // fails the check, not the start.
        if let Some(tls) = &config.server.tls {
            if let Err(error) = csgate::tls::Tls::load(tls) {
                eprintln!("csgate: invalid configuration: {error}");
                return ExitCode::from(1);
            }
        }
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let (log_level, _log_guard) = csgate::logging::init(&config.log);
    let open_files = csgate::server::limits::raise_open_file_limit();
    tracing::info!(?open_files, "open-file limit");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("csgate: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::Store { listen, db, legacy }) => {
                run_store(&config, &listen, db, legacy).await
            }
            None => run_gateway(config, &cli, log_level).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("csgate: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn config_path(cli: &Cli) -> Option<PathBuf> {
    cli.config
        .clone()
        .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()))
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let path = config_path(cli);
    let flags = Overrides {
        listen: cli.listen.clone(),
        admin_listen: cli.admin_listen.clone(),
        upstreams: cli.upstreams.clone(),
        ..Overrides::default()
    };
    let overrides = flags.over(Overrides::from_env(std::env::vars()));
    Ok(Config::load(path.as_deref(), &overrides)?)
}

fn store_config(config: &Config, db: PathBuf, legacy: bool) -> StoreConfig {
    StoreConfig {
        db,
        legacy,
        business_attributes: config.business_attributes.clone(),
        sweep_interval: config.store.sweep_interval,
    }
}

async fn run_gateway(
    mut config: Config,
    cli: &Cli,
    log_level: Option<csgate::logging::LevelHandle>,
) -> anyhow::Result<()> {
    let public = bind(&config.server.listen.to_string(), "server.listen").await?;
    let admin = bind(&config.admin.listen.to_string(), "admin.listen").await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let mut embedded = None;
    let mut embedded_url = None;
    if config.upstream.urls.is_empty() {
        let db = config.store.db.clone();
        let store = Store::open(store_config(&config, db.clone(), config.store.legacy))
            .with_context(|| format!("opening the embedded store at {}", db.display()))?;
        let listener = bind("127.0.0.1:0", "embedded store").await?;
        let address = listener.local_addr()?;
        tracing::info!(db = %db.display(), %address, legacy = config.store.legacy, "embedded store started");
        let url = url::Url::parse(&format!("http://{address}"))?;
        config.upstream.urls = vec![url.clone()];
        embedded_url = Some(url);
        let mut rx = stop_rx.clone();
        embedded = Some(tokio::spawn(csgate::store::serve(
            listener,
            store,
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            },
        )));
    }

    tracing::info!(
        listen = %public.local_addr()?,
        admin = %admin.local_addr()?,
        upstreams = ?config.upstream.urls.iter().map(url::Url::as_str).collect::<Vec<_>>(),
        "csgate started"
    );
    let gateway = csgate::build_gateway(&config, Arc::new(SystemClock));
    let control = Control::new(gateway, log_level);
    let reloader = tokio::spawn(reload_on_sighup(
        control.clone(),
        ReloadSource {
            path: config_path(cli),
            cli_upstreams: cli.upstreams.clone(),
            cli_listen: cli.listen.clone(),
            cli_admin_listen: cli.admin_listen.clone(),
            embedded: embedded_url,
        },
    ));
    csgate::serve(
        control,
        &config,
        Listeners { public, admin },
        shutdown_signal(),
    )
    .await?;
    reloader.abort();
    // The gateway has drained; now the embedded store may stop.
    let _ = stop_tx.send(true);
    if let Some(task) = embedded {
        let _ = task.await;
    }
    Ok(())
}

/// What a reload re-reads: the same file with the same command-line overrides.
struct ReloadSource {
    path: Option<PathBuf>,
    cli_upstreams: Vec<String>,
    cli_listen: Option<String>,
    cli_admin_listen: Option<String>,
    /// The embedded store's URL, used again when the new file names no upstream.
    embedded: Option<url::Url>,
}

/// On SIGHUP, re-reads and validates the config file; a valid one is applied, an
/// invalid one is refused with a log line naming the key and the old one stays.
async fn reload_on_sighup(control: Control, source: ReloadSource) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP; reload disabled");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading configuration");
            let flags = Overrides {
                listen: source.cli_listen.clone(),
                admin_listen: source.cli_admin_listen.clone(),
                upstreams: source.cli_upstreams.clone(),
                ..Overrides::default()
            };
            let overrides = flags.over(Overrides::from_env(std::env::vars()));
            match Config::load(source.path.as_deref(), &overrides) {
                Ok(mut config) => {
                    if config.upstream.urls.is_empty() {
                        match &source.embedded {
                            Some(url) => config.upstream.urls = vec![url.clone()],
                            None => {
                                tracing::error!("reload refused: upstream.urls is empty and no embedded store runs; keeping the previous configuration");
                                continue;
                            }
                        }
                    }
                    control.reload(&config);
                }
                Err(error) => {
                    tracing::error!(%error, "reload refused: invalid configuration; keeping the previous configuration");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (control, source);
    }
}

async fn run_store(
    config: &Config,
    listen: &str,
    db: Option<PathBuf>,
    legacy: bool,
) -> anyhow::Result<()> {
    let db = db.unwrap_or_else(|| config.store.db.clone());
    let store = Store::open(store_config(
        config,
        db.clone(),
        legacy || config.store.legacy,
    ))
    .with_context(|| format!("opening the store at {}", db.display()))?;
    let listener = bind(listen, "--listen").await?;
    tracing::info!(listen = %listener.local_addr()?, db = %db.display(), legacy, "store started");
    csgate::store::serve(listener, store, shutdown_signal()).await;
    Ok(())
}

async fn bind(address: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("{what}: cannot bind {address}"))
}

/// Resolves on SIGTERM or SIGINT (linkerd2-proxy's `signal` crate does the same).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
