//! `upstream_connection_options.tcp_keepalive` side by side with Envoy 1.40: after a request,
//! the proxy's connection to the upstream carries a keepalive timer with the configured idle
//! time, as `ss` shows it for both proxies.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use skiff_tests::client::{get, Http1Client};
use skiff_tests::config::{bootstrap, hcm, listener, route, to_yaml, vhost};
use skiff_tests::side_by_side::{pair, Side, Up};
use skiff_tests::{require_program, run_for};

fn config(admin: u16, listen: u16, upstream: u16) -> String {
    to_yaml(&bootstrap(
        admin,
        vec![listener(
            "l",
            "127.0.0.1",
            listen,
            hcm("h", vec![vhost("v", &["*"], vec![route("/", "svc")])]),
        )],
        vec![json!({
            "name": "svc",
            "type": "STATIC",
            "connect_timeout": "1s",
            "upstream_connection_options": { "tcp_keepalive": {
                "keepalive_time": 77, "keepalive_interval": 5, "keepalive_probes": 3 },
                // Nothing either proxy shows reads it (docs/compatibility.md).
                "set_local_interface_name_on_upstream_connections": true },
            "load_assignment": {
                "cluster_name": "svc",
                "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": { "socket_address": {
                    "address": "127.0.0.1", "port_value": upstream } } } } ] } ]
            }
        })],
    ))
}

/// The timers of the established connections to the side's upstream (`ss -o`).
fn timers(side: &Side) -> Vec<String> {
    let out = Command::new("ss")
        .args([
            "-tnoH",
            "state",
            "established",
            "dst",
            &format!("127.0.0.1:{}", side.upstream_port),
        ])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("timer:"))
                .unwrap_or("none")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn tcp_keepalive_is_set_on_upstream_connections_as_envoy_does() {
    run_for(Duration::from_secs(30), async {
        require_program("ss", "apt-get install iproute2");
        let (envoy, skiff) = pair(Up::H1, config).await;
        let mut clients = Vec::new();
        for side in [&envoy, &skiff] {
            let mut c = Http1Client::connect(&side.addr()).await.expect("connect");
            let r = c.send(get("/", "ka.example.com")).await.expect("response");
            assert_eq!(r.status, 200);
            clients.push(c);
        }
        for (name, side) in [("envoy", &envoy), ("skiff", &skiff)] {
            let t = timers(side);
            assert_eq!(t.len(), 1, "{name}: one pooled upstream connection: {t:?}");
            // `timer:(keepalive,1min16sec,0)`: idle time counting down from 77 s.
            assert!(t[0].starts_with("timer:(keepalive,1min1"), "{name}: {t:?}");
        }
        let name =
            "server.accepted_without_effect.set_local_interface_name_on_upstream_connections";
        assert_eq!(skiff.proxy.admin().counter(name).await, 1);
    })
    .await;
}
