//! `common_lb_config.update_merge_window` side by side with Envoy 1.40. Active health checks
//! change hosts' health: the first change goes to the workers at once (out of any window); a
//! second one within the window is held back (`/clusters` shows it, traffic does not follow it)
//! until the window ends (`cluster_updated_via_merge`). Changes from discovery (an EDS file:
//! health, weight, hosts added and removed) go at once, as Envoy 1.40 delivers them. The
//! cluster manager's four counters must agree.

use std::path::Path;
use std::time::{Duration, Instant};

use skiff_tests::client::{get, Http1Client};
use skiff_tests::config::http_bootstrap_yaml;
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, put_file as put, run_for, scratch_dir};

fn bootstrap(dir: &Path, admin: u16, port: u16) -> String {
    let cluster = format!(
        r#"- name: c
  connect_timeout: 1s
  type: EDS
  common_lb_config: {{update_merge_window: 3s, healthy_panic_threshold: {{value: 0}}}}
  eds_cluster_config:
    eds_config: {{path_config_source: {{path: {d}/eds.yaml}}, resource_api_version: V3}}
"#,
        d = dir.display()
    );
    http_bootstrap_yaml(admin, port, &[("/", "c")], &cluster)
}

/// The assignment: each host's port, `health_status` and weight.
fn eds(version: u32, hosts: &[(u16, &str, u32)]) -> String {
    let eps: Vec<String> = hosts
        .iter()
        .map(|(port, status, weight)| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}, health_status: {status}, load_balancing_weight: {weight}}}"
            )
        })
        .collect();
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: c
  endpoints: [{{lb_endpoints: [{}]}}]
"#,
        eps.join(", ")
    )
}

/// The upstreams 12 requests reach, sorted.
async fn reached(port: u16) -> Vec<String> {
    let mut c = Http1Client::connect(&format!("127.0.0.1:{port}"))
        .await
        .expect("connect");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let r = c.send(get("/", "m")).await.expect("response");
        seen.insert(r.header("x-upstream").unwrap_or("?").to_string());
    }
    seen.into_iter().collect()
}

async fn counters(proxy: &ProxyProcess) -> String {
    let mut out = Vec::new();
    for n in [
        "cluster_updated",
        "cluster_updated_via_merge",
        "update_merge_cancelled",
        "update_out_of_merge_window",
    ] {
        let v = proxy
            .admin()
            .stat(&format!("cluster_manager.{n}"))
            .await
            .unwrap_or(0);
        out.push(format!("{n}={v}"));
    }
    out.join(" ")
}

#[tokio::test]
async fn discovery_changes_go_at_once_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let mut ups = Vec::new();
        for n in ["A", "B", "C", "D"] {
            ups.push(EchoUpstream::with_options(EchoOptions::named(n)).await);
        }
        let [a, b, c, d] = [0, 1, 2, 3].map(|i| ups[i].port());
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let dir = scratch_dir("merge");
            let (admin, port) = (free_port(), free_port());
            put(
                &dir,
                "eds.yaml",
                &eds(
                    1,
                    &[(a, "HEALTHY", 1), (b, "HEALTHY", 1), (c, "HEALTHY", 1)],
                ),
            );
            let proxy =
                ProxyProcess::start(kind, &bootstrap(&dir, admin, port), &["--concurrency", "1"])
                    .await;
            let mut got = vec![format!(
                "start {:?} {}",
                reached(port).await,
                counters(&proxy).await
            )];
            // B unhealthy: the first change, at once.
            put(
                &dir,
                "eds.yaml",
                &eds(
                    2,
                    &[(a, "HEALTHY", 1), (b, "UNHEALTHY", 1), (c, "HEALTHY", 1)],
                ),
            );
            proxy
                .admin()
                .wait_host_field("c", b, "health_flags", "/failed_eds_health")
                .await;
            got.push(format!(
                "B out {:?} {}",
                reached(port).await,
                counters(&proxy).await
            ));
            // C unhealthy within the window: at once too.
            put(
                &dir,
                "eds.yaml",
                &eds(
                    3,
                    &[(a, "HEALTHY", 1), (b, "UNHEALTHY", 1), (c, "UNHEALTHY", 1)],
                ),
            );
            proxy
                .admin()
                .wait_host_field("c", c, "health_flags", "/failed_eds_health")
                .await;
            got.push(format!(
                "C unhealthy {:?} {}",
                reached(port).await,
                counters(&proxy).await
            ));
            let until = Instant::now() + Duration::from_secs(6);
            while reached(port).await != ["A"] {
                assert!(Instant::now() < until, "{}: C never left", kind.name());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            got.push(format!("C out {}", counters(&proxy).await));
            // D added: at once.
            let four = |w_a: u32, with_d: bool| {
                let mut h = vec![
                    (a, "HEALTHY", w_a),
                    (b, "UNHEALTHY", 1),
                    (c, "UNHEALTHY", 1),
                ];
                if with_d {
                    h.push((d, "HEALTHY", 1));
                }
                h
            };
            put(&dir, "eds.yaml", &eds(4, &four(1, true)));
            proxy
                .admin()
                .wait_host_field("c", d, "health_flags", "healthy")
                .await;
            got.push(format!(
                "D in {:?} {}",
                reached(port).await,
                counters(&proxy).await
            ));
            // A's weight, then D removed: each at once.
            put(&dir, "eds.yaml", &eds(5, &four(2, true)));
            proxy.admin().wait_host_field("c", a, "weight", "2").await;
            got.push(format!("A weight {}", counters(&proxy).await));
            put(&dir, "eds.yaml", &eds(6, &four(2, false)));
            proxy
                .admin()
                .wait_host_field("c", d, "health_flags", "?")
                .await;
            got.push(format!(
                "D out {:?} {}",
                reached(port).await,
                counters(&proxy).await
            ));
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        let all = seen[0].join("\n");
        for want in [
            "C unhealthy [\"A\"] cluster_updated=2",
            "D out [\"A\"] cluster_updated=5 cluster_updated_via_merge=0",
        ] {
            assert!(all.contains(want), "{want}\n{all}");
        }
    })
    .await
}

fn checked_bootstrap(admin: u16, port: u16, hosts: &[(u16, u16)]) -> String {
    let eps: Vec<String> = hosts
        .iter()
        .map(|(p, hc)| {
            format!("{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}, health_check_config: {{port_value: {hc}}}}}}}")
        })
        .collect();
    let cluster = format!(
        r#"- name: c
  connect_timeout: 1s
  type: STATIC
  common_lb_config: {{update_merge_window: 3s, healthy_panic_threshold: {{value: 0}}}}
  health_checks:
  - {{timeout: 1s, interval: 0.2s, no_traffic_interval: 0.2s, unhealthy_threshold: 1, healthy_threshold: 1, reuse_connection: false, tcp_health_check: {{}}}}
  load_assignment: {{cluster_name: c, endpoints: [{{lb_endpoints: [{}]}}]}}
"#,
        eps.join(", ")
    );
    http_bootstrap_yaml(admin, port, &[("/", "c")], &cluster)
}

#[tokio::test]
async fn health_check_changes_merge_within_the_window_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let mut ups = Vec::new();
        for n in ["A", "B", "C"] {
            ups.push(EchoUpstream::with_options(EchoOptions::named(n)).await);
        }
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            // Each host's checks go to a listener of its own; closing it fails the host.
            let mut checks: Vec<Option<std::net::TcpListener>> = (0..3)
                .map(|_| Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")))
                .collect();
            let hc: Vec<u16> = checks
                .iter()
                .map(|l| l.as_ref().expect("open").local_addr().expect("addr").port())
                .collect();
            let hosts: Vec<(u16, u16)> = ups.iter().map(|u| u.port()).zip(hc.clone()).collect();
            let (admin, port) = (free_port(), free_port());
            let proxy = ProxyProcess::start(
                kind,
                &checked_bootstrap(admin, port, &hosts),
                &["--concurrency", "1"],
            )
            .await;
            for (p, _) in &hosts {
                proxy.admin().wait_host_field("c", *p, "health_flags", "healthy").await;
            }
            let mut got = vec![format!("start {:?} {}", reached(port).await, counters(&proxy).await)];
            // B fails its checks: the first change, at once.
            checks[1] = None;
            proxy.admin().wait_host_field("c", hosts[1].0, "health_flags", "/failed_active_hc").await;
            got.push(format!("B out {:?} {}", reached(port).await, counters(&proxy).await));
            // C fails within the window: shown, but the workers still send to C.
            checks[2] = None;
            proxy.admin().wait_host_field("c", hosts[2].0, "health_flags", "/failed_active_hc").await;
            got.push(format!("C held {:?} {}", reached(port).await, counters(&proxy).await));
            // At the window's end the workers get it.
            let until = Instant::now() + Duration::from_secs(6);
            while reached(port).await != ["A"] {
                assert!(Instant::now() < until, "{}: C never left", kind.name());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            got.push(format!("C out {}", counters(&proxy).await));
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        let all = seen[0].join("\n");
        for want in [
            "B out [\"A\", \"C\"] cluster_updated=1 cluster_updated_via_merge=0 update_merge_cancelled=0 update_out_of_merge_window=1",
            "C held [\"A\", \"C\"]",
            "C out cluster_updated=1 cluster_updated_via_merge=1",
        ] {
            assert!(all.contains(want), "{want}\n{all}");
        }
    })
    .await
}
