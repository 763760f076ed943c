//! Per-worker connection pools, keyed by host and protocol.
//!
//! HTTP/1.1: idle keep-alive connections are reused, one request at a time each. HTTP/2: streams
//! share a connection up to the smaller of the peer's `max_concurrent_streams` and the cluster's
//! own limit, after which another connection opens; a connection that refuses new streams
//! (GOAWAY) is left to finish the streams it accepted while new ones go elsewhere.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::circuit_breaker::Held;
use super::{Cluster, Host, HostStats};
use crate::http::body::ProxyBody;
use crate::io::{Counted, FlowPair, FlowSlot, Stream, WriteFlow};
use crate::stream_info::{next_connection_id, UpstreamConnection};

/// Why no upstream connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connect did not finish within `connect_timeout`.
    #[error("connection timeout")]
    Timeout,
    /// The connect failed.
    #[error("delayed connect error: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP/2 handshake failed.
    #[error("protocol error: {0}")]
    Handshake(String),
    /// The TLS handshake failed.
    #[error("TLS error: {0}")]
    Tls(String),
    /// The connection this request was waiting for could not be made.
    #[error("the pending connection failed")]
    PendingFailed,
    /// A circuit breaker (`max_pending_requests`, `max_requests`) refused the request.
    #[error("overflow")]
    Overflow,
    /// `max_connection_pools`: the host's pool on this worker could not be made.
    #[error("connection pool overflow")]
    PoolOverflow,
}

/// A worker's pool for one host and protocol holds a place in the cluster's
/// `max_connection_pools` breaker while it has a connection (Envoy keeps a pool until it has
/// none left).
#[derive(Debug, Default)]
pub struct PoolSlot {
    /// Connections of the pool, made or being made.
    conns: Cell<usize>,
    held: RefCell<Option<Held>>,
    /// Requests on a connection of the pool, and requests waiting for one (what
    /// `preconnect_policy` provisions for).
    active: Cell<usize>,
    waiting: Cell<usize>,
    /// Bumped when the pool is drained: HTTP/1.1 connections made before no longer come back
    /// to it.
    generation: Cell<u64>,
}

/// A request waiting for a connection of a pool.
struct Waiting(Rc<PoolSlot>);

impl Waiting {
    fn new(slot: &Rc<PoolSlot>) -> Self {
        slot.waiting.set(slot.waiting.get() + 1);
        Waiting(slot.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.set(self.0.waiting.get().saturating_sub(1));
    }
}

/// One connection of a pool, counted in its [`PoolSlot`] until dropped.
#[derive(Debug)]
pub struct SlotLease(Rc<PoolSlot>);

impl PoolSlot {
    /// A new connection of the pool: the pool's place in the breaker is taken with its first
    /// connection, or the pool cannot be made (`upstream_cx_pool_overflow`).
    fn lease(self: &Rc<Self>, cluster: &Cluster, host: &Host) -> Result<SlotLease, ConnectError> {
        if self.held.borrow().is_none() {
            let Some(h) = cluster.info.breakers.of(host.high).pools.try_acquire() else {
                cluster.stats.upstream_cx_pool_overflow.inc();
                return Err(ConnectError::PoolOverflow);
            };
            *self.held.borrow_mut() = Some(h);
        }
        self.conns.set(self.conns.get() + 1);
        Ok(SlotLease(self.clone()))
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        let n = self.0.conns.get().saturating_sub(1);
        self.0.conns.set(n);
        if n == 0 {
            self.0.held.borrow_mut().take();
        }
    }
}

/// An upstream connection (TCP, or TLS for clusters with a `transport_socket`) that counts
/// its bytes into the cluster's stats.
pub type UpstreamStream = Counted<Stream>;

/// Where an upstream connection comes from, when not from the host's own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    /// The local address to bind.
    pub address: SocketAddr,
    /// Bind it with IP_TRANSPARENT (an address the host does not own: the client's).
    pub transparent: bool,
    /// SO_MARK, for policy routing of the replies (0: none).
    pub mark: u32,
}

/// Opens a TCP connection to a host of `cluster` (from the host's `source`, if it has one),
/// counting it and its bytes.
pub async fn connect(cluster: &Cluster, host: &Host) -> Result<UpstreamStream, ConnectError> {
    connect_from(cluster, host, host.source).await
}

/// [`connect`], from `source` when given (original_src), else from the cluster's
/// `upstream_bind_config`.
pub async fn connect_from(
    cluster: &Cluster,
    host: &Host,
    source: Option<Source>,
) -> Result<UpstreamStream, ConnectError> {
    // The overload manager's connection_pool_new_connection point: no new connection, the
    // request fails as when a pool overflows.
    if crate::overload::shed(crate::config::model::ShedPoint::ConnectionPoolNewConnection) {
        return Err(ConnectError::Overflow);
    }
    let stats = &cluster.stats;
    stats.upstream_cx_total.inc();
    HostStats::inc(&host.stats.cx_total);
    let began = std::time::Instant::now();
    let timeout = cluster.config().connect_timeout;
    // The bind address of the address's IP family (`extra_source_addresses`), else the
    // first.
    let cfg = cluster.config();
    let source_for = |to: SocketAddr| {
        let bind = cfg
            .extra_source_addresses
            .iter()
            .chain(cfg.source_address.iter())
            .find(|a| a.is_ipv4() == to.is_ipv4())
            .or(cfg.source_address.as_ref());
        source.or(bind.map(|&address| Source {
            address,
            transparent: false,
            mark: 0,
        }))
    };
    let connect = async {
        #[cfg(feature = "fuzzing")]
        if let Some(s) = crate::fuzzing::upstream(host.address) {
            return Ok(Stream::Internal(crate::io::Internal::new(s)));
        }
        if let Some(to) = &host.internal {
            return crate::listener::internal::connect(
                &to.address,
                host.address,
                to.metadata.clone(),
                host.shared.clone(),
            )
            .await
            .map(Stream::Internal)
            .map_err(ConnectError::Io);
        }
        let mut tcp = if host.addresses.is_empty() {
            open(host.address, source_for(host.address)).await?
        } else {
            open_any(&host.addresses, &source_for).await?
        };
        let _ = tcp.set_nodelay(true);
        if let Some(k) = &cluster.config().tcp_keepalive {
            keepalive(&tcp, k)?;
        }
        // upstream_proxy_protocol: the header first, before TLS or anything else.
        let header = match (cluster.config().proxy_protocol, host.downstream) {
            (Some(version), Some((src, dst))) => {
                Some(super::proxy_protocol::header(version, src, dst))
            }
            _ => None,
        };
        match header {
            // Plain: sent with the first bytes, in one segment.
            Some(h) if host.tls.is_none() => {
                Ok(Stream::TcpPrefixed(crate::io::Prefixed::new(tcp, h)))
            }
            Some(h) => {
                use tokio::io::AsyncWriteExt;
                tcp.write_all(&h).await?;
                tls_handshake(cluster, host, tcp).await
            }
            None => tls_handshake(cluster, host, tcp).await,
        }
    };
    let result = match tokio::time::timeout(timeout, connect).await {
        Err(_) => {
            stats.upstream_cx_connect_timeout.inc();
            Err(ConnectError::Timeout)
        }
        Ok(r) => r,
    };
    match result {
        // Envoy's connection is made once its transport (TLS) is up.
        Ok(s) => Ok(Counted::new(
            s,
            stats.upstream_cx_rx_bytes_total.clone(),
            stats.upstream_cx_tx_bytes_total.clone(),
        ))
        .inspect(|_| stats.upstream_cx_connect_ms.record_ms(began.elapsed())),
        Err(e) => {
            stats.upstream_cx_connect_fail.inc();
            HostStats::inc(&host.stats.cx_connect_fail);
            // Envoy numbers every connection it creates, a failed one too; the ids that
            // follow in the access log stay the same as Envoy's.
            next_connection_id();
            Err(e)
        }
    }
}

/// TLS over `tcp` when the cluster has a `transport_socket`: SNI from `sni` (none configured:
/// no SNI, as Envoy), the server checked as the validation context says.
async fn tls_handshake(
    cluster: &Cluster,
    host: &Host,
    tcp: TcpStream,
) -> Result<Stream, ConnectError> {
    let Some(settings) = &host.tls else {
        return Ok(Stream::Tcp(tcp));
    };
    // Built when the configuration store took the cluster; shared by every worker.
    let tls =
        crate::tls::transport::client(settings).map_err(|e| ConnectError::Tls(e.to_string()))?;
    // Names were parsed once, at translation or when the auto_sni host was made; rustls
    // sends no SNI for an address.
    let name = host
        .sni
        .clone()
        .or_else(|| tls.server_name.clone())
        .unwrap_or_else(|| rustls_pki_types::ServerName::IpAddress(host.address.ip().into()));
    let mut config = tls.config.get();
    // Istio's istio.alpn: this host's list instead of the cluster's.
    if let Some(alpn) = &host.alpn {
        let mut c = (*config).clone();
        c.alpn_protocols = alpn.to_vec();
        config = std::sync::Arc::new(c);
    }
    let connector = tokio_rustls::TlsConnector::from(config);
    match connector.connect(name, tcp).await {
        Ok(s) => {
            if let Some(st) = &cluster.stats.tls {
                st.completed(s.get_ref().1);
            }
            Ok(Stream::ClientTls(Box::new(s)))
        }
        Err(e) => {
            if let Some(st) = &cluster.stats.tls {
                st.failed(&e);
            }
            Err(ConnectError::Tls(e.to_string()))
        }
    }
}

/// The id, local address and TLS version of a new upstream connection.
pub fn connection_info(s: &mut Stream) -> UpstreamConnection {
    let (tcp, tls_version) = match s {
        Stream::Tcp(t) => (Some(&*t), None),
        Stream::TcpPrefixed(p) => (Some(p.get_ref()), None),
        Stream::ClientTls(t) => {
            let (tcp, conn) = t.get_ref();
            (
                Some(tcp),
                conn.protocol_version()
                    .and_then(crate::tls::stats::version_name),
            )
        }
        Stream::ServerTls(_) => (None, None),
        Stream::Internal(_) => {
            return UpstreamConnection {
                id: next_connection_id(),
                local: Some(crate::config::model::INTERNAL_CLIENT),
                tls_version: None,
            }
        }
    };
    UpstreamConnection {
        id: next_connection_id(),
        local: tcp.and_then(|t| t.local_addr().ok()),
        tls_version,
    }
}

impl ConnectError {
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`, worded as Envoy's where the cause is the same.
    pub fn transport_failure_reason(&self) -> Option<String> {
        match self {
            ConnectError::Io(e) => {
                let text = e.to_string();
                // Envoy shows strerror(3) alone.
                let text = match text.rfind(" (os error ") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                };
                Some(format!("delayed connect error: {text}"))
            }
            ConnectError::Tls(e) => Some(format!("TLS error: {e}")),
            ConnectError::Timeout
            | ConnectError::Handshake(_)
            | ConnectError::PendingFailed
            | ConnectError::Overflow
            | ConnectError::PoolOverflow => None,
        }
    }
}

/// `upstream_connection_options.tcp_keepalive`: SO_KEEPALIVE with the settings given.
fn keepalive(tcp: &TcpStream, k: &crate::config::model::TcpKeepalive) -> std::io::Result<()> {
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(t) = k.time {
        ka = ka.with_time(std::time::Duration::from_secs(u64::from(t)));
    }
    if let Some(i) = k.interval {
        ka = ka.with_interval(std::time::Duration::from_secs(u64::from(i)));
    }
    if let Some(p) = k.probes {
        ka = ka.with_retries(p);
    }
    socket2::SockRef::from(tcp).set_tcp_keepalive(&ka)
}

/// A TCP connection to `addr`, from `source` when one is set.
/// How long a connection attempt to one of a host's addresses has before the next address is
/// tried too (Envoy's happy eyeballs: 300 ms).
const NEXT_ADDRESS_DELAY: std::time::Duration = std::time::Duration::from_millis(300);

/// A connection to the first of `addresses` that answers, as Envoy's happy eyeballs makes it:
/// an attempt to each in turn, the next one started when the one before fails or has not
/// connected within [`NEXT_ADDRESS_DELAY`]; the first connected wins and the others are
/// dropped. The last failure when all fail.
async fn open_any(
    addresses: &[SocketAddr],
    source_for: &dyn Fn(SocketAddr) -> Option<Source>,
) -> std::io::Result<TcpStream> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let attempt = |to: SocketAddr| open(to, source_for(to));
    let mut attempts = FuturesUnordered::new();
    let mut rest = addresses.iter().copied();
    let Some(first) = rest.next() else {
        return Err(std::io::Error::other("a host without addresses"));
    };
    attempts.push(attempt(first));
    let mut next = rest.next();
    let delay = tokio::time::sleep(NEXT_ADDRESS_DELAY);
    tokio::pin!(delay);
    loop {
        tokio::select! {
            Some(r) = attempts.next() => match r {
                Ok(s) => return Ok(s),
                Err(e) => match next.take() {
                    Some(to) => {
                        attempts.push(attempt(to));
                        next = rest.next();
                        delay.as_mut().reset(tokio::time::Instant::now() + NEXT_ADDRESS_DELAY);
                    }
                    None if attempts.is_empty() => return Err(e),
                    None => {}
                },
            },
            () = &mut delay, if next.is_some() => {
                if let Some(to) = next.take() {
                    attempts.push(attempt(to));
                }
                next = rest.next();
                delay.as_mut().reset(tokio::time::Instant::now() + NEXT_ADDRESS_DELAY);
            }
            else => return Err(std::io::Error::other("no address of the host answered")),
        }
    }
}

async fn open(addr: SocketAddr, source: Option<Source>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    let raw = socket2::SockRef::from(&socket);
    if source.transparent {
        if addr.is_ipv4() {
            raw.set_ip_transparent_v4(true)?;
        } else {
            raw.set_ip_transparent_v6(true)?;
        }
    }
    if source.mark != 0 {
        raw.set_mark(source.mark)?;
    }
    if source.address.port() != 0 {
        socket.set_reuseaddr(true)?;
    }
    socket.bind(source.address)?;
    socket.connect(addr).await
}

/// Counts a live upstream connection until dropped. It holds the counters, not the cluster or
/// the host: a pooled connection's task owns it, and the host owns the pool, so holding the
/// host here would keep a removed host (and its idle connections) alive for ever.
#[derive(Debug)]
pub struct ConnGuard {
    active: crate::stats::Gauge,
    destroyed: Arc<super::DestroyCounters>,
    /// How it ended: closed by the upstream, and with a request on it.
    how: Cell<(bool, bool)>,
    /// `upstream_cx_length_ms`, from when it was made.
    length: crate::stats::Histogram,
    since: std::time::Instant,
    host: Arc<HostStats>,
    /// Its place in the cluster's `max_connections` breaker.
    _cx: Held,
    /// Its pool's place in `max_connection_pools` (HTTP pools).
    _pool: Option<SlotLease>,
}

impl ConnGuard {
    /// How the connection ends (`upstream_cx_destroy_{local,remote}[_with_active_rq]`):
    /// closed by the upstream or by skiff, and with a request under way or not. Without a
    /// word, it ended idle and by skiff's hand.
    pub fn ended(&self, remote: bool, active: bool) {
        self.how.set((remote, active));
    }

    /// A pooled connection, counted in its pool's place in `max_connection_pools`.
    pub fn in_pool(mut self, lease: SlotLease) -> Self {
        self._pool = Some(lease);
        self
    }

    /// Starts counting a connection that holds `cx` of the connection breaker.
    pub fn new(cluster: &Rc<Cluster>, host: &Rc<Host>, cx: Held) -> Self {
        cluster.stats.upstream_cx_active.inc();
        HostStats::inc(&host.stats.cx_active);
        ConnGuard {
            active: cluster.stats.upstream_cx_active.clone(),
            destroyed: cluster.stats.upstream_cx_destroy.clone(),
            how: Cell::new((false, false)),
            length: cluster.stats.upstream_cx_length_ms.clone(),
            since: std::time::Instant::now(),
            host: host.stats.clone(),
            _cx: cx,
            _pool: None,
        }
    }
}

/// A request waiting for a connection: its place in the `max_pending_requests` breaker and
/// `upstream_rq_pending_active`.
struct Pending {
    _held: Held,
    active: crate::stats::Gauge,
}

impl Pending {
    /// A pending request, or `Overflow` when the breaker is at its limit.
    fn new(cluster: &Cluster, host: &Host) -> Result<Pending, ConnectError> {
        let Some(held) = cluster.info.breakers.of(host.high).pending.try_acquire() else {
            cluster.stats.upstream_rq_pending_overflow.inc();
            return Err(ConnectError::Overflow);
        };
        cluster.stats.upstream_rq_pending_total.inc();
        cluster.stats.upstream_rq_pending_active.inc();
        Ok(Pending {
            _held: held,
            active: cluster.stats.upstream_rq_pending_active.clone(),
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// A request's place in the `max_requests` breaker, taken when it gets its connection (where
/// Envoy checks it and counts the request), or `Overflow`.
fn attach(cluster: &Cluster, host: &Host) -> Result<Held, ConnectError> {
    let Some(held) = cluster.info.breakers.of(host.high).requests.try_acquire() else {
        cluster.stats.upstream_rq_active_overflow.inc();
        return Err(ConnectError::Overflow);
    };
    attached(cluster, host);
    Ok(held)
}

/// Counts a request that got its connection (`upstream_rq_total`, the host's `rq_total`).
fn attached(cluster: &Cluster, host: &Host) {
    cluster.stats.upstream_rq_total.inc();
    HostStats::inc(&host.stats.rq_total);
}

/// How long a request waiting for connection room sleeps between looks, when nothing in its
/// own pool tells it that room was made (a connection of another worker or host closing).
const PENDING_RECHECK: std::time::Duration = std::time::Duration::from_millis(20);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.active.dec();
        let (remote, active) = self.how.get();
        self.destroyed.count(remote, active);
        self.length.record_ms(self.since.elapsed());
        HostStats::dec(&self.host.cx_active);
    }
}

/// An HTTP/1.1 connection's request handle, with the slot where the request it is sending
/// counts its pauses.
#[derive(Debug)]
pub struct Http1Sender {
    send: http1::SendRequest<ProxyBody>,
    flow: FlowSlot,
    /// The request on it holds a place in the `max_requests` breaker.
    rq: Option<Held>,
    /// Requests it took so far, and whether the last one allowed
    /// (`max_requests_per_connection`) has: then it is not reused.
    requests: u32,
    spent: bool,
    /// Shared with the connection's driver, which runs its idle and duration timers; what
    /// never changes is kept there too, so that a sender (moved several times a request) stays
    /// small.
    state: Rc<H1State>,
    /// Its pool's counts.
    slot: Rc<PoolSlot>,
}

impl Http1Sender {
    /// What the access log shows of this connection.
    pub fn info(&self) -> UpstreamConnection {
        self.state.info
    }

    /// A request takes it (with its place in `max_requests`).
    fn taken(&mut self, rq: Held) {
        if self.rq.replace(rq).is_none() {
            self.slot.active.set(self.slot.active.get() + 1);
        }
    }

    /// Its request is over.
    fn released(&mut self) {
        if self.rq.take().is_some() {
            self.slot
                .active
                .set(self.slot.active.get().saturating_sub(1));
        }
    }
}

impl Drop for Http1Sender {
    fn drop(&mut self) {
        self.released();
        self.state.per_cx.record(u64::from(self.requests));
        self.state.local_close.set(true);
    }
}

/// Closes an HTTP/1.1 connection when dropped armed ([`Http1Sender::abandon_guard`]).
#[derive(Debug)]
pub struct AbandonGuard(Option<Rc<H1State>>);

impl AbandonGuard {
    /// The wait ended: nothing to do.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.abandoned.notify_one();
        }
    }
}

/// What an HTTP/1.1 connection's driver knows of its use (no wake-up per request: the
/// driver looks when its timers fire).
#[derive(Debug)]
struct H1State {
    /// A request has it (it is not in the pool).
    busy: Cell<bool>,
    /// When it last went back to the pool.
    idle_since: Cell<tokio::time::Instant>,
    /// `max_connection_duration` passed: it takes no new request.
    expired: Cell<bool>,
    /// Its request was reset half way: the connection closes now.
    abandoned: tokio::sync::Notify,
    /// skiff closes it (its sender is gone, its request was reset, or the response said
    /// the connection ends): an end now is not the upstream's doing.
    local_close: Cell<bool>,
    /// What the access log shows of this connection.
    info: UpstreamConnection,
    /// `upstream_rq_per_cx`, when the connection is done with.
    per_cx: crate::stats::Histogram,
    /// The pool's generation when it was made.
    generation: u64,
}

impl H1State {
    fn set_busy(&self, busy: bool) {
        self.busy.set(busy);
        if !busy {
            self.idle_since.set(tokio::time::Instant::now());
        }
    }
}

impl Http1Sender {
    /// Its request was reset before both ends of the exchange were through: the connection
    /// closes at once, whatever it was still writing or reading (Envoy closes it too).
    pub fn abandon(self) {
        self.state.local_close.set(true);
        self.state.abandoned.notify_one();
    }

    /// The response says the connection ends after it (`connection: close`, or HTTP/1.0
    /// without keep-alive): skiff closes it then, as Envoy does.
    pub fn saw_response<B>(&self, resp: &http::Response<B>) {
        let says = |word: &str| {
            resp.headers()
                .get_all(http::header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(word))
        };
        let closes = if resp.version() == http::Version::HTTP_10 {
            !says("keep-alive")
        } else {
            says("close")
        };
        if closes {
            self.state.local_close.set(true);
        }
    }

    /// A guard that closes the connection if it is dropped before [`AbandonGuard::disarm`]:
    /// held across the wait for a response, so that a stream reset meanwhile (its future
    /// dropped) does not leave the connection writing the rest of the request.
    pub fn abandon_guard(&self) -> AbandonGuard {
        AbandonGuard(Some(self.state.clone()))
    }

    /// From now on, back-ups of this connection also count in `flow` (the request's HCM).
    pub fn sending_for(&self, flow: FlowPair) {
        *self.flow.borrow_mut() = Some(flow);
    }
}

impl std::ops::Deref for Http1Sender {
    type Target = http1::SendRequest<ProxyBody>;
    fn deref(&self) -> &Self::Target {
        &self.send
    }
}

impl std::ops::DerefMut for Http1Sender {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.send
    }
}

/// Which side of a connection ended first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The peer's FIN (a read of nothing) or a reset.
    Peer,
    /// skiff shut its side.
    Ours,
}

/// A connection that notes which side ended first.
struct EndWatch<S> {
    inner: S,
    /// Shared with the connection's driver (an upgraded connection must be `Send`).
    ends: Arc<Ends>,
}

/// What an [`EndWatch`] saw.
#[derive(Debug, Default)]
struct Ends {
    /// The side that ended first.
    first: std::sync::OnceLock<End>,
    /// Bytes went out and none came back since: a request waits for its response.
    unanswered: std::sync::atomic::AtomicBool,
}

impl<S> EndWatch<S> {
    fn note(&self, end: End) {
        let _ = self.ends.first.set(end);
    }

    fn unanswered(&self, yes: bool) {
        self.ends
            .unanswered
            .store(yes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for EndWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.unanswered(false),
            Poll::Ready(Ok(())) if buf.remaining() > 0 => self.note(End::Peer),
            Poll::Ready(Err(_)) => self.note(End::Peer),
            _ => {}
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for EndWatch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.unanswered(true);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.unanswered(true);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.note(End::Ours);
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Idle HTTP/1.1 connections to one host.
#[derive(Debug, Default)]
pub struct Http1Pool {
    /// Its place in `max_connection_pools`.
    slot: Rc<PoolSlot>,
    idle: RefCell<Vec<Http1Sender>>,
    /// Wakes a request waiting for a connection when one comes back idle.
    released: Notify,
}

impl Http1Pool {
    /// An idle connection that is still open, if any.
    pub fn take_idle(&self) -> Option<Http1Sender> {
        let mut idle = self.idle.borrow_mut();
        while let Some(s) = idle.pop() {
            if !s.is_closed() && !s.state.expired.get() {
                s.state.set_busy(true);
                return Some(s);
            }
        }
        None
    }

    /// Returns a connection whose response has been read completely.
    pub fn put_idle(&self, mut s: Http1Sender) {
        s.flow.borrow_mut().take();
        s.released();
        s.state.set_busy(false);
        if !s.is_closed()
            && !s.spent
            && !s.state.expired.get()
            && s.state.generation == self.slot.generation.get()
        {
            self.idle.borrow_mut().push(s);
            self.released.notify_one();
        }
    }

    /// Closes the idle connections, and each busy one once its request is done (Envoy's
    /// connection pool drain).
    pub fn drain(&self) {
        self.slot.generation.set(self.slot.generation.get() + 1);
        self.clear();
    }

    /// The request takes `s` if `max_requests` lets it; else `s` goes back to the pool.
    fn attach_to(
        &self,
        cluster: &Cluster,
        host: &Host,
        mut s: Http1Sender,
        reused: bool,
    ) -> Result<(Http1Sender, bool), ConnectError> {
        match attach(cluster, host) {
            Ok(held) => {
                s.taken(held);
                s.requests += 1;
                if cluster
                    .config()
                    .max_requests_per_connection
                    .is_some_and(|m| s.requests >= m)
                {
                    // As Envoy: counted when the last request it may take is attached; the
                    // connection closes once that request ends.
                    s.spent = true;
                    cluster.stats.upstream_cx_max_requests.inc();
                }
                Ok((s, reused))
            }
            Err(e) => {
                self.put_idle(s);
                Err(e)
            }
        }
    }

    /// A connection for one request, with the cluster's circuit breakers as Envoy's pool
    /// applies them: an idle connection if there is one; else the request is pending
    /// (`max_pending_requests`) and a new connection opens if `max_connections` allows,
    /// otherwise (`upstream_cx_overflow`) it waits for a connection to come back. The request
    /// then takes its place in `max_requests`. True with a reused connection.
    pub async fn acquire(
        &self,
        cluster: &Rc<Cluster>,
        host: &Rc<Host>,
    ) -> Result<(Http1Sender, bool), ConnectError> {
        cluster.predict();
        let (mut pending, mut overflowed) = (None, false);
        let ratio = cluster.config().preconnect_ratio;
        let mut waiting = None;
        loop {
            if let Some(s) = self.take_idle() {
                drop(waiting);
                let r = self.attach_to(cluster, host, s, true);
                self.preconnect(cluster, host);
                return r;
            }
            if pending.is_none() {
                pending = Some(Pending::new(cluster, host)?);
                waiting = Some(Waiting::new(&self.slot));
            }
            // With a preconnect ratio, a connection is made only when the pool is short of
            // its provision (the others being made may serve this request).
            let short = ratio.is_none_or(|r| self.short(r));
            if let Some(cx) = (short && host_room(cluster, host))
                .then(|| {
                    cluster
                        .info
                        .breakers
                        .of(host.high)
                        .connections
                        .try_acquire()
                })
                .flatten()
            {
                let lease = self.slot.lease(cluster, host)?;
                self.preconnect(cluster, host);
                // A new connection is the rare path: its futures are boxed, so that a request
                // served from the pool does not carry (and copy) their state.
                let stream = Box::pin(connect(cluster, host)).await?;
                let s = Box::pin(http1_on(cluster, host, stream, (cx, lease))).await?;
                drop(pending);
                drop(waiting);
                return self.attach_to(cluster, host, s, false);
            }
            if short && !overflowed {
                // Once per request, as Envoy counts its failed attempt to add a connection.
                cluster.stats.upstream_cx_overflow.inc();
                overflowed = true;
            }
            let _ = tokio::time::timeout(PENDING_RECHECK, self.released.notified()).await;
        }
    }

    /// Drops every idle connection (drain).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }

    /// Whether the pool has fewer connections (made or being made) than `ratio` times its
    /// requests, those under way and those waiting (Envoy's provisioning).
    fn short(&self, ratio: f64) -> bool {
        let demand = (self.slot.active.get() + self.slot.waiting.get()) as f64;
        demand * ratio > self.slot.conns.get() as f64
    }

    /// `preconnect_policy`: connections made ahead, up to three at a time, while the pool is
    /// short of its provision; each joins the idle ones when it is up.
    fn preconnect(&self, cluster: &Rc<Cluster>, host: &Rc<Host>) {
        let Some(ratio) = cluster.config().preconnect_ratio else {
            return;
        };
        for _ in 0..3 {
            if !self.short(ratio) || !self.connect_ahead(cluster, host) {
                return;
            }
        }
    }

    /// The pool's requests waiting, its requests under way, and its connections free for one
    /// (idle, or being made).
    pub fn provision(&self) -> (usize, usize, usize) {
        let (active, conns) = (self.slot.active.get(), self.slot.conns.get());
        (
            self.slot.waiting.get(),
            active,
            conns.saturating_sub(active),
        )
    }

    /// One connection made ahead, if the breakers allow it; it joins the idle ones when it is
    /// up. False when none could be started.
    pub fn connect_ahead(&self, cluster: &Rc<Cluster>, host: &Rc<Host>) -> bool {
        let Some((cx, lease)) = room_ahead(&self.slot, cluster, host) else {
            return false;
        };
        let (cluster, host) = (cluster.clone(), host.clone());
        tokio::task::spawn_local(async move {
            let Ok(stream) = connect(&cluster, &host).await else {
                return;
            };
            if let Ok(s) = http1_on(&cluster, &host, stream, (cx, lease)).await {
                host.h1.put_idle(s);
            }
        });
        true
    }
}

/// `auto_config`: whether `host` speaks HTTP/2, learned from the ALPN of a first connection,
/// which then joins the matching pool.
pub async fn negotiate(cluster: &Rc<Cluster>, host: &Rc<Host>) -> Result<bool, ConnectError> {
    if let Some(h2) = host.negotiated_h2.get() {
        return Ok(h2);
    }
    let mut stream = connect(cluster, host).await?;
    let h2 = match stream.get_mut() {
        Stream::ClientTls(t) => t.get_ref().1.alpn_protocol() == Some(b"h2"),
        _ => false,
    };
    host.negotiated_h2.set(Some(h2));
    let cx = cluster
        .info
        .breakers
        .of(host.high)
        .connections
        .acquire_anyway();
    if h2 {
        let lease = host.h2.slot.lease(cluster, host)?;
        host.h2.adopt(cluster, host, stream, (cx, lease)).await?;
    } else {
        let lease = host.h1.slot.lease(cluster, host)?;
        host.h1
            .put_idle(http1_on(cluster, host, stream, (cx, lease)).await?);
    }
    Ok(h2)
}

/// Opens a new HTTP/1.1 connection; its driver runs on this worker until it closes.
pub async fn connect_http1(
    cluster: &Rc<Cluster>,
    host: &Rc<Host>,
) -> Result<Http1Sender, ConnectError> {
    let lease = host.h1.slot.lease(cluster, host)?;
    let stream = connect(cluster, host).await?;
    let cx = cluster
        .info
        .breakers
        .of(host.high)
        .connections
        .acquire_anyway();
    let mut s = http1_on(cluster, host, stream, (cx, lease)).await?;
    s.taken(
        cluster
            .info
            .breakers
            .of(host.high)
            .requests
            .acquire_anyway(),
    );
    attached(cluster, host);
    s.requests = 1;
    if cluster
        .config()
        .max_requests_per_connection
        .is_some_and(|m| m <= 1)
    {
        s.spent = true;
        cluster.stats.upstream_cx_max_requests.inc();
    }
    Ok(s)
}

/// HTTP/1.1 over a connection already made, which holds `cx` of the connection breaker.
async fn http1_on(
    cluster: &Rc<Cluster>,
    host: &Rc<Host>,
    mut stream: UpstreamStream,
    (cx, lease): (Held, SlotLease),
) -> Result<Http1Sender, ConnectError> {
    let slot = lease.0.clone();
    let info = connection_info(stream.get_mut());
    let flow = FlowSlot::default();
    let stream = WriteFlow::new(
        stream,
        Some(FlowPair::new(
            &cluster.stats.upstream_flow_control_backed_up_total,
            &cluster.stats.upstream_flow_control_drained_total,
        )),
        flow.clone(),
    );
    let ends = Arc::new(Ends::default());
    let stream = EndWatch {
        inner: stream,
        ends: ends.clone(),
    };
    let case = cluster.config().header_case;
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(http1_read_buffer(cluster.config().buffer_limit))
        .title_case_headers(case == crate::config::model::HeaderCase::ProperCase)
        .preserve_header_case(case == crate::config::model::HeaderCase::Preserve)
        .trailers(cluster.config().h1_trailers)
        .handshake::<_, ProxyBody>(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    cluster.stats.upstream_cx_http1_total.inc();
    let guard = ConnGuard::new(cluster, host, cx).in_pool(lease);
    let state = Rc::new(H1State {
        busy: Cell::new(true),
        idle_since: Cell::new(tokio::time::Instant::now()),
        expired: Cell::new(false),
        abandoned: tokio::sync::Notify::new(),
        local_close: Cell::new(false),
        info,
        per_cx: cluster.stats.upstream_rq_per_cx.clone(),
        generation: slot.generation.get(),
    });
    let timers = Timers::of(cluster);
    let driver_state = state.clone();
    tokio::task::spawn_local(async move {
        let state = driver_state;
        // With upgrades, a 101 hands the connection over to the tunnel (websockets).
        let conn = conn.with_upgrades();
        tokio::pin!(conn);
        let max = timers.max_deadline();
        let idle_timer = sleep_for(timers.idle);
        tokio::pin!(idle_timer);
        // The pool's own reasons to close it wake the task rarely: they are polled only when
        // one of them did (not at every read and write of the connection).
        enum Control {
            Abandoned,
            Idle,
            Expired,
        }
        let max = sleep_until(max);
        tokio::pin!(max);
        loop {
            let control = crate::gate::gated(async {
                tokio::select! {
                    biased;
                    () = state.abandoned.notified() => Control::Abandoned,
                    () = &mut idle_timer => Control::Idle,
                    () = &mut max, if !state.expired.get() => Control::Expired,
                }
            });
            let control = tokio::select! {
                biased;
                r = &mut conn => {
                    // The upstream's end came first (its FIN while skiff had not shut its
                    // side), or the exchange broke: the upstream closed it. hyper ends a
                    // connection in the middle of a response with an error.
                    let remote = !state.local_close.get()
                        && (r.is_err() || ends.first.get() == Some(&End::Peer));
                    if let Err(e) = &r {
                        tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
                    }
                    let unanswered = ends.unanswered.load(std::sync::atomic::Ordering::Relaxed);
                    guard.ended(remote, remote && (r.is_err() || unanswered));
                    break;
                }
                c = control => c,
            };
            match control {
                Control::Abandoned => break,
                // An hour (or `idle_timeout`) in the pool without a request: closed.
                Control::Idle => {
                    let Some(idle) = timers.idle else { continue };
                    let now = tokio::time::Instant::now();
                    let due = if state.busy.get() {
                        now + idle
                    } else {
                        state.idle_since.get() + idle
                    };
                    if due <= now {
                        timers.idle_timeout.inc();
                        break;
                    }
                    idle_timer.set(sleep_for(Some(due - now)));
                }
                // `max_connection_duration`: no new request; closed now if idle, else once its
                // request ends (it does not go back to the pool).
                Control::Expired => {
                    state.expired.set(true);
                    timers.max_duration.inc();
                    if !state.busy.get() {
                        break;
                    }
                }
            }
        }
        drop(guard);
    });
    Ok(Http1Sender {
        send: sender,
        flow,
        rq: None,
        requests: 0,
        spent: false,
        state,
        slot,
    })
}

/// A place for a connection made ahead of requests, in the breakers and in the pool's
/// `max_connection_pools` slot; none when either is full.
fn room_ahead(slot: &Rc<PoolSlot>, cluster: &Cluster, host: &Host) -> Option<(Held, SlotLease)> {
    if !host_room(cluster, host) {
        return None;
    }
    let cx = cluster
        .info
        .breakers
        .of(host.high)
        .connections
        .try_acquire()?;
    let lease = slot.lease(cluster, host).ok()?;
    Some((cx, lease))
}

/// Whether `host` may have one more connection (`per_host_thresholds`' `max_connections`,
/// over all workers).
fn host_room(cluster: &Cluster, host: &Host) -> bool {
    cluster
        .config()
        .circuit_breakers
        .per_host_max_connections
        .is_none_or(|m| {
            host.stats
                .cx_active
                .load(std::sync::atomic::Ordering::Relaxed)
                < m
        })
}

/// A pooled connection's timers: `idle_timeout` and `max_connection_duration`, and their
/// counters.
struct Timers {
    idle: Option<std::time::Duration>,
    max: Option<std::time::Duration>,
    idle_timeout: crate::stats::Counter,
    max_duration: crate::stats::Counter,
}

impl Timers {
    fn of(cluster: &Cluster) -> Timers {
        Timers {
            idle: cluster.config().pool_idle_timeout,
            max: cluster.config().max_connection_duration,
            idle_timeout: cluster.stats.upstream_cx_idle_timeout.clone(),
            max_duration: cluster.stats.upstream_cx_max_duration_reached.clone(),
        }
    }

    /// When the connection's duration ends, if it has a limit.
    fn max_deadline(&self) -> Option<tokio::time::Instant> {
        self.max.map(|d| tokio::time::Instant::now() + d)
    }
}

/// Sleeps for `d`, or for ever without one.
async fn sleep_for(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or for ever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The most an upstream HTTP/1.1 connection buffers: the cluster's
/// `per_connection_buffer_limit_bytes`, at least 64 KiB so response headers up to Envoy's 60 KiB
/// limit fit, and at most 256 KiB (larger reads gain no throughput and only cost memory).
/// Response bytes beyond it stay in the socket until the client has taken the earlier ones.
fn http1_read_buffer(buffer_limit: usize) -> usize {
    buffer_limit.clamp(64 * 1024, 256 * 1024)
}

/// One HTTP/2 connection.
#[derive(Debug)]
pub struct Http2Conn {
    send: h2::client::SendRequest<Bytes>,
    /// Streams under way, and since when it has had none (shared with its driver, which runs
    /// the idle and duration timers).
    active: Rc<Cell<usize>>,
    idle_since: Rc<Cell<tokio::time::Instant>>,
    /// Wakes the driver when the last stream of a retired connection ends.
    drained: Rc<Notify>,
    /// Streams opened on it, for `max_requests_per_connection`.
    opened: Cell<u32>,
    peer_max: Rc<Cell<usize>>,
    closed: Rc<Cell<bool>>,
    limit: usize,
    /// What the access log shows of this connection.
    pub info: UpstreamConnection,
    /// Tells the connection's driver that the pool and its streams are done with it: the
    /// connection then closes (GOAWAY) once its last stream ends.
    release: Rc<Notify>,
    /// `upstream_rq_per_cx`, when the connection is done with.
    per_cx: crate::stats::Histogram,
}

impl Drop for Http2Conn {
    fn drop(&mut self) {
        self.release.notify_one();
        self.per_cx.record(u64::from(self.opened.get()));
    }
}

impl Http2Conn {
    fn has_room(&self) -> bool {
        !self.closed.get() && self.active.get() < self.peer_max.get().min(self.limit)
    }

    /// Refuses further streams on this connection (it sent GOAWAY or failed).
    pub fn retire(&self) {
        self.closed.set(true);
    }
}

/// Holds one stream's slot on an HTTP/2 connection until dropped.
#[derive(Debug)]
pub struct Http2Stream {
    conn: Rc<Http2Conn>,
    /// The stream's place in the `max_requests` breaker.
    _rq: Option<Held>,
}

impl Http2Stream {
    /// The connection's request handle.
    pub fn sender(&self) -> h2::client::SendRequest<Bytes> {
        self.conn.send.clone()
    }

    /// The connection, to retire it.
    pub fn conn(&self) -> &Rc<Http2Conn> {
        &self.conn
    }
}

impl Http2Stream {
    /// Counts the stream on its connection; the last one `max_requests_per_connection` allows
    /// retires the connection (it finishes its streams and closes), as Envoy drains it.
    fn opened(&self, cluster: &Cluster) {
        let n = self.conn.opened.get() + 1;
        self.conn.opened.set(n);
        if cluster
            .config()
            .max_requests_per_connection
            .is_some_and(|m| n >= m)
        {
            self.conn.retire();
            cluster.stats.upstream_cx_max_requests.inc();
        }
    }
}

impl Drop for Http2Stream {
    fn drop(&mut self) {
        let n = self.conn.active.get().saturating_sub(1);
        self.conn.active.set(n);
        if n == 0 {
            self.conn.idle_since.set(tokio::time::Instant::now());
            if self.conn.closed.get() {
                self.conn.drained.notify_one();
            }
        }
    }
}

/// HTTP/2 connections to one host.
#[derive(Debug, Default)]
pub struct Http2Pool {
    /// Its place in `max_connection_pools`.
    slot: Rc<PoolSlot>,
    conns: RefCell<Vec<Rc<Http2Conn>>>,
    /// Connections being made (for a request, or ahead of requests), and the streams they
    /// are expected to carry (the cluster's `max_concurrent_streams` each).
    connecting: Cell<usize>,
    connecting_capacity: Cell<usize>,
    /// Requests waiting for a stream (what `preconnect_policy` provisions for, with the
    /// streams under way).
    waiting: Cell<usize>,
    /// Counts finished connect attempts; waiters compare it to learn that an attempt ended.
    attempts: Cell<u64>,
    last_attempt_failed: Cell<bool>,
    connected: Notify,
}

/// Clears the pool's `connecting` mark and wakes the waiters however the attempt ends, even
/// when the request that made it is cancelled mid-connect.
struct Connecting<'a> {
    pool: &'a Http2Pool,
    failed: bool,
    capacity: usize,
}

impl<'a> Connecting<'a> {
    /// A connection of `pool` being made, expected to carry `capacity` streams.
    fn new(pool: &'a Http2Pool, capacity: usize) -> Self {
        pool.count_connecting(capacity);
        Self::counted(pool, capacity)
    }

    /// A connection already counted as being made (by [`Http2Pool::connect_ahead`]).
    fn counted(pool: &'a Http2Pool, capacity: usize) -> Self {
        Connecting {
            pool,
            failed: true,
            capacity,
        }
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.pool
            .connecting
            .set(self.pool.connecting.get().saturating_sub(1));
        self.pool.connecting_capacity.set(
            self.pool
                .connecting_capacity
                .get()
                .saturating_sub(self.capacity),
        );
        self.pool.attempts.set(self.pool.attempts.get() + 1);
        self.pool.last_attempt_failed.set(self.failed);
        self.pool.connected.notify_waiters();
    }
}

/// A request waiting for an HTTP/2 stream, counted in its pool until dropped.
struct StreamWaiting<'a>(&'a Http2Pool);

impl<'a> StreamWaiting<'a> {
    fn new(pool: &'a Http2Pool) -> Self {
        pool.waiting.set(pool.waiting.get() + 1);
        StreamWaiting(pool)
    }
}

impl Drop for StreamWaiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.set(self.0.waiting.get().saturating_sub(1));
    }
}

impl Http2Pool {
    /// One more connection being made, expected to carry `capacity` streams (a
    /// [`Connecting`] guard takes the count off).
    fn count_connecting(&self, capacity: usize) {
        self.connecting.set(self.connecting.get() + 1);
        self.connecting_capacity
            .set(self.connecting_capacity.get() + capacity);
    }

    /// Whether the pool's streams, under way and waiting, times `ratio` exceed what its
    /// connections can carry (those being made counted at `limit` streams each): Envoy's
    /// provisioning, `(pending + active) × ratio > unused + active`.
    fn short(&self, ratio: f64) -> bool {
        let (waiting, active, unused) = self.provision();
        (waiting + active) as f64 * ratio > (unused + active) as f64
    }

    /// `preconnect_policy.per_upstream_preconnect_ratio`: connections made ahead, up to three
    /// at a time, while the pool is short of its provision; each joins the pool when it is up.
    fn preconnect(&self, cluster: &Rc<Cluster>, host: &Rc<Host>) {
        let Some(ratio) = cluster.config().preconnect_ratio else {
            return;
        };
        for _ in 0..3 {
            if !self.short(ratio) || !self.connect_ahead(cluster, host) {
                return;
            }
        }
    }

    /// The pool's streams waiting, its streams under way, and the streams its connections
    /// (those being made counted at the cluster's `max_concurrent_streams`) have room for.
    pub fn provision(&self) -> (usize, usize, usize) {
        let conns = self.conns.borrow();
        let active: usize = conns.iter().map(|c| c.active.get()).sum();
        let unused: usize = conns
            .iter()
            .filter(|c| !c.closed.get())
            .map(|c| c.peer_max.get().min(c.limit).saturating_sub(c.active.get()))
            .sum::<usize>()
            + self.connecting_capacity.get();
        (self.waiting.get(), active, unused)
    }

    /// One connection made ahead, if the breakers allow it; it joins the pool when it is up.
    /// False when none could be started.
    pub fn connect_ahead(&self, cluster: &Rc<Cluster>, host: &Rc<Host>) -> bool {
        let Some((cx, lease)) = room_ahead(&self.slot, cluster, host) else {
            return false;
        };
        let capacity = cluster.config().http2.max_concurrent_streams as usize;
        let (cluster, host) = (cluster.clone(), host.clone());
        // Counted as being made from now (the task starts later).
        self.count_connecting(capacity);
        tokio::task::spawn_local(async move {
            let pool = &host.h2;
            let mut guard = Connecting::counted(pool, capacity);
            if let Ok(conn) = connect_http2(&cluster, &host, (cx, lease)).await {
                guard.failed = false;
                pool.conns.borrow_mut().push(Rc::new(conn));
            }
            drop(guard);
        });
        true
    }

    fn reserve(&self) -> Option<Http2Stream> {
        let mut conns = self.conns.borrow_mut();
        conns.retain(|c| !c.closed.get() || c.active.get() > 0);
        let conn = conns.iter().find(|c| c.has_room())?.clone();
        conn.active.set(conn.active.get() + 1);
        Some(Http2Stream { conn, _rq: None })
    }

    /// A stream slot on a connection with room, opening a connection when all are full. While one
    /// connection is being opened, other requests wait for it instead of opening their own; if
    /// that connect fails, they fail with it, as Envoy fails its pending requests.
    pub async fn stream(
        &self,
        cluster: &Rc<Cluster>,
        host: &Rc<Host>,
    ) -> Result<Http2Stream, ConnectError> {
        cluster.predict();
        let (mut pending, mut overflowed) = (None, false);
        let mut waiting = None;
        loop {
            if let Some(mut s) = self.reserve() {
                drop(waiting);
                s._rq = Some(attach(cluster, host)?);
                s.opened(cluster);
                self.preconnect(cluster, host);
                return Ok(s);
            }
            if pending.is_none() {
                pending = Some(Pending::new(cluster, host)?);
                waiting = Some(StreamWaiting::new(self));
            }
            if self.connecting.get() > 0 {
                let attempt = self.attempts.get();
                let notified = self.connected.notified();
                if self.connecting.get() > 0 {
                    notified.await;
                }
                if self.attempts.get() != attempt && self.last_attempt_failed.get() {
                    return Err(ConnectError::PendingFailed);
                }
                continue;
            }
            let Some(cx) = host_room(cluster, host)
                .then(|| {
                    cluster
                        .info
                        .breakers
                        .of(host.high)
                        .connections
                        .try_acquire()
                })
                .flatten()
            else {
                if !overflowed {
                    cluster.stats.upstream_cx_overflow.inc();
                    overflowed = true;
                }
                tokio::time::sleep(PENDING_RECHECK).await;
                continue;
            };
            let lease = self.slot.lease(cluster, host)?;
            let mut guard =
                Connecting::new(self, cluster.config().http2.max_concurrent_streams as usize);
            // A connection being made counts for the requests that wait: more are made
            // ahead only past it.
            self.preconnect(cluster, host);
            // Boxed: the rare path (see Http1Pool::acquire).
            let conn = Rc::new(Box::pin(connect_http2(cluster, host, (cx, lease))).await?);
            guard.failed = false;
            conn.active.set(1);
            self.conns.borrow_mut().push(conn.clone());
            drop(guard);
            drop(pending);
            drop(waiting);
            let mut s = Http2Stream { conn, _rq: None };
            s._rq = Some(attach(cluster, host)?);
            s.opened(cluster);
            self.preconnect(cluster, host);
            return Ok(s);
        }
    }

    /// Takes a connection made elsewhere (an `auto_config` probe that chose HTTP/2).
    pub async fn adopt(
        &self,
        cluster: &Rc<Cluster>,
        host: &Rc<Host>,
        stream: UpstreamStream,
        cx: (Held, SlotLease),
    ) -> Result<(), ConnectError> {
        let conn = Rc::new(http2_on(cluster, host, stream, cx).await?);
        self.conns.borrow_mut().push(conn);
        self.connected.notify_waiters();
        Ok(())
    }

    /// Stops using every connection for new streams (drain): each closes once its streams end.
    pub fn clear(&self) {
        for c in self.conns.borrow_mut().drain(..) {
            c.retire();
        }
    }
}

async fn connect_http2(
    cluster: &Rc<Cluster>,
    host: &Rc<Host>,
    cx: (Held, SlotLease),
) -> Result<Http2Conn, ConnectError> {
    let stream = connect(cluster, host).await?;
    http2_on(cluster, host, stream, cx).await
}

/// HTTP/2 over a connection already made, which holds `cx` of the connection breaker.
async fn http2_on(
    cluster: &Rc<Cluster>,
    host: &Rc<Host>,
    mut stream: UpstreamStream,
    (cx, lease): (Held, SlotLease),
) -> Result<Http2Conn, ConnectError> {
    let info = connection_info(stream.get_mut());
    let cfg = cluster.config().http2;
    let (stream_window, conn_window) = cfg.windows(cluster.config().buffer_limit);
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(stream_window)
        .initial_connection_window_size(conn_window)
        .enable_push(false)
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    cluster.stats.upstream_cx_http2_total.inc();
    let peer_max = Rc::new(Cell::new(usize::MAX));
    let closed = Rc::new(Cell::new(false));
    let guard = ConnGuard::new(cluster, host, cx).in_pool(lease);
    let driver = Driver {
        conn,
        peer_max: peer_max.clone(),
        probe: Some(send.clone()),
        closed: closed.clone(),
        close_notify: cluster.stats.upstream_cx_close_notify.clone(),
    };
    let closed_by_driver = closed.clone();
    let mut driver = driver;
    let keepalive = cfg.keepalive.and_then(|k| {
        let timeouts = cluster.stats.lazy_counter("http2.keepalive_timeout");
        driver.conn.ping_pong().map(|pings| (k, pings, timeouts))
    });
    let release = Rc::new(Notify::new());
    let released = release.clone();
    let active = Rc::new(Cell::new(0usize));
    let idle_since = Rc::new(Cell::new(tokio::time::Instant::now()));
    let drained = Rc::new(Notify::new());
    let (d_active, d_idle_since, d_drained, d_closed) = (
        active.clone(),
        idle_since.clone(),
        drained.clone(),
        closed.clone(),
    );
    let timers = Timers::of(cluster);
    tokio::task::spawn_local(async move {
        let max = timers.max_deadline();
        let idle_timer = sleep_for(timers.idle);
        tokio::pin!(idle_timer);
        let mut expired = false;
        let alive = async {
            match keepalive {
                Some((k, pings, timeouts)) => {
                    keep_alive(k, pings).await;
                    timeouts.inc();
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(alive);
        // As for HTTP/1.1: the pool's reasons are polled only when one of them woke the task.
        enum Control {
            KeepaliveTimeout,
            Released,
            Idle,
            Expired,
            Drained,
        }
        let max = sleep_until(max);
        tokio::pin!(max);
        loop {
            let probing = driver.probe.is_some();
            let control = crate::gate::gated(async {
                tokio::select! {
                    () = &mut alive => Control::KeepaliveTimeout,
                    () = released.notified(), if probing => Control::Released,
                    () = &mut idle_timer => Control::Idle,
                    () = &mut max, if !expired => Control::Expired,
                    () = d_drained.notified(), if expired => Control::Drained,
                }
            });
            let control = tokio::select! {
                biased;
                r = &mut driver => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                    }
                    // Not released nor retired by skiff: the upstream ended it.
                    if driver.probe.is_some() && !d_closed.get() {
                        guard.ended(true, d_active.get() > 0);
                    }
                    break;
                }
                c = control => c,
            };
            match control {
                // A PING left unanswered: the connection is closed with whatever it carries.
                Control::KeepaliveTimeout => {
                    tracing::debug!("upstream HTTP/2 keepalive timed out");
                    break;
                }
                // Nothing but the probe holds the connection now: h2 closes it once its streams
                // end.
                Control::Released => driver.probe = None,
                // An hour (or `idle_timeout`) without a stream: closed.
                Control::Idle => {
                    let Some(idle) = timers.idle else { continue };
                    let now = tokio::time::Instant::now();
                    let due = if d_active.get() > 0 {
                        now + idle
                    } else {
                        d_idle_since.get() + idle
                    };
                    if due <= now {
                        d_closed.set(true);
                        timers.idle_timeout.inc();
                        break;
                    }
                    idle_timer.set(sleep_for(Some(due - now)));
                }
                // `max_connection_duration`: no new stream; closed once the last one ends.
                Control::Expired => {
                    expired = true;
                    d_closed.set(true);
                    timers.max_duration.inc();
                    if d_active.get() == 0 {
                        break;
                    }
                }
                Control::Drained => {
                    if d_active.get() == 0 {
                        break;
                    }
                }
            }
        }
        closed_by_driver.set(true);
        drop(guard);
    });
    Ok(Http2Conn {
        send,
        active,
        idle_since,
        drained,
        opened: Cell::new(0),
        peer_max,
        closed,
        limit: cfg.max_concurrent_streams as usize,
        info,
        release,
        per_cx: cluster.stats.upstream_rq_per_cx.clone(),
    })
}

/// `connection_keepalive`: a PING every interval (plus jitter); returns when one is not
/// answered within the timeout.
async fn keep_alive(k: crate::config::model::Http2Keepalive, mut pings: h2::PingPong) {
    loop {
        let jitter = k.interval.mul_f64(k.jitter * fastrand::f64());
        tokio::time::sleep(k.interval + jitter).await;
        match tokio::time::timeout(k.timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            // The connection is ending anyway; its driver reports how.
            Ok(Err(_)) => std::future::pending::<()>().await,
            Err(_) => return,
        }
    }
}

/// Drives an h2 connection, publishes the peer's stream limit after every poll, and retires the
/// connection from the pool as soon as the peer sends GOAWAY (the streams it accepted go on).
struct Driver {
    conn: h2::client::Connection<UpstreamStream, Bytes>,
    peer_max: Rc<Cell<usize>>,
    /// A request handle used only to learn of a GOAWAY: it then refuses new streams.
    probe: Option<h2::client::SendRequest<Bytes>>,
    closed: Rc<Cell<bool>>,
    close_notify: crate::stats::Counter,
}

impl Future for Driver {
    type Output = Result<(), h2::Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let r = Pin::new(&mut self.conn).poll(cx);
        let max = self.conn.max_concurrent_send_streams();
        self.peer_max.set(max.max(1));
        if let Some(probe) = self.probe.as_mut() {
            if let Poll::Ready(Err(e)) = probe.poll_ready(cx) {
                if e.is_go_away() && e.is_remote() {
                    self.close_notify.inc();
                }
                self.closed.set(true);
                self.probe = None;
            }
        }
        r
    }
}

/// Sends a request body over an h2 stream, respecting the peer's flow control, then trailers.
/// Each time the stream has to wait for window it is counted as backed up in the cluster's stats
/// and as a pause of reading from the client in `downstream`, and their ends when window comes.
pub async fn pump_h2_body(
    mut body: ProxyBody,
    mut send: h2::SendStream<Bytes>,
    cluster: Rc<Cluster>,
    downstream: FlowPair,
) {
    use http_body_util::BodyExt;
    loop {
        match body.frame().await {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "downstream body failed; resetting upstream stream");
                send.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => {
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        while !data.is_empty() {
                            send.reserve_capacity(data.len());
                            let mut waited = false;
                            let granted = std::future::poll_fn(|cx| {
                                let r = send.poll_capacity(cx);
                                if r.is_pending() && !waited {
                                    waited = true;
                                    cluster.stats.upstream_flow_control_backed_up_total.inc();
                                    downstream.start.inc();
                                }
                                r
                            })
                            .await;
                            if waited {
                                cluster.stats.upstream_flow_control_drained_total.inc();
                                downstream.end.inc();
                            }
                            let granted = match granted {
                                Some(Ok(n)) => n,
                                _ => return,
                            };
                            let chunk = data.split_to(granted.min(data.len()));
                            if send.send_data(chunk, false).is_err() {
                                return;
                            }
                        }
                        if body.is_end_stream() {
                            let _ = send.send_data(Bytes::new(), true);
                            return;
                        }
                        continue;
                    }
                    Err(frame) => frame,
                };
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = send.send_trailers(trailers);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod happy_eyeballs_tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_address_moves_the_connection_on_to_the_next() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let open_at = listener.local_addr().expect("address");
        // A port just freed: refused.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("address")
        };
        let started = std::time::Instant::now();
        let s = open_any(&[closed, open_at], &|_| None)
            .await
            .expect("the second address answers");
        assert_eq!(s.peer_addr().expect("peer"), open_at);
        // At once, not after the next address's delay.
        assert!(started.elapsed() < NEXT_ADDRESS_DELAY);
        // All refused: the last failure.
        let e = open_any(&[closed, closed], &|_| None).await;
        assert!(e.is_err());
    }
}
