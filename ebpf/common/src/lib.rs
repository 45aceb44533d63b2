//! Types and constants shared by the eBPF programs (`ambit-ebpf`) and the
//! loader in ztunnel's `capture` module.
//!
//! Every map value is `#[repr(C)]` and padding-free, so the kernel and user
//! space agree on its bytes; the `user` feature adds `aya::Pod` for user space.
#![no_std]

/// The packet mark the programs set on every packet they steer to a local
/// socket. The node routes marked packets through [`ROUTE_TABLE`], whose
/// only route is `local 0.0.0.0/0 dev lo`, so they are delivered locally even
/// though their destination address is not the node's. Same value and mask
/// as Istio's node-level capture, so operators recognise it.
pub const CAPTURE_MARK: u32 = 0x400;
/// The bits of the mark that ambit owns.
pub const CAPTURE_MARK_MASK: u32 = 0xf00;
/// Routing table holding the `local` route for marked packets.
pub const ROUTE_TABLE: u32 = 100;
/// Priority of the `fwmark` rule, ahead of the `main` table (32766).
pub const RULE_PRIORITY: u32 = 100;

/// Index in the `LISTENERS` sockmap of the outbound listener (Istio's 15001).
pub const LISTENER_OUTBOUND: u32 = 0;
/// Index of the inbound HBONE listener (15008).
pub const LISTENER_HBONE: u32 = 1;
/// Index of the inbound plaintext listener (15006).
pub const LISTENER_INBOUND_PLAIN: u32 = 2;
/// HBONE's port: connections to an enrolled pod's IP on it go to the HBONE
/// listener, any other port to the inbound plaintext listener.
pub const HBONE_PORT: u16 = 15008;

/// Number of slots in the `LISTENERS` sockmap.
pub const LISTENER_SLOTS: u32 = 4;

/// Capacity of the `PODS` map: local pods per node. Kubernetes' default
/// `maxPods` is 110; this leaves room for dense nodes.
pub const MAX_LOCAL_PODS: u32 = 4096;

/// Value of the `PODS` map, keyed by a local pod's IPv4 address in network
/// byte order (exactly as it appears in the IP header).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodInfo {
    /// Bit set of `POD_*` flags.
    pub flags: u32,
    /// The node-side interface the pod sends through (its veth), or 0 while
    /// that is unknown. A packet from the pod's address that arrives on any
    /// other pod's interface is another pod borrowing it, and is dropped.
    pub ifindex: u32,
}

/// The pod is enrolled: its new outbound connections are captured.
pub const POD_ENROLLED: u32 = 1;

impl PodInfo {
    pub const fn enrolled(&self) -> bool {
        self.flags & POD_ENROLLED != 0
    }
}

// The kernel copies map values as bytes; padding would carry garbage.
const _: () = assert!(core::mem::size_of::<PodInfo>() == 8);

/// Indexes of the `COUNTERS` per-CPU array: packets the programs dropped,
/// by reason.
/// A packet from a local pod's address arrived on another pod's interface.
pub const COUNTER_SPOOFED_SOURCE: u32 = 0;
/// A new connection to capture found no listener (ztunnel down): dropped so
/// that it never bypasses the mesh.
pub const COUNTER_NO_LISTENER: u32 = 1;
/// Assigning a packet to its socket failed.
pub const COUNTER_ASSIGN_FAILED: u32 = 2;
/// Number of slots in the `COUNTERS` array.
pub const COUNTER_SLOTS: u32 = 4;

#[cfg(feature = "user")]
// SAFETY: `PodInfo` is `repr(C)`, `Copy`, padding-free (asserted above) and
// valid for any bit pattern.
#[allow(unsafe_code)]
unsafe impl aya::Pod for PodInfo {}
