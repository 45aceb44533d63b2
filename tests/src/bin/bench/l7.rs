//! `cargo xtask bench l7`: the waypoint against direct, ztunnels only, and
//! nginx and haproxy in its place, in one run on one bed.
//!
//! | node  | pods (namespace `bench`)                                              |
//! |-------|-----------------------------------------------------------------------|
//! | node1 | `client` (enrolled), `plain-client` (not enrolled)                    |
//! | node2 | `v1`, `v2` (enrolled), `plain-v1`, `plain-v2`, `proxy`, `waypoint`   |
//!
//! Every backend answers 1 KB to any request. The paths, each driven by oha
//! from node1:
//! * **direct**: `plain-client` → `plain-v1`;
//! * **ztunnels**: `client` → `v1` by pod IP (HBONE between the nodes'
//!   ztunnels, no waypoint: pod-addressed traffic skips a `service` waypoint);
//! * **waypoint**: `client` → Service `backend`, split 90/10 between `v1` and
//!   `v2` by a VirtualService, through both ztunnels and the waypoint;
//! * **nginx**, **haproxy**: `plain-client` → `proxy` → `plain-v1`/`plain-v2`
//!   weighted 9:1, plain HTTP on both legs (less work than the waypoint's
//!   two mTLS legs: that is the bar the issue sets).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ambit_tests::cluster::Pod;
use ambit_tests::sample_http::HttpResponder;
use ambit_tests::waypoint::{L7Bed, enrolled_cluster, pod_spec};
use mesh::config::{DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE};

use crate::l7_report::{L7Report, Run};
use crate::measure::{self, Load};
use crate::peers::Peer;
use crate::procstat;

const NAMESPACE: &str = "bench";
const BACKEND_PORT: u16 = 8080;
const BACKEND_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const SERVICE_PORT: u16 = 80;
const NGINX_PORT: u16 = 8081;
const HAPROXY_PORT: u16 = 8082;

/// The paths measured, in the order of the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Direct,
    Ztunnels,
    Waypoint,
    Nginx,
    Haproxy,
}

impl Path {
    pub const ALL: [Path; 5] = [Path::Direct, Path::Ztunnels, Path::Waypoint, Path::Nginx, Path::Haproxy];

    pub fn title(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Ztunnels => "ztunnels only",
            Path::Waypoint => "waypoint (90/10)",
            Path::Nginx => "nginx (9:1)",
            Path::Haproxy => "haproxy (9:1)",
        }
    }
}

/// The loads, as oha runs them: 16 connections each; fixed rates correct
/// for coordinated omission (a late request counts from when it was due).
pub const LOADS: [(&str, &[&str]); 3] = [
    ("1,000 req/s", &["-c", "16", "-q", "1000", "--latency-correction"]),
    ("5,000 req/s", &["-c", "16", "-q", "5000", "--latency-correction"]),
    ("maximum", &["-c", "16"]),
];

const SPLIT_YAML: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: bench}
spec:
  host: backend
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: bench}
spec:
  hosts: [backend]
  http:
  - route:
    - {destination: {host: backend, subset: v1}, weight: 90}
    - {destination: {host: backend, subset: v2}, weight: 10}
";

/// The bed, the backends and the two peers, all running.
struct Bed {
    // Drop order: peers and responders before the cluster they run in.
    peers: [Peer; 2],
    _responders: Vec<HttpResponder>,
    l7: L7Bed,
}

impl Bed {
    async fn start() -> anyhow::Result<Self> {
        let mut cluster = enrolled_cluster(NAMESPACE)?;
        let plain = [(DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE)];
        cluster.add_pod(0, pod_spec(NAMESPACE, "client", "client", &[]))?;
        cluster.add_pod(0, pod_spec(NAMESPACE, "plain-client", "client", &plain))?;
        for version in ["v1", "v2"] {
            cluster.add_pod(1, pod_spec(NAMESPACE, version, "backend", &[("app", "backend"), ("version", version)]))?;
            cluster.add_pod(1, pod_spec(NAMESPACE, &format!("plain-{version}"), "backend", &plain))?;
        }
        cluster.add_pod(1, pod_spec(NAMESPACE, "proxy", "proxy", &plain))?;
        let selector = L7Bed::labels(&[("app", "backend")]);
        cluster.add_service("backend", NAMESPACE, BACKEND_VIP, SERVICE_PORT, BACKEND_PORT, selector)?;
        let mut l7 = L7Bed::launch(cluster, NAMESPACE, "service", &[], None).await?;
        let responders = ["v1", "v2", "plain-v1", "plain-v2"]
            .iter()
            .map(|name| {
                let pod = l7.cluster.pod(name);
                HttpResponder::start(&pod.netns, pod.addr(BACKEND_PORT), 1024)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        l7.apply("split.yaml", SPLIT_YAML).await?;
        let upstreams = |pod: &str| l7.cluster.pod(pod).addr(BACKEND_PORT);
        let upstreams = [(upstreams("plain-v1"), 9), (upstreams("plain-v2"), 1)];
        let proxy = l7.cluster.pod("proxy");
        let peers = [
            Peer::nginx(&proxy.netns, proxy.addr(NGINX_PORT), &upstreams).await?,
            Peer::haproxy(&proxy.netns, proxy.addr(HAPROXY_PORT), &upstreams).await?,
        ];
        Ok(Self { peers, _responders: responders, l7 })
    }

    fn pod(&self, name: &str) -> &Pod {
        self.l7.cluster.pod(name)
    }

    /// Where oha runs and what it asks for.
    fn client_and_url(&self, path: Path) -> (&Pod, String) {
        let (client, target) = match path {
            Path::Direct => ("plain-client", self.pod("plain-v1").addr(BACKEND_PORT)),
            Path::Ztunnels => ("client", self.pod("v1").addr(BACKEND_PORT)),
            Path::Waypoint => ("client", SocketAddr::new(IpAddr::V4(BACKEND_VIP), SERVICE_PORT)),
            Path::Nginx => ("plain-client", self.peers[0].addr),
            Path::Haproxy => ("plain-client", self.peers[1].addr),
        };
        (self.pod(client), format!("http://{target}/"))
    }

    /// The proxy whose cost the path measures (none for direct and
    /// ztunnels only).
    fn proxy_pids(&self, path: Path) -> anyhow::Result<Vec<u32>> {
        match path {
            Path::Direct | Path::Ztunnels => Ok(Vec::new()),
            Path::Waypoint => Ok(self.l7.waypoint().pid().into_iter().collect()),
            Path::Nginx => self.peers[0].pids(),
            Path::Haproxy => self.peers[1].pids(),
        }
    }

    fn ztunnel_pids(&self) -> Vec<u32> {
        (0..2).filter_map(|node| self.l7.cluster.ztunnel(node).pid()).collect()
    }

    /// One oha run on `path`, with the proxy's and the ztunnels' CPU and
    /// the proxy's peak resident memory over it.
    async fn measure(&self, path: Path, seconds: u32, flags: &[&str]) -> anyhow::Result<Run> {
        let (client, url) = self.client_and_url(path);
        let (proxy, ztunnels) = (self.proxy_pids(path)?, self.ztunnel_pids());
        proxy.iter().for_each(|&pid| procstat::reset_peak(pid));
        let before = CpuSample::take(&proxy, &ztunnels);
        let load: Load = measure::oha(&client.netns, &url, seconds, flags).await?;
        let after = CpuSample::take(&proxy, &ztunnels);
        let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let cores = |a: u64, b: u64| (b - a) as f64 / procstat::ticks_per_second() / seconds;
        let (busy, total) = (after.machine.0 - before.machine.0, after.machine.1 - before.machine.1);
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        Ok(Run {
            load,
            proxy_cores: cores(before.proxy, after.proxy),
            ztunnel_cores: cores(before.ztunnels, after.ztunnels),
            busy_cores: busy as f64 / total.max(1) as f64 * cpus,
            proxy_peak_mib: proxy.iter().map(|&pid| procstat::rss_mib(pid).1).sum(),
        })
    }
}

/// CPU ticks of the proxy's processes, of the ztunnels, and the machine's.
struct CpuSample {
    at: std::time::Instant,
    proxy: u64,
    ztunnels: u64,
    machine: (u64, u64),
}

impl CpuSample {
    fn take(proxy: &[u32], ztunnels: &[u32]) -> Self {
        let ticks = |pids: &[u32]| pids.iter().map(|&pid| procstat::agent_ticks(pid)).sum();
        Self {
            at: std::time::Instant::now(),
            proxy: ticks(proxy),
            ztunnels: ticks(ztunnels),
            machine: procstat::machine_ticks(),
        }
    }
}

/// Every load on every path, `runs` times, the paths' order rotating from
/// run to run so that none always goes first after a pause.
pub async fn run(runs: usize, seconds: u32) -> anyhow::Result<L7Report> {
    println!("starting the L7 bed (two nodes, waypoint, nginx, haproxy)…");
    let bed = Bed::start().await?;
    for path in Path::ALL {
        let (client, url) = bed.client_and_url(path);
        measure::oha(&client.netns, &url, 1, &["-c", "4"]).await?;
    }
    let mut report = L7Report::new(runs);
    for (name, flags) in LOADS {
        println!("1 KB HTTP, {name}…");
        let mut runs_by_path: Vec<Vec<Run>> = vec![Vec::new(); Path::ALL.len()];
        for round in 0..runs {
            for offset in 0..Path::ALL.len() {
                let index = (round + offset) % Path::ALL.len();
                let run = bed.measure(Path::ALL[index], seconds, flags).await?;
                println!("  {}: {:.0} req/s, p99 {:?}", Path::ALL[index].title(), run.load.rps, run.load.latency.p99);
                runs_by_path[index].push(run);
            }
        }
        report.loads.push((name, runs_by_path));
    }
    Ok(report)
}
