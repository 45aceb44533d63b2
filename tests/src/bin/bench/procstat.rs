//! CPU and memory from /proc: an agent's own CPU time and resident size,
//! and how busy the whole machine was (eBPF and softirq work shows only
//! there, not in any process's CPU time).

use std::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    at: Instant,
    /// Per agent: utime + stime, in clock ticks.
    agent_ticks: [u64; 2],
    /// Machine-wide: (busy, total) ticks over all CPUs.
    machine: (u64, u64),
}

/// CPU use over an interval.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Each agent's CPU, in cores (1.0 = one core busy).
    pub agent_cores: [f64; 2],
    /// The machine's busy cores.
    pub busy_cores: f64,
}

pub fn ticks_per_second() -> f64 {
    100.0 // USER_HZ is 100 on Linux for /proc accounting.
}

/// A process's own CPU time (utime + stime), in clock ticks.
pub fn agent_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command: utime is 14th, stime 15th overall.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// The machine's (busy, total) ticks over all CPUs.
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

pub fn sample(pids: [u32; 2]) -> Sample {
    Sample { at: Instant::now(), agent_ticks: pids.map(agent_ticks), machine: machine_ticks() }
}

pub fn usage(from: &Sample, to: &Sample) -> Usage {
    let seconds = to.at.duration_since(from.at).as_secs_f64().max(1e-9);
    let agent = |i: usize| (to.agent_ticks[i] - from.agent_ticks[i]) as f64 / ticks_per_second() / seconds;
    let (busy, total) = (to.machine.0 - from.machine.0, to.machine.1 - from.machine.1);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    Usage { agent_cores: [agent(0), agent(1)], busy_cores: busy as f64 / total.max(1) as f64 * cpus }
}

/// Resident memory and its peak, in MiB.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the kernel's peak-RSS mark (VmHWM) of `pid` to its current RSS,
/// so a later peak is the peak of what ran in between.
pub fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// `pid` and its children (nginx's master and workers), from /proc.
pub fn with_children(pid: u32) -> Vec<u32> {
    let parent_of = |child: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok())
    };
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| parent_of(child) == Some(pid));
    std::iter::once(pid).chain(children).collect()
}
