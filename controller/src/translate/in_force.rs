//! The translations in force, kind by kind, kept so that a change costs
//! the size of the change: each kind is a persistent map (a copy shares
//! all but the path to what changed), so every published version keeps
//! its own view of the whole config for the price of a pointer, and the
//! keys changed since the last publication are remembered, so the delta
//! is read off them instead of diffing two whole configs.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh::config::delta::{ConfigDelta, Keyed, KindDelta};
use mesh::config::policy::{AuthorizationPolicy, PeerAuthentication};
use mesh::config::routing::{DestinationPolicy, HttpRoutes, Waypoint};
use mesh::config::{MeshConfig, Namespace, Service, Workload};

use crate::resources::ObjectKey;

/// One kind's translations in force.
#[derive(Debug)]
pub struct InForce<T: Clone> {
    objects: imbl::OrdMap<ObjectKey, Arc<T>>,
    /// Keys whose translation changed since the last delta, each with the
    /// agents' key of the version they were last sent (`None`: never sent).
    changed: BTreeMap<ObjectKey, Option<String>>,
}

impl<T: Clone> Default for InForce<T> {
    fn default() -> Self {
        Self { objects: imbl::OrdMap::new(), changed: BTreeMap::new() }
    }
}

impl<T: Clone + Keyed + PartialEq> InForce<T> {
    pub fn get(&self, key: &ObjectKey) -> Option<&T> {
        self.objects.get(key).map(Arc::as_ref)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.objects.values().map(Arc::as_ref)
    }

    /// Puts `value` in force for `key`; an unchanged value changes nothing.
    pub fn insert(&mut self, key: &ObjectKey, value: T) {
        if self.get(key) == Some(&value) {
            return;
        }
        let before = self.objects.insert(key.clone(), Arc::new(value));
        self.changed.entry(key.clone()).or_insert_with(|| before.map(|b| b.object_key()));
    }

    pub fn remove(&mut self, key: &ObjectKey) {
        if let Some(before) = self.objects.remove(key) {
            self.changed.entry(key.clone()).or_insert_with(|| Some(before.object_key()));
        }
    }

    /// What changed since the last call, as agents apply it.
    fn take_delta(&mut self) -> KindDelta<T> {
        let mut delta = KindDelta::default();
        for (key, sent_as) in std::mem::take(&mut self.changed) {
            let now = self.objects.get(&key);
            // An object whose agents' key changed (a pod replaced under its
            // name) is removed under the old key.
            let gone = sent_as.filter(|old| now.is_none_or(|n| n.object_key() != *old));
            delta.removed.extend(gone);
            delta.upserted.extend(now.map(|n| T::clone(n)));
        }
        delta
    }

    fn snapshot(&self) -> imbl::OrdMap<ObjectKey, Arc<T>> {
        self.objects.clone()
    }
}

/// Every kind in force.
#[derive(Debug, Default)]
pub struct AllInForce {
    pub namespaces: InForce<Namespace>,
    pub workloads: InForce<Workload>,
    pub services: InForce<Service>,
    pub authorization_policies: InForce<AuthorizationPolicy>,
    pub peer_authentications: InForce<PeerAuthentication>,
    pub http_routes: InForce<HttpRoutes>,
    pub destination_policies: InForce<DestinationPolicy>,
    pub waypoints: InForce<Waypoint>,
}

impl AllInForce {
    /// Everything that changed since the last call, as one delta.
    pub fn take_delta(&mut self, root_namespace: &str) -> ConfigDelta {
        ConfigDelta {
            namespaces: self.namespaces.take_delta(),
            workloads: self.workloads.take_delta(),
            services: self.services.take_delta(),
            authorization_policies: self.authorization_policies.take_delta(),
            peer_authentications: self.peer_authentications.take_delta(),
            http_routes: self.http_routes.take_delta(),
            destination_policies: self.destination_policies.take_delta(),
            waypoints: self.waypoints.take_delta(),
            root_namespace: Some(root_namespace.to_owned()),
        }
    }

    pub fn view(&self, root_namespace: &str) -> ConfigView {
        ConfigView {
            namespaces: self.namespaces.snapshot(),
            workloads: self.workloads.snapshot(),
            services: self.services.snapshot(),
            authorization_policies: self.authorization_policies.snapshot(),
            peer_authentications: self.peer_authentications.snapshot(),
            http_routes: self.http_routes.snapshot(),
            destination_policies: self.destination_policies.snapshot(),
            waypoints: self.waypoints.snapshot(),
            root_namespace: root_namespace.to_owned(),
        }
    }
}

type Map<T> = imbl::OrdMap<ObjectKey, Arc<T>>;

/// One version's whole config, shared with the translator's maps: cheap
/// to keep, turned into a [`MeshConfig`] only when an agent needs it whole.
#[derive(Clone, Debug, Default)]
pub struct ConfigView {
    namespaces: Map<Namespace>,
    workloads: Map<Workload>,
    services: Map<Service>,
    authorization_policies: Map<AuthorizationPolicy>,
    peer_authentications: Map<PeerAuthentication>,
    http_routes: Map<HttpRoutes>,
    destination_policies: Map<DestinationPolicy>,
    waypoints: Map<Waypoint>,
    root_namespace: String,
}

impl ConfigView {
    /// The whole config, in canonical order.
    pub fn to_config(&self) -> MeshConfig {
        fn list<T: Clone>(map: &Map<T>) -> Vec<T> {
            map.values().map(|v| T::clone(v)).collect()
        }
        let mut config = MeshConfig {
            namespaces: list(&self.namespaces),
            workloads: list(&self.workloads),
            services: list(&self.services),
            authorization_policies: list(&self.authorization_policies),
            peer_authentications: list(&self.peer_authentications),
            root_namespace: Some(self.root_namespace.clone()),
            http_routes: list(&self.http_routes),
            destination_policies: list(&self.destination_policies),
            waypoints: list(&self.waypoints),
        };
        config.canonicalize();
        config
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.values().map(Arc::as_ref)
    }

    pub fn waypoints(&self) -> impl Iterator<Item = &Waypoint> {
        self.waypoints.values().map(Arc::as_ref)
    }

    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }
}
