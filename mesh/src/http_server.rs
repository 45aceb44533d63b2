//! A small HTTP/1.1 server for the node-local endpoints (readiness, admin,
//! metrics). Same shape as every listener: [`HttpServer::new`] binds and
//! fails fast, [`HttpServer::address`] reports where, [`HttpServer::run`]
//! serves until drained.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::drain::Drain;

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
        loop {
            let accepted = tokio::select! {
                () = drain.signaled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let Ok((stream, peer)) = accepted else { continue };
            let handler = handler.clone();
            let name = self.name;
            let conn_drain = drain.clone();
            drain.spawn(async move {
                let service = service_fn(move |req| {
                    let response = handler(req);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                // Keep-alive connections would otherwise hold the drain open.
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    () = conn_drain.signaled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
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
