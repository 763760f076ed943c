//! Istio's extensions (see [`crate::istio`]): `istio.alpn` and the HTTP peer metadata exchange
//! translated; the network metadata exchange and `istio.stats` checked and accepted without
//! effect (docs/compatibility.md), each acceptance counted.

use std::sync::OnceLock;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
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
