//! tcp_proxy's `tunneling_config`, side by side with Envoy 1.40: a TCP connection carried in
//! an HTTP/1.1 CONNECT, an HTTP/2 CONNECT stream, or an HTTP/2 POST (`use_post`, `post_path`),
//! with the hostname from a format (`%DOWNSTREAM_LOCAL_PORT%`) and `headers_to_add` (values
//! with operators too). The
//! upstream records the request that opened the tunnel and echoes the bytes; an upstream that
//! refuses the tunnel ends the client's connection.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::config::{bootstrap, cluster, listener, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::{H2Upstream, TcpMode, TcpUpstream};
use skiff_tests::{free_port, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tcp_proxy(name: &str, cluster: &str, tunneling: Value) -> Value {
    json!({ "name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": name, "cluster": cluster, "tunneling_config": tunneling } })
}

fn h2_cluster(name: &str, port: u16) -> Value {
    let mut c = cluster(name, &[port]);
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} } } });
    c
}

/// Sends 18 bytes through the proxy on `port`, ends its side, and returns what came back.
async fn through(port: u16) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let _ = s.write_all(b"through the tunnel").await;
    let mut back = Vec::new();
    let mut closed = false;
    while back.len() < 18 {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => back.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let _ = s.shutdown().await;
    if !closed {
        let mut chunk = [0u8; 64];
        closed = matches!(
            tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
    }
    (back, closed)
}

/// A request head as recorded, with its lines sorted after the first.
fn head_lines(received: &[u8]) -> Vec<String> {
    let end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(received.len());
    let mut lines: Vec<String> = String::from_utf8_lossy(&received[..end])
        .split("\r\n")
        .map(|l| l.to_ascii_lowercase())
        .collect();
    lines[1..].sort();
    lines
}

#[tokio::test]
async fn tunneling_config_as_envoy() {
    run(async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let h1 =
                TcpUpstream::start(TcpMode::ReplyThenEcho(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()))
                    .await;
            let refusing = TcpUpstream::start(TcpMode::ReplyThenEcho(
                b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n".to_vec(),
            ))
            .await;
            let h2 = H2Upstream::start("h2").await;
            let post1 =
                TcpUpstream::start(TcpMode::ReplyThenEcho(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()))
                    .await;
            let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
            let headers = json!([
                { "header": { "key": "x-tunnel", "value": "tunnel-1" } },
                { "header": { "key": "x-client", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" } },
                { "header": { "key": "x-none", "value": "%REQ(x-nothing)%" } },
            ]);
            let v = bootstrap(
                free_port(),
                vec![
                    listener(
                        "h1",
                        "127.0.0.1",
                        ports[0],
                        tcp_proxy(
                            "h1",
                            "h1",
                            json!({ "hostname": "target.example:%DOWNSTREAM_LOCAL_PORT%",
                                "headers_to_add": headers }),
                        ),
                    ),
                    listener(
                        "h2",
                        "127.0.0.1",
                        ports[1],
                        tcp_proxy(
                            "h2",
                            "h2",
                            json!({ "hostname": "target.example:443", "headers_to_add": headers }),
                        ),
                    ),
                    listener(
                        "post",
                        "127.0.0.1",
                        ports[2],
                        tcp_proxy(
                            "post",
                            "h2",
                            json!({ "hostname": "target.example:443", "use_post": true,
                                "post_path": "/tunnel/in" }),
                        ),
                    ),
                    listener(
                        "refused",
                        "127.0.0.1",
                        ports[3],
                        tcp_proxy(
                            "refused",
                            "refusing",
                            json!({ "hostname": "target.example:1" }),
                        ),
                    ),
                    listener(
                        "post1",
                        "127.0.0.1",
                        ports[4],
                        tcp_proxy(
                            "post1",
                            "post1",
                            json!({ "hostname": "target.example:443", "use_post": true }),
                        ),
                    ),
                ],
                vec![
                    cluster("h1", &[h1.port()]),
                    h2_cluster("h2", h2.port()),
                    cluster("refusing", &[refusing.port()]),
                    cluster("post1", &[post1.port()]),
                ],
            );
            let _p = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for (name, port) in ["h1", "h2", "post", "refused", "post1"].iter().zip(&ports) {
                let (back, closed) = through(*port).await;
                got.push(format!(
                    "{name}: back={:?} closed={closed}",
                    String::from_utf8_lossy(&back)
                ));
            }
            let h1_seen = h1.wait_finished(1, Duration::from_secs(3)).await;
            let mut head = head_lines(&h1_seen[0].received);
            // The hostname names the listener's port, which differs between the runs.
            head = head
                .into_iter()
                .map(|l| l.replace(&ports[0].to_string(), "PORT"))
                .collect();
            got.push(format!("h1 head: {head:?}"));
            let body = &h1_seen[0].received[h1_seen[0]
                .received
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(0, |i| i + 4)..];
            got.push(format!(
                "h1 tunnel bytes: {:?}",
                String::from_utf8_lossy(body)
            ));
            for r in h2.rec.wait_requests(2, Duration::from_secs(3)).await {
                let mut headers: Vec<String> =
                    r.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                headers.sort();
                got.push(format!(
                    "h2 {} {} {:?} {headers:?}",
                    r.method, r.path, r.authority
                ));
            }
            let refused = refusing.wait_finished(1, Duration::from_secs(3)).await;
            got.push(format!(
                "refused head: {:?}",
                head_lines(&refused[0].received)
                    .into_iter()
                    .map(|l| l.replace(&ports[3].to_string(), "PORT"))
                    .collect::<Vec<_>>()
            ));
            let p1 = post1.wait_finished(1, Duration::from_secs(3)).await;
            got.push(format!(
                "post1 received: {:?}",
                String::from_utf8_lossy(&p1[0].received)
            ));
            seen.push(got);
        }
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        let all = seen[0].join("\n");
        assert!(all.contains("h1: back=\"through the tunnel\""), "{all}");
        assert!(all.contains("h2: back=\"through the tunnel\""), "{all}");
        assert!(all.contains("post: back=\"through the tunnel\""), "{all}");
        assert!(all.contains("transfer-encoding: chunked"), "{all}");
        assert!(all.contains("x-client: 127.0.0.1"), "{all}");
        assert!(all.contains("refused: back=\"\" closed=true"), "{all}");
    })
    .await;
}

#[tokio::test]
async fn invalid_tunneling_configs_are_refused_by_both() {
    use skiff_tests::proxy::{run_cli, write_config};
    run(async {
        for (tunneling, field) in [
            (json!({ "hostname": "a:1", "post_path": "/p" }), "post_path"),
            (json!({ "hostname": "" }), "hostname"),
        ] {
            let v = bootstrap(
                free_port(),
                vec![listener(
                    "l",
                    "127.0.0.1",
                    free_port(),
                    tcp_proxy("l", "c", tunneling.clone()),
                )],
                vec![cluster("c", &[free_port()])],
            );
            let cfg = write_config("bad-tunneling", &to_yaml(&v));
            for kind in [Kind::Envoy, Kind::under_test()] {
                let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert_ne!(out.code, Some(0), "{}: {tunneling} accepted", kind.name());
                if kind != Kind::Envoy {
                    assert!(out.output().contains(field), "{}", out.output());
                }
            }
        }
    })
    .await;
}
