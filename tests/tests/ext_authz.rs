//! `envoy.filters.http.ext_authz` side by side with Envoy 1.40, each proxy with an
//! authorization service of its own (`authz-server`, a real gRPC and HTTP server whose verdict
//! each request picks with its `x-authz` header):
//! - gRPC checks: what the `CheckRequest` carries (method, path, host, scheme, protocol, size,
//!   headers as `allowed_headers`/`disallowed_headers` let them through, context extensions
//!   merged from the virtual host and the route, the route's metadata of the listed
//!   namespaces); an allowed request's headers set, appended and removed, and the response's
//!   headers; a denial's status, headers and body, or 403 without them; an error and a check
//!   past its timeout (403, `status_on_error`, or let through under `failure_mode_allow` with
//!   `x-envoy-auth-failure-mode-allowed`); a route that turns the filter off; `filter_enabled`;
//! - HTTP checks: the request the service gets (the client's method and path after
//!   `path_prefix`, the headers allowed and added), `allowed_upstream_headers`,
//!   `allowed_upstream_headers_to_append`, `allowed_client_headers_on_success`,
//!   `allowed_client_headers`, a denial and a 5xx from the service;
//! - what the upstream received, the access log's flags and details, and the stats
//!   (`http.<prefix>.ext_authz.*`, `cluster.<c>.ext_authz.*`, the denials charged to the
//!   route's cluster).

use std::time::Duration;

use skiff_tests::client;
use skiff_tests::peer::Peer;
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::side_by_side::assert_same_response;
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for, scratch_dir};

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz-server");
const EXT_AUTHZ: &str = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";

fn listener(name: &str, port: u16, routes: &str, filter: &str, log: &str) -> String {
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
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{text_format_source: {{inline_string: "{name} %REQ(:PATH)% %REQ(X-AUTHZ)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}}}
          route_config:
            virtual_hosts:
            - name: a
              domains: ["*"]
              typed_per_filter_config:
                authz:
                  "@type": {PER_ROUTE}
                  check_settings: {{context_extensions: {{from: vhost, level: vhost}}}}
              routes:{routes}
          http_filters:
          - name: authz
            typed_config:
              "@type": {EXT_AUTHZ}
              transport_api_version: V3{filter}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
    )
}

fn config(admin: u16, ports: [u16; 5], upstream: u16, service: &Peer, log: &str) -> String {
    let routes = format!(
        r#"
              - match: {{prefix: /off}}
                route: {{cluster: up}}
                typed_per_filter_config:
                  authz: {{"@type": {PER_ROUTE}, disabled: true}}
              - match: {{prefix: /ext}}
                route: {{cluster: up}}
                metadata:
                  filter_metadata:
                    gateway: {{policy: strict, n: 2}}
                    other: {{hidden: true}}
                typed_per_filter_config:
                  authz:
                    "@type": {PER_ROUTE}
                    check_settings: {{context_extensions: {{level: route}}}}
              - match: {{prefix: /}}
                route: {{cluster: up}}"#
    );
    let plain = r#"
              - match: {prefix: /}
                route: {cluster: up}"#;
    // 0: gRPC, every header but x-secret, 250 ms.
    let grpc0 = r#"
              grpc_service: {envoy_grpc: {cluster: authz}, timeout: 0.25s}
              disallowed_headers: {patterns: [{exact: x-secret}]}
              route_metadata_context_namespaces: [gateway]"#
        .replace("cluster: authz", "cluster_name: authz");
    // 1: gRPC, a few headers, failing open with the header, its own stat prefix.
    let grpc1 = r#"
              grpc_service: {envoy_grpc: {cluster_name: authz}, timeout: 0.25s}
              failure_mode_allow: true
              failure_mode_allow_header_add: true
              stat_prefix: one
              allowed_headers: {patterns: [{exact: x-authz}, {prefix: x-keep-}]}"#;
    // 2: HTTP, with the headers it lets through.
    let http2 = r#"
              status_on_error: {code: 503}
              allowed_headers: {patterns: [{exact: x-authz}, {exact: x-keep, ignore_case: true}]}
              http_service:
                path_prefix: /check
                server_uri: {uri: "http://authz.example/", cluster: authzh, timeout: 0.25s}
                authorization_request:
                  headers_to_add: [{key: x-from-proxy, value: "yes"}]
                authorization_response:
                  allowed_upstream_headers: {patterns: [{exact: x-authz-added}]}
                  allowed_upstream_headers_to_append: {patterns: [{exact: x-other}]}
                  allowed_client_headers_on_success: {patterns: [{exact: x-authz-resp}]}
                  allowed_client_headers: {patterns: [{exact: x-denied}]}"#;
    // 3: HTTP, denials' headers not filtered.
    let http3 = r#"
              allowed_headers: {patterns: [{exact: x-authz}]}
              http_service:
                server_uri: {uri: "http://authz.example/", cluster: authzh, timeout: 0.25s}"#;
    // 4: checked for no request (filter_enabled 0%).
    let off = r#"
              grpc_service: {envoy_grpc: {cluster_name: authz}}
              filter_enabled: {default_value: {numerator: 0}}"#;
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{}{}{}{}{}
  clusters:
  - name: up
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]}}
  - name: authzh
    load_assignment: {{cluster_name: authzh, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]}}
  - name: authz
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment: {{cluster_name: authz, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]}}
"#,
        listener("l0", ports[0], &routes, &grpc0, log),
        listener("l1", ports[1], plain, grpc1, log),
        listener("l2", ports[2], plain, http2, log),
        listener("l3", ports[3], plain, http3, log),
        listener("l4", ports[4], plain, off, log),
        service.port("http"),
        service.port("grpc"),
    )
}

type Case = (
    usize,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The headers every request carries, to be set, appended to, removed, or kept from the
/// service.
const COMMON: &[(&str, &str)] = &[
    ("x-remove-me", "1"),
    ("x-authz-appended", "a"),
    ("x-secret", "s"),
    ("x-keep-this", "k"),
    ("x-keep", "K"),
    ("authorization", "Bearer t"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_checks_requests_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let up = EchoUpstream::with_options(EchoOptions::named("up")).await;
            let service = Peer::start(AUTHZ, &[]).await;
            let log = scratch_dir("authz-log").join("access.log");
            let ports = [
                free_port(),
                free_port(),
                free_port(),
                free_port(),
                free_port(),
            ];
            let yaml = config(
                free_port(),
                ports,
                up.port(),
                &service,
                &log.display().to_string(),
            );
            let p = ProxyProcess::start(kind, &yaml, &[]).await;
            sides.push((p, ports, up, service, log));
        }
        let cases: &[Case] = &[
            (0, "GET", "/a?q=1", &[("x-authz", "allow")]),
            (
                0,
                "POST",
                "/a",
                &[("x-authz", "allow"), ("content-length", "0")],
            ),
            (0, "GET", "/a", &[("x-authz", "deny")]),
            (0, "GET", "/a", &[("x-authz", "deny-plain")]),
            (0, "GET", "/a", &[("x-authz", "error")]),
            (0, "GET", "/a", &[("x-authz", "slow")]),
            (0, "GET", "/ext", &[("x-authz", "allow")]),
            (0, "GET", "/off", &[("x-authz", "deny")]),
            (1, "GET", "/b", &[("x-authz", "allow")]),
            (1, "GET", "/b", &[("x-authz", "deny")]),
            (1, "GET", "/b", &[("x-authz", "error")]),
            (2, "GET", "/c?x=y", &[("x-authz", "allow")]),
            (2, "DELETE", "/c", &[("x-authz", "deny")]),
            (2, "GET", "/c", &[("x-authz", "deny-plain")]),
            (2, "GET", "/c", &[("x-authz", "error")]),
            (2, "GET", "/c", &[("x-authz", "slow")]),
            (3, "GET", "/d", &[("x-authz", "deny")]),
            (3, "GET", "/d", &[("x-authz", "allow")]),
            (4, "GET", "/e", &[("x-authz", "deny")]),
        ];
        for (listener, method, path, headers) in cases {
            let what = format!("{method} {path} {headers:?} on listener {listener}");
            let mut got = Vec::new();
            for (p, ports, up, service, _) in &sides {
                let before = (up.rec.requests().len(), service.lines().len());
                let mut req = client::request(method, path, "a", bytes::Bytes::new());
                for (k, v) in COMMON.iter().chain(headers.iter()) {
                    req.headers_mut().append(
                        http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                        http::HeaderValue::from_str(v).expect("value"),
                    );
                }
                let r = client::http1_once(&format!("127.0.0.1:{}", ports[*listener]), req)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {}: {e}", p.kind.name()));
                let sent: Vec<Vec<(String, String)>> = up.rec.requests()[before.0..]
                    .iter()
                    .map(|r| {
                        let mut h: Vec<(String, String)> = r
                            .headers
                            .iter()
                            .filter(|(k, _)| {
                                k.starts_with("x-")
                                    && k != "x-request-id"
                                    && k != "x-forwarded-proto"
                            })
                            .cloned()
                            .collect();
                        h.sort();
                        h
                    })
                    .collect();
                if headers.contains(&("x-authz", "slow")) {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
                let asked: Vec<serde_json::Value> = service
                    .lines_after(before.1, Duration::from_millis(300))
                    .await
                    .iter()
                    .map(|l| {
                        let mut v: serde_json::Value = serde_json::from_str(l).expect("JSON");
                        // Per request: its id, and the port of this proxy's listener.
                        if let Some(h) = v["headers"].as_array_mut() {
                            h.retain(|p| p[0] != "x-request-id");
                            for p in h.iter_mut() {
                                if p[0] == ":authority" || p[0] == "host" {
                                    p[1] = "a".into();
                                }
                            }
                        }
                        if v["host"].is_string() {
                            v["host"] = "a".into();
                        }
                        v
                    })
                    .collect();
                got.push((r, sent, asked));
            }
            assert_same_response(&what, &got[0].0, &got[1].0);
            for h in [
                "x-authz-resp",
                "x-denied",
                "www-authenticate",
                "x-other",
                "content-type",
            ] {
                assert_eq!(
                    got[0].0.header(h),
                    got[1].0.header(h),
                    "{what}: {h} (Envoy, skiff)"
                );
            }
            assert_eq!(
                got[0].1, got[1].1,
                "{what}: what the upstream got (Envoy, skiff)"
            );
            assert_eq!(
                got[0].2, got[1].2,
                "{what}: what the authorization service got (Envoy, skiff)"
            );
        }
        let mut stats = Vec::new();
        let mut logs = Vec::new();
        for (p, _, _, _, log) in &sides {
            let mut s = p.admin().stats_containing("ext_authz").await;
            for part in [
                "cluster.up.internal.",
                "cluster.up.upstream_rq_4",
                "cluster.up.upstream_rq_5",
            ] {
                s.extend(
                    p.admin()
                        .stats_containing(part)
                        .await
                        .into_iter()
                        .filter(|(k, v)| k.starts_with(part) && v != "0"),
                );
            }
            s.retain(|(k, _)| !k.contains("upstream_rq_time"));
            s.sort();
            s.dedup();
            stats.push(s);
            logs.push(skiff_tests::sorted_log_lines(log, cases.len()).await);
        }
        assert!(
            stats[0]
                .iter()
                .any(|(k, _)| k == "cluster.up.ext_authz.denied"),
            "Envoy has the filter's stats: {:?}",
            stats[0]
        );
        assert_eq!(stats[0], stats[1], "stats (Envoy, skiff)");
        assert_eq!(logs[0], logs[1], "access log lines (Envoy, skiff)");
    })
    .await;
}
