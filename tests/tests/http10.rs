//! HTTP/1.0 with the connection manager's `http_protocol_options.accept_http_10` and
//! `default_host_for_http_10`, side by side with Envoy 1.40: the reply (an HTTP/1.0 status
//! line, `connection: close` unless the client asked to keep the connection), whether the
//! connection closes, and what the upstream receives (HTTP/1.1, the default host).

use std::time::Duration;

use serde_json::json;
use skiff_tests::config::{hcm_config, simple_http, to_yaml};
use skiff_tests::run_for;
use skiff_tests::side_by_side::{assert_same_upstream, pair, raw_both, Up};

const CASES: &[(&str, &[u8])] = &[
    ("no host: the default", b"GET /a HTTP/1.0\r\n\r\n"),
    ("own host", b"GET /b HTTP/1.0\r\nHost: own.example\r\n\r\n"),
    (
        "body with content-length",
        b"POST /c HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
    ),
    (
        "keep-alive asked",
        b"GET /d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http10_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let (e, s) = pair(Up::H1, |admin, listen, upstream| {
            let mut b = simple_http(admin, listen, &[upstream]);
            hcm_config(&mut b)["http_protocol_options"] =
                json!({ "accept_http_10": true, "default_host_for_http_10": "default.example" });
            to_yaml(&b)
        })
        .await;
        for (what, bytes) in CASES {
            let (re, _) = raw_both(&e, &s, what, bytes).await;
            assert!(
                re.text().starts_with("HTTP/1.0 200"),
                "{what}: {}",
                re.text()
            );
            assert_same_upstream(what, &e, &s);
        }
        let r = s.rec.requests();
        assert_eq!(r[0].header("host"), Some("default.example"));
        // Without accept_http_10 both answer 426 (tests/hostile_http1.rs); with it the
        // connection manager counts HTTP/1.1 requests.
        for side in [&e, &s] {
            let a = side.proxy.admin();
            assert_eq!(
                a.counter("http.ingress_http.downstream_rq_http1_total")
                    .await,
                CASES.len() as u64
            );
        }
    })
    .await;
}
