//! Zone-aware routing side by side with Envoy 1.40: the bootstrap names a local cluster (this
//! proxy's peers and their localities) and the node's locality, and each cluster sends its
//! picks to the node's locality as far as its share of healthy hosts there allows, as
//! Envoy's `LocalityDirect` and `LocalityResidual` states do. Both proxies balance over the
//! same upstreams; the test compares where the requests land and the `lb_zone_*` counters.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{get, Http1Client};
use skiff_tests::config::{bootstrap, http_listener, route, to_yaml};
use skiff_tests::proxy::{run_cli, write_config};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for, Kind, ProxyProcess};

/// `(zone, port, weight)` endpoints as a STATIC cluster with one locality per zone.
fn cluster(name: &str, endpoints: &[(&str, u16, u32)], extra: Value) -> Value {
    let mut zones: Vec<&str> = endpoints.iter().map(|e| e.0).collect();
    zones.dedup();
    let localities: Vec<Value> = zones
        .iter()
        .map(|z| {
            let eps: Vec<Value> = endpoints
                .iter()
                .filter(|e| e.0 == *z)
                .map(|(_, p, w)| {
                    json!({ "endpoint": { "address": { "socket_address": {
                        "address": "127.0.0.1", "port_value": p } } },
                        "load_balancing_weight": w })
                })
                .collect();
            json!({ "locality": { "region": "r", "zone": z }, "lb_endpoints": eps })
        })
        .collect();
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": localities }
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// The `load_balancing_policy` form of `policy` with this `zone_aware_lb_config`.
fn zoned(policy: &str, zone_aware: Value) -> Value {
    let (name, ty) = match policy {
        "least_request" => ("least_request", "least_request.v3.LeastRequest"),
        _ => ("round_robin", "round_robin.v3.RoundRobin"),
    };
    json!({ "load_balancing_policy": { "policies": [ { "typed_extension_config": {
        "name": format!("envoy.load_balancing_policies.{name}"),
        "typed_config": {
            "@type": format!("type.googleapis.com/envoy.extensions.load_balancing_policies.{ty}"),
            "locality_lb_config": { "zone_aware_lb_config": zone_aware } } } } ] } })
}

fn config(admin: u16, port: u16, u: &[u16]) -> String {
    // The peers: one in zone a (this proxy's), one in zone b. They are never connected to.
    let peers = cluster("peers", &[("a", 1, 1), ("b", 2, 1)], json!({}));
    let even = [
        ("a", u[0], 1),
        ("a", u[1], 1),
        ("a", u[2], 1),
        ("b", u[3], 1),
        ("b", u[4], 1),
        ("b", u[5], 1),
    ];
    let one_here = [
        ("a", u[0], 1),
        ("b", u[1], 1),
        ("b", u[2], 1),
        ("b", u[3], 1),
        ("b", u[4], 1),
        ("b", u[5], 1),
    ];
    let heavy_here = [
        ("a", u[0], 5),
        ("b", u[1], 1),
        ("b", u[2], 1),
        ("b", u[3], 1),
        ("b", u[4], 1),
        ("b", u[5], 1),
    ];
    let mut b = bootstrap(
        admin,
        vec![http_listener(
            port,
            [
                "direct", "residual", "small", "min1", "forced", "weight", "legacy",
            ]
            .iter()
            .map(|c| route(&format!("/{c}"), c))
            .collect(),
        )],
        vec![
            peers,
            cluster("direct", &even, json!({})),
            cluster("residual", &one_here, json!({ "lb_policy": "RANDOM" })),
            cluster("small", &one_here[..5], json!({})),
            cluster(
                "min1",
                &one_here[..2],
                zoned("least_request", json!({ "min_cluster_size": 1 })),
            ),
            cluster(
                "forced",
                &one_here,
                zoned(
                    "round_robin",
                    json!({ "force_local_zone": { "min_size": 1 } }),
                ),
            ),
            cluster(
                "weight",
                &heavy_here,
                zoned(
                    "round_robin",
                    json!({ "locality_basis": "HEALTHY_HOSTS_WEIGHT" }),
                ),
            ),
            cluster(
                "legacy",
                &one_here[..2],
                json!({ "common_lb_config": { "zone_aware_lb_config": {
                    "min_cluster_size": 2, "routing_enabled": { "value": 0 } } } }),
            ),
        ],
    );
    b["node"] = json!({ "id": "node-1", "cluster": "peers-of-node-1", "locality": { "region": "r", "zone": "a" } });
    b["cluster_manager"] = json!({ "local_cluster_name": "peers" });
    to_yaml(&b)
}

struct Side {
    kind: Kind,
    proxy: ProxyProcess,
    client: Http1Client,
}

impl Side {
    /// How many of `n` requests to `path` each upstream took.
    async fn spread(&mut self, path: &str, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let r = self
                .client
                .send(get(path, "zone.example.com"))
                .await
                .expect("response");
            assert_eq!(r.status, 200, "{}: {path}", self.kind.name());
            *seen
                .entry(r.header("x-upstream").unwrap_or("?").to_string())
                .or_default() += 1;
        }
        seen
    }

    async fn stat(&self, cluster: &str, name: &str) -> u64 {
        self.proxy
            .admin()
            .stat(&format!("cluster.{cluster}.{name}"))
            .await
            .unwrap_or(0)
    }
}

fn share(seen: &BTreeMap<String, usize>, upstream: &str, n: usize) -> f64 {
    *seen.get(upstream).unwrap_or(&0) as f64 / n as f64
}

#[tokio::test]
async fn zone_aware_routing_side_by_side() {
    run_for(Duration::from_secs(180), async {
        let mut ups = Vec::new();
        for i in 0..6 {
            ups.push(EchoUpstream::with_options(EchoOptions::named(&format!("u{i}"))).await);
        }
        let ports: Vec<u16> = ups.iter().map(|u| u.port()).collect();
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, port) = (free_port(), free_port());
            let proxy =
                ProxyProcess::start(kind, &config(admin, port, &ports), &["--concurrency", "1"])
                    .await;
            let client = Http1Client::connect(&format!("127.0.0.1:{port}"))
                .await
                .expect("connect");
            sides.push(Side {
                kind,
                proxy,
                client,
            });
        }

        for side in sides.iter_mut() {
            let who = side.kind.name();
            // Half the upstreams are in zone a and half the peers: every pick stays in a.
            let n = 60;
            let seen = side.spread("/direct", n).await;
            let here: usize = ["u0", "u1", "u2"]
                .iter()
                .map(|u| seen.get(*u).unwrap_or(&0))
                .sum();
            assert_eq!(here, n, "{who}: /direct {seen:?}");
            assert_eq!(
                side.stat("direct", "lb_zone_routing_all_directly").await,
                n as u64,
                "{who}"
            );

            // One upstream of six in zone a against half the peers: a third of the picks
            // (1666 × 10000 / 5000 of 10000) stay, the rest cross to zone b.
            let n = 900;
            let seen = side.spread("/residual", n).await;
            let stay = share(&seen, "u0", n);
            assert!((0.26..0.41).contains(&stay), "{who}: /residual {seen:?}");
            let sampled = side.stat("residual", "lb_zone_routing_sampled").await;
            let cross = side.stat("residual", "lb_zone_routing_cross_zone").await;
            assert_eq!(sampled + cross, n as u64, "{who}: {sampled} + {cross}");
            assert_eq!(sampled as usize, seen["u0"], "{who}");

            // Five healthy upstreams, fewer than min_cluster_size (6): no zone routing.
            let n = 100;
            let seen = side.spread("/small", n).await;
            assert_eq!(seen.len(), 5, "{who}: /small {seen:?}");
            assert_eq!(seen["u0"], 20, "{who}: /small round robin {seen:?}");
            assert!(
                side.stat("small", "lb_zone_cluster_too_small").await > 0,
                "{who}"
            );

            // Least request with min_cluster_size 1 over one upstream per zone (Envoy
            // Gateway's local cluster setting): every pick stays.
            let seen = side.spread("/min1", 30).await;
            assert_eq!(seen.get("u0"), Some(&30), "{who}: /min1 {seen:?}");

            // force_local_zone: every pick stays while zone a has a healthy upstream.
            let seen = side.spread("/forced", 30).await;
            assert_eq!(seen.get("u0"), Some(&30), "{who}: /forced {seen:?}");

            // By weight, zone a's one upstream (weight 5 of 10) holds half: every pick stays.
            let seen = side.spread("/weight", 30).await;
            assert_eq!(seen.get("u0"), Some(&30), "{who}: /weight {seen:?}");

            // routing_enabled 0 (the lb_policy form's common_lb_config): round robin.
            let seen = side.spread("/legacy", 30).await;
            assert_eq!(seen.get("u0"), Some(&15), "{who}: /legacy {seen:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn an_undefined_local_cluster_is_refused_by_both() {
    run_for(Duration::from_secs(60), async {
        let mut b = bootstrap(free_port(), vec![], vec![]);
        b["cluster_manager"] = json!({ "local_cluster_name": "nowhere" });
        let cfg = write_config("no-local-cluster", &to_yaml(&b));
        for kind in [Kind::Envoy, Kind::under_test()] {
            let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
            assert_ne!(out.code, Some(0), "{}: accepted", kind.name());
            assert!(
                out.output()
                    .contains("local cluster 'nowhere' must be defined"),
                "{}: {}",
                kind.name(),
                out.output()
            );
        }
    })
    .await;
}
