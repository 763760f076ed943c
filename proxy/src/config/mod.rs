//! Configuration: Envoy's v3 bootstrap in, skiff's own validated model out.
//!
//! Loading is three steps. `proto` decodes YAML or JSON into a dynamic message (unknown fields are
//! errors with their path). `supported` walks every field that is set and refuses any that skiff
//! does not honour, naming its path. `translate` then builds the immutable [`model`] that the
//! workers run; it checks values (enums, references between resources) with the same paths.

pub mod model;
pub mod proto;
mod supported;
mod translate;

use std::fmt;

use prost_reflect::DynamicMessage;

pub use translate::translate;

/// A configuration error: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path such as `static_resources.listeners[0].address`; empty for the whole document.
    pub path: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { path: path.into(), message: message.into() }
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
}

/// A loaded bootstrap: the dynamic form (for `/config_dump`) and the validated model.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The decoded bootstrap as given, after the `--config-yaml` merge.
    pub dynamic: DynamicMessage,
    /// What the proxy runs.
    pub model: model::Bootstrap,
}

/// Reads, decodes, checks and translates a bootstrap.
pub fn load(source: &Source) -> Result<Loaded, ConfigError> {
    let desc = proto::message(proto::BOOTSTRAP)?;
    let mut dynamic = match &source.path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new("", format!("cannot read '{path}': {e}")))?;
            proto::decode_text(&text, desc.clone())?
        }
        None => DynamicMessage::new(desc.clone()),
    };
    if let Some(yaml) = &source.yaml {
        let over = proto::decode_text(yaml, desc)
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
    let model = translate(&bootstrap)?;
    Ok(Loaded { dynamic, model })
}

/// Loads a bootstrap from text, as a file would be read (used by tests and the embedded default).
pub fn load_text(text: &str) -> Result<Loaded, ConfigError> {
    let desc = proto::message(proto::BOOTSTRAP)?;
    let dynamic = proto::decode_text(text, desc)?;
    supported::check(&dynamic)?;
    let bootstrap = proto::to_typed(&dynamic)?;
    let model = translate(&bootstrap)?;
    Ok(Loaded { dynamic, model })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(rel: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
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
            yaml: Some("admin: { address: { socket_address: { address: 127.0.0.1, port_value: 9999 } } }".into()),
        };
        let loaded = load(&source).expect("merged config loads");
        assert_eq!(loaded.model.admin.expect("admin").address.port(), 9999);
        // Repeated fields append, as protobuf MergeFrom does.
        let source = Source {
            path: source.path.clone(),
            yaml: Some("static_resources: { clusters: [ { name: extra, type: STATIC } ] }".into()),
        };
        assert_eq!(load(&source).expect("loads").model.clusters.len(), 2);
        let _ = std::fs::remove_dir_all(dir);
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
                let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
                seen += 1;
                if let Err(e) = load_text(&text) {
                    assert!(!e.message.is_empty(), "{}: empty error", entry.path().display());
                }
            }
        }
        assert!(seen >= 3, "the corpus is missing");
    }
}
