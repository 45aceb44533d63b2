//! Encrypted from the first packet: a pod's network is set up by the
//! runtime's CNI chain, whose last plugin (`ambit-cni`) has the node's agent
//! capture the pod before it answers; only then do the pod's containers
//! start. The config (the pod's record from the API server) arrives later.

use std::net::IpAddr;

use ambit_tests::cluster::PodSpec;
use ambit_tests::pcap::{self, Capture};
use ambit_tests::require_root;
use ambit_tests::sample::exchange;
use ambit_tests::topology::{APP_PORT, LEGACY_NAMESPACE, MESH_NAMESPACE, Standard, labels};

use crate::support::{WAIT, access_log_in};

fn spec(name: &str, namespace: &str) -> PodSpec {
    PodSpec {
        name: name.into(),
        namespace: namespace.into(),
        service_account: Some(format!("sa-{name}")),
        workload_name: None,
        labels: labels(&[("name", name)]),
    }
}

/// A pod that sends the instant its network is up, before any agent has
/// its config, never puts a clear byte on the underlay: its first
/// connection to a mesh pod is refused (the agent cannot vouch for it yet),
/// and once the config arrives the same connection rides HBONE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pods_first_packet_is_already_captured() {
    require_root();
    let mut bed = Standard::start().await.unwrap();
    let target = bed.cluster.pod("n2-a").addr(APP_PORT);
    let underlay = Capture::start(&bed.cluster.nodes[0].netns, "eth0").await.unwrap();
    let index = bed.cluster.add_pod(0, spec("n1-new", MESH_NAMESPACE)).unwrap();
    let pod = &bed.cluster.pods[index];
    let secret = "AMBIT-FIRST-PACKET-SECRET";
    let first = exchange(&pod.netns, secret, target, 1024, 1024).await;
    assert!(first.is_err(), "a pod unknown to the agent got through: {first:?}");

    bed.apply(|_| {}).await.unwrap();
    let pod = &bed.cluster.pods[index];
    let done = exchange(&pod.netns, secret, target, 1024, 1024).await.unwrap();
    assert_eq!(done.hello.peer.ip(), IpAddr::V4(pod.ip));
    let inbound = access_log_in(&bed.cluster, 1, "inbound", IpAddr::V4(pod.ip), &target.to_string()).await;
    assert_eq!(inbound["src.identity"], "spiffe://cluster.local/ns/mesh/sa/sa-n1-new");

    // A plaintext marker afterwards: once the capture has it, it has all before it.
    let after = "AMBIT-FIRST-PACKET-AFTER";
    let plain = bed.cluster.pod("n1-plain");
    exchange(&plain.netns, after, bed.cluster.pod("n2-plain").addr(APP_PORT), 64, 64).await.unwrap();
    underlay.wait_for(after.as_bytes(), WAIT).await.unwrap();
    let packets = underlay.stop().await.unwrap();
    assert!(!pcap::contains(&packets, secret.as_bytes()), "the new pod's payload crossed the underlay in clear");
    let syns = pcap::summaries(&packets, &format!("src host {} and tcp[tcpflags] == tcp-syn", pod.ip)).await.unwrap();
    assert!(syns.iter().all(|s| s.contains(".15008:")), "a SYN of the new pod left the node uncaptured: {syns:#?}");
}

/// While the node's agent is down, a pod of an enrolled namespace does not
/// start (the plugin refuses; the runtime retries), a pod of another
/// namespace does, and once the agent is back the enrolled one starts too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_agent_an_enrolled_pod_waits() {
    require_root();
    let mut bed = Standard::start().await.unwrap();
    bed.cluster.stop_ztunnel(0).await.unwrap();
    let refused = bed.cluster.add_pod(0, spec("n1-waits", MESH_NAMESPACE)).unwrap_err();
    assert!(refused.to_string().contains("namespace mesh is enrolled"), "{refused:#}");
    bed.cluster.add_pod(0, spec("n1-legacy", LEGACY_NAMESPACE)).unwrap();

    bed.cluster.start_ztunnel(0).await.unwrap();
    bed.cluster.add_pod(0, spec("n1-waits", MESH_NAMESPACE)).unwrap();
    let log = bed
        .cluster
        .ztunnel(0)
        .wait_for_log("the pod announced", WAIT, |r| r["pod"] == "mesh/n1-waits" && r["enrolled"] == true)
        .await
        .unwrap();
    assert!(log["message"].as_str().is_some_and(|m| m.contains("before it starts")), "{log}");
}
