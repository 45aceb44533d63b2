//! A small "cluster" out of network namespaces.
//!
//! * **Nodes**: a namespace each, joined by an underlay bridge that lives in
//!   its own namespace. Node `i` is `10.200.0.(10+i)` and owns the pod CIDR
//!   `10.i.0.0/24`; every node routes the others' pod CIDRs via their owner.
//! * **Pods**: a namespace each, joined to its node by a veth pair, ptp-CNI
//!   style: the pod has a /32 and `default via 169.254.1.1`; the node side
//!   holds 169.254.1.1 and a /32 route to the pod.
//! * **Outside**: optionally `10.200.0.100`, the world beyond the cluster.
//! * **kube-proxy**: an nftables DNAT table per node, so pods outside the
//!   mesh reach service VIPs the way they would in Kubernetes.
//!
//! Everything is named `ambit-<pid>-<n>-…`, so clusters of parallel tests
//! never meet, and nothing touches the root namespace's routing or firewall.
//! Dropping the cluster kills its agents, removes their BPF pins and deletes
//! every namespace (and with them every link and rule).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use mesh::config::{Labels, MeshConfig, Namespace, Service, ServicePort, Snapshot, Workload};

use crate::control_plane::{CONTROL_ADDR, CONTROLLER_IP, ControlPlane};
use crate::netns::{Netns, unique_prefix};
use crate::ztunnel::{Launch, Source, Ztunnel};

/// The trust domain of test clusters' identities.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// Where test agents pin their BPF objects; one directory per cluster.
pub const PIN_ROOT: &str = "/sys/fs/bpf/ambit-test";
const POD_GATEWAY: &str = "169.254.1.1";

#[derive(Debug)]
pub struct Node {
    /// The name pods' `node` field uses: `node1`, `node2`, …
    pub name: String,
    pub netns: Netns,
    pub ip: Ipv4Addr,
    index: u8,
    next_host: u8,
}

#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    /// Index into [`Cluster::nodes`].
    pub node: usize,
    pub ip: Ipv4Addr,
    pub netns: Netns,
}

impl Pod {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), port)
    }
}

#[derive(Debug)]
pub struct Outside {
    pub netns: Netns,
    pub ip: Ipv4Addr,
}

/// A pod to add.
#[derive(Clone, Debug, Default)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub service_account: Option<String>,
    /// The Deployment-like name telemetry reports; defaults to the pod name.
    pub workload_name: Option<String>,
    pub labels: Labels,
}

#[derive(Debug)]
pub struct Cluster {
    // Field order is drop order: agents go before the namespaces they run in.
    ztunnels: Vec<Option<Ztunnel>>,
    /// The controller, when config comes from it instead of a file.
    pub control: Option<ControlPlane>,
    pub pods: Vec<Pod>,
    pub outside: Option<Outside>,
    pub nodes: Vec<Node>,
    underlay: Netns,
    prefix: String,
    dir: tempfile::TempDir,
    config: MeshConfig,
    ca: mesh::ca::CertificateAuthority,
    /// Extra ztunnel flags for every agent this cluster starts.
    pub extra_args: Vec<String>,
    /// An open-file limit for the agents this cluster starts.
    pub ztunnel_fd_limit: Option<u64>,
    /// More objects (YAML documents) for the controller's directory,
    /// written with the cluster's own (a waypoint Gateway, routes).
    pub extra_objects: Vec<String>,
}

impl Cluster {
    /// Creates `nodes` nodes on an underlay, and the outside if asked.
    pub fn new(nodes: u8, outside: bool) -> anyhow::Result<Self> {
        let prefix = unique_prefix();
        let underlay = Netns::create(&format!("{prefix}-ul"))?;
        underlay.ip_batch(&["link add br0 type bridge".into(), "link set br0 up".into()])?;
        let mut cluster = Self {
            ztunnels: Vec::new(),
            control: None,
            pods: Vec::new(),
            outside: None,
            nodes: Vec::new(),
            underlay,
            dir: tempfile::tempdir()?,
            config: MeshConfig::default(),
            ca: mesh::ca::CertificateAuthority::generate(TRUST_DOMAIN)?,
            extra_args: Vec::new(),
            ztunnel_fd_limit: None,
            extra_objects: Vec::new(),
            prefix,
        };
        cluster.ca.write_files(&cluster.ca_cert_path(), &cluster.dir.path().join("ca.key"))?;
        for index in 1..=nodes {
            cluster.add_node(index)?;
        }
        for node in &cluster.nodes {
            let routes: Vec<String> = cluster
                .nodes
                .iter()
                .filter(|other| other.index != node.index)
                .map(|other| format!("route add {} via {}", pod_cidr(other.index), other.ip))
                .collect();
            node.netns.ip_batch(&routes)?;
        }
        if outside {
            cluster.add_outside()?;
        }
        Ok(cluster)
    }

    fn add_node(&mut self, index: u8) -> anyhow::Result<()> {
        let netns = Netns::create(&format!("{}-n{index}", self.prefix))?;
        let ip = Ipv4Addr::new(10, 200, 0, 10 + index);
        self.plug_into_underlay(&netns, &format!("n{index}"), ip)?;
        netns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"], "")?;
        self.nodes.push(Node { name: format!("node{index}"), netns, ip, index, next_host: 2 });
        self.ztunnels.push(None);
        Ok(())
    }

    fn add_outside(&mut self) -> anyhow::Result<()> {
        let netns = Netns::create(&format!("{}-out", self.prefix))?;
        let ip = Ipv4Addr::new(10, 200, 0, 100);
        self.plug_into_underlay(&netns, "out", ip)?;
        // Flat routing back to pods, as on a routed underlay without NAT.
        let routes: Vec<String> =
            self.nodes.iter().map(|n| format!("route add {} via {}", pod_cidr(n.index), n.ip)).collect();
        netns.ip_batch(&routes)?;
        self.outside = Some(Outside { netns, ip });
        Ok(())
    }

    fn plug_into_underlay(&self, netns: &Netns, port: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
        self.underlay.ip_batch(&[
            format!("link add {port} type veth peer name eth0 netns {}", netns.name()),
            format!("link set {port} master br0"),
            format!("link set {port} up"),
        ])?;
        netns.ip_batch(&[format!("addr add {ip}/24 dev eth0"), "link set eth0 up".into()])
    }

    /// Adds a pod on node `node` (index into `nodes`) and returns its index.
    pub fn add_pod(&mut self, node: usize, spec: PodSpec) -> anyhow::Result<usize> {
        let index = self.pods.len();
        let node_ref = self.nodes.get_mut(node).context("no such node")?;
        let ip = Ipv4Addr::new(10, node_ref.index, 0, node_ref.next_host);
        node_ref.next_host += 1;
        let netns = Netns::create(&format!("{}-p{index}", self.prefix))?;
        let veth = format!("veth{index}");
        node_ref.netns.ip_batch(&[
            format!("link add {veth} type veth peer name eth0 netns {}", netns.name()),
            format!("addr add {POD_GATEWAY}/32 dev {veth}"),
            format!("link set {veth} up"),
            format!("route add {ip}/32 dev {veth}"),
        ])?;
        netns.ip_batch(&[
            format!("addr add {ip}/32 dev eth0"),
            "link set eth0 up".into(),
            format!("route add {POD_GATEWAY} dev eth0 scope link"),
            format!("route add default via {POD_GATEWAY} dev eth0"),
        ])?;
        let netns_path = netns.path();
        let network = crate::cni::PodNetwork {
            namespace: &spec.namespace,
            name: &spec.name,
            netns_path: &netns_path,
            host_interface: &veth,
            ip,
        };
        if let Err(error) = crate::cni::add(&cni_state_dir(self.dir.path(), &node_ref.name), &network) {
            // As a runtime would: the pod does not start, and its network
            // is torn down (now, not whenever the kernel retires the netns).
            node_ref.netns.ip_batch(&[format!("link del {veth}")])?;
            return Err(error);
        }
        self.config.workloads.push(Workload {
            uid: format!("{}-uid-{index}", self.prefix),
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            service_account: spec.service_account.unwrap_or_else(|| "default".into()),
            node: node_ref.name.clone(),
            ips: vec![IpAddr::V4(ip)],
            workload_name: spec.workload_name,
            labels: spec.labels,
        });
        self.pods.push(Pod { name: spec.name, namespace: spec.namespace, node, ip, netns });
        Ok(index)
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The node-side end of a pod's veth (in its node's namespace).
    pub fn pod_veth(&self, name: &str) -> String {
        let index = self.pods.iter().position(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"));
        format!("veth{index}")
    }

    /// Sets a namespace's labels (creating it in the config if needed).
    pub fn set_namespace_labels(&mut self, name: &str, labels: Labels) {
        match self.config.namespaces.iter_mut().find(|n| n.name == name) {
            Some(ns) => ns.labels = labels,
            None => self.config.namespaces.push(Namespace { name: name.into(), labels }),
        }
    }

    /// Sets (or with `None` removes) a label on a pod.
    pub fn set_pod_label(&mut self, pod: &str, key: &str, value: Option<&str>) {
        if let Some(w) = self.config.workloads.iter_mut().find(|w| w.name == pod) {
            match value {
                Some(v) => w.labels.insert(key.into(), v.into()),
                None => w.labels.remove(key),
            };
        }
    }

    /// Adds a ClusterIP service and programs every node's kube-proxy table.
    pub fn add_service(
        &mut self,
        name: &str,
        namespace: &str,
        vip: Ipv4Addr,
        port: u16,
        target_port: u16,
        selector: Labels,
    ) -> anyhow::Result<()> {
        self.config.services.push(Service {
            name: name.into(),
            namespace: namespace.into(),
            hostname: None,
            vips: vec![IpAddr::V4(vip)],
            ports: vec![ServicePort { port, target_port: Some(target_port), name: None }],
            selector: Some(selector),
            endpoints: Vec::new(),
            labels: Labels::new(),
        });
        self.program_kube_proxy()
    }

    fn program_kube_proxy(&self) -> anyhow::Result<()> {
        let snapshot = Snapshot::new(self.config.clone())?;
        let rules = kube_proxy_rules(&snapshot);
        let script = format!(
            "table ip kube-proxy\ndelete table ip kube-proxy\ntable ip kube-proxy {{\n\
             chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n{rules}}}\n\
             chain output {{ type nat hook output priority -100; policy accept;\n{rules}}}\n}}\n"
        );
        for node in &self.nodes {
            node.netns.exec("nft", &["-f", "-"], &script)?;
        }
        Ok(())
    }

    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    /// The config to change; [`Cluster::write_config`] publishes it.
    pub fn config_mut(&mut self) -> &mut MeshConfig {
        &mut self.config
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("mesh.yaml")
    }

    /// Publishes the config: as the mesh config file, or (with a
    /// controller) as Kubernetes objects in the controller's directory.
    /// Written atomically (write, then rename), as a ConfigMap update or a
    /// careful editor would.
    pub fn write_config(&self) -> anyhow::Result<()> {
        match &self.control {
            Some(control) => {
                let mut text = crate::kube_objects::render(&self.config)?;
                for object in &self.extra_objects {
                    text.push_str("---\n");
                    text.push_str(object);
                }
                write_atomically(&control.objects_dir.join("cluster.yaml"), &text)
            }
            None => self.write_config_text(&self.config.to_yaml()?),
        }
    }

    /// Config comes from a controller from now on: sets up its namespace,
    /// directories and node credentials, writes the objects and starts it.
    pub async fn start_controller(&mut self) -> anyhow::Result<()> {
        if self.control.is_none() {
            let netns = Netns::create(&format!("{}-cp", self.prefix))?;
            self.plug_into_underlay(&netns, "cp", CONTROLLER_IP)?;
            // Routes back to pods: a waypoint pod talks to the controller
            // from its own address.
            let routes: Vec<String> =
                self.nodes.iter().map(|n| format!("route add {} via {}", pod_cidr(n.index), n.ip)).collect();
            netns.ip_batch(&routes)?;
            let nodes: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
            self.control = Some(ControlPlane::new(netns, self.dir.path(), &nodes, &self.ca)?);
        }
        self.write_config()?;
        self.control.as_mut().context("control plane")?.start().await
    }

    /// Config comes from a controller in Kubernetes mode: a real API server
    /// holds the cluster's objects.
    pub async fn start_kube_controller(&mut self) -> anyhow::Result<()> {
        let netns = Netns::create(&format!("{}-cp", self.prefix))?;
        self.plug_into_underlay(&netns, "cp", CONTROLLER_IP)?;
        let nodes: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let plane = ControlPlane::new_kubernetes(netns, self.dir.path(), &nodes, &self.ca).await?;
        plane.register(&self.config).await?;
        self.control = Some(plane);
        self.control.as_mut().context("control plane")?.start().await
    }

    pub fn control(&mut self) -> &mut ControlPlane {
        self.control.as_mut().unwrap_or_else(|| panic!("this cluster has no controller"))
    }

    /// Writes arbitrary text as the config file (for bad-input tests).
    pub fn write_config_text(&self, text: &str) -> anyhow::Result<()> {
        write_atomically(&self.config_path(), text)
    }

    pub fn ca(&self) -> &mesh::ca::CertificateAuthority {
        &self.ca
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn pin_dir(&self, node: usize) -> PathBuf {
        PathBuf::from(PIN_ROOT).join(&self.prefix).join(&self.nodes[node].name)
    }

    /// The launch settings for node `node`'s agent.
    pub fn launch(&self, node: usize) -> Launch {
        let name = self.nodes[node].name.clone();
        let source = match &self.control {
            Some(control) => {
                Source::Controller { addr: CONTROL_ADDR, credential: control.credential(&name).unwrap_or_default() }
            }
            None => Source::File { config: self.config_path(), ca_key: self.dir.path().join("ca.key") },
        };
        Launch {
            cni_state_dir: cni_state_dir(self.dir.path(), &name),
            node: name,
            source,
            pin_dir: self.pin_dir(node),
            ca_cert: self.ca_cert_path(),
            extra_args: self.extra_args.clone(),
            fd_limit: self.ztunnel_fd_limit,
        }
    }

    /// Starts node `node`'s agent and waits until it is ready.
    pub async fn start_ztunnel(&mut self, node: usize) -> anyhow::Result<()> {
        let ztunnel = Ztunnel::spawn(&self.nodes[node].netns, &self.launch(node))?;
        ztunnel.wait_ready(&self.nodes[node].netns).await?;
        self.ztunnels[node] = Some(ztunnel);
        Ok(())
    }

    pub async fn start_all_ztunnels(&mut self) -> anyhow::Result<()> {
        for node in 0..self.nodes.len() {
            self.start_ztunnel(node).await?;
        }
        Ok(())
    }

    /// Takes node `node`'s agent out of the cluster, to drive its shutdown
    /// by hand (it is still killed when dropped).
    pub fn take_ztunnel(&mut self, node: usize) -> anyhow::Result<Ztunnel> {
        self.ztunnels[node].take().context("ztunnel not running")
    }

    /// Stops node `node`'s agent with SIGTERM and waits for it to exit.
    pub async fn stop_ztunnel(&mut self, node: usize) -> anyhow::Result<std::process::ExitStatus> {
        let ztunnel = self.ztunnels[node].take().context("ztunnel not running")?;
        ztunnel.stop().await
    }

    /// Scrapes node `node`'s agent metrics.
    pub async fn metrics(&self, node: usize) -> anyhow::Result<crate::http::Metrics> {
        let (status, body) = crate::http::get(&self.nodes[node].netns, "127.0.0.1:15020".parse()?, "/metrics").await?;
        anyhow::ensure!(status == 200, "metrics endpoint answered {status}: {body}");
        crate::http::Metrics::parse(&body)
    }

    /// Connections node `node`'s agent has accepted so far (0 before the
    /// first: the counter appears with it). Capture hands a connection over
    /// at its first packet, so this tells captured from direct.
    pub async fn opened(&self, node: usize) -> anyhow::Result<f64> {
        Ok(self.metrics(node).await?.sum_or_zero("istio_tcp_connections_opened_total", &[]))
    }

    pub fn ztunnel(&self, node: usize) -> &Ztunnel {
        self.ztunnels[node].as_ref().unwrap_or_else(|| panic!("ztunnel on node {node} is not running"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first (SIGKILL, reaped), then their pins; the namespaces
        // go when the fields drop, taking links, routes and rules with them.
        self.ztunnels.clear();
        self.control = None;
        let _ = std::fs::remove_dir_all(PathBuf::from(PIN_ROOT).join(&self.prefix));
        // The shared root goes too once no cluster uses it (fails while one does).
        let _ = std::fs::remove_dir(PIN_ROOT);
    }
}

/// Write, then rename: readers see the old file or the new one, never half.
pub fn write_atomically(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).context("file name")?;
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

/// Where node `node`'s agent keeps what the CNI plugin reads.
fn cni_state_dir(cluster_dir: &std::path::Path, node: &str) -> PathBuf {
    cluster_dir.join(format!("cni-{node}"))
}

fn pod_cidr(node_index: u8) -> String {
    format!("10.{node_index}.0.0/24")
}

/// kube-proxy's job for every service port: DNAT the VIP to a random endpoint.
fn kube_proxy_rules(snapshot: &Snapshot) -> String {
    let mut rules = String::new();
    for service in &snapshot.config().services {
        for vip in &service.vips {
            for port in &service.ports {
                let Some(target) = snapshot.service_target(*vip, port.port) else { continue };
                let endpoints: Vec<String> = target
                    .endpoints
                    .iter()
                    .filter_map(|w| w.ips.first())
                    .map(|ip| format!("{ip} . {}", port.target()))
                    .collect();
                if endpoints.is_empty() {
                    continue;
                }
                let map: Vec<String> = endpoints.iter().enumerate().map(|(i, e)| format!("{i} : {e}")).collect();
                rules.push_str(&format!(
                    "ip daddr {vip} tcp dport {} dnat ip to numgen random mod {} map {{ {} }}\n",
                    port.port,
                    endpoints.len(),
                    map.join(", ")
                ));
            }
        }
    }
    rules
}
