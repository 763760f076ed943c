//! The connection manager's timeouts and per-connection limits, side by side with Envoy 1.40:
//! `stream_idle_timeout`, `request_timeout`, `max_stream_duration`, the connection idle timeout,
//! `max_connection_duration` and `max_requests_per_connection`, each with the client-visible
//! result, the access-log line (code, flags, details) and the stats Envoy counts.

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

fn config(admin: u16, ports: [u16; 3], upstream: u16, log: &str) -> String {
    let listener = |name: &str, port: u16, options: &str| {
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
            virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: up, timeout: 0s}}}}]}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
        )
    };
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{}{}{}
  clusters:
  - name: up
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#,
        listener(
            "streams",
            ports[0],
            "          stream_idle_timeout: 0.6s\n          request_timeout: 1.5s\n          common_http_protocol_options: {max_stream_duration: 2.5s}"
        ),
        listener(
            "idle",
            ports[1],
            "          common_http_protocol_options: {idle_timeout: 0.5s}"
        ),
        listener(
            "lifetime",
            ports[2],
            "          common_http_protocol_options: {max_connection_duration: 1s, max_requests_per_connection: 2}"
        ),
    )
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
