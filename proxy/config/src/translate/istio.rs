//! Istio's extensions (see [`crate::istio`]): `istio.alpn` and the HTTP peer metadata exchange
//! translated; the network metadata exchange and `istio.stats` checked and accepted without
//! effect (docs/compatibility.md), each acceptance counted.

use std::sync::OnceLock;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::google::protobuf::value::Kind;

use super::super::ConfigError;
use crate::istio::{
    AlpnFilterConfig, Discovery, MetadataExchange, PeerMetadataConfig, Propagation,
};
use crate::model::{IstioAlpn, IstioClusterMetadata, PeerMetadata};

/// What is told of each extension accepted without effect (the proxy counts them).
type Hook = Box<dyn Fn(&'static str) + Send + Sync>;
static WITHOUT_EFFECT: OnceLock<Hook> = OnceLock::new();

/// What was accepted before the hook was set (the bootstrap is translated first).
static EARLY: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

/// Sets what is told, once, of each extension accepted without effect; it is told at once
/// of those accepted before.
pub fn on_accepted_without_effect(hook: Hook) {
    if WITHOUT_EFFECT.set(hook).is_ok() {
        let early = std::mem::take(&mut *EARLY.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(h) = WITHOUT_EFFECT.get() {
            early.into_iter().for_each(h);
        }
    }
}

/// Tells of an extension accepted without effect.
pub(super) fn without_effect(name: &'static str) {
    match WITHOUT_EFFECT.get() {
        Some(h) => h(name),
        None => {
            let mut early = EARLY.lock().unwrap_or_else(|e| e.into_inner());
            // A process that never counts (validation, a helper) keeps only a few.
            if early.len() < 1024 {
                early.push(name);
            }
        }
    }
}

/// `istio.alpn`: the first list given for a protocol is the one used, as in Istio's filter.
pub(super) fn alpn(c: &AlpnFilterConfig, path: &str) -> Result<IstioAlpn, ConfigError> {
    let mut out = IstioAlpn::default();
    let mut seen = [false; 3];
    for (i, o) in c.alpn_override.iter().enumerate() {
        let slot = match o.upstream_protocol {
            0 => 0,
            1 => 1,
            2 => 2,
            other => {
                return Err(ConfigError::new(
                    format!("{path}.alpn_override[{i}].upstream_protocol"),
                    format!("unknown protocol {other}"),
                ))
            }
        };
        if std::mem::replace(&mut seen[slot], true) {
            continue;
        }
        for (j, p) in o.alpn_override.iter().enumerate() {
            if p.is_empty() || p.len() > 255 {
                return Err(ConfigError::new(
                    format!("{path}.alpn_override[{i}].alpn_override[{j}]"),
                    "an ALPN protocol name is 1 to 255 bytes",
                ));
            }
        }
        let list: Option<std::sync::Arc<[Vec<u8>]>> = (!o.alpn_override.is_empty()).then(|| {
            o.alpn_override
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect()
        });
        match slot {
            0 => out.http10 = list,
            1 => out.http11 = list,
            _ => out.http2 = list,
        }
    }
    Ok(out)
}

/// `io.istio.http.peer_metadata.Config`: the exchange over Istio's headers; discovery through
/// workload metadata feeds only telemetry, which skiff does not keep.
pub(super) fn peer_metadata(
    c: &PeerMetadataConfig,
    path: &str,
) -> Result<PeerMetadata, ConfigError> {
    let headers = |methods: &[crate::istio::DiscoveryMethod], field: &str| {
        let mut found = false;
        for (i, m) in methods.iter().enumerate() {
            match &m.method_specifier {
                Some(Discovery::IstioHeaders(_)) => found = true,
                Some(Discovery::WorkloadDiscovery(_)) => without_effect("workload_discovery"),
                Some(Discovery::Baggage(_)) => {
                    return Err(ConfigError::unsupported(format!(
                        "{path}.{field}[{i}].baggage"
                    )))
                }
                None => {}
            }
        }
        Ok(found)
    };
    let propagation = |methods: &[crate::istio::PropagationMethod]| {
        methods.iter().find_map(|m| {
            m.method_specifier
                .as_ref()
                .map(|Propagation::IstioHeaders(h)| h.skip_external_clusters)
        })
    };
    Ok(PeerMetadata {
        downstream_headers: headers(&c.downstream_discovery, "downstream_discovery")?,
        upstream_headers: headers(&c.upstream_discovery, "upstream_discovery")?,
        downstream_propagation: propagation(&c.downstream_propagation),
        upstream_propagation: propagation(&c.upstream_propagation),
        additional_labels: c.additional_labels.clone(),
    })
}

/// The Wasm filter with which Istio before 1.19 configured its HTTP metadata exchange:
/// istio-proxy's compiled-in plugin `envoy.wasm.metadata_exchange` in the null VM. skiff runs
/// its own exchange for that plugin, as the plugin does it: the peer's headers are read and
/// removed from requests and responses alike, and this proxy's go upstream unless the
/// listener is inbound, and downstream (to a peer that sent its own) unless it is outbound.
/// Any other Wasm is refused: skiff runs no Wasm VM.
pub(super) fn null_vm_metadata_exchange(
    w: &envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm,
    path: &str,
    direction: TrafficDirection,
) -> Result<PeerMetadata, ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::{async_data_source, data_source};
    use envoy_types::pb::envoy::extensions::wasm::v3::{plugin_config::Vm, PluginConfig, VmConfig};
    const PLUGIN: &str = "envoy.wasm.metadata_exchange";
    let refuse = |field: &str| {
        ConfigError::new(
            format!("{path}.{field}"),
            format!(
                "unsupported: skiff runs no Wasm VM, only istio-proxy's null-VM plugin {PLUGIN}"
            ),
        )
    };
    let Some(config) = &w.config else {
        return Err(refuse("config"));
    };
    // The plugin reads only a peer cache size from its configuration; its name, root and VM
    // ids and failure policy do not change what it does.
    #[allow(deprecated)]
    let PluginConfig {
        name: _,
        root_id: _,
        configuration: _,
        fail_open: _,
        failure_policy: _,
        reload_config,
        capability_restriction_config,
        allow_on_headers_stop_iteration,
        vm,
    } = config;
    if reload_config.is_some() {
        return Err(ConfigError::unsupported(format!(
            "{path}.config.reload_config"
        )));
    }
    if capability_restriction_config.is_some() {
        return Err(ConfigError::unsupported(format!(
            "{path}.config.capability_restriction_config"
        )));
    }
    if allow_on_headers_stop_iteration.is_some() {
        return Err(ConfigError::unsupported(format!(
            "{path}.config.allow_on_headers_stop_iteration"
        )));
    }
    let Some(Vm::VmConfig(vm)) = vm else {
        return Err(refuse("config.vm_config"));
    };
    let VmConfig {
        vm_id: _,
        runtime,
        code,
        configuration: _,
        allow_precompiled: _,
        nack_on_code_cache_miss: _,
        environment_variables,
        capability_restriction_config,
    } = vm;
    if runtime != "envoy.wasm.runtime.null" {
        return Err(refuse("config.vm_config.runtime"));
    }
    let plugin = code.as_ref().and_then(|c| match &c.specifier {
        Some(async_data_source::Specifier::Local(d)) => match &d.specifier {
            Some(data_source::Specifier::InlineString(s)) => Some(s.as_str()),
            _ => None,
        },
        _ => None,
    });
    if plugin != Some(PLUGIN) {
        return Err(refuse("config.vm_config.code"));
    }
    if environment_variables.is_some() {
        return Err(ConfigError::unsupported(format!(
            "{path}.config.vm_config.environment_variables"
        )));
    }
    if capability_restriction_config.is_some() {
        return Err(ConfigError::unsupported(format!(
            "{path}.config.vm_config.capability_restriction_config"
        )));
    }
    Ok(PeerMetadata {
        downstream_headers: true,
        upstream_headers: true,
        downstream_propagation: (direction != TrafficDirection::Outbound).then_some(false),
        upstream_propagation: (direction != TrafficDirection::Inbound).then_some(false),
        additional_labels: Vec::new(),
    })
}

/// Istio's network metadata exchange acts only on a connection whose ALPN is its protocol;
/// skiff never offers or accepts `istio-peer-exchange`, so the filter never acts.
pub(super) fn metadata_exchange(m: &MetadataExchange, path: &str) -> Result<(), ConfigError> {
    if m.protocol != "istio-peer-exchange" {
        return Err(ConfigError::new(
            format!("{path}.protocol"),
            "only istio-peer-exchange, which skiff never negotiates",
        ));
    }
    without_effect("istio.metadata_exchange");
    Ok(())
}

/// A cluster's `metadata.filter_metadata.istio`.
pub(super) fn cluster_metadata(c: &cluster::Cluster) -> IstioClusterMetadata {
    let Some(istio) = c
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("istio"))
    else {
        return IstioClusterMetadata::default();
    };
    let field = |name: &str| istio.fields.get(name).and_then(|v| v.kind.as_ref());
    IstioClusterMetadata {
        no_alpn_override: matches!(field("alpn_override"), Some(Kind::StringValue(s)) if s == "false"),
        disable_mx: matches!(field("disable_mx"), Some(Kind::BoolValue(true))),
        external: matches!(field("external"), Some(Kind::BoolValue(true))),
    }
}

/// `Cluster.filters`: upstream network filters. Istio puts its metadata exchange there, which
/// never acts (see [`metadata_exchange`]); any other is refused.
pub(super) fn cluster_filters(c: &cluster::Cluster, path: &str) -> Result<(), ConfigError> {
    for (i, f) in c.filters.iter().enumerate() {
        let fpath = format!("{path}.filters[{i}].typed_config");
        let any = f
            .typed_config
            .as_ref()
            .ok_or_else(|| ConfigError::new(&fpath, "required"))?;
        match super::type_name(&any.type_url) {
            crate::istio::METADATA_EXCHANGE => {
                metadata_exchange(&super::unpack(any, &fpath)?, &fpath)?
            }
            other => {
                return Err(ConfigError::new(
                    fpath,
                    format!("unsupported upstream network filter '{}' ({other})", f.name),
                ))
            }
        }
    }
    Ok(())
}
