//! The install manifests, parsed into Kubernetes' own types, checked for
//! the invariants ARCHITECTURE.md promises: least privilege, what the
//! DaemonSet needs and no more, and nothing in the directory left out of
//! the kustomization. (Applying them to a real API server is an e2e test.)

#![allow(clippy::unwrap_used, reason = "a test fails on any error")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use serde::Deserialize as _;

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// Every document of `file` of the given kind.
fn documents<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> Vec<T> {
    let text = std::fs::read_to_string(manifests().join(file)).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|d| yaml_serde::Value::deserialize(d).unwrap())
        .filter(|v| v.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .map(|v| yaml_serde::from_value(v).unwrap())
        .collect()
}

#[test]
fn the_kustomization_lists_every_manifest() {
    #[derive(serde::Deserialize)]
    struct Kustomization {
        resources: Vec<String>,
    }
    let text = std::fs::read_to_string(manifests().join("kustomization.yaml")).unwrap();
    let listed: BTreeSet<String> =
        yaml_serde::from_str::<Kustomization>(&text).unwrap().resources.into_iter().collect();
    let mut present = BTreeSet::new();
    for dir in ["", "crds"] {
        for entry in std::fs::read_dir(manifests().join(dir)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                present.insert(if dir.is_empty() { name } else { format!("{dir}/{name}") });
            }
        }
    }
    assert_eq!(listed, present);
}

#[test]
fn ztunnel_runs_on_every_node_with_only_the_capabilities_it_needs() {
    let daemonsets: Vec<DaemonSet> = documents("ztunnel.yaml", "DaemonSet");
    let [ztunnel] = daemonsets.as_slice() else { panic!("one DaemonSet expected") };
    let spec = ztunnel.spec.as_ref().unwrap();
    assert_eq!(spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()), Some("RollingUpdate"));
    let template = &spec.template;
    let annotations = template.metadata.as_ref().and_then(|m| m.annotations.clone()).unwrap_or_default();
    assert_eq!(annotations.get("prometheus.io/scrape").map(String::as_str), Some("true"));
    assert_eq!(annotations.get("prometheus.io/port").map(String::as_str), Some("15020"));
    let pod = template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()), "every node");
    assert_eq!(
        pod.node_selector.clone().unwrap_or_default().get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    assert_eq!(labels.get("istio.io/dataplane-mode").map(String::as_str), Some("none"), "the agent is not in the mesh");
    let container = &pod.containers[0];
    let security = container.security_context.as_ref().unwrap();
    assert_ne!(security.privileged, Some(true), "capabilities, not privileged");
    let capabilities = security.capabilities.as_ref().unwrap();
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = capabilities.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "NET_ADMIN", "NET_RAW", "SYS_ADMIN"]));
    // Kubernetes refuses allowPrivilegeEscalation=false with SYS_ADMIN.
    assert_eq!(security.allow_privilege_escalation, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let seccomp = security.seccomp_profile.as_ref().map(|p| p.type_.as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"));
    let probe = container.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap();
    assert_eq!(
        (probe.path.as_deref(), &probe.port),
        (Some("/healthz/ready"), &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15021))
    );
    let memory = container.resources.as_ref().and_then(|r| r.requests.clone()).unwrap_or_default();
    assert!(memory.contains_key("memory"), "a memory request");
    let args = container.args.clone().unwrap_or_default().join(" ");
    assert!(args.contains("--controller=ambit-controller.ambit-system.svc:15012"), "{args}");
}

/// The pins that keep capture failing closed must outlive the agent's
/// container: they live in the host's bpffs, which the init container
/// mounts with Bidirectional propagation (privileged, as Kubernetes requires
/// for it), and the agent sees host-to-container.
#[test]
fn bpf_pins_live_in_the_hosts_bpffs() {
    let daemonsets: Vec<DaemonSet> = documents("ztunnel.yaml", "DaemonSet");
    let pod = daemonsets[0].spec.as_ref().unwrap().template.spec.clone().unwrap();
    let volumes = pod.volumes.clone().unwrap_or_default();
    let host_path = |name: &str| volumes.iter().find(|v| v.name == name).and_then(|v| v.host_path.clone()).unwrap();
    assert_eq!(host_path("bpffs").path, "/sys/fs/bpf");
    let mount_of = |container: &k8s_openapi::api::core::v1::Container| {
        container.volume_mounts.clone().unwrap_or_default().into_iter().find(|m| m.name == "bpffs").unwrap()
    };
    let init = pod.init_containers.clone().unwrap_or_default();
    let [mounter] = init.as_slice() else { panic!("one init container expected") };
    assert_eq!(mounter.command.clone().unwrap_or_default(), ["ambit-node-init"]);
    assert_eq!(mounter.security_context.as_ref().and_then(|s| s.privileged), Some(true));
    let mount = mount_of(mounter);
    assert_eq!((mount.mount_path.as_str(), mount.mount_propagation.as_deref()), ("/sys/fs/bpf", Some("Bidirectional")));
    let agent = mount_of(&pod.containers[0]);
    assert_eq!(
        (agent.mount_path.as_str(), agent.mount_propagation.as_deref()),
        ("/sys/fs/bpf", Some("HostToContainer"))
    );
}

/// The agent installs and chains the CNI plugin on the host, and the plugin
/// (run by the runtime on the host) reaches it in the host's /var/run/ambit.
#[test]
fn the_cni_plugin_reaches_the_node() {
    let daemonsets: Vec<DaemonSet> = documents("ztunnel.yaml", "DaemonSet");
    let pod = daemonsets[0].spec.as_ref().unwrap().template.spec.clone().unwrap();
    let volumes = pod.volumes.clone().unwrap_or_default();
    let mounts = pod.containers[0].volume_mounts.clone().unwrap_or_default();
    let args = pod.containers[0].args.clone().unwrap_or_default();
    for (volume, host, flag) in [
        ("cni-bin", "/opt/cni/bin", "--cni-bin-dir"),
        ("cni-conf", "/etc/cni/net.d", "--cni-conf-dir"),
        ("cni-state", "/var/run/ambit", "--cni-state-dir"),
    ] {
        let source = volumes.iter().find(|v| v.name == volume).and_then(|v| v.host_path.as_ref()).unwrap();
        assert_eq!(source.path, host);
        let mount = mounts.iter().find(|m| m.name == volume).unwrap();
        assert!(args.contains(&format!("{flag}={}", mount.mount_path)), "{flag} must name the mount of {host}");
    }
}

#[test]
fn the_controller_is_replicated_and_unprivileged() {
    let deployments: Vec<Deployment> = documents("controller.yaml", "Deployment");
    let spec = deployments[0].spec.as_ref().unwrap();
    assert!(spec.replicas.unwrap_or(1) >= 2, "HA: several replicas");
    let container = &spec.template.spec.as_ref().unwrap().containers[0];
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert!(container.args.iter().flatten().any(|a| a == "--kubernetes"));
}

#[test]
fn rbac_is_least_privilege() {
    let cluster_roles: Vec<ClusterRole> = documents("rbac.yaml", "ClusterRole");
    let roles: Vec<Role> = documents("rbac.yaml", "Role");
    let rules = cluster_roles
        .iter()
        .flat_map(|r| r.rules.clone().unwrap_or_default())
        .chain(roles.iter().flat_map(|r| r.rules.clone().unwrap_or_default()));
    for rule in rules {
        let verbs = &rule.verbs;
        let resources = rule.resources.clone().unwrap_or_default();
        assert!(!verbs.iter().any(|v| v == "*") && !resources.iter().any(|r| r == "*"), "no wildcards: {rule:?}");
        if resources.iter().any(|r| r == "secrets") {
            assert!(!verbs.iter().any(|v| v == "list" || v == "watch"), "never list secrets: {rule:?}");
            if verbs.iter().any(|v| v == "get") {
                assert!(rule.resource_names.is_some(), "secrets read by name only: {rule:?}");
            }
        }
        if verbs.iter().any(|v| v == "update" || v == "patch" || v == "delete") {
            let status_only = resources.iter().all(|r| r.ends_with("/status"));
            assert!(
                status_only || rule.resource_names.is_some() || resources == ["events"],
                "writes are narrow: {rule:?}"
            );
        }
    }
    let bindings = std::fs::read_to_string(manifests().join("rbac.yaml")).unwrap();
    assert_eq!(bindings.matches("name: ztunnel\n").count(), 1, "ztunnel's account is bound to no role");
}

#[test]
fn the_waypoint_template_is_a_waypoint_gateway_with_its_pods() {
    use gateway_api::apis::standard::gateways::Gateway;
    use k8s_openapi::api::core::v1::Service;
    let gateways: Vec<Gateway> = documents("waypoint/waypoint.yaml", "Gateway");
    let [gateway] = gateways.as_slice() else { panic!("one Gateway expected") };
    assert_eq!(gateway.spec.gateway_class_name, "istio-waypoint");
    assert!(gateway.spec.listeners.iter().any(|l| l.protocol == "HBONE" && l.port == 15008));
    let name = gateway.metadata.name.clone().unwrap();
    let deployments: Vec<Deployment> = documents("waypoint/waypoint.yaml", "Deployment");
    let services: Vec<Service> = documents("waypoint/waypoint.yaml", "Service");
    let (deployment, service) = (&deployments[0], &services[0]);
    for meta in [&gateway.metadata, &deployment.metadata, &service.metadata] {
        assert_eq!(meta.namespace, None, "the template is placed with `kubectl apply -n`");
    }
    // The controller finds a waypoint's address as the Service named after its Gateway.
    assert_eq!(service.metadata.name.as_deref(), Some(name.as_str()));
    let selector = service.spec.as_ref().and_then(|s| s.selector.clone()).unwrap();
    let template = &deployment.spec.as_ref().unwrap().template;
    let pod_labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap();
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "the Service selects the waypoint's pods");
    assert_eq!(pod_labels.get("istio.io/dataplane-mode").map(String::as_str), Some("none"), "never captured");
    let ports = service.spec.as_ref().and_then(|s| s.ports.clone()).unwrap();
    assert!(ports.iter().any(|p| p.port == 15008), "clients tunnel to 15008");
    let container = &template.spec.as_ref().unwrap().containers[0];
    let security = container.security_context.as_ref().unwrap();
    assert_eq!((security.run_as_non_root, security.allow_privilege_escalation), (Some(true), Some(false)));
}

#[test]
fn every_example_and_generated_crd_parses() {
    for dir in ["examples", "crds", "gateway-api"] {
        for entry in std::fs::read_dir(manifests().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for document in yaml_serde::Deserializer::from_str(&text) {
                let value = yaml_serde::Value::deserialize(document).unwrap();
                assert!(value.get("kind").is_some(), "{} has a document without a kind", path.display());
            }
        }
    }
}

/// Every flag a binary takes, and its environment variable, is documented
/// in its page under `docs/` (the tables there are written by hand).
#[test]
fn every_flag_and_environment_variable_is_documented() {
    let root = manifests().parent().unwrap().to_owned();
    for (binary, page) in
        [("ztunnel", "docs/ztunnel.md"), ("controller", "docs/controller.md"), ("waypoint", "docs/waypoint.md")]
    {
        let help =
            std::process::Command::new(ambit_tests::ztunnel::binary(binary).unwrap()).arg("--help").output().unwrap();
        assert!(help.status.success(), "{binary} --help failed");
        let help = String::from_utf8(help.stdout).unwrap();
        let doc = std::fs::read_to_string(root.join(page)).unwrap();
        let flags: Vec<&str> = help
            .split_whitespace()
            .filter(|word| word.starts_with("--") && !matches!(*word, "--help" | "--version"))
            .map(|word| word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
            .filter(|word| word.len() > 2)
            .collect();
        let envs: Vec<&str> = help.split("[env: ").skip(1).filter_map(|rest| rest.split('=').next()).collect();
        assert!(flags.len() > 10 && !envs.is_empty(), "{binary} --help parsed badly:\n{help}");
        for name in flags.iter().chain(&envs) {
            assert!(doc.contains(&format!("`{name}")), "{page} does not document {name}");
        }
    }
}
