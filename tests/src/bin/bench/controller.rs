//! `cargo xtask bench controller`: the real controller (release build, in
//! local-directory mode, on loopback) with simulated agents on its real
//! config stream, at several cluster sizes and agent counts. For each it
//! measures the time to a full config at every agent; for a one-pod
//! change, a Service selector change and a 1,000-pod bulk change, the time
//! from writing the change to every agent holding it and the controller's
//! CPU for it; the controller's resident memory idle and after many
//! changes; and the bytes of a full config and of a delta.

use std::path::Path;
use std::time::{Duration, Instant};

use ambit_tests::process::Process;
use ambit_tests::ztunnel::binary;
use anyhow::Context as _;
use mesh::control::{ControlClient, ztunnel_identity};
use mesh::tls::TrustBundle;
use rand::Rng as _;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::controller_agents::{self, Collector};
use crate::controller_cluster::{BenchCluster, NODES, node_credentials};
use crate::procstat::{agent_ticks, rss_mib, ticks_per_second};

/// A change's deadline to reach every agent.
const CHANGE_DEADLINE: Duration = Duration::from_secs(60);
const ONE_POD_CHANGES: usize = 50;
const SELECTOR_CHANGES: usize = 10;
const BULK_CHANGES: usize = 3;
const BULK_PODS: usize = 1_000;
/// Agents connecting at once.
const AGENT_WAVE: usize = 100;

/// One kind of change, measured over several repetitions.
#[derive(Debug, Default)]
pub struct Figures {
    /// Change to agent, every agent of every repetition, in ms.
    pub latencies_ms: Vec<f64>,
    /// The controller's CPU per change, in ms.
    pub cpu_ms: f64,
    /// Bytes of one repetition's delta line(s), as one agent got them.
    pub delta_bytes: usize,
}

#[derive(Debug)]
pub struct Phase {
    pub agents: usize,
    /// From the agents starting to connect to the last holding the config.
    pub first_full_s: f64,
    pub full_bytes: usize,
    pub one_pod: Figures,
    pub selector: Figures,
    pub bulk: Figures,
}

#[derive(Debug)]
pub struct ScaleRun {
    pub pods: usize,
    /// From spawning the controller to its first config published.
    pub start_s: f64,
    pub rss_idle_mib: f64,
    pub rss_after_mib: f64,
    pub memory_changes: usize,
    pub phases: Vec<Phase>,
}

pub async fn run(pod_scales: &[usize], agent_counts: &[usize], memory_changes: usize) -> anyhow::Result<Vec<ScaleRun>> {
    let mut runs = Vec::new();
    for &pods in pod_scales {
        runs.push(run_scale(pods, agent_counts, memory_changes).await?);
    }
    Ok(runs)
}

async fn run_scale(pods: usize, agent_counts: &[usize], memory_changes: usize) -> anyhow::Result<ScaleRun> {
    let dir = tempfile::Builder::new().prefix("ambit-bench-controller-").tempdir()?;
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects)?;
    let mut cluster = BenchCluster::write(&objects, pods)?;
    let (nodes, listing) = node_credentials();
    std::fs::write(dir.path().join("node-credentials.yaml"), listing)?;
    println!("controller at {pods} pods: starting");
    let spawned = Instant::now();
    let (controller, addr) = spawn_controller(dir.path()).await?;
    let start_s = spawned.elapsed().as_secs_f64();
    let pid = controller.pid().context("the controller has no pid")?;
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem"))?;
    let trust = TrustBundle::from_pem("cluster.local", &root)?;
    let clients: Vec<ControlClient> = nodes
        .iter()
        .map(|(node, token)| ControlClient::new(addr.clone(), trust.clone(), token.clone(), node.clone()))
        .collect();
    let cert = clients[0].certificate(&ztunnel_identity("cluster.local"), Duration::from_secs(7200)).await?;
    let cert = std::sync::Arc::new(cert);
    let mut run = ScaleRun { pods, start_s, rss_idle_mib: 0.0, rss_after_mib: 0.0, memory_changes, phases: Vec::new() };
    let mut marks = 0u64;
    for (index, &agents) in agent_counts.iter().enumerate() {
        let (tx, rx) = mpsc::channel(4096);
        let mut collector = Collector::new(rx);
        let mut tasks = JoinSet::new();
        let connecting = Instant::now();
        let mut last = connecting;
        // In waves: the simulated agents share this machine's two cores
        // with the controller, and a thousand parsing a full config at once
        // starve their own connections' keep-alive pings.
        while collector.agents < agents {
            let (first, wave) = (collector.agents, AGENT_WAVE.min(agents - collector.agents));
            collector.agents += wave;
            controller_agents::start(&mut tasks, &clients, &cert, first, wave, &tx);
            last = collector.wait_full(first, Duration::from_secs(300)).await?;
        }
        let first_full_s = last.duration_since(connecting).as_secs_f64();
        println!("  {agents} agents hold the full config after {first_full_s:.2} s");
        if index == 0 {
            run.rss_idle_mib = rss_mib(pid).0;
            let mut rng = rand::rng();
            for change in 1..=memory_changes {
                marks += 1;
                cluster.mark_pod(rng.random_range(0..pods), marks)?;
                collector.wait_mark(marks, 1, CHANGE_DEADLINE).await?;
                if change % 250 == 0 {
                    println!("    RSS {:.0} MiB after {change} changes", rss_mib(pid).0);
                }
            }
            run.rss_after_mib = rss_mib(pid).0;
            println!(
                "  RSS {:.0} MiB idle, {:.0} MiB after {memory_changes} changes",
                run.rss_idle_mib, run.rss_after_mib
            );
        }
        let full_bytes = collector.full_bytes;
        let mut measure =
            async |count: usize, change: &mut dyn FnMut(&mut BenchCluster, u64) -> anyhow::Result<usize>| {
                measure_changes(&mut collector, &mut cluster, &mut marks, pid, count, change).await
            };
        let one_pod = measure(ONE_POD_CHANGES, &mut |c, mark| {
            c.mark_pod(rand::rng().random_range(0..c.pods()), mark).map(|()| 1)
        })
        .await?;
        let selector = measure(SELECTOR_CHANGES, &mut |c, mark| {
            c.toggle_selector(rand::rng().random_range(0..crate::controller_cluster::SERVICES), mark).map(|()| 1)
        })
        .await?;
        let bulk_nodes = (BULK_PODS * NODES).div_ceil(pods).min(NODES);
        let bulk = measure(BULK_CHANGES, &mut |c, mark| c.mark_nodes(bulk_nodes, mark)).await?;
        println!(
            "  {agents} agents: one pod p99 {:.1} ms, selector p99 {:.1} ms, bulk p99 {:.1} ms",
            percentile(&one_pod.latencies_ms, 0.99),
            percentile(&selector.latencies_ms, 0.99),
            percentile(&bulk.latencies_ms, 0.99)
        );
        run.phases.push(Phase { agents, first_full_s, full_bytes, one_pod, selector, bulk });
        tasks.abort_all();
        drop(tx);
    }
    drop(controller);
    Ok(run)
}

/// Makes `count` changes, one at a time, each waiting until every agent
/// holds it; `change` returns how many marked objects it touched.
async fn measure_changes(
    collector: &mut Collector,
    cluster: &mut BenchCluster,
    marks: &mut u64,
    pid: u32,
    count: usize,
    change: &mut dyn FnMut(&mut BenchCluster, u64) -> anyhow::Result<usize>,
) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    let ticks = agent_ticks(pid);
    for _ in 0..count {
        *marks += 1;
        let written = Instant::now();
        let expected = change(cluster, *marks)?;
        let arrivals = collector.wait_mark(*marks, expected, CHANGE_DEADLINE).await?;
        figures.latencies_ms.extend(arrivals.iter().map(|at| at.duration_since(written).as_secs_f64() * 1e3));
        figures.delta_bytes = collector.delta_bytes;
    }
    figures.cpu_ms = (agent_ticks(pid) - ticks) as f64 / ticks_per_second() * 1e3 / count as f64;
    Ok(figures)
}

/// Starts the controller on loopback and waits for its first published
/// config; returns it and its control address.
async fn spawn_controller(dir: &Path) -> anyhow::Result<(Process, String)> {
    let port = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
    let (control, metrics) = (port()?, port()?);
    let mut command = Command::new(binary("controller")?);
    command.arg("--config-dir").arg(dir.join("objects")).arg("--ca-dir").arg(dir.join("ca"));
    command.arg("--node-credentials").arg(dir.join("node-credentials.yaml"));
    command.args(["--listen", &control.to_string(), "--metrics-addr", &metrics.to_string(), "--log-format", "json"]);
    let process = Process::spawn("controller", command)?;
    let published = |r: &serde_json::Value| r["message"] == "config published";
    process.wait_for_log("its first config", Duration::from_secs(120), published).await?;
    Ok((process, control.to_string()))
}

pub fn percentile(values: &[f64], quantile: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}
