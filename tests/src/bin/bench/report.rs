//! Turning runs into the BENCHMARKS.md table: medians, ratios to direct,
//! and the targets from the issue beside them.

use std::path::Path;
use std::time::Duration;

use crate::measure::{Latency, Load};
use crate::procstat::Usage;

/// Runs of one measurement, direct and through the tunnel.
#[derive(Debug)]
pub struct Pair<T> {
    pub direct: Vec<T>,
    pub tunnel: Vec<T>,
    /// Agents' CPU and machine busy cores during each tunnel run.
    pub usage: Vec<Usage>,
}

impl<T> Default for Pair<T> {
    fn default() -> Self {
        Self { direct: Vec::new(), tunnel: Vec::new(), usage: Vec::new() }
    }
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn ratio(direct: f64, tunnel: f64) -> f64 {
    tunnel / direct.max(1e-9)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl<T> Pair<T> {
    /// Not measured in this run (`--only` left it out).
    fn is_empty(&self) -> bool {
        self.direct.is_empty()
    }

    fn medians(&self, f: impl Fn(&T) -> f64) -> (f64, f64) {
        (median(self.direct.iter().map(&f)), median(self.tunnel.iter().map(&f)))
    }

    /// The median, over runs, of `compare(direct, tunnel)` within each run.
    /// Each run's two sides are measured back to back, so comparing inside a
    /// run cancels most of the machine's drift between runs.
    fn paired_median(&self, f: impl Fn(&T) -> f64, compare: impl Fn(f64, f64) -> f64) -> f64 {
        median(self.direct.iter().zip(&self.tunnel).map(|(d, t)| compare(f(d), f(t))))
    }

    fn cpu(&self) -> String {
        let a = median(self.usage.iter().map(|u| u.agent_cores[0]));
        let b = median(self.usage.iter().map(|u| u.agent_cores[1]));
        let busy = median(self.usage.iter().map(|u| u.busy_cores));
        format!("{a:.2} + {b:.2} | {busy:.2}")
    }
}

#[derive(Debug, Default)]
pub struct Report {
    runs: usize,
    pub throughput: Pair<f64>,
    pub echo: Pair<Latency>,
    pub connect: Pair<Latency>,
    pub http: Vec<(&'static str, Pair<Load>)>,
    /// Per agent: (RSS, peak RSS) in MiB at the end.
    pub rss: [(f64, f64); 2],
}

impl Report {
    pub fn new(runs: usize) -> Self {
        Self { runs, ..Default::default() }
    }

    pub fn markdown(&self, machine: &str) -> String {
        let mut rows = Vec::new();
        if !self.throughput.is_empty() {
            rows.push(self.throughput_row());
        }
        if !self.echo.is_empty() {
            rows.extend(latency_rows(
                &self.echo,
                "64 B echo, one connection",
                ("≤ +35 µs (0.7 × 50; 0.7 × 86 = 60)", 35.0),
            ));
        }
        if !self.connect.is_empty() {
            rows.extend(latency_rows(
                &self.connect,
                "New connection + first 64 B round trip (warm pool)",
                ("≤ +301 µs (0.7 × 430)", 301.0),
            ));
        }
        rows.extend(self.http.iter().map(|(name, pair)| http_row(name, pair)));
        let [(r1, _), (r2, _)] = self.rss;
        format!(
            "<!-- bench:l4 -->\n## L4: ztunnel vs direct\n\n\
             `cargo xtask bench l4`, release build, {machine}. Direct is pod to pod across nodes without the mesh;\n\
             \"through ambit\" is the same pair of nodes with both pods enrolled (HBONE over mTLS). Each figure is the\n\
             median of {runs} alternating runs. Ratios and differences are the median of each run's tunnel against the\n\
             direct run just before it.\n\
             CPU columns: each node's ztunnel in cores during the tunnel runs, and the machine's busy cores (which\n\
             include eBPF and softirq work that no process is charged for).\n\n\
             | measure | direct | through ambit | vs direct | target | met | ztunnel CPU (node1 + node2) \\| busy cores |\n\
             |---|---|---|---|---|---|---|\n{}\n\n\
             ztunnel resident memory at the end: node1 {r1:.1} MiB, node2 {r2:.1} MiB (peaks under each load: `cargo xtask bench memory`).\n\
             <!-- /bench:l4 -->\n",
            rows.join("\n"),
            runs = self.runs,
        )
    }

    fn throughput_row(&self) -> String {
        let (d, t) = self.throughput.medians(|g| *g);
        let ratio = self.throughput.paired_median(|g| *g, ratio);
        row(
            "Single-stream throughput (iperf3)",
            &format!("{d:.2} Gbit/s"),
            &format!("{t:.2} Gbit/s"),
            &format!("{ratio:.2}×"),
            "≥ 0.38×",
            ratio >= 0.38,
            &self.throughput.cpu(),
        )
    }
}

/// p50 (scored against `target`: its text and the most added µs it allows)
/// and p99 rows of a latency measurement.
fn latency_rows(pair: &Pair<Latency>, title: &str, target: (&str, f64)) -> [String; 2] {
    [("p50", true), ("p99", false)].map(|(name, scored)| {
        let pick = |l: &Latency| micros(if scored { l.p50 } else { l.p99 });
        let (d, t) = pair.medians(pick);
        let added = pair.paired_median(pick, |d, t| t - d);
        let (text, met) = if scored { (target.0, added <= target.1) } else { ("", true) };
        row(
            &format!("{title}, {name}"),
            &format!("{d:.0} µs"),
            &format!("{t:.0} µs"),
            &format!("+{added:.0} µs"),
            text,
            met,
            &pair.cpu(),
        )
    })
}

fn http_row(name: &str, pair: &Pair<Load>) -> String {
    let title = match name {
        "fixed" => "1 KB HTTP at 2,000 req/s (8 connections)",
        "max" => "1 KB HTTP at maximum rate (16 connections)",
        _ => "1 KB HTTP, a new connection per request (16 at a time)",
    };
    let (drps, trps) = pair.medians(|l| l.rps);
    let (d50, t50) = pair.medians(|l| micros(l.latency.p50));
    let (d99, t99) = pair.medians(|l| micros(l.latency.p99));
    row(
        title,
        &format!("{drps:.0} req/s, p50 {d50:.0} µs, p99 {d99:.0} µs"),
        &format!("{trps:.0} req/s, p50 {t50:.0} µs, p99 {t99:.0} µs"),
        &format!(
            "{:.2}× req/s, +{:.0} µs p50",
            pair.paired_median(|l| l.rps, ratio),
            pair.paired_median(|l| micros(l.latency.p50), |d, t| t - d)
        ),
        "",
        true,
        &pair.cpu(),
    )
}

fn row(measure: &str, direct: &str, tunnel: &str, versus: &str, target: &str, met: bool, cpu: &str) -> String {
    let met = if target.is_empty() {
        ""
    } else if met {
        "yes"
    } else {
        "**no**"
    };
    format!("| {measure} | {direct} | {tunnel} | {versus} | {target} | {met} | {cpu} |")
}

/// Replaces the `bench:l4` section of `path` (or appends it).
pub fn write_section(path: &Path, name: &str, section: &str) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\n".to_owned());
    let (open, close) = (format!("<!-- bench:{name} -->"), format!("<!-- /bench:{name} -->"));
    let updated = match (existing.find(&open), existing.find(&close)) {
        (Some(start), Some(end)) => {
            let end = end + (close.len() + 1).min(existing.len() - end);
            format!("{}{section}{}", &existing[..start], &existing[end..])
        }
        _ => format!("{}\n{section}", existing.trim_end()),
    };
    std::fs::write(path, updated)?;
    Ok(())
}
