//! Everything that can be wrong with a config, each error naming the
//! offending object and value so the user can fix it without guessing.

use std::collections::{HashMap, HashSet};

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
/// non-empty names, valid ports and resolvable endpoint references.
pub(super) fn validate(config: &MeshConfig) -> Result<(), ConfigError> {
    let mut uids = Seen::new("workload uid");
    let mut names = Seen::new("workload name");
    let mut addresses = Seen::new("IP");
    for w in &config.workloads {
        check_workload(w)?;
        let who = format!("workload {}", w.qualified_name());
        uids.insert(w.uid.clone(), &who)?;
        names.insert(w.qualified_name(), &who)?;
        for ip in &w.ips {
            addresses.insert(ip.to_string(), &who)?;
        }
    }
    let known_uids: HashSet<&str> = config.workloads.iter().map(|w| w.uid.as_str()).collect();
    let mut services = Seen::new("service");
    for s in &config.services {
        check_service(s)?;
        let who = format!("service {}/{}", s.namespace, s.name);
        services.insert(format!("{}/{}", s.namespace, s.name), &who)?;
        for vip in &s.vips {
            addresses.insert(vip.to_string(), &who)?;
        }
        if let Some(uid) = s.endpoints.iter().find(|uid| !known_uids.contains(uid.as_str())) {
            return Err(ConfigError::UnknownEndpoint { service: who, uid: uid.clone() });
        }
    }
    let mut namespaces = Seen::new("namespace");
    for ns in &config.namespaces {
        require("namespace", "name", &ns.name)?;
        namespaces.insert(ns.name.clone(), &format!("namespace {}", ns.name))?;
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
    let who = format!("service {}/{}", s.namespace, s.name);
    let mut ports = Seen::new("service port");
    for p in &s.ports {
        if p.port == 0 || p.target_port == Some(0) {
            return Err(ConfigError::InvalidPort { service: who, port: 0 });
        }
        ports.insert(p.port.to_string(), &who)?;
    }
    Ok(())
}

fn require(kind: &'static str, field: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::EmptyField { kind, field });
    }
    Ok(())
}

/// Remembers who first used each value, to name both parties of a clash.
struct Seen {
    kind: &'static str,
    owners: HashMap<String, String>,
}

impl Seen {
    fn new(kind: &'static str) -> Self {
        Self { kind, owners: HashMap::new() }
    }

    fn insert(&mut self, value: String, owner: &str) -> Result<(), ConfigError> {
        if let Some(first) = self.owners.get(&value) {
            return Err(ConfigError::Duplicate {
                kind: self.kind,
                value,
                first: first.clone(),
                second: owner.to_owned(),
            });
        }
        self.owners.insert(value, owner.to_owned());
        Ok(())
    }
}
