//! What the oracle runs against: a [`Deployment`] is data — the gateways' base URLs (one
//! or more replicas) and the store's own base URL — plus whatever keeps them running.
//! A [`Deploy`] makes a fresh one per case. The harness only ever reaches the servers
//! through those URLs, so a fleet of replicas on Redis, or a fault-injecting TCP hop in
//! front of any of them, is another `Deploy` and nothing else changes.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use csgate::query::TypeMap;
use csgate::store::StoreConfig;

use crate::common::store::TestStore;
use crate::common::{start_gateway, try_get, TestGateway};
use crate::hop::Hop;
use crate::redis_harness::RedisServer;

/// A boxed future, as the trait objects here hand them out.
pub type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Stops a deployment and waits for it.
type Stop = Box<dyn FnOnce() -> Boxed<'static, ()> + Send>;

/// The servers of one case, reached only through their URLs.
pub struct Deployment {
    /// Base URLs (`http://127.0.0.1:PORT`) of the gateway replicas, at least one. The
    /// operations of a case are spread over them by the generator's `replica` choice.
    pub gateways: Vec<String>,
    /// Base URL of the store itself (no gateway in between): the oracle's source of truth.
    pub store: String,
    /// Admin base URLs of the replicas, where a divergence's report reads their fleet
    /// counters; empty when there are none to read.
    pub admins: Vec<String>,
    stop: Option<Stop>,
}

impl Deployment {
    /// `stop` shuts every server down (and removes their files) when awaited.
    pub fn new(gateways: Vec<String>, store: String, stop: Stop) -> Deployment {
        assert!(
            !gateways.is_empty(),
            "a deployment has at least one gateway"
        );
        Deployment {
            gateways,
            store,
            admins: Vec::new(),
            stop: Some(stop),
        }
    }

    /// The replicas' admin base URLs (`http://127.0.0.1:PORT`).
    pub fn with_admins(mut self, admins: Vec<String>) -> Deployment {
        self.admins = admins;
        self
    }

    /// The gateway replica an operation goes to.
    pub fn gateway(&self, replica: u8) -> &str {
        &self.gateways[usize::from(replica) % self.gateways.len()]
    }

    /// Stops every server and waits until they are gone.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            stop().await;
        }
    }
}

/// Makes fresh deployments: a new, empty store and new gateways for every case, so that
/// cases are independent and a shrunk case replays deterministically.
pub trait Deploy: Send + Sync {
    fn deploy(&self) -> Boxed<'_, Deployment>;
    /// One line for reports (what runs, with which cache settings).
    fn describe(&self) -> String;
}

/// Service types as both the gateway and the store are configured (names ↔ IDs), so
/// that `service_types=Billing` means the same thing on both sides.
pub const SERVICE_TYPES: [(&str, i64); 3] =
    [("Billing", 1), ("TechnicalSupport", 3), ("Wireless", 45)];

/// Cache freshness long enough that a stale answer stays observable for a whole case:
/// nothing but an invalidation can make an entry go away while a case runs.
pub const CACHE_TOML: &str =
    "[cache]\nenabled = true\nttl = \"300s\"\nstale_while_revalidate = \"300s\"\n";

/// One gateway (cache on, long TTL) in front of the in-process reference store on a
/// fresh SQLite file: the deployment of issue 20.
pub struct SingleGateway;

impl Deploy for SingleGateway {
    fn deploy(&self) -> Boxed<'_, Deployment> {
        Box::pin(async {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = TestStore::serve(store_config(dir.path())).await;
            let gateway = start_gateway(&gateway_toml(), &[store.url()]).await;
            let gateways = vec![format!("http://{}", gateway.addr)];
            let store_url = store.url();
            let stop: Stop = Box::new(move || Box::pin(stop_all(vec![gateway], store, dir)));
            Deployment::new(gateways, store_url, stop)
        })
    }

    fn describe(&self) -> String {
        "one in-process gateway (cache on, ttl 300s) in front of the in-process SQLite store".into()
    }
}

/// A fleet (issue 21): three in-process replicas (cache on, long TTL, `[cluster]`) on
/// one `redis-server`, each reaching it through its own [`Hop`] that adds a small
/// latency each way (a LAN, not loopback), in front of the in-process store. The Redis
/// outlives the cases; each case has its own `namespace`, so cases never share keys.
pub struct Fleet {
    redis: RedisServer,
    latency: Duration,
    cases: AtomicU64,
}

/// Replicas in a [`Fleet`] deployment.
pub const FLEET_REPLICAS: usize = 3;

impl Fleet {
    /// `None` (the test is skipped) when `redis-server` is missing.
    pub fn start(test: &str, latency: Duration) -> Option<Fleet> {
        Some(Fleet {
            redis: RedisServer::start(test)?,
            latency,
            cases: AtomicU64::new(0),
        })
    }
}

impl Deploy for Fleet {
    fn deploy(&self) -> Boxed<'_, Deployment> {
        Box::pin(async move {
            let case = self.cases.fetch_add(1, Ordering::Relaxed);
            let dir = tempfile::tempdir().expect("temp dir");
            let store = TestStore::serve(store_config(dir.path())).await;
            let mut hops = Vec::new();
            let mut gateways = Vec::new();
            for _ in 0..FLEET_REPLICAS {
                let hop = Hop::start(self.redis.addr()).await;
                hop.latency(self.latency);
                let toml = format!(
                    "{}[cluster]\nredis_url = \"{}\"\nnamespace = \"oracle-{}-{case}\"\n",
                    gateway_toml(),
                    hop.url(),
                    std::process::id()
                );
                gateways.push(start_gateway(&toml, &[store.url()]).await);
                hops.push(hop);
            }
            // Every replica subscribed before the case's first operation (bounded).
            for gateway in &gateways {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                loop {
                    let health = try_get(&gateway.admin_url("/healthz")).await;
                    if health.is_some_and(|h| h.json()["cluster"]["connected"] == true) {
                        break;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "a replica never connected to Redis"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let urls = gateways
                .iter()
                .map(|g| format!("http://{}", g.addr))
                .collect();
            let admins = gateways.iter().map(|g| g.admin_url("")).collect();
            let store_url = store.url();
            let stop: Stop = Box::new(move || {
                Box::pin(async move {
                    stop_all(gateways, store, dir).await;
                    drop(hops);
                })
            });
            Deployment::new(urls, store_url, stop).with_admins(admins)
        })
    }

    fn describe(&self) -> String {
        format!(
            "{FLEET_REPLICAS} in-process replicas (cache on, ttl 300s, [cluster] defaults) on one \
             redis-server through hops adding {:?} each way, in front of the in-process SQLite \
             store",
            self.latency
        )
    }
}

/// The gateway's TOML: the long-lived cache and the service-type map.
pub fn gateway_toml() -> String {
    let mut toml = CACHE_TOML.to_owned();
    toml.push_str("[business_attributes.service_type]\n");
    for (name, id) in SERVICE_TYPES {
        toml.push_str(&format!("{name} = {id}\n"));
    }
    toml
}

/// The store's configuration: a fresh file in `dir`, the same service-type map as the
/// gateway, and no sweeper (nothing may change the data behind the oracle's back).
pub fn store_config(dir: &std::path::Path) -> StoreConfig {
    let map = TypeMap::new(SERVICE_TYPES.map(|(name, id)| (name.to_owned(), id)));
    StoreConfig {
        business_attributes: BTreeMap::from([("service_type".to_owned(), map)]),
        ..crate::common::store::test_config(dir.join("oracle.sqlite"))
    }
}

async fn stop_all(gateways: Vec<TestGateway>, mut store: TestStore, dir: tempfile::TempDir) {
    for gateway in gateways {
        gateway.stop().await;
    }
    store.shutdown().await;
    drop(dir);
}
