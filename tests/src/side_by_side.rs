//! Side-by-side runs for the differential tests: Envoy 1.40 and the proxy under test with the
//! same bootstrap, each with its own upstream and ports, and assertions that what the upstream and
//! the client saw agrees (modulo `tests/DIFFERENCES.md`).

use std::time::Duration;

use crate::client::{self, curl, curl_with_stdin};
use crate::config;
use crate::diff::{self, response_view, upstream_view};
use crate::proxy::{Kind, ProxyProcess};
use crate::upstream::{
    EchoOptions, EchoUpstream, H2Upstream, RecordedRequest, Recorder, TcpMode, TcpUpstream,
};
use crate::{free_port, is_uuid, Resp};

/// One proxy with its own upstream and ports.
pub struct Side {
    /// The proxy.
    pub proxy: ProxyProcess,
    /// Its HTTP listener port.
    pub port: u16,
    /// What its upstream received.
    pub rec: Recorder,
    /// Its upstream's port.
    pub upstream_port: u16,
    _keep: Box<dyn std::any::Any + Send>,
}

impl Side {
    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// The Host every differential request carries, so both sides see the same bytes.
pub const HOST: &str = "diff.example.com";

/// curl with `Host: diff.example.com`, `extra` arguments, and the URL of `path` on `side`.
pub async fn curl_on(side: &Side, extra: &[&str], path: &str) -> client::CurlReply {
    let url = side.url(path);
    let host = format!("Host: {HOST}");
    let mut args = vec!["-H", host.as_str()];
    args.extend_from_slice(extra);
    args.push(url.as_str());
    curl(&args).await
}

/// As [`curl_on`], feeding `stdin` to curl.
pub async fn curl_stdin_on(
    side: &Side,
    extra: &[&str],
    path: &str,
    stdin: &[u8],
) -> client::CurlReply {
    let url = side.url(path);
    let host = format!("Host: {HOST}");
    let mut args = vec!["-H", host.as_str()];
    args.extend_from_slice(extra);
    args.push(url.as_str());
    curl_with_stdin(&args, stdin).await
}

pub enum Up {
    /// HTTP/1.1 echo.
    H1,
    /// HTTP/1.1 echo that sends its body chunked.
    H1Chunked,
    /// h2c upstream.
    H2,
    /// A raw TCP upstream (for broken upstream behaviour).
    Raw(TcpMode),
}

/// Starts Envoy and the proxy under test with the bootstrap `build(admin, listen, upstream)`.
pub async fn pair(up: Up, build: impl Fn(u16, u16, u16) -> String) -> (Side, Side) {
    let mut sides = Vec::new();
    for kind in [Kind::Envoy, Kind::under_test()] {
        let (port, rec, keep): (u16, Recorder, Box<dyn std::any::Any + Send>) = match up {
            Up::H1 => {
                let u = EchoUpstream::start("u1").await;
                (u.port(), u.rec.clone(), Box::new(u))
            }
            Up::H1Chunked => {
                let mut o = EchoOptions::named("u1");
                o.chunked = true;
                let u = EchoUpstream::with_options(o).await;
                (u.port(), u.rec.clone(), Box::new(u))
            }
            Up::Raw(ref mode) => {
                let u = TcpUpstream::start(mode.clone()).await;
                (u.port(), Recorder::default(), Box::new(u))
            }
            Up::H2 => {
                let u = H2Upstream::start("u1").await;
                (u.port(), u.rec.clone(), Box::new(u))
            }
        };
        let (admin, listen) = (free_port(), free_port());
        let yaml = build(admin, listen, port);
        let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
        sides.push(Side {
            proxy,
            port: listen,
            rec,
            upstream_port: port,
            _keep: keep,
        });
    }
    let b = sides.pop().expect("two sides");
    let a = sides.pop().expect("two sides");
    (a, b)
}

/// The reference minimal config with the given ports.
pub fn minimal(admin: u16, listen: u16, upstream: u16) -> String {
    config::envoy_minimal(admin, listen, upstream)
}

/// Asserts that both responses agree modulo the documented differences.
#[track_caller]
pub fn assert_same_response(what: &str, envoy: &Resp, skiff: &Resp) {
    let d = diff::response_differences(&response_view(envoy), &response_view(skiff));
    assert!(
        d.is_empty(),
        "{what}: client-observed responses differ:\n  {}\nenvoy: {envoy:#?}\nskiff: {skiff:#?}",
        d.join("\n  ")
    );
    for h in diff::VOLATILE_RESPONSE_HEADERS {
        assert_eq!(
            envoy.header(h).is_some(),
            skiff.header(h).is_some(),
            "{what}: header `{h}` present on one side only"
        );
    }
}

/// Asserts that both upstreams saw the same request, and returns Envoy's.
#[track_caller]
pub fn assert_same_upstream(what: &str, envoy: &Side, skiff: &Side) -> RecordedRequest {
    let e = envoy.rec.requests();
    let s = skiff.rec.requests();
    assert_eq!(
        e.len(),
        s.len(),
        "{what}: upstream request counts differ (envoy {}, skiff {})\nenvoy: {e:#?}\nskiff: {s:#?}",
        e.len(),
        s.len()
    );
    for (i, (e, s)) in e.iter().zip(s.iter()).enumerate() {
        let d = diff::upstream_differences(&upstream_view(e), &upstream_view(s));
        assert!(
            d.is_empty(),
            "{what}: upstream-observed request #{i} differs:\n  {}\nenvoy: {e:#?}\nskiff: {s:#?}",
            d.join("\n  ")
        );
    }
    let (Some(e), Some(s)) = (e.last(), s.last()) else {
        panic!("{what}: no upstream request on either side");
    };
    for (side, r) in [("envoy", e), ("skiff", s)] {
        if let Some(id) = r.header("x-request-id") {
            assert!(!id.is_empty(), "{what}: {side} sent an empty x-request-id");
        }
    }
    e.clone()
}

/// Asserts a generated x-request-id is present and UUID-shaped on both sides.
#[track_caller]
pub fn assert_generated_request_id(what: &str, envoy: &Side, skiff: &Side) {
    for (side, s) in [("envoy", envoy), ("skiff", skiff)] {
        let r = s.rec.last();
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{what}: {side} did not send x-request-id upstream"));
        assert!(
            is_uuid(id),
            "{what}: {side} x-request-id {id:?} is not a UUID"
        );
    }
}

/// Masks what legitimately varies in a default-format line: time, duration, service time, ids,
/// ports.
pub fn mask_log_line(line: &str) -> String {
    // [START] "GET /p HTTP/1.1" CODE FLAGS RX TX DURATION SVC "XFF" "UA" "ID" "AUTH" "UPSTREAM"
    let after_time = line.split_once("] ").map(|(_, r)| r).unwrap_or(line);
    let parts: Vec<&str> = after_time.split('"').collect();
    // parts: ["", request, " CODE FLAGS RX TX DUR SVC ", xff, " ", ua, " ", id, " ", auth, " ", up, ""]
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let p = match i {
            2 => {
                let f: Vec<&str> = p.split_whitespace().collect();
                let masked: Vec<String> = f
                    .iter()
                    .enumerate()
                    .map(|(j, v)| {
                        if j >= 4 && *v != "-" {
                            "<n>".to_string()
                        } else {
                            v.to_string()
                        }
                    })
                    .collect();
                format!(" {} ", masked.join(" "))
            }
            7 => {
                if is_uuid(p) {
                    "<uuid>".to_string()
                } else {
                    p.to_string()
                }
            }
            9 | 11 => mask_port(p),
            _ => p.to_string(),
        };
        out.push(p);
    }
    out.join("\"")
}

pub fn mask_port(s: &str) -> String {
    match s.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => format!("{h}:<port>"),
        _ => s.to_string(),
    }
}

/// Sends the same raw bytes to both sides; compares the responses and whether each side closed.
pub async fn raw_both(
    e: &Side,
    s: &Side,
    what: &str,
    bytes: &[u8],
) -> (client::RawReply, client::RawReply) {
    let re = client::raw_exchange(&e.addr(), bytes, Duration::from_secs(3)).await;
    let rs = client::raw_exchange(&s.addr(), bytes, Duration::from_secs(3)).await;
    let (pe, ps) = (re.responses(), rs.responses());
    assert_eq!(
        pe.len(),
        ps.len(),
        "{what}: number of responses differs\nenvoy: {}\nskiff: {}",
        re.text(),
        rs.text()
    );
    for (a, b) in pe.iter().zip(ps.iter()) {
        assert_same_response(what, a, b);
    }
    assert_eq!(
        re.closed, rs.closed,
        "{what}: envoy closed={} skiff closed={}",
        re.closed, rs.closed
    );
    (re, rs)
}
