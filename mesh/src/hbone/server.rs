//! The server side: accepts CONNECT streams on one connection and hands
//! each, validated, to a handler that answers it. A stream that is not a
//! proper CONNECT gets 400 and is closed; the connection and its other
//! streams carry on. h2 itself resets streams that break the protocol.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{H2Stream, HboneError, settings};
use crate::drain::Drain;

/// A well-formed CONNECT request.
#[derive(Debug)]
pub struct ConnectRequest {
    /// `:authority`: where the client wants to go.
    pub authority: SocketAddr,
    pub headers: HeaderMap,
}

/// Answers one CONNECT stream: accept it (200) or reject it with a status.
#[derive(Debug)]
pub struct Responder {
    respond: SendResponse<Bytes>,
    body: RecvStream,
}

impl Responder {
    /// Sends 200 with `headers` and returns the tunnel.
    pub fn accept(mut self, headers: HeaderMap) -> Result<H2Stream, HboneError> {
        let mut response = Response::new(());
        *response.headers_mut() = headers;
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream::new(send, self.body))
    }

    /// Sends `status` and ends the stream.
    pub fn reject(mut self, status: StatusCode) {
        let mut response = Response::new(());
        *response.status_mut() = status;
        // The client may have gone already; nothing to do about it.
        let _ = self.respond.send_response(response, true);
    }
}

/// Why a request was refused before reaching the handler (always 400).
fn validate(request: &Request<RecvStream>) -> Result<SocketAddr, String> {
    if request.method() != Method::CONNECT {
        return Err(format!("method {} is not CONNECT", request.method()));
    }
    let authority = request.uri().authority().ok_or("no :authority")?;
    authority.as_str().parse::<SocketAddr>().map_err(|_| format!(":authority {authority} is not an IP:port"))
}

/// Serves one HBONE connection (after TLS) until the peer closes it, it
/// stops answering PINGs, or `drain` fires (then in-flight streams finish).
/// Each accepted stream's handler runs as its own task under `drain`.
pub async fn serve_connection<IO, H, Fut>(io: IO, drain: Drain, handler: H) -> Result<(), HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(ConnectRequest, Responder) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connection = settings::server_builder().handshake::<_, Bytes>(io).await?;
    let ping_pong = connection.ping_pong();
    let keepalive = async {
        match ping_pong {
            Some(ping_pong) => settings::keepalive(ping_pong).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(keepalive);
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = connection.accept() => match accepted {
                None => return Ok(()),
                Some(Err(error)) => return Err(error.into()),
                Some(Ok((request, respond))) => {
                    match validate(&request) {
                        Ok(authority) => {
                            let (parts, body) = request.into_parts();
                            let connect = ConnectRequest { authority, headers: parts.headers };
                            drain.spawn(handler(connect, Responder { respond, body }));
                        }
                        Err(reason) => {
                            tracing::debug!(%reason, "malformed CONNECT");
                            Responder { respond, body: request.into_body() }.reject(StatusCode::BAD_REQUEST);
                        }
                    }
                }
            },
            () = &mut keepalive => {
                tracing::debug!("HBONE client stopped answering PINGs; closing");
                connection.abrupt_shutdown(h2::Reason::NO_ERROR);
                return Ok(());
            }
            () = drain.signaled(), if !draining => {
                draining = true;
                connection.graceful_shutdown();
            }
        }
    }
}
