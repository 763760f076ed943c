//! Default header handling (reference §4 and §7): what the upstream and the client see.

use bytes::Bytes;
use serde_json::json;
use skiff_tests::client::{self, curl, H2Client};
use skiff_tests::config;
use skiff_tests::upstream::EchoOptions;
use skiff_tests::{is_uuid_v4, run, HttpFixture};

/// Reference §4 A: `curl localhost/hello` through the minimal config.
#[tokio::test]
async fn minimal_request_headers_upstream() {
    run(async {
        let f = HttpFixture::start().await;
        let r = curl(&["-H", "Host: localhost:10000", &f.url("/hello")]).await;
        assert_eq!(r.resp.status, 200);
        let up = f.up.rec.last();
        assert_eq!(up.method, "GET");
        assert_eq!(up.path, "/hello");
        assert_eq!(up.version, http::Version::HTTP_11);
        let mut names = up.header_names();
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
            ],
            "{up:#?}"
        );
        assert_eq!(up.header("host"), Some("localhost:10000"));
        assert!(up
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("curl/")));
        assert_eq!(up.header("accept"), Some("*/*"));
        assert_eq!(up.header("x-forwarded-proto"), Some("http"));
        assert_eq!(up.header("x-envoy-expected-rq-timeout-ms"), Some("15000"));
        let id = up.header("x-request-id").unwrap_or_default();
        assert!(is_uuid_v4(id), "x-request-id {id:?} is a UUIDv4");
        assert!(!up.has("x-forwarded-for") && !up.has("via") && !up.has("x-envoy-internal"));
    })
    .await
}

/// Reference §4 A: the response side.
#[tokio::test]
async fn minimal_response_headers_downstream() {
    run(async {
        let f = HttpFixture::start().await;
        let r = curl(&[&f.url("/hello")]).await;
        let h = &r.resp;
        assert_eq!(h.status, 200);
        assert_eq!(
            h.header("server"),
            Some("envoy"),
            "upstream Server is overwritten"
        );
        assert!(h.header("date").is_some());
        assert_eq!(h.header("content-type"), Some("text/plain"));
        assert_eq!(h.header("x-upstream"), Some("u1"));
        assert_eq!(
            h.header("content-length")
                .and_then(|v| v.parse::<usize>().ok()),
            Some(h.body.len())
        );
        let svc = h
            .header("x-envoy-upstream-service-time")
            .expect("x-envoy-upstream-service-time is added");
        assert!(
            svc.parse::<u64>().is_ok(),
            "service time {svc:?} is a number"
        );
        assert_eq!(
            h.header("connection"),
            None,
            "upstream connection header removed"
        );
        assert_eq!(
            h.header("keep-alive"),
            None,
            "upstream keep-alive header removed"
        );
        assert_eq!(h.header("x-request-id"), None, "not echoed by default");
        let mut names: Vec<&str> = h.headers.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "content-length",
                "content-type",
                "date",
                "server",
                "x-envoy-upstream-service-time",
                "x-upstream"
            ]
        );
    })
    .await
}

/// Reference §4 A2.
#[tokio::test]
async fn hop_by_hop_and_untrusted_headers_are_removed() {
    run(async {
        let f = HttpFixture::start().await;
        let mut args = Vec::new();
        for h in [
            "Connection: keep-alive, x-foo",
            "x-foo: 1",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "TE: trailers",
            "Upgrade: foo",
            "x-envoy-upstream-rq-timeout-ms: 3000",
            "x-envoy-retry-on: 5xx",
            "x-envoy-retry-grpc-on: cancelled",
            "x-envoy-max-retries: 3",
            "x-envoy-upstream-rq-per-try-timeout-ms: 100",
            "x-envoy-upstream-alt-stat-name: alt",
            "x-envoy-ip-tags: t",
            "x-envoy-force-trace: true",
            "x-envoy-hedge-on-per-try-timeout: true",
            "x-envoy-internal: true",
        ] {
            args.push("-H");
            args.push(h);
        }
        let url = f.url("/a2");
        args.push(&url);
        let r = curl(&args).await;
        assert_eq!(r.resp.status, 200);
        let up = f.up.rec.last();
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
            assert!(
                !up.has(gone),
                "`{gone}` must not reach the upstream: {up:#?}"
            );
        }
        assert_eq!(up.header("te"), Some("trailers"));
        assert_eq!(
            up.header("x-envoy-expected-rq-timeout-ms"),
            Some("15000"),
            "the client's timeout header is stripped and ignored"
        );
    })
    .await
}

#[tokio::test]
async fn te_other_than_trailers_is_removed() {
    run(async {
        let f = HttpFixture::start().await;
        curl(&["-H", "TE: gzip, trailers", &f.url("/te1")]).await;
        assert_eq!(f.up.rec.last().header("te"), Some("trailers"));
        curl(&["-H", "TE: gzip", &f.url("/te2")]).await;
        assert_eq!(f.up.rec.last().header("te"), None);
    })
    .await
}

/// Reference §4 A2 and §7.3: what is kept with use_remote_address=false.
#[tokio::test]
async fn trusted_and_unknown_headers_are_kept() {
    run(async {
        let f = HttpFixture::start().await;
        let mut args = Vec::new();
        for h in [
            "x-forwarded-for: 1.2.3.4",
            "x-request-id: abc",
            "x-forwarded-proto: https",
            "x-envoy-foo: kept",
            "x-envoy-decorator-operation: op",
            "x-envoy-downstream-service-cluster: dsc",
            "x-envoy-original-path: /spoofed",
            "x_under: 1",
        ] {
            args.push("-H");
            args.push(h);
        }
        let url = f.url("/keep");
        args.push(&url);
        curl(&args).await;
        let up = f.up.rec.last();
        for (k, v) in [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "abc"),
            ("x-forwarded-proto", "https"),
            ("x-envoy-foo", "kept"),
            ("x-envoy-decorator-operation", "op"),
            ("x-envoy-downstream-service-cluster", "dsc"),
            ("x-envoy-original-path", "/spoofed"),
            ("x_under", "1"),
        ] {
            assert_eq!(up.header(k), Some(v), "`{k}` in {up:#?}");
        }
        assert_eq!(
            up.header_all("x-forwarded-for").len(),
            1,
            "nothing appended to XFF"
        );
    })
    .await
}

#[tokio::test]
async fn generate_request_id_false() {
    run(async {
        let f = HttpFixture::with(
            EchoOptions::named("u1"),
            |v| {
                config::hcm_config(v)["generate_request_id"] = json!(false);
            },
            &[],
        )
        .await;
        curl(&[&f.url("/noid")]).await;
        assert!(!f.up.rec.last().has("x-request-id"));
        curl(&["-H", "x-request-id: mine", &f.url("/id")]).await;
        assert_eq!(f.up.rec.last().header("x-request-id"), Some("mine"));
    })
    .await
}

#[tokio::test]
async fn request_ids_are_unique() {
    run(async {
        let f = HttpFixture::start().await;
        let mut c = client::Http1Client::connect(&f.addr())
            .await
            .expect("connect");
        for _ in 0..5 {
            c.send(client::get("/id", "a")).await.expect("request");
        }
        let mut ids: Vec<String> =
            f.up.rec
                .requests()
                .iter()
                .map(|r| r.header("x-request-id").unwrap_or_default().to_string())
                .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 5, "five distinct ids: {ids:?}");
    })
    .await
}

#[tokio::test]
async fn server_name_and_via() {
    run(async {
        let f = HttpFixture::with(
            EchoOptions::named("u1"),
            |v| {
                let h = config::hcm_config(v);
                h["server_name"] = json!("my-proxy");
                h["via"] = json!("sidecar-proxy");
            },
            &[],
        )
        .await;
        let r = curl(&[&f.url("/via")]).await;
        assert_eq!(r.resp.header("server"), Some("my-proxy"));
        assert_eq!(r.resp.header("via"), Some("sidecar-proxy"));
        assert_eq!(f.up.rec.last().header("via"), Some("sidecar-proxy"));
    })
    .await
}

#[tokio::test]
async fn server_header_added_when_upstream_sends_none() {
    run(async {
        let mut o = EchoOptions::named("u1");
        o.server = String::new();
        let f = HttpFixture::with(o, |_| {}, &[]).await;
        let r = curl(&[&f.url("/s")]).await;
        assert_eq!(r.resp.header("server"), Some("envoy"));
    })
    .await
}

#[tokio::test]
async fn response_headers_from_upstream_pass_through() {
    run(async {
        let mut o = EchoOptions::named("u1");
        o.extra_headers = vec![
            ("x-multi".into(), "one".into()),
            ("x-multi".into(), "two".into()),
            ("set-cookie".into(), "a=1".into()),
            ("set-cookie".into(), "b=2".into()),
            ("cache-control".into(), "no-store".into()),
        ];
        let f = HttpFixture::with(o, |_| {}, &[]).await;
        let r = curl(&[&f.url("/rh")]).await;
        assert_eq!(r.resp.header_all("x-multi"), ["one", "two"]);
        assert_eq!(r.resp.header_all("set-cookie"), ["a=1", "b=2"]);
        assert_eq!(r.resp.header("cache-control"), Some("no-store"));
    })
    .await
}

#[tokio::test]
async fn h2_request_headers_upstream() {
    run(async {
        let f = HttpFixture::start().await;
        let c = H2Client::connect(&f.addr()).await.expect("h2c");
        let mut req = client::h2_request("GET", "svc.example.com", "/h2h", Bytes::new());
        req.headers_mut()
            .insert("te", http::HeaderValue::from_static("trailers"));
        req.headers_mut()
            .insert("x-app", http::HeaderValue::from_static("1"));
        let r = c.send(req).await.expect("h2 request");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("server"), Some("envoy"));
        let up = f.up.rec.last();
        let mut names = up.header_names();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "host",
                "te",
                "x-app",
                "x-envoy-expected-rq-timeout-ms",
                "x-forwarded-proto",
                "x-request-id"
            ],
            "{up:#?}"
        );
        assert_eq!(up.header("host"), Some("svc.example.com"));
    })
    .await
}
