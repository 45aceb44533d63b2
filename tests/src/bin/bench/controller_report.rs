//! The controller benchmark's BENCHMARKS.md section: one row per cluster
//! size and agent count, then each figure's growth from the smallest
//! cluster to the largest, and the targets.

use std::fmt::Write as _;

use crate::controller::{Figures, Phase, ScaleRun, percentile};

fn cell(figures: &Figures) -> String {
    let p = |q| percentile(&figures.latencies_ms, q);
    format!("{:.1} / {:.1} / {:.1} ms, {:.1} ms CPU", p(0.5), p(0.99), p(1.0), figures.cpu_ms)
}

pub fn markdown(runs: &[ScaleRun], machine: &str) -> String {
    let mut out = String::from("<!-- bench:controller -->\n## Controller at scale\n\n");
    let _ = writeln!(out, "Controller in local-directory mode (release build), simulated agents on its real config");
    let _ = writeln!(out, "stream in one process beside it, {machine}. Latency: from writing the change to each");
    let _ = writeln!(out, "agent holding it, p50 / p99 / max over every agent and repetition; CPU: the controller's");
    let _ = writeln!(out, "own, per change. Agents connect in waves of 100 (they share the machine's cores).\n");
    let _ = writeln!(
        out,
        "| pods | agents | full config to all | one-pod change | Service selector change | 1,000-pod change | full / one-pod delta |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for run in runs {
        for phase in &run.phases {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} s | {} | {} | {} | {:.2} MB / {} B |",
                run.pods,
                phase.agents,
                phase.first_full_s,
                cell(&phase.one_pod),
                cell(&phase.selector),
                cell(&phase.bulk),
                phase.full_bytes as f64 / 1e6,
                phase.one_pod.delta_bytes
            );
        }
    }
    let _ = writeln!(out, "\n| pods | controller start to first config | RSS idle | RSS after one-pod changes |");
    let _ = writeln!(out, "|---|---|---|---|");
    for run in runs {
        let _ = writeln!(
            out,
            "| {} | {:.2} s | {:.0} MiB | {:.0} MiB after {} |",
            run.pods, run.start_s, run.rss_idle_mib, run.rss_after_mib, run.memory_changes
        );
    }
    growth(&mut out, runs);
    out.push_str("<!-- /bench:controller -->\n");
    out
}

/// Each figure at the largest cluster over the smallest, per agent count.
fn growth(out: &mut String, runs: &[ScaleRun]) {
    let (Some(small), Some(large)) = (runs.first(), runs.last()) else { return };
    if small.pods == large.pods {
        return;
    }
    let _ =
        writeln!(out, "\nGrowth from {} to {} pods ({}× the pods):\n", small.pods, large.pods, large.pods / small.pods);
    let _ = writeln!(out, "| agents | one-pod p99 | one-pod CPU | selector CPU | bulk CPU | full config bytes |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (a, b) in small.phases.iter().zip(&large.phases) {
        let ratio = |f: fn(&Phase) -> f64| f(b) / f(a).max(1e-9);
        let _ = writeln!(
            out,
            "| {} | {:.1}× | {:.1}× | {:.1}× | {:.1}× | {:.1}× |",
            a.agents,
            ratio(|p| percentile(&p.one_pod.latencies_ms, 0.99)),
            ratio(|p| p.one_pod.cpu_ms),
            ratio(|p| p.selector.cpu_ms),
            ratio(|p| p.bulk.cpu_ms),
            ratio(|p| p.full_bytes as f64)
        );
    }
}
