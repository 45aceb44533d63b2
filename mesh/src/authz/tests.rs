//! Table tests: policies in the YAML users apply, connections described by
//! who connects from where to which port, and the expected decision.

use super::*;
use crate::config::policy::{AuthorizationPolicy, PeerAuthentication};

const ROOT: &str = "istio-system";

fn workload(namespace: &str, app: &str) -> Workload {
    Workload {
        uid: "u".into(),
        name: app.into(),
        namespace: namespace.into(),
        node: "n".into(),
        labels: [("app".to_owned(), app.to_owned())].into(),
        ..Default::default()
    }
}

fn policies(yaml: &str) -> Vec<AuthorizationPolicy> {
    yaml_serde::from_str(yaml).unwrap()
}

/// (principal "ns/sa" or "" for plaintext, source IP, destination port)
fn conn<'a>(id: &'a Option<Identity>, src: &str, port: u16) -> ConnectionInfo<'a> {
    ConnectionInfo {
        src_identity: id.as_ref(),
        src_ip: src.parse().unwrap(),
        dst_ip: "10.9.9.9".parse().unwrap(),
        dst_port: port,
    }
}

fn id(ns_sa: &str) -> Option<Identity> {
    let (ns, sa) = ns_sa.split_once('/')?;
    Some(Identity::new("cluster.local", ns, sa))
}

/// Checks each (principal, source ip, port, expected allow) against `yaml`
/// for workload `shop/web`.
fn check(yaml: &str, cases: &[(&str, &str, u16, bool)]) {
    let authz = Authorizer::new(&policies(yaml), &[], ROOT).unwrap();
    let web = workload("shop", "web");
    for (principal, ip, port, allowed) in cases {
        let identity = id(principal);
        let decision = authz.authorize(&web, &conn(&identity, ip, *port));
        assert_eq!(
            decision.is_allowed(),
            *allowed,
            "{principal:?} from {ip} to :{port}: {decision}\npolicies:\n{yaml}"
        );
    }
}

const HEAD: &str = "apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy";

#[test]
fn no_policy_allows() {
    check("[]", &[("shop/client", "10.0.0.1", 80, true), ("", "10.0.0.1", 80, true)]);
}

#[test]
fn allow_by_principal_denies_the_rest() {
    let yaml = format!(
        "- {HEAD}\n  metadata: {{ name: p, namespace: shop }}\n  spec:\n    selector: {{ matchLabels: {{ app: web }} }}\n    action: ALLOW\n    rules:\n    - from: [{{ source: {{ principals: [cluster.local/ns/shop/sa/client] }} }}]\n"
    );
    check(
        &yaml,
        &[("shop/client", "10.0.0.1", 80, true), ("shop/other", "10.0.0.1", 80, false), ("", "10.0.0.1", 80, false)],
    );
}

#[test]
fn deny_by_namespace_and_port() {
    let yaml = format!(
        "- {HEAD}\n  metadata: {{ name: no-legacy, namespace: shop }}\n  spec:\n    action: DENY\n    rules:\n    - from: [{{ source: {{ namespaces: [legacy] }} }}]\n\
         - {HEAD}\n  metadata: {{ name: no-admin-port, namespace: shop }}\n  spec:\n    action: DENY\n    rules:\n    - to: [{{ operation: {{ ports: [\"9090\"] }} }}]\n"
    );
    check(
        &yaml,
        &[
            ("legacy/app", "10.0.0.1", 80, false),
            ("shop/client", "10.0.0.1", 80, true),
            ("shop/client", "10.0.0.1", 9090, false),
        ],
    );
}

#[test]
fn ip_blocks_and_their_negation() {
    let yaml = format!(
        "- {HEAD}\n  metadata: {{ name: p, namespace: shop }}\n  spec:\n    rules:\n    - from: [{{ source: {{ ipBlocks: [10.1.0.0/16, 10.3.0.7], notIpBlocks: [10.1.9.0/24] }} }}]\n"
    );
    check(
        &yaml,
        &[
            ("", "10.1.2.3", 80, true),
            ("", "10.3.0.7", 80, true),
            ("", "10.1.9.9", 80, false),
            ("shop/client", "10.2.0.1", 80, false),
        ],
    );
}

#[test]
fn deny_wins_over_allow() {
    let yaml = format!(
        "- {HEAD}\n  metadata: {{ name: allow-all, namespace: shop }}\n  spec:\n    rules: [{{}}]\n\
         - {HEAD}\n  metadata: {{ name: deny-client, namespace: shop }}\n  spec:\n    action: DENY\n    rules:\n    - from: [{{ source: {{ principals: [\"*/sa/client\"] }} }}]\n"
    );
    check(&yaml, &[("shop/client", "10.0.0.1", 80, false), ("shop/web", "10.0.0.1", 80, true)]);
}

#[test]
fn string_patterns_and_plaintext() {
    let yaml = format!(
        "- {HEAD}\n  metadata: {{ name: require-mtls, namespace: shop }}\n  spec:\n    action: DENY\n    rules:\n    - from: [{{ source: {{ notPrincipals: [\"*\"] }} }}]\n\
         - {HEAD}\n  metadata: {{ name: prefix, namespace: shop }}\n  spec:\n    rules:\n    - from: [{{ source: {{ principals: [\"cluster.local/ns/shop/*\"] }} }}]\n"
    );
    check(
        &yaml,
        &[("", "10.0.0.1", 80, false), ("shop/any", "10.0.0.1", 80, true), ("bank/any", "10.0.0.1", 80, false)],
    );
}

#[test]
fn rule_fields_combine_with_and_lists_with_or() {
    let yaml = format!(
        "- {HEAD}\n  metadata: {{ name: p, namespace: shop }}\n  spec:\n    rules:\n    - from: [{{ source: {{ namespaces: [shop] }} }}, {{ source: {{ ipBlocks: [192.168.0.0/16] }} }}]\n      to: [{{ operation: {{ ports: [\"80\"] }} }}]\n      when: [{{ key: source.ip, notValues: [10.0.0.66] }}]\n"
    );
    check(
        &yaml,
        &[
            ("shop/a", "10.0.0.1", 80, true),
            ("", "192.168.1.1", 80, true),
            ("shop/a", "10.0.0.1", 81, false),
            ("bank/a", "10.0.0.1", 80, false),
            ("shop/a", "10.0.0.66", 80, false),
        ],
    );
}

#[test]
fn l7_attributes_fail_closed() {
    // ALLOW with an L7 rule: that rule never matches, so nothing is allowed.
    let allow = format!(
        "- {HEAD}\n  metadata: {{ name: get-only, namespace: shop }}\n  spec:\n    rules:\n    - from: [{{ source: {{ principals: [cluster.local/ns/shop/sa/client] }} }}]\n      to: [{{ operation: {{ methods: [GET] }} }}]\n"
    );
    check(&allow, &[("shop/client", "10.0.0.1", 80, false)]);
    // DENY with an L7 attribute: the L7 part is ignored, so it denies more.
    let deny = format!(
        "- {HEAD}\n  metadata: {{ name: no-delete, namespace: shop }}\n  spec:\n    action: DENY\n    rules:\n    - to: [{{ operation: {{ methods: [DELETE] }} }}]\n"
    );
    check(&deny, &[("shop/client", "10.0.0.1", 80, false)]);
    let when = format!(
        "- {HEAD}\n  metadata: {{ name: jwt, namespace: shop }}\n  spec:\n    rules:\n    - when: [{{ key: \"request.auth.claims[iss]\", values: [x] }}]\n"
    );
    check(&when, &[("shop/client", "10.0.0.1", 80, false)]);
}

#[test]
fn scopes_namespace_root_and_selector() {
    let yaml = format!(
        "- {HEAD}\n  metadata: {{ name: other-ns, namespace: bank }}\n  spec:\n    action: DENY\n    rules: [{{}}]\n\
         - {HEAD}\n  metadata: {{ name: other-app, namespace: shop }}\n  spec:\n    selector: {{ matchLabels: {{ app: db }} }}\n    action: DENY\n    rules: [{{}}]\n"
    );
    check(&yaml, &[("shop/client", "10.0.0.1", 80, true)]);
    let root = format!(
        "- {HEAD}\n  metadata: {{ name: mesh-wide, namespace: {ROOT} }}\n  spec:\n    action: DENY\n    rules:\n    - to: [{{ operation: {{ ports: [\"22\"] }} }}]\n"
    );
    check(&root, &[("shop/client", "10.0.0.1", 22, false), ("shop/client", "10.0.0.1", 80, true)]);
}

#[test]
fn empty_allow_policy_denies_everything() {
    let yaml = format!("- {HEAD}\n  metadata: {{ name: nothing, namespace: shop }}\n  spec: {{}}\n");
    check(&yaml, &[("shop/client", "10.0.0.1", 80, false)]);
}

#[test]
fn unsupported_actions_and_waypoint_policies() {
    let custom = format!(
        "- {HEAD}\n  metadata: {{ name: ext, namespace: shop }}\n  spec:\n    action: CUSTOM\n    provider: {{ name: opa }}\n    rules: [{{}}]\n"
    );
    check(&custom, &[("shop/client", "10.0.0.1", 80, false)]);
    let audit = format!(
        "- {HEAD}\n  metadata: {{ name: audit, namespace: shop }}\n  spec:\n    action: AUDIT\n    rules: [{{}}]\n"
    );
    check(&audit, &[("shop/client", "10.0.0.1", 80, true)]);
    let waypoint = format!(
        "- {HEAD}\n  metadata: {{ name: wp, namespace: shop }}\n  spec:\n    targetRefs: [{{ kind: Gateway, group: gateway.networking.k8s.io, name: waypoint }}]\n    action: DENY\n    rules: [{{}}]\n"
    );
    check(&waypoint, &[("shop/client", "10.0.0.1", 80, true)]);
}

#[test]
fn service_accounts_resolve_against_the_policy_namespace() {
    let yaml = format!(
        "- {HEAD}\n  metadata: {{ name: p, namespace: shop }}\n  spec:\n    rules:\n    - from: [{{ source: {{ serviceAccounts: [client, bank/teller] }} }}]\n"
    );
    check(
        &yaml,
        &[
            ("shop/client", "10.0.0.1", 80, true),
            ("bank/teller", "10.0.0.1", 80, true),
            ("bank/client", "10.0.0.1", 80, false),
        ],
    );
}

#[test]
fn invalid_values_are_errors() {
    for (field, value) in [("ipBlocks", "10.0.0.0/99"), ("ipBlocks", "nope")] {
        let yaml = format!(
            "- {HEAD}\n  metadata: {{ name: bad, namespace: shop }}\n  spec:\n    rules:\n    - from: [{{ source: {{ {field}: [\"{value}\"] }} }}]\n"
        );
        let err = Authorizer::new(&policies(&yaml), &[], ROOT).unwrap_err();
        assert!(err.to_string().contains("AuthorizationPolicy shop/bad"), "{err}");
        assert!(err.to_string().contains(value), "{err}");
    }
    let yaml = format!(
        "- {HEAD}\n  metadata: {{ name: bad, namespace: shop }}\n  spec:\n    rules:\n    - to: [{{ operation: {{ ports: [\"http\"] }} }}]\n"
    );
    assert!(Authorizer::new(&policies(&yaml), &[], ROOT).is_err());
    let wrong_kind = "- apiVersion: security.istio.io/v1\n  kind: Nope\n  metadata: { name: x, namespace: shop }\n";
    assert!(
        Authorizer::new(&policies(wrong_kind), &[], ROOT)
            .unwrap_err()
            .to_string()
            .contains("expected AuthorizationPolicy")
    );
}

fn peer_auths(yaml: &str) -> Vec<PeerAuthentication> {
    yaml_serde::from_str(yaml).unwrap()
}

#[test]
fn peer_authentication_precedence() {
    let head = "apiVersion: security.istio.io/v1\n  kind: PeerAuthentication";
    let yaml = format!(
        "- {head}\n  metadata: {{ name: mesh, namespace: {ROOT} }}\n  spec: {{ mtls: {{ mode: STRICT }} }}\n\
         - {head}\n  metadata: {{ name: ns, namespace: shop }}\n  spec: {{ mtls: {{ mode: UNSET }} }}\n\
         - {head}\n  metadata: {{ name: web, namespace: shop }}\n  spec:\n    selector: {{ matchLabels: {{ app: web }} }}\n    mtls: {{ mode: PERMISSIVE }}\n    portLevelMtls: {{ \"9000\": {{ mode: STRICT }} }}\n"
    );
    let authz = Authorizer::new(&[], &peer_auths(&yaml), ROOT).unwrap();
    assert!(authz.plaintext_allowed(&workload("shop", "web"), 80), "workload PERMISSIVE beats mesh STRICT");
    assert!(!authz.plaintext_allowed(&workload("shop", "web"), 9000), "port-level STRICT");
    assert!(!authz.plaintext_allowed(&workload("shop", "db"), 80), "UNSET namespace inherits mesh STRICT");
    assert!(!authz.plaintext_allowed(&workload("bank", "x"), 80));
    let none = Authorizer::new(&[], &[], ROOT).unwrap();
    assert!(none.plaintext_allowed(&workload("shop", "web"), 80), "PERMISSIVE by default");
    let bad = format!(
        "- {head}\n  metadata: {{ name: bad, namespace: shop }}\n  spec: {{ portLevelMtls: {{ \"80\": {{ mode: STRICT }} }} }}\n"
    );
    assert!(Authorizer::new(&[], &peer_auths(&bad), ROOT).is_err(), "portLevelMtls without selector");
}

/// `istio.io/dry-run: "true"`: the policy decides nothing; what it would
/// have decided is told apart, with Istio's shadow semantics.
#[test]
fn dry_run_policies_are_evaluated_never_enforced() {
    let yaml = format!(
        "- {HEAD}\n  metadata: {{ name: would-deny, namespace: shop, annotations: {{ istio.io/dry-run: 'true' }} }}\n  \
         spec:\n    action: DENY\n    rules: [{{ from: [{{ source: {{ principals: [cluster.local/ns/shop/sa/evil] }} }}] }}]\n\
         - {HEAD}\n  metadata: {{ name: would-allow, namespace: shop, annotations: {{ istio.io/dry-run: 'True' }} }}\n  \
         spec:\n    action: ALLOW\n    rules: [{{ from: [{{ source: {{ namespaces: [shop] }} }}] }}]\n"
    );
    let authz = Authorizer::new(&policies(&yaml), &[], ROOT).unwrap();
    let web = workload("shop", "web");
    let (evil, friend, stranger) = (id("shop/evil"), id("shop/friend"), id("other/x"));
    for identity in [&evil, &friend, &stranger] {
        assert!(authz.authorize(&web, &conn(identity, "10.0.0.1", 80)).is_allowed(), "dry-run policies never deny");
    }
    let dry = |identity| authz.dry_run(&web, &conn(identity, "10.0.0.1", 80)).unwrap();
    assert_eq!(dry(&evil), Decision::Deny("dry-run policy shop/would-deny would deny it".into()));
    assert_eq!(dry(&friend), Decision::Allow);
    assert!(!dry(&stranger).is_allowed(), "no dry-run ALLOW policy matches a stranger");
    assert_eq!(authz.dry_run(&workload("bank", "vault"), &conn(&evil, "10.0.0.1", 80)), None, "out of scope");
}
