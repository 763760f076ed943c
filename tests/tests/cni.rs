//! `skiff cni` end to end, driven as a container runtime drives a CNI chain: a conflist with
//! Debian's reference plugins (bridge with host-local IPAM, loopback; containernetworking-
//! plugins in /usr/lib/cni) followed by skiff's plugin, each run the way libcni runs it (the
//! `CNI_*` environment, the plugin's configuration with `name`, `cniVersion` and
//! `prevResult` on stdin, the binary found on `CNI_PATH`, installed as `skiff-cni`).
//!
//! A "node" is a network namespace of the test's (the plugins run inside it through
//! `nsenter --net`, so the bridge lives there, never on the host) and a cgroup with skiff's
//! programs attached; each "pod" is a network namespace and a child cgroup of the node's. A
//! stand-in API server (Python, inside the node namespace) answers the plugin's pod lookups
//! from pod objects the test writes. Capture is checked with skiff's own capture probe
//! (`skiff validate-capture`), run in the pod as a workload uid: it listens on the outbound
//! capture port and dials an outside address, which must land there with SO_ORIGINAL_DST.
//!
//! Needs root (CI runs as root); without it every test says so and stops. The tests share
//! skiff's pinned maps, so they run one at a time; whatever they made goes again on drop,
//! also when they fail. Addresses: 10.204.<n>.0/24 inside the test's own namespaces.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_tests::cgroup::Cgroup;
use skiff_tests::netns::Netns;
use skiff_tests::proxy::Kind;

/// One test at a time: they share skiff's pinned maps.
static LOCK: Mutex<()> = Mutex::new(());

/// Where Debian's containernetworking-plugins installs the reference plugins.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The stand-in API server's port, inside the node namespace.
const API_PORT: u16 = 6443;

/// A uid of the workload's (not the proxy's 1337).
const APP_UID: &str = "1000";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}

/// Whether the test can run here; says why not (failing in CI, where it must run).
fn can_run(name: &str) -> bool {
    let why = if !is_root() {
        Some("needs root".to_string())
    } else if !Path::new(REFERENCE_PLUGINS).join("bridge").is_file() {
        Some(format!(
            "needs the reference CNI plugins in {REFERENCE_PLUGINS} (apt-get install containernetworking-plugins; `cargo xtask setup` does)"
        ))
    } else {
        None
    };
    match why {
        None => true,
        Some(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{name}: {why}, and CI has it"
            );
            eprintln!("skipping {name}: {why}");
            false
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn skiff() -> PathBuf {
    Kind::Skiff.binary()
}

fn ebpf_status() -> String {
    let out = Command::new(skiff())
        .args(["ebpf", "status"])
        .output()
        .expect("skiff ebpf status");
    text(&out)
}

/// The cookies of the namespaces `skiff ebpf status` lists as enrolled.
fn enrolled() -> Vec<u64> {
    ebpf_status()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("netns "))
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect()
}

/// A pod: its network namespace and its cgroup (a child of the node's).
struct Pod {
    id: String,
    ns: Netns,
    cgroup: PathBuf,
    namespace: String,
    name: String,
    /// A sandbox started by a real OCI runtime: then `CNI_NETNS` is its namespace.
    sandbox: Option<RuncSandbox>,
}

impl Pod {
    fn netns(&self) -> String {
        match &self.sandbox {
            Some(s) => format!("/proc/{}/ns/net", s.pid),
            None => self.ns.path(),
        }
    }

    fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            self.namespace, self.name, self.id
        )
    }

    /// Whether a workload process of this pod (its cgroup, its namespace, uid 1000) that
    /// dials `dial` lands on the outbound capture port, as skiff's capture probe sees it.
    fn captured(&self, dial: &str, timeout_ms: u32) -> Result<String, String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.cgroup)
            .arg("nsenter")
            .arg(format!("--net={}", self.netns()))
            .args(["--setuid", APP_UID, "--setgid", APP_UID, "--"])
            .arg(skiff())
            .args([
                "validate-capture",
                "--listen",
                "127.0.0.1:15001",
                "--dial",
                dial,
                "--timeout-ms",
                &timeout_ms.to_string(),
            ])
            .output()
            .expect("run the capture probe");
        if out.status.success() {
            Ok(text(&out))
        } else {
            Err(text(&out))
        }
    }

    /// This netns's cookie, from `skiff ebpf enroll`'s point of view (the state record).
    fn cookie(&self, state: &Path) -> Option<u64> {
        let rec = std::fs::read(state.join(format!("{}.eth0.json", self.id))).ok()?;
        serde_json::from_slice::<Value>(&rec).ok()?["cookie"].as_u64()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // A failed test may leave the namespace enrolled: take it out before it goes.
        let _ = Command::new(skiff())
            .args(["ebpf", "unenroll", "--netns", &self.netns()])
            .output();
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.cgroup.exists() && std::fs::remove_dir(&self.cgroup).is_err() {
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A node: its namespace (with the stand-in API server), its cgroup with skiff's programs
/// attached, a CNI bin dir with skiff installed as `skiff-cni`, the conflist, and a runtime's
/// cache of each sandbox's result.
struct Node {
    ns: Netns,
    cgroup: Cgroup,
    dir: PathBuf,
    conflist: Value,
    results: Mutex<HashMap<String, Value>>,
    next: Mutex<u32>,
}

impl Node {
    /// `subnet`: the pods' /24 (10.204.<n>.0/24); `backend`: ebpf or iptables.
    fn new(tag: &str, subnet: u8, backend: &str) -> Node {
        let mut ns = Netns::new(tag);
        let cgroup = Cgroup::new(tag);
        let dir = ns.dir.clone();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::os::unix::fs::symlink(skiff(), bin.join("skiff-cni")).expect("install skiff-cni");
        std::fs::create_dir_all(dir.join("api/pods")).expect("api dir");
        std::fs::write(dir.join("token"), "node-token\n").expect("token");
        ns.spawn(
            &[
                "python3",
                "-c",
                API_SERVER_PY,
                &API_PORT.to_string(),
                &dir.join("api").to_string_lossy(),
                "node-token",
            ],
            "api.log",
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = ns
                .command(&["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://127.0.0.1:{API_PORT}/healthz"))
                .output()
                .is_ok_and(|o| o.stdout == b"200");
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the stand-in API server did not start: {}",
                ns.log("api.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if backend == "ebpf" {
            let out = Command::new(skiff())
                .args(["ebpf", "attach", "--cgroup"])
                .arg(&cgroup.path)
                .output()
                .expect("skiff ebpf attach");
            assert!(out.status.success(), "attach: {}", text(&out));
        }
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": format!("skiff-test-{tag}"),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "skbr0",
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": format!("10.204.{subnet}.0/24")}]],
                        "dataDir": dir.join("ipam"),
                    }
                },
                {"type": "loopback"},
                {
                    "type": "skiff-cni",
                    "backend": backend,
                    "stateDir": dir.join("state"),
                    "excludeNamespaces": ["kube-system"],
                    "kubernetes": {
                        "apiServer": format!("http://127.0.0.1:{API_PORT}"),
                        "tokenFile": dir.join("token"),
                    },
                    "capture": {"excludeInboundPorts": "22"}
                }
            ]
        });
        Node {
            ns,
            cgroup,
            dir,
            conflist,
            results: Mutex::new(HashMap::new()),
            next: Mutex::new(0),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The state records the plugin holds.
    fn records(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".json"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// A new pod object in the stand-in API and its sandbox (namespace + cgroup).
    /// `sidecar`: whether it has a `skiff-proxy` container.
    fn pod(&self, namespace: &str, sidecar: bool, annotations: Value) -> Pod {
        let n = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            *next += 1;
            *next
        };
        let name = format!("app-{n}");
        let mut containers = vec![json!({"name": "app", "image": "app:1"})];
        if sidecar {
            containers.push(json!({"name": "skiff-proxy", "image": "skiff:dev"}));
        }
        let obj = json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("0000-{n}"),
                         "annotations": annotations},
            "spec": {"nodeName": "node-a", "containers": containers},
            "status": {"phase": "Pending"}
        });
        let dir = self.dir.join("api/pods").join(namespace);
        std::fs::create_dir_all(&dir).expect("api dir");
        std::fs::write(dir.join(format!("{name}.json")), obj.to_string()).expect("pod object");
        let ns = Netns::new(&format!("p{n}"));
        let cgroup = self.cgroup.path.join(format!("pod-{n}"));
        std::fs::create_dir(&cgroup).expect("pod cgroup");
        Pod {
            id: format!("sandbox{n}x{}", std::process::id()),
            ns,
            cgroup,
            namespace: namespace.into(),
            name,
            sandbox: None,
        }
    }

    /// The plugins' configurations as libcni builds them: each plugin's object with the
    /// list's `name` and `cniVersion`, and the previous result.
    fn plugin_conf(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut c = plugin.clone();
        c["name"] = self.conflist["name"].clone();
        c["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    /// Runs one plugin in the node's namespace: its stdout as JSON, or the error object.
    fn exec(&self, command: &str, conf: &Value, pod: &Pod) -> Result<Value, Value> {
        let ty = conf["type"].as_str().unwrap_or_default();
        let bin_dir = self.dir.join("bin");
        let cni_path = format!("{}:{REFERENCE_PLUGINS}", bin_dir.display());
        // libcni looks the type up on CNI_PATH.
        let program = std::env::split_paths(&cni_path)
            .map(|d| d.join(ty))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("plugin {ty} not on {cni_path}"));
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns.path()))
            .arg("--")
            .arg(program)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.id)
            .env("CNI_NETNS", pod.netns())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", pod.cni_args())
            .env("CNI_PATH", &cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run a plugin");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(conf.to_string().as_bytes())
                .expect("write the configuration");
        }
        let out = child.wait_with_output().expect("plugin output");
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(
                json!({"plugin": ty, "error": stdout, "stderr": String::from_utf8_lossy(&out.stderr)}),
            )
        }
    }

    /// ADD through the whole chain; the final result is cached as a runtime caches it.
    fn add(&self, pod: &Pod) -> Result<Value, Value> {
        let mut prev: Option<Value> = None;
        let plugins = self.plugins();
        for p in &plugins {
            let conf = self.plugin_conf(p, prev.as_ref());
            prev = Some(self.exec("ADD", &conf, pod)?);
        }
        let result = prev.unwrap_or(Value::Null);
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pod.id.clone(), result.clone());
        Ok(result)
    }

    /// The result the runtime cached for the pod's sandbox at ADD.
    fn cached(&self, pod: &Pod) -> Option<Value> {
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pod.id)
            .cloned()
    }

    /// The conflist's plugins, in order.
    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// DEL through the chain in reverse, with the cached result as prevResult.
    fn del(&self, pod: &Pod) -> Result<(), Value> {
        let cached = self.cached(pod);
        let plugins = self.plugins();
        for p in plugins.iter().rev() {
            let conf = self.plugin_conf(p, cached.as_ref());
            self.exec("DEL", &conf, pod)?;
        }
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pod.id);
        Ok(())
    }

    /// CHECK through the chain with the cached result.
    fn check(&self, pod: &Pod) -> Result<(), Value> {
        let cached = self.cached(pod);
        let plugins = self.plugins();
        for p in &plugins {
            let conf = self.plugin_conf(p, cached.as_ref());
            self.exec("CHECK", &conf, pod)?;
        }
        Ok(())
    }

    /// skiff's plugin alone, with a CNI 1.1.0 configuration (GC and STATUS are 1.1
    /// verbs; Debian's reference plugins speak 1.0, so a 1.1 runtime would call only skiff).
    fn skiff_only(&self, command: &str, extra: Value, pod: &Pod) -> Result<Value, Value> {
        let plugins = self.plugins();
        let mut conf = self.plugin_conf(plugins.last().expect("skiff entry"), None);
        conf["cniVersion"] = json!("1.1.0");
        if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        self.exec(command, &conf, pod)
    }

    /// What the node's namespace has left: its links and the addresses host-local holds.
    fn leftovers(&self) -> (Vec<String>, Vec<String>) {
        let links = String::from_utf8_lossy(&self.ns.exec(&["ip", "-o", "link", "show"]).stdout)
            .lines()
            .filter_map(|l| Some(l.split(':').nth(1)?.trim().split('@').next()?.to_string()))
            .filter(|n| n != "lo" && n != "skbr0")
            .collect();
        let net = self
            .dir
            .join("ipam")
            .join(self.conflist["name"].as_str().unwrap_or(""));
        let ips = std::fs::read_dir(net)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10.204."))
                    .collect()
            })
            .unwrap_or_default();
        (links, ips)
    }
}

/// A pod sandbox as a container runtime makes one: `runc run` of a busybox `sleep` with its
/// own network namespace (runc's default spec), which the CNI chain then wires up.
struct RuncSandbox {
    id: String,
    pid: u32,
}

impl RuncSandbox {
    fn start(dir: &Path, id: &str) -> RuncSandbox {
        let bundle = dir.join(format!("bundle-{id}"));
        std::fs::create_dir_all(bundle.join("rootfs/bin")).expect("bundle");
        std::fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox")).expect("busybox");
        let out = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(&bundle)
            .output()
            .expect("runc spec");
        assert!(out.status.success(), "runc spec: {}", text(&out));
        let path = bundle.join("config.json");
        let mut spec: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("json");
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(["/bin/busybox", "sleep", "600"]);
        spec["root"]["readonly"] = json!(true);
        let namespaces = spec["linux"]["namespaces"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            namespaces.iter().any(|n| n["type"] == "network"),
            "runc's default spec gives the sandbox its own network namespace"
        );
        std::fs::write(&path, spec.to_string()).expect("config.json");
        // The detached container keeps runc's stdio: a file, not a pipe, or reading runc's
        // output would wait for the container to end.
        let log_path = bundle.join("runc.log");
        let log = std::fs::File::create(&log_path).expect("runc log");
        let status = Command::new("runc")
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .status()
            .expect("runc run");
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(status.success(), "runc run: {}", log());
        let state = Command::new("runc")
            .args(["state", id])
            .output()
            .expect("runc state");
        let state: Value = serde_json::from_slice(&state.stdout).expect("runc state JSON");
        assert_eq!(state["status"], "running", "{state:#} {}", log());
        let pid = state["pid"].as_u64().expect("sandbox pid") as u32;
        RuncSandbox {
            id: id.to_string(),
            pid,
        }
    }

    fn stop(&self) {
        let _ = Command::new("runc")
            .args(["kill", &self.id, "KILL"])
            .output();
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .output();
    }
}

impl Drop for RuncSandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new(skiff())
            .args(["ebpf", "detach", "--cgroup"])
            .arg(&self.cgroup.path)
            .output();
    }
}

/// The stand-in API server: `GET /api/v1/namespaces/<ns>/pods/<name>` answers
/// `<dir>/pods/<ns>/<name>.json` (or a NotFound Status) to requests with the bearer token.
const API_SERVER_PY: &str = r#"
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, root, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        if self.path == "/healthz":
            return self.reply(200, b"ok")
        if self.headers.get("authorization") != "Bearer " + token:
            return self.reply(401, {"kind": "Status", "status": "Failure", "reason": "Unauthorized", "message": "Unauthorized", "code": 401})
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            f = os.path.join(root, "pods", parts[3], parts[5] + ".json")
            if os.path.exists(f):
                return self.reply(200, open(f, "rb").read())
            return self.reply(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "message": 'pods "%s" not found' % parts[5], "code": 404})
        self.reply(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "message": "no route", "code": 404})
    def log_message(self, fmt, *args):
        sys.stderr.write("API " + (fmt % args) + "\n")
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

/// Runs a test body on its own thread under a time limit, so that a hung plugin fails the
/// test instead of the run (what the body made is then left for its drops to remove when
/// the process ends).
fn limited(name: &str, limit: Duration, body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            body();
            let _ = tx.send(());
        })
        .expect("test thread");
    match rx.recv_timeout(limit) {
        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{name} did not finish within {limit:?}")
        }
    }
}

/// The outside address a pod's workload dials (the bridge's gateway in the node namespace).
fn gateway(subnet: u8) -> String {
    format!("10.204.{subnet}.1:15002")
}

#[test]
fn ebpf_backend_add_check_del_and_gc_as_a_runtime_drives_them() {
    if !can_run("ebpf_backend_add_check_del_and_gc_as_a_runtime_drives_them") {
        return;
    }
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    limited(
        "ebpf_backend_add_check_del_and_gc_as_a_runtime_drives_them",
        Duration::from_secs(180),
        move || {
            let node = Node::new("cnie", 1, "ebpf");
            let dial = gateway(1);

            // A pod with a sidecar: ADD passes the bridge's result on, enrols the namespace, and the
            // workload's connections land on the outbound port.
            let a = node.pod("shop", true, json!({}));
            let result = node.add(&a).unwrap_or_else(|e| panic!("ADD: {e:#}"));
            assert!(
                result["ips"][0]["address"]
                    .as_str()
                    .is_some_and(|ip| ip.starts_with("10.204.1.")),
                "prevResult passed through: {result:#}"
            );
            assert_eq!(node.records(), [format!("{}.eth0.json", a.id)]);
            let cookie = a
                .cookie(&node.state_dir())
                .expect("the record has the cookie");
            assert!(enrolled().contains(&cookie), "{}", ebpf_status());
            let probe = a.captured(&dial, 5000);
            assert!(
                probe.is_ok(),
                "captured after ADD: {probe:?}\n{}",
                ebpf_status()
            );
            node.check(&a).unwrap_or_else(|e| panic!("CHECK: {e:#}"));

            // A pod without a sidecar, and one in an excluded namespace: left alone, result unchanged.
            let plain = node.pod("shop", false, json!({}));
            let r = node
                .add(&plain)
                .unwrap_or_else(|e| panic!("ADD plain: {e:#}"));
            assert!(r["ips"][0]["address"].is_string(), "{r:#}");
            let system = node.pod("kube-system", true, json!({}));
            node.add(&system)
                .unwrap_or_else(|e| panic!("ADD kube-system: {e:#}"));
            assert_eq!(node.records().len(), 1, "only the sidecar pod is recorded");
            assert!(
                plain.captured(&dial, 800).is_err(),
                "a pod without a sidecar is not captured"
            );

            // An annotation that cannot be applied fails ADD with a CNI error naming it.
            let bad = node.pod(
                "shop",
                true,
                json!({"traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/33"}),
            );
            let e = node.add(&bad).expect_err("bad annotation");
            assert_eq!(e["plugin"], "skiff-cni", "{e:#}");
            assert_eq!(e["error"]["code"], 100, "{e:#}");
            assert!(
                e["error"]["details"]
                    .as_str()
                    .is_some_and(|d| d.contains("excludeOutboundIPRanges")),
                "{e:#}"
            );
            assert!(e["error"]["cniVersion"].is_string() && e["error"]["msg"].is_string());
            node.del(&bad)
                .unwrap_or_else(|e| panic!("DEL after a failed ADD: {e:#}"));

            // CHECK notices an enrolment removed behind the plugin's back; ADD again restores it.
            let out = Command::new(skiff())
                .args(["ebpf", "unenroll", "--netns", &a.netns()])
                .output()
                .expect("unenroll");
            assert!(out.status.success(), "{}", text(&out));
            let e = node.check(&a).expect_err("CHECK finds it gone");
            assert_eq!(e["error"]["code"], 102, "{e:#}");
            // (skiff's plugin alone, with the cached result: the bridge's veth already exists.)
            let cached = node.cached(&a).expect("a cached result");
            let again = node
                .skiff_only(
                    "ADD",
                    json!({"cniVersion": "1.0.0", "prevResult": cached}),
                    &a,
                )
                .unwrap_or_else(|e| panic!("ADD again: {e:#}"));
            assert_eq!(again, cached, "prevResult passed through unchanged");
            node.check(&a)
                .unwrap_or_else(|e| panic!("CHECK after ADD again: {e:#}"));

            // STATUS: ready while the programs are attached.
            node.skiff_only("STATUS", json!({}), &a)
                .unwrap_or_else(|e| panic!("STATUS: {e:#}"));

            // GC: the runtime still knows `a` only; `b`'s enrolment is collected.
            let b = node.pod("shop", true, json!({}));
            node.add(&b).unwrap_or_else(|e| panic!("ADD b: {e:#}"));
            let b_cookie = b.cookie(&node.state_dir()).expect("b recorded");
            node.skiff_only(
                "GC",
                json!({"cni.dev/valid-attachments": [{"containerID": a.id, "ifname": "eth0"}]}),
                &a,
            )
            .unwrap_or_else(|e| panic!("GC: {e:#}"));
            assert_eq!(node.records(), [format!("{}.eth0.json", a.id)]);
            let now = enrolled();
            assert!(
                now.contains(&cookie) && !now.contains(&b_cookie),
                "{now:?} {}",
                ebpf_status()
            );
            assert!(b.captured(&dial, 800).is_err(), "b is released by GC");
            node.del(&b)
                .unwrap_or_else(|e| panic!("DEL b after GC: {e:#}"));

            // DEL releases the pod; twice, and for pods never added, succeeds.
            node.del(&a).unwrap_or_else(|e| panic!("DEL: {e:#}"));
            assert!(node.records().is_empty(), "{:?}", node.records());
            assert!(!enrolled().contains(&cookie), "{}", ebpf_status());
            assert!(a.captured(&dial, 800).is_err(), "not captured after DEL");
            node.del(&a).unwrap_or_else(|e| panic!("DEL again: {e:#}"));
            node.del(&plain)
                .unwrap_or_else(|e| panic!("DEL plain: {e:#}"));
            node.del(&system)
                .unwrap_or_else(|e| panic!("DEL kube-system: {e:#}"));
            let never = node.pod("shop", true, json!({}));
            node.del(&never)
                .unwrap_or_else(|e| panic!("DEL of a pod never added: {e:#}"));
            assert_eq!(
                node.leftovers(),
                (vec![], vec![]),
                "veths and addresses released"
            );
        },
    );
}

#[test]
fn iptables_backend_applies_and_removes_rules_inside_the_pod() {
    if !can_run("iptables_backend_applies_and_removes_rules_inside_the_pod") {
        return;
    }
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    limited(
        "iptables_backend_applies_and_removes_rules_inside_the_pod",
        Duration::from_secs(180),
        move || {
            let node = Node::new("cnii", 2, "iptables");
            let dial = gateway(2);
            let pod = node.pod(
                "shop",
                true,
                json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "5432"}),
            );
            let nat = |p: &Pod| {
                String::from_utf8_lossy(&p.ns.exec(&["iptables-save", "-t", "nat"]).stdout)
                    .into_owned()
            };
            let before = nat(&pod);
            node.add(&pod).unwrap_or_else(|e| panic!("ADD: {e:#}"));
            let rules = nat(&pod);
            for want in [
                ":ISTIO_OUTPUT",
                "-A OUTPUT -j ISTIO_OUTPUT",
                "--to-ports 15001",
                "--dports 5432 -j RETURN",
            ] {
                assert!(rules.contains(want), "missing `{want}` in:\n{rules}");
            }
            let probe = pod.captured(&dial, 5000);
            assert!(probe.is_ok(), "captured by the rules: {probe:?}");
            node.check(&pod).unwrap_or_else(|e| panic!("CHECK: {e:#}"));
            node.skiff_only("STATUS", json!({}), &pod)
                .unwrap_or_else(|e| panic!("STATUS: {e:#}"));
            node.del(&pod).unwrap_or_else(|e| panic!("DEL: {e:#}"));
            let after = nat(&pod);
            assert!(!after.contains("ISTIO_"), "rules left after DEL:\n{after}");
            let strip = |s: &str| {
                s.lines()
                    .filter(|l| !l.starts_with('#'))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert_eq!(strip(&after), strip(&before), "the nat table is as it was");
            assert!(pod.captured(&dial, 800).is_err(), "not captured after DEL");
            node.del(&pod)
                .unwrap_or_else(|e| panic!("DEL again: {e:#}"));
            assert!(node.records().is_empty());
        },
    );
}

#[test]
fn fifty_pods_added_and_deleted_at_once_leave_nothing_behind() {
    if !can_run("fifty_pods_added_and_deleted_at_once_leave_nothing_behind") {
        return;
    }
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    limited(
        "fifty_pods_added_and_deleted_at_once_leave_nothing_behind",
        Duration::from_secs(180),
        move || {
            let node = Node::new("cnic", 3, "ebpf");
            let before = enrolled();
            let pods: Vec<Pod> = (0..50).map(|_| node.pod("shop", true, json!({}))).collect();
            std::thread::scope(|s| {
                let handles: Vec<_> = pods.iter().map(|p| s.spawn(|| node.add(p))).collect();
                for h in handles {
                    if let Err(e) = h.join().expect("ADD thread") {
                        panic!("concurrent ADD: {e:#}");
                    }
                }
            });
            assert_eq!(node.records().len(), 50);
            let cookies: Vec<u64> = pods
                .iter()
                .map(|p| p.cookie(&node.state_dir()).expect("recorded"))
                .collect();
            let now = enrolled();
            assert!(cookies.iter().all(|c| now.contains(c)), "all 50 enrolled");
            // One of them, picked from the middle, really is captured.
            let probe = pods[25].captured(&gateway(3), 5000);
            assert!(probe.is_ok(), "{probe:?}");
            std::thread::scope(|s| {
                let handles: Vec<_> = pods.iter().map(|p| s.spawn(|| node.del(p))).collect();
                for h in handles {
                    if let Err(e) = h.join().expect("DEL thread") {
                        panic!("concurrent DEL: {e:#}");
                    }
                }
            });
            assert!(node.records().is_empty(), "{:?}", node.records());
            let mut after = enrolled();
            after.sort_unstable();
            let mut before = before;
            before.sort_unstable();
            assert_eq!(after, before, "no enrolment left: {}", ebpf_status());
            assert_eq!(
                node.leftovers(),
                (vec![], vec![]),
                "veths and addresses released"
            );
        },
    );
}

/// Whether runc (Debian's) is installed; says so when not (failing in CI, where setup installs it).
fn have_runc(name: &str) -> bool {
    let ok = Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Path::new("/bin/busybox").is_file();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name}: runc and busybox-static are installed by `cargo xtask setup`"
        );
        eprintln!("skipping {name}: needs runc and busybox-static");
    }
    ok
}

#[test]
fn a_sandbox_started_by_runc_is_captured_and_released() {
    let name = "a_sandbox_started_by_runc_is_captured_and_released";
    if !can_run(name) || !have_runc(name) {
        return;
    }
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    limited(
        "a_sandbox_started_by_runc_is_captured_and_released",
        Duration::from_secs(180),
        move || {
            let node = Node::new("cnir", 4, "ebpf");
            let mut pod = node.pod("shop", true, json!({}));
            let id = format!("skiff-cni-{}", std::process::id());
            pod.sandbox = Some(RuncSandbox::start(&node.dir, &id));
            assert_ne!(
                std::fs::read_link(pod.netns()).ok(),
                std::fs::read_link("/proc/self/ns/net").ok(),
                "the sandbox has a network namespace of its own"
            );
            let result = node.add(&pod).unwrap_or_else(|e| panic!("ADD: {e:#}"));
            assert!(
                result["ips"][0]["address"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("10.204.4.")),
                "{result:#}"
            );
            let probe = pod.captured(&gateway(4), 5000);
            assert!(
                probe.is_ok(),
                "a workload in the runc sandbox's namespace is captured: {probe:?}"
            );
            node.check(&pod).unwrap_or_else(|e| panic!("CHECK: {e:#}"));
            let cookie = pod.cookie(&node.state_dir()).expect("recorded");
            // The runtime tears the sandbox down, then calls DEL: the namespace is gone by then, and
            // the enrolment still goes (it is keyed by the cookie the record kept).
            if let Some(s) = &pod.sandbox {
                s.stop();
            }
            node.del(&pod)
                .unwrap_or_else(|e| panic!("DEL after the sandbox is gone: {e:#}"));
            assert!(!enrolled().contains(&cookie), "{}", ebpf_status());
            assert!(node.records().is_empty());
            node.del(&pod)
                .unwrap_or_else(|e| panic!("DEL again: {e:#}"));
        },
    );
}
