//! Configurations that follow their files: when a certificate, key or CA file changes (Istio
//! and cert-manager rotate them in place or by swapping a symlink), the configuration is built
//! again for new connections; live connections keep the one they started with. A file that
//! does not build (a key written before its certificate, say) leaves the old configuration in
//! use until the files change again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::TlsError;

/// How often the files are looked at, at most.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

type Build<T> = Box<dyn Fn() -> Result<Arc<T>, TlsError> + Send + Sync>;

/// What identifies a file's content without reading it: modification time, size, inode.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(p: &PathBuf) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

struct Check {
    next: Instant,
    stamps: Vec<Stamp>,
}

/// A configuration built from `files`, rebuilt when they change.
pub struct Watched<T> {
    build: Build<T>,
    files: Vec<PathBuf>,
    check: Mutex<Check>,
    current: RwLock<Arc<T>>,
    /// What this configuration is, for the log.
    what: String,
}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("what", &self.what)
            .field("files", &self.files)
            .finish()
    }
}

impl<T> Watched<T> {
    /// Builds the configuration now (an error here is a configuration error).
    pub fn new(
        what: impl Into<String>,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<Arc<T>, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let stamps = files.iter().map(stamp).collect();
        let first = build()?;
        Ok(Watched {
            build: Box::new(build),
            files,
            check: Mutex::new(Check {
                next: Instant::now() + CHECK_EVERY,
                stamps,
            }),
            current: RwLock::new(first),
            what: what.into(),
        })
    }

    /// The configuration for a new connection. At most once per [`CHECK_EVERY`] one caller
    /// looks at the files (others go on with the current configuration meanwhile).
    pub fn get(&self) -> Arc<T> {
        if !self.files.is_empty() {
            if let Ok(mut check) = self.check.try_lock() {
                let now = Instant::now();
                if now >= check.next {
                    check.next = now + CHECK_EVERY;
                    self.refresh(&mut check);
                }
            }
        }
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn refresh(&self, check: &mut Check) {
        let stamps: Vec<Stamp> = self.files.iter().map(stamp).collect();
        if stamps == check.stamps {
            return;
        }
        check.stamps = stamps;
        match (self.build)() {
            Ok(new) => {
                match self.current.write() {
                    Ok(mut c) => *c = new,
                    Err(poisoned) => *poisoned.into_inner() = new,
                }
                tracing::info!(tls = %self.what, "certificates reloaded");
            }
            Err(e) => {
                tracing::warn!(tls = %self.what, error = %e, "certificates changed but do not load; keeping the previous ones");
            }
        }
    }
}

/// A [`Watched`] configuration that can be replaced as a whole while connections use it: an
/// SDS secret rotation swaps in the configuration built from the new secret, new handshakes
/// take it, and the chain or cluster that holds it (and their connections) stay as they are.
pub struct Rotating<T>(arc_swap::ArcSwap<Watched<T>>);

impl<T> std::fmt::Debug for Rotating<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.load().fmt(f)
    }
}

impl<T> Rotating<T> {
    /// Starts with `w`.
    pub fn new(w: Watched<T>) -> Self {
        Rotating(arc_swap::ArcSwap::from_pointee(w))
    }

    /// The configuration for a new connection.
    pub fn get(&self) -> Arc<T> {
        self.0.load().get()
    }

    /// Takes `other`'s configuration from now on.
    pub fn rotate_from(&self, other: &Rotating<T>) {
        self.0.store(other.0.load_full());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn follows_its_file_and_keeps_the_last_good_configuration() {
        let dir = std::env::temp_dir().join(format!("skiff-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("value");
        std::fs::write(&file, "1").expect("write");
        let builds = Arc::new(AtomicUsize::new(0));
        let (f, b) = (file.clone(), builds.clone());
        let w = Watched::new("test", vec![file.clone()], move || {
            b.fetch_add(1, Ordering::SeqCst);
            let text = std::fs::read_to_string(&f).map_err(|e| TlsError::Pem(e.to_string()))?;
            text.trim()
                .parse::<u32>()
                .map(Arc::new)
                .map_err(|e| TlsError::Pem(e.to_string()))
        })
        .expect("first build");
        assert_eq!(*w.get(), 1);

        let force = |w: &Watched<u32>| {
            w.check.lock().expect("lock").next = Instant::now();
            w.get()
        };
        // Unchanged: not built again.
        assert_eq!(*force(&w), 1);
        assert_eq!(builds.load(Ordering::SeqCst), 1);

        std::fs::write(&file, "22").expect("write");
        assert_eq!(*force(&w), 22);
        std::fs::write(&file, "not a number").expect("write");
        assert_eq!(*force(&w), 22, "a bad file keeps the last good one");
        let after_bad = builds.load(Ordering::SeqCst);
        assert_eq!(*force(&w), 22);
        assert_eq!(
            builds.load(Ordering::SeqCst),
            after_bad,
            "not retried until it changes"
        );
        std::fs::write(&file, "333").expect("write");
        assert_eq!(*force(&w), 333);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
