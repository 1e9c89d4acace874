//! The standard process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_start_time_seconds`),
//! read from `/proc` at each scrape. Where `/proc` cannot be read (not Linux) none is
//! written, rather than a made-up zero.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc` times: the kernel reports them in USER_HZ, which
/// is 100 on every architecture csgate builds for (x86_64, aarch64). Reading
/// `sysconf(_SC_CLK_TCK)` would need `unsafe` or libc.
const USER_HZ: f64 = 100.0;

/// Registered on the metrics registry; reads `/proc` on every scrape.
#[derive(Debug, Default)]
pub(super) struct ProcessCollector;

/// One reading of `/proc`; a field is `None` when its file could not be read or parsed.
#[derive(Debug, Default, PartialEq)]
struct Reading {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    open_fds: Option<i64>,
    start_time_seconds: Option<f64>,
}

impl Reading {
    #[allow(
        clippy::disallowed_methods,
        reason = "procfs reads are memory-backed and never block; done once per scrape"
    )]
    fn now() -> Reading {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let times = stat.as_deref().and_then(StatTimes::parse);
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| boot_time(&text));
        let resident_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|text| resident_bytes(&text));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| i64::try_from(entries.count()).unwrap_or(i64::MAX));
        Reading {
            cpu_seconds: times.map(|t| (t.utime + t.stime) as f64 / USER_HZ),
            resident_bytes,
            open_fds,
            start_time_seconds: times
                .zip(boot)
                .map(|(t, boot)| boot as f64 + t.starttime as f64 / USER_HZ),
        }
    }
}

/// The fields of `/proc/self/stat` that the metrics use, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq)]
struct StatTimes {
    utime: u64,
    stime: u64,
    /// Since boot.
    starttime: u64,
}

impl StatTimes {
    /// `pid (comm) state ppid …`: the command may hold spaces and parentheses, so the
    /// fields are counted after the last `)`. utime and stime are fields 14 and 15,
    /// starttime 22 (proc(5)), that is the 12th, 13th and 20th after the command.
    fn parse(stat: &str) -> Option<StatTimes> {
        let (_, after) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = after.split_ascii_whitespace().collect();
        let field = |n: usize| fields.get(n)?.parse::<u64>().ok();
        Some(StatTimes {
            utime: field(11)?,
            stime: field(12)?,
            starttime: field(19)?,
        })
    }
}

/// `btime` in `/proc/stat`: the boot time, seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// `VmRSS` in `/proc/self/status`, which the kernel gives in kB (KiB).
fn resident_bytes(status: &str) -> Option<i64> {
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: i64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reading = Reading::now();
        if let Some(seconds) = reading.cpu_seconds {
            let metric = ConstCounter::new(seconds);
            metric.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                metric.metric_type(),
            )?)?;
        }
        if let Some(bytes) = reading.resident_bytes {
            let metric = ConstGauge::new(bytes);
            metric.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                metric.metric_type(),
            )?)?;
        }
        if let Some(fds) = reading.open_fds {
            let metric = ConstGauge::new(fds);
            metric.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                metric.metric_type(),
            )?)?;
        }
        if let Some(start) = reading.start_time_seconds {
            let metric = ConstGauge::new(start);
            metric.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                metric.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command() {
        let stat = "4242 (csgate (a) b) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 100000000 5000 18446744073709551615";
        assert_eq!(
            StatTimes::parse(stat),
            Some(StatTimes {
                utime: 250,
                stime: 75,
                starttime: 123456
            })
        );
        assert_eq!(StatTimes::parse("4242 (csgate) S 1"), None);
        assert_eq!(StatTimes::parse("no parenthesis"), None);
    }

    #[test]
    fn boot_time_and_resident_memory_are_read_from_their_lines() {
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1764900000\nprocesses 9\n"),
            Some(1_764_900_000)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
        let status = "Name:\tcsgate\nVmPeak:\t  999 kB\nVmRSS:\t   20480 kB\nThreads:\t9\n";
        assert_eq!(resident_bytes(status), Some(20480 * 1024));
        assert_eq!(resident_bytes("VmRSS:\t12 MB\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read_on_linux() {
        let reading = Reading::now();
        assert!(reading.cpu_seconds.is_some_and(|s| s >= 0.0));
        assert!(reading.resident_bytes.is_some_and(|b| b > 0));
        assert!(reading.open_fds.is_some_and(|n| n >= 3));
        let started = reading.start_time_seconds.expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs_f64();
        assert!(
            started <= now + 1.0 && started > now - 86400.0 * 365.0,
            "{started} vs {now}"
        );
    }
}
