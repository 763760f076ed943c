//! Virtual clusters' stats (`vhost.<vhost>.vcluster.<name>.*`), charged as Envoy's router
//! charges them: the requests that got a connection, the final response code with
//! `upstream_rq_completed` (not the responses dropped for a retry), the retry decisions and
//! route timeouts.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::stats::{Counter, Shard};

/// One virtual cluster's stats on one worker.
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
    fn new(shard: Arc<Shard>, vhost: &str, name: &str) -> Self {
        let prefix = format!("vhost.{vhost}.vcluster.{name}.");
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

/// One virtual host's virtual cluster stats, by name.
type ByName = HashMap<Arc<str>, Rc<VclusterStats>>;

/// A worker's virtual cluster stats, by virtual host and name, made when first used.
#[derive(Debug, Default)]
pub struct Vclusters {
    by_vhost: RefCell<HashMap<String, ByName>>,
}

impl Vclusters {
    /// The stats of virtual cluster `name` (`other` for none) of virtual host `vhost`.
    pub fn get(&self, shard: &Arc<Shard>, vhost: &str, name: &str) -> Rc<VclusterStats> {
        let mut map = self.by_vhost.borrow_mut();
        if let Some(s) = map.get(vhost).and_then(|m| m.get(name)) {
            return s.clone();
        }
        let s = Rc::new(VclusterStats::new(shard.clone(), vhost, name));
        map.entry(vhost.to_string())
            .or_default()
            .insert(name.into(), s.clone());
        s
    }
}
