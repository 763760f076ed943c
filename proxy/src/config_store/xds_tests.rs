//! The ConfigStore fed by an ADS stream: responses applied resource by resource as Envoy's
//! LDS and CDS do, delta removals, named RDS resources, and the NACK messages.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::stats::{StatValue, Store};

const BOOTSTRAP: &str = r#"
node: {id: n, cluster: c}
dynamic_resources:
  ads_config: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}
  lds_config: {ads: {}, resource_api_version: V3}
  cds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    load_assignment: {cluster_name: xds, endpoints: [{lb_endpoints: [{endpoint: {address: {pipe: {path: /tmp/skiff-xds-test.sock}}}}]}]}
"#;

fn store() -> (ConfigStore, Arc<Store>) {
    let loaded = crate::config::load_text(BOOTSTRAP).expect("bootstrap");
    assert_eq!(
        loaded.model.xds_targets.get("xds"),
        Some(&GrpcTarget::Unix("/tmp/skiff-xds-test.sock".into()))
    );
    let stats = Arc::new(Store::new(1));
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut s = ConfigStore::new(&loaded, stats.clone(), Duration::from_secs(1), tx);
    s.start();
    (s, stats)
}

fn stat(stats: &Store, name: &str) -> i64 {
    match stats.snapshot().get(name) {
        Some(StatValue::Counter(c)) => *c as i64,
        Some(StatValue::Gauge(g)) => *g,
        None => -1,
    }
}

/// Binary resources from a YAML list of `@type` resources.
fn anys(yaml: &str) -> Vec<Any> {
    let text = format!("resources:\n{yaml}");
    let desc = crate::config::proto::message("envoy.service.discovery.v3.DiscoveryResponse")
        .expect("descriptor");
    let (msg, _) = crate::config::proto::decode_text_lenient(&text, desc).expect("YAML");
    let r: envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse =
        crate::config::proto::to_typed(&msg).expect("typed");
    r.resources
}

fn sotw(s: &mut ConfigStore, t: &str, version: &str, yaml: &str) -> Result<(), String> {
    let r = s.apply_xds(
        &StreamKey::Ads,
        t,
        Update::Sotw {
            version_info: version.into(),
            resources: anys(yaml),
        },
    );
    s.promote();
    s.publish();
    r
}

fn tcp_listener(name: &str, port: u16, extra: &str) -> String {
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: {name}
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}{extra}
  filter_chains: [{{filters: [{{name: t, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: a}}}}]}}]
"#
    )
}

fn cluster(name: &str) -> String {
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: {name}
  type: STATIC
  load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]}}
"#
    )
}

#[test]
fn a_listener_response_applies_the_good_listeners_and_nacks_the_others_by_path() {
    let (mut s, stats) = store();
    let yaml = format!(
        "{}{}",
        tcp_listener("good", 10001, ""),
        tcp_listener("bad", 10002, "\n  tcp_backlog_size: 5")
    );
    let e = sotw(&mut s, type_url::LISTENER, "1", &yaml).expect_err("a NACK");
    assert_eq!(
        e,
        "Error adding/updating listener(s) bad: resources[1].tcp_backlog_size: unsupported\n"
    );
    assert!(s.listeners.contains_key("good"));
    assert!(!s.listeners.contains_key("bad"));
    assert_eq!(stat(&stats, "listener_manager.lds.update_rejected"), 1);
    assert_eq!(stat(&stats, "listener_manager.lds.update_success"), 0);
    // The dump shows the version that changed something, the stat does not move.
    let dump = &s.published().load().dump;
    assert_eq!(dump.lds_version, "1");
    assert_eq!(s.lds.as_ref().map(|l| l.version.as_str()), Some(""));
    // A listener absent from the next response is removed; a bad one named again stays
    // untouched (it never existed here).
    sotw(
        &mut s,
        type_url::LISTENER,
        "2",
        &tcp_listener("other", 10003, ""),
    )
    .expect("ACK");
    assert!(!s.listeners.contains_key("good"));
    assert!(s.listeners.contains_key("other"));
    assert_eq!(stat(&stats, "listener_manager.listener_removed"), 1);
}

#[test]
fn a_listener_named_twice_applies_once_and_a_response_that_does_not_decode_changes_nothing() {
    let (mut s, _) = store();
    let twice = format!(
        "{}{}",
        tcp_listener("l", 10001, ""),
        tcp_listener("l", 10002, "")
    );
    let e = sotw(&mut s, type_url::LISTENER, "1", &twice).expect_err("duplicate");
    assert_eq!(
        e,
        "Error adding/updating listener(s) l: duplicate listener l found\n"
    );
    let port = s.listeners["l"].latest().map(|v| v.model.address.port());
    assert_eq!(port, Some(10001), "the first one applies");
    let (mut s, _) = store();
    let wrong = cluster("c");
    let e = sotw(&mut s, type_url::LISTENER, "1", &wrong).expect_err("wrong type");
    assert!(e.contains("unexpected resource type"), "{e}");
}

#[test]
fn delta_clusters_are_added_changed_and_removed_by_name() {
    let (mut s, stats) = store();
    let delta = |s: &mut ConfigStore, resources: &str, removed: &[&str]| {
        let resources = anys(resources)
            .into_iter()
            .map(|a| {
                let name = resource_name_any(&a);
                (name, "v".to_string(), a)
            })
            .collect();
        let r = s.apply_xds(
            &StreamKey::Ads,
            type_url::CLUSTER,
            Update::Delta {
                system_version_info: String::new(),
                resources,
                removed: removed.iter().map(|r| r.to_string()).collect(),
            },
        );
        s.promote();
        s.publish();
        r
    };
    delta(&mut s, &format!("{}{}", cluster("a"), cluster("b")), &[]).expect("ACK");
    assert!(s.clusters.contains_key("a") && s.clusters.contains_key("b"));
    // A delta response names only what changes: the others stay.
    delta(&mut s, &cluster("c"), &["a", "never-had"]).expect("ACK");
    let names: Vec<&String> = s.clusters.keys().collect();
    assert_eq!(names, ["b", "c", "xds"]);
    assert_eq!(stat(&stats, "cluster_manager.cluster_removed"), 1);
    assert_eq!(stat(&stats, "cluster_manager.cds.update_success"), 2);
}

fn resource_name_any(a: &Any) -> String {
    cluster_pb::Cluster::decode(a.value.as_slice())
        .map(|c| c.name)
        .unwrap_or_default()
}

#[test]
fn route_configurations_go_to_the_names_listeners_subscribe_and_bad_ones_are_nacked() {
    let (mut s, stats) = store();
    let hcm = r#"- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: h
  address: {socket_address: {address: 127.0.0.1, port_value: 10010}}
  filter_chains: [{filters: [{name: hcm, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: in, rds: {route_config_name: r1, config_source: {ads: {}}}, http_filters: [{name: r, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]}}]}]
"#;
    sotw(&mut s, type_url::LISTENER, "1", hcm).expect("ACK");
    s.sync_rds();
    assert!(s.rds.contains_key("r1"));
    assert!(s.listeners["h"].active.is_none(), "warming for its routes");
    let routes = |name: &str, extra: &str| {
        format!(
            r#"- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: {name}{extra}
  virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: a}}}}]}}]
"#
        )
    };
    let both = format!("{}{}", routes("r1", ""), routes("unwanted", ""));
    sotw(&mut s, type_url::ROUTE, "1", &both).expect("ACK");
    assert!(s.rds["r1"].table.is_some());
    assert!(!s.rds.contains_key("unwanted"));
    assert!(
        s.listeners["h"].active.is_some(),
        "warm once its routes came"
    );
    assert_eq!(stat(&stats, "http.in.rds.r1.update_success"), 1);
    let e = sotw(
        &mut s,
        type_url::ROUTE,
        "2",
        &routes("r1", "\n  vhds: {config_source: {ads: {}}}"),
    )
    .expect_err("NACK");
    assert_eq!(e, "resources[0].vhds: unsupported");
    assert_eq!(stat(&stats, "http.in.rds.r1.update_rejected"), 1);
    assert_eq!(
        s.rds["r1"].table.as_ref().map(|t| t.dump.version.as_str()),
        Some("1")
    );
}

#[test]
fn srds_scopes_follow_updates_and_a_conflicting_update_changes_nothing() {
    let (mut s, stats) = store();
    let hcm = r#"- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: h
  address: {socket_address: {address: 127.0.0.1, port_value: 10011}}
  filter_chains: [{filters: [{name: hcm, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: in, scoped_routes: {name: sc, scope_key_builder: {fragments: [{header_value_extractor: {name: x-t, index: 0}}]}, rds_config_source: {ads: {}}, scoped_rds: {scoped_rds_config_source: {ads: {}}}}, http_filters: [{name: r, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]}}]}]
"#;
    sotw(&mut s, type_url::LISTENER, "1", hcm).expect("ACK");
    s.sync_rds();
    assert!(s.srds.contains_key("sc"));
    let scope = |name: &str, key: &str, rc: &str| {
        format!(
            "- \"@type\": {}\n  name: {name}\n  key: {{fragments: [{{string_key: {key}}}]}}\n  route_configuration_name: {rc}\n",
            type_url::SCOPED_ROUTE
        )
    };
    let both = format!("{}{}", scope("s1", "a", "r1"), scope("s2", "b", "r2"));
    sotw(&mut s, type_url::SCOPED_ROUTE, "1", &both).expect("ACK");
    s.sync_rds();
    assert!(s.rds.contains_key("r1") && s.rds.contains_key("r2"));
    assert!(
        s.listeners["h"].active.is_none(),
        "warming for the scopes' routes"
    );
    assert_eq!(stat(&stats, "http.in.scoped_rds.sc.all_scopes"), 2);
    // Two scopes of one name, then of one key: rejected whole.
    let e = sotw(
        &mut s,
        type_url::SCOPED_ROUTE,
        "2",
        &format!("{}{}", scope("s1", "a", "r1"), scope("s1", "c", "r3")),
    )
    .expect_err("NACK");
    assert!(
        e.contains("duplicate scoped route configuration 's1'"),
        "{e}"
    );
    let e = sotw(
        &mut s,
        type_url::SCOPED_ROUTE,
        "3",
        &format!("{}{}", scope("s1", "a", "r1"), scope("s3", "a", "r3")),
    )
    .expect_err("NACK");
    assert!(
        e.contains("scope key conflict found, first scope is 's1', second scope is 's3'"),
        "{e}"
    );
    assert_eq!(s.srds["sc"].scopes.len(), 2);
    assert_eq!(stat(&stats, "http.in.scoped_rds.sc.update_rejected"), 2);
    // A scope left out is gone, and so is the route configuration only it used.
    sotw(&mut s, type_url::SCOPED_ROUTE, "4", &scope("s1", "a", "r1")).expect("ACK");
    s.sync_rds();
    assert!(s.rds.contains_key("r1") && !s.rds.contains_key("r2"));
    assert_eq!(stat(&stats, "http.in.scoped_rds.sc.config_reload"), 2);
    // A second subscription on the same stream (whose wildcard interest is already answered)
    // starts from the scopes the stream sent.
    let second = hcm
        .replace("name: h\n", "name: h2\n")
        .replace("10011", "10012")
        .replace("name: sc,", "name: sc2,");
    sotw(&mut s, type_url::LISTENER, "2", &format!("{hcm}{second}")).expect("ACK");
    s.sync_rds();
    assert_eq!(s.srds["sc2"].scopes.keys().collect::<Vec<_>>(), ["s1"]);
    assert!(s.srds["sc2"].sub.ready);
}

#[test]
fn a_rest_answer_that_is_no_discovery_response_is_an_srds_rejection() {
    let (mut s, stats) = store();
    let hcm = r#"- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: h
  address: {socket_address: {address: 127.0.0.1, port_value: 10013}}
  filter_chains: [{filters: [{name: hcm, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: in, scoped_routes: {name: sc, scope_key_builder: {fragments: [{header_value_extractor: {name: x-t, index: 0}}]}, rds_config_source: {ads: {}}, scoped_rds: {scoped_rds_config_source: {api_config_source: {api_type: REST, transport_api_version: V3, cluster_names: [xds], refresh_delay: 1s}}}}, http_filters: [{name: r, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]}}]}]
"#;
    sotw(&mut s, type_url::LISTENER, "1", hcm).expect("ACK");
    s.sync_rds();
    let SourceKind::Grpc(rest) = s.srds["sc"].sub.source.kind.clone() else {
        panic!("a REST source");
    };
    let before = stat(&stats, "http.in.scoped_rds.sc.update_attempt");
    let e = s
        .apply_xds(
            &StreamKey::Api(rest, type_url::SCOPED_ROUTE, String::new()),
            type_url::SCOPED_ROUTE,
            Update::Json("{not json".into()),
        )
        .expect_err("rejected");
    assert!(!e.is_empty());
    assert_eq!(stat(&stats, "http.in.scoped_rds.sc.update_rejected"), 1);
    assert_eq!(
        stat(&stats, "http.in.scoped_rds.sc.update_attempt"),
        before + 1
    );
    assert!(s.srds["sc"].scopes.is_empty());
}

#[test]
fn fields_the_protos_do_not_know_are_dropped_and_counted() {
    let (mut s, stats) = store();
    let mut resources = anys(&tcp_listener("l", 10020, ""));
    // Field 999, varint 1: unknown to the Listener proto.
    resources[0].value.extend_from_slice(&[0xb8, 0x3e, 0x01]);
    let r = s.apply_xds(
        &StreamKey::Ads,
        type_url::LISTENER,
        Update::Sotw {
            version_info: "1".into(),
            resources,
        },
    );
    assert_eq!(r, Ok(()));
    assert!(s.listeners.contains_key("l"));
    assert_eq!(stat(&stats, "server.dynamic_unknown_fields"), 1);
}

/// A listener whose TLS names SDS secrets, Istio's way (certificate `default`, CA `ROOTCA`
/// through a combined validation context).
fn mtls_listener(name: &str, port: u16, fetch_timeout: &str) -> String {
    let src = format!("{{ads: {{}}, resource_api_version: V3{fetch_timeout}}}");
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: {name}
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains:
  - filters: [{{name: t, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: a}}}}]
    transport_socket:
      name: tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
        require_client_certificate: true
        common_tls_context:
          tls_certificate_sds_secret_configs: [{{name: default, sds_config: {src}}}]
          combined_validation_context:
            default_validation_context: {{match_typed_subject_alt_names: [{{san_type: URI, matcher: {{prefix: "spiffe://cluster.local/"}}}}]}}
            validation_context_sds_secret_config: {{name: ROOTCA, sds_config: {src}}}
"#
    )
}

/// Secrets `default` (a leaf whose only name is a SPIFFE URI) and `ROOTCA`, or a `default`
/// whose PEM does not parse.
fn istio_secrets(good: bool) -> String {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://cluster.local/ns/a/sa/b"
            .to_string()
            .try_into()
            .expect("URI"),
    ));
    let leaf = p.signed_by(&key, &ca, &ca_key).expect("leaf");
    let (chain, key) = if good {
        (leaf.pem(), key.serialize_pem())
    } else {
        ("garbage".to_string(), "garbage".to_string())
    };
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    format!(
        r#"- {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret, name: default, tls_certificate: {{certificate_chain: {{inline_string: {}}}, private_key: {{inline_string: {}}}}}}}
- {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret, name: ROOTCA, validation_context: {{trusted_ca: {{inline_string: {}}}}}}}
"#,
        q(&chain),
        q(&key),
        q(&ca.pem())
    )
}

#[tokio::test]
async fn a_listener_waits_for_its_sds_secrets_and_a_bad_secret_changes_nothing() {
    let (mut s, stats) = store();
    sotw(&mut s, type_url::CLUSTER, "1", &cluster("a")).expect("ACK");
    sotw(
        &mut s,
        type_url::LISTENER,
        "1",
        &mtls_listener("mtls", 10011, ""),
    )
    .expect("a listener whose secrets have not arrived is accepted");
    let slot = &s.listeners["mtls"];
    assert!(slot.active.is_none() && slot.warming.is_some(), "warming");
    assert!(s.initializing());
    assert!(s.secrets["default"].sub.is_some() && s.secrets["ROOTCA"].sub.is_some());

    sotw(&mut s, SECRET_URL, "1", &istio_secrets(true)).expect("ACK");
    assert!(
        s.listeners["mtls"].active.is_some(),
        "active once they arrived"
    );
    assert!(!s.initializing());
    assert_eq!(stat(&stats, "sds.default.update_success"), 1);
    assert_eq!(stat(&stats, "sds.ROOTCA.update_success"), 1);

    let e = sotw(&mut s, SECRET_URL, "2", &istio_secrets(false)).expect_err("a NACK");
    assert!(
        e.contains(
            "tls_certificate_sds_secret_configs[0] (secret 'default').tls_certificate.certificate_chain"
        ),
        "{e}"
    );
    assert_eq!(stat(&stats, "sds.default.update_rejected"), 1);
    // As Envoy's mux, the whole response failed for the other secret too.
    assert_eq!(stat(&stats, "sds.ROOTCA.update_rejected"), 1);
    assert_eq!(
        s.secrets["default"]
            .value
            .as_ref()
            .map(|v| v.dump.version.as_str()),
        Some("1")
    );
}

#[tokio::test]
async fn a_listener_whose_secrets_never_come_serves_after_the_initial_fetch_timeout() {
    let (mut s, stats) = store();
    sotw(&mut s, type_url::CLUSTER, "1", &cluster("a")).expect("ACK");
    sotw(
        &mut s,
        type_url::LISTENER,
        "1",
        &mtls_listener("mtls", 10012, ", initial_fetch_timeout: 0.05s"),
    )
    .expect("ACK");
    assert!(s.listeners["mtls"].active.is_none());
    s.on_timer(Instant::now() + Duration::from_secs(1));
    assert!(
        s.listeners["mtls"].active.is_some(),
        "in force, handshakes fail"
    );
    assert_eq!(stat(&stats, "sds.default.init_fetch_timeout"), 1);
}

const SECRET_URL: &str = type_url::SECRET;

#[tokio::test]
async fn a_static_listener_follows_its_sds_secrets_as_istio_bootstraps_name_them() {
    let src = "{ads: {}, resource_api_version: V3}";
    let boot = format!(
        r#"{BOOTSTRAP}  listeners:
  - name: static_mtls
    address: {{socket_address: {{address: 127.0.0.1, port_value: 10013}}}}
    filter_chains:
    - filters: [{{name: t, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: xds}}}}]
      transport_socket:
        name: tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs: [{{name: default, sds_config: {src}}}]
            combined_validation_context:
              default_validation_context: {{}}
              validation_context_sds_secret_config: {{name: ROOTCA, sds_config: {src}}}
"#
    );
    let loaded = crate::config::load_text(&boot).expect("a static listener with SDS secrets loads");
    let stats = Arc::new(Store::new(1));
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut s = ConfigStore::new(&loaded, stats.clone(), Duration::from_secs(1), tx);
    s.start();
    assert!(s.secrets["default"].sub.is_some(), "subscribed at start");
    sotw(&mut s, type_url::CLUSTER, "1", " []").expect("ACK");
    sotw(&mut s, type_url::LISTENER, "1", " []").expect("ACK");
    assert!(s.initializing(), "start-up waits for the secrets");
    assert!(s.listeners["static_mtls"].active.is_none());
    sotw(&mut s, SECRET_URL, "1", &istio_secrets(true)).expect("ACK");
    assert!(s.listeners["static_mtls"].active.is_some());
    assert!(!s.initializing());
    assert_eq!(stat(&stats, "sds.default.update_success"), 1);
}

#[test]
fn rate_limit_settings_take_envoys_defaults_and_its_check_of_the_fill_rate() {
    let with = |rl: &str| {
        crate::config::load_text(&BOOTSTRAP.replace(
            "ads_config: {api_type: GRPC,",
            &format!("ads_config: {{rate_limit_settings: {rl}, api_type: GRPC,"),
        ))
        .map(|l| l.model.dynamic.ads.and_then(|a| a.rate_limit))
        .map_err(|e| e.to_string())
    };
    let limit = |max_tokens, ms| {
        Ok(Some(crate::config::model::XdsRateLimit {
            max_tokens,
            refill: Duration::from_millis(ms),
        }))
    };
    assert_eq!(with("{}"), limit(100, 100));
    assert_eq!(with("{max_tokens: 3, fill_rate: 0.5}"), limit(3, 2000));
    let e = with("{fill_rate: 0}").expect_err("refused");
    assert!(
        e.starts_with("dynamic_resources.ads_config.rate_limit_settings.fill_rate: value must be greater than 0"),
        "{e}"
    );
    let e = with("{max_tokens: 0}").expect_err("refused");
    assert!(e.contains("rate_limit_settings.max_tokens"), "{e}");
}

#[test]
fn a_dns_cluster_carries_xds_by_its_name() {
    let yaml = BOOTSTRAP.replace(
        "type: STATIC\n    load_assignment: {cluster_name: xds, endpoints: [{lb_endpoints: [{endpoint: {address: {pipe: {path: /tmp/skiff-xds-test.sock}}}}]}]}",
        "type: STRICT_DNS\n    load_assignment: {cluster_name: xds, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: control-plane, port_value: 18000}}}}]}]}",
    );
    let loaded = crate::config::load_text(&yaml).expect("bootstrap");
    assert_eq!(
        loaded.model.xds_targets.get("xds"),
        Some(&GrpcTarget::Dns("control-plane".into(), 18000))
    );
}

#[test]
fn an_rtds_layer_takes_its_resource_and_nacks_keys_skiff_does_not_honour() {
    let text = format!(
        "{BOOTSTRAP}layered_runtime:\n  layers:\n  - name: rt\n    rtds_layer: {{name: rt0, rtds_config: {{ads: {{}}, resource_api_version: V3}}}}\n  - name: admin\n    admin_layer: {{}}\n"
    );
    let loaded = crate::config::load_text(&text).expect("bootstrap");
    let stats = Arc::new(Store::new(1));
    let runtime = Arc::new(std::sync::Mutex::new(crate::runtime::Loader::new(
        &loaded.model.runtime,
        "c",
        stats.main().clone(),
    )));
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut s = ConfigStore::new(&loaded, stats.clone(), Duration::from_secs(1), tx);
    s.set_runtime(runtime.clone());
    s.start();
    assert!(!s.rtds["rt0"].ready, "start-up waits for the runtime");
    let layer = |k: &str| {
        runtime.lock().expect("lock").dump()["entries"][k]["layer_values"][0]
            .as_str()
            .map(str::to_string)
    };
    let rt = |name: &str, layer: &str| {
        format!(
            "- \"@type\": type.googleapis.com/envoy.service.runtime.v3.Runtime\n  name: {name}\n  layer: {layer}\n"
        )
    };
    sotw(
        &mut s,
        type_url::RUNTIME,
        "1",
        &rt("rt0", "{routing: {traffic_shift: {a: 30}}}"),
    )
    .expect("ACK");
    assert_eq!(layer("routing.traffic_shift.a").as_deref(), Some("30"));
    assert_eq!(stat(&stats, "runtime.update_success"), 1);
    let e = sotw(
        &mut s,
        type_url::RUNTIME,
        "2",
        &rt("rt0", "{tracing: {random_sampling: 5}, b: 1}"),
    )
    .expect_err("a NACK");
    assert_eq!(
        e,
        "resources[0].layer.tracing.random_sampling: skiff does not honour runtime key 'tracing.random_sampling'"
    );
    assert_eq!(
        layer("routing.traffic_shift.a").as_deref(),
        Some("30"),
        "unchanged"
    );
    assert_eq!(stat(&stats, "runtime.update_rejected"), 1);
    let e = sotw(&mut s, type_url::RUNTIME, "3", &rt("rt0", "{a: [1]}")).expect_err("a NACK");
    assert!(e.contains("Invalid runtime entry value for a"), "{e}");
    // A response without the layer's resource empties it, as Envoy's.
    sotw(&mut s, type_url::RUNTIME, "4", &rt("other", "{x: 1}")).expect("ACK");
    assert_eq!(layer("routing.traffic_shift.a"), None);
    assert_eq!(layer("x"), None);
    assert!(s.rtds["rt0"].ready);
}
