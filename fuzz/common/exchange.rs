//! Whole exchanges through skiff's HTTP connection manager and router, in memory: a client
//! writes fuzzer-chosen bytes, the proxy routes what it understands to fake upstreams that
//! answer with fuzzer-chosen bytes (HTTP/1.1) or a fuzzer-chosen response (HTTP/2).
//!
//! Checked: nothing panics, the exchange ends within a bound of (tokio's paused, so virtual)
//! time, and every request the proxy sent an HTTP/1.1 upstream parses and has exactly one
//! framing: never both Content-Length and Transfer-Encoding, at most one Content-Length, at
//! most one Host.
// Each target uses part of it.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use skiff::fuzzing::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Routes `/h2…` to an HTTP/2 cluster, `/retry…` with a retry policy, the rest to an HTTP/1.1
/// cluster; timeouts short, as time is virtual anyway.
pub const BOOTSTRAP: &str = r#"
static_resources:
  listeners:
  - name: fuzz
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: fuzz
          stream_idle_timeout: 5s
          request_timeout: 10s
          drain_timeout: 1s
          delayed_close_timeout: 1s
          common_http_protocol_options: { idle_timeout: 10s }
          upgrade_configs: [ { upgrade_type: websocket } ]
          route_config:
            name: fuzz
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/h2" }
                route: { cluster: up_h2, timeout: 5s }
              - match: { prefix: "/retry" }
                route:
                  cluster: up_h1
                  timeout: 5s
                  retry_policy: { retry_on: "5xx,reset,connect-failure", num_retries: 1 }
              - match: { prefix: "/" }
                route: { cluster: up_h1, timeout: 5s }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: up_h1
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: up_h1
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 1 } } }
  - name: up_h2
    connect_timeout: 1s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: up_h2
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 2 } } }
"#;

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long the client waits for the proxy to close after writing, before closing its side.
const CLIENT_PATIENCE: Duration = Duration::from_secs(30);
/// How long a whole exchange may take, in (virtual) time.
const BOUND: Duration = Duration::from_secs(300);

/// One exchange, decoded from fuzzer input.
pub struct Exchange {
    /// What the client writes, in these chunks.
    pub downstream: Vec<Vec<u8>>,
    /// What an HTTP/1.1 upstream answers each request with, and what an HTTP/2 upstream's
    /// response is made of.
    pub upstream: Vec<u8>,
    /// The HTTP/1.1 upstream closes its connection after its first answer.
    pub close_after_answer: bool,
}

impl Exchange {
    /// Input: a flags byte (bit 0: the upstream closes after answering; bits 1-3: chunks - 1),
    /// two bytes (little endian) of client length, the client's bytes (after `prefix`), the
    /// upstream's.
    pub fn decode(prefix: &[u8], data: &[u8]) -> Option<Exchange> {
        let (&flags, rest) = data.split_first()?;
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (down, up) = rest.split_at(len);
        let mut client = prefix.to_vec();
        client.extend_from_slice(down);
        let chunks = usize::from((flags >> 1) & 7) + 1;
        let size = client.len().div_ceil(chunks).max(1);
        Some(Exchange {
            downstream: client.chunks(size).map(<[u8]>::to_vec).collect(),
            upstream: up.to_vec(),
            close_after_answer: flags & 1 != 0,
        })
    }
}

/// What an exchange left behind.
#[derive(Default)]
pub struct Outcome {
    /// Each HTTP/1.1 upstream connection's received bytes.
    pub h1_upstream: Vec<Vec<u8>>,
    /// The number of requests the HTTP/2 upstream received.
    pub h2_requests: usize,
    /// What the client read.
    pub client_read: Vec<u8>,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        f.debug_struct("Outcome")
            .field(
                "h1_upstream",
                &self.h1_upstream.iter().map(|b| text(b)).collect::<Vec<_>>(),
            )
            .field("h2_requests", &self.h2_requests)
            .field("client_read", &text(&self.client_read))
            .finish()
    }
}

struct Harness {
    rt: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
    proxy: Proxy,
}

impl Harness {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let proxy = Proxy::from_yaml(BOOTSTRAP).expect("the fuzz bootstrap loads");
        Harness {
            rt,
            local: tokio::task::LocalSet::new(),
            proxy,
        }
    }
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

/// h2 0.4's `debug_assert!(!self.has_streams())` in `Counts::drop` fires when a connection is
/// dropped with streams open, a legitimate teardown (hyperium/h2#907; debug builds only): it
/// is not a finding.
fn is_h2_counts_assert(message: &str) -> bool {
    message.contains("!self.has_streams()")
}

/// No leak checks in these targets: unwinding out of h2's assertion (above) leaves what the
/// interrupted poll held unfreed.
#[no_mangle]
pub extern "C" fn __lsan_default_options() -> *const std::ffi::c_char {
    c"detect_leaks=0".as_ptr()
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("")
}

/// Lets the known h2 debug assertion unwind (to be caught in [`run`]) instead of aborting.
fn tolerate_h2_counts_assert() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_h2 = info
                .location()
                .is_some_and(|l| l.file().ends_with("src/proto/streams/counts.rs"));
            if !(in_h2 && is_h2_counts_assert(panic_message(info.payload()))) {
                previous(info);
            }
        }));
    });
}

/// Runs one exchange and checks it (panics on a violation). None when h2's spurious debug
/// assertion cut it short (the harness is then made afresh).
pub fn run(ex: &Exchange) -> Option<Outcome> {
    tolerate_h2_counts_assert();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_checked(ex))) {
        Ok(outcome) => Some(outcome),
        Err(p) if is_h2_counts_assert(panic_message(&*p)) => {
            skiff::fuzzing::set_connector(None);
            HARNESS.with(|h| h.borrow_mut().take());
            None
        }
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Shared by the fake upstreams of one exchange.
#[derive(Default)]
struct Upstreams {
    h1: RefCell<Vec<Rc<RefCell<Vec<u8>>>>>,
    h2_requests: Cell<usize>,
    open: Cell<usize>,
}

fn run_checked(ex: &Exchange) -> Outcome {
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        let h = h.get_or_insert_with(Harness::new);
        let ups = Rc::new(Upstreams::default());
        let answer: Rc<[u8]> = ex.upstream.clone().into();
        let close = ex.close_after_answer;
        let connector_ups = ups.clone();
        skiff::fuzzing::set_connector(Some(Box::new(move |addr: SocketAddr| {
            let (proxy_end, upstream_end) = tokio::io::duplex(64 * 1024);
            let ups = connector_ups.clone();
            ups.open.set(ups.open.get() + 1);
            let answer = answer.clone();
            tokio::task::spawn_local(async move {
                if addr.port() == 2 {
                    h2_upstream(upstream_end, &answer, &ups).await;
                } else {
                    let log = Rc::new(RefCell::new(Vec::new()));
                    ups.h1.borrow_mut().push(log.clone());
                    h1_upstream(upstream_end, &answer, close, &log).await;
                }
                ups.open.set(ups.open.get() - 1);
            });
            proxy_end
        })));
        let client_read = h.local.block_on(&h.rt, async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let remote: SocketAddr = "127.0.0.1:40000".parse().expect("address");
            let serve = h.proxy.serve(server, remote);
            let client = drive_client(client, &ex.downstream);
            let ((), read) = tokio::time::timeout(BOUND, async { tokio::join!(serve, client) })
                .await
                .expect("the exchange did not finish");
            // Idle pooled connections close; every upstream connection must then end.
            h.proxy.close_idle();
            tokio::time::timeout(BOUND, async {
                while ups.open.get() > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
            .unwrap_or_else(|_| {
                let logs: Vec<String> = ups
                    .h1
                    .borrow()
                    .iter()
                    .map(|l| String::from_utf8_lossy(&l.borrow()).into_owned())
                    .collect();
                panic!(
                    "{} upstream connection(s) outlived the exchange; HTTP/1.1 upstreams read {logs:?}, client read {:?}",
                    ups.open.get(),
                    String::from_utf8_lossy(&read)
                )
            });
            read
        });
        skiff::fuzzing::set_connector(None);
        let h1_upstream: Vec<Vec<u8>> = ups.h1.borrow().iter().map(|l| l.borrow().clone()).collect();
        for bytes in &h1_upstream {
            let scan = scan_requests(bytes);
            if let Some(e) = scan.error {
                panic!("bad request upstream: {e}: {:?}", String::from_utf8_lossy(bytes));
            }
        }
        let outcome = Outcome {
            h1_upstream,
            h2_requests: ups.h2_requests.get(),
            client_read,
        };
        if std::env::var_os("SKIFF_FUZZ_SHOW").is_some() {
            eprintln!("{outcome:#?}");
        }
        outcome
    })
}

/// Writes the chunks (letting the proxy run between them) while reading everything back; once
/// written, waits a while for the proxy to close, then closes its own side too.
async fn drive_client(client: DuplexStream, chunks: &[Vec<u8>]) -> Vec<u8> {
    let (mut rd, mut wr) = tokio::io::split(client);
    let read = RefCell::new(Vec::new());
    let reader = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read.borrow_mut().extend_from_slice(&buf[..n]),
            }
        }
    };
    let writer = async {
        for c in chunks {
            if wr.write_all(c).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        std::future::pending::<()>().await;
    };
    tokio::pin!(reader);
    tokio::select! {
        () = &mut reader => return read.into_inner(),
        () = writer => {}
        () = tokio::time::sleep(CLIENT_PATIENCE) => {}
    }
    let _ = wr.shutdown().await;
    reader.await;
    read.into_inner()
}

/// An HTTP/1.1 upstream: answers each complete request head with `answer`, records what it
/// reads until the proxy closes.
async fn h1_upstream(mut s: DuplexStream, answer: &[u8], close: bool, log: &RefCell<Vec<u8>>) {
    let mut answered = 0;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        log.borrow_mut().extend_from_slice(&buf[..n]);
        if log.borrow().len() > 1 << 20 {
            return;
        }
        let heads = scan_requests(&log.borrow()).heads;
        if heads > answered && (answered == 0 || !close) {
            answered = heads;
            if s.write_all(answer).await.is_err() {
                return;
            }
            if close {
                let _ = s.shutdown().await;
            }
        }
    }
}

/// An HTTP/2 upstream: answers each request with a status, headers and body made of `answer`.
async fn h2_upstream(s: DuplexStream, answer: &[u8], ups: &Upstreams) {
    let Ok(mut conn) = h2::server::handshake(s).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        ups.h2_requests.set(ups.h2_requests.get() + 1);
        let h = req.headers();
        assert!(
            h.get_all("content-length").iter().count() <= 1,
            "two content-lengths upstream"
        );
        assert!(h.get_all("host").iter().count() <= 1, "two hosts upstream");
        assert!(
            !h.contains_key("transfer-encoding"),
            "transfer-encoding on HTTP/2 upstream"
        );
        let (status, rest) = match answer.split_first() {
            Some((&b, rest)) => (200 + u16::from(b) % 400, rest),
            None => (200, &[][..]),
        };
        let mut resp = http::Response::builder().status(status);
        // Headers: pairs of NUL-terminated name and value, up to an empty name.
        let mut rest = rest;
        let mut trailers = false;
        for _ in 0..8 {
            let mut parts = rest.splitn(3, |&b| b == 0);
            let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
                break;
            };
            if name.is_empty() {
                break;
            }
            rest = parts.next().unwrap_or(&[]);
            if name == b"trailers" {
                trailers = true;
                continue;
            }
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(value),
            ) {
                resp = resp.header(n, v);
            }
        }
        let Ok(resp) = resp.body(()) else {
            continue;
        };
        let body = Bytes::copy_from_slice(rest);
        let end = body.is_empty() && !trailers;
        let Ok(mut stream) = respond.send_response(resp, end) else {
            continue;
        };
        if !body.is_empty() {
            let _ = stream.send_data(body, !trailers);
        }
        if trailers {
            let mut t = http::HeaderMap::new();
            t.insert("x-trailer", http::HeaderValue::from_static("1"));
            let _ = stream.send_trailers(t);
        }
    }
}

/// What the requests in an HTTP/1.1 upstream's bytes look like.
#[derive(Debug, Default)]
pub struct Scan {
    /// Complete request heads.
    pub heads: usize,
    /// The first thing wrong, if any.
    pub error: Option<String>,
}

/// Parses the requests in `buf` (the last may be incomplete), checking each one's framing.
pub fn scan_requests(buf: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut pos = 0;
    while pos < buf.len() {
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(&buf[pos..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return scan,
            Err(e) => {
                scan.error = Some(format!("request head does not parse: {e}"));
                return scan;
            }
        };
        scan.heads += 1;
        let count = |name: &str| {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .count()
        };
        let value = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let (cl, te, host) = (
            count("content-length"),
            count("transfer-encoding"),
            count("host"),
        );
        if cl > 1 || host > 1 || (cl > 0 && te > 0) || te > 1 {
            scan.error = Some(format!(
                "ambiguous framing: {cl} content-length, {te} transfer-encoding, {host} host"
            ));
            return scan;
        }
        let upgraded = req.method == Some("CONNECT") || count("upgrade") > 0;
        pos += n;
        if te == 1 {
            let te = value("transfer-encoding").unwrap_or_default();
            let last = te.rsplit(|&b| b == b',').next().unwrap_or_default();
            if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                scan.error = Some(format!(
                    "transfer-encoding not ending in chunked: {:?}",
                    String::from_utf8_lossy(te)
                ));
                return scan;
            }
            match chunked_len(&buf[pos..]) {
                Ok(Some(n)) => pos += n,
                Ok(None) => return scan,
                Err(e) => {
                    scan.error = Some(e);
                    return scan;
                }
            }
        } else if cl == 1 {
            let v = value("content-length").unwrap_or_default();
            let Some(len) = std::str::from_utf8(v)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
            else {
                scan.error = Some(format!(
                    "bad content-length {:?}",
                    String::from_utf8_lossy(v)
                ));
                return scan;
            };
            if buf.len() - pos < len {
                return scan;
            }
            pos += len;
        }
        if upgraded {
            // What follows is the tunnel's.
            return scan;
        }
    }
    scan
}

/// The length of a complete chunked body at the start of `buf` (trailers included), none if
/// it is not complete yet.
fn chunked_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let line = |from: usize| -> Option<usize> {
        buf.get(from..)?
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| from + i)
    };
    let mut pos = 0;
    loop {
        let Some(end) = line(pos) else {
            return Ok(None);
        };
        let size_text = buf[pos..end]
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default();
        let size = std::str::from_utf8(size_text)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("bad chunk size {:?}", String::from_utf8_lossy(size_text)))?;
        pos = end + 2;
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                let Some(end) = line(pos) else {
                    return Ok(None);
                };
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Ok(Some(pos));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        pos += size + 2;
    }
}
