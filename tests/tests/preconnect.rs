//! `preconnect_policy` against Envoy 1.40: connections opened ahead of the requests that will
//! use them (`per_upstream_preconnect_ratio`), counted in `upstream_cx_total`, for sequential
//! and concurrent requests.

use std::time::Duration;

use serde_json::json;
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, vhost};
use skiff_tests::run_for;
use skiff_tests::side_by_side::{pair, Side, Up};

async fn total(side: &Side, c: &str) -> u64 {
    side.proxy
        .admin()
        .counter(&format!("cluster.{c}.upstream_cx_total"))
        .await
}

async fn get(side: &Side, path: &str) -> u16 {
    curl(&[&format!("http://127.0.0.1:{}{path}", side.port)])
        .await
        .resp
        .status
}

/// A bootstrap whose listener routes `/<name>` to each of `clusters` by its name.
fn routed_to(admin: u16, listen: u16, clusters: Vec<serde_json::Value>) -> String {
    let routes = clusters
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default();
            route(&format!("/{name}"), name)
        })
        .collect();
    bootstrap(
        admin,
        vec![listener(
            "l",
            "127.0.0.1",
            listen,
            hcm("pre", vec![vhost("all", &["*"], routes)]),
        )],
        clusters,
    )
    .to_string()
}

#[tokio::test]
async fn preconnect_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let build = |admin: u16, listen: u16, upstream: u16| {
            let mut two = cluster("two", &[upstream]);
            two["preconnect_policy"] = json!({ "per_upstream_preconnect_ratio": 2.0 });
            let mut half = cluster("half", &[upstream]);
            half["preconnect_policy"] = json!({ "per_upstream_preconnect_ratio": 1.5 });
            routed_to(admin, listen, vec![two, half])
        };
        let (e, s) = pair(Up::H1, build).await;
        let mut seen = Vec::new();
        for side in [&e, &s] {
            let mut steps = Vec::new();
            for c in ["two", "half"] {
                for i in 0..3 {
                    assert_eq!(get(side, &format!("/{c}/seq{i}")).await, 200);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    steps.push(format!(
                        "{c} after {} sequential: {}",
                        i + 1,
                        total(side, c).await
                    ));
                }
                let slow: Vec<_> = (0..4)
                    .map(|i| {
                        get(
                            side,
                            Box::leak(format!("/{c}/par{i}?sleep=300").into_boxed_str()),
                        )
                    })
                    .collect();
                for st in futures_util::future::join_all(slow).await {
                    assert_eq!(st, 200);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                steps.push(format!("{c} after 4 concurrent: {}", total(side, c).await));
            }
            seen.push(steps);
        }
        eprintln!("envoy: {:#?}\nskiff: {:#?}", seen[0], seen[1]);
        assert_eq!(seen[0], seen[1]);
    })
    .await
}

/// HTTP/2 pools: each connection carries two streams (the cluster's `max_concurrent_streams`),
/// and the pool keeps `(pending + active) × ratio` streams' worth of connections, as Envoy's.
#[tokio::test]
async fn http2_preconnect_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let build = |admin: u16, listen: u16, upstream: u16| {
            let h2 = |name: &str, ratio: Option<f64>| {
                let mut c = cluster(name, &[upstream]);
                c["http2_protocol_options"] = json!({ "max_concurrent_streams": 2 });
                if let Some(r) = ratio {
                    c["preconnect_policy"] = json!({ "per_upstream_preconnect_ratio": r });
                }
                c
            };
            routed_to(
                admin,
                listen,
                vec![
                    h2("plain", None),
                    h2("half", Some(1.5)),
                    h2("three", Some(3.0)),
                ],
            )
        };
        let (e, s) = pair(Up::H2, build).await;
        let mut seen = Vec::new();
        for side in [&e, &s] {
            let mut steps = Vec::new();
            for c in ["plain", "half", "three"] {
                assert_eq!(get(side, &format!("/{c}/first")).await, 200);
                tokio::time::sleep(Duration::from_millis(100)).await;
                steps.push(format!("{c} after one: {}", total(side, c).await));
                // Streams started one after another, each while the ones before are under way.
                let mut slow = Vec::new();
                let port = side.port;
                for i in 0..3 {
                    let url = format!("http://127.0.0.1:{port}/{c}/par{i}?sleep=600");
                    slow.push(tokio::spawn(async move { curl(&[&url]).await.resp.status }));
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                for st in futures_util::future::join_all(slow).await {
                    assert_eq!(st.expect("request task"), 200);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                steps.push(format!("{c} after 3 overlapping: {}", total(side, c).await));
            }
            seen.push(steps);
        }
        eprintln!("envoy: {:#?}\nskiff: {:#?}", seen[0], seen[1]);
        assert_eq!(seen[0], seen[1]);
    })
    .await
}

/// `predictive_preconnect_ratio` over three hosts: before each request, connections are made
/// ahead on the hosts round robin will pick next, while the cluster's pools carry less than
/// the ratio times their requests (the one about to come counted); hashing policies cannot
/// pick ahead and make none.
#[tokio::test]
async fn predictive_preconnect_as_envoy() {
    use skiff_tests::upstream::EchoUpstream;
    use skiff_tests::{free_port, Kind, ProxyProcess};
    run_for(Duration::from_secs(60), async {
        let mut ups = Vec::new();
        for i in 0..3 {
            ups.push(EchoUpstream::start(&format!("u{i}")).await);
        }
        let ports: Vec<u16> = ups.iter().map(|u| u.port()).collect();
        let with = |name: &str, extra: serde_json::Value| {
            let mut c = cluster(name, &ports);
            if let (Some(c), Some(x)) = (c.as_object_mut(), extra.as_object()) {
                for (k, v) in x {
                    c.insert(k.clone(), v.clone());
                }
            }
            c
        };
        let predictive =
            |r: f64| json!({ "preconnect_policy": { "predictive_preconnect_ratio": r } });
        let clusters = vec![
            with("rr", predictive(2.0)),
            with("rr3", predictive(3.0)),
            with("ring", {
                let mut v = predictive(2.0);
                v["lb_policy"] = json!("RING_HASH");
                v
            }),
        ];
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, listen) = (free_port(), free_port());
            let names: Vec<String> = clusters
                .iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect();
            // The hashing cluster's requests all hash alike: one host.
            let routes = names
                .iter()
                .map(|n| {
                    let mut r = route(&format!("/{n}/"), n);
                    if n == "ring" {
                        r["route"]["hash_policy"] =
                            json!([{ "header": { "header_name": "x-user" } }]);
                    }
                    r
                })
                .collect();
            let cfg = bootstrap(
                admin,
                vec![listener(
                    "l",
                    "127.0.0.1",
                    listen,
                    hcm("pre", vec![vhost("all", &["*"], routes)]),
                )],
                clusters.clone(),
            )
            .to_string();
            let proxy = ProxyProcess::start(kind, &cfg, &["--concurrency", "1"]).await;
            let mut steps = Vec::new();
            for c in &names {
                for i in 0..4 {
                    let url = format!("http://127.0.0.1:{listen}/{c}/seq{i}");
                    assert_eq!(
                        curl(&["-H", "x-user: a", &url]).await.resp.status,
                        200,
                        "{c}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let total = proxy
                        .admin()
                        .counter(&format!("cluster.{c}.upstream_cx_total"))
                        .await;
                    steps.push(format!("{c} after {}: {total}", i + 1));
                }
            }
            seen.push(steps);
        }
        eprintln!("envoy: {:#?}\nskiff: {:#?}", seen[0], seen[1]);
        assert_eq!(seen[0], seen[1]);
    })
    .await
}
