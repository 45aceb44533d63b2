//! Service VIPs: ztunnel resolves them itself and balances over endpoints.

use std::collections::HashMap;
use std::net::IpAddr;

use ambit_tests::require_root;
use ambit_tests::sample::exchange;
use ambit_tests::topology::{ENROLLED, Standard};

use crate::support::WAIT;

/// Test 2: 200 connections from an enrolled pod to the service VIP all
/// succeed, every endpoint (on both nodes) gets some, and every endpoint
/// sees the client's own IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_vip_balances_over_every_endpoint() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let client = bed.cluster.pod("n2-b");
    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        let done = exchange(&client.netns, &client.name, Standard::service_addr(), 1024, 1024).await.unwrap();
        *served.entry(done.hello.server.clone()).or_default() += 1;
        if done.hello.server != client.name {
            assert_eq!(done.hello.peer.ip(), IpAddr::V4(client.ip));
        }
    }
    assert_eq!(served.values().sum::<usize>(), 200);
    for endpoint in ENROLLED {
        assert!(served.get(endpoint).copied().unwrap_or(0) > 0, "{endpoint} got no traffic: {served:?}");
    }
    // ztunnel logs a connection once both directions have closed, which can
    // be just after the client is done: wait for all 200 lines.
    let vip = Standard::service_addr().to_string();
    let ztunnel = bed.cluster.ztunnel(1);
    let to_service = |logs: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        logs.into_iter().filter(|r| r["dst.addr"] == vip).collect()
    };
    ztunnel
        .wait_for_log("200 access-log lines", WAIT, |_| to_service(ztunnel.access_logs()).len() >= 200)
        .await
        .unwrap();
    let logged = to_service(ztunnel.access_logs());
    assert_eq!(logged.len(), 200, "one access-log line per connection");
    assert!(logged.iter().all(|r| r["dst.service"] == "echo.mesh.svc.cluster.local"));
}
