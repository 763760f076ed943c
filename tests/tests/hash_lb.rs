//! Consistent hashing side by side with Envoy 1.40: RING_HASH and MAGLEV clusters (both forms
//! of each policy) over the same upstreams behind both proxies, and routes' `hash_policy` of
//! every kind. A host's place on the ring or in the table depends on its address, so both
//! proxies balance over the very same upstreams, and each request must reach the same one
//! behind skiff as behind Envoy.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{get, Http1Client, Resp};
use skiff_tests::config::{bootstrap, hcm, listener, to_yaml, vhost};
use skiff_tests::proxy::{run_cli, write_config};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for, Kind, ProxyProcess};

/// The upstreams' weights.
const WEIGHTS: [u32; 5] = [1, 1, 2, 1, 3];

fn cluster(name: &str, ports: &[u16], policy: Value) -> Value {
    let eps: Vec<Value> = ports
        .iter()
        .zip(WEIGHTS)
        .map(|(p, w)| {
            json!({ "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": p } } },
                "load_balancing_weight": w })
        })
        .collect();
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": eps } ] }
    });
    if let (Some(c), Some(p)) = (c.as_object_mut(), policy.as_object()) {
        for (k, v) in p {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// [`cluster`] whose endpoints have hostnames (`svc-<i>.example`).
fn named_cluster(name: &str, ports: &[u16], policy: Value) -> Value {
    let mut c = cluster(name, ports, policy);
    if let Some(eps) = c["load_assignment"]["endpoints"][0]["lb_endpoints"].as_array_mut() {
        for (i, e) in eps.iter_mut().enumerate() {
            e["endpoint"]["hostname"] = json!(format!("svc-{i}.example"));
        }
    }
    c
}

/// [`cluster`] whose endpoints are in three localities: the first two hosts with weight 1, the
/// next two with weight 3, the last in a locality with no weight.
fn zoned_cluster(name: &str, ports: &[u16], policy: Value) -> Value {
    let mut c = cluster(name, ports, policy);
    let eps = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    c["load_assignment"]["endpoints"] = json!([
        { "locality": { "zone": "a" }, "load_balancing_weight": 1, "lb_endpoints": eps[0..2] },
        { "locality": { "zone": "b" }, "load_balancing_weight": 3, "lb_endpoints": eps[2..4] },
        { "locality": { "zone": "c" }, "lb_endpoints": eps[4..] },
    ]);
    c
}

fn extension(name: &str, typed: Value) -> Value {
    json!({ "lb_policy": "LOAD_BALANCING_POLICY_CONFIG", "load_balancing_policy": { "policies": [ {
        "typed_extension_config": { "name": name, "typed_config": typed } } ] } })
}

fn hashed(prefix: &str, cluster: &str, policy: Value) -> Value {
    json!({ "match": { "prefix": prefix },
            "route": { "cluster": cluster, "hash_policy": policy } })
}

fn config(admin: u16, port: u16, ports: &[u16]) -> String {
    let user = json!([ { "header": { "header_name": "x-user" } } ]);
    let routes = vec![
        hashed("/ring", "ring", user.clone()),
        hashed("/murmur", "murmur", user.clone()),
        hashed("/ring-ext", "ring_ext", user.clone()),
        hashed("/maglev", "maglev", user.clone()),
        hashed("/maglev-ext", "maglev_ext", user.clone()),
        hashed("/byname", "byname", user.clone()),
        hashed("/byname-maglev", "byname_maglev", user.clone()),
        hashed("/bounded", "bounded", user.clone()),
        hashed("/zones-ring", "ring_zones", user.clone()),
        hashed("/zones-maglev", "maglev_zones", user.clone()),
        hashed("/zones-common", "ring_zones_common", user.clone()),
        // The cluster's hash policy (x-team) replaces the route's.
        hashed("/cluster-hash", "ring_team", user.clone()),
        // Several parts: each rotates what came before; the terminal one ends it when it hashed.
        hashed(
            "/multi",
            "ring",
            json!([
                { "header": { "header_name": "x-a" } },
                { "header": { "header_name": "x-b",
                    "regex_rewrite": { "pattern": { "regex": "[0-9]+" }, "substitution": "num" } },
                  "terminal": true },
                { "query_parameter": { "name": "q" } },
                { "header": { "header_name": ":path" } }
            ]),
        ),
        hashed(
            "/cookie",
            "maglev",
            json!([ { "cookie": { "name": "sticky", "ttl": "60s", "path": "/app",
                "attributes": [ { "name": "SameSite", "value": "Strict" }, { "name": "Secure" } ] } } ]),
        ),
        hashed(
            "/ip",
            "ring",
            json!([ { "connection_properties": { "source_ip": true } } ]),
        ),
        // Filter state a filter set from the request: hashed when it is hashable; an
        // `envoy.string` object is not, and the next policy decides.
        hashed(
            "/fs",
            "ring",
            json!([ { "filter_state": { "key": "fs.hashable" } } ]),
        ),
        hashed(
            "/fs-plain",
            "maglev",
            json!([ { "filter_state": { "key": "fs.plain" } },
                    { "header": { "header_name": "x-b" } } ]),
        ),
    ];
    let value = |key: &str, factory: &str| {
        json!({ "object_key": key, "factory_key": factory,
                "format_string": { "text_format_source": { "inline_string": "%REQ(x-user)%" } } })
    };
    let mut http = hcm("h", vec![vhost("v", &["*"], routes)]);
    http["typed_config"]["http_filters"] = json!([
        { "name": "sfs", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
            "on_request_headers": [ value("fs.hashable", "envoy.hashable_string"),
                                    value("fs.plain", "envoy.string") ] } },
        skiff_tests::config::router()
    ]);
    to_yaml(&bootstrap(
        admin,
        vec![listener("l", "127.0.0.1", port, http)],
        vec![
            cluster("ring", ports, json!({ "lb_policy": "RING_HASH" })),
            cluster(
                "murmur",
                ports,
                json!({ "lb_policy": "RING_HASH", "ring_hash_lb_config": {
                    "hash_function": "MURMUR_HASH_2", "minimum_ring_size": 64 } }),
            ),
            cluster(
                "ring_ext",
                ports,
                extension(
                    "envoy.load_balancing_policies.ring_hash",
                    json!({ "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
                        "minimum_ring_size": 100, "maximum_ring_size": 200 }),
                ),
            ),
            cluster("maglev", ports, json!({ "lb_policy": "MAGLEV" })),
            cluster(
                "ring_team",
                ports,
                json!({ "lb_policy": "RING_HASH", "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http_protocol_options": {} },
                        "hash_policy": [ { "header": { "header_name": "x-team" } } ] } } }),
            ),
            cluster(
                "maglev_ext",
                ports,
                extension(
                    "envoy.load_balancing_policies.maglev",
                    json!({ "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
                        "table_size": 251 }),
                ),
            ),
            // Hosts placed by hostname: not where their addresses would put them.
            named_cluster(
                "byname",
                ports,
                extension(
                    "envoy.load_balancing_policies.ring_hash",
                    json!({ "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
                        "consistent_hashing_lb_config": { "use_hostname_for_hashing": true } }),
                ),
            ),
            // (common_lb_config's form is for STRICT_DNS clusters only; this one is not.)
            named_cluster(
                "byname_maglev",
                ports,
                extension(
                    "envoy.load_balancing_policies.maglev",
                    json!({ "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
                        "consistent_hashing_lb_config": { "use_hostname_for_hashing": true } }),
                ),
            ),
            // Locality-weighted hashing: each host's weight scaled by its locality's share.
            zoned_cluster(
                "ring_zones",
                ports,
                extension(
                    "envoy.load_balancing_policies.ring_hash",
                    json!({ "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
                        "locality_weighted_lb_config": {} }),
                ),
            ),
            zoned_cluster(
                "maglev_zones",
                ports,
                extension(
                    "envoy.load_balancing_policies.maglev",
                    json!({ "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
                        "locality_weighted_lb_config": {} }),
                ),
            ),
            zoned_cluster(
                "ring_zones_common",
                ports,
                json!({ "lb_policy": "RING_HASH", "common_lb_config": {
                    "locality_weighted_lb_config": {} } }),
            ),
            // Bounded loads: with one request at a time, every host has room.
            cluster(
                "bounded",
                ports,
                json!({ "lb_policy": "RING_HASH", "common_lb_config": {
                    "consistent_hashing_lb_config": { "hash_balance_factor": 150 } } }),
            ),
        ],
    ))
}

struct Side {
    kind: Kind,
    _proxy: ProxyProcess,
    client: Http1Client,
}

impl Side {
    async fn send(&mut self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = get(path, "hash.example.com");
        for (k, v) in headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        let r = self.client.send(req).await.expect("response");
        assert_eq!(r.status, 200, "{}: {path} {headers:?}", self.kind.name());
        r
    }

    async fn upstream(&mut self, path: &str, headers: &[(&str, &str)]) -> String {
        let r = self.send(path, headers).await;
        r.header("x-upstream").unwrap_or("?").to_string()
    }
}

/// Which upstream each proxy sent the request to: the same.
async fn same(sides: &mut [Side; 2], path: &str, headers: &[(&str, &str)]) -> String {
    let e = sides[0].upstream(path, headers).await;
    let s = sides[1].upstream(path, headers).await;
    assert_eq!(s, e, "{path} {headers:?}: skiff's upstream, Envoy's");
    e
}

#[tokio::test]
async fn consistent_hashing_side_by_side() {
    run_for(Duration::from_secs(120), async {
        let mut ups = Vec::new();
        for i in 0..WEIGHTS.len() {
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
                _proxy: proxy,
                client,
            });
        }
        let mut sides: [Side; 2] = sides.try_into().map_err(|_| ()).expect("two sides");

        // Each policy over 60 users: the same host for each, and more than one host in all.
        let mut by_path = std::collections::BTreeMap::new();
        for path in [
            "/ring",
            "/murmur",
            "/ring-ext",
            "/maglev",
            "/maglev-ext",
            "/byname",
            "/byname-maglev",
            "/bounded",
            "/zones-ring",
            "/zones-maglev",
            "/zones-common",
        ] {
            let mut seen = std::collections::BTreeSet::new();
            let mut picks = Vec::new();
            for n in 0..60 {
                let user = format!("user-{n}");
                let up = same(&mut sides, path, &[("x-user", &user)]).await;
                seen.insert(up.clone());
                picks.push(up);
            }
            assert!(seen.len() >= 3, "{path}: {seen:?}");
            by_path.insert(path, picks);
            // A header sent twice hashes its values sorted: the order does not matter.
            let a = same(&mut sides, path, &[("x-user", "b"), ("x-user", "a")]).await;
            let b = same(&mut sides, path, &[("x-user", "a"), ("x-user", "b")]).await;
            assert_eq!(a, b, "{path}");
        }

        // Hostnames place the hosts elsewhere than their addresses do; an idle bounded ring
        // is the plain ring.
        assert_ne!(by_path["/byname"], by_path["/ring"]);
        assert_ne!(by_path["/byname-maglev"], by_path["/maglev"]);
        assert_eq!(by_path["/bounded"], by_path["/ring"]);
        // Locality weights move hosts' shares: not the plain ring's or table's picks.
        assert_ne!(by_path["/zones-ring"], by_path["/ring"]);
        assert_ne!(by_path["/zones-maglev"], by_path["/maglev"]);

        // Parts combined, a regex rewrite, a terminal part, query parameters and :path.
        for n in 0..30 {
            let (a, b, q) = (format!("a{n}"), format!("b{}", n % 7), format!("q{n}"));
            let with_q = format!("/multi?x=1&q={q}");
            same(&mut sides, &with_q, &[("x-a", &a)]).await;
            same(&mut sides, &with_q, &[("x-a", &a), ("x-b", &b)]).await;
            same(&mut sides, &format!("/multi/{n}?q"), &[]).await;
            same(&mut sides, &format!("/multi/{n}"), &[("x-b", &b)]).await;
        }

        // A cookie: hashed when sent (quoted or not); made and set when missing.
        for n in 0..20 {
            let v = format!("v{n}");
            let plain = format!("other=1; sticky={v}");
            let quoted = format!("sticky=\"{v}\"");
            let a = same(&mut sides, "/cookie", &[("cookie", &plain)]).await;
            let b = same(&mut sides, "/cookie", &[("cookie", &quoted)]).await;
            assert_eq!(a, b);
        }
        let mut made = Vec::new();
        for side in sides.iter_mut() {
            let r = side.send("/cookie", &[]).await;
            let cookie = r.header("set-cookie").unwrap_or_default().to_string();
            // The value is the hash of the connection's addresses (its port differs).
            let value = cookie
                .strip_prefix("sticky=\"")
                .and_then(|c| c.split_once('"'))
                .map(|(v, _)| v.to_string())
                .unwrap_or_default();
            assert!(
                value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit()),
                "{}: {cookie:?}",
                side.kind.name()
            );
            made.push(cookie.replace(&value, "V"));
            // The cookie made leads where the request went.
            let again = side
                .upstream("/cookie", &[("cookie", &format!("sticky={value}"))])
                .await;
            assert_eq!(again, r.header("x-upstream").unwrap_or("?"));
        }
        assert_eq!(
            made[1], made[0],
            "the Set-Cookie skiff made, Envoy's (value aside)"
        );
        assert_eq!(
            made[0],
            "sticky=\"V\"; Max-Age=60; Path=/app; SameSite=Strict; Secure; HttpOnly"
        );

        // Filter state: the hashable object spreads users as a header would; the plain one
        // leaves it to the next policy.
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..40 {
            let user = format!("user-{n}");
            seen.insert(same(&mut sides, "/fs", &[("x-user", &user)]).await);
            let b = format!("b{}", n % 5);
            same(&mut sides, "/fs-plain", &[("x-user", &user), ("x-b", &b)]).await;
        }
        assert!(seen.len() >= 3, "/fs: {seen:?}");

        // The cluster's hash policy: the team's header picks, as the user's does on the
        // plain ring; the user's is not read.
        for (n, ring_pick) in by_path["/ring"].iter().take(30).enumerate() {
            let team = format!("user-{n}");
            let by_team = same(
                &mut sides,
                "/cluster-hash",
                &[("x-team", &team), ("x-user", "u")],
            )
            .await;
            assert_eq!(&by_team, ring_pick, "/cluster-hash {team}");
        }

        // The client's address: every request from here lands on one host.
        let first = same(&mut sides, "/ip", &[]).await;
        for _ in 0..5 {
            assert_eq!(same(&mut sides, "/ip", &[]).await, first);
        }
    })
    .await;
}

#[tokio::test]
async fn invalid_hashing_configs_are_refused_by_both() {
    run_for(Duration::from_secs(60), async {
        let port = free_port();
        let bad: [(Value, &str); 4] = [
            (
                json!({ "lb_policy": "MAGLEV", "common_lb_config": {
                    "consistent_hashing_lb_config": { "use_hostname_for_hashing": true } } }),
                "use_hostname_for_hashing",
            ),
            (
                json!({ "lb_policy": "RING_HASH", "common_lb_config": {
                    "consistent_hashing_lb_config": { "hash_balance_factor": 99 } } }),
                "hash_balance_factor",
            ),
            (
                json!({ "lb_policy": "RING_HASH", "ring_hash_lb_config": {
                    "minimum_ring_size": 2048, "maximum_ring_size": 1024 } }),
                "minimum_ring_size",
            ),
            (
                json!({ "lb_policy": "MAGLEV", "maglev_lb_config": { "table_size": 100 } }),
                "table_size",
            ),
        ];
        for (policy, field) in bad {
            let yaml = to_yaml(&bootstrap(
                free_port(),
                vec![],
                vec![cluster("c", &[port], policy.clone())],
            ));
            let cfg = write_config("bad-hashing", &yaml);
            for kind in [Kind::Envoy, Kind::under_test()] {
                let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert_ne!(out.code, Some(0), "{}: {policy} accepted", kind.name());
                if kind != Kind::Envoy {
                    assert!(out.output().contains(field), "{}", out.output());
                }
            }
        }
    })
    .await;
}
