//! Listeners: one SO_REUSEPORT socket per worker, accepting connections and running the listener
//! filters and then a filter chain on each.

pub mod filter_chain_match;
pub mod filters;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use crate::config::model::{self, NetworkFilter};
use crate::http::conn_manager::{self, HcmStats, HttpConnectionManager};
use crate::io::Stream;
use crate::network::filters::tcp_proxy::{self, TcpProxyStats};
use crate::stats::{Counter, Gauge};
use crate::stream_info::{next_connection_id, Connection};
use crate::tls::stats::TlsStats;
use crate::upstream::pool;
use crate::worker::Worker;
use filter_chain_match::ChainInput;
use filters::Accepted;

/// Binds a listen socket for one worker. Every worker binds its own with SO_REUSEPORT so the
/// kernel spreads connections across workers without a shared accept queue.
pub fn bind(l: &model::Listener) -> std::io::Result<std::net::TcpListener> {
    let addr = l.address;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
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
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
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
}

/// The network filters of a chain, built for one worker.
enum Terminal {
    Http(Rc<HttpConnectionManager>),
    Tcp(Arc<model::TcpProxy>, Rc<TcpProxyStats>),
    /// A chain without network filters: Envoy accepts it and closes its connections.
    Empty,
}

/// A listener on one worker: the socket (none for `bind_to_port: false`), owned by the accept
/// loop, and what its connections share.
pub struct Listener {
    socket: Option<TcpListener>,
    shared: Rc<Shared>,
}

/// The listeners of one worker by address, for `use_original_dst` hand-offs.
#[derive(Default)]
pub struct HandOff {
    listeners: std::cell::RefCell<Vec<Rc<Shared>>>,
}

impl HandOff {
    /// The listener a connection restored to `dest` belongs to: the one on exactly that
    /// address, else the one on the wildcard address of its family and port.
    fn find(&self, dest: SocketAddr) -> Option<Rc<Shared>> {
        let dest = SocketAddr::new(dest.ip().to_canonical(), dest.port());
        let all = self.listeners.borrow();
        all.iter()
            .find(|l| l.config.address == dest)
            .or_else(|| {
                all.iter().find(|l| {
                    let a = l.config.address;
                    a.port() == dest.port()
                        && a.ip().is_unspecified()
                        && a.is_ipv4() == dest.is_ipv4()
                })
            })
            .cloned()
    }
}

/// What a listener's connections share. It does not hold the socket, so the socket closes as soon
/// as the accept loop ends, while connections still run.
struct Shared {
    worker: Rc<Worker>,
    config: Arc<model::Listener>,
    stats: ListenerStats,
    /// `listener_filters`.
    filters: filters::Chain,
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
    limits: Vec<(Arc<model::LocalRateLimit>, Counter)>,
    tls: Option<Arc<model::DownstreamTransport>>,
    terminal: Terminal,
    /// The names of the chain's certificates, for access logs, as of the TLS configuration
    /// they were read for (made on first use, again after the files change).
    local_certs: std::cell::RefCell<Option<(Arc<rustls::ServerConfig>, Rc<LocalCerts>)>>,
}

type LocalCerts = Vec<(Vec<String>, Option<crate::stream_info::CertInfo>)>;

impl Chain {
    /// Whether the terminal filter writes access logs (only then is TLS described).
    fn logs(&self) -> bool {
        match &self.terminal {
            Terminal::Http(h) => !h.config.access_logs.is_empty(),
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
                let certs = Rc::new(crate::tls::info::local_certificates(
                    &tls.settings.certificates,
                ));
                *cache = Some((config.clone(), certs.clone()));
                certs
            }
        };
        let i = crate::tls::certs::pick_index(certs.iter().map(|(n, _)| n.as_slice()), sni);
        certs.get(i).and_then(|(_, info)| info.clone())
    }

    /// Runs the filters in front of the terminal one on a new connection; false: close it.
    fn admit(&self) -> bool {
        if self.limits.is_empty() {
            return true;
        }
        let now = std::time::Instant::now();
        for (limit, rate_limited) in &self.limits {
            if !limit.try_take(now) {
                rate_limited.inc();
                return false;
            }
        }
        true
    }
}

fn chain(
    fc: &model::FilterChain,
    shard: &Arc<crate::stats::Shard>,
    scope: &str,
) -> Option<Rc<Chain>> {
    let Some((last, front)) = fc.filters.split_last() else {
        return Some(Rc::new(Chain {
            limits: Vec::new(),
            tls: fc.tls.clone(),
            terminal: Terminal::Empty,
            local_certs: Default::default(),
        }));
    };
    let limits = front
        .iter()
        .filter_map(|f| match f {
            NetworkFilter::LocalRateLimit(l) => Some((
                l.clone(),
                shard.counter(&format!("local_rate_limit.{}.rate_limited", l.stat_prefix)),
            )),
            _ => None,
        })
        .collect();
    Some(last).and_then(|f| {
        let terminal = match f {
            NetworkFilter::HttpConnectionManager(h) => {
                Terminal::Http(Rc::new(HttpConnectionManager {
                    config: h.clone(),
                    stats: HcmStats::new(shard.clone(), &h.stat_prefix, scope),
                }))
            }
            NetworkFilter::TcpProxy(t) => Terminal::Tcp(
                t.clone(),
                Rc::new(TcpProxyStats::new(shard, &t.stat_prefix)),
            ),
            // Translation keeps read filters out of the last place.
            NetworkFilter::LocalRateLimit(_) => return None,
        };
        Some(Rc::new(Chain {
            limits,
            tls: fc.tls.clone(),
            terminal,
            local_certs: Default::default(),
        }))
    })
}

impl Listener {
    /// Prepares a listener on this worker from a socket bound by the main thread (none for a
    /// listener that only takes hand-offs), and registers it for hand-offs.
    pub fn new(
        worker: Rc<Worker>,
        config: Arc<model::Listener>,
        socket: Option<std::net::TcpListener>,
        handoff: Rc<HandOff>,
    ) -> std::io::Result<Self> {
        let socket = socket.map(TcpListener::from_std).transpose()?;
        let scope = format!("listener.{}.", config.stat_prefix);
        let shard = &worker.shard;
        let stats = ListenerStats {
            downstream_cx_total: shard.counter(&format!("{scope}downstream_cx_total")),
            downstream_cx_active: shard.gauge(&format!("{scope}downstream_cx_active")),
            downstream_cx_destroy: shard.counter(&format!("{scope}downstream_cx_destroy")),
            worker_cx_total: shard
                .counter(&format!("{scope}worker_{}.downstream_cx_total", worker.id)),
            worker_cx_active: shard
                .gauge(&format!("{scope}worker_{}.downstream_cx_active", worker.id)),
            no_filter_chain_match: shard.counter(&format!("{scope}no_filter_chain_match")),
            network_extension_config_missing: shard
                .counter(&format!("{scope}network_extension_config_missing")),
        };
        let filters = filters::Chain::new(&config, shard, &scope);
        let chains: Vec<Rc<Chain>> = config
            .filter_chains
            .iter()
            .filter_map(|(_, fc)| chain(fc, shard, &scope))
            .collect();
        let default_chain = config
            .default_filter_chain
            .as_deref()
            .and_then(|fc| chain(fc, shard, &scope));
        let tls_stats = chains
            .iter()
            .chain(default_chain.iter())
            .any(|c| c.tls.is_some())
            .then(|| TlsStats::new(shard.clone(), &scope));
        Ok(Listener {
            socket,
            shared: {
                let shared = Rc::new(Shared {
                    worker,
                    config,
                    stats,
                    filters,
                    chains,
                    default_chain,
                    tls_stats,
                    handoff: handoff.clone(),
                });
                handoff.listeners.borrow_mut().push(shared.clone());
                shared
            },
        })
    }

    /// Accepts until draining starts, then closes the socket.
    pub async fn run(self) {
        let Listener { socket, shared } = self;
        let Some(socket) = socket else {
            return; // bind_to_port: false — reached only through hand-offs
        };
        let mut drain = shared.worker.drain_signal();
        loop {
            let accepted = tokio::select! {
                r = socket.accept() => r,
                _ = drain.wait() => break,
            };
            match accepted {
                Ok((stream, remote)) => {
                    let shared = shared.clone();
                    tokio::task::spawn_local(async move { shared.handle(stream, remote).await });
                }
                Err(e) => {
                    // Out of descriptors or a transient error: back off briefly, keep listening.
                    tracing::warn!(listener = %shared.config.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
        tracing::debug!(listener = %shared.config.name, worker = shared.worker.id, "stopped accepting");
    }
}

impl Shared {
    async fn handle(self: Rc<Self>, stream: TcpStream, remote: SocketAddr) {
        let _conn = self.worker.track_connection();
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(self.config.address);
        let mut sock = Accepted::new(stream, remote, local);
        if !self.filters.is_empty() && !self.filters.run(&mut sock).await {
            return;
        }
        // use_original_dst: the listener of the original destination takes the connection
        // (its listener filters, its chains, its stats), when there is one other than this one.
        let mut owner = self;
        if owner.config.use_original_dst && sock.local != owner.config.address {
            if let Some(target) = owner.handoff.find(sock.local) {
                if !Rc::ptr_eq(&target, &owner) {
                    owner = target;
                    if !owner.filters.is_empty() && !owner.filters.run(&mut sock).await {
                        return;
                    }
                }
            }
        }
        owner.serve(sock).await;
    }

    async fn serve(self: Rc<Self>, sock: Accepted) {
        let choice = self.config.select_chain_for(&ChainInput {
            local: sock.local,
            remote: sock.remote,
            direct_remote: sock.direct_remote,
            server_name: sock.server_name.as_deref().unwrap_or(""),
            transport_protocol: sock.transport_protocol.name(),
            application_protocols: &sock.application_protocols,
        });
        let Accepted {
            stream,
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
            Some(model::ChainChoice::Index(i)) => self.chains.get(i),
            Some(model::ChainChoice::Default) => self.default_chain.as_ref(),
            None => None,
        };
        let Some(chain) = chain else {
            s.no_filter_chain_match.inc();
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
        if !chain.admit() {
            // Envoy resets a rate-limited connection rather than closing it, and its terminal
            // filter has already counted the connection.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
            match &chain.terminal {
                Terminal::Http(hcm) => {
                    hcm.stats.downstream_cx_total.inc();
                    hcm.stats.downstream_cx_destroy.inc();
                }
                Terminal::Tcp(_, stats) => stats.downstream_cx_total.inc(),
                Terminal::Empty => {}
            }
            self.closed();
            return;
        }
        let mut connection = Connection {
            id: next_connection_id(),
            direct_remote: Some(direct_remote),
            requested_server_name: server_name.map(String::from),
            tls: None,
        };
        let stream = match &chain.tls {
            None => Stream::Tcp(stream),
            Some(tls) => {
                let config = tls.config.get();
                let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                match acceptor.accept(stream).await {
                    Ok(t) => {
                        let conn = t.get_ref().1;
                        if let Some(st) = &self.tls_stats {
                            st.completed(conn);
                        }
                        if chain.logs() {
                            let local = chain.local_cert(&config, conn.server_name());
                            connection.tls = Some(crate::tls::info::connection_info(conn, local));
                        }
                        Stream::ServerTls(Box::new(t))
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, %remote, "TLS handshake failed");
                        if let Some(st) = &self.tls_stats {
                            st.failed(&e);
                        }
                        self.closed();
                        return;
                    }
                }
            }
        };
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
                    self.config.buffer_limit,
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
        self.closed();
    }

    /// A connection counted in by `serve` is gone.
    fn closed(&self) {
        let s = &self.stats;
        s.downstream_cx_active.dec();
        s.worker_cx_active.dec();
        s.downstream_cx_destroy.inc();
    }
}
