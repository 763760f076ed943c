//! Downstream HTTP/2 side by side with Envoy 1.40: the SETTINGS frame each proxy sends
//! (`nghttp -v`), by default and with the HCM's `http2_protocol_options`, and the premature-reset
//! ("rapid reset") protection against a paced client that resets every stream it opens.

use std::time::Duration;

use serde_json::json;
use skiff_tests::client::nghttp;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, vhost};
use skiff_tests::side_by_side::{pair, Side, Up};
use skiff_tests::upstream::TcpMode;
use skiff_tests::{run, run_for};

/// The value of one setting in the first SETTINGS frame the server sent.
fn setting(output: &str, name: &str) -> Option<u64> {
    let start = output.find("recv SETTINGS frame")?;
    let frame = &output[start..];
    let end = frame[1..].find("recv ").map_or(frame.len(), |i| i + 1);
    frame[..end]
        .lines()
        .find(|l| l.contains(&format!("[{name}(")))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.trim_end_matches(']').trim().parse().ok())
}

async fn settings(side: &Side) -> String {
    let url = side.url("/");
    nghttp(&["-H", "host: diff.example.com", url.as_str()])
        .await
        .output
}

fn with_h2(h2: Option<serde_json::Value>) -> impl Fn(u16, u16, u16) -> String {
    move |admin, listen, upstream| {
        let mut m = hcm("h2", vec![vhost("all", &["*"], vec![route("/", "up")])]);
        if let Some(h2) = &h2 {
            m["typed_config"]["http2_protocol_options"] = h2.clone();
        }
        bootstrap(
            admin,
            vec![listener("l", "127.0.0.1", listen, m)],
            vec![cluster("up", &[upstream])],
        )
        .to_string()
    }
}

#[tokio::test]
async fn default_max_concurrent_streams_as_envoy() {
    run(async {
        let (e, s) = pair(Up::H1, with_h2(None)).await;
        let (oe, os) = (settings(&e).await, settings(&s).await);
        let name = "SETTINGS_MAX_CONCURRENT_STREAMS";
        assert_eq!(setting(&oe, name), Some(1024), "envoy:\n{oe}");
        assert_eq!(setting(&os, name), setting(&oe, name), "skiff:\n{os}");
    })
    .await
}

#[tokio::test]
async fn configured_http2_options_as_envoy() {
    run(async {
        let h2 = json!({
            "max_concurrent_streams": 7,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576
        });
        let (e, s) = pair(Up::H1, with_h2(Some(h2))).await;
        let (oe, os) = (settings(&e).await, settings(&s).await);
        for name in [
            "SETTINGS_MAX_CONCURRENT_STREAMS",
            "SETTINGS_INITIAL_WINDOW_SIZE",
        ] {
            assert!(setting(&oe, name).is_some(), "envoy sends {name}:\n{oe}");
            assert_eq!(
                setting(&os, name),
                setting(&oe, name),
                "{name}\nenvoy:\n{oe}\nskiff:\n{os}"
            );
        }
        assert_eq!(setting(&oe, "SETTINGS_MAX_CONCURRENT_STREAMS"), Some(7));
    })
    .await
}

/// Opens `streams` streams one after another on one connection, resetting each 2 ms after its
/// headers went out; returns how many were sent before the proxy closed the connection.
async fn rapid_reset(port: u16, streams: usize) -> (usize, bool) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn_task = tokio::spawn(conn);
    let mut sent = 0;
    for _ in 0..streams {
        let ready = tokio::time::timeout(Duration::from_secs(2), client.clone().ready()).await;
        let Ok(Ok(ready)) = ready else { break };
        client = ready;
        let req = http::Request::builder()
            .method("GET")
            .uri("http://diff.example.com/rapid-reset")
            .body(())
            .expect("request");
        let Ok((resp, mut stream)) = client.send_request(req, false) else {
            break;
        };
        sent += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
        stream.send_reset(h2::Reason::CANCEL);
        drop(resp);
        if conn_task.is_finished() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    (sent, conn_task.is_finished())
}

#[tokio::test]
async fn rapid_reset_closes_the_connection_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let (e, s) = pair(
            Up::Raw(TcpMode::Stall(Duration::from_secs(30))),
            with_h2(None),
        )
        .await;
        let mut seen = Vec::new();
        for side in [&e, &s] {
            let (sent, closed) = rapid_reset(side.port, 1000).await;
            let admin = side.proxy.admin();
            let too_many = admin
                .counter("http.h2.downstream_rq_too_many_premature_resets")
                .await;
            let upstream = admin.counter("cluster.up.upstream_rq_total").await;
            let rx_reset = admin.counter("http2.rx_reset").await;
            seen.push((side.proxy.kind.name(), sent, closed, too_many, upstream, rx_reset));
        }
        let (envoy, skiff) = (seen[0], seen[1]);
        eprintln!("(proxy, streams sent, closed, too_many_premature_resets, upstream_rq_total, http2.rx_reset): {envoy:?} {skiff:?}");
        assert!(envoy.2 && skiff.2, "both close the connection: {seen:?}");
        assert_eq!(envoy.3, 1, "{seen:?}");
        assert_eq!(skiff.3, 1, "{seen:?}");
        // The connection closes at the same count of premature resets (250 of the first 500).
        assert!(envoy.1.abs_diff(skiff.1) <= 5, "{seen:?}");
        assert!(skiff.4 <= envoy.4 + 10, "upstream requests bounded as Envoy's: {seen:?}");
        assert!(envoy.5.abs_diff(skiff.5) <= 5, "http2.rx_reset: {seen:?}");
    })
    .await
}
