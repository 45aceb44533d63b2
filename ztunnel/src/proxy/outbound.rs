//! Outbound: connections that enrolled local pods open, handed over by the
//! `pod_ingress` eBPF program. The accepted socket's local address is the
//! client's original destination.
//!
//! Phases, in order: accept → resolve (service VIP → endpoint; refuse our
//! own ports) → connect (as the client pod where the reply path allows) →
//! copy both ways → access log.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Instant;

use mesh::config::Snapshot;
use mesh::drain::Drain;
use mesh::http_server::BindError;
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument as _, debug, info, info_span};

use super::{ProxyContext, ProxyError, socket};
use crate::metrics::ConnectionMetrics;

/// Copy buffer per direction. Large enough that a bulk transfer moves in
/// few syscalls; small enough for thousands of concurrent connections.
const COPY_BUFFER: usize = 64 * 1024;

#[derive(Debug)]
pub struct Outbound {
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
}

impl Outbound {
    pub fn new(addr: SocketAddr, ctx: Arc<ProxyContext>) -> Result<Self, BindError> {
        let listener =
            socket::transparent_listener(addr).map_err(|source| BindError { name: "outbound", addr, source })?;
        Ok(Self { listener, ctx })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The listening socket, for capture to register in its sockmap.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    pub async fn run(self, drain: Drain) {
        info!(listener = "outbound", address = %self.address(), "listening");
        loop {
            let accepted = tokio::select! {
                () = drain.signaled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    drain.spawn(handle(self.ctx.clone(), stream, peer));
                }
                // Out of file descriptors and the like: the connection is
                // lost, the listener is not.
                Err(error) => debug!(listener = "outbound", %error, "accept failed"),
            }
        }
    }
}

/// Where a connection goes and as whom.
#[derive(Debug, Default)]
struct Route {
    upstream: Option<SocketAddr>,
    /// The address to connect from; `None` for the node's own.
    source: Option<IpAddr>,
    src_workload: Option<String>,
    dst_workload: Option<String>,
    dst_service: Option<String>,
}

async fn handle(ctx: Arc<ProxyContext>, downstream: TcpStream, peer: SocketAddr) {
    let id = ctx.connection_id();
    let Ok(orig_dst) = downstream.local_addr() else { return };
    let span = info_span!("outbound", id, src = %peer, dst = %orig_dst);
    async move {
        let started = Instant::now();
        let mut metrics = ConnectionMetrics::open("outbound");
        let current = ctx.state.current();
        let mut route = Route::default();
        let result = match resolve(&ctx, &current.snapshot, peer, orig_dst, &mut route) {
            Ok(()) => forward(&ctx, downstream, &route).await,
            Err(error) => {
                socket::reset_on_close(&downstream);
                Err(error)
            }
        };
        let (sent, received) = *result.as_ref().unwrap_or(&(0, 0));
        metrics.record_bytes(sent, received);
        // Close the books before logging: whoever reads the access line can
        // rely on the connection no longer counting as open.
        drop(metrics);
        access_log(peer, orig_dst, &route, sent, received, started, result.err());
    }
    .instrument(span)
    .await;
}

fn resolve(
    ctx: &ProxyContext,
    snapshot: &Snapshot,
    peer: SocketAddr,
    orig_dst: SocketAddr,
    route: &mut Route,
) -> Result<(), ProxyError> {
    route.src_workload = snapshot.workload_by_ip(peer.ip()).map(|w| w.qualified_name());
    if ctx.is_own_address(orig_dst) {
        return Err(ProxyError::SelfTarget(orig_dst));
    }
    let upstream = if snapshot.is_vip(orig_dst.ip()) {
        let target = snapshot
            .service_target(orig_dst.ip(), orig_dst.port())
            .ok_or(ProxyError::UnknownServicePort { vip: orig_dst.ip(), port: orig_dst.port() })?;
        let service = format!("{}/{}", target.service.namespace, target.service.name);
        route.dst_service = Some(target.service.hostname());
        target.pick_endpoint(orig_dst.ip()).ok_or(ProxyError::NoEndpoints { service })?
    } else {
        orig_dst
    };
    let destination = snapshot.workload_by_ip(upstream.ip());
    route.dst_workload = destination.map(|w| w.qualified_name());
    // Connect as the client pod only towards pods: their replies come back
    // through a capture program (the pod's veth here, or this node's
    // underlay), which hands them to our socket. Replies from outside the
    // cluster would not, so those connections leave from the node's own
    // address, as masquerading would make them. A pod reaching itself
    // (hairpin through a service) cannot be its own source.
    if destination.is_some() && upstream.ip() != peer.ip() {
        route.source = Some(peer.ip());
    }
    route.upstream = Some(upstream);
    Ok(())
}

async fn forward(ctx: &ProxyContext, mut downstream: TcpStream, route: &Route) -> Result<(u64, u64), ProxyError> {
    let Some(upstream_addr) = route.upstream else { return Ok((0, 0)) };
    let mut upstream = match socket::connect(upstream_addr, route.source, ctx.connect_timeout).await {
        Ok(upstream) => upstream,
        Err(error) => {
            socket::reset_on_close(&downstream);
            return Err(error);
        }
    };
    let _ = downstream.set_nodelay(true);
    tokio::io::copy_bidirectional_with_sizes(&mut downstream, &mut upstream, COPY_BUFFER, COPY_BUFFER)
        .await
        .map_err(ProxyError::Copy)
}

fn access_log(
    peer: SocketAddr,
    orig_dst: SocketAddr,
    route: &Route,
    sent: u64,
    received: u64,
    started: Instant,
    error: Option<ProxyError>,
) {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let upstream = route.upstream.map_or_else(|| "-".to_owned(), |u| u.to_string());
    let (error_text, flags, fault, retryable) = match &error {
        Some(e) => (e.to_string(), e.response_flag(), format!("{:?}", e.fault()).to_lowercase(), e.retryable()),
        None => (String::new(), "-", String::new(), false),
    };
    info!(
        target: "access",
        direction = "outbound",
        src.addr = %peer,
        src.workload = %or_dash(&route.src_workload),
        dst.addr = %orig_dst,
        dst.service = %or_dash(&route.dst_service),
        dst.workload = %or_dash(&route.dst_workload),
        upstream = %upstream,
        bytes_sent = sent,
        bytes_recv = received,
        duration_ms = started.elapsed().as_millis() as u64,
        response_flags = flags,
        error = %error_text,
        error.fault = %fault,
        error.retryable = retryable,
        "connection complete"
    );
}
