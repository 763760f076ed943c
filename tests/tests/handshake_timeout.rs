//! A filter chain's `transport_socket_connect_timeout` side by side with Envoy 1.40: a client
//! that opens a TLS listener's connection and never finishes its handshake is closed when the
//! timeout passes and counted in `downstream_cx_transport_socket_connect_timeout`; one that
//! completes its handshake in time is served.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use skiff_tests::pki::{dns, TestCa};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::{free_port, run_for};

fn config(admin: u16, port: u16, cert: &(String, String)) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket_connect_timeout: 0.5s
      transport_socket:
        name: tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context: {{tls_certificates: [{{certificate_chain: {{filename: "{}"}}, private_key: {{filename: "{}"}}}}]}}
      filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: x
          route_config: {{virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]}}]}}
          http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
"#,
        cert.0, cert.1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_not_done_in_time_closes_the_connection() {
    run_for(Duration::from_secs(60), async {
        let ca = TestCa::new("handshake-timeout", "ca");
        let cert = ca.leaf("server", vec![dns("server.test")]);
        for kind in [Kind::Envoy, Kind::Skiff] {
            let (admin, port) = (free_port(), free_port());
            let p = ProxyProcess::start(kind, &config(admin, port, &cert), &[]).await;
            // Silent: closed at the timeout.
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let start = Instant::now();
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("closed in time")
                .unwrap_or(0);
            let took = start.elapsed();
            assert_eq!(n, 0, "{}", kind.name());
            assert!(
                took >= Duration::from_millis(400) && took < Duration::from_secs(3),
                "{}: closed after {took:?}",
                kind.name()
            );
            // A handshake in time is served.
            let r = skiff_tests::client::curl(&["-k", &format!("https://127.0.0.1:{port}/")]).await;
            assert_eq!(r.resp.status, 200, "{}", kind.name());
            let admin = p.admin();
            assert_eq!(
                admin
                    .stat(&format!(
                        "listener.127.0.0.1_{port}.downstream_cx_transport_socket_connect_timeout"
                    ))
                    .await,
                Some(1),
                "{}",
                kind.name()
            );
        }
    })
    .await;
}
