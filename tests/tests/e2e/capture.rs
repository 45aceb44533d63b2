//! Capture and forwarding: who reaches whom, through ztunnel or not.

use std::net::{IpAddr, SocketAddr};

use ambit_tests::pcap::{self, Capture};
use ambit_tests::require_root;
use ambit_tests::sample::exchange;
use ambit_tests::topology::{APP_PORT, Standard};

use crate::support::{
    MIB, WAIT, access_log, access_log_in, logged_outbound_source, metrics, opened_outbound, wait_for_metric,
};

/// Test 1: an enrolled pod moves 64 MiB each way to a pod on the other node
/// and to one on its own node. The bytes arrive intact, the destination sees
/// the client pod's own IP, and ztunnel logs the original destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_pod_reaches_pods_on_both_nodes_with_its_own_ip() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let client = bed.cluster.pod("n1-a");
    for dst in ["n2-a", "n1-b"] {
        let dst_pod = bed.cluster.pod(dst);
        let done = exchange(&client.netns, &client.name, dst_pod.addr(APP_PORT), 64 * MIB, 64 * MIB).await.unwrap();
        assert_eq!(done.hello.server, dst);
        assert_eq!(done.hello.peer.ip(), IpAddr::V4(client.ip), "{dst} must see the client pod's IP");
        let log = access_log(&bed.cluster, 0, IpAddr::V4(client.ip), &dst_pod.addr(APP_PORT).to_string()).await;
        assert_eq!(log["dst.workload"], format!("mesh/{dst}"));
        assert_eq!(log["src.workload"], "mesh/n1-a");
        assert_eq!(log["error"], "");
        assert!(log["bytes_sent"].as_u64().unwrap() >= 64 * MIB, "{log}");
        assert!(log["bytes_recv"].as_u64().unwrap() >= 64 * MIB, "{log}");
    }
}

/// Test 3: an enrolled pod reaches a destination outside the cluster. It
/// leaves from the node's address, as masquerading would make it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_pod_reaches_outside() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let client = bed.cluster.pod("n1-b");
    let done = exchange(&client.netns, &client.name, bed.outside_addr(), MIB, MIB).await.unwrap();
    assert_eq!(done.hello.server, "outside");
    assert_eq!(done.hello.peer.ip(), IpAddr::V4(bed.cluster.nodes[0].ip));
    let log = access_log(&bed.cluster, 0, IpAddr::V4(client.ip), &bed.outside_addr().to_string()).await;
    assert_eq!(log["dst.workload"], "-");
}

/// Test 4 (with issue 3's semantics): a pod outside the mesh is never
/// captured where it runs: its node's agent accepts none of its
/// connections. Its connections to enrolled pods are taken in at the
/// destination, as plaintext from an unknown identity; others are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_enrolled_pod_is_not_captured_at_its_source() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let client = bed.cluster.pod("n1-plain");
    let before = opened_outbound(&bed.cluster, 0).await;
    let destinations = [
        ("n2-a", bed.cluster.pod("n2-a").addr(APP_PORT)),
        ("n1-b", bed.cluster.pod("n1-b").addr(APP_PORT)),
        ("n2-plain", bed.cluster.pod("n2-plain").addr(APP_PORT)),
        ("service", Standard::service_addr()),
        ("outside", bed.outside_addr()),
    ];
    for (name, addr) in destinations {
        let done = exchange(&client.netns, &client.name, addr, MIB, MIB).await.unwrap();
        assert_eq!(done.hello.peer.ip(), IpAddr::V4(client.ip), "{name} must see the pod's own IP");
    }
    // Capture hands a connection to ztunnel at its first packet, so a
    // captured connection would be counted before its exchange finished.
    assert_eq!(opened_outbound(&bed.cluster, 0).await, before, "the source node captured a non-enrolled pod");
    assert!(!logged_outbound_source(&bed.cluster, 0, IpAddr::V4(client.ip)));
    // The counter read above is live: an enrolled pod's connection moves it.
    let enrolled = bed.cluster.pod("n1-a");
    exchange(&enrolled.netns, &enrolled.name, bed.cluster.pod("n2-a").addr(APP_PORT), 64, 64).await.unwrap();
    let counted = metrics(&bed.cluster, 0).await.sum("istio_tcp_connections_opened_total", &[("reporter", "source")]);
    assert_eq!(counted.unwrap(), before + 1.0);
    // At the enrolled destinations it arrives as plaintext without identity.
    let to_n2a = bed.cluster.pod("n2-a").addr(APP_PORT).to_string();
    let log = access_log_in(&bed.cluster, 1, "inbound_plaintext", IpAddr::V4(client.ip), &to_n2a).await;
    assert_eq!((log["src.identity"].as_str(), log["error"].as_str()), (Some("-"), Some("")));
    let plain_dst = bed.cluster.pod("n2-plain").ip;
    assert!(
        !bed.cluster
            .ztunnel(1)
            .access_logs()
            .iter()
            .any(|r| r["dst.addr"].as_str().is_some_and(|d| d.starts_with(&format!("{plain_dst}:")))),
        "a connection to a non-enrolled pod was captured"
    );
}

/// A captured connection aimed at one of ztunnel's own ports is refused
/// (forwarding it would loop into the agent). The same port is reachable
/// for a pod outside the mesh, which is not captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_connection_to_ztunnel_port_is_refused() {
    use tokio::io::AsyncReadExt as _;
    require_root();
    let bed = Standard::start().await.unwrap();
    let node_ip = bed.cluster.nodes[0].ip;
    let readiness = std::net::SocketAddr::from((node_ip, 15021));
    let client = bed.cluster.pod("n1-a");
    // ztunnel completes the handshake, then resets; the reset may land
    // before or after the client sees its connect complete.
    match client.netns.connect(readiness).await {
        Ok(mut stream) => {
            let mut buf = [0u8; 16];
            let read = stream.read(&mut buf).await;
            assert!(matches!(read, Ok(0) | Err(_)), "expected reset, got {read:?}");
        }
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}"),
    }
    let log = access_log(&bed.cluster, 0, IpAddr::V4(client.ip), &readiness.to_string()).await;
    assert_eq!(log["response_flags"], "NR", "{log}");
    assert!(log["error"].as_str().unwrap().contains("own ports"), "{log}");

    let plain = bed.cluster.pod("n1-plain");
    let (status, _) = ambit_tests::http::get(&plain.netns, readiness, "/healthz/ready").await.unwrap();
    assert_eq!(status, 200);
}

/// A pod reusing a source port while ztunnel's end of the previous
/// connection on that port is still in TIME_WAIT (ztunnel closed first, as
/// it does when the server closes first) gets a working new connection:
/// capture leaves the TIME_WAIT to the kernel rather than colliding with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ports_are_reusable_after_ztunnel_closed_first() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    require_root();
    let bed = Standard::start().await.unwrap();
    let client = bed.cluster.pod("n1-a");
    // Sixteen ephemeral ports: from the seventeenth connection on, every
    // port comes back while its previous connection lingers in TIME_WAIT.
    client.netns.exec("sysctl", &["-qw", "net.ipv4.ip_local_port_range=40000 40015"], "").unwrap();
    let server = bed.cluster.pod("n2-a");
    let http = std::net::SocketAddr::new(IpAddr::V4(server.ip), 8081);
    let _responder = ambit_tests::sample_http::HttpResponder::start(&server.netns, http, 64).unwrap();
    for round in 0..48 {
        let attempt = async {
            let mut stream = client.netns.connect(http).await?;
            stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            anyhow::ensure!(response.starts_with(b"HTTP/1.1 200"), "bad response");
            anyhow::Ok(())
        };
        // Bounded: a SYN lost to a TIME_WAIT collision is retried after 1 s,
        // then 3 s, and would not make it.
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await;
        assert!(matches!(done, Ok(Ok(()))), "connection {round} failed: {done:?}");
    }
}

/// A pod that sends with another local pod's address (here: `n1-plain`
/// with `n1-b`'s) gets neither that pod's identity nor its connections:
/// capture drops the packets at the sender's own interface and counts
/// them. On the wire, nothing answers towards the real owner of the
/// address, which the owner's own connection shows would be seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_cannot_borrow_another_pods_address() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let (spoofer, victim) = (bed.cluster.pod("n1-plain"), bed.cluster.pod("n1-b"));
    let target = bed.cluster.pod("n2-a").addr(APP_PORT);
    let node = &bed.cluster.nodes[0].netns;
    let capture = Capture::start(node, &bed.cluster.pod_veth("n1-b")).await.unwrap();
    // The owner's own connection: its answers show on its interface.
    exchange(&victim.netns, &victim.name, target, 64, 64).await.unwrap();

    spoofer.netns.ip_batch(&[format!("addr add {}/32 dev eth0", victim.ip)]).unwrap();
    let dials_before = bed.servers["n2-a"].accepted();
    let socket = spoofer.netns.socket(target).unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(victim.ip), 0)).unwrap();
    let attempt = tokio::spawn(socket.connect(target));
    let spoofed = [("reason", "spoofed_source")];
    wait_for_metric(&bed.cluster, 0, "ambit_capture_dropped_packets_total", &spoofed, |n| n >= 1.0).await;
    attempt.abort();

    // The owner connects once more; once its request shows, the capture
    // has seen everything before it.
    let marker = "n1-b-after-the-spoofing";
    exchange(&victim.netns, marker, target, 64, 64).await.unwrap();
    capture.wait_for(marker.as_bytes(), WAIT).await.unwrap();
    let packets = capture.stop().await.unwrap();
    let answers = format!("tcp src port {APP_PORT} and dst host {} and tcp[tcpflags] & tcp-syn != 0", victim.ip);
    let syn_acks = pcap::summaries(&packets, &answers).await.unwrap();
    assert_eq!(syn_acks.len(), 2, "only the owner's two connections were answered: {syn_acks:#?}");
    assert_eq!(bed.servers["n2-a"].accepted(), dials_before + 1, "the borrowed address reached the server");
    let ztunnel = bed.cluster.ztunnel(0);
    let as_victim = || {
        let prefix = format!("{}:", victim.ip);
        let from_victim = |r: &&serde_json::Value| r["src.addr"].as_str().is_some_and(|a| a.starts_with(&prefix));
        ztunnel.access_logs().iter().filter(|r| r["direction"] == "outbound").filter(from_victim).count()
    };
    ztunnel.wait_for_log("the owner's two access lines", WAIT, |_| as_victim() >= 2).await.unwrap();
    assert_eq!(as_victim(), 2, "ztunnel took a connection in the owner's name that the owner never made");
}

/// A local pod in the config with no interface or route on the node cannot
/// be captured: the agent says so (once), counts it, and lists it in
/// `/config_dump`, rather than staying silently ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_pod_without_an_interface_is_reported() {
    require_root();
    let mut bed = Standard::start().await.unwrap();
    let ghost = mesh::config::Workload {
        uid: "ghost-uid".into(),
        name: "ghost".into(),
        namespace: "mesh".into(),
        service_account: "sa-ghost".into(),
        node: bed.cluster.nodes[0].name.clone(),
        ips: vec!["10.1.0.250".parse().unwrap()],
        ..Default::default()
    };
    bed.apply(|config| config.workloads.push(ghost)).await.unwrap();
    let warning = bed
        .cluster
        .ztunnel(0)
        .wait_for_log("the warning", WAIT, |r| r["level"] == "WARN" && r["pod"] == "mesh/ghost")
        .await
        .unwrap();
    assert!(warning["message"].as_str().is_some_and(|m| m.contains("cannot be captured")), "{warning}");
    wait_for_metric(&bed.cluster, 0, "ambit_capture_pods_without_route", &[], |n| n == 1.0).await;
    let dump = crate::support::config_dump(&bed.cluster, 0).await;
    assert_eq!(dump["capture"]["pods_without_route"], serde_json::json!(["mesh/ghost"]), "{}", dump["capture"]);
}
