//! Active health checks side by side with Envoy 1.40: each proxy checks its own set of the
//! same upstreams (a healthy one, one answering 503, one that goes away and comes back, and
//! TCP ones), and the test compares what each check sends, which hosts take traffic, the
//! `/clusters` flags and the `health_check.*` stats as the upstreams change.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_tests::client::{get, Http1Client};
use skiff_tests::config::{bootstrap, http_listener, route, to_yaml};
use skiff_tests::proxy::{run_cli, write_config};
use skiff_tests::upstream::h2c::H2Upstream;
use skiff_tests::upstream::tcp::{TcpMode, TcpUpstream};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for, Kind, ProxyProcess};

fn endpoints(ports: &[u16]) -> Value {
    let eps: Vec<Value> = ports
        .iter()
        .map(|p| {
            json!({ "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": p } } } })
        })
        .collect();
    json!([ { "lb_endpoints": eps } ])
}

fn config(
    admin: u16,
    port: u16,
    http: &[u16],
    tcp: &[u16],
    h2: u16,
    closed: [u16; 2],
    events: &str,
) -> String {
    let fast = json!({ "interval": "0.1s", "no_traffic_interval": "0.1s", "timeout": "0.5s",
        "unhealthy_threshold": 2, "healthy_threshold": 2 });
    let mut http_check = fast.clone();
    // A new connection per check: an upstream that stops listening fails the next one.
    http_check["reuse_connection"] = json!(false);
    // The event log, in both its forms.
    http_check["event_logger"] = json!([ { "name": "envoy.health_check.event_sinks.file",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink",
            "event_log_path": events } } ]);
    http_check["http_health_check"] = json!({ "path": "/healthz?probe=1",
        "request_headers_to_add": [ { "header": { "key": "x-hc", "value": "probe" } } ] });
    let mut h2_check = fast.clone();
    h2_check["http_health_check"] = json!({ "path": "/ready", "host": "svc.local",
        "codec_client_type": "HTTP2" });
    let mut post_check = fast.clone();
    post_check["http_health_check"] = json!({ "path": "/post", "method": "POST",
        "send": { "text": "70696e67" },
        // "POST", then "Envoy/HC", in the echo of the request.
        "receive": [ { "text": "504f5354" }, { "binary": "RW52b3kvSEM=" } ],
        "expected_statuses": [ { "start": 200, "end": 300 } ] });
    let mut tcp_check = fast;
    tcp_check["event_log_path"] = json!(events);
    tcp_check["tcp_health_check"] =
        json!({ "send": { "text": "70696e67" }, "receive": [ { "text": "70696e67" } ] });
    to_yaml(&bootstrap(
        admin,
        vec![http_listener(port, vec![route("/", "web")])],
        vec![
            json!({ "name": "web", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": { "cluster_name": "web", "endpoints": endpoints(http) },
                // One host of three left must not put the cluster in panic.
                "common_lb_config": { "healthy_panic_threshold": { "value": 0 } },
                "health_checks": [ http_check ] }),
            json!({ "name": "h2", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": { "cluster_name": "h2", "endpoints": endpoints(&[h2]) },
                "health_checks": [ h2_check ] }),
            // Endpoints with their own health_check_config: one checked on another port (the
            // good upstream's) under its own name, one not checked at all.
            json!({ "name": "alt", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": { "cluster_name": "alt", "endpoints": [ { "lb_endpoints": [
                    { "endpoint": { "address": { "socket_address": {
                        "address": "127.0.0.1", "port_value": closed[0] } },
                      "health_check_config": { "port_value": http[0], "hostname": "alt.hc" } } },
                    { "endpoint": { "address": { "socket_address": {
                        "address": "127.0.0.1", "port_value": closed[1] } },
                      "health_check_config": { "disable_active_health_check": true } } }
                ] } ] },
                "health_checks": [ { "interval": "0.1s", "no_traffic_interval": "0.1s",
                    "timeout": "0.5s", "unhealthy_threshold": 2, "healthy_threshold": 2,
                    "http_health_check": { "path": "/alt" } } ] }),
            // Endpoints checked at another address: the good upstream's (one of them by its
            // port_value over a closed address's port), and a good endpoint checked at a
            // closed one.
            json!({ "name": "elsewhere", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": { "cluster_name": "elsewhere", "endpoints": [ { "lb_endpoints": [
                    { "endpoint": { "address": { "socket_address": {
                        "address": "127.0.0.1", "port_value": closed[0] } },
                      "health_check_config": { "address": { "socket_address": {
                        "address": "127.0.0.1", "port_value": http[0] } } } } },
                    { "endpoint": { "address": { "socket_address": {
                        "address": "127.0.0.1", "port_value": closed[1] } },
                      "health_check_config": { "port_value": http[0], "address": { "socket_address": {
                        "address": "127.0.0.1", "port_value": closed[0] } } } } },
                    { "endpoint": { "address": { "socket_address": {
                        "address": "127.0.0.1", "port_value": http[0] } },
                      "health_check_config": { "address": { "socket_address": {
                        "address": "127.0.0.1", "port_value": closed[1] } } } } }
                ] } ] },
                "health_checks": [ { "interval": "0.1s", "no_traffic_interval": "0.1s",
                    "timeout": "0.5s", "unhealthy_threshold": 2, "healthy_threshold": 2,
                    "http_health_check": { "path": "/elsewhere" } } ] }),
            json!({ "name": "post", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": { "cluster_name": "post", "endpoints": endpoints(&http[..1]) },
                "health_checks": [ post_check ] }),
            // service_name_matcher: the upstream names no checked cluster (an empty name).
            json!({ "name": "svc_no", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": { "cluster_name": "svc_no", "endpoints": endpoints(&http[..1]) },
                "health_checks": [ { "interval": "0.1s", "no_traffic_interval": "0.1s",
                    "timeout": "0.5s", "unhealthy_threshold": 2, "healthy_threshold": 2,
                    "http_health_check": { "path": "/svc",
                        "service_name_matcher": { "prefix": "svc" } } } ] }),
            json!({ "name": "svc_ok", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": { "cluster_name": "svc_ok", "endpoints": endpoints(&http[..1]) },
                "health_checks": [ { "interval": "0.1s", "no_traffic_interval": "0.1s",
                    "timeout": "0.5s", "unhealthy_threshold": 2, "healthy_threshold": 2,
                    "http_health_check": { "path": "/svc",
                        "service_name_matcher": { "exact": "" } } } ] }),
            json!({ "name": "raw", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": { "cluster_name": "raw", "endpoints": endpoints(tcp) },
                "health_checks": [ tcp_check ] }),
        ],
    ))
}

const BAD_REPLY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";

struct Side {
    kind: Kind,
    proxy: ProxyProcess,
    port: u16,
    good: EchoUpstream,
    flappy: Option<EchoUpstream>,
    flappy_addr: std::net::SocketAddr,
    _bad: TcpUpstream,
    _tcp: [TcpUpstream; 2],
    h2: H2Upstream,
    closed: [u16; 2],
    events: std::path::PathBuf,
}

impl Side {
    async fn start(kind: Kind) -> Side {
        let good = EchoUpstream::with_options(EchoOptions::named("good")).await;
        let flappy = EchoUpstream::with_options(EchoOptions::named("flappy")).await;
        let bad = TcpUpstream::start(TcpMode::ReadThenReply(BAD_REPLY.to_vec())).await;
        let echo = TcpUpstream::start(TcpMode::Echo).await;
        let silent = TcpUpstream::start(TcpMode::ReadThenClose).await;
        let h2 = H2Upstream::start("h2").await;
        let (admin, port) = (free_port(), free_port());
        let closed = [free_port(), free_port()];
        let events = std::env::temp_dir().join(format!(
            "skiff-hc-events-{}-{}.log",
            std::process::id(),
            kind.name()
        ));
        let _ = std::fs::remove_file(&events);
        let yaml = config(
            admin,
            port,
            &[good.port(), bad.port(), flappy.port()],
            &[echo.port(), silent.port()],
            h2.port(),
            closed,
            &events.to_string_lossy(),
        );
        let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
        Side {
            kind,
            proxy,
            port,
            good,
            flappy_addr: flappy.addr,
            flappy: Some(flappy),
            _bad: bad,
            _tcp: [echo, silent],
            h2,
            closed,
            events,
        }
    }

    /// Which upstreams 12 requests reach.
    async fn reached(&self) -> std::collections::BTreeSet<String> {
        let mut client = Http1Client::connect(&format!("127.0.0.1:{}", self.port))
            .await
            .expect("connect");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..12 {
            let r = client
                .send(get("/", "hc.example.com"))
                .await
                .expect("response");
            seen.insert(r.header("x-upstream").unwrap_or("?").to_string());
        }
        seen
    }

    /// Waits (up to 5 s) until the requests reach exactly `want`.
    async fn wait_reached(&self, want: &[&str]) {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.reached().await;
            if got.iter().map(String::as_str).eq(want.iter().copied()) {
                return;
            }
            assert!(
                Instant::now() < until,
                "{}: requests reach {got:?}, waiting for {want:?}",
                self.kind.name()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/clusters`' health flags of the host on `port`.
    async fn flags(&self, cluster: &str, port: u16) -> String {
        let text = self.proxy.admin().get("/clusters").await.text();
        let key = format!("{cluster}::127.0.0.1:{port}::health_flags::");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or("?")
            .to_string()
    }

    async fn wait_flags(&self, cluster: &str, port: u16, want: &str) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.flags(cluster, port).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < until,
                "{}: {cluster} {port}: flags {got:?}, waiting for {want:?}",
                self.kind.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stat(&self, name: &str) -> u64 {
        self.proxy
            .admin()
            .stat(&format!("cluster.{name}"))
            .await
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn active_health_checks_side_by_side() {
    run_for(Duration::from_secs(120), async {
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            sides.push(Side::start(kind).await);
        }
        let mut checks = Vec::new();
        let mut h2_checks = Vec::new();
        let mut logs = Vec::new();
        for side in sides.iter_mut() {
            let who = side.kind.name();
            let (bad, flappy) = (side._bad.port(), side.flappy_addr.port());
            // The first checks ran before the listener took traffic: the 503 host is out.
            side.wait_flags("web", bad, "/failed_active_hc").await;
            assert_eq!(
                side.flags("web", side.good.port()).await,
                "healthy",
                "{who}"
            );
            side.wait_reached(&["flappy", "good"]).await;
            // The TCP check: the echo upstream sends "ping" back; the silent one never does.
            side.wait_flags("raw", side._tcp[0].port(), "healthy").await;
            side.wait_flags("raw", side._tcp[1].port(), "/failed_active_hc")
                .await;

            // The endpoint's own port and name; an endpoint left unchecked is healthy.
            side.wait_flags("alt", side.closed[0], "healthy").await;
            assert_eq!(side.flags("alt", side.closed[1]).await, "healthy", "{who}");
            let alt = side
                .good
                .rec
                .requests()
                .into_iter()
                .find(|r| r.path == "/alt")
                .expect("a check on the endpoint's health check port");
            assert_eq!(alt.header("host"), Some("alt.hc"), "{who}");

            // Checked at the health check address.
            side.wait_flags("elsewhere", side.closed[0], "healthy")
                .await;
            side.wait_flags("elsewhere", side.closed[1], "healthy")
                .await;
            side.wait_flags("elsewhere", side.good.port(), "/failed_active_hc")
                .await;

            // An HTTP/2 check.
            side.wait_flags("h2", side.h2.port(), "healthy").await;
            let h2 = side
                .h2
                .rec
                .requests()
                .into_iter()
                .next()
                .expect("an HTTP/2 check");
            h2_checks.push((h2.method, h2.path, h2.authority, h2.headers));

            // A POST with a body; the echo of its head holds what the check looks for.
            side.wait_flags("post", side.good.port(), "healthy").await;
            let post = side
                .good
                .rec
                .requests()
                .into_iter()
                .find(|r| r.path == "/post")
                .expect("a POST check");
            h2_checks.push((post.method, post.path, post.authority, post.headers));

            // The answer must name a checked cluster the matcher takes.
            side.wait_flags("svc_no", side.good.port(), "/failed_active_hc")
                .await;
            side.wait_flags("svc_ok", side.good.port(), "healthy").await;
            let admin = side.proxy.admin();
            for c in ["svc_no", "svc_ok"] {
                let n = admin
                    .counter(&format!("cluster.{c}.health_check.verify_cluster"))
                    .await;
                assert!(n >= 2, "{who}: {c} verify_cluster {n}");
            }

            // What a check sends.
            let hc = side
                .good
                .rec
                .requests()
                .into_iter()
                .find(|r| r.path.starts_with("/healthz"))
                .expect("a health check");
            checks.push((
                hc.method.clone(),
                hc.path.clone(),
                hc.headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>(),
            ));

            // The flappy host goes away: two refused connections make it unhealthy.
            side.flappy = None;
            side.wait_flags("web", flappy, "/failed_active_hc").await;
            side.wait_reached(&["good"]).await;
            // Back on the same port: two passed checks make it healthy again.
            side.flappy = Some(
                EchoUpstream::with_options_at(EchoOptions::named("flappy"), side.flappy_addr).await,
            );
            side.wait_flags("web", flappy, "healthy").await;
            side.wait_reached(&["flappy", "good"]).await;

            assert_eq!(side.stat("web.health_check.healthy").await, 2, "{who}");
            assert_eq!(side.stat("raw.health_check.healthy").await, 1, "{who}");
            for s in ["attempt", "success", "failure", "network_failure"] {
                assert!(
                    side.stat(&format!("web.health_check.{s}")).await > 0,
                    "{who}: {s}"
                );
            }
            assert_eq!(side.stat("web.membership_healthy").await, 2, "{who}");

            // The event log: each line with its timestamp and ports replaced, sorted (the
            // hosts' events interleave as their checks happen to run).
            let text = std::fs::read_to_string(&side.events).unwrap_or_default();
            let names = [
                (side.good.port(), "good"),
                (bad, "bad"),
                (flappy, "flappy"),
                (side._tcp[0].port(), "echo"),
                (side._tcp[1].port(), "silent"),
            ];
            let mut lines: Vec<String> = text
                .lines()
                .map(|l| {
                    let mut l = l.to_string();
                    // To its closing quote (a whole second's timestamp has no fraction).
                    let key = "\"timestamp\":\"";
                    if let Some(i) = l.find(key) {
                        let from = i + key.len();
                        if let Some(n) = l[from..].find('"') {
                            l.replace_range(from..from + n, "T");
                        }
                    }
                    for (p, n) in names {
                        l = l.replace(
                            &format!("\"port_value\":{p},"),
                            &format!("\"port_value\":\"{n}\","),
                        );
                    }
                    l
                })
                .collect();
            lines.sort();
            logs.push(lines);
        }
        assert_eq!(checks[1], checks[0], "the check skiff sends, Envoy's");
        assert_eq!(logs[1], logs[0], "skiff's health check event log, Envoy's");
        assert_eq!(logs[0].len(), 7, "{:#?}", logs[0]);
        // HTTP/2 and POST checks, Envoy's then skiff's.
        assert_eq!(
            h2_checks[2], h2_checks[0],
            "the HTTP/2 check skiff sends, Envoy's"
        );
        assert_eq!(
            h2_checks[3], h2_checks[1],
            "the POST check skiff sends, Envoy's"
        );
        assert_eq!(h2_checks[0].2.as_deref(), Some("svc.local"));
        assert_eq!(checks[0].0, "GET");
        assert_eq!(checks[0].1, "/healthz?probe=1");
        assert!(
            checks[0].2.contains(&"host: web".to_string())
                && checks[0].2.contains(&"user-agent: Envoy/HC".to_string())
                && checks[0].2.contains(&"x-hc: probe".to_string()),
            "{:?}",
            checks[0].2
        );
    })
    .await;
}

#[tokio::test]
async fn invalid_health_checks_are_refused_by_both() {
    run_for(Duration::from_secs(60), async {
        let bad: [(Value, &str); 3] = [
            (
                json!({ "timeout": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
                    "http_health_check": { "path": "/" } }),
                "interval",
            ),
            (
                json!({ "timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
                    "healthy_threshold": 1, "http_health_check": { "path": "/",
                    "send": { "text": "6869" } } }),
                "payload",
            ),
            (
                json!({ "timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
                    "healthy_threshold": 1, "tcp_health_check": {
                    "receive": [ { "text": "zz" } ] } }),
                "hex",
            ),
        ];
        for (check, why) in bad {
            let yaml = to_yaml(&bootstrap(
                free_port(),
                vec![],
                vec![json!({ "name": "c", "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": { "cluster_name": "c", "endpoints": endpoints(&[free_port()]) },
                    "health_checks": [ check.clone() ] })],
            ));
            let cfg = write_config("bad-health-check", &yaml);
            for kind in [Kind::Envoy, Kind::under_test()] {
                let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert_ne!(out.code, Some(0), "{}: {check} accepted", kind.name());
                if kind != Kind::Envoy {
                    assert!(out.output().contains(why), "{why}: {}", out.output());
                }
            }
        }
    })
    .await;
}
