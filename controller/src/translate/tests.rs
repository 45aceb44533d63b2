//! Table tests: objects in, config (or rejection) out.

use super::{Outcome, Translator};
use crate::resources::{Object, parse_documents};

fn objects(yaml: &str) -> Vec<Object> {
    match parse_documents(yaml) {
        Ok(parsed) => parsed.objects,
        Err(error) => panic!("test YAML does not parse: {error}"),
    }
}

fn translate(yaml: &str) -> (Translator, Vec<Outcome>) {
    let mut translator = Translator::new("istio-system");
    let outcomes = objects(yaml).iter().map(|o| translator.upsert(o)).collect();
    (translator, outcomes)
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-7d4b9-x2x\n  namespace: shop\n  uid: u-1\n  \
                   labels: {app: web}\n  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9, \
                   uid: rs, controller: true}]\nspec:\n  nodeName: node1\n  serviceAccountName: web-sa\n  \
                   containers: [{name: c, image: i}]\nstatus:\n  phase: Running\n  podIP: 10.1.0.5\n";

#[test]
fn pods_become_workloads() {
    let (translator, outcomes) = translate(POD);
    assert_eq!(outcomes, [Outcome::Accepted]);
    let config = translator.config();
    let workload = &config.workloads[0];
    assert_eq!(
        (workload.uid.as_str(), workload.name.as_str(), workload.namespace.as_str()),
        ("u-1", "web-7d4b9-x2x", "shop")
    );
    assert_eq!((workload.service_account.as_str(), workload.node.as_str()), ("web-sa", "node1"));
    assert_eq!(workload.workload_name.as_deref(), Some("web"), "a ReplicaSet's pods belong to its Deployment");
    assert_eq!(
        workload.ips,
        ["10.1.0.5".parse::<std::net::IpAddr>().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into())]
    );
    assert_eq!(workload.labels.get("app").map(String::as_str), Some("web"));
}

#[test]
fn pods_that_route_nothing() {
    let cases = [
        ("not scheduled", POD.replace("  nodeName: node1\n", "")),
        ("finished", POD.replace("phase: Running", "phase: Succeeded")),
        ("host network", POD.replace("  nodeName: node1\n", "  nodeName: node1\n  hostNetwork: true\n")),
    ];
    for (case, yaml) in cases {
        let (translator, outcomes) = translate(&yaml);
        assert!(matches!(outcomes[0], Outcome::NotRouted(_)), "{case}: {outcomes:?}");
        assert!(translator.config().workloads.is_empty(), "{case}");
    }
}

/// A scheduled pod without an address yet is in the config already, so
/// its node knows whether the pod is enrolled when its network is set up.
#[test]
fn a_scheduled_pod_is_sent_before_it_has_an_address() {
    let (translator, outcomes) = translate(&POD.replace("  podIP: 10.1.0.5\n", ""));
    assert!(matches!(outcomes[0], Outcome::Accepted), "{outcomes:?}");
    let workload = &translator.config().workloads[0];
    assert_eq!((workload.node.as_str(), workload.ips.len()), ("node1", 0));
}

#[test]
fn a_pod_losing_its_ip_leaves_the_config() {
    let mut translator = Translator::new("istio-system");
    translator.upsert(&objects(POD)[0]);
    translator.upsert(&objects(&POD.replace("phase: Running", "phase: Failed"))[0]);
    assert!(translator.config().workloads.is_empty());
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  \
                       clusterIP: 10.96.0.7\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  \
                       - {name: dns, port: 53, protocol: UDP}\n";

#[test]
fn services_keep_tcp_ports_and_selector() {
    let (translator, outcomes) = translate(SERVICE);
    assert_eq!(outcomes, [Outcome::Accepted]);
    let config = translator.config();
    let service = &config.services[0];
    assert_eq!(service.hostname(), "web.shop.svc.cluster.local");
    assert_eq!(service.ports.len(), 1, "UDP ports are not the mesh's");
    assert_eq!((service.ports[0].port, service.ports[0].target()), (80, 8080));
    assert_eq!(service.selector.as_ref().and_then(|s| s.get("app")).map(String::as_str), Some("web"));
}

#[test]
fn rejected_objects_keep_their_last_good_version() {
    let cases = [
        ("named targetPort", SERVICE.replace("targetPort: 8080", "targetPort: http-alt"), "named targetPort"),
        ("bad cluster IP", SERVICE.replace("10.96.0.7", "10.96.0.999"), "not an IP address"),
    ];
    for (case, bad, reason) in cases {
        let mut translator = Translator::new("istio-system");
        translator.upsert(&objects(SERVICE)[0]);
        let before = translator.config();
        let outcome = translator.upsert(&objects(&bad)[0]);
        assert!(matches!(&outcome, Outcome::Rejected(r) if r.contains(reason)), "{case}: {outcome:?}");
        assert_eq!(translator.config(), before, "{case}: the last good version stays");
        assert_eq!(translator.rejected().len(), 1, "{case}");
        translator.upsert(&objects(SERVICE)[0]);
        assert!(translator.rejected().is_empty(), "{case}: fixing the object clears the rejection");
    }
}

#[test]
fn headless_services_route_nothing() {
    let (translator, outcomes) = translate(&SERVICE.replace("clusterIP: 10.96.0.7", "clusterIP: None"));
    assert!(matches!(outcomes[0], Outcome::NotRouted(_)));
    assert!(translator.config().services.is_empty());
}

const POLICY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\n\
                      spec:\n  action: ALLOW\n  rules:\n  - from: [{source: {namespaces: [shop]}}]\n";

#[test]
fn policies_pass_through_and_bad_ones_are_rejected() {
    let (translator, outcomes) = translate(POLICY);
    assert_eq!(outcomes, [Outcome::Accepted]);
    assert_eq!(translator.config().authorization_policies.len(), 1);
    let bad = POLICY.replace("namespaces: [shop]", "ipBlocks: [not-a-cidr]");
    let (translator, outcomes) = translate(&bad);
    assert!(matches!(&outcomes[0], Outcome::Rejected(r) if r.contains("not-a-cidr")), "{outcomes:?}");
    assert!(translator.config().authorization_policies.is_empty(), "a new bad policy contributes nothing");
}

#[test]
fn deleting_removes_and_namespaces_carry_labels() {
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n{POD}"
    );
    let (mut translator, _) = translate(&yaml);
    let config = translator.config();
    assert_eq!(config.namespaces[0].labels.get("istio.io/dataplane-mode").map(String::as_str), Some("ambient"));
    assert_eq!(config.root_namespace.as_deref(), Some("istio-system"));
    translator.remove(&objects(POD)[0].key());
    assert!(translator.config().workloads.is_empty());
    assert_eq!(translator.config().namespaces.len(), 1);
}

/// Istio's task pages write `security.istio.io/v1beta1` and `group: ""` in
/// targetRefs; both are taken as Istio takes them. The dry-run annotation
/// reaches the agents; other annotations do not.
#[test]
fn istio_task_page_policies_apply_and_dry_run_travels() {
    let yaml = "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata:\n  name: viewer\n  \
                namespace: shop\n  annotations: {istio.io/dry-run: 'true', kubectl.kubernetes.io/last-applied-configuration: '{}'}\n\
                spec:\n  targetRefs: [{kind: Service, group: '', name: productpage}]\n  action: ALLOW\n  \
                rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/gateway]}}]}]\n";
    let (translator, outcomes) = translate(yaml);
    assert_eq!(outcomes, [Outcome::Accepted]);
    let policy = &translator.config().authorization_policies[0];
    assert!(policy.dry_run());
    assert_eq!(policy.metadata.annotations.len(), 1, "{:?}", policy.metadata.annotations);
    assert_eq!(policy.spec.target_refs[0].group, "");
}

/// The same objects in local-directory mode: every one is taken.
#[test]
fn istio_docs_objects_are_all_accepted() {
    let mut translator = Translator::new("istio-system");
    let objects = objects(include_str!("../../../tests/fixtures/istio-docs.yaml"));
    let mut outcomes: Vec<_> = objects.iter().map(|o| (o.key(), translator.upsert(o))).collect();
    for (key, outcome) in translator.settle() {
        if let Some(slot) = outcomes.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = outcome;
        }
    }
    let refused: Vec<_> = outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Rejected(_))).collect();
    assert!(refused.is_empty(), "{refused:#?}");
    assert_eq!(translator.config().authorization_policies.len(), 2);
    assert_eq!(translator.config().http_routes.len(), 3);
}
