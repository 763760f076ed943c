//! The PROXY protocol header (versions 1 and 2, haproxy's `proxy-protocol.txt`), parsed from
//! the bytes at the head of a connection. Pure: given what has arrived so far, says whether a
//! header is complete, incomplete, absent or malformed, with Envoy 1.40's verdict in each case.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The twelve bytes that open a v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// Signature, version/command, family/transport and the length of the rest.
const V2_HEADER_LEN: usize = 16;
const V2_ADDR_LEN_INET: usize = 12;
const V2_ADDR_LEN_INET6: usize = 36;
const V2_ADDR_LEN_UNIX: usize = 216;
/// The longest v1 line, CRLF included.
pub const MAX_V1_LEN: usize = 107;
/// How far to look first: a v2 header with the largest address block and no TLVs (the v1 limit
/// is shorter). A header with TLVs beyond it asks for more.
pub const INITIAL_READ: usize = V2_HEADER_LEN + V2_ADDR_LEN_UNIX;

/// A protocol version.
pub use crate::config::model::ProxyProtocolVersion as Version;

/// What the parser accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// A connection that does not start like a header passes untouched.
    pub allow_without: bool,
    /// v1 headers are accepted.
    pub allow_v1: bool,
    /// v2 headers are accepted.
    pub allow_v2: bool,
}

/// The verdict on the bytes seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<'a> {
    /// Not decided yet: read on, up to `want` bytes in all.
    Incomplete {
        /// Bytes to look at next time.
        want: usize,
    },
    /// No header, and `allow_without` lets the connection through as it is.
    NotFound,
    /// A whole header.
    Header(Header<'a>),
    /// Malformed or absent (`None`: nothing that looks like a header).
    Error(Option<Version>),
    /// A well-formed header of a version the configuration disallows.
    Denied(Version),
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// Its version.
    pub version: Version,
    /// Its length in bytes, TLVs included: what to take off the socket.
    pub len: usize,
    /// (source, destination) of the original connection. `None` for v1 `UNKNOWN` and v2 `LOCAL`:
    /// the connection's own addresses stay.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// The v2 TLV block, already checked to be well formed (empty for v1 and `LOCAL`).
    pub tlvs: Tlvs<'a>,
}

/// The TLVs of a v2 header, as (type, value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tlvs<'a>(&'a [u8]);

impl<'a> Iterator for Tlvs<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (&ty, rest) = self.0.split_first()?;
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        if rest.len() < len {
            self.0 = &[];
            return None;
        }
        let (value, rest) = rest.split_at(len);
        self.0 = rest;
        Some((ty, value))
    }
}

/// Whether a TLV block is a sequence of whole TLVs.
fn tlvs_well_formed(mut b: &[u8]) -> bool {
    while let Some((_, rest)) = b.split_first() {
        let Some((len, rest)) = rest.split_first_chunk::<2>() else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes(*len));
        match rest.get(len..) {
            Some(rest) => b = rest,
            None => return false,
        }
    }
    true
}

/// Parses the bytes seen so far at the head of a connection.
pub fn parse<'a>(buf: &'a [u8], opts: &Options) -> Parse<'a> {
    if opts.allow_without && !buf.is_empty() {
        let v2 = opts.allow_v2 && {
            let n = buf.len().min(V2_SIGNATURE.len());
            buf[..n] == V2_SIGNATURE[..n]
        };
        let v1 = opts.allow_v1 && {
            let n = buf.len().min(V1_SIGNATURE.len());
            buf[..n] == V1_SIGNATURE[..n]
        };
        if !v1 && !v2 {
            return Parse::NotFound;
        }
    }
    if buf.len() >= V2_HEADER_LEN {
        if buf[..V2_SIGNATURE.len()] == V2_SIGNATURE {
            return parse_v2(buf, opts);
        }
        if &buf[..V1_SIGNATURE.len()] != V1_SIGNATURE {
            return Parse::Error(None);
        }
    }
    // v1 (or too short to tell): the line ends at the first CRLF. A CRLF right at the start may
    // still be the v2 signature.
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(0) => Parse::Incomplete { want: INITIAL_READ },
        Some(i) => {
            let len = i + 2;
            if len > MAX_V1_LEN {
                Parse::Error(Some(Version::V1))
            } else if !opts.allow_v1 {
                Parse::Denied(Version::V1)
            } else {
                match parse_v1(&buf[..len]) {
                    Some(addresses) => Parse::Header(Header {
                        version: Version::V1,
                        len,
                        addresses,
                        tlvs: Tlvs::default(),
                    }),
                    None => Parse::Error(Some(Version::V1)),
                }
            }
        }
        None if buf.len() > MAX_V1_LEN => Parse::Error(None),
        None => Parse::Incomplete { want: INITIAL_READ },
    }
}

/// One v1 line, CRLF included: `Some(None)` for UNKNOWN, `None` when malformed.
#[allow(clippy::option_option)]
fn parse_v1(line: &[u8]) -> Option<Option<(SocketAddr, SocketAddr)>> {
    let end = line
        .iter()
        .rposition(|b| !WHITESPACE.contains(b))
        .map_or(0, |i| i + 1);
    // Single spaces only: an empty field (two spaces in a row) is malformed.
    let mut parts = line[..end].split(|&b| b == b' ');
    if parts.next() != Some(b"PROXY".as_slice()) {
        return None;
    }
    let family = parts.next()?;
    if family == b"UNKNOWN" {
        return Some(None);
    }
    let mut field = || std::str::from_utf8(parts.next()?).ok();
    let (src, dst, sport, dport) = (field()?, field()?, field()?, field()?);
    if parts.next().is_some() {
        return None;
    }
    let (src, dst): (IpAddr, IpAddr) = match family {
        b"TCP4" => (
            src.parse::<Ipv4Addr>().ok()?.into(),
            dst.parse::<Ipv4Addr>().ok()?.into(),
        ),
        b"TCP6" => (
            src.parse::<Ipv6Addr>().ok()?.into(),
            dst.parse::<Ipv6Addr>().ok()?.into(),
        ),
        _ => return None,
    };
    let src = SocketAddr::new(src, port(sport)?);
    let dst = SocketAddr::new(dst, port(dport)?);
    (unicast(src.ip()) && unicast(dst.ip())).then_some(Some((src, dst)))
}

const WHITESPACE: &[u8] = b" \t\n\r\x0b\x0c";

/// A decimal port as Envoy reads it: surrounding whitespace and a leading `+` allowed.
fn port(s: &str) -> Option<u16> {
    let s = s.trim_matches(|c: char| c.is_ascii() && WHITESPACE.contains(&(c as u8)));
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = s.trim_start_matches('0');
    if digits.len() > 5 {
        return None;
    }
    digits
        .parse::<u32>()
        .map_or(Some(0), |v| u16::try_from(v).ok())
}

/// An address a TCP peer can have: not unspecified, broadcast or multicast.
fn unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast(),
        IpAddr::V6(a) => !a.is_unspecified() && !a.is_multicast(),
    }
}

fn parse_v2<'a>(buf: &'a [u8], opts: &Options) -> Parse<'a> {
    const LOCAL: u8 = 0;
    const PROXY: u8 = 1;
    if !opts.allow_v2 {
        return Parse::Denied(Version::V2);
    }
    let err = Parse::Error(Some(Version::V2));
    let ver_cmd = buf[12];
    let fam = buf[13];
    if ver_cmd >> 4 != 2 {
        return err;
    }
    let cmd = ver_cmd & 0x0f;
    let addr_len = if cmd == LOCAL {
        0
    } else {
        match fam >> 4 {
            1 => V2_ADDR_LEN_INET,
            2 => V2_ADDR_LEN_INET6,
            _ => return err,
        }
    };
    let rest_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if rest_len < addr_len {
        return err;
    }
    let len = V2_HEADER_LEN + rest_len;
    if buf.len() < V2_HEADER_LEN + addr_len {
        return Parse::Incomplete {
            want: len.max(INITIAL_READ),
        };
    }
    let a = &buf[V2_HEADER_LEN..];
    let addresses = if cmd == LOCAL {
        None
    } else if cmd == PROXY && matches!(fam & 0x0f, 1 | 2) {
        let be16 = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
        let (src, dst): (IpAddr, IpAddr) = if fam >> 4 == 1 {
            let ip = |i: usize| Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]);
            (ip(0).into(), ip(4).into())
        } else {
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                Ipv6Addr::from(o)
            };
            (ip(0).into(), ip(16).into())
        };
        let (sp, dp) = if fam >> 4 == 1 {
            (be16(8), be16(10))
        } else {
            (be16(32), be16(34))
        };
        Some((SocketAddr::new(src, sp), SocketAddr::new(dst, dp)))
    } else {
        return err;
    };
    if buf.len() < len {
        return Parse::Incomplete { want: len };
    }
    let tlvs = match addresses {
        // A LOCAL header's TLVs are skipped unread.
        None => Tlvs::default(),
        Some(_) => {
            let block = &buf[V2_HEADER_LEN + addr_len..len];
            if !tlvs_well_formed(block) {
                return err;
            }
            Tlvs(block)
        }
    };
    if let Some((s, d)) = addresses {
        if !unicast(s.ip()) || !unicast(d.ip()) {
            return err;
        }
    }
    Parse::Header(Header {
        version: Version::V2,
        len,
        addresses,
        tlvs,
    })
}

#[cfg(test)]
mod tests;
