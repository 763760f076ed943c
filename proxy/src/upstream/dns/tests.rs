//! The DNS clusters' timers with paused time: refresh rate, TTLs, jitter and failure backoff.
//! Resolutions are answered by the test (the lookup is replaced), so no DNS server is needed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use envoy_types::pb::google::protobuf::Duration as PbDuration;

use super::*;

fn pb_ms(ms: i64) -> PbDuration {
    PbDuration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A STRICT_DNS (or LOGICAL_DNS) cluster of one name, `svc.test:80`, changed by `edit`.
#[allow(deprecated)]
fn cluster(logical: bool, edit: impl FnOnce(&mut cluster_pb::Cluster)) -> Arc<model::Cluster> {
    use cluster_pb::cluster::{ClusterDiscoveryType, DiscoveryType};
    let ep = endpoint_pb::LbEndpoint {
        host_identifier: Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(
            endpoint_pb::Endpoint {
                address: Some(core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address: "svc.test".into(),
                        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(80)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let mut c = cluster_pb::Cluster {
        name: "svc".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(if logical {
            DiscoveryType::LogicalDns as i32
        } else {
            DiscoveryType::StrictDns as i32
        })),
        load_assignment: Some(endpoint_pb::ClusterLoadAssignment {
            cluster_name: "svc".into(),
            endpoints: vec![endpoint_pb::LocalityLbEndpoints {
                lb_endpoints: vec![ep],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    edit(&mut c);
    Arc::new(crate::config::resource::cluster(&c, "c", &Default::default()).expect("translates"))
}

/// A DnsClusters whose lookups record their names and wait for the test's answer.
struct Fixture {
    dns: DnsClusters,
    rx: mpsc::UnboundedReceiver<Resolved>,
    main: Arc<Shard>,
    answers: Arc<Mutex<VecDeque<Answer>>>,
    asked: Arc<Mutex<Vec<tokio::time::Instant>>>,
}

impl Fixture {
    fn new() -> Fixture {
        let main = Arc::new(Shard::default());
        let answers: Arc<Mutex<VecDeque<Answer>>> = Arc::default();
        let asked: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let (a, q) = (answers.clone(), asked.clone());
        let mut dns = DnsClusters::with_lookup(
            main.clone(),
            Box::new(move |_q: Query| {
                q.lock().expect("lock").push(Instant::now());
                let answer = a
                    .lock()
                    .expect("lock")
                    .pop_front()
                    .unwrap_or(Err("no answer set".into()));
                Box::pin(async move { answer })
            }),
        );
        let rx = dns.take_events().expect("events");
        Fixture {
            dns,
            rx,
            main,
            answers,
            asked,
        }
    }

    fn answer(&self, a: Answer) {
        self.answers.lock().expect("lock").push_back(a);
    }

    fn asked(&self) -> usize {
        self.asked.lock().expect("lock").len()
    }

    /// Waits for the next resolution to come back and takes it (with `random` as the random
    /// number); returns whether a snapshot is due.
    async fn resolve(&mut self, random: u64) -> bool {
        let r = self.rx.recv().await.expect("a resolution");
        self.dns.on_resolved_with(r, random)
    }

    /// The wait until the next resolution.
    fn wait(&self) -> Duration {
        self.dns
            .next_deadline()
            .map(|d| tokio::time::Instant::from_std(d) - Instant::now())
            .expect("a resolution is due")
    }

    fn counter(&self, n: &str) -> u64 {
        self.main.counter(&format!("cluster.svc.{n}")).value()
    }
}

fn addrs(list: &[(&str, u64)]) -> Answer {
    Ok(list
        .iter()
        .map(|(ip, ttl)| (ip.parse().expect("ip"), Duration::from_secs(*ttl)))
        .collect())
}

#[tokio::test(start_paused = true)]
async fn a_cluster_resolves_at_once_then_every_refresh_rate_and_warms_on_the_first_answer() {
    let mut f = Fixture::new();
    let c = cluster(false, |c| {
        #[allow(deprecated)]
        {
            c.dns_refresh_rate = Some(pb_ms(2000));
        }
    });
    f.answer(addrs(&[("10.0.0.1", 30), ("10.0.0.2", 30)]));
    f.dns.sync([&c]);
    assert_eq!(
        f.asked(),
        1,
        "the first resolution starts when the cluster appears"
    );
    assert!(!f.dns.ready(&c), "warming until it ends");
    assert!(f.resolve(0).await, "a new snapshot is due");
    assert!(f.dns.ready(&c));
    let hosts = f.dns.hosts(&c);
    assert_eq!(
        hosts
            .iter()
            .map(|h| h.address.to_string())
            .collect::<Vec<_>>(),
        ["10.0.0.1:80", "10.0.0.2:80"]
    );
    assert_eq!(hosts[0].hostname.as_deref(), Some("svc.test"));
    assert_eq!(f.wait(), Duration::from_secs(2), "dns_refresh_rate");
    // Nothing before the refresh rate; then the same answer changes nothing.
    tokio::time::advance(Duration::from_millis(1999)).await;
    f.dns.on_timer();
    assert_eq!(f.asked(), 1);
    tokio::time::advance(Duration::from_millis(1)).await;
    f.answer(addrs(&[("10.0.0.2", 30), ("10.0.0.1", 30)]));
    f.dns.on_timer();
    assert_eq!(f.asked(), 2);
    assert!(!f.resolve(0).await, "the same hosts: no snapshot");
    assert_eq!(f.counter("update_attempt"), 2);
    assert_eq!(f.counter("update_success"), 2);
    assert_eq!(f.counter("update_no_rebuild"), 1, "only the order changed");
}

#[tokio::test(start_paused = true)]
async fn respect_dns_ttl_waits_the_smallest_ttl_and_jitter_adds_below_its_bound() {
    let mut f = Fixture::new();
    let c = cluster(false, |c| {
        #[allow(deprecated)]
        {
            c.respect_dns_ttl = true;
            c.dns_jitter = Some(pb_ms(1000));
        }
    });
    f.answer(addrs(&[("10.0.0.1", 30), ("10.0.0.2", 7)]));
    f.dns.sync([&c]);
    f.resolve(1234).await;
    assert_eq!(
        f.wait(),
        Duration::from_millis(7000 + 234),
        "the smallest TTL, plus random % jitter"
    );
    // A TTL of 0 falls back to the refresh rate (5 s by default).
    tokio::time::advance(f.wait()).await;
    f.answer(addrs(&[("10.0.0.1", 0)]));
    f.dns.on_timer();
    f.resolve(0).await;
    assert_eq!(f.wait(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn failures_keep_the_hosts_and_back_off_with_jitter_up_to_ten_refresh_rates() {
    let mut f = Fixture::new();
    let c = cluster(false, |c| {
        #[allow(deprecated)]
        {
            c.dns_refresh_rate = Some(pb_ms(1000));
        }
    });
    f.answer(addrs(&[("10.0.0.1", 30)]));
    f.dns.sync([&c]);
    f.resolve(0).await;
    // Each failure waits random % interval, the interval doubling from the refresh rate to ten
    // times it; `u64::MAX` as the random number shows each interval's top.
    let mut waits = Vec::new();
    for _ in 0..6 {
        tokio::time::advance(f.wait()).await;
        f.answer(Err("SERVFAIL".into()));
        f.dns.on_timer();
        assert!(!f.resolve(u64::MAX).await, "a failure changes no host");
        waits.push(f.wait().as_millis());
    }
    assert_eq!(
        waits,
        [
            u64::MAX % 1000,
            u64::MAX % 2000,
            u64::MAX % 4000,
            u64::MAX % 8000,
            u64::MAX % 10000,
            u64::MAX % 10000
        ]
        .map(u128::from)
    );
    assert_eq!(f.dns.hosts(&c).len(), 1, "the last hosts stay");
    assert_eq!(f.counter("update_failure"), 6);
    // A success starts the backoff again.
    tokio::time::advance(f.wait()).await;
    f.answer(addrs(&[("10.0.0.1", 30)]));
    f.dns.on_timer();
    f.resolve(0).await;
    assert_eq!(f.wait(), Duration::from_secs(1));
    tokio::time::advance(f.wait()).await;
    f.answer(Err("timeout".into()));
    f.dns.on_timer();
    f.resolve(u64::MAX).await;
    assert_eq!(f.wait().as_millis(), u128::from(u64::MAX % 1000));
}

#[tokio::test(start_paused = true)]
async fn dns_failure_refresh_rate_sets_the_backoff() {
    let mut f = Fixture::new();
    let c = cluster(false, |c| {
        #[allow(deprecated)]
        {
            c.dns_failure_refresh_rate = Some(cluster_pb::cluster::RefreshRate {
                base_interval: Some(pb_ms(300)),
                max_interval: Some(pb_ms(500)),
            });
        }
    });
    f.answer(Err("timeout".into()));
    f.dns.sync([&c]);
    assert!(
        f.resolve(u64::MAX).await,
        "a failed first resolution warms the cluster too"
    );
    assert!(f.dns.ready(&c));
    assert_eq!(f.wait().as_millis(), u128::from(u64::MAX % 300));
    tokio::time::advance(f.wait()).await;
    f.answer(Err("timeout".into()));
    f.dns.on_timer();
    f.resolve(u64::MAX).await;
    assert_eq!(f.wait().as_millis(), u128::from(u64::MAX % 500));
}

#[tokio::test(start_paused = true)]
async fn strict_dns_takes_an_empty_answer_logical_dns_keeps_its_first_address() {
    let mut f = Fixture::new();
    let strict = cluster(false, |_| {});
    f.answer(addrs(&[("10.0.0.1", 30)]));
    f.dns.sync([&strict]);
    f.resolve(0).await;
    tokio::time::advance(f.wait()).await;
    f.answer(Ok(Vec::new()));
    f.dns.on_timer();
    assert!(f.resolve(0).await);
    assert!(f.dns.hosts(&strict).is_empty(), "NXDOMAIN leaves no host");

    let mut f = Fixture::new();
    let logical = cluster(true, |_| {});
    f.answer(addrs(&[("10.0.0.3", 30), ("10.0.0.1", 30)]));
    f.dns.sync([&logical]);
    f.resolve(0).await;
    let first = |f: &Fixture| {
        f.dns
            .hosts(&logical)
            .iter()
            .map(|h| h.address.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(first(&f), ["10.0.0.3:80"]);
    tokio::time::advance(f.wait()).await;
    f.answer(Ok(Vec::new()));
    f.dns.on_timer();
    f.resolve(0).await;
    assert_eq!(first(&f), ["10.0.0.3:80"], "an empty answer is a failure");
    assert_eq!(f.counter("update_failure"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_replaced_cluster_ignores_the_old_versions_answers() {
    let mut f = Fixture::new();
    let old = cluster(false, |_| {});
    f.answer(addrs(&[("10.0.0.1", 30)]));
    f.dns.sync([&old]);
    let new = cluster(false, |c| {
        #[allow(deprecated)]
        {
            c.dns_refresh_rate = Some(pb_ms(9000));
        }
    });
    f.answer(addrs(&[("10.0.0.2", 30)]));
    f.dns.sync([&new]);
    assert!(!f.resolve(0).await, "the old version's answer is dropped");
    assert!(f.resolve(0).await);
    assert_eq!(f.dns.hosts(&new)[0].address.to_string(), "10.0.0.2:80");
    assert!(f.dns.hosts(&old).is_empty());
}

#[test]
fn wait_for_warm_on_init_false_and_no_names_are_ready_at_once() {
    let main = Arc::new(Shard::default());
    let mut dns = DnsClusters::new(main);
    let c = cluster(false, |c| {
        #[allow(deprecated)]
        {
            c.wait_for_warm_on_init =
                Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
        }
        c.load_assignment = None;
    });
    dns.sync([&c]);
    assert!(dns.ready(&c), "no name to resolve");
    let c = cluster(false, |c| {
        c.wait_for_warm_on_init =
            Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
    });
    dns.sync([&c]);
    assert!(dns.ready(&c));
}
