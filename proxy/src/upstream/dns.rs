//! DNS discovery for `STRICT_DNS` and `LOGICAL_DNS` clusters. It runs on the main thread, as
//! Envoy's does: each name of a cluster is resolved asynchronously (hickory), again after the
//! refresh rate (or the answer's TTL), and after a failure with a jittered exponential backoff.
//! The hosts found go into the cluster's shared state with the next snapshot; a worker never
//! waits for DNS.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ServerOrderingStrategy,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::model::{self, DnsLookupFamily, DnsResolverConfig};
use crate::stats::Shard;

/// The longest wait between two resolutions.
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// What one resolution found: addresses with their TTLs, or why it failed. A name that does
/// not exist or has no address of the family asked is an empty answer, not a failure (as
/// c-ares reports it to Envoy).
pub type Answer = Result<Vec<(IpAddr, Duration)>, String>;

/// One resolution to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The name (or an address literal).
    pub name: String,
    /// The families to ask for.
    pub family: DnsLookupFamily,
    /// The resolver to ask.
    pub resolver: DnsResolverConfig,
}

type Lookup = Box<dyn Fn(Query) -> Pin<Box<dyn Future<Output = Answer> + Send>>>;

/// A resolution's result, sent back to the main loop.
#[derive(Debug)]
pub struct Resolved {
    cluster: u64,
    target: usize,
    answer: Answer,
}

/// Envoy's `JitteredExponentialBackOffStrategy`: each wait is random below the current
/// interval, which doubles up to the maximum; a success starts again from the base.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: u64,
    max: u64,
    next: u64,
}

impl Backoff {
    /// A backoff from `base` to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        let base = (base.as_millis() as u64).max(1);
        let max = (max.as_millis() as u64).max(base);
        Backoff {
            base,
            max,
            next: base,
        }
    }

    /// The next wait, with `random` a random number.
    pub fn next_wait(&mut self, random: u64) -> Duration {
        let current = self.next;
        self.next = if self.next > self.max / 2 {
            self.max
        } else {
            self.next * 2
        };
        Duration::from_millis((random % current).min(self.max))
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

#[derive(Debug)]
struct Target {
    hosts: Vec<model::Host>,
    /// When to resolve again; `None` while a resolution is under way.
    due: Option<Instant>,
    backoff: Backoff,
    /// LOGICAL_DNS: the whole answer last seen, to count `update_no_rebuild`.
    addresses: Vec<IpAddr>,
}

#[derive(Debug)]
struct State {
    id: u64,
    config: Arc<model::Cluster>,
    targets: Vec<Target>,
    /// Whether a first resolution has finished (or the cluster does not wait for one).
    initialized: bool,
}

/// The DNS clusters of the configuration (active and warming versions alike) and their hosts.
pub struct DnsClusters {
    main: Arc<Shard>,
    states: Vec<State>,
    next_id: u64,
    lookup: Lookup,
    tx: mpsc::UnboundedSender<Resolved>,
    rx: Option<mpsc::UnboundedReceiver<Resolved>>,
}

impl std::fmt::Debug for DnsClusters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsClusters")
            .field("clusters", &self.states.len())
            .finish()
    }
}

impl DnsClusters {
    /// No cluster yet; resolutions through hickory.
    pub fn new(main: Arc<Shard>) -> Self {
        let resolvers = std::sync::Mutex::new(HashMap::new());
        Self::with_lookup(
            main,
            Box::new(move |q: Query| {
                let resolver = resolvers
                    .lock()
                    .map(|mut r| {
                        r.entry((q.resolver.clone(), q.family))
                            .or_insert_with(|| build_resolver(&q.resolver, q.family))
                            .clone()
                    })
                    .ok()
                    .flatten();
                Box::pin(async move {
                    match resolver {
                        Some(r) => lookup(&r, &q.name).await,
                        None => Err("no DNS resolver (resolv.conf unreadable)".to_string()),
                    }
                })
            }),
        )
    }

    /// No cluster yet; resolutions through `lookup` (tests).
    fn with_lookup(main: Arc<Shard>, lookup: Lookup) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        DnsClusters {
            main,
            states: Vec::new(),
            next_id: 0,
            lookup,
            tx,
            rx: Some(rx),
        }
    }

    /// The channel resolutions come back on (the main loop hands each to [`Self::on_resolved`]).
    pub fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<Resolved>> {
        self.rx.take()
    }

    /// Follows these clusters (the DNS ones among them): a new one starts resolving now, one
    /// no longer listed is forgotten (its resolutions under way are ignored when they end).
    pub fn sync<'a>(&mut self, clusters: impl IntoIterator<Item = &'a Arc<model::Cluster>>) {
        let wanted: Vec<&Arc<model::Cluster>> =
            clusters.into_iter().filter(|c| c.dns.is_some()).collect();
        self.states
            .retain(|s| wanted.iter().any(|c| Arc::ptr_eq(c, &s.config)));
        for c in wanted {
            if self.states.iter().any(|s| Arc::ptr_eq(&s.config, c)) {
                continue;
            }
            let Some(dns) = &c.dns else { continue };
            let (base, max) = dns
                .failure_refresh
                .unwrap_or((dns.refresh_rate, dns.refresh_rate.saturating_mul(10)));
            let now = Instant::now();
            let targets = dns
                .targets
                .iter()
                .map(|_| Target {
                    hosts: Vec::new(),
                    due: Some(now),
                    backoff: Backoff::new(base, max),
                    addresses: Vec::new(),
                })
                .collect::<Vec<_>>();
            self.next_id += 1;
            self.states.push(State {
                id: self.next_id,
                // A cluster with no name to resolve is ready at once, as in Envoy.
                initialized: !dns.wait_for_warm || targets.is_empty(),
                config: c.clone(),
                targets,
            });
        }
        self.start_due();
    }

    /// Whether `c` may go into force: its first resolution ended (or it does not wait).
    pub fn ready(&self, c: &Arc<model::Cluster>) -> bool {
        self.states
            .iter()
            .find(|s| Arc::ptr_eq(&s.config, c))
            .is_some_and(|s| s.initialized)
    }

    /// The hosts `c` resolved to.
    pub fn hosts(&self, c: &Arc<model::Cluster>) -> Vec<model::Host> {
        self.states
            .iter()
            .find(|s| Arc::ptr_eq(&s.config, c))
            .map(|s| s.targets.iter().flat_map(|t| t.hosts.clone()).collect())
            .unwrap_or_default()
    }

    /// When the next resolution is due.
    pub fn next_deadline(&self) -> Option<std::time::Instant> {
        self.states
            .iter()
            .flat_map(|s| s.targets.iter().filter_map(|t| t.due))
            .min()
            .map(Instant::into_std)
    }

    /// Starts the resolutions that are due.
    pub fn on_timer(&mut self) {
        self.start_due();
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for s in &mut self.states {
            let Some(dns) = &s.config.dns else { continue };
            for (i, t) in s.targets.iter_mut().enumerate() {
                if t.due.is_none_or(|d| d > now) {
                    continue;
                }
                t.due = None;
                self.main
                    .counter(&format!("cluster.{}.update_attempt", s.config.stat_name()))
                    .inc();
                let query = Query {
                    name: dns.targets[i].name.clone(),
                    family: dns.family,
                    resolver: dns.resolver.clone(),
                };
                let fut = (self.lookup)(query);
                let tx = self.tx.clone();
                let (cluster, target) = (s.id, i);
                handle.spawn(async move {
                    let answer = fut.await;
                    let _ = tx.send(Resolved {
                        cluster,
                        target,
                        answer,
                    });
                });
            }
        }
    }

    /// Takes a resolution's result; true when the cluster's hosts changed or it became ready
    /// (a new snapshot is then due).
    pub fn on_resolved(&mut self, r: Resolved) -> bool {
        self.on_resolved_with(r, fastrand::u64(..))
    }

    fn on_resolved_with(&mut self, r: Resolved, random: u64) -> bool {
        let Some(s) = self.states.iter_mut().find(|s| s.id == r.cluster) else {
            return false; // a cluster removed or replaced meanwhile
        };
        let Some(dns) = s.config.dns.clone() else {
            return false;
        };
        let (Some(t), Some(spec)) = (s.targets.get_mut(r.target), dns.targets.get(r.target)) else {
            return false;
        };
        let logical = s.config.discovery == model::DiscoveryType::LogicalDns;
        let name = s.config.stat_name();
        let counter = |n: &str| self.main.counter(&format!("cluster.{name}.{n}"));
        let mut changed = false;
        let wait = match r.answer {
            // LOGICAL_DNS takes an empty answer as a failure.
            Ok(addrs) if !(logical && addrs.is_empty()) => {
                counter("update_success").inc();
                let mut hosts: Vec<model::Host> = Vec::new();
                let mut ttl: Option<Duration> = None;
                for (ip, t) in addrs.iter().take(if logical { 1 } else { usize::MAX }) {
                    let address = SocketAddr::new(*ip, spec.port);
                    if hosts.iter().any(|h| h.address == address) {
                        continue;
                    }
                    hosts.push(model::Host {
                        address,
                        healthy: spec.healthy,
                        degraded: spec.degraded,
                        excluded: spec.excluded,
                        health_status: spec.health_status,
                        priority: spec.priority,
                        hostname: Some(spec.hostname.clone()),
                        weight: spec.weight,
                        locality: spec.locality,
                        locality_weight: spec.locality_weight,
                        place: spec.place.clone(),
                        socket_match: spec.socket_match.clone(),
                        hash_key: spec.hash_key.clone(),
                        checks: model::HcFlags::default(),
                        check_config: spec.check_config.clone(),
                        lb_metadata: spec.lb_metadata.clone(),
                        metadata: spec.metadata.clone(),
                        internal: None,
                        // LOGICAL_DNS: the rest of the answer, tried after the first address
                        // (Envoy's one host holds every address resolved).
                        additional: if logical {
                            let mut rest: Vec<SocketAddr> = Vec::new();
                            for (ip, _) in addrs.iter().skip(1) {
                                let a = SocketAddr::new(*ip, spec.port);
                                if a != address && !rest.contains(&a) {
                                    rest.push(a);
                                }
                            }
                            rest
                        } else {
                            Vec::new()
                        },
                    });
                    ttl = Some(ttl.map_or(*t, |m| m.min(*t)));
                }
                let all: Vec<IpAddr> = addrs.iter().map(|(ip, _)| *ip).collect();
                // As Envoy, STRICT_DNS compares the set of hosts (an answer in another order
                // changes nothing), LOGICAL_DNS the whole answer in order.
                let same = hosts.len() == t.hosts.len()
                    && hosts.iter().all(|h| t.hosts.contains(h))
                    && (!logical || all == t.addresses);
                if same {
                    counter("update_no_rebuild").inc();
                } else {
                    changed = hosts != t.hosts;
                    t.hosts = hosts;
                    t.addresses = all;
                }
                t.backoff.reset();
                let mut wait = dns.refresh_rate;
                if dns.respect_ttl {
                    if let Some(ttl) = ttl.filter(|t| !t.is_zero()) {
                        wait = ttl;
                    }
                }
                let jitter = dns.jitter.as_millis() as u64;
                if jitter > 0 {
                    wait = wait.saturating_add(Duration::from_millis(random % jitter));
                }
                wait
            }
            Ok(_) => {
                counter("update_failure").inc();
                t.backoff.next_wait(random)
            }
            Err(e) => {
                tracing::debug!(cluster = %name, name = %spec.name, error = %e, "DNS resolution failed");
                counter("update_failure").inc();
                t.backoff.next_wait(random)
            }
        };
        // A wait beyond a year (a configured rate that large) is a year: no overflow.
        let now = Instant::now();
        t.due = Some(now.checked_add(wait.min(MAX_WAIT)).unwrap_or(now));
        if !s.initialized {
            // As Envoy, the first resolution of any of its names warms the cluster.
            s.initialized = true;
            changed = true;
        }
        changed
    }
}

/// A hickory resolver for these settings: its name servers (resolv.conf's when none are
/// given) with resolv.conf's search domains unless told otherwise; no cache, so that every
/// refresh asks the server and sees its TTLs, as c-ares does.
fn build_resolver(r: &DnsResolverConfig, family: DnsLookupFamily) -> Option<TokioResolver> {
    let system = hickory_resolver::system_conf::read_system_conf().ok();
    let (mut config, mut opts) = match (&system, r.resolvers.is_empty()) {
        (Some((c, o)), true) => (c.clone(), o.clone()),
        (None, true) => return None,
        (system, false) => {
            let mut config = ResolverConfig::new();
            if let Some((c, _)) = system {
                if let Some(d) = c.domain() {
                    config.set_domain(d.clone());
                }
                for s in c.search() {
                    config.add_search(s.clone());
                }
            }
            for a in &r.resolvers {
                let mut ns = NameServerConfig::new(
                    *a,
                    if r.use_tcp {
                        Protocol::Tcp
                    } else {
                        Protocol::Udp
                    },
                );
                ns.trust_negative_responses = true;
                config.add_name_server(ns);
            }
            let opts = system.as_ref().map(|(_, o)| o.clone()).unwrap_or_default();
            (config, opts)
        }
    };
    if r.no_search_domains {
        let servers = config.name_servers().to_vec();
        config = ResolverConfig::from_parts(None, Vec::new(), servers);
    }
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Always;
    opts.timeout = r.query_timeout.unwrap_or(Duration::from_secs(5));
    opts.attempts = r.query_tries.unwrap_or(4) as usize;
    opts.server_ordering_strategy = if r.rotate {
        ServerOrderingStrategy::RoundRobin
    } else {
        ServerOrderingStrategy::UserProvidedOrder
    };
    opts.ip_strategy = match family {
        DnsLookupFamily::Auto => LookupIpStrategy::Ipv6thenIpv4,
        DnsLookupFamily::V4Only => LookupIpStrategy::Ipv4Only,
        DnsLookupFamily::V6Only => LookupIpStrategy::Ipv6Only,
        DnsLookupFamily::V4Preferred => LookupIpStrategy::Ipv4thenIpv6,
        DnsLookupFamily::All => LookupIpStrategy::Ipv4AndIpv6,
    };
    let mut b = TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
    *b.options_mut() = opts;
    Some(b.build())
}

/// One resolution of `name` with a cluster's resolver settings, outside the refresh cycle
/// (an xDS stream through a DNS cluster resolves its server each time it connects).
pub async fn resolve_once(
    name: &str,
    family: DnsLookupFamily,
    resolver: &DnsResolverConfig,
) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let r = build_resolver(resolver, family).ok_or("no resolver: resolv.conf is unreadable")?;
    let found = lookup(&r, name).await?;
    Ok(found.into_iter().map(|(ip, _)| ip).collect())
}

async fn lookup(r: &TokioResolver, name: &str) -> Answer {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![(ip, Duration::ZERO)]);
    }
    match r.lookup_ip(name).await {
        Ok(found) => {
            let mut out = Vec::new();
            for rec in found.as_lookup().records() {
                let ip = match rec.data() {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                out.push((ip, Duration::from_secs(u64::from(rec.ttl()))));
            }
            if out.is_empty() {
                // An address literal (or /etc/hosts) answers without records of its own.
                out = found.iter().map(|ip| (ip, Duration::ZERO)).collect();
            }
            Ok(out)
        }
        Err(e) if no_such_address(&e) => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

/// NXDOMAIN, or NOERROR without an address: an answer, unlike SERVFAIL, REFUSED or a timeout.
fn no_such_address(e: &hickory_resolver::ResolveError) -> bool {
    use hickory_resolver::proto::op::ResponseCode;
    use hickory_resolver::proto::ProtoErrorKind;
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => {
            matches!(
                *response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
