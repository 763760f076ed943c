//! Outlier detection side by side with Envoy 1.40: each proxy balances over its own two
//! healthy upstreams and one that answers 503; the test compares how many 503s reach the client
//! before the bad host is ejected, the `outlier_detection.*` stats, the `/clusters` flags, and
//! the host's return after its ejection time and its second ejection.

use std::time::{Duration, Instant};

use serde_json::json;
use skiff_tests::client::{get, Http1Client};
use skiff_tests::config::{bootstrap, http_listener, route, to_yaml};
use skiff_tests::proxy::{run_cli, write_config};
use skiff_tests::upstream::tcp::{TcpMode, TcpUpstream};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for, Kind, ProxyProcess};

const BAD_REPLY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";

fn config(admin: u16, port: u16, ports: &[u16], od: serde_json::Value, log: &str) -> String {
    let eps: Vec<_> = ports
        .iter()
        .map(|p| {
            json!({ "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": p } } } })
        })
        .collect();
    let mut b = bootstrap(
        admin,
        vec![http_listener(port, vec![route("/", "web")])],
        vec![
            json!({ "name": "web", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": { "cluster_name": "web", "endpoints": [ { "lb_endpoints": eps } ] },
            "outlier_detection": od }),
        ],
    );
    b["cluster_manager"] = json!({ "outlier_detection": { "event_log_path": log } });
    to_yaml(&b)
}

struct Side {
    kind: Kind,
    proxy: ProxyProcess,
    client: Http1Client,
    bad: u16,
    log: std::path::PathBuf,
    _ups: (EchoUpstream, EchoUpstream, TcpUpstream),
}

impl Side {
    async fn start(kind: Kind, od: serde_json::Value) -> Side {
        let a = EchoUpstream::with_options(EchoOptions::named("a")).await;
        let b = EchoUpstream::with_options(EchoOptions::named("b")).await;
        let bad = TcpUpstream::start(TcpMode::ReadThenReply(BAD_REPLY.to_vec())).await;
        let (admin, port) = (free_port(), free_port());
        let log = std::env::temp_dir().join(format!(
            "skiff-od-events-{}-{}-{port}.log",
            std::process::id(),
            kind.name()
        ));
        let _ = std::fs::remove_file(&log);
        let yaml = config(
            admin,
            port,
            &[a.port(), b.port(), bad.port()],
            od,
            &log.to_string_lossy(),
        );
        let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
        let client = Http1Client::connect(&format!("127.0.0.1:{port}"))
            .await
            .expect("connect");
        Side {
            kind,
            proxy,
            client,
            bad: bad.port(),
            log,
            _ups: (a, b, bad),
        }
    }

    /// Sends `n` requests; how many were answered 503.
    async fn failures(&mut self, n: usize) -> usize {
        let mut failed = 0;
        for _ in 0..n {
            let r = self
                .client
                .send(get("/", "od.example.com"))
                .await
                .expect("response");
            if r.status == 503 {
                failed += 1;
            }
        }
        failed
    }

    /// Sends requests until the bad host is ejected (Envoy's workers may take a moment to
    /// route to it again after it came back); how many were answered 503.
    async fn until_ejected(&mut self) -> usize {
        let start = Instant::now();
        let mut failed = 0;
        while self.flags().await != "/failed_outlier_check" {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{}: never ejected ({failed} failures)",
                self.kind.name()
            );
            failed += self.failures(1).await;
        }
        failed
    }

    /// The event log, timestamps, seconds since the last action and the bad host's port
    /// replaced.
    async fn events(&self) -> Vec<String> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|l| {
                let mut l = l.replace(&format!("127.0.0.1:{}", self.bad), "BAD");
                // To its closing quote: a timestamp on a whole second has no fraction
                // (`…:01Z`), others have one of any length.
                let key = "\"timestamp\":\"";
                if let Some(i) = l.find(key) {
                    let from = i + key.len();
                    if let Some(n) = l[from..].find('"') {
                        l.replace_range(from..from + n, "T");
                    }
                }
                // Whole seconds since the last action: timing, not logic.
                let key = "\"secs_since_last_action\":\"";
                if let Some(i) = l.find(key) {
                    let from = i + key.len();
                    if let Some(n) = l[from..].find('"') {
                        l.replace_range(from..from + n, "S");
                    }
                }
                l
            })
            .collect()
    }

    async fn flags(&self) -> String {
        let text = self.proxy.admin().get("/clusters").await.text();
        let key = format!("web::127.0.0.1:{}::health_flags::", self.bad);
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or("?")
            .to_string()
    }

    async fn stat(&self, name: &str) -> u64 {
        self.proxy
            .admin()
            .stat(&format!("cluster.web.outlier_detection.{name}"))
            .await
            .unwrap_or(0)
    }

    /// Waits until the bad host's flags are `want`; how long it took.
    async fn wait_flags(&self, want: &str) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.flags().await;
            if got == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{}: flags {got:?}, waiting for {want:?}",
                self.kind.name()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn consecutive_5xx_ejections_side_by_side() {
    run_for(Duration::from_secs(120), async {
        let mut results = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let od = json!({ "consecutive_5xx": 3, "interval": "0.2s",
                "base_ejection_time": "0.6s", "max_ejection_percent": 50 });
            let mut side = Side::start(kind, od).await;
            let who = kind.name();
            // Round robin over three hosts: the third 503 in a row from the bad host ejects it,
            // and no request reaches it after that.
            let first = side.until_ejected().await;
            // No request reaches it after that.
            assert_eq!(side.failures(20).await, 0, "{who}");
            let stats = [
                "ejections_active",
                "ejections_enforced_total",
                "ejections_enforced_consecutive_5xx",
                "ejections_detected_consecutive_5xx",
                "ejections_consecutive_5xx",
                "ejections_total",
                "ejections_overflow",
                "ejections_detected_consecutive_gateway_failure",
            ];
            let mut counted = Vec::new();
            for s in stats {
                counted.push((s, side.stat(s).await));
            }
            // The ejection ends at the first interval after 0.6 s.
            let back = side.wait_flags("healthy").await;
            assert!(
                back >= Duration::from_millis(200),
                "{who}: back after {back:?}"
            );
            assert_eq!(side.stat("ejections_active").await, 0, "{who}");
            // Again: three more 503s, then a second ejection (as long as the first, or twice
            // that when it comes before the backoff has decayed, an interval after the return).
            let second = side.until_ejected().await;
            let ejected = Instant::now();
            side.wait_flags("healthy").await;
            let lasted = ejected.elapsed();
            assert!(
                lasted >= Duration::from_millis(500),
                "{who}: second ejection lasted {lasted:?}"
            );
            results.push((first, second, counted, side.events().await));
        }
        assert_eq!(results[1], results[0], "skiff's results, Envoy's");
        assert_eq!(results[0].0, 3);
        // Two ejections and two returns in the event log.
        assert_eq!(results[0].3.len(), 4, "{:#?}", results[0].3);
    })
    .await;
}

#[tokio::test]
async fn success_rate_ejections_side_by_side() {
    run_for(Duration::from_secs(120), async {
        let mut results = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            // Consecutive errors never eject here; one interval's success rates do: 100, 100
            // and 0 against a threshold of one standard deviation under their mean.
            let od = json!({ "consecutive_5xx": 1000, "interval": "1s",
                "base_ejection_time": "30s", "max_ejection_percent": 50,
                "success_rate_minimum_hosts": 3, "success_rate_request_volume": 10,
                "success_rate_stdev_factor": 1000 });
            let mut side = Side::start(kind, od).await;
            let who = kind.name();
            let failed = side.failures(60).await;
            assert_eq!(failed, 20, "{who}");
            side.wait_flags("/failed_outlier_check").await;
            let mut counted = Vec::new();
            for s in [
                "ejections_active",
                "ejections_enforced_success_rate",
                "ejections_detected_success_rate",
                "ejections_success_rate",
                "ejections_total",
                "ejections_detected_failure_percentage",
                "ejections_enforced_failure_percentage",
            ] {
                counted.push((s, side.stat(s).await));
            }
            results.push((counted, side.events().await));
        }
        assert_eq!(
            results[1], results[0],
            "skiff's stats and event log, Envoy's"
        );
    })
    .await;
}

#[tokio::test]
async fn invalid_outlier_detection_is_refused_by_both() {
    run_for(Duration::from_secs(60), async {
        for (od, why) in [
            (
                json!({ "base_ejection_time": "10s", "max_ejection_time": "5s" }),
                "max_ejection_time",
            ),
            (
                json!({ "max_ejection_percent": 101 }),
                "max_ejection_percent",
            ),
        ] {
            let yaml = to_yaml(&bootstrap(
                free_port(),
                vec![],
                vec![
                    json!({ "name": "c", "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": { "cluster_name": "c", "endpoints": [] },
                    "outlier_detection": od.clone() }),
                ],
            ));
            let cfg = write_config("bad-outlier", &yaml);
            for kind in [Kind::Envoy, Kind::under_test()] {
                let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert_ne!(out.code, Some(0), "{}: {od} accepted", kind.name());
                if kind != Kind::Envoy {
                    assert!(out.output().contains(why), "{why}: {}", out.output());
                }
            }
        }
    })
    .await;
}
