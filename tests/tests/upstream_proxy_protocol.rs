//! `envoy.transport_sockets.upstream_proxy_protocol` on a cluster: every upstream connection
//! starts with a PROXY header (v1 or v2) naming the downstream connection's source and
//! destination, before any byte of the downstream's; for HTTP, no upstream connection carries
//! two downstream connections' requests.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::read_until_close;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, tcp_proxy, to_yaml, vhost};
use skiff_tests::proxy::{start_under_test, ProxyProcess};
use skiff_tests::upstream::{TcpMode, TcpUpstream};
use skiff_tests::{free_port, run};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn upstream_pp(version: &str) -> Value {
    json!({
        "name": "envoy.transport_sockets.upstream_proxy_protocol",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
            "config": { "version": version },
            "transport_socket": {
                "name": "envoy.transport_sockets.raw_buffer",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" }
            }
        }
    })
}

async fn start(up_port: u16, filter: Value, version: &str) -> (ProxyProcess, u16) {
    let (admin, port) = (free_port(), free_port());
    let mut c = cluster("svc", &[up_port]);
    c["transport_socket"] = upstream_pp(version);
    let v = bootstrap(
        admin,
        vec![listener("l", "127.0.0.1", port, filter)],
        vec![c],
    );
    (start_under_test(&to_yaml(&v), &[]).await, port)
}

/// The v2 header for an IPv4 connection.
fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let ip = |a: SocketAddr| match a.ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        std::net::IpAddr::V6(_) => panic!("IPv4 only here"),
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&ip(src));
    h.extend_from_slice(&ip(dst));
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// Sends `hello` through the proxy to the echo upstream and returns the client's address and
/// what came back (the header the upstream received, then `hello`).
async fn echo_through(port: u16) -> (SocketAddr, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let me = s.local_addr().expect("local addr");
    s.write_all(b"hello").await.expect("write");
    s.shutdown().await.expect("half-close");
    (
        me,
        read_until_close(&mut s, Duration::from_secs(5)).await.data,
    )
}

#[tokio::test]
async fn tcp_proxy_sends_a_v1_header_first() {
    run(async {
        let up = TcpUpstream::start(TcpMode::Echo).await;
        let (_p, port) = start(up.port(), tcp_proxy("tcp", "svc"), "V1").await;
        let (me, back) = echo_through(port).await;
        assert_eq!(
            String::from_utf8_lossy(&back),
            format!(
                "PROXY TCP4 127.0.0.1 127.0.0.1 {} {port}\r\nhello",
                me.port()
            )
        );
    })
    .await
}

#[tokio::test]
async fn tcp_proxy_sends_a_v2_header_first() {
    run(async {
        let up = TcpUpstream::start(TcpMode::Echo).await;
        let (_p, port) = start(up.port(), tcp_proxy("tcp", "svc"), "V2").await;
        let (me, back) = echo_through(port).await;
        let mut want = v2_header(me, SocketAddr::from(([127, 0, 0, 1], port)));
        want.extend_from_slice(b"hello");
        assert_eq!(back, want);
    })
    .await
}

#[tokio::test]
async fn http_connections_are_not_shared_between_downstream_connections() {
    run(async {
        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        let up = TcpUpstream::start(TcpMode::ReadThenReply(reply)).await;
        let (_p, port) = start(
            up.port(),
            hcm("in", vec![vhost("all", &["*"], vec![route("/", "svc")])]),
            "V1",
        )
        .await;
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
                .await
                .expect("write");
            let got = skiff_tests::client::read_responses(&mut s, 1, Duration::from_secs(5)).await;
            assert!(
                String::from_utf8_lossy(&got.data).starts_with("HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&got.data)
            );
            clients.push(s.local_addr().expect("local addr"));
        }
        let recs = up.wait_finished(2, Duration::from_secs(5)).await;
        let mut seen: Vec<String> = recs
            .iter()
            .map(|r| {
                let text = String::from_utf8_lossy(&r.received).into_owned();
                assert!(text.contains("\r\nGET / HTTP/1.1\r\n"), "{text}");
                text.lines().next().unwrap_or("").to_string()
            })
            .collect();
        seen.sort();
        let mut want: Vec<String> = clients
            .iter()
            .map(|c| format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {port}", c.port()))
            .collect();
        want.sort();
        assert_eq!(
            seen, want,
            "one upstream connection per downstream connection"
        );
    })
    .await
}

/// A server-first protocol: the client writes nothing, and the upstream still gets the header
/// at once.
#[tokio::test]
async fn tcp_proxy_sends_the_header_before_the_client_says_anything() {
    run(async {
        let up = TcpUpstream::start(TcpMode::GreetThenHalfClose(b"220 ready\r\n".to_vec())).await;
        let (_p, port) = start(up.port(), tcp_proxy("tcp", "svc"), "V1").await;
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let me = s.local_addr().expect("local addr");
        let got = read_until_close(&mut s, Duration::from_secs(5)).await;
        assert_eq!(got.data, b"220 ready\r\n");
        drop(s);
        let recs = up.wait_finished(1, Duration::from_secs(5)).await;
        assert_eq!(
            String::from_utf8_lossy(&recs[0].received),
            format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {port}\r\n", me.port())
        );
    })
    .await
}
