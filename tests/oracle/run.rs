//! Runs one case against a deployment: every step's requests go through the gateway;
//! every read is then sent straight to the store and the two answers compared.
//!
//! The comparison rules (what the contract lets differ):
//! - Both 2xx: equal status and equal JSON. Object key order is ignored (serde_json's
//!   map equality); array order is not, since the gateway keeps the upstream's order of
//!   services (gateway contract §2.3). Headers are not compared (`Cache-Status`, `Age`,
//!   `Via` and the request id are the gateway's own).
//! - Otherwise: the same status class. csgate validates Query Services parameters before
//!   anything reaches the store (§1.2) and the store applies the same rules, so a 400
//!   from one and a 4xx from the other both say "refused"; bodies are not compared.
//! - A 5xx or a failed exchange is a divergence, on reads and writes alike: the
//!   deployment is healthy.
//! - A request the fixed gateway refuses by contract (malformed or over-long tenant
//!   values, a hop-by-hop tenant, a write path with an empty segment, a case variant of
//!   an API word or a stray `%`) is correct when answered 400 and is then neither
//!   compared nor taken as a write. Answered otherwise, it is treated like any other.
//! - Concurrent steps: a read is compared only when no write of the same step may touch
//!   what it reads ([`Foot`]); otherwise either answer would be right. Every read of a
//!   later step starts after all of this step's answers, so it must see them.

use std::fmt::Write as _;

use futures_util::future::join_all;

use super::deploy::Deployment;
use super::http::{curl, Answer, Clients, Request, Target};
use super::ops::{Case, ItemKind, Step};
use super::request::{prepare, Effect, Model, Prepared, Service};

/// Counters of one or more runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub cases: u64,
    /// Requests sent through the gateway.
    pub ops: u64,
    pub writes_applied: u64,
    pub reads_compared: u64,
    /// Reads not compared because a concurrent write could touch them.
    pub reads_overlapping: u64,
    /// Requests answered 400 as the contract asks for malformed input.
    pub refused: u64,
    pub divergences: u64,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.cases += other.cases;
        self.ops += other.ops;
        self.writes_applied += other.writes_applied;
        self.reads_compared += other.reads_compared;
        self.reads_overlapping += other.reads_overlapping;
        self.refused += other.refused;
        self.divergences += other.divergences;
    }
}

/// One exchange of a run, for the transcript.
#[derive(Clone, Debug)]
pub struct Entry {
    pub step: usize,
    pub concurrent: bool,
    pub request: Request,
    pub answer: Answer,
    pub store: Option<(Request, Answer)>,
    pub divergence: Option<String>,
}

/// What one case did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stats: Stats,
    pub transcript: Vec<Entry>,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        self.stats.divergences > 0
    }

    /// The transcript as a runnable shell script: one curl per request, the concurrent
    /// ones marked, each divergence with both answers.
    pub fn script(&self, deployment: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# deployment: {deployment}");
        let _ = writeln!(
            out,
            "# CSGATE=http://127.0.0.1:8080   # the gateway (cache on, long ttl)"
        );
        let _ = writeln!(
            out,
            "# STORE=http://127.0.0.1:8081    # the store behind it (no cache)"
        );
        let mut last_step = usize::MAX;
        for entry in &self.transcript {
            if entry.step != last_step && entry.concurrent {
                let _ = writeln!(
                    out,
                    "# step {}: the following requests are sent concurrently",
                    entry.step + 1
                );
            }
            last_step = entry.step;
            let _ = writeln!(out, "{}", curl(&entry.request));
            let _ = writeln!(out, "#   -> {}", entry.answer.show());
            if let Some((request, answer)) = &entry.store {
                if let Some(divergence) = &entry.divergence {
                    let divergence = divergence.replace('\n', "\n#   ");
                    let _ = writeln!(out, "# DIVERGENCE: {divergence}");
                    let _ = writeln!(out, "#   csgate: {}", entry.answer.show());
                    let _ = writeln!(out, "#   store:  {}", answer.show());
                    let _ = writeln!(out, "{}", curl(request));
                }
            } else if let Some(divergence) = &entry.divergence {
                let divergence = divergence.replace('\n', "\n#   ");
                let _ = writeln!(out, "# DIVERGENCE: {divergence}");
            }
        }
        out
    }
}

/// Compares a read through the gateway with the same read on the store; `Some(why)` on
/// a divergence.
pub fn compare(gateway: &Answer, store: &Answer) -> Option<String> {
    if gateway.status == 0 || store.status == 0 {
        return Some("an exchange failed".into());
    }
    if gateway.status >= 500 || store.status >= 500 {
        return Some(format!(
            "server error ({} / {})",
            gateway.status, store.status
        ));
    }
    if gateway.is_success() && store.is_success() {
        if gateway.status != store.status {
            return Some(format!("status {} vs {}", gateway.status, store.status));
        }
        return match (gateway.json(), store.json()) {
            (Some(a), Some(b)) if a == b => None,
            (Some(_), Some(_)) => Some("the JSON answers differ".into()),
            _ => Some("an answer is not JSON".into()),
        };
    }
    (gateway.status / 100 != store.status / 100)
        .then(|| format!("status {} vs {}", gateway.status, store.status))
}

/// Runs `case` on `deployment`. With `record`, keeps a transcript of every exchange;
/// without, only of divergences.
pub async fn run_case(deployment: &Deployment, case: &Case, record: bool) -> Outcome {
    let clients = Clients::new();
    let mut model = Model::default();
    let mut outcome = Outcome::default();
    outcome.stats.cases = 1;
    for (step_no, step) in case.steps.iter().enumerate() {
        let (ops, concurrent) = match step {
            Step::One(op) => (std::slice::from_ref(op), false),
            Step::Together(ops) => (ops.as_slice(), true),
        };
        let mut prepared: Vec<Prepared> = ops.iter().map(|op| prepare(case, &model, op)).collect();
        // Operations are spread over the replicas, deterministically.
        for (i, p) in prepared.iter_mut().enumerate() {
            let replica = (step_no + i) % deployment.gateways.len();
            p.gateway.target = Target::Gateway(u8::try_from(replica).unwrap_or(0));
        }
        let compared: Vec<bool> = prepared
            .iter()
            .enumerate()
            .map(|(i, read)| {
                !read.is_write()
                    && !prepared.iter().enumerate().any(|(j, write)| {
                        j != i
                            && write.is_write()
                            && write
                                .foot
                                .iter()
                                .any(|w| read.foot.iter().any(|r| w.meets(r)))
                    })
            })
            .collect();
        let exchanges = prepared.iter().zip(&compared).map(|(p, &compare)| {
            let clients = &clients;
            async move {
                let replica = match p.gateway.target {
                    Target::Gateway(n) => n,
                    Target::Store => 0,
                };
                let answer = clients.send(deployment.gateway(replica), &p.gateway).await;
                let refused = p.refusable && answer.status == 400;
                let store = match (&p.store, compare && !refused) {
                    (Some(request), true) => Some((
                        request.clone(),
                        clients.send(&deployment.store, request).await,
                    )),
                    _ => None,
                };
                (answer, store, refused)
            }
        });
        let results = join_all(exchanges).await;
        for (p, ((answer, store, refused), &compare)) in
            prepared.iter().zip(results.into_iter().zip(&compared))
        {
            let stats = &mut outcome.stats;
            stats.ops += 1;
            let divergence = if refused {
                stats.refused += 1;
                None
            } else if p.is_write() {
                if answer.status == 0 || answer.status >= 500 {
                    Some(format!("the write failed: {}", answer.show()))
                } else {
                    if answer.is_success() {
                        stats.writes_applied += 1;
                        learn(&mut model, &p.effect, &answer);
                    }
                    None
                }
            } else if let Some((_, store_answer)) = &store {
                stats.reads_compared += 1;
                compare_answers(&answer, store_answer)
            } else {
                if !compare {
                    stats.reads_overlapping += 1;
                }
                None
            };
            let divergence = match divergence {
                Some(why) if !deployment.admins.is_empty() => {
                    Some(format!("{why}\n{}", fleet_counters(deployment).await))
                }
                other => other,
            };
            if divergence.is_some() {
                stats.divergences += 1;
            }
            if record || divergence.is_some() {
                outcome.transcript.push(Entry {
                    step: step_no,
                    concurrent,
                    request: p.gateway.clone(),
                    answer,
                    store,
                    divergence,
                });
            }
        }
    }
    outcome
}

/// Each replica's fleet counters when a divergence is found, so that the report says
/// whether a write answered without every acknowledgement (`csgate_cluster_apply_waits`
/// with `outcome="timeout"`: a peer slower than `op_timeout`), whether a replica was
/// degraded, or neither.
async fn fleet_counters(deployment: &Deployment) -> String {
    let mut out = String::new();
    for (i, admin) in deployment.admins.iter().enumerate() {
        let metrics = crate::common::try_get(&format!("{admin}/metrics"))
            .await
            .map(|a| a.text())
            .unwrap_or_default();
        let lines: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.starts_with("csgate_cluster_apply_waits")
                        || l.starts_with("csgate_cluster_degraded")
                        || l.starts_with("csgate_cluster_resubscriptions"))
            })
            .collect();
        let _ = writeln!(out, "replica {i}: {}", lines.join(", "));
    }
    out.trim_end().to_owned()
}

fn compare_answers(gateway: &Answer, store: &Answer) -> Option<String> {
    compare(gateway, store)
}

/// What a successful write teaches the model: new ids, new owners.
fn learn(model: &mut Model, effect: &Effect, answer: &Answer) {
    let field = |name: &str| -> Option<String> {
        let value = answer.json()?.get(name)?.clone();
        Some(match value {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
    };
    match effect {
        Effect::None => {}
        Effect::Started {
            tenant,
            tenant_sure,
            contact_key,
            customer,
        } => {
            if let Some(id) = field("service_id") {
                model.services.push(Service {
                    id,
                    tenant: *tenant,
                    tenant_sure: *tenant_sure,
                    contact_key: contact_key.clone(),
                    customer: customer.clone(),
                    states: Vec::new(),
                    tasks: Vec::new(),
                });
            }
        }
        Effect::Item { service, kind } => {
            if let Some(id) = field(kind.id_field()) {
                let service = &mut model.services[*service];
                match kind {
                    ItemKind::State => service.states.push(id),
                    ItemKind::Task => service.tasks.push(id),
                }
            }
        }
        Effect::Associated { service, customer } => {
            model.services[*service].customer = Some(customer.clone());
        }
    }
}
