//! `skiff node-agent` against scratch directories standing in for /etc/cni/net.d and
//! /opt/cni/bin, with another network's configuration already there: skiff's entry is
//! chained last into the primary conflist (the others kept intact and in order), a `.conf` is
//! converted, the entry comes back after the file is rewritten, /healthz /readyz /metrics
//! answer, and uninstalling (the subcommand, or SIGTERM with --uninstall-on-exit) leaves the
//! directories as they were. As root, the eBPF backend: programs attached to a cgroup of the
//! test's standing in for the root, a pod that was already running enrolled from the API's
//! pod list, and everything detached and unpinned again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_tests::cgroup::Cgroup;
use skiff_tests::netns::Netns;
use skiff_tests::proxy::Kind;

/// The primary network's conflist, as Calico's installer writes it.
const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "log_level": "info",
      "datastore_type": "kubernetes",
      "nodename": "node-a",
      "mtu": 0,
      "ipam": {"type": "calico-ipam"},
      "policy": {"type": "k8s"},
      "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}
    },
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}}
  ]
}
"#;

/// A later file the runtime does not use (it takes the lowest-sorted one).
const OTHER: &str = r#"{"cniVersion":"1.0.0","name":"spare","type":"bridge","bridge":"spare0"}"#;

struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = skiff_tests::scratch_dir(tag);
        for d in ["net.d", "bin", "state"] {
            std::fs::create_dir_all(dir.join(d)).expect("scratch dir");
        }
        std::fs::write(dir.join("token"), "agent-token\n").expect("token");
        Scratch { dir }
    }
    fn conf(&self) -> PathBuf {
        self.dir.join("net.d")
    }
    fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }
    /// The agent's flags for these directories.
    fn flags(&self, backend: &str, api: &str) -> Vec<String> {
        [
            "--cni-conf-dir",
            &self.conf().to_string_lossy(),
            "--cni-bin-dir",
            &self.bin().to_string_lossy(),
            "--state-dir",
            &self.dir.join("state").to_string_lossy(),
            "--token-file",
            &self.dir.join("token").to_string_lossy(),
            "--ca-file",
            &self.dir.join("no-ca").to_string_lossy(),
            "--api-server",
            api,
            "--backend",
            backend,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The agent as a child process, killed on drop.
struct Agent {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Agent {
    fn start(flags: &[String], extra: &[&str], log: PathBuf) -> Agent {
        let port = skiff_tests::free_port();
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(Kind::Skiff.binary())
            .arg("node-agent")
            .args(flags)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--watch-interval-ms",
                "100",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start skiff node-agent");
        Agent { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the agent's port: (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-s", "-m", "2", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.parse().unwrap_or(0), body.to_string())
    }

    fn wait(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen; agent log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ready(&self) {
        self.wait("/readyz 200", || self.get("/readyz").0 == 200);
    }

    /// SIGTERM, then its exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent ignored SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn types(v: &Value) -> Vec<String> {
    v["plugins"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["type"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn uninstall(flags: &[String]) -> String {
    let out = Command::new(Kind::Skiff.binary())
        .arg("node-agent")
        .arg("uninstall")
        .args(flags)
        .output()
        .expect("skiff node-agent uninstall");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "uninstall: {text}");
    text
}

#[test]
fn install_keeps_the_other_plugins_restores_the_entry_and_uninstalls_cleanly() {
    skiff_tests::require_program("iptables-restore", "apt-get install iptables");
    skiff_tests::require_program("nsenter", "apt-get install util-linux");
    let s = Scratch::new("agent-install");
    let primary = s.conf().join("10-calico.conflist");
    std::fs::write(&primary, CALICO).expect("calico conflist");
    std::fs::write(s.conf().join("99-spare.conf"), OTHER).expect("spare conf");
    std::fs::write(s.bin().join("calico"), "#!/bin/sh\n").expect("calico binary");
    let flags = s.flags("iptables", "http://127.0.0.1:9");
    let agent = Agent::start(&flags, &["--uninstall-on-exit"], s.dir.join("agent.log"));
    agent.wait_ready();
    assert_eq!(agent.get("/healthz").0, 200);

    // Chained last; the other plugins, their keys and their order as they were.
    let installed = read_json(&primary);
    assert_eq!(
        types(&installed),
        ["calico", "portmap", "bandwidth", "skiff-cni"]
    );
    let original: Value = serde_json::from_str(CALICO).expect("json");
    for i in 0..3 {
        assert_eq!(
            installed["plugins"][i], original["plugins"][i],
            "plugin {i} kept"
        );
    }
    assert_eq!(installed["name"], "k8s-pod-network");
    assert_eq!(installed["cniVersion"], "0.3.1");
    let entry = &installed["plugins"][3];
    assert_eq!(entry["backend"], "iptables");
    assert_eq!(entry["kubernetes"]["apiServer"], "http://127.0.0.1:9");
    let token = s.conf().join("skiff/token");
    assert_eq!(entry["kubernetes"]["tokenFile"], json!(token));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token)
            .expect("token copy")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the token copy is private");
    }
    assert_eq!(
        std::fs::read_to_string(s.conf().join("99-spare.conf")).expect("spare"),
        OTHER,
        "files other than the primary are left alone"
    );
    let plugin = s.bin().join("skiff-cni");
    assert_eq!(
        std::fs::read(&plugin).expect("skiff-cni installed"),
        std::fs::read(Kind::Skiff.binary()).expect("skiff"),
    );
    assert_eq!(
        std::fs::read_to_string(s.bin().join("calico")).expect("calico"),
        "#!/bin/sh\n"
    );
    // The installed plugin answers as a CNI plugin under its own name.
    let version = Command::new(&plugin)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .expect("run skiff-cni");
    let v: Value = serde_json::from_slice(&version.stdout).expect("VERSION output");
    assert!(v["supportedVersions"]
        .as_array()
        .is_some_and(|a| a.contains(&json!("1.0.0"))));

    // The primary network's installer rewrites its file: the entry comes back.
    std::fs::write(&primary, CALICO).expect("rewrite");
    agent.wait("the entry restored", || {
        types(&read_json(&primary)).last().map(String::as_str) == Some("skiff-cni")
    });
    agent.wait("the restore counted", || {
        agent
            .get("/metrics")
            .1
            .contains("skiff_node_agent_conflist_restores_total 1")
    });
    let (_, metrics) = agent.get("/metrics");
    assert!(metrics.contains("skiff_node_agent_ready 1"), "{metrics}");
    assert!(
        metrics.contains("# TYPE skiff_cni_captured_pods gauge"),
        "{metrics}"
    );

    // SIGTERM with --uninstall-on-exit: the directories as they were.
    let status = agent.terminate();
    assert!(status.success(), "agent exit: {status:?}");
    assert_eq!(read_json(&primary), original);
    assert!(!plugin.exists(), "skiff-cni removed");
    assert!(!s.conf().join("skiff").exists(), "credentials removed");
    assert!(s.bin().join("calico").exists());
    assert_eq!(
        std::fs::read_to_string(s.conf().join("99-spare.conf")).expect("spare"),
        OTHER
    );
    let again = uninstall(&flags);
    assert!(
        again.contains("nothing of skiff's was installed"),
        "{again}"
    );
}

#[test]
fn a_single_plugin_conf_is_converted_and_the_agent_waits_for_a_primary_network() {
    let s = Scratch::new("agent-conf");
    let flags = s.flags("iptables", "http://127.0.0.1:9");
    let agent = Agent::start(&flags, &["--skip-reconcile"], s.dir.join("agent.log"));
    // No CNI configuration yet: alive but not ready.
    agent.wait("/healthz", || agent.get("/healthz").0 == 200);
    assert_eq!(agent.get("/readyz").0, 503);
    // The primary network's plugin arrives as a .conf.
    let conf = s.conf().join("10-bridge.conf");
    std::fs::write(
        &conf,
        r#"{"cniVersion":"1.0.0","name":"bridge-net","type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.204.9.0/24"}}"#,
    )
    .expect("bridge conf");
    agent.wait_ready();
    let list = s.conf().join("10-bridge.conflist");
    let v = read_json(&list);
    assert!(!conf.exists(), "the .conf is replaced by the .conflist");
    assert_eq!(types(&v), ["bridge", "skiff-cni"]);
    assert_eq!(v["name"], "bridge-net");
    assert_eq!(v["plugins"][0]["ipam"]["subnet"], "10.204.9.0/24");
    // SIGTERM without --uninstall-on-exit: the node stays prepared (restarts, upgrades).
    assert!(agent.terminate().success());
    assert_eq!(types(&read_json(&list)), ["bridge", "skiff-cni"]);
    assert!(s.bin().join("skiff-cni").exists());
    let out = uninstall(&flags);
    assert!(out.contains("entry removed"), "{out}");
    assert_eq!(types(&read_json(&list)), ["bridge"]);
    assert!(!s.bin().join("skiff-cni").exists());
}

/// The API's pod list for node-a: one injected pod, Running.
const API_PY: &str = r#"
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, listfile = int(sys.argv[1]), sys.argv[2]
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a"):
            data, code = open(listfile, "rb").read(), 200
        else:
            data, code = b'{"kind":"Status","status":"Failure","reason":"NotFound","code":404}', 404
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, fmt, *args):
        sys.stderr.write("API " + (fmt % args) + "\n")
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

#[test]
fn ebpf_backend_attaches_enrols_running_pods_and_detaches() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "needs root, and CI runs as root"
        );
        eprintln!("skipping: the eBPF backend needs root");
        return;
    }
    let s = Scratch::new("agent-ebpf");
    std::fs::write(s.conf().join("10-calico.conflist"), CALICO).expect("conflist");
    // The "node": a cgroup standing in for the root, with a running pod below it (its
    // processes in kubepods/pod<uid>, in its own network namespace).
    let node = Cgroup::new("agent");
    let uid = "9d3c2b1a-0f4e-4d5c-8b7a-6e5f4d3c2b1a";
    let pod_cg = node.path.join("kubepods").join(format!("pod{uid}"));
    std::fs::create_dir_all(&pod_cg).expect("pod cgroup");
    // Dropped before `node`: its processes killed and the child cgroups removed, so that
    // the node's cgroup can go too.
    struct Children(Vec<PathBuf>);
    impl Drop for Children {
        fn drop(&mut self) {
            for dir in &self.0 {
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                let deadline = Instant::now() + Duration::from_secs(5);
                while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    let _children = Children(vec![pod_cg.clone(), node.path.join("kubepods")]);
    let mut pod_ns = Netns::new("agentpod");
    pod_ns.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    pod_ns.exec(&["ip", "addr", "add", "10.204.8.2/24", "dev", "eth0"]);
    pod_ns.exec(&["ip", "link", "set", "eth0", "up"]);
    let mut sleeper = Command::new("sh");
    sleeper
        .arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec nsenter --net="$1" sleep 600"#)
        .arg(&pod_cg)
        .arg(pod_ns.path());
    pod_ns.spawn_command(sleeper, "sleep.log");
    let list = json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
        "items": [{
            "metadata": {"name": "web-0", "namespace": "shop", "uid": uid,
                         "annotations": {"sidecar.istio.io/status": "{}"}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "web"}, {"name": "skiff-proxy"}]},
            "status": {"phase": "Running", "podIP": "10.204.8.2"}
        }]
    });
    let list_file = s.dir.join("pods.json");
    std::fs::write(&list_file, list.to_string()).expect("pod list");
    let api_port = skiff_tests::free_port();
    let mut api = Command::new("python3")
        .args(["-c", API_PY, &api_port.to_string()])
        .arg(&list_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("api server");
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _api = Kill(&mut api);
    let mut flags = s.flags("ebpf", &format!("http://127.0.0.1:{api_port}"));
    flags.extend([
        "--cgroup-root".into(),
        node.path.to_string_lossy().into_owned(),
    ]);
    // Whatever happens, nothing stays attached or enrolled.
    struct Cleanup(Vec<String>, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new(Kind::Skiff.binary())
                .args(["node-agent", "uninstall"])
                .args(&self.0)
                .output();
            let _ = Command::new(Kind::Skiff.binary())
                .args(["ebpf", "unenroll", "--netns", &self.1])
                .output();
        }
    }
    let _cleanup = Cleanup(flags.clone(), pod_ns.path());
    // Wait until the pod's process is in its cgroup and namespace.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(pod_cg.join("cgroup.procs"))
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the pod's process did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));

    let agent = Agent::start(&flags, &["--node-name", "node-a"], s.dir.join("agent.log"));
    agent.wait_ready();
    let pins = Path::new("/sys/fs/bpf/skiff/cgroup").join(node.id().to_string());
    assert!(
        pins.join("connect4").exists(),
        "programs attached at the node's cgroup"
    );
    let record = s
        .dir
        .join("state")
        .join(format!("reconciled-{uid}.eth0.json"));
    agent.wait("the running pod enrolled", || record.exists());
    let rec = read_json(&record);
    let cookie = rec["cookie"].as_u64().expect("cookie");
    let status = Command::new(Kind::Skiff.binary())
        .args(["ebpf", "status"])
        .output()
        .expect("status");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains(&format!(
            "netns {cookie}: outbound 15001 inbound 15006 addresses 10.204.8.2"
        )),
        "{status}"
    );
    let (_, metrics) = agent.get("/metrics");
    assert!(
        metrics.contains("skiff_node_agent_reconciled_pods_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("skiff_ebpf_enrolled_namespaces"),
        "{metrics}"
    );
    drop(agent);

    let out = uninstall(&flags);
    assert!(
        out.contains("released 1 pods") && out.contains("programs detached"),
        "{out}"
    );
    assert!(!pins.exists(), "no cgroup pins left");
    let status = Command::new(Kind::Skiff.binary())
        .args(["ebpf", "status"])
        .output()
        .expect("status");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(!status.contains(&format!("netns {cookie}")), "{status}");
    assert_eq!(
        types(&read_json(&s.conf().join("10-calico.conflist"))),
        ["calico", "portmap", "bandwidth"]
    );
}
