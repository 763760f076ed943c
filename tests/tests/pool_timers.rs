//! Upstream connection timers side by side with Envoy 1.40: a cluster's
//! `common_http_protocol_options.idle_timeout` closes a pooled connection that has had no
//! request for that long, and `max_connection_duration` drains one that has lived that long,
//! over HTTP/1.1 and HTTP/2 upstreams; the `upstream_cx_*` stats and the connections the
//! upstreams see must agree.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{get, Http1Client};
use skiff_tests::config::{bootstrap, cluster, http_listener, route, to_yaml};
use skiff_tests::upstream::h2c::H2Upstream;
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for, Kind, ProxyProcess};

fn with_options(name: &str, port: u16, h2: bool, common: Value) -> Value {
    let mut c = cluster(name, &[port]);
    let mut o = json!({
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": common,
        "explicit_http_config": { "http_protocol_options": {} } });
    if h2 {
        o["explicit_http_config"] = json!({ "http2_protocol_options": {} });
    }
    c["typed_extension_protocol_options"] =
        json!({ "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": o });
    c
}

const CLUSTERS: [&str; 4] = ["idle1", "idle2", "max1", "max2"];

#[tokio::test]
async fn idle_timeout_and_max_connection_duration_side_by_side() {
    run_for(Duration::from_secs(90), async {
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            // Upstreams of its own, so each counts one proxy's connections.
            let (h1, h2) = (
                EchoUpstream::start("h1").await,
                H2Upstream::start("h2").await,
            );
            let idle = json!({ "idle_timeout": "0.5s" });
            let max = json!({ "max_connection_duration": "0.8s" });
            let (admin, port) = (free_port(), free_port());
            let yaml = to_yaml(&bootstrap(
                admin,
                vec![http_listener(
                    port,
                    CLUSTERS
                        .iter()
                        .map(|c| route(&format!("/{c}"), c))
                        .collect(),
                )],
                vec![
                    with_options("idle1", h1.port(), false, idle.clone()),
                    with_options("idle2", h2.port(), true, idle),
                    with_options("max1", h1.port(), false, max.clone()),
                    with_options("max2", h2.port(), true, max),
                ],
            ));
            let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let client = Http1Client::connect(&format!("127.0.0.1:{port}"))
                .await
                .expect("connect");
            sides.push((kind, proxy, client, h1, h2));
        }
        for (kind, proxy, client, _, _) in sides.iter_mut() {
            let who = kind.name();
            let admin = proxy.admin();
            // One request each: the idle connections close after 0.5 s.
            for c in ["idle1", "idle2"] {
                let r = client
                    .send(get(&format!("/{c}"), "t.example"))
                    .await
                    .expect("response");
                assert_eq!(r.status, 200, "{who}: {c}");
            }
            for c in ["idle1", "idle2"] {
                admin
                    .wait_stat(
                        &format!("cluster.{c}.upstream_cx_idle_timeout"),
                        Duration::from_secs(5),
                        |v| v == 1,
                    )
                    .await;
                admin
                    .wait_stat(
                        &format!("cluster.{c}.upstream_cx_active"),
                        Duration::from_secs(5),
                        |v| v == 0,
                    )
                    .await;
            }
            // Requests every 100 ms for 2 s: the connection is replaced at 0.8 s and 1.6 s,
            // and no request fails.
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_millis(2000) {
                for c in ["max1", "max2"] {
                    let r = client
                        .send(get(&format!("/{c}"), "t.example"))
                        .await
                        .expect("response");
                    assert_eq!(r.status, 200, "{who}: {c}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for c in ["max1", "max2"] {
                let reached = admin
                    .stat(&format!("cluster.{c}.upstream_cx_max_duration_reached"))
                    .await
                    .unwrap_or(0);
                let total = admin
                    .stat(&format!("cluster.{c}.upstream_cx_total"))
                    .await
                    .unwrap_or(0);
                assert!((2..=3).contains(&reached), "{who}: {c}: {reached} reached");
                assert!(
                    total >= reached,
                    "{who}: {c}: {total} connections, {reached} reached"
                );
                assert_eq!(
                    admin
                        .stat(&format!("cluster.{c}.upstream_cx_idle_timeout"))
                        .await,
                    Some(0),
                    "{who}: {c}"
                );
            }
        }
        // The upstreams saw as many connections from skiff as from Envoy.
        let e = (sides[0].3.rec.connections(), sides[0].4.rec.connections());
        let s = (sides[1].3.rec.connections(), sides[1].4.rec.connections());
        assert_eq!(
            s, e,
            "upstream connections (HTTP/1.1, HTTP/2): skiff's, Envoy's"
        );
    })
    .await;
}
