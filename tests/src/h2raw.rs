//! HTTP/2 by hand, for hostile-input and flood tests: frames written byte by byte (RFC 9113 §6),
//! header blocks as HPACK literals without Huffman coding (RFC 7541), and a client connection that
//! reads the proxy's frames back as events. The only HPACK decoding done is what it takes to read a
//! response's `:status` (indexed fields and Huffman-coded digits), while following the dynamic
//! table so later indices still point at the right entry.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// One frame: the 9-byte header and the payload.
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in values {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

pub fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

pub fn ping(data: [u8; 8]) -> Vec<u8> {
    frame(PING, 0, 0, &data)
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn priority(stream: u32, depends_on: u32, weight: u8) -> Vec<u8> {
    let mut p = depends_on.to_be_bytes().to_vec();
    p.push(weight);
    frame(PRIORITY, 0, stream, &p)
}

pub fn data(stream: u32, end: bool, payload: &[u8]) -> Vec<u8> {
    frame(DATA, if end { END_STREAM } else { 0 }, stream, payload)
}

pub fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, flags, stream, block)
}

pub fn goaway(last: u32, code: u32) -> Vec<u8> {
    let mut p = last.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    frame(GOAWAY, 0, 0, &p)
}

/// HPACK encoding by hand.
pub mod hpack {
    /// An integer with an `n`-bit prefix; `high` holds the representation's leading bits.
    pub fn int(n: u8, high: u8, mut v: u64) -> Vec<u8> {
        let max = (1u64 << n) - 1;
        if v < max {
            return vec![high | v as u8];
        }
        let mut out = vec![high | max as u8];
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
        out
    }

    /// A string literal, not Huffman-coded.
    pub fn string(s: &[u8]) -> Vec<u8> {
        let mut out = int(7, 0, s.len() as u64);
        out.extend_from_slice(s);
        out
    }

    /// A literal field without indexing, with a literal name.
    pub fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend(string(name));
        out.extend(string(value));
        out
    }

    /// An indexed field.
    pub fn indexed(index: u64) -> Vec<u8> {
        int(7, 0x80, index)
    }

    /// A dynamic table size update.
    pub fn size_update(size: u64) -> Vec<u8> {
        int(5, 0x20, size)
    }

    /// A header block of literal fields, in order.
    pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        fields
            .iter()
            .flat_map(|(n, v)| literal(n.as_bytes(), v.as_bytes()))
            .collect()
    }

    /// `:method`, `:scheme http`, `:path`, `:authority diff.example.com`, then `extra`.
    pub fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut f = vec![
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", "diff.example.com"),
        ];
        f.extend_from_slice(extra);
        block(&f)
    }
}

/// The name of an HTTP/2 error code.
pub fn error_name(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES
        .get(code as usize)
        .map_or_else(|| format!("0x{code:x}"), |n| n.to_string())
}

/// What the proxy sent, frame by frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A response header block on a stream (`None` when `:status` could not be read).
    Status(u32, Option<u16>),
    /// DATA on a stream: length, END_STREAM.
    Data(u32, usize, bool),
    /// A RST_STREAM and its error code.
    Reset(u32, u32),
    /// A GOAWAY: last stream id, error code.
    GoAway(u32, u32),
    /// SETTINGS (not an ACK).
    Settings,
    /// A PING's ACK.
    PingAck,
    /// Any other frame type.
    Other(u8),
}

/// Follows the proxy's HPACK dynamic table just enough to read `:status`.
#[derive(Default)]
struct StatusDecoder {
    /// Newest first: whether the name is `:status`, and the value if it could be read.
    table: Vec<(bool, Option<Vec<u8>>, usize)>,
    size: usize,
    max: usize,
}

fn read_int(b: &[u8], pos: &mut usize, n: u8) -> Option<u64> {
    let max = (1u64 << n) - 1;
    let mut v = (*b.get(*pos)? as u64) & max;
    *pos += 1;
    if v < max {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v = v.checked_add(((byte & 0x7f) as u64).checked_shl(shift)?)?;
        shift += 7;
        if byte & 0x80 == 0 || shift > 56 {
            return Some(v);
        }
    }
}

/// A string literal: its bytes, decoded from Huffman when they are digits only (a status).
fn read_string(b: &[u8], pos: &mut usize) -> Option<(Option<Vec<u8>>, usize)> {
    let huffman = *b.get(*pos)? & 0x80 != 0;
    let len = read_int(b, pos, 7)? as usize;
    let raw = b.get(*pos..*pos + len)?;
    *pos += len;
    if !huffman {
        return Some((Some(raw.to_vec()), len));
    }
    let digits = huffman_digits(raw);
    let decoded_len = digits.as_ref().map_or(len * 8 / 5, Vec::len);
    Some((digits, decoded_len))
}

/// Decodes a Huffman string made of ASCII digits only (RFC 7541 Appendix B).
fn huffman_digits(raw: &[u8]) -> Option<Vec<u8>> {
    let bits: Vec<u8> = raw
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bits.len() {
        let rest = &bits[i..];
        if rest.len() < 8 && rest.iter().all(|&b| b == 1) {
            break; // padding
        }
        let take = |n: usize| -> Option<u32> {
            (rest.len() >= n).then(|| rest[..n].iter().fold(0u32, |a, &b| a << 1 | b as u32))
        };
        let five = take(5)?;
        if five <= 2 {
            out.push(b'0' + five as u8);
            i += 5;
            continue;
        }
        let six = take(6)?;
        if (0b011001..=0b011111).contains(&six) {
            out.push(b'3' + (six - 0b011001) as u8);
            i += 6;
            continue;
        }
        return None;
    }
    Some(out)
}

const STATIC_STATUS: [(u64, u16); 7] = [
    (8, 200),
    (9, 204),
    (10, 206),
    (11, 304),
    (12, 400),
    (13, 404),
    (14, 500),
];

impl StatusDecoder {
    fn new() -> Self {
        StatusDecoder {
            max: 4096,
            ..Default::default()
        }
    }

    fn insert(&mut self, status: bool, value: Option<Vec<u8>>, size: usize) {
        self.table.insert(0, (status, value, size));
        self.size += size;
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max {
            match self.table.pop() {
                Some((_, _, s)) => self.size -= s,
                None => break,
            }
        }
    }

    /// Whether index `i` names `:status` (static 8-14 or a dynamic `:status` entry).
    fn names_status(&self, i: u64) -> bool {
        if (1..=61).contains(&i) {
            return (8..=14).contains(&i);
        }
        self.table
            .get((i as usize).wrapping_sub(62))
            .is_some_and(|e| e.0)
    }

    /// The `:status` of a header block, if it has one that could be read.
    fn status(&mut self, b: &[u8]) -> Option<u16> {
        let mut pos = 0;
        let mut status = None;
        let parse = |v: &[u8]| std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
        // Static name lengths of the first 61 entries are not needed: only `:status`
        // (7 bytes) matters for the sizes of entries this table follows.
        while pos < b.len() {
            let first = b[pos];
            if first & 0x80 != 0 {
                let i = read_int(b, &mut pos, 7)?;
                if let Some((_, s)) = STATIC_STATUS.iter().find(|(j, _)| *j == i) {
                    status = status.or(Some(*s));
                } else if i > 61 {
                    if let Some((true, Some(v), _)) = self.table.get(i as usize - 62) {
                        status = status.or(parse(v));
                    }
                }
            } else if first & 0xe0 == 0x20 {
                self.max = read_int(b, &mut pos, 5)? as usize;
                self.evict();
            } else {
                let (n, incremental) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    (4, false)
                };
                let i = read_int(b, &mut pos, n)?;
                let (is_status, name_len) = if i == 0 {
                    let (name, len) = read_string(b, &mut pos)?;
                    (name.as_deref() == Some(b":status"), len)
                } else {
                    let s = self.names_status(i);
                    (s, if s { 7 } else { 10 })
                };
                let (value, value_len) = read_string(b, &mut pos)?;
                if is_status {
                    status = status.or(value.as_deref().and_then(parse));
                }
                if incremental {
                    self.insert(is_status, value, name_len + value_len + 32);
                }
            }
        }
        status
    }
}

/// A client connection speaking HTTP/2 frames by hand.
pub struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    dec: StatusDecoder,
    /// Header block fragments waiting for END_HEADERS: stream and bytes.
    pending: Option<(u32, Vec<u8>)>,
    /// Everything received so far.
    pub events: Vec<Event>,
    /// The proxy closed (or reset) the connection.
    pub closed: bool,
    /// Answer the proxy's SETTINGS with an ACK.
    pub ack_settings: bool,
}

impl Conn {
    /// Connects and sends the preface and an empty SETTINGS frame.
    pub async fn open(port: u16) -> Conn {
        Self::open_with(port, &settings(&[])).await
    }

    /// Connects and sends the preface followed by `first` (normally a SETTINGS frame).
    pub async fn open_with(port: u16, first: &[u8]) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let mut c = Conn {
            s,
            buf: Vec::new(),
            dec: StatusDecoder::new(),
            pending: None,
            events: Vec::new(),
            closed: false,
            ack_settings: true,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(first);
        c.send(&hello).await;
        c
    }

    /// Writes bytes; a failed write marks the connection closed.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        if self.s.write_all(bytes).await.is_err() {
            self.closed = true;
            return false;
        }
        true
    }

    /// Reads the proxy's frames until `done(events)` holds, the connection closes, or `limit`
    /// passes; then reads `linger` more (for a GOAWAY or close that follows a reset).
    pub async fn read_until(
        &mut self,
        limit: Duration,
        linger: Duration,
        done: impl Fn(&[Event]) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        let mut until = deadline;
        let mut lingering = false;
        while !self.closed {
            if !lingering && done(&self.events) {
                lingering = true;
                until = (Instant::now() + linger).min(deadline.max(Instant::now() + linger));
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout_at(until, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.parse().await;
                }
                Err(_) => break,
            }
        }
    }

    async fn parse(&mut self) {
        while self.buf.len() >= 9 {
            let len =
                (self.buf[0] as usize) << 16 | (self.buf[1] as usize) << 8 | self.buf[2] as usize;
            if self.buf.len() < 9 + len {
                return;
            }
            let ty = self.buf[3];
            let flags = self.buf[4];
            let stream = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]])
                & 0x7fff_ffff;
            let payload: Vec<u8> = self.buf[9..9 + len].to_vec();
            self.buf.drain(..9 + len);
            let word = |i: usize| {
                payload
                    .get(i..i + 4)
                    .map_or(0, |w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
            };
            match ty {
                DATA => self
                    .events
                    .push(Event::Data(stream, len, flags & END_STREAM != 0)),
                HEADERS | CONTINUATION => {
                    let mut block = if ty == HEADERS {
                        let mut p = &payload[..];
                        if flags & PADDED != 0 && !p.is_empty() {
                            let pad = p[0] as usize;
                            p = &p[1..p.len().saturating_sub(pad).max(1)];
                        }
                        if flags & PRIORITY_FLAG != 0 && p.len() >= 5 {
                            p = &p[5..];
                        }
                        p.to_vec()
                    } else {
                        self.pending.take().map(|(_, b)| b).unwrap_or_default()
                    };
                    if ty == CONTINUATION {
                        block.extend_from_slice(&payload);
                    }
                    if flags & END_HEADERS != 0 {
                        let status = self.dec.status(&block);
                        self.events.push(Event::Status(stream, status));
                        if flags & END_STREAM != 0 {
                            self.events.push(Event::Data(stream, 0, true));
                        }
                    } else {
                        self.pending = Some((stream, block));
                    }
                }
                RST_STREAM => self.events.push(Event::Reset(stream, word(0))),
                GOAWAY => self
                    .events
                    .push(Event::GoAway(word(0) & 0x7fff_ffff, word(4))),
                SETTINGS if flags & ACK == 0 => {
                    self.events.push(Event::Settings);
                    if self.ack_settings {
                        self.send(&settings_ack()).await;
                    }
                }
                SETTINGS => {}
                PING if flags & ACK != 0 => self.events.push(Event::PingAck),
                PING => {}
                WINDOW_UPDATE => {}
                other => self.events.push(Event::Other(other)),
            }
        }
    }

    /// The GOAWAY's error code, if one came.
    pub fn goaway(&self) -> Option<u32> {
        self.events.iter().find_map(|e| match e {
            Event::GoAway(_, c) => Some(*c),
            _ => None,
        })
    }

    /// What happened to `stream`: `Some(status)` for a response, the reset code, or neither.
    pub fn stream_outcome(&self, stream: u32) -> StreamOutcome {
        let mut out = StreamOutcome::default();
        for e in &self.events {
            match e {
                Event::Status(s, st) if *s == stream && out.status.is_none() => {
                    out.status = Some(st.unwrap_or(0))
                }
                Event::Data(s, n, end) if *s == stream => {
                    out.body += n;
                    out.ended |= end;
                }
                Event::Reset(s, c) if *s == stream && out.reset.is_none() => out.reset = Some(*c),
                _ => {}
            }
        }
        out
    }

    /// Sends a plain GET on `stream` and waits (up to 3 s) for its response.
    pub async fn probe(&mut self, stream: u32, path: &str) -> StreamOutcome {
        let block = hpack::request("GET", path, &[]);
        if !self
            .send(&headers(stream, END_HEADERS | END_STREAM, &block))
            .await
        {
            return StreamOutcome::default();
        }
        self.read_until(Duration::from_secs(3), Duration::ZERO, |ev| {
            ev.iter().any(|e| {
                matches!(e, Event::Data(s, _, true) | Event::Reset(s, _) if *s == stream)
                    || matches!(e, Event::GoAway(..))
            })
        })
        .await;
        self.stream_outcome(stream)
    }
}

/// One stream's fate as the client saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamOutcome {
    pub status: Option<u16>,
    pub body: usize,
    pub ended: bool,
    pub reset: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip() {
        for v in [0u64, 30, 31, 127, 128, 1337, 4096, 1 << 40] {
            let b = hpack::int(5, 0x20, v);
            let mut pos = 0;
            assert_eq!(read_int(&b, &mut pos, 5), Some(v));
            assert_eq!(pos, b.len());
        }
    }

    #[test]
    fn huffman_statuses() {
        // "503" and "302" as nghttp2 codes them.
        assert_eq!(
            huffman_digits(&[0x6c, 0x0c, 0xff]).as_deref(),
            Some(&b"503"[..])
        );
        assert_eq!(huffman_digits(&[0x64, 0x02]).as_deref(), Some(&b"302"[..]));
    }

    #[test]
    fn status_from_blocks() {
        let mut d = StatusDecoder::new();
        assert_eq!(d.status(&[0x88]), Some(200));
        // Literal with incremental indexing, name :status (index 8), value "503" (Huffman).
        assert_eq!(d.status(&[0x48, 0x83, 0x6c, 0x0c, 0xff]), Some(503));
        assert_eq!(d.status(&[0xbe]), Some(503));
    }
}
