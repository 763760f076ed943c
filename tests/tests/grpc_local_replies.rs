//! A route's `max_stream_duration` (with `grpc_timeout_header_max`, as Istio sets it on every
//! route) and local replies to gRPC requests, side by side with Envoy 1.40 over h2c: no route,
//! an upstream that refuses connections, a `grpc-timeout` that runs out, the same request
//! without one, a plain request with a `grpc-timeout`, and a route's own fixed limit. The
//! client must see the same status, `content-type`, `grpc-status`, `grpc-message` and body.

use std::time::Duration;

use skiff_tests::client::{h2_request, H2Client};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, refused_port, run_for};

fn config(admin: u16, port: u16, upstream: u16, refused: u16) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: g
          stream_idle_timeout: 0s
          route_config:
            virtual_hosts:
            - name: a
              domains: ["*"]
              routes:
              - match: {{prefix: /istio}}
                route: {{cluster: up, timeout: 0s, max_stream_duration: {{max_stream_duration: 0s, grpc_timeout_header_max: 0s}}}}
              - match: {{prefix: /capped}}
                route: {{cluster: up, timeout: 0s, max_stream_duration: {{grpc_timeout_header_max: 0.2s, grpc_timeout_header_offset: 0.05s}}}}
              - match: {{prefix: /fixed}}
                route: {{cluster: up, timeout: 0s, max_stream_duration: {{max_stream_duration: 0.3s}}}}
              - match: {{prefix: /refused}}
                route: {{cluster: refused}}
          http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters:
  - name: up
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]}}
  - name: refused
    connect_timeout: 1s
    load_assignment: {{cluster_name: refused, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {refused}}}}}}}}}]}}]}}
"#
    )
}

/// Path, whether gRPC, `grpc-timeout`.
const CASES: &[(&str, bool, Option<&str>)] = &[
    ("/nowhere", true, None),
    ("/refused", true, None),
    ("/istio/slow?sleep=1500", true, Some("300m")),
    ("/istio/fast?sleep=300", true, None),
    ("/istio/plain?sleep=1500", false, Some("300m")),
    ("/capped/slow?sleep=1500", true, Some("10S")),
    ("/fixed/slow?sleep=1500", false, None),
    ("/fixed/grpc?sleep=1500", true, Some("5S")),
    ("/nowhere", false, None),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_local_replies_and_route_stream_duration_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let upstream = EchoUpstream::start("up").await;
        let refused = refused_port();
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let (admin, port) = (free_port(), free_port());
            let p = ProxyProcess::start(kind, &config(admin, port, upstream.port(), refused), &[])
                .await;
            let client = H2Client::connect(&format!("127.0.0.1:{port}"))
                .await
                .expect("h2c");
            let mut got = Vec::new();
            for (path, grpc, timeout) in CASES {
                let mut req = h2_request("POST", "svc", path, &b"\0\0\0\0\0"[..]);
                if *grpc {
                    req.headers_mut()
                        .insert("content-type", "application/grpc".parse().expect("v"));
                    req.headers_mut().insert("te", "trailers".parse().expect("v"));
                }
                if let Some(t) = timeout {
                    req.headers_mut()
                        .insert("grpc-timeout", t.parse().expect("v"));
                }
                let started = std::time::Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(5), client.send(req))
                    .await
                    .expect("in time")
                    .expect("a response");
                let quick = started.elapsed() < Duration::from_millis(1200);
                got.push(format!(
                    "{path} grpc={grpc} timeout={timeout:?}: {} ct={:?} grpc-status={:?} grpc-message={:?} body={:?} quick={quick}",
                    r.status,
                    r.header("content-type"),
                    r.header("grpc-status"),
                    r.header("grpc-message"),
                    // The echo's own body lists headers in arrival order, which differs.
                    if r.header("x-upstream").is_some() { "(echo)".to_string() } else { r.text() },
                ));
            }
            drop(p);
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        // The cases show what they are meant to.
        assert!(seen[0][2].contains("grpc-status=Some(\"4\")"), "{}", seen[0][2]);
        assert!(seen[0][3].contains(": 200 "), "{}", seen[0][3]);
    })
    .await;
}
