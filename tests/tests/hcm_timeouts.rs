//! The connection manager's timeouts and per-connection limits, side by side with Envoy 1.40:
//! `stream_idle_timeout`, `request_timeout`, `max_stream_duration`, the connection idle timeout,
//! `max_connection_duration`, `max_requests_per_connection`, `request_headers_timeout`,
//! `max_headers_count`, `max_request_headers_kb`, `drain_timeout`, `delayed_close_timeout` and HTTP/2
//! `connection_keepalive`, each with the client-visible result, the access-log line (code,
//! flags, details) and the stats Envoy counts.

use std::time::{Duration, Instant};

use skiff_tests::{free_port, run_for, scratch_dir, Kind, ProxyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/1.1 upstream whose behaviour is chosen by the path: `/hang` never answers,
/// `/slowbody` sends 2 of 10 body bytes and stops, `/drip` sends 100 bytes one every 300 ms,
/// `/slow` answers after 1.5 s, `/big` sends 16 MiB, anything else answers at once. It reads
/// request bodies as they come.
async fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut head = Vec::new();
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    head.extend_from_slice(&buf[..n]);
                    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(&head[..end]).to_string();
                    head.drain(..end + 4);
                    let path = text.split(' ').nth(1).unwrap_or("/");
                    let path = path.split('?').next().unwrap_or("/").to_string();
                    let reply: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    match path.as_str() {
                        "/hang" => {
                            // Drains whatever comes, answers nothing.
                            while let Ok(n) = s.read(&mut buf).await {
                                if n == 0 {
                                    return;
                                }
                            }
                            return;
                        }
                        "/slowbody" => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab")
                                .await;
                            tokio::time::sleep(Duration::from_secs(10)).await;
                            return;
                        }
                        "/drip" => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
                                .await;
                            for _ in 0..100 {
                                if s.write_all(b"x").await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            return;
                        }
                        "/big" => {
                            let size = 16 << 20;
                            let _ = s
                                .write_all(
                                    format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n")
                                        .as_bytes(),
                                )
                                .await;
                            let chunk = vec![b'b'; 65536];
                            for _ in 0..size / chunk.len() {
                                if s.write_all(&chunk).await.is_err() {
                                    return;
                                }
                            }
                            continue;
                        }
                        "/slow" => tokio::time::sleep(Duration::from_millis(1500)).await,
                        _ => {}
                    }
                    if s.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A listener named `name` on `port` with one connection manager, `options` (HCM fields, at
/// its indentation) added, logging to `log`, routing to the cluster `up`.
fn listener(name: &str, port: u16, options: &str, log: &str) -> String {
    listener_with_routes(
        name,
        port,
        options,
        log,
        "[{match: {prefix: /}, route: {cluster: up, timeout: 0s}}]",
    )
}

/// [`listener`] with its own `routes`.
fn listener_with_routes(name: &str, port: u16, options: &str, log: &str, routes: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
{options}
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{text_format_source: {{inline_string: "{name} %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}}}
          route_config:
            virtual_hosts: [{{name: a, domains: ["*"], routes: {routes}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
    )
}

/// A bootstrap with `listeners` and the cluster `up` at `upstream`.
fn bootstrap(admin: u16, listeners: &str, upstream: u16) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{listeners}
  clusters:
  - name: up
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#
    )
}

fn config(admin: u16, ports: [u16; 3], upstream: u16, log: &str) -> String {
    let listeners = [
        listener(
            "streams",
            ports[0],
            "          stream_idle_timeout: 0.6s\n          request_timeout: 1.5s\n          common_http_protocol_options: {max_stream_duration: 2.5s}",
            log,
        ),
        listener(
            "idle",
            ports[1],
            "          common_http_protocol_options: {idle_timeout: 0.5s}",
            log,
        ),
        listener(
            "lifetime",
            ports[2],
            "          common_http_protocol_options: {max_connection_duration: 1s, max_requests_per_connection: 2}",
            log,
        ),
    ];
    bootstrap(admin, &listeners.concat(), upstream)
}

/// Sends `head` (and `body`, a byte every `gap`), then reads the response: its status line,
/// `connection` header and body, or how the connection ended.
async fn exchange(port: u16, head: String, body: &[u8], gap: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    for b in body {
        tokio::time::sleep(gap).await;
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
    }
    read_response(&mut s, Duration::from_secs(6)).await
}

/// The status line, `connection` header and body of the response on `s`, and how it ended.
async fn read_response(s: &mut TcpStream, limit: Duration) -> String {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let end = loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Err(_) => break "open",
            Ok(Ok(0)) => break "closed",
            Ok(Err(_)) => break "reset",
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if complete(&got) {
                    break "complete";
                }
            }
        }
    };
    describe(&got, end)
}

fn complete(got: &[u8]) -> bool {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    got.len() >= end + 4 + length
}

fn describe(got: &[u8], end: &str) -> String {
    if got.is_empty() && end != "open" {
        // Closed or reset: which one depends on whether the request crossed the close.
        return "no response, connection ended".into();
    }
    let text = String::from_utf8_lossy(got);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("").to_string();
    let connection: Vec<&str> = lines
        .filter(|l| l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    format!("{status} {connection:?} body={body:?} ({end})")
}

/// A keep-alive connection to `port`: one request, then `pause` of silence (or, with
/// `partial`, a head sent but for its last line), then the (rest of the) next request; what
/// the second request gets.
async fn after_silence(port: u16, pause: Duration, partial: bool) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = "GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    s.write_all(head.as_bytes()).await.expect("write");
    let first = read_response(&mut s, Duration::from_secs(6)).await;
    assert!(first.starts_with("HTTP/1.1 200"), "first request: {first}");
    let split = if partial { head.len() - 2 } else { 0 };
    if s.write_all(&head.as_bytes()[..split]).await.is_err() {
        return "write failed".into();
    }
    tokio::time::sleep(pause).await;
    if s.write_all(&head.as_bytes()[split..]).await.is_err() {
        return "write failed".into();
    }
    read_response(&mut s, Duration::from_secs(6)).await
}

/// Without `request_headers_timeout` nor a shorter idle timeout, a keep-alive connection waits
/// for its next request, and for the rest of a head, longer than hyper's own default header
/// timeout (30 s), as Envoy's does (both codecs).
#[tokio::test]
async fn quiet_keep_alive_stays_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let up = upstream().await;
        let run = |kind: Kind| async move {
            let dir = scratch_dir(&format!("hcm-quiet-{}", kind.name()));
            let log = dir.join("access.log").display().to_string();
            let (admin, auto, http1) = (free_port(), free_port(), free_port());
            let listeners = [
                listener("auto", auto, "", &log),
                listener("http1", http1, "          codec_type: HTTP1", &log),
            ];
            let yaml = bootstrap(admin, &listeners.concat(), up);
            let _p = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let pause = Duration::from_secs(32);
            let got = tokio::join!(
                after_silence(auto, pause, false),
                after_silence(auto, pause, true),
                after_silence(http1, pause, false),
                after_silence(http1, pause, true),
            );
            format!("{got:?}")
        };
        let (envoy, skiff) = tokio::join!(run(Kind::Envoy), run(Kind::under_test()));
        eprintln!("Envoy: {envoy}\nskiff: {skiff}");
        assert!(
            envoy.contains("200 OK"),
            "Envoy answers after the silence: {envoy}"
        );
        assert_eq!(envoy, skiff, "Envoy, then skiff");
    })
    .await
}

/// When the proxy closes an idle connection to `port`, in tenths of `unit`.
async fn closes_after(port: u16, unit: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let how = match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Err(_) => "still open",
        Ok(Ok(0)) => "closed",
        Ok(Ok(_)) => "data",
        Ok(Err(_)) => "reset",
    };
    let units = (start.elapsed().as_secs_f64() / unit.as_secs_f64()).round();
    format!("{how} after ~{units} x {unit:?}")
}

/// An HTTP/2 (prior knowledge) connection left idle: the frame types it gets before it closes.
async fn h2_idle(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await {
            Err(_) => break "still open",
            Ok(Ok(0)) => break "closed",
            Ok(Err(_)) => break "reset",
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    let mut goaway = false;
    let mut at = 0;
    while at + 9 <= got.len() {
        let len = (usize::from(got[at]) << 16)
            | (usize::from(got[at + 1]) << 8)
            | usize::from(got[at + 2]);
        goaway |= got[at + 3] == 7;
        at += 9 + len;
    }
    format!("goaway: {goaway}, then {end}")
}

/// A client that asks for 16 MiB and never reads: whether the proxy still holds the
/// connection after `wait` (its `downstream_cx_active` for the listener `scope`).
async fn never_reads(p: &ProxyProcess, port: u16, scope: &str, wait: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4096);
    s.write_all(b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(wait).await;
    let stats = p.admin().stats().await;
    let key = format!("http.{scope}.downstream_cx_active");
    let held = stats.get(&key).cloned();
    drop(s);
    format!("{key} after {wait:?} without reading: {held:?}")
}

/// Runs `f`, noting on stderr how long it took.
async fn timed<T>(name: &str, f: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let r = f.await;
    eprintln!("{name}: {:?}", start.elapsed());
    r
}

#[tokio::test]
async fn hcm_timeouts_as_envoy() {
    run_for(Duration::from_secs(150), async {
        let up = upstream().await;
        let mut outcomes = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let dir = scratch_dir(&format!("hcm-timeouts-{}", kind.name()));
            let log = dir.join("access.log");
            let _ = std::fs::remove_file(&log);
            let admin = free_port();
            let ports = [free_port(), free_port(), free_port()];
            let yaml = config(admin, ports, up, &log.display().to_string());
            let p = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let [streams, idle, lifetime] = ports;
            let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n");
            let post = |path: &str| {
                format!("POST {path} HTTP/1.1\r\nhost: a\r\ncontent-length: 12\r\n\r\n")
            };
            let none = Duration::ZERO;
            // The five stream cases run at once: each takes up to a few seconds.
            let cases = tokio::join!(
                timed("hang", exchange(streams, get("/hang"), b"", none)),
                timed("slowbody", exchange(streams, get("/slowbody"), b"", none)),
                timed("drip", exchange(streams, get("/drip"), b"", none)),
                // Two body bytes, then nothing: idle before the request is complete.
                timed(
                    "stall",
                    exchange(streams, post("/hang"), b"ab", Duration::from_millis(10))
                ),
                // A byte every 400 ms keeps the stream busy, but the request takes too long.
                timed(
                    "trickle",
                    exchange(
                        streams,
                        post("/hang?trickle"),
                        b"abcdefghijkl",
                        Duration::from_millis(400)
                    )
                ),
                timed("idle h1", closes_after(idle, Duration::from_millis(500))),
                timed("idle h2", h2_idle(idle)),
                timed(
                    "lifetime idle",
                    closes_after(lifetime, Duration::from_secs(1))
                ),
            );
            eprintln!("{}: stream cases done", kind.name());
            let mut seen = vec![
                format!("hang: {}", cases.0),
                format!("slowbody: {}", cases.1),
                format!("drip: {}", cases.2),
                format!("stall: {}", cases.3),
                format!("trickle: {}", cases.4),
                format!("idle h1: {}", cases.5),
                format!("idle h2: {}", cases.6),
                format!("lifetime idle: {}", cases.7),
            ];
            // Alone on its listener now, so the active count is its own.
            seen.push(never_reads(&p, streams, "streams", Duration::from_secs(4)).await);
            // max_requests_per_connection: 2, then max_connection_duration on a busy connection.
            let mut s = TcpStream::connect(("127.0.0.1", lifetime))
                .await
                .expect("connect");
            for i in 1..=3 {
                if s.write_all(get("/x").as_bytes()).await.is_err() {
                    seen.push(format!("lifetime request {i}: write failed"));
                    break;
                }
                seen.push(format!(
                    "lifetime request {i}: {}",
                    read_response(&mut s, Duration::from_secs(3)).await
                ));
            }
            seen.push(format!(
                "lifetime slow: {}",
                exchange(lifetime, get("/slow"), b"", none).await
            ));

            eprintln!("{}: lifetime cases done: {seen:#?}", kind.name());
            let paths = [
                "/hang",
                "/slowbody",
                "/drip",
                "/hang?trickle",
                "/x",
                "/slow",
            ];
            let lines = p
                .wait_file_line(&log, Duration::from_secs(10), |_| {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    paths.iter().all(|path| text.contains(&format!(" {path} ")))
                })
                .await;
            let _ = lines;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let mut logged: Vec<&str> = text.lines().filter(|l| !l.contains("/big")).collect();
            logged.sort_unstable();
            seen.extend(logged.iter().map(|l| format!("log: {l}")));
            let stats = p.admin().stats().await;
            for (scope, names) in [
                (
                    "streams",
                    &[
                        "downstream_rq_idle_timeout",
                        "downstream_rq_timeout",
                        "downstream_rq_max_duration_reached",
                        "downstream_rq_408",
                        "downstream_rq_504",
                    ][..],
                ),
                ("idle", &["downstream_cx_idle_timeout"][..]),
                (
                    "lifetime",
                    &[
                        "downstream_cx_max_duration_reached",
                        "downstream_cx_max_requests_reached",
                    ][..],
                ),
            ] {
                for name in names {
                    let key = format!("http.{scope}.{name}");
                    seen.push(format!("{key}: {:?}", stats.get(&key)));
                }
            }
            outcomes.push(seen.join("\n"));
        }
        assert_eq!(outcomes[0], outcomes[1], "Envoy first, then skiff");
    })
    .await
}

/// A route's `idle_timeout` replaces the connection manager's `stream_idle_timeout` once the
/// route is chosen (shorter, longer, or zero for none), side by side with Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_idle_timeout_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let up = upstream().await;
        let routes = "[{match: {prefix: /short}, route: {cluster: up, timeout: 0s, idle_timeout: 0.3s, prefix_rewrite: /hang}}, {match: {prefix: /long}, route: {cluster: up, timeout: 0s, idle_timeout: 3s, prefix_rewrite: /slow}}, {match: {prefix: /none}, route: {cluster: up, timeout: 0s, idle_timeout: 0s, prefix_rewrite: /slow}}, {match: {prefix: /}, route: {cluster: up, timeout: 0s}}]";
        let mut outcomes = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let dir = scratch_dir(&format!("route-idle-{}", kind.name()));
            let log = dir.join("access.log");
            let (admin, port) = (free_port(), free_port());
            let l = listener_with_routes(
                "routeidle",
                port,
                "          stream_idle_timeout: 0.8s",
                &log.display().to_string(),
                routes,
            );
            let p = ProxyProcess::start(kind, &bootstrap(admin, &l, up), &["--concurrency", "1"]).await;
            let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n");
            let none = Duration::ZERO;
            let cases = tokio::join!(
                // 0.3 s instead of 0.8 s.
                timed("short", exchange(port, get("/short"), b"", none)),
                // The upstream answers after 1.5 s: past the connection manager's 0.8 s, within
                // the route's 3 s, and with none at all.
                timed("long", exchange(port, get("/long"), b"", none)),
                timed("none", exchange(port, get("/none"), b"", none)),
                // The connection manager's own.
                timed("default", exchange(port, get("/slow"), b"", none)),
            );
            let mut seen = vec![
                format!("short: {}", cases.0),
                format!("long: {}", cases.1),
                format!("none: {}", cases.2),
                format!("default: {}", cases.3),
            ];
            let stats = p.admin().stats().await;
            seen.push(format!(
                "idle timeouts: {:?}",
                stats.get("http.routeidle.downstream_rq_idle_timeout")
            ));
            outcomes.push(seen.join("\n"));
        }
        assert_eq!(outcomes[0], outcomes[1], "Envoy first, then skiff");
        assert!(outcomes[0].contains("short: HTTP/1.1 504"), "{}", outcomes[0]);
        assert!(outcomes[0].contains("long: HTTP/1.1 200"), "{}", outcomes[0]);
    })
    .await
}

/// An HTTP/2 frame (stream 1 unless a connection frame).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The HPACK block of `GET /` to `a` (four pseudo-headers) with `extra` more headers.
fn h2_request(extra: usize) -> Vec<u8> {
    // :method GET, :scheme http, :path / (static table), :authority a (literal, name indexed).
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 0x01, b'a'];
    for i in 0..extra {
        let name = format!("x{i}");
        block.extend([0x00, name.len() as u8]);
        block.extend(name.as_bytes());
        block.extend([0x01, b'y']);
    }
    block
}

/// The HPACK block of `GET /` to `a` with one header `x` whose value is `n` bytes.
fn h2_request_sized(n: usize) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 0x01, b'a', 0x00, 0x01, b'x'];
    // The value's length: an HPACK integer with a 7-bit prefix.
    if n < 127 {
        block.push(n as u8);
    } else {
        block.push(127);
        let mut left = n - 127;
        while left >= 128 {
            block.push((left % 128) as u8 | 0x80);
            left /= 128;
        }
        block.push(left as u8);
    }
    block.extend(std::iter::repeat_n(b'v', n));
    block
}

/// Opens an HTTP/2 connection (prior knowledge), sends `frames` once the settings are
/// exchanged, and says what came back within `wait`: whether stream 1 got response headers,
/// how it was reset, and how the connection ended.
async fn h2_exchange(port: u16, frames: Vec<u8>, wait: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(4, 0, 0, b""));
    s.write_all(&hello).await.expect("preface");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The server's SETTINGS first, so that the ACK does not land inside a header block.
    while got.len() < 9 {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return "no settings".into(),
        }
    }
    let mut out = h2_frame(4, 1, 0, b"");
    out.extend_from_slice(&frames);
    s.write_all(&out).await.expect("frames");
    let start = Instant::now();
    let end = loop {
        let left = wait.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => break "open",
            Ok(Ok(0)) => break "closed",
            Ok(Err(_)) => break "reset",
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    let (mut headers, mut rst) = (false, None);
    let mut at = 0;
    while at + 9 <= got.len() {
        let len = (usize::from(got[at]) << 16)
            | (usize::from(got[at + 1]) << 8)
            | usize::from(got[at + 2]);
        let stream = u32::from_be_bytes([got[at + 5], got[at + 6], got[at + 7], got[at + 8]]);
        let payload = &got[at + 9..(at + 9 + len).min(got.len())];
        match got[at + 3] {
            1 if stream == 1 => headers = true,
            3 if stream == 1 && payload.len() >= 4 => {
                rst = Some(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]))
            }
            _ => {}
        }
        at += 9 + len;
    }
    format!("response headers: {headers}, reset: {rst:?}, connection {end}")
}

/// Sends `parts` on one connection, `gap` apart, and returns every status line that came back
/// within `limit` and how the connection ended.
async fn heads(port: u16, parts: Vec<&[u8]>, gap: Duration, limit: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        if s.write_all(p).await.is_err() {
            break;
        }
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let end = loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Err(_) => break "open",
            Ok(Ok(0)) => break "closed",
            Ok(Err(_)) => break "reset",
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    let text = String::from_utf8_lossy(&got);
    // A status line may follow the previous response's body on the same line.
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text[at..].split("\r\n").next())
        .collect();
    let bodies = ["request header timeout", "Request Header Fields Too Large"]
        .iter()
        .filter(|b| text.contains(*b))
        .collect::<Vec<_>>();
    format!("{statuses:?} {bodies:?} ({end})")
}

/// `request_headers_timeout` and `max_headers_count`, side by side with Envoy: the 408 for a
/// request head that takes too long from its first byte (HTTP/1.1), a stalled HTTP/2 header
/// block ended, the 431 (HTTP/1.1) and the reset stream (HTTP/2) for too many headers.
#[tokio::test]
async fn request_heads_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let up = upstream().await;
        let mut outcomes = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let dir = scratch_dir(&format!("hcm-heads-{}", kind.name()));
            let log = dir.join("access.log");
            let h2_log = dir.join("h2.log");
            let _ = std::fs::remove_file(&log);
            let _ = std::fs::remove_file(&h2_log);
            let admin = free_port();
            let (port, h2_port) = (free_port(), free_port());
            let options = "          request_headers_timeout: 1s\n          max_request_headers_kb: 2\n          common_http_protocol_options: {max_headers_count: 5}";
            let listeners = [
                listener("heads", port, options, &log.display().to_string()),
                listener("h2heads", h2_port, options, &h2_log.display().to_string()),
            ];
            let yaml = bootstrap(admin, &listeners.concat(), up);
            let p = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let long = Duration::from_secs(3);
            let none = Duration::ZERO;
            let headers = |path: &str, n: usize| {
                let mut h = format!("GET {path} HTTP/1.1\r\nhost: a\r\n");
                for i in 0..n {
                    h.push_str(&format!("x{i}: y\r\n"));
                }
                h + "\r\n"
            };
            let (four, five) = (headers("/four", 4), headers("/five", 5));
            // max_request_headers_kb: 2: a head of 2048 bytes passes, one more byte does not
            // (the request line, `host`, `x` and the empty line: 35 bytes and the value).
            let sized = |n: usize| {
                format!(
                    "GET /big HTTP/1.1\r\nhost: a\r\nx: {}\r\n\r\n",
                    "v".repeat(n)
                )
            };
            let (fits, too_long) = (sized(2048 - 35), sized(2049 - 35));
            let mut partial_block = h2_request(1);
            partial_block.truncate(3);
            let cases = tokio::join!(
                heads(port, vec![b"GET /p HTTP/1.1\r\nhost: a\r\n"], none, long),
                heads(port, vec![b"G"], none, long),
                heads(port, vec![], none, Duration::from_secs(2)),
                // The timer counts from the head's first byte, not from the last one.
                heads(
                    port,
                    vec![b"GET /t HTTP/1.1\r\n", b"ho", b"st", b": a"],
                    Duration::from_millis(300),
                    long
                ),
                heads(
                    port,
                    vec![b"GET /x HTTP/1.1\r\nhost: a\r\n\r\nGET /next HTTP/1.1\r\n"],
                    none,
                    long
                ),
                heads(port, vec![four.as_bytes()], none, Duration::from_millis(1500)),
                heads(port, vec![five.as_bytes()], none, long),
                h2_exchange(port, h2_frame(1, 0x5, 1, &h2_request(1)), long),
                h2_exchange(port, h2_frame(1, 0x5, 1, &h2_request(2)), long),
                // A HEADERS frame without END_HEADERS, and no CONTINUATION.
                h2_exchange(h2_port, h2_frame(1, 0x1, 1, &partial_block), long),
                heads(port, vec![fits.as_bytes()], none, Duration::from_millis(1500)),
                heads(port, vec![too_long.as_bytes()], none, long),
                // Names and values of the header list, pseudo-headers included: 39 bytes and
                // the value.
                h2_exchange(port, h2_frame(1, 0x5, 1, &h2_request_sized(2048 - 39)), long),
                h2_exchange(port, h2_frame(1, 0x5, 1, &h2_request_sized(2049 - 39)), long),
            );
            let mut seen = vec![
                format!("partial head: {}", cases.0),
                format!("one byte: {}", cases.1),
                format!("nothing sent: {}", cases.2),
                format!("trickled head: {}", cases.3),
                format!("second head partial: {}", cases.4),
                format!("5 headers: {}", cases.5),
                format!("6 headers: {}", cases.6),
                format!("h2 5 headers: {}", cases.7),
                format!("h2 6 headers: {}", cases.8),
                format!("2048-byte head: {}", cases.10),
                format!("2049-byte head: {}", cases.11),
                format!("h2 2048-byte header list: {}", cases.12),
                format!("h2 2049-byte header list: {}", cases.13),
            ];
            // Envoy answers the stalled HTTP/2 stream with its 408 and a reset; skiff, whose
            // codec keeps a partial header block to itself, ends the connection
            // (tests/DIFFERENCES.md). Either way the stalled request ends at the timeout.
            let stalled = &cases.9;
            seen.push(format!(
                "h2 stalled header block ended: {}",
                stalled.contains("reset: Some") || stalled.ends_with("closed")
            ));
            eprintln!("{}: {seen:#?} (h2 stalled: {stalled})", kind.name());
            let paths = ["/x", "/four", "/big", "too_many_headers", "headers_too_large"];
            let _ = p
                .wait_file_line(&log, Duration::from_secs(10), |_| {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    paths.iter().all(|path| text.contains(path))
                        && text.matches("request_header_timeout").count() >= 4
                })
                .await;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let mut logged: Vec<&str> = text.lines().collect();
            logged.sort_unstable();
            seen.extend(logged.iter().map(|l| format!("log: {l}")));
            let stats = p.admin().stats().await;
            for key in [
                "http.heads.downstream_rq_header_timeout",
                "http.heads.downstream_rq_4xx",
                "http.heads.downstream_cx_protocol_error",
                "http.h2heads.downstream_rq_header_timeout",
                "http2.header_overflow",
                "http2.header_list_size_too_large",
            ] {
                seen.push(format!("{key}: {:?}", stats.get(key)));
            }
            outcomes.push(seen.join("\n"));
        }
        assert_eq!(outcomes[0], outcomes[1], "Envoy first, then skiff");
    })
    .await
}

/// A request with more headers than the listener takes (or, with `clean`, one that asks for
/// `connection: close`): the reply, and the seconds from the reply to the connection's close
/// (the client does not close).
async fn close_after_reply(port: u16, clean: bool) -> (String, f64) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut head = "GET /many HTTP/1.1\r\nhost: a\r\n".to_string();
    if clean {
        head.push_str("connection: close\r\n");
    } else {
        for i in 0..5 {
            head.push_str(&format!("x{i}: y\r\n"));
        }
    }
    s.write_all(format!("{head}\r\n").as_bytes())
        .await
        .expect("write");
    let reply = read_response(&mut s, Duration::from_secs(3)).await;
    let replied = Instant::now();
    let mut buf = [0u8; 64];
    let end = match tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await {
        Err(_) => "still open",
        Ok(Ok(0)) => "closed",
        Ok(Ok(_)) => "data",
        Ok(Err(_)) => "reset",
    };
    (
        format!("{reply}, then {end}"),
        replied.elapsed().as_secs_f64(),
    )
}

/// An HTTP/2 connection left idle (answering PINGs when `answer_pings`): the GOAWAYs it gets
/// (last stream ids), how it ends, and the seconds from the first GOAWAY to the close.
async fn h2_idle_close(port: u16, answer_pings: bool) -> (String, f64) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(4, 0, 0, b""));
    s.write_all(&hello).await.expect("preface");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let (mut first_goaway, mut at) = (None, 0);
    let mut goaways = Vec::new();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Err(_) => break "still open",
            Ok(Ok(0)) => break "closed",
            Ok(Err(_)) => break "reset",
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
        while at + 9 <= got.len() {
            let len = (usize::from(got[at]) << 16)
                | (usize::from(got[at + 1]) << 8)
                | usize::from(got[at + 2]);
            if at + 9 + len > got.len() {
                break;
            }
            let (kind, flags) = (got[at + 3], got[at + 4]);
            let payload = got[at + 9..at + 9 + len].to_vec();
            match kind {
                4 if flags & 1 == 0 => {
                    let _ = s.write_all(&h2_frame(4, 1, 0, b"")).await;
                }
                6 if flags & 1 == 0 && answer_pings => {
                    let _ = s.write_all(&h2_frame(6, 1, 0, &payload)).await;
                }
                7 if payload.len() >= 4 => {
                    first_goaway.get_or_insert_with(Instant::now);
                    let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & 0x7fff_ffff;
                    goaways.push(last);
                }
                _ => {}
            }
            at += 9 + len;
        }
    };
    let secs = first_goaway.map_or(0.0, |t| t.elapsed().as_secs_f64());
    // The first GOAWAY (a notice: the largest stream id) is the comparison; when the final one
    // comes differs (tests/DIFFERENCES.md).
    (
        format!("first goaway {:?}, then {end}", goaways.first()),
        secs,
    )
}

/// `drain_timeout` and `delayed_close_timeout`, side by side with Envoy, with Envoy's defaults
/// (5 s, 1 s) and with shorter ones: how long after a reply that closes the connection the
/// socket closes, and how long an idle HTTP/2 connection stays after its GOAWAY.
#[tokio::test]
async fn closes_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let up = upstream().await;
        let mut outcomes = Vec::new();
        let mut timings = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let dir = scratch_dir(&format!("hcm-closes-{}", kind.name()));
            let log = dir.join("access.log").display().to_string();
            let admin = free_port();
            let (defaults, short, jittered) = (free_port(), free_port(), free_port());
            let limits = "common_http_protocol_options: {idle_timeout: 0.5s, max_headers_count: 5}";
            let listeners = [
                listener("defaults", defaults, &format!("          {limits}"), &log),
                listener(
                    "short",
                    short,
                    &format!("          drain_timeout: 1s\n          delayed_close_timeout: 0.3s\n          {limits}"),
                    &log,
                ),
                listener(
                    "jittered",
                    jittered,
                    &format!("          drain_timeout: 1s\n          drain_timeout_jitter: {{value: 100}}\n          delayed_close_timeout: 0.3s\n          {limits}"),
                    &log,
                ),
            ];
            let yaml = bootstrap(admin, &listeners.concat(), up);
            let _p = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let cases = tokio::join!(
                close_after_reply(defaults, false),
                close_after_reply(short, false),
                close_after_reply(defaults, true),
                h2_idle_close(defaults, true),
                h2_idle_close(defaults, false),
                h2_idle_close(short, true),
                h2_idle_close(short, false),
            );
            // drain_timeout_jitter: each connection's drain lasts up to twice as long.
            let jitter = tokio::join!(
                h2_idle_close(jittered, true),
                h2_idle_close(jittered, true),
                h2_idle_close(jittered, true),
                h2_idle_close(jittered, true),
            );
            let base = (cases.5).1;
            let extra: Vec<f64> = [jitter.0, jitter.1, jitter.2, jitter.3]
                .iter()
                .map(|(o, t)| {
                    assert_eq!(*o, (cases.5).0, "{}: jittered drain", kind.name());
                    t - base
                })
                .collect();
            eprintln!("{}: drain jitter {extra:?}", kind.name());
            assert!(
                extra.iter().all(|x| (-0.3..=1.35).contains(x)),
                "{}: jittered drains end within drain_timeout's second more: {extra:?}",
                kind.name()
            );
            assert!(
                extra.iter().any(|x| *x > 0.1),
                "{}: some drain is jittered: {extra:?}",
                kind.name()
            );
            let named = [
                ("431, defaults", cases.0),
                ("431, short", cases.1),
                ("h2 idle, defaults, PINGs answered", cases.3),
                ("h2 idle, defaults, PINGs unanswered", cases.4),
                ("h2 idle, short, PINGs answered", cases.5),
                ("h2 idle, short, PINGs unanswered", cases.6),
                // A response to a request that fully arrived: no delayed close.
                ("connection: close, defaults", cases.2),
            ];
            eprintln!("{}: {named:#?}", kind.name());
            outcomes.push(
                named
                    .iter()
                    .map(|(n, (o, _))| format!("{n}: {o}"))
                    .collect::<Vec<_>>(),
            );
            timings.push(named.map(|(n, (_, t))| (n, t)));
        }
        assert_eq!(outcomes[0], outcomes[1], "Envoy first, then skiff");
        for ((name, envoy), (_, skiff)) in timings[0].iter().zip(timings[1].iter()) {
            assert!(
                (envoy - skiff).abs() < 0.35,
                "{name}: closed after {envoy:.2} s by Envoy, {skiff:.2} s by skiff"
            );
        }
    })
    .await
}

/// An idle HTTP/2 connection that answers PINGs for `answer_for`, then stops: the PINGs it got
/// while answering, how the connection ended, and the seconds from the first unanswered PING
/// to the end.
async fn h2_keepalive(port: u16, answer_for: Duration) -> (String, f64) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let start = Instant::now();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(4, 0, 0, b""));
    s.write_all(&hello).await.expect("preface");
    let (mut got, mut at, mut buf) = (Vec::new(), 0, [0u8; 4096]);
    let (mut answered, mut unanswered, mut goaway) = (0, None, false);
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Err(_) => break "still open",
            Ok(Ok(0)) => break "closed",
            Ok(Err(_)) => break "reset",
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
        while at + 9 <= got.len() {
            let len = (usize::from(got[at]) << 16)
                | (usize::from(got[at + 1]) << 8)
                | usize::from(got[at + 2]);
            if at + 9 + len > got.len() {
                break;
            }
            let (kind, flags) = (got[at + 3], got[at + 4]);
            let payload = got[at + 9..at + 9 + len].to_vec();
            match kind {
                4 if flags & 1 == 0 => {
                    let _ = s.write_all(&h2_frame(4, 1, 0, b"")).await;
                }
                6 if flags & 1 == 0 => {
                    if start.elapsed() < answer_for {
                        answered += 1;
                        let _ = s.write_all(&h2_frame(6, 1, 0, &payload)).await;
                    } else {
                        unanswered.get_or_insert_with(Instant::now);
                    }
                }
                7 => goaway = true,
                _ => {}
            }
            at += 9 + len;
        }
    };
    let secs = unanswered.map_or(0.0, |t| t.elapsed().as_secs_f64());
    // skiff's codec says GOAWAY before it closes, Envoy closes at once (tests/DIFFERENCES.md).
    eprintln!("keepalive close on {port}: goaway {goaway}");
    (format!("PINGs answered: {answered}, then {end}"), secs)
}

/// The connection manager's `http2_protocol_options.connection_keepalive`, side by side with
/// Envoy: PINGs to an idle client every interval, and the connection closed when one is not
/// answered within the timeout (`http2.keepalive_timeout`).
#[tokio::test]
async fn downstream_keepalive_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let up = upstream().await;
        let mut outcomes = Vec::new();
        let mut timings = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let dir = scratch_dir(&format!("hcm-keepalive-{}", kind.name()));
            let log = dir.join("access.log").display().to_string();
            let admin = free_port();
            let port = free_port();
            let options = "          http2_protocol_options: {connection_keepalive: {interval: 1s, timeout: 0.5s, interval_jitter: {value: 0}}}";
            let yaml = bootstrap(admin, &listener("keepalive", port, options, &log), up);
            let p = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let (outcome, secs) = h2_keepalive(port, Duration::from_millis(2500)).await;
            let stats = p.admin().stats().await;
            let key = "http2.keepalive_timeout";
            eprintln!("{}: {outcome} after {secs:.2} s", kind.name());
            outcomes.push(format!("{outcome}; {key}: {:?}", stats.get(key)));
            timings.push(secs);
        }
        assert_eq!(outcomes[0], outcomes[1], "Envoy first, then skiff");
        assert!(
            (timings[0] - timings[1]).abs() < 0.3,
            "closed after the unanswered PING: {timings:?} (Envoy, skiff)"
        );
    })
    .await
}
