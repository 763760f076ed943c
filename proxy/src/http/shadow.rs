//! Request mirroring (a route's `request_mirror_policies`), as Envoy's streaming shadows: each
//! mirror gets a copy of the request as it is forwarded (host suffixed `-shadow`), its body
//! copied from the client's as the main request reads it, and its response thrown away. A
//! mirror never slows the main request: a copy that falls more than the buffer limit behind
//! is abandoned (`retry_or_shadow_abandoned`) and its request reset.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame};

use crate::http::body::{BoxError, ProxyBody};
use crate::stats::Counter;

/// What one mirror has been given and not yet taken.
#[derive(Debug, Default)]
struct Copy {
    frames: VecDeque<Frame<Bytes>>,
    size: usize,
    ended: bool,
    abandoned: bool,
    waker: Option<Waker>,
}

impl Copy {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// The main request's body, copying each frame to the mirrors as it passes.
#[derive(Debug)]
pub struct Tee {
    inner: ProxyBody,
    copies: Vec<(Rc<RefCell<Copy>>, Counter)>,
    limit: usize,
}

/// A mirror's body: the frames the main request read, in order.
#[derive(Debug)]
pub struct ShadowBody {
    copy: Rc<RefCell<Copy>>,
}

/// Wraps `body` so that each of `abandoned.len()` mirrors gets a copy of it, each held to
/// `limit` bytes not yet sent (going past counts its `abandoned` counter and resets it).
pub fn tee(body: ProxyBody, abandoned: Vec<Counter>, limit: usize) -> (ProxyBody, Vec<ProxyBody>) {
    let ended = body.is_end_stream();
    let mut copies = Vec::new();
    let mut bodies = Vec::new();
    for counter in abandoned {
        let copy = Rc::new(RefCell::new(Copy {
            ended,
            ..Copy::default()
        }));
        bodies.push(ProxyBody::Shadow(ShadowBody { copy: copy.clone() }));
        copies.push((copy, counter));
    }
    let tee = Tee {
        inner: body,
        copies,
        limit,
    };
    (ProxyBody::Tee(Box::new(tee)), bodies)
}

impl Tee {
    /// Polls the client's body, copying what comes.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        for (copy, abandoned) in &self.copies {
            let mut c = copy.borrow_mut();
            if c.abandoned || c.ended {
                continue;
            }
            match &frame {
                Some(Ok(f)) => {
                    let len = f.data_ref().map_or(0, Bytes::len);
                    if c.size + len > self.limit {
                        c.abandoned = true;
                        c.frames.clear();
                        abandoned.inc();
                    } else if let Some(d) = f.data_ref() {
                        c.size += len;
                        c.frames.push_back(Frame::data(d.clone()));
                    } else if let Some(t) = f.trailers_ref() {
                        c.frames.push_back(Frame::trailers(t.clone()));
                    }
                }
                Some(Err(_)) => c.abandoned = true,
                None => c.ended = true,
            }
            if self.inner.is_end_stream() {
                c.ended = true;
            }
            c.wake();
        }
        Poll::Ready(frame)
    }

    /// Whether the client's body is over.
    pub fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // The main request went away before its body ended: the mirrors cannot have the rest.
        for (copy, _) in &self.copies {
            let mut c = copy.borrow_mut();
            if !c.ended {
                c.abandoned = true;
            }
            c.wake();
        }
    }
}

impl ShadowBody {
    /// The next frame the main request passed on.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut c = self.copy.borrow_mut();
        if c.abandoned {
            return Poll::Ready(Some(
                Err("the mirrored request's body was abandoned".into()),
            ));
        }
        if let Some(f) = c.frames.pop_front() {
            c.size -= f.data_ref().map_or(0, Bytes::len);
            return Poll::Ready(Some(Ok(f)));
        }
        if c.ended {
            return Poll::Ready(None);
        }
        c.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether everything was taken.
    pub fn is_end_stream(&self) -> bool {
        let c = self.copy.borrow();
        c.ended && c.frames.is_empty() && !c.abandoned
    }
}

/// The host a mirror sends: `-shadow` appended to the host name, before any port (Envoy's
/// `shadowAppendedHost`).
pub fn shadow_host(host: &str) -> String {
    let (name, port) = match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            host.split_at(i)
        }
        _ => (host, ""),
    };
    format!("{name}-shadow{port}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn the_shadow_host_keeps_the_port() {
        assert_eq!(shadow_host("a.example.com"), "a.example.com-shadow");
        assert_eq!(shadow_host("a:8080"), "a-shadow:8080");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
        assert_eq!(shadow_host(""), "-shadow");
    }

    #[tokio::test]
    async fn mirrors_get_the_bytes_the_main_request_reads() {
        let (main, copies) = tee(
            ProxyBody::full("hello"),
            vec![Counter::default(), Counter::default()],
            1024,
        );
        let got = main.collect().await.expect("body").to_bytes();
        assert_eq!(got, "hello");
        for c in copies {
            assert_eq!(c.collect().await.expect("copy").to_bytes(), "hello");
        }
    }

    #[tokio::test]
    async fn a_mirror_too_far_behind_is_abandoned_not_waited_for() {
        let abandoned = Counter::default();
        let (main, mut copies) = tee(
            ProxyBody::full(vec![b'x'; 100]),
            vec![abandoned.clone()],
            10,
        );
        assert_eq!(main.collect().await.expect("body").to_bytes().len(), 100);
        assert_eq!(abandoned.value(), 1);
        assert!(copies.remove(0).collect().await.is_err());
        // A body the main request never finished reading.
        let (main, mut copies) = tee(ProxyBody::full("abc"), vec![Counter::default()], 10);
        drop(main);
        assert!(copies.remove(0).collect().await.is_err());
        // No body at all.
        let (_main, mut copies) = tee(ProxyBody::Empty, vec![Counter::default()], 10);
        assert!(copies
            .remove(0)
            .collect()
            .await
            .expect("empty")
            .to_bytes()
            .is_empty());
    }
}
