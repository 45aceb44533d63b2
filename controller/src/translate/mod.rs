//! Translation: Kubernetes objects in, the mesh config model out. Pure (no
//! IO) and incremental: each object is translated on its own when it
//! changes, and the config is assembled from the translated parts, so one
//! pod's change costs one pod's work.
//!
//! An object that cannot be translated is *rejected*: the reason is kept
//! (for its status condition), and the last good translation of that object
//! stays in force. A new object that is bad from the start contributes
//! nothing.

mod claims;
mod destination_rule;
mod http_route;
mod in_force;
mod kinds;
mod routing;

use std::collections::{BTreeMap, BTreeSet};

#[cfg(test)]
use mesh::config::MeshConfig;
use mesh::config::delta::ConfigDelta;
use mesh::config::routing::HttpRoutes;
use mesh::config::{Service, Workload};

pub use http_route::service_parents;
pub use in_force::ConfigView;

use self::claims::{Claim, Claims};
use self::in_force::{AllInForce, InForce};
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

/// A pod or Service translation waiting for an address or UID another
/// object holds.
#[derive(Clone, Debug)]
enum Claimant {
    Workload(Workload),
    Service(Service),
}

#[derive(Debug, Default)]
pub struct Translator {
    root_namespace: String,
    /// The cluster's DNS domain, for service host names.
    cluster_domain: String,
    in_force: AllInForce,
    /// Each route object's latest version that is valid on its own; it goes
    /// into force once its references resolve ([`Self::settle`]).
    route_candidates: BTreeMap<ObjectKey, HttpRoutes>,
    /// Route objects upserted since the last settle.
    unsettled: BTreeSet<ObjectKey>,
    /// Whether a DestinationRule changed since the last settle (then every
    /// route's subsets are checked again).
    policies_changed: bool,
    /// Addresses and UIDs, and who holds them.
    claims: Claims,
    /// Pods and Services refused for a clash, retried at each settle.
    waiting: BTreeMap<ObjectKey, Claimant>,
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
        // Owned: `admit` below borrows the translator whole.
        let (root, domain) = (self.root_namespace.clone(), self.cluster_domain.clone());
        let (root, domain) = (root.as_str(), domain.as_str());
        let translated = match object {
            Object::Namespace(o) => put(&mut self.in_force.namespaces, &key, kinds::namespace(o)),
            Object::Pod(o) => match kinds::pod(o) {
                Ok(Some(workload)) => self.admit(&key, Claimant::Workload(workload)).map(|()| true),
                other => put(&mut self.in_force.workloads, &key, other),
            },
            Object::Service(o) => match kinds::service(o, domain) {
                Ok(Some(service)) => self.admit(&key, Claimant::Service(service)).map(|()| true),
                other => put(&mut self.in_force.services, &key, other),
            },
            Object::AuthorizationPolicy(o) => {
                put(&mut self.in_force.authorization_policies, &key, kinds::authorization_policy(o, root))
            }
            Object::PeerAuthentication(o) => {
                put(&mut self.in_force.peer_authentications, &key, kinds::peer_authentication(o, root))
            }
            Object::VirtualService(o) => {
                candidate(&mut self.route_candidates, &key, routing::virtual_service(o, domain))
            }
            Object::HttpRoute(o) => candidate(&mut self.route_candidates, &key, http_route::http_route(o, domain)),
            Object::DestinationRule(o) => {
                self.policies_changed = true;
                put(&mut self.in_force.destination_policies, &key, destination_rule::destination_rule(o, domain))
            }
            Object::Gateway(o) => put(&mut self.in_force.waypoints, &key, routing::gateway(o, domain)),
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

    /// Puts a pod or Service in force if it is valid on its own and claims
    /// nothing another object holds; otherwise it waits (for a clash) or
    /// is refused, and its last good version stays.
    fn admit(&mut self, key: &ObjectKey, claimant: Claimant) -> Result<(), String> {
        let checked = match &claimant {
            Claimant::Workload(w) => mesh::config::check_workload(w).map(|()| Claim::of_workload(w)),
            Claimant::Service(s) => mesh::config::check_service(s).map(|()| Claim::of_service(s)),
        };
        self.waiting.remove(key);
        let wanted = checked.map_err(|e| e.to_string())?;
        if let Err(clash) = self.claims.check(key, &wanted) {
            self.waiting.insert(key.clone(), claimant);
            return Err(clash);
        }
        self.claims.set(key, wanted);
        match claimant {
            Claimant::Workload(w) => self.in_force.workloads.insert(key, w),
            Claimant::Service(s) => self.in_force.services.insert(key, s),
        }
        Ok(())
    }

    /// Forgets a deleted object.
    pub fn remove(&mut self, key: &ObjectKey) {
        self.rejected.remove(key);
        let all = &mut self.in_force;
        match key.kind {
            Kind::Namespace => all.namespaces.remove(key),
            Kind::Pod => all.workloads.remove(key),
            Kind::Service => all.services.remove(key),
            Kind::AuthorizationPolicy => all.authorization_policies.remove(key),
            Kind::PeerAuthentication => all.peer_authentications.remove(key),
            Kind::VirtualService | Kind::HttpRoute => {
                self.route_candidates.remove(key);
                all.http_routes.remove(key);
            }
            Kind::DestinationRule => {
                self.policies_changed = true;
                all.destination_policies.remove(key);
            }
            Kind::Gateway => all.waypoints.remove(key),
        }
        self.claims.release(key);
        self.waiting.remove(key);
    }

    /// After a batch of changes (so the order within a batch does not
    /// matter): checks routes' references against the destination policies
    /// now in force, and retries pods and Services that waited for an
    /// address. A route whose subsets all exist goes into force; one naming
    /// an unknown subset is rejected and its last good version stays.
    /// Returns the outcome of each object this settled or changed.
    pub fn settle(&mut self) -> Vec<(ObjectKey, Outcome)> {
        let mut outcomes = self.retry_waiting();
        let upserted = std::mem::take(&mut self.unsettled);
        let recheck_all = std::mem::take(&mut self.policies_changed);
        let routes = self.route_candidates.iter().filter(|(key, _)| recheck_all || upserted.contains(*key));
        for (key, candidate) in routes {
            let before = self.rejected.get(key).cloned();
            let outcome = match unknown_subset(candidate, &self.in_force.destination_policies) {
                None => {
                    self.in_force.http_routes.insert(key, candidate.clone());
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

    fn retry_waiting(&mut self) -> Vec<(ObjectKey, Outcome)> {
        let mut outcomes = Vec::new();
        for (key, claimant) in std::mem::take(&mut self.waiting) {
            if self.admit(&key, claimant).is_ok() {
                self.rejected.remove(&key);
                outcomes.push((key, Outcome::Accepted));
            }
        }
        outcomes
    }

    /// Objects whose latest version is rejected, with the reasons.
    pub fn rejected(&self) -> &BTreeMap<ObjectKey, String> {
        &self.rejected
    }

    /// What changed in force since the last call (the first call: all of
    /// it), as agents apply it.
    pub fn take_delta(&mut self) -> ConfigDelta {
        self.in_force.take_delta(&self.root_namespace)
    }

    /// The whole config in force, shared rather than copied.
    pub fn view(&self) -> ConfigView {
        self.in_force.view(&self.root_namespace)
    }

    /// The mesh config of everything accepted, in canonical order.
    #[cfg(test)]
    pub fn config(&self) -> MeshConfig {
        self.view().to_config()
    }
}

/// The first destination or mirror subset no destination policy of its
/// host defines.
fn unknown_subset(routes: &HttpRoutes, policies: &InForce<mesh::config::routing::DestinationPolicy>) -> Option<String> {
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

type Translated<T> = Result<Option<T>, String>;

/// Puts a translation in force; `Ok(false)` when the object routes nothing.
fn put<T: Clone + mesh::config::delta::Keyed + PartialEq>(
    in_force: &mut InForce<T>,
    key: &ObjectKey,
    translated: Translated<T>,
) -> Result<bool, String> {
    Ok(translated?.map(|value| in_force.insert(key, value)).is_some())
}

/// Keeps a route's candidate translation until `settle`.
fn candidate(
    candidates: &mut BTreeMap<ObjectKey, HttpRoutes>,
    key: &ObjectKey,
    translated: Translated<HttpRoutes>,
) -> Result<bool, String> {
    Ok(translated?.map(|value| candidates.insert(key.clone(), value)).is_some())
}

#[cfg(test)]
mod action_tests;
#[cfg(test)]
mod routing_tests;
#[cfg(test)]
mod tests;
