//! Transparent capture through iptables REDIRECT, in a network namespace each test creates and
//! removes: the Istio-shaped capture listeners of `configs/sidecar-capture.yaml` (the
//! `original_dst` listener filter, tcp_proxy to ORIGINAL_DST clusters), run unchanged by skiff
//! and by Envoy 1.40. The proxy runs as uid 1337, which the REDIRECT rule exempts, as Istio does.
//! Needs root (CI runs as root); touches nothing outside its own namespace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_tests::netns::{Netns, PROXY_UID};
use skiff_tests::proxy::Kind;
use skiff_tests::run_for;

fn capture_config(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(skiff_tests::package_dir().join("configs").join(name), &path)
        .unwrap_or_else(|e| panic!("copy {name}: {e}"));
    path
}

/// Sets up the namespace: an app on 127.0.0.1:8080, outbound connections to it redirected to
/// 15001 except the proxy's own (uid 1337), and the proxy running the capture config.
fn capture(kind: Kind) -> Netns {
    capture_with(kind, "sidecar-capture.yaml", &["8080"])
}

/// The same with another configuration, and an app (a file server) on each of `ports`, all
/// redirected.
fn capture_with(kind: Kind, config: &str, ports: &[&str]) -> Netns {
    let mut ns = Netns::new(match kind {
        Kind::Skiff => "cap",
        Kind::Envoy => "capenv",
    });
    for port in ports {
        ns.exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "127.0.0.1",
            "--dport",
            port,
            "-m",
            "owner",
            "!",
            "--uid-owner",
            PROXY_UID,
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ]);
        ns.spawn(
            &["python3", "-m", "http.server", port, "--bind", "127.0.0.1"],
            &format!("app{port}.log"),
        );
    }
    let cfg = capture_config(&ns.dir, config);
    let bin = kind.binary();
    let (bin, cfg) = (
        bin.to_string_lossy().into_owned(),
        cfg.to_string_lossy().into_owned(),
    );
    let mut args = vec![
        "setpriv",
        "--reuid",
        PROXY_UID,
        "--regid",
        PROXY_UID,
        "--clear-groups",
        &bin,
        "-c",
        &cfg,
        "--concurrency",
        "1",
    ];
    if kind == Kind::Envoy {
        args.extend(["--disable-hot-restart", "-l", "warning"]);
    }
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.spawn(&args, "proxy.log");
    ns.wait_ready(kind.name(), "proxy.log");
    // The apps must be up too before the first request.
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in ports {
        while !ns.log(&format!("app{port}.log")).contains("Serving HTTP")
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    ns
}

fn outbound_capture_reaches_the_original_destination(kind: Kind) {
    let ns = capture(kind);
    let (code, body) = ns.curl("http://127.0.0.1:8080/");
    assert_eq!(
        code,
        "200",
        "{}: {body}\nproxy log:\n{}",
        kind.name(),
        ns.log("proxy.log")
    );
    assert!(
        body.contains("Directory listing"),
        "{}: the app's page: {body}",
        kind.name()
    );
    // It went through the capture listener and the ORIGINAL_DST cluster, not around them.
    assert_eq!(
        ns.stat("listener.0.0.0.0_15001.downstream_cx_total"),
        1,
        "{}",
        kind.name()
    );
    assert_eq!(
        ns.stat("tcp.outbound.downstream_cx_total"),
        1,
        "{}",
        kind.name()
    );
    assert_eq!(
        ns.stat("cluster.passthrough.upstream_cx_total"),
        1,
        "{}",
        kind.name()
    );
    // The proxy's own connection to the app (uid 1337) was not captured again.
    assert!(
        ns.log("app8080.log").contains("\"GET / HTTP/1.1\" 200"),
        "{}",
        ns.log("app8080.log")
    );
    // `/clusters` lists the destination's host, with its counters, as Envoy does.
    let (_, clusters) = ns.curl("http://127.0.0.1:15000/clusters");
    let host: Vec<&str> = clusters
        .lines()
        .filter(|l| l.starts_with("passthrough::127.0.0.1:8080::"))
        .filter(|l| !l.contains("::success_rate::") && !l.contains("local_origin_success_rate"))
        .collect();
    assert_eq!(
        host,
        [
            "passthrough::127.0.0.1:8080::cx_active::0",
            "passthrough::127.0.0.1:8080::cx_connect_fail::0",
            "passthrough::127.0.0.1:8080::cx_total::1",
            "passthrough::127.0.0.1:8080::rq_active::0",
            "passthrough::127.0.0.1:8080::rq_error::0",
            "passthrough::127.0.0.1:8080::rq_pending_active::0",
            "passthrough::127.0.0.1:8080::rq_success::0",
            "passthrough::127.0.0.1:8080::rq_timeout::0",
            // A tcp_proxy connection is the host's request, as Envoy's pool counts it.
            "passthrough::127.0.0.1:8080::rq_total::1",
            // Envoy names a destination's host by its cluster and address.
            "passthrough::127.0.0.1:8080::hostname::passthrough127.0.0.1:8080",
            "passthrough::127.0.0.1:8080::health_flags::healthy",
            "passthrough::127.0.0.1:8080::weight::1",
            "passthrough::127.0.0.1:8080::region::",
            "passthrough::127.0.0.1:8080::zone::",
            "passthrough::127.0.0.1:8080::sub_zone::",
            "passthrough::127.0.0.1:8080::canary::false",
            "passthrough::127.0.0.1:8080::priority::0",
        ],
        "{}:\n{clusters}",
        kind.name()
    );
}

#[tokio::test]
async fn skiff_runs_sidecar_capture_under_iptables_redirect() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| {
            outbound_capture_reaches_the_original_destination(Kind::Skiff)
        })
        .await
        .expect("test thread");
    })
    .await
}

#[tokio::test]
async fn envoy_runs_sidecar_capture_under_iptables_redirect() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| {
            outbound_capture_reaches_the_original_destination(Kind::Envoy)
        })
        .await
        .expect("test thread");
    })
    .await
}

/// A connection made straight to the capture port was not redirected: its "original
/// destination" is the listener itself. Following it would loop back into the proxy; skiff
/// refuses it instead and counts it as having no host.
#[tokio::test]
async fn skiff_refuses_to_loop_into_itself() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| {
            let ns = capture(Kind::Skiff);
            let (code, _) = ns.curl("http://127.0.0.1:15001/");
            assert_eq!(
                code, "000",
                "a direct connection to 15001 must be closed, not proxied"
            );
            assert_eq!(ns.stat("cluster.passthrough.upstream_cx_total"), 0);
            assert_eq!(ns.stat("cluster.passthrough.upstream_cx_none_healthy"), 1);
        })
        .await
        .expect("test thread");
    })
    .await
}

/// Istio's outbound pattern: a connection redirected from :8080 is handed by the catch-all
/// listener (`use_original_dst`) to the `bind_to_port: false` listener for 0.0.0.0:8080, whose
/// HTTP connection manager serves it; one from :9090 stays on the catch-all and takes the
/// chain matching destination port 9090; one from :7070 takes the catch-all's default chain.
fn hand_off_and_destination_port_chains(kind: Kind) {
    let ns = capture_with(kind, "handoff.yaml", &["8080", "9090", "7070"]);
    let name = kind.name();
    for port in ["8080", "9090", "7070"] {
        let (code, body) = ns.curl(&format!("http://127.0.0.1:{port}/"));
        assert_eq!(
            code,
            "200",
            "{name} :{port}: {body}\n{}",
            ns.log("proxy.log")
        );
    }
    let expect = [
        ("listener.0.0.0.0_8080.downstream_cx_total", 1),
        ("http.handoff.downstream_rq_total", 1),
        ("cluster.app.upstream_rq_total", 1),
        ("tcp.port9090.downstream_cx_total", 1),
        ("tcp.outbound.downstream_cx_total", 1),
        ("cluster.passthrough.upstream_cx_total", 2),
        ("listener.0.0.0.0_15001.downstream_cx_total", 2),
    ];
    for (stat, want) in expect {
        assert_eq!(ns.stat(stat), want, "{name}: {stat}");
    }
}

#[tokio::test]
async fn skiff_hands_off_by_original_destination() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| hand_off_and_destination_port_chains(Kind::Skiff))
            .await
            .expect("test thread");
    })
    .await
}

#[tokio::test]
async fn envoy_hands_off_by_original_destination() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| hand_off_and_destination_port_chains(Kind::Envoy))
            .await
            .expect("test thread");
    })
    .await
}
