//! Local-directory mode's stand-in for the API server's ClusterIP
//! allocation: a Service applied without `clusterIP` gets one, as it would
//! from `kubectl apply` on a cluster, so Istio's and the Gateway API's
//! sample YAML (which never sets one) works unchanged.
//!
//! Addresses come from [`RANGE`], away from the low addresses tests and
//! demos spell out; each Service keeps its address while it exists, and an
//! address is never given to two Services.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::net::{IpAddr, Ipv4Addr};

use crate::resources::{Object, ObjectKey};

/// 10.96.128.0/17: the upper half of Kubernetes' default service range.
const RANGE_START: u32 = u32::from_be_bytes([10, 96, 128, 0]);
const RANGE_SIZE: u32 = 1 << 15;

#[derive(Debug, Default)]
pub struct ClusterIps {
    assigned: BTreeMap<ObjectKey, Ipv4Addr>,
}

impl ClusterIps {
    /// Gives every Service in `objects` that asks for a ClusterIP and has
    /// none an address, the same one it had before if it had one.
    pub fn assign(&mut self, objects: &mut BTreeMap<ObjectKey, Object>) {
        self.assigned.retain(|key, _| objects.contains_key(key));
        let mut taken: BTreeSet<Ipv4Addr> = self.assigned.values().copied().collect();
        for object in objects.values() {
            if let Object::Service(service) = object {
                let spec = service.spec.iter();
                taken.extend(spec.flat_map(|s| s.cluster_ip.iter()).filter_map(|ip| ip.parse::<Ipv4Addr>().ok()));
            }
        }
        for (key, object) in objects.iter_mut() {
            let Object::Service(service) = object else { continue };
            let spec = service.spec.get_or_insert_default();
            let wants_one = spec.type_.as_deref() != Some("ExternalName")
                && spec.cluster_ip.as_deref().is_none_or(str::is_empty)
                && spec.cluster_ips.as_ref().is_none_or(Vec::is_empty);
            if !wants_one {
                continue;
            }
            let ip = match self.assigned.get(key) {
                Some(ip) => *ip,
                None => match free_address(key, &taken) {
                    Some(ip) => ip,
                    None => continue,
                },
            };
            taken.insert(ip);
            self.assigned.insert(key.clone(), ip);
            spec.cluster_ip = Some(IpAddr::V4(ip).to_string());
            spec.cluster_ips = Some(vec![IpAddr::V4(ip).to_string()]);
        }
    }
}

/// The first free address from the key's own place in the range, so a
/// Service tends to get the same address across restarts.
fn free_address(key: &ObjectKey, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let mut hasher = DefaultHasher::new();
    key.to_string().hash(&mut hasher);
    let start = u32::try_from(hasher.finish() % u64::from(RANGE_SIZE)).unwrap_or(0);
    (0..RANGE_SIZE)
        .map(|offset| Ipv4Addr::from(RANGE_START + (start + offset) % RANGE_SIZE))
        .find(|ip| ip.octets()[3] != 0 && !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_documents;

    fn services(yaml: &str) -> BTreeMap<ObjectKey, Object> {
        let parsed = parse_documents(yaml).unwrap_or_else(|e| panic!("{e}"));
        parsed.objects.into_iter().map(|o| (o.key(), o)).collect()
    }

    fn ip_of(objects: &BTreeMap<ObjectKey, Object>, name: &str) -> Option<String> {
        objects.values().find_map(|o| match o {
            Object::Service(s) if s.metadata.name.as_deref() == Some(name) => s.spec.clone()?.cluster_ip,
            _ => None,
        })
    }

    const YAML: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\n\
        apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}\n---\n\
        apiVersion: v1\nkind: Service\nmetadata: {name: c}\nspec: {clusterIP: None, ports: [{port: 80}]}\n";

    #[test]
    fn services_without_an_address_get_one_and_keep_it() {
        let mut ips = ClusterIps::default();
        let mut objects = services(YAML);
        ips.assign(&mut objects);
        let a = ip_of(&objects, "a").unwrap_or_else(|| panic!("a got no address"));
        assert!(a.starts_with("10.96."), "{a}");
        assert_eq!(ip_of(&objects, "b").as_deref(), Some("10.96.0.9"), "a given address stays");
        assert_eq!(ip_of(&objects, "c").as_deref(), Some("None"), "headless stays headless");
        let mut again = services(YAML);
        ips.assign(&mut again);
        assert_eq!(ip_of(&again, "a"), Some(a), "the same address on every read");
    }

    #[test]
    fn no_address_is_given_twice() {
        let mut taken = BTreeSet::new();
        for index in 0..1000 {
            let key =
                ObjectKey { kind: crate::resources::Kind::Service, namespace: "n".into(), name: format!("s{index}") };
            let ip = free_address(&key, &taken).unwrap_or_else(|| panic!("range exhausted"));
            assert!(taken.insert(ip), "{ip} twice");
        }
    }
}
