//! Body types: what the waypoint sends either way, and the response body
//! that ends the [`log`](super::log) phase when it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;

use super::log::Exchange;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Any body, boxed: upstream responses, local answers, replayed requests.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A response body on its way to the client. It counts the bytes, reads
/// `grpc-status` from trailers, and finishes the exchange's record when the
/// body ends, fails or is dropped (the client went away).
pub struct Observed {
    inner: Body,
    exchange: Option<Box<Exchange>>,
}

impl Observed {
    pub fn new(inner: Body, exchange: Box<Exchange>) -> Self {
        Self { inner, exchange: Some(exchange) }
    }

    fn finish(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            exchange.finish();
        }
    }
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed").finish_non_exhaustive()
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(exchange) = self.exchange.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        exchange.response_bytes += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref() {
                        exchange.note_grpc_status(trailers);
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(exchange) = self.exchange.as_mut() {
                    exchange.add_flag("UPE");
                }
                self.finish();
            }
            Poll::Ready(None) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(exchange) = self.exchange.as_mut()
            && !self.inner.is_end_stream()
        {
            // The client went before the response ended.
            exchange.add_flag("DC");
        }
        self.finish();
    }
}
