//! The overload manager side by side with Envoy 1.40: resource monitors, actions with threshold
//! and scaled triggers, load shed points, `bypass_overload_manager` and their stats; and, for
//! skiff alone, a real memory squeeze that the manager contains.
//!
//! Pressure is made real, not injected: a `fixed_heap` monitor whose limit is below what either
//! process's allocator holds is saturated from its first reading; the connection-count monitor
//! follows connections the test opens.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{self, raw_exchange};
use skiff_tests::config::{self, bootstrap, hcm, listener, route, to_yaml, vhost};
use skiff_tests::run_for;
use skiff_tests::side_by_side::{assert_same_response, pair, Side, Up};
use skiff_tests::upstream::stalled_upstream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const HEAP: &str = "envoy.resource_monitors.fixed_heap";
const CONNECTIONS: &str = "envoy.resource_monitors.global_downstream_max_connections";
const GET: &[u8] = b"GET /o HTTP/1.1\r\nHost: a\r\n\r\n";
const LOG: &str = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n";

/// A heap monitor both processes are over from the start (64 KiB).
fn heap_monitor() -> Value {
    json!({
        "name": HEAP,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
            "max_heap_size_bytes": 65536
        }
    })
}

fn connection_monitor(max: u64) -> Value {
    json!({
        "name": CONNECTIONS,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
            "max_active_downstream_connections": max
        }
    })
}

fn threshold(resource: &str, value: f64) -> Value {
    json!([{ "name": resource, "threshold": { "value": value } }])
}

/// An overload manager with the heap monitor alone and one action or load shed point
/// (`kind`: `actions` or `loadshed_points`) saturated by it.
fn on_heap(kind: &str, name: &str) -> Value {
    let mut o = json!({
        "refresh_interval": "0.1s",
        "resource_monitors": [heap_monitor()],
    });
    o[kind] = json!([{ "name": name, "triggers": threshold(HEAP, 0.9) }]);
    o
}

/// Each of `ports` (listeners with `bypass_overload_manager`) answers a request.
async fn bypass_serves(ports: &[u16]) {
    for port in ports {
        let r = raw_exchange(
            &format!("127.0.0.1:{port}"),
            GET,
            Duration::from_millis(800),
        )
        .await;
        let r = r.responses();
        assert_eq!(
            r.first().map(|r| r.status),
            Some(200),
            "bypass listener {port}"
        );
    }
}

/// The everyday listener on `listen`, a second one on `bypass` with
/// `bypass_overload_manager`, and `overload_manager` set to `overload`.
fn build(admin: u16, listen: u16, upstream: u16, bypass: u16, overload: Value) -> String {
    let mut h = hcm(
        "ingress_http",
        vec![vhost("backend", &["*"], vec![route("/", "backend")])],
    );
    h["typed_config"]["access_log"] = json!([config::file_log("/dev/stdout", Some(LOG))]);
    h["typed_config"]["common_http_protocol_options"] = json!({ "idle_timeout": "30s" });
    h["typed_config"]["drain_timeout"] = json!("0.5s");
    let mut b = bootstrap(
        admin,
        vec![
            listener("main", "127.0.0.1", listen, h.clone()),
            listener("bypass", "127.0.0.1", bypass, h),
        ],
        vec![config::cluster("backend", &[upstream])],
    );
    b["static_resources"]["listeners"][1]["bypass_overload_manager"] = json!(true);
    b["overload_manager"] = overload;
    to_yaml(&b)
}

/// Starts Envoy and skiff with `overload`; the bypass listener's port of each.
async fn start(overload: Value) -> (Side, Side, u16, u16) {
    let ports = std::sync::Mutex::new(Vec::new());
    let (e, s) = pair(Up::H1, |admin, listen, upstream| {
        let bypass = skiff_tests::free_port();
        ports.lock().expect("ports").push(bypass);
        build(admin, listen, upstream, bypass, overload.clone())
    })
    .await;
    let p = ports.into_inner().expect("ports");
    (e, s, p[0], p[1])
}

async fn wait_both(e: &Side, s: &Side, stat: &str, pred: impl Fn(u64) -> bool + Copy) {
    for side in [e, s] {
        side.proxy
            .admin()
            .wait_stat(stat, Duration::from_secs(10), pred)
            .await;
    }
}

async fn stat_both(e: &Side, s: &Side, stat: &str) -> (u64, u64) {
    (
        e.proxy.admin().counter(stat).await,
        s.proxy.admin().counter(stat).await,
    )
}

async fn last_log_line(side: &Side) -> String {
    side.proxy
        .wait_stdout_line(Duration::from_secs(5), |l| {
            l.starts_with(|c: char| c.is_ascii_digit())
        })
        .await;
    let out = side.proxy.stdout();
    out.lines()
        .rfind(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_accepting_requests_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let overload = on_heap("actions", "envoy.overload_actions.stop_accepting_requests");
        let (e, s, eb, sb) = start(overload).await;
        let active = "overload.envoy.overload_actions.stop_accepting_requests.active";
        wait_both(&e, &s, active, |v| v == 1).await;
        for side in [&e, &s] {
            let a = side.proxy.admin();
            assert!(a.counter(&format!("overload.{HEAP}.pressure")).await > 100);
            assert_eq!(
                a.counter("overload.envoy.overload_actions.stop_accepting_requests.scale_percent")
                    .await,
                100
            );
            assert_eq!(
                a.counter(&format!("overload.{HEAP}.failed_updates")).await,
                0
            );
        }
        // The reply, the connection and the access log are Envoy's.
        let re = raw_exchange(&e.addr(), GET, Duration::from_millis(800)).await;
        let rs = raw_exchange(&s.addr(), GET, Duration::from_millis(800)).await;
        let (pe, ps) = (re.responses(), rs.responses());
        assert_eq!(pe.len(), 1, "{}", re.text());
        assert_eq!(ps.len(), 1, "{}", rs.text());
        assert_same_response("overloaded", &pe[0], &ps[0]);
        assert_eq!(ps[0].status, 503);
        assert_eq!(String::from_utf8_lossy(&ps[0].body), "envoy overloaded");
        assert_eq!(re.closed, rs.closed, "connection state");
        assert_eq!(last_log_line(&e).await, last_log_line(&s).await);
        let (ce, cs) = stat_both(&e, &s, "http.ingress_http.downstream_rq_overload_close").await;
        assert_eq!((ce, cs), (1, 1));
        assert_eq!(
            s.rec.requests().len(),
            0,
            "nothing reached skiff's upstream"
        );
        // The bypass listener serves as usual on both.
        bypass_serves(&[eb, sb]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disable_keepalive_and_reduce_timeouts_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let overload = json!({
            "refresh_interval": "0.1s",
            "resource_monitors": [heap_monitor()],
            "actions": [
                {
                    "name": "envoy.overload_actions.disable_http_keepalive",
                    "triggers": threshold(HEAP, 0.5)
                },
                {
                    "name": "envoy.overload_actions.reduce_timeouts",
                    "triggers": [{ "name": HEAP, "scaled": {
                        "scaling_threshold": 0.1, "saturation_threshold": 0.2 } }],
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig",
                        "timer_scale_factors": [
                            { "timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": "1s" }
                        ]
                    }
                }
            ]
        });
        let (e, s, _, _) = start(overload).await;
        // idle_timeout 30 s, which reduce_timeouts brings down to its 1 s minimum.
        wait_both(
            &e,
            &s,
            "overload.envoy.overload_actions.disable_http_keepalive.active",
            |v| v == 1,
        )
        .await;
        wait_both(
            &e,
            &s,
            "overload.envoy.overload_actions.reduce_timeouts.scale_percent",
            |v| v == 100,
        )
        .await;
        // Every response ends its connection: `connection: close`, and a client that stays
        // is closed after drain_timeout (0.5 s here) and the delayed close (1 s), as in a drain.
        let (ea, sa) = (e.addr(), s.addr());
        let (re, rs) = tokio::join!(
            raw_exchange(&ea, GET, Duration::from_millis(3500)),
            raw_exchange(&sa, GET, Duration::from_millis(3500))
        );
        let (pe, ps) = (re.responses(), rs.responses());
        assert_same_response("keepalive disabled", &pe[0], &ps[0]);
        assert_eq!(ps[0].header("connection"), Some("close"));
        assert!(re.closed && rs.closed, "closed: envoy {} skiff {}", re.closed, rs.closed);
        let (ce, cs) = stat_both(
            &e,
            &s,
            "http.ingress_http.downstream_cx_overload_disable_keepalive",
        )
        .await;
        assert_eq!((ce, cs), (1, 1));
        // A silent connection is closed by the scaled idle timer, not after 30 s.
        let mut closed = Vec::new();
        for side in [&e, &s] {
            let mut c = TcpStream::connect(side.addr()).await.expect("connect");
            let t = std::time::Instant::now();
            let r = client::read_until_close(&mut c, Duration::from_secs(5)).await;
            assert!(r.closed, "{}: idle connection not closed", side.proxy.kind.name());
            closed.push(t.elapsed());
        }
        for d in &closed {
            assert!(
                *d >= Duration::from_millis(700) && *d < Duration::from_secs(3),
                "closed after {closed:?}"
            );
        }
    })
    .await;
}

async fn overload_rejects(side: &Side) -> u64 {
    let name = format!(
        "listener.127.0.0.1_{}.downstream_cx_overload_reject",
        side.port
    );
    side.proxy.admin().counter(&name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reject_incoming_connections_as_envoy() {
    run_for(Duration::from_secs(60), async {
        // Connections are closed on accept; the bypass listener's are served. The connection
        // count is a proactive resource in Envoy 1.40: it limits connections as they come but
        // never feeds a trigger, so its pressure stays 0 and an action on it never fires.
        let overload = json!({
            "refresh_interval": "0.1s",
            "resource_monitors": [connection_monitor(4), heap_monitor()],
            "actions": [
                {
                    "name": "envoy.overload_actions.reject_incoming_connections",
                    "triggers": threshold(HEAP, 0.9)
                },
                {
                    "name": "envoy.overload_actions.disable_http_keepalive",
                    "triggers": threshold(CONNECTIONS, 0.1)
                }
            ]
        });
        let (e, s, eb, sb) = start(overload).await;
        let active = "overload.envoy.overload_actions.reject_incoming_connections.active";
        wait_both(&e, &s, active, |v| v == 1).await;
        let mut bypassed = Vec::new();
        for port in [eb, sb] {
            for _ in 0..3 {
                bypassed.push(
                    TcpStream::connect(format!("127.0.0.1:{port}"))
                        .await
                        .expect("connect"),
                );
            }
        }
        for side in [&e, &s] {
            let r = raw_exchange(&side.addr(), GET, Duration::from_secs(2)).await;
            assert!(r.closed && r.data.is_empty(), "{}", r.text());
            assert_eq!(overload_rejects(side).await, 1);
        }
        for mut c in bypassed.drain(..) {
            c.write_all(GET).await.expect("write");
            let r = client::read_responses(&mut c, 1, Duration::from_secs(2)).await;
            let r = r.responses();
            assert_eq!(r.first().map(|r| r.status), Some(200));
            assert_eq!(r[0].header("connection"), None, "keepalive stays on");
        }
        let pressure = format!("overload.{CONNECTIONS}.pressure");
        assert_eq!(stat_both(&e, &s, &pressure).await, (0, 0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_listener_accept_point_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let overload = on_heap(
            "loadshed_points",
            "envoy.load_shed_points.tcp_listener_accept",
        );
        let (e, s, eb, sb) = start(overload).await;
        let point = "overload.envoy.load_shed_points.tcp_listener_accept";
        wait_both(&e, &s, &format!("{point}.scale_percent"), |v| v == 100).await;
        for side in [&e, &s] {
            let r = raw_exchange(&side.addr(), GET, Duration::from_secs(2)).await;
            assert!(r.closed && r.data.is_empty(), "{}", r.text());
            assert_eq!(overload_rejects(side).await, 1);
        }
        let count = format!("{point}.shed_load_count");
        assert_eq!(stat_both(&e, &s, &count).await, (1, 1));
        bypass_serves(&[eb, sb]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_accepting_connections_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let overload = on_heap(
            "actions",
            "envoy.overload_actions.stop_accepting_connections",
        );
        let (e, s, eb, sb) = start(overload).await;
        wait_both(
            &e,
            &s,
            "overload.envoy.overload_actions.stop_accepting_connections.active",
            |v| v == 1,
        )
        .await;
        // The kernel completes the handshake (the backlog) but nothing answers.
        for side in [&e, &s] {
            let r = raw_exchange(&side.addr(), GET, Duration::from_millis(700)).await;
            assert!(!r.closed && r.data.is_empty(), "{}", r.text());
        }
        bypass_serves(&[eb, sb]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http1_load_shed_points_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let point =
            |name: &str| on_heap("loadshed_points", &format!("envoy.load_shed_points.{name}"));
        // http1_server_abort_dispatch: the codec's 500 and a closed connection;
        // hcm_ondata_creating_codec: closed before any reply. Both count as requests refused.
        let ((ae, as_, _, _), (ce, cs, _, _)) = tokio::join!(
            start(point("http1_server_abort_dispatch")),
            start(point("hcm_ondata_creating_codec"))
        );
        wait_both(
            &ae,
            &as_,
            "overload.envoy.load_shed_points.http1_server_abort_dispatch.scale_percent",
            |v| v == 100,
        )
        .await;
        wait_both(
            &ce,
            &cs,
            "overload.envoy.load_shed_points.hcm_ondata_creating_codec.scale_percent",
            |v| v == 100,
        )
        .await;
        let (ea, sa) = (ae.addr(), as_.addr());
        let (re, rs) = tokio::join!(
            raw_exchange(&ea, GET, Duration::from_secs(3)),
            raw_exchange(&sa, GET, Duration::from_secs(3))
        );
        let (pe, ps) = (re.responses(), rs.responses());
        assert_eq!(ps.len(), 1, "{}", rs.text());
        assert_same_response("abort dispatch", &pe[0], &ps[0]);
        assert_eq!(ps[0].status, 500);
        assert!(re.closed && rs.closed);
        assert_eq!(last_log_line(&ae).await, last_log_line(&as_).await);
        let close = "http.ingress_http.downstream_rq_overload_close";
        assert_eq!(stat_both(&ae, &as_, close).await, (1, 1));
        for side in [&ce, &cs] {
            let r = raw_exchange(&side.addr(), GET, Duration::from_secs(3)).await;
            assert!(r.closed && r.data.is_empty(), "{}", r.text());
        }
        assert_eq!(stat_both(&ce, &cs, close).await, (1, 1));
    })
    .await;
}

/// VmRSS of `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Opens `streams` HTTP/2 uploads of `each` bytes, one every `pace`, on one connection; the
/// statuses of those answered before the end, and the proxy's peak RSS meanwhile.
async fn squeeze(
    pid: u32,
    port: u16,
    streams: usize,
    each: usize,
    pace: Duration,
) -> (Vec<u16>, u64) {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut h2, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut responses = Vec::new();
    let mut senders = Vec::new();
    let mut peak = 0;
    let chunk = bytes::Bytes::from(vec![b'x'; 1 << 20]);
    for _ in 0..streams {
        h2 = match h2.ready().await {
            Ok(h) => h,
            Err(_) => break,
        };
        let req = http::Request::post(format!("http://127.0.0.1:{port}/up"))
            .body(())
            .expect("request");
        let Ok((resp, mut body)) = h2.send_request(req, false) else {
            break;
        };
        responses.push(resp);
        let chunk = chunk.clone();
        // Each stream sends what the proxy's window lets through; its sender is kept so the
        // stream stays open.
        senders.push(tokio::spawn(async move {
            let mut sent = 0;
            while sent < each {
                body.reserve_capacity(chunk.len());
                match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                    Some(Ok(n)) if n > 0 => {
                        if body.send_data(chunk.slice(..n), false).is_err() {
                            return body;
                        }
                        sent += n;
                    }
                    _ => return body,
                }
            }
            body
        }));
        tokio::time::sleep(pace).await;
        peak = peak.max(rss(pid));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    peak = peak.max(rss(pid));
    let mut statuses = Vec::new();
    for r in responses {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(20), r).await {
            statuses.push(r.status().as_u16());
        }
    }
    for s in senders {
        s.abort();
    }
    (statuses, peak)
}

/// A memory squeeze, skiff alone: uploads that stall upstream fill the proxy's HTTP/2 stream
/// windows (8 MiB each). Without an overload manager the proxy holds all of them; with a
/// `fixed_heap` monitor at 48 MiB and `stop_accepting_requests` at half of it, new uploads get
/// 503 once the heap passes it, and memory stays bounded while the proxy keeps serving; with
/// `reset_high_memory_stream` scaled from half of it, the stalled uploads are reset instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_memory_squeeze_is_contained() {
    if skiff_tests::proxy::skiff_only("a_memory_squeeze_is_contained") {
        return;
    }
    run_for(Duration::from_secs(90), async {
        let (upstream, _task) = stalled_upstream(None).await;
        let start = |overload: Option<Value>| async move {
            let (admin, listen) = (skiff_tests::free_port(), skiff_tests::free_port());
            let mut h = hcm(
                "ingress_http",
                vec![vhost("backend", &["*"], vec![route("/", "backend")])],
            );
            h["typed_config"]["http2_protocol_options"] = json!({
                "initial_stream_window_size": 8388608,
                "initial_connection_window_size": 1073741824
            });
            let mut b = bootstrap(
                admin,
                vec![listener("main", "127.0.0.1", listen, h)],
                vec![config::cluster("backend", &[upstream])],
            );
            b["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] =
                json!(8388608);
            if let Some(o) = overload {
                b["overload_manager"] = o;
            }
            let p = skiff_tests::proxy::Skiff::start(&to_yaml(&b), &["--concurrency", "1"]).await;
            (p, listen)
        };
        let overload = json!({
            "refresh_interval": "0.05s",
            "resource_monitors": [{
                "name": HEAP,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": 48u64 << 20
                }
            }],
            "actions": [{
                "name": "envoy.overload_actions.stop_accepting_requests",
                "triggers": threshold(HEAP, 0.5)
            }]
        });
        // The same heap monitor resetting the streams that hold the most memory as the heap
        // grows past half of it (every stalled upload is in the highest class from 512 bytes).
        let resetting = json!({
            "refresh_interval": "0.05s",
            "buffer_factory_config": { "minimum_account_to_track_power_of_two": 10 },
            "resource_monitors": overload["resource_monitors"].clone(),
            "actions": [{
                "name": "envoy.overload_actions.reset_high_memory_stream",
                "triggers": [{ "name": HEAP, "scaled": { "scaling_threshold": 0.5, "saturation_threshold": 0.9 } }]
            }]
        });
        let ((bare, bare_port), (managed, managed_port), (reset, reset_port)) = tokio::join!(
            start(None),
            start(Some(overload)),
            start(Some(resetting))
        );
        let (base_bare, base_managed, base_reset) =
            (rss(bare.pid()), rss(managed.pid()), rss(reset.pid()));
        let pace = Duration::from_millis(100);
        let (s_bare, peak_bare) = squeeze(bare.pid(), bare_port, 24, 8 << 20, pace).await;
        let (s_managed, peak_managed) =
            squeeze(managed.pid(), managed_port, 24, 8 << 20, pace).await;
        let (s_reset, peak_reset) = squeeze(reset.pid(), reset_port, 24, 8 << 20, pace).await;
        let grew = |peak: u64, base: u64| peak.saturating_sub(base) >> 20;
        let (g_bare, g_managed, g_reset) = (
            grew(peak_bare, base_bare),
            grew(peak_managed, base_managed),
            grew(peak_reset, base_reset),
        );
        eprintln!(
            "RSS growth: without overload manager {g_bare} MiB (statuses {s_bare:?}), \
             with stop_accepting_requests {g_managed} MiB (statuses {s_managed:?}), \
             with reset_high_memory_stream {g_reset} MiB (statuses {s_reset:?})"
        );
        let resets = reset
            .admin()
            .counter("envoy.overload_actions.reset_high_memory_stream.count")
            .await;
        let heap = reset
            .admin()
            .stat(&format!("overload.{HEAP}.pressure"))
            .await;
        eprintln!("resets {resets}, heap pressure {heap:?}%");
        assert!(resets >= 4, "streams reset: {resets}");
        assert!(
            g_reset * 2 < g_bare && g_reset < 60,
            "bounded by resets: {g_reset} MiB against {g_bare} MiB"
        );
        assert_eq!(reset.admin().get("/ready").await.status, 200, "still serving");
        assert!(
            s_bare.iter().all(|s| *s != 503),
            "nothing refused without a manager: {s_bare:?}"
        );
        assert!(g_bare >= 80, "the squeeze holds memory without a manager: {g_bare} MiB");
        assert!(
            s_managed.iter().filter(|s| **s == 503).count() >= 10,
            "the manager refuses new uploads: {s_managed:?}"
        );
        assert!(
            g_managed * 2 < g_bare && g_managed < 60,
            "bounded with the manager: {g_managed} MiB against {g_bare} MiB"
        );
        let admin = managed.admin();
        assert!(
            admin
                .counter("http.ingress_http.downstream_rq_overload_close")
                .await
                >= 10
        );
        assert_eq!(admin.get("/ready").await.status, 200, "still serving");
    })
    .await;
}
