//! Virtual hosts' `virtual_clusters`, side by side with Envoy 1.40: requests picked by method,
//! path and header matchers (the first that matches, else `other`), counted in
//! `vhost.<vhost>.vcluster.<name>.*` (totals, codes, responses dropped for a retry, retry
//! decisions, route timeouts), and named by `%VIRTUAL_CLUSTER_NAME%` in the access log. Direct
//! responses and virtual hosts without virtual clusters count nothing.

use std::time::Duration;

use skiff_tests::admin::Admin;
use skiff_tests::client::{request, Http1Client};
use skiff_tests::proxy::{run_cli, write_config, Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, refused_port, run_for, scratch_dir};

fn config(admin: u16, port: u16, upstream: u16, refused: u16, log: &str, vcs: &str) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: g
          access_log:
          - name: l
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{text_format_source: {{inline_string: "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %VIRTUAL_CLUSTER_NAME%\n"}}}}
          route_config:
            virtual_hosts:
            - name: plain
              domains: [plain.example.com]
              routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]
            - name: vh.main
              domains: ["*"]
              virtual_clusters:
{vcs}
              routes:
              - match: {{prefix: /direct}}
                direct_response: {{status: 200}}
              - match: {{prefix: /refused}}
                route: {{cluster: refused, retry_policy: {{retry_on: connect-failure, num_retries: 1}}}}
              - match: {{prefix: /flaky}}
                route: {{cluster: up, retry_policy: {{retry_on: 5xx, num_retries: 1}}}}
              - match: {{prefix: /slow}}
                route: {{cluster: up, timeout: 0.2s}}
              - match: {{prefix: /}}
                route: {{cluster: up}}
          http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters:
  - name: up
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]}}
  - name: refused
    connect_timeout: 1s
    load_assignment: {{cluster_name: refused, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {refused}}}}}}}}}]}}]}}
"#
    )
}

const VCS: &str = r#"              - name: posts
                headers: [{name: ":method", string_match: {exact: POST}}, {name: ":path", string_match: {prefix: /api}}]
              - name: tagged
                headers: [{name: x-vc, string_match: {exact: "yes"}}]
              - name: gets
                headers: [{name: ":method", string_match: {exact: GET}}]
"#;

/// Headers a case adds.
type Extra = &'static [(&'static str, &'static str)];

/// Method, path, host and extra headers.
const CASES: &[(&str, &str, &str, Extra)] = &[
    ("GET", "/one", "a.example.com", &[]),
    ("POST", "/api/x", "a.example.com", &[]),
    ("POST", "/api/status/404", "a.example.com", &[]),
    ("POST", "/nope", "a.example.com", &[]),
    ("PUT", "/put", "a.example.com", &[("x-vc", "yes")]),
    ("POST", "/api/tagged", "a.example.com", &[("x-vc", "yes")]),
    ("GET", "/direct", "a.example.com", &[]),
    ("PUT", "/direct", "a.example.com", &[]),
    ("GET", "/refused", "a.example.com", &[]),
    ("PUT", "/refused", "a.example.com", &[]),
    ("GET", "/flaky/status/503", "a.example.com", &[]),
    ("DELETE", "/flaky/status/502", "a.example.com", &[]),
    ("GET", "/slow?sleep=1000", "a.example.com", &[]),
    ("GET", "/plain", "plain.example.com", &[]),
];

/// Sends every case to the listener on `port`, each on a connection of its own: what each
/// got.
async fn send_cases(port: u16) -> Vec<String> {
    let mut got = Vec::new();
    for (method, path, host, extra) in CASES {
        let mut req = request(method, path, host, "");
        for (k, v) in *extra {
            req.headers_mut().insert(*k, v.parse().expect("value"));
        }
        let mut c = Http1Client::connect(&format!("127.0.0.1:{port}"))
            .await
            .expect("connect");
        let r = c.send(req).await.expect("response");
        got.push(format!("{method} {path}: {}", r.status));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_clusters_count_as_envoy_counts_them() {
    run_for(Duration::from_secs(90), async {
        let upstream = EchoUpstream::start("up").await;
        let refused = refused_port();
        let dir = scratch_dir("vclusters");
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, port) = (free_port(), free_port());
            let log = dir.join(format!("{}.log", kind.name()));
            let yaml = config(
                admin,
                port,
                upstream.port(),
                refused,
                &log.display().to_string(),
                VCS,
            );
            let p = ProxyProcess::start(kind, &yaml, &[]).await;
            let mut got = Vec::new();
            got.extend(send_cases(port).await);
            let admin = Admin::new(admin);
            let mut stats: Vec<String> = admin
                .stats_containing("vhost.")
                .await
                .into_iter()
                .filter(|(_, v)| !v.contains("recorded") && !v.contains('('))
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            stats.sort();
            got.extend(stats);
            // The log is written out within a second.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            drop(p);
            let mut lines: Vec<String> = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            lines.sort();
            got.extend(lines);
            seen.push(got);
        }
        if seen[0] != seen[1] {
            for (e, s) in seen[0].iter().zip(&seen[1]) {
                let mark = if e == s { " " } else { "!" };
                eprintln!("{mark} envoy={e}\n   skiff={s}");
            }
        }
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        assert_eq!(seen[1].len(), seen[0].len(), "{:#?}", seen);
        let all = seen[0].join("\n");
        for want in [
            "vhost.vh.main.vcluster.posts.upstream_rq_404: 1",
            "vhost.vh.main.vcluster.tagged.upstream_rq_total: 1",
            "POST /api/tagged 200 posts",
            "vhost.vh.main.vcluster.other.upstream_rq_total",
            "vhost.vh.main.vcluster.gets.upstream_rq_retry_limit_exceeded: 2",
            "vhost.vh.main.vcluster.gets.upstream_rq_timeout: 1",
            "PUT /put 200 tagged",
            "POST /nope 200 -",
            "GET /refused 503 gets",
            "GET /direct 200 -",
        ] {
            assert!(all.contains(want), "{want} missing from\n{all}");
        }
        assert!(!all.contains("vhost.plain"), "{all}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_cluster_without_a_name_is_refused_by_both() {
    run_for(Duration::from_secs(60), async {
        let yaml = config(
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            "/dev/null",
            "              - headers: [{name: \":method\", string_match: {exact: GET}}]\n",
        );
        let cfg = write_config("bad-vcluster", &yaml);
        for kind in [Kind::Envoy, Kind::under_test()] {
            let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
            assert_ne!(out.code, Some(0), "{}: accepted", kind.name());
            if kind != Kind::Envoy {
                assert!(
                    out.output().contains("virtual_clusters[0].name"),
                    "{}",
                    out.output()
                );
            }
        }
    })
    .await;
}

/// Routes' `stat_prefix`, side by side with Envoy 1.40: a route's requests count in
/// `vhost.<vhost>.route.<stat_prefix>.*` as a virtual cluster's do (and in the virtual
/// cluster as well), retries and timeouts included; a direct response counts nothing; the
/// Prometheus output tags the virtual host and the prefix's first segment as `envoy_route`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_stat_prefixes_count_as_envoy_counts_them() {
    run_for(Duration::from_secs(90), async {
        let upstream = EchoUpstream::start("up").await;
        let refused = refused_port();
        let dir = scratch_dir("route-stats");
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, port) = (free_port(), free_port());
            let log = dir.join(format!("{}.log", kind.name()));
            let mut yaml = config(
                admin,
                port,
                upstream.port(),
                refused,
                &log.display().to_string(),
                VCS,
            );
            for (route, prefix) in [
                ("/direct", "dr"),
                ("/refused", "refused"),
                ("/flaky", "flaky.retried"),
                ("/slow", "slow"),
            ] {
                let line = format!("              - match: {{prefix: {route}}}\n");
                assert!(yaml.contains(&line), "{line}");
                yaml = yaml.replace(
                    &line,
                    &format!("{line}                stat_prefix: {prefix}\n"),
                );
            }
            let p = ProxyProcess::start(kind, &yaml, &[]).await;
            send_cases(port).await;
            let admin = Admin::new(admin);
            let text = admin.get("/stats?usedonly&filter=%5Evhost%5C.").await.body;
            let text = String::from_utf8_lossy(&text);
            let mut got: Vec<String> = text
                .lines()
                .filter(|l| !l.contains("recorded") && !l.contains('('))
                .map(str::to_string)
                .collect();
            let prom = admin.get("/stats/prometheus?usedonly").await.body;
            let prom = String::from_utf8_lossy(&prom);
            // Label order means nothing to Prometheus (Envoy's follows its extractors).
            let sorted_labels = |l: &str| match l.split_once('{') {
                Some((name, rest)) => {
                    let (labels, value) = rest.split_once('}').unwrap_or((rest, ""));
                    let mut labels: Vec<&str> = labels.split(',').collect();
                    labels.sort();
                    format!("{name}{{{}}}{value}", labels.join(","))
                }
                None => l.to_string(),
            };
            got.extend(
                prom.lines()
                    .filter(|l| l.starts_with("envoy_vhost") && !l.contains("_bucket"))
                    .map(sorted_labels),
            );
            got.sort();
            drop(p);
            seen.push(got);
        }
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        assert_eq!(seen[1].len(), seen[0].len(), "{:#?}", seen);
        let all = seen[0].join("\n");
        for want in [
            "vhost.vh.main.route.flaky.retried.upstream_rq_retry_limit_exceeded: 2",
            "vhost.vh.main.route.refused.upstream_rq_503: 2",
            "vhost.vh.main.route.slow.upstream_rq_timeout: 1",
            "vhost.vh.main.vcluster.gets.upstream_rq_timeout: 1",
            "envoy_vhost_main_route_flaky_retried_upstream_rq_retry{envoy_virtual_host=\"vh\"} 2",
        ] {
            assert!(all.contains(want), "{want} missing from\n{all}");
        }
        assert!(!all.contains("route.dr."), "{all}");
    })
    .await;
}
