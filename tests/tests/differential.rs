//! The same Envoy bootstrap and the same requests through Envoy 1.40 and through skiff, side by
//! side: the upstream-observed request and the client-observed response must agree, except for
//! the differences documented in `tests/DIFFERENCES.md` (date, generated x-request-id values,
//! x-envoy-upstream-service-time values, server values).
//!
//! With `SKIFF_TESTS_PROXY=envoy` both sides run Envoy, which checks the harness itself.

use std::time::Duration;

use bytes::Bytes;
use skiff_tests::client::{self, parse_http_dump, H2Client};
use skiff_tests::config::{self, bootstrap, cluster, h2_cluster, hcm, listener, route, vhost};
use skiff_tests::diff::upstream_view;
use skiff_tests::proxy::{run_cli, Kind};
use skiff_tests::side_by_side::*;
use skiff_tests::upstream::TcpMode;
use skiff_tests::{refused_port, run};

#[tokio::test]
async fn validate_minimal_config_same_verdict() {
    run(async {
        let path = config::envoy_minimal_path();
        let path = path.to_str().expect("utf-8 path");
        for kind in [Kind::Envoy, Kind::under_test()] {
            let out = run_cli(kind, &["--mode", "validate", "-c", path]).await;
            assert_eq!(out.code, Some(0), "{}: {}", kind.name(), out.output());
            assert!(
                out.output().contains(&format!("configuration '{path}' OK")),
                "{}: expected \"configuration '{path}' OK\", got:\n{}",
                kind.name(),
                out.output()
            );
        }
    })
    .await
}

#[tokio::test]
async fn minimal_config_get() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let re = curl_on(&e, &[], "/hello").await;
        let rs = curl_on(&s, &[], "/hello").await;
        assert_eq!(re.resp.status, 200, "envoy: {:?}", re);
        assert_same_response("GET /hello", &re.resp, &rs.resp);
        let up = assert_same_upstream("GET /hello", &e, &s);
        assert_generated_request_id("GET /hello", &e, &s);
        // The reference's §4 A, as observed on Envoy 1.40.
        let mut names: Vec<&str> = up.header_names();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "host",
                "user-agent",
                "x-envoy-expected-rq-timeout-ms",
                "x-forwarded-proto",
                "x-request-id"
            ]
        );
        assert_eq!(re.resp.header("server"), Some("envoy"));
        assert_eq!(
            rs.resp.header("server"),
            Some("envoy"),
            "skiff's default server value"
        );
    })
    .await
}

#[tokio::test]
async fn minimal_config_post_with_body() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let body = "a=1&b=2".repeat(100);
        let extra = [
            "-X",
            "POST",
            "--data-binary",
            body.as_str(),
            "-H",
            "content-type: application/x-www-form-urlencoded",
        ];
        let re = curl_on(&e, &extra, "/form?x=1").await;
        let rs = curl_on(&s, &extra, "/form?x=1").await;
        assert_eq!(re.resp.status, 200);
        assert_same_response("POST /form", &re.resp, &rs.resp);
        let up = assert_same_upstream("POST /form", &e, &s);
        assert_eq!(up.body, Bytes::from(body));
    })
    .await
}

/// Reference §4 A2: hop-by-hop and hostile request headers.
#[tokio::test]
async fn hostile_and_hop_by_hop_request_headers() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let headers = [
            "Connection: keep-alive, x-foo",
            "x-foo: 1",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "TE: trailers",
            "Upgrade: foo",
            "x-forwarded-for: 1.2.3.4",
            "x-request-id: abc",
            "x-forwarded-proto: https",
            "x-envoy-upstream-rq-timeout-ms: 3000",
            "x-envoy-retry-on: 5xx",
            "x-envoy-retry-grpc-on: cancelled",
            "x-envoy-max-retries: 3",
            "x-envoy-upstream-rq-per-try-timeout-ms: 100",
            "x-envoy-upstream-alt-stat-name: alt",
            "x-envoy-ip-tags: tag",
            "x-envoy-force-trace: true",
            "x-envoy-hedge-on-per-try-timeout: true",
            "x-envoy-internal: true",
            "x-envoy-foo: kept",
            "x-envoy-decorator-operation: op",
            "x-envoy-downstream-service-cluster: dsc",
            "x-envoy-original-path: /spoofed",
            "x_under: 1",
        ];
        let mut extra = Vec::new();
        for h in headers {
            extra.push("-H");
            extra.push(h);
        }
        let results = [
            curl_on(&e, &extra, "/a2").await,
            curl_on(&s, &extra, "/a2").await,
        ];
        assert_eq!(results[0].resp.status, 200, "{:?}", results[0]);
        assert_same_response("A2", &results[0].resp, &results[1].resp);
        let up = assert_same_upstream("A2", &e, &s);
        // What Envoy 1.40 does (reference §4 A2).
        for gone in [
            "connection",
            "x-foo",
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "x-envoy-upstream-rq-timeout-ms",
            "x-envoy-retry-on",
            "x-envoy-retry-grpc-on",
            "x-envoy-max-retries",
            "x-envoy-upstream-rq-per-try-timeout-ms",
            "x-envoy-upstream-alt-stat-name",
            "x-envoy-ip-tags",
            "x-envoy-force-trace",
            "x-envoy-hedge-on-per-try-timeout",
            "x-envoy-internal",
        ] {
            assert!(!up.has(gone), "envoy forwarded `{gone}`: {up:#?}");
        }
        for (name, value) in [
            ("te", "trailers"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "abc"),
            ("x-forwarded-proto", "https"),
            ("x-envoy-expected-rq-timeout-ms", "15000"),
            ("x-envoy-foo", "kept"),
            ("x-envoy-decorator-operation", "op"),
            ("x-envoy-downstream-service-cluster", "dsc"),
            ("x-envoy-original-path", "/spoofed"),
            ("x_under", "1"),
        ] {
            assert_eq!(up.header(name), Some(value), "envoy: `{name}` in {up:#?}");
        }
    })
    .await
}

#[tokio::test]
async fn te_is_reduced_to_trailers() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let re = curl_on(&e, &["-H", "TE: gzip, trailers"], "/te").await;
        let rs = curl_on(&s, &["-H", "TE: gzip, trailers"], "/te").await;
        assert_same_response("TE", &re.resp, &rs.resp);
        let up = assert_same_upstream("TE", &e, &s);
        assert_eq!(up.header("te"), Some("trailers"));
        let re = curl_on(&e, &["-H", "TE: gzip"], "/te2").await;
        let rs = curl_on(&s, &["-H", "TE: gzip"], "/te2").await;
        assert_same_response("TE gzip", &re.resp, &rs.resp);
        let up = assert_same_upstream("TE gzip", &e, &s);
        assert_eq!(up.header("te"), None);
    })
    .await
}

#[tokio::test]
async fn h2c_downstream_to_h1_upstream() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let mut resps = Vec::new();
        for side in [&e, &s] {
            let c = H2Client::connect(&side.addr()).await.expect("h2c connect");
            let mut req =
                client::h2_request("GET", "svc.example.com:8080", "/h2?q=1", Bytes::new());
            req.headers_mut()
                .insert("x-custom", http::HeaderValue::from_static("v"));
            resps.push(c.send(req).await.expect("h2 request"));
        }
        assert_eq!(resps[0].status, 200);
        assert_eq!(resps[0].version, http::Version::HTTP_2);
        assert_same_response("h2c→h1", &resps[0], &resps[1]);
        let up = assert_same_upstream("h2c→h1", &e, &s);
        assert_generated_request_id("h2c→h1", &e, &s);
        assert_eq!(up.version, http::Version::HTTP_11);
        assert_eq!(up.header("host"), Some("svc.example.com:8080"));
    })
    .await
}

#[tokio::test]
async fn h2c_downstream_post_to_h1_upstream() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let mut resps = Vec::new();
        for side in [&e, &s] {
            let c = H2Client::connect(&side.addr()).await.expect("h2c connect");
            let req = client::h2_request("POST", "svc.example.com", "/upload", "0123456789");
            resps.push(c.send(req).await.expect("h2 request"));
        }
        assert_same_response("h2c POST", &resps[0], &resps[1]);
        let up = assert_same_upstream("h2c POST", &e, &s);
        assert_eq!(up.body, Bytes::from_static(b"0123456789"));
    })
    .await
}

fn h2_upstream_config(admin: u16, listen: u16, upstream: u16) -> String {
    config::to_yaml(&bootstrap(
        admin,
        vec![listener(
            "ingress_http",
            "127.0.0.1",
            listen,
            hcm(
                "ingress_http",
                vec![vhost("backend", &["*"], vec![route("/", "backend")])],
            ),
        )],
        vec![h2_cluster("backend", &[upstream], None)],
    ))
}

#[tokio::test]
async fn h1_downstream_to_h2_upstream() {
    run(async {
        let (e, s) = pair(Up::H2, h2_upstream_config).await;
        let re = curl_on(&e, &["-H", "x-custom: v"], "/to-h2?x=y").await;
        let rs = curl_on(&s, &["-H", "x-custom: v"], "/to-h2?x=y").await;
        assert_eq!(re.resp.status, 200, "{re:?}");
        assert_same_response("h1→h2", &re.resp, &rs.resp);
        let up = assert_same_upstream("h1→h2", &e, &s);
        assert_generated_request_id("h1→h2", &e, &s);
        assert_eq!(up.version, http::Version::HTTP_2);
        assert_eq!(
            up.authority.as_deref(),
            Some(HOST),
            "Host becomes :authority"
        );
        assert!(!up.has("host"), "no host header on HTTP/2: {up:#?}");
    })
    .await
}

#[tokio::test]
async fn h1_post_to_h2_upstream() {
    run(async {
        let (e, s) = pair(Up::H2, h2_upstream_config).await;
        let re = curl_on(&e, &["--data-binary", "hello h2"], "/p").await;
        let rs = curl_on(&s, &["--data-binary", "hello h2"], "/p").await;
        assert_same_response("h1 POST→h2", &re.resp, &rs.resp);
        let up = assert_same_upstream("h1 POST→h2", &e, &s);
        assert_eq!(up.body, Bytes::from_static(b"hello h2"));
    })
    .await
}

fn nr_config(admin: u16, listen: u16, upstream: u16) -> String {
    config::to_yaml(&bootstrap(
        admin,
        vec![listener(
            "ingress_http",
            "127.0.0.1",
            listen,
            hcm(
                "ingress_http",
                vec![vhost(
                    "only",
                    &["only.example.com"],
                    vec![route("/", "backend")],
                )],
            ),
        )],
        vec![cluster("backend", &[upstream])],
    ))
}

#[tokio::test]
async fn no_route_404() {
    run(async {
        let (e, s) = pair(Up::H1, nr_config).await;
        let re = curl_on(&e, &[], "/nothing").await;
        let rs = curl_on(&s, &[], "/nothing").await;
        assert_eq!(re.resp.status, 404);
        assert!(re.resp.body.is_empty());
        assert_same_response("NR", &re.resp, &rs.resp);
        assert!(e.rec.requests().is_empty() && s.rec.requests().is_empty());
    })
    .await
}

fn uh_config(admin: u16, listen: u16, _upstream: u16) -> String {
    config::to_yaml(&bootstrap(
        admin,
        vec![listener(
            "ingress_http",
            "127.0.0.1",
            listen,
            hcm(
                "ingress_http",
                vec![vhost("backend", &["*"], vec![route("/", "empty")])],
            ),
        )],
        vec![cluster("empty", &[])],
    ))
}

#[tokio::test]
async fn no_healthy_upstream_503() {
    run(async {
        let (e, s) = pair(Up::H1, uh_config).await;
        let re = curl_on(&e, &[], "/uh").await;
        let rs = curl_on(&s, &[], "/uh").await;
        assert_eq!(re.resp.status, 503);
        assert_eq!(re.resp.text(), "no healthy upstream");
        assert_same_response("UH", &re.resp, &rs.resp);
    })
    .await
}

fn uf_config(admin: u16, listen: u16, _upstream: u16) -> String {
    config::to_yaml(&bootstrap(
        admin,
        vec![listener(
            "ingress_http",
            "127.0.0.1",
            listen,
            hcm(
                "ingress_http",
                vec![vhost("backend", &["*"], vec![route("/", "dead")])],
            ),
        )],
        vec![cluster("dead", &[refused_port()])],
    ))
}

#[tokio::test]
async fn connect_failure_503() {
    run(async {
        let (e, s) = pair(Up::H1, uf_config).await;
        let re = curl_on(&e, &[], "/uf").await;
        let rs = curl_on(&s, &[], "/uf").await;
        assert_eq!(re.resp.status, 503);
        assert_eq!(
            re.resp.text(),
            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
        );
        assert_same_response("UF", &re.resp, &rs.resp);
    })
    .await
}

#[tokio::test]
async fn chunked_request_body() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let body = vec![b'z'; 5000];
        let extra = ["-H", "Transfer-Encoding: chunked", "--data-binary", "@-"];
        let re = curl_stdin_on(&e, &extra, "/chunked", &body).await;
        let rs = curl_stdin_on(&s, &extra, "/chunked", &body).await;
        assert_eq!(re.resp.status, 200, "{re:?}");
        assert_same_response("chunked", &re.resp, &rs.resp);
        let up = assert_same_upstream("chunked", &e, &s);
        assert_eq!(up.body.len(), 5000);
        assert_eq!(
            up.header("transfer-encoding"),
            Some("chunked"),
            "chunked stays chunked"
        );
        assert!(!up.has("content-length"));
    })
    .await
}

#[tokio::test]
async fn http10_request() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let req = b"GET /old HTTP/1.0\r\nHost: diff.example.com\r\n\r\n";
        let re = client::raw_exchange(&e.addr(), req, Duration::from_secs(5)).await;
        let rs = client::raw_exchange(&s.addr(), req, Duration::from_secs(5)).await;
        let (_, pe) = parse_http_dump(&re.data);
        let (_, ps) = parse_http_dump(&rs.data);
        assert_eq!(pe.status, 426, "envoy: {}", re.text());
        assert_eq!(pe.text(), "Upgrade Required");
        assert!(re.closed, "envoy closes after 426");
        // Documented difference: skiff answers an HTTP/1.0 client with an HTTP/1.0 status line.
        assert_eq!(ps.version, http::Version::HTTP_10);
        let ps = client::Resp {
            version: pe.version,
            ..ps
        };
        assert_same_response("HTTP/1.0", &pe, &ps);
        assert!(rs.closed, "skiff must close the connection after the 426");
        assert!(e.rec.requests().is_empty() && s.rec.requests().is_empty());
    })
    .await
}

#[tokio::test]
async fn expect_100_continue() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let body = vec![b'q'; 2048];
        let extra = ["-H", "Expect: 100-continue", "--data-binary", "@-"];
        let re = curl_stdin_on(&e, &extra, "/expect", &body).await;
        let rs = curl_stdin_on(&s, &extra, "/expect", &body).await;
        assert_eq!(re.interim, vec![100], "envoy answers 100 Continue itself");
        assert_eq!(rs.interim, re.interim, "skiff interim responses");
        assert_eq!(re.resp.status, 200);
        assert_same_response("expect", &re.resp, &rs.resp);
        let up = assert_same_upstream("expect", &e, &s);
        assert!(!up.has("expect"), "Expect is not forwarded");
        assert_eq!(up.body.len(), 2048);
    })
    .await
}

#[tokio::test]
async fn upstream_status_and_response_headers() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        for path in ["/status/201", "/status/404", "/status/500", "/status/503"] {
            let re = curl_on(&e, &[], path).await;
            let rs = curl_on(&s, &[], path).await;
            assert_same_response(path, &re.resp, &rs.resp);
            assert_eq!(re.resp.header("x-upstream"), Some("u1"));
            assert_eq!(re.resp.header("connection"), None);
            assert_eq!(re.resp.header("keep-alive"), None);
        }
    })
    .await
}

#[tokio::test]
async fn default_access_log_line() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let mut lines = Vec::new();
        for side in [&e, &s] {
            let r = curl_on(side, &["-A", "diff-agent"], "/logged").await;
            assert_eq!(r.resp.status, 200);
            let line = side
                .proxy
                .wait_stdout_line(Duration::from_secs(5), |l| l.contains("/logged"))
                .await;
            lines.push(mask_log_line(&line));
        }
        assert_eq!(lines[0], lines[1], "default access log lines differ");
    })
    .await
}

#[tokio::test]
async fn keep_alive_sequence_matches() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        for side in [&e, &s] {
            let mut c = client::Http1Client::connect(&side.addr())
                .await
                .expect("connect");
            for i in 0..3 {
                let r = c
                    .send(client::get(&format!("/ka/{i}"), "ka.example.com"))
                    .await
                    .expect("request");
                assert_eq!(r.status, 200, "{} request {i}", side.proxy.kind.name());
            }
        }
        assert_same_upstream("keep-alive", &e, &s);
        let ce = e
            .proxy
            .admin()
            .counter(&format!(
                "listener.127.0.0.1_{}.downstream_cx_total",
                e.port
            ))
            .await;
        let cs = s
            .proxy
            .admin()
            .counter(&format!(
                "listener.127.0.0.1_{}.downstream_cx_total",
                s.port
            ))
            .await;
        assert_eq!(ce, 1);
        assert_eq!(
            cs, ce,
            "downstream_cx_total after 3 requests on one connection"
        );
        let re = e
            .proxy
            .admin()
            .counter("http.ingress_http.downstream_rq_2xx")
            .await;
        let rs = s
            .proxy
            .admin()
            .counter("http.ingress_http.downstream_rq_2xx")
            .await;
        assert_eq!(re, 3);
        assert_eq!(rs, re, "http.ingress_http.downstream_rq_2xx");
    })
    .await
}

#[tokio::test]
async fn absolute_form_uri_overrides_host() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let req = b"GET http://abs.example.com/abs?x=1 HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n";
        let (re, _) = raw_both(&e, &s, "absolute-form", req).await;
        assert_eq!(re.status(), Some(200), "{}", re.text());
        let up = assert_same_upstream("absolute-form", &e, &s);
        assert_eq!(up.path, "/abs?x=1");
        assert_eq!(up.header("host"), Some("abs.example.com"));
    })
    .await
}

#[tokio::test]
async fn path_is_forwarded_verbatim() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let req = b"GET /a/../b//c/%2e%2e/d?q=%20&r=a+b HTTP/1.1\r\nHost: diff.example.com\r\nConnection: close\r\n\r\n";
        raw_both(&e, &s, "path", req).await;
        let up = assert_same_upstream("path", &e, &s);
        assert_eq!(up.path, "/a/../b//c/%2e%2e/d?q=%20&r=a+b");
    })
    .await
}

#[tokio::test]
async fn missing_host_is_400() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let (re, _) = raw_both(
            &e,
            &s,
            "missing host",
            b"GET / HTTP/1.1\r\nUser-Agent: t\r\n\r\n",
        )
        .await;
        assert_eq!(re.status(), Some(400));
        assert!(e.rec.requests().is_empty() && s.rec.requests().is_empty());
    })
    .await
}

#[tokio::test]
async fn content_length_with_chunked_is_400() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let re = client::raw_exchange(&e.addr(), req, Duration::from_secs(3)).await;
        let rs = client::raw_exchange(&s.addr(), req, Duration::from_secs(3)).await;
        assert_eq!(re.status(), Some(400));
        assert!(re.closed);
        assert_same_response("cl+te", &re.responses()[0], &rs.responses()[0]);
        assert!(rs.closed, "skiff must close after a request with both framings: {}", rs.text());
        assert!(s.rec.requests().is_empty(), "nothing goes upstream");
    })
    .await
}

#[tokio::test]
async fn connection_close_request() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let req = b"GET /cc HTTP/1.1\r\nHost: diff.example.com\r\nConnection: close\r\n\r\n";
        let (re, _) = raw_both(&e, &s, "connection: close", req).await;
        assert!(
            re.closed,
            "envoy closes after answering a Connection: close request"
        );
        assert_eq!(re.responses()[0].header("connection"), Some("close"));
        assert_same_upstream("connection: close", &e, &s);
    })
    .await
}

#[tokio::test]
async fn pipelined_requests() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let req = b"GET /p1 HTTP/1.1\r\nHost: diff.example.com\r\n\r\nPOST /p2 HTTP/1.1\r\nHost: diff.example.com\r\nContent-Length: 3\r\n\r\nabcGET /p3 HTTP/1.1\r\nHost: diff.example.com\r\nConnection: close\r\n\r\n";
        let (re, _) = raw_both(&e, &s, "pipelined", req).await;
        assert_eq!(re.statuses(), vec![200, 200, 200]);
        assert_same_upstream("pipelined", &e, &s);
    })
    .await
}

#[tokio::test]
async fn head_and_bodiless_statuses() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let re = curl_on(&e, &["-I"], "/head").await;
        let rs = curl_on(&s, &["-I"], "/head").await;
        assert_eq!(re.resp.status, 200);
        assert_same_response("HEAD", &re.resp, &rs.resp);
        for path in ["/status/204", "/status/304"] {
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: diff.example.com\r\nConnection: close\r\n\r\n"
            );
            raw_both(&e, &s, path, req.as_bytes()).await;
        }
        assert_same_upstream("HEAD/204/304", &e, &s);
    })
    .await
}

#[tokio::test]
async fn chunked_response_from_upstream() {
    run(async {
        let (e, s) = pair(Up::H1Chunked, minimal).await;
        let req =
            b"GET /chunked-resp HTTP/1.1\r\nHost: diff.example.com\r\nConnection: close\r\n\r\n";
        let (re, _) = raw_both(&e, &s, "chunked response", req).await;
        assert_eq!(
            re.responses()[0].header("transfer-encoding"),
            Some("chunked")
        );
        let he = H2Client::connect(&e.addr()).await.expect("h2c");
        let hs = H2Client::connect(&s.addr()).await.expect("h2c");
        let r1 = he
            .send(client::h2_request("GET", HOST, "/chunked-h2", Bytes::new()))
            .await
            .expect("h2");
        let r2 = hs
            .send(client::h2_request("GET", HOST, "/chunked-h2", Bytes::new()))
            .await
            .expect("h2");
        assert_same_response("chunked response over h2", &r1, &r2);
    })
    .await
}

#[tokio::test]
async fn websocket_upgrade_without_upgrade_configs_is_403() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        let req = b"GET /ws HTTP/1.1\r\nHost: diff.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let (re, _) = raw_both(&e, &s, "websocket", req).await;
        assert_eq!(re.status(), Some(403), "{}", re.text());
        assert!(e.rec.requests().is_empty() && s.rec.requests().is_empty());
    })
    .await
}

#[tokio::test]
async fn h2c_concurrent_streams() {
    run(async {
        let (e, s) = pair(Up::H1, minimal).await;
        for side in [&e, &s] {
            let c = H2Client::connect(&side.addr()).await.expect("h2c");
            let mut set = tokio::task::JoinSet::new();
            for i in 0..8 {
                let c = c.clone();
                set.spawn(async move {
                    c.send(client::h2_request(
                        "GET",
                        HOST,
                        &format!("/c/{i}"),
                        Bytes::new(),
                    ))
                    .await
                });
            }
            while let Some(r) = set.join_next().await {
                assert_eq!(r.expect("task").expect("h2").status, 200);
            }
        }
        let mut pe: Vec<_> = e.rec.requests().iter().map(upstream_view).collect();
        let mut ps: Vec<_> = s.rec.requests().iter().map(upstream_view).collect();
        pe.sort_by(|a, b| a.path.cmp(&b.path));
        ps.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(pe.len(), 8);
        assert_eq!(pe, ps, "the upstream saw the same eight requests");
    })
    .await
}

/// After the same traffic, the stats a dashboard reads have the same values.
#[tokio::test]
async fn stats_after_same_traffic() {
    run(async {
        let build = |admin: u16, listen: u16, upstream: u16| {
            let mut v = config::simple_http(admin, listen, &[upstream]);
            config::route_config(&mut v)["virtual_hosts"][0]["routes"] = serde_json::json!([
                { "match": { "prefix": "/uh" }, "route": { "cluster": "empty" } },
                { "match": { "prefix": "/ok" }, "route": { "cluster": "backend" } }
            ]);
            v["static_resources"]["clusters"]
                .as_array_mut()
                .expect("clusters")
                .push(cluster("empty", &[]));
            config::to_yaml(&v)
        };
        let (e, s) = pair(Up::H1, build).await;
        for side in [&e, &s] {
            let mut c = client::Http1Client::connect(&side.addr())
                .await
                .expect("connect");
            for path in [
                "/ok/1",
                "/ok/status/404",
                "/ok/status/500",
                "/uh",
                "/nope",
                "/ok/2",
            ] {
                c.send(client::get(path, HOST)).await.expect("request");
            }
            let h2 = H2Client::connect(&side.addr()).await.expect("h2c");
            h2.send(client::h2_request("GET", HOST, "/ok/h2", Bytes::new()))
                .await
                .expect("h2");
        }
        let names = [
            "http.ingress_http.downstream_cx_total",
            "http.ingress_http.downstream_cx_http1_total",
            "http.ingress_http.downstream_cx_http2_total",
            "http.ingress_http.downstream_rq_total",
            "http.ingress_http.downstream_rq_http1_total",
            "http.ingress_http.downstream_rq_http2_total",
            "http.ingress_http.downstream_rq_2xx",
            "http.ingress_http.downstream_rq_4xx",
            "http.ingress_http.downstream_rq_5xx",
            "http.ingress_http.no_route",
            "cluster.backend.upstream_cx_total",
            "cluster.backend.upstream_cx_http1_total",
            "cluster.backend.upstream_rq_total",
            "cluster.backend.upstream_rq_200",
            "cluster.backend.upstream_rq_404",
            "cluster.backend.upstream_rq_500",
            "cluster.backend.upstream_rq_2xx",
            "cluster.backend.upstream_rq_4xx",
            "cluster.backend.upstream_rq_5xx",
            "cluster.empty.upstream_cx_none_healthy",
        ];
        let ae = e.proxy.admin();
        let as_ = s.proxy.admin();
        let mut diffs = Vec::new();
        for name in names {
            let ve = ae.wait_stat(name, Duration::from_secs(5), |_| true).await;
            let vs = as_.stat(name).await;
            if vs != Some(ve) {
                diffs.push(format!("{name}: envoy {ve}, skiff {vs:?}"));
            }
        }
        let le = ae
            .counter(&format!(
                "listener.127.0.0.1_{}.downstream_cx_total",
                e.port
            ))
            .await;
        let ls = as_
            .stat(&format!(
                "listener.127.0.0.1_{}.downstream_cx_total",
                s.port
            ))
            .await;
        if ls != Some(le) {
            diffs.push(format!(
                "listener.<addr>.downstream_cx_total: envoy {le}, skiff {ls:?}"
            ));
        }
        assert!(diffs.is_empty(), "stats differ:\n  {}", diffs.join("\n  "));
    })
    .await
}

/// The default access log lines of local replies agree (NR, UH, UF).
#[tokio::test]
async fn local_reply_access_log_lines() {
    run(async {
        let dead = refused_port();
        let build = move |admin: u16, listen: u16, upstream: u16| {
            let mut v = config::simple_http(admin, listen, &[upstream]);
            config::route_config(&mut v)["virtual_hosts"][0]["routes"] = serde_json::json!([
                { "match": { "prefix": "/uh" }, "route": { "cluster": "empty" } },
                { "match": { "prefix": "/uf" }, "route": { "cluster": "dead" } }
            ]);
            let cl = v["static_resources"]["clusters"]
                .as_array_mut()
                .expect("clusters");
            cl.push(cluster("empty", &[]));
            cl.push(cluster("dead", &[dead]));
            config::to_yaml(&v)
        };
        let (e, s) = pair(Up::H1, build).await;
        for path in ["/nr", "/uh", "/uf"] {
            let mut lines = Vec::new();
            for side in [&e, &s] {
                curl_on(side, &["-A", "diff-agent"], path).await;
                let line = side
                    .proxy
                    .wait_stdout_line(Duration::from_secs(5), |l| {
                        l.contains(&format!("\"GET {path} "))
                    })
                    .await;
                lines.push(mask_log_line(&line).replace(&dead.to_string(), "<dead>"));
            }
            assert_eq!(lines[0], lines[1], "{path}: access log lines differ");
        }
    })
    .await
}

#[tokio::test]
async fn upstream_closes_before_response_503() {
    run(async {
        let (e, s) = pair(Up::Raw(TcpMode::ReadThenClose), minimal).await;
        let re = curl_on(&e, &[], "/uc").await;
        let rs = curl_on(&s, &[], "/uc").await;
        assert_eq!(re.resp.status, 503);
        assert_eq!(
            re.resp.text(),
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
        );
        assert_same_response("UC", &re.resp, &rs.resp);
    })
    .await
}

#[tokio::test]
async fn upstream_garbage_response_502() {
    run(async {
        let (e, s) = pair(
            Up::Raw(TcpMode::ReadThenReply(b"this is not HTTP\r\n\r\n".to_vec())),
            minimal,
        )
        .await;
        let re = curl_on(&e, &[], "/upe").await;
        let rs = curl_on(&s, &[], "/upe").await;
        assert_eq!(re.resp.status, 502);
        assert_eq!(
            re.resp.text(),
            "upstream connect error or disconnect/reset before headers. reset reason: protocol error"
        );
        assert_same_response("UPE", &re.resp, &rs.resp);
        // The proxy keeps serving after a broken upstream.
        let again = curl_on(&s, &[], "/upe2").await;
        assert_eq!(again.resp.status, 502);
    })
    .await
}

#[tokio::test]
async fn h2c_downstream_to_h2_upstream() {
    run(async {
        let (e, s) = pair(Up::H2, h2_upstream_config).await;
        let mut resps = Vec::new();
        for side in [&e, &s] {
            let c = H2Client::connect(&side.addr()).await.expect("h2c connect");
            let req = client::h2_request("POST", HOST, "/h2h2?x=1", "body-bytes");
            resps.push(c.send(req).await.expect("h2 request"));
        }
        assert_eq!(resps[0].status, 200);
        assert_same_response("h2c→h2", &resps[0], &resps[1]);
        let up = assert_same_upstream("h2c→h2", &e, &s);
        assert_eq!(up.version, http::Version::HTTP_2);
        assert_eq!(up.authority.as_deref(), Some(HOST));
    })
    .await
}

#[tokio::test]
async fn tcp_proxy_pass_through_and_stats() {
    run(async {
        let build = |admin: u16, listen: u16, upstream: u16| {
            config::to_yaml(&bootstrap(
                admin,
                vec![listener(
                    "tcp",
                    "127.0.0.1",
                    listen,
                    config::tcp_proxy("tcp_a", "svc"),
                )],
                vec![cluster("svc", &[upstream])],
            ))
        };
        let (e, s) = pair(Up::Raw(TcpMode::Echo), build).await;
        let payload: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 256) as u8).collect();
        for side in [&e, &s] {
            for _ in 0..3 {
                let mut sock = tokio::net::TcpStream::connect(side.addr())
                    .await
                    .expect("connect");
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                sock.write_all(&payload).await.expect("write");
                sock.shutdown().await.expect("half-close");
                let mut back = Vec::new();
                sock.read_to_end(&mut back).await.expect("read");
                assert!(back == payload, "{}: echo differs", side.proxy.kind.name());
            }
        }
        for name in [
            "tcp.tcp_a.downstream_cx_total",
            "cluster.svc.upstream_cx_total",
        ] {
            let ve = e
                .proxy
                .admin()
                .wait_stat(name, Duration::from_secs(5), |v| v == 3)
                .await;
            let vs = s.proxy.admin().stat(name).await;
            assert_eq!(vs, Some(ve), "{name}");
        }
    })
    .await
}

fn original_dst_header_config(admin: u16, listen: u16, _upstream: u16) -> String {
    original_dst_config(
        admin,
        listen,
        serde_json::json!({ "use_http_header": true }),
    )
}

/// A listener routing everything to ORIGINAL_DST cluster `od` with `lb_config`.
fn original_dst_config(admin: u16, listen: u16, lb_config: serde_json::Value) -> String {
    let od = serde_json::json!({
        "name": "od",
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s",
        "original_dst_lb_config": lb_config,
    });
    config::to_yaml(&bootstrap(
        admin,
        vec![listener(
            "ingress_http",
            "127.0.0.1",
            listen,
            hcm(
                "ingress_http",
                vec![vhost("backend", &["*"], vec![route("/", "od")])],
            ),
        )],
        vec![od],
    ))
}

/// ORIGINAL_DST with `use_http_header`: `x-envoy-original-dst-host` names the host; a value
/// that is not an address is a 503 counted as `original_dst_host_invalid`; without the header
/// and without a restored destination there is no host.
#[tokio::test]
async fn original_dst_host_header() {
    run(async {
        let (e, s) = pair(Up::H1, original_dst_header_config).await;
        let target_e = format!("x-envoy-original-dst-host: 127.0.0.1:{}", e.upstream_port);
        let target_s = format!("x-envoy-original-dst-host: 127.0.0.1:{}", s.upstream_port);
        let re = curl_on(&e, &["-H", &target_e], "/od").await;
        let rs = curl_on(&s, &["-H", &target_s], "/od").await;
        // The echo shows the header, whose port differs per side: compare the rest.
        assert_eq!(re.resp.status, 200, "envoy: {re:?}");
        assert_eq!(rs.resp.status, 200, "skiff: {rs:?}");
        assert_eq!(e.rec.requests().len(), 1);
        assert_eq!(s.rec.requests().len(), 1);
        let bad = ["-H", "x-envoy-original-dst-host: not-an-address"];
        let re = curl_on(&e, &bad, "/bad").await;
        let rs = curl_on(&s, &bad, "/bad").await;
        assert_eq!(re.resp.status, 503, "envoy: {re:?}");
        assert_same_response("bad header", &re.resp, &rs.resp);
        let re = curl_on(&e, &[], "/none").await;
        let rs = curl_on(&s, &[], "/none").await;
        assert_eq!(re.resp.status, 503, "envoy: {re:?}");
        assert_same_response("no header", &re.resp, &rs.resp);
        for side in [&e, &s] {
            let admin = side.proxy.admin();
            let name = side.proxy.kind.name();
            assert_eq!(
                admin.stat("cluster.od.original_dst_host_invalid").await,
                Some(1),
                "{name}"
            );
            assert_eq!(
                admin.stat("cluster.od.upstream_rq_total").await,
                Some(1),
                "{name}"
            );
        }
    })
    .await
}

fn original_dst_port_override_config(admin: u16, listen: u16, upstream: u16) -> String {
    original_dst_config(
        admin,
        listen,
        serde_json::json!({ "use_http_header": true, "upstream_port_override": upstream }),
    )
}

/// ORIGINAL_DST with `upstream_port_override`: the destination's address at that port, the
/// host named by the cluster and that address in `/clusters`, as Envoy names it.
#[tokio::test]
async fn original_dst_upstream_port_override() {
    run(async {
        let (e, s) = pair(Up::H1, original_dst_port_override_config).await;
        let target = ["-H", "x-envoy-original-dst-host: 127.0.0.1:1"];
        let re = curl_on(&e, &target, "/od").await;
        let rs = curl_on(&s, &target, "/od").await;
        assert_eq!(re.resp.status, 200, "envoy: {re:?}");
        assert_eq!(rs.resp.status, 200, "skiff: {rs:?}");
        for side in [&e, &s] {
            assert_eq!(side.rec.requests().len(), 1, "{}", side.proxy.kind.name());
            let clusters = side.proxy.admin().get("/clusters").await.text();
            let host = format!("od::127.0.0.1:{}::", side.upstream_port);
            let lines: Vec<&str> = clusters
                .lines()
                .filter_map(|l| l.strip_prefix(host.as_str()))
                .filter(|l| l.starts_with("cx_total") || l.starts_with("hostname"))
                .collect();
            assert_eq!(
                lines,
                [
                    "cx_total::1".to_string(),
                    format!("hostname::od127.0.0.1:{}", side.upstream_port)
                ],
                "{}:\n{clusters}",
                side.proxy.kind.name()
            );
        }
    })
    .await
}
