//! The data path. Each listener has the same shape: `new()` binds and fails
//! fast, `address()` reports where, `run(self, drain)` accepts until drained.
//!
//! * [`outbound`]: captured connections from local enrolled pods.
//!
//! Every connection gets one tracing span and, when it ends, exactly one
//! line on the `access` target.

mod error;
pub mod outbound;
mod socket;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use error::ProxyError;

use crate::state::State;

/// What every connection handler needs, shared by all of them.
#[derive(Debug)]
pub struct ProxyContext {
    pub state: State,
    /// Ports the agent itself listens on; captured connections to them are refused.
    pub own_ports: Vec<u16>,
    pub connect_timeout: Duration,
    /// The node's own addresses, kept current by capture.
    local_addresses: RwLock<HashSet<IpAddr>>,
    next_id: AtomicU64,
}

impl ProxyContext {
    pub fn new(state: State, own_ports: Vec<u16>, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            state,
            own_ports,
            connect_timeout,
            local_addresses: RwLock::default(),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn set_local_addresses(&self, addresses: HashSet<IpAddr>) {
        if let Ok(mut current) = self.local_addresses.write() {
            *current = addresses;
        }
    }

    /// Whether `addr` is one of this agent's own listeners: forwarding there
    /// would loop a captured connection back into ztunnel.
    fn is_own_address(&self, addr: SocketAddr) -> bool {
        if !self.own_ports.contains(&addr.port()) {
            return false;
        }
        addr.ip().is_loopback()
            || addr.ip().is_unspecified()
            || self.local_addresses.read().is_ok_and(|local| local.contains(&addr.ip()))
    }

    /// A process-unique connection id for spans and access logs.
    fn connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
