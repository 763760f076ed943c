//! Where retries go, side by side with Envoy 1.40: `retry_policy.retry_priority` with
//! `envoy.retry_priorities.previous_priorities` (which priority each attempt of a failing
//! request goes to, for several `update_frequency` values and retry counts, over a cluster with
//! one failing host in each of priorities 0, 1 and 2), and the `omit_canary_hosts` and
//! `omit_host_metadata` retry host predicates.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, hcm, listener, to_yaml, vhost};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for};

fn route(prefix: &str, retries: u32, update_frequency: Option<u32>) -> Value {
    let mut policy = json!({
        "retry_on": "5xx",
        "num_retries": retries,
        "retry_back_off": { "base_interval": "0.001s", "max_interval": "0.002s" },
    });
    if let Some(n) = update_frequency {
        policy["retry_priority"] = json!({
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                "update_frequency": n,
            }
        });
    }
    json!({ "match": { "prefix": prefix }, "route": { "cluster": "prio", "retry_policy": policy } })
}

fn cluster(ports: &[u16]) -> Value {
    let endpoints: Vec<Value> = ports
        .iter()
        .enumerate()
        .map(|(p, port)| {
            json!({ "priority": p, "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": port } } } }] })
        })
        .collect();
    json!({
        "name": "prio",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": { "cluster_name": "prio", "endpoints": endpoints },
    })
}

#[tokio::test]
async fn previous_priorities_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let cases = [
            ("/none", 3),
            ("/uf1", 3),
            ("/uf1", 8),
            ("/uf2", 3),
            ("/uf2", 8),
            ("/uf3", 8),
        ];
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let ups = [
                EchoUpstream::start("p0").await,
                EchoUpstream::start("p1").await,
                EchoUpstream::start("p2").await,
            ];
            let port = free_port();
            let mut routes = Vec::new();
            for retries in [3, 8] {
                routes.push(route(&format!("/none/{retries}/"), retries, None));
                for uf in [1, 2, 3] {
                    routes.push(route(&format!("/uf{uf}/{retries}/"), retries, Some(uf)));
                }
            }
            let mut h = hcm("prio", vec![vhost("all", &["*"], routes)]);
            h["typed_config"]["route_config"]["virtual_hosts"][0]
                ["include_request_attempt_count"] = json!(true);
            let ports: Vec<u16> = ups.iter().map(|u| u.port()).collect();
            let v = bootstrap(
                free_port(),
                vec![listener("l", "127.0.0.1", port, h)],
                vec![cluster(&ports)],
            );
            let _proxy = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for (n, (prefix, retries)) in cases.iter().enumerate() {
                let path = format!("{prefix}/{retries}/{n}/status/503");
                let r = curl(&["-s", &format!("http://127.0.0.1:{port}{path}")]).await;
                // Each attempt, by its x-envoy-attempt-count, and the priority that took it.
                let mut order: Vec<(u32, usize)> = Vec::new();
                for (priority, up) in ups.iter().enumerate() {
                    for req in up.rec.requests() {
                        if req.path == path {
                            let count = req
                                .header("x-envoy-attempt-count")
                                .and_then(|c| c.parse().ok())
                                .unwrap_or(0);
                            order.push((count, priority));
                        }
                    }
                }
                order.sort();
                let seq: Vec<String> = order.iter().map(|(_, p)| format!("P{p}")).collect();
                got.push(format!(
                    "{prefix} retries={retries}: {} {}",
                    r.resp.status,
                    seq.join(" ")
                ));
            }
            seen.push(got);
        }
        eprintln!(
            "Envoy:\n{}\nskiff:\n{}",
            seen[0].join("\n"),
            seen[1].join("\n")
        );
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        assert!(
            seen[0].iter().any(|l| l.ends_with("P0 P1 P2 P0")),
            "{:?}",
            seen[0]
        );
    })
    .await
}

/// `retry_host_predicate` `omit_canary_hosts` and `omit_host_metadata` (with
/// `host_selection_retry_max_attempts`), side by side with Envoy 1.40: over a canary host, a
/// host whose `envoy.lb` metadata says `version: v1` and a plain one, all answering 503, the
/// hosts each predicate leaves out never get a request.
#[tokio::test]
async fn omitted_hosts_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let ups = [
                EchoUpstream::start("canary").await,
                EchoUpstream::start("v1").await,
                EchoUpstream::start("plain").await,
            ];
            let metadata = [
                json!({ "canary": true }),
                json!({ "version": "v1" }),
                json!({ "version": "v2" }),
            ];
            let lb_endpoints: Vec<Value> = ups
                .iter()
                .zip(&metadata)
                .map(|(u, md)| {
                    json!({ "endpoint": { "address": { "socket_address": {
                        "address": "127.0.0.1", "port_value": u.port() } } },
                        "metadata": { "filter_metadata": { "envoy.lb": md } } })
                })
                .collect();
            let cluster = json!({
                "name": "prio", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": { "cluster_name": "prio",
                    "endpoints": [{ "lb_endpoints": lb_endpoints }] },
            });
            let predicate = |name: &str, config: Value| {
                let mut c = config;
                c["@type"] = json!(format!("type.googleapis.com/{name}"));
                json!({ "name": name, "typed_config": c })
            };
            let route = |prefix: &str, predicates: Vec<Value>| {
                json!({ "match": { "prefix": prefix }, "route": { "cluster": "prio",
                    "retry_policy": {
                        "retry_on": "5xx", "num_retries": 2,
                        "retry_back_off": { "base_interval": "0.001s", "max_interval": "0.002s" },
                        "retry_host_predicate": predicates,
                        "host_selection_retry_max_attempts": 10,
                    } } })
            };
            let canary = predicate(
                "envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate",
                json!({}),
            );
            let v1 = predicate(
                "envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig",
                json!({ "metadata_match": { "filter_metadata": { "envoy.lb": { "version": "v1" } } } }),
            );
            // Without labels no host is sent back.
            let empty = predicate(
                "envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig",
                json!({}),
            );
            let routes = vec![
                route("/canary", vec![canary.clone()]),
                route("/v1", vec![v1.clone()]),
                route("/both", vec![canary, v1]),
                route("/empty", vec![empty]),
            ];
            let port = free_port();
            let mut h = hcm("prio", vec![vhost("all", &["*"], routes)]);
            h["typed_config"]["route_config"]["virtual_hosts"][0]["include_request_attempt_count"] =
                json!(true);
            let v = bootstrap(
                free_port(),
                vec![listener("l", "127.0.0.1", port, h)],
                vec![cluster],
            );
            let _proxy = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            let names = ["canary", "v1", "plain"];
            for prefix in ["/canary", "/v1", "/both", "/empty"] {
                for n in 0..6 {
                    let path = format!("{prefix}/{n}/status/503");
                    let r = curl(&["-s", &format!("http://127.0.0.1:{port}{path}")]).await;
                    assert_eq!(r.resp.status, 503);
                }
                // Which hosts retries (attempts after the first) reached.
                let counts: Vec<String> = ups
                    .iter()
                    .zip(names)
                    .map(|(u, name)| {
                        let n = u
                            .rec
                            .requests()
                            .iter()
                            .filter(|r| r.path.starts_with(&format!("{prefix}/")))
                            .filter(|r| r.header("x-envoy-attempt-count") != Some("1"))
                            .count();
                        format!("{name}={}", if n == 0 { "none" } else { "some" })
                    })
                    .collect();
                let total: usize = ups
                    .iter()
                    .map(|u| {
                        u.rec
                            .requests()
                            .iter()
                            .filter(|r| r.path.starts_with(&format!("{prefix}/")))
                            .count()
                    })
                    .sum();
                got.push(format!("{prefix}: {} attempts={total}", counts.join(" ")));
            }
            seen.push(got);
        }
        eprintln!("Envoy:\n{}\nskiff:\n{}", seen[0].join("\n"), seen[1].join("\n"));
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        assert!(seen[0][0].contains("canary=none"), "{:?}", seen[0]);
    })
    .await
}
