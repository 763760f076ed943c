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
    let mut info = (!cfg.access_logs.is_empty()).then(|| {
        let mut info = StreamInfo::new(remote, local);
        info.connection = Some(connection);
        // Envoy gives every connection a random stream id (`%STREAM_ID%`).
        info.stream_id = Some(uuid::Uuid::new_v4().to_string());
        info
    });
    let moved = Moved::default();
    proxy(
        worker,
        cfg,
        stats,
        downstream,
        remote,
        local,
        source,
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
    source: Option<pool::Source>,
    buffer_limit: usize,
    moved: &Moved,
    mut info: Option<&mut StreamInfo>,
) {
    let Some(cluster) = worker.clusters.get(cfg.cluster.pick()) else {
        stats.downstream_cx_no_route.inc();
        if let Some(info) = info {
            info.flags.set(ResponseFlag::NoClusterFound);
        }
        return;
    };
    if let Some(info) = info.as_deref_mut() {
        info.upstream_cluster = Some(cluster.name.clone());
        info.upstream_cluster_stat = cluster.config().alt_stat_name.as_deref().map(Into::into);
    }
    let Some(host) = cluster.select_host(local, |d| worker.is_own_listener(d)) else {
        cluster.stats.upstream_cx_none_healthy.inc();
        if let Some(info) = info {
            info.flags.set(ResponseFlag::NoHealthyUpstream);
        }
        return;
    };
    let host = cluster.variant(host, (remote, local), None);
    if let Some(info) = info.as_deref_mut() {
        info.upstream_host = Some(host.address);
    }
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
    let mut upstream = match connected {
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
        info.upstream_connection = Some(pool::connection_info(upstream.get_mut()));
    }
    // Counted in the connection breaker (tcp_proxy does not wait on it yet).
    let cx = cluster.info.breakers.default.connections.acquire_anyway();
    let _upstream = pool::ConnGuard::new(&cluster, &host, cx);
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
    let up = pump(dr, uw, max, &last_activity, &moved.received, up_pauses);
    let down = pump(ur, dw, max, &last_activity, &moved.sent, down_pauses);
    let both = async { tokio::join!(up, down) };
    match cfg.idle_timeout {
        Some(idle) => {
            tokio::select! {
                _ = both => {}
                _ = idle_watch(idle, &last_activity) => {
                    stats.idle_timeout.inc();
                    if let Some(info) = info {
                        info.flags.set(ResponseFlag::StreamIdleTimeout);
                    }
                    tracing::debug!("tcp_proxy connection idle timeout");
                }
            }
        }
        None => {
            both.await;
        }
    }
}

async fn idle_watch(idle: Duration, last: &Cell<Instant>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_watch_fires_after_the_last_activity() {
        let last = Cell::new(Instant::now());
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        last.set(Instant::now());
        idle_watch(Duration::from_secs(10), &last).await;
        assert_eq!(start.elapsed(), Duration::from_secs(13));
    }
}
