//! UDP listeners with `envoy.filters.udp_listener.udp_proxy`, side by side with Envoy 1.40:
//! UDP echo upstreams of the test's own (each answers `<name>:<datagram>`), clients on
//! loopback addresses of their own. What each client gets back, a session's host kept for
//! its datagrams, per-packet load balancing, routing by the `matcher` (source address, a
//! cluster that does not exist), sessions bounded by the cluster's `max_connections`, sessions
//! ending when idle, the session access log and the `udp.<prefix>.*` and
//! `cluster.<name>.udp.*` stats.

use std::time::Duration;

use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::{free_port, run_for, scratch_dir};
use tokio::net::UdpSocket;

/// A UDP upstream answering each datagram with `<name>:<datagram>`.
async fn echo(name: &'static str) -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let port = s.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = s.recv_from(&mut buf).await {
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, peer).await;
        }
    });
    port
}

fn cluster(name: &str, ports: &[u16]) -> String {
    let endpoints: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}}}"
            )
        })
        .collect();
    format!(
        r#"
  - name: {name}
    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{}]}}]}}"#,
        endpoints.join(", ")
    )
}

fn udp_listener(name: &str, port: u16, proxy: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}, protocol: UDP}}}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: {name}{proxy}"#
    )
}

fn route(cluster: &str) -> String {
    format!(
        r#"{{action: {{name: route, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route, cluster: {cluster}}}}}}}"#
    )
}

fn config(admin: u16, ports: [u16; 4], ups: [u16; 3], log: &str) -> String {
    // 0: by source address: 127.0.0.2 to `two`, 127.0.0.3 to a cluster that does not exist,
    // the others to `one`; sessions end after 1 s idle, each logged.
    let u0 = udp_listener(
        "u0",
        ports[0],
        &format!(
            r#"
        idle_timeout: 1s
        access_log:
        - name: envoy.access_loggers.file
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
            path: {log}
            log_format: {{text_format_source: {{inline_string: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% %BYTES_RECEIVED% %BYTES_SENT% %REQ(:AUTHORITY)% %RESPONSE_CODE%\n"}}}}
        matcher:
          matcher_list:
            matchers:
            - predicate:
                single_predicate:
                  input: {{name: ip, typed_config: {{"@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput}}}}
                  value_match: {{exact: 127.0.0.2}}
              on_match: {two}
            - predicate:
                single_predicate:
                  input: {{name: ip, typed_config: {{"@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput}}}}
                  value_match: {{exact: 127.0.0.3}}
              on_match: {missing}
          on_no_match: {one}"#,
            two = route("two"),
            missing = route("missing"),
            one = route("one"),
        ),
    );
    // 1: a session keeps its host (the deprecated `cluster` field).
    let u1 = udp_listener("u1", ports[1], "\n        cluster: both");
    // 2: each datagram picks its host.
    let u2 = udp_listener(
        "u2",
        ports[2],
        "\n        cluster: both\n        use_per_packet_load_balancing: true",
    );
    // 3: sessions bounded by the cluster's max_connections (one).
    let u3 = udp_listener("u3", ports[3], "\n        cluster: tiny");
    let tiny =
        cluster("tiny", &[ups[1]]) + "\n    circuit_breakers: {thresholds: [{max_connections: 1}]}";
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{u0}{u1}{u2}{u3}
  clusters:{}{}{}{tiny}
"#,
        cluster("one", &[ups[0]]),
        cluster("two", &[ups[1]]),
        cluster("both", &[ups[0], ups[2]]),
    )
}

/// Sends each datagram from `from` to `to` and returns the answers (a missing one as "-").
async fn exchange(from: &str, to: u16, datagrams: &[&str]) -> Vec<String> {
    let s = UdpSocket::bind(format!("{from}:0"))
        .await
        .expect("bind client");
    s.connect(("127.0.0.1", to)).await.expect("connect");
    let mut out = Vec::new();
    for d in datagrams {
        s.send(d.as_bytes()).await.expect("send");
        let mut buf = [0u8; 2048];
        let got = tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf)).await;
        out.push(match got {
            Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            _ => "-".to_string(),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_proxy_forwards_sessions_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        let ups = [echo("a").await, echo("b").await, echo("c").await];
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let ports = [free_port(), free_port(), free_port(), free_port()];
            let log = scratch_dir("udp-log").join("sessions.log");
            let p = ProxyProcess::start(
                kind,
                &config(free_port(), ports, ups, &log.display().to_string()),
                &[],
            )
            .await;
            sides.push((p, ports, log));
        }
        let mut seen = Vec::new();
        for (p, ports, log) in &sides {
            let mut got = vec![
                exchange("127.0.0.1", ports[0], &["x", "yy"]).await,
                exchange("127.0.0.2", ports[0], &["z"]).await,
                exchange("127.0.0.3", ports[0], &["nowhere"]).await,
            ];
            // A session keeps its host; per packet, the hosts take turns.
            let sticky = exchange("127.0.0.1", ports[1], &["1", "2", "3"]).await;
            let hosts: std::collections::BTreeSet<&str> = sticky.iter().map(|r| &r[..1]).collect();
            assert_eq!(
                hosts.len(),
                1,
                "{}: one host per session: {sticky:?}",
                p.kind.name()
            );
            let turns = exchange("127.0.0.1", ports[2], &["1", "2", "3", "4"]).await;
            let hosts: std::collections::BTreeSet<&str> = turns.iter().map(|r| &r[..1]).collect();
            assert_eq!(
                hosts.len(),
                2,
                "{}: per-packet hosts: {turns:?}",
                p.kind.name()
            );
            got.push(vec![format!("{} answers per packet", turns.len())]);
            // One session fits under max_connections; a second client's is not made.
            got.push(exchange("127.0.0.1", ports[3], &["first"]).await);
            got.push(exchange("127.0.0.2", ports[3], &["second"]).await);
            // Idle sessions end (1 s on u0), each with its log line.
            tokio::time::sleep(Duration::from_millis(1600)).await;
            let mut stats: Vec<(String, String)> = p
                .admin()
                .stats_containing("udp.")
                .await
                .into_iter()
                .filter(|(k, _)| {
                    k.starts_with("udp.") || (k.starts_with("cluster.") && k.contains(".udp."))
                })
                .collect();
            for c in ["one", "two", "both", "tiny"] {
                for n in ["upstream_cx_none_healthy", "upstream_cx_overflow"] {
                    stats.extend(
                        p.admin()
                            .stats_containing(&format!("cluster.{c}.{n}"))
                            .await,
                    );
                }
            }
            stats.sort();
            let lines = skiff_tests::sorted_log_lines(log, 2).await;
            seen.push((got, stats, lines));
        }
        assert_eq!(seen[0].0, seen[1].0, "what the clients got (Envoy, skiff)");
        assert!(
            seen[0]
                .1
                .iter()
                .any(|(k, v)| k == "udp.u0.idle_timeout" && v == "2"),
            "Envoy's sessions timed out: {:?}",
            seen[0].1
        );
        let differ: Vec<_> = seen[0]
            .1
            .iter()
            .zip(&seen[1].1)
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            seen[0].1, seen[1].1,
            "stats (Envoy, skiff) differ at {differ:?}"
        );
        assert_eq!(seen[0].2, seen[1].2, "session log lines (Envoy, skiff)");
    })
    .await;
}
