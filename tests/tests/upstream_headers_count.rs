//! A cluster's `common_http_protocol_options.max_headers_count` (default 100) on upstream
//! responses, side by side with Envoy 1.40: a response with more headers than the limit is
//! refused (502, `UPE`), over HTTP/1.1 and HTTP/2 upstreams, at the default and a lower limit.
//! A cluster's `headers_with_underscores_action` leaves responses alone in both.

use std::time::Duration;

use serde_json::json;
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, cluster, h2_cluster, hcm, listener, route, to_yaml, vhost};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::{EchoUpstream, H2Upstream};
use skiff_tests::{free_port, run_for};

/// `GET path` through the proxy, and the access log line it wrote.
async fn get_logged(
    p: &ProxyProcess,
    port: u16,
    path: &str,
) -> (skiff_tests::client::CurlReply, String) {
    let r = curl(&["-s", &format!("http://127.0.0.1:{port}{path}")]).await;
    let prefix = format!("{path} ");
    let log = p
        .wait_stdout_line(Duration::from_secs(5), |l| l.starts_with(&prefix))
        .await;
    (r, log)
}

#[tokio::test]
async fn upstream_header_count_limits_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let h1 = EchoUpstream::start("h1").await;
            let h2 = H2Upstream::start("h2").await;
            let port = free_port();
            let limited = |mut c: serde_json::Value, common: serde_json::Value| {
                let opts = c["typed_extension_protocol_options"]
                    ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                    .take();
                let mut opts = if opts.is_null() {
                    json!({
                        "@type": skiff_tests::config::HTTP_PROTOCOL_OPTIONS_TYPE,
                        "explicit_http_config": { "http_protocol_options": {} }
                    })
                } else {
                    opts
                };
                opts["common_http_protocol_options"] = common;
                c["typed_extension_protocol_options"] =
                    json!({ "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts });
                c
            };
            let twenty = json!({ "max_headers_count": 20 });
            let h1_20 = limited(cluster("h1_20", &[h1.port()]), twenty.clone());
            let h2_20 = limited(h2_cluster("h2_20", &[h2.port()], None), twenty);
            let mut under = Vec::new();
            for action in ["DROP_HEADER", "REJECT_REQUEST"] {
                let c = json!({ "headers_with_underscores_action": action });
                under.push(limited(cluster(&format!("h1_{action}"), &[h1.port()]), c.clone()));
                under.push(limited(
                    h2_cluster(&format!("h2_{action}"), &[h2.port()], None),
                    c,
                ));
            }
            let mut m = hcm(
                "count",
                vec![vhost(
                    "all",
                    &["*"],
                    vec![
                        route("/h1/", "h1"),
                        route("/h2/", "h2"),
                        route("/h1_20/", "h1_20"),
                        route("/h2_20/", "h2_20"),
                        route("/h1_DROP_HEADER/", "h1_DROP_HEADER"),
                        route("/h2_DROP_HEADER/", "h2_DROP_HEADER"),
                        route("/h1_REJECT_REQUEST/", "h1_REJECT_REQUEST"),
                        route("/h2_REJECT_REQUEST/", "h2_REJECT_REQUEST"),
                    ],
                )],
            );
            m["typed_config"]["access_log"] = json!([{ "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": { "text_format_source": { "inline_string":
                        "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n" } } } }]);
            let v = bootstrap(
                free_port(),
                vec![listener("l", "127.0.0.1", port, m)],
                [
                    vec![
                        cluster("h1", &[h1.port()]),
                        h2_cluster("h2", &[h2.port()], None),
                        h1_20,
                        h2_20,
                    ],
                    under,
                ]
                .concat(),
            );
            let p = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for (prefix, around) in [("h1", 100), ("h2", 100), ("h1_20", 20), ("h2_20", 20)] {
                for extra in around - 12..around - 2 {
                    let (r, log) = get_logged(&p, port, &format!("/{prefix}/headers/{extra}")).await;
                    got.push(format!(
                        "{prefix} +{extra}: {} {:?} log={log:?}",
                        r.resp.status,
                        if r.resp.status == 200 { String::new() } else { r.resp.text() }
                    ));
                }
            }
            for prefix in [
                "h1_DROP_HEADER",
                "h2_DROP_HEADER",
                "h1_REJECT_REQUEST",
                "h2_REJECT_REQUEST",
            ] {
                for _ in 0..2 {
                    let (r, log) = get_logged(&p, port, &format!("/{prefix}/underscore/")).await;
                    got.push(format!(
                        "{prefix}: {} x_under={:?} log={log:?}",
                        r.resp.status,
                        r.resp.header("x_under")
                    ));
                }
            }
            for (name, value) in p.admin().stats_containing("underscore").await {
                if value.trim() != "0" {
                    got.push(format!("{name}: {value}"));
                }
            }
            seen.push(got);
        }
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        let all = seen[0].join("\n");
        for prefix in ["h1", "h2", "h1_20", "h2_20"] {
            assert!(all.contains(&format!("{prefix} +")), "{all}");
        }
        assert!(all.contains(": 200") && all.contains(": 502"), "{all}");
        assert!(
            all.contains("h2_REJECT_REQUEST: 200 x_under=Some(\"1\")"),
            "{all}"
        );
    })
    .await;
}
