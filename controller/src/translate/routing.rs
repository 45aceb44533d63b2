//! The L7 kinds to their part of the routing model: VirtualService and
//! HTTPRoute to routes, DestinationRule to destination policies, Gateways
//! of class `istio-waypoint` to waypoints. Each object is checked alone
//! here (regexes compile, weights are not all zero, no unsupported field);
//! references between objects (a route's subset) are checked in
//! [`super::Translator::settle`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh::config::routing::{
    self, FaultAbort, FaultDelay, FaultInjection, HttpRoutes, Mirror, PARTS_PER_MILLION, PathRewrite, Redirect,
    RedirectPort, RequestMatch, RetryPolicy, Rewrite, RouteRule, StringMatch, WAYPOINT_GATEWAY_CLASS, Waypoint,
    WeightedDestination,
};

use crate::crds::networking as istio;

pub(super) type Translated<T> = Result<Option<T>, String>;

/// Kubernetes' default cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

pub(super) fn name_of(meta: &ObjectMeta) -> Result<(String, String), String> {
    let name = meta.name.clone().filter(|n| !n.is_empty()).ok_or("metadata.name is missing")?;
    Ok((meta.namespace.clone().unwrap_or_default(), name))
}

/// Istio's host resolution: a name without dots is a service in
/// `namespace`, in the cluster's `domain`.
pub(super) fn qualify(host: &str, namespace: &str, domain: &str) -> String {
    if host.contains('.') || host.contains('*') { host.to_owned() } else { format!("{host}.{namespace}.svc.{domain}") }
}

pub(super) fn duration(field: &str, text: Option<&String>) -> Result<Option<std::time::Duration>, String> {
    text.map(|t| routing::parse_duration(t).map_err(|e| format!("{field}: {e}"))).transpose()
}

pub(super) fn refuse_unsupported(at: &str, fields: &[&str]) -> Result<(), String> {
    match fields {
        [] => Ok(()),
        _ => Err(format!("{at}: {} not supported by ambit", fields.join(", "))),
    }
}

pub fn virtual_service(object: &istio::VirtualService, domain: &str) -> Translated<HttpRoutes> {
    let (namespace, name) = name_of(&object.metadata)?;
    let spec = &object.spec;
    if !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh") {
        return Ok(None);
    }
    let top_level = istio::set_fields(&[("tcp", &spec.tcp), ("tls", &spec.tls)]);
    refuse_unsupported("spec", &top_level)?;
    if spec.hosts.is_empty() {
        return Err("spec.hosts is empty".into());
    }
    let rules = spec
        .http
        .iter()
        .enumerate()
        .map(|(index, route)| istio_rule(route, &namespace, domain).map_err(|e| format!("http[{index}]: {e}")))
        .collect::<Result<_, _>>()?;
    let hosts = spec.hosts.iter().map(|h| qualify(h, &namespace, domain)).collect();
    Ok(Some(HttpRoutes { origin: format!("VirtualService {namespace}/{name}"), hosts, rules }))
}

fn istio_rule(route: &istio::HttpRoute, namespace: &str, domain: &str) -> Result<RouteRule, String> {
    refuse_unsupported("field", &route.unsupported.set())?;
    let matches = route.matches.iter().map(istio_match).collect::<Result<_, _>>()?;
    let lone = route.route.len() == 1;
    let mut destinations = Vec::new();
    for (index, d) in route.route.iter().enumerate() {
        let weight = match d.weight {
            None if lone => 100,
            None => 0,
            Some(w) => u32::try_from(w).map_err(|_| format!("route[{index}]: weight {w} is negative"))?,
        };
        let headers = d.headers.clone().unwrap_or_default();
        destinations.push(WeightedDestination {
            weight,
            request_headers: header_operations(headers.request),
            response_headers: header_operations(headers.response),
            ..istio_destination(&d.destination, namespace, domain).map_err(|e| format!("route[{index}]: {e}"))?
        });
    }
    let headers = route.headers.clone().unwrap_or_default();
    let rule = RouteRule {
        name: route.name.clone(),
        matches,
        destinations,
        timeout: duration("timeout", route.timeout.as_ref())?,
        retries: route.retries.as_ref().map(istio_retries).transpose()?,
        fault: route.fault.as_ref().map(istio_fault).transpose()?,
        request_headers: header_operations(headers.request),
        response_headers: header_operations(headers.response),
        rewrite: route.rewrite.as_ref().map(istio_rewrite).transpose()?,
        redirect: route.redirect.as_ref().map(istio_redirect).transpose()?,
        mirrors: istio_mirrors(route, namespace, domain)?,
    };
    rule.check()?;
    Ok(rule)
}

fn istio_destination(d: &istio::Destination, namespace: &str, domain: &str) -> Result<WeightedDestination, String> {
    let port = d.port.as_ref().map(|p| port_number(p.number)).transpose()?;
    let host = qualify(&d.host, namespace, domain);
    Ok(WeightedDestination { host, subset: d.subset.clone(), port, weight: 0, ..Default::default() })
}

fn istio_rewrite(rewrite: &istio::HttpRewrite) -> Result<Rewrite, String> {
    refuse_unsupported("rewrite", &istio::set_fields(&[("uriRegexRewrite", &rewrite.uri_regex_rewrite)]))?;
    Ok(Rewrite { path: rewrite.uri.clone().map(PathRewrite::Prefix), authority: rewrite.authority.clone() })
}

/// Istio's redirect: `uri` replaces the whole path; the port stays as the
/// request had it unless `port` or `derivePort` says otherwise.
fn istio_redirect(redirect: &istio::HttpRedirect) -> Result<Redirect, String> {
    let port = match (redirect.port, redirect.derive_port.as_deref()) {
        (Some(port), _) => RedirectPort::Exact(port_number(port)?),
        (None, Some("FROM_PROTOCOL_DEFAULT")) => RedirectPort::SchemeDefault,
        (None, Some("FROM_REQUEST_PORT")) => RedirectPort::Request,
        (None, None) => RedirectPort::Keep,
        (None, Some(other)) => {
            return Err(format!("redirect.derivePort {other:?} is not FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"));
        }
    };
    let status = redirect.redirect_code.unwrap_or(301);
    Ok(Redirect {
        scheme: redirect.scheme.clone(),
        host: redirect.authority.clone(),
        port,
        path: redirect.uri.clone().map(PathRewrite::Full),
        status: u16::try_from(status).map_err(|_| format!("redirect.redirectCode {status} is not a redirect"))?,
    })
}

/// `mirrors`, and the deprecated `mirror` with `mirrorPercentage`.
fn istio_mirrors(route: &istio::HttpRoute, namespace: &str, domain: &str) -> Result<Vec<Mirror>, String> {
    let single = route.mirror.as_ref().map(|d| (d, route.mirror_percentage.as_ref()));
    let listed = route.mirrors.iter().map(|m| (&m.destination, m.percentage.as_ref()));
    single
        .into_iter()
        .chain(listed)
        .map(|(destination, percentage)| {
            let d = istio_destination(destination, namespace, domain).map_err(|e| format!("mirror: {e}"))?;
            Ok(Mirror { host: d.host, subset: d.subset, port: d.port, ppm: ppm(percentage)? })
        })
        .collect()
}

/// Istio's header operations, names lower-cased (HTTP/2 and Envoy's form).
fn header_operations(ops: Option<istio::HeaderOperations>) -> mesh::config::routing::HeaderOperations {
    let ops = ops.unwrap_or_default();
    let lower = |map: std::collections::BTreeMap<String, String>| {
        map.into_iter().map(|(name, value)| (name.to_ascii_lowercase(), value)).collect()
    };
    mesh::config::routing::HeaderOperations {
        set: lower(ops.set),
        add: lower(ops.add),
        remove: ops.remove.iter().map(|name| name.to_ascii_lowercase()).collect(),
    }
}

pub(super) fn port_number(number: u32) -> Result<u16, String> {
    u16::try_from(number).ok().filter(|p| *p != 0).ok_or_else(|| format!("port {number} is out of range"))
}

fn istio_match(m: &istio::HttpMatchRequest) -> Result<RequestMatch, String> {
    refuse_unsupported("match", &m.unsupported())?;
    let convert = |map: &std::collections::BTreeMap<String, istio::StringMatch>, lower: bool| {
        map.iter()
            .map(|(k, v)| Ok((if lower { k.to_ascii_lowercase() } else { k.clone() }, istio_string(v)?)))
            .collect::<Result<_, String>>()
    };
    Ok(RequestMatch {
        path: m.uri.as_ref().map(istio_string).transpose()?,
        method: m.method.as_ref().map(istio_string).transpose()?,
        headers: convert(&m.headers, true)?,
        query_params: convert(&m.query_params, false)?,
        port: m.port.map(port_number).transpose()?,
    })
}

fn istio_string(m: &istio::StringMatch) -> Result<StringMatch, String> {
    let converted = match (&m.exact, &m.prefix, &m.regex) {
        (Some(v), None, None) => StringMatch::Exact(v.clone()),
        (None, Some(v), None) => StringMatch::Prefix(v.clone()),
        (None, None, Some(v)) => StringMatch::Regex(v.clone()),
        _ => return Err("a string match needs exactly one of exact, prefix and regex".into()),
    };
    Ok(converted)
}

fn istio_retries(r: &istio::HttpRetry) -> Result<RetryPolicy, String> {
    let attempts = u32::try_from(r.attempts).map_err(|_| format!("retries.attempts {} is negative", r.attempts))?;
    let retry_on = r.retry_on.iter().flat_map(|s| s.split(',')).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    Ok(RetryPolicy {
        attempts,
        per_try_timeout: duration("retries.perTryTimeout", r.per_try_timeout.as_ref())?,
        retry_on: retry_on.collect(),
        backoff: None,
    })
}

/// Istio's percentage is a double in 0..=100; absent means every request.
pub(super) fn ppm(percent: Option<&istio::Percent>) -> Result<u32, String> {
    let value = percent.map_or(100.0, |p| p.value);
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("percentage {value} is not between 0 and 100"));
    }
    // In range, so the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok((value * f64::from(PARTS_PER_MILLION) / 100.0).round() as u32)
}

fn istio_fault(f: &istio::HttpFaultInjection) -> Result<FaultInjection, String> {
    let delay = f
        .delay
        .as_ref()
        .map(|d| {
            let delay = routing::parse_duration(&d.fixed_delay).map_err(|e| format!("fault.delay.fixedDelay: {e}"))?;
            // The deprecated integer `percent` counts only without `percentage`, as in Istio.
            let deprecated = d.percent.map(|p| istio::Percent { value: f64::from(p) });
            let percentage = d.percentage.as_ref().or(deprecated.as_ref());
            Ok::<_, String>(FaultDelay { delay, ppm: ppm(percentage)? })
        })
        .transpose()?;
    let abort = f
        .abort
        .as_ref()
        .map(|a| {
            let http_status = u16::try_from(a.http_status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| format!("fault.abort.httpStatus {} is not an HTTP status", a.http_status))?;
            Ok::<_, String>(FaultAbort { http_status, ppm: ppm(a.percentage.as_ref())? })
        })
        .transpose()?;
    Ok(FaultInjection { delay, abort })
}

/// The label that says what traffic a waypoint takes.
const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";

/// A Gateway of class `istio-waypoint` with an HBONE listener on 15008;
/// Gateways of other classes are not the mesh's.
pub fn gateway(object: &gateway_api::apis::standard::gateways::Gateway, domain: &str) -> Translated<Waypoint> {
    let (namespace, name) = name_of(&object.metadata)?;
    if object.spec.gateway_class_name != WAYPOINT_GATEWAY_CLASS {
        return Ok(None);
    }
    if !object.spec.listeners.iter().any(|l| l.protocol == "HBONE" && l.port == 15008) {
        return Err("a waypoint Gateway needs a listener with protocol HBONE on port 15008".into());
    }
    let labels = object.metadata.labels.clone().unwrap_or_default();
    let traffic_type = labels.get(WAYPOINT_FOR_LABEL).cloned().unwrap_or_else(|| "service".into());
    if !["service", "workload", "all", "none"].contains(&traffic_type.as_str()) {
        return Err(format!("label {WAYPOINT_FOR_LABEL}={traffic_type:?} is not service, workload, all or none"));
    }
    let hostname = qualify(&name, &namespace, domain);
    Ok(Some(Waypoint { name, namespace, hostname, traffic_type }))
}
