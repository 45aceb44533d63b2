//! Sharing h2 connections between tunnels. Connections are keyed by
//! (source identity, destination identity, source address, next hop): a
//! stream may only ride a connection whose TLS session proved exactly
//! those identities, and that left from the client's own address (as
//! Istio's ztunnel keys its pool, so a destination that trusts the TCP peer
//! address sees the real client). A connection takes streams up to a limit
//! (the pool's, capped by the peer's MAX_CONCURRENT_STREAMS); past it the
//! pool opens another. Idle connections are released after a while.
//!
//! Dials are shared: every tunnel that wants a connection for a key while
//! one is being dialed waits for that one dial and its result, success or
//! failure. A dial (TCP, TLS, HTTP/2 handshake) runs in a task of its own
//! under a deadline, so a black-holed peer costs one bounded wait, and a
//! caller that gives up does not abandon it half-way.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
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
/// Dials that failed or ran out of time.
pub const POOL_DIAL_FAILURES: &str = "ambit_hbone_pool_dial_failures_total";

/// A caller that finds no room after this many shared dials gives up: every
/// dial it joined filled up with other callers' streams first.
const MAX_CHECKOUT_ROUNDS: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src: Identity,
    pub dst: Identity,
    /// The address the connection leaves from: the client workload's own.
    pub src_ip: IpAddr,
    pub next_hop: SocketAddr,
}

/// An established, authenticated byte stream to an HBONE server.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

pub type DialFuture = Pin<Box<dyn Future<Output = Result<Box<dyn Io>, HboneError>> + Send>>;

/// Opens the TCP + TLS connection for a key: as `key.src`, from
/// `key.src_ip`, to `key.next_hop`, accepting only `key.dst`. The agent
/// supplies it, since it holds the certificates and knows how to reach its
/// peers.
pub trait Dialer: Send + Sync + 'static {
    fn dial(&self, key: &PoolKey) -> DialFuture;
}

/// How the pool behaves.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    /// Streams one connection carries before the pool opens another.
    pub streams_per_connection: usize,
    /// A connection without streams for this long is released.
    pub idle_timeout: Duration,
    /// Upper bound on a dial: TCP, TLS and the HTTP/2 handshake together.
    pub dial_timeout: Duration,
    /// Upper bound on waiting for a CONNECT's answer.
    pub answer_timeout: Duration,
}

#[derive(Debug)]
struct Pooled {
    id: u64,
    connection: Connection,
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Pooled {
    /// Takes a stream slot if the connection is open and has room.
    fn try_reserve(self: &Arc<Self>, limit: usize) -> Option<Slot> {
        if self.connection.is_closed() {
            return None;
        }
        let limit = limit.min(self.connection.peer_max_streams().max(1));
        self.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).ok()?;
        Some(Slot(self.clone()))
    }
}

/// Gives a stream's slot back when the stream is dropped.
struct Slot(Arc<Pooled>);

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
    }
}

/// One dial's outcome, shared by everyone who waited for it.
type DialOutcome = Result<Arc<Pooled>, Arc<HboneError>>;
type SharedDial = Shared<BoxFuture<'static, DialOutcome>>;

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    dialer: Box<dyn Dialer>,
    connections: Mutex<HashMap<PoolKey, Vec<Arc<Pooled>>>>,
    /// Dials in flight, one per key; an entry lives only as long as its dial.
    dialing: Mutex<HashMap<PoolKey, SharedDial>>,
    settings: PoolSettings,
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
    /// Keys with a dial in flight.
    pub dialing: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnectionStats {
    pub id: u64,
    pub src: String,
    pub dst: String,
    pub src_ip: IpAddr,
    pub next_hop: SocketAddr,
    pub active_streams: usize,
}

impl Pool {
    pub fn new(dialer: impl Dialer, settings: PoolSettings) -> Self {
        let settings = PoolSettings { streams_per_connection: settings.streams_per_connection.max(1), ..settings };
        Self {
            inner: Arc::new(Inner {
                dialer: Box::new(dialer),
                connections: Mutex::default(),
                dialing: Mutex::default(),
                settings,
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
        Ok(pending.with_guard(slot).with_answer_timeout(self.inner.settings.answer_timeout))
    }

    async fn checkout(&self, key: &PoolKey) -> Result<Slot, HboneError> {
        for _ in 0..MAX_CHECKOUT_ROUNDS {
            if let Some(slot) = self.reserve(key) {
                return Ok(slot);
            }
            let pooled = self.shared_dial(key).await.map_err(HboneError::Dial)?;
            if let Some(slot) = pooled.try_reserve(self.inner.settings.streams_per_connection) {
                return Ok(slot);
            }
        }
        Err(HboneError::Closed)
    }

    /// The dial in flight for `key`, or a new one.
    fn shared_dial(&self, key: &PoolKey) -> SharedDial {
        let mut dialing = lock(&self.inner.dialing);
        if let Some(dial) = dialing.get(key) {
            return dial.clone();
        }
        let (pool, task_key) = (self.clone(), key.clone());
        let task = tokio::spawn(async move { pool.dial(task_key).await });
        let dial = async move { task.await.unwrap_or_else(|_| Err(Arc::new(HboneError::Closed))) }.boxed().shared();
        dialing.insert(key.clone(), dial.clone());
        dial
    }

    /// Dials under the deadline, files the connection under `key`, and
    /// retires the key's dialing entry, whatever the outcome.
    async fn dial(self, key: PoolKey) -> DialOutcome {
        let deadline = self.inner.settings.dial_timeout;
        let attempt = async {
            let io = self.inner.dialer.dial(&key).await?;
            client::handshake(io).await
        };
        let result = match tokio::time::timeout(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => Err(HboneError::DialTimeout { addr: key.next_hop, after: deadline }),
        };
        let outcome = match result {
            Ok(connection) => {
                let pooled = Arc::new(Pooled {
                    id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
                    connection,
                    active: AtomicUsize::new(0),
                    idle_since: Mutex::new(Instant::now()),
                });
                metrics::counter!(POOL_CONNECTIONS_OPENED).increment(1);
                let mut connections = lock(&self.inner.connections);
                connections.entry(key.clone()).or_default().push(pooled.clone());
                set_gauge(&connections);
                Ok(pooled)
            }
            Err(error) => {
                metrics::counter!(POOL_DIAL_FAILURES).increment(1);
                Err(Arc::new(error))
            }
        };
        lock(&self.inner.dialing).remove(&key);
        outcome
    }

    /// Takes a stream slot on an open connection with room, if any, and
    /// forgets the key's closed connections on the way.
    fn reserve(&self, key: &PoolKey) -> Option<Slot> {
        let mut connections = lock(&self.inner.connections);
        let list = connections.get_mut(key)?;
        list.retain(|p| !p.connection.is_closed());
        let limit = self.inner.settings.streams_per_connection;
        let slot = list.iter().find_map(|p| p.try_reserve(limit));
        if list.is_empty() {
            connections.remove(key);
        }
        slot
    }

    /// Drops connections that are closed or have been idle too long, and
    /// keys left without connections.
    pub fn release_idle(&self) {
        let mut connections = lock(&self.inner.connections);
        let timeout = self.inner.settings.idle_timeout;
        for list in connections.values_mut() {
            list.retain(|p| {
                let idle = p.active.load(Ordering::Acquire) == 0
                    && p.idle_since.lock().unwrap_or_else(PoisonError::into_inner).elapsed() >= timeout;
                !p.connection.is_closed() && !idle
            });
        }
        connections.retain(|_, list| !list.is_empty());
        set_gauge(&connections);
    }

    /// Releases idle connections periodically until `drain` fires.
    pub async fn run_reaper(self, drain: Drain) {
        let period = (self.inner.settings.idle_timeout / 2).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = drain.signaled() => return,
                _ = tick.tick() => self.release_idle(),
            }
        }
    }

    pub fn stats(&self) -> PoolStats {
        let connections = lock(&self.inner.connections)
            .iter()
            .flat_map(|(key, list)| {
                list.iter().map(move |p| ConnectionStats {
                    id: p.id,
                    src: key.src.to_string(),
                    dst: key.dst.to_string(),
                    src_ip: key.src_ip,
                    next_hop: key.next_hop,
                    active_streams: p.active.load(Ordering::Acquire),
                })
            })
            .collect();
        PoolStats { connections, dialing: lock(&self.inner.dialing).len() }
    }
}

/// The pool's maps hold plain data that stays consistent across a panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn set_gauge(connections: &HashMap<PoolKey, Vec<Arc<Pooled>>>) {
    metrics::gauge!(POOL_CONNECTIONS).set(connections.values().map(Vec::len).sum::<usize>() as f64);
}

#[cfg(test)]
mod tests;
