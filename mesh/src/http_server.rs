//! A small HTTP/1.1 server for the node-local endpoints (readiness, admin,
//! metrics). Same shape as every listener: [`HttpServer::new`] binds and
//! fails fast, [`HttpServer::address`] reports where, [`HttpServer::run`]
//! serves until drained.
//!
//! Bounded like the data path: a request's headers must arrive within
//! [`HEADER_READ_TIMEOUT`], a keep-alive connection is closed (after its
//! request in flight) once it is [`MAX_CONNECTION_AGE`] old, and at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once). A
//! scraper or probe needs one.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info};

use crate::drain::Drain;
use crate::tcp::TcpOptions;

pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
pub const MAX_CONNECTIONS: usize = 64;

pub type Request = hyper::Request<Incoming>;
pub type Response = hyper::Response<Full<Bytes>>;

/// A listener could not be opened. Names the listener and the address, so
/// "port already in use" says which port and what wanted it.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {name} on {addr}: {cause}")]
pub struct BindError {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub cause: std::io::Error,
}

/// Binds a plain TCP listener, failing fast. Must run inside a tokio runtime.
pub fn bind(name: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    let wrap = |cause| BindError { name, addr, cause };
    let std_listener = std::net::TcpListener::bind(addr).map_err(wrap)?;
    std_listener.set_nonblocking(true).map_err(wrap)?;
    TcpListener::from_std(std_listener).map_err(wrap)
}

#[derive(Debug)]
pub struct HttpServer {
    name: &'static str,
    listener: TcpListener,
}

impl HttpServer {
    pub fn new(name: &'static str, addr: SocketAddr) -> Result<Self, BindError> {
        Ok(Self { name, listener: bind(name, addr)? })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves `handler` until `drain` signals. Connection errors are the
    /// client's business and only logged at debug.
    pub async fn run<H, F>(self, drain: Drain, handler: H)
    where
        H: Fn(Request) -> F + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        info!(listener = self.name, address = %self.address(), "listening");
        let handler = Arc::new(handler);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                () = drain.signaled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let Ok((stream, peer)) = accepted else { continue };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!(listener = self.name, %peer, "too many connections; closing this one");
                continue;
            };
            let _ = TcpOptions::default().apply(&stream);
            let handler = handler.clone();
            let name = self.name;
            let conn_drain = drain.clone();
            drain.spawn(async move {
                let service = service_fn(move |req| {
                    let response = handler(req);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                // Keep-alive connections would otherwise hold the drain open,
                // or a slot for as long as the client likes.
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    () = conn_drain.signaled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                    () = tokio::time::sleep(MAX_CONNECTION_AGE) => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                drop(slot);
                if let Err(error) = result {
                    debug!(listener = name, %peer, %error, "http connection ended with error");
                }
            });
        }
    }
}

/// A response with a status and a text body.
pub fn text(status: http::StatusCode, body: impl Into<Bytes>) -> Response {
    let mut response = hyper::Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    response
}

/// A 200 response with a JSON body.
pub fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => text(http::StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode: {e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;

    fn start() -> (SocketAddr, Drain) {
        let server = HttpServer::new("test", "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.address();
        let drain = Drain::new();
        tokio::spawn(server.run(drain.clone(), |_| async { text(http::StatusCode::OK, "ok\n") }));
        (addr, drain)
    }

    /// On a paused clock: a client that never finishes its headers is
    /// dropped when the header deadline passes, not kept forever.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_finishes_its_headers_is_dropped() {
        let (addr, _drain) = start();
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let started = tokio::time::Instant::now();
        let mut buf = Vec::new();
        let _ = client.read_to_end(&mut buf).await;
        let waited = started.elapsed();
        assert!(waited >= HEADER_READ_TIMEOUT && waited < MAX_CONNECTION_AGE, "closed after {waited:?}");
        assert!(!String::from_utf8_lossy(&buf).contains("200 OK"), "{buf:?}");
    }

    #[tokio::test]
    async fn connections_beyond_the_bound_are_closed_at_once() {
        let (addr, _drain) = start();
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let mut buf = [0u8; 64];
            assert!(client.read(&mut buf).await.unwrap() > 0, "a connection within the bound is served");
            held.push(client);
        }
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), extra.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the extra connection was not closed: {read:?}");
    }
}
