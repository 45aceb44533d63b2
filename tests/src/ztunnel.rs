//! A ztunnel process in a node's namespace, as a DaemonSet pod with
//! hostNetwork would run. Its JSON logs are collected ([`Process`]).

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::Command;

use crate::http;
use crate::netns::Netns;
use crate::process::Process;

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

/// A workspace binary, or an error saying how to build it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let binary = bin_dir().join(name);
    if !binary.exists() {
        bail!("{} not found; build it first (`cargo build --bins`)", binary.display());
    }
    Ok(binary)
}

/// Where an agent's config and certificates come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Static mode: a config file, and the CA's key to sign with.
    File { config: PathBuf, ca_key: PathBuf },
    /// The controller at `addr`, with this node's bootstrap credential.
    Controller { addr: std::net::SocketAddr, credential: PathBuf },
}

/// How to start an agent.
#[derive(Clone, Debug)]
pub struct Launch {
    pub node: String,
    pub source: Source,
    pub pin_dir: PathBuf,
    /// The agent's state for the CNI plugin (socket, enrolled namespaces).
    pub cni_state_dir: PathBuf,
    pub ca_cert: PathBuf,
    pub extra_args: Vec<String>,
    /// Runs the agent with this open-file limit (soft and hard, so it
    /// cannot raise it), to run it out of file descriptors.
    pub fd_limit: Option<u64>,
}

#[derive(Debug)]
pub struct Ztunnel(Process);

impl Deref for Ztunnel {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.0
    }
}

impl DerefMut for Ztunnel {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.0
    }
}

impl Ztunnel {
    pub fn spawn(netns: &Netns, launch: &Launch) -> anyhow::Result<Self> {
        let binary = binary("ztunnel")?;
        let binary = binary.to_str().context("path")?;
        let mut command = match launch.fd_limit {
            None => Command::from(netns.command(binary)),
            Some(limit) => {
                let mut limited = netns.command("prlimit");
                limited.arg(format!("--nofile={limit}:{limit}")).arg("--").arg(binary);
                Command::from(limited)
            }
        };
        command.args(["--node", &launch.node]).arg("--bpf-pin-dir").arg(&launch.pin_dir);
        command.arg("--cni-state-dir").arg(&launch.cni_state_dir);
        command.arg("--ca-cert").arg(&launch.ca_cert);
        match &launch.source {
            Source::File { config, ca_key } => command.arg("--config").arg(config).arg("--ca-key").arg(ca_key),
            Source::Controller { addr, credential } => {
                command.arg("--controller").arg(addr.to_string()).arg("--node-credential").arg(credential)
            }
        };
        command.args(["--log-format", "json", "--drain-grace", "2s"]).args(&launch.extra_args);
        Ok(Self(Process::spawn(&format!("ztunnel on {}", launch.node), command)?))
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
    pub async fn stop(self) -> anyhow::Result<std::process::ExitStatus> {
        self.0.stop().await
    }
}
