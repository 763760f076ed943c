//! How a downstream HTTP connection that the proxy closes ends, as Envoy's `FlushWriteAndDelay`:
//! once the codec has written its last bytes (a response with `connection: close`, an HTTP/2
//! GOAWAY) and asks to close, the socket stays open until the client closes it or
//! `delayed_close_timeout` passes, so that a client still sending does not get a reset in place
//! of the response. An HTTP/2 connection that drains (GOAWAY) is not closed before its
//! `drain_timeout` has passed either.
//!
//! Only the codec's own close goes through here; connections the connection manager drops
//! (the HTTP/1.1 idle timeout, too many premature resets, the end of a drain) close at once,
//! as in Envoy. The timer exists only once the connection closes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::io::Slot;

/// What the connection manager and the close share about one connection.
#[derive(Debug)]
pub struct CloseState {
    /// When the drain of an HTTP/2 connection allows it to close (`drain_timeout` after its
    /// first GOAWAY); set by the connection manager.
    drain_until: Slot<Option<Instant>>,
    /// Whether a close now waits for the client (`delayed_close_timeout`). As in Envoy, it
    /// does not after a response to a request that had fully arrived (the client expects the
    /// close; nothing it sends can race it), and does otherwise: a codec error, a request cut
    /// short, a drained HTTP/2 connection.
    delay: AtomicBool,
    /// The codec has asked to close: the connection's own timers no longer apply.
    closing: AtomicBool,
    /// The connection speaks HTTP/2 (set by the request-head guard): only a drain's close
    /// waits (Envoy drops a connection whose keepalive PING went unanswered at once).
    http2: Arc<AtomicBool>,
}

impl Default for CloseState {
    fn default() -> Self {
        CloseState {
            drain_until: Slot::new(None),
            delay: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            http2: Arc::default(),
        }
    }
}

impl CloseState {
    /// The connection drains from now: it closes no sooner than `drain` later (the first
    /// drain counts), and its close waits for the client.
    pub fn drain_for(&self, drain: Duration) {
        self.delay.store(true, Ordering::Relaxed);
        let mut until = self.drain_until.borrow_mut();
        if until.is_none() {
            *until = Some(Instant::now() + drain);
        }
    }

    /// Whether the connection drains (its close waits for `drain_timeout`).
    pub fn draining(&self) -> bool {
        self.drain_until.borrow_mut().is_some()
    }

    /// Whether a close after the stream that just ended waits for the client.
    pub fn delay_close(&self, delay: bool) {
        self.delay.store(delay, Ordering::Relaxed);
    }

    /// The flag that says the connection speaks HTTP/2.
    pub fn http2_flag(&self) -> Arc<AtomicBool> {
        self.http2.clone()
    }

    /// Whether the codec has begun to close the connection.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }
}

enum Closing {
    Open,
    /// Waiting for the client to close, until the timer.
    Waiting(Pin<Box<Sleep>>),
    Shutdown,
}

/// A downstream stream whose close waits as Envoy's does.
pub struct DelayedClose<T> {
    inner: T,
    delay: Option<Duration>,
    state: Arc<CloseState>,
    closing: Closing,
}

impl<T> DelayedClose<T> {
    /// `inner` with `delayed_close_timeout` (`None`: close at once).
    pub fn new(inner: T, delay: Option<Duration>, state: Arc<CloseState>) -> Self {
        DelayedClose {
            inner,
            delay,
            state,
            closing: Closing::Open,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DelayedClose<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for DelayedClose<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.closing {
                Closing::Open => {
                    this.state.closing.store(true, Ordering::Relaxed);
                    ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
                    let now = Instant::now();
                    let drain_until = *this.state.drain_until.borrow_mut();
                    let drained = drain_until.map_or(now, |t| t.max(now));
                    let waits = this.state.delay.load(Ordering::Relaxed)
                        && (drain_until.is_some() || !this.state.http2.load(Ordering::Relaxed));
                    let delay = match waits {
                        true => this.delay.unwrap_or_default(),
                        false => Duration::ZERO,
                    };
                    let deadline = drained + delay;
                    this.closing = if deadline > now {
                        Closing::Waiting(Box::pin(tokio::time::sleep_until(deadline)))
                    } else {
                        Closing::Shutdown
                    };
                }
                Closing::Waiting(timer) => {
                    if timer.as_mut().poll(cx).is_ready() {
                        this.closing = Closing::Shutdown;
                        continue;
                    }
                    // What the client still sends is read and dropped; its close ends the wait.
                    let mut scratch = [0u8; 4096];
                    let mut rb = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => {}
                        Poll::Ready(_) => this.closing = Closing::Shutdown,
                    }
                }
                Closing::Shutdown => return Pin::new(&mut this.inner).poll_shutdown(cx),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_client_until_the_delay() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut s = DelayedClose::new(server, Some(Duration::from_secs(1)), Arc::default());
        let start = Instant::now();
        s.write_all(b"bye").await.expect("write");
        // The client sends more meanwhile: dropped, and the close still waits for the delay.
        client.write_all(b"more").await.expect("write");
        s.shutdown().await.expect("shutdown");
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"bye");
    }

    #[tokio::test(start_paused = true)]
    async fn the_clients_close_ends_the_wait() {
        let (client, server) = tokio::io::duplex(1024);
        let state = Arc::new(CloseState::default());
        state.drain_for(Duration::from_secs(5));
        let mut s = DelayedClose::new(server, Some(Duration::from_secs(1)), state.clone());
        let start = Instant::now();
        let closer = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(client);
        };
        let (r, ()) = tokio::join!(s.shutdown(), closer);
        let _ = r;
        assert_eq!(Instant::now() - start, Duration::from_millis(300));
        assert!(state.closing());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_holds_the_close_until_its_timeout() {
        let (_client, server) = tokio::io::duplex(1024);
        let state = Arc::new(CloseState::default());
        let start = Instant::now();
        state.drain_for(Duration::from_secs(5));
        // Only the first drain counts.
        state.drain_for(Duration::from_secs(9));
        let mut s = DelayedClose::new(server, None, state);
        s.shutdown().await.expect("shutdown");
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn no_wait_after_a_request_that_fully_arrived() {
        let (_client, server) = tokio::io::duplex(1024);
        let state = Arc::new(CloseState::default());
        state.delay_close(false);
        let mut s = DelayedClose::new(server, Some(Duration::from_secs(1)), state);
        let start = Instant::now();
        s.shutdown().await.expect("shutdown");
        assert_eq!(Instant::now(), start);
    }
}
