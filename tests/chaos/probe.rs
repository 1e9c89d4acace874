//! The staleness probe of issue 21. A writer sends writes through replica A (index 0)
//! that each start one more service for a contact key, so the anonymous lookup of that
//! key lists one more service: its length is the key's *version*. Readers (one per
//! replica) send that lookup continuously, round-robin over several keys and two
//! tenants. A lookup is **stale** when it was sent after a write's 2xx and answers a
//! version older than that write; its staleness is the send instant minus the 2xx
//! instant of the oldest write it misses. Meanwhile every replica's admin `/healthz` is
//! polled every 50 ms, to see when it first shows the fleet degraded after the fault
//! starts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::time::Instant;

use super::fleet::{degraded, Fleet, Options};
use super::http::Client;

/// Tenants the keys are spread over.
pub const TENANTS: [&str; 2] = ["chaos-tenant-1", "chaos-tenant-2"];
/// csgate's default `degraded_ttl` (the fleet runs with it unless a row says otherwise).
pub const DEGRADED_TTL: Duration = Duration::from_secs(1);
/// What a stale answer may add to `degraded_ttl` (the issue's bound: + 100 ms).
pub const SLACK: Duration = Duration::from_millis(100);
/// The bus delay a lookup sent right after a 2xx may still fall into (publish to
/// apply; the spec's target is a 5 ms p99 on a LAN, generous here for a loaded
/// 2-core machine): "no stale answer at all once the fault is over" means none older
/// than this.
pub const BUS_DELAY: Duration = Duration::from_millis(50);
/// How long after the fault ended the fleet must be coherent again.
pub const RECOVERY: Duration = Duration::from_secs(1);
/// `/healthz` must show the degradation within this.
pub const HEALTHZ_WITHIN: Duration = Duration::from_secs(1);
/// csgate's default `op_timeout`: a Redis round trip at least this long makes every
/// command time out, so the replica cannot prove it hears the bus.
pub const OP_TIMEOUT: Duration = Duration::from_millis(50);
/// How often `/healthz` is polled.
const HEALTHZ_EVERY: Duration = Duration::from_millis(50);
/// Replica names in reports: the writer is A.
pub const NAMES: [&str; 3] = ["A", "B", "C"];

/// One row's fault. Replica 0 (A) is the writer.
#[derive(Clone, Debug)]
pub enum Fault {
    None,
    /// Redis SIGKILLed, restarted (empty) after `down`.
    RedisKill {
        down: Duration,
    },
    /// Redis SIGSTOPped for `lasting`, then SIGCONT.
    RedisPause {
        lasting: Duration,
    },
    /// Every replica's hop adds `each_way` to every chunk both ways, for `lasting`.
    Latency {
        each_way: Duration,
        lasting: Duration,
    },
    /// Hops stall (hold every byte) for `lasting`: the writer's alone or every replica's.
    Stall {
        writer_only: bool,
        lasting: Duration,
    },
    /// Hops silently drop every byte of their connections (old and new) for `lasting`;
    /// then new connections work again.
    Blackhole {
        writer_only: bool,
        lasting: Duration,
    },
    /// Every Redis connection of every replica closed with RST, `times` times,
    /// `every` apart (writes keep going meanwhile).
    Reset {
        times: u32,
        every: Duration,
    },
    /// Replica `replica` SIGSTOPped for `lasting`, then SIGCONT.
    ReplicaPause {
        replica: usize,
        lasting: Duration,
    },
    /// Replica `replica` SIGKILLed (its own connections' errors are not counted).
    ReplicaKill {
        replica: usize,
    },
    /// For `lasting`, writes go straight to the store, past every gateway: bounded by
    /// `[cache] ttl` only.
    Bypass {
        lasting: Duration,
        ttl: Duration,
    },
}

impl Fault {
    pub fn name(&self) -> String {
        let ms = |d: &Duration| format!("{} ms", d.as_millis());
        let s = |d: &Duration| format!("{} s", d.as_secs_f64());
        match self {
            Fault::None => "no fault".into(),
            Fault::RedisKill { down } => format!("Redis kill -9, restarted after {}", s(down)),
            Fault::RedisPause { lasting } => format!("Redis SIGSTOP {}", s(lasting)),
            Fault::Latency { each_way, lasting } => {
                format!("+{} each way, all replicas, {}", ms(each_way), s(lasting))
            }
            Fault::Stall {
                writer_only,
                lasting,
            } => format!(
                "stall {} on {}",
                s(lasting),
                if *writer_only {
                    "the writer alone"
                } else {
                    "all replicas"
                }
            ),
            Fault::Blackhole {
                writer_only,
                lasting,
            } => format!(
                "blackhole of {} connections {}, then heal",
                if *writer_only {
                    "the writer's"
                } else {
                    "every replica's"
                },
                s(lasting)
            ),
            Fault::Reset { times: 1, .. } => "RST of every Redis connection".into(),
            Fault::Reset { times, every } => format!(
                "RST of every Redis connection, {times} times {} apart",
                s(every)
            ),
            Fault::ReplicaPause { replica, lasting } => {
                format!("replica {} SIGSTOP {}", NAMES[*replica], s(lasting))
            }
            Fault::ReplicaKill { replica } => format!("replica {} SIGKILL", NAMES[*replica]),
            Fault::Bypass { lasting, ttl } => format!(
                "writes straight to the store for {} (ttl {})",
                s(lasting),
                s(ttl)
            ),
        }
    }

    /// The replicas whose `/healthz` must show the fleet degraded within 1 s: those
    /// that cannot prove they hear every invalidation. A Redis round trip under
    /// `op_timeout` (+20 ms each way) is slow, not broken: nothing is required then.
    pub fn must_degrade(&self, replicas: usize) -> Vec<usize> {
        match self {
            Fault::Latency { each_way, .. } if *each_way * 2 < OP_TIMEOUT => Vec::new(),
            Fault::RedisKill { .. }
            | Fault::RedisPause { .. }
            | Fault::Latency { .. }
            | Fault::Stall {
                writer_only: false, ..
            }
            | Fault::Blackhole {
                writer_only: false, ..
            } => (0..replicas).collect(),
            Fault::Stall {
                writer_only: true, ..
            }
            | Fault::Blackhole {
                writer_only: true, ..
            } => vec![0],
            // A reset is over at once (reconnection is immediate); a replica's pause or
            // kill, a bypass and no fault say nothing required of /healthz.
            Fault::Reset { .. }
            | Fault::ReplicaPause { .. }
            | Fault::ReplicaKill { .. }
            | Fault::Bypass { .. }
            | Fault::None => Vec::new(),
        }
    }

    /// How stale a lookup may ever be under this fault: `degraded_ttl` + 100 ms, or for
    /// writes that bypass every gateway, `ttl` + 100 ms.
    pub fn bound(&self, degraded_ttl: Duration) -> Duration {
        match self {
            Fault::Bypass { ttl, .. } => *ttl + SLACK,
            _ => degraded_ttl + SLACK,
        }
    }

    pub fn options(&self) -> Options {
        match self {
            Fault::Bypass { ttl, .. } => Options {
                ttl: *ttl,
                ..Options::default()
            },
            _ => Options::default(),
        }
    }
}

/// One row of the matrix: a fault between `warmup` and `after` of steady load.
#[derive(Clone, Debug)]
pub struct Row {
    pub fault: Fault,
    /// Load before the fault starts.
    pub warmup: Duration,
    /// Load after the fault ends (at least [`RECOVERY`] + 1 s, so the recovery bound
    /// has something to judge).
    pub after: Duration,
    /// Contact keys (spread over [`TENANTS`]).
    pub keys: usize,
    /// The writer's pause between writes.
    pub write_every: Duration,
    /// Each reader's pause between lookups (modest rates: the machine is shared).
    pub read_pause: Duration,
}

impl Row {
    pub fn new(fault: Fault) -> Row {
        Row {
            fault,
            warmup: Duration::from_millis(1500),
            after: Duration::from_secs(3),
            keys: 4,
            write_every: Duration::from_millis(100),
            read_pause: Duration::from_millis(5),
        }
    }
}

/// A write's 2xx.
#[derive(Clone, Copy, Debug)]
struct Write {
    key: usize,
    acked: Instant,
    version: usize,
}

#[derive(Clone, Debug)]
enum Outcome {
    Answered {
        version: usize,
        hit: bool,
    },
    Error(String),
    /// An error on a replica the row killed: not a client error.
    KilledReplica,
}

#[derive(Clone, Debug)]
struct Lookup {
    replica: usize,
    key: usize,
    sent: Instant,
    took: Duration,
    outcome: Outcome,
}

#[derive(Clone, Copy, Debug)]
struct Health {
    replica: usize,
    at: Instant,
    /// `None`: no answer within the poll's bound (a frozen or killed replica).
    degraded: Option<bool>,
}

#[derive(Default)]
struct Record {
    writes: Vec<Write>,
    write_errors: Vec<String>,
    lookups: Vec<Lookup>,
    health: Vec<Health>,
}

struct Shared {
    stop: AtomicBool,
    killed: Vec<AtomicBool>,
    /// The writer writes straight to the store while set.
    bypass: AtomicBool,
    record: Mutex<Record>,
}

impl Shared {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What one row measured.
#[derive(Clone, Debug)]
pub struct Measured {
    pub name: String,
    pub writes: usize,
    pub lookups: usize,
    pub hits: usize,
    pub stale: usize,
    pub worst: Duration,
    /// Stale lookups more than `bound` after the 2xx they miss.
    pub beyond_bound: usize,
    pub bound: Duration,
    /// Stale lookups (older than [`BUS_DELAY`]) sent more than [`RECOVERY`] after the
    /// fault ended; `None` for a fault with no end (bypass).
    pub after_end: Option<usize>,
    pub client_errors: usize,
    pub error_samples: Vec<String>,
    /// Per replica: when `/healthz` first showed the fleet degraded, after the fault
    /// started.
    pub healthz: Vec<Option<Duration>>,
    /// Per replica: `/healthz` showed it degraded before the fault already.
    pub healthz_before: Vec<bool>,
    /// Stale lookups (older than [`BUS_DELAY`]) answered by a replica whose last
    /// `/healthz` before the lookup said it was not degraded (a "green" health while
    /// serving pre-write answers). Reported, not asserted.
    pub stale_while_ok: usize,
    /// The slowest lookup (answered or not) and the replica it went to.
    pub slowest: (Duration, usize),
    /// Per replica, the Redis connections it opened through its hop from the fault's
    /// start to the row's end (reconnections: proof a fault was felt).
    pub redis_connections: Vec<usize>,
    pub must_degrade: Vec<usize>,
    /// The worst stale lookups: (replica, staleness, sent after fault start (ms, may be
    /// negative), answered version, missed version).
    pub worst_samples: Vec<String>,
}

/// One row: a fresh fleet, steady load, the fault, the analysis.
pub async fn run_row(test: &str, row: &Row) -> Option<Measured> {
    let fleet = Fleet::start(test, row.fault.options()).await?;
    Some(probe(test, fleet, row).await)
}

fn key_name(test: &str, i: usize) -> String {
    // Distinct per row and run, so a reused Redis or store never holds an old version.
    format!("chaos-{}-{i}", std::process::id() ^ test.len() as u32)
}

async fn probe(test: &str, mut fleet: Fleet, row: &Row) -> Measured {
    let n = fleet.replicas.len();
    let keys: Vec<(String, &'static str)> = (0..row.keys)
        .map(|i| (key_name(test, i), TENANTS[i % TENANTS.len()]))
        .collect();
    let client = Client::new();
    // Every replica caches version 0 of every key (and says so on the second lookup).
    for (i, name) in NAMES.iter().enumerate().take(n) {
        for (key, tenant) in &keys {
            for attempt in 0..2 {
                let answer = client
                    .get(
                        &lookup_url(&fleet.url(i), key),
                        &[("ContactCenterId", tenant)],
                    )
                    .await
                    .expect("warm-up lookup");
                assert_eq!(answer.status, 200, "{}", answer.text());
                let status = answer.header("cache-status").unwrap_or_default();
                assert!(
                    attempt == 0 || status.contains("hit"),
                    "the lookup is not cached on replica {name}: {status}"
                );
            }
        }
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        killed: (0..n).map(|_| AtomicBool::new(false)).collect(),
        bypass: AtomicBool::new(false),
        record: Mutex::default(),
    });
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(writer(
        Arc::clone(&shared),
        fleet.url(0),
        fleet.store_url(),
        keys.clone(),
        row.write_every,
    )));
    for i in 0..n {
        tasks.push(tokio::spawn(reader(
            Arc::clone(&shared),
            i,
            fleet.url(i),
            keys.clone(),
            row.read_pause,
        )));
        tasks.push(tokio::spawn(health(
            Arc::clone(&shared),
            i,
            fleet.replicas[i].admin_url("/healthz"),
        )));
    }

    tokio::time::sleep(row.warmup).await;
    let accepted: Vec<usize> = fleet.hops.iter().map(|h| h.accepted()).collect();
    let started = Instant::now();
    let ended = inject(&mut fleet, &shared, &row.fault).await;
    tokio::time::sleep(row.after).await;
    shared.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("a probe task");
    }
    let record = std::mem::take(&mut *shared.record());
    let degraded_ttl = fleet.options.degraded_ttl.unwrap_or(DEGRADED_TTL);
    let opened = fleet
        .hops
        .iter()
        .zip(accepted)
        .map(|(h, before)| h.accepted() - before)
        .collect();
    drop(fleet);
    let mut measured = analyse(row, &record, n, started, ended, degraded_ttl);
    measured.redis_connections = opened;
    measured
}

/// Applies the fault, waits its duration, undoes it; returns when it ended (`None`:
/// it has no end while the row runs).
async fn inject(fleet: &mut Fleet, shared: &Shared, fault: &Fault) -> Option<Instant> {
    let all = 0..fleet.hops.len();
    let hops = |writer_only: bool| if writer_only { 0..1 } else { all.clone() };
    match fault {
        Fault::None => {}
        Fault::RedisKill { down } => {
            fleet.redis.kill();
            tokio::time::sleep(*down).await;
            tokio::task::block_in_place(|| fleet.redis.restart());
        }
        Fault::RedisPause { lasting } => {
            fleet.redis.pause();
            tokio::time::sleep(*lasting).await;
            fleet.redis.resume();
        }
        Fault::Latency { each_way, lasting } => {
            for hop in &fleet.hops {
                hop.latency(*each_way);
            }
            tokio::time::sleep(*lasting).await;
            for hop in &fleet.hops {
                hop.heal();
            }
        }
        Fault::Stall {
            writer_only,
            lasting,
        } => {
            for i in hops(*writer_only) {
                fleet.hops[i].stall();
            }
            tokio::time::sleep(*lasting).await;
            for i in hops(*writer_only) {
                fleet.hops[i].unstall();
            }
        }
        Fault::Blackhole {
            writer_only,
            lasting,
        } => {
            for i in hops(*writer_only) {
                fleet.hops[i].blackhole();
            }
            tokio::time::sleep(*lasting).await;
            for i in hops(*writer_only) {
                fleet.hops[i].heal();
            }
        }
        Fault::Reset { times, every } => {
            for time in 0..*times {
                if time > 0 {
                    tokio::time::sleep(*every).await;
                }
                for hop in &fleet.hops {
                    hop.reset();
                }
            }
        }
        Fault::ReplicaPause { replica, lasting } => {
            fleet.replicas[*replica].signal("STOP");
            tokio::time::sleep(*lasting).await;
            fleet.replicas[*replica].signal("CONT");
        }
        Fault::ReplicaKill { replica } => {
            shared.killed[*replica].store(true, Ordering::SeqCst);
            fleet.replicas[*replica].signal("KILL");
        }
        Fault::Bypass { lasting, .. } => {
            shared.bypass.store(true, Ordering::SeqCst);
            tokio::time::sleep(*lasting).await;
            shared.bypass.store(false, Ordering::SeqCst);
            return None;
        }
    }
    Some(Instant::now())
}

pub fn lookup_url(base: &str, key: &str) -> String {
    format!("{base}/genesys/1/cs/services/anonymous/{key}")
}

/// Starts one service for `key` at `base` (a replica or the store); the 2xx or why not.
pub async fn start_service(
    client: &Client,
    base: &str,
    tenant: &str,
    body: String,
) -> Result<(), String> {
    let answer = client
        .send(
            Method::POST,
            &format!("{base}/genesys/1/cs/services/start"),
            &[
                ("ContactCenterId", tenant),
                ("content-type", "application/json"),
            ],
            Bytes::from(body),
            super::http::EXCHANGE_TIMEOUT,
        )
        .await?;
    if answer.status / 100 == 2 {
        Ok(())
    } else {
        Err(format!("{}: {}", answer.status, answer.text()))
    }
}

/// The service count a lookup answer lists (its version), or why it is not one.
pub fn version_of(answer: &crate::common::Answer) -> Result<usize, String> {
    if answer.status != 200 {
        return Err(format!("{}: {}", answer.status, answer.text()));
    }
    serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .ok_or_else(|| format!("not a Service[]: {}", answer.text()))
}

async fn writer(
    shared: Arc<Shared>,
    writer: String,
    store: String,
    keys: Vec<(String, &'static str)>,
    pause: Duration,
) {
    let client = Client::new();
    let mut versions = vec![0usize; keys.len()];
    let mut next = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let k = next % keys.len();
        next += 1;
        let (key, tenant) = &keys[k];
        let base = if shared.bypass.load(Ordering::SeqCst) {
            &store
        } else {
            &writer
        };
        let body = format!(r#"{{"contact_key":"{key}","service_type":1}}"#);
        match start_service(&client, base, tenant, body).await {
            Ok(()) => {
                versions[k] += 1;
                let acked = Instant::now();
                shared.record().writes.push(Write {
                    key: k,
                    acked,
                    version: versions[k],
                });
            }
            Err(error) => {
                // Whether it landed is unknown: ask the store (the truth) for the version.
                let answer = client
                    .get(&lookup_url(&store, key), &[("ContactCenterId", tenant)])
                    .await;
                if let Some(version) = answer.ok().and_then(|a| version_of(&a).ok()) {
                    versions[k] = version;
                }
                shared.record().write_errors.push(format!("write: {error}"));
            }
        }
        tokio::time::sleep(pause).await;
    }
}

async fn reader(
    shared: Arc<Shared>,
    replica: usize,
    base: String,
    keys: Vec<(String, &'static str)>,
    pause: Duration,
) {
    let client = Client::new();
    let mut next = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.killed[replica].load(Ordering::SeqCst) {
            return;
        }
        let k = next % keys.len();
        next += 1;
        let (key, tenant) = &keys[k];
        let sent = Instant::now();
        let answer = client
            .get(&lookup_url(&base, key), &[("ContactCenterId", tenant)])
            .await;
        let outcome = match answer.and_then(|a| {
            let hit = a
                .header("cache-status")
                .is_some_and(|s| s.starts_with("csgate; hit"));
            version_of(&a).map(|version| (version, hit))
        }) {
            Ok((version, hit)) => Outcome::Answered { version, hit },
            Err(_) if shared.killed[replica].load(Ordering::SeqCst) => Outcome::KilledReplica,
            Err(error) => Outcome::Error(error),
        };
        shared.record().lookups.push(Lookup {
            replica,
            key: k,
            sent,
            took: sent.elapsed(),
            outcome,
        });
        tokio::time::sleep(pause).await;
    }
}

async fn health(shared: Arc<Shared>, replica: usize, url: String) {
    let client = Client::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let at = Instant::now();
        let degraded = client
            .send(
                Method::GET,
                &url,
                &[],
                Bytes::new(),
                Duration::from_millis(250),
            )
            .await
            .ok()
            .filter(|a| a.status == 200)
            .and_then(|a| serde_json::from_slice(&a.body).ok())
            .map(|json| degraded(&json));
        shared.record().health.push(Health {
            replica,
            at,
            degraded,
        });
        tokio::time::sleep_until(at + HEALTHZ_EVERY).await;
    }
}

fn analyse(
    row: &Row,
    record: &Record,
    n: usize,
    started: Instant,
    ended: Option<Instant>,
    degraded_ttl: Duration,
) -> Measured {
    let bound = row.fault.bound(degraded_ttl);
    let mut writes: Vec<Vec<Write>> = vec![Vec::new(); row.keys];
    for w in &record.writes {
        writes[w.key].push(*w);
    }
    let mut measured = Measured {
        name: row.fault.name(),
        writes: record.writes.len(),
        lookups: 0,
        hits: 0,
        stale: 0,
        worst: Duration::ZERO,
        beyond_bound: 0,
        bound,
        after_end: ended.map(|_| 0),
        client_errors: record.write_errors.len(),
        error_samples: record.write_errors.iter().take(5).cloned().collect(),
        healthz: vec![None; n],
        healthz_before: vec![false; n],
        stale_while_ok: 0,
        slowest: (Duration::ZERO, 0),
        redis_connections: Vec::new(),
        must_degrade: row.fault.must_degrade(n),
        worst_samples: Vec::new(),
    };
    // Each replica's health samples, in time order.
    let mut health: Vec<Vec<(Instant, Option<bool>)>> = vec![Vec::new(); n];
    for sample in &record.health {
        health[sample.replica].push((sample.at, sample.degraded));
    }
    for samples in &mut health {
        samples.sort_by_key(|(at, _)| *at);
    }
    let mut stale: Vec<(Duration, String)> = Vec::new();
    for lookup in &record.lookups {
        if lookup.took > measured.slowest.0 && !matches!(lookup.outcome, Outcome::KilledReplica) {
            measured.slowest = (lookup.took, lookup.replica);
        }
        let version = match &lookup.outcome {
            Outcome::Answered { version, hit } => {
                measured.lookups += 1;
                measured.hits += usize::from(*hit);
                *version
            }
            Outcome::Error(error) => {
                measured.lookups += 1;
                measured.client_errors += 1;
                if measured.error_samples.len() < 10 {
                    measured
                        .error_samples
                        .push(format!("lookup on {}: {error}", NAMES[lookup.replica]));
                }
                continue;
            }
            Outcome::KilledReplica => continue,
        };
        // The oldest acknowledged write this answer misses.
        let Some(missed) = writes[lookup.key]
            .iter()
            .find(|w| w.version > version)
            .filter(|w| w.acked <= lookup.sent)
        else {
            continue;
        };
        let staleness = lookup.sent - missed.acked;
        measured.stale += 1;
        measured.worst = measured.worst.max(staleness);
        if staleness > bound {
            measured.beyond_bound += 1;
        }
        if staleness > BUS_DELAY {
            let samples = &health[lookup.replica];
            let before = samples.partition_point(|(at, _)| *at <= lookup.sent);
            if before > 0 && samples[before - 1].1 == Some(false) {
                measured.stale_while_ok += 1;
            }
        }
        if let (Some(ended), Some(count)) = (ended, measured.after_end.as_mut()) {
            if lookup.sent > ended + RECOVERY && staleness > BUS_DELAY {
                *count += 1;
            }
        }
        let since_fault = if lookup.sent >= started {
            (lookup.sent - started).as_millis() as i64
        } else {
            -((started - lookup.sent).as_millis() as i64)
        };
        stale.push((
            staleness,
            format!(
                "{} answered version {version} of key {} ({} missed) {} ms after the 2xx, \
                 sent {since_fault} ms after the fault started",
                NAMES[lookup.replica],
                lookup.key,
                missed.version,
                staleness.as_millis()
            ),
        ));
    }
    stale.sort_by_key(|(staleness, _)| std::cmp::Reverse(*staleness));
    measured.worst_samples = stale.into_iter().take(3).map(|(_, s)| s).collect();
    for sample in &record.health {
        if sample.degraded != Some(true) {
            continue;
        }
        if sample.at < started {
            measured.healthz_before[sample.replica] = true;
        } else if measured.healthz[sample.replica].is_none() {
            measured.healthz[sample.replica] = Some(sample.at - started);
        }
    }
    measured
}

impl Measured {
    /// The bounds of the issue this row broke, one line each (empty: it held them).
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.client_errors > 0 {
            out.push(format!(
                "{} client errors, e.g. {:?}",
                self.client_errors, self.error_samples
            ));
        }
        if self.beyond_bound > 0 {
            out.push(format!(
                "{} lookups stale more than {:?} after the write's 2xx (worst {:?}): {:?}",
                self.beyond_bound, self.bound, self.worst, self.worst_samples
            ));
        }
        if let Some(after) = self.after_end.filter(|n| *n > 0) {
            out.push(format!(
                "{after} stale lookups sent more than {RECOVERY:?} after the fault ended"
            ));
        }
        for &i in &self.must_degrade {
            match self.healthz[i] {
                Some(after) if after <= HEALTHZ_WITHIN => {}
                Some(after) => out.push(format!(
                    "/healthz of {} showed the degradation only after {after:?}",
                    NAMES[i]
                )),
                None => out.push(format!(
                    "/healthz of {} never showed the degradation",
                    NAMES[i]
                )),
            }
        }
        if self.lookups == 0 || self.writes == 0 {
            out.push(format!(
                "the probe measured nothing ({} lookups, {} writes)",
                self.lookups, self.writes
            ));
        }
        out
    }

    pub const HEADER: &'static str = "| fault | lookups | stale | worst staleness | \
        stale > bound (degraded_ttl+100ms; bypass: ttl+100ms) | stale > 1 s after fault end | \
        client errors | /healthz degraded after | stale (> bus delay) while /healthz ok | writes | \
        cache hits | slowest lookup | Redis connections opened (A, B, C) |\n\
        |---|---|---|---|---|---|---|---|---|---|---|---|---|";

    pub fn markdown(&self) -> String {
        let healthz: Vec<String> = (0..self.healthz.len())
            .map(|i| {
                let must = self.must_degrade.contains(&i);
                let shown = match self.healthz[i] {
                    Some(d) => format!("{:.2} s", d.as_secs_f64()),
                    None => "never".into(),
                };
                let before = if self.healthz_before[i] {
                    " (before the fault too)"
                } else {
                    ""
                };
                if must && self.healthz[i].is_none_or(|d| d > HEALTHZ_WITHIN) {
                    format!("{} **{shown}**{before}", NAMES[i])
                } else {
                    format!("{} {shown}{before}", NAMES[i])
                }
            })
            .collect();
        let flag = |n: usize| {
            if n > 0 {
                format!("**{n}**")
            } else {
                "0".into()
            }
        };
        format!(
            "| {} | {} | {} | {:.3} s | {} | {} | {} | {} | {} | {} | {:.0} % | {:.3} s ({}) | {} |",
            self.name,
            self.lookups,
            self.stale,
            self.worst.as_secs_f64(),
            flag(self.beyond_bound),
            self.after_end.map_or("—".into(), flag),
            flag(self.client_errors),
            healthz.join(", "),
            self.stale_while_ok,
            self.writes,
            100.0 * self.hits as f64 / self.lookups.max(1) as f64,
            self.slowest.0.as_secs_f64(),
            NAMES[self.slowest.1],
            self.redis_connections
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}
