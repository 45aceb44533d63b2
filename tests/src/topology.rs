//! The standard test topology, shared by the e2e tests and the demo:
//!
//! | node  | enrolled (namespace `mesh`) | not enrolled (namespace `legacy`) |
//! |-------|-----------------------------|-----------------------------------|
//! | node1 | `n1-a`, `n1-b`              | `n1-plain`                        |
//! | node2 | `n2-a`, `n2-b`              | `n2-plain`                        |
//!
//! plus the outside (`10.200.0.100`). Every pod and the outside run a sample
//! server on [`APP_PORT`]. Service `echo.mesh` ([`SERVICE_VIP`]:[`SERVICE_PORT`])
//! selects the four enrolled pods. Every pod carries the label `name=<pod>`,
//! so policies can select single pods.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use mesh::config::{DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, Labels};

use crate::cluster::{Cluster, PodSpec};
use crate::sample::Server;

pub const APP_PORT: u16 = 8080;
pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const SERVICE_PORT: u16 = 80;
pub const MESH_NAMESPACE: &str = "mesh";
pub const LEGACY_NAMESPACE: &str = "legacy";
pub const ENROLLED: [&str; 4] = ["n1-a", "n1-b", "n2-a", "n2-b"];
pub const NOT_ENROLLED: [&str; 2] = ["n1-plain", "n2-plain"];

/// Where the agents' config comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    File,
    LocalDirectory,
    Kubernetes,
}

#[derive(Debug)]
pub struct Standard {
    pub cluster: Cluster,
    /// Sample servers by pod name, plus `outside`.
    pub servers: HashMap<String, Server>,
    /// The config version the agents run (1 at start).
    version: u64,
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

impl Standard {
    /// Builds the topology, starts both agents and every sample server.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_args(&[]).await
    }

    /// Like [`Standard::start`], with extra ztunnel flags for both agents.
    pub async fn start_with_args(ztunnel_args: &[&str]) -> anyhow::Result<Self> {
        Self::build(ztunnel_args, false).await
    }

    /// Like [`Standard::start`], with config and certificates from the
    /// controller (local-directory mode) instead of a file.
    pub async fn start_with_controller() -> anyhow::Result<Self> {
        Self::build(&[], true).await
    }

    /// Like [`Standard::start`], with the controller in Kubernetes mode
    /// against a real API server holding the cluster's objects.
    pub async fn start_with_kubernetes() -> anyhow::Result<Self> {
        Self::build_with(&[], Source::Kubernetes).await
    }

    async fn build(ztunnel_args: &[&str], controller: bool) -> anyhow::Result<Self> {
        Self::build_with(ztunnel_args, if controller { Source::LocalDirectory } else { Source::File }).await
    }

    async fn build_with(ztunnel_args: &[&str], source: Source) -> anyhow::Result<Self> {
        let mut cluster = Cluster::new(2, true)?;
        cluster.extra_args = ztunnel_args.iter().map(|a| (*a).to_owned()).collect();
        cluster.set_namespace_labels(MESH_NAMESPACE, labels(&[(DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT)]));
        cluster.set_namespace_labels(LEGACY_NAMESPACE, Labels::new());
        for (node, prefix) in [(0, "n1"), (1, "n2")] {
            for suffix in ["a", "b"] {
                let spec = PodSpec {
                    name: format!("{prefix}-{suffix}"),
                    namespace: MESH_NAMESPACE.into(),
                    service_account: Some(format!("sa-{prefix}-{suffix}")),
                    workload_name: None,
                    labels: labels(&[("app", "echo"), ("name", &format!("{prefix}-{suffix}"))]),
                };
                cluster.add_pod(node, spec)?;
            }
            let spec = PodSpec {
                name: format!("{prefix}-plain"),
                namespace: LEGACY_NAMESPACE.into(),
                service_account: None,
                workload_name: None,
                labels: labels(&[("app", "plain"), ("name", &format!("{prefix}-plain"))]),
            };
            cluster.add_pod(node, spec)?;
        }
        cluster.add_service("echo", MESH_NAMESPACE, SERVICE_VIP, SERVICE_PORT, APP_PORT, labels(&[("app", "echo")]))?;
        match source {
            Source::File => cluster.write_config()?,
            Source::LocalDirectory => cluster.start_controller().await?,
            Source::Kubernetes => cluster.start_kube_controller().await?,
        }
        let mut servers = HashMap::new();
        for pod in &cluster.pods {
            servers.insert(pod.name.clone(), Server::start(&pod.netns, &pod.name, pod.addr(APP_PORT))?);
        }
        if let Some(outside) = &cluster.outside {
            let addr = SocketAddr::new(IpAddr::V4(outside.ip), APP_PORT);
            servers.insert("outside".into(), Server::start(&outside.netns, "outside", addr)?);
        }
        cluster.start_all_ztunnels().await?;
        Ok(Self { cluster, servers, version: 1 })
    }

    /// Changes the config, writes it, and waits until both agents have
    /// applied it (capture, certificates and policies). Returns the version.
    pub async fn apply(&mut self, change: impl FnOnce(&mut mesh::config::MeshConfig)) -> anyhow::Result<u64> {
        change(self.cluster.config_mut());
        self.cluster.write_config()?;
        self.version += 1;
        let version = self.version;
        for node in 0..self.cluster.nodes.len() {
            self.cluster
                .ztunnel(node)
                .wait_for_log(&format!("config version {version} in effect"), std::time::Duration::from_secs(20), |r| {
                    r["message"] == "capture updated" && r["version"].as_u64() >= Some(version)
                })
                .await?;
        }
        Ok(version)
    }

    pub fn server(&self, name: &str) -> &Server {
        &self.servers[name]
    }

    pub fn service_addr() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(SERVICE_VIP), SERVICE_PORT)
    }

    pub fn outside_addr(&self) -> SocketAddr {
        let ip = self.cluster.outside.as_ref().map_or(Ipv4Addr::UNSPECIFIED, |o| o.ip);
        SocketAddr::new(IpAddr::V4(ip), APP_PORT)
    }
}
