//! The reference store as tests start it: embedded, real SQLite in a file, served over
//! real HTTP on a listener bound to `127.0.0.1:0`. The one store harness every test uses.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use csgate::store::{serve, Store, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A store served on an ephemeral loopback port; dropping it stops serving.
pub struct TestStore {
    pub addr: SocketAddr,
    pub store: Store,
    pub db: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl TestStore {
    /// Opens the store `config` describes and serves it until `shutdown` or drop.
    pub async fn serve(config: StoreConfig) -> TestStore {
        let db = config.db.clone();
        let store = Store::open(config).expect("store opens");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(listener, store.clone(), async {
            let _ = stopped.await;
        }));
        TestStore {
            addr,
            store,
            db,
            stop: Some(stop),
            served: Some(served),
        }
    }

    /// The store's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits until the serve task has finished.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            served.await.expect("serve task");
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
