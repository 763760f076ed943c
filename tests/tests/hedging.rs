//! `hedge_policy.hedge_on_per_try_timeout`, side by side with Envoy 1.40: attempts past their
//! per-try timeout go on while the next starts, the first response wins and the others are
//! reset, hedged 5xx are dropped while others are under way, the route timeout ends them all;
//! and a route without hedging as the baseline. The upstream answers each attempt (by its
//! `x-envoy-attempt-count`) after the delay and with the status the path gives it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, to_yaml, vhost};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::{free_port, run_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the upstream saw of each request (by path): per attempt, its expected timeout (in
/// tenths of a second) and whether the proxy reset it before the answer.
type Seen = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

async fn scripted_upstream(seen: Seen) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s, seen.clone()));
        }
    });
    port
}

async fn serve(mut s: TcpStream, seen: Seen) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end + 4);
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
        while buf.len() < length {
            let mut chunk = [0u8; 65536];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body_len = length;
        buf.drain(..length);
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let attempt: usize = header("x-envoy-attempt-count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let timeout_retry = header("x-envoy-is-timeout-retry").unwrap_or_else(|| "-".to_string());
        let expected = header("x-envoy-expected-rq-timeout-ms")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or("-".to_string(), |ms| format!("{}", (ms + 50) / 100));
        // /<kind>/<delay>-<status>/<delay>-<status>/…: attempt N takes the Nth.
        let step = path.split('/').filter(|p| p.contains('-')).nth(attempt - 1);
        let (delay, status) = step
            .and_then(|s| s.split_once('-'))
            .map(|(d, st)| (d.parse().unwrap_or(0), st.parse().unwrap_or(200)))
            .unwrap_or((0, 200));
        let key = path.clone();
        let record = |what: String| {
            seen.lock()
                .expect("lock")
                .entry(key.clone())
                .or_default()
                .push(what);
        };
        let mut probe = [0u8; 1];
        let answered = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delay)) => true,
            _ = s.read(&mut probe) => false,
        };
        if !answered {
            record(format!(
                "attempt {attempt} expected={expected} timeout_retry={timeout_retry} body={body_len} reset"
            ));
            return;
        }
        record(format!(
            "attempt {attempt} expected={expected} timeout_retry={timeout_retry} body={body_len} answered {status}"
        ));
        let text = format!("attempt {attempt}");
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hedging_as_envoy() {
    run_for(Duration::from_secs(180), async {
        let cases: &[(&str, bool)] = &[
            ("/h/1000-200/0-200", false),
            ("/h/1000-200/0-200/p", true),
            ("/h/1000-200/1000-200/1000-200", false),
            ("/h/5000-200/5000-200/5000-200", false),
            ("/h/1000-503/5000-200/5000-200", false),
            ("/h/0-503/0-200", false),
            ("/h/500-503/500-503/500-503", false),
            ("/n/1000-200/1000-200/1000-200", false),
            ("/n/0-503/0-200", false),
        ];
        let mut seen_all = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let seen: Seen = Arc::default();
            let up = scripted_upstream(seen.clone()).await;
            let port = free_port();
            let policy = json!({
                "retry_on": "5xx",
                "num_retries": 2,
                "per_try_timeout": "0.3s",
                "retry_back_off": { "base_interval": "0.001s", "max_interval": "0.002s" },
            });
            let routes = vec![
                json!({ "match": { "prefix": "/h/" },
                    "route": { "cluster": "up", "timeout": "3s", "retry_policy": policy } }),
                json!({ "match": { "prefix": "/n/" },
                    "route": { "cluster": "up", "timeout": "3s", "retry_policy": policy,
                        "hedge_policy": {} } }),
            ];
            let mut h = hcm("hedge", vec![vhost("all", &["*"], routes)]);
            let vh = &mut h["typed_config"]["route_config"]["virtual_hosts"][0];
            vh["include_request_attempt_count"] = json!(true);
            vh["include_is_timeout_retry_header"] = json!(true);
            vh["hedge_policy"] = json!({ "hedge_on_per_try_timeout": true, "initial_requests": 1 });
            h["typed_config"]["access_log"] = json!([{ "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": { "text_format_source": { "inline_string":
                        "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT%\n" } } } }]);
            let v = bootstrap(
                free_port(),
                vec![listener("l", "127.0.0.1", port, h)],
                vec![cluster("up", &[up])],
            );
            let p = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for (path, post) in cases {
                let url = format!("http://127.0.0.1:{port}{path}");
                let body = "b".repeat(16);
                let mut args = vec!["-s", &url];
                if *post {
                    args.extend(["--data-binary", &body]);
                }
                let started = std::time::Instant::now();
                let r = curl(&args).await;
                let took = started.elapsed().as_millis() as u64;
                let log = p
                    .wait_stdout_line(Duration::from_secs(5), |l| {
                        l.starts_with(&format!("{path} "))
                    })
                    .await;
                // Resets reach the upstream a moment after the client's answer.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut upstream = seen.lock().expect("lock").get(*path).cloned().unwrap_or_default();
                upstream.sort();
                // The retry counters after each request, to tell which request moved them.
                let mut counters = Vec::new();
                for stat in ["upstream_rq_retry", "upstream_rq_retry_limit_exceeded", "upstream_rq_retry_success", "upstream_rq_completed"] {
                    let name = format!("cluster.up.{stat}");
                    counters.push(format!("{stat}={}", p.admin().counter(&name).await));
                }
                got.push(format!(
                    "{path}: {} {:?} after ~{}00ms | {log} | {upstream:?} | {}",
                    r.resp.status,
                    r.resp.text(),
                    (took + 150) / 300 * 3,
                    counters.join(" ")
                ));
            }
            for stat in [
                "upstream_rq_retry",
                "upstream_rq_retry_success",
                "upstream_rq_retry_limit_exceeded",
                "upstream_rq_per_try_timeout",
                "upstream_rq_timeout",
                "upstream_rq_completed",
                "upstream_rq_total",
                "upstream_rq_504",
                "upstream_rq_503",
                "upstream_rq_200",
            ] {
                let name = format!("cluster.up.{stat}");
                got.push(format!("{name}: {}", p.admin().counter(&name).await));
            }
            seen_all.push(got);
        }
        eprintln!(
            "Envoy:\n{}\nskiff:\n{}",
            seen_all[0].join("\n"),
            seen_all[1].join("\n")
        );
        for (e, s) in seen_all[0].iter().zip(&seen_all[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
    })
    .await
}
