//! The layered runtime side by side with Envoy 1.40: static, disk and admin layers,
//! `GET /runtime`, `POST /runtime_modify`, and traffic shifting as Envoy's docs describe it
//! (a route's `runtime_fraction` under `routing.traffic_shift.<name>` moved from 100 to 0 while
//! traffic flows; weighted clusters under `runtime_key_prefix`), each split measured over
//! hundreds of requests and held within statistical bounds for both proxies.

use std::path::Path;
use std::time::Duration;

use skiff_tests::client::Http1Client;
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for, scratch_dir};

fn config(admin: u16, port: u16, v1: u16, v2: u16, disk: &Path) -> String {
    let cluster = |name: &str, port: u16| {
        format!(
            r#"
  - name: {name}
    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}"#
        )
    };
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
layered_runtime:
  layers:
  - name: static
    static_layer:
      routing: {{weights: {{v2: 50}}}}
      plain: 7
      share: {{numerator: 20, denominator: HUNDRED}}
  - name: disk
    disk_layer: {{symlink_root: {disk}, subdirectory: envoy}}
  - name: admin
    admin_layer: {{}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config:
            virtual_hosts:
            - name: a
              domains: ["*"]
              routes:
              - match:
                  prefix: /shift
                  runtime_fraction:
                    default_value: {{numerator: 50, denominator: HUNDRED}}
                    runtime_key: routing.traffic_shift.helloworld
                route: {{cluster: v1}}
              - match: {{prefix: /shift}}
                route: {{cluster: v2}}
              - match:
                  prefix: /fine
                  runtime_fraction:
                    default_value: {{numerator: 0, denominator: TEN_THOUSAND}}
                    runtime_key: share
                route: {{cluster: v1}}
              - match: {{prefix: /fine}}
                route: {{cluster: v2}}
              - match: {{prefix: /weighted}}
                route:
                  weighted_clusters:
                    runtime_key_prefix: routing.weights
                    clusters: [{{name: v1, weight: 50}}, {{name: v2, weight: 50}}]
          http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters:{}{}
"#,
        cluster("v1", v1),
        cluster("v2", v2),
        disk = disk.display(),
    )
}

/// Sends `n` requests for `path` and returns how many reached v1.
async fn share_of_v1(c: &mut Http1Client, path: &str, n: usize) -> usize {
    let mut v1 = 0;
    for _ in 0..n {
        let r = c
            .send(skiff_tests::client::get(path, "a"))
            .await
            .expect("a response");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        match r.header("x-upstream") {
            Some("v1") => v1 += 1,
            Some("v2") => {}
            other => panic!("{path}: answered by {other:?}"),
        }
    }
    v1
}

/// Makes `dir/<version>/envoy/<key path>` hold `value` and moves the `current` symlink onto it,
/// as a runtime deployment does.
fn deploy(dir: &Path, version: &str, files: &[(&str, &str)]) {
    for (key, value) in files {
        let f = dir.join(version).join("envoy").join(key.replace('.', "/"));
        std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
        std::fs::write(&f, value).expect("write");
    }
    let tmp = dir.join("next");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(dir.join(version), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("current")).expect("move the symlink");
}

/// A count out of `n` at rate `p`, within five standard deviations.
fn within(count: usize, n: usize, p: f64, what: &str) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    let lo = (mean - 5.0 * sd).floor().max(0.0) as usize;
    let hi = (mean + 5.0 * sd).ceil() as usize;
    assert!(
        (lo..=hi).contains(&count),
        "{what}: {count} of {n}, expected {lo}..={hi}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_shifts_with_the_runtime_as_in_envoy() {
    run_for(Duration::from_secs(120), async {
        let mut dumps = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let what = |s: &str| format!("{kind:?}: {s}");
            let v1 = EchoUpstream::start("v1").await;
            let v2 = EchoUpstream::start("v2").await;
            let dir = scratch_dir("runtime");
            deploy(&dir, "a", &[("routing.traffic_shift.other", "1")]);
            let (admin, port) = (free_port(), free_port());
            let p = ProxyProcess::start(
                kind,
                &config(admin, port, v1.port(), v2.port(), &dir.join("current")),
                &[],
            )
            .await;
            let a = p.admin();
            let mut c = Http1Client::connect(&format!("127.0.0.1:{port}"))
                .await
                .expect("connect");

            // The route's default: half.
            within(
                share_of_v1(&mut c, "/shift", 1000).await,
                1000,
                0.5,
                &what("default 50%"),
            );
            // The static layer's fraction (20 of a hundred) in place of the route's default
            // (none of ten thousand).
            within(
                share_of_v1(&mut c, "/fine", 500).await,
                500,
                0.2,
                &what("static fraction"),
            );
            // Weighted clusters: v2's weight 50 from the static layer, v1's default 50.
            within(
                share_of_v1(&mut c, "/weighted", 400).await,
                400,
                0.5,
                &what("weighted default"),
            );

            // The admin layer moves the traffic from v1 to v2 while the connection stays.
            for (pct, n) in [(100, 200), (75, 400), (25, 400), (0, 200)] {
                let r = a
                    .post(&format!(
                        "/runtime_modify?routing.traffic_shift.helloworld={pct}"
                    ))
                    .await;
                assert_eq!((r.status, r.text()), (200, "OK\n".into()), "{kind:?}");
                within(
                    share_of_v1(&mut c, "/shift", n).await,
                    n,
                    f64::from(pct) / 100.0,
                    &what(&format!("admin {pct}%")),
                );
            }
            let r = a
                .post("/runtime_modify?routing.weights.v1=90&routing.weights.v2=10")
                .await;
            assert_eq!(r.status, 200, "{kind:?}");
            within(
                share_of_v1(&mut c, "/weighted", 400).await,
                400,
                0.9,
                &what("weighted 90/10"),
            );
            let r = a.post("/runtime_modify?routing.weights.v1=0").await;
            assert_eq!(r.status, 200, "{kind:?}");
            assert_eq!(share_of_v1(&mut c, "/weighted", 100).await, 0, "{kind:?}");

            // Removing the override uncovers the disk layer; a new deployment of it is read
            // when its symlink moves.
            let r = a
                .post("/runtime_modify?routing.traffic_shift.helloworld=")
                .await;
            assert_eq!(r.status, 200, "{kind:?}");
            within(
                share_of_v1(&mut c, "/shift", 400).await,
                400,
                0.5,
                &what("back to the default"),
            );
            deploy(&dir, "b", &[("routing.traffic_shift.helloworld", "10\n")]);
            let mut seen = String::new();
            for _ in 0..50 {
                let r = a.get("/runtime").await;
                seen = r.text();
                if seen.contains("routing.traffic_shift.helloworld") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(seen.contains("\"10\""), "{kind:?}: {seen}");
            within(
                share_of_v1(&mut c, "/shift", 600).await,
                600,
                0.1,
                &what("disk 10%"),
            );
            // A fraction written in a file.
            deploy(
                &dir,
                "c",
                &[("share", "numerator: 60\ndenominator: HUNDRED\n")],
            );
            for _ in 0..50 {
                if a.get("/runtime").await.text().contains("numerator: 60") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            within(
                share_of_v1(&mut c, "/fine", 400).await,
                400,
                0.6,
                &what("disk fraction"),
            );

            // The admin endpoints' answers.
            let r = a.post("/runtime_modify").await;
            assert_eq!(r.status, 400, "{kind:?}");
            assert!(
                r.text().starts_with("usage: /runtime_modify?key1=value1"),
                "{kind:?}"
            );
            let r = a.get("/runtime_modify?x=1").await;
            assert_eq!(r.status, 405, "{kind:?}");
            let mut dump: serde_json::Value =
                serde_json::from_str(&a.get("/runtime").await.text()).expect("JSON");
            // Envoy shows a static layer's fraction as its protobuf debug text (which protobuf
            // marks as unstable); skiff as YAML (tests/DIFFERENCES.md).
            let shown = dump["entries"]["share"]["layer_values"][0].take();
            assert!(
                shown.as_str().is_some_and(|s| s.contains("HUNDRED")),
                "{kind:?}: {shown}"
            );
            let stats = a.stats().await;
            let stat = |n: &str| stats.get(n).cloned().unwrap_or_default();
            dumps.push((
                dump,
                [
                    "runtime.admin_overrides_active",
                    "runtime.num_keys",
                    "runtime.num_layers",
                ]
                .map(stat),
            ));
            drop(p);
            let _ = std::fs::remove_dir_all(&dir);
        }
        assert_eq!(dumps[1], dumps[0], "skiff (left), Envoy (right)");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_modify_needs_an_admin_layer_as_in_envoy() {
    run_for(Duration::from_secs(60), async {
        for kind in [Kind::Envoy, Kind::Skiff] {
            let admin = free_port();
            let yaml = format!(
                "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\nlayered_runtime: {{layers: [{{name: s, static_layer: {{a: 1}}}}]}}\n"
            );
            let p = ProxyProcess::start(kind, &yaml, &[]).await;
            let r = p.admin().post("/runtime_modify?a=2").await;
            assert_eq!((r.status, r.text()), (503, "No admin layer specified".into()), "{kind:?}");
            let dump: serde_json::Value =
                serde_json::from_str(&p.admin().get("/runtime").await.text()).expect("JSON");
            assert_eq!(
                dump,
                serde_json::json!({"entries": {"a": {"final_value": "1", "layer_values": ["1"]}}, "layers": ["s"]}),
                "{kind:?}"
            );
        }
    })
    .await;
}

/// skiff refuses to set at run time an Envoy key it does not honour, where Envoy takes it
/// (tests/DIFFERENCES.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_key_skiff_does_not_honour_is_refused_at_runtime_modify() {
    run_for(Duration::from_secs(30), async {
        let admin = free_port();
        let yaml = format!(
            "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\nlayered_runtime: {{layers: [{{name: a, admin_layer: {{}}}}]}}\n"
        );
        let p = ProxyProcess::start(Kind::Skiff, &yaml, &[]).await;
        let r = p
            .admin()
            .post("/runtime_modify?tracing.random_sampling=100&mine=1")
            .await;
        assert_eq!(r.status, 400);
        assert!(r.text().contains("tracing.random_sampling"), "{}", r.text());
        // Nothing changed.
        let dump: serde_json::Value =
            serde_json::from_str(&p.admin().get("/runtime").await.text()).expect("JSON");
        assert_eq!(dump["entries"], serde_json::json!({}));
    })
    .await;
}

const CP: &str = env!("CARGO_BIN_EXE_xds-control-plane");

/// A bootstrap whose runtime has an RTDS layer (over ADS, or its own delta stream) and an
/// admin layer, with the traffic-shifting route.
fn rtds_bootstrap(
    node: &str,
    admin: u16,
    port: u16,
    v1: u16,
    v2: u16,
    cp: u16,
    ads: bool,
) -> String {
    let (dynamic, source) = if ads {
        (
            "dynamic_resources:\n  ads_config: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}\n",
            "{ads: {}, resource_api_version: V3}",
        )
    } else {
        (
            "",
            "{resource_api_version: V3, api_config_source: {api_type: DELTA_GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}}",
        )
    };
    let dir = scratch_dir("rtds-unused");
    let base = config(admin, port, v1, v2, &dir.join("current"));
    let base = base.replace(
        "  - name: disk\n    disk_layer:",
        &format!("  - name: rt\n    rtds_layer: {{name: rt0, rtds_config: {source}}}\n  - name: disk\n    disk_layer:"),
    );
    format!(
        "node: {{id: {node}, cluster: c}}\n{dynamic}{base}\n  - name: xds\n    type: STATIC\n    typed_extension_protocol_options: {{envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {{\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {{http2_protocol_options: {{}}}}}}}}\n    load_assignment: {{cluster_name: xds, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {cp}}}}}}}}}]}}]}}\n"
    )
}

fn runtime_resource(layer: &str) -> String {
    format!("- \"@type\": type.googleapis.com/envoy.service.runtime.v3.Runtime\n  name: rt0\n  layer: {layer}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtds_shifts_traffic_as_in_envoy() {
    use skiff_tests::xds::{ControlPlane, RUNTIME};
    run_for(Duration::from_secs(120), async {
        let v1 = EchoUpstream::start("v1").await;
        let v2 = EchoUpstream::start("v2").await;
        let dir = scratch_dir("rtds");
        let mut cp = ControlPlane::start(CP, 0, &dir.join("xds.sock")).await;
        let mut sides = Vec::new();
        for ads in [true, false] {
            for kind in [Kind::Envoy, Kind::Skiff] {
                let node = format!("{}-{}", kind.name(), if ads { "ads" } else { "delta" });
                let (admin, port) = (free_port(), free_port());
                let yaml = rtds_bootstrap(&node, admin, port, v1.port(), v2.port(), cp.port, ads);
                let p = ProxyProcess::spawn(kind, &yaml, &["--concurrency", "1"], admin);
                sides.push((node, kind, port, p));
            }
        }
        // Start-up waits for the runtime, as Envoy's init manager does: once the admin
        // answers, it says not ready.
        for (node, _, _, p) in &sides {
            let mut status = None;
            for _ in 0..200 {
                if let Ok(r) = p.admin().try_get("/ready").await {
                    status = Some(r.status);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(status, Some(503), "{node}: ready before RTDS");
        }
        for (version, pct) in [("1", 100u32), ("2", 0), ("3", 30)] {
            for (node, _, _, _) in &sides {
                let layer = format!("{{routing: {{traffic_shift: {{helloworld: {pct}}}}}}}");
                cp.set(node, RUNTIME, version, &runtime_resource(&layer)).await;
            }
            for (node, kind, port, p) in &mut sides {
                let a = cp.answer(node, RUNTIME, version).await;
                assert_eq!(a.error, None, "{node}");
                p.wait_ready(Duration::from_secs(10)).await;
                let mut c = Http1Client::connect(&format!("127.0.0.1:{port}"))
                    .await
                    .expect("connect");
                let n = if pct == 30 { 500 } else { 100 };
                within(
                    share_of_v1(&mut c, "/shift", n).await,
                    n,
                    f64::from(pct) / 100.0,
                    &format!("{kind:?} {node}: RTDS {pct}%"),
                );
            }
        }
        // A layer with a list is refused by both; one of Envoy's keys skiff does not honour is
        // refused by skiff only (tests/DIFFERENCES.md).
        for (node, kind, _, _) in &sides {
            cp.set(node, RUNTIME, "4", &runtime_resource("{a: [1, 2]}")).await;
            let a = cp.answer(node, RUNTIME, "4").await;
            let e = a.error.unwrap_or_default();
            assert!(e.contains("Invalid runtime entry value for a"), "{kind:?} {node}: {e}");
            cp.set(node, RUNTIME, "5", &runtime_resource("{tracing: {random_sampling: 5}}"))
                .await;
            let a = cp.answer(node, RUNTIME, "5").await;
            if *kind == Kind::Skiff {
                assert_eq!(
                    a.error.as_deref(),
                    Some("resources[0].layer.tracing.random_sampling: skiff does not honour runtime key 'tracing.random_sampling'"),
                    "{node}"
                );
            }
        }
        // What each shows of its runtime (Envoy now holds the refused key; skiff still 30).
        let mut dumps = Vec::new();
        for (node, kind, _, p) in &sides {
            let mut d: serde_json::Value =
                serde_json::from_str(&p.admin().get("/runtime").await.text()).expect("JSON");
            // The static fraction's text differs (see the first test).
            let e = d["entries"].as_object_mut().expect("entries");
            assert!(e.remove("share").is_some(), "{node}");
            if *kind == Kind::Envoy {
                assert!(e.remove("tracing.random_sampling").is_some(), "{node}");
                e.insert(
                    "routing.traffic_shift.helloworld".into(),
                    serde_json::json!({"final_value": "30", "layer_values": ["", "30", ""]}),
                );
            }
            dumps.push((node.clone(), d));
        }
        for pair in dumps.chunks(2) {
            assert_eq!(pair[1].1, pair[0].1, "{} (left), {} (right)", pair[1].0, pair[0].0);
        }
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
