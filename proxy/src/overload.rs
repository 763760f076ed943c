//! The overload manager's resource that skiff runs: `global_downstream_max_connections`, a
//! limit on downstream connections across every listener and worker. A connection over the
//! limit is closed as soon as it is accepted and counted in its listener's
//! `downstream_global_cx_overflow`; listeners with `ignore_global_conn_limit` neither count
//! nor are limited.

use std::sync::atomic::{AtomicU64, Ordering};

/// Active downstream connections against the configured limit.
#[derive(Debug)]
pub struct GlobalConnections {
    limit: AtomicU64,
    active: AtomicU64,
}

/// The process's count (the limit is process-wide, as in Envoy).
pub static GLOBAL_CONNECTIONS: GlobalConnections = GlobalConnections::new();

impl GlobalConnections {
    /// No limit.
    pub const fn new() -> Self {
        GlobalConnections {
            limit: AtomicU64::new(u64::MAX),
            active: AtomicU64::new(0),
        }
    }

    /// Sets the limit (`None`: none).
    pub fn set_limit(&self, limit: Option<u64>) {
        self.limit
            .store(limit.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A place for one more connection, held until the guard drops; `None` at the limit.
    pub fn try_acquire(&'static self) -> Option<ConnectionSlot> {
        let limit = self.limit.load(Ordering::Relaxed);
        let mut active = self.active.load(Ordering::Relaxed);
        loop {
            if active >= limit {
                return None;
            }
            match self.active.compare_exchange_weak(
                active,
                active + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(ConnectionSlot(self)),
                Err(now) => active = now,
            }
        }
    }

    /// Connections counted now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
}

impl Default for GlobalConnections {
    fn default() -> Self {
        Self::new()
    }
}

/// One counted connection.
#[derive(Debug)]
pub struct ConnectionSlot(&'static GlobalConnections);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_and_returned() {
        static G: GlobalConnections = GlobalConnections::new();
        G.set_limit(Some(2));
        let a = G.try_acquire().expect("first");
        let b = G.try_acquire().expect("second");
        assert!(G.try_acquire().is_none());
        drop(a);
        let c = G.try_acquire().expect("freed");
        assert_eq!(G.active(), 2);
        drop((b, c));
        G.set_limit(None);
        assert_eq!(G.active(), 0);
        let many: Vec<_> = (0..100).filter_map(|_| G.try_acquire()).collect();
        assert_eq!(many.len(), 100);
    }
}
