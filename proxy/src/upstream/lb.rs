//! Load balancers, one per cluster and worker, as Envoy's: round robin (weighted: an earliest
//! deadline first schedule), least request (power of `choice_count` choices; weighted: EDF on
//! weight / (active + 1)^bias) and random; and the healthy panic threshold, below which
//! every host takes traffic whatever its health.

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::config::model::LbPolicy;

/// Envoy's default overprovisioning factor (1.4), in percent.
const OVERPROVISIONING: u64 = 140;

#[derive(Debug, Clone, Copy)]
struct Entry {
    deadline: f64,
    order: u64,
    index: usize,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.deadline
            .total_cmp(&other.deadline)
            .then(self.order.cmp(&other.order))
    }
}

/// Envoy's EDF scheduler: each entry is due 1/weight after its last pick; the earliest due
/// (first added on a tie) is picked next.
#[derive(Debug, Default)]
pub struct Edf {
    heap: BinaryHeap<Reverse<Entry>>,
    now: f64,
    order: u64,
}

impl Edf {
    /// A schedule of `indices` with their weights.
    pub fn new(indices: impl IntoIterator<Item = (usize, f64)>) -> Self {
        let mut e = Edf::default();
        for (index, w) in indices {
            e.add(index, w);
        }
        e
    }

    fn add(&mut self, index: usize, weight: f64) {
        let weight = if weight > 0.0 {
            weight
        } else {
            f64::MIN_POSITIVE
        };
        self.heap.push(Reverse(Entry {
            deadline: self.now + 1.0 / weight,
            order: self.order,
            index,
        }));
        self.order += 1;
    }

    /// The next index; it goes back in with the weight `weight` gives it now.
    pub fn pick(&mut self, weight: impl Fn(usize) -> f64) -> Option<usize> {
        let Reverse(e) = self.heap.pop()?;
        self.now = e.deadline;
        self.add(e.index, weight(e.index));
        Some(e.index)
    }
}

/// What the balancer knows of a host.
pub trait Candidate {
    /// Whether it may take traffic.
    fn healthy(&self) -> bool;
    /// `load_balancing_weight`.
    fn weight(&self) -> u32;
    /// Requests under way on it (all workers).
    fn active_requests(&self) -> u64;
}

/// One cluster's balancer on one worker, over the hosts it was built with.
#[derive(Debug)]
pub struct Balancer {
    policy: LbPolicy,
    /// The hosts to choose from: the healthy ones, or all of them in panic.
    candidates: Vec<usize>,
    panic: bool,
    weighted: bool,
    rr: Cell<usize>,
    edf: RefCell<Edf>,
}

impl Balancer {
    /// The balancer of `hosts` with `policy` and the panic threshold in percent.
    pub fn new<H: Candidate>(policy: LbPolicy, panic_threshold: f64, hosts: &[H]) -> Self {
        let total = hosts.len();
        let healthy: Vec<usize> = (0..total).filter(|&i| hosts[i].healthy()).collect();
        // Envoy: a priority's health is healthy/total × 1.4 capped at 100; below 100 it is in
        // panic when the healthy share is below the threshold (never with a threshold of 0).
        let health = if total == 0 {
            0
        } else {
            (OVERPROVISIONING * healthy.len() as u64 / total as u64).min(100)
        };
        let share = if total == 0 {
            0.0
        } else {
            100.0 * healthy.len() as f64 / total as f64
        };
        let panic = total > 0 && health < 100 && share < panic_threshold;
        let candidates = if panic { (0..total).collect() } else { healthy };
        let weighted = candidates
            .windows(2)
            .any(|w| hosts[w[0]].weight() != hosts[w[1]].weight());
        let edf = if weighted {
            let mut edf = Edf::new(
                candidates
                    .iter()
                    .map(|&i| (i, f64::from(hosts[i].weight()))),
            );
            // Workers start at different points of the schedule, as Envoy's do.
            for _ in 0..fastrand::usize(..candidates.len().max(1)) {
                let _ = edf.pick(|i| f64::from(hosts[i].weight()));
            }
            edf
        } else {
            Edf::default()
        };
        Balancer {
            policy,
            candidates,
            panic,
            weighted,
            // Workers start at different hosts so load spreads from the first request.
            rr: Cell::new(fastrand::usize(..)),
            edf: RefCell::new(edf),
        }
    }

    /// Whether the cluster is in panic (`lb_healthy_panic` counts each pick then).
    pub fn panic(&self) -> bool {
        self.panic
    }

    /// The index of the next host, or `None` when there is no candidate.
    pub fn pick<H: Candidate>(&self, hosts: &[H]) -> Option<usize> {
        self.pick_with(hosts, || fastrand::u64(..))
    }

    fn pick_with<H: Candidate>(
        &self,
        hosts: &[H],
        mut random: impl FnMut() -> u64,
    ) -> Option<usize> {
        let n = self.candidates.len();
        if n == 0 {
            return None;
        }
        let weight = |i: usize| f64::from(hosts[i].weight());
        match &self.policy {
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided if self.weighted => {
                self.edf.borrow_mut().pick(weight)
            }
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided => {
                let i = self.rr.get();
                self.rr.set(i.wrapping_add(1));
                Some(self.candidates[i % n])
            }
            LbPolicy::Random => Some(self.candidates[(random() % n as u64) as usize]),
            LbPolicy::LeastRequest {
                active_request_bias,
                ..
            } if self.weighted => {
                let bias = *active_request_bias;
                self.edf.borrow_mut().pick(|i| {
                    let active = hosts[i].active_requests() as f64;
                    if bias == 0.0 {
                        weight(i)
                    } else if bias == 1.0 {
                        weight(i) / (active + 1.0)
                    } else {
                        weight(i) / (active + 1.0).powf(bias)
                    }
                })
            }
            LbPolicy::LeastRequest { choice_count, .. } => {
                let mut best: Option<usize> = None;
                for _ in 0..*choice_count {
                    let i = self.candidates[(random() % n as u64) as usize];
                    best = match best {
                        Some(b) if hosts[i].active_requests() < hosts[b].active_requests() => {
                            Some(i)
                        }
                        Some(b) => Some(b),
                        None => Some(i),
                    };
                }
                best
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct H(bool, u32, u64);
    impl Candidate for H {
        fn healthy(&self) -> bool {
            self.0
        }
        fn weight(&self) -> u32 {
            self.1
        }
        fn active_requests(&self) -> u64 {
            self.2
        }
    }

    fn counts(b: &Balancer, hosts: &[H], n: usize) -> Vec<usize> {
        let mut c = vec![0; hosts.len()];
        for _ in 0..n {
            c[b.pick(hosts).expect("a host")] += 1;
        }
        c
    }

    #[test]
    fn weighted_round_robin_follows_the_weights_exactly_over_each_cycle() {
        let hosts = [H(true, 1, 0), H(true, 3, 0), H(true, 4, 0)];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts);
        assert_eq!(counts(&b, &hosts, 800), [100, 300, 400]);
        // Spread, not in runs: no host twice in a row when its weight is at most half.
        let mut last = None;
        let hosts = [H(true, 1, 0), H(true, 1, 0), H(true, 2, 0)];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts);
        for _ in 0..40 {
            let i = b.pick(&hosts);
            if i != Some(2) {
                assert_ne!(i, last);
            }
            last = i;
        }
    }

    #[test]
    fn unhealthy_hosts_are_skipped_until_the_panic_threshold() {
        // 2 of 3 healthy: 93% health, 67% share: no panic.
        let hosts = [H(true, 1, 0), H(false, 1, 0), H(true, 1, 0)];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts);
        assert!(!b.panic());
        assert_eq!(counts(&b, &hosts, 100)[1], 0);
        // 1 of 3: 33% < 50%: every host takes traffic.
        let hosts = [H(true, 1, 0), H(false, 1, 0), H(false, 1, 0)];
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts);
        assert!(b.panic());
        assert_eq!(counts(&b, &hosts, 99), [33, 33, 33]);
        // A threshold of 0 never panics: with no healthy host there is none to pick.
        let hosts = [H(false, 1, 0)];
        let b = Balancer::new(LbPolicy::RoundRobin, 0.0, &hosts);
        assert_eq!(b.pick(&hosts), None);
        let b = Balancer::new(LbPolicy::RoundRobin, 50.0, &hosts);
        assert_eq!(b.pick(&hosts), Some(0));
        // 3 of 4 healthy is 105% health: never panic, whatever the threshold.
        let hosts = [H(true, 1, 0), H(true, 1, 0), H(true, 1, 0), H(false, 1, 0)];
        assert!(!Balancer::new(LbPolicy::RoundRobin, 100.0, &hosts).panic());
    }

    #[test]
    fn least_request_takes_the_less_busy_of_its_choices() {
        let hosts = [H(true, 1, 5), H(true, 1, 0)];
        let policy = LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: 1.0,
        };
        let b = Balancer::new(policy, 50.0, &hosts);
        // Choices (0, 1) and (1, 0) both give 1; only (0, 0) gives 0.
        let mut seq = [0u64, 1, 1, 0, 0, 0].into_iter();
        let picks: Vec<_> = (0..3)
            .map(|_| b.pick_with(&hosts, || seq.next().unwrap_or(0)))
            .collect();
        assert_eq!(picks, [Some(1), Some(1), Some(0)]);
        // Weighted: EDF on weight / (active + 1).
        let hosts = [H(true, 2, 3), H(true, 1, 0)];
        let b = Balancer::new(policy_lr(), 50.0, &hosts);
        let c = counts(&b, &hosts, 300);
        assert!(c[1] > c[0], "{c:?}: 2/4 against 1/1");
    }

    fn policy_lr() -> LbPolicy {
        LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: 1.0,
        }
    }

    #[test]
    fn random_spreads_over_the_healthy_hosts() {
        let hosts = [H(true, 1, 0), H(false, 1, 0), H(true, 1, 0), H(true, 1, 0)];
        let b = Balancer::new(LbPolicy::Random, 50.0, &hosts);
        let c = counts(&b, &hosts, 3000);
        assert_eq!(c[1], 0);
        for i in [0, 2, 3] {
            assert!((800..1200).contains(&c[i]), "{c:?}");
        }
    }
}
