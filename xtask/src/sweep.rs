//! Leftovers of test runs that died before their Drop guards ran (SIGKILL,
//! OOM): namespaces and BPF pins named `ambit-<pid>-…` whose pid is gone.
//! Live runs' objects are never touched, so parallel runs are safe.

use std::path::Path;
use std::process::Command;

use anyhow::bail;

use crate::cmd;

const PIN_ROOT: &str = "/sys/fs/bpf/ambit-test";

/// The pid in a name `ambit-<pid>-…`.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix("ambit-")?.split('-').next()?.parse().ok()
}

fn is_dead(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn netns_names() -> anyhow::Result<Vec<String>> {
    let listing = cmd::output(Command::new("ip").args(["netns", "list"]))?;
    Ok(listing.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
}

fn pin_dirs() -> Vec<String> {
    std::fs::read_dir(PIN_ROOT)
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

pub fn stale_test_leftovers() -> anyhow::Result<()> {
    for name in netns_names()? {
        if owner_pid(&name).is_some_and(is_dead) {
            eprintln!("xtask: removing stale namespace {name}");
            // A killed test run leaves its children (agents, etcd, the API
            // server) running inside; they would keep the namespace alive.
            let pids = cmd::output(Command::new("ip").args(["netns", "pids", &name])).unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            cmd::run(Command::new("ip").args(["netns", "del", &name]))?;
        }
    }
    for name in pin_dirs() {
        if owner_pid(&name).is_some_and(is_dead) {
            eprintln!("xtask: removing stale BPF pins {PIN_ROOT}/{name}");
            std::fs::remove_dir_all(Path::new(PIN_ROOT).join(&name))?;
        }
    }
    Ok(())
}

/// After the tests: every namespace and pin of a finished run must be gone
/// (objects of a run still in progress elsewhere are its own business).
pub fn check_nothing_left() -> anyhow::Result<()> {
    let finished = |n: &String| owner_pid(n).is_some_and(is_dead);
    let netns: Vec<String> = netns_names()?.into_iter().filter(finished).collect();
    let pins: Vec<String> = pin_dirs().into_iter().filter(finished).collect();
    // The shared pin root itself, once empty (fails harmlessly while in use).
    let _ = std::fs::remove_dir(PIN_ROOT);
    if !netns.is_empty() || !pins.is_empty() {
        bail!("tests left namespaces {netns:?} and BPF pins {pins:?} behind");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_owner_pid() {
        assert_eq!(super::owner_pid("ambit-1234-7-n1"), Some(1234));
        assert_eq!(super::owner_pid("ambit-x-7"), None);
        assert_eq!(super::owner_pid("other-1234"), None);
    }
}
