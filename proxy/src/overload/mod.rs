//! The overload manager (Envoy's `overload_manager`). The main thread reads the resource
//! monitors every `refresh_interval` ([`manager`]) and turns their pressure into the state of
//! each action and load shed point, between 0 and 1; workers read those states here,
//! lock-free, where Envoy's code checks them.
//!
//! - a listener stops accepting while `stop_accepting_connections` is saturated, and closes a
//!   connection as it is accepted with the chance `reject_incoming_connections` or the
//!   `tcp_listener_accept` point give;
//! - the connection manager answers a new request 503 with the chance `stop_accepting_requests`
//!   or `http_connection_manager_decode_headers` give, and ends a connection after a response
//!   with the chance `disable_http_keepalive` gives;
//! - `reduce_timeouts` shortens the scaled timers ([`scaled`]).
//!
//! `global_downstream_max_connections` is a limit on downstream connections across every
//! listener and worker ([`GLOBAL_CONNECTIONS`]): a connection over it is closed as soon as it is
//! accepted and counted in its listener's `downstream_global_cx_overflow`; listeners with
//! `ignore_global_conn_limit` neither count nor are limited.

pub mod accounts;
pub mod manager;
pub mod monitors;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use skiff_config::model::{ActionName, PrematureReset, ScaledTimer, ShedPoint, TimerMinimum};

use crate::stats::Counter;

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

/// An action's or point's state, an `f32` between 0 and 1 in bits (0 is inactive).
#[allow(clippy::declare_interior_mutable_const)]
const INACTIVE: AtomicU32 = AtomicU32::new(0);
static ACTIONS: [AtomicU32; ActionName::ALL.len()] = [INACTIVE; ActionName::ALL.len()];
static POINTS: [AtomicU32; ShedPoint::QUERIED.len()] = [INACTIVE; ShedPoint::QUERIED.len()];
/// Woken whenever an action's state changes.
static CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();
/// What the configuration fixes for the process's life.
static FIXED: OnceLock<Fixed> = OnceLock::new();

/// The parts of the overload manager's configuration workers read.
#[derive(Debug)]
struct Fixed {
    /// `reduce_timeouts`' minimum for each [`ScaledTimer`].
    timer_minimums: [Option<TimerMinimum>; ScaledTimer::ALL.len()],
    /// `overload.<point>.shed_load_count` of each configured point.
    shed_counts: [Option<Counter>; ShedPoint::QUERIED.len()],
    /// The `overload.premature_reset_*` runtime keys.
    premature_reset: PrematureReset,
    /// Which actions are configured.
    configured: [bool; ActionName::ALL.len()],
    /// `buffer_factory_config.minimum_account_to_track_power_of_two`.
    account_power_of_two: Option<u32>,
}

/// `buffer_factory_config.minimum_account_to_track_power_of_two`, when set.
pub fn account_power_of_two() -> Option<u32> {
    FIXED.get().and_then(|f| f.account_power_of_two)
}

/// Whether `action` is configured (its state can change at all).
pub fn configured(action: ActionName) -> bool {
    FIXED.get().is_some_and(|f| f.configured[action.index()])
}

/// HTTP/2's premature-reset protection in force (Envoy's defaults until the manager starts).
pub fn premature_reset() -> PrematureReset {
    FIXED.get().map(|f| f.premature_reset).unwrap_or_default()
}

fn load(a: &AtomicU32) -> f32 {
    f32::from_bits(a.load(Ordering::Relaxed))
}

/// The state (0 to 1) of `action` now.
pub fn state(action: ActionName) -> f32 {
    load(&ACTIONS[action.index()])
}

/// Whether `action` is saturated (state 1).
pub fn saturated(action: ActionName) -> bool {
    state(action) >= 1.0
}

/// Whether to act on `action` this time: always when saturated, never when inactive, else
/// with its state as the chance (Envoy's `bernoulli`).
pub fn act(action: ActionName) -> bool {
    chance(state(action))
}

fn chance(p: f32) -> bool {
    p >= 1.0 || (p > 0.0 && fastrand::f32() < p)
}

/// Whether to shed load at `point` this time (counted in `overload.<point>.shed_load_count`).
pub fn shed(point: ShedPoint) -> bool {
    let Some(i) = point.index() else {
        return false;
    };
    if !chance(load(&POINTS[i])) {
        return false;
    }
    if let Some(c) = FIXED.get().and_then(|f| f.shed_counts[i].as_ref()) {
        c.inc();
    }
    true
}

/// Resolves at the next change of any action's state.
pub fn changed() -> tokio::sync::futures::Notified<'static> {
    CHANGED.notified()
}

/// How long a timer configured for `configured` runs now. With `reduce_timeouts` scaling
/// `timer`, it runs between its minimum and `configured` by the action's state, as Envoy's
/// scaled range timers: `min + (configured - min) × (1 - state)`.
pub fn scaled(timer: ScaledTimer, configured: Duration) -> Duration {
    match minimum(timer) {
        None => configured,
        Some(min) => {
            let min = min.of(configured);
            let scale = (1.0 - f64::from(state(ActionName::ReduceTimeouts))).clamp(0.0, 1.0);
            min + (configured - min).mul_f64(scale)
        }
    }
}

/// `reduce_timeouts`' minimum for `timer`, if it scales it.
pub fn minimum(timer: ScaledTimer) -> Option<TimerMinimum> {
    FIXED.get().and_then(|f| f.timer_minimums[timer.index()])
}

/// Sleeps for the scaled `configured` from `start`, following the scale as it changes.
pub async fn sleep_scaled(timer: ScaledTimer, start: tokio::time::Instant, configured: Duration) {
    if minimum(timer).is_none() {
        return tokio::time::sleep_until(start + configured).await;
    }
    loop {
        let changed = changed();
        tokio::select! {
            _ = tokio::time::sleep_until(start + scaled(timer, configured)) => return,
            _ = changed => {}
        }
    }
}

/// Sets an action's state (the manager, and tests).
fn set_action(action: ActionName, value: f32) -> bool {
    let old = ACTIONS[action.index()].swap(value.to_bits(), Ordering::Relaxed);
    let changed = f32::from_bits(old) != value;
    if changed {
        CHANGED.notify_waiters();
    }
    changed
}

/// Sets a load shed point's chance (the manager).
fn set_point(point: ShedPoint, value: f32) {
    if let Some(i) = point.index() {
        POINTS[i].store(value.to_bits(), Ordering::Relaxed);
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

    /// reduce_timeouts moves a running scaled timer as its state changes (paused time). Only
    /// this test fixes a minimum, for `HTTP_DOWNSTREAM_CONNECTION_MAX` alone.
    #[tokio::test(start_paused = true)]
    async fn scaled_timers_follow_the_action_state() {
        let _ = FIXED.set(Fixed {
            timer_minimums: [
                None,
                None,
                None,
                Some(TimerMinimum::Absolute(Duration::from_secs(1))),
                None,
            ],
            shed_counts: Default::default(),
            premature_reset: PrematureReset::default(),
            configured: [false; ActionName::ALL.len()],
            account_power_of_two: None,
        });
        let timer = ScaledTimer::ConnectionMax;
        let ten = Duration::from_secs(10);
        assert_eq!(scaled(timer, ten), ten);
        assert_eq!(scaled(ScaledTimer::StreamIdle, ten), ten, "not scaled");
        let start = tokio::time::Instant::now();
        let fired = tokio::spawn(async move {
            sleep_scaled(timer, start, ten).await;
            start.elapsed()
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!fired.is_finished());
        // Half way: 1 s + 9 s × 0.5 from the start.
        set_action(ActionName::ReduceTimeouts, 0.5);
        assert_eq!(scaled(timer, ten), Duration::from_millis(5500));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!fired.is_finished());
        // Saturated: the minimum, already past, so it fires at once.
        set_action(ActionName::ReduceTimeouts, 1.0);
        let at = fired.await.expect("timer task");
        assert_eq!(at, Duration::from_secs(5));
        set_action(ActionName::ReduceTimeouts, 0.0);
        assert!(!saturated(ActionName::ReduceTimeouts));
    }

    #[test]
    fn actions_act_by_their_state() {
        set_action(ActionName::ShrinkHeap, 0.0);
        assert!(!act(ActionName::ShrinkHeap));
        set_action(ActionName::ShrinkHeap, 1.0);
        assert!(act(ActionName::ShrinkHeap) && saturated(ActionName::ShrinkHeap));
        set_action(ActionName::ShrinkHeap, 0.5);
        let hits = (0..10_000).filter(|_| act(ActionName::ShrinkHeap)).count();
        assert!((4_000..6_000).contains(&hits), "{hits}");
        set_action(ActionName::ShrinkHeap, 0.0);
        assert!(
            !shed(ShedPoint::TcpListenerAccept),
            "an unconfigured point never sheds"
        );
    }
}
