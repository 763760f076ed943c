//! skiff's eBPF redirection end to end, with real traffic: a "pod" (its own network namespace
//! and cgroup, skiff inside as uid 1337, an app) joined by a veth pair to a "remote host"
//! namespace; `skiff ebpf attach` on the pod's cgroup and namespace; then outbound over IPv4,
//! IPv6 and a v4-mapped dual-stack socket, the exclusions, inbound with the client's address,
//! 10,000 connections leaving no map entry, `iptables` inside the pod, idempotent attach and a
//! detach that leaves nothing behind, and an unmodified Envoy 1.40 behind the same programs.
//!
//! Needs root (CI runs as root); without it every test says so and stops. The tests share
//! skiff's pinned maps under /sys/fs/bpf/skiff, so they hold one lock and run one at a time;
//! each detaches only what it attached, and removes its processes, namespaces and cgroup even
//! when it fails (then printing skiff's log, the app and upstream logs and `skiff ebpf status`).
//! Each test has its own subnet, 10.91.<n>.0/24 and fd91:<n>::/64.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_tests::cgroup::Cgroup;
use skiff_tests::netns::{run, Netns, PROXY_UID};
use skiff_tests::proxy::Kind;

/// Where skiff pins everything.
const PIN_ROOT: &str = "/sys/fs/bpf/skiff";

/// The flags every test attaches with (istio-iptables' meaning: capture every outbound CIDR
/// and every inbound port).
const CAPTURE_ALL: &[&str] = &["-i", "*", "-b", "*"];

/// One eBPF test at a time: they share skiff's pinned maps and counters.
static EBPF: Mutex<()> = Mutex::new(());

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}

/// Runs `body` holding the eBPF lock, under a time limit that does not count the wait for
/// the lock. Without root it says why and returns (in CI, where tests run as root, it fails).
fn ebpf_test(name: &'static str, limit: Duration, body: impl FnOnce() + Send + 'static) {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name}: the eBPF tests need root, and CI runs them as root"
        );
        eprintln!("skipping {name}: the eBPF tests need root (CI runs them as root)");
        return;
    }
    let _lock = EBPF.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let body = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            body();
            let _ = tx.send(());
        })
        .expect("test thread");
    match rx.recv_timeout(limit) {
        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
            if let Err(panic) = body.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(RecvTimeoutError::Timeout) => {
            // Unblock it (what it waits on runs in its pod's cgroup) so that it fails and
            // cleans up before this panics.
            eprintln!("{name} did not finish within {limit:?}: killing its pod's processes");
            skiff_tests::cgroup::kill_all_of_this_process();
            let _ = rx.recv_timeout(Duration::from_secs(30));
            if body.is_finished() {
                let _ = body.join();
            }
            panic!("{name} did not finish within {limit:?}");
        }
    }
    eprintln!("{name}: {:.1?}", started.elapsed());
}

/// Polls `ok` every 50 ms until it holds, or panics after `limit` with `what`.
fn wait_for(what: impl Fn() -> String, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn skiff_bin() -> String {
    Kind::Skiff.binary().to_string_lossy().into_owned()
}

/// `skiff ebpf <args>` from the host.
fn skiff_ebpf(args: &[&str]) -> Output {
    Command::new(skiff_bin())
        .arg("ebpf")
        .args(args)
        .output()
        .expect("run skiff ebpf")
}

fn ebpf_status() -> String {
    text(&skiff_ebpf(&["status"]))
}

/// The kernel counters of `skiff ebpf status`.
fn counters() -> BTreeMap<String, u64> {
    let status = ebpf_status();
    status
        .split_once("counters:")
        .map(|(_, c)| c)
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(": ")?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// How much counter `name` grew from `before` to now.
fn grew(before: &BTreeMap<String, u64>, name: &str) -> u64 {
    let now = counters();
    let at = |m: &BTreeMap<String, u64>| {
        *m.get(name)
            .unwrap_or_else(|| panic!("no counter `{name}` in skiff ebpf status"))
    };
    at(&now) - at(before)
}

fn bpftool_json(args: &[&str]) -> Value {
    let out = run(Command::new("bpftool").arg("-j").args(args));
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The upstreams and apps of these tests: `server.py http:<port>… tcp:<port>…` listens on
/// [::] (dual stack) on each port. An `http` port answers every request with the peer it saw
/// (`peer=<ip> port=<port> local=<ip>:<port>`) and logs `REQUEST <port> peer=<ip>:<port>`; a
/// `tcp` port writes `ok\n` and closes; a `hold` port keeps each connection open until the
/// client closes it; an `echo` port sends back every byte until the client half-closes, then
/// half-closes too.
const SERVER_PY: &str = r#"
import socket, socketserver, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def host(a):
    return a.removeprefix("::ffff:")

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        peer = self.client_address
        local = self.connection.getsockname()
        body = f"peer={host(peer[0])} port={peer[1]} local={host(local[0])}:{local[1]}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        port = self.connection.getsockname()[1]
        peer = f"{host(self.client_address[0])}:{self.client_address[1]}"
        sys.stderr.write(f"REQUEST {port} peer={peer} {fmt % args}\n")
        sys.stderr.flush()

class Http(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)  # no reverse DNS lookup of [::]
        self.server_name, self.server_port = "server", self.server_address[1]

def drain(c):
    try:
        while c.recv(4096):
            pass
    except OSError:
        pass
    c.close()

def echo(c):
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    c.close()

def tcp_server(port, kind):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(4096)
    while True:
        c, _ = s.accept()
        if kind in ("hold", "echo"):
            threading.Thread(target=drain if kind == "hold" else echo, args=(c,), daemon=True).start()
            continue
        try:
            c.sendall(b"ok\n")
        except OSError:
            pass
        c.close()

for spec in sys.argv[1:]:
    kind, port = spec.split(":")
    if kind == "http":
        threading.Thread(target=Http(("::", int(port)), Handler).serve_forever, daemon=True).start()
    else:
        threading.Thread(target=tcp_server, args=(int(port), kind), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"#;

/// `load.py <host> <port> <connections> <workers>`: opens and closes that many connections,
/// each reading until the server closes; prints `ok=<n> failed=<n> seconds=<s> errors=[…]`.
const LOAD_PY: &str = r#"
import socket, sys, threading, time
host, port, total, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
lock = threading.Lock()
state = {"next": 0, "ok": 0}
errors = []

def work():
    while True:
        with lock:
            if state["next"] >= total:
                return
            state["next"] += 1
        try:
            s = socket.create_connection((host, port), timeout=10)
            data = b""
            while True:
                d = s.recv(16)
                if not d:
                    break
                data += d
            s.close()
            err = None if data == b"ok\n" else f"read {data!r}"
        except OSError as e:
            err = repr(e)
        with lock:
            if err is None:
                state["ok"] += 1
            elif len(errors) < 5:
                errors.append(err)

t0 = time.time()
threads = [threading.Thread(target=work) for _ in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"ok={state['ok']} failed={total - state['ok']} seconds={time.time() - t0:.1f} errors={errors}")
"#;

/// `echo.py <host> <port> <bytes> <connections>`: on each connection (all at once) sends that
/// many random bytes in writes of varying sizes while reading, half-closes, reads to the end
/// and compares; prints `ok=<n> of=<n> local=<addresses> got=<byte counts of failures>`.
const ECHO_PY: &str = r#"
import os, socket, sys, threading
host, port, size, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = {}

def one(i):
    data = os.urandom(size)
    try:
        s = socket.create_connection((host, port), timeout=30)
    except OSError as e:
        out[i] = ("-", False, repr(e))
        return
    local = s.getsockname()[0]
    def send():
        view, n, k = memoryview(data), 0, 1
        while n < size:
            step = min(size - n, (k * 7919) % 65536 + 1)
            s.sendall(view[n:n + step])
            n, k = n + step, k + 1
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    got = bytearray()
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
    except OSError as e:
        got += repr(e).encode()
    t.join()
    s.close()
    out[i] = (local, bytes(got) == data, len(got))

threads = [threading.Thread(target=one, args=(i,)) for i in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ok = sum(1 for v in out.values() if v[1])
local = ",".join(sorted({v[0] for v in out.values()}))
bad = [v[2] for v in out.values() if not v[1]]
print(f"ok={ok} of={conns} local={local} got={bad}")
"#;

/// What `curl` saw: the status, the body, and the socket's own address (127.0.0.1 when the
/// connect was redirected to the proxy, the pod's address when it went direct).
#[derive(Debug)]
struct Curl {
    code: String,
    body: String,
    local_ip: String,
    local_port: u16,
}

impl Curl {
    fn parse(out: &Output) -> Curl {
        let all = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, tail) = all.rsplit_once('\n').unwrap_or(("", &all));
        let mut f = tail.split(' ');
        Curl {
            code: f.next().unwrap_or("").to_string(),
            local_ip: f.next().unwrap_or("").to_string(),
            local_port: f.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            body: body.to_string(),
        }
    }

    /// The peer address and port the server reported.
    fn peer(&self) -> (String, u16) {
        let field = |k: &str| {
            self.body
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or("")
                .to_string()
        };
        (field("peer="), field("port=").parse().unwrap_or(0))
    }
}

const CURL: &[&str] = &[
    "curl",
    "-g",
    "-s",
    "-m",
    "5",
    "-w",
    "\n%{http_code} %{local_ip} %{local_port}",
];

/// The test topology: the pod (10.91.n.2, fd91:n::2) with its cgroup, and the remote host
/// (10.91.n.1, fd91:n::1). On drop: everything in the cgroup is killed, what this pod
/// attached is detached, the namespaces and the cgroup are removed.
struct Pod {
    n: u8,
    /// The veth ends in the pod and on the remote host.
    devs: (String, String),
    attach_tried: bool,
    pod: Netns,
    remote: Netns,
    cg: Cgroup,
}

impl Pod {
    fn new(n: u8) -> Pod {
        require_programs();
        let pod = Netns::new(&format!("ebp{n}"));
        let remote = Netns::new(&format!("ebr{n}"));
        let cg = Cgroup::new(&format!("ebpf{n}"));
        let id = std::process::id() % 100_000;
        let (vp, vr) = (format!("sk{n}p{id}"), format!("sk{n}r{id}"));
        run(Command::new("ip").args([
            "link",
            "add",
            &vp,
            "netns",
            &pod.name,
            "type",
            "veth",
            "peer",
            "name",
            &vr,
            "netns",
            &remote.name,
        ]));
        // Both ends up before any address: an IPv6 address added while the carrier is still
        // down loses the first SYN sent to it (the connect then takes a 1 s retransmission).
        pod.exec(&["ip", "link", "set", &vp, "up"]);
        remote.exec(&["ip", "link", "set", &vr, "up"]);
        for (ns, dev, host) in [(&pod, &vp, 2), (&remote, &vr, 1)] {
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("10.91.{n}.{host}/24"),
                "dev",
                dev,
            ]);
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("fd91:{n}::{host}/64"),
                "dev",
                dev,
                "nodad",
            ]);
        }
        // The IPv6 inbound passthrough source, as istio-iptables adds it.
        pod.exec(&["ip", "-6", "addr", "add", "::6/128", "dev", "lo"]);
        let p = Pod {
            n,
            devs: (vp, vr),
            attach_tried: false,
            pod,
            remote,
            cg,
        };
        for dir in [&p.pod.dir, &p.remote.dir] {
            std::fs::write(dir.join("server.py"), SERVER_PY).expect("write server.py");
        }
        p
    }

    fn netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.pod.name)
    }

    fn pod_ip(&self) -> String {
        format!("10.91.{}.2", self.n)
    }

    fn remote_ip(&self) -> String {
        format!("10.91.{}.1", self.n)
    }

    fn pod_ip6(&self) -> String {
        format!("fd91:{}::2", self.n)
    }

    fn remote_ip6(&self) -> String {
        format!("fd91:{}::1", self.n)
    }

    /// `skiff ebpf attach --cgroup <pod cgroup> --netns <pod netns> <flags>`, whatever its result.
    fn try_attach(&mut self, flags: &[&str]) -> Output {
        self.attach_tried = true;
        let cg = self.cg.path.to_string_lossy().into_owned();
        let ns = self.netns_path();
        let mut args = vec!["attach", "--cgroup", &cg, "--netns", &ns];
        args.extend(flags);
        skiff_ebpf(&args)
    }

    /// Attaches and requires success; returns the output.
    fn attach(&mut self, flags: &[&str]) -> String {
        let out = self.try_attach(flags);
        assert!(out.status.success(), "skiff ebpf attach: {}", text(&out));
        text(&out)
    }

    fn detach(&self) -> Output {
        let cg = self.cg.path.to_string_lossy().into_owned();
        let ns = self.netns_path();
        skiff_ebpf(&["detach", "--cgroup", &cg, "--netns", &ns])
    }

    /// A command in the pod's cgroup and namespace, as `uid` or root.
    fn command(&self, uid: Option<&str>, args: &[&str]) -> Command {
        self.cg.command(&self.pod.name, uid, args)
    }

    /// Starts a long-running process in the pod's cgroup and namespace.
    fn spawn(&mut self, uid: Option<&str>, args: &[&str], log: &str) {
        let cmd = self.command(uid, args);
        self.pod.spawn_command(cmd, log);
    }

    /// `curl` from the pod's app (in the cgroup), as `uid` or root.
    fn curl(&self, uid: Option<&str>, url: &str) -> Curl {
        let mut args = CURL.to_vec();
        args.push(url);
        Curl::parse(&self.command(uid, &args).output().expect("run curl"))
    }

    /// `curl` from the remote host.
    fn remote_curl(&self, url: &str) -> Curl {
        let mut args = CURL.to_vec();
        args.push(url);
        Curl::parse(&self.remote.command(&args).output().expect("run curl"))
    }

    /// Starts `server.py <specs>` on the remote host.
    fn start_upstream(&mut self, specs: &[&str]) {
        let script = self.remote.dir.join("server.py");
        let mut args = vec!["python3", "-u", script.to_str().expect("path")];
        args.extend(specs);
        self.remote.spawn(&args, "upstream.log");
        wait_listening(&self.remote, specs);
    }

    /// Starts `server.py <specs>` as the pod's app, in its cgroup, as root.
    fn start_app(&mut self, specs: &[&str]) {
        let script = self.pod.dir.join("server.py");
        let script = script.to_str().expect("path").to_string();
        let mut args = vec!["python3", "-u", &script];
        args.extend(specs);
        self.spawn(None, &args, "app.log");
        wait_listening(&self.pod, specs);
    }

    /// Starts the proxy as uid 1337 in the pod's cgroup and namespace on `config`, and waits
    /// for its admin (127.0.0.1:15000). Start it after attaching: sockops registers its inbound
    /// listener when it calls listen().
    fn start_proxy(&mut self, kind: Kind, config: &str) {
        let path = self.pod.dir.join("proxy.yaml");
        std::fs::write(&path, config).expect("write proxy config");
        let bin = kind.binary().to_string_lossy().into_owned();
        let path = path.to_string_lossy().into_owned();
        let mut args = vec![
            bin.as_str(),
            "-c",
            &path,
            "--concurrency",
            "1",
            "--file-flush-interval-msec",
            "50",
        ];
        if kind == Kind::Envoy {
            args.extend(["--disable-hot-restart", "-l", "info"]);
        }
        self.spawn(Some(PROXY_UID), &args, "proxy.log");
        self.pod.wait_ready(kind.name(), "proxy.log");
    }

    /// Runs `echo.py` against `host:port` from the pod's app (`from_pod`) or from the remote
    /// host; its summary line.
    fn echo(&self, from_pod: bool, host: &str, port: u16, bytes: usize, conns: usize) -> String {
        let ns = if from_pod { &self.pod } else { &self.remote };
        let script = ns.dir.join("echo.py");
        std::fs::write(&script, ECHO_PY).expect("write echo.py");
        let args = [
            "python3",
            script.to_str().expect("path"),
            host,
            &port.to_string(),
            &bytes.to_string(),
            &conns.to_string(),
        ];
        let mut cmd = if from_pod {
            self.command(None, &args)
        } else {
            ns.command(&args)
        };
        text(&cmd.output().expect("run echo.py")).trim().to_string()
    }

    /// A counter from the proxy's admin.
    fn stat(&self, name: &str) -> u64 {
        self.pod.stat(name)
    }

    /// The proxy's log (with its access log on stdout).
    fn proxy_log(&self) -> String {
        self.pod.log("proxy.log")
    }

    /// Waits for the proxy's log to contain `want`.
    fn wait_proxy_log(&self, want: &str) {
        wait_for(
            || format!("no `{want}` in the proxy's log"),
            Duration::from_secs(5),
            || self.proxy_log().contains(want),
        );
    }

    /// The `REQUEST` lines the remote host logged for `port`.
    fn upstream_requests(&self, port: u16) -> Vec<String> {
        let prefix = format!("REQUEST {port} ");
        self.remote
            .log("upstream.log")
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }

    /// The pod's namespace cookie, from the attach output.
    fn cookie(attach_output: &str) -> u64 {
        attach_output
            .split("(cookie ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no cookie in: {attach_output}"))
    }

    /// Everything worth reading when a test fails.
    fn report(&self) -> String {
        let mut r = format!("===== skiff ebpf status =====\n{}", ebpf_status());
        for (who, ns) in [("pod", &self.pod), ("remote", &self.remote)] {
            let Ok(entries) = std::fs::read_dir(&ns.dir) else {
                continue;
            };
            let mut logs: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            logs.sort();
            for log in logs {
                let body = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = body.lines().collect();
                let tail = &lines[lines.len().saturating_sub(200)..];
                r.push_str(&format!(
                    "===== {who}: {} (last {} lines) =====\n{}\n",
                    log.display(),
                    tail.len(),
                    tail.join("\n")
                ));
            }
        }
        r
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            eprintln!("{}", self.report());
        }
        self.cg.kill_all();
        if self.attach_tried {
            let out = self.detach();
            if !out.status.success() {
                eprintln!("skiff ebpf detach failed: {}", text(&out));
            }
        }
        if !failed {
            let _ = std::fs::remove_dir_all(&self.pod.dir);
            let _ = std::fs::remove_dir_all(&self.remote.dir);
        }
        // Then the fields: the namespaces (their remaining processes killed), the cgroup.
    }
}

/// The programs the tests run, checked once.
fn require_programs() {
    for (p, how) in [
        ("bpftool", "apt-get install bpftool"),
        ("curl", "apt-get install curl"),
        ("python3", "apt-get install python3"),
        ("ss", "apt-get install iproute2"),
    ] {
        skiff_tests::require_program(p, how);
    }
}

fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(name).is_file())
}

/// Waits until every port of `specs` (`kind:port`) listens in `ns`.
fn wait_listening(ns: &Netns, specs: &[&str]) {
    let ports: Vec<String> = specs
        .iter()
        .map(|s| format!(":{}", s.rsplit(':').next().unwrap_or(s)))
        .collect();
    wait_for(
        || format!("servers {specs:?} did not start in {}", ns.name),
        Duration::from_secs(10),
        || {
            let out = ns.command(&["ss", "-Htln"]).output().expect("run ss");
            let listening: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
                .collect();
            ports
                .iter()
                .all(|p| listening.iter().any(|l| l.ends_with(p.as_str())))
        },
    );
}

/// The reference capture config, unchanged.
fn capture_config() -> String {
    std::fs::read_to_string(skiff_tests::package_dir().join("configs/sidecar-capture.yaml"))
        .expect("read configs/sidecar-capture.yaml")
}

/// The capture config plus what lets a test see more: an IPv6 twin of each listener ([::],
/// IPv6 only, as Envoy binds [::] without `ipv4_compat`; stat prefixes `outbound6` and
/// `inbound6`, the inbound one going to the app from ::6 like Istio's), and on every tcp_proxy
/// an access log on stdout: `ACCESS <stat prefix> <original destination> <upstream host>
/// <client address> <flags> <bytes received> <bytes sent>`.
fn observed_capture_config() -> String {
    let mut v: Value = serde_yaml::from_str(&capture_config()).expect("parse capture config");
    let listeners = v["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners");
    let mut twins: Vec<Value> = listeners
        .iter()
        .map(|l| {
            let mut l = l.clone();
            let name = format!("{}6", l["name"].as_str().expect("name"));
            l["name"] = json!(name);
            l["address"]["socket_address"]["address"] = json!("::");
            let tcp = &mut l["filter_chains"][0]["filters"][0]["typed_config"];
            let prefix = format!("{}6", tcp["stat_prefix"].as_str().expect("stat_prefix"));
            tcp["stat_prefix"] = json!(prefix);
            if tcp["cluster"] == "inbound_passthrough" {
                tcp["cluster"] = json!("inbound_passthrough6");
            }
            l
        })
        .collect();
    listeners.append(&mut twins);
    for l in listeners.iter_mut() {
        let tcp = &mut l["filter_chains"][0]["filters"][0]["typed_config"];
        let format = format!(
            "ACCESS {} %DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST% %DOWNSTREAM_REMOTE_ADDRESS% \
             %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT%\n",
            tcp["stat_prefix"].as_str().expect("stat_prefix")
        );
        tcp["access_log"] = json!([{
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": { "text_format_source": { "inline_string": format } }
            }
        }]);
    }
    let clusters = v["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters");
    let mut inbound6 = clusters
        .iter()
        .find(|c| c["name"] == "inbound_passthrough")
        .expect("inbound_passthrough cluster")
        .clone();
    inbound6["name"] = json!("inbound_passthrough6");
    inbound6["upstream_bind_config"]["source_address"]["address"] = json!("::6");
    clusters.push(inbound6);
    skiff_tests::config::to_yaml(&v)
}

/// Live `skiff_orig_dst` entries of one network namespace (`bpftool map dump`; the key starts
/// with the namespace cookie).
fn orig_dst_entries(cookie: u64) -> usize {
    let path = format!("{PIN_ROOT}/maps/skiff_orig_dst");
    let dump = bpftool_json(&["map", "dump", "pinned", &path]);
    dump.as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| entry_netns(e) == Some(cookie))
                .count()
        })
        .unwrap_or(0)
}

fn entry_netns(e: &Value) -> Option<u64> {
    if let Some(n) = e["formatted"]["key"]["netns"].as_u64() {
        return Some(n);
    }
    let bytes: Vec<u8> = e["key"]
        .as_array()?
        .iter()
        .take(8)
        .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
        .collect();
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// The app's connects to the remote host go through skiff over IPv4, IPv6 and a v4-mapped
/// dual-stack socket: the socket itself is connected to loopback (redirected), the upstream sees
/// one request per app request, from the pod's address, and skiff's access log names the
/// original destination; skiff's own upstream connects are exempt (owner), so nothing loops.
#[test]
fn outbound_over_ipv4_ipv6_and_v4_mapped_goes_through_skiff() {
    ebpf_test(
        "outbound_over_ipv4_ipv6_and_v4_mapped_goes_through_skiff",
        Duration::from_secs(60),
        || {
            let mut p = Pod::new(1);
            p.start_upstream(&["http:8080"]);
            p.attach(CAPTURE_ALL);
            p.start_proxy(Kind::Skiff, &observed_capture_config());
            let before = counters();
            let (pod4, remote4) = (p.pod_ip(), p.remote_ip());
            let (pod6, remote6) = (p.pod_ip6(), p.remote_ip6());

            // IPv4.
            let c = p.curl(None, &format!("http://{remote4}:8080/"));
            assert_eq!(c.code, "200", "{c:?}");
            assert_eq!(
                c.local_ip, "127.0.0.1",
                "the app's socket was redirected: {c:?}"
            );
            assert_eq!(
                c.peer().0,
                pod4,
                "the upstream sees skiff's connection from the pod"
            );
            assert_eq!(p.stat("tcp.outbound.downstream_cx_total"), 1);
            assert_eq!(p.stat("cluster.passthrough.upstream_cx_total"), 1);
            p.wait_proxy_log(&format!(
                "ACCESS outbound {remote4}:8080 {remote4}:8080 127.0.0.1:{} ",
                c.local_port
            ));

            // IPv6: redirected to [::1]:15001, skiff's IPv6 listener.
            let c = p.curl(None, &format!("http://[{remote6}]:8080/"));
            assert_eq!(c.code, "200", "{c:?}");
            assert_eq!(c.local_ip, "::1", "the app's socket was redirected: {c:?}");
            assert_eq!(c.peer().0, pod6);
            assert_eq!(p.stat("tcp.outbound6.downstream_cx_total"), 1);
            p.wait_proxy_log(&format!(
                "ACCESS outbound6 [{remote6}]:8080 [{remote6}]:8080 [::1]:{} ",
                c.local_port
            ));

            // A dual-stack AF_INET6 socket to a v4-mapped address: redirected to
            // ::ffff:127.0.0.1, skiff's IPv4 listener, which restores the IPv4 destination.
            let c = p.curl(None, &format!("http://[::ffff:{remote4}]:8080/"));
            assert_eq!(c.code, "200", "{c:?}");
            assert_eq!(
                c.local_ip, "::ffff:127.0.0.1",
                "the app's socket was redirected: {c:?}"
            );
            assert_eq!(c.peer().0, pod4);
            assert_eq!(p.stat("tcp.outbound.downstream_cx_total"), 2);
            p.wait_proxy_log(&format!(
                "ACCESS outbound {remote4}:8080 {remote4}:8080 127.0.0.1:{} ",
                c.local_port
            ));

            // One upstream request per app request: skiff's own connects were not redirected.
            let requests = p.upstream_requests(8080);
            assert_eq!(requests.len(), 3, "{requests:?}");
            assert_eq!(p.stat("cluster.passthrough.upstream_cx_total"), 3);
            assert!(grew(&before, "outbound_redirected") >= 3);
            assert!(grew(&before, "getsockopt_original_dst") >= 3);
            assert!(
                grew(&before, "outbound_excluded_owner") >= 3,
                "skiff's own connects"
            );
            assert_eq!(grew(&before, "outbound_loop_refused"), 0);
            assert_eq!(
                grew(&before, "sk_msg_sockets"),
                0,
                "sk_msg is off by default"
            );
        },
    )
}

/// skiff's own upstream connection (uid 1337) is not redirected again; an excluded port
/// (`-o`), an excluded CIDR (`-x`) and an excluded uid (`-u 1337,1338`, the app run as 1338)
/// go direct: the app's socket is connected from the pod's address, the upstream sees that very
/// address and port, and skiff's counters do not move. A uid that is not excluded is captured.
#[test]
fn own_upstream_and_excluded_ports_cidrs_and_uids_go_direct() {
    ebpf_test(
        "own_upstream_and_excluded_ports_cidrs_and_uids_go_direct",
        Duration::from_secs(60),
        || {
            let mut p = Pod::new(2);
            let other = format!("10.91.{}.3", p.n);
            p.remote.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{other}/24"),
                "dev",
                &p.devs.1,
            ]);
            p.start_upstream(&["http:8080", "http:8081"]);
            p.attach(&[
                "-i",
                "*",
                "-b",
                "*",
                "-o",
                "8081",
                "-x",
                &format!("{other}/32"),
                "-u",
                "1337,1338",
            ]);
            p.start_proxy(Kind::Skiff, &capture_config());
            let (pod4, remote4) = (p.pod_ip(), p.remote_ip());

            // Captured, and skiff's own connect for it is exempt: one request upstream.
            let before = counters();
            let c = p.curl(None, &format!("http://{remote4}:8080/"));
            assert_eq!(c.code, "200", "{c:?}");
            assert_eq!(c.local_ip, "127.0.0.1", "redirected: {c:?}");
            assert_eq!(c.peer().0, pod4);
            assert_eq!(p.stat("tcp.outbound.downstream_cx_total"), 1);
            assert_eq!(p.stat("cluster.passthrough.upstream_cx_total"), 1);
            assert_eq!(p.upstream_requests(8080).len(), 1, "no loop");
            assert!(
                grew(&before, "outbound_excluded_owner") >= 1,
                "skiff's own connect"
            );
            assert_eq!(grew(&before, "outbound_loop_refused"), 0);

            let direct = |c: &Curl, what: &str| {
                assert_eq!(c.code, "200", "{what}: {c:?}");
                assert_eq!(c.local_ip, pod4, "{what} goes direct: {c:?}");
                assert_eq!(
                    c.peer(),
                    (pod4.clone(), c.local_port),
                    "{what}: the upstream sees the app's own socket"
                );
            };

            let before = counters();
            let c = p.curl(None, &format!("http://{remote4}:8081/"));
            direct(&c, "excluded port 8081");
            assert!(grew(&before, "outbound_excluded_port") >= 1);

            let before = counters();
            let c = p.curl(None, &format!("http://{other}:8080/"));
            direct(&c, "excluded CIDR");
            assert!(grew(&before, "outbound_excluded_cidr") >= 1);

            let before = counters();
            let c = p.curl(Some("1338"), &format!("http://{remote4}:8080/"));
            direct(&c, "excluded uid 1338");
            assert!(grew(&before, "outbound_excluded_owner") >= 1);

            assert_eq!(
                p.stat("tcp.outbound.downstream_cx_total"),
                1,
                "nothing excluded reached skiff"
            );
            assert_eq!(p.stat("cluster.passthrough.upstream_cx_total"), 1);

            // Another uid is captured.
            let c = p.curl(Some("1339"), &format!("http://{remote4}:8080/"));
            assert_eq!(c.code, "200", "{c:?}");
            assert_eq!(c.local_ip, "127.0.0.1", "uid 1339 is captured: {c:?}");
            assert_eq!(p.stat("tcp.outbound.downstream_cx_total"), 2);
            // Port 8080 saw the two captured requests once each and the two direct ones.
            assert_eq!(p.upstream_requests(8080).len(), 4);
        },
    )
}

/// A connection from the remote host to the pod's address reaches the app through skiff's
/// 15006 listener (sk_lookup): skiff's access log shows the original destination and the
/// client's real address and port, the app sees the inbound passthrough source (127.0.0.6,
/// ::6). Over IPv4 and IPv6; an excluded inbound port (`-d`) reaches the app directly.
#[test]
fn inbound_reaches_the_app_through_skiff_with_the_client_address() {
    ebpf_test(
        "inbound_reaches_the_app_through_skiff_with_the_client_address",
        Duration::from_secs(60),
        || {
            let mut p = Pod::new(3);
            p.start_app(&["http:9090", "http:9091"]);
            let mut flags = CAPTURE_ALL.to_vec();
            flags.extend(["-d", "9091"]);
            p.attach(&flags);
            p.start_proxy(Kind::Skiff, &observed_capture_config());
            let before = counters();
            let (pod4, remote4) = (p.pod_ip(), p.remote_ip());
            let (pod6, remote6) = (p.pod_ip6(), p.remote_ip6());

            let c = p.remote_curl(&format!("http://{pod4}:9090/"));
            assert_eq!(c.code, "200", "{c:?}");
            assert_eq!(c.peer().0, "127.0.0.6", "the app is reached through skiff");
            assert_eq!(p.stat("tcp.inbound.downstream_cx_total"), 1);
            assert_eq!(p.stat("cluster.inbound_passthrough.upstream_cx_total"), 1);
            p.wait_proxy_log(&format!(
                "ACCESS inbound {pod4}:9090 {pod4}:9090 {remote4}:{} ",
                c.local_port
            ));

            let c = p.remote_curl(&format!("http://[{pod6}]:9090/"));
            assert_eq!(c.code, "200", "{c:?}");
            assert_eq!(c.peer().0, "::6", "the app is reached through skiff");
            assert_eq!(p.stat("tcp.inbound6.downstream_cx_total"), 1);
            p.wait_proxy_log(&format!(
                "ACCESS inbound6 [{pod6}]:9090 [{pod6}]:9090 [{remote6}]:{} ",
                c.local_port
            ));
            assert!(grew(&before, "inbound_assigned") >= 2);

            let c = p.remote_curl(&format!("http://{pod4}:9091/"));
            assert_eq!(c.code, "200", "{c:?}");
            assert_eq!(
                c.peer(),
                (remote4.clone(), c.local_port),
                "the excluded port reaches the app directly"
            );
            assert_eq!(p.stat("tcp.inbound.downstream_cx_total"), 1);
            assert!(grew(&before, "inbound_excluded") >= 1);
        },
    )
}

/// 10,000 redirected connections open and close through skiff; afterwards no original
/// destination of the pod is left in `skiff_orig_dst` (sockops deletes each entry when skiff's
/// socket closes).
#[test]
fn ten_thousand_connections_leave_no_map_entry() {
    ebpf_test(
        "ten_thousand_connections_leave_no_map_entry",
        Duration::from_secs(90),
        || {
            const N: u64 = 10_000;
            let mut p = Pod::new(4);
            p.start_upstream(&["tcp:9000", "hold:9001"]);
            let cookie = Pod::cookie(&p.attach(CAPTURE_ALL));
            p.start_proxy(Kind::Skiff, &capture_config());
            std::fs::write(p.pod.dir.join("load.py"), LOAD_PY).expect("write load.py");
            let remote = p.remote_ip();

            // An open redirected connection has exactly one entry, which goes when it closes
            // (so the zero below is a real count).
            let hold = format!(
                "import socket, time; s = socket.create_connection(('{remote}', 9001)); \
                 print('connected', flush=True); time.sleep(30)"
            );
            let mut held = p
                .command(None, &["python3", "-c", &hold])
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a held connection");
            wait_for(
                || "the held connection was not recorded in skiff_orig_dst".to_string(),
                Duration::from_secs(10),
                || orig_dst_entries(cookie) == 1,
            );
            let _ = held.kill();
            let _ = held.wait();
            wait_for(
                || "the held connection's entry stayed after it closed".to_string(),
                Duration::from_secs(10),
                || orig_dst_entries(cookie) == 0,
            );
            let before = counters();
            let cx_before = p.stat("tcp.outbound.downstream_cx_total");

            let script = p.pod.dir.join("load.py");
            let out = p
                .command(
                    None,
                    &[
                        "python3",
                        script.to_str().expect("path"),
                        &remote,
                        "9000",
                        &N.to_string(),
                        "8",
                    ],
                )
                .output()
                .expect("run load.py");
            let summary = text(&out);
            eprintln!("load.py: {summary}");
            assert!(
                summary.starts_with(&format!("ok={N} failed=0")),
                "{summary}"
            );
            assert_eq!(p.stat("tcp.outbound.downstream_cx_total") - cx_before, N);
            assert!(grew(&before, "outbound_redirected") >= N);
            assert!(grew(&before, "original_dst_recorded") >= N);

            wait_for(
                || {
                    format!(
                        "{} original destinations of the pod are left after {N} connections",
                        orig_dst_entries(cookie)
                    )
                },
                Duration::from_secs(10),
                || orig_dst_entries(cookie) == 0,
            );
            assert!(grew(&before, "original_dst_deleted") >= N);
            let status = ebpf_status();
            if status.contains("enrolled network namespaces: 1\n") {
                assert!(
                    status.contains("original destinations recorded: 0\n"),
                    "{status}"
                );
            } else {
                eprintln!("other namespaces are enrolled; checked this pod's entries only");
            }
        },
    )
}

/// `iptables` works inside an enrolled pod's cgroup: the nft and the legacy front ends list and
/// save exactly what they do outside the cgroup, the legacy one through getsockopt with a
/// ruleset far larger than a page (which the getsockopt program must hand through untouched).
#[test]
fn iptables_works_inside_an_enrolled_pod() {
    ebpf_test(
        "iptables_works_inside_an_enrolled_pod",
        Duration::from_secs(60),
        || {
            let mut p = Pod::new(5);
            p.attach(CAPTURE_ALL);
            let legacy = on_path("iptables-legacy-restore") && on_path("ip6tables-legacy-restore");

            let mut rules = String::from("*filter\n:SKIFFTEST - [0:0]\n");
            for i in 0..300 {
                rules.push_str(&format!(
                    "-A SKIFFTEST -s 10.200.{}.{}/32 -p tcp -m tcp --dport {} -m comment --comment \"rule {i}\" -j ACCEPT\n",
                    i / 256,
                    i % 256,
                    1000 + i
                ));
            }
            rules.push_str("COMMIT\n");
            let mut fronts = vec!["iptables", "ip6tables"];
            if legacy {
                fronts.extend(["iptables-legacy", "ip6tables-legacy"]);
            }
            for front in &fronts {
                let mut child = p
                    .pod
                    .command(&[&format!("{front}-restore")])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("run iptables-restore");
                let v6 = rules
                    .replace("-s 10.200.", "-s fd00::10.200.")
                    .replace("/32", "/128");
                let input = if front.starts_with("ip6") {
                    &v6
                } else {
                    &rules
                };
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(input.as_bytes())
                    .expect("write rules");
                let out = child.wait_with_output().expect("iptables-restore");
                assert!(out.status.success(), "{front}-restore: {}", text(&out));
            }

            // Comments (timestamps) left out, and the chains' packet counters zeroed: a packet
            // the pod's own stack sends (IPv6 neighbour discovery) may count in between.
            let strip = |s: String| -> String {
                s.lines()
                    .filter(|l| !l.starts_with('#'))
                    .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
                        (true, Some(i)) => format!("{} [0:0]", &l[..i]),
                        _ => l.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            for front in &fronts {
                for args in [vec![*front, "-L", "-n"], vec![*front, "-S"]] {
                    let inside = p.command(None, &args).output().expect("run iptables");
                    assert!(
                        inside.status.success(),
                        "{args:?} inside the enrolled pod: {}",
                        text(&inside)
                    );
                    let outside = p.pod.exec(&args);
                    assert_eq!(
                        String::from_utf8_lossy(&inside.stdout),
                        String::from_utf8_lossy(&outside.stdout),
                        "{args:?} inside and outside the cgroup"
                    );
                    let listing = String::from_utf8_lossy(&inside.stdout).into_owned();
                    assert!(listing.contains("rule 299"), "{args:?}: {listing}");
                    if front.ends_with("legacy") {
                        assert!(listing.len() > 16 * 1024, "a ruleset larger than a page");
                    }
                }
                let save = format!("{front}-save");
                let inside = p.command(None, &[&save]).output().expect("run save");
                assert!(inside.status.success(), "{save}: {}", text(&inside));
                let outside = p.pod.exec(&[&save]);
                assert_eq!(
                    strip(String::from_utf8_lossy(&inside.stdout).into_owned()),
                    strip(String::from_utf8_lossy(&outside.stdout).into_owned()),
                    "{save} inside and outside the cgroup"
                );
            }
            if !legacy {
                eprintln!("iptables-legacy is not installed: checked the nft front end only");
            }
        },
    )
}

fn skiff_links(cgroup_id: u64, netns_ino: u64) -> Vec<Value> {
    bpftool_json(&["link", "show"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| {
            (l["type"] == "cgroup" && l["cgroup_id"].as_u64() == Some(cgroup_id))
                || (l["type"] == "netns" && l["netns_ino"].as_u64() == Some(netns_ino))
        })
        .collect()
}

fn ids(list: &[Value], key: &str) -> Vec<u64> {
    let mut v: Vec<u64> = list.iter().filter_map(|x| x[key].as_u64()).collect();
    v.sort_unstable();
    v
}

fn live_ids(what: &str) -> Vec<u64> {
    ids(
        bpftool_json(&[what, "show"]).as_array().map_or(&[], |v| v),
        "id",
    )
}

fn pins_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A second attach changes nothing ("already enrolled", "already attached", the same
/// programs and links); detach removes this pod's links, pins and programs, and, when no other
/// pod is attached, skiff's whole pin directory and its maps.
#[test]
fn second_attach_is_a_no_op_and_detach_leaves_nothing_behind() {
    ebpf_test(
        "second_attach_is_a_no_op_and_detach_leaves_nothing_behind",
        Duration::from_secs(60),
        || {
            use std::os::unix::fs::MetadataExt;
            let mut p = Pod::new(6);
            let cg = p.cg.path.to_string_lossy().into_owned();
            let cg_id = p.cg.id();
            let netns_ino = std::fs::metadata(p.netns_path()).expect("netns").ino();
            let root = Path::new(PIN_ROOT);

            let first = p.attach(CAPTURE_ALL);
            assert!(first.contains("): enrolled"), "{first}");
            assert!(first.contains(": attached"), "{first}");
            let cookie = Pod::cookie(&first);
            let cg_pins = root.join("cgroup").join(cg_id.to_string());
            let ns_pins = root.join("netns").join(cookie.to_string());
            assert_eq!(
                pins_under(&cg_pins),
                ["connect4", "connect6", "getsockopt", "sockops"]
            );
            assert_eq!(pins_under(&ns_pins), ["sk_lookup"]);
            let progs = bpftool_json(&["cgroup", "show", &cg]);
            let progs = progs.as_array().cloned().unwrap_or_default();
            let mut names: Vec<&str> = progs.iter().filter_map(|x| x["name"].as_str()).collect();
            names.sort_unstable();
            assert_eq!(
                names,
                [
                    "skiff_connect4",
                    "skiff_connect6",
                    "skiff_getsockopt",
                    "skiff_sockops"
                ]
            );
            let links = skiff_links(cg_id, netns_ino);
            assert_eq!(links.len(), 5, "four cgroup links and sk_lookup: {links:?}");
            let mut prog_ids = ids(&links, "prog_id");
            let map_ids: Vec<u64> = pins_under(&root.join("maps"))
                .iter()
                .filter_map(|m| {
                    let path = root.join("maps").join(m);
                    bpftool_json(&["map", "show", "pinned", path.to_str()?])["id"].as_u64()
                })
                .collect();
            assert_eq!(map_ids.len(), 8, "eight pinned maps");

            let second = p.attach(CAPTURE_ALL);
            assert!(second.contains("already enrolled"), "{second}");
            assert!(second.contains("already attached"), "{second}");
            assert_eq!(pins_under(&cg_pins).len(), 4);
            assert_eq!(pins_under(&ns_pins), ["sk_lookup"]);
            assert_eq!(
                ids(&skiff_links(cg_id, netns_ino), "id"),
                ids(&links, "id"),
                "the same links"
            );
            let again = bpftool_json(&["cgroup", "show", &cg]);
            assert_eq!(
                ids(again.as_array().map_or(&[], |v| v), "id"),
                ids(&progs, "id"),
                "the same programs, not a second set"
            );

            let out = p.detach();
            assert!(out.status.success(), "{}", text(&out));
            let said = text(&out);
            assert!(
                said.contains("unenrolled") && said.contains("detached"),
                "{said}"
            );
            let left = bpftool_json(&["cgroup", "show", &cg]);
            assert!(
                left.as_array().is_none_or(|v| v.is_empty()),
                "programs left on the cgroup: {left}"
            );
            assert_eq!(skiff_links(cg_id, netns_ino), Vec::<Value>::new());
            assert!(!cg_pins.exists() && !ns_pins.exists(), "{}", ebpf_status());
            prog_ids.sort_unstable();
            wait_for(
                || format!("programs {prog_ids:?} are still loaded"),
                Duration::from_secs(5),
                || live_ids("prog").iter().all(|id| !prog_ids.contains(id)),
            );
            let others: Vec<String> = ["cgroup", "netns"]
                .iter()
                .flat_map(|k| pins_under(&root.join(k)))
                .collect();
            if others.is_empty() {
                assert!(
                    !root.exists(),
                    "nothing is attached any more, yet {PIN_ROOT} remains: {}",
                    ebpf_status()
                );
                wait_for(
                    || format!("maps {map_ids:?} are still there"),
                    Duration::from_secs(5),
                    || live_ids("map").iter().all(|id| !map_ids.contains(id)),
                );
            } else {
                eprintln!("others are attached ({others:?}): the shared maps stay");
            }

            let out = p.detach();
            assert!(out.status.success(), "{}", text(&out));
            let said = text(&out);
            assert!(
                said.contains("was not enrolled") && said.contains("was not attached"),
                "{said}"
            );
        },
    )
}

/// An unmodified Envoy 1.40 running the reference capture config as uid 1337, with no
/// capabilities, proxies the pod's outbound and inbound connections behind skiff's eBPF: its
/// original_dst listener filter gets SO_ORIGINAL_DST from the cgroup/getsockopt program.
#[test]
fn unmodified_envoy_works_behind_skiff_ebpf() {
    ebpf_test(
        "unmodified_envoy_works_behind_skiff_ebpf",
        Duration::from_secs(60),
        || {
            let mut p = Pod::new(7);
            p.start_upstream(&["http:8080"]);
            p.start_app(&["http:9090"]);
            p.attach(CAPTURE_ALL);
            p.start_proxy(Kind::Envoy, &capture_config());
            let before = counters();
            let (pod4, remote4) = (p.pod_ip(), p.remote_ip());

            let c = p.curl(None, &format!("http://{remote4}:8080/"));
            assert_eq!(c.code, "200", "{c:?}");
            assert_eq!(c.local_ip, "127.0.0.1", "redirected: {c:?}");
            assert_eq!(c.peer().0, pod4);
            assert_eq!(p.stat("tcp.outbound.downstream_cx_total"), 1);
            assert_eq!(p.stat("cluster.passthrough.upstream_cx_total"), 1);
            assert_eq!(p.upstream_requests(8080).len(), 1, "no loop");
            assert!(grew(&before, "getsockopt_original_dst") >= 1);

            let c = p.remote_curl(&format!("http://{pod4}:9090/"));
            assert_eq!(c.code, "200", "{c:?}");
            assert_eq!(c.peer().0, "127.0.0.6", "the app is reached through envoy");
            assert_eq!(p.stat("tcp.inbound.downstream_cx_total"), 1);
            assert_eq!(p.stat("cluster.inbound_passthrough.upstream_cx_total"), 1);
            assert!(grew(&before, "inbound_assigned") >= 1);
            assert!(grew(&before, "getsockopt_local_address") >= 1);
        },
    )
}

/// `skiff ebpf attach --run-validation`: a probe of the workload's (a uid the flags do not
/// exempt), in the pod's cgroup and namespace, dials an address the flags capture and must
/// land on the outbound capture port with SO_ORIGINAL_DST naming the probe port. With the
/// probe's address excluded the self-test fails, clearly, with istio-iptables' exit code 126.
#[test]
fn run_validation_passes_when_capture_works_and_fails_when_not() {
    ebpf_test(
        "run_validation_passes_when_capture_works_and_fails_when_not",
        Duration::from_secs(60),
        || {
            let mut p = Pod::new(8);
            let out = p.attach(&["-i", "*", "-b", "*", "--run-validation"]);
            assert!(
                out.contains("validation passed")
                    && out.contains("SO_ORIGINAL_DST reported 203.0.113.1:15002"),
                "{out}"
            );
            let out = p.detach();
            assert!(out.status.success(), "{}", text(&out));
            let out = p.try_attach(&[
                "-i",
                "*",
                "-x",
                "203.0.113.0/24",
                "--run-validation",
                "--probe-timeout",
                "1s",
            ]);
            assert_eq!(out.status.code(), Some(126), "{}", text(&out));
            assert!(
                text(&out).contains("validation failed: no connection to 203.0.113.1:15002"),
                "{}",
                text(&out)
            );
        },
    );
}

/// `--sk-msg`: both sockets of each local hop (the app and skiff's outbound port; skiff from
/// 127.0.0.6 and the app) go into `skiff_socks`, and messages between them skip the loopback
/// TCP stack. Every byte arrives, in order, both ways, through concurrent connections that write
/// while they read and half-close; plain requests still work; the sockets leave the map when
/// they close; `skiff ebpf status` names the registered inbound listener; detach removes the
/// sk_msg attachment with everything else.
#[test]
fn sk_msg_short_circuits_local_hops_and_keeps_every_byte() {
    ebpf_test(
        "sk_msg_short_circuits_local_hops_and_keeps_every_byte",
        Duration::from_secs(90),
        || {
            const BYTES: usize = 4 << 20;
            const CONNS: usize = 4;
            let mut p = Pod::new(9);
            p.start_upstream(&["echo:7000", "http:8080"]);
            p.start_app(&["echo:7001", "http:9090"]);
            let status = ebpf_status();
            assert!(!status.contains("sk_msg"), "nothing before: {status}");
            let cookie = Pod::cookie(&p.attach(&["-i", "*", "-b", "*", "--sk-msg"]));
            assert!(
                Path::new(PIN_ROOT).join("sk_msg").exists(),
                "the sk_msg attachment is pinned"
            );
            let status = ebpf_status();
            assert!(
                status.contains("inbound listener: not registered"),
                "no proxy yet: {status}"
            );
            p.start_proxy(Kind::Skiff, &observed_capture_config());
            let status = ebpf_status();
            assert!(
                status.contains(&format!("netns {cookie}: ")) && status.contains(" sk_msg\n"),
                "{status}"
            );
            assert!(
                status.contains("inbound listener: registered (IPv4, IPv6)"),
                "{status}"
            );
            let (pod4, remote4) = (p.pod_ip(), p.remote_ip());

            // Outbound: app -> skiff is the local hop.
            let before = counters();
            let out = p.echo(true, &remote4, 7000, BYTES, CONNS);
            assert_eq!(
                out,
                format!("ok={CONNS} of={CONNS} local=127.0.0.1 got=[]"),
                "every byte back, through skiff"
            );
            assert_eq!(p.stat("tcp.outbound.downstream_cx_total"), CONNS as u64);
            assert!(grew(&before, "sk_msg_sockets") >= 2 * CONNS as u64);
            let redirected = grew(&before, "sk_msg_redirected");
            assert!(redirected > 0, "messages were short-circuited");
            eprintln!(
                "outbound: {redirected} messages short-circuited, {} sent through TCP",
                grew(&before, "sk_msg_passed")
            );

            // A request over the same path.
            let c = p.curl(None, &format!("http://{remote4}:8080/"));
            assert_eq!(c.code, "200", "{c:?}");
            assert_eq!(c.local_ip, "127.0.0.1", "redirected: {c:?}");
            assert_eq!(c.peer().0, pod4);

            // Inbound: skiff (from 127.0.0.6) -> app is the local hop.
            let before = counters();
            let out = p.echo(false, &pod4, 7001, BYTES, CONNS);
            assert_eq!(
                out,
                format!("ok={CONNS} of={CONNS} local={remote4} got=[]"),
                "every byte back, through skiff"
            );
            assert_eq!(p.stat("tcp.inbound.downstream_cx_total"), CONNS as u64);
            assert!(grew(&before, "sk_msg_sockets") >= 2 * CONNS as u64);
            assert!(grew(&before, "sk_msg_redirected") > 0);
            let c = p.remote_curl(&format!("http://{pod4}:9090/"));
            assert_eq!(c.code, "200", "{c:?}");
            assert_eq!(c.peer().0, "127.0.0.6", "the app is reached through skiff");

            // Closed sockets leave the map.
            wait_for(
                || format!("sockets left in skiff_socks:\n{}", ebpf_status()),
                Duration::from_secs(10),
                || ebpf_status().contains("sk_msg sockets: 0\n"),
            );

            // Detach takes the sk_msg attachment and its program too.
            let link = bpftool_json(&["link", "show", "pinned", &format!("{PIN_ROOT}/sk_msg")]);
            let prog = link["prog_id"].as_u64().expect("the sk_msg link's program");
            p.cg.kill_all();
            let out = p.detach();
            assert!(out.status.success(), "{}", text(&out));
            assert!(
                !Path::new(PIN_ROOT).join("sk_msg").exists(),
                "detach removed the sk_msg pin"
            );
            wait_for(
                || format!("the sk_msg program {prog} is still loaded"),
                Duration::from_secs(5),
                || !live_ids("prog").contains(&prog),
            );
        },
    );
}
