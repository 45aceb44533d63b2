//! The controller as the mesh's CA: the root (loaded, or created on first
//! start), the controller's own serving certificate, and the rule for who
//! may have which identity.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh::ca::{CaError, CertificateAuthority, CertificateRequest};
use mesh::config::routing::Waypoint;
use mesh::config::{MeshConfig, Workload};
use mesh::control::{controller_identity, ztunnel_identity};
use mesh::identity::Identity;
use mesh::tls::{self, TrustBundle, WorkloadCertificate};
use rustls::ServerConfig;
use tracing::info;

use crate::node_auth::{Caller, GATEWAY_NAME_LABEL};

pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// The controller's own certificate lives this long and is renewed at half.
pub const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("the controller's TLS config: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot create CA directory {path}: {cause}")]
    Dir { path: String, cause: std::io::Error },
}

/// Loads the root from `dir`, or creates and stores one there on first start.
pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<CertificateAuthority, AuthorityError> {
    let (cert, key) = (dir.join(ROOT_CERT_FILE), dir.join(ROOT_KEY_FILE));
    if cert.exists() && key.exists() {
        return Ok(CertificateAuthority::from_files(trust_domain, &cert, &key)?);
    }
    std::fs::create_dir_all(dir).map_err(|cause| AuthorityError::Dir { path: dir.display().to_string(), cause })?;
    let ca = CertificateAuthority::generate(trust_domain)?;
    ca.write_files(&cert, &key)?;
    info!(dir = %dir.display(), "created a new mesh root CA");
    Ok(ca)
}

/// The controller's serving TLS config, with a fresh certificate.
pub fn serving_config(ca: &CertificateAuthority) -> Result<Arc<ServerConfig>, AuthorityError> {
    let identity = controller_identity(ca.trust_domain());
    let request = CertificateRequest::new(&identity)?;
    let issued = ca.sign_csr(&request.csr_pem, &identity, SERVING_TTL)?;
    let cert = WorkloadCertificate::new(identity, request, issued)?;
    let trust = TrustBundle::from_pem(ca.trust_domain(), ca.root_pem())?;
    Ok(tls::control_server_config(&cert, &trust)?)
}

/// What the identity rules read of the config: the whole config (tests,
/// tools) or a published version's view of it.
pub trait KnownObjects {
    fn workloads(&self) -> impl Iterator<Item = &Workload>;
    fn waypoints(&self) -> impl Iterator<Item = &Waypoint>;
}

impl KnownObjects for MeshConfig {
    fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.iter()
    }

    fn waypoints(&self) -> impl Iterator<Item = &Waypoint> {
        self.waypoints.iter()
    }
}

impl KnownObjects for crate::translate::ConfigView {
    fn workloads(&self) -> impl Iterator<Item = &Workload> {
        Self::workloads(self)
    }

    fn waypoints(&self) -> impl Iterator<Item = &Waypoint> {
        Self::waypoints(self)
    }
}

/// Why a node may not have an identity.
#[derive(Debug, thiserror::Error)]
#[error("node {node} runs no pod as {identity}")]
pub struct NotOnNode {
    pub node: String,
    pub identity: String,
}

/// A node's agent may have its own identity, and those of the pods that
/// run on that node; nothing else. This is what keeps a compromised node
/// from impersonating workloads elsewhere.
pub fn may_issue(config: &impl KnownObjects, node: &str, identity: &Identity) -> Result<(), NotOnNode> {
    if *identity == ztunnel_identity(&identity.trust_domain) {
        return Ok(());
    }
    let on_node = config
        .workloads()
        .any(|w| w.node == node && w.namespace == identity.namespace && w.service_account == identity.service_account);
    if on_node { Ok(()) } else { Err(NotOnNode { node: node.to_owned(), identity: identity.to_string() }) }
}

/// Whether `caller` may have `identity`: a node, its pods' identities (and
/// the agent's own); a waypoint's pod, its own account's identity, while
/// its Gateway is a waypoint the mesh knows.
pub fn may_issue_to(config: &impl KnownObjects, caller: &Caller, identity: &Identity) -> Result<(), NotOnNode> {
    match caller {
        Caller::Node(node) => may_issue(config, node, identity),
        Caller::Waypoint { node, namespace, service_account, gateway } => {
            let own = identity.namespace == *namespace && identity.service_account == *service_account;
            let known = config.waypoints().any(|w| w.namespace == *namespace && w.name == *gateway);
            if own && known {
                return Ok(());
            }
            Err(NotOnNode { node: node.clone(), identity: identity.to_string() })
        }
    }
}

/// Whether `identity` is the account of pods of a waypoint the mesh knows
/// (such a peer may follow the config stream).
pub fn is_waypoint_identity(config: &impl KnownObjects, identity: &Identity) -> bool {
    config.workloads().any(|w| {
        w.namespace == identity.namespace
            && w.service_account == identity.service_account
            && w.labels
                .get(GATEWAY_NAME_LABEL)
                .is_some_and(|gateway| config.waypoints().any(|wp| wp.namespace == w.namespace && wp.name == *gateway))
    })
}

#[cfg(test)]
mod tests {
    use mesh::config::routing::Waypoint;
    use mesh::config::{MeshConfig, Workload};
    use mesh::identity::Identity;

    use super::{Caller, is_waypoint_identity, may_issue, may_issue_to};

    #[test]
    fn only_identities_of_the_nodes_own_pods() {
        let config = MeshConfig {
            workloads: vec![Workload {
                uid: "u".into(),
                name: "a".into(),
                namespace: "shop".into(),
                service_account: "web".into(),
                node: "node1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let web = Identity::new("cluster.local", "shop", "web");
        assert!(may_issue(&config, "node1", &web).is_ok());
        let refused = may_issue(&config, "node2", &web).err().map(|e| e.to_string());
        assert_eq!(refused.as_deref(), Some("node node2 runs no pod as spiffe://cluster.local/ns/shop/sa/web"));
        assert!(may_issue(&config, "node1", &Identity::new("cluster.local", "shop", "admin")).is_err());
        assert!(may_issue(&config, "node2", &Identity::new("cluster.local", "ambit-system", "ztunnel")).is_ok());
    }

    #[test]
    fn a_waypoint_pod_gets_its_own_identity_only() {
        let waypoint_pod = Workload {
            uid: "w".into(),
            name: "waypoint-1".into(),
            namespace: "shop".into(),
            service_account: "waypoint".into(),
            node: "node1".into(),
            labels: [(super::GATEWAY_NAME_LABEL.to_owned(), "waypoint".to_owned())].into(),
            ..Default::default()
        };
        let gateway = Waypoint { name: "waypoint".into(), namespace: "shop".into(), ..Default::default() };
        let config = MeshConfig { workloads: vec![waypoint_pod], waypoints: vec![gateway], ..Default::default() };
        let caller = Caller::Waypoint {
            node: "node1".into(),
            namespace: "shop".into(),
            service_account: "waypoint".into(),
            gateway: "waypoint".into(),
        };
        let own = Identity::new("cluster.local", "shop", "waypoint");
        assert!(may_issue_to(&config, &caller, &own).is_ok());
        assert!(may_issue_to(&config, &caller, &Identity::new("cluster.local", "shop", "web")).is_err());
        assert!(is_waypoint_identity(&config, &own));
        assert!(!is_waypoint_identity(&config, &Identity::new("cluster.local", "shop", "web")));
        let gone = MeshConfig { waypoints: Vec::new(), ..config };
        assert!(may_issue_to(&gone, &caller, &own).is_err(), "only while its Gateway is a waypoint");
        assert!(!is_waypoint_identity(&gone, &own));
    }
}
