//! Translation: Kubernetes objects in, the mesh config model out. Pure (no
//! IO) and incremental: each object is translated on its own when it
//! changes, and the config is assembled from the translated parts, so one
//! pod's change costs one pod's work.
//!
//! An object that cannot be translated is *rejected*: the reason is kept
//! (for its status condition), and the last good translation of that object
//! stays in force. A new object that is bad from the start contributes
//! nothing.

mod destination_rule;
mod http_route;
mod kinds;
mod routing;

use std::collections::BTreeMap;

use mesh::config::policy::{AuthorizationPolicy, PeerAuthentication};
use mesh::config::routing::{DestinationPolicy, HttpRoutes, Waypoint};
use mesh::config::{MeshConfig, Namespace, Service, Workload};

pub use http_route::service_parents;

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
    /// The cluster's DNS domain, for service host names.
    cluster_domain: String,
    namespaces: BTreeMap<ObjectKey, Namespace>,
    workloads: BTreeMap<ObjectKey, Workload>,
    services: BTreeMap<ObjectKey, Service>,
    authorization_policies: BTreeMap<ObjectKey, AuthorizationPolicy>,
    peer_authentications: BTreeMap<ObjectKey, PeerAuthentication>,
    /// Routes in force: each route object's last version whose references
    /// all resolved.
    http_routes: BTreeMap<ObjectKey, HttpRoutes>,
    /// Each route object's latest version that is valid on its own; it goes
    /// into force once its references resolve ([`Self::settle`]).
    route_candidates: BTreeMap<ObjectKey, HttpRoutes>,
    destination_policies: BTreeMap<ObjectKey, DestinationPolicy>,
    waypoints: BTreeMap<ObjectKey, Waypoint>,
    /// Route objects upserted since the last settle.
    unsettled: std::collections::BTreeSet<ObjectKey>,
    /// Objects whose latest version was rejected, and why.
    rejected: BTreeMap<ObjectKey, String>,
}

impl Translator {
    pub fn new(root_namespace: &str) -> Self {
        Self {
            root_namespace: root_namespace.to_owned(),
            cluster_domain: routing::DEFAULT_CLUSTER_DOMAIN.to_owned(),
            ..Self::default()
        }
    }

    /// Service host names in `domain` (`<service>.<namespace>.svc.<domain>`)
    /// instead of `cluster.local`.
    pub fn with_cluster_domain(mut self, domain: &str) -> Self {
        domain.clone_into(&mut self.cluster_domain);
        self
    }

    /// Takes in a new or changed object.
    pub fn upsert(&mut self, object: &Object) -> Outcome {
        let key = object.key();
        let translated = match object {
            Object::Namespace(o) => store(&mut self.namespaces, &key, kinds::namespace(o)),
            Object::Pod(o) => store(&mut self.workloads, &key, kinds::pod(o)),
            Object::Service(o) => store(&mut self.services, &key, kinds::service(o, &self.cluster_domain)),
            Object::AuthorizationPolicy(o) => {
                store(&mut self.authorization_policies, &key, kinds::authorization_policy(o, &self.root_namespace))
            }
            Object::PeerAuthentication(o) => {
                store(&mut self.peer_authentications, &key, kinds::peer_authentication(o, &self.root_namespace))
            }
            Object::VirtualService(o) => {
                store(&mut self.route_candidates, &key, routing::virtual_service(o, &self.cluster_domain))
            }
            Object::HttpRoute(o) => {
                store(&mut self.route_candidates, &key, http_route::http_route(o, &self.cluster_domain))
            }
            Object::DestinationRule(o) => {
                store(&mut self.destination_policies, &key, destination_rule::destination_rule(o, &self.cluster_domain))
            }
            Object::Gateway(o) => store(&mut self.waypoints, &key, routing::gateway(o, &self.cluster_domain)),
        };
        let is_route = matches!(key.kind, Kind::VirtualService | Kind::HttpRoute);
        if is_route {
            self.unsettled.insert(key.clone());
        }
        match translated {
            // A route only goes into force once `settle` resolves it.
            Err(reason) if is_route => {
                self.route_candidates.remove(&key);
                self.rejected.insert(key, reason.clone());
                Outcome::Rejected(reason)
            }
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
            Kind::VirtualService | Kind::HttpRoute => {
                self.route_candidates.remove(key);
                self.http_routes.remove(key);
            }
            Kind::DestinationRule => drop(self.destination_policies.remove(key)),
            Kind::Gateway => drop(self.waypoints.remove(key)),
        }
    }

    /// Checks each route's references against the destination policies now
    /// in force, after a batch of changes (so the order within a batch does
    /// not matter). A route whose subsets all exist goes into force; one
    /// naming an unknown subset is rejected and its last good version stays.
    /// Returns the outcome of every route object.
    pub fn settle(&mut self) -> Vec<(ObjectKey, Outcome)> {
        let mut outcomes = Vec::new();
        let upserted = std::mem::take(&mut self.unsettled);
        for (key, candidate) in &self.route_candidates {
            let before = self.rejected.get(key).cloned();
            let outcome = match unknown_subset(candidate, &self.destination_policies) {
                None => {
                    self.http_routes.insert(key.clone(), candidate.clone());
                    self.rejected.remove(key);
                    Outcome::Accepted
                }
                Some(reason) => {
                    self.rejected.insert(key.clone(), reason.clone());
                    Outcome::Rejected(reason)
                }
            };
            // Report what this batch touched or changed, not every route
            // every time.
            if upserted.contains(key) || before != self.rejected.get(key).cloned() {
                outcomes.push((key.clone(), outcome));
            }
        }
        outcomes
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
            http_routes: self.http_routes.values().cloned().collect(),
            destination_policies: self.destination_policies.values().cloned().collect(),
            waypoints: self.waypoints.values().cloned().collect(),
        };
        config.canonicalize();
        config
    }
}

/// The first destination or mirror subset no destination policy of its
/// host defines.
fn unknown_subset(routes: &HttpRoutes, policies: &BTreeMap<ObjectKey, DestinationPolicy>) -> Option<String> {
    let rules = routes.rules.iter().enumerate();
    let mut named = rules.flat_map(|(i, rule)| {
        let destinations = rule.destinations.iter().map(move |d| (i, &d.host, d.subset.as_deref()));
        destinations.chain(rule.mirrors.iter().map(move |m| (i, &m.host, m.subset.as_deref())))
    });
    named.find_map(|(index, host, subset)| {
        let subset = subset?;
        let defined = policies.values().any(|p| &p.host == host && p.subsets.iter().any(|s| s.name == subset));
        (!defined).then(|| format!("rule {index}: subset {subset:?} of {host} is not defined by any DestinationRule"))
    })
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
mod action_tests;
#[cfg(test)]
mod routing_tests;
#[cfg(test)]
mod tests;
