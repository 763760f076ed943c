//! The connection manager's `add_user_agent`, side by side with Envoy 1.40: the node's cluster
//! as `x-envoy-downstream-service-cluster` (and `user-agent` when the request has none), the
//! node's id as `x-envoy-downstream-service-node`; with the node named on the command line
//! (`--service-cluster`, `--service-node`) or in the bootstrap, or not at all.

use std::time::Duration;

use serde_json::json;
use skiff_tests::client::{get, http1_once};
use skiff_tests::config::{bootstrap, cluster, hcm, listener, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for};

const HEADERS: &[&str] = &[
    "user-agent",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_user_agent_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let mut got = Vec::new();
            for (how, node, args) in [
                ("bootstrap", Some(json!({ "id": "n1", "cluster": "c1" })), &[][..]),
                (
                    "command line",
                    None,
                    &["--service-cluster", "c2", "--service-node", "n2"][..],
                ),
                ("none", None, &[][..]),
            ] {
                let upstream = EchoUpstream::start("up").await;
                let port = free_port();
                let mut m = hcm(
                    "ua",
                    vec![json!({ "name": "all", "domains": ["*"],
                        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "up" } }] })],
                );
                m["typed_config"]["add_user_agent"] = json!(true);
                let mut v = bootstrap(
                    free_port(),
                    vec![listener("l", "127.0.0.1", port, m)],
                    vec![cluster("up", &[upstream.port()])],
                );
                if let Some(n) = node {
                    v["node"] = n;
                }
                let _p = ProxyProcess::start(kind, &to_yaml(&v), args).await;
                let addr = format!("127.0.0.1:{port}");
                for extra in [
                    &[][..],
                    &[("user-agent", "curl/8")][..],
                    &[("x-envoy-downstream-service-cluster", "spoof")][..],
                ] {
                    let mut req = get("/", "ua.example.com");
                    for (k, v) in extra {
                        req.headers_mut().insert(*k, v.parse().expect("value"));
                    }
                    http1_once(&addr, req).await.expect("a response");
                }
                for r in upstream.rec.wait_requests(3, Duration::from_secs(3)).await {
                    let picked: Vec<String> = HEADERS
                        .iter()
                        .map(|h| format!("{h}={:?}", r.header(h)))
                        .collect();
                    got.push(format!("{how}: {}", picked.join(" ")));
                }
            }
            seen.push(got);
        }
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        let all = seen[0].join("\n");
        assert!(all.contains("x-envoy-downstream-service-cluster=Some(\"c1\")"), "{all}");
        assert!(all.contains("x-envoy-downstream-service-node=Some(\"n2\")"), "{all}");
    })
    .await;
}
