//! The measurements: throughput (iperf3), request/response latency (our
//! echo for 64 B on one connection, oha for 1 KB HTTP), new connections.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ambit_tests::netns::Netns;
use ambit_tests::sample::{echo_connect, echo_on};
use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;

#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
}

pub fn percentiles(mut samples: Vec<Duration>) -> Latency {
    samples.sort_unstable();
    let at = |q: f64| samples.get(((samples.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default();
    Latency { p50: at(0.50), p99: at(0.99), p999: at(0.999) }
}

/// Single-stream TCP throughput from `client` to `server_ip`, in Gbit/s.
pub async fn iperf(client: &Netns, server: &Netns, server_ip: std::net::IpAddr, seconds: u32) -> anyhow::Result<f64> {
    let mut server_cmd = Command::from(server.command("iperf3"));
    // Without --forceflush iperf3 block-buffers a piped stdout, and the
    // "listening" line would never arrive.
    server_cmd
        .args(["-s", "-1", "-p", "5201", "--forceflush"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut server_proc = server_cmd.spawn().context("iperf3 server")?;
    let mut lines = BufReader::new(server_proc.stdout.take().context("stdout")?).lines();
    let listening = async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("Server listening") {
                return anyhow::Ok(());
            }
        }
        bail!("iperf3 server exited before listening")
    };
    tokio::time::timeout(Duration::from_secs(20), listening).await.context("iperf3 server did not start")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let client_run = Command::from(client.command("iperf3"))
        .args(["-c", &server_ip.to_string(), "-p", "5201", "-t", &seconds.to_string(), "-J"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(u64::from(seconds) + 30), client_run)
        .await
        .context("iperf3 client hung")??;
    let _ = tokio::time::timeout(Duration::from_secs(10), server_proc.wait()).await;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).context("iperf3 JSON")?;
    let bps = report["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 result")?;
    Ok(bps / 1e9)
}

/// Runs a latency client on a thread and runtime of its own, and waits for
/// it. The bench's main runtime also collects the agents' output: two
/// access lines per tunnelled connection, none in direct runs. Sharing that
/// runtime would put the collection inside the tunnel's measured loop only.
/// The agents still pay for writing their lines, and the collector still
/// competes for the same cores, as a node's log agent does.
pub fn on_own_runtime<T, F>(measure: F) -> anyhow::Result<T>
where
    T: Send,
    F: std::future::Future<Output = anyhow::Result<T>> + Send,
{
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let client =
                scope.spawn(|| tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(measure));
            client.join().map_err(|_| anyhow::anyhow!("the latency client panicked"))?
        })
    })
}

/// Round trips of `size` bytes over one echo connection.
pub async fn echo_latency(client: &Netns, dst: SocketAddr, size: usize, rounds: usize) -> anyhow::Result<Latency> {
    let (_, mut conn) = echo_connect(client, "bench", dst).await?;
    let message = vec![0x5a; size];
    let mut back = vec![0u8; size];
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let started = Instant::now();
        conn.get_mut().write_all(&message).await?;
        conn.read_exact(&mut back).await?;
        if i >= rounds / 10 {
            samples.push(started.elapsed());
        }
    }
    Ok(percentiles(samples))
}

/// A new connection and its first 64-byte round trip, `rounds` times.
pub async fn connect_latency(client: &Netns, dst: SocketAddr, rounds: usize) -> anyhow::Result<Latency> {
    let mut samples = Vec::with_capacity(rounds);
    let message = [0x5au8; 64];
    let mut back = [0u8; 64];
    for i in 0..rounds + rounds / 10 {
        let socket = client.socket(dst)?;
        let started = Instant::now();
        let stream = socket.connect(dst).await?;
        stream.set_nodelay(true)?;
        let (_, mut conn) = echo_on(stream, "bench").await?;
        conn.get_mut().write_all(&message).await?;
        conn.read_exact(&mut back).await?;
        if i >= rounds / 10 {
            samples.push(started.elapsed());
        }
    }
    Ok(percentiles(samples))
}

/// What oha measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    pub rps: f64,
    pub latency: Latency,
}

/// Runs oha from `client` against `url` for `seconds`, with extra flags.
pub async fn oha(client: &Netns, url: &str, seconds: u32, flags: &[&str]) -> anyhow::Result<Load> {
    let output = Command::from(client.command(&oha_path()))
        .args(["-z", &format!("{seconds}s"), "--no-tui", "--output-format", "json"])
        .args(flags)
        .arg(url)
        .output()
        .await
        .context("run oha (installed by `cargo xtask bench`)")?;
    if !output.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).context("oha JSON")?;
    let seconds = |v: &serde_json::Value| Duration::from_secs_f64(v.as_f64().unwrap_or(0.0));
    // Requests in flight when the run's time is up are "aborted due to
    // deadline": an artefact of timed runs, not a failure.
    let errors = report["errorDistribution"]
        .as_object()
        .map_or(0, |e| e.keys().filter(|k| !k.contains("aborted due to deadline")).count());
    if errors > 0 {
        bail!("oha saw errors: {}", report["errorDistribution"]);
    }
    Ok(Load {
        rps: report["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        latency: Latency {
            p50: seconds(&report["latencyPercentiles"]["p50"]),
            p99: seconds(&report["latencyPercentiles"]["p99"]),
            p999: seconds(&report["latencyPercentiles"]["p99.9"]),
        },
    })
}

fn oha_path() -> String {
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_else(|_| "/root".into())));
    format!("{home}/bin/oha")
}
