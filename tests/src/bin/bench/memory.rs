//! `cargo xtask bench memory`: the agents' resident memory, idle, holding
//! many open tunnels, and at its peak under a bulk transfer and under the
//! L4 suite's HTTP loads.
//! Istio's ztunnel, measured side by side on this machine kind by the
//! issue's author, held 17–20 MiB idle and up to 32 MiB under load; those
//! are the figures to meet.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use ambit_tests::sample::{echo_on, echo_roundtrip};
use ambit_tests::topology::{APP_PORT, Standard};

use crate::{measure, procstat};

/// Tunnels held open at once for the "many connections" figure.
pub const CONNECTIONS: usize = 1000;

/// Per agent, MiB.
#[derive(Debug, Default)]
pub struct MemoryReport {
    /// The peak from start-up to settling: aya parses the kernel's BTF then.
    pub startup_peak: [f64; 2],
    pub idle: [f64; 2],
    pub with_connections: [f64; 2],
    pub bulk_peak: [f64; 2],
    /// Per oha load (as the L4 suite runs them): its name and the peaks.
    pub http_peaks: Vec<(&'static str, [f64; 2])>,
}

/// The L4 suite's HTTP loads that can hold much at once.
const HTTP_LOADS: [(&str, &[&str]); 2] = [
    ("1 KB HTTP at maximum rate (16 connections)", &["-c", "16"]),
    ("1 KB HTTP, a new connection per request (16 at a time)", &["-c", "16", "--disable-keepalive"]),
];

/// Runs `load` and returns each agent's peak RSS during it, measured from
/// a settled agent (the peak mark is reset to the current RSS first).
async fn peak_during<F: std::future::Future<Output = anyhow::Result<T>>, T>(
    pids: [u32; 2],
    load: F,
) -> anyhow::Result<[f64; 2]> {
    settle().await;
    pids.iter().for_each(|&pid| procstat::reset_peak(pid));
    load.await?;
    Ok(pids.map(|pid| procstat::rss_mib(pid).1))
}

/// Lets freed memory go back to the kernel (jemalloc's purge runs 2 s after
/// a free; this is a measurement pause, not a synchronisation).
async fn settle() {
    tokio::time::sleep(SETTLE).await;
}

const SETTLE: Duration = Duration::from_secs(5);

fn rss(pids: [u32; 2]) -> [f64; 2] {
    pids.map(|pid| procstat::rss_mib(pid).0)
}

pub async fn measure(bed: &Standard, pids: [u32; 2], url: &str, seconds: u32) -> anyhow::Result<MemoryReport> {
    let mut report = MemoryReport::default();
    // Start-up's garbage is larger than any load's: give it a few rounds.
    for _ in 0..3 {
        settle().await;
    }
    report.idle = rss(pids);
    report.startup_peak = pids.map(|pid| procstat::rss_mib(pid).1);
    println!("  idle: {:.1} / {:.1} MiB", report.idle[0], report.idle[1]);

    let (client, server) = (bed.cluster.pod("n1-a"), bed.cluster.pod("n2-a"));
    let mut held = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let stream = client.netns.connect(server.addr(APP_PORT)).await?;
        let (_, mut conn) = echo_on(stream, &format!("held-{i}")).await?;
        echo_roundtrip(&mut conn, b"hello").await?;
        held.push(conn);
    }
    report.with_connections = rss(pids);
    println!("  {CONNECTIONS} open tunnels: {:.1} / {:.1} MiB", report.with_connections[0], report.with_connections[1]);
    drop(held);

    let bulk = measure::iperf(&client.netns, &server.netns, IpAddr::V4(server.ip), seconds);
    report.bulk_peak = peak_during(pids, bulk).await?;
    println!("  bulk transfer peak: {:.1} / {:.1} MiB", report.bulk_peak[0], report.bulk_peak[1]);
    for (name, flags) in HTTP_LOADS {
        let peak = peak_during(pids, measure::oha(&client.netns, url, seconds, flags)).await?;
        println!("  {name}, peak: {:.1} / {:.1} MiB", peak[0], peak[1]);
        report.http_peaks.push((name, peak));
    }
    Ok(report)
}

impl MemoryReport {
    pub fn markdown(&self, machine: &str) -> String {
        let per_connection = |i: usize| (self.with_connections[i] - self.idle[i]) * 1024.0 / CONNECTIONS as f64;
        let mut text = String::from("<!-- bench:memory -->\n## Memory: ztunnel's resident set\n\n");
        let _ = writeln!(
            text,
            "`cargo xtask bench memory`, release build, {machine}. Resident memory (VmRSS) of each node's agent: \
             idle after start-up settles; with {CONNECTIONS} tunnels open from a pod on node1 to one on node2 \
             (each node's agent holds all of them); and the peak (VmHWM, reset once the agent has settled) during \
             a single-stream iperf3 transfer and during the L4 suite's HTTP loads through the tunnel. The start-up \
             peak is aya parsing the kernel's BTF, freed at once. Istio's ztunnel, side by side on this machine kind: 17–20 MiB \
             idle, up to 32 MiB under load.\n"
        );
        text.push_str("| | node1 | node2 | target |\n|---|---|---|---|\n");
        let _ = writeln!(
            text,
            "| start-up, peak (transient) | {:.1} MiB | {:.1} MiB | |",
            self.startup_peak[0], self.startup_peak[1]
        );
        let _ = writeln!(text, "| idle | {:.1} MiB | {:.1} MiB | ≤ 20 MiB |", self.idle[0], self.idle[1]);
        let _ = writeln!(
            text,
            "| {CONNECTIONS} open tunnels | {:.1} MiB ({:.1} KiB each) | {:.1} MiB ({:.1} KiB each) | ≤ 32 MiB |",
            self.with_connections[0],
            per_connection(0),
            self.with_connections[1],
            per_connection(1)
        );
        let _ = writeln!(
            text,
            "| bulk transfer, peak | {:.1} MiB | {:.1} MiB | ≤ 32 MiB |",
            self.bulk_peak[0], self.bulk_peak[1]
        );
        for (name, peak) in &self.http_peaks {
            let _ = writeln!(text, "| {name}, peak | {:.1} MiB | {:.1} MiB | ≤ 32 MiB |", peak[0], peak[1]);
        }
        text.push_str("<!-- /bench:memory -->\n");
        text
    }
}
