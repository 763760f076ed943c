//! `envoy.filters.network.http_connection_manager`: one downstream connection, its codec
//! (HTTP/1.1, or HTTP/2 with prior knowledge), and the streams on it.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::io::Stream;
use http::{header, HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;

use crate::config::model::{self, CodecType, ServerHeader};
use crate::drain::ConnectionDrain;
use crate::http::body::{EndReason, ProxyBody, RequestProgress, StreamEnd, Tracked};
use crate::http::filter::{self, Direction};
use crate::http::filters::router::{self, Upstream};
use crate::http::h1_guard::{self, H1Guard, RefusedSlot};
use crate::http::headers::{self, names};
use crate::http::local_reply::LocalReply;
use crate::io::{Counted, FlowPair, FlowSlot, WriteFlow};
use crate::stats::{Counter, Gauge, Shard};
use crate::stream_info::{headers_bytes, Connection, ResponseFlag, StreamInfo};
use crate::worker::{LocalExec, Worker};
use http_body::Body as _;

/// `http.<stat_prefix>.*` (and the per-listener copies) on one worker.
#[derive(Debug)]
pub struct HcmStats {
    shard: Arc<Shard>,
    prefix: String,
    listener_prefix: String,
    /// `downstream_cx_total`.
    pub downstream_cx_total: Counter,
    /// `downstream_cx_active`.
    pub downstream_cx_active: Gauge,
    /// `downstream_cx_ssl_total`.
    pub downstream_cx_ssl_total: Counter,
    /// `downstream_cx_ssl_active`.
    pub downstream_cx_ssl_active: Gauge,
    /// `downstream_cx_http1_total`.
    pub downstream_cx_http1_total: Counter,
    /// `downstream_cx_http1_active`.
    pub downstream_cx_http1_active: Gauge,
    /// `downstream_cx_http2_total`.
    pub downstream_cx_http2_total: Counter,
    /// `downstream_cx_http2_active`.
    pub downstream_cx_http2_active: Gauge,
    /// `downstream_cx_destroy`.
    pub downstream_cx_destroy: Counter,
    /// `downstream_cx_rx_bytes_total`.
    pub downstream_cx_rx_bytes_total: Counter,
    /// `downstream_cx_tx_bytes_total`.
    pub downstream_cx_tx_bytes_total: Counter,
    /// `downstream_cx_protocol_error`.
    pub downstream_cx_protocol_error: Counter,
    /// `downstream_flow_control_paused_reading_total`: a request's upstream could not take more
    /// of its body, so reading from the client stopped.
    pub downstream_flow_control_paused_reading_total: Counter,
    /// `downstream_flow_control_resumed_reading_total`: reading from the client went on.
    pub downstream_flow_control_resumed_reading_total: Counter,
    /// `downstream_cx_drain_close`.
    pub downstream_cx_drain_close: Counter,
    /// `downstream_rq_total`.
    pub downstream_rq_total: Counter,
    /// `downstream_rq_active`.
    pub downstream_rq_active: Gauge,
    /// `downstream_rq_http1_total`.
    pub downstream_rq_http1_total: Counter,
    /// `downstream_rq_http2_total`.
    pub downstream_rq_http2_total: Counter,
    /// `downstream_rq_completed`.
    pub downstream_rq_completed: Counter,
    /// `downstream_rq_rx_reset`.
    pub downstream_rq_rx_reset: Counter,
    /// `downstream_rq_tx_reset`.
    pub downstream_rq_tx_reset: Counter,
    /// `no_route`.
    pub no_route: Counter,
    /// `no_cluster`.
    pub no_cluster: Counter,
    /// `rq_total`.
    pub rq_total: Counter,
    /// `downstream_rq_too_many_premature_resets`: connections closed for resetting streams
    /// early (rapid reset).
    pub downstream_rq_too_many_premature_resets: Counter,
    /// `http2.rx_reset` (root scope, as Envoy's codec stats): streams a downstream HTTP/2
    /// client reset while its connection stayed up.
    pub http2_rx_reset: Counter,
    /// `downstream_rq_<N>xx`, index N-1, then the listener's copies.
    classes: [Counter; 5],
    listener_classes: [Counter; 5],
    listener_completed: Counter,
}

impl HcmStats {
    /// The stats of one HCM on one worker; `listener_scope` is `listener.<addr>.`.
    pub fn new(shard: Arc<Shard>, stat_prefix: &str, listener_scope: &str) -> Self {
        let prefix = format!("http.{stat_prefix}.");
        let listener_prefix = format!("{listener_scope}http.{stat_prefix}.");
        let c = |n: &str| shard.counter(&format!("{prefix}{n}"));
        let g = |n: &str| shard.gauge(&format!("{prefix}{n}"));
        let classes = [1, 2, 3, 4, 5].map(|k| c(&format!("downstream_rq_{k}xx")));
        let listener_classes = [1, 2, 3, 4, 5]
            .map(|k| shard.counter(&format!("{listener_prefix}downstream_rq_{k}xx")));
        HcmStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_ssl_total: c("downstream_cx_ssl_total"),
            downstream_cx_ssl_active: g("downstream_cx_ssl_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http1_active: g("downstream_cx_http1_active"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_http2_active: g("downstream_cx_http2_active"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_flow_control_paused_reading_total: c(
                "downstream_flow_control_paused_reading_total",
            ),
            downstream_flow_control_resumed_reading_total: c(
                "downstream_flow_control_resumed_reading_total",
            ),
            downstream_cx_drain_close: c("downstream_cx_drain_close"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_rq_rx_reset: c("downstream_rq_rx_reset"),
            downstream_rq_tx_reset: c("downstream_rq_tx_reset"),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_total: c("rq_total"),
            downstream_rq_too_many_premature_resets: c("downstream_rq_too_many_premature_resets"),
            http2_rx_reset: shard.counter("http2.rx_reset"),
            listener_completed: shard.counter(&format!("{listener_prefix}downstream_rq_completed")),
            classes,
            listener_classes,
            shard,
            prefix,
            listener_prefix,
        }
    }

    fn response_class(&self, status: u16) {
        let k = (status / 100) as usize;
        if (1..=5).contains(&k) {
            self.classes[k - 1].inc();
            self.listener_classes[k - 1].inc();
        }
    }

    /// The scope names, for tests and debugging.
    pub fn scopes(&self) -> (&str, &str, &Arc<Shard>) {
        (&self.prefix, &self.listener_prefix, &self.shard)
    }
}

/// Envoy's default downstream connection idle timeout.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Envoy's default `max_request_headers_kb`.
const MAX_HEADERS_KB: u32 = 60;
/// `overload.premature_reset_min_stream_lifetime_seconds` (Envoy's default): a stream the client
/// resets sooner than this counts as a premature reset.
const PREMATURE_RESET_MIN_STREAM_LIFETIME: std::time::Duration = std::time::Duration::from_secs(1);
/// `overload.premature_reset_total_stream_count` (Envoy's default).
const PREMATURE_RESET_TOTAL_STREAM_COUNT: u64 = 500;

/// One HCM as configured on one worker.
#[derive(Debug)]
pub struct HttpConnectionManager {
    /// The configuration.
    pub config: Arc<model::HttpConnectionManager>,
    /// This worker's stats for it.
    pub stats: HcmStats,
    /// Its HTTP filters (before the router) on this worker.
    pub filters: Vec<filter::Factory>,
}

/// The downstream connection a stream belongs to.
struct Conn {
    hcm: Rc<HttpConnectionManager>,
    worker: Rc<Worker>,
    /// The listener's drain: `connection: close` and GOAWAY once it asks for it.
    drain: ConnectionDrain,
    remote: SocketAddr,
    local: SocketAddr,
    /// What the access log shows of the connection.
    connection: Arc<Connection>,
    /// original_src: where upstream connections come from.
    source: Option<crate::upstream::pool::Source>,
    /// HTTP/1.1: the cluster whose response is being written, whose reading pauses while
    /// writing to the client waits (`upstream_flow_control_{paused,resumed}_reading_total`).
    response_flow: FlowSlot,
    /// Whether the connection is TLS (`x-forwarded-proto: https`).
    secure: bool,
    /// The codec this connection turned out to speak, once its first request arrived.
    codec: Cell<Option<Codec>>,
    /// A request head the HTTP/1.1 guard refused, for the stand-in request that follows it.
    refused: RefusedSlot,
    /// Streams closed so far, and those the client reset prematurely.
    closed_streams: Cell<u64>,
    premature_resets: Cell<u64>,
    /// Set once the connection is to be closed for too many premature resets.
    reset_abuse: Rc<tokio::sync::Notify>,
    reset_abuse_seen: Cell<bool>,
    /// The connection has ended: streams dropped now were not reset by the client.
    ended: Cell<bool>,
}

impl Conn {
    /// Envoy's premature-reset protection (`ConnectionManagerImpl::maybeDrainDueToPrematureResets`):
    /// a client that opens streams and resets them at once makes the proxy start upstream work
    /// it never pays for (CVE-2023-44487). Once half of the first 500 streams, or half of all
    /// streams after that, were reset within a second of opening, the connection is closed.
    fn stream_closed(&self, premature: bool) {
        let closed = self.closed_streams.get() + 1;
        self.closed_streams.set(closed);
        let resets = self.premature_resets.get() + u64::from(premature);
        self.premature_resets.set(resets);
        if resets == 0 || self.reset_abuse_seen.get() {
            return;
        }
        let limit = PREMATURE_RESET_TOTAL_STREAM_COUNT;
        let over = if closed < limit {
            resets * 2 >= limit
        } else {
            resets * 2 >= closed
        };
        if over {
            self.reset_abuse_seen.set(true);
            self.hcm.stats.downstream_rq_too_many_premature_resets.inc();
            self.reset_abuse.notify_one();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Http1,
    Http2,
}

/// Serves one downstream connection until it closes or drains; with `source` (original_src)
/// its requests' upstream connections come from that address.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    stream: Stream,
    remote: SocketAddr,
    local: SocketAddr,
    connection: Arc<Connection>,
    source: Option<crate::upstream::pool::Source>,
    hcm: Rc<HttpConnectionManager>,
    worker: Rc<Worker>,
    drain: ConnectionDrain,
    buffer_limit: usize,
) {
    let stats = &hcm.stats;
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    let secure = matches!(stream, Stream::ServerTls(_));
    if secure {
        stats.downstream_cx_ssl_total.inc();
        stats.downstream_cx_ssl_active.inc();
    }
    let response_flow = FlowSlot::default();
    let conn = Rc::new(Conn {
        response_flow: response_flow.clone(),
        hcm: hcm.clone(),
        worker: worker.clone(),
        drain: drain.clone(),
        remote,
        local,
        connection,
        source,
        secure,
        codec: Cell::new(None),
        refused: RefusedSlot::default(),
        closed_streams: Cell::new(0),
        premature_resets: Cell::new(0),
        reset_abuse: Rc::default(),
        reset_abuse_seen: Cell::new(false),
        ended: Cell::new(false),
    });
    let svc_conn = conn.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let conn = svc_conn.clone();
        async move { Ok::<_, Infallible>(handle(conn, req).await) }
    });
    // per_connection_buffer_limit_bytes bounds what one connection or stream may hold: the
    // HTTP/2 stream window is sized from it and the HTTP/1.1 read buffer is a fixed 64 KiB, so a
    // slow upstream stops the client instead of growing memory here.
    let h2 = &hcm.config.http2;
    let (stream_window, conn_window) = h2.windows(buffer_limit);
    let mut builder = auto::Builder::new(LocalExec);
    // Headers must fit the HTTP/1.1 read buffer: 64 KiB gives Envoy's 60 KiB header limit (431
    // above it). Waiting for the next request's headers is Envoy's 1 h connection idle timeout.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(64 * 1024)
        .header_read_timeout(IDLE_TIMEOUT);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(MAX_HEADERS_KB * 1024)
        .max_concurrent_streams(h2.max_concurrent_streams)
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(conn_window);
    let builder = match hcm.config.codec {
        CodecType::Auto => builder,
        CodecType::Http1 => builder.http1_only(),
        CodecType::Http2 => builder.http2_only(),
    };
    // HTTP/1.1 request heads are judged by Envoy's codec rules before hyper reads them.
    let guarded = H1Guard::new(
        Counted::new(
            stream,
            stats.downstream_cx_rx_bytes_total.clone(),
            stats.downstream_cx_tx_bytes_total.clone(),
        ),
        conn.refused.clone(),
        hcm.config.codec != CodecType::Http2,
    );
    let io = TokioIo::new(WriteFlow::new(guarded, None, response_flow));
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let mut drain = drain;
    let reset_abuse = conn.reset_abuse.clone();
    let result = tokio::select! {
        r = served.as_mut() => r,
        // Too many premature resets: the connection is dropped at once, as Envoy aborts it.
        _ = reset_abuse.notified() => Ok(()),
        _ = drain.close_requested() => {
            // HTTP/2 gets its GOAWAY now. An HTTP/1.1 connection is not cut while idle (its
            // client may be sending): its next response carries `connection: close`, as in
            // Envoy; only at shutdown are idle ones closed at once.
            if conn.codec.get() == Some(Codec::Http2) || drain.shutting_down() {
                if conn.codec.get() == Some(Codec::Http2) {
                    stats.downstream_cx_drain_close.inc();
                }
                served.as_mut().graceful_shutdown();
            }
            served.await
        }
    };
    // `served` (and any stream still in it) is dropped when this function returns.
    conn.ended.set(true);
    if let Err(e) = result {
        tracing::debug!(error = %e, %remote, "downstream connection ended with an error");
        if is_protocol_error(&*e) {
            stats.downstream_cx_protocol_error.inc();
        }
    }
    match conn.codec.get() {
        Some(Codec::Http1) => stats.downstream_cx_http1_active.dec(),
        Some(Codec::Http2) => stats.downstream_cx_http2_active.dec(),
        None => {}
    }
    stats.downstream_cx_active.dec();
    if conn.secure {
        stats.downstream_cx_ssl_active.dec();
    }
    stats.downstream_cx_destroy.inc();
}

/// Whether a connection error was the client speaking bad HTTP (not an I/O reset).
fn is_protocol_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return !h2.is_io() && !h2.is_remote();
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_too_large() || h.is_parse_status() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// The accounting of one stream, settled exactly once: when the response body ends, or when the
/// stream is dropped before that (the client went away while we waited for the upstream).
pub struct Done {
    conn: Rc<Conn>,
    started: Instant,
    info: Option<Box<StreamInfo>>,
    request: Rc<RequestProgress>,
    upstream: Option<Upstream>,
    settled: bool,
}

impl Unpin for Done {}

impl Done {
    fn settle(&mut self, reason: EndReason, bytes: u64) {
        if self.settled {
            return;
        }
        self.settled = true;
        let stats = &self.conn.hcm.stats;
        let client_reset = reason == EndReason::DownstreamReset && !self.conn.ended.get();
        if client_reset && self.conn.codec.get() == Some(Codec::Http2) {
            stats.http2_rx_reset.inc();
        }
        self.conn.stream_closed(
            client_reset && self.started.elapsed() < PREMATURE_RESET_MIN_STREAM_LIFETIME,
        );
        stats.downstream_rq_active.dec();
        stats.downstream_rq_completed.inc();
        stats.listener_completed.inc();
        match reason {
            EndReason::Complete => {}
            EndReason::DownstreamReset => stats.downstream_rq_rx_reset.inc(),
            EndReason::UpstreamReset | EndReason::UpstreamProtocolError | EndReason::Timeout => {
                stats.downstream_rq_tx_reset.inc()
            }
        }
        if let Some(up) = self.upstream.take() {
            up.finish(reason);
        }
        if let Some(mut info) = self.info.take() {
            info.bytes_sent = bytes;
            info.bytes_received = self.request.bytes();
            info.response_done = Some(std::time::Instant::now());
            info.request_done = self.request.done_at().map(|t| t.into_std());
            if info.upstream_connection.is_some() {
                info.request_sent = info.request_done;
            }
            match reason {
                EndReason::Complete => {}
                EndReason::DownstreamReset => info
                    .flags
                    .set(ResponseFlag::DownstreamConnectionTermination),
                EndReason::UpstreamReset => info.flags.set(ResponseFlag::UpstreamRemoteReset),
                EndReason::UpstreamProtocolError => {
                    info.flags.set(ResponseFlag::UpstreamProtocolError);
                    info.details = "upstream_reset_after_response_started{protocol_error}";
                }
                EndReason::Timeout => info.flags.set(ResponseFlag::UpstreamRequestTimeout),
            }
            info.finish();
            self.conn
                .worker
                .access_log
                .log(&self.conn.hcm.config.access_logs, &info);
        }
    }
}

impl StreamEnd for Done {
    fn end(mut self, reason: EndReason, bytes: u64) {
        self.settle(reason, bytes);
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.settle(EndReason::DownstreamReset, 0);
    }
}

type Resp = Response<Tracked<Done>>;

async fn handle(conn: Rc<Conn>, req: Request<Incoming>) -> Resp {
    let cfg = conn.hcm.config.clone();
    let stats = &conn.hcm.stats;
    stats.downstream_rq_total.inc();
    stats.rq_total.inc();
    stats.downstream_rq_active.inc();
    let version = req.version();
    let codec = if version == Version::HTTP_2 {
        Codec::Http2
    } else {
        Codec::Http1
    };
    if codec == Codec::Http2 {
        stats.downstream_rq_http2_total.inc();
    } else {
        stats.downstream_rq_http1_total.inc();
        // Until this request's upstream is known, no cluster's reading waits on the client.
        conn.response_flow.borrow_mut().take();
    }
    if conn.codec.replace(Some(codec)).is_none() {
        match codec {
            Codec::Http1 => {
                stats.downstream_cx_http1_total.inc();
                stats.downstream_cx_http1_active.inc();
            }
            Codec::Http2 => {
                stats.downstream_cx_http2_total.inc();
                stats.downstream_cx_http2_active.inc();
            }
        }
    }

    let logging = !cfg.access_logs.is_empty();
    let (mut parts, body) = req.into_parts();
    let request = Rc::new(RequestProgress::new(FlowPair::new(
        &stats.downstream_flow_control_paused_reading_total,
        &stats.downstream_flow_control_resumed_reading_total,
    )));
    if body.is_end_stream() {
        request.mark_done();
    }
    let mut done = Done {
        conn: conn.clone(),
        started: Instant::now(),
        info: logging.then(|| Box::new(StreamInfo::new(conn.remote, conn.local))),
        request: request.clone(),
        upstream: None,
        settled: false,
    };
    if let Some(info) = done.info.as_mut() {
        info.connection = Some(conn.connection.clone());
        if conn.secure {
            info.scheme = "https";
        }
        info.protocol = Some(protocol_name(version));
        info.method = Some(parts.method.clone());
        info.path = parts.uri.path_and_query().map(|p| p.as_str().to_string());
        info.authority = authority(&parts).map(str::to_string);
    }

    if codec == Codec::Http1 {
        // The stand-in for a head the guard refused (h1_guard.rs): Envoy's codec error reply.
        if let Some(refusal) = h1_guard::take_refusal(&conn.refused, parts.uri.path()) {
            stats.downstream_cx_protocol_error.inc();
            if let Some(info) = done.info.as_mut() {
                info.method = refusal
                    .method
                    .as_deref()
                    .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok());
                info.path = refusal.path;
                info.authority = None;
            }
            return local(done, LocalReply::for_codec(refusal.reason), None);
        }
    }
    if version == Version::HTTP_10 || version == Version::HTTP_09 {
        return local(done, LocalReply::UPGRADE_REQUIRED, None);
    }
    if codec == Codec::Http1 {
        headers::join_hosts(&mut parts.headers);
        headers::remove_nominated(&mut parts.headers);
        if let Some(info) = done.info.as_mut() {
            info.authority = authority(&parts).map(str::to_string);
        }
    }
    // An HTTP/1.1 `Host:` with an empty value is a host (Envoy forwards it); none at all is not.
    let missing = match authority(&parts) {
        None => true,
        Some(a) => a.is_empty() && codec == Codec::Http2,
    };
    if missing {
        return local(done, LocalReply::MISSING_HOST, None);
    }
    if !authority(&parts).is_some_and(headers::authority_is_valid) {
        return local(done, LocalReply::INVALID_AUTHORITY, None);
    }

    // CONNECT matches no prefix or path route (Envoy needs a connect_matcher, which skiff does
    // not offer): Envoy's 404 and a closed connection, nothing upstream.
    if parts.method == http::Method::CONNECT {
        stats.no_route.inc();
        let reply = LocalReply {
            close: true,
            ..LocalReply::NO_ROUTE
        };
        return local(done, reply, None);
    }

    // Upgrades (websocket…) need upgrade_configs, which skiff does not offer yet: Envoy's 403.
    // An h2c upgrade offer is simply ignored, as Envoy does.
    if is_upgrade(&parts.headers) {
        return local(done, LocalReply::UPGRADE_FORBIDDEN, None);
    }

    // Envoy's default request header handling.
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::strip_envoy_control_headers(&mut parts.headers);
    parts.headers.remove(header::EXPECT);
    if !parts.headers.contains_key(&names::X_FORWARDED_PROTO) {
        parts.headers.insert(
            names::X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if conn.secure { "https" } else { "http" }),
        );
    }
    if cfg.generate_request_id && !parts.headers.contains_key(&names::X_REQUEST_ID) {
        parts
            .headers
            .insert(names::X_REQUEST_ID.clone(), headers::new_request_id());
    }
    if let Some(via) = &cfg.via {
        headers::append_via(&mut parts.headers, via);
    }
    if let Some(info) = done.info.as_mut() {
        // Access logs see the request as the connection manager forwards it (generated
        // x-request-id included), as in Envoy.
        info.request_headers = parts.headers.clone();
        info.stream_id = parts
            .headers
            .get(&names::X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        info.request_headers_bytes = request_headers_bytes(&parts, info.scheme);
    }
    let request_id = cfg
        .always_set_request_id_in_response
        .then(|| parts.headers.get(&names::X_REQUEST_ID).cloned())
        .flatten();

    let body = ProxyBody::Incoming(body, Some(request.clone()));
    // The decoder filters, then the router as the terminal filter.
    let chain = filter::build(&conn.hcm.filters);
    if let Some(chain) = &chain {
        if let Some(reply) = chain.decode_headers(&mut parts, body.is_end_stream()).await {
            return local(done, reply, request_id);
        }
    }
    let body = filter::wrap(chain.as_ref(), body, Direction::Decode);
    let start = Instant::now();
    match router::route(
        &conn.worker,
        &cfg,
        parts,
        body,
        &request,
        (conn.remote, conn.local),
        conn.source,
        done.info.as_deref_mut(),
    )
    .await
    {
        Ok((resp, upstream, deadline)) => {
            // An HTTP/1.1 connection writes one response at a time; HTTP/2 streams wait for
            // window inside the codec, unseen here.
            if codec == Codec::Http1 {
                let c = &upstream.cluster().stats;
                *conn.response_flow.borrow_mut() = Some(FlowPair::new(
                    &c.upstream_flow_control_paused_reading_total,
                    &c.upstream_flow_control_resumed_reading_total,
                ));
            }
            done.upstream = Some(upstream);
            let (mut head, body) = resp.into_parts();
            // A 204 has no body to measure: Envoy's codec drops its content-length.
            if head.status == http::StatusCode::NO_CONTENT {
                head.headers.remove(header::CONTENT_LENGTH);
            }
            if let Some(chain) = &chain {
                if let Some(reply) = chain.encode_headers(&mut head, body.is_end_stream()).await {
                    return local(done, reply, request_id);
                }
            }
            let body = filter::wrap(chain.as_ref(), body, Direction::Encode);
            headers::remove_hop_by_hop(&mut head.headers);
            if !cfg.router.suppress_envoy_headers {
                let ms = start.elapsed().as_millis() as u64;
                head.headers.insert(
                    names::X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                    headers::number(ms),
                );
            }
            finish_response(&conn, &cfg, &mut head, request_id);
            let status = head.status.as_u16();
            stats.response_class(status);
            if let Some(info) = done.info.as_mut() {
                info.response_started = Some(std::time::Instant::now());
                info.response_code = Some(status);
                info.details = "via_upstream";
                info.response_headers = head.headers.clone();
            }
            Response::from_parts(head, Tracked::new(body, done, deadline))
        }
        Err(reply) => {
            if reply.flag == Some(ResponseFlag::NoRouteFound) {
                stats.no_route.inc();
            }
            if reply.flag == Some(ResponseFlag::NoClusterFound) {
                stats.no_cluster.inc();
            }
            local(done, reply, request_id)
        }
    }
}

/// The size of a request's headers as Envoy counts its header map: `:authority`, `:path`,
/// `:method` and `:scheme` as pseudo-headers (the Host header is `:authority`), then every
/// other header.
pub fn request_headers_bytes(parts: &http::request::Parts, scheme: &str) -> u64 {
    let host = parts
        .headers
        .get(header::HOST)
        .map_or(0, |v| (header::HOST.as_str().len() + v.len()) as u64);
    let path = parts.uri.path_and_query().map_or("", |p| p.as_str());
    headers_bytes(
        [
            (":authority", authority(parts).unwrap_or("")),
            (":path", path),
            (":method", parts.method.as_str()),
            (":scheme", scheme),
        ],
        &parts.headers,
    )
    .saturating_sub(host)
}

/// An HTTP/1.1 upgrade request other than h2c: `Connection: upgrade` with an `Upgrade` header.
fn is_upgrade(h: &http::HeaderMap) -> bool {
    let Some(upgrade) = h.get(header::UPGRADE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let connection_says_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_says_upgrade && !upgrade.trim().eq_ignore_ascii_case("h2c")
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        _ => "HTTP/1.1",
    }
}

/// `:authority` for HTTP/2, `Host` for HTTP/1.1; an absolute-form URI wins, as in Envoy.
pub fn authority(parts: &http::request::Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

fn finish_response(
    conn: &Conn,
    cfg: &model::HttpConnectionManager,
    head: &mut http::response::Parts,
    request_id: Option<HeaderValue>,
) {
    match cfg.server_header {
        ServerHeader::Overwrite => {
            head.headers.insert(header::SERVER, cfg.server_name.clone());
        }
        ServerHeader::AppendIfAbsent => {
            if !head.headers.contains_key(header::SERVER) {
                head.headers.insert(header::SERVER, cfg.server_name.clone());
            }
        }
        ServerHeader::PassThrough => {}
    }
    if let Some(via) = &cfg.via {
        headers::append_via(&mut head.headers, via);
    }
    if let Some(id) = request_id {
        head.headers.insert(names::X_REQUEST_ID.clone(), id);
    }
    if conn.drain.drain_close() && conn.codec.get() != Some(Codec::Http2) {
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        conn.hcm.stats.downstream_cx_drain_close.inc();
    }
}

fn local(mut done: Done, reply: LocalReply, request_id: Option<HeaderValue>) -> Resp {
    let conn = done.conn.clone();
    let (mut head, body) = reply.response().into_parts();
    finish_response(&conn, &conn.hcm.config, &mut head, request_id);
    conn.hcm.stats.response_class(reply.status.as_u16());
    if let Some(info) = done.info.as_mut() {
        info.response_code = Some(reply.status.as_u16());
        if let Some(f) = reply.flag {
            info.flags.set(f);
        }
        info.details = reply.details;
        info.response_headers = head.headers.clone();
    }
    Response::from_parts(head, Tracked::new(body, done, None))
}
