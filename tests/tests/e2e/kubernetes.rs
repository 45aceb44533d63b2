//! Issue 4 against a real kube-apiserver (1.20, from Debian's source): the
//! manifests install, the CRDs' schemas reject bad objects at apply time.

use std::path::Path;
use std::time::Duration;

use ambit_tests::cluster::PodSpec;
use ambit_tests::control_plane::CONTROL_ADDR;
use ambit_tests::kube_apiserver::ApiServer;
use ambit_tests::netns::{Netns, unique_prefix};
use ambit_tests::require_root;
use ambit_tests::sample::{Server, exchange};
use ambit_tests::topology::{APP_PORT, MESH_NAMESPACE, Standard, labels};
use mesh::control::ControlClient;
use mesh::identity::Identity;
use mesh::tls::TrustBundle;
use serde_json::Value;

use crate::support::{WAIT, access_log_in, wait_all_agents_hold};

fn manifests() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests").display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_install_and_the_crds_reject_bad_policies() {
    require_root();
    let netns = Netns::create(&format!("{}-api", unique_prefix())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(&netns, dir.path()).await.unwrap();

    let applied = api.install(&netns, Path::new(&manifests())).await.unwrap();
    for created in [
        "namespace/ambit-system",
        "customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.security.istio.io",
        "clusterrole.rbac.authorization.k8s.io/ambit-controller",
        "daemonset.apps/ztunnel",
        "deployment.apps/ambit-controller",
    ] {
        assert!(applied.contains(created), "{created} not created:\n{applied}");
    }
    // The HTTPRoute example needs the Gateway API CRDs.
    let gateway_api = format!("{}/gateway-api", manifests());
    let applied = api.install(&netns, Path::new(&gateway_api)).await.unwrap();
    assert!(applied.contains("httproutes.gateway.networking.k8s.io created"), "{applied}");
    let examples = format!("{}/examples", manifests());
    let applied = api.kubectl(&netns, &["apply", "-f", &examples]).await.unwrap();
    for created in [
        "authorizationpolicy.security.istio.io/payments-from-shop created",
        "peerauthentication.security.istio.io/strict created",
        "destinationrule.networking.istio.io/reviews created",
        "virtualservice.networking.istio.io/reviews created",
        "httproute.gateway.networking.k8s.io/ratings created",
        "authorizationpolicy.security.istio.io/reviews-readers created",
    ] {
        assert!(applied.contains(created), "{created}:\n{applied}");
    }

    istio_docs_apply_unchanged(&api, &netns).await;

    let bad_action = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: shop}\n\
                      spec: {action: MAYBE}\n";
    let refused = api.apply(&netns, bad_action).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("spec.action") && refused.contains("MAYBE"), "{refused}");
    let bad_rules = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: shop}\n\
                     spec: {rules: [{from: [{source: {namespaces: default}}]}]}\n";
    let refused = api.apply(&netns, bad_rules).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("namespaces"), "{refused}");
    let bad_route = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad, namespace: shop}\n\
                     spec: {hosts: [a], http: [{route: [{destination: {port: {number: 80}}}]}]}\n";
    let refused = api.apply(&netns, bad_route).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("host"), "a destination without a host: {refused}");
}

/// Objects as Istio's task pages write them (older API versions, `group:
/// ""`, deprecated fields Istio honours) apply unchanged, and what they say
/// is stored, not pruned.
async fn istio_docs_apply_unchanged(api: &ApiServer, netns: &Netns) {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/istio-docs.yaml");
    let applied = api.kubectl(netns, &["apply", "-f", docs.to_str().unwrap()]).await.unwrap();
    for created in [
        "peerauthentication.security.istio.io/default created",
        "authorizationpolicy.security.istio.io/productpage-viewer created",
        "authorizationpolicy.security.istio.io/deny-outsiders created",
        "destinationrule.networking.istio.io/reviews created",
        "virtualservice.networking.istio.io/reviews created",
        "virtualservice.networking.istio.io/ratings created",
        "httproute.gateway.networking.k8s.io/details created",
    ] {
        assert!(applied.contains(created), "{created}:\n{applied}");
    }
    let read = |kind: &'static str, name: &'static str| async move {
        let json = api.kubectl(netns, &["get", kind, name, "-n", "bookinfo", "-o", "json"]).await.unwrap();
        serde_json::from_str::<Value>(&json).unwrap()
    };
    let rule = read("destinationrules.v1.networking.istio.io", "reviews").await;
    assert_eq!(rule["spec"]["trafficPolicy"]["outlierDetection"]["consecutiveErrors"], 7, "{rule}");
    let route = read("virtualservices.v1.networking.istio.io", "reviews").await;
    assert_eq!(route["spec"]["http"][0]["fault"]["delay"]["percent"], 100, "{route}");
    let policy = read("authorizationpolicies.v1.security.istio.io", "productpage-viewer").await;
    assert_eq!(policy["spec"]["targetRefs"][0]["kind"], "Service", "{policy}");
}

/// Waits until node `node`'s agent runs a config newer than `after` with
/// `enrolled` local pods captured; returns that version.
async fn wait_enrolled(bed: &Standard, node: usize, after: u64, enrolled: u64) -> u64 {
    let record = bed
        .cluster
        .ztunnel(node)
        .wait_for_log(&format!("{enrolled} enrolled after version {after}"), WAIT, |r| {
            r["message"] == "capture updated"
                && r["version"].as_u64() > Some(after)
                && r["enrolled"].as_u64() == Some(enrolled)
        })
        .await
        .unwrap();
    record["version"].as_u64().unwrap()
}

/// The latest config version node `node`'s agent has applied.
fn agent_version(bed: &Standard, node: usize) -> u64 {
    bed.cluster.ztunnel(node).log_records().iter().filter_map(|r| r["version"].as_u64()).max().unwrap_or(0)
}

/// Waits until node `node`'s agent applies a config newer than `after`.
async fn wait_newer(bed: &Standard, node: usize, after: u64) -> u64 {
    let record = bed
        .cluster
        .ztunnel(node)
        .wait_for_log(&format!("a config newer than {after}"), WAIT, |r| {
            r["message"] == "capture updated" && r["version"].as_u64() > Some(after)
        })
        .await
        .unwrap();
    record["version"].as_u64().unwrap()
}

async fn reaches(bed: &Standard, from: &str, to: &str) -> bool {
    let pod = bed.cluster.pod(from);
    exchange(&pod.netns, &pod.name, bed.cluster.pod(to).addr(APP_PORT), 512, 512).await.is_ok()
}

/// Every condition on policy `name` now.
async fn conditions_of(bed: &mut Standard, name: &str) -> Vec<Value> {
    let json =
        bed.cluster.control().kubectl(&["get", "authorizationpolicy", name, "-n", MESH_NAMESPACE, "-o", "json"]).await;
    let object: Value = serde_json::from_str(&json.unwrap()).unwrap();
    object["status"]["conditions"].as_array().cloned().unwrap_or_default()
}

/// Writes a condition of another controller onto policy `name`'s status,
/// as that controller would (a plain update of the status subresource).
async fn add_foreign_condition(bed: &mut Standard, name: &str) {
    let control = bed.cluster.control();
    let json = control.kubectl(&["get", "authorizationpolicy", name, "-n", MESH_NAMESPACE, "-o", "json"]).await;
    let mut object: Value = serde_json::from_str(&json.unwrap()).unwrap();
    let foreign = serde_json::json!({"type": "ReconciledElsewhere", "status": "True", "reason": "Other",
                                     "message": "another controller", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    object["status"]["conditions"].as_array_mut().unwrap().push(foreign);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("status.json");
    std::fs::write(&file, object.to_string()).unwrap();
    let path = format!("/apis/security.istio.io/v1/namespaces/{MESH_NAMESPACE}/authorizationpolicies/{name}/status");
    control.kubectl(&["replace", "--raw", &path, "-f", file.to_str().unwrap()]).await.unwrap();
}

/// The `Accepted` condition of a policy, once the leader has written one
/// for generation `generation` (polled through kubectl, bounded).
async fn accepted_condition(bed: &mut Standard, name: &str, generation: u64) -> Value {
    written_condition(bed, name, generation).await.expect("the leader writes an Accepted condition")
}

async fn written_condition(bed: &mut Standard, name: &str, generation: u64) -> Option<Value> {
    let control = bed.cluster.control();
    for _ in 0..200 {
        let json =
            control.kubectl(&["get", "authorizationpolicy", name, "-n", MESH_NAMESPACE, "-o", "json"]).await.unwrap();
        let object: Value = serde_json::from_str(&json).unwrap();
        let conditions = object["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let accepted = conditions.iter().find(|c| c["type"] == "Accepted");
        if let Some(condition) = accepted.filter(|c| c["observedGeneration"].as_u64() == Some(generation)) {
            return Some(condition.clone());
        }
    }
    None
}

// As Istio's task pages write it: v1beta1.
const DENY_N1A: &str = "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n\
                        metadata: {name: deny-n1a, namespace: mesh}\nspec:\n  selector: {matchLabels: {name: n2-a}}\n  \
                        action: DENY\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/mesh/sa/sa-n1-a]}}]\n";

/// Issue 4, test 2 (and the CA refusal, test 5, in this mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_follows_labels_and_policies() {
    require_root();
    let mut bed = Standard::start_with_kubernetes().await.unwrap();
    assert!(reaches(&bed, "n1-a", "n2-a").await);

    // Unlabel, then label the namespace with kubectl: enrolment follows.
    let before = agent_version(&bed, 0);
    bed.cluster.control().kubectl(&["label", "namespace", MESH_NAMESPACE, "istio.io/dataplane-mode-"]).await.unwrap();
    let unlabelled = wait_enrolled(&bed, 0, before, 0).await;
    bed.cluster
        .control()
        .kubectl(&["label", "namespace", MESH_NAMESPACE, "istio.io/dataplane-mode=ambient"])
        .await
        .unwrap();
    wait_enrolled(&bed, 0, unlabelled, 2).await;
    wait_enrolled(&bed, 1, agent_version(&bed, 1).saturating_sub(1), 2).await;
    let n1a = bed.cluster.pod("n1-a");
    exchange(&n1a.netns, "n1-a", bed.cluster.pod("n2-a").addr(APP_PORT), 4096, 4096).await.unwrap();
    let inbound =
        access_log_in(&bed.cluster, 1, "inbound", n1a.ip.into(), &bed.cluster.pod("n2-a").addr(APP_PORT).to_string())
            .await;
    assert_eq!(inbound["src.identity"], "spiffe://cluster.local/ns/mesh/sa/sa-n1-a", "over HBONE as n1-a");

    // kubectl apply: enforced; kubectl delete lifts it. (How fast is a
    // benchmark's business.)
    let before = agent_version(&bed, 1);
    bed.cluster.control().kube_apply(DENY_N1A).await.unwrap();
    wait_newer(&bed, 1, before).await;
    assert!(!reaches(&bed, "n1-a", "n2-a").await, "the DENY policy is enforced");
    assert!(reaches(&bed, "n1-b", "n2-a").await, "and denies only what it says");
    let accepted = accepted_condition(&mut bed, "deny-n1a", 1).await;
    assert_eq!(
        (accepted["type"].as_str(), accepted["status"].as_str()),
        (Some("Accepted"), Some("True")),
        "{accepted}"
    );

    // Another controller's condition on the same object survives ours.
    add_foreign_condition(&mut bed, "deny-n1a").await;
    // A new generation, still accepted: the transition time stays.
    let same_meaning = DENY_N1A.replace("sa-n1-a]", "sa-n1-a, cluster.local/ns/mesh/sa/sa-n1-a]");
    bed.cluster.control().kube_apply(&same_meaning).await.unwrap();
    let again = accepted_condition(&mut bed, "deny-n1a", 2).await;
    assert_eq!(again["lastTransitionTime"], accepted["lastTransitionTime"], "the status did not change: {again}");

    // A semantically bad version: rejected in its status, last good stays.
    let bad = DENY_N1A.replace("principals: [cluster.local/ns/mesh/sa/sa-n1-a]", "ipBlocks: [not-a-cidr]");
    bed.cluster.control().kube_apply(&bad).await.unwrap();
    let rejected = accepted_condition(&mut bed, "deny-n1a", 3).await;
    assert_eq!(rejected["status"], "False", "{rejected}");
    assert!(rejected["message"].as_str().is_some_and(|m| m.contains("not-a-cidr")), "{rejected}");
    let conditions = conditions_of(&mut bed, "deny-n1a").await;
    assert!(
        conditions.iter().any(|c| c["type"] == "ReconciledElsewhere"),
        "another controller's condition: {conditions:?}"
    );
    assert!(!reaches(&bed, "n1-a", "n2-a").await, "the last good version stays in force");
    let events = bed
        .cluster
        .control()
        .kubectl(&["get", "events.events.k8s.io", "-n", MESH_NAMESPACE, "-o", "json"])
        .await
        .unwrap();
    let events: Value = serde_json::from_str(&events).unwrap();
    let about_it = events["items"].as_array().unwrap().iter().any(|e| {
        e["regarding"]["kind"] == "AuthorizationPolicy"
            && e["regarding"]["name"] == "deny-n1a"
            && e["type"] == "Warning"
            && e["note"].as_str().is_some_and(|n| n.contains("not-a-cidr"))
    });
    assert!(about_it, "a Warning Event about deny-n1a names the problem: {events}");
    // Our own status writes came back as watch events, and were ignored.
    let metrics = bed.cluster.control().metrics().await.unwrap();
    let ignored = [("kind", "AuthorizationPolicy"), ("effect", "unchanged")];
    assert!(metrics.sum("ambit_controller_watch_events_total", &ignored).unwrap() >= 1.0);

    let before = agent_version(&bed, 1);
    bed.cluster.control().kubectl(&["delete", "authorizationpolicy", "deny-n1a", "-n", MESH_NAMESPACE]).await.unwrap();
    wait_newer(&bed, 1, before).await;
    assert!(reaches(&bed, "n1-a", "n2-a").await, "deleting the policy lifts the deny");

    // Node1's token cannot get node2's pods' identities.
    let token = std::fs::read_to_string(bed.cluster.control().credential("node1").unwrap()).unwrap();
    let trust = TrustBundle::from_pem("cluster.local", bed.cluster.ca().root_pem()).unwrap();
    let client = ControlClient::new(CONTROL_ADDR.to_string(), trust, token, "node1".into());
    let (own, foreign) = bed.cluster.nodes[0]
        .netns
        .enter(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(runtime.block_on(async {
                let ttl = Duration::from_secs(60);
                let own = client.certificate(&Identity::new("cluster.local", MESH_NAMESPACE, "sa-n1-a"), ttl).await;
                let foreign = client.certificate(&Identity::new("cluster.local", MESH_NAMESPACE, "sa-n2-a"), ttl).await;
                (own.is_ok(), foreign.err().map(|e| e.to_string()))
            }))
        })
        .unwrap();
    assert!(own, "node1's agent gets its own pods' identities");
    assert!(foreign.as_deref().is_some_and(|e| e.contains("node node1 runs no pod as")), "{foreign:?}");
}

/// Issue 4, tests 3 and 4: static stability, and RBAC as the controller's
/// own ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_survives_the_controller_and_keeps_to_its_rbac() {
    require_root();
    let mut bed = Standard::start_with_kubernetes().await.unwrap();
    let mut failures = Vec::new();
    let mut traffic = async |bed: &Standard, rounds: std::ops::Range<usize>| {
        for round in rounds {
            if !reaches(bed, "n1-a", "n2-a").await {
                failures.push(round);
            }
        }
    };
    traffic(&bed, 0..30).await;
    bed.cluster.control().kill().await.unwrap();
    traffic(&bed, 30..130).await;
    // A pod added while the controller is down.
    let spec = PodSpec {
        name: "n2-c".into(),
        namespace: MESH_NAMESPACE.into(),
        service_account: Some("sa-n2-c".into()),
        workload_name: None,
        labels: labels(&[("name", "n2-c")]),
    };
    let index = bed.cluster.add_pod(1, spec).unwrap();
    let n2c = &bed.cluster.pods[index];
    let server = Server::start(&n2c.netns, "n2-c", n2c.addr(APP_PORT)).unwrap();
    let config = bed.cluster.config().clone();
    bed.cluster.control().register(&config).await.unwrap();
    traffic(&bed, 130..160).await;
    assert!(failures.is_empty(), "rounds failed while the controller was down: {failures:?}");

    let workloads = bed.cluster.config().workloads.len();
    bed.cluster.control().start().await.unwrap();
    wait_all_agents_hold(&bed.cluster, workloads).await;
    let n1a = bed.cluster.pod("n1-a");
    exchange(&n1a.netns, "n1-a", server.addr, 4096, 4096).await.unwrap();
    let inbound = access_log_in(&bed.cluster, 1, "inbound", n1a.ip.into(), &server.addr.to_string()).await;
    assert_eq!(inbound["src.identity"], "spiffe://cluster.local/ns/mesh/sa/sa-n1-a");

    // It did all that as its ServiceAccount; that account can do no more.
    let control = bed.cluster.control();
    let api = control.api.as_ref().unwrap();
    for (question, allowed) in [
        (&["watch", "pods", "--all-namespaces"][..], true),
        (&["patch", "authorizationpolicies.security.istio.io", "--subresource=status", "-n", "mesh"], true),
        (&["create", "tokenreviews.authentication.k8s.io"], true),
        (&["watch", "virtualservices.networking.istio.io", "--all-namespaces"], true),
        (&["patch", "destinationrules.networking.istio.io", "--subresource=status", "-n", "mesh"], true),
        (&["patch", "virtualservices.networking.istio.io", "-n", "mesh"], false),
        (&["create", "virtualservices.networking.istio.io", "-n", "mesh"], false),
        (&["update", "configmaps/ambit-ca-root", "-n", "mesh"], true),
        (&["update", "configmaps/other", "-n", "mesh"], false),
        (&["list", "configmaps", "-n", "mesh"], false),
        (&["get", "secrets/ambit-ca", "-n", "ambit-system"], true),
        (&["update", "leases.coordination.k8s.io/ambit-controller", "-n", "ambit-system"], true),
        (&["list", "secrets", "-n", "ambit-system"], false),
        (&["get", "secrets/other", "-n", "ambit-system"], false),
        (&["get", "secrets/ambit-ca", "-n", "default"], false),
        (&["create", "pods", "-n", "mesh"], false),
        (&["delete", "authorizationpolicies.security.istio.io", "-n", "mesh"], false),
        (&["patch", "authorizationpolicies.security.istio.io", "-n", "mesh"], false),
        (&["update", "leases.coordination.k8s.io/someone-else", "-n", "ambit-system"], false),
    ] {
        let answer = api.can_i_as_controller(&control.netns, question).await.unwrap();
        assert_eq!(answer, allowed, "can the controller {question:?}?");
    }
}

/// The Lease's holder, as the API server has it.
async fn lease_holder(bed: &mut Standard) -> String {
    let jsonpath = "-o=jsonpath={.spec.holderIdentity}";
    bed.cluster.control().kubectl(&["get", "lease", "ambit-controller", "-n", "ambit-system", jsonpath]).await.unwrap()
}

/// HA: every replica serves agents; one leads (writes status); when it
/// dies another takes over, and status is written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_all_serve_and_one_leads() {
    require_root();
    let mut bed = Standard::start_with_kubernetes().await.unwrap();
    let second = bed.cluster.control().start_replica("ambit-controller-1", 16012, 16014).await.unwrap();
    assert_eq!(lease_holder(&mut bed).await, "ambit-controller-0", "the first replica leads");

    // The second replica serves an agent as well: a certificate, then config.
    let token = std::fs::read_to_string(bed.cluster.control().credential("node1").unwrap()).unwrap();
    let trust = TrustBundle::from_pem("cluster.local", bed.cluster.ca().root_pem()).unwrap();
    let client = ControlClient::new("10.200.0.2:16012", trust, token, "node1".into());
    let workloads = bed.cluster.nodes[0]
        .netns
        .enter(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let identity = mesh::control::ztunnel_identity("cluster.local");
                let cert = client.certificate(&identity, Duration::from_secs(60)).await?;
                let mut stream = client.config_stream(&cert, None).await?;
                let update = stream.next().await.ok_or_else(|| anyhow::anyhow!("no update"))??;
                let mut held = mesh::control::ConfigStream::default();
                Ok::<_, anyhow::Error>(held.apply(update)?.workloads.len())
            })
        })
        .unwrap();
    assert_eq!(workloads, bed.cluster.config().workloads.len(), "the second replica serves the whole config");

    // The leader dies; the other takes the Lease over once it lapses, and
    // writes status from then on.
    bed.cluster.control().kill().await.unwrap();
    second
        .wait_for_log("leadership", Duration::from_secs(60), |r| {
            r["message"] == "leadership changed" && r["leader"] == true
        })
        .await
        .unwrap();
    assert_eq!(lease_holder(&mut bed).await, "ambit-controller-1");
    let bad = DENY_N1A.replace("principals: [cluster.local/ns/mesh/sa/sa-n1-a]", "ipBlocks: [not-a-cidr]");
    bed.cluster.control().kube_apply(&bad).await.unwrap();
    let rejected = accepted_condition(&mut bed, "deny-n1a", 1).await;
    assert_eq!(rejected["status"], "False", "the new leader writes status: {rejected}");
}
