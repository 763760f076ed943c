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

fn stats_config_bootstrap(admin: u16, listen: u16, upstream: u16, stats_config: &str) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
stats_config:
{stats_config}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing
          route_config:
            virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: up
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#
    )
}

/// A Prometheus sample's metric and labels, without its value.
fn sample_keys(
    text: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut families: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let key = line.rsplit_once(' ').map_or(line, |(k, _)| k);
        let (metric, labels) = match key.split_once('{') {
            Some((m, l)) => {
                let mut parts: Vec<&str> = l.trim_end_matches('}').split(',').collect();
                parts.sort_unstable();
                (m.to_string(), parts.join(","))
            }
            None => (key.to_string(), String::new()),
        };
        families.entry(metric).or_default().insert(labels);
    }
    families
}

/// Istio's and Envoy Gateway's `stats_config` shapes: the stats kept and the Prometheus tags
/// agree with Envoy's for every metric both proxies have.
#[tokio::test]
async fn stats_config_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let up = EchoUpstream::start("u1").await;
        // Istio's own tags (no defaults) with an inclusion list, and Envoy Gateway's (defaults
        // plus its own), then an exclusion list.
        let istio = r#"  use_all_default_tags: false
  stats_tags:
  - {tag_name: cluster_name, regex: "^cluster\\.((.+?)\\.)"}
  - {tag_name: http_conn_manager_prefix, regex: "^http\\.(((?:[_.[:digit:]\\w]*|[_\\[\\]aAbBcCdDeEfF[:digit:]\\w\\:]*));\\.)"}
  - {tag_name: response_code, regex: "_rq(_(\\d{3}))$"}
  - {tag_name: response_code_class, regex: "_rq(_(\\dxx))$"}
  - {tag_name: http_conn_manager_listener_prefix, regex: "^listener(?=\\.).*?\\.http\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"}
  - {tag_name: listener_address, regex: "^listener\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"}
  - {tag_name: mesh, fixed_value: m1}
  stats_matcher:
    inclusion_list:
      patterns:
      - prefix: cluster_manager
      - prefix: listener_manager
      - prefix: server
      - prefix: cluster.up.
      - suffix: downstream_rq_2xx
      - safe_regex: {regex: "http\\.ing\\.downstream_cx_.*"}"#;
        let gateway = r#"  use_all_default_tags: true
  stats_tags:
  - {tag_name: priority, regex: "circuit_breakers\\.((.+?)\\.).+"}
  - {tag_name: from_zone, regex: "\\.zone(\\.(([^\\.]+)\\.))"}
  stats_matcher:
    exclusion_list:
      patterns:
      - {prefix: "http.ING.", ignore_case: true}
      - contains: worker_"#;
        for (what, stats_config) in [("istio", istio), ("gateway", gateway)] {
            let mut texts = Vec::new();
            let mut names = Vec::new();
            for kind in [Kind::Envoy, Kind::under_test()] {
                let (admin, listen) = (free_port(), free_port());
                let yaml = stats_config_bootstrap(admin, listen, up.port(), stats_config);
                let p = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
                for path in ["/a", "/b"] {
                    let mut s = TcpStream::connect(("127.0.0.1", listen)).await.expect("connect");
                    let req = format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
                    s.write_all(req.as_bytes()).await.expect("write");
                    let mut buf = Vec::new();
                    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                // Each side listens on its own port, which is part of listener stat names.
                let port = format!("_{listen}");
                texts.push(p.admin().get("/stats/prometheus").await.text().replace(&port, "_PORT"));
                names.push(
                    p.admin()
                        .stats()
                        .await
                        .into_keys()
                        .map(|n| n.replace(&port, "_PORT"))
                        .collect::<std::collections::BTreeSet<_>>(),
                );
            }
            let (envoy, skiff) = (sample_keys(&texts[0]), sample_keys(&texts[1]));
            let mut differences = Vec::new();
            for (metric, samples) in &skiff {
                match envoy.get(metric) {
                    Some(e) if e != samples => differences.push(format!(
                        "{metric}: envoy {e:?}, skiff {samples:?}"
                    )),
                    Some(_) => {}
                    None => {}
                }
            }
            let shared = skiff.keys().filter(|m| envoy.contains_key(*m)).count();
            assert!(shared >= 5, "{what}: only {shared} metrics in common:\n{}", texts[1]);
            // Every stat skiff keeps, Envoy keeps too (skiff has fewer stats overall).
            // (Envoy creates its HTTP/2 codec stats with the first HTTP/2 connection, skiff
            // with the connection manager.)
            for n in names[1].iter().filter(|n| !n.starts_with("http2.")) {
                if !names[0].contains(n) {
                    differences.push(format!("{n} kept by skiff only"));
                }
            }
            assert!(
                differences.is_empty(),
                "{what}: {} differences:\n{}",
                differences.len(),
                differences.join("\n")
            );
        }
    })
    .await
}

/// A cluster's `alt_stat_name` (Istio gives every cluster one, ending in `;`): its stats,
/// `/clusters` and `%UPSTREAM_CLUSTER%` use it, `%UPSTREAM_CLUSTER_RAW%` the name.
#[tokio::test]
async fn alt_stat_name_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let up = EchoUpstream::start("u1").await;
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, listen) = (free_port(), free_port());
            let yaml = format!(
                r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {{text_format_source: {{inline_string: "UC=%UPSTREAM_CLUSTER% RAW=%UPSTREAM_CLUSTER_RAW%\n"}}}}
          route_config:
            virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: up
    alt_stat_name: "up_alt;"
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]
"#,
                up.port()
            );
            let p = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let mut s = TcpStream::connect(("127.0.0.1", listen)).await.expect("connect");
            seen.push(exchange(&mut s).await);
            drop(s);
            let line = p
                .wait_stdout_line(Duration::from_secs(5), |l| l.starts_with("UC="))
                .await;
            seen.push(line);
            let stats = p.admin().stats().await;
            for stat in ["upstream_rq_200", "upstream_rq_completed", "upstream_cx_total"] {
                seen.push(format!(
                    "{stat}: alt {:?}, name {:?}",
                    stats.get(&format!("cluster.up_alt;.{stat}")),
                    stats.get(&format!("cluster.up.{stat}"))
                ));
            }
            let clusters = p.admin().get("/clusters").await.text();
            seen.push(
                clusters
                    .lines()
                    .find(|l| l.contains("observability_name"))
                    .unwrap_or("")
                    .to_string(),
            );
            let prom = p.admin().get("/stats/prometheus").await.text();
            seen.push(
                prom.lines()
                    .find(|l| l.starts_with("envoy_cluster_upstream_rq_completed{"))
                    .unwrap_or("")
                    .to_string(),
            );
        }
        let (envoy, skiff) = seen.split_at(seen.len() / 2);
        assert_eq!(envoy, skiff);
    })
    .await
}

/// A bootstrap whose listener `limited` takes `limit` connections at a time (its runtime key,
/// in a static layer; an admin layer can change it), next to a listener `free`.
fn listener_limit_config(admin: u16, limited: u16, free: u16, limit: u32) -> String {
    let listener = |name: &str, port: u16| {
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
          route_config:
            virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
        )
    };
    format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
layered_runtime:
  layers:
  - name: static
    static_layer:
      envoy.resource_limits.listener.limited.connection_limit: {limit}
  - name: admin
    admin_layer: {{}}
static_resources:
  listeners:{}{}
"#,
        listener("limited", limited),
        listener("free", free)
    )
}

/// `envoy.resource_limits.listener.<name>.connection_limit`: past it a listener closes new
/// connections at once and counts them in `downstream_cx_overflow`; the limit follows the
/// runtime as it changes.
#[tokio::test]
async fn listener_connection_limit_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut outcomes = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, limited, free) = (free_port(), free_port(), free_port());
            let yaml = listener_limit_config(admin, limited, free, 2);
            let p = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let mut seen = Vec::new();
            let mut held = Vec::new();
            for port in [limited, limited, limited, free, free, free] {
                let mut s = TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect");
                tokio::time::sleep(Duration::from_millis(100)).await;
                let name = if port == limited { "limited" } else { "free" };
                seen.push(format!("{name}: {}", exchange(&mut s).await));
                held.push(s);
            }
            // Raised at run time: a third connection is taken.
            let r = p
                .admin()
                .post("/runtime_modify?envoy.resource_limits.listener.limited.connection_limit=3")
                .await;
            seen.push(format!("runtime_modify: {}", r.status));
            let mut s = TcpStream::connect(("127.0.0.1", limited))
                .await
                .expect("connect");
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen.push(format!("limited at 3: {}", exchange(&mut s).await));
            drop(s);
            drop(held);
            let stats = p.admin().stats().await;
            for port in [limited, free] {
                let stat = format!("listener.127.0.0.1_{port}.downstream_cx_overflow");
                let name = if port == limited { "limited" } else { "free" };
                seen.push(format!("{name} overflow: {:?}", stats.get(&stat)));
            }
            eprintln!("{}: {seen:#?}", kind.name());
            outcomes.push(seen);
        }
        assert_eq!(outcomes[0], outcomes[1], "Envoy first, then skiff");
        assert_eq!(
            outcomes[0][2], "limited: ",
            "the third connection is closed"
        );
    })
    .await
}
