//! The one shape every data-path listener has: [`Listener::bind`] binds an
//! `IP_TRANSPARENT` socket and fails fast, [`Listener::address`] and
//! [`Listener::socket`] report it, [`Listener::serve`] accepts until drained
//! and spawns a handler per connection under the drain.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};

use mesh::drain::Drain;
use mesh::http_server::BindError;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use super::socket;

#[derive(Debug)]
pub(super) struct Listener {
    name: &'static str,
    listener: TcpListener,
}

impl Listener {
    pub(super) fn bind(name: &'static str, addr: SocketAddr) -> Result<Self, BindError> {
        let listener = socket::transparent_listener(addr).map_err(|cause| BindError { name, addr, cause })?;
        Ok(Self { name, listener })
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
        loop {
            let accepted = tokio::select! {
                () = drain.signaled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    drain.spawn(handle(stream, peer));
                }
                // Out of file descriptors and the like: the connection is
                // lost, the listener is not.
                Err(error) => debug!(listener = self.name, %error, "accept failed"),
            }
        }
    }
}
