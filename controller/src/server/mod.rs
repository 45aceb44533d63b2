//! The control endpoint agents connect to: HTTP/2 over TLS 1.3 (see
//! `mesh::control` for the protocol). Same shape as every listener:
//! [`ControlServer::new`] binds and fails fast, [`ControlServer::address`],
//! then [`ControlServer::run`].

mod certificates;
mod config_stream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh::admission::{Admission, ConnectionLimits};
use mesh::ca::CertificateAuthority;
use mesh::control::{CERTIFICATES_PATH, CONFIG_PATH};
use mesh::drain::Drain;
use mesh::identity::Identity;
use mesh::tcp::TcpOptions;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{Instrument as _, debug, info, info_span};

use crate::node_auth::NodeAuth;
use crate::store::Store;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;
pub type Response = hyper::Response<Body>;

/// Longest certificate lifetime an agent may ask for.
pub const MAX_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
const KEEPALIVE: Duration = Duration::from_secs(10);
/// A client that opens TCP but never finishes TLS is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections held at once: an agent holds two (config stream and
/// certificate requests), a waypoint pod the same.
const LIMITS: ConnectionLimits = ConnectionLimits { total: 16_384, per_peer: 64 };
/// Connections refused for a limit or a failed handshake, by reason.
pub const REFUSED: &str = "ambit_controller_refused_connections_total";

/// What every request handler needs.
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    pub ca: CertificateAuthority,
    pub auth: NodeAuth,
}

#[derive(Debug)]
pub struct ControlServer {
    listener: TcpListener,
}

impl ControlServer {
    pub fn new(addr: SocketAddr) -> Result<Self, mesh::http_server::BindError> {
        Ok(Self { listener: mesh::http_server::bind("control", addr)? })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until drained. `tls` is re-read for every connection, so a
    /// renewed serving certificate takes effect without a restart.
    pub async fn run(self, shared: Arc<Shared>, tls: watch::Receiver<Arc<ServerConfig>>, drain: Drain) {
        info!(address = %self.address(), "control endpoint listening");
        let admission = Admission::new(LIMITS);
        loop {
            let accepted = tokio::select! {
                () = drain.signaled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let Ok((stream, peer)) = accepted else { continue };
            let Some(admitted) = admission.admit(peer.ip()) else {
                metrics::counter!(REFUSED, "reason" => admission.exceeded()).increment(1);
                continue;
            };
            let _ = TcpOptions::default().apply(&stream);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.borrow().clone());
            let (shared, conn_drain) = (shared.clone(), drain.clone());
            let span = info_span!("agent", %peer);
            drain.spawn(
                async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => return debug!(%error, "TLS handshake failed"),
                        Err(_) => {
                            metrics::counter!(REFUSED, "reason" => "handshake_timeout").increment(1);
                            return debug!("TLS handshake timed out");
                        }
                    };
                    metrics::counter!(crate::metrics::CONNECTIONS).increment(1);
                    let peer_identity = mesh::tls::peer_identity(tls.get_ref().1);
                    serve_connection(tls, shared, peer_identity, conn_drain).await;
                    drop(admitted);
                }
                .instrument(span),
            );
        }
    }
}

async fn serve_connection<S>(stream: S, shared: Arc<Shared>, peer: Option<Identity>, drain: Drain)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handler_drain = drain.clone();
    let service = service_fn(move |request| {
        let (shared, peer, drain) = (shared.clone(), peer.clone(), handler_drain.clone());
        async move { Ok::<_, Infallible>(route(request, &shared, peer.as_ref(), &drain).await) }
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = drain.signaled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        debug!(%error, "agent connection ended");
    }
}

async fn route(request: hyper::Request<Incoming>, shared: &Shared, peer: Option<&Identity>, drain: &Drain) -> Response {
    let authorization = request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(caller) = shared.auth.caller_for(authorization).await else {
        return text(StatusCode::UNAUTHORIZED, "a valid node or waypoint credential is required");
    };
    match (request.method(), request.uri().path()) {
        (&Method::POST, CERTIFICATES_PATH) => certificates::sign(request, shared, &caller).await,
        (&Method::GET, CONFIG_PATH) => config_stream::open(&request, shared, caller.node(), peer, drain).await,
        _ => text(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

pub fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::from(message.into())).boxed_unsync());
    *response.status_mut() = status;
    response
}

pub fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => hyper::Response::new(Full::new(Bytes::from(body)).boxed_unsync()),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;
    use crate::credentials::NodeCredentials;

    /// On a paused clock: a client that opens TCP and never starts TLS is
    /// dropped at the handshake deadline.
    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dropped_at_the_tls_deadline() {
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let (_tls_tx, tls) = watch::channel(crate::authority::serving_config(&ca).unwrap());
        let shared = Arc::new(Shared { store: Store::new(), ca, auth: NodeAuth::Local(NodeCredentials::default()) });
        let server = ControlServer::new("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.address();
        tokio::spawn(server.run(shared, tls, Drain::new()));
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut buf = [0u8; 16];
        let read = silent.read(&mut buf).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(started.elapsed(), HANDSHAKE_TIMEOUT);
    }
}
