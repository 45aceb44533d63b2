//! The controller, running in its own namespace on the underlay
//! (`10.200.0.2`), as a control-plane node would. Two modes:
//!
//! * local directory: it reads the cluster's objects from a directory the
//!   test bed writes; each node's agent proves itself with a bootstrap
//!   credential issued here;
//! * Kubernetes: a real kube-apiserver runs beside it (same namespace,
//!   loopback); the test bed installs the manifests, registers its pods as
//!   Pod objects, and gives each agent a ServiceAccount token bound to its
//!   own (DaemonSet-like) Pod object. The controller uses the token of its
//!   ServiceAccount user, so it has exactly the manifests' RBAC.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::Command;

use crate::kube_apiserver::{ApiServer, TOKEN_AUDIENCE};
use crate::netns::Netns;
use crate::process::Process;
use crate::ztunnel::binary;

pub const CONTROLLER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
pub const CONTROL_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(CONTROLLER_IP), 15012);
pub const METRICS_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(CONTROLLER_IP), 15014);

#[derive(Debug)]
pub struct ControlPlane {
    // Field order is drop order: the process, then the API server, then
    // their namespace.
    process: Option<Process>,
    /// Kubernetes mode's API server.
    pub api: Option<ApiServer>,
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
        Ok(Self { process: None, api: None, netns, objects_dir, ca_dir, credentials_file, node_credentials })
    }

    /// Kubernetes mode: starts the API server, installs the manifests,
    /// stores the cluster's root as the controller's CA Secret, and mints
    /// each node's agent a token bound to its Pod object.
    pub async fn new_kubernetes(
        netns: Netns,
        dir: &Path,
        nodes: &[String],
        ca: &mesh::ca::CertificateAuthority,
    ) -> anyhow::Result<Self> {
        let mut plane = Self::new(netns, dir, nodes, ca)?;
        let api = ApiServer::start(&plane.netns, &dir.join("apiserver")).await?;
        let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        api.install(&plane.netns, &manifests).await?;
        let from_file = |key: &str| format!("--from-file={key}={}", plane.ca_dir.join(key).display());
        let (cert, key) = (from_file("root-cert.pem"), from_file("root-key.pem"));
        api.kubectl(&plane.netns, &["create", "secret", "generic", "ambit-ca", "-n", "ambit-system", &cert, &key])
            .await?;
        for node in nodes {
            let pod = format!("ztunnel-{node}");
            api.apply(&plane.netns, &agent_pod(&pod, node)).await?;
            let token = api
                .kubectl(
                    &plane.netns,
                    &[
                        "create",
                        "token",
                        "ztunnel",
                        "-n",
                        "ambit-system",
                        "--audience",
                        TOKEN_AUDIENCE,
                        "--bound-object-kind",
                        "Pod",
                        "--bound-object-name",
                        &pod,
                        "--duration",
                        "2h",
                    ],
                )
                .await?;
            std::fs::write(plane.credential(node)?, token.trim())?;
        }
        plane.api = Some(api);
        Ok(plane)
    }

    /// Kubernetes mode: the cluster's objects into the API server, with the
    /// pod status a kubelet would report (no pruning: delete with kubectl).
    pub async fn register(&self, config: &mesh::config::MeshConfig) -> anyhow::Result<()> {
        let api = self.api.as_ref().context("not in Kubernetes mode")?;
        api.apply(&self.netns, &crate::kube_objects::render_for_api_server(config)?).await?;
        for workload in &config.workloads {
            let status = crate::kube_objects::pod(workload)["status"].to_string();
            let patch = format!("{{\"status\":{status}}}");
            api.kubectl(
                &self.netns,
                &[
                    "patch",
                    "pod",
                    &workload.name,
                    "-n",
                    &workload.namespace,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    &patch,
                ],
            )
            .await?;
        }
        Ok(())
    }

    /// Local mode: writes (or replaces) one more YAML file in the watched
    /// directory, as a user would drop objects in.
    pub fn write_objects(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        crate::cluster::write_atomically(&self.objects_dir.join(file), yaml)
    }

    /// Kubernetes mode: `kubectl apply` of `yaml`, as admin.
    pub async fn kube_apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.api.as_ref().context("not in Kubernetes mode")?.apply(&self.netns, yaml).await
    }

    /// Kubernetes mode: installs a kustomization and waits for its CRDs.
    pub async fn kube_install(&self, dir: &Path) -> anyhow::Result<String> {
        self.api.as_ref().context("not in Kubernetes mode")?.install(&self.netns, dir).await
    }

    /// Kubernetes mode: kubectl as admin.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.api.as_ref().context("not in Kubernetes mode")?.kubectl(&self.netns, args).await
    }

    pub fn credential(&self, node: &str) -> anyhow::Result<PathBuf> {
        self.node_credentials.get(node).cloned().with_context(|| format!("no credential for {node}"))
    }

    /// Starts the controller and waits until it serves config.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if self.process.is_some() {
            bail!("the controller is already running");
        }
        self.process = Some(self.spawn_replica("ambit-controller-0", CONTROL_ADDR, METRICS_ADDR).await?);
        Ok(())
    }

    /// Kubernetes mode: one more replica, on other ports of the same
    /// namespace (as another pod would be), ready to serve. The test owns it.
    pub async fn start_replica(&self, name: &str, control: u16, metrics: u16) -> anyhow::Result<Process> {
        let addr = |port| SocketAddr::new(std::net::IpAddr::V4(CONTROLLER_IP), port);
        self.spawn_replica(name, addr(control), addr(metrics)).await
    }

    async fn spawn_replica(&self, name: &str, control: SocketAddr, metrics: SocketAddr) -> anyhow::Result<Process> {
        let binary = binary("controller")?;
        let mut command = Command::from(self.netns.command(binary.to_str().context("path")?));
        match &self.api {
            Some(api) => {
                command.arg("--kubernetes").env("KUBECONFIG", &api.controller_kubeconfig);
                command.env("AMBIT_POD_NAMESPACE", "ambit-system").env("AMBIT_POD_NAME", name);
            }
            None => {
                command.arg("--config-dir").arg(&self.objects_dir).arg("--ca-dir").arg(&self.ca_dir);
                command.arg("--node-credentials").arg(&self.credentials_file);
            }
        }
        command.args([
            "--listen",
            &control.to_string(),
            "--metrics-addr",
            &metrics.to_string(),
            "--log-format",
            "json",
        ]);
        let process = Process::spawn(name, command)?;
        process
            .wait_for_log("listening", Duration::from_secs(30), |r| r["message"] == "control endpoint listening")
            .await?;
        if self.api.is_some() {
            let synced = |r: &serde_json::Value| r["message"] == "every kind listed; serving config";
            process.wait_for_log("its first sync", Duration::from_secs(30), synced).await?;
        }
        let (status, body) = crate::http::get(&self.netns, metrics, "/ready").await?;
        if status != 200 {
            bail!("{name} listens but /ready says {status}: {body}; log:\n{}", process.log_lines().join("\n"));
        }
        Ok(process)
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
    pub async fn metrics(&self) -> anyhow::Result<crate::http::Metrics> {
        let (status, body) = crate::http::get(&self.netns, METRICS_ADDR, "/metrics").await?;
        anyhow::ensure!(status == 200, "controller metrics answered {status}: {body}");
        crate::http::Metrics::parse(&body)
    }
}

/// The Pod object of a node's agent (a DaemonSet pod, as the scheduler
/// would have placed it): what its token is bound to.
fn agent_pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ambit-system, labels: {{app: ztunnel}}}}\n\
         spec:\n  nodeName: {node}\n  hostNetwork: true\n  serviceAccountName: ztunnel\n  \
         automountServiceAccountToken: false\n  containers: [{{name: ztunnel, image: ghcr.io/ambit-mesh/ztunnel:0.1.0}}]\n"
    )
}
