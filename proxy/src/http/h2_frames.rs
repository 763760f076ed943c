//! The frames of a downstream HTTP/2 connection, followed frame header by frame header (the
//! payloads are skipped) for what h2 does not do itself:
//!
//! - `request_headers_timeout`: Envoy's timer runs from the start of a stream's HEADERS frame to
//!   the end of its header block (the frame with END_HEADERS, a CONTINUATION or the HEADERS
//!   itself); h2 keeps a partial header block to itself.
//! - Envoy's inbound flood limits (`http2_protocol_options`): consecutive frames with an empty
//!   payload, PRIORITY frames per stream opened, WINDOW_UPDATE frames per DATA frame sent. A
//!   connection over one is closed, as Envoy closes it.
//! - Envoy's outbound limits: the frames written to the client that wait for the socket, all of
//!   them (`max_outbound_frames`) and the control frames among them
//!   (`max_outbound_control_frames`). A client that does not read while it makes the proxy
//!   answer (PING, SETTINGS, a stream reset) has its connection closed.

use std::collections::VecDeque;

/// The client connection preface, which comes before the first frame.
const PREFACE_LEN: usize = 24;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

/// Envoy's inbound flood limits (`Http2ProtocolOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimits {
    /// `max_consecutive_inbound_frames_with_empty_payload`: HEADERS, CONTINUATION and DATA
    /// frames with nothing but padding and no END_STREAM, in a row.
    pub empty_frames: u32,
    /// `max_inbound_priority_frames_per_stream`: PRIORITY frames, times one more than the
    /// streams the client opened.
    pub priority_per_stream: u32,
    /// `max_inbound_window_update_frames_per_data_frame_sent`: WINDOW_UPDATE frames may number
    /// `5 + 2 * (streams opened + this * DATA frames sent)`.
    pub window_update_per_data_frame: u32,
    /// `max_outbound_frames`: frames written to the client and not yet taken by the socket.
    pub outbound_frames: u32,
    /// `max_outbound_control_frames`: the PING and SETTINGS acknowledgements and RST_STREAM
    /// frames among them.
    pub outbound_control_frames: u32,
}

impl Default for FloodLimits {
    /// Envoy's defaults.
    fn default() -> Self {
        FloodLimits {
            empty_frames: 1,
            priority_per_stream: 100,
            window_update_per_data_frame: 10,
            outbound_frames: 10_000,
            outbound_control_frames: 1_000,
        }
    }
}

/// Which flood limit a connection went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    /// `http2.inbound_empty_frames_flood`.
    EmptyFrames,
    /// `http2.inbound_priority_frames_flood`.
    Priority,
    /// `http2.inbound_window_update_frames_flood`.
    WindowUpdate,
    /// `http2.outbound_flood`.
    Outbound,
    /// `http2.outbound_control_flood`.
    OutboundControl,
}

impl Flood {
    /// What the connection's end is logged with.
    pub fn message(self) -> &'static str {
        match self {
            Flood::EmptyFrames => "too many consecutive frames with an empty payload",
            Flood::Priority => "too many PRIORITY frames",
            Flood::WindowUpdate => "too many WINDOW_UPDATE frames",
            Flood::Outbound => "too many frames in the outbound queue",
            Flood::OutboundControl => "too many control frames in the outbound queue",
        }
    }
}

/// A frame header being read across reads, and the payload bytes to skip after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Walker {
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
}

/// What the walker read next.
enum Step {
    /// The rest of `data` was part of a frame header.
    Partial,
    /// A frame header ended `n` bytes into the data it was given.
    Header(usize, FrameHeader),
    /// `n` payload bytes were skipped; `ended`: the frame's payload is over.
    Payload(usize, bool),
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Walker {
    fn step(&mut self, data: &[u8]) -> Step {
        if self.payload_left > 0 {
            let n = self.payload_left.min(data.len());
            self.payload_left -= n;
            return Step::Payload(n, self.payload_left == 0);
        }
        let n = (9 - self.header_len).min(data.len());
        self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
        self.header_len += n;
        if self.header_len < 9 {
            return Step::Partial;
        }
        self.header_len = 0;
        let h = self.header;
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        self.payload_left = len;
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        Step::Header(
            n,
            FrameHeader {
                len,
                kind: h[3],
                flags: h[4],
                stream,
            },
        )
    }
}

/// Follows the frames a downstream HTTP/2 client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frames {
    /// Bytes of the connection preface still to come.
    preface_left: usize,
    walker: Walker,
    /// The current frame ends its header block.
    ends_block: bool,
    /// A header block has begun and has not ended.
    in_block: bool,
    /// The flood limits, when they are checked.
    limits: Option<FloodLimits>,
    /// The current frame is a padded DATA or HEADERS frame whose emptiness its first payload
    /// byte (the pad length) decides: its payload length and flags.
    pad_pending: Option<(usize, u8)>,
    consecutive_empty: u64,
    priority_frames: u64,
    window_update_frames: u64,
    /// Streams the client opened (HEADERS on a stream id above every earlier one).
    streams: u64,
    highest_stream: u32,
    /// DATA frames written to the client.
    data_frames_sent: u64,
    /// The frames written to the client.
    outbound: Walker,
    /// Bytes written to the client so far, and of those, taken by the socket.
    outbound_at: u64,
    socket_at: u64,
    /// The frames written to the client that the socket has not wholly taken: where each ends,
    /// and whether it is a control frame.
    waiting: VecDeque<(u64, bool)>,
    /// The control frames in `waiting`.
    waiting_control: usize,
}

impl Default for Frames {
    fn default() -> Self {
        Frames::new(true)
    }
}

impl Frames {
    /// A connection's frames; `preface`: its bytes start with the client preface.
    pub fn new(preface: bool) -> Self {
        Frames {
            preface_left: if preface { PREFACE_LEN } else { 0 },
            walker: Walker::default(),
            ends_block: false,
            in_block: false,
            limits: None,
            pad_pending: None,
            consecutive_empty: 0,
            priority_frames: 0,
            window_update_frames: 0,
            streams: 0,
            highest_stream: 0,
            data_frames_sent: 0,
            outbound: Walker::default(),
            outbound_at: 0,
            socket_at: 0,
            waiting: VecDeque::new(),
            waiting_control: 0,
        }
    }

    /// Checks these flood limits from now on.
    pub fn with_limits(mut self, limits: FloodLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Whether a request's header block is arriving: its HEADERS frame has begun and the end
    /// of the block has not been read.
    pub fn in_header_block(&self) -> bool {
        self.in_block
    }

    /// Takes the next bytes of the connection, as the client sent them. On a flood, says which
    /// and how many bytes of `data` come before the frame that went over the limit (those
    /// may be passed on; the rest, never).
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), (Flood, usize)> {
        let total = data.len();
        let skip = self.preface_left.min(data.len());
        self.preface_left -= skip;
        data = &data[skip..];
        // Where the frame being read began within `data` (0 when before it).
        let mut frame_start = total - data.len();
        while !data.is_empty() {
            match self.walker.step(data) {
                Step::Partial => return Ok(()),
                Step::Payload(n, ended) => {
                    if let Some((len, flags)) = self.pad_pending.take() {
                        // The pad length and its byte take nothing from the frame's content.
                        let content = len.saturating_sub(1 + usize::from(data[0]));
                        if let Err(f) = self.count_payload(content, flags) {
                            return Err((f, frame_start));
                        }
                    }
                    data = &data[n..];
                    if ended {
                        self.frame_done();
                        frame_start = total - data.len();
                    }
                }
                Step::Header(n, h) => {
                    data = &data[n..];
                    self.ends_block = false;
                    if h.kind == HEADERS || (h.kind == CONTINUATION && self.in_block) {
                        self.in_block = true;
                        self.ends_block = h.flags & END_HEADERS != 0;
                    }
                    if let Err(f) = self.count_frame(h) {
                        return Err((f, frame_start));
                    }
                    if h.len == 0 {
                        self.frame_done();
                        frame_start = total - data.len();
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes bytes written to the client (frames only, from the first), counting DATA frames
    /// and the frames the socket has not taken yet; says when those are over the outbound
    /// limits. Bytes the socket took at once are given to [`Frames::written`] first.
    pub fn sent(&mut self, mut data: &[u8]) -> Result<(), Flood> {
        let Some(limits) = self.limits else {
            return Ok(());
        };
        while !data.is_empty() {
            let before = data.len();
            match self.outbound.step(data) {
                Step::Partial => data = &[],
                Step::Payload(n, _) => data = &data[n..],
                Step::Header(n, h) => {
                    data = &data[n..];
                    if h.kind == DATA {
                        self.data_frames_sent += 1;
                    }
                    let end = self.outbound_at + n as u64 + h.len as u64;
                    if end > self.socket_at {
                        // Envoy's control frames: the ACKs it owes the client, and resets.
                        let control = (matches!(h.kind, PING | SETTINGS) && h.flags & ACK != 0)
                            || h.kind == RST_STREAM;
                        self.waiting.push_back((end, control));
                        self.waiting_control += usize::from(control);
                    }
                }
            }
            self.outbound_at += (before - data.len()) as u64;
        }
        if self.waiting.len() > limits.outbound_frames as usize {
            return Err(Flood::Outbound);
        }
        if self.waiting_control > limits.outbound_control_frames as usize {
            return Err(Flood::OutboundControl);
        }
        Ok(())
    }

    /// `n` more bytes written to the client were taken by the socket.
    pub fn written(&mut self, n: usize) {
        self.socket_at += n as u64;
        while let Some(&(end, control)) = self.waiting.front() {
            if end > self.socket_at {
                break;
            }
            self.waiting.pop_front();
            self.waiting_control -= usize::from(control);
        }
    }

    /// Counts a frame whose header was just read, as Envoy's codec does when a frame begins.
    fn count_frame(&mut self, h: FrameHeader) -> Result<(), Flood> {
        let Some(_) = self.limits else {
            return Ok(());
        };
        match h.kind {
            DATA | HEADERS | CONTINUATION => {
                if h.kind == HEADERS && h.stream > self.highest_stream {
                    self.highest_stream = h.stream;
                    self.streams += 1;
                }
                if h.flags & PADDED != 0 && h.kind != CONTINUATION && h.len > 0 {
                    self.pad_pending = Some((h.len, h.flags));
                    return Ok(());
                }
                self.count_payload(h.len, h.flags)
            }
            PRIORITY => {
                self.priority_frames += 1;
                self.check()
            }
            WINDOW_UPDATE => {
                self.window_update_frames += 1;
                self.check()
            }
            _ => self.check(),
        }
    }

    /// A HEADERS, CONTINUATION or DATA frame with `content` bytes (padding taken off).
    fn count_payload(&mut self, content: usize, flags: u8) -> Result<(), Flood> {
        if content == 0 && flags & END_STREAM == 0 {
            self.consecutive_empty += 1;
        } else {
            self.consecutive_empty = 0;
        }
        self.check()
    }

    fn check(&self) -> Result<(), Flood> {
        let Some(l) = self.limits else {
            return Ok(());
        };
        if self.consecutive_empty > u64::from(l.empty_frames) {
            return Err(Flood::EmptyFrames);
        }
        if self.priority_frames > u64::from(l.priority_per_stream) * (1 + self.streams) {
            return Err(Flood::Priority);
        }
        let updates = 5 + 2
            * (self.streams + u64::from(l.window_update_per_data_frame) * self.data_frames_sent);
        if self.window_update_frames > updates {
            return Err(Flood::WindowUpdate);
        }
        Ok(())
    }

    fn frame_done(&mut self) {
        if self.ends_block {
            self.in_block = false;
            self.ends_block = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn follows_header_blocks_however_split() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, b""));
        let settings = bytes.len();
        bytes.extend(frame(HEADERS, 0x1, b"abc"));
        bytes.extend(frame(CONTINUATION, END_HEADERS, b"de"));
        let data = bytes.len();
        bytes.extend(frame(0x0, 0x1, b"xyz"));
        for split in 1..bytes.len() {
            let mut w = Frames::default();
            let mut at = 0;
            for piece in bytes.chunks(split) {
                assert!(w.feed(piece).is_ok());
                at += piece.len();
                // Inside the block from the HEADERS frame's header to the end of the
                // CONTINUATION's payload.
                let expect = at >= settings + 9 && at < data;
                assert_eq!(w.in_header_block(), expect, "split {split}, at {at}");
            }
            assert!(!w.in_header_block());
        }
    }

    #[test]
    fn a_headers_frame_with_end_headers_ends_with_its_payload() {
        let mut w = Frames::new(false);
        let f = frame(HEADERS, END_HEADERS | 0x1, b"abcd");
        assert!(w.feed(&f[..11]).is_ok());
        assert!(w.in_header_block());
        assert!(w.feed(&f[11..]).is_ok());
        assert!(!w.in_header_block());
        // A CONTINUATION outside a block (a protocol error h2 answers) starts nothing.
        assert!(w.feed(&frame(CONTINUATION, 0, b"x")).is_ok());
        assert!(!w.in_header_block());
    }

    fn on_stream(stream: u32, kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = frame(kind, flags, payload);
        f[5..9].copy_from_slice(&stream.to_be_bytes());
        f
    }

    /// Feeds `frames` after the preface, in pieces of `split` bytes; the first flood.
    fn flood_of(frames: &[Vec<u8>], split: usize) -> Option<(Flood, usize)> {
        let mut w = Frames::new(true).with_limits(FloodLimits::default());
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frames.concat());
        let mut at = 0;
        for piece in bytes.chunks(split) {
            if let Err((f, before)) = w.feed(piece) {
                return Some((f, at + before));
            }
            at += piece.len();
        }
        None
    }

    #[test]
    fn consecutive_empty_frames_go_over_at_the_second() {
        let head = on_stream(1, HEADERS, END_HEADERS, b"abc");
        let empty = on_stream(1, DATA, 0, b"");
        let padded_empty = on_stream(1, DATA, PADDED, b"\x02\x00\x00");
        let full = on_stream(1, DATA, 0, b"x");
        let end = on_stream(1, DATA, END_STREAM, b"");
        for split in [1, 2, 7, 9, 1000] {
            // One empty frame is allowed; a frame with content (or END_STREAM) resets the run.
            let ok = [&head, &empty, &full, &empty, &end].map(|f| f.to_vec());
            assert_eq!(flood_of(&ok, split), None, "split {split}");
            let bad = [&head, &empty, &padded_empty, &full].map(|f| f.to_vec());
            // Nothing of the second empty frame may pass: what passes ends where it begins,
            // or where the piece that showed it (its pad length) begins.
            let start = 24 + head.len() + empty.len();
            let shown_in = (start + 9) / split * split;
            assert_eq!(
                flood_of(&bad, split),
                Some((Flood::EmptyFrames, start.max(shown_in))),
                "split {split}"
            );
        }
    }

    #[test]
    fn priority_and_window_update_limits_follow_streams_and_data_sent() {
        let prio = on_stream(3, PRIORITY, 0, b"\x00\x00\x00\x00\x10");
        let head = on_stream(1, HEADERS, END_HEADERS | END_STREAM, b"abc");
        let mut frames = vec![prio.clone(); 100];
        assert_eq!(flood_of(&frames, 1000), None);
        frames.push(prio.clone());
        assert_eq!(flood_of(&frames, 1000).map(|f| f.0), Some(Flood::Priority));
        // A stream opened allows 100 more; trailers on it open nothing.
        let mut frames = vec![
            head.clone(),
            on_stream(1, HEADERS, END_HEADERS | END_STREAM, b"t"),
        ];
        frames.extend(vec![prio.clone(); 200]);
        assert_eq!(flood_of(&frames, 1000), None);
        frames.push(prio);
        assert_eq!(flood_of(&frames, 1000).map(|f| f.0), Some(Flood::Priority));

        let update = on_stream(0, WINDOW_UPDATE, 0, &1u32.to_be_bytes());
        assert_eq!(flood_of(&vec![update.clone(); 5], 1000), None);
        assert_eq!(
            flood_of(&vec![update.clone(); 6], 1000).map(|f| f.0),
            Some(Flood::WindowUpdate)
        );
        // Each DATA frame sent allows 20 more.
        let mut w = Frames::new(false).with_limits(FloodLimits::default());
        let data = on_stream(1, DATA, 0, b"hello");
        w.written(data.len());
        w.sent(&data[..4]).expect("no flood");
        w.sent(&data[4..]).expect("no flood");
        for _ in 0..25 {
            assert!(w.feed(&update).is_ok());
        }
        assert!(w.feed(&update).is_err());
    }

    #[test]
    fn frames_waiting_for_the_socket_are_limited() {
        let limits = FloodLimits {
            outbound_frames: 5,
            outbound_control_frames: 3,
            ..FloodLimits::default()
        };
        let ack = frame(PING, ACK, b"01234567");
        let data = on_stream(1, DATA, 0, b"hello");
        // A PING of the proxy's own is not a control frame.
        let mut w = Frames::new(false).with_limits(limits);
        for _ in 0..5 {
            assert_eq!(w.sent(&frame(PING, 0, b"01234567")), Ok(()));
        }
        // Taken by the socket as they are written: never waiting.
        let mut w = Frames::new(false).with_limits(limits);
        for _ in 0..100 {
            w.written(ack.len());
            assert_eq!(w.sent(&ack), Ok(()));
        }
        // Waiting: the fourth control frame is one too many.
        for _ in 0..3 {
            assert_eq!(w.sent(&ack), Ok(()));
        }
        assert_eq!(w.sent(&ack), Err(Flood::OutboundControl));
        // Once the socket takes two of them, two more fit, and DATA frames count only in all.
        let mut w = Frames::new(false).with_limits(limits);
        for _ in 0..3 {
            assert_eq!(w.sent(&ack), Ok(()));
        }
        w.written(2 * ack.len() + 3);
        assert_eq!(w.sent(&ack), Ok(()));
        assert_eq!(w.sent(&ack), Ok(()));
        assert_eq!(w.sent(&data), Ok(()));
        assert_eq!(w.sent(&data), Ok(()));
        assert_eq!(w.sent(&data), Err(Flood::Outbound));
        // A frame whose header the socket took but not its payload still waits.
        let mut w = Frames::new(false).with_limits(limits);
        let mut split = data.clone();
        split.extend_from_slice(&data);
        w.written(10);
        assert_eq!(w.sent(&split), Ok(()));
        assert_eq!(w.waiting.len(), 2);
        w.written(split.len() - 10);
        assert!(w.waiting.is_empty());
    }

    #[test]
    fn without_limits_nothing_is_a_flood() {
        let mut w = Frames::new(false);
        for _ in 0..1000 {
            assert!(w.feed(&frame(DATA, 0, b"")).is_ok());
            assert!(w.feed(&frame(PRIORITY, 0, b"\x00\x00\x00\x00\x10")).is_ok());
        }
    }
}
