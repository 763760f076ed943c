//! Where a downstream HTTP/2 client is in its frames, for `request_headers_timeout`: Envoy's
//! timer runs from the start of a stream's HEADERS frame to the end of its header block (the
//! frame with END_HEADERS, a CONTINUATION or the HEADERS itself). h2 keeps a partial header
//! block to itself, so the connection's bytes are followed here, frame header by frame header,
//! without looking at the payloads.

/// The client connection preface, which comes before the first frame.
const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Follows the frames of one downstream HTTP/2 connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderBlocks {
    /// Bytes of the connection preface still to come.
    preface_left: usize,
    /// The frame header being read.
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// The current frame ends its header block.
    ends_block: bool,
    /// A header block has begun and has not ended.
    in_block: bool,
}

impl Default for HeaderBlocks {
    fn default() -> Self {
        HeaderBlocks::new(true)
    }
}

impl HeaderBlocks {
    /// A connection's frames; `preface`: its bytes start with the client preface.
    pub fn new(preface: bool) -> Self {
        HeaderBlocks {
            preface_left: if preface { PREFACE_LEN } else { 0 },
            header: [0; 9],
            header_len: 0,
            payload_left: 0,
            ends_block: false,
            in_block: false,
        }
    }

    /// Whether a request's header block is arriving: its HEADERS frame has begun and the end
    /// of the block has not been read.
    pub fn in_header_block(&self) -> bool {
        self.in_block
    }

    /// Takes the next bytes of the connection, as the client sent them.
    pub fn feed(&mut self, mut data: &[u8]) {
        let skip = self.preface_left.min(data.len());
        self.preface_left -= skip;
        data = &data[skip..];
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                self.payload_left -= n;
                data = &data[n..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            let n = (9 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len < 9 {
                return;
            }
            self.header_len = 0;
            let h = self.header;
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            self.ends_block = false;
            if kind == HEADERS || (kind == CONTINUATION && self.in_block) {
                self.in_block = true;
                self.ends_block = flags & END_HEADERS != 0;
            }
            self.payload_left = len;
            if len == 0 {
                self.frame_done();
            }
        }
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
            let mut w = HeaderBlocks::default();
            let mut at = 0;
            for piece in bytes.chunks(split) {
                w.feed(piece);
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
        let mut w = HeaderBlocks::new(false);
        let f = frame(HEADERS, END_HEADERS | 0x1, b"abcd");
        w.feed(&f[..11]);
        assert!(w.in_header_block());
        w.feed(&f[11..]);
        assert!(!w.in_header_block());
        // A CONTINUATION outside a block (a protocol error h2 answers) starts nothing.
        w.feed(&frame(CONTINUATION, 0, b"x"));
        assert!(!w.in_header_block());
    }
}
