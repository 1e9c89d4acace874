//! The reference store: embedded beside the gateway when no upstream is configured,
//! or on its own (`csgate store`).

use std::future::Future;
use std::path::PathBuf;

use anyhow::Context;
use url::Url;

use super::bind;
use crate::config::Config;
use crate::store::{self, Store, StoreConfig};

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
    let mut store = config.store.clone();
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
pub(super) struct Embedded {
    pub(super) url: Url,
    pub(super) task: tokio::task::JoinHandle<()>,
}

pub(super) async fn start_embedded(
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
