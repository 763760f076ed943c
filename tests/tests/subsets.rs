//! Subset load balancing side by side with Envoy 1.40: six upstreams with `envoy.lb` metadata
//! behind clusters with `lb_subset_config` (every fallback policy, a selector's own fallback
//! and `KEYS_SUBSET`, `list_as_any`, `single_host_per_subset`, `FALLBACK_LIST`), and routes
//! whose `metadata_match` (merged with a weighted cluster's) names a subset. Each route's
//! requests must reach the same upstreams behind skiff as behind Envoy, with the same status,
//! and the `lb_subsets_*` stats must agree.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{get, Http1Client};
use skiff_tests::config::{bootstrap, http_listener, to_yaml};
use skiff_tests::proxy::{run_cli, write_config};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for, Kind, ProxyProcess};

/// Each upstream's `envoy.lb` metadata.
fn metadata() -> Vec<Value> {
    vec![
        json!({ "version": "v1", "stage": "prod" }),
        json!({ "version": "v1", "stage": "canary" }),
        json!({ "version": "v2", "stage": "prod" }),
        json!({ "version": "v2", "stage": "prod", "tags": ["a", "b"] }),
        json!({ "version": 3, "stage": "prod" }),
        json!({}),
    ]
}

fn cluster(name: &str, ports: &[u16], subsets: Value) -> Value {
    let eps: Vec<Value> = ports
        .iter()
        .zip(metadata())
        .map(|(p, md)| {
            json!({ "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": p } } },
                "metadata": { "filter_metadata": { "envoy.lb": md } } })
        })
        .collect();
    json!({ "name": name, "type": "STATIC", "connect_timeout": "1s",
        "lb_subset_config": subsets,
        "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": eps } ] } })
}

fn to(path: &str, cluster: &str, criteria: Value) -> Value {
    json!({ "match": { "path": path }, "route": { "cluster": cluster,
        "metadata_match": { "filter_metadata": { "envoy.lb": criteria } } } })
}

/// (path, the upstreams it may reach; empty: a 503).
fn cases() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("/any/v1", &["u0", "u1"]),
        ("/any/v1-prod", &["u0"]),
        ("/any/v9", &["u0", "u1", "u2", "u3", "u4", "u5"]),
        ("/any/extra-key", &["u0", "u1", "u2", "u3", "u4", "u5"]),
        ("/plain", &["u0", "u1", "u2", "u3", "u4", "u5"]),
        ("/default/v9", &["u2", "u3"]),
        ("/none/v9", &[]),
        ("/none/number", &["u4"]),
        ("/none/text-3", &[]),
        ("/keys/v2-canary", &["u2", "u3"]),
        ("/keys/v9-canary", &[]),
        ("/lists/a", &["u3"]),
        ("/single/prod", &["u0"]),
        ("/fallback-list", &["u2", "u3"]),
        ("/weighted", &["u0"]),
    ]
}

fn config(admin: u16, port: u16, ports: &[u16]) -> String {
    let routes = vec![
        to("/any/v1", "any", json!({ "version": "v1" })),
        to(
            "/any/v1-prod",
            "any",
            json!({ "version": "v1", "stage": "prod" }),
        ),
        to("/any/v9", "any", json!({ "version": "v9" })),
        to(
            "/any/extra-key",
            "any",
            json!({ "version": "v1", "zone": "z" }),
        ),
        json!({ "match": { "path": "/plain" }, "route": { "cluster": "any" } }),
        to("/default/v9", "default", json!({ "version": "v9" })),
        to("/none/v9", "none", json!({ "version": "v9" })),
        to("/none/number", "none", json!({ "version": 3 })),
        to("/none/text-3", "none", json!({ "version": "3" })),
        to(
            "/keys/v2-canary",
            "keys",
            json!({ "version": "v2", "stage": "canary" }),
        ),
        to(
            "/keys/v9-canary",
            "keys",
            json!({ "version": "v9", "stage": "canary" }),
        ),
        to("/lists/a", "lists", json!({ "tags": "a" })),
        to("/single/prod", "single", json!({ "stage": "prod" })),
        to(
            "/fallback-list",
            "flist",
            json!({ "version": "v1", "fallback_list": [ { "version": "v9" }, { "version": "v2" } ] }),
        ),
        json!({ "match": { "path": "/weighted" }, "route": {
            "metadata_match": { "filter_metadata": { "envoy.lb": { "version": "v1" } } },
            "weighted_clusters": { "clusters": [ { "name": "any", "weight": 1,
                "metadata_match": { "filter_metadata": { "envoy.lb": { "stage": "prod" } } } } ] } } }),
    ];
    to_yaml(&bootstrap(
        admin,
        vec![http_listener(port, routes)],
        vec![
            cluster(
                "any",
                ports,
                json!({ "fallback_policy": "ANY_ENDPOINT", "subset_selectors": [
                    { "keys": ["version"] }, { "keys": ["version", "stage"] } ] }),
            ),
            cluster(
                "default",
                ports,
                json!({ "fallback_policy": "DEFAULT_SUBSET", "default_subset": { "version": "v2" },
                    "subset_selectors": [ { "keys": ["version"] } ] }),
            ),
            cluster(
                "none",
                ports,
                json!({ "subset_selectors": [ { "keys": ["version"] } ] }),
            ),
            cluster(
                "keys",
                ports,
                json!({ "subset_selectors": [
                    { "keys": ["stage", "version"], "fallback_policy": "KEYS_SUBSET",
                      "fallback_keys_subset": ["version"] },
                    { "keys": ["version"] } ] }),
            ),
            cluster(
                "lists",
                ports,
                json!({ "list_as_any": true, "subset_selectors": [ { "keys": ["tags"] } ] }),
            ),
            cluster(
                "single",
                ports,
                json!({ "subset_selectors": [ { "keys": ["stage"], "single_host_per_subset": true } ] }),
            ),
            cluster(
                "flist",
                ports,
                json!({ "metadata_fallback_policy": "FALLBACK_LIST",
                    "subset_selectors": [ { "keys": ["version"] } ] }),
            ),
        ],
    ))
}

const STATS: [&str; 6] = [
    "lb_subsets_active",
    "lb_subsets_created",
    "lb_subsets_removed",
    "lb_subsets_selected",
    "lb_subsets_fallback",
    "lb_subsets_fallback_panic",
];

#[tokio::test]
async fn subsets_side_by_side() {
    run_for(Duration::from_secs(120), async {
        let mut ups = Vec::new();
        for i in 0..6 {
            ups.push(EchoUpstream::with_options(EchoOptions::named(&format!("u{i}"))).await);
        }
        let ports: Vec<u16> = ups.iter().map(|u| u.port()).collect();
        let mut seen = Vec::new();
        let mut stats = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let who = kind.name();
            let (admin, port) = (free_port(), free_port());
            let proxy =
                ProxyProcess::start(kind, &config(admin, port, &ports), &["--concurrency", "1"])
                    .await;
            let mut client = Http1Client::connect(&format!("127.0.0.1:{port}"))
                .await
                .expect("connect");
            let mut got = Vec::new();
            for (path, want) in cases() {
                let mut reached = BTreeSet::new();
                let mut statuses = BTreeSet::new();
                for _ in 0..24 {
                    let r = client
                        .send(get(path, "subsets.example.com"))
                        .await
                        .expect("response");
                    statuses.insert(r.status);
                    if r.status == 200 {
                        reached.insert(r.header("x-upstream").unwrap_or("?").to_string());
                    }
                }
                let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
                let want_status = if want.is_empty() { 503 } else { 200 };
                assert_eq!(statuses, BTreeSet::from([want_status]), "{who}: {path}");
                assert_eq!(reached, want, "{who}: {path}");
                got.push((path, reached));
            }
            let admin = proxy.admin();
            let mut s = Vec::new();
            for c in ["any", "default", "none", "keys", "lists", "single", "flist"] {
                for st in STATS {
                    let name = format!("cluster.{c}.{st}");
                    s.push((name.clone(), admin.stat(&name).await.unwrap_or(0)));
                }
            }
            stats.push(s);
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff's upstreams, Envoy's");
        assert_eq!(stats[1], stats[0], "skiff's lb_subsets stats, Envoy's");
    })
    .await;
}

#[tokio::test]
async fn invalid_subset_configs_are_refused_by_both() {
    run_for(Duration::from_secs(60), async {
        let port = free_port();
        let bad = [
            (
                json!({ "subset_selectors": [ { "keys": ["a", "b"], "fallback_policy": "KEYS_SUBSET" } ] }),
                "fallback_keys_subset",
            ),
            (
                json!({ "subset_selectors": [ { "keys": ["a", "b"], "fallback_policy": "KEYS_SUBSET",
                    "fallback_keys_subset": ["c"] } ] }),
                "fallback_keys_subset",
            ),
            (
                json!({ "subset_selectors": [ { "keys": ["a", "b"], "fallback_policy": "KEYS_SUBSET",
                    "fallback_keys_subset": ["a", "b"] } ] }),
                "fallback_keys_subset",
            ),
            (
                json!({ "subset_selectors": [ { "keys": ["a"], "fallback_keys_subset": ["a"] } ] }),
                "fallback_keys_subset",
            ),
            (
                json!({ "locality_weight_aware": true, "subset_selectors": [ { "keys": ["a"] } ] }),
                "locality_weight_aware",
            ),
        ];
        for (subsets, field) in bad {
            let yaml = to_yaml(&bootstrap(
                free_port(),
                vec![],
                vec![cluster("c", &[port], subsets.clone())],
            ));
            let cfg = write_config("bad-subsets", &yaml);
            for kind in [Kind::Envoy, Kind::under_test()] {
                let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert_ne!(out.code, Some(0), "{}: {subsets} accepted", kind.name());
                if kind != Kind::Envoy {
                    assert!(out.output().contains(field), "{}", out.output());
                }
            }
        }
    })
    .await;
}

/// tcp_proxy's `metadata_match` (and a weighted cluster's own, merged over it), side by side:
/// each connection carries one HTTP/1.1 request to the echo upstream it reached; over 24
/// connections per listener the same upstreams must be reached behind skiff as behind Envoy.
#[tokio::test]
async fn tcp_proxy_subsets_side_by_side() {
    use skiff_tests::config::listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    run_for(Duration::from_secs(120), async {
        let mut ups = Vec::new();
        for i in 0..6 {
            ups.push(EchoUpstream::with_options(EchoOptions::named(&format!("u{i}"))).await);
        }
        let ports: Vec<u16> = ups.iter().map(|u| u.port()).collect();
        let tcp = |name: &str, port: u16, extra: Value| {
            let mut f = skiff_tests::config::tcp_proxy(name, "any");
            if let (Some(o), Some(x)) = (f["typed_config"].as_object_mut(), extra.as_object()) {
                for (k, v) in x {
                    o.insert(k.clone(), v.clone());
                }
                if x.contains_key("weighted_clusters") {
                    o.remove("cluster");
                }
            }
            listener(name, "127.0.0.1", port, f)
        };
        let lb = |v: Value| json!({ "filter_metadata": { "envoy.lb": v } });
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let who = kind.name();
            let listen = [free_port(), free_port(), free_port()];
            let yaml = to_yaml(&bootstrap(
                free_port(),
                vec![
                    tcp("v2", listen[0], json!({ "metadata_match": lb(json!({ "version": "v2" })) })),
                    tcp(
                        "canary",
                        listen[1],
                        json!({ "metadata_match": lb(json!({ "version": "v1", "stage": "canary" })) }),
                    ),
                    tcp(
                        "weighted",
                        listen[2],
                        json!({
                            "metadata_match": lb(json!({ "version": "v1" })),
                            "weighted_clusters": { "clusters": [ { "name": "any", "weight": 1,
                                "metadata_match": lb(json!({ "stage": "prod" })) } ] } }),
                    ),
                ],
                vec![cluster(
                    "any",
                    &ports,
                    json!({ "fallback_policy": "ANY_ENDPOINT", "subset_selectors": [
                        { "keys": ["version"] }, { "keys": ["version", "stage"] } ] }),
                )],
            ));
            let _proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for port in listen {
                let mut reached = BTreeSet::new();
                for _ in 0..24 {
                    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .expect("connect");
                    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                        .await
                        .expect("write");
                    let mut text = String::new();
                    let _ = s.read_to_string(&mut text).await;
                    let up = text
                        .lines()
                        .find_map(|l| l.strip_prefix("x-upstream: "))
                        .unwrap_or("none")
                        .to_string();
                    reached.insert(up);
                }
                got.push((port == listen[0], reached));
            }
            assert!(
                got.iter().all(|(_, r)| !r.contains("none")),
                "{who}: every connection reached an upstream: {got:?}"
            );
            seen.push(got.into_iter().map(|(_, r)| r).collect::<Vec<_>>());
        }
        assert_eq!(seen[1], seen[0], "skiff's upstreams, Envoy's");
        assert_eq!(
            seen[0][0],
            BTreeSet::from(["u2".to_string(), "u3".to_string()]),
            "the v2 subset"
        );
    })
    .await;
}

/// `locality_weight_aware` and `scale_locality_weight`, side by side: two localities, weights
/// 1 and 6; the `v1` subset holds one of the first's two hosts and one of the second's three.
/// Without the option a subset ignores locality weights (even under
/// `locality_weighted_lb_config`): an even split. With it the subset takes the localities'
/// weights (1:6), and scaled by the share of each locality's hosts in the subset,
/// round(1 × 1/2) : round(6 × 1/3) = 1:2. Over 210 requests (a whole number of each pattern's
/// rounds) the counts must be the same on both proxies and near those ratios.
#[tokio::test]
async fn locality_weight_aware_subsets_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let names = ["a1", "a2", "b1", "b2", "b3"];
        let mut ups = Vec::new();
        for n in names {
            ups.push(EchoUpstream::with_options(EchoOptions::named(n)).await);
        }
        let ep = |i: usize, version: &str| {
            json!({ "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": ups[i].port() } } },
                "metadata": { "filter_metadata": { "envoy.lb": { "version": version } } } })
        };
        let endpoints = json!([
            { "locality": { "zone": "a" }, "load_balancing_weight": 1,
              "lb_endpoints": [ ep(0, "v1"), ep(1, "v2") ] },
            { "locality": { "zone": "b" }, "load_balancing_weight": 6,
              "lb_endpoints": [ ep(2, "v1"), ep(3, "v2"), ep(4, "v2") ] },
        ]);
        let clusters: Vec<Value> = [
            ("plain", json!({})),
            ("aware", json!({ "locality_weight_aware": true })),
            (
                "scaled",
                json!({ "locality_weight_aware": true, "scale_locality_weight": true }),
            ),
        ]
        .into_iter()
        .map(|(name, extra)| {
            let mut subsets = json!({ "fallback_policy": "NO_FALLBACK",
                "subset_selectors": [ { "keys": ["version"] } ] });
            for (k, v) in extra.as_object().expect("object") {
                subsets[k] = v.clone();
            }
            json!({ "name": name, "type": "STATIC", "connect_timeout": "1s",
                "common_lb_config": { "locality_weighted_lb_config": {} },
                "lb_subset_config": subsets,
                "load_assignment": { "cluster_name": name, "endpoints": endpoints } })
        })
        .collect();
        let routes: Vec<Value> = ["plain", "aware", "scaled"]
            .iter()
            .map(|c| to(&format!("/{c}"), c, json!({ "version": "v1" })))
            .collect();
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, port) = (free_port(), free_port());
            let v = bootstrap(
                admin,
                vec![http_listener(port, routes.clone())],
                clusters.clone(),
            );
            let _proxy = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let mut client = Http1Client::connect(&format!("127.0.0.1:{port}"))
                .await
                .expect("connect");
            let mut got = Vec::new();
            for c in ["plain", "aware", "scaled"] {
                let (mut a1, mut b1) = (0, 0);
                for _ in 0..210 {
                    let r = client
                        .send(get(&format!("/{c}"), "x"))
                        .await
                        .expect("response");
                    match r.header("x-upstream") {
                        Some("a1") => a1 += 1,
                        Some("b1") => b1 += 1,
                        other => panic!("{c}: {other:?}"),
                    }
                }
                got.push((c, a1, b1));
            }
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        for (c, a1, _) in &seen[0] {
            let want = match *c {
                "plain" => 105,
                "aware" => 30,
                _ => 70,
            };
            assert!((want - 3..=want + 3).contains(a1), "{c}: {a1} to a1");
        }
    })
    .await;
}
