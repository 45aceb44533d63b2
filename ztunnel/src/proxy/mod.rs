//! The data path. Every listener has the same shape: `new()` binds and fails
//! fast, `address()` reports where, `run(self, drain)` accepts until drained.
//!
//! * [`outbound`]: captured connections from local enrolled pods: to an
//!   enrolled destination over HBONE, to anything else in plaintext.
//! * [`inbound`]: HBONE (mTLS + CONNECT) to local enrolled pods, port 15008.
//! * [`inbound_plain`]: plaintext to local enrolled pods from outside the
//!   mesh, subject to PeerAuthentication and authorization.
//!
//! Every connection gets one tracing span and ends with exactly one line on
//! the `access` target ([`record`]).

mod client_address;
mod connections;
mod error;
mod hbone_dial;
pub mod inbound;
pub mod inbound_plain;
mod listener;
pub mod outbound;
mod record;
mod relay;
mod socket;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use client_address::FORGED_SOURCE;
pub use connections::Connections;
pub use error::ProxyError;
pub use hbone_dial::HboneDialer;
pub use listener::{ConnectionLimits, LISTENER_REFUSED};
use mesh::config::{Snapshot, Workload};
use mesh::hbone::pool::Pool;
use mesh::hbone::server::ServerLimits;
use mesh::tcp::TcpOptions;

use crate::state::State;
use mesh::certs::CertManager;

/// What every connection handler needs, shared by all of them.
#[derive(Debug)]
pub struct ProxyContext {
    pub node: String,
    pub trust_domain: String,
    /// The cluster's name in telemetry (`source_cluster`, baggage).
    pub cluster_id: String,
    pub state: State,
    pub certs: CertManager,
    pub pool: Pool,
    /// Inbound connections, re-checked against every new policy.
    pub connections: Connections,
    /// Ports the agent itself listens on; captured connections to them are refused.
    pub own_ports: Vec<u16>,
    pub connect_timeout: Duration,
    /// Keepalive and user timeout of every socket the data path opens or accepts.
    pub tcp: TcpOptions,
    /// What one HBONE client connection may cost.
    pub hbone_limits: ServerLimits,
    /// Connections the outbound and plaintext listeners take, in all and per peer.
    pub connection_limits: ConnectionLimits,
    /// Connections the HBONE listener takes, in all and per peer.
    pub hbone_connection_limits: ConnectionLimits,
    /// The node's own addresses, kept current by capture.
    local_addresses: RwLock<HashSet<IpAddr>>,
    next_id: AtomicU64,
}

/// How a [`ProxyContext`] is made.
#[derive(Debug)]
pub struct ContextSettings {
    pub node: String,
    pub trust_domain: String,
    pub cluster_id: String,
    pub own_ports: Vec<u16>,
    pub connect_timeout: Duration,
    pub tcp: TcpOptions,
    pub hbone_limits: ServerLimits,
    pub connection_limits: ConnectionLimits,
    pub hbone_connection_limits: ConnectionLimits,
}

impl ProxyContext {
    pub fn new(settings: ContextSettings, state: State, certs: CertManager, pool: Pool) -> Arc<Self> {
        Arc::new(Self {
            node: settings.node,
            trust_domain: settings.trust_domain,
            cluster_id: settings.cluster_id,
            state,
            certs,
            pool,
            connections: Connections::default(),
            own_ports: settings.own_ports,
            connect_timeout: settings.connect_timeout,
            tcp: settings.tcp,
            hbone_limits: settings.hbone_limits,
            connection_limits: settings.connection_limits,
            hbone_connection_limits: settings.hbone_connection_limits,
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

    /// A process-unique id for spans and access logs.
    fn connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The enrolled workload at `ip` on node `node`, if there is one.
pub fn local_enrolled<'a>(snapshot: &'a Snapshot, node: &str, ip: IpAddr) -> Option<&'a Workload> {
    snapshot.workload_by_ip(ip).filter(|w| w.node == node && snapshot.is_enrolled(w))
}

#[cfg(test)]
mod future_sizes {
    //! Each connection's handler future lives on the heap for as long as the
    //! connection, so its size is memory per connection. These budgets catch
    //! a change that inlines a large buffer or a big nested future into one.
    //! (A tunnel's streams share one TLS connection, hence the larger
    //! budget for that handler: it holds the handshake and the h2 server.)

    use std::mem::size_of;

    /// The size of the future `handler` returns, without calling it.
    fn future_size<Args, F: Handler<Args>>(_handler: F) -> usize {
        size_of::<F::Future>()
    }

    trait Handler<Args> {
        type Future;
    }

    macro_rules! handler {
        ($($arg:ident),*) => {
            impl<F, Fut, $($arg),*> Handler<($($arg,)*)> for F
            where
                F: Fn($($arg),*) -> Fut,
            {
                type Future = Fut;
            }
        };
    }
    handler!(A, B, C);
    handler!(A, B, C, D);
    handler!(A, B, C, D, E, G);

    #[test]
    fn per_connection_futures_stay_small() {
        let sizes = [
            ("outbound connection", future_size(super::outbound::handle), 3 * 1024),
            ("inbound plaintext connection", future_size(super::inbound_plain::handle), 3 * 1024),
            ("inbound HBONE stream", future_size(super::inbound::handle_stream), 3 * 1024),
            ("inbound HBONE connection", future_size(super::inbound::handle_connection), 10 * 1024),
        ];
        for (what, size, budget) in sizes {
            assert!(size <= budget, "{what} handler future is {size} bytes, over its {budget}-byte budget");
        }
    }
}
