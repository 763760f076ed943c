//! `track_cluster_stats.per_endpoint_stats` side by side with Envoy 1.40: each host's stats
//! (`cluster.<observability name>.endpoint.<address>.*`) in `/stats` (after the other counters
//! and gauges, whatever `usedonly` says; `filter` and `type` applying), in its JSON form, and
//! in `/stats/prometheus` (after the histograms, a family per stat with a line per host).
//! Two clusters ask for them: one with an `alt_stat_name` that served a request, and one of two
//! hosts that each refused a connection.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::config::{bootstrap, hcm, listener, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::run_for;
use skiff_tests::upstream::EchoUpstream;

fn config(admin: u16, port: u16, backend: u16, refused: u16) -> String {
    let vh = json!({ "name": "v", "domains": ["*"], "routes": [
        { "match": { "prefix": "/dead" }, "route": { "cluster": "dead" } },
        { "match": { "prefix": "/" }, "route": { "cluster": "backend" } },
    ] });
    let cluster = |name: &str, ports: &[u16]| {
        let endpoints: Vec<Value> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                json!({ "endpoint": { "address": { "socket_address": {
                    "address": format!("127.0.0.{}", i + 1), "port_value": p } } } })
            })
            .collect();
        json!({ "name": name, "connect_timeout": "1s", "type": "STATIC",
            "track_cluster_stats": { "per_endpoint_stats": true },
            "load_assignment": { "cluster_name": name,
                "endpoints": [ { "lb_endpoints": endpoints } ] } })
    };
    let mut backend = cluster("backend", &[backend]);
    backend["alt_stat_name"] = json!("backend_alt");
    // Two hosts nothing listens on (round robin's first pick is random: each gets one of two
    // requests).
    let dead = cluster("dead", &[refused, refused]);
    let other = json!({ "name": "other", "connect_timeout": "1s", "type": "STATIC" });
    to_yaml(&bootstrap(
        admin,
        vec![listener("l", "127.0.0.1", port, hcm("l", vec![vh]))],
        vec![backend, dead, other],
    ))
}

#[tokio::test]
async fn per_endpoint_stats_side_by_side_with_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let backend = EchoUpstream::start("backend").await;
            let refused = skiff_tests::free_port();
            let port = skiff_tests::free_port();
            let yaml = config(skiff_tests::free_port(), port, backend.port(), refused);
            let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            for path in ["/", "/dead", "/dead"] {
                let url = format!("http://127.0.0.1:{port}{path}");
                skiff_tests::client::curl(&["-s", &url]).await;
            }
            let admin = proxy.admin();
            let mask = |s: &str| {
                s.replace(&backend.port().to_string(), "<backend>")
                    .replace(&refused.to_string(), "<refused>")
            };
            let mut got = Vec::new();
            for q in ["", "?usedonly", "?filter=rq_total", "?type=Gauges"] {
                let body = admin.get(&format!("/stats{q}")).await.body;
                let text = String::from_utf8_lossy(&body).to_string();
                let lines: Vec<&str> = text.lines().collect();
                // Where they are: after the last other counter or gauge.
                let first = lines.iter().position(|l| l.contains(".endpoint."));
                let others_after = first.is_some_and(|i| {
                    lines[i..].iter().any(|l| {
                        !l.contains(".endpoint.")
                            && !l.contains(": P0(")
                            && !l.ends_with("No recorded values")
                    })
                });
                got.push(format!("/stats{q}: others after them: {others_after}"));
                got.extend(
                    lines
                        .iter()
                        .filter(|l| l.contains(".endpoint."))
                        .map(|l| mask(l)),
                );
            }
            let json: Value = serde_json::from_slice(&admin.get("/stats?format=json").await.body)
                .expect("JSON stats");
            for s in json["stats"].as_array().cloned().unwrap_or_default() {
                if let Some(n) = s["name"].as_str().filter(|n| n.contains(".endpoint.")) {
                    got.push(mask(&format!("json {n} {}", s["value"])));
                }
            }
            let prom = admin.get("/stats/prometheus").await.body;
            let prom = String::from_utf8_lossy(&prom).to_string();
            let lines: Vec<&str> = prom.lines().collect();
            let first = lines
                .iter()
                .position(|l| l.contains("envoy_cluster_endpoint"))
                .unwrap_or(lines.len());
            got.push(format!(
                "prometheus: lines after them: {}",
                lines[first..]
                    .iter()
                    .filter(|l| !l.contains("envoy_cluster_endpoint"))
                    .count()
            ));
            got.extend(
                lines
                    .iter()
                    .filter(|l| l.contains("envoy_cluster_endpoint"))
                    .map(|l| mask(l)),
            );
            seen.push(got);
        }
        let all = skiff_tests::diff::assert_same_lines(&seen);
        if std::env::var("ENDPOINT_STATS_SHOW").is_ok() {
            eprintln!("{all}");
        }
        assert!(
            all.contains("cluster.backend_alt.endpoint.127.0.0.1_<backend>.rq_success: 1"),
            "{all}"
        );
        assert!(
            all.contains("cluster.dead.endpoint.127.0.0.1_<refused>.cx_connect_fail: 1"),
            "{all}"
        );
    })
    .await;
}
