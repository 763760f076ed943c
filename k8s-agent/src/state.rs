//! What ADD did, one small JSON file per attachment (container id + interface) in the state
//! directory, so that DEL, CHECK and GC act on exactly that, even after the pod's network
//! namespace is gone (the eBPF enrolment is keyed by the namespace's cookie, kept here).
//!
//! Plugin calls for different pods run at once; each one that changes the maps or the
//! state holds an exclusive lock on `<dir>/.lock` for its duration.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::netconf::Backend;

/// One attachment's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The sandbox's container id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS` at ADD.
    pub netns: String,
    /// The backend that captured it.
    pub backend: Backend,
    /// eBPF: the namespace's cookie, the key of `skiff_pods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<u64>,
    /// iptables: the arguments of `skiff iptables` that were applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iptables_args: Vec<String>,
    /// The pod's namespace.
    #[serde(default)]
    pub pod_namespace: String,
    /// The pod's name.
    #[serde(default)]
    pub pod_name: String,
    /// The pod's uid.
    #[serde(default)]
    pub pod_uid: String,
}

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
#[error("state directory {dir}: {what}: {reason}")]
pub struct StateError {
    dir: String,
    what: String,
    reason: String,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// The exclusive lock; released when dropped.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

impl StateDir {
    /// The directory at `dir` (created on first write).
    pub fn new(dir: &Path) -> StateDir {
        StateDir {
            dir: dir.to_path_buf(),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn error(&self, what: impl Into<String>, e: impl std::fmt::Display) -> StateError {
        StateError {
            dir: self.dir.display().to_string(),
            what: what.into(),
            reason: e.to_string(),
        }
    }

    /// Takes the exclusive lock, waiting for other plugin calls to finish.
    pub fn lock(&self) -> Result<Lock, StateError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.error("creating it", e))?;
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(".lock"))
            .map_err(|e| self.error("opening .lock", e))?;
        f.lock().map_err(|e| self.error("locking .lock", e))?;
        Ok(Lock(f))
    }

    /// The record's file: `<container id>.<ifname>.json`. Both are checked to be safe file
    /// name parts before this is called.
    fn file(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{container_id}.{ifname}.json"))
    }

    /// The record of an attachment, if ADD made one.
    pub fn read(&self, container_id: &str, ifname: &str) -> Result<Option<Attachment>, StateError> {
        let path = self.file(container_id, ifname);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.error(format!("decoding {}", path.display()), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error(format!("reading {}", path.display()), e)),
        }
    }

    /// Writes a record atomically (a crash leaves the old one or the new one).
    pub fn write(&self, a: &Attachment) -> Result<(), StateError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.error("creating it", e))?;
        let path = self.file(&a.container_id, &a.ifname);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(a).map_err(|e| self.error("encoding", e))?;
        std::fs::write(&tmp, bytes)
            .map_err(|e| self.error(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| self.error(format!("renaming to {}", path.display()), e))
    }

    /// Removes a record; a missing one is fine.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<(), StateError> {
        let path = self.file(container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.error(format!("removing {}", path.display()), e)),
        }
    }

    /// Every record (unreadable ones are reported, not fatal: GC must go on).
    pub fn list(&self) -> Result<Vec<Attachment>, StateError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.error("listing", e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Attachment>(&b).map_err(|e| e.to_string()))
            {
                Ok(a) => out.push(a),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable state record")
                }
            }
        }
        out.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        Ok(out)
    }
}

/// Whether `s` may be part of a state file's name: CNI container ids are alphanumerics
/// with `_`, `.` and `-` (spec: "Parameters"); interface names avoid `/` and NUL.
pub fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_removal_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("skiff-k8s-state-{}", std::process::id()));
        let s = StateDir::new(&dir);
        let a = Attachment {
            container_id: "abc123".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            backend: Backend::Ebpf,
            cookie: Some(42),
            iptables_args: vec![],
            pod_namespace: "default".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
        };
        let _lock = s.lock().expect("lock");
        s.write(&a).expect("write");
        assert_eq!(s.read("abc123", "eth0").expect("read"), Some(a.clone()));
        assert_eq!(s.list().expect("list"), vec![a]);
        s.remove("abc123", "eth0").expect("remove");
        s.remove("abc123", "eth0").expect("remove again");
        assert_eq!(s.read("abc123", "eth0").expect("read"), None);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(safe_name("3f2a_b.c-d") && !safe_name("../x") && !safe_name("a/b"));
    }
}
