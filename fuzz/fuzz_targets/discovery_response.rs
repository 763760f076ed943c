//! Any bytes as a discovery file (a YAML or JSON `DiscoveryResponse`) and as a REST xDS
//! server's answer: decoding, the field check, and translation of each listener, cluster,
//! route configuration and endpoint assignment must give a result or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use skiff::config::{discovery, resource, Secrets};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A REST answer: lenient about fields the protos do not know, resources checked one by one.
    let _ = discovery::decode_json(text);
    let Ok(d) = discovery::decode_text(text) else {
        return;
    };
    let clusters = Default::default();
    let secrets = Secrets::new();
    for any in &d.resources {
        let v = any.value.as_slice();
        match any.type_url.rsplit('/').next().unwrap_or("") {
            "envoy.config.listener.v3.Listener" => {
                if let Ok(l) = envoy_types::pb::envoy::config::listener::v3::Listener::decode(v) {
                    let _ = resource::listener(&l, "r", &clusters, &secrets);
                }
            }
            "envoy.config.cluster.v3.Cluster" => {
                if let Ok(c) = envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(v) {
                    let _ = resource::cluster(&c, "r", &secrets);
                }
            }
            "envoy.config.route.v3.RouteConfiguration" => {
                if let Ok(r) =
                    envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(v)
                {
                    let _ = resource::route_configuration(&r, "r");
                }
            }
            "envoy.config.endpoint.v3.ClusterLoadAssignment" => {
                if let Ok(e) =
                    envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(v)
                {
                    let _ = resource::endpoints(&e, "r");
                }
            }
            _ => {}
        }
    }
});
