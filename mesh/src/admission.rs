//! How many connections a listener holds at once, in all and per peer
//! address; every listener of ours (the data path's, the controller's)
//! admits connections through an [`Admission`]. Loopback peers count only
//! towards the total: on a node, that is the agent's own same-node tunnels.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

/// How many connections a listener takes at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectionLimits {
    pub total: usize,
    pub per_peer: usize,
}

/// Live connections of one listener, in all and per peer address.
#[derive(Clone, Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    live: Arc<Mutex<Live>>,
}

#[derive(Debug, Default)]
struct Live {
    total: usize,
    /// Only peers with live connections: bounded by `total`.
    per_peer: HashMap<IpAddr, usize>,
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct Admitted {
    live: Arc<Mutex<Live>>,
    peer: IpAddr,
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Self {
        Self { limits, live: Arc::default() }
    }

    /// A place for a connection from `peer`, if the limits allow one.
    pub fn admit(&self, peer: IpAddr) -> Option<Admitted> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let from_peer = live.per_peer.get(&peer).copied().unwrap_or(0);
        if live.total >= self.limits.total || (!peer.is_loopback() && from_peer >= self.limits.per_peer) {
            return None;
        }
        live.total += 1;
        *live.per_peer.entry(peer).or_default() += 1;
        Some(Admitted { live: self.live.clone(), peer })
    }

    /// Which limit a refused peer hit, for the metric.
    pub fn exceeded(&self) -> &'static str {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live.total >= self.limits.total { "total" } else { "per_peer" }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.total = live.total.saturating_sub(1);
        if let Some(count) = live.per_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                live.per_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_in_all_and_per_peer_and_places_come_back() {
        let admission = Admission::new(ConnectionLimits { total: 3, per_peer: 2 });
        let (a, b): (IpAddr, IpAddr) = ("10.1.0.2".parse().unwrap(), "10.1.0.3".parse().unwrap());
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert!(admission.admit(a).is_none());
        assert_eq!(admission.exceeded(), "per_peer");
        let _third = admission.admit(b).unwrap();
        assert!(admission.admit(b).is_none());
        assert_eq!(admission.exceeded(), "total");
        drop(first);
        assert!(admission.admit(a).is_some(), "a closed connection gives its place back");
    }

    #[test]
    fn loopback_is_limited_only_in_all() {
        let admission = Admission::new(ConnectionLimits { total: 3, per_peer: 1 });
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| admission.admit(local).unwrap()).collect();
        assert!(admission.admit(local).is_none());
        drop(held);
        assert!(admission.live.lock().unwrap().per_peer.is_empty(), "no entry outlives its connections");
    }
}
