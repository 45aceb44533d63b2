//! One function per kind: a Kubernetes object to its part of the mesh
//! config. `Ok(None)` means the object routes nothing by design; `Err`
//! carries the reason it is rejected.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod, Service as K8sService};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh::authz::Authorizer;
use mesh::config::policy::{AuthorizationPolicy, PeerAuthentication};
use mesh::config::{Labels, Namespace, Service, ServicePort, Workload};

use crate::resources::Object;

type Translated<T> = Result<Option<T>, String>;

fn name_of(meta: &ObjectMeta) -> Result<(String, String), String> {
    let name = meta.name.clone().filter(|n| !n.is_empty()).ok_or("metadata.name is missing")?;
    Ok((meta.namespace.clone().unwrap_or_default(), name))
}

fn labels_of(meta: &ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default().into_iter().collect()
}

pub fn namespace(object: &K8sNamespace) -> Translated<Namespace> {
    let (_, name) = name_of(&object.metadata)?;
    Ok(Some(Namespace { name, labels: labels_of(&object.metadata) }))
}

/// A running (or starting) pod with an IP on a node, not on the host network.
pub fn pod(object: &Pod) -> Translated<Workload> {
    let (namespace, name) = name_of(&object.metadata)?;
    let (spec, status) = (object.spec.clone().unwrap_or_default(), object.status.clone().unwrap_or_default());
    let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let Some(node) = spec.node_name.filter(|n| !n.is_empty()) else { return Ok(None) };
    if finished || spec.host_network == Some(true) {
        return Ok(None);
    }
    // A scheduled pod is sent before it has an address: its node's agent
    // then knows, when the pod's network is set up (the CNI plugin asks),
    // whether its own labels enrol it.
    let mut addresses: Vec<String> = status.pod_ips.unwrap_or_default().into_iter().map(|ip| ip.ip).collect();
    if addresses.is_empty() {
        addresses.extend(status.pod_ip);
    }
    let ips = addresses
        .iter()
        .map(|a| a.parse::<IpAddr>().map_err(|_| format!("status.podIP {a:?} is not an IP address")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Workload {
        uid: object.metadata.uid.clone().unwrap_or_else(|| format!("{namespace}/{name}")),
        service_account: spec.service_account_name.filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into()),
        workload_name: owner_workload(&object.metadata),
        labels: labels_of(&object.metadata),
        name,
        namespace,
        node,
        ips,
    }))
}

/// The workload a pod belongs to, as Istio derives it: a ReplicaSet's
/// Deployment (its name without the template hash), or the owner itself.
fn owner_workload(meta: &ObjectMeta) -> Option<String> {
    let owner = meta.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))?;
    match owner.kind.as_str() {
        "ReplicaSet" => Some(owner.name.rsplit_once('-').map_or(owner.name.as_str(), |(d, _)| d).to_owned()),
        _ => Some(owner.name.clone()),
    }
}

/// A ClusterIP service; headless and ExternalName services route nothing.
pub fn service(object: &K8sService, domain: &str) -> Translated<Service> {
    let (namespace, name) = name_of(&object.metadata)?;
    let spec = object.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let mut addresses = spec.cluster_ips.unwrap_or_default();
    if addresses.is_empty() {
        addresses.extend(spec.cluster_ip);
    }
    addresses.retain(|a| !a.is_empty() && a != "None");
    if addresses.is_empty() {
        return Ok(None);
    }
    let vips = addresses
        .iter()
        .map(|a| a.parse::<IpAddr>().map_err(|_| format!("spec.clusterIP {a:?} is not an IP address")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = Vec::new();
    for port in spec.ports.unwrap_or_default() {
        if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
            continue;
        }
        let number = u16::try_from(port.port).map_err(|_| format!("port {} is out of range", port.port))?;
        let target_port = match port.target_port {
            None => None,
            Some(IntOrString::Int(n)) => {
                Some(u16::try_from(n).map_err(|_| format!("port {number}: targetPort {n} is out of range"))?)
            }
            Some(IntOrString::String(named)) => {
                return Err(format!("port {number}: named targetPort {named:?} is not supported; use a number"));
            }
        };
        ports.push(ServicePort { port: number, target_port, name: port.name });
    }
    let selector = spec.selector.filter(|s| !s.is_empty()).map(|s| s.into_iter().collect());
    let labels = labels_of(&object.metadata);
    // The default domain is what agents assume; only another is spelt out.
    let hostname =
        (domain != super::routing::DEFAULT_CLUSTER_DOMAIN).then(|| format!("{name}.{namespace}.svc.{domain}"));
    Ok(Some(Service { name, namespace, hostname, vips, ports, selector, endpoints: Vec::new(), labels }))
}

/// Checked by compiling it alone, so a bad policy is pinned on itself.
pub fn authorization_policy(object: &AuthorizationPolicy, root_namespace: &str) -> Translated<AuthorizationPolicy> {
    Authorizer::new(std::slice::from_ref(object), &[], root_namespace).map_err(|e| e.to_string())?;
    Ok(Some(AuthorizationPolicy { status: None, metadata: honoured(&object.metadata), ..object.clone() }))
}

pub fn peer_authentication(object: &PeerAuthentication, root_namespace: &str) -> Translated<PeerAuthentication> {
    Authorizer::new(&[], std::slice::from_ref(object), root_namespace).map_err(|e| e.to_string())?;
    Ok(Some(PeerAuthentication { status: None, metadata: honoured(&object.metadata), ..object.clone() }))
}

/// A policy's metadata as agents get it: only the annotations they honour.
fn honoured(metadata: &mesh::config::policy::ObjectMeta) -> mesh::config::policy::ObjectMeta {
    let annotations = mesh::config::policy::ObjectMeta::honoured_annotations(&metadata.annotations);
    mesh::config::policy::ObjectMeta { annotations, ..metadata.clone() }
}

/// Why an object routes nothing (for logs).
pub fn not_routed_reason(object: &Object) -> String {
    match object {
        Object::Pod(_) => "the pod has no node yet, has finished, or uses the host network".into(),
        Object::Service(_) => "headless and ExternalName services have no virtual IP".into(),
        Object::VirtualService(_) => "it binds only to gateways other than `mesh`".into(),
        Object::HttpRoute(_) => "it has no Service parentRef (routes on ingress Gateways are not the mesh's)".into(),
        Object::Gateway(_) => "its class is not istio-waypoint".into(),
        _ => "nothing to route".into(),
    }
}
