//! A cluster's `common_http_protocol_options.max_stream_duration` side by side with Envoy 1.40:
//! an upstream request that has not finished within it ends; before the response headers the
//! client gets Envoy's local reply, after them the response is cut; both with Envoy's response
//! flag, details and `upstream_rq_max_duration_reached`.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::raw_exchange;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, to_yaml, vhost};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for, scratch_dir, Kind, ProxyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP/1.1 upstream that sends its headers at once and its 10-byte body a second later.
async fn dripping_upstream() -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = s.write_all(b"0123456789").await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    (port, task)
}

fn limited(name: &str, port: u16) -> Value {
    let mut c = cluster(name, &[port]);
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": { "max_stream_duration": "0.3s" },
            "explicit_http_config": { "http_protocol_options": {} } } });
    c
}

#[tokio::test]
async fn upstream_max_stream_duration_side_by_side() {
    run_for(Duration::from_secs(60), async {
        let echo = EchoUpstream::start("echo").await;
        let (drip, _task) = dripping_upstream().await;
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let dir = scratch_dir("upstream-msd");
            let log = dir.join("access.log");
            let (admin, port) = (free_port(), free_port());
            let mut h = hcm(
                "h",
                vec![vhost("v", &["*"], vec![route("/slow", "slow"), route("/drip", "drip")])],
            );
            h["typed_config"]["access_log"] = json!([ { "name": "envoy.access_loggers.file",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": log, "log_format": { "text_format_source": { "inline_string":
                        "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n" } } } } ]);
            let yaml = to_yaml(&bootstrap(
                admin,
                vec![listener("l", "127.0.0.1", port, h)],
                vec![limited("slow", echo.port()), limited("drip", drip)],
            ));
            let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let addr = format!("127.0.0.1:{port}");
            let slow = raw_exchange(
                &addr,
                b"GET /slow?sleep=1000 HTTP/1.1\r\nhost: a\r\n\r\n",
                Duration::from_secs(3),
            )
            .await;
            let drip = raw_exchange(&addr, b"GET /drip HTTP/1.1\r\nhost: a\r\n\r\n", Duration::from_secs(3)).await;
            let admin = proxy.admin();
            let reached = admin
                .wait_stat("cluster.slow.upstream_rq_max_duration_reached", Duration::from_secs(3), |v| v >= 1)
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let lines = std::fs::read_to_string(&log).unwrap_or_default();
            let text = |b: &[u8]| {
                let t = String::from_utf8_lossy(b).to_string();
                // Dates, the server's name and the upstream's time differ.
                t.lines()
                    .filter(|l| {
                        !l.starts_with("date:")
                            && !l.starts_with("server:")
                            && !l.starts_with("x-envoy-upstream-service-time:")
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let cut = admin
                .wait_stat("cluster.drip.upstream_rq_max_duration_reached", Duration::from_secs(3), |v| v >= 1)
                .await;
            assert!(drip.closed, "{}: the cut response closes the connection", kind.name());
            seen.push((text(&slow.data), text(&drip.data), lines, reached, cut));
        }
        assert_eq!(seen[1], seen[0], "skiff's, Envoy's");
    })
    .await;
}
