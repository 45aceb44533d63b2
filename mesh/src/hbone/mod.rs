//! HBONE: TCP tunnelled as HTTP/2 `CONNECT` streams inside mutual TLS, as
//! Istio's ztunnel speaks it (see ARCHITECTURE.md, "HBONE").
//!
//! * [`settings`]: the HTTP/2 parameters both sides use.
//! * [`stream`]: [`H2Stream`], one CONNECT stream as `AsyncRead + AsyncWrite`.
//! * [`headers`]: building and reading the CONNECT request's headers.
//! * [`client`]: opening CONNECT streams on an h2 connection.
//! * [`pool`]: sharing h2 connections between tunnels.
//! * [`server`]: accepting CONNECT streams and answering them.

pub mod client;
pub mod copy;
pub mod headers;
pub mod pool;
pub mod server;
pub mod settings;
pub mod stream;

pub use stream::H2Stream;

/// The port HBONE listens on: the destination pod's IP, this port.
pub const HBONE_PORT: u16 = 15008;

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("TCP connect to {addr}: {source}")]
    Connect { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("TLS handshake with {addr}: {source}")]
    Tls { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("the peer answered CONNECT with {0}")]
    Status(http::StatusCode),
    #[error("invalid request: {0}")]
    Request(String),
    #[error("no certificate for {0}: {1}")]
    Certificate(String, String),
    #[error("the pool's connection closed")]
    Closed,
}

impl HboneError {
    /// Whether the peer refused on policy grounds (401).
    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Status(s) if *s == http::StatusCode::UNAUTHORIZED)
    }
}
