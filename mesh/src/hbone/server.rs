//! The server side: accepts CONNECT streams on one connection and hands
//! each, validated, to a handler that answers it. A stream that is not a
//! proper CONNECT gets 400 and is closed; the connection and its other
//! streams carry on. h2 itself resets streams that break the protocol.
//!
//! What one client connection may cost is bounded: the HTTP/2 preface must
//! arrive within a deadline; at most [`ServerLimits::max_handlers`] stream
//! handlers run at once, and a stream beyond that is refused (a stream the
//! client resets still holds its handler until the handler notices, so
//! resets cannot be used to run more handlers than streams:
//! CVE-2023-44487's pattern); and a connection that carries no stream for
//! [`ServerLimits::idle_timeout`] is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{H2Stream, HboneError, settings};
use crate::drain::Drain;

/// Streams refused because every handler slot of their connection was taken.
pub const REFUSED_STREAMS: &str = "ambit_hbone_refused_streams_total";

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

    /// Resolves when the client resets the stream (or the connection goes):
    /// work done for the stream after that is wasted, or worse, so callers
    /// race what they do before answering against it.
    pub async fn reset(&mut self) {
        let _ = std::future::poll_fn(|cx| self.respond.poll_reset(cx)).await;
    }
}

/// What one client connection may cost.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Time for the client's HTTP/2 preface and SETTINGS.
    pub handshake_timeout: Duration,
    /// Stream handlers running at once; a stream beyond them is refused.
    pub max_handlers: usize,
    /// A connection without streams for this long is closed (GOAWAY).
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_handlers: settings::SERVER_MAX_STREAMS as usize,
            idle_timeout: Duration::from_secs(600),
        }
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
/// stops answering PINGs, it idles out, or `drain` fires (then in-flight
/// streams finish). Each accepted stream's handler runs as its own task
/// under `drain`.
pub async fn serve_connection<IO, H, Fut>(
    io: IO,
    limits: ServerLimits,
    drain: Drain,
    handler: H,
) -> Result<(), HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(ConnectRequest, Responder) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handshake = settings::server_builder().handshake::<_, Bytes>(io);
    let mut connection = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
        Ok(connection) => connection?,
        Err(_) => return Err(HboneError::PrefaceTimeout(limits.handshake_timeout)),
    };
    let ping_pong = connection.ping_pong();
    let keepalive = async {
        match ping_pong {
            Some(ping_pong) => settings::keepalive(ping_pong).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(keepalive);
    let handlers = Arc::new(Semaphore::new(limits.max_handlers.max(1)));
    let mut idle = IdleClock::new(limits.idle_timeout);
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = connection.accept() => match accepted {
                None => return Ok(()),
                Some(Err(error)) => return Err(error.into()),
                Some(Ok((request, respond))) => {
                    idle.busy();
                    dispatch(request, respond, &handlers, &drain, &handler);
                }
            },
            () = &mut keepalive => {
                tracing::debug!("HBONE client stopped answering PINGs; closing");
                connection.abrupt_shutdown(h2::Reason::NO_ERROR);
                return Ok(());
            }
            () = idle.expired(&handlers, limits.max_handlers), if !draining => {
                tracing::debug!(after = ?limits.idle_timeout, "HBONE connection idle; closing");
                draining = true;
                connection.graceful_shutdown();
            }
            () = drain.signaled(), if !draining => {
                draining = true;
                connection.graceful_shutdown();
            }
        }
    }
}

/// Hands a new stream to `handler` in a task of its own, if a handler slot
/// is free. A well-behaved client never finds none: MAX_CONCURRENT_STREAMS
/// keeps its open streams under the slot count. One that resets streams
/// as fast as it opens them does, and those streams are refused
/// (REFUSED_STREAM, which tells the client nothing was done). The
/// connection itself keeps being served either way: its other streams'
/// answers go out through it.
fn dispatch<H, Fut>(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    handlers: &Arc<Semaphore>,
    drain: &Drain,
    handler: &H,
) where
    H: Fn(ConnectRequest, Responder) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(permit) = handlers.clone().try_acquire_owned() else {
        metrics::counter!(REFUSED_STREAMS).increment(1);
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        return;
    };
    match validate(&request) {
        Ok(authority) => {
            let (parts, body) = request.into_parts();
            let connect = ConnectRequest { authority, headers: parts.headers };
            let handled = handler(connect, Responder { respond, body });
            drain.spawn(async move {
                handled.await;
                drop(permit);
            });
        }
        Err(reason) => {
            tracing::debug!(%reason, "malformed CONNECT");
            Responder { respond, body: request.into_body() }.reject(StatusCode::BAD_REQUEST);
        }
    }
}

/// When a connection last carried a stream.
struct IdleClock {
    timeout: Duration,
    since: Instant,
}

impl IdleClock {
    fn new(timeout: Duration) -> Self {
        Self { timeout, since: Instant::now() }
    }

    fn busy(&mut self) {
        self.since = Instant::now();
    }

    /// Resolves once no handler has run for the whole timeout. Checks a
    /// few times per timeout, so the close comes at most a quarter late.
    async fn expired(&mut self, handlers: &Semaphore, max: usize) {
        let check = (self.timeout / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(check).await;
            if handlers.available_permits() < max.max(1) {
                self.since = Instant::now();
            } else if self.since.elapsed() >= self.timeout {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::DuplexStream;
    use tokio::sync::Notify;

    use super::*;

    type Client = h2::client::SendRequest<Bytes>;

    /// A server over an in-memory pipe whose handlers hold their stream
    /// until `release` fires, counting how many ran.
    fn serve(limits: ServerLimits, release: Arc<Notify>, ran: Arc<AtomicUsize>) -> (DuplexStream, Drain) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let drain = Drain::new();
        let handler = move |_request: ConnectRequest, responder: Responder| {
            let (release, ran) = (release.clone(), ran.clone());
            async move {
                ran.fetch_add(1, Ordering::SeqCst);
                let _tunnel = responder.accept(HeaderMap::new());
                release.notified().await;
            }
        };
        let conn_drain = drain.clone();
        tokio::spawn(async move { serve_connection(server, limits, conn_drain, handler).await });
        (client, drain)
    }

    async fn client(io: DuplexStream) -> Client {
        let (send, connection) = settings::client_builder().handshake(io).await.unwrap();
        tokio::spawn(connection);
        send
    }

    async fn connect(send: &mut Client) -> Result<StatusCode, h2::Error> {
        let ready = send.clone().ready().await?;
        *send = ready;
        let request = Request::builder().method(Method::CONNECT).uri("10.0.0.1:80").body(()).unwrap();
        let (response, _stream) = send.send_request(request, false)?;
        Ok(response.await?.status())
    }

    #[tokio::test]
    async fn streams_beyond_the_handler_slots_are_refused_and_the_rest_served() {
        let (release, ran) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let limits = ServerLimits { max_handlers: 2, ..ServerLimits::default() };
        let (io, _drain) = serve(limits, release.clone(), ran.clone());
        let mut send = client(io).await;
        assert_eq!(connect(&mut send).await.unwrap(), StatusCode::OK);
        assert_eq!(connect(&mut send).await.unwrap(), StatusCode::OK);
        let refused = connect(&mut send).await.unwrap_err();
        assert_eq!(refused.reason(), Some(h2::Reason::REFUSED_STREAM), "{refused}");
        assert_eq!(ran.load(Ordering::SeqCst), 2, "no handler ran for the refused stream");
        // Handlers that finish give their slots back.
        release.notify_waiters();
        let mut answered = None;
        for _ in 0..100 {
            match connect(&mut send).await {
                Ok(status) => {
                    answered = Some(status);
                    break;
                }
                Err(error) if error.reason() == Some(h2::Reason::REFUSED_STREAM) => tokio::task::yield_now().await,
                Err(error) => panic!("{error}"),
            }
        }
        assert_eq!(answered, Some(StatusCode::OK));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_without_a_preface_is_dropped_at_the_deadline() {
        let (client, server) = tokio::io::duplex(1024);
        let limits = ServerLimits { handshake_timeout: Duration::from_secs(3), ..ServerLimits::default() };
        let started = Instant::now();
        let result = serve_connection(server, limits, Drain::new(), |_, _| async {}).await;
        assert!(matches!(result, Err(HboneError::PrefaceTimeout(_))), "{result:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed() {
        let (release, ran) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let limits = ServerLimits { idle_timeout: Duration::from_secs(60), ..ServerLimits::default() };
        let (io, _drain) = serve(limits, release.clone(), ran);
        let (mut send, connection) = settings::client_builder().handshake::<_, Bytes>(io).await.unwrap();
        let closed = tokio::spawn(connection);
        assert_eq!(connect(&mut send).await.unwrap(), StatusCode::OK);
        // Busy: a stream is open; the connection stays however long that is.
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(!closed.is_finished(), "a busy connection was closed");
        release.notify_waiters();
        let started = Instant::now();
        closed.await.unwrap().unwrap();
        let after = started.elapsed();
        assert!(after >= Duration::from_secs(60) && after <= Duration::from_secs(80), "closed after {after:?}");
    }
}
