//! The `override_host`, `client_side_weighted_round_robin` and `wrr_locality` load balancing
//! policies side by side with Envoy 1.40. `override_host`: a request names its hosts by
//! address, in dynamic metadata (set here by `header_to_metadata`) and then in a header; the
//! first the cluster has takes the first attempt, whatever its health, and the next ones the
//! retries; without any (or once each was tried) the fallback policy picks. Client-side weighted round robin weighs hosts by the load
//! reports in their responses, alone or inside `wrr_locality` (which takes nothing else).

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, listener, router, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

fn endpoint(port: u16, status: &str) -> Value {
    json!({ "endpoint": { "address": { "socket_address": {
        "address": "127.0.0.1", "port_value": port } } }, "health_status": status })
}

fn policy(name: &str, config: Value) -> Value {
    json!({ "policies": [ { "typed_extension_config": { "name": name, "typed_config": config } } ] })
}

fn config(admin: u16, port: u16, ups: &[u16], dead: u16) -> String {
    let rr = policy(
        "envoy.load_balancing_policies.round_robin",
        json!({ "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin" }),
    );
    let override_host = policy(
        "envoy.load_balancing_policies.override_host",
        json!({
            "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
            "override_host_sources": [
                { "metadata": { "key": "ns", "path": [ { "key": "dest" } ] } },
                { "header": "x-dest" },
            ],
            "fallback_policy": rr,
        }),
    );
    let clusters = vec![
        json!({ "name": "o", "type": "STATIC", "connect_timeout": "1s",
            "load_balancing_policy": override_host,
            "load_assignment": { "cluster_name": "o", "endpoints": [ { "lb_endpoints": [
                endpoint(ups[0], "HEALTHY"), endpoint(ups[1], "HEALTHY"),
                endpoint(ups[2], "HEALTHY"), endpoint(ups[3], "UNHEALTHY"),
                endpoint(dead, "HEALTHY") ] } ] } }),
    ];
    let hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": "o",
            "route_config": { "virtual_hosts": [ { "name": "v", "domains": ["*"], "routes": [
                { "match": { "prefix": "/" }, "route": { "cluster": "o",
                    "retry_policy": { "retry_on": "connect-failure", "num_retries": 1 } } },
            ] } ] },
            "http_filters": [
                { "name": "envoy.filters.http.header_to_metadata", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
                    "request_rules": [ { "header": "x-meta-dest",
                        "on_header_present": { "metadata_namespace": "ns", "key": "dest", "type": "STRING" } } ] } },
                router(),
            ],
        },
    });
    to_yaml(&bootstrap(
        admin,
        vec![listener("l", "127.0.0.1", port, hcm)],
        clusters,
    ))
}

#[tokio::test]
async fn override_host_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut ups = Vec::new();
        for n in ["A", "B", "C", "U"] {
            ups.push(EchoUpstream::with_options(EchoOptions::named(n)).await);
        }
        let ports: Vec<u16> = ups.iter().map(|u| u.port()).collect();
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let cases: Vec<(&str, Vec<String>)> = vec![
            ("B named", vec![format!("x-dest: {}", addr(ports[1]))]),
            (
                "unknown, then C",
                vec![format!("x-dest: 127.0.0.1:1, {}", addr(ports[2]))],
            ),
            (
                "unhealthy U named",
                vec![format!("x-dest: {}", addr(ports[3]))],
            ),
            (
                "dead, then B on retry",
                vec![format!("x-dest: {},{}", addr(dead), addr(ports[1]))],
            ),
            (
                "metadata before header",
                vec![
                    format!("x-meta-dest: {}", addr(ports[2])),
                    format!("x-dest: {}", addr(ports[1])),
                ],
            ),
            ("only unknown", vec!["x-dest: 127.0.0.1:1".to_string()]),
            ("none", vec![]),
        ];
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, port) = (free_port(), free_port());
            let _proxy = ProxyProcess::start(
                kind,
                &config(admin, port, &ports, dead),
                &["--concurrency", "1"],
            )
            .await;
            let mut got = Vec::new();
            for (what, headers) in &cases {
                let mut served = std::collections::BTreeSet::new();
                let mut statuses = std::collections::BTreeSet::new();
                for _ in 0..3 {
                    let mut args: Vec<String> = vec!["-s".into()];
                    for h in headers {
                        args.push("-H".into());
                        args.push(h.clone());
                    }
                    args.push(format!("http://127.0.0.1:{port}/o"));
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let r = curl(&args).await;
                    statuses.insert(r.resp.status);
                    served.insert(r.resp.header("x-upstream").unwrap_or("-").to_string());
                }
                got.push(format!("{what}: {statuses:?} {served:?}"));
            }
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        let all = seen[0].join("\n");
        for want in [
            "B named: {200} {\"B\"}",
            "unknown, then C: {200} {\"C\"}",
            "unhealthy U named: {200} {\"U\"}",
            "dead, then B on retry: {200} {\"B\"}",
            "metadata before header: {200} {\"C\"}",
        ] {
            assert!(all.contains(want), "{want}\n{all}");
        }
    })
    .await
}

/// `wrr_locality` over anything but client-side weighted round robin is refused by both, with
/// Envoy's words.
#[tokio::test]
async fn wrr_locality_is_refused_as_envoy_refuses_it() {
    run_for(Duration::from_secs(30), async {
        let rr = policy(
            "envoy.load_balancing_policies.round_robin",
            json!({ "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin" }),
        );
        let wrr = policy(
            "envoy.load_balancing_policies.wrr_locality",
            json!({
                "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality",
                "endpoint_picking_policy": rr,
            }),
        );
        let c = json!({ "name": "w", "type": "STATIC", "connect_timeout": "1s",
            "load_balancing_policy": wrr,
            "load_assignment": { "cluster_name": "w", "endpoints": [] } });
        let yaml = to_yaml(&bootstrap(free_port(), vec![], vec![c]));
        let cfg = skiff_tests::proxy::write_config("wrr-locality", &yaml);
        for kind in [Kind::Envoy, Kind::under_test()] {
            let out = skiff_tests::proxy::run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
            assert_ne!(out.code, Some(0), "{}", kind.name());
            assert!(
                out.output().contains("only supports ClientSideWeightedRoundRobinLoadBalancer"),
                "{}: {}",
                kind.name(),
                out.output()
            );
        }
    })
    .await
}

/// An override source naming both a header and metadata, or neither, is refused by both.
#[tokio::test]
async fn invalid_override_sources_are_refused_by_both() {
    run_for(Duration::from_secs(30), async {
        let rr = policy(
            "envoy.load_balancing_policies.round_robin",
            json!({ "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin" }),
        );
        for (source, words) in [
            (
                json!({ "header": "x-dest", "metadata": { "key": "ns", "path": [ { "key": "d" } ] } }),
                "Only one override source must be set",
            ),
            (json!({}), "Empty override source"),
        ] {
            let p = policy(
                "envoy.load_balancing_policies.override_host",
                json!({
                    "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
                    "override_host_sources": [ source ],
                    "fallback_policy": rr,
                }),
            );
            let c = json!({ "name": "o", "type": "STATIC", "connect_timeout": "1s",
                "load_balancing_policy": p,
                "load_assignment": { "cluster_name": "o", "endpoints": [] } });
            let yaml = to_yaml(&bootstrap(free_port(), vec![], vec![c]));
            let cfg = skiff_tests::proxy::write_config("override-host", &yaml);
            for kind in [Kind::Envoy, Kind::under_test()] {
                let out =
                    skiff_tests::proxy::run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert_ne!(out.code, Some(0), "{}", kind.name());
                assert!(out.output().contains(words), "{}: {}", kind.name(), out.output());
            }
        }
    })
    .await
}

/// `client_side_weighted_round_robin`, and inside `wrr_locality`, side by side: `A` reports
/// `rps_fractional=100, cpu_utilization=0.5` (weight 200), `B` the same at 0.25 (400), `C`
/// nothing (the median, 300). Once the weights are in force (`/clusters` shows them, the same
/// on both), 90 requests go 2:4:3.
#[tokio::test]
async fn client_side_weighted_round_robin_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let report = |cpu: &str| {
            vec![(
                "endpoint-load-metrics".to_string(),
                format!("TEXT cpu_utilization={cpu}, rps_fractional=100"),
            )]
        };
        let mut a = EchoOptions::named("A");
        a.extra_headers = report("0.5");
        let mut b = EchoOptions::named("B");
        b.extra_headers = report("0.25");
        let ups = [
            EchoUpstream::with_options(a).await,
            EchoUpstream::with_options(b).await,
            EchoUpstream::with_options(EchoOptions::named("C")).await,
        ];
        let cswrr = json!({ "policies": [ { "typed_extension_config": {
            "name": "envoy.load_balancing_policies.client_side_weighted_round_robin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin",
                "blackout_period": "0s",
                "weight_update_period": "0.1s",
            } } } ] });
        let wrr = policy(
            "envoy.load_balancing_policies.wrr_locality",
            json!({
                "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality",
                "endpoint_picking_policy": cswrr,
            }),
        );
        let eps: Vec<Value> = ups.iter().map(|u| endpoint(u.port(), "HEALTHY")).collect();
        let cluster = |name: &str, policy: &Value| {
            json!({ "name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_balancing_policy": policy,
                "load_assignment": { "cluster_name": name, "endpoints": [ {
                    "locality": { "zone": "a" }, "load_balancing_weight": 1, "lb_endpoints": eps } ] } })
        };
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, port) = (free_port(), free_port());
            let hcm = json!({
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM,
                    "stat_prefix": "w",
                    "route_config": { "virtual_hosts": [ { "name": "v", "domains": ["*"], "routes": [
                        { "match": { "prefix": "/wrr" }, "route": { "cluster": "wrr" } },
                        { "match": { "prefix": "/" }, "route": { "cluster": "cswrr" } },
                    ] } ] },
                    "http_filters": [ router() ],
                },
            });
            let yaml = to_yaml(&bootstrap(
                admin,
                vec![listener("l", "127.0.0.1", port, hcm)],
                vec![cluster("cswrr", &cswrr), cluster("wrr", &wrr)],
            ));
            let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for path in ["/", "/wrr"] {
                // Every host answers once or more, then the weights take effect.
                for _ in 0..12 {
                    curl(&["-s", &format!("http://127.0.0.1:{port}{path}")]).await;
                }
                tokio::time::sleep(Duration::from_millis(600)).await;
                let name = if path == "/" { "cswrr" } else { "wrr" };
                let text = proxy.admin().get("/clusters").await.text();
                let weights: Vec<String> = ups
                    .iter()
                    .map(|u| {
                        let key = format!("{name}::127.0.0.1:{}::weight::", u.port());
                        text.lines()
                            .find_map(|l| l.strip_prefix(&key))
                            .unwrap_or("?")
                            .to_string()
                    })
                    .collect();
                let mut counts = std::collections::BTreeMap::new();
                for _ in 0..90 {
                    let r = curl(&["-s", &format!("http://127.0.0.1:{port}{path}")]).await;
                    *counts
                        .entry(r.resp.header("x-upstream").unwrap_or("?").to_string())
                        .or_insert(0i32) += 1;
                }
                for (host, want) in [("A", 20), ("B", 40), ("C", 30)] {
                    let n = counts.get(host).copied().unwrap_or(0);
                    assert!((n - want).abs() <= 4, "{}: {path}: {counts:?}", kind.name());
                }
                got.push(format!("{name} weights {weights:?}"));
            }
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        assert_eq!(seen[0][0], "cswrr weights [\"200\", \"400\", \"300\"]");
    })
    .await
}
