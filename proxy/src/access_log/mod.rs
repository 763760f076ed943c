//! Access logs in Envoy's format language (`%OPERATOR%` commands), written per worker and flushed
//! on `--file-flush-interval-msec`, as Envoy does.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::rc::{Rc, Weak};
use std::time::Duration;

use http::HeaderMap;

use crate::config::model::{address_ip_text, address_text, AccessLog, AccessLogSink};
use crate::stream_info::StreamInfo;
use crate::worker::Worker;

pub mod otlp;

use skiff_config::access_log::{civil_from_days, numeric, truncated, Body, Op, PathSource, Piece};
pub use skiff_config::access_log::{json, time, Extensions, Format, ENVOY_DEFAULT_FORMAT};

/// Writing a format's line for a stream.
pub trait Render {
    /// Renders one line for a stream.
    fn render(&self, info: &StreamInfo, out: &mut String);
}

impl Render for Format {
    fn render(&self, info: &StreamInfo, out: &mut String) {
        match self.body() {
            Body::Text(pieces) => render_pieces(pieces, info, out),
            Body::Json(t) => {
                render_json(t, info, out);
                out.push('\n');
            }
        }
    }
}

/// Writes a `json_format` value for a stream.
fn render_json(t: &json::Template, info: &StreamInfo, out: &mut String) {
    use json::{string, Node};
    match t.node() {
        Node::Object(fields) => {
            out.push('{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(k, out);
                out.push(':');
                render_json(v, info, out);
            }
            out.push('}');
        }
        Node::List(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render_json(v, info, out);
            }
            out.push(']');
        }
        Node::Literal(text) => out.push_str(text),
        Node::Text(pieces) => match pieces.as_slice() {
            // Metadata keeps its type in a JSON line (a struct as an object).
            [Piece::Op(
                op @ (Op::DynamicMetadata(ns, path)
                | Op::UpstreamMetadata(ns, path)
                | Op::ClusterMetadata(ns, path)
                | Op::RouteMetadata(ns, path)
                | Op::VirtualHostMetadata(ns, path)),
                None,
            )] => {
                let v = match op {
                    Op::DynamicMetadata(..) => info
                        .dynamic_metadata
                        .as_ref()
                        .and_then(|m| m.with(|m| m.value(ns, path))),
                    Op::UpstreamMetadata(..) => info
                        .upstream_metadata
                        .as_ref()
                        .and_then(|m| m.value(ns, path)),
                    Op::ClusterMetadata(..) => info
                        .cluster_metadata
                        .as_ref()
                        .and_then(|m| m.value(ns, path)),
                    Op::RouteMetadata(..) => info
                        .route_metadata
                        .as_ref()
                        .and_then(|(r, _)| r.value(ns, path)),
                    _ => info
                        .route_metadata
                        .as_ref()
                        .and_then(|(_, v)| v.value(ns, path)),
                };
                match v {
                    Some(v) => v.write_json(out),
                    None => out.push_str("null"),
                }
            }
            // An object keeps its type in a JSON line: a string value, whatever the form.
            [Piece::Op(Op::FilterState { key, .. }, max)] => {
                let v = crate::stream_info::with_filter_state(
                    info.dynamic_metadata.as_ref(),
                    info.connection.as_deref(),
                    |state| state.get(key).map(|o| o.value.clone()),
                );
                match v {
                    Some(v) => string(truncated(&v, *max), out),
                    None => out.push_str("null"),
                }
            }
            [Piece::Op(op, max)] => match value(op, info) {
                None => out.push_str("null"),
                Some(v) => {
                    let v = truncated(&v, *max);
                    if numeric(op) && v.parse::<i64>().is_ok() {
                        out.push_str(v);
                    } else {
                        string(v, out);
                    }
                }
            },
            _ => {
                let mut text = String::new();
                render_pieces(pieces, info, &mut text);
                string(&text, out);
            }
        },
    }
}

/// Renders a header value's format as Envoy's header formatter does: a value the stream does
/// not have is empty. `request` and `response` are the headers being changed, which `%REQ%`
/// and `%RESP%` read where given.
pub fn header_value(
    format: &Format,
    info: &StreamInfo,
    request: Option<&HeaderMap>,
    response: Option<&HeaderMap>,
) -> String {
    let req = request.unwrap_or(&info.request_headers);
    let resp = response.unwrap_or(&info.response_headers);
    let mut out = String::new();
    if let Body::Text(pieces) = format.body() {
        for p in pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Op(op, max) => {
                    if let Some(v) = value_in(op, info, req, resp) {
                        out.push_str(truncated(&v, *max));
                    }
                }
            }
        }
    }
    out
}

/// Renders pieces as text: a missing value is `-`.
fn render_pieces(pieces: &[Piece], info: &StreamInfo, out: &mut String) {
    render_pieces_in(pieces, info, &info.request_headers, out)
}

/// Renders pieces as text, `%REQ%` reading `req`: a missing value is `-`.
fn render_pieces_in(pieces: &[Piece], info: &StreamInfo, req: &HeaderMap, out: &mut String) {
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Op(op, max) => {
                let v = value_in(op, info, req, &info.response_headers);
                out.push_str(truncated(v.as_deref().unwrap_or("-"), *max));
            }
        }
    }
}

/// Renders a text format as Envoy's substitution formatter does outside access logs
/// (`set_filter_state` values): a missing value is `-`, `%REQ%` reads `request` (the headers
/// as the filters changed them so far) where given.
pub fn text(format: &Format, info: &StreamInfo, request: Option<&HeaderMap>) -> String {
    let mut out = String::new();
    if let Body::Text(pieces) = format.body() {
        render_pieces_in(
            pieces,
            info,
            request.unwrap_or(&info.request_headers),
            &mut out,
        );
    }
    out
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
    value_in(op, info, &info.request_headers, &info.response_headers)
}

/// An operator's value, `%REQ%` reading `req` and `%RESP%` reading `resp`.
fn value_in(op: &Op, info: &StreamInfo, req: &HeaderMap, resp: &HeaderMap) -> Option<String> {
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
        Op::Req(a, b) => pseudo_or_header(a, req, info)
            .or_else(|| b.as_ref().and_then(|b| pseudo_or_header(b, req, info))),
        Op::Resp(a, b) => pseudo_or_header(a, resp, info)
            .or_else(|| b.as_ref().and_then(|b| pseudo_or_header(b, resp, info))),
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
        // Envoy's current duration: until now while the stream goes on.
        Op::Duration => Some(
            info.duration_ms
                .unwrap_or_else(|| info.start.elapsed().as_millis() as u64)
                .to_string(),
        ),
        Op::UpstreamHost => info.upstream_host.as_ref().map(address_text),
        Op::UpstreamCluster => info
            .upstream_cluster_stat
            .as_deref()
            .or(info.upstream_cluster.as_deref())
            .map(str::to_string),
        Op::RouteName => info.route_name.as_deref().map(str::to_string),
        Op::AttemptCount => Some(info.attempts.to_string()),
        Op::DownstreamRemoteAddress => Some(address_text(&info.downstream_remote)),
        Op::DownstreamRemoteAddressWithoutPort => Some(address_ip_text(&info.downstream_remote)),
        Op::DownstreamLocalAddress => Some(address_text(&info.downstream_local)),
        Op::DownstreamLocalAddressWithoutPort => Some(address_ip_text(&info.downstream_local)),
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
        Op::UpstreamLocalAddress => upstream_conn
            .and_then(|c| c.local)
            .map(|a| address_text(&a)),
        Op::UpstreamLocalAddressWithoutPort => upstream_conn
            .and_then(|c| c.local)
            .map(|a| address_ip_text(&a)),
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
        Op::VirtualClusterName => info.virtual_cluster.as_deref().map(str::to_string),
        Op::LocalReplyBody => Some(
            String::from_utf8_lossy(info.local_reply_body.as_deref().unwrap_or_default())
                .into_owned(),
        ),
        Op::DynamicMetadata(ns, path) => info
            .dynamic_metadata
            .as_ref()
            .and_then(|m| m.with(|m| m.render(ns, path))),
        Op::UpstreamMetadata(ns, path) => info
            .upstream_metadata
            .as_ref()
            .and_then(|m| m.render(ns, path)),
        Op::ClusterMetadata(ns, path) => info
            .cluster_metadata
            .as_ref()
            .and_then(|m| m.render(ns, path)),
        Op::RouteMetadata(ns, path) => info
            .route_metadata
            .as_ref()
            .and_then(|(r, _)| r.render(ns, path)),
        Op::VirtualHostMetadata(ns, path) => info
            .route_metadata
            .as_ref()
            .and_then(|(_, v)| v.render(ns, path)),
        Op::ListenerMetadata(ns, path) => info
            .connection
            .as_ref()
            .and_then(|c| c.listener_metadata.as_ref())
            .and_then(|m| m.render(ns, path)),
        Op::FilterState { key, plain } => crate::stream_info::with_filter_state(
            info.dynamic_metadata.as_ref(),
            info.connection.as_deref(),
            |state| {
                state.get(key).map(|o| match plain {
                    true => o.value.to_string(),
                    false => o.typed(),
                })
            },
        ),
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
        Op::AccessLogType => Some(log_type(info).to_string()),
        Op::Path { query, from } => {
            let original = || {
                req.get("x-envoy-original-path")
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
        Op::ReqWithoutQuery(a, b) => pseudo_or_header(a, req, info)
            .or_else(|| b.as_ref().and_then(|b| pseudo_or_header(b, req, info)))
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
            // Records go to their exporter, never to a buffer.
            AccessLogSink::OpenTelemetry(_) => Ok(()),
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
    /// The worker whose exporters OpenTelemetry loggers' records go to (none: they are lost).
    worker: RefCell<Weak<Worker>>,
}

/// Whether a stream gets a line under an access log `filter`.
pub fn passes(f: &crate::config::model::LogFilter, info: &StreamInfo) -> bool {
    use crate::config::model::LogFilter;
    match f {
        LogFilter::StatusCode(c) => c.passes(
            u64::from(info.response_code.unwrap_or(0)),
            &crate::runtime::snapshot(),
        ),
        LogFilter::Duration(c) => {
            c.passes(info.duration_ms.unwrap_or(0), &crate::runtime::snapshot())
        }
        LogFilter::ResponseFlags(names) => {
            let set = info.flags.short();
            if set == "-" {
                return false;
            }
            names.is_empty() || set.split(',').any(|f| names.iter().any(|n| n == f))
        }
        LogFilter::Header(m) => {
            let method = info.method.as_ref().map_or("", |m| m.as_str());
            let view = crate::router::RequestView {
                method,
                path: info.path.as_deref().unwrap_or(""),
                authority: info.authority.as_deref().unwrap_or(""),
                scheme: info.scheme,
                headers: &info.request_headers,
                runtime: &crate::config::runtime::EMPTY,
                random: 0,
                peer_certificate: false,
                metadata: None,
                filter_state: Default::default(),
            };
            crate::router::header_matches(m, &view)
        }
        LogFilter::And(all) => all.iter().all(|f| passes(f, info)),
        LogFilter::Or(any) => any.iter().any(|f| passes(f, info)),
        LogFilter::NotHealthCheck => !info.health_check,
        LogFilter::Traceable => info.trace_forced,
        LogFilter::Metadata {
            matcher,
            if_not_found,
        } => {
            let found = matcher.as_ref().and_then(|m| match &info.dynamic_metadata {
                Some(d) => d.with(|md| m.matches_present(Some(md))),
                None => m.matches_present(None),
            });
            found.unwrap_or(*if_not_found)
        }
        LogFilter::Runtime {
            fraction,
            independent,
        } => {
            // Envoy's UUID request id: its first eight hex digits, unless told otherwise.
            let from_id = (!independent)
                .then(|| info.request_headers.get("x-request-id"))
                .flatten()
                .and_then(|v| crate::http::conn_manager_utility::request_id_integer(v.as_bytes()));
            let random = from_id.unwrap_or_else(|| fastrand::u64(..));
            fraction.enabled(&crate::runtime::snapshot(), random)
        }
        LogFilter::GrpcStatus { statuses, exclude } => {
            let found = statuses.contains(&grpc_status(info));
            found != *exclude
        }
        LogFilter::LogType { types, exclude } => {
            let found = types.iter().any(|t| t == log_type(info));
            found != *exclude
        }
        LogFilter::Cel(e) => skiff_config::cel::holds(e, &CelStream(info)),
    }
}

/// A stream's record as CEL attributes (Envoy's vocabulary: `request.*`, `response.*`,
/// `connection.*`, `source.*`, `destination.*`, `upstream.*`, `xds.*`).
struct CelStream<'a>(&'a StreamInfo);

impl skiff_config::cel::Attributes for CelStream<'_> {
    fn attribute(&self, root: &str, field: &str) -> Option<skiff_config::cel::Value> {
        use skiff_config::cel::Value;
        let info = self.0;
        let text = |s: &str| Some(Value::String(s.to_string()));
        let header = |h: &HeaderMap, name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| Value::String(v.to_string()))
        };
        let headers = |h: &HeaderMap| {
            let mut out: Vec<(String, Value)> = Vec::new();
            for name in h.keys() {
                let values: Vec<&str> = h
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                out.push((name.as_str().to_string(), Value::String(values.join(","))));
            }
            Value::Map(out)
        };
        let address = |a: &std::net::SocketAddr| Value::String(address_text(a));
        let path = info.path.as_deref();
        match (root, field) {
            ("request", "path") => path.and_then(text),
            ("request", "url_path") => path.and_then(|p| text(p.split('?').next().unwrap_or(p))),
            ("request", "query") => {
                path.map(|p| Value::String(p.split_once('?').map_or("", |(_, q)| q).to_string()))
            }
            ("request", "host") => info.authority.as_deref().and_then(text),
            ("request", "scheme") => text(info.scheme),
            ("request", "method") => info.method.as_ref().and_then(|m| text(m.as_str())),
            ("request", "headers") => Some(headers(&info.request_headers)),
            ("request", "referer") => header(&info.request_headers, "referer"),
            ("request", "useragent") => header(&info.request_headers, "user-agent"),
            ("request", "id") => header(&info.request_headers, "x-request-id"),
            ("request", "protocol") => info.protocol.and_then(text),
            ("response", "code") => info.response_code.map(|c| Value::Int(i64::from(c))),
            ("response", "code_details") => value_in(
                &crate::config::access_log::Op::ResponseCodeDetails,
                info,
                &info.request_headers,
                &info.response_headers,
            )
            .map(Value::String),
            ("response", "headers") => Some(headers(&info.response_headers)),
            ("connection", "id") => info.connection.as_ref().map(|c| Value::Uint(c.id)),
            ("connection", "mtls") => Some(Value::Bool(
                info.connection.as_ref().is_some_and(|c| c.peer_certificate),
            )),
            ("connection", "requested_server_name") => Some(Value::String(
                info.connection
                    .as_ref()
                    .and_then(|c| c.requested_server_name.clone())
                    .unwrap_or_default(),
            )),
            ("source", "address") => Some(address(&info.downstream_remote)),
            ("source", "port") => Some(Value::Int(i64::from(info.downstream_remote.port()))),
            ("destination", "address") => Some(address(&info.downstream_local)),
            ("destination", "port") => Some(Value::Int(i64::from(info.downstream_local.port()))),
            ("upstream", "address") => info.upstream_host.as_ref().map(address),
            ("upstream", "port") => info.upstream_host.map(|a| Value::Int(i64::from(a.port()))),
            ("xds", "route_name") => info.route_name.as_deref().and_then(text),
            ("xds", "cluster_name") => info.upstream_cluster.as_deref().and_then(text),
            _ => None,
        }
    }
}

/// Envoy's name for the line a stream gets (`%ACCESS_LOG_TYPE%`).
fn log_type(info: &StreamInfo) -> &'static str {
    if let Some(t) = info.log_type {
        return t;
    }
    if info.protocol.is_some() {
        "DownstreamEnd"
    } else {
        "TcpConnectionEnd"
    }
}

/// A stream's gRPC status as Envoy's `getGrpcStatus` finds it: the trailers' `grpc-status`,
/// else the headers', else from the HTTP status; UNKNOWN without a response. A status that is
/// not a known code (over 16, or not a number) matches none.
fn grpc_status(info: &StreamInfo) -> u32 {
    const INVALID: u32 = u32::MAX;
    let parse = |h: &http::HeaderMap| {
        h.get("grpc-status").map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .filter(|c| *c <= 16)
                .unwrap_or(INVALID)
        })
    };
    if let Some(c) = info.response_trailers.as_deref().and_then(parse) {
        return c;
    }
    if let Some(c) = parse(&info.response_headers) {
        return c;
    }
    info.response_code
        .map_or(2, crate::http::local_reply::grpc_status_of_http)
}

impl Writer {
    /// A writer shared by the tasks of one worker.
    pub fn new() -> Rc<Writer> {
        Rc::new(Writer::default())
    }

    /// Sends OpenTelemetry loggers' records through `worker`'s exporters.
    pub fn attach(&self, worker: &Rc<Worker>) {
        *self.worker.borrow_mut() = Rc::downgrade(worker);
    }

    /// Formats and buffers a line of `kind` (`DownstreamStart`, `DownstreamPeriodic`,
    /// `TcpUpstreamConnected`, …) for each configured log, before the stream ends.
    pub fn log_early(&self, logs: &[AccessLog], info: &mut StreamInfo, kind: &'static str) {
        info.log_type = Some(kind);
        self.log(logs, info);
        info.log_type = None;
    }

    /// Formats and buffers a line for each configured log.
    pub fn log(&self, logs: &[AccessLog], info: &StreamInfo) {
        if logs.is_empty() {
            return;
        }
        let mut buffers = self.buffers.borrow_mut();
        for log in logs {
            if log.filter.as_ref().is_some_and(|f| !passes(f, info)) {
                continue;
            }
            if let AccessLogSink::OpenTelemetry(o) = &log.sink {
                match self.worker.borrow().upgrade() {
                    Some(w) => otlp::log(&w, o, info),
                    None => tracing::debug!("an OpenTelemetry access log record without a worker"),
                }
                continue;
            }
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
    use super::Render;

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

#[cfg(test)]
mod json_tests {
    use super::*;
    use json::Template;

    #[test]
    fn typed_values_sorted_keys_and_nulls_as_envoy_writes_them() {
        let ext = Extensions::default();
        let s = |t: &str| Template::string(t, ext).expect("parses");
        let t = Template::object(vec![
            ("zeta".into(), s("%PROTOCOL%")),
            ("alpha".into(), s("%RESPONSE_CODE%")),
            (
                "mid".into(),
                Template::object(vec![
                    ("b".into(), s("%UPSTREAM_HOST%")),
                    ("a".into(), s("x %BYTES_SENT% y \"%UPSTREAM_HOST%\"")),
                ]),
            ),
            ("n".into(), Template::number(5.0)),
            ("t".into(), Template::bool(true)),
            ("missing".into(), s("%REQ(X-NOPE)%")),
            ("trunc".into(), s("%REQ(:PATH):3%")),
            ("flags".into(), s("%RESPONSE_FLAGS%")),
            (
                "list".into(),
                Template::list(vec![s("%PROTOCOL%"), Template::number(3.5)]),
            ),
            ("empty".into(), s("")),
        ]);
        let mut info = StreamInfo::new(
            "127.0.0.1:5000".parse().expect("addr"),
            "127.0.0.1:10000".parse().expect("addr"),
        );
        info.protocol = Some("HTTP/1.1");
        info.response_code = Some(404);
        info.bytes_sent = 335;
        info.path = Some("/a/b".into());
        let mut line = String::new();
        Format::json(t).render(&info, &mut line);
        assert_eq!(
            line,
            "{\"alpha\":404,\"empty\":\"\",\"flags\":\"-\",\"list\":[\"HTTP/1.1\",\"3.5\"],\"mid\":{\"a\":\"x 335 y \\\"-\\\"\",\"b\":null},\"missing\":null,\"n\":5,\"t\":true,\"trunc\":\"/a/\",\"zeta\":\"HTTP/1.1\"}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(parsed["alpha"], 404);
    }
}
