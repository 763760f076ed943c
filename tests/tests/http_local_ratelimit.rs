//! `envoy.filters.http.local_ratelimit` and routes' `typed_per_filter_config` side by side with
//! Envoy 1.40: the connection manager's bucket, a route's own bucket, a route that turns the
//! filter off (`FilterConfig.disabled`) and one that turns on a filter disabled by default,
//! limits counted but not enforced, descriptors made by `rate_limits` actions (with their
//! `hits_addend` and `x_ratelimit_option`), the
//! `x-ratelimit-*` headers, route response headers on the local replies, and the filter's stats.
//! Also `CompressorPerRoute`: a route that turns compression off.

use std::time::Duration;

use skiff_tests::client;
use skiff_tests::proxy::{run_cli, write_config, Kind, ProxyProcess};
use skiff_tests::side_by_side::assert_same_response;
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for};

const LRL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";

fn listener(name: &str, port: u16, routes: &str, filters: &str) -> String {
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
          route_config:
            response_headers_to_add: [{{header: {{key: x-rc, value: "1"}}}}]
            virtual_hosts:
            - name: a
              domains: ["*"]
              routes:{routes}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
    )
}

fn config(admin: u16, ports: [u16; 4], upstream: u16) -> String {
    // 0: the connection manager's bucket (3 tokens, 503), a route's own (1 token), a route
    // without the filter, a route to a cluster that refuses connections.
    let own = format!(
        r#"
              - match: {{prefix: /own}}
                route: {{cluster: up}}
                typed_per_filter_config:
                  lrl:
                    "@type": {LRL}
                    stat_prefix: own
                    token_bucket: {{max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}}
                    filter_enabled: {{default_value: {{numerator: 100}}}}
                    filter_enforced: {{default_value: {{numerator: 100}}}}
              - match: {{prefix: /free}}
                route: {{cluster: up}}
                typed_per_filter_config:
                  lrl: {{"@type": {FILTER_CONFIG}, disabled: true}}
              - match: {{prefix: /dead}}
                route: {{cluster: dead}}
                response_headers_to_add: [{{header: {{key: x-dead, value: "1"}}}}]
              - match: {{prefix: /}}
                route: {{cluster: up}}
                response_headers_to_add: [{{header: {{key: x-route, value: "1"}}}}]"#
    );
    let limit = format!(
        r#"
          - name: lrl
            typed_config:
              "@type": {LRL}
              stat_prefix: lim
              status: {{code: 503}}
              token_bucket: {{max_tokens: 3, tokens_per_fill: 1, fill_interval: 60s}}
              filter_enabled: {{default_value: {{numerator: 100}}}}
              filter_enforced: {{default_value: {{numerator: 100}}}}
              response_headers_to_add: [{{header: {{key: x-limited, value: "yes"}}}}]
              enable_x_ratelimit_headers: DRAFT_VERSION_03"#
    );
    // 1: a filter disabled by default, turned on by one route, that counts without enforcing.
    let shadow_routes = format!(
        r#"
              - match: {{prefix: /on}}
                route: {{cluster: up}}
                typed_per_filter_config:
                  shadow: {{"@type": {FILTER_CONFIG}, config: {{}}}}
              - match: {{prefix: /}}
                route: {{cluster: up}}"#
    );
    let shadow = format!(
        r#"
          - name: shadow
            disabled: true
            typed_config:
              "@type": {LRL}
              stat_prefix: shadow
              token_bucket: {{max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}}
              filter_enabled: {{default_value: {{numerator: 100}}}}
              request_headers_to_add_when_not_enforced: [{{header: {{key: x-would-limit, value: "true"}}}}]"#
    );
    // 2: descriptors from the filter's own rate_limits: gold customers one request, ann two,
    // everyone else the default bucket's ten.
    let plain_route = r#"
              - match: {prefix: /}
                route: {cluster: up}"#;
    let descriptors = format!(
        r#"
          - name: desc
            typed_config:
              "@type": {LRL}
              stat_prefix: desc
              token_bucket: {{max_tokens: 10, tokens_per_fill: 1, fill_interval: 3600s}}
              filter_enabled: {{default_value: {{numerator: 100}}}}
              filter_enforced: {{default_value: {{numerator: 100}}}}
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              always_consume_default_token_bucket: false
              descriptors:
              - entries: [{{key: tier, value: gold}}]
                token_bucket: {{max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}}
              - entries: [{{key: user, value: ann}}]
                token_bucket: {{max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s}}
              - entries: [{{key: client, value: ""}}]
                token_bucket: {{max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s}}
              - entries: [{{key: heavy, value: h}}]
                token_bucket: {{max_tokens: 5, tokens_per_fill: 1, fill_interval: 3600s}}
              - entries: [{{key: quiet, value: q}}]
                token_bucket: {{max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s}}
              - entries: [{{key: free, value: f}}]
                token_bucket: {{max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}}
              - entries: [{{key: later, value: l}}]
                token_bucket: {{max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}}
              - entries: [{{key: weight, value: w}}]
                token_bucket: {{max_tokens: 4, tokens_per_fill: 1, fill_interval: 3600s}}
              max_dynamic_descriptors: 2
              rate_limits:
              - actions:
                - header_value_match:
                    descriptor_key: tier
                    descriptor_value: gold
                    headers: [{{name: x-tier, string_match: {{exact: gold}}}}]
              - actions:
                - request_headers: {{header_name: x-user, descriptor_key: user}}
              - actions:
                - request_headers: {{header_name: x-client, descriptor_key: client}}
              - actions:
                - request_headers: {{header_name: x-heavy, descriptor_key: heavy}}
                hits_addend: {{number: 3}}
              - actions:
                - request_headers: {{header_name: x-quiet, descriptor_key: quiet}}
                x_ratelimit_option: "OFF"
              - actions:
                - request_headers: {{header_name: x-free, descriptor_key: free}}
                hits_addend: {{number: 0}}
              - actions:
                - request_headers: {{header_name: x-later, descriptor_key: later}}
                apply_on_stream_done: true
              - actions:
                - request_headers: {{header_name: x-weight, descriptor_key: weight}}
                hits_addend: {{format: "%REQ(x-w)%"}}"#
    );
    // 3: compression, off on one route.
    let compress_routes = r#"
              - match: {prefix: /plain}
                route: {cluster: up}
                typed_per_filter_config:
                  gzip:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute
                    disabled: true
              - match: {prefix: /}
                route: {cluster: up}"#;
    let compress = r#"
          - name: gzip
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library:
                name: gzip
                typed_config: {"@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip}
              response_direction_config: {common_config: {content_type: [text/plain]}}"#;
    format!(
        r#"
node: {{id: node1, cluster: svc}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{}{}{}{}
  clusters:
  - name: up
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]}}
  - name: dead
    load_assignment: {{cluster_name: dead, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]}}
"#,
        listener("limits", ports[0], &own, &limit),
        listener("shadowed", ports[1], &shadow_routes, &shadow),
        listener("descriptors", ports[2], plain_route, &descriptors),
        listener("compress", ports[3], compress_routes, compress),
    )
}

/// The listener, path and headers of a request.
type Case = (usize, &'static str, &'static [(&'static str, &'static str)]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limits_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let mut opts = EchoOptions::named("up");
            opts.body = Some("a compressible body ".repeat(10));
            let up = EchoUpstream::with_options(opts).await;
            let admin = free_port();
            let ports = [free_port(), free_port(), free_port(), free_port()];
            let p = ProxyProcess::start(kind, &config(admin, ports, up.port()), &[]).await;
            sides.push((p, ports, up));
        }
        let cases: &[Case] = &[
            // The connection manager's bucket: three go, the fourth is limited; the route's
            // own bucket is apart, and a route without the filter is never limited.
            (0, "/a", &[]),
            (0, "/own", &[]),
            (0, "/a", &[]),
            (0, "/a", &[]),
            (0, "/a", &[]),
            (0, "/own", &[]),
            (0, "/free", &[]),
            (0, "/free", &[]),
            (0, "/dead", &[]),
            // Disabled by default: counted only where the route turns it on, never enforced.
            (1, "/other", &[]),
            (1, "/on", &[]),
            (1, "/on", &[]),
            (1, "/other", &[]),
            // Descriptors.
            (2, "/", &[("x-tier", "gold")]),
            (2, "/", &[("x-tier", "gold")]),
            (2, "/", &[("x-user", "ann")]),
            (2, "/", &[("x-user", "ann")]),
            (2, "/", &[("x-user", "ann")]),
            (2, "/", &[("x-user", "bob")]),
            (2, "/", &[("x-tier", "silver")]),
            (2, "/", &[("x-user", "ann"), ("x-tier", "gold")]),
            // A wildcard: a bucket of two per client, at most two clients' buckets kept (the
            // least recently used goes, and its client starts again with a full one).
            (2, "/", &[("x-client", "a")]),
            (2, "/", &[("x-client", "a")]),
            (2, "/", &[("x-client", "a")]),
            (2, "/", &[("x-client", "b")]),
            (2, "/", &[("x-client", "b")]),
            (2, "/", &[("x-client", "b")]),
            (2, "/", &[("x-client", "c")]),
            (2, "/", &[("x-client", "a")]),
            (2, "/", &[("x-client", "b")]),
            (2, "/", &[("x-client", "c")]),
            (2, "/", &[("x-client", "c")]),
            // hits_addend: three tokens of five a request; zero, a refusal every time (Envoy's
            // bucket consumed nothing); x_ratelimit_option OFF: no x-ratelimit-* for that
            // descriptor.
            (2, "/", &[("x-heavy", "h")]),
            (2, "/", &[("x-heavy", "h")]),
            (2, "/", &[("x-free", "f")]),
            (2, "/", &[("x-free", "f")]),
            (2, "/", &[("x-quiet", "q")]),
            (2, "/", &[("x-quiet", "q")]),
            (2, "/", &[("x-quiet", "q")]),
            // A policy kept for the stream's end is never applied by a local filter; hits
            // from a header, a descriptor without a number dropped (the default bucket then).
            (2, "/", &[("x-later", "l")]),
            (2, "/", &[("x-later", "l")]),
            (2, "/", &[("x-weight", "w"), ("x-w", "3")]),
            (2, "/", &[("x-weight", "w"), ("x-w", "2")]),
            (2, "/", &[("x-weight", "w"), ("x-w", "1")]),
            (2, "/", &[("x-weight", "w"), ("x-w", "zz")]),
            // Compression on one route and not the other.
            (3, "/z", &[("accept-encoding", "gzip")]),
            (3, "/plain", &[("accept-encoding", "gzip")]),
        ];
        for (listener, path, headers) in cases {
            let what = format!("{path} {headers:?} on listener {listener}");
            let mut got = Vec::new();
            for (p, ports, up) in &sides {
                let before = up.rec.requests().len();
                let mut req = client::request("GET", path, "a", bytes::Bytes::new());
                for (k, v) in *headers {
                    req.headers_mut().insert(
                        http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                        http::HeaderValue::from_str(v).expect("value"),
                    );
                }
                let r = client::http1_once(&format!("127.0.0.1:{}", ports[*listener]), req)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {}: {e}", p.kind.name()));
                let sent = up.rec.requests();
                let would = sent[before..]
                    .iter()
                    .any(|r| r.headers.iter().any(|(k, _)| k == "x-would-limit"));
                got.push((r, sent.len() - before, would));
            }
            if *listener == 3 {
                // Compressed bodies differ byte for byte between zlib builds: the choice is
                // what must agree.
                for h in ["content-encoding", "vary", "content-length"] {
                    assert_eq!(
                        got[0].0.header(h),
                        got[1].0.header(h),
                        "{what}: {h} (Envoy, skiff)"
                    );
                }
            } else {
                assert_same_response(&what, &got[0].0, &got[1].0);
            }
            assert_eq!(
                (got[0].1, got[0].2),
                (got[1].1, got[1].2),
                "{what}: requests upstream, with x-would-limit (Envoy, skiff)"
            );
        }
        let mut stats = Vec::new();
        for (p, _, _) in &sides {
            stats.push(p.admin().stats_containing(".http_local_rate_limit.").await);
        }
        assert!(!stats[0].is_empty(), "Envoy has the filter's stats");
        assert_eq!(stats[0], stats[1], "local rate limit stats (Envoy, skiff)");
    })
    .await;
}

/// A `limit` in the local filter's own `rate_limits` is refused by both, with Envoy's words.
#[tokio::test]
async fn a_limit_in_the_local_filters_own_rate_limits_is_refused_by_both() {
    run_for(Duration::from_secs(30), async {
        let listen = free_port();
        let yaml = format!(
            r#"
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          route_config: {{virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]}}]}}
          http_filters:
          - name: lrl
            typed_config:
              "@type": {LRL}
              stat_prefix: lrl
              token_bucket: {{max_tokens: 1, tokens_per_fill: 1, fill_interval: 1s}}
              descriptors:
              - entries: [{{key: generic_key, value: a}}]
                token_bucket: {{max_tokens: 1, tokens_per_fill: 1, fill_interval: 1s}}
              rate_limits:
              - actions: [{{generic_key: {{descriptor_value: a}}}}]
                limit: {{dynamic_metadata: {{metadata_key: {{key: ns, path: [{{key: field}}]}}}}}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: up
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]}}
"#
        );
        let cfg = write_config("lrl-limit", &yaml);
        for kind in [Kind::Envoy, Kind::Skiff] {
            let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
            assert_ne!(out.code, Some(0), "{}: {}", kind.name(), out.output());
            assert!(
                out.output().contains("'limit' field is not supported"),
                "{}: {}",
                kind.name(),
                out.output()
            );
        }
    })
    .await;
}
