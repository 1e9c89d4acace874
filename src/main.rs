//! The `csgate` binary: parses the command line, loads the config, sets up logging,
//! binds the listeners, wires signals (SIGTERM/SIGINT drain and exit 0, SIGHUP
//! reloads) and hands over to [`csgate::app`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use csgate::app::{self, Listeners, Options, Reload, Sources};
use csgate::config::Overrides;

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
    let sources = Sources {
        path: cli
            .config
            .clone()
            .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|path| path.exists())),
        overrides: Overrides {
            listen: cli.listen.clone(),
            admin_listen: cli.admin_listen.clone(),
            upstreams: cli.upstreams.clone(),
            ..Overrides::default()
        }
        .over(Overrides::from_env(std::env::vars())),
    };
    let config = match sources.load() {
        Ok(config) => config,
        Err(error) => return fail(&format!("invalid configuration: {error:#}")),
    };
    if cli.check {
        // TLS material is part of the configuration: a missing or unreadable file
        // fails the check, not the start.
        if let Some(Err(error)) = config.server.tls.as_ref().map(csgate::tls::Tls::load) {
            return fail(&format!("invalid configuration: {error}"));
        }
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let (log_level, _log_guard) = csgate::logging::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the runtime: {error}")),
    };
    let result = runtime.block_on(async move {
        if let Some(Command::Store { listen, db, legacy }) = cli.command {
            let mut store = config.store.store_config(&config.business_attributes);
            store.db = db.unwrap_or(store.db);
            store.legacy |= legacy;
            return app::run_store(store, bind(&listen, "--listen").await?, shutdown()).await;
        }
        let listeners = Listeners {
            public: bind(&config.server.listen.to_string(), "server.listen").await?,
            admin: bind(&config.admin.listen.to_string(), "admin.listen").await?,
        };
        let (reload_tx, reloads) = tokio::sync::mpsc::channel(1);
        let mut hangups = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading configuration");
                // A full channel already holds a reload that will read the newest file.
                let _ = reload_tx.try_send(Reload::new());
            }
        });
        let options = Options {
            log_level,
            ..Options::default()
        };
        app::run(config, sources, listeners, shutdown(), reloads, options).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            fail(&format!("{error:#}"))
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("csgate: {message}");
    ExitCode::from(1)
}

async fn bind(address: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("{what}: cannot bind {address}"))
}

/// Resolves on SIGTERM or SIGINT (linkerd2-proxy's `signal` crate does the same).
async fn shutdown() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
