//! `common_lb_config.ignore_new_hosts_until_first_hc` side by side with Envoy 1.40. Two EDS
//! clusters (from files) with the same HTTP health check start with one host, `A`, checked
//! healthy. Then both get two more, `B` and `C`, whose checks go to an upstream that never
//! answers, so their first check does not end during the test. Without the option the new
//! hosts count as unhealthy: one healthy host of three is below the 50% panic threshold, and
//! traffic goes to all three. With it they wait out of the health computation
//! (`/pending_active_hc`): `A` is all the cluster has, and takes every request.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use skiff_tests::config::http_bootstrap_yaml;
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::{EchoOptions, EchoUpstream, TcpMode, TcpUpstream};
use skiff_tests::{free_port, put_file as put, run_for, scratch_dir};

fn bootstrap(dir: &Path, admin: u16, port: u16) -> String {
    let cluster = |name: &str, warm: bool| {
        let common = if warm {
            "\n  common_lb_config: {ignore_new_hosts_until_first_hc: true}"
        } else {
            ""
        };
        format!(
            r#"- name: {name}
  connect_timeout: 1s
  type: EDS
  eds_cluster_config:
    eds_config: {{path_config_source: {{path: {d}/{name}.yaml}}, resource_api_version: V3}}{common}
  health_checks:
  - timeout: 30s
    interval: 1s
    unhealthy_threshold: 1
    healthy_threshold: 1
    http_health_check: {{path: /hc}}
"#,
            d = dir.display()
        )
    };
    http_bootstrap_yaml(
        admin,
        port,
        &[("/warm", "warm"), ("/plain", "plain")],
        &(cluster("warm", true) + &cluster("plain", false)),
    )
}

/// The cluster's endpoints: `(traffic port, health check port)` each.
fn eds(name: &str, version: &str, hosts: &[(u16, Option<u16>)]) -> String {
    let eps: Vec<String> = hosts
        .iter()
        .map(|(port, hc)| {
            let hc = hc.map_or(String::new(), |p| {
                format!(", health_check_config: {{port_value: {p}}}")
            });
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}{hc}}}}}"
            )
        })
        .collect();
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: {name}
  endpoints: [{{lb_endpoints: [{}]}}]
"#,
        eps.join(", ")
    )
}

/// Which upstreams 30 requests to `/<cluster>` reach, with counts.
async fn reached(port: u16, cluster: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        let r = skiff_tests::client::curl(&[
            "-s",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/{cluster}"),
        ])
        .await;
        let who = r.resp.header("x-upstream").unwrap_or("none").to_string();
        *seen.entry(who).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn new_hosts_wait_for_their_first_check_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let ups = [
            EchoUpstream::with_options(EchoOptions::named("A")).await,
            EchoUpstream::with_options(EchoOptions::named("B")).await,
            EchoUpstream::with_options(EchoOptions::named("C")).await,
        ];
        let silent = TcpUpstream::start(TcpMode::Stall(Duration::from_secs(120))).await;
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let dir = scratch_dir("warm");
            let (admin, port) = (free_port(), free_port());
            let a = [(ups[0].port(), None)];
            for c in ["warm", "plain"] {
                put(&dir, &format!("{c}.yaml"), &eds(c, "1", &a));
            }
            let proxy =
                ProxyProcess::start(kind, &bootstrap(&dir, admin, port), &["--concurrency", "1"])
                    .await;
            // Both clusters in force with A checked healthy.
            let until = Instant::now() + Duration::from_secs(10);
            while proxy
                .admin()
                .host_field("warm", ups[0].port(), "health_flags")
                .await
                != "healthy"
                || proxy
                    .admin()
                    .host_field("plain", ups[0].port(), "health_flags")
                    .await
                    != "healthy"
            {
                assert!(Instant::now() < until, "{}: A never healthy", kind.name());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let three = [
                (ups[0].port(), None),
                (ups[1].port(), Some(silent.port())),
                (ups[2].port(), Some(silent.port())),
            ];
            for c in ["warm", "plain"] {
                put(&dir, &format!("{c}.yaml"), &eds(c, "2", &three));
            }
            let until = Instant::now() + Duration::from_secs(10);
            while proxy
                .admin()
                .host_field("plain", ups[2].port(), "health_flags")
                .await
                == "?"
                || proxy
                    .admin()
                    .host_field("warm", ups[2].port(), "health_flags")
                    .await
                    == "?"
            {
                assert!(Instant::now() < until, "{}: no update", kind.name());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut got = Vec::new();
            for c in ["warm", "plain"] {
                for (u, l) in ups.iter().zip(["A", "B", "C"]) {
                    got.push(format!(
                        "{c} {l}: {}",
                        proxy.admin().host_field(c, u.port(), "health_flags").await
                    ));
                }
            }
            let warm = reached(port, "warm").await;
            let plain = reached(port, "plain").await;
            got.push(format!("warm reached {warm:?}"));
            got.push(format!(
                "plain reached {:?}",
                plain.keys().collect::<Vec<_>>()
            ));
            let panic = proxy
                .admin()
                .stat("cluster.plain.lb_healthy_panic")
                .await
                .unwrap_or(0);
            got.push(format!("plain panicked {}", panic > 0));
            let excluded = proxy
                .admin()
                .stat("cluster.warm.membership_excluded")
                .await
                .unwrap_or(0);
            got.push(format!("warm excluded {excluded}"));
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        let all = seen[0].join("\n");
        for want in [
            "warm B: /failed_active_hc/pending_active_hc",
            "plain B: /failed_active_hc",
            "warm reached {\"A\": 30}",
            "plain reached [\"A\", \"B\", \"C\"]",
            "plain panicked true",
            "warm excluded 2",
        ] {
            assert!(all.contains(want), "{want}\n{all}");
        }
    })
    .await
}
