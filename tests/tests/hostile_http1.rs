//! Hostile HTTP/1.1 requests (ambiguous framing, smuggling attempts, odd heads) sent as raw
//! bytes through Envoy 1.40 and skiff side by side: the client must get the same reply (status,
//! body, headers, whether the connection closed), the access log the same code, flags and
//! details, and the upstream the same requests. The upstream is a raw recorder that fails the
//! test if any request reaching it has ambiguous framing. Intentional differences are listed in
//! `tests/DIFFERENCES.md`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_tests::client::{self, count_complete_responses, RawReply};
use skiff_tests::config::{bootstrap, cluster, file_log, listener, route, router, vhost};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::side_by_side::assert_same_response;
use skiff_tests::{free_port, run_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a case's outcome may differ between the two proxies (tests/DIFFERENCES.md).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Everything the same.
    Same,
    /// The same reply and log; the upstream gets the same request with another (unambiguous)
    /// framing of the same body.
    OtherFraming,
    /// Envoy forwards it, skiff's codec (hyper) refuses it with 400 and closes.
    SkiffRefuses,
}

use Expect::*;

const CASES: &[(&str, &str, Expect)] = &[
    ("cl_te", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Same),
    ("te_cl", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", Same),
    ("cl0_te", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Same),
    ("cl_te_identity", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: identity\r\n\r\nabc", Same),
    ("cl_te_two_cl", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Same),
    ("cl_diff", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", Same),
    ("cl_same_twice", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", Same),
    ("cl_list_same", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", Same),
    ("cl_list_diff", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd", Same),
    ("cl_negative", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\nabc", Same),
    ("cl_plus", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", Same),
    ("cl_hex", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc", Same),
    ("cl_inner_space", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\nabc", Same),
    ("cl_overflow", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nabc", Same),
    ("cl_empty", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\nabc", Same),
    ("cl_leading_comma", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ,3\r\n\r\nabc", Same),
    ("cl_leading_zeros", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 003\r\n\r\nabc", Same),
    ("cl_trailing_space", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3 \r\n\r\nabc", Same),
    ("te_gzip_chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", Same),
    ("te_chunked_gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", Same),
    ("te_identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", Same),
    ("te_gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", Same),
    ("te_chunked_twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", Same),
    ("te_two_headers", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Same),
    ("te_upper_case", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n", Same),
    ("te_xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", Same),
    ("te_trailing_space", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \r\n\r\n0\r\n\r\n", Same),
    ("te_empty", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", Same),
    ("te_leading_comma", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n", Same),
    ("te_tab", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n", Same),
    ("te_space_before_colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", Same),
    ("te_obs_fold", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", SkiffRefuses),
    ("te_on_get", "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", OtherFraming),
    ("chunk_size_not_hex", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", Same),
    ("chunk_size_negative", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", Same),
    ("chunk_size_overflow", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n", Same),
    ("chunk_extension", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n", Same),
    ("chunk_bare_lf", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", Same),
    ("chunk_size_space", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", Same),
    ("chunk_data_overrun", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", SkiffRefuses),
    ("host_twice", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Same),
    ("host_twice_same", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", Same),
    ("host_list_with_space", "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", Same),
    ("host_quote", "GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n", Same),
    ("host_userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", Same),
    ("host_empty", "GET / HTTP/1.1\r\nHost: \r\n\r\n", Same),
    ("host_missing", "GET / HTTP/1.1\r\n\r\n", Same),
    ("host_vs_absolute_uri", "GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("connection_nominates_custom", "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-foo\r\nx-foo: 1\r\nx-bar: 2\r\n\r\n", Same),
    ("connection_nominates_authorization", "GET / HTTP/1.1\r\nHost: a\r\nConnection: authorization\r\nAuthorization: secret\r\n\r\n", Same),
    ("connection_nominates_host", "GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n", Same),
    ("connection_nominates_content_length", "POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\nabc", OtherFraming),
    ("connection_nominates_te", "GET / HTTP/1.1\r\nHost: a\r\nConnection: te\r\nTE: trailers\r\n\r\n", Same),
    ("connection_nominates_xff", "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-forwarded-for\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n", Same),
    ("connection_nominates_xfp", "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-forwarded-proto\r\nx-forwarded-proto: https\r\n\r\n", Same),
    ("connection_nominates_xfh", "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-forwarded-host\r\nx-forwarded-host: q\r\n\r\n", Same),
    ("connection_nominates_request_id", "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-request-id\r\nx-request-id: abc\r\n\r\n", Same),
    ("connection_nine_tokens", "GET / HTTP/1.1\r\nHost: a\r\nConnection: a1,a2,a3,a4,a5,a6,a7,a8,a9\r\n\r\n", Same),
    ("connection_ten_tokens", "GET / HTTP/1.1\r\nHost: a\r\nConnection: a1,a2,a3,a4,a5,a6,a7,a8,a9,a10\r\n\r\n", Same),
    ("connection_two_headers", "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-a\r\nConnection: x-b\r\nx-a: 1\r\nx-b: 2\r\n\r\n", Same),
    ("connection_close_keep_alive", "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, keep-alive\r\n\r\n", Same),
    ("upgrade_without_connection", "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", Same),
    ("upgrade_connection_other", "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nUpgrade: websocket\r\n\r\n", Same),
    ("upgrade_without_connection_post", "POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nContent-Length: 3\r\n\r\nabc", Same),
    ("connection_upgrade_without_upgrade", "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", Same),
    ("upgrade_websocket", "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", Same),
    ("upgrade_h2c", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n", Same),
    ("header_name_space", "GET / HTTP/1.1\r\nHost: a\r\nx foo: 1\r\n\r\n", Same),
    ("header_name_empty", "GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", Same),
    ("header_value_nul", "GET / HTTP/1.1\r\nHost: a\r\nx-foo: a\0b\r\n\r\n", Same),
    ("header_value_bare_cr", "GET / HTTP/1.1\r\nHost: a\r\nx-foo: a\rb\r\n\r\n", SkiffRefuses),
    ("bare_lf_head", "GET / HTTP/1.1\nHost: a\n\n", Same),
    ("leading_empty_line", "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("method_lower_case", "get / HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("method_unknown", "FOO / HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("method_purge", "PURGE / HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("path_fragment", "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("path_fragment_only", "GET /# HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("path_fragment_with_query", "GET /a?q=1#b HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("absolute_uri_fragment", "GET http://a/x#y HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("absolute_uri_userinfo", "GET http://u:p@a/x HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("absolute_uri_without_path", "GET http://a HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("version_1_2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", Same),
    ("version_2_0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", Same),
    ("smuggle_cl_te", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("smuggle_te_cl", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("smuggle_te_te", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("pipelined_then_smuggle", "GET /first HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("connect_then_get", "CONNECT a:80 HTTP/1.1\r\nHost: a:80\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n", Same),
    ("h2c_upgrade_then_smuggle", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\nabc", Same),
    ("websocket_then_smuggle", "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Same),
    ("chunked_then_pipelined", "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", Same),
];

/// One request as the upstream saw it, framing aside.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    request_line: String,
    /// Lower-cased names, sorted; the x-request-id value masked when generated.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
}

/// A raw HTTP/1.1 upstream that records each request and fails on any ambiguous framing.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    ambiguous: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> (u16, Recorder) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let rec = Recorder::default();
        let r = rec.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(r.clone().serve(s));
            }
        });
        (port, rec)
    }

    async fn serve(self, mut s: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                if !read_more(&mut s, &mut buf).await {
                    return;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            buf.drain(..head_end);
            let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
            let request_line = lines.next().unwrap_or_default().to_string();
            let mut headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let count = |n: &str| headers.iter().filter(|(k, _)| k == n).count();
            let te: Vec<&str> = headers
                .iter()
                .filter(|(k, _)| k == "transfer-encoding")
                .map(|(_, v)| v.as_str())
                .collect();
            let bad = count("content-length") > 1
                || count("host") != 1
                || (count("content-length") == 1 && !te.is_empty())
                || te.len() > 1
                || te.iter().any(|v| !v.eq_ignore_ascii_case("chunked"));
            if bad {
                self.ambiguous
                    .lock()
                    .expect("lock")
                    .push(format!("{head:?}"));
            }
            let chunked = !te.is_empty();
            let body = if chunked {
                loop {
                    if let Some(i) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                        let raw: Vec<u8> = buf.drain(..i + 5).collect();
                        break client::dechunk(&raw).to_vec();
                    }
                    if !read_more(&mut s, &mut buf).await {
                        return;
                    }
                }
            } else {
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < len {
                    if !read_more(&mut s, &mut buf).await {
                        return;
                    }
                }
                buf.drain(..len).collect()
            };
            headers.retain(|(k, _)| k != "content-length" && k != "transfer-encoding");
            for (k, v) in headers.iter_mut() {
                if k == "x-request-id" && skiff_tests::is_uuid(v) {
                    *v = "<uuid>".into();
                }
            }
            headers.sort();
            self.seen.lock().expect("lock").push(Seen {
                request_line,
                headers,
                body,
                chunked,
            });
            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
        }
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    matches!(s.read(&mut chunk).await, Ok(n) if n > 0 && { buf.extend_from_slice(&chunk[..n]); true })
}

struct Side {
    proxy: ProxyProcess,
    port: u16,
    rec: Recorder,
    log: PathBuf,
    lines_seen: usize,
}

const LOG_FORMAT: &str = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n";

async fn start(kind: Kind) -> Side {
    let (up, rec) = Recorder::start().await;
    let (admin, port) = (free_port(), free_port());
    let log = std::env::temp_dir().join(format!("skiff-hostile-{}-{port}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let hcm = serde_json::json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "hostile",
            "access_log": [ file_log(log.to_str().expect("utf-8"), Some(LOG_FORMAT)) ],
            "route_config": { "name": "r", "virtual_hosts": [ vhost("all", &["*"], vec![route("/", "up")]) ] },
            "http_filters": [ router() ]
        }
    });
    let yaml = bootstrap(
        admin,
        vec![listener("l", "127.0.0.1", port, hcm)],
        vec![cluster("up", &[up])],
    )
    .to_string();
    let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
    Side {
        proxy,
        port,
        rec,
        log,
        lines_seen: 0,
    }
}

/// Sends `bytes` on a new connection; reads until the peer closes, or until a response is
/// complete and 300 ms passed without a close.
async fn exchange(port: u16, bytes: &[u8]) -> RawReply {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut data = Vec::new();
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut quiet_until: Option<tokio::time::Instant> = None;
    loop {
        let until = quiet_until.unwrap_or(deadline).min(deadline);
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(until, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                data.extend_from_slice(&chunk[..n]);
                if count_complete_responses(&data) > 0 {
                    // Envoy closes after a `connection: close` reply once its delayed close
                    // (1 s) passes; a kept-alive connection is judged after a short quiet time.
                    let closing = String::from_utf8_lossy(&data)
                        .to_ascii_lowercase()
                        .contains("connection: close");
                    let quiet = if closing { 3000 } else { 300 };
                    quiet_until = Some(tokio::time::Instant::now() + Duration::from_millis(quiet));
                }
            }
            Err(_) => break,
        }
    }
    RawReply { data, closed }
}

/// The access log lines written since the last call (waits for at least `want`).
async fn new_log_lines(side: &mut Side, want: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let text = std::fs::read_to_string(&side.log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= side.lines_seen + want || tokio::time::Instant::now() > deadline {
            let new = lines[side.lines_seen.min(lines.len())..].to_vec();
            side.lines_seen = lines.len();
            return new;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn hostile_requests_as_envoy() {
    run_for(Duration::from_secs(240), async {
        let mut e = start(Kind::Envoy).await;
        let mut s = start(Kind::under_test()).await;
        let mut failures = Vec::new();
        for (name, bytes, expect) in CASES {
            // Both at once: a case waits out each proxy's close or quiet time.
            let (re, rs) = tokio::join!(
                exchange(e.port, bytes.as_bytes()),
                exchange(s.port, bytes.as_bytes())
            );
            let (pe, ps) = (re.responses(), rs.responses());
            // Give the upstream and the logs a moment to settle.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (ue, us) = (e.rec.take(), s.rec.take());
            let le = new_log_lines(&mut e, pe.len()).await;
            let ls = new_log_lines(&mut s, ps.len().max(le.len())).await;
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if *expect == SkiffRefuses {
                    assert_eq!(pe.first().map(|r| r.status), Some(200), "envoy forwards it");
                    assert_eq!(ps.first().map(|r| r.status), Some(400), "skiff refuses it");
                    assert!(rs.closed && us.is_empty(), "skiff closes, forwards nothing");
                    return;
                }
                assert_eq!(
                    pe.len(),
                    ps.len(),
                    "responses\nenvoy: {}\nskiff: {}",
                    re.text(),
                    rs.text()
                );
                for (a, b) in pe.iter().zip(ps.iter()) {
                    assert_same_response(name, a, b);
                }
                assert_eq!(re.closed, rs.closed, "closed (envoy, skiff)");
                assert_eq!(le, ls, "access log lines (envoy, skiff)");
                let strip = |v: &[Seen]| -> Vec<Seen> {
                    v.iter()
                        .map(|r| Seen {
                            chunked: false,
                            ..r.clone()
                        })
                        .collect()
                };
                if *expect == OtherFraming {
                    assert_eq!(strip(&ue), strip(&us), "upstream requests (envoy, skiff)");
                } else {
                    assert_eq!(ue, us, "upstream requests (envoy, skiff)");
                }
            }));
            if let Err(p) = outcome {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: {msg}"));
            }
        }
        for side in [&e, &s] {
            let bad = side.rec.ambiguous.lock().expect("lock").clone();
            assert!(
                bad.is_empty(),
                "{} forwarded requests with ambiguous framing: {bad:#?}",
                side.proxy.kind.name()
            );
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases differ:\n{}",
            failures.len(),
            CASES.len(),
            failures.join("\n\n")
        );
    })
    .await
}
