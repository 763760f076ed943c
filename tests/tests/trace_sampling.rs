//! The connection manager's `tracing` without a tracer, and the UUID `request_id_extension`,
//! side by side with Envoy 1.40: the sampling decision Envoy packs into `x-request-id` (its
//! 15th character: `9` sampled, `b` client, `a` forced, `4` not traced), as Istio's listeners
//! ask for it (`tracing.random_sampling` 1% by default). Each case's request id and headers go
//! through both; the upstream must receive the same `x-request-id`.

use std::time::Duration;

use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for};

/// Listeners: name, the HCM fields that differ (separated by `|`).
const LISTENERS: &[(&str, &str)] = &[
    ("half", "tracing: {random_sampling: {value: 50}}"),
    (
        "overall",
        "tracing: {random_sampling: {value: 100}, overall_sampling: {value: 30}}",
    ),
    (
        "unpacked",
        "tracing: {random_sampling: {value: 100}}|request_id_extension: {typed_config: {'@type': type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig, pack_trace_reason: false}}",
    ),
    (
        "not_for_sampling",
        "tracing: {random_sampling: {value: 100}}|request_id_extension: {typed_config: {'@type': type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig, use_request_id_for_trace_sampling: false}}",
    ),
    (
        "internal",
        "tracing: {random_sampling: {value: 0}, custom_tags: [{tag: a, literal: {value: b}}]}|use_remote_address: true|internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.1, prefix_len: 32}]}",
    ),
    ("untraced", "generate_request_id: true"),
];

/// Request ids, with an extra header or none.
const CASES: &[(&str, Option<(&str, &str)>)] = &[
    ("00000000-0000-4000-8000-000000000000", None),
    ("00001387-0000-4000-8000-000000000000", None),
    ("00001388-0000-4000-8000-000000000000", None),
    ("00000bb7-0000-4000-8000-000000000000", None),
    ("00000bb8-0000-4000-8000-000000000000", None),
    ("ffffffff-ffff-4fff-bfff-ffffffffffff", None),
    ("12345678-1234-9234-8234-123456789abc", None),
    ("12345678-1234-a234-8234-123456789abc", None),
    ("12345678-1234-b234-8234-123456789abc", None),
    ("0000000A-0000-4000-8000-000000000000", None),
    ("abc", None),
    ("00000001-0000-4000-8000", None),
    ("00000001xxxxxxxxxxxxxxxxxxxxxxxxxxxx", None),
    ("notahexid-1234-4234-8234-123456789abc", None),
    (
        "00005000-0000-4000-8000-000000000000",
        Some(("x-client-trace-id", "1")),
    ),
    (
        "00001388-0000-4000-8000-000000000000",
        Some(("x-envoy-force-trace", "1")),
    ),
    (
        "00001388-0000-4000-8000-000000000000",
        Some(("x-client-trace-id", "1")),
    ),
];

fn config(admin: u16, ports: &[u16], upstream: u16) -> String {
    let mut listeners = String::new();
    for ((name, fields), port) in LISTENERS.iter().zip(ports) {
        let fields = fields.replace('|', "\n          ");
        listeners.push_str(&format!(
            r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          {fields}
          route_config: {{virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]}}]}}
          http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]"#
        ));
    }
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{listeners}
  clusters:
  - name: up
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_sampling_marks_the_request_id_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let upstream = EchoUpstream::start("up").await;
            let ports: Vec<u16> = LISTENERS.iter().map(|_| free_port()).collect();
            let admin = free_port();
            let p = ProxyProcess::start(kind, &config(admin, &ports, upstream.port()), &[]).await;
            let mut sent = 0;
            for port in &ports {
                for (id, extra) in CASES {
                    let mut req = skiff_tests::client::get("/", "a");
                    req.headers_mut().insert(
                        "x-request-id",
                        http::HeaderValue::from_str(id).expect("value"),
                    );
                    if let Some((k, v)) = extra {
                        req.headers_mut().insert(
                            http::HeaderName::from_static(k),
                            http::HeaderValue::from_static(v),
                        );
                    }
                    let addr = format!("127.0.0.1:{port}");
                    skiff_tests::client::http1_once(&addr, req)
                        .await
                        .expect("a response");
                    sent += 1;
                }
            }
            let got: Vec<String> = upstream
                .rec
                .requests()
                .iter()
                .map(|r| r.header("x-request-id").unwrap_or("-").to_string())
                .collect();
            assert_eq!(got.len(), sent, "{kind:?}: {}", p.logs_tail(10));
            seen.push(got);
        }
        let labelled = |ids: &[String]| -> Vec<String> {
            let mut out = Vec::new();
            let mut i = 0;
            for (name, _) in LISTENERS {
                for (id, extra) in CASES {
                    out.push(format!("{name} {id} {extra:?} -> {}", ids[i]));
                    i += 1;
                }
            }
            out
        };
        assert_eq!(
            labelled(&seen[1]),
            labelled(&seen[0]),
            "skiff (left), Envoy (right)"
        );
        // The cases tell the decisions apart.
        assert!(seen[0]
            .iter()
            .any(|id| id.as_bytes().get(14) == Some(&b'9')));
        assert!(seen[0]
            .iter()
            .any(|id| id.as_bytes().get(14) == Some(&b'a')));
        assert!(seen[0]
            .iter()
            .any(|id| id.as_bytes().get(14) == Some(&b'b')));
    })
    .await;
}
