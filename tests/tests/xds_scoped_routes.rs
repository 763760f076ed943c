//! Scoped routes over xDS (`scoped_routes.scoped_rds`), side by side with Envoy 1.40: the
//! project's control plane (`xds-control-plane`) serves the same scopes (SRDS, a wildcard
//! subscription) and route configurations (RDS) to both, over ADS state of the world (TCP),
//! ADS delta (a Unix socket) and a stream per type. After each step both must have answered
//! alike (ACK, or NACK), count the same stats and route the same requests (a key from the
//! `x-tenant` header) to the same upstreams:
//! - scopes naming RDS route configurations, an inline one, an `on_demand` one (never
//!   fetched: no route), keys that find no scope and requests without the header (404);
//! - a scope removed, and one moved to another route configuration;
//! - updates rejected: two scopes of one key, a scope with no route configuration (which
//!   Envoy applies in part before it NACKs: `tests/DIFFERENCES.md`).

use std::time::Duration;

use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::xds::{ControlPlane, CLUSTER, LISTENER, ROUTE};
use skiff_tests::{free_port, run_for, scratch_dir};

const CP: &str = env!("CARGO_BIN_EXE_xds-control-plane");
const SCOPED: &str = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sotw,
    Delta,
    PerType,
}

struct Side {
    node: String,
    proxy: ProxyProcess,
    admin: u16,
    port: u16,
    source: String,
}

fn api_source(api: &str) -> String {
    format!(
        "{{api_config_source: {{api_type: {api}, transport_api_version: V3, set_node_on_first_message_only: true, grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]}}, resource_api_version: V3}}"
    )
}

fn bootstrap(node: &str, admin: u16, mode: Mode, cp: &ControlPlane) -> String {
    let address = if mode == Mode::Delta {
        format!("{{pipe: {{path: {}}}}}", cp.uds.display())
    } else {
        format!(
            "{{socket_address: {{address: 127.0.0.1, port_value: {}}}}}",
            cp.port
        )
    };
    let dynamic = match mode {
        Mode::PerType => format!(
            "  lds_config: {}\n  cds_config: {}\n",
            api_source("GRPC"),
            api_source("GRPC")
        ),
        _ => format!(
            r#"  ads_config:
    api_type: {}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
"#,
            if mode == Mode::Delta {
                "DELTA_GRPC"
            } else {
                "GRPC"
            }
        ),
    };
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
node: {{id: {node}, cluster: xds-test}}
dynamic_resources:
{dynamic}static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {address}}}}}]}}]
"#
    )
}

fn cluster(name: &str, port: u16) -> String {
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: {name}
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: {name}
    endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#
    )
}

fn listener(side: &Side) -> String {
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: main
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: ingress
        scoped_routes:
          name: tenants
          scope_key_builder:
            fragments:
            - header_value_extractor: {{name: x-tenant, element_separator: ";", index: 0}}
          rds_config_source: {src}
          scoped_rds: {{scoped_rds_config_source: {src}}}
        http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
"#,
        port = side.port,
        src = side.source
    )
}

/// A scope: name, key, and `rds:<name>`, `lazy:<name>` (on demand), `inline:<cluster>` or
/// `none`.
fn scopes(list: &[(&str, &str, &str)]) -> String {
    let mut out = String::new();
    for (name, key, route) in list {
        let route = match route.split_once(':') {
            Some(("rds", r)) => format!("route_configuration_name: {r}"),
            Some(("lazy", r)) => format!("route_configuration_name: {r}\n  on_demand: true"),
            Some(("inline", c)) => format!(
                "route_configuration: {{name: inline-{name}, virtual_hosts: [{{name: v, domains: [\"*\"], routes: [{{match: {{prefix: /}}, route: {{cluster: {c}}}}}]}}]}}"
            ),
            _ => String::new(),
        };
        out.push_str(&format!(
            "- \"@type\": {SCOPED}\n  name: {name}\n  key: {{fragments: [{{string_key: {key}}}]}}\n  {route}\n"
        ));
    }
    out
}

fn routes(list: &[(&str, &str)]) -> String {
    list.iter()
        .map(|(name, cluster)| {
            format!(
                "- \"@type\": type.googleapis.com/envoy.config.route.v3.RouteConfiguration\n  name: {name}\n  virtual_hosts: [{{name: v, domains: [\"*\"], routes: [{{match: {{prefix: /}}, route: {{cluster: {cluster}}}}}]}}]\n"
            )
        })
        .collect()
}

const STATS: &[&str] = &[
    "http.ingress.scoped_rds.tenants.update_attempt",
    "http.ingress.scoped_rds.tenants.update_success",
    "http.ingress.scoped_rds.tenants.update_rejected",
    "http.ingress.scoped_rds.tenants.config_reload",
    "http.ingress.scoped_rds.tenants.all_scopes",
    "http.ingress.scoped_rds.tenants.on_demand_scopes",
    "http.ingress.scoped_rds.tenants.active_scopes",
    "http.ingress.rds.r-one.update_attempt",
    "http.ingress.rds.r-one.update_success",
    "http.ingress.rds.r-two.update_success",
    "http.ingress.rds.r-lazy.update_success",
    "listener_manager.total_listeners_active",
];

impl Side {
    async fn probe(&self, tenant: Option<&str>) -> String {
        let addr = format!("127.0.0.1:{}", self.port);
        let mut req = skiff_tests::client::get("/p", "x.example.com");
        if let Some(t) = tenant {
            req.headers_mut().insert(
                "x-tenant",
                http::HeaderValue::from_str(t).expect("tenant value"),
            );
        }
        let once = skiff_tests::client::http1_once(&addr, req);
        match tokio::time::timeout(Duration::from_secs(3), once).await {
            Err(_) => "timeout".to_string(),
            Ok(Ok(r)) => format!("{} {}", r.status, r.header("x-upstream").unwrap_or("-")),
            Ok(Err(e)) => format!("error: {e}"),
        }
    }

    async fn probes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in [
            Some("one"),
            Some("one;more"),
            Some("two"),
            Some("three"),
            Some("lazy"),
            Some("nobody"),
            None,
        ] {
            out.push(format!("{t:?}: {}", self.probe(t).await));
        }
        out
    }

    /// `/config_dump`'s scoped routes: each subscription's name, version and scopes (their
    /// names, keys and route configuration names), in name order.
    async fn dumped_scopes(&self) -> Vec<String> {
        let text = skiff_tests::Admin::new(self.admin)
            .get("/config_dump")
            .await
            .text();
        let v: serde_json::Value = serde_json::from_str(&text).expect("config_dump JSON");
        let mut out = Vec::new();
        for c in v["configs"].as_array().into_iter().flatten() {
            if !c["@type"]
                .as_str()
                .unwrap_or_default()
                .ends_with("ScopedRoutesConfigDump")
            {
                continue;
            }
            out.push("section".to_string());
            for d in c["dynamic_scoped_route_configs"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let mut scopes: Vec<String> = d["scoped_route_configs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        format!(
                            "{} {} {} {} {}",
                            s["@type"],
                            s["name"],
                            s["key"],
                            s["route_configuration_name"],
                            s["on_demand"]
                        )
                    })
                    .collect();
                scopes.sort();
                out.push(format!("{} {} {scopes:?}", d["name"], d["version_info"]));
            }
        }
        out
    }

    async fn stats(&self) -> Vec<String> {
        let all = skiff_tests::Admin::new(self.admin).stats().await;
        STATS
            .iter()
            .map(|n| format!("{n}={}", all.get(*n).map_or("-", |v| v.as_str())))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_rds_drives_skiff_as_it_drives_envoy() {
    run_for(Duration::from_secs(150), async {
        let a = EchoUpstream::start("A").await;
        let b = EchoUpstream::start("B").await;
        let uds = scratch_dir("xds-srds").join("xds.sock");
        let mut cp = ControlPlane::start(CP, 0, &uds).await;
        let mut pairs: Vec<(Mode, Vec<Side>)> = Vec::new();
        for mode in [Mode::Sotw, Mode::Delta, Mode::PerType] {
            let mut sides = Vec::new();
            for kind in [Kind::Envoy, Kind::Skiff] {
                let node = format!("{}-{mode:?}", kind.name());
                let admin = free_port();
                let source = match mode {
                    Mode::PerType => api_source("DELTA_GRPC"),
                    _ => "{ads: {}, resource_api_version: V3}".to_string(),
                };
                let proxy = ProxyProcess::spawn(
                    kind,
                    &bootstrap(&node, admin, mode, &cp),
                    &["--concurrency", "1", "--drain-time-s", "1"],
                    admin,
                );
                sides.push(Side {
                    node,
                    proxy,
                    admin,
                    port: free_port(),
                    source,
                });
            }
            pairs.push((mode, sides));
        }
        let clusters = format!("{}{}", cluster("a", a.port()), cluster("b", b.port()));
        let v1 = scopes(&[
            ("s-one", "one", "rds:r-one"),
            ("s-two", "two", "rds:r-two"),
            ("s-three", "three", "inline:b"),
            ("s-lazy", "lazy", "lazy:r-lazy"),
        ]);
        let rds = routes(&[("r-one", "a"), ("r-two", "b"), ("r-lazy", "a")]);
        for (_, sides) in &pairs {
            for s in sides {
                cp.set(&s.node, CLUSTER, "1", &clusters).await;
                cp.set(&s.node, LISTENER, "1", &listener(s)).await;
                cp.set(&s.node, SCOPED, "1", &v1).await;
                cp.set(&s.node, ROUTE, "1", &rds).await;
            }
        }
        for (_, sides) in &mut pairs {
            for s in sides.iter_mut() {
                s.proxy.wait_ready(Duration::from_secs(15)).await;
            }
        }
        let steps: Vec<(&str, String, bool, Vec<&str>)> = vec![
            (
                "first scopes",
                v1.clone(),
                true,
                vec![
                    "Some(\"one\"): 200 A",
                    "Some(\"one;more\"): 200 A",
                    "Some(\"two\"): 200 B",
                    "Some(\"three\"): 200 B",
                    "Some(\"lazy\"): 404 -",
                    "Some(\"nobody\"): 404 -",
                    "None: 404 -",
                ],
            ),
            (
                "s-two removed, s-one moved to r-two",
                scopes(&[
                    ("s-one", "one", "rds:r-two"),
                    ("s-three", "three", "inline:a"),
                    ("s-lazy", "lazy", "lazy:r-lazy"),
                ]),
                true,
                vec![
                    "Some(\"one\"): 200 B",
                    "Some(\"one;more\"): 200 B",
                    "Some(\"two\"): 404 -",
                    "Some(\"three\"): 200 A",
                    "Some(\"lazy\"): 404 -",
                    "Some(\"nobody\"): 404 -",
                    "None: 404 -",
                ],
            ),
            (
                "two scopes of one key",
                scopes(&[("s-one", "one", "rds:r-one"), ("s-dup", "one", "rds:r-two")]),
                false,
                vec![],
            ),
            (
                "a scope without a route configuration",
                scopes(&[("s-one", "one", "rds:r-one"), ("s-bare", "bare", "none")]),
                false,
                vec![],
            ),
        ];
        let mut last: Vec<&str> = Vec::new();
        for (i, (what, yaml, accepted, want)) in steps.iter().enumerate() {
            let version = format!("{}", i + 1);
            if i > 0 {
                for (_, sides) in &pairs {
                    for s in sides {
                        cp.set(&s.node, SCOPED, &version, yaml).await;
                    }
                }
            }
            let want = if *accepted { want.clone() } else { last.clone() };
            for (mode, sides) in &pairs {
                let envoy = cp.answer(&sides[0].node, SCOPED, &version).await;
                let skiff = cp.answer(&sides[1].node, SCOPED, &version).await;
                assert_eq!(
                    (skiff.error.is_some(), skiff.code, &skiff.version),
                    (envoy.error.is_some(), envoy.code, &envoy.version),
                    "{what} ({mode:?}): skiff answered {skiff:?}, Envoy {envoy:?}"
                );
                assert_eq!(envoy.error.is_none(), *accepted, "{what} ({mode:?}): {envoy:?}");
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
            for (mode, sides) in &pairs {
                // The stats of a route configuration no scope uses any more go within a
                // second in skiff (at once in Envoy).
                let deadline = std::time::Instant::now() + Duration::from_secs(3);
                let (e, s) = loop {
                    let e = (sides[0].probes().await, sides[0].stats().await);
                    let s = (sides[1].probes().await, sides[1].stats().await);
                    if e == s || std::time::Instant::now() > deadline || i == 3 {
                        break (e, s);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                };
                if i == 3 {
                    // Envoy checks a scope's route configuration while it applies the update:
                    // in state of the world, the scopes the update leaves out are gone before
                    // the NACK (here the inline and the on-demand one). skiff changes nothing
                    // on a NACK
                    // (tests/DIFFERENCES.md).
                    assert_eq!(s.0, want, "after '{what}' ({mode:?}): skiff");
                    let mut envoy_want = want.clone();
                    if *mode == Mode::Sotw {
                        envoy_want[3] = "Some(\"three\"): 404 -";
                    }
                    assert_eq!(e.0, envoy_want, "after '{what}' ({mode:?}): Envoy");
                    continue;
                }
                assert_eq!(
                    s, e,
                    "after '{what}' ({mode:?}): skiff (left) and Envoy (right) differ"
                );
                assert_eq!(e.0, want, "after '{what}' ({mode:?})");
                assert_eq!(
                    sides[1].dumped_scopes().await,
                    sides[0].dumped_scopes().await,
                    "after '{what}' ({mode:?}): /config_dump's scoped routes, skiff (left) and Envoy (right)"
                );
            }
            last = want;
        }
        cp.stop().await;
    })
    .await
}
