//! Traffic capture: the only module that touches eBPF and the node's
//! routing. See ARCHITECTURE.md ("Capture") for the packet path.
//!
//! [`Capture::new`] prepares the node (bpffs, policy routing, conntrack
//! bypass) and loads the programs; [`Capture::sync`] makes the kernel match
//! a config snapshot: which local pods exist and which are enrolled, and
//! which interfaces carry which program. [`Capture::changes`] fires when the
//! node's interfaces, addresses or routes change (rtnetlink multicast), so
//! the caller re-syncs at once. [`Capture::announce`] takes a pod the CNI
//! plugin reports before its config arrives: it is captured as announced
//! until the config knows its address, or its interface goes.

mod bpf;
pub mod bpffs;
pub use bpf::Counters;
mod netlink;
mod nft;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ambit_ebpf_common::{POD_ENROLLED, PodInfo};
use mesh::config::Snapshot;
use serde::Serialize;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bpffs at {0}: {1}")]
    Bpffs(PathBuf, String),
    #[error("cannot load the eBPF programs: {0}")]
    Load(String),
    #[error("the eBPF object has no {0}")]
    MissingObject(&'static str),
    #[error("eBPF map update failed: {0}")]
    Map(String),
    #[error("cannot attach to interface {interface}: {reason}")]
    Attach { interface: String, reason: String },
    #[error("pin {0}: {1}")]
    Pin(PathBuf, std::io::Error),
    #[error("netlink: {0}: {1}")]
    Netlink(&'static str, String),
    #[error("nftables: {0}")]
    Nft(String),
}

/// What capture is doing right now, for the admin config dump.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CaptureStatus {
    pub interfaces: Vec<InterfaceStatus>,
    /// Local pods with their enrollment, by address.
    pub pods: Vec<PodStatus>,
    /// Local pods that have no host route yet (their veth is not set up).
    pub pods_without_route: Vec<String>,
}

impl CaptureStatus {
    /// Whether two statuses program the kernel the same way.
    pub fn same_capture(&self, other: &Self) -> bool {
        self.interfaces == other.interfaces && self.pods == other.pods
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub index: u32,
    pub program: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodStatus {
    pub workload: String,
    pub ip: Ipv4Addr,
    pub enrolled: bool,
}

#[derive(Debug)]
pub struct Capture {
    node: String,
    programs: bpf::Programs,
    netlink: netlink::Netlink,
    changes: Arc<Notify>,
    local_addresses: HashSet<IpAddr>,
    /// Pods the CNI plugin announced that the config does not know yet.
    announced: HashMap<Ipv4Addr, PodStatus>,
}

impl Capture {
    pub async fn new(node: &str, pin_dir: &Path) -> Result<Self, Error> {
        bpffs::ensure(pin_dir)?;
        let netlink = netlink::Netlink::connect()?;
        let loopback = netlink
            .links()
            .await?
            .into_iter()
            .find(|l| l.loopback)
            .ok_or(Error::Netlink("find loopback", "no loopback interface".into()))?;
        netlink.ensure_local_delivery(loopback.index).await?;
        nft::ensure_conntrack_bypass()?;
        let mut programs = bpf::Programs::load(pin_dir)?;
        programs.attach_listener_lookup()?;
        let changes = netlink::subscribe_to_changes()?;
        Ok(Self {
            node: node.to_owned(),
            programs,
            netlink,
            changes,
            local_addresses: HashSet::new(),
            announced: HashMap::new(),
        })
    }

    /// Notified (once per burst) when the node's links, addresses or routes change.
    pub fn changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }

    /// Captures `pods` as given (their namespace's enrollment, say) until
    /// the config knows their addresses. The next [`Capture::sync`] puts
    /// them in place.
    pub fn announce(&mut self, pods: impl IntoIterator<Item = PodStatus>) {
        for pod in pods {
            self.announced.insert(pod.ip, pod);
        }
    }

    /// Forgets announced pods (the CNI plugin's DEL).
    pub fn forget(&mut self, ips: &[Ipv4Addr]) {
        for ip in ips {
            self.announced.remove(ip);
        }
    }

    /// Registers a listener so the programs can hand connections to it.
    pub fn register_listener(&mut self, slot: u32, socket: BorrowedFd<'_>) -> Result<(), Error> {
        self.programs.set_listener(slot, socket)
    }

    /// Packets the programs dropped, by reason, summed over CPUs.
    pub fn counters(&self) -> bpf::Counters {
        self.programs.counters()
    }

    /// The node's own addresses as of the last sync.
    pub fn local_addresses(&self) -> &HashSet<IpAddr> {
        &self.local_addresses
    }

    /// Makes the kernel match `snapshot`. Safe to repeat; cheap when
    /// nothing changed.
    pub async fn sync(&mut self, snapshot: &Snapshot) -> Result<CaptureStatus, Error> {
        let mut pods = local_pods(snapshot, &self.node);
        let routes = self.netlink.host_routes().await?;
        // The config takes over an announced pod once it has its address;
        // one whose interface is gone was deleted.
        let configured: HashSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
        self.announced.retain(|ip, _| !configured.contains(ip) && routes.contains_key(ip));
        pods.extend(self.announced.values().cloned());
        let map: HashMap<u32, PodInfo> = pods
            .iter()
            .map(|p| {
                let flags = if p.enrolled { POD_ENROLLED } else { 0 };
                // The interface the pod's host route uses is the only one
                // its address may arrive on.
                let ifindex = routes.get(&p.ip).copied().unwrap_or(0);
                (wire_key(p.ip), PodInfo { flags, ifindex })
            })
            .collect();
        self.programs.set_pods(&map)?;

        let pod_interfaces: HashSet<u32> = pods.iter().filter_map(|p| routes.get(&p.ip)).copied().collect();
        let desired: HashSet<bpf::Attachment> = self
            .netlink
            .links()
            .await?
            .into_iter()
            .filter(|l| !l.loopback)
            .map(|l| bpf::Attachment {
                role: if pod_interfaces.contains(&l.index) { bpf::Role::Pod } else { bpf::Role::Node },
                ifindex: l.index,
                ifname: l.name,
            })
            .collect();
        self.programs.set_attachments(&desired)?;
        self.local_addresses = self.netlink.addresses().await?;

        let mut interfaces: Vec<InterfaceStatus> = self
            .programs
            .attachments()
            .map(|a| InterfaceStatus {
                name: a.ifname.clone(),
                index: a.ifindex,
                program: match a.role {
                    bpf::Role::Pod => "pod_ingress",
                    bpf::Role::Node => "node_ingress",
                },
            })
            .collect();
        interfaces.sort_by_key(|i| i.index);
        let pods_without_route =
            pods.iter().filter(|p| !routes.contains_key(&p.ip)).map(|p| p.workload.clone()).collect();
        Ok(CaptureStatus { interfaces, pods, pods_without_route })
    }
}

/// The local pods' IPv4 addresses and enrollment.
fn local_pods(snapshot: &Snapshot, node: &str) -> Vec<PodStatus> {
    snapshot
        .node_workloads(node)
        .flat_map(|w| {
            let enrolled = snapshot.is_enrolled(w);
            w.ips.iter().filter_map(move |ip| match ip {
                IpAddr::V4(ip) => Some(PodStatus { workload: w.qualified_name(), ip: *ip, enrolled }),
                IpAddr::V6(_) => None,
            })
        })
        .collect()
}

/// A pod address as the `PODS` map keys it: the bytes as they sit in the IP
/// header, read as a native-endian u32 (which is what the program does).
fn wire_key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_key_matches_header_bytes() {
        let key = wire_key(Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(key.to_ne_bytes(), [10, 1, 0, 2]);
    }

    #[test]
    fn local_pods_are_this_nodes_v4_addresses() {
        let snapshot = Snapshot::from_yaml(
            r#"
namespaces: [{ name: a, labels: { istio.io/dataplane-mode: ambient } }]
workloads:
  - { uid: "1", name: p1, namespace: a, node: n1, ips: [10.1.0.2, "fd00::2"] }
  - { uid: "2", name: p2, namespace: a, node: n2, ips: [10.2.0.2] }
  - { uid: "3", name: p3, namespace: b, node: n1, ips: [10.1.0.3] }
"#,
        )
        .unwrap();
        let pods = local_pods(&snapshot, "n1");
        let summary: Vec<_> = pods.iter().map(|p| (p.workload.as_str(), p.ip.to_string(), p.enrolled)).collect();
        assert_eq!(summary, [("a/p1", "10.1.0.2".to_owned(), true), ("b/p3", "10.1.0.3".to_owned(), false)]);
    }
}
