//! Slow start side by side with Envoy 1.40: a cluster of two upstreams where one becomes
//! healthy (its active check starts to pass) while traffic flows; over the slow-start window
//! its share of the requests grows from `min_weight_percent` of its weight to its full share,
//! under both proxies, in round robin (the `lb_policy` form, linear) and least request (the
//! `load_balancing_policy` form, aggression 2).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_tests::client::{get, Http1Client};
use skiff_tests::config::{bootstrap, http_listener, route, to_yaml};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for, Kind, ProxyProcess};

/// The window of both clusters.
const WINDOW: Duration = Duration::from_secs(4);

/// Upstream `a` (checked on its own port) and `b`, checked on `b_check`, closed at first.
fn cluster(name: &str, a: u16, b: u16, b_check: u16, lb: Value) -> Value {
    let check = json!({ "interval": "0.2s", "no_traffic_interval": "0.2s", "timeout": "0.5s",
        "unhealthy_threshold": 1, "healthy_threshold": 1, "tcp_health_check": {} });
    let mut c = json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "common_lb_config": { "healthy_panic_threshold": { "value": 0 } },
        "health_checks": [ check ],
        "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": [
            { "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": a } } } },
            { "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": b } },
                "health_check_config": { "port_value": b_check } } } ] } ] }
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), lb.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn config(admin: u16, port: u16, a: u16, b: u16, b_check: u16) -> String {
    let window = format!("{}s", WINDOW.as_secs());
    to_yaml(&bootstrap(
        admin,
        vec![http_listener(
            port,
            vec![route("/rr", "rr"), route("/lr", "lr")],
        )],
        vec![
            cluster(
                "rr",
                a,
                b,
                b_check,
                json!({ "lb_policy": "ROUND_ROBIN", "round_robin_lb_config": {
                    "slow_start_config": { "slow_start_window": window,
                        "min_weight_percent": { "value": 10 } } } }),
            ),
            cluster(
                "lr",
                a,
                b,
                b_check,
                json!({ "load_balancing_policy": { "policies": [ { "typed_extension_config": {
                    "name": "envoy.load_balancing_policies.least_request",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
                        "slow_start_config": { "slow_start_window": window,
                            "aggression": { "default_value": 2.0, "runtime_key": "" } } } } } ] } }),
            ),
        ],
    ))
}

/// (seconds since the start, path, upstream) of each request.
type Timeline = Vec<(f64, &'static str, String)>;

/// Requests to /rr and /lr in turn, one every 5 ms, for `length`.
async fn drive(mut client: Http1Client, who: &str, start: Instant, length: Duration) -> Timeline {
    let mut seen = Vec::new();
    let mut i = 0u64;
    while start.elapsed() < length {
        let path = if i.is_multiple_of(2) { "/rr" } else { "/lr" };
        i += 1;
        let r = client
            .send(get(path, "ramp.example.com"))
            .await
            .unwrap_or_else(|e| panic!("{who}: {path}: {e}"));
        assert_eq!(r.status, 200, "{who}: {path}");
        let up = r.header("x-upstream").unwrap_or("?").to_string();
        seen.push((start.elapsed().as_secs_f64(), path, up));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

/// B's share of the requests to `path` in each of `bins` (seconds, from B's first request).
fn shares(t: &Timeline, path: &str, bins: &[(f64, f64)]) -> Vec<f64> {
    let first_b = t
        .iter()
        .find(|(_, p, u)| *p == path && u == "b")
        .map_or(0.0, |x| x.0);
    bins.iter()
        .map(|(from, to)| {
            let of: Vec<&String> = t
                .iter()
                .filter(|(s, p, _)| *p == path && (from..to).contains(&&(s - first_b)))
                .map(|(_, _, u)| u)
                .collect();
            of.iter().filter(|u| **u == "b").count() as f64 / of.len().max(1) as f64
        })
        .collect()
}

#[tokio::test]
async fn slow_start_ramps_a_host_as_envoy_does() {
    run_for(Duration::from_secs(120), async {
        let a = EchoUpstream::with_options(EchoOptions::named("a")).await;
        let b = EchoUpstream::with_options(EchoOptions::named("b")).await;
        let b_check = free_port();
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, port) = (free_port(), free_port());
            let proxy = ProxyProcess::start(
                kind,
                &config(admin, port, a.port(), b.port(), b_check),
                &["--concurrency", "1"],
            )
            .await;
            let client = Http1Client::connect(&format!("127.0.0.1:{port}"))
                .await
                .expect("connect");
            sides.push((kind, proxy, client));
        }
        // While b's check fails, a takes everything.
        for (kind, _, client) in sides.iter_mut() {
            for path in ["/rr", "/lr"] {
                for _ in 0..4 {
                    let r = client
                        .send(get(path, "ramp.example.com"))
                        .await
                        .expect("response");
                    assert_eq!(r.header("x-upstream"), Some("a"), "{}: {path}", kind.name());
                }
            }
        }
        // a's own slow start (from its first passed check) ends.
        tokio::time::sleep(WINDOW).await;
        // b's check starts to pass: b is healthy within a check interval, then ramps.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", b_check))
            .await
            .expect("bind the check port");
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let start = Instant::now();
        let length = WINDOW + Duration::from_secs(3);
        let mut runs = Vec::new();
        let mut proxies = Vec::new();
        for (kind, proxy, client) in sides {
            runs.push(tokio::spawn(drive(client, kind.name(), start, length)));
            proxies.push((kind, proxy));
        }
        let mut timelines = BTreeMap::new();
        for ((kind, _), run) in proxies.iter().zip(runs) {
            timelines.insert(kind.name(), run.await.expect("timeline"));
        }
        accept.abort();

        // Bins of the window (from b's first request) and after it.
        let bins = [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0), (4.5, 6.5)];
        // Linear from 10%: b's weight factor at the bins' middles is 0.125, 0.375, 0.625,
        // 0.875, then 1: shares of 0.11, 0.27, 0.38, 0.47, 0.5. Aggression 2 (square root):
        // 0.35, 0.61, 0.79, 0.94: shares of 0.26, 0.38, 0.44, 0.48, 0.5.
        let expect = [
            ("/rr", [0.11, 0.27, 0.38, 0.47, 0.5]),
            ("/lr", [0.26, 0.38, 0.44, 0.48, 0.5]),
        ];
        let mut got = BTreeMap::new();
        for (who, t) in &timelines {
            for (path, _) in &expect {
                eprintln!("{who} {path}: {:?}", shares(t, path, &bins));
            }
        }
        for (who, t) in &timelines {
            for (path, want) in &expect {
                let s = shares(t, path, &bins);
                for (i, (g, w)) in s.iter().zip(want).enumerate() {
                    assert!(
                        (g - w).abs() < 0.1,
                        "{who}: {path} bin {i}: share {g:.2}, expected about {w:.2} ({s:?})"
                    );
                }
                got.insert((*who, *path), s);
            }
        }
        // And the two proxies close to each other.
        for (path, _) in &expect {
            let (e, s) = (
                &got[&(Kind::Envoy.name(), *path)],
                &got[&(Kind::under_test().name(), *path)],
            );
            for (x, y) in e.iter().zip(s) {
                assert!((x - y).abs() < 0.12, "{path}: Envoy {e:?}, skiff {s:?}");
            }
        }
    })
    .await;
}
