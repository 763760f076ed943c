//! CONNECT and websocket upgrades forwarded to an HTTP/2 cluster, side by side with Envoy 1.40:
//! the proxy under test sends a CONNECT upstream as an HTTP/2 CONNECT stream, and an HTTP/1.1
//! websocket upgrade as an extended CONNECT (`:protocol websocket`, its 200 turned into the
//! client's 101), to a real Envoy that terminates the CONNECT (`connect_config`) onto a TCP
//! echo and passes the websocket on to an HTTP/1.1 upstream; the tunnel's bytes travel as DATA
//! frames. Clients over HTTP/1.1 and HTTP/2; what the far end refuses comes back as its answer.

use serde_json::json;
use skiff_tests::client::{connect_h1, connect_h2};
use skiff_tests::config::{bootstrap, cluster, hcm, listener, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::{TcpMode, TcpUpstream};
use skiff_tests::{free_port, run};

/// The far end: Envoy over h2c, terminating CONNECTs to `echo.example:1234` onto `echo`, and
/// taking websocket extended CONNECTs to `/ws` to `ws` (an HTTP/1.1 upstream answering 101).
async fn terminator(echo: u16, ws: u16) -> (ProxyProcess, u16) {
    let (admin, port) = (free_port(), free_port());
    let mut m = hcm(
        "far",
        vec![
            json!({ "name": "echo", "domains": ["echo.example:1234"], "routes": [
                { "match": { "connect_matcher": {} },
                  "route": { "cluster": "echo",
                    "upgrade_configs": [ { "upgrade_type": "CONNECT", "connect_config": {} } ] } }
            ] }),
            json!({ "name": "rest", "domains": ["*"], "routes": [
                { "match": { "prefix": "/ws" }, "route": { "cluster": "ws" } },
                { "match": { "prefix": "/denied" }, "route": { "cluster": "ws",
                    "upgrade_configs": [ { "upgrade_type": "websocket", "enabled": false } ] } },
                { "match": { "prefix": "/" }, "direct_response": { "status": 200 } }
            ] }),
        ],
    );
    m["typed_config"]["codec_type"] = json!("HTTP2");
    m["typed_config"]["upgrade_configs"] =
        json!([{ "upgrade_type": "CONNECT" }, { "upgrade_type": "websocket" }]);
    m["typed_config"]["http2_protocol_options"] = json!({ "allow_connect": true });
    m["typed_config"]["access_log"] = json!([]);
    let v = bootstrap(
        admin,
        vec![listener("far", "127.0.0.1", port, m)],
        vec![cluster("echo", &[echo]), cluster("ws", &[ws])],
    );
    let p = ProxyProcess::start(Kind::Envoy, &to_yaml(&v), &["--concurrency", "1"]).await;
    (p, port)
}

/// The proxy under test, forwarding every CONNECT to the far end over HTTP/2.
async fn middle(kind: Kind, far: u16) -> (ProxyProcess, u16) {
    let (admin, port) = (free_port(), free_port());
    let mut m = hcm(
        "mid",
        vec![json!({ "name": "all", "domains": ["*"], "routes": [
            { "match": { "connect_matcher": {} }, "route": { "cluster": "far" } },
            { "match": { "prefix": "/" }, "route": { "cluster": "far" } }
        ] })],
    );
    m["typed_config"]["upgrade_configs"] =
        json!([{ "upgrade_type": "CONNECT" }, { "upgrade_type": "websocket" }]);
    m["typed_config"]["http2_protocol_options"] = json!({ "allow_connect": true });
    m["typed_config"]["access_log"] = json!([]);
    let mut far_cluster = cluster("far", &[far]);
    far_cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} } } });
    let v = bootstrap(
        admin,
        vec![listener("mid", "127.0.0.1", port, m)],
        vec![far_cluster],
    );
    let p = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
    (p, port)
}

/// A websocket handshake over HTTP/1.1 to `path`: the response head (date left out) and, after
/// a 101, the echo of the bytes sent through.
async fn websocket(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut data = Vec::new();
    let end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(std::time::Duration::from_secs(3), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => data.extend_from_slice(&chunk[..n]),
            _ => return format!("ws {path}: no head {:?}", String::from_utf8_lossy(&data)),
        }
    };
    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
    let mut lines: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with("date:"))
        .collect();
    lines[1..].sort();
    let mut echo = data[end..].to_vec();
    if head.starts_with("http/1.1 101") {
        s.write_all(b"frames").await.expect("write");
        while echo.len() < 6 {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(std::time::Duration::from_secs(3), s.read(&mut chunk)).await
            {
                Ok(Ok(n)) if n > 0 => echo.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
    }
    format!(
        "ws {path}: {lines:?} echo={:?}",
        String::from_utf8_lossy(&echo)
    )
}

#[tokio::test]
async fn connect_to_an_http2_cluster_as_envoy() {
    run(async {
        let echo = TcpUpstream::start(TcpMode::Echo).await;
        let ws = TcpUpstream::start(TcpMode::ReplyThenEcho(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_vec(),
        ))
        .await;
        let (_far, far) = terminator(echo.port(), ws.port()).await;
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (_p, port) = middle(kind, far).await;
            let mut got = Vec::new();
            for (target, early) in [
                ("echo.example:1234", &b""[..]),
                ("echo.example:1234", &b"early "[..]),
                ("other.example:1", &b""[..]),
            ] {
                let r = connect_h1(port, target, "", early).await;
                let mut headers: Vec<String> = r
                    .resp
                    .headers
                    .iter()
                    .filter(|(k, _)| k != "date")
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                headers.sort();
                got.push(format!(
                    "h1 {target} early={:?}: {} {headers:?} echo={:?} closed={}",
                    String::from_utf8_lossy(early),
                    r.resp.status,
                    String::from_utf8_lossy(&r.echo),
                    r.closed
                ));
            }
            for path in ["/ws", "/denied"] {
                got.push(websocket(port, path).await);
            }
            for target in ["echo.example:1234", "other.example:1"] {
                let (status, echo) = connect_h2(port, target, &[]).await;
                got.push(format!(
                    "h2 {target}: {status} echo={:?}",
                    String::from_utf8_lossy(&echo)
                ));
            }
            seen.push(got);
        }
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        let all = seen[0].join("\n");
        assert!(
            all.contains("h1 echo.example:1234 early=\"\": 200"),
            "{all}"
        );
        assert!(all.contains("echo=\"early through the tunnel\""), "{all}");
        assert!(
            all.contains("h2 echo.example:1234: 200 echo=\"through the stream\""),
            "{all}"
        );
        assert!(all.contains("h1 other.example:1 early=\"\": 404"), "{all}");
        assert!(all.contains("ws /ws: [\"http/1.1 101 switching protocols\""), "{all}");
        assert!(all.contains("echo=\"frames\""), "{all}");
        assert!(all.contains("ws /denied: [\"http/1.1 403"), "{all}");
    })
    .await;
}
