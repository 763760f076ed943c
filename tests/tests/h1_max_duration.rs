//! `max_connection_duration` on HTTP/1.1 connections that have served a request, side by side
//! with Envoy 1.40: an idle one is closed once `drain_timeout` and the delayed close have
//! passed after it (Envoy's drain timer), a request in between gets `connection: close`; with
//! `http1_safe_max_connection_duration` an idle one stays open and its next response closes it.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::{free_port, run_for};

fn config(admin: u16, ports: [u16; 2]) -> String {
    let listener = |name: &str, port: u16, safe: bool| {
        format!(
            r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          common_http_protocol_options: {{max_connection_duration: 1s}}
          http1_safe_max_connection_duration: {safe}
          drain_timeout: 1s
          route_config: {{virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200, body: {{inline_string: ok}}}}}}]}}]}}
          http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]"#
        )
    };
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{}{}
"#,
        listener("plain", ports[0], false),
        listener("safe", ports[1], true),
    )
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";

async fn response(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("a response in time")
        .expect("read");
    buf.truncate(n);
    buf
}

/// When an idle connection that served one request closes, in whole seconds (or "open").
async fn idle_close(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let start = Instant::now();
    s.write_all(GET).await.expect("write");
    response(&mut s).await;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(0)) => format!("closed after {:.0} s", start.elapsed().as_secs_f64()),
        Ok(_) => "data".to_string(),
        Err(_) => "open".to_string(),
    }
}

/// A second request past the duration: whether its response says close, and whether the
/// connection ends then.
async fn late_request(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(GET).await.expect("write");
    response(&mut s).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    s.write_all(GET).await.expect("write");
    let r = String::from_utf8_lossy(&response(&mut s).await).to_lowercase();
    let mut buf = [0u8; 16];
    let ended = matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await,
        Ok(Ok(0))
    );
    format!(
        "close header: {}, ended: {ended}",
        r.contains("connection: close")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_connections_past_their_duration_close_as_envoys_do() {
    run_for(Duration::from_secs(90), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let (admin, ports) = (free_port(), [free_port(), free_port()]);
            let p = ProxyProcess::start(kind, &config(admin, ports), &[]).await;
            let got = tokio::join!(
                idle_close(ports[0]),
                idle_close(ports[1]),
                late_request(ports[0]),
                late_request(ports[1]),
            );
            drop(p);
            seen.push(format!("{got:?}"));
        }
        assert!(seen[0].contains("closed after 3 s"), "{}", seen[0]);
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
    })
    .await;
}
