//! Live configuration: how soon a route change in a discovery file reaches traffic, and what an
//! update costs, in time, CPU and memory, with 1,000 clusters and 1,000 routes loaded.
//!
//! Both proxies read the same files (Envoy's filesystem subscriptions: a `DiscoveryResponse`
//! per file, a new version written beside it and renamed into place), one at a time on CPU 0
//! with one worker, as in the other rows; nginx serves both clusters' endpoints on CPU 1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::config::Ports;
use super::report::{fmt, median, ratio};
use super::sidecar::Peer;
use crate::process::{self, tail, Proc};
use crate::{bail, http, Error, Result};

mod xds;

/// Route changes per proxy start in the `update` row, alternating between the two versions.
pub const CHANGES: usize = 20;
/// Clusters (CDS) and routes (RDS) loaded in the `scale` row.
pub const SCALE: usize = 1000;
/// `SCALE` as the report writes it.
const SCALE_TEXT: &str = "1,000";
/// CDS and RDS updates per proxy start in the `scale` row (each timed once, then costed once).
pub const SCALE_UPDATES: usize = 5;
/// How long a change may take before the sample fails.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest window over which an update's CPU time is read.
const CPU_WINDOW: Duration = Duration::from_secs(1);
/// Pause after an update before the next, so that one's tail does not land in the other.
const SETTLE: Duration = Duration::from_millis(300);
/// What nginx answers on the two upstreams (see `config::nginx_conf`).
const BODY_A: &[u8] = b"ok";
const BODY_B: &[u8] = b"alt";

/// One live-configuration row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    /// A route change reaching traffic.
    Update,
    /// Update time, CPU and RSS with 1,000 clusters and 1,000 routes.
    Scale,
    /// 5,000 EDS clusters and 5,000 routes over ADS from a control plane, and an EDS update
    /// of 10,000 endpoints.
    XdsScale,
}

impl Row {
    pub const ALL: [Row; 3] = [Row::Update, Row::Scale, Row::XdsScale];

    pub fn id(self) -> &'static str {
        match self {
            Row::Update => "update",
            Row::Scale => "scale",
            Row::XdsScale => "xds-scale",
        }
    }
}

/// The `update` row, once per proxy start: milliseconds from each rename to the first
/// response from the new route.
#[derive(Clone, Debug, Default)]
pub struct UpdateSample {
    pub ms: Vec<f64>,
    /// Requests sent while waiting for the new route (all changes together).
    pub polls: u64,
    /// Requests that failed meanwhile (connection closed or refused, a malformed response).
    pub errors: u64,
}

/// The `scale` row, once per proxy start.
#[derive(Clone, Debug, Default)]
pub struct ScaleSample {
    /// From starting the proxy to the first response through the loaded routes.
    pub ready_ms: f64,
    pub cds_ms: Vec<f64>,
    pub rds_ms: Vec<f64>,
    /// CPU time (the proxy and its children, idle use subtracted) per update.
    pub cds_cpu_ms: Vec<f64>,
    pub rds_cpu_ms: Vec<f64>,
    /// `VmRSS` of the serving process once loaded.
    pub rss_kib: u64,
    /// `VmRSS` of its child processes at the same moment (skiff's decoder helper).
    pub helper_rss_kib: Option<u64>,
    /// How long one `/stats?filter=` poll took (median), which bounds the timing resolution.
    pub stats_poll_ms: f64,
}

/// Everything the live-configuration rows measured.
pub struct Results {
    pub rows: Vec<Row>,
    pub update: Vec<(Peer, std::result::Result<UpdateSample, String>)>,
    pub scale: Vec<(Peer, std::result::Result<ScaleSample, String>)>,
    pub xds: Vec<(Peer, std::result::Result<xds::XdsSample, String>)>,
    pub notes: Vec<String>,
    /// The files of the first `update` start, for the report.
    pub update_yaml: String,
    /// The bootstrap and the first resources of each file of the `scale` row, for the report.
    pub scale_yaml: String,
    /// The bootstrap and the first resources of each type of the `xds-scale` row.
    pub xds_yaml: String,
}

impl Results {
    pub fn failures(&self) -> usize {
        self.update.iter().filter(|s| s.1.is_err()).count()
            + self.scale.iter().filter(|s| s.1.is_err()).count()
            + self.xds.iter().filter(|s| s.1.is_err()).count()
    }
}

// ---- files -------------------------------------------------------------------------------

const ROUTER: &str = r#"{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#;

fn path_source(dir: &Path, file: &str) -> String {
    format!(
        "{{path_config_source: {{path: {}/{file}}}, resource_api_version: V3}}",
        dir.display()
    )
}

/// A `load_assignment`'s endpoints: one address on loopback.
fn endpoint(port: u16) -> String {
    format!(
        "endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]"
    )
}

fn hcm(stat_prefix: &str, route_config: &str, dir: &Path) -> String {
    format!(
        r#"{{name: envoy.filters.network.http_connection_manager, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: {stat_prefix}, rds: {{route_config_name: {route_config}, config_source: {src}}}, http_filters: [{ROUTER}]}}}}"#,
        src = path_source(dir, "rds.yaml")
    )
}

/// The `update` row's bootstrap: a static listener whose routes come from `rds.yaml`, and
/// static clusters `a` (nginx "ok") and `b` (nginx "alt").
fn update_bootstrap(p: &Ports, dir: &Path) -> String {
    format!(
        r#"# skiff benchmark, live configuration: a route change reaching traffic.
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
node: {{id: bench, cluster: bench}}
static_resources:
  listeners:
  - name: bench_update
    address: {{socket_address: {{address: 127.0.0.1, port_value: {http}}}}}
    filter_chains: [{{filters: [{hcm}]}}]
  clusters:
  - name: a
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{cluster_name: a, {a}}}
  - name: b
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{cluster_name: b, {b}}}
"#,
        admin = p.admin,
        http = p.http,
        hcm = hcm("bench_update", "bench_route", dir),
        a = endpoint(p.nginx_h1),
        b = endpoint(p.nginx_alt),
    )
}

/// The `update` row's routes: `/` to `cluster`.
fn update_rds(version: usize, cluster: &str) -> String {
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: bench_route
  virtual_hosts:
  - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: {cluster}}}}}]}}
"#
    )
}

/// The `scale` row's bootstrap: listeners and clusters from files.
fn scale_bootstrap(p: &Ports, dir: &Path) -> String {
    format!(
        r#"# skiff benchmark, live configuration: {SCALE_TEXT} clusters and {SCALE_TEXT} routes from files.
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
node: {{id: bench, cluster: bench}}
dynamic_resources:
  lds_config: {lds}
  cds_config: {cds}
"#,
        admin = p.admin,
        lds = path_source(dir, "lds.yaml"),
        cds = path_source(dir, "cds.yaml"),
    )
}

fn scale_lds(p: &Ports, dir: &Path) -> String {
    format!(
        r#"version_info: "1"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: bench_scale
  address: {{socket_address: {{address: 127.0.0.1, port_value: {http}}}}}
  filter_chains: [{{filters: [{hcm}]}}]
"#,
        http = p.http,
        hcm = hcm("bench_scale", "bench_routes", dir),
    )
}

fn cluster_name(i: usize) -> String {
    format!("c{i:04}")
}

fn vhost_domain(i: usize) -> String {
    format!("svc-{i:04}.example.com")
}

/// `SCALE` STATIC clusters on nginx; `changed` moves the first one to the other upstream.
fn scale_cds(version: usize, p: &Ports, changed: bool, limit: usize) -> String {
    let mut s = format!("version_info: \"{version}\"\nresources:\n");
    for i in 0..SCALE.min(limit) {
        let port = if i == 0 && changed {
            p.nginx_alt
        } else {
            p.nginx_h1
        };
        let name = cluster_name(i);
        s.push_str(&format!(
            r#"- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: {name}
  type: STATIC
  connect_timeout: 1s
  load_assignment: {{cluster_name: {name}, {ep}}}
"#,
            ep = endpoint(port)
        ));
    }
    s
}

/// `SCALE` virtual hosts with one route each (`svc-NNNN.example.com`, `/` to cluster
/// `cNNNN`); `changed` sends the first one to the second cluster instead.
fn scale_rds(version: usize, changed: bool, limit: usize) -> String {
    let mut s = format!(
        "version_info: \"{version}\"\nresources:\n- \"@type\": type.googleapis.com/envoy.config.route.v3.RouteConfiguration\n  name: bench_routes\n  virtual_hosts:\n"
    );
    for i in 0..SCALE.min(limit) {
        let cluster = cluster_name(if i == 0 && changed { 1 } else { i });
        s.push_str(&format!(
            "  - {{name: svc-{i:04}, domains: [{d}], routes: [{{match: {{prefix: /}}, route: {{cluster: {cluster}}}}}]}}\n",
            d = vhost_domain(i)
        ));
    }
    s
}

/// Writes the new version beside the file; `swap` then moves it into place.
fn stage(dir: &Path, name: &str, content: &str) -> Result<(PathBuf, PathBuf)> {
    let tmp = dir.join(format!(".{name}.new"));
    std::fs::write(&tmp, content)?;
    Ok((tmp, dir.join(name)))
}

fn swap((tmp, dst): &(PathBuf, PathBuf)) -> Result {
    std::fs::rename(tmp, dst)
        .map_err(|e| Error(format!("cannot rename {} into place: {e}", dst.display())))
}

fn put(dir: &Path, name: &str, content: &str) -> Result {
    swap(&stage(dir, name, content)?)
}

// ---- a keep-alive HTTP/1.1 client and /proc ----------------------------------------------

/// One HTTP/1.1 connection reused for GETs; reconnects after an error.
struct Client {
    addr: SocketAddr,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    fn new(port: u16) -> Client {
        Client {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            conn: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// `GET /` with `Host: host`; the status and body.
    fn get(&mut self, host: &str) -> Result<(u16, Vec<u8>)> {
        let r = self.try_get(host);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn try_get(&mut self, host: &str) -> Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            self.conn = Some(s);
        }
        let Some(s) = self.conn.as_mut() else {
            bail!("not connected");
        };
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed before a response");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error("malformed status line".into()))?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| Error("response without content-length".into()))?;
        while self.buf.len() < head_end + len {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed in a response body");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        if head.contains("\r\nconnection: close") {
            self.conn = None;
        }
        Ok((status, body))
    }
}

/// Fields of `/proc/PID/stat` after the command name, from field 3 (state) on.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is a letter: keep its place with a 0.
    Some(
        after
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect(),
    )
}

/// A process's children (of all its threads), and theirs.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for k in kids.split_whitespace().filter_map(|k| k.parse().ok()) {
                out.push(k);
                todo.push(k);
            }
        }
    }
    out
}

/// CPU time of a process and its descendants, in µs: the run time of each of their threads
/// from `/proc/PID/task/TID/schedstat` (nanoseconds; `/proc/PID/stat` counts in clock ticks,
/// 10 ms here, too coarse for one update), or utime + stime + cutime + cstime from
/// `/proc/PID/stat` where schedstat is missing.
fn tree_cpu_us(pid: u32) -> Result<u64> {
    let tree: Vec<u32> = std::iter::once(pid).chain(descendants(pid)).collect();
    if std::path::Path::new(&format!("/proc/{pid}/schedstat")).exists() {
        let mut ns = 0;
        for p in &tree {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        return Ok(ns / 1000);
    }
    let mut ticks = 0;
    for &p in &tree {
        match stat_fields(p) {
            // utime, stime, cutime, cstime are fields 14–17: indexes 11–14 from field 3.
            Some(f) if f.len() > 14 => ticks += f[11] + f[12] + f[13] + f[14],
            _ if p == pid => bail!("cannot read /proc/{pid}/stat"),
            _ => {}
        }
    }
    Ok(process::ticks_to_us(ticks))
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One counter from the admin endpoint (`/stats?filter=^name$&usedonly&type=Counters`: the
/// cheapest query both proxies answer; skiff ignores `type`).
fn stat(admin: SocketAddr, name: &str) -> Result<Option<u64>> {
    let mut q = String::from("%5E");
    for c in name.chars() {
        match c {
            '.' => q.push_str("%5C."),
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => q.push(c),
            c => q.push_str(&format!("%{:02X}", c as u32)),
        }
    }
    q.push_str("%24&usedonly&type=Counters");
    let r = http::request(admin, "GET", &format!("/stats?filter={q}"))?;
    if r.status != 200 {
        bail!("/stats answered {}: {}", r.status, r.body.trim());
    }
    Ok(r.body.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|v| v.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    }))
}

/// Polls `stat` until it exceeds `above`; the value and the time of the answer that showed it.
fn wait_stat(
    admin: SocketAddr,
    name: &str,
    above: u64,
    pause: Duration,
    p: &mut Proc,
) -> Result<(u64, Instant)> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        p.check_running()?;
        if let Some(v) = stat(admin, name)?.filter(|&v| v > above) {
            return Ok((v, Instant::now()));
        }
        if Instant::now() > deadline {
            bail!("{name} stayed at {above} for {TIMEOUT:?}");
        }
        std::thread::sleep(pause);
    }
}

// ---- running ------------------------------------------------------------------------------

fn start(
    peer: Peer,
    bin: &Path,
    cfg: &Path,
    log: &Path,
    admin: SocketAddr,
    ready: Duration,
) -> Result<Proc> {
    let mut cmd = process::guarded("taskset");
    cmd.args(["-c", super::PROXY_CPU])
        .arg(bin)
        .arg("-c")
        .arg(cfg)
        .args(super::proxy_flags())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    let mut p = Proc::spawn(peer.name(), &mut cmd)?;
    if let Err(e) = http::wait_ready(admin, &mut p, ready) {
        bail!("{e:?}\n{}", tail(log, 15));
    }
    Ok(p)
}

/// Runs `f` against a fresh proxy (ready within `ready`), then stops it (reporting a crash
/// and its log).
fn with_proxy<T>(
    peer: Peer,
    bin: &Path,
    cfg: &Path,
    log: &Path,
    admin: SocketAddr,
    ready: Duration,
    f: impl FnOnce(&mut Proc) -> Result<T>,
) -> Result<T> {
    let mut p = start(peer, bin, cfg, log, admin, ready)?;
    let r = f(&mut p);
    let crashed = p.exited();
    let stop = http::quit(admin, &mut p, Duration::from_secs(10));
    if let Some(st) = crashed {
        bail!(
            "{} exited during the run ({st}):\n{}",
            p.name(),
            tail(log, 15)
        );
    }
    if let Err(e) = stop {
        eprintln!("  note: {e:?}");
    }
    if r.is_err() {
        eprintln!("  {} log:\n{}", p.name(), tail(log, 10));
    }
    r
}

/// Sends requests until one answers 200 with `body`; how many it took and how many failed.
fn until_body(c: &mut Client, host: &str, body: &[u8], since: Instant) -> Result<(u64, u64)> {
    let (mut polls, mut errors) = (0, 0);
    loop {
        polls += 1;
        match c.get(host) {
            Ok((200, b)) if b == body => return Ok((polls, errors)),
            Ok(_) => {}
            Err(_) => errors += 1,
        }
        if since.elapsed() > TIMEOUT {
            bail!(
                "no answer {:?} for {TIMEOUT:?} ({polls} requests, {errors} failed)",
                String::from_utf8_lossy(body)
            );
        }
    }
}

fn measure_update(
    peer: Peer,
    bin: &Path,
    p: &Ports,
    dir: &Path,
    yaml: &mut String,
) -> Result<UpdateSample> {
    std::fs::create_dir_all(dir)?;
    put(dir, "rds.yaml", &update_rds(0, "a"))?;
    let cfg = dir.join("update.yaml");
    std::fs::write(&cfg, update_bootstrap(p, dir))?;
    if yaml.is_empty() {
        *yaml = format!(
            "# update.yaml\n{}# rds.yaml (the other version routes to cluster b)\n{}",
            std::fs::read_to_string(&cfg)?,
            update_rds(0, "a")
        )
        .replace(&dir.display().to_string(), "$DIR");
    }
    let admin = SocketAddr::from(([127, 0, 0, 1], p.admin));
    let log = dir.join(format!("{}.log", peer_file(peer)));
    with_proxy(peer, bin, &cfg, &log, admin, TIMEOUT, |proc| {
        let mut c = Client::new(p.http);
        until_body(&mut c, "bench", BODY_A, Instant::now())?;
        let name = "http.bench_update.rds.bench_route.update_success";
        let mut seen = stat(admin, name)?.unwrap_or(0);
        let mut s = UpdateSample::default();
        for i in 1..=CHANGES {
            let (cluster, body) = if i % 2 == 1 {
                ("b", BODY_B)
            } else {
                ("a", BODY_A)
            };
            let next = stage(dir, "rds.yaml", &update_rds(i, cluster))?;
            let t0 = Instant::now();
            swap(&next)?;
            let (polls, errors) = until_body(&mut c, "bench", body, t0)?;
            s.ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            s.polls += polls;
            s.errors += errors;
            seen = wait_stat(admin, name, seen, Duration::from_millis(5), proc)?.0;
            std::thread::sleep(SETTLE);
        }
        Ok(s)
    })
}

/// Which file an update goes to.
#[derive(Clone, Copy)]
enum Kind {
    Cds,
    Rds,
}

impl Kind {
    fn stat(self) -> &'static str {
        match self {
            Kind::Cds => "cluster_manager.cds.update_success",
            Kind::Rds => "http.bench_scale.rds.bench_routes.update_success",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Kind::Cds => "cds.yaml",
            Kind::Rds => "rds.yaml",
        }
    }

    fn content(self, version: usize, p: &Ports, changed: bool) -> String {
        match self {
            Kind::Cds => scale_cds(version, p, changed, SCALE),
            Kind::Rds => scale_rds(version, changed, SCALE),
        }
    }
}

fn measure_scale(
    peer: Peer,
    bin: &Path,
    p: &Ports,
    dir: &Path,
    yaml: &mut String,
) -> Result<ScaleSample> {
    std::fs::create_dir_all(dir)?;
    put(dir, "cds.yaml", &scale_cds(1, p, false, SCALE))?;
    put(dir, "rds.yaml", &scale_rds(1, false, SCALE))?;
    put(dir, "lds.yaml", &scale_lds(p, dir))?;
    let cfg = dir.join("scale.yaml");
    std::fs::write(&cfg, scale_bootstrap(p, dir))?;
    if yaml.is_empty() {
        *yaml = format!(
            "# scale.yaml\n{}# lds.yaml\n{}# cds.yaml (first 2 of {SCALE_TEXT})\n{}# rds.yaml (first 2 of {SCALE_TEXT})\n{}",
            std::fs::read_to_string(&cfg)?,
            scale_lds(p, dir),
            scale_cds(1, p, false, 2),
            scale_rds(1, false, 2),
        )
        .replace(&dir.display().to_string(), "$DIR");
    }
    let admin = SocketAddr::from(([127, 0, 0, 1], p.admin));
    let log = dir.join(format!("{}.log", peer_file(peer)));
    let started = Instant::now();
    with_proxy(peer, bin, &cfg, &log, admin, TIMEOUT, |proc| {
        let mut s = ScaleSample::default();
        let mut c = Client::new(p.http);
        until_body(&mut c, &vhost_domain(SCALE - 1), BODY_A, started)?;
        s.ready_ms = started.elapsed().as_secs_f64() * 1000.0;
        drop(c);

        // Loaded: memory, while skiff's decoder helper still runs.
        std::thread::sleep(Duration::from_secs(1));
        let pid = proc.pid();
        s.rss_kib = rss_kib(pid).ok_or_else(|| Error(format!("no VmRSS for {pid}")))?;
        let kids = descendants(pid);
        if !kids.is_empty() {
            s.helper_rss_kib = Some(kids.iter().filter_map(|&k| rss_kib(k)).sum());
        }

        // What the proxy uses when nothing happens, to subtract from the update windows.
        let (idle0, t) = (tree_cpu_us(pid)?, Instant::now());
        std::thread::sleep(2 * CPU_WINDOW);
        let idle_per_s = tree_cpu_us(pid)?.saturating_sub(idle0) as f64 / t.elapsed().as_secs_f64();

        let mut polls = Vec::new();
        let mut version = 1;
        for _ in 0..SCALE_UPDATES {
            for kind in [Kind::Cds, Kind::Rds] {
                // Timed: the change, polling the stat until the update is counted.
                let before = stat(admin, kind.stat())?.unwrap_or(0);
                version += 1;
                let next = stage(dir, kind.file(), &kind.content(version, p, true))?;
                let t0 = Instant::now();
                swap(&next)?;
                let (seen, at) = wait_stat(admin, kind.stat(), before, Duration::ZERO, proc)?;
                let ms = at.duration_since(t0).as_secs_f64() * 1000.0;
                let q = Instant::now();
                stat(admin, kind.stat())?;
                polls.push(q.elapsed().as_secs_f64() * 1000.0);
                std::thread::sleep(SETTLE);

                // Costed: the change undone, with no polling meanwhile; CPU read before each
                // look at the stat.
                version += 1;
                let back = stage(dir, kind.file(), &kind.content(version, p, false))?;
                let cpu0 = tree_cpu_us(pid)?;
                let t1 = Instant::now();
                swap(&back)?;
                let window = CPU_WINDOW.max(Duration::from_secs_f64(ms * 2.0 / 1000.0));
                let cpu = loop {
                    std::thread::sleep(window);
                    let cpu1 = tree_cpu_us(pid)?;
                    let elapsed = t1.elapsed();
                    if stat(admin, kind.stat())?.unwrap_or(0) > seen {
                        let idle = idle_per_s * elapsed.as_secs_f64();
                        break (cpu1.saturating_sub(cpu0) as f64 - idle).max(0.0) / 1000.0;
                    }
                    if elapsed > TIMEOUT {
                        bail!("{} stayed at {seen} for {TIMEOUT:?}", kind.stat());
                    }
                };
                let (times, cpus) = match kind {
                    Kind::Cds => (&mut s.cds_ms, &mut s.cds_cpu_ms),
                    Kind::Rds => (&mut s.rds_ms, &mut s.rds_cpu_ms),
                };
                times.push(ms);
                cpus.push(cpu);
                std::thread::sleep(SETTLE);
            }
        }
        s.stats_poll_ms = median(polls).unwrap_or(0.0);
        Ok(s)
    })
}

fn peer_file(peer: Peer) -> &'static str {
    match peer {
        Peer::Skiff => "skiff",
        Peer::Envoy => "envoy",
    }
}

/// Runs the live-configuration rows, `reps` proxy starts per row and proxy, alternating.
/// `control_plane` is the xDS control plane binary the `xds-scale` row needs.
pub fn run(
    rows: &[Row],
    reps: usize,
    skiff: Option<&Path>,
    envoy: &Path,
    control_plane: Option<&Path>,
    ports: &Ports,
    scratch: &Path,
) -> Result<Results> {
    let mut out = Results {
        rows: rows.to_vec(),
        update: Vec::new(),
        scale: Vec::new(),
        xds: Vec::new(),
        notes: Vec::new(),
        update_yaml: String::new(),
        scale_yaml: String::new(),
        xds_yaml: String::new(),
    };
    let mut peers = Vec::new();
    if let Some(s) = skiff {
        peers.push((Peer::Skiff, s));
    }
    peers.push((Peer::Envoy, envoy));
    // The client side (the polling requests, the admin reads) on the client CPU, as wrk is in
    // the other rows; the proxies are started pinned to their own CPU regardless.
    let pinned = Pinned::to(super::load::CLIENT_CPU);
    if pinned.is_none() {
        out.notes
            .push("the polling client could not be pinned to CPU 1 (taskset -p)".to_string());
    }
    for rep in 1..=reps {
        for &row in rows {
            for &(peer, bin) in &peers {
                let label = format!("[{rep}/{reps}] {:<9} {:<10}", row.id(), peer.name());
                let mut tries = 0;
                let r = loop {
                    let dir = scratch.join(format!(
                        "live-{}-{}-{rep}-{tries}",
                        row.id(),
                        peer_file(peer)
                    ));
                    let (busy0, own0) = (super::cpu_busy_us(), own_cpu_us());
                    let t = Instant::now();
                    let r = match row {
                        Row::Update => measure_update(peer, bin, ports, &dir, &mut out.update_yaml)
                            .map(Sample::Update),
                        Row::Scale => measure_scale(peer, bin, ports, &dir, &mut out.scale_yaml)
                            .map(Sample::Scale),
                        Row::XdsScale => match control_plane {
                            Some(cp) => xds::measure(peer, bin, cp, ports, &dir, &mut out.xds_yaml)
                                .map(Sample::Xds),
                            None => Err(Error("no xDS control plane binary".into())),
                        },
                    };
                    let share = match (busy0, super::cpu_busy_us(), own0, own_cpu_us()) {
                        (Some(b0), Some(b1), Some(o0), Some(o1)) => {
                            let other = b1.saturating_sub(b0).saturating_sub(o1.saturating_sub(o0));
                            other as f64 / t.elapsed().as_micros().max(1) as f64
                        }
                        _ => 0.0,
                    };
                    if r.is_err() || share <= super::NOISE_LIMIT {
                        break r;
                    }
                    let what = format!(
                        "live rep {rep}, {} with {}: other processes used {:.0}% of a core",
                        row.id(),
                        peer.name(),
                        share * 100.0
                    );
                    if tries == super::NOISE_RETRIES {
                        eprintln!("  note: {what}; kept after {tries} retries");
                        out.notes
                            .push(format!("{what} (kept after {tries} retries)"));
                        break r;
                    }
                    eprintln!("  note: {what}; measuring again");
                    std::thread::sleep(Duration::from_secs(3));
                    tries += 1;
                };
                match r {
                    Ok(Sample::Update(s)) => {
                        eprintln!("{label} {}", update_line(&s));
                        out.update.push((peer, Ok(s)));
                    }
                    Ok(Sample::Scale(s)) => {
                        eprintln!("{label} {}", scale_line(&s));
                        out.scale.push((peer, Ok(s)));
                    }
                    Ok(Sample::Xds(s)) => {
                        eprintln!("{label} {}", xds::sample_line(&s));
                        out.xds.push((peer, Ok(s)));
                    }
                    Err(e) => {
                        eprintln!("{label} FAILED: {e:?}");
                        match row {
                            Row::Update => out.update.push((peer, Err(e.0))),
                            Row::Scale => out.scale.push((peer, Err(e.0))),
                            Row::XdsScale => out.xds.push((peer, Err(e.0))),
                        }
                    }
                }
            }
        }
    }
    drop(pinned);
    Ok(out)
}

/// One proxy start's measurements.
enum Sample {
    Update(UpdateSample),
    Scale(ScaleSample),
    Xds(xds::XdsSample),
}

/// The calling thread pinned to one CPU (`taskset -p`, so no libc), put back when dropped.
struct Pinned {
    tid: String,
    mask: String,
}

impl Pinned {
    fn to(cpu: &str) -> Option<Pinned> {
        let link = std::fs::read_link("/proc/thread-self").ok()?;
        let tid = link.file_name()?.to_str()?.to_string();
        let out = Command::new("taskset").args(["-p", &tid]).output().ok()?;
        // "pid 123's current affinity mask: 3"
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mask = stdout.split_whitespace().last()?.to_string();
        let ok = Command::new("taskset")
            .args(["-p", "-c", cpu, &tid])
            .stdout(Stdio::null())
            .status()
            .ok()?
            .success();
        ok.then_some(Pinned { tid, mask })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = Command::new("taskset")
            .args(["-p", &self.mask, &self.tid])
            .stdout(Stdio::null())
            .status();
    }
}

/// This task and its reaped children (the proxies run here are reaped before the reading, so
/// their CPU is in it; nginx is not, but serves only the few probing requests).
fn own_cpu_us() -> Option<u64> {
    process::self_and_children_cpu_us().ok()
}

fn p90(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    // Nearest rank.
    let rank = (v.len() as f64 * 0.9).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

fn update_line(s: &UpdateSample) -> String {
    format!(
        "route change → traffic: median {} ms  p90 {} ms  max {} ms  ({} requests, {} failed)",
        fmt(median(s.ms.clone()), 2),
        fmt(p90(&s.ms), 2),
        fmt(s.ms.iter().copied().reduce(f64::max), 2),
        s.polls,
        s.errors
    )
}

fn scale_line(s: &ScaleSample) -> String {
    format!(
        "ready {:.0} ms  CDS {} ms / {} ms CPU  RDS {} ms / {} ms CPU  RSS {:.1} MiB{}  (stats poll {:.2} ms)",
        s.ready_ms,
        fmt(median(s.cds_ms.clone()), 1),
        fmt(median(s.cds_cpu_ms.clone()), 1),
        fmt(median(s.rds_ms.clone()), 1),
        fmt(median(s.rds_cpu_ms.clone()), 1),
        s.rss_kib as f64 / 1024.0,
        s.helper_rss_kib
            .map_or_else(String::new, |k| format!(" + helper {:.1} MiB", k as f64 / 1024.0)),
        s.stats_poll_ms,
    )
}

/// Medians of one proxy's samples in the `scale` row.
#[derive(Default)]
struct ScaleCell {
    n: usize,
    failed: usize,
    ready: Option<f64>,
    cds: Option<f64>,
    rds: Option<f64>,
    cds_cpu: Option<f64>,
    rds_cpu: Option<f64>,
    rss: Option<f64>,
    helper: Option<f64>,
    poll: Option<f64>,
}

fn scale_cell(r: &Results, peer: Peer) -> ScaleCell {
    let ok: Vec<&ScaleSample> = r
        .scale
        .iter()
        .filter(|s| s.0 == peer)
        .filter_map(|s| s.1.as_ref().ok())
        .collect();
    let all = |f: &dyn Fn(&ScaleSample) -> &Vec<f64>| {
        median(ok.iter().flat_map(|s| f(s).iter().copied()).collect())
    };
    let one =
        |f: &dyn Fn(&ScaleSample) -> Option<f64>| median(ok.iter().filter_map(|s| f(s)).collect());
    ScaleCell {
        n: ok.len(),
        failed: r
            .scale
            .iter()
            .filter(|s| s.0 == peer && s.1.is_err())
            .count(),
        ready: one(&|s| Some(s.ready_ms)),
        cds: all(&|s| &s.cds_ms),
        rds: all(&|s| &s.rds_ms),
        cds_cpu: all(&|s| &s.cds_cpu_ms),
        rds_cpu: all(&|s| &s.rds_cpu_ms),
        rss: one(&|s| Some(s.rss_kib as f64 / 1024.0)),
        helper: one(&|s| s.helper_rss_kib.map(|k| k as f64 / 1024.0)),
        poll: one(&|s| Some(s.stats_poll_ms)),
    }
}

/// All route-change times of one proxy, and how many starts failed.
fn update_cell(r: &Results, peer: Peer) -> (Vec<f64>, usize) {
    let ms = r
        .update
        .iter()
        .filter(|s| s.0 == peer)
        .filter_map(|s| s.1.as_ref().ok())
        .flat_map(|s| s.ms.iter().copied())
        .collect();
    let failed = r
        .update
        .iter()
        .filter(|s| s.0 == peer && s.1.is_err())
        .count();
    (ms, failed)
}

/// The live-configuration tables: one line per measurement, skiff and Envoy side by side;
/// the `xds-scale` row in a table of its own.
pub fn table(r: &Results) -> String {
    let mut t = String::new();
    if r.rows.iter().any(|&row| row != Row::XdsScale) {
        t.push_str(&files_table(r));
    }
    if r.rows.contains(&Row::XdsScale) {
        if !t.is_empty() {
            t.push('\n');
        }
        t.push_str(&xds::table(&r.xds));
    }
    t
}

/// The table of the rows that read discovery files (`update`, `scale`).
fn files_table(r: &Results) -> String {
    let mut t =
        String::from("| measurement | skiff | Envoy 1.40 | skiff/Envoy |\n|---|---:|---:|---:|\n");
    let mut line = |what: &str, s: Option<f64>, e: Option<f64>, prec: usize| {
        t.push_str(&format!(
            "| {what} | {} | {} | {} |\n",
            fmt(s, prec),
            fmt(e, prec),
            ratio(s, e)
        ));
    };
    if r.rows.contains(&Row::Update) {
        let (s, e) = (update_cell(r, Peer::Skiff), update_cell(r, Peer::Envoy));
        let title = "config update → traffic: RDS file renamed, `/` moves to another cluster";
        line(
            &format!("{title}, median ms"),
            median(s.0.clone()),
            median(e.0.clone()),
            2,
        );
        line(&format!("{title}, p90 ms"), p90(&s.0), p90(&e.0), 2);
    }
    if r.rows.contains(&Row::Scale) {
        let (s, e) = (scale_cell(r, Peer::Skiff), scale_cell(r, Peer::Envoy));
        let k = "1,000 clusters and 1,000 routes";
        line(
            "CDS update, 1 of 1,000 clusters changed: rename → `update_success`, median ms",
            s.cds,
            e.cds,
            1,
        );
        line(
            "RDS update, 1 of 1,000 routes (one per virtual host) changed: rename → `update_success`, median ms",
            s.rds,
            e.rds,
            1,
        );
        line(
            "one `/stats?filter=` poll meanwhile (the resolution of the two above), median ms",
            s.poll,
            e.poll,
            1,
        );
        line(
            "CPU per CDS update (proxy + children), median ms",
            s.cds_cpu,
            e.cds_cpu,
            1,
        );
        line(
            "CPU per RDS update (proxy + children), median ms",
            s.rds_cpu,
            e.rds_cpu,
            1,
        );
        line(
            &format!("start with {k} → first request served, ms"),
            s.ready,
            e.ready,
            0,
        );
        line(
            &format!("RSS with {k} loaded, serving process, MiB"),
            s.rss,
            e.rss,
            1,
        );
        line(
            "RSS of the decoder helper meanwhile (exits after 30 s idle), MiB",
            s.helper,
            e.helper,
            1,
        );
        let sum = |c: &ScaleCell| c.rss.map(|r| r + c.helper.unwrap_or(0.0));
        line(
            &format!("RSS with {k} loaded, serving process + helper, MiB"),
            sum(&s),
            sum(&e),
            1,
        );
        for (peer, c) in [(Peer::Skiff, &s), (Peer::Envoy, &e)] {
            if c.failed > 0 {
                t.push_str(&format!(
                    "| ({}: {} of {} scale starts failed) | | | |\n",
                    peer.name(),
                    c.failed,
                    c.failed + c.n
                ));
            }
        }
    }
    if r.rows.contains(&Row::Update) {
        for peer in [Peer::Skiff, Peer::Envoy] {
            let (_, failed) = update_cell(r, peer);
            if failed > 0 {
                t.push_str(&format!(
                    "| ({}: {failed} update starts failed) | | | |\n",
                    peer.name()
                ));
            }
        }
    }
    t
}

/// The live-configuration section of BENCHMARKS.md (also the text of the method).
pub fn section(r: &Results, reps: usize) -> String {
    let notes: String = r.notes.iter().map(|n| format!("- {n}\n")).collect();
    let notes = if notes.is_empty() {
        notes
    } else {
        format!("\nNotes from this run:\n\n{notes}")
    };
    let files = if r.rows.iter().any(|&row| row != Row::XdsScale) {
        format!(
            r#"
{table}
{method}
```sh
taskset -c 0 target/pgo/skiff -c update.yaml {flags}    # and .venv/bin/envoy
taskset -c 0 target/pgo/skiff -c scale.yaml {flags}
```

<details><summary>the files of these rows ($DIR is a directory per proxy start)</summary>

```yaml
{update}
{scale}```

</details>
"#,
            table = files_table(r),
            method = method(reps),
            flags = super::proxy_flags().join(" "),
            update = r.update_yaml,
            scale = r.scale_yaml,
        )
    } else {
        String::new()
    };
    let xds = if r.rows.contains(&Row::XdsScale) {
        xds::section(&r.xds, &r.xds_yaml, reps)
    } else {
        String::new()
    };
    format!("\n## Live configuration: updates and scale\n{files}{xds}{notes}")
}

/// How the live-configuration rows are measured.
pub fn method(reps: usize) -> String {
    format!(
        r#"Both proxies read the same discovery files (Envoy's filesystem subscriptions, one
`DiscoveryResponse` per file), one proxy at a time on CPU 0 with one worker as above; nginx
and the benchmark's client thread (the polling requests and admin reads) on CPU 1. Each new
version is written beside the file and renamed into place. Each proxy is started {starts}
per row, the two alternating; a start during which other processes used more than
{noise:.0} % of a core is taken again, as above. `cargo xtask bench --rows update,scale` runs
only these rows.

- **config update → traffic** (`update`): a static listener whose HCM takes its routes from
  `rds.yaml`; `/` goes to cluster `a` (nginx answering `ok`) or `b` (another nginx server
  answering `alt`). Right after each rename a plain HTTP/1.1 client (one keep-alive
  connection, reconnecting on error) sends `GET /` in a tight loop until the answer comes from
  the new route; the time from the rename to that answer is one sample. {CHANGES} changes per
  start, alternating `a` → `b` → `a`, each after the previous one's
  `http.bench_update.rds.bench_route.update_success` was counted and {settle} ms of quiet;
  median and p90 are over all changes of all starts.
- **1,000 clusters and 1,000 routes** (`scale`): listeners (`lds_config`) and clusters
  (`cds_config`) from files, {SCALE_TEXT} `STATIC` clusters all on nginx, {SCALE_TEXT} routes as {SCALE_TEXT}
  virtual hosts (`svc-NNNN.example.com`) of one route each (`/` to cluster `cNNNN`) in one
  route configuration from `rds.yaml`. Per start, {SCALE_UPDATES} rounds of: a CDS update
  (cluster `c0000`'s endpoint moves to the other nginx port), timed, then that change undone,
  costed; the same for RDS (the first virtual host's route moves to cluster `c0001`), each
  update {settle} ms after the previous one:
  - *update time*: from the rename to the first `/stats?filter=` answer showing
    `cluster_manager.cds.update_success` or `http.bench_scale.rds.bench_routes.update_success`
    incremented (`&usedonly&type=Counters`), polling back to back; how long one poll takes
    is shown too: the time is at most that much late, and the polls share the proxy's CPU
    with the update, as an operator's or a control plane's probes would;
  - *CPU per update*: with no polling meanwhile, the CPU time of the proxy and of its children
    (found in `/proc/PID/task/*/children`: skiff decodes the files in a helper process,
    `skiff --discovery-decoder`, whose CPU counts too), summed over their threads from
    `/proc/PID/task/TID/schedstat` (nanoseconds; the utime+stime of `/proc/PID/stat` count
    10 ms ticks), read before the rename and after a window of at least {window} s (twice the
    update time) once the stat shows the update, less the proxy's idle use over the same time
    (measured for {idle} s before the updates);
  - *start → first request served*: from spawning the proxy to the first `200` through the last
    virtual host (`/ready` is polled every 50 ms first);
  - *RSS*: `VmRSS` from `/proc/PID/status` 1 s after that first request, for the serving
    process and, separately, its children: skiff's decoder helper, started on first use and
    stopped after 30 s idle, is still running then; the serving process alone is what stays.
"#,
        starts = match reps {
            1 => "once".to_string(),
            n => format!("{n} times"),
        },
        noise = super::NOISE_LIMIT * 100.0,
        settle = SETTLE.as_millis(),
        window = CPU_WINDOW.as_secs(),
        idle = 2 * CPU_WINDOW.as_secs(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ports() -> Ports {
        Ports {
            nginx_h1: 1001,
            nginx_h2: 1002,
            nginx_alt: 1003,
            admin: 1004,
            http: 1005,
            h2: 1006,
            tcp: 1007,
            least_request: 1008,
            ring_hash: 1009,
        }
    }

    #[test]
    fn p90_is_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(p90(&v), Some(18.0));
        assert_eq!(p90(&[5.0]), Some(5.0));
        assert_eq!(p90(&[]), None);
    }

    #[test]
    fn scale_files_change_one_resource() {
        let p = ports();
        let (a, b) = (
            scale_cds(2, &p, false, SCALE),
            scale_cds(3, &p, true, SCALE),
        );
        assert_eq!(a.matches("envoy.config.cluster.v3.Cluster").count(), SCALE);
        assert_eq!(a.matches("port_value: 1001").count(), SCALE);
        assert_eq!(b.matches("port_value: 1001").count(), SCALE - 1);
        assert_eq!(b.matches("port_value: 1003").count(), 1);
        let (a, b) = (scale_rds(2, false, SCALE), scale_rds(3, true, SCALE));
        assert_eq!(a.matches("domains: [svc-").count(), SCALE);
        assert_eq!(a.matches("cluster: c0001}").count(), 1);
        assert_eq!(b.matches("cluster: c0001}").count(), 2);
        assert!(b.contains("domains: [svc-0999.example.com]"));
    }

    #[test]
    fn tree_cpu_counts_this_process() {
        let pid = std::process::id();
        let t0 = tree_cpu_us(pid).unwrap();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(tree_cpu_us(pid).unwrap() > t0);
        assert!(rss_kib(pid).unwrap() > 0);
    }
}
