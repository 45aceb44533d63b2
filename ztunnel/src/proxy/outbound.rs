//! Outbound: connections that enrolled local pods open, handed over by the
//! `pod_ingress` eBPF program. The accepted socket's local address is the
//! client's original destination.
//!
//! Phases, in order:
//! 1. accept;
//! 2. resolve: refuse our own ports; a service (or pod) whose waypoint takes
//!    its traffic goes to one of the waypoint's pods, the original
//!    destination as the CONNECT authority (Istio ambient's rule); else a
//!    service VIP becomes one endpoint;
//! 3. choose the way: HBONE (as the client's identity, to the destination
//!    pod's IP on 15008) when the destination is enrolled or a waypoint,
//!    plaintext otherwise (as the client pod where replies can come back,
//!    else as the node);
//! 4. copy both ways;
//! 5. log.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use mesh::config::routing::{waypoint_of, waypoint_of_workload};
use mesh::config::{Snapshot, Workload};
use mesh::drain::Drain;
use mesh::hbone::HboneError;
use mesh::hbone::headers::{PeerInfo, connect_headers};
use mesh::hbone::pool::PoolKey;
use mesh::http_server::BindError;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info_span};

use super::listener::Listener;
use super::record::{Record, peer_labels};
use super::relay::{RelayEnd, relay, relay_opening};
use super::{ProxyContext, ProxyError, hbone_dial, socket};
use crate::metrics::{ConnectionLabels, ServiceLabels, service_labels};

#[derive(Debug)]
pub struct Outbound {
    listener: Listener,
    ctx: Arc<ProxyContext>,
}

impl Outbound {
    pub fn new(addr: SocketAddr, ctx: Arc<ProxyContext>) -> Result<Self, BindError> {
        Ok(Self { listener: Listener::bind("outbound", addr, &ctx)?, ctx })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener.address()
    }

    /// The listening socket, for capture to register in its sockmap.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.listener.socket()
    }

    pub async fn run(self, drain: Drain) {
        let ctx = self.ctx;
        self.listener.serve(drain, |stream, peer| handle(ctx.clone(), stream, peer)).await;
    }
}

/// Where a connection goes.
#[derive(Debug)]
enum Upstream {
    /// Plain TCP, from `source` (`None`: the node's own address).
    Plain { addr: SocketAddr, source: Option<IpAddr> },
    /// An HBONE stream over a pooled connection.
    Hbone(Box<HboneRoute>),
}

/// An HBONE stream to `authority` over a pooled connection for `key`,
/// announcing the client as `peer`.
#[derive(Debug)]
struct HboneRoute {
    key: PoolKey,
    authority: SocketAddr,
    peer: PeerInfo,
}

pub(super) async fn handle(ctx: Arc<ProxyContext>, downstream: TcpStream, peer: SocketAddr) {
    let Ok(orig_dst) = downstream.local_addr() else { return };
    let span = info_span!("outbound", id = ctx.connection_id(), src = %peer, dst = %orig_dst);
    async move {
        let mut record = Record::new("outbound", peer, orig_dst);
        // Resolved under the current config, which is then let go: a
        // connection that lives for hours must not pin its version.
        let resolved = resolve(&ctx, &ctx.state.current().snapshot, peer, orig_dst, &mut record);
        let result = match resolved {
            Ok(upstream) => forward(&ctx, downstream, upstream, &record).await,
            Err(error) => {
                socket::reset_on_close(&downstream);
                Err(error)
            }
        };
        record.finish(result);
    }
    .instrument(span)
    .await;
}

fn resolve(
    ctx: &ProxyContext,
    snapshot: &Snapshot,
    peer: SocketAddr,
    orig_dst: SocketAddr,
    record: &mut Record,
) -> Result<Upstream, ProxyError> {
    // Only this node's pods can be captured here; a workload elsewhere with
    // this address is not who is calling.
    let source = snapshot.workload_by_ip(peer.ip()).filter(|w| w.node == ctx.node);
    record.src_workload = source.map(Workload::qualified_name);
    record.src_identity = source.map(|w| w.identity(&ctx.trust_domain));
    if ctx.is_own_address(orig_dst) {
        return Err(ProxyError::SelfTarget(orig_dst));
    }
    if let Some(route) = via_waypoint(ctx, snapshot, source, peer, orig_dst, record)? {
        return Ok(Upstream::Hbone(route));
    }
    let (upstream_addr, service) = resolve_vip(snapshot, orig_dst, record)?;
    record.upstream = Some(upstream_addr);
    let destination = snapshot.workload_by_ip(upstream_addr.ip());
    record.dst_workload = destination.map(Workload::qualified_name);
    let enrolled = destination.filter(|w| snapshot.is_enrolled(w));
    if let Some(dst) = enrolled {
        let src = source.ok_or(ProxyError::UnknownSource(peer.ip()))?;
        let key = PoolKey {
            src: src.identity(&ctx.trust_domain),
            dst: dst.identity(&ctx.trust_domain),
            src_ip: peer.ip(),
            next_hop: hbone_dial::next_hop(upstream_addr.ip()),
        };
        record.dst_identity = Some(key.dst.clone());
        record.open_metrics(labels(ctx, source, enrolled, record, service, "mutual_tls"));
        return Ok(Upstream::Hbone(Box::new(HboneRoute {
            key,
            authority: upstream_addr,
            peer: PeerInfo::of_workload(src, &ctx.cluster_id),
        })));
    }
    record.open_metrics(labels(ctx, source, destination, record, service, "unknown"));
    // Connect as the client pod only towards pods: their replies come back
    // through a capture program (the pod's veth here, or this node's
    // underlay), which hands them to our socket. Replies from outside the
    // cluster would not, so those connections leave from the node's own
    // address, as masquerading would make them. A pod reaching itself
    // (hairpin through a service) cannot be its own source.
    let spoof = destination.is_some() && upstream_addr.ip() != peer.ip();
    Ok(Upstream::Plain { addr: upstream_addr, source: spoof.then_some(peer.ip()) })
}

/// The way through a waypoint, when one takes this traffic: a service VIP
/// whose waypoint takes service traffic, or an enrolled pod whose waypoint
/// takes workload traffic. The tunnel goes to one of the waypoint's pods,
/// with the original destination as the authority.
fn via_waypoint(
    ctx: &ProxyContext,
    snapshot: &Snapshot,
    source: Option<&Workload>,
    peer: SocketAddr,
    orig_dst: SocketAddr,
    record: &mut Record,
) -> Result<Option<Box<HboneRoute>>, ProxyError> {
    let target = snapshot.service_target(orig_dst.ip(), orig_dst.port());
    let waypoint = match &target {
        Some(target) => waypoint_of(snapshot.config(), target.service).filter(|w| w.takes_service_traffic()),
        None => snapshot
            .workload_by_ip(orig_dst.ip())
            .filter(|w| snapshot.is_enrolled(w))
            .and_then(|w| waypoint_of_workload(snapshot.config(), w))
            .filter(|w| w.takes_workload_traffic()),
    };
    let Some(waypoint) = waypoint else { return Ok(None) };
    let src = source.ok_or(ProxyError::UnknownSource(peer.ip()))?;
    let pods: Vec<(&Workload, IpAddr)> = snapshot
        .config()
        .workloads
        .iter()
        .filter(|w| waypoint.has_pod(w))
        .filter_map(|w| w.ips.iter().find(|ip| ip.is_ipv4() == orig_dst.is_ipv4()).map(|ip| (w, *ip)))
        .collect();
    let Some(&(pod, ip)) = pods.get(rand::random_range(0..pods.len().max(1))) else {
        return Err(ProxyError::NoEndpoints { service: waypoint.hostname.clone() });
    };
    let service = target.map(|t| {
        record.dst_service = Some(t.service.hostname());
        service_labels(t.service)
    });
    let key = PoolKey {
        src: src.identity(&ctx.trust_domain),
        dst: pod.identity(&ctx.trust_domain),
        src_ip: peer.ip(),
        next_hop: hbone_dial::next_hop(ip),
    };
    record.upstream = Some(key.next_hop);
    record.dst_workload = Some(pod.qualified_name());
    record.dst_identity = Some(key.dst.clone());
    record.open_metrics(labels(ctx, source, Some(pod), record, service, "mutual_tls"));
    let peer_info = PeerInfo::of_workload(src, &ctx.cluster_id);
    Ok(Some(Box::new(HboneRoute { key, authority: orig_dst, peer: peer_info })))
}

/// A service VIP's port becomes one of its endpoints, and the record names the
/// service; any other destination stays as it is.
fn resolve_vip(
    snapshot: &Snapshot,
    orig_dst: SocketAddr,
    record: &mut Record,
) -> Result<(SocketAddr, Option<ServiceLabels>), ProxyError> {
    if !snapshot.is_vip(orig_dst.ip()) {
        return Ok((orig_dst, None));
    }
    let target = snapshot
        .service_target(orig_dst.ip(), orig_dst.port())
        .ok_or(ProxyError::UnknownServicePort { vip: orig_dst.ip(), port: orig_dst.port() })?;
    let s = target.service;
    record.dst_service = Some(s.hostname());
    let endpoint = target
        .pick_endpoint(orig_dst.ip())
        .ok_or_else(|| ProxyError::NoEndpoints { service: format!("{}/{}", s.namespace, s.name) })?;
    Ok((endpoint, Some(service_labels(s))))
}

fn labels(
    ctx: &ProxyContext,
    source: Option<&Workload>,
    destination: Option<&Workload>,
    record: &Record,
    service: Option<ServiceLabels>,
    security_policy: &'static str,
) -> ConnectionLabels {
    ConnectionLabels {
        reporter: "source",
        source: peer_labels(source, record.src_identity.as_ref(), &ctx.cluster_id),
        destination: peer_labels(destination, record.dst_identity.as_ref(), &ctx.cluster_id),
        service,
        security_policy,
    }
}

async fn forward(
    ctx: &ProxyContext,
    mut downstream: TcpStream,
    upstream: Upstream,
    record: &Record,
) -> Result<(), ProxyError> {
    let counters = record.byte_counters();
    let never = CancellationToken::new();
    let end = match upstream {
        Upstream::Plain { addr, source } => {
            let mut stream = match socket::connect(addr, source, ctx.connect_timeout, &ctx.tcp).await {
                Ok(stream) => stream,
                Err(error) => {
                    socket::reset_on_close(&downstream);
                    return Err(error);
                }
            };
            relay(&mut downstream, &mut stream, &record.totals, &counters, &never).await
        }
        Upstream::Hbone(route) => {
            let HboneRoute { key, authority, peer } = *route;
            let headers = connect_headers(record.src, &peer);
            let pending = match ctx.pool.open(&key, authority, headers).await {
                Ok(pending) => pending,
                Err(error) => {
                    socket::reset_on_close(&downstream);
                    return Err(ProxyError::from_hbone(authority, error));
                }
            };
            match relay_opening(&mut downstream, pending, &record.totals, &counters).await {
                RelayEnd::Refused(status) => {
                    socket::reset_on_close(&downstream);
                    return Err(ProxyError::from_hbone(authority, HboneError::Status(status)));
                }
                end => end,
            }
        }
    };
    match end {
        RelayEnd::Done => Ok(()),
        RelayEnd::Failed(error) => Err(ProxyError::Copy(error)),
        RelayEnd::Cancelled | RelayEnd::Refused(_) => Err(ProxyError::Revoked),
    }
}
