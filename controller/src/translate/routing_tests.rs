//! Table tests for the L7 kinds: VirtualService, DestinationRule, HTTPRoute
//! and waypoint Gateways in, routes (or a rejection) out.

use std::time::Duration;

use mesh::config::routing::{StringMatch, waypoint_of};

use super::{Outcome, Translator};
use crate::resources::{Object, parse_documents};

pub(super) fn objects(yaml: &str) -> Vec<Object> {
    match parse_documents(yaml) {
        Ok(parsed) => parsed.objects,
        Err(error) => panic!("test YAML does not parse: {error}"),
    }
}

/// Upserts every object as one batch, then settles, as the reconciler does;
/// returns the final outcome of each object in order.
pub(super) fn apply(translator: &mut Translator, yaml: &str) -> Vec<Outcome> {
    let objects = objects(yaml);
    let mut outcomes: Vec<_> = objects.iter().map(|o| (o.key(), translator.upsert(o))).collect();
    for (key, outcome) in translator.settle() {
        if let Some(slot) = outcomes.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = outcome;
        }
    }
    outcomes.into_iter().map(|(_, o)| o).collect()
}

const DESTINATION_RULE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
    metadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n  trafficPolicy:\n    \
    connectionPool: {tcp: {maxConnections: 10}, http: {http1MaxPendingRequests: 1, maxRetries: 3}}\n    \
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}\n  \
    subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";

const VIRTUAL_SERVICE: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
    metadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  \
    - match: [{headers: {End-User: {exact: jason}}, uri: {regex: '/api/v[0-9]+'}}]\n    \
      route: [{destination: {host: reviews, subset: v2}}]\n    fault: {abort: {httpStatus: 503, percentage: {value: 12.5}}}\n  \
    - route:\n      - {destination: {host: reviews, subset: v1}, weight: 90}\n      \
    - {destination: {host: reviews, subset: v2}, weight: 10}\n    \
      timeout: 2s\n    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: '5xx,connect-failure'}\n";

#[test]
fn a_canary_split_with_subsets_compiles() {
    let mut translator = Translator::new("istio-system");
    let outcomes = apply(&mut translator, &format!("{VIRTUAL_SERVICE}---\n{DESTINATION_RULE}"));
    assert_eq!(outcomes, [Outcome::Accepted, Outcome::Accepted], "order within a batch does not matter");
    let config = translator.config();
    let routes = &config.http_routes[0];
    assert_eq!(routes.hosts, ["reviews.shop.svc.cluster.local"]);
    let first = &routes.rules[0];
    assert_eq!(first.matches[0].headers.get("end-user"), Some(&StringMatch::Exact("jason".into())));
    assert_eq!(first.destinations[0].weight, 100, "a lone destination takes all traffic");
    assert_eq!(
        first.fault.as_ref().and_then(|f| f.abort.as_ref()).map(|a| (a.http_status, a.ppm)),
        Some((503, 125_000))
    );
    let split = &routes.rules[1];
    let weights: Vec<_> = split.destinations.iter().map(|d| (d.subset.as_deref(), d.weight)).collect();
    assert_eq!(weights, [(Some("v1"), 90), (Some("v2"), 10)]);
    assert_eq!(split.timeout, Some(Duration::from_secs(2)));
    let retries = split.retries.clone().unwrap_or_default();
    assert_eq!((retries.attempts, retries.retry_on.len()), (3, 2));
    let policy = &config.destination_policies[0];
    assert_eq!(policy.host, "reviews.shop.svc.cluster.local");
    let pool = policy.traffic_policy.connection_pool.clone().unwrap_or_default();
    assert_eq!((pool.max_connections, pool.http1_max_pending_requests, pool.max_retries), (Some(10), Some(1), Some(3)));
    let outlier = policy.traffic_policy.outlier_detection.clone().unwrap_or_default();
    assert_eq!(outlier.base_ejection_time, Some(Duration::from_secs(30)));
}

#[test]
fn semantic_errors_are_rejected_and_the_last_good_version_stays() {
    let cases = [
        ("unknown subset", VIRTUAL_SERVICE.replace("subset: v2}}]", "subset: v3}}]"), "subset \"v3\""),
        (
            "weights sum to 0",
            VIRTUAL_SERVICE.replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 0"),
            "sum to 0",
        ),
        ("bad regex", VIRTUAL_SERVICE.replace("/api/v[0-9]+", "/api/v[0-9"), "does not compile"),
        ("unsupported field", VIRTUAL_SERVICE.replace("    timeout: 2s\n", "    corsPolicy: {}\n"), "corsPolicy"),
        ("bad duration", VIRTUAL_SERVICE.replace("timeout: 2s", "timeout: soon"), "timeout"),
        ("bad percentage", VIRTUAL_SERVICE.replace("value: 12.5", "value: 120"), "percentage"),
    ];
    for (case, bad, reason) in cases {
        let mut translator = Translator::new("istio-system");
        apply(&mut translator, &format!("{VIRTUAL_SERVICE}---\n{DESTINATION_RULE}"));
        let before = translator.config();
        let outcomes = apply(&mut translator, &bad);
        assert!(matches!(&outcomes[0], Outcome::Rejected(r) if r.contains(reason)), "{case}: {outcomes:?}");
        assert_eq!(translator.config(), before, "{case}: the last good version stays in force");
        assert_eq!(apply(&mut translator, VIRTUAL_SERVICE), [Outcome::Accepted], "{case}: fixing it");
        assert!(translator.rejected().is_empty(), "{case}");
    }
}

#[test]
fn a_subset_that_appears_later_settles_the_route() {
    let mut translator = Translator::new("istio-system");
    let outcomes = apply(&mut translator, VIRTUAL_SERVICE);
    assert!(matches!(&outcomes[0], Outcome::Rejected(r) if r.contains("not defined")), "{outcomes:?}");
    assert!(translator.config().http_routes.is_empty(), "a new route with unknown subsets routes nothing");
    apply(&mut translator, DESTINATION_RULE);
    assert!(translator.rejected().is_empty());
    assert_eq!(translator.config().http_routes.len(), 1);
}

const HTTP_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
    metadata: {name: reviews, namespace: shop}\nspec:\n  parentRefs: [{group: '', kind: Service, name: reviews, port: 9080}]\n  \
    rules:\n  - matches: [{path: {type: PathPrefix, value: /api}, method: GET, headers: [{name: X-Canary, value: 'yes'}]}]\n    \
    backendRefs: [{name: reviews-v2, port: 9080}]\n  - backendRefs:\n    - {name: reviews-v1, port: 9080, weight: 90}\n    \
    - {name: reviews-v2, port: 9080, weight: 10}\n    timeouts: {request: 3s, backendRequest: 1s}\n";

#[test]
fn http_routes_attach_to_their_service_parents() {
    let mut translator = Translator::new("istio-system");
    assert_eq!(apply(&mut translator, HTTP_ROUTE), [Outcome::Accepted]);
    let config = translator.config();
    let routes = &config.http_routes[0];
    assert_eq!(
        (routes.origin.as_str(), routes.hosts.as_slice()),
        ("HTTPRoute shop/reviews", &["reviews.shop.svc.cluster.local".to_owned()][..])
    );
    let first = &routes.rules[0].matches[0];
    assert_eq!(first.path, Some(StringMatch::PathPrefix("/api".into())));
    assert_eq!((first.method.clone(), first.port), (Some(StringMatch::Exact("GET".into())), Some(9080)));
    assert!(first.headers.contains_key("x-canary"), "header names are matched lower case");
    let split = &routes.rules[1];
    assert_eq!(routes.rules[1].matches[0].path, Some(StringMatch::PathPrefix("/".into())), "no match is every path");
    assert_eq!(split.destinations.iter().map(|d| d.weight).collect::<Vec<_>>(), [90, 10]);
    assert_eq!(split.timeout, Some(Duration::from_secs(3)));
}

#[test]
fn bad_http_routes_are_rejected_and_ingress_routes_ignored() {
    let cases = [
        (
            "weights sum to 0",
            HTTP_ROUTE.replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 0"),
            "sum to 0",
        ),
        (
            "bad regex",
            HTTP_ROUTE.replace("type: PathPrefix, value: /api", "type: RegularExpression, value: '/a('"),
            "does not compile",
        ),
        (
            "a filter not implemented yet",
            HTTP_ROUTE.replace("    timeouts:", "    filters: [{type: CORS, cors: {}}]\n    timeouts:"),
            "not supported",
        ),
        (
            "no backend port",
            HTTP_ROUTE.replace("{name: reviews-v2, port: 9080}]", "{name: reviews-v2}]"),
            "needs a port",
        ),
        (
            "other namespace",
            HTTP_ROUTE.replace("{name: reviews-v2, port: 9080}]", "{name: x, namespace: other, port: 1}]"),
            "ReferenceGrant",
        ),
    ];
    for (case, bad, reason) in cases {
        let mut translator = Translator::new("istio-system");
        let outcomes = apply(&mut translator, &bad);
        assert!(matches!(&outcomes[0], Outcome::Rejected(r) if r.contains(reason)), "{case}: {outcomes:?}");
    }
    let ingress = HTTP_ROUTE.replace("{group: '', kind: Service, name: reviews, port: 9080}", "{name: public-gateway}");
    let mut translator = Translator::new("istio-system");
    assert!(matches!(apply(&mut translator, &ingress)[0], Outcome::NotRouted(_)));
}

const WAYPOINT: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
    metadata: {name: waypoint, namespace: shop, labels: {istio.io/waypoint-for: service}}\nspec:\n  \
    gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n";

#[test]
fn waypoint_gateways_and_the_services_that_use_them() {
    let namespace =
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}\n";
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\n\
                   spec: {clusterIP: 10.96.0.9, ports: [{port: 9080}]}\n";
    let opted_out = service
        .replace("name: reviews,", "name: ratings, labels: {istio.io/use-waypoint: none},")
        .replace(".9,", ".10,");
    let mut translator = Translator::new("istio-system");
    let outcomes = apply(&mut translator, &format!("{WAYPOINT}---\n{namespace}---\n{service}---\n{opted_out}"));
    assert!(outcomes.iter().all(|o| *o == Outcome::Accepted), "{outcomes:?}");
    let config = translator.config();
    assert_eq!(config.waypoints[0].hostname, "waypoint.shop.svc.cluster.local");
    let by_name = |name: &str| config.services.iter().find(|s| s.name == name).cloned().unwrap_or_default();
    assert_eq!(waypoint_of(&config, &by_name("reviews")).map(|w| w.name.as_str()), Some("waypoint"));
    assert_eq!(waypoint_of(&config, &by_name("ratings")), None, "a service can opt out");

    let no_hbone = WAYPOINT.replace("protocol: HBONE", "protocol: HTTP");
    assert!(matches!(&apply(&mut translator, &no_hbone)[0], Outcome::Rejected(r) if r.contains("HBONE")));
    assert_eq!(translator.config().waypoints.len(), 1, "the last good waypoint stays");
    let ingress = WAYPOINT.replace("istio-waypoint", "istio");
    assert!(matches!(apply(&mut translator, &ingress)[0], Outcome::NotRouted(_)));
    assert!(translator.config().waypoints.is_empty());
}

/// Istio's task pages still use fields Istio deprecated but honours; they
/// mean here what they mean in Istio, rather than being dropped.
#[test]
fn deprecated_fields_istio_honours_keep_their_meaning() {
    let mut translator = Translator::new("istio-system");
    let yaml = "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\n\
        metadata: {name: ratings, namespace: shop}\nspec:\n  hosts: [ratings]\n  http:\n  \
        - route: [{destination: {host: ratings}}]\n    fault: {delay: {fixedDelay: 7s, percent: 40}}\n---\n\
        apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: ratings, namespace: shop}\n\
        spec:\n  host: ratings\n  trafficPolicy: {outlierDetection: {consecutiveErrors: 7}}\n";
    assert_eq!(apply(&mut translator, yaml), [Outcome::Accepted, Outcome::Accepted]);
    let config = translator.config();
    let delay = config.http_routes[0].rules[0].fault.as_ref().and_then(|f| f.delay.clone()).unwrap_or_default();
    assert_eq!((delay.delay, delay.ppm), (Duration::from_secs(7), 400_000), "percent: 40 delays 40%");
    let outlier = config.destination_policies[0].traffic_policy.outlier_detection.clone().unwrap_or_default();
    assert_eq!(
        (outlier.consecutive_gateway_errors, outlier.consecutive_5xx_errors),
        (Some(7), Some(0)),
        "consecutiveErrors counts gateway errors only"
    );
}

#[test]
fn the_current_fields_win_over_deprecated_ones() {
    let mut translator = Translator::new("istio-system");
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
        metadata: {name: ratings, namespace: shop}\nspec:\n  hosts: [ratings]\n  http:\n  \
        - route: [{destination: {host: ratings}}]\n    fault: {delay: {fixedDelay: 1s, percent: 40, percentage: {value: 5}}}\n---\n\
        apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings, namespace: shop}\n\
        spec:\n  host: ratings\n  trafficPolicy: {outlierDetection: {consecutiveErrors: 7, consecutive5xxErrors: 3}}\n";
    assert_eq!(apply(&mut translator, yaml), [Outcome::Accepted, Outcome::Accepted]);
    let config = translator.config();
    let delay = config.http_routes[0].rules[0].fault.as_ref().and_then(|f| f.delay.clone()).unwrap_or_default();
    assert_eq!(delay.ppm, 50_000);
    let outlier = config.destination_policies[0].traffic_policy.outlier_detection.clone().unwrap_or_default();
    assert_eq!((outlier.consecutive_gateway_errors, outlier.consecutive_5xx_errors), (Some(7), Some(3)));
}

/// The cluster's DNS domain is a setting: short names complete to it.
#[test]
fn short_names_complete_to_the_clusters_domain() {
    let mut translator = Translator::new("istio-system").with_cluster_domain("corp.example");
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec:\n  \
                   clusterIP: 10.96.0.9\n  ports: [{port: 80}]\n---\n";
    assert!(
        apply(&mut translator, &format!("{service}{VIRTUAL_SERVICE}---\n{DESTINATION_RULE}"))
            .iter()
            .all(|o| *o == Outcome::Accepted)
    );
    let config = translator.config();
    assert_eq!(config.services[0].hostname(), "reviews.shop.svc.corp.example");
    assert_eq!(config.http_routes[0].hosts, ["reviews.shop.svc.corp.example"]);
    assert_eq!(config.destination_policies[0].host, "reviews.shop.svc.corp.example");
}

/// Header operations, from Istio's `headers` and from the Gateway API's
/// header modifier filters, with names lower-cased.
#[test]
fn header_operations_compile_from_both_apis() {
    let istio = VIRTUAL_SERVICE.replace(
        "    timeout: 2s\n",
        "    timeout: 2s\n    headers: {request: {set: {X-Canary: 'no'}, remove: [Cookie]}, response: {add: {x-served-by: waypoint}}}\n",
    );
    let mut translator = Translator::new("istio-system");
    assert_eq!(
        apply(&mut translator, &format!("{istio}---\n{DESTINATION_RULE}")),
        [Outcome::Accepted, Outcome::Accepted]
    );
    let rule = &translator.config().http_routes[0].rules[1];
    assert_eq!(rule.request_headers.set.get("x-canary").map(String::as_str), Some("no"));
    assert_eq!(rule.request_headers.remove, ["cookie"]);
    assert_eq!(rule.response_headers.add.get("x-served-by").map(String::as_str), Some("waypoint"));

    let gateway = HTTP_ROUTE.replace(
        "    timeouts:",
        "    filters:\n    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Env, value: canary}], remove: [X-Debug]}}\n    \
         - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-route, value: gamma}]}}\n    timeouts:",
    );
    let mut translator = Translator::new("istio-system");
    assert_eq!(apply(&mut translator, &gateway), [Outcome::Accepted]);
    let rule = &translator.config().http_routes[0].rules[1];
    assert_eq!(rule.request_headers.set.get("x-env").map(String::as_str), Some("canary"));
    assert_eq!(rule.request_headers.remove, ["x-debug"]);
    assert_eq!(rule.response_headers.add.get("x-route").map(String::as_str), Some("gamma"));
}
