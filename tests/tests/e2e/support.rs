//! Small helpers the e2e tests share.

use std::net::IpAddr;
use std::time::Duration;

use ambit_tests::cluster::Cluster;
use serde_json::Value;

pub const MIB: u64 = 1024 * 1024;
/// Long enough for a slow, loaded CI machine; short enough to fail fast.
pub const WAIT: Duration = Duration::from_secs(20);

/// Scrapes node `node`'s agent metrics.
pub async fn metrics(cluster: &Cluster, node: usize) -> ambit_tests::http::Metrics {
    cluster.metrics(node).await.unwrap()
}

/// Waits (up to [`WAIT`]) until the sum of node `node`'s series `name`
/// with `labels` satisfies `done`; fails if it never does, or if the
/// metric does not exist.
pub async fn wait_for_metric(
    cluster: &Cluster,
    node: usize,
    name: &str,
    labels: &[(&str, &str)],
    done: impl Fn(f64) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let metrics = cluster.metrics(node).await.unwrap();
        let value = metrics.sum(name, labels).unwrap();
        if done(value) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name}{labels:?} stayed at {value}:\n{}", metrics.text());
    }
}

/// Connections node `node`'s agent has accepted so far.
pub async fn opened(cluster: &Cluster, node: usize) -> f64 {
    cluster.opened(node).await.unwrap()
}

/// Waits until node `node`'s agent has applied config `version` to capture.
pub async fn wait_capture_version(cluster: &Cluster, node: usize, version: u64) -> Value {
    cluster
        .ztunnel(node)
        .wait_for_log(&format!("capture updated to version {version}"), WAIT, |r| {
            r["message"] == "capture updated" && r["version"].as_u64() >= Some(version)
        })
        .await
        .unwrap()
}

/// The outbound access-log record for a connection from `src` to `dst`, waiting for it.
pub async fn access_log(cluster: &Cluster, node: usize, src: IpAddr, dst: &str) -> Value {
    access_log_in(cluster, node, "outbound", src, dst).await
}

/// The access-log record of `direction` (outbound, inbound,
/// inbound_plaintext) for a connection from `src` to `dst`, waiting for it.
pub async fn access_log_in(cluster: &Cluster, node: usize, direction: &str, src: IpAddr, dst: &str) -> Value {
    let src_prefix = format!("{src}:");
    cluster
        .ztunnel(node)
        .wait_for_log(&format!("{direction} access log {src} → {dst}"), WAIT, |r| {
            r["target"] == "access"
                && r["direction"] == direction
                && r["src.addr"].as_str().is_some_and(|s| s.starts_with(&src_prefix))
                && r["dst.addr"] == dst
        })
        .await
        .unwrap()
}

/// Whether any outbound access-log line of node `node`'s agent has source `src`.
pub fn logged_outbound_source(cluster: &Cluster, node: usize, src: IpAddr) -> bool {
    let src_prefix = format!("{src}:");
    cluster
        .ztunnel(node)
        .access_logs()
        .iter()
        .any(|r| r["direction"] == "outbound" && r["src.addr"].as_str().is_some_and(|s| s.starts_with(&src_prefix)))
}

/// Outbound connections node `node`'s agent has accepted so far (0
/// before the first).
pub async fn opened_outbound(cluster: &Cluster, node: usize) -> f64 {
    metrics(cluster, node).await.sum_or_zero("istio_tcp_connections_opened_total", &[("reporter", "source")])
}

/// Node `node`'s agent's `/config_dump`.
pub async fn config_dump(cluster: &Cluster, node: usize) -> Value {
    let (status, body) =
        ambit_tests::http::get(&cluster.nodes[node].netns, "127.0.0.1:15000".parse().unwrap(), "/config_dump")
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until every agent has applied a config from the controller
/// holding `workloads` workloads (a pod added, say).
pub async fn wait_all_agents_hold(cluster: &Cluster, workloads: usize) {
    for node in 0..cluster.nodes.len() {
        cluster
            .ztunnel(node)
            .wait_for_log(&format!("a config of {workloads} workloads"), WAIT, |r| {
                r["message"] == "config applied" && r["workloads"].as_u64() == Some(workloads as u64)
            })
            .await
            .unwrap();
    }
}
