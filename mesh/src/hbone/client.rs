//! The client side: an h2 connection over which CONNECT streams are opened.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{H2Stream, HboneError, settings};

/// An HTTP/2 connection to an HBONE server. Cheap to clone; the connection
/// closes when the last clone is gone, or when keepalive finds the peer dead.
#[derive(Clone, Debug)]
pub struct Connection {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// Runs the HTTP/2 handshake over an established (TLS) stream and starts
/// the connection's driver task, with PING keepalive.
pub async fn handshake<IO>(io: IO) -> Result<Connection, HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut connection) = settings::client_builder().handshake(io).await?;
    let closed = Arc::new(AtomicBool::new(false));
    let ping_pong = connection.ping_pong();
    let driver_closed = closed.clone();
    tokio::spawn(async move {
        let keepalive = async {
            match ping_pong {
                Some(ping_pong) => settings::keepalive(ping_pong).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut connection => {}
            () = keepalive => tracing::debug!("HBONE peer stopped answering PINGs; closing"),
        }
        driver_closed.store(true, Ordering::Release);
    });
    Ok(Connection { send, closed })
}

impl Connection {
    /// Wraps a handshaken sender whose driver the test runs itself.
    #[cfg(test)]
    pub(crate) fn for_test(send: SendRequest<Bytes>) -> Self {
        Self { send, closed: Arc::default() }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The peer's current SETTINGS_MAX_CONCURRENT_STREAMS.
    pub fn peer_max_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }

    /// Opens a CONNECT stream to `authority` and waits for the answer.
    pub async fn connect(&self, authority: SocketAddr, headers: HeaderMap) -> Result<H2Stream, HboneError> {
        self.open(authority, headers).await?.established().await
    }

    /// Sends a CONNECT for `authority` without waiting for the answer, so
    /// the client's first bytes can follow at once: the server buffers them
    /// (within the stream's flow-control window) until it has connected.
    /// Saves a round trip on every new tunnel.
    pub async fn open(&self, authority: SocketAddr, headers: HeaderMap) -> Result<PendingStream, HboneError> {
        let mut send = self.send.clone().ready().await?;
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority.to_string())
            .body(())
            .map_err(|e| HboneError::Request(e.to_string()))?;
        *request.headers_mut() = headers;
        let (response, stream) = send.send_request(request, false)?;
        Ok(PendingStream { send: stream, response, guard: None, answer_timeout: DEFAULT_ANSWER_TIMEOUT })
    }
}

/// How long a CONNECT may wait for its answer unless the caller says
/// otherwise: the server connects to the destination before answering.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A CONNECT whose answer has not arrived yet. Data may already be sent.
pub struct PendingStream {
    pub(super) send: h2::SendStream<Bytes>,
    pub(super) response: h2::client::ResponseFuture,
    pub(super) guard: Option<Box<dyn Send + Sync>>,
    pub(super) answer_timeout: Duration,
}

impl std::fmt::Debug for PendingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingStream").finish_non_exhaustive()
    }
}

impl PendingStream {
    /// Keeps `guard` alive as long as the stream.
    pub fn with_guard(mut self, guard: impl Send + Sync + 'static) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// Bounds the wait for the answer.
    pub fn with_answer_timeout(mut self, timeout: Duration) -> Self {
        self.answer_timeout = timeout;
        self
    }

    /// The answer, or [`HboneError::AnswerTimeout`] once the wait is over.
    pub(super) async fn answer(
        response: h2::client::ResponseFuture,
        timeout: Duration,
    ) -> Result<http::Response<h2::RecvStream>, HboneError> {
        match tokio::time::timeout(timeout, response).await {
            Ok(response) => Ok(response?),
            Err(_) => Err(HboneError::AnswerTimeout(timeout)),
        }
    }

    /// Waits for the answer: the tunnel on 200, the status otherwise.
    pub async fn established(self) -> Result<H2Stream, HboneError> {
        let response = Self::answer(self.response, self.answer_timeout).await?;
        if response.status() != StatusCode::OK {
            return Err(HboneError::Status(response.status()));
        }
        let stream = H2Stream::new(self.send, response.into_body());
        Ok(match self.guard {
            Some(guard) => stream.with_guard(guard),
            None => stream,
        })
    }
}
