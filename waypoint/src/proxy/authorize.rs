//! Phase 3, authorize: AuthorizationPolicies bound to this waypoint's
//! Gateway, or to the Service a request is for, by `targetRefs`, with
//! Istio's order (DENY, then ALLOW). A denied request gets Envoy's answer:
//! 403, `RBAC: access denied`, flag `RBAC`. Opaque TCP is decided on the
//! connection's attributes alone, failing closed.

use http::request::Parts;
use mesh::authz::{ConnectionInfo, RequestInfo, WaypointTargets};

use super::accept::Target;
use super::respond::Failure;
use super::{Context, Downstream};
use crate::state::RouteTable;

/// The policies' decision on one request (`parts`), or on the connection
/// alone when `parts` is `None`.
pub fn check(table: &RouteTable, ctx: &Context, downstream: &Downstream, parts: Option<&Parts>) -> Result<(), Failure> {
    let (dst_ip, dst_port, service) = match &downstream.target {
        Target::Service { name, namespace, port, .. } => (None, *port, Some((namespace.as_str(), name.as_str()))),
        Target::Workload { addr } => (Some(addr.ip()), addr.port(), None),
    };
    let connection = ConnectionInfo {
        src_identity: Some(&downstream.identity),
        src_ip: downstream.client_ip,
        dst_ip: dst_ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        dst_port,
    };
    let host = parts.map(|p| {
        p.uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| p.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
    });
    let request = parts.map(|p| RequestInfo {
        method: p.method.as_str(),
        path: p.uri.path(),
        host: host.flatten().unwrap_or_default(),
        headers: &p.headers,
    });
    let targets = WaypointTargets { gateway: (&ctx.gateway.0, &ctx.gateway.1), service };
    let decision = table.snapshot.authorizer().authorize_at_waypoint(targets, &connection, request.as_ref());
    if decision.is_allowed() { Ok(()) } else { Err(Failure::Denied(decision.to_string())) }
}
