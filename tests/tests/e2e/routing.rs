//! Issue 4's L7 kinds against the real API server: DestinationRule,
//! VirtualService, HTTPRoute and waypoint Gateways are watched, checked,
//! streamed to the agents, and rejected in status with the last good
//! version kept in force.

use std::path::Path;
use std::time::Instant;

use std::time::Duration;

use ambit_tests::control_plane::CONTROL_ADDR;
use ambit_tests::require_root;
use ambit_tests::topology::{MESH_NAMESPACE, Standard};
use anyhow::Context as _;
use mesh::control::{ControlClient, UpdateBody};
use mesh::identity::Identity;
use mesh::tls::TrustBundle;
use serde_json::Value;

use crate::support::{WAIT, config_dump};

fn manifests(dir: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests").join(dir).display().to_string()
}

/// Polls `kubectl get` of one object in the mesh namespace until `holds`
/// (bounded by [`WAIT`]); returns the object.
async fn wait_object(bed: &mut Standard, kind: &str, name: &str, what: &str, holds: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let args = ["get", kind, name, "-n", MESH_NAMESPACE, "-o", "json"];
        // Not found (yet) reads as null.
        let json = bed.cluster.control().kubectl(&args).await.unwrap_or_default();
        let object: Value = serde_json::from_str(&json).unwrap_or_default();
        if holds(&object) {
            return object;
        }
        assert!(Instant::now() < deadline, "{kind} {name}: no {what} within {WAIT:?}; last seen {object}");
    }
}

/// The `Accepted` condition the leader wrote for generation `generation`.
async fn accepted(bed: &mut Standard, kind: &str, name: &str, generation: u64) -> Value {
    let at = |o: &Value| o["status"]["conditions"][0].clone();
    let holds = |o: &Value| at(o)["observedGeneration"].as_u64() == Some(generation);
    at(&wait_object(bed, kind, name, &format!("condition for generation {generation}"), holds).await)
}

/// Waits until node 0's agent applied a config with `routes` HTTP routes
/// and `waypoints` waypoints; returns its config dump.
async fn wait_agent_routes(bed: &Standard, routes: u64, waypoints: u64) -> Value {
    bed.cluster
        .ztunnel(0)
        .wait_for_log(&format!("a config with {routes} routes, {waypoints} waypoints"), WAIT, |r| {
            r["message"] == "config applied"
                && r["routes"].as_u64() == Some(routes)
                && r["waypoints"].as_u64() == Some(waypoints)
        })
        .await
        .unwrap();
    config_dump(&bed.cluster, 0).await
}

/// Waits for a Warning Event in the mesh namespace whose note has `text`
/// (the leader publishes it just after the status).
async fn wait_event(bed: &mut Standard, text: &str) {
    let deadline = Instant::now() + WAIT;
    let args = ["get", "events.events.k8s.io", "-n", MESH_NAMESPACE, "-o", "json"];
    loop {
        let events = bed.cluster.control().kubectl(&args).await.unwrap();
        if events.contains(text) {
            return;
        }
        assert!(Instant::now() < deadline, "no Warning Event names {text:?} within {WAIT:?}: {events}");
    }
}

const WAYPOINT_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: waypoint-7f9c\n  namespace: mesh\n  \
    labels: {gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}\nspec:\n  \
    nodeName: node1\n  serviceAccountName: waypoint\n  automountServiceAccountToken: false\n  \
    containers: [{name: waypoint, image: ghcr.io/ambit-mesh/waypoint:0.1.0}]\n";

/// A waypoint's pod authenticates with its own account's token: it gets its
/// own identity (and no other), and follows the config stream as it.
async fn waypoint_connects_as_itself(bed: &mut Standard) {
    let control = bed.cluster.control();
    control.kube_apply(WAYPOINT_POD).await.unwrap();
    let status = r#"{"status":{"phase":"Running","podIP":"10.250.0.9","podIPs":[{"ip":"10.250.0.9"}]}}"#;
    let patch =
        ["patch", "pod", "waypoint-7f9c", "-n", MESH_NAMESPACE, "--subresource=status", "--type=merge", "-p", status];
    control.kubectl(&patch).await.unwrap();
    let token = control
        .kubectl(&[
            "create",
            "token",
            "waypoint",
            "-n",
            MESH_NAMESPACE,
            "--audience",
            "ambit",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "waypoint-7f9c",
        ])
        .await
        .unwrap();
    // The agents hold the waypoint's pod: the controller knows it too.
    crate::support::wait_all_agents_hold(&bed.cluster, bed.cluster.config().workloads.len() + 1).await;
    let trust = TrustBundle::from_pem("cluster.local", bed.cluster.ca().root_pem()).unwrap();
    let client = ControlClient::new(CONTROL_ADDR.to_string(), trust, token.trim().to_owned(), "node1".into());
    let (foreign, first) = bed.cluster.nodes[0]
        .netns
        .enter(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(runtime.block_on(async {
                let ttl = Duration::from_secs(60);
                let foreign = client.certificate(&Identity::new("cluster.local", MESH_NAMESPACE, "sa-n1-a"), ttl).await;
                let own = client.certificate(&Identity::new("cluster.local", MESH_NAMESPACE, "waypoint"), ttl).await?;
                let mut stream = client.config_stream(&own, None).await?;
                let first = stream.next().await.context("the stream ended at once")??;
                anyhow::Ok((foreign.err().map(|e| e.to_string()), first))
            }))
        })
        .unwrap()
        .unwrap();
    assert!(foreign.is_some_and(|e| e.contains("sa-n1-a")), "a waypoint gets no one else's identity");
    assert!(
        matches!(&first.body, UpdateBody::Full(config) if config.waypoints.len() == 1),
        "a fresh stream starts with the full config, routing included: {first:?}"
    );
}

const DESTINATION_RULE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
    metadata: {name: echo, namespace: mesh}\nspec:\n  host: echo\n  \
    trafficPolicy: {connectionPool: {http: {http1MaxPendingRequests: 1}}}\n  \
    subsets:\n  - {name: a, labels: {name: n1-a}}\n  - {name: b, labels: {name: n2-a}}\n";

const VIRTUAL_SERVICE: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
    metadata: {name: echo, namespace: mesh}\nspec:\n  hosts: [echo]\n  http:\n  - route:\n    \
    - {destination: {host: echo, subset: a}, weight: 75}\n    - {destination: {host: echo, subset: b}, weight: 25}\n";

/// The weights of the agent's route from VirtualService mesh/echo.
fn route_weights(dump: &Value) -> Vec<u64> {
    let routes = dump["config"]["httpRoutes"].as_array().cloned().unwrap_or_default();
    let route = routes.iter().find(|r| r["origin"] == "VirtualService mesh/echo").cloned().unwrap_or_default();
    route["rules"][0]["destinations"].as_array().into_iter().flatten().filter_map(|d| d["weight"].as_u64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_kinds_are_validated_streamed_and_reported() {
    require_root();
    // The cluster has no Gateway API CRDs yet: the controller serves anyway.
    let mut bed = Standard::start_with_kubernetes().await.unwrap();

    bed.cluster.control().kube_apply(&format!("{DESTINATION_RULE}---\n{VIRTUAL_SERVICE}")).await.unwrap();
    let dump = wait_agent_routes(&bed, 1, 0).await;
    assert_eq!(route_weights(&dump), [75, 25], "the canary split reached the agent");
    let policies = &dump["config"]["destinationPolicies"];
    assert_eq!(policies[0]["host"], "echo.mesh.svc.cluster.local", "{policies}");
    let condition = accepted(&mut bed, "virtualservice", "echo", 1).await;
    assert_eq!(condition["status"], "True", "{condition}");

    // Semantic errors: Accepted=False naming the problem; the split stays.
    let cases = [
        (2, VIRTUAL_SERVICE.replace("subset: b", "subset: c"), "subset \"c\""),
        (3, VIRTUAL_SERVICE.replace("weight: 75", "weight: 0").replace("weight: 25", "weight: 0"), "sum to 0"),
        (
            4,
            VIRTUAL_SERVICE.replace("  - route:", "  - match: [{uri: {regex: '/v[0-9'}}]\n    route:"),
            "does not compile",
        ),
        (
            5,
            VIRTUAL_SERVICE.replace("  - route:", "  - corsPolicy: {allowOrigins: [{exact: x}]}\n    route:"),
            "corsPolicy",
        ),
    ];
    for (generation, bad, reason) in cases {
        bed.cluster.control().kube_apply(&bad).await.unwrap();
        let condition = accepted(&mut bed, "virtualservice", "echo", generation).await;
        assert_eq!(condition["status"], "False", "{reason}: {condition}");
        assert!(condition["message"].as_str().is_some_and(|m| m.contains(reason)), "{reason}: {condition}");
    }
    assert_eq!(route_weights(&config_dump(&bed.cluster, 0).await), [75, 25], "the last good version stays in force");
    wait_event(&mut bed, "sum to 0").await;

    // A structurally bad object never gets past the API server.
    let refused = bed.cluster.control().kube_apply(&VIRTUAL_SERVICE.replace("weight: 75", "weight: lots")).await;
    assert!(refused.err().map(|e| e.to_string()).unwrap_or_default().contains("weight"));

    // Gateway API CRDs installed while the controller runs are picked up.
    bed.cluster.control().kube_install(Path::new(&manifests("gateway-api"))).await.unwrap();
    // The waypoint template, placed in the namespace as its README says.
    let template = bed.cluster.control().kubectl(&["kustomize", &manifests("waypoint")]).await.unwrap();
    let placed = template.replace("\nmetadata:\n", "\nmetadata:\n  namespace: mesh\n");
    let applied = bed.cluster.control().kube_apply(&placed).await.unwrap();
    for created in ["gateway.gateway.networking.k8s.io/waypoint", "deployment.apps/waypoint", "service/waypoint"] {
        assert!(applied.contains(created), "{created} not created:\n{applied}");
    }
    let condition = accepted(&mut bed, "gateway", "waypoint", 1).await;
    assert_eq!(condition["status"], "True", "{condition}");
    let dump = wait_agent_routes(&bed, 1, 1).await;
    assert_eq!(dump["config"]["waypoints"][0]["hostname"], "waypoint.mesh.svc.cluster.local");
    // Its pods can mount the root: the leader published it in the namespace.
    let root = |o: &Value| o["data"]["root-cert.pem"].as_str().unwrap_or_default().to_owned();
    let configmap = wait_object(&mut bed, "configmap", "ambit-ca-root", "root", |o| !root(o).is_empty()).await;
    assert_eq!(root(&configmap).trim(), bed.cluster.ca().root_pem().trim());

    waypoint_connects_as_itself(&mut bed).await;

    // An HTTPRoute on a Service parent: status per parent, as GAMMA asks.
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: echo, namespace: mesh}\n\
                 spec:\n  parentRefs: [{group: '', kind: Service, name: echo, port: 80}]\n  rules:\n  \
                 - backendRefs: [{name: echo, port: 80, weight: 0}]\n";
    bed.cluster.control().kube_apply(route).await.unwrap();
    let parents = |o: &Value| o["status"]["parents"][0]["conditions"][0].clone();
    let object = wait_object(&mut bed, "httproute", "echo", "parent status", |o| parents(o)["status"] == "False").await;
    let condition = parents(&object);
    assert_eq!(condition["reason"], "UnsupportedValue", "{condition}");
    assert!(condition["message"].as_str().is_some_and(|m| m.contains("sum to 0")), "{condition}");
    assert_eq!(object["status"]["parents"][0]["parentRef"]["name"], "echo");
    bed.cluster.control().kube_apply(&route.replace("weight: 0", "weight: 1")).await.unwrap();
    wait_object(&mut bed, "httproute", "echo", "accepted parent status", |o| parents(o)["status"] == "True").await;
    wait_agent_routes(&bed, 2, 1).await;
}
