//! Copying between a byte stream (TCP to a pod) and an HBONE stream without
//! intermediate copies: socket reads land in a `BytesMut` whose frozen
//! chunks go to h2 as DATA payloads, and h2's received payloads are written
//! to the socket as they are. The generic `AsyncRead`/`AsyncWrite` path
//! ([`super::H2Stream`]) costs two extra memcpys per byte; at tunnel speeds
//! on a busy node that is a measurable share of the CPU (see BENCHMARKS.md).

use std::io;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::H2Stream;
use super::client::PendingStream;

/// Read size from the socket. Large reads mean fewer syscalls and wakeups
/// per byte, and DATA frames that fill TLS records.
const READ_CHUNK: usize = 256 * 1024;

/// Told about bytes as they pass (totals, live metrics).
pub type Tally<'a> = &'a (dyn Fn(u64) + Sync);

/// Copies both ways between a byte stream (its read and write halves; a
/// `TcpStream::split` costs nothing) and `stream`, until both directions end;
/// each half-closes its destination when its source ends. A direction that
/// fails (the peer reset the stream, say) ends the other at once: waiting
/// for the far side to close would keep a dead tunnel's socket open. `from_io`
/// counts bytes read from `io`, `from_stream` bytes received on the tunnel.
pub async fn relay<R, W>(
    (mut read_half, mut write_half): (R, W),
    stream: H2Stream,
    from_io: Tally<'_>,
    from_stream: Tally<'_>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (send, recv, pending, _guard) = stream.into_parts();
    let up = io_to_h2(&mut read_half, send, from_io);
    let down = h2_to_io(recv, pending, &mut write_half, from_stream);
    tokio::try_join!(up, down).map(|((), ())| ())
}

/// How a relay over a tunnel still being established can fail.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The server answered the CONNECT with something other than 200.
    #[error("the peer answered CONNECT with {0}")]
    Refused(http::StatusCode),
    #[error("{0}")]
    Io(io::Error),
}

/// Like [`relay`], starting on a CONNECT still waiting for its answer: data
/// from `io` goes out at once; data back waits for the 200. Anything but
/// 200 ends the relay with [`RelayError::Refused`].
pub async fn relay_opening<R, W>(
    (mut read_half, mut write_half): (R, W),
    pending: PendingStream,
    from_io: Tally<'_>,
    from_stream: Tally<'_>,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let PendingStream { send, response, guard: _guard, answer_timeout } = pending;
    // The answer's status, once known: a refusal also resets the stream, so
    // the upload can fail first; the status says which error to report.
    let (status_tx, status_rx) = tokio::sync::oneshot::channel();
    let up = async { io_to_h2(&mut read_half, send, from_io).await.map_err(RelayError::Io) };
    let down = async {
        let response = PendingStream::answer(response, answer_timeout).await.map_err(|e| match e {
            super::HboneError::H2(e) => RelayError::Io(super::stream::to_io(e)),
            other => RelayError::Io(io::Error::new(io::ErrorKind::TimedOut, other.to_string())),
        })?;
        let _ = status_tx.send(response.status());
        if response.status() != http::StatusCode::OK {
            return Err(RelayError::Refused(response.status()));
        }
        h2_to_io(response.into_body(), Bytes::new(), &mut write_half, from_stream).await.map_err(RelayError::Io)
    };
    tokio::pin!(up, down);
    let mut up_done = false;
    loop {
        tokio::select! {
            result = &mut up, if !up_done => match result {
                Ok(()) => up_done = true,
                Err(error) => {
                    // Did the peer refuse? Then that is the error, not its echo.
                    let refused = tokio::select! {
                        status = status_rx => status.ok().filter(|s| *s != http::StatusCode::OK),
                        result = &mut down => match result {
                            Err(RelayError::Refused(status)) => Some(status),
                            _ => None,
                        },
                    };
                    return Err(refused.map_or(error, RelayError::Refused));
                }
            },
            result = &mut down => {
                result?;
                if up_done {
                    return Ok(());
                }
                return up.await;
            }
        }
    }
}

async fn io_to_h2<R: AsyncRead + Unpin>(io: &mut R, mut send: SendStream<Bytes>, tally: Tally<'_>) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        if buf.capacity() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let n = io.read_buf(&mut buf).await?;
        if n == 0 {
            // Half-close: END_STREAM, as the TCP peer sent FIN.
            return match send.send_data(Bytes::new(), true) {
                Ok(()) => Ok(()),
                Err(e) if e.is_reset() || e.is_go_away() => Ok(()),
                Err(e) => Err(super::stream::to_io(e)),
            };
        }
        tally(n as u64);
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
                .await
                .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?
                .map_err(super::stream::to_io)?;
            if granted == 0 {
                continue;
            }
            let part = chunk.split_to(granted.min(chunk.len()));
            send.send_data(part, false).map_err(super::stream::to_io)?;
        }
    }
}

async fn h2_to_io<W: AsyncWrite + Unpin>(
    mut recv: RecvStream,
    pending: Bytes,
    io: &mut W,
    tally: Tally<'_>,
) -> io::Result<()> {
    if !pending.is_empty() {
        tally(pending.len() as u64);
        io.write_all(&pending).await?;
    }
    while let Some(data) = recv.data().await {
        let data = data.map_err(super::stream::to_io)?;
        let _ = recv.flow_control().release_capacity(data.len());
        tally(data.len() as u64);
        io.write_all(&data).await?;
    }
    io.shutdown().await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderMap, Method, Request};

    use super::*;
    use crate::drain::Drain;
    use crate::hbone::server::{self, ServerLimits};
    use crate::hbone::settings;

    /// A client that resets its stream ends the relay at once, although the
    /// pod on the other side stays silent and open.
    #[tokio::test]
    async fn a_reset_stream_ends_the_relay_without_waiting_for_the_pod() {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let (relay_done, relayed) = tokio::sync::oneshot::channel();
        let relay_done = std::sync::Mutex::new(Some(relay_done));
        let handler = move |_request, responder: server::Responder| {
            let done = relay_done.lock().ok().and_then(|mut d| d.take());
            async move {
                let Ok(tunnel) = responder.accept(HeaderMap::new()) else { return };
                // The pod: open, silent.
                let (mut pod, _pod_peer) = tokio::io::duplex(1024);
                let none = |_: u64| {};
                let result = relay(tokio::io::split(&mut pod), tunnel, &none, &none).await;
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
        };
        tokio::spawn(server::serve_connection(server_io, ServerLimits::default(), Drain::new(), handler));
        let (send, connection) = settings::client_builder().handshake::<_, Bytes>(client_io).await.unwrap();
        tokio::spawn(connection);
        let mut send = send.ready().await.unwrap();
        let request = Request::builder().method(Method::CONNECT).uri("10.0.0.1:80").body(()).unwrap();
        let (response, mut stream) = send.send_request(request, false).unwrap();
        assert_eq!(response.await.unwrap().status(), http::StatusCode::OK);
        stream.send_reset(h2::Reason::CANCEL);
        let result = tokio::time::timeout(Duration::from_secs(10), relayed).await;
        assert!(matches!(result, Ok(Ok(Err(_)))), "the relay outlived its reset stream: {result:?}");
    }
}
