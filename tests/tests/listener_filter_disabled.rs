//! `listener_filters[].filter_disabled` side by side with Envoy 1.40, as Istio's virtualInbound
//! uses it: the http_inspector is skipped for connections to the ports a predicate names
//! (`destination_port_range`, `or_match`, `not_match`), so a plaintext HTTP/1.1 request there
//! takes the chain without an ALPN match.

use std::time::Duration;

use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for};

fn config(admin: u16, ports: [u16; 3], http: u16, other: u16) -> String {
    let [a, b, c] = ports;
    let (a1, b1) = (a + 1, b + 1);
    let listener = |name: &str, port: u16| {
        format!(
            r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    listener_filters:
    - name: envoy.filters.listener.http_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}
      filter_disabled:
        or_match:
          rules:
          - destination_port_range: {{start: {a}, end: {a1}}}
          - not_match: {{or_match: {{rules: [{{destination_port_range: {{start: {b}, end: {b1}}}}}, {{destination_port_range: {{start: 1, end: 2}}}}]}}}}
    filter_chains:
    - filter_chain_match: {{application_protocols: [http/1.1]}}
      filters: [{{name: t, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: http, cluster: http}}}}]
    - filters: [{{name: t, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: other, cluster: other}}}}]"#
        )
    };
    let cluster = |name: &str, port: u16| {
        format!(
            r#"
  - name: {name}
    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}"#
        )
    };
    format!(
        "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\nstatic_resources:\n  listeners:{}{}{}\n  clusters:{}{}\n",
        listener("a", a),
        listener("b", b),
        listener("c", c),
        cluster("http", http),
        cluster("other", other)
    )
}

async fn upstream_of(port: u16) -> String {
    let addr = format!("127.0.0.1:{port}");
    let req = skiff_tests::client::get("/", "x");
    match tokio::time::timeout(
        Duration::from_secs(3),
        skiff_tests::client::http1_once(&addr, req),
    )
    .await
    {
        Ok(Ok(r)) => r.header("x-upstream").unwrap_or("-").to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timeout".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_disabled_skips_the_inspector_as_envoy() {
    run_for(Duration::from_secs(30), async {
        let http = EchoUpstream::start("http").await;
        let other = EchoUpstream::start("other").await;
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            // a is in [a, a+1): the inspector is skipped; b is in [b, b+1), so not_match is
            // false and b keeps it; c is not, so not_match is true and c skips it.
            let ports = [free_port(), free_port(), free_port()];
            let admin = free_port();
            let p =
                ProxyProcess::start(kind, &config(admin, ports, http.port(), other.port()), &[])
                    .await;
            let mut got = Vec::new();
            for port in ports {
                got.push(upstream_of(port).await);
            }
            seen.push((kind, got, p));
        }
        let want = vec!["other".to_string(), "http".into(), "other".into()];
        for (kind, got, p) in &seen {
            assert_eq!(got, &want, "{kind:?}: {}", p.logs_tail(10));
        }
    })
    .await;
}
