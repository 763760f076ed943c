//! Route and connection manager fields side by side with Envoy 1.40, each case compared on
//! what the client got and what every upstream received:
//! - `RouteMatch.cookies` (prefix and exact matchers, quoted values, `invert_match` with the
//!   cookie absent and present);
//! - `request_mirror_policies` on the virtual host and the route configuration (the most
//!   specific non-empty list mirrors a route without its own);
//! - the route configuration's `vhost_header` (another header picks the virtual host);
//! - the connection manager's `strip_trailing_host_dot`, and `append_x_forwarded_port` with
//!   `use_remote_address`;
//! - `host_rewrite_path_regex` (from the path as matched, before `prefix_rewrite`), with
//!   `append_x_forwarded_host`;
//! - the deprecated `max_grpc_timeout` and `grpc_timeout_offset` (the timeout a gRPC request
//!   goes upstream with, as `x-envoy-expected-rq-timeout-ms` shows).

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{self, Resp};
use skiff_tests::config::{bootstrap, cluster, listener, router, to_yaml, HCM_TYPE};
use skiff_tests::diff::{self, upstream_view};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::side_by_side::assert_same_response;
use skiff_tests::upstream::{EchoUpstream, Recorder};
use skiff_tests::{free_port, run};

/// One proxy and its three upstreams.
struct Side {
    _proxy: ProxyProcess,
    port: u16,
    recs: [Recorder; 3],
    _ups: [EchoUpstream; 3],
}

async fn pair(hcm: Value) -> (Side, Side) {
    let mut sides = Vec::new();
    for kind in [Kind::Envoy, Kind::under_test()] {
        let ups = [
            EchoUpstream::start("a").await,
            EchoUpstream::start("b").await,
            EchoUpstream::start("c").await,
        ];
        let (admin, port) = (free_port(), free_port());
        let filter = json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm,
        });
        let v = bootstrap(
            admin,
            vec![listener("extras", "127.0.0.1", port, filter)],
            vec![
                cluster("a", &[ups[0].port()]),
                cluster("b", &[ups[1].port()]),
                cluster("c", &[ups[2].port()]),
            ],
        );
        let proxy = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
        sides.push(Side {
            _proxy: proxy,
            port,
            recs: [ups[0].rec.clone(), ups[1].rec.clone(), ups[2].rec.clone()],
            _ups: ups,
        });
    }
    let s = sides.pop().expect("two sides");
    let e = sides.pop().expect("two sides");
    (e, s)
}

fn route(prefix: &str, name: &str, extra: Value) -> Value {
    let mut r = json!({
        "match": { "prefix": prefix },
        "route": { "cluster": "a" },
        "request_headers_to_add": [{ "header": { "key": "x-route", "value": name } }],
    });
    if let (Some(o), Some(x)) = (r.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            if k == "match" || k == "route" {
                for (kk, vv) in v.as_object().expect("object") {
                    o[k][kk] = vv.clone();
                }
            } else {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    r
}

fn mirror(cluster: &str) -> Value {
    json!([{ "cluster": cluster }])
}

/// `(path, headers, authority)`.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

async fn send(side: &Side, http2: bool, (path, headers, authority): &Case) -> Resp {
    let mut req = if http2 {
        client::h2_request("GET", authority, path, bytes::Bytes::new())
    } else {
        client::request("GET", path, authority, bytes::Bytes::new())
    };
    for (k, v) in *headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    let addr = format!("127.0.0.1:{}", side.port);
    let r = if http2 {
        let c = client::H2Client::connect(&addr).await.expect("h2");
        c.send(req).await
    } else {
        client::http1_once(&addr, req).await
    };
    r.unwrap_or_else(|e| panic!("{path} {headers:?}: {e}"))
}

/// Sends each case through both, over HTTP/1.1 and HTTP/2, and compares the responses and
/// what each upstream got (mirrors arrive on their own: waited for). A header whose value is
/// the proxy's own listener port is compared as `<port>`.
async fn compare(e: &Side, s: &Side, cases: &[Case]) {
    for http2 in [false, true] {
        for case in cases {
            let what = format!("{} {:?} host {} (h2: {http2})", case.0, case.1, case.2);
            let before: Vec<usize> = e.recs.iter().map(|r| r.requests().len()).collect();
            let mask = |mut r: Resp, port: u16| {
                let text = String::from_utf8_lossy(&r.body).replace(&port.to_string(), "<port>");
                r.body = bytes::Bytes::from(text);
                r
            };
            let re = mask(send(e, http2, case).await, e.port);
            let rs = mask(send(s, http2, case).await, s.port);
            assert_same_response(&what, &re, &rs);
            tokio::time::sleep(Duration::from_millis(150)).await;
            for (i, (er, sr)) in e.recs.iter().zip(&s.recs).enumerate() {
                let (ereqs, sreqs) = (er.requests(), sr.requests());
                assert_eq!(
                    ereqs.len() - before[i],
                    sreqs.len().saturating_sub(before[i]),
                    "{what}: requests to upstream {i} (Envoy, skiff)\nenvoy: {:#?}\nskiff: {:#?}",
                    &ereqs[before[i]..],
                    &sreqs[before[i].min(sreqs.len())..]
                );
                for (a, b) in ereqs[before[i]..].iter().zip(&sreqs[before[i]..]) {
                    let mut va = upstream_view(a);
                    let mut vb = upstream_view(b);
                    for (v, port) in [(&mut va, e.port), (&mut vb, s.port)] {
                        for vals in v.headers.values_mut() {
                            for x in vals.iter_mut() {
                                *x = x.replace(&port.to_string(), "<port>");
                            }
                        }
                    }
                    let d = diff::upstream_differences(&va, &vb);
                    assert!(
                        d.is_empty(),
                        "{what}: upstream {i} got:\n  {}",
                        d.join("\n  ")
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn cookies_mirrors_and_vhost_header_side_by_side() {
    run(async {
        let hcm = json!({
            "@type": HCM_TYPE,
            "stat_prefix": "extras",
            "http_filters": [router()],
            "route_config": {
                "name": "routes",
                "vhost_header": "x-vhost",
                "request_mirror_policies": mirror("c"),
                "virtual_hosts": [
                    {
                        "name": "m",
                        "domains": ["m"],
                        "request_mirror_policies": mirror("b"),
                        "routes": [
                            route("/own", "own", json!({ "route": {
                                "request_mirror_policies": mirror("c") } })),
                            route("/", "vhost-mirrors", json!({})),
                        ],
                    },
                    {
                        "name": "t",
                        "domains": ["t"],
                        "routes": [route("/", "table-mirrors", json!({}))],
                    },
                    {
                        "name": "c",
                        "domains": ["c"],
                        "routes": [
                            route("/c", "prefix-abc", json!({ "match": { "cookies": [
                                { "name": "session", "string_match": { "prefix": "abc" } },
                            ] } })),
                            route("/c", "not-x", json!({ "match": { "cookies": [
                                { "name": "session", "string_match": { "exact": "x" },
                                  "invert_match": true },
                            ] } })),
                            route("/c", "two", json!({ "match": { "cookies": [
                                { "name": "a", "string_match": { "exact": "1" } },
                                { "name": "b", "string_match": { "suffix": "z", "ignore_case": true } },
                            ] } })),
                            route("/", "fallback", json!({})),
                        ],
                    },
                ],
            },
        });
        let (e, s) = pair(hcm).await;
        let cases: &[Case] = &[
            ("/own", &[("x-vhost", "m")], "any"),
            ("/x", &[("x-vhost", "m")], "any"),
            ("/x", &[("x-vhost", "M")], "any"),
            ("/", &[("x-vhost", "t")], "m"),
            ("/", &[], "m"),
            ("/c", &[("x-vhost", "c"), ("cookie", "session=abcdef")], "any"),
            (
                "/c",
                &[("x-vhost", "c"), ("cookie", "a=1; session=\"abcz\"")],
                "any",
            ),
            ("/c", &[("x-vhost", "c"), ("cookie", "session=x")], "any"),
            ("/c", &[("x-vhost", "c"), ("cookie", "session=y")], "any"),
            ("/c", &[("x-vhost", "c")], "any"),
            (
                "/c",
                &[
                    ("x-vhost", "c"),
                    ("cookie", "session=x; a=1"),
                    ("cookie", "b=XYZ"),
                ],
                "any",
            ),
            (
                "/c",
                &[("x-vhost", "c"), ("cookie", "session=x; a=1; b=zy")],
                "any",
            ),
            (
                "/c",
                &[("x-vhost", "c"), ("cookie", "session=x; session=abc")],
                "any",
            ),
        ];
        compare(&e, &s, cases).await;
        // The mirrors were there to compare: the virtual host's (b) and the table's (c).
        assert!(
            !e.recs[1].requests().is_empty() && !e.recs[2].requests().is_empty(),
            "Envoy mirrored"
        );
    })
    .await
}

#[tokio::test]
async fn trailing_host_dot_and_forwarded_port_side_by_side() {
    run(async {
        let hcm = json!({
            "@type": HCM_TYPE,
            "stat_prefix": "extras",
            "http_filters": [router()],
            "strip_trailing_host_dot": true,
            "use_remote_address": true,
            "append_x_forwarded_port": true,
            "route_config": {
                "name": "routes",
                "virtual_hosts": [
                    {
                        "name": "h",
                        "domains": ["host.example", "host.example:8080"],
                        "routes": [route("/", "host", json!({}))],
                    },
                    {
                        "name": "other",
                        "domains": ["*"],
                        "routes": [
                            route("/rewrite/", "host-from-path", json!({ "route": {
                                "host_rewrite_path_regex": {
                                    "pattern": { "regex": "^/rewrite/([a-z]+)(/.*)?$" },
                                    "substitution": "\\1.internal",
                                },
                                "prefix_rewrite": "/r/",
                                "append_x_forwarded_host": true,
                            } })),
                            route("/", "other", json!({})),
                        ],
                    },
                ],
            },
        });
        let (e, s) = pair(hcm).await;
        let cases: &[Case] = &[
            ("/", &[], "host.example."),
            ("/", &[], "host.example.:8080"),
            ("/", &[], "host.example"),
            ("/", &[], "host.example.."),
            ("/", &[], "[::1]:80"),
            ("/", &[("x-forwarded-port", "1234")], "host.example"),
            ("/", &[("x-forwarded-proto", "https")], "host.example"),
            ("/rewrite/abc/def?x=/rewrite/q", &[], "front.example"),
            ("/rewrite/abc", &[], "front.example"),
            ("/rewrite/ABC/d", &[], "front.example"),
        ];
        compare(&e, &s, cases).await;
    })
    .await
}

#[tokio::test]
async fn grpc_timeouts_of_routes_side_by_side() {
    run(async {
        let hcm = json!({
            "@type": HCM_TYPE,
            "stat_prefix": "extras",
            "http_filters": [router()],
            "route_config": {
                "name": "routes",
                "virtual_hosts": [{
                    "name": "g",
                    "domains": ["*"],
                    "routes": [
                        route("/capped", "capped", json!({ "route": {
                            "max_grpc_timeout": "2s", "grpc_timeout_offset": "0.5s" } })),
                        route("/unbounded", "unbounded", json!({ "route": {
                            "max_grpc_timeout": "0s" } })),
                        route("/", "plain", json!({})),
                    ],
                }],
            },
        });
        let (e, s) = pair(hcm).await;
        const GRPC: (&str, &str) = ("content-type", "application/grpc");
        let cases: &[Case] = &[
            ("/capped", &[GRPC, ("grpc-timeout", "1S")], "g"),
            ("/capped", &[GRPC, ("grpc-timeout", "10S")], "g"),
            ("/capped", &[GRPC], "g"),
            ("/capped", &[GRPC, ("grpc-timeout", "100m")], "g"),
            ("/capped", &[("grpc-timeout", "1S")], "g"),
            ("/unbounded", &[GRPC], "g"),
            ("/unbounded", &[GRPC, ("grpc-timeout", "3S")], "g"),
            ("/", &[GRPC, ("grpc-timeout", "1S")], "g"),
        ];
        compare(&e, &s, cases).await;
    })
    .await
}
