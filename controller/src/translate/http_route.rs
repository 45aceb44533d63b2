//! Gateway API HTTPRoute to routes, the GAMMA way: a route whose parentRef
//! is a Service routes that service's requests (at its waypoint). Routes
//! attached only to Gateways are for ingress, not the mesh.

use gateway_api::apis::standard::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs, HttpRouteRulesFiltersType,
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType,
};
use mesh::config::routing::{
    HeaderOperations, HttpRoutes, RequestMatch, RetryPolicy, RouteRule, StringMatch, WeightedDestination,
};

use super::routing::{Translated, duration, name_of, qualify};

/// A parentRef or backendRef to a core Service.
fn is_service(group: Option<&String>, kind: Option<&String>) -> bool {
    group.is_none_or(|g| g.is_empty() || g == "core") && kind.is_some_and(|k| k == "Service")
}

/// The Service parents of a route (for translation and for status).
pub fn service_parents(route: &HttpRoute) -> Vec<HttpRouteParentRefs> {
    let parents = route.spec.parent_refs.iter().flatten();
    parents.filter(|p| is_service(p.group.as_ref(), p.kind.as_ref())).cloned().collect()
}

pub fn http_route(object: &HttpRoute, domain: &str) -> Translated<HttpRoutes> {
    let (namespace, name) = name_of(&object.metadata)?;
    let parents = service_parents(object);
    if parents.is_empty() {
        return Ok(None);
    }
    let mut ports: Vec<Option<i32>> = parents.iter().map(|p| p.port).collect();
    ports.dedup();
    let [port] = ports[..] else {
        return Err("parentRefs to Services on different ports are not supported; use one route per port".into());
    };
    let port = port.map(|p| u16::try_from(p).map_err(|_| format!("parentRef port {p} is out of range"))).transpose()?;
    let rules = object.spec.rules.iter().flatten().enumerate();
    let rules = rules.map(|(i, rule)| rule_of(rule, &namespace, port, domain).map_err(|e| format!("rules[{i}]: {e}")));
    let hosts =
        parents.iter().map(|p| qualify(&p.name, p.namespace.as_deref().unwrap_or(&namespace), domain)).collect();
    Ok(Some(HttpRoutes {
        origin: format!("HTTPRoute {namespace}/{name}"),
        hosts,
        rules: rules.collect::<Result<_, _>>()?,
    }))
}

fn rule_of(rule: &HttpRouteRules, namespace: &str, port: Option<u16>, domain: &str) -> Result<RouteRule, String> {
    let (mut request_headers, mut response_headers) = (HeaderOperations::default(), HeaderOperations::default());
    for filter in rule.filters.iter().flatten() {
        match filter.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                let m = filter.request_header_modifier.clone().unwrap_or_default();
                request_headers = header_operations(
                    pairs(m.set, |h| (h.name, h.value)),
                    pairs(m.add, |h| (h.name, h.value)),
                    m.remove,
                );
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                let m = filter.response_header_modifier.clone().unwrap_or_default();
                response_headers = header_operations(
                    pairs(m.set, |h| (h.name, h.value)),
                    pairs(m.add, |h| (h.name, h.value)),
                    m.remove,
                );
            }
            ref other => return Err(format!("filter {other:?} is not supported by ambit")),
        }
    }
    let matches = match rule.matches.as_deref() {
        None | Some([]) => {
            vec![RequestMatch { path: Some(StringMatch::PathPrefix("/".into())), port, ..Default::default() }]
        }
        Some(matches) => matches.iter().map(|m| match_of(m, port)).collect(),
    };
    let destinations =
        rule.backend_refs.iter().flatten().map(|b| backend_of(b, namespace, domain)).collect::<Result<Vec<_>, _>>()?;
    let timeouts = rule.timeouts.clone().unwrap_or_default();
    let per_try_timeout = duration("timeouts.backendRequest", timeouts.backend_request.as_ref())?;
    let rule = RouteRule {
        name: rule.name.clone(),
        matches,
        destinations,
        timeout: duration("timeouts.request", timeouts.request.as_ref())?,
        retries: per_try_timeout.map(|t| RetryPolicy { attempts: 0, per_try_timeout: Some(t), retry_on: Vec::new() }),
        fault: None,
        request_headers,
        response_headers,
    };
    rule.check()?;
    Ok(rule)
}

/// A header modifier filter as the model's operations. Names are matched
/// case-insensitively, so they are lower-cased; the first entry of a name wins.
fn header_operations(
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
    remove: Option<Vec<String>>,
) -> HeaderOperations {
    let first_of_each = |pairs: Vec<(String, String)>| {
        let mut map = std::collections::BTreeMap::new();
        for (name, value) in pairs {
            map.entry(name.to_ascii_lowercase()).or_insert(value);
        }
        map
    };
    HeaderOperations {
        set: first_of_each(set),
        add: first_of_each(add),
        remove: remove.iter().flatten().map(|n| n.to_ascii_lowercase()).collect(),
    }
}

/// A filter's `(name, value)` list, whichever generated type holds it.
fn pairs<T>(list: Option<Vec<T>>, pair: fn(T) -> (String, String)) -> Vec<(String, String)> {
    list.into_iter().flatten().map(pair).collect()
}

fn match_of(m: &HttpRouteRulesMatches, port: Option<u16>) -> RequestMatch {
    let path = m.path.clone().unwrap_or_default();
    let value = path.value.unwrap_or_else(|| "/".into());
    let path = match path.r#type.unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix) {
        HttpRouteRulesMatchesPathType::Exact => StringMatch::Exact(value),
        HttpRouteRulesMatchesPathType::PathPrefix => StringMatch::PathPrefix(value),
        HttpRouteRulesMatchesPathType::RegularExpression => StringMatch::Regex(value),
    };
    let mut headers = std::collections::BTreeMap::new();
    for h in m.headers.iter().flatten() {
        let value = match h.r#type {
            Some(HttpRouteRulesMatchesHeadersType::RegularExpression) => StringMatch::Regex(h.value.clone()),
            _ => StringMatch::Exact(h.value.clone()),
        };
        // The first of equivalent names wins, as the Gateway API says.
        headers.entry(h.name.to_ascii_lowercase()).or_insert(value);
    }
    let mut query_params = std::collections::BTreeMap::new();
    for q in m.query_params.iter().flatten() {
        let value = match q.r#type {
            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) => StringMatch::Regex(q.value.clone()),
            _ => StringMatch::Exact(q.value.clone()),
        };
        query_params.entry(q.name.clone()).or_insert(value);
    }
    let method = m.method.as_ref().map(|method| {
        let text = serde_json::to_value(method).ok().and_then(|v| v.as_str().map(str::to_owned));
        StringMatch::Exact(text.unwrap_or_default())
    });
    RequestMatch { path: Some(path), method, headers, query_params, port }
}

fn backend_of(b: &HttpRouteRulesBackendRefs, namespace: &str, domain: &str) -> Result<WeightedDestination, String> {
    let service_kind = Some("Service".to_owned());
    if !is_service(b.group.as_ref(), b.kind.as_ref().or(service_kind.as_ref())) {
        return Err(format!("backendRef {}: only Service backends are supported", b.name));
    }
    if b.namespace.as_deref().is_some_and(|n| n != namespace) {
        return Err(format!(
            "backendRef {}: a backend in another namespace needs a ReferenceGrant, which ambit does not read",
            b.name
        ));
    }
    if let Some(filter) = b.filters.iter().flatten().next() {
        return Err(format!("backendRef {}: filter {:?} is not supported by ambit", b.name, filter.r#type));
    }
    let port = b.port.ok_or_else(|| format!("backendRef {}: a Service backend needs a port", b.name))?;
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("backendRef port {port} is out of range"))?;
    let weight = b.weight.unwrap_or(1);
    let weight = u32::try_from(weight).map_err(|_| format!("backendRef {}: weight {weight} is negative", b.name))?;
    Ok(WeightedDestination { host: qualify(&b.name, namespace, domain), subset: None, port: Some(port), weight })
}
