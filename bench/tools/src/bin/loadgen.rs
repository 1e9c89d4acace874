//! Load generator for the parts wrk cannot do. Prints one JSON object on stdout.
//!
//! - `loadgen warm --target URL (--urls FILE | --pattern P --from A --to B) [--concurrency N]`
//!   fetches every URI once (`{i}` in the pattern is replaced by the index) and counts
//!   the non-200 answers.
//! - `loadgen rate --target URL --urls FILE --rate R --duration S [--connections C]`
//!   sends at a constant rate, wrk2-style: connection k sends its n-th request at
//!   `start + (n*C + k)/R`, cycling through the URIs. Latency is measured from the
//!   intended send time when the previous answer on that connection came back late (the
//!   server made us wait: coordinated omission is counted), and from the actual send time
//!   when we were early and slept (tokio's 1 ms timer granularity is ours, not the
//!   server's).
//! - `loadgen burst --target URL --path P --connections N` opens N connections, waits
//!   until all are established, then sends one request on each at the same instant.
//!
//! Every mode takes `--header "Name: value"` (repeatable).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csgate_bench_tools::{authority, connect, http_get, read_lines, Args};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let args = Args::parse();
    let mode = args.positional.first().cloned().unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let out = runtime.block_on(async {
        match mode.as_str() {
            "warm" => warm(&args).await,
            "rate" => rate(&args).await,
            "burst" => burst(&args).await,
            _ => {
                eprintln!("usage: loadgen warm|rate|burst --target URL ...");
                std::process::exit(2)
            }
        }
    });
    println!("{out}");
}

fn uris(args: &Args) -> Vec<String> {
    if let Some(file) = args.get("urls") {
        return read_lines(file);
    }
    let pattern = args.req("pattern");
    let from: usize = args.num("from", 0);
    let to: usize = args.num("to", 0);
    (from..to)
        .map(|i| pattern.replace("{i}", &i.to_string()))
        .collect()
}

/// Percentile `p` (0..=100) of sorted microseconds.
fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut lat: Vec<u32>) -> serde_json::Value {
    lat.sort_unstable();
    json!({
        "p50_us": pct(&lat, 50.0),
        "p90_us": pct(&lat, 90.0),
        "p99_us": pct(&lat, 99.0),
        "p999_us": pct(&lat, 99.9),
        "max_us": lat.last().copied().unwrap_or(0),
    })
}

async fn warm(args: &Args) -> serde_json::Value {
    let target = authority(args.req("target"));
    let headers = Arc::new(args.headers());
    let uris = Arc::new(uris(args));
    let concurrency: usize = args.num("concurrency", 16);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (target, headers, uris, next) =
            (target.clone(), headers.clone(), uris.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut bad, mut errors) = (0u64, 0u64, 0u64);
            let mut sender = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(uri) = uris.get(i) else { break };
                if sender.is_none() {
                    sender = connect(&target).await.ok();
                }
                let Some(s) = sender.as_mut() else {
                    errors += 1;
                    continue;
                };
                match http_get(s, &target, uri, &headers, TIMEOUT).await {
                    Ok((200, _)) => ok += 1,
                    Ok((status, _)) => {
                        bad += 1;
                        if bad <= 3 {
                            eprintln!("warm: {uri}: status {status}");
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("warm: {uri}: {e}");
                        }
                        sender = None;
                    }
                }
            }
            (ok, bad, errors)
        }));
    }
    let (mut ok, mut bad, mut errors) = (0, 0, 0);
    for task in tasks {
        let (o, b, e) = task.await.expect("warm task");
        ok += o;
        bad += b;
        errors += e;
    }
    json!({"mode":"warm","ok":ok,"non200":bad,"errors":errors,
           "secs":started.elapsed().as_secs_f64()})
}

async fn rate(args: &Args) -> serde_json::Value {
    let target = authority(args.req("target"));
    let headers = Arc::new(args.headers());
    let uris = Arc::new(uris(args));
    let rate: f64 = args.num("rate", 1000.0);
    let duration = Duration::from_secs_f64(args.num("duration", 10.0));
    let connections: usize = args.num("connections", 64);
    let next = Arc::new(AtomicUsize::new(0));
    let period = Duration::from_secs_f64(connections as f64 / rate);
    let mut senders = Vec::new();
    for _ in 0..connections {
        senders.push(connect(&target).await.expect("connect --target"));
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = start + duration;
    let mut tasks = Vec::new();
    for (k, mut sender) in senders.into_iter().enumerate() {
        let (target, headers, uris, next) =
            (target.clone(), headers.clone(), uris.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut bad, mut errors) = (0u64, 0u64);
            let mut intended = start + Duration::from_secs_f64(k as f64 / rate);
            while intended < end {
                let late = tokio::time::Instant::now() > intended;
                if !late {
                    tokio::time::sleep_until(intended).await;
                }
                let sent = tokio::time::Instant::now();
                let from = if late { intended } else { sent };
                let i = next.fetch_add(1, Ordering::Relaxed) % uris.len();
                match http_get(&mut sender, &target, &uris[i], &headers, TIMEOUT).await {
                    Ok((200, _)) => {}
                    Ok(_) => bad += 1,
                    Err(_) => {
                        errors += 1;
                        match connect(&target).await {
                            Ok(s) => sender = s,
                            Err(_) => break,
                        }
                    }
                }
                let micros = from.elapsed().as_micros();
                lat.push(u32::try_from(micros).unwrap_or(u32::MAX));
                intended += period;
            }
            (lat, bad, errors)
        }));
    }
    let mut lat = Vec::new();
    let (mut bad, mut errors) = (0, 0);
    for task in tasks {
        let (l, b, e) = task.await.expect("rate task");
        lat.extend(l);
        bad += b;
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let count = lat.len();
    let mut out = summary(lat);
    out["mode"] = json!("rate");
    out["target_rps"] = json!(rate);
    out["rps"] = json!(count as f64 / elapsed);
    out["requests"] = json!(count);
    out["non200"] = json!(bad);
    out["errors"] = json!(errors);
    out
}

async fn burst(args: &Args) -> serde_json::Value {
    let target = authority(args.req("target"));
    let headers = Arc::new(args.headers());
    let path = Arc::new(args.req("path").to_owned());
    let connections: usize = args.num("connections", 1000);
    let mut senders = Vec::with_capacity(connections);
    // Connect in waves: a SYN flood of 1,000 would test the listen backlog instead.
    for chunk in (0..connections).collect::<Vec<_>>().chunks(100) {
        let wave = chunk.iter().map(|_| {
            let target = target.clone();
            async move { connect(&target).await }
        });
        for result in futures_join(wave).await {
            senders.push(result.expect("connect --target"));
        }
    }
    let (go_tx, go_rx) = tokio::sync::watch::channel(None::<tokio::time::Instant>);
    let mut tasks = Vec::new();
    for mut sender in senders {
        let (target, headers, path) = (target.clone(), headers.clone(), path.clone());
        let mut go = go_rx.clone();
        tasks.push(tokio::spawn(async move {
            let fired = *go
                .wait_for(Option::is_some)
                .await
                .expect("go signal")
                .as_ref()
                .expect("set");
            let result = http_get(&mut sender, &target, &path, &headers, TIMEOUT).await;
            let micros = u32::try_from(fired.elapsed().as_micros()).unwrap_or(u32::MAX);
            (result.map(|(status, _)| status), micros)
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = go_tx.send(Some(tokio::time::Instant::now()));
    let (mut ok, mut bad, mut errors) = (0u64, 0u64, 0u64);
    let mut lat = Vec::new();
    for task in tasks {
        let (result, micros) = task.await.expect("burst task");
        match result {
            Ok(200) => ok += 1,
            Ok(_) => bad += 1,
            Err(_) => errors += 1,
        }
        lat.push(micros);
    }
    let mut out = summary(lat);
    out["mode"] = json!("burst");
    out["ok"] = json!(ok);
    out["non200"] = json!(bad);
    out["errors"] = json!(errors);
    out
}

/// Awaits every future of an iterator concurrently (a dependency-free `join_all`).
async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("joined task"));
    }
    out
}
