//! `envoy.filters.http.ratelimit` (the global rate limit service) and the route API's
//! `rate_limits` side by side with Envoy 1.40, each proxy with a rate limit service of its own
//! (`rls-server`, a real gRPC server whose answer each request picks by its descriptor values):
//! - which descriptors a request makes: the route's (of the filter's stage), the virtual
//!   host's when the route has none, both with `include_vh_rate_limits`, a route's
//!   `RateLimitPerRoute` (its own `rate_limits` and `domain`, `vh_rate_limits: IGNORE`), the
//!   filter's own `rate_limits`; none for a redirect, a route to a missing cluster, or when an
//!   action finds nothing;
//! - what the service says: `OK` (its request and response headers added), `OVER_LIMIT` (429,
//!   `x-envoy-ratelimited`, the service's headers and body, the filter's
//!   `response_headers_to_add`, `x-ratelimit-*`), an error and a call past its `timeout` (let
//!   through, or answered with `status_on_error` under `failure_mode_deny`), a service cluster
//!   that does not exist; `request_type`, `rate_limited_status`,
//!   `disable_x_envoy_ratelimited_header`;
//! - each proxy's requests to its service (domain, descriptors, `grpc-timeout`), what the
//!   upstream received, the response flags and details in the access log, and the stats
//!   (`cluster.<c>.ratelimit.*`, the 429s charged to the route's cluster).
//! - actions reading pseudo-headers, and a descriptor value with the client's address;
//! - `x_ratelimit_option` and `hits_addend` (a number, or a format over the request and the
//!   dynamic metadata) on a route's, a `RateLimitPerRoute`'s and the filter's own
//!   `rate_limits`, `apply_on_stream_done` (a second call once the stream is done), and
//!   `limit` from the dynamic metadata (a JWT's claim);
//! - the service's `dynamic_metadata`, in the stream's as the access log reads it;
//! - `local_ratelimit` descriptors made by a route's `rate_limits`.

use std::time::Duration;

use skiff_tests::client;
use skiff_tests::peer::Peer;
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::side_by_side::assert_same_response;
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for, scratch_dir};

const RLS: &str = env!("CARGO_BIN_EXE_rls-server");
const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute";
const LRL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// Where the policies' `limit` is read: the JWT's `rl` claim, as jwt_authn writes it.
const LIMIT_KEY: &str = "{key: envoy.filters.http.jwt_authn, path: [{key: claims}, {key: rl}]}";

const HMAC_KEY: &[u8] = b"a secret shared for HS256 tokens!";

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn jwks() -> String {
    serde_json::json!({ "keys": [ { "kty": "oct", "kid": "hs1", "alg": "HS256", "k": b64(HMAC_KEY) } ] })
        .to_string()
}

/// A bearer token with the claim `rl`, for the life of the test.
fn token(rl: serde_json::Value) -> &'static str {
    let header = serde_json::json!({ "alg": "HS256", "typ": "JWT", "kid": "hs1" });
    let claims = serde_json::json!({ "iss": "iss", "rl": rl });
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, HMAC_KEY);
    let sig = ring::hmac::sign(&key, signed.as_bytes());
    Box::leak(format!("Bearer {signed}.{}", b64(sig.as_ref())).into_boxed_str())
}

fn filter(name: &str, extra: &str, cluster: &str) -> String {
    format!(
        r#"
          - name: {name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: dom
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {{envoy_grpc: {{cluster_name: {cluster}}}}}{extra}"#
    )
}

fn listener(name: &str, port: u16, routes: &str, filters: &str, log: &str) -> String {
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
              log_format: {{text_format_source: {{inline_string: "{name} %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %DYNAMIC_METADATA(envoy.filters.http.ratelimit)%\n"}}}}
          route_config:
            virtual_hosts:
            - name: a
              domains: ["*"]
              rate_limits: [{{actions: [{{generic_key: {{descriptor_value: vhost}}}}]}}]
              routes:{routes}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
    )
}

fn config(admin: u16, ports: [u16; 4], upstream: u16, rls: u16, log: &str) -> String {
    let routes = format!(
        r#"
              - match: {{prefix: /route}}
                route:
                  cluster: up
                  rate_limits:
                  - actions: [{{request_headers: {{header_name: x-v, descriptor_key: v}}}}]
                  - stage: 1
                    actions: [{{generic_key: {{descriptor_value: stage-one}}}}]
              - match: {{prefix: /include}}
                route:
                  cluster: up
                  include_vh_rate_limits: true
                  rate_limits:
                  - actions:
                    - request_headers: {{header_name: x-v, descriptor_key: v}}
                    - remote_address: {{}}
              - match: {{prefix: /per}}
                route: {{cluster: up}}
                typed_per_filter_config:
                  rl:
                    "@type": {PER_ROUTE}
                    domain: other
                    rate_limits:
                    - actions:
                      - generic_key: {{descriptor_value: per-route, descriptor_key: k}}
                      - request_headers: {{header_name: x-v, descriptor_key: v}}
              - match: {{prefix: /ignore}}
                route: {{cluster: up}}
                typed_per_filter_config:
                  rl: {{"@type": {PER_ROUTE}, vh_rate_limits: IGNORE}}
              - match: {{prefix: /skip}}
                route:
                  cluster: up
                  rate_limits:
                  - actions: [{{request_headers: {{header_name: x-absent, descriptor_key: a}}}}]
                  - actions:
                    - request_headers: {{header_name: x-absent, descriptor_key: a, skip_if_absent: true}}
                    - header_value_match:
                        descriptor_value: matched
                        headers: [{{name: x-v, present_match: true}}]
              - match: {{prefix: /pseudo}}
                route:
                  cluster: up
                  rate_limits:
                  - actions:
                    - request_headers: {{header_name: ":path", descriptor_key: path}}
                    - request_headers: {{header_name: ":method", descriptor_key: method}}
                    - remote_address_match:
                        address_matcher: {{ranges: [{{address_prefix: 127.0.0.0, prefix_len: 8}}]}}
                        descriptor_value: "ip-%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
              - match: {{prefix: /xoff}}
                route:
                  cluster: up
                  rate_limits:
                  - actions: [{{generic_key: {{descriptor_value: xoff}}}}]
                    x_ratelimit_option: "OFF"
                  - actions: [{{request_headers: {{header_name: x-v, descriptor_key: v}}}}]
                    hits_addend: {{number: 5}}
              - match: {{prefix: /per-hits}}
                route: {{cluster: up}}
                typed_per_filter_config:
                  rl:
                    "@type": {PER_ROUTE}
                    rate_limits:
                    - actions: [{{request_headers: {{header_name: x-v, descriptor_key: v}}}}]
                      hits_addend: {{number: 3}}
                      x_ratelimit_option: "OFF"
                    - actions: [{{generic_key: {{descriptor_value: per-hits}}}}]
              - match: {{prefix: /done}}
                route: {{cluster: up}}
                typed_per_filter_config:
                  rl:
                    "@type": {PER_ROUTE}
                    rate_limits:
                    - actions: [{{request_headers: {{header_name: x-v, descriptor_key: v}}}}]
                      hits_addend: {{format: "%DYNAMIC_METADATA(cost:units)%"}}
                    - actions: [{{generic_key: {{descriptor_value: at-end}}}}]
                      apply_on_stream_done: true
                      hits_addend: {{format: "%REQ(x-cost)%"}}
              - match: {{prefix: /limit-route}}
                route:
                  cluster: up
                  rate_limits:
                  - actions: [{{generic_key: {{descriptor_value: limit-route}}}}]
                    limit: {{dynamic_metadata: {{metadata_key: {LIMIT_KEY}}}}}
              - match: {{prefix: /limit-per}}
                route: {{cluster: up}}
                typed_per_filter_config:
                  rl:
                    "@type": {PER_ROUTE}
                    rate_limits:
                    - actions: [{{generic_key: {{descriptor_value: limit-per}}}}]
                      limit: {{dynamic_metadata: {{metadata_key: {LIMIT_KEY}}}}}
              - match: {{prefix: /redirect}}
                redirect: {{path_redirect: /elsewhere}}
              - match: {{prefix: /missing}}
                route: {{cluster_header: x-which}}
              - match: {{prefix: /}}
                route: {{cluster: up}}"#
    );
    let filters0 = format!(
        r#"
          - name: jwt
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                p:
                  issuer: iss
                  local_jwks: {{inline_string: '{}'}}
                  payload_in_metadata: claims
              rules: [{{match: {{prefix: /limit}}, requires: {{provider_name: p}}}}]"#,
        jwks()
    ) + r#"
          - name: meta
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config
              request_rules:
              - header: x-meta-cost
                on_header_present: {metadata_namespace: cost, key: units, type: NUMBER}"#
        + &filter(
            "rl",
            r#"
              stat_prefix: sp
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              response_headers_to_add: [{header: {key: x-limited, value: "yes"}}]"#,
            "rls",
        );
    // 1: the filter's own rate_limits, failing closed, 100 ms to answer, external requests
    // only, its own status for limited requests and no x-envoy-ratelimited.
    let filters1 = filter(
        "strict",
        r#"
              failure_mode_deny: true
              status_on_error: {code: 503}
              rate_limited_status: {code: 403}
              disable_x_envoy_ratelimited_header: true
              request_type: external
              timeout: 0.1s
              rate_limits:
              - actions: [{request_headers: {header_name: x-v, descriptor_key: v}}]
                x_ratelimit_option: DRAFT_VERSION_03"#,
        "rls",
    );
    // 2: a service cluster that does not exist (fails open).
    let filters2 = filter("gone", "", "nope");
    // 3: local_ratelimit buckets by the route's rate_limits.
    let filters3 = format!(
        r#"
          - name: lrl
            typed_config:
              "@type": {LRL}
              stat_prefix: lrl
              filter_enabled: {{default_value: {{numerator: 100}}}}
              filter_enforced: {{default_value: {{numerator: 100}}}}
              descriptors:
              - entries: [{{key: v, value: gold}}]
                token_bucket: {{max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}}
              - entries: [{{key: generic_key, value: vhost}}]
                token_bucket: {{max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s}}"#
    );
    let plain = r#"
              - match: {prefix: /route}
                route:
                  cluster: up
                  rate_limits:
                  - actions: [{request_headers: {header_name: x-v, descriptor_key: v}}]
              - match: {prefix: /}
                route: {cluster: up}"#;
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{}{}{}{}
  clusters:
  - name: up
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]}}
  - name: rls
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment: {{cluster_name: rls, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {rls}}}}}}}}}]}}]}}
"#,
        listener("l0", ports[0], &routes, &filters0, log),
        listener("l1", ports[1], plain, &filters1, log),
        listener("l2", ports[2], plain, &filters2, log),
        listener("l3", ports[3], plain, &filters3, log),
    )
}

type Case = (usize, &'static str, &'static [(&'static str, &'static str)]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_service_as_envoy_calls_and_obeys_it() {
    run_for(Duration::from_secs(60), async {
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let up = EchoUpstream::with_options(EchoOptions::named("up")).await;
            let service = Peer::start(RLS, &["0"]).await;
            let log = scratch_dir("rls-log").join("access.log");
            let ports = [free_port(), free_port(), free_port(), free_port()];
            let yaml = config(
                free_port(),
                ports,
                up.port(),
                service.port("port"),
                &log.display().to_string(),
            );
            let p = ProxyProcess::start(kind, &yaml, &[]).await;
            sides.push((p, ports, up, service, log));
        }
        let rl = |v: serde_json::Value| token(v);
        let good = rl(serde_json::json!({ "requests_per_unit": 42, "unit": "HOUR" }));
        let fraction = rl(serde_json::json!({ "requests_per_unit": 9.8, "unit": "SECOND" }));
        let text = rl(serde_json::json!({ "requests_per_unit": "42", "unit": "HOUR" }));
        let unknown_unit = rl(serde_json::json!({ "requests_per_unit": 7, "unit": "FORTNIGHT" }));
        let not_struct = rl(serde_json::json!(42));
        let limits: Vec<Case> = [
            ("/limit-route", good),
            ("/limit-route", fraction),
            ("/limit-route", text),
            ("/limit-route", unknown_unit),
            ("/limit-route", not_struct),
            ("/limit-per", good),
            ("/limit-per", fraction),
        ]
        .into_iter()
        .map(|(path, t)| {
            let h: &'static [(&'static str, &'static str)] =
                Box::leak(vec![("authorization", t)].into_boxed_slice());
            (0, path, h)
        })
        .collect();
        let fixed: &[Case] = &[
            // The route's descriptors (its stage-1 one left out): OK, over the limit (with
            // and without the service's body), a failed call.
            (0, "/route", &[("x-v", "a")]),
            (0, "/route", &[("x-v", "over")]),
            (0, "/route", &[("x-v", "over-body")]),
            (0, "/route", &[("x-v", "error")]),
            // The service's dynamic metadata, in the stream's (the access log reads it).
            (0, "/route", &[("x-v", "meta")]),
            // No x-v: the route's only descriptor is dropped; the virtual host's are not
            // used for a route that has its own.
            (0, "/route", &[]),
            (0, "/include", &[("x-v", "b")]),
            (0, "/include", &[("x-v", "over")]),
            (0, "/per", &[("x-v", "c")]),
            (0, "/per", &[("x-v", "over")]),
            (0, "/ignore", &[("x-v", "d")]),
            (0, "/skip", &[("x-v", "e")]),
            (0, "/skip", &[]),
            (0, "/pseudo?q=1", &[]),
            // x_ratelimit_option: the closest status's descriptor turned off, then on with
            // the other left out of the quota policy; hits_addend by descriptor.
            (0, "/xoff", &[("x-v", "a")]),
            (0, "/xoff", &[("x-v", "over")]),
            (0, "/per-hits", &[("x-v", "b")]),
            (0, "/per-hits", &[("x-v", "over")]),
            // apply_on_stream_done: a second call once the stream is done, its hits from
            // the request's header (none that is not a number: that descriptor is dropped);
            // hits from dynamic metadata a filter before wrote.
            (
                0,
                "/done",
                &[("x-v", "a"), ("x-cost", "7"), ("x-meta-cost", "4")],
            ),
            (
                0,
                "/done",
                &[("x-v", "a"), ("x-cost", "abc"), ("x-meta-cost", "x")],
            ),
            (0, "/done", &[("x-v", "over"), ("x-cost", "2.9")]),
            (0, "/done", &[("x-cost", "1000000001")]),
            (0, "/redirect", &[]),
            (0, "/missing", &[("x-which", "missing")]),
            (0, "/missing", &[("x-which", "up"), ("x-v", "over")]),
            (0, "/", &[]),
            (1, "/x", &[("x-v", "f")]),
            (1, "/x", &[("x-v", "over")]),
            (1, "/x", &[("x-v", "error")]),
            (1, "/x", &[("x-v", "slow")]),
            (1, "/x", &[("x-v", "over"), ("x-envoy-internal", "true")]),
            (1, "/x", &[]),
            (2, "/x", &[]),
            (2, "/route", &[("x-v", "g")]),
            (3, "/route", &[("x-v", "gold")]),
            (3, "/route", &[("x-v", "gold")]),
            (3, "/route", &[("x-v", "silver")]),
            (3, "/x", &[]),
            (3, "/x", &[]),
            (3, "/x", &[]),
        ];
        // A descriptor's limit from the stream's dynamic metadata (a route's policy and a
        // RateLimitPerRoute's): a struct with a number and a unit name, else none.
        let cases: Vec<Case> = fixed.iter().copied().chain(limits).collect();
        for (listener, path, headers) in &cases {
            let what = format!("{path} {headers:?} on listener {listener}");
            let mut got = Vec::new();
            for (p, ports, up, service, _) in &sides {
                let before = (up.rec.requests().len(), service.lines().len());
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
                let sent: Vec<Vec<(String, String)>> = up.rec.requests()[before.0..]
                    .iter()
                    .map(|r| {
                        r.headers
                            .iter()
                            .filter(|(k, _)| k.starts_with("x-rls") || k == "x-v")
                            .cloned()
                            .collect()
                    })
                    .collect();
                // The slow answer comes after the proxy gave up, and a call at the stream's
                // end after the response: wait for them to be printed.
                if headers.contains(&("x-v", "slow")) || path.starts_with("/done") {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
                let asked: Vec<serde_json::Value> = service
                    .lines_after(before.1, Duration::from_millis(300))
                    .await
                    .iter()
                    .map(|l| {
                        let mut v: serde_json::Value = serde_json::from_str(l).expect("JSON");
                        // The client's address is the same loopback for both.
                        v.as_object_mut().map(|o| o.remove("ms"));
                        v
                    })
                    .collect();
                got.push((r, sent, asked));
            }
            assert_same_response(&what, &got[0].0, &got[1].0);
            for h in [
                "x-rls-resp",
                "x-rls-over",
                "x-envoy-ratelimited",
                "x-limited",
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
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
                "{what}: what the rate limit service was asked (Envoy, skiff)"
            );
            if std::env::var("RLS_PROBE").is_ok() {
                eprintln!("PROBE {what}: {:?}", got[0].2);
            }
            if path.starts_with("/limit") && headers[0].1 == good {
                let limits: Vec<&serde_json::Value> =
                    got[0].2.iter().map(|a| &a["limits"]).collect();
                assert_eq!(limits, [&serde_json::json!([[42, 3]])], "{what}");
            }
            if headers.contains(&("x-cost", "7")) {
                // The request's call with the metadata's 4 hits, then the stream's end's
                // with the header's 7.
                let hits: Vec<&serde_json::Value> =
                    got[0].2.iter().map(|a| &a["descriptor_hits"]).collect();
                assert_eq!(
                    hits,
                    [&serde_json::json!([4]), &serde_json::json!([7])],
                    "{what}"
                );
            }
            if path.starts_with("/pseudo") {
                let asked = serde_json::to_string(&got[0].2).expect("JSON");
                assert!(
                    asked.contains("/pseudo?q=1") && asked.contains("ip-127.0.0.1"),
                    "{what}: {asked}"
                );
            }
        }
        let mut stats = Vec::new();
        let mut logs = Vec::new();
        for (p, _, _, _, log) in &sides {
            let mut s = p.admin().stats_containing(".ratelimit.").await;
            for part in [
                "cluster.up.upstream_rq_",
                "cluster.up.internal.",
                "cluster.up.external.",
            ] {
                s.extend(
                    p.admin()
                        .stats_containing(part)
                        .await
                        .into_iter()
                        .filter(|(k, v)| k.starts_with(part) && v != "0"),
                );
            }
            s.extend(p.admin().stats_containing(".http_local_rate_limit.").await);
            // How many requests waited for a connection depends on the worker each client
            // connection lands on.
            s.retain(|(k, _)| {
                !k.contains("upstream_rq_time")
                    && !k.contains("upstream_rq_per_cx")
                    && !k.contains("pending_total")
            });
            s.sort();
            s.dedup();
            stats.push(s);
            logs.push(skiff_tests::sorted_log_lines(log, cases.len()).await);
        }
        assert!(
            stats[0]
                .iter()
                .any(|(k, _)| k == "cluster.up.ratelimit.sp.over_limit"),
            "Envoy has the filter's stats: {:?}",
            stats[0]
        );
        assert_eq!(stats[0], stats[1], "stats (Envoy, skiff)");
        assert_eq!(logs[0], logs[1], "access log lines (Envoy, skiff)");
        assert!(
            logs[1]
                .iter()
                .any(|l| l == r#"l0 /route 200 - via_upstream {"n":7,"rls":"yes"}"#),
            "{:#?}",
            logs[1]
        );
    })
    .await;
}
