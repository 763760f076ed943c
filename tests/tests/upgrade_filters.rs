//! `upgrade_configs[].filters`, side by side with Envoy 1.40: a websocket upgrade runs its own
//! filters (here a fault filter that aborts with 418) instead of the connection manager's, a
//! plain request the connection manager's, and an upgrade its route turns off the connection
//! manager's (and is then refused by the router).

use std::time::Duration;

use serde_json::json;
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, to_yaml, vhost};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for};

#[tokio::test]
async fn upgrade_filters_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let up = EchoUpstream::start("up").await;
            let port = free_port();
            let mut noup = route("/noup", "up");
            noup["route"]["upgrade_configs"] =
                json!([{ "upgrade_type": "websocket", "enabled": false }]);
            let mut h = hcm("up", vec![vhost("all", &["*"], vec![noup, route("/", "up")])]);
            h["typed_config"]["upgrade_configs"] = json!([{ "upgrade_type": "websocket",
                "filters": [
                    { "name": "envoy.filters.http.fault", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                        "abort": { "http_status": 418, "percentage": { "numerator": 100 } } } },
                    skiff_tests::config::router(),
                ] }]);
            h["typed_config"]["access_log"] = json!([{ "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": { "text_format_source": { "inline_string":
                        "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n" } } } }]);
            let v = bootstrap(
                free_port(),
                vec![listener("l", "127.0.0.1", port, h)],
                vec![cluster("up", &[up.port()])],
            );
            let p = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            let ws = ["-H", "connection: upgrade", "-H", "upgrade: websocket"];
            for (path, upgrade) in [("/plain", false), ("/ws", true), ("/noup/ws", true)] {
                let url = format!("http://127.0.0.1:{port}{path}");
                let mut args = vec!["-s", &url];
                if upgrade {
                    args.extend(ws);
                }
                let r = curl(&args).await;
                let log = p
                    .wait_stdout_line(Duration::from_secs(5), |l| {
                        l.starts_with(&format!("{path} "))
                    })
                    .await;
                got.push(format!("{path}: {} | {log}", r.resp.status));
            }
            seen.push(got);
        }
        eprintln!("Envoy:\n{}\nskiff:\n{}", seen[0].join("\n"), seen[1].join("\n"));
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        assert!(seen[0][1].contains(" 418 "), "{:?}", seen[0]);
    })
    .await
}
