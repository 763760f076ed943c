//! A cluster's HTTP/2 `connection_keepalive`, side by side with Envoy 1.40: PINGs every
//! interval, and a connection whose PING goes unanswered closed after the timeout and counted
//! in `cluster.<name>.http2.keepalive_timeout`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skiff_tests::{free_port, run_for, Kind, ProxyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a raw HTTP/2 upstream saw.
#[derive(Default)]
struct Seen {
    pings: AtomicUsize,
    closed: AtomicUsize,
    connections: AtomicUsize,
}

/// An h2c upstream written frame by frame: it answers every request with an empty 200, and
/// answers PINGs only when `ack` is set.
async fn upstream(ack: bool) -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            s2.connections.fetch_add(1, Ordering::SeqCst);
            let seen = s2.clone();
            tokio::spawn(async move {
                serve(s, ack, &seen).await;
                seen.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (port, seen)
}

async fn serve(mut s: TcpStream, ack: bool, seen: &Seen) {
    let mut preface = [0u8; 24];
    if s.read_exact(&mut preface).await.is_err() {
        return;
    }
    // Our SETTINGS (empty).
    if s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.is_err() {
        return;
    }
    loop {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            return;
        }
        let reply: Vec<u8> = match kind {
            // SETTINGS (not an ACK): acknowledged.
            4 if flags & 1 == 0 => vec![0, 0, 0, 4, 1, 0, 0, 0, 0],
            // HEADERS: `:status: 200` (HPACK index 8), end of stream.
            1 => {
                let mut f = vec![0, 0, 1, 1, 0x5];
                f.extend_from_slice(&stream.to_be_bytes());
                f.push(0x88);
                f
            }
            // PING (not an ACK).
            6 if flags & 1 == 0 => {
                seen.pings.fetch_add(1, Ordering::SeqCst);
                if !ack {
                    continue;
                }
                let mut f = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                f.extend_from_slice(&payload);
                f
            }
            _ => continue,
        };
        if s.write_all(&reply).await.is_err() {
            return;
        }
    }
}

fn config(admin: u16, listen: u16, upstream: u16) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config:
            virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: up
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options:
            connection_keepalive: {{interval: 0.3s, timeout: 0.4s, interval_jitter: {{value: 0}}}}
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#
    )
}

async fn get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn upstream_keepalive_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut outcomes = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let mut seen_lines = Vec::new();
            for ack in [true, false] {
                let (up, seen) = upstream(ack).await;
                let (admin, listen) = (free_port(), free_port());
                let p =
                    ProxyProcess::start(kind, &config(admin, listen, up), &["--concurrency", "1"])
                        .await;
                seen_lines.push(format!("ack={ack}: {}", get(listen).await));
                tokio::time::sleep(Duration::from_millis(1600)).await;
                let pings = seen.pings.load(Ordering::SeqCst);
                seen_lines.push(format!(
                    "ack={ack}: pings {}, connections {}, closed {}",
                    if ack {
                        (pings >= 3).to_string()
                    } else {
                        pings.to_string()
                    },
                    seen.connections.load(Ordering::SeqCst),
                    seen.closed.load(Ordering::SeqCst),
                ));
                // After a keepalive close the next request opens a new connection.
                seen_lines.push(format!("ack={ack}: again {}", get(listen).await));
                let stats = p.admin().stats().await;
                seen_lines.push(format!(
                    "ack={ack}: keepalive_timeout {:?}",
                    stats.get("cluster.up.http2.keepalive_timeout")
                ));
            }
            eprintln!("{}:\n{}", kind.name(), seen_lines.join("\n"));
            outcomes.push(seen_lines.join("\n"));
        }
        assert_eq!(outcomes[0], outcomes[1], "Envoy first, then skiff");
    })
    .await
}
