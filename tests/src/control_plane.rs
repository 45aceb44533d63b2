//! The controller in local-directory mode, running in its own namespace on
//! the underlay (`10.200.0.2`), as a control-plane node would. It reads the
//! cluster's objects from a directory the test bed writes, and each node's
//! agent proves itself with a bootstrap credential issued here.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::Command;

use crate::netns::Netns;
use crate::process::Process;
use crate::ztunnel::binary;

pub const CONTROLLER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
pub const CONTROL_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(CONTROLLER_IP), 15012);
pub const METRICS_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(CONTROLLER_IP), 15014);

#[derive(Debug)]
pub struct ControlPlane {
    // Field order is drop order: the process before its namespace.
    process: Option<Process>,
    pub netns: Netns,
    /// Where the objects are (the controller's `--config-dir`).
    pub objects_dir: PathBuf,
    ca_dir: PathBuf,
    credentials_file: PathBuf,
    /// Per node, the file holding its bootstrap credential.
    node_credentials: BTreeMap<String, PathBuf>,
}

/// 192 random bits, hex: not guessable by other tests or processes.
fn random_token() -> String {
    (0..3).map(|_| format!("{:016x}", rand::random::<u64>())).collect()
}

impl ControlPlane {
    /// Sets up the namespace, directories and credentials for `nodes`;
    /// `ca_cert`/`ca_key` are the cluster's root (the controller's CA).
    pub fn new(
        netns: Netns,
        dir: &Path,
        nodes: &[String],
        ca: &mesh::ca::CertificateAuthority,
    ) -> anyhow::Result<Self> {
        let objects_dir = dir.join("objects");
        let ca_dir = dir.join("controller-ca");
        std::fs::create_dir_all(&objects_dir)?;
        std::fs::create_dir_all(&ca_dir)?;
        ca.write_files(&ca_dir.join("root-cert.pem"), &ca_dir.join("root-key.pem"))?;
        let mut listing = String::new();
        let mut node_credentials = BTreeMap::new();
        for node in nodes {
            let token = random_token();
            listing.push_str(&format!("{node}: {token}\n"));
            let path = dir.join(format!("credential-{node}"));
            std::fs::write(&path, &token)?;
            node_credentials.insert(node.clone(), path);
        }
        let credentials_file = dir.join("node-credentials.yaml");
        std::fs::write(&credentials_file, listing)?;
        Ok(Self { process: None, netns, objects_dir, ca_dir, credentials_file, node_credentials })
    }

    pub fn credential(&self, node: &str) -> anyhow::Result<PathBuf> {
        self.node_credentials.get(node).cloned().with_context(|| format!("no credential for {node}"))
    }

    /// Starts the controller and waits until it serves config.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if self.process.is_some() {
            bail!("the controller is already running");
        }
        let binary = binary("controller")?;
        let mut command = Command::from(self.netns.command(binary.to_str().context("path")?));
        command.arg("--config-dir").arg(&self.objects_dir).arg("--ca-dir").arg(&self.ca_dir);
        command.arg("--node-credentials").arg(&self.credentials_file);
        command.args([
            "--listen",
            &CONTROL_ADDR.to_string(),
            "--metrics-addr",
            &METRICS_ADDR.to_string(),
            "--log-json",
        ]);
        let process = Process::spawn("controller", command)?;
        process
            .wait_for_log("listening", Duration::from_secs(30), |r| r["message"] == "control endpoint listening")
            .await?;
        let (status, body) = crate::http::get(&self.netns, METRICS_ADDR, "/ready").await?;
        if status != 200 {
            bail!("the controller listens but /ready says {status}: {body}");
        }
        self.process = Some(process);
        Ok(())
    }

    /// Kills the controller outright (SIGKILL), as a crash would.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let mut process = self.process.take().context("the controller is not running")?;
        process.kill().await
    }

    pub fn process(&self) -> &Process {
        self.process.as_ref().unwrap_or_else(|| panic!("the controller is not running"))
    }

    /// Scrapes the controller's metrics (Prometheus text).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = crate::http::get(&self.netns, METRICS_ADDR, "/metrics").await?;
        anyhow::ensure!(status == 200, "controller metrics answered {status}: {body}");
        Ok(body)
    }
}
