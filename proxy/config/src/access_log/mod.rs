//! Access-log formats in Envoy's format language (`%OPERATOR%` commands): parsed and checked
//! here; the runtime renders them for each stream.

/// Envoy's default text format.
pub const ENVOY_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// A command operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
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
    /// `%LOCAL_REPLY_BODY%`: a local reply's body, in its `body_format` (empty elsewhere).
    LocalReplyBody,
    /// `%DYNAMIC_METADATA(namespace:key:…)%` (and `%METADATA(DYNAMIC:…)%`): the stream's
    /// dynamic metadata, a namespace as JSON, a string as it is.
    DynamicMetadata(String, Vec<String>),
    /// `%UPSTREAM_METADATA(namespace:key:…)%` (and `%METADATA(UPSTREAM_HOST:…)%`): the
    /// upstream host's metadata.
    UpstreamMetadata(String, Vec<String>),
    /// `%CLUSTER_METADATA(namespace:key:…)%` (and `%METADATA(CLUSTER:…)%`).
    ClusterMetadata(String, Vec<String>),
    /// `%METADATA(ROUTE:namespace:key:…)%`: the route's metadata.
    RouteMetadata(String, Vec<String>),
    /// `%METADATA(VIRTUAL_HOST:namespace:key:…)%`: the virtual host's metadata.
    VirtualHostMetadata(String, Vec<String>),
    /// `%METADATA(LISTENER:namespace:key:…)%`: the listener's metadata.
    ListenerMetadata(String, Vec<String>),
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
    /// `%FILTER_STATE(key)%` (the object as its proto's JSON) and `%FILTER_STATE(key:PLAIN)%`
    /// (as a string): an object of the stream's filter state, or of its connection's.
    FilterState {
        key: String,
        plain: bool,
    },
    /// `%PATH(WQ|NQ:ORIG|PATH|ORIG_OR_PATH)%`: with the query or not, from which header.
    Path {
        query: bool,
        from: PathSource,
    },
}

/// Where `%PATH%` takes the path from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSource {
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

/// A piece of a format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Text(String),
    /// An operator, with the length `%OP:N%` cuts its value to.
    Op(Op, Option<usize>),
}

pub mod json;
pub mod time;

/// A parsed format: a text line, or a JSON object (`json_format`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    body: Body,
}

/// What a [`Format`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A text line.
    Text(Vec<Piece>),
    /// A JSON object per line.
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

    /// What it writes.
    pub fn body(&self) -> &Body {
        &self.body
    }
}

/// The pieces of a format string; an unknown operator is an error naming it, as Envoy's.
pub(crate) fn parse_pieces(text: &str, ext: Extensions) -> Result<Vec<Piece>, String> {
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

/// `v` cut to `max` bytes (on a character boundary), as `%OP:N%` asks.
pub fn truncated(v: &str, max: Option<usize>) -> &str {
    match max {
        Some(n) if v.len() > n => &v[..floor_char_boundary(v, n)],
        _ => v,
    }
}

/// Whether Envoy writes this operator's value as a JSON number.
pub fn numeric(op: &Op) -> bool {
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

/// `NAMESPACE:KEY:…` of a metadata operator.
fn metadata_args(inner: &str) -> Result<(String, Vec<String>), String> {
    let mut parts = inner.split(':');
    let ns = parts.next().unwrap_or_default();
    if ns.is_empty() {
        return Err("Invalid header configuration. Expected format TYPE:NAMESPACE:KEY*".into());
    }
    Ok((ns.to_string(), parts.map(str::to_string).collect()))
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
    if let Some(inner) = cmd
        .strip_prefix("DYNAMIC_METADATA(")
        .and_then(|s| s.strip_suffix(')'))
    {
        return metadata_args(inner).map(|(ns, path)| Op::DynamicMetadata(ns, path));
    }
    for (name, op) in [
        (
            "UPSTREAM_METADATA(",
            Op::UpstreamMetadata as fn(String, Vec<String>) -> Op,
        ),
        ("CLUSTER_METADATA(", Op::ClusterMetadata),
    ] {
        if let Some(inner) = cmd.strip_prefix(name).and_then(|s| s.strip_suffix(')')) {
            return metadata_args(inner).map(|(ns, path)| op(ns, path));
        }
    }
    if let Some(inner) = cmd
        .strip_prefix("METADATA(")
        .and_then(|s| s.strip_suffix(')'))
    {
        let (kind, rest) = inner.split_once(':').unwrap_or((inner, ""));
        return match kind {
            "DYNAMIC" => metadata_args(rest).map(|(ns, path)| Op::DynamicMetadata(ns, path)),
            "CLUSTER" => metadata_args(rest).map(|(ns, path)| Op::ClusterMetadata(ns, path)),
            "UPSTREAM_HOST" => metadata_args(rest).map(|(ns, path)| Op::UpstreamMetadata(ns, path)),
            "ROUTE" => metadata_args(rest).map(|(ns, path)| Op::RouteMetadata(ns, path)),
            "VIRTUAL_HOST" => {
                metadata_args(rest).map(|(ns, path)| Op::VirtualHostMetadata(ns, path))
            }
            "LISTENER" => metadata_args(rest).map(|(ns, path)| Op::ListenerMetadata(ns, path)),
            _ => Err(format!("Unknown metadata type: {kind}")),
        };
    }
    if let Some(inner) = cmd
        .strip_prefix("FILTER_STATE(")
        .and_then(|s| s.strip_suffix(')'))
    {
        let (key, kind) = inner.split_once(':').unwrap_or((inner, ""));
        if key.is_empty() {
            return Err("Invalid filter state configuration, key cannot be empty.".into());
        }
        let plain = match kind {
            "" | "TYPED" => false,
            "PLAIN" => true,
            k if k.starts_with("FIELD") => {
                return Err(format!(
                    "Not supported field in StreamInfo: FILTER_STATE({inner}) (skiff's filter \
                     state objects are strings and have no fields)"
                ))
            }
            _ => {
                return Err(
                    "Invalid filter state serialize type, only support PLAIN/TYPED/FIELD.".into(),
                )
            }
        };
        return Ok(Op::FilterState {
            key: key.to_string(),
            plain,
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
        "LOCAL_REPLY_BODY" => Op::LocalReplyBody,
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

                "UPSTREAM_FILTER_STATE" => " (skiff's upstream connections hold no filter state)",
                "DOWNSTREAM_TLS_SESSION_ID" => " (rustls does not expose TLS session ids)",
                "DOWNSTREAM_PEER_FINGERPRINT_1" => " (skiff's TLS library has no SHA-1)",
                _ => "",
            };
            return Err(format!("Not supported field in StreamInfo: {other}{why}"));
        }
    })
}

/// The machine's name, for `%HOSTNAME%`.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
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
