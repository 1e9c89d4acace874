//! The cluster module against real `redis-server`s started by each test (see
//! `cluster/redis.rs`): the bus between replicas, reconnection after Redis dies, the
//! shared tier, `op_timeout` under a slow Redis, and the fleet lock.

#[path = "cluster/hop.rs"]
mod hop;
#[path = "cluster/proxy.rs"]
mod proxy;
#[path = "cluster/redis.rs"]
mod redis_harness;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use csgate::cache::{CacheOwner, Invalidation, Key};
use csgate::cluster::message::{Message, MESSAGE_VERSION};
use csgate::cluster::{
    BusEvent, Cluster, ClusterConfig, ClusterMetrics, Coalesced, EventSink, FlushReason,
    LockAttempt, Partition, RawCluster, ReplicaId, Scope, SharedLookup, SharedPolicy, SharedTier,
};
use csgate::identity::{ContactKey, ServiceId, Tenant};
use csgate::query::Extensions;
use proxy::Proxy;
use redis_harness::RedisServer;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);
/// For tests of what Redis does, not of timeouts: generous, so that a loaded CI
/// machine (debug build, 2 cores) never turns an answer into a timeout.
const PATIENT: &str = "1s";

struct Replica {
    cluster: Cluster,
    events: mpsc::UnboundedReceiver<BusEvent>,
}

impl Replica {
    fn start(url: &str, policy: SharedPolicy) -> Replica {
        Replica::start_with(url, policy, PATIENT)
    }

    fn start_with(url: &str, policy: SharedPolicy, op_timeout: &str) -> Replica {
        let config = ClusterConfig::try_from(RawCluster {
            redis_url: Some(url.to_owned()),
            op_timeout: Some(op_timeout.to_owned()),
            ..RawCluster::default()
        })
        .expect("valid [cluster]");
        let (tx, events) = mpsc::unbounded_channel();
        let sink: EventSink = Arc::new(move |event| {
            let _ = tx.send(event);
        });
        let cluster = Cluster::start(&config, policy, ClusterMetrics::default(), sink, None)
            .expect("a usable URL")
            .expect("a redis_url starts the cluster");
        Replica { cluster, events }
    }

    /// Waits for the subscription, and takes the flush that every subscription makes.
    async fn subscribed(&mut self) {
        let mut state = self.cluster.bus.state();
        tokio::time::timeout(WAIT, state.wait_for(|s| s.connected))
            .await
            .expect("subscribed in time")
            .expect("bus alive");
        assert!(matches!(
            self.next_event().await,
            BusEvent::Flush(FlushReason::Resubscribed { .. })
        ));
        // Confirmed once its own heartbeat comes back through the subscription.
        let deadline = Instant::now() + WAIT;
        while self.cluster.bus.is_degraded() {
            assert!(
                Instant::now() < deadline,
                "never confirmed: {:?}",
                self.cluster.health()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The next event that is not a heartbeat.
    async fn next_event(&mut self) -> BusEvent {
        loop {
            let event = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("an event in time")
                .expect("bus alive");
            if !matches!(event, BusEvent::Heartbeat(_)) {
                return event;
            }
        }
    }

    /// Events received so far that are not heartbeats.
    fn drain_events(&mut self) -> Vec<BusEvent> {
        std::iter::from_fn(|| self.events.try_recv().ok())
            .filter(|e| !matches!(e, BusEvent::Heartbeat(_)))
            .collect()
    }

    fn shared(&self) -> &SharedTier {
        self.cluster.shared.as_ref().expect("shared_cache on")
    }
}

fn policy() -> SharedPolicy {
    SharedPolicy {
        entry_ttl: Duration::from_secs(30),
        fetch_window: Duration::from_secs(2),
        max_entry_bytes: 1 << 20,
        ttl: Duration::from_secs(30),
        max_bytes: 1 << 30,
        tenant_max_bytes: 1 << 30,
    }
}

fn owner(tenant: &'static str, contact_key: &str) -> CacheOwner {
    CacheOwner::new(tenant_of(tenant), ContactKey::new(contact_key))
}

fn tenant_of(tenant: &'static str) -> Tenant {
    Tenant::new(Some(Bytes::from_static(tenant.as_bytes())), None)
}

fn key(tenant: &'static str, contact_key: &str) -> Key {
    Key {
        owner: owner(tenant, contact_key),
        credential: Some([1; 16]),
        extensions: Extensions::None,
    }
}

fn touched(contact_keys: &[&str], service_ids: &[&str]) -> Scope {
    Scope::Touched {
        contact_keys: contact_keys.iter().map(|s| s.to_string()).collect(),
        customer_ids: Vec::new(),
        service_ids: service_ids.iter().map(|s| s.to_string()).collect(),
    }
}

macro_rules! redis_or_skip {
    ($name:expr) => {
        match RedisServer::start($name) {
            Some(server) => server,
            None => return,
        }
    };
}

#[tokio::test]
async fn a_message_reaches_the_other_replicas_and_not_its_origin() {
    let redis = redis_or_skip!("a_message_reaches_the_other_replicas_and_not_its_origin");
    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&redis.url(), policy()))
        .collect();
    for replica in &mut replicas {
        replica.subscribed().await;
        assert!(!replica.cluster.bus.is_degraded());
    }
    let started = Instant::now();
    let sent = replicas[0]
        .cluster
        .bus
        .publish_invalidation(
            &Invalidation::Owner {
                owner: owner("t1", "408-832-7799"),
            },
            Some(&ServiceId::normalise("42")),
        )
        .await
        .expect("published")
        .expect("a start with a contact key is a message");
    assert_eq!(sent.seq, 1);
    for replica in &mut replicas[1..] {
        assert_eq!(
            replica.next_event().await,
            BusEvent::Invalidate(sent.clone())
        );
    }
    eprintln!("publish to receive on 2 replicas: {:?}", started.elapsed());
    // The origin hears its own message first if at all: once it hears the next one,
    // from another replica, it has skipped its own.
    let reply = replicas[1]
        .cluster
        .bus
        .publish(Partition::default(), Scope::Everything)
        .await
        .expect("published");
    assert_eq!(
        replicas[0].next_event().await,
        BusEvent::Invalidate(reply.clone())
    );
    assert_eq!(replicas[2].next_event().await, BusEvent::Invalidate(reply));
    assert!(replicas[0]
        .drain_events()
        .iter()
        .all(|e| !matches!(e, BusEvent::Invalidate(_))));
    let snapshot = replicas[2].cluster.metrics.snapshot();
    assert_eq!((snapshot.received, snapshot.connected), (2, true));
}

#[tokio::test]
async fn gaps_and_unreadable_messages_make_the_cache_flush() {
    let redis = redis_or_skip!("gaps_and_unreadable_messages_make_the_cache_flush");
    let mut b = Replica::start(&redis.url(), policy());
    b.subscribed().await;
    let client = redis::Client::open(redis.url()).expect("url");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let origin = ReplicaId::random();
    let message = |seq| Message {
        v: MESSAGE_VERSION,
        origin,
        seq,
        sent_at_us: 0,
        partition: Partition::default(),
        scope: Scope::WholeTenant,
        shared_pending: false,
    };
    for payload in [
        message(1).encode(),
        message(3).encode(),
        b"{\"v\":99}".to_vec(),
    ] {
        redis::cmd("PUBLISH")
            .arg("csgate:v1:inv")
            .arg(payload)
            .query_async::<i64>(&mut raw)
            .await
            .expect("published");
    }
    assert_eq!(b.next_event().await, BusEvent::Invalidate(message(1)));
    assert_eq!(
        b.next_event().await,
        BusEvent::Flush(FlushReason::SequenceGap {
            origin,
            last: 1,
            got: 3
        })
    );
    assert_eq!(b.next_event().await, BusEvent::Invalidate(message(3)));
    assert_eq!(
        b.next_event().await,
        BusEvent::Flush(FlushReason::Unreadable { origin: None })
    );
}

#[tokio::test]
async fn the_subscriber_comes_back_after_redis_restarts_and_signals_the_gap() {
    let mut redis =
        redis_or_skip!("the_subscriber_comes_back_after_redis_restarts_and_signals_the_gap");
    // 50 ms: publishing to a dead Redis must fail fast.
    let mut a = Replica::start_with(&redis.url(), policy(), "50ms");
    let mut b = Replica::start(&redis.url(), policy());
    a.subscribed().await;
    b.subscribed().await;
    let mut state = b.cluster.bus.state();

    redis.kill();
    let down = Instant::now();
    tokio::time::timeout(WAIT, state.wait_for(|s| !s.connected))
        .await
        .expect("loss noticed in time")
        .expect("bus alive");
    eprintln!("loss noticed after {:?}", down.elapsed());
    assert!(b.cluster.bus.is_degraded());
    assert!(!b.cluster.metrics.snapshot().connected);
    let now = Instant::now();
    assert!(b.cluster.bus.may_serve(now, now));
    assert!(!b.cluster.bus.may_serve(now - Duration::from_secs(2), now));
    // Redis gone: publishing fails within op_timeout, it does not hang the writer.
    let started = Instant::now();
    let failed = a
        .cluster
        .bus
        .publish(Partition::default(), Scope::Everything)
        .await;
    assert!(failed.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    redis.restart();
    let back = Instant::now();
    match b.next_event().await {
        BusEvent::Flush(FlushReason::Resubscribed { down_for }) => {
            assert!(down_for > Duration::ZERO);
        }
        other => panic!("expected a resubscription flush, got {other:?}"),
    }
    eprintln!("resubscribed {:?} after redis returned", back.elapsed());
    assert!(back.elapsed() < Duration::from_secs(1));
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| s.connected && s.subscriptions == 2),
    )
    .await
    .expect("connected again")
    .expect("bus alive");
    // Confirmed again once its own heartbeat and A's come through.
    while b.cluster.bus.is_degraded() {
        assert!(back.elapsed() < WAIT, "{:?}", b.cluster.health());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.subscribed().await;

    // A's next message carries seq 3 (2 was lost with Redis): B sees the gap too.
    let sent = loop {
        if let Ok(sent) = a
            .cluster
            .bus
            .publish(Partition::default(), Scope::WholeTenant)
            .await
        {
            break sent;
        }
        assert!(back.elapsed() < WAIT, "A publishes again after the restart");
    };
    let mut events = Vec::new();
    while events.last() != Some(&BusEvent::Invalidate(sent.clone())) {
        events.push(b.next_event().await);
    }
    assert!(
        events
            .iter()
            .all(|e| matches!(e, BusEvent::Invalidate(_) | BusEvent::Flush(_))),
        "{events:?}"
    );
}

#[tokio::test]
async fn the_shared_tier_stores_serves_expires_and_invalidates() {
    let redis = redis_or_skip!("the_shared_tier_stores_serves_expires_and_invalidates");
    let a = Replica::start(&redis.url(), policy());
    let b = Replica::start(&redis.url(), policy());
    let k = key("t1", "408");
    let body = Bytes::from_static(br#"[{"id":"42"}]"#);
    let services = vec!["42".to_owned()];

    // Store through A, read through B; age is preserved.
    let generation = miss_generation(a.shared(), &k).await;
    let stored = a
        .shared()
        .store(&k, &generation, &body, &services, Duration::from_secs(3))
        .await
        .expect("stored");
    assert!(stored);
    match b.shared().lookup(&k).await {
        SharedLookup::Hit(entry) => {
            assert_eq!(entry.body, body);
            assert_eq!(entry.service_ids, services);
            assert!(entry.age >= Duration::from_secs(3) && entry.age < Duration::from_secs(5));
        }
        miss => panic!("expected a hit, got {miss:?}"),
    }
    // Other tenants and credentials do not share it.
    assert!(matches!(
        b.shared().lookup(&key("t2", "408")).await,
        SharedLookup::Miss(Some(_))
    ));

    // A write to the service through B: gone for A, and a fetch that started before
    // the write cannot store its (pre-write) answer.
    let before_write = miss_generation(a.shared(), &key("t1", "409")).await;
    b.shared()
        .invalidate(&Partition::default(), &touched(&[], &["42"]))
        .await
        .expect("invalidated");
    assert!(matches!(
        a.shared().lookup(&k).await,
        SharedLookup::Miss(Some(_))
    ));
    let resurrected = a
        .shared()
        .store(
            &key("t1", "409"),
            &before_write,
            &body,
            &services,
            Duration::ZERO,
        )
        .await
        .expect("answered");
    assert!(!resurrected, "a fetch that raced a write is not stored");

    // Owner, tenant and everything.
    let partition = Partition::of(&tenant_of("t1"));
    for scope in [
        touched(&["408"], &[]),
        Scope::WholeTenant,
        Scope::Everything,
    ] {
        let generation = miss_generation(a.shared(), &k).await;
        assert!(a
            .shared()
            .store(&k, &generation, &body, &services, Duration::ZERO)
            .await
            .expect("stored"));
        assert!(matches!(b.shared().lookup(&k).await, SharedLookup::Hit(_)));
        b.shared()
            .invalidate(&partition, &scope)
            .await
            .expect("invalidated");
        assert!(
            matches!(a.shared().lookup(&k).await, SharedLookup::Miss(Some(_))),
            "{scope:?}"
        );
    }

    // Expiry = entry_ttl - age.
    let generation = miss_generation(a.shared(), &k).await;
    let short = SharedPolicy {
        entry_ttl: Duration::from_millis(300),
        ..policy()
    };
    let c = Replica::start(&redis.url(), short);
    miss_generation(c.shared(), &key("t1", "411")).await;
    assert!(c
        .shared()
        .store(
            &k,
            &generation,
            &body,
            &services,
            Duration::from_millis(100)
        )
        .await
        .expect("stored"));
    assert!(matches!(c.shared().lookup(&k).await, SharedLookup::Hit(_)));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        c.shared().lookup(&k).await,
        SharedLookup::Miss(Some(_))
    ));
    let (a, b) = (a.cluster.metrics.snapshot(), b.cluster.metrics.snapshot());
    assert!(b.shared_hits >= 4 && a.shared_misses >= 4, "{a:?} {b:?}");
}

/// The first lookups may come before the command connection is made.
async fn miss_generation(tier: &SharedTier, key: &Key) -> csgate::cluster::Generation {
    let started = Instant::now();
    loop {
        if let SharedLookup::Miss(Some(generation)) = tier.lookup(key).await {
            return generation;
        }
        assert!(started.elapsed() < WAIT, "a lookup answers");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_slow_redis_is_a_miss_within_op_timeout() {
    let redis = redis_or_skip!("a_slow_redis_is_a_miss_within_op_timeout");
    let a = Replica::start_with(&redis.url(), policy(), "50ms");
    let k = key("t1", "408");
    miss_generation(a.shared(), &k).await;
    let _sleeper = redis.send_and_forget("DEBUG SLEEP 1");
    let started = Instant::now();
    let mut timed_out = false;
    while started.elapsed() < Duration::from_millis(900) && !timed_out {
        let call = Instant::now();
        let lookup = a.shared().lookup(&k).await;
        let took = call.elapsed();
        // 50 ms op_timeout + scheduling slack on a loaded machine.
        assert!(took < Duration::from_millis(250), "a lookup took {took:?}");
        timed_out = lookup == SharedLookup::Miss(None);
    }
    assert!(timed_out, "the sleeping Redis made a lookup time out");
    let publish = Instant::now();
    assert!(a
        .cluster
        .bus
        .publish(Partition::default(), Scope::Everything)
        .await
        .is_err());
    assert!(publish.elapsed() < Duration::from_millis(250));
    assert!(a.cluster.metrics.snapshot().shared_errors >= 1);
}

#[tokio::test]
async fn without_redis_every_operation_is_a_quick_miss() {
    // A port nothing listens on: bound but never listening, and held for the test, so
    // no other socket can take it.
    let reserved = tokio::net::TcpSocket::new_v4().expect("socket");
    reserved
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let port = reserved.local_addr().expect("port").port();
    let a = Replica::start_with(&format!("redis://127.0.0.1:{port}"), policy(), "50ms");
    assert!(a.cluster.bus.is_degraded());
    let started = Instant::now();
    assert_eq!(
        a.shared().lookup(&key("t", "1")).await,
        SharedLookup::Miss(None)
    );
    assert!(matches!(
        a.shared().try_lock(&key("t", "1")).await,
        LockAttempt::Unavailable
    ));
    assert!(a
        .cluster
        .bus
        .publish(Partition::default(), Scope::Everything)
        .await
        .is_err());
    assert!(started.elapsed() < Duration::from_millis(200));
}

#[tokio::test]
async fn the_fleet_lock_admits_exactly_one_of_n() {
    let redis = redis_or_skip!("the_fleet_lock_admits_exactly_one_of_n");
    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&redis.url(), policy()))
        .collect();
    let k = key("t1", "408");
    for replica in &mut replicas {
        replica.subscribed().await;
        miss_generation(replica.shared(), &k).await;
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(12));
    let attempts = (0..12).map(|i| {
        let tier = replicas[i % 3].shared().clone();
        let (barrier, k) = (Arc::clone(&barrier), k.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            tier.try_lock(&k).await
        })
    });
    let attempts: Vec<_> = attempts.collect(); // all spawned before any is awaited
    let mut acquired = Vec::new();
    for attempt in attempts {
        match attempt.await.expect("no panic") {
            LockAttempt::Acquired(lock) => acquired.push(lock),
            LockAttempt::Held => {}
            LockAttempt::Unavailable => panic!("redis answered"),
        }
    }
    assert_eq!(acquired.len(), 1);
    for lock in acquired {
        lock.release().await;
    }
    assert!(matches!(
        replicas[1].shared().try_lock(&k).await,
        LockAttempt::Acquired(_)
    ));
}

#[tokio::test]
async fn n_cold_replicas_send_one_fetch_and_a_dead_holder_blocks_no_one() {
    let redis = redis_or_skip!("n_cold_replicas_send_one_fetch_and_a_dead_holder_blocks_no_one");
    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&redis.url(), policy()))
        .collect();
    let k = key("t1", "408");
    for replica in &mut replicas {
        replica.subscribed().await;
        miss_generation(replica.shared(), &k).await;
    }
    let fetches = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(9));
    let body = Bytes::from_static(b"[]");
    let misses = (0..9).map(|i| {
        let tier = replicas[i % 3].shared().clone();
        let (barrier, fetches, k, body) = (
            Arc::clone(&barrier),
            Arc::clone(&fetches),
            k.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            barrier.wait().await;
            let deadline = Instant::now() + Duration::from_secs(2);
            let (store_tier, store_key) = (tier.clone(), k.clone());
            tier.coalesce(&k, deadline, |generation| async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await; // the upstream
                if let Some(generation) = generation {
                    let _ = store_tier
                        .store(&store_key, &generation, &body, &[], Duration::ZERO)
                        .await;
                }
                body
            })
            .await
        })
    });
    let misses: Vec<_> = misses.collect(); // all spawned before any is awaited
    let mut shared = 0;
    for miss in misses {
        if let Coalesced::Shared(entry) = miss.await.expect("no panic") {
            assert_eq!(entry.body, body);
            shared += 1;
        }
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert_eq!(shared, 8);

    // A holder that dies stops renewing: its lock is gone within the lock ttl
    // (250 ms here), and waiters then fetch.

    let mut dying = Replica::start_with(&redis.url(), policy(), "50ms");
    dying.subscribed().await;
    let cold = key("t1", "410");
    miss_generation(dying.shared(), &cold).await;
    let LockAttempt::Acquired(lock) = dying.shared().try_lock(&cold).await else {
        panic!("the first taker acquires");
    };
    lock.abandon(); // killed while holding it: never released, never renewed
    let started = Instant::now();
    let waited = replicas[0]
        .shared()
        .wait_for(&cold, Instant::now() + Duration::from_secs(2))
        .await;
    assert_eq!(waited, None);
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn shared_entries_are_bounded_by_max_entry_bytes() {
    let redis = redis_or_skip!("shared_entries_are_bounded_by_max_entry_bytes");
    let small = SharedPolicy {
        max_entry_bytes: 64,
        ..policy()
    };
    let a = Replica::start(&redis.url(), small);
    let b = Replica::start(&redis.url(), policy());
    let k = key("t1", "408");
    let big = Bytes::from(format!("[{}]", "1,".repeat(40) + "1"));
    assert!(big.len() > 64);

    // Too large for A's local cache: A does not write it to Redis.
    let generation = miss_generation(a.shared(), &k).await;
    let stored = a
        .shared()
        .store(&k, &generation, &big, &[], Duration::ZERO)
        .await
        .expect("answered");
    assert!(!stored, "an entry over max_entry_bytes is not written");
    assert!(matches!(
        b.shared().lookup(&k).await,
        SharedLookup::Miss(Some(_))
    ));
    let client = redis::Client::open(redis.url()).expect("url");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let entries: Vec<String> = redis::cmd("KEYS")
        .arg("csgate:v1:e:*")
        .query_async(&mut raw)
        .await
        .expect("keys");
    assert!(entries.is_empty(), "{entries:?}");

    // Written by B (a larger bound), read by A: a miss for A, counted, and a hit for B.
    let generation = miss_generation(b.shared(), &k).await;
    assert!(b
        .shared()
        .store(&k, &generation, &big, &[], Duration::ZERO)
        .await
        .expect("stored"));
    let before = a.cluster.metrics.snapshot();
    assert!(matches!(
        a.shared().lookup(&k).await,
        SharedLookup::Miss(Some(_))
    ));
    let after = a.cluster.metrics.snapshot();
    assert_eq!(after.shared_too_large, before.shared_too_large + 1);
    assert_eq!(after.shared_hits, before.shared_hits);
    assert!(matches!(b.shared().lookup(&k).await, SharedLookup::Hit(_)));
    // A body at the bound is fine.
    let fits = Bytes::from(vec![b'1'; 64]);
    let generation = miss_generation(a.shared(), &key("t1", "409")).await;
    assert!(a
        .shared()
        .store(&key("t1", "409"), &generation, &fits, &[], Duration::ZERO)
        .await
        .expect("stored"));
    assert!(matches!(
        a.shared().lookup(&key("t1", "409")).await,
        SharedLookup::Hit(_)
    ));
}

/// A publish that fails while the others stay subscribed (the writer cut off from
/// Redis, or its command connection not back yet after a restart) is kept and sent
/// when Redis answers again, with the sequence number it was given: the others apply
/// it with no further write, and later messages follow it without a gap.
#[tokio::test]
async fn a_failed_publish_is_republished_when_redis_answers_again() {
    let redis = redis_or_skip!("a_failed_publish_is_republished_when_redis_answers_again");
    let link = Proxy::start(redis.addr()).await;
    let mut a = Replica::start_with(&link.url(), policy(), "50ms");
    let mut b = Replica::start(&redis.url(), policy());
    a.subscribed().await;
    b.subscribed().await;
    let first = a
        .cluster
        .bus
        .publish(Partition::default(), Scope::WholeTenant)
        .await
        .expect("published");
    assert_eq!(b.next_event().await, BusEvent::Invalidate(first));

    link.cut();
    let mut state = a.cluster.bus.state();
    tokio::time::timeout(WAIT, state.wait_for(|s| !s.connected))
        .await
        .expect("loss noticed in time")
        .expect("bus alive");
    let partition = Partition::of(&tenant_of("t1"));
    let held = touched(&["408"], &["42"]);
    assert!(a
        .cluster
        .bus
        .publish(partition.clone(), held.clone())
        .await
        .is_err());
    assert_eq!(a.cluster.bus.pending(), 1);
    // B, still subscribed, has heard nothing: without the republish it stays stale.
    assert_eq!(b.drain_events(), Vec::new());
    // But A's heartbeats stopped: B cannot prove it hears A, so it is degraded within
    // a second (its entries serve only within degraded_ttl).
    let cut = Instant::now();
    while !b.cluster.bus.is_degraded() {
        assert!(
            cut.elapsed() < Duration::from_millis(1500),
            "{:?}",
            b.cluster.health()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    link.restore();
    let back = Instant::now();
    let republished = b.next_event().await;
    let delay = back.elapsed();
    eprintln!("held message received {delay:?} after the link returned");
    let BusEvent::Invalidate(republished) = republished else {
        panic!("expected the held message, got {republished:?}");
    };
    assert!(delay < Duration::from_secs(1), "{delay:?}");
    assert_eq!(
        (republished.seq, &republished.partition, &republished.scope),
        (2, &partition, &held)
    );
    // A counts it delivered once Redis has answered the PUBLISH, which may be just
    // after B received it.
    while a.cluster.bus.pending() > 0 || a.cluster.metrics.snapshot().republished == 0 {
        assert!(back.elapsed() < WAIT, "the outbox empties");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(a.cluster.bus.pending(), 0);
    assert_eq!(a.cluster.metrics.snapshot().republished, 1);
    // The next message follows in sequence: no gap, so no flush on B.
    let next = a
        .cluster
        .bus
        .publish(Partition::default(), Scope::WholeTenant)
        .await
        .expect("published");
    assert_eq!(next.seq, 3);
    assert_eq!(b.next_event().await, BusEvent::Invalidate(next));
}

/// Writes that come while the writer's link to Redis is stalled are all queued (none
/// waits its turn and is lost), held when their delivery times out, and delivered in
/// order once Redis answers: the receiver sees every sequence number, perhaps one twice
/// (a `PUBLISH` that timed out at the writer may still have run), and never a gap.
#[tokio::test]
async fn concurrent_writes_during_a_slow_redis_are_all_delivered_in_order() {
    let redis = redis_or_skip!("concurrent_writes_during_a_slow_redis_are_all_delivered_in_order");
    let link = hop::Hop::start(redis.addr()).await;
    let mut a = Replica::start_with(&link.url(), policy(), "50ms");
    let mut b = Replica::start(&redis.url(), policy());
    a.subscribed().await;
    b.subscribed().await;
    // Bytes held, not dropped: A's publishes wait in the hop and time out at A.
    link.stall();
    let publish = |contact_key: &'static str| {
        let bus = a.cluster.bus.clone();
        async move {
            bus.publish(
                Partition::of(&tenant_of("t1")),
                touched(&[contact_key], &[]),
            )
            .await
        }
    };
    let (one, two, three) = tokio::join!(publish("1"), publish("2"), publish("3"));
    assert!(one.is_err() && two.is_err() && three.is_err());
    assert_eq!(a.cluster.bus.pending(), 3);
    link.unstall();
    let mut seqs = Vec::new();
    while seqs.last() != Some(&3) {
        match b.next_event().await {
            BusEvent::Invalidate(message) => seqs.push(message.seq),
            // A went silent while stalled: B may have dropped nothing, but a flush
            // is never a gap here.
            BusEvent::Flush(FlushReason::SequenceGap { .. }) => {
                panic!("B saw a gap; received {seqs:?}")
            }
            _ => {}
        }
    }
    eprintln!("received {seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
        "{seqs:?}"
    );
    assert_eq!(seqs.first(), Some(&1));
    let started = Instant::now();
    while a.cluster.bus.pending() > 0 {
        assert!(started.elapsed() < WAIT, "the outbox empties");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The admin purge kinds reach the other replicas and the shared tier.
#[tokio::test]
async fn purge_messages_reach_the_others_and_the_shared_tier() {
    let redis = redis_or_skip!("purge_messages_reach_the_others_and_the_shared_tier");
    let a = Replica::start(&redis.url(), policy());
    let mut b = Replica::start(&redis.url(), policy());
    b.subscribed().await;
    let k = key("t1", "408");
    let body = Bytes::from_static(b"[]");
    let store = |tier: SharedTier, k: Key| {
        let body = body.clone();
        async move {
            let generation = miss_generation(&tier, &k).await;
            assert!(tier
                .store(&k, &generation, &body, &[], Duration::ZERO)
                .await
                .expect("stored"));
        }
    };
    store(a.shared().clone(), k.clone()).await;
    store(a.shared().clone(), key("t1", "409")).await;
    let purge = a.cluster.purge_contact(&tenant_of("t1"), "408").await;
    assert!(purge.reached && !purge.republishing, "{purge:?}");
    assert_eq!(purge.shared_cache, "purged");
    match b.next_event().await {
        BusEvent::Invalidate(message) => {
            assert_eq!(
                message.scope,
                Scope::PurgeContact {
                    contact_key: "408".into()
                }
            );
            assert_eq!(message.partition, Partition::of(&tenant_of("t1")));
        }
        other => panic!("expected the purge, got {other:?}"),
    }
    assert!(matches!(
        b.shared().lookup(&k).await,
        SharedLookup::Miss(Some(_))
    ));
    assert!(matches!(
        b.shared().lookup(&key("t1", "409")).await,
        SharedLookup::Hit(_)
    ));

    store(a.shared().clone(), k.clone()).await;
    let purge = a.cluster.purge_all().await;
    assert!(purge.reached, "{purge:?}");
    assert_eq!(purge.shared_entries_deleted, Some(2));
    assert!(matches!(
        b.next_event().await,
        BusEvent::Invalidate(Message {
            scope: Scope::PurgeAll,
            ..
        })
    ));
    for contact in ["408", "409"] {
        assert!(matches!(
            b.shared().lookup(&key("t1", contact)).await,
            SharedLookup::Miss(Some(_))
        ));
    }
}
