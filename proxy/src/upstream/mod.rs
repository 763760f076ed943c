//! Upstream: clusters, load balancing and connection pools. Each worker has its own
//! [`ClusterManager`]; only the per-host counters shown by `/clusters` are shared.

pub mod circuit_breaker;
pub mod dns;
pub mod hashing;
pub mod health;
pub mod lb;
pub mod orca;
pub mod outlier;
pub mod pool;
pub mod proxy_protocol;
pub mod subset;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::model;
use crate::stats::{Counter, Gauge, Shard};

/// Per-host counters shared by all workers, for `/clusters`.
#[derive(Debug, Default)]
pub struct HostStats {
    /// `cx_total`.
    pub cx_total: AtomicU64,
    /// `cx_active` (as a count up and down).
    pub cx_active: AtomicU64,
    /// `cx_connect_fail`.
    pub cx_connect_fail: AtomicU64,
    /// `rq_total`.
    pub rq_total: AtomicU64,
    /// `rq_active`.
    pub rq_active: AtomicU64,
    /// `rq_success`.
    pub rq_success: AtomicU64,
    /// `rq_error`.
    pub rq_error: AtomicU64,
    /// `rq_timeout`.
    pub rq_timeout: AtomicU64,
    /// Outlier detection's counts.
    pub outlier: outlier::Monitor,
    /// When slow start's clock started for it ([`lb::clock_ms`]; 0: not yet): when a
    /// balancer first saw it healthy, again after active checks brought it back.
    pub healthy_since: AtomicU64,
    /// Its weight from its load reports (client-side weighted round robin).
    pub weight: orca::HostWeight,
}

impl HostStats {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one from an up-and-down count.
    pub fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A cluster's shared (cross-worker) state: the model, the hosts in force and their counters.
/// Immutable: an EDS update makes a new one (keeping the counters of hosts that stay).
#[derive(Debug)]
pub struct ClusterInfo {
    /// The configuration.
    pub config: Arc<model::Cluster>,
    /// The hosts as the workers have them: `load_assignment`'s, or those of the EDS resource in
    /// force, with the changes `update_merge_window` holds back not yet made.
    pub hosts: Vec<model::Host>,
    /// While `update_merge_window` holds changes back: the hosts as they are now (the same
    /// addresses in the same order as `hosts`), which `/clusters` shows.
    pub pending: Option<Vec<model::Host>>,
    /// Per-host counters, in the order of `hosts`.
    pub host_stats: Vec<Arc<HostStats>>,
    /// The circuit breakers' counts, shared by the workers (kept while the configuration is).
    pub breakers: Arc<circuit_breaker::Breakers>,
    /// Outlier detection's success rate average and threshold (kept while the configuration
    /// is).
    pub outlier_averages: Arc<outlier::Averages>,
    /// The main thread's count of the cluster's subsets (as Envoy's main thread counts them).
    pub subsets: Option<subset::MainCount>,
    /// An ORIGINAL_DST cluster's destinations, shared by the workers (kept while the
    /// configuration is).
    pub destinations: Option<Arc<Destinations>>,
}

/// An ORIGINAL_DST cluster's hosts, one per destination a stream was sent to, shared by the
/// workers as Envoy's cluster shares them: their counters, and when a stream last picked each.
/// A destination no stream picked for `cleanup_interval` is forgotten (`/clusters` no longer
/// lists it, and the next stream to it starts a new host with new pools and counters).
#[derive(Debug, Default)]
pub struct Destinations {
    hosts: std::sync::Mutex<HashMap<SocketAddr, Arc<Destination>>>,
}

/// One destination's host, as the workers share it.
#[derive(Debug, Default)]
pub struct Destination {
    /// Its counters.
    pub stats: Arc<HostStats>,
    /// When a stream last picked it ([`lb::clock_ms`]).
    used_ms: AtomicU64,
}

impl Destination {
    fn touch(&self) {
        self.used_ms.store(lb::clock_ms(), Ordering::Relaxed);
    }

    /// Marks it picked now, if a stream picked it within `window`: whether it did.
    fn renew(&self, window: std::time::Duration) -> bool {
        let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let now = lb::clock_ms();
        let fresh = now.saturating_sub(self.used_ms.load(Ordering::Relaxed)) < window;
        if fresh {
            self.used_ms.store(now, Ordering::Relaxed);
        }
        fresh
    }

    /// Whether a stream picked it within `window`.
    pub fn fresh(&self, window: std::time::Duration) -> bool {
        let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        lb::clock_ms().saturating_sub(self.used_ms.load(Ordering::Relaxed)) < window
    }
}

impl Destinations {
    /// The host of `dest` a stream just picked: the one in force, or a new one if none is or
    /// it was forgotten. Forgotten ones are dropped as a new one is made.
    fn pick(&self, dest: SocketAddr, window: std::time::Duration) -> Arc<Destination> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match hosts.get(&dest) {
            Some(d) if d.fresh(window) => d.clone(),
            _ => {
                hosts.retain(|_, d| d.fresh(window));
                let d = Arc::new(Destination::default());
                hosts.insert(dest, d.clone());
                d
            }
        };
        entry.touch();
        entry
    }

    /// The destinations in force, by address.
    pub fn in_force(&self, window: std::time::Duration) -> Vec<(SocketAddr, Arc<Destination>)> {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = hosts
            .iter()
            .filter(|(_, d)| d.fresh(window))
            .map(|(a, d)| (*a, d.clone()))
            .collect();
        out.sort_by_key(|(a, _)| *a);
        out
    }
}

impl ClusterInfo {
    /// Shared state for a configured cluster with its `load_assignment` hosts; breaker gauges
    /// go to `main`.
    pub fn new(config: Arc<model::Cluster>, main: &Shard) -> Self {
        let hosts = config.hosts.clone();
        Self::with_hosts(config, hosts, None, main)
    }

    /// Shared state with these hosts; hosts `previous` had keep their counters, and the
    /// breakers their counts when the configuration is the same.
    pub fn with_hosts(
        config: Arc<model::Cluster>,
        hosts: Vec<model::Host>,
        previous: Option<&ClusterInfo>,
        main: &Shard,
    ) -> Self {
        let (breakers, outlier_averages) = match previous {
            Some(p) if Arc::ptr_eq(&p.config, &config) => {
                (p.breakers.clone(), p.outlier_averages.clone())
            }
            _ => (
                Arc::new(circuit_breaker::Breakers::new(main, &config)),
                Arc::default(),
            ),
        };
        let host_stats = hosts
            .iter()
            .map(|h| {
                previous
                    .and_then(|p| {
                        let i = p.hosts.iter().position(|o| o.address == h.address)?;
                        let stats = p.host_stats[i].clone();
                        if p.hosts[i].checks.failed && !h.checks.failed {
                            // A host active checks bring back starts slow start again, as
                            // Envoy's (its last passed check while failed).
                            stats.healthy_since.store(0, Ordering::Relaxed);
                        }
                        Some(stats)
                    })
                    .unwrap_or_default()
            })
            .collect();
        let subsets = config.subsets.as_ref().map(|sc| {
            subset::MainCount::new(
                sc,
                hosts.iter().map(|h| h.lb_metadata.as_ref()),
                main,
                &format!("cluster.{}.", config.stat_name()),
                previous
                    .filter(|p| Arc::ptr_eq(&p.config, &config))
                    .and_then(|p| p.subsets.as_ref()),
            )
        });
        let destinations = (config.discovery == model::DiscoveryType::OriginalDst).then(|| {
            previous
                .filter(|p| Arc::ptr_eq(&p.config, &config))
                .and_then(|p| p.destinations.clone())
                .unwrap_or_default()
        });
        ClusterInfo {
            config,
            hosts,
            pending: None,
            host_stats,
            breakers,
            outlier_averages,
            subsets,
            destinations,
        }
    }
}

/// `cluster.<name>.*` on one worker.
#[derive(Debug)]
pub struct ClusterStats {
    shard: Arc<Shard>,
    prefix: String,
    /// `upstream_cx_total`.
    pub upstream_cx_total: Counter,
    /// `upstream_cx_active`.
    pub upstream_cx_active: Gauge,
    /// `upstream_cx_http1_total`.
    pub upstream_cx_http1_total: Counter,
    /// `upstream_cx_http2_total`.
    pub upstream_cx_http2_total: Counter,
    /// `upstream_cx_connect_fail`.
    pub upstream_cx_connect_fail: Counter,
    /// `upstream_cx_connect_timeout`.
    pub upstream_cx_connect_timeout: Counter,
    /// `upstream_cx_none_healthy`.
    pub upstream_cx_none_healthy: Counter,
    /// `lb_healthy_panic`: a host picked while too few hosts are healthy (all take traffic).
    pub lb_healthy_panic: Counter,
    /// `upstream_cx_max_requests`: a connection that reached `max_requests_per_connection`.
    pub upstream_cx_max_requests: Counter,
    /// `upstream_cx_idle_timeout`.
    pub upstream_cx_idle_timeout: Counter,
    /// `upstream_cx_max_duration_reached`.
    pub upstream_cx_max_duration_reached: Counter,
    /// `upstream_rq_max_duration_reached`.
    pub upstream_rq_max_duration_reached: Counter,
    /// `upstream_cx_overflow`: a connection the `max_connections` breaker did not allow.
    pub upstream_cx_overflow: Counter,
    /// `upstream_cx_pool_overflow`: a pool the `max_connection_pools` breaker did not allow.
    pub upstream_cx_pool_overflow: Counter,
    /// `upstream_rq_pending_overflow`: a request the `max_pending_requests` breaker refused
    /// (503 UO).
    pub upstream_rq_pending_overflow: Counter,
    /// `upstream_rq_active_overflow`: a request the `max_requests` breaker refused (503 UO).
    pub upstream_rq_active_overflow: Counter,
    /// `upstream_rq_pending_total`: requests that waited for a connection.
    pub upstream_rq_pending_total: Counter,
    /// `upstream_rq_pending_active`.
    pub upstream_rq_pending_active: Gauge,
    /// `upstream_cx_destroy` and its split by side and by request under way.
    pub upstream_cx_destroy: Arc<DestroyCounters>,
    /// `original_dst_host_invalid`: an ORIGINAL_DST header that is not an address.
    pub original_dst_host_invalid: Counter,
    /// `upstream_cx_close_notify`: the upstream announced the close (HTTP/2 GOAWAY).
    pub upstream_cx_close_notify: Counter,
    /// `upstream_cx_rx_bytes_total`.
    pub upstream_cx_rx_bytes_total: Counter,
    /// `upstream_cx_tx_bytes_total`.
    pub upstream_cx_tx_bytes_total: Counter,
    /// `upstream_flow_control_paused_reading_total`: reading from the upstream stopped because
    /// the downstream could not take more (tcp_proxy).
    pub upstream_flow_control_paused_reading_total: Counter,
    /// `upstream_flow_control_resumed_reading_total`: reading from the upstream went on again.
    pub upstream_flow_control_resumed_reading_total: Counter,
    /// `upstream_flow_control_backed_up_total`: an HTTP request could not send more to the
    /// upstream until it read (the client's body then waits).
    pub upstream_flow_control_backed_up_total: Counter,
    /// `upstream_flow_control_drained_total`: sending to the upstream went on again.
    pub upstream_flow_control_drained_total: Counter,
    /// `upstream_rq_total`.
    pub upstream_rq_total: Counter,
    /// `upstream_rq_active`.
    pub upstream_rq_active: Gauge,
    /// `upstream_rq_completed`.
    pub upstream_rq_completed: Counter,
    /// `upstream_rq_timeout`.
    pub upstream_rq_timeout: Counter,
    /// `upstream_rq_rx_reset`.
    pub upstream_rq_rx_reset: Counter,
    /// `upstream_rq_tx_reset`.
    pub upstream_rq_tx_reset: Counter,
    /// `upstream_rq_retry`.
    pub upstream_rq_retry: Counter,
    /// `upstream_rq_retry_success`.
    pub upstream_rq_retry_success: Counter,
    /// `upstream_rq_retry_overflow`: retries the `max_retries` circuit breaker refused.
    pub upstream_rq_retry_overflow: Counter,
    /// `upstream_rq_retry_limit_exceeded`.
    pub upstream_rq_retry_limit_exceeded: Counter,
    /// `upstream_rq_retry_backoff_exponential`.
    pub upstream_rq_retry_backoff_exponential: Counter,
    /// `upstream_rq_retry_backoff_ratelimited`: retries that waited as the response asked.
    pub upstream_rq_retry_backoff_ratelimited: Counter,
    /// `upstream_rq_per_try_timeout`.
    pub upstream_rq_per_try_timeout: Counter,
    /// `upstream_rq_per_try_idle_timeout`.
    pub upstream_rq_per_try_idle_timeout: Counter,
    /// `retry_or_shadow_abandoned`: request bodies too large to keep for a retry.
    pub retry_or_shadow_abandoned: Counter,
    /// `upstream_rq_time`: from the end of the downstream request to the end of the response
    /// (made when first recorded, as Envoy's).
    upstream_rq_time: std::cell::OnceCell<crate::stats::Histogram>,
    /// `upstream_cx_connect_ms`: connecting, TLS included.
    pub upstream_cx_connect_ms: crate::stats::Histogram,
    /// `upstream_cx_length_ms`.
    pub upstream_cx_length_ms: crate::stats::Histogram,
    /// `upstream_rq_per_cx`: requests a connection carried.
    pub upstream_rq_per_cx: crate::stats::Histogram,
    by_code: crate::stats::CodeCounters,
    /// `external.` and `internal.` responses (`x-envoy-internal`).
    by_origin: [Split; 2],
    /// `canary.`: responses of canary hosts.
    canary: Split,
    /// `zone.<node's zone>.<host's zone>.`, by the host's zone.
    zones: RefCell<HashMap<Arc<str>, Rc<Split>>>,
    /// `ssl.*`, for clusters with TLS.
    pub tls: Option<crate::tls::stats::TlsStats>,
}

/// `upstream_cx_destroy`, `_local`, `_remote`, `_with_active_rq`, `_local_with_active_rq`,
/// `_remote_with_active_rq`.
#[derive(Debug)]
pub struct DestroyCounters {
    all: Counter,
    local: Counter,
    remote: Counter,
    with_active_rq: Counter,
    local_with_active_rq: Counter,
    remote_with_active_rq: Counter,
}

impl DestroyCounters {
    /// Counts a connection closed by the upstream (`remote`) or by skiff, with a request under
    /// way or not.
    pub fn count(&self, remote: bool, active: bool) {
        self.all.inc();
        if remote {
            self.remote.inc();
        } else {
            self.local.inc();
        }
        if active {
            self.with_active_rq.inc();
            if remote {
                self.remote_with_active_rq.inc();
            } else {
                self.local_with_active_rq.inc();
            }
        }
    }
}

impl ClusterStats {
    /// A counter of this cluster made when first needed (`http2.keepalive_timeout`), so it
    /// shows only for clusters that can count it, as in Envoy.
    pub fn lazy_counter(&self, name: &str) -> Counter {
        self.shard.counter(&format!("{}{name}", self.prefix))
    }

    /// The zone-aware routing counters (made only when the bootstrap names a local cluster).
    fn zone_counters(&self) -> lb::ZoneCounters {
        let c = |n: &str| self.lazy_counter(n);
        lb::ZoneCounters {
            all_directly: c("lb_zone_routing_all_directly"),
            sampled: c("lb_zone_routing_sampled"),
            cross_zone: c("lb_zone_routing_cross_zone"),
            no_capacity_left: c("lb_zone_no_capacity_left"),
            local_cluster_not_ok: c("lb_local_cluster_not_ok"),
            cluster_too_small: c("lb_zone_cluster_too_small"),
            recalculate: c("lb_recalculate_zone_structures"),
        }
    }

    fn new(shard: Arc<Shard>, name: &str, tls: bool) -> Self {
        let prefix = format!("cluster.{name}.");
        let c = |n: &str| shard.counter(&format!("{prefix}{n}"));
        let g = |n: &str| shard.gauge(&format!("{prefix}{n}"));
        let h = |n: &str| shard.histogram(&format!("{prefix}{n}"));
        ClusterStats {
            upstream_rq_time: std::cell::OnceCell::new(),
            upstream_cx_connect_ms: h("upstream_cx_connect_ms"),
            upstream_cx_length_ms: h("upstream_cx_length_ms"),
            upstream_rq_per_cx: h("upstream_rq_per_cx"),
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_http1_total: c("upstream_cx_http1_total"),
            upstream_cx_http2_total: c("upstream_cx_http2_total"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_cx_overflow: c("upstream_cx_overflow"),
            upstream_cx_pool_overflow: c("upstream_cx_pool_overflow"),
            upstream_cx_max_requests: c("upstream_cx_max_requests"),
            upstream_cx_idle_timeout: c("upstream_cx_idle_timeout"),
            upstream_cx_max_duration_reached: c("upstream_cx_max_duration_reached"),
            upstream_rq_max_duration_reached: c("upstream_rq_max_duration_reached"),
            lb_healthy_panic: c("lb_healthy_panic"),
            upstream_rq_pending_overflow: c("upstream_rq_pending_overflow"),
            upstream_rq_active_overflow: c("upstream_rq_active_overflow"),
            upstream_rq_pending_total: c("upstream_rq_pending_total"),
            upstream_rq_pending_active: g("upstream_rq_pending_active"),
            upstream_cx_destroy: Arc::new(DestroyCounters {
                all: c("upstream_cx_destroy"),
                local: c("upstream_cx_destroy_local"),
                remote: c("upstream_cx_destroy_remote"),
                with_active_rq: c("upstream_cx_destroy_with_active_rq"),
                local_with_active_rq: c("upstream_cx_destroy_local_with_active_rq"),
                remote_with_active_rq: c("upstream_cx_destroy_remote_with_active_rq"),
            }),
            original_dst_host_invalid: c("original_dst_host_invalid"),
            upstream_cx_close_notify: c("upstream_cx_close_notify"),
            upstream_cx_rx_bytes_total: c("upstream_cx_rx_bytes_total"),
            upstream_cx_tx_bytes_total: c("upstream_cx_tx_bytes_total"),
            upstream_flow_control_paused_reading_total: c(
                "upstream_flow_control_paused_reading_total",
            ),
            upstream_flow_control_resumed_reading_total: c(
                "upstream_flow_control_resumed_reading_total",
            ),
            upstream_flow_control_backed_up_total: c("upstream_flow_control_backed_up_total"),
            upstream_flow_control_drained_total: c("upstream_flow_control_drained_total"),
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_rq_completed: c("upstream_rq_completed"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_rx_reset: c("upstream_rq_rx_reset"),
            upstream_rq_tx_reset: c("upstream_rq_tx_reset"),
            upstream_rq_retry: c("upstream_rq_retry"),
            upstream_rq_retry_success: c("upstream_rq_retry_success"),
            upstream_rq_retry_overflow: c("upstream_rq_retry_overflow"),
            upstream_rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            upstream_rq_retry_backoff_exponential: c("upstream_rq_retry_backoff_exponential"),
            upstream_rq_retry_backoff_ratelimited: c("upstream_rq_retry_backoff_ratelimited"),
            upstream_rq_per_try_timeout: c("upstream_rq_per_try_timeout"),
            upstream_rq_per_try_idle_timeout: c("upstream_rq_per_try_idle_timeout"),
            retry_or_shadow_abandoned: c("retry_or_shadow_abandoned"),
            by_code: crate::stats::CodeCounters::new(shard.clone(), prefix.clone()),
            by_origin: ["external.", "internal."]
                .map(|o| Split::new(shard.clone(), format!("{prefix}{o}"))),
            canary: Split::new(shard.clone(), format!("{prefix}canary.")),
            zones: Default::default(),
            tls: tls.then(|| crate::tls::stats::TlsStats::new(shard.clone(), &prefix)),
            shard,
            prefix,
        }
    }

    /// Counts the code of a response dropped for a retry: `retry.upstream_rq_<code>` and
    /// `retry.upstream_rq_<N>xx`, as Envoy charges it.
    pub fn retry_response_code(&self, code: u16) {
        self.shard
            .counter(&format!("{}retry.upstream_rq_{code}", self.prefix))
            .inc();
        self.shard
            .counter(&format!(
                "{}retry.upstream_rq_{}xx",
                self.prefix,
                code / 100
            ))
            .inc();
    }

    /// The cluster's counter `name` (one counted rarely, made when first used).
    pub fn counter(&self, name: &str) -> crate::stats::Counter {
        self.shard.counter(&format!("{}{name}", self.prefix))
    }

    /// Records a response's time: `upstream_rq_time`, and the same under each split the
    /// response falls in (Envoy's `chargeResponseTiming`).
    pub fn response_time(&self, took: std::time::Duration, internal: bool, host: Charged<'_>) {
        self.upstream_rq_time
            .get_or_init(|| {
                self.shard
                    .histogram(&format!("{}upstream_rq_time", self.prefix))
            })
            .record_ms(took);
        self.each_split(internal, host, |s| s.time(took));
    }

    /// Counts a response the router charges (the final one of a request, a local reply for an
    /// upstream's failure, each attempt a hedged request's route timeout ends):
    /// `upstream_rq_completed`, `upstream_rq_<code>` and `upstream_rq_<N>xx`, and the same
    /// under each split the response falls in: `canary.` for a canary host, `internal.` or
    /// `external.` as the request was (`x-envoy-internal`), and `zone.<from>.<to>.` when both
    /// the node and the host have a zone (Envoy's `chargeResponseStat`).
    pub fn response_code(&self, code: u16, internal: bool, host: Charged<'_>) {
        self.upstream_rq_completed.inc();
        self.by_code.count(code);
        self.each_split(internal, host, |s| s.count(code));
    }

    fn each_split(&self, internal: bool, host: Charged<'_>, f: impl Fn(&Split)) {
        if host.canary {
            f(&self.canary);
        }
        f(&self.by_origin[usize::from(internal)]);
        let (Some(from), Some(to)) = (node_zone(), host.zone.filter(|z| !z.is_empty())) else {
            return;
        };
        let split = self.zones.borrow().get(to).cloned();
        let split = split.unwrap_or_else(|| {
            let s = Rc::new(Split::new(
                self.shard.clone(),
                format!("{}zone.{from}.{to}.", self.prefix),
            ));
            self.zones.borrow_mut().insert(Arc::from(to), s.clone());
            s
        });
        f(&split);
    }
}

/// What of the host that answered splits a response's stats.
#[derive(Debug, Clone, Copy, Default)]
pub struct Charged<'a> {
    /// A canary host (its `envoy.lb` metadata, or the response's `x-envoy-upstream-canary`).
    pub canary: bool,
    /// The host's zone.
    pub zone: Option<&'a str>,
}

impl<'a> Charged<'a> {
    /// As `host` is; `canary_header` when its response said `x-envoy-upstream-canary: true`.
    pub fn host(host: &'a Host, canary_header: bool) -> Self {
        Charged {
            canary: canary_header || host.lb_metadata.canary(),
            zone: Some(host.place.zone.as_str()),
        }
    }
}

/// Response stats under one prefix (`canary.`, `internal.`, `zone.a.b.`), each made when first
/// counted.
#[derive(Debug)]
struct Split {
    codes: crate::stats::CodeCounters,
    completed: std::cell::OnceCell<Counter>,
    time: std::cell::OnceCell<crate::stats::Histogram>,
}

impl Split {
    fn new(shard: Arc<Shard>, prefix: String) -> Self {
        Split {
            codes: crate::stats::CodeCounters::new(shard, prefix),
            completed: Default::default(),
            time: Default::default(),
        }
    }

    fn count(&self, code: u16) {
        self.completed
            .get_or_init(|| self.codes.counter("upstream_rq_completed"))
            .inc();
        self.codes.count(code);
    }

    fn time(&self, took: std::time::Duration) {
        self.time
            .get_or_init(|| self.codes.histogram("upstream_rq_time"))
            .record_ms(took);
    }
}

/// The node's zone (`node.locality.zone`, or `--service-zone`), which zone stats start from.
static NODE_ZONE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();

/// Sets the node's zone, once, at start.
pub fn set_node_zone(zone: &str) {
    if !zone.is_empty() {
        let _ = NODE_ZONE.set(Arc::from(zone));
    }
}

fn node_zone() -> Option<&'static str> {
    NODE_ZONE.get().map(|z| &**z)
}

/// A host as one worker sees it.
#[derive(Debug)]
pub struct Host {
    /// Address.
    pub address: SocketAddr,
    /// With more than one address (the endpoint's `additional_addresses`, or a LOGICAL_DNS
    /// answer): all of them, `address` included, in the order its connections try them
    /// (happy eyeballs); empty with one address.
    pub addresses: Arc<[SocketAddr]>,
    /// Whether it may take traffic.
    pub healthy: bool,
    /// `DEGRADED` and `DRAINING` (excluded), from the endpoint's `health_status`.
    pub degraded: (bool, bool),
    /// Its health as one `HealthStatus` (`model::Host::health_status`).
    pub status: u8,
    /// Its cluster weighs hosts by their load reports: its weight is `stats.weight`'s.
    pub client_weighted: bool,
    /// Its locality's priority.
    pub priority: u32,
    /// The endpoint's hostname (a DNS cluster's: the name resolved), for `auto_host_rewrite`.
    pub hostname: Option<Arc<str>>,
    /// `load_balancing_weight`.
    pub weight: u32,
    /// Its locality (index) and that locality's weight.
    pub locality: (u32, Option<u32>),
    /// Its locality's region, zone and sub-zone.
    pub place: Arc<model::Locality>,
    /// The endpoint's `envoy.lb` metadata (`canary`, and what retry host predicates read).
    pub lb_metadata: Arc<model::LbMetadata>,
    /// The endpoint's metadata (`%UPSTREAM_METADATA%`).
    pub metadata: Arc<crate::config::metadata::Metadata>,
    /// This copy serves routes of `priority: HIGH`: its own pools, the cluster's `HIGH`
    /// circuit breakers (Envoy keys its pools by priority).
    pub high: bool,
    /// The endpoint's `envoy.lb` `hash_key`, hashed instead of its address.
    pub hash_key: Option<Arc<str>>,
    /// Shared counters.
    pub stats: Arc<HostStats>,
    /// HTTP/1.1 connections of this worker.
    pub h1: pool::Http1Pool,
    /// HTTP/2 connections of this worker.
    pub h2: pool::Http2Pool,
    /// With upstream PROXY protocol: the downstream connection's (source, destination) this
    /// host's connections announce; its pools serve that downstream connection only.
    pub downstream: Option<(SocketAddr, SocketAddr)>,
    /// With `auto_sni`: the SNI this host's connections send; its pools serve that name only.
    pub sni: Option<rustls_pki_types::ServerName<'static>>,
    /// With original_src: the client address this host's connections come from; its pools
    /// serve that client address only.
    pub source: Option<pool::Source>,
    /// The TLS of its connections (none: plain TCP): the cluster's transport socket, or the
    /// one its `transport_socket_matches` pick for this host.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// `auto_config`: whether the last handshake chose HTTP/2 (unknown before the first).
    pub negotiated_h2: Cell<Option<bool>>,
    /// Istio's `istio.alpn`: the ALPN list its TLS connections offer instead of the
    /// cluster's; its pools serve requests with that list only.
    pub alpn: Option<Arc<[Vec<u8>]>>,
    /// `envoy_internal_address`: its connections go in memory to this internal listener.
    pub internal: Option<Arc<InternalTarget>>,
    /// For an internal listener's host: the filter state its connections hand over (the
    /// objects the stream shares with upstream); its pools serve streams sharing the same.
    pub shared: Option<Arc<crate::config::filter_state::FilterState>>,
}

/// Where a host's connections go when its endpoint is an internal listener.
#[derive(Debug, PartialEq)]
pub struct InternalTarget {
    /// The listener and endpoint id.
    pub address: Arc<model::InternalAddress>,
    /// What `internal_upstream` passes through to the listener's connections.
    pub metadata: Option<Arc<crate::config::metadata::Metadata>>,
}

/// A cluster as one worker sees it.
#[derive(Debug)]
pub struct Cluster {
    /// Shared state.
    pub info: Arc<ClusterInfo>,
    /// The name, shared with stream infos.
    pub name: Arc<str>,
    /// This worker's stats.
    pub stats: ClusterStats,
    /// Hosts.
    pub hosts: Vec<Rc<Host>>,
    lb: lb::Balancer,
    /// `lb_subset_config`: the hosts grouped by their metadata, each group balanced alone.
    subsets: Option<subset::Subsets>,
    /// ORIGINAL_DST: one host per original destination seen, each with its own pools, and
    /// the destination it stands for across workers.
    by_destination: RefCell<HashMap<SocketAddr, DestinationHost>>,
    /// Upstream PROXY protocol and `auto_sni`: one host per (host, downstream source and
    /// destination, SNI), so that no connection carries another downstream connection's header
    /// or another request's server name.
    by_downstream: RefCell<HashMap<VariantKey, Rc<Host>>>,
    /// Picks made ahead for predictive preconnect (hosts' indices), which the next picks take
    /// first, in order (Envoy's stashed picks).
    peeked: RefCell<std::collections::VecDeque<usize>>,
}

thread_local! {
    /// Every host this worker made, for the provision of all its pools (predictive
    /// preconnect); the dropped ones are pruned as the list grows.
    static WORKER_HOSTS: RefCell<Vec<std::rc::Weak<Host>>> = const { RefCell::new(Vec::new()) };
}

/// A host's addresses in the order its connections try them (`happy_eyeballs_config`), or
/// none when it has one.
fn connection_order(cfg: &model::Cluster, h: &model::Host) -> Arc<[SocketAddr]> {
    if h.additional.is_empty() {
        return Arc::from([]);
    }
    let mut all = Vec::with_capacity(h.additional.len() + 1);
    all.push(h.address);
    all.extend_from_slice(&h.additional);
    cfg.happy_eyeballs.sort(&all).into()
}

/// Counts `host`'s pools in this worker's provision.
fn register(host: Rc<Host>) -> Rc<Host> {
    WORKER_HOSTS.with(|hosts| {
        let mut hosts = hosts.borrow_mut();
        if hosts.len() >= 64 && hosts.len().is_power_of_two() {
            hosts.retain(|h| h.strong_count() > 0);
        }
        hosts.push(Rc::downgrade(&host));
    });
    host
}

/// The streams waiting, the streams under way and the room for more of every pool of this
/// worker, HTTP/1.1 and HTTP/2 (Envoy's per-worker cluster manager state).
fn worker_provision() -> (usize, usize, usize) {
    WORKER_HOSTS.with(|hosts| {
        let mut sum = (0, 0, 0);
        for h in hosts.borrow().iter().filter_map(std::rc::Weak::upgrade) {
            for (w, a, u) in [h.h1.provision(), h.h2.provision()] {
                sum = (sum.0 + w, sum.1 + a, sum.2 + u);
            }
        }
        sum
    })
}

/// A worker's host for a destination, and the destination it stands for across workers.
type DestinationHost = (Rc<Host>, Arc<Destination>);

type VariantKey = (
    SocketAddr,
    Option<(SocketAddr, SocketAddr)>,
    Option<Box<str>>,
    Option<pool::Source>,
    Option<Arc<[Vec<u8>]>>,
    bool,
    Option<Box<str>>,
);

/// Above this many ORIGINAL_DST hosts on a worker, hosts no stream uses are dropped.
const MAX_IDLE_DESTINATIONS: usize = 1024;

impl Cluster {
    /// The host for a new stream or connection whose original destination is `dest`: round
    /// robin for STATIC clusters, `dest` itself for ORIGINAL_DST ones unless `dest` is the proxy's
    /// own listener (`own`), which would loop.
    pub fn select_host(
        &self,
        dest: SocketAddr,
        own: impl Fn(SocketAddr) -> bool,
    ) -> Option<Rc<Host>> {
        self.select_host_hashed(dest, own, None, 0, None)
    }

    /// [`Cluster::select_host`] for a request with this hash (RING_HASH and MAGLEV), on the
    /// `attempt`th try of its host selection, with its route's `metadata_match`.
    pub fn select_host_hashed(
        &self,
        dest: SocketAddr,
        own: impl Fn(SocketAddr) -> bool,
        hash: Option<u64>,
        attempt: u32,
        criteria: Option<&model::MatchCriteria>,
    ) -> Option<Rc<Host>> {
        // `upstream_port_override`: the destination's address at another port.
        let dest = match self.config().original_dst_port {
            Some(port) if model::internal_name(&dest).is_none() => SocketAddr::new(dest.ip(), port),
            _ => dest,
        };
        match self.config().discovery {
            model::DiscoveryType::Static
            | model::DiscoveryType::Eds
            | model::DiscoveryType::StrictDns
            | model::DiscoveryType::LogicalDns => self.pick_host(hash, attempt, criteria),
            model::DiscoveryType::OriginalDst if own(dest) => {
                tracing::debug!(%dest, "original destination is this proxy's own listener; refusing");
                None
            }
            // An internal listener's address is no destination to connect to.
            model::DiscoveryType::OriginalDst if model::internal_name(&dest).is_some() => None,
            model::DiscoveryType::OriginalDst => Some(self.destination_host(dest)),
        }
    }

    fn destination_host(&self, dest: SocketAddr) -> Rc<Host> {
        let window = self.config().original_dst_cleanup;
        let mut hosts = self.by_destination.borrow_mut();
        if let Some((h, d)) = hosts.get(&dest) {
            if d.renew(window) {
                return h.clone();
            }
        }
        if hosts.len() >= MAX_IDLE_DESTINATIONS {
            // Only the map holds these: no stream is using them (their idle connections go too).
            hosts.retain(|_, (h, _)| Rc::strong_count(h) > 1);
        }
        // A new host, or a forgotten one's successor (its pools and counters new).
        let shared = match &self.info.destinations {
            Some(d) => d.pick(dest, window),
            None => Arc::default(),
        };
        // Envoy names a destination's host by its cluster and address.
        let hostname = format!("{}{}", self.name, model::address_text(&dest));
        let mut host = Host::new(dest, true, Some(hostname.into()), shared.stats.clone());
        host.tls = self
            .config()
            .tls_for(&model::SocketMatchLabels::default())
            .cloned();
        let host = register(Rc::new(host));
        hosts.insert(dest, (host.clone(), shared));
        host
    }

    /// The host to use for a stream of the downstream connection from `remote` to `local`
    /// for a request to `authority` (none for tcp_proxy): `host` itself, or, with upstream
    /// PROXY protocol or `auto_sni`, its copy for that connection and server name (same address
    /// and counters, pools of its own). Only an `auto_sni` cluster looks at the authority.
    pub fn variant(
        &self,
        host: Rc<Host>,
        downstream: (SocketAddr, SocketAddr),
        authority: Option<&str>,
        shared: Option<Arc<crate::config::filter_state::FilterState>>,
    ) -> Rc<Host> {
        self.variant_from(host, downstream, authority, None, None, false, shared)
    }

    /// [`Cluster::variant`], whose connections come from `source` (original_src) when given:
    /// pooled apart per source, so no connection carries another client's address; and whose
    /// TLS offers `alpn` (Istio's `istio.alpn`) when given, pooled apart per list; and, for an
    /// internal listener's host, whose connections hand over `shared` filter state, pooled
    /// apart per state.
    #[allow(clippy::too_many_arguments)]
    pub fn variant_from(
        &self,
        host: Rc<Host>,
        (remote, local): (SocketAddr, SocketAddr),
        authority: Option<&str>,
        source: Option<pool::Source>,
        alpn: Option<Arc<[Vec<u8>]>>,
        high: bool,
        shared: Option<Arc<crate::config::filter_state::FilterState>>,
    ) -> Rc<Host> {
        let cfg = self.config();
        let downstream = cfg.proxy_protocol.is_some().then_some((remote, local));
        let sni = if cfg.auto_sni && host.tls.is_some() {
            authority.and_then(authority_host)
        } else {
            None
        };
        let alpn = alpn.filter(|_| host.tls.is_some());
        // Only internal_upstream hands filter state over (to internal listeners).
        let shared = shared.filter(|_| host.internal.is_some() && cfg.internal_upstream.is_some());
        if downstream.is_none()
            && sni.is_none()
            && source.is_none()
            && alpn.is_none()
            && !high
            && shared.is_none()
        {
            return host;
        }
        let key = (
            host.address,
            downstream,
            sni.map(Box::from),
            source,
            alpn,
            high,
            shared.as_ref().map(|s| Box::from(s.key())),
        );
        let mut hosts = self.by_downstream.borrow_mut();
        if let Some(h) = hosts.get(&key) {
            return h.clone();
        }
        if hosts.len() >= MAX_IDLE_DESTINATIONS {
            hosts.retain(|_, h| Rc::strong_count(h) > 1);
        }
        let copy = register(Rc::new(Host {
            address: host.address,
            addresses: host.addresses.clone(),
            healthy: host.healthy,
            degraded: host.degraded,
            status: host.status,
            client_weighted: host.client_weighted,
            priority: host.priority,
            hostname: host.hostname.clone(),
            weight: host.weight,
            locality: host.locality,
            place: host.place.clone(),
            lb_metadata: host.lb_metadata.clone(),
            metadata: host.metadata.clone(),
            hash_key: host.hash_key.clone(),
            stats: host.stats.clone(),
            h1: pool::Http1Pool::default(),
            h2: pool::Http2Pool::default(),
            downstream,
            // Checked to be a DNS name by `authority_host`.
            sni: key
                .2
                .as_deref()
                .and_then(|n| rustls_pki_types::ServerName::try_from(n.to_string()).ok()),
            source,
            tls: host.tls.clone(),
            negotiated_h2: Cell::new(None),
            alpn: key.4.clone(),
            high,
            internal: host.internal.clone(),
            shared,
        }));
        hosts.insert(key, copy.clone());
        copy
    }

    /// The next host by the cluster's load balancer (of the subset the criteria name, with
    /// subsets); `None` when there is none to take traffic.
    pub fn pick_host(
        &self,
        hash: Option<u64>,
        attempt: u32,
        criteria: Option<&model::MatchCriteria>,
    ) -> Option<Rc<Host>> {
        if let Some(s) = &self.subsets {
            return s.pick(criteria, hash, attempt);
        }
        // A pick made ahead (predictive preconnect) comes first.
        if let Some(i) = self.peeked.borrow_mut().pop_front() {
            return self.hosts.get(i).cloned();
        }
        let i = self.lb.pick_hashed(&self.hosts, hash, attempt);
        if self.lb.panic() {
            self.stats.lb_healthy_panic.inc();
        }
        self.hosts.get(i?).cloned()
    }

    /// [`Cluster::pick_host`] for a retry whose retry priority gives its own `load` over the
    /// priorities (subsets and original-destination clusters pick as usual).
    pub fn pick_host_with_load(
        &self,
        hash: Option<u64>,
        attempt: u32,
        criteria: Option<&model::MatchCriteria>,
        load: &lb::PriorityLoad,
    ) -> Option<Rc<Host>> {
        if self.subsets.is_some() || self.config().discovery == model::DiscoveryType::OriginalDst {
            return self.pick_host(hash, attempt, criteria);
        }
        let i = self.lb.pick_with_load(&self.hosts, hash, attempt, load);
        if self.lb.panic() {
            self.stats.lb_healthy_panic.inc();
        }
        self.hosts.get(i?).cloned()
    }

    /// The load over the priorities without those in `excluded` (a retry priority's).
    pub fn load_without(&self, excluded: &[u32]) -> Option<lb::PriorityLoad> {
        self.lb.load_without(excluded)
    }

    /// The configuration.
    pub fn config(&self) -> &model::Cluster {
        &self.info.config
    }

    /// This worker's view of a cluster; with `previous` (the same configuration, other hosts)
    /// hosts that stay keep their pools.
    fn new(
        info: Arc<ClusterInfo>,
        shard: &Arc<Shard>,
        previous: Option<&Cluster>,
        local: Option<&lb::LocalView>,
    ) -> Self {
        let cfg = &info.config;
        let hosts: Vec<Rc<Host>> = info
            .hosts
            .iter()
            .zip(&info.host_stats)
            .map(|(h, s)| {
                let internal = h.internal.as_ref().map(|a| {
                    Arc::new(InternalTarget {
                        address: a.clone(),
                        metadata: cfg.internal_upstream.as_ref().and_then(|iu| {
                            crate::listener::internal::passthrough(iu, &h.metadata, &cfg.metadata)
                        }),
                    })
                });
                let kept = previous.and_then(|p| {
                    p.hosts
                        .iter()
                        .find(|o| {
                            o.address == h.address
                                && *o.addresses == *connection_order(cfg, h)
                                && o.healthy == h.usable()
                                && o.status == h.health_status()
                                && o.hostname == h.hostname
                                && o.weight == h.weight
                                && o.degraded == (h.degraded_now(), h.excluded_now())
                                && o.priority == h.priority
                                && o.locality == (h.locality, h.locality_weight)
                                && o.place == h.place
                                && o.lb_metadata == h.lb_metadata
                                && o.metadata == h.metadata
                                && o.hash_key == hash_key(cfg, h)
                                && Arc::ptr_eq(&o.stats, s)
                                && same_tls(o.tls.as_ref(), cfg.tls_for(&h.socket_match))
                                && o.internal == internal
                        })
                        .cloned()
                });
                kept.unwrap_or_else(|| {
                    let mut host = Host::new(h.address, h.usable(), h.hostname.clone(), s.clone());
                    host.weight = h.weight;
                    host.addresses = connection_order(cfg, h);
                    host.locality = (h.locality, h.locality_weight);
                    host.place = h.place.clone();
                    host.lb_metadata = h.lb_metadata.clone();
                    host.metadata = h.metadata.clone();
                    host.hash_key = hash_key(cfg, h);
                    host.degraded = (h.degraded_now(), h.excluded_now());
                    host.status = h.health_status();
                    host.client_weighted = cfg.client_side_weights.is_some();
                    host.priority = h.priority;
                    host.tls = cfg.tls_for(&h.socket_match).cloned();
                    host.internal = internal;
                    // auto_host_sni: the host's own name (an address sends none).
                    if host.tls.as_ref().is_some_and(|t| t.auto_host_sni) {
                        host.sni = host.hostname.as_deref().and_then(|n| {
                            rustls_pki_types::ServerName::try_from(n.to_string()).ok()
                        });
                    }
                    register(Rc::new(host))
                })
            })
            .collect();
        if let Some(p) = previous {
            // close_connections_on_host_set_change: when hosts came or went, the kept ones'
            // connections are drained too.
            let set_changed = cfg.close_connections_on_host_set_change
                && (p.hosts.len() != hosts.len()
                    || p.hosts
                        .iter()
                        .any(|o| !hosts.iter().any(|n| n.address == o.address)));
            for h in &p.hosts {
                if set_changed {
                    h.h1.drain();
                    h.h2.clear();
                } else if !hosts.iter().any(|n| Rc::ptr_eq(n, h)) {
                    h.h1.clear();
                    h.h2.clear();
                }
            }
        }
        let stats = ClusterStats::new(shard.clone(), cfg.stat_name(), cfg.any_tls());
        let zone = local.map(|view| lb::Zone {
            view,
            config: cfg.zone_aware,
            counters: stats.zone_counters(),
        });
        let extras = lb::Extras {
            slow_start: cfg.slow_start.clone(),
            balance_factor: cfg.consistent_hashing.balance_factor,
        };
        // A subset weighs localities only with `locality_weight_aware` (Envoy's subsets have
        // no locality weights otherwise).
        let locality_weighted =
            cfg.locality_weighted && cfg.subsets.as_ref().is_none_or(|s| s.locality_weight_aware);
        let build = |group: &[Rc<Host>], weights: Option<&[Option<u32>]>| match weights {
            None => lb::Balancer::new_zoned(
                cfg.lb.clone(),
                cfg.panic_threshold,
                group,
                locality_weighted,
                cfg.zone_aware.fail_traffic_on_panic,
                zone.as_ref(),
            )
            .with_extras(group, &extras),
            Some(weights) => {
                let group: Vec<lb::Reweighted<'_, Rc<Host>>> = group
                    .iter()
                    .zip(weights)
                    .map(|(host, w)| lb::Reweighted {
                        host,
                        locality_weight: *w,
                    })
                    .collect();
                lb::Balancer::new_zoned(
                    cfg.lb.clone(),
                    cfg.panic_threshold,
                    &group,
                    locality_weighted,
                    cfg.zone_aware.fail_traffic_on_panic,
                    zone.as_ref(),
                )
                .with_extras(&group, &extras)
            }
        };
        let subsets = cfg.subsets.as_ref().map(|sc| {
            let metadata: Vec<Arc<model::LbMetadata>> =
                info.hosts.iter().map(|h| h.lb_metadata.clone()).collect();
            subset::Subsets::build(
                sc,
                &hosts,
                &metadata,
                build,
                shard,
                &stats.prefix,
                previous.and_then(|p| p.subsets.as_ref()),
            )
        });
        // With subsets, the whole cluster's balancer takes no picks.
        let lb = if subsets.is_some() {
            build(&[], None)
        } else {
            build(&hosts, None)
        };
        Cluster {
            name: Arc::from(cfg.name.as_str()),
            lb,
            subsets,
            stats,
            hosts,
            by_destination: RefCell::new(HashMap::new()),
            by_downstream: RefCell::new(HashMap::new()),
            peeked: RefCell::default(),
            info,
        }
    }

    /// `preconnect_policy.predictive_preconnect_ratio` (Envoy's `maybePreconnect`), before a
    /// new stream: while the pools of this worker (of every cluster, as Envoy sums them),
    /// counting the stream about to come, carry less than the ratio times their streams, a connection is made ahead on the
    /// host the balancer will pick next (that pick is kept for the next request), up to three.
    pub fn predict(self: &Rc<Self>) {
        let Some(ratio) = self.config().predictive_ratio else {
            return;
        };
        let short = |(waiting, active, unused): (usize, usize, usize)| {
            (waiting + active + 1) as f64 * ratio > (unused + active) as f64
        };
        for _ in 0..3 {
            if !short(worker_provision()) {
                return;
            }
            let Some(host) = self.peek_host() else {
                return;
            };
            // The host's own pool judges again, with the stream about to come.
            if !short(self.provision_of(&host)) {
                return;
            }
            let made = match self.config().protocol {
                model::UpstreamProtocol::Http2 => host.h2.connect_ahead(self, &host),
                _ => host.h1.connect_ahead(self, &host),
            };
            if !made {
                return;
            }
        }
    }

    /// A host's pool's streams waiting, under way, and the streams its connections have room
    /// for (an HTTP/1.1 connection has room for one).
    fn provision_of(&self, host: &Host) -> (usize, usize, usize) {
        match self.config().protocol {
            model::UpstreamProtocol::Http2 => host.h2.provision(),
            _ => host.h1.provision(),
        }
    }

    /// The host the balancer picks next, picked now and kept for the next pick; none when the
    /// policy cannot pick ahead (hashing, unweighted least request, subsets, original
    /// destinations) or as many picks as healthy hosts are kept already (Envoy's limit).
    fn peek_host(&self) -> Option<Rc<Host>> {
        if self.subsets.is_some() || !self.lb.peekable() {
            return None;
        }
        let healthy = self.hosts.iter().filter(|h| h.healthy).count();
        let mut peeked = self.peeked.borrow_mut();
        if peeked.len() >= healthy {
            return None;
        }
        let i = self.lb.pick(&self.hosts)?;
        peeked.push_back(i);
        self.hosts.get(i).cloned()
    }

    /// Closes this cluster's idle pooled connections and stops new streams on HTTP/2 ones.
    fn close_idle(&self) {
        let (dest, down) = (self.by_destination.borrow(), self.by_downstream.borrow());
        for h in self
            .hosts
            .iter()
            .chain(dest.values().map(|(h, _)| h))
            .chain(down.values())
        {
            h.h1.clear();
            h.h2.clear();
        }
    }
}

impl Host {
    fn new(
        address: SocketAddr,
        healthy: bool,
        hostname: Option<Arc<str>>,
        stats: Arc<HostStats>,
    ) -> Self {
        Host {
            address,
            addresses: Arc::from([]),
            healthy,
            hostname,
            weight: 1,
            locality: (0, None),
            place: Arc::default(),
            lb_metadata: Arc::default(),
            metadata: Arc::default(),
            hash_key: None,
            degraded: (false, false),
            status: 0,
            client_weighted: false,
            priority: 0,
            stats,
            h1: pool::Http1Pool::default(),
            h2: pool::Http2Pool::default(),
            downstream: None,
            sni: None,
            source: None,
            tls: None,
            negotiated_h2: Cell::new(None),
            alpn: None,
            high: false,
            internal: None,
            shared: None,
        }
    }
}

/// What RING_HASH and MAGLEV hash for a host: its `envoy.lb` `hash_key`, else with
/// `use_hostname_for_hashing` its hostname (empty without one, as Envoy's), else its address.
fn hash_key(cfg: &model::Cluster, h: &model::Host) -> Option<Arc<str>> {
    match &h.hash_key {
        Some(k) => Some(k.clone()),
        None if cfg.consistent_hashing.use_hostname => {
            Some(h.hostname.clone().unwrap_or_else(|| Arc::from("")))
        }
        None => None,
    }
}

/// Whether two hosts connect with the same TLS (the same settings object, or none).
fn same_tls(
    a: Option<&Arc<crate::tls::UpstreamTls>>,
    b: Option<&Arc<crate::tls::UpstreamTls>>,
) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl lb::Candidate for Rc<Host> {
    fn healthy(&self) -> bool {
        self.healthy
    }
    fn weight(&self) -> u32 {
        if self.client_weighted {
            self.stats.weight.applied()
        } else {
            self.weight
        }
    }
    fn active_requests(&self) -> u64 {
        self.stats.rq_active.load(Ordering::Relaxed)
    }
    fn locality(&self) -> u32 {
        self.locality.0
    }
    fn degraded(&self) -> bool {
        self.degraded.0
    }
    fn excluded(&self) -> bool {
        self.degraded.1
    }
    fn priority(&self) -> u32 {
        self.priority
    }
    fn locality_weight(&self) -> Option<u32> {
        self.locality.1
    }
    fn hash_key(&self) -> String {
        match &self.hash_key {
            Some(k) => k.to_string(),
            None => self.address.to_string(),
        }
    }
    fn place(&self) -> &model::Locality {
        &self.place
    }
    fn start_clock(&self, now: u64) -> Option<u64> {
        let c = &self.stats.healthy_since;
        Some(
            match c.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => now,
                Err(since) => since,
            },
        )
    }
    fn healthy_since(&self) -> Option<u64> {
        Some(self.stats.healthy_since.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }
}

/// The local cluster's hosts as zone-aware routing counts them.
impl lb::Candidate for model::Host {
    fn healthy(&self) -> bool {
        self.usable()
    }
    fn weight(&self) -> u32 {
        self.weight
    }
    fn active_requests(&self) -> u64 {
        0
    }
    fn degraded(&self) -> bool {
        self.degraded_now()
    }
    fn excluded(&self) -> bool {
        self.excluded_now()
    }
    fn priority(&self) -> u32 {
        self.priority
    }
    fn place(&self) -> &model::Locality {
        &self.place
    }
}

/// One worker's clusters, swapped as a whole when the configuration changes; a stream keeps
/// the cluster it started with.
#[derive(Debug, Default)]
pub struct ClusterManager {
    clusters: RefCell<HashMap<String, Rc<Cluster>>>,
    /// `cluster_manager.local_cluster_name` and the node's locality: zone-aware routing.
    zone: Option<LocalZone>,
    /// The local cluster's shared state the clusters were last built against.
    local: RefCell<Option<Arc<ClusterInfo>>>,
}

/// What zone-aware routing needs from the bootstrap.
#[derive(Debug, Clone)]
pub struct LocalZone {
    /// `cluster_manager.local_cluster_name`.
    pub cluster: String,
    /// `node.locality` (with `--service-zone`), if the node has one.
    pub mine: Option<model::Locality>,
}

impl ClusterManager {
    /// Puts `infos` in force on this worker. A cluster whose shared state did not change is
    /// kept as it is, pools and all; a changed one is built again, keeping the pools of hosts
    /// that stay when only its hosts changed; a removed one closes its idle connections
    /// (streams that still use it finish on theirs).
    pub fn update(&self, infos: &HashMap<String, Arc<ClusterInfo>>, shard: &Arc<Shard>) {
        let mut old = std::mem::take(&mut *self.clusters.borrow_mut());
        let mut next = HashMap::with_capacity(infos.len());
        // With a local cluster, every cluster routes by comparing its localities with the
        // local cluster's: a change there rebuilds them all (keeping their pools).
        let local = self
            .zone
            .as_ref()
            .and_then(|z| infos.get(&z.cluster).cloned());
        let local_changed = {
            let mut last = self.local.borrow_mut();
            let changed = match (&*last, &local) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                (None, None) => false,
                _ => true,
            };
            *last = local.clone();
            changed
        };
        let view = self.zone.as_ref().map(|z| {
            let hosts = local.as_ref().map_or(&[][..], |l| &l.hosts[..]);
            lb::LocalView::new(z.mine.clone(), hosts)
        });
        for (name, info) in infos {
            let prev = old.remove(name);
            let c = match prev {
                Some(c) if Arc::ptr_eq(&c.info, info) && !local_changed => c,
                prev => {
                    let same_config = prev
                        .as_ref()
                        .is_some_and(|p| Arc::ptr_eq(&p.info.config, &info.config));
                    let c = Rc::new(Cluster::new(
                        info.clone(),
                        shard,
                        prev.as_deref().filter(|_| same_config),
                        view.as_ref(),
                    ));
                    if let Some(p) = prev {
                        if !same_config {
                            p.close_idle();
                        }
                    }
                    c
                }
            };
            next.insert(name.clone(), c);
        }
        for gone in old.values() {
            gone.close_idle();
        }
        *self.clusters.borrow_mut() = next;
    }

    /// A worker's clusters, routing by zone against `zone`'s local cluster when given.
    pub fn new(zone: Option<LocalZone>) -> Self {
        ClusterManager {
            zone,
            ..Self::default()
        }
    }

    /// A cluster by name.
    pub fn get(&self, name: &str) -> Option<Rc<Cluster>> {
        self.clusters.borrow().get(name).cloned()
    }

    /// Closes idle pooled connections and stops new streams on HTTP/2 ones (drain).
    pub fn close_idle(&self) {
        for c in self.clusters.borrow().values() {
            c.close_idle();
        }
    }
}

/// The host part of an authority (without its port), when it is a name that can be an SNI
/// (an address is not).
fn authority_host(authority: &str) -> Option<&str> {
    if authority.starts_with('[') {
        return None; // an IPv6 literal
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            authority
        }
    });
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    rustls_pki_types::DnsName::try_from(host).ok().map(|_| host)
}

#[cfg(test)]
mod authority_tests {
    use super::authority_host;

    #[test]
    fn the_sni_of_an_authority_is_its_name_without_port() {
        assert_eq!(authority_host("api.example.com"), Some("api.example.com"));
        assert_eq!(
            authority_host("api.example.com:8443"),
            Some("api.example.com")
        );
        assert_eq!(authority_host("10.0.0.1:80"), None);
        assert_eq!(authority_host("[fd00::1]:443"), None);
        assert_eq!(authority_host(""), None);
        assert_eq!(authority_host("bad name"), None);
    }
}

#[cfg(test)]
mod destination_tests {
    use super::Destinations;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_destination_no_stream_picks_for_the_cleanup_interval_is_forgotten() {
        let d = Destinations::default();
        let window = Duration::from_secs(5);
        let a = "10.0.0.1:80".parse().expect("address");
        let first = d.pick(a, window);
        super::HostStats::inc(&first.stats.cx_total);
        tokio::time::advance(Duration::from_secs(4)).await;
        // Picked within the interval: the same host, and its clock starts again.
        assert!(std::sync::Arc::ptr_eq(&first, &d.pick(a, window)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(d.in_force(window).len(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(d.in_force(window).is_empty(), "listed no more");
        // A new host, its counters new.
        let next = d.pick(a, window);
        assert!(!std::sync::Arc::ptr_eq(&first, &next));
        assert_eq!(
            next.stats
                .cx_total
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
