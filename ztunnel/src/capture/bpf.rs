//! Loading the capture programs and keeping their kernel objects current.
//!
//! Maps and links are pinned under the node's pin directory, so they outlive
//! this process: while ztunnel is down (or restarting) the programs stay
//! attached and drop enrolled pods' SYNs instead of letting them bypass the
//! mesh. A new process reuses the pinned maps and atomically swaps its
//! program into each pinned link.

use std::collections::{HashMap, HashSet};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex, PoisonError};

use ambit_ebpf_common::{COUNTER_ASSIGN_FAILED, COUNTER_NO_LISTENER, COUNTER_SPOOFED_SOURCE, PodInfo};
use aya::maps::{HashMap as BpfHashMap, MapData, MapInfo, PerCpuArray, SockMap};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::{SchedClassifier, SkLookup, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use tracing::{debug, info, warn};

use super::Error;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ambit-capture"));

/// The pinned maps whose layout has changed between releases, with the
/// layout this build's programs need: (name, key size, value size).
const PINNED_LAYOUTS: [(&str, u32, u32); 1] = [("PODS", 4, size_of::<PodInfo>() as u32)];

/// aya reuses a pinned map by name without checking its layout, so programs
/// built for a new layout would fail verification against a map an older
/// agent pinned. Such a pin is removed so that the load creates the map
/// afresh; the old programs keep the old map alive (and stay fail-closed)
/// until this process takes their links over.
fn forget_outdated_map_pins(pin_dir: &Path) -> Result<(), Error> {
    for (name, key_size, value_size) in PINNED_LAYOUTS {
        let path = pin_dir.join(name);
        let Ok(pinned) = MapInfo::from_pin(&path) else { continue };
        let pinned_layout = (pinned.key_size(), pinned.value_size());
        if pinned_layout != (key_size, value_size) {
            warn!(map = name, ?pinned_layout, wanted = ?(key_size, value_size), "a pinned map has an older layout; recreating it");
            std::fs::remove_file(&path).map_err(|e| Error::Pin(path.clone(), e))?;
        }
    }
    Ok(())
}

/// Which program an interface gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Role {
    /// A local pod's node-side veth: sees what the pod sends.
    Pod,
    /// Any other interface: sees what arrives from other nodes.
    Node,
}

impl Role {
    fn program(self) -> &'static str {
        match self {
            Role::Pod => "pod_ingress",
            Role::Node => "node_ingress",
        }
    }
}

/// An interface that should carry a program.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub(super) struct Attachment {
    pub role: Role,
    pub ifindex: u32,
    pub ifname: String,
}

impl Attachment {
    /// File name of the link pin: role and index, since names get reused.
    fn pin_name(&self) -> String {
        format!("{}_{}", self.role.program(), self.ifindex)
    }
}

pub(super) struct Programs {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    links_dir: PathBuf,
    /// Attachments this process has made or taken over.
    attached: HashSet<Attachment>,
    counters: Counters,
}

/// The programs' drop counters (`COUNTERS`), readable from any thread (the
/// metrics endpoint reads them at each scrape).
#[derive(Clone)]
pub struct Counters(Arc<Mutex<PerCpuArray<MapData, u64>>>);

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

impl Counters {
    /// Each reason's label and its count, summed over CPUs. The counts live
    /// in the pinned map, so they carry on across agent restarts.
    pub fn read(&self) -> Vec<(&'static str, u64)> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let sum = |index: u32| map.get(&index, 0).map(|per_cpu| per_cpu.iter().sum::<u64>()).unwrap_or(0);
        [
            ("spoofed_source", COUNTER_SPOOFED_SOURCE),
            ("no_listener", COUNTER_NO_LISTENER),
            ("assign_failed", COUNTER_ASSIGN_FAILED),
        ]
        .into_iter()
        .map(|(reason, index)| (reason, sum(index)))
        .collect()
    }
}

impl std::fmt::Debug for Programs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Programs").field("attached", &self.attached).finish_non_exhaustive()
    }
}

impl Programs {
    pub fn load(pin_dir: &Path) -> Result<Self, Error> {
        let links_dir = pin_dir.join("links");
        std::fs::create_dir_all(&links_dir).map_err(|e| Error::Pin(links_dir.clone(), e))?;
        forget_outdated_map_pins(pin_dir)?;
        // `EbpfLoader::new` parses the kernel's BTF (15 MiB at peak, three
        // quarters of the agent's peak heap in heaptrack). The programs use
        // no CO-RE relocations, so it is dropped at once rather than held
        // through the load; jemalloc's background purge returns the pages.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .default_map_pin_directory(pin_dir)
            .load(OBJECT)
            .map_err(|e| Error::Load(e.to_string()))?;
        for role in [Role::Pod, Role::Node] {
            classifier(&mut ebpf, role)?.load().map_err(|e| Error::Load(e.to_string()))?;
        }
        sk_lookup(&mut ebpf)?.load().map_err(|e| Error::Load(e.to_string()))?;
        let counters = ebpf.take_map("COUNTERS").ok_or(Error::MissingObject("COUNTERS"))?;
        let counters = PerCpuArray::try_from(counters).map_err(|e| Error::Map(e.to_string()))?;
        let counters = Counters(Arc::new(Mutex::new(counters)));
        Ok(Self { ebpf, pin_dir: pin_dir.to_owned(), links_dir, attached: HashSet::new(), counters })
    }

    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// Attaches `listener_lookup` to this network namespace and pins the
    /// link, replacing (after attaching) the one an earlier process pinned.
    pub fn attach_listener_lookup(&mut self) -> Result<(), Error> {
        let pin = self.pin_dir.join("sk_lookup_link");
        let attach_error = |reason: String| Error::Attach { interface: "network namespace".into(), reason };
        let netns = std::fs::File::open("/proc/self/ns/net").map_err(|e| attach_error(e.to_string()))?;
        let program = sk_lookup(&mut self.ebpf)?;
        let id = program.attach(&netns).map_err(|e| attach_error(e.to_string()))?;
        let link = program.take_link(id).map_err(|e| attach_error(e.to_string()))?;
        let link = FdLink::from(link);
        if pin.exists() {
            std::fs::remove_file(&pin).map_err(|e| Error::Pin(pin.clone(), e))?;
        }
        link.pin(&pin).map_err(|e| Error::Pin(pin.clone(), std::io::Error::other(e.to_string())))?;
        Ok(())
    }

    /// Puts a listening socket in the `LISTENERS` sockmap slot `slot`. The
    /// entry goes away by itself when the socket closes.
    pub fn set_listener(&mut self, slot: u32, socket: BorrowedFd<'_>) -> Result<(), Error> {
        let map = self.ebpf.map_mut("LISTENERS").ok_or(Error::MissingObject("LISTENERS"))?;
        let mut listeners = SockMap::try_from(map).map_err(|e| Error::Map(e.to_string()))?;
        listeners.set(slot, &socket, 0).map_err(|e| Error::Map(e.to_string()))
    }

    /// Makes the `PODS` map hold exactly `desired`.
    pub fn set_pods(&mut self, desired: &HashMap<u32, PodInfo>) -> Result<(), Error> {
        let map = self.ebpf.map_mut("PODS").ok_or(Error::MissingObject("PODS"))?;
        let mut pods: BpfHashMap<_, u32, PodInfo> = BpfHashMap::try_from(map).map_err(|e| Error::Map(e.to_string()))?;
        let stale: Vec<u32> = pods.keys().filter_map(Result::ok).filter(|k| !desired.contains_key(k)).collect();
        for key in stale {
            pods.remove(&key).map_err(|e| Error::Map(e.to_string()))?;
        }
        for (key, info) in desired {
            if pods.get(key, 0).ok() != Some(*info) {
                pods.insert(key, info, 0).map_err(|e| Error::Map(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Attaches to every interface in `desired` not attached yet, and
    /// detaches (unpins) every pinned link not in it.
    pub fn set_attachments(&mut self, desired: &HashSet<Attachment>) -> Result<(), Error> {
        for attachment in desired {
            if !self.attached.contains(attachment) {
                self.attach(attachment)?;
                self.attached.insert(attachment.clone());
            }
        }
        self.attached.retain(|a| desired.contains(a));
        let wanted: HashSet<String> = desired.iter().map(Attachment::pin_name).collect();
        let pins = std::fs::read_dir(&self.links_dir).map_err(|e| Error::Pin(self.links_dir.clone(), e))?;
        for pin in pins.filter_map(Result::ok) {
            if !wanted.contains(pin.file_name().to_string_lossy().as_ref()) {
                // Removing the last reference to a TCX link detaches it.
                debug!(pin = %pin.path().display(), "detaching");
                std::fs::remove_file(pin.path()).map_err(|e| Error::Pin(pin.path(), e))?;
            }
        }
        Ok(())
    }

    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.attached.iter()
    }

    fn attach(&mut self, attachment: &Attachment) -> Result<(), Error> {
        let pin = self.links_dir.join(attachment.pin_name());
        let program = classifier(&mut self.ebpf, attachment.role)?;
        // A link pinned by an earlier process: swap our program in, with no
        // moment in which the interface is uncaptured.
        if let Ok(old) = PinnedLink::from_pin(&pin) {
            let replaced = SchedClassifierLink::try_from(FdLink::from(old))
                .map_err(|e| e.to_string())
                .and_then(|link| program.attach_to_link(link).map_err(|e| e.to_string()));
            match replaced {
                Ok(id) => {
                    // The pin keeps the link; our handle may go.
                    drop(program.take_link(id));
                    info!(interface = %attachment.ifname, program = attachment.role.program(), "took over pinned link");
                    return Ok(());
                }
                Err(error) => {
                    debug!(%error, pin = %pin.display(), "stale pinned link, replacing");
                    std::fs::remove_file(&pin).map_err(|e| Error::Pin(pin.clone(), e))?;
                }
            }
        }
        let attach_error = |e: aya::programs::ProgramError| Error::Attach {
            interface: attachment.ifname.clone(),
            reason: e.to_string(),
        };
        let id = program.attach(&attachment.ifname, TcAttachType::Ingress).map_err(attach_error)?;
        let link = program.take_link(id).map_err(attach_error)?;
        let link = FdLink::try_from(link)
            .map_err(|e| Error::Attach { interface: attachment.ifname.clone(), reason: e.to_string() })?;
        link.pin(&pin).map_err(|e| Error::Pin(pin.clone(), std::io::Error::other(e.to_string())))?;
        info!(interface = %attachment.ifname, program = attachment.role.program(), "attached");
        Ok(())
    }
}

fn classifier(ebpf: &mut Ebpf, role: Role) -> Result<&mut SchedClassifier, Error> {
    let name = role.program();
    ebpf.program_mut(name)
        .ok_or(Error::MissingObject(name))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| Error::Load(e.to_string()))
}

fn sk_lookup(ebpf: &mut Ebpf) -> Result<&mut SkLookup, Error> {
    ebpf.program_mut("listener_lookup")
        .ok_or(Error::MissingObject("listener_lookup"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| Error::Load(e.to_string()))
}
