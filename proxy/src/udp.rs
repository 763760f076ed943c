//! UDP listeners and `envoy.filters.udp_listener.udp_proxy`, as Envoy runs them: each client
//! address gets a session, a socket connected to a host of the route's cluster (picked by the
//! cluster's load balancer, with the proxy's hash policy), which carries the client's
//! datagrams to the host and the host's back to the client until the session is idle for
//! `idle_timeout`. Stats as Envoy's: `udp.<stat_prefix>.*` and `cluster.<name>.udp.*`; a
//! session's access log line when it ends.
//!
//! A UDP listener runs on the first worker, with the clusters and load balancers of that
//! worker.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::config::model::{UdpHash, UdpListener, UdpRoute};
use crate::stats::{Counter, Gauge, Shard};
use crate::stream_info::StreamInfo;
use crate::upstream::Host;
use crate::worker::Worker;

/// `udp.<stat_prefix>.*`.
struct Stats {
    no_route: Counter,
    rx_bytes: Counter,
    rx_datagrams: Counter,
    rx_errors: Counter,
    total: Counter,
    tx_bytes: Counter,
    tx_datagrams: Counter,
    tx_errors: Counter,
    idle_timeout: Counter,
    active: Gauge,
}

impl Stats {
    fn new(shard: &Shard, prefix: &str) -> Stats {
        let c = |n: &str| shard.counter(&format!("udp.{prefix}.{n}"));
        // Made with the others, as Envoy makes them; skiff runs no session filters.
        c("session_filter_config_missing");
        Stats {
            no_route: c("downstream_sess_no_route"),
            rx_bytes: c("downstream_sess_rx_bytes"),
            rx_datagrams: c("downstream_sess_rx_datagrams"),
            rx_errors: c("downstream_sess_rx_errors"),
            total: c("downstream_sess_total"),
            tx_bytes: c("downstream_sess_tx_bytes"),
            tx_datagrams: c("downstream_sess_tx_datagrams"),
            tx_errors: c("downstream_sess_tx_errors"),
            idle_timeout: c("idle_timeout"),
            active: shard.gauge(&format!("udp.{prefix}.downstream_sess_active")),
        }
    }
}

/// `cluster.<name>.udp.*`.
struct ClusterStats {
    rx_datagrams: Counter,
    rx_errors: Counter,
    tx_datagrams: Counter,
    tx_errors: Counter,
}

impl ClusterStats {
    fn new(shard: &Shard, cluster: &str) -> ClusterStats {
        let c = |n: &str| shard.counter(&format!("cluster.{cluster}.udp.{n}"));
        for n in [
            "sess_rx_datagrams_dropped",
            "sess_tunnel_success",
            "sess_tunnel_failure",
            "sess_tunnel_buffer_overflow",
        ] {
            c(n);
        }
        ClusterStats {
            rx_datagrams: c("sess_rx_datagrams"),
            rx_errors: c("sess_rx_errors"),
            tx_datagrams: c("sess_tx_datagrams"),
            tx_errors: c("sess_tx_errors"),
        }
    }
}

/// A session's client, and its host under per-packet load balancing.
type SessionKey = (SocketAddr, Option<SocketAddr>);

/// One client's session.
struct Session {
    upstream: Rc<UdpSocket>,
    host: Rc<Host>,
    /// The cluster as it was when the session last checked its host.
    cluster: Rc<crate::upstream::Cluster>,
    cluster_stats: Rc<ClusterStats>,
    last: Rc<Cell<Instant>>,
    /// Bytes from the client and to it, for the access log.
    bytes: Rc<Cell<(u64, u64)>>,
    started: (std::time::SystemTime, Instant),
    /// Its place under the cluster's `max_connections`.
    _held: Option<crate::upstream::circuit_breaker::Held>,
    /// Ends the session's tasks when it is removed.
    _end: tokio::sync::oneshot::Sender<()>,
}

/// A running UDP listener.
struct Proxy {
    worker: Rc<Worker>,
    config: Arc<UdpListener>,
    socket: Rc<UdpSocket>,
    local: SocketAddr,
    stats: Stats,
    sessions: RefCell<HashMap<SessionKey, Session>>,
    cluster_stats: RefCell<HashMap<Arc<str>, Rc<ClusterStats>>>,
}

/// Serves `config` on `socket` until the worker stops.
pub async fn run(worker: Rc<Worker>, config: Arc<UdpListener>, socket: std::net::UdpSocket) {
    let socket = match UdpSocket::from_std(socket) {
        Ok(s) => Rc::new(s),
        Err(e) => {
            tracing::error!(listener = %config.name, error = %e, "cannot use UDP socket");
            return;
        }
    };
    let local = socket.local_addr().unwrap_or(config.address);
    let proxy = Rc::new(Proxy {
        stats: Stats::new(&worker.shard, &config.proxy.stat_prefix),
        worker,
        config,
        socket,
        local,
        sessions: RefCell::default(),
        cluster_stats: RefCell::default(),
    });
    // One byte over the limit tells a datagram that is too long from one that fits.
    let mut buf = vec![0u8; proxy.config.max_datagram + 1];
    loop {
        match proxy.socket.recv_from(&mut buf).await {
            Ok((n, peer)) if n <= proxy.config.max_datagram => {
                proxy.on_datagram(peer, &buf[..n]).await;
            }
            // Too long: dropped, as Envoy drops a datagram the kernel cut short (counted by
            // its listener, not the proxy).
            Ok((n, peer)) => {
                tracing::debug!(listener = %proxy.config.name, %peer, bytes = n, "UDP datagram over max_rx_datagram_size dropped");
            }
            Err(e) => {
                tracing::debug!(listener = %proxy.config.name, error = %e, "UDP receive failed");
                proxy.stats.rx_errors.inc();
            }
        }
    }
}

impl Proxy {
    /// The cluster a datagram from `peer` goes to.
    fn route(&self, peer: SocketAddr) -> Option<&str> {
        match &self.config.proxy.route {
            UdpRoute::Cluster(c) => Some(c),
            UdpRoute::Matcher(m) => {
                let headers = http::HeaderMap::new();
                let view = crate::router::RequestView::get("", &headers);
                let none = skiff_config::filter_chain_match::ApplicationProtocols::None;
                let data = skiff_config::matcher::Data {
                    view: &view,
                    source: peer,
                    direct_source: peer.ip(),
                    local: self.local,
                    server_name: None,
                    transport_protocol: "",
                    application_protocols: &none,
                    metadata: None,
                };
                m.evaluate(&data).map(String::as_str)
            }
        }
    }

    fn hash(&self, peer: SocketAddr) -> Option<u64> {
        Some(match self.config.proxy.hash.as_ref()? {
            UdpHash::SourceIp => crate::upstream::hashing::xxhash(peer.ip().to_string().as_bytes()),
            UdpHash::Key(k) => crate::upstream::hashing::xxhash(k.as_bytes()),
        })
    }

    fn cluster_stats(&self, cluster: &Arc<str>) -> Rc<ClusterStats> {
        self.cluster_stats
            .borrow_mut()
            .entry(cluster.clone())
            .or_insert_with(|| Rc::new(ClusterStats::new(&self.worker.shard, cluster)))
            .clone()
    }

    /// The cluster and host for a new session of `peer`; `None` (counted) when there is no
    /// route, no room under the cluster's `max_connections` breaker (which bounds the
    /// sessions, as Envoy's) or no healthy host.
    fn pick(&self, peer: SocketAddr) -> Option<(Rc<crate::upstream::Cluster>, Rc<Host>)> {
        let Some(cluster) = self.route(peer).and_then(|c| self.worker.clusters.get(c)) else {
            self.stats.no_route.inc();
            return None;
        };
        if cluster.info.breakers.of(false).connections.at_limit() {
            // Envoy has counted the session it then fails to make.
            self.stats.total.inc();
            cluster.stats.upstream_cx_overflow.inc();
            return None;
        }
        let Some(host) =
            cluster.select_host_hashed(self.local, |_| false, self.hash(peer), 0, None)
        else {
            cluster.stats.upstream_cx_none_healthy.inc();
            return None;
        };
        Some((cluster, host))
    }

    async fn on_datagram(self: &Rc<Self>, peer: SocketAddr, data: &[u8]) {
        // Under per-packet load balancing each datagram picks a host, and a client has a
        // session per host it was sent to.
        let (key, picked) = if self.config.proxy.per_packet {
            let Some((cluster, host)) = self.pick(peer) else {
                return;
            };
            ((peer, Some(host.address)), Some((cluster, host)))
        } else {
            ((peer, None), None)
        };
        if !self.host_still_serves(key) {
            let gone = self.sessions.borrow_mut().remove(&key);
            if let Some(s) = gone {
                self.closed(key.0, s);
            }
        }
        let existing = self.sessions.borrow().get(&key).map(|s| {
            (
                s.upstream.clone(),
                s.cluster_stats.clone(),
                s.last.clone(),
                s.bytes.clone(),
            )
        });
        let (upstream, cluster_stats, last, bytes) = match existing {
            Some(s) => s,
            None => {
                let Some((cluster, host)) = picked.or_else(|| self.pick(peer)) else {
                    return;
                };
                match self.open(key, cluster, host).await {
                    Some(s) => s,
                    None => return,
                }
            }
        };
        // Counted once a session carries it (a datagram with no route or host is not).
        self.stats.rx_datagrams.inc();
        self.stats.rx_bytes.add(data.len() as u64);
        last.set(Instant::now());
        let (rx, tx) = bytes.get();
        bytes.set((rx + data.len() as u64, tx));
        match upstream.send(data).await {
            Ok(_) => cluster_stats.tx_datagrams.inc(),
            Err(e) => {
                tracing::debug!(error = %e, "UDP send upstream failed");
                cluster_stats.tx_errors.inc();
            }
        }
    }

    /// Whether session `key` (if there is one) may go on: its cluster still has its host,
    /// healthy. Looked at again only when the worker's cluster changed (an update, a health
    /// change), so a datagram costs one pointer comparison otherwise. A session whose host went
    /// away or failed ends, and the next datagram picks another host, as Envoy's do.
    fn host_still_serves(&self, key: SessionKey) -> bool {
        let mut sessions = self.sessions.borrow_mut();
        let Some(s) = sessions.get_mut(&key) else {
            return true;
        };
        let Some(now) = self.worker.clusters.get(&s.cluster.name) else {
            return false;
        };
        if Rc::ptr_eq(&now, &s.cluster) {
            return true;
        }
        let serves = now
            .hosts
            .iter()
            .any(|h| h.address == s.host.address && h.healthy);
        s.cluster = now;
        serves
    }

    /// A new session `key` to `host`.
    #[allow(clippy::type_complexity)]
    async fn open(
        self: &Rc<Self>,
        key: SessionKey,
        cluster: Rc<crate::upstream::Cluster>,
        host: Rc<Host>,
    ) -> Option<(
        Rc<UdpSocket>,
        Rc<ClusterStats>,
        Rc<Cell<Instant>>,
        Rc<Cell<(u64, u64)>>,
    )> {
        let bind: SocketAddr = if host.address.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let upstream = match UdpSocket::bind(bind).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "UDP upstream socket");
                return None;
            }
        };
        if let Err(e) = upstream.connect(host.address).await {
            tracing::debug!(error = %e, upstream = %host.address, "UDP connect failed");
            return None;
        }
        let upstream = Rc::new(upstream);
        // The session holds a connection of the cluster's breaker while it lives.
        let held = cluster.info.breakers.of(false).connections.try_acquire();
        let cluster_stats = self.cluster_stats(&cluster.name);
        let last = Rc::new(Cell::new(Instant::now()));
        let bytes = Rc::new(Cell::new((0, 0)));
        let (end, ended) = tokio::sync::oneshot::channel();
        self.stats.total.inc();
        self.stats.active.inc();
        self.sessions.borrow_mut().insert(
            key,
            Session {
                upstream: upstream.clone(),
                host: host.clone(),
                cluster: cluster.clone(),
                cluster_stats: cluster_stats.clone(),
                last: last.clone(),
                bytes: bytes.clone(),
                started: (std::time::SystemTime::now(), Instant::now()),
                _held: held,
                _end: end,
            },
        );
        let proxy = self.clone();
        let (up, stats, seen, counted) = (
            upstream.clone(),
            cluster_stats.clone(),
            last.clone(),
            bytes.clone(),
        );
        tokio::task::spawn_local(async move {
            tokio::select! {
                _ = proxy.upstream_to_client(key, &up, &stats, &seen, &counted) => {}
                _ = ended => {}
            }
        });
        Some((upstream, cluster_stats, last, bytes))
    }

    /// Carries the host's datagrams to the client, and ends the session once it is idle.
    async fn upstream_to_client(
        self: &Rc<Self>,
        key: SessionKey,
        upstream: &UdpSocket,
        stats: &ClusterStats,
        last: &Cell<Instant>,
        bytes: &Cell<(u64, u64)>,
    ) {
        let peer = key.0;
        let mut buf = vec![0u8; self.config.proxy.max_upstream_datagram + 1];
        loop {
            let idle = async {
                match self.config.proxy.idle_timeout {
                    Some(t) => loop {
                        let at = last.get() + t;
                        if Instant::now() >= at {
                            break;
                        }
                        tokio::time::sleep_until(at).await;
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = upstream.recv(&mut buf) => match r {
                    Ok(n) if n <= self.config.proxy.max_upstream_datagram => {
                        stats.rx_datagrams.inc();
                        last.set(Instant::now());
                        match self.socket.send_to(&buf[..n], peer).await {
                            Ok(_) => {
                                self.stats.tx_datagrams.inc();
                                self.stats.tx_bytes.add(n as u64);
                                let (rx, tx) = bytes.get();
                                bytes.set((rx, tx + n as u64));
                            }
                            Err(_) => self.stats.tx_errors.inc(),
                        }
                    }
                    Ok(_) => stats.rx_errors.inc(),
                    // An ICMP error for an earlier datagram (the host's port closed).
                    Err(_) => stats.rx_errors.inc(),
                },
                _ = idle => {
                    self.stats.idle_timeout.inc();
                    let gone = self.sessions.borrow_mut().remove(&key);
                    if let Some(s) = gone {
                        self.closed(peer, s);
                    }
                    return;
                }
            }
        }
    }

    /// A session is over: counted out and logged.
    fn closed(&self, peer: SocketAddr, s: Session) {
        self.stats.active.dec();
        if self.config.proxy.access_logs.is_empty() {
            return;
        }
        let mut info = StreamInfo::new(peer, self.local);
        (info.start_time, info.start) = (s.started.0, s.started.1.into_std());
        let (rx, tx) = s.bytes.get();
        info.bytes_received = rx;
        info.bytes_sent = tx;
        // The host, not the cluster: Envoy's session record names none.
        info.upstream_host = Some(s.host.address);
        info.finish();
        self.worker
            .access_log
            .log(&self.config.proxy.access_logs, &info);
    }
}
