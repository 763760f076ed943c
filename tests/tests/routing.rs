//! The route table: virtual host domains, route matching, and the local replies NR / UH / UF.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{self, curl};
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, route_match, to_yaml, vhost};
use skiff_tests::proxy::{start_under_test, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, refused_port, run};

struct Routed {
    proxy: ProxyProcess,
    port: u16,
    ups: Vec<EchoUpstream>,
}

impl Routed {
    /// GET `path` with `Host: host` and extra headers; returns (status, x-upstream).
    async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Option<String>) {
        let mut req = client::get(path, host);
        for (k, v) in headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                http::HeaderValue::from_str(v).expect("header value"),
            );
        }
        let r = client::http1_once(&format!("127.0.0.1:{}", self.port), req)
            .await
            .expect("request");
        (r.status, r.header("x-upstream").map(str::to_string))
    }
}

/// Starts the proxy with `vhosts` over clusters `a`, `b`, `c`, `d` (one echo upstream each,
/// named like the cluster), plus `empty` (no endpoints) and `dead` (connection refused).
async fn routed(vhosts: Vec<Value>, edit: impl FnOnce(&mut Value)) -> Routed {
    let mut ups = Vec::new();
    let mut clusters = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let u = EchoUpstream::start(name).await;
        clusters.push(cluster(name, &[u.port()]));
        ups.push(u);
    }
    clusters.push(cluster("empty", &[]));
    clusters.push(cluster("dead", &[refused_port()]));
    let (admin, port) = (free_port(), free_port());
    let mut v = bootstrap(
        admin,
        vec![listener(
            "ingress_http",
            "127.0.0.1",
            port,
            hcm("ingress_http", vhosts),
        )],
        clusters,
    );
    edit(&mut v);
    let proxy = start_under_test(&to_yaml(&v), &[]).await;
    Routed { proxy, port, ups }
}

fn catch(cluster: &str) -> Vec<Value> {
    vec![route("/", cluster)]
}

#[tokio::test]
async fn virtual_host_domain_precedence() {
    run(async {
        let r = routed(
            vec![
                vhost("star", &["*"], catch("d")),
                vhost("prefix", &["api.*"], catch("c")),
                vhost("suffix", &["*.example.com"], catch("b")),
                vhost("exact", &["www.example.com"], catch("a")),
            ],
            |_| {},
        )
        .await;
        let cases = [
            ("www.example.com", "a"),
            ("foo.example.com", "b"),
            ("api.example.com", "b"), // a suffix match beats a prefix match
            ("api.other.org", "c"),
            ("other.org", "d"),
            ("WWW.EXAMPLE.COM", "a"), // domains are case-insensitive
        ];
        for (host, want) in cases {
            let (status, up) = r.get(host, "/", &[]).await;
            assert_eq!(status, 200, "Host {host}");
            assert_eq!(up.as_deref(), Some(want), "Host {host}");
        }
    })
    .await
}

#[tokio::test]
async fn longest_wildcard_suffix_wins() {
    run(async {
        let r = routed(
            vec![
                vhost("short", &["*.com"], catch("a")),
                vhost("long", &["*.example.com"], catch("b")),
            ],
            |_| {},
        )
        .await;
        assert_eq!(
            r.get("x.example.com", "/", &[]).await.1.as_deref(),
            Some("b")
        );
        assert_eq!(r.get("x.other.com", "/", &[]).await.1.as_deref(), Some("a"));
    })
    .await
}

#[tokio::test]
async fn port_is_part_of_the_host() {
    run(async {
        let r = routed(
            vec![
                vhost("with_port", &["svc.local:8080"], catch("a")),
                vhost("bare", &["svc.local"], catch("b")),
            ],
            |_| {},
        )
        .await;
        assert_eq!(
            r.get("svc.local:8080", "/", &[]).await.1.as_deref(),
            Some("a")
        );
        assert_eq!(r.get("svc.local", "/", &[]).await.1.as_deref(), Some("b"));
        let (status, _) = r.get("svc.local:9090", "/", &[]).await;
        assert_eq!(status, 404, "svc.local:9090 matches no domain");
    })
    .await
}

#[tokio::test]
async fn ignore_port_in_host_matching() {
    run(async {
        let r = routed(vec![vhost("bare", &["svc.local"], catch("b"))], |v| {
            v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]["route_config"]["ignore_port_in_host_matching"] = json!(true);
        })
        .await;
        let (status, up) = r.get("svc.local:9090", "/", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(up.as_deref(), Some("b"));
    })
    .await
}

#[tokio::test]
async fn route_matching_prefix_path_case_and_order() {
    run(async {
        let r = routed(
            vec![vhost(
                "v",
                &["*"],
                vec![
                    route_match(json!({ "path": "/exact" }), "a"),
                    route_match(json!({ "path": "/nocase", "case_sensitive": false }), "b"),
                    route_match(json!({ "prefix": "/api/v2" }), "c"),
                    route_match(json!({ "prefix": "/api" }), "b"),
                    route_match(json!({ "prefix": "/" }), "d"),
                ],
            )],
            |_| {},
        )
        .await;
        let cases = [
            ("/exact", "a"),
            ("/exact?q=1", "a"), // the query is not part of the path
            ("/exact/more", "d"),
            ("/EXACT", "d"), // case-sensitive by default
            ("/NoCase", "b"),
            ("/api/v2/x", "c"),
            ("/api/v1", "b"),
            ("/API", "d"),
            ("/", "d"),
        ];
        for (path, want) in cases {
            let (status, up) = r.get("h", path, &[]).await;
            assert_eq!(status, 200, "{path}");
            assert_eq!(up.as_deref(), Some(want), "{path}");
        }
        assert_eq!(r.ups[0].rec.last().path, "/exact?q=1");
    })
    .await
}

#[tokio::test]
async fn header_matchers() {
    run(async {
        let r = routed(
            vec![vhost(
                "v",
                &["*"],
                vec![
                    route_match(
                        json!({ "prefix": "/", "headers": [{ "name": "x-canary", "string_match": { "exact": "true" } }] }),
                        "a",
                    ),
                    route_match(
                        json!({ "prefix": "/", "headers": [{ "name": "x-user", "string_match": { "prefix": "admin-" } }] }),
                        "b",
                    ),
                    route_match(
                        json!({ "prefix": "/", "headers": [{ "name": "x-debug", "present_match": true }] }),
                        "c",
                    ),
                    route("/", "d"),
                ],
            )],
            |_| {},
        )
        .await;
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[("x-canary", "true")], "a"),
            (&[("x-canary", "false")], "d"),
            (&[("x-user", "admin-bob")], "b"),
            (&[("x-user", "bob")], "d"),
            (&[("x-debug", "")], "c"),
            (&[], "d"),
        ];
        for (headers, want) in cases {
            let (status, up) = r.get("h", "/hm", headers).await;
            assert_eq!(status, 200, "{headers:?}");
            assert_eq!(up.as_deref(), Some(want), "{headers:?}");
        }
    })
    .await
}

#[tokio::test]
async fn no_route_is_404_nr() {
    run(async {
        let r = routed(
            vec![vhost(
                "only",
                &["only.example.com"],
                vec![route("/api", "a")],
            )],
            |_| {},
        )
        .await;
        let c = curl(&[
            "-H",
            "Host: other.example.com",
            &format!("http://127.0.0.1:{}/x", r.port),
        ])
        .await;
        assert_eq!(c.resp.status, 404);
        assert!(c.resp.body.is_empty(), "NR has an empty body");
        let c2 = curl(&[
            "-H",
            "Host: only.example.com",
            &format!("http://127.0.0.1:{}/nope", r.port),
        ])
        .await;
        assert_eq!(c2.resp.status, 404, "vhost matched, no route");
        let admin = r.proxy.admin();
        assert_eq!(admin.counter("http.ingress_http.no_route").await, 2);
        assert_eq!(
            admin.counter("http.ingress_http.downstream_rq_4xx").await,
            2
        );
        r.proxy
            .wait_stdout_line(Duration::from_secs(5), |l| {
                l.contains("\"GET /x HTTP/1.1\" 404 NR ")
            })
            .await;
        assert!(r.ups.iter().all(|u| u.rec.requests().is_empty()));
    })
    .await
}

#[tokio::test]
async fn empty_cluster_is_503_uh() {
    run(async {
        let r = routed(vec![vhost("v", &["*"], catch("empty"))], |_| {}).await;
        let c = curl(&[&format!("http://127.0.0.1:{}/uh", r.port)]).await;
        assert_eq!(c.resp.status, 503);
        assert_eq!(c.resp.text(), "no healthy upstream");
        assert_eq!(c.resp.header("content-type"), Some("text/plain"));
        r.proxy
            .wait_stdout_line(Duration::from_secs(5), |l| {
                l.contains("\"GET /uh HTTP/1.1\" 503 UH ")
            })
            .await;
        let admin = r.proxy.admin();
        assert_eq!(
            admin
                .counter("cluster.empty.upstream_cx_none_healthy")
                .await,
            1
        );
        assert_eq!(
            admin.counter("http.ingress_http.downstream_rq_5xx").await,
            1
        );
    })
    .await
}

#[tokio::test]
async fn connect_failure_is_503_uf() {
    run(async {
        let r = routed(vec![vhost("v", &["*"], catch("dead"))], |_| {}).await;
        let c = curl(&[&format!("http://127.0.0.1:{}/uf", r.port)]).await;
        assert_eq!(c.resp.status, 503);
        assert_eq!(
            c.resp.text(),
            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
        );
        r.proxy
            .wait_stdout_line(Duration::from_secs(5), |l| l.contains("\"GET /uf HTTP/1.1\" 503 UF "))
            .await;
        let admin = r.proxy.admin();
        assert_eq!(admin.counter("cluster.dead.upstream_cx_connect_fail").await, 1);
        assert_eq!(admin.counter("cluster.dead.upstream_rq_503").await, 1);
    })
    .await
}

#[tokio::test]
async fn round_robin_over_endpoints() {
    run(async {
        let u1 = EchoUpstream::start("u1").await;
        let u2 = EchoUpstream::start("u2").await;
        let u3 = EchoUpstream::start("u3").await;
        let (admin, port) = (free_port(), free_port());
        let v = bootstrap(
            admin,
            vec![listener(
                "ingress_http",
                "127.0.0.1",
                port,
                hcm("ingress_http", vec![vhost("v", &["*"], catch("rr"))]),
            )],
            vec![cluster("rr", &[u1.port(), u2.port(), u3.port()])],
        );
        let _p = start_under_test(&to_yaml(&v), &["--concurrency", "1"]).await;
        let mut c = client::Http1Client::connect(&format!("127.0.0.1:{port}"))
            .await
            .expect("connect");
        let mut seen = Vec::new();
        for _ in 0..9 {
            let r = c.send(client::get("/rr", "h")).await.expect("request");
            seen.push(r.header("x-upstream").unwrap_or_default().to_string());
        }
        for name in ["u1", "u2", "u3"] {
            assert_eq!(
                seen.iter().filter(|s| *s == name).count(),
                3,
                "round robin spreads 9 requests 3/3/3: {seen:?}"
            );
        }
        for w in seen.windows(2) {
            assert_ne!(
                w[0], w[1],
                "round robin never picks the same host twice in a row: {seen:?}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn routes_to_several_clusters_by_prefix() {
    run(async {
        let r = routed(
            vec![vhost(
                "v",
                &["*"],
                vec![route("/a", "a"), route("/b", "b"), route("/", "c")],
            )],
            |_| {},
        )
        .await;
        for (path, want) in [("/a/1", "a"), ("/b/2", "b"), ("/c", "c")] {
            assert_eq!(r.get("h", path, &[]).await.1.as_deref(), Some(want));
        }
        let admin = r.proxy.admin();
        assert_eq!(admin.counter("cluster.a.upstream_rq_200").await, 1);
        assert_eq!(admin.counter("cluster.b.upstream_rq_2xx").await, 1);
        assert_eq!(admin.counter("cluster.c.upstream_rq_total").await, 1);
    })
    .await
}

#[tokio::test]
async fn connect_timeout_is_503_uf() {
    run(async {
        let hole = skiff_tests::Blackhole::start().await;
        let (admin, port) = (free_port(), free_port());
        let mut slow = cluster("slow", &[hole.port]);
        slow["connect_timeout"] = json!("0.25s");
        let v = bootstrap(
            admin,
            vec![listener(
                "ingress_http",
                "127.0.0.1",
                port,
                hcm("ingress_http", vec![vhost("v", &["*"], catch("slow"))]),
            )],
            vec![slow],
        );
        let p = start_under_test(&to_yaml(&v), &[]).await;
        let started = std::time::Instant::now();
        let c = curl(&[&format!("http://127.0.0.1:{port}/ct")]).await;
        let took = started.elapsed();
        assert_eq!(c.resp.status, 503);
        assert_eq!(
            c.resp.text(),
            "upstream connect error or disconnect/reset before headers. reset reason: connection timeout"
        );
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "answered after {took:?}, connect_timeout is 250 ms"
        );
        p.wait_stdout_line(Duration::from_secs(5), |l| l.contains("\"GET /ct HTTP/1.1\" 503 UF "))
            .await;
        assert_eq!(
            p.admin().counter("cluster.slow.upstream_cx_connect_timeout").await,
            1
        );
    })
    .await
}
