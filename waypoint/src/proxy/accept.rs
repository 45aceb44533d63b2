//! Phase 1, accept: the HBONE listener. `new()` binds, `address()`, then
//! `run(self)`. Per connection: TLS as the waypoint, a client certificate
//! from the trust domain required; per CONNECT stream: the authority must
//! be a service `VIP:port` (or a pod `IP:port`) whose traffic this waypoint
//! takes, else 404 and the stream ends. Each connection's streams are
//! bounded by [`ServerLimits`]; connections in all and per peer by
//! [`Admission`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use mesh::admission::{Admission, ConnectionLimits};
use mesh::config::routing::{waypoint_of, waypoint_of_workload};
use mesh::drain::Drain;
use mesh::hbone::server::{self, ConnectRequest, Responder, ServerLimits};
use mesh::http_server::BindError;
use mesh::identity::Identity;
use mesh::tcp::TcpOptions;
use mesh::tls;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument as _, debug, info_span, warn};

use super::{Context, Downstream};
use crate::metrics::{REFUSED_CONNECTIONS, UNKNOWN_TARGETS};
use crate::state::RouteTable;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Source ztunnels pool their tunnels, so a few connections per peer carry
/// everything; these bounds only stop a flood.
const LIMITS: ConnectionLimits = ConnectionLimits { total: 16_384, per_peer: 512 };

/// What a CONNECT's authority names.
#[derive(Clone, Debug)]
pub enum Target {
    /// A service port: routes, subsets and load balancing apply.
    Service {
        /// In the config's services, at the version the stream arrived under.
        hostname: String,
        name: String,
        namespace: String,
        port: u16,
        /// The port's name (`http-…`, `grpc-…`, `tcp-…`), a protocol hint.
        port_name: Option<String>,
    },
    /// A pod addressed directly (a waypoint for workload traffic).
    Workload { addr: SocketAddr },
}

impl Target {
    /// The target `authority` names, if this waypoint takes its traffic.
    pub fn resolve(table: &RouteTable, gateway: &(String, String), authority: SocketAddr) -> Option<Self> {
        let snapshot = &table.snapshot;
        let ours = |w: &mesh::config::routing::Waypoint| w.namespace == gateway.0 && w.name == gateway.1;
        if let Some(target) = snapshot.service_target(authority.ip(), authority.port()) {
            let service = target.service;
            let waypoint = waypoint_of(snapshot.config(), service).filter(|w| w.takes_service_traffic())?;
            return ours(waypoint).then(|| Self::Service {
                hostname: service.hostname(),
                name: service.name.clone(),
                namespace: service.namespace.clone(),
                port: target.port.port,
                port_name: target.port.name.clone(),
            });
        }
        let workload = snapshot.workload_by_ip(authority.ip())?;
        let waypoint = waypoint_of_workload(snapshot.config(), workload).filter(|w| w.takes_workload_traffic())?;
        ours(waypoint).then_some(Self::Workload { addr: authority })
    }

    /// Its name in logs and in `destination_service`.
    pub fn name(&self) -> String {
        match self {
            Self::Service { hostname, port, .. } => format!("{hostname}:{port}"),
            Self::Workload { addr } => addr.to_string(),
        }
    }
}

#[derive(Debug)]
pub struct Hbone {
    listener: TcpListener,
    ctx: Arc<Context>,
}

impl Hbone {
    pub fn new(addr: SocketAddr, ctx: Arc<Context>) -> Result<Self, BindError> {
        Ok(Self { listener: mesh::http_server::bind("hbone", addr)?, ctx })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub async fn run(self, drain: Drain) {
        let admission = Admission::new(LIMITS);
        loop {
            let accepted = tokio::select! {
                () = drain.signaled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: let some close.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(admitted) = admission.admit(peer.ip()) else {
                metrics::counter!(REFUSED_CONNECTIONS, "limit" => admission.exceeded()).increment(1);
                continue;
            };
            let ctx = self.ctx.clone();
            let span = info_span!("hbone", id = ctx.connection_id(), src = %peer);
            let streams = drain.clone();
            drain.spawn(
                async move {
                    let _admitted = admitted;
                    serve_connection(ctx, tcp, peer, streams).await;
                }
                .instrument(span),
            );
        }
    }
}

async fn serve_connection(ctx: Arc<Context>, tcp: TcpStream, peer: SocketAddr, drain: Drain) {
    if let Err(error) = TcpOptions::default().apply(&tcp) {
        debug!(%error, "socket options");
    }
    let certified = match ctx.certs.get(&ctx.identity).await {
        Ok(certified) => certified,
        Err(error) => return warn!(%error, "no certificate to accept with"),
    };
    let handshake = TlsAcceptor::from(certified.server.clone()).accept(tcp);
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => return debug!(%error, "TLS handshake failed"),
        Err(_) => return debug!("TLS handshake timed out"),
    };
    tls.get_mut().1.set_buffer_limit(Some(mesh::hbone::TLS_SEND_BUFFER));
    let Some(client) = tls::peer_identity(tls.get_ref().1) else { return };
    let handler = move |request: ConnectRequest, responder: Responder| {
        let span = info_span!("stream", authority = %request.authority);
        handle_stream(ctx.clone(), peer.ip(), client.clone(), request, responder).instrument(span)
    };
    if let Err(error) = server::serve_connection(tls, ServerLimits::default(), drain, handler).await {
        debug!(%error, "HBONE connection ended with an error");
    }
}

async fn handle_stream(
    ctx: Arc<Context>,
    client_ip: IpAddr,
    identity: Identity,
    request: ConnectRequest,
    responder: Responder,
) {
    let target = Target::resolve(&ctx.state.current(), &ctx.gateway, request.authority);
    let Some(target) = target else {
        metrics::counter!(UNKNOWN_TARGETS).increment(1);
        tracing::info!(
            target: "access",
            response_flags = "NR",
            src.addr = %client_ip,
            src.identity = %identity,
            dst.addr = %request.authority,
            "refused: not a service or workload this waypoint serves"
        );
        return responder.reject(StatusCode::NOT_FOUND);
    };
    let Ok(stream) = responder.accept(HeaderMap::new()) else { return };
    let downstream = Arc::new(Downstream { id: ctx.connection_id(), client_ip, identity, target });
    let (protocol, io) = super::detect::protocol(stream, &downstream.target).await;
    match protocol {
        super::detect::Protocol::Opaque => super::opaque::forward(&ctx, &downstream, io).await,
        http => super::http::serve(ctx, downstream, http, io).await,
    }
}
