//! The TLS ClientHello as far as the tls_inspector needs it: the record layer (a ClientHello may be
//! split across several records and reads), the message's structure, the version, SNI and ALPN.
//! Pure: given the bytes seen so far, says whether they are a ClientHello, not TLS, or not yet
//! either. The checks are the ones BoringSSL makes before Envoy's callbacks see the hello, so the
//! verdicts agree with Envoy 1.40 for the hellos real clients send.

use std::borrow::Cow;

/// The largest record body and the largest ClientHello message BoringSSL accepts from a client.
const MAX_PLAINTEXT: usize = 16384;
/// The largest record length BoringSSL waits for; a longer one is refused from its header alone.
const MAX_ENCRYPTED: usize = MAX_PLAINTEXT + 320;
const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// The verdict on the bytes seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// Not decided yet: more bytes are needed.
    Incomplete,
    /// Not a ClientHello (plaintext, another protocol, or a hello TLS would refuse).
    NotTls,
    /// A ClientHello.
    Tls(ClientHello),
    /// A well-formed ClientHello with a `legacy_version` below TLS 1.0 or past 3.x: Envoy 1.40
    /// counts its SNI (found or not) and `tls_not_found`, then closes the connection.
    BadVersion {
        /// Whether it names a server.
        server_name: bool,
    },
}

/// What a ClientHello asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` of `server_name`, if any, in lower case.
    pub server_name: Option<Box<str>>,
    /// The `application_layer_protocol_negotiation` list as on the wire (each name prefixed by its
    /// length), if well formed and not empty.
    pub alpn: Option<Box<[u8]>>,
}

pub use skiff_config::filter_chain_match::alpn_names;

/// Parses the bytes seen so far at the head of a connection.
pub fn parse(buf: &[u8]) -> Parse {
    match handshake_message(buf) {
        Ok(msg) => client_hello(&msg),
        Err(verdict) => verdict,
    }
}

/// The first handshake message, reassembled from as many records as it spans (borrowed when it
/// fits in the first one), or the verdict when there is none (yet).
fn handshake_message(buf: &[u8]) -> Result<Cow<'_, [u8]>, Parse> {
    let mut msg: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut pos = 0;
    loop {
        let Some(header) = buf.get(pos..pos + RECORD_HEADER) else {
            return Err(Parse::Incomplete);
        };
        let (kind, major) = (header[0], header[1]);
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if major != 3 || len > MAX_ENCRYPTED || kind != CONTENT_HANDSHAKE {
            return Err(Parse::NotTls);
        }
        let Some(fragment) = buf.get(pos + RECORD_HEADER..pos + RECORD_HEADER + len) else {
            return Err(Parse::Incomplete);
        };
        if len > MAX_PLAINTEXT {
            return Err(Parse::NotTls);
        }
        pos += RECORD_HEADER + len;
        if msg.is_empty() {
            msg = Cow::Borrowed(fragment);
        } else {
            msg.to_mut().extend_from_slice(fragment);
        }
        if msg.len() >= HANDSHAKE_HEADER {
            if msg[0] != CLIENT_HELLO {
                return Err(Parse::NotTls);
            }
            let body = usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]);
            if body > MAX_PLAINTEXT {
                return Err(Parse::NotTls);
            }
            let whole = HANDSHAKE_HEADER + body;
            if msg.len() >= whole {
                return Ok(match msg {
                    Cow::Borrowed(b) => Cow::Borrowed(&b[HANDSHAKE_HEADER..whole]),
                    Cow::Owned(mut v) => {
                        v.truncate(whole);
                        v.drain(..HANDSHAKE_HEADER);
                        Cow::Owned(v)
                    }
                });
            }
        }
    }
}

/// A cursor over big-endian, length-prefixed fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn prefixed8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.bytes(usize::from(n))
    }

    fn prefixed16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The verdict on a whole ClientHello body.
fn client_hello(body: &[u8]) -> Parse {
    match hello_fields(body) {
        None => Parse::NotTls,
        Some((version, h)) if !(0x0301..=0x03ff).contains(&version) => Parse::BadVersion {
            server_name: h.server_name.is_some(),
        },
        Some((_, h)) => Parse::Tls(h),
    }
}

/// The `legacy_version` and what Envoy reads of a ClientHello body; `None` when TLS refuses it
/// before its SNI is seen. The bodies of other extensions (`supported_versions` included) are
/// not looked at, as Envoy's verdict does not depend on them.
fn hello_fields(body: &[u8]) -> Option<(u16, ClientHello)> {
    let mut r = Reader(body);
    let legacy_version = r.u16()?;
    r.bytes(32)?;
    if r.prefixed8()?.len() > 32 {
        return None;
    }
    let suites = r.prefixed16()?;
    if suites.len() < 2 || suites.len() % 2 != 0 {
        return None;
    }
    if r.prefixed8()?.is_empty() {
        return None;
    }
    let extensions = if r.is_empty() {
        &[][..]
    } else {
        let e = r.prefixed16()?;
        if !r.is_empty() {
            return None;
        }
        e
    };
    let (mut sni, mut alpn) = (None, None);
    let mut seen = [0u64; 1024];
    let mut e = Reader(extensions);
    while !e.is_empty() {
        let kind = e.u16()?;
        let data = e.prefixed16()?;
        let (word, bit) = (usize::from(kind >> 6), kind & 63);
        if seen[word] & (1 << bit) != 0 {
            return None; // duplicate extension
        }
        seen[word] |= 1 << bit;
        match kind {
            EXT_SERVER_NAME => sni = Some(data),
            EXT_ALPN => alpn = Some(data),
            _ => {}
        }
    }
    // Envoy reads ALPN before the handshake goes on; a malformed list is just no ALPN.
    let alpn = alpn.and_then(alpn_list);
    let server_name = match sni {
        None => None,
        Some(data) => Some(host_name(data)?),
    };
    Some((legacy_version, ClientHello { server_name, alpn }))
}

/// The host name of a `server_name` extension, checked as BoringSSL does: exactly one entry, of
/// type host_name, 1 to 255 bytes without NUL. Empty (no name) is `""`.
fn host_name(data: &[u8]) -> Option<Box<str>> {
    let mut r = Reader(data);
    let mut list = Reader(r.prefixed16()?);
    if !r.is_empty() {
        return None;
    }
    let kind = list.u8()?;
    let name = list.prefixed16()?;
    if !list.is_empty() || kind != 0 || name.is_empty() || name.len() > 255 || name.contains(&0) {
        return None;
    }
    // Envoy matches server names without regard to ASCII case; non-ASCII bytes are kept
    // (lossily), as the name is only compared.
    Some(String::from_utf8_lossy(&name.to_ascii_lowercase()).into())
}

/// The names of an ALPN extension, checked as Envoy does: a non-empty list of non-empty names.
fn alpn_list(data: &[u8]) -> Option<Box<[u8]>> {
    let mut r = Reader(data);
    let list = r.prefixed16()?;
    if !r.is_empty() || list.len() < 2 {
        return None;
    }
    let mut names = Reader(list);
    while !names.is_empty() {
        if names.prefixed8()?.is_empty() {
            return None;
        }
    }
    Some(list.into())
}

#[cfg(test)]
mod tests;
