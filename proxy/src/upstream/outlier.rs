//! Outlier detection (`outlier_detection`) as Envoy's: workers count each host's results in
//! atomics shared by all workers (consecutive 5xx, gateway failures and local-origin failures,
//! and the interval's success counts) and tell the main thread when a consecutive count
//! reaches its threshold; the main thread ejects (within `max_ejection_percent`, by the
//! enforcement draw), judges success rates and failure percentages each interval, and brings
//! hosts back when their ejection time has passed. An ejected host is unhealthy in the next
//! snapshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ClusterInfo, HostStats};
use crate::config::model::{self, OutlierDetection};
use crate::stats::{Counter, Gauge, Shard};

/// Where workers send detections; set when the main thread's detectors exist.
static EVENTS: OnceLock<mpsc::UnboundedSender<Detected>> = OnceLock::new();

/// The success counts of one interval.
#[derive(Debug, Default)]
struct Bucket {
    total: AtomicU64,
    success: AtomicU64,
}

impl Bucket {
    /// The counts so far, and a fresh start (Envoy's bucket swap at each interval).
    fn take(&self) -> (u64, u64) {
        (self.total.swap(0, Relaxed), self.success.swap(0, Relaxed))
    }
}

/// A host's outlier counts, shared by all workers (Envoy's `DetectorHostMonitorImpl`).
#[derive(Debug)]
pub struct Monitor {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    external: Bucket,
    local: Bucket,
    /// The last interval's success rates as `/clusters` shows them (f64 bits; -1: none).
    success_rate: AtomicU64,
    local_success_rate: AtomicU64,
    /// Degraded by `detect_degraded_hosts` (set by the main thread): workers need not say so
    /// again.
    degraded: AtomicBool,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_local: AtomicU32::new(0),
            external: Bucket::default(),
            local: Bucket::default(),
            success_rate: AtomicU64::new((-1f64).to_bits()),
            local_success_rate: AtomicU64::new((-1f64).to_bits()),
            degraded: AtomicBool::new(false),
        }
    }
}

/// Which consecutive count reached its threshold, or which interval judgement ejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `consecutive_5xx`.
    Consecutive5xx,
    /// `consecutive_gateway_failure`.
    ConsecutiveGateway,
    /// `consecutive_local_origin_failure`.
    ConsecutiveLocal,
    /// `success_rate`.
    SuccessRate,
    /// `local_origin_success_rate`.
    LocalSuccessRate,
    /// `failure_percentage`.
    FailurePercentage,
    /// `local_origin_failure_percentage`.
    LocalFailurePercentage,
    /// `detect_degraded_hosts`: the host answered `x-envoy-degraded`; it is degraded, not
    /// ejected.
    Degraded,
}

impl Kind {
    fn stat(self) -> &'static str {
        match self {
            Kind::Consecutive5xx => "consecutive_5xx",
            Kind::ConsecutiveGateway => "consecutive_gateway_failure",
            Kind::ConsecutiveLocal => "consecutive_local_origin_failure",
            Kind::SuccessRate => "success_rate",
            Kind::LocalSuccessRate => "local_origin_success_rate",
            Kind::FailurePercentage => "failure_percentage",
            Kind::LocalFailurePercentage => "local_origin_failure_percentage",
            Kind::Degraded => "degradation",
        }
    }

    /// Its name in the event log (`envoy.data.cluster.v3.OutlierEjectionType`).
    fn event_name(self) -> &'static str {
        match self {
            Kind::Consecutive5xx => "CONSECUTIVE_5XX",
            Kind::ConsecutiveGateway => "CONSECUTIVE_GATEWAY_FAILURE",
            Kind::ConsecutiveLocal => "CONSECUTIVE_LOCAL_ORIGIN_FAILURE",
            Kind::SuccessRate => "SUCCESS_RATE",
            Kind::LocalSuccessRate => "SUCCESS_RATE_LOCAL_ORIGIN",
            Kind::FailurePercentage => "FAILURE_PERCENTAGE",
            Kind::LocalFailurePercentage => "FAILURE_PERCENTAGE_LOCAL_ORIGIN",
            Kind::Degraded => "DEGRADED",
        }
    }

    fn enforcing(self, o: &OutlierDetection) -> u32 {
        match self {
            Kind::Consecutive5xx => o.enforcing_consecutive_5xx,
            Kind::ConsecutiveGateway => o.enforcing_consecutive_gateway_failure,
            Kind::ConsecutiveLocal => o.enforcing_consecutive_local_origin_failure,
            Kind::SuccessRate => o.enforcing_success_rate,
            Kind::LocalSuccessRate => o.enforcing_local_origin_success_rate,
            Kind::FailurePercentage => o.enforcing_failure_percentage,
            Kind::LocalFailurePercentage => o.enforcing_failure_percentage_local_origin,
            // Always enforced.
            Kind::Degraded => 100,
        }
    }
}

/// A consecutive count that reached its threshold on a worker.
#[derive(Debug)]
pub struct Detected {
    host: Arc<HostStats>,
    kind: Kind,
}

fn notify(host: &Arc<HostStats>, kind: Kind) {
    if let Some(tx) = EVENTS.get() {
        let _ = tx.send(Detected {
            host: host.clone(),
            kind,
        });
    }
}

/// What an attempt's upstream side reports, as Envoy's router does.
impl Monitor {
    /// A response's status (every attempt's, before any retry).
    pub fn put_status(host: &Arc<HostStats>, o: &OutlierDetection, code: u16) {
        let m = &host.outlier;
        m.external.total.fetch_add(1, Relaxed);
        if (500..600).contains(&code) {
            if (502..505).contains(&code) {
                if m.consecutive_gateway.fetch_add(1, Relaxed) + 1 == o.consecutive_gateway_failure
                {
                    notify(host, Kind::ConsecutiveGateway);
                }
            } else {
                m.consecutive_gateway.store(0, Relaxed);
            }
            if m.consecutive_5xx.fetch_add(1, Relaxed) + 1 == o.consecutive_5xx {
                notify(host, Kind::Consecutive5xx);
            }
        } else {
            m.external.success.fetch_add(1, Relaxed);
            m.consecutive_5xx.store(0, Relaxed);
            m.consecutive_gateway.store(0, Relaxed);
        }
    }

    /// A response below 500 with `x-envoy-degraded` (`ExtOriginRequestDegraded`): with
    /// `detect_degraded_hosts` the host is degraded; the response counts as its code does.
    pub fn put_degraded(host: &Arc<HostStats>, o: &OutlierDetection, code: u16) {
        if o.detect_degraded_hosts && !host.outlier.degraded.load(Relaxed) {
            notify(host, Kind::Degraded);
        }
        Self::put_status(host, o, code);
    }

    /// The attempt has its connection (Envoy's `LocalOriginConnectSuccess`).
    pub fn put_connected(host: &Arc<HostStats>, o: &OutlierDetection) {
        if o.split_external_local_origin_errors {
            Self::local_success(host);
        }
    }

    /// tcp_proxy's connection is made (`LocalOriginConnectSuccessFinal`).
    pub fn put_connected_final(host: &Arc<HostStats>, o: &OutlierDetection) {
        if o.split_external_local_origin_errors {
            Self::local_success(host);
        } else {
            Self::put_status(host, o, 200);
        }
    }

    /// No connection, or the upstream reset the stream (`LocalOriginConnectFailed`).
    pub fn put_connect_failed(host: &Arc<HostStats>, o: &OutlierDetection) {
        if o.split_external_local_origin_errors {
            Self::local_failure(host, o);
        } else {
            Self::put_status(host, o, 503);
        }
    }

    /// No response within the (per-try) timeout (`LocalOriginTimeout`), answered with `code`.
    pub fn put_timeout(host: &Arc<HostStats>, o: &OutlierDetection, code: u16) {
        if o.split_external_local_origin_errors {
            Self::local_failure(host, o);
        } else {
            Self::put_status(host, o, code);
        }
    }

    fn local_failure(host: &Arc<HostStats>, o: &OutlierDetection) {
        let m = &host.outlier;
        m.local.total.fetch_add(1, Relaxed);
        if m.consecutive_local.fetch_add(1, Relaxed) + 1 == o.consecutive_local_origin_failure {
            notify(host, Kind::ConsecutiveLocal);
        }
    }

    fn local_success(host: &Arc<HostStats>) {
        let m = &host.outlier;
        m.local.total.fetch_add(1, Relaxed);
        m.local.success.fetch_add(1, Relaxed);
        m.consecutive_local.store(0, Relaxed);
    }

    /// The success rates `/clusters` shows (-1: none).
    pub fn success_rates(&self) -> (f64, f64) {
        (
            f64::from_bits(self.success_rate.load(Relaxed)),
            f64::from_bits(self.local_success_rate.load(Relaxed)),
        )
    }

    fn reset(&self, kind: Kind) {
        match kind {
            Kind::Consecutive5xx => self.consecutive_5xx.store(0, Relaxed),
            Kind::ConsecutiveGateway => self.consecutive_gateway.store(0, Relaxed),
            Kind::ConsecutiveLocal => self.consecutive_local.store(0, Relaxed),
            _ => {}
        }
    }
}

/// A cluster's success rate average and ejection threshold of the last interval, for
/// `/clusters` (f64 bits; -1: not computed).
#[derive(Debug)]
pub struct Averages {
    values: [AtomicU64; 4],
}

impl Default for Averages {
    fn default() -> Self {
        let none = || AtomicU64::new((-1f64).to_bits());
        Averages {
            values: [none(), none(), none(), none()],
        }
    }
}

impl Averages {
    /// External (average, threshold), then local-origin (average, threshold).
    pub fn get(&self) -> [f64; 4] {
        [0, 1, 2, 3].map(|i| f64::from_bits(self.values[i].load(Relaxed)))
    }

    fn set(&self, local: bool, average: f64, threshold: f64) {
        let i = if local { 2 } else { 0 };
        self.values[i].store(average.to_bits(), Relaxed);
        self.values[i + 1].store(threshold.to_bits(), Relaxed);
    }
}

/// A host's last interval: its success rate and volume, external then local-origin.
type Rates = (SocketAddr, Option<(f64, u64)>, Option<(f64, u64)>);

#[derive(Debug)]
struct HostState {
    stats: Arc<HostStats>,
    ejected: bool,
    last_ejection: Instant,
    last_unejection: Option<Instant>,
    jitter: Duration,
    /// Enforced ejections so far.
    ejections: u32,
    /// Degraded by `detect_degraded_hosts`, since when, and when it last stopped being so.
    degraded: bool,
    last_degraded: Instant,
    last_undegraded: Option<Instant>,
    /// Envoy's degradation backoff: the next degradation lasts `base × backoff`, capped.
    degrade_backoff: u32,
}

/// Envoy's backoff: one more while `base_ejection_time` × backoff is under
/// `max_ejection_time` + `base_ejection_time`.
fn grow(backoff: &mut u32, od: &OutlierDetection) {
    let base = od.base_ejection_time.as_millis() as u64;
    let max = od.max_ejection_time.as_millis() as u64;
    if u64::from(*backoff) * base < max + base {
        *backoff += 1;
    }
}

/// How long an ejection (or degradation) with `backoff` lasts: `base_ejection_time` ×
/// backoff, at most `max_ejection_time`, plus its jitter.
fn lasts(od: &OutlierDetection, backoff: u32, jitter: Duration) -> Duration {
    let base = od.base_ejection_time.as_millis() as u64;
    let max = od.max_ejection_time.as_millis() as u64;
    Duration::from_millis((base * u64::from(backoff)).min(max)) + jitter
}

impl HostState {
    /// A host the detector starts following at `now`.
    fn new(stats: Arc<HostStats>, now: Instant) -> Self {
        HostState {
            stats,
            ejected: false,
            last_ejection: now,
            last_unejection: None,
            jitter: Duration::ZERO,
            ejections: 0,
            degraded: false,
            last_degraded: now,
            last_undegraded: None,
            degrade_backoff: 0,
        }
    }
}

/// `cluster_manager.outlier_detection.event_log_path`: Envoy's JSON line
/// (`envoy.data.cluster.v3.OutlierDetectionEvent`, fields in their numbers' order) per
/// ejection and return.
#[derive(Debug, Clone)]
pub struct EventLog(Arc<std::sync::Mutex<std::fs::File>>);

impl EventLog {
    /// The log at `path` (appended to).
    pub fn open(path: &std::path::Path) -> Option<EventLog> {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Some(EventLog(Arc::new(std::sync::Mutex::new(f)))),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open the outlier detection event log");
                None
            }
        }
    }

    /// A host's return (from an ejection or a degradation): Envoy leaves the event's type
    /// unset, so it reads `CONSECUTIVE_5XX` whatever happened.
    fn returned(&self, cluster: &str, host: SocketAddr, since: Option<Duration>, ejections: u32) {
        self.write(
            Kind::Consecutive5xx,
            since,
            cluster,
            host,
            false,
            ejections,
            false,
            None,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        kind: Kind,
        since: Option<Duration>,
        cluster: &str,
        host: SocketAddr,
        eject: bool,
        ejections: u32,
        enforced: bool,
        detail: Option<String>,
    ) {
        use std::io::Write;
        let ts = crate::access_log::format_time(std::time::SystemTime::now());
        let mut line = format!(
            "{{\"type\":\"{}\",\"timestamp\":\"{ts}\"",
            kind.event_name()
        );
        if let Some(d) = since {
            line.push_str(&format!(",\"secs_since_last_action\":\"{}\"", d.as_secs()));
        }
        line.push_str(&format!(
            ",\"cluster_name\":{},\"upstream_url\":\"{host}\",\"action\":\"{}\",\"num_ejections\":{ejections},\"enforced\":{enforced}",
            serde_json::Value::from(cluster),
            if eject { "EJECT" } else { "UNEJECT" },
        ));
        if let Some(d) = detail {
            line.push(',');
            line.push_str(&d);
        }
        line.push_str("}\n");
        if let Ok(mut f) = self.0.lock() {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// `cluster.<name>.outlier_detection.*`.
#[derive(Debug)]
struct Stats {
    main: Arc<Shard>,
    prefix: String,
    active: Gauge,
    overflow: Counter,
    total: Counter,
    enforced_total: Counter,
    consecutive_5xx: Counter,
    success_rate: Counter,
}

impl Stats {
    fn new(main: &Arc<Shard>, stat_name: &str) -> Self {
        let prefix = format!("cluster.{stat_name}.outlier_detection.");
        let c = |n: &str| main.counter(&format!("{prefix}{n}"));
        for k in [
            Kind::Consecutive5xx,
            Kind::ConsecutiveGateway,
            Kind::ConsecutiveLocal,
            Kind::SuccessRate,
            Kind::LocalSuccessRate,
            Kind::FailurePercentage,
            Kind::LocalFailurePercentage,
        ] {
            c(&format!("ejections_detected_{}", k.stat()));
            c(&format!("ejections_enforced_{}", k.stat()));
        }
        // Envoy 1.40's degraded host detection (refused here: never counts).
        c("ejections_detected_degradation");
        Stats {
            active: main.gauge(&format!("{prefix}ejections_active")),
            overflow: c("ejections_overflow"),
            total: c("ejections_total"),
            enforced_total: c("ejections_enforced_total"),
            consecutive_5xx: c("ejections_consecutive_5xx"),
            success_rate: c("ejections_success_rate"),
            main: main.clone(),
            prefix,
        }
    }

    fn kind(&self, what: &str, kind: Kind) -> Counter {
        self.main
            .counter(&format!("{}ejections_{what}_{}", self.prefix, kind.stat()))
    }
}

#[derive(Debug)]
struct Detector {
    config: Arc<model::Cluster>,
    od: Arc<OutlierDetection>,
    hosts: HashMap<SocketAddr, HostState>,
    /// Envoy's ejection backoff: the next ejection lasts `base × backoff`, capped.
    backoff: HashMap<SocketAddr, u32>,
    averages: Arc<Averages>,
    next_tick: Instant,
    stats: Stats,
    log: Option<EventLog>,
}

/// Every active cluster's outlier detection, on the main thread.
pub struct OutlierDetectors {
    main: Arc<Shard>,
    log: Option<EventLog>,
    detectors: Vec<Detector>,
    rx: Option<mpsc::UnboundedReceiver<Detected>>,
}

impl std::fmt::Debug for OutlierDetectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutlierDetectors")
            .field("clusters", &self.detectors.len())
            .finish()
    }
}

impl OutlierDetectors {
    /// No cluster yet; ejections logged to `log`. Workers' detections reach the first
    /// detectors made in the process.
    pub fn new(main: Arc<Shard>, log: Option<EventLog>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = EVENTS.set(tx).is_ok().then_some(rx);
        OutlierDetectors {
            main,
            log,
            detectors: Vec::new(),
            rx,
        }
    }

    /// The workers' detections, for the main loop. Taken once.
    pub fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<Detected>> {
        self.rx.take()
    }

    /// Follows the clusters in force: a detector per cluster version with outlier detection,
    /// its hosts as the cluster's shared state has them.
    pub fn sync(&mut self, infos: &HashMap<String, Arc<ClusterInfo>>) {
        let now = Instant::now();
        let mut seen = Vec::new();
        for info in infos.values() {
            let Some(od) = &info.config.outlier else {
                continue;
            };
            let i = match self
                .detectors
                .iter()
                .position(|d| Arc::ptr_eq(&d.config, &info.config))
            {
                Some(i) => i,
                None => {
                    self.detectors.push(Detector {
                        config: info.config.clone(),
                        od: od.clone(),
                        hosts: HashMap::new(),
                        backoff: HashMap::new(),
                        averages: info.outlier_averages.clone(),
                        next_tick: now + od.interval,
                        stats: Stats::new(&self.main, info.config.stat_name()),
                        log: self.log.clone(),
                    });
                    self.detectors.len() - 1
                }
            };
            let d = &mut self.detectors[i];
            seen.push(i);
            for (h, s) in info.hosts.iter().zip(&info.host_stats) {
                d.hosts
                    .entry(h.address)
                    .and_modify(|st| st.stats = s.clone())
                    .or_insert_with(|| HostState::new(s.clone(), now));
            }
            let stats = &d.stats;
            d.hosts.retain(|a, st| {
                let keep = info.hosts.iter().any(|h| h.address == *a);
                if !keep && st.ejected {
                    stats.active.dec();
                }
                keep
            });
            d.backoff
                .retain(|a, _| info.hosts.iter().any(|h| h.address == *a));
        }
        let mut i = 0;
        self.detectors.retain(|d| {
            let keep = seen.contains(&i);
            i += 1;
            if !keep {
                for st in d.hosts.values().filter(|st| st.ejected) {
                    let _ = st;
                    d.stats.active.dec();
                }
            }
            keep
        });
    }

    /// `hosts` of `config` with their ejections.
    pub fn apply(
        &self,
        config: &Arc<model::Cluster>,
        mut hosts: Vec<model::Host>,
    ) -> Vec<model::Host> {
        if let Some(d) = self
            .detectors
            .iter()
            .find(|d| Arc::ptr_eq(&d.config, config))
        {
            for h in &mut hosts {
                let st = d.hosts.get(&h.address);
                h.checks.ejected = st.is_some_and(|s| s.ejected);
                h.checks.outlier_degraded = st.is_some_and(|s| s.degraded);
            }
        }
        hosts
    }

    /// A worker's detection: the host may be ejected. True when one was.
    pub fn on_detected(&mut self, ev: Detected) -> bool {
        let now = Instant::now();
        for d in &mut self.detectors {
            let Some(addr) = d
                .hosts
                .iter()
                .find(|(_, s)| Arc::ptr_eq(&s.stats, &ev.host))
                .map(|(a, _)| *a)
            else {
                continue;
            };
            if ev.kind == Kind::Degraded {
                return d.degrade(addr, now);
            }
            if d.hosts.get(&addr).is_some_and(|s| s.ejected) {
                return false;
            }
            d.stats.kind("detected", ev.kind).inc();
            let ejected = d.eject(addr, ev.kind, now, None);
            if ev.kind == Kind::Consecutive5xx {
                d.stats.consecutive_5xx.inc();
            }
            ev.host.outlier.reset(ev.kind);
            return ejected;
        }
        false
    }

    /// An active health check passed on `address` of `config`: with
    /// `successful_active_health_check_uneject_host`, an ejected host comes back.
    pub fn on_check_passed(&mut self, config: &Arc<model::Cluster>, address: SocketAddr) -> bool {
        let now = Instant::now();
        let Some(d) = self
            .detectors
            .iter_mut()
            .find(|d| Arc::ptr_eq(&d.config, config))
        else {
            return false;
        };
        if !d.od.successful_active_health_check_uneject_host {
            return false;
        }
        d.uneject(address, now)
    }

    /// When the next interval ends.
    pub fn next_deadline(&self) -> Option<std::time::Instant> {
        self.detectors.iter().map(|d| d.next_tick.into_std()).min()
    }

    /// Intervals that ended: ejections that are over end, success rates and failure
    /// percentages are judged. True when a host's state changed.
    pub fn on_timer(&mut self) -> bool {
        let now = Instant::now();
        let mut changed = false;
        for d in &mut self.detectors {
            if d.next_tick > now {
                continue;
            }
            changed |= d.tick(now);
            d.next_tick = now + d.od.interval;
        }
        changed
    }
}

impl Detector {
    /// Envoy's `ejectHost`: within `max_ejection_percent` (or the first with
    /// `always_eject_one_host`), by the enforcement draw.
    /// `rates`: the host's success rate, and the cluster's average and threshold (for the
    /// event log of success rate and failure percentage ejections).
    fn eject(
        &mut self,
        addr: SocketAddr,
        kind: Kind,
        now: Instant,
        rates: Option<(f64, f64, f64)>,
    ) -> bool {
        let od = &self.od;
        let active = self.hosts.values().filter(|s| s.ejected).count();
        let max = od.max_ejection_percent.min(100) as f64;
        let percent = 100.0 * (active + 1) as f64 / self.hosts.len().max(1) as f64;
        let mut should = percent <= max;
        if od.always_eject_one_host {
            should |= active == 0;
        }
        if !should {
            self.stats.overflow.inc();
            return false;
        }
        if matches!(kind, Kind::Consecutive5xx | Kind::SuccessRate) {
            self.stats.total.inc();
        }
        let enforce = enforced(kind.enforcing(od));
        if let (Some(log), Some(st)) = (&self.log, self.hosts.get_mut(&addr)) {
            let since = st
                .last_unejection
                .into_iter()
                .chain((st.ejections > 0).then_some(st.last_ejection))
                .max()
                .map(|t| now.duration_since(t));
            if enforce {
                st.ejections += 1;
            }
            let detail = match (kind, rates) {
                (Kind::SuccessRate | Kind::LocalSuccessRate, Some((host, avg, threshold))) => {
                    format!("\"eject_success_rate_event\":{{\"host_success_rate\":{},\"cluster_average_success_rate\":{},\"cluster_success_rate_ejection_threshold\":{}}}", host as u32, avg as u32, threshold as u32)
                }
                (Kind::FailurePercentage | Kind::LocalFailurePercentage, Some((host, _, _))) => {
                    format!(
                        "\"eject_failure_percentage_event\":{{\"host_success_rate\":{}}}",
                        host as u32
                    )
                }
                _ => "\"eject_consecutive_event\":{}".to_string(),
            };
            log.write(
                kind,
                since,
                &self.config.name,
                addr,
                true,
                st.ejections,
                enforce,
                Some(detail),
            );
        } else if enforce {
            if let Some(st) = self.hosts.get_mut(&addr) {
                st.ejections += 1;
            }
        }
        if !enforce {
            return false;
        }
        self.stats.active.inc();
        self.stats.enforced_total.inc();
        self.stats.kind("enforced", kind).inc();
        let jitter_ms = od.max_ejection_time_jitter.as_millis() as u64;
        let Some(st) = self.hosts.get_mut(&addr) else {
            return false;
        };
        st.ejected = true;
        st.last_ejection = now;
        st.jitter = Duration::from_millis(fastrand::u64(..=jitter_ms));
        grow(self.backoff.entry(addr).or_insert(0), od);
        true
    }

    fn uneject(&mut self, addr: SocketAddr, now: Instant) -> bool {
        let Some(st) = self.hosts.get_mut(&addr).filter(|s| s.ejected) else {
            return false;
        };
        st.ejected = false;
        if let Some(log) = &self.log {
            let since = st
                .last_unejection
                .map_or(st.last_ejection, |u| u.max(st.last_ejection));
            log.returned(
                &self.config.name,
                addr,
                Some(now.duration_since(since)),
                st.ejections,
            );
        }
        st.last_unejection = Some(now);
        let m = &st.stats.outlier;
        m.consecutive_5xx.store(0, Relaxed);
        m.consecutive_gateway.store(0, Relaxed);
        m.consecutive_local.store(0, Relaxed);
        self.stats.active.dec();
        true
    }

    /// Envoy's `setHostDegradedMainThread`: degraded for `base × backoff` (capped) plus a
    /// jitter, outside `max_ejection_percent` and the enforcement draws. True when it was not
    /// degraded already.
    fn degrade(&mut self, addr: SocketAddr, now: Instant) -> bool {
        let od = self.od.clone();
        let Some(st) = self.hosts.get_mut(&addr).filter(|s| !s.degraded) else {
            return false;
        };
        self.stats.kind("detected", Kind::Degraded).inc();
        st.degraded = true;
        st.last_degraded = now;
        st.stats.outlier.degraded.store(true, Relaxed);
        let jitter_ms = od.max_ejection_time_jitter.as_millis() as u64;
        st.jitter = Duration::from_millis(fastrand::u64(..=jitter_ms));
        grow(&mut st.degrade_backoff, &od);
        if let Some(log) = &self.log {
            let since = st.last_unejection.map(|t| now.duration_since(t));
            log.write(
                Kind::Degraded,
                since,
                &self.config.name,
                addr,
                true,
                st.ejections,
                true,
                Some("\"eject_consecutive_event\":{}".to_string()),
            );
        }
        true
    }

    /// Envoy's `checkHostForUndegrade`: the degradation is over once its time has passed.
    fn undegrade(&mut self, addr: SocketAddr, now: Instant) -> bool {
        let od = &self.od;
        let Some(st) = self.hosts.get_mut(&addr).filter(|s| s.degraded) else {
            return false;
        };
        if now.duration_since(st.last_degraded) < lasts(od, st.degrade_backoff, st.jitter) {
            return false;
        }
        st.degraded = false;
        st.last_undegraded = Some(now);
        st.stats.outlier.degraded.store(false, Relaxed);
        if let Some(log) = &self.log {
            let since = (st.ejections > 0).then(|| now.duration_since(st.last_ejection));
            log.returned(&self.config.name, addr, since, st.ejections);
        }
        true
    }

    /// Envoy's `onIntervalTimer`.
    fn tick(&mut self, now: Instant) -> bool {
        let od = self.od.clone();
        let mut changed = false;
        let addrs: Vec<SocketAddr> = self.hosts.keys().copied().collect();
        let mut rates: Vec<Rates> = Vec::new();
        for a in &addrs {
            let backoff = self.backoff.get(a).copied().unwrap_or(0);
            let Some(st) = self.hosts.get(a) else {
                continue;
            };
            if st.ejected && now.duration_since(st.last_ejection) >= lasts(&od, backoff, st.jitter)
            {
                changed |= self.uneject(*a, now);
            }
            changed |= self.undegrade(*a, now);
            let Some(st) = self.hosts.get(a) else {
                continue;
            };
            let m = &st.stats.outlier;
            let rate = |(total, success): (u64, u64)| {
                (total > 0).then(|| (success as f64 * 100.0 / total as f64, total))
            };
            rates.push((*a, rate(m.external.take()), rate(m.local.take())));
            m.success_rate.store((-1f64).to_bits(), Relaxed);
            m.local_success_rate.store((-1f64).to_bits(), Relaxed);
        }
        changed |= self.judge(&rates, false, now);
        changed |= self.judge(&rates, true, now);
        for a in &addrs {
            let Some(st) = self.hosts.get(a) else {
                continue;
            };
            if st.ejected {
                continue;
            }
            if st
                .last_unejection
                .is_some_and(|u| now.duration_since(u) >= od.interval)
            {
                if let Some(b) = self.backoff.get_mut(a) {
                    *b = b.saturating_sub(1);
                }
            }
        }
        // The same for degradations.
        for st in self.hosts.values_mut().filter(|s| !s.degraded) {
            if st
                .last_undegraded
                .is_some_and(|u| now.duration_since(u) >= od.interval)
            {
                st.degrade_backoff = st.degrade_backoff.saturating_sub(1);
            }
        }
        changed
    }

    /// Envoy's `processSuccessRateEjections` for external (or local-origin) results.
    fn judge(&mut self, rates: &[Rates], local: bool, now: Instant) -> bool {
        let od = self.od.clone();
        self.averages.set(local, -1.0, -1.0);
        let (sr_min, fp_min) = (
            od.success_rate_minimum_hosts as usize,
            od.failure_percentage_minimum_hosts as usize,
        );
        if self.hosts.len() < sr_min && self.hosts.len() < fp_min {
            return false;
        }
        let (sr_vol, fp_vol) = (
            u64::from(od.success_rate_request_volume),
            u64::from(od.failure_percentage_request_volume),
        );
        let mut sr = Vec::new();
        let mut fp = Vec::new();
        for (a, ext, loc) in rates {
            let Some(st) = self.hosts.get(a).filter(|s| !s.ejected) else {
                continue;
            };
            let Some((rate, volume)) = (if local { *loc } else { *ext }) else {
                continue;
            };
            if volume >= sr_vol.min(fp_vol) {
                let slot = if local {
                    &st.stats.outlier.local_success_rate
                } else {
                    &st.stats.outlier.success_rate
                };
                slot.store(rate.to_bits(), Relaxed);
            }
            if volume >= sr_vol {
                sr.push((*a, rate));
            }
            if volume >= fp_vol {
                fp.push((*a, rate));
            }
        }
        let mut changed = false;
        if !sr.is_empty() && sr.len() >= sr_min {
            let n = sr.len() as f64;
            let mean = sr.iter().map(|(_, r)| r).sum::<f64>() / n;
            let variance = sr.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
            let threshold =
                mean - f64::from(od.success_rate_stdev_factor) / 1000.0 * variance.sqrt();
            self.averages.set(local, mean, threshold);
            let kind = if local {
                Kind::LocalSuccessRate
            } else {
                Kind::SuccessRate
            };
            for (a, r) in &sr {
                if *r < threshold {
                    self.stats.success_rate.inc();
                    self.stats.kind("detected", kind).inc();
                    changed |= self.eject(*a, kind, now, Some((*r, mean, threshold)));
                }
            }
        }
        if !fp.is_empty() && fp.len() >= fp_min {
            let kind = if local {
                Kind::LocalFailurePercentage
            } else {
                Kind::FailurePercentage
            };
            for (a, r) in &fp {
                if 100.0 - r >= f64::from(od.failure_percentage_threshold) {
                    self.stats.kind("detected", kind).inc();
                    // A host the success rate just ejected is not ejected twice.
                    if self.hosts.get(a).is_some_and(|s| s.ejected) {
                        continue;
                    }
                    changed |= self.eject(*a, kind, now, Some((*r, 0.0, 0.0)));
                }
            }
        }
        changed
    }
}

/// Envoy's `featureEnabled` for an enforcement percentage.
fn enforced(percent: u32) -> bool {
    match percent.min(100) {
        0 => false,
        100 => true,
        p => fastrand::u32(..100) < p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            consecutive_gateway_failure: 2,
            consecutive_local_origin_failure: 2,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(1),
            max_ejection_time: Duration::from_secs(10),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 100,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 100,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            split_external_local_origin_errors: false,
            successful_active_health_check_uneject_host: true,
            always_eject_one_host: false,
            detect_degraded_hosts: false,
        }
    }

    #[test]
    fn consecutive_counts_fire_at_their_threshold_and_a_success_resets_them() {
        let h = Arc::new(HostStats::default());
        let o = od();
        for code in [500, 503, 200, 500, 500] {
            Monitor::put_status(&h, &o, code);
        }
        // 503 counted as a gateway failure too; 200 reset both.
        assert_eq!(h.outlier.consecutive_5xx.load(Relaxed), 2);
        assert_eq!(h.outlier.consecutive_gateway.load(Relaxed), 0);
        // Without the split, a connection failure is a 503.
        Monitor::put_connect_failed(&h, &o);
        assert_eq!(h.outlier.consecutive_5xx.load(Relaxed), 3);
        assert_eq!(h.outlier.consecutive_gateway.load(Relaxed), 1);
        assert_eq!(h.outlier.external.take(), (6, 1));
    }

    /// A detector of one host, `10.0.0.1:80`, with `od`.
    fn detector(od: OutlierDetection) -> (Detector, SocketAddr, Arc<HostStats>) {
        let pb = envoy_types::pb::envoy::config::cluster::v3::Cluster {
            name: "c".into(),
            ..Default::default()
        };
        let config = Arc::new(
            crate::config::resource::cluster(&pb, "c", &Default::default()).expect("translates"),
        );
        let main = Arc::new(Shard::with_matcher(None));
        let addr: SocketAddr = "10.0.0.1:80".parse().expect("address");
        let stats = Arc::new(HostStats::default());
        let now = Instant::now();
        let mut d = Detector {
            config,
            od: Arc::new(od.clone()),
            hosts: HashMap::new(),
            backoff: HashMap::new(),
            averages: Arc::default(),
            next_tick: now + od.interval,
            stats: Stats::new(&main, "c"),
            log: None,
        };
        d.hosts.insert(addr, HostState::new(stats.clone(), now));
        (d, addr, stats)
    }

    /// Runs the detector's intervals for `secs` seconds; the seconds at which the host's
    /// degradation ended.
    async fn ticks(d: &mut Detector, addr: SocketAddr, secs: u64) -> Vec<u64> {
        let start = Instant::now();
        let mut ended = Vec::new();
        for _ in 0..secs {
            tokio::time::advance(d.od.interval).await;
            let was = d.hosts[&addr].degraded;
            d.tick(Instant::now());
            if was && !d.hosts[&addr].degraded {
                ended.push(Instant::now().duration_since(start).as_secs());
            }
        }
        ended
    }

    #[tokio::test(start_paused = true)]
    async fn a_degradation_lasts_base_times_its_backoff_and_the_backoff_decays() {
        let mut o = od();
        o.detect_degraded_hosts = true;
        o.base_ejection_time = Duration::from_secs(2);
        let (mut d, addr, stats) = detector(o);
        // The first lasts 2 s, ending at the interval that finds it over.
        assert!(d.degrade(addr, Instant::now()));
        assert!(stats.outlier.degraded.load(Relaxed));
        assert!(!d.degrade(addr, Instant::now()), "already degraded");
        assert_eq!(ticks(&mut d, addr, 2).await, vec![2]);
        assert!(!stats.outlier.degraded.load(Relaxed));
        // Again at once: the backoff is 2, so 4 s.
        assert!(d.degrade(addr, Instant::now()));
        assert_eq!(ticks(&mut d, addr, 5).await, vec![4]);
        // Each interval an interval or more past the return takes one off the backoff (2 → 0
        // here), so the next lasts 2 s again.
        ticks(&mut d, addr, 3).await;
        assert_eq!(d.hosts[&addr].degrade_backoff, 0);
        assert!(d.degrade(addr, Instant::now()));
        assert_eq!(ticks(&mut d, addr, 3).await, vec![2]);
        // Degradations never count as ejections.
        assert_eq!(d.hosts.values().filter(|s| s.ejected).count(), 0);
        assert_eq!(d.stats.active.value(), 0);
    }

    #[test]
    fn degraded_answers_reach_the_main_thread_once_and_count_as_their_code() {
        let h = Arc::new(HostStats::default());
        let mut o = od();
        Monitor::put_status(&h, &o, 500);
        Monitor::put_degraded(&h, &o, 200);
        // Counted as a 200: the 5xx run is over.
        assert_eq!(h.outlier.consecutive_5xx.load(Relaxed), 0);
        assert_eq!(h.outlier.external.take(), (2, 1));
        o.detect_degraded_hosts = true;
        h.outlier.degraded.store(true, Relaxed);
        // Already degraded: nothing to say (no channel is needed for this test either way).
        Monitor::put_degraded(&h, &o, 200);
        assert_eq!(h.outlier.external.take(), (1, 1));
    }

    #[test]
    fn enforcement_draws_follow_the_percentage() {
        assert!(!enforced(0));
        assert!(enforced(100));
        let n = (0..10_000).filter(|_| enforced(30)).count();
        assert!((2_500..3_500).contains(&n), "{n}");
    }
}
