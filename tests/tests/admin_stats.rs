//! The admin interface and Envoy's stat names (reference §2).

use std::time::Duration;

use skiff_tests::client::{self, curl, Http1Client};
use skiff_tests::upstream::EchoOptions;
use skiff_tests::{run, HttpFixture};

#[tokio::test]
async fn ready_is_live() {
    run(async {
        let f = HttpFixture::start().await;
        let r = f.proxy.admin().get("/ready").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text().trim(), "LIVE");
    })
    .await
}

#[tokio::test]
async fn healthcheck_fail_then_ok() {
    run(async {
        let f = HttpFixture::start().await;
        let admin = f.proxy.admin();
        let r = admin.post("/healthcheck/fail").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text().trim(), "OK");
        let ready = admin.get("/ready").await;
        assert_eq!(ready.status, 503);
        assert_eq!(ready.text().trim(), "DRAINING");
        let info: serde_json::Value =
            serde_json::from_slice(&admin.get("/server_info").await.body).expect("json");
        assert_eq!(info["state"], "DRAINING");
        // While failing health checks, HTTP/1 responses ask the client to close (drain-close).
        let mut c = Http1Client::connect(&f.addr()).await.expect("connect");
        let resp = c
            .send(client::get("/while-draining", "a"))
            .await
            .expect("request");
        assert_eq!(resp.status, 200, "requests are still served");
        assert_eq!(resp.header("connection"), Some("close"));
        admin
            .wait_stat(
                "http.ingress_http.downstream_cx_drain_close",
                Duration::from_secs(5),
                |v| v >= 1,
            )
            .await;
        let r = admin.post("/healthcheck/ok").await;
        assert_eq!(r.status, 200);
        let ready = admin.get("/ready").await;
        assert_eq!(ready.status, 200);
        assert_eq!(ready.text().trim(), "LIVE");
        let resp = curl(&[&f.url("/after-ok")]).await;
        assert_eq!(resp.resp.header("connection"), None);
    })
    .await
}

#[tokio::test]
async fn mutating_endpoints_reject_get() {
    run(async {
        let mut f = HttpFixture::start().await;
        let admin = f.proxy.admin();
        for path in ["/healthcheck/fail", "/healthcheck/ok", "/quitquitquit"] {
            let r = admin.get(path).await;
            assert_eq!(r.status, 405, "GET {path}");
        }
        assert_eq!(
            admin.get("/ready").await.status,
            200,
            "GET did not change state"
        );
        assert!(
            f.proxy.try_exit().is_none(),
            "GET /quitquitquit did not stop the proxy"
        );
    })
    .await
}

#[tokio::test]
async fn quitquitquit_exits_cleanly() {
    run(async {
        let mut f = HttpFixture::start().await;
        let r = f.proxy.admin().post("/quitquitquit").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text().trim(), "OK");
        let status = f
            .proxy
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("the proxy exits after POST /quitquitquit");
        assert!(status.success(), "exit status {status}");
    })
    .await
}

#[tokio::test]
async fn server_info_json() {
    run(async {
        let f = HttpFixture::with(EchoOptions::named("u1"), |_| {}, &["--concurrency", "2"]).await;
        let r = f.proxy.admin().get("/server_info").await;
        assert_eq!(r.status, 200);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{:?}",
            r.header("content-type")
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("server_info is JSON");
        assert_eq!(v["state"], "LIVE");
        assert!(
            v["version"].as_str().is_some_and(|s| !s.is_empty()),
            "{v:#}"
        );
        assert!(v["uptime_current_epoch"]
            .as_str()
            .is_some_and(|s| s.ends_with('s')));
        assert!(v["uptime_all_epochs"]
            .as_str()
            .is_some_and(|s| s.ends_with('s')));
        let o = &v["command_line_options"];
        assert_eq!(o["concurrency"], 2);
        assert_eq!(
            o["config_path"],
            f.proxy.config_path.to_str().expect("utf-8")
        );
        assert_eq!(o["mode"], "Serve");
    })
    .await
}

#[tokio::test]
async fn stat_names_after_traffic() {
    run(async {
        let f = HttpFixture::with(
            EchoOptions::named("u1"),
            |v| {
                v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                    ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["match"] =
                    serde_json::json!({ "prefix": "/ok" });
            },
            &["--concurrency", "1"],
        )
        .await;
        let mut c = Http1Client::connect(&f.addr()).await.expect("connect");
        for i in 0..3 {
            let r = c
                .send(client::get(&format!("/ok/{i}"), "a"))
                .await
                .expect("request");
            assert_eq!(r.status, 200);
        }
        let nr = c.send(client::get("/missing", "a")).await.expect("request");
        assert_eq!(nr.status, 404);
        let admin = f.proxy.admin();
        let l = format!("listener.127.0.0.1_{}", f.port);
        let expect = [
            (format!("{l}.downstream_cx_total"), 1),
            (format!("{l}.downstream_cx_active"), 1),
            (format!("{l}.worker_0.downstream_cx_total"), 1),
            (format!("{l}.http.ingress_http.downstream_rq_2xx"), 3),
            (format!("{l}.http.ingress_http.downstream_rq_4xx"), 1),
            ("http.ingress_http.downstream_cx_total".to_string(), 1),
            ("http.ingress_http.downstream_cx_http1_total".to_string(), 1),
            ("http.ingress_http.downstream_rq_total".to_string(), 4),
            ("http.ingress_http.downstream_rq_http1_total".to_string(), 4),
            ("http.ingress_http.downstream_rq_2xx".to_string(), 3),
            ("http.ingress_http.downstream_rq_4xx".to_string(), 1),
            ("http.ingress_http.downstream_rq_completed".to_string(), 4),
            ("http.ingress_http.no_route".to_string(), 1),
            ("cluster.backend.upstream_cx_total".to_string(), 1),
            ("cluster.backend.upstream_cx_http1_total".to_string(), 1),
            ("cluster.backend.upstream_rq_total".to_string(), 3),
            ("cluster.backend.upstream_rq_200".to_string(), 3),
            ("cluster.backend.upstream_rq_2xx".to_string(), 3),
            ("cluster.backend.upstream_rq_completed".to_string(), 3),
            ("server.concurrency".to_string(), 1),
            ("server.live".to_string(), 1),
        ];
        for (name, want) in expect {
            admin
                .wait_stat(&name, Duration::from_secs(5), |v| v == want)
                .await;
        }
        let stats = admin.get("/stats").await;
        assert!(
            stats.text().lines().all(|l| l.contains(": ")),
            "every /stats line is `name: value`"
        );
    })
    .await
}

#[tokio::test]
async fn prometheus_format() {
    run(async {
        let f = HttpFixture::start().await;
        for _ in 0..2 {
            assert_eq!(curl(&[&f.url("/p")]).await.resp.status, 200);
        }
        let admin = f.proxy.admin();
        admin
            .wait_stat("cluster.backend.upstream_rq_total", Duration::from_secs(5), |v| v == 2)
            .await;
        let r = admin.get("/stats/prometheus").await;
        assert_eq!(r.status, 200);
        let text = r.text();
        assert!(
            text.lines().any(|l| l == "# TYPE envoy_cluster_upstream_rq_total counter"),
            "missing `# TYPE envoy_cluster_upstream_rq_total counter`"
        );
        let samples: Vec<Sample> = text.lines().filter_map(parse_sample).collect();
        for want in [
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"} 2",
            "envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"backend\"} 2",
            "envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"ingress_http\"} 2",
            "envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress_http\"} 2",
        ] {
            let want_sample = parse_sample(want).expect("valid sample");
            assert!(
                samples.contains(&want_sample),
                "missing `{want}` (labels in any order) in /stats/prometheus; related lines:\n{}",
                text.lines()
                    .filter(|l| l.starts_with(want_sample.0.as_str()))
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    })
    .await
}

/// A Prometheus sample: metric name, sorted labels, value. Label order carries no meaning.
type Sample = (String, Vec<String>, String);

fn parse_sample(line: &str) -> Option<Sample> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let mut labels: Vec<String> = labels
        .split(',')
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    labels.sort();
    Some((name.to_string(), labels, value.to_string()))
}

#[tokio::test]
async fn listeners_and_clusters_endpoints() {
    run(async {
        let f = HttpFixture::start().await;
        assert_eq!(curl(&[&f.url("/x")]).await.resp.status, 200);
        let admin = f.proxy.admin();
        let l = admin.get("/listeners").await;
        assert_eq!(l.status, 200);
        assert!(
            l.text()
                .lines()
                .any(|x| x == format!("ingress_http::127.0.0.1:{}", f.port)),
            "{}",
            l.text()
        );
        let lj: serde_json::Value =
            serde_json::from_slice(&admin.get("/listeners?format=json").await.body).expect("json");
        assert_eq!(lj["listener_statuses"][0]["name"], "ingress_http", "{lj:#}");
        let c = admin.get("/clusters").await;
        assert_eq!(c.status, 200);
        let host = format!("backend::{}", f.up.addr);
        for want in [
            format!("{host}::cx_total::1"),
            format!("{host}::rq_total::1"),
            format!("{host}::rq_success::1"),
            format!("{host}::health_flags::healthy"),
            "backend::added_via_api::false".to_string(),
        ] {
            assert!(
                c.text().lines().any(|x| x == want),
                "missing `{want}` in:\n{}",
                c.text()
            );
        }
    })
    .await
}

#[tokio::test]
async fn config_dump() {
    run(async {
        let f = HttpFixture::start().await;
        let r = f.proxy.admin().get("/config_dump").await;
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("config_dump is JSON");
        let types: Vec<&str> = v["configs"]
            .as_array()
            .expect("configs[]")
            .iter()
            .filter_map(|c| c["@type"].as_str())
            .collect();
        for want in [
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        ] {
            assert!(types.contains(&want), "{want} missing from {types:?}");
        }
        let boot = v["configs"]
            .as_array()
            .and_then(|a| {
                a.iter().find(|c| {
                    c["@type"] == "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"
                })
            })
            .expect("bootstrap dump");
        assert_eq!(
            boot["bootstrap"]["static_resources"]["listeners"][0]["name"],
            "ingress_http"
        );
    })
    .await
}

/// A connection stays on the worker that accepted it; every connection is counted once.
#[tokio::test]
async fn connections_stay_on_one_worker() {
    run(async {
        let f = HttpFixture::with(EchoOptions::named("u1"), |_| {}, &["--concurrency", "2"]).await;
        let admin = f.proxy.admin();
        let l = format!("listener.127.0.0.1_{}", f.port);
        let mut c = Http1Client::connect(&f.addr()).await.expect("connect");
        for i in 0..5 {
            c.send(client::get(&format!("/w/{i}"), "a"))
                .await
                .expect("request");
        }
        let w0 = admin
            .stat(&format!("{l}.worker_0.downstream_cx_total"))
            .await
            .unwrap_or(0);
        let w1 = admin
            .stat(&format!("{l}.worker_1.downstream_cx_total"))
            .await
            .unwrap_or(0);
        assert_eq!(
            (w0 + w1, w0.max(w1)),
            (1, 1),
            "five requests on one connection count once on one worker (worker_0={w0} worker_1={w1})"
        );
        for i in 0..10 {
            assert_eq!(curl(&[&f.url(&format!("/n/{i}"))]).await.resp.status, 200);
        }
        admin
            .wait_stat(
                &format!("{l}.downstream_cx_total"),
                Duration::from_secs(5),
                |v| v == 11,
            )
            .await;
        let w0 = admin
            .stat(&format!("{l}.worker_0.downstream_cx_total"))
            .await
            .unwrap_or(0);
        let w1 = admin
            .stat(&format!("{l}.worker_1.downstream_cx_total"))
            .await
            .unwrap_or(0);
        assert_eq!(w0 + w1, 11, "worker_0={w0} worker_1={w1}");
        assert!(
            admin
                .stat(&format!("{l}.worker_2.downstream_cx_total"))
                .await
                .is_none(),
            "only workers 0 and 1 exist with --concurrency 2"
        );
    })
    .await
}
