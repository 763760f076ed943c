//! skiff's entry in the node's CNI configuration, as istio-cni manages its own: the runtime
//! uses the lowest-sorted `*.conf`/`*.conflist`/`*.json` file of the configuration directory,
//! so that one (the primary network's) gets skiff's plugin appended to its `plugins`, every
//! other plugin kept as it was and in its order. A single-plugin `.conf` is converted to a
//! `.conflist` first (chaining needs a list). Adding twice changes nothing; removing takes
//! out only skiff's entry.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::netconf::PLUGIN_TYPE;

/// Why the configuration directory could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum ConflistError {
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file or directory.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The primary file is not a CNI configuration skiff can chain onto.
    #[error(
        "{path}: {reason}; fix the file or remove it so that another becomes the primary network"
    )]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

fn io(path: &Path, e: impl std::fmt::Display) -> ConflistError {
    ConflistError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The extensions libcni reads, in the order it sorts them (by whole file name).
fn is_cni_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("conf" | "conflist" | "json")
    )
}

/// The CNI files of `dir`, sorted as libcni sorts them.
fn cni_files(dir: &Path) -> Result<Vec<PathBuf>, ConflistError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir, e)),
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_cni_file(p))
        .collect();
    files.sort();
    Ok(files)
}

/// The file the runtime takes as the pod network: the lowest-sorted CNI file.
pub fn primary_file(dir: &Path) -> Result<Option<PathBuf>, ConflistError> {
    Ok(cni_files(dir)?.into_iter().next())
}

/// `text` (a `.conf` or `.conflist`) as a conflist with skiff's `entry` last, replacing an
/// earlier skiff entry; `None` when it already is exactly that.
pub fn with_entry(text: &str, entry: &Value) -> Result<Option<Value>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = doc else {
        return Err("not a JSON object".into());
    };
    let mut list = if obj.contains_key("plugins") {
        obj
    } else {
        single_to_list(obj)?
    };
    let plugins = list
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or("`plugins` is not a list")?;
    let mine: Vec<usize> = plugins
        .iter()
        .enumerate()
        .filter(|(_, p)| p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE))
        .map(|(i, _)| i)
        .collect();
    if mine.len() == 1 && mine[0] + 1 == plugins.len() && &plugins[mine[0]] == entry {
        return Ok(None);
    }
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    plugins.push(entry.clone());
    Ok(Some(Value::Object(list)))
}

/// A single plugin's `.conf` as a one-plugin conflist: the network's `cniVersion` and `name`
/// stay on the list, the rest becomes the first plugin.
fn single_to_list(mut conf: Map<String, Value>) -> Result<Map<String, Value>, String> {
    if !conf.contains_key("type") {
        return Err("neither `plugins` nor `type`: not a CNI configuration".into());
    }
    let version = conf.remove("cniVersion").unwrap_or(json!("1.0.0"));
    let name = conf.remove("name").unwrap_or(json!("k8s-pod-network"));
    let mut list = Map::new();
    list.insert("cniVersion".into(), version);
    list.insert("name".into(), name);
    list.insert("plugins".into(), Value::Array(vec![Value::Object(conf)]));
    Ok(list)
}

/// `text` without skiff's entry; `None` when it has none.
pub fn without_entry(text: &str) -> Result<Option<Value>, String> {
    let mut doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(plugins) = doc.get_mut("plugins").and_then(Value::as_array_mut) else {
        return Ok(None);
    };
    let before = plugins.len();
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    Ok((plugins.len() != before).then_some(doc))
}

/// Writes `value` to `path` atomically, through a temporary name the runtime does not read.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ConflistError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.skiff-tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// The entry was added (or updated) in this file.
    Changed(PathBuf),
    /// It was already there as wanted.
    Unchanged(PathBuf),
    /// No CNI configuration exists yet (the primary network is not installed): retry later.
    NoPrimary,
}

/// Puts skiff's entry into the primary file of `dir`.
pub fn install(dir: &Path, entry: &Value) -> Result<Installed, ConflistError> {
    let Some(path) = primary_file(dir)? else {
        return Ok(Installed::NoPrimary);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    let invalid = |reason: String| ConflistError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    let Some(doc) = with_entry(&text, entry).map_err(invalid)? else {
        return Ok(Installed::Unchanged(path));
    };
    let mut bytes = serde_json::to_vec_pretty(&doc).map_err(|e| invalid(e.to_string()))?;
    bytes.push(b'\n');
    if path.extension().and_then(|e| e.to_str()) == Some("conflist") {
        write_atomic(&path, &bytes)?;
        return Ok(Installed::Changed(path));
    }
    // A .conf (or .json) holding one plugin: the list goes to <stem>.conflist, which sorts
    // where the .conf did for every runtime that reads both, and the .conf goes.
    let list = path.with_extension("conflist");
    write_atomic(&list, &bytes)?;
    std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
    Ok(Installed::Changed(list))
}

/// Takes skiff's entry out of every CNI file of `dir`; the files changed.
pub fn uninstall(dir: &Path) -> Result<Vec<PathBuf>, ConflistError> {
    let mut changed = Vec::new();
    let files = cni_files(dir)?;
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if let Ok(Some(doc)) = without_entry(&text) {
            let mut bytes = serde_json::to_vec_pretty(&doc).map_err(|e| io(&path, e))?;
            bytes.push(b'\n');
            write_atomic(&path, &bytes)?;
            changed.push(path);
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Value {
        json!({"type": "skiff-cni", "backend": "ebpf"})
    }

    #[test]
    fn the_entry_goes_last_once_and_the_others_stay_in_order() {
        let text = r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"calico"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
        let doc = with_entry(text, &entry()).expect("ok").expect("changed");
        let types: Vec<&str> = doc["plugins"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|p| p["type"].as_str())
            .collect();
        assert_eq!(types, ["calico", "portmap", "skiff-cni"]);
        let again = with_entry(&doc.to_string(), &entry()).expect("ok");
        assert_eq!(again, None, "idempotent");
        // A changed entry replaces the old one in place of last.
        let newer = json!({"type": "skiff-cni", "backend": "iptables"});
        let doc2 = with_entry(&doc.to_string(), &newer)
            .expect("ok")
            .expect("changed");
        assert_eq!(doc2["plugins"].as_array().map(Vec::len), Some(3));
        assert_eq!(doc2["plugins"][2], newer);
        let removed = without_entry(&doc2.to_string())
            .expect("ok")
            .expect("changed");
        assert_eq!(removed, serde_json::from_str::<Value>(text).expect("json"));
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list() {
        let doc = with_entry(
            r#"{"cniVersion":"0.4.0","name":"bridge-net","type":"bridge","bridge":"cni0"}"#,
            &entry(),
        )
        .expect("ok")
        .expect("changed");
        assert_eq!(doc["cniVersion"], "0.4.0");
        assert_eq!(doc["name"], "bridge-net");
        assert_eq!(
            doc["plugins"][0],
            json!({"type": "bridge", "bridge": "cni0"})
        );
        assert_eq!(doc["plugins"][1], entry());
        assert!(with_entry("[1]", &entry()).is_err());
        assert!(with_entry(r#"{"name":"x"}"#, &entry()).is_err());
    }
}
