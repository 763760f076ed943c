//! Active health checks (`health_checks`), on the main thread as Envoy's: a session per host
//! checks it over HTTP/1.1, HTTP/2 or TCP, keeps Envoy's state machine (a never-checked host
//! becomes healthy on its first success; a failure other than a network one, that is not a
//! retriable status, makes it unhealthy at once; otherwise the thresholds count) and waits
//! Envoy's intervals between checks (the no-traffic ones until the cluster has had a
//! connection). A change of a host's health goes to the configuration store, which puts it in
//! the next snapshot; workers never wait for a check.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::config::model::{
    self, ActiveHealthCheck as HealthCheck, GrpcHealthCheck, HealthCheckKind, HttpHealthCheck,
};
use crate::stats::{Counter, Gauge, Shard, Store};

/// What the checks say of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostHealth {
    /// `FAILED_ACTIVE_HC`: not to be used (a host starts so, until its first check passes).
    pub failed: bool,
    /// `ACTIVE_HC_TIMEOUT`: failed by a timeout.
    pub timeout: bool,
    /// `DEGRADED_ACTIVE_HC`: the upstream answered `x-envoy-degraded`.
    pub degraded: bool,
    /// The first check has finished (the cluster waits for it before it goes into force).
    pub checked: bool,
}

impl HostHealth {
    const NEW: HostHealth = HostHealth {
        failed: true,
        timeout: false,
        degraded: false,
        checked: false,
    };
}

/// A host's health after a check, sent to the main loop.
#[derive(Debug)]
pub struct HealthEvent {
    generation: u64,
    address: SocketAddr,
    health: HostHealth,
    /// This check passed.
    passed: bool,
}

/// `cluster.<name>.health_check.*`.
#[derive(Debug, Clone)]
struct Stats {
    attempt: Counter,
    success: Counter,
    failure: Counter,
    network_failure: Counter,
    healthy: Gauge,
    degraded: Gauge,
    verify_cluster: Counter,
}

impl Stats {
    fn new(main: &Shard, stat_name: &str) -> Self {
        let p = format!("cluster.{stat_name}.health_check.");
        // Envoy has this too; nothing here counts it (no passive checks).
        main.counter(&format!("{p}passive_failure"));
        Stats {
            verify_cluster: main.counter(&format!("{p}verify_cluster")),
            attempt: main.counter(&format!("{p}attempt")),
            success: main.counter(&format!("{p}success")),
            failure: main.counter(&format!("{p}failure")),
            network_failure: main.counter(&format!("{p}network_failure")),
            healthy: main.gauge(&format!("{p}healthy")),
            degraded: main.gauge(&format!("{p}degraded")),
        }
    }
}

#[derive(Debug)]
struct Session {
    health: HostHealth,
    abort: AbortHandle,
    /// The host as discovery last gave it.
    host: model::Host,
    /// Removed by discovery while healthy: kept (as Envoy's `PENDING_DYNAMIC_REMOVAL`) until
    /// a check fails, unless `ignore_health_on_host_removal`.
    removed: bool,
}

impl Session {
    /// Its flags; `warm`: a host not yet checked is pending (Envoy's `PENDING_ACTIVE_HC`).
    fn flags(&self, warm: bool) -> model::HcFlags {
        model::HcFlags {
            failed: self.health.failed,
            timeout: self.health.timeout,
            degraded: self.health.degraded,
            removed: self.removed,
            pending: warm && !self.health.checked,
            ejected: false,
            outlier_degraded: false,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

#[derive(Debug)]
struct Checked {
    config: Arc<model::Cluster>,
    generation: u64,
    sessions: HashMap<SocketAddr, Session>,
    stats: Stats,
}

/// Every cluster's checks.
pub struct HealthCheckers {
    main: Arc<Shard>,
    store: Arc<Store>,
    /// One per cluster version (an active and a warming version are checked apart, as in
    /// Envoy).
    clusters: Vec<Checked>,
    next_generation: u64,
    tx: mpsc::UnboundedSender<HealthEvent>,
    rx: Option<mpsc::UnboundedReceiver<HealthEvent>>,
}

impl std::fmt::Debug for HealthCheckers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheckers")
            .field("clusters", &self.clusters.len())
            .finish()
    }
}

impl HealthCheckers {
    /// No checks yet.
    pub fn new(main: Arc<Shard>, store: Arc<Store>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        HealthCheckers {
            main,
            store,
            clusters: Vec::new(),
            next_generation: 0,
            tx,
            rx: Some(rx),
        }
    }

    /// The results, for the main loop. Taken once.
    pub fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<HealthEvent>> {
        self.rx.take()
    }

    /// Checks the hosts of these clusters (each with its discovered hosts): sessions start for
    /// new hosts and clusters, stop for those gone. A cluster whose configuration changed starts
    /// over, its hosts unchecked, as a new cluster in Envoy.
    pub fn sync<'a>(
        &mut self,
        clusters: impl Iterator<Item = (&'a Arc<model::Cluster>, Vec<model::Host>)>,
    ) {
        let mut seen: Vec<u64> = Vec::new();
        let handle = tokio::runtime::Handle::try_current().ok();
        for (config, hosts) in clusters {
            let Some(check) = &config.health_check else {
                continue;
            };
            let i = match self
                .clusters
                .iter()
                .position(|c| Arc::ptr_eq(&c.config, config))
            {
                Some(i) => i,
                None => {
                    self.next_generation += 1;
                    self.clusters.push(Checked {
                        config: config.clone(),
                        generation: self.next_generation,
                        sessions: HashMap::new(),
                        stats: Stats::new(&self.main, config.stat_name()),
                    });
                    self.clusters.len() - 1
                }
            };
            let c = &mut self.clusters[i];
            seen.push(c.generation);
            let traffic: Vec<Counter> = self
                .store
                .shards()
                .iter()
                .map(|s| s.counter(&format!("cluster.{}.upstream_cx_total", config.stat_name())))
                .collect();
            for h in &hosts {
                if let Some(s) = c.sessions.get_mut(&h.address) {
                    s.removed = false;
                    s.host = h.clone();
                    continue;
                }
                let Some(handle) = &handle else { continue };
                // The endpoint's `health_check_config`: not checked, or checked on another
                // port, with its own `:authority`.
                if unchecked(h) {
                    continue;
                }
                let own = h.check_config.as_deref();
                let host = match (own.filter(|c| !c.hostname.is_empty()), &check.kind) {
                    (Some(c), _) => c.hostname.clone(),
                    (None, HealthCheckKind::Http(http)) if !http.host.is_empty() => {
                        http.host.clone()
                    }
                    (None, HealthCheckKind::Grpc(grpc)) if !grpc.authority.is_empty() => {
                        grpc.authority.clone()
                    }
                    (None, _) => config.name.clone(),
                };
                // Its `address` instead of the endpoint's, with `port_value` (when set) as
                // the port of whichever it is.
                let base = own.and_then(|c| c.address).unwrap_or(h.address);
                let target = match own.map(|c| c.port).filter(|p| *p != 0) {
                    Some(port) => SocketAddr::new(base.ip(), port),
                    None => base,
                };
                // Checks connect with the host's transport socket, or the one
                // `transport_socket_match_criteria` picks.
                let tls = match &check.socket_criteria {
                    Some(c) => config.tls_for(&model::SocketMatchLabels {
                        endpoint: Some(c.clone()),
                        locality: h.socket_match.locality.clone(),
                    }),
                    None => config.tls_for(&h.socket_match),
                }
                .cloned();
                let run = Run {
                    check: check.clone(),
                    key: h.address,
                    address: target,
                    tls,
                    host,
                    stats: c.stats.clone(),
                    traffic: traffic.clone(),
                    generation: c.generation,
                    tx: self.tx.clone(),
                    log: EventLog::open(check, &config.name, h),
                };
                let abort = handle.spawn(run.session()).abort_handle();
                c.sessions.insert(
                    h.address,
                    Session {
                        health: HostHealth::NEW,
                        abort,
                        host: h.clone(),
                        removed: false,
                    },
                );
            }
            // Hosts discovery no longer has: kept while healthy (Envoy's default), else gone.
            let keep_healthy = !config.ignore_health_on_host_removal;
            let stats = c.stats.clone();
            c.sessions.retain(|address, s| {
                if hosts.iter().any(|h| h.address == *address) {
                    return true;
                }
                if keep_healthy && !s.health.failed {
                    s.removed = true;
                    return true;
                }
                leave(&stats, &s.health);
                false
            });
        }
        self.clusters.retain(|c| {
            let keep = seen.contains(&c.generation);
            if !keep {
                for s in c.sessions.values() {
                    leave(&c.stats, &s.health);
                }
            }
            keep
        });
    }

    /// The cluster version and host of a passed check whose host is healthy.
    pub fn passed(&self, ev: &HealthEvent) -> Option<(Arc<model::Cluster>, SocketAddr)> {
        if !ev.passed || ev.health.failed {
            return None;
        }
        self.clusters
            .iter()
            .find(|c| c.generation == ev.generation)
            .map(|c| (c.config.clone(), ev.address))
    }

    /// Takes a check's result; true when a host's health changed (a new snapshot is due).
    pub fn on_event(&mut self, ev: HealthEvent) -> bool {
        let Some(c) = self
            .clusters
            .iter_mut()
            .find(|c| c.generation == ev.generation)
        else {
            return false;
        };
        let Some(s) = c.sessions.get_mut(&ev.address) else {
            return false;
        };
        let before = s.health;
        s.health = ev.health;
        let stats = &c.stats;
        if before.failed != ev.health.failed {
            if ev.health.failed {
                stats.healthy.dec();
            } else {
                stats.healthy.inc();
            }
        }
        if before.degraded != ev.health.degraded {
            if ev.health.degraded {
                stats.degraded.inc();
            } else {
                stats.degraded.dec();
            }
        }
        if ev.health.failed && s.removed {
            // A host kept after its removal goes once it fails.
            c.sessions.remove(&ev.address);
            return true;
        }
        before != ev.health
    }

    /// Whether every host of `config` (with its hosts `hosts`) has had its first check: a
    /// cluster with checks goes into force only then, as in Envoy.
    pub fn ready(&self, config: &Arc<model::Cluster>, hosts: &[model::Host]) -> bool {
        if config.health_check.is_none() {
            return true;
        }
        let Some(c) = self
            .clusters
            .iter()
            .find(|c| Arc::ptr_eq(&c.config, config))
        else {
            return hosts.iter().all(unchecked);
        };
        hosts
            .iter()
            .all(|h| unchecked(h) || c.sessions.get(&h.address).is_some_and(|s| s.health.checked))
    }

    /// `hosts` (of `config`) with what the checks say, and the hosts kept after their removal.
    pub fn apply(&self, config: &Arc<model::Cluster>, hosts: Vec<model::Host>) -> Vec<model::Host> {
        let Some(c) = self
            .clusters
            .iter()
            .find(|c| Arc::ptr_eq(&c.config, config))
        else {
            return hosts;
        };
        // Envoy marks the hosts discovery adds (the first ones too), not a static cluster's.
        let warm = config.ignore_new_hosts_until_first_hc
            && matches!(
                config.discovery,
                model::DiscoveryType::Eds
                    | model::DiscoveryType::StrictDns
                    | model::DiscoveryType::LogicalDns
            );
        let mut out: Vec<model::Host> = hosts
            .into_iter()
            .map(|mut h| {
                if let Some(s) = c.sessions.get(&h.address) {
                    h.checks = s.flags(warm);
                }
                h
            })
            .collect();
        for s in c.sessions.values().filter(|s| s.removed) {
            let mut h = s.host.clone();
            h.checks = s.flags(warm);
            out.push(h);
        }
        out
    }
}

fn leave(stats: &Stats, h: &HostHealth) {
    if !h.failed {
        stats.healthy.dec();
    }
    if h.degraded {
        stats.degraded.dec();
    }
}

/// `disable_active_health_check`: a host the checks leave alone. So is an internal
/// listener's, which the checks cannot reach from the main thread (a cluster with checks and
/// such hosts is refused when it loads or its endpoints come).
fn unchecked(h: &model::Host) -> bool {
    h.internal.is_some() || h.check_config.as_ref().is_some_and(|c| c.disabled)
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success {
        degraded: bool,
    },
    /// An answer that is not the expected one (`retriable`: a `retriable_statuses` status),
    /// with its HTTP status.
    Active {
        retriable: bool,
        status: u16,
    },
    /// No connection, a reset, or a malformed answer.
    Network,
    /// No answer within `timeout`.
    Timeout,
}

/// Whether a check changed the host's health, as Envoy's `HealthTransition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    Unchanged,
    Changed,
    ChangePending,
}

/// A host's health check event log: a JSON line per event, as Envoy writes
/// `envoy.data.core.v3.HealthCheckEvent` (fields in their numbers' order, defaults printed).
struct EventLog {
    files: Vec<std::fs::File>,
    /// Everything before the event: the checker type, the host and the cluster.
    head: String,
    /// The host's locality.
    locality: String,
}

impl EventLog {
    fn open(check: &HealthCheck, cluster: &str, host: &model::Host) -> Option<EventLog> {
        if check.event_logs.is_empty() {
            return None;
        }
        let files = check
            .event_logs
            .iter()
            .filter_map(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| tracing::warn!(path = %p.display(), error = %e, "cannot open the health check event log"))
                    .ok()
            })
            .collect();
        let kind = match check.kind {
            HealthCheckKind::Http(_) => "HTTP",
            HealthCheckKind::Grpc(_) => "GRPC",
            HealthCheckKind::Tcp { .. } => "TCP",
        };
        let a = host.address;
        let head = format!(
            "{{\"health_checker_type\":\"{kind}\",\"host\":{{\"socket_address\":{{\"protocol\":\"TCP\",\"address\":{},\"port_value\":{},\"resolver_name\":\"\",\"ipv4_compat\":false,\"network_namespace_filepath\":\"\"}}}},\"cluster_name\":{}",
            serde_json::Value::from(a.ip().to_string()),
            a.port(),
            serde_json::Value::from(cluster),
        );
        let p = &host.place;
        let locality = format!(
            "\"locality\":{{\"region\":{},\"zone\":{},\"sub_zone\":{}}}",
            serde_json::Value::from(p.region.as_str()),
            serde_json::Value::from(p.zone.as_str()),
            serde_json::Value::from(p.sub_zone.as_str()),
        );
        Some(EventLog {
            files,
            head,
            locality,
        })
    }

    /// The events of one check, as Envoy's session logs them.
    fn events(
        &self,
        check: &HealthCheck,
        outcome: Outcome,
        first: bool,
        before: HostHealth,
        after: HostHealth,
    ) {
        let failure = |o: Outcome| match o {
            Outcome::Active { status, .. } => ("ACTIVE", status),
            Outcome::Timeout => ("NETWORK_TIMEOUT", 0),
            _ => ("NETWORK", 0),
        };
        match outcome {
            Outcome::Success { .. } => {
                if before.failed && !after.failed {
                    self.write(
                        4,
                        &format!("\"add_healthy_event\":{{\"first_check\":{first}}}"),
                    );
                } else if check.always_log_success {
                    self.write(12, "\"successful_health_check_event\":{}");
                }
                if after.degraded && !before.degraded {
                    self.write(8, "\"degraded_healthy_host\":{}");
                } else if before.degraded && !after.degraded {
                    self.write(9, "\"no_longer_degraded_host\":{}");
                }
            }
            o => {
                let (kind, status) = failure(o);
                if !before.failed && after.failed {
                    self.write(
                        4,
                        &format!("\"eject_unhealthy_event\":{{\"failure_type\":\"{kind}\",\"http_status_code\":{status}}}"),
                    );
                }
                if first || check.always_log_failures {
                    self.write(
                        7,
                        &format!("\"health_check_failure_event\":{{\"failure_type\":\"{kind}\",\"first_check\":{first},\"http_status_code\":{status}}}"),
                    );
                }
            }
        }
    }

    /// One line: the event goes before the timestamp (field 6) or after it, before the
    /// locality (11), or after the locality (12), by its field number.
    fn write(&self, field: u32, event: &str) {
        use std::io::Write;
        let ts = crate::access_log::format_time(std::time::SystemTime::now());
        let line = match field {
            f if f < 6 => format!(
                "{},{event},\"timestamp\":\"{ts}\",{}}}\n",
                self.head, self.locality
            ),
            f if f < 11 => format!(
                "{},\"timestamp\":\"{ts}\",{event},{}}}\n",
                self.head, self.locality
            ),
            _ => format!(
                "{},\"timestamp\":\"{ts}\",{},{event}}}\n",
                self.head, self.locality
            ),
        };
        for mut f in &self.files {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// One host's checks.
struct Run {
    check: Arc<HealthCheck>,
    /// The host (its endpoint address), as its events name it.
    key: SocketAddr,
    /// Where the checks connect (the endpoint's `health_check_config.port_value`).
    address: SocketAddr,
    /// TLS to the host, as its traffic's.
    tls: Option<Arc<crate::tls::UpstreamTls>>,
    host: String,
    stats: Stats,
    traffic: Vec<Counter>,
    generation: u64,
    tx: mpsc::UnboundedSender<HealthEvent>,
    /// The event log, when the check has one.
    log: Option<EventLog>,
}

/// Envoy's session counters.
#[derive(Debug)]
struct Machine {
    health: HostHealth,
    first: bool,
    healthy_in_row: u32,
    unhealthy_in_row: u32,
}

impl Machine {
    fn new() -> Self {
        Machine {
            health: HostHealth::NEW,
            first: true,
            healthy_in_row: 0,
            unhealthy_in_row: 0,
        }
    }

    /// Envoy's `handleSuccess` and `setUnhealthy`.
    fn on(&mut self, outcome: Outcome, check: &HealthCheck) -> Transition {
        let mut t = Transition::Unchanged;
        match outcome {
            Outcome::Success { degraded } => {
                self.unhealthy_in_row = 0;
                if self.health.failed {
                    self.healthy_in_row += 1;
                    if self.first || self.healthy_in_row == check.healthy_threshold {
                        self.health.timeout = false;
                        self.health.failed = false;
                        t = Transition::Changed;
                    } else {
                        t = Transition::ChangePending;
                    }
                }
                if self.first && t != Transition::Changed {
                    t = Transition::Changed;
                }
                if degraded != self.health.degraded {
                    self.health.degraded = degraded;
                    if t == Transition::Unchanged {
                        t = Transition::Changed;
                    }
                }
            }
            Outcome::Active { .. } | Outcome::Network | Outcome::Timeout => {
                self.healthy_in_row = 0;
                let network = matches!(outcome, Outcome::Network | Outcome::Timeout);
                let retriable = matches!(
                    outcome,
                    Outcome::Active {
                        retriable: true,
                        ..
                    }
                );
                if !self.health.failed {
                    self.unhealthy_in_row += 1;
                    if (!network && !retriable)
                        || self.unhealthy_in_row == check.unhealthy_threshold
                    {
                        self.health.failed = true;
                        t = Transition::Changed;
                    } else {
                        t = Transition::ChangePending;
                    }
                }
                self.health.timeout = outcome == Outcome::Timeout && self.health.failed;
                if self.first {
                    t = Transition::Changed;
                }
            }
        }
        self.first = false;
        self.health.checked = true;
        t
    }
}

impl Run {
    async fn session(self) {
        let check = self.check.clone();
        let mut machine = Machine::new();
        let mut conn: Option<Conn> = None;
        let mut wait = if check.initial_jitter.is_zero() {
            Duration::ZERO
        } else {
            self.jittered(0, check.initial_jitter)
        };
        loop {
            tokio::time::sleep(wait).await;
            self.stats.attempt.inc();
            let outcome = match tokio::time::timeout(check.timeout, self.once(&mut conn)).await {
                Ok(o) => o,
                Err(_) => {
                    conn = None;
                    Outcome::Timeout
                }
            };
            // A failed answer keeps the connection; no answer, or no reuse, closes it.
            if matches!(outcome, Outcome::Network | Outcome::Timeout) || !check.reuse_connection {
                conn = None;
            }
            let before = machine.health;
            let first = machine.first;
            let t = machine.on(outcome, &check);
            if let Some(log) = &self.log {
                log.events(&check, outcome, first, before, machine.health);
            }
            match outcome {
                Outcome::Success { .. } => self.stats.success.inc(),
                Outcome::Network | Outcome::Timeout => {
                    self.stats.failure.inc();
                    self.stats.network_failure.inc();
                }
                Outcome::Active { .. } => self.stats.failure.inc(),
            }
            // A change, and every passed check (it may bring back a host outlier detection
            // ejected).
            let passed = matches!(outcome, Outcome::Success { .. });
            if machine.health != before || passed {
                let _ = self.tx.send(HealthEvent {
                    generation: self.generation,
                    address: self.key,
                    health: machine.health,
                    passed,
                });
            }
            // Envoy: the wait follows this check's result, not the host's state.
            wait = self.interval(matches!(outcome, Outcome::Success { .. }), t);
        }
    }

    /// Envoy's `interval`: the wait after a passed (`healthy`) or failed check, or the
    /// no-traffic ones while the cluster has had no connection, jittered.
    fn interval(&self, healthy: bool, t: Transition) -> Duration {
        let c = &self.check;
        let traffic = self.traffic.iter().any(|c| c.value() > 0);
        let pending = t == Transition::ChangePending;
        let base = if traffic {
            match (healthy, pending) {
                (false, true) => c.unhealthy_edge_interval,
                (false, false) => c.unhealthy_interval,
                (true, true) => c.healthy_edge_interval,
                (true, false) => c.interval,
            }
        } else if healthy && !pending {
            c.no_traffic_healthy_interval
        } else {
            c.no_traffic_interval
        };
        self.jittered(base.as_millis() as u64, c.interval_jitter)
    }

    /// Envoy's `intervalWithJitter`: the percent jitter, then the absolute one; at least 1 ms.
    fn jittered(&self, base_ms: u64, jitter: Duration) -> Duration {
        let mut ms = base_ms;
        let percent = u64::from(self.check.interval_jitter_percent) * base_ms / 100;
        if percent > 0 {
            ms += fastrand::u64(..percent);
        }
        let j = jitter.as_millis() as u64;
        if j > 0 {
            ms += fastrand::u64(..j);
        }
        Duration::from_millis(ms.max(1))
    }

    async fn once(&self, conn: &mut Option<Conn>) -> Outcome {
        match &self.check.kind {
            HealthCheckKind::Http(http) => self.http(http, conn).await,
            HealthCheckKind::Grpc(grpc) => self.grpc(grpc, conn).await,
            HealthCheckKind::Tcp { send, receive } => self.tcp(send, receive, conn).await,
        }
    }

    /// Envoy's gRPC checker: `grpc.health.v1.Health/Check` with the service's name; healthy
    /// on a 200 `application/grpc` response of one `SERVING` message and `grpc-status: 0`
    /// trailers. Any other answer fails the host at once; no answer is a network failure.
    async fn grpc(&self, g: &GrpcHealthCheck, conn: &mut Option<Conn>) -> Outcome {
        let mut sender = match conn.take() {
            Some(Conn::Http(s)) if s.is_ready() => s,
            _ => match self.connect_http(true).await {
                Some(s) => s,
                None => return Outcome::Network,
            },
        };
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/grpc.health.v1.Health/Check", self.host))
            // Without a content-length, as Envoy's gRPC checker sends it.
            .body(CheckBody {
                inner: Full::new(Bytes::from(grpc_request(&g.service))),
                sized: false,
            });
        let Ok(mut req) = req else {
            return Outcome::Network;
        };
        let headers = req.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("Envoy/HC"),
        );
        if let Ok(t) = http::HeaderValue::from_str(&format!("{}m", self.check.timeout.as_millis()))
        {
            headers.insert("grpc-timeout", t);
        }
        g.metadata.apply(headers);
        let resp = match sender.send(req).await {
            Ok(r) => r,
            Err(_) => return Outcome::Network,
        };
        let status = resp.status().as_u16();
        let grpc_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut body = resp.into_body();
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => {
                        // One small message is all a check needs; more is a failure anyway.
                        if data.len() < 64 * 1024 {
                            data.extend_from_slice(&d);
                        }
                    }
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Err(_) => return Outcome::Network,
            }
        }
        let serving = status == 200
            && grpc_type
            && trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .is_some_and(|v| v.as_bytes() == b"0")
            && grpc_serving(&data);
        *conn = Some(Conn::Http(sender));
        if serving {
            Outcome::Success { degraded: false }
        } else {
            Outcome::Active {
                retriable: false,
                status,
            }
        }
    }

    async fn tcp(&self, send: &[u8], receive: &[Vec<u8>], conn: &mut Option<Conn>) -> Outcome {
        let (mut stream, mut got) = match conn.take() {
            Some(Conn::Tcp(s, got)) => (s, got),
            _ => match self.connect().await {
                Some(s) => (s, Vec::new()),
                None => return Outcome::Network,
            },
        };
        // As Envoy: without `receive` the connection is the check (nothing is sent, and the
        // connection closes).
        if receive.is_empty() {
            return Outcome::Success { degraded: false };
        }
        if !send.is_empty() && stream.write_all(send).await.is_err() {
            return Outcome::Network;
        }
        // What does not match stays (Envoy's read buffer) until it does, or the timeout.
        let mut buf = [0u8; 4096];
        while !contains_in_order(&got, receive) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Outcome::Network,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        *conn = Some(Conn::Tcp(stream, Vec::new()));
        Outcome::Success { degraded: false }
    }

    async fn http(&self, http: &HttpHealthCheck, conn: &mut Option<Conn>) -> Outcome {
        let mut sender = match conn.take() {
            Some(Conn::Http(s)) if s.is_ready() => s,
            _ => match self.connect_http(http.http2).await {
                Some(s) => s,
                None => return Outcome::Network,
            },
        };
        let mut req = http::Request::builder()
            .method(http.method.as_str())
            .uri(http.path.as_str());
        if http.http2 {
            req = req.uri(format!("http://{}{}", self.host, http.path));
        }
        let Ok(mut req) = req.body(CheckBody {
            inner: Full::new(Bytes::from(http.send.clone())),
            sized: true,
        }) else {
            return Outcome::Network;
        };
        let headers = req.headers_mut();
        if !http.http2 {
            if let Ok(v) = http::HeaderValue::from_str(&self.host) {
                headers.insert(http::header::HOST, v);
            }
        }
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("Envoy/HC"),
        );
        // Envoy's HTTP/1.1 codec: a request without a body says `content-length: 0` unless
        // its method has no body.
        let bodiless = matches!(http.method.as_str(), "GET" | "HEAD" | "DELETE" | "TRACE");
        if !http.http2 && (!bodiless || !http.send.is_empty()) {
            headers.insert(http::header::CONTENT_LENGTH, http.send.len().into());
        }
        http.headers.apply(headers);
        let resp = match sender.send(req).await {
            Ok(r) => r,
            Err(_) => return Outcome::Network,
        };
        let status = resp.status().as_u16();
        let degraded = resp.headers().contains_key("x-envoy-degraded");
        let checked_cluster = resp
            .headers()
            .get("x-envoy-upstream-healthchecked-cluster")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let close = resp
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        // The body: read (up to the buffer size searched) so the connection can serve again.
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref().filter(|_| !http.receive.is_empty()) {
                        let room = http.response_buffer_size.saturating_sub(got.len());
                        got.extend_from_slice(&d[..d.len().min(room)]);
                    }
                }
                Err(_) => return Outcome::Network,
            }
        }
        // Envoy's order: the body, then the status, then `x-envoy-degraded`.
        let in_ranges = |r: &[(u16, u16)]| r.iter().any(|&(a, b)| (a..b).contains(&status));
        let outcome = if !http.receive.is_empty() && !contains_in_order(&got, &http.receive) {
            Outcome::Active {
                retriable: false,
                status,
            }
        } else if !in_ranges(&http.expected) {
            Outcome::Active {
                retriable: in_ranges(&http.retriable),
                status,
            }
        } else if let Some(m) = &http.service_name {
            // service_name_matcher: the answer names the cluster the upstream checked for.
            self.stats.verify_cluster.inc();
            if m.matches(&checked_cluster) {
                Outcome::Success { degraded }
            } else {
                Outcome::Active {
                    retriable: false,
                    status,
                }
            }
        } else {
            Outcome::Success { degraded }
        };
        if !close {
            *conn = Some(Conn::Http(sender));
        }
        outcome
    }

    /// A connection for a check: TCP, then TLS when the host's traffic has it, with the
    /// check's `alpn_protocols` or else the TLS context's own (none by default, as Envoy's).
    async fn connect(&self) -> Option<CheckStream> {
        let tcp = TcpStream::connect(self.address).await.ok()?;
        let _ = tcp.set_nodelay(true);
        let Some(settings) = &self.tls else {
            return Some(Box::new(tcp));
        };
        let t = crate::tls::transport::client(settings).ok()?;
        let name = t
            .server_name
            .clone()
            .unwrap_or_else(|| rustls_pki_types::ServerName::IpAddress(self.address.ip().into()));
        let alpn: Vec<Vec<u8>> = if self.check.alpn.is_empty() {
            settings
                .alpn
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect()
        } else {
            self.check
                .alpn
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect()
        };
        let mut config = t.config.get();
        if config.alpn_protocols != alpn {
            let mut c = (*config).clone();
            c.alpn_protocols = alpn;
            config = Arc::new(c);
        }
        let s = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .ok()?;
        Some(Box::new(s))
    }

    async fn connect_http(&self, http2: bool) -> Option<Sender> {
        let io = TokioIo::new(self.connect().await?);
        if http2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .ok()?;
            tokio::spawn(conn);
            Some(Sender::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
            tokio::spawn(conn);
            Some(Sender::H1(send))
        }
    }
}

/// A check's request body; `sized: false` hides its length, so no content-length goes with
/// it over HTTP/2.
struct CheckBody {
    inner: Full<Bytes>,
    sized: bool,
}

impl hyper::body::Body for CheckBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.sized && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        if self.sized {
            self.inner.size_hint()
        } else {
            hyper::body::SizeHint::default()
        }
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<CheckBody>),
    H2(hyper::client::conn::http2::SendRequest<CheckBody>),
}

impl Sender {
    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }

    async fn send(
        &mut self,
        req: http::Request<CheckBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// A check's connection, plain or TLS.
trait CheckIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> CheckIo for T {}
type CheckStream = Box<dyn CheckIo>;

enum Conn {
    /// With what was read and not yet matched.
    Tcp(CheckStream, Vec<u8>),
    Http(Sender),
}

/// A `HealthCheckRequest { service }` in gRPC's 5-byte framing.
pub fn grpc_request(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        let mut n = service.len();
        while n >= 0x80 {
            msg.push((n as u8) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = vec![0u8];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

/// Whether `data` is exactly one uncompressed gRPC message, a `HealthCheckResponse` whose
/// `status` (field 1) is `SERVING` (1).
pub fn grpc_serving(data: &[u8]) -> bool {
    let [0, a, b, c, d, rest @ ..] = data else {
        return false;
    };
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if rest.len() != len {
        return false;
    }
    let varint = |buf: &mut &[u8]| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, tail) = buf.split_first()?;
            *buf = tail;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    };
    let mut buf = rest;
    let mut status = 0;
    while !buf.is_empty() {
        let Some(key) = varint(&mut buf) else {
            return false;
        };
        match key & 7 {
            0 => match varint(&mut buf) {
                Some(v) if key >> 3 == 1 => status = v,
                Some(_) => {}
                None => return false,
            },
            1 if buf.len() >= 8 => buf = &buf[8..],
            5 if buf.len() >= 4 => buf = &buf[4..],
            2 => match varint(&mut buf) {
                Some(n) if (n as usize) <= buf.len() => buf = &buf[n as usize..],
                _ => return false,
            },
            _ => return false,
        }
    }
    status == 1
}

/// Envoy's payload match: each block found in `data`, each after the one before.
fn contains_in_order(data: &[u8], blocks: &[Vec<u8>]) -> bool {
    let mut from = 0;
    for b in blocks {
        if b.is_empty() {
            continue;
        }
        match data[from..]
            .windows(b.len())
            .position(|w| w == b.as_slice())
        {
            Some(i) => from += i + b.len(),
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(1),
            initial_jitter: Duration::ZERO,
            interval_jitter: Duration::ZERO,
            interval_jitter_percent: 0,
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
            reuse_connection: true,
            no_traffic_interval: Duration::from_secs(60),
            no_traffic_healthy_interval: Duration::from_secs(60),
            unhealthy_interval: Duration::from_secs(1),
            unhealthy_edge_interval: Duration::from_secs(1),
            healthy_edge_interval: Duration::from_secs(1),
            kind: HealthCheckKind::Tcp {
                send: Vec::new(),
                receive: Vec::new(),
            },
            event_logs: Vec::new(),
            always_log_failures: false,
            always_log_success: false,
            alpn: Vec::new(),
            socket_criteria: None,
        }
    }

    const OK: Outcome = Outcome::Success { degraded: false };

    #[test]
    fn the_first_success_makes_a_host_healthy_then_thresholds_count() {
        let c = check(2, 3);
        let mut m = Machine::new();
        assert_eq!(m.on(OK, &c), Transition::Changed);
        assert!(!m.health.failed);
        // Network failures: the third in a row makes it unhealthy.
        assert_eq!(m.on(Outcome::Timeout, &c), Transition::ChangePending);
        assert_eq!(m.on(Outcome::Network, &c), Transition::ChangePending);
        assert!(!m.health.failed);
        assert_eq!(m.on(Outcome::Timeout, &c), Transition::Changed);
        assert!(m.health.failed && m.health.timeout);
        // Back: two successes in a row.
        assert_eq!(m.on(OK, &c), Transition::ChangePending);
        assert!(m.health.failed);
        assert_eq!(m.on(OK, &c), Transition::Changed);
        assert!(!m.health.failed && !m.health.timeout);
        // A wrong status fails at once; a retriable one counts.
        assert_eq!(
            m.on(
                Outcome::Active {
                    retriable: true,
                    status: 503
                },
                &c
            ),
            Transition::ChangePending
        );
        assert_eq!(
            m.on(
                Outcome::Active {
                    retriable: false,
                    status: 503
                },
                &c
            ),
            Transition::Changed
        );
        assert!(m.health.failed && !m.health.timeout);
    }

    #[test]
    fn payloads_are_found_in_order() {
        let d = b"hello pong world";
        assert!(contains_in_order(d, &[b"pong".to_vec()]));
        assert!(contains_in_order(
            d,
            &[b"hello".to_vec(), b"world".to_vec()]
        ));
        assert!(!contains_in_order(
            d,
            &[b"world".to_vec(), b"hello".to_vec()]
        ));
        assert!(!contains_in_order(d, &[b"ping".to_vec()]));
    }
}

#[cfg(test)]
mod grpc_tests {
    use super::*;

    #[test]
    fn the_request_and_the_answers_are_grpcs() {
        assert_eq!(grpc_request(""), vec![0, 0, 0, 0, 0]);
        assert_eq!(grpc_request("a"), vec![0, 0, 0, 0, 3, 0x0a, 1, b'a']);
        let long = "s".repeat(200);
        assert_eq!(&grpc_request(&long)[5..8], &[0x0a, 0xc8, 0x01]);
        assert!(grpc_serving(&[0, 0, 0, 0, 2, 0x08, 1]));
        assert!(!grpc_serving(&[0, 0, 0, 0, 2, 0x08, 2]), "NOT_SERVING");
        assert!(!grpc_serving(&[1, 0, 0, 0, 2, 0x08, 1]), "compressed");
        assert!(
            !grpc_serving(&[0, 0, 0, 0, 2, 0x08, 1, 0, 0]),
            "more than one message"
        );
        assert!(!grpc_serving(&[0, 0, 0, 0, 0]), "status UNKNOWN");
        assert!(!grpc_serving(&[0, 0, 0, 0, 2, 0x08]), "cut short");
        // Unknown fields are skipped.
        assert!(grpc_serving(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]));
    }
}
