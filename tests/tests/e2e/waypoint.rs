//! The waypoint in the traffic path (issue 13): source ztunnels send a
//! service's traffic to it, it routes with the YAML users apply
//! (VirtualService, DestinationRule, HTTPRoute, AuthorizationPolicy), and
//! tunnels on to the pods as itself.

use std::collections::HashMap;

use ambit_tests::http_app::Client;
use ambit_tests::require_root;
use ambit_tests::waypoint::{L7Bed, SHOP};

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
    assert!(access.iter().any(|r| r["status"] == 200 && r["src.identity"].as_str().is_some_and(|i| i.ends_with("/sa/client"))), "{access:?}");
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
