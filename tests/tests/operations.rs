//! Bootstrap fields about running the proxy, side by side with Envoy 1.40: the overload
//! manager's global downstream connection limit (with `ignore_global_conn_limit`), the admin
//! access log, and Istio's bootstrap-level settings.

use std::time::Duration;

use skiff_tests::side_by_side::mask_log_line;
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for, Kind, ProxyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(admin: u16, limited: u16, exempt: u16, upstream: u16, log: &str) -> String {
    let hcm = |prefix: &str| {
        format!(
            r#"
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          route_config:
            virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
        )
    };
    format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
  profile_path: /tmp/envoy.prof
  access_log:
  - name: envoy.access_loggers.file
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
      path: {log}
overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 2
layered_runtime:
  layers:
  - name: global config
    static_layer:
      envoy.reloadable_features.http_reject_path_with_fragment: false
      re2.max_program_size.error_level: "32768"
  - name: admin
    admin_layer: {{}}
cluster_manager:
  outlier_detection: {{event_log_path: /dev/null}}
  enable_deferred_cluster_creation: true
deferred_stat_options: {{enable_deferred_creation_stats: true}}
application_log_config:
  log_format: {{text_format: "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t"}}
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    "@type": type.googleapis.com/udpa.type.v1.TypedStruct
    type_url: type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
    value: {{buffer_size_kb: 64}}
static_resources:
  listeners:
  - name: limited
    address: {{socket_address: {{address: 127.0.0.1, port_value: {limited}}}}}
    filter_chains:
    - filters:{}
  - name: exempt
    address: {{socket_address: {{address: 127.0.0.1, port_value: {exempt}}}}}
    ignore_global_conn_limit: true
    bypass_overload_manager: true
    filter_chains:
    - filters:{}
  clusters:
  - name: up
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#,
        hcm("limited"),
        hcm("exempt")
    )
}

/// Masks the `x-forwarded-for` field of a default-format line: Envoy's admin connection
/// manager fills it with an address of its own (`192.0.2.2`), skiff leaves the client's
/// (tests/DIFFERENCES.md).
fn mask_xff(line: &str) -> String {
    let mut parts: Vec<&str> = line.split('"').collect();
    if parts.len() > 3 {
        parts[3] = "<xff>";
    }
    parts.join("\"")
}

/// Sends a request on `s` and reads what comes back (empty: closed).
async fn exchange(s: &mut TcpStream) -> String {
    if s.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .is_err()
    {
        return String::new();
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn global_connection_limit_and_admin_access_log_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let up = EchoUpstream::start("u1").await;
        let mut outcomes = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let dir = std::env::temp_dir().join(format!(
                "skiff-operations-{}-{}",
                std::process::id(),
                kind.name()
            ));
            std::fs::create_dir_all(&dir).expect("dir");
            let log = dir.join("admin.log");
            let _ = std::fs::remove_file(&log);
            let (admin, limited, exempt) = (free_port(), free_port(), free_port());
            let yaml = config(
                admin,
                limited,
                exempt,
                up.port(),
                &log.display().to_string(),
            );
            let p = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;

            let mut seen = Vec::new();
            let mut held = Vec::new();
            for _ in 0..3 {
                let mut s = TcpStream::connect(("127.0.0.1", limited))
                    .await
                    .expect("connect");
                tokio::time::sleep(Duration::from_millis(100)).await;
                seen.push(format!("limited: {}", exchange(&mut s).await));
                held.push(s);
            }
            let mut exempt_conns = Vec::new();
            for _ in 0..3 {
                let mut s = TcpStream::connect(("127.0.0.1", exempt))
                    .await
                    .expect("connect");
                seen.push(format!("exempt: {}", exchange(&mut s).await));
                exempt_conns.push(s);
            }
            // A place frees up when a counted connection closes.
            drop(held.remove(0));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut s = TcpStream::connect(("127.0.0.1", limited))
                .await
                .expect("connect");
            seen.push(format!("limited after a close: {}", exchange(&mut s).await));
            drop(s);
            drop(held);
            drop(exempt_conns);
            tokio::time::sleep(Duration::from_millis(300)).await;

            let stats = p.admin().stats().await;
            for name in ["limited", "exempt"] {
                let scope = format!(
                    "listener.127.0.0.1_{}.",
                    if name == "limited" { limited } else { exempt }
                );
                for stat in ["downstream_global_cx_overflow", "downstream_cx_total"] {
                    seen.push(format!(
                        "{name} {stat}: {:?}",
                        stats.get(&format!("{scope}{stat}"))
                    ));
                }
            }
            // The admin access log: a line per admin request, in the default format.
            let _ = p.admin().get("/ready?x=1").await;
            let lines = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let lines: Vec<String> = text
                        .lines()
                        .filter(|l| l.contains("/ready"))
                        .map(|l| mask_xff(&mask_log_line(l)))
                        .collect();
                    if lines.iter().any(|l| l.contains("/ready?x=1")) {
                        return lines;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .unwrap_or_default();
            seen.extend(lines.into_iter().map(|l| format!("admin log: {l}")));
            outcomes.push(seen.join("\n"));
        }
        assert_eq!(outcomes[0], outcomes[1], "Envoy first, then skiff");
    })
    .await
}
