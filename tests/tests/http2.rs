//! HTTP/2 (h2c prior knowledge) downstream, and HTTP/2 upstream clusters.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use skiff_tests::client::{self, curl, h2load, nghttp, H2Client};
use skiff_tests::config::{self, bootstrap, h2_cluster, hcm, listener, route, to_yaml, vhost};
use skiff_tests::proxy::start_under_test;
use skiff_tests::upstream::{EchoOptions, H2Options, H2Upstream};
use skiff_tests::{free_port, is_uuid, run, HttpFixture};

#[tokio::test]
async fn auto_codec_serves_h2c_and_http1_on_one_port() {
    run(async {
        let f = HttpFixture::start().await;
        let c = H2Client::connect(&f.addr()).await.expect("h2c handshake");
        let r = c
            .send(client::h2_request(
                "GET",
                "h2.example.com",
                "/h2",
                Bytes::new(),
            ))
            .await
            .expect("h2 request");
        assert_eq!(r.status, 200);
        assert_eq!(r.version, http::Version::HTTP_2);
        assert_eq!(r.header("x-upstream"), Some("u1"));
        assert!(r.header("connection").is_none() && r.header("keep-alive").is_none());
        let up = f.up.rec.last();
        assert_eq!(up.version, http::Version::HTTP_11, "h1 upstream by default");
        assert_eq!(
            up.header("host"),
            Some("h2.example.com"),
            ":authority becomes host"
        );
        assert_eq!(up.header("x-forwarded-proto"), Some("http"));
        assert!(is_uuid(up.header("x-request-id").unwrap_or_default()));
        let h1 = curl(&[&f.url("/h1")]).await;
        assert_eq!(h1.resp.status, 200);
        assert_eq!(h1.resp.version, http::Version::HTTP_11);
        let stats = f.proxy.admin();
        assert_eq!(
            stats
                .counter("http.ingress_http.downstream_cx_http2_total")
                .await,
            1
        );
        assert_eq!(
            stats
                .counter("http.ingress_http.downstream_cx_http1_total")
                .await,
            1
        );
        assert_eq!(
            stats
                .counter("http.ingress_http.downstream_rq_http2_total")
                .await,
            1
        );
        assert_eq!(
            stats
                .counter("http.ingress_http.downstream_rq_http1_total")
                .await,
            1
        );
    })
    .await
}

#[tokio::test]
async fn curl_prior_knowledge() {
    run(async {
        let f = HttpFixture::start().await;
        let r = curl(&["--http2-prior-knowledge", &f.url("/curl-h2")]).await;
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.resp.status, 200);
        assert_eq!(r.resp.version, http::Version::HTTP_2);
        assert!(r.resp.text().starts_with("GET /curl-h2 HTTP/1.1\n"));
    })
    .await
}

#[tokio::test]
async fn nghttp_client() {
    run(async {
        let f = HttpFixture::start().await;
        let r = nghttp(&["-H", "x-from: nghttp", &f.url("/ng?x=1")]).await;
        assert_eq!(r.code, 0, "{}", r.output);
        assert_eq!(r.status, Some(200), "{}", r.output);
        assert!(
            r.headers.iter().any(|(k, v)| k == "server" && v == "envoy"),
            "{}",
            r.output
        );
        let up = f.up.rec.last();
        assert_eq!(up.path, "/ng?x=1");
        assert_eq!(up.header("x-from"), Some("nghttp"));
    })
    .await
}

#[tokio::test]
async fn h2load_many_streams() {
    run(async {
        let f = HttpFixture::start().await;
        let url = f.url("/load");
        let r = h2load(&["-n", "200", "-c", "2", "-m", "10", &url]).await;
        assert_eq!(r.succeeded, 200, "{}", r.output);
        assert_eq!(r.status_2xx, 200, "{}", r.output);
        assert_eq!(r.failed + r.errored, 0, "{}", r.output);
        assert_eq!(f.up.rec.requests().len(), 200);
    })
    .await
}

#[tokio::test]
async fn concurrent_streams_on_one_connection() {
    run(async {
        let mut opts = EchoOptions::named("u1");
        opts.delay = Duration::from_millis(200);
        let f = HttpFixture::with(opts, |_| {}, &[]).await;
        let c = H2Client::connect(&f.addr()).await.expect("h2c handshake");
        let mut set = tokio::task::JoinSet::new();
        for i in 0..10 {
            let c = c.clone();
            set.spawn(async move {
                c.send(client::h2_request(
                    "GET",
                    "a",
                    &format!("/s/{i}"),
                    Bytes::new(),
                ))
                .await
            });
        }
        let started = std::time::Instant::now();
        while let Some(r) = set.join_next().await {
            let r = r.expect("task").expect("h2 request");
            assert_eq!(r.status, 200);
        }
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "streams were not concurrent: {:?}",
            started.elapsed()
        );
        let admin = f.proxy.admin();
        assert_eq!(
            admin
                .counter(&format!(
                    "listener.127.0.0.1_{}.downstream_cx_total",
                    f.port
                ))
                .await,
            1
        );
        assert_eq!(f.up.rec.requests().len(), 10);
    })
    .await
}

#[tokio::test]
async fn h2_post_body_and_status_codes() {
    run(async {
        let f = HttpFixture::start().await;
        let c = H2Client::connect(&f.addr()).await.expect("h2c handshake");
        let body = vec![b'x'; 100_000];
        let r = c
            .send(client::h2_request("POST", "a", "/status/201", body.clone()))
            .await
            .expect("h2 request");
        assert_eq!(r.status, 201);
        assert_eq!(f.up.rec.last().body.len(), body.len());
        let r = c
            .send(client::h2_request("GET", "a", "/status/503", Bytes::new()))
            .await
            .expect("h2 request");
        assert_eq!(r.status, 503);
    })
    .await
}

#[tokio::test]
async fn http2_codec_only() {
    run(async {
        let f = HttpFixture::with(
            EchoOptions::named("u1"),
            |v| {
                config::hcm_config(v)["codec_type"] = json!("HTTP2");
            },
            &[],
        )
        .await;
        let c = H2Client::connect(&f.addr()).await.expect("h2c handshake");
        let r = c
            .send(client::h2_request("GET", "a", "/only-h2", Bytes::new()))
            .await
            .expect("h2 request");
        assert_eq!(r.status, 200);
        let h1 = client::http1_once(&f.addr(), client::get("/h1", "a")).await;
        assert!(
            h1.as_ref().map(|r| r.status != 200).unwrap_or(true),
            "an HTTP2-only listener served HTTP/1.1: {h1:?}"
        );
    })
    .await
}

fn h2_upstream_config(admin: u16, listen: u16, upstream: u16, mcs: Option<u32>) -> String {
    to_yaml(&bootstrap(
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
        vec![h2_cluster("backend", &[upstream], mcs)],
    ))
}

#[tokio::test]
async fn h1_downstream_to_h2_upstream() {
    run(async {
        let up = H2Upstream::start("h2u").await;
        let (admin, listen) = (free_port(), free_port());
        let p = start_under_test(&h2_upstream_config(admin, listen, up.port(), None), &[]).await;
        let r = curl(&[
            "-H",
            "Host: up.example.com",
            &format!("http://127.0.0.1:{listen}/x?y=1"),
        ])
        .await;
        assert_eq!(r.resp.status, 200, "{r:?}");
        assert_eq!(r.resp.header("x-upstream"), Some("h2u"));
        let got = up.rec.last();
        assert_eq!(got.version, http::Version::HTTP_2);
        assert_eq!(got.authority.as_deref(), Some("up.example.com"));
        assert_eq!(got.path, "/x?y=1");
        assert!(!got.has("host") && !got.has("connection"), "{got:#?}");
        assert_eq!(got.header("x-envoy-expected-rq-timeout-ms"), Some("15000"));
        assert_eq!(
            p.admin()
                .counter("cluster.backend.upstream_cx_http2_total")
                .await,
            1
        );
    })
    .await
}

#[tokio::test]
async fn h2c_downstream_to_h2_upstream() {
    run(async {
        let up = H2Upstream::start("h2u").await;
        let (admin, listen) = (free_port(), free_port());
        let _p = start_under_test(&h2_upstream_config(admin, listen, up.port(), None), &[]).await;
        let c = H2Client::connect(&format!("127.0.0.1:{listen}"))
            .await
            .expect("h2c");
        let r = c
            .send(client::h2_request("PUT", "svc:81", "/put", "payload"))
            .await
            .expect("h2 request");
        assert_eq!(r.status, 200);
        let got = up.rec.last();
        assert_eq!(got.method, "PUT");
        assert_eq!(got.authority.as_deref(), Some("svc:81"));
        assert_eq!(got.body, Bytes::from_static(b"payload"));
    })
    .await
}

#[tokio::test]
async fn h2_upstream_with_delayed_responses_multiplexes() {
    run(async {
        let mut o = H2Options::named("h2u");
        o.delay = Duration::from_millis(300);
        let up = H2Upstream::with_options(o).await;
        let (admin, listen) = (free_port(), free_port());
        let p = start_under_test(
            &h2_upstream_config(admin, listen, up.port(), None),
            &["--concurrency", "1"],
        )
        .await;
        let c = H2Client::connect(&format!("127.0.0.1:{listen}"))
            .await
            .expect("h2c");
        let mut set = tokio::task::JoinSet::new();
        for i in 0..5 {
            let c = c.clone();
            set.spawn(async move {
                c.send(client::h2_request(
                    "GET",
                    "a",
                    &format!("/m/{i}"),
                    Bytes::new(),
                ))
                .await
            });
        }
        while let Some(r) = set.join_next().await {
            assert_eq!(r.expect("task").expect("request").status, 200);
        }
        assert_eq!(
            up.rec.connections(),
            1,
            "five streams shared one upstream connection"
        );
        assert!(up.max_concurrent_seen() >= 2, "streams were multiplexed");
        assert_eq!(
            p.admin().counter("cluster.backend.upstream_rq_total").await,
            5
        );
    })
    .await
}

/// A broken HTTP/2 connection is closed (GOAWAY or close), never a crash: the proxy keeps serving.
#[tokio::test]
async fn malformed_h2_frames_close_the_connection() {
    run(async {
        let f = HttpFixture::start().await;
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let cases: [(&str, Vec<u8>); 3] = [
            // A SETTINGS frame with a length that is not a multiple of 6.
            (
                "bad settings length",
                [&preface[..], &[0, 0, 5, 4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5]].concat(),
            ),
            // HEADERS on stream 0.
            (
                "headers on stream 0",
                [
                    &preface[..],
                    &[0, 0, 4, 4, 0, 0, 0, 0, 0],
                    &[0, 0, 1, 5, 0, 0, 0, 0, 0, 0x82],
                ]
                .concat(),
            ),
            // Not a frame at all after the preface.
            (
                "garbage after preface",
                [&preface[..], &b"this is not a frame at all, sorry"[..]].concat(),
            ),
        ];
        for (name, bytes) in cases {
            let reply = client::raw_exchange(&f.addr(), &bytes, Duration::from_secs(5)).await;
            assert!(reply.closed, "{name}: the connection must be closed");
            let ok = curl(&[&f.url("/after")]).await;
            assert_eq!(ok.resp.status, 200, "{name}: the proxy stopped serving");
            let h2 = curl(&["--http2-prior-knowledge", &f.url("/after-h2")]).await;
            assert_eq!(h2.resp.status, 200, "{name}: h2 stopped working");
        }
        assert!(f
            .up
            .rec
            .requests()
            .iter()
            .all(|r| r.path.starts_with("/after")));
    })
    .await
}
