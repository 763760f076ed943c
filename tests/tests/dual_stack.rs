//! A listener on `::` with `ipv4_compat` side by side with Envoy 1.40: it takes IPv4 and IPv6
//! connections on one socket, and an IPv4 client is an IPv4 address (not a v4-mapped IPv6
//! one) to access logs and `x-forwarded-for`; without `ipv4_compat` the socket is IPv6 only.

use std::time::Duration;

use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::{free_port, run_for};

fn config(admin: u16, port: u16, other: u16, log: &str) -> String {
    let listener = |name: &str, port: u16, compat: bool| {
        format!(
            r#"
  - name: {name}
    address: {{socket_address: {{address: "::", port_value: {port}, ipv4_compat: {compat}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          use_remote_address: true
          access_log: [{{name: l, typed_config: {{"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: "{log}", log_format: {{text_format_source: {{inline_string: "{name} r=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% l=%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% xff=%REQ(x-forwarded-for)%\n"}}}}}}}}]
          route_config: {{virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]}}]}}
          http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]"#
        )
    };
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{}{}
"#,
        listener("dual", port, true),
        listener("v6only", other, false),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_compat_takes_ipv4_clients_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let dir = skiff_tests::scratch_dir(&format!("dual-{}", kind.name()));
            let log = dir.join("access.log");
            let (admin, port, other) = (free_port(), free_port(), free_port());
            let p = ProxyProcess::start(
                kind,
                &config(admin, port, other, &log.display().to_string()),
                &[],
            )
            .await;
            let mut got = Vec::new();
            for addr in [
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
                format!("127.0.0.1:{other}"),
                format!("[::1]:{other}"),
            ] {
                let r = skiff_tests::client::http1_once(&addr, skiff_tests::client::get("/", "a"))
                    .await;
                got.push(format!(
                    "{}: {}",
                    addr.replace(&port.to_string(), "P")
                        .replace(&other.to_string(), "O"),
                    match r {
                        Ok(r) => r.status.to_string(),
                        Err(_) => "refused".to_string(),
                    }
                ));
            }
            got.extend(skiff_tests::sorted_log_lines(&log, 3).await);
            drop(p);
            seen.push(got);
        }
        assert!(
            seen[0]
                .iter()
                .any(|l| l.starts_with("dual r=127.0.0.1 l=127.0.0.1")),
            "{:?}",
            seen[0]
        );
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
    })
    .await;
}
