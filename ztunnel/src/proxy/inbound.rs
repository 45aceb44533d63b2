//! Inbound HBONE (port 15008): tunnels to local enrolled pods, steered here
//! by capture (`node_ingress`, or policy routing for same-node tunnels).
//!
//! Per TCP connection: the address it arrived for names the destination
//! pod; TLS is accepted with that pod's identity and must present a client
//! certificate from our trust domain. Per CONNECT stream, in order:
//! 1. the client's address must fit the peer's proven identity
//!    ([`client_address`]), unless the peer is a waypoint serving the
//!    destination (else 401);
//! 2. the authority's IP must be the arrival address (else 400);
//! 3. it must be a local enrolled workload (else 503), and a workload whose
//!    waypoint takes workload traffic accepts only that waypoint (else 401);
//! 4. authorization, with the peer's proven identity (else 401);
//! 5. connect to the pod as the original client (else 503), unless the
//!    client reset the stream first; answer 200;
//! 6. copy both ways until done, or until policy stops allowing it.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use mesh::authz::ConnectionInfo;
use mesh::config::routing::waypoint_of_workload;
use mesh::config::{Snapshot, Workload};
use mesh::drain::Drain;
use mesh::hbone::headers::{self, BAGGAGE, PeerInfo};
use mesh::hbone::server::{self, ConnectRequest, Responder};
use mesh::http_server::BindError;
use mesh::identity::Identity;
use mesh::tls;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info_span};

use super::client_address::{FORGED_SOURCE, client_address};
use super::connections::Tracked;
use super::listener::Listener;
use super::record::Record;
use super::relay::{RelayEnd, relay, relay_tunnel};
use super::{ProxyContext, ProxyError, local_enrolled, socket};
use crate::metrics::POLICY_CLOSED;

/// A client that opens TCP but never finishes TLS is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Inbound {
    listener: Listener,
    ctx: Arc<ProxyContext>,
}

impl Inbound {
    pub fn new(addr: SocketAddr, ctx: Arc<ProxyContext>) -> Result<Self, BindError> {
        Ok(Self { listener: Listener::bind("hbone", addr, &ctx)?, ctx })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener.address()
    }

    pub fn socket(&self) -> BorrowedFd<'_> {
        self.listener.socket()
    }

    pub async fn run(self, drain: Drain) {
        let ctx = self.ctx;
        let streams = drain.clone();
        self.listener
            .serve(drain, |tcp, peer| {
                let span = info_span!("inbound", id = ctx.connection_id(), src = %peer);
                handle_connection(ctx.clone(), tcp, peer, streams.clone()).instrument(span)
            })
            .await;
    }
}

pub(super) async fn handle_connection(ctx: Arc<ProxyContext>, tcp: TcpStream, peer: SocketAddr, drain: Drain) {
    let Ok(arrived) = tcp.local_addr() else { return };
    let rejected = |error: ProxyError| Record::new("inbound", peer, arrived).finish(Err(error));
    // Only the identity is kept: a connection that lives for hours must not
    // pin the config version it arrived under.
    let identity = {
        let current = ctx.state.current();
        let Some(destination) = local_enrolled(&current.snapshot, &ctx.node, arrived.ip()) else {
            return rejected(ProxyError::UnknownDestination(arrived.ip()));
        };
        destination.identity(&ctx.trust_domain)
    };
    let certified = match ctx.certs.get(&identity).await {
        Ok(certified) => certified,
        Err(error) => return rejected(error.into()),
    };
    let handshake = TlsAcceptor::from(certified.server.clone()).accept(tcp);
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => return rejected(ProxyError::Handshake(error)),
        Err(_) => return rejected(ProxyError::Handshake(std::io::ErrorKind::TimedOut.into())),
    };
    tls.get_mut().1.set_buffer_limit(Some(mesh::hbone::TLS_SEND_BUFFER));
    // Client certificates are mandatory, so a finished handshake has one.
    let Some(client) = tls::peer_identity(tls.get_ref().1) else { return };
    let ctx_limits = ctx.hbone_limits;
    let streams = drain.clone();
    let handler = move |request: ConnectRequest, responder: Responder| {
        let span = info_span!("stream", authority = %request.authority);
        handle_stream(ctx.clone(), arrived, peer, client.clone(), request, responder).instrument(span)
    };
    if let Err(error) = server::serve_connection(tls, ctx_limits, streams, handler).await {
        // Its streams have their own lines; this one is for the connection.
        Record::new("inbound", peer, arrived).finish(Err(ProxyError::Protocol(error)));
    }
}

pub(super) async fn handle_stream(
    ctx: Arc<ProxyContext>,
    arrived: SocketAddr,
    tcp_peer: SocketAddr,
    client: Identity,
    request: ConnectRequest,
    mut responder: Responder,
) {
    let current = ctx.state.current();
    let forwarded = request.headers.get(headers::FORWARDED).and_then(|v| v.to_str().ok());
    let claimed = forwarded.and_then(headers::parse_forwarded_addr);
    let src = match trusted_client_address(&ctx, &current.snapshot, &client, tcp_peer, &request, claimed) {
        Ok(src) => src,
        Err(forged) => {
            metrics::counter!(FORGED_SOURCE, "claim" => forged.claim()).increment(1);
            let mut record = Record::new("inbound", claimed.unwrap_or(tcp_peer), request.authority);
            record.src_identity = Some(client);
            responder.reject(StatusCode::UNAUTHORIZED);
            return record.finish(Err(ProxyError::ForgedSource(forged)));
        }
    };
    let mut record = Record::new("inbound", src, request.authority);
    record.src_identity = Some(client.clone());
    let destination = match admit(&ctx, &current.snapshot, arrived, &request, &mut record) {
        Ok(destination) => destination,
        Err((status, error)) => {
            responder.reject(status);
            return record.finish(Err(error));
        }
    };
    let baggage = baggage_headers(destination, &ctx.cluster_id);
    // The decisions are made; the tunnel must not pin this config version.
    drop(current);
    // A stream the client has already reset gets no connection to the pod:
    // otherwise resetting streams as fast as they open would make the pod
    // accept connections nobody uses.
    let connected = tokio::select! {
        biased;
        () = responder.reset() => return record.finish(Err(ProxyError::ClientReset)),
        connected = connect_local(&ctx, request.authority, src.ip()) => connected,
    };
    let mut upstream = match connected {
        Ok(upstream) => upstream,
        Err(error) => {
            responder.reject(StatusCode::SERVICE_UNAVAILABLE);
            return record.finish(Err(error));
        }
    };
    record.upstream = Some(request.authority);
    let Ok(tunnel) = responder.accept(baggage) else {
        return record.finish(Err(ProxyError::Copy(std::io::ErrorKind::ConnectionReset.into())));
    };
    let tracked = Tracked {
        src_identity: Some(client),
        src_ip: src.ip(),
        dst_ip: request.authority.ip(),
        dst_port: request.authority.port(),
        plaintext: false,
        cancel: CancellationToken::new(),
    };
    // On revocation the tunnel's halves are dropped unfinished, which
    // resets the stream (RST_STREAM CANCEL).
    let result = relay_tracked(&ctx, &record, tracked, Downstream::Tunnel(tunnel), &mut upstream).await;
    record.finish(result);
}

/// Step 1: the client's address. A waypoint that serves the destination
/// carries the original client's address in `forwarded`, and is believed
/// (Istio's rule); anyone else must fit [`client_address`].
fn trusted_client_address(
    ctx: &ProxyContext,
    snapshot: &Snapshot,
    client: &Identity,
    tcp_peer: SocketAddr,
    request: &ConnectRequest,
    claimed: Option<SocketAddr>,
) -> Result<SocketAddr, Box<super::client_address::ForgedSource>> {
    let destination = local_enrolled(snapshot, &ctx.node, request.authority.ip());
    let from_its_waypoint =
        destination.is_some_and(|d| snapshot.waypoints_serving(d).any(|w| snapshot.is_waypoint_identity(w, client)));
    match claimed {
        Some(claimed) if from_its_waypoint => Ok(claimed),
        _ => client_address(snapshot, &ctx.trust_domain, client, tcp_peer, claimed),
    }
}

/// Steps 1–3 of the module's sequence, filling in `record` (and opening its
/// metrics) as the destination becomes known: the local workload the stream
/// may reach, or the status to answer and the reason.
fn admit<'s>(
    ctx: &ProxyContext,
    snapshot: &'s Snapshot,
    arrived: SocketAddr,
    request: &ConnectRequest,
    record: &mut Record,
) -> Result<&'s Workload, (StatusCode, ProxyError)> {
    let authority = request.authority;
    if authority.ip() != arrived.ip() {
        return Err((StatusCode::BAD_REQUEST, ProxyError::AuthorityMismatch { authority, arrived }));
    }
    let Some(destination) = local_enrolled(snapshot, &ctx.node, authority.ip()) else {
        return Err((StatusCode::SERVICE_UNAVAILABLE, ProxyError::UnknownDestination(authority.ip())));
    };
    record.open_at_destination(snapshot, destination, (&ctx.trust_domain, &ctx.cluster_id), "mutual_tls");
    skipped_waypoint(snapshot, destination, record.src_identity.as_ref())
        .map_or(Ok(()), |waypoint| Err((StatusCode::UNAUTHORIZED, ProxyError::SkippedWaypoint(waypoint))))?;
    let info = ConnectionInfo {
        src_identity: record.src_identity.as_ref(),
        src_ip: record.src.ip(),
        dst_ip: authority.ip(),
        dst_port: authority.port(),
    };
    let decision = snapshot.authorizer().authorize(destination, &info);
    record.note_dry_run(snapshot.authorizer().dry_run(destination, &info));
    if !decision.is_allowed() {
        return Err((StatusCode::UNAUTHORIZED, ProxyError::Denied(decision.to_string())));
    }
    Ok(destination)
}

/// Istio's rule: a pod whose waypoint takes workload traffic accepts
/// tunnels only from that waypoint. Names the waypoint a caller skipped.
pub(super) fn skipped_waypoint(snapshot: &Snapshot, destination: &Workload, peer: Option<&Identity>) -> Option<String> {
    let waypoint = waypoint_of_workload(snapshot.config(), destination).filter(|w| w.takes_workload_traffic())?;
    let through_it = peer.is_some_and(|peer| snapshot.is_waypoint_identity(waypoint, peer));
    (!through_it).then(|| format!("{}/{}", waypoint.namespace, waypoint.name))
}

/// The success response's `baggage`: who the destination is.
fn baggage_headers(w: &Workload, cluster: &str) -> HeaderMap {
    let peer = PeerInfo::of_workload(w, cluster);
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&peer.to_baggage()) {
        headers.insert(BAGGAGE, value);
    }
    headers
}

/// Connects to a local pod as `client` (its original address, so the pod
/// sees who really called), or as the node when the pod calls itself.
pub(super) async fn connect_local(
    ctx: &ProxyContext,
    pod: SocketAddr,
    client: IpAddr,
) -> Result<TcpStream, ProxyError> {
    let source = (client != pod.ip()).then_some(client);
    socket::connect(pod, source, ctx.connect_timeout, &ctx.tcp).await
}

/// The client's side of an inbound connection.
pub(super) enum Downstream<'a> {
    Tunnel(mesh::hbone::H2Stream),
    Plain(&'a mut TcpStream),
}

/// Relays while registered for revocation: if a policy change comes to
/// deny the connection, it is closed (the pod side with RST).
pub(super) async fn relay_tracked(
    ctx: &ProxyContext,
    record: &Record,
    tracked: Tracked,
    downstream: Downstream<'_>,
    upstream: &mut TcpStream,
) -> Result<(), ProxyError> {
    let cancel = tracked.cancel.clone();
    let _registration = ctx.connections.register(ctx.connection_id(), tracked);
    let counters = record.byte_counters();
    let end = match downstream {
        Downstream::Tunnel(tunnel) => relay_tunnel(upstream, tunnel, &record.totals, &counters, &cancel).await,
        Downstream::Plain(socket) => relay(socket, upstream, &record.totals, &counters, &cancel).await,
    };
    match end {
        RelayEnd::Done => Ok(()),
        RelayEnd::Failed(error) => Err(ProxyError::Copy(error)),
        RelayEnd::Cancelled | RelayEnd::Refused(_) => {
            socket::reset_on_close(upstream);
            metrics::counter!(POLICY_CLOSED).increment(1);
            Err(ProxyError::Revoked)
        }
    }
}
