//! The connection manager's `scheme_header_transformation`, side by side with Envoy 1.40: a
//! `scheme_to_overwrite` changes the request's `:scheme` before routing (a route on `:scheme`
//! sees it, the access log shows it, an HTTP/2 upstream receives it), and `match_upstream` makes
//! the upstream's `:scheme` that of the upstream connection.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{get, h2_request, http1_once, H2Client};
use skiff_tests::config::{bootstrap, cluster, hcm, listener, to_yaml};
use skiff_tests::proxy::{run_cli, write_config, Kind, ProxyProcess};
use skiff_tests::upstream::{EchoUpstream, H2Upstream};
use skiff_tests::{free_port, run_for, scratch_dir};

fn h2_cluster(name: &str, port: u16) -> Value {
    let mut c = cluster(name, &[port]);
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} } } });
    c
}

fn manager(name: &str, transformation: Value, log: &str) -> Value {
    let mut m = hcm(
        name,
        vec![json!({ "name": "all", "domains": ["*"], "routes": [
            { "match": { "prefix": "/h2", "headers": [{ "name": ":scheme", "string_match": { "exact": "https" } }] },
              "route": { "cluster": "h2" },
              "response_headers_to_add": [{ "header": { "key": "x-route", "value": "https-h2" } }] },
            { "match": { "prefix": "/h2" }, "route": { "cluster": "h2" },
              "response_headers_to_add": [{ "header": { "key": "x-route", "value": "h2" } }] },
            { "match": { "prefix": "/", "headers": [{ "name": ":scheme", "string_match": { "exact": "https" } }] },
              "route": { "cluster": "h1" },
              "response_headers_to_add": [{ "header": { "key": "x-route", "value": "https" } }] },
            { "match": { "prefix": "/" }, "route": { "cluster": "h1" },
              "response_headers_to_add": [{ "header": { "key": "x-route", "value": "other" } }] }
        ] })],
    );
    m["typed_config"]["scheme_header_transformation"] = transformation;
    m["typed_config"]["access_log"] = json!([{ "name": "f", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": log,
        "log_format": { "text_format_source": { "inline_string": "%REQ(:PATH)% %REQ(:SCHEME)% %REQ(X-FORWARDED-PROTO)%\n" } } } }]);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheme_transformation_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let dir = scratch_dir("scheme");
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let h1 = EchoUpstream::start("h1").await;
            let h2 = H2Upstream::start("h2").await;
            let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
            let logs: Vec<String> = (0..3)
                .map(|i| {
                    dir.join(format!("{}-{i}.log", kind.name()))
                        .display()
                        .to_string()
                })
                .collect();
            let listeners = vec![
                listener(
                    "none",
                    "127.0.0.1",
                    ports[0],
                    manager("none", json!({}), &logs[0]),
                ),
                listener(
                    "overwrite",
                    "127.0.0.1",
                    ports[1],
                    manager(
                        "overwrite",
                        json!({ "scheme_to_overwrite": "https" }),
                        &logs[1],
                    ),
                ),
                listener(
                    "upstream",
                    "127.0.0.1",
                    ports[2],
                    manager("upstream", json!({ "match_upstream": true }), &logs[2]),
                ),
            ];
            let v = bootstrap(
                free_port(),
                listeners,
                vec![cluster("h1", &[h1.port()]), h2_cluster("h2", h2.port())],
            );
            let _p = ProxyProcess::start(kind, &to_yaml(&v), &[]).await;
            let mut got = Vec::new();
            for (name, port) in ["none", "overwrite", "upstream"].iter().zip(&ports) {
                let addr = format!("127.0.0.1:{port}");
                for path in ["/one", "/h2/two"] {
                    let r = http1_once(&addr, get(path, "s.example.com"))
                        .await
                        .expect("a response");
                    got.push(format!(
                        "{name} h1 {path}: {} {:?} upstream scheme {:?}",
                        r.status,
                        r.header("x-route"),
                        r.header("x-upstream-scheme")
                    ));
                }
                let client = H2Client::connect(&addr).await.expect("h2c");
                let mut req = h2_request("GET", "s.example.com", "/h2/three", &b""[..]);
                *req.uri_mut() = "https://s.example.com/h2/three".parse().expect("uri");
                let r = client.send(req).await.expect("a response");
                got.push(format!(
                    "{name} h2 https /h2/three: {} {:?} upstream scheme {:?}",
                    r.status,
                    r.header("x-route"),
                    r.header("x-upstream-scheme")
                ));
            }
            for r in h2.rec.wait_requests(6, Duration::from_secs(3)).await {
                let xfp = r
                    .headers
                    .iter()
                    .find(|(k, _)| k == "x-forwarded-proto")
                    .map(|(_, v)| v.clone());
                got.push(format!("h2 upstream {} xfp={xfp:?}", r.path));
            }
            for r in h1.rec.wait_requests(3, Duration::from_secs(3)).await {
                let xfp = r
                    .headers
                    .iter()
                    .find(|(k, _)| k == "x-forwarded-proto")
                    .map(|(_, v)| v.clone());
                got.push(format!("h1 upstream {} xfp={xfp:?}", r.path));
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            for l in &logs {
                let mut lines: Vec<String> = std::fs::read_to_string(l)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect();
                lines.sort();
                got.push(lines.join("\n"));
            }
            seen.push(got);
        }
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        let all = seen[0].join("\n");
        for want in [
            "overwrite h1 /one: 200 Some(\"https\")",
            "overwrite h1 /h2/two: 200 Some(\"https-h2\") upstream scheme Some(\"https\")",
            "upstream h2 https /h2/three: 200 Some(\"https-h2\") upstream scheme Some(\"http\")",
            "none h2 https /h2/three: 200 Some(\"https-h2\") upstream scheme Some(\"https\")",
        ] {
            assert!(all.contains(want), "{want} missing from\n{all}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheme_other_than_http_or_https_is_refused_by_both() {
    run_for(Duration::from_secs(60), async {
        let v = bootstrap(
            free_port(),
            vec![listener(
                "l",
                "127.0.0.1",
                free_port(),
                manager("l", json!({ "scheme_to_overwrite": "ftp" }), "/dev/null"),
            )],
            vec![cluster("h1", &[free_port()]), cluster("h2", &[free_port()])],
        );
        let cfg = write_config("bad-scheme", &to_yaml(&v));
        for kind in [Kind::Envoy, Kind::under_test()] {
            let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
            assert_ne!(out.code, Some(0), "{}: accepted", kind.name());
            if kind != Kind::Envoy {
                assert!(
                    out.output().contains("scheme_to_overwrite"),
                    "{}",
                    out.output()
                );
            }
        }
    })
    .await;
}
