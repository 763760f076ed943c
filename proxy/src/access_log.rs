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
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Op(Op, Option<usize>),
}

/// A parsed format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pieces: Vec<Piece>,
}

impl Format {
    /// Envoy's default format.
    pub fn envoy_default() -> Format {
        Format::parse(ENVOY_DEFAULT_FORMAT).expect("the default format parses")
    }

    /// Parses a format; an unknown operator is an error naming it, as Envoy's.
    pub fn parse(text: &str) -> Result<Format, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 1..];
            let end = after
                .find('%')
                .ok_or_else(|| format!("unterminated command in '{text}'"))?;
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
            pieces.push(Piece::Op(parse_op(cmd)?, max));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Format { pieces })
    }

    /// Renders one line for a stream.
    pub fn render(&self, info: &StreamInfo, out: &mut String) {
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Op(op, max) => {
                    let v = value(op, info);
                    let v = v.as_deref().unwrap_or("-");
                    match max {
                        Some(n) if v.len() > *n => out.push_str(&v[..floor_char_boundary(v, *n)]),
                        _ => out.push_str(v),
                    }
                }
            }
        }
    }
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

fn parse_op(cmd: &str) -> Result<Op, String> {
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
        other => return Err(format!("Not supported field in StreamInfo: {other}")),
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

fn value(op: &Op, info: &StreamInfo) -> Option<String> {
    match op {
        Op::StartTime => Some(format_time(info.start_time)),
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
        Op::ResponseCodeDetails => (!info.details.is_empty()).then(|| info.details.to_string()),
        Op::ResponseFlags => Some(info.flags.short()),
        Op::ResponseFlagsLong => Some(info.flags.long()),
        Op::BytesReceived => Some(info.bytes_received.to_string()),
        Op::BytesSent => Some(info.bytes_sent.to_string()),
        Op::Duration => info.duration_ms.map(|d| d.to_string()),
        Op::UpstreamHost => info.upstream_host.map(|h| h.to_string()),
        Op::UpstreamCluster => info.upstream_cluster.as_deref().map(str::to_string),
        Op::RouteName => info.route_name.as_deref().map(str::to_string),
        Op::AttemptCount => (info.attempts > 0).then(|| info.attempts.to_string()),
        Op::DownstreamRemoteAddress => Some(info.downstream_remote.to_string()),
        Op::DownstreamRemoteAddressWithoutPort => Some(info.downstream_remote.ip().to_string()),
        Op::DownstreamLocalAddress => Some(info.downstream_local.to_string()),
        Op::DownstreamLocalAddressWithoutPort => Some(info.downstream_local.ip().to_string()),
        Op::ConnectionTerminationDetails => None,
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
    fn unknown_operator_is_an_error() {
        assert_eq!(
            Format::parse("%NOPE%").unwrap_err(),
            "Not supported field in StreamInfo: NOPE"
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
            if let Ok(f) = super::Format::parse(&text) {
                let info = crate::stream_info::StreamInfo::new(
                    "127.0.0.1:1".parse().expect("addr"),
                    "127.0.0.1:2".parse().expect("addr"),
                );
                let mut out = String::new();
                f.render(&info, &mut out);
            }
        }
        assert!(seen >= 3);
    }
}
