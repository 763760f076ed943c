//! skiff's configuration: Envoy's v3 bootstrap and discovery resources in, skiff's own
//! validated model out. The model is plain data; nothing here runs traffic, and this crate
//! depends on nothing of the proxy's runtime, which builds what it serves with (pools, token
//! buckets, TLS that follows its files, lookup tables) from the model.
//!
//! Loading is three steps. `proto` decodes YAML or JSON into a dynamic message (unknown fields are
//! errors with their path). `supported` walks every field that is set and refuses any that skiff
//! does not honour, naming its path. `translate` then builds the immutable [`model`] that the
//! workers run; it checks values (enums, references between resources) with the same paths.

pub mod access_log;
pub mod cel;
pub mod discovery;
pub mod filter_chain_match;
pub mod filter_state;
pub mod istio;
pub mod jwt;
pub mod lua;
pub mod matcher;
pub mod metadata;
pub mod model;
pub mod pattern;
pub mod proto;
pub mod rbac;
pub mod router;
pub mod runtime;
pub mod stats;
mod supported;
pub mod tls;
pub mod trace;
mod translate;

use std::fmt;

use prost_reflect::DynamicMessage;

pub use translate::{
    config_source as translate_config_source, listener_stat_prefix, on_accepted_without_effect,
    resource, set_bootstrap_tracer, translate,
};

/// Secrets by name (`static_resources.secrets`, and those SDS brought), which TLS contexts'
/// `sds_secret_configs` name.
pub type Secrets = std::collections::HashMap<
    String,
    envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
>;

/// A configuration error: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path such as `static_resources.listeners[0].address`; empty for the whole document.
    pub path: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
    /// A value Envoy's proto validation refuses when it decodes a resource, so that a
    /// discovery response holding it is rejected whole rather than resource by resource.
    pub invalid: bool,
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
            invalid: false,
        }
    }

    /// An error of proto validation (see [`ConfigError::invalid`]).
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            invalid: true,
            ..Self::new(path, message)
        }
    }

    /// The error for a field skiff does not honour.
    pub fn unsupported(path: impl Into<String>) -> Self {
        Self::new(path, "unsupported")
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where the bootstrap comes from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// `-c/--config-path`.
    pub path: Option<String>,
    /// `--config-yaml`, merged over the file.
    pub yaml: Option<String>,
    /// `--allow-unknown-static-fields`: fields the protos do not know are dropped with a
    /// warning (and counted in `server.static_unknown_fields`) instead of refused.
    pub allow_unknown_fields: bool,
}

/// The configuration as given, in Envoy's JSON form, for `/config_dump`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ConfigDump {
    /// The whole bootstrap.
    pub bootstrap: serde_json::Value,
    /// Each static listener, as JSON text (kept for the life of the listener: text is a
    /// tenth of the size of a tree).
    pub listeners: Vec<String>,
    /// Each static cluster, as JSON text.
    pub clusters: Vec<String>,
    /// Fields the protos do not know, dropped (with `--allow-unknown-static-fields`).
    #[serde(default)]
    pub unknown_fields: Vec<String>,
    /// How many of the documents (the file, `--config-yaml`) had such fields.
    #[serde(default)]
    pub unknown_documents: u64,
}

/// A loaded bootstrap: the validated model and its dump.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The bootstrap as decoded (updates from dynamic sources are compared with its resources).
    pub proto: envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap,
    /// What the proxy runs.
    pub model: model::Bootstrap,
    /// What `/config_dump` shows.
    pub dump: ConfigDump,
}

/// Reads, decodes, checks and translates a bootstrap.
pub fn load(source: &Source) -> Result<Loaded, ConfigError> {
    let (dynamic, bootstrap, (unknown, documents)) = decode(source)?;
    let model = translate(&bootstrap)?;
    let mut dump = dump(&dynamic);
    dump.unknown_fields = unknown;
    dump.unknown_documents = documents;
    Ok(Loaded {
        proto: bootstrap,
        model,
        dump,
    })
}

/// A decoded bootstrap: its dynamic form, the generated prost type, and the unknown fields
/// dropped.
type Decoded = (
    DynamicMessage,
    envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap,
    (Vec<String>, u64),
);

/// Decodes and checks a bootstrap.
fn decode(source: &Source) -> Result<Decoded, ConfigError> {
    let desc = proto::message(proto::BOOTSTRAP)?;
    let mut unknown = Vec::new();
    let mut documents = 0;
    let mut text_to_message = |text: &str, desc| -> Result<DynamicMessage, ConfigError> {
        if source.allow_unknown_fields {
            let (msg, dropped) = proto::decode_text_lenient(text, desc)?;
            if !dropped.is_empty() {
                documents += 1;
            }
            unknown.extend(dropped);
            Ok(msg)
        } else {
            proto::decode_text(text, desc)
        }
    };
    let mut dynamic = match &source.path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new("", format!("cannot read '{path}': {e}")))?;
            text_to_message(&text, desc.clone())?
        }
        None => DynamicMessage::new(desc.clone()),
    };
    if let Some(yaml) = &source.yaml {
        let over = text_to_message(yaml, desc)
            .map_err(|e| ConfigError::new(e.path, format!("in --config-yaml: {}", e.message)))?;
        proto::merge(&mut dynamic, &over)?;
    }
    if source.path.is_none() && source.yaml.is_none() {
        return Err(ConfigError::new(
            "",
            "no configuration: give -c/--config-path or --config-yaml",
        ));
    }
    supported::check(&dynamic)?;
    let bootstrap = proto::to_typed(&dynamic)?;
    Ok((dynamic, bootstrap, (unknown, documents)))
}

/// Every field of a bootstrap that skiff does not honour, and what decoding or translating it
/// refuses otherwise (loading stops at the first; reports want them all).
pub fn refusals(text: &str) -> Vec<ConfigError> {
    let dynamic = match proto::message(proto::BOOTSTRAP).and_then(|d| proto::decode_text(text, d)) {
        Ok(d) => d,
        Err(e) => return vec![e],
    };
    let all = supported::unsupported(&dynamic);
    if !all.is_empty() {
        return all;
    }
    match proto::to_typed(&dynamic).and_then(|b| translate(&b)) {
        Ok(_) => Vec::new(),
        Err(e) => vec![e],
    }
}

/// Loads a bootstrap from text, as a file would be read (used by tests and the embedded default).
pub fn load_text(text: &str) -> Result<Loaded, ConfigError> {
    let desc = proto::message(proto::BOOTSTRAP)?;
    let dynamic = proto::decode_text(text, desc)?;
    supported::check(&dynamic)?;
    let bootstrap = proto::to_typed(&dynamic)?;
    let model = translate(&bootstrap)?;
    Ok(Loaded {
        proto: bootstrap,
        model,
        dump: dump(&dynamic),
    })
}

pub fn to_json(msg: &DynamicMessage) -> serde_json::Value {
    let opts = prost_reflect::SerializeOptions::new()
        .skip_default_fields(true)
        .use_proto_field_name(true);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .unwrap_or(serde_json::Value::Null)
}

fn dump(boot: &DynamicMessage) -> ConfigDump {
    use prost_reflect::Value;
    let mut d = ConfigDump {
        bootstrap: to_json(boot),
        ..ConfigDump::default()
    };
    let Some(Value::Message(res)) = boot
        .get_field_by_name("static_resources")
        .map(|v| v.into_owned())
    else {
        return d;
    };
    for (field, out, type_url) in [
        (
            "listeners",
            &mut d.listeners,
            "type.googleapis.com/envoy.config.listener.v3.Listener",
        ),
        (
            "clusters",
            &mut d.clusters,
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        ),
    ] {
        if let Some(Value::List(items)) = res.get_field_by_name(field).map(|v| v.into_owned()) {
            for item in items {
                if let Value::Message(m) = item {
                    let mut v = to_json(&m);
                    if let Some(o) = v.as_object_mut() {
                        o.insert("@type".into(), serde_json::Value::String(type_url.into()));
                    }
                    out.push(v.to_string());
                }
            }
        }
    }
    d
}

/// The hidden flag with which skiff runs itself to decode a configuration (see [`load_isolated`]).
pub const DECODE_FLAG: &str = "--decode-config-to-stdout";

/// Decodes a configuration for a parent process: writes the binary `Bootstrap` (length-prefixed)
/// followed by the dump as JSON, or the error as JSON with a non-zero exit.
pub fn decode_for_parent(
    source: &Source,
    out: &mut impl std::io::Write,
) -> Result<(), ConfigError> {
    use prost::Message;
    let (dynamic, bootstrap, (unknown, documents)) = decode(source)?;
    // Translation errors are reported by the child too, so the parent sees the same text.
    translate(&bootstrap)?;
    let pb = bootstrap.encode_to_vec();
    let mut dump = dump(&dynamic);
    dump.unknown_fields = unknown;
    dump.unknown_documents = documents;
    let json = serde_json::to_vec(&dump).unwrap_or_default();
    let io = |e: std::io::Error| {
        ConfigError::new("", format!("cannot hand the configuration over: {e}"))
    };
    out.write_all(&(pb.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&pb).map_err(io)?;
    out.write_all(&json).map_err(io)?;
    Ok(())
}

/// Loads a configuration in a short-lived child process. Decoding YAML or JSON needs Envoy's whole
/// descriptor set (some 50 MB in memory); the child pays that and hands over the binary
/// bootstrap, so the serving process never holds it. Falls back to loading in-process when the
/// child cannot be started.
pub fn load_isolated(source: &Source) -> Result<Loaded, ConfigError> {
    use prost::Message;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(_) => return load(source),
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(DECODE_FLAG);
    if let Some(p) = &source.path {
        cmd.arg("--config-path").arg(p);
    }
    if let Some(y) = &source.yaml {
        cmd.arg("--config-yaml").arg(y);
    }
    if source.allow_unknown_fields {
        cmd.arg("--allow-unknown-static-fields");
    }
    let output = match cmd.stdin(std::process::Stdio::null()).output() {
        Ok(o) => o,
        Err(_) => return load(source),
    };
    if !output.status.success() {
        return Err(serde_json::from_slice::<ChildError>(&output.stdout)
            .map(|e| ConfigError::new(e.path, e.message))
            .unwrap_or_else(|_| {
                ConfigError::new(
                    "",
                    format!(
                        "configuration decoder failed: {}",
                        String::from_utf8_lossy(&output.stderr)
                    ),
                )
            }));
    }
    let bad = || ConfigError::new("", "configuration decoder returned malformed output");
    let data = output.stdout;
    let len = data
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(bad)? as usize;
    let pb = data.get(8..8 + len).ok_or_else(bad)?;
    let bootstrap =
        envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap::decode(pb).map_err(|_| bad())?;
    let dump = serde_json::from_slice(&data[8 + len..]).map_err(|_| bad())?;
    Ok(Loaded {
        model: translate(&bootstrap)?,
        proto: bootstrap,
        dump,
    })
}

/// A configuration error as the child process reports it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ChildError {
    /// [`ConfigError::path`].
    pub path: String,
    /// [`ConfigError::message`].
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(rel: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(rel)
    }

    fn chains_config(matches: &[&str], default: bool) -> String {
        let tcp = |p: &str| {
            format!(
                r#"filters: [{{name: t, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {p}, cluster: c}}}}]"#
            )
        };
        let chains: Vec<String> = matches
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{{filter_chain_match: {m}, {}}}", tcp(&format!("c{i}"))))
            .collect();
        let default = if default {
            format!(", default_filter_chain: {{{}}}", tcp("dflt"))
        } else {
            String::new()
        };
        format!(
            r#"static_resources: {{ listeners: [{{ name: l, address: {{socket_address: {{address: 0.0.0.0, port_value: 15001}}}}, filter_chains: [{}]{default} }}], clusters: [{{name: c, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED}}] }}"#,
            chains.join(", ")
        )
    }

    /// Checked as Envoy 1.40 checks it (`envoy --mode validate`): inline tables by default,
    /// not with `validate_clusters: false`; `true` on an RDS table is refused.
    #[test]
    fn validate_clusters_as_envoy() {
        let hcm = |rc: &str| {
            format!(
                r#"static_resources: {{ listeners: [{{ name: l, address: {{socket_address: {{address: 127.0.0.1, port_value: 10000}}}}, filter_chains: [{{ filters: [{{ name: hcm, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: x, {rc}, http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}] }} }}] }}] }}] }}"#
            )
        };
        let routes = "virtual_hosts: [{name: a, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: missing}}]}]";
        let e = load_text(&hcm(&format!("route_config: {{{routes}}}"))).expect_err("unknown");
        assert!(e.to_string().contains("unknown cluster 'missing'"), "{e}");
        assert!(load_text(&hcm(&format!(
            "route_config: {{validate_clusters: false, {routes}}}"
        )))
        .is_ok());
        let rc = envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
            name: "r".into(),
            validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
            ..Default::default()
        };
        let e = crate::resource::route_configuration(&rc, "r").expect_err("refused");
        assert_eq!(e.path, "r.validate_clusters");
    }

    /// HCM `tracing` loads without a tracer, and with a `provider` of its own; with only the
    /// bootstrap's tracer, Envoy would send that tracer's context upstream, so it is refused.
    #[test]
    fn hcm_tracing_without_a_tracer_or_with_its_own() {
        let hcm = r#"static_resources: { listeners: [{ name: l, address: {socket_address: {address: 127.0.0.1, port_value: 10000}}, filter_chains: [{ filters: [{ name: hcm, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: x, tracing: {random_sampling: {value: 1}}, route_config: {}, http_filters: [{name: r, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}] } }] }] }] }"#;
        assert!(load_text(hcm).is_ok());
        let tracer = "tracing: {http: {name: envoy.tracers.zipkin, typed_config: {'@type': type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: z, collector_endpoint: /api/v2/spans, collector_endpoint_version: HTTP_JSON}}}";
        let e = load_text(&format!(
            "{hcm}
{tracer}"
        ))
        .expect_err("refused");
        assert!(e.to_string().contains("tracing"), "{e}");
        let provider = hcm.replace(
            "tracing: {random_sampling: {value: 1}}",
            "tracing: {provider: {name: envoy.tracers.zipkin, typed_config: {'@type': type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: z, collector_endpoint: /x, collector_endpoint_version: HTTP_JSON}}}",
        );
        assert!(load_text(&provider).is_ok());
        let both = load_text(&format!(
            "{provider}
{tracer}"
        ));
        assert!(both.is_ok(), "{:?}", both.err());
    }

    #[test]
    fn filter_chains_match_port_then_longest_prefix_then_default() {
        use crate::filter_chain_match::ChainChoice::{Default, Index};
        use crate::filter_chain_match::Chains;
        let text = chains_config(
            &[
                "{destination_port: 80}",
                "{destination_port: 80, prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}",
                "{destination_port: 80, prefix_ranges: [{address_prefix: 10.1.0.0, prefix_len: 16}]}",
                "{prefix_ranges: [{address_prefix: 192.168.0.0, prefix_len: 16}]}",
                "{prefix_ranges: [{address_prefix: 'fd00::', prefix_len: 8}]}",
            ],
            true,
        );
        let loaded = load_text(&text).expect("loads");
        let l = Chains::new(loaded.model.listeners[0].clone());
        let pick = |a: &str| l.select_local(a.parse().expect("addr"));
        assert_eq!(pick("10.1.2.3:80"), Some(Index(2)), "longest prefix wins");
        assert_eq!(pick("10.2.2.3:80"), Some(Index(1)));
        assert_eq!(
            pick("11.0.0.1:80"),
            Some(Index(0)),
            "port chain without ranges"
        );
        assert_eq!(
            pick("192.168.1.1:81"),
            Some(Index(3)),
            "no port chain for 81"
        );
        assert_eq!(
            pick("[::ffff:192.168.1.1]:81"),
            Some(Index(3)),
            "v4-mapped is IPv4"
        );
        assert_eq!(pick("[fd00::1]:443"), Some(Index(4)));
        assert_eq!(pick("8.8.8.8:81"), Some(Default), "nothing matches");
        // A port chain that names ranges but none match: the port still wins, so nothing
        // matches and the default chain takes it, as in Envoy.
        let text = chains_config(
            &[
                "{destination_port: 80, prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}",
                "{}",
            ],
            false,
        );
        let loaded = load_text(&text).expect("loads");
        let l = Chains::new(loaded.model.listeners[0].clone());
        assert_eq!(l.select_local("11.0.0.1:80".parse().expect("addr")), None);
        assert_eq!(
            l.select_local("11.0.0.1:81".parse().expect("addr")),
            Some(Index(1))
        );
    }

    #[test]
    fn identical_filter_chain_matches_are_refused() {
        let text = chains_config(&["{destination_port: 80}", "{destination_port: 80}"], false);
        let e = load_text(&text).expect_err("duplicate matches");
        assert_eq!(
            e.to_string(),
            "static_resources.listeners[0].filter_chains[1].filter_chain_match: filter chain '' has the same matching rules defined as ''"
        );
    }

    #[test]
    fn minimal_envoy_config_loads() {
        let text = include_str!("../../../examples/envoy-minimal.yaml");
        let loaded = load_text(text).expect("envoy-minimal.yaml loads");
        assert_eq!(loaded.model.listeners.len(), 1);
        assert_eq!(loaded.model.listeners[0].stat_prefix, "127.0.0.1_10000");
        assert_eq!(loaded.model.clusters[0].hosts.len(), 1);
    }

    #[test]
    fn config_yaml_merges_over_the_file() {
        let dir = std::env::temp_dir().join(format!("skiff-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("base.yaml");
        std::fs::write(&path, include_str!("../../../examples/envoy-minimal.yaml")).expect("write");
        let source = Source {
            path: Some(path.to_string_lossy().into_owned()),
            yaml: Some(
                "admin: { address: { socket_address: { address: 127.0.0.1, port_value: 9999 } } }"
                    .into(),
            ),
            ..Source::default()
        };
        let loaded = load(&source).expect("merged config loads");
        assert_eq!(loaded.model.admin.expect("admin").address.port(), 9999);
        // Repeated fields append, as protobuf MergeFrom does.
        let source = Source {
            path: source.path.clone(),
            yaml: Some("static_resources: { clusters: [ { name: extra, type: STATIC } ] }".into()),
            ..Source::default()
        };
        assert_eq!(load(&source).expect("loads").model.clusters.len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The model is comparable data: a configuration translated twice gives equal models,
    /// and one value changed gives another.
    #[test]
    fn the_model_compares_as_data() {
        let mut dirs = vec![repo_file("fuzz/corpus/config_yaml")];
        let reference = repo_file("../shared/reference/envoy-configs");
        if reference.exists() {
            dirs.push(reference);
        }
        let mut compared = 0;
        for dir in dirs {
            for entry in std::fs::read_dir(&dir).expect("corpus dir").flatten() {
                let Ok(text) = std::fs::read_to_string(entry.path()) else {
                    continue;
                };
                let (Ok(a), Ok(b)) = (load_text(&text), load_text(&text)) else {
                    continue;
                };
                assert_eq!(a.model, b.model, "{}", entry.path().display());
                compared += 1;
            }
        }
        assert!(compared > 5, "only {compared} configurations compared");
        let one = |port: u16| {
            load_text(&chains_config(
                &[&format!("{{destination_port: {port}}}")],
                true,
            ))
            .expect("loads")
            .model
        };
        assert_eq!(one(80), one(80));
        assert_ne!(one(80).listeners, one(81).listeners);
        assert_eq!(one(80).clusters, one(81).clusters);
    }

    /// Every seed of the config fuzz target gives a model or an error, never a panic; errors on
    /// the reference configs name a field path.
    #[test]
    fn fuzz_corpus_and_reference_configs_never_panic() {
        let mut dirs = vec![repo_file("fuzz/corpus/config_yaml")];
        let reference = repo_file("../shared/reference/envoy-configs");
        if reference.exists() {
            dirs.push(reference);
        }
        let mut seen = 0;
        for dir in dirs {
            for entry in std::fs::read_dir(&dir).expect("corpus dir").flatten() {
                let Ok(text) = std::fs::read_to_string(entry.path()) else {
                    continue;
                };
                seen += 1;
                if let Err(e) = load_text(&text) {
                    assert!(
                        !e.message.is_empty(),
                        "{}: empty error",
                        entry.path().display()
                    );
                }
            }
        }
        assert!(seen >= 3, "the corpus is missing");
    }
}
