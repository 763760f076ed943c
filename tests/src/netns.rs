//! Network namespaces for tests that need root (iptables, transparent capture): each test
//! creates its own and removes it, with every process it started in it, even when it fails.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The proxy's uid and gid in capture tests, as in Istio.
pub const PROXY_UID: &str = "1337";

/// `skiff iptables` flags of an Istio sidecar as istio-iptables takes them: outbound to 15001,
/// inbound to 15006, the proxy's uid exempt, REDIRECT, every address and port captured but
/// Istio's own ports.
pub const SIDECAR_FLAGS: &[&str] = &[
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    PROXY_UID,
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
];

/// A network namespace with its processes; removed with them on drop, even when a test fails.
pub struct Netns {
    /// The namespace's name.
    pub name: String,
    children: Vec<Child>,
    /// A scratch directory for its files and logs.
    pub dir: PathBuf,
}

impl Netns {
    /// A new namespace with loopback up; needs root.
    pub fn new(tag: &str) -> Netns {
        let uid = Command::new("id").arg("-u").output().expect("run id -u");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "capture tests need root (network namespaces and iptables); CI runs as root"
        );
        crate::require_program("ip", "apt-get install iproute2");
        crate::require_program("iptables", "apt-get install iptables");
        crate::require_program("setpriv", "apt-get install util-linux");
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "skiff-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            dir: crate::scratch_dir(&name),
            name,
            children: Vec::new(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's path, for tools that take one (`nsenter --net`, `--network-namespace`).
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// A command to run inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs a command in the namespace and requires success.
    pub fn exec(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    /// Starts a long-running process in the namespace, its output in `<dir>/<log>`.
    pub fn spawn(&mut self, args: &[&str], log: &str) {
        let cmd = self.command(args);
        self.spawn_command(cmd, log);
    }

    /// Starts `cmd`, which enters this namespace itself (for example through a cgroup first,
    /// see [`crate::cgroup::Cgroup::command`]), its output in `<dir>/<log>`; it is killed with
    /// the namespace.
    pub fn spawn_command(&mut self, mut cmd: Command, log: &str) {
        let out = std::fs::File::create(self.dir.join(log)).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        self.children.push(child);
    }

    /// A log file's contents.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// `curl` inside the namespace: (status code, body).
    pub fn curl(&self, url: &str) -> (String, String) {
        let out = self
            .command(&["curl", "-s", "-m", "5", "-w", "\n%{http_code}", url])
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_string(), body.to_string())
    }

    /// A counter from the proxy's admin on 127.0.0.1:15000.
    pub fn stat(&self, name: &str) -> u64 {
        let (_, body) = self.curl("http://127.0.0.1:15000/stats");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits for the admin on 127.0.0.1:15000 to answer /ready.
    pub fn wait_ready(&self, what: &str, proxy_log: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.curl("http://127.0.0.1:15000/ready").0 == "200" {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what} did not become ready:\n{}", self.log(proxy_log));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command and requires success.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `skiff iptables <args>` inside the namespace; success is up to the caller.
pub fn skiff_iptables(ns: &Netns, args: &[&str]) -> Output {
    let bin = crate::proxy::Kind::Skiff.binary();
    let mut cmd: Command = ns.command(&[&bin.to_string_lossy(), "iptables"]);
    cmd.args(args).output().expect("run skiff iptables")
}

/// A command's stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The client's and the app's ends of the veth pair [`pair`] makes for `tag`.
pub fn veth_names(tag: &str) -> (String, String) {
    let id = std::process::id() % 100_000;
    (format!("{tag}c{id}"), format!("{tag}a{id}"))
}

/// Two namespaces joined by a veth pair: the client at 10.99.0.1 and the app at 10.99.0.2.
pub fn pair(tag: &str) -> (Netns, Netns) {
    let client = Netns::new(&format!("{tag}c"));
    let app = Netns::new(&format!("{tag}a"));
    let (vc, va) = veth_names(tag);
    run(Command::new("ip").args([
        "link",
        "add",
        &vc,
        "netns",
        &client.name,
        "type",
        "veth",
        "peer",
        "name",
        &va,
        "netns",
        &app.name,
    ]));
    client.exec(&["ip", "addr", "add", "10.99.0.1/24", "dev", &vc]);
    client.exec(&["ip", "link", "set", &vc, "up"]);
    app.exec(&["ip", "addr", "add", "10.99.0.2/24", "dev", &va]);
    app.exec(&["ip", "link", "set", &va, "up"]);
    (client, app)
}
