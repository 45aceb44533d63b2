//! ambit's control plane: reads Kubernetes objects (from a directory of
//! YAML in local mode), translates them into the mesh config model, streams
//! that to every agent, and is the mesh's CA.
#![deny(unsafe_code)]

mod app;
mod authority;
mod cluster_ips;
mod crds;
mod credentials;
mod kube_ca;
#[cfg(test)]
mod kube_mock;
mod kube_source;
mod leader;
mod local_dir;
mod metrics;
mod node_auth;
mod reconcile;
mod resources;
mod root_publisher;
mod server;
mod status;
mod store;
mod translate;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser as _;

#[derive(Clone, Debug, clap::Parser)]
#[command(
    version,
    about = "ambit's control plane: translates Kubernetes objects into mesh config, streams it to every agent, and signs workload certificates"
)]
pub struct Settings {
    /// Local-directory mode: read the objects users would `kubectl apply`
    /// (Namespaces, Pods, Services, Istio policies) from this directory's
    /// YAML files, and follow changes.
    #[arg(long, env = "AMBIT_CONFIG_DIR", required_unless_present_any = ["write_crds", "kubernetes"])]
    pub config_dir: Option<PathBuf>,
    /// Kubernetes mode: watch the API server (in-cluster, or `KUBECONFIG`);
    /// the CA root lives in a Secret, agents prove their node with their
    /// ServiceAccount token, and the leader writes policy status.
    #[arg(long, env = "AMBIT_KUBERNETES", conflicts_with_all = ["config_dir", "ca_dir", "node_credentials"])]
    pub kubernetes: bool,
    /// The controller's own namespace (its CA Secret, root ConfigMap, Lease;
    /// agents' ServiceAccount).
    #[arg(long, env = "AMBIT_POD_NAMESPACE", default_value = mesh::control::SYSTEM_NAMESPACE)]
    pub namespace: String,
    /// This replica's name, as the leader Lease records it.
    #[arg(long, env = "AMBIT_POD_NAME", default_value = "ambit-controller")]
    pub pod_name: String,
    /// The audience agents' tokens must be minted for.
    #[arg(long, env = "AMBIT_TOKEN_AUDIENCE", default_value = "ambit")]
    pub token_audience: String,
    /// Where the mesh root CA's certificate and key are; created on first
    /// start if absent.
    #[arg(long, env = "AMBIT_CA_DIR", required_unless_present_any = ["write_crds", "kubernetes"])]
    pub ca_dir: Option<PathBuf>,
    /// Per-node bootstrap credentials (YAML: `node-name: token`).
    #[arg(long, env = "AMBIT_NODE_CREDENTIALS", required_unless_present_any = ["write_crds", "kubernetes"])]
    pub node_credentials: Option<PathBuf>,
    /// Write the CustomResourceDefinitions of the kinds the controller reads
    /// (generated from its types) under this directory (`manifests/`), and
    /// exit.
    #[arg(long, exclusive = true, value_name = "DIR")]
    pub write_crds: Option<PathBuf>,
    /// The control endpoint agents connect to.
    #[arg(long, env = "AMBIT_LISTEN", default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,
    /// Prometheus metrics (`/metrics`) and readiness (`/ready`).
    #[arg(long, env = "AMBIT_METRICS_ADDR", default_value = "0.0.0.0:15014")]
    pub metrics_addr: SocketAddr,
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The cluster's DNS domain: services are `<name>.<namespace>.svc.<domain>`.
    #[arg(long, env = "AMBIT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Policies in this namespace apply mesh-wide (Istio's root namespace).
    #[arg(long, env = "AMBIT_ROOT_NAMESPACE", default_value = mesh::authz::DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
    #[command(flatten)]
    pub log: mesh::logging::LogArgs,
}

/// jemalloc, as the agents: each change parses, translates and encodes
/// objects and frees them again, and at 10,000 pods glibc's malloc let the
/// resident set creep with every change (see BENCHMARKS.md, "Controller at
/// scale"); jemalloc returns freed pages.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// As ztunnel's: a background thread purges dirty pages after 2 s, so an
/// idle controller gives back what a burst of changes used.
#[allow(unsafe_code, reason = "jemalloc reads this symbol (a weak default it defines) before main")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 = &b"background_thread:true,max_background_threads:1,dirty_decay_ms:2000,muzzy_decay_ms:0\0"[0];

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    if let Some(dir) = &settings.write_crds {
        for (path, text) in crds::files()? {
            let path = dir.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        }
        return Ok(());
    }
    mesh::logging::init(&settings.log)?;
    // kube's client and ours share one TLS provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = runtime.block_on(app::run(settings));
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "controller failed");
    }
    result
}
