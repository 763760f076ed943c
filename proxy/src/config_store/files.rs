//! Following files as Envoy's filesystem subscriptions do: a new version is picked up when a
//! file is *moved* into place (write elsewhere, then rename), never half-written. With a
//! `watched_directory`, any move into that directory reloads the file (Kubernetes swaps a
//! ConfigMap's files through a `..data` symlink).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::model::ConfigSource;

/// A source whose file was replaced.
#[derive(Debug, Clone)]
pub struct FileEvent {
    /// The source to read again.
    pub source: ConfigSource,
}

/// The watches in force, one task per source.
#[derive(Debug)]
pub struct Watchers {
    events: mpsc::UnboundedSender<FileEvent>,
    tasks: HashMap<ConfigSource, JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

impl Watchers {
    /// No watches yet; events go to `events`.
    pub fn new(events: mpsc::UnboundedSender<FileEvent>) -> Self {
        Watchers {
            events,
            tasks: HashMap::new(),
        }
    }

    /// Starts following `src` (once). Outside a tokio runtime nothing is followed.
    pub fn watch(&mut self, src: &ConfigSource) {
        if self.tasks.contains_key(src) || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (dir, name) = match &src.watched_directory {
            Some(d) => (d.clone(), None),
            None => {
                let dir = src
                    .path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| ".".into(), |p| p.to_path_buf());
                (dir, src.path.file_name().map(|n| n.to_os_string()))
            }
        };
        let task = tokio::spawn(follow(src.clone(), dir, name, self.events.clone()));
        self.tasks.insert(src.clone(), task);
    }

    /// Stops following the sources not in `used`.
    pub fn retain(&mut self, used: &HashSet<ConfigSource>) {
        self.tasks.retain(|src, task| {
            let keep = used.contains(src);
            if !keep {
                task.abort();
            }
            keep
        });
    }
}

async fn follow(
    source: ConfigSource,
    dir: std::path::PathBuf,
    name: Option<OsString>,
    events: mpsc::UnboundedSender<FileEvent>,
) {
    let inotify = match Inotify::init() {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow configuration files: inotify");
            return;
        }
    };
    if let Err(e) = inotify.watches().add(&dir, WatchMask::MOVED_TO) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot follow configuration directory");
        return;
    }
    let mut stream = match inotify.into_event_stream(vec![0u8; 4096]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow configuration files");
            return;
        }
    };
    while let Some(ev) = stream.next().await {
        let Ok(ev) = ev else { continue };
        let ours = match (&name, &ev.name) {
            (None, _) => true,
            (Some(want), Some(got)) => want == got,
            (Some(_), None) => false,
        };
        if ours
            && events
                .send(FileEvent {
                    source: source.clone(),
                })
                .is_err()
        {
            return;
        }
    }
}
