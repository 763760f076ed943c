//! The command line (Envoy's flags) and configuration errors that name the field path.

use serde_json::json;
use skiff_tests::client::curl;
use skiff_tests::config::{self, to_yaml};
use skiff_tests::proxy::{
    run_cli, skiff_only, start_under_test, write_config, Kind, ProxyProcess, TempConfig,
};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run};

const HCM_PATH: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";

/// Runs `--mode validate -c <yaml>` on the proxy under test.
async fn validate(yaml: &str) -> (TempConfig, skiff_tests::proxy::CliRun) {
    let cfg = write_config("validate", yaml);
    let out = run_cli(
        Kind::under_test(),
        &["--mode", "validate", "-c", cfg.path()],
    )
    .await;
    (cfg, out)
}

/// Asserts a config is rejected, both by `--mode validate` and at start-up (`--mode serve`),
/// with `needle` in the message.
async fn assert_rejected(yaml: &str, needle: &str) {
    let (path, out) = validate(yaml).await;
    assert_ne!(
        out.code,
        Some(0),
        "validate accepted a bad config:\n{}",
        out.output()
    );
    assert!(
        out.output().contains(needle),
        "validate: expected `{needle}` in the error, got:\n{}",
        out.output()
    );
    assert!(
        !out.output()
            .contains(&format!("configuration '{}' OK", path.path())),
        "validate printed OK for a bad config"
    );
    let serve = run_cli(Kind::under_test(), &["-c", path.path()]).await;
    assert_ne!(
        serve.code,
        Some(0),
        "serve started with a bad config:\n{}",
        serve.output()
    );
    assert!(
        serve.output().contains(needle),
        "serve: expected `{needle}` in the error, got:\n{}",
        serve.output()
    );
}

fn base() -> serde_json::Value {
    config::simple_http(free_port(), free_port(), &[free_port()])
}

#[tokio::test]
async fn validate_reference_minimal_config_unchanged() {
    run(async {
        let path = config::envoy_minimal_path();
        let path = path.to_str().expect("utf-8 path");
        let out = run_cli(Kind::under_test(), &["--mode", "validate", "-c", path]).await;
        assert_eq!(out.code, Some(0), "{}", out.output());
        assert!(
            out.output().contains(&format!("configuration '{path}' OK")),
            "expected \"configuration '{path}' OK\", got:\n{}",
            out.output()
        );
    })
    .await
}

#[tokio::test]
async fn validate_generated_config_ok() {
    run(async {
        let (path, out) = validate(&to_yaml(&base())).await;
        assert_eq!(out.code, Some(0), "{}", out.output());
        assert!(out
            .output()
            .contains(&format!("configuration '{}' OK", path.path())));
    })
    .await
}

#[tokio::test]
async fn unknown_listener_field_is_named() {
    run(async {
        let mut v = base();
        v["static_resources"]["listeners"][0]["bogus"] = json!(1);
        let needle = if Kind::under_test() == Kind::Skiff {
            "static_resources.listeners[0].bogus"
        } else {
            "bogus"
        };
        assert_rejected(&to_yaml(&v), needle).await;
    })
    .await
}

#[tokio::test]
async fn unknown_hcm_field_is_named() {
    run(async {
        let mut v = base();
        config::hcm_config(&mut v)["bogus_option"] = json!(true);
        let needle = format!("{HCM_PATH}.bogus_option");
        let needle = if Kind::under_test() == Kind::Skiff {
            needle.as_str()
        } else {
            "bogus_option"
        };
        assert_rejected(&to_yaml(&v), needle).await;
    })
    .await
}

#[tokio::test]
async fn unknown_cluster_field_is_named() {
    run(async {
        let mut v = base();
        v["static_resources"]["clusters"][0]["bogus_cluster_field"] = json!("x");
        let needle = if Kind::under_test() == Kind::Skiff {
            "static_resources.clusters[0].bogus_cluster_field"
        } else {
            "bogus_cluster_field"
        };
        assert_rejected(&to_yaml(&v), needle).await;
    })
    .await
}

#[tokio::test]
async fn unhonoured_listener_field_is_unsupported() {
    run(async {
        if skiff_only("unhonoured_listener_field_is_unsupported") {
            return;
        }
        let mut v = base();
        v["static_resources"]["listeners"][0]["tcp_backlog_size"] = json!(5);
        assert_rejected(
            &to_yaml(&v),
            "static_resources.listeners[0].tcp_backlog_size: unsupported",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn an_unsupported_hcm_field_is_named() {
    run(async {
        if skiff_only("an_unsupported_hcm_field_is_named") {
            return;
        }
        let mut v = base();
        config::hcm_config(&mut v)["stream_error_on_invalid_http_message"] = json!(true);
        assert_rejected(
            &to_yaml(&v),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.stream_error_on_invalid_http_message: unsupported",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn route_to_unknown_cluster_is_named() {
    run(async {
        let mut v = base();
        config::route_config(&mut v)["virtual_hosts"][0]["routes"][0]["route"]["cluster"] =
            json!("nope");
        let needle = if Kind::under_test() == Kind::Skiff {
            "route_config.virtual_hosts[0].routes[0].route.cluster"
        } else {
            "unknown cluster 'nope'"
        };
        assert_rejected(&to_yaml(&v), needle).await;
        let (_, out) = validate(&to_yaml(&v)).await;
        assert!(
            out.output().contains("nope"),
            "the cluster name is in the message: {}",
            out.output()
        );
    })
    .await
}

#[tokio::test]
async fn yaml_syntax_error_is_rejected() {
    run(async {
        let (path, out) = validate("admin: {{\n").await;
        assert_ne!(out.code, Some(0), "{}", out.output());
        assert!(!out
            .output()
            .contains(&format!("configuration '{}' OK", path.path())));
    })
    .await
}

#[tokio::test]
async fn missing_config_file_is_rejected() {
    run(async {
        let out = run_cli(
            Kind::under_test(),
            &[
                "--mode",
                "validate",
                "-c",
                "/nonexistent/skiff-tests/bootstrap.yaml",
            ],
        )
        .await;
        assert_ne!(out.code, Some(0), "{}", out.output());
        assert!(
            out.output()
                .contains("/nonexistent/skiff-tests/bootstrap.yaml"),
            "the path is named: {}",
            out.output()
        );
    })
    .await
}

#[tokio::test]
async fn unknown_flag_is_rejected() {
    run(async {
        let out = run_cli(Kind::under_test(), &["--bogus-flag", "--mode", "validate"]).await;
        assert_ne!(out.code, Some(0), "{}", out.output());
        assert!(
            out.output().contains("bogus-flag"),
            "the flag is named in the error: {}",
            out.output()
        );
    })
    .await
}

#[tokio::test]
async fn config_yaml_is_merged_over_the_file() {
    run(async {
        let up = EchoUpstream::start("u1").await;
        let (file_admin, real_admin, listen) = (free_port(), free_port(), free_port());
        let yaml = to_yaml(&config::simple_http(file_admin, listen, &[up.port()]));
        let over = format!(
            "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {real_admin} }} }} }}"
        );
        let mut p = ProxyProcess::spawn(Kind::under_test(), &yaml, &["--config-yaml", &over], real_admin);
        p.wait_ready(std::time::Duration::from_secs(10)).await;
        let r = curl(&[&format!("http://127.0.0.1:{listen}/merged")]).await;
        assert_eq!(r.resp.status, 200, "{r:?}");
        assert!(
            p.admin().try_get("/ready").await.is_ok(),
            "admin moved to the --config-yaml port"
        );
        assert!(
            skiff_tests::Admin::new(file_admin).try_get("/ready").await.is_err(),
            "nothing listens on the file's admin port"
        );
    })
    .await
}

#[tokio::test]
async fn command_line_options_in_server_info() {
    run(async {
        let (admin, listen) = (free_port(), free_port());
        let yaml = to_yaml(&config::simple_http(admin, listen, &[free_port()]));
        let p = start_under_test(
            &yaml,
            &[
                "--concurrency",
                "3",
                "-l",
                "debug",
                "--drain-time-s",
                "7",
                "--parent-shutdown-time-s",
                "9",
                "--service-cluster",
                "svc-cluster",
                "--service-node",
                "svc-node",
                "--disable-hot-restart",
            ],
        )
        .await;
        let r = p.admin().get("/server_info").await;
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("server_info is JSON");
        let o = &v["command_line_options"];
        assert_eq!(v["state"], "LIVE", "{v:#}");
        assert_eq!(o["concurrency"], 3, "{o:#}");
        assert_eq!(o["log_level"], "debug", "{o:#}");
        assert_eq!(o["drain_time"], "7s", "{o:#}");
        assert_eq!(o["parent_shutdown_time"], "9s", "{o:#}");
        assert_eq!(o["service_cluster"], "svc-cluster", "{o:#}");
        assert_eq!(o["service_node"], "svc-node", "{o:#}");
        assert_eq!(o["file_flush_interval"], "0.050s", "{o:#}");
        assert_eq!(o["mode"], "Serve", "{o:#}");
        assert_eq!(o["disable_hot_restart"], true, "{o:#}");
        assert_eq!(v["node"]["id"], "svc-node", "{v:#}");
        assert_eq!(v["node"]["cluster"], "svc-cluster", "{v:#}");
        let stats = p.admin().stats().await;
        assert_eq!(
            stats.get("server.concurrency").map(String::as_str),
            Some("3")
        );
    })
    .await
}

#[tokio::test]
async fn default_filter_chain_serves() {
    run(async {
        let up = EchoUpstream::start("u1").await;
        let (admin, listen) = (free_port(), free_port());
        let mut v = config::simple_http(admin, listen, &[up.port()]);
        let l = &mut v["static_resources"]["listeners"][0];
        let chain = l["filter_chains"][0].clone();
        l.as_object_mut()
            .expect("listener object")
            .remove("filter_chains");
        l["default_filter_chain"] = chain;
        let _p = start_under_test(&to_yaml(&v), &[]).await;
        let r = curl(&[&format!("http://127.0.0.1:{listen}/dfc")]).await;
        assert_eq!(r.resp.status, 200, "{r:?}");
        assert_eq!(up.rec.last().path, "/dfc");
    })
    .await
}

#[tokio::test]
async fn json_bootstrap_is_accepted() {
    run(async {
        let up = EchoUpstream::start("u1").await;
        let (admin, listen) = (free_port(), free_port());
        let v = config::simple_http(admin, listen, &[up.port()]);
        let json = serde_json::to_string_pretty(&v).expect("json");
        let _p = start_under_test(&json, &[]).await;
        let r = curl(&[&format!("http://127.0.0.1:{listen}/json")]).await;
        assert_eq!(r.resp.status, 200, "{r:?}");
    })
    .await
}

/// pilot-agent's command line: `--allow-unknown-static-fields` drops fields the protos do not
/// know (counted in `server.static_unknown_fields`), and the other flags it passes are taken.
#[tokio::test]
async fn pilot_agent_flags_are_accepted_and_unknown_static_fields_counted_as_envoy_does() {
    run(async {
        let flags = [
            "--drain-time-s",
            "45",
            "--drain-strategy",
            "immediate",
            "--local-address-ip-version",
            "v4",
            "--allow-unknown-static-fields",
            "--component-log-level",
            "misc:error",
            "--skip-deprecated-logs",
            "--log-format",
            "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t",
            "--use-dynamic-base-id",
            "--restart-epoch",
            "0",
            "--service-zone",
            "zone-a",
        ];
        for kind in [Kind::Envoy, Kind::Skiff] {
            let mut v = base();
            v["no_such_bootstrap_field"] = json!(1);
            v["static_resources"]["clusters"][0]["no_such_cluster_field"] = json!(true);
            let p = ProxyProcess::start(kind, &to_yaml(&v), &flags).await;
            let admin = p.admin();
            // One count for the file, however many fields it had.
            assert_eq!(
                admin.counter("server.static_unknown_fields").await,
                1,
                "{}",
                kind.name()
            );
            let info = admin.get("/server_info").await.text();
            assert!(
                info.contains("\"drain_strategy\": \"Immediate\""),
                "{}: {info}",
                kind.name()
            );
            let info: serde_json::Value = serde_json::from_str(&info).expect("JSON");
            assert_eq!(
                info["node"]["locality"]["zone"],
                "zone-a",
                "{}: --service-zone fills the node's zone",
                kind.name()
            );
        }
        // A later restart epoch asks for a hot restart, which skiff does not have.
        let run = run_cli(Kind::Skiff, &["--restart-epoch", "1", "--mode", "validate"]).await;
        assert_ne!(run.code, Some(0), "{run:?}");
        assert!(
            run.stderr.contains("hot restart is not supported"),
            "{run:?}"
        );
    })
    .await;
}
