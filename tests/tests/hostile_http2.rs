//! Downstream HTTP/2 settings side by side with Envoy 1.40: the SETTINGS frame each proxy sends
//! (`nghttp -v`), by default and with the HCM's `http2_protocol_options`.

use serde_json::json;
use skiff_tests::client::nghttp;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, vhost};
use skiff_tests::run;
use skiff_tests::side_by_side::{pair, Side, Up};

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
