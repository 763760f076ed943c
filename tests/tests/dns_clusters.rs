//! STRICT_DNS and LOGICAL_DNS clusters side by side with Envoy 1.40: each proxy resolves
//! through a DNS server of the test's own (answers, TTLs and failures under the test's
//! control) and sends traffic to upstreams on several loopback addresses; after each change of
//! the answer both proxies must send traffic to the same upstreams and count the same updates.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_tests::client::{get, http1_once};
use skiff_tests::config::{bootstrap, hcm, listener, route, to_yaml, vhost};
use skiff_tests::dns::{DnsServer, Zone};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for, Kind, ProxyProcess};

const NAME: &str = "svc.test";

/// The loopback addresses the upstreams listen on (the DNS answers name them).
fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// One proxy with its DNS server and an upstream on each of 127.0.0.2..=127.0.0.4 (one port).
struct Side {
    kind: Kind,
    proxy: ProxyProcess,
    dns: DnsServer,
    listen: u16,
    _ups: Vec<EchoUpstream>,
}

async fn upstreams(close: bool) -> (u16, Vec<EchoUpstream>) {
    // A port free on all three addresses.
    'again: loop {
        let port = free_port();
        let mut ups = Vec::new();
        for n in 2..=4u8 {
            let mut o = EchoOptions::named(&format!("u{n}"));
            if close {
                o.extra_headers.push(("connection".into(), "close".into()));
            }
            let at = SocketAddr::new(ip(n), port);
            if std::net::TcpListener::bind(at).is_err() {
                continue 'again;
            }
            ups.push(EchoUpstream::with_options_at(o, at).await);
        }
        return (port, ups);
    }
}

fn cluster(kind: &str, dns_port: u16, up_port: u16, extra: Value) -> Value {
    let mut c = legacy_cluster(kind, dns_port, up_port, extra);
    if let Some(logical) = kind.strip_prefix("extension:") {
        // The `envoy.cluster.dns` extension form of the same cluster (as Envoy Gateway writes).
        let mut dns = json!({
            "@type": "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster",
            "all_addresses_in_single_endpoint": logical == "LOGICAL_DNS"
        });
        if let Some(o) = c.as_object_mut() {
            o.remove("type");
            for k in [
                "dns_lookup_family",
                "typed_dns_resolver_config",
                "dns_refresh_rate",
                "respect_dns_ttl",
            ] {
                if let Some(v) = o.remove(k) {
                    dns[k] = v;
                }
            }
            o.insert(
                "cluster_type".into(),
                json!({ "name": "envoy.cluster.dns", "typed_config": dns }),
            );
        }
    }
    c
}

fn legacy_cluster(kind: &str, dns_port: u16, up_port: u16, extra: Value) -> Value {
    let mut c = json!({
        "name": "svc",
        "type": kind,
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_ONLY",
        "typed_dns_resolver_config": {
            "name": "envoy.network.dns_resolver.cares",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
                "resolvers": [ { "socket_address": { "address": "127.0.0.1", "port_value": dns_port } } ],
                "dns_resolver_options": { "no_default_search_domain": true },
                "query_timeout_seconds": 1,
                "query_tries": 1
            }
        },
        "load_assignment": {
            "cluster_name": "svc",
            "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": { "socket_address": {
                "address": NAME, "port_value": up_port } } } } ] } ]
        }
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

impl Side {
    async fn start(kind: Kind, cluster_type: &str, extra: Value, first: Zone, close: bool) -> Side {
        let dns = DnsServer::start().await;
        dns.set(NAME, first);
        let (up_port, ups) = upstreams(close).await;
        let (admin, listen) = (free_port(), free_port());
        let yaml = to_yaml(&bootstrap(
            admin,
            vec![listener(
                "l",
                "127.0.0.1",
                listen,
                hcm("h", vec![vhost("v", &["*"], vec![route("/", "svc")])]),
            )],
            vec![cluster(cluster_type, dns.addr.port(), up_port, extra)],
        ));
        let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
        Side {
            kind,
            proxy,
            dns,
            listen,
            _ups: ups,
        }
    }

    /// The upstream (or status) each of `n` requests reached, sorted.
    async fn spread(&self, n: usize) -> Vec<String> {
        let addr = format!("127.0.0.1:{}", self.listen);
        let mut out = Vec::new();
        for _ in 0..n {
            let r = http1_once(&addr, get("/", "dns.example.com")).await;
            out.push(match r {
                Ok(r) if r.status == 200 => r.header("x-upstream").unwrap_or("?").to_string(),
                Ok(r) => format!("{} {}", r.status, r.text().trim()),
                Err(e) => format!("error {e}"),
            });
        }
        out.sort();
        out.dedup();
        out
    }

    /// Waits until requests reach exactly `want` (sorted, distinct).
    async fn wait_spread(&self, want: &[&str], limit: Duration, what: &str) {
        let start = Instant::now();
        loop {
            let got = self.spread(8).await;
            if got == want {
                return;
            }
            if start.elapsed() > limit {
                panic!(
                    "{}: {what}: requests reach {got:?}, not {want:?}\n{}",
                    self.kind.name(),
                    self.proxy.logs_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn counter(&self, name: &str) -> u64 {
        self.proxy
            .admin()
            .stat(&format!("cluster.svc.{name}"))
            .await
            .unwrap_or(0)
    }
}

async fn pair(cluster_type: &str, extra: Value, first: Zone, close: bool) -> [Side; 2] {
    [
        Side::start(
            Kind::Envoy,
            cluster_type,
            extra.clone(),
            first.clone(),
            close,
        )
        .await,
        Side::start(Kind::under_test(), cluster_type, extra, first, close).await,
    ]
}

async fn both_reach(sides: &[Side; 2], want: &[&str], what: &str) {
    for s in sides {
        s.wait_spread(want, Duration::from_secs(5), what).await;
    }
}

#[tokio::test]
async fn strict_dns_follows_the_answers_and_keeps_its_hosts_on_failure_as_envoy_does() {
    run_for(Duration::from_secs(120), async {
        let sides = pair(
            "STRICT_DNS",
            json!({ "dns_refresh_rate": "0.3s" }),
            Zone::Addresses(vec![ip(2)], 30),
            false,
        )
        .await;
        both_reach(&sides, &["u2"], "the first answer").await;
        // `/clusters` shows the host with the name it was resolved from.
        let mut shown = Vec::new();
        for s in &sides {
            let text = s.proxy.admin().get("/clusters").await.text();
            let port = s._ups[0].addr.port().to_string();
            let mut lines: Vec<String> = text
                .lines()
                .filter(|l| {
                    [
                        "::hostname::",
                        "::weight::",
                        "::health_flags::",
                        "_priority::max_",
                    ]
                    .iter()
                    .any(|k| l.contains(k))
                })
                .map(|l| l.replace(&port, "PORT"))
                .collect();
            lines.sort();
            shown.push(lines);
        }
        assert_eq!(shown[0], shown[1], "/clusters");
        assert!(shown[1].iter().any(|l| l.ends_with("::hostname::svc.test")));
        for name in [
            "membership_total",
            "membership_healthy",
            "membership_change",
        ] {
            assert_eq!(
                sides[0].counter(name).await,
                sides[1].counter(name).await,
                "{name}"
            );
        }
        for s in &sides {
            s.dns.set(NAME, Zone::Addresses(vec![ip(2), ip(3)], 30));
        }
        both_reach(&sides, &["u2", "u3"], "an answer with two addresses").await;
        for s in &sides {
            s.dns.set(NAME, Zone::Addresses(vec![ip(4)], 30));
        }
        both_reach(&sides, &["u4"], "an answer with another address").await;
        // SERVFAIL: the hosts found last stay.
        let before: Vec<u64> = [
            sides[0].counter("update_failure").await,
            sides[1].counter("update_failure").await,
        ]
        .to_vec();
        for s in &sides {
            s.dns.set(NAME, Zone::ServFail);
        }
        for (s, b) in sides.iter().zip(&before) {
            s.proxy
                .admin()
                .wait_stat("cluster.svc.update_failure", Duration::from_secs(5), |v| {
                    v > *b
                })
                .await;
        }
        both_reach(&sides, &["u4"], "a failed resolution keeps the last hosts").await;
        // The counts of the same sequence agree (not the totals: they depend on timing).
        for s in &sides {
            assert!(s.counter("update_attempt").await >= 4, "{}", s.kind.name());
            assert!(s.counter("update_success").await >= 3, "{}", s.kind.name());
        }
        // NXDOMAIN: an answer without addresses, which leaves no host (unlike SERVFAIL).
        for s in &sides {
            s.dns.set(NAME, Zone::NxDomain);
        }
        both_reach(&sides, &["503 no healthy upstream"], "NXDOMAIN").await;
        for name in [
            "membership_total",
            "membership_healthy",
            "membership_change",
        ] {
            assert_eq!(
                sides[0].counter(name).await,
                sides[1].counter(name).await,
                "{name}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn respect_dns_ttl_refreshes_after_the_answers_ttl_as_envoy_does() {
    run_for(Duration::from_secs(120), async {
        // A refresh rate far beyond the test: only the TTL can bring the change.
        let sides = pair(
            "STRICT_DNS",
            json!({ "dns_refresh_rate": "60s", "respect_dns_ttl": true }),
            Zone::Addresses(vec![ip(2)], 1),
            false,
        )
        .await;
        both_reach(&sides, &["u2"], "the first answer").await;
        for s in &sides {
            s.dns.set(NAME, Zone::Addresses(vec![ip(3)], 1));
        }
        both_reach(&sides, &["u3"], "after the TTL").await;
        // Queries came about once a second on both sides.
        for s in &sides {
            let q = s.dns.queries(NAME, "A");
            assert!(q.len() >= 2, "{}: {q:?}", s.kind.name());
            for w in q.windows(2) {
                let gap = w[1].at - w[0].at;
                assert!(
                    gap >= Duration::from_millis(800) && gap <= Duration::from_millis(2500),
                    "{}: queries {gap:?} apart with a TTL of 1 s",
                    s.kind.name()
                );
            }
        }
    })
    .await;
}

#[tokio::test]
async fn without_respect_dns_ttl_the_refresh_rate_rules() {
    run_for(Duration::from_secs(60), async {
        let sides = pair(
            "STRICT_DNS",
            json!({ "dns_refresh_rate": "60s" }),
            Zone::Addresses(vec![ip(2)], 1),
            false,
        )
        .await;
        both_reach(&sides, &["u2"], "the first answer").await;
        for s in &sides {
            s.dns.set(NAME, Zone::Addresses(vec![ip(3)], 1));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        for s in &sides {
            assert_eq!(s.spread(4).await, ["u2"], "{}", s.kind.name());
            assert_eq!(s.dns.queries(NAME, "A").len(), 1, "{}", s.kind.name());
        }
    })
    .await;
}

#[tokio::test]
async fn logical_dns_uses_the_first_address_of_the_answer_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        // The upstreams close each connection, so that no pooled connection to an old
        // address hides which address new connections go to.
        let sides = pair(
            "LOGICAL_DNS",
            json!({ "dns_refresh_rate": "0.3s" }),
            Zone::Addresses(vec![ip(3), ip(2)], 30),
            true,
        )
        .await;
        both_reach(&sides, &["u3"], "the first address").await;
        for s in &sides {
            s.dns.set(NAME, Zone::Addresses(vec![ip(4), ip(3)], 30));
        }
        both_reach(&sides, &["u4"], "a new first address").await;
        // An empty answer is a failure for LOGICAL_DNS: the address stays.
        for s in &sides {
            s.dns.set(NAME, Zone::NxDomain);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        both_reach(&sides, &["u4"], "after NXDOMAIN").await;
        for s in &sides {
            assert!(
                s.counter("update_failure").await >= 1,
                "{}: NXDOMAIN counts as a failure",
                s.kind.name()
            );
        }
    })
    .await;
}

#[tokio::test]
async fn logical_dns_moves_on_to_the_next_address_when_the_first_refuses_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        // Nothing listens on 127.0.0.5: its connections are refused, and the host's next
        // address (happy eyeballs over the whole answer) takes them.
        let sides = pair(
            "LOGICAL_DNS",
            json!({ "dns_refresh_rate": "0.3s" }),
            Zone::Addresses(vec![ip(5), ip(3), ip(2)], 30),
            true,
        )
        .await;
        both_reach(&sides, &["u3"], "the first address that answers").await;
    })
    .await;
}

#[tokio::test]
async fn close_connections_on_host_set_change_drains_the_kept_hosts_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        // Keep-alive upstreams: a host's connection is reused until something closes it.
        for (drain, want) in [(true, 3), (false, 2)] {
            let sides = pair(
                "STRICT_DNS",
                json!({ "dns_refresh_rate": "0.3s",
                        "common_lb_config": { "close_connections_on_host_set_change": drain } }),
                Zone::Addresses(vec![ip(2), ip(3)], 30),
                false,
            )
            .await;
            both_reach(&sides, &["u2", "u3"], "both hosts").await;
            for s in &sides {
                s.dns.set(NAME, Zone::Addresses(vec![ip(2)], 30));
            }
            both_reach(&sides, &["u2"], "the host kept").await;
            for s in &sides {
                // One connection to each host, then (draining) a new one to the host kept.
                assert_eq!(
                    s.counter("upstream_cx_total").await,
                    want,
                    "{}: close_connections_on_host_set_change {drain}",
                    s.kind.name()
                );
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_dns_cluster_is_ready_after_its_first_resolution_even_a_failed_one() {
    run_for(Duration::from_secs(60), async {
        // The server is silent: the first query times out (1 s, one try) and fails. The proxy
        // becomes ready anyway, with no host; the answer set later brings traffic.
        let sides = pair(
            "STRICT_DNS",
            json!({ "dns_refresh_rate": "0.3s" }),
            Zone::Silent,
            false,
        )
        .await;
        for s in &sides {
            assert_eq!(
                s.spread(2).await,
                ["503 no healthy upstream"],
                "{}",
                s.kind.name()
            );
            assert!(s.counter("update_failure").await >= 1, "{}", s.kind.name());
            s.dns.set(NAME, Zone::Addresses(vec![ip(2)], 30));
        }
        both_reach(&sides, &["u2"], "the answer after the failure").await;
    })
    .await;
}

#[tokio::test]
async fn the_dns_cluster_extension_form_resolves_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        let sides = pair(
            "extension:STRICT_DNS",
            json!({ "dns_refresh_rate": "0.3s" }),
            Zone::Addresses(vec![ip(2), ip(3)], 30),
            false,
        )
        .await;
        both_reach(&sides, &["u2", "u3"], "the first answer").await;
        for s in &sides {
            s.dns.set(NAME, Zone::Addresses(vec![ip(4)], 30));
        }
        both_reach(&sides, &["u4"], "a changed answer").await;
        let sides = pair(
            "extension:LOGICAL_DNS",
            json!({ "dns_refresh_rate": "0.3s" }),
            Zone::Addresses(vec![ip(3), ip(2)], 30),
            true,
        )
        .await;
        both_reach(&sides, &["u3"], "LOGICAL_DNS: the first address").await;
    })
    .await;
}
