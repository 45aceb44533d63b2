//! Istio's traffic-management tasks, with the YAML their pages apply, as
//! it is (`tests/fixtures/istio-tasks/`), on the bookinfo-shaped bed in
//! namespace `default`: request routing, traffic shifting, fault
//! injection and request timeouts, with VirtualServices and with the Gateway
//! API's HTTPRoutes. Each step is a new file in the controller's directory;
//! a later file's object replaces an earlier one of the same name, as a
//! second `kubectl apply` would.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ambit_tests::http_app::Client;
use ambit_tests::require_root;
use ambit_tests::waypoint::{L7Bed, RATINGS_VIP, REVIEWS_PORT};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/istio-tasks");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("a task fixture")
}

/// Applies the task file `name` as step `step`.
async fn apply(bed: &mut L7Bed, step: u32, name: &str) {
    bed.apply(&format!("{step:02}-{name}"), &fixture(name)).await.unwrap();
}

/// Versions that answered `count` GETs (status:N for other answers).
async fn versions(client: &mut Client, count: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..count {
        let reply = client.get("/reviews/0", headers).await.unwrap();
        let key = match (reply.status, reply.answer) {
            (200, Some(answer)) => answer.version,
            (status, _) => format!("status:{status}"),
        };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

fn only(version: &str, count: usize) -> HashMap<String, usize> {
    HashMap::from([(version.to_owned(), count)])
}

fn ratings_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(RATINGS_VIP), REVIEWS_PORT)
}

/// Request routing (everything to v1, then `end-user: jason` to v2) and
/// traffic shifting (50/50 v1/v3, then all v3), with bookinfo's
/// DestinationRules, the mTLS variant included.
#[tokio::test]
async fn request_routing_and_traffic_shifting_with_virtual_services() {
    require_root();
    let mut bed = L7Bed::bookinfo().await.unwrap();
    apply(&mut bed, 1, "destination-rule-all.yaml").await;
    apply(&mut bed, 2, "virtual-service-all-v1.yaml").await;
    let mut client = bed.client("client").await.unwrap();
    assert_eq!(versions(&mut client, 50, &[]).await, only("v1", 50));
    // The mTLS variant only adds `tls.mode: ISTIO_MUTUAL`, which is what the
    // mesh does anyway: accepted, and nothing the waypoint sees changes.
    bed.write("03-destination-rule-all-mtls.yaml", &fixture("destination-rule-all-mtls.yaml")).unwrap();
    apply(&mut bed, 4, "virtual-service-reviews-test-v2.yaml").await;
    assert_eq!(bed.rejected().await.unwrap(), Vec::<serde_json::Value>::new());
    assert_eq!(versions(&mut client, 20, &[("end-user", "jason")]).await, only("v2", 20));
    assert_eq!(versions(&mut client, 20, &[("end-user", "mary")]).await, only("v1", 20));
    apply(&mut bed, 5, "virtual-service-reviews-50-v3.yaml").await;
    let seen = versions(&mut client, 1000, &[]).await;
    assert_eq!(seen.get("v1").unwrap_or(&0) + seen.get("v3").unwrap_or(&0), 1000, "{seen:?}");
    assert!((450..=550).contains(seen.get("v1").unwrap_or(&0)), "50 ± 5% to v1: {seen:?}");
    apply(&mut bed, 6, "virtual-service-reviews-v3.yaml").await;
    assert_eq!(versions(&mut client, 50, &[]).await, only("v3", 50));
    assert_eq!(bed.rejected().await.unwrap(), Vec::<serde_json::Value>::new());
}

/// The same two tasks with the Gateway API's HTTPRoutes on bookinfo's
/// version Services.
#[tokio::test]
async fn request_routing_and_traffic_shifting_with_http_routes() {
    require_root();
    let mut bed = L7Bed::bookinfo().await.unwrap();
    apply(&mut bed, 1, "bookinfo-versions.yaml").await;
    apply(&mut bed, 2, "route-reviews-v1.yaml").await;
    let mut client = bed.client("client").await.unwrap();
    assert_eq!(versions(&mut client, 50, &[]).await, only("v1", 50));
    apply(&mut bed, 3, "route-reviews-jason-v2.yaml").await;
    assert_eq!(versions(&mut client, 20, &[("end-user", "jason")]).await, only("v2", 20));
    assert_eq!(versions(&mut client, 20, &[]).await, only("v1", 20));
    apply(&mut bed, 4, "route-reviews-50-v3.yaml").await;
    let seen = versions(&mut client, 1000, &[]).await;
    assert!((450..=550).contains(seen.get("v1").unwrap_or(&0)), "50 ± 5% to v1: {seen:?}");
    assert_eq!(seen.get("v1").unwrap_or(&0) + seen.get("v3").unwrap_or(&0), 1000, "{seen:?}");
    apply(&mut bed, 5, "route-reviews-v3.yaml").await;
    assert_eq!(versions(&mut client, 50, &[]).await, only("v3", 50));
    assert_eq!(bed.rejected().await.unwrap(), Vec::<serde_json::Value>::new());
}

/// Fault injection (jason's ratings calls delayed 7 s, then aborted with
/// 500) and request timeouts (ratings delayed 2 s; reviews with a 0.5 s
/// timeout answers 504 when its backend is slower).
#[tokio::test]
async fn fault_injection_and_request_timeouts() {
    require_root();
    let mut bed = L7Bed::bookinfo().await.unwrap();
    apply(&mut bed, 1, "destination-rule-all.yaml").await;
    apply(&mut bed, 2, "virtual-service-all-v1.yaml").await;
    apply(&mut bed, 3, "virtual-service-ratings-test-delay.yaml").await;
    let mut ratings = bed.client_to("client", ratings_addr()).await.unwrap();
    let started = Instant::now();
    let reply = ratings.get("/ratings/0", &[("end-user", "jason")]).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(7) && reply.status == 200, "{:?}", started.elapsed());
    let started = Instant::now();
    assert_eq!(ratings.get("/ratings/0", &[]).await.unwrap().status, 200);
    assert!(started.elapsed() < Duration::from_secs(7), "only jason is delayed");

    apply(&mut bed, 4, "virtual-service-ratings-test-abort.yaml").await;
    let reply = ratings.get("/ratings/0", &[("end-user", "jason")]).await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (500, "fault filter abort"));
    assert_eq!(ratings.get("/ratings/0", &[]).await.unwrap().status, 200);

    apply(&mut bed, 5, "request-timeouts-reviews-v2.yaml").await;
    apply(&mut bed, 6, "request-timeouts-ratings-delay.yaml").await;
    let started = Instant::now();
    assert_eq!(ratings.get("/ratings/0", &[]).await.unwrap().status, 200);
    assert!(started.elapsed() >= Duration::from_secs(2), "every ratings call is 2 s late");
    apply(&mut bed, 7, "request-timeouts-reviews-timeout.yaml").await;
    let mut reviews = bed.client("client").await.unwrap();
    let started = Instant::now();
    // Bookinfo's reviews v2 waits on the slow ratings; the test app is told
    // to wait as long.
    let reply = reviews.get("/reviews/0", &[("x-delay-ms", "2000")]).await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (504, "upstream request timeout"));
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    assert_eq!(versions(&mut reviews, 10, &[]).await, only("v2", 10));
}
