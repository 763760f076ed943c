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

#[tokio::test]
async fn preconnect_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let build = |admin: u16, listen: u16, upstream: u16| {
            let mut two = cluster("two", &[upstream]);
            two["preconnect_policy"] = json!({ "per_upstream_preconnect_ratio": 2.0 });
            let mut half = cluster("half", &[upstream]);
            half["preconnect_policy"] = json!({ "per_upstream_preconnect_ratio": 1.5 });
            bootstrap(
                admin,
                vec![listener(
                    "l",
                    "127.0.0.1",
                    listen,
                    hcm(
                        "pre",
                        vec![vhost(
                            "all",
                            &["*"],
                            vec![route("/two", "two"), route("/half", "half")],
                        )],
                    ),
                )],
                vec![two, half],
            )
            .to_string()
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
