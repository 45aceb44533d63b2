//! Test 7: many concurrent connections through one agent, none leaked.

use std::sync::Arc;
use std::time::Duration;

use ambit_tests::require_root;
use ambit_tests::sample::{echo_on, echo_roundtrip};
use ambit_tests::topology::{APP_PORT, Standard};
use tokio::sync::Barrier;

use crate::support::{WAIT, metrics, opened};

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

/// CPU time (user and system) a process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Out of file descriptors, the agent backs off instead of spinning on
/// `accept` (the waiting connections would make every retry fail at once),
/// and takes connections again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_agent_backs_off_and_recovers() {
    require_root();
    let mut bed = Standard::start().await.unwrap();
    bed.cluster.stop_ztunnel(0).await.unwrap();
    bed.cluster.ztunnel_fd_limit = Some(128);
    bed.cluster.start_ztunnel(0).await.unwrap();
    let client = bed.cluster.pod("n1-a");
    // Over HBONE each taken connection holds one descriptor (its streams
    // share one pooled connection), so once they are all used up, nothing
    // frees one: every accept fails until the clients let go.
    let target = bed.cluster.pod("n2-a").addr(APP_PORT);
    // The kernel completes these handshakes into the listener's backlog;
    // the agent runs out of descriptors taking them.
    let mut held = Vec::new();
    for _ in 0..150 {
        held.push(client.netns.connect(target).await.unwrap());
    }
    let ztunnel = bed.cluster.ztunnel(0);
    let backoffs = || ztunnel.log_records().iter().filter(|r| r["message"] == "accept failed; backing off").count();
    ztunnel.wait_for_log("a first backoff", WAIT, |_| backoffs() >= 1).await.unwrap();
    let pid = ztunnel.pid().unwrap();
    let (cpu_before, started) = (cpu_time(pid), std::time::Instant::now());
    // Eight more backoffs: at least 10 + 20 + … + 1000 ms of waiting.
    let seen = backoffs();
    ztunnel.wait_for_log("eight more backoffs", Duration::from_secs(60), |_| backoffs() >= seen + 8).await.unwrap();
    let (cpu, wall) = (cpu_time(pid) - cpu_before, started.elapsed());
    assert!(wall >= Duration::from_millis(1000), "backoffs came after {wall:?}: not backing off");
    assert!(cpu < wall / 4, "the agent used {cpu:?} of CPU in {wall:?} out of descriptors: spinning");

    drop(held);
    let done = ambit_tests::sample::exchange(&client.netns, "after", target, 64, 64).await.unwrap();
    assert_eq!(done.hello.server, "n2-a", "descriptors are free again: the agent takes connections");
}
