//! The layered runtime in force (Envoy's `Runtime::Loader`). The main thread owns the
//! [`Loader`]: it reads disk layers again when a new target is moved onto their symlink, takes
//! the admin layer's changes (`POST /runtime_modify`) and RTDS resources, and publishes the
//! merged values as one immutable snapshot. Streams read the snapshot in force when they
//! start ([`snapshot`]), as Envoy's workers read their thread-local copy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use serde_json::json;

use crate::config::runtime::{check_key, Entry, Layer, LayerKind, Values};
use crate::stats::Shard;

static CURRENT: LazyLock<ArcSwap<Values>> =
    LazyLock::new(|| ArcSwap::from_pointee(Values::default()));

/// The runtime values in force.
pub fn snapshot() -> arc_swap::Guard<Arc<Values>> {
    CURRENT.load()
}

/// Whether a runtime feature flag is on: no flag, on; a flag reads the values in force (only
/// then, so streams without one never touch them).
pub fn flag_on(flag: Option<&crate::config::runtime::RuntimeFlag>) -> bool {
    flag.is_none_or(|f| f.enabled(&snapshot()))
}

/// How deep a disk layer's directories are read (Envoy's `MaxWalkDepth`).
const MAX_DEPTH: u32 = 16;

/// One layer and the values it holds now.
#[derive(Debug)]
struct LayerState {
    layer: Layer,
    values: BTreeMap<String, Entry>,
    /// A disk layer whose directory does not exist is left out, as Envoy leaves it out.
    present: bool,
}

/// Why `/runtime_modify` refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ModifyError {
    /// The bootstrap has no admin layer (Envoy's 503).
    NoAdminLayer,
    /// A key skiff does not honour from this layer (400).
    Refused(String),
}

/// The runtime's layers and the values they hold.
#[derive(Debug)]
pub struct Loader {
    layers: Vec<LayerState>,
    service_cluster: String,
    stats: Arc<Shard>,
    /// `runtime.unhonoured_keys` exists (skiff's own gauge, made only once it has a count).
    unhonoured_shown: bool,
}

impl Loader {
    /// The layers of the bootstrap, read and published.
    pub fn new(layers: &[Layer], service_cluster: &str, stats: Arc<Shard>) -> Loader {
        let mut l = Loader {
            layers: layers
                .iter()
                .map(|layer| LayerState {
                    values: match &layer.kind {
                        LayerKind::Static(v) => v.clone(),
                        _ => BTreeMap::new(),
                    },
                    layer: layer.clone(),
                    present: !matches!(layer.kind, LayerKind::Disk { .. }),
                })
                .collect(),
            service_cluster: service_cluster.to_string(),
            stats,
            unhonoured_shown: false,
        };
        for name in [
            "runtime.admin_overrides_active",
            "runtime.num_keys",
            "runtime.num_layers",
            "runtime.deprecated_feature_seen_since_process_start",
        ] {
            l.stats.gauge(name);
        }
        for name in [
            "runtime.load_error",
            "runtime.load_success",
            "runtime.override_dir_exists",
            "runtime.override_dir_not_exists",
            "runtime.deprecated_feature_use",
        ] {
            l.stats.counter(name);
        }
        l.load();
        l
    }

    /// Reads the disk layers again and publishes (Envoy's `loadNewSnapshot`).
    pub fn load(&mut self) {
        let mut errors = 0;
        let mut override_dir = None;
        for s in &mut self.layers {
            let LayerKind::Disk {
                symlink_root,
                subdirectory,
                append_service_cluster,
            } = &s.layer.kind
            else {
                continue;
            };
            let mut dir = symlink_root.join(subdirectory);
            if *append_service_cluster {
                dir = dir.join(&self.service_cluster);
                override_dir = Some(override_dir.unwrap_or(false) || dir.is_dir());
            }
            s.values = BTreeMap::new();
            s.present = dir.is_dir();
            if s.present {
                if let Err(e) = walk(&dir, "", 1, &mut s.values) {
                    tracing::warn!(layer = %s.layer.name, error = %e, "runtime disk layer not read");
                    s.values = BTreeMap::new();
                    errors += 1;
                }
            }
        }
        match override_dir {
            Some(true) => self.stats.counter("runtime.override_dir_exists").inc(),
            _ => self.stats.counter("runtime.override_dir_not_exists").inc(),
        }
        if errors > 0 {
            self.stats.counter("runtime.load_error").inc();
        } else {
            self.stats.counter("runtime.load_success").inc();
        }
        self.publish();
    }

    /// Merges the layers, publishes the result and updates the stats.
    fn publish(&mut self) {
        let values = Values::merge(self.present().map(|s| &s.values));
        self.stats
            .gauge("runtime.num_keys")
            .set(values.len() as i64);
        self.stats
            .gauge("runtime.num_layers")
            .set(self.present().count() as i64);
        let unhonoured = self
            .layers
            .iter()
            .filter(|s| !matches!(s.layer.kind, LayerKind::Static(_)))
            .flat_map(|s| s.values.iter())
            .filter(|(k, e)| check_key(k, &e.raw, false).is_err())
            .count();
        if unhonoured > 0 || self.unhonoured_shown {
            self.unhonoured_shown = true;
            self.stats
                .gauge("runtime.unhonoured_keys")
                .set(unhonoured as i64);
        }
        CURRENT.store(Arc::new(values));
    }

    /// The layers in force, in order.
    fn present(&self) -> impl Iterator<Item = &LayerState> {
        self.layers.iter().filter(|s| s.present)
    }

    /// `POST /runtime_modify`: each key set in the admin layer, or removed from it when its
    /// value is empty. Nothing changes unless every key is one skiff honours.
    pub fn modify(&mut self, changes: &[(String, String)]) -> Result<(), ModifyError> {
        let Some(admin) = self
            .layers
            .iter_mut()
            .find(|s| matches!(s.layer.kind, LayerKind::Admin))
        else {
            return Err(ModifyError::NoAdminLayer);
        };
        for (k, v) in changes {
            if !v.is_empty() {
                check_key(k, v, false).map_err(ModifyError::Refused)?;
            }
        }
        for (k, v) in changes {
            if v.is_empty() {
                admin.values.remove(k);
            } else {
                admin.values.insert(k.clone(), Entry::new(v.clone()));
            }
        }
        let active = !admin.values.is_empty();
        self.stats
            .gauge("runtime.admin_overrides_active")
            .set(i64::from(active));
        self.stats.counter("runtime.load_success").inc();
        self.publish();
        Ok(())
    }

    /// The RTDS resources the layers subscribe to, with their sources.
    pub fn rtds(&self) -> Vec<(String, crate::config::model::ConfigSource)> {
        self.layers
            .iter()
            .filter_map(|s| match &s.layer.kind {
                LayerKind::Rtds { resource, source } => Some((resource.clone(), source.clone())),
                _ => None,
            })
            .collect()
    }

    /// An RTDS resource arrived (or was removed: empty values): the layers that name it take
    /// its values.
    pub fn set_rtds(&mut self, resource: &str, values: BTreeMap<String, Entry>) {
        for s in &mut self.layers {
            if matches!(&s.layer.kind, LayerKind::Rtds { resource: r, .. } if r == resource) {
                s.values = values.clone();
            }
        }
        self.stats.counter("runtime.load_success").inc();
        self.publish();
    }

    /// `GET /runtime`: the layers' names, and each key's value in every layer and in force.
    pub fn dump(&self) -> serde_json::Value {
        let merged = snapshot();
        let mut entries = serde_json::Map::new();
        let keys: std::collections::BTreeSet<&String> =
            self.present().flat_map(|s| s.values.keys()).collect();
        for k in keys {
            let layer_values: Vec<&str> = self
                .present()
                .map(|s| s.values.get(k).map_or("", |e| e.raw.as_str()))
                .collect();
            entries.insert(
                k.clone(),
                json!({
                    "final_value": merged.get(k).unwrap_or(""),
                    "layer_values": layer_values,
                }),
            );
        }
        let layers: Vec<&str> = self.present().map(|s| s.layer.name.as_str()).collect();
        json!({ "entries": entries, "layers": layers })
    }

    /// The symlinks of the disk layers, each followed in its parent directory.
    fn symlinks(&self) -> Vec<PathBuf> {
        self.layers
            .iter()
            .filter_map(|s| match &s.layer.kind {
                LayerKind::Disk { symlink_root, .. } => Some(symlink_root.clone()),
                _ => None,
            })
            .collect()
    }
}

/// One disk layer directory: each regular file a key (its path below the layer, dots for
/// slashes), its text the value: lines starting with `#` left out, the last line's trailing
/// whitespace removed (Envoy's `DiskLayer`).
fn walk(
    dir: &Path,
    prefix: &str,
    depth: u32,
    out: &mut BTreeMap<String, Entry>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("Walk recursion depth exceeded {MAX_DEPTH}"));
    }
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in rd {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let Ok(ft) = entry.file_type() else { continue };
        let path = entry.path();
        if ft.is_dir() {
            walk(&path, &key, depth + 1, out)?;
        } else if ft.is_file() {
            let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            out.insert(key, Entry::new(file_value(&String::from_utf8_lossy(&text))));
        }
    }
    Ok(())
}

/// A runtime file's value: its text without comment lines, the last line's trailing
/// whitespace removed.
pub fn file_value(text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
    let mut value = String::new();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if i + 1 == lines.len() {
            value.push_str(line.trim_end());
        } else {
            value.push_str(line);
            value.push('\n');
        }
    }
    value
}

/// Follows the disk layers' symlinks: a target moved onto one (Envoy's `MovedTo` watch) reads
/// the layers again. Runs until the process ends; nothing to follow, nothing runs.
pub fn follow(loader: Arc<Mutex<Loader>>) {
    let links = loader
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .symlinks();
    if links.is_empty() {
        return;
    }
    let inotify = match inotify::Inotify::init() {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow runtime disk layers: inotify");
            return;
        }
    };
    let mut names = Vec::new();
    for link in &links {
        let dir = match link.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match inotify.watches().add(&dir, inotify::WatchMask::MOVED_TO) {
            Ok(wd) => names.push((wd, link.file_name().map(|n| n.to_os_string()))),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot follow runtime disk layer")
            }
        }
    }
    let mut stream = match inotify.into_event_stream(vec![0u8; 4096]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow runtime disk layers");
            return;
        }
    };
    tokio::spawn(async move {
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            let hit = names
                .iter()
                .any(|(wd, name)| *wd == ev.wd && name.as_deref() == ev.name.as_deref());
            if hit {
                loader.lock().unwrap_or_else(PoisonError::into_inner).load();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::runtime::LayerKind;

    fn layer(name: &str, kind: LayerKind) -> Layer {
        Layer {
            name: name.into(),
            kind,
        }
    }

    #[test]
    fn file_values_drop_comments_and_trailing_space() {
        assert_eq!(file_value(" 30 \n"), " 30");
        assert_eq!(file_value("# placeholder\n"), "");
        assert_eq!(file_value("a\n#c\nb  \n"), "a\nb");
    }

    #[test]
    fn layers_merge_modify_and_dump_as_envoy() {
        let dir = std::env::temp_dir().join(format!("skiff-runtime-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("v1/envoy/routing")).expect("mkdir");
        std::fs::write(dir.join("v1/envoy/routing/shift"), "30\n").expect("write");
        std::fs::write(dir.join("v1/envoy/k"), "disk\n").expect("write");
        std::os::unix::fs::symlink(dir.join("v1"), dir.join("current")).expect("symlink");
        let stat: BTreeMap<String, Entry> = [("k".into(), Entry::new("static".into()))].into();
        let layers = [
            layer("s", LayerKind::Static(stat)),
            layer(
                "d",
                LayerKind::Disk {
                    symlink_root: dir.join("current"),
                    subdirectory: "envoy".into(),
                    append_service_cluster: false,
                },
            ),
            layer("a", LayerKind::Admin),
        ];
        let shard = Arc::new(Shard::default());
        let mut l = Loader::new(&layers, "", shard.clone());
        assert_eq!(snapshot().get("k"), Some("disk"));
        assert_eq!(snapshot().integer("routing.shift", 0), 30);
        l.modify(&[("k".into(), "admin".into())]).expect("modify");
        assert_eq!(snapshot().get("k"), Some("admin"));
        let d = l.dump();
        assert_eq!(d["layers"], json!(["s", "d", "a"]));
        assert_eq!(
            d["entries"]["k"],
            json!({"final_value": "admin", "layer_values": ["static", "disk", "admin"]})
        );
        assert_eq!(
            l.modify(&[("envoy.made.up".into(), "1".into())]),
            Err(ModifyError::Refused(
                "skiff does not honour runtime key 'envoy.made.up'".into()
            ))
        );
        l.modify(&[("k".into(), String::new())]).expect("remove");
        assert_eq!(snapshot().get("k"), Some("disk"));
        assert_eq!(shard.gauge("runtime.admin_overrides_active").value(), 0);
        assert_eq!(shard.gauge("runtime.num_layers").value(), 3);
        let _ = std::fs::remove_dir_all(&dir);
        let mut none = Loader::new(&[], "", Arc::new(Shard::default()));
        assert_eq!(none.modify(&[]), Err(ModifyError::NoAdminLayer));
    }
}
