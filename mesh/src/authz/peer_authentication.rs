//! PeerAuthentication: whether a workload accepts plaintext. The most
//! specific policy with a mode wins: a port-level mode of a workload policy
//! (one with a selector), that policy's mode, the namespace's policy, then
//! the mesh-wide one (root namespace). With none, PERMISSIVE. Only STRICT
//! refuses plaintext; DISABLE behaves as PERMISSIVE, since in ambient mesh
//! traffic is mTLS whatever the mode.

use crate::config::Workload;
use crate::config::policy::{MtlsMode, PeerAuthentication, WorkloadSelector};

use super::PolicyError;

#[derive(Clone, Debug)]
struct Compiled {
    namespace: String,
    selector: Option<WorkloadSelector>,
    mode: MtlsMode,
    ports: Vec<(u16, MtlsMode)>,
}

#[derive(Clone, Debug, Default)]
pub struct PeerAuthenticator {
    root_namespace: String,
    /// Sorted by `namespace/name`, so ties between workload policies break
    /// the same way every time.
    policies: Vec<Compiled>,
}

impl PeerAuthenticator {
    pub(super) fn new(policies: &[PeerAuthentication], root_namespace: &str) -> Result<Self, PolicyError> {
        let mut sorted: Vec<&PeerAuthentication> = policies.iter().collect();
        sorted.sort_by_key(|p| p.key());
        let mut compiled = Vec::new();
        for p in sorted {
            let error = |message: String| PolicyError { policy: format!("PeerAuthentication {}", p.key()), message };
            p.check_kind("PeerAuthentication").map_err(error)?;
            let mut ports = Vec::new();
            for (port, mtls) in &p.spec.port_level_mtls {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| error(format!("{port:?} is not a port")))?;
                ports.push((port, mtls.mode));
            }
            if !ports.is_empty() && p.spec.selector.is_none() {
                return Err(error("portLevelMtls needs a workload selector".into()));
            }
            compiled.push(Compiled {
                namespace: p.metadata.namespace.clone(),
                selector: p.spec.selector.clone(),
                mode: p.spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default(),
                ports,
            });
        }
        Ok(Self { root_namespace: root_namespace.to_owned(), policies: compiled })
    }

    pub(super) fn mode(&self, workload: &Workload, port: u16) -> MtlsMode {
        let ns = workload.namespace.as_str();
        let workload_policy = self
            .policies
            .iter()
            .find(|p| p.namespace == ns && p.selector.as_ref().is_some_and(|s| s.matches(&workload.labels)));
        let namespace_policy = self.policies.iter().find(|p| p.namespace == ns && p.selector.is_none());
        let mesh_policy = self.policies.iter().find(|p| p.namespace == self.root_namespace && p.selector.is_none());
        let port_mode = workload_policy.and_then(|p| p.ports.iter().find(|(p, _)| *p == port).map(|(_, m)| *m));
        [port_mode, workload_policy.map(|p| p.mode), namespace_policy.map(|p| p.mode), mesh_policy.map(|p| p.mode)]
            .into_iter()
            .flatten()
            .find(|m| *m != MtlsMode::Unset)
            .unwrap_or(MtlsMode::Permissive)
    }

    pub(super) fn plaintext_allowed(&self, workload: &Workload, port: u16) -> bool {
        self.mode(workload, port) != MtlsMode::Strict
    }
}
