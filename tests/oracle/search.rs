//! The search: workers generate cases (proptest strategies, seeded), run each on a fresh
//! deployment, and shrink a failing case to a minimal one (proptest's `simplify` /
//! `complicate`, each candidate replayed on a fresh deployment); then the report.
//!
//! Workers are OS threads that drive their futures on one shared multi-thread runtime
//! (`Handle::block_on`): a proptest value tree is not `Send`, so it stays on its thread
//! while the servers of the deployments run on the runtime's workers.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio::runtime::Handle;

use super::deploy::Deploy;
use super::ops::{case, Case};
use super::run::{run_case, Outcome, Stats};

/// How long and how much to search.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    pub workers: usize,
    /// Stop starting new cases after this many cases, operations or this much time.
    pub max_cases: u64,
    pub max_ops: u64,
    pub time: Duration,
    /// Time allowed to shrink one failure.
    pub shrink_time: Duration,
    /// Failures shrunk (and reported in full); later ones are only counted.
    pub shrink_failures: usize,
    /// Stop at the first failure (the `cargo test` mode) or keep counting.
    pub stop_at_first: bool,
    /// Steps per case, at most.
    pub max_steps: usize,
}

/// A failure, shrunk.
#[derive(Debug)]
pub struct Found {
    /// Cases and operations run (all workers) up to and including the failing case.
    pub cases_before: u64,
    pub ops_before: u64,
    pub original_ops: usize,
    pub minimal: Case,
    pub shrink_runs: u64,
    /// The minimal case's transcript as curl commands (or the original's, if the
    /// minimal one did not fail again on replay).
    pub script: String,
    pub divergences: Vec<String>,
}

/// The result of a search.
#[derive(Debug)]
pub struct Report {
    pub settings: Settings,
    pub deployment: String,
    pub stats: Stats,
    pub elapsed: Duration,
    /// Wall time until the search stopped starting cases (shrinking excluded when the
    /// search stops at the first failure).
    pub searched: Duration,
    pub found: Vec<Found>,
}

struct Shared {
    stats: Mutex<Stats>,
    found: Mutex<Vec<Found>>,
    shrinking: AtomicU64,
    stop: AtomicBool,
    cases: AtomicU64,
    ops: AtomicU64,
    searched: Mutex<Option<Duration>>,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn worker_rng(seed: u64, worker: usize) -> TestRng {
    let mut bytes = [0u8; 32];
    let mut x = seed ^ (worker as u64).wrapping_mul(0xA24B_AED4_963E_E407);
    for chunk in bytes.chunks_mut(8) {
        x = splitmix(x);
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Runs one case on a fresh deployment.
fn run_fresh(handle: &Handle, deploy: &dyn Deploy, case: &Case, record: bool) -> Outcome {
    handle.block_on(async {
        let deployment = deploy.deploy().await;
        let outcome = run_case(&deployment, case, record).await;
        deployment.shutdown().await;
        outcome
    })
}

/// Searches as `settings` say; blocks until done.
pub fn explore(handle: &Handle, deploy: Arc<dyn Deploy>, settings: Settings) -> Report {
    let shared = Shared {
        stats: Mutex::default(),
        found: Mutex::default(),
        shrinking: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        cases: AtomicU64::new(0),
        ops: AtomicU64::new(0),
        searched: Mutex::new(None),
    };
    let started = Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..settings.workers.max(1) {
            let (shared, settings, deploy) = (&shared, &settings, &deploy);
            std::thread::Builder::new()
                .name(format!("oracle-{worker}"))
                .spawn_scoped(scope, move || {
                    work(handle, deploy.as_ref(), settings, shared, worker, started)
                })
                .expect("spawn a worker thread");
        }
    });
    let stats = *shared.stats.lock().expect("stats");
    let found = std::mem::take(&mut *shared.found.lock().expect("found"));
    let searched = *shared.searched.lock().expect("searched");
    Report {
        deployment: deploy.describe(),
        settings,
        stats,
        elapsed: started.elapsed(),
        searched: searched.unwrap_or(started.elapsed()),
        found,
    }
}

fn work(
    handle: &Handle,
    deploy: &dyn Deploy,
    settings: &Settings,
    shared: &Shared,
    worker: usize,
    started: Instant,
) {
    let mut runner = TestRunner::new_with_rng(Config::default(), worker_rng(settings.seed, worker));
    let strategy = case(settings.max_steps);
    loop {
        let out_of_budget = shared.stop.load(Ordering::SeqCst)
            || started.elapsed() >= settings.time
            || shared.ops.load(Ordering::SeqCst) >= settings.max_ops
            || shared.cases.fetch_add(1, Ordering::SeqCst) >= settings.max_cases;
        if out_of_budget {
            return;
        }
        let mut tree = strategy.new_tree(&mut runner).expect("a case");
        let case = tree.current();
        let outcome = run_fresh(handle, deploy, &case, false);
        let ops_before =
            shared.ops.fetch_add(outcome.stats.ops, Ordering::SeqCst) + outcome.stats.ops;
        let cases_before = {
            let mut stats = shared.stats.lock().expect("stats");
            stats.add(&outcome.stats);
            stats.cases
        };
        if !outcome.failed() {
            continue;
        }
        if settings.stop_at_first {
            shared.stop.store(true, Ordering::SeqCst);
            shared
                .searched
                .lock()
                .expect("searched")
                .get_or_insert(started.elapsed());
        }
        let turn = shared.shrinking.fetch_add(1, Ordering::SeqCst);
        if turn as usize >= settings.shrink_failures {
            continue;
        }
        let found = shrink(
            handle,
            deploy,
            &mut tree,
            case,
            outcome,
            settings.shrink_time,
        );
        shared.found.lock().expect("found").push(Found {
            cases_before,
            ops_before,
            ..found
        });
    }
}

/// Shrinks a failing case: simplify while it still fails, complicate when it passes
/// (proptest's own loop), each candidate on a fresh deployment, for at most `time`.
fn shrink(
    handle: &Handle,
    deploy: &dyn Deploy,
    tree: &mut impl ValueTree<Value = Case>,
    original: Case,
    original_outcome: Outcome,
    time: Duration,
) -> Found {
    let started = Instant::now();
    // proptest's own shrinking first (half the time), then the passes of
    // `super::minimise`, which remove whole runs of steps at once and simplify fields
    // proptest cannot (a concurrent step into single ones).
    let deadline = started + time / 2;
    let original_ops = original.op_count();
    let mut best = original;
    let mut runs = 0u64;
    if tree.simplify() {
        while Instant::now() < deadline {
            let candidate = tree.current();
            runs += 1;
            if run_fresh(handle, deploy, &candidate, false).failed() {
                best = candidate;
                if !tree.simplify() {
                    break;
                }
            } else if !tree.complicate() {
                break;
            }
        }
    }
    let fails = |candidate: &Case| {
        let failed = run_fresh(handle, deploy, candidate, false).failed();
        if std::env::var_os("COHERENCE_DEBUG").is_some() {
            eprintln!(
                "minimise: {} steps, failed: {failed} {candidate:?}",
                candidate.steps.len()
            );
        }
        failed
    };
    if std::env::var_os("COHERENCE_DEBUG").is_some() {
        eprintln!(
            "proptest shrinking: {} steps after {runs} runs, {:?}",
            best.steps.len(),
            started.elapsed()
        );
    }
    let (minimal, more_runs) = super::minimise::minimise(best, started + time, fails);
    best = minimal;
    runs += more_runs;
    // Replay the minimal case with a full transcript (a race may not come back at once).
    let description = deploy.describe();
    let replay = (0..3)
        .map(|_| run_fresh(handle, deploy, &best, true))
        .find(Outcome::failed);
    let (script, outcome) = match replay {
        Some(outcome) => (outcome.script(&description), outcome),
        None => (
            format!(
                "# the minimal case did not fail again on replay; the original case's divergences:\n{}",
                original_outcome.script(&description)
            ),
            original_outcome,
        ),
    };
    let divergences = outcome
        .transcript
        .iter()
        .filter_map(|e| e.divergence.clone())
        .collect();
    Found {
        cases_before: 0,
        ops_before: 0,
        original_ops,
        minimal: best,
        shrink_runs: runs,
        script,
        divergences,
    }
}

/// `git describe`-like text for the report: the commit, and whether the tree was dirty.
/// `COHERENCE_COMMIT` (set by `bench/coherence.sh` before it builds) wins: the tree may
/// change while a long run goes on, and the report names what was built.
pub fn git_commit() -> String {
    if let Ok(commit) = std::env::var("COHERENCE_COMMIT") {
        return commit;
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit} (with uncommitted changes)")
            } else {
                commit
            }
        }
        None => "unknown (no git)".into(),
    }
}

impl Report {
    pub fn ops_per_second(&self) -> f64 {
        self.stats.ops as f64 / self.searched.as_secs_f64().max(1e-9)
    }

    /// One line for the test log.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        format!(
            "seed {:#x}, {} workers: {} cases, {} operations ({} writes applied), {} reads compared, {} overlapping reads not compared, {} refused as the contract asks, {} divergences; {:.1} s in all, {:.0} ops/s while searching",
            self.settings.seed,
            self.settings.workers,
            s.cases,
            s.ops,
            s.writes_applied,
            s.reads_compared,
            s.reads_overlapping,
            s.refused,
            s.divergences,
            self.elapsed.as_secs_f64(),
            self.ops_per_second(),
        )
    }

    /// The failures, shrunk, as text for a panic message or a report.
    pub fn failures(&self) -> String {
        let mut out = String::new();
        for (i, found) in self.found.iter().enumerate() {
            let _ = writeln!(
                out,
                "\n## Divergence {}: first seen after {} cases / {} operations; shrunk from {} to {} operations in {} runs\n",
                i + 1,
                found.cases_before,
                found.ops_before,
                found.original_ops,
                found.minimal.op_count(),
                found.shrink_runs
            );
            for d in &found.divergences {
                // A fleet's divergence carries one line of counters per replica.
                let _ = writeln!(out, "- {}", d.replace('\n', "\n  - "));
            }
            let _ = writeln!(out, "\nMinimal case: `{:?}`\n", found.minimal);
            let _ = writeln!(out, "```sh\n{}```", found.script);
        }
        out
    }

    /// The markdown report of a long run.
    pub fn markdown(&self, build: &str) -> String {
        let s = &self.stats;
        let bound = |n: u64| match n {
            u64::MAX => "unbounded".to_owned(),
            n => n.to_string(),
        };
        let mut out = String::new();
        let _ = writeln!(out, "# Coherence oracle run\n");
        let _ = writeln!(out, "| | |\n|---|---|");
        let rows = [
            ("commit", git_commit()),
            ("build", build.to_owned()),
            ("deployment", self.deployment.clone()),
            (
                "seed",
                format!(
                    "`{:#x}` (replay: `COHERENCE_SEED={:#x}`)",
                    self.settings.seed, self.settings.seed
                ),
            ),
            ("workers", self.settings.workers.to_string()),
            (
                "budget",
                format!(
                    "{:?}, {} operations, {} cases, {} steps per case at most",
                    self.settings.time,
                    bound(self.settings.max_ops),
                    bound(self.settings.max_cases),
                    self.settings.max_steps
                ),
            ),
            ("wall time", format!("{:.1} s", self.elapsed.as_secs_f64())),
            ("cases", s.cases.to_string()),
            ("operations", s.ops.to_string()),
            ("writes applied (2xx)", s.writes_applied.to_string()),
            ("reads compared", s.reads_compared.to_string()),
            (
                "reads not compared (overlapping a concurrent write)",
                s.reads_overlapping.to_string(),
            ),
            (
                "refused with 400 as the contract asks",
                s.refused.to_string(),
            ),
            ("**divergences**", format!("**{}**", s.divergences)),
            (
                "operations/s",
                format!(
                    "{:.0} (over {:.1} s of searching)",
                    self.ops_per_second(),
                    self.searched.as_secs_f64()
                ),
            ),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "| {name} | {value} |");
        }
        if self.found.is_empty() {
            let _ = writeln!(out, "\nNo divergence.");
        } else {
            out.push_str(&self.failures());
        }
        out
    }
}
