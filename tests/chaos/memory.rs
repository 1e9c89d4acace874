//! Issue 21, item 7: a client that reaches only the public listener starts one service
//! with ~900 KB of attached data and asks many `extensions=` variants of its lookup, so
//! many distinct broad entries with big bodies; with Redis at `maxmemory` and
//! `noeviction` (scaled down from the shipped 200 MB), a write's invalidation must
//! still reach the other replicas afterwards.

use std::time::Duration;

use tokio::time::Instant;

use super::fleet::{Fleet, Options};
use super::http::Client;
use super::probe::{lookup_url, start_service, version_of, BUS_DELAY};

#[derive(Clone, Debug)]
pub struct Fill {
    pub maxmemory: &'static str,
    pub variants: usize,
    /// `used_memory` before and after the variants.
    pub used_before: Option<u64>,
    pub used_after: Option<u64>,
    /// Variant lookups not answered 200.
    pub client_errors: usize,
    pub error_samples: Vec<String>,
    /// After the fill, a write through A: how long after its 2xx B and C first answered
    /// the new version (`None`: not within the wait).
    pub seen_after: Vec<Option<Duration>>,
    /// Whether B and C answered from their cache before the write (else the check
    /// proves nothing).
    pub cached_before: Vec<bool>,
}

/// How long to wait for B and C to see the write before calling it lost.
const WAIT: Duration = Duration::from_secs(3);

pub async fn fill(
    test: &str,
    maxmemory: &'static str,
    variants: usize,
    data_bytes: usize,
) -> Option<Fill> {
    let fleet = Fleet::start(
        test,
        Options {
            redis: vec![("maxmemory", maxmemory), ("maxmemory-policy", "noeviction")],
            ..Options::default()
        },
    )
    .await?;
    let client = Client::new();
    let tenant = [("ContactCenterId", "chaos-memory")];
    let key = format!("memory-{}", std::process::id());
    let lookup = |i: usize, query: &str| format!("{}{query}", lookup_url(&fleet.url(i), &key));
    let big = "x".repeat(data_bytes);
    let body = format!(r#"{{"contact_key":"{key}","service_type":1,"attached":"{big}"}}"#);
    start_service(&client, &fleet.url(0), tenant[0].1, body)
        .await
        .expect("the big service starts");
    let used_before = fleet.redis.used_memory();
    let mut result = Fill {
        maxmemory,
        variants,
        used_before,
        used_after: None,
        client_errors: 0,
        error_samples: Vec::new(),
        seen_after: Vec::new(),
        cached_before: Vec::new(),
    };
    for v in 0..variants {
        let query = format!("?extensions=attached,variant{v}");
        let answer = client.get(&lookup(v % 3, &query), &tenant).await;
        match answer {
            Ok(a) if a.status == 200 && a.body.len() >= data_bytes => {}
            Ok(a) => {
                result.client_errors += 1;
                if result.error_samples.len() < 5 {
                    let text = a.text();
                    result.error_samples.push(format!(
                        "{}: {} bytes: {}",
                        a.status,
                        a.body.len(),
                        &text[..text.len().min(200)]
                    ));
                }
            }
            Err(e) => {
                result.client_errors += 1;
                result.error_samples.push(e);
            }
        }
    }
    result.used_after = fleet.redis.used_memory();
    // B and C cache the plain lookup (version 1)…
    for i in 1..3 {
        let mut hit = false;
        for _ in 0..2 {
            let answer = client.get(&lookup(i, ""), &tenant).await.expect("lookup");
            assert_eq!(version_of(&answer), Ok(1), "{}", answer.text());
            hit = answer
                .header("cache-status")
                .is_some_and(|s| s.starts_with("csgate; hit"));
        }
        result.cached_before.push(hit);
    }
    // …then a small write through A.
    let body = format!(r#"{{"contact_key":"{key}","service_type":1}}"#);
    start_service(&client, &fleet.url(0), tenant[0].1, body)
        .await
        .expect("the write after the fill");
    let acked = Instant::now();
    for i in 1..3 {
        let mut seen = None;
        while acked.elapsed() < WAIT {
            let sent = Instant::now();
            let answer = client.get(&lookup(i, ""), &tenant).await.expect("lookup");
            if version_of(&answer) == Ok(2) {
                seen = Some(sent - acked);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        result.seen_after.push(seen);
    }
    Some(result)
}

impl Fill {
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.client_errors > 0 {
            out.push(format!(
                "{} of {} variant lookups failed, e.g. {:?}",
                self.client_errors, self.variants, self.error_samples
            ));
        }
        if self.cached_before.iter().any(|hit| !hit) {
            out.push(format!(
                "B and C must cache the lookup before the write (hits: {:?})",
                self.cached_before
            ));
        }
        for (i, seen) in self.seen_after.iter().enumerate() {
            let name = ["B", "C"][i];
            match seen {
                // Invalidation working: the write arrives within the contract's bound
                // (degraded_ttl + 100 ms), not only when Redis has room.
                Some(after) if *after <= BUS_DELAY.max(Duration::from_millis(1100)) => {}
                Some(after) => out.push(format!(
                    "after the Redis fill, {name} answered the pre-write version for {after:?} \
                     after the write's 2xx"
                )),
                None => out.push(format!(
                    "after the Redis fill, {name} never saw the write (waited {WAIT:?})"
                )),
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mb = |b: Option<u64>| b.map_or("?".into(), |b| format!("{:.1} MB", b as f64 / 1e6));
        let seen: Vec<String> = self
            .seen_after
            .iter()
            .zip(["B", "C"])
            .map(|(s, name)| match s {
                Some(d) => format!("{name} {} ms", d.as_millis()),
                None => format!("{name} **never** (≥ {} s)", WAIT.as_secs()),
            })
            .collect();
        format!(
            "| maxmemory {} noeviction, {} variants | {} → {} | {} | {} | {:?} |",
            self.maxmemory,
            self.variants,
            mb(self.used_before),
            mb(self.used_after),
            self.client_errors,
            seen.join(", "),
            self.cached_before
        )
    }

    pub const HEADER: &'static str = "| Redis fill | Redis used_memory | failed variant \
        lookups | write after the fill seen by | B, C cached before |\n|---|---|---|---|---|";
}
