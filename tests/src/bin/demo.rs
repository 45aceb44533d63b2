//! `cargo xtask demo`: a two-node mesh on this machine, built from network
//! namespaces: the controller in local-directory mode, and a ztunnel per
//! node capturing enrolled pods' traffic. Shows who talked to whom and
//! whether ztunnel carried it, applies a policy by writing a file, survives
//! the controller's death, shifts a canary through a waypoint, then waits
//! for Ctrl-C and removes everything.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, reason = "a demo talks to its user")]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ambit_tests::sample::exchange;
use ambit_tests::topology::{APP_PORT, SERVICE_PORT, SERVICE_VIP, Standard};
use ambit_tests::waypoint::L7Bed;

const CANARY_SUBSETS: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                              metadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n  subsets:\n  \
                              - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";
const BYTES: u64 = 1024 * 1024;
const DENY_N1A: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                        metadata: {name: deny-n1-a, namespace: mesh}\nspec:\n  selector: {matchLabels: {name: n2-a}}\n  \
                        action: DENY\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/mesh/sa/sa-n1-a]}}]\n";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    ambit_tests::require_root();
    println!("Starting a 2-node cluster: 4 enrolled pods (namespace `mesh`), 2 not enrolled (`legacy`),");
    println!("service echo.mesh at {SERVICE_VIP}:{SERVICE_PORT}, and a host outside the cluster.");
    println!("Config and certificates come from the controller, reading Kubernetes YAML from a directory.\n");
    let mut bed = Standard::start_with_controller().await?;
    let objects = bed.cluster.control().objects_dir.join("cluster.yaml");
    describe_cluster(&mut bed, &objects);
    show_paths(&bed).await?;
    show_policy(&mut bed).await?;
    show_static_stability(&mut bed).await?;
    show_fail_closed(&mut bed).await?;
    let canary = show_canary().await?;
    let node = &bed.cluster.nodes[0];
    println!("\nThe mesh stays up until Ctrl-C. Look around, for example:");
    println!(
        "  nsenter --net={} curl -s localhost:15000/config_dump   # config, certificates, HBONE pool",
        node.netns.path()
    );
    println!("  nsenter --net={} curl -s localhost:15020/metrics | grep istio_tcp", node.netns.path());
    println!("  nsenter --net={} bpftool net show", node.netns.path());
    println!("  edit {} and watch the agents follow", objects.display());
    tokio::signal::ctrl_c().await?;
    println!("\nCleaning up…");
    drop(canary);
    drop(bed);
    println!("Done: namespaces, links, BPF pins and processes removed.");
    Ok(())
}

/// Who runs where; `objects` is the controller's Kubernetes YAML.
fn describe_cluster(bed: &mut Standard, objects: &std::path::Path) {
    let control = bed.cluster.control();
    println!(
        "  controller ({}): namespace {}, pid {}, objects in {}",
        ambit_tests::control_plane::CONTROL_ADDR,
        control.netns.name(),
        control.process().pid().unwrap_or(0),
        objects.display()
    );
    for (i, node) in bed.cluster.nodes.iter().enumerate() {
        let pid = bed.cluster.ztunnel(i).pid().unwrap_or(0);
        println!("  {} ({}): namespace {}, ztunnel pid {pid}", node.name, node.ip, node.netns.name());
    }
    for pod in &bed.cluster.pods {
        println!("  pod {:<9} {:<9} on node{}: {}", pod.name, pod.ip, pod.node + 1, pod.netns.name());
    }
}

/// Every kind of path: HBONE across nodes and within one, through a
/// service, to the outside, and plaintext into and out of the mesh.
async fn show_paths(bed: &Standard) -> anyhow::Result<()> {
    println!("\nEach line moves 1 MiB each way and checks both hashes. Enrolled pods talk HBONE (mTLS);");
    println!("pods outside the mesh reach enrolled pods as plaintext, taken in by the destination's ztunnel.\n");
    println!("{:<10} {:<28} {:<32} {:<10} server saw", "from", "to", "carried by", "served by");
    let service = Standard::service_addr();
    let routes: Vec<(&str, String, SocketAddr)> = vec![
        ("n1-a", "n2-a (other node)".into(), bed.cluster.pod("n2-a").addr(APP_PORT)),
        ("n1-a", "n1-b (same node)".into(), bed.cluster.pod("n1-b").addr(APP_PORT)),
        ("n1-a", format!("echo.mesh ({service})"), service),
        ("n1-a", "outside".into(), bed.outside_addr()),
        ("n2-b", "n1-plain (not enrolled)".into(), bed.cluster.pod("n1-plain").addr(APP_PORT)),
        ("n1-plain", "n2-a".into(), bed.cluster.pod("n2-a").addr(APP_PORT)),
        ("n1-plain", format!("echo.mesh ({service})"), service),
        ("n1-plain", "outside".into(), bed.outside_addr()),
    ];
    for (from, label, addr) in routes {
        show_connection(bed, from, &label, addr).await?;
    }
    Ok(())
}

async fn show_policy(bed: &mut Standard) -> anyhow::Result<()> {
    println!("\nA policy, written to the controller's directory as `kubectl apply` would take it:");
    let deny: mesh::config::policy::AuthorizationPolicy = yaml_serde::from_str(DENY_N1A)?;
    print!("{}", DENY_N1A.lines().map(|l| format!("    {l}\n")).collect::<String>());
    bed.apply(|config| config.authorization_policies.push(deny)).await?;
    let n2a = bed.cluster.pod("n2-a").addr(APP_PORT);
    show_connection(bed, "n1-a", "n2-a (policy denies)", n2a).await?;
    show_connection(bed, "n1-b", "n2-a (policy allows)", n2a).await?;
    bed.apply(|config| config.authorization_policies.clear()).await?;
    println!("  policy deleted:");
    show_connection(bed, "n1-a", "n2-a", n2a).await
}

async fn show_static_stability(bed: &mut Standard) -> anyhow::Result<()> {
    println!("\nStatic stability: killing the controller…");
    bed.cluster.control().kill().await?;
    show_connection(bed, "n1-a", "n2-a (controller down)", bed.cluster.pod("n2-a").addr(APP_PORT)).await?;
    bed.cluster.control().start().await?;
    println!("  controller restarted; agents reconnect and resume.");
    Ok(())
}

async fn show_fail_closed(bed: &mut Standard) -> anyhow::Result<()> {
    println!("\nFail closed: stopping ztunnel on node1…");
    bed.cluster.stop_ztunnel(0).await?;
    let n2a = bed.cluster.pod("n2-a").addr(APP_PORT);
    let client = bed.cluster.pod("n1-a");
    let attempt = tokio::time::timeout(Duration::from_secs(2), client.netns.connect(n2a)).await;
    let verdict = if matches!(attempt, Ok(Ok(_))) {
        "CONNECTED (bypass!)"
    } else {
        "no connection: SYNs are dropped, never sent unproxied"
    };
    println!("  n1-a → n2-a while ztunnel is down: {verdict}");
    bed.cluster.start_ztunnel(0).await?;
    show_connection(bed, "n1-a", "n2-a (ztunnel restarted)", n2a).await
}

/// A canary release through a waypoint, in a second small cluster (the L7
/// test bed): subsets by version, then 90/10, 50/50 and 0/100 by editing a
/// VirtualService, with the split measured each time.
async fn show_canary() -> anyhow::Result<L7Bed> {
    println!("\nCanary through a waypoint (a second cluster: namespace `shop` uses waypoint `waypoint`)…");
    let mut bed = L7Bed::start("service").await?;
    bed.apply("dr.yaml", CANARY_SUBSETS).await?;
    for (v1, v2) in [(90, 10), (50, 50), (0, 100)] {
        let route = format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: shop}}\n\
             spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n      \
             weight: {v1}\n    - destination: {{host: reviews, subset: v2}}\n      weight: {v2}\n"
        );
        bed.apply("vs.yaml", &route).await?;
        let mut client = bed.client("client").await?;
        let (mut to_v1, mut to_v2) = (0, 0);
        for _ in 0..200 {
            match client.get("/reviews", &[]).await?.answer.map(|a| a.version).as_deref() {
                Some("v1") => to_v1 += 1,
                Some("v2") => to_v2 += 1,
                _ => {}
            }
        }
        println!("  VirtualService {v1}/{v2}: of 200 requests, {to_v1} went to v1 and {to_v2} to v2");
    }
    Ok(bed)
}

/// Connections each node's agent has taken in, as (source side,
/// destination side): capture hands them over at their first packet.
async fn counts(bed: &Standard) -> anyhow::Result<Vec<(f64, f64)>> {
    let mut counts = Vec::new();
    for node in 0..bed.cluster.nodes.len() {
        let scraped = bed.cluster.metrics(node).await?;
        let opened = |reporter| scraped.sum_or_zero("istio_tcp_connections_opened_total", &[("reporter", reporter)]);
        counts.push((opened("source"), opened("destination")));
    }
    Ok(counts)
}

async fn show_connection(bed: &Standard, from: &str, label: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let pod = bed.cluster.pod(from);
    let before = counts(bed).await?;
    let result = exchange(&pod.netns, from, addr, BYTES, BYTES).await;
    let after = counts(bed).await?;
    let node_of = |i: usize| bed.cluster.nodes[i].name.clone();
    let source = (0..after.len()).find(|&i| after[i].0 > before[i].0);
    let destination = (0..after.len()).find(|&i| after[i].1 > before[i].1);
    let carried = match (source, destination) {
        (Some(s), Some(d)) => format!("HBONE mTLS {} → {}", node_of(s), node_of(d)),
        (Some(s), None) => format!("ztunnel {} (plaintext)", node_of(s)),
        (None, Some(d)) => format!("plaintext → ztunnel {}", node_of(d)),
        (None, None) => "direct".to_owned(),
    };
    match result {
        Ok(done) => {
            let peer = done.hello.peer.ip();
            let whose = if peer == IpAddr::V4(pod.ip) {
                "(the client pod)".to_owned()
            } else if let Some(node) = bed.cluster.nodes.iter().find(|n| IpAddr::V4(n.ip) == peer) {
                format!("({})", node.name)
            } else {
                String::new()
            };
            println!("{from:<10} {label:<28} {carried:<32} {:<10} {peer} {whose}", done.hello.server);
        }
        Err(error) => println!("{from:<10} {label:<28} {carried:<32} FAILED: {error:#}"),
    }
    Ok(())
}
