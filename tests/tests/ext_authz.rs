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
//!   `path_prefix`, the headers allowed and added), a flaky service's checks retried under
//!   `http_service.retry_policy`, `allowed_upstream_headers`,
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
    listener_after(name, port, routes, "", filter, log)
}

/// A listener whose connection manager runs the `before` filters, then ext_authz.
fn listener_after(
    name: &str,
    port: u16,
    routes: &str,
    before: &str,
    filter: &str,
    log: &str,
) -> String {
    listener_with(name, port, routes, before, filter, log, "")
}

/// [`listener_after`], with more of the connection manager's fields (`hcm`, YAML at its
/// indentation).
fn listener_with(
    name: &str,
    port: u16,
    routes: &str,
    before: &str,
    filter: &str,
    log: &str,
    hcm: &str,
) -> String {
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}{hcm}
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
{before}          - name: authz
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
    let listeners = [
        listener("l0", ports[0], &routes, &grpc0, log),
        listener("l1", ports[1], plain, grpc1, log),
        listener("l2", ports[2], plain, http2, log),
        listener("l3", ports[3], plain, http3, log),
        listener("l4", ports[4], plain, off, log),
    ];
    bootstrap(admin, &listeners, upstream, service)
}

/// The bootstrap of these listeners, with the upstream `up` and the service's clusters
/// (`authz` over gRPC, `authzh` over HTTP).
fn bootstrap(admin: u16, listeners: &[String], upstream: u16, service: &Peer) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{}
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
        listeners.concat(),
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

/// One proxy of a side-by-side run: the proxy, its listeners' ports, its upstream, its
/// authorization service and its access log.
type Side<const N: usize> = (
    ProxyProcess,
    [u16; N],
    EchoUpstream,
    Peer,
    std::path::PathBuf,
);

/// Starts Envoy and skiff, each with an upstream and an authorization service of its own,
/// on the configuration `config(admin, ports, upstream, service, log)` makes.
async fn sides<const N: usize>(
    config: impl Fn(u16, [u16; N], u16, &Peer, &str) -> String,
) -> Vec<Side<N>> {
    let mut sides = Vec::new();
    for kind in [Kind::Envoy, Kind::Skiff] {
        let up = EchoUpstream::with_options(EchoOptions::named("up")).await;
        let service = Peer::start(AUTHZ, &[]).await;
        let log = scratch_dir("authz-log").join("access.log");
        let ports = [0; N].map(|_| free_port());
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
    sides
}

/// Sends the request to each side's listener and checks that the client, the upstream and the
/// authorization service see the same on both.
async fn same_exchange<const N: usize>(
    sides: &[Side<N>],
    (listener, method, path, headers): &Case,
    body: &'static str,
) {
    let what = format!(
        "{method} {path} {headers:?} ({} body bytes) on listener {listener}",
        body.len()
    );
    let mut got = Vec::new();
    for (p, ports, up, service, _) in sides {
        let before = (up.rec.requests().len(), service.lines().len());
        let mut req = client::request(
            method,
            path,
            "a",
            bytes::Bytes::from_static(body.as_bytes()),
        );
        for (k, v) in COMMON.iter().chain(headers.iter()) {
            req.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        let r = client::http1_once(&format!("127.0.0.1:{}", ports[*listener]), req)
            .await
            .unwrap_or_else(|e| panic!("{what}: {}: {e}", p.kind.name()));
        let sent: Vec<(Vec<(String, String)>, bytes::Bytes)> = up.rec.requests()[before.0..]
            .iter()
            .map(|r| {
                let mut h: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .filter(|(k, _)| {
                        (k.starts_with("x-") && k != "x-request-id" && k != "x-forwarded-proto")
                            || k == "content-length"
                    })
                    .cloned()
                    .collect();
                h.sort();
                (h, r.body.clone())
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

/// Checks that both sides counted the same and logged the same `lines`.
async fn same_stats_and_logs<const N: usize>(sides: &[Side<N>], lines: usize, extra: &[&str]) {
    let mut stats = Vec::new();
    let mut logs = Vec::new();
    for (p, _, _, _, log) in sides {
        let mut s = p.admin().stats_containing("ext_authz").await;
        for part in [
            "cluster.up.internal.",
            "cluster.up.upstream_rq_4",
            "cluster.up.upstream_rq_5",
        ]
        .iter()
        .chain(extra)
        {
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
        logs.push(skiff_tests::sorted_log_lines(log, lines).await);
    }
    assert!(
        stats[0].iter().any(|(k, _)| k.contains("ext_authz.")),
        "Envoy has the filter's stats: {:?}",
        stats[0]
    );
    assert_eq!(stats[0], stats[1], "stats (Envoy, skiff)");
    assert_eq!(logs[0], logs[1], "access log lines (Envoy, skiff)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_checks_requests_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        let sides = sides(config).await;
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
        for case in cases {
            same_exchange(&sides, case, "").await;
        }
        same_stats_and_logs(&sides, cases.len(), &[]).await;
    })
    .await;
}

/// Istio's CUSTOM action: an RBAC filter's shadow rules name the policy in the stream's
/// dynamic metadata, and ext_authz checks only the requests whose metadata names one
/// (`filter_enabled_metadata`), with their bodies.
const ISTIO_CUSTOM_RBAC: &str = r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              shadow_rules:
                action: DENY
                policies:
                  istio-ext-authz-ns[t]-policy[p]-rule[0]:
                    permissions: [{url_path: {path: {prefix: /custom}}}]
                    principals: [{any: true}]
              shadow_rules_stat_prefix: istio_ext_authz_
"#;

fn body_config(admin: u16, ports: [u16; 8], upstream: u16, service: &Peer, log: &str) -> String {
    let custom_routes = format!(
        r#"
              - match: {{prefix: /custom/nobody}}
                route: {{cluster: up}}
                typed_per_filter_config:
                  authz:
                    "@type": {PER_ROUTE}
                    check_settings: {{disable_request_body_buffering: true}}
              - match: {{prefix: /}}
                route: {{cluster: up}}"#
    );
    let plain = r#"
              - match: {prefix: /}
                route: {cluster: up}"#;
    // 0: Istio's CUSTOM action, the whole body up to 16 bytes.
    let custom = r#"
              grpc_service: {envoy_grpc: {cluster_name: authz, authority: authz.local}, timeout: 0.25s}
              with_request_body: {max_request_bytes: 16}
              filter_enabled_metadata:
                filter: envoy.filters.http.rbac
                path: [{key: istio_ext_authz_shadow_effective_policy_id}]
                value: {string_match: {prefix: istio-ext-authz}}"#;
    // 7: the whole body up to 16 bytes, for every request.
    let custom_body_only = r#"
              grpc_service: {envoy_grpc: {cluster_name: authz}, timeout: 0.25s}
              with_request_body: {max_request_bytes: 16}"#;
    // 1: gRPC, the first 8 bytes as bytes.
    let partial = r#"
              grpc_service: {envoy_grpc: {cluster_name: authz}, timeout: 0.25s}
              with_request_body: {max_request_bytes: 8, allow_partial_message: true, pack_as_bytes: true}"#;
    // 2: HTTP, the first 8 bytes.
    let http = r#"
              allowed_headers: {patterns: [{exact: x-authz}]}
              with_request_body: {max_request_bytes: 8, allow_partial_message: true}
              http_service:
                server_uri: {uri: "http://authz.example/", cluster: authzh, timeout: 0.25s}"#;
    // 3: off for every request, which is then denied.
    let deny_off = r#"
              grpc_service: {envoy_grpc: {cluster_name: authz}}
              filter_enabled: {default_value: {numerator: 0}}
              deny_at_disable: {default_value: true, runtime_key: authz.deny}"#;
    // 4: the RBAC filter's enforced verdict in the metadata turns the check on.
    let enforced = r#"
              grpc_service: {envoy_grpc: {cluster_name: authz}, timeout: 0.25s}
              filter_enabled_metadata:
                filter: envoy.filters.http.rbac
                path: [{key: enforced_engine_result}]
                value: {string_match: {exact: allowed}}"#;
    // 5, 6: HTTP checks retried (a flaky service fails every other check).
    let retried = |on: &str| {
        format!(
            r#"
              allowed_headers: {{patterns: [{{exact: x-authz}}]}}
              http_service:
                server_uri: {{uri: "http://authz.example/", cluster: authzh, timeout: 2s}}
                retry_policy: {{num_retries: 2, retry_on: "{on}", retry_back_off: {{base_interval: 0.01s, max_interval: 0.02s}}}}"#
        )
    };
    // RBAC denying /admin, and callers whose `x-role` (put into the metadata) is `blocked`.
    let rbac_enforced = r#"          - name: envoy.filters.http.header_to_metadata
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config
              request_rules:
              - header: x-role
                on_header_present: {metadata_namespace: roles, key: role}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  no-admin:
                    permissions: [{url_path: {path: {prefix: /admin}}}]
                    principals: [{any: true}]
                  not-blocked:
                    permissions: [{any: true}]
                    principals:
                    - metadata:
                        filter: roles
                        path: [{key: role}]
                        value: {string_match: {exact: blocked}}
"#;
    let listeners = [
        listener_after(
            "b0",
            ports[0],
            &custom_routes,
            ISTIO_CUSTOM_RBAC,
            custom,
            log,
        ),
        listener("b1", ports[1], plain, partial, log),
        listener("b2", ports[2], plain, http, log),
        listener("b3", ports[3], plain, deny_off, log),
        listener_after("b4", ports[4], plain, rbac_enforced, enforced, log),
        listener("b5", ports[5], plain, &retried("5xx"), log),
        listener("b6", ports[6], plain, &retried("connect-failure"), log),
        // 7: a body that never comes, under the stream's request_timeout.
        listener_with(
            "b7",
            ports[7],
            plain,
            "",
            custom_body_only,
            log,
            "\n          request_timeout: 0.5s",
        ),
    ];
    bootstrap(admin, &listeners, upstream, service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_checks_bodies_and_istio_custom_policies_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        let sides = sides(body_config).await;
        let allow: &[(&str, &str)] = &[("x-authz", "allow")];
        let deny: &[(&str, &str)] = &[("x-authz", "deny")];
        let cases: &[(Case, &str)] = &[
            // The policy's requests, with their bodies.
            ((0, "POST", "/custom/a", allow), "hello"),
            ((0, "POST", "/custom/a", deny), "hello"),
            ((0, "POST", "/custom/a", allow), "sixteen bytes..."),
            ((0, "POST", "/custom/a", allow), "seventeen bytes.."),
            ((0, "GET", "/custom/a", allow), ""),
            ((0, "POST", "/custom/nobody", allow), "hello"),
            (
                (
                    0,
                    "POST",
                    "/custom/a",
                    &[("x-authz", "allow"), ("x-envoy-auth-partial-body", "1")],
                ),
                "hi",
            ),
            // Not the policy's: not checked.
            ((0, "POST", "/other", deny), "hello"),
            // Cut to the first 8 bytes.
            ((1, "POST", "/p", allow), "twenty bytes of body"),
            ((1, "POST", "/p", allow), "eight b."),
            ((1, "POST", "/p", deny), "short"),
            ((2, "POST", "/h", allow), "twenty bytes of body"),
            ((2, "POST", "/h", deny), "short"),
            ((3, "GET", "/d", allow), ""),
            ((4, "GET", "/x", deny), ""),
            ((4, "GET", "/admin", allow), ""),
            (
                (
                    4,
                    "GET",
                    "/x",
                    &[("x-authz", "allow"), ("x-role", "blocked")],
                ),
                "",
            ),
            (
                (
                    4,
                    "GET",
                    "/x",
                    &[("x-authz", "allow"), ("x-role", "reader")],
                ),
                "",
            ),
            // Retried: a failed check, then an allowed one.
            ((5, "GET", "/r", &[("x-authz", "flaky")]), ""),
            ((5, "POST", "/r", &[("x-authz", "flaky")]), "a body"),
            ((6, "GET", "/r", &[("x-authz", "flaky")]), ""),
        ];
        for (case, body) in cases {
            same_exchange(&sides, case, body).await;
        }
        // A body that never comes: the stream's request_timeout answers while the filter
        // waits for it.
        let mut timed = Vec::new();
        for (p, ports, ..) in &sides {
            let r = client::raw_exchange(
                &format!("127.0.0.1:{}", ports[7]),
                b"POST /slow HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabc",
                Duration::from_secs(3),
            )
            .await;
            let text = r.text();
            let status = text.lines().next().unwrap_or("").to_string();
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            timed.push((p.kind.name(), status, body, r.closed));
        }
        assert_eq!(
            (&timed[0].1, &timed[0].2, timed[0].3),
            (&timed[1].1, &timed[1].2, timed[1].3),
            "a body that never comes (Envoy, skiff)"
        );
        assert!(timed[0].1.contains("408"), "Envoy's answer: {timed:?}");
        same_stats_and_logs(
            &sides,
            cases.len() + 1,
            &[
                "http.b0.rbac.",
                "http.b0.downstream_rq_too_large",
                "http.b4.rbac.",
                "cluster.authzh.upstream_rq_retry",
                "http.b7.downstream_rq_timeout",
            ],
        )
        .await;
        // The flaky checks were retried (and so allowed) on both.
        for (p, ..) in &sides {
            let retries = p.admin().counter("cluster.authzh.upstream_rq_retry").await;
            assert!(retries >= 2, "{}: {retries} retries", p.kind.name());
        }
    })
    .await;
}
