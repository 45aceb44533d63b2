//! The data path. One module per phase, in the order traffic meets them:
//!
//! 1. [`accept`]: HBONE. TLS as the waypoint's identity, the caller's proven
//!    identity, CONNECT streams whose authority names a service `VIP:port`
//!    (or a pod `IP:port`) that this waypoint serves.
//! 2. [`detect`]: HTTP/1.1, HTTP/2 with prior knowledge, or opaque TCP
//!    ([`opaque`] forwards that with L4 policy only).
//! 3. [`authorize`]: AuthorizationPolicies bound to the waypoint (403, `RBAC`).
//! 4. [`route`]: the service's first matching rule (404, `NR`), its faults
//!    (`FI`, `DI`), a weighted destination, and the rule's [`actions`]:
//!    a redirect answers at once, a rewrite changes path and authority.
//! 5. [`balance`]: an endpoint of the destination (or its subset) by its
//!    load balancer (503, `UH`, when there is none).
//! 6. [`forward`]: an HBONE tunnel to the endpoint as the waypoint
//!    ([`upstream`] keeps the connections), the request with its timeout and
//!    retries (504, `UT`; 503, `UF`/`URX`); [`mirror`] sends shadow copies.
//! 7. [`respond`]: the waypoint's own answers, Envoy's bodies and flags.
//! 8. [`log`]: `istio_request*` metrics and the access line, once the
//!    response has ended.
//!
//! [`http`] runs phases 3–8 for each request of a connection.

pub mod accept;
mod actions;
mod authorize;
mod balance;
mod body;
mod detect;
mod forward;
mod http;
mod log;
mod mirror;
mod opaque;
mod respond;
mod route;
mod upstream;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh::certs::CertManager;
use mesh::identity::Identity;

pub use accept::Target;

use crate::state::State;

/// What every connection and request handler shares.
#[derive(Debug)]
pub struct Context {
    pub state: State,
    pub certs: CertManager,
    /// The waypoint's own identity: the TLS server's and the tunnels' upstream.
    pub identity: Identity,
    /// The Gateway this waypoint is (`namespace`, `name`).
    pub gateway: (String, String),
    pub cluster_id: Arc<str>,
    pub upstreams: upstream::Upstreams,
    pub balancers: balance::Balancers,
    pub mirrors: mirror::Mirrors,
    next_id: AtomicU64,
}

impl Context {
    pub fn new(
        state: State,
        certs: CertManager,
        identity: Identity,
        gateway: (String, String),
        settings: Settings,
    ) -> Self {
        let upstreams = upstream::Upstreams::new(certs.clone(), identity.clone(), settings.connect_timeout);
        Self {
            state,
            certs,
            identity,
            gateway,
            cluster_id: settings.cluster_id.into(),
            upstreams,
            balancers: balance::Balancers::default(),
            mirrors: mirror::Mirrors::default(),
            next_id: AtomicU64::new(1),
        }
    }

    fn connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn pool_stats(&self) -> mesh::hbone::pool::PoolStats {
        self.upstreams.pool_stats()
    }
}

/// The parts of the settings the data path reads.
#[derive(Clone, Debug)]
pub struct Settings {
    pub cluster_id: String,
    pub connect_timeout: Duration,
}

/// Who is calling, on one accepted tunnel.
#[derive(Debug)]
pub struct Downstream {
    pub id: u64,
    /// The caller's address: the tunnel's TCP peer, which the source
    /// ztunnel dials from the client pod's own IP.
    pub client_ip: IpAddr,
    pub identity: Identity,
    pub target: Target,
}
