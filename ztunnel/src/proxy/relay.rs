//! Copying bytes both ways between the two legs of a proxied connection,
//! with half-close, live byte counts and cancellation (policy revocation,
//! drain deadline).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Copy buffer per direction: large enough that bulk transfers move in few
/// syscalls, small enough for thousands of concurrent connections.
const COPY_BUFFER: usize = 64 * 1024;

/// Bytes moved so far, kept even when the copy fails.
#[derive(Debug, Default)]
pub(super) struct Totals {
    /// From the client (request direction).
    pub received: AtomicU64,
    /// To the client (response direction).
    pub sent: AtomicU64,
}

impl Totals {
    pub(super) fn get(&self) -> (u64, u64) {
        (self.sent.load(Ordering::Relaxed), self.received.load(Ordering::Relaxed))
    }
}

/// Counts what a stream yields, into a total and a metric.
struct Counted<'a, S> {
    inner: &'a mut S,
    total: &'a AtomicU64,
    metric: &'a Counter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.total.fetch_add(n, Ordering::Relaxed);
            self.metric.increment(n);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// How a relay ended.
#[derive(Debug)]
pub(super) enum RelayEnd {
    /// Both directions finished.
    Done,
    /// One side failed.
    Failed(io::Error),
    /// `cancel` fired (policy now denies, or drain ran out).
    Cancelled,
    /// The HBONE peer answered the CONNECT with this status instead of 200.
    Refused(http::StatusCode),
}

/// Copies until both directions are done, an error, or `cancel`.
pub(super) async fn relay<D, U>(
    downstream: &mut D,
    upstream: &mut U,
    totals: &Arc<Totals>,
    metrics: &crate::metrics::ByteCounters,
    cancel: &CancellationToken,
) -> RelayEnd
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut down = Counted { inner: downstream, total: &totals.received, metric: &metrics.received };
    let mut up = Counted { inner: upstream, total: &totals.sent, metric: &metrics.sent };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, COPY_BUFFER, COPY_BUFFER);
    tokio::select! {
        result = copy => match result {
            Ok(_) => RelayEnd::Done,
            Err(error) => RelayEnd::Failed(error),
        },
        () = cancel.cancelled() => RelayEnd::Cancelled,
    }
}

/// Like [`relay`], between the client's HBONE stream and a socket to the
/// pod, without the generic copy's intermediate buffers (see
/// `mesh::hbone::copy`).
pub(super) async fn relay_tunnel(
    socket: &mut tokio::net::TcpStream,
    tunnel: mesh::hbone::H2Stream,
    totals: &Arc<Totals>,
    metrics: &crate::metrics::ByteCounters,
    cancel: &CancellationToken,
) -> RelayEnd {
    let (from_client, to_client) = tallies(totals, metrics);
    tokio::select! {
        result = mesh::hbone::copy::relay(socket.split(), tunnel, &to_client, &from_client) => match result {
            Ok(()) => RelayEnd::Done,
            Err(error) => RelayEnd::Failed(error),
        },
        () = cancel.cancelled() => RelayEnd::Cancelled,
    }
}

/// Like [`relay_tunnel`] from the client's side, on a CONNECT whose answer
/// has not arrived: the client's bytes go out at once (one round trip less
/// for every new connection); a refusal ends it with [`RelayEnd::Refused`].
pub(super) async fn relay_opening(
    socket: &mut tokio::net::TcpStream,
    pending: mesh::hbone::client::PendingStream,
    totals: &Arc<Totals>,
    metrics: &crate::metrics::ByteCounters,
) -> RelayEnd {
    use mesh::hbone::copy::RelayError;
    let (from_client, to_client) = tallies(totals, metrics);
    match mesh::hbone::copy::relay_opening(socket.split(), pending, &from_client, &to_client).await {
        Ok(()) => RelayEnd::Done,
        Err(RelayError::Refused(status)) => RelayEnd::Refused(status),
        Err(RelayError::Io(error)) => RelayEnd::Failed(error),
    }
}

/// Counters for bytes from and to the client: the connection's totals and
/// its live metrics.
fn tallies<'a>(
    totals: &'a Totals,
    metrics: &'a crate::metrics::ByteCounters,
) -> (impl Fn(u64) + Sync + 'a, impl Fn(u64) + Sync + 'a) {
    let from_client = |n: u64| {
        totals.received.fetch_add(n, Ordering::Relaxed);
        metrics.received.increment(n);
    };
    let to_client = |n: u64| {
        totals.sent.fetch_add(n, Ordering::Relaxed);
        metrics.sent.increment(n);
    };
    (from_client, to_client)
}
