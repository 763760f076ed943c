//! The connection manager's `http_protocol_options` side by side with Envoy 1.40:
//! - `accept_http_10` and `default_host_for_http_10`: the reply (an HTTP/1.0 status line,
//!   `connection: close` unless the client asked to keep the connection), whether the
//!   connection closes, and what the upstream receives (HTTP/1.1, the default host);
//! - `allow_chunked_length`: a request with both framings is taken as chunked;
//! - `ignore_http_11_upgrade`: matching upgrades are ordinary requests.

use std::time::Duration;

use serde_json::json;
use skiff_tests::client::raw_exchange;
use skiff_tests::config::{hcm_config, simple_http, to_yaml};
use skiff_tests::run_for;
use skiff_tests::side_by_side::{assert_same_upstream, pair, raw_both, Up};

const CASES: &[(&str, &[u8])] = &[
    ("no host: the default", b"GET /a HTTP/1.0\r\n\r\n"),
    ("own host", b"GET /b HTTP/1.0\r\nHost: own.example\r\n\r\n"),
    (
        "body with content-length",
        b"POST /c HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
    ),
    (
        "keep-alive asked",
        b"GET /d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http10_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let (e, s) = pair(Up::H1, |admin, listen, upstream| {
            let mut b = simple_http(admin, listen, &[upstream]);
            hcm_config(&mut b)["http_protocol_options"] =
                json!({ "accept_http_10": true, "default_host_for_http_10": "default.example" });
            to_yaml(&b)
        })
        .await;
        for (what, bytes) in CASES {
            let (re, _) = raw_both(&e, &s, what, bytes).await;
            assert!(
                re.text().starts_with("HTTP/1.0 200"),
                "{what}: {}",
                re.text()
            );
            assert_same_upstream(what, &e, &s);
        }
        let r = s.rec.requests();
        assert_eq!(r[0].header("host"), Some("default.example"));
        // Without accept_http_10 both answer 426 (tests/hostile_http1.rs); with it the
        // connection manager counts HTTP/1.1 requests.
        for side in [&e, &s] {
            let a = side.proxy.admin();
            assert_eq!(
                a.counter("http.ingress_http.downstream_rq_http1_total")
                    .await,
                CASES.len() as u64
            );
        }
    })
    .await;
}

const CHUNKED_LENGTH: &[(&str, &[u8])] = &[
    (
        "length then chunked",
        b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
    (
        "chunked then length",
        b"POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    ),
];

const CHUNKED_LENGTH_REFUSED: &[(&str, &[u8])] = &[
    (
        "length with identity",
        b"POST /g HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: identity\r\n\r\nabc",
    ),
    (
        "two lengths with chunked",
        b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_chunked_length_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let (e, s) = pair(Up::H1, |admin, listen, upstream| {
            let mut b = simple_http(admin, listen, &[upstream]);
            hcm_config(&mut b)["http_protocol_options"] = json!({ "allow_chunked_length": true });
            to_yaml(&b)
        })
        .await;
        for (what, bytes) in CHUNKED_LENGTH {
            // The same request reaches the upstream, chunked without its length, and the
            // client gets the same reply; but skiff's codec (hyper) ends a connection whose
            // request had both framings (tests/DIFFERENCES.md), where Envoy keeps it.
            let re = raw_exchange(&e.addr(), bytes, Duration::from_secs(2)).await;
            let rs = raw_exchange(&s.addr(), bytes, Duration::from_secs(2)).await;
            let (pe, ps) = (re.responses(), rs.responses());
            assert_eq!(pe.len(), 1, "{what}: {}", re.text());
            assert_eq!(ps.len(), 1, "{what}: {}", rs.text());
            assert_eq!((pe[0].status, ps[0].status), (200, 200), "{what}");
            assert_eq!(ps[0].header("connection"), Some("close"), "{what}");
            assert!(rs.closed, "{what}");
            let up = assert_same_upstream(what, &e, &s);
            assert_eq!(up.header("content-length"), None, "{what}");
        }
        for (what, bytes) in CHUNKED_LENGTH_REFUSED {
            let (re, _) = raw_both(&e, &s, what, bytes).await;
            assert!(
                !re.text().starts_with("HTTP/1.1 200"),
                "{what}: {}",
                re.text()
            );
        }
        assert_eq!(s.rec.requests().len(), CHUNKED_LENGTH.len());
    })
    .await;
}

/// `ignore_http_11_upgrade`: an upgrade whose value a matcher takes (case-sensitive, as
/// sent) goes upstream as an ordinary request without its upgrade headers; other upgrades
/// are refused as the connection manager takes none (403); h2c is always ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ignore_http_11_upgrade_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let (e, s) = pair(Up::H1, |admin, listen, upstream| {
            let mut b = simple_http(admin, listen, &[upstream]);
            hcm_config(&mut b)["http_protocol_options"] = json!({ "ignore_http_11_upgrade": [
                { "exact": "websocket" }, { "prefix": "tls/" } ] });
            to_yaml(&b)
        })
        .await;
        let mut forwarded = 0;
        for (upgrade, ignored) in [
            ("websocket", true),
            ("WebSocket", false),
            ("tls/1.2", true),
            ("foo", false),
            ("h2c", true),
        ] {
            let what = format!("Upgrade: {upgrade}");
            let bytes = format!(
                "GET /u HTTP/1.1\r\nHost: a\r\nUpgrade: {upgrade}\r\nConnection: upgrade\r\n\r\n"
            );
            let (re, _) = raw_both(&e, &s, &what, bytes.as_bytes()).await;
            let status = re.responses().first().map(|r| r.status);
            assert_eq!(status, Some(if ignored { 200 } else { 403 }), "{what}");
            if ignored {
                forwarded += 1;
                let up = assert_same_upstream(&what, &e, &s);
                assert_eq!(up.header("upgrade"), None, "{what}");
            }
        }
        assert_eq!(s.rec.requests().len(), forwarded);
    })
    .await;
}
