//! `process_*` metrics (the names every Prometheus client library uses, unprefixed, so stock
//! dashboards and `up`-style alerts work) and `pqmesh_build_info`, read from `/proc/self` at
//! scrape time. Read by hand instead of the prometheus crate's `process` feature: that pulls a
//! whole procfs crate in for six numbers.

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Clock ticks per second of `/proc/<pid>/stat` times: the kernel reports them in USER_HZ,
/// which is 100 on every Linux architecture (it is ABI, unlike the kernel's internal HZ).
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says about this process; `None` fields could not be read.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub open_fds: Option<i64>,
    pub max_fds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub threads: Option<i64>,
}

/// Fields of `/proc/<pid>/stat` after the command name (which may hold spaces and parentheses,
/// so the split is at the last `)`): index 0 is field 3 (`state`) of proc(5).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// Parses `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits` and `/proc/stat`'s
/// `btime` (the texts are passed in, so tests feed fixed ones).
pub fn parse(stat: &str, status: &str, limits: &str, proc_stat: &str) -> ProcessStats {
    let fields = stat_fields(stat).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu_seconds = match (field(14), field(15)) {
        (Some(user), Some(system)) => Some((user + system) / USER_HZ),
        _ => None,
    };
    let boot_time = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    let start_time_seconds = match (boot_time, field(22)) {
        (Some(boot), Some(ticks)) => Some(boot + ticks / USER_HZ),
        _ => None,
    };
    let resident_bytes = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb * 1024.0);
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|soft| soft.parse::<f64>().ok());
    ProcessStats {
        cpu_seconds,
        resident_bytes,
        virtual_bytes: field(23),
        open_fds: None,
        max_fds,
        start_time_seconds,
        threads: field(20).map(|t| t as i64),
    }
}

/// This process's figures now (all `None` off Linux).
pub fn read() -> ProcessStats {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut stats = parse(
        &read("/proc/self/stat"),
        &read("/proc/self/status"),
        &read("/proc/self/limits"),
        &read("/proc/stat"),
    );
    // The directory handle that lists /proc/self/fd is one of the entries: not counted.
    stats.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as i64 - 1);
    stats
}

/// The `process_*` families, unprefixed: appended to a registry's output at scrape time.
pub fn gather() -> Vec<MetricFamily> {
    let s = read();
    let mut families = Vec::new();
    let mut gauge = |name: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            if let Ok(g) = Gauge::new(name, help) {
                g.set(v);
                families.extend(g.collect());
            }
        }
    };
    gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        s.resident_bytes,
    );
    gauge(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes",
        s.virtual_bytes,
    );
    gauge(
        "process_open_fds",
        "Number of open file descriptors",
        s.open_fds.map(|v| v as f64),
    );
    gauge(
        "process_max_fds",
        "Maximum number of open file descriptors (soft limit)",
        s.max_fds,
    );
    gauge(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch in seconds",
        s.start_time_seconds,
    );
    gauge(
        "process_threads",
        "Number of OS threads in the process",
        s.threads.map(|v| v as f64),
    );
    if let Some(cpu) = s.cpu_seconds {
        // A counter by type: Prometheus's rate() must treat it as one.
        if let Ok(c) = prometheus::Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds",
        ) {
            c.inc_by(cpu);
            families.extend(c.collect());
        }
    }
    families
}

/// Registers `build_info{component, version}` = 1 on `registry` (which adds its prefix).
pub fn register_build_info(registry: &Registry, component: &str) -> Result<(), prometheus::Error> {
    let info = IntGaugeVec::new(
        Opts::new(
            "build_info",
            "1, labelled with the component and the version this binary was built from",
        ),
        &["component", "version"],
    )?;
    info.with_label_values(&[component, env!("CARGO_PKG_VERSION")])
        .set(1);
    registry.register(Box::new(info))
}

/// Creates the series of every `(label values)` combination at zero, so `rate()` and absence
/// alerts see them before the first event.
pub fn zero_counters(vec: &IntCounterVec, label_sets: &[&[&str]]) {
    for labels in label_sets {
        vec.with_label_values(labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (pqmesh (side) car) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 123400 987654321 2048 18446744073709551615";
    const STATUS: &str = "Name:\tpqmesh\nVmPeak:\t  20000 kB\nVmRSS:\t    9000 kB\nThreads:\t7\n";
    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
    const PROC_STAT: &str = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";

    #[test]
    fn proc_texts_are_parsed_field_by_field() {
        let s = parse(STAT, STATUS, LIMITS, PROC_STAT);
        assert_eq!(s.cpu_seconds, Some(3.0), "(250 + 50) ticks at 100 Hz");
        assert_eq!(s.threads, Some(7));
        assert_eq!(s.start_time_seconds, Some(1_700_000_000.0 + 1234.0));
        assert_eq!(s.virtual_bytes, Some(987_654_321.0));
        assert_eq!(s.resident_bytes, Some(9000.0 * 1024.0));
        assert_eq!(s.max_fds, Some(1024.0));
    }

    #[test]
    fn unreadable_or_garbled_proc_texts_give_no_values() {
        assert_eq!(parse("", "", "", ""), ProcessStats::default());
        let s = parse(
            "1 (x) S 1 2",
            "VmRSS: lots",
            "Max open files unlimited",
            "btime x",
        );
        assert_eq!(s, ProcessStats::default());
    }

    #[test]
    fn this_process_reports_every_family() {
        let names: Vec<String> = gather().iter().map(|f| f.name().to_owned()).collect();
        for want in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        let s = read();
        assert!(
            s.open_fds.is_some_and(|n| n >= 3),
            "stdin/out/err at least: {s:?}"
        );
        assert!(s.resident_bytes.is_some_and(|b| b > 1_000_000.0), "{s:?}");
    }
}
