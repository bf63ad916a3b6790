//! Results: medians over repeats, the Markdown tables of docs/benchmarks.md and SVG plots drawn
//! here (no plotting dependency).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One repeat of the proxy scenarios for one system ("direct", "pqmesh", "nginx", ...).
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub achieved_rps: f64,
    pub errors: u64,
    /// (quantile, ms) for the latency plot.
    pub curve: Vec<(f64, f64)>,
    pub cpu_client: f64,
    pub cpu_server: f64,
    pub rss_idle_client: f64,
    pub rss_idle_server: f64,
    pub rss_load_client: f64,
    pub rss_load_server: f64,
    pub bulk_mib_s: f64,
    pub hs_full: f64,
    pub hs_resumed: f64,
    pub hs_resumed_fraction: f64,
    pub hs_full_p99_ms: f64,
    pub conn_per_request: f64,
    /// Closed loop, keep-alive: answers per second at saturation.
    pub sat_rps: f64,
    /// RSS of each side after this repeat's load runs (latency, saturation, bulk, handshakes).
    pub rss_after_client: f64,
    pub rss_after_server: f64,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Median of one field over the repeats of a system.
pub fn med(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    median(runs.iter().map(f).collect())
}

/// Added latency per repeat (pair minus the direct run of the same repeat), then the median.
pub fn added(runs: &[Run], direct: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    median(runs.iter().zip(direct).map(|(r, d)| f(r) - f(d)).collect())
}

pub struct IdleConnections {
    pub connections: usize,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub open_seconds: f64,
}

#[derive(Clone, Debug)]
pub struct Issuance {
    pub alg: String,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

#[derive(Clone, Debug)]
pub struct Fanout {
    pub sidecars: usize,
    pub connect_ms: f64,
    pub write_ms: f64,
    pub reload_ms: f64,
}

pub struct Results {
    pub systems: BTreeMap<String, Vec<Run>>,
    pub idle: Vec<(String, IdleConnections)>,
    pub issuance: Vec<Vec<Issuance>>,
    pub fanout: Vec<Vec<Fanout>>,
    /// Per repeat: in-memory full mutual handshakes per second with X25519MLKEM768 and with
    /// X25519 (`pqcost`).
    pub pq_cost: Vec<(f64, f64)>,
    pub rate: u32,
    /// Connections of the closed-loop saturation runs.
    pub sat_conns: u32,
    pub seconds: u64,
    pub repeats: usize,
    /// (edge system, outside key exchange negotiated), when the gateway scenario ran.
    pub edge_groups: Vec<(String, String)>,
}

fn fmt(v: f64, digits: usize) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.digits$}")
    }
}

/// An SVG bar chart: groups of bars (one per series) with value labels.
pub fn bar_chart(
    title: &str,
    unit: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let (w, h, left, bottom, top) = (760.0, 360.0, 70.0, 50.0, 40.0);
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let colors = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099"];
    let plot_w = w - left - 20.0;
    let plot_h = h - bottom - top;
    let group_w = plot_w / groups.len().max(1) as f64;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        w / 2.0
    );
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        let y = top + plot_h - plot_h * i as f64 / 4.0;
        let _ = writeln!(s, "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>", w - 20.0, left - 5.0, y + 4.0, fmt(v, if max < 10.0 { 2 } else { 0 }));
    }
    let _ = writeln!(s, "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{unit}</text>", top + plot_h / 2.0, top + plot_h / 2.0);
    for (g, name) in groups.iter().enumerate() {
        let gx = left + g as f64 * group_w + group_w * 0.1;
        for (k, (_, values)) in series.iter().enumerate() {
            let v = values.get(g).copied().unwrap_or(f64::NAN);
            if !v.is_finite() {
                continue;
            }
            let bh = plot_h * v / max;
            let x = gx + k as f64 * bar_w;
            let y = top + plot_h - bh;
            let _ = writeln!(s, "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>", bar_w * 0.95, colors[k % colors.len()], x + bar_w / 2.0, y - 3.0, fmt(v, if v < 10.0 { 2 } else { 0 }));
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{name}</text>",
            gx + group_w * 0.4,
            h - bottom + 18.0
        );
    }
    for (k, (label, _)) in series.iter().enumerate() {
        let x = left + 10.0 + k as f64 * 170.0;
        let _ = writeln!(s, "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{label}</text>", h - 20.0, colors[k % colors.len()], x + 16.0, h - 10.0);
    }
    s + "</svg>\n"
}

/// An SVG latency-by-percentile plot (x: percentile on a 1/(1−q) log scale, y: ms, log scale).
pub fn latency_chart(title: &str, curves: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h, left, bottom, top) = (760.0, 380.0, 70.0, 60.0, 40.0);
    let plot_w = w - left - 150.0;
    let plot_h = h - bottom - top;
    let xs = |q: f64| (1.0 / (1.0 - q.min(0.99999))).log10() / 5.0 * plot_w + left;
    let all: Vec<f64> = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all
        .iter()
        .copied()
        .fold(f64::MAX, f64::min)
        .max(0.001)
        .log10()
        .floor();
    let hi = all
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .max(0.01)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let ys = |ms: f64| top + plot_h - (ms.max(1e-3).log10() - lo) / (hi - lo) * plot_h;
    let colors = ["#000000", "#3366cc", "#dc3912", "#ff9900", "#109618"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        w / 2.0
    );
    let mut d = lo as i32;
    while d as f64 <= hi {
        let v = 10f64.powi(d);
        let y = ys(v);
        let _ = writeln!(s, "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v} ms</text>", left + plot_w, left - 5.0, y + 4.0);
        d += 1;
    }
    for (q, label) in [
        (0.0, "p0"),
        (0.9, "p90"),
        (0.99, "p99"),
        (0.999, "p99.9"),
        (0.9999, "p99.99"),
    ] {
        let x = xs(q);
        let _ = writeln!(s, "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>", top + plot_h, top + plot_h + 16.0);
    }
    for (k, (name, curve)) in curves.iter().enumerate() {
        let points: Vec<String> = curve
            .iter()
            .map(|(q, ms)| format!("{:.1},{:.1}", xs(*q), ys(*ms)))
            .collect();
        let c = colors[k % colors.len()];
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        let y = top + 16.0 * k as f64 + 10.0;
        let _ = writeln!(s, "<line x1=\"{}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"{c}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{name}</text>", left + plot_w + 15.0, left + plot_w + 35.0, left + plot_w + 40.0, y + 4.0);
    }
    s + "</svg>\n"
}

pub fn quantile_points() -> Vec<f64> {
    let mut q = Vec::new();
    for base in [0.0, 0.9, 0.99, 0.999, 0.9999] {
        for i in 0..10 {
            let step = (1.0 - base) / 10.0;
            q.push(base + step * i as f64);
        }
    }
    q.push(0.99999);
    q
}

impl Results {
    pub fn peers(&self) -> Vec<String> {
        self.systems
            .keys()
            .filter(|k| *k != "direct" && !k.starts_with("pqmesh") && *k != crate::peers::FLOOR)
            // The edge scenario's nginx proxies are compared with the gateway only.
            .filter(|k| !k.starts_with("edge-"))
            .cloned()
            .collect()
    }
}
