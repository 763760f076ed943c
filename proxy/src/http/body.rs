//! Body types that stream through the proxy without buffering whole messages.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use std::sync::Arc;

use crate::io::FlowPair;
use crate::overload::accounts::{self, Account};

/// The error type of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How far the downstream request body has got: bytes read and when it ended. The router needs
/// it to start the route timeout when the request is complete and to know whether an HTTP/1.1
/// connection is clean enough to reuse.
#[derive(Debug, Default)]
pub struct RequestProgress {
    /// `downstream_flow_control_{paused,resumed}_reading_total` of the HCM: counted when the
    /// upstream cannot take more of this request's body, so reading from the client stops.
    pub downstream_flow: FlowPair,
    bytes: Cell<u64>,
    failed: Cell<bool>,
    done_at: Cell<Option<tokio::time::Instant>>,
    done: tokio::sync::Notify,
    /// The last time bytes moved either way on the stream, for its idle timeout (kept only
    /// when the stream has one).
    activity: Cell<Option<tokio::time::Instant>>,
    /// The stream's buffer memory account (HTTP/2 streams under `reset_high_memory_stream`):
    /// body chunks it holds, either way, are charged to it.
    pub account: Option<Arc<Account>>,
}

impl RequestProgress {
    /// The progress of a new request whose pauses count in `downstream_flow`.
    pub fn new(downstream_flow: FlowPair) -> Self {
        RequestProgress {
            downstream_flow,
            ..Default::default()
        }
    }

    /// The same, with the stream's memory account.
    pub fn with_account(mut self, account: Option<Arc<Account>>) -> Self {
        self.account = account;
        self
    }

    /// Bytes of request body read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    /// True when reading the request body failed (malformed chunking, client reset).
    pub fn failed(&self) -> bool {
        self.failed.get()
    }

    /// Marks the request as complete (the first call counts).
    pub fn mark_done(&self) {
        self.mark_done_at(tokio::time::Instant::now());
    }

    /// Marks the request as complete at `at` (the first call counts).
    pub fn mark_done_at(&self, at: tokio::time::Instant) {
        if self.done_at.get().is_none() {
            self.done_at.set(Some(at));
            self.done.notify_waiters();
        }
    }

    /// Starts recording activity on the stream, from `at` (for its idle timeout).
    pub fn track_activity(&self, at: tokio::time::Instant) {
        self.activity.set(Some(at));
    }

    /// The last activity recorded (now, if none).
    pub fn last_activity(&self) -> tokio::time::Instant {
        self.activity
            .get()
            .unwrap_or_else(tokio::time::Instant::now)
    }

    /// Records activity now, when the stream tracks it.
    pub fn touch(&self) {
        if self.activity.get().is_some() {
            self.activity.set(Some(tokio::time::Instant::now()));
        }
    }

    /// When the request completed, if it has.
    pub fn done_at(&self) -> Option<tokio::time::Instant> {
        self.done_at.get()
    }

    /// Resolves once the request is complete.
    pub async fn wait_done(&self) {
        loop {
            let notified = self.done.notified();
            if self.done_at.get().is_some() {
                return;
            }
            notified.await;
        }
    }
}

/// A body in either direction: from a hyper connection, from an h2 stream, or made locally.
#[derive(Debug)]
pub enum ProxyBody {
    /// No body.
    Empty,
    /// A body made here (local replies).
    Full(Option<Bytes>),
    /// A body read by hyper: downstream requests (with their progress) and HTTP/1.1 upstream
    /// responses.
    Incoming(Incoming, Option<Rc<RequestProgress>>, Trailers),
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
    /// A request body kept for retries.
    Replay(crate::http::replay::ReplayBody),
    /// A request body copied to mirrors as it passes.
    Tee(Box<crate::http::shadow::Tee>),
    /// A mirror's copy of a request body.
    Shadow(crate::http::shadow::ShadowBody),
    /// A request body a filter read the start of before it decided (ext_authz's
    /// `with_request_body`): that start, then the rest.
    Prefixed(Box<Prefixed>),
    /// What a TCP upstream sends back, as a response body (a POST a route's `connect_config`
    /// terminates with `allow_post`).
    Tcp(Box<TcpBody>),
}

/// The bytes of a TCP connection's read half, as body frames, until it closes.
pub struct TcpBody {
    read: tokio::io::ReadHalf<crate::upstream::pool::UpstreamStream>,
    /// Where reads land; each frame is split off it, and it is refilled only when short.
    buf: bytes::BytesMut,
    done: bool,
}

/// What a [`TcpBody`] reads at most at once.
const TCP_READ: usize = 16 * 1024;

impl std::fmt::Debug for TcpBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpBody").field("done", &self.done).finish()
    }
}

impl TcpBody {
    /// The body of what `read` receives.
    pub fn new(read: tokio::io::ReadHalf<crate::upstream::pool::UpstreamStream>) -> Self {
        TcpBody {
            read,
            buf: bytes::BytesMut::new(),
            done: false,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.buf.len() < TCP_READ / 4 {
            self.buf.resize(TCP_READ, 0);
        }
        let mut read = tokio::io::ReadBuf::new(&mut self.buf[..]);
        let polled = tokio::io::AsyncRead::poll_read(Pin::new(&mut self.read), cx, &mut read);
        let n = read.filled().len();
        match ready!(polled) {
            Ok(()) if n == 0 => {
                self.done = true;
                Poll::Ready(None)
            }
            Ok(()) => Poll::Ready(Some(Ok(Frame::data(self.buf.split_to(n).freeze())))),
            Err(e) => {
                self.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }
}

/// What becomes of the trailers of a body hyper read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trailers {
    /// Passed on (HTTP/2).
    Keep,
    /// Dropped, as Envoy's HTTP/1 codec drops what it reads without `enable_trailers`.
    Drop,
}

/// The start of a body already read, then the body it came from.
#[derive(Debug)]
pub struct Prefixed {
    data: Option<Bytes>,
    /// Trailers read with it (the body is then over).
    trailers: Option<http::HeaderMap>,
    rest: ProxyBody,
    /// The body it came from ended while the start was read.
    ended: bool,
}

impl Prefixed {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none() && (self.ended || self.rest.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.data.as_ref().map_or(0, |d| d.len() as u64);
        if self.ended {
            return SizeHint::with_exact(held);
        }
        let rest = self.rest.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(held + rest.lower());
        if let Some(u) = rest.upper() {
            h.set_upper(held + u);
        }
        h
    }
}

/// The reply to a request whose body is over what a filter may buffer: Envoy's 413.
fn payload_too_large() -> crate::http::local_reply::LocalReply {
    crate::http::local_reply::LocalReply {
        status: http::StatusCode::PAYLOAD_TOO_LARGE,
        body: Bytes::from_static(b"Payload Too Large"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: None,
        details: "request_payload_too_large",
        // Envoy answers before the request is over, and closes the connection.
        close: true,
        grpc_status: None,
    }
}

/// Reads the start of a request body for a filter that decides on it: the whole body, or,
/// when `partial`, at least `limit` bytes of it. `body` is left to give what was read, then
/// the rest. Returns what was read and whether that is the whole body; a body over `limit`
/// without `partial` is answered 413, and one that fails while it is read ends the stream
/// (with a reply nobody will read).
pub async fn read_prefix(
    body: &mut ProxyBody,
    limit: usize,
    partial: bool,
) -> Result<(Bytes, bool), crate::http::local_reply::LocalReply> {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    let mut trailers = None;
    let mut ended = body.is_end_stream();
    while !ended {
        match body.frame().await {
            None => ended = true,
            Some(Err(_)) => {
                return Err(crate::http::local_reply::LocalReply {
                    status: http::StatusCode::BAD_REQUEST,
                    body: Bytes::new(),
                    details: "downstream_remote_disconnect",
                    close: true,
                    grpc_status: None,
                    ..payload_too_large()
                })
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => {
                    buf.extend_from_slice(&d);
                    if !partial && buf.len() > limit {
                        return Err(payload_too_large());
                    }
                    ended = body.is_end_stream();
                    if partial && buf.len() >= limit {
                        break;
                    }
                }
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    ended = true;
                }
            },
        }
    }
    let data = buf.freeze();
    let rest = std::mem::replace(body, ProxyBody::Empty);
    *body = ProxyBody::Prefixed(Box::new(Prefixed {
        data: (!data.is_empty()).then(|| data.clone()),
        trailers,
        rest,
        ended,
    }));
    Ok((data, ended))
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

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Incoming(inc, progress, trailers) => {
                let mut frame = ready!(Pin::new(&mut *inc).poll_frame(cx));
                if *trailers == Trailers::Drop && matches!(&frame, Some(Ok(f)) if f.is_trailers()) {
                    frame = None;
                }
                charge_frame(
                    progress.as_ref().and_then(|p| p.account.as_ref()),
                    &mut frame,
                );
                if let Some(p) = progress {
                    match &frame {
                        Some(Ok(f)) => {
                            if let Some(d) = f.data_ref() {
                                p.bytes.set(p.bytes.get() + d.len() as u64);
                                p.touch();
                            }
                            if inc.is_end_stream() {
                                p.mark_done();
                            }
                        }
                        None => p.mark_done(),
                        Some(Err(_)) => p.failed.set(true),
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
            ProxyBody::Replay(r) => r.poll_frame(cx),
            ProxyBody::Tee(t) => t.poll_frame(cx),
            ProxyBody::Shadow(s) => s.poll_frame(cx),
            ProxyBody::Prefixed(p) => p.poll_frame(cx),
            ProxyBody::Tcp(t) => t.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Incoming(inc, ..) => inc.is_end_stream(),
            ProxyBody::H2 { recv, .. } => recv.is_end_stream(),
            ProxyBody::Filtered(f) => f.is_end_stream(),
            ProxyBody::Replay(r) => r.is_end_stream(),
            ProxyBody::Tee(t) => t.is_end_stream(),
            ProxyBody::Shadow(s) => s.is_end_stream(),
            ProxyBody::Prefixed(p) => p.is_end_stream(),
            ProxyBody::Tcp(t) => t.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Incoming(inc, ..) => inc.size_hint(),
            ProxyBody::Replay(r) => r.size_hint(),
            ProxyBody::Filtered(f) => f.size_hint(),
            ProxyBody::Prefixed(p) => p.size_hint(),
            ProxyBody::H2 { .. } | ProxyBody::Tee(_) | ProxyBody::Shadow(_) | ProxyBody::Tcp(_) => {
                SizeHint::default()
            }
        }
    }
}

/// Charges a data frame to the stream's memory account, if it has one.
fn charge_frame<E>(account: Option<&Arc<Account>>, frame: &mut Option<Result<Frame<Bytes>, E>>) {
    if let (Some(account), Some(Ok(f))) = (account, frame.as_mut()) {
        if let Some(d) = f.data_mut() {
            *d = accounts::charge(account, std::mem::take(d));
        }
    }
}

/// The error that makes hyper reset an HTTP/2 stream the overload manager ended.
pub fn overload_reset() -> BoxError {
    Box::new(h2::Error::from(OVERLOAD_RESET_CODE))
}

/// The RST_STREAM code of a stream the overload manager reset, as Envoy sends it.
pub const OVERLOAD_RESET_CODE: h2::Reason = h2::Reason::INTERNAL_ERROR;

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The response was sent in full.
    Complete,
    /// The client went away (or reset the stream) first.
    DownstreamReset,
    /// The upstream failed in the middle of the response.
    UpstreamReset,
    /// The upstream's response body broke its framing (a bad chunk): Envoy's `UPE`.
    UpstreamProtocolError,
    /// The route timeout passed in the middle of the response.
    Timeout,
    /// The overload manager reset the stream (`reset_high_memory_stream`).
    Overload,
    /// A stream timer of the connection manager ran out in the middle of the response.
    Expired(crate::http::timeouts::Expiry),
}

/// What to do when a response body ends.
pub trait StreamEnd {
    /// Called once, with why the stream ended and the body bytes sent.
    fn end(self, reason: EndReason, bytes: u64);

    /// The response's trailers, as they pass.
    fn trailers(&mut self, _trailers: &http::HeaderMap) {}

    /// The stream's buffer memory account, which the response's chunks are charged to and
    /// whose reset ends the response.
    fn account(&self) -> Option<&Arc<Account>> {
        None
    }

    /// Writes the periodic access log lines due (`access_log_flush_interval`), and has `cx`
    /// woken for the next.
    fn poll_periodic(&mut self, _cx: &mut Context<'_>) {}
}

/// The next time a periodic line is due for a stream that started at `start`: a whole number
/// of `interval`s after it, later than now.
pub fn next_tick(start: std::time::Instant, interval: Duration) -> tokio::time::Instant {
    let elapsed = start.elapsed().as_nanos();
    let step = interval.as_nanos().max(1);
    let at = (elapsed / step + 1).saturating_mul(step);
    let at = Duration::from_nanos(u64::try_from(at).unwrap_or(u64::MAX));
    tokio::time::Instant::from_std(start + at)
}

/// The route timeout as a response body sees it: it runs from the end of the request.
#[derive(Debug)]
pub struct Deadline {
    /// The route timeout.
    pub timeout: Option<Duration>,
    /// The request whose end starts the timer.
    pub request: Rc<RequestProgress>,
    /// The cluster's `max_stream_duration` from the start of the upstream request.
    pub upstream_until: Option<tokio::time::Instant>,
}

/// A response body that reports once, when it finishes, fails or is dropped: the end of the
/// stream for stats, access logs and connection reuse. It also enforces the route timeout on the
/// rest of the response once the headers are out.
pub struct Tracked<E: StreamEnd> {
    inner: ProxyBody,
    end: Option<E>,
    bytes: u64,
    deadline: Option<Deadline>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    upstream_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    stream_timers: Option<Rc<crate::http::timeouts::StreamTimers>>,
}

impl<E: StreamEnd> Tracked<E> {
    /// Wraps a body.
    pub fn new(inner: ProxyBody, end: E, deadline: Option<Deadline>) -> Self {
        Tracked {
            inner,
            end: Some(end),
            bytes: 0,
            deadline,
            timer: None,
            upstream_timer: None,
            stream_timers: None,
        }
    }

    /// The connection manager's stream timers also end this response when they run out.
    pub fn with_timers(mut self, timers: Option<Rc<crate::http::timeouts::StreamTimers>>) -> Self {
        self.stream_timers = timers;
        self
    }

    fn finish(&mut self, reason: EndReason) {
        if let Some(e) = self.end.take() {
            e.end(reason, self.bytes);
        }
    }

    /// Why the response must end now: the route timeout (from the end of the request), or
    /// the cluster's `max_stream_duration` (from the start of the upstream request).
    fn timed_out(&mut self, cx: &mut Context<'_>) -> Option<EndReason> {
        if self.timer.is_none() {
            if let Some(d) = &self.deadline {
                if let (Some(at), Some(t)) = (d.request.done_at(), d.timeout) {
                    self.timer = Some(Box::pin(tokio::time::sleep_until(at + t)));
                }
            }
        }
        if self.upstream_timer.is_none() {
            if let Some(until) = self.deadline.as_ref().and_then(|d| d.upstream_until) {
                self.upstream_timer = Some(Box::pin(tokio::time::sleep_until(until)));
            }
        }
        if let Some(t) = &mut self.upstream_timer {
            if t.as_mut().poll(cx).is_ready() {
                return Some(EndReason::Expired(
                    crate::http::timeouts::Expiry::UpstreamMaxDuration,
                ));
            }
        }
        let route = self.timer.as_mut()?;
        route
            .as_mut()
            .poll(cx)
            .is_ready()
            .then_some(EndReason::Timeout)
    }
}

/// Whether a body error is the peer breaking HTTP/1.1 framing: hyper's decoders report bad chunk
/// lines and sizes as `InvalidData`/`InvalidInput` I/O errors, and a connection closed before
/// the body's length or last chunk as `UnexpectedEof` with hyper's `IncompleteBody` or a cut
/// chunk size line (Envoy's HTTP/1.1 codec counts that as a protocol error too: `UPE`); a
/// reset is not one.
fn is_framing_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => true,
                std::io::ErrorKind::UnexpectedEof => io.get_ref().is_some_and(|i| {
                    let m = i.to_string();
                    m == "end of file before message length reached"
                        || m == "unexpected EOF during chunk size line"
                }),
                _ => false,
            };
        }
        cur = err.source();
    }
    false
}

impl<E: StreamEnd> Drop for Tracked<E> {
    fn drop(&mut self) {
        // A body that hyper never had to poll (empty, or already ended) is complete.
        let reason = if self.inner.is_end_stream() {
            EndReason::Complete
        } else {
            EndReason::DownstreamReset
        };
        self.finish(reason);
    }
}

impl<E: StreamEnd + Unpin> Body for Tracked<E> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(e) = this.end.as_mut() {
            e.poll_periodic(cx);
        }
        if this.end.is_some() {
            if let Some(reason) = this.timed_out(cx) {
                this.finish(reason);
                return Poll::Ready(Some(Err(match reason {
                    EndReason::Expired(e) => e.details().into(),
                    _ => "upstream request timeout".into(),
                })));
            }
        }
        if this.end.is_some() {
            if let Some(t) = &this.stream_timers {
                if let Some(e) = t.poll_expired(cx) {
                    this.finish(EndReason::Expired(e));
                    return Poll::Ready(Some(Err(e.details().into())));
                }
            }
        }
        let account = this.end.as_ref().and_then(|e| e.account());
        if account.is_some_and(|a| a.poll_reset(cx).is_ready()) {
            this.finish(EndReason::Overload);
            return Poll::Ready(Some(Err(overload_reset())));
        }
        let mut frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        charge_frame(this.end.as_ref().and_then(|e| e.account()), &mut frame);
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                    if let Some(t) = &this.stream_timers {
                        t.touch();
                    }
                }
                if let (Some(t), Some(end)) = (f.trailers_ref(), this.end.as_mut()) {
                    end.trailers(t);
                }
                // Trailers are a body's last frame, whether or not the body says it ended.
                if this.inner.is_end_stream() || f.is_trailers() {
                    this.finish(EndReason::Complete);
                }
            }
            Some(Err(e)) => this.finish(if is_framing_error(&**e) {
                EndReason::UpstreamProtocolError
            } else {
                EndReason::UpstreamReset
            }),
            None => this.finish(EndReason::Complete),
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn all(mut b: ProxyBody) -> (Vec<u8>, Option<http::HeaderMap>) {
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(f) = b.frame().await {
            let f = f.expect("frame");
            match f.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (data, trailers)
    }

    #[tokio::test]
    async fn a_read_prefix_gives_the_whole_body_back() {
        let mut body = ProxyBody::full("hello world");
        let (read, complete) = read_prefix(&mut body, 64, false)
            .await
            .expect("under the limit");
        assert_eq!((&read[..], complete), (&b"hello world"[..], true));
        assert_eq!(all(body).await.0, b"hello world");

        let mut body = ProxyBody::full("hello world");
        let (read, _) = read_prefix(&mut body, 4, true).await.expect("partial");
        assert_eq!(&read[..], b"hello world");
        assert_eq!(all(body).await.0, b"hello world");

        let mut body = ProxyBody::full("hello world");
        let reply = read_prefix(&mut body, 4, false)
            .await
            .expect_err("too large");
        assert_eq!(reply.status, http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(reply.details, "request_payload_too_large");

        let mut body = ProxyBody::Empty;
        let (read, complete) = read_prefix(&mut body, 4, false).await.expect("empty");
        assert!(read.is_empty() && complete && body.is_end_stream());
    }
}
