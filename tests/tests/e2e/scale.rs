//! Test 7: many concurrent connections through one agent, none leaked.

use std::sync::Arc;
use std::time::Duration;

use ambit_tests::require_root;
use ambit_tests::sample::{echo_on, echo_roundtrip};
use ambit_tests::topology::{APP_PORT, Standard};
use tokio::sync::Barrier;

use crate::support::{metrics, opened};

const CONNECTIONS: usize = 1000;

/// 1,000 connections are all open through node1's agent at the same moment
/// (each waits at a barrier after its first round trip), then all finish;
/// afterwards the agent's open-connection gauge is back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections_complete_without_leaks() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let before = opened(&bed.cluster, 0).await;
    let client = bed.cluster.pod("n1-a");
    let targets = ["n2-a", "n2-b", "n1-b"].map(|p| bed.cluster.pod(p).addr(APP_PORT));
    let barrier = Arc::new(Barrier::new(CONNECTIONS));
    let mut sockets = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let dst = targets[i % targets.len()];
        sockets.push((dst, client.netns.socket(dst).unwrap()));
    }
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, (dst, socket))| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let stream = socket.connect(dst).await?;
                let (_, mut conn) = echo_on(stream, &format!("client-{i}")).await?;
                echo_roundtrip(&mut conn, format!("hello {i}").as_bytes()).await?;
                barrier.wait().await;
                echo_roundtrip(&mut conn, format!("bye {i}").as_bytes()).await?;
                anyhow::Ok(())
            })
        })
        .collect();
    let all = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(tasks))
        .await
        .expect("connections stalled");
    let failures: Vec<_> = all.iter().filter(|r| !matches!(r, Ok(Ok(())))).collect();
    assert!(failures.is_empty(), "{} of {CONNECTIONS} failed, e.g. {:?}", failures.len(), failures.first());
    assert!(opened(&bed.cluster, 0).await - before >= CONNECTIONS as f64);

    // ztunnel logs each connection after it stops counting it as open, so
    // once all the lines are there the gauge must read zero. Connections to
    // n1-b (every third) stay on this node: an outbound and an inbound line.
    let same_node = (0..CONNECTIONS).filter(|i| i % targets.len() == 2).count();
    let ztunnel = bed.cluster.ztunnel(0);
    ztunnel
        .wait_for_log("the last access-log line", Duration::from_secs(30), |_| {
            ztunnel.access_logs().len() >= CONNECTIONS + same_node
        })
        .await
        .unwrap();
    let open = metrics(&bed.cluster, 0).await.sum("ambit_open_connections", &[]).unwrap();
    assert_eq!(open, 0.0, "connections leaked in ztunnel");
}
