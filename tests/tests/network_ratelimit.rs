//! `envoy.filters.network.ratelimit` (the rate limit service asked about each new connection)
//! side by side with Envoy 1.40, each proxy with a rate limit service of its own (`rls-server`,
//! whose answer each connection picks by its descriptor values) and a TCP echo upstream:
//! - descriptors whose values are formats of the connection as it opens (its addresses, a
//!   missing SNI), the domain and the call's `grpc-timeout`;
//! - `OK` (served), `OVER_LIMIT` (closed, in front of tcp_proxy and of the connection
//!   manager), an error and a call past its `timeout` (served, or closed under
//!   `failure_mode_deny`), a service cluster that does not exist;
//! - the service's `dynamic_metadata` in the connection's, as tcp_proxy's access log reads it;
//! - a `local_ratelimit` in front of it: a connection it turns away is never asked about;
//! - a `set_filter_state` on each side of it: the descriptors see the values of the filter in
//!   front only, and a connection turned away gets none of the values of the filter behind;
//! - the runtime keys `ratelimit.tcp_filter_enforcing` and `ratelimit.tcp_filter_enabled`;
//! - the stats `ratelimit.<stat_prefix>.*`, and what tcp_proxy and the upstream saw.

use std::time::Duration;

use skiff_tests::peer::Peer;
use skiff_tests::proxy::{run_cli, write_config, Kind, ProxyProcess};
use skiff_tests::upstream::{TcpMode, TcpUpstream};
use skiff_tests::{free_port, run_for, scratch_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RLS: &str = env!("CARGO_BIN_EXE_rls-server");

/// The listeners: name, descriptor value the service answers by, extra filter fields, the
/// filters in front, and the terminal filter (`tcp` or `http`).
const LISTENERS: &[(&str, &str, &str, &str, &str)] = &[
    ("ok", "plain", "", "", "tcp"),
    ("meta", "meta", "", "", "tcp"),
    ("over", "over", "", "", "tcp"),
    ("error", "error", "", "", "tcp"),
    ("deny", "error", "failure_mode_deny: true", "", "tcp"),
    ("slow", "slow", "timeout: 0.1s", "", "tcp"),
    ("gone", "plain", "", "", "tcp"),
    ("webok", "plain", "", "", "http"),
    ("webover", "over", "", "", "http"),
    (
        "order",
        "ordered",
        "",
        r#"
      - name: lrl
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: lrl
          token_bucket: {max_tokens: 1, fill_interval: 3600s}"#,
        "tcp",
    ),
    ("state", "plain", "", "", "tcp"),
    ("stateover", "over", "", "", "tcp"),
];

/// A `set_filter_state` filter that sets `key` to `value` on each new connection.
fn set_filter_state(key: &str, value: &str) -> String {
    format!(
        r#"
      - name: fs-{key}
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config
          on_new_connection:
          - {{object_key: {key}, factory_key: envoy.string, format_string: {{text_format_source: {{inline_string: "{value}"}}}}}}"#
    )
}

fn listener(
    (name, value, extra, front, terminal): (&str, &str, &str, &str, &str),
    port: u16,
    log: &str,
) -> String {
    let cluster = if name == "gone" { "nope" } else { "rls" };
    // The `state` listeners put a `set_filter_state` on each side of the filter: its
    // descriptors and the access log read both values.
    let state = name.starts_with("state");
    let (front, after, descriptor, logged) = if state {
        (
            set_filter_state("before", "b"),
            set_filter_state("after", "a"),
            r#"
          - entries:
            - {key: fs, value: "%FILTER_STATE(before:PLAIN)% %FILTER_STATE(after:PLAIN)%"}"#,
            " %FILTER_STATE(before:PLAIN)% %FILTER_STATE(after:PLAIN)%",
        )
    } else {
        (front.to_string(), String::new(), "", "")
    };
    let terminal = if terminal == "tcp" {
        format!(
            r#"
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: up
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{text_format_source: {{inline_string: "{name} %DYNAMIC_METADATA(envoy.filters.network.ratelimit)% %BYTES_RECEIVED% %BYTES_SENT%{logged}\n"}}}}"#
        )
    } else {
        format!(
            r#"
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: a
              domains: ["*"]
              routes: [{{match: {{prefix: /}}, direct_response: {{status: 200, body: {{inline_string: served}}}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
        )
    };
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:{front}
      - name: rl
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.ratelimit.v3.RateLimit
          stat_prefix: {name}
          domain: net
          {extra}
          descriptors:
          - entries:
            - {{key: peer, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}
            - {{key: sni, value: "%REQUESTED_SERVER_NAME%"}}
          - entries:
            - {{key: outcome, value: {value}}}
            - {{key: local, value: "at %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"}}{descriptor}
          rate_limit_service:
            transport_api_version: V3
            grpc_service: {{envoy_grpc: {{cluster_name: {cluster}}}}}{after}{terminal}"#
    )
}

fn config(admin: u16, ports: &[u16], upstream: u16, rls: u16, log: &str) -> String {
    let listeners: String = LISTENERS
        .iter()
        .zip(ports)
        .map(|(l, port)| listener(*l, *port, log))
        .collect();
    bootstrap(admin, &listeners, upstream, rls)
}

fn bootstrap(admin: u16, listeners: &str, upstream: u16, rls: u16) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
layered_runtime:
  layers:
  - name: admin
    admin_layer: {{}}
static_resources:
  listeners:{listeners}
  clusters:
  - name: up
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]}}
  - name: rls
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment: {{cluster_name: rls, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {rls}}}}}}}}}]}}]}}
"#
    )
}

/// What a client saw of one connection: the bytes echoed back, and how it ended. Both proxies
/// close a connection they turn away unread, so what the client sent makes the kernel reset
/// it; `quiet` sends nothing (a connection turned away at once would otherwise race its bytes).
async fn tcp_once(port: u16, quiet: bool) -> String {
    let mut s = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => return format!("connect failed: {:?}", e.kind()),
    };
    if !quiet {
        let _ = s.write_all(b"hello").await;
        let _ = s.shutdown().await;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) => break "eof".to_string(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => break format!("{:?}", e.kind()),
            Err(_) => break "open".to_string(),
        }
    };
    // A connection turned away with the client's bytes unread is reset, unless the proxy
    // closed it before they arrived (a race, in Envoy too): either way it is closed.
    if got.is_empty() && (end == "eof" || end == "ConnectionReset") {
        return "\"\" closed".to_string();
    }
    format!("{:?} {end}", String::from_utf8_lossy(&got))
}

/// What a client saw of one HTTP/1.1 request on its own connection.
async fn http_once(port: u16) -> String {
    let mut s = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => return format!("connect failed: {:?}", e.kind()),
    };
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let end = match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await {
        Ok(Ok(_)) => "eof".to_string(),
        Ok(Err(e)) => format!("{:?}", e.kind()),
        Err(_) => "open".to_string(),
    };
    let text = String::from_utf8_lossy(&got);
    let status = text.lines().next().unwrap_or("").to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    format!("{status:?} {body:?} {end}")
}

struct Side {
    kind: Kind,
    proxy: ProxyProcess,
    ports: Vec<u16>,
    up: TcpUpstream,
    service: Peer,
    log: std::path::PathBuf,
}

impl Side {
    fn port(&self, name: &str) -> u16 {
        let i = LISTENERS
            .iter()
            .position(|l| l.0 == name)
            .expect("listener");
        self.ports[i]
    }

    async fn visit(&self, name: &str) -> String {
        let (name, quiet) = match name.strip_suffix(" quietly") {
            Some(n) => (n, true),
            None => (name, false),
        };
        let http = LISTENERS.iter().any(|l| l.0 == name && l.4 == "http");
        let seen = if http {
            http_once(self.port(name)).await
        } else {
            tcp_once(self.port(name), quiet).await
        };
        format!("{name}: {seen}")
    }

    /// The service's requests so far (domain, descriptors, timeout), in order.
    fn asked(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .service
            .lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "request")
            .map(|v| format!("{} {} {}", v["domain"], v["descriptors"], v["grpc_timeout"]))
            .collect();
        out.sort();
        out
    }

    async fn stats(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, ..) in LISTENERS {
            for stat in [
                "total",
                "ok",
                "over_limit",
                "error",
                "failure_mode_allowed",
                "cx_closed",
                "active",
            ] {
                let key = format!("ratelimit.{name}.{stat}");
                let v = self.proxy.admin().stat(&key).await.unwrap_or(0);
                out.push(format!("{key}: {v}"));
            }
        }
        for name in ["ok", "over", "deny", "order", "state", "stateover"] {
            let key = format!("tcp.{name}.downstream_cx_total");
            let v = self.proxy.admin().stat(&key).await.unwrap_or(0);
            out.push(format!("{key}: {v}"));
        }
        for key in [
            "local_rate_limit.lrl.rate_limited",
            "http.webover.downstream_cx_total",
            "http.webover.downstream_rq_total",
        ] {
            let v = self.proxy.admin().stat(key).await.unwrap_or(0);
            out.push(format!("{key}: {v}"));
        }
        out
    }
}

async fn start(kind: Kind) -> Side {
    let up = TcpUpstream::start(TcpMode::Echo).await;
    let service = Peer::start(RLS, &["0"]).await;
    let log = scratch_dir("net-rls-log").join("access.log");
    let ports: Vec<u16> = LISTENERS.iter().map(|_| free_port()).collect();
    let yaml = config(
        free_port(),
        &ports,
        up.port(),
        service.port("port"),
        &log.display().to_string(),
    );
    let proxy = ProxyProcess::start(kind, &yaml, &[]).await;
    Side {
        kind,
        proxy,
        ports,
        up,
        service,
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_rate_limit_side_by_side_with_envoy() {
    run_for(Duration::from_secs(90), async {
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            sides.push(start(kind).await);
        }
        let visits = [
            "ok",
            "meta",
            "over",
            "error",
            "deny",
            "slow",
            "gone",
            "webok",
            "webover",
            "order",
            "order quietly",
            "over quietly",
            "state",
            "stateover quietly",
        ];
        let mut seen = Vec::new();
        for side in &sides {
            let mut mine = Vec::new();
            for name in visits {
                mine.push(side.visit(name).await);
            }
            seen.push(mine);
        }
        assert_eq!(seen[0], seen[1], "Envoy's, then skiff's");
        // The expected outcomes, so a change in both at once still fails.
        let want = [
            "ok: \"hello\" eof",
            "meta: \"hello\" eof",
            "over: \"\" closed",
            "error: \"hello\" eof",
            "deny: \"\" closed",
            "slow: \"hello\" eof",
            "gone: \"hello\" eof",
            "webok: \"HTTP/1.1 200 OK\" \"served\" eof",
            "webover: \"\" \"\" eof",
            "order: \"hello\" eof",
            "order: \"\" closed",
            "over: \"\" closed",
            "state: \"hello\" eof",
            "stateover: \"\" closed",
        ];
        assert_eq!(seen[1], want);

        // The runtime: first the verdicts stop closing, then the filter stops asking.
        let mut after = Vec::new();
        for side in &sides {
            let admin = side.proxy.admin();
            admin
                .post("/runtime_modify?ratelimit.tcp_filter_enforcing=0")
                .await;
            let not_enforced = side.visit("over").await;
            admin
                .post("/runtime_modify?ratelimit.tcp_filter_enabled=0")
                .await;
            let off = side.visit("deny").await;
            after.push((not_enforced, off));
        }
        assert_eq!(after[0], after[1], "Envoy's, then skiff's");
        assert_eq!(
            after[1],
            (
                "over: \"hello\" eof".to_string(),
                "deny: \"hello\" eof".to_string()
            )
        );

        let asked: Vec<_> = sides.iter().map(Side::asked).collect();
        assert_eq!(asked[0], asked[1], "Envoy's, then skiff's");
        assert_eq!(asked[1].len(), 13, "{:#?}", asked[1]);
        // A filter state value set by a filter after this one is not there yet.
        assert!(
            asked[1].iter().any(|a| a.contains(r#"["fs","b -"]"#)),
            "{:#?}",
            asked[1]
        );
        assert!(
            asked[1][0].contains(r#"[["peer","127.0.0.1"],["sni","-"]]"#)
                && asked[1][0].contains(r#"["local","at 127.0.0.1"]"#)
                && asked[1][0].contains("\"20m\""),
            "{:#?}",
            asked[1]
        );

        let mut stats = Vec::new();
        for side in &sides {
            side.proxy
                .admin()
                .wait_stat(
                    "tcp.deny.downstream_cx_total",
                    Duration::from_secs(5),
                    |v| v == 2,
                )
                .await;
            stats.push(side.stats().await);
        }
        assert_eq!(stats[0], stats[1], "Envoy's, then skiff's");

        let mut logs = Vec::new();
        for side in &sides {
            let lines = skiff_tests::sorted_log_lines(&side.log, 14).await;
            logs.push(lines);
        }
        assert_eq!(logs[0], logs[1], "Envoy's, then skiff's");
        assert!(
            logs[1]
                .iter()
                .any(|l| l == r#"meta {"n":7,"rls":"yes"} 5 5"#),
            "{:#?}",
            logs[1]
        );
        // A connection turned away never reaches the filters after the one that closed it.
        assert!(
            logs[1].iter().any(|l| l == "state - 5 5 b a")
                && logs[1].iter().any(|l| l == "stateover - 0 0 b -"),
            "{:#?}",
            logs[1]
        );
        let upstream: Vec<usize> = sides.iter().map(|s| s.up.accepted()).collect();
        assert_eq!(upstream[0], upstream[1]);
        for s in &sides {
            assert!(matches!(s.kind, Kind::Envoy | Kind::Skiff));
        }
    })
    .await
}

#[tokio::test]
async fn invalid_network_rate_limits_are_refused_by_both() {
    run_for(Duration::from_secs(60), async {
        let base = ("bad", "plain", "", "", "tcp");
        let cases: &[(&str, &str, &str)] = &[
            ("stat_prefix: bad", "stat_prefix: \"\"", "stat_prefix"),
            ("domain: net", "domain: \"\"", "domain"),
            (
                "descriptors:\n          - entries:\n            - {key: peer, value: \"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\"}",
                "descriptors:\n          - entries:\n            - {key: peer, value: \"%NOT_AN_OPERATOR%\"}",
                "descriptors[0].entries[0].value",
            ),
            (
                "{key: sni, value: \"%REQUESTED_SERVER_NAME%\"}",
                "{key: \"\", value: x}",
                "descriptors[0].entries[1].key",
            ),
            ("transport_api_version: V3", "transport_api_version: V2", "transport_api_version"),
        ];
        let one = listener(base, free_port(), "/dev/null");
        let good = bootstrap(free_port(), &one, free_port(), free_port());
        for kind in [Kind::Envoy, Kind::Skiff] {
            let cfg = write_config("net-rls", &good);
            let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
            assert_eq!(out.code, Some(0), "{kind:?} {}", out.output());
            for (from, to, field) in cases {
                assert!(good.contains(from), "{from}");
                let bad = good.replacen(from, to, 1);
                let cfg = write_config("net-rls", &bad);
                let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert_ne!(out.code, Some(0), "{kind:?} {to}: {}", out.output());
                if kind == Kind::Skiff {
                    assert!(out.output().contains(field), "{field}: {}", out.output());
                }
            }
            // Without descriptors.
            let start = good.find("          descriptors:").unwrap();
            let end = good.find("          rate_limit_service:").unwrap();
            let bad = format!("{}{}", &good[..start], &good[end..]);
            let cfg = write_config("net-rls", &bad);
            let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
            assert_ne!(out.code, Some(0), "{kind:?} no descriptors: {}", out.output());
            if kind == Kind::Skiff {
                assert!(out.output().contains("descriptors"), "{}", out.output());
            }
        }
    })
    .await
}
