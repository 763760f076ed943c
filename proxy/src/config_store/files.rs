//! Following files as Envoy's filesystem subscriptions do: a new version is picked up when a
//! file is *moved* into place (write elsewhere, then rename), never half-written. With a
//! `watched_directory`, any move into that directory reloads the file (Kubernetes swaps a
//! ConfigMap's files through a `..data` symlink).
//!
//! One inotify instance watches every directory (the kernel allows few instances per user, and
//! a directory is watched once however many sources live in it); one task reads its events and
//! tells the main loop which sources changed.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;
use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::model::{ConfigSource, SourceKind};

/// A source whose file was replaced.
#[derive(Debug, Clone)]
pub struct FileEvent {
    /// The source to read again.
    pub source: ConfigSource,
}

/// The sources followed in each watched directory: with a file name, a move of that name;
/// without (a `watched_directory`), any move.
type Routes = HashMap<WatchDescriptor, Vec<(Option<OsString>, ConfigSource)>>;

/// The watches in force.
pub struct Watchers {
    events: mpsc::UnboundedSender<FileEvent>,
    running: Option<Running>,
    sources: HashSet<ConfigSource>,
}

struct Running {
    watches: Watches,
    routes: Arc<Mutex<Routes>>,
    dirs: HashMap<PathBuf, WatchDescriptor>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchers")
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.task.abort();
        }
    }
}

/// The directory to watch for `src`, and the file name to look for in it (none: any); none
/// for a source that is not a file.
fn target(src: &ConfigSource) -> Option<(PathBuf, Option<OsString>)> {
    let SourceKind::File {
        path,
        watched_directory,
    } = &src.kind
    else {
        return None;
    };
    Some(match watched_directory {
        Some(d) => (d.clone(), None),
        None => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| ".".into(), |p| p.to_path_buf());
            (dir, path.file_name().map(|n| n.to_os_string()))
        }
    })
}

impl Watchers {
    /// No watches yet; events go to `events`.
    pub fn new(events: mpsc::UnboundedSender<FileEvent>) -> Self {
        Watchers {
            events,
            running: None,
            sources: HashSet::new(),
        }
    }

    /// Starts the inotify instance and its reader, once, inside a tokio runtime.
    fn running(&mut self) -> Option<&mut Running> {
        if self.running.is_none() && tokio::runtime::Handle::try_current().is_ok() {
            let inotify = match Inotify::init() {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!(error = %e, "cannot follow configuration files: inotify");
                    return None;
                }
            };
            let watches = inotify.watches();
            let stream = match inotify.into_event_stream(vec![0u8; 16 * 1024]) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot follow configuration files");
                    return None;
                }
            };
            let routes: Arc<Mutex<Routes>> = Arc::default();
            let task = tokio::spawn(dispatch(stream, routes.clone(), self.events.clone()));
            self.running = Some(Running {
                watches,
                routes,
                dirs: HashMap::new(),
                task,
            });
        }
        self.running.as_mut()
    }

    /// Starts following `src` (once). Outside a tokio runtime nothing is followed.
    pub fn watch(&mut self, src: &ConfigSource) {
        if self.sources.contains(src) {
            return;
        }
        let Some((dir, name)) = target(src) else {
            return;
        };
        let Some(r) = self.running() else { return };
        let wd = match r.dirs.get(&dir) {
            Some(wd) => wd.clone(),
            None => match r.watches.add(&dir, WatchMask::MOVED_TO) {
                Ok(wd) => {
                    r.dirs.insert(dir.clone(), wd.clone());
                    wd
                }
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot follow configuration directory");
                    return;
                }
            },
        };
        r.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(wd)
            .or_default()
            .push((name, src.clone()));
        self.sources.insert(src.clone());
    }

    /// Stops following the sources not in `used` (and the directories left with none).
    pub fn retain(&mut self, used: &HashSet<ConfigSource>) {
        self.sources.retain(|s| used.contains(s));
        let Some(r) = self.running.as_mut() else {
            return;
        };
        let mut routes = r.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.retain(|_, sources| {
            sources.retain(|(_, s)| used.contains(s));
            !sources.is_empty()
        });
        let live: HashSet<&WatchDescriptor> = routes.keys().collect();
        let gone: Vec<PathBuf> = r
            .dirs
            .iter()
            .filter(|(_, wd)| !live.contains(wd))
            .map(|(d, _)| d.clone())
            .collect();
        for dir in gone {
            if let Some(wd) = r.dirs.remove(&dir) {
                let _ = r.watches.remove(wd);
            }
        }
    }
}

async fn dispatch(
    mut stream: inotify::EventStream<Vec<u8>>,
    routes: Arc<Mutex<Routes>>,
    events: mpsc::UnboundedSender<FileEvent>,
) {
    while let Some(ev) = stream.next().await {
        let Ok(ev) = ev else { continue };
        let hits: Vec<ConfigSource> = {
            let routes = routes.lock().unwrap_or_else(PoisonError::into_inner);
            routes
                .get(&ev.wd)
                .map(|sources| {
                    sources
                        .iter()
                        .filter(|(name, _)| name.is_none() || name.as_deref() == ev.name.as_deref())
                        .map(|(_, s)| s.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        for source in hits {
            if events.send(FileEvent { source }).is_err() {
                return;
            }
        }
    }
}
