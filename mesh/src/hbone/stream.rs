//! One CONNECT stream as a byte stream. h2 gives us frames and flow
//! control; copying code wants `AsyncRead + AsyncWrite`. Reads hand back
//! flow-control credit as soon as data is taken, so the peer keeps sending
//! while we copy; writes wait for credit and send at most what was granted.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest DATA payload we queue per write: matches the frame size, so a
/// big write becomes one frame and one TLS record run.
const MAX_WRITE: usize = super::settings::MAX_FRAME_SIZE as usize;

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Data received but not yet read.
    pending: Bytes,
    /// Held while the stream lives; dropped with it (the pool counts streams
    /// through it).
    _guard: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream").field("pending", &self.pending.len()).finish_non_exhaustive()
    }
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self { send, recv, pending: Bytes::new(), _guard: None }
    }

    /// Keeps `guard` alive as long as the stream.
    pub fn with_guard(mut self, guard: impl Send + Sync + 'static) -> Self {
        self._guard = Some(Box::new(guard));
        self
    }

    /// The stream's halves, data already received but not read, and the
    /// guard (keep it alive while using the halves).
    #[allow(clippy::type_complexity, reason = "a plain tuple of the parts")]
    pub fn into_parts(self) -> (SendStream<Bytes>, RecvStream, Bytes, Option<Box<dyn Send + Sync>>) {
        (self.send, self.recv, self.pending, self._guard)
    }

    /// Abandons the stream with RST_STREAM instead of a clean end.
    pub fn reset(&mut self, reason: h2::Reason) {
        self.send.send_reset(reason);
    }
}

pub(super) fn to_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        return error.into_io().unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    // A peer's RST_STREAM(NO_ERROR/CANCEL) ends its side the way a TCP reset does.
    io::Error::new(io::ErrorKind::ConnectionReset, error)
}

impl AsyncRead for H2Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Credit back at once: the data is ours now, and the
                    // peer should not stall while we copy it on.
                    let len = data.len();
                    let _ = self.recv.flow_control().release_capacity(len);
                    self.pending = data;
                }
                Some(Err(error)) => return Poll::Ready(Err(to_io(error))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let wanted = buf.len().min(MAX_WRITE);
        self.send.reserve_capacity(wanted);
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let n = granted.min(wanted);
                    self.send.send_data(Bytes::copy_from_slice(&buf[..n]), false).map_err(to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(error)) => return Poll::Ready(Err(to_io(error))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 queues frames for the connection task, which writes them out.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Half-close: END_STREAM on an empty DATA frame, like a TCP FIN.
        match self.send.send_data(Bytes::new(), true) {
            Ok(()) => Poll::Ready(Ok(())),
            // Already ended or reset: nothing left to close.
            Err(error) if error.is_reset() || error.is_go_away() => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(to_io(error))),
        }
    }
}
