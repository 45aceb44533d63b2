//! The L7 test bed: a namespace served by a waypoint, as Istio's ambient
//! docs set one up, with the controller in local-directory mode.
//!
//! [`L7Bed::start`]:
//!
//! | node  | pods (namespace `shop`, enrolled, `istio.io/use-waypoint: waypoint`) |
//! |-------|---------------------------------------------------------------------|
//! | node1 | `client` (sa `client`), `stranger` (sa `stranger`), `reviews-v1`    |
//! | node2 | `reviews-v2`, `waypoint` (not captured, sa `waypoint`)              |
//!
//! Service `reviews` ([`REVIEWS_VIP`]:[`REVIEWS_PORT`]) selects both
//! reviews pods (and `reviews-v1`, `reviews-v2` one each, for HTTPRoute
//! backends), which run an [`HttpApp`] on [`APP_PORT`] answering with
//! their version. The waypoint Gateway is applied as YAML, and so is every
//! route and policy a test adds ([`L7Bed::apply`]). [`L7Bed::bookinfo`] is
//! the same in namespace `default` with bookinfo's reviews v1–v3 and
//! ratings, for Istio's task YAML as its pages give it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use mesh::config::{DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE, Labels};
use tokio::process::Command;

use crate::cluster::{Cluster, PodSpec};
use crate::control_plane::CONTROL_ADDR;
use crate::http::Metrics;
use crate::http_app::{Client, HttpApp};
use crate::process::Process;
use crate::sample::Server;
use crate::topology::labels;
use crate::ztunnel::binary;

pub const SHOP: &str = "shop";
pub const APP_PORT: u16 = 8080;
pub const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
pub const REVIEWS_PORT: u16 = 9080;
/// The reviews Service's second port, for opaque TCP: a sample
/// [`Server`] on [`TCP_APP_PORT`] in each reviews pod.
pub const REVIEWS_TCP_PORT: u16 = 9090;
pub const TCP_APP_PORT: u16 = 7070;
pub const WAYPOINT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
const WAIT: Duration = Duration::from_secs(30);

/// The waypoint Gateway, as `istioctl waypoint generate` writes it.
pub fn gateway_yaml(namespace: &str, waypoint_for: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: waypoint\n  namespace: {namespace}\n  \
         labels: {{istio.io/waypoint-for: {waypoint_for}}}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  \
         - {{name: mesh, port: 15008, protocol: HBONE}}\n"
    )
}

/// The bookinfo bed's `ratings` Service.
pub const RATINGS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);

#[derive(Debug)]
pub struct L7Bed {
    // Drop order: the waypoint, the apps, then the cluster.
    pub waypoint: Option<Process>,
    pub apps: HashMap<String, HttpApp>,
    pub servers: HashMap<String, Server>,
    pub cluster: Cluster,
    /// The namespace everything runs in.
    pub namespace: &'static str,
    /// Config versions the waypoint has applied (its own count).
    applied: u64,
}

impl L7Bed {
    /// The bed with a waypoint for `waypoint_for` traffic (`service`,
    /// `workload` or `all`), everything started and ready.
    pub async fn start(waypoint_for: &str) -> anyhow::Result<Self> {
        let mut cluster = enrolled_cluster(SHOP)?;
        let pod = |name: &str, account: &str, extra: &[(&str, &str)]| pod_spec(SHOP, name, account, extra);
        cluster.add_pod(0, pod("client", "client", &[("app", "client")]))?;
        cluster.add_pod(0, pod("stranger", "stranger", &[("app", "stranger")]))?;
        cluster.add_pod(0, pod("reviews-v1", "reviews", &[("app", "reviews"), ("version", "v1")]))?;
        cluster.add_pod(1, pod("reviews-v2", "reviews", &[("app", "reviews"), ("version", "v2")]))?;
        cluster.add_service("reviews", SHOP, REVIEWS_VIP, REVIEWS_PORT, APP_PORT, labels(&[("app", "reviews")]))?;
        if let Some(reviews) = cluster.config_mut().services.iter_mut().find(|s| s.name == "reviews") {
            let port =
                mesh::config::ServicePort { port: REVIEWS_TCP_PORT, target_port: Some(TCP_APP_PORT), name: None };
            reviews.ports.push(port);
        }
        for (index, version) in [(21, "v1"), (22, "v2")] {
            let vip = Ipv4Addr::new(10, 96, 0, index);
            let selector = labels(&[("app", "reviews"), ("version", version)]);
            cluster.add_service(&format!("reviews-{version}"), SHOP, vip, REVIEWS_PORT, APP_PORT, selector)?;
        }
        let apps = [("reviews-v1", "v1"), ("reviews-v2", "v2")];
        Self::launch(cluster, SHOP, waypoint_for, &apps, Some(TCP_APP_PORT)).await
    }

    /// Bookinfo's shape in namespace `default`, so that Istio's task YAML
    /// (which names no namespace) applies unchanged: `reviews` v1 (node1),
    /// v2 and v3 (node2) and `ratings` v1 (node1), each an [`HttpApp`]
    /// answering with its version, and a `client` pod on node1.
    pub async fn bookinfo() -> anyhow::Result<Self> {
        const NAMESPACE: &str = "default";
        let mut cluster = enrolled_cluster(NAMESPACE)?;
        let pod = |name: &str, app: &str, version: &str| {
            pod_spec(NAMESPACE, name, &format!("bookinfo-{app}"), &[("app", app), ("version", version)])
        };
        cluster.add_pod(0, pod_spec(NAMESPACE, "client", "client", &[("app", "client")]))?;
        cluster.add_pod(0, pod("reviews-v1", "reviews", "v1"))?;
        cluster.add_pod(1, pod("reviews-v2", "reviews", "v2"))?;
        cluster.add_pod(1, pod("reviews-v3", "reviews", "v3"))?;
        cluster.add_pod(0, pod("ratings-v1", "ratings", "v1"))?;
        // Bookinfo's pods listen on the Services' port, as its YAML assumes.
        for (name, vip) in [("reviews", REVIEWS_VIP), ("ratings", RATINGS_VIP)] {
            cluster.add_service(name, NAMESPACE, vip, REVIEWS_PORT, REVIEWS_PORT, labels(&[("app", name)]))?;
        }
        let apps = [("reviews-v1", "v1"), ("reviews-v2", "v2"), ("reviews-v3", "v3"), ("ratings-v1", "v1")];
        Self::launch(cluster, NAMESPACE, "service", &apps, None).await
    }

    /// Adds the waypoint's pod, Service and Gateway, starts the controller,
    /// the apps (on [`APP_PORT`], or [`REVIEWS_PORT`] with no `tcp_port`; and
    /// a TCP sample server on `tcp_port`), the ztunnels and the waypoint.
    pub async fn launch(
        mut cluster: Cluster,
        namespace: &'static str,
        waypoint_for: &str,
        apps: &[(&str, &str)],
        tcp_port: Option<u16>,
    ) -> anyhow::Result<Self> {
        let waypoint_labels = [(GATEWAY_NAME_LABEL, "waypoint"), (DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE)];
        cluster.add_pod(1, pod_spec(namespace, "waypoint", "waypoint", &waypoint_labels))?;
        let selector = labels(&[(GATEWAY_NAME_LABEL, "waypoint")]);
        cluster.add_service("waypoint", namespace, WAYPOINT_VIP, 15008, 15008, selector)?;
        cluster.extra_objects.push(gateway_yaml(namespace, waypoint_for));
        cluster.start_controller().await?;
        let (mut started, mut servers) = (HashMap::new(), HashMap::new());
        let app_port = if tcp_port.is_some() { APP_PORT } else { REVIEWS_PORT };
        for (name, version) in apps {
            let pod = cluster.pod(name);
            started.insert((*name).to_owned(), HttpApp::start(&pod.netns, pod.addr(app_port), name, version)?);
            if let Some(port) = tcp_port {
                servers.insert((*name).to_owned(), Server::start(&pod.netns, name, pod.addr(port))?);
            }
        }
        cluster.start_all_ztunnels().await?;
        let mut bed = Self { waypoint: None, apps: started, servers, cluster, namespace, applied: 0 };
        bed.start_waypoint().await?;
        Ok(bed)
    }

    /// Starts the waypoint in its pod and waits until it is ready.
    pub async fn start_waypoint(&mut self) -> anyhow::Result<()> {
        let pod = self.cluster.pod("waypoint");
        let node = &self.cluster.nodes[pod.node].name;
        let credential = self.cluster.control.as_ref().context("no controller")?.credential(node)?;
        let binary = binary("waypoint")?;
        let mut command = Command::from(pod.netns.command(binary.to_str().context("path")?));
        command
            .args(["--controller", &CONTROL_ADDR.to_string(), "--gateway", "waypoint", "--log-format", "json"])
            .args(["--node", node, "--service-account", "waypoint"])
            .arg("--credential")
            .arg(credential)
            .arg("--ca-cert")
            .arg(self.cluster.ca_cert_path())
            .env("AMBIT_POD_NAMESPACE", self.namespace);
        let process = Process::spawn("waypoint", command)?;
        process.wait_for_log("ready", WAIT, |r| r["message"] == "waypoint ready").await?;
        self.applied = 1;
        self.waypoint = Some(process);
        Ok(())
    }

    pub fn waypoint(&self) -> &Process {
        self.waypoint.as_ref().unwrap_or_else(|| panic!("the waypoint is not running"))
    }

    /// Writes `yaml` as the file `name` in the controller's directory, as
    /// a user would `kubectl apply` it, and waits until the waypoint and
    /// every ztunnel have applied the config it leads to.
    pub async fn apply(&mut self, name: &str, yaml: &str) -> anyhow::Result<()> {
        self.cluster.control.as_ref().context("no controller")?.write_objects(name, yaml)?;
        let next = self.applied + 1;
        let applied = |version: u64| {
            move |r: &serde_json::Value| r["message"] == "config applied" && r["version"].as_u64() >= Some(version)
        };
        let record = self.waypoint().wait_for_log(&format!("config version {next}"), WAIT, applied(next)).await?;
        let version = record["version"].as_u64().unwrap_or(next);
        for node in 0..self.cluster.nodes.len() {
            let what = format!("node {node} at config version {version}");
            self.cluster.ztunnel(node).wait_for_log(&what, WAIT, applied(version)).await?;
        }
        self.applied = next;
        Ok(())
    }

    /// Writes `yaml` as the file `name` without waiting: for a file that
    /// changes nothing the waypoint would see.
    pub fn write(&self, name: &str, yaml: &str) -> anyhow::Result<()> {
        self.cluster.control.as_ref().context("no controller")?.write_objects(name, yaml)
    }

    /// The objects the controller rejected, from its `/status` (local
    /// mode's stand-in for status conditions).
    pub async fn rejected(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let control = self.cluster.control.as_ref().context("no controller")?;
        let (status, body) = crate::http::get(&control.netns, crate::control_plane::METRICS_ADDR, "/status").await?;
        anyhow::ensure!(status == 200, "controller /status answered {status}: {body}");
        let status: serde_json::Value = serde_json::from_str(&body)?;
        Ok(status["rejected"].as_array().cloned().unwrap_or_default())
    }

    pub fn reviews_tcp_addr() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(REVIEWS_VIP), REVIEWS_TCP_PORT)
    }

    pub fn reviews_addr() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(REVIEWS_VIP), REVIEWS_PORT)
    }

    /// A keep-alive HTTP/1.1 client in pod `pod`, connected to reviews.
    pub async fn client(&self, pod: &str) -> anyhow::Result<Client> {
        Client::connect(&self.cluster.pod(pod).netns, Self::reviews_addr()).await
    }

    /// A keep-alive HTTP/1.1 client in pod `pod`, connected to `addr`.
    pub async fn client_to(&self, pod: &str, addr: SocketAddr) -> anyhow::Result<Client> {
        Client::connect(&self.cluster.pod(pod).netns, addr).await
    }

    /// The waypoint's metrics, scraped from inside its pod.
    pub async fn waypoint_metrics(&self) -> anyhow::Result<Metrics> {
        let pod = self.cluster.pod("waypoint");
        let (status, body) = crate::http::get(&pod.netns, pod.addr(15020), "/metrics").await?;
        anyhow::ensure!(status == 200, "waypoint metrics answered {status}: {body}");
        Metrics::parse(&body)
    }

    /// Labels for a pod spec, re-exported for tests.
    pub fn labels(pairs: &[(&str, &str)]) -> Labels {
        labels(pairs)
    }
}

/// A cluster of two nodes whose `namespace` is enrolled and uses the
/// waypoint named `waypoint`.
pub fn enrolled_cluster(namespace: &str) -> anyhow::Result<Cluster> {
    let mut cluster = Cluster::new(2, false)?;
    cluster.set_namespace_labels(
        namespace,
        labels(&[(DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT), ("istio.io/use-waypoint", "waypoint")]),
    );
    Ok(cluster)
}

/// A pod in `namespace` with service account `account` and labels `extra`.
pub fn pod_spec(namespace: &str, name: &str, account: &str, extra: &[(&str, &str)]) -> PodSpec {
    PodSpec {
        name: name.into(),
        namespace: namespace.into(),
        service_account: Some(account.into()),
        workload_name: None,
        labels: labels(extra),
    }
}
