//! Envoy 1.40's HTTP/1.1 request framing rules, judged on a request head's raw bytes before
//! hyper parses it.
//!
//! hyper normalises some ambiguous requests where Envoy refuses them: it drops a `Content-Length`
//! sent next to `Transfer-Encoding: chunked`, takes `gzip, chunked` and repeated identical
//! `Content-Length`s, and lower-case methods. Request smuggling lives in exactly those gaps, and a
//! normalised request no longer shows what the client sent, so skiff decides from the bytes with
//! the verdicts observed on Envoy 1.40 (`tests/tests/hostile_http1.rs` compares them).

/// What the bytes at the start of a buffer hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// The head is not complete yet.
    Incomplete,
    /// A complete head of `len` bytes (leading empty lines included) and Envoy's verdict on it.
    Head {
        /// Bytes of the head, up to and including its empty line.
        len: usize,
        /// Forward it, or refuse it.
        verdict: Verdict,
        /// It has an `Expect` header (read as its lines are, for [`hide_continue`]).
        expect: bool,
    },
}

/// Envoy's verdict on one request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Envoy forwards it; the body that follows is framed so.
    Accept(Framing),
    /// Envoy's codec refuses it with this reply.
    Refuse(Refusal),
    /// A head only hyper can judge (obs-fold, a bare CR): hyper refuses it, Envoy may not.
    Codec,
}

/// How the body after an accepted head ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked, up to the last chunk and its trailers.
    Chunked,
    /// CONNECT: what follows is the tunnel's (once its reply switches the connection), never
    /// a request.
    Opaque,
}

/// Why Envoy's HTTP/1.1 codec refuses a request, as `%RESPONSE_CODE_DETAILS%` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `http1.content_length_and_chunked_not_allowed`: both framings at once.
    ContentLengthAndChunked,
    /// `http1.invalid_transfer_encoding`: a transfer coding other than a lone `chunked` (501).
    InvalidTransferEncoding,
    /// `http1.codec_error`: anything else the parser refuses.
    CodecError,
    /// `http1.invalid_characters`: a control character in a header value.
    InvalidCharacters,
    /// `http1.connection_header_rejected`: `Connection` nominates a header Envoy will not drop,
    /// or ten or more headers.
    ConnectionHeaderRejected,
    /// `low_version`: an HTTP version other than 1.0 and 1.1 (426).
    LowVersion,
    /// `http1.invalid_url`: a request target that is neither a path, `*` for `OPTIONS`, nor an
    /// absolute URL.
    InvalidUrl,
    /// `http1.invalid_scheme`: an absolute URL whose scheme is not `http` or `https`.
    InvalidScheme,
    /// `http1.too_many_headers`: more header lines than `max_headers_count` (431).
    TooManyHeaders,
    /// `http1.headers_too_large`: a head longer than `max_request_headers_kb` (431).
    HeadersTooLarge,
    /// Not a codec verdict: a fragment (`#`) in the request target, which Envoy's connection
    /// manager refuses as `path_normalization_failed` (400).
    Fragment,
    /// Not a codec verdict: the head did not arrive within `request_headers_timeout`
    /// (`request_header_timeout`, 408); the guard's timer gives it.
    HeaderTimeout,
}

/// A refused request: why, and what the access log shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// The method, when the request line could be read.
    pub method: Option<String>,
    /// The request target, when the request line could be read.
    pub path: Option<String>,
}

impl Refusal {
    /// A head longer than `max_request_headers_kb`: refused before it is whole, so the access
    /// log shows no method or path.
    pub fn too_large() -> Refusal {
        Refusal {
            reason: Reason::HeadersTooLarge,
            method: None,
            path: None,
        }
    }
}

/// Methods Envoy 1.40's codec knows; it refuses any other (`get`, `FOO`: observed 400).
const METHODS: &[&str] = &[
    "DELETE",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "COPY",
    "LOCK",
    "MKCOL",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "SEARCH",
    "UNLOCK",
    "BIND",
    "REBIND",
    "UNBIND",
    "ACL",
    "REPORT",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PATCH",
    "PURGE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
    "SOURCE",
];

/// Headers a `Connection` token may not nominate: Envoy answers 400 rather than drop them
/// (observed for these three; others are dropped).
const UNDROPPABLE: &[&str] = &["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"];

/// Envoy refuses a `Connection` header with this many tokens or more.
const MAX_NOMINATED: usize = 10;

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Envoy's default `max_headers_count`.
pub const DEFAULT_MAX_HEADERS: u32 = 100;

/// What a connection manager's codec allows of a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `max_headers_count`: a head with more header lines is refused.
    pub max_headers: u32,
    /// `http_protocol_options.allow_chunked_length`: `Content-Length` with a chunked
    /// `Transfer-Encoding` is taken as chunked (the length is dropped) instead of refused.
    pub allow_chunked_length: bool,
    /// `http_protocol_options.allow_absolute_url` (default true): a target that is not a path
    /// must be an `http` or `https` URL. Without it any target passes, as a path (which the
    /// connection manager refuses unless it starts with `/`).
    pub allow_absolute_url: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            max_headers: DEFAULT_MAX_HEADERS,
            allow_chunked_length: false,
            allow_absolute_url: true,
        }
    }
}

/// Scans the request head at the start of `buf`, with Envoy's default rules.
pub fn scan(buf: &[u8]) -> Scan {
    scan_limited(buf, Rules::default())
}

/// Scans the request head at the start of `buf` under `rules`.
pub fn scan_limited(buf: &[u8], rules: Rules) -> Scan {
    // Empty lines before a request line are tolerated (RFC 9112 §2.2), by Envoy and hyper alike.
    let mut start = 0;
    while start < buf.len() && (buf[start] == b'\r' || buf[start] == b'\n') {
        start += 1;
    }
    let Some(len) = head_len(&buf[start..]) else {
        return Scan::Incomplete;
    };
    let head = &buf[start..start + len];
    let mut expect = false;
    let verdict = judge(head, rules, &mut expect);
    Scan::Head {
        len: start + len,
        verdict,
        expect,
    }
}

/// The length of a head that ends with an empty line (CRLF or bare LF), if complete.
fn head_len(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let line = &buf[i..nl];
        if line.is_empty() || line == b"\r" {
            return Some(nl + 1);
        }
        i = nl + 1;
    }
    None
}

fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
}

fn trim(v: &[u8]) -> &[u8] {
    let v = match v.iter().position(|&b| b != b' ' && b != b'\t') {
        Some(s) => &v[s..],
        None => return &[],
    };
    match v.iter().rposition(|&b| b != b' ' && b != b'\t') {
        Some(e) => &v[..=e],
        None => &[],
    }
}

/// What a hidden `Expect: 100-continue` reads as (see [`hide_continue`]).
pub const HIDDEN_CONTINUE: &str = "~00-continue";

/// Rewrites, in place, the value of each `Expect: 100-continue` line of a head (the request
/// line first) to [`HIDDEN_CONTINUE`], so that hyper, which answers `100 Continue` itself when
/// a body is first read, leaves it to the upstream (`proxy_100_continue`). The connection
/// manager puts the value back.
pub fn hide_continue(head: &mut [u8]) {
    let mut at = 0;
    let mut first = true;
    while at < head.len() {
        let end = head[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head.len(), |n| at + n);
        if !first {
            let line = &head[at..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                if line[..colon].eq_ignore_ascii_case(b"expect") {
                    let value = &line[colon + 1..];
                    let lead = value
                        .iter()
                        .take_while(|&&b| b == b' ' || b == b'\t')
                        .count();
                    if trim(value).eq_ignore_ascii_case(b"100-continue") {
                        head[at + colon + 1 + lead] = HIDDEN_CONTINUE.as_bytes()[0];
                    }
                }
            }
        }
        first = false;
        at = end + 1;
    }
}

/// Envoy's verdict on one complete head (without leading empty lines).
fn judge(head: &[u8], rules: Rules, expect: &mut bool) -> Verdict {
    let mut it = lines(head);
    let request_line = it.next().unwrap_or_default();
    let refuse = |reason, method: Option<&[u8]>, path: Option<&[u8]>| {
        Verdict::Refuse(Refusal {
            reason,
            method: method.map(|m| String::from_utf8_lossy(m).into_owned()),
            path: path.map(|p| String::from_utf8_lossy(p).into_owned()),
        })
    };
    let parts: Vec<&[u8]> = request_line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return refuse(Reason::CodecError, None, None);
    };
    if !METHODS.iter().any(|m| m.as_bytes() == method) {
        return refuse(Reason::CodecError, Some(method), None);
    }
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return refuse(Reason::CodecError, Some(method), None);
    }
    let (m, p) = (Some(method), Some(target));
    // Envoy's codec reads a target that is not a path (nor `OPTIONS *`) as an absolute URL.
    let relative = target[0] == b'/' || (method == b"OPTIONS" && target[0] == b'*');
    if !relative && method != b"CONNECT" && rules.allow_absolute_url {
        if let Some(reason) = absolute_url_refusal(target) {
            return refuse(reason, m, p);
        }
    }
    match version {
        b"HTTP/1.1" | b"HTTP/1.0" => {}
        [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            return refuse(Reason::LowVersion, m, p);
        }
        _ => return refuse(Reason::CodecError, m, p),
    }

    let mut content_lengths = Vec::new();
    let mut transfer_encodings = Vec::new();
    let mut connection_tokens = 0usize;
    let mut undroppable = false;
    let mut count = 0u32;
    for line in it {
        if line[0] == b' ' || line[0] == b'\t' || line.contains(&b'\r') {
            // obs-fold and a CR inside a line: hyper refuses both, Envoy folds or drops.
            return Verdict::Codec;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return refuse(Reason::CodecError, m, p);
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return refuse(Reason::CodecError, m, p);
        }
        if value.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return refuse(Reason::InvalidCharacters, m, p);
        }
        // Envoy's codec counts each header as it completes, before the head is whole.
        count += 1;
        if count > rules.max_headers {
            // The head is refused before it is whole: the access log shows no method or path.
            return refuse(Reason::TooManyHeaders, None, None);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            content_lengths.push(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encodings.push(value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            *expect = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                connection_tokens += 1;
                undroppable |= UNDROPPABLE
                    .iter()
                    .any(|h| h.as_bytes().eq_ignore_ascii_case(token));
            }
        }
    }
    // The parser reads Content-Length itself (several, even identical, or not a number: a
    // codec error); only then does the codec look at the framings together.
    let length = match &content_lengths[..] {
        [] => None,
        [cl] => match parse_length(cl) {
            Some(n) => Some(n),
            None => return refuse(Reason::CodecError, m, p),
        },
        _ => return refuse(Reason::CodecError, m, p),
    };
    // allow_chunked_length takes a length with a lone `chunked` coding as chunked (hyper drops
    // the length, as Envoy's codec does); a length with any other coding is still refused.
    let lone_chunked =
        matches!(&transfer_encodings[..], [te] if te.eq_ignore_ascii_case(b"chunked"));
    if !transfer_encodings.is_empty()
        && length.is_some()
        && !(rules.allow_chunked_length && lone_chunked)
    {
        return refuse(Reason::ContentLengthAndChunked, m, p);
    }
    if connection_tokens >= MAX_NOMINATED || undroppable {
        return refuse(Reason::ConnectionHeaderRejected, m, p);
    }
    let framing = match (&transfer_encodings[..], length) {
        ([], None) => Framing::None,
        ([], Some(n)) => Framing::Length(n),
        ([te], _) if te.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
        _ => return refuse(Reason::InvalidTransferEncoding, m, p),
    };
    // A fragment in the request target: the codec takes the head, the connection manager then
    // refuses it (400 `path_normalization_failed`, the connection closed; observed). hyper would
    // drop the fragment and route the rest.
    if target.contains(&b'#') {
        return refuse(Reason::Fragment, m, p);
    }
    // A CONNECT's body is its tunnel, whatever its framing headers say. (Any other upgrade
    // leaves the connection speaking HTTP/1.1 until its 101, so its framing is followed as any
    // other request's.)
    if method == b"CONNECT" {
        return Verdict::Accept(Framing::Opaque);
    }
    Verdict::Accept(framing)
}

/// Why Envoy's codec refuses `target` as an absolute URL, if it does.
fn absolute_url_refusal(target: &[u8]) -> Option<Reason> {
    let Ok(uri) = http::Uri::try_from(target) else {
        return Some(Reason::InvalidUrl);
    };
    let (Some(scheme), Some(_)) = (uri.scheme_str(), uri.authority()) else {
        return Some(Reason::InvalidUrl);
    };
    if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
        None
    } else {
        Some(Reason::InvalidScheme)
    }
}

/// Digits only, as Envoy: no sign, no list (`3, 3` is refused), no overflow.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Whether an upstream response's framing is one Envoy's codec refuses (observed 502 `UPE`):
/// `Content-Length` with `Transfer-Encoding`, several `Content-Length`s or a list, or a transfer
/// coding other than one `chunked`. hyper's client reads such responses one way or another; an
/// upstream and a proxy that read them differently is how responses get desynchronised.
/// A `204` may carry no body at all: `Transfer-Encoding` or a `Content-Length` other than `0`
/// on one is refused too (hyper would read it as bodiless and leave the body on the connection,
/// to be read as the next response).
pub fn ambiguous_response(status: http::StatusCode, h: &http::HeaderMap) -> bool {
    if status == http::StatusCode::NO_CONTENT
        && (h.contains_key(http::header::TRANSFER_ENCODING)
            || h.get_all(http::header::CONTENT_LENGTH)
                .iter()
                .any(|v| trim(v.as_bytes()) != b"0"))
    {
        return true;
    }
    // At most one of each is looked at: two of either is ambiguous already.
    let first_two = |name| {
        let mut values = h.get_all(name).iter().map(|v| trim(v.as_bytes()));
        (values.next(), values.next().is_some())
    };
    match (
        first_two(http::header::TRANSFER_ENCODING),
        first_two(http::header::CONTENT_LENGTH),
    ) {
        ((None, _), (None, _)) => false,
        ((None, _), (Some(one), false)) => parse_length(one).is_none(),
        ((Some(one), false), (None, _)) => !one.eq_ignore_ascii_case(b"chunked"),
        _ => true,
    }
}

/// Where a chunked body's framing stands, byte by byte, as hyper's decoder reads it; it ends
/// where hyper's ends, so the next head is judged from the byte hyper parses next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Before a chunk-size line.
    Start,
    /// In the size digits.
    Size(u64),
    /// Blanks after the size.
    SizeLws(u64),
    /// In a chunk extension.
    Extension(u64),
    /// After the size line's CR.
    SizeLf(u64),
    /// In chunk data, this many bytes left.
    Body(u64),
    /// After chunk data, before CR.
    BodyCr,
    /// After chunk data's CR.
    BodyLf,
    /// After the last chunk: a trailer line or the final CRLF.
    EndCr,
    /// In a trailer line.
    Trailer,
    /// After a trailer line's CR.
    TrailerLf,
    /// After the final CR.
    EndLf,
    /// The body ended.
    End,
}

/// A chunked body hyper would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk;

impl Chunked {
    /// Reads `buf`; returns how many bytes belong to the body (all of them unless it ended).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < buf.len() {
            if let Chunked::Body(left) = *self {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(buf.len() - i);
                i += take;
                let left = left - take as u64;
                *self = if left == 0 {
                    Chunked::BodyCr
                } else {
                    Chunked::Body(left)
                };
                continue;
            }
            if *self == Chunked::End {
                return Ok(i);
            }
            *self = self.step(buf[i])?;
            i += 1;
        }
        Ok(i)
    }

    /// Whether the body has ended.
    pub fn is_end(&self) -> bool {
        *self == Chunked::End
    }

    fn step(self, b: u8) -> Result<Chunked, BadChunk> {
        let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
        Ok(match (self, b) {
            (Chunked::Start, b) => Chunked::Size(hex(b).ok_or(BadChunk)?),
            (Chunked::Size(n), b) if hex(b).is_some() => Chunked::Size(
                n.checked_mul(16)
                    .and_then(|n| n.checked_add(hex(b).unwrap_or(0)))
                    .ok_or(BadChunk)?,
            ),
            (Chunked::Size(n) | Chunked::SizeLws(n), b' ' | b'\t') => Chunked::SizeLws(n),
            (Chunked::Size(n) | Chunked::SizeLws(n), b';') => Chunked::Extension(n),
            (Chunked::Size(n) | Chunked::SizeLws(n) | Chunked::Extension(n), b'\r') => {
                Chunked::SizeLf(n)
            }
            (Chunked::Extension(_), b'\n') => return Err(BadChunk),
            (Chunked::Extension(n), _) => Chunked::Extension(n),
            (Chunked::SizeLf(0), b'\n') => Chunked::EndCr,
            (Chunked::SizeLf(n), b'\n') => Chunked::Body(n),
            (Chunked::BodyCr, b'\r') => Chunked::BodyLf,
            (Chunked::BodyLf, b'\n') => Chunked::Start,
            (Chunked::EndCr, b'\r') => Chunked::EndLf,
            (Chunked::Trailer, b'\r') => Chunked::TrailerLf,
            (Chunked::EndCr | Chunked::Trailer, _) => Chunked::Trailer,
            (Chunked::TrailerLf, b'\n') => Chunked::EndCr,
            (Chunked::EndLf, b'\n') => Chunked::End,
            _ => return Err(BadChunk),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(head: &str) -> Verdict {
        match scan(head.as_bytes()) {
            Scan::Head { verdict, len, .. } => {
                assert_eq!(len, head.len());
                verdict
            }
            Scan::Incomplete => panic!("incomplete: {head:?}"),
        }
    }

    fn reason(head: &str) -> Reason {
        match verdict(head) {
            Verdict::Refuse(r) => r.reason,
            v => panic!("{head:?} accepted: {v:?}"),
        }
    }

    #[test]
    fn verdicts_as_envoy() {
        use Reason::*;
        assert_eq!(reason("GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n"), Fragment);
        assert_eq!(
            reason("GET http://a/x?q#f HTTP/1.1\r\nHost: a\r\n\r\n"),
            Fragment
        );
        assert_eq!(reason("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), InvalidUrl);
        assert_eq!(
            reason("GET a.test/x HTTP/1.1\r\nHost: a\r\n\r\n"),
            InvalidUrl
        );
        assert_eq!(
            reason("GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n"),
            InvalidScheme
        );
        for ok in [
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET HTTPS://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(matches!(verdict(ok), Verdict::Accept(_)), "{ok}");
        }
        // Without allow_absolute_url any target passes the codec, as a path.
        let rules = Rules {
            allow_absolute_url: false,
            ..Rules::default()
        };
        assert!(matches!(
            scan_limited(b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n", rules),
            Scan::Head {
                verdict: Verdict::Accept(_),
                ..
            }
        ));
        let h = |extra: &str| format!("POST / HTTP/1.1\r\nHost: a\r\n{extra}\r\n");
        assert_eq!(
            reason(&h("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n")),
            ContentLengthAndChunked
        );
        assert_eq!(
            reason(&h("Transfer-Encoding: identity\r\nContent-Length: 3\r\n")),
            ContentLengthAndChunked
        );
        for te in [
            "gzip, chunked",
            "chunked, gzip",
            "identity",
            "chunked, chunked",
            "",
        ] {
            assert_eq!(
                reason(&h(&format!("Transfer-Encoding: {te}\r\n"))),
                InvalidTransferEncoding,
                "{te}"
            );
        }
        assert_eq!(
            reason(&h(
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"
            )),
            InvalidTransferEncoding
        );
        for cl in [
            "3, 3",
            "-1",
            "+3",
            "0x3",
            "1 2",
            "",
            "99999999999999999999999",
        ] {
            assert_eq!(
                reason(&h(&format!("Content-Length: {cl}\r\n"))),
                CodecError,
                "{cl}"
            );
        }
        assert_eq!(
            reason(&h("Content-Length: 3\r\nContent-Length: 3\r\n")),
            CodecError
        );
        assert_eq!(
            reason(&h(
                "Content-Length: 3\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
            )),
            CodecError
        );
        assert_eq!(reason("get / HTTP/1.1\r\nHost: a\r\n\r\n"), CodecError);
        assert_eq!(reason("GET / HTTP/1.2\r\nHost: a\r\n\r\n"), LowVersion);
        assert_eq!(reason(&h("x foo: 1\r\n")), CodecError);
        assert_eq!(reason(&h("x: a\x00b\r\n")), InvalidCharacters);
        assert_eq!(
            reason(&h("Connection: x-forwarded-for\r\n")),
            ConnectionHeaderRejected
        );
        assert_eq!(
            reason(&h("Connection: a,b,c,d,e,f,g,h,i,j\r\n")),
            ConnectionHeaderRejected
        );
        assert_eq!(
            verdict(&h("Transfer-Encoding: CHUNKED \r\n")),
            Verdict::Accept(Framing::Chunked)
        );
        assert_eq!(
            verdict(&h("Content-Length: 003\r\n")),
            Verdict::Accept(Framing::Length(3))
        );
        assert_eq!(verdict(&h("x: a\rb\r\n")), Verdict::Codec);
        assert_eq!(
            verdict("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n"),
            Verdict::Accept(Framing::None)
        );
        assert_eq!(
            verdict("CONNECT a:80 HTTP/1.1\r\nHost: a:80\r\n\r\n"),
            Verdict::Accept(Framing::Opaque)
        );
        assert_eq!(
            verdict("\r\nGET / HTTP/1.1\nHost: a\n\n"),
            Verdict::Accept(Framing::None)
        );
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: a\r\n"), Scan::Incomplete);
    }

    #[test]
    fn ambiguous_responses_as_envoy() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = http::HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    http::HeaderValue::from_str(v).expect("value"),
                );
            }
            ambiguous_response(http::StatusCode::OK, &m)
        };
        assert!(h(&[
            ("content-length", "3"),
            ("transfer-encoding", "chunked")
        ]));
        assert!(h(&[("content-length", "3"), ("content-length", "3")]));
        assert!(h(&[("content-length", "3, 3")]));
        assert!(h(&[("transfer-encoding", "identity")]));
        assert!(h(&[("transfer-encoding", "gzip, chunked")]));
        assert!(!h(&[("transfer-encoding", "Chunked")]));
        assert!(!h(&[("content-length", "3")]));
        assert!(!h(&[]));
        let no_content = |pairs: &[(&str, &str)]| {
            let mut m = http::HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    http::HeaderValue::from_str(v).expect("value"),
                );
            }
            ambiguous_response(http::StatusCode::NO_CONTENT, &m)
        };
        assert!(no_content(&[("content-length", "3")]));
        assert!(no_content(&[("transfer-encoding", "chunked")]));
        assert!(!no_content(&[("content-length", "0")]));
        assert!(!no_content(&[]));
    }

    #[test]
    fn chunked_ends_where_hyper_ends() {
        let body = b"3;x=y\r\nabc\r\n10 \r\n0123456789abcdef\r\n0\r\nt: 1\r\n\r\nGET";
        let mut c = Chunked::Start;
        assert_eq!(c.feed(body), Ok(body.len() - 3));
        assert!(c.is_end());
        for bad in [
            &b"zz\r\n"[..],
            b"3\nabc",
            b"3\r\nabcX",
            b"ffffffffffffffffff\r\n",
        ] {
            assert_eq!(Chunked::Start.feed(bad), Err(BadChunk), "{bad:?}");
        }
        // Split anywhere, the same end.
        for at in 0..body.len() {
            let mut c = Chunked::Start;
            let a = c.feed(&body[..at]).expect("first part");
            let b = c.feed(&body[at..]).expect("second part");
            assert_eq!(a + b, body.len() - 3, "split at {at}");
        }
    }

    #[test]
    fn more_headers_than_max_headers_count() {
        let head = b"GET /x HTTP/1.1\r\nHost: a\r\nA: 1\r\n\r\n";
        assert!(matches!(
            scan_limited(
                head,
                Rules {
                    max_headers: 2,
                    ..Rules::default()
                }
            ),
            Scan::Head {
                verdict: Verdict::Accept(Framing::None),
                ..
            }
        ));
        let refused = Verdict::Refuse(Refusal {
            reason: Reason::TooManyHeaders,
            method: None,
            path: None,
        });
        assert!(
            matches!(scan_limited(head, Rules { max_headers: 1, ..Rules::default() }), Scan::Head { verdict, .. } if verdict == refused)
        );
    }

    #[test]
    fn hide_continue_marks_only_expect_lines() {
        let mut head = b"POST /expect HTTP/1.1\r\nHost: a\r\nEXPECT:  100-Continue \r\nx-expect: 100-continue\r\nexpect: 100-continue\n\r\n".to_vec();
        hide_continue(&mut head);
        assert_eq!(
            String::from_utf8(head).expect("text"),
            "POST /expect HTTP/1.1\r\nHost: a\r\nEXPECT:  ~00-Continue \r\nx-expect: 100-continue\r\nexpect: ~00-continue\n\r\n"
        );
        let mut other = b"GET / HTTP/1.1\r\nexpect: 100-continue-x\r\n\r\n".to_vec();
        let before = other.clone();
        hide_continue(&mut other);
        assert_eq!(other, before);
    }

    #[test]
    fn allow_chunked_length_takes_a_length_with_a_lone_chunked_coding() {
        let allow = Rules {
            allow_chunked_length: true,
            ..Rules::default()
        };
        let verdict = |head: &str| match scan_limited(head.as_bytes(), allow) {
            Scan::Head { verdict, .. } => verdict,
            Scan::Incomplete => panic!("incomplete"),
        };
        let h = |extra: &str| format!("POST / HTTP/1.1\r\nHost: a\r\n{extra}\r\n");
        assert_eq!(
            verdict(&h("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n")),
            Verdict::Accept(Framing::Chunked)
        );
        assert!(matches!(
            verdict(&h("Content-Length: 3\r\nTransfer-Encoding: identity\r\n")),
            Verdict::Refuse(Refusal {
                reason: Reason::ContentLengthAndChunked,
                ..
            })
        ));
    }
}
