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

/// Plaintext rustls may buffer for sending. Its default (64 KiB) makes a
/// write syscall every few records; larger batches fewer syscalls per byte.
pub const TLS_SEND_BUFFER: usize = 1024 * 1024;

/// The port HBONE listens on: the destination pod's IP, this port.
pub const HBONE_PORT: u16 = 15008;

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("TCP connect to {addr}: {cause}")]
    Connect { addr: std::net::SocketAddr, cause: std::io::Error },
    #[error("TLS handshake with {addr}: {cause}")]
    Tls { addr: std::net::SocketAddr, cause: std::io::Error },
    #[error("HTTP/2: {0}")]
    H2(h2::Error),
    #[error("the peer answered CONNECT with {0}")]
    Status(http::StatusCode),
    #[error("invalid request: {0}")]
    Request(String),
    #[error("no certificate for {0}: {1}")]
    Certificate(String, String),
    #[error("the pool's connection closed")]
    Closed,
    #[error("dialing {addr} took longer than {after:?}")]
    DialTimeout { addr: std::net::SocketAddr, after: std::time::Duration },
    #[error("no HTTP/2 preface within {0:?}")]
    PrefaceTimeout(std::time::Duration),
    #[error("no answer to CONNECT within {0:?}")]
    AnswerTimeout(std::time::Duration),
    /// A dial shared by several tunnels failed; each gets its cause.
    #[error("{0}")]
    Dial(std::sync::Arc<HboneError>),
}

impl From<h2::Error> for HboneError {
    fn from(error: h2::Error) -> Self {
        Self::H2(error)
    }
}

impl HboneError {
    /// Whether the peer refused on policy grounds (401).
    pub fn is_denied(&self) -> bool {
        match self {
            Self::Status(s) => *s == http::StatusCode::UNAUTHORIZED,
            Self::Dial(cause) => cause.is_denied(),
            _ => false,
        }
    }
}
