//! What routes do besides splitting traffic, through the real waypoint:
//! the Gateway API's GAMMA conformance cases for URL rewrites and
//! redirects (their YAML and expectations, ported to the test bed's
//! `reviews` service on port 9080), Istio's rewrite, redirect and mirror,
//! and DestinationRule load balancers.

use ambit_tests::require_root;
use ambit_tests::waypoint::{L7Bed, SHOP};

use crate::support::WAIT;

fn http_route(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {SHOP}}}\nspec:
  parentRefs: [{{group: '', kind: Service, name: reviews, port: 9080}}]
  rules:
{rules}"
    )
}

/// MeshHTTPRouteRewritePath's YAML: prefix and full-path rewrites, one
/// with header modifiers.
const REWRITE_RULES: &str = "  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]
    backendRefs: [{name: reviews, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: reviews, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /full/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]
    backendRefs: [{name: reviews, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /full/rewrite-path-and-modify-headers}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /test}}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
        remove: [X-Header-Remove]
    backendRefs: [{name: reviews, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /prefix/rewrite-path-and-modify-headers}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /prefix}}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
        remove: [X-Header-Remove]
    backendRefs: [{name: reviews, port: 9080}]
";

/// MeshHTTPRouteRewritePath: the path the pod sees, and the headers.
#[tokio::test]
async fn gamma_rewrite_path_cases() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    bed.apply("route.yaml", &http_route("mesh-rewrite-path", REWRITE_RULES)).await.unwrap();
    let mut client = bed.client("client").await.unwrap();
    let host = [("host", "reviews")];
    for (sent, seen) in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
    ] {
        let reply = client.get(sent, &host).await.unwrap();
        assert_eq!(reply.answer.map(|a| a.path), Some(seen.to_owned()), "{sent}: {}", reply.body);
    }
    let headers = [
        ("host", "reviews"),
        ("X-Header-Remove", "remove-val"),
        ("X-Header-Add-Append", "append-val-1"),
        ("X-Header-Set", "set-val"),
    ];
    for (sent, seen) in [
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
    ] {
        let answer = client.get(sent, &headers).await.unwrap().answer.unwrap();
        assert_eq!(answer.path, seen, "{sent}");
        let header = |name: &str| answer.headers.get(name).map(String::as_str);
        assert_eq!(header("x-header-add"), Some("header-val-1"), "{sent}");
        assert_eq!(header("x-header-add-append"), Some("append-val-1,header-val-2"), "{sent}");
        assert_eq!(header("x-header-set"), Some("set-overwrites-values"), "{sent}");
        assert_eq!(header("x-header-remove"), None, "{sent}");
    }
}

/// MeshHTTPRouteRedirectPath's and MeshHTTPRouteRedirectPort's YAML, and
/// a scheme redirect.
const REDIRECT_RULES: &str = "  - matches: [{path: {type: PathPrefix, value: /original-prefix}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}}]
  - matches: [{path: {type: PathPrefix, value: /path-and-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
  - matches: [{path: {type: PathPrefix, value: /path-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /full-path-and-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}}]
  - matches: [{path: {type: PathPrefix, value: /full-path-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /port}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]
  - matches: [{path: {type: PathPrefix, value: /port-and-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, port: 8083}}]
  - matches: [{path: {type: PathPrefix, value: /port-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /port-and-host-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083, hostname: example.org, statusCode: 302}}]
  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-and-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org, statusCode: 301}}]
";

/// The redirect conformance cases: status and `Location` (no port when it
/// is the scheme's own; the service port when none is given).
#[tokio::test]
async fn gamma_redirect_cases() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    bed.apply("route.yaml", &http_route("mesh-redirect", REDIRECT_RULES)).await.unwrap();
    let mut client = bed.client("client").await.unwrap();
    let cases = [
        ("/original-prefix/lemon", 302, "http://reviews:9080/replacement-prefix/lemon"),
        ("/full/path/original", 302, "http://reviews:9080/full-path-replacement"),
        ("/path-and-host", 302, "http://example.org:9080/replacement-prefix"),
        ("/path-and-status", 301, "http://reviews:9080/replacement-prefix"),
        ("/full-path-and-host", 302, "http://example.org:9080/replacement-full"),
        ("/full-path-and-status", 301, "http://reviews:9080/replacement-full"),
        ("/port", 302, "http://reviews:8083/port"),
        ("/port-and-host", 302, "http://example.org:8083/port-and-host"),
        ("/port-and-status", 301, "http://reviews:8083/port-and-status"),
        ("/port-and-host-and-status", 302, "http://example.org:8083/port-and-host-and-status"),
        ("/scheme?q=1", 302, "https://reviews/scheme?q=1"),
        ("/scheme-and-host", 301, "https://example.org/scheme-and-host"),
    ];
    for (path, status, location) in cases {
        let reply = client.get(path, &[("host", "reviews")]).await.unwrap();
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        assert_eq!(reply.headers.get("location").and_then(|v| v.to_str().ok()), Some(location), "{path}");
    }
    assert_eq!(bed.apps.values().map(|app| app.requests()).sum::<u64>(), 0, "redirects never reach a pod");
}

const SUBSETS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

const ISTIO_ACTIONS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: reviews.shop}
  - match: [{uri: {prefix: /api}}]
    rewrite: {uri: /v2, authority: ratings.shop}
    route: [{destination: {host: reviews, subset: v1}, headers: {request: {set: {x-picked: v1}}}}]
  - route: [{destination: {host: reviews, subset: v1}}]
    mirrors: [{destination: {host: reviews, subset: v2}}]
";

/// Istio's rewrite (prefix and authority), redirect (301; a new
/// authority replaces host and port, as Envoy's) and mirror: every request answered by v1, a copy of each at
/// v2 with `-shadow` on its host, counted by the waypoint.
#[tokio::test]
async fn istio_rewrite_redirect_and_mirror() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    bed.apply("dr.yaml", SUBSETS).await.unwrap();
    bed.apply("vs.yaml", ISTIO_ACTIONS).await.unwrap();
    let mut client = bed.client("client").await.unwrap();
    let moved = client.get("/old/page?x=1", &[("host", "reviews:9080")]).await.unwrap();
    assert_eq!((moved.status, moved.headers["location"].to_str().ok()), (301, Some("http://reviews.shop/new?x=1")));
    let answer = client.get("/api/users?page=2", &[]).await.unwrap().answer.unwrap();
    assert_eq!((answer.version.as_str(), answer.path.as_str()), ("v1", "/v2/users"));
    assert_eq!(answer.headers.get("host").map(String::as_str), Some("ratings.shop"));
    assert_eq!(answer.headers.get("x-picked").map(String::as_str), Some("v1"));

    const COPIES: u64 = 20;
    let shadow_before = bed.apps["reviews-v2"].requests();
    for index in 0..COPIES {
        let body = format!("order {index}");
        let reply = client.send("POST", "/orders", &[("host", "reviews:9080")], body.as_bytes()).await.unwrap();
        assert_eq!(reply.answer.map(|a| a.version), Some("v1".to_owned()), "the client only ever sees v1");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while bed.apps["reviews-v2"].requests() < shadow_before + COPIES {
        assert!(tokio::time::Instant::now() < deadline, "copies at v2: {}", bed.apps["reviews-v2"].requests());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(bed.apps["reviews-v2"].requests(), shadow_before + COPIES, "one copy per request");
    let hosts = bed.apps["reviews-v2"].recent_hosts();
    assert_eq!(hosts.last().map(String::as_str), Some("reviews-shadow:9080"), "{hosts:?}");
    let metrics = bed.waypoint_metrics().await.unwrap();
    let sent = metrics.sum("ambit_waypoint_mirrored_requests_total", &[("result", "sent")]).unwrap();
    assert_eq!(sent, COPIES as f64, "{}", metrics.text());
}

/// `ROUND_ROBIN` for the service's port 9080 (portLevelSettings): the two
/// pods answer strictly in turn.
#[tokio::test]
async fn round_robin_per_port_takes_turns() {
    require_root();
    let mut bed = L7Bed::start("service").await.unwrap();
    bed.apply("dr.yaml", SUBSETS).await.unwrap();
    let mut client = bed.client("client").await.unwrap();
    let mut order = Vec::new();
    for _ in 0..20 {
        order.push(client.get("/reviews", &[]).await.unwrap().answer.unwrap().version);
    }
    assert!(order.windows(2).all(|pair| pair[0] != pair[1]), "not in turn: {order:?}");
}
