//! The reference store as tests start it: embedded, real SQLite in a file, served over
//! real HTTP on a listener bound to `127.0.0.1:0`. The one store harness every test uses.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use csgate::store::{serve, Store, StoreConfig};
use tokio::net::TcpListener;

use super::Serving;

/// The store as most tests run it: a file `db`, the current API (not legacy), no
/// business-attribute maps, no sweeper (nothing changes the data behind a test's back)
/// and the default body and memory bounds.
pub fn test_config(db: PathBuf) -> StoreConfig {
    StoreConfig {
        db,
        legacy: false,
        business_attributes: std::collections::BTreeMap::new(),
        sweep_interval: std::time::Duration::ZERO,
        max_body_bytes: csgate::config::defaults::STORE_MAX_BODY_BYTES,
        max_memory_bytes: csgate::config::defaults::STORE_MAX_MEMORY_BYTES,
    }
}

/// A store served on an ephemeral loopback port; dropping it stops serving.
pub struct TestStore {
    pub addr: SocketAddr,
    pub store: Store,
    pub db: PathBuf,
    serving: Serving,
}

impl TestStore {
    /// Opens the store `config` describes and serves it until `shutdown` or drop.
    pub async fn serve(config: StoreConfig) -> TestStore {
        let db = config.db.clone();
        let store = Store::open(config).expect("store opens");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = store.clone();
        let serving = Serving::spawn(|stopped| {
            serve(listener, served, async move {
                let _ = stopped.await;
            })
        });
        TestStore {
            addr,
            store,
            db,
            serving,
        }
    }

    /// The store's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits until the serve task has finished.
    pub async fn shutdown(&mut self) {
        self.serving.stop().await.expect("serve task");
    }
}
