//! The overload manager's loop on the main thread: every `refresh_interval` it reads each
//! resource monitor, feeds the pressure through the triggers of the actions and load shed points
//! that name the monitor, and publishes their states for the workers. Stats as Envoy's:
//! `overload.<monitor>.pressure` (percent), `.failed_updates`, `.skipped_updates`;
//! `overload.<action>.active`, `.scale_percent`; `overload.<point>.scale_percent`,
//! `.shed_load_count`; and `overload.envoy.overload_actions.shrink_heap.shrink_count` while the
//! heap is shrunk.

use std::sync::Arc;

use skiff_config::model::{
    ActionName, MonitorKind, Overload, ResourceMonitor, ShedPoint, TriggerKind,
};

use super::monitors;
use crate::stats::{Counter, Gauge, Shard};

/// One monitor with its stats.
struct Monitor {
    config: ResourceMonitor,
    pressure: Gauge,
    failed_updates: Counter,
    /// The injected monitor's file as last read: which file it was, and what it said.
    injected: Option<((u64, u64), Result<f64, String>)>,
}

impl Monitor {
    fn new(config: ResourceMonitor, pressure: Gauge, failed_updates: Counter) -> Self {
        Monitor {
            config,
            pressure,
            failed_updates,
            injected: None,
        }
    }

    /// The monitor's pressure now (1 is its limit).
    fn read(&mut self) -> Result<f64, String> {
        match &self.config.kind {
            MonitorKind::Injected { path } => {
                // Envoy reads the file again only when a file is moved onto the path: a new
                // file is a new inode.
                use std::os::unix::fs::MetadataExt;
                let id = std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
                match (&self.injected, id) {
                    (Some((seen, last)), Some(id)) if *seen == id => last.clone(),
                    (Some((_, last)), None) => last.clone(),
                    (_, id) => {
                        let read = monitors::injected_pressure(path);
                        self.injected = Some((id.unwrap_or_default(), read.clone()));
                        read
                    }
                }
            }
            MonitorKind::FixedHeap { max_bytes } => {
                Ok(monitors::heap_in_use() as f64 / *max_bytes as f64)
            }
            MonitorKind::CgroupMemory { max_bytes } => {
                let m = monitors::cgroup_memory().map_err(|e| e.to_string())?;
                let limit = match (m.limit, *max_bytes) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => return Err("the cgroup has no memory limit".into()),
                };
                Ok(m.usage as f64 / limit.max(1) as f64)
            }
            MonitorKind::DownstreamConnections { max } => {
                Ok(super::GLOBAL_CONNECTIONS.active() as f64 / *max as f64)
            }
        }
    }
}

/// A trigger's monitor and its last state.
struct TriggerState {
    monitor: usize,
    kind: TriggerKind,
    state: f64,
}

/// An action or load shed point: its triggers, its state the highest of theirs.
struct Triggered {
    triggers: Vec<TriggerState>,
    state: f64,
    /// `active` (actions only) and `scale_percent`.
    active: Option<Gauge>,
    scale_percent: Gauge,
}

impl Triggered {
    fn new(
        triggers: &[skiff_config::model::Trigger],
        monitors: &[Monitor],
        active: Option<Gauge>,
        scale_percent: Gauge,
    ) -> Self {
        let triggers = triggers
            .iter()
            .filter_map(|t| {
                let monitor = monitors.iter().position(|m| m.config.name == t.resource)?;
                Some(TriggerState {
                    monitor,
                    kind: t.kind,
                    state: 0.0,
                })
            })
            .collect();
        if let Some(a) = &active {
            a.set(0);
        }
        scale_percent.set(0);
        Triggered {
            triggers,
            state: 0.0,
            active,
            scale_percent,
        }
    }

    /// Feeds monitor `m`'s pressure; whether the state changed. The gauges follow the trigger
    /// that changed, as Envoy's `OverloadAction::updateResourcePressure` sets them.
    fn update(&mut self, m: usize, pressure: f64) -> bool {
        let mut touched = false;
        for t in self.triggers.iter_mut().filter(|t| t.monitor == m) {
            let new = t.kind.state(pressure);
            if new != t.state {
                t.state = new;
                touched = true;
                if let Some(a) = &self.active {
                    a.set(i64::from(new >= 1.0));
                }
                self.scale_percent.set((new * 100.0) as i64);
            }
        }
        if !touched {
            return false;
        }
        let old = self.state;
        self.state = self.triggers.iter().map(|t| t.state).fold(0.0, f64::max);
        self.state != old
    }
}

/// The overload manager of one process.
pub struct Manager {
    refresh: std::time::Duration,
    monitors: Vec<Monitor>,
    actions: Vec<(ActionName, Triggered)>,
    points: Vec<(ShedPoint, Triggered)>,
    shrink: Option<(skiff_config::model::ShrinkHeap, Counter)>,
    /// `overload.refresh_interval_delay`: the time between two refreshes.
    delays: crate::stats::Histogram,
}

impl Manager {
    /// The manager `config` asks for, its stats in `shard`; it also fixes what workers read
    /// (the first manager of the process does).
    pub fn new(config: &Overload, shard: &Arc<Shard>) -> Manager {
        let monitors: Vec<Monitor> = config
            .monitors
            .iter()
            .map(|m| {
                let scope = format!("overload.{}.", m.name);
                let _ = shard.counter(&format!("{scope}skipped_updates"));
                Monitor::new(
                    m.clone(),
                    shard.gauge(&format!("{scope}pressure")),
                    shard.counter(&format!("{scope}failed_updates")),
                )
            })
            .collect();
        let actions = config
            .actions
            .iter()
            .map(|a| {
                let scope = format!("overload.{}.", a.action.name());
                let t = Triggered::new(
                    &a.triggers,
                    &monitors,
                    Some(shard.gauge(&format!("{scope}active"))),
                    shard.gauge(&format!("{scope}scale_percent")),
                );
                (a.action, t)
            })
            .collect();
        let mut shed_counts: [Option<Counter>; ShedPoint::QUERIED.len()] = Default::default();
        let points = config
            .loadshed_points
            .iter()
            .map(|p| {
                let scope = format!("overload.{}.", p.name);
                let count = shard.counter(&format!("{scope}shed_load_count"));
                if let Some(i) = p.point.index() {
                    shed_counts[i] = Some(count);
                }
                let t = Triggered::new(
                    &p.triggers,
                    &monitors,
                    None,
                    shard.gauge(&format!("{scope}scale_percent")),
                );
                (p.point, t)
            })
            .collect();
        let mut timer_minimums = [None; skiff_config::model::ScaledTimer::ALL.len()];
        for (t, m) in &config.timer_minimums {
            timer_minimums[t.index()] = Some(*m);
        }
        let _ = super::FIXED.set(super::Fixed {
            timer_minimums,
            shed_counts,
            premature_reset: config.premature_reset,
            configured: ActionName::ALL.map(|a| config.actions.iter().any(|c| c.action == a)),
            account_power_of_two: config.minimum_account_power_of_two,
        });
        let shrink = config
            .actions
            .iter()
            .any(|a| a.action == ActionName::ShrinkHeap)
            .then(|| {
                (
                    config.shrink_heap,
                    shard.counter("overload.envoy.overload_actions.shrink_heap.shrink_count"),
                )
            });
        Manager {
            delays: shard.histogram("overload.refresh_interval_delay"),
            refresh: config.refresh_interval,
            monitors,
            actions,
            points,
            shrink,
        }
    }

    /// Reads every monitor once and publishes what changed.
    pub fn refresh(&mut self) {
        for m in 0..self.monitors.len() {
            let monitor = &mut self.monitors[m];
            // The connection count is a proactive resource: Envoy 1.40 checks it as each
            // connection is accepted and never feeds it to triggers (its pressure stays 0).
            if matches!(
                monitor.config.kind,
                MonitorKind::DownstreamConnections { .. }
            ) {
                continue;
            }
            let pressure = match monitor.read() {
                Ok(p) => p,
                Err(e) => {
                    tracing::info!(monitor = %monitor.config.name, error = %e, "failed to update resource");
                    monitor.failed_updates.inc();
                    continue;
                }
            };
            monitor.pressure.set((pressure * 100.0) as i64);
            for (action, t) in &mut self.actions {
                if t.update(m, pressure) {
                    tracing::info!(
                        action = action.name(),
                        state = t.state,
                        "overload action changed"
                    );
                    super::set_action(*action, t.state as f32);
                }
            }
            for (point, t) in &mut self.points {
                if t.update(m, pressure) {
                    super::set_point(*point, t.state as f32);
                }
            }
        }
    }

    /// Runs the manager: a refresh every `refresh_interval`, and the heap shrinker.
    pub async fn run(mut self) {
        let polled =
            |m: &Monitor| !matches!(m.config.kind, MonitorKind::DownstreamConnections { .. });
        if !self.monitors.iter().any(polled) {
            return;
        }
        let shrink = self.shrink.take();
        let shrinker = async move {
            let Some((config, count)) = shrink else {
                return std::future::pending().await;
            };
            let mut tick = tokio::time::interval(config.interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                if super::saturated(ActionName::ShrinkHeap) {
                    if monitors::heap_free() > config.max_unfreed_bytes {
                        monitors::release_free_memory();
                    }
                    count.inc();
                }
            }
        };
        let refresher = async move {
            let mut tick = tokio::time::interval(self.refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last = std::time::Instant::now();
            loop {
                tick.tick().await;
                let now = std::time::Instant::now();
                self.delays.record_ms(now - last);
                last = now;
                self.refresh();
            }
        };
        tokio::join!(shrinker, refresher);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_config::model::Trigger;

    fn triggered(kinds: &[TriggerKind]) -> (Triggered, Vec<Monitor>) {
        let shard = Arc::new(Shard::with_matcher(None));
        let monitors: Vec<Monitor> = (0..kinds.len())
            .map(|i| {
                Monitor::new(
                    ResourceMonitor {
                        name: format!("m{i}"),
                        kind: MonitorKind::FixedHeap { max_bytes: 1 },
                    },
                    shard.gauge(&format!("p{i}")),
                    shard.counter(&format!("f{i}")),
                )
            })
            .collect();
        let triggers: Vec<Trigger> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| Trigger {
                resource: format!("m{i}"),
                kind: *k,
            })
            .collect();
        let t = Triggered::new(
            &triggers,
            &monitors,
            Some(shard.gauge("active")),
            shard.gauge("scale"),
        );
        (t, monitors)
    }

    #[test]
    fn the_state_is_the_highest_trigger_and_the_gauges_follow_the_last_change() {
        let (mut t, _m) = triggered(&[
            TriggerKind::Threshold(0.9),
            TriggerKind::Scaled {
                scaling: 0.5,
                saturation: 1.0,
            },
        ]);
        assert!(!t.update(0, 0.5));
        assert!(t.update(1, 0.75));
        assert!((t.state - 0.5).abs() < 1e-9);
        assert_eq!(t.scale_percent.value(), 50);
        assert_eq!(t.active.as_ref().unwrap().value(), 0);
        assert!(t.update(0, 0.95));
        assert_eq!(t.state, 1.0);
        assert_eq!(t.active.as_ref().unwrap().value(), 1);
        // The scaled trigger falls; the threshold one still holds the action saturated, but
        // the gauges show the trigger that changed, as Envoy's do.
        assert!(!t.update(1, 0.1));
        assert_eq!(t.state, 1.0);
        assert_eq!(t.scale_percent.value(), 0);
    }

    #[test]
    fn scaled_timers_run_between_their_minimum_and_their_length() {
        use skiff_config::model::TimerMinimum;
        let d = std::time::Duration::from_secs(10);
        assert_eq!(
            TimerMinimum::Absolute(std::time::Duration::from_secs(2)).of(d),
            std::time::Duration::from_secs(2)
        );
        assert_eq!(
            TimerMinimum::Scale(0.25).of(d),
            std::time::Duration::from_millis(2500)
        );
        assert_eq!(
            TimerMinimum::Absolute(std::time::Duration::from_secs(20)).of(d),
            d,
            "a minimum above the timer leaves it as it is"
        );
    }
}
