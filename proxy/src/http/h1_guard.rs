//! The downstream HTTP/1.1 byte stream as hyper reads it, with each request head judged by
//! [`framing`] first (Envoy's codec rules, which hyper's parser does not apply).
//!
//! The guard follows the framing of every request on the connection (heads, `Content-Length`
//! bodies, chunked bodies as hyper's decoder reads them) so that it judges each head from the
//! byte hyper parses next. A refused head never reaches hyper: in its place hyper reads a
//! stand-in request whose path is a fresh random token, and then the end of the stream. The
//! connection manager answers the stand-in with Envoy's reply for the refusal, so the reply
//! goes out in order after any pipelined responses before it, and the connection closes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::http::framing::{self, Chunked, Framing, Refusal, Scan, Verdict};
use crate::http::h2_frames::{Flood, FloodLimits, Frames};
use crate::io::Slot;
use crate::stats::Counter;

/// Envoy's default `max_request_headers_kb` (60), in bytes.
pub const DEFAULT_MAX_HEAD: usize = 60 * 1024;
/// The HTTP/2 connection preface, which an `AUTO` codec hands to h2 untouched.
/// What a client may send after a CONNECT before its reply: Envoy's default connection
/// buffer (`per_connection_buffer_limit_bytes`). Past it, reading waits for the reply.
const OPAQUE_HOLD: usize = 1024 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A refusal waiting for the stand-in request that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The stand-in's path.
    pub token: String,
    /// What was refused and why.
    pub refusal: Refusal,
}

/// Shared between the guard and the connection manager's stream handler.
pub type RefusedSlot = Arc<Slot<Option<Refused>>>;

/// Set by the connection manager once a request switched protocols (a `101` to an upgrade):
/// from then on the bytes are the tunnel's, not HTTP/1.1, and pass unjudged.
pub type Switched = Arc<AtomicBool>;

/// Takes the refusal a request stands in for, if `path` is its token.
pub fn take_refusal(slot: &RefusedSlot, path: &str) -> Option<Refusal> {
    let mut slot = slot.borrow_mut();
    match slot.as_ref() {
        Some(r) if r.token == path => slot.take().map(|r| r.refusal),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first bytes: HTTP/1.1 or the HTTP/2 preface.
    Preface,
    /// Waiting for a request head.
    Head,
    /// In a `Content-Length` body, this many bytes left.
    Length(u64),
    /// In a chunked body.
    Chunked(Chunked),
    /// Not HTTP/1.1 (HTTP/2, a head larger than hyper takes): bytes pass.
    Through,
    /// A CONNECT went through: what the client sends next is its tunnel's. It waits here (up
    /// to [`OPAQUE_HOLD`] bytes) until the reply switches the connection, when it passes, or
    /// ends it.
    Opaque,
    /// Nothing more for hyper: a head or body hyper will refuse itself went through; the
    /// client's bytes after it are dropped until it closes.
    Closed,
    /// The stand-in request went through: hyper answers it with `connection: close` and ends
    /// the connection itself. Until then reads wait, so that a client that half-closes still
    /// gets its reply, as from Envoy.
    Refused,
}

/// The downstream stream with request heads judged before hyper reads them.
pub struct H1Guard<T> {
    inner: T,
    state: State,
    /// Read from `inner`, not yet judged.
    pending: BytesMut,
    /// Judged, not yet read by hyper.
    ready: BytesMut,
    slot: RefusedSlot,
    switched: Switched,
    eof: bool,
    /// How much of `pending` was already searched for the end of a head without finding it.
    searched: usize,
    /// `max_headers_count` and `allow_chunked_length`.
    rules: framing::Rules,
    /// `max_request_headers_kb`, in bytes: a longer head is refused (431).
    max_head: usize,
    /// `request_headers_timeout`: how long a head may take from its first byte.
    head_timeout: Option<Duration>,
    /// When the head in `pending` began to arrive, while one is incomplete.
    head_started: Option<Instant>,
    /// The head timer, made the first time a head waits for more bytes.
    head_timer: Option<Pin<Box<Sleep>>>,
    /// HTTP/2 with `request_headers_timeout` or flood limits: where the client is in its
    /// frames.
    h2: Option<Frames>,
    /// HTTP/2's inbound flood limits, and the counters of each flood.
    floods: Option<(FloodLimits, FloodCounters)>,
    /// The client went over a flood limit: nothing more is read or written.
    flooded: Option<Flood>,
    /// HTTP/2 with flood limits: what was written to the client while the socket took nothing
    /// (Envoy's connection write buffer), so that h2 goes on answering a client that does not
    /// read until the outbound limits end the connection.
    queue: BytesMut,
    /// What `queue` may hold before writes wait (`per_connection_buffer_limit_bytes`, Envoy's
    /// high watermark).
    queue_cap: usize,
    /// Set once the connection turned out to speak HTTP/2.
    http2: Switched,
    /// `downstream_rq_header_timeout`, counted here for HTTP/2 (HTTP/1.1's 408 is counted by
    /// the connection manager).
    h2_timed_out: Option<Counter>,
    /// `proxy_100_continue`: each head's `Expect: 100-continue` is hidden from hyper, and the
    /// upstream's `100 Continue` heads come through here.
    interim: Option<InterimSlot>,
    /// The task registered in `interim` last.
    interim_waker: Option<std::task::Waker>,
    /// hyper wrote since it last flushed: what it holds may be the end of an earlier
    /// response, which an informational head must not pass.
    mid_write: bool,
}

/// Informational heads (`100 Continue` from an upstream, with `proxy_100_continue`) for an
/// HTTP/1.1 client. hyper's server writes no 1xx of its own making but the one it answers an
/// `Expect` with; these go to the socket ahead of anything hyper writes after them.
#[derive(Debug, Default)]
pub struct Interim {
    bytes: Vec<u8>,
    /// The connection's task, woken when a head is queued.
    waker: Option<std::task::Waker>,
}

/// Shared between the guard and the streams of its connection.
pub type InterimSlot = Arc<InterimShared>;

/// The heads queued for a connection, and whether its guard must look at them.
#[derive(Debug)]
pub struct InterimShared {
    queue: std::sync::Mutex<Interim>,
    /// Set when a head is queued (which takes the registered waker), and at first: the
    /// guard then locks the queue, registers its task again and writes. Clear, a write
    /// passes without the lock.
    dirty: AtomicBool,
}

impl Default for InterimShared {
    fn default() -> Self {
        InterimShared {
            queue: Default::default(),
            dirty: AtomicBool::new(true),
        }
    }
}

impl InterimShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Interim> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Drops the informational heads not written yet (the final response is on its way: a
/// `100 Continue` after it would be read as the next response).
pub fn clear_interim(slot: &InterimSlot) {
    slot.lock().bytes.clear();
}

/// `proxy_100_continue` on an HTTP/1.1 stream: where its upstream's `100 Continue` goes, and
/// what counts it (`downstream_rq_1xx` and `downstream_rq_completed`, as Envoy's connection
/// manager counts each 1xx it sends).
#[derive(Clone)]
pub struct ContinueRelay {
    /// The connection's guard.
    pub slot: InterimSlot,
    /// The counters of each 1xx sent.
    pub counters: Vec<Counter>,
    /// A `100 Continue` went to the client: a retry's is not sent again.
    pub sent: Arc<AtomicBool>,
}

impl ContinueRelay {
    /// Passes an upstream's informational response on to the client if it is a `100`; other
    /// 1xx are dropped, as Envoy drops them.
    pub fn forward(&self, status: http::StatusCode, headers: &http::HeaderMap) {
        if status != http::StatusCode::CONTINUE || self.sent.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut head = b"HTTP/1.1 100 Continue\r\n".to_vec();
        for (name, value) in headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        send_interim(&self.slot, &head);
        for c in &self.counters {
            c.inc();
        }
    }
}

/// Queues an informational head for the client and wakes the connection to write it.
pub fn send_interim(slot: &InterimSlot, head: &[u8]) {
    let waker = {
        let mut i = slot.lock();
        i.bytes.extend_from_slice(head);
        slot.dirty.store(true, Ordering::Release);
        i.waker.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

impl<T> H1Guard<T> {
    /// Guards `inner`; refusals are handed over through `slot`. Without `http1` (an HTTP/2-only
    /// codec) every byte passes.
    pub fn new(inner: T, slot: RefusedSlot, http1: bool) -> Self {
        H1Guard {
            inner,
            state: if http1 {
                State::Preface
            } else {
                State::Through
            },
            pending: BytesMut::new(),
            ready: BytesMut::new(),
            slot,
            switched: Switched::default(),
            eof: false,
            searched: 0,
            rules: framing::Rules::default(),
            max_head: DEFAULT_MAX_HEAD,
            head_timeout: None,
            head_started: None,
            head_timer: None,
            h2: None,
            floods: None,
            flooded: None,
            queue: BytesMut::new(),
            queue_cap: 0,
            h2_timed_out: None,
            http2: Switched::new(AtomicBool::new(!http1)),
            interim: None,
            interim_waker: None,
            mid_write: false,
        }
    }

    /// Hides each head's `Expect: 100-continue` from hyper (the connection manager restores
    /// it), and writes the `100 Continue` heads queued in `slot` (the connection manager's own,
    /// or an upstream's with `proxy_100_continue`).
    pub fn interim(&mut self, slot: Option<InterimSlot>) -> &mut Self {
        self.interim = slot;
        self
    }

    /// `flag` is set once the connection turns out to speak HTTP/2 (its preface, or an
    /// HTTP/2-only codec), before any request.
    pub fn on_http2(&mut self, flag: Switched) -> &mut Self {
        flag.store(self.http2.load(Ordering::Relaxed), Ordering::Relaxed);
        self.http2 = flag;
        self
    }

    /// `max_headers_count`, `max_request_headers_kb` (in bytes) and `request_headers_timeout`
    /// (`None`: off); an HTTP/2 header block
    /// that takes too long ends the connection and counts `timed_out`.
    pub fn limits(
        &mut self,
        max_headers: u32,
        max_head: usize,
        head_timeout: Option<Duration>,
        timed_out: Counter,
    ) -> &mut Self {
        self.rules.max_headers = max_headers;
        self.max_head = max_head;
        self.head_timeout = head_timeout;
        if head_timeout.is_some() {
            self.h2_timed_out = Some(timed_out);
        }
        self.follow_h2_frames();
        self
    }

    /// HTTP/2's flood limits: a client over one has its connection closed, and the flood
    /// counted. Up to `queue_cap` bytes written to the client wait here while the socket takes
    /// nothing.
    pub fn h2_floods(
        &mut self,
        limits: FloodLimits,
        counters: FloodCounters,
        queue_cap: usize,
    ) -> &mut Self {
        self.floods = Some((limits, counters));
        self.queue_cap = queue_cap;
        self.follow_h2_frames();
        self
    }

    /// Follows the client's frames once the connection speaks HTTP/2, when anything needs
    /// them.
    fn follow_h2_frames(&mut self) {
        let needed = self.head_timeout.is_some() || self.floods.is_some();
        if self.state != State::Through || !needed {
            return;
        }
        let frames = self.h2.take().unwrap_or_else(|| Frames::new(true));
        self.h2 = Some(match &self.floods {
            Some((limits, _)) => frames.with_limits(*limits),
            None => frames,
        });
    }

    /// The client went over a flood limit: counted, and nothing more passes.
    fn flood(&mut self, flood: Flood) {
        if let Some((_, counters)) = &self.floods {
            counters.of(flood).inc();
        }
        self.flooded = Some(flood);
    }

    /// `allow_chunked_length`: `Content-Length` with chunked is taken as chunked.
    pub fn allow_chunked_length(&mut self, allow: bool) -> &mut Self {
        self.rules.allow_chunked_length = allow;
        self
    }

    /// `allow_absolute_url`: a target that is not a path must be an `http(s)` URL.
    pub fn allow_absolute_url(&mut self, allow: bool) -> &mut Self {
        self.rules.allow_absolute_url = allow;
        self
    }

    /// Whether a request head (HTTP/1.1) or header block (HTTP/2) has begun and not ended.
    fn head_arriving(&self) -> bool {
        match &self.h2 {
            Some(h2) => h2.in_header_block(),
            None => matches!(self.state, State::Head | State::Preface) && !self.pending.is_empty(),
        }
    }

    /// Whether the head that is arriving has taken longer than `request_headers_timeout`;
    /// arms the timer (waking `cx`) while it has not. Called only when reading must wait.
    fn head_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(limit) = self.head_timeout else {
            return false;
        };
        if !self.head_arriving() {
            self.head_started = None;
            return false;
        }
        let deadline = *self.head_started.get_or_insert_with(Instant::now) + limit;
        let timer = match &mut self.head_timer {
            Some(t) => {
                if t.deadline() != deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self
                .head_timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        timer.as_mut().poll(cx).is_ready()
    }

    /// Puts the stand-in request for `refusal` where hyper reads next; nothing the client
    /// sends after it is read.
    fn refuse(&mut self, refusal: Refusal) {
        self.pending.clear();
        self.searched = 0;
        self.head_started = None;
        let token = format!("/{}", uuid::Uuid::new_v4().simple());
        self.ready
            .extend_from_slice(format!("GET {token} HTTP/1.1\r\nhost: refused\r\n\r\n").as_bytes());
        *self.slot.borrow_mut() = Some(Refused { token, refusal });
        self.state = State::Refused;
    }

    /// Bytes pass unjudged once `switched` is set (the connection became a tunnel).
    pub fn switch_on(&mut self, switched: Switched) -> &mut Self {
        self.switched = switched;
        self
    }

    /// Moves judged bytes from `pending` to `ready`; false when more input is needed.
    fn advance(&mut self) -> bool {
        if self.state != State::Through && self.switched.load(Ordering::Relaxed) {
            self.state = State::Through;
        }
        if self.state == State::Head && !self.may_hold_head_end() {
            return if self.pending.len() > self.max_head {
                self.refuse(Refusal::too_large());
                true
            } else if self.eof {
                // hyper sees the partial head and the end, as the client sent them.
                self.pass(self.pending.len());
                self.state = State::Closed;
                true
            } else {
                false
            };
        }
        match self.state {
            State::Preface => {
                let n = self.pending.len().min(H2_PREFACE.len());
                if self.pending[..n] != H2_PREFACE[..n] {
                    self.state = State::Head;
                    true
                } else if n == H2_PREFACE.len() {
                    self.state = State::Through;
                    self.http2.store(true, Ordering::Relaxed);
                    self.follow_h2_frames();
                    true
                } else if self.eof {
                    self.state = State::Head;
                    true
                } else {
                    false
                }
            }
            State::Head => match framing::scan_limited(&self.pending, self.rules) {
                Scan::Incomplete => {
                    if self.pending.len() > self.max_head {
                        self.refuse(Refusal::too_large());
                        true
                    } else if self.eof {
                        // hyper sees the partial head and the end, as the client sent them.
                        self.pass(self.pending.len());
                        self.state = State::Closed;
                        true
                    } else {
                        false
                    }
                }
                Scan::Head {
                    len,
                    verdict,
                    expect,
                } => {
                    // max_request_headers_kb: Envoy counts the head's bytes as they come.
                    let verdict = if len > self.max_head {
                        Verdict::Refuse(Refusal::too_large())
                    } else {
                        verdict
                    };
                    match verdict {
                        Verdict::Accept(f) => {
                            if expect && self.interim.is_some() {
                                framing::hide_continue(&mut self.pending[..len]);
                            }
                            self.pass(len);
                            self.state = match f {
                                Framing::None | Framing::Length(0) => State::Head,
                                Framing::Length(n) => State::Length(n),
                                Framing::Chunked => State::Chunked(Chunked::Start),
                                Framing::Opaque => State::Opaque,
                            };
                        }
                        Verdict::Refuse(refusal) => self.refuse(refusal),
                        Verdict::Codec => {
                            self.pass(len);
                            self.state = State::Closed;
                        }
                    }
                    true
                }
            },
            State::Length(left) => {
                if self.pending.is_empty() {
                    return false;
                }
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(self.pending.len());
                self.pass(n);
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::Head
                } else {
                    State::Length(left)
                };
                true
            }
            State::Chunked(mut c) => {
                if self.pending.is_empty() {
                    return false;
                }
                match c.feed(&self.pending) {
                    Ok(n) => {
                        self.pass(n);
                        self.state = if c.is_end() {
                            State::Head
                        } else {
                            State::Chunked(c)
                        };
                    }
                    Err(_) => {
                        // hyper refuses the same bytes; nothing after them is read.
                        self.pass(self.pending.len());
                        self.state = State::Closed;
                    }
                }
                true
            }
            State::Through => {
                if self.pending.is_empty() {
                    return false;
                }
                self.pass(self.pending.len());
                true
            }
            State::Opaque => false,
            State::Closed | State::Refused => {
                self.pending.clear();
                false
            }
        }
    }

    /// Follows the framing over bytes already in hyper's buffer; returns how many of them hyper
    /// may read now. It stops before anything that needs [`Self::advance`]: a head that is not
    /// complete or not accepted, or a chunked body hyper will refuse.
    fn judge_in_place(&mut self, new: &mut [u8]) -> usize {
        let mut at = 0;
        while at < new.len() {
            let rest = &new[at..];
            match self.state {
                State::Head => match framing::scan_limited(rest, self.rules) {
                    Scan::Head {
                        len,
                        verdict: Verdict::Accept(f),
                        expect,
                    } if len <= self.max_head => {
                        if expect && self.interim.is_some() {
                            framing::hide_continue(&mut new[at..at + len]);
                        }
                        at += len;
                        self.state = match f {
                            Framing::None | Framing::Length(0) => State::Head,
                            Framing::Length(n) => State::Length(n),
                            Framing::Chunked => State::Chunked(Chunked::Start),
                            Framing::Opaque => State::Opaque,
                        };
                    }
                    _ => return at,
                },
                State::Length(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    at += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Length(left)
                    };
                }
                State::Chunked(mut c) => match c.feed(rest) {
                    Ok(n) if n > 0 => {
                        at += n;
                        self.state = if c.is_end() {
                            State::Head
                        } else {
                            State::Chunked(c)
                        };
                    }
                    _ => return at,
                },
                State::Through => return new.len(),
                State::Preface | State::Opaque | State::Closed | State::Refused => return at,
            }
        }
        at
    }

    fn pass(&mut self, n: usize) {
        let mut bytes = self.pending.split_to(n);
        if let Some(h2) = &mut self.h2 {
            if let Err((flood, before)) = h2.feed(&bytes) {
                bytes.truncate(before);
                self.pending.clear();
                self.flood(flood);
            }
        }
        self.ready.unsplit(bytes);
        self.searched = 0;
        self.head_started = None;
    }

    /// Whether the bytes not searched yet may end a head (an empty line), so that a head
    /// trickling in a byte at a time costs linear time, not a full parse per byte.
    fn may_hold_head_end(&mut self) -> bool {
        // A line break may straddle what was searched and what is new.
        let from = self.searched.saturating_sub(2);
        let new = &self.pending[from..];
        let found = new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n");
        self.searched = self.pending.len();
        found
    }
}

/// The connection manager's counters of HTTP/2 floods (`http2.inbound_*_flood`).
#[derive(Debug, Clone)]
pub struct FloodCounters {
    pub empty_frames: Counter,
    pub priority: Counter,
    pub window_update: Counter,
    /// `http2.outbound_flood`.
    pub outbound: Counter,
    /// `http2.outbound_control_flood`.
    pub outbound_control: Counter,
}

impl FloodCounters {
    fn of(&self, flood: Flood) -> &Counter {
        match flood {
            Flood::EmptyFrames => &self.empty_frames,
            Flood::Priority => &self.priority,
            Flood::WindowUpdate => &self.window_update,
            Flood::Outbound => &self.outbound,
            Flood::OutboundControl => &self.outbound_control,
        }
    }
}

fn flood_error(flood: Flood) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, flood.message())
}

impl<T: AsyncRead + Unpin> AsyncRead for H1Guard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if let Some(flood) = this.flooded {
                return Poll::Ready(Err(flood_error(flood)));
            }
            if this.state == State::Through && this.pending.is_empty() {
                let Some(h2) = &mut this.h2 else {
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                };
                let before = buf.filled().len();
                if Pin::new(&mut this.inner).poll_read(cx, buf)?.is_ready() {
                    if let Err((flood, n)) = h2.feed(&buf.filled()[before..]) {
                        buf.set_filled(before + n);
                        this.flood(flood);
                        if n == 0 {
                            continue;
                        }
                    } else if !h2.in_header_block() {
                        this.head_started = None;
                    }
                    return Poll::Ready(Ok(()));
                }
                if this.head_timed_out(cx) {
                    // h2 keeps a partial header block to itself: the stream cannot be answered
                    // as Envoy does (408), so the connection ends.
                    if let Some(c) = &this.h2_timed_out {
                        c.inc();
                    }
                    this.head_started = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request_headers_timeout: the header block did not arrive in time",
                    )));
                }
                return Poll::Pending;
            }
            // A Content-Length body skips `pending`: it goes to hyper up to its last byte, so
            // the next head is judged from where hyper will parse it.
            if let State::Length(left) = this.state {
                if this.pending.is_empty() && buf.remaining() > 0 {
                    let room = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(buf.remaining());
                    let dst = buf.initialize_unfilled_to(room);
                    let mut part = ReadBuf::new(dst);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
                    let n = part.filled().len();
                    if n == 0 {
                        this.eof = true;
                        return Poll::Ready(Ok(()));
                    }
                    buf.advance(n);
                    let left = left - n as u64;
                    this.state = if left == 0 {
                        State::Head
                    } else {
                        State::Length(left)
                    };
                    return Poll::Ready(Ok(()));
                }
            }
            // The usual case: whole heads and bodies arrive together. They are read straight
            // into hyper's buffer and judged there; only what must wait (a head not complete
            // yet, a refused one) is taken back into `pending`.
            if this.pending.is_empty()
                && !this.eof
                && matches!(this.state, State::Head | State::Chunked(_))
                && buf.remaining() > 0
            {
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let after = buf.filled().len();
                if after == before {
                    this.eof = true;
                    continue;
                }
                let keep = this.judge_in_place(&mut buf.filled_mut()[before..]);
                if before + keep < after {
                    this.pending
                        .extend_from_slice(&buf.filled()[before + keep..]);
                    this.searched = 0;
                    buf.set_filled(before + keep);
                }
                if keep > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if this.advance() {
                continue;
            }
            // A CONNECT's reply is awaited: hyper is woken by it, not by the client, and does
            // not see the client's end before the tunnel does.
            if this.state == State::Refused
                || (this.state == State::Opaque && (this.eof || this.pending.len() >= OPAQUE_HOLD))
            {
                return Poll::Pending;
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Not zeroed: every connection reads here once, and zeroing 8 KiB was a tenth of
            // the instructions a connection with one request ran.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
            let mut rb = ReadBuf::uninit(&mut chunk);
            if Pin::new(&mut this.inner)
                .poll_read(cx, &mut rb)?
                .is_pending()
            {
                if this.head_timed_out(cx) {
                    this.refuse(Refusal {
                        reason: framing::Reason::HeaderTimeout,
                        method: None,
                        path: None,
                    });
                    continue;
                }
                return Poll::Pending;
            }
            if rb.filled().is_empty() {
                this.eof = true;
            } else {
                this.pending.extend_from_slice(rb.filled());
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> H1Guard<T> {
    /// Whether writes to an HTTP/2 client are followed frame by frame and may wait in `queue`.
    fn queueing(&self) -> bool {
        self.h2.is_some() && self.floods.is_some()
    }

    /// Bytes for the client taken (by the socket or into the queue): their frames counted.
    fn account(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(h2) = &mut self.h2 else {
            return Ok(());
        };
        if let Err(flood) = h2.sent(data) {
            self.flood(flood);
            return Err(flood_error(flood));
        }
        Ok(())
    }

    /// Writes out what waits in the queue; ready once it is empty.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.queue))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queue.advance(n);
            if let Some(h2) = &mut self.h2 {
                h2.written(n);
            }
        }
        if self.queue.capacity() > 64 * 1024 {
            self.queue = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }

    /// A write to an HTTP/2 client: straight to the socket when nothing waits and the socket
    /// takes it, else into the queue, as much as it has room for.
    fn write_h2(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Err(e)) = self.drain(cx) {
            return Poll::Ready(Err(e));
        }
        if self.queue.is_empty() {
            let r = match bufs {
                [one] => Pin::new(&mut self.inner).poll_write(cx, one),
                _ => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            };
            match r {
                Poll::Ready(Ok(n)) => {
                    if let Some(h2) = &mut self.h2 {
                        h2.written(n);
                    }
                    let mut left = n;
                    for b in bufs {
                        let take = left.min(b.len());
                        self.account(&b[..take])?;
                        left -= take;
                        if left == 0 {
                            break;
                        }
                    }
                    return Poll::Ready(Ok(n));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        // The queue holds no more than its cap: a longer write is taken in part.
        let mut room = self.queue_cap.saturating_sub(self.queue.len());
        if room == 0 {
            // The socket's waker is registered by the drain above.
            return Poll::Pending;
        }
        let mut total = 0;
        for b in bufs {
            let take = room.min(b.len());
            self.queue.extend_from_slice(&b[..take]);
            self.account(&b[..take])?;
            total += take;
            room -= take;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(total))
    }
}

impl<T: AsyncWrite + Unpin> H1Guard<T> {
    /// Writes out the informational heads queued for the client; ready once none waits. The
    /// connection's task is kept to be woken for the next one.
    ///
    /// hyper writes only when it flushes its buffer, and calls `poll_flush` once the buffer is
    /// empty: a head goes out then, or before the first write after such a flush. (A head for
    /// a pipelined request whose predecessor's response could not all be written waits for the
    /// flush after hyper's next writes.)
    fn write_interim(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(slot) = &self.interim else {
            return Poll::Ready(Ok(()));
        };
        // Nothing queued since the last look, and the same task registered: no lock.
        let same_task = self
            .interim_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if same_task && !slot.dirty.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let mut i = slot.lock();
        slot.dirty.store(false, Ordering::Release);
        if !i.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            i.waker = Some(cx.waker().clone());
        }
        if !same_task {
            self.interim_waker = Some(cx.waker().clone());
        }
        while !i.bytes.is_empty() {
            let n = match Pin::new(&mut self.inner).poll_write(cx, &i.bytes) {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    // Looked at again on the next write or flush.
                    slot.dirty.store(true, Ordering::Release);
                    return Poll::Pending;
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            i.bytes.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for H1Guard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(flood) = this.flooded {
            return Poll::Ready(Err(flood_error(flood)));
        }
        if this.queueing() {
            return this.write_h2(cx, &[io::IoSlice::new(data)]);
        }
        if this.interim.is_none() {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if !this.mid_write {
            ready!(this.write_interim(cx))?;
        }
        this.mid_write = true;
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(flood) = this.flooded {
            return Poll::Ready(Err(flood_error(flood)));
        }
        if this.queueing() {
            return this.write_h2(cx, bufs);
        }
        if this.interim.is_none() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        if !this.mid_write {
            ready!(this.write_interim(cx))?;
        }
        this.mid_write = true;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// A flush writes out what it can of the queue and does not wait for the rest, as Envoy's
    /// codec does not wait for its connection's buffer: h2 goes on reading meanwhile. The
    /// socket wakes the connection when it can take more, and h2 flushes again on each poll.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.flooded.is_none() {
            if let Poll::Ready(Err(e)) = this.drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        this.mid_write = false;
        ready!(this.write_interim(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.flooded.is_none() {
            ready!(this.drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn through(input: &[u8]) -> (Vec<u8>, Option<Refused>) {
        let slot = RefusedSlot::default();
        let mut g = H1Guard::new(input, slot.clone(), true);
        let mut out = Vec::new();
        // After a refusal reads wait for hyper to close: stop at the first wait.
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            g.read_to_end(&mut out),
        )
        .await;
        if let Ok(r) = read {
            r.expect("read");
        }
        let refused = slot.borrow_mut().take();
        (out, refused)
    }

    #[tokio::test]
    async fn accepted_requests_pass_unchanged() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcPOST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(through(input).await, (input.to_vec(), None));
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00garbage";
        assert_eq!(through(h2).await, (h2.to_vec(), None));
    }

    /// Hands out its bytes one at a time.
    struct Trickle(Vec<u8>, usize);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(&b) = self.0.get(self.1) {
                buf.put_slice(&[b]);
                self.1 += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn heads_and_bodies_arriving_byte_by_byte() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".to_vec();
        let slot = RefusedSlot::default();
        let mut g = H1Guard::new(Trickle(input.clone(), 0), slot.clone(), true);
        let mut out = Vec::new();
        g.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, input);
        let mut bad = input.clone();
        bad.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n");
        let mut g = H1Guard::new(Trickle(bad, 0), slot.clone(), true);
        let mut out = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            g.read_to_end(&mut out),
        )
        .await;
        assert!(out.starts_with(&input));
        assert_eq!(
            slot.borrow().as_ref().map(|r| r.refusal.reason),
            Some(framing::Reason::InvalidTransferEncoding)
        );
    }

    /// Hands out its bytes in pieces of a fixed size.
    struct Pieces(Vec<u8>, usize, usize);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let (at, size) = (self.1, self.2);
            let end = (at + size).min(self.0.len()).min(at + buf.remaining());
            let piece = self.0[at..end].to_vec();
            buf.put_slice(&piece);
            self.1 = end;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn every_split_of_the_input_gives_the_same_verdict() {
        let good = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        let mut bad = good.clone();
        bad.extend_from_slice(
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        );
        for size in 1..=bad.len() {
            let slot = RefusedSlot::default();
            let mut g = H1Guard::new(Pieces(good.clone(), 0, size), slot.clone(), true);
            let mut out = Vec::new();
            g.read_to_end(&mut out).await.expect("read");
            assert_eq!(out, good, "pieces of {size}");
            assert!(slot.borrow().is_none());

            let mut g = H1Guard::new(Pieces(bad.clone(), 0, size), slot.clone(), true);
            let mut out = Vec::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(20),
                g.read_to_end(&mut out),
            )
            .await;
            let refused = slot.borrow_mut().take().expect("refused");
            let mut expected = good.clone();
            expected.extend_from_slice(
                format!("GET {} HTTP/1.1\r\nhost: refused\r\n\r\n", refused.token).as_bytes(),
            );
            assert_eq!(out, expected, "pieces of {size}");
        }
    }

    #[tokio::test]
    async fn a_smuggled_request_never_reaches_hyper() {
        let first = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut input = first.to_vec();
        input.extend_from_slice(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n");
        let (out, refused) = through(&input).await;
        let refused = refused.expect("refused");
        assert_eq!(
            refused.refusal.reason,
            framing::Reason::ContentLengthAndChunked
        );
        let mut expected = first.to_vec();
        expected.extend_from_slice(
            format!("GET {} HTTP/1.1\r\nhost: refused\r\n\r\n", refused.token).as_bytes(),
        );
        assert_eq!(out, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_takes_too_long_is_refused_from_its_first_byte() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(4096);
        let slot = RefusedSlot::default();
        let timed_out = Counter::default();
        let mut g = H1Guard::new(server, slot.clone(), true);
        g.limits(
            5,
            DEFAULT_MAX_HEAD,
            Some(Duration::from_secs(1)),
            timed_out.clone(),
        );
        let start = Instant::now();
        // A whole head, then the first bytes of the next one, a few at a time.
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next")
            .await
            .expect("write");
        let mut out = vec![0u8; 4096];
        let n = g.read(&mut out).await.expect("read");
        assert_eq!(&out[..n], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let reader = async {
            let n = g.read(&mut out).await.expect("read");
            (
                String::from_utf8_lossy(&out[..n]).to_string(),
                Instant::now(),
            )
        };
        let writer = async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                client.write_all(b"x").await.expect("write");
            }
        };
        let ((stand_in, at), ()) = tokio::join!(reader, writer);
        assert!(stand_in.starts_with("GET /"), "{stand_in}");
        assert_eq!(at - start, Duration::from_secs(1));
        let refused = slot.borrow_mut().take().expect("refused");
        assert_eq!(refused.refusal.reason, framing::Reason::HeaderTimeout);
        // HTTP/1.1's 408 is counted by the connection manager.
        assert_eq!(timed_out.value(), 0);
    }

    #[tokio::test]
    async fn too_many_headers_are_refused() {
        let slot = RefusedSlot::default();
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        let mut g = H1Guard::new(&head[..], slot.clone(), true);
        g.limits(2, DEFAULT_MAX_HEAD, None, Counter::default());
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(50), g.read_to_end(&mut out)).await;
        let refused = slot.borrow_mut().take().expect("refused");
        assert_eq!(refused.refusal.reason, framing::Reason::TooManyHeaders);
        let mut g = H1Guard::new(&head[..], slot.clone(), true);
        g.limits(3, DEFAULT_MAX_HEAD, None, Counter::default());
        let mut out = Vec::new();
        g.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, head);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_http2_header_block_ends_the_connection() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(4096);
        let timed_out = Counter::default();
        let mut g = H1Guard::new(server, RefusedSlot::default(), true);
        g.limits(
            100,
            DEFAULT_MAX_HEAD,
            Some(Duration::from_secs(1)),
            timed_out.clone(),
        );
        let start = Instant::now();
        let mut bytes = H2_PREFACE.to_vec();
        // SETTINGS, then a HEADERS frame without END_HEADERS.
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0, 0, 1, 1, 1, 0, 0, 0, 1, 0x82]);
        client.write_all(&bytes).await.expect("write");
        let mut out = Vec::new();
        let err = g.read_to_end(&mut out).await.expect_err("timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(out, bytes);
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        assert_eq!(timed_out.value(), 1);
    }

    #[tokio::test]
    async fn bytes_after_a_connect_wait_for_its_tunnel() {
        let slot = RefusedSlot::default();
        let switched = Switched::default();
        let head = b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n";
        let mut input = head.to_vec();
        input.extend_from_slice(b"early");
        let mut g = H1Guard::new(&input[..], slot, true);
        g.switch_on(switched.clone());
        let mut out = vec![0u8; 1024];
        let n = g.read(&mut out).await.expect("read");
        assert_eq!(&out[..n], head);
        // The reply is awaited: nothing more, not even the client's end.
        let more = tokio::time::timeout(Duration::from_millis(50), g.read(&mut out)).await;
        assert!(more.is_err(), "{more:?}");
        switched.store(true, Ordering::Relaxed);
        let mut rest = Vec::new();
        g.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"early");
    }

    #[tokio::test]
    async fn the_write_queue_takes_no_more_than_its_cap() {
        let (_client, server) = tokio::io::duplex(64);
        let counters = FloodCounters {
            empty_frames: Counter::default(),
            priority: Counter::default(),
            window_update: Counter::default(),
            outbound: Counter::default(),
            outbound_control: Counter::default(),
        };
        let mut g = H1Guard::new(server, RefusedSlot::default(), false);
        g.h2_floods(FloodLimits::default(), counters, 1000);
        // One DATA frame of 4096 bytes in all, to a client that reads nothing.
        let mut frame = vec![0x00, 0x0f, 0xf7, 0, 0, 0, 0, 0, 1];
        frame.resize(4096, 0);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut write = |data: &[u8]| Pin::new(&mut g).poll_write(&mut cx, data);
        assert!(matches!(write(&frame), Poll::Ready(Ok(64))));
        assert!(matches!(write(&frame[64..]), Poll::Ready(Ok(1000))));
        assert!(write(&frame[1064..]).is_pending());
    }

    #[tokio::test]
    async fn a_head_longer_than_max_request_headers_kb_is_refused() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for (limit, refused) in [(head.len(), false), (head.len() - 1, true)] {
            let slot = RefusedSlot::default();
            let mut g = H1Guard::new(&head[..], slot.clone(), true);
            g.limits(100, limit, None, Counter::default());
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(50), g.read_to_end(&mut out)).await;
            let reason = slot.borrow_mut().take().map(|r| r.refusal.reason);
            assert_eq!(reason.is_some(), refused, "limit {limit}");
            if refused {
                assert_eq!(reason, Some(framing::Reason::HeadersTooLarge));
            } else {
                assert_eq!(out, head);
            }
        }
    }
}
