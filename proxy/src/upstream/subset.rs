//! The subset load balancer (Envoy's `SubsetLoadBalancer`): a cluster's hosts grouped by their
//! `envoy.lb` metadata into the subsets its `lb_subset_config` selectors define, each with its
//! own balancer of the cluster's policy; a request goes to the subset its route's
//! `metadata_match` names exactly, else to a selector's or the cluster's fallback.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::lb::Balancer;
use super::Host;
use crate::config::model::{
    LbMetadata, MatchCriteria, MetaValue, SelectorFallback, SubsetConfig, SubsetFallback,
};
use crate::stats::{Counter, Gauge, Shard};

/// Criteria: (key, value), sorted by key.
type Criteria = Vec<(String, MetaValue)>;

/// `cluster.<name>.lb_subsets_*` on one worker.
#[derive(Debug)]
struct Stats {
    active: Gauge,
    created: Counter,
    removed: Counter,
    selected: Counter,
    fallback: Counter,
    fallback_panic: Counter,
    single_host_duplicate: Gauge,
    healthy_panic: Counter,
}

impl Stats {
    fn new(shard: &Shard, prefix: &str) -> Self {
        let c = |n: &str| shard.counter(&format!("{prefix}{n}"));
        let g = |n: &str| shard.gauge(&format!("{prefix}{n}"));
        Stats {
            active: g("lb_subsets_active"),
            created: c("lb_subsets_created"),
            removed: c("lb_subsets_removed"),
            selected: c("lb_subsets_selected"),
            fallback: c("lb_subsets_fallback"),
            fallback_panic: c("lb_subsets_fallback_panic"),
            single_host_duplicate: g("lb_subsets_single_host_per_subset_duplicate"),
            healthy_panic: c("lb_healthy_panic"),
        }
    }
}

/// A group of hosts and its balancer.
#[derive(Debug)]
struct Part {
    hosts: Vec<Rc<Host>>,
    lb: Balancer,
    /// `single_host_per_subset`: this host, whatever its health (as Envoy's).
    single: Option<Rc<Host>>,
}

impl Part {
    fn pick(&self, stats: &Stats, hash: Option<u64>, attempt: u32) -> Option<Rc<Host>> {
        if let Some(h) = &self.single {
            return Some(h.clone());
        }
        let i = self.lb.pick_hashed(&self.hosts, hash, attempt);
        if self.lb.panic() {
            stats.healthy_panic.inc();
        }
        self.hosts.get(i?).cloned()
    }
}

/// One worker's subsets of a cluster.
#[derive(Debug)]
pub struct Subsets {
    config: Arc<SubsetConfig>,
    entries: HashMap<Criteria, Part>,
    /// Selectors' fallbacks by their keys (the first selector listed for a set of keys, or
    /// whose keys another's begin with, decides, as in Envoy's trie).
    fallbacks: Vec<(Vec<String>, SelectorFallback)>,
    any: Option<Part>,
    default: Option<Part>,
    stats: Stats,
    /// Its entries were counted over to the subsets that replaced it.
    handed_over: Cell<bool>,
}

/// The values a host is grouped by for `keys`: one set per combination (several with
/// `list_as_any` and list values); none when it lacks a key.
fn combinations(md: &LbMetadata, keys: &[String], list_as_any: bool) -> Vec<Criteria> {
    let mut out: Vec<Criteria> = vec![Vec::new()];
    for k in keys {
        let Some((whole, items)) = md.0.get(k) else {
            return Vec::new();
        };
        let values: Vec<&MetaValue> = if list_as_any && !items.is_empty() {
            items.iter().collect()
        } else {
            vec![whole]
        };
        out = out
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((k.clone(), (*v).clone()));
                    c
                })
            })
            .collect();
    }
    out
}

/// `scale_locality_weight`: each of `group`'s hosts with its locality's weight times the share
/// of the locality's hosts (all of them, healthy or not) in the group, rounded, as Envoy's
/// `determineLocalityWeights`.
fn scaled_locality_weights(all: &[Rc<Host>], group: &[Rc<Host>]) -> Vec<Option<u32>> {
    let count = |hosts: &[Rc<Host>], locality: u32| {
        hosts.iter().filter(|h| h.locality.0 == locality).count() as f32
    };
    group
        .iter()
        .map(|h| {
            let (locality, weight) = h.locality;
            weight.map(|w| {
                let share = (w as f32 * count(group, locality)) / count(all, locality).max(1.0);
                share.round() as u32
            })
        })
        .collect()
}

/// Whether a host meets `default_subset` (Envoy's `metadataLabelMatch`).
fn meets(md: &LbMetadata, want: &[(String, MetaValue)], list_as_any: bool) -> bool {
    want.iter().all(|(k, v)| match md.0.get(k) {
        Some((whole, items)) => whole == v || (list_as_any && items.contains(v)),
        None => false,
    })
}

impl Subsets {
    /// The subsets of `hosts` (with their metadata, in the same order); `build` makes a
    /// group's balancer, with each host's locality weight when the subset scales them. With
    /// `previous`, the subsets it had are not counted as created again.
    pub fn build(
        config: &Arc<SubsetConfig>,
        hosts: &[Rc<Host>],
        metadata: &[Arc<LbMetadata>],
        build: impl Fn(&[Rc<Host>], Option<&[Option<u32>]>) -> Balancer,
        shard: &Shard,
        prefix: &str,
        previous: Option<&Subsets>,
    ) -> Subsets {
        let cfg = config.as_ref();
        let balancer = |group: &[Rc<Host>]| {
            if cfg.scale_locality_weight {
                build(group, Some(&scaled_locality_weights(hosts, group)))
            } else {
                build(group, None)
            }
        };
        // Host indices of each subset, in host order; single-host selectors keep the first
        // host of the lowest priority.
        let mut members: HashMap<Criteria, (Vec<usize>, bool)> = HashMap::new();
        let mut order: Vec<Criteria> = Vec::new();
        // Selectors with the same keys make the same subsets (a single-host one makes them
        // single-host).
        let mut key_sets: Vec<(&[String], bool)> = Vec::new();
        for sel in &cfg.selectors {
            match key_sets.iter_mut().find(|(k, _)| *k == sel.keys.as_slice()) {
                Some(k) => k.1 |= sel.single_host,
                None => key_sets.push((&sel.keys, sel.single_host)),
            }
        }
        for (keys, single) in key_sets {
            for (i, md) in metadata.iter().enumerate() {
                for c in combinations(md, keys, cfg.list_as_any) {
                    let e = members.entry(c.clone()).or_insert_with(|| {
                        order.push(c);
                        (Vec::new(), false)
                    });
                    // Hosts come in order: a repeat (a list with a value twice) is the last.
                    if e.0.last() != Some(&i) {
                        e.0.push(i);
                    }
                    e.1 |= single;
                }
            }
        }
        let mut duplicates = 0i64;
        let mut entries = HashMap::new();
        for c in order {
            let Some((idx, single)) = members.remove(&c) else {
                continue;
            };
            let group: Vec<Rc<Host>> = idx.iter().map(|&i| hosts[i].clone()).collect();
            let single = single
                .then(|| {
                    duplicates += group.len().saturating_sub(1) as i64;
                    group.iter().min_by_key(|h| h.priority).cloned()
                })
                .flatten();
            entries.insert(
                c,
                Part {
                    lb: balancer(&group),
                    hosts: group,
                    single,
                },
            );
        }
        let mut fallbacks: Vec<(Vec<String>, SelectorFallback)> = Vec::new();
        for sel in &cfg.selectors {
            // Envoy keeps the fallback of the selector that made the trie's node for these
            // keys: the first, or an earlier one whose keys begin with these.
            let taken = fallbacks.iter().any(|(k, _)| k.starts_with(&sel.keys))
                || cfg
                    .selectors
                    .iter()
                    .take_while(|s| !std::ptr::eq(*s, sel))
                    .any(|s| s.keys.starts_with(&sel.keys));
            if !taken {
                fallbacks.push((sel.keys.clone(), sel.fallback.clone()));
            }
        }
        let uses = |want: &dyn Fn(&SelectorFallback) -> bool| {
            cfg.selectors.iter().any(|s| want(&s.fallback))
        };
        let any = (cfg.fallback == SubsetFallback::AnyEndpoint
            || cfg.panic_mode_any
            || uses(&|f| *f == SelectorFallback::AnyEndpoint))
        .then(|| Part {
            lb: balancer(hosts),
            hosts: hosts.to_vec(),
            single: None,
        });
        let default = (cfg.fallback == SubsetFallback::DefaultSubset
            || uses(&|f| *f == SelectorFallback::DefaultSubset))
        .then(|| {
            let group: Vec<Rc<Host>> = hosts
                .iter()
                .zip(metadata)
                .filter(|(_, md)| meets(md, &cfg.default_subset, cfg.list_as_any))
                .map(|(h, _)| h.clone())
                .collect();
            Part {
                lb: balancer(&group),
                hosts: group,
                single: None,
            }
        });
        let stats = Stats::new(shard, prefix);
        stats.single_host_duplicate.set(duplicates);
        count(
            &stats.active,
            &stats.created,
            &stats.removed,
            entries.keys(),
            previous.map(|p| {
                p.handed_over.set(true);
                (p.entries.len(), &p.entries)
            }),
        );
        Subsets {
            config: config.clone(),
            entries,
            fallbacks,
            any,
            default,
            stats,
            handed_over: Cell::new(false),
        }
    }

    /// A host for a request with these criteria (its route's `metadata_match`).
    pub fn pick(
        &self,
        criteria: Option<&MatchCriteria>,
        hash: Option<u64>,
        attempt: u32,
    ) -> Option<Rc<Host>> {
        let Some(c) = criteria else {
            return self.iteration(&[], hash, attempt);
        };
        match &c.fallback_list {
            // FALLBACK_LIST: each element merged over the criteria without the list, in
            // order, until one finds a host (an empty list: the criteria alone).
            Some(list) if self.config.fallback_list => {
                let base: Criteria = c
                    .keys
                    .iter()
                    .filter(|(k, _)| k != "fallback_list")
                    .cloned()
                    .collect();
                if list.is_empty() {
                    return self.iteration(&base, hash, attempt);
                }
                let base = MatchCriteria {
                    keys: base,
                    fallback_list: None,
                };
                list.iter()
                    .find_map(|e| self.iteration(&base.merged(e), hash, attempt))
            }
            _ => self.iteration(&c.keys, hash, attempt),
        }
    }

    /// Envoy's `chooseHostIteration`.
    fn iteration(
        &self,
        criteria: &[(String, MetaValue)],
        hash: Option<u64>,
        attempt: u32,
    ) -> Option<Rc<Host>> {
        if !criteria.is_empty() {
            if let Some(p) = self.entries.get(criteria) {
                self.stats.selected.inc();
                return p.pick(&self.stats, hash, attempt);
            }
            let names: Vec<&str> = criteria.iter().map(|(k, _)| k.as_str()).collect();
            let fallback = self
                .fallbacks
                .iter()
                .find(|(keys, _)| keys.iter().map(String::as_str).eq(names.iter().copied()))
                .map(|(_, f)| f);
            match fallback {
                None | Some(SelectorFallback::NotDefined) => {}
                Some(SelectorFallback::NoFallback) => return None,
                Some(SelectorFallback::AnyEndpoint) => {
                    return self.any.as_ref()?.pick(&self.stats, hash, attempt)
                }
                Some(SelectorFallback::DefaultSubset) => {
                    return self.default.as_ref()?.pick(&self.stats, hash, attempt)
                }
                Some(SelectorFallback::KeysSubset(keys)) => {
                    let fewer: Criteria = criteria
                        .iter()
                        .filter(|(k, _)| keys.contains(k))
                        .cloned()
                        .collect();
                    return self.iteration(&fewer, hash, attempt);
                }
            }
        }
        let part = match self.config.fallback {
            SubsetFallback::NoFallback => return None,
            SubsetFallback::AnyEndpoint => self.any.as_ref(),
            SubsetFallback::DefaultSubset => self.default.as_ref(),
        };
        if let Some(h) = part.and_then(|p| p.pick(&self.stats, hash, attempt)) {
            self.stats.fallback.inc();
            return Some(h);
        }
        if self.config.panic_mode_any {
            if let Some(h) = self
                .any
                .as_ref()
                .and_then(|p| p.pick(&self.stats, hash, attempt))
            {
                self.stats.fallback_panic.inc();
                return Some(h);
            }
        }
        None
    }
}

/// Counts a new set of subsets: those `previous` (its size and entries) lacked are created,
/// those it had that are gone removed; without one, all are created.
fn count<'a, V>(
    active: &Gauge,
    created: &Counter,
    removed: &Counter,
    keys: impl Iterator<Item = &'a Criteria>,
    previous: Option<(usize, &HashMap<Criteria, V>)>,
) {
    let keys: Vec<&Criteria> = keys.collect();
    let n = keys.len() as i64;
    match previous {
        Some((before, old)) => {
            created.add(keys.iter().filter(|c| !old.contains_key(**c)).count() as u64);
            let stay = keys.iter().filter(|c| old.contains_key(**c)).count();
            removed.add((before - stay) as u64);
            active.set(active.value() - before as i64 + n);
        }
        None => {
            created.add(n as u64);
            active.set(active.value() + n);
        }
    }
}

/// The subsets a cluster's hosts make, as the main thread counts them: Envoy's main thread
/// holds a subset load balancer of each cluster too, so its `lb_subsets_active`, `_created` and
/// `_removed` count each subset once more than the workers do.
#[derive(Debug)]
pub struct MainCount {
    keys: HashMap<Criteria, ()>,
    active: Gauge,
    removed: Counter,
    handed_over: std::sync::atomic::AtomicBool,
}

impl MainCount {
    /// The subsets of hosts with this metadata, counted in `main` against `previous`'s.
    pub fn new<'a>(
        config: &SubsetConfig,
        metadata: impl Iterator<Item = &'a LbMetadata> + Clone,
        main: &Shard,
        prefix: &str,
        previous: Option<&MainCount>,
    ) -> MainCount {
        let mut keys = HashMap::new();
        for sel in &config.selectors {
            for md in metadata.clone() {
                for c in combinations(md, &sel.keys, config.list_as_any) {
                    keys.insert(c, ());
                }
            }
        }
        let stats = Stats::new(main, prefix);
        count(
            &stats.active,
            &stats.created,
            &stats.removed,
            keys.keys(),
            previous.map(|p| {
                p.handed_over
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                (p.keys.len(), &p.keys)
            }),
        );
        MainCount {
            keys,
            active: stats.active,
            removed: stats.removed,
            handed_over: Default::default(),
        }
    }
}

impl Drop for MainCount {
    fn drop(&mut self) {
        if !self.handed_over.load(std::sync::atomic::Ordering::Relaxed) {
            let n = self.keys.len();
            self.active.set(self.active.value() - n as i64);
            self.removed.add(n as u64);
        }
    }
}

impl Drop for Subsets {
    fn drop(&mut self) {
        if !self.handed_over.get() {
            let n = self.entries.len();
            self.stats.active.set(self.stats.active.value() - n as i64);
            self.stats.removed.add(n as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> MetaValue {
        MetaValue(Arc::from(s))
    }

    fn md(entries: &[(&str, &str, &[&str])]) -> LbMetadata {
        LbMetadata(
            entries
                .iter()
                .map(|(k, whole, items)| {
                    (
                        k.to_string(),
                        (v(whole), items.iter().map(|i| v(i)).collect()),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn hosts_are_grouped_by_each_combination_of_their_values() {
        let host = md(&[
            ("a", "[1,2]", &["1", "2"]),
            ("b", "x", &[]),
            ("c", "y", &[]),
        ]);
        let keys = vec!["a".to_string(), "b".to_string()];
        // Without list_as_any, the list is one value.
        let one = combinations(&host, &keys, false);
        assert_eq!(
            one,
            vec![vec![("a".into(), v("[1,2]")), ("b".into(), v("x"))]]
        );
        // With it, one subset per element.
        let each = combinations(&host, &keys, true);
        assert_eq!(each.len(), 2);
        assert_eq!(each[1][0], ("a".into(), v("2")));
        // A host without a key is in no subset of it.
        assert!(combinations(&host, &["z".to_string()], true).is_empty());
    }

    #[test]
    fn the_default_subset_matches_by_value_or_list_element() {
        let host = md(&[("a", "[1,2]", &["1", "2"]), ("b", "x", &[])]);
        assert!(
            meets(&host, &[], false),
            "an empty default subset takes every host"
        );
        assert!(meets(&host, &[("b".into(), v("x"))], false));
        assert!(!meets(&host, &[("a".into(), v("1"))], false));
        assert!(meets(&host, &[("a".into(), v("1"))], true));
        assert!(!meets(&host, &[("z".into(), v("1"))], true));
    }
}
