//! `circuit_breakers.thresholds[].max_connection_pools` against Envoy 1.40: a worker keeps a
//! connection pool per host it talks to for as long as the pool has a connection; a request
//! that needs one more pool than the limit gets 503 `no healthy upstream`
//! (`upstream_cx_pool_overflow`), and a pool whose last connection closed makes room.

use std::time::Duration;

use serde_json::json;
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, hcm, listener, route, vhost};
use skiff_tests::run_for;
use skiff_tests::side_by_side::{pair, Side, Up};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};

const STATS: [&str; 6] = [
    "cluster.up.upstream_cx_pool_overflow",
    "cluster.up.upstream_cx_total",
    "cluster.up.upstream_cx_destroy",
    "cluster.up.upstream_rq_total",
    "cluster.up.upstream_rq_pending_overflow",
    "cluster.up.circuit_breakers.default.cx_pool_open",
];

async fn get(side: &Side, path: &str) -> String {
    let r = curl(&[&format!("http://127.0.0.1:{}{path}", side.port)]).await;
    let body = if r.resp.status == 200 {
        String::new()
    } else {
        r.resp.text()
    };
    format!(
        "{} {} {body}",
        r.resp.status,
        r.resp.header("x-envoy-overloaded").unwrap_or("-")
    )
}

async fn stats(side: &Side) -> Vec<String> {
    let a = side.proxy.admin();
    let mut out = Vec::new();
    for s in STATS {
        out.push(format!("{s}={:?}", a.stat(s).await));
    }
    out
}

#[tokio::test]
async fn connection_pools_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let other = EchoUpstream::with_options(EchoOptions::named("b")).await;
        let other_port = other.port();
        let build = |admin: u16, listen: u16, upstream: u16| {
            let eps: Vec<_> = [upstream, other_port]
                .iter()
                .map(|p| json!({ "endpoint": { "address": { "socket_address": {
                    "address": "127.0.0.1", "port_value": p } } } }))
                .collect();
            let up = json!({
                "name": "up", "connect_timeout": "1s", "type": "STATIC",
                "lb_policy": "ROUND_ROBIN",
                "load_assignment": { "cluster_name": "up", "endpoints": [{ "lb_endpoints": eps }] },
                "circuit_breakers": { "thresholds": [{ "max_connection_pools": 1 }] },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "common_http_protocol_options": { "idle_timeout": "0.4s" },
                        "explicit_http_config": { "http_protocol_options": {} }
                    }
                }
            });
            bootstrap(
                admin,
                vec![listener(
                    "l",
                    "127.0.0.1",
                    listen,
                    hcm("pools", vec![vhost("all", &["*"], vec![route("/", "up")])]),
                )],
                vec![up],
            )
            .to_string()
        };
        let (e, s) = pair(Up::H1, build).await;
        let mut seen = Vec::new();
        for side in [&e, &s] {
            let mut steps = Vec::new();
            // One host, then the other: the first pool is idle and given up.
            steps.push(get(side, "/one").await);
            steps.push(get(side, "/two").await);
            steps.push(format!("{:?}", stats(side).await));
            // A slow request holds its pool; the next goes to the other host meanwhile.
            let slow = get(side, "/slow?sleep=600");
            let fast = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                get(side, "/fast").await
            };
            let (a, b) = tokio::join!(slow, fast);
            steps.push(a);
            steps.push(b);
            tokio::time::sleep(Duration::from_millis(200)).await;
            steps.push(format!("{:?}", stats(side).await));
            // Once the pool's last connection has closed (idle timeout), the pool is gone and
            // the other host gets one.
            steps.push(get(side, "/three").await);
            tokio::time::sleep(Duration::from_millis(900)).await;
            steps.push(get(side, "/four").await);
            steps.push(format!("{:?}", stats(side).await));
            seen.push(steps);
        }
        eprintln!("envoy: {:#?}\nskiff: {:#?}", seen[0], seen[1]);
        assert_eq!(seen[0], seen[1]);
    })
    .await
}
