use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use super::*;

const CONFIG: &str = r#"
namespaces:
  - name: shop
    labels: { istio.io/dataplane-mode: ambient }
  - name: legacy
workloads:
  - { uid: u1, name: web-1, namespace: shop, node: n1, ips: [10.1.0.2], labels: { app: web } }
  - { uid: u2, name: web-2, namespace: shop, node: n2, ips: [10.2.0.2], labels: { app: web } }
  - uid: u3
    name: db
    namespace: shop
    serviceAccount: db
    node: n1
    ips: [10.1.0.3]
    labels: { app: db, istio.io/dataplane-mode: none }
  - { uid: u4, name: old, namespace: legacy, node: n2, ips: [10.2.0.3], labels: { app: web } }
  - { uid: u5, name: opt-in, namespace: legacy, node: n2, ips: [10.2.0.4], labels: { istio.io/dataplane-mode: ambient } }
services:
  - name: web
    namespace: shop
    vips: [10.96.0.10]
    ports: [{ port: 80, targetPort: 8080 }, { port: 443 }]
    selector: { app: web }
  - name: manual
    namespace: legacy
    vips: [10.96.0.11]
    ports: [{ port: 5432 }]
    endpoints: [u3]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn snapshot() -> Snapshot {
    Snapshot::from_yaml(CONFIG).unwrap()
}

#[test]
fn enrollment_follows_namespace_label_with_pod_overrides() {
    let snap = snapshot();
    let enrolled = |addr| snap.is_enrolled(snap.workload_by_ip(ip(addr)).unwrap());
    assert!(enrolled("10.1.0.2"), "namespace label enrolls");
    assert!(!enrolled("10.1.0.3"), "pod label `none` opts out");
    assert!(!enrolled("10.2.0.3"), "unlabelled namespace is not enrolled");
    assert!(enrolled("10.2.0.4"), "pod label `ambient` opts in");
}

#[test]
fn workload_without_known_namespace_follows_its_own_labels() {
    let w = Workload { labels: [(DATAPLANE_MODE_LABEL.into(), "ambient".into())].into(), ..Default::default() };
    assert!(enrolled(&w, None));
    assert!(!enrolled(&Workload::default(), None));
}

#[test]
fn service_selector_and_target_port() {
    let snap = snapshot();
    let target = snap.service_target(ip("10.96.0.10"), 80).unwrap();
    let names: HashSet<_> = target.endpoints.iter().map(|w| w.name.as_str()).collect();
    // `old` has app=web but lives in another namespace.
    assert_eq!(names, HashSet::from(["web-1", "web-2"]));
    assert_eq!(target.port.target(), 8080);
    assert_eq!(snap.service_target(ip("10.96.0.10"), 443).unwrap().port.target(), 443);
    assert!(snap.service_target(ip("10.96.0.10"), 81).is_none(), "unknown port");
    assert!(snap.is_vip(ip("10.96.0.10")));
    assert!(snap.service_target(ip("10.1.0.2"), 80).is_none(), "a pod IP is not a VIP");
}

#[test]
fn pick_endpoint_reaches_every_endpoint() {
    let snap = snapshot();
    let target = snap.service_target(ip("10.96.0.10"), 80).unwrap();
    let picked: HashSet<SocketAddr> = (0..200).filter_map(|_| target.pick_endpoint(ip("10.96.0.10"))).collect();
    let expected: HashSet<SocketAddr> = ["10.1.0.2:8080", "10.2.0.2:8080"].iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(picked, expected);
}

#[test]
fn explicit_endpoints_and_empty_selector() {
    let snap = snapshot();
    let manual = snap.service_target(ip("10.96.0.11"), 5432).unwrap();
    assert_eq!(manual.endpoints.len(), 1);
    assert_eq!(manual.endpoints[0].uid, "u3");

    let text = CONFIG.replace("selector: { app: web }", "selector: {}");
    let snap = Snapshot::from_yaml(&text).unwrap();
    let target = snap.service_target(ip("10.96.0.10"), 80).unwrap();
    assert!(target.endpoints.is_empty(), "an empty selector selects nothing");
    assert_eq!(target.pick_endpoint(ip("10.96.0.10")), None);
}

#[test]
fn node_workloads_and_defaults() {
    let snap = snapshot();
    let on_n1: Vec<_> = snap.node_workloads("n1").map(|w| w.name.as_str()).collect();
    assert_eq!(on_n1, ["web-1", "db"]);
    let web1 = snap.workload_by_ip(ip("10.1.0.2")).unwrap();
    assert_eq!(web1.service_account, "default");
    assert_eq!(snap.config().services[0].hostname(), "web.shop.svc.cluster.local");
}

#[test]
fn yaml_round_trip() {
    let snap = snapshot();
    let again = MeshConfig::from_yaml(&snap.config().to_yaml().unwrap()).unwrap();
    assert_eq!(&again, snap.config());
}

#[test]
fn empty_document_is_an_empty_config() {
    assert_eq!(MeshConfig::from_yaml("{}").unwrap(), MeshConfig::default());
}

fn error(text: &str) -> String {
    Snapshot::from_yaml(text).unwrap_err().to_string()
}

#[test]
fn syntax_error_names_line() {
    let msg = error("workloads:\n  - uid: [unclosed\n");
    assert!(msg.starts_with("invalid config:"), "{msg}");
    assert!(msg.contains("line"), "{msg}");
}

#[test]
fn unknown_field_is_named() {
    let msg = error(&CONFIG.replace("serviceAccount: db", "serviceAcount: db"));
    assert!(msg.contains("unknown field `serviceAcount`"), "{msg}");
}

#[test]
fn wrong_type_is_rejected() {
    let msg = error("workloads:\n  - { uid: a, name: a, namespace: n, node: x, ips: [not-an-ip] }\n");
    assert!(msg.contains("invalid"), "{msg}");
}

#[test]
fn duplicate_ip_names_both_workloads() {
    let msg = error(&CONFIG.replace("ips: [10.2.0.2]", "ips: [10.1.0.2]"));
    assert_eq!(msg, "duplicate IP \"10.1.0.2\": used by workload shop/web-1 and workload shop/web-2");
}

#[test]
fn vip_clashing_with_pod_ip_is_rejected() {
    let msg = error(&CONFIG.replace("vips: [10.96.0.11]", "vips: [10.2.0.3]"));
    assert!(msg.contains("duplicate IP \"10.2.0.3\""), "{msg}");
    assert!(msg.contains("service legacy/manual"), "{msg}");
}

#[test]
fn other_semantic_errors() {
    assert!(error(&CONFIG.replace("uid: u2", "uid: u1")).contains("duplicate workload uid \"u1\""));
    assert!(error(&CONFIG.replace("name: web-2", "name: web-1")).contains("duplicate workload name"));
    assert!(error(&CONFIG.replace("endpoints: [u3]", "endpoints: [nope]")).contains("\"nope\""));
    assert!(error(&CONFIG.replace("{ port: 443 }", "{ port: 0 }")).contains("between 1 and 65535"));
    assert!(error(&CONFIG.replace("{ port: 443 }", "{ port: 80 }")).contains("duplicate service port"));
    assert!(error(&CONFIG.replace("name: db", "name: \"\"")).contains("empty `name`"));
    assert!(error(&CONFIG.replace("- name: legacy", "- name: shop")).contains("duplicate namespace"));
}

#[test]
fn policies_are_part_of_the_config() {
    let text = format!(
        "{CONFIG}\nauthorizationPolicies:\n  - apiVersion: security.istio.io/v1\n    kind: AuthorizationPolicy\n    metadata: {{ name: deny-legacy, namespace: shop, uid: ignored }}\n    spec:\n      action: DENY\n      rules: [{{ from: [{{ source: {{ namespaces: [legacy] }} }}] }}]\n"
    );
    let snap = Snapshot::from_yaml(&text).unwrap();
    let web = snap.workload_by_ip(ip("10.1.0.2")).unwrap();
    let legacy = crate::identity::Identity::new("cluster.local", "legacy", "default");
    let conn = crate::authz::ConnectionInfo {
        src_identity: Some(&legacy),
        src_ip: ip("10.2.0.3"),
        dst_ip: ip("10.1.0.2"),
        dst_port: 8080,
    };
    assert!(!snap.authorizer().authorize(web, &conn).is_allowed());
    let names: Vec<_> = snap.services_of(web).map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web"]);

    let bad = text.replace("namespaces: [legacy]", "ipBlocks: [not-an-ip]");
    let msg = error(&bad);
    assert!(msg.contains("AuthorizationPolicy shop/deny-legacy") && msg.contains("not-an-ip"), "{msg}");
    let typo = text.replace("action: DENY", "acton: DENY");
    assert!(error(&typo).contains("unknown field `acton`"));
}

#[test]
fn canonical_names_follow_istio_labels() {
    let snap = snapshot();
    let web = snap.workload_by_ip(ip("10.1.0.2")).unwrap();
    assert_eq!((web.workload_name(), web.canonical_service(), web.canonical_revision()), ("web-1", "web", "latest"));
    let mut w = web.clone();
    w.workload_name = Some("web".into());
    w.labels.insert("service.istio.io/canonical-revision".into(), "v2".into());
    assert_eq!((w.workload_name(), w.canonical_revision()), ("web", "v2"));
}
