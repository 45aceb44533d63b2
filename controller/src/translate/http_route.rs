//! Gateway API HTTPRoute to routes, the GAMMA way: a route whose parentRef
//! is a Service routes that service's requests (at its waypoint). Routes
//! attached only to Gateways are for ingress, not the mesh.

use gateway_api::apis::experimental::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs, HttpRouteRulesFilters,
    HttpRouteRulesFiltersRequestMirror, HttpRouteRulesFiltersRequestRedirect,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParamsType,
    HttpRouteRulesRetry,
};
use mesh::config::routing::{
    HeaderOperations, HttpRoutes, Mirror, PARTS_PER_MILLION, PathRewrite, Redirect, RedirectPort, RequestMatch,
    RetryPolicy, Rewrite, RouteRule, StringMatch, WeightedDestination,
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
    let hosts =
        parents.iter().map(|p| qualify(&p.name, p.namespace.as_deref().unwrap_or(&namespace), domain)).collect();
    Ok(Some(HttpRoutes {
        origin: format!("HTTPRoute {namespace}/{name}"),
        hosts,
        rules: rules_of(object, &namespace, port, domain)?,
    }))
}

/// The route's rules in the Gateway API's precedence: each match becomes
/// a rule of its own, sorted (stably) by exact path, longest path prefix,
/// method, most header matches, most query matches; ties keep list order.
fn rules_of(route: &HttpRoute, namespace: &str, port: Option<u16>, domain: &str) -> Result<Vec<RouteRule>, String> {
    let mut rules = Vec::new();
    for (index, rule) in route.spec.rules.iter().flatten().enumerate() {
        let translated = rule_of(rule, namespace, port, domain).map_err(|e| format!("rules[{index}]: {e}"))?;
        let matches = translated.matches.clone();
        rules.extend(matches.into_iter().map(|m| RouteRule { matches: vec![m], ..translated.clone() }));
    }
    rules.sort_by_key(|rule| std::cmp::Reverse(rule.matches.first().map(precedence)));
    Ok(rules)
}

fn precedence(m: &RequestMatch) -> (bool, usize, bool, usize, usize) {
    let (exact, prefix) = match &m.path {
        Some(StringMatch::Exact(path)) => (true, path.len()),
        Some(StringMatch::PathPrefix(path) | StringMatch::Prefix(path)) => (false, path.len()),
        _ => (false, 0),
    };
    (exact, prefix, m.method.is_some(), m.headers.len(), m.query_params.len())
}

fn rule_of(rule: &HttpRouteRules, namespace: &str, port: Option<u16>, domain: &str) -> Result<RouteRule, String> {
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
    let mut translated = RouteRule {
        name: rule.name.clone(),
        matches,
        destinations,
        timeout: duration("timeouts.request", timeouts.request.as_ref())?,
        retries: retry_of(rule.retry.as_ref(), per_try_timeout)?,
        ..Default::default()
    };
    for filter in rule.filters.iter().flatten() {
        apply_filter(&mut translated, filter, namespace, domain)?;
    }
    if translated.redirect.is_some() {
        translated.destinations.clear();
    }
    if let Some(PathRewrite::Prefix(_)) = translated.rewrite.as_ref().and_then(|r| r.path.as_ref()) {
        let all_prefix = translated.matches.iter().all(|m| matches!(m.path, Some(StringMatch::PathPrefix(_))));
        if !all_prefix {
            return Err("ReplacePrefixMatch needs every match of its rule to be a PathPrefix match".into());
        }
    }
    translated.check()?;
    Ok(translated)
}

/// The Gateway API's `retry`: `codes` are retried, and connection
/// failures, as Istio does; `attempts` unset is Istio's default of 2.
/// Without `retry`, a `backendRequest` timeout bounds a single try.
fn retry_of(
    retry: Option<&HttpRouteRulesRetry>,
    per_try_timeout: Option<std::time::Duration>,
) -> Result<Option<RetryPolicy>, String> {
    let Some(retry) = retry else {
        return Ok(per_try_timeout.map(|t| RetryPolicy {
            attempts: 0,
            per_try_timeout: Some(t),
            ..Default::default()
        }));
    };
    let attempts = retry.attempts.unwrap_or(2);
    let attempts = u32::try_from(attempts).map_err(|_| format!("retry.attempts {attempts} is out of range"))?;
    let mut retry_on = vec!["connect-failure".to_owned(), "refused-stream".to_owned()];
    for code in retry.codes.iter().flatten() {
        if !(400..600).contains(code) {
            return Err(format!("retry.codes: {code} is not an error status"));
        }
        retry_on.push(code.to_string());
    }
    Ok(Some(RetryPolicy {
        attempts,
        per_try_timeout,
        retry_on,
        backoff: duration("retry.backoff", retry.backoff.as_ref())?,
    }))
}

fn apply_filter(
    rule: &mut RouteRule,
    filter: &HttpRouteRulesFilters,
    namespace: &str,
    domain: &str,
) -> Result<(), String> {
    match filter.r#type {
        HttpRouteRulesFiltersType::RequestHeaderModifier => {
            let m = filter.request_header_modifier.clone().unwrap_or_default();
            rule.request_headers =
                header_operations(pairs(m.set, |h| (h.name, h.value)), pairs(m.add, |h| (h.name, h.value)), m.remove);
        }
        HttpRouteRulesFiltersType::ResponseHeaderModifier => {
            let m = filter.response_header_modifier.clone().unwrap_or_default();
            rule.response_headers =
                header_operations(pairs(m.set, |h| (h.name, h.value)), pairs(m.add, |h| (h.name, h.value)), m.remove);
        }
        HttpRouteRulesFiltersType::UrlRewrite => {
            let rewrite = filter.url_rewrite.clone().unwrap_or_default();
            let path = rewrite.path.map(|p| path_modifier(p.replace_full_path, p.replace_prefix_match)).transpose()?;
            rule.rewrite = Some(Rewrite { path, authority: rewrite.hostname });
        }
        HttpRouteRulesFiltersType::RequestRedirect => {
            rule.redirect = Some(redirect_of(filter.request_redirect.clone().unwrap_or_default())?);
        }
        HttpRouteRulesFiltersType::RequestMirror => {
            let mirror = filter.request_mirror.clone().ok_or("a RequestMirror filter needs requestMirror")?;
            rule.mirrors.push(mirror_of(mirror, namespace, domain)?);
        }
        ref other => return Err(format!("filter {other:?} is not supported by ambit")),
    }
    Ok(())
}

fn path_modifier(full: Option<String>, prefix: Option<String>) -> Result<PathRewrite, String> {
    match (full, prefix) {
        (Some(full), None) => Ok(PathRewrite::Full(full)),
        (None, Some(prefix)) => Ok(PathRewrite::Prefix(prefix)),
        _ => Err("a path modifier needs exactly one of replaceFullPath and replacePrefixMatch".into()),
    }
}

/// The Gateway API's port rule: the filter's port, else the scheme's own
/// when a scheme is set, else the port the request came in on.
fn redirect_of(redirect: HttpRouteRulesFiltersRequestRedirect) -> Result<Redirect, String> {
    let scheme = redirect.scheme.map(|s| match s {
        HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".to_owned(),
        HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".to_owned(),
    });
    let port = match (redirect.port, &scheme) {
        (Some(port), _) => RedirectPort::Exact(super::routing::port_number(u32::try_from(port).unwrap_or(0))?),
        (None, Some(_)) => RedirectPort::SchemeDefault,
        (None, None) => RedirectPort::Request,
    };
    let status = redirect.status_code.unwrap_or(302);
    Ok(Redirect {
        scheme,
        host: redirect.hostname,
        port,
        path: redirect.path.map(|p| path_modifier(p.replace_full_path, p.replace_prefix_match)).transpose()?,
        status: u16::try_from(status).map_err(|_| format!("requestRedirect.statusCode {status} is not a redirect"))?,
    })
}

fn mirror_of(mirror: HttpRouteRulesFiltersRequestMirror, namespace: &str, domain: &str) -> Result<Mirror, String> {
    let b = mirror.backend_ref;
    let backend =
        backend_of_ref(&b.name, b.group.as_ref(), b.kind.as_ref(), b.namespace.as_deref(), b.port, namespace, domain)?;
    let ppm = match (mirror.percent, mirror.fraction) {
        (None, None) => PARTS_PER_MILLION,
        (Some(percent), None) => fraction_ppm(i64::from(percent), 100)?,
        (None, Some(f)) => fraction_ppm(i64::from(f.numerator), i64::from(f.denominator.unwrap_or(100)))?,
        (Some(_), Some(_)) => return Err("requestMirror: only one of percent and fraction may be set".into()),
    };
    Ok(Mirror { host: backend.host, subset: None, port: backend.port, ppm })
}

fn fraction_ppm(numerator: i64, denominator: i64) -> Result<u32, String> {
    if denominator <= 0 || numerator < 0 || numerator > denominator {
        return Err(format!("requestMirror: {numerator}/{denominator} is not a fraction of at most 1"));
    }
    u32::try_from(numerator * i64::from(PARTS_PER_MILLION) / denominator).map_err(|e| e.to_string())
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
    if let Some(filter) = b.filters.iter().flatten().next() {
        return Err(format!("backendRef {}: filter {:?} is not supported by ambit", b.name, filter.r#type));
    }
    let destination =
        backend_of_ref(&b.name, b.group.as_ref(), b.kind.as_ref(), b.namespace.as_deref(), b.port, namespace, domain)?;
    let weight = b.weight.unwrap_or(1);
    let weight = u32::try_from(weight).map_err(|_| format!("backendRef {}: weight {weight} is negative", b.name))?;
    Ok(WeightedDestination { weight, ..destination })
}

/// A Service backend in the route's namespace, with its port.
fn backend_of_ref(
    name: &str,
    group: Option<&String>,
    kind: Option<&String>,
    backend_namespace: Option<&str>,
    port: Option<i32>,
    namespace: &str,
    domain: &str,
) -> Result<WeightedDestination, String> {
    let service_kind = Some("Service".to_owned());
    if !is_service(group, kind.or(service_kind.as_ref())) {
        return Err(format!("backendRef {name}: only Service backends are supported"));
    }
    if backend_namespace.is_some_and(|n| n != namespace) {
        return Err(format!(
            "backendRef {name}: a backend in another namespace needs a ReferenceGrant, which ambit does not read"
        ));
    }
    let port = port.ok_or_else(|| format!("backendRef {name}: a Service backend needs a port"))?;
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("backendRef port {port} is out of range"))?;
    Ok(WeightedDestination { host: qualify(name, namespace, domain), port: Some(port), ..Default::default() })
}
