//! Virtual clusters' stats (`vhost.<vhost>.vcluster.<name>.*`) and routes' stats
//! (`vhost.<vhost>.route.<stat_prefix>.*`), charged alike, as Envoy's router charges them: the requests that got a connection, the final response code with
//! `upstream_rq_completed` (not the responses dropped for a retry), the retry decisions and
//! route timeouts.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::stats::{Counter, Shard};

/// One virtual cluster's or route's stats on one worker.
#[derive(Debug)]
pub struct VclusterStats {
    by_code: crate::stats::CodeCounters,
    /// `upstream_rq_total`.
    pub upstream_rq_total: Counter,
    /// `upstream_rq_completed`.
    pub upstream_rq_completed: Counter,
    /// `upstream_rq_retry`.
    pub upstream_rq_retry: Counter,
    /// `upstream_rq_retry_limit_exceeded`.
    pub upstream_rq_retry_limit_exceeded: Counter,
    /// `upstream_rq_retry_overflow`.
    pub upstream_rq_retry_overflow: Counter,
    /// `upstream_rq_retry_success`.
    pub upstream_rq_retry_success: Counter,
    /// `upstream_rq_timeout`.
    pub upstream_rq_timeout: Counter,
    /// `upstream_rq_time` (made when first recorded, as Envoy's).
    upstream_rq_time: std::cell::OnceCell<crate::stats::Histogram>,
    shard: Arc<Shard>,
    prefix: String,
}

impl VclusterStats {
    fn new(shard: Arc<Shard>, prefix: String) -> Self {
        let c = |n: &str| shard.counter(&format!("{prefix}{n}"));
        VclusterStats {
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_completed: c("upstream_rq_completed"),
            upstream_rq_retry: c("upstream_rq_retry"),
            upstream_rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            upstream_rq_retry_overflow: c("upstream_rq_retry_overflow"),
            upstream_rq_retry_success: c("upstream_rq_retry_success"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_time: std::cell::OnceCell::new(),
            by_code: crate::stats::CodeCounters::new(shard.clone(), prefix.clone()),
            shard,
            prefix,
        }
    }

    /// `upstream_rq_time`.
    pub fn upstream_rq_time(&self) -> &crate::stats::Histogram {
        self.upstream_rq_time.get_or_init(|| {
            self.shard
                .histogram(&format!("{}upstream_rq_time", self.prefix))
        })
    }

    /// Counts a response: `upstream_rq_completed`, `upstream_rq_<code>`, `upstream_rq_<N>xx`.
    pub fn response_code(&self, code: u16) {
        self.upstream_rq_completed.inc();
        self.by_code.count(code);
    }
}

/// What a request's endpoint stats are charged to: its virtual cluster's and its route's.
#[derive(Debug, Default, Clone)]
pub struct EndpointStats {
    /// The virtual cluster the request counts in, when its virtual host has any.
    pub vcluster: Option<Rc<VclusterStats>>,
    /// The route's, when it has a `stat_prefix`.
    pub route: Option<Rc<VclusterStats>>,
}

impl EndpointStats {
    /// Each set of stats to charge.
    pub fn each(&self) -> impl Iterator<Item = &VclusterStats> {
        self.vcluster.iter().chain(self.route.iter()).map(|s| &**s)
    }

    /// Counts a response: `upstream_rq_completed`, `upstream_rq_<code>`, `upstream_rq_<N>xx`.
    pub fn response_code(&self, code: u16) {
        self.each().for_each(|s| s.response_code(code));
    }
}

/// One virtual host's stats of one kind, by name.
type ByName = HashMap<Arc<str>, Rc<VclusterStats>>;

/// A worker's virtual cluster and route stats, by virtual host and name, made when first used.
#[derive(Debug, Default)]
pub struct Vclusters {
    by_vhost: RefCell<HashMap<String, ByName>>,
    routes: RefCell<HashMap<String, ByName>>,
}

impl Vclusters {
    /// The stats of virtual cluster `name` (`other` for none) of virtual host `vhost`.
    pub fn get(&self, shard: &Arc<Shard>, vhost: &str, name: &str) -> Rc<VclusterStats> {
        Self::find(&self.by_vhost, shard, vhost, name, "vcluster")
    }

    /// The stats of the route of virtual host `vhost` with `stat_prefix`.
    pub fn route(&self, shard: &Arc<Shard>, vhost: &str, stat_prefix: &str) -> Rc<VclusterStats> {
        Self::find(&self.routes, shard, vhost, stat_prefix, "route")
    }

    fn find(
        map: &RefCell<HashMap<String, ByName>>,
        shard: &Arc<Shard>,
        vhost: &str,
        name: &str,
        kind: &str,
    ) -> Rc<VclusterStats> {
        let mut map = map.borrow_mut();
        if let Some(s) = map.get(vhost).and_then(|m| m.get(name)) {
            return s.clone();
        }
        let prefix = format!("vhost.{vhost}.{kind}.{name}.");
        let s = Rc::new(VclusterStats::new(shard.clone(), prefix));
        map.entry(vhost.to_string())
            .or_default()
            .insert(name.into(), s.clone());
        s
    }
}
