//! The L7 test bed: a namespace served by a waypoint, as Istio's ambient
//! docs set one up, with the controller in local-directory mode.
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
//! route and policy a test adds ([`L7Bed::apply`]).

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
pub fn gateway_yaml(waypoint_for: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: waypoint\n  namespace: {SHOP}\n  \
         labels: {{istio.io/waypoint-for: {waypoint_for}}}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  \
         - {{name: mesh, port: 15008, protocol: HBONE}}\n"
    )
}

#[derive(Debug)]
pub struct L7Bed {
    // Drop order: the waypoint, the apps, then the cluster.
    pub waypoint: Option<Process>,
    pub apps: HashMap<String, HttpApp>,
    pub servers: HashMap<String, Server>,
    pub cluster: Cluster,
    /// Config versions the waypoint has applied (its own count).
    applied: u64,
}

impl L7Bed {
    /// The bed with a waypoint for `waypoint_for` traffic (`service`,
    /// `workload` or `all`), everything started and ready.
    pub async fn start(waypoint_for: &str) -> anyhow::Result<Self> {
        let mut cluster = Cluster::new(2, false)?;
        cluster.set_namespace_labels(
            SHOP,
            labels(&[(DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT), ("istio.io/use-waypoint", "waypoint")]),
        );
        let pod = |name: &str, account: &str, extra: &[(&str, &str)]| PodSpec {
            name: name.into(),
            namespace: SHOP.into(),
            service_account: Some(account.into()),
            workload_name: None,
            labels: labels(extra),
        };
        cluster.add_pod(0, pod("client", "client", &[("app", "client")]))?;
        cluster.add_pod(0, pod("stranger", "stranger", &[("app", "stranger")]))?;
        cluster.add_pod(0, pod("reviews-v1", "reviews", &[("app", "reviews"), ("version", "v1")]))?;
        cluster.add_pod(1, pod("reviews-v2", "reviews", &[("app", "reviews"), ("version", "v2")]))?;
        let waypoint_labels = [(GATEWAY_NAME_LABEL, "waypoint"), (DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE)];
        cluster.add_pod(1, pod("waypoint", "waypoint", &waypoint_labels))?;
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
        cluster.add_service(
            "waypoint",
            SHOP,
            WAYPOINT_VIP,
            15008,
            15008,
            labels(&[(GATEWAY_NAME_LABEL, "waypoint")]),
        )?;
        cluster.extra_objects.push(gateway_yaml(waypoint_for));
        cluster.start_controller().await?;
        let (mut apps, mut servers) = (HashMap::new(), HashMap::new());
        for (name, version) in [("reviews-v1", "v1"), ("reviews-v2", "v2")] {
            let pod = cluster.pod(name);
            apps.insert(name.to_owned(), HttpApp::start(&pod.netns, pod.addr(APP_PORT), name, version)?);
            servers.insert(name.to_owned(), Server::start(&pod.netns, name, pod.addr(TCP_APP_PORT))?);
        }
        cluster.start_all_ztunnels().await?;
        let mut bed = Self { waypoint: None, apps, servers, cluster, applied: 0 };
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
            .env("AMBIT_POD_NAMESPACE", SHOP);
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
    /// a user would `kubectl apply` it, and waits until the waypoint has
    /// applied the config it leads to.
    pub async fn apply(&mut self, name: &str, yaml: &str) -> anyhow::Result<()> {
        self.cluster.control.as_ref().context("no controller")?.write_objects(name, yaml)?;
        let next = self.applied + 1;
        self.waypoint()
            .wait_for_log(&format!("config version {next}"), WAIT, |r| {
                r["message"] == "config applied" && r["version"].as_u64() >= Some(next)
            })
            .await?;
        self.applied = next;
        Ok(())
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
