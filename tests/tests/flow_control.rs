//! Flow control with real traffic: 1 GiB moves through the proxy towards a side that reads slowly
//! (tcp_proxy both ways, HTTP/1.1 both ways, HTTP/2 both ways). Every byte must arrive intact,
//! and the proxy's peak RSS must stay flat: `per_connection_buffer_limit_bytes` pauses reads on
//! one side instead of buffering what the other side cannot take yet.
//!
//! The slow side is a token bucket at [`RATE`]; the fast side writes as fast as the proxy reads.
//! The RSS bound is skiff's own (Envoy's figures are printed for comparison). The pauses must
//! show in Envoy's flow-control stats, on skiff and on Envoy (`SKIFF_TESTS_PROXY=envoy`), except
//! for responses held back by an HTTP/2 client (`tests/DIFFERENCES.md`).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use skiff_tests::config::{
    bootstrap, cluster, h2_cluster, hcm, listener, tcp_proxy, to_yaml, vhost,
};
use skiff_tests::flow::{
    data_at, Memory, Pace, PatternBody, Rechunk, Verifier, CHUNK, GIB, KIB, MIB,
};
use skiff_tests::proxy::{start_under_test, ProxyProcess};
use skiff_tests::{free_port, run_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the slow side reads per second.
const RATE: u64 = 200 * MIB;
/// How much one transfer moves.
const TOTAL: u64 = GIB;
/// Time limit of one transfer (a debug build of skiff moves well over 200 MB/s on loopback).
const LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// What the proxy reports.

/// Prints every flow-control stat the proxy reports.
async fn print_flow_stats(what: &str, p: &ProxyProcess) {
    let stats = p.admin().stats().await;
    let fc: Vec<String> = stats
        .iter()
        .filter(|(k, _)| k.contains("flow_control"))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    eprintln!("{what} [{}] flow control stats: {fc:?}", p.kind.name());
}

/// Asserts that the proxy paused reading at least once and resumed every pause (but perhaps the
/// last, which the close may end instead), as Envoy counts it in `<prefix>paused_reading_total`
/// and `<prefix>resumed_reading_total`.
async fn assert_paused_and_resumed(what: &str, p: &ProxyProcess, prefix: &str) {
    let paused = format!("{prefix}paused_reading_total");
    let resumed = format!("{prefix}resumed_reading_total");
    assert_pairs(what, p, &paused, &resumed).await;
}

/// Asserts that `up` counted at least once and `down` counted every one of them (but perhaps
/// the last, which the close may end instead).
async fn assert_pairs(what: &str, p: &ProxyProcess, up: &str, down: &str) {
    let admin = p.admin();
    let ups = admin.wait_stat(up, Duration::from_secs(5), |v| v > 0).await;
    let downs = admin.stat(down).await.unwrap_or(0);
    assert!(
        downs + 1 >= ups && downs <= ups,
        "{what}: {up} {ups}, {down} {downs}"
    );
}

// ---------------------------------------------------------------------------------------------
// Configurations.

/// Sets `per_connection_buffer_limit_bytes` on every listener and cluster (None: the default).
fn with_limit(mut v: Value, limit: Option<u64>) -> Value {
    if let Some(limit) = limit {
        for kind in ["listeners", "clusters"] {
            if let Some(list) = v["static_resources"][kind].as_array_mut() {
                for item in list {
                    item["per_connection_buffer_limit_bytes"] = json!(limit);
                }
            }
        }
    }
    v
}

async fn tcp_proxy_to(up: u16, limit: Option<u64>) -> (ProxyProcess, u16) {
    let (admin, port) = (free_port(), free_port());
    let v = bootstrap(
        admin,
        vec![listener("tcp", "127.0.0.1", port, tcp_proxy("fc", "svc"))],
        vec![cluster("svc", &[up])],
    );
    (
        start_under_test(&to_yaml(&with_limit(v, limit)), &[]).await,
        port,
    )
}

/// An HCM (codec AUTO: HTTP/1.1 or h2c prior knowledge) routing everything to `svc`, over
/// HTTP/1.1 or HTTP/2 upstream.
async fn http_proxy_to(up: u16, h2_upstream: bool, limit: Option<u64>) -> (ProxyProcess, u16) {
    let (admin, port) = (free_port(), free_port());
    let route =
        json!({ "match": { "prefix": "/" }, "route": { "cluster": "svc", "timeout": "60s" } });
    let mut filter = hcm("fc", vec![vhost("all", &["*"], vec![route])]);
    filter["typed_config"]["access_log"] = json!([]);
    let c = if h2_upstream {
        h2_cluster("svc", &[up], None)
    } else {
        cluster("svc", &[up])
    };
    let v = bootstrap(
        admin,
        vec![listener("http", "127.0.0.1", port, filter)],
        vec![c],
    );
    (
        start_under_test(&to_yaml(&with_limit(v, limit)), &[]).await,
        port,
    )
}

// ---------------------------------------------------------------------------------------------
// Raw TCP ends.

/// Connects to the proxy. Like real clients, the ends set `TCP_NODELAY`: with Nagle on, the
/// tail of each HTTP/2 window waits for a delayed ACK (40 ms) when windows are small.
async fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let _ = s.set_nodelay(true);
    s
}

/// Accepts one connection. Without `download`: reads it slowly to EOF, then answers with the
/// count, first wrong offset and checksum. With `download: n`: writes `n` bytes and closes.
async fn tcp_upstream(download: Option<u64>) -> (u16, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let port = l.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let _ = s.set_nodelay(true);
        match download {
            Some(n) => {
                write_pattern(&mut s, n).await;
                let _ = s.shutdown().await;
            }
            None => {
                let v = slow_read_to_eof(&mut s).await;
                let line = format!("{} {:?} {}\n", v.received, v.first_bad, v.checksum);
                let _ = s.write_all(line.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        }
    });
    (port, task)
}

async fn write_pattern(s: &mut TcpStream, total: u64) {
    let mut sent = 0;
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        s.write_all(&data_at(sent, n)).await.expect("write data");
        sent += n as u64;
    }
}

async fn slow_read_to_eof(s: &mut TcpStream) -> Verifier {
    let pace = Pace::new(RATE);
    let mut r = Rechunk::default();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        pace.wait(got).await;
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        r.feed(&buf[..n]);
        got += n as u64;
    }
    r.finish()
}

// ---------------------------------------------------------------------------------------------
// HTTP ends (hyper for HTTP/1.1, h2 for HTTP/2).

/// Reads an HTTP/1.1 body slowly and verifies it.
async fn slow_read_body(mut body: Incoming) -> Verifier {
    let pace = Pace::new(RATE);
    let mut r = Rechunk::default();
    let mut got = 0u64;
    loop {
        pace.wait(got).await;
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    r.feed(&d);
                    got += d.len() as u64;
                }
            }
            Some(Err(e)) => panic!("body failed after {got} bytes: {e}"),
            None => break,
        }
    }
    r.finish()
}

fn summary(v: &Verifier) -> String {
    format!("{} {:?} {}", v.received, v.first_bad, v.checksum)
}

/// Parses a [`summary`] back.
fn parse_summary(s: &str) -> Verifier {
    let mut it = s.split_whitespace();
    let received = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let bad = it.next().unwrap_or("None");
    let checksum = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    Verifier {
        received,
        first_bad: (bad != "None").then_some(0),
        checksum,
    }
}

/// Listens on a new port and runs `serve` on each connection (with `TCP_NODELAY`) in its own task.
async fn serve_each<F, Fut>(serve: F) -> u16
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(serve(s));
        }
    });
    port
}

/// An HTTP/1.1 upstream: `GET /down/<n>` answers `n` generated bytes; anything else is an
/// upload, read slowly, and answered with its [`summary`] in `x-summary`.
async fn h1_upstream() -> u16 {
    serve_each(|s| async move {
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            if let Some(n) = req.uri().path().strip_prefix("/down/") {
                let total = n.parse().unwrap_or(0);
                let resp = Response::builder()
                    .header("content-length", total)
                    .body(http_body_util::Either::Left(PatternBody { sent: 0, total }))
                    .expect("response");
                return Ok::<_, Infallible>(resp);
            }
            let v = slow_read_body(req.into_body()).await;
            let resp = Response::builder()
                .header("x-summary", summary(&v))
                .body(http_body_util::Either::Right(
                    http_body_util::Empty::<Bytes>::new(),
                ))
                .expect("response");
            Ok(resp)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .await;
    })
    .await
}

async fn h1_client(port: u16) -> hyper::client::conn::http1::SendRequest<PatternBody> {
    let s = connect(port).await;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    send
}

/// An h2c upstream with the same two behaviours as [`h1_upstream`].
async fn h2_upstream() -> u16 {
    serve_each(|s| async move {
        let Ok(mut conn) = h2::server::Builder::new()
            .initial_window_size(MIB as u32)
            .initial_connection_window_size(4 * MIB as u32)
            .handshake::<_, Bytes>(s)
            .await
        else {
            return;
        };
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            tokio::spawn(async move {
                if let Some(n) = req.uri().path().strip_prefix("/down/") {
                    let total: u64 = n.parse().unwrap_or(0);
                    let resp = Response::builder().status(200).body(()).expect("resp");
                    if let Ok(send) = respond.send_response(resp, false) {
                        h2_send_pattern(send, total).await;
                    }
                    return;
                }
                let v = h2_slow_read(req.into_body()).await;
                let resp = Response::builder()
                    .status(200)
                    .header("x-summary", summary(&v))
                    .body(())
                    .expect("resp");
                let _ = respond.send_response(resp, true);
            });
        }
    })
    .await
}

/// Sends `total` generated bytes on an h2 stream within the peer's windows, then ends it.
async fn h2_send_pattern(mut send: h2::SendStream<Bytes>, total: u64) {
    let mut sent = 0;
    while sent < total {
        let want = (total - sent).min(CHUNK as u64) as usize;
        send.reserve_capacity(want);
        let granted = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n.min(want),
            other => panic!("h2 send capacity after {sent} bytes: {other:?}"),
        };
        if granted == 0 {
            continue;
        }
        send.send_data(data_at(sent, granted), false)
            .expect("send data");
        sent += granted as u64;
    }
    send.send_data(Bytes::new(), true).expect("end stream");
}

/// Reads an h2 body slowly: capacity is released only as the bytes are consumed, so the
/// sender's window is what holds the data back.
async fn h2_slow_read(mut body: h2::RecvStream) -> Verifier {
    let pace = Pace::new(RATE);
    let mut r = Rechunk::default();
    let mut got = 0u64;
    loop {
        pace.wait(got).await;
        match body.data().await {
            Some(Ok(d)) => {
                r.feed(&d);
                got += d.len() as u64;
                let _ = body.flow_control().release_capacity(d.len());
            }
            Some(Err(e)) => panic!("h2 body failed after {got} bytes: {e}"),
            None => break,
        }
    }
    r.finish()
}

async fn h2_client(port: u16) -> h2::client::SendRequest<Bytes> {
    let s = connect(port).await;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(MIB as u32)
        .initial_connection_window_size(4 * MIB as u32)
        .handshake::<_, Bytes>(s)
        .await
        .expect("h2c handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

// ---------------------------------------------------------------------------------------------
// The scenarios. Each returns how long the transfer took.

async fn tcp_upload(limit: Option<u64>, total: u64) -> (ProxyProcess, Memory, Duration) {
    let (up, task) = tcp_upstream(None).await;
    let (p, port) = tcp_proxy_to(up, limit).await;
    let mem = Memory::start(&p);
    let t = Instant::now();
    let mut s = connect(port).await;
    write_pattern(&mut s, total).await;
    s.shutdown().await.expect("half-close");
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .await
        .expect("read the upstream's summary");
    let elapsed = t.elapsed();
    parse_summary(&answer).assert_intact("tcp_proxy upload", total);
    task.await.expect("upstream task");
    let what = "tcp_proxy upload";
    assert_paused_and_resumed(what, &p, "tcp.fc.downstream_flow_control_").await;
    (p, mem, elapsed)
}

async fn tcp_download(limit: Option<u64>, total: u64) -> (ProxyProcess, Memory, Duration) {
    let (up, task) = tcp_upstream(Some(total)).await;
    let (p, port) = tcp_proxy_to(up, limit).await;
    let mem = Memory::start(&p);
    let t = Instant::now();
    let mut s = connect(port).await;
    s.shutdown().await.expect("half-close: nothing to send");
    let v = slow_read_to_eof(&mut s).await;
    let elapsed = t.elapsed();
    v.assert_intact("tcp_proxy download", total);
    task.await.expect("upstream task");
    let what = "tcp_proxy download";
    assert_paused_and_resumed(what, &p, "cluster.svc.upstream_flow_control_").await;
    (p, mem, elapsed)
}

/// Checks an HTTP upload's answer (the upstream's [`summary`] of what arrived), and that the slow
/// upstream backed up the upstream connection (HTTP/1.1) or stream (HTTP/2), which paused reading
/// from the client.
async fn upload_done(
    what: &str,
    p: &ProxyProcess,
    status: http::StatusCode,
    headers: &http::HeaderMap,
    total: u64,
) {
    assert_eq!(status, 200, "{what}");
    let s = headers
        .get("x-summary")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    parse_summary(s).assert_intact(what, total);
    assert_pairs(
        what,
        p,
        "cluster.svc.upstream_flow_control_backed_up_total",
        "cluster.svc.upstream_flow_control_drained_total",
    )
    .await;
    assert_paused_and_resumed(what, p, "http.fc.downstream_flow_control_").await;
}

async fn h1_upload(limit: Option<u64>, total: u64) -> (ProxyProcess, Memory, Duration) {
    let up = h1_upstream().await;
    let (p, port) = http_proxy_to(up, false, limit).await;
    let mem = Memory::start(&p);
    let t = Instant::now();
    let mut c = h1_client(port).await;
    let req = Request::post("/upload")
        .header("host", "flow.example.com")
        .header("content-length", total)
        .body(PatternBody { sent: 0, total })
        .expect("request");
    let resp = c.send_request(req).await.expect("upload response");
    let elapsed = t.elapsed();
    upload_done("HTTP/1.1 upload", &p, resp.status(), resp.headers(), total).await;
    (p, mem, elapsed)
}

async fn h1_download(limit: Option<u64>, total: u64) -> (ProxyProcess, Memory, Duration) {
    let up = h1_upstream().await;
    let (p, port) = http_proxy_to(up, false, limit).await;
    let mem = Memory::start(&p);
    let t = Instant::now();
    let mut c = h1_client(port).await;
    let req = Request::get(format!("/down/{total}"))
        .header("host", "flow.example.com")
        .body(PatternBody { sent: 0, total: 0 })
        .expect("request");
    let resp = c.send_request(req).await.expect("download response");
    assert_eq!(resp.status(), 200);
    let v = slow_read_body(resp.into_body()).await;
    let elapsed = t.elapsed();
    let what = "HTTP/1.1 download";
    v.assert_intact(what, total);
    // The slow client stops reading from the upstream.
    assert_paused_and_resumed(what, &p, "cluster.svc.upstream_flow_control_").await;
    (p, mem, elapsed)
}

/// An h2c upstream, a proxy in front of it (HTTP/2 both sides), its memory baseline, and an h2c
/// client connected to it.
async fn h2_setup(
    limit: Option<u64>,
) -> (ProxyProcess, u16, Memory, h2::client::SendRequest<Bytes>) {
    let up = h2_upstream().await;
    let (p, port) = http_proxy_to(up, true, limit).await;
    let mem = Memory::start(&p);
    let c = h2_client(port).await.ready().await.expect("h2 ready");
    (p, port, mem, c)
}

fn h2_request(method: &str, port: u16, path: &str) -> Request<()> {
    Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("host", "flow.example.com")
        .body(())
        .expect("request")
}

async fn h2_upload(limit: Option<u64>, total: u64) -> (ProxyProcess, Memory, Duration) {
    let (p, port, mem, mut c) = h2_setup(limit).await;
    let t = Instant::now();
    let req = h2_request("POST", port, "/upload");
    let (resp, send) = c.send_request(req, false).expect("send request");
    h2_send_pattern(send, total).await;
    let resp = resp.await.expect("upload response");
    let elapsed = t.elapsed();
    upload_done("HTTP/2 upload", &p, resp.status(), resp.headers(), total).await;
    (p, mem, elapsed)
}

async fn h2_download(limit: Option<u64>, total: u64) -> (ProxyProcess, Memory, Duration) {
    let (p, port, mem, mut c) = h2_setup(limit).await;
    let t = Instant::now();
    let req = h2_request("GET", port, &format!("/down/{total}"));
    let (resp, _) = c.send_request(req, true).expect("send request");
    let resp = resp.await.expect("download response");
    assert_eq!(resp.status(), 200);
    let v = h2_slow_read(resp.into_body()).await;
    let elapsed = t.elapsed();
    v.assert_intact("HTTP/2 download", total);
    (p, mem, elapsed)
}

/// What skiff may add to its peak RSS while moving [`TOTAL`] bytes with the default 1 MiB limit:
/// a few buffer limits per connection (read buffers on both sides, an HTTP/2 stream window, the
/// codec's write queue) plus allocator slack. A proxy that buffers instead of pausing grows by
/// hundreds of MiB at these rates.
const DEFAULT_BOUND: u64 = 8 * MIB;

/// The small limit of [`small_buffer_limit_tightens_the_bound`].
const SMALL_LIMIT: u64 = 32 * KIB;
/// What skiff may add with [`SMALL_LIMIT`]: the codecs' fixed buffers (hyper's 64 KiB HTTP/1.1
/// read buffer, HTTP/2's minimum 64 KiB window) and allocator slack, three eighths of the
/// default (the HTTP/1.1 download has been seen at 2.1 MiB on a loaded machine, its
/// allocator's slack included).
const SMALL_BOUND: u64 = 3 * MIB;

macro_rules! flat_rss_test {
    ($name:ident, $scenario:ident, $what:literal) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            run_for(LIMIT * 2, async {
                let (p, mem, elapsed) = $scenario(None, TOTAL).await;
                mem.check($what, TOTAL, DEFAULT_BOUND, elapsed);
                print_flow_stats($what, &p).await;
            })
            .await
        }
    };
}

flat_rss_test!(
    tcp_proxy_upload_to_slow_upstream_keeps_rss_flat,
    tcp_upload,
    "tcp_proxy upload"
);
flat_rss_test!(
    tcp_proxy_download_to_slow_client_keeps_rss_flat,
    tcp_download,
    "tcp_proxy download"
);
flat_rss_test!(
    http1_upload_to_slow_upstream_keeps_rss_flat,
    h1_upload,
    "HTTP/1.1 upload"
);
flat_rss_test!(
    http1_download_to_slow_client_keeps_rss_flat,
    h1_download,
    "HTTP/1.1 download"
);
flat_rss_test!(
    http2_upload_to_slow_upstream_keeps_rss_flat,
    h2_upload,
    "HTTP/2 upload"
);
flat_rss_test!(
    http2_download_to_slow_client_keeps_rss_flat,
    h2_download,
    "HTTP/2 download"
);

/// With `per_connection_buffer_limit_bytes: 32768` on the listener and the cluster, the same
/// uploads and downloads (256 MiB each, all at once through three proxies) stay within
/// three eighths of the default bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_buffer_limit_tightens_the_bound() {
    run_for(LIMIT * 2, async {
        let total = 256 * MIB;
        let limit = Some(SMALL_LIMIT);
        let (tcp, h1, h2) = tokio::join!(
            tcp_upload(limit, total),
            h1_download(limit, total),
            h2_upload(limit, total)
        );
        for (what, (p, mem, elapsed)) in [
            ("tcp_proxy upload, 32 KiB limit", tcp),
            ("HTTP/1.1 download, 32 KiB limit", h1),
            ("HTTP/2 upload, 32 KiB limit", h2),
        ] {
            mem.check(what, total, SMALL_BOUND, elapsed);
            print_flow_stats(what, &p).await;
        }
    })
    .await
}
