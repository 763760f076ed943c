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
use skiff_tests::proxy::{run_cli, write_config, Kind, ProxyProcess};
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
    echo2: Recorder,
    ws: Recorder,
    _ups: (EchoUpstream, EchoUpstream, WsUpstream),
}

impl Side {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Envoy and the proxy under test with the bootstrap `hcm_config` (the HCM's typed_config)
/// over the clusters `echo`, `echo2` and `ws`.
async fn pair(hcm_config: Value) -> (Side, Side) {
    let mut sides = Vec::new();
    for kind in [Kind::Envoy, Kind::under_test()] {
        let echo = EchoUpstream::start("echo").await;
        let echo2 = EchoUpstream::start("echo2").await;
        let ws = WsUpstream::start().await;
        let (admin, port) = (free_port(), free_port());
        let filter = json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm_config,
        });
        let v = bootstrap(
            admin,
            vec![listener("routing", "127.0.0.1", port, filter)],
            vec![
                cluster("echo", &[echo.port()]),
                cluster("echo2", &[echo2.port()]),
                cluster("ws", &[ws.port()]),
                // The echo upstream again, with the protocol options' policies that replace
                // the route's.
                with_http_options(
                    cluster("echo_mirrored", &[echo.port()]),
                    json!({ "request_mirror_policies": [ { "cluster": "echo2" } ] }),
                ),
                with_http_options(
                    cluster("echo_retried", &[echo.port()]),
                    json!({ "retry_policy": { "retry_on": "5xx", "num_retries": 2 } }),
                ),
            ],
        );
        let proxy = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
        sides.push(Side {
            proxy,
            port,
            echo: echo.rec.clone(),
            echo2: echo2.rec.clone(),
            ws: ws.rec.clone(),
            _ups: (echo, echo2, ws),
        });
    }
    let s = sides.pop().expect("two sides");
    let e = sides.pop().expect("two sides");
    (e, s)
}

/// `c` with HTTP/1.1 protocol options that carry `extra`'s fields.
fn with_http_options(mut c: Value, extra: Value) -> Value {
    let mut o = json!({
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": { "http_protocol_options": {} }
    });
    if let (Some(o), Some(x)) = (o.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            o.insert(k.clone(), v.clone());
        }
    }
    c["typed_extension_protocol_options"] =
        json!({ "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": o });
    c
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
    upgrade_config_with(json!({}))
}

/// [`upgrade_config`] with `extra` HCM fields.
fn upgrade_config_with(extra: Value) -> Value {
    let mut fields = json!({ "upgrade_configs": [ { "upgrade_type": "websocket" } ] });
    if let (Some(o), Some(x)) = (fields.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            o.insert(k.clone(), v.clone());
        }
    }
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
        fields,
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

/// What an HTTP/2 client saw of an extended CONNECT: the status, the tunnel's bytes, and how
/// the stream ended.
#[derive(Debug, PartialEq)]
struct H2Seen {
    status: Option<u16>,
    transcript: Vec<u8>,
    ended: String,
}

/// Reads from `body` until `out` holds `n` more bytes (or 3 s pass).
async fn recv_exactly(body: &mut h2::RecvStream, n: usize, out: &mut Vec<u8>) -> bool {
    let want = out.len() + n;
    while out.len() < want {
        match tokio::time::timeout(Duration::from_secs(3), body.data()).await {
            Ok(Some(Ok(chunk))) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                out.extend_from_slice(&chunk);
            }
            _ => return false,
        }
    }
    true
}

/// An extended CONNECT (RFC 8441) for `path` on `host` with `:protocol kind`; after a 200,
/// the same exchange as [`upgrade_once`]: a greeting, two echoed frames and a close handshake.
async fn extended_connect_once(side: &Side, host: &str, path: &str, kind: &str) -> H2Seen {
    let tcp = TcpStream::connect(side.addr()).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    // The server's SETTINGS announce extended CONNECT.
    for _ in 0..100 {
        if client.is_extended_connect_protocol_enabled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        client = client.ready().await.expect("ready");
    }
    assert!(
        client.is_extended_connect_protocol_enabled(),
        "{}: SETTINGS_ENABLE_CONNECT_PROTOCOL",
        side.proxy.kind.name()
    );
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{host}{path}"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .expect("request");
    req.extensions_mut().insert(h2::ext::Protocol::from(kind));
    let (resp, mut send) = client.send_request(req, false).expect("send");
    let resp = match tokio::time::timeout(Duration::from_secs(3), resp).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return H2Seen {
                status: None,
                transcript: Vec::new(),
                ended: format!("reset {:?}", e.reason()),
            }
        }
        Err(_) => panic!("{}: no response to {path}", side.proxy.kind.name()),
    };
    let status = Some(resp.status().as_u16());
    let mut body = resp.into_body();
    let mut transcript = Vec::new();
    if status != Some(200) {
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_secs(2), body.data()).await
        {
            transcript.extend_from_slice(&chunk);
        }
        return H2Seen {
            status,
            transcript,
            ended: format!("end_stream {}", body.is_end_stream()),
        };
    }
    let mut ok = recv_exactly(&mut body, GREETING.len(), &mut transcript).await;
    for (opcode, payload) in [(1u8, b"ping-1".to_vec()), (2u8, vec![7u8; 300])] {
        send.send_data(client_frame(opcode, &payload).into(), false)
            .expect("send frame");
        let n = server_frame(opcode, &payload).len();
        ok &= recv_exactly(&mut body, n, &mut transcript).await;
    }
    send.send_data(client_frame(8, b"\x03\xe8").into(), false)
        .expect("send close");
    ok &= recv_exactly(&mut body, 4, &mut transcript).await;
    assert!(
        ok,
        "{}: exchange through {path}: {transcript:?}",
        side.proxy.kind.name()
    );
    // The upstream closes after its close frame: the stream ends (an empty DATA frame may
    // carry its END_STREAM).
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(3), body.data()).await {
            Ok(None) => break "end_stream".to_string(),
            Ok(Some(Ok(more))) if more.is_empty() => continue,
            Ok(Some(Ok(more))) => break format!("more data {more:?}"),
            Ok(Some(Err(e))) => break format!("reset {:?}", e.reason()),
            Err(_) => break "open".to_string(),
        }
    };
    H2Seen {
        status,
        transcript,
        ended,
    }
}

#[tokio::test]
async fn extended_connect_side_by_side() {
    run(async {
        let (e, s) = pair(upgrade_config_with(
            json!({ "http2_protocol_options": { "allow_connect": true } }),
        ))
        .await;
        let cases: &[(&str, &str, &str, &str, u16)] = &[
            // (what, host, path, :protocol, Envoy's status)
            (
                "websocket accepted",
                "ws.example.com",
                "/chat",
                "websocket",
                200,
            ),
            (
                "route disables websocket",
                "ws.example.com",
                "/off",
                "websocket",
                403,
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
            ("no route", "partial.example.com", "/x", "websocket", 404),
        ];
        for (what, host, path, kind, want) in cases {
            let re = extended_connect_once(&e, host, path, kind).await;
            let rs = extended_connect_once(&s, host, path, kind).await;
            assert_eq!(re.status, Some(*want), "{what}: envoy {re:?}");
            assert_eq!(
                (re.status, &re.transcript),
                (rs.status, &rs.transcript),
                "{what}"
            );
            // Once the upstream closes, Envoy resets the stream with CONNECT_ERROR; skiff ends
            // it (tests/DIFFERENCES.md).
            if re.ended.contains("CONNECT_ERROR") {
                assert_eq!(rs.ended, "end_stream", "{what}: {rs:?}");
            } else {
                assert_eq!(re.ended, rs.ended, "{what}");
            }
            same_upstream(what, &e.ws, &s.ws);
            same_upstream(what, &e.echo, &s.echo);
        }
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

// ---------------------------------------------------------------------------------------------
// Route matching
// ---------------------------------------------------------------------------------------------

/// A route to `echo` told apart upstream by its timeout (`x-envoy-expected-rq-timeout-ms`).
fn timed(m: Value, secs: u32) -> Value {
    json!({ "match": m, "route": { "cluster": "echo", "timeout": format!("{secs}s") } })
}

fn hdr(name: &str, spec: Value) -> Value {
    let mut h = json!({ "name": name });
    if let (Some(o), Some(x)) = (h.as_object_mut(), spec.as_object()) {
        for (k, v) in x {
            o.insert(k.clone(), v.clone());
        }
    }
    h
}

fn sel(v: &str) -> Value {
    hdr("x-sel", json!({ "string_match": { "exact": v } }))
}

fn matching_config() -> Value {
    let routes = vec![
        timed(json!({ "path_separated_prefix": "/sep" }), 1001),
        timed(json!({ "safe_regex": { "regex": "/re/[0-9]+" } }), 1002),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr("x-exact", json!({ "exact_match": "a" }))] }),
            1003,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr("x-re", json!({ "string_match": { "safe_regex": { "regex": "v[0-9]+" } } }))] }),
            1004,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr("x-num", json!({ "range_match": { "start": 10, "end": 20 } }))] }),
            1005,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr(":method", json!({ "string_match": { "exact": "DELETE" } }))] }),
            1006,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr(":authority", json!({ "string_match": { "prefix": "auth." } }))] }),
            1007,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr(":path", json!({ "string_match": { "suffix": ".json" } }))] }),
            1008,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [sel("scheme"), hdr(":scheme", json!({ "string_match": { "exact": "http" } }))] }),
            1009,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr("x-inv", json!({ "string_match": { "exact": "nope" }, "invert_match": true }))] }),
            1010,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [sel("missing"), hdr("x-missing", json!({ "string_match": { "exact": "" }, "treat_missing_header_as_empty": true }))] }),
            1011,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr("x-multi", json!({ "string_match": { "exact": "a,b" } }))] }),
            1012,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [sel("host"), hdr("host", json!({ "present_match": true }))] }),
            1013,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr("x-any", json!({ "string_match": { "exact": "b" } }))] }),
            1025,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr("x-first", json!({ "exact_match": "a" }))] }),
            1026,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr("x-rng", json!({ "range_match": { "start": 1, "end": 3 } }))] }),
            1027,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr("x-invm", json!({ "string_match": { "exact": "a" }, "invert_match": true }))] }),
            1028,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr("x-pre", json!({ "prefix_match": "ab" }))] }),
            1014,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr("x-suf", json!({ "suffix_match": "yz" }))] }),
            1015,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr("x-con", json!({ "contains_match": "mid" }))] }),
            1016,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [hdr("x-ic", json!({ "string_match": { "exact": "MiXed", "ignore_case": true } }))] }),
            1017,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [sel("absent"), hdr("x-absent", json!({ "present_match": false }))] }),
            1018,
        ),
        timed(
            json!({ "prefix": "/hdr", "headers": [sel("invabsent"), hdr("x-absent", json!({ "string_match": { "exact": "z" }, "invert_match": true }))] }),
            1019,
        ),
        timed(
            json!({ "prefix": "/q", "query_parameters": [ { "name": "a", "string_match": { "exact": "1" } } ] }),
            1020,
        ),
        timed(
            json!({ "prefix": "/q", "query_parameters": [ { "name": "b", "present_match": true } ] }),
            1021,
        ),
        timed(
            json!({ "prefix": "/q", "headers": [sel("qc")], "query_parameters": [ { "name": "c", "present_match": false } ] }),
            1022,
        ),
        timed(
            json!({ "prefix": "/q", "query_parameters": [ { "name": "d", "string_match": { "prefix": "x%20y" } } ] }),
            1023,
        ),
        timed(
            json!({ "prefix": "/q", "query_parameters": [ { "name": "e" } ] }),
            1024,
        ),
        timed(json!({ "prefix": "/g", "grpc": {} }), 1030),
        timed(json!({ "prefix": "/CaSe", "case_sensitive": false }), 1040),
        timed(json!({ "path": "/Exact", "case_sensitive": false }), 1041),
        timed(
            json!({ "safe_regex": { "regex": "/Re/[a-z]+" }, "case_sensitive": false }),
            1042,
        ),
        timed(
            json!({ "path_separated_prefix": "/Sep2", "case_sensitive": false }),
            1043,
        ),
        timed(json!({ "prefix": "/" }), 1099),
    ];
    hcm_with(
        json!([ { "name": "all", "domains": ["*"], "routes": routes } ]),
        json!({}),
    )
}

/// (method, path, authority, headers, Envoy's route by timeout in seconds)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    u32,
);

const H: &str = "match.example.com";

const MATCH_CASES: &[Case] = &[
    ("GET", "/sep", H, &[], 1001),
    ("GET", "/sep/x", H, &[], 1001),
    ("GET", "/sep?x=1", H, &[], 1001),
    ("GET", "/sepx", H, &[], 1099),
    ("GET", "/SEP", H, &[], 1099),
    ("GET", "/re/123", H, &[], 1002),
    ("GET", "/re/123?q=a", H, &[], 1002),
    ("GET", "/re/12a", H, &[], 1099),
    ("GET", "/re/123/x", H, &[], 1099),
    ("GET", "/hdr", H, &[("x-exact", "a")], 1003),
    ("GET", "/hdr", H, &[("x-exact", "A")], 1099),
    ("GET", "/hdr", H, &[("x-re", "v12")], 1004),
    ("GET", "/hdr", H, &[("x-re", "v12x")], 1099),
    ("GET", "/hdr", H, &[("x-num", "10")], 1005),
    ("GET", "/hdr", H, &[("x-num", "19")], 1005),
    ("GET", "/hdr", H, &[("x-num", "20")], 1099),
    ("GET", "/hdr", H, &[("x-num", "+15")], 1005),
    ("GET", "/hdr", H, &[("x-num", "1.5e1")], 1099),
    ("DELETE", "/hdr", H, &[], 1006),
    ("GET", "/hdr", "auth.example.com", &[], 1007),
    ("GET", "/hdr/a.json", H, &[], 1008),
    ("GET", "/hdr/a.json?x", H, &[], 1099),
    ("GET", "/hdr", H, &[("x-sel", "scheme")], 1009),
    ("GET", "/hdr", H, &[("x-inv", "yes")], 1010),
    ("GET", "/hdr", H, &[("x-inv", "nope")], 1099),
    ("GET", "/hdr", H, &[("x-sel", "missing")], 1011),
    (
        "GET",
        "/hdr",
        H,
        &[("x-sel", "missing"), ("x-missing", "v")],
        1099,
    ),
    (
        "GET",
        "/hdr",
        H,
        &[("x-multi", "a"), ("x-multi", "b")],
        1099,
    ),
    ("GET", "/hdr", H, &[("x-any", "a"), ("x-any", "b")], 1025),
    (
        "GET",
        "/hdr",
        H,
        &[("x-first", "b"), ("x-first", "a")],
        1026,
    ),
    ("GET", "/hdr", H, &[("x-rng", "2"), ("x-rng", "5")], 1027),
    ("GET", "/hdr", H, &[("x-invm", "a"), ("x-invm", "b")], 1099),
    ("GET", "/hdr", H, &[("x-multi", "a,b")], 1012),
    ("GET", "/hdr", H, &[("x-sel", "host")], 1013),
    ("GET", "/hdr", H, &[("x-pre", "abc")], 1014),
    ("GET", "/hdr", H, &[("x-suf", "xyz")], 1015),
    ("GET", "/hdr", H, &[("x-con", "amidb")], 1016),
    ("GET", "/hdr", H, &[("x-ic", "mixed")], 1017),
    ("GET", "/hdr", H, &[("x-sel", "absent")], 1018),
    (
        "GET",
        "/hdr",
        H,
        &[("x-sel", "absent"), ("x-absent", "1")],
        1099,
    ),
    ("GET", "/hdr", H, &[("x-sel", "invabsent")], 1099),
    (
        "GET",
        "/hdr",
        H,
        &[("x-sel", "invabsent"), ("x-absent", "y")],
        1019,
    ),
    ("GET", "/q?a=1", H, &[], 1020),
    ("GET", "/q?a=2&a=1", H, &[], 1099),
    ("GET", "/q?x=0&a=1&a=2", H, &[], 1020),
    ("GET", "/q?b", H, &[], 1021),
    ("GET", "/q?b=", H, &[], 1021),
    ("GET", "/q", H, &[("x-sel", "qc")], 1022),
    ("GET", "/q?c=1", H, &[("x-sel", "qc")], 1099),
    ("GET", "/q?d=x%20y", H, &[], 1023),
    ("GET", "/q?d=x%20yz", H, &[], 1023),
    ("GET", "/q?d=x+y", H, &[], 1099),
    ("GET", "/q?e=1", H, &[], 1024),
    (
        "GET",
        "/g",
        H,
        &[("content-type", "application/grpc")],
        1030,
    ),
    (
        "GET",
        "/g",
        H,
        &[("content-type", "application/grpc+proto")],
        1030,
    ),
    (
        "GET",
        "/g",
        H,
        &[("content-type", "application/grpc-web")],
        1099,
    ),
    ("GET", "/g", H, &[], 1099),
    ("GET", "/case/x", H, &[], 1040),
    ("GET", "/exact", H, &[], 1041),
    ("GET", "/EXACT?x", H, &[], 1041),
    ("GET", "/Re/abc", H, &[], 1042),
    ("GET", "/re/ABC", H, &[], 1099),
    ("GET", "/sep2/x", H, &[], 1043),
];

/// The route Envoy's upstream request shows, by its timeout in seconds (0: not forwarded).
fn route_seconds(r: &Recorder, before: usize) -> u32 {
    let reqs = r.requests();
    if reqs.len() == before {
        return 0;
    }
    reqs.last()
        .and_then(|q| q.header("x-envoy-expected-rq-timeout-ms"))
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(0, |ms| ms / 1000)
}

fn build_request(
    http2: bool,
    (method, path, authority, headers, _): &Case,
) -> http::Request<bytes::Bytes> {
    let mut req = if http2 {
        client::h2_request(method, authority, path, bytes::Bytes::new())
    } else {
        client::request(method, path, authority, bytes::Bytes::new())
    };
    for (k, v) in *headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    req
}

async fn send(side: &Side, http2: bool, case: &Case) -> Resp {
    let req = build_request(http2, case);
    let r = if http2 {
        let c = client::H2Client::connect(&side.addr()).await.expect("h2");
        c.send(req).await
    } else {
        client::http1_once(&side.addr(), req).await
    };
    r.unwrap_or_else(|e| panic!("{case:?}: {e}"))
}

/// Sends every case through both proxies over HTTP/1.1 and HTTP/2 and compares. With
/// `ROUTING_PROBE` set, prints the route each proxy chose instead (to learn Envoy's answer).
async fn compare_cases(e: &Side, s: &Side, cases: &[Case]) {
    for http2 in [false, true] {
        for case in cases {
            let what = format!("{} {} {:?} (h2: {http2})", case.0, case.1, case.3);
            let (be, bs) = (e.echo.requests().len(), s.echo.requests().len());
            let re = send(e, http2, case).await;
            let rs = send(s, http2, case).await;
            if std::env::var("ROUTING_PROBE").is_ok() {
                eprintln!(
                    "PROBE {what}: envoy {} skiff {} want {}",
                    route_seconds(&e.echo, be),
                    route_seconds(&s.echo, bs),
                    case.4
                );
                continue;
            }
            assert_eq!(
                route_seconds(&e.echo, be),
                case.4,
                "{what}: Envoy's route\n{:?}",
                e.echo.requests().last()
            );
            assert_eq!(route_seconds(&s.echo, bs), case.4, "{what}: skiff's route");
            assert_same_response(&what, &re, &rs);
            same_upstream(&what, &e.echo, &s.echo);
        }
    }
}

#[tokio::test]
async fn route_matching_side_by_side() {
    run(async {
        let (e, s) = pair(matching_config()).await;
        compare_cases(&e, &s, MATCH_CASES).await;
    })
    .await
}

/// Route configurations both proxies must refuse at load time.
#[tokio::test]
async fn invalid_route_matches_are_refused_by_both() {
    run(async {
        let bad: &[(&str, Value)] = &[
            ("separated prefix ending with /", json!({ "path_separated_prefix": "/a/" })),
            ("separated prefix with a query", json!({ "path_separated_prefix": "/a?b" })),
            ("regex that does not compile", json!({ "safe_regex": { "regex": "/(a" } })),
            (
                "ignore_case with safe_regex",
                json!({ "prefix": "/", "headers": [hdr("x", json!({ "string_match": { "safe_regex": { "regex": "a" }, "ignore_case": true } }))] }),
            ),
            (
                "duplicate route upgrade",
                json!({ "prefix": "/", "__upgrades": true }),
            ),
        ];
        for (what, m) in bad {
            let mut route = timed(m.clone(), 1);
            if m.get("__upgrades").is_some() {
                route = json!({ "match": { "prefix": "/" }, "route": { "cluster": "echo",
                    "upgrade_configs": [ { "upgrade_type": "websocket" }, { "upgrade_type": "WebSocket" } ] } });
            }
            let hcm = hcm_with(json!([ { "name": "v", "domains": ["*"], "routes": [route] } ]), json!({}));
            let filter = json!({ "name": "hcm", "typed_config": hcm });
            let v = bootstrap(
                free_port(),
                vec![listener("l", "127.0.0.1", free_port(), filter)],
                vec![cluster("echo", &[free_port()])],
            );
            let cfg = write_config("bad-route", &to_yaml(&v));
            for kind in [Kind::Envoy, Kind::under_test()] {
                let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert_ne!(out.code, Some(0), "{what}: {} accepted it:\n{}", kind.name(), out.output());
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Route actions: direct responses, redirects, rewrites, cluster choice
// ---------------------------------------------------------------------------------------------

fn to(prefix: &str, action: Value) -> Value {
    let mut r = json!({ "match": { "prefix": prefix } });
    if let (Some(o), Some(x)) = (r.as_object_mut(), action.as_object()) {
        for (k, v) in x {
            o.insert(k.clone(), v.clone());
        }
    }
    r
}

fn actions_config(body_file: &str) -> Value {
    let routes = vec![
        to(
            "/direct/inline",
            json!({ "direct_response": { "status": 200, "body": { "inline_string": "hello" } } }),
        ),
        to(
            "/direct/empty",
            json!({ "direct_response": { "status": 503 } }),
        ),
        to(
            "/direct/file",
            json!({ "direct_response": { "status": 418, "body": { "filename": body_file } } }),
        ),
        to(
            "/direct/bytes",
            json!({ "direct_response": { "status": 201, "body": { "inline_bytes": "aGk=" } } }),
        ),
        to(
            "/redir/basic",
            json!({ "redirect": { "host_redirect": "new.example.com" } }),
        ),
        to(
            "/redir/https",
            json!({ "redirect": { "https_redirect": true } }),
        ),
        to(
            "/redir/scheme",
            json!({ "redirect": { "scheme_redirect": "https", "host_redirect": "s.example.com" } }),
        ),
        to(
            "/redir/port",
            json!({ "redirect": { "port_redirect": 8443 } }),
        ),
        to(
            "/redir/path",
            json!({ "redirect": { "path_redirect": "/new/path", "response_code": "FOUND" } }),
        ),
        to(
            "/redir/qpath",
            json!({ "redirect": { "path_redirect": "/new?x=1", "strip_query": true } }),
        ),
        to(
            "/redir/prefix",
            json!({ "redirect": { "prefix_rewrite": "/p2", "response_code": "SEE_OTHER" } }),
        ),
        to(
            "/redir/regex",
            json!({ "redirect": { "regex_rewrite": { "pattern": { "regex": "^/redir/regex/([^/]+)$" }, "substitution": "/r/\\1" }, "response_code": "TEMPORARY_REDIRECT" } }),
        ),
        to(
            "/redir/strip",
            json!({ "redirect": { "strip_query": true, "response_code": "PERMANENT_REDIRECT" } }),
        ),
        to(
            "/rw/prefix",
            json!({ "route": { "cluster": "echo", "prefix_rewrite": "/new" } }),
        ),
        to(
            "/rw/slash/",
            json!({ "route": { "cluster": "echo", "prefix_rewrite": "/" } }),
        ),
        json!({ "match": { "path": "/rw/exact" }, "route": { "cluster": "echo", "prefix_rewrite": "/e2" } }),
        json!({ "match": { "path_separated_prefix": "/rw/sep" }, "route": { "cluster": "echo", "prefix_rewrite": "/s2" } }),
        to(
            "/rw/regex",
            json!({ "route": { "cluster": "echo", "regex_rewrite": { "pattern": { "regex": "/rw/regex/([0-9]+)" }, "substitution": "/id/\\1" } } }),
        ),
        to(
            "/rw/host",
            json!({ "route": { "cluster": "echo", "host_rewrite_literal": "literal.example.com" } }),
        ),
        to(
            "/rw/hosthdr",
            json!({ "route": { "cluster": "echo", "host_rewrite_header": "x-host" } }),
        ),
        to(
            "/rw/auto",
            json!({ "route": { "cluster": "echo", "auto_host_rewrite": true } }),
        ),
        to(
            "/rw/fmt/path",
            json!({ "route": { "cluster": "echo", "path_rewrite": "/new%REQ(x-seg)%" } }),
        ),
        to(
            "/rw/fmt/empty",
            json!({ "route": { "cluster": "echo", "path_rewrite": "%REQ(x-seg)%" } }),
        ),
        to(
            "/rw/fmt/host",
            json!({ "route": { "cluster": "echo", "host_rewrite": "pre-%REQ(x-host)%" } }),
        ),
        to(
            "/rw/fmt/hostonly",
            json!({ "route": { "cluster": "echo", "host_rewrite": "%REQ(x-host)%" } }),
        ),
        to(
            "/wc/total",
            json!({ "route": { "weighted_clusters": { "total_weight": 7, "clusters": [
                { "name": "echo", "weight": 100 } ] } } }),
        ),
        to(
            "/rw/xfh",
            json!({ "route": { "cluster": "echo", "host_rewrite_literal": "new.example.com", "append_x_forwarded_host": true } }),
        ),
        to(
            "/wc/hdr",
            json!({
                "route": { "weighted_clusters": { "clusters": [
                    { "name": "echo", "weight": 100,
                      "request_headers_to_add": [
                          { "header": { "key": "x-wc", "value": "cluster" }, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD" },
                          { "header": { "key": "x-wc-only", "value": "1" } } ],
                      "request_headers_to_remove": ["x-drop"],
                      "response_headers_to_add": [ { "header": { "key": "x-wc-resp", "value": "cluster" } } ],
                      "response_headers_to_remove": ["x-upstream"],
                      "host_rewrite_literal": "cluster.example.com" },
                    { "name": "echo2", "weight": 0 } ] } },
                "request_headers_to_add": [ { "header": { "key": "x-wc", "value": "route" } } ],
                "response_headers_to_add": [ { "header": { "key": "x-wc-resp", "value": "route" }, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD" } ]
            }),
        ),
        to(
            "/wc/hosts",
            json!({ "route": { "host_rewrite_literal": "route.example.com", "weighted_clusters": { "clusters": [
                { "name": "echo2", "weight": 5, "host_rewrite_literal": "cluster.example.com" } ] } } }),
        ),
        to(
            "/wc/one",
            json!({ "route": { "weighted_clusters": { "clusters": [ { "name": "echo", "weight": 100 }, { "name": "echo2", "weight": 0 } ] } } }),
        ),
        to(
            "/wc/half",
            json!({ "route": { "weighted_clusters": { "clusters": [ { "name": "echo", "weight": 1 }, { "name": "echo2", "weight": 1 } ] } } }),
        ),
        to(
            "/wc/byhdr",
            json!({ "route": { "weighted_clusters": { "header_name": "x-pick", "clusters": [ { "name": "echo", "weight": 1 }, { "name": "echo2", "weight": 2 } ] } } }),
        ),
        to(
            "/wc/byhash",
            json!({ "route": {
                "hash_policy": [ { "header": { "header_name": "x-user" } } ],
                "weighted_clusters": { "use_hash_policy": true, "clusters": [ { "name": "echo", "weight": 1 }, { "name": "echo2", "weight": 1 } ] } } }),
        ),
        to(
            "/wc/chdr",
            json!({ "route": { "weighted_clusters": { "header_name": "x-pick", "clusters": [
                { "cluster_header": "x-cluster", "weight": 1 }, { "name": "echo", "weight": 1 } ] } } }),
        ),
        to(
            "/rt",
            json!({ "route": { "cluster": "echo",
                "retry_policy": { "retry_on": "5xx", "num_retries": 2 } } }),
        ),
        // The cluster's retry policy replaces the route's.
        to(
            "/opts",
            json!({ "route": { "cluster": "echo_retried",
                "retry_policy": { "retry_on": "connect-failure", "num_retries": 5 } } }),
        ),
        // A weighted cluster's per-filter configuration wins over its route's.
        to(
            "/wc/pfc",
            json!({
                "route": { "weighted_clusters": { "header_name": "x-pick", "clusters": [
                    { "name": "echo", "weight": 1 },
                    { "name": "echo2", "weight": 1, "typed_per_filter_config": { "envoy.filters.http.fault": {
                        "@type": FAULT, "abort": { "http_status": 418, "percentage": { "numerator": 100 } } } } } ] } },
                "typed_per_filter_config": { "envoy.filters.http.fault": {
                    "@type": FAULT, "abort": { "http_status": 429, "percentage": { "numerator": 100 } },
                    "headers": [ { "name": "x-route-fault", "present_match": true } ] } }
            }),
        ),
        to(
            "/ch404",
            json!({ "route": { "cluster_header": "x-cluster", "cluster_not_found_response_code": "NOT_FOUND" } }),
        ),
        to("/ch", json!({ "route": { "cluster_header": "x-cluster" } })),
        to(
            "/deco",
            json!({ "route": { "cluster": "echo" }, "decorator": { "operation": "my-op", "propagate": true } }),
        ),
        to("/", json!({ "route": { "cluster": "echo" } })),
    ];
    let mut hcm = hcm_with(
        json!([ { "name": "all", "domains": ["*"], "routes": routes,
                  "include_request_attempt_count": true, "include_attempt_count_in_response": true } ]),
        json!({}),
    );
    hcm["route_config"]["internal_only_headers"] = json!(["x-internal-secret"]);
    // A fault filter that acts only by the routes' and weighted clusters' configurations.
    hcm["http_filters"] = json!([
        { "name": "envoy.filters.http.fault", "typed_config": { "@type": FAULT } },
        router()
    ]);
    hcm
}

const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

const ACTION_CASES: &[Case] = &[
    ("GET", "/direct/inline", H, &[], 200),
    ("HEAD", "/direct/inline", H, &[], 200),
    ("POST", "/direct/inline?x=1", H, &[], 200),
    ("GET", "/direct/empty", H, &[], 503),
    ("GET", "/direct/file", H, &[], 418),
    ("GET", "/direct/bytes", H, &[], 201),
    ("GET", "/redir/basic/x?q=1", H, &[], 301),
    ("GET", "/redir/basic", "match.example.com:8080", &[], 301),
    ("GET", "/redir/https/x", H, &[], 301),
    ("GET", "/redir/https/x", "match.example.com:80", &[], 301),
    ("GET", "/redir/https/x", "match.example.com:8080", &[], 301),
    ("GET", "/redir/scheme", H, &[], 301),
    ("GET", "/redir/port/x", "match.example.com:8080", &[], 301),
    ("GET", "/redir/port/x", "[::1]:8080", &[], 301),
    ("GET", "/redir/path?a=b", H, &[], 302),
    ("GET", "/redir/qpath?a=b", H, &[], 301),
    ("GET", "/redir/prefix/rest?k=v", H, &[], 303),
    ("GET", "/redir/regex/abc", H, &[], 307),
    ("GET", "/redir/regex/abc/d", H, &[], 307),
    ("GET", "/redir/strip/x?a=1&b=2", H, &[], 308),
    ("GET", "/rw/prefix/a?x=1", H, &[], 200),
    ("GET", "/rw/prefix", H, &[], 200),
    ("GET", "/rw/slash/a/b", H, &[], 200),
    ("GET", "/rw/exact?q", H, &[], 200),
    ("GET", "/rw/sep/x", H, &[], 200),
    ("GET", "/rw/regex/42?x", H, &[], 200),
    ("GET", "/rw/regex/x42/rw/regex/7", H, &[], 200),
    ("GET", "/rw/host", H, &[], 200),
    (
        "GET",
        "/rw/hosthdr",
        H,
        &[("x-host", "from-header.example.com")],
        200,
    ),
    ("GET", "/rw/hosthdr", H, &[], 200),
    ("GET", "/rw/auto", H, &[], 200),
    ("GET", "/rw/fmt/path/a?q=1", H, &[("x-seg", "/seg")], 200),
    ("GET", "/rw/fmt/path/a?q=1", H, &[], 200),
    ("GET", "/rw/fmt/empty/a?q=1", H, &[], 200),
    ("GET", "/rw/fmt/empty/a#f", H, &[("x-seg", "/only")], 200),
    (
        "GET",
        "/rw/fmt/host",
        H,
        &[("x-host", "h.example.com")],
        200,
    ),
    ("GET", "/rw/fmt/host", H, &[], 200),
    (
        "GET",
        "/rw/fmt/hostonly",
        H,
        &[("x-host", "only.example.com")],
        200,
    ),
    ("GET", "/rw/fmt/hostonly", H, &[], 200),
    ("GET", "/wc/total", H, &[], 200),
    ("GET", "/rw/xfh", H, &[], 200),
    (
        "GET",
        "/rw/xfh",
        H,
        &[("x-forwarded-host", "a.example.com")],
        200,
    ),
    (
        "GET",
        "/rw/xfh",
        H,
        &[("x-forwarded-host", "match.example.com")],
        200,
    ),
    ("GET", "/wc/one", H, &[("x-internal-secret", "1")], 200),
    ("GET", "/wc/byhdr", H, &[("x-pick", "0")], 200),
    ("GET", "/wc/byhdr", H, &[("x-pick", "1")], 200),
    ("GET", "/wc/byhdr", H, &[("x-pick", " 2 ")], 200),
    ("GET", "/wc/byhdr", H, &[("x-pick", "+5")], 200),
    (
        "GET",
        "/wc/byhdr",
        H,
        &[("x-pick", "18446744073709551615")],
        200,
    ),
    ("GET", "/wc/byhash", H, &[("x-user", "alice")], 200),
    ("GET", "/wc/byhash", H, &[("x-user", "bob")], 200),
    ("GET", "/wc/byhash", H, &[("x-user", "carol")], 200),
    ("GET", "/wc/byhash", H, &[("x-user", "dave")], 200),
    ("GET", "/wc/byhash", H, &[("x-user", "erin")], 200),
    (
        "GET",
        "/wc/hdr",
        H,
        &[("x-drop", "1"), ("x-wc", "client")],
        200,
    ),
    ("GET", "/wc/hdr", H, &[], 200),
    ("GET", "/wc/hosts", H, &[], 200),
    (
        "GET",
        "/deco",
        H,
        &[("x-envoy-decorator-operation", "client")],
        200,
    ),
    ("GET", "/deco", H, &[], 200),
    ("GET", "/ch", H, &[("x-cluster", "echo2")], 200),
    ("GET", "/ch", H, &[("x-cluster", "nope")], 503),
    ("GET", "/ch", H, &[], 503),
    (
        "GET",
        "/wc/chdr",
        H,
        &[("x-pick", "0"), ("x-cluster", "echo2")],
        200,
    ),
    (
        "GET",
        "/wc/chdr",
        H,
        &[("x-pick", "0"), ("x-cluster", "nope")],
        503,
    ),
    ("GET", "/wc/chdr", H, &[("x-pick", "0")], 503),
    (
        "GET",
        "/wc/chdr",
        H,
        &[("x-pick", "1"), ("x-cluster", "echo2")],
        200,
    ),
    ("GET", "/rt/status/503", H, &[], 503),
    ("GET", "/opts/status/503", H, &[], 503),
    ("GET", "/opts/status/404", H, &[], 404),
    ("GET", "/opts/ok", H, &[], 200),
    ("GET", "/wc/pfc", H, &[("x-pick", "0")], 200),
    (
        "GET",
        "/wc/pfc",
        H,
        &[("x-pick", "0"), ("x-route-fault", "1")],
        429,
    ),
    ("GET", "/wc/pfc", H, &[("x-pick", "1")], 418),
    (
        "GET",
        "/wc/pfc",
        H,
        &[("x-pick", "1"), ("x-route-fault", "1")],
        418,
    ),
    ("GET", "/ch404", H, &[("x-cluster", "nope")], 404),
    ("GET", "/ch404", H, &[("x-cluster", "echo")], 200),
];

/// Sends every case through both proxies over HTTP/1.1 and HTTP/2: Envoy's status must be the
/// expected one (0: any), and the two proxies' answers and upstream requests the same.
async fn compare_status_cases(e: &Side, s: &Side, cases: &[Case]) {
    for http2 in [false, true] {
        for case in cases {
            let what = format!(
                "{} {} {} {:?} (h2: {http2})",
                case.0, case.2, case.1, case.3
            );
            let re = send(e, http2, case).await;
            let rs = send(s, http2, case).await;
            if case.4 != 0 {
                assert_eq!(re.status, case.4 as u16, "{what}: Envoy's status {re:?}");
            }
            assert_same_response(&what, &re, &rs);
            same_upstream(&what, &e.echo, &s.echo);
            same_upstream(&what, &e.echo2, &s.echo2);
        }
    }
}

#[tokio::test]
async fn route_actions_side_by_side() {
    run(async {
        let dir = skiff_tests::scratch_dir("route-actions");
        let file = dir.join("body.txt");
        std::fs::write(&file, "from a file\n").expect("write body file");
        let (e, s) = pair(actions_config(file.to_str().expect("utf-8"))).await;
        compare_status_cases(&e, &s, ACTION_CASES).await;
        // A retry expects what is left of the route's 15 s: less than all of it.
        for side in [&e, &s] {
            let r = client::http1_once(&side.addr(), client::get("/rt/status/503", H))
                .await
                .expect("a response");
            let left: u64 = r
                .text()
                .lines()
                .find_map(|l| l.strip_prefix("x-envoy-expected-rq-timeout-ms: "))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            assert!(
                (14_000..15_000).contains(&left),
                "{}: {left}",
                side.proxy.kind.name()
            );
        }
        // The virtual host's attempt counts and the internal-only header took effect (only
        // the retried routes count past one).
        let seen = e.echo.requests();
        assert!(seen
            .iter()
            .all(|r| r.header("x-envoy-attempt-count") == Some("1")
                || r.path.starts_with("/rt/")
                || r.path.starts_with("/opts/")));
        assert!(seen.iter().all(|r| !r.has("x-internal-secret")));
        // weighted_clusters 1:1 over 400 requests: both proxies split within bounds.
        for side in [&e, &s] {
            let before = side.echo2.requests().len();
            let mut c = client::Http1Client::connect(&side.addr())
                .await
                .expect("connect");
            for _ in 0..400 {
                let r = c.send(client::get("/wc/half", H)).await.expect("request");
                assert_eq!(r.status, 200);
            }
            let to_echo2 = side.echo2.requests().len() - before;
            assert!(
                (140..=260).contains(&to_echo2),
                "{}: {to_echo2} of 400 went to echo2",
                side.proxy.kind.name()
            );
        }
    })
    .await
}

#[tokio::test]
async fn invalid_route_actions_are_refused_by_both() {
    run(async {
        let big = "x".repeat(4097);
        let bad: &[(&str, Value)] = &[
            ("direct body over 4 KiB", json!({ "direct_response": { "status": 200, "body": { "inline_string": big } } })),
            ("weights summing to zero", json!({ "route": { "weighted_clusters": { "clusters": [ { "name": "echo", "weight": 0 } ] } } })),
            ("prefix and regex rewrites", json!({ "route": { "cluster": "echo", "prefix_rewrite": "/a", "regex_rewrite": { "pattern": { "regex": "a" }, "substitution": "b" } } })),
            ("unknown weighted cluster", json!({ "route": { "weighted_clusters": { "clusters": [ { "name": "nope", "weight": 1 } ] } } })),
            ("weighted cluster with a name and a cluster_header", json!({ "route": { "weighted_clusters": { "clusters": [ { "name": "echo", "cluster_header": "x-c", "weight": 1 } ] } } })),
            ("weighted cluster with neither name nor cluster_header", json!({ "route": { "weighted_clusters": { "clusters": [ { "weight": 1 } ] } } })),
            ("prefix_rewrite and path_rewrite", json!({ "route": { "cluster": "echo", "prefix_rewrite": "/a", "path_rewrite": "/b" } })),
            ("path_rewrite with an unknown operator", json!({ "route": { "cluster": "echo", "path_rewrite": "/%NOPE%" } })),
            ("host_rewrite with an unknown operator", json!({ "route": { "cluster": "echo", "host_rewrite": "%NOPE%" } })),
            // Envoy 1.40 registers no retry options predicate: any is refused.
            ("a retry options predicate", json!({ "route": { "cluster": "echo", "retry_policy": { "retry_on": "5xx",
                "retry_options_predicates": [ { "name": "envoy.retry_options_predicates.x",
                    "typed_config": { "@type": "type.googleapis.com/google.protobuf.Struct" } } ] } } })),
        ];
        for (what, action) in bad {
            let route = to("/", action.clone());
            let hcm = hcm_with(json!([ { "name": "v", "domains": ["*"], "routes": [route] } ]), json!({}));
            let filter = json!({ "name": "hcm", "typed_config": hcm });
            let v = bootstrap(
                free_port(),
                vec![listener("l", "127.0.0.1", free_port(), filter)],
                vec![cluster("echo", &[free_port()])],
            );
            let cfg = write_config("bad-action", &to_yaml(&v));
            for kind in [Kind::Envoy, Kind::under_test()] {
                let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert_ne!(out.code, Some(0), "{what}: {} accepted it:\n{}", kind.name(), out.output());
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The connection manager: forwarding headers, path normalization, host ports
// ---------------------------------------------------------------------------------------------

fn plain_hcm(extra: Value) -> Value {
    hcm_with(
        json!([ { "name": "all", "domains": ["*"], "routes": [ to("/", json!({ "route": { "cluster": "echo" } })) ] } ]),
        extra,
    )
}

const FORWARDING_CASES: &[Case] = &[
    ("GET", "/f", H, &[], 200),
    ("GET", "/f", H, &[("x-forwarded-for", "10.1.2.3")], 200),
    (
        "GET",
        "/f",
        H,
        &[("x-forwarded-for", "1.2.3.4, 10.0.0.1")],
        200,
    ),
    (
        "GET",
        "/f",
        H,
        &[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
        ],
        200,
    ),
    ("GET", "/f", H, &[("x-forwarded-for", "not-an-ip")], 200),
    ("GET", "/f", H, &[("x-envoy-internal", "true")], 200),
    (
        "GET",
        "/f",
        H,
        &[("x-envoy-external-address", "9.9.9.9")],
        200,
    ),
    (
        "GET",
        "/f",
        H,
        &[
            ("x-envoy-decorator-operation", "op"),
            ("x-envoy-downstream-service-cluster", "c"),
            ("x-envoy-downstream-service-node", "n"),
        ],
        200,
    ),
    ("GET", "/f", H, &[("x-forwarded-proto", "https")], 200),
    (
        "GET",
        "/f",
        H,
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "10.0.0.2"),
        ],
        200,
    ),
];

#[tokio::test]
async fn forwarding_headers_side_by_side() {
    run(async {
        let variants = [
            json!({ "use_remote_address": true }),
            json!({ "use_remote_address": true, "xff_num_trusted_hops": 1,
                    "internal_address_config": { "cidr_ranges": [
                        { "address_prefix": "127.0.0.0", "prefix_len": 8 },
                        { "address_prefix": "10.0.0.0", "prefix_len": 8 } ] } }),
            json!({ "use_remote_address": true, "skip_xff_append": true,
                    "internal_address_config": { "cidr_ranges": [ { "address_prefix": "127.0.0.1", "prefix_len": 32 } ] } }),
            json!({ "use_remote_address": false,
                    "internal_address_config": { "cidr_ranges": [ { "address_prefix": "10.0.0.0", "prefix_len": 8 } ] } }),
            json!({ "xff_num_trusted_hops": 1,
                    "internal_address_config": { "cidr_ranges": [ { "address_prefix": "1.2.3.0", "prefix_len": 24 } ] } }),
        ];
        for v in variants {
            let (e, s) = pair(plain_hcm(v.clone())).await;
            eprintln!("variant {v}");
            compare_status_cases(&e, &s, FORWARDING_CASES).await;
        }
    })
    .await
}

const PATH_CASES: &[Case] = &[
    ("GET", "/a/../b", H, &[], 0),
    ("GET", "/a/./b/.", H, &[], 0),
    ("GET", "/a/b/..", H, &[], 0),
    ("GET", "/../../x", H, &[], 0),
    ("GET", "/a//b///c", H, &[], 0),
    ("GET", "//", H, &[], 0),
    ("GET", "/%61b%7E", H, &[], 0),
    ("GET", "/a%2e%2E/b", H, &[], 0),
    ("GET", "/a/%2e%2E/b", H, &[], 0),
    ("GET", "/a%2Fb", H, &[], 0),
    ("GET", "/a%2fb/..", H, &[], 0),
    ("GET", "/a%5Cb", H, &[], 0),
    ("GET", "/a%2Fb?x=%2F/../", H, &[], 0),
    ("GET", "/a?x=/../y//z", H, &[], 0),
    ("GET", "/a%20b%zz%3a", H, &[], 0),
    ("GET", "/p", "match.example.com:80", &[], 0),
    ("GET", "/p", "match.example.com:8080", &[], 0),
    ("GET", "/p", "[::1]:8080", &[], 0),
];

#[tokio::test]
async fn path_normalization_side_by_side() {
    run(async {
        let variants = [
            json!({ "normalize_path": true, "merge_slashes": true,
                    "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT" }),
            json!({ "normalize_path": true, "path_with_escaped_slashes_action": "REJECT_REQUEST" }),
            json!({ "merge_slashes": true, "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD",
                    "strip_any_host_port": true }),
            json!({ "normalize_path": false, "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
                    "strip_matching_host_port": true }),
        ];
        for v in variants {
            let (e, s) = pair(plain_hcm(v.clone())).await;
            eprintln!("variant {v}");
            compare_status_cases(&e, &s, PATH_CASES).await;
            // The listener's own port, for strip_matching_host_port.
            let own = format!("match.example.com:{}", s.port);
            let own_e = format!("match.example.com:{}", e.port);
            let re = client::http1_once(&e.addr(), client::get("/own", &own_e)).await.expect("envoy");
            let rs = client::http1_once(&s.addr(), client::get("/own", &own)).await.expect("skiff");
            assert_eq!(re.status, rs.status, "own port ({v})");
            let (he, hs) = (e.echo.requests(), s.echo.requests());
            let strip = |h: &str, port: u16| h.replace(&port.to_string(), "<port>");
            assert_eq!(
                he.last().and_then(|r| r.header("host")).map(|h| strip(h, e.port)),
                hs.last().and_then(|r| r.header("host")).map(|h| strip(h, s.port)),
                "host with the listener's port ({v})"
            );
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Header changes at route, virtual host and route configuration level
// ---------------------------------------------------------------------------------------------

fn hvo(key: &str, value: &str, action: Option<&str>) -> Value {
    let mut o = json!({ "header": { "key": key, "value": value } });
    if let Some(a) = action {
        o["append_action"] = json!(a);
    }
    o
}

fn header_levels(most_specific_wins: bool) -> Value {
    let level = |tag: &str| {
        json!({
            "request_headers_to_add": [
                hvo("x-level", tag, None),
                hvo("x-over", tag, Some("OVERWRITE_IF_EXISTS_OR_ADD")),
                hvo("x-absent", tag, Some("ADD_IF_ABSENT")),
                hvo("x-if-exists", tag, Some("OVERWRITE_IF_EXISTS")),
                hvo(&format!("x-{tag}"), "1", None),
            ],
            "request_headers_to_remove": [ format!("x-drop-{tag}") ],
            "response_headers_to_add": [
                hvo("x-resp-level", tag, None),
                hvo("x-resp-over", tag, Some("OVERWRITE_IF_EXISTS_OR_ADD")),
                hvo("x-upstream", tag, Some("ADD_IF_ABSENT")),
            ],
            "response_headers_to_remove": [ if tag == "vhost" { "x-upstream".to_string() } else { format!("x-none-{tag}") } ],
        })
    };
    let merge = |mut base: Value, extra: Value| {
        if let (Some(o), Some(x)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in x {
                o.insert(k.clone(), v.clone());
            }
        }
        base
    };
    let routes = vec![
        merge(
            to(
                "/direct",
                json!({ "direct_response": { "status": 200, "body": { "inline_string": "{}" } } }),
            ),
            json!({ "response_headers_to_add": [ hvo("content-type", "application/json", None), hvo("x-direct", "1", None) ] }),
        ),
        merge(
            to(
                "/redirect",
                json!({ "redirect": { "host_redirect": "r.example.com" } }),
            ),
            json!({ "response_headers_to_add": [ hvo("x-redirect", "1", None) ] }),
        ),
        merge(
            to("/", json!({ "route": { "cluster": "echo" } })),
            level("route"),
        ),
    ];
    let vhost = merge(
        json!({ "name": "all", "domains": ["*"], "routes": routes }),
        level("vhost"),
    );
    let mut rc = merge(
        json!({ "name": "routes", "virtual_hosts": [vhost] }),
        level("global"),
    );
    rc["most_specific_header_mutations_wins"] = json!(most_specific_wins);
    json!({
        "@type": HCM_TYPE,
        "stat_prefix": "routing",
        "route_config": rc,
        "http_filters": [ router() ],
    })
}

const HEADER_CASES: &[Case] = &[
    ("GET", "/h", H, &[], 200),
    (
        "GET",
        "/h",
        H,
        &[
            ("x-level", "client"),
            ("x-over", "client"),
            ("x-absent", "client"),
            ("x-if-exists", "client"),
        ],
        200,
    ),
    (
        "GET",
        "/h",
        H,
        &[
            ("x-drop-route", "1"),
            ("x-drop-vhost", "1"),
            ("x-drop-global", "1"),
            ("x-keep", "1"),
        ],
        200,
    ),
    ("GET", "/direct", H, &[], 200),
    ("GET", "/redirect", H, &[], 301),
];

#[tokio::test]
async fn header_changes_side_by_side() {
    run(async {
        for most_specific_wins in [false, true] {
            let (e, s) = pair(header_levels(most_specific_wins)).await;
            compare_status_cases(&e, &s, HEADER_CASES).await;
            // The configuration took effect: the overwrite of the level evaluated last wins.
            let first = e.echo.requests().into_iter().next().expect("a request");
            let want = if most_specific_wins {
                "route"
            } else {
                "global"
            };
            assert_eq!(first.header("x-over"), Some(want));
            assert_eq!(first.header_all("x-level").len(), 3);
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// common_http_protocol_options.headers_with_underscores_action
// ---------------------------------------------------------------------------------------------

const UNDERSCORE_CASES: &[Case] = &[
    ("GET", "/u", H, &[("x-ok", "1")], 200),
    ("GET", "/u", H, &[("x_under", "1"), ("x-ok", "1")], 0),
    (
        "GET",
        "/u",
        H,
        &[("x_a", "1"), ("x_a", "2"), ("x_b", "3")],
        0,
    ),
];

#[tokio::test]
async fn headers_with_underscores_side_by_side() {
    run(async {
        for action in ["ALLOW", "DROP_HEADER", "REJECT_REQUEST"] {
            let hcm = plain_hcm(json!({ "common_http_protocol_options": { "headers_with_underscores_action": action } }));
            let (e, s) = pair(hcm).await;
            if action == "REJECT_REQUEST" {
                // HTTP/1.1: Envoy's 400 and a closed connection; HTTP/2: the stream is reset.
                for case in UNDERSCORE_CASES {
                    let (re, rs) = (send(&e, false, case).await, send(&s, false, case).await);
                    assert_same_response(action, &re, &rs);
                    let (ce, cs) = (
                        client::H2Client::connect(&e.addr()).await.expect("h2"),
                        client::H2Client::connect(&s.addr()).await.expect("h2"),
                    );
                    let he = ce.send(build_request(true, case)).await;
                    let hs = cs.send(build_request(true, case)).await;
                    assert_eq!(he.is_err(), hs.is_err(), "{case:?}: envoy {he:?}, skiff {hs:?}");
                }
                same_upstream(action, &e.echo, &s.echo);
            } else {
                compare_status_cases(&e, &s, UNDERSCORE_CASES).await;
            }
            for name in [
                "http1.requests_rejected_with_underscores_in_headers",
                "http1.dropped_headers_with_underscores",
                "http2.requests_rejected_with_underscores_in_headers",
                "http2.dropped_headers_with_underscores",
            ] {
                let (se, ss) = (e.proxy.admin().stats().await, s.proxy.admin().stats().await);
                let get = |m: &std::collections::BTreeMap<String, String>| {
                    m.get(name).cloned().unwrap_or_else(|| "0".into())
                };
                assert_eq!(get(&se), get(&ss), "{action}: {name}");
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Timeouts a client asks for
// ---------------------------------------------------------------------------------------------

/// Envoy 1.40 honours a client's x-envoy-upstream-rq-timeout-ms on internal requests only
/// (the first configuration); on the others the route's timeout stands.
const TIMEOUT_CASES: &[Case] = &[
    (
        "GET",
        "/t?sleep=600",
        H,
        &[("x-envoy-upstream-rq-timeout-ms", "200")],
        0,
    ),
    (
        "GET",
        "/t?sleep=300",
        H,
        &[("x-envoy-upstream-rq-timeout-ms", "2000")],
        200,
    ),
    (
        "GET",
        "/t?sleep=300",
        H,
        &[("x-envoy-upstream-rq-timeout-ms", "0")],
        200,
    ),
    (
        "GET",
        "/t?sleep=300",
        H,
        &[("x-envoy-upstream-rq-timeout-ms", "x")],
        200,
    ),
];

#[tokio::test]
async fn client_timeouts_side_by_side() {
    run(async {
        for extra in [
            json!({ "use_remote_address": true, "internal_address_config": { "cidr_ranges": [ { "address_prefix": "127.0.0.0", "prefix_len": 8 } ] } }),
            json!({}),
            json!({ "use_remote_address": true }),
        ] {
            let (e, s) = pair(plain_hcm(extra)).await;
            compare_status_cases(&e, &s, TIMEOUT_CASES).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// A real configuration: Envoy Gateway's httproute-redirect bootstrap, verbatim but for its
// addresses (redirects, path_separated_prefix, escaped-slash redirects, path normalization,
// use_remote_address, headers with underscores, suppressed Envoy headers)
// ---------------------------------------------------------------------------------------------

const GATEWAY: &str = "gateway.envoyproxy.io";

const GATEWAY_CASES: &[Case] = &[
    ("GET", "/status/301", GATEWAY, &[], 301),
    ("GET", "/status/302/x?q=1", GATEWAY, &[], 302),
    ("GET", "/status/303", GATEWAY, &[], 303),
    ("GET", "/status/307", GATEWAY, &[], 307),
    ("GET", "/status/308", GATEWAY, &[], 308),
    ("GET", "/status/3010", GATEWAY, &[], 404),
    ("GET", "/x/../status/301", GATEWAY, &[], 301),
    ("GET", "//status//302", GATEWAY, &[], 302),
    ("GET", "/status%2F301", GATEWAY, &[], 307),
    ("GET", "/status/301", "gateway.envoyproxy.io:8080", &[], 301),
    ("GET", "/status/301", "other.example.com", &[], 404),
    ("GET", "/status/301", GATEWAY, &[("x_bad", "1")], 0),
];

#[tokio::test]
async fn envoy_gateway_redirect_bootstrap_side_by_side() {
    run(async {
        let path = skiff_tests::workspace_root().join(
            "../shared/corpus/envoy-gateway-xds/internal__xds__translator__testdata__out__xds-ir__httproute-redirect.bootstrap.yaml",
        );
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("{} not found: skipped", path.display());
            return;
        };
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, port) = (free_port(), free_port());
            let yaml = format!(
                "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\n{}",
                text.replace("address: 0.0.0.0", "address: 127.0.0.1")
                    .replace("portValue: 10080", &format!("portValue: {port}"))
            );
            let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            sides.push((proxy, port));
        }
        for case in GATEWAY_CASES {
            for http2 in [false, true] {
                let mut got = Vec::new();
                for (_, port) in &sides {
                    let addr = format!("127.0.0.1:{port}");
                    let req = build_request(http2, case);
                    let r = if http2 {
                        let c = client::H2Client::connect(&addr).await.expect("h2");
                        c.send(req).await.ok()
                    } else {
                        Some(client::http1_once(&addr, req).await.expect("http1"))
                    };
                    got.push(r);
                }
                let what = format!("{} {} {} (h2: {http2})", case.0, case.2, case.1);
                match (&got[0], &got[1]) {
                    (Some(e), Some(s)) => {
                        if case.4 != 0 {
                            assert_eq!(e.status, case.4 as u16, "{what}: Envoy's status {e:?}");
                        }
                        assert_same_response(&what, e, s);
                    }
                    (e, s) => assert_eq!(e.is_none(), s.is_none(), "{what}: envoy {e:?} skiff {s:?}"),
                }
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Virtual host require_tls
// ---------------------------------------------------------------------------------------------

const TLS_CASES: &[Case] = &[
    ("GET", "/a?b=1", "tls.example.com", &[], 301),
    ("GET", "/a", "tls.example.com:8080", &[], 0),
    (
        "GET",
        "/a",
        "tls.example.com",
        &[("x-forwarded-proto", "https")],
        0,
    ),
    ("GET", "/a", "ext.example.com", &[], 0),
    (
        "GET",
        "/a",
        "ext.example.com",
        &[("x-forwarded-proto", "https")],
        0,
    ),
    ("GET", "/a", "plain.example.com", &[], 200),
];

#[tokio::test]
async fn require_tls_side_by_side() {
    run(async {
        let vhosts = json!([
            { "name": "tls", "domains": ["tls.example.com", "tls.example.com:8080"], "require_tls": "ALL",
              "routes": [ to("/", json!({ "route": { "cluster": "echo" } })) ] },
            { "name": "ext", "domains": ["ext.example.com"], "require_tls": "EXTERNAL_ONLY",
              "routes": [ to("/", json!({ "route": { "cluster": "echo" } })) ] },
            { "name": "plain", "domains": ["*"],
              "routes": [ to("/", json!({ "route": { "cluster": "echo" } })) ] }
        ]);
        for extra in [
            json!({}),
            json!({ "use_remote_address": true, "internal_address_config": { "cidr_ranges": [ { "address_prefix": "127.0.0.0", "prefix_len": 8 } ] } }),
        ] {
            let (e, s) = pair(hcm_with(vhosts.clone(), extra)).await;
            compare_status_cases(&e, &s, TLS_CASES).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Request mirroring
// ---------------------------------------------------------------------------------------------

fn mirror_config() -> Value {
    let m = |prefix: &str, policies: Value| {
        to(
            prefix,
            json!({ "route": { "cluster": "echo", "request_mirror_policies": policies } }),
        )
    };
    let routes = vec![
        m("/mirror/all", json!([{ "cluster": "echo2" }])),
        m(
            "/mirror/same",
            json!([{ "cluster": "echo2", "disable_shadow_host_suffix_append": true }]),
        ),
        m(
            "/mirror/literal",
            json!([{ "cluster": "echo2", "host_rewrite_literal": "m.example.com" }]),
        ),
        m("/mirror/hdr", json!([{ "cluster_header": "x-mirror" }])),
        // The cluster's mirror (to echo2) replaces the route's (to echo).
        to(
            "/mirror/cluster",
            json!({ "route": { "cluster": "echo_mirrored", "request_mirror_policies": [ { "cluster": "echo" } ] } }),
        ),
        m(
            "/mirror/none",
            json!([{ "cluster": "echo2", "runtime_fraction": { "default_value": { "numerator": 0 } } }]),
        ),
        m(
            "/mirror/half",
            json!([{ "cluster": "echo2", "runtime_fraction": { "default_value": { "numerator": 50 } } }]),
        ),
        m(
            "/mirror/twice",
            json!([{ "cluster": "echo2" }, { "cluster": "echo2", "disable_shadow_host_suffix_append": true }]),
        ),
        to("/", json!({ "route": { "cluster": "echo" } })),
    ];
    hcm_with(
        json!([ { "name": "all", "domains": ["*"], "routes": routes } ]),
        json!({}),
    )
}

/// Waits until `rec` holds `n` requests (mirrors arrive on their own time), up to 2 s.
async fn settle(rec: &Recorder, n: usize) {
    for _ in 0..100 {
        if rec.requests().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A copy that should not come would come about as fast.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn request_mirroring_side_by_side() {
    run(async {
        let (e, s) = pair(mirror_config()).await;
        // The last field: how many mirrored copies the request makes.
        let cases: &[Case] = &[
            ("GET", "/mirror/all", H, &[], 1),
            ("GET", "/mirror/all?q=1", "match.example.com:8080", &[], 1),
            (
                "POST",
                "/mirror/all",
                H,
                &[("content-type", "text/plain")],
                1,
            ),
            ("GET", "/mirror/same", H, &[], 1),
            ("GET", "/mirror/literal", H, &[], 1),
            ("GET", "/mirror/hdr", H, &[("x-mirror", "echo2")], 1),
            ("GET", "/mirror/hdr", H, &[("x-mirror", "nope")], 0),
            ("GET", "/mirror/hdr", H, &[], 0),
            ("GET", "/mirror/none", H, &[], 0),
            ("GET", "/mirror/twice", H, &[], 2),
            ("GET", "/mirror/cluster", H, &[], 1),
            ("GET", "/other", H, &[], 0),
        ];
        for http2 in [false, true] {
            for (method, path, authority, headers, mirrored) in cases {
                let what = format!("{method} {authority}{path} {headers:?} (h2: {http2})");
                let body = if *method == "POST" {
                    bytes::Bytes::from_static(b"a body for the mirror too")
                } else {
                    bytes::Bytes::new()
                };
                let mut want = 0;
                for side in [&e, &s] {
                    let before = side.echo2.requests().len();
                    want = before + *mirrored as usize;
                    let mut req = if http2 {
                        client::h2_request(method, authority, path, body.clone())
                    } else {
                        client::request(method, path, authority, body.clone())
                    };
                    for (k, v) in *headers {
                        req.headers_mut().insert(
                            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                            http::HeaderValue::from_str(v).expect("value"),
                        );
                    }
                    let r = if http2 {
                        let c = client::H2Client::connect(&side.addr()).await.expect("h2");
                        c.send(req).await
                    } else {
                        client::http1_once(&side.addr(), req).await
                    }
                    .expect("a response");
                    assert_eq!(r.status, 200, "{what}: {}", side.proxy.kind.name());
                    settle(&side.echo2, want).await;
                }
                assert_eq!(e.echo2.requests().len(), want, "{what}: Envoy's mirrors");
                same_upstream(&what, &e.echo, &s.echo);
                // Two mirrors of one request arrive in either order.
                let sorted = |r: &Recorder| {
                    let mut v: Vec<String> = r
                        .requests()
                        .iter()
                        .map(|q| format!("{:?}", upstream_view(q)))
                        .collect();
                    v.sort();
                    v
                };
                assert_eq!(
                    sorted(&s.echo2),
                    sorted(&e.echo2),
                    "{what}: mirrors, skiff (left)"
                );
            }
        }
        // Half the requests over 300, each proxy within bounds.
        for side in [&e, &s] {
            let before = side.echo2.requests().len();
            let mut c = client::Http1Client::connect(&side.addr())
                .await
                .expect("connect");
            for _ in 0..300 {
                let r = c
                    .send(client::get("/mirror/half", H))
                    .await
                    .expect("request");
                assert_eq!(r.status, 200);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let n = side.echo2.requests().len() - before;
            assert!(
                (100..=200).contains(&n),
                "{}: {n} of 300 mirrored",
                side.proxy.kind.name()
            );
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Header values with substitution operators (Envoy's header formatter)
// ---------------------------------------------------------------------------------------------

fn formatted_headers_config() -> Value {
    let req = |k: &str, v: &str| hvo(k, v, None);
    let keep_empty = |k: &str, v: &str| {
        let mut o = hvo(k, v, None);
        o["keep_empty_value"] = json!(true);
        o
    };
    let request_side = vec![
        req("x-remote", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
        req("x-local", "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"),
        req("x-missing", "%REQ(x-nothere)%"),
        req("x-around", "a-%REQ(x-nothere)%-b"),
        req("x-copy", "%REQ(x-in)%"),
        req("x-alt", "%REQ(x-nothere?x-in)%"),
        req("x-cut", "%REQ(x-in):2%"),
        req("x-uhost", "%UPSTREAM_HOST%"),
        req("x-ucluster", "%UPSTREAM_CLUSTER%"),
        req("x-route", "%ROUTE_NAME%"),
        req("x-proto", "%PROTOCOL%"),
        req("x-code", "%RESPONSE_CODE%"),
        req("x-path", "%REQ(:PATH)%"),
        req("x-method", "%REQ(:METHOD)%"),
        req("x-flags", "%RESPONSE_FLAGS%"),
        req("x-bytes", "%BYTES_RECEIVED%"),
        req("x-year", "%START_TIME(%Y)%"),
        req("x-pct", "100%% of %REQ(x-in)%"),
        keep_empty("x-kept", "%REQ(x-nothere)%"),
        hvo("x-over", "%REQ(x-in)%", Some("OVERWRITE_IF_EXISTS_OR_ADD")),
        hvo("x-absent", "%REQ(x-nothere)%", Some("ADD_IF_ABSENT")),
    ];
    let response_side = vec![
        req("x-r-code", "%RESPONSE_CODE%"),
        req("x-r-resp", "%RESP(x-upstream)%"),
        req("x-r-req", "%REQ(x-in)%"),
        req("x-r-flags", "%RESPONSE_FLAGS%"),
        req("x-r-remote", "%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
        req("x-r-ulocal", "%UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"),
        req("x-r-uproto", "%UPSTREAM_PROTOCOL%"),
        req("x-r-attempts", "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"),
        req("x-r-sent", "%BYTES_SENT%"),
        req("x-r-route", "%ROUTE_NAME%"),
    ];
    let mut fmt = to("/fmt", json!({ "route": { "cluster": "echo" } }));
    fmt["name"] = json!("formatted");
    fmt["request_headers_to_add"] = json!(request_side);
    fmt["response_headers_to_add"] = json!(response_side.clone());
    let mut weighted = to(
        "/weighted",
        json!({ "route": { "weighted_clusters": { "clusters": [ {
            "name": "echo2", "weight": 1,
            "request_headers_to_add": [ req("x-wc", "%UPSTREAM_CLUSTER%/%REQ(x-in)%") ],
            "response_headers_to_add": [ req("x-r-wc", "%RESP(x-upstream)%") ],
        } ] } } }),
    );
    weighted["name"] = json!("weighted");
    let mut direct = to(
        "/direct",
        json!({ "direct_response": { "status": 201, "body": { "inline_string": "made" } } }),
    );
    direct["response_headers_to_add"] = json!(response_side.clone());
    let mut missing = to(
        "/nocluster",
        json!({ "route": { "cluster_header": "x-pick" } }),
    );
    missing["response_headers_to_add"] = json!(response_side);
    let vhost = json!({
        "name": "all", "domains": ["*"],
        "routes": [fmt, weighted, direct, missing, to("/", json!({ "route": { "cluster": "echo" } }))],
        "request_headers_to_add": [ req("x-vh", "vh-%REQ(x-in)%") ],
        "response_headers_to_add": [ req("x-r-vh", "%RESPONSE_CODE%") ],
    });
    json!({
        "@type": HCM_TYPE,
        "stat_prefix": "routing",
        "route_config": {
            "name": "routes", "virtual_hosts": [vhost],
            "response_headers_to_add": [ req("x-r-global", "%UPSTREAM_CLUSTER%") ],
        },
        "http_filters": [ router() ],
    })
}

const FORMAT_CASES: &[Case] = &[
    ("GET", "/fmt?q=1", H, &[("x-in", "hello")], 200),
    (
        "GET",
        "/fmt",
        H,
        &[("x-over", "client"), ("x-absent", "client")],
        200,
    ),
    ("POST", "/fmt/p", H, &[("x-in", "x")], 200),
    ("GET", "/weighted", H, &[("x-in", "w")], 200),
    ("GET", "/direct", H, &[("x-in", "d")], 201),
    ("GET", "/nocluster", H, &[("x-in", "n")], 503),
    ("GET", "/plain", H, &[], 200),
];

/// Header values with `%` operators: what each renders on requests and responses, at every
/// level, for forwarded requests, direct responses and local replies. The proxies keep no
/// access log here, so the stream's record exists for the headers alone.
#[tokio::test]
async fn formatted_header_values_side_by_side() {
    run(async {
        let (e, s) = pair(formatted_headers_config()).await;
        compare_status_cases(&e, &s, FORMAT_CASES).await;
        // The values rendered at all (the comparison alone would pass on two empty sides).
        let first = s.echo.requests().into_iter().next().expect("a request");
        assert_eq!(first.header("x-copy"), Some("hello"));
        assert_eq!(first.header("x-remote"), Some("127.0.0.1"));
        assert_eq!(first.header("x-route"), Some("formatted"));
        assert_eq!(first.header("x-code"), Some("0"));
        assert_eq!(first.header("x-around"), Some("a--b"));
        assert_eq!(first.header("x-missing"), None);
        assert_eq!(first.header("x-uhost"), None);
        assert_eq!(first.header("x-pct"), Some("100% of hello"));
        let wc = s
            .echo2
            .requests()
            .into_iter()
            .next()
            .expect("a weighted request");
        assert_eq!(wc.header("x-wc"), Some("echo2/w"));
    })
    .await
}

/// Formats Envoy refuses in header values, refused by both.
#[tokio::test]
async fn invalid_header_formats_are_refused_by_both() {
    run(async {
        for value in ["%NOT_AN_OPERATOR%", "%REQ(x-a", "50%"] {
            let mut route = to("/", json!({ "route": { "cluster": "echo" } }));
            route["request_headers_to_add"] = json!([hvo("x-a", value, None)]);
            let hcm = hcm_with(
                json!([ { "name": "v", "domains": ["*"], "routes": [route] } ]),
                json!({}),
            );
            let filter = json!({ "name": "hcm", "typed_config": hcm });
            let v = bootstrap(
                free_port(),
                vec![listener("l", "127.0.0.1", free_port(), filter)],
                vec![cluster("echo", &[free_port()])],
            );
            let cfg = write_config("bad-header-format", &to_yaml(&v));
            for kind in [Kind::Envoy, Kind::under_test()] {
                let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert_ne!(
                    out.code,
                    Some(0),
                    "{value}: {} accepted it:\n{}",
                    kind.name(),
                    out.output()
                );
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// original_ip_detection_extensions
// ---------------------------------------------------------------------------------------------

const IP_DETECTION_CASES: &[Case] = &[
    ("GET", "/ip", H, &[], 0),
    ("GET", "/ip", H, &[("x-real-ip", "10.9.9.9")], 0),
    ("GET", "/ip", H, &[("x-real-ip", "8.8.8.8")], 0),
    ("GET", "/ip", H, &[("x-real-ip", "2001:db8::1")], 0),
    ("GET", "/ip", H, &[("x-real-ip", "bogus")], 0),
    (
        "GET",
        "/ip",
        H,
        &[("x-forwarded-for", "1.2.3.4, 10.0.0.1")],
        0,
    ),
    ("GET", "/ip", H, &[("x-forwarded-for", "10.0.0.2")], 0),
    (
        "GET",
        "/ip",
        H,
        &[("x-forwarded-for", "10.0.0.2, 10.0.0.3")],
        0,
    ),
    ("GET", "/ip", H, &[("x-forwarded-for", "5.6.7.8, bogus")], 0),
];

/// The client address each extension finds: what the upstream sees of it (the stream's
/// downstream address, rendered into a header; `x-envoy-internal`) and the requests rejected.
#[tokio::test]
async fn original_ip_detection_side_by_side() {
    run(async {
        let custom = |extra: Value| {
            let mut c = json!({
                "@type": "type.googleapis.com/envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig",
                "header_name": "x-real-ip" });
            if let (Some(o), Some(x)) = (c.as_object_mut(), extra.as_object()) {
                for (k, v) in x {
                    o.insert(k.clone(), v.clone());
                }
            }
            json!({ "name": "custom", "typed_config": c })
        };
        let xff = |config: Value| {
            let mut c = json!({ "@type": "type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3.XffConfig" });
            if let (Some(o), Some(x)) = (c.as_object_mut(), config.as_object()) {
                for (k, v) in x {
                    o.insert(k.clone(), v.clone());
                }
            }
            json!({ "name": "xff", "typed_config": c })
        };
        let variants = [
            json!([custom(json!({ "allow_extension_to_set_address_as_trusted": true,
                "reject_with_status": { "code": 421 } }))]),
            json!([custom(json!({})), xff(json!({ "xff_num_trusted_hops": 1 }))]),
            json!([xff(json!({ "xff_trusted_cidrs": { "cidrs": [
                { "address_prefix": "127.0.0.1", "prefix_len": 32 },
                { "address_prefix": "10.0.0.0", "prefix_len": 8 } ] } }))]),
            json!([xff(json!({ "skip_xff_append": false }))]),
        ];
        for (i, v) in variants.into_iter().enumerate() {
            let vhost = json!([ { "name": "all", "domains": ["*"],
                "routes": [ to("/", json!({ "route": { "cluster": "echo" } })) ],
                "request_headers_to_add": [ hvo("x-client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", None) ] } ]);
            let cfg = hcm_with(
                vhost,
                json!({ "original_ip_detection_extensions": v,
                    "internal_address_config": { "cidr_ranges": [
                        { "address_prefix": "10.0.0.0", "prefix_len": 8 } ] } }),
            );
            let (e, s) = pair(cfg).await;
            compare_status_cases(&e, &s, IP_DETECTION_CASES).await;
            let got: Vec<Option<String>> = s
                .echo
                .requests()
                .iter()
                .map(|r| r.header("x-client").map(str::to_string))
                .collect();
            let stat = "http.routing.downstream_rq_rejected_via_ip_detection";
            let rejected = (e.proxy.admin().stat(stat).await, s.proxy.admin().stat(stat).await);
            assert_eq!(rejected.1, rejected.0, "{v}: {stat}, skiff (left), Envoy (right)");
            if i == 0 {
                // reject_with_status answers what the header does not name an address in.
                assert!(rejected.0.unwrap_or(0) > 0, "{v}: {rejected:?}");
            }
            // Some address came from the request, not from the peer.
            assert!(
                got.iter()
                    .any(|c| c.as_deref().is_some_and(|c| !c.starts_with("127."))),
                "{v}: {got:?}"
            );
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Match trees (a virtual host's `matcher`) and scoped routes
// ---------------------------------------------------------------------------------------------

/// A matcher action: a `Route`.
fn route_action(route: Value) -> Value {
    let mut r = route;
    r["@type"] = json!("type.googleapis.com/envoy.config.route.v3.Route");
    json!({ "action": { "name": "route", "typed_config": r } })
}

/// A matcher action: a `RouteList`.
fn route_list_action(routes: Value) -> Value {
    json!({ "action": { "name": "routes", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteList", "routes": routes } } })
}

fn header_input(name: &str) -> Value {
    json!({ "name": "h", "typed_config": {
        "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
        "header_name": name } })
}

const TREE: &str = "tree.example";
const PTREE: &str = "ptree.example";
const LTREE: &str = "list.example";

fn match_tree_config() -> Value {
    hcm_with(
        json!([
            { "name": "tree", "domains": [TREE], "matcher": {
                "matcher_tree": { "input": header_input("x-tree"), "exact_match_map": { "map": {
                    "a": route_action(timed(json!({ "prefix": "/" }), 51)),
                    // The route's own match still applies.
                    "b": route_action(timed(json!({ "prefix": "/only" }), 52)),
                    "list": route_list_action(json!([
                        timed(json!({ "prefix": "/x", "headers": [sel("1")] }), 53),
                        timed(json!({ "prefix": "/" }), 54),
                    ])),
                    "nested": { "matcher": {
                        "matcher_list": { "matchers": [ {
                            "predicate": { "single_predicate": { "input": header_input(":method"),
                                "value_match": { "exact": "POST" } } },
                            "on_match": route_action(timed(json!({ "prefix": "/" }), 55)),
                        } ] },
                        "on_no_match": route_action(timed(json!({ "prefix": "/" }), 56)),
                    } },
                } } },
                "on_no_match": route_action(timed(json!({ "prefix": "/" }), 57)),
            } },
            // The longest prefix of the path that leads to an action wins; none: no route.
            { "name": "ptree", "domains": [PTREE], "matcher": {
                "matcher_tree": { "input": header_input(":path"), "prefix_match_map": { "map": {
                    "/api": route_action(timed(json!({ "prefix": "/" }), 61)),
                    "/api/v2": route_action(timed(json!({ "prefix": "/" }), 62)),
                    "/api/v3": route_action(timed(json!({ "prefix": "/nothing" }), 63)),
                } } },
            } },
            // A list of predicates over request headers.
            { "name": "ltree", "domains": [LTREE], "matcher": {
                "matcher_list": { "matchers": [
                    { "predicate": { "and_matcher": { "predicate": [
                        { "single_predicate": { "input": header_input("x-a"), "value_match": { "prefix": "ye" } } },
                        { "single_predicate": { "input": header_input(":authority"),
                            "value_match": { "safe_regex": { "google_re2": {}, "regex": "list\\.[a-z]+" } } } },
                    ] } }, "on_match": route_action(timed(json!({ "prefix": "/" }), 71)) },
                    { "predicate": { "not_matcher": { "single_predicate": { "input": header_input("x-b"),
                        "value_match": { "exact": "nope", "ignore_case": true } } } },
                      "on_match": route_list_action(json!([
                          timed(json!({ "path": "/exact" }), 72),
                          timed(json!({ "prefix": "/", "headers": [sel("2")] }), 73),
                      ])) },
                ] },
            } },
            { "name": "all", "domains": ["*"], "routes": [ timed(json!({ "prefix": "/" }), 99) ] },
        ]),
        json!({}),
    )
}

const MATCH_TREE_CASES: &[Case] = &[
    ("GET", "/", TREE, &[("x-tree", "a")], 51),
    ("GET", "/only/x", TREE, &[("x-tree", "b")], 52),
    ("GET", "/other", TREE, &[("x-tree", "b")], 0),
    ("GET", "/x", TREE, &[("x-tree", "list"), ("x-sel", "1")], 53),
    ("GET", "/x", TREE, &[("x-tree", "list")], 54),
    ("POST", "/p", TREE, &[("x-tree", "nested")], 55),
    ("GET", "/p", TREE, &[("x-tree", "nested")], 56),
    ("GET", "/", TREE, &[("x-tree", "zzz")], 57),
    ("GET", "/", TREE, &[], 57),
    // Two values are joined with a comma: no entry.
    ("GET", "/", TREE, &[("x-tree", "a"), ("x-tree", "b")], 57),
    ("GET", "/api", PTREE, &[], 61),
    ("GET", "/api/v2/x", PTREE, &[], 62),
    ("GET", "/api/v21", PTREE, &[], 62),
    ("GET", "/api/v3/x", PTREE, &[], 0),
    ("GET", "/apix", PTREE, &[], 61),
    ("GET", "/ap", PTREE, &[], 0),
    ("GET", "/", LTREE, &[("x-a", "yes")], 71),
    ("GET", "/exact", LTREE, &[], 72),
    ("GET", "/exact?q", LTREE, &[("x-sel", "2")], 72),
    ("GET", "/other", LTREE, &[("x-sel", "2")], 73),
    ("GET", "/other", LTREE, &[], 0),
    ("GET", "/exact", LTREE, &[("x-b", "NOPE")], 0),
    ("GET", "/exact", LTREE, &[("x-b", "yes")], 72),
    ("GET", "/", "other.example", &[("x-tree", "a")], 99),
];

#[tokio::test]
async fn match_trees_side_by_side() {
    run(async {
        let (e, s) = pair(match_tree_config()).await;
        compare_cases(&e, &s, MATCH_TREE_CASES).await;
    })
    .await
}

/// Envoy's documented scoped routes example, extended: the scope key is two fragments (an
/// element of a `;`-separated header and the second element of a `,`-separated one).
fn scoped_config() -> Value {
    let scope = |name: &str, key: &[&str], routes: Value, extra: Value| {
        let mut rc = json!({ "name": format!("rc-{name}"), "virtual_hosts": routes });
        if let (Some(o), Some(x)) = (rc.as_object_mut(), extra.as_object()) {
            for (k, v) in x {
                o.insert(k.clone(), v.clone());
            }
        }
        json!({ "name": name, "on_demand": true,
            "key": { "fragments": key.iter().map(|k| json!({ "string_key": k })).collect::<Vec<_>>() },
            "route_configuration": rc })
    };
    let vh = |secs: u32| json!([ { "name": "v", "domains": ["*"], "routes": [ timed(json!({ "prefix": "/" }), secs) ] } ]);
    json!({
        "@type": HCM_TYPE,
        "stat_prefix": "scoped",
        "http_filters": [ router() ],
        "scoped_routes": {
            "name": "scope_by_addr",
            "scope_key_builder": { "fragments": [
                { "header_value_extractor": { "name": "x-addr", "element_separator": ";",
                    "element": { "key": "x-foo-key", "separator": "=" } } },
                { "header_value_extractor": { "name": "x-pos", "element_separator": ",", "index": 1 } },
            ] },
            "scoped_route_configurations_list": { "scoped_route_configurations": [
                scope("s1", &["bar", "b"], vh(81), json!({})),
                scope("s2", &["baz", "b"], json!([
                    { "name": "host", "domains": ["host.example"], "routes": [ timed(json!({ "prefix": "/" }), 82) ] },
                    { "name": "v", "domains": ["*"], "routes": [ timed(json!({ "prefix": "/x" }), 83) ] },
                ]), json!({ "response_headers_to_add": [ { "header": { "key": "x-scope", "value": "s2" } } ] })),
                scope("s3", &["", "b"], vh(84), json!({})),
                // Named again with another key: the earlier key no longer leads anywhere.
                scope("s4", &["old", "b"], vh(85), json!({})),
                scope("s4", &["new", "b"], vh(86), json!({})),
            ] },
        },
    })
}

const SCOPED_CASES: &[Case] = &[
    (
        "GET",
        "/",
        H,
        &[("x-addr", "x-foo-key=bar"), ("x-pos", "a,b")],
        81,
    ),
    (
        "GET",
        "/",
        H,
        &[
            ("x-addr", "a=1;x-foo-key=bar;x-foo-key=baz"),
            ("x-pos", "a,b,c"),
        ],
        81,
    ),
    (
        "GET",
        "/",
        H,
        &[("x-addr", "x-foo-key=bar"), ("x-pos", "a")],
        0,
    ),
    (
        "GET",
        "/",
        H,
        &[("x-addr", "x-foo-key=bar"), ("x-pos", "b,a")],
        0,
    ),
    ("GET", "/", H, &[("x-addr", "x-foo-key=bar")], 0),
    ("GET", "/", H, &[("x-pos", "a,b")], 0),
    (
        "GET",
        "/",
        H,
        &[("x-addr", "x-foo-key=baz"), ("x-pos", "a,b")],
        0,
    ),
    (
        "GET",
        "/x",
        H,
        &[("x-addr", "x-foo-key=baz"), ("x-pos", "a,b")],
        83,
    ),
    (
        "GET",
        "/",
        "host.example",
        &[("x-addr", "x-foo-key=baz"), ("x-pos", "a,b")],
        82,
    ),
    (
        "GET",
        "/",
        H,
        &[("x-addr", "x-foo-key"), ("x-pos", "a,b")],
        84,
    ),
    (
        "GET",
        "/",
        H,
        &[("x-addr", "x-foo-key="), ("x-pos", "a,b")],
        84,
    ),
    // Only the first value of a header counts.
    (
        "GET",
        "/",
        H,
        &[
            ("x-addr", "y=1"),
            ("x-addr", "x-foo-key=bar"),
            ("x-pos", "a,b"),
        ],
        0,
    ),
    (
        "GET",
        "/",
        H,
        &[("x-addr", "x-foo-key=old"), ("x-pos", "a,b")],
        0,
    ),
    (
        "GET",
        "/",
        H,
        &[("x-addr", "x-foo-key=new"), ("x-pos", "a,b")],
        86,
    ),
];

#[tokio::test]
async fn scoped_routes_side_by_side() {
    run(async {
        let (e, s) = pair(scoped_config()).await;
        compare_cases(&e, &s, SCOPED_CASES).await;
    })
    .await
}

/// Match trees and scoped routes both proxies refuse at load time.
/// Envoy's Lua cluster specifier: a script's `envoy_on_route` names the cluster from the
/// request's headers (every value of a header joined, pseudo-headers too) and what
/// `getCluster` finds; a script that fails or returns no string routes to `default_cluster`;
/// a cluster that does not exist answers as a missing cluster. The script's globals live on
/// in each worker (one here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_specifier_lua_side_by_side() {
    run(async {
        let script = r#"
            seen = 0
            function envoy_on_route(route_handle)
              seen = seen + 1
              local h = route_handle:headers()
              local which = h:get("x-which")
              if which == "fail" then error("asked to fail") end
              if which == "number" then return 42 end
              if which == "none" then return nil end
              if which == "path" then
                if h:get(":path") == "/lua/p" then return "echo2" end
                return "echo"
              end
              if which == "exists" then
                local c = route_handle:getCluster("echo2")
                local gone = route_handle:getCluster("nope")
                if c ~= nil and gone == nil and c:numPendingRequests() == 0 then return "echo2" end
                return "echo"
              end
              if which == "count" then
                if seen > 1 then return "echo2" end
                return "echo"
              end
              return which
            end
        "#;
        let plugin = json!({ "extension": { "name": "envoy.router.cluster_specifier_plugin.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig",
                "source_code": { "inline_string": script },
                "default_cluster": "echo2" } } });
        let mut named = plugin.clone();
        named["extension"]["name"] = json!("lua-by-name");
        let mut hcm = hcm_with(
            json!([ { "name": "v", "domains": ["*"], "routes": [
                { "match": { "prefix": "/lua" }, "route": { "inline_cluster_specifier_plugin": plugin } },
                { "match": { "prefix": "/named" }, "route": { "cluster_specifier_plugin": "lua-by-name" } },
            ] } ]),
            json!({}),
        );
        hcm["route_config"]["cluster_specifier_plugins"] = json!([named]);
        let (e, s) = pair(hcm).await;
        let cases: &[Case] = &[
            ("GET", "/lua", H, &[("x-which", "echo")], 0),
            ("GET", "/lua", H, &[("x-which", "echo2")], 0),
            ("GET", "/lua", H, &[("x-which", "echo"), ("x-which", "echo2")], 0),
            ("GET", "/lua", H, &[("x-which", "fail")], 0),
            ("GET", "/lua", H, &[("x-which", "number")], 0),
            ("GET", "/lua", H, &[("x-which", "none")], 0),
            ("GET", "/lua", H, &[("x-which", "ghost")], 0),
            ("GET", "/lua/p", H, &[("x-which", "path")], 0),
            ("GET", "/lua/q", H, &[("x-which", "path")], 0),
            ("GET", "/lua", H, &[("x-which", "exists")], 0),
            ("GET", "/lua", H, &[], 0),
            ("GET", "/named", H, &[("x-which", "echo")], 0),
            ("GET", "/named", H, &[("x-which", "count")], 0),
        ];
        for http2 in [false, true] {
            for case in cases {
                let what = format!("{} {:?} (h2: {http2})", case.1, case.3);
                let re = send(&e, http2, case).await;
                let rs = send(&s, http2, case).await;
                assert_same_response(&what, &re, &rs);
                same_upstream(&what, &e.echo, &s.echo);
                same_upstream(&what, &e.echo2, &s.echo2);
            }
        }
        assert!(!e.echo.requests().is_empty() && !e.echo2.requests().is_empty());
    })
    .await
}

#[tokio::test]
async fn invalid_match_trees_and_scopes_are_refused_by_both() {
    run(async {
        let tree = |matcher: Value, routes: Value| {
            hcm_with(json!([ { "name": "v", "domains": ["*"], "matcher": matcher, "routes": routes } ]), json!({}))
        };
        let to_echo = route_action(json!({ "match": { "prefix": "/" }, "route": { "cluster": "echo" } }));
        let mut scoped_list = scoped_config();
        scoped_list["scoped_routes"]["scoped_route_configurations_list"]["scoped_route_configurations"][0]["route_configuration_name"] = json!("rds");
        let mut scoped_no_rc = scoped_config();
        if let Some(o) = scoped_no_rc["scoped_routes"]["scoped_route_configurations_list"]["scoped_route_configurations"][0].as_object_mut() {
            o.remove("route_configuration");
        }
        let mut scoped_index = scoped_config();
        scoped_index["scoped_routes"]["scope_key_builder"]["fragments"][1]["header_value_extractor"]["element_separator"] = json!("");
        let mut scoped_no_extract = scoped_config();
        if let Some(o) = scoped_no_extract["scoped_routes"]["scope_key_builder"]["fragments"][1]["header_value_extractor"].as_object_mut() {
            o.remove("index");
        }
        let mut scoped_empty_key = scoped_config();
        scoped_empty_key["scoped_routes"]["scoped_route_configurations_list"]["scoped_route_configurations"][0]["key"] = json!({ "fragments": [] });
        let mut scoped_bad_cluster = scoped_config();
        scoped_bad_cluster["scoped_routes"]["scoped_route_configurations_list"]["scoped_route_configurations"][0]["route_configuration"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = json!("nope");
        let bad: Vec<(&str, Value)> = vec![
            ("a matcher and routes", tree(json!({ "on_no_match": to_echo.clone() }), json!([ to("/", json!({ "route": { "cluster": "echo" } })) ]))),
            ("an action that is not a route", tree(json!({ "on_no_match": { "action": { "name": "x", "typed_config": { "@type": "type.googleapis.com/google.protobuf.Struct" } } } }), json!([]))),
            ("a route without a match", tree(json!({ "on_no_match": route_action(json!({ "route": { "cluster": "echo" } })) }), json!([]))),
            ("a route matcher reading the connection", tree(json!({ "matcher_tree": {
                "input": { "name": "port", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput" } },
                "exact_match_map": { "map": { "80": to_echo.clone() } } } }), json!([]))),
            ("a route with an invalid action", tree(json!({ "on_no_match": route_action(json!({ "match": { "prefix": "/" }, "route": { "cluster": "echo", "prefix_rewrite": "/a", "regex_rewrite": { "pattern": { "regex": "a" }, "substitution": "b" } } })) }), json!([]))),
            ("a scope naming a route configuration", scoped_list),
            ("a scope without a route configuration", scoped_no_rc),
            ("an index past 0 without a separator", scoped_index),
            ("a fragment extracting nothing", scoped_no_extract),
            ("a scope key without fragments", scoped_empty_key),
            ("a scope routing to an unknown cluster", scoped_bad_cluster),
            ("a route naming a plugin the table lacks", {
                let mut h = hcm_with(json!([ { "name": "v", "domains": ["*"], "routes": [
                    to("/", json!({ "route": { "cluster_specifier_plugin": "absent" } })) ] } ]), json!({}));
                h["route_config"]["cluster_specifier_plugins"] = json!([ { "extension": { "name": "present",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.MatcherClusterSpecifier",
                        "cluster_matcher": { "on_no_match": { "action": { "name": "c", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.ClusterAction",
                            "cluster": "echo" } } } } } } } ]);
                h
            }),
            ("a Lua script without envoy_on_route", hcm_with(json!([ { "name": "v", "domains": ["*"], "routes": [
                to("/", json!({ "route": { "inline_cluster_specifier_plugin": { "extension": { "name": "lua",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig",
                        "source_code": { "inline_string": "function other(h) return 'echo' end" },
                        "default_cluster": "echo" } } } } })) ] } ]), json!({}))),
            ("a Lua script that does not parse", hcm_with(json!([ { "name": "v", "domains": ["*"], "routes": [
                to("/", json!({ "route": { "inline_cluster_specifier_plugin": { "extension": { "name": "lua",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig",
                        "source_code": { "inline_string": "function envoy_on_route(h" },
                        "default_cluster": "echo" } } } } })) ] } ]), json!({}))),
            ("a plugin without a name", {
                let mut h = hcm_with(json!([ { "name": "v", "domains": ["*"], "routes": [
                    to("/", json!({ "route": { "cluster": "echo" } })) ] } ]), json!({}));
                h["route_config"]["cluster_specifier_plugins"] = json!([ { "extension": { "name": "",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.MatcherClusterSpecifier",
                        "cluster_matcher": { "on_no_match": { "action": { "name": "c", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.ClusterAction",
                            "cluster": "echo" } } } } } } } ]);
                h
            }),
        ];
        for (what, hcm) in bad {
            let filter = json!({ "name": "hcm", "typed_config": hcm });
            let v = bootstrap(
                free_port(),
                vec![listener("l", "127.0.0.1", free_port(), filter)],
                vec![cluster("echo", &[free_port()])],
            );
            let cfg = write_config("bad-tree", &to_yaml(&v));
            for kind in [Kind::Envoy, Kind::under_test()] {
                let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert_ne!(out.code, Some(0), "{what}: {} accepted it:\n{}", kind.name(), out.output());
            }
        }
    })
    .await
}

/// A route's `inline_cluster_specifier_plugin` (Envoy's matcher cluster specifier): the
/// cluster its matcher names for the request (a header, a pseudo-header), a cluster that does
/// not exist, and no action at all.
#[tokio::test]
async fn cluster_specifier_matcher_side_by_side() {
    run(async {
        let action = |cluster: &str| {
            json!({ "action": { "name": "c", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.ClusterAction",
                "cluster": cluster } } })
        };
        let plugin = json!({ "extension": { "name": "envoy.router.cluster_specifier_plugin.matcher",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.MatcherClusterSpecifier",
                "cluster_matcher": { "matcher_list": { "matchers": [
                    { "predicate": { "single_predicate": { "input": header_input(":path"),
                        "value_match": { "prefix": "/spec/p" } } }, "on_match": action("echo2") },
                ] }, "on_no_match": { "matcher": { "matcher_tree": { "input": header_input("x-which"),
                    "exact_match_map": { "map": {
                        "one": action("echo"), "two": action("echo2"), "ghost": action("nope"),
                    } } } } } } } } });
        // The same matcher by name, from the route configuration's plugins (the first of a
        // name is kept, as in Envoy).
        let mut named = plugin.clone();
        named["extension"]["name"] = json!("by-name");
        let mut shadowed = named.clone();
        shadowed["extension"]["typed_config"]["cluster_matcher"] =
            json!({ "on_no_match": action("echo") });
        let mut hcm = hcm_with(
            json!([ { "name": "v", "domains": ["*"], "routes": [
                { "match": { "prefix": "/spec" }, "route": { "inline_cluster_specifier_plugin": plugin.clone() } },
                { "match": { "prefix": "/code" }, "route": { "inline_cluster_specifier_plugin": plugin,
                    "cluster_not_found_response_code": "NOT_FOUND" } },
                { "match": { "prefix": "/named" }, "route": { "cluster_specifier_plugin": "by-name" } },
            ] } ]),
            json!({}),
        );
        hcm["route_config"]["cluster_specifier_plugins"] = json!([named, shadowed]);
        let (e, s) = pair(hcm).await;
        let cases: &[Case] = &[
            ("GET", "/spec", H, &[("x-which", "one")], 0),
            ("GET", "/spec", H, &[("x-which", "two")], 0),
            ("GET", "/spec/p", H, &[("x-which", "one")], 0),
            ("GET", "/spec", H, &[("x-which", "ghost")], 0),
            ("GET", "/spec", H, &[("x-which", "three")], 0),
            ("GET", "/spec", H, &[], 0),
            ("GET", "/code", H, &[], 0),
            ("GET", "/named", H, &[("x-which", "one")], 0),
            ("GET", "/named", H, &[("x-which", "two")], 0),
            ("GET", "/named", H, &[("x-which", "ghost")], 0),
            ("GET", "/named", H, &[], 0),
        ];
        for http2 in [false, true] {
            for case in cases {
                let what = format!("{} {:?} (h2: {http2})", case.1, case.3);
                let re = send(&e, http2, case).await;
                let rs = send(&s, http2, case).await;
                assert_same_response(&what, &re, &rs);
                same_upstream(&what, &e.echo, &s.echo);
                same_upstream(&what, &e.echo2, &s.echo2);
            }
        }
        assert!(!e.echo.requests().is_empty() && !e.echo2.requests().is_empty());
    })
    .await
}
