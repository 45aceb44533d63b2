//! A ztunnel process in a node's namespace, as a DaemonSet pod with
//! hostNetwork would run. Its JSON logs are collected so tests can wait for
//! and assert on lines (access logs in particular). Killed on drop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::http;
use crate::netns::Netns;

/// Where the workspace's binaries are: next to this test executable's
/// directory (`target/<profile>/deps/..`), unless `AMBIT_BIN_DIR` says.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AMBIT_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    if dir.ends_with("deps") { dir.parent().unwrap_or(dir).to_owned() } else { dir.to_owned() }
}

/// Collected log lines, with a counter that wakes waiters.
#[derive(Debug)]
struct Logs {
    lines: Mutex<Vec<String>>,
    count: watch::Sender<usize>,
    /// Output streams that reached EOF: 2 means the process is gone.
    closed: std::sync::atomic::AtomicUsize,
}

impl Logs {
    fn push(&self, line: String) {
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(line);
            self.count.send_replace(lines.len());
        }
    }

    fn snapshot(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

#[derive(Debug)]
pub struct Ztunnel {
    child: Child,
    logs: Arc<Logs>,
    node: String,
}

/// How to start an agent.
#[derive(Clone, Debug)]
pub struct Launch {
    pub node: String,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub extra_args: Vec<String>,
}

impl Ztunnel {
    pub fn spawn(netns: &Netns, launch: &Launch) -> anyhow::Result<Self> {
        let binary = bin_dir().join("ztunnel");
        if !binary.exists() {
            bail!("{} not found; build it first (`cargo build -p ztunnel`)", binary.display());
        }
        let mut command = Command::from(netns.command(binary.to_str().context("path")?));
        command
            .args(["--node", &launch.node, "--config"])
            .arg(&launch.config)
            .arg("--bpf-pin-dir")
            .arg(&launch.pin_dir)
            .arg("--ca-cert")
            .arg(&launch.ca_cert)
            .arg("--ca-key")
            .arg(&launch.ca_key)
            .args(["--log-format", "json", "--drain-grace", "2s"])
            .args(&launch.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().context("spawn ztunnel")?;
        let (count, _) = watch::channel(0);
        let logs = Arc::new(Logs { lines: Mutex::new(Vec::new()), count, closed: Default::default() });
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(collect(stdout, logs.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(collect(stderr, logs.clone()));
        }
        Ok(Self { child, logs, node: launch.node.clone() })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// All log lines so far, raw.
    pub fn log_lines(&self) -> Vec<String> {
        self.logs.snapshot()
    }

    /// Log lines as JSON objects (non-JSON lines are skipped).
    pub fn log_records(&self) -> Vec<Value> {
        self.log_lines().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Access-log records (target `access`).
    pub fn access_logs(&self) -> Vec<Value> {
        self.log_records().into_iter().filter(|r| r["target"] == "access").collect()
    }

    /// Waits until a log record satisfies `matches`, or fails with the log.
    pub async fn wait_for_log(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let mut count = self.logs.count.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.log_records().into_iter().find(|r| matches(r)) {
                return Ok(found);
            }
            if self.logs.closed.load(std::sync::atomic::Ordering::SeqCst) == 2 {
                bail!("ztunnel on {} exited before logging {what}; log:\n{}", self.node, self.log_lines().join("\n"));
            }
            if tokio::time::timeout_at(deadline, count.changed()).await.is_err() {
                bail!(
                    "ztunnel on {} never logged {what} within {timeout:?}; log:\n{}",
                    self.node,
                    self.log_lines().join("\n")
                );
            }
        }
    }

    /// Waits for the agent to report ready, then checks the readiness
    /// endpoint agrees.
    pub async fn wait_ready(&self, netns: &Netns) -> anyhow::Result<()> {
        self.wait_for_log("ready", Duration::from_secs(30), |r| r["message"] == "ready").await?;
        let (status, body) = http::get(netns, "127.0.0.1:15021".parse()?, "/healthz/ready").await?;
        if status != 200 {
            bail!("ztunnel logged ready but /healthz/ready says {status}: {body}");
        }
        Ok(())
    }

    /// Sends SIGTERM and waits (up to 30 s) for the process to exit.
    pub async fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("ztunnel already exited")?;
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM)?;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!("ztunnel {pid} did not exit within 30 s of SIGTERM"),
        }
    }

    /// Sends SIGTERM without waiting: the agent starts draining.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self.child.id().context("ztunnel already exited")?;
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM)?;
        Ok(())
    }

    /// Waits (up to `timeout`) for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => bail!("ztunnel did not exit within {timeout:?}"),
        };
        // Its last words may still be in the pipes: wait for both to end.
        let mut count = self.logs.count.subscribe();
        while self.logs.closed.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            tokio::time::timeout(timeout, count.changed()).await.context("output pipes stayed open")??;
        }
        Ok(status)
    }
}

async fn collect(stream: impl AsyncRead + Unpin, logs: Arc<Logs>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        logs.push(line);
    }
    logs.closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    logs.count.send_modify(|_| {});
}

impl Drop for Ztunnel {
    /// Kills by pid and reaps, so no agent outlives its test.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
        }
    }
}
