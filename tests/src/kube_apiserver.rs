//! A real Kubernetes API server (1.20, built from Debian's source package
//! by `cargo xtask kube-apiserver`) with Debian's etcd, inside a namespace
//! of the test bed, so each test has its own on fixed loopback ports and
//! nothing reaches the host's network.
//!
//! No kubelet, scheduler or controller-manager runs: the test bed creates
//! Pod objects itself, with the node and IP the netns pods really have.
//! Tokens come from a static token file: an admin (`system:masters`), and
//! the controller's ServiceAccount user, which has only the manifests' RBAC.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::Command;

use crate::netns::Netns;
use crate::process::Process;

pub const APISERVER_PORT: u16 = 6443;
/// The user the controller's token authenticates as: its ServiceAccount's.
pub const CONTROLLER_USER: &str = "system:serviceaccount:ambit-system:ambit-controller";
/// ztunnel tokens are minted for this audience (the controller checks it).
pub const TOKEN_AUDIENCE: &str = "ambit";

/// Where `cargo xtask kube-apiserver` caches the binary.
pub fn apiserver_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("AMBIT_KUBE_APISERVER") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/ambit/kubernetes/v1.20.2-2/kube-apiserver"),
    };
    if !path.is_file() {
        bail!(
            "{} is missing: `cargo xtask kube-apiserver` builds it (`cargo xtask test` does so first)",
            path.display()
        );
    }
    Ok(path)
}

#[derive(Debug)]
pub struct ApiServer {
    // Field order is drop order: the API server before its store.
    apiserver: Process,
    /// Held for its drop: etcd dies with the server.
    _etcd: Process,
    /// Full access (`system:masters`).
    pub admin_kubeconfig: PathBuf,
    /// The controller's ServiceAccount user: only the manifests' RBAC.
    pub controller_kubeconfig: PathBuf,
}

fn random_token() -> String {
    (0..2).map(|_| format!("{:016x}", rand::random::<u64>())).collect()
}

impl ApiServer {
    /// Starts etcd and the API server in `netns`, with state under `dir`,
    /// and waits until the API answers.
    pub async fn start(netns: &Netns, dir: &Path) -> anyhow::Result<Self> {
        let binary = apiserver_binary()?;
        std::fs::create_dir_all(dir)?;
        let mut etcd = Command::from(netns.command("etcd"));
        etcd.arg("--data-dir").arg(dir.join("etcd")).args([
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=default=http://127.0.0.1:2380",
        ]);
        let etcd = Process::spawn("etcd", etcd)?;
        etcd.wait_for_line("ready", Duration::from_secs(30), |l| l.contains("ready to serve client requests")).await?;

        let (admin, controller) = (random_token(), random_token());
        std::fs::write(
            dir.join("tokens.csv"),
            format!(
                "{admin},admin,admin-uid,\"system:masters\"\n{controller},{CONTROLLER_USER},controller-uid,\"system:serviceaccounts,system:serviceaccounts:ambit-system\"\n"
            ),
        )?;
        let signing = rcgen::KeyPair::generate()?;
        std::fs::write(dir.join("sa.key"), signing.serialize_pem())?;
        std::fs::write(dir.join("sa.pub"), signing.public_key_pem())?;
        let mut command = Command::from(netns.command(binary.to_str().context("path")?));
        command
            .args(["--etcd-servers=http://127.0.0.1:2379", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={APISERVER_PORT}"))
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg(format!("--token-auth-file={}", dir.join("tokens.csv").display()))
            .arg(format!("--service-account-key-file={}", dir.join("sa.pub").display()))
            .arg(format!("--service-account-signing-key-file={}", dir.join("sa.key").display()))
            .args(["--service-account-issuer=https://kubernetes.default.svc", "--authorization-mode=RBAC"])
            .arg(format!("--api-audiences=https://kubernetes.default.svc,{TOKEN_AUDIENCE}"))
            .args(["--service-cluster-ip-range=10.96.0.0/16", "--enable-priority-and-fairness=false"])
            // As kubeadm and managed clusters run it: the DaemonSet's init
            // container is privileged (bidirectional mount propagation needs it).
            .arg("--allow-privileged=true");
        let apiserver = Process::spawn("kube-apiserver", command)?;
        let server = Self {
            admin_kubeconfig: write_kubeconfig(dir, "admin", &admin)?,
            controller_kubeconfig: write_kubeconfig(dir, "controller", &controller)?,
            apiserver,
            _etcd: etcd,
        };
        server.wait_ready(netns).await?;
        Ok(server)
    }

    /// Waits until the server listens (its log says so), then until its
    /// own readiness endpoint says ok (RBAC bootstrap and other start-up
    /// hooks finish a moment later). Each probe is a kubectl process, which
    /// paces the bounded loop.
    async fn wait_ready(&self, netns: &Netns) -> anyhow::Result<()> {
        self.apiserver.wait_for_line("serving", Duration::from_secs(60), |l| l.contains("Serving securely")).await?;
        let mut last = None;
        for _ in 0..600 {
            match self.kubectl(netns, &["get", "--raw", "/readyz"]).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                other => last = Some(other),
            }
        }
        bail!("kube-apiserver never became ready: {last:?}\n{}", self.apiserver.log_lines().join("\n"))
    }

    /// Runs kubectl as admin inside `netns`; returns stdout.
    pub async fn kubectl(&self, netns: &Netns, args: &[&str]) -> anyhow::Result<String> {
        kubectl(netns, &self.admin_kubeconfig, args, None).await
    }

    /// `kubectl apply -k dir`, then waits until every CRD is Established.
    /// A CRD is served only a moment after it is created; an object of its
    /// kind applied in between fails with "no matches for kind" (a CI run
    /// hit exactly that), so installers wait on the condition, as users do.
    pub async fn install(&self, netns: &Netns, dir: &Path) -> anyhow::Result<String> {
        let dir = dir.to_str().context("manifest path")?;
        let applied = self.kubectl(netns, &["apply", "-k", dir]).await?;
        let wait = ["wait", "--for=condition=Established", "--all", "crd", "--timeout=60s"];
        self.kubectl(netns, &wait).await?;
        Ok(applied)
    }

    /// Runs kubectl as the controller's ServiceAccount.
    pub async fn kubectl_as_controller(&self, netns: &Netns, args: &[&str]) -> anyhow::Result<String> {
        kubectl(netns, &self.controller_kubeconfig, args, None).await
    }

    /// `kubectl auth can-i` for the controller's ServiceAccount user.
    /// `question` is what follows `can-i`: a verb, a resource, flags.
    pub async fn can_i_as_controller(&self, netns: &Netns, question: &[&str]) -> anyhow::Result<bool> {
        let mut command = Command::from(netns.command("kubectl"));
        command.arg(format!("--kubeconfig={}", self.controller_kubeconfig.display()));
        command.args(["auth", "can-i"]).args(question).kill_on_drop(true);
        let output = command.output().await.context("kubectl auth can-i")?;
        match String::from_utf8_lossy(&output.stdout).trim() {
            "yes" => Ok(true),
            "no" => Ok(false),
            other => bail!("kubectl auth can-i {question:?}: {other} {}", String::from_utf8_lossy(&output.stderr)),
        }
    }

    /// `kubectl apply -f -` of `yaml`, as admin.
    pub async fn apply(&self, netns: &Netns, yaml: &str) -> anyhow::Result<String> {
        kubectl(netns, &self.admin_kubeconfig, &["apply", "-f", "-"], Some(yaml)).await
    }
}

/// Runs kubectl with `kubeconfig`; fails with its stderr.
pub async fn kubectl(netns: &Netns, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt as _;
    let mut command = Command::from(netns.command("kubectl"));
    command.arg(format!("--kubeconfig={}", kubeconfig.display())).args(args);
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command.kill_on_drop(true);
    let mut child = command.spawn().context("spawn kubectl")?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or_default().as_bytes()).await?;
    }
    let output =
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.context("kubectl hung")??;
    if !output.status.success() {
        bail!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn write_kubeconfig(dir: &Path, user: &str, token: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{user}.kubeconfig"));
    // The serving certificate is self-signed into --cert-dir once the
    // server starts; its CA is not known up front, so TLS verification is
    // off. Everything is on a loopback inside the test's own namespace.
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{APISERVER_PORT}\n    \
         insecure-skip-tls-verify: true\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  \
         context: {{cluster: test, user: {user}}}\ncurrent-context: test\n"
    );
    std::fs::write(&path, text)?;
    Ok(path)
}
