//! The controller benchmark's cluster, as local-directory YAML: 1,000
//! Services (50 per namespace over 20 namespaces), their pods spread over
//! 100 nodes, one file per node for pods and one per namespace for
//! Services, so a change rewrites what `kubectl apply` of that file would.
//! Every pod and Service carries a `bench.ambit.io/change` label; a change
//! sets it to a fresh mark, by which the simulated agents recognise it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ambit_tests::cluster::write_atomically;

pub const SERVICES: usize = 1_000;
pub const NODES: usize = 100;
const NAMESPACES: usize = 20;
pub const MARK_LABEL: &str = "bench.ambit.io/change";

pub struct BenchCluster {
    dir: PathBuf,
    pods: usize,
    /// Each pod's current mark.
    pod_marks: Vec<u64>,
    service_marks: Vec<u64>,
    /// Services whose selector also requires `track: canary` (toggled).
    service_canary: Vec<bool>,
}

impl BenchCluster {
    /// Writes the whole cluster into `dir`.
    pub fn write(dir: &Path, pods: usize) -> anyhow::Result<Self> {
        let cluster = Self {
            dir: dir.to_owned(),
            pods,
            pod_marks: vec![0; pods],
            service_marks: vec![0; SERVICES],
            service_canary: vec![false; SERVICES],
        };
        let namespaces: String = (0..NAMESPACES)
            .map(|n| {
                format!(
                    "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: bench-{n}, labels: \
                     {{istio.io/dataplane-mode: ambient}}}}\n"
                )
            })
            .collect();
        write_atomically(&dir.join("namespaces.yaml"), &namespaces)?;
        for namespace in 0..NAMESPACES {
            cluster.write_services(namespace)?;
        }
        for node in 0..NODES {
            cluster.write_node(node)?;
        }
        Ok(cluster)
    }

    pub fn pods(&self) -> usize {
        self.pods
    }

    /// Changes pod `pod`'s mark (a label change, as a rollout's relabel
    /// would be) and rewrites its node's file.
    pub fn mark_pod(&mut self, pod: usize, mark: u64) -> anyhow::Result<()> {
        self.pod_marks[pod] = mark;
        self.write_node(pod % NODES)
    }

    /// Marks every pod of the first `nodes` nodes: a bulk change.
    pub fn mark_nodes(&mut self, nodes: usize, mark: u64) -> anyhow::Result<usize> {
        let mut marked = 0;
        for pod in (0..self.pods).filter(|p| p % NODES < nodes) {
            self.pod_marks[pod] = mark;
            marked += 1;
        }
        for node in 0..nodes {
            self.write_node(node)?;
        }
        Ok(marked)
    }

    /// Flips Service `service`'s selector between `app` and `app` plus
    /// `track: canary`, marking it.
    pub fn toggle_selector(&mut self, service: usize, mark: u64) -> anyhow::Result<()> {
        self.service_marks[service] = mark;
        self.service_canary[service] = !self.service_canary[service];
        self.write_services(service / (SERVICES / NAMESPACES))
    }

    fn write_node(&self, node: usize) -> anyhow::Result<()> {
        let mut text = String::new();
        for pod in (node..self.pods).step_by(NODES) {
            let (service, replica) = (pod % SERVICES, pod / SERVICES);
            let namespace = service / (SERVICES / NAMESPACES);
            let ip = format!("10.{}.{}.{}", 128 + pod / 65_536, (pod / 256) % 256, pod % 256);
            let _ = write!(
                text,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: svc-{service}-{replica}, namespace: \
                 bench-{namespace}, uid: pod-{pod}, labels: {{app: svc-{service}, track: canary, \
                 {MARK_LABEL}: \"{}\"}}}}\nspec: {{nodeName: node-{node}, serviceAccountName: sa-{service}, \
                 containers: [{{name: app, image: bench}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n",
                self.pod_marks[pod]
            );
        }
        write_atomically(&self.dir.join(format!("pods-node-{node}.yaml")), &text)
    }

    fn write_services(&self, namespace: usize) -> anyhow::Result<()> {
        let per = SERVICES / NAMESPACES;
        let mut text = String::new();
        for service in namespace * per..(namespace + 1) * per {
            let track = if self.service_canary[service] { ", track: canary" } else { "" };
            let _ = write!(
                text,
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{service}, namespace: bench-{namespace}, \
                 labels: {{{MARK_LABEL}: \"{}\"}}}}\nspec: {{clusterIP: 10.96.{}.{}, selector: {{app: \
                 svc-{service}{track}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n",
                self.service_marks[service],
                service / 250,
                service % 250 + 1
            );
        }
        write_atomically(&self.dir.join(format!("services-{namespace}.yaml")), &text)
    }
}

/// The node names, with the bootstrap credential file's text.
pub fn node_credentials() -> (Vec<(String, String)>, String) {
    let nodes: Vec<(String, String)> =
        (0..NODES).map(|n| (format!("node-{n}"), format!("{:032x}", rand::random::<u128>()))).collect();
    let listing = nodes.iter().map(|(node, token)| format!("{node}: {token}\n")).collect();
    (nodes, listing)
}
