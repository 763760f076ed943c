//! How upstream connections end, against Envoy 1.40: `upstream_cx_destroy` split into
//! `_local` and `_remote` (who closed it) and `_with_active_rq` (a request was on it). Each
//! cluster ends its connections one way: the response says `connection: close` (skiff closes),
//! the upstream closes without answering (remote, a request on it), the upstream closes an
//! idle keep-alive connection (remote), the pool's idle timeout (skiff), and tcp_proxy with the
//! upstream or the client closing first.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, tcp_proxy, vhost};
use skiff_tests::ports::free_port;
use skiff_tests::run_for;
use skiff_tests::side_by_side::{pair, Side, Up};
use skiff_tests::upstream::{EchoOptions, EchoUpstream, TcpMode, TcpUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTERS: [&str; 6] = ["close", "reset", "reply", "idle", "tcp_greet", "tcp_echo"];
const SPLIT: [&str; 6] = [
    "upstream_cx_destroy",
    "upstream_cx_destroy_local",
    "upstream_cx_destroy_remote",
    "upstream_cx_destroy_with_active_rq",
    "upstream_cx_destroy_local_with_active_rq",
    "upstream_cx_destroy_remote_with_active_rq",
];

async fn http(side: &Side, path: &str) -> u16 {
    curl(&[&format!("http://127.0.0.1:{}{path}", side.port)])
        .await
        .resp
        .status
}

#[tokio::test]
async fn upstream_connection_ends_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut o = EchoOptions::named("close");
        o.extra_headers = vec![("connection".into(), "close".into())];
        let close = EchoUpstream::with_options(o).await;
        let reset = TcpUpstream::start(TcpMode::ReadThenClose).await;
        let reply = TcpUpstream::start(TcpMode::ReadThenReply(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        ))
        .await;
        let greet = TcpUpstream::start(TcpMode::GreetThenHalfClose(b"hi".to_vec())).await;
        let echo = TcpUpstream::start(TcpMode::Echo).await;
        let tcp_ports = Mutex::new(Vec::new());
        let build = |admin: u16, listen: u16, upstream: u16| {
            let routes = ["close", "reset", "reply", "idle"]
                .iter()
                .map(|c| route(&format!("/{c}"), c))
                .collect();
            let (g, e) = (free_port(), free_port());
            tcp_ports.lock().unwrap().push((g, e));
            let mut idle = cluster("idle", &[upstream]);
            idle["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "common_http_protocol_options": {"idle_timeout": "0.3s"},
                    "explicit_http_config": {"http_protocol_options": {}}
                }
            });
            bootstrap(
                admin,
                vec![
                    listener("l", "127.0.0.1", listen, hcm("ends", vec![vhost("all", &["*"], routes)])),
                    listener("g", "127.0.0.1", g, tcp_proxy("greet", "tcp_greet")),
                    listener("e", "127.0.0.1", e, tcp_proxy("echo", "tcp_echo")),
                ],
                vec![
                    cluster("close", &[close.port()]),
                    cluster("reset", &[reset.port()]),
                    cluster("reply", &[reply.port()]),
                    idle,
                    cluster("tcp_greet", &[greet.port()]),
                    cluster("tcp_echo", &[echo.port()]),
                ],
            )
            .to_string()
        };
        let (e, s) = pair(Up::H1, build).await;
        let ports = tcp_ports.lock().unwrap().clone();
        for (side, (greet_port, echo_port)) in [(&e, ports[0]), (&s, ports[1])] {
            assert_eq!(http(side, "/close").await, 200);
            assert_eq!(http(side, "/reset").await, 503);
            assert_eq!(http(side, "/reply").await, 200);
            assert_eq!(http(side, "/idle").await, 200);
            // The upstream greets and closes first; the client reads to the end, then closes.
            let mut c = tokio::net::TcpStream::connect(("127.0.0.1", greet_port))
                .await
                .expect("connect");
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut got)).await;
            assert_eq!(got, b"hi");
            drop(c);
            // The client closes first.
            let mut c = tokio::net::TcpStream::connect(("127.0.0.1", echo_port))
                .await
                .expect("connect");
            c.write_all(b"x").await.expect("write");
            let mut one = [0u8; 1];
            c.read_exact(&mut one).await.expect("echo");
            drop(c);
        }
        // The idle timeout (0.3 s) passes; every connection has ended.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let (ae, as_) = (e.proxy.admin(), s.proxy.admin());
        let mut table = String::new();
        let mut differ = Vec::new();
        for c in CLUSTERS {
            for stat in SPLIT {
                let name = format!("cluster.{c}.{stat}");
                let (ve, vs) = (ae.counter(&name).await, as_.counter(&name).await);
                table.push_str(&format!("{name:60} envoy {ve} skiff {vs}\n"));
                if ve != vs {
                    differ.push(name);
                }
            }
        }
        eprintln!("{table}");
        assert!(differ.is_empty(), "differ: {differ:?}\n{table}");
        assert_eq!(as_.counter("cluster.reset.upstream_cx_destroy_remote_with_active_rq").await, 1);
        assert_eq!(as_.counter("cluster.idle.upstream_cx_destroy_local").await, 1);
    })
    .await
}
