//! Upstream connections. Each is an HBONE tunnel from the waypoint, as its
//! own identity, to an endpoint pod (the destination node's ztunnel admits
//! it and applies L4 policy to the waypoint's identity), carrying the
//! original client's address in `forwarded`. Tunnels share the pool's
//! HTTP/2 connections per destination identity; inside them, HTTP/2
//! connections are shared by all requests of one client to one endpoint,
//! and idle HTTP/1.1 connections are kept for reuse (keyed by client too,
//! since `forwarded` is per tunnel).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh::certs::CertManager;
use mesh::drain::Drain;
use mesh::hbone::headers::{PeerInfo, connect_headers};
use mesh::hbone::pool::{DialFuture, Dialer, Io, Pool, PoolKey, PoolSettings};
use mesh::hbone::{H2Stream, HboneError};
use mesh::identity::Identity;
use mesh::tcp::TcpOptions;
use mesh::tls;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::balance::Endpoint;
use super::body::Body;

/// Idle HTTP/1.1 connections kept per (endpoint, client).
const MAX_IDLE_PER_KEY: usize = 16;
/// An idle HTTP/1.1 connection older than this is closed, not reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Streams per pooled HBONE connection before another is opened.
const STREAMS_PER_CONNECTION: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    endpoint: SocketAddr,
    client: IpAddr,
}

/// Why an upstream could not be reached; `denied` when the destination's
/// ztunnel refused the tunnel by policy (retrying cannot help).
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct ConnectError {
    pub reason: String,
    pub denied: bool,
}

impl From<HboneError> for ConnectError {
    fn from(error: HboneError) -> Self {
        Self { denied: error.is_denied(), reason: error.to_string() }
    }
}

impl From<hyper::Error> for ConnectError {
    fn from(error: hyper::Error) -> Self {
        Self { denied: false, reason: format!("HTTP handshake: {error}") }
    }
}

/// An idle HTTP/1.1 connection, and since when.
type IdleHttp1 = (http1::SendRequest<Body>, Instant);

#[derive(Debug)]
pub struct Upstreams {
    pool: Pool,
    identity: Identity,
    http2: Mutex<HashMap<Key, http2::SendRequest<Body>>>,
    http1: Mutex<HashMap<Key, Vec<IdleHttp1>>>,
}

impl Upstreams {
    pub fn new(certs: CertManager, identity: Identity, connect_timeout: Duration) -> Self {
        let settings = PoolSettings {
            streams_per_connection: STREAMS_PER_CONNECTION,
            idle_timeout: IDLE_TIMEOUT,
            dial_timeout: connect_timeout,
            answer_timeout: connect_timeout,
        };
        let pool = Pool::new(WaypointDialer { certs }, settings);
        Self { pool, identity, http2: Mutex::default(), http1: Mutex::default() }
    }

    pub fn pool_stats(&self) -> mesh::hbone::pool::PoolStats {
        self.pool.stats()
    }

    /// Closes idle connections of every kind, periodically, until drained.
    pub async fn run_reaper(&self, drain: Drain) {
        let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
        loop {
            tokio::select! {
                () = drain.signaled() => return,
                _ = tick.tick() => {}
            }
            self.pool.release_idle();
            lock(&self.http2).retain(|_, sender| !sender.is_closed());
            let mut idle = lock(&self.http1);
            for senders in idle.values_mut() {
                senders.retain(|(sender, since)| !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT);
            }
            idle.retain(|_, senders| !senders.is_empty());
        }
    }

    /// A new tunnel to `endpoint`, on behalf of `client`.
    pub async fn tunnel(&self, endpoint: &Endpoint, client: IpAddr) -> Result<H2Stream, ConnectError> {
        let key = PoolKey {
            src: self.identity.clone(),
            dst: endpoint.identity.clone(),
            // The waypoint dials from its own address, whoever the client is.
            src_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            next_hop: SocketAddr::new(endpoint.addr.ip(), mesh::hbone::HBONE_PORT),
        };
        let headers = connect_headers(SocketAddr::new(client, 0), &PeerInfo::default());
        Ok(self.pool.connect(&key, endpoint.addr, headers).await?)
    }

    /// An HTTP/1.1 connection to `endpoint`: an idle one, or a new one.
    pub async fn http1(&self, endpoint: &Endpoint, client: IpAddr) -> Result<http1::SendRequest<Body>, ConnectError> {
        let key = Key { endpoint: endpoint.addr, client };
        if let Some(sender) = self.idle_http1(&key) {
            return Ok(sender);
        }
        let stream = self.tunnel(endpoint, client).await?;
        let (sender, connection) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                debug!(%error, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    fn idle_http1(&self, key: &Key) -> Option<http1::SendRequest<Body>> {
        let mut idle = lock(&self.http1);
        let senders = idle.get_mut(key)?;
        while let Some((sender, since)) = senders.pop() {
            if sender.is_ready() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for reuse once its response has been read.
    pub fn release_http1(&self, endpoint: SocketAddr, client: IpAddr, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.http1);
        let senders = idle.entry(Key { endpoint, client }).or_default();
        if senders.len() >= MAX_IDLE_PER_KEY {
            senders.remove(0);
        }
        senders.push((sender, Instant::now()));
    }

    /// The HTTP/2 connection to `endpoint` for `client`, shared by requests.
    pub async fn http2(&self, endpoint: &Endpoint, client: IpAddr) -> Result<http2::SendRequest<Body>, ConnectError> {
        let key = Key { endpoint: endpoint.addr, client };
        if let Some(sender) = lock(&self.http2).get(&key).filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let stream = self.tunnel(endpoint, client).await?;
        let (sender, connection) =
            http2::Builder::new(TokioExecutor::new()).timer(TokioTimer::new()).handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "upstream HTTP/2 connection ended");
            }
        });
        lock(&self.http2).insert(key, sender.clone());
        Ok(sender)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// TCP to the endpoint's port 15008 (the destination node captures it),
/// then TLS as the waypoint, accepting only the endpoint's identity.
#[derive(Debug)]
struct WaypointDialer {
    certs: CertManager,
}

impl Dialer for WaypointDialer {
    fn dial(&self, key: &PoolKey) -> DialFuture {
        let (certs, key) = (self.certs.clone(), key.clone());
        Box::pin(async move {
            let hop = key.next_hop;
            let certificate_error = |e: String| HboneError::Certificate(key.src.to_string(), e);
            let cert = certs.get(&key.src).await.map_err(|e| certificate_error(e.to_string()))?;
            let config = tls::client_config(&cert.cert, certs.trust(), vec![key.dst.clone()])
                .map_err(|e| certificate_error(e.to_string()))?;
            let tcp = TcpStream::connect(hop).await.map_err(|cause| HboneError::Connect { addr: hop, cause })?;
            TcpOptions::default().apply(&tcp).map_err(|cause| HboneError::Connect { addr: hop, cause })?;
            let mut tls = TlsConnector::from(config)
                .connect(tls::server_name(hop.ip()), tcp)
                .await
                .map_err(|cause| HboneError::Tls { addr: hop, cause })?;
            tls.get_mut().1.set_buffer_limit(Some(mesh::hbone::TLS_SEND_BUFFER));
            Ok(Box::new(tls) as Box<dyn Io>)
        })
    }
}
