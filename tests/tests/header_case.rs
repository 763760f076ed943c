//! HTTP/1.1 `header_key_format` side by side with Envoy 1.40: `proper_case_words` and the
//! `preserve_case` stateful formatter on the connection manager and on the cluster. What the
//! upstream receives and what the client gets are compared byte for byte in their header
//! names (values that vary, as dates and request ids, masked; header order aside).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::raw_exchange;
use skiff_tests::config::{cluster, hcm_config, simple_http, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::{free_port, run_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUEST: &[u8] =
    b"GET /x HTTP/1.1\r\nHoSt: a\r\nX-Foo-Bar: 1\r\nUser-AGENT: me\r\nConnection: close\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nX-Resp-Header: v\r\nContent-Type: text/plain\r\nX-Foo-Bar: r\r\nContent-Length: 2\r\n\r\nok";

/// An upstream that records each request head and answers with mixed-case names.
async fn upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                while !data.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
                h.lock()
                    .expect("heads")
                    .push(String::from_utf8_lossy(&data).into_owned());
                let _ = s.write_all(RESPONSE).await;
            });
        }
    });
    (port, heads)
}

fn preserve() -> Value {
    json!({ "header_key_format": { "stateful_formatter": {
        "name": "preserve_case",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig" }
    } } })
}

fn proper() -> Value {
    json!({ "header_key_format": { "proper_case_words": {} } })
}

/// The header lines of a head, values that vary masked, sorted.
fn names(head: &str) -> Vec<String> {
    let mut lines: Vec<String> = head
        .split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap_or((l, ""));
            match name.to_ascii_lowercase().as_str() {
                "date" | "x-request-id" | "x-envoy-upstream-service-time" => {
                    format!("{name}: <v>")
                }
                _ => format!("{name}:{value}"),
            }
        })
        .collect();
    lines.sort();
    lines
}

/// What the upstream and the client saw through `kind` with the HCM's and the cluster's
/// `http_protocol_options`.
async fn through(
    kind: Kind,
    down: &Option<Value>,
    up: &Option<Value>,
) -> (Vec<String>, Vec<String>) {
    let (port, heads) = upstream().await;
    let (admin, listen) = (free_port(), free_port());
    let mut b = simple_http(admin, listen, &[port]);
    if let Some(o) = down {
        hcm_config(&mut b)["http_protocol_options"] = o.clone();
    }
    if let Some(o) = up {
        let mut c = cluster("backend", &[port]);
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http_protocol_options": o }
            }
        });
        b["static_resources"]["clusters"][0] = c;
    }
    let _p = ProxyProcess::start(kind, &to_yaml(&b), &["--concurrency", "1"]).await;
    let reply = raw_exchange(
        &format!("127.0.0.1:{listen}"),
        REQUEST,
        Duration::from_secs(3),
    )
    .await;
    let sent = heads
        .lock()
        .expect("heads")
        .first()
        .cloned()
        .unwrap_or_default();
    (names(&sent), names(&reply.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_key_formats_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let cases: Vec<(&str, Option<Value>, Option<Value>)> = vec![
            (
                "preserve_case on the connection manager",
                Some(preserve()),
                None,
            ),
            ("preserve_case on both", Some(preserve()), Some(preserve())),
            ("preserve_case on the cluster", None, Some(preserve())),
            ("proper_case_words on both", Some(proper()), Some(proper())),
        ];
        for (what, down, up) in &cases {
            let (e, s) = tokio::join!(
                through(Kind::Envoy, down, up),
                through(Kind::under_test(), down, up)
            );
            assert!(
                !e.0.is_empty() && !e.1.is_empty(),
                "{what}: envoy saw nothing"
            );
            assert_eq!(e.0, s.0, "{what}: what the upstream received");
            assert_eq!(e.1, s.1, "{what}: what the client got");
            eprintln!("{what}:\n  upstream {:?}\n  client {:?}", s.0, s.1);
        }
        // What the cases show, so that the comparison cannot pass on two empty heads.
        let (up, down) = through(Kind::under_test(), &Some(preserve()), &Some(preserve())).await;
        assert!(up.iter().any(|l| l == "X-Foo-Bar: 1") && up.iter().any(|l| l == "HoSt: a"));
        assert!(down.iter().any(|l| l == "X-Resp-Header: v"), "{down:?}");
        let (up, down) = through(Kind::under_test(), &Some(proper()), &Some(proper())).await;
        assert!(up.iter().any(|l| l == "X-Forwarded-Proto: http"), "{up:?}");
        assert!(
            down.iter().any(|l| l == "Content-Type: text/plain"),
            "{down:?}"
        );
    })
    .await;
}
