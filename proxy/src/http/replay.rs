//! A request body kept for retries: the first attempt reads the client's body through it and
//! every byte is kept (up to the buffer limit, as Envoy's `retry_shadow_buffer_limit`) so that a
//! later attempt can send it again, then go on with what the client has not sent yet.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::http::body::{BoxError, ProxyBody};
use crate::stats::Counter;

/// What the attempts of one request share: the client's body and the part of it already read.
#[derive(Debug)]
pub struct ReplayBuffer {
    inner: RefCell<ProxyBody>,
    chunks: RefCell<Vec<Bytes>>,
    trailers: RefCell<Option<HeaderMap>>,
    size: Cell<usize>,
    limit: usize,
    overflowed: Cell<bool>,
    ended: Cell<bool>,
    /// The attempt whose body may read: a body of an earlier attempt still held by its
    /// connection stops with an error instead of taking bytes meant for the next one.
    current: Cell<u32>,
    /// The attempt waiting for the client's next bytes: woken when a later attempt takes over,
    /// so that it stops (and its connection closes) rather than wait for bytes it cannot have.
    waiting: RefCell<Option<Waker>>,
    abandoned: Counter,
}

impl ReplayBuffer {
    /// Keeps up to `limit` bytes of `inner`; going past the limit counts `abandoned`
    /// (`retry_or_shadow_abandoned`) and ends the chance of a retry.
    pub fn new(inner: ProxyBody, limit: usize, abandoned: Counter) -> Rc<Self> {
        let ended = inner.is_end_stream();
        Rc::new(ReplayBuffer {
            inner: RefCell::new(inner),
            chunks: RefCell::default(),
            trailers: RefCell::default(),
            size: Cell::new(0),
            limit,
            overflowed: Cell::new(false),
            ended: Cell::new(ended),
            current: Cell::new(0),
            waiting: RefCell::default(),
            abandoned,
        })
    }

    /// Whether the body went past the limit, so that it cannot be sent again.
    pub fn overflowed(&self) -> bool {
        self.overflowed.get()
    }

    /// The body of the next attempt, from its first byte.
    pub fn body(self: &Rc<Self>) -> ProxyBody {
        let id = self.current.get() + 1;
        self.current.set(id);
        if let Some(w) = self.waiting.borrow_mut().take() {
            w.wake();
        }
        ProxyBody::Replay(ReplayBody {
            buf: self.clone(),
            id,
            pos: 0,
            trailers_sent: false,
        })
    }
}

/// One attempt's view of a [`ReplayBuffer`].
#[derive(Debug)]
pub struct ReplayBody {
    buf: Rc<ReplayBuffer>,
    id: u32,
    pos: usize,
    trailers_sent: bool,
}

impl ReplayBody {
    /// Polls the body of this attempt.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let buf = &*self.buf;
        if buf.current.get() != self.id {
            return Poll::Ready(Some(Err("request body taken by a later attempt".into())));
        }
        if let Some(c) = buf.chunks.borrow().get(self.pos) {
            self.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(c.clone()))));
        }
        if buf.ended.get() {
            if self.trailers_sent {
                return Poll::Ready(None);
            }
            self.trailers_sent = true;
            return Poll::Ready(
                buf.trailers
                    .borrow()
                    .clone()
                    .map(|t| Ok(Frame::trailers(t))),
            );
        }
        let frame = {
            let mut inner = buf.inner.borrow_mut();
            match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Pending => {
                    *buf.waiting.borrow_mut() = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(f) => {
                    if inner.is_end_stream() {
                        buf.ended.set(true);
                    }
                    f
                }
            }
        };
        match &frame {
            None => {
                buf.ended.set(true);
                self.trailers_sent = true;
            }
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    if !buf.overflowed.get() {
                        let size = buf.size.get() + d.len();
                        buf.size.set(size);
                        if size > buf.limit {
                            buf.overflowed.set(true);
                            buf.abandoned.inc();
                            buf.chunks.borrow_mut().clear();
                        } else {
                            buf.chunks.borrow_mut().push(d.clone());
                        }
                    }
                    self.pos = buf.chunks.borrow().len();
                } else if let Some(t) = f.trailers_ref() {
                    *buf.trailers.borrow_mut() = Some(t.clone());
                    buf.ended.set(true);
                    self.trailers_sent = true;
                }
            }
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    /// Whether nothing is left to send.
    pub fn is_end_stream(&self) -> bool {
        let buf = &*self.buf;
        buf.ended.get()
            && self.pos >= buf.chunks.borrow().len()
            && (self.trailers_sent || buf.trailers.borrow().is_none())
    }

    /// The size left, exact once the client's body has been read whole.
    pub fn size_hint(&self) -> SizeHint {
        let buf = &*self.buf;
        if buf.ended.get() && !buf.overflowed.get() {
            let left: usize = buf.chunks.borrow()[self.pos.min(buf.chunks.borrow().len())..]
                .iter()
                .map(Bytes::len)
                .sum();
            return SizeHint::with_exact(left as u64);
        }
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn collect(b: ProxyBody) -> Vec<u8> {
        b.collect().await.expect("body").to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_later_attempt_gets_the_same_bytes() {
        let buf = ReplayBuffer::new(ProxyBody::full("hello"), 10, Counter::default());
        assert_eq!(collect(buf.body()).await, b"hello");
        assert_eq!(collect(buf.body()).await, b"hello");
        assert!(!buf.overflowed());
    }

    #[tokio::test]
    async fn past_the_limit_the_body_is_not_kept() {
        let abandoned = Counter::default();
        let buf = ReplayBuffer::new(ProxyBody::full("hello world"), 4, abandoned.clone());
        assert_eq!(collect(buf.body()).await, b"hello world");
        assert!(buf.overflowed());
        assert_eq!(abandoned.value(), 1);
    }

    #[tokio::test]
    async fn an_earlier_attempt_stops_reading() {
        let buf = ReplayBuffer::new(ProxyBody::full("x"), 4, Counter::default());
        let old = buf.body();
        let new = buf.body();
        assert!(old.collect().await.is_err());
        assert_eq!(collect(new).await, b"x");
    }
}
