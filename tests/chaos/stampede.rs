//! Stampede: many concurrent cold lookups of one key, spread over the replicas, in
//! front of a counting fake upstream that takes a while to answer. With Redis healthy
//! the fleet makes one upstream request (each replica's single flight, then the fleet
//! lock and the shared tier); under a fault, at most one per replica.

use std::time::Duration;

use crate::common::{FakeUpstream, Reply};

use super::fleet::{Fleet, Options};
use super::http::Client;
use super::probe::lookup_url;

/// The fault the trials run under (applied to every replica's hop for all trials).
#[derive(Clone, Copy, Debug)]
pub enum Under {
    Healthy,
    Latency(Duration),
    Stall,
}

impl Under {
    pub fn name(&self) -> String {
        match self {
            Under::Healthy => "Redis healthy".into(),
            Under::Latency(d) => format!("+{} ms each way", d.as_millis()),
            Under::Stall => "all hops stalled".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Stampede {
    pub under: Under,
    pub concurrency: usize,
    /// Upstream requests per trial.
    pub upstream: Vec<usize>,
    pub client_errors: usize,
    pub error_samples: Vec<String>,
    /// Wall time of each trial.
    pub took: Vec<Duration>,
    /// Per replica, its `csgate_cluster_shared_requests` and `csgate_cluster_lock_waits`
    /// counters after the trials (why a trial made more than one request).
    pub counters: Vec<String>,
}

/// How long the upstream takes to answer: every lookup of a trial is sent while the
/// first fetch is in flight.
const UPSTREAM_DELAY: Duration = Duration::from_millis(1500);

/// `trials` trials of `concurrency` concurrent cold lookups (a new key each) over a
/// fresh three-replica fleet.
pub async fn stampede(
    test: &str,
    under: Under,
    trials: usize,
    concurrency: usize,
) -> Option<Stampede> {
    let upstream = FakeUpstream::start(Reply::Delay(
        UPSTREAM_DELAY,
        Box::new(Reply::json(200, "[]")),
    ))
    .await;
    let fleet = Fleet::start(
        test,
        Options {
            upstream: Some(upstream.url()),
            // A debug build answering hundreds of concurrent requests on two cores can
            // take longer than the 50 ms default to read a Redis reply, which turns a
            // healthy Redis into a miss; the release build (bench/chaos.sh) runs with
            // the default.
            op_timeout: cfg!(debug_assertions).then_some(Duration::from_millis(250)),
            ..Options::default()
        },
    )
    .await?;
    match under {
        Under::Healthy => {}
        Under::Latency(d) => fleet.hops.iter().for_each(|h| h.latency(d)),
        Under::Stall => fleet.hops.iter().for_each(|h| h.stall()),
    }
    let bases: Vec<String> = (0..fleet.replicas.len()).map(|i| fleet.url(i)).collect();
    let mut result = Stampede {
        under,
        concurrency,
        upstream: Vec::new(),
        client_errors: 0,
        error_samples: Vec::new(),
        took: Vec::new(),
        counters: Vec::new(),
    };
    for trial in 0..trials {
        let key = format!("stampede-{}-{trial}", std::process::id());
        let before = upstream.count();
        let started = tokio::time::Instant::now();
        let requests: Vec<_> = (0..concurrency)
            .map(|i| {
                let url = lookup_url(&bases[i % bases.len()], &key);
                tokio::spawn(async move {
                    // A client (and connection) per request: concurrent, not queued on
                    // a pool.
                    let answer = Client::new().get(&url, &[]).await;
                    match answer {
                        Ok(a) if a.status == 200 => Ok(()),
                        Ok(a) => Err(format!("{}: {}", a.status, a.text())),
                        Err(e) => Err(e),
                    }
                })
            })
            .collect();
        for request in requests {
            if let Err(error) = request.await.expect("a request task") {
                result.client_errors += 1;
                if result.error_samples.len() < 5 {
                    result.error_samples.push(error);
                }
            }
        }
        result.took.push(started.elapsed());
        let count = upstream
            .requests()
            .iter()
            .skip(before)
            .filter(|r| r.path.ends_with(&key))
            .count();
        result.upstream.push(count);
    }
    fleet.hops.iter().for_each(|h| h.heal());
    let client = Client::new();
    for (i, replica) in fleet.replicas.iter().enumerate() {
        let metrics = client
            .get(&replica.admin_url("/metrics"), &[])
            .await
            .map(|a| a.text())
            .unwrap_or_default();
        let lines: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                l.starts_with("csgate_cluster_shared_requests")
                    || l.starts_with("csgate_cluster_lock_waits")
            })
            .collect();
        result
            .counters
            .push(format!("{}: {}", super::probe::NAMES[i], lines.join(", ")));
    }
    Some(result)
}

impl Stampede {
    /// Trials that made exactly one upstream request.
    pub fn ones(&self) -> usize {
        self.upstream.iter().filter(|n| **n == 1).count()
    }

    pub fn violations(&self, replicas: usize) -> Vec<String> {
        let mut out = Vec::new();
        if self.client_errors > 0 {
            out.push(format!(
                "{} client errors, e.g. {:?}",
                self.client_errors, self.error_samples
            ));
        }
        match self.under {
            Under::Healthy => {
                let needed = (self.upstream.len() * 9).div_ceil(10);
                if self.ones() < needed {
                    out.push(format!(
                        "one upstream request in {} of {} trials (needed {needed}): {:?}",
                        self.ones(),
                        self.upstream.len(),
                        self.upstream
                    ));
                }
            }
            _ => {
                if self.upstream.iter().any(|n| *n > replicas) {
                    out.push(format!(
                        "more than one upstream request per replica: {:?}",
                        self.upstream
                    ));
                }
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let slowest = self.took.iter().max().copied().unwrap_or_default();
        format!(
            "| {} | {} | {} | {} of {} | {} | {:.1} s |",
            self.under.name(),
            self.concurrency,
            self.upstream
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            self.ones(),
            self.upstream.len(),
            self.client_errors,
            slowest.as_secs_f64()
        )
    }

    pub const HEADER: &'static str = "| stampede | concurrent cold lookups | upstream requests \
        per trial | trials with 1 | client errors | slowest trial |\n|---|---|---|---|---|---|";
}
