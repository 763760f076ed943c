//! Circuit breakers: per cluster and priority, counts of connections, pending requests,
//! requests and retries that all workers share (atomics), each with its limit. As Envoy's
//! resource manager: a count at its limit "opens" the breaker (the `circuit_breakers.<priority>.*_open`
//! gauges say 1), and what would go past it overflows (503 with flag UO).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::model;
use crate::stats::{Gauge, Shard};

/// One limited resource, shared by every worker.
#[derive(Debug)]
pub struct Resource {
    max: u64,
    count: AtomicU64,
    open: Gauge,
    remaining: Option<Gauge>,
    /// Retries with a `retry_budget`: the limit follows the requests under way.
    budget: Option<Budget>,
}

/// Envoy's retry budget: `budget_percent` of the active and pending requests, at least
/// `min_retry_concurrency`.
#[derive(Debug)]
struct Budget {
    per_million: u64,
    min: u64,
    requests: Arc<Resource>,
    pending: Arc<Resource>,
}

impl Resource {
    fn new(main: &Shard, prefix: &str, open: &str, remaining: &str, max: u64, track: bool) -> Self {
        let r = Resource {
            max,
            count: AtomicU64::new(0),
            open: main.gauge(&format!("{prefix}{open}")),
            remaining: track.then(|| main.gauge(&format!("{prefix}{remaining}"))),
            budget: None,
        };
        r.publish(0);
        r
    }

    /// The limit now: the configured one, or the retry budget's.
    pub fn max(&self) -> u64 {
        match &self.budget {
            None => self.max,
            Some(b) => {
                let active = b.requests.count() + b.pending.count();
                (active * b.per_million / 1_000_000).max(b.min)
            }
        }
    }

    fn publish(&self, count: u64) {
        let max = self.max();
        self.open.set(i64::from(count >= max));
        if let Some(g) = &self.remaining {
            // Envoy keeps no remaining count under a budget.
            let left = if self.budget.is_some() {
                0
            } else {
                max.saturating_sub(count)
            };
            g.set(left as i64);
        }
    }

    /// One more, unless the limit is reached: the hold releases it when dropped.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Held> {
        let mut current = self.count.load(Ordering::Relaxed);
        let max = self.max();
        loop {
            if current >= max {
                return None;
            }
            match self.count.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.publish(current + 1);
                    return Some(Held(self.clone()));
                }
                Err(now) => current = now,
            }
        }
    }

    /// One more even past the limit (what Envoy counts without checking).
    pub fn acquire_anyway(self: &Arc<Self>) -> Held {
        let now = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        self.publish(now);
        Held(self.clone())
    }

    /// The count now.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether one more would go past the limit.
    pub fn at_limit(&self) -> bool {
        self.count() >= self.max()
    }
}

/// One unit of a [`Resource`], given back when dropped.
#[derive(Debug)]
pub struct Held(Arc<Resource>);

impl Drop for Held {
    fn drop(&mut self) {
        let now = self
            .0
            .count
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        self.0.publish(now);
    }
}

/// The resources of one priority.
#[derive(Debug)]
pub struct Resources {
    /// `max_connections`.
    pub connections: Arc<Resource>,
    /// `max_pending_requests`.
    pub pending: Arc<Resource>,
    /// `max_requests`.
    pub requests: Arc<Resource>,
    /// `max_retries`.
    pub retries: Arc<Resource>,
    /// `max_connection_pools`.
    pub pools: Arc<Resource>,
}

impl Resources {
    fn new(main: &Shard, cluster: &str, priority: &str, t: &model::Thresholds) -> Self {
        let prefix = format!("cluster.{cluster}.circuit_breakers.{priority}.");
        let r = |open: &str, remaining: &str, max: u64| {
            Arc::new(Resource::new(
                main,
                &prefix,
                open,
                remaining,
                max,
                t.track_remaining,
            ))
        };
        let pending = r(
            "rq_pending_open",
            "remaining_pending",
            t.max_pending_requests,
        );
        let requests = r("rq_open", "remaining_rq", t.max_requests);
        let mut retries = Resource::new(
            main,
            &prefix,
            "rq_retry_open",
            "remaining_retries",
            t.max_retries,
            t.track_remaining,
        );
        if let Some((per_million, min)) = t.retry_budget {
            retries.budget = Some(Budget {
                per_million,
                min,
                requests: requests.clone(),
                pending: pending.clone(),
            });
            retries.publish(0);
        }
        Resources {
            connections: r("cx_open", "remaining_cx", t.max_connections),
            pending,
            requests,
            retries: Arc::new(retries),
            pools: r("cx_pool_open", "remaining_cx_pools", t.max_connection_pools),
        }
    }
}

/// A cluster's breakers: `DEFAULT` and `HIGH` priority.
#[derive(Debug)]
pub struct Breakers {
    /// `DEFAULT`, what routes use.
    pub default: Resources,
    /// `HIGH`.
    pub high: Resources,
}

impl Breakers {
    /// The breakers of a route priority: `HIGH`'s, or `DEFAULT`'s.
    pub fn of(&self, high: bool) -> &Resources {
        if high {
            &self.high
        } else {
            &self.default
        }
    }

    /// The breakers of `config`, their gauges in the main thread's shard.
    pub fn new(main: &Shard, config: &model::Cluster) -> Self {
        Breakers {
            default: Resources::new(
                main,
                config.stat_name(),
                "default",
                &config.circuit_breakers.default,
            ),
            high: Resources::new(
                main,
                config.stat_name(),
                "high",
                &config.circuit_breakers.high,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_opens_at_its_limit_and_closes_when_released() {
        let main = Shard::default();
        let t = model::Thresholds {
            max_connections: 2,
            track_remaining: true,
            ..Default::default()
        };
        let r = Resources::new(&main, "c", "default", &t);
        let g = |n: &str| {
            main.gauge(&format!("cluster.c.circuit_breakers.default.{n}"))
                .value()
        };
        let a = r.connections.try_acquire().expect("first");
        assert_eq!((g("cx_open"), g("remaining_cx")), (0, 1));
        let b = r.connections.try_acquire().expect("second");
        assert_eq!((g("cx_open"), g("remaining_cx")), (1, 0));
        assert!(r.connections.try_acquire().is_none(), "the third overflows");
        drop(a);
        assert_eq!((g("cx_open"), g("remaining_cx")), (0, 1));
        let c = r.connections.acquire_anyway();
        let d = r.connections.acquire_anyway();
        assert_eq!(r.connections.count(), 3);
        assert_eq!((g("cx_open"), g("remaining_cx")), (1, 0));
        drop((b, c, d));
        assert_eq!(r.connections.count(), 0);
        assert_eq!(g("remaining_rq"), 1024, "Envoy's default");
        assert_eq!(g("remaining_retries"), 3);
    }
}
