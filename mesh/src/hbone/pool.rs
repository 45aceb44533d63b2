//! Sharing h2 connections between tunnels. Connections are keyed by
//! (source identity, destination identity, next hop): a stream may only
//! ride a connection whose TLS session proved exactly those identities.
//! A connection takes streams up to a limit (the pool's, capped by the
//! peer's MAX_CONCURRENT_STREAMS); past it the pool opens another. Idle
//! connections are released after a while.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use super::client::{self, Connection};
use super::{H2Stream, HboneError};
use crate::drain::Drain;
use crate::identity::Identity;

/// Connections the pool has opened, over its lifetime.
pub const POOL_CONNECTIONS_OPENED: &str = "ambit_hbone_pool_connections_opened_total";
/// Connections the pool holds now.
pub const POOL_CONNECTIONS: &str = "ambit_hbone_pool_connections";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src: Identity,
    pub dst: Identity,
    pub next_hop: SocketAddr,
}

/// An established, authenticated byte stream to an HBONE server.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

pub type DialFuture = Pin<Box<dyn Future<Output = Result<Box<dyn Io>, HboneError>> + Send>>;

/// Opens the TCP + TLS connection for a key: as `key.src`, to
/// `key.next_hop`, accepting only `key.dst`. The agent supplies it, since
/// it holds the certificates and knows how to reach its peers.
pub trait Dialer: Send + Sync + 'static {
    fn dial(&self, key: &PoolKey) -> DialFuture;
}

#[derive(Debug)]
struct Pooled {
    id: u64,
    connection: Connection,
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// Gives a stream's slot back when the stream is dropped.
struct Slot(Arc<Pooled>);

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(mut since) = self.0.idle_since.lock()
        {
            *since = Instant::now();
        }
    }
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    dialer: Box<dyn Dialer>,
    connections: Mutex<HashMap<PoolKey, Vec<Arc<Pooled>>>>,
    /// One dial at a time per key, so a burst shares the new connection.
    dialing: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
    streams_per_connection: usize,
    idle_timeout: Duration,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("stats", &self.stats()).finish()
    }
}

/// What the pool holds, for the admin endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct PoolStats {
    pub connections: Vec<ConnectionStats>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnectionStats {
    pub id: u64,
    pub src: String,
    pub dst: String,
    pub next_hop: SocketAddr,
    pub active_streams: usize,
}

impl Pool {
    pub fn new(dialer: impl Dialer, streams_per_connection: usize, idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                dialer: Box::new(dialer),
                connections: Mutex::default(),
                dialing: Mutex::default(),
                streams_per_connection: streams_per_connection.max(1),
                idle_timeout,
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Opens a CONNECT stream to `authority` on a connection for `key`,
    /// reusing one with room or dialing a new one, and waits for the answer.
    pub async fn connect(
        &self,
        key: &PoolKey,
        authority: SocketAddr,
        headers: HeaderMap,
    ) -> Result<H2Stream, HboneError> {
        self.open(key, authority, headers).await?.established().await
    }

    /// Like [`Pool::connect`], without waiting for the answer (see
    /// [`client::Connection::open`]).
    pub async fn open(
        &self,
        key: &PoolKey,
        authority: SocketAddr,
        headers: HeaderMap,
    ) -> Result<client::PendingStream, HboneError> {
        let slot = self.checkout(key).await?;
        let pending = slot.0.connection.open(authority, headers).await?;
        Ok(pending.with_guard(slot))
    }

    async fn checkout(&self, key: &PoolKey) -> Result<Slot, HboneError> {
        if let Some(slot) = self.reserve(key) {
            return Ok(slot);
        }
        let lock = {
            let mut dialing = self.inner.dialing.lock().map_err(|_| HboneError::Closed)?;
            dialing.entry(key.clone()).or_default().clone()
        };
        let _dialing = lock.lock().await;
        // Someone may have dialed while we waited.
        if let Some(slot) = self.reserve(key) {
            return Ok(slot);
        }
        let io = self.inner.dialer.dial(key).await?;
        let connection = client::handshake(io).await?;
        let pooled = Arc::new(Pooled {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            connection,
            active: AtomicUsize::new(1),
            idle_since: Mutex::new(Instant::now()),
        });
        metrics::counter!(POOL_CONNECTIONS_OPENED).increment(1);
        let mut connections = self.inner.connections.lock().map_err(|_| HboneError::Closed)?;
        connections.entry(key.clone()).or_default().push(pooled.clone());
        metrics::gauge!(POOL_CONNECTIONS).set(connections.values().map(Vec::len).sum::<usize>() as f64);
        Ok(Slot(pooled))
    }

    /// Takes a stream slot on an open connection with room, if any.
    fn reserve(&self, key: &PoolKey) -> Option<Slot> {
        let mut connections = self.inner.connections.lock().ok()?;
        let list = connections.get_mut(key)?;
        list.retain(|p| !p.connection.is_closed());
        let limit = |p: &Pooled| self.inner.streams_per_connection.min(p.connection.peer_max_streams().max(1));
        let pooled = list.iter().find(|p| p.active.load(Ordering::Acquire) < limit(p))?;
        pooled.active.fetch_add(1, Ordering::AcqRel);
        Some(Slot(pooled.clone()))
    }

    /// Drops connections that are closed or have been idle too long.
    pub fn release_idle(&self) {
        let Ok(mut connections) = self.inner.connections.lock() else { return };
        let timeout = self.inner.idle_timeout;
        for list in connections.values_mut() {
            list.retain(|p| {
                let idle = p.active.load(Ordering::Acquire) == 0
                    && p.idle_since.lock().is_ok_and(|since| since.elapsed() >= timeout);
                !p.connection.is_closed() && !idle
            });
        }
        connections.retain(|_, list| !list.is_empty());
        metrics::gauge!(POOL_CONNECTIONS).set(connections.values().map(Vec::len).sum::<usize>() as f64);
    }

    /// Releases idle connections periodically until `drain` fires.
    pub async fn run_reaper(self, drain: Drain) {
        let mut tick = tokio::time::interval((self.inner.idle_timeout / 2).max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                () = drain.signaled() => return,
                _ = tick.tick() => self.release_idle(),
            }
        }
    }

    pub fn stats(&self) -> PoolStats {
        let connections = self
            .inner
            .connections
            .lock()
            .map(|map| {
                map.iter()
                    .flat_map(|(key, list)| {
                        list.iter().map(move |p| ConnectionStats {
                            id: p.id,
                            src: key.src.to_string(),
                            dst: key.dst.to_string(),
                            next_hop: key.next_hop,
                            active_streams: p.active.load(Ordering::Acquire),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        PoolStats { connections }
    }
}

#[cfg(test)]
mod tests;
