//! Load balancers, one per cluster and worker, as Envoy's: round robin (weighted: an earliest
//! deadline first schedule), least request (power of `choice_count` choices; weighted: EDF on
//! weight / (active + 1)^bias) and random; and the healthy panic threshold, below which
//! every host takes traffic whatever its health.

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};

use super::hashing;
use crate::config::model::{LbPolicy, Locality, SlowStart, ZoneAware};
use crate::stats::Counter;

/// Envoy's default overprovisioning factor (1.4), in percent.
const OVERPROVISIONING: u64 = 140;

#[derive(Debug, Clone, Copy)]
struct Entry {
    deadline: f64,
    order: u64,
    index: usize,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.deadline
            .total_cmp(&other.deadline)
            .then(self.order.cmp(&other.order))
    }
}

/// Envoy's EDF scheduler: each entry is due 1/weight after its last pick; the earliest due
/// (first added on a tie) is picked next.
#[derive(Debug, Default)]
pub struct Edf {
    heap: BinaryHeap<Reverse<Entry>>,
    now: f64,
    order: u64,
}

impl Edf {
    /// A schedule of `indices` with their weights.
    pub fn new(indices: impl IntoIterator<Item = (usize, f64)>) -> Self {
        let mut e = Edf::default();
        for (index, w) in indices {
            e.add(index, w);
        }
        e
    }

    fn add(&mut self, index: usize, weight: f64) {
        let weight = if weight > 0.0 {
            weight
        } else {
            f64::MIN_POSITIVE
        };
        self.heap.push(Reverse(Entry {
            deadline: self.now + 1.0 / weight,
            order: self.order,
            index,
        }));
        self.order += 1;
    }

    /// The next index; it goes back in with the weight `weight` gives it now.
    pub fn pick(&mut self, weight: impl Fn(usize) -> f64) -> Option<usize> {
        let Reverse(e) = self.heap.pop()?;
        self.now = e.deadline;
        self.add(e.index, weight(e.index));
        Some(e.index)
    }
}

/// A host seen with another locality weight (a subset's, scaled by its share of the
/// locality's hosts).
#[derive(Debug)]
pub struct Reweighted<'a, H> {
    /// The host.
    pub host: &'a H,
    /// Its locality's weight in the subset.
    pub locality_weight: Option<u32>,
}

impl<H: Candidate> Candidate for Reweighted<'_, H> {
    fn healthy(&self) -> bool {
        self.host.healthy()
    }
    fn weight(&self) -> u32 {
        self.host.weight()
    }
    fn active_requests(&self) -> u64 {
        self.host.active_requests()
    }
    fn locality(&self) -> u32 {
        self.host.locality()
    }
    fn degraded(&self) -> bool {
        self.host.degraded()
    }
    fn excluded(&self) -> bool {
        self.host.excluded()
    }
    fn priority(&self) -> u32 {
        self.host.priority()
    }
    fn locality_weight(&self) -> Option<u32> {
        self.locality_weight
    }
    fn hash_key(&self) -> String {
        self.host.hash_key()
    }
    fn place(&self) -> &Locality {
        self.host.place()
    }
    fn start_clock(&self, now: u64) -> Option<u64> {
        self.host.start_clock(now)
    }
    fn healthy_since(&self) -> Option<u64> {
        self.host.healthy_since()
    }
}

/// What the balancer knows of a host.
pub trait Candidate {
    /// Whether it may take traffic.
    fn healthy(&self) -> bool;
    /// `load_balancing_weight`.
    fn weight(&self) -> u32;
    /// Requests under way on it (all workers).
    fn active_requests(&self) -> u64;
    /// Its locality (an index).
    fn locality(&self) -> u32 {
        0
    }
    /// `DEGRADED`: it takes the share of traffic the healthy hosts cannot.
    fn degraded(&self) -> bool {
        false
    }
    /// Excluded (`DRAINING`): left out of the health computation.
    fn excluded(&self) -> bool {
        false
    }
    /// Its priority (0 first).
    fn priority(&self) -> u32 {
        0
    }
    /// Its locality's weight, if the locality has one.
    fn locality_weight(&self) -> Option<u32> {
        None
    }
    /// What RING_HASH and MAGLEV hash for it.
    fn hash_key(&self) -> String {
        String::new()
    }
    /// Its locality's region, zone and sub-zone.
    fn place(&self) -> &Locality {
        &NOWHERE
    }
    /// Starts its slow-start clock at `now` (on [`clock_ms`]) unless it runs already; returns
    /// when it started (Envoy's `lastHcPassTime`), `None` for a host without one.
    fn start_clock(&self, now: u64) -> Option<u64> {
        let _ = now;
        None
    }
    /// When its slow-start clock started, if it did.
    fn healthy_since(&self) -> Option<u64> {
        None
    }
}

/// Milliseconds on the balancers' clock (tokio's, so tests can pause it), from 1: 0 stands
/// for "not started".
pub fn clock_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// Slow start over a balancer's hosts (Envoy's `EdfLoadBalancerBase`): while some host's
/// clock is within the window, a host's weight is scaled by max(min, (t / window)^(1 /
/// aggression)).
#[derive(Debug, Clone)]
struct Ramp {
    window_ms: u64,
    aggression: f64,
    min_weight: f64,
    /// The latest clock start among the hosts (Envoy's `latest_host_added_time_`).
    latest: u64,
}

impl Ramp {
    /// Whether any host may still be in slow start (Envoy's `!noHostsAreInSlowStart()`).
    fn active(&self, now: u64) -> bool {
        now.saturating_sub(self.latest) <= self.window_ms
    }

    /// The factor of a host's weight at `now` (Envoy's `applySlowStartFactor`): only healthy
    /// (not degraded) hosts whose clock started less than a window ago are scaled.
    fn factor<H: Candidate>(&self, h: &H, now: u64) -> f64 {
        if !h.healthy() || h.degraded() {
            return 1.0;
        }
        let Some(since) = h.healthy_since() else {
            return 1.0;
        };
        let t = now.saturating_sub(since);
        if t >= self.window_ms {
            return 1.0;
        }
        let time = t.max(1) as f64 / self.window_ms as f64;
        let ramp = if self.aggression == 1.0 {
            time
        } else {
            time.powf(1.0 / self.aggression)
        };
        ramp.max(self.min_weight)
    }
}

/// Bounded loads (`hash_balance_factor`): a hashed host takes a request only while its
/// requests under way are at most its share (by weight, among the candidates) of the
/// cluster's, times the factor; otherwise hosts are tried in an order the hash seeds.
#[derive(Debug, Clone)]
struct Bounded {
    /// The factor in percent (at least 100).
    factor: u64,
    /// Each candidate's normalized weight, in the order of the candidates.
    shares: Vec<f64>,
}

/// The cluster-wide options a balancer is built with, beyond its policy.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// `slow_start_config` (ROUND_ROBIN and LEAST_REQUEST).
    pub slow_start: Option<SlowStart>,
    /// `hash_balance_factor` (RING_HASH and MAGLEV), 0 for none.
    pub balance_factor: u32,
}

/// The locality of a host that has none.
static NOWHERE: Locality = Locality {
    region: String::new(),
    zone: String::new(),
    sub_zone: String::new(),
};

/// What zone-aware routing knows of the local cluster (this proxy's peers): Envoy's view of
/// its priority 0, against this proxy's own locality.
#[derive(Debug, Default)]
pub struct LocalView {
    /// The node's locality (`node.locality`, `--service-zone`), if it has one.
    mine: Option<Locality>,
    /// How many localities its hosts are in.
    localities: usize,
    /// Whether some host is in this proxy's locality.
    has_mine: bool,
    /// Per locality: its healthy hosts' number and weight.
    healthy: BTreeMap<Locality, (u64, u64)>,
    /// Over all localities.
    total: (u64, u64),
    /// The share of its (non-excluded) hosts that are healthy or degraded, in percent.
    share: f64,
}

impl LocalView {
    /// The view of the local cluster's `hosts` from a proxy in `mine`.
    pub fn new<H: Candidate>(mine: Option<Locality>, hosts: &[H]) -> Self {
        let p0: Vec<&H> = hosts.iter().filter(|h| h.priority() == 0).collect();
        let mut places: Vec<&Locality> = p0.iter().map(|h| h.place()).collect();
        places.sort_unstable();
        places.dedup();
        let has_mine = mine.as_ref().is_some_and(|m| places.contains(&m));
        let mut healthy: BTreeMap<Locality, (u64, u64)> = BTreeMap::new();
        let mut total = (0, 0);
        for h in p0.iter().filter(|h| usable(**h)) {
            let e = healthy.entry(h.place().clone()).or_default();
            e.0 += 1;
            e.1 += u64::from(h.weight());
            total.0 += 1;
            total.1 += u64::from(h.weight());
        }
        let eligible = p0.iter().filter(|h| !h.excluded()).count();
        let up = p0.iter().filter(|h| !h.excluded() && h.healthy()).count();
        let share = if eligible == 0 {
            0.0
        } else {
            100.0 * up as f64 / eligible as f64
        };
        LocalView {
            localities: places.len(),
            mine,
            has_mine,
            healthy,
            total,
            share,
        }
    }
}

/// Healthy and neither degraded nor excluded.
fn usable<H: Candidate>(h: &H) -> bool {
    h.healthy() && !h.degraded() && !h.excluded()
}

/// `cluster.<name>.lb_zone_*`, `lb_local_cluster_not_ok` and
/// `lb_recalculate_zone_structures`.
#[derive(Debug, Clone, Default)]
pub struct ZoneCounters {
    /// `lb_zone_routing_all_directly`.
    pub all_directly: Counter,
    /// `lb_zone_routing_sampled`.
    pub sampled: Counter,
    /// `lb_zone_routing_cross_zone`.
    pub cross_zone: Counter,
    /// `lb_zone_no_capacity_left`.
    pub no_capacity_left: Counter,
    /// `lb_local_cluster_not_ok`.
    pub local_cluster_not_ok: Counter,
    /// `lb_zone_cluster_too_small`.
    pub cluster_too_small: Counter,
    /// `lb_recalculate_zone_structures`.
    pub recalculate: Counter,
}

/// Zone-aware routing for one cluster: the local cluster's view, the cluster's settings and
/// its counters.
#[derive(Debug)]
pub struct Zone<'a> {
    /// The local cluster.
    pub view: &'a LocalView,
    /// `zone_aware_lb_config`.
    pub config: ZoneAware,
    /// Where its decisions are counted.
    pub counters: ZoneCounters,
}

/// Envoy's locality routing state of priority 0.
#[derive(Debug)]
struct ZoneRouting {
    /// Every pick to this proxy's locality (LocalityDirect).
    direct: bool,
    /// LocalityResidual: of 10000 picks, how many stay in this proxy's locality.
    local_percent: u64,
    /// LocalityResidual: the other localities' spare capacity, accumulated.
    residual: Vec<u64>,
    /// A balancer per locality (this proxy's first, if the cluster has hosts there).
    groups: Vec<Balancer>,
    routing_enabled: u64,
    /// The local cluster is in panic: no zone routing (or no host, with
    /// `fail_traffic_on_panic`).
    local_panic: bool,
    fail_on_panic: bool,
    counters: ZoneCounters,
}

impl ZoneRouting {
    /// Envoy's `regenerateLocalityRoutingStructures` over the priority-0 hosts `all`, with
    /// `members` (the healthy or the degraded ones) grouped by locality; `None` where Envoy
    /// routes without localities.
    fn build<H: Candidate>(
        zone: &Zone<'_>,
        policy: &LbPolicy,
        panic_threshold: f64,
        hosts: &[H],
        all: &[usize],
        members: &[usize],
    ) -> Option<Self> {
        let c = &zone.counters;
        c.recalculate.inc();
        let view = zone.view;
        let mut places: Vec<&Locality> = all.iter().map(|&i| hosts[i].place()).collect();
        places.sort_unstable();
        places.dedup();
        let mine = view.mine.as_ref();
        if let Some(m) = mine.and_then(|m| places.iter().position(|p| *p == m)) {
            let m = places.remove(m);
            places.insert(0, m);
        }
        let has_local = mine.is_some_and(|m| places.first() == Some(&m));
        if places.len() < 2 {
            return None;
        }
        let config = zone.config;
        if view.localities < 2 && config.force_local_zone.is_none() {
            return None;
        }
        if !view.has_mine {
            c.local_cluster_not_ok.inc();
            return None;
        }
        let healthy: Vec<usize> = all.iter().copied().filter(|&i| usable(&hosts[i])).collect();
        if (healthy.len() as u64) < config.min_cluster_size {
            c.cluster_too_small.inc();
            return None;
        }
        let measure = |i: usize| {
            if config.by_weight {
                u64::from(hosts[i].weight())
            } else {
                1
            }
        };
        let upstream: Vec<u64> = places
            .iter()
            .map(|p| {
                healthy
                    .iter()
                    .filter(|&&i| hosts[i].place() == *p)
                    .map(|&i| measure(i))
                    .sum()
            })
            .collect();
        let upstream_total: u64 = upstream.iter().sum();
        let local_total = if config.by_weight {
            view.total.1
        } else {
            view.total.0
        };
        // Envoy's percentages, in 1/10000.
        let percentages: Vec<(u64, u64)> = places
            .iter()
            .zip(&upstream)
            .map(|(p, &u)| {
                if u == 0 {
                    return (0, 0);
                }
                let (n, w) = view.healthy.get(*p).copied().unwrap_or_default();
                let l = if config.by_weight { w } else { n };
                let local = (10000 * l).checked_div(local_total).unwrap_or(0);
                let up = (10000 * u).checked_div(upstream_total).unwrap_or(0);
                (local, up)
            })
            .collect();
        let groups = places
            .iter()
            .map(|p| {
                let of: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&i| hosts[i].place() == *p)
                    .collect();
                Balancer::over(policy.clone(), of, hosts)
            })
            .collect();
        let healthy_here = healthy
            .iter()
            .filter(|&&i| has_local && Some(hosts[i].place()) == mine)
            .count() as u64;
        let (local_pct, up_pct) = percentages[0];
        let direct = has_local
            && ((up_pct > 0 && up_pct >= local_pct)
                || config
                    .force_local_zone
                    .is_some_and(|min| healthy_here >= min));
        let local_percent = if has_local && local_pct > 0 {
            up_pct * 10000 / local_pct
        } else {
            0
        };
        let mut residual = Vec::with_capacity(places.len());
        let mut sum = 0;
        for (i, &(local, up)) in percentages.iter().enumerate() {
            if !(i == 0 && has_local) && up > local {
                sum += up - local;
            }
            residual.push(sum);
        }
        Some(ZoneRouting {
            direct,
            local_percent,
            residual,
            groups,
            routing_enabled: config.routing_enabled,
            local_panic: view.share < panic_threshold,
            fail_on_panic: config.fail_traffic_on_panic,
            counters: c.clone(),
        })
    }

    /// Envoy's `tryChooseLocalLocalityHosts`: the index of the locality for this pick.
    fn locality(&self) -> usize {
        let c = &self.counters;
        if self.direct {
            c.all_directly.inc();
            return 0;
        }
        if fastrand::u64(..10000) < self.local_percent {
            c.sampled.inc();
            return 0;
        }
        c.cross_zone.inc();
        let n = self.groups.len();
        let last = self.residual.last().copied().unwrap_or(0);
        if last == 0 {
            c.no_capacity_left.inc();
            return fastrand::usize(..n.max(1));
        }
        let threshold = fastrand::u64(..last);
        self.residual
            .iter()
            .position(|&r| threshold < r)
            .unwrap_or(n - 1)
    }
}

/// A hashing policy's table over a balancer's candidates.
#[derive(Debug)]
enum Table {
    Ring(hashing::Ring),
    Maglev(hashing::Maglev),
}

/// One priority level of a cluster with several: its share of the picks for healthy and for
/// degraded hosts, and the balancers of each.
#[derive(Debug)]
struct Level {
    /// The priority it holds.
    priority: u32,
    /// Its healthy and degraded availability (percent of its hosts × 1.4, capped at 100).
    health: u64,
    degraded_avail: u64,
    healthy_load: u64,
    degraded_load: u64,
    healthy: Balancer,
    degraded: Balancer,
}

/// A request's own share of picks per priority level (a retry priority's): healthy loads, then
/// degraded loads, in the levels' order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityLoad {
    healthy: Vec<u64>,
    degraded: Vec<u64>,
}

/// Locality-weighted balancing: a locality by its effective weight (EDF), then a host of it.
#[derive(Debug)]
struct Localities {
    groups: Vec<Balancer>,
    weights: Vec<f64>,
    edf: RefCell<Edf>,
}

/// One cluster's balancer on one worker, over the hosts it was built with.
#[derive(Debug)]
pub struct Balancer {
    policy: LbPolicy,
    /// The hosts to choose from: the healthy ones, or all of them in panic.
    candidates: Vec<usize>,
    panic: bool,
    weighted: bool,
    rr: Cell<usize>,
    edf: RefCell<Edf>,
    localities: Option<Localities>,
    /// With degraded hosts: the percentage of picks that go to the healthy ones (Envoy's
    /// healthy load), and the balancer of the degraded ones for the rest.
    degraded: Option<(u64, Box<Balancer>)>,
    /// With several priorities: the levels, picked by their loads before anything else.
    levels: Vec<Level>,
    /// RING_HASH and MAGLEV: the table over the candidates.
    table: Option<Table>,
    /// Zone-aware routing (priority 0 with a local cluster).
    zones: Option<ZoneRouting>,
    /// `fail_traffic_on_panic`: no host while in panic.
    fail_on_panic: bool,
    /// Slow start.
    ramp: Option<Ramp>,
    /// Bounded loads of a hashing policy.
    bounded: Option<Bounded>,
}

/// Per priority: (hosts of it, eligible count, healthy ones, degraded ones).
type Split = (Vec<usize>, u64, Vec<usize>, Vec<usize>);

impl Balancer {
    /// The balancer of `hosts` with `policy`, the panic threshold in percent and, with
    /// `locality_weighted`, localities picked first.
    pub fn new<H: Candidate>(
        policy: LbPolicy,
        panic_threshold: f64,
        hosts: &[H],
        locality_weighted: bool,
    ) -> Self {
        Self::new_zoned(
            policy,
            panic_threshold,
            hosts,
            locality_weighted,
            false,
            None,
        )
    }

    /// [`Balancer::new`], with zone-aware routing when the bootstrap names a local cluster,
    /// and with `fail_traffic_on_panic` no host while in panic (round robin, least request and
    /// random only, as Envoy's).
    pub fn new_zoned<H: Candidate>(
        policy: LbPolicy,
        panic_threshold: f64,
        hosts: &[H],
        locality_weighted: bool,
        fail_on_panic: bool,
        zone: Option<&Zone<'_>>,
    ) -> Self {
        let zoned_policy = matches!(
            policy,
            LbPolicy::RoundRobin | LbPolicy::LeastRequest { .. } | LbPolicy::Random
        );
        let zone = zone.filter(|_| zoned_policy);
        let fail_on_panic = fail_on_panic && zoned_policy;
        let mut priorities: Vec<u32> = hosts.iter().map(Candidate::priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        if priorities.len() > 1 {
            return Self::prioritized(
                policy,
                panic_threshold,
                hosts,
                locality_weighted,
                &priorities,
                (fail_on_panic, zone),
            );
        }
        let total = hosts.len();
        // Envoy: excluded hosts do not count; health and degraded availability are each
        // count/total × 1.4 capped at 100, their sum (capped) the normalized availability.
        // Below 100, the priority is in panic when the share of healthy and degraded hosts is
        // below the threshold (never with a threshold of 0).
        let eligible: Vec<usize> = (0..total).filter(|&i| !hosts[i].excluded()).collect();
        let n = eligible.len() as u64;
        let healthy: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|&i| hosts[i].healthy() && !hosts[i].degraded())
            .collect();
        let degraded: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|&i| hosts[i].healthy() && hosts[i].degraded())
            .collect();
        let availability = |count: usize| {
            (OVERPROVISIONING * count as u64)
                .checked_div(n)
                .map_or(0, |a| a.min(100))
        };
        let (health, degraded_health) = (availability(healthy.len()), availability(degraded.len()));
        let normalized = (health + degraded_health).min(100);
        let share = if n == 0 {
            0.0
        } else {
            100.0 * (healthy.len() + degraded.len()) as f64 / n as f64
        };
        let panic = n > 0 && normalized < 100 && share < panic_threshold;
        // The healthy load: Envoy's distribution of 100% between healthy and degraded hosts.
        let healthy_load = if normalized == 0 || degraded.is_empty() {
            100
        } else {
            let h = (health * 100 / normalized).min(100);
            let d = (degraded_health * 100 / normalized).min(100 - h);
            let rest = 100 - h - d;
            if healthy.is_empty() {
                h
            } else {
                h + rest
            }
        };
        // Priority 0 only, as Envoy (a single level of another priority has none).
        let all: Vec<usize> = (0..total).filter(|&i| hosts[i].priority() == 0).collect();
        let zoned = |members: &[usize]| {
            zone.and_then(|z| ZoneRouting::build(z, &policy, panic_threshold, hosts, &all, members))
        };
        let degraded_part = (!panic && !degraded.is_empty() && healthy_load < 100).then(|| {
            let mut d = Self::over(policy.clone(), degraded.clone(), hosts);
            d.zones = zoned(&degraded);
            (healthy_load, Box::new(d))
        });
        let zones = zoned(&healthy);
        let candidates = if panic { (0..total).collect() } else { healthy };
        // The hashing balancers weigh their hosts by locality instead (in panic too).
        let localities = (locality_weighted && !panic && !policy.hashed())
            .then(|| Self::localities(&policy, hosts, &candidates))
            .flatten();
        let mut b = Self::over(policy, candidates, hosts);
        if locality_weighted {
            b = b.weighted_by_locality(hosts, &(0..total).collect::<Vec<_>>());
        }
        b.panic = panic;
        b.localities = localities;
        b.degraded = degraded_part;
        b.zones = zones;
        b.fail_on_panic = fail_on_panic;
        b
    }

    /// Envoy's effective locality weights: the locality's weight times its healthy share times
    /// the overprovisioning factor, at most its weight. None when no locality has one.
    fn localities<H: Candidate>(
        policy: &LbPolicy,
        hosts: &[H],
        candidates: &[usize],
    ) -> Option<Localities> {
        let mut ids: Vec<u32> = hosts.iter().map(Candidate::locality).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut groups = Vec::new();
        let mut weights = Vec::new();
        for id in ids {
            let all = hosts.iter().filter(|h| h.locality() == id).count();
            let members: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&i| hosts[i].locality() == id)
                .collect();
            let weight = hosts
                .iter()
                .find(|h| h.locality() == id)
                .and_then(Candidate::locality_weight)
                .unwrap_or(0);
            let ratio = (OVERPROVISIONING as f64 / 100.0 * members.len() as f64
                / all.max(1) as f64)
                .min(1.0);
            let effective = f64::from(weight) * ratio;
            if effective > 0.0 {
                groups.push(Self::over(policy.clone(), members, hosts));
                weights.push(effective);
            }
        }
        if groups.is_empty() {
            return None;
        }
        let edf = Edf::new(weights.iter().copied().enumerate());
        Some(Localities {
            groups,
            weights,
            edf: RefCell::new(edf),
        })
    }

    /// RING_HASH's ring or MAGLEV's table of hosts placed with normalized weights (and their
    /// smallest and largest weight).
    fn table(
        policy: &LbPolicy,
        (placed, min, max): (Vec<hashing::Placed>, f64, f64),
    ) -> Option<Table> {
        match policy {
            LbPolicy::RingHash {
                min_ring,
                max_ring,
                murmur,
            } => Some(Table::Ring(hashing::Ring::new(
                &placed, min, *min_ring, *max_ring, *murmur,
            ))),
            LbPolicy::Maglev { table_size } => Some(Table::Maglev(hashing::Maglev::new(
                &placed,
                max,
                *table_size,
            ))),
            _ => None,
        }
    }

    /// Under `locality_weighted_lb_config`, RING_HASH and MAGLEV place the candidates with
    /// Envoy's thread-aware weights: a host's share of its locality's host weights times its
    /// locality's share of the weights of every locality of the level (`level`: its hosts),
    /// those without a candidate too; a locality of weight 0 places none.
    fn weighted_by_locality<H: Candidate>(mut self, hosts: &[H], level: &[usize]) -> Self {
        if !self.policy.hashed() {
            return self;
        }
        let mut weights: Vec<(u32, u64)> = Vec::new();
        for &i in level {
            let id = hosts[i].locality();
            if !weights.iter().any(|(l, _)| *l == id) {
                weights.push((id, u64::from(hosts[i].locality_weight().unwrap_or(0))));
            }
        }
        let total: u64 = weights.iter().map(|(_, w)| w).sum();
        let mut placed = Vec::new();
        for &(id, w) in &weights {
            if w == 0 {
                continue;
            }
            let members: Vec<usize> = self
                .candidates
                .iter()
                .copied()
                .filter(|&i| hosts[i].locality() == id)
                .collect();
            let sum: u64 = members.iter().map(|&i| u64::from(hosts[i].weight())).sum();
            let share = w as f64 / total as f64;
            for i in members {
                let weight = f64::from(hosts[i].weight()) * share / sum.max(1) as f64;
                placed.push((hosts[i].hash_key(), weight, i));
            }
        }
        self.table = Self::table(&self.policy, hashing::placed(placed));
        self
    }

    /// A balancer over these candidates.
    fn over<H: Candidate>(policy: LbPolicy, candidates: Vec<usize>, hosts: &[H]) -> Self {
        let weighted = candidates
            .windows(2)
            .any(|w| hosts[w[0]].weight() != hosts[w[1]].weight());
        let edf = if weighted {
            let mut edf = Edf::new(
                candidates
                    .iter()
                    .map(|&i| (i, f64::from(hosts[i].weight()))),
            );
            // Workers start at different points of the schedule, as Envoy's do.
            for _ in 0..fastrand::usize(..candidates.len().max(1)) {
                let _ = edf.pick(|i| f64::from(hosts[i].weight()));
            }
            edf
        } else {
            Edf::default()
        };
        let table = policy.hashed().then(|| {
            Self::table(
                &policy,
                hashing::normalize(
                    candidates
                        .iter()
                        .map(|&i| (hosts[i].hash_key(), hosts[i].weight(), i)),
                ),
            )
        });
        let table = table.flatten();
        Balancer {
            policy,
            candidates,
            panic: false,
            weighted,
            table,
            // Workers start at different hosts so load spreads from the first request.
            rr: Cell::new(fastrand::usize(..)),
            edf: RefCell::new(edf),
            localities: None,
            degraded: None,
            levels: Vec::new(),
            zones: None,
            fail_on_panic: false,
            ramp: None,
            bounded: None,
        }
    }

    /// Every balancer within this one (levels, localities, degraded hosts, zones), and itself.
    fn each(&mut self, f: &mut impl FnMut(&mut Balancer)) {
        f(self);
        for l in &mut self.levels {
            l.healthy.each(f);
            l.degraded.each(f);
        }
        if let Some(l) = &mut self.localities {
            for g in &mut l.groups {
                g.each(f);
            }
        }
        if let Some((_, d)) = &mut self.degraded {
            d.each(f);
        }
        if let Some(z) = &mut self.zones {
            for g in &mut z.groups {
                g.each(f);
            }
        }
    }

    /// This balancer with slow start and bounded loads. Healthy hosts' slow-start clocks
    /// start now if they have not; while one is within the window, round robin and least
    /// request pick by an EDF schedule of the scaled weights, as Envoy's do.
    pub fn with_extras<H: Candidate>(mut self, hosts: &[H], extras: &Extras) -> Self {
        let ramp = extras.slow_start.as_ref().and_then(|s| {
            let now = clock_ms();
            let latest = hosts
                .iter()
                .filter(|h| h.healthy() && !h.degraded())
                .filter_map(|h| h.start_clock(now))
                .max()?;
            Some(Ramp {
                window_ms: u64::try_from(s.window.as_millis()).unwrap_or(u64::MAX),
                aggression: s.aggression,
                min_weight: s.min_weight,
                latest,
            })
        });
        let factor = u64::from(extras.balance_factor);
        self.each(&mut |b| {
            if b.policy.hashed() && factor > 0 {
                let sum: u64 = b
                    .candidates
                    .iter()
                    .map(|&i| u64::from(hosts[i].weight()))
                    .sum();
                b.bounded = Some(Bounded {
                    factor,
                    shares: b
                        .candidates
                        .iter()
                        .map(|&i| f64::from(hosts[i].weight()) / sum.max(1) as f64)
                        .collect(),
                });
            }
            let ramped = matches!(
                b.policy,
                LbPolicy::RoundRobin | LbPolicy::LeastRequest { .. }
            );
            let Some(r) = ramp.as_ref().filter(|_| ramped) else {
                return;
            };
            b.ramp = Some(r.clone());
            let now = clock_ms();
            if r.active(now) && b.candidates.len() > 1 {
                b.weighted = true;
                let weight = |i: usize| b.weight(hosts, i, now);
                let mut edf = Edf::new(b.candidates.iter().map(|&i| (i, weight(i))));
                for _ in 0..fastrand::usize(..b.candidates.len()) {
                    let _ = edf.pick(weight);
                }
                b.edf = RefCell::new(edf);
            }
        });
        self
    }

    /// A host's weight for the EDF schedule now: its weight, by least request's active
    /// request bias, scaled by slow start.
    fn weight<H: Candidate>(&self, hosts: &[H], i: usize, now: u64) -> f64 {
        let h = &hosts[i];
        let w = f64::from(h.weight());
        let w = match &self.policy {
            LbPolicy::LeastRequest {
                active_request_bias: bias,
                ..
            } => {
                let active = h.active_requests() as f64;
                if *bias == 0.0 {
                    w
                } else if *bias == 1.0 {
                    w / (active + 1.0)
                } else {
                    w / (active + 1.0).powf(*bias)
                }
            }
            _ => w,
        };
        match &self.ramp {
            Some(r) if r.active(now) => w * r.factor(h, now),
            _ => w,
        }
    }

    /// Bounded loads: the hashed host `first` if it has room, else the first with room in an
    /// order the hash seeds, else the least loaded.
    fn bounded<H: Candidate>(&self, b: &Bounded, hosts: &[H], first: usize, hash: u64) -> usize {
        let total: u64 = hosts.iter().map(Candidate::active_requests).sum();
        let slots = (total + 1) * b.factor;
        let slots = slots.div_ceil(100);
        // A host's load: its requests under way over its slots; above 1, it has no room.
        let load = |pos: usize| {
            let share = b.shares.get(pos).copied().unwrap_or(0.0);
            let mine = ((slots as f64 * share).ceil() as u64).max(1);
            hosts[self.candidates[pos]].active_requests() as f64 / mine as f64
        };
        let Some(first_pos) = self.candidates.iter().position(|&c| c == first) else {
            return first;
        };
        let mut best = (load(first_pos), first_pos);
        if best.0 <= 1.0 {
            return first;
        }
        let mut order: Vec<usize> = (0..self.candidates.len()).collect();
        let mut rng = fastrand::Rng::with_seed(hash & u64::from(u32::MAX));
        for k in 0..order.len() {
            let j = k + rng.usize(..order.len() - k);
            order.swap(k, j);
            let pos = order[k];
            if pos == first_pos {
                continue;
            }
            let l = load(pos);
            if l <= 1.0 {
                return self.candidates[pos];
            }
            if l < best.0 {
                best = (l, pos);
            }
        }
        self.candidates[best.1]
    }

    /// Envoy's priority levels: each level's health (and degraded availability) is its count /
    /// total × 1.4 capped at 100; the load goes to the first levels as far as their health
    /// allows, normalized when the sum is under 100, then to degraded hosts, the rounding rest to
    /// the first healthy level. Under 100 in total, a level whose healthy share is below the
    /// threshold is in panic (all its hosts take traffic); when all are, the load follows the
    /// levels' host counts.
    fn prioritized<H: Candidate>(
        policy: LbPolicy,
        panic_threshold: f64,
        hosts: &[H],
        locality_weighted: bool,
        priorities: &[u32],
        (fail_on_panic, zone): (bool, Option<&Zone<'_>>),
    ) -> Self {
        let split: Vec<Split> = priorities
            .iter()
            .map(|&p| {
                let all: Vec<usize> = (0..hosts.len())
                    .filter(|&i| hosts[i].priority() == p)
                    .collect();
                let eligible = all.iter().filter(|&&i| !hosts[i].excluded()).count() as u64;
                let healthy = all
                    .iter()
                    .copied()
                    .filter(|&i| !hosts[i].excluded() && hosts[i].healthy() && !hosts[i].degraded())
                    .collect();
                let degraded = all
                    .iter()
                    .copied()
                    .filter(|&i| !hosts[i].excluded() && hosts[i].healthy() && hosts[i].degraded())
                    .collect();
                (all, eligible, healthy, degraded)
            })
            .collect();
        let avail = |count: usize, n: u64| {
            (OVERPROVISIONING * count as u64)
                .checked_div(n)
                .map_or(0, |a| a.min(100))
        };
        let health: Vec<u64> = split
            .iter()
            .map(|(_, n, h, _)| avail(h.len(), *n))
            .collect();
        let degraded: Vec<u64> = split
            .iter()
            .map(|(_, n, _, d)| avail(d.len(), *n))
            .collect();
        let normalized = (health.iter().sum::<u64>() + degraded.iter().sum::<u64>()).min(100);
        let panic: Vec<bool> = split
            .iter()
            .map(|(_, n, h, d)| {
                let share = if *n == 0 {
                    0.0
                } else {
                    100.0 * (h.len() + d.len()) as f64 / *n as f64
                };
                normalized < 100 && share < panic_threshold
            })
            .collect();
        let levels = split.len();
        let mut healthy_load = vec![0u64; levels];
        let mut degraded_load = vec![0u64; levels];
        if panic_threshold == 0.0 && normalized == 0 {
            healthy_load[0] = 100;
        } else if panic.iter().all(|p| *p) {
            let total = hosts.len().max(1) as u64;
            let mut left = 100;
            for (i, (all, ..)) in split.iter().enumerate() {
                healthy_load[i] = 100 * all.len() as u64 / total;
                left -= healthy_load[i];
            }
            if let Some(first) = split.iter().position(|(all, ..)| !all.is_empty()) {
                healthy_load[first] += left;
            }
        } else if normalized > 0 {
            let mut left = 100u64;
            for i in 0..levels {
                healthy_load[i] = left.min((health[i] * 100).checked_div(normalized).unwrap_or(0));
                left -= healthy_load[i];
            }
            for i in 0..levels {
                degraded_load[i] =
                    left.min((degraded[i] * 100).checked_div(normalized).unwrap_or(0));
                left -= degraded_load[i];
            }
            if left > 0 {
                match health.iter().position(|h| *h > 0) {
                    Some(first) => healthy_load[first] += left,
                    None => {
                        if let Some(first) = degraded.iter().position(|d| *d > 0) {
                            degraded_load[first] += left;
                        }
                    }
                }
            }
        }
        let degraded_avail = degraded;
        let levels = split
            .into_iter()
            .zip(panic)
            .enumerate()
            .map(|(i, ((all, _, healthy, degraded), panic))| {
                // Envoy routes by locality at priority 0 only.
                let zone = zone.filter(|_| priorities[i] == 0);
                let zoned = |members: &[usize]| {
                    zone.and_then(|z| {
                        ZoneRouting::build(z, &policy, panic_threshold, hosts, &all, members)
                    })
                };
                let zones = zoned(&healthy);
                let mut d = Self::over(policy.clone(), degraded.clone(), hosts);
                d.zones = zoned(&degraded);
                let candidates = if panic { all.clone() } else { healthy };
                let localities = (locality_weighted && !panic && !policy.hashed())
                    .then(|| Self::localities(&policy, hosts, &candidates))
                    .flatten();
                let mut h = Self::over(policy.clone(), candidates, hosts);
                if locality_weighted {
                    h = h.weighted_by_locality(hosts, &all);
                }
                h.panic = panic;
                h.localities = localities;
                h.zones = zones;
                h.fail_on_panic = fail_on_panic;
                Level {
                    priority: priorities[i],
                    health: health[i],
                    degraded_avail: degraded_avail[i],
                    healthy_load: healthy_load[i],
                    degraded_load: degraded_load[i],
                    healthy: h,
                    degraded: d,
                }
            })
            .collect();
        let mut b = Self::over(policy, Vec::new(), hosts);
        b.levels = levels;
        b
    }

    /// The load over the priority levels with those in `excluded` left out (Envoy's
    /// `PreviousPrioritiesRetryPriority`): each level's availability shared out from the first
    /// level on, the rounding rest to the first; `None` when nothing is left (or the cluster has
    /// a single level).
    pub fn load_without(&self, excluded: &[u32]) -> Option<PriorityLoad> {
        if self.levels.is_empty() {
            return None;
        }
        let avail = |l: &Level, v: u64| if excluded.contains(&l.priority) { 0 } else { v };
        let health: Vec<u64> = self.levels.iter().map(|l| avail(l, l.health)).collect();
        let degraded: Vec<u64> = self
            .levels
            .iter()
            .map(|l| avail(l, l.degraded_avail))
            .collect();
        let total = (health.iter().sum::<u64>() + degraded.iter().sum::<u64>()).min(100);
        if total == 0 {
            return None;
        }
        let mut out = PriorityLoad {
            healthy: vec![0; health.len()],
            degraded: vec![0; degraded.len()],
        };
        let mut left = 100u64;
        while left != 0 {
            let before = left;
            for (i, h) in health.iter().enumerate() {
                let d = left.min(h * 100 / total);
                out.healthy[i] += d;
                left -= d;
            }
            for (i, g) in degraded.iter().enumerate() {
                let d = left.min(g * 100 / total);
                out.degraded[i] += d;
                left -= d;
            }
            if left == before {
                // Nothing more can be given out in shares: the rest goes to the first level
                // that takes any.
                match health.iter().position(|h| *h > 0) {
                    Some(i) => out.healthy[i] += left,
                    None => {
                        let i = degraded.iter().position(|d| *d > 0)?;
                        out.degraded[i] += left;
                    }
                }
                left = 0;
            }
        }
        Some(out)
    }

    /// [`Balancer::pick_hashed`], the priority chosen by `load` instead of the levels' own.
    pub fn pick_with_load<H: Candidate>(
        &self,
        hosts: &[H],
        hash: Option<u64>,
        attempt: u32,
        load: &PriorityLoad,
    ) -> Option<usize> {
        if self.levels.len() != load.healthy.len() {
            return self.pick_hashed(hosts, hash, attempt);
        }
        let hashed = self.policy.hashed();
        let hash = hash.unwrap_or_else(|| fastrand::u64(..));
        let random = || if hashed { hash } else { fastrand::u64(..) };
        let r = random() % 100 + 1;
        let mut sum = 0;
        for (l, share) in self.levels.iter().zip(&load.healthy) {
            sum += share;
            if r <= sum {
                return l.healthy.pick_with(hosts, random, attempt);
            }
        }
        for (l, share) in self.levels.iter().zip(&load.degraded) {
            sum += share;
            if r <= sum {
                return l.degraded.pick_with(hosts, random, attempt);
            }
        }
        self.levels
            .first()?
            .healthy
            .pick_with(hosts, random, attempt)
    }

    /// Whether a pick can be made ahead of its request (Envoy's `peekAnotherHost`): round
    /// robin, random and weighted least request; not the hashing policies, which need the
    /// request, nor unweighted least request, which reads the hosts' loads when it picks.
    pub fn peekable(&self) -> bool {
        match self.policy {
            LbPolicy::RoundRobin | LbPolicy::Random => true,
            LbPolicy::LeastRequest { .. } => self.weighted,
            LbPolicy::ClusterProvided | LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => {
                false
            }
        }
    }

    /// Whether the cluster is in panic (`lb_healthy_panic` counts each pick then).
    pub fn panic(&self) -> bool {
        self.panic || self.levels.iter().any(|l| l.healthy.panic)
    }

    /// The index of the next host, or `None` when there is no candidate.
    pub fn pick<H: Candidate>(&self, hosts: &[H]) -> Option<usize> {
        self.pick_with(hosts, || fastrand::u64(..), 0)
    }

    /// [`Balancer::pick`] for a request with this hash (RING_HASH and MAGLEV; a random one
    /// without), on the `attempt`th try of its host selection: as Envoy, the hash also picks
    /// the priority.
    pub fn pick_hashed<H: Candidate>(
        &self,
        hosts: &[H],
        hash: Option<u64>,
        attempt: u32,
    ) -> Option<usize> {
        if !self.policy.hashed() {
            return self.pick(hosts);
        }
        let hash = hash.unwrap_or_else(|| fastrand::u64(..));
        self.pick_with(hosts, || hash, attempt)
    }

    fn pick_with<H: Candidate>(
        &self,
        hosts: &[H],
        mut random: impl FnMut() -> u64,
        attempt: u32,
    ) -> Option<usize> {
        if !self.levels.is_empty() {
            // Envoy's choice of a priority: a number in 1..=100 against the levels' healthy
            // loads, then their degraded loads.
            let r = random() % 100 + 1;
            let mut sum = 0;
            for l in &self.levels {
                sum += l.healthy_load;
                if r <= sum {
                    return l.healthy.pick_with(hosts, random, attempt);
                }
            }
            for l in &self.levels {
                sum += l.degraded_load;
                if r <= sum {
                    return l.degraded.pick_with(hosts, random, attempt);
                }
            }
            return self
                .levels
                .first()?
                .healthy
                .pick_with(hosts, random, attempt);
        }
        if let Some((healthy_load, d)) = &self.degraded {
            // Envoy's choice of healthy or degraded hosts: a number in 1..=100 against the
            // healthy load.
            if random() % 100 + 1 > *healthy_load {
                return d.pick_with(hosts, random, attempt);
            }
        }
        if self.panic && self.fail_on_panic {
            return None;
        }
        if let Some(l) = &self.localities {
            let g = l.edf.borrow_mut().pick(|g| l.weights[g])?;
            return l.groups.get(g)?.pick_with(hosts, random, attempt);
        }
        if let Some(z) = self.zones.as_ref().filter(|_| !self.panic) {
            // Envoy: `routing_enabled` percent of picks consider localities; none while the
            // local cluster is in panic.
            if fastrand::u64(..100) < z.routing_enabled {
                if !z.local_panic {
                    return z
                        .groups
                        .get(z.locality())?
                        .pick_with(hosts, random, attempt);
                }
                z.counters.local_cluster_not_ok.inc();
                if z.fail_on_panic {
                    return None;
                }
            }
        }
        let n = self.candidates.len();
        if n == 0 {
            return None;
        }
        let now = if self.ramp.is_some() { clock_ms() } else { 0 };
        let weight = |i: usize| self.weight(hosts, i, now);
        match &self.policy {
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided if self.weighted => {
                self.edf.borrow_mut().pick(weight)
            }
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided => {
                let i = self.rr.get();
                self.rr.set(i.wrapping_add(1));
                Some(self.candidates[i % n])
            }
            LbPolicy::Random => Some(self.candidates[(random() % n as u64) as usize]),
            LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => {
                let hash = random();
                let first = match &self.table {
                    Some(Table::Ring(r)) => r.pick(hash, attempt),
                    Some(Table::Maglev(m)) => m.pick(hash, attempt),
                    None => None,
                }?;
                match &self.bounded {
                    Some(b) => Some(self.bounded(b, hosts, first, hash)),
                    None => Some(first),
                }
            }
            LbPolicy::LeastRequest { .. } if self.weighted => self.edf.borrow_mut().pick(weight),
            LbPolicy::LeastRequest { choice_count, .. } => {
                let mut best: Option<usize> = None;
                for _ in 0..*choice_count {
                    let i = self.candidates[(random() % n as u64) as usize];
                    best = match best {
                        Some(b) if hosts[i].active_requests() < hosts[b].active_requests() => {
                            Some(i)
                        }
                        Some(b) => Some(b),
                        None => Some(i),
                    };
                }
                best
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct H(bool, u32, u64);
    impl Candidate for H {
        fn healthy(&self) -> bool {
            self.0
        }
        fn weight(&self) -> u32 {
            self.1
        }
        fn active_requests(&self) -> u64 {
            self.2
        }
    }

    fn counts(b: &Balancer, hosts: &[H], n: usize) -> Vec<usize> {
        let mut c = vec![0; hosts.len()];
        for _ in 0..n {
            c[b.pick(hosts).expect("a host")] += 1;
        }
        c
    }

    #[test]
    fn weighted_round_robin_follows_the_weights_exactly_over_each_cycle() {
        let hosts = [H(true, 1, 0), H(true, 3, 0), H(true, 4, 0)];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts, false);
        assert_eq!(counts(&b, &hosts, 800), [100, 300, 400]);
        // Spread, not in runs: no host twice in a row when its weight is at most half.
        let mut last = None;
        let hosts = [H(true, 1, 0), H(true, 1, 0), H(true, 2, 0)];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts, false);
        for _ in 0..40 {
            let i = b.pick(&hosts);
            if i != Some(2) {
                assert_ne!(i, last);
            }
            last = i;
        }
    }

    #[test]
    fn unhealthy_hosts_are_skipped_until_the_panic_threshold() {
        // 2 of 3 healthy: 93% health, 67% share: no panic.
        let hosts = [H(true, 1, 0), H(false, 1, 0), H(true, 1, 0)];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts, false);
        assert!(!b.panic());
        assert_eq!(counts(&b, &hosts, 100)[1], 0);
        // 1 of 3: 33% < 50%: every host takes traffic.
        let hosts = [H(true, 1, 0), H(false, 1, 0), H(false, 1, 0)];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts, false);
        assert!(b.panic());
        assert_eq!(counts(&b, &hosts, 99), [33, 33, 33]);
        // A threshold of 0 never panics: with no healthy host there is none to pick.
        let hosts = [H(false, 1, 0)];
        let b = Balancer::new(LbPolicy::RoundRobin, 0.0, &hosts, false);
        assert_eq!(b.pick(&hosts), None);
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts, false);
        assert_eq!(b.pick(&hosts), Some(0));
        // 3 of 4 healthy is 105% health: never panic, whatever the threshold.
        let hosts = [H(true, 1, 0), H(true, 1, 0), H(true, 1, 0), H(false, 1, 0)];
        assert!(!Balancer::new(LbPolicy::RoundRobin, 100.0, &hosts, false).panic());
    }

    #[test]
    fn least_request_takes_the_less_busy_of_its_choices() {
        let hosts = [H(true, 1, 5), H(true, 1, 0)];
        let policy = LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: 1.0,
        };
        let b = Balancer::new(policy, 50.0, &hosts, false);
        // Choices (0, 1) and (1, 0) both give 1; only (0, 0) gives 0.
        let mut seq = [0u64, 1, 1, 0, 0, 0].into_iter();
        let picks: Vec<_> = (0..3)
            .map(|_| b.pick_with(&hosts, || seq.next().unwrap_or(0), 0))
            .collect();
        assert_eq!(picks, [Some(1), Some(1), Some(0)]);
        // Weighted: EDF on weight / (active + 1).
        let hosts = [H(true, 2, 3), H(true, 1, 0)];
        let b = Balancer::new(policy_lr(), 50.0, &hosts, false);
        let c = counts(&b, &hosts, 300);
        assert!(c[1] > c[0], "{c:?}: 2/4 against 1/1");
    }

    fn policy_lr() -> LbPolicy {
        LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: 1.0,
        }
    }

    #[test]
    fn random_spreads_over_the_healthy_hosts() {
        let hosts = [H(true, 1, 0), H(false, 1, 0), H(true, 1, 0), H(true, 1, 0)];
        let b = Balancer::new(LbPolicy::Random, 50.0, &hosts, false);
        let c = counts(&b, &hosts, 3000);
        assert_eq!(c[1], 0);
        for i in [0, 2, 3] {
            assert!((800..1200).contains(&c[i]), "{c:?}");
        }
    }

    struct L(bool, u32, Option<u32>);
    impl Candidate for L {
        fn healthy(&self) -> bool {
            self.0
        }
        fn weight(&self) -> u32 {
            1
        }
        fn active_requests(&self) -> u64 {
            0
        }
        fn locality(&self) -> u32 {
            self.1
        }
        fn locality_weight(&self) -> Option<u32> {
            self.2
        }
    }

    #[test]
    fn locality_weighted_picks_localities_by_weight_and_healthy_share() {
        // Locality 0 (weight 1): one host; locality 1 (weight 3): two hosts; locality 2 has no
        // weight and takes nothing.
        let hosts = [
            L(true, 0, Some(1)),
            L(true, 1, Some(3)),
            L(true, 1, Some(3)),
            L(true, 2, None),
        ];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts, true);
        let mut c = [0; 4];
        for _ in 0..400 {
            c[b.pick(&hosts).expect("a host")] += 1;
        }
        assert_eq!(c, [100, 150, 150, 0]);
        // Half of locality 1 unhealthy: 3 x min(1, 1.4 x 1/2) = 2.1 against 1.
        let hosts = [
            L(true, 0, Some(1)),
            L(true, 1, Some(3)),
            L(false, 1, Some(3)),
            L(true, 0, Some(1)),
        ];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts, true);
        let mut c = [0; 4];
        for _ in 0..310 {
            c[b.pick(&hosts).expect("a host")] += 1;
        }
        assert_eq!(c[0] + c[3], 100);
        assert_eq!((c[1], c[2]), (210, 0));
    }

    struct D(bool, bool, bool);
    impl Candidate for D {
        fn healthy(&self) -> bool {
            self.0
        }
        fn weight(&self) -> u32 {
            1
        }
        fn active_requests(&self) -> u64 {
            0
        }
        fn degraded(&self) -> bool {
            self.1
        }
        fn excluded(&self) -> bool {
            self.2
        }
    }

    #[test]
    fn degraded_hosts_take_what_the_healthy_ones_cannot_and_excluded_ones_do_not_count() {
        // One healthy, one degraded: 70% healthy load, the rest to the degraded host.
        let hosts = [D(true, false, false), D(true, true, false)];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts, false);
        let mut n = 0u64;
        let picks: Vec<_> = (0..100)
            .map(|_| {
                n += 1;
                b.pick_with(&hosts, || n - 1, 0)
            })
            .collect();
        assert_eq!(picks.iter().filter(|p| **p == Some(0)).count(), 70);
        assert_eq!(picks.iter().filter(|p| **p == Some(1)).count(), 30);
        // 3 healthy of 4: 105% health, the degraded host gets nothing.
        let hosts = [
            D(true, false, false),
            D(true, false, false),
            D(true, false, false),
            D(true, true, false),
        ];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts, false);
        for _ in 0..50 {
            assert_ne!(b.pick(&hosts), Some(3));
        }
        // Only degraded hosts: all traffic to them.
        let hosts = [D(true, true, false), D(true, true, false)];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts, false);
        assert!(b.pick(&hosts).is_some());
        // One healthy and three draining: the draining ones are left out, so no panic.
        let hosts = [
            D(true, false, false),
            D(false, false, true),
            D(false, false, true),
            D(false, false, true),
        ];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts, false);
        assert!(!b.panic());
        for _ in 0..20 {
            assert_eq!(b.pick(&hosts), Some(0));
        }
    }

    struct P(bool, u32);
    impl Candidate for P {
        fn healthy(&self) -> bool {
            self.0
        }
        fn weight(&self) -> u32 {
            1
        }
        fn active_requests(&self) -> u64 {
            0
        }
        fn priority(&self) -> u32 {
            self.1
        }
    }

    fn shares(hosts: &[P]) -> Vec<usize> {
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, hosts, false);
        let mut c = vec![0; hosts.len()];
        for n in 0..100u64 {
            c[b.pick_with(hosts, || n, 0).expect("a host")] += 1;
        }
        c
    }

    #[test]
    fn priorities_spill_over_by_health_as_envoy_does() {
        // P0 all healthy: everything to P0.
        assert_eq!(shares(&[P(true, 0), P(true, 0), P(true, 1)]), [50, 50, 0]);
        // P0 half healthy: 70% health, 30% spills to P1.
        assert_eq!(shares(&[P(true, 0), P(false, 0), P(true, 1)]), [70, 0, 30]);
        // P0 all down: P1 takes it all.
        assert_eq!(shares(&[P(false, 0), P(false, 0), P(true, 1)]), [0, 0, 100]);
        // Everything down: total panic, load by host count.
        let c = shares(&[P(false, 0), P(false, 1)]);
        assert_eq!(c, [50, 50]);
    }
}

#[cfg(test)]
mod zone_tests {
    use super::*;

    struct Z(Locality);
    impl Candidate for Z {
        fn healthy(&self) -> bool {
            true
        }
        fn weight(&self) -> u32 {
            1
        }
        fn active_requests(&self) -> u64 {
            0
        }
        fn place(&self) -> &Locality {
            &self.0
        }
    }

    fn zone(z: &str) -> Locality {
        Locality {
            zone: z.into(),
            ..Locality::default()
        }
    }

    fn hosts(counts: &[(&str, usize)]) -> Vec<Z> {
        counts
            .iter()
            .flat_map(|&(z, n)| (0..n).map(move |_| Z(zone(z))))
            .collect()
    }

    #[test]
    fn residual_capacity_follows_envoys_example() {
        // Envoy's example: local 40% 40% 20%, upstream 25% 50% 25%: 25/40 of the picks stay,
        // the rest goes to b (10 points of spare capacity) and c (5).
        let local = hosts(&[("a", 2), ("b", 2), ("c", 1)]);
        let upstream = hosts(&[("c", 1), ("b", 2), ("a", 1)]);
        let view = LocalView::new(Some(zone("a")), &local);
        let zone = Zone {
            view: &view,
            config: ZoneAware {
                min_cluster_size: 1,
                ..ZoneAware::default()
            },
            counters: ZoneCounters::default(),
        };
        let all: Vec<usize> = (0..upstream.len()).collect();
        let r = ZoneRouting::build(&zone, &LbPolicy::RoundRobin, 50.0, &upstream, &all, &all)
            .expect("zone routing");
        assert!(!r.direct);
        assert_eq!(r.local_percent, 2500 * 10000 / 4000);
        // This proxy's locality first, then the others in order.
        assert_eq!(r.residual, [0, 1000, 1500]);
        assert_eq!(r.groups[0].candidates, [3]);
        // Without a locality of its own, the node routes without localities.
        let view = LocalView::new(None, &local);
        let zone = Zone {
            view: &view,
            ..zone
        };
        assert!(
            ZoneRouting::build(&zone, &LbPolicy::RoundRobin, 50.0, &upstream, &all, &all).is_none()
        );
        assert_eq!(zone.counters.local_cluster_not_ok.value(), 1);
    }
}

#[cfg(test)]
mod extras_tests {
    use super::*;
    use std::time::Duration;

    /// A healthy host with a weight, requests under way and a slow-start clock.
    struct S {
        weight: u32,
        active: u64,
        since: Cell<u64>,
    }
    impl S {
        fn new(weight: u32) -> Self {
            S {
                weight,
                active: 0,
                since: Cell::new(0),
            }
        }
    }
    impl Candidate for S {
        fn healthy(&self) -> bool {
            true
        }
        fn weight(&self) -> u32 {
            self.weight
        }
        fn active_requests(&self) -> u64 {
            self.active
        }
        fn hash_key(&self) -> String {
            format!("{:p}", self)
        }
        fn start_clock(&self, now: u64) -> Option<u64> {
            if self.since.get() == 0 {
                self.since.set(now);
            }
            Some(self.since.get())
        }
        fn healthy_since(&self) -> Option<u64> {
            Some(self.since.get()).filter(|&t| t > 0)
        }
    }

    fn ramped(policy: LbPolicy, hosts: &[S], aggression: f64) -> Balancer {
        Balancer::new(policy, 50.0, hosts, false).with_extras(
            hosts,
            &Extras {
                slow_start: Some(SlowStart {
                    window: Duration::from_secs(10),
                    aggression,
                    min_weight: 0.1,
                }),
                balance_factor: 0,
            },
        )
    }

    fn count(b: &Balancer, hosts: &[S], n: usize) -> Vec<usize> {
        let mut c = vec![0; hosts.len()];
        for _ in 0..n {
            c[b.pick(hosts).expect("a host")] += 1;
        }
        c
    }

    #[test]
    fn the_factor_is_envoys() {
        let r = Ramp {
            window_ms: 10_000,
            aggression: 1.0,
            min_weight: 0.1,
            latest: 1,
        };
        let h = S::new(1);
        h.since.set(1);
        let at = |r: &Ramp, ms: u64| r.factor(&h, 1 + ms);
        assert_eq!(at(&r, 0), 0.1, "the floor");
        assert!((at(&r, 5_000) - 0.5).abs() < 1e-9);
        assert_eq!(at(&r, 10_000), 1.0, "the window is over");
        let r2 = Ramp {
            aggression: 2.0,
            ..r.clone()
        };
        assert!((at(&r2, 5_000) - 0.5f64.sqrt()).abs() < 1e-9);
        let r_half = Ramp {
            aggression: 0.5,
            ..r.clone()
        };
        assert!((at(&r_half, 5_000) - 0.25).abs() < 1e-9);
        assert_eq!(at(&r_half, 1_000), 0.1, "0.01 is below the floor");
        // A host without a clock, or a degraded one, keeps its weight.
        let fresh = S::new(1);
        assert_eq!(r.factor(&fresh, 5_000), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_host_ramps_up_over_the_window() {
        // An old host (its window long over) and a new one.
        let hosts = [S::new(1), S::new(1)];
        hosts[0].since.set(clock_ms());
        tokio::time::advance(Duration::from_secs(60)).await;
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest {
                choice_count: 2,
                active_request_bias: 1.0,
            },
        ] {
            hosts[1].since.set(0);
            let b = ramped(policy.clone(), &hosts, 1.0);
            assert!(b.weighted, "{policy:?}: an EDF schedule while a host ramps");
            // At the start: 0.1 of the weight, a share of 1/11.
            let c = count(&b, &hosts, 1100);
            assert!((95..=105).contains(&c[1]), "{policy:?}: {c:?}");
            tokio::time::advance(Duration::from_secs(5)).await;
            // Half way: a factor of 0.5, a share of 1/3 (its stale deadline first).
            let c = count(&b, &hosts, 3000);
            assert!((950..=1050).contains(&c[1]), "{policy:?}: {c:?}");
            tokio::time::advance(Duration::from_secs(5)).await;
            let c = count(&b, &hosts, 1000);
            assert!((495..=505).contains(&c[1]), "{policy:?}: {c:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hosts_out_of_their_window_balance_as_without_slow_start() {
        let hosts = [S::new(1), S::new(3)];
        let b = ramped(LbPolicy::RoundRobin, &hosts, 1.0);
        tokio::time::advance(Duration::from_secs(11)).await;
        // The deadlines from the ramp go stale pick by pick, as in Envoy.
        let c = count(&b, &hosts, 4000);
        assert!((990..=1010).contains(&c[0]), "{c:?}");
        // A balancer built after the window: no EDF for equal weights.
        let equal = [S::new(1), S::new(1)];
        equal[0].since.set(1);
        equal[1].since.set(1);
        let b = ramped(LbPolicy::RoundRobin, &equal, 1.0);
        assert!(!b.weighted);
    }

    #[test]
    fn a_busy_hashed_host_passes_its_requests_on() {
        let mut hosts: Vec<S> = (1..=4).map(|_| S::new(1)).collect();
        let policy = LbPolicy::RingHash {
            min_ring: 1024,
            max_ring: 8 << 20,
            murmur: false,
        };
        let extras = Extras {
            slow_start: None,
            balance_factor: 150,
        };
        let keys = |hosts: &[S]| {
            let b = Balancer::new(policy.clone(), 50.0, hosts, false).with_extras(hosts, &extras);
            (0..200u64)
                .map(|k| b.pick_hashed(hosts, Some(k * 7919), 0).expect("a host"))
                .collect::<Vec<_>>()
        };
        let idle = keys(&hosts);
        // The host most keys go to gets busy: 10 of the 12 requests under way.
        let top = (0..4)
            .max_by_key(|i| idle.iter().filter(|h| **h == *i).count())
            .expect("a host");
        hosts[top].active = 10;
        hosts[(top + 1) % 4].active = 2;
        // Slots: ceil(13 × 150 / 100) = 20 in all, ceil(20 / 4) = 5 each: the busy host has
        // no room, the others do.
        let busy = keys(&hosts);
        assert!(!busy.contains(&top), "{busy:?}");
        for (a, b) in idle.iter().zip(&busy) {
            if *a != top {
                assert_eq!(a, b, "keys of hosts with room stay");
            }
        }
        // The same hash passes on to the same host each time.
        assert_eq!(busy, keys(&hosts));
        // Everyone busy: the least loaded.
        for h in hosts.iter_mut() {
            h.active = 50;
        }
        hosts[2].active = 40;
        assert!(keys(&hosts).iter().all(|h| *h == 2 || idle.contains(h)));
    }
}
