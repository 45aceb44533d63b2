//! Phase 5, balance: the endpoints of a destination (its service's,
//! narrowed to a DestinationRule subset's labels), and one of them by the
//! load balancer. Istio's default, `LEAST_REQUEST`, is Envoy's: the less
//! loaded of two drawn at random (by requests in flight from this waypoint).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use mesh::config::Workload;
use mesh::identity::Identity;

use super::accept::Target;
use super::log::Peer;
use super::respond::Failure;
use crate::state::RouteTable;

/// Where one attempt goes.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The pod's IP and the port the workload listens on.
    pub addr: SocketAddr,
    pub identity: Identity,
    pub peer: Peer,
}

impl Endpoint {
    fn of(workload: &Workload, ip: IpAddr, port: u16, trust_domain: &str) -> Self {
        let identity = workload.identity(trust_domain);
        Self { addr: SocketAddr::new(ip, port), peer: Peer::of(workload, &identity), identity }
    }
}

/// A destination as routing named it.
#[derive(Debug)]
pub struct Destination<'a> {
    pub host: &'a str,
    pub subset: Option<&'a str>,
    /// The service port; the one the request arrived for when unset.
    pub port: Option<u16>,
}

/// Requests in flight per endpoint IP, across all of this waypoint's
/// destinations.
#[derive(Clone, Debug, Default)]
pub struct Loads {
    active: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// One request in flight to an endpoint; counted until dropped.
#[derive(Debug)]
pub struct InFlight {
    loads: Loads,
    ip: IpAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut active = self.loads.active.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = active.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                active.remove(&self.ip);
            }
        }
    }
}

impl Loads {
    fn load(&self, ip: IpAddr) -> u32 {
        self.active.lock().unwrap_or_else(PoisonError::into_inner).get(&ip).copied().unwrap_or(0)
    }

    pub fn start(&self, ip: IpAddr) -> InFlight {
        *self.active.lock().unwrap_or_else(PoisonError::into_inner).entry(ip).or_default() += 1;
        InFlight { loads: self.clone(), ip }
    }

    /// Power of two choices over requests in flight.
    fn least_request<'a>(&self, candidates: &[(&'a Workload, IpAddr)]) -> Option<(&'a Workload, IpAddr)> {
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let first = rand::random_range(0..n);
                let second = (first + rand::random_range(1..n)) % n;
                let (a, b) = (candidates[first], candidates[second]);
                Some(if self.load(b.1) < self.load(a.1) { b } else { a })
            }
        }
    }
}

/// Picks the endpoint for `destination` (reached through `target`).
pub fn pick(
    table: &RouteTable,
    loads: &Loads,
    target: &Target,
    destination: &Destination<'_>,
    trust_domain: &str,
) -> Result<Endpoint, Failure> {
    let snapshot = &table.snapshot;
    if let Target::Workload { addr } = target {
        let workload = snapshot.workload_by_ip(addr.ip()).ok_or(Failure::NoHealthyUpstream)?;
        return Ok(Endpoint::of(workload, addr.ip(), addr.port(), trust_domain));
    }
    let arrived_port = match target {
        Target::Service { port, .. } => *port,
        Target::Workload { addr } => addr.port(),
    };
    let index = table.service_index(destination.host).ok_or(Failure::NoHealthyUpstream)?;
    let service = &snapshot.config().services[index];
    let port = destination.port.unwrap_or(arrived_port);
    let service_port = service.ports.iter().find(|p| p.port == port).ok_or(Failure::NoHealthyUpstream)?;
    let labels = match destination.subset {
        None => None,
        Some(name) => {
            let subsets = table.policy_for(destination.host).map(|p| p.subsets.as_slice()).unwrap_or_default();
            Some(&subsets.iter().find(|s| s.name == name).ok_or(Failure::NoHealthyUpstream)?.labels)
        }
    };
    let candidates: Vec<(&Workload, IpAddr)> = snapshot
        .endpoints_of(index)
        .filter(|w| labels.is_none_or(|l| l.iter().all(|(k, v)| w.labels.get(k) == Some(v))))
        .filter_map(|w| w.ips.iter().find(|ip| ip.is_ipv4()).or(w.ips.first()).map(|ip| (w, *ip)))
        .collect();
    let (workload, ip) = loads.least_request(&candidates).ok_or(Failure::NoHealthyUpstream)?;
    Ok(Endpoint::of(workload, ip, service_port.target(), trust_domain))
}
