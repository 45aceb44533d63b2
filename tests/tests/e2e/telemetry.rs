//! Issue 3, tests 5 and 6: metrics count what really flowed, and
//! certificate rotation never breaks traffic.

use std::time::{Duration, Instant};

use ambit_tests::require_root;
use ambit_tests::sample::{echo_connect, echo_roundtrip, exchange};
use ambit_tests::topology::{APP_PORT, Standard};

use crate::support::{WAIT, metrics};

const CONNECTIONS: u64 = 10;
const UPLOAD: u64 = 100_000;
const DOWNLOAD: u64 = 250_000;
/// The sample protocol's own lines per connection (request, greeting,
/// trailer): well under this.
const OVERHEAD: u64 = 400;

/// Test 5: both agents count the connections and the bytes the test sent,
/// within the sample protocol's header overhead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_was_sent() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let (client, server) = (bed.cluster.pod("n1-a"), bed.cluster.pod("n2-b"));
    for _ in 0..CONNECTIONS {
        exchange(&client.netns, &client.name, server.addr(APP_PORT), UPLOAD, DOWNLOAD).await.unwrap();
    }
    for (node, reporter, direction) in [(0, "source", "outbound"), (1, "destination", "inbound")] {
        // Counters settle before each access line; wait for all the lines.
        let ztunnel = bed.cluster.ztunnel(node);
        let done = |r: &serde_json::Value| r["direction"] == direction && r["dst.workload"] == "mesh/n2-b";
        ztunnel
            .wait_for_log("all access lines", WAIT, |_| {
                ztunnel.access_logs().iter().filter(|r| done(r)).count() as u64 >= CONNECTIONS
            })
            .await
            .unwrap();
        let scraped = metrics(&bed.cluster, node).await;
        let labels = [
            ("reporter", reporter),
            ("source_workload", "n1-a"),
            ("destination_workload", "n2-b"),
            ("source_principal", "spiffe://cluster.local/ns/mesh/sa/sa-n1-a"),
            ("destination_principal", "spiffe://cluster.local/ns/mesh/sa/sa-n2-b"),
            // As Istio's ztunnel labels them: app and version are the
            // canonical service and revision; the cluster is its id.
            ("source_app", "echo"),
            ("source_version", "latest"),
            ("source_canonical_service", "echo"),
            ("destination_canonical_revision", "latest"),
            ("source_cluster", "Kubernetes"),
            ("destination_cluster", "Kubernetes"),
            ("connection_security_policy", "mutual_tls"),
            ("request_protocol", "tcp"),
            ("response_flags", "-"),
        ];
        let count = |name| scraped.sum(name, &labels).unwrap();
        assert_eq!(count("istio_tcp_connections_opened_total"), CONNECTIONS as f64, "{reporter}");
        assert_eq!(count("istio_tcp_connections_closed_total"), CONNECTIONS as f64, "{reporter}");
        let received = count("istio_tcp_received_bytes_total") as u64;
        let sent = count("istio_tcp_sent_bytes_total") as u64;
        assert!(
            (CONNECTIONS * UPLOAD..=CONNECTIONS * (UPLOAD + OVERHEAD)).contains(&received),
            "{reporter} received {received}"
        );
        assert!(
            (CONNECTIONS * DOWNLOAD..=CONNECTIONS * (DOWNLOAD + OVERHEAD)).contains(&sent),
            "{reporter} sent {sent}"
        );
        assert_eq!(scraped.sum("ambit_open_connections", &[]).unwrap(), 0.0);
    }
}

/// Failed connections carry Istio ztunnel's `response_flags` on the
/// metrics: `CONNECT` when the destination could not be reached, `DENY`
/// when policy refused it (the access line keeps Envoy's finer flag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_use_ztunnels_response_flags() {
    require_root();
    let mut bed = Standard::start().await.unwrap();
    let client = bed.cluster.pod("n1-a");
    let closed_port = std::net::SocketAddr::new(bed.cluster.pod("n2-a").ip.into(), 9);
    assert!(exchange(&client.netns, &client.name, closed_port, 16, 16).await.is_err());
    let deny = "- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: none, namespace: mesh}\n  \
                spec: {selector: {matchLabels: {name: n2-b}}, action: DENY, rules: [{}]}\n";
    let policies: Vec<mesh::config::policy::AuthorizationPolicy> = yaml_serde::from_str(deny).unwrap();
    bed.apply(|c| c.authorization_policies = policies).await.unwrap();
    let client = bed.cluster.pod("n1-a");
    assert!(exchange(&client.netns, &client.name, bed.cluster.pod("n2-b").addr(APP_PORT), 16, 16).await.is_err());
    for (node, reporter) in [(0, "source"), (1, "destination")] {
        let ztunnel = bed.cluster.ztunnel(node);
        ztunnel
            .wait_for_log("both failures logged", WAIT, |_| {
                ztunnel.access_logs().iter().filter(|r| r["error"] != "").count() >= 2
            })
            .await
            .unwrap();
        let scraped = metrics(&bed.cluster, node).await;
        let closed = |workload, flag| {
            let labels = [("reporter", reporter), ("destination_workload", workload), ("response_flags", flag)];
            scraped.sum("istio_tcp_connections_closed_total", &labels).unwrap()
        };
        assert_eq!(closed("n2-a", "CONNECT"), 1.0, "{reporter}: an unreachable destination");
        assert_eq!(closed("n2-b", "DENY"), 1.0, "{reporter}: a policy denial");
    }
}

/// Test 6: with 5-second certificates, 30 s of continuous traffic (new
/// connections, and one long-lived connection) sees no failure while the
/// certificates rotate several times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_traffic_breaks_nothing() {
    require_root();
    let bed = Standard::start_with_args(&["--cert-ttl", "5s"]).await.unwrap();
    let (client, server) = (bed.cluster.pod("n1-a"), bed.cluster.pod("n2-a"));
    let (_, mut long_lived) = echo_connect(&client.netns, &client.name, server.addr(APP_PORT)).await.unwrap();
    let started = Instant::now();
    let (mut connections, mut failures) = (0u32, Vec::new());
    while started.elapsed() < Duration::from_secs(30) {
        if let Err(error) = exchange(&client.netns, &client.name, server.addr(APP_PORT), 16_384, 16_384).await {
            failures.push(format!("new connection at {:?}: {error:#}", started.elapsed()));
        }
        if let Err(error) = echo_roundtrip(&mut long_lived, b"still here").await {
            failures.push(format!("long-lived connection at {:?}: {error:#}", started.elapsed()));
        }
        connections += 1;
    }
    assert!(failures.is_empty(), "{} failures in {connections} rounds: {failures:#?}", failures.len());
    for node in 0..2 {
        let issued =
            bed.cluster.ztunnel(node).log_records().iter().filter(|r| r["message"] == "certificate issued").count();
        // 2 identities per node, each renewed every ~2.5 s for 30 s.
        assert!(issued >= 12, "node {node} issued only {issued} certificates in 30 s");
    }
}
