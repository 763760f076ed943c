//! `envoy.filters.http.fault` side by side with Envoy 1.40, as Istio uses it (an empty filter in
//! the connection manager, each route's `HTTPFault` in `typed_per_filter_config`) and with a
//! configuration of its own: aborts (HTTP and gRPC statuses), fixed and header-controlled delays, a delay then an abort,
//! header matches, the runtime's `fault.http.*` overrides, `max_active_faults`, a route that
//! disables the filter, and the filter's stats.

use std::time::{Duration, Instant};

use skiff_tests::client;
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::side_by_side::assert_same_response;
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for};

const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

fn route(prefix: &str, fault: &str) -> String {
    format!(
        r#"
              - match: {{prefix: {prefix}}}
                route: {{cluster: up}}
                typed_per_filter_config:
                  envoy.filters.http.fault: {{"@type": {FAULT}, {fault}}}"#
    )
}

fn listener(name: &str, port: u16, routes: &str, fault: &str) -> String {
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
            virtual_hosts:
            - name: a
              domains: ["*"]
              routes:{routes}
              - match: {{prefix: /}}
                route: {{cluster: up}}
          http_filters:
          - name: envoy.filters.http.fault
            typed_config: {{"@type": {FAULT}{fault}}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
    )
}

fn config(admin: u16, ports: [u16; 2], upstream: u16) -> String {
    let always = "numerator: 100";
    let istio = [
        route(
            "/abort",
            &format!("abort: {{http_status: 503, percentage: {{{always}}}}}"),
        ),
        route(
            "/teapot",
            &format!(
                "abort: {{http_status: 418, percentage: {{{always}}}, response_body: short and stout}}"
            ),
        ),
        // A gRPC abort: a 200 whose grpc-status a gRPC request gets.
        route(
            "/grpc-abort",
            &format!("abort: {{grpc_status: 14, percentage: {{{always}}}}}"),
        ),
        route(
            "/never",
            "abort: {http_status: 503, percentage: {numerator: 0}}",
        ),
        route(
            "/delay-abort",
            &format!(
                "delay: {{fixed_delay: 0.3s, percentage: {{{always}}}}}, abort: {{http_status: 502, percentage: {{{always}}}}}"
            ),
        ),
        route(
            "/delay",
            &format!("delay: {{fixed_delay: 0.3s, percentage: {{{always}}}}}"),
        ),
        route(
            "/header-delay",
            &format!("delay: {{header_delay: {{}}, percentage: {{{always}}}}}"),
        ),
        route(
            "/match",
            &format!(
                "abort: {{http_status: 403, percentage: {{{always}}}}}, headers: [{{name: x-fault, string_match: {{exact: inject}}}}]"
            ),
        ),
        route(
            "/limited",
            &format!(
                "delay: {{fixed_delay: 1s, percentage: {{{always}}}}}, max_active_faults: 1"
            ),
        ),
    ]
    .concat();
    // The filter's own configuration: every request aborted, but on one route.
    let own_routes = r#"
              - match: {prefix: /off}
                route: {cluster: up}
                typed_per_filter_config:
                  envoy.filters.http.fault: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}"#;
    format!(
        r#"
node: {{id: node1, cluster: svc}}
layered_runtime: {{layers: [{{name: admin, admin_layer: {{}}}}]}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{}{}
  clusters:
  - name: up
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]}}
"#,
        listener("istio", ports[0], &istio, ""),
        listener(
            "own",
            ports[1],
            own_routes,
            ", abort: {http_status: 429, percentage: {numerator: 100}}"
        ),
    )
}

/// The listener, path and headers of a request, and whether it is delayed.
type Case = (
    usize,
    &'static str,
    &'static [(&'static str, &'static str)],
    bool,
);

type Side = (ProxyProcess, [u16; 2], EchoUpstream);

/// Sends each case to both proxies; the responses, the requests upstream and the delays must
/// agree.
async fn check(cases: &[Case], sides: &[Side]) {
    for (listener, path, headers, delayed) in cases {
        let what = format!("{path} {headers:?} on listener {listener}");
        let mut got = Vec::new();
        for (p, ports, up) in sides {
            let before = up.rec.requests().len();
            let mut req = client::get(path, "a");
            for (k, v) in *headers {
                req.headers_mut().insert(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    http::HeaderValue::from_str(v).expect("value"),
                );
            }
            let start = Instant::now();
            let r = client::http1_once(&format!("127.0.0.1:{}", ports[*listener]), req)
                .await
                .unwrap_or_else(|e| panic!("{what}: {}: {e}", p.kind.name()));
            let took = start.elapsed();
            assert_eq!(
                took >= Duration::from_millis(250),
                *delayed,
                "{what}: {} took {took:?}",
                p.kind.name()
            );
            got.push((r, up.rec.requests().len() - before));
        }
        assert_same_response(&what, &got[0].0, &got[1].0);
        assert_eq!(
            got[0].1, got[1].1,
            "{what}: requests upstream (Envoy, skiff)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let mut opts = EchoOptions::named("up");
            opts.body = Some("hello".into());
            let up = EchoUpstream::with_options(opts).await;
            let (admin, ports) = (free_port(), [free_port(), free_port()]);
            let p = ProxyProcess::start(kind, &config(admin, ports, up.port()), &[]).await;
            sides.push((p, ports, up));
        }
        let cases: &[Case] = &[
            (0, "/abort", &[], false),
            (0, "/teapot", &[], false),
            (0, "/never", &[], false),
            (
                0,
                "/grpc-abort",
                &[("content-type", "application/grpc")],
                false,
            ),
            (0, "/grpc-abort", &[], false),
            (0, "/delay-abort", &[], true),
            (0, "/delay", &[], true),
            (
                0,
                "/header-delay",
                &[("x-envoy-fault-delay-request", "300")],
                true,
            ),
            (0, "/header-delay", &[], false),
            (
                0,
                "/header-delay",
                &[
                    ("x-envoy-fault-delay-request", "300"),
                    ("x-envoy-fault-delay-request-percentage", "0"),
                ],
                false,
            ),
            (0, "/match", &[("x-fault", "inject")], false),
            (0, "/match", &[("x-fault", "skip")], false),
            (0, "/plain", &[], false),
            (1, "/x", &[], false),
            (1, "/off", &[], false),
        ];
        check(cases, &sides).await;
        // The runtime turns aborts off.
        for (p, _, _) in &sides {
            let r = p
                .admin()
                .post("/runtime_modify?fault.http.abort.abort_percent=0")
                .await;
            assert_eq!(r.status, 200);
        }
        check(&[(0, "/abort", &[], false), (1, "/x", &[], false)], &sides).await;
        // max_active_faults: with one request delayed, the next is not.
        for (p, ports, _) in &sides {
            let addr = format!("127.0.0.1:{}", ports[0]);
            let first = tokio::spawn({
                let addr = addr.clone();
                async move { client::http1_once(&addr, client::get("/limited", "a")).await }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let start = Instant::now();
            let second = client::http1_once(&addr, client::get("/limited", "a"))
                .await
                .expect("second");
            assert_eq!(second.status, 200, "{}", p.kind.name());
            assert!(
                start.elapsed() < Duration::from_millis(700),
                "{}: the second request was delayed too",
                p.kind.name()
            );
            let first = first.await.expect("join").expect("first");
            assert_eq!(first.status, 200, "{}", p.kind.name());
        }
        let mut stats = Vec::new();
        for (p, _, _) in &sides {
            stats.push(p.admin().stats_containing(".fault.").await);
        }
        assert!(!stats[0].is_empty(), "Envoy has the filter's stats");
        assert_eq!(stats[0], stats[1], "fault stats (Envoy, skiff)");
    })
    .await;
}
