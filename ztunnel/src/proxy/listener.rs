//! The one shape every data-path listener has: [`Listener::bind`] binds an
//! `IP_TRANSPARENT` socket and fails fast, [`Listener::address`] and
//! [`Listener::socket`] report it, [`Listener::serve`] accepts until drained
//! and spawns a handler per connection under the drain.
//!
//! Accepting is bounded: each listener takes at most
//! [`ConnectionLimits::total`] connections at once, and at most
//! [`ConnectionLimits::per_peer`] from one address (loopback excepted: that
//! is this agent's own same-node tunnels). A connection over a limit is
//! reset at once and counted. When the process runs out of file
//! descriptors, the listener backs off instead of spinning on `accept`.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use mesh::admission::Admission;
pub use mesh::admission::ConnectionLimits;
use mesh::drain::Drain;
use mesh::http_server::BindError;
use mesh::tcp::TcpOptions;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::{ProxyContext, socket};

/// Connections a listener refused, by listener and the limit that applied.
pub const LISTENER_REFUSED: &str = "ambit_listener_refused_connections_total";

/// Backoff after an accept error that says the process or the system is
/// out of something (file descriptors, memory): from 5 ms, doubling, to 1 s.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct Listener {
    name: &'static str,
    listener: TcpListener,
    limits: ConnectionLimits,
    tcp: TcpOptions,
}

impl Listener {
    pub(super) fn bind(name: &'static str, addr: SocketAddr, ctx: &ProxyContext) -> Result<Self, BindError> {
        let listener = socket::transparent_listener(addr).map_err(|cause| BindError { name, addr, cause })?;
        let limits = if name == "hbone" { ctx.hbone_connection_limits } else { ctx.connection_limits };
        Ok(Self { name, listener, limits, tcp: ctx.tcp })
    }

    pub(super) fn address(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The listening socket, for capture to register in its sockmap.
    pub(super) fn socket(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    pub(super) async fn serve<F, Fut>(self, drain: Drain, handle: F)
    where
        F: Fn(TcpStream, SocketAddr) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        info!(listener = self.name, address = %self.address(), "listening");
        let admission = Admission::new(self.limits);
        let mut backoff = BACKOFF_MIN;
        loop {
            let accepted = tokio::select! {
                () = drain.signaled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_resource_exhaustion(&error) => {
                    warn!(listener = self.name, %error, pause = ?backoff, "accept failed; backing off");
                    tokio::select! {
                        () = drain.signaled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
                // The connection is lost (reset before we took it, say),
                // the listener is not.
                Err(error) => {
                    debug!(listener = self.name, %error, "accept failed");
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            let Some(admitted) = admission.admit(peer.ip()) else {
                metrics::counter!(LISTENER_REFUSED, "listener" => self.name, "limit" => admission.exceeded())
                    .increment(1);
                socket::reset_on_close(&stream);
                continue;
            };
            if let Err(error) = self.tcp.apply(&stream) {
                debug!(listener = self.name, %error, "cannot set socket options");
            }
            let handled = handle(stream, peer);
            drain.spawn(async move {
                handled.await;
                drop(admitted);
            });
        }
    }
}

/// Out of file descriptors, buffers or memory: accepting again at once
/// would fail again at once.
fn is_resource_exhaustion(error: &std::io::Error) -> bool {
    use nix::errno::Errno;
    let errno = error.raw_os_error().map(Errno::from_raw);
    matches!(errno, Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM))
}
