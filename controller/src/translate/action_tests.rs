//! Table tests for what rules do besides splitting traffic: rewrites,
//! redirects, mirrors and per-destination headers (VirtualService and
//! HTTPRoute), DestinationRule load balancers per port, and TLS modes.

use mesh::config::routing::{LoadBalancer, PathRewrite, RedirectPort, StringMatch};

use super::Outcome;
use super::Translator;
use super::routing_tests::apply;

const VIRTUAL_SERVICE: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
    metadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  \
    - match: [{uri: {prefix: /old}}]\n    redirect: {uri: /new, authority: example.org, derivePort: FROM_REQUEST_PORT}\n  \
    - match: [{uri: {prefix: /api}}]\n    rewrite: {uri: /v2, authority: ratings}\n    \
      route: [{destination: {host: reviews}, headers: {request: {set: {X-Picked: v1}}}}]\n    \
      mirror: {host: reviews-shadow}\n    mirrorPercentage: {value: 25}\n  \
    - route: [{destination: {host: reviews}}]\n    mirrors: [{destination: {host: reviews-v2, port: {number: 9080}}}]\n";

#[test]
fn virtual_service_rewrites_redirects_and_mirrors() {
    let mut translator = Translator::new("istio-system");
    assert_eq!(apply(&mut translator, VIRTUAL_SERVICE), [Outcome::Accepted]);
    let config = translator.config();
    let rules = &config.http_routes[0].rules;
    let redirect = rules[0].redirect.clone().unwrap_or_else(|| panic!("no redirect"));
    assert_eq!((redirect.status, redirect.port), (301, RedirectPort::Request), "Istio's default code is 301");
    assert_eq!(redirect.path, Some(PathRewrite::Full("/new".into())), "Istio's redirect uri replaces the whole path");
    assert_eq!(redirect.host.as_deref(), Some("example.org"));
    assert!(rules[0].destinations.is_empty());
    let rewrite = rules[1].rewrite.clone().unwrap_or_default();
    assert_eq!(rewrite.path, Some(PathRewrite::Prefix("/v2".into())));
    assert_eq!(rewrite.authority.as_deref(), Some("ratings"));
    assert_eq!(rules[1].destinations[0].request_headers.set.get("x-picked").map(String::as_str), Some("v1"));
    let mirror = &rules[1].mirrors[0];
    assert_eq!((mirror.host.as_str(), mirror.ppm), ("reviews-shadow.shop.svc.cluster.local", 250_000));
    let mirror = &rules[2].mirrors[0];
    assert_eq!((mirror.port, mirror.ppm), (Some(9080), 1_000_000), "mirrors without a percentage take every request");
}

#[test]
fn bad_actions_are_rejected_with_a_reason() {
    let cases = [
        (
            "redirect code",
            VIRTUAL_SERVICE.replace("derivePort: FROM_REQUEST_PORT", "redirectCode: 200"),
            "redirect status",
        ),
        ("derive port", VIRTUAL_SERVICE.replace("FROM_REQUEST_PORT", "SOMEWHERE"), "derivePort"),
        ("mirror share", VIRTUAL_SERVICE.replace("value: 25", "value: 250"), "percentage"),
        (
            "regex rewrite",
            VIRTUAL_SERVICE.replace(
                "rewrite: {uri: /v2, authority: ratings}",
                "rewrite: {uriRegexRewrite: {match: a, rewrite: b}}",
            ),
            "uriRegexRewrite",
        ),
        ("relative path", VIRTUAL_SERVICE.replace("uri: /v2,", "uri: v2,"), "absolute path"),
    ];
    for (case, bad, reason) in cases {
        let mut translator = Translator::new("istio-system");
        let outcomes = apply(&mut translator, &bad);
        assert!(matches!(&outcomes[0], Outcome::Rejected(r) if r.contains(reason)), "{case}: {outcomes:?}");
    }
}

const DESTINATION_RULE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
    metadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n  trafficPolicy:\n    \
    loadBalancer: {simple: RANDOM}\n    tls: {mode: ISTIO_MUTUAL}\n    \
    portLevelSettings: [{port: {number: 9080}, loadBalancer: {simple: ROUND_ROBIN}}]\n  \
    subsets:\n  - {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}}\n";

#[test]
fn destination_rules_balance_per_subset_and_port() {
    let mut translator = Translator::new("istio-system");
    assert_eq!(apply(&mut translator, DESTINATION_RULE), [Outcome::Accepted], "ISTIO_MUTUAL is what the mesh does");
    let config = translator.config();
    let policy = &config.destination_policies[0].traffic_policy;
    let lb = |parent, port| policy.resolve(parent, port, |p| p.load_balancer.as_ref()).copied();
    assert_eq!(lb(None, 9080), Some(LoadBalancer::RoundRobin));
    assert_eq!(lb(None, 80), Some(LoadBalancer::Random));
    let subset = &config.destination_policies[0].subsets[0].traffic_policy;
    assert_eq!(subset.resolve(Some(policy), 9080, |p| p.load_balancer.as_ref()), Some(&LoadBalancer::LeastRequest));
    let cases = [
        ("simple mode", DESTINATION_RULE.replace("ISTIO_MUTUAL", "SIMPLE"), "only ISTIO_MUTUAL"),
        ("tls without mode", DESTINATION_RULE.replace("{mode: ISTIO_MUTUAL}", "{sni: x}"), "only ISTIO_MUTUAL"),
        ("unknown balancer", DESTINATION_RULE.replace("RANDOM", "FASTEST"), "FASTEST"),
        (
            "consistent hash",
            DESTINATION_RULE.replace("{simple: RANDOM}", "{consistentHash: {useSourceIp: true}}"),
            "consistentHash",
        ),
        (
            "port twice",
            DESTINATION_RULE.replace(
                "[{port: {number: 9080}, loadBalancer: {simple: ROUND_ROBIN}}]",
                "[{port: {number: 1}}, {port: {number: 1}}]",
            ),
            "repeated",
        ),
    ];
    for (case, bad, reason) in cases {
        let mut translator = Translator::new("istio-system");
        let outcomes = apply(&mut translator, &bad);
        assert!(matches!(&outcomes[0], Outcome::Rejected(r) if r.contains(reason)), "{case}: {outcomes:?}");
    }
}

const HTTP_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
    metadata: {name: echo, namespace: shop}\nspec:\n  parentRefs: [{group: '', kind: Service, name: echo, port: 80}]\n  \
    rules:\n  - matches: [{path: {type: PathPrefix, value: /prefix}}]\n    backendRefs: [{name: echo, port: 80}]\n  \
    - matches: [{path: {type: PathPrefix, value: /prefix/one}}]\n    \
      filters: [{type: URLRewrite, urlRewrite: {hostname: mirror.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]\n    \
      backendRefs: [{name: echo, port: 80}]\n  \
    - matches: [{path: {type: Exact, value: /port}}]\n    filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]\n  \
    - matches: [{path: {type: PathPrefix, value: /scheme}}]\n    \
      filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]\n  \
    - matches: [{path: {type: PathPrefix, value: /copy}}]\n    \
      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}, fraction: {numerator: 1, denominator: 4}}}]\n    \
      backendRefs: [{name: echo, port: 80}]\n    retry: {attempts: 3, codes: [500, 503], backoff: 100ms}\n";

#[test]
fn http_route_filters_retries_and_precedence() {
    let mut translator = Translator::new("istio-system");
    assert_eq!(apply(&mut translator, HTTP_ROUTE), [Outcome::Accepted]);
    let config = translator.config();
    let rules = &config.http_routes[0].rules;
    let paths: Vec<_> = rules.iter().map(|r| r.matches[0].path.clone()).collect();
    let prefix = |p: &str| Some(StringMatch::PathPrefix(p.into()));
    assert_eq!(
        paths,
        [
            Some(StringMatch::Exact("/port".into())),
            prefix("/prefix/one"),
            prefix("/prefix"),
            prefix("/scheme"),
            prefix("/copy")
        ],
        "exact first, then the longest prefix; ties keep their order"
    );
    let port = rules[0].redirect.clone().unwrap_or_else(|| panic!("no redirect"));
    assert_eq!((port.status, port.port), (302, RedirectPort::Exact(8083)), "the Gateway API's default is 302");
    let scheme = rules[3].redirect.clone().unwrap_or_else(|| panic!("no redirect"));
    assert_eq!(
        (scheme.status, scheme.port, scheme.scheme.as_deref()),
        (301, RedirectPort::SchemeDefault, Some("https"))
    );
    let rewrite = rules[1].rewrite.clone().unwrap_or_default();
    assert_eq!(
        (rewrite.path, rewrite.authority.as_deref()),
        (Some(PathRewrite::Prefix("/one".into())), Some("mirror.example"))
    );
    let copy = &rules[4];
    assert_eq!(copy.mirrors[0].ppm, 250_000);
    let retries = copy.retries.clone().unwrap_or_default();
    assert_eq!(retries.attempts, 3);
    assert!(retries.retry_on.contains(&"503".to_owned()) && retries.retry_on.contains(&"connect-failure".to_owned()));
    assert_eq!(retries.backoff, Some(std::time::Duration::from_millis(100)));
}

#[test]
fn a_prefix_rewrite_needs_a_prefix_match() {
    let bad = HTTP_ROUTE
        .replace("{path: {type: PathPrefix, value: /prefix/one}}", "{path: {type: Exact, value: /prefix/one}}");
    let mut translator = Translator::new("istio-system");
    let outcomes = apply(&mut translator, &bad);
    assert!(matches!(&outcomes[0], Outcome::Rejected(r) if r.contains("ReplacePrefixMatch")), "{outcomes:?}");
}
