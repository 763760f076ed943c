//! tcp_proxy: bytes pass through untouched, half-close both ways, weighted clusters, idle
//! timeout, stats and the access log line.

use std::time::{Duration, Instant};

use serde_json::json;
use skiff_tests::client::read_until_close;
use skiff_tests::config::{bootstrap, cluster, listener, tcp_proxy, to_yaml};
use skiff_tests::ports::free_port_v6;
use skiff_tests::proxy::{start_under_test, ProxyProcess};
use skiff_tests::upstream::{EchoUpstream, TcpMode, TcpUpstream};
use skiff_tests::{free_port, refused_port, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn tcp_setup(up_port: u16, edit: impl FnOnce(&mut serde_json::Value)) -> (ProxyProcess, u16) {
    let (admin, port) = (free_port(), free_port());
    let mut v = bootstrap(
        admin,
        vec![listener(
            "tcp",
            "127.0.0.1",
            port,
            tcp_proxy("tcp_a", "svc"),
        )],
        vec![cluster("svc", &[up_port])],
    );
    edit(&mut v);
    (start_under_test(&to_yaml(&v), &[]).await, port)
}

#[tokio::test]
async fn bytes_pass_through_and_client_half_close() {
    run(async {
        let up = TcpUpstream::start(TcpMode::Echo).await;
        let (p, port) = tcp_setup(up.port(), |_| {}).await;
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
        let (mut rd, mut wr) = s.split();
        let send = async {
            wr.write_all(&payload).await.expect("write");
            wr.shutdown().await.expect("half-close");
        };
        let mut back = Vec::new();
        let recv = async {
            rd.read_to_end(&mut back).await.expect("read to EOF");
        };
        tokio::join!(send, recv);
        assert_eq!(
            back.len(),
            payload.len(),
            "the echo came back whole, then EOF"
        );
        assert!(back == payload);
        let rec = up.wait_finished(1, Duration::from_secs(5)).await;
        assert!(
            rec[0].saw_eof,
            "the client's FIN reached the upstream as a FIN"
        );
        assert_eq!(rec[0].received.len(), payload.len());
        let admin = p.admin();
        admin
            .wait_stat(
                "tcp.tcp_a.downstream_cx_total",
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
        admin
            .wait_stat(
                "cluster.svc.upstream_cx_total",
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
        admin
            .wait_stat(
                &format!("listener.127.0.0.1_{port}.downstream_cx_total"),
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
    })
    .await
}

#[tokio::test]
async fn upstream_half_close_keeps_client_direction_open() {
    run(async {
        let up = TcpUpstream::start(TcpMode::GreetThenHalfClose(
            b"hello from upstream\n".to_vec(),
        ))
        .await;
        let (_p, port) = tcp_setup(up.port(), |_| {}).await;
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut greeting = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut greeting))
            .await
            .expect("EOF from the upstream's half-close")
            .expect("read");
        assert_eq!(greeting, b"hello from upstream\n");
        s.write_all(b"still talking")
            .await
            .expect("write after upstream FIN");
        s.shutdown().await.expect("half-close");
        let rec = up.wait_finished(1, Duration::from_secs(5)).await;
        assert_eq!(
            rec[0].received, b"still talking",
            "data after the upstream's FIN arrived"
        );
        assert!(rec[0].saw_eof);
    })
    .await
}

#[tokio::test]
async fn http_passes_untouched() {
    run(async {
        let up = EchoUpstream::start("u1").await;
        let (_p, port) = tcp_setup(up.port(), |_| {}).await;
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"GET /raw HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let reply = read_until_close(&mut s, Duration::from_secs(5)).await;
        let text = reply.text();
        assert!(
            text.contains("server: BaseHTTP/0.6 Python/3.11.7"),
            "{text}"
        );
        assert!(
            text.contains("keep-alive: timeout=5"),
            "no HTTP rewriting: {text}"
        );
        let got = up.rec.last();
        assert!(!got.has("x-request-id") && !got.has("x-forwarded-proto"));
        assert_eq!(got.header("connection"), Some("close"));
    })
    .await
}

/// Envoy's tcp_proxy access log line (reference §3).
#[tokio::test]
async fn access_log_line() {
    run(async {
        let up = TcpUpstream::start(TcpMode::Echo).await;
        let (p, port) = tcp_setup(up.port(), |v| {
            v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]["access_log"] = json!([skiff_tests::config::stdout_log()]);
        })
        .await;
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"12345").await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("read");
        let line = p
            .wait_stdout_line(Duration::from_secs(5), |l| l.contains("\"- - -\""))
            .await;
        // [..] "- - -" 0 - 5 5 DUR - "-" "-" "-" "-" "127.0.0.1:PORT"
        let after = line.split_once("] ").map(|x| x.1).unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        assert_eq!(&fields[..5], ["\"-", "-", "-\"", "0", "-"], "{line:?}");
        assert_eq!(
            (fields[5], fields[6]),
            ("5", "5"),
            "bytes received/sent: {line:?}"
        );
        assert!(fields[7].parse::<u64>().is_ok());
        assert!(
            after.ends_with(&format!("\"-\" \"-\" \"-\" \"-\" \"{}\"", up.addr)),
            "{line:?}"
        );
    })
    .await
}

#[tokio::test]
async fn idle_timeout_closes_both_sides() {
    run(async {
        let up = TcpUpstream::start(TcpMode::Echo).await;
        let (p, port) = tcp_setup(up.port(), |v| {
            v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]["idle_timeout"] = json!("1s");
        })
        .await;
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"x").await.expect("write");
        let started = Instant::now();
        let reply = read_until_close(&mut s, Duration::from_secs(5)).await;
        assert!(reply.closed, "the idle connection was closed");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(3),
            "closed after {took:?}, expected about 1 s"
        );
        assert_eq!(reply.data, b"x");
        p.admin()
            .wait_stat("tcp.tcp_a.idle_timeout", Duration::from_secs(5), |v| v == 1)
            .await;
        up.wait_finished(1, Duration::from_secs(5)).await;
    })
    .await
}

#[tokio::test]
async fn upstream_refused_closes_the_client() {
    run(async {
        let (p, port) = tcp_setup(refused_port(), |_| {}).await;
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let _ = s.write_all(b"hello").await;
        let reply = read_until_close(&mut s, Duration::from_secs(5)).await;
        assert!(
            reply.closed,
            "the client is closed when the upstream refuses"
        );
        assert!(reply.data.is_empty());
        p.admin()
            .wait_stat(
                "cluster.svc.upstream_cx_connect_fail",
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
    })
    .await
}

#[tokio::test]
async fn weighted_clusters() {
    run(async {
        let a = TcpUpstream::start(TcpMode::Echo).await;
        let b = TcpUpstream::start(TcpMode::Echo).await;
        let c = TcpUpstream::start(TcpMode::Echo).await;
        let (admin, p_all_b, p_split) = (free_port(), free_port(), free_port());
        // Weights must be >= 1 (proto validation), so "all to b" is a one-entry list.
        let weighted = |prefix: &str, clusters: serde_json::Value| {
            json!({
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": skiff_tests::config::TCP_PROXY_TYPE,
                    "stat_prefix": prefix,
                    "weighted_clusters": { "clusters": clusters }
                }
            })
        };
        let v = bootstrap(
            admin,
            vec![
                listener(
                    "all_b",
                    "127.0.0.1",
                    p_all_b,
                    weighted("only_b", json!([{ "name": "b", "weight": 1 }])),
                ),
                listener(
                    "split",
                    "127.0.0.1",
                    p_split,
                    weighted(
                        "a_and_c",
                        json!([{ "name": "a", "weight": 1 }, { "name": "c", "weight": 1 }]),
                    ),
                ),
            ],
            vec![
                cluster("a", &[a.port()]),
                cluster("b", &[b.port()]),
                cluster("c", &[c.port()]),
            ],
        );
        let _p = start_under_test(&to_yaml(&v), &[]).await;
        for port in std::iter::repeat_n(p_all_b, 5).chain(std::iter::repeat_n(p_split, 40)) {
            let mut s = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            s.write_all(b"w").await.expect("write");
            s.shutdown().await.expect("half-close");
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.expect("read");
            assert_eq!(back, b"w");
        }
        b.wait_finished(5, Duration::from_secs(5)).await;
        assert_eq!(b.accepted(), 5, "a single weighted cluster gets everything");
        assert_eq!(a.accepted() + c.accepted(), 40);
        assert!(
            a.accepted() > 0 && c.accepted() > 0,
            "1:1 spreads 40 connections over a and c: a={} c={}",
            a.accepted(),
            c.accepted()
        );
    })
    .await
}

#[tokio::test]
async fn ipv6_listener() {
    run(async {
        let up = TcpUpstream::start(TcpMode::Echo).await;
        let (admin, port) = (free_port(), free_port_v6());
        let v = bootstrap(
            admin,
            vec![listener("tcp6", "::1", port, tcp_proxy("tcp6", "svc"))],
            vec![cluster("svc", &[up.port()])],
        );
        let p = start_under_test(&to_yaml(&v), &[]).await;
        let mut s = TcpStream::connect(("::1", port))
            .await
            .expect("connect [::1]");
        s.write_all(b"six").await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"six");
        p.admin()
            .wait_stat(
                &format!("listener.[__1]_{port}.downstream_cx_total"),
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
    })
    .await
}

/// skiff's contract: a tcp_proxy field it does not honour (here `max_connect_attempts`) is refused
/// with its field path rather than silently dropped.
#[tokio::test]
async fn unsupported_field_is_reported() {
    run(async {
        if skiff_tests::proxy::skiff_only("unsupported_field_is_reported") {
            return;
        }
        let (admin, port) = (free_port(), free_port());
        let mut v = bootstrap(
            admin,
            vec![listener("tcp", "127.0.0.1", port, tcp_proxy("tcp_a", "svc"))],
            vec![cluster("svc", &[free_port()])],
        );
        v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["max_connect_attempts"] = json!(2);
        let cfg = skiff_tests::proxy::write_config("tcp-unsupported", &to_yaml(&v));
        let path = cfg.path();
        let out = skiff_tests::proxy::run_cli(
            skiff_tests::Kind::Skiff,
            &["--mode", "validate", "-c", path],
        )
        .await;
        assert_ne!(out.code, Some(0));
        assert!(
            out.output().contains(
                "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.max_connect_attempts: unsupported"
            ),
            "{}",
            out.output()
        );
    })
    .await
}
