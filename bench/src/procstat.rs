//! CPU time and resident memory of a process and its descendants, from /proc (nginx and haproxy
//! fork workers; pqmesh and stunnel are one process, so their tree is themselves).

use std::collections::HashMap;

/// Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ: 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// `root` and every process below it.
pub fn tree(root: u32) -> Vec<u32> {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // Field 4 of stat is the parent (index 1 after the name).
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                parents.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(children) = parents.get(&out[i]) {
            out.extend(children);
        }
        i += 1;
    }
    out
}

/// CPU seconds (user + system) used so far by the tree under `root`.
pub fn cpu_seconds(root: u32) -> f64 {
    tree(root)
        .into_iter()
        .filter_map(stat_fields)
        // utime and stime are fields 14 and 15 of stat: indexes 11 and 12 after the name.
        .map(|f| {
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (t(11) + t(12)) / TICKS_PER_SECOND
        })
        .sum()
}

/// Resident set size in MiB of the tree under `root` (VmRSS summed; shared pages count per process).
pub fn rss_mib(root: u32) -> f64 {
    tree(root)
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .sum::<f64>()
        / 1024.0
}

/// CPU used by several process trees over a stretch of time.
pub struct CpuMeter {
    roots: Vec<u32>,
    start: Vec<f64>,
    t0: std::time::Instant,
}

impl CpuMeter {
    pub fn start(roots: &[u32]) -> Self {
        Self {
            roots: roots.to_vec(),
            start: roots.iter().map(|&p| cpu_seconds(p)).collect(),
            t0: std::time::Instant::now(),
        }
    }
    /// Average cores (vCPU) each tree used since `start`.
    pub fn vcpu(&self) -> Vec<f64> {
        let wall = self.t0.elapsed().as_secs_f64();
        self.roots
            .iter()
            .zip(&self.start)
            .map(|(&p, s)| (cpu_seconds(p) - s) / wall)
            .collect()
    }
}
