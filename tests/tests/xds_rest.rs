//! REST xDS (`api_type: REST`), side by side with Envoy 1.40: the project's control plane
//! (`xds-control-plane --rest`) answers JSON `DiscoveryRequest`s POSTed over HTTP/1.1 with the
//! node's resources, or `304` when the request already has the current version. Envoy and
//! skiff poll it for listeners, clusters, a route configuration and an endpoint assignment
//! (each its own subscription) through the same steps: the first resources, a route change,
//! a cluster both refuse, a server answering `503`. After each, both must route the same
//! probes the same way, ask with the same versions, names and node, and count alike.

use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::xds::{ControlPlane, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use skiff_tests::{free_port, run_for, scratch_dir};

const CP: &str = env!("CARGO_BIN_EXE_xds-control-plane");

/// Polls every 200-400 ms.
fn rest_source() -> &'static str {
    "{api_config_source: {api_type: REST, transport_api_version: V3, cluster_names: [xds], refresh_delay: 0.2s, request_timeout: 1s}, resource_api_version: V3}"
}

fn bootstrap(node: &str, admin: u16, cp: &ControlPlane) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
node: {{id: {node}, cluster: rest-test, metadata: {{team: mesh}}}}
dynamic_resources:
  lds_config: {src}
  cds_config: {src}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#,
        src = rest_source(),
        port = cp.rest_port,
    )
}

/// Clusters `a` and `c` (static) and `b` (EDS), and with `bad` one both proxies refuse.
fn clusters(bad: bool, a: u16, c: u16) -> String {
    let mut out = String::new();
    for (name, port) in [("a", a), ("c", c)] {
        out.push_str(&format!(
            r#"- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: {name}
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: {name}
    endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#
        ));
    }
    out.push_str(&format!(
        r#"- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: b
  type: EDS
  connect_timeout: 1s
  eds_cluster_config: {{eds_config: {}}}
"#,
        rest_source()
    ));
    if bad {
        out.push_str(
            r#"- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: bad
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: bad
    endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: not-an-ip, port_value: 80}}}}]}]
"#,
        );
    }
    out
}

fn listener(port: u16) -> String {
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
        rds: {{route_config_name: r1, config_source: {src}}}
        http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
"#,
        src = rest_source()
    )
}

fn routes(table: &[(&str, &str)]) -> String {
    let routes: Vec<String> = table
        .iter()
        .map(|(p, c)| format!("{{match: {{prefix: \"{p}\"}}, route: {{cluster: {c}}}}}"))
        .collect();
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: r1
  virtual_hosts: [{{name: main, domains: ["*"], routes: [{}]}}]
"#,
        routes.join(", ")
    )
}

fn assignment(port: u16) -> String {
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: b
  endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#
    )
}

struct Side {
    node: String,
    _proxy: ProxyProcess,
    admin: u16,
    port: u16,
}

impl Side {
    async fn probe(&self, path: &str) -> String {
        let addr = format!("127.0.0.1:{}", self.port);
        let req = skiff_tests::client::get(path, "x.example.com");
        let once = skiff_tests::client::http1_once(&addr, req);
        match tokio::time::timeout(Duration::from_secs(3), once).await {
            Err(_) => "timeout".into(),
            Ok(Ok(r)) => format!("{} {}", r.status, r.header("x-upstream").unwrap_or("-")),
            Ok(Err(e)) if e.contains("refused") => "refused".into(),
            Ok(Err(e)) => format!("error: {e}"),
        }
    }

    async fn probes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in ["/a", "/b", "/c"] {
            out.push(format!("{p}: {}", self.probe(p).await));
        }
        out
    }

    async fn stat(&self, name: &str) -> u64 {
        skiff_tests::Admin::new(self.admin)
            .stats()
            .await
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the probes give `want`.
    async fn until_probes(&self, want: &[&str], what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.probes().await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} after '{what}': probes {got:?}, want {want:?}",
                self.node
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `stat` has grown past `from`.
    async fn until_stat_above(&self, stat: &str, from: u64, what: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.stat(stat).await;
            if v > from {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{} after '{what}': {stat} stayed at {v}",
                self.node
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the requests of `node` for `type_url` asked since event `from`: each distinct
/// (path, version, names, has_node), in order.
fn asked(cp: &ControlPlane, node: &str, type_url: &str, from: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in cp.events().iter().skip(from) {
        if e["event"] != "request" || e["rest"] != Value::Bool(true) {
            continue;
        }
        if e["node"] != node || e["type_url"] != type_url {
            continue;
        }
        let line = format!(
            "{} version={} names={} node={}",
            e["path"].as_str().unwrap_or("-"),
            e["version"].as_str().unwrap_or("-"),
            e["names"],
            e["has_node"]
        );
        if out.last() != Some(&line) {
            out.push(line);
        }
    }
    out
}

const SUBSCRIPTIONS: &[(&str, &str)] = &[
    (LISTENER, "listener_manager.lds."),
    (CLUSTER, "cluster_manager.cds."),
    (ROUTE, "http.ingress.rds.r1."),
    (ENDPOINT, "cluster.b."),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_polling_drives_skiff_as_it_drives_envoy() {
    run_for(Duration::from_secs(120), async {
        let (a, b, c) = (
            EchoUpstream::start("A").await,
            EchoUpstream::start("B").await,
            EchoUpstream::start("C").await,
        );
        let dir = scratch_dir("xds-rest");
        let mut cp = ControlPlane::start(CP, 0, &dir.join("cp.sock")).await;
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let node = format!("{}-rest", kind.name());
            let admin = free_port();
            let proxy = ProxyProcess::spawn(
                kind,
                &bootstrap(&node, admin, &cp),
                &["--concurrency", "1", "--drain-time-s", "1"],
                admin,
            );
            sides.push(Side {
                node,
                _proxy: proxy,
                admin,
                port: free_port(),
            });
        }

        // 1. The first resources.
        for s in &sides {
            cp.set(&s.node, CLUSTER, "1", &clusters(false, a.port(), c.port()))
                .await;
            cp.set(&s.node, ENDPOINT, "1", &assignment(b.port())).await;
            cp.set(&s.node, LISTENER, "1", &listener(s.port)).await;
            cp.set(&s.node, ROUTE, "1", &routes(&[("/a", "a"), ("/b", "b")]))
                .await;
        }
        let first = ["/a: 200 A", "/b: 200 B", "/c: 404 -"];
        for s in &sides {
            s.until_probes(&first, "first resources").await;
        }
        // Each subscription asked with the node, the names it needs (none for listeners and
        // clusters) and then the version it took.
        for (t, _) in SUBSCRIPTIONS {
            let envoy = asked(&cp, &sides[0].node, t, 0);
            let skiff = asked(&cp, &sides[1].node, t, 0);
            assert_eq!(
                skiff.first(),
                envoy.first(),
                "{t}: first request: skiff {skiff:?}, Envoy {envoy:?}"
            );
            for s in &sides {
                let deadline = Instant::now() + Duration::from_secs(5);
                while !asked(&cp, &s.node, t, 0)
                    .iter()
                    .any(|l| l.contains("version=1 "))
                {
                    assert!(
                        Instant::now() < deadline,
                        "{t}: {} never asked with version 1: {:?}",
                        s.node,
                        asked(&cp, &s.node, t, 0)
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }

        // 2. A route change reaches both at the next poll.
        let mark = cp.events().len();
        for s in &sides {
            cp.set(
                &s.node,
                ROUTE,
                "2",
                &routes(&[("/a", "a"), ("/b", "b"), ("/c", "c")]),
            )
            .await;
        }
        let second = ["/a: 200 A", "/b: 200 B", "/c: 200 C"];
        for s in &sides {
            s.until_probes(&second, "route change").await;
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        let envoy = asked(&cp, &sides[0].node, ROUTE, mark);
        let skiff = asked(&cp, &sides[1].node, ROUTE, mark);
        assert_eq!(skiff, envoy, "route requests after the change");

        // 3. A cluster both refuse: the good ones stay, the version asked for stays 1.
        let mark = cp.events().len();
        let mut before = Vec::new();
        for s in &sides {
            before.push(s.stat("cluster_manager.cds.update_rejected").await);
        }
        for s in &sides {
            cp.set(&s.node, CLUSTER, "2", &clusters(true, a.port(), c.port()))
                .await;
        }
        for (s, from) in sides.iter().zip(&before) {
            s.until_stat_above("cluster_manager.cds.update_rejected", *from, "bad cluster")
                .await;
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        let envoy = asked(&cp, &sides[0].node, CLUSTER, mark);
        let skiff = asked(&cp, &sides[1].node, CLUSTER, mark);
        assert_eq!(skiff, envoy, "cluster requests after a refused update");
        assert!(
            envoy.iter().all(|l| l.contains("version=1 ")),
            "Envoy kept asking with version 1: {envoy:?}"
        );
        for s in &sides {
            assert_eq!(
                s.probes().await,
                second,
                "{}: traffic after the refusal",
                s.node
            );
        }

        // 4. The server fails: counted as update_failure, nothing changes.
        let mut before = Vec::new();
        for s in &sides {
            before.push(s.stat("listener_manager.lds.update_failure").await);
        }
        cp.rest_status(503).await;
        for (s, from) in sides.iter().zip(&before) {
            s.until_stat_above("listener_manager.lds.update_failure", *from, "503")
                .await;
        }
        for s in &sides {
            assert_eq!(
                s.probes().await,
                second,
                "{}: traffic while failing",
                s.node
            );
        }
        cp.rest_status(0).await;

        // The same stats exist on both, each subscription having succeeded and counted its
        // attempts.
        for (_, scope) in SUBSCRIPTIONS {
            for s in &sides {
                let ok = s.stat(&format!("{scope}update_success")).await;
                let attempts = s.stat(&format!("{scope}update_attempt")).await;
                assert!(
                    ok >= 1 && attempts >= ok,
                    "{}: {scope}update_success={ok} update_attempt={attempts}",
                    s.node
                );
            }
        }
        let versions: Vec<Vec<u64>> = {
            let mut out = Vec::new();
            for s in &sides {
                let mut v = Vec::new();
                for (_, scope) in SUBSCRIPTIONS {
                    v.push(s.stat(&format!("{scope}version")).await);
                }
                out.push(v);
            }
            out
        };
        assert_eq!(versions[1], versions[0], "version gauges (skiff, Envoy)");
        cp.stop().await;
    })
    .await;
}
