//! `envoy.overload_actions.reset_high_memory_stream` side by side with Envoy 1.40, with the
//! pressure injected through `envoy.resource_monitors.injected_resource` (a file moved into
//! place): HTTP/2 streams holding body data are reset when the action fires, the others go on;
//! and, for skiff alone, which size classes a scaled trigger resets as the pressure grows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use skiff_tests::config::{self, bootstrap, hcm, listener, route, to_yaml, vhost};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::{stalled_upstream, EchoUpstream};
use skiff_tests::{free_port, run_for};
use tokio::net::TcpStream;

const INJECTED: &str = "envoy.resource_monitors.injected_resource";
const RESET: &str = "envoy.overload_actions.reset_high_memory_stream";
const COUNT: &str = "envoy.overload_actions.reset_high_memory_stream.count";
const LOG: &str = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n";

/// Writes `pressure` into a new file and moves it onto `path`, as the monitor expects.
fn inject(path: &Path, pressure: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pressure).expect("write pressure");
    std::fs::rename(&tmp, path).expect("move pressure into place");
}

fn pressure_file(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "skiff-overload-reset-{}-{tag}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("pressure dir");
    let p = dir.join("pressure");
    inject(&p, "0");
    p
}

/// An overload manager whose reset action follows the injected pressure through `trigger`,
/// tracking streams from 4 KiB (`minimum_account_to_track_power_of_two: 13`).
fn overload(path: &Path, trigger: Value) -> Value {
    let mut t = trigger;
    t["name"] = json!(INJECTED);
    json!({
        "refresh_interval": "0.05s",
        "buffer_factory_config": { "minimum_account_to_track_power_of_two": 13 },
        "resource_monitors": [{
            "name": INJECTED,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig",
                "filename": path.to_str().expect("utf-8 path"),
            }
        }],
        "actions": [{ "name": RESET, "triggers": [t] }]
    })
}

/// An HTTP/2 (prior knowledge) client connection to `port`.
async fn h2_client(port: u16) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (h2, conn) = h2::client::Builder::new()
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    h2
}

/// A stream that uploads `size` bytes (as fast as flow control lets it) and then waits for
/// its response: the response's status, or how the stream was reset.
struct Upload {
    response: h2::client::ResponseFuture,
    sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    sender: tokio::task::JoinHandle<()>,
}

async fn upload(h2: &mut h2::client::SendRequest<Bytes>, path: &str, size: usize) -> Upload {
    let ready = h2.clone().ready().await.expect("connection ready");
    *h2 = ready;
    let req = if size == 0 {
        http::Request::get(format!("http://a{path}")).body(())
    } else {
        http::Request::post(format!("http://a{path}"))
            .header("content-length", size.to_string())
            .body(())
    }
    .expect("request");
    let (response, mut body) = h2.send_request(req, size == 0).expect("send request");
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = sent.clone();
    let sender = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'u'; 16384]);
        let mut left = size;
        while left > 0 {
            body.reserve_capacity(left.min(chunk.len()));
            match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                Some(Ok(n)) if n > 0 => {
                    let n = n.min(left);
                    left -= n;
                    if body.send_data(chunk.slice(..n), left == 0).is_err() {
                        return;
                    }
                    counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
        // Keep the stream's sending half until the stream ends.
        let _ = std::future::poll_fn(|cx| body.poll_reset(cx)).await;
    });
    Upload {
        response,
        sent,
        sender,
    }
}

impl Upload {
    /// Waits until the upload has stopped moving (stalled in the proxy) or finished.
    async fn settle(&self) -> usize {
        let mut last = usize::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.sent.load(std::sync::atomic::Ordering::Relaxed);
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// The stream's end within `wait`: `200`, `reset <CODE>`, or `open`.
    async fn outcome(self, wait: Duration) -> String {
        let r = match tokio::time::timeout(wait, self.response).await {
            Err(_) => "open".to_string(),
            Ok(Ok(r)) => r.status().as_u16().to_string(),
            Ok(Err(e)) => match e.reason() {
                Some(r) => format!("reset {r:?}"),
                None => format!("error {e}"),
            },
        };
        self.sender.abort();
        r
    }
}

async fn log_line(p: &ProxyProcess, path: &str) -> String {
    let prefix = format!("{path} ");
    p.wait_stdout_line(Duration::from_secs(5), |l| l.starts_with(&prefix))
        .await
}

/// A proxy with an HTTP/2 listener: `/stall` to an upstream that never reads, anything else
/// to an echo upstream (with `retry` on its route when given); `overload` as asked.
async fn start(
    kind: Kind,
    overload: Value,
    stalled: u16,
    echo: u16,
    retry: Option<Value>,
) -> (ProxyProcess, u16) {
    let port = free_port();
    let mut echo_route = route("/", "echo");
    if let Some(r) = retry {
        echo_route["route"]["retry_policy"] = r;
    }
    let mut h = hcm(
        "ing",
        vec![vhost(
            "all",
            &["*"],
            vec![route("/stall", "stalled"), echo_route],
        )],
    );
    h["typed_config"]["access_log"] = json!([config::file_log("/dev/stdout", Some(LOG))]);
    let mut b = bootstrap(
        free_port(),
        vec![listener("l", "127.0.0.1", port, h)],
        vec![
            config::cluster("stalled", &[stalled]),
            config::cluster("echo", &[echo]),
        ],
    );
    b["overload_manager"] = overload;
    let p = ProxyProcess::start(kind, &to_yaml(&b), &["--concurrency", "1"]).await;
    (p, port)
}

/// Saturated by a threshold trigger, the action resets an HTTP/2 upload that stalls in the
/// proxy; a stream holding no body data goes on and is answered. The reset stream's
/// RST_STREAM code, its access log line and the stats are Envoy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_uploads_are_reset_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let (stalled, _task) = stalled_upstream(Some(4096)).await;
        let echo = EchoUpstream::start("echo").await;
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let file = pressure_file("threshold");
            let o = overload(&file, json!({ "threshold": { "value": 0.9 } }));
            let (p, port) = start(kind, o, stalled, echo.port(), None).await;
            let mut got = Vec::new();
            let mut h2 = h2_client(port).await;
            let stall = upload(&mut h2, "/stall", 16 << 20).await;
            let slow = upload(&mut h2, "/slow?sleep=2500", 0).await;
            let held = stall.settle().await;
            assert!(held >= 1 << 20, "{kind:?}: the upload moved {held} bytes");
            inject(&file, "0.95");
            got.push(format!(
                "stall: {}",
                stall.outcome(Duration::from_secs(5)).await
            ));
            got.push(format!(
                "slow: {}",
                slow.outcome(Duration::from_secs(10)).await
            ));
            got.push(log_line(&p, "/stall").await);
            got.push(log_line(&p, "/slow?sleep=2500").await);
            let admin = p.admin();
            admin
                .wait_stat(
                    &format!("overload.{RESET}.active"),
                    Duration::from_secs(5),
                    |v| v == 1,
                )
                .await;
            // The fall back to 0 is a change too: it resets the highest class, empty here.
            inject(&file, "0");
            admin
                .wait_stat(
                    &format!("overload.{RESET}.active"),
                    Duration::from_secs(5),
                    |v| v == 0,
                )
                .await;
            for stat in [
                COUNT.to_string(),
                "http.ing.downstream_rq_rx_reset".to_string(),
                "http.ing.downstream_rq_tx_reset".to_string(),
                "http.ing.downstream_rq_2xx".to_string(),
                "cluster.stalled.upstream_rq_tx_reset".to_string(),
                format!("overload.{INJECTED}.failed_updates"),
            ] {
                got.push(format!("{stat}: {}", admin.counter(&stat).await));
            }
            eprintln!("{kind:?}: {got:#?}");
            seen.push(got);
            let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        assert!(seen[0][0].starts_with("stall: reset"), "{:?}", seen[0]);
        assert_eq!(seen[0][1], "slow: 200");
    })
    .await;
}

/// A scaled trigger (0.90 to 0.98) resets the streams of the highest size classes first, as
/// the pressure rises, as Envoy's does: bodies held whole in the retry buffer (8 KiB in class 1,
/// 32 KiB in class 3, 512 KiB in class 7, tracking from 4 KiB) while the upstream waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaled_pressure_resets_the_largest_streams_first_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let (stalled, _task) = stalled_upstream(Some(4096)).await;
        let echo = EchoUpstream::start("echo").await;
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let file = pressure_file("scaled");
            let o = overload(
                &file,
                json!({ "scaled": { "scaling_threshold": 0.9, "saturation_threshold": 0.98 } }),
            );
            let retry = json!({ "retry_on": "5xx", "num_retries": 1 });
            let (p, port) = start(kind, o, stalled, echo.port(), Some(retry)).await;
            let admin = p.admin();
            let mut h2 = h2_client(port).await;
            let small = upload(&mut h2, "/small?sleep=6000", 8 << 10).await;
            let medium = upload(&mut h2, "/medium?sleep=6000", 32 << 10).await;
            let large = upload(&mut h2, "/large?sleep=6000", 512 << 10).await;
            for u in [&small, &medium, &large] {
                u.settle().await;
            }
            let mut got = Vec::new();
            // The pressure, the action's scale, and the resets so far: 0.91 (12%) clears the two
            // highest classes (the large stream), 0.93 (37%) classes 7 to 4 (nothing more),
            // 0.95 (62%) classes 7 to 2 (the medium stream), and the fall to 0.5 (0) the
            // highest class alone.
            for (pressure, percent) in [("0.91", 12), ("0.93", 37), ("0.95", 62), ("0.5", 0)] {
                inject(&file, pressure);
                admin
                    .wait_stat(
                        &format!("overload.{RESET}.scale_percent"),
                        Duration::from_secs(5),
                        |v| v == percent,
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                got.push(format!("{pressure}: {}", admin.counter(COUNT).await));
            }
            got.push(format!(
                "large: {}",
                large.outcome(Duration::from_secs(2)).await
            ));
            got.push(format!(
                "medium: {}",
                medium.outcome(Duration::from_secs(2)).await
            ));
            got.push(format!(
                "small: {}",
                small.outcome(Duration::from_secs(15)).await
            ));
            for path in [
                "/large?sleep=6000",
                "/medium?sleep=6000",
                "/small?sleep=6000",
            ] {
                got.push(log_line(&p, path).await);
            }
            eprintln!("{kind:?}: {got:#?}");
            seen.push(got);
            let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        assert_eq!(seen[0][..4], ["0.91: 1", "0.93: 1", "0.95: 2", "0.5: 2"]);
        assert_eq!(seen[0][6], "small: 200");
    })
    .await;
}
