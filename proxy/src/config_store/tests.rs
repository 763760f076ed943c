//! The ConfigStore without sockets or workers: updates from files, warming, timeouts, in-place
//! listener updates, rejected updates and the stats of removed clusters.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;
use crate::stats::{StatValue, Store};

struct Fixture {
    dir: PathBuf,
    store: ConfigStore,
    stats: Arc<Store>,
}

fn put(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

fn listener(version: &str, chains: &[&str], rds: bool, dir: &Path) -> String {
    let hcm = if rds {
        format!(
            r#"{{name: hcm, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: h, rds: {{route_config_name: r, config_source: {{path_config_source: {{path: {}/rds.yaml}}, initial_fetch_timeout: 5s}}}}, http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]}}}}"#,
            dir.display()
        )
    } else {
        String::new()
    };
    let mut fcs: Vec<String> = chains
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                r#"{{filter_chain_match: {{destination_port: {}}}, filters: [{{name: t, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {p}, cluster: c}}}}]}}"#,
                8000 + i
            )
        })
        .collect();
    if rds {
        fcs.push(format!("{{filters: [{hcm}]}}"));
    }
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: l
  address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}
  filter_chains: [{}]
"#,
        fcs.join(", ")
    )
}

fn clusters(version: &str, names: &[&str]) -> String {
    let mut out = format!("version_info: \"{version}\"\nresources:\n");
    for n in names {
        out.push_str(&format!(
            "- {{\"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster, name: {n}, type: STATIC}}\n"
        ));
    }
    out
}

fn routes(version: &str) -> String {
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: r
  virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: c}}}}]}}]
"#
    )
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("skiff-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let boot = format!(
            "dynamic_resources: {{lds_config: {{path_config_source: {{path: {d}/lds.yaml}}}}, cds_config: {{path_config_source: {{path: {d}/cds.yaml}}}}}}",
            d = dir.display()
        );
        let loaded = crate::config::load_text(&boot).expect("bootstrap");
        let stats = Arc::new(Store::new(1));
        let (tx, _rx) = mpsc::unbounded_channel();
        let store = ConfigStore::new(&loaded, stats.clone(), Duration::from_secs(10), tx);
        Fixture { dir, store, stats }
    }

    fn stat(&self, name: &str) -> i64 {
        match self.stats.snapshot().get(name) {
            Some(StatValue::Counter(c)) => *c as i64,
            Some(StatValue::Gauge(g)) => *g,
            None => -1,
        }
    }

    fn refresh(&mut self) {
        let src = self.store.lds.as_ref().map(|s| s.source.clone());
        if let Some(src) = src {
            self.store.on_file_event(&FileEvent { source: src });
        }
    }

    fn refresh_cds(&mut self) {
        let src = self.store.cds.as_ref().map(|s| s.source.clone());
        if let Some(src) = src {
            self.store.on_file_event(&FileEvent { source: src });
        }
    }

    fn refresh_rds(&mut self) {
        let src = self.store.rds.values().next().map(|r| r.sub.source.clone());
        if let Some(src) = src {
            self.store.on_file_event(&FileEvent { source: src });
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_modified_listener_warms_while_the_version_in_force_serves_until_its_routes_arrive() {
    let mut f = Fixture::new("warm");
    put(&f.dir, "cds.yaml", &clusters("1", &["c"]));
    let dir = f.dir.clone();
    put(&f.dir, "lds.yaml", &listener("1", &["a"], true, &dir));
    put(&f.dir, "rds.yaml", &routes("1"));
    f.store.start();
    assert!(!f.store.initializing());
    let first = f.store.published().load().listeners[0].clone();
    // As if its routes had not come yet (a gRPC source that has not answered).
    f.store.rds.get_mut("r").expect("rds").sub.ready = false;
    put(&f.dir, "lds.yaml", &listener("2", &["b"], true, &dir));
    f.refresh();
    assert_eq!(f.stat("listener_manager.total_listeners_warming"), 1);
    assert_eq!(f.stat("listener_manager.total_listeners_active"), 1);
    assert!(
        Arc::ptr_eq(&first, &f.store.published().load().listeners[0]),
        "the version in force keeps serving while the new one warms"
    );
    let dump = &f.store.published().load().dump;
    assert!(dump.listeners[0].warming.is_some() && dump.listeners[0].active.is_some());
    // The routes arrive: the new version goes into force.
    put(&f.dir, "rds.yaml", &routes("2"));
    f.refresh_rds();
    assert_eq!(f.stat("listener_manager.total_listeners_warming"), 0);
    assert!(!Arc::ptr_eq(
        &first,
        &f.store.published().load().listeners[0]
    ));
    assert_eq!(f.stat("http.h.rds.r.update_success"), 2);
}

#[test]
fn an_initial_fetch_timeout_puts_the_listener_in_force_without_its_routes() {
    let mut f = Fixture::new("timeout");
    put(&f.dir, "cds.yaml", &clusters("1", &["c"]));
    let dir = f.dir.clone();
    put(&f.dir, "lds.yaml", &listener("1", &["a"], true, &dir));
    f.store.start();
    // A missing file is a failure that ends the initial fetch, as Envoy's filesystem
    // subscription does.
    assert_eq!(f.stat("http.h.rds.r.update_failure"), 1);
    assert!(!f.store.initializing());
    assert_eq!(f.store.published().load().listeners.len(), 1);
    assert!(f.store.published().load().routes.is_empty());
    // A subscription that never answers: the deadline passes.
    let mut g = Fixture::new("timeout2");
    put(&g.dir, "cds.yaml", &clusters("1", &["c"]));
    g.store
        .cds
        .as_mut()
        .expect("cds")
        .source
        .initial_fetch_timeout = Some(Duration::from_secs(5));
    g.store.lds.as_mut().expect("lds").ready = false;
    let lds = g.store.lds.take();
    g.store.start();
    g.store.lds = lds;
    assert!(g.store.initializing(), "LDS never answered");
    let due = g.store.next_deadline().expect("a deadline");
    assert!(due <= Instant::now() + Duration::from_secs(16));
    g.store.on_timer(Instant::now() + Duration::from_secs(16));
    assert!(!g.store.initializing());
    assert_eq!(g.stat("listener_manager.lds.init_fetch_timeout"), 1);
}

#[test]
fn a_rejected_update_changes_nothing_and_an_unchanged_one_is_a_no_op() {
    let mut f = Fixture::new("reject");
    put(&f.dir, "cds.yaml", &clusters("1", &["c"]));
    let dir = f.dir.clone();
    put(&f.dir, "lds.yaml", &listener("1", &["a"], false, &dir));
    f.store.start();
    let before = f.store.published().load().listeners[0].clone();
    // A tcp_proxy to a cluster that does not exist is fine (Envoy checks it at connect time);
    // an unsupported field is not.
    put(
        &f.dir,
        "lds.yaml",
        &listener("2", &["a"], false, &dir)
            .replace("name: l\n", "name: l\n  enable_reuse_port: false\n"),
    );
    f.refresh();
    assert_eq!(f.stat("listener_manager.lds.update_rejected"), 1);
    let after = f.store.published().load().listeners[0].clone();
    assert!(Arc::ptr_eq(&before, &after), "nothing changed");
    // The same listener again, under a new version: counted a success, nothing replaced.
    put(&f.dir, "lds.yaml", &listener("3", &["a"], false, &dir));
    f.refresh();
    assert_eq!(f.stat("listener_manager.lds.update_success"), 2);
    assert_eq!(f.stat("listener_manager.listener_modified"), 0);
    assert!(Arc::ptr_eq(
        &before,
        &f.store.published().load().listeners[0]
    ));
    // As Envoy's LDS, `/config_dump` keeps the version of the last update that changed
    // something.
    assert_eq!(f.store.published().load().dump.lds_version, "1");
}

#[test]
fn a_change_to_filter_chains_only_is_in_place_and_keeps_the_unchanged_chains() {
    let mut f = Fixture::new("inplace");
    put(&f.dir, "cds.yaml", &clusters("1", &["c"]));
    let dir = f.dir.clone();
    put(&f.dir, "lds.yaml", &listener("1", &["a", "b"], false, &dir));
    f.store.start();
    let old = f.store.published().load().listeners[0].clone();
    put(
        &f.dir,
        "lds.yaml",
        &listener("2", &["a", "changed"], false, &dir),
    );
    f.refresh();
    let new = f.store.published().load().listeners[0].clone();
    assert!(!Arc::ptr_eq(&old, &new));
    assert!(
        Arc::ptr_eq(&old.filter_chains[0].1, &new.filter_chains[0].1),
        "chain a kept"
    );
    assert!(!Arc::ptr_eq(
        &old.filter_chains[1].1,
        &new.filter_chains[1].1
    ));
    assert_eq!(f.stat("listener_manager.listener_in_place_updated"), 1);
    assert_eq!(f.stat("listener_manager.total_filter_chains_draining"), 1);
    assert_eq!(f.stat("listener_manager.total_listeners_draining"), 0);
    // A listener-level change is not in place: the whole listener drains.
    put(
        &f.dir,
        "lds.yaml",
        &listener("3", &["a", "changed"], false, &dir).replace(
            "name: l\n",
            "name: l\n  per_connection_buffer_limit_bytes: 4096\n",
        ),
    );
    f.refresh();
    let newer = f.store.published().load().listeners[0].clone();
    assert!(!Arc::ptr_eq(
        &new.filter_chains[0].1,
        &newer.filter_chains[0].1
    ));
    assert_eq!(f.stat("listener_manager.listener_in_place_updated"), 1);
    assert_eq!(f.stat("listener_manager.total_listeners_draining"), 1);
    // Drains end after --drain-time-s.
    f.store.on_timer(Instant::now() + Duration::from_secs(11));
    assert_eq!(f.stat("listener_manager.total_listeners_draining"), 0);
    assert_eq!(f.stat("listener_manager.total_filter_chains_draining"), 0);
}

#[test]
fn a_removed_cluster_leaves_the_snapshot_and_its_stats_go_once_unused() {
    let mut f = Fixture::new("prune");
    put(&f.dir, "cds.yaml", &clusters("1", &["c", "gone"]));
    put(&f.dir, "lds.yaml", "version_info: '1'\nresources: []\n");
    f.store.start();
    assert_eq!(f.stat("cluster_manager.active_clusters"), 2);
    let held = f.stats.worker(0).counter("cluster.gone.upstream_rq_total");
    held.inc();
    put(&f.dir, "cds.yaml", &clusters("2", &["c"]));
    f.refresh_cds();
    assert_eq!(f.stat("cluster_manager.cluster_removed"), 1);
    assert!(!f.store.published().load().clusters.contains_key("gone"));
    f.store.on_timer(Instant::now());
    assert_eq!(
        f.stat("cluster.gone.upstream_rq_total"),
        1,
        "still held by a stream"
    );
    drop(held);
    f.store.on_timer(Instant::now());
    assert_eq!(
        f.stat("cluster.gone.upstream_rq_total"),
        -1,
        "gone from /stats"
    );
}
