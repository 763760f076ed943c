//! Network filter chains of several filters: `envoy.filters.network.local_ratelimit` in front
//! of tcp_proxy and of the HTTP connection manager. A new connection takes a token from a
//! bucket shared by every worker, or is reset at once (`local_rate_limit.<prefix>.rate_limited`);
//! tokens come back each `fill_interval`. Misplaced filters and a too-fast timer are refused.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{get, http1_once, read_until_close};
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, tcp_proxy, to_yaml, vhost};
use skiff_tests::proxy::{run_cli, start_under_test, write_config, Kind, ProxyProcess};
use skiff_tests::upstream::{EchoUpstream, TcpMode, TcpUpstream};
use skiff_tests::{free_port, run};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn ratelimit(prefix: &str, max_tokens: u32, fill_interval: &str) -> Value {
    json!({
        "name": "envoy.filters.network.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": prefix,
            "token_bucket": { "max_tokens": max_tokens, "fill_interval": fill_interval }
        }
    })
}

/// A listener whose chain is `filters`, to cluster `svc` on `up_port`.
async fn start(up_port: u16, filters: Vec<Value>) -> (ProxyProcess, u16) {
    let (admin, port) = (free_port(), free_port());
    let mut l = listener("l", "127.0.0.1", port, json!({}));
    l["filter_chains"][0]["filters"] = json!(filters);
    let v = bootstrap(admin, vec![l], vec![cluster("svc", &[up_port])]);
    (start_under_test(&to_yaml(&v), &[]).await, port)
}

/// Sends `hello` on a new connection, half-closes, and returns what came back.
async fn echo_once(port: u16) -> Vec<u8> {
    let mut s = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        // Reset before connect() even returned: closed with nothing, too.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Vec::new(),
        Err(e) => panic!("connect: {e}"),
    };
    // A closed connection may refuse the write; what matters is what comes back.
    let _ = s.write_all(b"hello").await;
    let _ = s.shutdown().await;
    read_until_close(&mut s, Duration::from_secs(5)).await.data
}

#[tokio::test]
async fn tcp_connections_beyond_the_bucket_are_closed() {
    run(async {
        let up = TcpUpstream::start(TcpMode::Echo).await;
        let (p, port) = start(
            up.port(),
            vec![ratelimit("lr", 2, "60s"), tcp_proxy("tcp", "svc")],
        )
        .await;
        assert_eq!(echo_once(port).await, b"hello");
        assert_eq!(echo_once(port).await, b"hello");
        assert_eq!(
            echo_once(port).await,
            b"",
            "the third connection is closed at once"
        );
        let admin = p.admin();
        admin
            .wait_stat(
                "local_rate_limit.lr.rate_limited",
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
        // As in Envoy, the terminal filter counted the reset connection too.
        assert_eq!(admin.counter("tcp.tcp.downstream_cx_total").await, 3);
        assert_eq!(admin.counter("cluster.svc.upstream_cx_total").await, 2);
    })
    .await
}

#[tokio::test]
async fn http_connections_get_tokens_back_each_fill_interval() {
    run(async {
        let up = EchoUpstream::start("svc").await;
        let (p, port) = start(
            up.port(),
            vec![
                ratelimit("web", 1, "1s"),
                hcm("in", vec![vhost("all", &["*"], vec![route("/", "svc")])]),
            ],
        )
        .await;
        let addr = format!("127.0.0.1:{port}");
        let first = http1_once(&addr, get("/", "svc")).await.expect("first");
        assert_eq!(first.status, 200);
        assert!(
            http1_once(&addr, get("/", "svc")).await.is_err(),
            "no token left: the connection is closed"
        );
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let again = http1_once(&addr, get("/", "svc"))
            .await
            .expect("after a fill");
        assert_eq!(again.status, 200);
        let admin = p.admin();
        assert_eq!(admin.counter("local_rate_limit.web.rate_limited").await, 1);
        assert_eq!(admin.counter("http.in.downstream_cx_total").await, 3);
    })
    .await
}

#[tokio::test]
async fn misplaced_filters_and_fast_timers_are_refused() {
    run(async {
        for (filters, want) in [
            (vec![tcp_proxy("tcp", "svc")], None),
            (
                vec![tcp_proxy("tcp", "svc"), ratelimit("lr", 1, "1s")],
                Some("filters[0]"),
            ),
            (vec![ratelimit("lr", 1, "1s")], Some("filters[0]")),
            (
                vec![ratelimit("lr", 1, "0.010s"), tcp_proxy("tcp", "svc")],
                Some("fill_interval"),
            ),
        ] {
            let mut l = listener("l", "127.0.0.1", free_port(), json!({}));
            l["filter_chains"][0]["filters"] = json!(filters);
            let v = bootstrap(free_port(), vec![l], vec![cluster("svc", &[free_port()])]);
            let cfg = write_config("local-ratelimit", &to_yaml(&v));
            let out = run_cli(
                Kind::under_test(),
                &["--mode", "validate", "-c", cfg.path()],
            )
            .await;
            match want {
                None => assert_eq!(out.code, Some(0), "{}", out.output()),
                Some(field) => {
                    assert_ne!(out.code, Some(0), "{filters:?}: {}", out.output());
                    if Kind::under_test() == Kind::Skiff {
                        assert!(out.output().contains(field), "{}", out.output());
                    }
                }
            }
        }
    })
    .await
}
