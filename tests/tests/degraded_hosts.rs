//! `outlier_detection.detect_degraded_hosts` side by side with Envoy 1.40: a host that answers
//! `x-envoy-degraded` becomes degraded (`/degraded_outlier_detection`,
//! `ejections_detected_degradation`) for `base_ejection_time` (4 s: the twelve requests sent
//! meanwhile stay within it on a loaded machine), takes no traffic while the
//! other three hosts can carry it all (overprovisioning), comes back at an interval after that
//! time, and is degraded again at its next such answer. The event log records each
//! degradation as Envoy's does.

use std::collections::BTreeMap;
use std::time::Duration;

use skiff_tests::client::curl;
use skiff_tests::config::http_bootstrap_yaml;
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for, scratch_dir};

fn config(admin: u16, port: u16, hosts: &[u16], log: &str) -> String {
    let eps: Vec<String> = hosts
        .iter()
        .map(|p| {
            format!("{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}}}")
        })
        .collect();
    let cluster = format!(
        r#"- name: c
  connect_timeout: 1s
  type: STATIC
  outlier_detection:
    detect_degraded_hosts: true
    interval: 1s
    base_ejection_time: 4s
    max_ejection_time_jitter: 0s
  load_assignment: {{cluster_name: c, endpoints: [{{lb_endpoints: [{}]}}]}}
"#,
        eps.join(", ")
    );
    format!(
        "{}\ncluster_manager: {{outlier_detection: {{event_log_path: {log}}}}}\n",
        http_bootstrap_yaml(admin, port, &[("/", "c")], &cluster)
    )
}

async fn send(port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = curl(&["-s", &format!("http://127.0.0.1:{port}/")]).await;
        assert_eq!(r.resp.status, 200);
        let who = r.resp.header("x-upstream").unwrap_or("?").to_string();
        *seen.entry(who).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn degraded_answers_degrade_the_host_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let mut a = EchoOptions::named("A");
        a.extra_headers = vec![("x-envoy-degraded".into(), "".into())];
        let ups = [
            EchoUpstream::with_options(a).await,
            EchoUpstream::start("B").await,
            EchoUpstream::start("C").await,
            EchoUpstream::start("D").await,
        ];
        let ports: Vec<u16> = ups.iter().map(|u| u.port()).collect();
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let dir = scratch_dir("degraded");
            let log = dir.join("events.log");
            let (admin, port) = (free_port(), free_port());
            let proxy = ProxyProcess::start(
                kind,
                &config(admin, port, &ports, &log.to_string_lossy()),
                &["--concurrency", "1"],
            )
            .await;
            let detected = || async {
                proxy
                    .admin()
                    .stat("cluster.c.outlier_detection.ejections_detected_degradation")
                    .await
                    .unwrap_or(0)
            };
            let mut got = Vec::new();
            // Round robin reaches A, which answers degraded.
            send(port, 4).await;
            proxy
                .admin()
                .wait_host_field("c", ports[0], "health_flags", "/degraded_outlier_detection")
                .await;
            got.push(format!("detected {}", detected().await));
            // Three healthy hosts of four carry everything (3/4 × 1.4 ≥ 100%).
            got.push(format!("while degraded {:?}", send(port, 12).await));
            // Back after base_ejection_time, at an interval.
            proxy
                .admin()
                .wait_host_field("c", ports[0], "health_flags", "healthy")
                .await;
            let back = send(port, 8).await;
            got.push(format!("back: A reached {}", back.contains_key("A")));
            proxy
                .admin()
                .wait_host_field("c", ports[0], "health_flags", "/degraded_outlier_detection")
                .await;
            got.push(format!("detected {}", detected().await));
            got.push(format!(
                "ejections active {}",
                proxy
                    .admin()
                    .stat("cluster.c.outlier_detection.ejections_active")
                    .await
                    .unwrap_or(0)
            ));
            // The event log: type, action, enforced and count of each line. Both proxies write it
            // on their file flush interval, so wait for the three events (two degradations and
            // the return between them) before reading it.
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            let mut text = std::fs::read_to_string(&log).unwrap_or_default();
            while text.lines().count() < 3 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                text = std::fs::read_to_string(&log).unwrap_or_default();
            }
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("json");
                got.push(format!(
                    "event {} {} enforced {} ejections {} consecutive {}",
                    v["type"],
                    v["action"],
                    v["enforced"],
                    v["num_ejections"],
                    v.get("eject_consecutive_event").is_some()
                ));
            }
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        let all = seen[0].join("\n");
        for want in [
            "detected 1",
            "while degraded {\"B\": 4, \"C\": 4, \"D\": 4}",
            "back: A reached true",
            "detected 2",
            "ejections active 0",
            "event \"DEGRADED\" \"EJECT\" enforced true",
            "event \"CONSECUTIVE_5XX\" \"UNEJECT\" enforced false",
        ] {
            assert!(all.contains(want), "{want}\n{all}");
        }
        assert_eq!(all.matches("\"DEGRADED\" \"EJECT\"").count(), 2, "{all}");
    })
    .await
}
