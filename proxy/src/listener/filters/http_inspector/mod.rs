//! `envoy.filters.listener.http_inspector`: on a plaintext connection, tells HTTP/1.x from the
//! HTTP/2 prior-knowledge preface by the first bytes (read, not taken) and sets the requested
//! application protocol (`http/1.1`, `http/1.0` or `h2c`) for the filter chain match.

use std::sync::Arc;

use crate::stats::{Counter, Shard};

use super::{Accepted, ApplicationProtocols, Peek, Status, TransportProtocol};

/// How far Envoy looks for the end of the request line.
const MAX_INSPECT: usize = 8192;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspect {
    /// Not decided yet.
    Incomplete,
    /// Not HTTP.
    NotHttp,
    /// An HTTP/1.0 request line (also 0.9-style lines and versions other than 1.1, as Envoy).
    Http10,
    /// An HTTP/1.1 request line.
    Http11,
    /// The HTTP/2 connection preface.
    H2c,
}

/// Decides what the bytes seen so far are, as Envoy 1.40's inspector (with its lenient HTTP/1
/// parser) does.
pub fn inspect(buf: &[u8]) -> Inspect {
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return Inspect::Incomplete;
    }
    if buf.starts_with(H2_PREFACE) {
        return Inspect::H2c;
    }
    let Some(end) = buf.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if buf.iter().any(|&b| !is_line_byte(b)) || buf.len() >= MAX_INSPECT {
            return Inspect::NotHttp;
        }
        return Inspect::Incomplete;
    };
    let line = &buf[..end];
    if line.iter().any(|&b| !is_line_byte(b)) {
        return Inspect::NotHttp;
    }
    let mut words = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty());
    let (Some(_method), Some(_target)) = (words.next(), words.next()) else {
        return Inspect::NotHttp;
    };
    match (words.next(), words.next()) {
        (None, _) => Inspect::Http10,
        (Some(version), None) => match version {
            [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
                if major.is_ascii_digit() && minor.is_ascii_digit() =>
            {
                if (*major, *minor) == (b'1', b'1') {
                    Inspect::Http11
                } else {
                    Inspect::Http10
                }
            }
            _ => Inspect::NotHttp,
        },
        (Some(_), Some(_)) => Inspect::NotHttp,
    }
}

/// A byte a request line may hold: visible ASCII, space and tab.
fn is_line_byte(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b)
}

/// The filter on one worker, with its stats (`http_inspector.*`, shared by every listener).
#[derive(Debug)]
pub struct HttpInspector {
    http10_found: Counter,
    http11_found: Counter,
    http2_found: Counter,
    http_not_found: Counter,
    read_error: Counter,
}

impl HttpInspector {
    /// The filter on the worker whose stats are `shard`.
    pub fn new(shard: &Arc<Shard>) -> Self {
        let c = |n: &str| shard.counter(&format!("http_inspector.{n}"));
        HttpInspector {
            http10_found: c("http10_found"),
            http11_found: c("http11_found"),
            http2_found: c("http2_found"),
            http_not_found: c("http_not_found"),
            read_error: c("read_error"),
        }
    }

    pub(super) async fn on_accept(&self, sock: &mut Accepted, peek: &mut Peek) -> Status {
        // TLS was recognised by an earlier filter: nothing to look at in plaintext.
        if sock.transport_protocol == TransportProtocol::Tls {
            return Status::Continue;
        }
        // The request line usually fits the first read; the window grows up to Envoy's limit.
        let mut want = 512;
        let mut seen = 0;
        loop {
            if seen == want {
                want = (want * 2).min(MAX_INSPECT);
            }
            let buf = match peek.more(&mut sock.stream, seen, want).await {
                Ok(buf) => buf,
                Err(e) => {
                    let status = Status::from_io(&e);
                    if status == Status::ReadError {
                        self.read_error.inc();
                    }
                    return status;
                }
            };
            seen = buf.len();
            let (counter, protocol) = match inspect(buf) {
                Inspect::Incomplete => continue,
                Inspect::NotHttp => (&self.http_not_found, None),
                Inspect::Http10 => (&self.http10_found, Some("http/1.0")),
                Inspect::Http11 => (&self.http11_found, Some("http/1.1")),
                Inspect::H2c => (&self.http2_found, Some("h2c")),
            };
            counter.inc();
            if let Some(p) = protocol {
                sock.application_protocols = ApplicationProtocols::One(p);
            }
            return Status::Continue;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Observed on Envoy 1.40 (one connection each).
    #[test]
    fn verdicts_as_envoy() {
        use Inspect::*;
        for (bytes, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Http11),
            (b"GET / HTTP/1.0\r\n", Http10),
            (b"GET / HTTP/1.2\r\n", Http10),
            (b"GET / HTTP/2.0\r\n", Http10),
            (b"GET / HTTP/0.9\r\n", Http10),
            (b"GET /\r\n", Http10),
            (b"FOO / HTTP/1.1\r\n", Http11),
            (b"get / HTTP/1.1\r\n", Http11),
            (b"GET  / HTTP/1.1\r\n", Http11),
            (b"GET / HTTP/1.1\n", Http11),
            (b"GET / HTTP/1.1 \r\n", Http11),
            (b"CONNECT a:1 HTTP/1.1\r\n", Http11),
            (b"GET / HTTP/1.1", Incomplete),
            (b"GET / HT", Incomplete),
            (b"\x01\x02", NotHttp),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", H2c),
            (b"PRI * HTTP/2.0\r\n", Incomplete),
            (b"GET / http/1.1\r\n", NotHttp),
            (b"GET / HTTP/11.1\r\n", NotHttp),
            (b"G\r\n", NotHttp),
            (b"GET /a b HTTP/1.1\r\n", NotHttp),
            (b"\x16\x03\x01\x00\x05", NotHttp),
        ] {
            assert_eq!(inspect(bytes), want, "{:?}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(inspect(&[b'a'; MAX_INSPECT]), NotHttp);
    }
}
