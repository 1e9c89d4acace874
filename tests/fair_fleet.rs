//! Fleet-wide rate limits (issue 25) with two replicas on a real `redis-server` the
//! test starts on an ephemeral port: the limit holds for the fleet as a whole while
//! Redis answers, and each replica enforces its share (limit ÷ live replicas) once
//! Redis is gone. Skipped with "skipped: redis-server not found" unless
//! `CSGATE_REQUIRE_REDIS=1`. Rates are one token per 1000 s: the tests count requests.
mod common;
#[path = "cluster/redis.rs"]
mod redis_harness;

use std::time::Duration;

use common::*;
use redis_harness::RedisServer;

const MISS: &str = "/genesys/1/cs/customers/C42/services/active";
const TENANT: [(&str, &str); 1] = [("ContactCenterId", "cc-1")];

fn toml(redis: &RedisServer) -> String {
    format!(
        "[cluster]\nredis_url = \"{}\"\nop_timeout = \"250ms\"\n\
         [limits]\ntenant = {{ rate = 0.001, burst = 4 }}\n",
        redis.url()
    )
}

async fn metric(gw: &TestGateway, line: &str) -> Option<u64> {
    let text = get(&gw.admin_url("/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until every replica counts `n` live replicas.
async fn live(replicas: &[TestGateway], n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for replica in replicas {
        while metric(replica, "csgate_limit_fleet_replicas ").await != Some(n) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replicas not seen live in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn start(redis: &RedisServer, upstream: &FakeUpstream) -> Vec<TestGateway> {
    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(start_gateway(&toml(redis), &[upstream.url()]).await);
    }
    live(&replicas, 2).await;
    replicas
}

#[tokio::test]
async fn the_tenant_limit_holds_for_the_fleet_not_per_replica() {
    let Some(redis) = RedisServer::start("the_tenant_limit_holds_for_the_fleet_not_per_replica")
    else {
        return;
    };
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let replicas = start(&redis, &upstream).await;
    // Four tokens for the fleet, spent alternately on both replicas.
    for i in 0..4 {
        let answer = get_with(&replicas[i % 2].url(MISS), &TENANT).await;
        assert_eq!(answer.status, 200, "request {i}: {}", answer.text());
    }
    for replica in &replicas {
        let answer = get_with(&replica.url(MISS), &TENANT).await;
        assert_eq!(answer.status, 429, "{}", answer.text());
        assert!(answer.header("retry-after").is_some());
    }
    assert_eq!(upstream.count(), 4);
    for replica in &replicas {
        let redis_decisions = metric(
            replica,
            "csgate_limit_fleet_decisions_total{path=\"redis\"} ",
        )
        .await;
        assert_eq!(redis_decisions, Some(3));
        assert_eq!(
            metric(
                replica,
                "csgate_limit_fleet_decisions_total{path=\"local\"} "
            )
            .await,
            None
        );
    }
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test]
async fn without_redis_each_replica_enforces_its_share() {
    let Some(mut redis) = RedisServer::start("without_redis_each_replica_enforces_its_share")
    else {
        return;
    };
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let replicas = start(&redis, &upstream).await;
    redis.kill();
    // Burst 4 over 2 live replicas: 2 each, neither open (4 each) nor closed (0).
    for replica in &replicas {
        for i in 0..2 {
            let answer = get_with(&replica.url(MISS), &TENANT).await;
            assert_eq!(answer.status, 200, "request {i}: {}", answer.text());
        }
        let answer = get_with(&replica.url(MISS), &TENANT).await;
        assert_eq!(answer.status, 429, "{}", answer.text());
        let local = metric(
            replica,
            "csgate_limit_fleet_decisions_total{path=\"local\"} ",
        )
        .await;
        assert_eq!(local, Some(3));
    }
    assert_eq!(upstream.count(), 4);
    for replica in replicas {
        replica.stop().await;
    }
}
