//! Everything that can be wrong with a config, each error naming the
//! offending object and value so the user can fix it without guessing.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::hash::Hash;

use super::{MeshConfig, Service, Workload};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not valid YAML, or a field that does not exist or has the wrong type.
    /// The message carries the parser's line and column.
    #[error("invalid config: {0}")]
    Syntax(String),
    #[error("{kind} has an empty `{field}`")]
    EmptyField { kind: &'static str, field: &'static str },
    #[error("duplicate {kind} {value:?}: used by {first} and {second}")]
    Duplicate { kind: &'static str, value: String, first: String, second: String },
    #[error("service {service} port {port}: ports must be between 1 and 65535")]
    InvalidPort { service: String, port: u16 },
    #[error("service {service} names endpoint {uid:?}, but no workload has that uid")]
    UnknownEndpoint { service: String, uid: String },
    /// An L7 route or destination policy that cannot be applied.
    #[error("{0}")]
    Routing(String),
    #[error(transparent)]
    Policy(#[from] crate::authz::PolicyError),
}

/// Checks what the types alone cannot: unique identifiers and addresses,
/// non-empty names, valid ports and resolvable endpoint references. Agents
/// run this on every version, so it borrows what it compares and spells
/// out names only for an error.
pub(super) fn validate(config: &MeshConfig) -> Result<(), ConfigError> {
    let mut uids = Seen::new("workload uid", config.workloads.len());
    let mut names = Seen::new("workload name", config.workloads.len());
    let mut addresses = Seen::new("IP", config.workloads.len() + config.services.len());
    for w in &config.workloads {
        check_workload(w)?;
        uids.insert(w.uid.as_str(), Owner::Workload(w))?;
        names.insert(QualifiedName(&w.namespace, &w.name), Owner::Workload(w))?;
        for ip in &w.ips {
            addresses.insert(*ip, Owner::Workload(w))?;
        }
    }
    let mut services = Seen::new("service", config.services.len());
    for s in &config.services {
        check_service(s)?;
        services.insert(QualifiedName(&s.namespace, &s.name), Owner::Service(s))?;
        for vip in &s.vips {
            addresses.insert(*vip, Owner::Service(s))?;
        }
        if let Some(uid) = s.endpoints.iter().find(|uid| !uids.owners.contains_key(uid.as_str())) {
            return Err(ConfigError::UnknownEndpoint { service: Owner::Service(s).to_string(), uid: uid.clone() });
        }
    }
    let mut namespaces = Seen::new("namespace", config.namespaces.len());
    for ns in &config.namespaces {
        require("namespace", "name", &ns.name)?;
        namespaces.insert(ns.name.as_str(), Owner::Namespace(&ns.name))?;
    }
    super::routing::validate(config).map_err(ConfigError::Routing)
}

/// What one workload must satisfy on its own (the controller checks each
/// pod with this, so one bad pod is refused alone).
pub fn check_workload(w: &Workload) -> Result<(), ConfigError> {
    require("workload", "uid", &w.uid)?;
    require("workload", "name", &w.name)?;
    require("workload", "namespace", &w.namespace)?;
    require("workload", "node", &w.node)
}

/// What one service must satisfy on its own: names, and ports that are
/// valid and not repeated.
pub fn check_service(s: &Service) -> Result<(), ConfigError> {
    require("service", "name", &s.name)?;
    require("service", "namespace", &s.namespace)?;
    let mut ports = Seen::new("service port", s.ports.len());
    for p in &s.ports {
        if p.port == 0 || p.target_port == Some(0) {
            return Err(ConfigError::InvalidPort { service: Owner::Service(s).to_string(), port: 0 });
        }
        ports.insert(p.port, Owner::Service(s))?;
    }
    Ok(())
}

fn require(kind: &'static str, field: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::EmptyField { kind, field });
    }
    Ok(())
}

/// Who uses a value, named only when there is a clash to report.
#[derive(Clone, Copy)]
enum Owner<'a> {
    Workload(&'a Workload),
    Service(&'a Service),
    Namespace(&'a str),
}

impl fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Workload(w) => write!(f, "workload {}/{}", w.namespace, w.name),
            Owner::Service(s) => write!(f, "service {}/{}", s.namespace, s.name),
            Owner::Namespace(name) => write!(f, "namespace {name}"),
        }
    }
}

/// `namespace/name`, compared without building the string.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct QualifiedName<'a>(&'a str, &'a str);

impl fmt::Display for QualifiedName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

/// Remembers who first used each value, to name both parties of a clash.
struct Seen<'a, K> {
    kind: &'static str,
    owners: HashMap<K, Owner<'a>>,
}

impl<'a, K: Eq + Hash + fmt::Display> Seen<'a, K> {
    fn new(kind: &'static str, capacity: usize) -> Self {
        Self { kind, owners: HashMap::with_capacity(capacity) }
    }

    fn insert(&mut self, value: K, owner: Owner<'a>) -> Result<(), ConfigError> {
        match self.owners.entry(value) {
            Entry::Occupied(first) => Err(ConfigError::Duplicate {
                kind: self.kind,
                value: first.key().to_string(),
                first: first.get().to_string(),
                second: owner.to_string(),
            }),
            Entry::Vacant(slot) => {
                slot.insert(owner);
                Ok(())
            }
        }
    }
}
