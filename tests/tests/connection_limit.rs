//! `envoy.filters.network.connection_limit` side by side with Envoy 1.40: at most
//! `max_connections` open at once through the filter, over every worker; one more is closed
//! (after `delay` when set) and counted in `connection_limit.<prefix>.limited_connections`; a
//! connection that closes makes room; `runtime_enabled` turns the filter off.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_tests::client::read_until_close;
use skiff_tests::config::{bootstrap, cluster, listener, tcp_proxy, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::{TcpMode, TcpUpstream};
use skiff_tests::{free_port, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limit(prefix: &str, max: u64, delay: Option<&str>) -> Value {
    let mut c = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
        "stat_prefix": prefix,
        "max_connections": max,
        "runtime_enabled": { "default_value": true, "runtime_key": format!("{prefix}.enabled") }
    });
    if let Some(d) = delay {
        c["delay"] = json!(d);
    }
    json!({ "name": "envoy.filters.network.connection_limit", "typed_config": c })
}

struct Side {
    kind: Kind,
    proxy: ProxyProcess,
    /// The listener limited to two connections at once, and the one limited to one with a
    /// delay.
    ports: (u16, u16),
}

async fn start(kind: Kind, up: u16) -> Side {
    let (admin, a, b) = (free_port(), free_port(), free_port());
    let mut la = listener("a", "127.0.0.1", a, json!({}));
    la["filter_chains"][0]["filters"] = json!([limit("two", 2, None), tcp_proxy("tcp_a", "svc")]);
    let mut lb = listener("b", "127.0.0.1", b, json!({}));
    lb["filter_chains"][0]["filters"] =
        json!([limit("delayed", 1, Some("0.4s")), tcp_proxy("tcp_b", "svc")]);
    let mut v = bootstrap(admin, vec![la, lb], vec![cluster("svc", &[up])]);
    v["layered_runtime"] = json!({ "layers": [ { "name": "admin", "admin_layer": {} } ] });
    let proxy = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "2"]).await;
    Side {
        kind,
        proxy,
        ports: (a, b),
    }
}

/// A connection the echo answers through.
async fn open(port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(b"ping").await.ok()?;
    let mut buf = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) if &buf == b"ping" => Some(s),
        _ => None,
    }
}

/// A connection the proxy closes: how long it took (it never answers).
async fn refused(port: u16) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let _ = s.write_all(b"ping").await;
    let got = read_until_close(&mut s, Duration::from_secs(3)).await;
    assert!(got.closed, "not closed");
    assert!(got.data.is_empty(), "{:?}", got.data);
    start.elapsed()
}

async fn stat(side: &Side, name: &str) -> u64 {
    side.proxy.admin().stat(name).await.unwrap_or(0)
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_as_by_envoy() {
    run(async {
        let up = TcpUpstream::start(TcpMode::Echo).await;
        for side in [
            start(Kind::Envoy, up.port()).await,
            start(Kind::under_test(), up.port()).await,
        ] {
            let name = side.kind.name();
            let (a, b) = side.ports;
            let first = open(a).await.expect("first");
            let second = open(a).await.expect("second");
            let took = refused(a).await;
            assert!(took < Duration::from_millis(300), "{name}: {took:?}");
            assert_eq!(
                stat(&side, "connection_limit.two.limited_connections").await,
                1,
                "{name}"
            );
            assert_eq!(
                stat(&side, "connection_limit.two.active_connections").await,
                2,
                "{name}"
            );
            // A connection that closes makes room for another.
            drop(first);
            let mut third = None;
            for _ in 0..20 {
                third = open(a).await;
                if third.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(third.is_some(), "{name}: no room after a close");

            // With a delay, the connection over the limit is held that long, then closed.
            let held = open(b).await.expect("held");
            let took = refused(b).await;
            assert!(
                took >= Duration::from_millis(350) && took < Duration::from_secs(2),
                "{name}: closed after {took:?}"
            );
            assert_eq!(
                stat(&side, "connection_limit.delayed.limited_connections").await,
                1,
                "{name}"
            );

            // Turned off by the runtime: nothing is limited (nor counted). (A retry above may
            // have been refused while the proxy had not yet seen the close.)
            let limited = stat(&side, "connection_limit.two.limited_connections").await;
            let r = side
                .proxy
                .admin()
                .post("/runtime_modify?two.enabled=false")
                .await;
            assert_eq!(r.status, 200, "{name}");
            let more = open(a).await;
            assert!(more.is_some(), "{name}: limited while turned off");
            assert_eq!(
                stat(&side, "connection_limit.two.limited_connections").await,
                limited,
                "{name}"
            );
            drop((second, third, held, more));
        }
    })
    .await
}
