//! Body types that stream through the proxy without buffering whole messages.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The error type of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body in either direction: from a hyper connection, from an h2 stream, or made locally.
#[derive(Debug)]
pub enum ProxyBody {
    /// No body.
    Empty,
    /// A body made here (local replies).
    Full(Option<Bytes>),
    /// A body read by hyper (downstream requests, HTTP/1.1 upstream responses), counting bytes.
    Incoming(Incoming, Option<Rc<Cell<u64>>>),
    /// An HTTP/2 upstream response body read with `h2`, releasing flow-control capacity as the
    /// bytes move on, so the upstream can only send what the downstream has taken.
    H2 {
        /// The stream.
        recv: h2::RecvStream,
        /// Data is finished; trailers may follow.
        data_done: bool,
    },
    /// A body passing through HTTP filters.
    Filtered(Box<crate::http::filter::FilteredBody>),
}

impl ProxyBody {
    /// A body with these bytes.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::Full(Some(b))
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Incoming(inc, counter) => {
                let frame = ready!(Pin::new(inc).poll_frame(cx));
                if let (Some(Ok(f)), Some(c)) = (&frame, counter) {
                    if let Some(d) = f.data_ref() {
                        c.set(c.get() + d.len() as u64);
                    }
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            ProxyBody::H2 { recv, data_done } => {
                if !*data_done {
                    match ready!(recv.poll_data(cx)) {
                        Some(Ok(data)) => {
                            let _ = recv.flow_control().release_capacity(data.len());
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        None => *data_done = true,
                    }
                }
                match ready!(recv.poll_trailers(cx)) {
                    Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
            ProxyBody::Filtered(f) => Pin::new(f.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Incoming(inc, _) => inc.is_end_stream(),
            ProxyBody::H2 { recv, .. } => recv.is_end_stream(),
            ProxyBody::Filtered(f) => f.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Incoming(inc, _) => inc.size_hint(),
            ProxyBody::H2 { .. } | ProxyBody::Filtered(_) => SizeHint::default(),
        }
    }
}

/// A response body that runs `on_end` once, when the body finishes or is dropped: the end of
/// the stream for stats, access logs and returning an HTTP/1.1 connection to its pool.
pub struct Tracked<E: StreamEnd> {
    inner: ProxyBody,
    end: Option<E>,
    bytes: u64,
}

/// What to do when a response body ends.
pub trait StreamEnd {
    /// `complete` is true when the body ended normally; `bytes` is what was sent.
    fn end(self, complete: bool, bytes: u64);
}

impl<E: StreamEnd> Tracked<E> {
    /// Wraps a body.
    pub fn new(inner: ProxyBody, end: E) -> Self {
        Tracked { inner, end: Some(end), bytes: 0 }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(e) = self.end.take() {
            e.end(complete, self.bytes);
        }
    }
}

impl<E: StreamEnd> Drop for Tracked<E> {
    fn drop(&mut self) {
        // A body that hyper never had to poll (empty, or already ended) is complete.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

impl<E: StreamEnd + Unpin> Body for Tracked<E> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Some(Err(_)) => this.finish(false),
            None => this.finish(true),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
