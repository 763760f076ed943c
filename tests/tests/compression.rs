//! The compressor HTTP filter (gzip, brotli, zstd) side by side with Envoy 1.40: which responses
//! are compressed for which `accept-encoding`, the headers around it (`content-encoding`,
//! `vary`, `etag`, `content-length`), the decoded bodies, request compression, and the
//! filter's stats, over HTTP/1.1 and HTTP/2.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Read as _;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use skiff_tests::client::{H2Client, Http1Client};
use skiff_tests::{free_port, run_for, Kind, ProxyProcess, Resp};
use tokio::net::TcpListener;

/// An upstream that answers as the query asks: `n` body bytes (default 2000), `ct` content
/// type (`none`: no header), `status`, `etag`, `vary`, `cc` (cache-control), `ce`
/// (content-encoding), `chunked`. It reports what it received in `x-seen-*` headers, the
/// request body decoded from its `content-encoding`.
async fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let ce = parts
                        .headers
                        .get("content-encoding")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    let seen = decode(&ce, &body);
                    let q: BTreeMap<String, String> = parts
                        .uri
                        .query()
                        .unwrap_or("")
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.replace("%20", " ").replace("%22", "\"")))
                        .collect();
                    let n: usize = q.get("n").and_then(|v| v.parse().ok()).unwrap_or(2000);
                    let text: Vec<u8> = b"hello world ".iter().copied().cycle().take(n).collect();
                    let status: u16 = q.get("status").and_then(|v| v.parse().ok()).unwrap_or(200);
                    let mut b = http::Response::builder().status(status);
                    match q.get("ct").map(String::as_str) {
                        Some("none") => {}
                        Some(ct) => b = b.header("content-type", ct),
                        None => b = b.header("content-type", "text/plain"),
                    }
                    for (k, h) in [
                        ("etag", "etag"),
                        ("vary", "vary"),
                        ("cc", "cache-control"),
                        ("ce", "content-encoding"),
                    ] {
                        if let Some(v) = q.get(k) {
                            b = b.header(h, v.as_str());
                        }
                    }
                    let ae = parts
                        .headers
                        .get_all("accept-encoding")
                        .iter()
                        .map(|v| v.to_str().unwrap_or("?"))
                        .collect::<Vec<_>>()
                        .join("|");
                    b = b
                        .header(
                            "x-seen-ae",
                            if ae.is_empty() { "-".to_string() } else { ae },
                        )
                        .header("x-seen-ce", ce)
                        .header(
                            "x-seen-cl",
                            parts
                                .headers
                                .get("content-length")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-"),
                        )
                        .header("x-seen-len", body.len().to_string())
                        .header(
                            "x-seen-body",
                            seen.map_or("undecodable".to_string(), |s| s.len().to_string()),
                        );
                    let chunked = q.contains_key("chunked");
                    let text = match q.get("enc") {
                        Some(enc) => encode(enc, &text),
                        None => text,
                    };
                    let body = if status == 204 || status == 304 {
                        Bytes::new()
                    } else {
                        Bytes::from(text)
                    };
                    let resp = if chunked {
                        b.body(http_body_util::Either::Right(Unsized(Some(body))))
                    } else {
                        b.body(http_body_util::Either::Left(Full::new(body)))
                    };
                    Ok::<_, Infallible>(resp.expect("response"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    port
}

/// A body of unknown length: hyper sends it chunked.
struct Unsized(Option<Bytes>);

impl hyper::body::Body for Unsized {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// `body` compressed with `encoding` (gzip, br or zstd).
fn encode(encoding: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(body).expect("gzip");
            e.finish().expect("gzip")
        }
        "br" => {
            let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
            w.write_all(body).expect("brotli");
            w.into_inner()
        }
        "zstd" => zstd::stream::encode_all(body, 3).expect("zstd"),
        other => panic!("no encoding {other}"),
    }
}

/// The body decoded from `encoding` (`-`: as is); `None` when it does not decode.
fn decode(encoding: &str, body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match encoding {
        "-" => return Some(body.to_vec()),
        "gzip" => flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .ok()?,
        "br" => brotli::Decompressor::new(body, 4096)
            .read_to_end(&mut out)
            .ok()?,
        "zstd" => return zstd::stream::decode_all(body).ok(),
        _ => return None,
    };
    Some(out)
}

fn config(admin: u16, listen: u16, upstream: u16) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing
          route_config:
            virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]}}]
          http_filters:
          - name: envoy.filters.http.compressor.brotli
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library:
                name: text_br
                typed_config: {{"@type": type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli, quality: 5}}
          - name: envoy.filters.http.compressor.gzip
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              response_direction_config:
                weaken_etag_on_compress: true
                uncompressible_response_codes: [404]
              request_direction_config:
                common_config:
                  enabled: {{default_value: true, runtime_key: request_compressor_enabled}}
                  min_content_length: 100
              compressor_library:
                name: text_gz
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip
                  memory_level: 9
                  window_bits: 15
                  compression_level: BEST_SPEED
          - name: envoy.filters.http.compressor.zstd
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              response_direction_config:
                common_config:
                  min_content_length: 100
                  content_type: [application/json, text/plain]
                disable_on_etag_header: true
                remove_accept_encoding_header: true
              compressor_library:
                name: json
                typed_config: {{"@type": type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd, compression_level: 10}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: up
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#
    )
}

/// What a client sees of one response, with the body decoded and the framing left out
/// (`content-length` kept when the body is not compressed).
fn view(r: &Resp) -> String {
    let mut lines: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "date" | "server" | "x-envoy-upstream-service-time" | "transfer-encoding"
            )
        })
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    lines.sort();
    let encoding = r.header("content-encoding").unwrap_or("-");
    let body = match decode(encoding, &r.body) {
        Some(b) => format!("{} decoded bytes", b.len()),
        None => "undecodable body".to_string(),
    };
    format!("{} {}\n{}", r.status, lines.join("\n"), body)
}

const CASES: &[(&str, &str)] = &[
    ("/", "gzip"),
    ("/", "br"),
    ("/", "zstd"),
    ("/", "gzip, br"),
    ("/", "br;q=0.5, gzip"),
    ("/", "*"),
    ("/", "identity"),
    ("/", "gzip;q=0"),
    ("/", "deflate"),
    ("/", "gzip;q=0.5, identity"),
    ("/", "identity;q=0, gzip;q=0.1"),
    ("/", "*;q=0, br"),
    ("/", "GZIP"),
    ("/", "gzip;q=abc"),
    ("/", "br; q=0.8"),
    ("/", "br;q=0.5, *"),
    ("/", "zstd;q=0.9, br;q=0.9, gzip;q=0.8"),
    ("/", ""),
    ("/?n=29", "gzip"),
    ("/?n=30", "gzip"),
    ("/?n=99", "zstd"),
    ("/?status=204", "gzip"),
    ("/?status=304", "gzip"),
    ("/?status=404", "gzip"),
    ("/?status=500", "br"),
    ("/?ce=deflate", "gzip"),
    ("/?cc=no-transform", "gzip"),
    ("/?cc=max-age=3,%20no-transform", "br"),
    ("/?etag=%22abc%22", "gzip"),
    ("/?etag=%22abc%22", "br"),
    ("/?etag=%22abc%22", "zstd"),
    ("/?etag=W/%22abc%22", "br"),
    ("/?ct=image/png", "gzip"),
    ("/?ct=none", "gzip"),
    ("/?ct=text/html;charset=utf-8", "br"),
    ("/?ct=application/json", "zstd"),
    ("/?ct=text/css", "zstd"),
    ("/?chunked=1&n=10", "gzip"),
    ("/?chunked=1&n=300000", "br"),
    ("/?vary=Origin", "gzip"),
    ("/?vary=accept-encoding", "gzip"),
    ("/?vary=Accept-Encoding", "br"),
    ("/?vary=*", "gzip"),
    ("/?n=300000", "gzip"),
    ("/?n=300000", "zstd"),
];

#[tokio::test]
async fn compression_as_envoy_does_it() {
    run_for(std::time::Duration::from_secs(120), async {
        let up = upstream().await;
        let mut proxies = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, listen) = (free_port(), free_port());
            let p = ProxyProcess::start(kind, &config(admin, listen, up), &["--concurrency", "1"])
                .await;
            proxies.push((p, format!("127.0.0.1:{listen}")));
        }
        let mut differences = Vec::new();
        for h2 in [false, true] {
            for &(path, ae) in CASES {
                for method in ["GET", "HEAD"] {
                    if method == "HEAD" && !matches!(ae, "gzip" | "br") {
                        continue;
                    }
                    let mut seen = Vec::new();
                    for (_, addr) in &proxies {
                        let mut req = http::Request::builder()
                            .method(method)
                            .uri(path)
                            .header("host", "x");
                        if !ae.is_empty() {
                            req = req.header("accept-encoding", ae);
                        }
                        let req = req.body(Bytes::new()).expect("request");
                        let resp = if h2 {
                            let c = H2Client::connect(addr).await.expect("h2 connect");
                            c.send(req).await.expect("h2 response")
                        } else {
                            let mut c = Http1Client::connect(addr).await.expect("connect");
                            c.send(req).await.expect("response")
                        };
                        seen.push(view(&resp));
                    }
                    if seen[0] != seen[1] {
                        differences.push(format!(
                            "{} {method} {path} accept-encoding {ae:?}\n  envoy: {}\n  skiff: {}",
                            if h2 { "h2" } else { "h1" },
                            seen[0].replace('\n', " | "),
                            seen[1].replace('\n', " | ")
                        ));
                    }
                }
            }
        }

        // Request bodies: the gzip filter compresses those of 100 bytes and more.
        for (n, ct, ce) in [
            (2000, "text/plain", None),
            (50, "text/plain", None),
            (2000, "image/png", None),
            (2000, "text/plain", Some("br")),
        ] {
            let mut seen = Vec::new();
            for (_, addr) in &proxies {
                let body: Vec<u8> = b"abcdefgh".iter().copied().cycle().take(n).collect();
                let mut req = http::Request::builder()
                    .method("POST")
                    .uri("/upload")
                    .header("host", "x")
                    .header("content-type", ct);
                if let Some(ce) = ce {
                    req = req.header("content-encoding", ce);
                }
                let req = req.body(Bytes::from(body)).expect("request");
                let mut c = Http1Client::connect(addr).await.expect("connect");
                let r = c.send(req).await.expect("response");
                seen.push(format!(
                    "{} ce={:?} cl={:?} body={:?}",
                    r.status,
                    r.header("x-seen-ce"),
                    r.header("x-seen-cl"),
                    r.header("x-seen-body")
                ));
            }
            if seen[0] != seen[1] {
                differences.push(format!(
                    "POST {n} {ct} {ce:?}\n  envoy: {}\n  skiff: {}",
                    seen[0], seen[1]
                ));
            }
        }

        // Every compressor counter agrees.
        let mut stats = Vec::new();
        for (p, _) in &proxies {
            let all = p.admin().stats().await;
            let mine: BTreeMap<String, String> = all
                .into_iter()
                .filter(|(k, _)| {
                    k.starts_with("http.ing.compressor.") && !k.ends_with("total_compressed_bytes")
                })
                .collect();
            stats.push(mine);
        }
        assert!(!stats[0].is_empty(), "Envoy has compressor stats");
        for (k, v) in &stats[0] {
            if stats[1].get(k) != Some(v) {
                differences.push(format!("stat {k}: envoy {v}, skiff {:?}", stats[1].get(k)));
            }
        }
        for k in stats[1].keys() {
            if !stats[0].contains_key(k) {
                differences.push(format!("stat {k} only in skiff"));
            }
        }
        assert!(
            differences.is_empty(),
            "{} differences:\n{}",
            differences.len(),
            differences.join("\n")
        );
    })
    .await
}

fn decompressor_config(admin: u16, listen: u16, upstream: u16) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing
          route_config:
            virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]}}]
          http_filters:
          - name: envoy.filters.http.decompressor
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor
              decompressor_library:
                name: upload
                typed_config: {{"@type": "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip", window_bits: 15, chunk_size: 8192, max_inflate_ratio: 1000}}
          - name: envoy.filters.http.decompressor.br
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor
              decompressor_library:
                name: b
                typed_config: {{"@type": "type.googleapis.com/envoy.extensions.compression.brotli.decompressor.v3.Brotli"}}
              request_direction_config:
                common_config: {{enabled: {{default_value: false, runtime_key: x}}}}
          - name: envoy.filters.http.decompressor.zstd
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor
              decompressor_library:
                name: z
                typed_config: {{"@type": "type.googleapis.com/envoy.extensions.compression.zstd.decompressor.v3.Zstd"}}
              response_direction_config:
                common_config: {{ignore_no_transform_header: true}}
              request_direction_config:
                advertise_accept_encoding: false
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: up
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#
    )
}

/// A request: method, path, accept-encoding, other headers, body.
type Case<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>);

/// What a client sees of one response, its body as it arrived.
fn raw_view(r: &Resp) -> String {
    let mut lines: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "date" | "server" | "x-envoy-upstream-service-time" | "transfer-encoding"
            )
        })
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    lines.sort();
    format!("{} {}\n{} bytes", r.status, lines.join("\n"), r.body.len())
}

#[tokio::test]
async fn decompression_as_envoy_does_it() {
    run_for(std::time::Duration::from_secs(120), async {
        let up = upstream().await;
        let mut proxies = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, listen) = (free_port(), free_port());
            let p = ProxyProcess::start(
                kind,
                &decompressor_config(admin, listen, up),
                &["--concurrency", "1"],
            )
            .await;
            proxies.push((p, format!("127.0.0.1:{listen}")));
        }
        let text: Vec<u8> = b"abcdefgh".iter().copied().cycle().take(5000).collect();
        let mut cases: Vec<Case> = Vec::new();
        for path in [
            "/",
            "/?enc=gzip&ce=gzip",
            "/?enc=br&ce=br",
            "/?enc=zstd&ce=zstd",
            "/?enc=gzip&ce=GZIP",
            "/?enc=gzip&ce=gzip&cc=no-transform",
            "/?enc=zstd&ce=zstd&cc=no-transform",
            "/?enc=gzip&ce=gzip,%20br",
            "/?enc=gzip&ce=br,%20gzip",
            "/?ce=gzip&n=50",
            "/?ce=br&n=50",
            "/?enc=gzip&ce=gzip&status=204",
            "/?enc=gzip&ce=gzip&chunked=1&n=200000",
        ] {
            for ae in ["", "br", "gzip;q=0.5", "identity"] {
                cases.push(("GET", path, ae, Vec::new(), Vec::new()));
            }
            cases.push(("HEAD", path, "", Vec::new(), Vec::new()));
        }
        for (ce, body) in [
            ("gzip", encode("gzip", &text)),
            ("GZIP", encode("gzip", &text)),
            ("br, gzip", encode("gzip", &text)),
            ("gzip", b"not gzip".to_vec()),
            ("br", encode("br", &text)),
            ("zstd", encode("zstd", &text)),
        ] {
            cases.push(("POST", "/up", "", vec![("content-encoding", ce)], body));
        }
        // A request without a body is not decoded, whatever it is labelled.
        cases.push((
            "POST",
            "/up",
            "",
            vec![("content-encoding", "gzip"), ("content-length", "0")],
            Vec::new(),
        ));
        let mut differences = Vec::new();
        for h2 in [false, true] {
            for (method, path, ae, headers, body) in &cases {
                let mut seen = Vec::new();
                for (_, addr) in &proxies {
                    let mut req = http::Request::builder()
                        .method(*method)
                        .uri(*path)
                        .header("host", "x");
                    if !ae.is_empty() {
                        req = req.header("accept-encoding", *ae);
                    }
                    for (k, v) in headers {
                        req = req.header(*k, *v);
                    }
                    let req = req.body(Bytes::from(body.clone())).expect("request");
                    let resp = if h2 {
                        let c = H2Client::connect(addr).await.expect("h2 connect");
                        c.send(req).await.expect("h2 response")
                    } else {
                        let mut c = Http1Client::connect(addr).await.expect("connect");
                        c.send(req).await.expect("response")
                    };
                    seen.push(raw_view(&resp));
                }
                if seen[0] != seen[1] {
                    differences.push(format!(
                        "{} {method} {path} ae {ae:?} {headers:?}\n  envoy: {}\n  skiff: {}",
                        if h2 { "h2" } else { "h1" },
                        seen[0].replace('\n', " | "),
                        seen[1].replace('\n', " | ")
                    ));
                }
            }
        }
        let mut stats = Vec::new();
        for (p, _) in &proxies {
            let mine: BTreeMap<String, String> = p
                .admin()
                .stats()
                .await
                .into_iter()
                // The libraries' error counters count decoder calls, which depend on how the
                // body was cut on its way (tests/DIFFERENCES.md); a bad body is tested above.
                .filter(|(k, _)| {
                    k.starts_with("http.ing.decompressor.")
                        && !k.ends_with("brotli_error")
                        && !k.ends_with("zstd_generic_error")
                })
                .collect();
            stats.push(mine);
        }
        assert!(!stats[0].is_empty(), "Envoy has decompressor stats");
        if stats[0] != stats[1] {
            differences.push(format!(
                "stats:\n  envoy: {:?}\n  skiff: {:?}",
                stats[0], stats[1]
            ));
        }
        assert!(
            differences.is_empty(),
            "{} differences:\n{}",
            differences.len(),
            differences.join("\n")
        );
    })
    .await
}
