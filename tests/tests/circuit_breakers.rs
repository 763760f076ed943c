//! Circuit breakers side by side with Envoy 1.40: more slow requests than the breakers allow,
//! started one after the other while the first ones are still in flight, so the order in which
//! each proxy meets them is the same; both must answer the same statuses (503 `UO` with
//! `x-envoy-overloaded: true` for the overflow) and count the same overflows and gauges.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{get, http1_once};
use skiff_tests::config::{bootstrap, hcm, listener, route, to_yaml, vhost};
use skiff_tests::side_by_side::{assert_same_response, pair, Side, Up};
use skiff_tests::{run_for, Resp};

fn config_with(thresholds: Value, http2: bool, extra: Value) -> impl Fn(u16, u16, u16) -> String {
    move |admin, listen, upstream| {
        let mut cluster = json!({
            "name": "svc",
            "type": "STATIC",
            "connect_timeout": "1s",
            "circuit_breakers": { "thresholds": [ thresholds.clone() ] },
            "load_assignment": {
                "cluster_name": "svc",
                "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": { "socket_address": {
                    "address": "127.0.0.1", "port_value": upstream } } } } ] } ]
            }
        });
        if let (Some(c), Some(extra)) = (cluster.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        if http2 {
            cluster["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": skiff_tests::config::HTTP_PROTOCOL_OPTIONS_TYPE,
                    "explicit_http_config": { "http2_protocol_options": {} }
                }
            });
        }
        to_yaml(&bootstrap(
            admin,
            vec![listener(
                "l",
                "127.0.0.1",
                listen,
                hcm("h", vec![vhost("v", &["*"], vec![route("/", "svc")])]),
            )],
            vec![cluster],
        ))
    }
}

/// `n` requests that each take a second upstream, started 100 ms apart, each on its own
/// connection; their responses in order.
async fn staggered(side: &Side, n: usize) -> Vec<Resp> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let addr = side.addr();
        tasks.push(tokio::spawn(async move {
            http1_once(&addr, get("/slow?sleep=1000", "cb.example.com"))
                .await
                .expect("a response")
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

async fn stats(side: &Side, names: &[&str]) -> Vec<(String, Option<u64>)> {
    let admin = side.proxy.admin();
    let mut out = Vec::new();
    for n in names {
        out.push((n.to_string(), admin.stat(&format!("cluster.svc.{n}")).await));
    }
    out
}

async fn compare(thresholds: Value, http2: bool, want: &[u16], names: &[&str]) {
    compare_with(thresholds, http2, json!({}), want, names).await
}

/// [`compare`] with more cluster fields.
async fn compare_with(thresholds: Value, http2: bool, extra: Value, want: &[u16], names: &[&str]) {
    let up = if http2 { Up::H2 } else { Up::H1 };
    let (envoy, skiff) = pair(up, config_with(thresholds, http2, extra)).await;
    let (e, s) = tokio::join!(staggered(&envoy, want.len()), staggered(&skiff, want.len()));
    let statuses = |r: &[Resp]| r.iter().map(|r| r.status).collect::<Vec<_>>();
    assert_eq!(statuses(&e), want, "envoy");
    assert_eq!(statuses(&s), want, "skiff");
    for (i, (e, s)) in e.iter().zip(&s).enumerate() {
        assert_same_response(&format!("request {i}"), e, s);
        if e.status == 503 {
            assert_eq!(s.header("x-envoy-overloaded"), Some("true"));
        }
    }
    assert_eq!(stats(&envoy, names).await, stats(&skiff, names).await);
}

#[tokio::test]
async fn max_connections_and_max_pending_requests_overflow_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        // One connection: the first request has it, the second waits for it (pending), the
        // others find the pending queue full.
        compare(
            json!({ "max_connections": 1, "max_pending_requests": 1, "track_remaining": true }),
            false,
            &[200, 200, 503, 503, 503],
            &[
                "upstream_cx_overflow",
                "upstream_rq_pending_overflow",
                "upstream_rq_pending_total",
                "upstream_rq_pending_active",
                "upstream_cx_total",
                "upstream_rq_total",
                "circuit_breakers.default.cx_open",
                "circuit_breakers.default.rq_pending_open",
                "circuit_breakers.default.rq_open",
                "circuit_breakers.default.remaining_cx",
                "circuit_breakers.default.remaining_pending",
                "circuit_breakers.default.remaining_rq",
                "circuit_breakers.default.remaining_retries",
                "circuit_breakers.high.cx_open",
            ],
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn per_host_max_connections_overflow_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        // One connection per host (the cluster allows more): the second request waits for it,
        // the others find the pending queue full.
        compare_with(
            json!({}),
            false,
            json!({ "circuit_breakers": {
                "thresholds": [ { "max_pending_requests": 1 } ],
                "per_host_thresholds": [ { "max_connections": 1 } ] } }),
            &[200, 200, 503, 503, 503],
            &[
                "upstream_cx_overflow",
                "upstream_rq_pending_overflow",
                "upstream_rq_pending_total",
                "upstream_cx_total",
                "upstream_rq_total",
                "circuit_breakers.default.cx_open",
            ],
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn max_requests_overflows_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        compare(
            json!({ "max_requests": 2 }),
            false,
            &[200, 200, 503, 503, 503],
            &[
                "upstream_cx_overflow",
                "upstream_rq_pending_overflow",
                "upstream_rq_active_overflow",
                "upstream_rq_pending_total",
                "upstream_rq_completed",
                "upstream_cx_total",
                "upstream_rq_total",
                "circuit_breakers.default.rq_open",
                "circuit_breakers.default.cx_open",
            ],
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn max_requests_limits_http2_streams_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        compare(
            json!({ "max_requests": 2 }),
            true,
            &[200, 200, 503, 503, 503],
            &[
                "upstream_rq_pending_overflow",
                "upstream_rq_active_overflow",
                "upstream_rq_total",
                "upstream_cx_total",
                "circuit_breakers.default.rq_open",
            ],
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn max_requests_per_connection_closes_connections_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        // Both forms: the cluster's field and the protocol options' common options.
        let forms = [
            json!({ "max_requests_per_connection": 2 }),
            json!({ "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": skiff_tests::config::HTTP_PROTOCOL_OPTIONS_TYPE,
                    "common_http_protocol_options": { "max_requests_per_connection": 2 },
                    "explicit_http_config": { "http_protocol_options": {} }
                }
            } }),
        ];
        for extra in forms {
            let (envoy, skiff) = pair(Up::H1, config_with(json!({}), false, extra)).await;
            for side in [&envoy, &skiff] {
                let mut c = skiff_tests::client::Http1Client::connect(&side.addr())
                    .await
                    .expect("connect");
                for _ in 0..5 {
                    let r = c.send(get("/", "cb.example.com")).await.expect("response");
                    assert_eq!(r.status, 200);
                }
            }
            // Five requests, two per connection: three upstream connections.
            assert_eq!(envoy.rec.connections(), 3, "envoy");
            assert_eq!(skiff.rec.connections(), 3, "skiff");
            let names = [
                "upstream_cx_total",
                "upstream_cx_max_requests",
                "upstream_rq_total",
            ];
            for side in [&envoy, &skiff] {
                side.proxy
                    .admin()
                    .wait_stat(
                        "cluster.svc.upstream_cx_total",
                        Duration::from_secs(2),
                        |v| v == 3,
                    )
                    .await;
            }
            assert_eq!(stats(&envoy, &names).await, stats(&skiff, &names).await);
        }
    })
    .await;
}
