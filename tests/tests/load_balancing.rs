//! Load balancing side by side with Envoy 1.40: the same cluster of several upstreams behind
//! each proxy, the same requests, and the share each upstream got compared: exactly for the
//! weighted round robin schedule, within statistical bounds for the random ones.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{get, http1_once, Http1Client};
use skiff_tests::config::{bootstrap, hcm, listener, route, to_yaml, vhost};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for, Kind, ProxyProcess};

/// An upstream: its weight, health status and answer delay.
#[derive(Clone)]
struct Up {
    weight: Option<u32>,
    health: &'static str,
    delay: Duration,
    /// Its locality: an index into the assignment's `endpoints`, whose weights are
    /// `LOCALITY_WEIGHTS`.
    locality: usize,
    /// Its locality's priority.
    priority: u32,
}

fn up() -> Up {
    Up {
        weight: None,
        health: "HEALTHY",
        delay: Duration::ZERO,
        locality: 0,
        priority: 0,
    }
}

/// The localities' `load_balancing_weight`s (locality 2 has none).
const LOCALITY_WEIGHTS: [Option<u32>; 3] = [Some(1), Some(3), None];

struct Side {
    kind: Kind,
    proxy: ProxyProcess,
    listen: u16,
    _ups: Vec<EchoUpstream>,
}

impl Side {
    async fn start(kind: Kind, ups: &[Up], extra: &Value) -> Side {
        let mut servers = Vec::new();
        let mut localities: Vec<Vec<Value>> = vec![Vec::new(); 3];
        let mut priorities = [0u32; 3];
        for (i, u) in ups.iter().enumerate() {
            let mut o = EchoOptions::named(&format!("u{i}"));
            o.delay = u.delay;
            let s = EchoUpstream::with_options(o).await;
            let mut ep = json!({
                "endpoint": { "address": { "socket_address": {
                    "address": "127.0.0.1", "port_value": s.port() } } },
                "health_status": u.health
            });
            if let Some(w) = u.weight {
                ep["load_balancing_weight"] = json!(w);
            }
            localities[u.locality].push(ep);
            priorities[u.locality] = u.priority;
            servers.push(s);
        }
        let localities: Vec<Value> = localities
            .into_iter()
            .enumerate()
            .filter(|(_, eps)| !eps.is_empty())
            .map(|(i, eps)| {
                let mut l = json!({
                    "locality": { "zone": format!("z{i}") },
                    "lb_endpoints": eps
                });
                if priorities[i] > 0 {
                    l["priority"] = json!(priorities[i]);
                }
                if let Some(w) = LOCALITY_WEIGHTS[i] {
                    l["load_balancing_weight"] = json!(w);
                }
                l
            })
            .collect();
        let mut cluster = json!({
            "name": "svc",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": { "cluster_name": "svc", "endpoints": localities }
        });
        if let (Some(c), Some(extra)) = (cluster.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        let (admin, listen) = (free_port(), free_port());
        let yaml = to_yaml(&bootstrap(
            admin,
            vec![listener(
                "l",
                "127.0.0.1",
                listen,
                hcm("h", vec![vhost("v", &["*"], vec![route("/", "svc")])]),
            )],
            vec![cluster],
        ));
        let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
        Side {
            kind,
            proxy,
            listen,
            _ups: servers,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.listen)
    }

    /// How many of `n` requests (one keep-alive connection) each upstream answered.
    async fn spread(&self, n: usize) -> BTreeMap<String, usize> {
        let mut c = Http1Client::connect(&self.addr()).await.expect("connect");
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let r = c.send(get("/", "lb.example.com")).await.expect("response");
            let who = if r.status == 200 {
                r.header("x-upstream").unwrap_or("?").to_string()
            } else {
                r.status.to_string()
            };
            *out.entry(who).or_default() += 1;
        }
        out
    }

    async fn counter(&self, name: &str) -> u64 {
        self.proxy
            .admin()
            .stat(&format!("cluster.svc.{name}"))
            .await
            .unwrap_or(0)
    }
}

async fn pair(ups: &[Up], extra: Value) -> [Side; 2] {
    [
        Side::start(Kind::Envoy, ups, &extra).await,
        Side::start(Kind::under_test(), ups, &extra).await,
    ]
}

fn map(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights_exactly_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        let w = |n| Up {
            weight: Some(n),
            ..up()
        };
        let sides = pair(&[w(1), w(3), w(4)], json!({ "lb_policy": "ROUND_ROBIN" })).await;
        let want = map(&[("u0", 100), ("u1", 300), ("u2", 400)]);
        for s in &sides {
            let got = s.spread(800).await;
            if s.kind == Kind::Envoy {
                // Envoy now and then rebuilds its scheduler mid-run (a new random start), which
                // shifts a pick or two between hosts; the proportions are what it guarantees.
                let close = want
                    .iter()
                    .all(|(k, v)| got.get(k).is_some_and(|g| g.abs_diff(*v) <= 3));
                assert!(close, "envoy: {got:?}");
            } else {
                assert_eq!(got, want, "{}", s.kind.name());
            }
        }
    })
    .await;
}

#[tokio::test]
async fn random_spreads_evenly_within_bounds_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        // The extension form of the policy.
        let sides = pair(
            &[up(), up(), up()],
            json!({ "load_balancing_policy": { "policies": [ { "typed_extension_config": {
                "name": "envoy.load_balancing_policies.random",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random" }
            } } ] } }),
        )
        .await;
        for s in &sides {
            let got = s.spread(900).await;
            // Binomial(900, 1/3): 300 ± 14; ± 80 is more than five deviations.
            assert_eq!(got.len(), 3, "{}: {got:?}", s.kind.name());
            for (who, n) in &got {
                assert!(
                    (220..=380).contains(n),
                    "{}: {who} got {n} of 900",
                    s.kind.name()
                );
            }
        }
    })
    .await;
}

/// `n` requests from `clients` connections at once; how many each upstream answered.
async fn concurrent_spread(side: &Side, clients: usize, n: usize) -> BTreeMap<String, usize> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let addr = side.addr();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let r = http1_once(&addr, get("/", "lb.example.com"))
                    .await
                    .expect("response");
                out.push(r.header("x-upstream").unwrap_or("?").to_string());
            }
            out
        }));
    }
    let mut out = BTreeMap::new();
    for t in tasks {
        for who in t.await.expect("task") {
            *out.entry(who).or_default() += 1;
        }
    }
    out
}

#[tokio::test]
async fn least_request_sends_less_to_a_slow_host_as_envoy_does() {
    run_for(Duration::from_secs(90), async {
        // Slow enough that it is still busy when the next requests are placed, even on a
        // loaded machine: the two-choice draw then avoids it unless it draws it twice.
        let slow = Up {
            delay: Duration::from_millis(1000),
            ..up()
        };
        let sides = pair(
            &[slow, up()],
            json!({ "lb_policy": "LEAST_REQUEST", "least_request_lb_config": { "choice_count": 2 } }),
        )
        .await;
        let mut shares = Vec::new();
        for s in &sides {
            let got = concurrent_spread(s, 8, 10).await;
            let slow = *got.get("u0").unwrap_or(&0) as f64 / 80.0;
            // Two choices of two hosts: the slow one is taken only when drawn twice (a
            // quarter of the time) or when it is no busier.
            assert!(slow < 0.45, "{}: {got:?}", s.kind.name());
            shares.push(slow);
        }
        assert!(
            (shares[0] - shares[1]).abs() < 0.25,
            "slow host's share: envoy {}, skiff {}",
            shares[0],
            shares[1]
        );
    })
    .await;
}

#[tokio::test]
async fn below_the_panic_threshold_unhealthy_hosts_take_traffic_as_in_envoy() {
    run_for(Duration::from_secs(60), async {
        let sick = Up {
            health: "UNHEALTHY",
            ..up()
        };
        // One healthy host of three: 33% is below Envoy's default threshold of 50%.
        let sides = pair(&[up(), sick.clone(), sick.clone()], json!({})).await;
        for s in &sides {
            assert_eq!(
                s.spread(30).await,
                map(&[("u0", 10), ("u1", 10), ("u2", 10)]),
                "{}",
                s.kind.name()
            );
            assert_eq!(s.counter("lb_healthy_panic").await, 30, "{}", s.kind.name());
        }
        // A threshold of 0 turns panic off: only the healthy host.
        let sides = pair(
            &[up(), sick.clone(), sick],
            json!({ "common_lb_config": { "healthy_panic_threshold": { "value": 0 } } }),
        )
        .await;
        for s in &sides {
            assert_eq!(s.spread(10).await, map(&[("u0", 10)]), "{}", s.kind.name());
            assert_eq!(s.counter("lb_healthy_panic").await, 0);
        }
    })
    .await;
}

#[tokio::test]
async fn locality_weighted_balancing_follows_the_locality_weights_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        let at = |l| Up {
            locality: l,
            ..up()
        };
        // Localities weighted 1 and 3 (one host each, the second's host twice as heavy, which
        // changes nothing between localities), and one without a weight, which gets nothing.
        let sides = pair(
            &[at(0), Up { weight: Some(2), ..at(1) }, at(2)],
            json!({ "load_balancing_policy": { "policies": [ { "typed_extension_config": {
                "name": "envoy.load_balancing_policies.round_robin",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
                    "locality_lb_config": { "locality_weighted_lb_config": {} }
                }
            } } ] } }),
        )
        .await;
        for s in &sides {
            assert_eq!(
                s.spread(400).await,
                map(&[("u0", 100), ("u1", 300)]),
                "{}",
                s.kind.name()
            );
        }
    })
    .await;
}

#[tokio::test]
async fn degraded_hosts_take_the_rest_and_draining_ones_are_left_out_as_in_envoy() {
    run_for(Duration::from_secs(60), async {
        let with = |health| Up { health, ..up() };
        // One healthy, one degraded: 70% of picks to the healthy host (health 1/2 × 1.4).
        let sides = pair(&[up(), with("DEGRADED")], json!({})).await;
        for s in &sides {
            let got = s.spread(1000).await;
            let healthy = *got.get("u0").unwrap_or(&0);
            // Binomial(1000, 0.7): 700 ± 14.5; ± 80 is more than five deviations.
            assert!((620..=780).contains(&healthy), "{}: {got:?}", s.kind.name());
            assert_eq!(
                got.values().sum::<usize>(),
                1000,
                "{}: {got:?}",
                s.kind.name()
            );
        }
        // One healthy and three draining: the draining hosts do not count, so no panic.
        let sides = pair(
            &[up(), with("DRAINING"), with("DRAINING"), with("DRAINING")],
            json!({}),
        )
        .await;
        for s in &sides {
            assert_eq!(s.spread(12).await, map(&[("u0", 12)]), "{}", s.kind.name());
            assert_eq!(s.counter("lb_healthy_panic").await, 0, "{}", s.kind.name());
        }
        // The membership gauges and `/clusters` flags say the same on both.
        let mut seen = Vec::new();
        for s in &sides {
            let mut m = Vec::new();
            for g in [
                "membership_total",
                "membership_healthy",
                "membership_excluded",
            ] {
                m.push(s.counter(g).await);
            }
            let text = s.proxy.admin().get("/clusters").await.text();
            let mut flags: Vec<String> = text
                .lines()
                .filter_map(|l| l.split_once("::health_flags::").map(|(_, f)| f.to_string()))
                .collect();
            flags.sort();
            seen.push((m, flags));
        }
        assert_eq!(seen[0], seen[1]);
    })
    .await;
}

#[tokio::test]
async fn a_priority_spills_over_to_the_next_by_health_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        // P0: one healthy host of two (70% health); P1: one healthy host takes the other 30%.
        let p1 = Up {
            locality: 1,
            priority: 1,
            ..up()
        };
        let sick = Up {
            health: "UNHEALTHY",
            ..up()
        };
        let sides = pair(&[up(), sick, p1], json!({})).await;
        for s in &sides {
            let got = s.spread(1000).await;
            let first = *got.get("u0").unwrap_or(&0);
            assert!((620..=780).contains(&first), "{}: {got:?}", s.kind.name());
            assert_eq!(got.get("u1"), None, "{}: {got:?}", s.kind.name());
            assert_eq!(
                first + got.get("u2").copied().unwrap_or(0),
                1000,
                "{}: {got:?}",
                s.kind.name()
            );
        }
        let mut shown = Vec::new();
        for s in &sides {
            let text = s.proxy.admin().get("/clusters").await.text();
            let mut p: Vec<String> = text
                .lines()
                .filter_map(|l| l.split_once("::priority::").map(|(_, v)| v.to_string()))
                .collect();
            p.sort();
            shown.push(p);
        }
        assert_eq!(shown[0], shown[1], "/clusters priorities");
    })
    .await;
}
