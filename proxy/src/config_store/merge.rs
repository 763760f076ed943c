//! `common_lb_config.update_merge_window`, as Envoy's cluster manager merges host updates
//! (`scheduleUpdate`): per cluster and priority, a change of the hosts' health by the active
//! checks or outlier detection made within the window of the last change the workers got
//! waits for the window's end, and goes with whatever else changed meanwhile. A change from
//! discovery (hosts added or removed, or their health, weight or metadata: Envoy 1.40 delivers
//! these at once) goes at once, with what was held back. `/clusters` shows the hosts as they
//! are.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::config::model::Host;
use crate::stats::Shard;

/// One cluster priority's merge window (Envoy's `PendingUpdates`).
#[derive(Debug, Default)]
pub(super) struct Window {
    /// When the workers last got a change of this priority.
    pub last_updated: Option<Instant>,
    /// While changes are held back: when they go.
    pub due: Option<Instant>,
}

/// The hosts the workers get, given the ones they have (`workers`), the hosts as they were
/// (`now`) and as they are (`fresh`): each priority whose hosts changed goes now (counted in
/// `cluster_manager.cluster_updated`) or is held back; a priority held back keeps the workers'
/// hosts until its window ends.
pub(super) fn hosts(
    merges: &mut HashMap<(String, u32), Window>,
    main: &Shard,
    name: &str,
    window: Duration,
    (workers, now): (&[Host], &[Host]),
    fresh: &[Host],
) -> Vec<Host> {
    let at = Instant::now();
    let mut priorities: Vec<u32> = fresh.iter().chain(now).map(|h| h.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let counter = |n: &str| main.counter(&format!("cluster_manager.{n}"));
    let mut held = HashSet::new();
    for p in priorities {
        let of = |hosts: &[Host]| -> Vec<Host> {
            hosts.iter().filter(|h| h.priority == p).cloned().collect()
        };
        let (before, after) = (of(now), of(fresh));
        let key = (name.to_string(), p);
        if before != after {
            let addresses = |hosts: &[Host]| {
                let mut a: Vec<_> = hosts.iter().map(|h| h.address).collect();
                a.sort_unstable();
                a
            };
            // Envoy 1.40 delivers what discovery changes (health, weight, metadata) at once;
            // what the checks and outlier detection change may be merged.
            let discovered = |hosts: &[Host]| -> Vec<Host> {
                let mut hosts = hosts.to_vec();
                hosts.iter_mut().for_each(|h| h.checks = Default::default());
                hosts
            };
            let mergeable = addresses(&before) == addresses(&after)
                && discovered(&before) == discovered(&after);
            let mut scheduled = false;
            if !window.is_zero() {
                let w = merges.entry(key.clone()).or_default();
                let out = w
                    .last_updated
                    .is_none_or(|t| at.duration_since(t).as_millis() > window.as_millis());
                if out || !mergeable {
                    if mergeable {
                        counter("update_out_of_merge_window").inc();
                    }
                    if w.due.take().is_some() {
                        counter("update_merge_cancelled").inc();
                    }
                    w.last_updated = Some(at);
                } else {
                    w.due.get_or_insert(at + window);
                    scheduled = true;
                }
            }
            if !scheduled {
                counter("cluster_updated").inc();
            }
        }
        if merges.get(&key).is_some_and(|w| w.due.is_some()) {
            held.insert(p);
        }
    }
    fresh
        .iter()
        .map(|h| {
            let kept = held
                .contains(&h.priority)
                .then(|| {
                    workers
                        .iter()
                        .find(|o| o.address == h.address && o.priority == h.priority)
                })
                .flatten();
            kept.unwrap_or(h).clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(port: u16, failed: bool) -> Host {
        let mut h = Host::destination("c", format!("10.0.0.1:{port}").parse().expect("address"));
        h.checks.failed = failed;
        h
    }

    /// What the counters say, in the order Envoy's admin lists them.
    fn counts(main: &Shard) -> [u64; 4] {
        [
            "cluster_updated",
            "cluster_updated_via_merge",
            "update_merge_cancelled",
            "update_out_of_merge_window",
        ]
        .map(|n| main.counter(&format!("cluster_manager.{n}")).value())
    }

    #[test]
    fn checks_merge_within_the_window_and_discovery_cancels_the_merge() {
        let main = Shard::with_matcher(None);
        let mut merges = HashMap::new();
        let hour = Duration::from_secs(3600);
        let a = vec![host(1, false), host(2, false)];
        // The first change: out of any window, at once.
        let b = vec![host(1, true), host(2, false)];
        let w = hosts(&mut merges, &main, "c", hour, (&a, &a), &b);
        assert_eq!(w, b);
        assert_eq!(counts(&main), [1, 0, 0, 1]);
        // The next within the window: held, the workers keep what they have.
        let c = vec![host(1, true), host(2, true)];
        let w = hosts(&mut merges, &main, "c", hour, (&b, &b), &c);
        assert_eq!(w, b);
        assert!(merges[&("c".to_string(), 0)].due.is_some());
        assert_eq!(counts(&main), [1, 0, 0, 1]);
        // Discovery adds a host: at once, with what was held.
        let mut d = c.clone();
        d.push(host(3, false));
        let w = hosts(&mut merges, &main, "c", hour, (&b, &c), &d);
        assert_eq!(w, d);
        assert!(merges[&("c".to_string(), 0)].due.is_none());
        assert_eq!(counts(&main), [2, 0, 1, 1]);
        // With no window, nothing is held or counted as out of one.
        let e = vec![host(1, false), host(2, true), host(3, false)];
        let w = hosts(
            &mut HashMap::new(),
            &main,
            "c",
            Duration::ZERO,
            (&d, &d),
            &e,
        );
        assert_eq!(w, e);
        assert_eq!(counts(&main), [3, 0, 1, 1]);
    }
}
