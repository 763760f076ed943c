//! Any bytes as a response from an xDS server: the first byte picks the protocol (state of the
//! world or delta) and, for a response that names none, the type; the rest is the protobuf
//! `DiscoveryResponse` or `DeltaDiscoveryResponse`. The store that an ADS bootstrap builds (with
//! a static listener whose scopes come from SRDS) must
//! apply it or reject it (the verdict a NACK carries), never panic.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use skiff::config_store::{type_url, ConfigStore};
use skiff::xds::{delta_update, sotw_update, StreamKey, XdsEvent};

const BOOTSTRAP: &str = r#"
node: {id: fuzz, cluster: fuzz}
dynamic_resources:
  ads_config: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}
  lds_config: {ads: {}, resource_api_version: V3}
  cds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    load_assignment: {cluster_name: xds, endpoints: [{lb_endpoints: [{endpoint: {address: {pipe: {path: /tmp/xds.sock}}}}]}]}
  listeners:
  - name: scoped
    address: {socket_address: {address: 127.0.0.1, port_value: 10999}}
    filter_chains: [{filters: [{name: hcm, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: s, scoped_routes: {name: sc, scope_key_builder: {fragments: [{header_value_extractor: {name: x-t, index: 0}}]}, rds_config_source: {ads: {}}, scoped_rds: {scoped_rds_config_source: {ads: {}}}}, http_filters: [{name: r, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]}}]}]
"#;

const TYPES: [&str; 6] = [
    type_url::LISTENER,
    type_url::CLUSTER,
    type_url::ROUTE,
    type_url::ENDPOINT,
    type_url::SECRET,
    type_url::SCOPED_ROUTE,
];

thread_local! {
    static STORE: RefCell<Option<ConfigStore>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let delta = first & 0x80 != 0;
    let fallback = TYPES[(first & 0x7f) as usize % TYPES.len()];
    let (type_url, update) = if delta {
        let Ok(r) = DeltaDiscoveryResponse::decode(rest) else {
            return;
        };
        let t = if r.type_url.is_empty() {
            fallback.to_string()
        } else {
            r.type_url.clone()
        };
        (t, delta_update(&r).0)
    } else {
        let Ok(r) = DiscoveryResponse::decode(rest) else {
            return;
        };
        let t = if r.type_url.is_empty() {
            fallback.to_string()
        } else {
            r.type_url.clone()
        };
        (t, sotw_update(&r))
    };
    STORE.with(|s| {
        let mut s = s.borrow_mut();
        let store = s.get_or_insert_with(|| {
            let loaded = skiff::config::load_text(BOOTSTRAP).expect("the fuzz bootstrap loads");
            let stats = Arc::new(skiff::stats::Store::new(1));
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            let mut store = ConfigStore::new(&loaded, stats, Duration::from_secs(1), tx);
            store.decode_in_process();
            store
        });
        let (verdict, mut answer) = tokio::sync::oneshot::channel();
        store.on_xds(XdsEvent {
            stream: StreamKey::Ads,
            type_url,
            update,
            verdict,
        });
        let _ = answer.try_recv();
    });
});
