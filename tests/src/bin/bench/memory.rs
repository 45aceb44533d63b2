//! `cargo xtask bench memory`: the agents' resident memory, idle, holding
//! many open tunnels, and under a bulk transfer, in a test bed of its own.
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

#[derive(Debug, Default)]
pub struct MemoryReport {
    /// Per agent, MiB.
    pub idle: [f64; 2],
    pub with_connections: [f64; 2],
    pub bulk_peak: [f64; 2],
}

/// Resets the kernel's peak-RSS mark of `pid` (writing 5 to clear_refs).
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn rss(pids: [u32; 2]) -> [f64; 2] {
    pids.map(|pid| procstat::rss_mib(pid).0)
}

pub async fn measure(bed: &Standard, pids: [u32; 2], seconds: u32) -> anyhow::Result<MemoryReport> {
    let mut report = MemoryReport::default();
    // Let start-up garbage settle (the allocator returns it after its decay time).
    tokio::time::sleep(Duration::from_secs(12)).await;
    report.idle = rss(pids);
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

    tokio::time::sleep(Duration::from_secs(12)).await;
    pids.iter().for_each(|&pid| reset_peak(pid));
    measure::iperf(&client.netns, &server.netns, IpAddr::V4(server.ip), seconds).await?;
    report.bulk_peak = pids.map(|pid| procstat::rss_mib(pid).1);
    println!("  bulk transfer peak: {:.1} / {:.1} MiB", report.bulk_peak[0], report.bulk_peak[1]);
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
             (each node's agent holds all of them); and the peak (VmHWM, reset first) during a single-stream \
             iperf3 transfer through the tunnel. Istio's ztunnel, side by side on this machine kind: 17–20 MiB \
             idle, up to 32 MiB under load.\n"
        );
        text.push_str("| | node1 | node2 | target |\n|---|---|---|---|\n");
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
        text.push_str("<!-- /bench:memory -->\n");
        text
    }
}
