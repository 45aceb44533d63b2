//! A validated config plus the indexes the data path looks things up in.
//! Built once per config version; lookups never allocate.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rand::Rng as _;

use super::routing::{Waypoint, waypoint_of, waypoint_of_workload};
use super::validate::validate;
use super::{ConfigError, MeshConfig, Namespace, Service, ServicePort, Workload, enrolled};
use crate::authz::{Authorizer, DEFAULT_ROOT_NAMESPACE};
use crate::identity::Identity;

/// An immutable, validated config with its indexes.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    config: Arc<MeshConfig>,
    workload_by_ip: HashMap<IpAddr, usize>,
    namespace_by_name: HashMap<String, usize>,
    service_by_vip: HashMap<IpAddr, usize>,
    /// Per service (same order as `config.services`), its endpoints' indexes.
    endpoints: Vec<Vec<usize>>,
    authorizer: Authorizer,
}

/// Where a connection to a service VIP and port should go.
#[derive(Clone, Debug)]
pub struct ServiceTarget<'a> {
    pub service: &'a Service,
    pub port: &'a ServicePort,
    pub endpoints: Vec<&'a Workload>,
}

impl Snapshot {
    pub fn new(config: MeshConfig) -> Result<Self, ConfigError> {
        Self::from_shared(Arc::new(config))
    }

    /// A snapshot over a config someone else holds too (the control
    /// stream keeps the one its next delta applies to), without a copy.
    pub fn from_shared(config: Arc<MeshConfig>) -> Result<Self, ConfigError> {
        validate(&config)?;
        let root_namespace = config.root_namespace.as_deref().unwrap_or(DEFAULT_ROOT_NAMESPACE);
        let authorizer = Authorizer::new(&config.authorization_policies, &config.peer_authentications, root_namespace)?;
        let workload_by_ip =
            config.workloads.iter().enumerate().flat_map(|(i, w)| w.ips.iter().map(move |ip| (*ip, i))).collect();
        let namespace_by_name = config.namespaces.iter().enumerate().map(|(i, ns)| (ns.name.clone(), i)).collect();
        let service_by_vip =
            config.services.iter().enumerate().flat_map(|(i, s)| s.vips.iter().map(move |vip| (*vip, i))).collect();
        let workloads = WorkloadIndex::new(&config);
        let endpoints = config.services.iter().map(|s| workloads.endpoints(s)).collect();
        Ok(Self { config, workload_by_ip, namespace_by_name, service_by_vip, endpoints, authorizer })
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::new(MeshConfig::from_yaml(text)?)
    }

    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    /// The compiled authorization and peer-authentication policies.
    pub fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    /// Services that select `workload`, for telemetry's `destination_service`.
    pub fn services_of<'a>(&'a self, workload: &'a Workload) -> impl Iterator<Item = &'a Service> + 'a {
        self.config
            .services
            .iter()
            .zip(&self.endpoints)
            .filter(move |(_, eps)| eps.iter().any(|&i| self.config.workloads[i].uid == workload.uid))
            .map(|(s, _)| s)
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Workload> {
        self.workload_by_ip.get(&ip).map(|&i| &self.config.workloads[i])
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespace_by_name.get(name).map(|&i| &self.config.namespaces[i])
    }

    pub fn is_enrolled(&self, workload: &Workload) -> bool {
        enrolled(workload, self.namespace(&workload.namespace))
    }

    /// Workloads scheduled on `node`.
    pub fn node_workloads<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Workload> + 'a {
        self.config.workloads.iter().filter(move |w| w.node == node)
    }

    /// Whether `ip` is some service's virtual IP, whatever the port.
    pub fn is_vip(&self, ip: IpAddr) -> bool {
        self.service_by_vip.contains_key(&ip)
    }

    /// The endpoints of the service at `index` in `config().services`.
    pub fn endpoints_of(&self, index: usize) -> impl Iterator<Item = &Workload> + '_ {
        self.endpoints.get(index).into_iter().flatten().map(|&i| &self.config.workloads[i])
    }

    /// The index in `config().services` of the service at `vip`.
    pub fn service_index_by_vip(&self, vip: IpAddr) -> Option<usize> {
        self.service_by_vip.get(&vip).copied()
    }

    /// The waypoints that take traffic for `workload`: its services'
    /// (for service traffic) and its own (for workload traffic).
    pub fn waypoints_serving<'a>(&'a self, workload: &'a Workload) -> impl Iterator<Item = &'a Waypoint> + 'a {
        let own = waypoint_of_workload(&self.config, workload).filter(|w| w.takes_workload_traffic());
        let services = self
            .services_of(workload)
            .filter_map(|s| waypoint_of(&self.config, s))
            .filter(|w| w.takes_service_traffic());
        own.into_iter().chain(services)
    }

    /// Whether `identity` is what the pods of `waypoint` run as.
    pub fn is_waypoint_identity(&self, waypoint: &Waypoint, identity: &Identity) -> bool {
        self.config.workloads.iter().any(|w| waypoint.has_pod(w) && w.identity(&identity.trust_domain) == *identity)
    }

    /// The service behind `vip:port`, or `None` if `vip` is not a service
    /// VIP or the service does not expose `port`.
    pub fn service_target(&self, vip: IpAddr, port: u16) -> Option<ServiceTarget<'_>> {
        let &index = self.service_by_vip.get(&vip)?;
        let service = &self.config.services[index];
        let port = service.ports.iter().find(|p| p.port == port)?;
        let endpoints = self.endpoints[index].iter().map(|&i| &self.config.workloads[i]).collect();
        Some(ServiceTarget { service, port, endpoints })
    }
}

impl ServiceTarget<'_> {
    /// Picks an endpoint uniformly at random, as Istio's ztunnel does for L4
    /// load balancing. Only endpoints with an address of the VIP's family count.
    pub fn pick_endpoint(&self, vip: IpAddr) -> Option<SocketAddr> {
        let candidates: Vec<IpAddr> = self
            .endpoints
            .iter()
            .filter_map(|w| w.ips.iter().find(|ip| ip.is_ipv4() == vip.is_ipv4()).copied())
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let ip = candidates[rand::rng().random_range(0..candidates.len())];
        Some(SocketAddr::new(ip, self.port.target()))
    }
}

/// Workloads by namespace and label, and by UID, so resolving every
/// service's endpoints costs each service the workloads that carry its
/// selector's first label, not the whole mesh.
struct WorkloadIndex<'a> {
    config: &'a MeshConfig,
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<usize>>,
    by_uid: HashMap<&'a str, usize>,
}

impl<'a> WorkloadIndex<'a> {
    fn new(config: &'a MeshConfig) -> Self {
        let mut by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        let mut by_uid = HashMap::with_capacity(config.workloads.len());
        for (i, w) in config.workloads.iter().enumerate() {
            for (key, value) in &w.labels {
                by_label.entry((w.namespace.as_str(), key.as_str(), value.as_str())).or_default().push(i);
            }
            by_uid.insert(w.uid.as_str(), i);
        }
        Self { config, by_label, by_uid }
    }

    /// A service's endpoints: the workloads it names, then those its
    /// selector matches in its own namespace, without repeats.
    fn endpoints(&self, service: &Service) -> Vec<usize> {
        let named = service.endpoints.iter().filter_map(|uid| self.by_uid.get(uid.as_str()).copied());
        // An empty selector selects nothing, as in Kubernetes.
        let selector = service.selector.as_ref().and_then(|sel| Some((sel, sel.iter().next()?)));
        let candidates = selector.and_then(|(_, (key, value))| {
            self.by_label.get(&(service.namespace.as_str(), key.as_str(), value.as_str()))
        });
        let selected = candidates.into_iter().flatten().copied().filter(|&i| {
            let labels = &self.config.workloads[i].labels;
            selector.is_some_and(|(sel, _)| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        });
        let mut all: Vec<usize> = named.chain(selected).collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}
