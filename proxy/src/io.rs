//! I/O adaptors shared by the network and HTTP layers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::stats::Counter;

/// A connection's bytes: plain TCP, or TLS over it (either side).
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    /// Plain TCP that sends a prefix (a PROXY protocol header) with its first write.
    TcpPrefixed(Prefixed<TcpStream>),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// An in-memory connection: to or from an internal listener (and the fuzz harness's).
    Internal(Internal),
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::TcpPrefixed($s) => $e,
            Stream::ClientTls($s) => $e,
            Stream::ServerTls($s) => $e,
            Stream::Internal($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::TcpPrefixed(s) => s.is_write_vectored(),
            Stream::ClientTls(s) => s.is_write_vectored(),
            Stream::ServerTls(s) => s.is_write_vectored(),
            Stream::Internal(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// One end of an in-memory connection (Envoy's user space socket), with the bytes a listener
/// filter read ahead on it, which are read again first.
#[derive(Debug)]
pub struct Internal {
    io: tokio::io::DuplexStream,
    ahead: Vec<u8>,
    taken: usize,
}

impl Internal {
    /// Wraps one end of a pipe.
    pub fn new(io: tokio::io::DuplexStream) -> Self {
        Internal {
            io,
            ahead: Vec::new(),
            taken: 0,
        }
    }

    /// The bytes read ahead and not yet taken.
    fn pending(&self) -> &[u8] {
        &self.ahead[self.taken..]
    }

    /// Waits until more than `seen` bytes are pending (or `max` are) and returns them, up to
    /// `max`, leaving them to be read. An error once the peer has closed its side.
    pub async fn peek(&mut self, seen: usize, max: usize) -> io::Result<&[u8]> {
        use tokio::io::AsyncReadExt;
        while self.pending().len() <= seen && self.pending().len() < max {
            if self.taken > 0 {
                self.ahead.drain(..self.taken);
                self.taken = 0;
            }
            let mut chunk = [0u8; 4096];
            let want = (max - self.ahead.len()).min(chunk.len());
            let n = self.io.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.ahead.extend_from_slice(&chunk[..n]);
        }
        let p = self.pending();
        Ok(&p[..p.len().min(max)])
    }

    /// Whether the other end has already closed, without waiting: what it sent first is kept
    /// to be read.
    pub fn closed_already(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let mut buf = ReadBuf::new(&mut chunk);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut self.io).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => true,
            Poll::Ready(Ok(())) => {
                self.ahead.extend_from_slice(buf.filled());
                false
            }
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        }
    }

    /// Takes the first `n` pending bytes (already seen).
    pub fn consume(&mut self, n: usize) -> io::Result<()> {
        if n > self.pending().len() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        self.taken += n;
        Ok(())
    }
}

impl AsyncRead for Internal {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.ahead.len() {
            let p = &this.ahead[this.taken..];
            let n = p.len().min(buf.remaining());
            buf.put_slice(&p[..n]);
            this.taken += n;
            if this.taken == this.ahead.len() {
                this.ahead = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Internal {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A stream whose first write carries `prefix` in front of the data, in one segment where the
/// socket allows, as Envoy sends a PROXY protocol header with the first bytes.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    sent: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Wraps `inner`; `prefix` goes out before anything else.
    pub fn new(inner: S, prefix: Vec<u8>) -> Self {
        Prefixed {
            prefix,
            sent: 0,
            inner,
        }
    }
    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> Prefixed<S> {
    /// Sends what is left of the prefix.
    fn poll_prefix(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.prefix.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.prefix[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        while this.sent < this.prefix.len() {
            let left = this.prefix.len() - this.sent;
            let bufs = [
                io::IoSlice::new(&this.prefix[this.sent..]),
                io::IoSlice::new(data),
            ];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &bufs))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n > left {
                this.sent = this.prefix.len();
                return Poll::Ready(Ok(n - left));
            }
            this.sent += n;
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A flush before any data (clients flush eagerly) leaves the prefix for the first
        // write, so the two travel together.
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_prefix(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream that counts the bytes read from and written to it (`*_cx_rx_bytes_total`,
/// `*_cx_tx_bytes_total`).
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    rx: Counter,
    tx: Counter,
}

impl<T> Counted<T> {
    /// Wraps `inner`, adding to `rx` on reads and `tx` on writes.
    pub fn new(inner: T, rx: Counter, tx: Counter) -> Self {
        Counted { inner, rx, tx }
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl Stream {
    /// Sends a pending prefix now rather than with the first data: for protocols where the
    /// server speaks first, which must still see the PROXY header at once.
    pub async fn send_prefix(&mut self) -> io::Result<()> {
        if let Stream::TcpPrefixed(p) = self {
            std::future::poll_fn(|cx| p.poll_prefix(cx)).await?;
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.rx.add((buf.filled().len() - before) as u64);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, data))?;
        self.tx.add(n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.tx.add(n as u64);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A flow-control event and its end: paused/resumed reading, or backed up/drained.
#[derive(Debug, Clone, Default)]
pub struct FlowPair {
    /// Counts the start (`*_paused_reading_total`, `*_backed_up_total`).
    pub start: Counter,
    /// Counts the end (`*_resumed_reading_total`, `*_drained_total`).
    pub end: Counter,
}

impl FlowPair {
    /// The pair of two counters.
    pub fn new(start: &Counter, end: &Counter) -> Self {
        FlowPair {
            start: start.clone(),
            end: end.clone(),
        }
    }
}

/// A value shared between a connection's I/O and the streams on it. The I/O may be handed to
/// hyper's upgrade machinery (websockets), which needs it `Send`; a connection lives on one
/// worker, so the lock is never contended.
#[derive(Debug, Default)]
pub struct Slot<T>(std::sync::Mutex<T>);

impl<T> Slot<T> {
    /// A slot holding `value`.
    pub fn new(value: T) -> Self {
        Slot(std::sync::Mutex::new(value))
    }

    /// The value, for reading or changing.
    pub fn borrow_mut(&self) -> std::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The value, for reading.
    pub fn borrow(&self) -> std::sync::MutexGuard<'_, T> {
        self.borrow_mut()
    }
}

/// The pair of the request a connection is sending now, if any (set per request).
pub type FlowSlot = std::sync::Arc<Slot<Option<FlowPair>>>;

/// A stream that counts its writes backing up (a write has to wait for the peer to read) and
/// draining again (the next write that goes through): in `connection` for the connection itself
/// (upstream: Envoy's `upstream_flow_control_{backed_up,drained}_total`), and in `request` for
/// the other side of the request or response being written, whose reading then stops.
#[derive(Debug)]
pub struct WriteFlow<T> {
    inner: T,
    connection: Option<FlowPair>,
    request: FlowSlot,
    /// While a write waits: the request pair counted at its start, if there was one.
    waiting: Option<Option<FlowPair>>,
    /// How long one write may wait for the peer, and the counter of writes that waited longer
    /// (the stream idle timeout of a client that stops reading).
    stall: Option<(std::time::Duration, crate::stats::Counter)>,
    stall_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteFlow<T> {
    /// Wraps `inner`, counting in `connection` (and in the pair in `request`, when set) when a
    /// write first has to wait and when writing goes on.
    pub fn new(inner: T, connection: Option<FlowPair>, request: FlowSlot) -> Self {
        WriteFlow {
            inner,
            connection,
            request,
            waiting: None,
            stall: None,
            stall_timer: None,
        }
    }

    /// A write that waits longer than `limit` fails (which ends the connection) and counts in
    /// `expired`; without a limit writes wait as long as they must.
    pub fn stall_limit(mut self, limit: Option<std::time::Duration>, expired: Counter) -> Self {
        self.stall = limit.map(|l| (l, expired));
        self
    }

    /// Whether the write that `r` left waiting has now waited too long.
    fn stalled<R>(&mut self, r: &Poll<R>, cx: &mut Context<'_>) -> bool {
        let Some((limit, expired)) = &self.stall else {
            return false;
        };
        if r.is_ready() {
            self.stall_timer = None;
            return false;
        }
        let timer = self
            .stall_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(*limit)));
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.stall_timer = None;
        expired.inc();
        true
    }

    fn note<R>(&mut self, r: Poll<R>) -> Poll<R> {
        match (&r, &self.waiting) {
            (Poll::Pending, None) => {
                if let Some(c) = &self.connection {
                    c.start.inc();
                }
                let request = self.request.borrow().clone();
                if let Some(p) = &request {
                    p.start.inc();
                }
                self.waiting = Some(request);
            }
            (Poll::Ready(_), Some(_)) => {
                if let Some(c) = &self.connection {
                    c.end.inc();
                }
                if let Some(Some(p)) = self.waiting.take() {
                    p.end.inc();
                }
            }
            _ => {}
        }
        r
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteFlow<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteFlow<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if self.stalled(&r, cx) {
            return Poll::Ready(Err(stall_error()));
        }
        self.note(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if self.stalled(&r, cx) {
            return Poll::Ready(Err(stall_error()));
        }
        self.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if self.stalled(&r, cx) {
            return Poll::Ready(Err(stall_error()));
        }
        r
    }

    /// A shutdown writes out what waits first: a peer that does not read lets it wait no longer
    /// than a write.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        if self.stalled(&r, cx) {
            return Poll::Ready(Err(stall_error()));
        }
        r
    }
}

fn stall_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the peer did not read within the stream idle timeout",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn internal_reads_again_what_was_peeked_and_not_what_was_taken() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut end = Internal::new(a);
        b.write_all(b"abc").await.expect("write");
        assert_eq!(end.peek(0, 2).await.expect("peek"), b"ab");
        let more = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            b.write_all(b"def").await.expect("write");
            b.shutdown().await.expect("shutdown");
            b
        });
        // More than the 3 seen: waits for the next bytes.
        assert_eq!(end.peek(3, 16).await.expect("peek"), b"abcdef");
        end.consume(2).expect("consume");
        assert!(end.consume(5).is_err(), "only what was seen can be taken");
        let mut rest = Vec::new();
        end.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"cdef");
        // The peer gone: a peek ends in an error.
        drop(more.await.expect("writer"));
        let (a, b) = tokio::io::duplex(64);
        drop(b);
        let mut end = Internal::new(a);
        assert!(end.peek(0, 4).await.is_err());
    }

    #[tokio::test]
    async fn counts_both_ways() {
        let (a, mut b) = tokio::io::duplex(64);
        let (rx, tx) = (Counter::default(), Counter::default());
        let mut counted = Counted::new(a, rx.clone(), tx.clone());
        counted.write_all(b"hello").await.expect("write");
        b.write_all(b"abc").await.expect("write");
        let mut buf = [0u8; 3];
        counted.read_exact(&mut buf).await.expect("read");
        assert_eq!((rx.value(), tx.value()), (3, 5));
    }

    #[tokio::test]
    async fn write_flow_counts_backing_up_and_draining() {
        let (a, mut b) = tokio::io::duplex(4);
        let (up, down) = (Counter::default(), Counter::default());
        let (paused, resumed) = (Counter::default(), Counter::default());
        let slot: FlowSlot = std::sync::Arc::new(Slot::new(Some(FlowPair::new(&paused, &resumed))));
        let mut w = WriteFlow::new(a, Some(FlowPair::new(&up, &down)), slot);
        let writer = async {
            w.write_all(b"0123456789").await.expect("write");
        };
        let reader = async {
            let mut buf = [0u8; 10];
            b.read_exact(&mut buf).await.expect("read");
        };
        tokio::join!(writer, reader);
        assert!(up.value() >= 1, "a 4-byte pipe backs up under 10 bytes");
        assert_eq!(up.value(), down.value(), "every back-up drained");
        assert_eq!(
            paused.value(),
            up.value(),
            "the request's pauses counted too"
        );
        assert_eq!(resumed.value(), up.value());
    }
}
