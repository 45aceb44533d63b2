//! Phase 2, detect: what the tunnel carries. A port named for TCP
//! (`tcp`, `tcp-…`, Istio's convention) is opaque without looking. Else
//! the first bytes decide: the HTTP/2 connection preface is HTTP/2 (prior
//! knowledge: gRPC and h2c clients), an HTTP method and a space is
//! HTTP/1.1, anything else is opaque TCP. A client that sends nothing for
//! [`SNIFF_TIMEOUT`] (a server-first protocol) is opaque too.
//! Bytes read to decide are replayed to whoever handles the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use mesh::hbone::H2Stream;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

use super::Target;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest method we recognise (`OPTIONS`, `CONNECT`) plus its space.
const MAX_METHOD: usize = 8;
/// How long a silent client may take before its stream counts as opaque.
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

/// Reads as much as it takes to decide, and returns the stream with those
/// bytes put back in front.
pub async fn protocol(mut stream: H2Stream, target: &Target) -> (Protocol, Prefixed<H2Stream>) {
    if let Target::Service { port_name: Some(name), .. } = target
        && (name == "tcp" || name.starts_with("tcp-"))
    {
        return (Protocol::Opaque, Prefixed::new(Bytes::new(), stream));
    }
    let mut seen = BytesMut::with_capacity(H2_PREFACE.len());
    let decided = tokio::time::timeout(SNIFF_TIMEOUT, async {
        loop {
            if let Some(protocol) = classify(&seen) {
                return protocol;
            }
            match stream.read_buf(&mut seen).await {
                Ok(0) | Err(_) => return Protocol::Opaque,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(Protocol::Opaque);
    (decided, Prefixed::new(seen.freeze(), stream))
}

/// `None` while the bytes so far could still be either.
fn classify(seen: &[u8]) -> Option<Protocol> {
    if seen.is_empty() {
        return None;
    }
    let preface_len = seen.len().min(H2_PREFACE.len());
    if seen[..preface_len] == H2_PREFACE[..preface_len] {
        return (seen.len() >= H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    let token_len = seen.iter().take(MAX_METHOD).take_while(|b| b.is_ascii_uppercase()).count();
    match seen.get(token_len) {
        Some(b' ') if token_len > 0 => Some(Protocol::Http1),
        None if token_len == seen.len() && token_len < MAX_METHOD => None,
        _ => Some(Protocol::Opaque),
    }
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_decide() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTTP/2"), None, "a preface cut short waits for more");
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(Protocol::Opaque), "TLS is opaque");
        assert_eq!(classify(b"hello"), Some(Protocol::Opaque));
        assert_eq!(classify(b"ABCDEFGHIJ"), Some(Protocol::Opaque), "too long to be a method");
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Some(Protocol::Http1), "PRI is a method too");
    }
}
