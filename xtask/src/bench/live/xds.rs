//! The `xds-scale` row: 5,000 EDS clusters of 10 endpoints each, their assignments, one
//! listener and 5,000 routes pushed over ADS (delta) by the project's control plane
//! (`tests/src/bin/xds-control-plane.rs`, a separate process on the client CPU); then EDS
//! updates that change 1,000 assignments, 10,000 endpoints, at a time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{
    cluster_name, descendants, fmt, median, peer_file, ratio, rss_kib, tree_cpu_us, until_body,
    vhost_domain, with_proxy, Client, Peer, Ports, BODY_A, BODY_B, ROUTER, SETTLE, TIMEOUT,
};
use crate::process::{self, tail, Proc};
use crate::{bail, http, Error, Result};

/// EDS clusters (CDS), their assignments (EDS) and routes (RDS) loaded.
pub const CLUSTERS: usize = 5000;
/// `CLUSTERS` as the report writes it.
const CLUSTERS_TEXT: &str = "5,000";
/// Endpoints per assignment.
pub const ENDPOINTS: usize = 10;
/// Assignments each EDS update changes (the last ones, the probed cluster among them), every
/// endpoint of each: `CHANGED × ENDPOINTS` endpoints.
pub const CHANGED: usize = 1000;
const CHANGED_TEXT: &str = "1,000";
const CHANGED_ENDPOINTS_TEXT: &str = "10,000";
/// `CLUSTERS - CHANGED` as the report writes it.
const UNCHANGED_TEXT: &str = "4,000";
/// EDS update rounds per proxy start, of three updates each (see [`How`]).
pub const ROUNDS: usize = 3;

/// How an EDS update is measured.
#[derive(Clone, Copy)]
enum How {
    /// Requests through the last route, back to back, until the moved endpoints answer.
    Traffic,
    /// `/stats` polled back to back until every changed cluster counts the update.
    Stats,
    /// No polling: the time to the ACK, and the CPU used.
    Costed,
}

/// How long a proxy may take from its start to serving everything.
const LOAD_TIMEOUT: Duration = Duration::from_secs(90);
/// The shortest window over which an update's CPU time is read, and a half of the time over
/// which idle use is measured: Envoy's default `stats_flush_interval`. Envoy's periodic stats
/// flush costs tens of ms here (over 500,000 stats), so a window of this length holds one
/// flush, as the idle measurement holds two, and subtracting the idle use takes it out.
const CPU_WINDOW: Duration = Duration::from_secs(5);
/// The node id both proxies present.
const NODE: &str = "bench";

const LISTENER_URL: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ROUTE_URL: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const ENDPOINT_URL: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// One proxy start.
#[derive(Clone, Debug, Default)]
pub struct XdsSample {
    /// From starting the proxy (the control plane already holding everything) to the first
    /// response through the last route.
    pub ready_ms: f64,
    /// CPU time of the proxy and its children at that moment.
    pub ready_cpu_ms: f64,
    /// `VmRSS` of the serving process once loaded.
    pub rss_kib: u64,
    /// `VmRSS` of its child processes at the same moment (skiff's decoder helper).
    pub helper_rss_kib: Option<u64>,
    /// Updates timed by traffic: from the control plane sending the response to the first
    /// response from the last cluster's new endpoints.
    pub eds_traffic_ms: Vec<f64>,
    /// Updates timed by the stats: from the control plane sending the response to the first
    /// `/stats` answer showing every changed cluster's `update_success` incremented.
    pub eds_stats_ms: Vec<f64>,
    /// Costed updates (no polling): from the control plane sending the response to its
    /// receiving the ACK.
    pub eds_ack_ms: Vec<f64>,
    /// CPU time (the proxy and its children, idle use subtracted) per costed update.
    pub eds_cpu_ms: Vec<f64>,
    /// How long one `/stats?filter=` poll of the changed clusters' counters took (median).
    pub stats_poll_ms: f64,
}

// ---- resources ------------------------------------------------------------------------------

const ADS: &str = "{ads: {}, resource_api_version: V3}";

/// The bootstrap: ADS (delta) from the control plane at `cp_port`; listeners and clusters
/// from it.
fn bootstrap(p: &Ports, cp_port: u16) -> String {
    format!(
        r#"# skiff benchmark, xDS at scale: everything over ADS (delta) from the control plane.
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
node: {{id: {NODE}, cluster: bench}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  lds_config: {ADS}
  cds_config: {ADS}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {cp_port}}}}}}}}}]}}]
"#,
        admin = p.admin,
    )
}

/// The listener: an HCM whose routes come from RDS over ADS.
fn lds(p: &Ports) -> String {
    format!(
        r#"- "@type": {LISTENER_URL}
  name: bench_xds
  address: {{socket_address: {{address: 127.0.0.1, port_value: {http}}}}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: bench_xds
        rds: {{route_config_name: bench_routes, config_source: {ADS}}}
        http_filters: [{ROUTER}]
"#,
        http = p.http,
    )
}

/// `CLUSTERS` EDS clusters, `cNNNN`, their endpoints from EDS over ADS.
fn cds(limit: usize) -> String {
    let mut s = String::new();
    for i in 0..CLUSTERS.min(limit) {
        s.push_str(&format!(
            "- \"@type\": {CLUSTER_URL}\n  name: {name}\n  type: EDS\n  connect_timeout: 1s\n  eds_cluster_config: {{eds_config: {ADS}}}\n",
            name = cluster_name(i)
        ));
    }
    s
}

/// Whether cluster `i` is one of those the EDS updates change.
fn changes(i: usize) -> bool {
    i >= CLUSTERS - CHANGED
}

/// Endpoint `j` of cluster `i`. The last cluster (the one probed) has its endpoints on nginx
/// at 127.0.0.1 to 127.0.0.10: nginx answering "ok", or when `moved`, the one answering
/// "alt". Every other endpoint has an address of its own that nothing listens on (no request
/// goes there), port 8000, or 8001 when `moved` and the cluster is one of those changed.
fn endpoint_address(i: usize, j: usize, moved: bool, p: &Ports) -> (String, u16) {
    if i == CLUSTERS - 1 {
        let port = if moved { p.nginx_alt } else { p.nginx_h1 };
        return (format!("127.0.0.{}", j + 1), port);
    }
    let k = i * ENDPOINTS + j;
    let port = if moved && changes(i) { 8001 } else { 8000 };
    (format!("127.1.{}.{}", k / 256, k % 256), port)
}

/// The `CLUSTERS` assignments of `ENDPOINTS` endpoints each; `moved`: the last `CHANGED`
/// have all their endpoints elsewhere.
fn eds(moved: bool, p: &Ports, range: std::ops::Range<usize>) -> String {
    let mut s = String::new();
    for i in range {
        s.push_str(&format!(
            "- \"@type\": {ENDPOINT_URL}\n  cluster_name: {}\n  endpoints: [{{lb_endpoints: [",
            cluster_name(i)
        ));
        for j in 0..ENDPOINTS {
            let (addr, port) = endpoint_address(i, j, moved, p);
            if j > 0 {
                s.push_str(", ");
            }
            s.push_str(&format!(
                "{{endpoint: {{address: {{socket_address: {{address: {addr}, port_value: {port}}}}}}}}}"
            ));
        }
        s.push_str("]}]\n");
    }
    s
}

/// One route configuration: `CLUSTERS` virtual hosts (`svc-NNNN.example.com`) of one route
/// each (`/` to cluster `cNNNN`).
fn rds(limit: usize) -> String {
    let mut s = format!("- \"@type\": {ROUTE_URL}\n  name: bench_routes\n  virtual_hosts:\n");
    for i in 0..CLUSTERS.min(limit) {
        s.push_str(&format!(
            "  - {{name: svc-{i:04}, domains: [{d}], routes: [{{match: {{prefix: /}}, route: {{cluster: {c}}}}}]}}\n",
            d = vhost_domain(i),
            c = cluster_name(i)
        ));
    }
    s
}

// ---- the control plane ----------------------------------------------------------------------

/// A line the control plane printed, with when it was read.
#[derive(Clone, Debug)]
struct Event {
    at: Instant,
    event: String,
    type_url: String,
    nonce: String,
    /// `error` of a request (a NACK's message) or of an `error` event.
    error: Option<String>,
}

/// The value of `"key":"…"` in a JSON line (the control plane's own, flat output).
fn json_str(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                c => out.push(c),
            },
            c => out.push(c),
        }
    }
    None
}

/// `s` as a JSON string literal.
fn json_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The control plane process, driven over stdin; everything it prints is read (and timed)
/// by a thread as it comes.
struct ControlPlane {
    proc: Proc,
    stdin: ChildStdin,
    events: Arc<Mutex<Vec<Event>>>,
    port: u16,
    log: std::path::PathBuf,
}

impl ControlPlane {
    fn start(bin: &Path, dir: &Path) -> Result<ControlPlane> {
        let log = dir.join("control-plane.log");
        let mut cmd = process::guarded("taskset");
        cmd.args(["-c", crate::bench::load::CLIENT_CPU])
            .arg(bin)
            .args(["--tcp", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut proc = Proc::spawn("xds-control-plane", &mut cmd)?;
        let stdin = proc
            .child_mut()
            .stdin
            .take()
            .ok_or_else(|| Error("control plane: no stdin".into()))?;
        let stdout = proc
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| Error("control plane: no stdout".into()))?;
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                let Some(event) = json_str(&line, "event") else {
                    continue;
                };
                let e = Event {
                    at,
                    type_url: json_str(&line, "type_url").unwrap_or_default(),
                    nonce: json_str(&line, "nonce").unwrap_or_default(),
                    error: json_str(&line, if event == "error" { "message" } else { "error" }),
                    event: if event == "ready" {
                        // The port, kept in the type URL's place.
                        let port: String = line
                            .split("\"port\":")
                            .nth(1)
                            .map(|v| v.chars().take_while(char::is_ascii_digit).collect())
                            .unwrap_or_default();
                        format!("ready {port}")
                    } else {
                        event
                    },
                };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(e);
            }
        });
        let mut cp = ControlPlane {
            proc,
            stdin,
            events,
            port: 0,
            log,
        };
        let ready = cp.wait(0, Duration::from_secs(10), |e| {
            e.event.starts_with("ready ")
        })?;
        cp.port = ready.event["ready ".len()..].parse()?;
        Ok(cp)
    }

    fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The first event from index `from` on that matches `pred`, waiting up to `limit`.
    fn wait(
        &mut self,
        from: usize,
        limit: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Result<Event> {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .skip(from)
                .find(|e| pred(e))
                .cloned();
            if let Some(e) = found {
                return Ok(e);
            }
            if let Some(st) = self.proc.exited() {
                bail!("the control plane exited ({st}):\n{}", tail(&self.log, 10));
            }
            if Instant::now() > deadline {
                bail!("the control plane: nothing expected within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sets the resources of `type_url` (a YAML list) at `version` and waits until the control
    /// plane has them (its `set` line); its pushes may already be under way then.
    fn set(&mut self, type_url: &str, version: usize, yaml: &str) -> Result {
        let from = self.len();
        let cmd = format!(
            "{{\"cmd\":\"set\",\"node\":\"{NODE}\",\"type_url\":\"{type_url}\",\"version\":\"{version}\",\"yaml\":{}}}\n",
            json_quote(yaml)
        );
        self.stdin.write_all(cmd.as_bytes())?;
        self.stdin.flush()?;
        let e = self.wait(from, TIMEOUT, |e| e.event == "set" || e.event == "error")?;
        if e.event == "error" {
            bail!(
                "the control plane refused the {type_url} resources: {}",
                e.error.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The first NACK seen: its type and message.
    fn nack(&self) -> Option<(String, String)> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|e| e.event == "request" && e.error.is_some())
            .map(|e| (e.type_url.clone(), e.error.clone().unwrap_or_default()))
    }

    /// The first response of `type_url` from index `from` on and the request answering it,
    /// if both came: when each was read, or the NACK's message.
    fn answer(&self, from: usize, type_url: &str) -> Option<Result<(Instant, Instant)>> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let sent = events
            .iter()
            .skip(from)
            .find(|e| e.event == "response" && e.type_url == type_url)?;
        let answer = events
            .iter()
            .skip(from)
            .find(|e| e.event == "request" && e.nonce == sent.nonce)?;
        Some(match &answer.error {
            Some(err) => Err(Error(format!(
                "{type_url} response {} NACKed: {}",
                sent.nonce,
                short(err)
            ))),
            None => Ok((sent.at, answer.at)),
        })
    }

    /// [`Self::answer`], waiting for it.
    fn wait_answer(&mut self, from: usize, type_url: &str) -> Result<(Instant, Instant)> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(r) = self.answer(from, type_url) {
                return r;
            }
            if let Some(st) = self.proc.exited() {
                bail!("the control plane exited ({st}):\n{}", tail(&self.log, 10));
            }
            if Instant::now() > deadline {
                bail!("no answer to the {type_url} response within {TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn quit(mut self) {
        let _ = self.stdin.write_all(b"{\"cmd\":\"quit\"}\n");
        let _ = self.stdin.flush();
        self.proc.wait_or_kill(Duration::from_secs(5));
    }
}

/// The first 300 characters of a message, on one line.
fn short(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &one[..i]),
        None => one,
    }
}

// ---- the stats ------------------------------------------------------------------------------

/// `^cluster\.c4NNN\.update_success$`: the changed clusters' counters (`CHANGED` is 1,000,
/// the last of `CLUSTERS`).
fn changed_regex() -> String {
    format!(
        "^cluster\\.c{}[0-9][0-9][0-9]\\.update_success$",
        (CLUSTERS - CHANGED) / 1000
    )
}

/// The counters whose names match `regex` (`/stats?filter=…&usedonly&type=Counters`).
fn counters(admin: SocketAddr, regex: &str) -> Result<BTreeMap<String, u64>> {
    let mut q = String::new();
    for c in regex.chars() {
        match c {
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => q.push(c),
            c => q.push_str(&format!("%{:02X}", c as u32)),
        }
    }
    let r = http::request(
        admin,
        "GET",
        &format!("/stats?filter={q}&usedonly&type=Counters"),
    )?;
    if r.status != 200 {
        bail!("/stats answered {}: {}", r.status, r.body.trim());
    }
    Ok(r.body
        .lines()
        .filter_map(|l| {
            let (name, v) = l.split_once(':')?;
            Some((name.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

/// Polls the changed clusters' counters back to back until each exceeds its value in
/// `before`; when the answer showing it was read, and how long each poll took.
fn wait_counters(
    admin: SocketAddr,
    before: &BTreeMap<String, u64>,
    p: &mut Proc,
    polls: &mut Vec<f64>,
) -> Result<Instant> {
    let regex = changed_regex();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        p.check_running()?;
        let q = Instant::now();
        let now = counters(admin, &regex)?;
        let at = Instant::now();
        polls.push(at.duration_since(q).as_secs_f64() * 1000.0);
        let behind = before
            .iter()
            .filter(|(n, &v)| now.get(*n).is_none_or(|&w| w <= v))
            .count();
        if behind == 0 {
            return Ok(at);
        }
        if at > deadline {
            bail!(
                "{behind} of {CHANGED_TEXT} `cluster.<name>.update_success` not incremented after {TIMEOUT:?}"
            );
        }
    }
}

// ---- the row --------------------------------------------------------------------------------

pub(super) fn measure(
    peer: Peer,
    bin: &Path,
    control_plane: &Path,
    p: &Ports,
    dir: &Path,
    yaml: &mut String,
) -> Result<XdsSample> {
    std::fs::create_dir_all(dir)?;
    let mut cp = ControlPlane::start(control_plane, dir)?;
    let r = (|| {
        let mut version = 1;
        cp.set(CLUSTER_URL, version, &cds(CLUSTERS))?;
        cp.set(ENDPOINT_URL, version, &eds(false, p, 0..CLUSTERS))?;
        cp.set(LISTENER_URL, version, &lds(p))?;
        cp.set(ROUTE_URL, version, &rds(CLUSTERS))?;
        let cfg = dir.join("xds.yaml");
        std::fs::write(&cfg, bootstrap(p, cp.port))?;
        if yaml.is_empty() {
            *yaml = format!(
                "# xds.yaml\n{}# listeners\n{}# clusters (first 2 of {CLUSTERS_TEXT})\n{}# endpoints (first 2 and the last of {CLUSTERS_TEXT}; the last {CHANGED_TEXT} move to port 8001, the last to nginx \"alt\")\n{}{}# routes (first 2 of {CLUSTERS_TEXT} virtual hosts)\n{}",
                std::fs::read_to_string(&cfg)?,
                lds(p),
                cds(2),
                eds(false, p, 0..2),
                eds(false, p, CLUSTERS - 1..CLUSTERS),
                rds(2),
            );
        }
        let admin = SocketAddr::from(([127, 0, 0, 1], p.admin));
        let log = dir.join(format!("{}.log", peer_file(peer)));
        let started = Instant::now();
        with_proxy(peer, bin, &cfg, &log, admin, LOAD_TIMEOUT, |proc| {
            let mut s = XdsSample::default();
            let pid = proc.pid();
            let mut c = Client::new(p.http);
            let last = vhost_domain(CLUSTERS - 1);
            loop {
                let tried = until_body(&mut c, &last, BODY_A, Instant::now());
                if let Some((t, err)) = cp.nack() {
                    bail!("NACK of {t}: {}", short(&err));
                }
                match tried {
                    Ok(_) => break,
                    Err(e) if started.elapsed() > LOAD_TIMEOUT => return Err(e),
                    Err(_) => {}
                }
            }
            s.ready_ms = started.elapsed().as_secs_f64() * 1000.0;
            s.ready_cpu_ms = tree_cpu_us(pid)? as f64 / 1000.0;
            if let Some((t, err)) = cp.nack() {
                bail!("NACK of {t}: {}", short(&err));
            }

            // Loaded: memory, while skiff's decoder helper still runs.
            std::thread::sleep(Duration::from_secs(1));
            s.rss_kib = rss_kib(pid).ok_or_else(|| Error(format!("no VmRSS for {pid}")))?;
            let kids = descendants(pid);
            if !kids.is_empty() {
                s.helper_rss_kib = Some(kids.iter().filter_map(|&k| rss_kib(k)).sum());
            }

            // What the proxy uses when nothing happens, to subtract from the update windows.
            let (idle0, t) = (tree_cpu_us(pid)?, Instant::now());
            std::thread::sleep(2 * CPU_WINDOW);
            let idle_per_s =
                tree_cpu_us(pid)?.saturating_sub(idle0) as f64 / t.elapsed().as_secs_f64();

            let regex = changed_regex();
            let mut polls = Vec::new();
            let mut moved = false;
            for _ in 0..ROUNDS {
                for how in [How::Traffic, How::Stats, How::Costed] {
                    let before = counters(admin, &regex)?;
                    if before.len() != CHANGED {
                        bail!(
                            "/stats shows {} of the {CHANGED_TEXT} counters {regex}",
                            before.len()
                        );
                    }
                    moved = !moved;
                    version += 1;
                    let yaml = eds(moved, p, 0..CLUSTERS);
                    let body = if moved { BODY_B } else { BODY_A };
                    let from = cp.len();
                    match how {
                        How::Traffic => {
                            cp.set(ENDPOINT_URL, version, &yaml)?;
                            until_body(&mut c, &last, body, Instant::now())?;
                            let at = Instant::now();
                            let (sent, _) = cp.wait_answer(from, ENDPOINT_URL)?;
                            s.eds_traffic_ms
                                .push(at.saturating_duration_since(sent).as_secs_f64() * 1000.0);
                        }
                        How::Stats => {
                            cp.set(ENDPOINT_URL, version, &yaml)?;
                            let at = wait_counters(admin, &before, proc, &mut polls)?;
                            let (sent, _) = cp.wait_answer(from, ENDPOINT_URL)?;
                            s.eds_stats_ms
                                .push(at.saturating_duration_since(sent).as_secs_f64() * 1000.0);
                        }
                        How::Costed => {
                            // No polling; CPU read from before the control plane has the
                            // update to at least a window later, once the ACK has come.
                            let longest = s
                                .eds_traffic_ms
                                .iter()
                                .chain(&s.eds_stats_ms)
                                .copied()
                                .fold(0.0, f64::max);
                            let window =
                                CPU_WINDOW.max(Duration::from_secs_f64(longest * 2.0 / 1000.0));
                            let (cpu0, t1) = (tree_cpu_us(pid)?, Instant::now());
                            cp.set(ENDPOINT_URL, version, &yaml)?;
                            let (cpu, (sent, acked)) = loop {
                                std::thread::sleep(window);
                                let cpu1 = tree_cpu_us(pid)?;
                                let elapsed = t1.elapsed();
                                if let Some(r) = cp.answer(from, ENDPOINT_URL) {
                                    let idle = idle_per_s * elapsed.as_secs_f64();
                                    let cpu = (cpu1.saturating_sub(cpu0) as f64 - idle).max(0.0);
                                    break (cpu / 1000.0, r?);
                                }
                                proc.check_running()?;
                                if elapsed > TIMEOUT {
                                    bail!("no ACK of the EDS update within {TIMEOUT:?}");
                                }
                            };
                            s.eds_cpu_ms.push(cpu);
                            s.eds_ack_ms
                                .push(acked.saturating_duration_since(sent).as_secs_f64() * 1000.0);
                        }
                    }
                    // Whichever way it was timed, the update shows in the stats and in the
                    // traffic of the last cluster.
                    wait_counters(admin, &before, proc, &mut Vec::new())?;
                    until_body(&mut c, &last, body, Instant::now())?;
                    std::thread::sleep(SETTLE);
                }
            }
            s.stats_poll_ms = median(polls).unwrap_or(0.0);
            Ok(s)
        })
    })();
    cp.quit();
    r
}

// ---- the report -----------------------------------------------------------------------------

pub(super) fn sample_line(s: &XdsSample) -> String {
    format!(
        "ready {:.0} ms / {:.0} ms CPU  RSS {:.1} MiB{}  EDS {} ms to ACK, {} ms to traffic, {} ms to stats / {} ms CPU  (stats poll {:.1} ms)",
        s.ready_ms,
        s.ready_cpu_ms,
        s.rss_kib as f64 / 1024.0,
        s.helper_rss_kib
            .map_or_else(String::new, |k| format!(" + helper {:.1} MiB", k as f64 / 1024.0)),
        fmt(median(s.eds_ack_ms.clone()), 1),
        fmt(median(s.eds_traffic_ms.clone()), 1),
        fmt(median(s.eds_stats_ms.clone()), 1),
        fmt(median(s.eds_cpu_ms.clone()), 1),
        s.stats_poll_ms,
    )
}

/// Medians of one proxy's samples.
#[derive(Default)]
struct Cell {
    n: usize,
    failed: usize,
    ready: Option<f64>,
    ready_cpu: Option<f64>,
    rss: Option<f64>,
    helper: Option<f64>,
    ack: Option<f64>,
    traffic: Option<f64>,
    stats: Option<f64>,
    cpu: Option<f64>,
    poll: Option<f64>,
}

fn cell(samples: &[(Peer, std::result::Result<XdsSample, String>)], peer: Peer) -> Cell {
    let ok: Vec<&XdsSample> = samples
        .iter()
        .filter(|s| s.0 == peer)
        .filter_map(|s| s.1.as_ref().ok())
        .collect();
    let all = |f: &dyn Fn(&XdsSample) -> &Vec<f64>| {
        median(ok.iter().flat_map(|s| f(s).iter().copied()).collect())
    };
    let one =
        |f: &dyn Fn(&XdsSample) -> Option<f64>| median(ok.iter().filter_map(|s| f(s)).collect());
    Cell {
        n: ok.len(),
        failed: samples
            .iter()
            .filter(|s| s.0 == peer && s.1.is_err())
            .count(),
        ready: one(&|s| Some(s.ready_ms)),
        ready_cpu: one(&|s| Some(s.ready_cpu_ms)),
        rss: one(&|s| Some(s.rss_kib as f64 / 1024.0)),
        helper: one(&|s| s.helper_rss_kib.map(|k| k as f64 / 1024.0)),
        ack: all(&|s| &s.eds_ack_ms),
        traffic: all(&|s| &s.eds_traffic_ms),
        stats: all(&|s| &s.eds_stats_ms),
        cpu: all(&|s| &s.eds_cpu_ms),
        poll: one(&|s| Some(s.stats_poll_ms)),
    }
}

/// The row's table: one line per measurement, skiff and Envoy side by side.
pub(super) fn table(samples: &[(Peer, std::result::Result<XdsSample, String>)]) -> String {
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
    let (s, e) = (cell(samples, Peer::Skiff), cell(samples, Peer::Envoy));
    let k =
        format!("{CLUSTERS_TEXT} EDS clusters × {ENDPOINTS} endpoints and {CLUSTERS_TEXT} routes");
    line(
        &format!("start with {k} over ADS → first request through the last route, ms"),
        s.ready,
        e.ready,
        0,
    );
    line(
        "CPU from start to that first request (proxy + children), ms",
        s.ready_cpu,
        e.ready_cpu,
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
    let sum = |c: &Cell| c.rss.map(|r| r + c.helper.unwrap_or(0.0));
    line(
        &format!("RSS with {k} loaded, serving process + helper, MiB"),
        sum(&s),
        sum(&e),
        1,
    );
    let update = format!(
        "EDS update, {CHANGED_TEXT} assignments × {ENDPOINTS} endpoints ({CHANGED_ENDPOINTS_TEXT} endpoints) changed"
    );
    line(
        &format!("{update}: push → ACK, no polling, median ms"),
        s.ack,
        e.ack,
        1,
    );
    line(
        &format!(
            "{update}: push → first response from the last cluster's new endpoints, median ms"
        ),
        s.traffic,
        e.traffic,
        1,
    );
    line(
        &format!(
            "{update}: push → all {CHANGED_TEXT} `cluster.<name>.update_success` incremented, polling `/stats`, median ms"
        ),
        s.stats,
        e.stats,
        1,
    );
    line(
        &format!(
            "one `/stats?filter=` poll of those {CHANGED_TEXT} counters (the resolution of the above), median ms"
        ),
        s.poll,
        e.poll,
        1,
    );
    line(
        "CPU per EDS update (proxy + children), median ms",
        s.cpu,
        e.cpu,
        1,
    );
    for (peer, c) in [(Peer::Skiff, &s), (Peer::Envoy, &e)] {
        if c.failed > 0 {
            t.push_str(&format!(
                "| ({}: {} of {} starts failed) | | | |\n",
                peer.name(),
                c.failed,
                c.failed + c.n
            ));
        }
    }
    t
}

/// The row's subsection of BENCHMARKS.md.
pub(super) fn section(
    samples: &[(Peer, std::result::Result<XdsSample, String>)],
    yaml: &str,
    reps: usize,
) -> String {
    format!(
        r#"
### xDS at scale: {CLUSTERS_TEXT} clusters, {CLUSTERS_TEXT} routes and an EDS update over ADS

{table}
{method}
```sh
taskset -c 1 target/debug/xds-control-plane --tcp 127.0.0.1:0    # resources set on its stdin
taskset -c 0 target/pgo/skiff -c xds.yaml {flags}    # and .venv/bin/envoy
```

<details><summary>the bootstrap and the first resources of each type (ports are picked free on each run)</summary>

```yaml
{yaml}```

</details>
"#,
        table = table(samples),
        method = method(reps),
        flags = crate::bench::proxy_flags().join(" "),
    )
}

/// How the row is measured.
pub(super) fn method(reps: usize) -> String {
    format!(
        r#"Everything comes over ADS, delta (`api_type: DELTA_GRPC`, as Istio's proxies use it),
from the project's control plane (`tests/src/bin/xds-control-plane.rs`, tonic and
envoy-types, debug build), a separate process on CPU 1 reached over TCP on loopback through
a static `xds` cluster with HTTP/2; the proxy on CPU 0 with one worker, as above. Each proxy
is started {starts}, the two alternating, with a fresh control plane that already holds:
{CLUSTERS_TEXT} clusters `cNNNN` of `type: EDS` (`eds_cluster_config` on ADS); their
{CLUSTERS_TEXT} `ClusterLoadAssignment`s of {ENDPOINTS} endpoints each ({ENDPOINTS} addresses of
their own, `127.1.x.y:8000`, nothing listening: no request goes there), except the last
cluster's, whose {ENDPOINTS} endpoints are nginx on 127.0.0.1 to 127.0.0.10; one listener whose
HCM takes its routes from RDS on ADS; one route configuration of {CLUSTERS_TEXT} virtual hosts
(`svc-NNNN.example.com`, as a mesh has one per service) of one route each, `/` to cluster
`cNNNN`. `cargo xtask bench --rows xds-scale` runs only this row; it builds the control plane
(`cargo build -p skiff-tests --bin xds-control-plane`).

- *start → first request*: from spawning the proxy to the first `200` through the last
  virtual host (`/ready` is polled every 50 ms first), the control plane answering the
  proxy's requests as they come (CDS, then EDS for the clusters named, LDS, RDS); a NACK
  fails the sample. The CPU figure is the proxy's and its children's at that moment (from
  `/proc/PID/task/TID/schedstat`, as above).
- *RSS*: `VmRSS` 1 s later, the serving process and its children (skiff's decoder helper)
  apart, as above.
- *EDS update*: {rounds} rounds per start of three updates, each {settle} ms after the
  previous one's effect was seen. Each update moves every endpoint of the last
  {CHANGED_TEXT} assignments ({CHANGED_ENDPOINTS_TEXT} endpoints: to the other port, and for
  the last cluster to the nginx server answering `alt`, then back), one
  `DeltaDiscoveryResponse` of {CHANGED_TEXT} resources (the other {UNCHANGED_TEXT} assignments are
  unchanged, so not sent). Times start when the benchmark reads the control plane's
  `response` line, printed just before the message goes to gRPC (its parsing of the new set
  of resources, about a second on CPU 1, comes before). The first update of a round is timed
  by *traffic*: requests through the last virtual host back to back, on one keep-alive
  connection, until the moved endpoints answer (the last cluster is the last resource of the
  response). The second is timed by the *stats*: `/stats?filter=` of the {CHANGED_TEXT}
  clusters' `cluster.<name>.update_success` (`&usedonly&type=Counters`) polled back to back
  until every one has moved; how long one poll takes is shown too, as it bounds the
  resolution. The third is *costed*, with no polling: the time until the control plane
  receives the ACK (the request carrying the response's nonce), and the CPU time of the
  proxy and its children from before the update is given to the control plane to the end
  of a window of at least {window} s (and twice the longest timed update) after which the ACK
  had come, less the idle use measured for {idle} s before the updates. {window} s is Envoy's
  default `stats_flush_interval`: its periodic flush costs tens of milliseconds of CPU with
  this many stats, so each window holds one flush as the idle measurement holds two, and the
  subtraction takes it out. After each update, however it was timed, the counters must have
  moved and the last virtual host must answer from the new endpoints.
"#,
        starts = match reps {
            1 => "once".to_string(),
            n => format!("{n} times"),
        },
        rounds = ROUNDS,
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
    fn an_update_moves_every_endpoint_of_the_last_assignments() {
        let p = ports();
        let (a, b) = (eds(false, &p, 0..CLUSTERS), eds(true, &p, 0..CLUSTERS));
        let per = |s: &str| -> Vec<String> {
            s.split("- \"@type\"").skip(1).map(str::to_string).collect()
        };
        let (a, b) = (per(&a), per(&b));
        assert_eq!(a.len(), CLUSTERS);
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_eq!(differ, CHANGED);
        for i in 0..CLUSTERS {
            assert_eq!(a[i].matches("{endpoint:").count(), ENDPOINTS);
            if changes(i) {
                assert!(a[i] != b[i], "{i}");
            }
        }
        // Every endpoint an address of its own; the last cluster's on nginx.
        let mut addrs: Vec<(String, u16)> = (0..CLUSTERS)
            .flat_map(|i| (0..ENDPOINTS).map(move |j| (i, j)))
            .map(|(i, j)| endpoint_address(i, j, false, &p))
            .collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), CLUSTERS * ENDPOINTS);
        assert!(a[CLUSTERS - 1].contains("address: 127.0.0.10, port_value: 1001"));
        assert!(b[CLUSTERS - 1].contains("address: 127.0.0.10, port_value: 1003"));
        assert!(b[CLUSTERS - 2].contains("port_value: 8001"));
        assert!(!b[CLUSTERS - CHANGED - 1].contains("port_value: 8001"));
    }

    #[test]
    fn routes_and_clusters_match() {
        let r = rds(CLUSTERS);
        assert_eq!(r.matches("domains: [svc-").count(), CLUSTERS);
        assert!(r.contains("domains: [svc-4999.example.com], routes: [{match: {prefix: /}, route: {cluster: c4999}}]"));
        assert_eq!(cds(CLUSTERS).matches("type: EDS").count(), CLUSTERS);
    }

    #[test]
    fn the_regex_selects_the_changed_clusters() {
        assert_eq!(
            changed_regex(),
            "^cluster\\.c4[0-9][0-9][0-9]\\.update_success$"
        );
        assert_eq!((CLUSTERS, CHANGED), (5000, 1000));
    }

    #[test]
    fn control_plane_lines() {
        let l = r#"{"delta":true,"error":"bad \"x\"\nmore","event":"request","nonce":"7","type_url":"t"}"#;
        assert_eq!(json_str(l, "event").unwrap(), "request");
        assert_eq!(json_str(l, "nonce").unwrap(), "7");
        assert_eq!(json_str(l, "error").unwrap(), "bad \"x\"\nmore");
        assert_eq!(json_str(r#"{"error":null}"#, "error"), None);
        assert_eq!(json_quote("a\"b\\c\nd"), r#""a\"b\\c\nd""#);
    }
}
