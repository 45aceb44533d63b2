//! The waypoint in the traffic path (issue 13): source ztunnels send a
//! service's traffic to it, it routes with the YAML users apply
//! (VirtualService, DestinationRule, HTTPRoute, AuthorizationPolicy), and
//! tunnels on to the pods as itself.

use std::collections::HashMap;

use ambit_tests::hbone_client::{self, connect_status, h2, issue_valid};
use ambit_tests::http_app::Client;
use ambit_tests::pcap::{self, Capture};
use ambit_tests::require_root;
use ambit_tests::sample::exchange;
use ambit_tests::waypoint::{L7Bed, SHOP, TCP_APP_PORT};
use http_body_util::BodyExt as _;
use mesh::identity::Identity;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::WAIT;

/// Sends `count` GETs and counts the answers by version (or by status for
/// the waypoint's own answers: `status:503`).
async fn versions(client: &mut Client, count: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..count {
        let reply = client.get("/reviews", headers).await.unwrap();
        let key = match (&reply.answer, reply.status) {
            (Some(answer), 200) => answer.version.clone(),
            (_, status) => format!("status:{status}"),
        };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

const SUBSETS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

fn split(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {SHOP}}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {v1}
    - destination: {{host: reviews, subset: v2}}
      weight: {v2}
"
    )
}

/// Traffic to a service that uses the waypoint goes through it: the
/// waypoint's access line and `istio_requests_total{reporter="waypoint"}`
/// count each request, and with no routes both versions answer.
#[tokio::test]
async fn service_traffic_goes_through_the_waypoint() {
    require_root();
    let bed = L7Bed::start("service").await.unwrap();
    let mut client = bed.client("client").await.unwrap();
    let seen = versions(&mut client, 40, &[]).await;
    assert_eq!(seen.get("v1").unwrap_or(&0) + seen.get("v2").unwrap_or(&0), 40, "{seen:?}");
    assert!(seen.contains_key("v1") && seen.contains_key("v2"), "both endpoints serve: {seen:?}");
    let metrics = bed.waypoint_metrics().await.unwrap();
    let ok = [("reporter", "waypoint"), ("response_code", "200"), ("source_workload", "client")];
    assert_eq!(metrics.sum("istio_requests_total", &ok).unwrap(), 40.0, "{}", metrics.text());
    let access = bed.waypoint().access_logs();
    assert!(
        access
            .iter()
            .any(|r| r["status"] == 200 && r["src.identity"].as_str().is_some_and(|i| i.ends_with("/sa/client"))),
        "{access:?}"
    );
}

/// Canary by editing YAML: 90/10, then 50/50, then 0/100, each within
/// ±3 points over 2,000 requests, and no request fails while the routes
/// change under a steady stream of them.
#[tokio::test]
async fn canary_split_follows_the_yaml() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    bed.apply("dr.yaml", SUBSETS).await.unwrap();
    for (v1, v2) in [(90, 10), (50, 50), (0, 100)] {
        let mut background = bed.client("client").await.unwrap();
        let stop = tokio_util_stop();
        let stream = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut sent = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && sent < 10_000 {
                    let reply = background.get("/reviews", &[]).await.unwrap();
                    if reply.status != 200 {
                        failures.push(reply.status);
                    }
                    sent += 1;
                }
                (sent, failures)
            })
        };
        bed.apply("vs.yaml", &split(v1, v2)).await.unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (sent, failures) = stream.await.unwrap();
        assert!(failures.is_empty(), "{} of {sent} requests failed during the change: {failures:?}", failures.len());
        let mut client = bed.client("client").await.unwrap();
        let seen = versions(&mut client, 2000, &[]).await;
        let share = |v: &str| *seen.get(v).unwrap_or(&0) as f64 / 20.0;
        assert!((share("v1") - f64::from(v1)).abs() <= 3.0, "{v1}/{v2}: {seen:?}");
        assert!((share("v2") - f64::from(v2)).abs() <= 3.0, "{v1}/{v2}: {seen:?}");
    }
}

fn tokio_util_stop() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

fn virtual_service(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: {SHOP}}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

/// Istio's request-routing task: `end-user: jason` goes to v2, everyone
/// else to v1; then the same with a Gateway API HTTPRoute (GAMMA).
#[tokio::test]
async fn header_match_routes_one_user_to_v2() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    bed.apply("dr.yaml", SUBSETS).await.unwrap();
    let rules = "  - match:\n    - headers: {end-user: {exact: jason}}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - route:\n    - destination: {host: reviews, subset: v1}\n";
    bed.apply("vs.yaml", &virtual_service(rules)).await.unwrap();
    let mut client = bed.client("client").await.unwrap();
    assert_eq!(versions(&mut client, 50, &[("end-user", "jason")]).await, [("v2".to_owned(), 50)].into());
    assert_eq!(versions(&mut client, 50, &[("end-user", "bob")]).await, [("v1".to_owned(), 50)].into());
    assert_eq!(versions(&mut client, 50, &[]).await, [("v1".to_owned(), 50)].into());

    bed.apply("vs.yaml", "").await.unwrap();
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: reviews, namespace: {SHOP}}}\nspec:
  parentRefs: [{{group: '', kind: Service, name: reviews, port: 9080}}]
  rules:
  - matches: [{{headers: [{{name: end-user, value: jason}}]}}]
    backendRefs: [{{name: reviews-v2, port: 9080}}]
  - backendRefs: [{{name: reviews-v1, port: 9080}}]
"
    );
    bed.apply("route.yaml", &route).await.unwrap();
    assert_eq!(versions(&mut client, 50, &[("end-user", "jason")]).await, [("v2".to_owned(), 50)].into());
    assert_eq!(versions(&mut client, 50, &[]).await, [("v1".to_owned(), 50)].into());
}

/// A backend that fails every other request with 503: with `attempts: 3`
/// at least 99% succeed, and a POST's body arrives intact on the retry.
/// Without retries configured, Istio's default (2 on 503) applies too.
#[tokio::test]
async fn retries_absorb_a_flaky_backend() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    bed.apply("dr.yaml", SUBSETS).await.unwrap();
    let rules =
        "  - route:\n    - destination: {host: reviews, subset: v1}\n    retries: {attempts: 3, retryOn: 5xx}\n";
    bed.apply("vs.yaml", &virtual_service(rules)).await.unwrap();
    let mut client = bed.client("client").await.unwrap();
    let body = vec![b'x'; 10_000];
    let mut ok = 0;
    for _ in 0..200 {
        let reply = client.send("POST", "/reviews", &[("x-fail-every", "2")], &body).await.unwrap();
        if reply.status == 200 {
            ok += 1;
            let answer = reply.answer.unwrap();
            assert_eq!(answer.body_len, body.len(), "the retried body arrived whole");
        }
    }
    assert!(ok >= 198, "{ok} of 200 succeeded");
    let app = &bed.apps["reviews-v1"];
    assert!(app.requests() >= 300, "retries reached the backend: {} requests", app.requests());
    let metrics = bed.waypoint_metrics().await.unwrap();
    assert_eq!(metrics.sum("istio_requests_total", &[("response_code", "200")]).unwrap(), f64::from(ok));
}

/// Istio's fault-injection task: an abort of 50% with 500 over 1,000
/// requests gives 50 ± 5%; a 1 s delay at 100% adds at least 1 s.
#[tokio::test]
async fn faults_abort_and_delay_their_share() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    let abort = "  - fault:\n      abort: {percentage: {value: 50}, httpStatus: 500}\n    route:\n    - destination: {host: reviews}\n";
    bed.apply("vs.yaml", &virtual_service(abort)).await.unwrap();
    let mut client = bed.client("client").await.unwrap();
    let seen = versions(&mut client, 1000, &[]).await;
    let aborted = *seen.get("status:500").unwrap_or(&0);
    assert!((450..=550).contains(&aborted), "{seen:?}");
    let metrics = bed.waypoint_metrics().await.unwrap();
    let fi = metrics.sum("istio_requests_total", &[("response_code", "500"), ("response_flags", "FI")]).unwrap();
    assert_eq!(fi, aborted as f64);

    let delay = "  - fault:\n      delay: {percentage: {value: 100}, fixedDelay: 1s}\n    route:\n    - destination: {host: reviews}\n";
    bed.apply("vs.yaml", &virtual_service(delay)).await.unwrap();
    let started = std::time::Instant::now();
    let reply = client.get("/reviews", &[]).await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "{:?}", started.elapsed());
}

/// Istio's request-timeouts task: a backend slower than the route's 0.5 s
/// timeout gets 504 with flag UT, and others on the same route are unharmed.
#[tokio::test]
async fn a_route_timeout_answers_504() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    let rules = "  - route:\n    - destination: {host: reviews}\n    timeout: 0.5s\n";
    bed.apply("vs.yaml", &virtual_service(rules)).await.unwrap();
    let mut client = bed.client("client").await.unwrap();
    let started = std::time::Instant::now();
    let slow = client.get("/reviews", &[("x-delay-ms", "3000")]).await.unwrap();
    let took = started.elapsed();
    assert_eq!((slow.status, slow.body.as_str()), (504, "upstream request timeout"));
    assert!(took < std::time::Duration::from_millis(2900), "answered at the timeout, not the backend's pace: {took:?}");
    let fast = client.get("/reviews", &[]).await.unwrap();
    assert_eq!(fast.status, 200);
    let metrics = bed.waypoint_metrics().await.unwrap();
    assert_eq!(
        metrics.sum("istio_requests_total", &[("response_code", "504"), ("response_flags", "UT")]).unwrap(),
        1.0
    );
}

/// L7 authorization bound to the waypoint: GET allowed, POST denied with
/// Envoy's 403, and a principal outside the list denied.
#[tokio::test]
async fn l7_policy_on_the_waypoint() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    let policy = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: reviews-viewer, namespace: {SHOP}}}\nspec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/{SHOP}/sa/client]}}}}]
    to: [{{operation: {{methods: [GET], paths: [/status*, /reviews]}}}}]
"
    );
    bed.apply("policy.yaml", &policy).await.unwrap();
    let mut client = bed.client("client").await.unwrap();
    assert_eq!(client.get("/status/1", &[]).await.unwrap().status, 200);
    let post = client.send("POST", "/reviews", &[], b"{}").await.unwrap();
    assert_eq!((post.status, post.body.as_str()), (403, "RBAC: access denied"));
    let mut stranger = bed.client("stranger").await.unwrap();
    assert_eq!(stranger.get("/reviews", &[]).await.unwrap().status, 403);
    let metrics = bed.waypoint_metrics().await.unwrap();
    assert_eq!(
        metrics.sum("istio_requests_total", &[("response_code", "403"), ("response_flags", "RBAC")]).unwrap(),
        2.0
    );
}

/// The controller goes away: the waypoint keeps routing with its last
/// config (the canary split it had).
#[tokio::test]
async fn the_waypoint_keeps_its_config_without_the_controller() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    bed.apply("dr.yaml", SUBSETS).await.unwrap();
    bed.apply("vs.yaml", &split(0, 100)).await.unwrap();
    bed.cluster.control().kill().await.unwrap();
    bed.waypoint()
        .wait_for_log("the stream's loss", std::time::Duration::from_secs(30), |r| {
            r["message"] == "controller unreachable; serving the last good config"
        })
        .await
        .unwrap();
    let mut client = bed.client("client").await.unwrap();
    assert_eq!(versions(&mut client, 50, &[]).await, [("v2".to_owned(), 50)].into());
}

/// Something that is not HTTP (the sample protocol: JSON lines, bulk both
/// ways) through the waypoint still works, byte for byte; the pod sees the
/// original client's address (the waypoint carries it in `forwarded`, and
/// the destination believes it from the waypoint only); and the waypoint's
/// L4 policy applies: a DENY for one principal stops its connections.
#[tokio::test]
async fn opaque_tcp_through_the_waypoint_gets_l4_policy() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    let client = bed.cluster.pod("client");
    let done = exchange(&client.netns, "client", L7Bed::reviews_tcp_addr(), 256 * 1024, 256 * 1024).await.unwrap();
    assert_eq!((done.uploaded, done.downloaded), (256 * 1024, 256 * 1024));
    assert_eq!(done.hello.peer.ip(), std::net::IpAddr::V4(client.ip), "the pod sees the original client");
    let line = bed
        .waypoint()
        .wait_for_log("the connection's access line", WAIT, |r| r["target"] == "access" && r["protocol"] == "tcp")
        .await
        .unwrap();
    assert_eq!(line["response_flags"], "-", "{line}");

    let deny = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-strangers, namespace: {SHOP}}}\nspec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: DENY
  rules: [{{from: [{{source: {{principals: [cluster.local/ns/{SHOP}/sa/stranger]}}}}]}}]
"
    );
    bed.apply("deny.yaml", &deny).await.unwrap();
    let stranger = bed.cluster.pod("stranger");
    assert!(exchange(&stranger.netns, "stranger", L7Bed::reviews_tcp_addr(), 1024, 1024).await.is_err());
    let client = bed.cluster.pod("client");
    exchange(&client.netns, "client", L7Bed::reviews_tcp_addr(), 1024, 1024).await.unwrap();
}

/// Istio's rule for a waypoint that takes workload traffic: a pod's
/// traffic through the mesh goes through the waypoint, and a tunnel that
/// skips it (a valid mesh certificate, straight to the pod's node) is
/// refused with 401. With a waypoint for services only, the same tunnel is
/// accepted.
#[tokio::test]
async fn skipping_a_workload_waypoint_is_refused() {
    require_root();
    for (waypoint_for, expected) in [("all", http::StatusCode::UNAUTHORIZED), ("service", http::StatusCode::OK)] {
        let bed = L7Bed::start(waypoint_for).await.unwrap();
        let target = bed.cluster.pod("reviews-v2");
        let roots = bed.cluster.ca().root_pem().to_owned();
        let identity = Identity::new("cluster.local", SHOP, "client");
        let cert = issue_valid(bed.cluster.ca(), &identity).unwrap();
        let server = Identity::new("cluster.local", SHOP, "reviews");
        let hop = target.addr(15008);
        let tls = hbone_client::connect(&bed.cluster.nodes[0].netns, hop, &cert, &roots, server).await.unwrap();
        let mut send = h2(tls).await.unwrap();
        let status = connect_status(&mut send, &target.addr(8080).to_string()).await.unwrap();
        assert_eq!(status, expected, "waypoint for {waypoint_for}");
        if waypoint_for == "all" {
            // Through the mesh, the pod is reached by way of the waypoint.
            let mut client = Client::connect(&bed.cluster.pod("client").netns, target.addr(8080)).await.unwrap();
            assert_eq!(client.get("/direct", &[]).await.unwrap().status, 200);
            let metrics = bed.waypoint_metrics().await.unwrap();
            assert_eq!(metrics.sum("istio_requests_total", &[("destination_workload", "reviews-v2")]).unwrap(), 1.0);
        }
    }
}

/// Both legs (client → waypoint, waypoint → pod) are mutual TLS on the
/// underlay: a secret in the request and in the echoed answer never
/// crosses in clear, and each leg opened its own tunnel on port 15008.
#[tokio::test]
async fn both_legs_are_mutual_tls_on_the_wire() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    bed.apply("dr.yaml", SUBSETS).await.unwrap();
    bed.apply("vs.yaml", &split(100, 0)).await.unwrap();
    let capture = Capture::start(&bed.cluster.nodes[0].netns, "eth0").await.unwrap();
    let secret = format!("/secret-{:016x}", rand::random::<u64>());
    let mut client = bed.client("client").await.unwrap();
    let reply = client.get(&secret, &[]).await.unwrap();
    assert_eq!((reply.status, reply.answer.unwrap().path), (200, secret.clone()));
    // A plaintext marker sent last (the waypoint pod is outside the mesh):
    // once tcpdump has it, it has everything before it.
    let marker = format!("marker-{:016x}", rand::random::<u64>());
    let (waypoint, v1) = (bed.cluster.pod("waypoint"), bed.cluster.pod("reviews-v1"));
    exchange(&waypoint.netns, &marker, v1.addr(TCP_APP_PORT), 1024, 1024).await.unwrap();
    capture.wait_for(marker.as_bytes(), WAIT).await.unwrap();
    let packets = capture.stop().await.unwrap();
    assert!(!pcap::contains(&packets, secret.as_bytes()), "a request crossed the underlay in clear");
    assert!(pcap::saw_tls13(&packets), "no TLS 1.3 on the underlay");
    let syns = pcap::summaries(&packets, "tcp[tcpflags] == tcp-syn and dst port 15008").await.unwrap();
    for (leg, pod) in [("client → waypoint", "waypoint"), ("waypoint → reviews-v1", "reviews-v1")] {
        let ip = bed.cluster.pod(pod).ip.to_string();
        assert!(syns.iter().any(|s| s.contains(&format!("{ip}.15008"))), "no tunnel for {leg}: {syns:?}");
    }
}

/// Bad input at the waypoint: a malformed request gets 400, an oversized
/// header block 431, a CONNECT for a destination it does not serve 404
/// (counted); none of them harms the next client.
#[tokio::test]
async fn bad_input_gets_its_answer_and_harms_nobody() {
    require_root();
    let bed = L7Bed::start("service").await.unwrap();
    let client = bed.cluster.pod("client");
    let raw = |request: Vec<u8>| {
        let netns = &client.netns;
        async move {
            let mut stream = netns.connect(L7Bed::reviews_addr()).await.unwrap();
            stream.write_all(&request).await.unwrap();
            let mut answer = vec![0; 256];
            let n = tokio::time::timeout(WAIT, stream.read(&mut answer)).await.unwrap().unwrap();
            String::from_utf8_lossy(&answer[..n]).into_owned()
        }
    };
    let malformed = raw(b"GET / HTTP/1.1\r\nHost: reviews\r\nthis is not a header\r\n\r\n".to_vec()).await;
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
    let mut huge = b"GET / HTTP/1.1\r\nHost: reviews\r\n".to_vec();
    for i in 0..100 {
        huge.extend(format!("x-filler-{i}: {}\r\n", "y".repeat(1000)).as_bytes());
    }
    huge.extend(b"\r\n");
    let oversized = raw(huge).await;
    assert!(oversized.starts_with("HTTP/1.1 431"), "{oversized}");

    let identity = Identity::new("cluster.local", SHOP, "client");
    let cert = issue_valid(bed.cluster.ca(), &identity).unwrap();
    let waypoint = bed.cluster.pod("waypoint");
    let server = Identity::new("cluster.local", SHOP, "waypoint");
    let roots = bed.cluster.ca().root_pem().to_owned();
    let tls =
        hbone_client::connect(&bed.cluster.nodes[0].netns, waypoint.addr(15008), &cert, &roots, server).await.unwrap();
    let mut send = h2(tls).await.unwrap();
    assert_eq!(connect_status(&mut send, "10.96.0.99:80").await.unwrap(), http::StatusCode::NOT_FOUND);
    let metrics = bed.waypoint_metrics().await.unwrap();
    assert_eq!(metrics.sum("ambit_waypoint_unknown_targets_total", &[]).unwrap(), 1.0);

    let mut good = bed.client("client").await.unwrap();
    assert_eq!(good.get("/reviews", &[]).await.unwrap().status, 200, "others are unharmed");
}

/// HTTP/2 with prior knowledge (as gRPC clients speak it): a streaming
/// call whose every message is echoed before the next is sent (so nothing
/// is buffered on the way), trailers intact, and `grpc_response_status`
/// and `request_protocol="grpc"` recorded.
#[tokio::test]
async fn http2_streams_and_trailers_pass_through() {
    require_root();
    let bed = L7Bed::start("service").await.unwrap();
    let stream = bed.cluster.pod("client").netns.connect(L7Bed::reviews_addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let (messages, receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let frames = futures::stream::unfold(receiver, |mut receiver| async move {
        let message = receiver.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(message)), receiver))
    });
    let request = http::Request::post("http://reviews:9080/reviews.Reviews/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-stream-echo", "1")
        .body(http_body_util::StreamBody::new(Box::pin(frames)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    for i in 0..3 {
        let message = bytes::Bytes::from(format!("message {i}"));
        messages.send(message.clone()).await.unwrap();
        let frame = tokio::time::timeout(WAIT, body.frame()).await.unwrap().unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), message, "echoed before the next message is sent");
    }
    drop(messages);
    let rest = tokio::time::timeout(WAIT, body.collect()).await.unwrap().unwrap();
    let trailers = rest.trailers().cloned().unwrap_or_default();
    assert_eq!(
        (trailers.get("grpc-status"), trailers.get("x-trailer")),
        (Some(&"0".parse().unwrap()), Some(&"end".parse().unwrap()))
    );
    let labels = [("request_protocol", "grpc"), ("grpc_response_status", "0"), ("response_code", "200")];
    let deadline = tokio::time::Instant::now() + WAIT;
    while bed.waypoint_metrics().await.unwrap().sum_or_zero("istio_requests_total", &labels) < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the call was not recorded with its gRPC status");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An HTTP/1.1 upgrade (a WebSocket handshake) passes through the
/// waypoint, and the upgraded connection carries bytes both ways.
#[tokio::test]
async fn a_websocket_upgrade_passes_through() {
    require_root();
    let bed = L7Bed::start("service").await.unwrap();
    let mut stream = bed.cluster.pod("client").netns.connect(L7Bed::reviews_addr()).await.unwrap();
    let handshake = "GET /chat HTTP/1.1\r\nHost: reviews\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0; 1];
        tokio::time::timeout(WAIT, stream.read_exact(&mut byte)).await.unwrap().unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    for message in [&b"hello"[..], b"through the waypoint"] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0; message.len()];
        tokio::time::timeout(WAIT, stream.read_exact(&mut echoed)).await.unwrap().unwrap();
        assert_eq!(echoed, message);
    }
}

/// A route's header operations, from a VirtualService and from an
/// HTTPRoute's header modifier filters: the pod sees the request's, the
/// client the response's.
#[tokio::test]
async fn routes_modify_request_and_response_headers() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    let rules = "  - route:\n    - destination: {host: reviews}\n    headers:\n      request: {set: {x-canary: 'no'}, remove: [x-debug]}\n      response: {add: {x-served-by: waypoint}}\n";
    bed.apply("vs.yaml", &virtual_service(rules)).await.unwrap();
    let mut client = bed.client("client").await.unwrap();
    let reply = client.get("/reviews", &[("x-canary", "yes"), ("x-debug", "1")]).await.unwrap();
    let seen = reply.answer.unwrap().headers;
    assert_eq!((seen.get("x-canary").map(String::as_str), seen.get("x-debug")), (Some("no"), None));
    assert_eq!(reply.headers["x-served-by"], "waypoint");

    bed.apply("vs.yaml", "").await.unwrap();
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: reviews, namespace: {SHOP}}}\nspec:
  parentRefs: [{{group: '', kind: Service, name: reviews, port: 9080}}]
  rules:
  - backendRefs: [{{name: reviews, port: 9080}}]
    filters:
    - {{type: RequestHeaderModifier, requestHeaderModifier: {{add: [{{name: x-env, value: canary}}]}}}}
    - {{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-route, value: gamma}}]}}}}
"
    );
    bed.apply("route.yaml", &route).await.unwrap();
    let reply = client.get("/reviews", &[]).await.unwrap();
    assert_eq!(reply.answer.unwrap().headers.get("x-env").map(String::as_str), Some("canary"));
    assert_eq!(reply.headers["x-route"], "gamma");
}
