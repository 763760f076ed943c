//! Listeners: one SO_REUSEPORT socket per worker, accepting connections and running the listener
//! filters and then a filter chain on each.

pub use skiff_config::filter_chain_match;
pub mod filters;
pub mod internal;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use crate::config::model::{self, NetworkFilter};
use crate::drain::{ConnectionDrain, Drain, Draining};
use crate::http::conn_manager::{self, HttpConnectionManager};
use crate::io::Stream;
use crate::network::filters::tcp_proxy::{self, TcpProxyStats};
use crate::overload;
use crate::stats::{Counter, Gauge};
use crate::stream_info::{next_connection_id, Connection};
use crate::tls::stats::TlsStats;
use crate::upstream::pool;
use crate::worker::Worker;
use filter_chain_match::{ChainChoice, ChainInput, Chains};
use filters::{Accepted, Socket as Downstream};
use skiff_config::model::{ActionName, ShedPoint};

/// Binds a listen socket for one worker. Every worker binds its own with SO_REUSEPORT so the
/// kernel spreads connections across workers without a shared accept queue.
pub fn bind(l: &model::Listener, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // ipv4_compat: IPv4 connections too, as v4-mapped addresses.
        socket.set_only_v6(!l.dual_stack.contains(&addr))?;
    }
    // TPROXY listeners accept connections for any destination (needs CAP_NET_ADMIN).
    if l.transparent {
        if addr.is_ipv6() {
            socket.set_ip_transparent_v6(true)?;
        } else {
            socket.set_ip_transparent_v4(true)?;
        }
    }
    if l.freebind {
        if addr.is_ipv6() {
            socket.set_freebind_v6(true)?;
        } else {
            socket.set_freebind_v4(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    apply_options(&socket, l, addr, model::SocketState::PreBind)?;
    socket.bind(&addr.into())?;
    apply_options(&socket, l, addr, model::SocketState::Bound)?;
    if let Some(q) = l.tcp_fast_open_queue_length.filter(|q| *q > 0) {
        let q = i32::try_from(q).unwrap_or(i32::MAX);
        skiff_sys::setsockopt_int(
            socket.as_fd(),
            libc_tcp::IPPROTO_TCP,
            libc_tcp::TCP_FASTOPEN,
            q,
        )?;
    }
    socket.listen(1024)?;
    apply_options(&socket, l, addr, model::SocketState::Listening)?;
    // Every accepted connection has TCP_NODELAY, as in Envoy. Linux copies it from the listen
    // socket to each connection accepted from it, which saves a system call per connection; set
    // last, it holds whatever the listener's socket options said.
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

/// Linux's numbers for TCP Fast Open.
mod libc_tcp {
    pub const IPPROTO_TCP: i32 = 6;
    pub const TCP_FASTOPEN: i32 = 23;
}

/// Sets the socket options of one state on the listener's socket on `addr`.
fn apply_options(
    socket: &Socket,
    l: &model::Listener,
    addr: SocketAddr,
    state: model::SocketState,
) -> std::io::Result<()> {
    for o in l
        .socket_options_at(addr)
        .iter()
        .filter(|o| o.state == state)
    {
        let r = match &o.value {
            model::SocketOptionValue::Int(v) => {
                skiff_sys::setsockopt_int(socket.as_fd(), o.level, o.name, *v)
            }
            model::SocketOptionValue::Bytes(b) => {
                skiff_sys::setsockopt(socket.as_fd(), o.level, o.name, b)
            }
        };
        r.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("socket option level {} name {}: {e}", o.level, o.name),
            )
        })?;
    }
    Ok(())
}

/// `listener.<addr>.*` on one worker.
#[derive(Debug)]
struct ListenerStats {
    downstream_cx_total: Counter,
    downstream_cx_active: Gauge,
    downstream_cx_destroy: Counter,
    worker_cx_total: Counter,
    worker_cx_active: Gauge,
    no_filter_chain_match: Counter,
    network_extension_config_missing: Counter,
    downstream_global_cx_overflow: Counter,
    downstream_cx_overload_reject: Counter,
    downstream_cx_overflow: Counter,
    downstream_cx_transport_socket_connect_timeout: Counter,
    downstream_cx_length_ms: crate::stats::Histogram,
}

/// The network filters of a chain, built for one worker.
enum Terminal {
    Http(Rc<HttpConnectionManager>),
    Tcp(Arc<model::TcpProxy>, Rc<TcpProxyStats>),
    /// A chain without network filters: Envoy accepts it and closes its connections.
    Empty,
}

/// The listeners of one worker by address, for `use_original_dst` hand-offs.
#[derive(Default)]
pub struct HandOff {
    listeners: std::cell::RefCell<Vec<Rc<Shared>>>,
}

impl HandOff {
    /// Replaces the listeners (after a configuration update).
    pub fn set(&self, listeners: Vec<Rc<Shared>>) {
        *self.listeners.borrow_mut() = listeners;
    }

    /// The listener a connection restored to `dest` belongs to: the one on exactly that
    /// address, else the one on the wildcard address of its family and port.
    fn find(&self, dest: SocketAddr) -> Option<Rc<Shared>> {
        let dest = SocketAddr::new(dest.ip().to_canonical(), dest.port());
        let all = self.listeners.borrow();
        all.iter()
            .find(|l| l.config.addresses().any(|a| a == dest))
            .or_else(|| {
                all.iter().find(|l| {
                    l.config.addresses().any(|a| {
                        a.port() == dest.port()
                            && a.ip().is_unspecified()
                            && a.is_ipv4() == dest.is_ipv4()
                    })
                })
            })
            .cloned()
    }
}

impl std::fmt::Debug for HandOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandOff")
            .field("listeners", &self.listeners.borrow().len())
            .finish()
    }
}

/// The addresses of `new` whose listen sockets it can take over from `old` (the version it
/// replaces): those both have, when the socket-level settings are the same.
pub fn kept_addresses(old: &model::Listener, new: &model::Listener) -> Vec<SocketAddr> {
    if !same_socket_settings(old, new) {
        return Vec::new();
    }
    new.addresses()
        .filter(|a| old.addresses().any(|o| o == *a))
        .collect()
}

fn same_socket_settings(old: &model::Listener, new: &model::Listener) -> bool {
    new.bind_to_port
        && old.bind_to_port
        && old.socket_options == new.socket_options
        && old.address_socket_options == new.address_socket_options
        && old.tcp_fast_open_queue_length == new.tcp_fast_open_queue_length
        && old.transparent == new.transparent
        && old.freebind == new.freebind
        && old.dual_stack == new.dual_stack
}

/// Each listener's open connections, over all workers (its connection limit's count).
static OPEN_CONNECTIONS: crate::attached::Attached<model::Listener, AtomicU64> =
    crate::attached::Attached::new();

/// One connection counted open on its listener until dropped.
struct OpenConnection(Arc<AtomicU64>);

impl OpenConnection {
    /// Counts one more connection open, unless `limit` are open already.
    fn count(open: &Arc<AtomicU64>, limit: Option<u64>) -> Option<Self> {
        open.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (limit.is_none_or(|l| n < l)).then_some(n + 1)
        })
        .ok()?;
        Some(OpenConnection(open.clone()))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener on one worker: what its connections share, and its drain. It does not hold the
/// socket, so the socket closes as soon as no accept loop uses it, while connections still run.
pub struct Shared {
    /// This listener's drain: started when it is replaced or removed, by `/drain_listeners`
    /// and at shutdown.
    pub drain: Drain,
    health_failed: Arc<std::sync::atomic::AtomicBool>,
    worker: Rc<Worker>,
    config: Arc<model::Listener>,
    /// The runtime key of this listener's connection limit, and its open connections over all
    /// workers.
    connection_limit_key: String,
    open: Arc<AtomicU64>,
    stats: ListenerStats,
    /// `listener_filters`.
    filters: filters::Chain,
    /// What picks a connection's chain.
    chain_table: Chains,
    /// `filter_chains`, in order.
    chains: Vec<Rc<Chain>>,
    /// `default_filter_chain`.
    default_chain: Option<Rc<Chain>>,
    /// `listener.<addr>.ssl.*`, when a chain terminates TLS.
    tls_stats: Option<TlsStats>,
    handoff: Rc<HandOff>,
}

/// A filter chain on one worker: its read filters in order (each may close a new
/// connection), TLS termination when configured, then the terminal network filter.
struct Chain {
    /// The chain's configuration; an in-place listener update keeps the chains whose
    /// configuration it kept (the same `Arc`), with their connections.
    model: Arc<model::FilterChain>,
    /// This chain's drain: its connections watch it.
    drain: Drain,
    /// The read filters in front of the terminal one, in order.
    gates: Vec<Gate>,
    /// `envoy.filters.network.rbac` filters, judged once TLS tells who the peer is.
    rbac: Vec<crate::http::filters::rbac::NetworkGate>,
    /// What the chain's filters put in a connection's filter state: `set_filter_state`'s
    /// values, and Istio's principals (`istio_authn`).
    filter_state: ChainState,
    /// Whether a connection's TLS is described for what reads it ([`Chain::logs`]).
    describe_tls: bool,
    /// TLS termination: the chain's settings and what they serve with.
    tls: Option<(
        Arc<crate::tls::DownstreamTls>,
        Arc<crate::tls::transport::ServerTransport>,
    )>,
    terminal: Terminal,
    /// The names of the chain's certificates, for access logs, as of the TLS configuration
    /// they were read for (made on first use, again after the files change).
    local_certs: std::cell::RefCell<Option<(Arc<rustls::ServerConfig>, Rc<LocalCerts>)>>,
}

type LocalCerts = Vec<(Vec<String>, Option<crate::stream_info::CertInfo>)>;

/// What a chain's network filters put in its connections' filter state, in filter order.
#[derive(Default)]
struct ChainState {
    /// `on_new_connection` values (before TLS), each with the number of the chain's gates in
    /// front of its filter: a gate's service sees only the values of the filters before it,
    /// and a connection it turns away gets none of those after it.
    on_new_connection: Vec<(usize, skiff_config::filter_state::Value)>,
    /// `on_downstream_tls_handshake` values.
    on_tls_handshake: Vec<skiff_config::filter_state::Value>,
    /// `istio_authn`: the SPIFFE identities, once TLS is done.
    istio_authn: bool,
}

impl ChainState {
    fn new(filters: &[NetworkFilter]) -> ChainState {
        let mut s = ChainState::default();
        let mut gates = 0;
        for f in filters {
            match f {
                NetworkFilter::SetFilterState(c) => {
                    s.on_new_connection
                        .extend(c.on_new_connection.iter().map(|v| (gates, v.clone())));
                    s.on_tls_handshake
                        .extend(c.on_tls_handshake.iter().cloned());
                }
                NetworkFilter::IstioAuthn => s.istio_authn = true,
                f if is_gate(f) => gates += 1,
                _ => {}
            }
        }
        s
    }

    /// The `on_new_connection` values of the filters between gate `at - 1` and gate `at`.
    fn on_new_connection(
        &self,
        at: usize,
        connection: &mut Connection,
        addrs: (SocketAddr, SocketAddr),
    ) {
        set_values(
            connection,
            self.on_new_connection
                .iter()
                .filter(|(g, _)| *g == at)
                .map(|(_, v)| v),
            addrs,
        );
    }

    /// Whether TLS must be described for it.
    fn reads_tls(&self) -> bool {
        self.istio_authn || !self.on_tls_handshake.is_empty()
    }

    /// Once TLS is done: the handshake's values, then Istio's principals (read-only, the
    /// first `spiffe://` URI SAN of each certificate).
    fn after_tls(&self, connection: &mut Connection, addrs: (SocketAddr, SocketAddr)) {
        set_values(connection, &self.on_tls_handshake, addrs);
        if !self.istio_authn {
            return;
        }
        use skiff_config::filter_state::{Kind, Object, LOCAL_PRINCIPAL, PEER_PRINCIPAL};
        let Some(tls) = &connection.tls else {
            return;
        };
        // Only with a certificate from the peer, as Istio's filter.
        let Some(peer) = &tls.peer else {
            return;
        };
        let spiffe = |sans: &[String]| sans.iter().find(|s| s.starts_with("spiffe://")).cloned();
        let found = [
            (PEER_PRINCIPAL, spiffe(&peer.uri_sans)),
            (
                LOCAL_PRINCIPAL,
                tls.local.as_ref().and_then(|l| spiffe(&l.uri_sans)),
            ),
        ];
        for (key, name) in found {
            if let Some(name) = name {
                connection.filter_state.set(
                    key,
                    Object {
                        value: name.into(),
                        kind: Kind::Principal,
                        read_only: true,
                        shared: Default::default(),
                    },
                );
            }
        }
    }
}

/// Puts `values`, formatted for the connection as it is now, into its filter state (each
/// value sees those before it).
fn set_values<'a>(
    connection: &mut Connection,
    values: impl IntoIterator<Item = &'a skiff_config::filter_state::Value>,
    (remote, local): (SocketAddr, SocketAddr),
) {
    let mut info = None;
    for v in values {
        let info = info.get_or_insert_with(|| crate::stream_info::StreamInfo::new(remote, local));
        info.connection = Some(Arc::new(connection.clone()));
        let text = crate::access_log::text(&v.format, info, None);
        if let Some(object) = v.object(text) {
            if !connection.filter_state.set(&v.key, object) {
                tracing::debug!(key = %v.key, "filter state object is read-only: kept");
            }
        }
    }
}

/// Whether `f` is a read filter that may close a new connection ([`Gate`]).
fn is_gate(f: &NetworkFilter) -> bool {
    matches!(
        f,
        NetworkFilter::LocalRateLimit(_)
            | NetworkFilter::ConnectionLimit(_)
            | NetworkFilter::RateLimit(_)
    )
}

/// A read filter that may close a new connection.
enum Gate {
    /// `envoy.filters.network.local_ratelimit`: the shared bucket and its `rate_limited`
    /// counter.
    RateLimit {
        /// Keeps the bucket attached to the configuration.
        _config: Arc<model::LocalRateLimit>,
        bucket: Arc<crate::network::filters::local_ratelimit::TokenBucket>,
        rate_limited: Counter,
    },
    /// `envoy.filters.network.connection_limit`.
    ConnectionLimit(crate::network::filters::connection_limit::Limiter),
    /// `envoy.filters.network.ratelimit`: the rate limit service's answer.
    Service(crate::network::filters::ratelimit::Gate),
}

/// A new connection the read filters turned away.
struct Refused {
    /// What it holds of the filters' counts until it is closed.
    held: Vec<crate::network::filters::connection_limit::Held>,
    /// How long it is kept (not read) before it is closed.
    delay: Option<std::time::Duration>,
    /// Closed after a wait (a delay, the rate limit service's answer), during which Envoy's
    /// connection manager reads what the client sends (tcp_proxy does not).
    waited: bool,
}

impl Chain {
    /// A connection a read filter turned away: the terminal filter has counted it already
    /// in Envoy (its filters were made with the connection).
    fn count_turned_away(&self) {
        match &self.terminal {
            Terminal::Http(hcm) => {
                hcm.stats.downstream_cx_total.inc();
                hcm.stats.downstream_cx_destroy.inc();
            }
            Terminal::Tcp(_, stats) => stats.downstream_cx_total.inc(),
            Terminal::Empty => {}
        }
    }

    /// Whether the terminal filter writes access logs, forwards the client certificate, runs
    /// RBAC, or may render header values (only then is TLS described). Judged once, when
    /// the chain is built (`describe_tls`).
    fn logs(&self) -> bool {
        if !self.rbac.is_empty() || self.filter_state.reads_tls() {
            return true;
        }
        match &self.terminal {
            Terminal::Http(h) => {
                !h.config.access_logs.is_empty()
                    || h.config.http_filters.iter().any(|f| {
                        matches!(
                            f.config,
                            crate::config::model::HttpFilterConfig::Rbac(_)
                                | crate::config::model::HttpFilterConfig::SetFilterState(_)
                        )
                    })
                    // Route tables from RDS change while the listener lives: counted as
                    // formatting.
                    || h.routes.formats_headers()
                    || !matches!(
                        h.config.forward_client_cert.mode,
                        crate::config::model::XfccMode::Sanitize
                            | crate::config::model::XfccMode::AlwaysForwardOnly
                    )
            }
            Terminal::Tcp(t, _) => !t.access_logs.is_empty(),
            Terminal::Empty => false,
        }
    }

    /// The certificate this chain presented to a client that asked for `sni`.
    fn local_cert(
        &self,
        config: &Arc<rustls::ServerConfig>,
        sni: Option<&str>,
    ) -> Option<crate::stream_info::CertInfo> {
        let tls = self.tls.as_ref()?;
        let mut cache = self.local_certs.borrow_mut();
        let certs = match &*cache {
            Some((c, certs)) if Arc::ptr_eq(c, config) => certs.clone(),
            _ => {
                let certs = Rc::new(crate::tls::info::local_certificates(&tls.0.certificates));
                *cache = Some((config.clone(), certs.clone()));
                certs
            }
        };
        let i = crate::tls::certs::pick_index(certs.iter().map(|(n, _)| n.as_slice()), sni);
        certs.get(i).and_then(|(_, info)| info.clone())
    }

    /// Runs the filters in front of the terminal one on a new connection, in order: what it
    /// holds of their counts while it lasts, or why it is closed. `set_filter_state`'s values
    /// are set where their filter stands, as Envoy's filters see them; a rate limit service's
    /// `dynamic_metadata` goes into the connection's.
    async fn admit(
        &self,
        worker: &Rc<Worker>,
        connection: &mut Connection,
        (remote, local): (SocketAddr, SocketAddr),
    ) -> Result<Vec<crate::network::filters::connection_limit::Held>, Refused> {
        use crate::network::filters::connection_limit::Verdict;
        use crate::network::filters::ratelimit::{Decision, METADATA_NAMESPACE};
        let mut held = Vec::new();
        for (at, gate) in self.gates.iter().enumerate() {
            self.filter_state
                .on_new_connection(at, connection, (remote, local));
            match gate {
                Gate::RateLimit {
                    bucket,
                    rate_limited,
                    ..
                } => {
                    if !bucket.try_take(std::time::Instant::now()) {
                        rate_limited.inc();
                        return Err(Refused {
                            held,
                            delay: None,
                            waited: false,
                        });
                    }
                }
                Gate::Service(service) => {
                    // Boxed: the call's future would otherwise grow every connection's task,
                    // with or without the filter.
                    let decision = Box::pin(async {
                        // What the descriptors may read: the connection as it is when it
                        // opens.
                        let info = tcp_proxy::connection_info(
                            &Arc::new(connection.clone()),
                            remote,
                            local,
                        );
                        service.check(worker, &info).await
                    })
                    .await;
                    match decision {
                        Decision::Admit(None) => {}
                        Decision::Admit(Some(added)) => {
                            let mut m = connection.metadata.as_deref().cloned().unwrap_or_default();
                            m.filter_metadata
                                .entry(METADATA_NAMESPACE.to_string())
                                .or_default()
                                .extend(added);
                            connection.metadata = Some(Arc::new(m));
                        }
                        Decision::Close => {
                            return Err(Refused {
                                held,
                                delay: None,
                                waited: true,
                            })
                        }
                    }
                }
                Gate::ConnectionLimit(limiter) => match limiter.admit() {
                    Verdict::Off => {}
                    Verdict::Admitted(h) => held.push(h),
                    Verdict::Refused(h, delay) => {
                        held.push(h);
                        return Err(Refused {
                            held,
                            waited: delay.is_some(),
                            delay,
                        });
                    }
                },
            }
        }
        self.filter_state
            .on_new_connection(self.gates.len(), connection, (remote, local));
        Ok(held)
    }
}

fn chain(
    fc: &Arc<model::FilterChain>,
    shard: &Arc<crate::stats::Shard>,
    scope: &str,
) -> Option<Rc<Chain>> {
    let empty = || {
        Some(Rc::new(Chain {
            model: fc.clone(),
            drain: Drain::new(),
            gates: Vec::new(),
            rbac: Vec::new(),
            filter_state: ChainState::default(),
            describe_tls: false,
            tls: None,
            terminal: Terminal::Empty,
            local_certs: Default::default(),
        }))
    };
    let tls = match &fc.tls {
        None => None,
        Some(settings) => match crate::tls::transport::server(settings) {
            Ok(t) => Some((settings.clone(), t)),
            Err(e) => {
                // Translation built it moments ago: its files changed since. Never serve the
                // chain without its TLS; its connections are closed until it is updated.
                tracing::error!(chain = %fc.name, error = %e, "the filter chain's TLS does not load; closing its connections");
                return empty();
            }
        },
    };
    let Some((last, front)) = fc.filters.split_last() else {
        return empty();
    };
    let gates = front
        .iter()
        .filter_map(|f| match f {
            NetworkFilter::LocalRateLimit(l) => Some(Gate::RateLimit {
                _config: l.clone(),
                bucket: crate::network::filters::local_ratelimit::bucket(l),
                rate_limited: shard
                    .counter(&format!("local_rate_limit.{}.rate_limited", l.stat_prefix)),
            }),
            NetworkFilter::ConnectionLimit(c) => Some(Gate::ConnectionLimit(
                crate::network::filters::connection_limit::Limiter::new(c, shard),
            )),
            NetworkFilter::RateLimit(r) => Some(Gate::Service(
                crate::network::filters::ratelimit::Gate::new(r, shard),
            )),
            _ => None,
        })
        .collect();
    let rbac = front
        .iter()
        .filter_map(|f| match f {
            NetworkFilter::Rbac(r) => Some(crate::http::filters::rbac::NetworkGate::new(
                r.clone(),
                shard,
            )),
            _ => None,
        })
        .collect();
    Some(last).and_then(|f| {
        let terminal = match f {
            NetworkFilter::HttpConnectionManager(h) => {
                Terminal::Http(Rc::new(HttpConnectionManager::new(h.clone(), shard, scope)))
            }
            NetworkFilter::TcpProxy(t) => Terminal::Tcp(
                t.clone(),
                Rc::new(TcpProxyStats::new(shard, &t.stat_prefix)),
            ),
            // Translation keeps read filters out of the last place.
            NetworkFilter::LocalRateLimit(_)
            | NetworkFilter::ConnectionLimit(_)
            | NetworkFilter::RateLimit(_)
            | NetworkFilter::Rbac(_)
            | NetworkFilter::SetFilterState(_)
            | NetworkFilter::IstioAuthn => return None,
        };
        let mut chain = Chain {
            model: fc.clone(),
            drain: Drain::new(),
            gates,
            rbac,
            filter_state: ChainState::new(front),
            describe_tls: false,
            tls,
            terminal,
            local_certs: Default::default(),
        };
        chain.describe_tls = chain.logs();
        Some(Rc::new(chain))
    })
}

impl Shared {
    /// Prepares a listener on this worker. Its sockets, if any, are served by
    /// [`accept_loop`]s; hand-offs reach it once the worker lists it in its [`HandOff`].
    /// `previous` is the version this one replaces in place: its chains whose configuration
    /// is kept (the same `Arc`) are taken over with their connections.
    pub fn new(
        worker: Rc<Worker>,
        config: Arc<model::Listener>,
        handoff: Rc<HandOff>,
        health_failed: Arc<std::sync::atomic::AtomicBool>,
        previous: Option<&Shared>,
    ) -> Rc<Self> {
        let scope = format!("listener.{}.", config.stat_prefix);
        let shard = &worker.shard;
        let stats = ListenerStats {
            downstream_cx_total: shard.counter(&format!("{scope}downstream_cx_total")),
            downstream_cx_active: shard.gauge(&format!("{scope}downstream_cx_active")),
            downstream_cx_destroy: shard.counter(&format!("{scope}downstream_cx_destroy")),
            downstream_cx_length_ms: shard.histogram(&format!("{scope}downstream_cx_length_ms")),
            worker_cx_total: shard
                .counter(&format!("{scope}worker_{}.downstream_cx_total", worker.id)),
            worker_cx_active: shard
                .gauge(&format!("{scope}worker_{}.downstream_cx_active", worker.id)),
            no_filter_chain_match: shard.counter(&format!("{scope}no_filter_chain_match")),
            network_extension_config_missing: shard
                .counter(&format!("{scope}network_extension_config_missing")),
            downstream_global_cx_overflow: shard
                .counter(&format!("{scope}downstream_global_cx_overflow")),
            downstream_cx_overload_reject: shard
                .counter(&format!("{scope}downstream_cx_overload_reject")),
            downstream_cx_overflow: shard.counter(&format!("{scope}downstream_cx_overflow")),
            downstream_cx_transport_socket_connect_timeout: shard.counter(&format!(
                "{scope}downstream_cx_transport_socket_connect_timeout"
            )),
        };
        let filters = filters::Chain::new(&config, shard, &scope);
        let build = |fc: &Arc<model::FilterChain>| {
            let kept = previous.and_then(|p| {
                p.chains
                    .iter()
                    .chain(p.default_chain.iter())
                    .find(|c| Arc::ptr_eq(&c.model, fc))
                    .cloned()
            });
            kept.or_else(|| {
                let c = chain(fc, shard, &scope)?;
                if let Terminal::Http(h) = &c.terminal {
                    h.start(&worker);
                }
                Some(c)
            })
        };
        let chains: Vec<Rc<Chain>> = config
            .filter_chains
            .iter()
            .filter_map(|(_, fc)| build(fc))
            .collect();
        let default_chain = config.default_filter_chain.as_ref().and_then(build);
        let tls_stats = chains
            .iter()
            .chain(default_chain.iter())
            .any(|c| c.tls.is_some())
            .then(|| TlsStats::new(shard.clone(), &scope));
        Rc::new(Shared {
            drain: Drain::new(),
            health_failed,
            worker,
            chain_table: Chains::new(config.clone()),
            connection_limit_key: crate::config::runtime::listener_connection_limit(&config.name),
            open: OPEN_CONNECTIONS.get_or_insert_with(&config, AtomicU64::default),
            config,
            stats,
            filters,
            chains,
            default_chain,
            tls_stats,
            handoff,
        })
    }

    /// What a connection watches to learn of a drain: its chain's, or before it has one, the
    /// listener's.
    fn connection_drain(&self, chain: Option<&Chain>) -> ConnectionDrain {
        ConnectionDrain::new(
            chain.map_or(&self.drain, |c| &c.drain).watch(),
            self.config.drain_type,
            self.worker.drain_strategy,
            self.health_failed.clone(),
        )
    }

    /// Drains the whole listener: it stops accepting, every chain's connections drain.
    pub fn drain_all(&self, d: Draining) {
        self.drain.start(d);
        for c in self.chains.iter().chain(self.default_chain.iter()) {
            c.drain.start(d);
        }
    }

    /// Replaced by `next`: stops accepting, and drains the connections of the chains `next`
    /// did not take over (all of them unless the update was in place).
    pub fn retire(&self, d: Draining, next: &Shared) {
        self.drain.start(d);
        let kept = |c: &Rc<Chain>| {
            next.chains
                .iter()
                .chain(next.default_chain.iter())
                .any(|n| Rc::ptr_eq(n, c))
        };
        for c in self.chains.iter().chain(self.default_chain.iter()) {
            if !kept(c) {
                c.drain.start(d);
            }
        }
    }
}

/// Accepts on `socket` for `listener` until the listener drains without accepting (replaced,
/// removed or drained); a replacing listener's loop then goes on with the same socket.
pub async fn accept_loop(listener: Rc<Shared>, socket: Rc<TcpListener>) {
    let mut stop = listener.drain.watch();
    let batch = listener.config.accept_batch.unwrap_or(u32::MAX);
    // A listener the overload manager may pause looks again when an action changes.
    let overload_watch = !listener.config.bypass_overload_manager
        && overload::configured(ActionName::StopAcceptingConnections);
    let mut in_a_row = 0u32;
    loop {
        // max_connections_to_accept_per_socket_event: let the accepted connections run before
        // taking more from the kernel.
        in_a_row += 1;
        if in_a_row > batch {
            in_a_row = 1;
            tokio::task::yield_now().await;
        }
        // stop_accepting_connections: while it is saturated the listener takes nothing from
        // the kernel; connections wait in its backlog.
        if !listener.config.bypass_overload_manager
            && overload::saturated(ActionName::StopAcceptingConnections)
        {
            tokio::select! {
                biased;
                _ = stop.started_where(|d| !d.accepting) => break,
                _ = overload::changed() => continue,
            }
        }
        let accepted = tokio::select! {
            biased;
            _ = stop.started_where(|d| !d.accepting) => break,
            _ = overload::changed(), if overload_watch => continue,
            r = socket.accept() => r,
        };
        match accepted {
            Ok((stream, remote)) => {
                // The connection's state is written into a box of its own: the task then
                // holds a pointer, and tokio's moves of it (spawning it, storing its end)
                // copy a few bytes instead of kilobytes.
                let listener = listener.clone();
                tokio::task::spawn_local(crate::gate::boxed(move || {
                    listener.handle(stream, remote)
                }));
            }
            Err(e) => {
                // Out of descriptors or a transient error: back off briefly, keep listening.
                tracing::warn!(listener = %listener.config.name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    tracing::debug!(listener = %listener.config.name, worker = listener.worker.id, "stopped accepting");
}

impl Shared {
    async fn handle(self: Rc<Self>, stream: TcpStream, remote: SocketAddr) {
        // TCP_NODELAY came with the connection from its listen socket (`bind`).
        let local = stream.local_addr().unwrap_or(self.config.address);
        // A dual-stack socket's IPv4 peers are IPv4 addresses, not v4-mapped ones (Envoy's).
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let (remote, local) = (canonical(remote), canonical(local));
        self.admit(Accepted::new(Downstream::Tcp(stream), remote, local))
            .await
    }

    /// Serves a connection to this internal listener, opened on this worker by a cluster
    /// (`envoy_internal_address`, whose stand-in is `local`), with the metadata it passed
    /// through and the filter state objects shared with it (the connection's own from then
    /// on). Its addresses are internal ones until a listener filter (original_dst) restores
    /// them.
    pub async fn handle_internal(
        self: Rc<Self>,
        stream: crate::io::Internal,
        local: SocketAddr,
        metadata: Option<Arc<crate::config::metadata::Metadata>>,
        shared: Option<Arc<skiff_config::filter_state::FilterState>>,
    ) {
        let remote = model::INTERNAL_CLIENT;
        let mut sock = Accepted::new(Downstream::Internal(stream), remote, local);
        sock.metadata = metadata;
        sock.shared = shared;
        self.admit(sock).await
    }

    async fn admit(self: Rc<Self>, sock: Accepted) {
        // reject_incoming_connections and the tcp_listener_accept load shed point: the
        // connection is closed as it is accepted, as Envoy's listener does.
        if !self.config.bypass_overload_manager
            && (overload::act(ActionName::RejectIncomingConnections)
                || overload::shed(ShedPoint::TcpListenerAccept))
        {
            self.stats.downstream_cx_overload_reject.inc();
            return;
        }
        // The overload manager's global connection limit: over it, the connection is closed
        // before anything else happens to it (and counted only here). A listener that
        // bypasses the overload manager is not counted, as in Envoy.
        let _slot = if self.config.ignore_global_conn_limit || self.config.bypass_overload_manager {
            None
        } else {
            match overload::GLOBAL_CONNECTIONS.try_acquire() {
                Some(slot) => Some(slot),
                None => {
                    self.stats.downstream_global_cx_overflow.inc();
                    return;
                }
            }
        };
        // The listener's own limit (runtime key
        // envoy.resource_limits.listener.<name>.connection_limit), over all workers.
        let limit = crate::runtime::snapshot()
            .get(&self.connection_limit_key)
            .and_then(crate::config::runtime::count);
        let Some(_open) = OpenConnection::count(&self.open, limit) else {
            self.stats.downstream_cx_overflow.inc();
            return;
        };
        let _conn = self.worker.track_connection();
        // Whatever is still open when its drain's deadline passes is closed (the listener's
        // until a chain is chosen, then the chain's).
        let mut deadline = self.connection_drain(None);
        // The listener filters and the connection's service are each written into their box
        // rather than moved through this future (kilobytes each).
        let picked = tokio::select! {
            biased;
            p = crate::gate::boxed(|| self.clone().listener_filters(sock)) => p,
            _ = crate::gate::gated(deadline.deadline()) => None,
        };
        if let Some((owner, sock)) = picked {
            crate::gate::boxed(|| owner.serve(sock)).await;
        }
    }

    /// Runs the listener filters and the `use_original_dst` hand-off: the listener that serves
    /// the connection, or none if a filter closed it.
    async fn listener_filters(
        self: Rc<Self>,
        mut sock: Accepted,
    ) -> Option<(Rc<Shared>, Accepted)> {
        let (remote, local) = (sock.remote, sock.local);
        let accepted = (std::time::SystemTime::now(), tokio::time::Instant::now());
        if !self.filters.is_empty() && !self.filters.run(&mut sock).await {
            self.log_unserved((remote, local), accepted, None);
            return None;
        }
        // use_original_dst: the listener of the original destination takes the connection
        // (its listener filters, its chains, its stats), when there is one other than this one.
        let mut owner = self;
        if owner.config.use_original_dst && !owner.config.addresses().any(|a| a == sock.local) {
            if let Some(target) = owner.handoff.find(sock.local) {
                if !Rc::ptr_eq(&target, &owner) {
                    owner = target;
                    if !owner.filters.is_empty() && !owner.filters.run(&mut sock).await {
                        return None;
                    }
                }
            }
        }
        Some((owner, sock))
    }

    /// The listener's `access_log` for a connection closed before a filter chain took it:
    /// accepted at `accepted`; with a flag and details when no chain matched.
    fn log_unserved(
        &self,
        (remote, local): (SocketAddr, SocketAddr),
        accepted: (std::time::SystemTime, tokio::time::Instant),
        why: Option<(crate::stream_info::ResponseFlag, &'static str)>,
    ) {
        if self.config.access_logs.is_empty() {
            return;
        }
        let mut info = crate::stream_info::StreamInfo::new(remote, local);
        (info.start_time, info.start) = (accepted.0, accepted.1.into_std());
        if let Some((flag, details)) = why {
            info.flags.set(flag);
            info.details = details;
        }
        info.finish();
        let writer = crate::access_log::Writer::default();
        writer.attach(&self.worker);
        writer.log(&self.config.access_logs, &info);
        writer.flush();
    }

    async fn serve(self: Rc<Self>, sock: Accepted) {
        let choice = self.chain_table.select(&ChainInput {
            local: sock.local,
            remote: sock.remote,
            direct_remote: sock.direct_remote,
            server_name: sock.server_name.as_deref().unwrap_or(""),
            transport_protocol: sock.transport_protocol.name(),
            application_protocols: &sock.application_protocols,
        });
        let Accepted {
            stream,
            metadata,
            shared,
            remote,
            local,
            direct_remote,
            server_name,
            ..
        } = sock;
        let s = &self.stats;
        s.downstream_cx_total.inc();
        s.downstream_cx_active.inc();
        s.worker_cx_total.inc();
        s.worker_cx_active.inc();
        let chain = match choice {
            Some(ChainChoice::Index(i)) => self.chains.get(i),
            Some(ChainChoice::Default) => self.default_chain.as_ref(),
            None => None,
        };
        let Some(chain) = chain.cloned() else {
            s.no_filter_chain_match.inc();
            self.log_unserved(
                (remote, local),
                (std::time::SystemTime::now(), tokio::time::Instant::now()),
                Some((
                    crate::stream_info::ResponseFlag::NoRouteFound,
                    "filter_chain_not_found",
                )),
            );
            self.closed();
            return;
        };
        if matches!(chain.terminal, Terminal::Empty) {
            // As Envoy: no read filter to give the connection to, so it is closed at once
            // (before any TLS handshake) and counted as a chain whose filters are missing.
            s.network_extension_config_missing.inc();
            self.closed();
            return;
        }
        // The chain's drain governs the connection from now on; what is still open at its
        // deadline is closed.
        let mut deadline = self.connection_drain(Some(&chain));
        let since = std::time::Instant::now();
        tokio::select! {
            biased;
            _ = self.run_chain(&chain, stream, (remote, local, direct_remote), server_name, (metadata, shared)) => {}
            _ = crate::gate::gated(deadline.deadline()) => {
                tracing::debug!(listener = %self.config.name, %remote, "drain deadline: closing");
            }
        }
        self.stats
            .downstream_cx_length_ms
            .record_ms(since.elapsed());
        self.closed();
    }

    /// Runs a connection's filter chain: its read filters, TLS, then the terminal filter.
    async fn run_chain(
        &self,
        chain: &Chain,
        stream: Downstream,
        (remote, local, direct_remote): (SocketAddr, SocketAddr, SocketAddr),
        server_name: Option<Box<str>>,
        (metadata, shared): (
            Option<Arc<crate::config::metadata::Metadata>>,
            Option<Arc<skiff_config::filter_state::FilterState>>,
        ),
    ) {
        let mut connection = Connection {
            id: next_connection_id(),
            direct_remote: Some(direct_remote),
            requested_server_name: server_name.map(String::from),
            tls: None,
            peer_certificate: false,
            listener_metadata: (!self.config.metadata.is_empty())
                .then(|| self.config.metadata.clone()),
            filter_state: shared.map(|s| (*s).clone()).unwrap_or_default(),
            metadata,
        };
        // The read filters, set_filter_state's among them: before TLS, as Envoy runs them.
        let _held = match chain
            .admit(&self.worker, &mut connection, (remote, local))
            .await
        {
            Ok(held) => held,
            Err(refused) => {
                // Closed unread, as Envoy closes it: what the client sent makes the kernel
                // reset the connection. The terminal filter has already counted it in Envoy.
                chain.count_turned_away();
                if let Terminal::Tcp(cfg, _) = &chain.terminal {
                    tcp_proxy::log_turned_away(&self.worker, cfg, connection, remote, local);
                }
                // A connection limit may hold the connection (unread) a while first.
                if let Some(delay) = refused.delay {
                    tokio::time::sleep(delay).await;
                }
                drop(refused.held);
                if let (true, Terminal::Http(_), Downstream::Tcp(stream)) =
                    (refused.waited, &chain.terminal, &stream)
                {
                    read_what_came(stream);
                }
                return;
            }
        };
        let stream = match (&chain.tls, stream) {
            (None, Downstream::Tcp(stream)) => Stream::Tcp(stream),
            (None, Downstream::Internal(stream)) => Stream::Internal(stream),
            // Refused at load: an internal listener's chains have no transport socket.
            (Some(_), Downstream::Internal(_)) => return,
            (Some((_, tls)), Downstream::Tcp(stream)) => {
                let config = tls.config.get();
                // transport_socket_connect_timeout: the handshake's time, else the connection
                // is closed.
                let handshake = async {
                    match chain.model.handshake_timeout {
                        Some(t) => tokio::time::timeout(t, accept_tls(stream, &config))
                            .await
                            .map_err(|_| ()),
                        None => Ok(accept_tls(stream, &config).await),
                    }
                };
                let Ok(accepted) = handshake.await else {
                    self.stats
                        .downstream_cx_transport_socket_connect_timeout
                        .inc();
                    return;
                };
                match accepted {
                    Ok(t) => {
                        let conn = t.get_ref().1;
                        if let Some(st) = &self.tls_stats {
                            st.completed(conn);
                        }
                        connection.peer_certificate = conn.peer_certificates().is_some();
                        if chain.describe_tls {
                            let local = chain.local_cert(&config, conn.server_name());
                            connection.tls = Some(crate::tls::info::connection_info(conn, local));
                        }
                        chain
                            .filter_state
                            .after_tls(&mut connection, (remote, local));
                        Stream::ServerTls(Box::new(t))
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, %remote, "TLS handshake failed");
                        if let Some(st) = &self.tls_stats {
                            st.failed(&e);
                        }
                        return;
                    }
                }
            }
        };
        // Network RBAC judges the connection before its first byte is read (Envoy judges it on
        // its first byte; the rules read nothing the bytes change).
        if !chain
            .rbac
            .iter()
            .all(|r| r.admits(&connection, remote, local))
        {
            chain.count_turned_away();
            return;
        }
        match &chain.terminal {
            Terminal::Http(hcm) => {
                // original_src: pooled upstream connections come from the client's address; the
                // port is left to the kernel, since one client connection may need several
                // upstream connections (Envoy does not implement bind_port either).
                let source = self.config.original_src.map(|o| pool::Source {
                    address: SocketAddr::new(remote.ip(), 0),
                    transparent: true,
                    mark: o.mark,
                });
                conn_manager::serve(
                    stream,
                    remote,
                    local,
                    Arc::new(connection),
                    source,
                    hcm.clone(),
                    self.worker.clone(),
                    self.connection_drain(Some(chain)),
                    self.config.buffer_limit,
                    !self.config.bypass_overload_manager,
                )
                .await
            }
            Terminal::Tcp(cfg, stats) => {
                // envoy.filters.listener.original_src: the upstream connection comes from the
                // client's own address, so the application sees the real client.
                let source = self.config.original_src.map(|o| pool::Source {
                    address: if o.bind_port {
                        remote
                    } else {
                        SocketAddr::new(remote.ip(), 0)
                    },
                    transparent: true,
                    mark: o.mark,
                });
                tcp_proxy::run(
                    &self.worker,
                    cfg,
                    stats,
                    stream,
                    remote,
                    local,
                    Arc::new(connection),
                    source,
                    self.config.buffer_limit,
                )
                .await
            }
            Terminal::Empty => {}
        }
    }

    /// A connection counted in by `serve` is gone.
    fn closed(&self) {
        let s = &self.stats;
        s.downstream_cx_active.dec();
        s.worker_cx_active.dec();
        s.downstream_cx_destroy.inc();
    }
}

/// Reads (and drops) what a client has sent so far, so that closing the connection sends a
/// FIN rather than a reset.
fn read_what_came(stream: &TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
}

/// The server side of a TLS handshake. A client whose ALPN list has nothing in common with
/// the chain's gets no protocol and the handshake goes on, as BoringSSL's selection in Envoy
/// (rustls alone would end it with `no_application_protocol`).
async fn accept_tls(
    stream: TcpStream,
    config: &Arc<rustls::ServerConfig>,
) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let disjoint = !config.alpn_protocols.is_empty()
        && start.client_hello().alpn().is_some_and(|mut offered| {
            offered.all(|p| {
                !config
                    .alpn_protocols
                    .iter()
                    .any(|ours| ours.as_slice() == p)
            })
        });
    let config = if disjoint {
        let mut without = (**config).clone();
        without.alpn_protocols.clear();
        Arc::new(without)
    } else {
        config.clone()
    };
    start.into_stream(config).await
}

#[cfg(test)]
mod tests {
    /// A listener with a TCP proxy chain to `c`, and `options` as its `socket_options`.
    fn listener(options: &str) -> std::sync::Arc<skiff_config::model::Listener> {
        let bootstrap = format!(
            r#"
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    socket_options: {options}
    filter_chains:
    - filters:
      - name: t
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: c
  clusters:
  - name: c
    load_assignment: {{cluster_name: c}}
"#
        );
        let loaded = crate::config::load_text(&bootstrap).expect("bootstrap loads");
        loaded.model.listeners[0].clone()
    }

    #[test]
    fn an_accepted_connection_has_tcp_nodelay_even_where_the_listeners_options_clear_it() {
        // TCP_NODELAY (level 6, name 1) cleared on the listen socket by the listener's own options.
        for options in [
            "[]",
            "[{level: 6, name: 1, int_value: 0, state: STATE_PREBIND}]",
            "[{level: 6, name: 1, int_value: 0, state: STATE_LISTENING}]",
        ] {
            let l = listener(options);
            let sock = super::bind(&l, l.address).expect("binds");
            let client = std::net::TcpStream::connect(sock.local_addr().expect("address"))
                .expect("connects");
            sock.set_nonblocking(false).expect("blocking");
            let (accepted, _) = sock.accept().expect("accepts");
            assert!(accepted.nodelay().expect("reads TCP_NODELAY"), "{options}");
            drop(client);
        }
    }
}
