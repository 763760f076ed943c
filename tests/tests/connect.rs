//! CONNECT side by side with Envoy 1.40: `connect_matcher` routes and the `CONNECT` upgrade type,
//! over HTTP/1.1 and HTTP/2. Forwarded, the upstream answers the CONNECT with a 200 and then
//! echoes the tunnel's bytes; terminated (`connect_config`), the proxy answers and a plain TCP
//! echo gets the payload. Each case compares the client's response, the bytes back through the
//! tunnel and the request head the upstream received.

use std::time::Duration;

use serde_json::json;
use skiff_tests::client;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::side_by_side::assert_same_response;
use skiff_tests::upstream::{TcpMode, TcpUpstream};
use skiff_tests::{free_port, run};

/// One proxy and its CONNECT upstream.
struct Side {
    proxy: ProxyProcess,
    port: u16,
    upstream: TcpUpstream,
    echo: TcpUpstream,
}

async fn start(kind: Kind) -> Side {
    let upstream = TcpUpstream::start(TcpMode::ReplyThenEcho(
        b"HTTP/1.1 200 OK\r\nx-tunnel: open\r\n\r\n".to_vec(),
    ))
    .await;
    let echo = TcpUpstream::start(TcpMode::Echo).await;
    let (admin, port) = (free_port(), free_port());
    let mut m = hcm(
        "connect",
        vec![json!({ "name": "all", "domains": ["*"], "routes": [
            { "match": { "connect_matcher": {}, "headers": [ { "name": "x-deny", "present_match": true } ] },
              "route": { "cluster": "tunnel",
                "upgrade_configs": [ { "upgrade_type": "CONNECT", "enabled": false } ] } },
            { "match": { "connect_matcher": {}, "headers": [ { "name": "x-original-dst", "present_match": true } ] },
              "route": { "cluster": "original_dst",
                "upgrade_configs": [ { "upgrade_type": "CONNECT", "connect_config": {} } ] } },
            { "match": { "connect_matcher": {}, "headers": [ { "name": "x-terminate", "present_match": true } ] },
              "route": { "cluster": "echo",
                "upgrade_configs": [ { "upgrade_type": "CONNECT", "connect_config": {} } ] } },
            { "match": { "connect_matcher": {} }, "route": { "cluster": "tunnel" } },
            { "match": { "prefix": "/post" },
              "route": { "cluster": "echo",
                "upgrade_configs": [ { "upgrade_type": "CONNECT", "connect_config": { "allow_post": true } } ] } },
            { "match": { "prefix": "/" }, "direct_response": { "status": 200 } }
        ] })],
    );
    m["typed_config"]["upgrade_configs"] = json!([{ "upgrade_type": "CONNECT" }]);
    m["typed_config"]["access_log"] = json!([]);
    let v = bootstrap(
        admin,
        vec![listener("l", "127.0.0.1", port, m)],
        vec![
            cluster("tunnel", &[upstream.port()]),
            cluster("echo", &[echo.port()]),
            // The CONNECT's target is the host (Envoy's terminate_http1_connect example).
            json!({ "name": "original_dst", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                "connect_timeout": "1s",
                "original_dst_lb_config": { "use_http_header": true, "http_header_name": ":authority" } }),
        ],
    );
    let proxy = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
    Side {
        proxy,
        port,
        upstream,
        echo,
    }
}

/// The request head an upstream received, with the per-request id taken out.
fn upstream_head(received: &[u8]) -> Vec<String> {
    let end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(received.len());
    let mut lines: Vec<String> = String::from_utf8_lossy(&received[..end])
        .split("\r\n")
        .map(|l| l.to_ascii_lowercase())
        .filter(|l| !l.starts_with("x-request-id:"))
        .collect();
    lines[1..].sort();
    lines
}

use client::ConnectSeen as Seen;

async fn connect_h1(side: &Side, target: &str, extra: &str) -> Seen {
    client::connect_h1(side.port, target, extra, b"").await
}

/// [`connect_h1`] with `early` bytes for the tunnel sent with the CONNECT, before its reply.
async fn connect_h1_early(side: &Side, target: &str, extra: &str, early: &[u8]) -> Seen {
    client::connect_h1(side.port, target, extra, early).await
}

async fn connect_h2(side: &Side, extra: &[(&str, &str)]) -> (u16, Vec<u8>) {
    client::connect_h2(side.port, "example.com:443", extra).await
}

#[tokio::test]
async fn connect_side_by_side() {
    run(async {
        let e = start(Kind::Envoy).await;
        let s = start(Kind::under_test()).await;

        // Forwarded: the upstream's 200 opens the tunnel.
        let (re, rs) = (
            connect_h1(&e, "example.com:443", "").await,
            connect_h1(&s, "example.com:443", "").await,
        );
        assert_eq!(re.resp.status, 200, "envoy: {re:?}");
        assert_same_response("CONNECT forwarded", &re.resp, &rs.resp);
        assert_eq!(re.echo, b"through the tunnel", "envoy: {re:?}");
        assert_eq!(rs.echo, re.echo, "skiff: {rs:?}");
        assert_eq!(rs.closed, re.closed, "closed: envoy {re:?}, skiff {rs:?}");
        let (ue, us) = (
            e.upstream.wait_finished(1, Duration::from_secs(3)).await,
            s.upstream.wait_finished(1, Duration::from_secs(3)).await,
        );
        assert_eq!(
            upstream_head(&ue[0].received),
            upstream_head(&us[0].received),
            "the CONNECT the upstream received"
        );

        // The route turns CONNECT off: Envoy's 403, nothing upstream.
        let (re, rs) = (
            connect_h1(&e, "example.com:443", "x-deny: 1\r\n").await,
            connect_h1(&s, "example.com:443", "x-deny: 1\r\n").await,
        );
        assert_eq!(re.resp.status, 403, "envoy: {re:?}");
        assert_same_response("CONNECT refused by the route", &re.resp, &rs.resp);
        assert_eq!(rs.closed, re.closed, "closed: envoy {re:?}, skiff {rs:?}");
        assert_eq!(e.upstream.accepted(), 1);
        assert_eq!(s.upstream.accepted(), 1);

        // A GET matches no connect_matcher route, and a CONNECT no prefix route.
        for side in [&e, &s] {
            let addr = format!("127.0.0.1:{}", side.port);
            let r = client::http1_once(&addr, client::get("/x", "example.com"))
                .await
                .expect("a response");
            assert_eq!(r.status, 200, "{}", side.proxy.kind.name());
        }

        // HTTP/2: the stream is the tunnel.
        let (he, hs) = (connect_h2(&e, &[]).await, connect_h2(&s, &[]).await);
        assert_eq!(he, (200, b"through the stream".to_vec()), "envoy");
        assert_eq!(hs, he, "skiff");
        let (ue, us) = (
            e.upstream.wait_finished(2, Duration::from_secs(3)).await,
            s.upstream.wait_finished(2, Duration::from_secs(3)).await,
        );
        assert_eq!(
            upstream_head(&ue[1].received),
            upstream_head(&us[1].received),
            "the CONNECT from an HTTP/2 client the upstream received"
        );

        // Terminated at the proxy: its own 200, and the payload alone reaches the upstream.
        let (re, rs) = (
            connect_h1(&e, "example.com:443", "x-terminate: 1\r\n").await,
            connect_h1(&s, "example.com:443", "x-terminate: 1\r\n").await,
        );
        assert_eq!(re.resp.status, 200, "envoy: {re:?}");
        assert_same_response("CONNECT terminated", &re.resp, &rs.resp);
        assert_eq!(re.echo, b"through the tunnel", "envoy: {re:?}");
        assert_eq!(rs.echo, re.echo, "skiff: {rs:?}");
        assert_eq!(rs.closed, re.closed, "closed: envoy {re:?}, skiff {rs:?}");
        let (he, hs) = (
            connect_h2(&e, &[("x-terminate", "1")]).await,
            connect_h2(&s, &[("x-terminate", "1")]).await,
        );
        assert_eq!(he, (200, b"through the stream".to_vec()), "envoy");
        assert_eq!(hs, he, "skiff");
        // The target names the host (an ORIGINAL_DST cluster reading `:authority`).
        for side in [&e, &s] {
            let target = format!("127.0.0.1:{}", side.echo.port());
            let seen = connect_h1(side, &target, "x-original-dst: 1\r\n").await;
            assert_eq!(
                seen.resp.status,
                200,
                "{}: {seen:?}",
                side.proxy.kind.name()
            );
            assert_eq!(
                seen.echo,
                b"through the tunnel",
                "{}",
                side.proxy.kind.name()
            );
        }
        for side in [&e, &s] {
            let got = side.echo.wait_finished(3, Duration::from_secs(3)).await;
            let received: Vec<&[u8]> = got.iter().map(|r| r.received.as_slice()).collect();
            assert_eq!(
                received,
                [
                    &b"through the tunnel"[..],
                    &b"through the stream"[..],
                    &b"through the tunnel"[..]
                ],
                "{}",
                side.proxy.kind.name()
            );
        }

        // Bytes sent with the CONNECT, before its reply, go through the tunnel first: forwarded
        // (after the upstream's 200) and terminated.
        for side in [&e, &s] {
            let echo_target = format!("127.0.0.1:{}", side.echo.port());
            for (target, extra) in [
                ("example.com:443", ""),
                (echo_target.as_str(), "x-original-dst: 1\r\n"),
            ] {
                let seen = connect_h1_early(side, target, extra, b"early;").await;
                assert_eq!(
                    seen.resp.status,
                    200,
                    "{}: {seen:?}",
                    side.proxy.kind.name()
                );
                assert_eq!(
                    String::from_utf8_lossy(&seen.echo),
                    "early;through the tunnel",
                    "{} {extra:?}",
                    side.proxy.kind.name()
                );
            }
        }

        for side in [&e, &s] {
            let stats = side.proxy.admin().stats().await;
            assert_eq!(
                stats
                    .get("http.connect.downstream_rq_ws_on_non_ws_route")
                    .map(String::as_str),
                Some("1"),
                "{}",
                side.proxy.kind.name()
            );
        }
    })
    .await
}

/// `connect_config.allow_post`: a POST to the route is terminated as a CONNECT is, over
/// HTTP/2 and HTTP/1.1: the proxy answers 200 at once, the body alone reaches the TCP
/// upstream, and what comes back is the response's body until the upstream closes.
#[tokio::test]
async fn post_terminated_as_connect_side_by_side() {
    run(async {
        let e = start(Kind::Envoy).await;
        let s = start(Kind::under_test()).await;
        let mut seen = Vec::new();
        for side in [&e, &s] {
            let url = format!("http://127.0.0.1:{}/post", side.port);
            let mut got = Vec::new();
            for h2 in [true, false] {
                let mut args = vec!["-X", "POST", "--data-binary", "through a POST"];
                if h2 {
                    args.push("--http2-prior-knowledge");
                }
                args.push(&url);
                let r = client::curl(&args).await;
                let mut names: Vec<String> = r
                    .resp
                    .headers
                    .iter()
                    .map(|(n, _)| n.to_string())
                    .filter(|n| n != "date" && n != "x-envoy-upstream-service-time")
                    .collect();
                names.sort();
                got.push(format!(
                    "h2 {h2}: {} {:?} {names:?}",
                    r.resp.status,
                    String::from_utf8_lossy(&r.resp.body)
                ));
            }
            let finished = side.echo.wait_finished(2, Duration::from_secs(3)).await;
            let received: Vec<String> = finished
                .iter()
                .map(|r| String::from_utf8_lossy(&r.received).into_owned())
                .collect();
            got.push(format!("upstream received {received:?}"));
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        assert!(
            seen[0][0].starts_with("h2 true: 200 \"through a POST\""),
            "{:?}",
            seen[0]
        );
    })
    .await
}
