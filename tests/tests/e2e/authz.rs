//! Issue 3, tests 3 and 4: L4 authorization at the destination, and
//! PeerAuthentication STRICT/PERMISSIVE, applied through the config file in
//! the YAML users `kubectl apply`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ambit_tests::require_root;
use ambit_tests::sample::{Server, echo_connect, echo_roundtrip, exchange};
use ambit_tests::topology::{APP_PORT, Standard};
use mesh::config::policy::{AuthorizationPolicy, PeerAuthentication};

use crate::support::{WAIT, access_log, access_log_in, metrics};

fn policies(yaml: &str) -> Vec<AuthorizationPolicy> {
    yaml_serde::from_str(yaml).unwrap()
}

/// Whether `from` may complete an exchange with `to`'s sample server.
async fn reaches(bed: &Standard, from: &str, to: SocketAddr) -> bool {
    let pod = bed.cluster.pod(from);
    exchange(&pod.netns, &pod.name, to, 512, 512).await.is_ok()
}

/// The destination agent logged a connection from `from` to `to` refused
/// with `flag`.
async fn assert_denied_at(bed: &Standard, node: usize, direction: &str, from: &str, to: SocketAddr, flag: &str) {
    let src = format!("{}:", bed.cluster.pod(from).ip);
    let to = to.to_string();
    bed.cluster
        .ztunnel(node)
        .wait_for_log(&format!("{direction} {flag} from {from} to {to}"), WAIT, |r| {
            r["target"] == "access"
                && r["direction"] == direction
                && r["response_flags"] == flag
                && r["src.addr"].as_str().is_some_and(|s| s.starts_with(&src))
                && r["dst.addr"] == to
        })
        .await
        .unwrap();
}

const HEAD: &str = "apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy";

/// Test 3: allow by principal, deny by namespace, deny by port, ipBlocks,
/// each enforced by the destination's agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policies_are_enforced_at_the_destination() {
    require_root();
    let mut bed = Standard::start().await.unwrap();
    let n2a = bed.cluster.pod("n2-a").addr(APP_PORT);
    let n2b = bed.cluster.pod("n2-b").addr(APP_PORT);
    let n1b = bed.cluster.pod("n1-b");
    let admin_port = SocketAddr::new(IpAddr::V4(n1b.ip), 9090);
    let _admin_server = Server::start(&n1b.netns, "n1-b-admin", admin_port).unwrap();
    let n1b = n1b.addr(APP_PORT);

    let yaml = format!(
        "- {HEAD}\n  metadata: {{ name: only-n1-a, namespace: mesh }}\n  spec:\n    selector: {{ matchLabels: {{ name: n2-a }} }}\n    rules:\n    - from: [{{ source: {{ principals: [cluster.local/ns/mesh/sa/sa-n1-a] }} }}]\n\
         - {HEAD}\n  metadata: {{ name: no-mesh-callers, namespace: mesh }}\n  spec:\n    selector: {{ matchLabels: {{ name: n2-b }} }}\n    action: DENY\n    rules:\n    - from: [{{ source: {{ namespaces: [mesh] }} }}]\n\
         - {HEAD}\n  metadata: {{ name: no-8080, namespace: mesh }}\n  spec:\n    selector: {{ matchLabels: {{ name: n1-b }} }}\n    action: DENY\n    rules:\n    - to: [{{ operation: {{ ports: [\"8080\"] }} }}]\n"
    );
    bed.apply(|c| c.authorization_policies = policies(&yaml)).await.unwrap();
    // Allow by principal.
    assert!(reaches(&bed, "n1-a", n2a).await, "the allowed principal was refused");
    assert!(!reaches(&bed, "n1-b", n2a).await, "another principal got through");
    assert_denied_at(&bed, 1, "inbound", "n1-b", n2a, "DENY").await;
    let outbound = access_log(&bed.cluster, 0, IpAddr::V4(bed.cluster.pod("n1-b").ip), &n2a.to_string()).await;
    assert!(outbound["error"].as_str().unwrap().contains("401"), "{outbound}");
    // Deny by namespace: mesh callers are refused, a plaintext caller
    // (no namespace) is not.
    assert!(!reaches(&bed, "n1-a", n2b).await);
    assert_denied_at(&bed, 1, "inbound", "n1-a", n2b, "DENY").await;
    assert!(reaches(&bed, "n1-plain", n2b).await);
    // Deny by port, same node: 8080 refused, 9090 fine.
    assert!(!reaches(&bed, "n1-a", n1b).await);
    assert_denied_at(&bed, 0, "inbound", "n1-a", n1b, "DENY").await;
    assert!(reaches(&bed, "n1-a", admin_port).await);

    // ipBlocks: only n1-b's address may reach n2-a.
    let n1b_ip = bed.cluster.pod("n1-b").ip;
    let yaml = format!(
        "- {HEAD}\n  metadata: {{ name: from-n1-b-ip, namespace: mesh }}\n  spec:\n    selector: {{ matchLabels: {{ name: n2-a }} }}\n    rules:\n    - from: [{{ source: {{ ipBlocks: [\"{n1b_ip}/32\"] }} }}]\n"
    );
    bed.apply(|c| c.authorization_policies = policies(&yaml)).await.unwrap();
    assert!(reaches(&bed, "n1-b", n2a).await);
    assert!(!reaches(&bed, "n1-a", n2a).await);
    assert!(!reaches(&bed, "n2-b", n2a).await, "same-node callers are checked too");
}

/// Test 3, live: a connection that a new policy denies is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_closes_live_connections_it_denies() {
    require_root();
    let mut bed = Standard::start().await.unwrap();
    let n2b = bed.cluster.pod("n2-b").addr(APP_PORT);
    let client_ip = IpAddr::V4(bed.cluster.pod("n1-a").ip);
    let (client, other) = (bed.cluster.pod("n1-a"), bed.cluster.pod("n1-b"));
    let (_, mut doomed) = echo_connect(&client.netns, &client.name, n2b).await.unwrap();
    let (_, mut spared) = echo_connect(&other.netns, &other.name, n2b).await.unwrap();
    echo_roundtrip(&mut doomed, b"before").await.unwrap();
    let yaml = format!(
        "- {HEAD}\n  metadata: {{ name: no-n1-a, namespace: mesh }}\n  spec:\n    action: DENY\n    rules:\n    - from: [{{ source: {{ principals: [cluster.local/ns/mesh/sa/sa-n1-a] }} }}]\n"
    );
    bed.apply(|c| c.authorization_policies = policies(&yaml)).await.unwrap();
    let closed =
        tokio::time::timeout(WAIT, echo_roundtrip(&mut doomed, b"after")).await.expect("connection stayed open");
    assert!(closed.is_err(), "the denied connection still carries data");
    echo_roundtrip(&mut spared, b"still allowed").await.unwrap();
    let log = access_log_in(&bed.cluster, 1, "inbound", client_ip, &n2b.to_string()).await;
    assert_eq!(log["response_flags"], "REVOKED", "{log}");
    assert_eq!(metrics(&bed.cluster, 1).await.sum("ambit_connections_closed_by_policy_total", &[]).unwrap(), 1.0);
}

fn peer_authentication(namespace: &str, mode: &str) -> Vec<PeerAuthentication> {
    let yaml = format!(
        "- apiVersion: security.istio.io/v1\n  kind: PeerAuthentication\n  metadata: {{ name: default, namespace: {namespace} }}\n  spec: {{ mtls: {{ mode: {mode} }} }}\n"
    );
    yaml_serde::from_str(&yaml).unwrap()
}

/// Test 4: PERMISSIVE (the default) lets a non-enrolled pod in, labelled
/// `unknown`; STRICT refuses it, and closes such connections already open,
/// while mesh traffic flows on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_plaintext_and_permissive_admits_it_as_unknown() {
    require_root();
    let mut bed = Standard::start().await.unwrap();
    let n2a = bed.cluster.pod("n2-a").addr(APP_PORT);
    let plain_ip = IpAddr::V4(bed.cluster.pod("n1-plain").ip);
    assert!(reaches(&bed, "n1-plain", n2a).await, "PERMISSIVE must admit plaintext");
    let log = access_log_in(&bed.cluster, 1, "inbound_plaintext", plain_ip, &n2a.to_string()).await;
    assert_eq!(log["src.identity"], "-");
    let labels = [
        ("reporter", "destination"),
        ("source_principal", "unknown"),
        ("connection_security_policy", "unknown"),
        ("destination_workload", "n2-a"),
    ];
    assert_eq!(metrics(&bed.cluster, 1).await.sum("istio_tcp_connections_opened_total", &labels).unwrap(), 1.0);

    let plain = bed.cluster.pod("n1-plain");
    let (_, mut open_plaintext) = echo_connect(&plain.netns, &plain.name, n2a).await.unwrap();
    bed.apply(|c| c.peer_authentications = peer_authentication("mesh", "STRICT")).await.unwrap();
    assert!(!reaches(&bed, "n1-plain", n2a).await, "STRICT must refuse plaintext");
    assert_denied_at(&bed, 1, "inbound_plaintext", "n1-plain", n2a, "DENY").await;
    let outside = bed.cluster.outside.as_ref().unwrap();
    let rogue = tokio::time::timeout(Duration::from_secs(10), exchange(&outside.netns, "rogue", n2a, 16, 16)).await;
    assert!(matches!(rogue, Ok(Err(_))), "a host outside the mesh reached a STRICT workload: {rogue:?}");
    let closed = tokio::time::timeout(WAIT, echo_roundtrip(&mut open_plaintext, b"after")).await.expect("still open");
    assert!(closed.is_err(), "an open plaintext connection survived STRICT");
    assert!(reaches(&bed, "n1-a", n2a).await, "mesh traffic must flow under STRICT");
}

/// `istio.io/dry-run: "true"` on a DENY policy: the connection it matches
/// goes through, and the access line and a counter say it would have been
/// denied. The same policy without the annotation denies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_policy_is_evaluated_and_logged_never_enforced() {
    require_root();
    let mut bed = Standard::start().await.unwrap();
    let n2a = bed.cluster.pod("n2-a").addr(APP_PORT);
    let policy = |annotations: &str| {
        format!(
            "- {HEAD}\n  metadata: {{ name: no-n1-a, namespace: mesh{annotations} }}\n  spec:\n    \
             selector: {{ matchLabels: {{ name: n2-a }} }}\n    action: DENY\n    \
             rules:\n    - from: [{{ source: {{ principals: [cluster.local/ns/mesh/sa/sa-n1-a] }} }}]\n"
        )
    };
    let dry_run = policies(&policy(", annotations: { istio.io/dry-run: 'true' }"));
    bed.apply(|c| c.authorization_policies = dry_run).await.unwrap();
    assert!(reaches(&bed, "n1-a", n2a).await, "a dry-run DENY policy was enforced");
    let log = access_log_in(&bed.cluster, 1, "inbound", IpAddr::V4(bed.cluster.pod("n1-a").ip), &n2a.to_string()).await;
    assert_eq!(log["response_flags"], "-");
    assert!(log["authz.dry_run"].as_str().is_some_and(|v| v.contains("mesh/no-n1-a would deny")), "{log}");
    let counted = metrics(&bed.cluster, 1).await.sum("ambit_authz_dry_run_total", &[("result", "deny")]);
    assert_eq!(counted.unwrap(), 1.0);

    let enforced = policies(&policy(""));
    bed.apply(|c| c.authorization_policies = enforced).await.unwrap();
    assert!(!reaches(&bed, "n1-a", n2a).await, "the same policy, enforced, denies");
}
