//! Opaque TCP through the waypoint: what detection could not read as HTTP
//! still gets the waypoint's L4 policy (L7 rules fail closed), is balanced
//! over the service's endpoints and tunnelled on, byte for byte. Logged and
//! counted with Istio's TCP metrics (`reporter="waypoint"`).

use std::sync::Arc;

use mesh::hbone::H2Stream;
use tracing::info;

use super::balance::{self, Destination};
use super::detect::Prefixed;
use super::{Context, Downstream, Target, authorize};
use crate::metrics::{TCP_CLOSED, TCP_OPENED, TCP_RECEIVED, TCP_SENT};

pub async fn forward(ctx: &Arc<Context>, downstream: &Downstream, mut io: Prefixed<H2Stream>) {
    let table = ctx.state.current();
    let flag = |flag: &'static str| log(downstream, None, flag, (0, 0));
    if authorize::check(&table, ctx, downstream, None).is_err() {
        return flag("RBAC");
    }
    let host = match &downstream.target {
        Target::Service { hostname, .. } => hostname.as_str(),
        Target::Workload { .. } => "",
    };
    let destination = Destination { host, subset: None, port: None };
    let trust_domain = &ctx.identity.trust_domain;
    let Ok(endpoint) = balance::pick(&table, &ctx.balancers, &downstream.target, &destination, trust_domain) else {
        return flag("UH");
    };
    drop(table);
    let _in_flight = ctx.balancers.start(endpoint.addr.ip());
    let Ok(mut upstream) = ctx.upstreams.tunnel(&endpoint, downstream.client_ip).await else {
        return flag("UF");
    };
    let labels = [("reporter", "waypoint".to_owned()), ("destination_service", downstream.target.name())];
    metrics::counter!(TCP_OPENED, &labels).increment(1);
    let copied = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
    let (received, sent) = copied.as_ref().map_or((0, 0), |(r, s)| (*r, *s));
    metrics::counter!(TCP_RECEIVED, &labels).increment(received);
    metrics::counter!(TCP_SENT, &labels).increment(sent);
    metrics::counter!(TCP_CLOSED, &labels).increment(1);
    log(downstream, Some(endpoint.addr), if copied.is_ok() { "-" } else { "DC" }, (received, sent));
}

fn log(downstream: &Downstream, endpoint: Option<std::net::SocketAddr>, flags: &str, (received, sent): (u64, u64)) {
    info!(
        target: "access",
        protocol = "tcp",
        src.addr = %downstream.client_ip,
        src.identity = %downstream.identity,
        dst.service = %downstream.target.name(),
        dst.addr = endpoint.map(|e| e.to_string()),
        response_flags = flags,
        bytes_received = received,
        bytes_sent = sent,
        "connection"
    );
}
