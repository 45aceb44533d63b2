//! The mesh config model: what every agent needs to know to route and
//! enforce. The controller produces it from Kubernetes objects; until then
//! (and in local use) ztunnel reads it from a YAML file.
//!
//! The types here are the serialized form, field names in Kubernetes'
//! camelCase. [`Snapshot`] validates them and builds the lookup index the
//! data path uses.

pub mod delta;
mod enrollment;
pub mod policy;
pub mod routing;
mod snapshot;
mod validate;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use enrollment::{DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE, enrolled};
pub use snapshot::{ServiceTarget, Snapshot};
pub use validate::{ConfigError, check_service, check_workload};

/// Labels as Kubernetes has them: ordered so that dumps are stable.
pub type Labels = BTreeMap<String, String>;

/// The whole config an agent receives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    /// Namespaces and their labels: enrollment follows the namespace label.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
    /// `security.istio.io/v1` AuthorizationPolicy objects, as applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_policies: Vec<policy::AuthorizationPolicy>,
    /// `security.istio.io/v1` PeerAuthentication objects, as applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_authentications: Vec<policy::PeerAuthentication>,
    /// Policies in this namespace apply mesh-wide (Istio's root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
    /// L7 routes (VirtualService, HTTPRoute), applied by waypoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_routes: Vec<routing::HttpRoutes>,
    /// Subsets and traffic policies (DestinationRule), applied by waypoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_policies: Vec<routing::DestinationPolicy>,
    /// Gateways of class `istio-waypoint`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waypoints: Vec<routing::Waypoint>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    pub name: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// A pod, as far as the mesh cares.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// The pod's UID: stable across renames, unique in the cluster.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// The identity the workload runs as (`spiffe://…/ns/<ns>/sa/<this>`).
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// The node the pod runs on; an agent captures only its own node's pods.
    pub node: String,
    pub ips: Vec<IpAddr>,
    /// The workload the pod belongs to (its Deployment, StatefulSet, …), for
    /// telemetry; defaults to the pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_name: Option<String>,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

fn default_service_account() -> String {
    "default".to_owned()
}

/// A Kubernetes Service: virtual IPs whose ports map onto endpoints' ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// Defaults to `<name>.<namespace>.svc.cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Workloads in the service's namespace whose labels include all of these
    /// are endpoints, as with a Kubernetes selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Labels>,
    /// Endpoints named explicitly by workload UID (a selector-less Service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// The Service's own labels (`istio.io/use-waypoint` is read from here).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

impl Service {
    pub fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(|| format!("{}.{}.svc.cluster.local", self.name, self.namespace))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    /// The port on the endpoints; defaults to `port`, as in Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ServicePort {
    pub fn target(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

impl MeshConfig {
    /// Parses the YAML form. Unknown fields are errors, so a typo never
    /// silently changes behaviour.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        yaml_serde::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))
    }

    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        yaml_serde::to_string(self).map_err(|e| ConfigError::Syntax(e.to_string()))
    }
}

impl Workload {
    /// `namespace/name`, the way people name pods in messages.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The workload name telemetry reports (`source_workload` and friends).
    pub fn workload_name(&self) -> &str {
        self.workload_name.as_deref().unwrap_or(&self.name)
    }

    pub fn identity(&self, trust_domain: &str) -> crate::identity::Identity {
        crate::identity::Identity::new(trust_domain, &self.namespace, &self.service_account)
    }

    /// Istio's canonical service: the `service.istio.io/canonical-name` label,
    /// else `app.kubernetes.io/name`, else `app`, else the workload name.
    pub fn canonical_service(&self) -> &str {
        ["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"]
            .iter()
            .find_map(|k| self.labels.get(*k))
            .map_or(self.workload_name(), String::as_str)
    }

    /// Istio's canonical revision, `latest` when no label says otherwise.
    pub fn canonical_revision(&self) -> &str {
        ["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"]
            .iter()
            .find_map(|k| self.labels.get(*k))
            .map_or("latest", String::as_str)
    }
}

#[cfg(test)]
mod tests;
