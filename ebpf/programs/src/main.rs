//! ambit's traffic capture: two tc ingress (TCX) classifiers.
//!
//! * `pod_ingress` runs on the node-side veth of every local pod, so it sees
//!   every packet a pod sends. First it drops TCP from a local pod's address
//!   that arrives on another pod's veth: a pod borrowing another's address
//!   gets neither its identity nor its connections. Then it steers enrolled
//!   pods' new TCP connections to ztunnel's outbound listener, other pods'
//!   new connections to a local enrolled pod to the inbound listeners, and
//!   every packet that belongs to a socket of ztunnel's to that socket.
//! * `node_ingress` runs on the node's other interfaces (the underlay). It
//!   drops TCP from a local pod's address too (it can only be borrowed
//!   there), then steers new connections to local enrolled pods to the inbound listeners
//!   (HBONE for port 15008, plaintext otherwise), and packets addressed to a
//!   local pod that belong to a ztunnel socket to that socket.
//!
//! * `listener_lookup` (sk_lookup, on the node's network namespace) picks
//!   ztunnel's listener for a captured SYN whose tuple still has a TIME_WAIT
//!   socket: such a SYN is only marked, so that the kernel's own TIME_WAIT
//!   handling runs, and then looks for a listener here. (Assigning it to the
//!   listener directly would bypass that handling, and the new connection
//!   would collide with the old one.)
//!
//! Steering is `bpf_sk_assign` plus a mark; the node routes marked packets to
//! `local` so the assigned socket receives them. Nothing is rewritten. See
//! ARCHITECTURE.md ("Capture") for the whole path.
#![no_std]
#![no_main]

use ambit_ebpf_common::{
    CAPTURE_MARK, CAPTURE_MARK_MASK, COUNTER_ASSIGN_FAILED, COUNTER_NO_LISTENER, COUNTER_SLOTS, COUNTER_SPOOFED_SOURCE,
    HBONE_PORT, LISTENER_HBONE, LISTENER_INBOUND_PLAIN, LISTENER_OUTBOUND, LISTENER_SLOTS, MAX_LOCAL_PODS, PodInfo,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, BPF_TCP_TIME_WAIT, TC_ACT_OK, TC_ACT_SHOT, bpf_sock, bpf_sock_tuple,
    },
    helpers::generated::{bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::{classifier, map, sk_lookup},
    maps::{HashMap, PerCpuArray, SockMap},
    programs::{SkLookupContext, TcContext},
};

/// ztunnel's listening sockets, by `LISTENER_*` index. An entry disappears
/// when its socket closes, which is what makes capture fail closed.
#[map]
static LISTENERS: SockMap = SockMap::pinned(LISTENER_SLOTS, 0);

/// The node's local pods, keyed by IPv4 address as it appears on the wire.
#[map]
static PODS: HashMap<u32, PodInfo> = HashMap::pinned(MAX_LOCAL_PODS, 0);

/// Dropped packets by reason (`COUNTER_*`), per CPU; ztunnel sums them.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

const ETH_HLEN: usize = 14;
const AF_INET: u32 = 2;
const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// The fields of an IPv4 TCP segment that capture decides on. Addresses and
/// ports stay in network byte order, as the socket lookup wants them.
struct Segment {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    flags: u8,
}

impl Segment {
    fn is_new_connection(&self) -> bool {
        self.flags & TCP_FLAG_SYN != 0 && self.flags & TCP_FLAG_ACK == 0
    }
}

/// What to do with a packet that matched nothing else.
enum Verdict {
    Pass,
    Steered,
    Drop,
}

impl Verdict {
    fn action(self) -> i32 {
        match self {
            Verdict::Pass | Verdict::Steered => TC_ACT_OK as i32,
            Verdict::Drop => TC_ACT_SHOT as i32,
        }
    }
}

#[classifier]
pub fn pod_ingress(ctx: TcContext) -> i32 {
    try_pod_ingress(&ctx).action()
}

fn try_pod_ingress(ctx: &TcContext) -> Verdict {
    let Some(seg) = parse(ctx) else {
        return Verdict::Pass;
    };
    if borrowed_source(ctx, seg.saddr) {
        count(COUNTER_SPOOFED_SOURCE);
        return Verdict::Drop;
    }
    let time_wait = match existing_socket(ctx, &seg) {
        Existing::Assigned(verdict) => return verdict,
        Existing::TimeWait => true,
        Existing::None => false,
    };
    if !seg.is_new_connection() {
        return Verdict::Pass;
    }
    let slot = if enrolled(seg.saddr) {
        LISTENER_OUTBOUND
    } else if enrolled(seg.daddr) {
        inbound_listener(&seg)
    } else {
        return Verdict::Pass;
    };
    capture_new(ctx, slot, time_wait)
}

/// Whether `saddr` is a local pod's address arriving anywhere but that
/// pod's own interface (the veth its host route points at): another pod,
/// or another host on the underlay, borrowing it. A pod whose interface is
/// not known yet is given the benefit of the doubt (it cannot send yet,
/// and nothing can answer a borrower of its address).
fn borrowed_source(ctx: &TcContext, saddr: u32) -> bool {
    // SAFETY: the map value is a plain `PodInfo` that is only read here.
    let Some(owner) = (unsafe { PODS.get(&saddr) }) else {
        return false;
    };
    // SAFETY: `skb` points at this program's context.
    let arrived_on = unsafe { (*ctx.skb.skb).ingress_ifindex };
    owner.ifindex != 0 && owner.ifindex != arrived_on
}

/// Counts one dropped packet under `reason`.
fn count(reason: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot: no other program run touches it meanwhile.
        unsafe { *counter += 1 };
    }
}

fn enrolled(addr: u32) -> bool {
    // SAFETY: the map value is a plain `PodInfo` that is only read here.
    unsafe { PODS.get(&addr) }.is_some_and(PodInfo::enrolled)
}

/// New connections to an enrolled pod: HBONE's port to the HBONE listener,
/// any other to the plaintext one (which applies PeerAuthentication).
fn inbound_listener(seg: &Segment) -> u32 {
    if seg.dport == HBONE_PORT.to_be() { LISTENER_HBONE } else { LISTENER_INBOUND_PLAIN }
}

#[classifier]
pub fn node_ingress(ctx: TcContext) -> i32 {
    try_node_ingress(&ctx).action()
}

fn try_node_ingress(ctx: &TcContext) -> Verdict {
    let Some(seg) = parse(ctx) else {
        return Verdict::Pass;
    };
    if borrowed_source(ctx, seg.saddr) {
        count(COUNTER_SPOOFED_SOURCE);
        return Verdict::Drop;
    }
    // SAFETY: as above, a read of a plain value.
    if unsafe { PODS.get(&seg.daddr) }.is_none() {
        return Verdict::Pass;
    }
    let time_wait = match existing_socket(ctx, &seg) {
        Existing::Assigned(verdict) => return verdict,
        Existing::TimeWait => true,
        Existing::None => false,
    };
    if seg.is_new_connection() && enrolled(seg.daddr) {
        return capture_new(ctx, inbound_listener(&seg), time_wait);
    }
    Verdict::Pass
}

/// A new connection for listener `slot`. Normally it is assigned straight
/// to the listener. When a TIME_WAIT socket still holds its tuple, it is
/// only marked for local delivery: the kernel retires the TIME_WAIT and asks
/// `listener_lookup` for a listener. Either way, with no listener (ztunnel
/// is down) the SYN is dropped: the client retransmits, and the connection
/// proceeds once ztunnel is back. It never leaves unproxied.
fn capture_new(ctx: &TcContext, slot: u32, time_wait: bool) -> Verdict {
    let Some(listener) = listener(slot) else {
        count(COUNTER_NO_LISTENER);
        return Verdict::Drop;
    };
    if time_wait {
        // SAFETY: releases the reference `listener` took.
        unsafe { bpf_sk_release(listener.cast()) };
        mark(ctx);
        return Verdict::Steered;
    }
    assign(ctx, listener)
}

/// Picks ztunnel's listener for a SYN the tc programs marked for local
/// delivery because of a TIME_WAIT socket (see `capture_new`). Other lookups
/// are left alone.
#[sk_lookup]
pub fn listener_lookup(ctx: SkLookupContext) -> u32 {
    try_listener_lookup(&ctx)
}

fn try_listener_lookup(ctx: &SkLookupContext) -> u32 {
    // SAFETY: the kernel passes a valid lookup context.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.family != AF_INET || lookup.protocol != u32::from(IPPROTO_TCP) {
        return SK_PASS;
    }
    let slot = if enrolled(lookup.remote_ip4) {
        LISTENER_OUTBOUND
    } else if enrolled(lookup.local_ip4) {
        // `local_port` is in host byte order.
        if lookup.local_port == u32::from(HBONE_PORT) { LISTENER_HBONE } else { LISTENER_INBOUND_PLAIN }
    } else {
        return SK_PASS;
    };
    match LISTENERS.redirect_sk_lookup(ctx, slot, 0) {
        Ok(()) => SK_PASS,
        // No listener: drop, never deliver around the mesh.
        Err(_) => SK_DROP,
    }
}

fn parse(ctx: &TcContext) -> Option<Segment> {
    if ctx.skb.protocol() != u32::from(ETH_P_IP.to_be()) {
        return None;
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
    if version_ihl >> 4 != 4 || ctx.load::<u8>(ETH_HLEN + 9).ok()? != IPPROTO_TCP {
        return None;
    }
    // Only the first fragment carries the TCP header.
    let frag_off: u16 = ctx.load(ETH_HLEN + 6).ok()?;
    if u16::from_be(frag_off) & 0x1fff != 0 {
        return None;
    }
    let l4 = ETH_HLEN + usize::from(version_ihl & 0x0f) * 4;
    Some(Segment {
        saddr: ctx.load(ETH_HLEN + 12).ok()?,
        daddr: ctx.load(ETH_HLEN + 16).ok()?,
        sport: ctx.load(l4).ok()?,
        dport: ctx.load(l4 + 2).ok()?,
        flags: ctx.load(l4 + 13).ok()?,
    })
}

/// What the socket lookup for a segment's tuple found.
enum Existing {
    /// A ztunnel socket owns the connection; the packet went to it.
    Assigned(Verdict),
    /// A TIME_WAIT socket still holds the tuple.
    TimeWait,
    /// Nothing relevant (or a listener, which a new SYN does not belong to).
    None,
}

/// Packets of a connection that a ztunnel socket already owns (its accepted
/// side, or its own transparent connection to a pod) go to that socket.
fn existing_socket(ctx: &TcContext, seg: &Segment) -> Existing {
    // SAFETY: an all-zero tuple is valid; the ipv4 arm is filled in next.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4.saddr = seg.saddr;
    tuple.__bindgen_anon_1.ipv4.daddr = seg.daddr;
    tuple.__bindgen_anon_1.ipv4.sport = seg.sport;
    tuple.__bindgen_anon_1.ipv4.dport = seg.dport;
    // SAFETY: the context and tuple pointers are valid for the call; the size
    // is that of the ipv4 arm, as the helper requires.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.as_ptr(),
            &mut tuple,
            core::mem::size_of_val(&tuple.__bindgen_anon_1.ipv4) as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return Existing::None;
    }
    // SAFETY: `sk` is a non-null socket reference from the lookup; `state` is
    // readable on every socket kind it returns.
    let state = unsafe { (*sk).state };
    if state == BPF_TCP_LISTEN || state == BPF_TCP_TIME_WAIT {
        // SAFETY: releases the reference the lookup took.
        unsafe { bpf_sk_release(sk.cast()) };
        return if state == BPF_TCP_TIME_WAIT { Existing::TimeWait } else { Existing::None };
    }
    Existing::Assigned(assign(ctx, sk))
}

/// ztunnel's listener in `slot`, referenced (release it), if it is up.
fn listener(slot: u32) -> Option<*mut bpf_sock> {
    let map = core::ptr::from_ref(&LISTENERS).cast_mut().cast();
    // SAFETY: `map` is this program's sockmap and `slot` lives on the stack
    // for the call. A sockmap lookup returns a referenced socket or null.
    let sk = unsafe { bpf_map_lookup_elem(map, core::ptr::from_ref(&slot).cast()) };
    (!sk.is_null()).then_some(sk.cast())
}

/// Assigns the packet to `sk`, releases the reference and marks the packet
/// for local delivery. A failed assignment drops: letting the packet through
/// would let it bypass the mesh.
fn assign(ctx: &TcContext, sk: *mut bpf_sock) -> Verdict {
    // SAFETY: `sk` is a referenced socket; it is released exactly once here.
    let ret = unsafe { bpf_sk_assign(ctx.as_ptr(), sk.cast(), 0) };
    unsafe { bpf_sk_release(sk.cast()) };
    if ret != 0 {
        count(COUNTER_ASSIGN_FAILED);
        return Verdict::Drop;
    }
    mark(ctx);
    Verdict::Steered
}

/// Marks the packet for local delivery (policy routing, table 100).
fn mark(ctx: &TcContext) {
    // SAFETY: `skb` points at this program's context.
    let mark = unsafe { (*ctx.skb.skb).mark };
    ctx.skb.set_mark((mark & !CAPTURE_MARK_MASK) | CAPTURE_MARK);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
