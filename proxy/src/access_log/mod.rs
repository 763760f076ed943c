//! Access logs in Envoy's format language (`%OPERATOR%` commands), written per worker and flushed
//! on `--file-flush-interval-msec`, as Envoy does.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::rc::Rc;
use std::time::Duration;

use http::HeaderMap;

use crate::config::model::{AccessLog, AccessLogSink};
use crate::stream_info::StreamInfo;

/// Envoy's default text format.
pub const ENVOY_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    StartTime,
    /// `%START_TIME(format)%`.
    StartTimeFormat(time::TimeFormat),
    Req(String, Option<String>),
    Resp(String, Option<String>),
    Protocol,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    ResponseFlagsLong,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    RouteName,
    AttemptCount,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    ConnectionTerminationDetails,
    DownstreamRemotePort,
    DownstreamLocalPort,
    DownstreamDirectRemoteAddress,
    DownstreamDirectRemoteAddressWithoutPort,
    DownstreamDirectRemotePort,
    RequestDuration,
    RequestTxDuration,
    ResponseDuration,
    ResponseTxDuration,
    UpstreamTransportFailureReason,
    UpstreamLocalAddress,
    UpstreamLocalAddressWithoutPort,
    UpstreamLocalPort,
    UpstreamRemoteAddress,
    UpstreamRemoteAddressWithoutPort,
    UpstreamRemotePort,
    UpstreamHostName,
    UpstreamClusterRaw,
    UpstreamProtocol,
    UpstreamTlsVersion,
    UpstreamConnectionId,
    RequestedServerName,
    DownstreamTlsVersion,
    DownstreamTlsCipher,
    DownstreamPeerUriSan,
    DownstreamPeerDnsSan,
    DownstreamPeerSubject,
    DownstreamPeerIssuer,
    DownstreamLocalUriSan,
    DownstreamLocalDnsSan,
    DownstreamLocalSubject,
    ConnectionId,
    StreamId,
    UniqueId,
    VirtualClusterName,
    RequestHeadersBytes,
    ResponseHeadersBytes,
    /// `%HOSTNAME%` and `%ENVIRONMENT(X)%`: fixed when the format is built, as in Envoy.
    Fixed(Option<String>),
    /// `%REQ_WITHOUT_QUERY(X?Y)%`, with the `envoy.formatter.req_without_query` extension.
    ReqWithoutQuery(String, Option<String>),
    DownstreamPeerSerial,
    DownstreamPeerFingerprint256,
    DownstreamPeerCert,
    /// `%DOWNSTREAM_PEER_CERT_V_START%` (`false`) and `_V_END%` (`true`), with a time format.
    DownstreamPeerCertValidity {
        end: bool,
        format: Option<time::TimeFormat>,
    },
    AccessLogType,
    /// `%PATH(WQ|NQ:ORIG|PATH|ORIG_OR_PATH)%`: with the query or not, from which header.
    Path {
        query: bool,
        from: PathSource,
    },
}

/// Where `%PATH%` takes the path from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathSource {
    /// `x-envoy-original-path`.
    Original,
    /// `:path`.
    Path,
    /// `x-envoy-original-path`, else `:path` (the default).
    OriginalOrPath,
}

/// `%PATH%`, `%PATH(NQ)%`, `%PATH(WQ:ORIG)%`…
fn parse_path(cmd: &str) -> Option<Op> {
    if cmd == "PATH" {
        return Some(Op::Path {
            query: true,
            from: PathSource::OriginalOrPath,
        });
    }
    let inner = cmd.strip_prefix("PATH(")?.strip_suffix(')')?;
    let (q, from) = inner.split_once(':').unwrap_or((inner, "ORIG_OR_PATH"));
    let query = match q {
        "WQ" => true,
        "NQ" => false,
        _ => return None,
    };
    let from = match from {
        "ORIG" => PathSource::Original,
        "PATH" => PathSource::Path,
        "ORIG_OR_PATH" => PathSource::OriginalOrPath,
        _ => return None,
    };
    Some(Op::Path { query, from })
}

/// Formatter extensions a format may use (`formatters` of the `SubstitutionFormatString`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions {
    /// `envoy.formatter.req_without_query`.
    pub req_without_query: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Op(Op, Option<usize>),
}

pub mod json;
mod time;

/// A parsed format: a text line, or a JSON object (`json_format`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    Text(Vec<Piece>),
    Json(json::Template),
}

impl Format {
    /// Envoy's default format.
    pub fn envoy_default() -> Format {
        Format::parse(ENVOY_DEFAULT_FORMAT).expect("the default format parses")
    }

    /// Parses a format; an unknown operator is an error naming it, as Envoy's.
    pub fn parse(text: &str) -> Result<Format, String> {
        Format::parse_with(text, Extensions::default())
    }

    /// [`Format::parse`], with formatter extensions.
    pub fn parse_with(text: &str, ext: Extensions) -> Result<Format, String> {
        Ok(Format {
            body: Body::Text(parse_pieces(text, ext)?),
        })
    }

    /// A `json_format`: one JSON object per line.
    pub fn json(template: json::Template) -> Format {
        Format {
            body: Body::Json(template),
        }
    }

    /// Renders one line for a stream.
    pub fn render(&self, info: &StreamInfo, out: &mut String) {
        match &self.body {
            Body::Text(pieces) => render_pieces(pieces, info, out),
            Body::Json(t) => {
                t.render(info, out);
                out.push('\n');
            }
        }
    }
}

/// The pieces of a format string; an unknown operator is an error naming it, as Envoy's.
fn parse_pieces(text: &str, ext: Extensions) -> Result<Vec<Piece>, String> {
    {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 1..];
            let end =
                command_end(after).ok_or_else(|| format!("unterminated command in '{text}'"))?;
            let cmd = &after[..end];
            rest = &after[end + 1..];
            if cmd.is_empty() {
                pieces.push(Piece::Text("%".into()));
                continue;
            }
            // `:N` after the closing parenthesis (or the name) truncates.
            let (cmd, max) = match cmd.rfind(':') {
                Some(i)
                    if cmd[i + 1..].bytes().all(|b| b.is_ascii_digit())
                        && i + 1 < cmd.len()
                        && (cmd[..i].ends_with(')') || !cmd[..i].contains('(')) =>
                {
                    (&cmd[..i], cmd[i + 1..].parse().ok())
                }
                _ => (cmd, None),
            };
            let op = parse_op(cmd, ext)?;
            if max.is_some() && matches!(op, Op::StartTime | Op::StartTimeFormat(_)) {
                return Err("START_TIME does not allow length to be specified.".into());
            }
            pieces.push(Piece::Op(op, max));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(pieces)
    }
}

/// Where the command starting `after` a `%` ends (the index of its closing `%`). A command with
/// arguments ends at the first `)` followed by `%` or by `:N%`, so its arguments may hold `%`
/// (`%START_TIME(%Y-%m-%d)%`).
fn command_end(after: &str) -> Option<usize> {
    let name_len = after
        .bytes()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        .count();
    if name_len == 0 || after.as_bytes().get(name_len) != Some(&b'(') {
        return after.find('%');
    }
    let bytes = after.as_bytes();
    let mut i = name_len;
    while let Some(off) = after[i..].find(')') {
        let close = i + off;
        let tail = &bytes[close + 1..];
        if tail.first() == Some(&b'%') {
            return Some(close + 1);
        }
        if tail.first() == Some(&b':') {
            let digits = tail[1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if digits > 0 && tail.get(1 + digits) == Some(&b'%') {
                return Some(close + 2 + digits);
            }
        }
        i = close + 1;
    }
    after.find('%')
}

/// Renders pieces as text: a missing value is `-`.
fn render_pieces(pieces: &[Piece], info: &StreamInfo, out: &mut String) {
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Op(op, max) => {
                let v = value(op, info);
                out.push_str(truncated(v.as_deref().unwrap_or("-"), *max));
            }
        }
    }
}

/// `v` cut to `max` bytes (on a character boundary), as `%OP:N%` asks.
fn truncated(v: &str, max: Option<usize>) -> &str {
    match max {
        Some(n) if v.len() > n => &v[..floor_char_boundary(v, n)],
        _ => v,
    }
}

/// Whether Envoy writes this operator's value as a JSON number.
fn numeric(op: &Op) -> bool {
    matches!(
        op,
        Op::ResponseCode
            | Op::BytesReceived
            | Op::BytesSent
            | Op::Duration
            | Op::AttemptCount
            | Op::DownstreamRemotePort
            | Op::DownstreamLocalPort
            | Op::DownstreamDirectRemotePort
            | Op::UpstreamLocalPort
            | Op::UpstreamRemotePort
            | Op::ConnectionId
            | Op::UpstreamConnectionId
            | Op::RequestDuration
            | Op::RequestTxDuration
            | Op::ResponseDuration
            | Op::ResponseTxDuration
            | Op::RequestHeadersBytes
            | Op::ResponseHeadersBytes
    )
}

fn floor_char_boundary(s: &str, mut n: usize) -> usize {
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    n
}

fn header_args(inner: &str) -> (String, Option<String>) {
    match inner.split_once('?') {
        Some((a, b)) => (a.to_ascii_lowercase(), Some(b.to_ascii_lowercase())),
        None => (inner.to_ascii_lowercase(), None),
    }
}

fn parse_op(cmd: &str, ext: Extensions) -> Result<Op, String> {
    if let Some(inner) = cmd
        .strip_prefix("REQ_WITHOUT_QUERY(")
        .and_then(|s| s.strip_suffix(')'))
    {
        if !ext.req_without_query {
            return Err("Not supported field in StreamInfo: REQ_WITHOUT_QUERY".into());
        }
        let (a, b) = header_args(inner);
        return Ok(Op::ReqWithoutQuery(a, b));
    }
    if let Some(name) = cmd
        .strip_prefix("ENVIRONMENT(")
        .and_then(|s| s.strip_suffix(')'))
    {
        return Ok(Op::Fixed(std::env::var(name).ok()));
    }
    if let Some(op) = parse_path(cmd) {
        return Ok(op);
    }
    for (name, end) in [
        ("DOWNSTREAM_PEER_CERT_V_START", false),
        ("DOWNSTREAM_PEER_CERT_V_END", true),
    ] {
        if let Some(rest) = cmd.strip_prefix(name) {
            let format = match rest {
                "" | "()" => None,
                _ => match rest.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
                    Some(f) => Some(time::TimeFormat::parse(f)?),
                    None => continue,
                },
            };
            return Ok(Op::DownstreamPeerCertValidity { end, format });
        }
    }
    if let Some(fmt) = cmd
        .strip_prefix("START_TIME(")
        .and_then(|s| s.strip_suffix(')'))
    {
        return Ok(if fmt.is_empty() {
            Op::StartTime
        } else {
            Op::StartTimeFormat(time::TimeFormat::parse(fmt)?)
        });
    }
    if let Some(inner) = cmd.strip_prefix("REQ(").and_then(|s| s.strip_suffix(')')) {
        let (a, b) = header_args(inner);
        return Ok(Op::Req(a, b));
    }
    if let Some(inner) = cmd.strip_prefix("RESP(").and_then(|s| s.strip_suffix(')')) {
        let (a, b) = header_args(inner);
        return Ok(Op::Resp(a, b));
    }
    Ok(match cmd {
        "START_TIME" => Op::StartTime,
        "PROTOCOL" => Op::Protocol,
        "RESPONSE_CODE" => Op::ResponseCode,
        "RESPONSE_CODE_DETAILS" => Op::ResponseCodeDetails,
        "RESPONSE_FLAGS" => Op::ResponseFlags,
        "RESPONSE_FLAGS_LONG" => Op::ResponseFlagsLong,
        "BYTES_RECEIVED" => Op::BytesReceived,
        "BYTES_SENT" => Op::BytesSent,
        "DURATION" => Op::Duration,
        "UPSTREAM_HOST" => Op::UpstreamHost,
        "UPSTREAM_CLUSTER" => Op::UpstreamCluster,
        "ROUTE_NAME" => Op::RouteName,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Op::AttemptCount,
        "DOWNSTREAM_REMOTE_ADDRESS" => Op::DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::DownstreamRemoteAddressWithoutPort,
        "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::DownstreamLocalAddressWithoutPort,
        "CONNECTION_TERMINATION_DETAILS" => Op::ConnectionTerminationDetails,
        "DOWNSTREAM_REMOTE_PORT" => Op::DownstreamRemotePort,
        "DOWNSTREAM_LOCAL_PORT" => Op::DownstreamLocalPort,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => Op::DownstreamDirectRemoteAddress,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            Op::DownstreamDirectRemoteAddressWithoutPort
        }
        "DOWNSTREAM_DIRECT_REMOTE_PORT" => Op::DownstreamDirectRemotePort,
        "REQUEST_DURATION" => Op::RequestDuration,
        "REQUEST_TX_DURATION" => Op::RequestTxDuration,
        "RESPONSE_DURATION" => Op::ResponseDuration,
        "RESPONSE_TX_DURATION" => Op::ResponseTxDuration,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamTransportFailureReason,
        "UPSTREAM_LOCAL_ADDRESS" => Op::UpstreamLocalAddress,
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::UpstreamLocalAddressWithoutPort,
        "UPSTREAM_LOCAL_PORT" => Op::UpstreamLocalPort,
        "UPSTREAM_REMOTE_ADDRESS" => Op::UpstreamRemoteAddress,
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::UpstreamRemoteAddressWithoutPort,
        "UPSTREAM_REMOTE_PORT" => Op::UpstreamRemotePort,
        "UPSTREAM_HOST_NAME" => Op::UpstreamHostName,
        "UPSTREAM_CLUSTER_RAW" => Op::UpstreamClusterRaw,
        "UPSTREAM_PROTOCOL" => Op::UpstreamProtocol,
        "UPSTREAM_TLS_VERSION" => Op::UpstreamTlsVersion,
        "UPSTREAM_CONNECTION_ID" => Op::UpstreamConnectionId,
        "REQUESTED_SERVER_NAME" => Op::RequestedServerName,
        "DOWNSTREAM_TLS_VERSION" => Op::DownstreamTlsVersion,
        "DOWNSTREAM_TLS_CIPHER" => Op::DownstreamTlsCipher,
        "DOWNSTREAM_PEER_URI_SAN" => Op::DownstreamPeerUriSan,
        "DOWNSTREAM_PEER_DNS_SAN" => Op::DownstreamPeerDnsSan,
        "DOWNSTREAM_PEER_SUBJECT" => Op::DownstreamPeerSubject,
        "DOWNSTREAM_PEER_ISSUER" => Op::DownstreamPeerIssuer,
        "DOWNSTREAM_LOCAL_URI_SAN" => Op::DownstreamLocalUriSan,
        "DOWNSTREAM_LOCAL_DNS_SAN" => Op::DownstreamLocalDnsSan,
        "DOWNSTREAM_LOCAL_SUBJECT" => Op::DownstreamLocalSubject,
        "CONNECTION_ID" => Op::ConnectionId,
        "STREAM_ID" => Op::StreamId,
        "UNIQUE_ID" => Op::UniqueId,
        "VIRTUAL_CLUSTER_NAME" => Op::VirtualClusterName,
        "REQUEST_HEADERS_BYTES" => Op::RequestHeadersBytes,
        "RESPONSE_HEADERS_BYTES" => Op::ResponseHeadersBytes,
        "HOSTNAME" => Op::Fixed(hostname()),
        "DOWNSTREAM_PEER_SERIAL" => Op::DownstreamPeerSerial,
        "DOWNSTREAM_PEER_FINGERPRINT_256" => Op::DownstreamPeerFingerprint256,
        "DOWNSTREAM_PEER_CERT" => Op::DownstreamPeerCert,
        "ACCESS_LOG_TYPE" => Op::AccessLogType,
        other => {
            // Envoy has these; say why skiff does not, rather than that they do not exist.
            let why = match other.split('(').next().unwrap_or(other) {
                "CEL" => " (skiff does not evaluate CEL expressions)",
                "METADATA" | "DYNAMIC_METADATA" | "CLUSTER_METADATA" | "UPSTREAM_METADATA" => {
                    " (skiff keeps no metadata for access logs)"
                }
                "FILTER_STATE" | "UPSTREAM_FILTER_STATE" => {
                    " (skiff keeps no filter state for access logs)"
                }
                "DOWNSTREAM_TLS_SESSION_ID" => " (rustls does not expose TLS session ids)",
                "DOWNSTREAM_PEER_FINGERPRINT_1" => " (skiff's TLS library has no SHA-1)",
                _ => "",
            };
            return Err(format!("Not supported field in StreamInfo: {other}{why}"));
        }
    })
}

fn pseudo_or_header(name: &str, headers: &HeaderMap, info: &StreamInfo) -> Option<String> {
    match name {
        ":method" => info.method.as_ref().map(|m| m.to_string()),
        ":path" => info.path.clone(),
        ":authority" => info.authority.clone(),
        ":scheme" => Some(info.scheme.to_string()),
        ":status" => info.response_code.map(|c| c.to_string()),
        _ => headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// The host's name, as `gethostname(2)` gives it.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// The path without its query string.
fn without_query(path: String) -> String {
    match path.split_once('?') {
        Some((p, _)) => p.to_string(),
        None => path,
    }
}

/// A list of names, as Envoy joins them; none is `-`.
fn joined(names: &[String]) -> Option<String> {
    (!names.is_empty()).then(|| names.join(","))
}

fn tls(info: &StreamInfo) -> Option<&crate::stream_info::TlsInfo> {
    info.connection.as_ref().and_then(|c| c.tls.as_ref())
}

fn peer(info: &StreamInfo) -> Option<&crate::stream_info::CertInfo> {
    tls(info).and_then(|t| t.peer.as_ref())
}

fn local_cert(info: &StreamInfo) -> Option<&crate::stream_info::CertInfo> {
    tls(info).and_then(|t| t.local.as_ref())
}

fn value(op: &Op, info: &StreamInfo) -> Option<String> {
    let upstream_conn = info.upstream_connection.as_ref();
    // Envoy knows the upstream's remote address only once a connection to it exists.
    let upstream_remote = upstream_conn.and(info.upstream_host);
    let direct_remote = info
        .connection
        .as_ref()
        .and_then(|c| c.direct_remote)
        .unwrap_or(info.downstream_remote);
    match op {
        Op::StartTime => Some(format_time(info.start_time)),
        Op::StartTimeFormat(f) => Some(f.format(info.start_time)),
        Op::Req(a, b) => pseudo_or_header(a, &info.request_headers, info).or_else(|| {
            b.as_ref()
                .and_then(|b| pseudo_or_header(b, &info.request_headers, info))
        }),
        Op::Resp(a, b) => pseudo_or_header(a, &info.response_headers, info).or_else(|| {
            b.as_ref()
                .and_then(|b| pseudo_or_header(b, &info.response_headers, info))
        }),
        Op::Protocol => info.protocol.map(str::to_string),
        Op::ResponseCode => Some(info.response_code.unwrap_or(0).to_string()),
        Op::ResponseCodeDetails => (!info.details.is_empty()).then(|| {
            // Envoy names the transport's failure inside the reset's details.
            match (
                info.details.strip_suffix('}'),
                &info.upstream_transport_failure,
            ) {
                (Some(open), Some(reason))
                    if open.starts_with("upstream_reset_before_response_started{") =>
                {
                    format!("{open}|{}}}", reason.replace(' ', "_"))
                }
                _ => info.details.to_string(),
            }
        }),
        Op::ResponseFlags => Some(info.flags.short()),
        Op::ResponseFlagsLong => Some(info.flags.long()),
        Op::BytesReceived => Some(info.bytes_received.to_string()),
        Op::BytesSent => Some(info.bytes_sent.to_string()),
        Op::Duration => info.duration_ms.map(|d| d.to_string()),
        Op::UpstreamHost => info.upstream_host.map(|h| h.to_string()),
        Op::UpstreamCluster => info
            .upstream_cluster_stat
            .as_deref()
            .or(info.upstream_cluster.as_deref())
            .map(str::to_string),
        Op::RouteName => info.route_name.as_deref().map(str::to_string),
        Op::AttemptCount => (info.attempts > 0).then(|| info.attempts.to_string()),
        Op::DownstreamRemoteAddress => Some(info.downstream_remote.to_string()),
        Op::DownstreamRemoteAddressWithoutPort => Some(info.downstream_remote.ip().to_string()),
        Op::DownstreamLocalAddress => Some(info.downstream_local.to_string()),
        Op::DownstreamLocalAddressWithoutPort => Some(info.downstream_local.ip().to_string()),
        Op::ConnectionTerminationDetails => None,
        Op::DownstreamRemotePort => Some(info.downstream_remote.port().to_string()),
        Op::DownstreamLocalPort => Some(info.downstream_local.port().to_string()),
        Op::DownstreamDirectRemoteAddress => Some(direct_remote.to_string()),
        Op::DownstreamDirectRemoteAddressWithoutPort => Some(direct_remote.ip().to_string()),
        Op::DownstreamDirectRemotePort => Some(direct_remote.port().to_string()),
        Op::RequestDuration => info.since_start(info.request_done).map(|d| d.to_string()),
        Op::RequestTxDuration => info.since_start(info.request_sent).map(|d| d.to_string()),
        Op::ResponseDuration => info
            .since_start(info.response_started)
            .map(|d| d.to_string()),
        Op::ResponseTxDuration => match (info.response_started, info.response_done) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a).as_millis().to_string()),
            _ => None,
        },
        Op::UpstreamTransportFailureReason => info
            .upstream_transport_failure
            .as_ref()
            .map(|r| r.replace(' ', "_")),
        Op::UpstreamLocalAddress => upstream_conn.and_then(|c| c.local).map(|a| a.to_string()),
        Op::UpstreamLocalAddressWithoutPort => upstream_conn
            .and_then(|c| c.local)
            .map(|a| a.ip().to_string()),
        Op::UpstreamLocalPort => upstream_conn
            .and_then(|c| c.local)
            .map(|a| a.port().to_string()),
        Op::UpstreamRemoteAddress => upstream_remote.map(|a| a.to_string()),
        Op::UpstreamRemoteAddressWithoutPort => upstream_remote.map(|a| a.ip().to_string()),
        Op::UpstreamRemotePort => upstream_remote.map(|a| a.port().to_string()),
        // Endpoints have no host names in skiff: Envoy then shows the address.
        Op::UpstreamHostName => info.upstream_host.map(|h| h.to_string()),
        Op::UpstreamClusterRaw => info.upstream_cluster.as_deref().map(str::to_string),
        Op::UpstreamProtocol => info.upstream_protocol.map(str::to_string),
        Op::UpstreamTlsVersion => upstream_conn
            .and_then(|c| c.tls_version)
            .map(str::to_string),
        // Envoy prints 0 when the upstream was chosen but no connection was made.
        Op::UpstreamConnectionId => info
            .upstream_host
            .map(|_| upstream_conn.map_or(0, |c| c.id).to_string()),
        Op::RequestedServerName => info
            .connection
            .as_ref()
            .and_then(|c| c.requested_server_name.clone()),
        Op::DownstreamTlsVersion => tls(info).and_then(|t| t.version).map(str::to_string),
        Op::DownstreamTlsCipher => tls(info).and_then(|t| t.cipher).map(str::to_string),
        Op::DownstreamPeerUriSan => peer(info).and_then(|c| joined(&c.uri_sans)),
        Op::DownstreamPeerDnsSan => peer(info).and_then(|c| joined(&c.dns_sans)),
        Op::DownstreamPeerSubject => peer(info).map(|c| c.subject.clone()),
        Op::DownstreamPeerIssuer => peer(info).map(|c| c.issuer.clone()),
        Op::DownstreamLocalUriSan => local_cert(info).and_then(|c| joined(&c.uri_sans)),
        Op::DownstreamLocalDnsSan => local_cert(info).and_then(|c| joined(&c.dns_sans)),
        Op::DownstreamLocalSubject => local_cert(info).map(|c| c.subject.clone()),
        Op::ConnectionId => info.connection.as_ref().map(|c| c.id.to_string()),
        Op::StreamId => info.stream_id.clone(),
        Op::UniqueId => Some(uuid::Uuid::new_v4().to_string()),
        // skiff's route tables have no virtual clusters.
        Op::VirtualClusterName => None,
        Op::RequestHeadersBytes => Some(info.request_headers_bytes.to_string()),
        Op::ResponseHeadersBytes => Some(response_headers_bytes(info).to_string()),
        Op::Fixed(v) => v.clone(),
        Op::DownstreamPeerSerial => peer(info).map(|c| c.serial.clone()),
        Op::DownstreamPeerFingerprint256 => peer(info)
            .and_then(|c| crate::tls::info::sha256(&c.der))
            .map(|h| crate::tls::info::hex(&h)),
        Op::DownstreamPeerCert => peer(info).map(|c| crate::tls::info::url_encoded_pem(&c.der)),
        Op::DownstreamPeerCertValidity { end, format } => peer(info).map(|c| {
            let secs = if *end { c.validity.1 } else { c.validity.0 };
            let t = if secs >= 0 {
                std::time::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
            } else {
                std::time::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            };
            match format {
                Some(f) => f.format(t),
                None => format_time(t),
            }
        }),
        // Envoy's names for a stream's final line and a TCP connection's.
        Op::AccessLogType => Some(
            if info.protocol.is_some() {
                "DownstreamEnd"
            } else {
                "TcpConnectionEnd"
            }
            .to_string(),
        ),
        Op::Path { query, from } => {
            let original = || {
                info.request_headers
                    .get("x-envoy-original-path")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let path = match from {
                PathSource::Original => original(),
                PathSource::Path => info.path.clone(),
                PathSource::OriginalOrPath => original().or_else(|| info.path.clone()),
            };
            if *query {
                path
            } else {
                path.map(without_query)
            }
        }
        Op::ReqWithoutQuery(a, b) => pseudo_or_header(a, &info.request_headers, info)
            .or_else(|| {
                b.as_ref()
                    .and_then(|b| pseudo_or_header(b, &info.request_headers, info))
            })
            .map(without_query),
    }
}

/// The response headers as sent, `:status` included, as Envoy counts its header map.
fn response_headers_bytes(info: &StreamInfo) -> u64 {
    let Some(code) = info.response_code else {
        return 0;
    };
    let status = code.to_string();
    let bytes =
        crate::stream_info::headers_bytes([(":status", status.as_str())], &info.response_headers);
    // The codec adds `date` to local replies after the log has its copy; Envoy's has it.
    if info.response_headers.contains_key(http::header::DATE) {
        bytes
    } else {
        bytes + (http::header::DATE.as_str().len() + "Sun, 06 Nov 1994 08:49:37 GMT".len()) as u64
    }
}

/// `2026-11-23T10:15:44.810Z`.
pub fn format_time(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, day) = civil_from_days(days);
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    );
    s
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Above this many buffered bytes a sink is written out at once rather than at the next tick.
const FLUSH_THRESHOLD: usize = 64 * 1024;

/// One access log sink of a worker: its pending lines and, for files, the open file.
#[derive(Debug)]
struct Buffer {
    sink: AccessLogSink,
    pending: String,
    file: Option<std::fs::File>,
}

impl Buffer {
    fn write_out(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let result = match &self.sink {
            AccessLogSink::Stdout => std::io::stdout().lock().write_all(self.pending.as_bytes()),
            AccessLogSink::Stderr => std::io::stderr().lock().write_all(self.pending.as_bytes()),
            AccessLogSink::File(path) => {
                if self.file.is_none() {
                    self.file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .ok();
                }
                match self.file.as_mut() {
                    Some(f) => f.write_all(self.pending.as_bytes()),
                    None => Err(std::io::Error::other(format!("cannot open {path}"))),
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(sink = ?self.sink, error = %e, "access log write failed");
        }
        self.pending.clear();
    }
}

/// One worker's access log output: lines are buffered and written on flush, or as soon as a
/// sink holds more than 64 KiB.
#[derive(Debug, Default)]
pub struct Writer {
    buffers: RefCell<Vec<Buffer>>,
}

impl Writer {
    /// A writer shared by the tasks of one worker.
    pub fn new() -> Rc<Writer> {
        Rc::new(Writer::default())
    }

    /// Formats and buffers a line for each configured log.
    pub fn log(&self, logs: &[AccessLog], info: &StreamInfo) {
        if logs.is_empty() {
            return;
        }
        let mut buffers = self.buffers.borrow_mut();
        for log in logs {
            let idx = match buffers.iter().position(|b| b.sink == log.sink) {
                Some(i) => i,
                None => {
                    buffers.push(Buffer {
                        sink: log.sink.clone(),
                        pending: String::new(),
                        file: None,
                    });
                    buffers.len() - 1
                }
            };
            let buffer = &mut buffers[idx];
            log.format.render(info, &mut buffer.pending);
            if buffer.pending.len() > FLUSH_THRESHOLD {
                buffer.write_out();
            }
        }
    }

    /// Writes out whatever is buffered.
    pub fn flush(&self) {
        for b in self.buffers.borrow_mut().iter_mut() {
            b.write_out();
        }
    }

    /// Flushes every `interval` until the worker stops.
    pub async fn run_flusher(self: Rc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream_info::ResponseFlag;

    #[test]
    fn default_format_matches_envoy_line() {
        let mut info = StreamInfo::new(
            "127.0.0.1:5000".parse().expect("addr"),
            "127.0.0.1:10000".parse().expect("addr"),
        );
        info.start_time = std::time::UNIX_EPOCH + Duration::from_millis(1_795_428_944_810);
        info.method = Some(http::Method::GET);
        info.path = Some("/hello".into());
        info.authority = Some("localhost:10000".into());
        info.protocol = Some("HTTP/1.1");
        info.response_code = Some(200);
        info.bytes_sent = 182;
        info.duration_ms = Some(1);
        info.request_headers
            .insert("user-agent", "curl/7.88.1".parse().expect("v"));
        info.request_headers
            .insert("x-request-id", "abc".parse().expect("v"));
        info.response_headers
            .insert("x-envoy-upstream-service-time", "0".parse().expect("v"));
        info.upstream_host = Some("127.0.0.1:18081".parse().expect("addr"));
        let mut line = String::new();
        Format::envoy_default().render(&info, &mut line);
        assert_eq!(
            line,
            "[2026-11-23T10:15:44.810Z] \"GET /hello HTTP/1.1\" 200 - 0 182 1 0 \"-\" \"curl/7.88.1\" \"abc\" \"localhost:10000\" \"127.0.0.1:18081\"\n"
        );
        info.flags.set(ResponseFlag::NoRouteFound);
        let f = Format::parse("%RESPONSE_FLAGS% %REQ(:PATH):3% %%").expect("parses");
        let mut line = String::new();
        f.render(&info, &mut line);
        assert_eq!(line, "NR /he %");
    }

    #[test]
    fn req_without_query_needs_its_formatter_extension() {
        assert_eq!(
            Format::parse("%REQ_WITHOUT_QUERY(:PATH)%").unwrap_err(),
            "Not supported field in StreamInfo: REQ_WITHOUT_QUERY"
        );
        let ext = Extensions {
            req_without_query: true,
        };
        let f =
            Format::parse_with("%REQ_WITHOUT_QUERY(X?:PATH):4% %REQ(:PATH)%", ext).expect("parses");
        let mut info = StreamInfo::new(
            "127.0.0.1:5000".parse().expect("addr"),
            "127.0.0.1:10000".parse().expect("addr"),
        );
        info.path = Some("/abcdef?q=1".into());
        let mut line = String::new();
        f.render(&info, &mut line);
        assert_eq!(line, "/abc /abcdef?q=1");
    }

    #[test]
    fn start_time_takes_a_format_with_percent_signs_but_no_length() {
        let f =
            Format::parse("[%START_TIME(%Y %%)%] %REQ(:PATH):3% %START_TIME()%").expect("parses");
        let mut info = StreamInfo::new(
            "127.0.0.1:5000".parse().expect("addr"),
            "127.0.0.1:10000".parse().expect("addr"),
        );
        info.start_time = std::time::UNIX_EPOCH + Duration::from_millis(1_795_428_944_810);
        info.path = Some("/hello".into());
        let mut line = String::new();
        f.render(&info, &mut line);
        assert_eq!(line, "[2026 %] /he 2026-11-23T10:15:44.810Z");
        assert_eq!(
            Format::parse("%START_TIME(%Y):4%").unwrap_err(),
            "START_TIME does not allow length to be specified."
        );
        assert!(Format::parse("%START_TIME(%Q)%").is_err());
    }

    #[test]
    fn unknown_operator_is_an_error() {
        assert_eq!(
            Format::parse("%NOPE%").unwrap_err(),
            "Not supported field in StreamInfo: NOPE"
        );
        assert_eq!(
            Format::parse("%CEL(request.method)%").unwrap_err(),
            "Not supported field in StreamInfo: CEL(request.method) (skiff does not evaluate CEL expressions)"
        );
    }
}

#[cfg(test)]
mod corpus {
    /// Every seed of the access log format fuzz target parses or errors without panicking.
    #[test]
    fn fuzz_corpus_never_panics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/access_log_format");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("corpus dir").flatten() {
            let text = std::fs::read_to_string(entry.path()).expect("seed");
            seen += 1;
            for req_without_query in [false, true] {
                let ext = super::Extensions { req_without_query };
                if let Ok(f) = super::Format::parse_with(&text, ext) {
                    let info = crate::stream_info::StreamInfo::new(
                        "127.0.0.1:1".parse().expect("addr"),
                        "127.0.0.1:2".parse().expect("addr"),
                    );
                    let mut out = String::new();
                    f.render(&info, &mut out);
                }
            }
        }
        assert!(seen >= 3);
    }
}
