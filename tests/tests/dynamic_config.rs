//! Configuration that changes while the proxy runs, from files (Envoy's filesystem
//! subscriptions): LDS, CDS, RDS and EDS files replaced by rename, side by side with Envoy 1.40.
//! After each step both proxies must answer the same probes the same way and count the same
//! update stats.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, put_file as put, run_for, scratch_dir};

/// One proxy with its own directory of resource files and ports.
struct FsSide {
    proxy: ProxyProcess,
    dir: PathBuf,
    port: u16,
    port2: u16,
}

struct Ups {
    a: EchoUpstream,
    b: EchoUpstream,
}

fn bootstrap(dir: &Path, admin: u16) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
node: {{id: fs, cluster: fs}}
dynamic_resources:
  lds_config: {{path_config_source: {{path: {d}/lds.yaml}}, resource_api_version: V3}}
  cds_config: {{path_config_source: {{path: {d}/cds.yaml}}, resource_api_version: V3}}
"#,
        d = dir.display()
    )
}

fn cds(version: &str, dir: &Path, ups: &Ups, with_c: bool) -> String {
    let c = if with_c {
        format!(
            r#"
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: c
  type: STATIC
  load_assignment:
    cluster_name: c
    endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]"#,
            ups.b.addr.port()
        )
    } else {
        String::new()
    };
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: a
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: a
    endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {a}}}}}}}}}]}}]
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: b
  type: EDS
  connect_timeout: 1s
  eds_cluster_config:
    service_name: b
    eds_config: {{path_config_source: {{path: {d}/eds_b.yaml}}, resource_api_version: V3}}{c}
"#,
        a = ups.a.addr.port(),
        d = dir.display(),
    )
}

fn eds(version: &str, port: u16) -> String {
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: b
  endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#
    )
}

fn lds(version: &str, side_dir: &Path, port: u16, second: Option<u16>, prefix: &str) -> String {
    let hcm = |p: &str| {
        format!(
            r#"{{name: envoy.filters.network.http_connection_manager, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: {p}, rds: {{route_config_name: r1, config_source: {{path_config_source: {{path: {d}/rds.yaml}}, resource_api_version: V3}}}}, http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]}}}}"#,
            d = side_dir.display()
        )
    };
    let second = match second {
        Some(p2) => format!(
            r#"
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: second
  address: {{socket_address: {{address: 127.0.0.1, port_value: {p2}}}}}
  filter_chains: [{{filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tcp2, cluster: a}}}}]}}]"#
        ),
        None => String::new(),
    };
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: main
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains: [{{filters: [{h}]}}]{second}
"#,
        h = hcm(prefix)
    )
}

fn rds(version: &str, routes: &[(&str, &str)], other_vhost: bool) -> String {
    let routes: Vec<String> = routes
        .iter()
        .map(|(p, c)| format!("{{match: {{prefix: \"{p}\"}}, route: {{cluster: {c}}}}}"))
        .collect();
    let other = if other_vhost {
        "\n  - {name: other, domains: [other.example.com], routes: [{match: {prefix: /}, route: {cluster: b}}]}"
    } else {
        ""
    };
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: r1
  virtual_hosts:
  - {{name: main, domains: ["*"], routes: [{}]}}{other}
"#,
        routes.join(", ")
    )
}

impl FsSide {
    async fn start(kind: Kind, ups: &Ups) -> FsSide {
        Self::start_with(kind, ups, &[]).await
    }

    async fn start_with(kind: Kind, ups: &Ups, extra: &[&str]) -> FsSide {
        let dir = scratch_dir(&format!("fsxds-{}", kind.name()));
        let (port, port2, admin) = (free_port(), free_port(), free_port());
        put(&dir, "cds.yaml", &cds("1", &dir, ups, false));
        put(&dir, "eds_b.yaml", &eds("1", ups.b.addr.port()));
        put(&dir, "lds.yaml", &lds("1", &dir, port, None, "ingress"));
        put(
            &dir,
            "rds.yaml",
            &rds("1", &[("/a", "a"), ("/b", "b")], false),
        );
        let mut args = vec!["--concurrency", "2"];
        args.extend_from_slice(extra);
        let proxy = ProxyProcess::start(kind, &bootstrap(&dir, admin), &args).await;
        FsSide {
            proxy,
            dir,
            port,
            port2,
        }
    }

    /// Replaces a file and waits until the proxy has looked at it (`stat` counts an attempt).
    async fn update(&self, name: &str, content: &str, stat: &str) {
        let admin = self.proxy.admin();
        let before = admin.stat(stat).await.unwrap_or(0);
        put(&self.dir, name, content);
        admin
            .wait_stat(stat, Duration::from_secs(10), |v| v > before)
            .await;
    }

    /// `status upstream` for a GET of `path` with `Host: host` on `port`.
    async fn probe(&self, port: u16, host: &str, path: &str) -> String {
        let addr = format!("127.0.0.1:{port}");
        let req = skiff_tests::client::get(path, host);
        let once = skiff_tests::client::http1_once(&addr, req);
        let Ok(answer) = tokio::time::timeout(Duration::from_secs(3), once).await else {
            return "timeout".to_string();
        };
        match answer {
            Ok(r) => format!("{} {}", r.status, r.header("x-upstream").unwrap_or("-")),
            Err(e) if e.contains("refused") => "refused".to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    /// Probes `port` until it answers `want` (workers put an update in force a moment after
    /// the main thread counts it), for two seconds at most; the last answer.
    async fn probe_until(&self, port: u16, want: &str) -> String {
        let mut seen = String::new();
        for _ in 0..40 {
            seen = self.probe(port, "x", "/a").await;
            if seen == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    }

    async fn probes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for path in ["/a", "/b", "/c"] {
            out.push(self.probe(self.port, "x.example.com", path).await);
        }
        out.push(self.probe(self.port, "other.example.com", "/a").await);
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port2)).await;
        out.push(
            if tcp.is_ok() {
                "second: open"
            } else {
                "second: refused"
            }
            .into(),
        );
        out
    }

    async fn stats(&self, names: &[&str]) -> Vec<String> {
        let all = self.proxy.admin().stats().await;
        names
            .iter()
            .map(|n| format!("{n}={}", all.get(*n).map_or("-", |v| v.as_str())))
            .collect()
    }
}

const UPDATE_STATS: &[&str] = &[
    "listener_manager.lds.update_success",
    "listener_manager.lds.update_rejected",
    "cluster_manager.cds.update_success",
    "cluster_manager.cds.update_rejected",
    "http.ingress.rds.r1.update_success",
    "http.ingress.rds.r1.update_rejected",
    "http.ingress.rds.r1.update_failure",
    "cluster.b.update_success",
    "listener_manager.listener_added",
    "listener_manager.listener_modified",
    "listener_manager.listener_removed",
    "listener_manager.total_listeners_active",
    "cluster_manager.cluster_added",
    "cluster_manager.cluster_removed",
    "cluster_manager.active_clusters",
];

/// Runs the same step on both sides and compares what the probes and update stats show.
async fn step(sides: &[FsSide; 2], what: &str, want: &[&str]) {
    let mut seen = Vec::new();
    for s in sides {
        seen.push((s.probes().await, s.stats(UPDATE_STATS).await));
    }
    let (envoy, skiff) = (&seen[0], &seen[1]);
    assert_eq!(
        skiff, envoy,
        "after '{what}': skiff (left) and Envoy (right) differ"
    );
    assert_eq!(envoy.0, want, "after '{what}': unexpected probe results");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_updates_add_and_remove_routes_clusters_endpoints_and_listeners_as_envoy_does() {
    run_for(Duration::from_secs(120), async {
        let ups = Ups {
            a: EchoUpstream::start("A").await,
            b: EchoUpstream::start("B").await,
        };
        let sides = [
            FsSide::start(Kind::Envoy, &ups).await,
            FsSide::start(Kind::Skiff, &ups).await,
        ];
        step(
            &sides,
            "start",
            &["200 A", "200 B", "404 -", "200 A", "second: refused"],
        )
        .await;

        for s in &sides {
            let r = rds("2", &[("/a", "a"), ("/b", "b"), ("/c", "a")], false);
            s.update("rds.yaml", &r, "http.ingress.rds.r1.update_attempt")
                .await;
        }
        step(
            &sides,
            "route added",
            &["200 A", "200 B", "200 A", "200 A", "second: refused"],
        )
        .await;

        for s in &sides {
            let r = rds("3", &[("/a", "a"), ("/b", "b"), ("/c", "a")], true);
            s.update("rds.yaml", &r, "http.ingress.rds.r1.update_attempt")
                .await;
        }
        step(
            &sides,
            "virtual host added",
            &["200 A", "200 B", "200 A", "200 B", "second: refused"],
        )
        .await;

        for s in &sides {
            s.update(
                "eds_b.yaml",
                &eds("2", ups.a.addr.port()),
                "cluster.b.update_attempt",
            )
            .await;
        }
        step(
            &sides,
            "endpoint moved",
            &["200 A", "200 A", "200 A", "200 A", "second: refused"],
        )
        .await;

        for s in &sides {
            s.update(
                "cds.yaml",
                &cds("2", &s.dir, &ups, true),
                "cluster_manager.cds.update_attempt",
            )
            .await;
            let r = rds("4", &[("/a", "a"), ("/b", "b"), ("/c", "c")], true);
            s.update("rds.yaml", &r, "http.ingress.rds.r1.update_attempt")
                .await;
        }
        step(
            &sides,
            "cluster added",
            &["200 A", "200 A", "200 B", "200 A", "second: refused"],
        )
        .await;

        for s in &sides {
            s.update(
                "cds.yaml",
                &cds("3", &s.dir, &ups, false),
                "cluster_manager.cds.update_attempt",
            )
            .await;
        }
        step(
            &sides,
            "cluster removed",
            &["200 A", "200 A", "503 -", "200 A", "second: refused"],
        )
        .await;

        // Bad updates change nothing: an invalid port, a route table that is not YAML.
        for s in &sides {
            let bad = cds("4", &s.dir, &ups, true).replace(
                &format!("port_value: {}", ups.b.addr.port()),
                "port_value: 99999",
            );
            s.update("cds.yaml", &bad, "cluster_manager.cds.update_attempt")
                .await;
            s.update(
                "rds.yaml",
                "version_info: [nope",
                "http.ingress.rds.r1.update_attempt",
            )
            .await;
        }
        step(
            &sides,
            "bad updates",
            &["200 A", "200 A", "503 -", "200 A", "second: refused"],
        )
        .await;

        for s in &sides {
            let l = lds("2", &s.dir, s.port, Some(s.port2), "ingress");
            s.update("lds.yaml", &l, "listener_manager.lds.update_attempt")
                .await;
        }
        step(
            &sides,
            "listener added",
            &["200 A", "200 A", "503 -", "200 A", "second: open"],
        )
        .await;

        for s in &sides {
            let l = lds("3", &s.dir, s.port, None, "ingress");
            s.update("lds.yaml", &l, "listener_manager.lds.update_attempt")
                .await;
        }
        // A removed listener stops accepting; Envoy closes its socket at once.
        for s in &sides {
            let admin = s.proxy.admin();
            admin
                .wait_stat(
                    "listener_manager.total_listeners_active",
                    Duration::from_secs(5),
                    |v| v == 1,
                )
                .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        step(
            &sides,
            "listener removed",
            &["200 A", "200 A", "503 -", "200 A", "second: refused"],
        )
        .await;
    })
    .await;
}

/// A running side with its HTTP/2 (h2c) and HTTP/1.1 clients to `port`.
async fn h2(side: &FsSide) -> skiff_tests::client::H2Client {
    skiff_tests::client::H2Client::connect(&format!("127.0.0.1:{}", side.port))
        .await
        .expect("h2 connect")
}

async fn h2_get(c: &skiff_tests::client::H2Client, path: &str) -> String {
    let req = skiff_tests::client::h2_request("GET", "x.example.com", path, "");
    match c.send(req).await {
        Ok(r) => format!("{} {}", r.status, r.header("x-upstream").unwrap_or("-")),
        Err(e) => format!("error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_http2_connection_sees_a_route_change_on_its_next_stream() {
    run_for(Duration::from_secs(60), async {
        let ups = Ups {
            a: EchoUpstream::start("A").await,
            b: EchoUpstream::start("B").await,
        };
        for kind in [Kind::Envoy, Kind::Skiff] {
            let side = FsSide::start(kind, &ups).await;
            let c = h2(&side).await;
            assert_eq!(h2_get(&c, "/a").await, "200 A", "{}", kind.name());
            let r = rds("2", &[("/a", "b")], false);
            side.update("rds.yaml", &r, "http.ingress.rds.r1.update_success")
                .await;
            // Workers put an update in force a moment after the main thread counts it.
            let mut seen = h2_get(&c, "/a").await;
            for _ in 0..40 {
                if seen == "200 B" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                seen = h2_get(&c, "/a").await;
            }
            assert_eq!(
                seen,
                "200 B",
                "{}: the same connection's next stream takes the new route",
                kind.name()
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modified_listener_drains_its_connections_on_the_same_socket() {
    run_for(Duration::from_secs(60), async {
        let ups = Ups {
            a: EchoUpstream::start("A").await,
            b: EchoUpstream::start("B").await,
        };
        for kind in [Kind::Envoy, Kind::Skiff] {
            let side = FsSide::start_with(kind, &ups, &["--drain-strategy", "immediate"]).await;
            let addr = format!("127.0.0.1:{}", side.port);
            let mut h1 = skiff_tests::client::Http1Client::connect(&addr)
                .await
                .expect("h1 connect");
            let get = || skiff_tests::client::get("/a", "x.example.com");
            let first = h1.send(get()).await.expect("first request");
            assert_eq!(first.header("connection"), None, "{}", kind.name());
            let c2 = h2(&side).await;
            assert_eq!(h2_get(&c2, "/a").await, "200 A");
            // The HCM's stat prefix changes: a modified listener.
            let l = lds("2", &side.dir, side.port, None, "ingress2");
            side.update("lds.yaml", &l, "listener_manager.lds.update_success")
                .await;
            let admin = side.proxy.admin();
            admin
                .wait_stat(
                    "listener_manager.total_filter_chains_draining",
                    Duration::from_secs(5),
                    |v| v == 1,
                )
                .await;
            tokio::time::sleep(Duration::from_millis(1000)).await;
            // The old HTTP/1.1 connection is asked to close after its next response.
            let second = h1
                .send(get())
                .await
                .expect("second request on the old connection");
            assert_eq!(second.status, 200, "{}", kind.name());
            assert_eq!(
                second.header("connection"),
                Some("close"),
                "{}: a draining listener's HTTP/1.1 responses close the connection",
                kind.name()
            );
            // New connections reach the new listener on the same port, never refused.
            let fresh = skiff_tests::client::http1_once(&addr, get())
                .await
                .expect("new connection");
            assert_eq!(fresh.status, 200);
            admin
                .wait_stat(
                    "http.ingress2.downstream_rq_total",
                    Duration::from_secs(5),
                    |v| v >= 1,
                )
                .await;
            assert_eq!(
                admin.counter("listener_manager.lds.update_success").await,
                2,
                "{}",
                kind.name()
            );
            assert!(
                admin
                    .counter("http.ingress.downstream_cx_drain_close")
                    .await
                    >= 1,
                "{}",
                kind.name()
            );
            // Only the filter chain changed: the listener is updated in place and its old
            // chain drains, not the listener.
            for (stat, want) in [
                ("listener_manager.listener_in_place_updated", 1),
                ("listener_manager.total_filter_chains_draining", 1),
                ("listener_manager.total_listeners_draining", 0),
            ] {
                assert_eq!(admin.counter(stat).await, want, "{}: {stat}", kind.name());
            }
        }
    })
    .await;
}

/// What a wrk run reports.
#[derive(Debug, Default)]
struct WrkReply {
    requests: u64,
    socket_errors: u64,
    non_2xx: u64,
    output: String,
}

async fn wrk(args: &[&str]) -> WrkReply {
    skiff_tests::require_program("wrk", "install the Debian package wrk");
    let out = tokio::process::Command::new("wrk")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run wrk");
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut r = WrkReply {
        output: output.clone(),
        ..WrkReply::default()
    };
    for line in output.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            r.socket_errors = rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = rest.trim().parse().unwrap_or(0);
        } else if line.contains(" requests in ") {
            r.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    r
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// 50 file changes while wrk and h2load run through `side`: routes, endpoints and the
/// listener's chain in turn, versions from `first + 2`. Returns what both tools saw and the
/// update stats.
async fn changes_under_load(
    side: &FsSide,
    ups: &Ups,
    url: &str,
    first: u32,
) -> (WrkReply, skiff_tests::client::H2loadReply, Vec<u64>) {
    let h1 = tokio::spawn({
        let url = url.to_string();
        async move { wrk(&["-t1", "-c8", "-d6s", "-H", "Host: x.example.com", &url]).await }
    });
    let h2 = tokio::spawn({
        let url = url.to_string();
        async move { skiff_tests::client::h2load(&["-c4", "-m8", "-D", "6", &url]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in first..first + 50 {
        let v = (i + 2).to_string();
        let target = if i % 2 == 0 { "b" } else { "a" };
        match i % 3 {
            0 => put(
                &side.dir,
                "rds.yaml",
                &rds(&v, &[("/a", target), ("/b", "b")], false),
            ),
            1 => {
                let port = if i % 2 == 0 {
                    ups.a.addr.port()
                } else {
                    ups.b.addr.port()
                };
                put(&side.dir, "eds_b.yaml", &eds(&v, port))
            }
            _ => {
                let prefix = if i % 2 == 0 { "ingress" } else { "ingress2" };
                put(
                    &side.dir,
                    "lds.yaml",
                    &lds(&v, &side.dir, side.port, None, prefix),
                )
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h1 = h1.await.expect("wrk");
    let h2 = h2.await.expect("h2load");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let admin = side.proxy.admin();
    let mut applied = Vec::new();
    for u in [
        "listener_manager.lds.update_attempt",
        "listener_manager.lds.update_rejected",
        "listener_manager.lds.update_failure",
        "listener_manager.lds.update_success",
        "http.ingress.rds.r1.update_success",
        "cluster.b.update_success",
    ] {
        applied.push(admin.stat(u).await.unwrap_or(0));
    }
    (h1, h2, applied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_file_changes_under_load_fail_no_request_and_refuse_no_connection() {
    run_for(Duration::from_secs(120), async {
        let ups = Ups {
            a: EchoUpstream::start("A").await,
            b: EchoUpstream::start("B").await,
        };
        let mut lines = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let side = FsSide::start(kind, &ups).await;
            let url = format!("http://127.0.0.1:{}/a", side.port);
            // Warm up, then take the memory baseline.
            let _ = wrk(&["-t1", "-c8", "-d1s", "-H", "Host: x.example.com", &url]).await;
            let before = rss_kib(side.proxy.pid());
            // Two rounds: memory may settle in the first, it must stay flat in the second.
            let mut after = Vec::new();
            for round in 0..2u32 {
                let (h1, h2, applied) = changes_under_load(&side, &ups, &url, round * 50).await;
                after.push(rss_kib(side.proxy.pid()));
                lines.push(format!(
                    "{:5} round {}: wrk {} requests, {} socket errors, {} non-2xx; h2load {} succeeded, {} failed, {} errored; updates applied (lds attempt, rejected, failure, success; rds; eds) {:?}; RSS {} KiB",
                    kind.name(),
                    round + 1,
                    h1.requests,
                    h1.socket_errors,
                    h1.non_2xx,
                    h2.succeeded,
                    h2.failed,
                    h2.errored,
                    applied,
                    after[round as usize]
                ));
                assert!(h1.requests > 100, "{}: {}", kind.name(), h1.output);
                assert_eq!(h1.socket_errors, 0, "{}: {}", kind.name(), h1.output);
                assert_eq!(h1.non_2xx, 0, "{}: {}", kind.name(), h1.output);
                assert!(h2.succeeded > 100, "{}: {}", kind.name(), h2.output);
                // Envoy's gradual drain sends some HTTP/2 clients a GOAWAY while their streams
                // are in flight, which h2load counts as errors; skiff must lose none.
                if kind == Kind::Skiff {
                    assert_eq!(h2.failed + h2.errored, 0, "{}: {}", kind.name(), h2.output);
                }
            }
            lines.push(format!("{:5}: RSS before {before} KiB", kind.name()));
            if kind == Kind::Skiff {
                // Upstream connections of endpoints that left must not pile up (each EDS change
                // moves cluster b to another host).
                let open = side
                    .proxy
                    .admin()
                    .stat("cluster.b.upstream_cx_active")
                    .await
                    .unwrap_or(0);
                assert!(open < 100, "{open} upstream connections of cluster b still open");
            }
            if kind == Kind::Skiff {
                assert!(
                    after[1] < after[0] + 4 * 1024,
                    "skiff's memory kept growing: {before} -> {after:?} KiB"
                );
            }
        }
        eprintln!("{}", lines.join("\n"));
    })
    .await;
}

/// A self-signed certificate and key for `cn`, as inline PEM strings.
fn cert(cn: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(vec!["sds.example.com".to_string()]).expect("params");
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let c = p.self_signed(&key).expect("cert");
    (c.pem(), key.serialize_pem())
}

fn sds(version: &str, pair: &(String, String)) -> String {
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("          {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "version_info: \"{version}\"\nresources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: server\n  tls_certificate:\n    certificate_chain:\n      inline_string: |\n{}\n    private_key:\n      inline_string: |\n{}\n",
        indent(&pair.0),
        indent(&pair.1)
    )
}

fn tls_lds(dir: &Path, port: u16) -> String {
    format!(
        r#"version_info: "1"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: tls
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains:
  - transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
        common_tls_context:
          tls_certificate_sds_secret_configs:
          - name: server
            sds_config: {{path_config_source: {{path: {d}/sds.yaml}}, resource_api_version: V3}}
    filters: [{{name: t, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tls, cluster: a}}}}]
"#,
        d = dir.display()
    )
}

/// The subject of the certificate a TLS server on `port` presents.
async fn served_subject(port: u16) -> String {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername sds.example.com </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .await
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sds_secret_from_a_file_is_served_and_rotated_without_dropping_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    run_for(Duration::from_secs(60), async {
        skiff_tests::require_program("openssl", "install the Debian package openssl");
        let ups = Ups {
            a: EchoUpstream::start("A").await,
            b: EchoUpstream::start("B").await,
        };
        let (one, two) = (cert("one"), cert("two"));
        for kind in [Kind::Envoy, Kind::Skiff] {
            let side = FsSide::start(kind, &ups).await;
            put(&side.dir, "sds.yaml", &sds("1", &one));
            side.update(
                "lds.yaml",
                &tls_lds(&side.dir, side.port2),
                "listener_manager.lds.update_attempt",
            )
            .await;
            let admin = side.proxy.admin();
            admin
                .wait_stat(
                    "listener_manager.total_listeners_active",
                    Duration::from_secs(5),
                    |v| v == 1,
                )
                .await;
            assert_eq!(
                served_subject(side.port2).await,
                "subject=CN = one",
                "{}",
                kind.name()
            );
            // A connection that stays open across the rotation.
            let mut live = tokio::process::Command::new("openssl")
                .args(["s_client", "-quiet", "-connect"])
                .arg(format!("127.0.0.1:{}", side.port2))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("s_client");
            let mut stdin = live.stdin.take().expect("stdin");
            let mut stdout = live.stdout.take().expect("stdout");
            let ask = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
            stdin.write_all(ask.as_bytes()).await.expect("write");
            let mut buf = vec![0u8; 4096];
            let n = stdout.read(&mut buf).await.expect("read");
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
            side.update("sds.yaml", &sds("2", &two), "sds.server.update_attempt")
                .await;
            let mut subject = String::new();
            for _ in 0..40 {
                subject = served_subject(side.port2).await;
                if subject == "subject=CN = two" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                subject,
                "subject=CN = two",
                "{}: new handshakes get the rotated certificate",
                kind.name()
            );
            stdin
                .write_all(ask.as_bytes())
                .await
                .expect("write after rotation");
            let n = stdout.read(&mut buf).await.expect("read after rotation");
            assert!(
                String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
                "{}: the connection opened before the rotation still works",
                kind.name()
            );
            assert_eq!(
                admin.counter("sds.server.update_success").await,
                2,
                "{}",
                kind.name()
            );
            assert_eq!(
                admin.counter("listener_manager.listener_modified").await,
                0,
                "{}",
                kind.name()
            );
            let dump = admin
                .get("/config_dump?resource=dynamic_active_secrets")
                .await
                .text();
            assert!(
                dump.contains("[redacted]") && !dump.contains("PRIVATE KEY"),
                "{}: {dump}",
                kind.name()
            );
        }
    })
    .await;
}

fn lds_with_options(dir: &Path, port: u16, options: &str) -> String {
    lds("9", dir, port, None, "ingress").replace(
        "  name: main\n",
        &format!("  name: main\n  tcp_fast_open_queue_length: 16\n  socket_options: {options}\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_socket_options_are_set_and_one_the_kernel_refuses_fails_the_listener() {
    run_for(Duration::from_secs(60), async {
        let ups = Ups {
            a: EchoUpstream::start("A").await,
            b: EchoUpstream::start("B").await,
        };
        for kind in [Kind::Envoy, Kind::Skiff] {
            let side = FsSide::start(kind, &ups).await;
            // SO_KEEPALIVE before bind, SO_RCVBUF once listening: the listener serves.
            let good = "[{level: 1, name: 9, int_value: 1, state: STATE_PREBIND}, {level: 1, name: 8, int_value: 65536, state: STATE_LISTENING}]";
            let l = lds_with_options(&side.dir, side.port2, good);
            side.update("lds.yaml", &l, "listener_manager.lds.update_attempt").await;
            let admin = side.proxy.admin();
            admin
                .wait_stat("listener_manager.listener_create_success", Duration::from_secs(5), |v| v >= 4)
                .await;
            assert_eq!(side.probe(side.port2, "x", "/a").await, "200 A", "{}", kind.name());
            // An option the kernel does not have: the listener cannot be created.
            let bad = "[{level: 1, name: 99999, int_value: 1, state: STATE_PREBIND}]";
            let l = lds_with_options(&side.dir, side.port, bad);
            side.update("lds.yaml", &l, "listener_manager.lds.update_attempt").await;
            admin
                .wait_stat("listener_manager.listener_create_failure", Duration::from_secs(5), |v| v >= 1)
                .await;
        }
    })
    .await;
}

/// The receive buffer sizes (`ss`'s `rb`) of the listen sockets on `port`.
fn listen_rcvbufs(port: u16) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-Hltnm", &format!("sport = :{port}")])
        .output()
        .expect("ss runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rb: Vec<String> = text
        .split(|c: char| c == ',' || c == '(' || c.is_whitespace())
        .filter_map(|w| w.strip_prefix("rb"))
        .map(String::from)
        .collect();
    rb.sort();
    rb.dedup();
    rb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_additional_address_takes_its_own_socket_options_as_in_envoy() {
    run_for(Duration::from_secs(60), async {
        let ups = Ups {
            a: EchoUpstream::start("A").await,
            b: EchoUpstream::start("B").await,
        };
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let side = FsSide::start(kind, &ups).await;
            // SO_RCVBUF 65536 on the listener, 32768 on the additional address in its place.
            let extra = format!(
                "  name: main\n  socket_options: [{{level: 1, name: 8, int_value: 65536, state: STATE_LISTENING}}]\n  additional_addresses: [{{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}, socket_options: {{socket_options: [{{level: 1, name: 8, int_value: 32768, state: STATE_LISTENING}}]}}}}]\n",
                side.port2
            );
            let l = lds("2", &side.dir, side.port, None, "ingress").replace("  name: main\n", &extra);
            side.update("lds.yaml", &l, "listener_manager.lds.update_success").await;
            let served = side.probe_until(side.port2, "200 A").await;
            assert_eq!(served, "200 A", "{}", kind.name());
            seen.push((kind.name(), listen_rcvbufs(side.port), listen_rcvbufs(side.port2)));
            // An option the kernel does not have, on the additional address only: the listener
            // cannot be created.
            let bad = format!(
                "  name: main\n  additional_addresses: [{{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}, socket_options: {{socket_options: [{{level: 1, name: 99999, int_value: 1, state: STATE_PREBIND}}]}}}}]\n",
                side.port2 + 1
            );
            let l = lds("3", &side.dir, side.port, None, "ingress").replace("  name: main\n", &bad);
            side.update("lds.yaml", &l, "listener_manager.lds.update_attempt").await;
            side.proxy
                .admin()
                .wait_stat("listener_manager.listener_create_failure", Duration::from_secs(5), |v| v >= 1)
                .await;
        }
        assert_eq!(seen[0].1, vec!["131072".to_string()], "Envoy: the listener's option");
        assert_eq!(seen[0].2, vec!["65536".to_string()], "Envoy: the address's own");
        assert_eq!(
            (&seen[1].1, &seen[1].2),
            (&seen[0].1, &seen[0].2),
            "skiff (left) and Envoy (right) differ"
        );
    })
    .await;
}

/// The keys of a JSON object, sorted, for comparing shapes.
fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shows_dynamic_resources_with_versions_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        let ups = Ups {
            a: EchoUpstream::start("A").await,
            b: EchoUpstream::start("B").await,
        };
        let mut shapes = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let side = FsSide::start(kind, &ups).await;
            let admin = side.proxy.admin();
            let get = |q: &'static str| async move {
                let text = admin.get(q).await.text();
                serde_json::from_str::<serde_json::Value>(&text).expect("json")
            };
            let clusters = get("/config_dump?resource=dynamic_active_clusters").await;
            let items = clusters["configs"].as_array().expect("configs").clone();
            assert_eq!(items.len(), 2, "{}: {clusters}", kind.name());
            let a = items
                .iter()
                .find(|c| c["cluster"]["name"] == "a")
                .expect("cluster a");
            let listeners = get("/config_dump?resource=dynamic_listeners").await;
            let main = &listeners["configs"][0];
            let routes = get("/config_dump?resource=dynamic_route_configs").await;
            let eds = get("/config_dump?include_eds&resource=dynamic_endpoint_configs").await;
            let one = get("/config_dump?resource=dynamic_active_clusters&name_regex=b").await;
            shapes.push((
                kind.name(),
                (
                    a["@type"].clone(),
                    a["version_info"].clone(),
                    keys(a),
                    main["@type"].clone(),
                    keys(main),
                    keys(&main["active_state"]),
                    main["active_state"]["version_info"].clone(),
                ),
                (
                    routes["configs"][0]["@type"].clone(),
                    routes["configs"][0]["route_config"]["name"].clone(),
                    routes["configs"][0]["version_info"].clone(),
                    eds["configs"][0]["endpoint_config"]["cluster_name"].clone(),
                    one["configs"].as_array().map(|a| a.len()),
                ),
            ));
        }
        assert_eq!(
            shapes[1].1, shapes[0].1,
            "skiff (left) and Envoy (right) differ"
        );
        assert_eq!(
            shapes[1].2, shapes[0].2,
            "skiff (left) and Envoy (right) differ"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_listeners_stops_accepting_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        let ups = Ups {
            a: EchoUpstream::start("A").await,
            b: EchoUpstream::start("B").await,
        };
        for kind in [Kind::Envoy, Kind::Skiff] {
            let side = FsSide::start(kind, &ups).await;
            assert_eq!(side.probe(side.port, "x", "/a").await, "200 A");
            let admin = side.proxy.admin();
            // Only inbound listeners: ours is not one, so it keeps accepting.
            assert_eq!(admin.post("/drain_listeners?inboundonly").await.status, 200);
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                side.probe(side.port, "x", "/a").await,
                "200 A",
                "{}",
                kind.name()
            );
            assert_eq!(admin.post("/drain_listeners").await.status, 200);
            let seen = side.probe_until(side.port, "refused").await;
            assert_eq!(
                seen,
                "refused",
                "{}: a drained listener stops accepting",
                kind.name()
            );
            assert_eq!(
                admin.get("/drain_listeners").await.status,
                405,
                "{}",
                kind.name()
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_with_additional_addresses_serves_on_each_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        let ups = Ups {
            a: EchoUpstream::start("A").await,
            b: EchoUpstream::start("B").await,
        };
        for kind in [Kind::Envoy, Kind::Skiff] {
            let side = FsSide::start(kind, &ups).await;
            let extra = format!(
                "  name: main\n  additional_addresses: [{{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}]\n",
                side.port2
            );
            let l = lds("2", &side.dir, side.port, None, "ingress").replace("  name: main\n", &extra);
            side.update("lds.yaml", &l, "listener_manager.lds.update_success").await;
            let seen = side.probe_until(side.port2, "200 A").await;
            assert_eq!(seen, "200 A", "{}: the additional address serves", kind.name());
            // Envoy may close a connection its replaced listener took during the hand-over.
            let seen = side.probe_until(side.port, "200 A").await;
            assert_eq!(seen, "200 A", "{}", kind.name());
            // Removing the additional address closes it.
            let l = lds("3", &side.dir, side.port, None, "ingress");
            side.update("lds.yaml", &l, "listener_manager.lds.update_success").await;
            let seen = side.probe_until(side.port2, "refused").await;
            assert_eq!(seen, "refused", "{}", kind.name());
            assert_eq!(side.probe(side.port, "x", "/a").await, "200 A", "{}", kind.name());
        }
    })
    .await;
}

/// A bootstrap whose listeners carry their routes inline: a route configuration, and scopes
/// with route configurations of their own.
fn inline_routes_bootstrap(admin: u16, ports: [u16; 2]) -> String {
    let hcm = |prefix: &str, routes: &str| {
        format!(
            r#"
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          {routes}
          http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]"#
        )
    };
    let table = |name: &str, status: u16| {
        format!(
            "{{name: {name}, virtual_hosts: [{{name: v, domains: [\"*\"], routes: [{{match: {{prefix: /}}, direct_response: {{status: {status}}}}}]}}]}}"
        )
    };
    let plain = hcm("plain", &format!("route_config: {}", table("inline", 200)));
    let scoped = hcm(
        "scoped",
        &format!(
            "scoped_routes: {{name: sc, scope_key_builder: {{fragments: [{{header_value_extractor: {{name: x-t, index: 0}}}}]}}, \
             scoped_route_configurations_list: {{scoped_route_configurations: [\
             {{name: s1, key: {{fragments: [{{string_key: a}}]}}, route_configuration: {}}}, \
             {{name: s2, key: {{fragments: [{{string_key: b}}]}}, route_configuration: {}}}]}}}}",
            table("in-a", 201),
            table("in-b", 202)
        ),
    );
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: plain
    address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}{plain}
  - name: scoped
    address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}{scoped}
"#,
        ports[0], ports[1]
    )
}

/// Without its time of update (which differs), sorted by the item's text.
fn timeless(items: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = items
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let mut i = i.clone();
            if let Some(o) = i.as_object_mut() {
                o.remove("last_updated");
            }
            i.to_string()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shows_inline_route_configs_and_scopes_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let yaml = inline_routes_bootstrap(free_port(), [free_port(), free_port()]);
            let proxy = ProxyProcess::start(kind, &yaml, &[]).await;
            let admin = proxy.admin();
            let mut mine = Vec::new();
            for q in [
                "/config_dump?resource=static_route_configs",
                "/config_dump?resource=inline_scoped_route_configs",
                "/config_dump?resource=inline_scoped_route_configs&name_regex=s.*",
                "/config_dump?resource=static_route_configs&name_regex=x.*",
            ] {
                let text = admin.get(q).await.text();
                let v: serde_json::Value = serde_json::from_str(&text).expect("json");
                mine.push(timeless(&v["configs"]));
            }
            // The whole dump's two sections, each item without its time.
            let text = admin.get("/config_dump").await.text();
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            for c in v["configs"].as_array().into_iter().flatten() {
                let t = c["@type"].as_str().unwrap_or_default();
                if t.ends_with(".RoutesConfigDump") || t.ends_with(".ScopedRoutesConfigDump") {
                    let mut fields: Vec<String> = c
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k} {:?}", timeless(v)))
                        .collect();
                    fields.sort();
                    mine.push(fields);
                }
            }
            seen.push(mine);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        let all = format!("{:?}", seen[1]);
        for want in [
            "RoutesConfigDump.StaticRouteConfig",
            "\\\"name\\\":\\\"inline\\\"",
            "ScopedRoutesConfigDump.InlineScopedRouteConfigs",
            "\\\"name\\\":\\\"in-b\\\"",
        ] {
            assert!(all.contains(want), "{want}: {all}");
        }
    })
    .await;
}
