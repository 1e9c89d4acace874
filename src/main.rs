//! The `csgate` binary: parses the command line, loads the config, sets up logging,
//! binds the listeners, wires signals (SIGTERM/SIGINT drain and exit 0, SIGHUP
//! reloads) and hands over to [`csgate::app`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use csgate::app::{self, Listeners, Options, Reload, Sources};
use csgate::config::Overrides;

/// mimalloc instead of glibc malloc: the gateway allocates many small, short-lived
/// objects per request (header maps, JSON values), and glibc's malloc/free took about
/// a fifth of the CPU on the miss path (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// `about` is the package description.
#[derive(Parser, Debug)]
#[command(name = "csgate", version, about)]
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
    /// Once listening, write the bound addresses to this file as JSON (`app::ReadyFile`).
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
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
    let Err(error) = start(Cli::parse()) else {
        return ExitCode::SUCCESS;
    };
    eprintln!("csgate: {error:#}");
    ExitCode::from(1)
}

fn start(cli: Cli) -> anyhow::Result<()> {
    let flags = Overrides {
        listen: cli.listen.clone(),
        admin_listen: cli.admin_listen.clone(),
        upstreams: cli.upstreams.clone(),
        ..Overrides::default()
    };
    let sources = Sources::from_process(cli.config.clone(), flags);
    let config = sources.load().context("invalid configuration")?;
    if cli.check {
        app::check(&config).context("invalid configuration")?;
        println!("configuration is valid");
        return Ok(());
    }
    let (log_level, _log_guard) = csgate::logging::init(&config.log);
    csgate::server::limits::raise_open_file_limit();
    let serve = async move {
        let shutdown = shutdown_on_sigterm_or_sigint()?;
        if let Some(Command::Store { listen, db, legacy }) = cli.command {
            return app::run_store(&config, db, legacy, &listen, shutdown).await;
        }
        let listeners = Listeners::bind(&config).await?;
        let reloads = reload_on_sighup()?;
        let options = Options::with_log_level(log_level).ready_file(cli.ready_file);
        app::run(config, sources, listeners, shutdown, reloads, options).await
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
        .and_then(|runtime| runtime.block_on(serve));
    result.inspect_err(|error| tracing::error!("{error:#}"))
}

/// Resolves on SIGTERM or SIGINT (linkerd2-proxy's `signal` crate does the same).
fn shutdown_on_sigterm_or_sigint() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    })
}

/// One reload request per SIGHUP; a full channel already holds a reload that will read
/// the newest file.
fn reload_on_sighup() -> anyhow::Result<mpsc::Receiver<Reload>> {
    let mut hangups = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    let (requests, reloads) = mpsc::channel(1);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading configuration");
            let _ = requests.try_send(Reload::new());
        }
    });
    Ok(reloads)
}
