//! Issue 4: the controller in local-directory mode. Agents get config and
//! certificates from it, follow changes to the directory, survive its
//! absence, and cannot obtain identities of other nodes' pods.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_tests::cluster::PodSpec;
use ambit_tests::control_plane::CONTROL_ADDR;
use ambit_tests::require_root;
use ambit_tests::sample::{Server, exchange};
use ambit_tests::topology::{APP_PORT, MESH_NAMESPACE, Standard, labels};
use mesh::ca::CaError;
use mesh::control::{ControlClient, ControlError, SignRequest, ztunnel_identity};
use mesh::identity::Identity;
use mesh::tls::TrustBundle;

use crate::support::{WAIT, access_log_in, wait_all_agents_hold};

/// Adds an enrolled pod with its sample server, and publishes the objects.
async fn add_enrolled_pod(bed: &mut Standard, node: usize, name: &str) -> SocketAddr {
    let spec = PodSpec {
        name: name.into(),
        namespace: MESH_NAMESPACE.into(),
        service_account: Some(format!("sa-{name}")),
        workload_name: None,
        labels: labels(&[("name", name)]),
    };
    let index = bed.cluster.add_pod(node, spec).unwrap();
    let pod = &bed.cluster.pods[index];
    let server = Server::start(&pod.netns, name, pod.addr(APP_PORT)).unwrap();
    let addr = pod.addr(APP_PORT);
    bed.servers.insert(name.into(), server);
    addr
}

async fn reaches(bed: &Standard, from: &str, to: SocketAddr) -> bool {
    let pod = bed.cluster.pod(from);
    exchange(&pod.netns, &pod.name, to, 512, 512).await.is_ok()
}

/// Connections `rounds` from n1-a to n2-a, one after another; the failures.
async fn traffic(bed: &Standard, rounds: std::ops::Range<usize>) -> Vec<String> {
    let (client, to) = (bed.cluster.pod("n1-a"), bed.cluster.pod("n2-a").addr(APP_PORT));
    let mut failures = Vec::new();
    for round in rounds {
        if let Err(error) = exchange(&client.netns, &client.name, to, 2048, 2048).await {
            failures.push(format!("round {round}: {error:#}"));
        }
    }
    failures
}

/// `from` reaches `to`, and the destination's agent saw it arrive over
/// HBONE as `from`'s identity.
async fn assert_meshed(bed: &Standard, from: &str, to: SocketAddr, to_node: usize) {
    let pod = bed.cluster.pod(from);
    exchange(&pod.netns, &pod.name, to, 4096, 4096).await.unwrap();
    let inbound = access_log_in(&bed.cluster, to_node, "inbound", pod.ip.into(), &to.to_string()).await;
    assert_eq!(inbound["src.identity"], format!("spiffe://cluster.local/ns/mesh/sa/sa-{from}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_route_on_the_controllers_config_and_follow_changes() {
    require_root();
    let mut bed = Standard::start_with_controller().await.unwrap();
    let n2a = bed.cluster.pod("n2-a").addr(APP_PORT);
    assert_meshed(&bed, "n1-a", n2a, 1).await;

    // A pod created later gets config on every node, and a certificate on its own.
    let n1c = add_enrolled_pod(&mut bed, 0, "n1-c").await;
    bed.apply(|_| {}).await.unwrap();
    assert_meshed(&bed, "n1-c", n2a, 1).await;
    assert_meshed(&bed, "n2-b", n1c, 0).await;

    // A policy written to the directory is enforced, and removing it lifts it.
    let deny: mesh::config::policy::AuthorizationPolicy = yaml_serde::from_str(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-c, namespace: mesh}\n\
         spec:\n  selector: {matchLabels: {name: n1-c}}\n  action: DENY\n  rules: [{}]\n",
    )
    .unwrap();
    // (How fast a change reaches the agents is a benchmark's business, not a test's.)
    bed.apply(|config| config.authorization_policies.push(deny)).await.unwrap();
    assert!(!reaches(&bed, "n2-b", n1c).await, "the DENY policy is not enforced");
    bed.apply(|config| config.authorization_policies.clear()).await.unwrap();
    assert!(reaches(&bed, "n2-b", n1c).await, "deleting the policy must lift the deny");

    let metrics = bed.cluster.control().metrics().await.unwrap();
    assert_eq!(metrics.sum("ambit_controller_connected_agents", &[]).unwrap(), 2.0);
    // Each agent holds two connections, its config stream and one that all
    // its certificate requests share (n1-c's identity came later, on it).
    assert_eq!(metrics.sum("ambit_controller_connections_total", &[]).unwrap(), 4.0);
    let issued = metrics.sum("ambit_controller_certificates_total", &[("result", "issued")]).unwrap();
    assert!(issued >= 7.0, "{issued} certificates: the agents' own two and one per enrolled pod");
}

/// A client for the controller, as node `node`'s agent would be, run on a
/// thread inside that node's namespace (the controller is only reachable
/// from the cluster's network).
fn as_node<R: Send>(
    bed: &Standard,
    node: usize,
    credential: &str,
    f: impl AsyncFnOnce(ControlClient) -> R + Send,
) -> R {
    let name = bed.cluster.nodes[node].name.clone();
    let trust = TrustBundle::from_pem("cluster.local", bed.cluster.ca().root_pem()).unwrap();
    let client = ControlClient::new(CONTROL_ADDR.to_string(), trust, credential.to_owned(), name);
    bed.cluster.nodes[node]
        .netns
        .enter(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(runtime.block_on(f(client)))
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_refuses_identities_of_other_nodes_pods() {
    require_root();
    let mut bed = Standard::start_with_controller().await.unwrap();
    let credential = std::fs::read_to_string(bed.cluster.control().credential("node1").unwrap()).unwrap();
    let ttl = Duration::from_secs(60);
    let own = Identity::new("cluster.local", MESH_NAMESPACE, "sa-n1-a");
    let foreign = Identity::new("cluster.local", MESH_NAMESPACE, "sa-n2-a");

    let (own_cert, foreign_cert) = as_node(&bed, 0, &credential, async |client| {
        (client.certificate(&own, ttl).await, client.certificate(&foreign, ttl).await)
    });
    assert_eq!(own_cert.map(|c| c.identity).ok(), Some(own));
    match foreign_cert {
        Err(CaError::IdentityMismatch { allowed, .. }) => {
            assert!(
                allowed.contains("node node1 runs no pod as spiffe://cluster.local/ns/mesh/sa/sa-n2-a"),
                "{allowed}"
            )
        }
        other => panic!("a foreign identity must be refused, got {:?}", other.map(|c| c.identity)),
    }
    let refused = bed
        .cluster
        .control()
        .process()
        .wait_for_log("the refusal", WAIT, |r| {
            r["message"].as_str().is_some_and(|m| m.contains("refused a certificate"))
        })
        .await
        .unwrap();
    assert_eq!(refused["node"], "node1");

    // No credential, no certificate; and the config stream wants the agent's
    // own certificate, not a workload's.
    let unauthenticated = as_node(&bed, 0, "not-a-real-token-at-all", async |client| {
        client.certificate(&ztunnel_identity("cluster.local"), ttl).await.err().map(|e| e.to_string())
    });
    assert!(unauthenticated.as_ref().is_some_and(|e| e.contains("401")), "{unauthenticated:?}");
    let stream_as_workload = as_node(&bed, 0, &credential, async |client| {
        let cert = client.certificate(&Identity::new("cluster.local", MESH_NAMESPACE, "sa-n1-a"), ttl).await?;
        Ok::<_, anyhow::Error>(client.config_stream(&cert, None).await.err())
    })
    .unwrap();
    assert!(
        matches!(&stream_as_workload, Some(ControlError::Status { status, .. }) if status.as_u16() == 403),
        "{stream_as_workload:?}"
    );

    // Malformed requests get a 400 that says what is wrong, and the
    // controller carries on.
    let (bad_csr, bad_identity) = as_node(&bed, 0, &credential, async |client| {
        let identity = "spiffe://cluster.local/ns/mesh/sa/sa-n1-a".to_owned();
        let bad_csr = SignRequest { identity, csr: "-----BEGIN GARBAGE-----".into(), ttl_seconds: 60 };
        let bad_identity = SignRequest { identity: "http://not-spiffe".into(), ..bad_csr.clone() };
        (client.sign(&bad_csr).await.err(), client.sign(&bad_identity).await.err())
    });
    for (error, says) in [(bad_csr, "invalid certificate signing request"), (bad_identity, "bad identity")] {
        assert!(
            matches!(&error, Some(ControlError::Status { status, message }) if status.as_u16() == 400 && message.contains(says)),
            "{error:?}"
        );
    }
    let still = as_node(&bed, 0, &credential, async |client| client.certificate(&own_identity(), ttl).await.is_ok());
    assert!(still, "the controller still serves after bad input");
}

fn own_identity() -> Identity {
    Identity::new("cluster.local", MESH_NAMESPACE, "sa-n1-a")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_keep_serving_while_the_controller_is_down() {
    require_root();
    let mut bed = Standard::start_with_controller().await.unwrap();
    let mut failures = traffic(&bed, 0..50).await;
    bed.cluster.control().kill().await.unwrap();
    failures.extend(traffic(&bed, 50..150).await);
    for node in 0..2 {
        bed.cluster
            .ztunnel(node)
            .wait_for_log("noticing the controller is gone", WAIT, |r| {
                r["message"] == "controller unreachable; serving the last good config"
            })
            .await
            .unwrap();
    }
    failures.extend(traffic(&bed, 150..200).await);
    assert!(failures.is_empty(), "connections failed while the controller was down: {failures:#?}");

    // A pod added while the controller is down gets config once it is back.
    let n2c = add_enrolled_pod(&mut bed, 1, "n2-c").await;
    bed.cluster.write_config().unwrap();
    bed.cluster.control().start().await.unwrap();
    let workloads = bed.cluster.config().workloads.len();
    wait_all_agents_hold(&bed.cluster, workloads).await;
    assert_meshed(&bed, "n1-a", n2c, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_is_rejected_and_its_last_good_version_stays() {
    require_root();
    let mut bed = Standard::start_with_controller().await.unwrap();
    let n2a = bed.cluster.pod("n2-a").addr(APP_PORT);
    let good: mesh::config::policy::AuthorizationPolicy = yaml_serde::from_str(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-n1a, namespace: mesh}\n\
         spec:\n  selector: {matchLabels: {name: n2-a}}\n  action: DENY\n  rules:\n  \
         - from: [{source: {principals: [cluster.local/ns/mesh/sa/sa-n1-a]}}]\n",
    )
    .unwrap();
    bed.apply(|config| config.authorization_policies.push(good)).await.unwrap();
    assert!(!reaches(&bed, "n1-a", n2a).await, "the good policy is enforced");

    // The same policy, now with an ipBlock that is no CIDR.
    let policy = &mut bed.cluster.config_mut().authorization_policies[0];
    policy.spec.rules[0].from[0].source.ip_blocks = vec!["not-a-cidr".into()];
    bed.cluster.write_config().unwrap();
    let control = bed.cluster.control();
    let rejected = control
        .process()
        .wait_for_log("the rejection", WAIT, |r| r["message"] == "rejected; its last good version stays in force")
        .await
        .unwrap();
    assert_eq!(rejected["object"], "AuthorizationPolicy mesh/deny-n1a");
    assert!(rejected["reason"].as_str().is_some_and(|r| r.contains("not-a-cidr")), "{rejected}");
    let (status, body) =
        ambit_tests::http::get(&control.netns, ambit_tests::control_plane::METRICS_ADDR, "/status").await.unwrap();
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["rejected"][0]["object"], "AuthorizationPolicy mesh/deny-n1a", "{status}");
    assert!(!reaches(&bed, "n1-a", n2a).await, "the last good version stays in force");
    assert!(reaches(&bed, "n1-b", n2a).await, "and still allows what it allowed");
}

/// The L7 kinds in local-directory mode: the same translation and checks as
/// against the API server, with rejections on `/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_kinds_in_the_directory_are_checked_and_streamed() {
    require_root();
    let mut bed = Standard::start_with_controller().await.unwrap();
    let route = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: echo, namespace: mesh}\n\
                 spec:\n  hosts: [echo]\n  http:\n  - route:\n    - {destination: {host: echo, subset: v1}}\n";
    let control = bed.cluster.control();
    control.write_objects("routes.yaml", route).unwrap();
    let rejected = control
        .process()
        .wait_for_log("the route's rejection", WAIT, |r| r["object"] == "VirtualService mesh/echo")
        .await
        .unwrap();
    assert!(rejected["reason"].as_str().is_some_and(|r| r.contains("subset \"v1\"")), "{rejected}");

    // A DestinationRule defining the subset, in another file: the route settles.
    let subsets = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: echo, namespace: mesh}\n\
                   spec:\n  host: echo\n  subsets: [{name: v1, labels: {app: echo}}]\n";
    control.write_objects("subsets.yaml", subsets).unwrap();
    bed.cluster
        .ztunnel(0)
        .wait_for_log("a config with the route", WAIT, |r| {
            r["message"] == "config applied" && r["routes"].as_u64() == Some(1)
        })
        .await
        .unwrap();
    let dump = crate::support::config_dump(&bed.cluster, 0).await;
    let route = &dump["config"]["httpRoutes"][0];
    assert_eq!(route["rules"][0]["destinations"][0]["subset"], "v1", "{route}");
    let control = bed.cluster.control();
    let (_, body) =
        ambit_tests::http::get(&control.netns, ambit_tests::control_plane::METRICS_ADDR, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["rejected"], serde_json::json!([]), "{status}");
}
