//! Child processes of the test bed, with their output collected so tests
//! can wait for and assert on log lines (access logs in particular).

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

/// A child process of the test bed (an agent, the controller) whose output
/// lines are collected. Killed by pid and reaped on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    logs: Arc<Logs>,
    /// Who it is, for messages: `ztunnel on node1`, `controller`.
    name: String,
}

impl Process {
    /// Spawns `command` with its output collected.
    pub fn spawn(name: &str, mut command: Command) -> anyhow::Result<Self> {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("spawn {name}"))?;
        let (count, _) = watch::channel(0);
        let logs = Arc::new(Logs { lines: Mutex::new(Vec::new()), count, closed: Default::default() });
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(collect(stdout, logs.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(collect(stderr, logs.clone()));
        }
        Ok(Self { child, logs, name: name.to_owned() })
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
        let found = self
            .wait_for_line(what, timeout, |line| serde_json::from_str::<Value>(line).is_ok_and(|r| matches(&r)))
            .await?;
        Ok(serde_json::from_str(&found)?)
    }

    /// Waits until an output line satisfies `matches`, or fails with the log.
    pub async fn wait_for_line(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let mut count = self.logs.count.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.log_lines().into_iter().find(|l| matches(l)) {
                return Ok(found);
            }
            if self.logs.closed.load(std::sync::atomic::Ordering::SeqCst) == 2 {
                bail!("{} exited before logging {what}; log:\n{}", self.name, self.log_lines().join("\n"));
            }
            if tokio::time::timeout_at(deadline, count.changed()).await.is_err() {
                bail!("{} never logged {what} within {timeout:?}; log:\n{}", self.name, self.log_lines().join("\n"));
            }
        }
    }

    /// Sends SIGTERM and waits (up to 30 s) for the process to exit.
    pub async fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("process already exited")?;
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM)?;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!("{} ({pid}) did not exit within 30 s of SIGTERM", self.name),
        }
    }

    /// Kills (SIGKILL) and reaps the process.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.with_context(|| format!("kill {}", self.name))
    }

    /// Sends SIGTERM without waiting: the agent starts draining.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self.child.id().context("process already exited")?;
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM)?;
        Ok(())
    }

    /// Waits (up to `timeout`) for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => bail!("{} did not exit within {timeout:?}", self.name),
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

impl Drop for Process {
    /// Kills by pid and reaps, so no agent outlives its test.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
        }
    }
}
