//! `cargo xtask bench l4`: ambit's tunnel against direct pod-to-pod, in the
//! same topology and the same run. Direct is `n1-plain` → `n2-plain` (not
//! enrolled); the tunnel is `n1-a` → `n2-a` (enrolled, cross-node HBONE).
//! Each figure is the median over alternating runs, and every comparison is
//! a ratio (or difference) to direct measured minutes apart, because this
//! machine's speed drifts. Writes a table into BENCHMARKS.md. `--memory`
//! and `--l7` run the other suites (`cargo xtask bench memory|l7`).
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::unwrap_used, reason = "a benchmark reports to its user")]

mod controller;
mod controller_agents;
mod controller_cluster;
mod controller_report;
mod l7;
mod l7_report;
mod measure;
mod memory;
mod peers;
mod procstat;
mod report;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ambit_tests::netns::Netns;
use ambit_tests::sample::exchange;
use ambit_tests::sample_http::HttpResponder;
use ambit_tests::topology::{APP_PORT, Standard};
use clap::Parser;
use measure::{Latency, Load};
use report::{Pair, Report};

#[derive(Debug, Parser)]
struct Args {
    /// Alternating runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per throughput and load run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Markdown file to write the results into.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
    /// Extra ztunnel flags (repeatable), for tuning experiments.
    #[arg(long = "ztunnel-arg", allow_hyphen_values = true)]
    ztunnel_args: Vec<String>,
    /// Only these measurements (throughput, echo, connect, http); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Instead of the suite, print 64 B echo p50 for these `client:server`
    /// pod pairs (for profiling which hop costs what).
    #[arg(long, value_delimiter = ',')]
    echo_pairs: Vec<String>,
    /// Instead of the L4 suite, measure the agents' memory (`cargo xtask
    /// bench memory`).
    #[arg(long)]
    memory: bool,
    /// Instead of the L4 suite, the waypoint against direct, ztunnels only,
    /// nginx and haproxy (`cargo xtask bench l7`).
    #[arg(long)]
    l7: bool,
    /// Instead of the L4 suite, the controller at scale with simulated
    /// agents (`cargo xtask bench controller`).
    #[arg(long)]
    controller: bool,
    /// The controller suite's cluster sizes, in pods.
    #[arg(long, value_delimiter = ',', default_value = "2000,10000")]
    pods: Vec<usize>,
    /// The controller suite's agent counts.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    agents: Vec<usize>,
    /// One-pod changes between the controller's two memory readings.
    #[arg(long, default_value_t = 1000)]
    memory_changes: usize,
}

impl Args {
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

const HTTP_PORT: u16 = 8081;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    ambit_tests::require_root();
    let args = Args::parse();
    if args.controller {
        let runs = controller::run(&args.pods, &args.agents, args.memory_changes).await?;
        let markdown = controller_report::markdown(&runs, &machine());
        println!("\n{markdown}");
        report::write_section(&args.output, "controller", &markdown)?;
        println!("written to {}", args.output.display());
        return Ok(());
    }
    if args.l7 {
        let markdown = l7::run(args.runs, args.seconds).await?.markdown(&machine());
        println!("\n{markdown}");
        report::write_section(&args.output, "l7", &markdown)?;
        println!("written to {}", args.output.display());
        return Ok(());
    }
    let ztunnel_args: Vec<&str> = args.ztunnel_args.iter().map(String::as_str).collect();
    let bed = Standard::start_with_args(&ztunnel_args).await?;
    let paths = Paths::new(&bed);
    let _http = [
        HttpResponder::start(&bed.cluster.pod("n2-plain").netns, paths.http(false), 1024)?,
        HttpResponder::start(&bed.cluster.pod("n2-a").netns, paths.http(true), 1024)?,
    ];
    // Warm the HBONE pool so per-connection figures measure a warm pool.
    for tunnel in [false, true] {
        let (client, server) = paths.pods(&bed, tunnel);
        exchange(&client.netns, "warmup", server.addr(APP_PORT), 1024, 1024).await?;
    }
    if !args.echo_pairs.is_empty() {
        return print_echo_pairs(&bed, &args.echo_pairs).await;
    }
    let pids = [bed.cluster.ztunnel(0).pid().unwrap_or(0), bed.cluster.ztunnel(1).pid().unwrap_or(0)];
    if args.memory {
        println!("memory…");
        let url = format!("http://{}/", paths.http(true));
        let markdown = memory::measure(&bed, pids, &url, args.seconds).await?.markdown(&machine());
        println!("\n{markdown}");
        report::write_section(&args.output, "memory", &markdown)?;
        println!("written to {}", args.output.display());
        return Ok(());
    }
    let session = Session { args: &args, pids, bed: &bed, paths };
    let mut report = Report::new(args.runs);
    measure_tcp(&session, &mut report).await?;
    measure_http(&session, &mut report).await?;
    report.rss = pids.map(procstat::rss_mib);
    let markdown = report.markdown(&machine());
    println!("\n{markdown}");
    report::write_section(&args.output, "l4", &markdown)?;
    println!("written to {}", args.output.display());
    Ok(())
}

/// `--echo-pairs`: latency along chosen paths, to see which hop costs what.
async fn print_echo_pairs(bed: &Standard, pairs: &[String]) -> anyhow::Result<()> {
    for pair in pairs {
        let (from, to) = pair.split_once(':').unwrap_or((pair, pair));
        let (client, server) = (bed.cluster.pod(from), bed.cluster.pod(to));
        exchange(&client.netns, "warmup", server.addr(APP_PORT), 64, 64).await?;
        let latency = measure::on_own_runtime(measure::echo_latency(&client.netns, server.addr(APP_PORT), 64, 20_000))?;
        let connect = measure::on_own_runtime(measure::connect_latency(&client.netns, server.addr(APP_PORT), 2_000))?;
        println!("{pair}: echo p50 {:?} p99 {:?}; new connection p50 {:?}", latency.p50, latency.p99, connect.p50);
    }
    Ok(())
}

/// Throughput, echo and new connections, as `--only` asks.
async fn measure_tcp(session: &Session<'_>, report: &mut Report) -> anyhow::Result<()> {
    let args = session.args;
    if args.wants("throughput") {
        println!("throughput (iperf3, {} s per run)…", args.seconds);
        report.throughput = session
            .paired(|tunnel| {
                let (client, server) = session.pods(tunnel);
                async move { measure::iperf(&client.netns, &server.netns, IpAddr::V4(server.ip), args.seconds).await }
            })
            .await?;
        println!("  {:?} vs {:?} Gbit/s", report.throughput.direct, report.throughput.tunnel);
    }
    if args.wants("echo") {
        println!("64 B echo latency…");
        report.echo = session.paired_client(|client, dst| measure::echo_latency(client, dst, 64, 20_000)).await?;
    }
    if args.wants("connect") {
        println!("new connections…");
        report.connect = session.paired_client(|client, dst| measure::connect_latency(client, dst, 2_000)).await?;
    }
    Ok(())
}

/// 1 KB HTTP with oha: at a fixed rate, at maximum rate, and a new
/// connection per request.
async fn measure_http(session: &Session<'_>, report: &mut Report) -> anyhow::Result<()> {
    let args = session.args;
    if !args.wants("http") {
        return Ok(());
    }
    let runs: [(&str, &[&str]); 3] = [
        ("fixed", &["-c", "8", "-q", "2000"]),
        ("max", &["-c", "16"]),
        ("new_connections", &["-c", "16", "--disable-keepalive"]),
    ];
    for (name, flags) in runs {
        println!("1 KB HTTP, {name}…");
        let load: Pair<Load> = session
            .paired(|tunnel| {
                let (client, _) = session.pods(tunnel);
                let url = format!("http://{}/", session.paths.http(tunnel));
                async move { measure::oha(&client.netns, &url, args.seconds, flags).await }
            })
            .await?;
        report.http.push((name, load));
    }
    Ok(())
}

/// Which pods each side uses.
struct Paths {
    direct_http: SocketAddr,
    tunnel_http: SocketAddr,
}

impl Paths {
    fn new(bed: &Standard) -> Self {
        Self {
            direct_http: SocketAddr::new(IpAddr::V4(bed.cluster.pod("n2-plain").ip), HTTP_PORT),
            tunnel_http: SocketAddr::new(IpAddr::V4(bed.cluster.pod("n2-a").ip), HTTP_PORT),
        }
    }

    fn pods<'a>(
        &self,
        bed: &'a Standard,
        tunnel: bool,
    ) -> (&'a ambit_tests::cluster::Pod, &'a ambit_tests::cluster::Pod) {
        if tunnel {
            (bed.cluster.pod("n1-a"), bed.cluster.pod("n2-a"))
        } else {
            (bed.cluster.pod("n1-plain"), bed.cluster.pod("n2-plain"))
        }
    }

    fn http(&self, tunnel: bool) -> SocketAddr {
        if tunnel { self.tunnel_http } else { self.direct_http }
    }
}

/// What every paired measurement needs: the options, the agents to sample,
/// and the test bed with its two paths.
struct Session<'a> {
    args: &'a Args,
    pids: [u32; 2],
    bed: &'a Standard,
    paths: Paths,
}

impl<'a> Session<'a> {
    fn pods(&self, tunnel: bool) -> (&'a ambit_tests::cluster::Pod, &'a ambit_tests::cluster::Pod) {
        self.paths.pods(self.bed, tunnel)
    }

    /// Runs `measure` for direct and tunnel, alternating, `runs` times each,
    /// recording the agents' CPU during the tunnel runs.
    async fn paired<T, F, Fut>(&self, measure: F) -> anyhow::Result<Pair<T>>
    where
        F: Fn(bool) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let mut pair = Pair::default();
        for _ in 0..self.args.runs {
            pair.direct.push(measure(false).await?);
            let before = procstat::sample(self.pids);
            pair.tunnel.push(measure(true).await?);
            pair.usage.push(procstat::usage(&before, &procstat::sample(self.pids)));
        }
        Ok(pair)
    }

    /// A latency client (`measure` from a pod's namespace to the server's app
    /// port), on a runtime of its own, paired as [`Session::paired`] does.
    async fn paired_client<M, Fut>(&self, measure: M) -> anyhow::Result<Pair<Latency>>
    where
        M: Fn(&'a Netns, SocketAddr) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Latency>> + Send,
    {
        self.paired(|tunnel| {
            let (client, server) = self.pods(tunnel);
            let run = measure(&client.netns, server.addr(APP_PORT));
            async move { measure::on_own_runtime(run) }
        })
        .await
    }
}

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores, Linux {}", kernel.trim())
}
