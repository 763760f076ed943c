//! `envoy.filters.http.health_check` side by side with Envoy 1.40: health checks answered
//! locally (or passed through), the local cluster's name on their responses, and every other
//! response of a server failing its checks (`POST /healthcheck/fail`) marked so.

use std::time::Duration;

use skiff_tests::client;
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::side_by_side::assert_same_response;
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for};

fn config(admin: u16, ports: [u16; 2], upstream: u16) -> String {
    let listener = |name: &str, port: u16, filter: &str| {
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
          route_config: {{virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]}}]}}
          http_filters:
          - name: envoy.filters.http.health_check
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
              {filter}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
        )
    };
    format!(
        r#"
node: {{id: node1, cluster: svc}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{}{}
  clusters:
  - name: up
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]}}
"#,
        listener(
            "local",
            ports[0],
            "pass_through_mode: false\n              headers: [{name: \":path\", string_match: {exact: /healthz}}]"
        ),
        listener(
            "through",
            ports[1],
            "pass_through_mode: true\n              headers: [{name: x-hc, present_match: true}, {name: \":method\", exact_match: GET}]"
        ),
    )
}

/// The listener (0: local checks, 1: pass-through), method, path and headers of a request.
type Case = (
    usize,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let up = EchoUpstream::start("up").await;
            let (admin, ports) = (free_port(), [free_port(), free_port()]);
            let p = ProxyProcess::start(kind, &config(admin, ports, up.port()), &[]).await;
            sides.push((p, ports, up));
        }
        let cases: &[Case] = &[
            (0, "GET", "/healthz", &[]),
            (0, "GET", "/healthz?full=1", &[]),
            (0, "GET", "/other", &[]),
            (1, "GET", "/x", &[("x-hc", "1")]),
            (1, "POST", "/x", &[("x-hc", "1")]),
            (1, "GET", "/x", &[]),
        ];
        for failing in [false, true, false] {
            let path = if failing {
                "/healthcheck/fail"
            } else {
                "/healthcheck/ok"
            };
            for (p, _, _) in &sides {
                assert_eq!(p.admin().post(path).await.status, 200);
            }
            for (listener, method, path, headers) in cases {
                let what = format!("failing {failing}: {method} {path} {headers:?} on {listener}");
                let mut got = Vec::new();
                for (p, ports, up) in &sides {
                    let before = up.rec.requests().len();
                    let body = if *method == "POST" {
                        bytes::Bytes::from_static(b"a body")
                    } else {
                        bytes::Bytes::new()
                    };
                    let mut req = client::request(method, path, "a", body);
                    for (k, v) in *headers {
                        req.headers_mut().insert(
                            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                            http::HeaderValue::from_str(v).expect("value"),
                        );
                    }
                    let r = client::http1_once(&format!("127.0.0.1:{}", ports[*listener]), req)
                        .await
                        .unwrap_or_else(|e| panic!("{what}: {}: {e}", p.kind.name()));
                    got.push((r, up.rec.requests().len() - before));
                }
                assert_same_response(&what, &got[0].0, &got[1].0);
                assert_eq!(
                    got[0].1, got[1].1,
                    "{what}: requests upstream (Envoy, skiff)"
                );
            }
        }
        // The checks Envoy answered itself, and its cluster header on them.
        let (p, ports, _) = &sides[0];
        let r = client::http1_once(
            &format!("127.0.0.1:{}", ports[0]),
            client::get("/healthz", "a"),
        )
        .await
        .expect("a response");
        assert_eq!(
            r.header("x-envoy-upstream-healthchecked-cluster"),
            Some("svc"),
            "{}",
            p.kind.name()
        );
    })
    .await;
}
