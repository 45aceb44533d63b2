//! The L7 benchmark's BENCHMARKS.md section: a table per load, then the
//! issue's targets as ratios within the same run.

use std::fmt::Write as _;

use crate::l7::{LOADS, Path};
use crate::measure::Load;

/// One oha run on one path.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub load: Load,
    /// The proxy's processes (none for direct and ztunnels only), in cores.
    pub proxy_cores: f64,
    /// Both nodes' ztunnels, in cores.
    pub ztunnel_cores: f64,
    pub busy_cores: f64,
    /// The proxy's peak resident memory over the run (summed over its
    /// processes), in MiB.
    pub proxy_peak_mib: f64,
}

#[derive(Debug)]
pub struct L7Report {
    runs: usize,
    /// Per load: its name and, per [`Path::ALL`] index, the runs.
    pub loads: Vec<(&'static str, Vec<Vec<Run>>)>,
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn micros(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn index(path: Path) -> usize {
    Path::ALL.iter().position(|&p| p == path).unwrap_or(0)
}

const MIB_TO_MB: f64 = 1.048_576;

impl L7Report {
    pub fn new(runs: usize) -> Self {
        Self { runs, loads: Vec::new() }
    }

    fn runs(&self, load: &str, path: Path) -> &[Run] {
        self.loads.iter().find(|(name, _)| *name == load).map_or(&[], |(_, by_path)| &by_path[index(path)])
    }

    fn median_of(&self, load: &str, path: Path, f: impl Fn(&Run) -> f64) -> f64 {
        median(self.runs(load, path).iter().map(f))
    }

    /// The median over rounds of `compare(a, b)` for two paths measured in
    /// the same round (minutes apart at most, so the machine's drift cancels).
    fn paired(
        &self,
        load: &str,
        paths: (Path, Path),
        f: impl Fn(&Run) -> f64,
        compare: impl Fn(f64, f64) -> f64,
    ) -> f64 {
        let (a, b) = (self.runs(load, paths.0), self.runs(load, paths.1));
        median(a.iter().zip(b).map(|(a, b)| compare(f(a), f(b))))
    }

    /// The added p99 of `path` over direct, divided by nginx's (or
    /// haproxy's), per round.
    fn added_p99_ratio(&self, load: &str, path: Path, peer: Path) -> (f64, f64, f64) {
        let p99 = |r: &Run| micros(r.load.latency.p99);
        let added = |p: Path| self.paired(load, (Path::Direct, p), p99, |d, t| t - d);
        let ratio = median(
            self.runs(load, Path::Direct)
                .iter()
                .zip(self.runs(load, path))
                .zip(self.runs(load, peer))
                .map(|((d, ours), theirs)| (p99(ours) - p99(d)) / (p99(theirs) - p99(d)).max(1.0)),
        );
        (added(path), added(peer), ratio)
    }

    pub fn markdown(&self, machine: &str) -> String {
        let mut text = format!(
            "<!-- bench:l7 -->\n## L7: the waypoint against nginx and haproxy\n\n\
             `cargo xtask bench l7`, release build, {machine}. 1 KB responses, oha from a pod on node1 with 16 \
             connections, to backends on node2. *direct*: pod to pod, no mesh. *ztunnels only*: both pods enrolled, \
             HBONE between the nodes' ztunnels. *waypoint*: a VirtualService splits the Service 90/10 between two \
             subsets, through both ztunnels and the waypoint (two mutual-TLS legs). *nginx* and *haproxy*: the \
             same 9:1 split by a proxy in a pod on node2, plain HTTP on both legs, two workers each, upstream \
             keep-alive. Each figure is the median of {runs} rounds; in each round every path runs back to back. \
             Fixed rates correct for coordinated omission. CPU is each process's own time in cores (nginx: master \
             and workers); *busy* is the whole machine's, oha included. Memory is the proxy's peak resident set \
             during the run.\n\n",
            runs = self.runs
        );
        for (name, _) in &self.loads {
            text.push_str(&self.load_table(name));
        }
        text.push_str(&self.targets());
        text.push_str("<!-- /bench:l7 -->\n");
        text
    }

    fn load_table(&self, load: &str) -> String {
        let mut text = format!(
            "### {load}\n\n| path | req/s | p50 | p99 | p99.9 | proxy CPU | proxy CPU per 1,000 req/s | proxy peak RSS \
             | ztunnels CPU | busy cores |\n|---|---|---|---|---|---|---|---|---|---|\n"
        );
        for path in Path::ALL {
            let m = |f: &dyn Fn(&Run) -> f64| self.median_of(load, path, f);
            let has_proxy = !matches!(path, Path::Direct | Path::Ztunnels);
            let proxy = |value: String| if has_proxy { value } else { "–".to_owned() };
            let _ = writeln!(
                text,
                "| {} | {:.0} | {:.0} µs | {:.0} µs | {:.0} µs | {} | {} | {} | {:.2} | {:.2} |",
                path.title(),
                m(&|r| r.load.rps),
                m(&|r| micros(r.load.latency.p50)),
                m(&|r| micros(r.load.latency.p99)),
                m(&|r| micros(r.load.latency.p999)),
                proxy(format!("{:.3}", m(&|r| r.proxy_cores))),
                proxy(format!("{:.3}", m(&|r| r.proxy_cores / (r.load.rps / 1000.0).max(1e-9)))),
                proxy(format!("{:.1} MiB", m(&|r| r.proxy_peak_mib))),
                m(&|r| r.ztunnel_cores),
                m(&|r| r.busy_cores),
            );
        }
        text.push('\n');
        text
    }

    fn targets(&self) -> String {
        let (fixed, max) = (LOADS[0].0, LOADS[2].0);
        let cpu = self.median_of(fixed, Path::Waypoint, |r| r.proxy_cores / (r.load.rps / 1000.0).max(1e-9));
        let memory = self.median_of(fixed, Path::Waypoint, |r| r.proxy_peak_mib) * MIB_TO_MB;
        let (ours, nginx, p99_ratio) = self.added_p99_ratio(fixed, Path::Waypoint, Path::Nginx);
        let (_, haproxy, p99_vs_haproxy) = self.added_p99_ratio(fixed, Path::Waypoint, Path::Haproxy);
        let rps =
            |peer| self.paired(max, (peer, Path::Waypoint), |r| r.load.rps, |theirs, ours| ours / theirs.max(1e-9));
        let (rps_nginx, rps_haproxy) = (rps(Path::Nginx), rps(Path::Haproxy));
        let met = |ok: bool| if ok { "yes" } else { "**no**" };
        let mut text = String::from("### Targets\n\n| target | measured | met |\n|---|---|---|\n");
        let _ = writeln!(
            text,
            "| waypoint CPU ≤ 0.10 vCPU per 1,000 req/s (Istio's Envoy waypoint: 0.25) | {cpu:.3} vCPU at 1,000 req/s | {} |",
            met(cpu <= 0.10)
        );
        let _ = writeln!(
            text,
            "| waypoint memory ≤ 30 MB at 1,000 req/s (Envoy: 60 MB) | {memory:.1} MB peak | {} |",
            met(memory <= 30.0)
        );
        let _ = writeln!(
            text,
            "| added p99 at 1,000 req/s ≤ 0.7× nginx's | waypoint +{ours:.0} µs, nginx +{nginx:.0} µs: {p99_ratio:.2}× \
             (haproxy +{haproxy:.0} µs: {p99_vs_haproxy:.2}×) | {} |",
            met(p99_ratio <= 0.7)
        );
        let _ = writeln!(
            text,
            "| maximum req/s ≥ nginx's | {rps_nginx:.2}× nginx's ({rps_haproxy:.2}× haproxy's) | {} |",
            met(rps_nginx >= 1.0)
        );
        text.push('\n');
        text
    }
}
