//! cgroup v2 directories for the eBPF tests: each test makes its own under the cgroup2 mount,
//! runs its pod's processes in it, and on drop kills whatever is left there and removes it,
//! even when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The cgroup v2 mount: `SKIFF_TESTS_CGROUP2` if set, else the first `cgroup2` mount in
/// /proc/self/mounts (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a hybrid
/// one).
pub fn cgroup2_root() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_TESTS_CGROUP2") {
        return PathBuf::from(p);
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(dir))
        })
        .expect("no cgroup2 filesystem is mounted (set SKIFF_TESTS_CGROUP2 to one)")
}

/// Kills every process in every cgroup this test process created (for a test that ran out of
/// time: whatever it waits on returns, so it can fail and clean up).
pub fn kill_all_of_this_process() {
    let prefix = format!("skiff-test-{}-", std::process::id());
    let Ok(entries) = std::fs::read_dir(cgroup2_root()) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
        }
    }
}

/// A cgroup v2 directory of one test; its processes are killed and it is removed on drop.
pub struct Cgroup {
    /// Its directory.
    pub path: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2 root>/skiff-test-<pid>-<n>-<tag>`; needs root.
    pub fn new(tag: &str) -> Cgroup {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = cgroup2_root().join(format!(
            "skiff-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        Cgroup { path }
    }

    /// Its id (the directory's inode), as `bpftool` and skiff's pins name it.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path)
            .expect("cgroup metadata")
            .ino()
    }

    /// The processes in it.
    pub fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// A command that joins this cgroup, then the network namespace `netns` (in this order:
    /// `ip netns exec` remounts /sys, hiding the cgroup tree), then, with `uid`, drops to that
    /// uid and gid with no supplementary groups, and runs `args`.
    pub fn command(&self, netns: &str, uid: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.path)
            .args(["ip", "netns", "exec", netns]);
        if let Some(u) = uid {
            cmd.args(["setpriv", "--reuid", u, "--regid", u, "--clear-groups"]);
        }
        cmd.args(args);
        cmd
    }

    /// Kills every process in it and waits until it is empty.
    pub fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = self.procs();
            if procs.is_empty() || Instant::now() > deadline {
                return;
            }
            // cgroup.kill (Linux 5.14) takes new children too; `kill` the rest on older kernels.
            if std::fs::write(self.path.join("cgroup.kill"), "1").is_err() {
                for p in procs {
                    let _ = Command::new("kill").args(["-9", &p.to_string()]).output();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn remove(path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while path.exists() {
            match std::fs::remove_dir(path) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("cannot remove cgroup {}: {e}", path.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        Cgroup::remove(&self.path);
    }
}
