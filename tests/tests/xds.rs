//! Configuration over xDS (ADS over gRPC), side by side with Envoy 1.40: the project's own
//! control plane (`xds-control-plane`, a separate process) serves the same sequence of updates
//! to Envoy and to skiff: ADS state of the world over TCP, ADS delta over a Unix socket, and a
//! stream per type (`api_config_source`, both protocols) over TCP. After each
//! step both must have answered alike (ACK, or NACK with an `error_detail`), be at the same
//! versions, count the same update stats and route the same probes to the same upstreams.

use std::time::Duration;

use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::xds::{Answer, ControlPlane, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use skiff_tests::{free_port, run_for, scratch_dir};

const CP: &str = env!("CARGO_BIN_EXE_xds-control-plane");

struct Ups {
    a: EchoUpstream,
    b: EchoUpstream,
    c: EchoUpstream,
}

/// One proxy: its node id (its resources on the control plane), ports, and the config
/// sources its listeners and clusters name for RDS and EDS.
struct Side {
    node: String,
    proxy: Option<ProxyProcess>,
    admin: u16,
    port: u16,
    port2: u16,
    rds_source: String,
    eds_source: String,
}

/// How a pair of proxies takes its resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// ADS, state of the world, over TCP.
    Sotw,
    /// ADS, delta, over a Unix socket.
    Delta,
    /// A stream per type over TCP: LDS and EDS state of the world, CDS and RDS delta.
    PerType,
}

const ADS_SOURCE: &str = "{ads: {}, resource_api_version: V3}";

fn api_source(api: &str) -> String {
    format!(
        "{{api_config_source: {{api_type: {api}, transport_api_version: V3, set_node_on_first_message_only: true, grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]}}, resource_api_version: V3}}"
    )
}

fn bootstrap(node: &str, admin: u16, mode: Mode, cp: &ControlPlane) -> String {
    bootstrap_with(node, admin, mode, cp, "")
}

/// The bootstrap, with `more` added to the LDS and CDS config sources of ADS.
fn bootstrap_with(node: &str, admin: u16, mode: Mode, cp: &ControlPlane, more: &str) -> String {
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
            api_source("DELTA_GRPC")
        ),
        _ => format!(
            r#"  ads_config:
    api_type: {api}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3{more}}}
  cds_config: {{ads: {{}}, resource_api_version: V3{more}}}
"#,
            api = if mode == Mode::Delta {
                "DELTA_GRPC"
            } else {
                "GRPC"
            },
        ),
    };
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
node: {{id: {node}, cluster: xds-test, metadata: {{team: mesh}}}}
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
"#,
    )
}

fn static_cluster(name: &str, port: u16) -> String {
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

fn eds_cluster(side: &Side, name: &str) -> String {
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: {name}
  type: EDS
  connect_timeout: 1s
  eds_cluster_config: {{eds_config: {src}}}
"#,
        src = side.eds_source
    )
}

/// A cluster both proxies refuse: a STATIC endpoint that is not an IP address.
const BAD_CLUSTER: &str = r#"- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: bad
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: bad
    endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: not-an-ip, port_value: 80}}}}]}]
"#;

fn assignment(name: &str, port: u16) -> String {
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: {name}
  endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#
    )
}

fn listeners(side: &Side, second: bool) -> String {
    listeners_for(side, second, "r1")
}

/// The listeners, the HCM's routes from RDS configuration `route`.
fn listeners_for(side: &Side, second: bool, route: &str) -> String {
    let mut out = format!(
        r#"- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: main
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: ingress
        rds: {{route_config_name: {route}, config_source: {src}}}
        http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
"#,
        port = side.port,
        src = side.rds_source
    );
    if second {
        out.push_str(&tcp_listener("second", side.port2));
    }
    out
}

/// A tcp_proxy listener to cluster `a`.
fn tcp_listener(name: &str, port: u16) -> String {
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: {name}
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains: [{{filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tcp2, cluster: a}}}}]}}]
"#
    )
}

fn routes(table: &[(&str, &str)]) -> String {
    routes_named("r1", table)
}

fn routes_named(name: &str, table: &[(&str, &str)]) -> String {
    let routes: Vec<String> = table
        .iter()
        .map(|(p, c)| format!("{{match: {{prefix: \"{p}\"}}, route: {{cluster: {c}}}}}"))
        .collect();
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: {name}
  virtual_hosts: [{{name: main, domains: ["*"], routes: [{}]}}]
"#,
        routes.join(", ")
    )
}

impl Side {
    async fn probe(&self, port: u16, path: &str) -> String {
        let addr = format!("127.0.0.1:{port}");
        let req = skiff_tests::client::get(path, "x.example.com");
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

    async fn probes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for path in ["/a", "/b", "/c"] {
            out.push(format!("{path}: {}", self.probe(self.port, path).await));
        }
        out.push(format!("second: {}", self.probe(self.port2, "/x").await));
        out
    }

    async fn stats(&self, names: &[&str]) -> Vec<String> {
        let all = skiff_tests::Admin::new(self.admin).stats().await;
        names
            .iter()
            .map(|n| {
                let v = all.get(*n).map_or("-", |v| v.as_str());
                let v = if v.starts_with("P0(") || v == "No recorded values" {
                    "histogram"
                } else {
                    v
                };
                format!("{n}={v}")
            })
            .collect()
    }

    /// The `version_info` of the dynamic listeners and clusters in `/config_dump`.
    async fn dump_versions(&self) -> Vec<String> {
        let text = skiff_tests::Admin::new(self.admin)
            .get("/config_dump")
            .await
            .text();
        let v: serde_json::Value = serde_json::from_str(&text).expect("config_dump JSON");
        let mut out = Vec::new();
        for c in v["configs"].as_array().into_iter().flatten() {
            let t = c["@type"].as_str().unwrap_or_default();
            if t.ends_with("ListenersConfigDump") {
                out.push(format!("lds {}", c["version_info"].as_str().unwrap_or("-")));
                // Draining listeners (`draining_state`) are left out: skiff does not show them.
                for l in c["dynamic_listeners"].as_array().into_iter().flatten() {
                    if l["active_state"].is_null() {
                        continue;
                    }
                    out.push(format!(
                        "listener {} {}",
                        l["name"].as_str().unwrap_or("-"),
                        l["active_state"]["version_info"].as_str().unwrap_or("-")
                    ));
                }
            }
            if t.ends_with("ClustersConfigDump") {
                out.push(format!("cds {}", c["version_info"].as_str().unwrap_or("-")));
                for l in c["dynamic_active_clusters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    out.push(format!(
                        "cluster {} {}",
                        l["cluster"]["name"].as_str().unwrap_or("-"),
                        l["version_info"].as_str().unwrap_or("-")
                    ));
                }
            }
            if t.ends_with("RoutesConfigDump") {
                for r in c["dynamic_route_configs"].as_array().into_iter().flatten() {
                    out.push(format!(
                        "route {} {}",
                        r["route_config"]["name"].as_str().unwrap_or("-"),
                        r["version_info"].as_str().unwrap_or("-")
                    ));
                }
            }
        }
        // The order of the entries is not part of the comparison.
        out.sort();
        out
    }
}

const STATS: &[&str] = &[
    "control_plane.connected_state",
    "control_plane.rate_limit_enforced",
    "listener_manager.lds.control_plane.connected_state",
    "cluster_manager.cds.control_plane.connected_state",
    "http.ingress.rds.r1.control_plane.connected_state",
    "cluster.b.control_plane.connected_state",
    "listener_manager.lds.update_success",
    "listener_manager.lds.update_rejected",
    "cluster_manager.cds.update_success",
    "cluster_manager.cds.update_rejected",
    "http.ingress.rds.r1.update_success",
    "http.ingress.rds.r1.update_rejected",
    "cluster.b.update_success",
    "listener_manager.listener_added",
    "listener_manager.listener_removed",
    "listener_manager.total_listeners_active",
    "cluster_manager.cluster_added",
    "cluster_manager.cluster_removed",
    "cluster_manager.active_clusters",
    // Histograms: whether they exist (their values depend on timing).
    "listener_manager.lds.update_duration",
    "cluster_manager.cds.update_duration",
    "http.ingress.rds.r1.update_duration",
];

/// Envoy and skiff of one mode.
struct Pair {
    mode: Mode,
    sides: [Side; 2],
}

/// Sets the same resources for every side (each with its own ports).
async fn set_all(
    cp: &mut ControlPlane,
    pairs: &[Pair],
    t: &str,
    v: &str,
    yaml: impl Fn(&Side) -> String,
) {
    for p in pairs {
        for s in &p.sides {
            cp.set(&s.node, t, v, &yaml(s)).await;
        }
    }
}

/// Waits for every side's answer to `t` at version `v` and checks that both proxies of a
/// pair answered alike; returns Envoy's answers.
async fn answers(cp: &ControlPlane, pairs: &[Pair], t: &str, v: &str) -> Vec<Answer> {
    let mut out = Vec::new();
    for p in pairs {
        let envoy = cp.answer(&p.sides[0].node, t, v).await;
        let skiff = cp.answer(&p.sides[1].node, t, v).await;
        assert_eq!(
            (skiff.error.is_some(), skiff.code, &skiff.version),
            (envoy.error.is_some(), envoy.code, &envoy.version),
            "{t} {v} ({:?}): skiff answered {skiff:?}, Envoy {envoy:?}",
            p.mode
        );
        out.push(envoy);
    }
    out
}

/// After a step: the same probes, stats and `/config_dump` versions on both proxies.
async fn check(pairs: &[Pair], what: &str, want: &[&str]) {
    // Let warming finish and the new configuration reach the workers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for p in pairs {
        let [envoy, skiff] = &p.sides;
        let e = (
            envoy.probes().await,
            envoy.stats(STATS).await,
            envoy.dump_versions().await,
        );
        let s = (
            skiff.probes().await,
            skiff.stats(STATS).await,
            skiff.dump_versions().await,
        );
        assert_eq!(
            s, e,
            "after '{what}' ({:?}): skiff (left) and Envoy (right) differ",
            p.mode
        );
        assert_eq!(
            e.0, want,
            "after '{what}' ({:?}): unexpected probe results",
            p.mode
        );
    }
}

async fn start_side(kind: Kind, mode: Mode, cp: &ControlPlane) -> Side {
    let node = format!("{}-{mode:?}", kind.name());
    let admin = free_port();
    let (rds_source, eds_source) = match mode {
        Mode::PerType => (api_source("DELTA_GRPC"), api_source("GRPC")),
        _ => (ADS_SOURCE.to_string(), ADS_SOURCE.to_string()),
    };
    let mut side = Side {
        node,
        proxy: None,
        admin,
        port: free_port(),
        port2: free_port(),
        rds_source,
        eds_source,
    };
    let yaml = bootstrap(&side.node, admin, mode, cp);
    side.proxy = Some(ProxyProcess::spawn(
        kind,
        &yaml,
        &["--concurrency", "1", "--drain-time-s", "1"],
        admin,
    ));
    side
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_sotw_and_delta_drive_skiff_as_they_drive_envoy() {
    run_for(Duration::from_secs(120), async {
        let ups = Ups {
            a: EchoUpstream::start("A").await,
            b: EchoUpstream::start("B").await,
            c: EchoUpstream::start("C").await,
        };
        let dir = scratch_dir("xds");
        let uds = dir.join("xds.sock");
        let mut cp = ControlPlane::start(CP, 0, &uds).await;
        let cp_port = cp.port;
        let mut pairs = Vec::new();
        for mode in [Mode::Sotw, Mode::Delta, Mode::PerType] {
            pairs.push(Pair {
                mode,
                sides: [
                    start_side(Kind::Envoy, mode, &cp).await,
                    start_side(Kind::Skiff, mode, &cp).await,
                ],
            });
        }
        let (pa, pb, pc) = (ups.a.port(), ups.b.port(), ups.c.port());
        let clusters_v1 =
            move |s: &Side| format!("{}{}", static_cluster("a", pa), eds_cluster(s, "b"));

        // 1. Initial resources: both become ready once the first round has arrived.
        set_all(&mut cp, &pairs, CLUSTER, "1", clusters_v1).await;
        set_all(&mut cp, &pairs, ENDPOINT, "1", |_| assignment("b", pb)).await;
        set_all(&mut cp, &pairs, LISTENER, "1", |s| listeners(s, false)).await;
        set_all(&mut cp, &pairs, ROUTE, "1", |_| {
            routes(&[("/a", "a"), ("/b", "b")])
        })
        .await;
        for p in &mut pairs {
            for s in &mut p.sides {
                if let Some(proxy) = s.proxy.as_mut() {
                    proxy.wait_ready(Duration::from_secs(15)).await;
                }
            }
        }
        answers(&cp, &pairs, ROUTE, "1").await;
        // The node goes on the first request of each stream only.
        for p in &pairs {
            for s in &p.sides {
                let reqs = cp.requests(&s.node);
                let mut seen = std::collections::BTreeSet::new();
                for r in &reqs {
                    let first = seen.insert(r["stream"].as_u64());
                    assert_eq!(r["has_node"] == true, first, "{}: {reqs:?}", s.node);
                }
            }
        }
        check(
            &pairs,
            "initial",
            &["/a: 200 A", "/b: 200 B", "/c: 404 -", "second: refused"],
        )
        .await;

        // 2. A route change.
        set_all(&mut cp, &pairs, ROUTE, "2", |_| {
            routes(&[("/a", "b"), ("/b", "b")])
        })
        .await;
        answers(&cp, &pairs, ROUTE, "2").await;
        check(
            &pairs,
            "route change",
            &["/a: 200 B", "/b: 200 B", "/c: 404 -", "second: refused"],
        )
        .await;

        // 3. An endpoint change.
        set_all(&mut cp, &pairs, ENDPOINT, "2", |_| assignment("b", pc)).await;
        answers(&cp, &pairs, ENDPOINT, "2").await;
        check(
            &pairs,
            "endpoint change",
            &["/a: 200 C", "/b: 200 C", "/c: 404 -", "second: refused"],
        )
        .await;

        // 4. A cluster and a listener added.
        let clusters_v3 = move |s: &Side| format!("{}{}", clusters_v1(s), static_cluster("c", pa));
        set_all(&mut cp, &pairs, CLUSTER, "3", clusters_v3).await;
        answers(&cp, &pairs, CLUSTER, "3").await;
        set_all(&mut cp, &pairs, ROUTE, "3", |_| {
            routes(&[("/a", "a"), ("/b", "b"), ("/c", "c")])
        })
        .await;
        answers(&cp, &pairs, ROUTE, "3").await;
        set_all(&mut cp, &pairs, LISTENER, "2", |s| listeners(s, true)).await;
        answers(&cp, &pairs, LISTENER, "2").await;
        check(
            &pairs,
            "cluster and listener added",
            &["/a: 200 A", "/b: 200 C", "/c: 200 A", "second: 200 A"],
        )
        .await;

        // 4b. A listener moved onto the address of another: NACKed, its version in force stays.
        set_all(&mut cp, &pairs, LISTENER, "2b", |s| {
            format!(
                "{}{}",
                tcp_listener("main", s.port2),
                tcp_listener("second", s.port2)
            )
        })
        .await;
        for a in answers(&cp, &pairs, LISTENER, "2b").await {
            assert!(
                a.error.is_some(),
                "Envoy accepted two listeners on one address: {a:?}"
            );
        }
        check(
            &pairs,
            "listener moved onto another's address",
            &["/a: 200 A", "/b: 200 C", "/c: 200 A", "second: 200 A"],
        )
        .await;

        // 5. A bad cluster next to a good change: NACKed by both; the good change applies.
        let clusters_v4 = move |s: &Side| {
            format!(
                "{}{}{}",
                clusters_v1(s),
                static_cluster("c", pb),
                BAD_CLUSTER
            )
        };
        set_all(&mut cp, &pairs, CLUSTER, "4", clusters_v4).await;
        for a in answers(&cp, &pairs, CLUSTER, "4").await {
            assert!(a.error.is_some(), "Envoy accepted the bad cluster: {a:?}");
        }
        check(
            &pairs,
            "bad cluster",
            &["/a: 200 A", "/b: 200 C", "/c: 200 B", "second: 200 A"],
        )
        .await;

        // 5b. A route configuration both refuse (a domain twice): NACKed, the routes in force
        // stay.
        set_all(&mut cp, &pairs, ROUTE, "4", |_| {
            r#"- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: r1
  virtual_hosts:
  - {name: one, domains: [x.example.com], routes: [{match: {prefix: /}, route: {cluster: a}}]}
  - {name: two, domains: [x.example.com], routes: [{match: {prefix: /}, route: {cluster: b}}]}
"#
            .to_string()
        })
        .await;
        for a in answers(&cp, &pairs, ROUTE, "4").await {
            assert!(a.error.is_some(), "Envoy accepted the bad routes: {a:?}");
        }
        check(
            &pairs,
            "bad route configuration",
            &["/a: 200 A", "/b: 200 C", "/c: 200 B", "second: 200 A"],
        )
        .await;

        // 6. A cluster and a listener removed.
        set_all(&mut cp, &pairs, CLUSTER, "5", clusters_v1).await;
        answers(&cp, &pairs, CLUSTER, "5").await;
        set_all(&mut cp, &pairs, LISTENER, "3", |s| listeners(s, false)).await;
        answers(&cp, &pairs, LISTENER, "3").await;
        check(
            &pairs,
            "cluster and listener removed",
            &["/a: 200 A", "/b: 200 C", "/c: 503 -", "second: refused"],
        )
        .await;

        // 7. The listener takes another route configuration: r2 is subscribed, r1 is not any
        // more (in delta an unsubscribe, in the state of the world a request without it, and
        // per type its own stream closed).
        let r1_r2 = |_: &Side| {
            format!(
                "{}{}",
                routes(&[("/a", "a"), ("/b", "b"), ("/c", "c")]),
                routes_named("r2", &[("/a", "b")])
            )
        };
        set_all(&mut cp, &pairs, ROUTE, "5", r1_r2).await;
        set_all(&mut cp, &pairs, LISTENER, "4", |s| {
            listeners_for(s, false, "r2")
        })
        .await;
        answers(&cp, &pairs, LISTENER, "4").await;
        answers(&cp, &pairs, ROUTE, "5").await;
        check(
            &pairs,
            "route configuration renamed",
            &["/a: 200 C", "/b: 404 -", "/c: 404 -", "second: refused"],
        )
        .await;
        // The old listener drains for a second and holds r1 until then.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        check(
            &pairs,
            "the old listener drained",
            &["/a: 200 C", "/b: 404 -", "/c: 404 -", "second: refused"],
        )
        .await;
        for p in &pairs {
            for s in &p.sides {
                let routes: Vec<serde_json::Value> = cp
                    .requests(&s.node)
                    .into_iter()
                    .filter(|r| r["type_url"] == ROUTE)
                    .collect();
                let dropped = match p.mode {
                    Mode::Sotw => routes
                        .last()
                        .is_some_and(|r| r["names"] == serde_json::json!(["r2"])),
                    Mode::Delta => routes
                        .iter()
                        .any(|r| r["unsubscribe"] == serde_json::json!(["r1"])),
                    Mode::PerType => {
                        let r1_stream = routes
                            .iter()
                            .find(|r| r["names"] == serde_json::json!(["r1"]))
                            .map(|r| r["stream"].clone());
                        cp.events().iter().any(|e| {
                            e["event"] == "closed" && Some(&e["stream"]) == r1_stream.as_ref()
                        })
                    }
                };
                assert!(dropped, "{}: r1 still subscribed: {routes:?}", s.node);
            }
        }

        // 8. The control plane restarts: both reconnect and subscribe again, with what they
        // have; the configuration in force stays meanwhile.
        cp.stop().await;
        check(
            &pairs,
            "control plane down",
            &["/a: 200 C", "/b: 404 -", "/c: 404 -", "second: refused"],
        )
        .await;
        let mut cp = ControlPlane::start(CP, cp_port, &uds).await;
        set_all(&mut cp, &pairs, CLUSTER, "5", clusters_v1).await;
        set_all(&mut cp, &pairs, ENDPOINT, "2", |_| assignment("b", pc)).await;
        set_all(&mut cp, &pairs, LISTENER, "4", |s| {
            listeners_for(s, false, "r2")
        })
        .await;
        set_all(&mut cp, &pairs, ROUTE, "6", |_| {
            routes_named("r2", &[("/a", "b"), ("/b", "a")])
        })
        .await;
        answers(&cp, &pairs, ROUTE, "6").await;
        // Every stream is back (each retries after its own jittered backoff).
        for p in &pairs {
            for s in &p.sides {
                for t in [CLUSTER, LISTENER, ENDPOINT] {
                    cp.wait(Duration::from_secs(15), |e| {
                        e["event"] == "request"
                            && e["node"] == s.node.as_str()
                            && e["type_url"] == t
                    })
                    .await;
                }
            }
        }
        for p in &pairs {
            for s in &p.sides {
                let first = cp
                    .requests(&s.node)
                    .into_iter()
                    .find(|r| r["type_url"] == CLUSTER)
                    .expect("a CDS request after the restart");
                if p.mode != Mode::Sotw {
                    assert!(
                        first["initial_versions"]
                            .as_object()
                            .is_some_and(|m| !m.is_empty()),
                        "{}: {first}",
                        s.node
                    );
                } else {
                    assert_eq!(first["version"], "5", "{}: {first}", s.node);
                }
            }
        }
        check(
            &pairs,
            "after the restart",
            &["/a: 200 C", "/b: 200 A", "/c: 404 -", "second: refused"],
        )
        .await;
        cp.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_control_plane_delays_readiness_until_initial_fetch_timeout_as_in_envoy() {
    run_for(Duration::from_secs(60), async {
        let up = EchoUpstream::start("A").await;
        let dir = scratch_dir("xds-timeout");
        let mut cp = ControlPlane::start(CP, 0, &dir.join("xds.sock")).await;
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let node = format!("{}-quiet", kind.name());
            let admin = free_port();
            let yaml = bootstrap_with(&node, admin, Mode::Sotw, &cp, ", initial_fetch_timeout: 1s");
            let proxy = ProxyProcess::spawn(kind, &yaml, &["--concurrency", "1"], admin);
            sides.push(Side {
                node,
                proxy: Some(proxy),
                admin,
                port: free_port(),
                port2: free_port(),
                rds_source: ADS_SOURCE.to_string(),
                eds_source: ADS_SOURCE.to_string(),
            });
        }
        // Nothing is served: neither is ready before the timeout, both are after it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for s in &sides {
            let ready = skiff_tests::Admin::new(s.admin).try_get("/ready").await;
            assert!(
                ready.as_ref().map_or(true, |r| r.status == 503),
                "{}: ready before the initial fetch timed out",
                s.node
            );
        }
        for s in &mut sides {
            if let Some(p) = s.proxy.as_mut() {
                p.wait_ready(Duration::from_secs(10)).await;
            }
        }
        let names = [
            "cluster_manager.cds.init_fetch_timeout",
            "listener_manager.lds.init_fetch_timeout",
            "control_plane.connected_state",
            "listener_manager.total_listeners_active",
        ];
        let envoy = sides[0].stats(&names).await;
        let skiff = sides[1].stats(&names).await;
        assert_eq!(skiff, envoy, "skiff (left) and Envoy (right) differ");
        // Resources served late still apply.
        for s in &sides {
            cp.set(&s.node, CLUSTER, "1", &static_cluster("a", up.port()))
                .await;
            cp.set(&s.node, ROUTE, "1", &routes(&[("/", "a")])).await;
            cp.set(&s.node, LISTENER, "1", &listeners(s, false)).await;
        }
        for s in &sides {
            cp.answer(&s.node, LISTENER, "1").await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for s in &sides {
            assert_eq!(s.probe(s.port, "/a").await, "200 A", "{}", s.node);
        }
        cp.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}
