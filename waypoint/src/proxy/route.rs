//! Phase 4, route: the service's route objects are tried in order, and in
//! each its rules in order; the first rule with a matching `match` (or none
//! at all) wins. A service without routes goes to itself, as in Istio; a
//! service with routes that all miss answers 404 (`NR`). Then the rule's
//! faults roll their dice, and a destination is drawn by weight.

use std::time::Duration;

use http::request::Parts;
use mesh::config::routing::{PARTS_PER_MILLION, RequestMatch, RouteRule, WeightedDestination};

use super::accept::Target;
use super::respond::Failure;
use crate::state::RouteTable;

/// What routing decided for a request.
#[derive(Debug)]
pub enum Selected<'a> {
    /// A rule of the route object named `origin`, and the match that
    /// selected it (none when the rule has no matches).
    Rule { rule: &'a RouteRule, origin: &'a str, matched: Option<&'a RequestMatch> },
    /// No routes: the service (or pod) the client asked for.
    Direct,
}

pub fn select<'a>(table: &'a RouteTable, target: &Target, request: &Parts) -> Result<Selected<'a>, Failure> {
    let Target::Service { hostname, port, .. } = target else { return Ok(Selected::Direct) };
    let mut any = false;
    for routes in table.routes_for(hostname) {
        any = true;
        for rule in &routes.rules {
            if rule.matches.is_empty() {
                return Ok(Selected::Rule { rule, origin: &routes.origin, matched: None });
            }
            if let Some(matched) = rule.matches.iter().find(|m| request_matches(table, m, request, *port)) {
                return Ok(Selected::Rule { rule, origin: &routes.origin, matched: Some(matched) });
            }
        }
    }
    if any { Err(Failure::NoRoute) } else { Ok(Selected::Direct) }
}

fn request_matches(table: &RouteTable, m: &RequestMatch, request: &Parts, port: u16) -> bool {
    if m.port.is_some_and(|p| p != port) {
        return false;
    }
    if m.path.as_ref().is_some_and(|p| !table.matches(p, request.uri.path())) {
        return false;
    }
    if m.method.as_ref().is_some_and(|p| !table.matches(p, request.method.as_str())) {
        return false;
    }
    let header_ok = |(name, pattern)| {
        let value = request.headers.get(name as &String).and_then(|v| v.to_str().ok());
        value.is_some_and(|v| table.matches(pattern, v))
    };
    if !m.headers.iter().all(header_ok) {
        return false;
    }
    let query = request.uri.query().unwrap_or("");
    m.query_params.iter().all(|(name, pattern)| query_value(query, name).is_some_and(|v| table.matches(pattern, v)))
}

/// The first value of `name` in a query string (not decoded, as Envoy
/// matches it).
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Draws a destination by weight; weight 0 is never drawn.
pub fn pick_destination(rule: &RouteRule) -> Result<&WeightedDestination, Failure> {
    let total: u64 = rule.destinations.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return Err(Failure::NoDestinations);
    }
    let mut roll = rand::random_range(0..total);
    for destination in &rule.destinations {
        let weight = u64::from(destination.weight);
        if roll < weight {
            return Ok(destination);
        }
        roll -= weight;
    }
    Err(Failure::NoDestinations)
}

/// The rule's injected delay, if this request draws it.
pub fn fault_delay(rule: &RouteRule) -> Option<Duration> {
    let delay = rule.fault.as_ref()?.delay.as_ref()?;
    hit(delay.ppm).then_some(delay.delay)
}

/// The rule's injected abort status, if this request draws it.
pub fn fault_abort(rule: &RouteRule) -> Option<u16> {
    let abort = rule.fault.as_ref()?.abort.as_ref()?;
    hit(abort.ppm).then_some(abort.http_status)
}

pub fn hit(ppm: u32) -> bool {
    ppm > 0 && rand::random_range(0..PARTS_PER_MILLION) < ppm
}

#[cfg(test)]
mod tests {
    use mesh::config::routing::{FaultAbort, FaultInjection, StringMatch};

    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::get(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).map(|r| r.into_parts().0).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn matches_on_every_condition_set() {
        let table = RouteTable::default();
        let m = RequestMatch {
            path: Some(StringMatch::Prefix("/api".into())),
            headers: [("end-user".to_owned(), StringMatch::Exact("jason".into()))].into(),
            query_params: [("v".to_owned(), StringMatch::Exact("2".into()))].into(),
            ..Default::default()
        };
        assert!(request_matches(&table, &m, &parts("/api/x?v=2", &[("end-user", "jason")]), 80));
        assert!(!request_matches(&table, &m, &parts("/api/x?v=2", &[("end-user", "bob")]), 80));
        assert!(!request_matches(&table, &m, &parts("/api/x?v=2", &[]), 80), "an absent header does not match");
        assert!(!request_matches(&table, &m, &parts("/api/x?v=3", &[("end-user", "jason")]), 80));
        assert!(!request_matches(&table, &m, &parts("/web", &[("end-user", "jason")]), 80));
        let on_port = RequestMatch { port: Some(9080), ..Default::default() };
        assert!(!request_matches(&table, &on_port, &parts("/", &[]), 80));
    }

    #[test]
    fn weights_split_and_zero_never_wins() {
        let destination = |host: &str, weight| WeightedDestination { host: host.into(), weight, ..Default::default() };
        let rule = RouteRule {
            destinations: vec![destination("a", 90), destination("b", 10), destination("c", 0)],
            ..Default::default()
        };
        let mut counts = std::collections::HashMap::<String, u32>::new();
        for _ in 0..10_000 {
            *counts.entry(pick_destination(&rule).map(|d| d.host.clone()).unwrap_or_default()).or_default() += 1;
        }
        assert!((8_700..=9_300).contains(&counts["a"]), "{counts:?}");
        assert!(!counts.contains_key("c"), "{counts:?}");
        assert_eq!(pick_destination(&RouteRule::default()).err(), Some(Failure::NoDestinations));
    }

    #[test]
    fn faults_hit_their_share() {
        let abort = |ppm| RouteRule {
            fault: Some(FaultInjection { abort: Some(FaultAbort { http_status: 500, ppm }), delay: None }),
            ..Default::default()
        };
        assert!((0..1000).all(|_| fault_abort(&abort(PARTS_PER_MILLION)) == Some(500)));
        assert!((0..1000).all(|_| fault_abort(&abort(0)).is_none()));
        let half = (0..10_000).filter(|_| fault_abort(&abort(PARTS_PER_MILLION / 2)).is_some()).count();
        assert!((4_700..=5_300).contains(&half), "{half}");
    }
}
