//! Inbound plaintext: connections to local enrolled pods from outside the
//! mesh (pods not enrolled, hosts beyond the cluster), steered here by
//! capture. The peer has no verified identity.
//!
//! Phases, in order: PeerAuthentication (STRICT refuses, PERMISSIVE goes
//! on); authorization with an unknown identity; connect to the pod as the
//! original client; copy both ways until done or until policy revokes it.

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use mesh::authz::ConnectionInfo;
use mesh::drain::Drain;
use mesh::http_server::BindError;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info_span};

use super::connections::Tracked;
use super::inbound::{Downstream, connect_local, relay_tracked};
use super::listener::Listener;
use super::record::Record;
use super::{ProxyContext, ProxyError, local_enrolled, socket};

#[derive(Debug)]
pub struct InboundPlain {
    listener: Listener,
    ctx: Arc<ProxyContext>,
}

impl InboundPlain {
    pub fn new(addr: SocketAddr, ctx: Arc<ProxyContext>) -> Result<Self, BindError> {
        Ok(Self { listener: Listener::bind("inbound plaintext", addr, &ctx)?, ctx })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener.address()
    }

    pub fn socket(&self) -> BorrowedFd<'_> {
        self.listener.socket()
    }

    pub async fn run(self, drain: Drain) {
        let ctx = self.ctx;
        self.listener.serve(drain, |stream, peer| handle(ctx.clone(), stream, peer)).await;
    }
}

pub(super) async fn handle(ctx: Arc<ProxyContext>, mut downstream: TcpStream, peer: SocketAddr) {
    let Ok(dst) = downstream.local_addr() else { return };
    let span = info_span!("inbound_plaintext", id = ctx.connection_id(), src = %peer, dst = %dst);
    async move {
        let mut record = Record::new("inbound_plaintext", peer, dst);
        let result = serve(&ctx, &mut downstream, &mut record).await;
        if result.is_err() {
            socket::reset_on_close(&downstream);
        }
        record.finish(result);
    }
    .instrument(span)
    .await;
}

async fn serve(ctx: &ProxyContext, downstream: &mut TcpStream, record: &mut Record) -> Result<(), ProxyError> {
    let (peer, dst) = (record.src, record.dst);
    let current = ctx.state.current();
    let snapshot = &current.snapshot;
    let destination = local_enrolled(snapshot, &ctx.node, dst.ip()).ok_or(ProxyError::UnknownDestination(dst.ip()))?;
    record.open_at_destination(snapshot, destination, (&ctx.trust_domain, &ctx.cluster_id), "unknown");
    let authorizer = snapshot.authorizer();
    if !authorizer.plaintext_allowed(destination, dst.port()) {
        return Err(ProxyError::PlaintextRefused(dst.port()));
    }
    if let Some(waypoint) = super::inbound::skipped_waypoint(snapshot, destination, None) {
        return Err(ProxyError::SkippedWaypoint(waypoint));
    }
    let info = ConnectionInfo { src_identity: None, src_ip: peer.ip(), dst_ip: dst.ip(), dst_port: dst.port() };
    let decision = authorizer.authorize(destination, &info);
    record.note_dry_run(authorizer.dry_run(destination, &info));
    if !decision.is_allowed() {
        return Err(ProxyError::Denied(decision.to_string()));
    }
    // The decisions are made; the connection must not pin this config version.
    drop(current);
    let mut upstream = connect_local(ctx, dst, peer.ip()).await?;
    record.upstream = Some(dst);
    let tracked = Tracked {
        src_identity: None,
        src_ip: peer.ip(),
        dst_ip: dst.ip(),
        dst_port: dst.port(),
        plaintext: true,
        cancel: CancellationToken::new(),
    };
    relay_tracked(ctx, record, tracked, Downstream::Plain(downstream), &mut upstream).await
}
