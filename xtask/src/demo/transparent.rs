//! `cargo xtask demo`: skiff as a transparent sidecar, with eBPF where Istio uses iptables.
//!
//! A pod (its own network namespace and cgroup) and a remote host joined by a veth pair
//! ([`crate::pod`]); xtask's echo server as the remote host's upstream and as the pod's app;
//! `skiff ebpf attach` on the pod; skiff inside the pod as uid 1337 on the embedded
//! `examples/sidecar.yaml`. Then the app's outbound connects and the remote host's inbound
//! ones go through skiff without either side knowing: the echo shows who connected, skiff's
//! access log and stats show the original destinations, and `skiff ebpf status` and bpftool
//! show what the kernel holds. Everything is removed at the end, on errors and on Ctrl-C too.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::pod::{
    self, in_netns, output, Pod, POD_IP, POD_IP6, POD_NS, REMOTE_IP, REMOTE_IP6, REMOTE_NS, VETH,
};
use crate::process::{is_root, tail, which, Proc};
use crate::{bail, setup, Error, Result};

/// The sidecar configuration, embedded so the demo needs no files at run time.
pub const SIDECAR_YAML: &str = include_str!("../../../examples/sidecar.yaml");

/// The proxy's uid and gid, as in Istio (exempt from capture by default).
const PROXY_UID: u32 = 1337;
/// The remote host's upstream and the pod's app.
const UPSTREAM_PORT: u16 = 8080;
const APP_PORT: u16 = 9090;
/// skiff's admin inside the pod.
const ADMIN: &str = "http://127.0.0.1:15000";
const PIN_ROOT: &str = "/sys/fs/bpf/skiff";

const NEEDS_ROOT: &str = "cargo xtask demo needs root: it creates two network namespaces, a veth \
pair and a cgroup, and attaches eBPF programs (and removes them all again at the end). Run it as \
root, for example `sudo env \"PATH=$PATH\" cargo xtask demo`. `cargo xtask demo --http` shows \
HTTP/1.1, h2c and TCP proxying on loopback without root.";

struct Options {
    keep: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options { keep: false };
    for a in args {
        match a.as_str() {
            "--keep" => o.keep = true,
            other => bail!(
                "unknown demo option `{other}` (known: --keep; `--http` as the first argument \
                 runs the HTTP demo)"
            ),
        }
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result {
    let opts = parse(args)?;
    if !is_root() {
        bail!("{NEEDS_ROOT}");
    }
    println!(
        "skiff as a transparent sidecar: eBPF steers a pod's connections through skiff, \
         no iptables involved"
    );
    section("1. Build");
    setup::require(&["ip", "curl", "bpftool", "setpriv"])?;
    let skiff = crate::build_skiff_path()?;
    println!("built {}", skiff.display());
    println!("$ skiff --mode validate --config-yaml \"$(cat examples/sidecar.yaml)\"");
    let verdict = output(
        Command::new(&skiff)
            .args(["--mode", "validate", "--config-yaml"])
            .arg(SIDECAR_YAML),
    )?;
    indent(&verdict);
    let logs = Logs::new()?;

    section("2. A pod and a remote host");
    let mut pod = Pod::create(&skiff)?;
    let cgroup_id = std::fs::metadata(&pod.cgroup)?.ino();
    let mut cookie = None;
    let result = show(&pod, &skiff, &logs, &opts, &mut cookie);
    if result.is_err() {
        logs.show_tails();
    }

    section("8. Clean-up");
    for line in pod.teardown() {
        println!("{line}");
    }
    let left = leftovers(&pod.cgroup, cgroup_id, cookie);
    drop(pod);
    result?;
    if let Some(left) = left {
        bail!("the demo left {left} behind");
    }
    println!(
        "nothing of the demo's is left: no namespaces, no cgroup, no pins of its own under \
         {PIN_ROOT}{}",
        if Path::new(PIN_ROOT).exists() {
            " (the directory stays: something else is attached)"
        } else {
            ""
        }
    );
    println!("\ndemo OK");
    Ok(())
}

/// Everything between building the topology and tearing it down.
/// Sets `cookie` to the pod's netns cookie once it is enrolled.
fn show(pod: &Pod, skiff: &Path, logs: &Logs, opts: &Options, cookie: &mut Option<u64>) -> Result {
    let cg = pod.cgroup.display().to_string();
    println!("  pod          network namespace {POD_NS} and cgroup {cg}");
    println!("               {POD_IP}/24 and {POD_IP6}/64 on {}", VETH.0);
    println!(
        "  remote host  network namespace {REMOTE_NS}: {REMOTE_IP}/24 and {REMOTE_IP6}/64 on {}",
        VETH.1
    );
    let xtask = std::env::current_exe()?;
    let xtask = xtask.to_string_lossy();
    let listen = |port: u16| format!("[::]:{port}");
    let mut upstream = spawn_logged(
        "upstream",
        &mut in_netns(REMOTE_NS, &[&xtask, "_serve", &listen(UPSTREAM_PORT)]),
        &logs.upstream,
        &logs.upstream,
    )?;
    logs.wait_line(&logs.upstream, "listening on", &mut upstream)?;
    println!(
        "  upstream     an echo server on [::]:{UPSTREAM_PORT} in the remote host (xtask's: it \
         answers with the request and the connection's two ends)"
    );
    let mut app = spawn_logged(
        "app",
        &mut pod.command(None, &[&xtask, "_serve", &listen(APP_PORT)]),
        &logs.app,
        &logs.app,
    )?;
    logs.wait_line(&logs.app, "listening on", &mut app)?;
    println!(
        "  app          the same echo server on [::]:{APP_PORT} in the pod; its outbound calls \
         below are curl, run in the pod's cgroup and netns"
    );

    section("3. skiff's eBPF programs on the pod, skiff in the pod");
    let netns = pod::netns_path(POD_NS).display().to_string();
    println!("$ skiff ebpf attach --cgroup {cg} --netns {netns} -i '*' -b '*'");
    let attached = pod.skiff_ebpf(&[
        "attach", "--cgroup", &cg, "--netns", &netns, "-i", "*", "-b", "*",
    ])?;
    indent(&attached);
    let cookie = *cookie.insert(netns_cookie(&attached)?);
    println!(
        "  (-i '*' captures outbound connections to every address, -b '*' inbound ones to every \
         port; uid and gid {PROXY_UID}, skiff's, are exempt)"
    );
    let pod_skiff = reachable_by_proxy(skiff)?;
    println!(
        "$ skiff --config-yaml \"$(cat examples/sidecar.yaml)\" --concurrency 1    # as uid \
         {PROXY_UID}, in the pod's cgroup and netns"
    );
    let mut proxy = spawn_logged(
        "skiff",
        &mut pod.command(
            Some(PROXY_UID),
            &[
                &pod_skiff.to_string_lossy(),
                "--config-yaml",
                SIDECAR_YAML,
                "--concurrency",
                "1",
                "--file-flush-interval-msec",
                "100",
            ],
        ),
        &logs.access,
        &logs.skiff,
    )?;
    wait_ready(&mut proxy)?;
    println!(
        "  ready: outbound 15001 and inbound 15006 (0.0.0.0 and [::]), admin {ADMIN}; access log \
         {}, log {}",
        logs.access.display(),
        logs.skiff.display()
    );

    section("4. Outbound: the app calls the remote host; connect4/6 send the connection to skiff");
    outbound(pod, logs, REMOTE_IP, "127.0.0.1", POD_IP)?;
    outbound(pod, logs, &format!("[{REMOTE_IP6}]"), "::1", POD_IP6)?;
    proxy.check_running()?;

    section("5. Inbound: the remote host calls the app; sk_lookup hands the connection to skiff");
    inbound(logs, POD_IP, "127.0.0.6")?;
    inbound(logs, &format!("[{POD_IP6}]"), "::6")?;
    proxy.check_running()?;

    section(&format!(
        "6. skiff's stats (GET {ADMIN}/stats in the pod, non-zero connection counters)"
    ));
    stats()?;

    section("7. What the kernel holds");
    kernel_view(pod, &xtask, cookie)?;

    if opts.keep {
        keep(pod);
    }
    println!("\n$ curl -X POST {ADMIN}/quitquitquit    # in the pod: skiff exits");
    output(&mut in_netns(
        POD_NS,
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-X",
            "POST",
            &format!("{ADMIN}/quitquitquit"),
        ],
    ))?;
    if proxy.wait_or_kill(Duration::from_secs(10)).is_none() {
        bail!("skiff did not exit after POST /quitquitquit; killed it");
    }
    Ok(())
}

/// The app (root in the pod) fetches `http://<host>:8080/`: its socket must be connected to
/// loopback (skiff's 15001), the upstream must see skiff's connection from the pod's address,
/// and skiff's access log must name the original destination.
fn outbound(pod: &Pod, logs: &Logs, host: &str, loopback: &str, pod_ip: &str) -> Result {
    let url = format!("http://{host}:{UPSTREAM_PORT}/from-the-app");
    println!("$ curl {url}    # the app, in the pod");
    let r = curl(&mut pod.command(None, &curl_args(&url)))?;
    if r.local_ip != loopback {
        bail!(
            "the app's connection was not redirected: its socket is {}, not on {loopback}",
            r.local()
        );
    }
    println!(
        "  {} from the upstream; the app's socket is {}: the kernel connected it to skiff at \
         {}:15001",
        r.code,
        r.local(),
        bracket(loopback)
    );
    let (request, conn) = r.echo()?;
    println!("  the upstream got `{request}` {conn}");
    if !conn.contains(&format!("from {}:", bracket(pod_ip))) {
        bail!("the upstream should see skiff's connection from the pod's address {pod_ip}");
    }
    let line = logs.wait_access(&format!(" {} -> ", r.local()))?;
    println!("  skiff's access log: {line}");
    Ok(())
}

/// The remote host fetches `http://<pod>:9090/`: the app must see the connection from the
/// inbound passthrough address (skiff), and skiff's access log must show the client's real
/// address.
fn inbound(logs: &Logs, host: &str, passthrough: &str) -> Result {
    let url = format!("http://{host}:{APP_PORT}/from-the-remote-host");
    println!("$ curl {url}    # on the remote host");
    let r = curl(&mut in_netns(REMOTE_NS, &curl_args(&url)))?;
    let (request, conn) = r.echo()?;
    println!("  {} from the app, which got `{request}` {conn}", r.code);
    if !conn.contains(&format!("from {}:", bracket(passthrough))) {
        bail!("the app should see the connection from skiff's {passthrough}");
    }
    let line = logs.wait_access(&format!(" {} -> ", r.local()))?;
    println!("  skiff's access log: {line}");
    println!(
        "  (skiff sees the client's own address {}; it reaches the app from {passthrough}, as \
         Istio's inbound passthrough does)",
        r.local()
    );
    Ok(())
}

fn curl_args(url: &str) -> Vec<&str> {
    vec![
        "curl",
        "-sS",
        "-g",
        "--max-time",
        "5",
        "-w",
        "\n%{http_code} %{local_ip} %{local_port}",
        url,
    ]
}

/// What curl printed: the body, then `-w`'s status and local address.
struct Fetched {
    body: String,
    code: String,
    local_ip: String,
    local_port: String,
}

impl Fetched {
    /// The client's socket address as skiff's access log writes it.
    fn local(&self) -> String {
        format!("{}:{}", bracket(&self.local_ip), self.local_port)
    }

    /// The echo's request line and its `(connection from … to …)` line.
    fn echo(&self) -> Result<(&str, &str)> {
        let request = self.body.lines().next().unwrap_or("");
        let conn = self
            .body
            .lines()
            .find(|l| l.starts_with("(connection from "))
            .ok_or_else(|| Error(format!("not an answer of the echo server: {}", self.body)))?;
        Ok((request, conn))
    }
}

fn curl(cmd: &mut Command) -> Result<Fetched> {
    let out = cmd
        .output()
        .map_err(|e| Error(format!("cannot run curl: {e}")))?;
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = all.rsplit_once('\n').unwrap_or(("", &all));
    let mut f = tail.split(' ');
    let r = Fetched {
        body: body.to_string(),
        code: f.next().unwrap_or("").to_string(),
        local_ip: f.next().unwrap_or("").to_string(),
        local_port: f.next().unwrap_or("").to_string(),
    };
    if !out.status.success() || r.code != "200" {
        bail!(
            "curl failed ({}, HTTP status {}): {}",
            out.status,
            r.code,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(r)
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') && !ip.starts_with('[') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// Waits for skiff's admin to answer `/ready` with 200.
fn wait_ready(proxy: &mut Proc) -> Result {
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = format!("{ADMIN}/ready");
    while Instant::now() < deadline {
        proxy.check_running()?;
        let out = in_netns(
            POD_NS,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "1",
                "-w",
                "%{http_code}",
                &url,
            ],
        )
        .output()?;
        if out.stdout == b"200" {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("skiff was not ready on {url} in the pod after 60 s")
}

/// The connection counters of the capture listeners and clusters that are not zero.
fn stats() -> Result {
    let body = output(&mut in_netns(
        POD_NS,
        &["curl", "-sS", "--max-time", "5", &format!("{ADMIN}/stats")],
    ))?;
    let wanted = |name: &str| {
        (name.starts_with("tcp.") && name.ends_with(".downstream_cx_total"))
            || (name.starts_with("cluster.")
                && (name.ends_with(".upstream_cx_total")
                    || name.ends_with(".upstream_cx_rx_bytes_total")
                    || name.ends_with(".upstream_cx_tx_bytes_total")))
    };
    let mut shown = 0;
    for line in body.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        if wanted(name) && value.trim() != "0" {
            println!("  {line}");
            shown += 1;
        }
    }
    if shown == 0 {
        bail!("skiff's stats show no connections");
    }
    Ok(())
}

/// `skiff ebpf status`, the programs on the cgroup and the netns, the pod's entry in
/// `skiff_pods`, and `skiff_orig_dst` while the app holds a connection open.
fn kernel_view(pod: &Pod, xtask: &str, cookie: u64) -> Result {
    let cg = pod.cgroup.display().to_string();
    println!("$ skiff ebpf status");
    indent(&pod.skiff_ebpf(&["status"])?);
    println!(
        "  (the node's counters, over every enrolled pod: outbound_redirected counts the app's \
         connects, outbound_excluded_owner skiff's own upstream connects as uid {PROXY_UID}, \
         inbound_assigned the remote host's connects, getsockopt_* skiff's SO_ORIGINAL_DST \
         questions)"
    );

    println!("$ bpftool cgroup tree {cg}");
    indent(&bpftool(&["cgroup", "tree", &cg])?);
    println!("$ bpftool prog show name skiff_connect4");
    indent(&bpftool(&["prog", "show", "name", "skiff_connect4"])?);
    let link = format!("{PIN_ROOT}/netns/{cookie}/sk_lookup");
    println!("$ bpftool link show pinned {link}");
    indent(&bpftool(&["link", "show", "pinned", &link])?);

    let pods = format!("{PIN_ROOT}/maps/skiff_pods");
    println!("$ bpftool map dump pinned {pods}    # the pod's entry, non-zero fields");
    for line in pod_entry(&bpftool(&["map", "dump", "pinned", &pods])?, cookie) {
        println!("  {line}");
    }

    let target = format!("{REMOTE_IP}:{UPSTREAM_PORT}");
    println!("$ xtask _hold {target}    # the app opens a connection and keeps it open");
    let mut hold = Proc::spawn(
        "the app's held connection",
        pod.command(None, &[xtask, "_hold", &target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    )?;
    let stdout = hold
        .child_mut()
        .stdout
        .take()
        .ok_or_else(|| Error("no stdout".into()))?;
    let ends = first_line(stdout, Duration::from_secs(10))?;
    let (local, peer) = ends
        .split_once(' ')
        .ok_or_else(|| Error(format!("xtask _hold printed `{ends}`")))?;
    println!(
        "  the app's socket: {local} -> {peer} (the kernel's doing; the app asked for {target})"
    );
    let orig = format!("{PIN_ROOT}/maps/skiff_orig_dst");
    println!("$ bpftool map dump pinned {orig}");
    let dump = bpftool(&["map", "dump", "pinned", &orig])?;
    for line in join_arrays(&dump) {
        println!("  {line}");
    }
    let client_port = local.rsplit(':').next().unwrap_or("");
    if !dump.contains(&format!("\"client_port\": {client_port},")) {
        bail!("skiff_orig_dst has no entry for the app's socket {local}");
    }
    println!(
        "  (key: the pod's netns cookie {cookie}, the app's 127.0.0.1:{client_port} and skiff's \
         127.0.0.1:15001; value: {target}, what SO_ORIGINAL_DST tells skiff)"
    );
    // Closing stdin lets it close the connection.
    drop(hold.child_mut().stdin.take());
    if hold.wait_or_kill(Duration::from_secs(5)).is_none() {
        bail!("xtask _hold did not exit when its stdin closed");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let needle = format!("\"netns\": {cookie},");
    loop {
        let dump = bpftool(&["map", "dump", "pinned", &orig])?;
        if !dump.contains(&needle) {
            break;
        }
        if Instant::now() > deadline {
            bail!("skiff_orig_dst still holds entries of the pod after its connection closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "  after the app closed it: no entry of the pod's is left (sockops deletes each when \
         skiff's socket closes)"
    );
    Ok(())
}

/// Leaves the pod running until Enter.
fn keep(pod: &Pod) {
    let cg = pod.cgroup.display();
    println!(
        "\nThe pod stays up (--keep). In another shell, try:\n  \
         sh -c 'echo $$ > {cg}/cgroup.procs; exec ip netns exec {POD_NS} curl -s http://{REMOTE_IP}:{UPSTREAM_PORT}/'\n  \
         ip netns exec {REMOTE_NS} curl -s http://{POD_IP}:{APP_PORT}/\n  \
         ip netns exec {POD_NS} curl -s {ADMIN}/stats/prometheus\n  \
         skiff ebpf status\n\
         Press Enter to clean up."
    );
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

fn bpftool(args: &[&str]) -> Result<String> {
    let bin = which("bpftool").unwrap_or_else(|| "bpftool".into());
    output(Command::new(bin).args(args))
}

/// bpftool's plain map dump with each array of numbers on one line.
fn join_arrays(dump: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in dump.lines() {
        let t = line.trim_start();
        if t.starts_with(']') {
            if let Some(prev) = out.last_mut() {
                if prev.ends_with(|c: char| c.is_ascii_digit()) {
                    prev.push_str(t);
                    continue;
                }
            }
        }
        out.push(line.to_string());
    }
    out
}

/// The `skiff_pods` entry of `cookie`: its non-zero top-level fields, one per line (the
/// address arrays are left out: `skiff ebpf status` shows the pod's addresses).
fn pod_entry(dump: &str, cookie: u64) -> Vec<String> {
    let mut mine = false;
    let mut depth = 0usize;
    let mut out = Vec::new();
    for line in join_arrays(dump) {
        let t = line.trim();
        if let Some(key) = t.strip_prefix("\"key\": ") {
            mine = key.trim_end_matches(',') == cookie.to_string();
        }
        // Depth: 2 for an entry's key and value, 3 for the pod's own fields (deeper: the
        // address ranges' fields).
        let opens = t.matches(['{', '[']).count();
        let closes = t.matches(['}', ']']).count();
        let here = depth;
        depth = (depth + opens).saturating_sub(closes);
        let Some((name, value)) = t.split_once(": ") else {
            continue;
        };
        let v = value.trim_end_matches(',');
        let scalar = v.parse::<u64>().is_ok_and(|n| n != 0);
        let array = v.starts_with('[')
            && !v.starts_with("[[")
            && v.ends_with(']')
            && v.trim_matches(['[', ']']).split(',').any(|n| n != "0");
        if mine && here <= 3 && !name.starts_with("\"pad") && (scalar || array) {
            let mut l = t.trim_end_matches(',').to_string();
            if name == "\"flags\"" {
                l.push_str("    # 1: -i '*', 2: -b '*', 4: --events");
            }
            out.push(l);
        }
    }
    out
}

/// The netns cookie in `skiff ebpf attach`'s output: `… (cookie 1528): enrolled …`.
fn netns_cookie(attached: &str) -> Result<u64> {
    attached
        .split("(cookie ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error(format!("no netns cookie in: {attached}")))
}

/// The path uid 1337 can run skiff from: the built binary if every directory on its way lets
/// others through, else a copy in a directory that does (removed with the pod).
fn reachable_by_proxy(skiff: &Path) -> Result<PathBuf> {
    let others_x = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    };
    if skiff.ancestors().all(others_x) {
        return Ok(skiff.to_path_buf());
    }
    let dir = pod::copy_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let copy = dir.join("skiff");
    std::fs::copy(skiff, &copy)?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    println!(
        "  (uid {PROXY_UID} cannot reach {}: it runs a copy, {})",
        skiff.display(),
        copy.display()
    );
    Ok(copy)
}

/// What of the demo's is still there after the clean-up, if anything: its namespaces, its
/// cgroup, skiff's pins for them, its entry in `skiff_pods`.
fn leftovers(cgroup: &Path, cgroup_id: u64, cookie: Option<u64>) -> Option<String> {
    let mut left = Vec::new();
    for ns in [POD_NS, REMOTE_NS] {
        if pod::netns_path(ns).exists() {
            left.push(format!("network namespace {ns}"));
        }
    }
    if cgroup.exists() {
        left.push(format!("cgroup {}", cgroup.display()));
    }
    let mut pins = vec![Path::new(PIN_ROOT).join(format!("cgroup/{cgroup_id}"))];
    if let Some(c) = cookie {
        pins.push(Path::new(PIN_ROOT).join(format!("netns/{c}")));
        let map = format!("{PIN_ROOT}/maps/skiff_pods");
        if Path::new(&map).exists()
            && bpftool(&["map", "dump", "pinned", &map])
                .is_ok_and(|d| d.contains(&format!("\"key\": {c},")))
        {
            left.push(format!("the pod's entry in {map}"));
        }
    }
    left.extend(
        pins.iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string()),
    );
    (!left.is_empty()).then(|| left.join(", "))
}

/// The demo's log files, under target/demo (kept after the demo for a look).
struct Logs {
    upstream: PathBuf,
    app: PathBuf,
    skiff: PathBuf,
    access: PathBuf,
}

impl Logs {
    fn new() -> Result<Logs> {
        let dir = crate::target_dir().join("demo");
        std::fs::create_dir_all(&dir)?;
        Ok(Logs {
            upstream: dir.join("upstream.log"),
            app: dir.join("app.log"),
            skiff: dir.join("sidecar.log"),
            access: dir.join("sidecar-access.log"),
        })
    }

    /// Waits until `file` has a line containing `needle`, while `proc` runs.
    fn wait_line(&self, file: &Path, needle: &str, proc: &mut Proc) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                return Ok(l.to_string());
            }
            proc.check_running()?;
            if Instant::now() > deadline {
                bail!("no `{needle}` in {} after 10 s", file.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for skiff's access log line containing `needle`.
    fn wait_access(&self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.access).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                return Ok(l.to_string());
            }
            if Instant::now() > deadline {
                bail!("no line with `{needle}` in skiff's access log");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn show_tails(&self) {
        for (what, file) in [
            ("skiff's log", &self.skiff),
            ("skiff's access log", &self.access),
            ("the upstream's log", &self.upstream),
            ("the app's log", &self.app),
        ] {
            eprintln!(
                "--- last lines of {what} ({}) ---\n{}",
                file.display(),
                tail(file, 20)
            );
        }
    }
}

/// Starts a process with stdout and stderr in files.
fn spawn_logged(name: &str, cmd: &mut Command, stdout: &Path, stderr: &Path) -> Result<Proc> {
    let out = std::fs::File::create(stdout)?;
    let err = if stderr == stdout {
        out.try_clone()?
    } else {
        std::fs::File::create(stderr)?
    };
    Proc::spawn(name, cmd.stdin(Stdio::null()).stdout(out).stderr(err))
}

/// The first line a child writes, within `timeout`.
fn first_line(stdout: std::process::ChildStdout, timeout: Duration) -> Result<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(l)) if !l.trim().is_empty() => Ok(l.trim().to_string()),
        Ok(Ok(_)) => bail!("the process exited without a word"),
        Ok(Err(e)) => bail!("reading its output: {e}"),
        Err(_) => bail!("no output within {timeout:?}"),
    }
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn indent(text: &str) {
    for line in text.lines() {
        println!("  {line}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PODS: &str = r#"[{
        "key": 1528,
        "value": {
            "outbound_port": 15001,
            "pad0": 0,
            "uids": [1337,0,0,0
            ],
            "in_ports": [0,0,0,0
            ],
            "n_in_ports": 0,
            "n_pod_ips": 2,
            "out_cidrs": [{
                    "addr": [10,0,0,0
                    ],
                    "prefix": 104
                }
            ],
            "pod_ips": [[0,0,0,0,0,0,0,0,0,0,255,255,10,204,0,2
                ],[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,6
                ]
            ]
        }
    },{
        "key": 99,
        "value": {
            "outbound_port": 15009
        }
    }
]"#;

    #[test]
    fn pod_entry_keeps_the_non_zero_fields_of_one_pod() {
        assert_eq!(
            pod_entry(PODS, 1528),
            [
                "\"key\": 1528",
                "\"outbound_port\": 15001",
                "\"uids\": [1337,0,0,0]",
                "\"n_pod_ips\": 2"
            ]
        );
        assert_eq!(
            pod_entry(PODS, 99),
            ["\"key\": 99", "\"outbound_port\": 15009"]
        );
    }

    #[test]
    fn finds_the_cookie_and_brackets_ipv6() {
        let out = "netns /var/run/netns/p (cookie 1528): enrolled (pod addresses: 10.0.0.2)\n";
        assert_eq!(netns_cookie(out).unwrap(), 1528);
        assert_eq!(bracket("::1"), "[::1]");
        assert_eq!(bracket("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn the_embedded_config_is_the_istio_shape() {
        for want in [
            "port_value: 15001",
            "port_value: 15006",
            "port_value: 15000",
            "envoy.filters.listener.original_dst",
            "type: ORIGINAL_DST",
            "address: 127.0.0.6",
            "%DOWNSTREAM_LOCAL_ADDRESS%",
            "%UPSTREAM_HOST%",
        ] {
            assert!(SIDECAR_YAML.contains(want), "{want}");
        }
    }
}
