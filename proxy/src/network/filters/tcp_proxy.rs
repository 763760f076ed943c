//! `envoy.filters.network.tcp_proxy`: bytes both ways between the downstream connection and a
//! host of the chosen cluster, with half-close in each direction and an idle timeout.

use std::cell::Cell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::io::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::post_tunnel;
use crate::config::model;
use crate::io::Counted;
use crate::stats::{Counter, Shard};
use crate::stream_info::{Connection, ResponseFlag, StreamInfo};
use crate::upstream::pool;
use crate::worker::Worker;

/// Buffers start small so idle connections cost little, and grow with traffic.
const INITIAL_BUFFER: usize = 4 * 1024;
const MAX_BUFFER: usize = 256 * 1024;

/// `tcp.<stat_prefix>.*` on one worker.
#[derive(Debug)]
pub struct TcpProxyStats {
    pub(crate) downstream_cx_total: Counter,
    downstream_cx_no_route: Counter,
    downstream_cx_rx_bytes_total: Counter,
    downstream_cx_tx_bytes_total: Counter,
    downstream_flow_control_paused_reading_total: Counter,
    downstream_flow_control_resumed_reading_total: Counter,
    idle_timeout: Counter,
}

impl TcpProxyStats {
    /// The stats of one TCP proxy on one worker.
    pub fn new(shard: &Arc<Shard>, stat_prefix: &str) -> Self {
        let p = format!("tcp.{stat_prefix}.");
        TcpProxyStats {
            downstream_cx_total: shard.counter(&format!("{p}downstream_cx_total")),
            downstream_cx_no_route: shard.counter(&format!("{p}downstream_cx_no_route")),
            downstream_cx_rx_bytes_total: shard
                .counter(&format!("{p}downstream_cx_rx_bytes_total")),
            downstream_cx_tx_bytes_total: shard
                .counter(&format!("{p}downstream_cx_tx_bytes_total")),
            downstream_flow_control_paused_reading_total: shard
                .counter(&format!("{p}downstream_flow_control_paused_reading_total")),
            downstream_flow_control_resumed_reading_total: shard
                .counter(&format!("{p}downstream_flow_control_resumed_reading_total")),
            idle_timeout: shard.counter(&format!("{p}idle_timeout")),
        }
    }
}

/// Proxies one downstream connection (from `remote`, the downstream remote address) until both directions are done, or it goes idle, then
/// writes its access log line.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    worker: &Rc<Worker>,
    cfg: &model::TcpProxy,
    stats: &TcpProxyStats,
    downstream: Stream,
    remote: SocketAddr,
    local: SocketAddr,
    connection: Arc<Connection>,
    source: Option<pool::Source>,
    buffer_limit: usize,
) {
    stats.downstream_cx_total.inc();
    let mut info =
        (!cfg.access_logs.is_empty()).then(|| connection_info(&connection, remote, local));
    let moved = Moved::default();
    proxy(
        worker,
        cfg,
        stats,
        downstream,
        remote,
        local,
        (source, &connection),
        buffer_limit,
        &moved,
        info.as_mut(),
    )
    .await;
    if let Some(info) = info.as_mut() {
        info.bytes_received = moved.received.get();
        info.bytes_sent = moved.sent.get();
        info.finish();
        worker.access_log.log(&cfg.access_logs, info);
    }
}

/// What the access log (and a rate limit's descriptors) know of a new connection.
pub fn connection_info(
    connection: &Arc<Connection>,
    remote: SocketAddr,
    local: SocketAddr,
) -> StreamInfo {
    let mut info = StreamInfo::new(remote, local);
    // The connection's dynamic metadata: what an internal listener's connecting cluster
    // passed through, and what a rate limit service sent.
    if let Some(m) = &connection.metadata {
        let d = crate::stream_info::DynamicMetadata::default();
        d.with(|into| *into = (**m).clone());
        info.dynamic_metadata = Some(d);
    }
    info.connection = Some(connection.clone());
    // Envoy gives every connection a random stream id (`%STREAM_ID%`).
    info.stream_id = Some(uuid::Uuid::new_v4().to_string());
    info
}

/// The access log line of a connection a read filter in front closed: Envoy made the filter
/// with the connection, and it logs as it goes, having moved nothing.
pub fn log_turned_away(
    worker: &Worker,
    cfg: &model::TcpProxy,
    connection: Connection,
    remote: SocketAddr,
    local: SocketAddr,
) {
    if cfg.access_logs.is_empty() {
        return;
    }
    let mut info = connection_info(&Arc::new(connection), remote, local);
    info.finish();
    worker.access_log.log(&cfg.access_logs, &info);
}

/// Bytes moved on one connection, for its access log line.
#[derive(Debug, Default)]
struct Moved {
    received: Cell<u64>,
    sent: Cell<u64>,
}

#[allow(clippy::too_many_arguments)]
async fn proxy(
    worker: &Rc<Worker>,
    cfg: &model::TcpProxy,
    stats: &TcpProxyStats,
    downstream: Stream,
    remote: SocketAddr,
    local: SocketAddr,
    (source, connection): (Option<pool::Source>, &Connection),
    buffer_limit: usize,
    moved: &Moved,
    mut info: Option<&mut StreamInfo>,
) {
    let picked = cfg.cluster.pick_index();
    let criteria = cfg.criteria.get(picked).and_then(Option::as_deref);
    let Some(cluster) = worker.clusters.get(cfg.cluster.name(picked)) else {
        stats.downstream_cx_no_route.inc();
        if let Some(info) = info {
            info.flags.set(ResponseFlag::NoClusterFound);
        }
        return;
    };
    if let Some(info) = info.as_deref_mut() {
        info.upstream_cluster = Some(cluster.name.clone());
        info.cluster_metadata = Some(cluster.config().metadata.clone());
        info.upstream_cluster_stat = cluster.config().alt_stat_name.as_deref().map(Into::into);
    }
    let Some(host) =
        cluster.select_host_hashed(local, |d| worker.is_own_listener(d), None, 0, criteria)
    else {
        cluster.stats.upstream_cx_none_healthy.inc();
        if let Some(info) = info {
            info.flags.set(ResponseFlag::NoHealthyUpstream);
        }
        return;
    };
    // What the connection's filter state shares with the upstream connection (only
    // internal_upstream hands it over, to an internal listener).
    let shared = cluster
        .config()
        .internal_upstream
        .is_some()
        .then(|| {
            skiff_config::filter_state::View {
                stream: None,
                connection: Some(&connection.filter_state),
            }
            .shared_with_upstream()
        })
        .flatten()
        .map(Arc::new);
    let host = cluster.variant(host, (remote, local), None, shared);
    if let Some(info) = info.as_deref_mut() {
        info.upstream_host = Some(host.address);
        info.upstream_metadata = Some(host.metadata.clone());
    }
    let tunneling = cfg.tunneling.as_deref();
    let h2_tunnel =
        tunneling.is_some() && cluster.config().protocol == model::UpstreamProtocol::Http2;
    let upstream: Box<dyn Io>;
    let _guard: Option<pool::ConnGuard>;
    let mut _request = None;
    if let (Some(t), true) = (tunneling, h2_tunnel) {
        // An HTTP/2 stream of the cluster's pool carries the connection.
        let request = tunnel_request(t, info.as_deref(), remote, local);
        match Box::pin(open_h2_tunnel(&cluster, &host, t, request)).await {
            Ok(io) => upstream = Box::new(io),
            Err(flag) => {
                if let Some(info) = info {
                    info.flags.set(flag);
                }
                return;
            }
        }
        _guard = None;
    } else {
        let connected = match pool::connect_from(&cluster, &host, source).await {
            // tcp_proxy does not know who speaks first: a PROXY header goes out at once.
            Ok(mut s) => s
                .get_mut()
                .send_prefix()
                .await
                .map(|()| s)
                .map_err(pool::ConnectError::Io),
            Err(e) => Err(e),
        };
        if let Some(o) = &cluster.config().outlier {
            use crate::upstream::outlier::Monitor;
            match &connected {
                Ok(_) => Monitor::put_connected_final(&host.stats, o),
                Err(pool::ConnectError::Timeout) => Monitor::put_timeout(&host.stats, o, 504),
                Err(_) => Monitor::put_connect_failed(&host.stats, o),
            }
        }
        let mut conn = match connected {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, upstream = %host.address, "tcp_proxy connect failed");
                if let Some(info) = info {
                    info.flags.set(ResponseFlag::UpstreamConnectionFailure);
                    info.upstream_transport_failure = e.transport_failure_reason();
                }
                return;
            }
        };
        if let Some(info) = info.as_deref_mut() {
            info.upstream_connection = Some(pool::connection_info(conn.get_mut()));
        }
        // Counted in the connection breaker (tcp_proxy does not wait on it yet).
        let cx = cluster.info.breakers.default.connections.acquire_anyway();
        _guard = Some(pool::ConnGuard::new(&cluster, &host, cx));
        _request = Some(ActiveRequest::new(&cluster, &host));
        upstream = match tunneling {
            None => Box::new(conn),
            Some(t) => {
                let request = tunnel_request(t, info.as_deref(), remote, local);
                match Box::pin(open_h1_tunnel(conn, t, request)).await {
                    Ok(io) => Box::new(io),
                    Err(e) => {
                        tracing::debug!(error = %e, "tcp_proxy tunnel refused");
                        if let Some(info) = info {
                            info.flags.set(ResponseFlag::UpstreamConnectionFailure);
                        }
                        return;
                    }
                }
            }
        };
    }
    // flush_access_log_on_connected: a line once the upstream connection is up.
    if cfg.log_flush.on_start {
        if let Some(info) = info.as_deref_mut() {
            worker
                .access_log
                .log_early(&cfg.access_logs, info, "TcpUpstreamConnected");
        }
    }
    let max = buffer_limit.clamp(1024, MAX_BUFFER);
    let last_activity = Rc::new(Cell::new(Instant::now()));
    let downstream = Counted::new(
        downstream,
        stats.downstream_cx_rx_bytes_total.clone(),
        stats.downstream_cx_tx_bytes_total.clone(),
    );
    let (dr, dw) = tokio::io::split(downstream);
    let (ur, uw) = tokio::io::split(upstream);
    // Both streams count their own bytes: tcp.<prefix>.downstream_* and cluster.<name>.upstream_*.
    // A write that cannot complete stops reading on the other side: that is Envoy's
    // "paused reading" for the connection being read.
    let up_pauses = Pauses {
        paused: &stats.downstream_flow_control_paused_reading_total,
        resumed: &stats.downstream_flow_control_resumed_reading_total,
    };
    let down_pauses = Pauses {
        paused: &cluster.stats.upstream_flow_control_paused_reading_total,
        resumed: &cluster.stats.upstream_flow_control_resumed_reading_total,
    };
    // Which side ended first. Envoy's upstream connection is closed by whoever ends last:
    // the upstream when the client ended first (`destroy_remote`), else skiff; its
    // request is under way until then.
    let upstream_first: Cell<Option<bool>> = Cell::new(None);
    let first = |upstream: bool| {
        if upstream_first.get().is_none() {
            upstream_first.set(Some(upstream));
        }
    };
    let up = async {
        pump(dr, uw, max, &last_activity, &moved.received, up_pauses).await;
        first(false);
    };
    let down = async {
        pump(ur, dw, max, &last_activity, &moved.sent, down_pauses).await;
        first(true);
    };
    // Over an HTTP/1.1 tunnel either side's end ends the connection (Envoy's HTTP/1.1 upstream
    // has no half-close: the client's FIN closes both, after a POST's last chunk).
    let h1_tunnel = tunneling.is_some() && !h2_tunnel;
    let both = async {
        if h1_tunnel {
            tokio::select! {
                _ = up => {}
                _ = down => {}
            }
        } else {
            tokio::join!(up, down);
        }
    };
    tokio::pin!(both);
    let idle = idle_watch(cfg.idle_timeout, &last_activity);
    tokio::pin!(idle);
    // access_log_flush_interval: a line every interval from the connection's start.
    let periodic = cfg
        .log_flush
        .interval
        .filter(|_| !cfg.access_logs.is_empty());
    loop {
        let tick = async {
            match (periodic, info.as_deref()) {
                (Some(p), Some(i)) => {
                    tokio::time::sleep_until(crate::http::body::next_tick(i.start, p)).await
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut both => {
                if let Some(g) = &_guard {
                    g.ended(upstream_first.get() == Some(false), true);
                }
                break;
            }
            _ = &mut idle => {
                if let Some(g) = &_guard {
                    g.ended(false, true);
                }
                stats.idle_timeout.inc();
                if let Some(info) = info {
                    info.flags.set(ResponseFlag::StreamIdleTimeout);
                }
                tracing::debug!("tcp_proxy connection idle timeout");
                break;
            }
            _ = tick => {
                if let Some(info) = info.as_deref_mut() {
                    info.bytes_received = moved.received.get();
                    info.bytes_sent = moved.sent.get();
                    worker.access_log.log_early(&cfg.access_logs, info, "TcpPeriodic");
                }
            }
        }
    }
}

/// The upstream side of a proxied connection: the connection itself, or a tunnel in it.
trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// The tunnel's request for this connection: its authority (`hostname` with its operators
/// filled in) and its `headers_to_add` (values with operators rendered).
fn tunnel_request(
    t: &model::Tunneling,
    info: Option<&StreamInfo>,
    remote: SocketAddr,
    local: SocketAddr,
) -> (String, http::HeaderMap) {
    use crate::access_log::Render;
    let fallback;
    let info = match info {
        Some(i) => i,
        None => {
            fallback = StreamInfo::new(remote, local);
            &fallback
        }
    };
    let mut authority = String::new();
    t.hostname.render(info, &mut authority);
    let mut headers = http::HeaderMap::new();
    t.headers.apply_with(&mut headers, &|f, _| {
        crate::access_log::header_value(f, info, None, None)
    });
    (authority, headers)
}

/// The request head that opens a tunnel over HTTP/1.1, as Envoy writes it: `CONNECT` with the
/// authority as target (or a `POST` to `post_path`), `host`, then `headers_to_add`.
fn h1_tunnel_head(t: &model::Tunneling, authority: &str, extra: &http::HeaderMap) -> Vec<u8> {
    let mut head = if t.use_post {
        format!(
            "POST {} HTTP/1.1\r\nhost: {authority}\r\ntransfer-encoding: chunked\r\n",
            t.post_path
        )
    } else {
        format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n")
    }
    .into_bytes();
    for (k, v) in extra {
        head.extend_from_slice(k.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Opens a tunnel on an HTTP/1.1 connection: the upstream must answer 200 (Envoy takes no
/// other status); bytes after its head are the tunnel's first. A POST's bytes go up as chunks,
/// and come back in the response's own framing.
async fn open_h1_tunnel(
    mut s: pool::UpstreamStream,
    t: &model::Tunneling,
    (authority, headers): (String, http::HeaderMap),
) -> std::io::Result<Box<dyn Io>> {
    use std::io::{Error, ErrorKind};
    s.write_all(&h1_tunnel_head(t, &authority, &headers))
        .await?;
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "tunnel response head too long",
            ));
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(_)) if resp.code == Some(200) => {}
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::ConnectionRefused,
                format!("tunnel answered {:?}", resp.code),
            ))
        }
        Err(e) => return Err(Error::new(ErrorKind::InvalidData, e)),
    }
    let prefixed = Prefixed {
        first: bytes::Bytes::copy_from_slice(&buf[end..]),
        inner: s,
    };
    if !t.use_post {
        return Ok(Box::new(prefixed));
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let framing = if header("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
        post_tunnel::Framing::chunked()
    } else if let Some(n) = header("content-length") {
        let n = n
            .parse()
            .map_err(|_| Error::new(ErrorKind::InvalidData, "bad content-length"))?;
        post_tunnel::Framing::Length(n)
    } else {
        post_tunnel::Framing::Close
    };
    Ok(Box::new(post_tunnel::PostTunnel::new(prefixed, framing)))
}

/// Opens a tunnel on an HTTP/2 stream of the cluster's pool: a CONNECT to the authority (or a
/// POST to `post_path`) with `headers_to_add`, taken on a 2xx.
async fn open_h2_tunnel(
    cluster: &Rc<crate::upstream::Cluster>,
    host: &Rc<crate::upstream::Host>,
    t: &model::Tunneling,
    (authority, headers): (String, http::HeaderMap),
) -> Result<crate::http::h2_tunnel::H2Io, ResponseFlag> {
    let slot = host.h2.stream(cluster, host).await.map_err(|e| {
        tracing::debug!(error = %e, "tcp_proxy tunnel connect failed");
        ResponseFlag::UpstreamConnectionFailure
    })?;
    let uri = if t.use_post {
        http::Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(t.post_path.as_str())
            .build()
    } else {
        http::Uri::builder().authority(authority).build()
    }
    .map_err(|_| ResponseFlag::UpstreamConnectionFailure)?;
    let mut req = http::Request::new(());
    *req.method_mut() = if t.use_post {
        http::Method::POST
    } else {
        http::Method::CONNECT
    };
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    *req.headers_mut() = headers;
    let refused = |e: h2::Error| {
        tracing::debug!(error = %e, "tcp_proxy tunnel stream failed");
        ResponseFlag::UpstreamConnectionFailure
    };
    let mut sender = slot.sender().ready().await.map_err(refused)?;
    let (response, send) = sender.send_request(req, false).map_err(refused)?;
    let resp = response.await.map_err(refused)?;
    if !resp.status().is_success() {
        tracing::debug!(status = %resp.status(), "tcp_proxy tunnel refused");
        return Err(ResponseFlag::UpstreamConnectionFailure);
    }
    Ok(crate::http::h2_tunnel::H2Io::new(send, resp.into_body()))
}

/// A stream whose first bytes were already read (after a tunnel's response head).
struct Prefixed<S> {
    first: bytes::Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(out.remaining());
            out.put_slice(&self.first[..n]);
            bytes::Buf::advance(&mut self.first, n);
            return std::task::Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn idle_watch(idle: Option<Duration>, last: &Cell<Instant>) {
    match idle {
        Some(idle) => idle_watch_for(idle, last).await,
        None => std::future::pending().await,
    }
}

async fn idle_watch_for(idle: Duration, last: &Cell<Instant>) {
    loop {
        let deadline = last.get() + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// The counters of one direction's pauses: reading stops while a write waits for the peer.
#[derive(Clone, Copy)]
struct Pauses<'a> {
    paused: &'a Counter,
    resumed: &'a Counter,
}

/// Copies one direction. The buffer grows while reads fill it, up to `max`; nothing is read
/// while the previous bytes are still being written, so a slow reader holds back the sender and
/// this connection never holds more than `max` bytes in this direction. Each write that has to
/// wait is one pause of reading, counted in `pauses`. On end of input the write side is shut
/// down (half-close), and the other direction goes on.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    max: usize,
    last: &Cell<Instant>,
    moved: &Cell<u64>,
    pauses: Pauses<'_>,
) {
    let mut buf = vec![0u8; INITIAL_BUFFER.min(max)];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        last.set(Instant::now());
        // Every partial write counts as activity: a slow but moving reader is not idle.
        let mut written = 0;
        while written < n {
            let mut waited = false;
            let result = std::future::poll_fn(|cx| {
                let r = Pin::new(&mut to).poll_write(cx, &buf[written..n]);
                if r.is_pending() && !waited {
                    waited = true;
                    pauses.paused.inc();
                }
                r
            })
            .await;
            if waited {
                pauses.resumed.inc();
            }
            match result {
                Ok(0) | Err(_) => return,
                Ok(w) => {
                    written += w;
                    moved.set(moved.get() + w as u64);
                    last.set(Instant::now());
                }
            }
        }
        if n == buf.len() && buf.len() < max {
            buf.resize((buf.len() * 2).min(max), 0);
        }
    }
    let _ = to.shutdown().await;
}

/// A connection tcp_proxy made is its upstream host's request while it lasts, as Envoy's
/// connection pool counts it: `upstream_rq_total` and `upstream_rq_active` of the cluster,
/// `rq_total` and `rq_active` of the host.
struct ActiveRequest {
    cluster: Rc<crate::upstream::Cluster>,
    host: Rc<crate::upstream::Host>,
}

impl ActiveRequest {
    fn new(cluster: &Rc<crate::upstream::Cluster>, host: &Rc<crate::upstream::Host>) -> Self {
        use crate::upstream::HostStats;
        cluster.stats.upstream_rq_total.inc();
        cluster.stats.upstream_rq_active.inc();
        HostStats::inc(&host.stats.rq_total);
        HostStats::inc(&host.stats.rq_active);
        ActiveRequest {
            cluster: cluster.clone(),
            host: host.clone(),
        }
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.cluster.stats.upstream_rq_active.dec();
        crate::upstream::HostStats::dec(&self.host.stats.rq_active);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_watch_fires_after_the_last_activity() {
        let last = Cell::new(Instant::now());
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        last.set(Instant::now());
        idle_watch(Some(Duration::from_secs(10)), &last).await;
        assert_eq!(start.elapsed(), Duration::from_secs(13));
    }
}
