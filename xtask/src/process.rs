//! Child processes that are always cleaned up, temporary directories, and `/proc` readings.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{bail, describe, Error, Result};

/// A command for a long-running child: wrapped in `setpriv --pdeathsig KILL` (util-linux)
/// when available, so the child dies with this process even if it is killed outright.
/// `setpriv` execs the program, so the child's pid is the program's.
pub fn guarded(program: impl AsRef<std::ffi::OsStr>) -> Command {
    match which("setpriv") {
        Some(setpriv) => {
            let mut cmd = Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// A running child process that is killed and reaped when dropped, so every exit path
/// (errors, panics) leaves nothing behind.
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Spawns `cmd`; `name` is used in messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        let child = cmd
            .spawn()
            .map_err(|e| Error(format!("cannot start {name} ({}): {e}", describe(cmd))))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child itself (for its piped stdin or stdout).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exit status if the process has already exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result {
        if let Some(st) = self.exited() {
            bail!("{} exited unexpectedly ({st})", self.name);
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit by itself; kills it after that.
    /// Returns the exit status if it exited on its own.
    pub fn wait_or_kill(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// Waits for the process to exit (no timeout).
    pub fn wait(&mut self) -> Result<ExitStatus> {
        Ok(self.child.wait()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos:08x}", std::process::id()));
        fs::create_dir_all(&dir)
            .map_err(|e| Error(format!("cannot create {}: {e}", dir.display())))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The last `n` lines of a file (for showing a crashed process's log).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether an executable called `name` is on `PATH` (or in the sbin directories, which a
/// non-login root shell may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `VmHWM` (peak resident set) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmHWM:") {
            let kib = v.trim().trim_end_matches("kB").trim();
            return Ok(kib.parse()?);
        }
    }
    bail!("no VmHWM in /proc/{pid}/status")
}

/// User plus system CPU time of a process (all its threads), in microseconds.
pub fn cpu_time_us(pid: u32) -> Result<u64> {
    let f = stat_fields(&format!("/proc/{pid}/stat"))?;
    Ok(ticks_to_us(f[0] + f[1]))
}

/// CPU time of this process plus that of its children that have been waited for, in µs.
pub fn self_and_children_cpu_us() -> Result<u64> {
    let f = stat_fields("/proc/self/stat")?;
    Ok(ticks_to_us(f[0] + f[1] + f[2] + f[3]))
}

/// utime, stime, cutime, cstime (fields 14–17) of a `/proc/…/stat` file, in ticks.
fn stat_fields(path: &str) -> Result<[u64; 4]> {
    let stat = fs::read_to_string(path)?;
    // The command name (field 2) may contain spaces; fields after it are plain.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| Error(format!("malformed {path}")))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')' comes field 3 (state), so field 14 (utime) is at index 11.
    let mut out = [0u64; 4];
    for (i, o) in out.iter_mut().enumerate() {
        let Some(v) = fields.get(11 + i) else {
            bail!("malformed {path}");
        };
        *o = v.parse()?;
    }
    Ok(out)
}

/// Converts clock ticks (`/proc` time units) to microseconds.
pub fn ticks_to_us(ticks: u64) -> u64 {
    ticks * 1_000_000 / clock_ticks_per_sec()
}

fn clock_ticks_per_sec() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// `N` distinct TCP ports on 127.0.0.1 that were free at the time of the call.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    // Hold every listener until all are chosen, so no port is handed out twice.
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for p in ports.iter_mut() {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        *p = l.local_addr()?.port();
        held.push(l);
    }
    Ok(ports)
}
