//! `Expect: 100-continue`, `proxy_100_continue` and `allow_absolute_url`, side by side with
//! Envoy 1.40 over HTTP/1.1: the interim responses the client reads and when, what the
//! upstream receives, the access log and the connection manager's counters.

use std::time::Duration;

use serde_json::json;
use skiff_tests::client::split_responses;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, to_yaml, vhost};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::{free_port, run_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/1.1 upstream that answers `/reject…` with 417 before any body, answers an
/// `Expect: 100-continue` with its own `100 Continue` (with a header) otherwise, and replies
/// with what it saw: `expect=<value>;host=<value>;body=<length>`.
async fn continue_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s));
        }
    });
    port
}

async fn serve(mut s: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_head(&mut s, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end + 4);
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let header = |name: &str| {
            head.lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let expect = header("expect");
        if path.starts_with("/reject") {
            let _ = s
                .write_all(b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            return;
        }
        if expect
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            let _ = s
                .write_all(b"HTTP/1.1 100 Continue\r\nx-interim: upstream\r\n\r\n")
                .await;
        }
        while buf.len() < length {
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let body = format!(
            "expect={};host={};body={length}",
            expect.unwrap_or_default(),
            header("host").unwrap_or_default()
        );
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads until `buf` holds a whole head; its length without the empty line.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i);
        }
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `head`; if no final response arrives within a second, sends `body` and waits for one.
/// Returns the statuses read in order (with each interim head's extra header lines) and the
/// final response's body.
async fn exchange(port: u16, head: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(head.as_bytes()).await.expect("write head");
    let mut data = Vec::new();
    let finished = |data: &[u8]| split_responses(data).iter().any(|r| r.status >= 200);
    let mut sent_body = false;
    let mut waited = std::time::Instant::now();
    while !finished(&data) {
        let mut chunk = [0u8; 8192];
        let limit = Duration::from_secs(if sent_body { 5 } else { 1 });
        match tokio::time::timeout(limit.saturating_sub(waited.elapsed()), s.read(&mut chunk)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => data.extend_from_slice(&chunk[..n]),
            Err(_) if !sent_body => {
                // No final response yet: as a client does after its expect timeout.
                s.write_all(body).await.expect("write body");
                sent_body = true;
                waited = std::time::Instant::now();
            }
            Err(_) => break,
        }
        // An interim response: the body goes now.
        if !sent_body && split_responses(&data).iter().any(|r| r.status == 100) {
            s.write_all(body).await.expect("write body");
            sent_body = true;
            waited = std::time::Instant::now();
        }
    }
    let responses = split_responses(&data);
    let mut out: Vec<String> = Vec::new();
    for r in &responses {
        let extra = r
            .headers
            .iter()
            .filter(|(n, _)| n == "x-interim")
            .map(|(n, v)| format!(" {n}={v}"))
            .collect::<String>();
        out.push(format!("{}{extra}", r.status));
    }
    let last = responses
        .iter()
        .rev()
        .find(|r| r.status >= 200)
        .map(|r| String::from_utf8_lossy(&r.body).to_string())
        .unwrap_or_default();
    format!("[{}] body_sent={sent_body} final={last:?}", out.join(", "))
}

#[tokio::test]
async fn expect_continue_and_absolute_urls_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let up = continue_upstream().await;
            let (plain, proxied) = (free_port(), free_port());
            let log = json!([{ "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": { "text_format_source": { "inline_string":
                        "%REQ(:PATH)% %REQ(:AUTHORITY)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n" } } } }]);
            let routes = || {
                let mut retried = route("/retry", "up");
                retried["route"]["retry_policy"] = json!({ "retry_on": "5xx", "num_retries": 2 });
                vec![vhost(
                    "all",
                    &["*"],
                    vec![route("/up", "up"), route("/reject", "up"), retried],
                )]
            };
            let mut a = hcm("plain", routes());
            a["typed_config"]["access_log"] = log.clone();
            let mut b = hcm("proxied", routes());
            b["typed_config"]["access_log"] = log;
            b["typed_config"]["proxy_100_continue"] = json!(true);
            b["typed_config"]["http_protocol_options"] = json!({ "allow_absolute_url": false });
            let v = bootstrap(
                free_port(),
                vec![
                    listener("plain", "127.0.0.1", plain, a),
                    listener("proxied", "127.0.0.1", proxied, b),
                ],
                vec![cluster("up", &[up])],
            );
            let p = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let post = |path: &str, expect: &str| {
                format!(
                    "POST {path} HTTP/1.1\r\nhost: a.test\r\ncontent-length: 5\r\n{expect}\r\n"
                )
            };
            let cases: Vec<(&str, u16, String, &[u8])> = vec![
                ("continue", plain, post("/up/1", "expect: 100-continue\r\n"), b"hello"),
                ("continue, no route", plain, post("/none", "expect: 100-continue\r\n"), b"hello"),
                ("continue, other case", plain, post("/up/2", "expect: 100-Continue\r\n"), b"hello"),
                ("other expectation", plain, post("/up/3", "expect: something\r\n"), b"hello"),
                (
                    "continue without a body",
                    plain,
                    "GET /up/4 HTTP/1.1\r\nhost: a.test\r\nexpect: 100-continue\r\n\r\n".into(),
                    b"",
                ),
                ("proxied continue", proxied, post("/up/5", "expect: 100-continue\r\n"), b"hello"),
                ("proxied rejection", proxied, post("/reject/6", "expect: 100-continue\r\n"), b"hello"),
                ("proxied, no expectation", proxied, post("/up/7", ""), b"hello"),
                ("proxied continue, retry policy", proxied, post("/retry/13", "expect: 100-continue\r\n"), b"hello"),
                ("proxied, no route", proxied, post("/none/8", "expect: 100-continue\r\n"), b"hello"),
                (
                    "absolute URL",
                    plain,
                    "GET http://b.test/up/9 HTTP/1.1\r\nhost: a.test\r\n\r\n".into(),
                    b"",
                ),
                (
                    "absolute URL refused",
                    proxied,
                    "GET http://b.test/up/10 HTTP/1.1\r\nhost: a.test\r\n\r\n".into(),
                    b"",
                ),
                (
                    "absolute URL refused, no host",
                    proxied,
                    "GET http://b.test/up/11 HTTP/1.1\r\n\r\n".into(),
                    b"",
                ),
                (
                    "GET *",
                    plain,
                    "GET * HTTP/1.1\r\nhost: a.test\r\n\r\n".into(),
                    b"",
                ),
                (
                    "ftp URL",
                    plain,
                    "GET ftp://b.test/up/12 HTTP/1.1\r\nhost: a.test\r\n\r\n".into(),
                    b"",
                ),
                (
                    "OPTIONS *",
                    plain,
                    "OPTIONS * HTTP/1.1\r\nhost: a.test\r\n\r\n".into(),
                    b"",
                ),
            ];
            let mut got = Vec::new();
            for (name, port, head, body) in cases {
                let r = exchange(port, &head, body).await;
                got.push(format!("{name}: {r}"));
            }
            // The last request's line comes last.
            p.wait_stdout_line(Duration::from_secs(5), |l| l.starts_with("* "))
                .await;
            let mut lines: Vec<String> = p
                .stdout()
                .lines()
                .filter(|l| l.starts_with('/') || l.starts_with("http") || l.starts_with('*'))
                .map(str::to_string)
                .collect();
            lines.sort();
            got.extend(lines);
            for (name, value) in p.admin().stats_containing("http.").await {
                let keep = ["downstream_rq_1xx", "downstream_rq_completed", "non_relative_path"];
                if !name.contains(".admin.") && keep.iter().any(|k| name.ends_with(k)) {
                    // The listeners' ports differ between the two runs.
                    let name = match name.strip_prefix("listener.") {
                        Some(rest) => format!(
                            "listener.<{}>.{}",
                            if rest.contains(&plain.to_string()) { "plain" } else { "proxied" },
                            rest.split_once(".http.").map_or("", |(_, s)| s)
                        ),
                        None => name,
                    };
                    got.push(format!("{name}: {value}"));
                }
            }
            seen.push(got);
        }
        eprintln!("Envoy:\n{}\nskiff:\n{}", seen[0].join("\n"), seen[1].join("\n"));
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        assert_eq!(seen[0].len(), seen[1].len(), "{:#?}", seen);
        let all = seen[0].join("\n");
        assert!(all.contains("continue: [100, 200]"), "{all}");
        assert!(all.contains("proxied continue: [100 x-interim=upstream, 200]"), "{all}");
        assert!(all.contains("proxied rejection: [417] body_sent=false"), "{all}");
    })
    .await
}
