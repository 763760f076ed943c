//! The demo's topology: a "pod" (a network namespace with its own cgroup v2 directory) and a
//! "remote host" (another network namespace), joined by a veth pair, with the processes the
//! demo starts in them and skiff's eBPF programs attached to the pod.
//!
//! Everything goes again in an order that leaves nothing behind (processes, skiff's
//! attachments, namespaces, cgroup): when the demo ends, when [`Pod`] is dropped on an error or
//! a panic, and, when this process is killed (Ctrl-C), by a reaper process of its own that
//! outlives it (`xtask _reap`, in its own process group so that Ctrl-C does not reach it).
//! One demo runs at a time (a lock on [`LOCK`]); what a demo killed outright left behind is
//! removed by the next one.

use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::which;
use crate::{bail, describe, Error, Result};

/// The pod's network namespace (`/var/run/netns/<name>`).
pub const POD_NS: &str = "skiff-demo-pod";
/// The remote host's network namespace.
pub const REMOTE_NS: &str = "skiff-demo-remote";
/// The pod's cgroup, under the cgroup v2 mount.
const CGROUP: &str = "skiff-demo";
/// The veth pair: the pod's end and the remote host's end (at most 15 characters each).
pub const VETH: (&str, &str) = ("skiff-demo-p", "skiff-demo-r");
/// Addresses: a private /24 and a unique-local /64 unlikely to clash with anything.
pub const POD_IP: &str = "10.203.0.2";
pub const REMOTE_IP: &str = "10.203.0.1";
pub const POD_IP6: &str = "fd00:203::2";
pub const REMOTE_IP6: &str = "fd00:203::1";
/// Held by the running demo, and by its reaper while that cleans up.
const LOCK: &str = "/run/skiff-demo.lock";

/// The cgroup v2 mount: the first `cgroup2` line of /proc/self/mounts (`/sys/fs/cgroup` on a
/// unified host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(dir))
        })
        .ok_or_else(|| Error("no cgroup v2 filesystem is mounted (eBPF capture needs one)".into()))
}

/// The pod's cgroup directory.
pub fn cgroup_dir() -> Result<PathBuf> {
    Ok(cgroup2_root()?.join(CGROUP))
}

/// `/var/run/netns/<name>`, the path `skiff ebpf` takes.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Where a copy of skiff goes when uid 1337 cannot reach the built one (a checkout under
/// /root, say).
pub fn copy_dir() -> PathBuf {
    std::env::temp_dir().join("skiff-demo")
}

/// `ip netns exec <ns> <args>`.
pub fn in_netns(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(ip());
    cmd.args(["netns", "exec", ns]).args(args);
    cmd
}

fn ip() -> PathBuf {
    which("ip").unwrap_or_else(|| "ip".into())
}

/// Runs a command; fails with its output if it does not exit 0; returns its stdout.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| Error(format!("cannot run {}: {e}", describe(cmd))))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn lock_file() -> Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .map_err(|e| Error(format!("cannot open {LOCK}: {e}")))
}

/// The demo's pod and remote host, and what runs in them.
pub struct Pod {
    /// The pod's cgroup v2 directory.
    pub cgroup: PathBuf,
    /// skiff as root runs it (`skiff ebpf attach/detach`).
    skiff: PathBuf,
    /// The reaper, and the pipe whose end tells it that this process is gone.
    reaper: Option<(Child, ChildStdin)>,
    torn_down: bool,
    _lock: File,
}

impl Pod {
    /// Takes the demo lock, removes what an earlier demo left, starts the reaper, and builds
    /// the namespaces, the veth pair and the cgroup.
    pub fn create(skiff: &Path) -> Result<Pod> {
        let lock = lock_file()?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                println!("another `cargo xtask demo` is running or cleaning up; waiting for it");
                lock.lock()?;
            }
            Err(TryLockError::Error(e)) => bail!("cannot lock {LOCK}: {e}"),
        }
        let cgroup = cgroup_dir()?;
        if cgroup.exists() || netns_exists(POD_NS) || netns_exists(REMOTE_NS) {
            println!("removing what an earlier demo left behind:");
            for line in teardown(&cgroup, skiff) {
                println!("  {line}");
            }
        }
        let mut reaper = Command::new(std::env::current_exe()?);
        reaper
            .arg("_reap")
            .arg(&cgroup)
            .arg(skiff)
            .stdin(Stdio::piped())
            .process_group(0);
        let mut child = reaper
            .spawn()
            .map_err(|e| Error(format!("cannot start the clean-up process: {e}")))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error("the clean-up process has no stdin".into()))?;
        let pod = Pod {
            cgroup,
            skiff: skiff.to_path_buf(),
            reaper: Some((child, stdin)),
            torn_down: false,
            _lock: lock,
        };
        pod.build()?;
        Ok(pod)
    }

    fn build(&self) -> Result {
        std::fs::create_dir(&self.cgroup).map_err(|e| {
            Error(format!(
                "cannot create cgroup {}: {e}",
                self.cgroup.display()
            ))
        })?;
        let ip = |args: &[&str]| output(Command::new(ip()).args(args)).map(drop);
        ip(&["netns", "add", POD_NS])?;
        ip(&["netns", "add", REMOTE_NS])?;
        ip(&[
            "link", "add", VETH.0, "netns", POD_NS, "type", "veth", "peer", "name", VETH.1,
            "netns", REMOTE_NS,
        ])?;
        for (ns, dev, v4, v6) in [
            (POD_NS, VETH.0, POD_IP, POD_IP6),
            (REMOTE_NS, VETH.1, REMOTE_IP, REMOTE_IP6),
        ] {
            // Links up before any address: an IPv6 address added while the carrier is down
            // loses the first SYN sent to it.
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
        }
        // The IPv6 source of the inbound passthrough (127.0.0.6 is loopback already), as
        // istio-iptables adds it.
        ip(&["-n", POD_NS, "addr", "add", "::6/128", "dev", "lo"])?;
        Ok(())
    }

    /// A command that joins the pod's cgroup, then its network namespace (in this order:
    /// `ip netns exec` remounts /sys, hiding the cgroup tree), then, with `uid`, drops to
    /// that uid and gid with no supplementary groups, and runs `args`.
    pub fn command(&self, uid: Option<u32>, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.cgroup)
            .arg(ip())
            .args(["netns", "exec", POD_NS]);
        if let Some(u) = uid {
            let u = u.to_string();
            cmd.args(["setpriv", "--reuid", &u, "--regid", &u, "--clear-groups"]);
        }
        cmd.args(args);
        cmd
    }

    /// `skiff ebpf <args>` as root; its output.
    pub fn skiff_ebpf(&self, args: &[&str]) -> Result<String> {
        output(
            Command::new(&self.skiff)
                .arg("ebpf")
                .args(args)
                .envs_cleared(),
        )
    }

    /// Removes everything; returns what it did, one line per step.
    pub fn teardown(&mut self) -> Vec<String> {
        self.torn_down = true;
        let lines = teardown(&self.cgroup, &self.skiff);
        self.dismiss_reaper();
        lines
    }

    fn dismiss_reaper(&mut self) {
        if let Some((mut child, mut stdin)) = self.reaper.take() {
            let _ = stdin.write_all(b"done\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if !self.torn_down {
            eprintln!("cleaning up the demo's pod:");
            for line in self.teardown() {
                eprintln!("  {line}");
            }
        }
        self.dismiss_reaper();
    }
}

/// Keeps the capture settings of the caller's environment (ISTIO_SERVICE_CIDR and the like,
/// which `skiff ebpf` reads as istio-iptables does) out of the demo's commands.
trait EnvsCleared {
    fn envs_cleared(&mut self) -> &mut Self;
}

impl EnvsCleared for Command {
    fn envs_cleared(&mut self) -> &mut Self {
        const VARS: &[&str] = &[
            "INBOUND_CAPTURE_PORT",
            "INBOUND_TUNNEL_PORT",
            "PROXY_UID",
            "PROXY_GID",
            "PROXY_MARK",
            "RUN_VALIDATION",
            "PROBE_TIMEOUT",
            "IPTABLES_PROBE_PORT",
        ];
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("ISTIO_") || VARS.contains(&k.as_ref()) {
                self.env_remove(k.as_ref());
            }
        }
        self
    }
}

/// Removes the demo's pod, found by its names (so the reaper and a later demo can too): kills
/// the processes, detaches skiff's programs, removes the namespaces (the veth pair goes with
/// them), the cgroup and the copy of skiff. Idempotent; never fails, but says what did.
pub fn teardown(cgroup: &Path, skiff: &Path) -> Vec<String> {
    let mut said = Vec::new();
    let mut killed = 0;
    if cgroup.exists() {
        killed += kill_cgroup(cgroup, &mut said);
    }
    for ns in [POD_NS, REMOTE_NS] {
        if netns_exists(ns) {
            killed += kill_netns(ns, &mut said);
        }
    }
    if killed > 0 {
        said.push(format!(
            "stopped {killed} processes in the pod and the remote host"
        ));
    }

    let mut detach: Vec<String> = vec!["ebpf".into(), "detach".into()];
    if cgroup.exists() {
        detach.extend(["--cgroup".into(), cgroup.display().to_string()]);
    }
    if netns_exists(POD_NS) {
        detach.extend(["--netns".into(), netns_path(POD_NS).display().to_string()]);
    }
    if detach.len() > 2 {
        let mut cmd = Command::new(skiff);
        cmd.args(&detach).envs_cleared();
        said.push(format!("$ skiff {}", detach.join(" ")));
        match cmd.output() {
            Ok(out) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                said.extend(text.lines().map(|l| format!("  {l}")));
                if !out.status.success() {
                    said.push(format!("  (skiff ebpf detach failed: {})", out.status));
                }
            }
            Err(e) => said.push(format!("  cannot run {}: {e}", skiff.display())),
        }
    }

    for ns in [POD_NS, REMOTE_NS] {
        if netns_exists(ns) {
            match output(Command::new(ip()).args(["netns", "del", ns])) {
                Ok(_) => said.push(format!("removed network namespace {ns}")),
                Err(e) => said.push(format!("{e:?}")),
            }
        }
    }
    if cgroup.exists() {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(cgroup) {
                Ok(()) => {
                    said.push(format!("removed cgroup {}", cgroup.display()));
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    said.push(format!("cannot remove cgroup {}: {e}", cgroup.display()));
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    let copy = copy_dir();
    if copy.exists() {
        match std::fs::remove_dir_all(&copy) {
            Ok(()) => said.push(format!("removed {}", copy.display())),
            Err(e) => said.push(format!("cannot remove {}: {e}", copy.display())),
        }
    }
    said
}

fn cgroup_procs(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in the cgroup and waits until it is empty; how many there were.
fn kill_cgroup(cgroup: &Path, said: &mut Vec<String>) -> usize {
    let first = cgroup_procs(cgroup).len();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = cgroup_procs(cgroup);
        if procs.is_empty() {
            return first;
        }
        if Instant::now() > deadline {
            said.push(format!(
                "processes {procs:?} are still in {}",
                cgroup.display()
            ));
            return first;
        }
        // cgroup.kill (Linux 5.14) takes new children too; `kill` the rest on older kernels.
        if std::fs::write(cgroup.join("cgroup.kill"), "1").is_err() {
            kill(&procs);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills every process in the network namespace and waits until none is left.
fn kill_netns(ns: &str, said: &mut Vec<String>) -> usize {
    let pids = |ns: &str| -> Vec<u32> {
        output(Command::new(ip()).args(["netns", "pids", ns]))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let first = pids(ns).len();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = pids(ns);
        if left.is_empty() {
            return first;
        }
        if Instant::now() > deadline {
            said.push(format!(
                "processes {left:?} are still in network namespace {ns}"
            ));
            return first;
        }
        kill(&left);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pids: &[u32]) {
    let mut cmd = Command::new("kill");
    cmd.arg("-KILL").args(pids.iter().map(u32::to_string));
    let _ = cmd.stderr(Stdio::null()).status();
}

/// `xtask _reap <cgroup> <skiff>`: waits for the demo to end (its stdin closes); unless the
/// demo said `done`, it was killed: remove its pod.
pub fn reap(args: &[String]) -> Result {
    let [cgroup, skiff] = args else {
        bail!("usage: xtask _reap <cgroup> <skiff>");
    };
    let mut said = String::new();
    let _ = std::io::stdin().read_to_string(&mut said);
    if said.trim() == "done" {
        return Ok(());
    }
    // The demo's own lock went with it; hold it so that a new demo waits for this.
    let lock = lock_file()?;
    lock.lock()?;
    let mut err = std::io::stderr();
    let _ = writeln!(err, "\nxtask demo was interrupted; cleaning up:");
    for line in teardown(Path::new(cgroup), Path::new(skiff)) {
        let _ = writeln!(err, "  {line}");
    }
    Ok(())
}
