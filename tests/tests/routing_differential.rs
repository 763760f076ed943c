//! Route matching, route actions and upgrades side by side with Envoy 1.40: one bootstrap with
//! many virtual hosts and routes, one pair of proxies per topic, and many small cases through
//! both. Each case compares what the client got and what the upstream received.
//!
//! Upstreams: an HTTP/1.1 echo (cluster `echo`, recording every request) and a websocket
//! upstream (cluster `ws`, see `upstream/ws.rs`).

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{self, split_responses, Resp};
use skiff_tests::config::{bootstrap, cluster, listener, router, to_yaml, HCM_TYPE};
use skiff_tests::diff::{self, upstream_view};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::side_by_side::assert_same_response;
use skiff_tests::upstream::ws::{client_frame, server_frame, GREETING};
use skiff_tests::upstream::{EchoUpstream, Recorder, WsUpstream};
use skiff_tests::{free_port, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One proxy with its upstreams.
struct Side {
    proxy: ProxyProcess,
    port: u16,
    echo: Recorder,
    ws: Recorder,
    _ups: (EchoUpstream, WsUpstream),
}

impl Side {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Envoy and the proxy under test with the bootstrap `hcm_config` (the HCM's typed_config)
/// over the clusters `echo` and `ws`.
async fn pair(hcm_config: Value) -> (Side, Side) {
    let mut sides = Vec::new();
    for kind in [Kind::Envoy, Kind::under_test()] {
        let echo = EchoUpstream::start("echo").await;
        let ws = WsUpstream::start().await;
        let (admin, port) = (free_port(), free_port());
        let filter = json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm_config,
        });
        let v = bootstrap(
            admin,
            vec![listener("routing", "127.0.0.1", port, filter)],
            vec![cluster("echo", &[echo.port()]), cluster("ws", &[ws.port()])],
        );
        let proxy = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
        sides.push(Side {
            proxy,
            port,
            echo: echo.rec.clone(),
            ws: ws.rec.clone(),
            _ups: (echo, ws),
        });
    }
    let s = sides.pop().expect("two sides");
    let e = sides.pop().expect("two sides");
    (e, s)
}

/// An HCM typed_config with `virtual_hosts` and `extra` fields merged in.
fn hcm_with(virtual_hosts: Value, extra: Value) -> Value {
    let mut v = json!({
        "@type": HCM_TYPE,
        "stat_prefix": "routing",
        "route_config": { "name": "routes", "virtual_hosts": virtual_hosts },
        "http_filters": [ router() ],
    });
    if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in x {
            o.insert(k.clone(), val.clone());
        }
    }
    v
}

/// Asserts both upstreams saw the same requests (names, values, paths, bodies).
#[track_caller]
fn same_upstream(what: &str, e: &Recorder, s: &Recorder) {
    let (e, s) = (e.requests(), s.requests());
    assert_eq!(
        e.len(),
        s.len(),
        "{what}: upstream request counts differ\nenvoy: {e:#?}\nskiff: {s:#?}"
    );
    for (a, b) in e.iter().zip(s.iter()) {
        let d = diff::upstream_differences(&upstream_view(a), &upstream_view(b));
        assert!(
            d.is_empty(),
            "{what}: upstream requests differ:\n  {}\nenvoy: {a:#?}\nskiff: {b:#?}",
            d.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Upgrades (websocket and other types)
// ---------------------------------------------------------------------------------------------

fn upgrade_config() -> Value {
    hcm_with(
        json!([
            { "name": "ws", "domains": ["ws.example.com"], "routes": [
                { "match": { "prefix": "/off" }, "route": { "cluster": "ws",
                    "upgrade_configs": [ { "upgrade_type": "websocket", "enabled": false } ] } },
                { "match": { "prefix": "/custom" }, "route": { "cluster": "ws",
                    "upgrade_configs": [ { "upgrade_type": "Custom-Proto" } ] } },
                { "match": { "prefix": "/" }, "route": { "cluster": "ws" } }
            ] },
            { "name": "partial", "domains": ["partial.example.com"], "routes": [
                { "match": { "prefix": "/only" }, "route": { "cluster": "echo" } }
            ] },
            { "name": "rest", "domains": ["*"], "routes": [
                { "match": { "prefix": "/" }, "route": { "cluster": "echo" } }
            ] }
        ]),
        json!({ "upgrade_configs": [ { "upgrade_type": "websocket" } ] }),
    )
}

/// What a client saw of an upgrade attempt: the response head (and body when not upgraded), the
/// bytes of the exchange after a 101, and whether the connection closed.
#[derive(Debug)]
struct WsSeen {
    resp: Resp,
    transcript: Vec<u8>,
    closed: bool,
}

async fn read_exact_within(s: &mut TcpStream, n: usize, out: &mut Vec<u8>) -> bool {
    let mut buf = vec![0u8; n];
    let ok = tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf))
        .await
        .is_ok_and(|r| r.is_ok());
    if ok {
        out.extend_from_slice(&buf);
    }
    ok
}

/// Sends an upgrade request for `path` on `host` with `Upgrade: kind`; after a 101 exchanges a
/// greeting, two echoed frames and a close handshake.
async fn upgrade_once(side: &Side, host: &str, path: &str, kind: &str) -> WsSeen {
    let mut s = TcpStream::connect(side.addr()).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {kind}\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut data = Vec::new();
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => data.extend_from_slice(&chunk[..n]),
            _ => panic!("no response head: {:?}", String::from_utf8_lossy(&data)),
        }
    };
    let (_, head) = client::parse_http_dump(&data[..head_end]);
    if head.status != 101 {
        let rest = client::read_until_close(&mut s, Duration::from_secs(2)).await;
        data.extend_from_slice(&rest.data);
        let resp = split_responses(&data)
            .into_iter()
            .next()
            .expect("a response");
        return WsSeen {
            resp,
            transcript: Vec::new(),
            closed: rest.closed,
        };
    }
    let mut transcript = data[head_end..].to_vec();
    let mut ok = true;
    let need = GREETING.len().saturating_sub(transcript.len());
    ok &= read_exact_within(&mut s, need, &mut transcript).await;
    for (opcode, payload) in [(1u8, b"ping-1".to_vec()), (2u8, vec![7u8; 300])] {
        s.write_all(&client_frame(opcode, &payload))
            .await
            .expect("write frame");
        let n = server_frame(opcode, &payload).len();
        ok &= read_exact_within(&mut s, n, &mut transcript).await;
    }
    s.write_all(&client_frame(8, b"\x03\xe8"))
        .await
        .expect("write close");
    ok &= read_exact_within(&mut s, 4, &mut transcript).await;
    assert!(ok, "exchange through {path}: {transcript:?}");
    let end = client::read_until_close(&mut s, Duration::from_secs(3)).await;
    transcript.extend_from_slice(&end.data);
    WsSeen {
        resp: head,
        transcript,
        closed: end.closed,
    }
}

#[tokio::test]
async fn upgrades_side_by_side() {
    run(async {
        let (e, s) = pair(upgrade_config()).await;
        let cases: &[(&str, &str, &str, &str, u16)] = &[
            // (what, host, path, upgrade type, Envoy's status)
            (
                "websocket accepted",
                "ws.example.com",
                "/chat",
                "websocket",
                101,
            ),
            (
                "upgrade type is case-insensitive",
                "ws.example.com",
                "/chat",
                "WebSocket",
                101,
            ),
            (
                "route disables websocket",
                "ws.example.com",
                "/off",
                "websocket",
                403,
            ),
            (
                "route enables a type the HCM lacks",
                "ws.example.com",
                "/custom",
                "custom-proto",
                101,
            ),
            (
                "type enabled nowhere",
                "ws.example.com",
                "/chat",
                "custom-proto",
                403,
            ),
            (
                "upstream declines with 403",
                "ws.example.com",
                "/refuse",
                "websocket",
                403,
            ),
            (
                "upstream answers 200",
                "ws.example.com",
                "/plain",
                "websocket",
                200,
            ),
            (
                "no route, HCM takes websocket",
                "partial.example.com",
                "/x",
                "websocket",
                404,
            ),
            (
                "no route, HCM lacks the type",
                "partial.example.com",
                "/x",
                "custom-proto",
                404,
            ),
        ];
        for (what, host, path, kind, want) in cases {
            let re = upgrade_once(&e, host, path, kind).await;
            let rs = upgrade_once(&s, host, path, kind).await;
            assert_eq!(re.resp.status, *want, "{what}: envoy {re:?}");
            assert_same_response(what, &re.resp, &rs.resp);
            assert_eq!(re.transcript, rs.transcript, "{what}: tunnel bytes");
            assert_eq!(
                re.closed, rs.closed,
                "{what}: closed (envoy {re:?}, skiff {rs:?})"
            );
            same_upstream(what, &e.ws, &s.ws);
            same_upstream(what, &e.echo, &s.echo);
        }
        // The refusals are counted alike.
        for side in [&e, &s] {
            let stats = side.proxy.admin().stats().await;
            assert_eq!(
                stats
                    .get("http.routing.downstream_rq_ws_on_non_ws_route")
                    .map(String::as_str),
                Some("2"),
                "{}",
                side.proxy.kind.name()
            );
        }
    })
    .await
}
