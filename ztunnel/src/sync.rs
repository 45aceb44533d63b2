//! Keeps the kernel, the certificates and the live connections in step with
//! the config and the node. The syncer re-syncs capture:
//! - on every config version (and then also re-checks live connections
//!   against the policy, and the certificates wanted);
//! - at once when the node's links, addresses or routes change (a pod's
//!   veth appearing), from rtnetlink events;
//! - when the CNI plugin announces a new pod, before that pod's containers
//!   start (it answers once capture is in place);
//! - and once a minute regardless, to repair anything changed behind its back.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mesh::config::{Snapshot, Workload, enrolled};
use mesh::drain::Drain;
use mesh::identity::Identity;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::capture::{Capture, CaptureStatus, PodStatus};
use crate::cli::Settings;
use crate::cni::protocol::{PodNetwork, Reply, Request};
use crate::cni::server::{CniCall, write_enrolled_namespaces};
use crate::proxy::ProxyContext;

/// A full re-sync even when nothing says the node changed.
const SAFETY_RESYNC: Duration = Duration::from_secs(60);

/// The identities of this node's enrolled pods.
pub fn local_identities(snapshot: &Snapshot, settings: &Settings) -> HashSet<Identity> {
    snapshot
        .node_workloads(&settings.node)
        .filter(|w| snapshot.is_enrolled(w))
        .map(|w| w.identity(&settings.trust_domain))
        .collect()
}

#[derive(Debug)]
pub struct Syncer {
    capture: Capture,
    ctx: Arc<ProxyContext>,
    status: Arc<RwLock<CaptureStatus>>,
    settings: Settings,
    synced_version: u64,
}

impl Syncer {
    pub fn new(
        capture: Capture,
        ctx: Arc<ProxyContext>,
        status: Arc<RwLock<CaptureStatus>>,
        settings: Settings,
    ) -> Self {
        let synced_version = ctx.state.current().version;
        Self { capture, ctx, status, settings, synced_version }
    }

    pub async fn run(mut self, mut cni_calls: mpsc::Receiver<CniCall>, drain: Drain) {
        let mut updates = self.ctx.state.subscribe();
        let node_changed = self.capture.changes();
        let mut safety = tokio::time::interval(SAFETY_RESYNC);
        self.publish_enrolled_namespaces();
        loop {
            tokio::select! {
                () = drain.signaled() => break,
                changed = updates.changed() => if changed.is_err() { break },
                () = node_changed.notified() => {}
                call = cni_calls.recv() => {
                    let Some(call) = call else { break };
                    let reply = self.carry_out(call.request).await;
                    let _ = call.reply.send(reply);
                    continue;
                }
                _ = safety.tick() => {}
            }
            self.sync().await;
        }
    }

    /// Brings capture (and, on a new version, certificates and live
    /// connections) in line; the capture status, if the kernel took it.
    async fn sync(&mut self) -> Option<CaptureStatus> {
        let current = self.ctx.state.current();
        let new_version = self.synced_version != current.version;
        if new_version {
            self.ctx.certs.set_wanted(&local_identities(&current.snapshot, &self.settings));
            let revoked = self.ctx.connections.revalidate(&current.snapshot, &self.settings.node);
            if revoked > 0 {
                info!(version = current.version, revoked, "closing connections the new policy denies");
            }
        }
        let status = match self.capture.sync(&current.snapshot).await {
            Ok(status) => status,
            Err(error) => {
                warn!(%error, version = current.version, "capture sync failed; will retry");
                return None;
            }
        };
        let enrolled = status.pods.iter().filter(|p| p.enrolled).count();
        metrics::gauge!(crate::metrics::CAPTURED_PODS).set(enrolled as f64);
        warn_of_pods_without_route(&self.status, &status);
        self.ctx.set_local_addresses(self.capture.local_addresses().clone());
        if let Ok(mut held) = self.status.write() {
            if !held.same_capture(&status) || new_version {
                let interfaces = status.interfaces.len();
                info!(version = current.version, enrolled, interfaces, "capture updated");
            }
            *held = status.clone();
        }
        self.synced_version = current.version;
        if new_version {
            self.publish_enrolled_namespaces();
        }
        Some(status)
    }

    /// The CNI plugin's request: capture a new pod at once (its own labels
    /// decide if the config has it, else its namespace's), or forget one.
    async fn carry_out(&mut self, request: Request) -> Reply {
        match request {
            Request::Add(pod) => {
                let snapshot = self.ctx.state.current().snapshot.clone();
                let enrolled = cni_enrollment(&snapshot, &self.settings.node, &pod);
                let ips = ipv4s(&pod);
                let workload = format!("{}/{}", pod.namespace, pod.name);
                self.capture.announce(ips.iter().map(|&ip| PodStatus { workload: workload.clone(), ip, enrolled }));
                let Some(status) = self.sync().await else {
                    return Reply::Refused { reason: "capture could not be updated; see the agent's log".into() };
                };
                match ips.iter().find(|ip| !status.pods.iter().any(|p| p.ip == **ip)) {
                    Some(ip) => Reply::Refused { reason: format!("{workload}: no host route for {ip} on this node") },
                    None => {
                        info!(pod = %workload, enrolled, "the CNI plugin announced a pod; captured before it starts");
                        Reply::Done { enrolled }
                    }
                }
            }
            Request::Del(pod) => {
                self.capture.forget(&ipv4s(&pod));
                self.sync().await;
                Reply::Done { enrolled: false }
            }
        }
    }

    /// The enrolled namespaces, for the CNI plugin to fall back on while
    /// this agent is down.
    fn publish_enrolled_namespaces(&self) {
        let snapshot = self.ctx.state.current().snapshot.clone();
        let namespaces = snapshot
            .config()
            .namespaces
            .iter()
            .filter(|ns| namespace_enrolled(&snapshot, &ns.name))
            .map(|ns| ns.name.clone())
            .collect();
        if let Err(error) = write_enrolled_namespaces(&self.settings.cni_state_dir, namespaces) {
            warn!(%error, dir = %self.settings.cni_state_dir.display(), "cannot write the enrolled namespaces for the CNI plugin");
        }
    }
}

fn ipv4s(pod: &PodNetwork) -> Vec<Ipv4Addr> {
    pod.ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(ip) => Some(*ip),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// Whether a pod the CNI plugin announces is enrolled: by the config's
/// record of it when the controller has sent the pod already (its own
/// labels count), else by its namespace.
fn cni_enrollment(snapshot: &Snapshot, node: &str, pod: &PodNetwork) -> bool {
    let known = snapshot.node_workloads(node).find(|w| w.namespace == pod.namespace && w.name == pod.name);
    match known {
        Some(workload) => snapshot.is_enrolled(workload),
        None => namespace_enrolled(snapshot, &pod.namespace),
    }
}

/// Whether a pod of `namespace` with no labels of its own is enrolled.
fn namespace_enrolled(snapshot: &Snapshot, namespace: &str) -> bool {
    let unlabelled = Workload { namespace: namespace.to_owned(), ..Workload::default() };
    enrolled(&unlabelled, snapshot.namespace(namespace))
}

/// A local pod the config names but the node has no interface or route
/// for cannot be captured: its traffic would leave unseen. Warns once per
/// such pod (when it first shows), and keeps the count as a gauge;
/// `/config_dump` lists them.
fn warn_of_pods_without_route(before: &RwLock<CaptureStatus>, now: &CaptureStatus) {
    let known: HashSet<String> =
        before.read().map(|s| s.pods_without_route.iter().cloned().collect()).unwrap_or_default();
    for pod in now.pods_without_route.iter().filter(|p| !known.contains(*p)) {
        warn!(%pod, "a local pod has no interface or host route on this node; its traffic cannot be captured");
    }
    metrics::gauge!(crate::metrics::PODS_WITHOUT_ROUTE).set(now.pods_without_route.len() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot::from_yaml(
            r#"
namespaces:
  - { name: mesh, labels: { istio.io/dataplane-mode: ambient } }
  - { name: legacy }
workloads:
  - { uid: "1", name: opted-out, namespace: mesh, node: n1, ips: [], labels: { istio.io/dataplane-mode: none } }
  - { uid: "2", name: opted-in, namespace: legacy, node: n1, ips: [], labels: { istio.io/dataplane-mode: ambient } }
"#,
        )
        .unwrap()
    }

    fn pod(namespace: &str, name: &str) -> PodNetwork {
        PodNetwork { namespace: namespace.into(), name: name.into(), ips: vec![], host_interface: None }
    }

    #[test]
    fn a_known_pods_own_labels_decide_else_its_namespace() {
        let s = snapshot();
        assert!(cni_enrollment(&s, "n1", &pod("mesh", "new")), "an enrolled namespace's unknown pod");
        assert!(!cni_enrollment(&s, "n1", &pod("legacy", "new")));
        assert!(!cni_enrollment(&s, "n1", &pod("mesh", "opted-out")), "the pod's own opt-out counts");
        assert!(cni_enrollment(&s, "n1", &pod("legacy", "opted-in")), "and its own opt-in");
        assert!(!cni_enrollment(&s, "n2", &pod("legacy", "opted-in")), "only this node's pods are known");
    }
}
