//! The test bed's cluster as the Kubernetes objects a real cluster would
//! hold: Namespaces, Pods (with the node, IP and phase a kubelet would
//! report), Services, and the Istio policies as applied. The controller
//! reads these, from a directory or (later) from an API server.

use anyhow::bail;
use mesh::config::{MeshConfig, Service, Workload};
use serde_json::{Value, json};

/// All objects of `config`, as multi-document YAML.
pub fn render(config: &MeshConfig) -> anyhow::Result<String> {
    to_yaml(objects(config)?)
}

fn to_yaml(objects: Vec<Value>) -> anyhow::Result<String> {
    let mut text = String::new();
    for object in objects {
        text.push_str("---\n");
        text.push_str(&yaml_serde::to_string(&object)?);
    }
    Ok(text)
}

fn objects(config: &MeshConfig) -> anyhow::Result<Vec<Value>> {
    let mut objects: Vec<Value> = Vec::new();
    for namespace in &config.namespaces {
        objects.push(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace.name, "labels": namespace.labels},
        }));
    }
    for workload in &config.workloads {
        objects.push(pod(workload));
    }
    for service in &config.services {
        objects.push(self::service(service)?);
    }
    for policy in &config.authorization_policies {
        objects.push(serde_json::to_value(policy)?);
    }
    for policy in &config.peer_authentications {
        objects.push(serde_json::to_value(policy)?);
    }
    Ok(objects)
}

/// Like [`render`], plus the ServiceAccounts the pods run as, which an API
/// server needs to exist (here no controller-manager creates them).
pub fn render_for_api_server(config: &MeshConfig) -> anyhow::Result<String> {
    let accounts: std::collections::BTreeSet<(&str, &str)> =
        config.workloads.iter().map(|w| (w.namespace.as_str(), w.service_account.as_str())).collect();
    let mut all: Vec<Value> = accounts
        .into_iter()
        .map(|(namespace, name)| {
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}})
        })
        .collect();
    for mut object in objects(config)? {
        // The API server assigns UIDs itself.
        if let Some(metadata) = object["metadata"].as_object_mut() {
            metadata.remove("uid");
        }
        all.push(object);
    }
    // Namespaces first: everything else lives in one.
    all.sort_by_key(|o| o["kind"] != "Namespace");
    to_yaml(all)
}

pub fn pod(workload: &Workload) -> Value {
    let mut metadata = json!({
        "name": workload.name,
        "namespace": workload.namespace,
        "uid": workload.uid,
        "labels": workload.labels,
    });
    // The owner is how Kubernetes says which workload a pod belongs to.
    if let Some(owner) = &workload.workload_name {
        metadata["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "StatefulSet", "name": owner, "uid": format!("{owner}-uid"), "controller": true,
        }]);
    }
    let ips: Vec<Value> = workload.ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": workload.node,
            "serviceAccountName": workload.service_account,
            // No token controller runs in the tests' API server.
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "ambit/sample"}],
        },
        "status": {
            "phase": "Running",
            "podIP": workload.ips.first().map(ToString::to_string),
            "podIPs": ips,
        },
    })
}

fn service(service: &Service) -> anyhow::Result<Value> {
    if !service.endpoints.is_empty() {
        bail!("service {}: explicit endpoints have no Kubernetes form here; use a selector", service.name);
    }
    let ports: Vec<Value> = service
        .ports
        .iter()
        .map(|p| json!({"port": p.port, "targetPort": p.target(), "protocol": "TCP", "name": p.name}))
        .collect();
    let vips: Vec<String> = service.vips.iter().map(ToString::to_string).collect();
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service.name, "namespace": service.namespace},
        "spec": {"clusterIP": vips.first(), "clusterIPs": vips, "ports": ports, "selector": service.selector},
    }))
}
