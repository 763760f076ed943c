//! Access logs (reference §3): the default format, text_format_source, stdout/stderr/file sinks.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use skiff_tests::client::{self, curl, H2Client};
use skiff_tests::config;
use skiff_tests::upstream::EchoOptions;
use skiff_tests::{is_uuid, run, HttpFixture};

/// The fields of a default-format line.
#[derive(Debug)]
struct DefaultLine {
    start: String,
    request: String,
    code: String,
    flags: String,
    rx: String,
    tx: String,
    duration: String,
    svc_time: String,
    xff: String,
    ua: String,
    id: String,
    authority: String,
    upstream: String,
}

/// Parses `[START] "REQ" CODE FLAGS RX TX DUR SVC "XFF" "UA" "ID" "AUTH" "UPSTREAM"`.
fn parse_default(line: &str) -> DefaultLine {
    let (start, rest) = line
        .strip_prefix('[')
        .and_then(|l| l.split_once("] "))
        .unwrap_or_else(|| panic!("no [START_TIME] in {line:?}"));
    let q: Vec<&str> = rest.split('"').collect();
    assert_eq!(q.len(), 13, "unexpected shape: {line:?}");
    let nums: Vec<&str> = q[2].split_whitespace().collect();
    assert_eq!(nums.len(), 6, "unexpected numeric fields: {line:?}");
    DefaultLine {
        start: start.to_string(),
        request: q[1].to_string(),
        code: nums[0].to_string(),
        flags: nums[1].to_string(),
        rx: nums[2].to_string(),
        tx: nums[3].to_string(),
        duration: nums[4].to_string(),
        svc_time: nums[5].to_string(),
        xff: q[3].to_string(),
        ua: q[5].to_string(),
        id: q[7].to_string(),
        authority: q[9].to_string(),
        upstream: q[11].to_string(),
    }
}

fn is_start_time(s: &str) -> bool {
    // 2026-11-23T10:15:44.810Z
    let b = s.as_bytes();
    s.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && s.chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

#[tokio::test]
async fn default_format_on_stdout() {
    run(async {
        let f = HttpFixture::start().await;
        let r = curl(&["-A", "log-agent/1", &f.url("/logged?q=1")]).await;
        assert_eq!(r.resp.status, 200);
        let line = f
            .proxy
            .wait_stdout_line(Duration::from_secs(5), |l| l.contains("/logged?q=1"))
            .await;
        let d = parse_default(&line);
        assert!(
            is_start_time(&d.start),
            "START_TIME {:?} in {line:?}",
            d.start
        );
        assert_eq!(d.request, "GET /logged?q=1 HTTP/1.1");
        assert_eq!(d.code, "200");
        assert_eq!(d.flags, "-");
        assert_eq!(d.rx, "0");
        assert_eq!(
            d.tx,
            r.resp.body.len().to_string(),
            "BYTES_SENT is the body length"
        );
        assert!(d.duration.parse::<u64>().is_ok(), "{line:?}");
        assert_eq!(
            Some(d.svc_time.as_str()),
            r.resp.header("x-envoy-upstream-service-time"),
            "{line:?}"
        );
        assert_eq!(d.xff, "-");
        assert_eq!(d.ua, "log-agent/1");
        assert!(is_uuid(&d.id), "{line:?}");
        assert_eq!(
            d.id,
            f.up.rec.last().header("x-request-id").unwrap_or_default()
        );
        assert_eq!(d.authority, format!("127.0.0.1:{}", f.port));
        assert_eq!(d.upstream, f.up.addr.to_string());
    })
    .await
}

#[tokio::test]
async fn default_format_post_counts_bytes_received() {
    run(async {
        let f = HttpFixture::start().await;
        curl(&["--data-binary", "0123456789", &f.url("/posted")]).await;
        let line = f
            .proxy
            .wait_stdout_line(Duration::from_secs(5), |l| l.contains("/posted"))
            .await;
        let d = parse_default(&line);
        assert_eq!(d.request, "POST /posted HTTP/1.1");
        assert_eq!(d.rx, "10");
    })
    .await
}

#[tokio::test]
async fn default_format_h2_protocol() {
    run(async {
        let f = HttpFixture::start().await;
        let c = H2Client::connect(&f.addr()).await.expect("h2c");
        c.send(client::h2_request(
            "GET",
            "h2.example.com",
            "/h2log",
            Bytes::new(),
        ))
        .await
        .expect("h2 request");
        let line = f
            .proxy
            .wait_stdout_line(Duration::from_secs(5), |l| l.contains("/h2log"))
            .await;
        let d = parse_default(&line);
        assert_eq!(d.request, "GET /h2log HTTP/2");
        assert_eq!(d.authority, "h2.example.com");
        assert_eq!(d.ua, "-");
    })
    .await
}

#[tokio::test]
async fn local_reply_404_line() {
    run(async {
        let f = HttpFixture::with(
            EchoOptions::named("u1"),
            |v| {
                config::route_config(v)["virtual_hosts"][0]["routes"][0]["match"] =
                    json!({ "prefix": "/only" });
            },
            &[],
        )
        .await;
        curl(&[&f.url("/missing")]).await;
        let line = f
            .proxy
            .wait_stdout_line(Duration::from_secs(5), |l| l.contains("/missing"))
            .await;
        let d = parse_default(&line);
        assert_eq!(
            (d.code.as_str(), d.flags.as_str()),
            ("404", "NR"),
            "{line:?}"
        );
        assert_eq!(d.tx, "0");
        assert_eq!(d.svc_time, "-");
        assert_eq!(d.upstream, "-");
    })
    .await
}

#[tokio::test]
async fn text_format_source_to_file() {
    run(async {
        let dir = skiff_tests::scratch_dir("alog");
        let path = dir.join("access.log");
        let path_s = path.to_str().expect("utf-8").to_string();
        let fmt = "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %REQ(X-CUSTOM)% %RESP(X-UPSTREAM)%\n";
        let f = HttpFixture::with(
            EchoOptions::named("u1"),
            |v| {
                config::hcm_config(v)["access_log"] = json!([config::file_log(&path_s, Some(fmt))]);
            },
            &[],
        )
        .await;
        curl(&["-H", "x-custom: hello", &f.url("/f?x=1")]).await;
        curl(&[&f.url("/g")]).await;
        let want1 = format!("GET /f?x=1 HTTP/1.1 200 - {} hello u1", f.up.addr);
        let want2 = format!("GET /g HTTP/1.1 200 - {} - u1", f.up.addr);
        f.proxy
            .wait_file_line(&path, Duration::from_secs(5), |l| l == want1)
            .await;
        f.proxy
            .wait_file_line(&path, Duration::from_secs(5), |l| l == want2)
            .await;
        assert!(
            !f.proxy.stdout().contains("/f?x=1"),
            "the stdout logger was replaced by the file logger"
        );
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn stderr_logger() {
    run(async {
        let f = HttpFixture::with(
            EchoOptions::named("u1"),
            |v| {
                config::hcm_config(v)["access_log"] = json!([{
                    "name": "envoy.access_loggers.stderr",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
                        "log_format": { "text_format_source": { "inline_string": "ALOG %RESPONSE_CODE% %REQ(:PATH)%\n" } }
                    }
                }]);
            },
            &[],
        )
        .await;
        curl(&[&f.url("/to-stderr")]).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !f.proxy.stderr().contains("ALOG 200 /to-stderr") {
            assert!(
                std::time::Instant::now() < deadline,
                "no `ALOG 200 /to-stderr` on stderr:\n{}",
                f.proxy.logs_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
}

#[tokio::test]
async fn file_logger_default_format() {
    run(async {
        let dir = skiff_tests::scratch_dir("alog-default");
        let path = dir.join("access.log");
        let path_s = path.to_str().expect("utf-8").to_string();
        let f = HttpFixture::with(
            EchoOptions::named("u1"),
            |v| {
                config::hcm_config(v)["access_log"] = json!([config::file_log(&path_s, None)]);
            },
            &[],
        )
        .await;
        curl(&["-A", "file-agent", &f.url("/to-file")]).await;
        let line = f
            .proxy
            .wait_file_line(&path, Duration::from_secs(5), |l| l.contains("/to-file"))
            .await;
        let d = parse_default(&line);
        assert_eq!(d.request, "GET /to-file HTTP/1.1");
        assert_eq!((d.code.as_str(), d.flags.as_str()), ("200", "-"));
        assert_eq!(d.ua, "file-agent");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}
