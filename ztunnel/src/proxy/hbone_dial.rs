//! How the HBONE pool reaches a peer: TCP to the destination pod's IP on
//! port 15008 (the destination node captures it), from the client pod's own
//! IP, then TLS as the source workload's identity, accepting only the
//! destination's. A destination pod on this very node is reached through
//! our own HBONE listener instead (see [`HboneSource::ThisNode`]). The pool
//! bounds the whole dial with its deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh::hbone::HboneError;
use mesh::hbone::pool::{DialFuture, Dialer, Io, PoolKey};
use mesh::tcp::TcpOptions;
use mesh::tls;
use tokio_rustls::TlsConnector;

use super::socket::{self, HboneSource};
use crate::state::State;
use mesh::certs::CertManager;

#[derive(Clone, Debug)]
pub struct HboneDialer {
    pub certs: CertManager,
    pub state: State,
    pub node: String,
    pub tcp: TcpOptions,
}

impl HboneDialer {
    /// A local enrolled pod is reached through our own HBONE listener; a
    /// local pod that is not enrolled (a waypoint's) serves HBONE itself.
    fn is_local_enrolled_pod(&self, ip: IpAddr) -> bool {
        super::local_enrolled(&self.state.current().snapshot, &self.node, ip).is_some()
    }
}

impl Dialer for HboneDialer {
    fn dial(&self, key: &PoolKey) -> DialFuture {
        let this = self.clone();
        let key = key.clone();
        Box::pin(async move { this.dial_key(key).await })
    }
}

impl HboneDialer {
    async fn dial_key(self, key: PoolKey) -> Result<Box<dyn Io>, HboneError> {
        let hop = key.next_hop;
        let cert =
            self.certs.get(&key.src).await.map_err(|e| HboneError::Certificate(key.src.to_string(), e.to_string()))?;
        let config = tls::client_config(&cert.cert, self.certs.trust(), vec![key.dst.clone()])
            .map_err(|e| HboneError::Certificate(key.src.to_string(), e.to_string()))?;
        let source =
            if self.is_local_enrolled_pod(hop.ip()) { HboneSource::ThisNode } else { HboneSource::Pod(key.src_ip) };
        let tcp = socket::connect_hbone(hop, source, &self.tcp)
            .await
            .map_err(|cause| HboneError::Connect { addr: hop, cause })?;
        let mut tls = TlsConnector::from(Arc::clone(&config))
            .connect(tls::server_name(hop.ip()), tcp)
            .await
            .map_err(|cause| HboneError::Tls { addr: hop, cause })?;
        tls.get_mut().1.set_buffer_limit(Some(mesh::hbone::TLS_SEND_BUFFER));
        Ok(Box::new(tls))
    }
}

/// The next hop for a destination pod.
pub(super) fn next_hop(pod: IpAddr) -> SocketAddr {
    SocketAddr::new(pod, mesh::hbone::HBONE_PORT)
}
