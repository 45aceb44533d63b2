//! Test 6 and drain: the agent going away never opens a bypass.

use std::net::IpAddr;
use std::time::Duration;

use ambit_tests::require_root;
use ambit_tests::sample::{echo_connect, echo_roundtrip, exchange_on};
use ambit_tests::topology::{APP_PORT, Standard};

use crate::support::{WAIT, access_log};

/// While ztunnel is stopped an enrolled pod's new connection does not reach
/// its destination; once ztunnel is back, a connection attempt made during
/// the outage completes (the client's SYN retransmission gets through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_fails_closed_and_recovers() {
    require_root();
    let mut bed = Standard::start().await.unwrap();
    let status = bed.cluster.stop_ztunnel(0).await.unwrap();
    assert!(status.success(), "ztunnel exited with {status}");

    let client = bed.cluster.pod("n1-a");
    let dst = bed.cluster.pod("n2-a").addr(APP_PORT);
    let seen_before = bed.server("n2-a").seen().len();
    let attempt = tokio::time::timeout(Duration::from_secs(3), client.netns.connect(dst)).await;
    assert!(!matches!(attempt, Ok(Ok(_))), "connected while ztunnel was down: {attempt:?}");
    assert_eq!(bed.server("n2-a").seen().len(), seen_before, "the server saw a bypassing connection");

    // Attempt again, then bring ztunnel back while the SYN is being retried.
    let socket = client.netns.socket(dst).unwrap();
    let pending = tokio::spawn(tokio::time::timeout(Duration::from_secs(60), socket.connect(dst)));
    bed.cluster.start_ztunnel(0).await.unwrap();
    let stream = pending.await.unwrap().expect("connect timed out").expect("connect failed");
    let client = bed.cluster.pod("n1-a");
    let done = exchange_on(stream, &client.name, 4096, 4096).await.unwrap();
    assert_eq!(done.hello.peer.ip(), IpAddr::V4(client.ip));
    access_log(&bed.cluster, 0, IpAddr::V4(client.ip), &dst.to_string()).await;
}

/// On SIGTERM the agent stops accepting (a new connection of an enrolled
/// pod goes nowhere, and never around the mesh) but lets established
/// connections finish within the grace period, then exits with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_established_connections() {
    require_root();
    // Grace enough for the checks below (the test bed's default is 2 s).
    let mut bed = Standard::start_with_args(&["--drain-grace", "20s"]).await.unwrap();
    let client = bed.cluster.pod("n1-a");
    let dst = bed.cluster.pod("n2-b").addr(APP_PORT);
    let (_, mut conn) = echo_connect(&client.netns, &client.name, dst).await.unwrap();
    echo_roundtrip(&mut conn, b"before").await.unwrap();

    let mut ztunnel = bed.cluster.take_ztunnel(0).unwrap();
    ztunnel.terminate().unwrap();
    ztunnel.wait_for_log("draining", WAIT, |r| r["message"] == "draining").await.unwrap();
    echo_roundtrip(&mut conn, b"during drain").await.unwrap();
    let client = bed.cluster.pod("n1-a");
    let seen_before = bed.server("n2-b").accepted();
    let attempt = tokio::time::timeout(Duration::from_secs(3), client.netns.connect(dst)).await;
    assert!(!matches!(attempt, Ok(Ok(_))), "a new connection was taken while draining: {attempt:?}");
    assert_eq!(bed.server("n2-b").accepted(), seen_before, "a new connection got past the draining agent");
    echo_roundtrip(&mut conn, b"still during drain").await.unwrap();
    drop(conn);
    ztunnel.wait_for_log("drained", WAIT, |r| r["message"] == "drained").await.unwrap();
    let status = ztunnel.wait_exit(WAIT).await.unwrap();
    assert!(status.success(), "ztunnel exited with {status} after draining");
}

/// An agent started over pins an older agent left, whose `PODS` map has
/// the old layout (a 4-byte value), recreates that map instead of failing
/// to load its programs, and captures as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_agents_map_layout_is_recreated() {
    require_root();
    let mut bed = Standard::start().await.unwrap();
    assert!(bed.cluster.stop_ztunnel(0).await.unwrap().success());
    let pods = bed.cluster.pin_dir(0).join("PODS");
    std::fs::remove_file(&pods).unwrap();
    let created = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pods)
        .args(["type", "hash", "key", "4", "value", "4", "entries", "4096", "name", "PODS"])
        .status()
        .unwrap();
    assert!(created.success(), "bpftool could not pin an old-layout map");

    bed.cluster.start_ztunnel(0).await.unwrap();
    bed.cluster
        .ztunnel(0)
        .wait_for_log("the old map recreated", WAIT, |r| {
            r["message"] == "a pinned map has an older layout; recreating it" && r["map"] == "PODS"
        })
        .await
        .unwrap();
    let client = bed.cluster.pod("n1-a");
    let dst = bed.cluster.pod("n2-a").addr(APP_PORT);
    let done = ambit_tests::sample::exchange(&client.netns, &client.name, dst, 1024, 1024).await.unwrap();
    assert_eq!(done.hello.peer.ip(), IpAddr::V4(client.ip));
    access_log(&bed.cluster, 0, IpAddr::V4(client.ip), &dst.to_string()).await;
}
