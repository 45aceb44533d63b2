//! L7 routing, the part of the config waypoints apply: HTTP routes for
//! services (from Istio VirtualService and Gateway API HTTPRoute),
//! destination policies (from DestinationRule), and the waypoints themselves
//! (Gateways of class `istio-waypoint`).
//!
//! This is the compiled form: hosts are fully qualified, defaults are filled
//! in and every pattern is known to compile. The controller produces it; an
//! agent checks it again ([`validate`]) before it takes a config in.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod actions;
mod policy;

pub use actions::{HeaderOperations, Mirror, PathRewrite, Redirect, RedirectFrom, RedirectPort, Rewrite};
pub use policy::{
    ConnectionPool, DestinationPolicy, LoadBalancer, OutlierDetection, PortTrafficPolicy, Subset, TrafficPolicy,
};

use super::{Labels, MeshConfig, Service, Workload};

/// The namespace or service label that sends a service's traffic through a
/// waypoint: its value names the waypoint (a Gateway); `none` opts out.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// Names the waypoint's namespace when it is not the service's own.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// The label a waypoint's pods carry, naming their Gateway (as Istio's
/// waypoint Deployments do).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The Gateway class that makes a Gateway a waypoint.
pub const WAYPOINT_GATEWAY_CLASS: &str = "istio-waypoint";
/// Weights are parts of this whole when a fraction is a percentage.
pub const PARTS_PER_MILLION: u32 = 1_000_000;

/// The HTTP routes of one object, for the services named in `hosts`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoutes {
    /// Where the routes came from, e.g. `VirtualService shop/reviews`.
    pub origin: String,
    /// Fully qualified service hostnames whose requests these rules route.
    pub hosts: Vec<String>,
    /// Evaluated in order; the first rule with a matching match wins.
    pub rules: Vec<RouteRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one matching selects the rule; none at all matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RequestMatch>,
    /// Weighted; no destinations means the request fails with 500, as the
    /// Gateway API asks.
    #[serde(default)]
    pub destinations: Vec<WeightedDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultInjection>,
    /// Applied to the request on its way to the destination.
    #[serde(default, skip_serializing_if = "HeaderOperations::is_empty")]
    pub request_headers: HeaderOperations,
    /// Applied to the response on its way back.
    #[serde(default, skip_serializing_if = "HeaderOperations::is_empty")]
    pub response_headers: HeaderOperations,
    /// Changes to the forwarded request's path and authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Answer with a redirect instead of forwarding (then `destinations`
    /// is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Copies of the request sent elsewhere, answers discarded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
}

/// Every present condition must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Header names are lower case.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    /// The service port the request arrived for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A regex must match the whole value (RE2 syntax, as Istio and Envoy use).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// The Gateway API's PathPrefix: whole path segments, so `/api` matches
    /// `/api` and `/api/users` but not `/apis`.
    PathPrefix(String),
    Regex(String),
}

impl StringMatch {
    /// Checks that a regex compiles; the message says what is wrong with it.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::Regex(pattern) => full_match_regex(pattern).map(drop),
            Self::Exact(_) | Self::Prefix(_) | Self::PathPrefix(_) => Ok(()),
        }
    }
}

/// Compiles `pattern` so that it must match a whole value.
pub fn full_match_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("regex {pattern:?} does not compile: {e}"))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedDestination {
    /// A service hostname.
    pub host: String,
    /// A DestinationRule subset of that host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// The service port; defaults to the port the request arrived for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Relative to the rule's other destinations.
    pub weight: u32,
    /// Applied when this destination is chosen, after the rule's own
    /// (Istio's `route[].headers`).
    #[serde(default, skip_serializing_if = "HeaderOperations::is_empty")]
    pub request_headers: HeaderOperations,
    #[serde(default, skip_serializing_if = "HeaderOperations::is_empty")]
    pub response_headers: HeaderOperations,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub per_try_timeout: Option<Duration>,
    /// Envoy's retry conditions (`5xx`, `connect-failure`, `retriable-status-codes`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<String>,
    /// The least wait before a retry (the Gateway API's `retry.backoff`);
    /// Envoy's 25 ms when unset.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub backoff: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Of requests, in parts per million.
    pub ppm: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    pub http_status: u16,
    /// Of requests, in parts per million.
    pub ppm: u32,
}

/// A Gateway of class `istio-waypoint`: an L7 proxy in its namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Waypoint {
    pub name: String,
    pub namespace: String,
    /// The Service that fronts the waypoint's pods (`<name>.<namespace>.svc…`).
    pub hostname: String,
    /// What traffic it takes (`istio.io/waypoint-for`): service, workload,
    /// all or none; Istio's default is service.
    pub traffic_type: String,
}

impl Waypoint {
    /// Whether it takes traffic addressed to a service's VIP
    /// (`istio.io/waypoint-for`: service, the default, or all).
    pub fn takes_service_traffic(&self) -> bool {
        matches!(self.traffic_type.as_str(), "" | "service" | "all")
    }

    /// Whether it takes traffic addressed to a pod directly (workload or all).
    pub fn takes_workload_traffic(&self) -> bool {
        matches!(self.traffic_type.as_str(), "workload" | "all")
    }

    /// Whether `workload` is one of this waypoint's pods.
    pub fn has_pod(&self, workload: &Workload) -> bool {
        workload.namespace == self.namespace && workload.labels.get(GATEWAY_NAME_LABEL) == Some(&self.name)
    }
}

/// The waypoint a service's traffic goes through: the service's own
/// `istio.io/use-waypoint` label first, else its namespace's; `none` opts
/// out. A label naming no known waypoint sends traffic nowhere special.
pub fn waypoint_of<'a>(config: &'a MeshConfig, service: &Service) -> Option<&'a Waypoint> {
    // A waypoint's own Service never goes through a waypoint: that would loop.
    let fronts_a_waypoint = service.labels.contains_key(GATEWAY_NAME_LABEL)
        || service.selector.as_ref().is_some_and(|s| s.contains_key(GATEWAY_NAME_LABEL));
    if fronts_a_waypoint {
        return None;
    }
    named_waypoint(config, &service.labels, &service.namespace)
}

/// The waypoint a pod's traffic goes through, by the pod's label or its
/// namespace's, as for services. A waypoint never serves its own pods.
pub fn waypoint_of_workload<'a>(config: &'a MeshConfig, workload: &Workload) -> Option<&'a Waypoint> {
    named_waypoint(config, &workload.labels, &workload.namespace).filter(|w| !w.has_pod(workload))
}

fn named_waypoint<'a>(config: &'a MeshConfig, own: &Labels, namespace: &str) -> Option<&'a Waypoint> {
    let namespace_labels = config.namespaces.iter().find(|n| n.name == namespace).map(|n| &n.labels);
    let labels = [Some(own), namespace_labels].into_iter().flatten().find(|l| l.contains_key(USE_WAYPOINT_LABEL))?;
    let name = labels.get(USE_WAYPOINT_LABEL)?;
    let waypoint_namespace = labels.get(USE_WAYPOINT_NAMESPACE_LABEL).map_or(namespace, String::as_str);
    config.waypoints.iter().find(|w| &w.name == name && w.namespace == waypoint_namespace)
}

/// Checks what the types alone cannot: patterns compile, weights are not
/// all zero, fractions are fractions.
pub(super) fn validate(config: &MeshConfig) -> Result<(), String> {
    for routes in &config.http_routes {
        for (index, rule) in routes.rules.iter().enumerate() {
            rule.check().map_err(|e| format!("{} rule {index}: {e}", routes.origin))?;
        }
    }
    Ok(())
}

impl RouteRule {
    /// What the types cannot say: patterns compile, weights are not all
    /// zero, fractions are at most 100%. The controller rejects an object
    /// with this message; an agent refuses a config that fails it.
    pub fn check(&self) -> Result<(), String> {
        check_rule(self)
    }
}

fn check_rule(rule: &RouteRule) -> Result<(), String> {
    for m in &rule.matches {
        let patterns = m.path.iter().chain(&m.method).chain(m.headers.values()).chain(m.query_params.values());
        for pattern in patterns {
            pattern.check()?;
        }
    }
    rule.request_headers.check()?;
    rule.response_headers.check()?;
    for destination in &rule.destinations {
        destination.request_headers.check()?;
        destination.response_headers.check()?;
    }
    if let Some(redirect) = &rule.redirect {
        redirect.check()?;
        if !rule.destinations.is_empty() {
            return Err("a rule that redirects cannot also have destinations".into());
        }
    }
    if let Some(rewrite) = &rule.rewrite {
        rewrite.check()?;
    }
    if !rule.destinations.is_empty() && rule.destinations.iter().all(|d| d.weight == 0) {
        return Err("the destination weights sum to 0".into());
    }
    let fault = rule.fault.as_ref();
    let ppms = fault
        .and_then(|f| f.delay.as_ref())
        .map(|d| d.ppm)
        .into_iter()
        .chain(fault.and_then(|f| f.abort.as_ref()).map(|a| a.ppm))
        .chain(rule.mirrors.iter().map(|m| m.ppm));
    for ppm in ppms {
        if ppm > PARTS_PER_MILLION {
            return Err(format!("percentage {ppm} ppm is over 100%"));
        }
    }
    Ok(())
}

/// Parses a duration as Istio and the Gateway API write them: Go's form
/// (`1h30m`, `500ms`, `1.5s`, units h, m, s, ms, us, ns).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (like 1.5s, 500ms or 1h30m)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (number, after) = rest.split_at(number_end);
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let seconds_per_unit = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        let value: f64 = number.parse().map_err(|_| bad())?;
        total += Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| bad())?;
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_form() {
        let ok = [("10s", 10_000), ("500ms", 500), ("1.5s", 1500), ("1h30m", 5_400_000), ("2m0.25s", 120_250)];
        for (text, millis) in ok {
            assert_eq!(parse_duration(text).map(|d| d.as_millis()), Ok(millis), "{text}");
        }
        for bad in ["", "10", "s", "10x", "1..5s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn regexes_match_whole_values() {
        let re = full_match_regex("/api/v[0-9]+").unwrap_or_else(|e| panic!("{e}"));
        assert!(re.is_match("/api/v2"));
        assert!(!re.is_match("/api/v2/users"), "a regex must match all of the value");
        let error = StringMatch::Regex("/api/(".into()).check().err().unwrap_or_default();
        assert!(error.contains("does not compile"), "{error}");
    }

    #[test]
    fn waypoints_serve_by_label_but_never_their_own_service() {
        let config = MeshConfig::from_yaml(
            r#"
namespaces: [{name: shop, labels: {istio.io/use-waypoint: waypoint}}]
waypoints: [{name: waypoint, namespace: shop, hostname: waypoint.shop.svc.cluster.local, trafficType: all}]
services:
  - {name: reviews, namespace: shop, vips: [10.96.0.1], ports: [{port: 80}]}
  - {name: ratings, namespace: shop, vips: [10.96.0.2], ports: [{port: 80}], labels: {istio.io/use-waypoint: none}}
  - {name: waypoint, namespace: shop, vips: [10.96.0.3], ports: [{port: 15008}],
     selector: {gateway.networking.k8s.io/gateway-name: waypoint}}
workloads:
  - {uid: "1", name: reviews-1, namespace: shop, node: n1, ips: [10.1.0.2]}
  - {uid: "2", name: waypoint-1, namespace: shop, node: n1, ips: [10.1.0.3],
     labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let service = |name: &str| config.services.iter().find(|s| s.name == name).cloned().unwrap_or_default();
        assert_eq!(waypoint_of(&config, &service("reviews")).map(|w| w.name.as_str()), Some("waypoint"));
        assert!(waypoint_of(&config, &service("ratings")).is_none(), "opted out");
        assert!(waypoint_of(&config, &service("waypoint")).is_none(), "a waypoint's own service would loop");
        assert!(waypoint_of_workload(&config, &config.workloads[0]).is_some());
        assert!(waypoint_of_workload(&config, &config.workloads[1]).is_none(), "a waypoint never serves itself");
        let waypoint = &config.waypoints[0];
        assert!(waypoint.takes_service_traffic() && waypoint.takes_workload_traffic());
        assert!(waypoint.has_pod(&config.workloads[1]) && !waypoint.has_pod(&config.workloads[0]));
    }

    #[test]
    fn header_operations_remove_set_then_add() {
        let ops = HeaderOperations {
            set: [("x-set".to_owned(), "new".to_owned())].into(),
            add: [("x-add".to_owned(), "two".to_owned())].into(),
            remove: vec!["x-gone".to_owned()],
        };
        let mut headers = http::HeaderMap::new();
        for (name, value) in [("x-set", "old"), ("x-add", "one"), ("x-gone", "1")] {
            headers.insert(name, http::HeaderValue::from_static(value));
        }
        ops.apply(&mut headers);
        assert_eq!(headers["x-set"], "new");
        assert_eq!(headers.get_all("x-add").iter().collect::<Vec<_>>(), ["one", "two"]);
        assert!(!headers.contains_key("x-gone"));
        let bad = HeaderOperations { set: [("bad name".to_owned(), "v".to_owned())].into(), ..Default::default() };
        let rule = RouteRule { request_headers: bad, ..Default::default() };
        assert!(check_rule(&rule).is_err());
    }

    #[test]
    fn all_zero_weights_are_refused() {
        let destination = |weight| WeightedDestination { host: "a".into(), weight, ..Default::default() };
        let rule = RouteRule { destinations: vec![destination(0), destination(0)], ..Default::default() };
        assert!(check_rule(&rule).is_err());
        let rule = RouteRule { destinations: vec![destination(0), destination(1)], ..Default::default() };
        assert!(check_rule(&rule).is_ok());
        assert!(check_rule(&RouteRule::default()).is_ok(), "no destinations at all is a 500 route, not an error");
    }
}
