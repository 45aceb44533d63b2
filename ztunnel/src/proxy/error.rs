//! Why a proxied connection failed, whose fault that was, and how it shows
//! up in access logs and metrics (Envoy's response flags, which Istio's
//! dashboards already understand).

use std::io;
use std::net::SocketAddr;

/// Who caused a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The client asked for something impossible or went away.
    Downstream,
    /// The destination refused, timed out or has no endpoints.
    Upstream,
    /// A bug or resource problem in the agent.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("refused: destination {0} is one of ztunnel's own ports")]
    SelfTarget(SocketAddr),
    #[error("service VIP {vip} has no port {port}")]
    UnknownServicePort { vip: std::net::IpAddr, port: u16 },
    #[error("service {service} has no endpoints")]
    NoEndpoints { service: String },
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connect to {addr} timed out")]
    ConnectTimeout { addr: SocketAddr },
    #[error("cannot create upstream socket: {0}")]
    Socket(io::Error),
    #[error("connection reset while copying: {0}")]
    Copy(io::Error),
}

impl ProxyError {
    pub fn fault(&self) -> Fault {
        match self {
            Self::SelfTarget(_) | Self::UnknownServicePort { .. } => Fault::Downstream,
            Self::NoEndpoints { .. } | Self::Connect { .. } | Self::ConnectTimeout { .. } => Fault::Upstream,
            Self::Socket(_) => Fault::Internal,
            // A reset mid-stream may come from either side; the client sees it
            // either way, so count it against the downstream like Envoy's DC.
            Self::Copy(_) => Fault::Downstream,
        }
    }

    /// Whether a client retrying the same request could succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout { .. } | Self::Socket(_))
    }

    /// Envoy response flag for access logs and the `response_flags` label.
    pub fn response_flag(&self) -> &'static str {
        match self {
            Self::SelfTarget(_) | Self::UnknownServicePort { .. } => "NR",
            Self::NoEndpoints { .. } => "UH",
            Self::Connect { .. } | Self::ConnectTimeout { .. } | Self::Socket(_) => "UF",
            Self::Copy(_) => "DC",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_and_flags() {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let refused = ProxyError::Connect { addr, source: io::ErrorKind::ConnectionRefused.into() };
        assert_eq!(refused.fault(), Fault::Upstream);
        assert!(refused.retryable());
        assert_eq!(refused.response_flag(), "UF");
        let own = ProxyError::SelfTarget(addr);
        assert_eq!(own.fault(), Fault::Downstream);
        assert!(!own.retryable());
        assert_eq!(own.response_flag(), "NR");
        let empty = ProxyError::NoEndpoints { service: "shop/web".into() };
        assert_eq!(empty.response_flag(), "UH");
        assert_eq!(empty.to_string(), "service shop/web has no endpoints");
    }
}
