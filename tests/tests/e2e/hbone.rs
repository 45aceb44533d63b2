//! Issue 3, tests 1, 2 and 8: enrolled traffic rides HBONE (mTLS 1.3) on the
//! wire, identities show at the destination, and tunnels share connections.

use std::net::IpAddr;

use ambit_tests::pcap::{self, Capture};
use ambit_tests::require_root;
use ambit_tests::sample::exchange;
use ambit_tests::topology::{APP_PORT, Standard};

use crate::support::{MIB, WAIT, access_log, access_log_in, metrics};

/// A marker no packet could carry by accident.
fn marker(tag: &str) -> String {
    format!("AMBIT-MARKER-{tag}-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// Test 1. Cross-node: the underlay carries only TLS 1.3 (the marker the
/// client sends never shows), yet the destination sees the client's own IP
/// and 64 MiB each way arrive intact. Plaintext exchanges before and after,
/// on the same capture, prove it would have seen the marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_traffic_is_mutual_tls_on_the_wire() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let (client, server) = (bed.cluster.pod("n1-a"), bed.cluster.pod("n2-a"));
    let (plain, plain_server) = (bed.cluster.pod("n1-plain"), bed.cluster.pod("n2-plain").addr(APP_PORT));
    let capture = Capture::start(&bed.cluster.nodes[0].netns, "eth0").await.unwrap();
    let before = marker("plain-before");
    exchange(&plain.netns, &before, plain_server, 1024, 1024).await.unwrap();
    capture.wait_for(before.as_bytes(), WAIT).await.unwrap();
    let secret = marker("hbone");
    let done = exchange(&client.netns, &secret, server.addr(APP_PORT), 64 * MIB, 64 * MIB).await.unwrap();
    assert_eq!(done.hello.peer.ip(), IpAddr::V4(client.ip));
    let after = marker("plain-after");
    exchange(&plain.netns, &after, plain_server, 1024, 1024).await.unwrap();
    capture.wait_for(after.as_bytes(), WAIT).await.unwrap();
    let packets = capture.stop().await.unwrap();
    assert!(!pcap::contains(&packets, secret.as_bytes()), "the mesh payload crossed the underlay in clear");
    assert!(pcap::saw_tls13(&packets), "no TLS 1.3 ServerHello on the underlay");
    let log = access_log(&bed.cluster, 0, IpAddr::V4(client.ip), &server.addr(APP_PORT).to_string()).await;
    assert_eq!(log["dst.identity"], "spiffe://cluster.local/ns/mesh/sa/sa-n2-a");
}

/// The outer HBONE connection leaves from the client pod's own address, as
/// Istio's ztunnel dials, so a destination that trusts the TCP peer (Istio's
/// does, and ignores `forwarded`) sees the pod, not the node. Every SYN to
/// port 15008 on the underlay comes from the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_leaves_from_the_pods_own_address() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let (client, server) = (bed.cluster.pod("n1-b"), bed.cluster.pod("n2-a"));
    let capture = Capture::start(&bed.cluster.nodes[0].netns, "eth0").await.unwrap();
    let done = exchange(&client.netns, &client.name, server.addr(APP_PORT), 1024, 1024).await.unwrap();
    assert_eq!(done.hello.peer.ip(), IpAddr::V4(client.ip), "the pod sees its client's own address");
    let after = marker("source-after");
    let plain = bed.cluster.pod("n1-plain");
    exchange(&plain.netns, &after, bed.cluster.pod("n2-plain").addr(APP_PORT), 64, 64).await.unwrap();
    capture.wait_for(after.as_bytes(), WAIT).await.unwrap();
    let packets = capture.stop().await.unwrap();
    let syns = pcap::summaries(&packets, "tcp dst port 15008 and tcp[tcpflags] & tcp-syn != 0").await.unwrap();
    assert!(!syns.is_empty(), "no HBONE connection was opened");
    for syn in &syns {
        assert_eq!(pcap::source_ip(syn), Some(IpAddr::V4(client.ip)), "an HBONE SYN from elsewhere: {syn}");
    }
    let inbound =
        access_log_in(&bed.cluster, 1, "inbound", IpAddr::V4(client.ip), &server.addr(APP_PORT).to_string()).await;
    assert_eq!(inbound["src.identity"], "spiffe://cluster.local/ns/mesh/sa/sa-n1-b");
}

/// Test 1, same node: the tunnel crosses the node's loopback (the only
/// link it uses), in TLS 1.3 too. A marker sent to the node's own address
/// over loopback afterwards proves the capture saw everything before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_node_traffic_is_mutual_tls_too() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let (client, server) = (bed.cluster.pod("n1-a"), bed.cluster.pod("n1-b"));
    let node = &bed.cluster.nodes[0].netns;
    let capture = Capture::start(node, "lo").await.unwrap();
    let secret = marker("local");
    let done = exchange(&client.netns, &secret, server.addr(APP_PORT), 64 * MIB, 64 * MIB).await.unwrap();
    assert_eq!(done.hello.peer.ip(), IpAddr::V4(client.ip));
    let control = marker("loopback-control");
    let (status, _) =
        ambit_tests::http::get(node, "127.0.0.1:15021".parse().unwrap(), &format!("/{control}")).await.unwrap();
    assert_eq!(status, 404);
    capture.wait_for(control.as_bytes(), WAIT).await.unwrap();
    let packets = capture.stop().await.unwrap();
    assert!(!pcap::contains(&packets, secret.as_bytes()), "the payload crossed loopback in clear");
    assert!(pcap::saw_tls13(&packets), "no TLS 1.3 ServerHello on loopback");
    let inbound =
        access_log_in(&bed.cluster, 0, "inbound", IpAddr::V4(client.ip), &server.addr(APP_PORT).to_string()).await;
    assert_eq!(inbound["src.identity"], "spiffe://cluster.local/ns/mesh/sa/sa-n1-a");
}

/// Test 2: the destination's access log and metrics name the client's
/// proven identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_sees_the_source_principal() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let (client, server) = (bed.cluster.pod("n1-b"), bed.cluster.pod("n2-b"));
    exchange(&client.netns, &client.name, server.addr(APP_PORT), 1024, 1024).await.unwrap();
    let log =
        access_log_in(&bed.cluster, 1, "inbound", IpAddr::V4(client.ip), &server.addr(APP_PORT).to_string()).await;
    assert_eq!(log["src.identity"], "spiffe://cluster.local/ns/mesh/sa/sa-n1-b");
    assert_eq!(log["src.workload"], "mesh/n1-b");
    assert_eq!(log["dst.identity"], "spiffe://cluster.local/ns/mesh/sa/sa-n2-b");
    let scraped = metrics(&bed.cluster, 1).await;
    let labels = [
        ("reporter", "destination"),
        ("source_principal", "spiffe://cluster.local/ns/mesh/sa/sa-n1-b"),
        ("source_workload", "n1-b"),
        ("destination_principal", "spiffe://cluster.local/ns/mesh/sa/sa-n2-b"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(scraped.sum("istio_tcp_connections_opened_total", &labels).unwrap(), 1.0);
}

/// Test 8: 500 sequential tunnelled connections to one destination share a
/// handful of HTTP/2 connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_connections_reuse_pooled_tunnels() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let (client, server) = (bed.cluster.pod("n1-a"), bed.cluster.pod("n2-b"));
    for _ in 0..500 {
        exchange(&client.netns, &client.name, server.addr(APP_PORT), 64, 64).await.unwrap();
    }
    let scraped = metrics(&bed.cluster, 0).await;
    let pooled = scraped.sum("ambit_hbone_pool_connections_opened_total", &[]).unwrap();
    assert!((1.0..=3.0).contains(&pooled), "{pooled} HBONE connections for 500 tunnels");
    let tunnels = scraped.sum("istio_tcp_connections_opened_total", &[("reporter", "source")]).unwrap();
    assert_eq!(tunnels, 500.0);
    let dump = crate::support::config_dump(&bed.cluster, 0).await;
    assert!(dump["pool"]["connections"].as_array().is_some_and(|c| !c.is_empty()), "{}", dump["pool"]);
}
