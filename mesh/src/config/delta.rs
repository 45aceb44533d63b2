//! Incremental config updates: what changed between two [`MeshConfig`]s, by
//! object key, and applying that to a copy of the older one. The controller
//! sends deltas after the first full config, so one pod's change costs the
//! agents one workload on the wire, not the world.
//!
//! Keys: namespaces by name, workloads by UID, everything else by
//! `namespace/name`. A config's lists are kept sorted by key
//! ([`MeshConfig::canonicalize`]), so equal configs compare equal.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::policy::Resource;
use super::{MeshConfig, Namespace, Service, Workload, routing};

/// An object with a stable key within its kind.
pub trait Keyed {
    fn object_key(&self) -> String;
}

impl Keyed for Namespace {
    fn object_key(&self) -> String {
        self.name.clone()
    }
}

impl Keyed for Workload {
    fn object_key(&self) -> String {
        self.uid.clone()
    }
}

impl Keyed for Service {
    fn object_key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl Keyed for routing::HttpRoutes {
    fn object_key(&self) -> String {
        self.origin.clone()
    }
}

impl Keyed for routing::DestinationPolicy {
    fn object_key(&self) -> String {
        self.origin.clone()
    }
}

impl Keyed for routing::Waypoint {
    fn object_key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl<S> Keyed for Resource<S> {
    fn object_key(&self) -> String {
        self.key()
    }
}

/// Objects of one kind that were added or changed, and keys that went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KindDelta<T> {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upserted: Vec<T>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

impl<T> Default for KindDelta<T> {
    fn default() -> Self {
        Self { upserted: Vec::new(), removed: Vec::new() }
    }
}

impl<T: Keyed + Clone + PartialEq> KindDelta<T> {
    fn between(old: &[T], new: &[T]) -> Self {
        let old: BTreeMap<String, &T> = old.iter().map(|o| (o.object_key(), o)).collect();
        let new_keys: BTreeMap<String, &T> = new.iter().map(|o| (o.object_key(), o)).collect();
        let upserted = new_keys
            .iter()
            .filter(|(key, object)| old.get(*key).is_none_or(|before| before != *object))
            .map(|(_, object)| (*object).clone())
            .collect();
        let removed = old.keys().filter(|key| !new_keys.contains_key(*key)).cloned().collect();
        Self { upserted, removed }
    }

    /// Applies this delta to `list`, sorted by key, keeping it sorted. A
    /// small delta edits in place; one that touches much of the list
    /// rebuilds it (inserting many objects one by one would be quadratic).
    fn apply_to(&self, list: &mut Vec<T>) {
        let changes = self.upserted.len() + self.removed.len();
        if changes > list.len() / 8 + 16 {
            return self.rebuild(list);
        }
        for key in &self.removed {
            if let Ok(i) = list.binary_search_by(|o| o.object_key().as_str().cmp(key)) {
                list.remove(i);
            }
        }
        for object in &self.upserted {
            let key = object.object_key();
            match list.binary_search_by(|o| o.object_key().cmp(&key)) {
                Ok(i) => list[i] = object.clone(),
                Err(i) => list.insert(i, object.clone()),
            }
        }
    }

    fn rebuild(&self, list: &mut Vec<T>) {
        let mut by_key: BTreeMap<String, T> = list.drain(..).map(|o| (o.object_key(), o)).collect();
        for key in &self.removed {
            by_key.remove(key);
        }
        for object in &self.upserted {
            by_key.insert(object.object_key(), object.clone());
        }
        list.extend(by_key.into_values());
    }

    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }

    /// This delta followed by `later`, as one: what `later` upserts or
    /// removes replaces what this one said about the same key.
    fn then(&mut self, later: &Self) {
        if later.is_empty() {
            return;
        }
        let upserted_later: BTreeSet<String> = later.upserted.iter().map(Keyed::object_key).collect();
        let removed_later: BTreeSet<&String> = later.removed.iter().collect();
        self.upserted.retain(|object| {
            let key = object.object_key();
            !upserted_later.contains(&key) && !removed_later.contains(&key)
        });
        self.upserted.extend(later.upserted.iter().cloned());
        self.removed.retain(|key| !upserted_later.contains(key) && !removed_later.contains(key));
        self.removed.extend(later.removed.iter().cloned());
    }
}

/// Everything that changed from one config to the next.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDelta {
    #[serde(default)]
    pub namespaces: KindDelta<Namespace>,
    #[serde(default)]
    pub workloads: KindDelta<Workload>,
    #[serde(default)]
    pub services: KindDelta<Service>,
    #[serde(default)]
    pub authorization_policies: KindDelta<super::policy::AuthorizationPolicy>,
    #[serde(default)]
    pub peer_authentications: KindDelta<super::policy::PeerAuthentication>,
    #[serde(default, skip_serializing_if = "KindDelta::is_empty")]
    pub http_routes: KindDelta<routing::HttpRoutes>,
    #[serde(default, skip_serializing_if = "KindDelta::is_empty")]
    pub destination_policies: KindDelta<routing::DestinationPolicy>,
    #[serde(default, skip_serializing_if = "KindDelta::is_empty")]
    pub waypoints: KindDelta<routing::Waypoint>,
    /// The new config's root namespace (always sent; it is one string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
}

impl ConfigDelta {
    /// What turns `old` into `new`.
    pub fn between(old: &MeshConfig, new: &MeshConfig) -> Self {
        Self {
            namespaces: KindDelta::between(&old.namespaces, &new.namespaces),
            workloads: KindDelta::between(&old.workloads, &new.workloads),
            services: KindDelta::between(&old.services, &new.services),
            authorization_policies: KindDelta::between(&old.authorization_policies, &new.authorization_policies),
            peer_authentications: KindDelta::between(&old.peer_authentications, &new.peer_authentications),
            http_routes: KindDelta::between(&old.http_routes, &new.http_routes),
            destination_policies: KindDelta::between(&old.destination_policies, &new.destination_policies),
            waypoints: KindDelta::between(&old.waypoints, &new.waypoints),
            root_namespace: new.root_namespace.clone(),
        }
    }

    /// This delta followed by `later`, as one delta: applying it to a
    /// config equals applying both in turn. A resuming or slow agent gets
    /// the composition of the versions it missed, not a diff of two configs.
    pub fn then(&mut self, later: &ConfigDelta) {
        self.namespaces.then(&later.namespaces);
        self.workloads.then(&later.workloads);
        self.services.then(&later.services);
        self.authorization_policies.then(&later.authorization_policies);
        self.peer_authentications.then(&later.peer_authentications);
        self.http_routes.then(&later.http_routes);
        self.destination_policies.then(&later.destination_policies);
        self.waypoints.then(&later.waypoints);
        self.root_namespace.clone_from(&later.root_namespace);
    }

    /// `base` with this delta applied (lists come out sorted by key).
    pub fn apply(&self, base: &MeshConfig) -> MeshConfig {
        let mut config = base.clone();
        config.canonicalize();
        self.apply_in_place(&mut config);
        config
    }

    /// Applies this delta to `config`, which must be in canonical order
    /// (as every config from the stream is): an agent's cost is the size
    /// of the change, not of the mesh.
    pub fn apply_in_place(&self, config: &mut MeshConfig) {
        self.namespaces.apply_to(&mut config.namespaces);
        self.workloads.apply_to(&mut config.workloads);
        self.services.apply_to(&mut config.services);
        self.authorization_policies.apply_to(&mut config.authorization_policies);
        self.peer_authentications.apply_to(&mut config.peer_authentications);
        self.http_routes.apply_to(&mut config.http_routes);
        self.destination_policies.apply_to(&mut config.destination_policies);
        self.waypoints.apply_to(&mut config.waypoints);
        config.root_namespace.clone_from(&self.root_namespace);
    }

    /// Objects added, changed or removed (for logs and metrics).
    pub fn changed_objects(&self) -> usize {
        fn count<T>(kind: &KindDelta<T>) -> usize {
            kind.upserted.len() + kind.removed.len()
        }
        count(&self.namespaces)
            + count(&self.workloads)
            + count(&self.services)
            + count(&self.authorization_policies)
            + count(&self.peer_authentications)
            + count(&self.http_routes)
            + count(&self.destination_policies)
            + count(&self.waypoints)
    }
}

impl MeshConfig {
    /// Sorts every list by object key, the canonical order deltas produce.
    pub fn canonicalize(&mut self) {
        fn sort<T: Keyed>(list: &mut [T]) {
            list.sort_by_cached_key(Keyed::object_key);
        }
        sort(&mut self.namespaces);
        sort(&mut self.workloads);
        sort(&mut self.services);
        sort(&mut self.authorization_policies);
        sort(&mut self.peer_authentications);
        sort(&mut self.http_routes);
        sort(&mut self.destination_policies);
        sort(&mut self.waypoints);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(uid: &str, node: &str) -> Workload {
        Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "mesh".into(),
            service_account: "default".into(),
            node: node.into(),
            ips: vec![],
            ..Default::default()
        }
    }

    fn config(workloads: Vec<Workload>, namespaces: &[&str]) -> MeshConfig {
        let mut config = MeshConfig {
            workloads,
            namespaces: namespaces.iter().map(|n| Namespace { name: (*n).into(), ..Default::default() }).collect(),
            ..Default::default()
        };
        config.canonicalize();
        config
    }

    #[test]
    fn a_delta_carries_only_what_changed() {
        let old = config(vec![workload("a", "n1"), workload("b", "n1"), workload("c", "n1")], &["mesh", "gone"]);
        let new = config(vec![workload("a", "n1"), workload("b", "n2"), workload("d", "n1")], &["mesh"]);
        let delta = ConfigDelta::between(&old, &new);
        let upserted: Vec<_> = delta.workloads.upserted.iter().map(|w| w.uid.as_str()).collect();
        assert_eq!(upserted, ["b", "d"]);
        assert_eq!(delta.workloads.removed, ["c"]);
        assert_eq!(delta.namespaces.removed, ["gone"]);
        assert!(delta.services.is_empty());
        assert_eq!(delta.changed_objects(), 4);
        assert_eq!(delta.apply(&old), new);
    }

    #[test]
    fn no_change_is_an_empty_delta_and_round_trips_as_json() {
        let old = config(vec![workload("a", "n1")], &["mesh"]);
        let delta = ConfigDelta::between(&old, &old);
        assert_eq!(delta.changed_objects(), 0);
        let json = serde_json::to_string(&delta).unwrap_or_default();
        assert_eq!(serde_json::from_str::<ConfigDelta>(&json).ok(), Some(delta.clone()));
        assert_eq!(delta.apply(&old), old);
    }

    /// Composed deltas over a chain of configs equal the direct delta's
    /// effect, whatever each step added, changed or removed.
    #[test]
    fn composed_steps_equal_one_delta() {
        let ws = |spec: &[(&str, &str)]| spec.iter().map(|(uid, node)| workload(uid, node)).collect::<Vec<_>>();
        let chain = [
            config(ws(&[("a", "n1"), ("b", "n1")]), &["x"]),
            config(ws(&[("a", "n2"), ("c", "n1")]), &["x", "y"]),
            config(ws(&[("c", "n1")]), &["y"]),
            config(ws(&[("a", "n1"), ("c", "n3")]), &["x"]),
            config(ws(&[("a", "n1"), ("b", "n2"), ("c", "n3")]), &[]),
        ];
        for start in 0..chain.len() {
            let mut composed = ConfigDelta::between(&chain[start], &chain[start]);
            for step in chain[start..].windows(2) {
                composed.then(&ConfigDelta::between(&step[0], &step[1]));
                assert_eq!(composed.apply(&chain[start]), step[1], "from config {start}");
            }
        }
    }

    /// Small deltas edit in place, large ones rebuild; both give the
    /// canonical result.
    #[test]
    fn in_place_and_rebuilt_application_agree() {
        let base = config((0..200).map(|i| workload(&format!("w{i:03}"), "n1")).collect(), &["a", "c"]);
        for size in [1, 5, 40, 150] {
            let mut new = base.clone();
            new.workloads.retain(|w| w.uid.as_str() >= format!("w{size:03}").as_str());
            new.workloads.extend((0..size).map(|i| workload(&format!("x{i}"), "n2")));
            new.workloads[0].node = "moved".into();
            new.namespaces.push(Namespace { name: "b".into(), ..Default::default() });
            new.canonicalize();
            let delta = ConfigDelta::between(&base, &new);
            let mut in_place = base.clone();
            delta.apply_in_place(&mut in_place);
            assert_eq!(in_place, new, "a delta of {} objects", delta.changed_objects());
        }
    }

    #[test]
    fn applying_to_an_unsorted_base_yields_the_canonical_order() {
        let mut base = config(vec![workload("b", "n1"), workload("a", "n1")], &[]);
        base.workloads.reverse();
        let new = config(vec![workload("a", "n1"), workload("b", "n1"), workload("c", "n1")], &[]);
        assert_eq!(ConfigDelta::between(&base, &new).apply(&base), new);
    }
}
