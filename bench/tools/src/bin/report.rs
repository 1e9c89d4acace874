//! Reads the raw results `bench/run.sh` wrote (one JSON object a line) and writes the
//! Markdown report and the SVG chart.
//!
//! Usage: `report --raw RAW.jsonl --md OUT.md --svg OUT.svg`
//!
//! Record kinds (field `kind`): `meta` (machine and settings), `throughput` (one wrk
//! round: `phase` hit|miss|miss40|deep, `system`, `round`, `rps`, `p50_us`, `p99_us`, ...),
//! `check` (a correctness check: `name` deep, `system`, `status`, `identical`), `rate`
//! (one constant-rate round: `load` 50|80, `system`, ...), `stampede` (one burst:
//! `system`, `upstream_requests`, ...), `memory` (`max_bytes`, `keys`, `rss_kib`, ...).
//! Every figure quoted is the median over rounds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use csgate_bench_tools::Args;
use plotters::prelude::*;
use serde_json::Value;

const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let args = Args::parse();
    let raw = std::fs::read_to_string(args.req("raw")).expect("read --raw");
    let records: Vec<Value> = raw
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l}: {e}")))
        .collect();
    let results = Results::from(&records);
    std::fs::write(args.req("md"), results.markdown()).expect("write --md");
    results.chart(args.req("svg"));
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Median figures of one system in one measurement.
#[derive(Default, Clone)]
struct Cell {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu: f64,
    core_other: f64,
    cpu_us: f64,
    errors: f64,
    upstream: f64,
    rps_all: Vec<f64>,
}

impl Cell {
    fn of(rows: &[&Value]) -> Cell {
        let col = |k: &str| median(rows.iter().map(|r| num(r, k)).collect());
        Cell {
            rps: col("rps"),
            p50_ms: col("p50_us") / 1000.0,
            p99_ms: col("p99_us") / 1000.0,
            cpu: col("server_cpu"),
            core_other: col("core_other"),
            cpu_us: col("cpu_us_per_req"),
            errors: rows
                .iter()
                .map(|r| num(r, "errors") + num(r, "non200"))
                .filter(|x| x.is_finite())
                .sum(),
            upstream: col("upstream_requests"),
            rps_all: rows.iter().map(|r| num(r, "rps")).collect(),
        }
    }
}

struct Results {
    meta: Value,
    /// (phase, system) → cell, phases in [`PHASES`].
    throughput: BTreeMap<(String, String), Cell>,
    /// (load %, system) → cell.
    rate: BTreeMap<(u32, String), Cell>,
    /// system → one record per round.
    stampede: BTreeMap<String, Vec<Value>>,
    memory: Vec<Value>,
    checks: Vec<Value>,
}

/// Throughput phases, in report order: the hit path, the miss path with the 2.3 KB and the
/// 40 KB answer, the same answers on a pass-through route (the miss path's ceiling on
/// this HTTP stack), and the 1,000-deep pass-through.
const PHASES: [&str; 6] = ["hit", "miss", "miss40", "pass", "pass40", "deep"];

impl Results {
    fn from(records: &[Value]) -> Results {
        let meta = records
            .iter()
            .find(|r| text(r, "kind") == "meta")
            .cloned()
            .unwrap_or(Value::Null);
        let mut groups: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
        let mut rate_groups: BTreeMap<(u32, String), Vec<&Value>> = BTreeMap::new();
        let mut stampede: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut memory = Vec::new();
        let mut checks = Vec::new();
        for r in records {
            match text(r, "kind").as_str() {
                "throughput" => groups
                    .entry((text(r, "phase"), text(r, "system")))
                    .or_default()
                    .push(r),
                "rate" => rate_groups
                    .entry((num(r, "load") as u32, text(r, "system")))
                    .or_default()
                    .push(r),
                "stampede" => stampede
                    .entry(text(r, "system"))
                    .or_default()
                    .push(r.clone()),
                "memory" => memory.push(r.clone()),
                "check" => checks.push(r.clone()),
                _ => {}
            }
        }
        Results {
            meta,
            throughput: groups.into_iter().map(|(k, v)| (k, Cell::of(&v))).collect(),
            rate: rate_groups
                .into_iter()
                .map(|(k, v)| (k, Cell::of(&v)))
                .collect(),
            stampede,
            memory,
            checks,
        }
    }

    fn tp(&self, phase: &str, system: &str) -> Option<&Cell> {
        self.throughput.get(&(phase.to_owned(), system.to_owned()))
    }

    fn markdown(&self) -> String {
        let m = &self.meta;
        let mut out = String::new();
        let _ = writeln!(out, "# csgate benchmark ({} mode)\n", text(m, "mode"));
        let _ = writeln!(
            out,
            "Run {} on commit `{}`{}.\n",
            text(m, "date"),
            text(m, "commit"),
            if text(m, "dirty") == "true" {
                " (with uncommitted changes)"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "## Machine\n");
        let _ = writeln!(out, "| | |\n|---|---|");
        for (label, key) in [
            ("CPUs (`nproc`)", "nproc"),
            ("CPU model", "cpu"),
            ("kernel", "kernel"),
            ("load average before", "loadavg_start"),
            ("load average after", "loadavg_end"),
            ("nginx", "nginx"),
            ("wrk", "wrk"),
            ("rustc", "rustc"),
        ] {
            let _ = writeln!(out, "| {label} | {} |", text(m, key));
        }
        let note = text(m, "note");
        if !note.is_empty() {
            let _ = writeln!(out, "\n**Note:** {note}");
        }
        let _ = writeln!(
            out,
            "\nServer under test on core 0 (`taskset -c 0`), load generator and fake upstream \
             on core 1. csgate runs with `[log] level = \"warn\"` and nginx with \
             `access_log off`, so neither writes a line per request. Systems alternate in \
             rounds (A B C A B C …); every figure is the median over {} rounds of {} s \
             (wrk, {} connections, 1 thread). The hit path cycles through {} URIs ({} contact \
             keys × {} variants: all/active/completed, include flags in canonical and \
             non-canonical spellings, a date window, a type + extension filter); cache TTL {} in both csgate and nginx. `server CPU` \
             is the share of one core the server process(es) used during the round, \
             `CPU-µs/req` the server's own CPU time per request (the figure least disturbed \
             by other load on the machine; lower is better), `others on \
             its core` the share other processes on the machine took from that core: a \
             round is clean when the first is near 100 % and the second near 0 %; with the \
             server well under 100 % and nobody else on the core, the load generator was \
             the limit.\n",
            text(m, "rounds"),
            text(m, "duration_s"),
            text(m, "connections"),
            text(m, "hit_uris"),
            text(m, "keys"),
            text(m, "variants"),
            text(m, "ttl"),
        );

        let _ = writeln!(out, "## Throughput (closed loop, wrk)\n");
        let _ = writeln!(
            out,
            "Paths: `hit` the anonymous lookups above (upstream answer {} bytes); `miss` \
             customer routes, never cached (4 variants × {} customers, upstream answer {} \
             bytes); `miss40` the same routes with a {}-byte answer (50 services); `pass` and \
             `pass40` the same answers on a route csgate passes through untouched (no \
             validation, no post-filter: the miss path's ceiling on this HTTP stack); \
             `deep` a customer answer whose attached data nests 1,000 levels, passed \
             through unchanged. `floor` is, on the hit path, a hyper server answering \
             each URI from a map; on every other path, a hyper server forwarding through \
             hyper-util's pooled client (csgate's client) and doing nothing else: what no \
             gateway built on hyper can beat.\n",
            text(m, "anonymous_body_bytes"),
            text(m, "keys"),
            text(m, "customer_body_bytes"),
            text(m, "large_body_bytes"),
        );
        let _ = writeln!(
            out,
            "| path | system | rps (median) | p50 ms | p99 ms | × nginx | × floor | server CPU-µs/req | CPU-µs × nginx | server CPU | others on its core | upstream req/round | errors | rounds (rps) |"
        );
        let _ = writeln!(
            out,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for phase in PHASES {
            let nginx = self.tp(phase, "nginx").map(|c| c.rps);
            let nginx_us = self.tp(phase, "nginx").map(|c| c.cpu_us);
            let floor = self.tp(phase, "floor").map(|c| c.rps);
            for system in ["csgate", "nginx", "floor"] {
                let Some(c) = self.tp(phase, system) else {
                    continue;
                };
                let ratio = |base: Option<f64>| {
                    base.map_or("–".to_owned(), |b| format!("{:.2}", c.rps / b))
                };
                let _ = writeln!(
                    out,
                    "| {phase} | {system} | {:.0} | {:.2} | {:.2} | {} | {} | {:.1} | {} | {:.0} % | {:.0} % | {:.0} | {:.0} | {} |",
                    c.rps,
                    c.p50_ms,
                    c.p99_ms,
                    ratio(nginx),
                    ratio(floor),
                    c.cpu_us,
                    nginx_us.map_or("–".to_owned(), |n| format!("{:.2}", c.cpu_us / n)),
                    c.cpu * 100.0,
                    c.core_other * 100.0,
                    c.upstream,
                    c.errors,
                    c.rps_all
                        .iter()
                        .map(|r| format!("{r:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let _ = writeln!(
            out,
            "\nwrk's closed-loop percentiles understate queueing (coordinated omission); the \
             constant-rate table below is the latency figure to quote.\n"
        );

        let _ = writeln!(out, "## Latency at a fixed rate (hit path, open loop)\n");
        let _ = writeln!(
            out,
            "Rates are 50 % and 80 % of nginx's median hit-path rps above; `bench-tools \
             loadgen rate`, {} connections, latency from the intended send time when the \
             server made the generator wait.\n",
            text(m, "rate_connections")
        );
        let _ = writeln!(
            out,
            "| load | system | target rps | achieved rps | p50 ms | p99 ms | p99 × nginx | errors |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
        for ((load, system), c) in &self.rate {
            let nginx = self
                .rate
                .get(&(*load, "nginx".to_owned()))
                .map(|n| n.p99_ms);
            let target = self
                .meta
                .get(format!("rate{load}").as_str())
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "| {load} % | {system} | {target:.0} | {:.0} | {:.2} | {:.2} | {} | {:.0} |",
                c.rps,
                c.p50_ms,
                c.p99_ms,
                nginx.map_or("–".into(), |n| format!("{:.2}", c.p99_ms / n)),
                c.errors
            );
        }

        let _ = writeln!(
            out,
            "\n## Stampede (1,000 concurrent cold requests, one key)\n"
        );
        let _ = writeln!(
            out,
            "The upstream answers this key after {} ms so that the requests overlap; it counts \
             the requests it receives for the key.\n",
            text(m, "slow_ms")
        );
        let _ = writeln!(
            out,
            "| system | upstream requests per round | 200s per round | p50 ms | p99 ms | max ms |"
        );
        let _ = writeln!(out, "|---|---|---|---:|---:|---:|");
        for (system, rows) in &self.stampede {
            let list = |k: &str| {
                rows.iter()
                    .map(|r| format!("{:.0}", num(r, k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let med = |k: &str| median(rows.iter().map(|r| num(r, k)).collect()) / 1000.0;
            let _ = writeln!(
                out,
                "| {system} | {} | {} | {:.0} | {:.0} | {:.0} |",
                list("upstream_requests"),
                list("ok"),
                med("p50_us"),
                med("p99_us"),
                med("max_us")
            );
        }

        let _ = writeln!(out, "\n## Memory (csgate RSS with the cache filled)\n");
        let _ = writeln!(
            out,
            "Distinct anonymous keys fetched once each (one upstream fetch, one memoised \
             variant per key; upstream answer {} bytes). RSS from `/proc/PID/status`.\n",
            text(m, "anonymous_body_bytes")
        );
        let _ = writeln!(
            out,
            "| cache.max_bytes | keys fetched | cache entries | cache bytes | VmRSS MiB | VmHWM MiB | RSS − empty-cache RSS MiB | RSS − max_bytes MiB |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut base = f64::NAN;
        for r in &self.memory {
            let max = num(r, "max_bytes");
            let rss = num(r, "rss_kib") * 1024.0;
            if num(r, "keys") == 0.0 {
                base = rss;
            }
            let _ = writeln!(
                out,
                "| {:.0} MiB | {:.0} | {:.0} | {:.1} MiB | {:.1} | {:.1} | {:+.1} | {:+.1} |",
                max / MIB,
                num(r, "keys"),
                num(r, "entries"),
                num(r, "cache_bytes") / MIB,
                rss / MIB,
                num(r, "hwm_kib") / 1024.0,
                (rss - base) / MIB,
                (rss - max) / MIB
            );
        }

        let _ = writeln!(out, "\n## Targets (reported, not asserted)\n");
        let _ = writeln!(out, "| target | measured | verdict |\n|---|---|---|");
        for (name, measured, pass) in self.targets() {
            let verdict = match pass {
                Some(true) => "pass",
                Some(false) => "**miss**",
                None => "not measured",
            };
            let _ = writeln!(out, "| {name} | {measured} | {verdict} |");
        }
        let _ = writeln!(out, "\n![chart](latest.svg)");
        out
    }

    fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let mut t = Vec::new();
        let ratio = |a: Option<&Cell>, b: Option<&Cell>| match (a, b) {
            (Some(a), Some(b)) if b.rps > 0.0 => Some(a.rps / b.rps),
            _ => None,
        };
        let mut push = |name: &str,
                        value: Option<f64>,
                        fmt: &dyn Fn(f64) -> String,
                        ok: &dyn Fn(f64) -> bool| {
            t.push((
                name.to_owned(),
                value.map_or("–".to_owned(), fmt),
                value.map(ok),
            ));
        };
        let x = |v: f64| format!("{v:.2}×");
        push(
            "hit path ≥ 1.5× nginx proxy_cache",
            ratio(self.tp("hit", "csgate"), self.tp("hit", "nginx")),
            &x,
            &|v| v >= 1.5,
        );
        push(
            "hit path ≥ 0.75× floor",
            ratio(self.tp("hit", "csgate"), self.tp("hit", "floor")),
            &x,
            &|v| v >= 0.75,
        );
        push(
            "miss path (2.3 KB answer) ≥ 0.8× nginx proxy_pass",
            ratio(self.tp("miss", "csgate"), self.tp("miss", "nginx")),
            &x,
            &|v| v >= 0.8,
        );
        push(
            "miss path (40 KB answer) ≥ 0.8× nginx proxy_pass",
            ratio(self.tp("miss40", "csgate"), self.tp("miss40", "nginx")),
            &x,
            &|v| v >= 0.8,
        );
        let deep: Vec<&Value> = self
            .checks
            .iter()
            .filter(|c| text(c, "name") == "deep" && text(c, "system") == "csgate")
            .collect();
        push(
            "attached data 1,000 levels deep passes through unchanged",
            deep.first().map(|c| num(c, "status")),
            &|v| format!("status {v:.0}, bytes identical to the upstream's"),
            &|_| deep.iter().all(|c| c["identical"] == Value::Bool(true)),
        );
        let p99 = |system: &str| self.rate.get(&(50, system.to_owned())).map(|c| c.p99_ms);
        let p99_ratio = match (p99("csgate"), p99("nginx")) {
            (Some(c), Some(n)) if n > 0.0 => Some(c / n),
            _ => None,
        };
        push(
            "p99 at 50 % load no worse than nginx",
            p99_ratio,
            &|v| {
                format!(
                    "{:.2} ms vs {:.2} ms ({v:.2}×)",
                    p99("csgate").unwrap_or(f64::NAN),
                    p99("nginx").unwrap_or(f64::NAN)
                )
            },
            &|v| v <= 1.0,
        );
        let stampede_max = self.stampede.get("csgate").map(|rows| {
            rows.iter()
                .map(|r| num(r, "upstream_requests"))
                .fold(f64::NAN, f64::max)
        });
        let stampede_min = self.stampede.get("csgate").map(|rows| {
            rows.iter()
                .map(|r| num(r, "upstream_requests"))
                .fold(f64::NAN, f64::min)
        });
        push(
            "stampede: exactly 1 upstream request",
            stampede_max,
            &|v| format!("{v:.0} (worst round)"),
            &|v| v == 1.0 && stampede_min == Some(1.0),
        );
        let worst = self
            .memory
            .iter()
            .map(|r| (num(r, "rss_kib") * 1024.0 - num(r, "max_bytes")) / MIB)
            .fold(f64::NAN, f64::max);
        push(
            "RSS ≤ max_bytes + 64 MiB",
            (!self.memory.is_empty()).then_some(worst),
            &|v| format!("worst RSS − max_bytes = {v:+.1} MiB"),
            &|v| v <= 64.0,
        );
        t
    }

    fn chart(&self, path: &str) {
        let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
        root.fill(&WHITE).expect("fill");
        let title = format!(
            "csgate vs nginx vs floor — {} mode, {} ({} CPUs)",
            text(&self.meta, "mode"),
            text(&self.meta, "date"),
            text(&self.meta, "nproc")
        );
        let root = root.titled(&title, ("sans-serif", 18)).expect("title");
        let (left, right) = root.split_horizontally(560);

        let color = |system: &str| match system {
            "csgate" => RGBColor(31, 119, 180),
            "nginx" => RGBColor(44, 160, 44),
            _ => RGBColor(150, 150, 150),
        };

        // Left: median throughput, grouped by path.
        let mut bars: Vec<(String, String, f64)> = Vec::new();
        for phase in PHASES {
            for system in ["csgate", "nginx", "floor"] {
                if let Some(c) = self.tp(phase, system) {
                    bars.push((format!("{phase}\n{system}"), system.to_owned(), c.rps));
                }
            }
        }
        let top = bars.iter().map(|b| b.2).fold(1.0, f64::max) * 1.15;
        draw_bars(&left, "median requests/s (wrk)", &bars, top, &color, |v| {
            format!("{v:.0}")
        });

        // Right: p99 latency at fixed rates.
        let mut bars = Vec::new();
        for ((load, system), c) in &self.rate {
            bars.push((format!("{load}%\n{system}"), system.clone(), c.p99_ms));
        }
        let top = bars.iter().map(|b| b.2).fold(0.1, f64::max) * 1.15;
        draw_bars(
            &right,
            "p99 ms at 50 % / 80 % of nginx max (hit path)",
            &bars,
            top,
            &color,
            |v| format!("{v:.2}"),
        );
        root.present().expect("write --svg");
    }
}

fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    bars: &[(String, String, f64)],
    top: f64,
    color: &dyn Fn(&str) -> RGBColor,
    label: impl Fn(f64) -> String,
) {
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)
        .expect("chart");
    let names: Vec<String> = bars.iter().map(|b| b.0.replace('\n', " ")).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < names.len() {
                names[i].clone()
            } else {
                String::new()
            }
        })
        .x_label_style(("sans-serif", 11))
        .y_label_formatter(&|y| {
            if top >= 100.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.1}")
            }
        })
        .draw()
        .expect("mesh");
    for (i, (_, system, value)) in bars.iter().enumerate() {
        if !value.is_finite() {
            continue;
        }
        let x = i as f64;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, *value)],
                color(system).filled(),
            )))
            .expect("bar");
        chart
            .draw_series(std::iter::once(Text::new(
                label(*value),
                (x + 0.2, *value + top * 0.02),
                ("sans-serif", 11),
            )))
            .expect("label");
    }
}
