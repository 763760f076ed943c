//! The connection manager's `http_protocol_options` side by side with Envoy 1.40:
//! - `accept_http_10` and `default_host_for_http_10`: the reply (an HTTP/1.0 status line,
//!   `connection: close` unless the client asked to keep the connection), whether the
//!   connection closes, and what the upstream receives (HTTP/1.1, the default host);
//! - `allow_chunked_length`: a request with both framings is taken as chunked;
//! - `ignore_http_11_upgrade`: matching upgrades are ordinary requests;
//! - trailers over HTTP/1.1 without `enable_trailers` (dropped both ways) and with it, on the
//!   connection manager, on the cluster and on both: which of a request's and a response's
//!   trailers (declared in `Trailer` or not) each side gets, to clients that send `TE:
//!   trailers` and to those that do not, over HTTP/1.1 and HTTP/2.

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

/// An HTTP/1.1 upstream that records each request's bytes, up to the chunked body's end, and
/// answers with a chunked body and two trailers (one declared in `Trailer`).
async fn trailer_upstream() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then a chunked body up to its last chunk and trailer section.
                let complete = |got: &[u8]| {
                    let text = String::from_utf8_lossy(got).to_lowercase();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        return false;
                    };
                    !head.contains("transfer-encoding: chunked")
                        || body.split_once("0\r\n").is_some_and(|(_, rest)| {
                            rest.ends_with("\r\n") && (rest == "\r\n" || rest.ends_with("\r\n\r\n"))
                        })
                };
                while !complete(&got) {
                    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                record
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(String::from_utf8_lossy(&got).into_owned());
                let reply = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-resp-trailer\r\n\r\n5\r\nhello\r\n0\r\nx-resp-trailer: rt\r\nx-resp-extra: re\r\n\r\n";
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, seen)
}

/// HTTP/1 trailers without `enable_trailers` (its default): neither a request's trailers
/// (from an HTTP/1.1 client) nor an HTTP/1.1 upstream's response trailers (to an HTTP/1.1 or
/// an HTTP/2 client) go on, as Envoy's codecs drop them; the bodies do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http1_trailers_are_dropped_as_envoy_drops_them() {
    use skiff_tests::proxy::{Kind, ProxyProcess};
    run_for(Duration::from_secs(90), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (up, record) = trailer_upstream().await;
            let (admin, listen) = (skiff_tests::free_port(), skiff_tests::free_port());
            let p = ProxyProcess::start(kind, &to_yaml(&simple_http(admin, listen, &[up])), &[])
                .await;
            let addr = format!("127.0.0.1:{listen}");
            let request = b"POST /t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntrailer: x-req-trailer\r\n\r\n3\r\nabc\r\n0\r\nx-req-trailer: qt\r\n\r\n";
            let r = raw_exchange(&addr, request, Duration::from_secs(2)).await;
            let text = r.text();
            let h2 = skiff_tests::client::nghttp(&["-v", &format!("http://{addr}/h2")]).await;
            let upstream = record.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let outcome = format!(
                "upstream got the request trailer: {}; h1 client got the response trailer: {}; h1 body: {}; h2 client got it: {}; h2 body: {}",
                upstream.iter().any(|u| u.contains("x-req-trailer: qt")),
                text.contains("x-resp-trailer: rt"),
                text.contains("hello"),
                h2.output.contains("x-resp-trailer: rt"),
                h2.output.contains("hello"),
            );
            drop(p);
            seen.push(outcome);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        assert!(seen[0].contains("h1 body: true"), "{}", seen[0]);
        assert!(!seen[0].contains("trailer: true"), "{}", seen[0]);
    })
    .await;
}

/// `enable_trailers` on the connection manager, on the cluster, and on both: Envoy's codecs
/// read trailers and write every one of them (declared in `Trailer` or not, whatever the
/// client's `TE`) on the connections whose options enable them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http1_trailers_with_enable_trailers_as_envoy() {
    use skiff_tests::proxy::{Kind, ProxyProcess};
    run_for(Duration::from_secs(120), async {
        let mut seen: Vec<Vec<String>> = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let mut mine = Vec::new();
            for (hcm_on, cluster_on) in [(true, false), (false, true), (true, true)] {
                let (up, record) = trailer_upstream().await;
                let (admin, listen) = (skiff_tests::free_port(), skiff_tests::free_port());
                let mut b = simple_http(admin, listen, &[up]);
                if hcm_on {
                    hcm_config(&mut b)["http_protocol_options"] = json!({ "enable_trailers": true });
                }
                if cluster_on {
                    b["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = json!({
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": { "http_protocol_options": { "enable_trailers": true } }
                        }
                    });
                }
                let p = ProxyProcess::start(kind, &to_yaml(&b), &[]).await;
                let addr = format!("127.0.0.1:{listen}");
                for te in ["", "te: trailers\r\n"] {
                    let request = format!("POST /t HTTP/1.1\r\nhost: x\r\n{te}transfer-encoding: chunked\r\ntrailer: x-req-trailer\r\n\r\n3\r\nabc\r\n0\r\nx-req-trailer: qt\r\nx-req-extra: qe\r\n\r\n");
                    let before = record.lock().unwrap_or_else(|e| e.into_inner()).len();
                    let r = raw_exchange(&addr, request.as_bytes(), Duration::from_secs(2)).await;
                    let text = r.text().to_lowercase();
                    let upstream = record.lock().unwrap_or_else(|e| e.into_inner())[before..].concat();
                    mine.push(format!(
                        "hcm {hcm_on} cluster {cluster_on} te {:?}: upstream got request trailers {} {}; client got response trailers {} {}, body {}",
                        te.trim(),
                        upstream.contains("x-req-trailer: qt"),
                        upstream.contains("x-req-extra: qe"),
                        text.contains("x-resp-trailer: rt"),
                        text.contains("x-resp-extra: re"),
                        text.contains("hello"),
                    ));
                }
                let h2 = skiff_tests::client::nghttp(&["-v", &format!("http://{addr}/h2")]).await;
                mine.push(format!(
                    "hcm {hcm_on} cluster {cluster_on}: h2 client got response trailers {} {}",
                    h2.output.contains("x-resp-trailer: rt"),
                    h2.output.contains("x-resp-extra: re"),
                ));
                drop(p);
            }
            seen.push(mine);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        assert!(
            seen[0].iter().any(|l| l.contains("upstream got request trailers true true")),
            "{:#?}",
            seen[0]
        );
        assert!(
            seen[0].iter().any(|l| l.contains("client got response trailers true true")),
            "{:#?}",
            seen[0]
        );
    })
    .await;
}
