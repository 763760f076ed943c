//! A listener's own `access_log`, side by side with Envoy 1.40: one line for each connection
//! closed before a filter chain took it, when no chain matches (`NR`,
//! `filter_chain_not_found`) and when the listener filters time out; and access log filters
//! (status code, duration, response flags, headers, and, or) on both kinds of logs.

use std::io::{Read, Write};
use std::time::Duration;

use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::{free_port, run_for, scratch_dir};

fn config(admin: u16, ports: [u16; 3], dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: nomatch
    address: {{socket_address: {{address: 127.0.0.1, port_value: {p0}}}}}
    access_log:
    - name: f
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
        path: {d}/custom.log
        log_format: {{text_format_source: {{inline_string: "%RESPONSE_FLAGS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %BYTES_RECEIVED% %BYTES_SENT% %REQUESTED_SERVER_NAME% %UPSTREAM_HOST% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\n"}}}}
    - name: d
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
        path: {d}/default.log
    - name: nr
      filter: {{response_flag_filter: {{flags: [NR]}}}}
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
        path: {d}/nr.log
    - name: uf
      filter: {{response_flag_filter: {{flags: [UF, UH]}}}}
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
        path: {d}/uf.log
    filter_chains:
    - filter_chain_match: {{destination_port: 1}}
      filters:
      - name: t
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}
  - name: timeout
    address: {{socket_address: {{address: 127.0.0.1, port_value: {p1}}}}}
    listener_filters_timeout: 0.3s
    listener_filters:
    - name: tls
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
    access_log:
    - name: f
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
        path: {d}/timeout.log
        log_format: {{text_format_source: {{inline_string: "%RESPONSE_FLAGS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %RESPONSE_CODE_DETAILS% %DURATION%\n"}}}}
    filter_chains:
    - filters:
      - name: t
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}
  - name: http
    address: {{socket_address: {{address: 127.0.0.1, port_value: {p2}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h
          access_log:
          - name: status
            filter: {{status_code_filter: {{comparison: {{op: GE, value: {{default_value: 404, runtime_key: log.min_status}}}}}}}}
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: {d}/status.log, log_format: {{text_format_source: {{inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\n"}}}}}}
          - name: and
            filter: {{and_filter: {{filters: [{{header_filter: {{header: {{name: x-log, present_match: true}}}}}}, {{duration_filter: {{comparison: {{op: LE, value: {{default_value: 10000}}}}}}}}]}}}}
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: {d}/and.log, log_format: {{text_format_source: {{inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\n"}}}}}}
          - name: or
            filter: {{or_filter: {{filters: [{{response_flag_filter: {{flags: [NR]}}}}, {{status_code_filter: {{comparison: {{op: EQ, value: {{default_value: 201}}}}}}}}]}}}}
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: {d}/or.log, log_format: {{text_format_source: {{inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\n"}}}}}}
          route_config:
            virtual_hosts:
            - name: a
              domains: ["*"]
              routes:
              - {{match: {{path: /ok}}, direct_response: {{status: 200}}}}
              - {{match: {{path: /created}}, direct_response: {{status: 201}}}}
              - {{match: {{path: /teapot}}, direct_response: {{status: 418}}}}
          http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters:
  - name: c
    load_assignment: {{cluster_name: c, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9}}}}}}}}]}}]}}
"#,
        p0 = ports[0],
        p1 = ports[1],
        p2 = ports[2],
    )
}

/// Connects, sends `bytes`, waits `wait`, and reads until the proxy closes.
fn poke(port: u16, bytes: &[u8], wait: Duration) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let _ = s.write_all(bytes);
    std::thread::sleep(wait);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf);
}

/// The lines of `path` once it has `n`, with the start time masked.
async fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            return text
                .lines()
                .map(|l| match l.find("] ") {
                    Some(i) if l.starts_with('[') => format!("[time]{}", &l[i + 1..]),
                    _ => l.to_string(),
                })
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{}: fewer than {n} lines", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_access_logs_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let dir = scratch_dir(&format!("listener-log-{}", kind.name()));
            let (admin, ports) = (free_port(), [free_port(), free_port(), free_port()]);
            let _p = ProxyProcess::start(kind, &config(admin, ports, &dir), &[]).await;
            let (p0, p1, p2) = (ports[0], ports[1], ports[2]);
            tokio::task::spawn_blocking(move || {
                poke(p0, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", Duration::ZERO);
                poke(p0, b"", Duration::from_millis(100));
                // Nothing for the TLS inspector: its timeout closes the connection.
                poke(p1, b"", Duration::from_millis(500));
                for (path, log) in [
                    ("/ok", true),
                    ("/created", false),
                    ("/teapot", true),
                    ("/missing", false),
                    ("/ok", false),
                ] {
                    let extra = if log { "x-log: 1\r\n" } else { "" };
                    poke(
                        p2,
                        format!(
                            "GET {path} HTTP/1.1\r\nhost: a\r\n{extra}connection: close\r\n\r\n"
                        )
                        .as_bytes(),
                        Duration::ZERO,
                    );
                }
            })
            .await
            .expect("clients");
            let mut out = lines(&dir.join("custom.log"), 2).await;
            out.extend(lines(&dir.join("default.log"), 2).await);
            out.extend(lines(&dir.join("nr.log"), 2).await);
            for (name, n) in [("status", 2), ("and", 2), ("or", 2)] {
                // Connections on different workers write in either order.
                let mut l = lines(&dir.join(format!("{name}.log")), n).await;
                l.sort();
                out.push(format!("{name}: {l:?}"));
            }
            // Nothing failed to connect: that log stays empty.
            out.push(format!(
                "uf: {:?}",
                std::fs::read_to_string(dir.join("uf.log")).unwrap_or_default()
            ));
            let timeout = lines(&dir.join("timeout.log"), 1).await;
            // The duration: from the accept to the listener filters' timeout (300 ms).
            for l in &timeout {
                let ms: u64 = l
                    .rsplit(' ')
                    .next()
                    .and_then(|d| d.parse().ok())
                    .expect("duration");
                assert!((280..1000).contains(&ms), "{kind:?}: {l}");
                out.push(
                    l.rsplit_once(' ')
                        .map(|(a, _)| a.to_string())
                        .unwrap_or_default(),
                );
            }
            seen.push(out);
            let _ = std::fs::remove_dir_all(&dir);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        assert!(
            seen[0][0].starts_with("NR 127.0.0.1 127.0.0.1 "),
            "{:?}",
            seen[0]
        );
    })
    .await;
}
