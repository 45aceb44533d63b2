//! Phase 5, balance: the endpoints of a destination (its service's,
//! narrowed to a DestinationRule subset's labels), and one of them by the
//! DestinationRule's load balancer for that subset and port. Istio's
//! default, `LEAST_REQUEST`, is Envoy's: the less loaded of two drawn at
//! random (by requests in flight from this waypoint). `ROUND_ROBIN` takes
//! the endpoints in turn, per destination; `RANDOM` draws one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use mesh::config::Workload;
use mesh::config::routing::LoadBalancer;
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

/// Destinations whose round-robin turn is remembered; past this, turns
/// start over (the config changed a lot, or something is wrong).
const MAX_ROTATIONS: usize = 10_000;

/// A destination's host, subset and service port.
type DestinationKey = (String, Option<String>, u16);

/// What the load balancers remember: requests in flight per endpoint IP,
/// across all of this waypoint's destinations, and each destination's
/// round-robin turn.
#[derive(Clone, Debug, Default)]
pub struct Balancers {
    active: Arc<Mutex<HashMap<IpAddr, u32>>>,
    rotations: Arc<Mutex<HashMap<DestinationKey, usize>>>,
}

/// One request in flight to an endpoint; counted until dropped.
#[derive(Debug)]
pub struct InFlight {
    loads: Balancers,
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

impl Balancers {
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

    /// The next endpoint in turn for `key`.
    fn round_robin<T: Copy>(&self, key: DestinationKey, candidates: &[T]) -> Option<T> {
        if candidates.is_empty() {
            return None;
        }
        let mut rotations = self.rotations.lock().unwrap_or_else(PoisonError::into_inner);
        if rotations.len() >= MAX_ROTATIONS && !rotations.contains_key(&key) {
            rotations.clear();
        }
        let turn = rotations.entry(key).or_default();
        let chosen = candidates[*turn % candidates.len()];
        *turn = turn.wrapping_add(1);
        Some(chosen)
    }

    fn choose<'a>(
        &self,
        balancer: LoadBalancer,
        key: DestinationKey,
        candidates: &[(&'a Workload, IpAddr)],
    ) -> Option<(&'a Workload, IpAddr)> {
        match balancer {
            LoadBalancer::LeastRequest => self.least_request(candidates),
            LoadBalancer::RoundRobin => self.round_robin(key, candidates),
            LoadBalancer::Random if candidates.is_empty() => None,
            LoadBalancer::Random => Some(candidates[rand::random_range(0..candidates.len())]),
        }
    }
}

/// Picks the endpoint for `destination` (reached through `target`).
pub fn pick(
    table: &RouteTable,
    balancers: &Balancers,
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
    let policy = table.policy_for(destination.host);
    let subset = match destination.subset {
        None => None,
        Some(name) => {
            let subsets = policy.map(|p| p.subsets.as_slice()).unwrap_or_default();
            Some(subsets.iter().find(|s| s.name == name).ok_or(Failure::NoHealthyUpstream)?)
        }
    };
    let candidates: Vec<(&Workload, IpAddr)> = snapshot
        .endpoints_of(index)
        .filter(|w| subset.is_none_or(|s| s.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))))
        .filter_map(|w| w.ips.iter().find(|ip| ip.is_ipv4()).or(w.ips.first()).map(|ip| (w, *ip)))
        .collect();
    let host_policy = policy.map(|p| &p.traffic_policy);
    let balancer = match subset {
        Some(s) => s.traffic_policy.resolve(host_policy, port, |p| p.load_balancer.as_ref()),
        None => host_policy.and_then(|p| p.resolve(None, port, |p| p.load_balancer.as_ref())),
    };
    let key = (destination.host.to_owned(), destination.subset.map(str::to_owned), port);
    let (workload, ip) =
        balancers.choose(balancer.copied().unwrap_or_default(), key, &candidates).ok_or(Failure::NoHealthyUpstream)?;
    Ok(Endpoint::of(workload, ip, service_port.target(), trust_domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_takes_turns_per_destination() {
        let balancers = Balancers::default();
        let key = |host: &str| (host.to_owned(), None, 80);
        let picks: Vec<u8> = (0..6).filter_map(|_| balancers.round_robin(key("a"), &[1, 2, 3])).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        assert_eq!(balancers.round_robin(key("b"), &[7, 8]), Some(7), "another destination has its own turn");
        assert_eq!(balancers.round_robin::<u8>(key("c"), &[]), None);
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let balancers = Balancers::default();
        let (busy, idle) = (Workload { name: "busy".into(), ..Default::default() }, Workload::default());
        let (busy_ip, idle_ip): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let _held: Vec<InFlight> = (0..3).map(|_| balancers.start(busy_ip)).collect();
        let candidates = [(&busy, busy_ip), (&idle, idle_ip)];
        for _ in 0..20 {
            let chosen = balancers.least_request(&candidates).map(|(_, ip)| ip);
            assert_eq!(chosen, Some(idle_ip), "of two, the less loaded");
        }
    }
}
