//! Three replicas of the real `csgate` binary (child processes, so one can be
//! SIGSTOPped or SIGKILLed), each reaching one `redis-server` through its own
//! fault-injecting [`Hop`], all in front of one reference store served in-process (or
//! a fake upstream, for the stampede).

use std::time::Duration;

use serde_json::Value;

use crate::common::process::Process;
use crate::common::store::{test_config, TestStore};
use crate::hop::Hop;
use crate::redis_harness::RedisServer;

use super::http::{Client, READY_WAIT};

/// How a fleet is configured; [`Default`] is the defaults (`degraded_ttl` 1 s,
/// `op_timeout` 50 ms: not written, so csgate's own defaults apply) with a long cache
/// TTL, so that only an invalidation can end an entry.
#[derive(Clone, Debug)]
pub struct Options {
    pub replicas: usize,
    /// `[cache] ttl`.
    pub ttl: Duration,
    /// `[cluster] degraded_ttl`, when not csgate's default.
    pub degraded_ttl: Option<Duration>,
    /// `[cluster] op_timeout`, when not csgate's default.
    pub op_timeout: Option<Duration>,
    /// Extra `redis-server` options (`maxmemory`, …).
    pub redis: Vec<(&'static str, &'static str)>,
    /// The upstream, when not the in-process store.
    pub upstream: Option<String>,
    /// Extra TOML appended to every replica's config.
    pub extra_toml: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            replicas: 3,
            ttl: Duration::from_secs(300),
            degraded_ttl: None,
            op_timeout: None,
            redis: Vec::new(),
            upstream: None,
            extra_toml: String::new(),
        }
    }
}

pub struct Fleet {
    pub redis: RedisServer,
    /// `hops[i]` is between `replicas[i]` and Redis.
    pub hops: Vec<Hop>,
    pub replicas: Vec<Process>,
    /// The in-process store (absent when `Options::upstream` names another upstream).
    pub store: Option<TestStore>,
    pub options: Options,
    _dir: tempfile::TempDir,
}

fn humantime(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Fleet {
    /// Starts Redis, the store, one hop and one replica per `options.replicas`, and waits
    /// (bounded) until every replica's `/healthz` says it is connected. `None` when
    /// `redis-server` is missing (the test is skipped).
    pub async fn start(test: &str, options: Options) -> Option<Fleet> {
        let redis = RedisServer::start_with(test, &options.redis)?;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = match options.upstream {
            Some(_) => None,
            None => Some(TestStore::serve(test_config(dir.path().join("chaos.sqlite"))).await),
        };
        let upstream = match (&options.upstream, &store) {
            (Some(url), _) => url.clone(),
            (None, Some(store)) => store.url(),
            (None, None) => unreachable!(),
        };
        let mut hops = Vec::new();
        let mut replicas = Vec::new();
        for _ in 0..options.replicas {
            let hop = Hop::start(redis.addr()).await;
            let mut toml = format!(
                "[log]\nlevel = \"warn\"\n\
                 [cache]\nenabled = true\nttl = \"{}\"\n\
                 [cluster]\nredis_url = \"{}\"\n",
                humantime(options.ttl),
                hop.url()
            );
            if let Some(d) = options.degraded_ttl {
                toml.push_str(&format!("degraded_ttl = \"{}\"\n", humantime(d)));
            }
            if let Some(d) = options.op_timeout {
                toml.push_str(&format!("op_timeout = \"{}\"\n", humantime(d)));
            }
            toml.push_str(&options.extra_toml);
            replicas.push(Process::start(&toml, &["--upstream", &upstream]).await);
            hops.push(hop);
        }
        let fleet = Fleet {
            redis,
            hops,
            replicas,
            store,
            options,
            _dir: dir,
        };
        let client = Client::new();
        for replica in &fleet.replicas {
            let url = replica.admin_url("/healthz");
            let deadline = tokio::time::Instant::now() + READY_WAIT;
            loop {
                let health = client.get(&url, &[]).await;
                if health
                    .as_ref()
                    .is_ok_and(|h| h.json()["cluster"]["connected"] == true && !degraded(&h.json()))
                {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{test}: a replica never connected to Redis: {health:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Some(fleet)
    }

    /// The base URL (`http://127.0.0.1:PORT`) of replica `i`'s public listener.
    pub fn url(&self, i: usize) -> String {
        self.replicas[i].url("")
    }

    /// The store's base URL.
    pub fn store_url(&self) -> String {
        self.store.as_ref().expect("an in-process store").url()
    }
}

/// Whether a `/healthz` body shows the fleet degraded: today's `connected == false` or
/// a non-null `degraded_for_ms`, or the fixed version's `degraded == true`.
pub fn degraded(health: &Value) -> bool {
    let cluster = &health["cluster"];
    cluster["connected"] == false
        || cluster["degraded"] == true
        || !(cluster["degraded_for_ms"].is_null())
}
