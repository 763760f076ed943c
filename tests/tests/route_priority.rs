//! A route's `priority`, side by side with Envoy 1.40: `HIGH` routes count in the cluster's
//! `HIGH` circuit breakers and use connections of their own; `DEFAULT` ones in the default
//! thresholds. And routes with `non_forwarding_action`.

use std::time::Duration;

use serde_json::json;
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, to_yaml, vhost};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_priority_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let up = EchoUpstream::start("up").await;
            let port = free_port();
            let mut c = cluster("up", &[up.port()]);
            c["circuit_breakers"] = json!({ "thresholds": [
                { "priority": "DEFAULT", "max_requests": 1 },
                { "priority": "HIGH", "max_requests": 5 } ] });
            let routes = vec![
                json!({ "match": { "prefix": "/high" },
                    "route": { "cluster": "up", "priority": "HIGH" } }),
                json!({ "match": { "prefix": "/" }, "route": { "cluster": "up" } }),
            ];
            let h = hcm("prio", vec![vhost("all", &["*"], routes)]);
            let v = bootstrap(
                free_port(),
                vec![listener("l", "127.0.0.1", port, h)],
                vec![c],
            );
            let p = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for prefix in ["/default", "/high"] {
                let mut tasks = Vec::new();
                for n in 0..3 {
                    let url = format!("http://127.0.0.1:{port}{prefix}/{n}?sleep=800");
                    tasks.push(tokio::spawn(async move {
                        curl(&["-s", &url]).await.resp.status
                    }));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut statuses = Vec::new();
                for t in tasks {
                    statuses.push(t.await.expect("task"));
                }
                statuses.sort();
                got.push(format!("{prefix}: {statuses:?}"));
            }
            for stat in [
                "upstream_rq_pending_overflow",
                "upstream_rq_active_overflow",
                "upstream_cx_total",
                "upstream_rq_total",
            ] {
                let name = format!("cluster.up.{stat}");
                got.push(format!("{name}: {}", p.admin().counter(&name).await));
            }
            seen.push(got);
        }
        eprintln!(
            "Envoy:\n{}\nskiff:\n{}",
            seen[0].join("\n"),
            seen[1].join("\n")
        );
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
    })
    .await
}

/// A route with `non_forwarding_action` that reaches the router, side by side with Envoy 1.40:
/// answered as for a missing cluster (503, `NC`, `cluster_not_found`), with the route's and
/// virtual host's response headers.
#[tokio::test]
async fn non_forwarding_routes_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let up = EchoUpstream::start("up").await;
            let port = free_port();
            let routes = vec![
                json!({ "name": "nf", "match": { "prefix": "/nf" }, "non_forwarding_action": {},
                    "response_headers_to_add": [{ "header": { "key": "x-rt", "value": "r1" } }] }),
                json!({ "match": { "prefix": "/" }, "route": { "cluster": "up" } }),
            ];
            let mut vh = vhost("all", &["*"], routes);
            vh["response_headers_to_add"] = json!([{ "header": { "key": "x-vh", "value": "v1" } }]);
            let mut h = hcm("nf", vec![vh]);
            h["typed_config"]["access_log"] = json!([{ "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": { "text_format_source": { "inline_string":
                        "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% route=%ROUTE_NAME%\n" } } } }]);
            let v = bootstrap(
                free_port(),
                vec![listener("l", "127.0.0.1", port, h)],
                vec![cluster("up", &[up.port()])],
            );
            let p = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let r = curl(&["-s", &format!("http://127.0.0.1:{port}/nf/x")]).await;
            let log = p
                .wait_stdout_line(Duration::from_secs(5), |l| l.starts_with("/nf/x "))
                .await;
            seen.push(format!(
                "{} {:?} x-rt={:?} x-vh={:?} | {log}",
                r.resp.status,
                r.resp.text(),
                r.resp.header("x-rt"),
                r.resp.header("x-vh")
            ));
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        assert!(seen[0].starts_with("503 "), "{}", seen[0]);
    })
    .await
}
