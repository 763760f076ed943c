//! `envoy.filters.network.connection_limit`: the count of connections open through a filter's
//! configuration, over every worker (the count belongs to the configuration object, as the
//! token bucket of `local_ratelimit` does). A connection over `max_connections` is closed,
//! after `delay` when set, and counts as open until then, as in Envoy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::model;
use crate::stats::{Counter, Gauge, Shard};

static OPEN: crate::attached::Attached<model::ConnectionLimit, AtomicU64> =
    crate::attached::Attached::new();

/// One worker's copy of a connection_limit filter.
#[derive(Debug)]
pub struct Limiter {
    config: Arc<model::ConnectionLimit>,
    open: Arc<AtomicU64>,
    /// `connection_limit.<stat_prefix>.limited_connections`.
    limited: Counter,
    /// `connection_limit.<stat_prefix>.active_connections`.
    active: Gauge,
}

/// A connection counted open through a filter until dropped.
#[derive(Debug)]
pub struct Held {
    open: Arc<AtomicU64>,
    active: Gauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.active.dec();
    }
}

/// What the filter decided for a new connection.
#[derive(Debug)]
pub enum Verdict {
    /// The filter is off (`runtime_enabled`): nothing counted.
    Off,
    /// Under the limit: counted while the connection lasts.
    Admitted(Held),
    /// Over it: counted until closed, which is after `delay` if set.
    Refused(Held, Option<Duration>),
}

impl Limiter {
    /// The filter for `config` on a worker whose stats are in `shard`.
    pub fn new(config: &Arc<model::ConnectionLimit>, shard: &Shard) -> Self {
        let scope = format!("connection_limit.{}.", config.stat_prefix);
        Limiter {
            config: config.clone(),
            open: OPEN.get_or_insert_with(config, AtomicU64::default),
            limited: shard.counter(&format!("{scope}limited_connections")),
            active: shard.gauge(&format!("{scope}active_connections")),
        }
    }

    /// Counts a new connection in, or refuses it.
    pub fn admit(&self) -> Verdict {
        let on = match &self.config.enabled {
            Some(flag) => flag.enabled(&crate::runtime::snapshot()),
            None => self.config.on,
        };
        if !on {
            return Verdict::Off;
        }
        self.active.inc();
        let max = self.config.max_connections;
        let within = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !within {
            self.open.fetch_add(1, Ordering::Relaxed);
        }
        let held = Held {
            open: self.open.clone(),
            active: self.active.clone(),
        };
        if within {
            Verdict::Admitted(held)
        } else {
            self.limited.inc();
            Verdict::Refused(held, self.config.delay)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: u64) -> Arc<model::ConnectionLimit> {
        Arc::new(model::ConnectionLimit {
            stat_prefix: "p".into(),
            max_connections: max,
            delay: None,
            enabled: None,
            on: true,
        })
    }

    #[test]
    fn connections_past_the_limit_are_refused_until_one_closes() {
        let shard = Shard::default();
        let c = config(2);
        let (a, b) = (Limiter::new(&c, &shard), Limiter::new(&c, &shard));
        let first = a.admit();
        let second = b.admit();
        assert!(matches!(first, Verdict::Admitted(_)));
        assert!(matches!(second, Verdict::Admitted(_)));
        let third = a.admit();
        assert!(matches!(third, Verdict::Refused(_, None)));
        // A refused connection counts until it closes, as in Envoy.
        assert!(matches!(b.admit(), Verdict::Refused(..)));
        drop(third);
        drop(first);
        assert!(matches!(b.admit(), Verdict::Admitted(_)));
        assert_eq!(a.limited.value(), 2);
    }
}
