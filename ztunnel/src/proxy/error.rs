//! Why a proxied connection failed, whose fault that was, whether a retry
//! could help, and how it shows in access logs and the `response_flags`
//! label. Flags are Envoy's where one fits (UF, UH, NR, DC); a policy
//! denial is `DENY` and a connection closed by a policy change `REVOKED`.

use std::io;
use std::net::SocketAddr;

use mesh::hbone::HboneError;

/// Who caused a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The client asked for something impossible, is not allowed, or went away.
    Downstream,
    /// The destination refused, timed out or has no endpoints.
    Upstream,
    /// A problem in the agent itself (certificates, sockets).
    Internal,
}

impl Fault {
    /// Its name in the access log's `error.fault`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Downstream => "downstream",
            Self::Upstream => "upstream",
            Self::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("refused: destination {0} is one of ztunnel's own ports")]
    SelfTarget(SocketAddr),
    #[error("service VIP {vip} has no port {port}")]
    UnknownServicePort { vip: std::net::IpAddr, port: u16 },
    #[error("service {service} has no endpoints")]
    NoEndpoints { service: String },
    #[error("the source {0} is not a known workload")]
    UnknownSource(std::net::IpAddr),
    #[error("{0} is not an enrolled workload on this node")]
    UnknownDestination(std::net::IpAddr),
    #[error("CONNECT to {authority} arrived on {arrived}")]
    AuthorityMismatch { authority: SocketAddr, arrived: SocketAddr },
    #[error("authorization {0}")]
    Denied(String),
    #[error("refused: the destination takes workload traffic only through its waypoint {0}")]
    SkippedWaypoint(String),
    #[error("the destination's ztunnel denied the connection (HBONE 401)")]
    DeniedByPeer,
    #[error("plaintext refused: PeerAuthentication is STRICT for port {0}")]
    PlaintextRefused(u16),
    #[error("connect to {addr} failed: {cause}")]
    Connect { addr: SocketAddr, cause: io::Error },
    #[error("connect to {addr} timed out")]
    ConnectTimeout { addr: SocketAddr },
    #[error("HBONE to {addr}: {cause}")]
    Hbone { addr: SocketAddr, cause: HboneError },
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("HBONE protocol error from the client: {0}")]
    Protocol(HboneError),
    #[error(transparent)]
    Certificate(#[from] mesh::certs::CertError),
    #[error("cannot create upstream socket: {0}")]
    Socket(io::Error),
    #[error("connection reset while copying: {0}")]
    Copy(io::Error),
    #[error("closed: authorization policy now denies it")]
    Revoked,
    #[error("refused: {0}")]
    ForgedSource(Box<super::client_address::ForgedSource>),
    #[error("the client reset the stream before it was connected")]
    ClientReset,
}

impl ProxyError {
    pub fn fault(&self) -> Fault {
        match self {
            Self::SelfTarget(_)
            | Self::UnknownServicePort { .. }
            | Self::UnknownSource(_)
            | Self::UnknownDestination(_)
            | Self::AuthorityMismatch { .. }
            | Self::Denied(_)
            | Self::SkippedWaypoint(_)
            | Self::DeniedByPeer
            | Self::PlaintextRefused(_)
            | Self::Handshake(_)
            | Self::Protocol(_)
            | Self::Revoked
            | Self::ForgedSource(_)
            | Self::ClientReset
            // A reset mid-stream may come from either side; the client sees it
            // either way, so it counts against the downstream, like Envoy's DC.
            | Self::Copy(_) => Fault::Downstream,
            Self::NoEndpoints { .. } | Self::Connect { .. } | Self::ConnectTimeout { .. } | Self::Hbone { .. } => {
                Fault::Upstream
            }
            Self::Certificate(_) | Self::Socket(_) => Fault::Internal,
        }
    }

    /// Whether the client retrying could succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout { .. } | Self::Socket(_) | Self::Certificate(_))
            || matches!(self, Self::Hbone { cause, .. } if !cause.is_denied())
    }

    /// Envoy-style response flag for access logs and `response_flags`.
    pub fn response_flag(&self) -> &'static str {
        match self {
            Self::SelfTarget(_) | Self::UnknownServicePort { .. } | Self::UnknownDestination(_) => "NR",
            Self::NoEndpoints { .. } => "UH",
            Self::Connect { .. } | Self::ConnectTimeout { .. } | Self::Socket(_) | Self::Hbone { .. } => "UF",
            Self::Certificate(_) | Self::Handshake(_) | Self::UnknownSource(_) | Self::AuthorityMismatch { .. } => "UF",
            Self::Denied(_) | Self::DeniedByPeer | Self::PlaintextRefused(_) | Self::ForgedSource(_) => "DENY",
            Self::SkippedWaypoint(_) => "DENY",
            Self::Revoked => "REVOKED",
            Self::Protocol(_) => "DPE",
            Self::Copy(_) | Self::ClientReset => "DC",
        }
    }

    /// The `response_flags` label of the `istio_tcp_*` metrics, in Istio
    /// ztunnel's vocabulary (what its dashboards and Kiali expect): `DENY`
    /// for policy, `CONNECT` for an upstream that could not be reached,
    /// `-` otherwise. The access line keeps the finer flag.
    pub fn metric_flag(&self) -> &'static str {
        match self.response_flag() {
            "DENY" | "REVOKED" => "DENY",
            "UF" | "UH" if self.fault() == Fault::Upstream => "CONNECT",
            _ => "-",
        }
    }

    /// An HBONE failure, sorted: a 401 from the peer is a policy denial.
    pub fn from_hbone(addr: SocketAddr, cause: HboneError) -> Self {
        if cause.is_denied() { Self::DeniedByPeer } else { Self::Hbone { addr, cause } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_and_flags() {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let refused = ProxyError::Connect { addr, cause: io::ErrorKind::ConnectionRefused.into() };
        assert_eq!((refused.fault(), refused.retryable(), refused.response_flag()), (Fault::Upstream, true, "UF"));
        let own = ProxyError::SelfTarget(addr);
        assert_eq!((own.fault(), own.retryable(), own.response_flag()), (Fault::Downstream, false, "NR"));
        let empty = ProxyError::NoEndpoints { service: "shop/web".into() };
        assert_eq!(empty.response_flag(), "UH");
        assert_eq!(empty.to_string(), "service shop/web has no endpoints");
        let denied = ProxyError::from_hbone(addr, HboneError::Status(http::StatusCode::UNAUTHORIZED));
        assert_eq!((denied.fault(), denied.retryable(), denied.response_flag()), (Fault::Downstream, false, "DENY"));
        let unavailable = ProxyError::from_hbone(addr, HboneError::Status(http::StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!((unavailable.fault(), unavailable.retryable()), (Fault::Upstream, true));
        assert_eq!(ProxyError::Revoked.response_flag(), "REVOKED");
        // Metrics speak Istio ztunnel's vocabulary.
        assert_eq!(refused.metric_flag(), "CONNECT");
        assert_eq!(empty.metric_flag(), "CONNECT");
        assert_eq!((denied.metric_flag(), ProxyError::Revoked.metric_flag()), ("DENY", "DENY"));
        assert_eq!(ProxyError::SelfTarget(addr).metric_flag(), "-");
        assert_eq!(ProxyError::Copy(io::ErrorKind::ConnectionReset.into()).metric_flag(), "-");
    }
}
