//! Translation: Kubernetes objects in, the mesh config model out. Pure (no
//! IO) and incremental: each object is translated on its own when it
//! changes, and the config is assembled from the translated parts, so one
//! pod's change costs one pod's work.
//!
//! An object that cannot be translated is *rejected*: the reason is kept
//! (for its status condition), and the last good translation of that object
//! stays in force. A new object that is bad from the start contributes
//! nothing.

mod kinds;

use std::collections::BTreeMap;

use mesh::config::policy::{AuthorizationPolicy, PeerAuthentication};
use mesh::config::{MeshConfig, Namespace, Service, Workload};

use crate::resources::{Kind, Object, ObjectKey};

/// What became of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its translation is in force.
    Accepted,
    /// It contributes nothing, by design (a finished pod, a headless
    /// service); not an error.
    NotRouted(String),
    /// It is invalid; the previous good version (if any) stays in force.
    Rejected(String),
}

#[derive(Debug, Default)]
pub struct Translator {
    root_namespace: String,
    namespaces: BTreeMap<ObjectKey, Namespace>,
    workloads: BTreeMap<ObjectKey, Workload>,
    services: BTreeMap<ObjectKey, Service>,
    authorization_policies: BTreeMap<ObjectKey, AuthorizationPolicy>,
    peer_authentications: BTreeMap<ObjectKey, PeerAuthentication>,
    /// Objects whose latest version was rejected, and why.
    rejected: BTreeMap<ObjectKey, String>,
}

impl Translator {
    pub fn new(root_namespace: &str) -> Self {
        Self { root_namespace: root_namespace.to_owned(), ..Self::default() }
    }

    /// Takes in a new or changed object.
    pub fn upsert(&mut self, object: &Object) -> Outcome {
        let key = object.key();
        let translated = match object {
            Object::Namespace(o) => store(&mut self.namespaces, &key, kinds::namespace(o)),
            Object::Pod(o) => store(&mut self.workloads, &key, kinds::pod(o)),
            Object::Service(o) => store(&mut self.services, &key, kinds::service(o)),
            Object::AuthorizationPolicy(o) => {
                store(&mut self.authorization_policies, &key, kinds::authorization_policy(o, &self.root_namespace))
            }
            Object::PeerAuthentication(o) => {
                store(&mut self.peer_authentications, &key, kinds::peer_authentication(o, &self.root_namespace))
            }
        };
        match translated {
            Ok(true) => {
                self.rejected.remove(&key);
                Outcome::Accepted
            }
            Ok(false) => {
                self.remove(&key);
                Outcome::NotRouted(kinds::not_routed_reason(object))
            }
            Err(reason) => {
                self.rejected.insert(key, reason.clone());
                Outcome::Rejected(reason)
            }
        }
    }

    /// Forgets a deleted object.
    pub fn remove(&mut self, key: &ObjectKey) {
        self.rejected.remove(key);
        match key.kind {
            Kind::Namespace => drop(self.namespaces.remove(key)),
            Kind::Pod => drop(self.workloads.remove(key)),
            Kind::Service => drop(self.services.remove(key)),
            Kind::AuthorizationPolicy => drop(self.authorization_policies.remove(key)),
            Kind::PeerAuthentication => drop(self.peer_authentications.remove(key)),
        }
    }

    /// Objects whose latest version is rejected, with the reasons.
    pub fn rejected(&self) -> &BTreeMap<ObjectKey, String> {
        &self.rejected
    }

    /// The mesh config of everything accepted, in canonical order.
    pub fn config(&self) -> MeshConfig {
        let mut config = MeshConfig {
            namespaces: self.namespaces.values().cloned().collect(),
            workloads: self.workloads.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
            authorization_policies: self.authorization_policies.values().cloned().collect(),
            peer_authentications: self.peer_authentications.values().cloned().collect(),
            root_namespace: Some(self.root_namespace.clone()),
        };
        config.canonicalize();
        config
    }
}

/// Stores a translation; `Ok(false)` when the object routes nothing.
fn store<T>(
    map: &mut BTreeMap<ObjectKey, T>,
    key: &ObjectKey,
    translated: Result<Option<T>, String>,
) -> Result<bool, String> {
    Ok(translated?.map(|value| map.insert(key.clone(), value)).is_some())
}

#[cfg(test)]
mod tests;
