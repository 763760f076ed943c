//! `envoy.filters.network.http_connection_manager`: one downstream connection, its codec
//! (HTTP/1.1, or HTTP/2 with prior knowledge), and the streams on it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::io::Stream;
use http::{header, HeaderValue, Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;

use crate::config::model::{
    self, ActionName, CodecType, HeaderCase, ScaledTimer, ServerHeader, ShedPoint, Underscores,
};
use crate::drain::ConnectionDrain;
use crate::http::body::{EndReason, ProxyBody, RequestProgress, StreamEnd, Tracked, Trailers};
use crate::http::delayed_close::{CloseState, DelayedClose};
use crate::http::filter::{self, Direction};
use crate::http::filters::router::{self, Upstream};
use crate::http::h1_guard::{self, H1Guard, RefusedSlot};
use crate::http::h2_frames::FloodLimits;
use crate::http::headers::{self, names};
use crate::http::local_reply::LocalReply;
use crate::http::timeouts::{Activity, Expiry, StreamTimers};
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
    /// `tracing.{random_sampling,client_enabled,service_forced,not_traceable,health_check}`:
    /// the trace decisions of a connection manager with `tracing`.
    pub tracing: [Counter; 5],
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
    /// `downstream_cx_length_ms`.
    pub downstream_cx_length_ms: crate::stats::Histogram,
    /// `downstream_rq_time`: from the start of a stream to its end.
    pub downstream_rq_time: crate::stats::Histogram,
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
    /// `downstream_rq_overload_close`: requests the overload manager answered 503.
    pub downstream_rq_overload_close: Counter,
    /// `downstream_cx_overload_disable_keepalive`: connections `disable_http_keepalive` ended.
    pub downstream_cx_overload_disable_keepalive: Counter,
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
    /// `downstream_rq_too_large`: requests answered 413 because their body was over what a
    /// filter may buffer.
    pub downstream_rq_too_large: Counter,
    /// `downstream_rq_ws_on_non_ws_route`: upgrades refused because neither the route nor the
    /// connection manager takes their type.
    pub downstream_rq_ws_on_non_ws_route: Counter,
    /// `downstream_rq_failed_path_normalization`.
    pub downstream_rq_failed_path_normalization: Counter,
    /// `downstream_rq_non_relative_path`: a path that does not start with `/` (404).
    pub downstream_rq_non_relative_path: Counter,
    /// `downstream_rq_rejected_via_ip_detection`.
    pub downstream_rq_rejected_via_ip_detection: Counter,
    /// `downstream_rq_redirected_with_normalized_path`.
    pub downstream_rq_redirected_with_normalized_path: Counter,
    /// `downstream_rq_too_many_premature_resets`: connections closed for resetting streams
    /// early (rapid reset).
    pub downstream_rq_too_many_premature_resets: Counter,
    /// `downstream_rq_idle_timeout`: streams ended by `stream_idle_timeout`.
    pub downstream_rq_idle_timeout: Counter,
    /// `downstream_rq_timeout`: streams ended by `request_timeout`.
    pub downstream_rq_timeout: Counter,
    /// `downstream_rq_max_duration_reached`: streams ended by `max_stream_duration`.
    pub downstream_rq_max_duration_reached: Counter,
    /// `downstream_rq_header_timeout`: request heads that took longer than
    /// `request_headers_timeout`.
    pub downstream_rq_header_timeout: Counter,
    /// `downstream_cx_idle_timeout`: connections closed by the idle timeout.
    pub downstream_cx_idle_timeout: Counter,
    /// `downstream_cx_max_duration_reached`: connections ended by `max_connection_duration`.
    pub downstream_cx_max_duration_reached: Counter,
    /// `downstream_cx_max_requests_reached`: connections ended by
    /// `max_requests_per_connection`.
    pub downstream_cx_max_requests_reached: Counter,
    /// `http2.rx_reset` (root scope, as Envoy's codec stats): streams a downstream HTTP/2
    /// client reset while its connection stayed up.
    pub http2_rx_reset: Counter,
    /// `http1.requests_rejected_with_underscores_in_headers` (codec stats, root scope).
    pub http1_rejected_underscores: Counter,
    /// `http1.dropped_headers_with_underscores`.
    pub http1_dropped_underscores: Counter,
    /// `http2.requests_rejected_with_underscores_in_headers`.
    pub http2_rejected_underscores: Counter,
    /// `http2.dropped_headers_with_underscores`.
    pub http2_dropped_underscores: Counter,
    /// `http2.header_list_size_too_large`: HTTP/2 streams reset for a header list longer than
    /// `max_request_headers_kb`.
    pub http2_header_list_size_too_large: Counter,
    /// `http2.keepalive_timeout`: HTTP/2 connections closed because a keepalive PING
    /// (`connection_keepalive`) went unanswered.
    pub http2_keepalive_timeout: Counter,
    /// `http2.header_overflow`: HTTP/2 streams reset for more headers than
    /// `max_headers_count`.
    pub http2_header_overflow: Counter,
    /// `http2.inbound_empty_frames_flood`, `http2.inbound_priority_frames_flood` and
    /// `http2.inbound_window_update_frames_flood`.
    pub http2_floods: h1_guard::FloodCounters,
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
            tracing: [
                "random_sampling",
                "client_enabled",
                "service_forced",
                "not_traceable",
                "health_check",
            ]
            .map(|n| c(&format!("tracing.{n}"))),
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_ssl_total: c("downstream_cx_ssl_total"),
            downstream_cx_ssl_active: g("downstream_cx_ssl_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http1_active: g("downstream_cx_http1_active"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_http2_active: g("downstream_cx_http2_active"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_length_ms: shard.histogram(&format!("{prefix}downstream_cx_length_ms")),
            downstream_rq_time: shard.histogram(&format!("{prefix}downstream_rq_time")),
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
            downstream_rq_overload_close: c("downstream_rq_overload_close"),
            downstream_cx_overload_disable_keepalive: c("downstream_cx_overload_disable_keepalive"),
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
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
            downstream_rq_header_timeout: c("downstream_rq_header_timeout"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_cx_max_duration_reached: c("downstream_cx_max_duration_reached"),
            downstream_cx_max_requests_reached: c("downstream_cx_max_requests_reached"),
            downstream_rq_ws_on_non_ws_route: c("downstream_rq_ws_on_non_ws_route"),
            downstream_rq_too_large: c("downstream_rq_too_large"),
            downstream_rq_failed_path_normalization: c("downstream_rq_failed_path_normalization"),
            downstream_rq_non_relative_path: c("downstream_rq_non_relative_path"),
            downstream_rq_rejected_via_ip_detection: c("downstream_rq_rejected_via_ip_detection"),
            downstream_rq_redirected_with_normalized_path: c(
                "downstream_rq_redirected_with_normalized_path",
            ),
            http2_rx_reset: shard.counter("http2.rx_reset"),
            http1_rejected_underscores: shard
                .counter("http1.requests_rejected_with_underscores_in_headers"),
            http1_dropped_underscores: shard.counter("http1.dropped_headers_with_underscores"),
            http2_rejected_underscores: shard
                .counter("http2.requests_rejected_with_underscores_in_headers"),
            http2_dropped_underscores: shard.counter("http2.dropped_headers_with_underscores"),
            http2_header_overflow: shard.counter("http2.header_overflow"),
            http2_floods: h1_guard::FloodCounters {
                empty_frames: shard.counter("http2.inbound_empty_frames_flood"),
                priority: shard.counter("http2.inbound_priority_frames_flood"),
                window_update: shard.counter("http2.inbound_window_update_frames_flood"),
                outbound: shard.counter("http2.outbound_flood"),
                outbound_control: shard.counter("http2.outbound_control_flood"),
            },
            http2_keepalive_timeout: shard.counter("http2.keepalive_timeout"),
            http2_header_list_size_too_large: shard.counter("http2.header_list_size_too_large"),
            listener_completed: shard.counter(&format!("{listener_prefix}downstream_rq_completed")),
            classes,
            listener_classes,
            shard,
            prefix,
            listener_prefix,
        }
    }

    /// Counts a stream ended by one of the connection manager's timers.
    fn expired(&self, e: Expiry) {
        match e {
            Expiry::Idle => self.downstream_rq_idle_timeout.inc(),
            Expiry::Request => self.downstream_rq_timeout.inc(),
            Expiry::MaxDuration => self.downstream_rq_max_duration_reached.inc(),
            // The router counts it on the cluster.
            Expiry::UpstreamMaxDuration => {}
        }
    }

    /// The counters of each 1xx sent (Envoy's connection manager counts one as a response).
    fn informational(&self) -> Vec<Counter> {
        vec![
            self.classes[0].clone(),
            self.listener_classes[0].clone(),
            self.downstream_rq_completed.clone(),
            self.listener_completed.clone(),
        ]
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

/// How long an idle HTTP/2 connection may take past its drain and delayed close before it is
/// closed anyway (a client that never answers the GOAWAY's PING).
const IDLE_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a connection the overload manager ends gets to send its GOAWAY.
const ABORT_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// One HCM as configured on one worker.
#[derive(Debug)]
pub struct HttpConnectionManager {
    /// The configuration.
    pub config: Arc<model::HttpConnectionManager>,
    /// This worker's stats for it.
    pub stats: HcmStats,
    /// Its HTTP filters (before the router) on this worker.
    pub filters: Vec<filter::Factory>,
    /// The filters of the upgrade types that have their own, by type.
    pub upgrade_filters: Vec<(String, Vec<filter::Factory>)>,
    /// Whether a filter of `filters`, or of an upgrade's, may write dynamic metadata (the
    /// streams that run them get some).
    writes_metadata: bool,
    /// Whether a filter renders formats from the stream's record (kept for them).
    filters_read_record: bool,
    /// Its `route_config` or `scoped_routes`, indexed (none with RDS: each stream takes the
    /// table in force).
    pub routes: router::StaticRoutes,
}

impl HttpConnectionManager {
    /// Starts what its filters do in the background on `worker`.
    pub fn start(&self, worker: &Rc<crate::worker::Worker>) {
        for f in self
            .filters
            .iter()
            .chain(self.upgrade_filters.iter().flat_map(|(_, f)| f))
        {
            f.start(worker);
        }
    }

    /// The connection manager a worker runs for `config`.
    pub fn new(
        config: Arc<model::HttpConnectionManager>,
        shard: &Arc<crate::stats::Shard>,
        scope: &str,
    ) -> Self {
        let routes = match &config.routes {
            // Translation checked them; a table that does not index routes nothing.
            model::RouteSource::Static(c) => match crate::router::RouteTable::new(c.clone()) {
                Ok(t) => router::StaticRoutes::Table(Arc::new(t)),
                Err(e) => {
                    tracing::error!(error = %e, "route_config does not index");
                    router::StaticRoutes::None
                }
            },
            model::RouteSource::Scoped(s) => {
                match crate::router::scoped::ScopedTables::new(s.clone()) {
                    Ok(t) => router::StaticRoutes::Scoped(Arc::new(t)),
                    Err(e) => {
                        tracing::error!(error = %e, "scoped_routes do not index");
                        router::StaticRoutes::None
                    }
                }
            }
            model::RouteSource::Rds { .. } | model::RouteSource::ScopedRds(_) => {
                router::StaticRoutes::None
            }
        };
        let filters = filter::factories(&config.http_filters, shard, &config.stat_prefix);
        let upgrade_filters: Vec<(String, Vec<filter::Factory>)> = config
            .upgrade_filters
            .iter()
            .map(|(kind, list)| {
                (
                    kind.clone(),
                    filter::factories(list, shard, &config.stat_prefix),
                )
            })
            .collect();
        let writes_metadata = filters
            .iter()
            .chain(upgrade_filters.iter().flat_map(|(_, f)| f))
            .any(filter::Factory::writes_metadata);
        let filters_read_record = filters
            .iter()
            .chain(upgrade_filters.iter().flat_map(|(_, f)| f))
            .any(filter::Factory::reads_record);
        HttpConnectionManager {
            filters_read_record,
            stats: HcmStats::new(shard.clone(), &config.stat_prefix, scope),
            filters,
            upgrade_filters,
            writes_metadata,
            routes,
            config,
        }
    }
}

/// The downstream connection a stream belongs to.
struct Conn {
    hcm: Rc<HttpConnectionManager>,
    worker: Rc<Worker>,
    /// The listener's drain: `connection: close` and GOAWAY once it asks for it.
    drain: ConnectionDrain,
    /// What the HTTP filters of the connection's streams share.
    filter_state: filter::ConnectionState,
    remote: SocketAddr,
    local: SocketAddr,
    /// What the access log shows of the connection.
    connection: Arc<Connection>,
    /// original_src: where upstream connections come from.
    source: Option<crate::upstream::pool::Source>,
    /// `per_connection_buffer_limit_bytes`: what a stream may hold, a body kept for a retry
    /// included.
    buffer_limit: usize,
    /// HTTP/1.1: the cluster whose response is being written, whose reading pauses while
    /// writing to the client waits (`upstream_flow_control_{paused,resumed}_reading_total`).
    response_flow: FlowSlot,
    /// Whether the connection is TLS (`x-forwarded-proto: https`).
    secure: bool,
    /// The codec this connection turned out to speak, once its first request arrived.
    codec: Cell<Option<Codec>>,
    /// A request head the HTTP/1.1 guard refused, for the stand-in request that follows it.
    refused: RefusedSlot,
    /// HTTP/1.1: the `100 Continue` heads for the client, which the guard writes (hyper sees
    /// no `Expect: 100-continue`, so never answers one itself).
    interim: Option<h1_guard::InterimSlot>,
    /// Streams closed so far, and those the client reset prematurely.
    closed_streams: Cell<u64>,
    premature_resets: Cell<u64>,
    /// Set once the connection is to be closed for too many premature resets.
    reset_abuse: Rc<crate::gate::LocalNotify>,
    reset_abuse_seen: Cell<bool>,
    /// The connection has ended: streams dropped now were not reset by the client.
    ended: Cell<bool>,
    /// Set when a request switched protocols: the HTTP/1.1 guard lets the tunnel's bytes pass.
    switched: h1_guard::Switched,
    /// The tunnel of an upgraded request (websocket), run once hyper hands the connection over.
    tunnel: RefCell<Option<Pin<Box<dyn Future<Output = ()>>>>>,
    /// Streams in flight, for the idle timeout.
    activity: Activity,
    /// Requests seen, for `max_requests_per_connection`.
    requests: Cell<u32>,
    /// The connection is to end: HTTP/1.1 responses say `connection: close`.
    closing: Cell<bool>,
    /// Asks the connection to finish (GOAWAY, or close once idle).
    finish: crate::gate::LocalNotify,
    /// How the codec's close of the connection waits (delayed_close_timeout, drain_timeout).
    close_state: Arc<CloseState>,
    /// Whether the overload manager's actions apply (not on a `bypass_overload_manager`
    /// listener).
    overload: bool,
    /// The overload manager ends the connection now (after a GOAWAY).
    abort: crate::gate::LocalNotify,
}

impl Conn {
    /// Envoy's premature-reset protection (`ConnectionManagerImpl::maybeDrainDueToPrematureResets`):
    /// a client that opens streams and resets them at once makes the proxy start upstream work
    /// it never pays for (CVE-2023-44487). Once half of the first 500 streams, or half of all
    /// streams after that, were reset within a second of opening, the connection is closed
    /// (the `overload.premature_reset_*` runtime keys set the 500 and the second).
    fn stream_closed(&self, premature: bool) {
        let closed = self.closed_streams.get() + 1;
        self.closed_streams.set(closed);
        let resets = self.premature_resets.get() + u64::from(premature);
        self.premature_resets.set(resets);
        if resets == 0 || self.reset_abuse_seen.get() {
            return;
        }
        let limit = crate::overload::premature_reset().total_stream_count;
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
    overload: bool,
) {
    let stats = &hcm.stats;
    // The hcm_ondata_creating_codec load shed point: the connection is closed before a codec
    // reads it (counted as a request refused for overload, as Envoy counts it).
    if overload && crate::overload::shed(ShedPoint::HcmCodecCreation) {
        stats.downstream_cx_total.inc();
        stats.downstream_rq_overload_close.inc();
        stats.downstream_cx_destroy.inc();
        return;
    }
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    let opened = Instant::now();
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
        filter_state: filter::ConnectionState::default(),
        remote,
        local,
        connection,
        source,
        buffer_limit,
        secure,
        codec: Cell::new(None),
        refused: RefusedSlot::default(),
        interim: (hcm.config.codec != CodecType::Http2).then(h1_guard::InterimSlot::default),
        closed_streams: Cell::new(0),
        premature_resets: Cell::new(0),
        reset_abuse: Rc::default(),
        reset_abuse_seen: Cell::new(false),
        ended: Cell::new(false),
        switched: h1_guard::Switched::default(),
        tunnel: RefCell::new(None),
        activity: Activity::default(),
        requests: Cell::new(0),
        closing: Cell::new(false),
        finish: crate::gate::LocalNotify::default(),
        close_state: Arc::new(CloseState::default()),
        overload,
        abort: crate::gate::LocalNotify::default(),
    });
    let svc_conn = conn.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let conn = svc_conn.clone();
        async move {
            // max_headers_count: HTTP/2's codec resets a stream with more headers (pseudo-headers
            // included), before the connection manager sees it.
            if req.version() == Version::HTTP_2
                && h2_header_count(&req) > conn.hcm.config.timeouts.max_headers_count as usize
            {
                conn.hcm.stats.http2_header_overflow.inc();
                log_codec_reset(&conn, "http2.too_many_headers");
                return Err(StreamRefused("too many headers").into());
            }
            if req.version() == Version::HTTP_2
                && h2_header_bytes(&req)
                    > conn.hcm.config.timeouts.max_request_headers_kb as usize * 1024
            {
                conn.hcm.stats.http2_header_list_size_too_large.inc();
                log_codec_reset(&conn, "http2.header_list_size_too_large");
                return Err(StreamRefused("header list too large").into());
            }
            // A `content-length` that is not a number, or given more than once, resets the
            // stream (Envoy's HTTP/2 codec closes the connection on either; h2 takes an empty
            // one for 0 and checks only the first, so they would reach an HTTP/1.1 upstream
            // as they are).
            if req.version() == Version::HTTP_2 {
                let mut lengths = req.headers().get_all(http::header::CONTENT_LENGTH).iter();
                if let Some(first) = lengths.next() {
                    if lengths.next().is_some() {
                        return Err(Malformed("several content-lengths").into());
                    }
                    if first.is_empty() || !first.as_bytes().iter().all(u8::is_ascii_digit) {
                        return Err(Malformed("invalid content-length").into());
                    }
                }
            }
            // A header name h2 lets through that is not a token (`"`): Envoy's codec refuses
            // it; an HTTP/1.1 upstream could not read it.
            if req.version() == Version::HTTP_2
                && req.headers().keys().any(|n| n.as_str().contains('"'))
            {
                return Err(Malformed("invalid header name").into());
            }
            // A `:path` that is only a fragment (`#p`) leaves h2 an empty path; it would reach
            // an HTTP/1.1 upstream as an empty request target. Envoy's codec resets the stream
            // for a path that does not start with `/`.
            if req.version() == Version::HTTP_2
                && req.method() != Method::CONNECT
                && req
                    .uri()
                    .path_and_query()
                    // `as_str` says `/` for an empty path; the origin form says what it is.
                    .is_none_or(|p| http::Uri::from(p.clone()).path().is_empty())
            {
                return Err(Malformed("empty path").into());
            }
            // HTTP/2's codec refuses a header name with `_` by resetting the stream before the
            // connection manager sees it (headers_with_underscores_action: REJECT_REQUEST).
            if req.version() == Version::HTTP_2
                && conn.hcm.config.underscores == Underscores::Reject
                && has_underscore_name(req.headers())
            {
                conn.hcm.stats.http2_rejected_underscores.inc();
                return Err(StreamRefused("header name contains underscores").into());
            }
            // reset_high_memory_stream: an HTTP/2 stream's account; until the response
            // starts, its reset is the service's error (hyper sends RST_STREAM), after that
            // the response body's.
            let account = if req.version() == Version::HTTP_2 {
                crate::overload::accounts::new_account()
            } else {
                None
            };
            let Some(account) = account else {
                // proxy_100_continue: a `100 Continue` not written by the time the response
                // is ready is dropped; after the response it would read as the next one.
                let relayed = conn
                    .interim
                    .clone()
                    .filter(|_| conn.hcm.config.proxy_100_continue);
                let resp = handle(conn, req, None).await;
                if let Some(slot) = relayed {
                    h1_guard::clear_interim(&slot);
                }
                return Ok(resp);
            };
            tokio::select! {
                biased;
                r = handle(conn, req, Some(account.clone())) => Ok(r),
                () = account.reset() => Err(crate::http::body::overload_reset()),
            }
        }
    });
    // per_connection_buffer_limit_bytes bounds what one connection or stream may hold: the
    // HTTP/2 stream window is sized from it and the HTTP/1.1 read buffer is a fixed 64 KiB, so a
    // slow upstream stops the client instead of growing memory here.
    let h2 = &hcm.config.http2;
    let (stream_window, conn_window) = h2.windows(buffer_limit);
    // The guard refuses a head with more headers first (Envoy's 431); hyper's own limit must
    // not be lower.
    let max_headers = hcm.config.timeouts.max_headers_count as usize;
    // max_request_headers_kb: the guard (HTTP/1.1) and the stream handler (HTTP/2) refuse a
    // longer head; hyper's read buffer and h2's header list limit must hold one that fits
    // (h2 counts 32 more bytes a field).
    let max_head = hcm.config.timeouts.max_request_headers_kb as usize * 1024;
    let read_buf = (max_head + 1024).max(64 * 1024);
    let header_list = u32::try_from(max_head + 32 * (max_headers + 8)).unwrap_or(u32::MAX);
    let mut builder = auto::Builder::new(LocalExec);
    // The HTTP/1.1 read buffer (64 KiB unless a head may be longer) also bounds what a stream
    // reads ahead. Waiting for the next request is the connection idle timeout (timeouts.rs).
    // header_key_format: proper case for what is written; preserve_case also records the
    // request's names, which go upstream with it (and a response's recorded by its cluster).
    let proper_case = hcm.config.header_case == HeaderCase::ProperCase;
    let preserve_case = hcm.config.header_case == HeaderCase::Preserve;
    let enable_trailers = hcm.config.enable_trailers;
    // hyper's own header read timeout (30 s unless told) is off: Envoy's
    // request_headers_timeout is the request-head guard's, and without it a keep-alive
    // connection waits for its next request until the idle timeout.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(read_buf)
        .max_headers(max_headers)
        .title_case_headers(proper_case)
        .preserve_header_case(preserve_case)
        .trailers(enable_trailers);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(header_list)
        .max_concurrent_streams(h2.max_concurrent_streams)
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(conn_window);
    if h2.allow_connect {
        builder.http2().enable_connect_protocol();
    }
    // connection_keepalive: hyper PINGs once no frame has arrived for the interval and closes
    // the connection when the PING is not answered in time. The jitter is drawn once per
    // connection.
    if let Some(k) = h2.keepalive {
        let jitter = k.interval.mul_f64(k.jitter * fastrand::f64());
        builder
            .http2()
            .keep_alive_interval(k.interval + jitter)
            .keep_alive_timeout(k.timeout);
    }
    // The codec's own close waits for the client (delayed_close_timeout) and, for a draining
    // HTTP/2 connection, for drain_timeout.
    let close_state = conn.close_state.clone();
    // HTTP/1.1 request heads are judged by Envoy's codec rules before hyper reads them.
    // Set in place: the guard is 656 bytes, and a builder taking it by value would copy it at
    // every step.
    let mut guarded = H1Guard::new(
        DelayedClose::new(
            Counted::new(
                stream,
                stats.downstream_cx_rx_bytes_total.clone(),
                stats.downstream_cx_tx_bytes_total.clone(),
            ),
            hcm.config.timeouts.delayed_close,
            close_state.clone(),
        ),
        conn.refused.clone(),
        hcm.config.codec != CodecType::Http2,
    );
    guarded
        .limits(
            hcm.config.timeouts.max_headers_count,
            max_head,
            hcm.config.timeouts.request_headers,
            stats.downstream_rq_header_timeout.clone(),
        )
        .allow_chunked_length(hcm.config.allow_chunked_length)
        .allow_absolute_url(hcm.config.allow_absolute_url)
        .interim(conn.interim.clone())
        .h2_floods(
            FloodLimits {
                empty_frames: hcm.config.http2.max_consecutive_empty_frames,
                priority_per_stream: hcm.config.http2.max_priority_frames_per_stream,
                window_update_per_data_frame: hcm
                    .config
                    .http2
                    .max_window_update_frames_per_data_frame,
                outbound_frames: hcm.config.http2.max_outbound_frames,
                outbound_control_frames: hcm.config.http2.max_outbound_control_frames,
            },
            stats.http2_floods.clone(),
            buffer_limit,
        )
        .switch_on(conn.switched.clone())
        .on_http2(close_state.http2_flag());
    let speaks_http2 = close_state.http2_flag();
    // A client that stops reading holds a write no longer than the stream idle timeout.
    let io = TokioIo::new(WriteFlow::new(guarded, None, response_flow).stall_limit(
        hcm.config.timeouts.stream_idle,
        stats.downstream_rq_idle_timeout.clone(),
    ));
    // hyper's connection runs until it closes, or until `shutdown` asks it to finish gracefully
    // (GOAWAY, or `connection: close` on the next response).
    let shutdown = Rc::new(crate::gate::LocalNotify::default());
    let stop = shutdown.clone();
    macro_rules! until_shutdown {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                biased;
                r = conn.as_mut() => r.map_err(Into::into),
                _ = crate::gate::gated(stop.notified()) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await.map_err(Into::into)
                }
            }
        }};
    }
    let served: Pin<Box<dyn Future<Output = ServeResult>>> =
        match hcm.config.codec {
            // Upgrades (websockets) need hyper's upgradeable HTTP/1.1 connections.
            CodecType::Auto => Box::pin(async move {
                until_shutdown!(builder.serve_connection_with_upgrades(io, service))
            }),
            // hyper-util's upgradeable connection would also take HTTP/2: an HTTP1-only codec
            // uses hyper's HTTP/1.1 connection itself.
            CodecType::Http1 => Box::pin(async move {
                let mut h1 = hyper::server::conn::http1::Builder::new();
                h1.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(None)
                    .keep_alive(true)
                    .max_buf_size(read_buf)
                    .max_headers(max_headers)
                    .title_case_headers(proper_case)
                    .preserve_header_case(preserve_case)
                    .trailers(enable_trailers);
                until_shutdown!(h1.serve_connection(io, service).with_upgrades())
            }),
            CodecType::Http2 => {
                let builder = builder.http2_only();
                Box::pin(async move { until_shutdown!(builder.serve_connection(io, service)) })
            }
        };
    let mut served = served;
    let mut drain = drain;
    let reset_abuse = conn.reset_abuse.clone();
    let timeouts = hcm.config.timeouts;
    // drain_timeout, with this connection's draw of drain_timeout_jitter.
    let drain_time = drain_time(&timeouts);
    let idle = async {
        match timeouts.connection_idle {
            Some(limit) => conn.activity.idle_for(limit).await,
            None => std::future::pending().await,
        }
    };
    let started = tokio::time::Instant::now();
    let lifetime = async {
        match timeouts.max_connection_duration {
            Some(limit) => {
                crate::overload::sleep_scaled(ScaledTimer::ConnectionMax, started, limit).await
            }
            None => std::future::pending().await,
        }
    };
    // An HTTP/1.1 connection past its max_connection_duration: closed once drain_timeout
    // (and its delayed close) has passed, as Envoy's drain timer does.
    let mut h1_drain: Option<Pin<Box<tokio::time::Sleep>>> = None;
    tokio::pin!(idle, lifetime);
    let (mut draining, mut finishing, mut idle_done) = (false, false, false);
    let http2 = |conn: &Conn| conn.codec.get() == Some(Codec::Http2);
    // An HTTP/2 connection's GOAWAY starts its drain: it closes no sooner than drain_timeout
    // later, as Envoy's final GOAWAY comes then.
    let start_drain = |conn: &Conn| {
        if http2(conn) || speaks_http2.load(std::sync::atomic::Ordering::Relaxed) {
            close_state.drain_for(drain_time);
        }
    };
    // What ends or changes the connection besides hyper: rare, so polled only when one of
    // them woke the task (not at every read and write).
    enum Control {
        ResetAbuse,
        Abort,
        CloseRequested,
        Idle,
        Lifetime,
        H1Drain,
        Finish,
    }
    let result = loop {
        let control = crate::gate::gated(async {
            tokio::select! {
                biased;
                _ = reset_abuse.notified() => Control::ResetAbuse,
                _ = conn.abort.notified() => Control::Abort,
                _ = drain.close_requested(), if !draining => Control::CloseRequested,
                _ = &mut idle, if !idle_done => Control::Idle,
                _ = &mut lifetime, if !finishing => Control::Lifetime,
                _ = async { h1_drain.as_mut().expect("checked").await }, if h1_drain.is_some() => {
                    Control::H1Drain
                }
                _ = conn.finish.notified(), if !finishing => Control::Finish,
            }
        });
        let control = tokio::select! {
            biased;
            r = served.as_mut() => break r,
            c = control => c,
        };
        match control {
            // Too many premature resets: the connection is dropped at once, as Envoy aborts it.
            Control::ResetAbuse => break Ok(()),
            // The overload manager ends the connection: GOAWAY, and a moment to send it.
            Control::Abort => {
                shutdown.notify_one();
                break tokio::time::timeout(ABORT_GRACE, served.as_mut())
                    .await
                    .unwrap_or(Ok(()));
            }
            Control::CloseRequested => {
                draining = true;
                // HTTP/2 gets its GOAWAY now. An HTTP/1.1 connection is not cut while idle (its
                // client may be sending): its next response carries `connection: close`, as in
                // Envoy; only at shutdown are idle ones closed at once.
                if http2(&conn) || drain.shutting_down() {
                    if http2(&conn) {
                        stats.downstream_cx_drain_close.inc();
                    }
                    // At shutdown the process is leaving: no drain_timeout to wait out.
                    if !drain.shutting_down() {
                        start_drain(&conn);
                    }
                    shutdown.notify_one();
                }
            }
            // No stream for the idle timeout: HTTP/1.1 closes, HTTP/2 (or a connection whose
            // protocol is not known yet) says GOAWAY first and gets a moment to send it.
            Control::Idle => {
                idle_done = true;
                // A connection the codec is closing (its delayed close) is not idle.
                if close_state.closing() {
                    continue;
                }
                stats.downstream_cx_idle_timeout.inc();
                if conn.codec.get() == Some(Codec::Http1) {
                    break Ok(());
                }
                start_drain(&conn);
                shutdown.notify_one();
                // A client that never answers the GOAWAY's PING gets no final GOAWAY; it is
                // closed when Envoy's would be.
                let grace = drain_time + timeouts.delayed_close.unwrap_or_default();
                break tokio::time::timeout(grace.max(IDLE_CLOSE_GRACE), served.as_mut())
                    .await
                    .unwrap_or(Ok(()));
            }
            // max_connection_duration: the connection finishes as for a drain (an idle
            // HTTP/1.1 one closes now, a busy one after its response).
            Control::Lifetime => {
                finishing = true;
                stats.downstream_cx_max_duration_reached.inc();
                conn.closing.set(true);
                if conn.codec.get() == Some(Codec::Http1) {
                    // Responses say close from now; an idle connection is closed after
                    // drain_timeout and the delayed close, or never with
                    // http1_safe_max_connection_duration (its next response closes it).
                    if !timeouts.http1_safe_max_duration {
                        let wait = drain_time + timeouts.delayed_close.unwrap_or_default();
                        h1_drain = Some(Box::pin(tokio::time::sleep(wait)));
                    }
                } else {
                    start_drain(&conn);
                    shutdown.notify_one();
                }
            }
            Control::H1Drain => {
                h1_drain = None;
                shutdown.notify_one();
            }
            // max_requests_per_connection reached: the last response said `connection: close`
            // (HTTP/1.1) or the connection says GOAWAY (HTTP/2).
            Control::Finish => {
                finishing = true;
                start_drain(&conn);
                shutdown.notify_one();
            }
        }
    };
    // A request that switched protocols ended hyper's part: the connection is its tunnel now.
    let tunnel = conn.tunnel.borrow_mut().take();
    if let Some(tunnel) = tunnel {
        tunnel.await;
    }
    // `served` (and any stream still in it) is dropped when this function returns.
    conn.ended.set(true);
    if let Err(e) = result {
        tracing::debug!(error = %e, %remote, "downstream connection ended with an error");
        if is_protocol_error(&*e) {
            stats.downstream_cx_protocol_error.inc();
        } else if speaks_http2.load(std::sync::atomic::Ordering::Relaxed)
            && is_keepalive_timeout(&*e)
        {
            stats.http2_keepalive_timeout.inc();
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
    stats.downstream_cx_length_ms.record_ms(opened.elapsed());
}

type ServeResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// An HTTP/2 stream its codec refuses (a header name with `_`, too many headers): hyper
/// resets it with INTERNAL_ERROR, as Envoy does for a limit.
#[derive(Debug)]
struct StreamRefused(&'static str);

/// A malformed HTTP/2 request (RFC 9113 §8.1.1): reset with PROTOCOL_ERROR (hyper takes the
/// code from the `h2::Error` it finds among the error's sources).
#[derive(Debug)]
struct Malformed(&'static str);

static PROTOCOL_ERROR: std::sync::LazyLock<h2::Error> =
    std::sync::LazyLock::new(|| h2::Error::from(h2::Reason::PROTOCOL_ERROR));

impl std::fmt::Display for StreamRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for StreamRefused {}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Malformed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*PROTOCOL_ERROR)
    }
}

/// The header fields of an HTTP/2 request as its client sent them, pseudo-headers included.
fn h2_header_count<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let pseudo = 1
        + usize::from(uri.scheme().is_some())
        + usize::from(uri.authority().is_some())
        + usize::from(uri.path_and_query().is_some() && req.method() != http::Method::CONNECT)
        + usize::from(req.extensions().get::<hyper::ext::Protocol>().is_some());
    pseudo + req.headers().len()
}

/// The bytes of an HTTP/2 request's header list as Envoy counts them: names and values,
/// pseudo-headers included.
fn h2_header_bytes<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let mut n = ":method".len() + req.method().as_str().len();
    if let Some(s) = uri.scheme_str() {
        n += ":scheme".len() + s.len();
    }
    if let Some(a) = uri.authority() {
        n += ":authority".len() + a.as_str().len();
    }
    if req.method() != http::Method::CONNECT {
        if let Some(p) = uri.path_and_query() {
            n += ":path".len() + p.as_str().len();
        }
    }
    if let Some(p) = req.extensions().get::<hyper::ext::Protocol>() {
        n += ":protocol".len() + p.as_str().len();
    }
    n + req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum::<usize>()
}

/// The access log line of an HTTP/2 stream its codec reset (no response code; `DR`).
fn log_codec_reset(conn: &Conn, details: &'static str) {
    let logs = &conn.hcm.config.access_logs;
    if logs.is_empty() {
        return;
    }
    let mut info = StreamInfo::new(conn.remote, conn.local);
    info.connection = Some(conn.connection.clone());
    info.protocol = Some(protocol_name(Version::HTTP_2));
    info.flags.set(ResponseFlag::DownstreamRemoteReset);
    info.details = details;
    info.finish();
    conn.worker.access_log.log(logs, &info);
}

fn has_underscore_name(h: &http::HeaderMap) -> bool {
    h.keys().any(|n| n.as_str().contains('_'))
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

/// Whether an HTTP/2 connection ended because its keepalive PING went unanswered (hyper's only
/// timeout on an HTTP/2 server connection).
fn is_keepalive_timeout(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return h.is_timeout() && !h.is_parse();
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
    /// Bytes a tunnel carried from the client (the request body of an upgrade).
    tunnel_received: u64,
    /// The request is a HEAD: local replies carry no body.
    head_request: bool,
    /// The request is gRPC (`content-type: application/grpc…`): local replies are gRPC ones.
    grpc: bool,
    /// Answered as Envoy's codec answers a request it refuses: a close after it waits for the
    /// client (delayed_close_timeout).
    codec_error: bool,
    /// The timer of the next periodic access log line (`access_log_flush_interval`).
    periodic: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The stream's span, when the connection manager has a tracer.
    span: Option<Box<crate::trace::Span>>,
}

impl Unpin for Done {}

impl Done {
    /// The stream's accounting, taken from the response it was made for: a tunnel's end, not
    /// the end of its `101`, ends the stream.
    fn detach(&mut self) -> Done {
        let d = Done {
            conn: self.conn.clone(),
            started: self.started,
            info: self.info.take(),
            request: self.request.clone(),
            upstream: self.upstream.take(),
            settled: false,
            tunnel_received: 0,
            head_request: self.head_request,
            grpc: self.grpc,
            codec_error: self.codec_error,
            periodic: None,
            span: self.span.take(),
        };
        self.settled = true;
        d
    }

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
        let now = tokio::time::Instant::now();
        let lived = now.into_std().saturating_duration_since(self.started);
        self.conn.stream_closed(
            client_reset && lived < crate::overload::premature_reset().min_stream_lifetime,
        );
        stats.downstream_rq_active.dec();
        stats.downstream_rq_completed.inc();
        stats.listener_completed.inc();
        stats.downstream_rq_time.record_ms(lived);
        self.conn.activity.stream_ended_at(now);
        if self.conn.codec.get() == Some(Codec::Http1) {
            // Envoy closes at once after a response to a request that fully arrived, unless
            // the connection drains (disable_http_keepalive).
            let clean = reason == EndReason::Complete
                && self.request.done_at().is_some()
                && !self.codec_error;
            let draining = self.conn.close_state.draining();
            self.conn.close_state.delay_close(!clean || draining);
        }
        if let Some(a) = &self.request.account {
            a.close();
        }
        match reason {
            EndReason::Complete => {}
            // Envoy's connection manager counts a reset it hears of from its codec as
            // received, whoever asked for it.
            EndReason::DownstreamReset | EndReason::Overload => stats.downstream_rq_rx_reset.inc(),
            EndReason::UpstreamReset | EndReason::UpstreamProtocolError | EndReason::Timeout => {
                stats.downstream_rq_tx_reset.inc()
            }
            EndReason::Expired(e) => {
                stats.expired(e);
                stats.downstream_rq_tx_reset.inc();
            }
        }
        if let Some(up) = self.upstream.take() {
            up.finish(reason);
        }
        if let Some(mut info) = self.info.take() {
            info.bytes_sent = bytes;
            info.bytes_received = self.request.bytes() + self.tunnel_received;
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
                EndReason::Overload => {
                    info.flags.set(ResponseFlag::OverloadManager);
                    info.details = OVERLOAD_RESET_DETAILS;
                }
                EndReason::Expired(e) => {
                    if let Some(f) = e.flag() {
                        info.flags.set(f);
                    }
                    info.details = e.details();
                }
            }
            info.finish();
            if let Some(span) = &self.span {
                info.span_ids = span.ids();
            }
            self.conn
                .worker
                .access_log
                .log(&self.conn.hcm.config.access_logs, &info);
            if let Some(span) = self.span.take() {
                span.finish(&info, &self.conn.worker);
            }
        }
    }
}

/// `%RESPONSE_CODE_DETAILS%` of a stream the overload manager reset.
const OVERLOAD_RESET_DETAILS: &str = "overload";

impl StreamEnd for Done {
    fn end(mut self, reason: EndReason, bytes: u64) {
        self.settle(reason, bytes);
    }

    fn account(&self) -> Option<&std::sync::Arc<crate::overload::accounts::Account>> {
        self.request.account.as_ref()
    }

    fn poll_periodic(&mut self, cx: &mut std::task::Context<'_>) {
        let cfg = &self.conn.hcm.config;
        let Some(interval) = cfg.log_flush.interval else {
            return;
        };
        let Some(info) = self.info.as_mut() else {
            return;
        };
        loop {
            let timer = self.periodic.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep_until(crate::http::body::next_tick(
                    info.start, interval,
                )))
            });
            if timer.as_mut().poll(cx).is_pending() {
                return;
            }
            self.periodic = None;
            self.conn
                .worker
                .access_log
                .log_early(&cfg.access_logs, info, "DownstreamPeriodic");
        }
    }

    fn trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(info) = self.info.as_mut() {
            info.response_trailers = Some(Box::new(trailers.clone()));
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        // A stream dropped before its response: the client went away, or the overload
        // manager reset it (the service gave hyper the reset).
        let reason = match &self.request.account {
            Some(a) if a.is_reset() => EndReason::Overload,
            _ => EndReason::DownstreamReset,
        };
        self.settle(reason, 0);
    }
}

type Resp = Response<Tracked<Done>>;

/// One stream, with its buffer memory account when it has one (`reset_high_memory_stream`).
async fn handle(
    conn: Rc<Conn>,
    req: Request<Incoming>,
    account: Option<std::sync::Arc<crate::overload::accounts::Account>>,
) -> Resp {
    let cfg = conn.hcm.config.clone();
    let stats = &conn.hcm.stats;
    stats.downstream_rq_total.inc();
    stats.rq_total.inc();
    stats.downstream_rq_active.inc();
    conn.activity.stream_started();
    // max_requests_per_connection: the last request's response ends the connection.
    let requests = conn.requests.get() + 1;
    conn.requests.set(requests);
    if cfg.timeouts.max_requests_per_connection == Some(requests) {
        stats.downstream_cx_max_requests_reached.inc();
        conn.closing.set(true);
        conn.finish.notify_one();
    }
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

    // The stream's record is kept for access logs, and for local replies that formats rewrite.
    let logging = !cfg.access_logs.is_empty() || cfg.local_reply.is_some() || cfg.tracer.is_some();
    let (mut parts, body) = req.into_parts();
    // The stream's start, read once for its record, its timers and a request without body.
    let now = Instant::now();
    let request = Rc::new(
        RequestProgress::new(FlowPair::new(
            &stats.downstream_flow_control_paused_reading_total,
            &stats.downstream_flow_control_resumed_reading_total,
        ))
        .with_account(account),
    );
    if body.is_end_stream() {
        request.mark_done_at(tokio::time::Instant::from_std(now));
    }
    let timers = Some(StreamTimers::starting(
        &cfg.timeouts,
        request.clone(),
        tokio::time::Instant::from_std(now),
    ));
    let mut done = Done {
        conn: conn.clone(),
        started: now,
        info: logging.then(|| Box::new(StreamInfo::new(conn.remote, conn.local))),
        request: request.clone(),
        upstream: None,
        settled: false,
        tunnel_received: 0,
        head_request: parts.method == http::Method::HEAD,
        grpc: crate::router::is_grpc(&parts.headers),
        codec_error: false,
        periodic: None,
        span: None,
    };
    if let Some(info) = done.info.as_mut() {
        record_start(info, &conn, &parts, version);
    }

    if codec == Codec::Http1 {
        // The stand-in for a head the guard refused (h1_guard.rs): Envoy's codec error reply.
        if let Some(refusal) = h1_guard::take_refusal(&conn.refused, parts.uri.path()) {
            use crate::http::framing::Reason;
            done.codec_error = refusal.reason != Reason::Fragment;
            match refusal.reason {
                Reason::HeaderTimeout => stats.downstream_rq_header_timeout.inc(),
                Reason::Fragment => stats.downstream_rq_failed_path_normalization.inc(),
                _ => stats.downstream_cx_protocol_error.inc(),
            }
            if let Some(info) = done.info.as_mut() {
                // A request the codec refuses has no headers in Envoy's access log (`-`); one
                // refused for its path's fragment passed the codec.
                let passed_codec = refusal.reason == Reason::Fragment;
                info.method = refusal
                    .method
                    .as_deref()
                    .filter(|_| passed_codec)
                    .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok());
                info.path = refusal.path.filter(|_| passed_codec);
                info.authority = None;
            }
            return local(done, LocalReply::for_codec(refusal.reason), None);
        }
    }
    if version == Version::HTTP_10 || version == Version::HTTP_09 {
        let Some(http10) = &cfg.http10 else {
            done.codec_error = true;
            if let Some(info) = done.info.as_mut() {
                (info.method, info.path, info.authority) = (None, None, None);
            }
            return local(done, LocalReply::UPGRADE_REQUIRED, None);
        };
        // accept_http_10: served as HTTP/1.1 upstream. Unless the client asked to keep the
        // connection, the response says `connection: close` and the connection closes after
        // it as Envoy's does (waiting for the client, delayed_close_timeout).
        if !headers::asks_keep_alive(&parts.headers) {
            conn.closing.set(true);
            conn.close_state.drain_for(std::time::Duration::ZERO);
        }
        if !parts.headers.contains_key(header::HOST) {
            if let Some(host) = &http10.default_host {
                parts.headers.insert(header::HOST, host.clone());
                if let Some(info) = done.info.as_mut() {
                    info.authority = host.to_str().ok().map(str::to_string);
                }
            }
        }
    }
    if conn.overload {
        // The overload manager's points in the codecs, before a request is decoded: the
        // HTTP/1.1 codec's 500 (logged as its other errors, without a path).
        if codec == Codec::Http1 && crate::overload::shed(ShedPoint::Http1AbortDispatch) {
            done.codec_error = true;
            stats.downstream_rq_overload_close.inc();
            if let Some(info) = done.info.as_mut() {
                info.path = None;
            }
            return local(done, LocalReply::OVERLOAD_ABORT, None);
        }
        if codec == Codec::Http2 {
            if crate::overload::shed(ShedPoint::Http2GoAwayAndClose) {
                conn.abort.notify_one();
            } else if crate::overload::shed(ShedPoint::Http2GoAway) {
                conn.finish.notify_one();
            }
        }
    }
    match cfg.underscores {
        Underscores::Allow => {}
        Underscores::Reject if codec == Codec::Http1 && has_underscore_name(&parts.headers) => {
            stats.http1_rejected_underscores.inc();
            stats.downstream_cx_protocol_error.inc();
            return local(done, LocalReply::UNEXPECTED_UNDERSCORE, None);
        }
        Underscores::Reject => {}
        Underscores::Drop => {
            let names: Vec<header::HeaderName> = parts
                .headers
                .keys()
                .filter(|n| n.as_str().contains('_'))
                .cloned()
                .collect();
            for n in names {
                let dropped = parts.headers.get_all(&n).iter().count() as u64;
                parts.headers.remove(&n);
                let counter = if codec == Codec::Http2 {
                    &stats.http2_dropped_underscores
                } else {
                    &stats.http1_dropped_underscores
                };
                for _ in 0..dropped {
                    counter.inc();
                }
            }
        }
    }
    // New requests are refused while the overload manager says so (Envoy checks as soon as
    // the head is decoded, before anything else of the connection manager's).
    if conn.overload
        && (crate::overload::act(ActionName::StopAcceptingRequests)
            || crate::overload::shed(ShedPoint::HcmDecodeHeaders))
    {
        stats.downstream_rq_overload_close.inc();
        return local(done, LocalReply::OVERLOADED, None);
    }
    // `Expect: 100-continue` (any case): without proxy_100_continue the connection manager
    // answers it at once, before routing, and removes it; with it, it goes upstream and the
    // upstream's `100 Continue` comes back. The guard hid it from hyper.
    if let Some(slot) = conn.interim.as_ref().filter(|_| codec == Codec::Http1) {
        unhide_continue(&mut parts.headers);
        if cfg.proxy_100_continue {
            parts.extensions.insert(h1_guard::ContinueRelay {
                slot: slot.clone(),
                counters: stats.informational(),
                sent: Arc::default(),
            });
        }
    }
    if !cfg.proxy_100_continue
        && parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        parts.headers.remove(header::EXPECT);
        // hyper's HTTP/2 server sends no informational responses: the client waits for its
        // own timeout before the body (tests/DIFFERENCES.md).
        if let Some(slot) = conn.interim.as_ref().filter(|_| codec == Codec::Http1) {
            h1_guard::send_interim(slot, b"HTTP/1.1 100 Continue\r\n\r\n");
            for c in stats.informational() {
                c.inc();
            }
        }
    }
    // allow_absolute_url false: the codec takes an absolute-form target as the path, which
    // the connection manager then refuses as not relative (below).
    let mut non_relative = parts.uri.scheme().is_some()
        && codec == Codec::Http1
        && !cfg.allow_absolute_url
        && parts.method != Method::CONNECT;
    if non_relative {
        if let Some(info) = done.info.as_mut() {
            info.path = Some(parts.uri.to_string());
        }
        parts.uri = http::Uri::from_static("/");
    }
    // Several `Host` headers become one whatever the codec (an HTTP/2 request without
    // `:authority` would otherwise take them all to an HTTP/1.1 upstream).
    headers::join_hosts(&mut parts.headers);
    if codec == Codec::Http1 {
        // An absolute-form target's userinfo (`http://u:p@a/x`) is not part of the host:
        // Envoy forwards `Host: a`.
        let host_only = parts
            .uri
            .authority()
            .and_then(|a| a.as_str().rsplit_once('@'))
            .and_then(|(_, h)| http::uri::Authority::try_from(h).ok());
        if let Some(host) = host_only {
            let mut uri = parts.uri.clone().into_parts();
            uri.authority = Some(host);
            if let Ok(u) = http::Uri::from_parts(uri) {
                parts.uri = u;
            }
        }
        headers::remove_nominated(&mut parts.headers);
        if let Some(info) = done.info.as_mut() {
            info.authority = authority(&parts).map(str::to_string);
        }
    } else {
        headers::join_cookies(&mut parts.headers);
    }
    // An HTTP/1.1 `Host:` with an empty value is a host (Envoy forwards it); none at all is not.
    let missing = match authority(&parts) {
        None => true,
        Some(a) => a.is_empty() && codec == Codec::Http2,
    };
    if missing {
        return local(done, LocalReply::MISSING_HOST, None);
    }
    // HTTP/2 forbids userinfo in `:authority` (RFC 9113 §8.3.1; Envoy's codec refuses the
    // stream); an HTTP/1.1 `Host` with one passes, as in Envoy.
    let userinfo = codec == Codec::Http2 && authority(&parts).is_some_and(|a| a.contains('@'));
    if userinfo || !authority(&parts).is_some_and(headers::authority_is_valid) {
        return local(done, LocalReply::INVALID_AUTHORITY, None);
    }

    // An HTTP/2 extended CONNECT (RFC 8441, with `allow_connect`) is the HTTP/2 form of an
    // upgrade: as Envoy's codec does, it becomes `GET` with `Upgrade: <protocol>` and
    // `Connection: upgrade`, and its 101 goes back as a 200.
    let extended_connect = codec == Codec::Http2
        && parts.method == http::Method::CONNECT
        && parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str() != "bytestream");
    if extended_connect {
        let protocol = parts.extensions.remove::<hyper::ext::Protocol>();
        match protocol.and_then(|p| HeaderValue::from_str(p.as_str()).ok()) {
            Some(p) => {
                parts.method = http::Method::GET;
                parts.headers.insert(header::UPGRADE, p);
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(info) = done.info.as_mut() {
                    info.method = Some(http::Method::GET);
                }
            }
            None => return local(done, LocalReply::INVALID_HEADER_FIELD, None),
        }
    } else if codec == Codec::Http2 && parts.method == http::Method::CONNECT {
        // `:protocol: bytestream` is a plain CONNECT (Envoy's codec drops the `:protocol`, and
        // the `:path` with it): its target is the authority alone.
        if parts.extensions.remove::<hyper::ext::Protocol>().is_some() {
            let mut uri = http::uri::Parts::default();
            uri.authority = parts.uri.authority().cloned();
            if let Ok(u) = http::Uri::from_parts(uri) {
                parts.uri = u;
            }
        }
    }

    // An upgrade (websocket…) goes through when `upgrade_configs` take its type; the router
    // decides, with the route. A CONNECT is the upgrade `connect`: only `connect_matcher`
    // routes match it (it has no path). An h2c upgrade offer is simply ignored, as Envoy does.
    let upgrade = if parts.method == http::Method::CONNECT {
        Some("connect".to_string())
    } else if codec == Codec::Http1 || extended_connect {
        upgrade_type(&parts.headers, &cfg.ignore_http11_upgrade)
    } else {
        None
    };
    let on_upgrade = upgrade
        .as_ref()
        .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());

    // Only relative paths are routed (`OPTIONS *` and, without allow_absolute_url, an
    // absolute-form target: 404).
    non_relative |= parts.method != Method::CONNECT
        && parts
            .uri
            .path_and_query()
            .is_some_and(|p| !p.as_str().starts_with('/'));
    if non_relative {
        stats.downstream_rq_non_relative_path.inc();
        return local(done, LocalReply::ABSOLUTE_PATH_REJECTED, None);
    }
    // early_header_mutation_extensions: literal values, made before the rest of the
    // connection manager reads the headers.
    if !cfg.early_mutations.is_empty() {
        crate::http::filters::header_mutation::apply(
            &cfg.early_mutations,
            &mut parts.headers,
            &|_, _| String::new(),
        );
    }
    // Path normalization, then the host's port, as Envoy's connection manager does them before
    // routing.
    if let Some(pq) = parts.uri.path_and_query() {
        use crate::http::conn_manager_utility::{normalize_path, PathAction};
        match normalize_path(&cfg, pq.as_str()) {
            None => {}
            Some(PathAction::Reject) => {
                stats.downstream_rq_failed_path_normalization.inc();
                return local(done, LocalReply::PATH_NORMALIZATION_FAILED, None);
            }
            Some(PathAction::Redirect(path)) => {
                stats.downstream_rq_redirected_with_normalized_path.inc();
                let location = HeaderValue::from_str(&path).ok();
                let reply = match location {
                    Some(l) => LocalReply {
                        details: LocalReply::PATH_NORMALIZATION_FAILED.details,
                        ..LocalReply::redirect(http::StatusCode::TEMPORARY_REDIRECT, l)
                    },
                    None => LocalReply::PATH_NORMALIZATION_FAILED,
                };
                return local(done, reply, None);
            }
            Some(PathAction::Continue(path)) if path != pq.as_str() => {
                let mut uri = parts.uri.clone().into_parts();
                uri.path_and_query = http::uri::PathAndQuery::try_from(path.as_str()).ok();
                match http::Uri::from_parts(uri) {
                    Ok(u) if u.path_and_query().is_some() => parts.uri = u,
                    _ => {
                        stats.downstream_rq_failed_path_normalization.inc();
                        return local(done, LocalReply::PATH_NORMALIZATION_FAILED, None);
                    }
                }
                if let Some(info) = done.info.as_mut() {
                    info.path = Some(path);
                }
            }
            Some(PathAction::Continue(_)) => {}
        }
    }
    // strip_trailing_host_dot first (`host.` and `host.:port` lose the dot), then the port.
    if cfg.strip_trailing_host_dot {
        if let Some(host) =
            authority(&parts).and_then(crate::http::conn_manager_utility::strip_trailing_host_dot)
        {
            set_authority(&mut parts, &host);
        }
    }
    if let Some(host) = authority(&parts).and_then(|h| {
        crate::http::conn_manager_utility::strip_port(cfg.strip_port, h, conn.local.port())
    }) {
        set_authority(&mut parts, &host);
    }

    // Envoy's default request header handling; an upgrade keeps its `Connection` and `Upgrade`.
    let kept = upgrade.as_ref().map(|_| upgrade_headers(&parts.headers));
    headers::remove_hop_by_hop(&mut parts.headers);
    if let Some(kept) = kept {
        restore(&mut parts.headers, kept);
    }
    // The x-envoy-* control headers are read (for an internal request) and then removed; one
    // look at the names spares the lookups on requests that carry none.
    let envoy_headers = parts
        .headers
        .keys()
        .any(|k| k.as_str().starts_with("x-envoy-"));
    let force_trace = envoy_headers && parts.headers.contains_key("x-envoy-force-trace");
    let (header_timeout, retry_headers) = if envoy_headers {
        let timeout = parts
            .headers
            .get("x-envoy-upstream-rq-timeout-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_millis);
        let retry = crate::router::retry::RetryHeaders::read(&parts.headers);
        headers::strip_envoy_control_headers(&mut parts.headers);
        (timeout, retry)
    } else {
        (None, None)
    };
    let (client, client_from_headers) = match crate::http::conn_manager_utility::forwarding_headers(
        &cfg,
        &mut parts.headers,
        conn.remote,
        conn.local,
        conn.secure,
    ) {
        Ok(found) => found,
        Err(status) => {
            stats.downstream_rq_rejected_via_ip_detection.inc();
            let reply = LocalReply {
                status,
                ..LocalReply::IP_DETECTION_FAILED
            };
            return local(done, reply, None);
        }
    };
    crate::http::conn_manager_utility::forwarded_client_cert(
        &cfg.forward_client_cert,
        &mut parts.headers,
        conn.connection.tls.as_ref(),
    );
    // Envoy's router reads x-envoy-upstream-rq-timeout-ms only on internal requests (the
    // connection manager removes it from all others).
    // The same for the retry headers.
    let internal = (header_timeout.is_some() || retry_headers.is_some())
        && parts
            .headers
            .get("x-envoy-internal")
            .is_some_and(|v| v == "true");
    let header_timeout = header_timeout.filter(|_| internal);
    let retry_headers = retry_headers.filter(|_| internal);
    // `:scheme` as Envoy's header map holds it: the client's over HTTP/2, else the connection's;
    // `scheme_to_overwrite` replaces it, and x-forwarded-proto with it.
    let scheme = match (cfg.scheme_to_overwrite, parts.uri.scheme_str()) {
        (Some(s), _) => s,
        (None, Some(s)) if s.eq_ignore_ascii_case("https") => "https",
        (None, Some(_)) => "http",
        (None, None) if conn.secure => "https",
        (None, None) => "http",
    };
    if let Some(s) = cfg.scheme_to_overwrite {
        parts.headers.insert(
            names::X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(s),
        );
    }
    if !parts.headers.contains_key(&names::X_FORWARDED_PROTO) {
        parts.headers.insert(
            names::X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if conn.secure { "https" } else { "http" }),
        );
    }
    if cfg.add_user_agent {
        crate::http::conn_manager_utility::add_user_agent(&mut parts.headers);
    }
    if cfg.generate_request_id && !parts.headers.contains_key(&names::X_REQUEST_ID) {
        parts
            .headers
            .insert(names::X_REQUEST_ID.clone(), headers::new_request_id());
    }
    if let Some(via) = &cfg.via {
        headers::append_via(&mut parts.headers, via);
    }
    // An address from the request's headers is the stream's downstream remote address from
    // now on (without a port), as Envoy's connection manager sets it.
    let downstream_remote = if client_from_headers {
        SocketAddr::new(client, 0)
    } else {
        conn.remote
    };
    if let Some(info) = done.info.as_mut() {
        info.downstream_remote = downstream_remote;
        record_request(info, &parts, scheme);
    }

    // HTTP/1 request trailers are dropped, as Envoy's codec drops them without
    // `enable_trailers`.
    let trailers = if parts.version == http::Version::HTTP_2 || conn.hcm.config.enable_trailers {
        Trailers::Keep
    } else {
        Trailers::Drop
    };
    let mut body = ProxyBody::Incoming(body, Some(request.clone()), trailers);
    // The route is resolved once, before the filters (which see its per-route configuration);
    // the router forwards by it.
    let mut selection = router::select(
        &conn.worker,
        (&cfg, &conn.hcm.routes),
        &mut parts,
        scheme,
        (
            conn.connection.peer_certificate,
            Some(&conn.connection),
            (conn.remote, conn.local, client),
        ),
    );
    let mut traced = false;
    if let Some(t) = &cfg.tracing {
        // x-envoy-force-trace counts only on an internal request, as in Envoy.
        let internal = parts
            .headers
            .get("x-envoy-internal")
            .is_some_and(|v| v == "true");
        use crate::http::conn_manager_utility::TraceReason;
        // A route's `tracing` samples over the connection manager's, as in Envoy (which
        // decides once the route is known).
        let route_tracing = selection.route().and_then(|r| r.tracing.as_deref());
        let reason = crate::http::conn_manager_utility::trace_reason(
            t,
            route_tracing,
            &mut parts.headers,
            force_trace && internal,
        );
        stats.tracing[match reason {
            TraceReason::Sampled => 0,
            TraceReason::Client => 1,
            TraceReason::Forced => 2,
            TraceReason::NotTraceable => 3,
        }]
        .inc();
        traced = reason != TraceReason::NotTraceable;
    }
    if let (Some(info), Some(_)) = (done.info.as_mut(), &cfg.tracing) {
        // The request id as the trace decision left it, and the decision it carries
        // (`traceable_filter`: forced by the service).
        if let Some(id) = parts.headers.get(&names::X_REQUEST_ID) {
            info.trace_forced = id.len() == 36 && id.as_bytes()[14] == b'a';
            info.request_headers
                .insert(names::X_REQUEST_ID.clone(), id.clone());
        }
    }
    let request_id = cfg
        .always_set_request_id_in_response
        .then(|| parts.headers.get(&names::X_REQUEST_ID).cloned())
        .flatten();
    // The stream's span, named by the route's decorator; the router writes its context into
    // the upstream request.
    if let Some(t) = &cfg.tracer {
        let host = authority(&parts).unwrap_or("").to_string();
        let decorator = selection
            .route()
            .and_then(|r| r.decorator.as_ref())
            .map(|(op, propagate)| (op.as_str(), *propagate));
        let route_tracing = selection.route().and_then(|r| r.tracing.as_deref());
        let span = crate::trace::Span::start(
            t,
            &mut parts.headers,
            traced,
            &host,
            (decorator, route_tracing),
        );
        if let Some(c) = span.context() {
            parts.extensions.insert(c);
        }
        if t.spawn_upstream_span || cfg.router.start_child_span {
            if let Some(s) = span.spawn() {
                parts.extensions.insert(s);
            }
        }
        done.span = Some(Box::new(span));
    }
    // Header values with operators render from the stream's record: kept for them too, and
    // for filters that render formats.
    if done.info.is_none() && (selection.formats_headers() || conn.hcm.filters_read_record) {
        let mut info = Box::new(StreamInfo::new(downstream_remote, conn.local));
        record_start(&mut info, &conn, &parts, version);
        record_request(&mut info, &parts, scheme);
        done.info = Some(info);
    }
    // flush_access_log_on_new_request: a line once the route is known, before the filters.
    if cfg.log_flush.on_start {
        if let Some(info) = done.info.as_mut() {
            selection.record(info);
            if let Some(route) = selection.route() {
                if let crate::router::Action::Forward(fw) = &route.action {
                    if let crate::router::Target::Cluster(c) = &fw.target {
                        info.upstream_cluster = Some(c.as_str().into());
                    }
                }
            }
            conn.worker
                .access_log
                .log_early(&cfg.access_logs, info, "DownstreamStart");
        }
    }
    // An upgrade with its own filters (`upgrade_configs[].filters`) runs them instead of the
    // connection manager's, when its route lets it through (Envoy's upgrade filter chain).
    let factories = upgrade
        .as_deref()
        .and_then(|kind| {
            conn.hcm
                .upgrade_filters
                .iter()
                .find(|(t, _)| t == kind)
                .filter(|_| {
                    selection
                        .route()
                        .is_some_and(|r| r.allows_upgrade(kind, &cfg.upgrades))
                })
        })
        .map_or(&conn.hcm.filters, |(_, f)| f);
    // The stream's dynamic metadata, when a filter may write some.
    let metadata = conn
        .hcm
        .writes_metadata
        .then(crate::stream_info::DynamicMetadata::default);
    // The connection's filter state, for the router's hash policies.
    if !conn.connection.filter_state.is_empty() {
        parts.extensions.insert(conn.connection.clone());
    }
    if let Some(m) = &metadata {
        // The router reads its `envoy.lb` values (subset criteria).
        parts.extensions.insert(m.clone());
        if let Some(info) = done.info.as_mut() {
            info.dynamic_metadata = Some(m.clone());
        }
    }
    // The decoder filters, then the router as the terminal filter.
    let chain = filter::build(
        factories,
        &filter::StreamContext {
            worker: &conn.worker,
            selection: &selection,
            remote: client,
            connection: &conn.filter_state,
            downstream: filter::Downstream {
                local: conn.local,
                peer: conn.remote,
                connection: &conn.connection,
            },
            metadata: metadata.as_ref(),
            info: done.info.as_deref(),
        },
    );
    if let Some(chain) = &chain {
        // The stream's timers run while filters wait (for a service, or for the body).
        let decoded = chain.decode_headers(&mut parts, &mut body);
        let reply = match &timers {
            None => decoded.await,
            Some(t) => tokio::select! {
                biased;
                r = decoded => r,
                e = crate::gate::gated(t.fired()) => {
                    stats.expired(e);
                    let mut reply = e.reply(t.request_done());
                    reply.close = !t.request_done() && codec == Codec::Http1;
                    Some(reply)
                }
            },
        };
        // A filter cleared the route cache: the route is picked again, with what the filters
        // changed and the metadata they wrote.
        if parts
            .extensions
            .remove::<filter::ClearRouteCache>()
            .is_some()
        {
            selection.reselect(&conn.worker, &mut parts, scheme, metadata.as_ref());
        }
        if let Some(info) = done.info.as_mut() {
            info.health_check = parts
                .extensions
                .get::<crate::http::filters::health_check::HealthCheckRequest>()
                .is_some();
        }
        if let Some(reply) = reply {
            if reply.details == "request_payload_too_large" {
                conn.hcm.stats.downstream_rq_too_large.inc();
            }
            return routed_local(done, reply, request_id, &selection, Some(chain)).await;
        }
    }
    let body = filter::wrap(chain.as_ref(), body, Direction::Decode);
    let start = Instant::now();
    // Boxed: the router's state is most of a stream's, and the connection's task would copy it
    // (and hold it between requests) if it sat inline here.
    let routed = crate::gate::boxed(|| {
        router::route(
            &conn.worker,
            &cfg,
            &selection,
            Box::new(parts),
            body,
            &request,
            (conn.remote, conn.local, client),
            conn.source,
            (scheme, upgrade.as_deref(), header_timeout),
            retry_headers.as_ref(),
            (conn.buffer_limit, timers.as_ref()),
            done.info.as_deref_mut(),
        )
    });
    // The connection manager's stream timers run while the router waits for the response
    // headers; after that, the response body watches them.
    let routed = match &timers {
        None => routed.await,
        Some(t) => tokio::select! {
            biased;
            r = routed => r,
            e = crate::gate::gated(t.fired()) => {
                stats.expired(e);
                let mut reply = e.reply(t.request_done());
                // The rest of an unfinished HTTP/1.1 request cannot be told from the next one:
                // the connection ends with the reply, as in Envoy.
                reply.close = !t.request_done() && codec == Codec::Http1;
                Err(reply)
            }
        },
    };
    match routed {
        Ok((mut resp, upstream, deadline)) => {
            // Envoy writes the standard reason phrase, not the upstream's.
            resp.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
            let switching = router::switches(upgrade.as_deref(), resp.status());
            let upstream_io = if !switching {
                None
            } else if let Some(t) = resp.extensions_mut().remove::<router::TcpTunnel>() {
                t.take().map(UpstreamTunnel::Tcp)
            } else if let Some(t) = resp.extensions_mut().remove::<router::H2Tunnel>() {
                t.take().map(UpstreamTunnel::H2)
            } else {
                resp.extensions_mut()
                    .remove::<hyper::upgrade::OnUpgrade>()
                    .map(UpstreamTunnel::Upgrade)
            };
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
            let (mut head, mut body) = resp.into_parts();
            // A 204 has no body to measure: Envoy's codec drops its content-length.
            if head.status == http::StatusCode::NO_CONTENT {
                head.headers.remove(header::CONTENT_LENGTH);
            }
            if upgrade.is_some() && head.status.is_success() {
                // A 2xx to an upgrade is taken as its start, like a CONNECT's (Envoy's codec):
                // the client gets the head alone, with no body, and the connection closes.
                body = ProxyBody::full(bytes::Bytes::new());
                if switching {
                    // A CONNECT's 2xx starts its tunnel: no framing headers.
                    head.headers.remove(header::CONTENT_LENGTH);
                    head.headers.remove(header::TRANSFER_ENCODING);
                } else {
                    head.headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                }
            }
            if let Some(chain) = &chain {
                if let Some(reply) = chain.encode_headers(&mut head, body.is_end_stream()).await {
                    return local(done, reply, request_id);
                }
            }
            let body = filter::wrap(chain.as_ref(), body, Direction::Encode);
            // An extended CONNECT's 101 loses its `Upgrade` and `Connection` (HTTP/2 has neither).
            let kept = (switching && !extended_connect).then(|| upgrade_headers(&head.headers));
            headers::remove_hop_by_hop(&mut head.headers);
            if let Some(kept) = kept {
                restore(&mut head.headers, kept);
            } else if upgrade.is_some() && codec == Codec::Http1 {
                // The upstream declined the upgrade: what the client sends next was meant for
                // the upgraded protocol, so the connection ends with this response (Envoy).
                head.headers
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            // Envoy times the upstream from the end of the request: an upgrade's request has
            // not ended (its body is the tunnel), so its response has no service time.
            if !cfg.router.suppress_envoy_headers && upgrade.is_none() {
                let ms = start.elapsed().as_millis() as u64;
                head.headers.insert(
                    names::X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                    headers::number(ms),
                );
            }
            finish_response(
                &conn,
                &cfg,
                &mut head,
                request_id,
                done.span.as_deref().and_then(|s| s.response_operation()),
            );
            let status = head.status.as_u16();
            stats.response_class(status);
            if let Some(info) = done.info.as_mut() {
                info.response_started = Some(std::time::Instant::now());
                info.response_code = Some(status);
                info.details = "via_upstream";
                info.response_headers = head.headers.clone();
                // flush_log_on_tunnel_successfully_established: a line once the tunnel is up.
                if switching && cfg.log_flush.on_tunnel {
                    conn.worker.access_log.log_early(
                        &cfg.access_logs,
                        info,
                        "DownstreamTunnelSuccessfullyEstablished",
                    );
                }
            }
            if codec == Codec::Http2 && on_upgrade.is_some() && upstream_io.is_some() {
                // The stream carries the tunnel from its 2xx on (hyper hands it over). An
                // extended CONNECT's 101 is sent as a 200; the access log keeps the 101, as
                // Envoy's does.
                if extended_connect {
                    head.status = http::StatusCode::OK;
                }
                if head
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .is_some_and(|v| v == "0")
                {
                    head.headers.remove(header::CONTENT_LENGTH);
                }
                if let (Some(down), Some(up)) = (on_upgrade, upstream_io) {
                    let stream = done.detach();
                    tokio::task::spawn_local(stream_tunnel(stream, down, up));
                }
                return Response::from_parts(head, Tracked::new(body, done, None));
            }
            if let (Some(down), Some(up)) = (on_upgrade, upstream_io) {
                // From the 101 on, the connection carries the upgraded protocol both ways until
                // either side closes; the stream ends with it.
                conn.switched
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let stream = done.detach();
                *conn.tunnel.borrow_mut() = Some(Box::pin(tunnel(stream, down, up)));
                return Response::from_parts(head, Tracked::new(body, done, None));
            }
            // The response body watches the timers only if one can run out.
            let timers = timers.filter(|t| t.active());
            Response::from_parts(head, Tracked::new(body, done, deadline).with_timers(timers))
        }
        Err(mut reply) => {
            // Whatever follows an upgrade request was meant for the upgraded protocol: a
            // connection whose upgrade did not happen ends with its reply (Envoy).
            reply.close |= upgrade.is_some();
            if reply.details == LocalReply::UPGRADE_FORBIDDEN.details {
                stats.downstream_rq_ws_on_non_ws_route.inc();
            }
            if reply.flag == Some(ResponseFlag::NoRouteFound) {
                stats.no_route.inc();
            }
            if reply.flag == Some(ResponseFlag::NoClusterFound) {
                stats.no_cluster.inc();
            }
            routed_local(done, reply, request_id, &selection, chain.as_ref()).await
        }
    }
}

/// A local reply to a request that selected its route: the route's response header changes
/// apply to it (unless it brings its own, as direct responses and redirects do), and it passes
/// the stream's encoder filters, as Envoy's local replies do.
async fn routed_local(
    done: Done,
    mut reply: LocalReply,
    request_id: Option<HeaderValue>,
    selection: &router::Selection,
    chain: Option<&filter::FilterChain>,
) -> Resp {
    let mut done = done;
    // The stream's route is known to a filter's reply's log line, as in Envoy.
    if let Some(info) = done.info.as_mut() {
        selection.record(info);
    }
    if !selection.redirects_to_https() {
        let mut all = selection.header_mutations(true);
        if !all.is_empty() {
            all.append(&mut reply.mutations);
            reply.mutations = all;
        }
    }
    let Some(chain) = chain else {
        return local(done, reply, request_id);
    };
    let (mut head, body) = local_parts(&mut done, &reply, request_id);
    // A reply from an encoder hook goes out as it is: the chain already had its say.
    if let Some(reply) = chain.encode_headers(&mut head, body.is_end_stream()).await {
        return local(done, reply, None);
    }
    if let Some(info) = done.info.as_mut() {
        info.response_headers = head.headers.clone();
    }
    let body = filter::wrap(Some(chain), body, Direction::Encode);
    Response::from_parts(head, Tracked::new(body, done, None))
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

/// The type (lower case) of an HTTP/1.1 upgrade request other than h2c and those `ignore`
/// matches (`ignore_http_11_upgrade`, on the value as sent): `Connection: upgrade` with an
/// `Upgrade` header.
fn upgrade_type(
    h: &http::HeaderMap,
    ignore: &[crate::config::model::StringMatch],
) -> Option<String> {
    let upgrade = h.get(header::UPGRADE).and_then(|v| v.to_str().ok())?;
    let connection_says_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = upgrade.trim();
    (connection_says_upgrade
        && !upgrade.eq_ignore_ascii_case("h2c")
        && !ignore.iter().any(|m| m.matches(upgrade)))
    .then(|| upgrade.to_ascii_lowercase())
}

type KeptHeaders = Vec<(header::HeaderName, HeaderValue)>;

/// The `Connection` and `Upgrade` headers of an upgrade, which pass the proxy (Envoy forwards
/// them for upgrades, and only for upgrades).
fn upgrade_headers(h: &http::HeaderMap) -> KeptHeaders {
    [header::CONNECTION, header::UPGRADE]
        .into_iter()
        .flat_map(|n| h.get_all(&n).iter().map(move |v| (n.clone(), v.clone())))
        .collect()
}

fn restore(h: &mut http::HeaderMap, kept: KeptHeaders) {
    for (n, v) in kept {
        h.append(n, v);
    }
}

/// The upstream side of a tunnel: the upstream's upgraded connection, or the TCP connection of
/// a CONNECT terminated here.
enum UpstreamTunnel {
    Upgrade(hyper::upgrade::OnUpgrade),
    Tcp(crate::upstream::pool::UpstreamStream),
    /// A CONNECT's stream on an HTTP/2 connection.
    H2(crate::http::h2_tunnel::H2Io),
}

/// Either side's bytes, once the hand-over is done.
trait TunnelIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> TunnelIo for T {}

impl UpstreamTunnel {
    async fn open(self) -> Result<Box<dyn TunnelIo>, hyper::Error> {
        Ok(match self {
            UpstreamTunnel::Upgrade(u) => Box::new(TokioIo::new(u.await?)),
            UpstreamTunnel::Tcp(s) => Box::new(s),
            UpstreamTunnel::H2(s) => Box::new(s),
        })
    }
}

/// Both sides of a tunnel once hyper hands them over; if either fails, the stream ends as an
/// upstream reset.
async fn hand_over(
    stream: Done,
    down: hyper::upgrade::OnUpgrade,
    up: UpstreamTunnel,
) -> Option<(Done, hyper::upgrade::Upgraded, Box<dyn TunnelIo>)> {
    match (down.await, up.open().await) {
        (Ok(d), Ok(u)) => Some((stream, d, u)),
        (d, u) => {
            tracing::debug!(down = ?d.err(), up = ?u.err(), "upgrade hand-over failed");
            stream.end(EndReason::UpstreamReset, 0);
            None
        }
    }
}

/// Copies bytes both ways between the client and the upstream of an upgraded stream until both
/// sides have closed, then ends the stream (stats, access log) with what it carried.
async fn tunnel(stream: Done, down: hyper::upgrade::OnUpgrade, up: UpstreamTunnel) {
    let Some((mut stream, down, mut up)) = hand_over(stream, down, up).await else {
        return;
    };
    let mut down = TokioIo::new(down);
    match tokio::io::copy_bidirectional(&mut down, &mut up).await {
        Ok((from_client, to_client)) => {
            stream.tunnel_received = from_client;
            stream.end(EndReason::Complete, to_client);
        }
        Err(e) => {
            tracing::debug!(error = %e, "upgraded stream ended with an error");
            stream.end(EndReason::DownstreamReset, 0);
        }
    }
}

/// The tunnel of an HTTP/2 stream (CONNECT, extended CONNECT): bytes both ways until the
/// upstream closes, which ends the stream (the client's end is passed on and the upstream's
/// answer awaited), as Envoy resets a CONNECT stream once its upstream connection ends.
async fn stream_tunnel(stream: Done, down: hyper::upgrade::OnUpgrade, up: UpstreamTunnel) {
    let Some((mut stream, down, up)) = hand_over(stream, down, up).await else {
        return;
    };
    let (from_client, to_client) = (Counter::default(), Counter::default());
    let down = Counted::new(TokioIo::new(down), from_client.clone(), to_client.clone());
    let (mut down_rx, mut down_tx) = tokio::io::split(down);
    let (mut up_rx, mut up_tx) = tokio::io::split(up);
    let to_upstream = pump(
        &mut down_rx,
        &mut up_tx,
        EndReason::DownstreamReset,
        EndReason::UpstreamReset,
    );
    let to_downstream = pump(
        &mut up_rx,
        &mut down_tx,
        EndReason::UpstreamReset,
        EndReason::DownstreamReset,
    );
    tokio::pin!(to_upstream, to_downstream);
    let mut client_done = false;
    let reason = loop {
        tokio::select! {
            r = &mut to_downstream => break r.err().unwrap_or(EndReason::Complete),
            r = &mut to_upstream, if !client_done => {
                client_done = true;
                if let Err(reason) = r {
                    break reason;
                }
            }
        }
    };
    stream.tunnel_received = from_client.value();
    stream.end(reason, to_client.value());
}

/// Copies `rx` to `tx` until `rx` ends, then ends `tx`; a failure says which side failed.
async fn pump<R, W>(
    rx: &mut R,
    tx: &mut W,
    read_failed: EndReason,
    write_failed: EndReason,
) -> Result<(), EndReason>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    let r = loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(_) => break Err(read_failed),
        };
        if tx.write_all(&buf[..n]).await.is_err() {
            break Err(write_failed);
        }
    };
    let _ = tx.shutdown().await;
    r
}

/// `drain_timeout` plus a random part of `drain_timeout_jitter` (drawn per connection).
fn drain_time(t: &crate::config::model::HcmTimeouts) -> std::time::Duration {
    t.drain + t.drain_jitter.mul_f64(fastrand::f64())
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        _ => "HTTP/1.1",
    }
}

/// Replaces the request's authority (the URI's, and the Host header).
fn set_authority(parts: &mut http::request::Parts, host: &str) {
    if parts.uri.authority().is_some() {
        let mut uri = parts.uri.clone().into_parts();
        uri.authority = http::uri::Authority::try_from(host).ok();
        if let Ok(u) = http::Uri::from_parts(uri) {
            parts.uri = u;
        }
    }
    if parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(host) {
            parts.headers.insert(header::HOST, v);
        }
    }
}

/// Puts back the `Expect: 100-continue` values the guard hid from hyper.
fn unhide_continue(h: &mut http::HeaderMap) {
    if let http::header::Entry::Occupied(mut e) = h.entry(header::EXPECT) {
        for v in e.iter_mut() {
            if v.as_bytes()
                .eq_ignore_ascii_case(crate::http::framing::HIDDEN_CONTINUE.as_bytes())
            {
                let mut b = v.as_bytes().to_vec();
                b[0] = b'1';
                if let Ok(restored) = HeaderValue::from_bytes(&b) {
                    *v = restored;
                }
            }
        }
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

/// What a stream's record knows when its request head arrives.
fn record_start(
    info: &mut StreamInfo,
    conn: &Conn,
    parts: &http::request::Parts,
    version: Version,
) {
    info.connection = Some(conn.connection.clone());
    if conn.secure {
        info.scheme = "https";
    }
    info.protocol = Some(protocol_name(version));
    info.method = Some(parts.method.clone());
    info.path = parts.uri.path_and_query().map(|p| p.as_str().to_string());
    info.authority = authority(parts).map(str::to_string);
}

/// Access logs see the request as the connection manager forwards it (generated
/// x-request-id included), as in Envoy.
fn record_request(info: &mut StreamInfo, parts: &http::request::Parts, scheme: &'static str) {
    info.scheme = scheme;
    info.request_headers = parts.headers.clone();
    info.stream_id = parts
        .headers
        .get(&names::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    info.request_headers_bytes = request_headers_bytes(parts, info.scheme);
}

fn finish_response(
    conn: &Conn,
    cfg: &model::HttpConnectionManager,
    head: &mut http::response::Parts,
    request_id: Option<HeaderValue>,
    operation: Option<&str>,
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
    // An ingress span's decorator operation, for the caller's client span.
    if let Some(op) = operation.and_then(|o| HeaderValue::from_str(o).ok()) {
        head.headers
            .insert(crate::trace::DECORATOR_OPERATION.clone(), op);
    }
    // disable_http_keepalive: this response ends its connection (`connection: close`, or a
    // GOAWAY over HTTP/2).
    if conn.overload
        && !conn.closing.get()
        && crate::overload::act(ActionName::DisableHttpKeepalive)
    {
        conn.hcm
            .stats
            .downstream_cx_overload_disable_keepalive
            .inc();
        conn.closing.set(true);
        if conn.codec.get() == Some(Codec::Http2) {
            conn.finish.notify_one();
        } else {
            // Envoy's drain sequence: the connection closes drain_timeout after the response
            // (and its delayed close), unless the client closes first.
            conn.close_state.drain_for(drain_time(&cfg.timeouts));
        }
    }
    if conn.codec.get() != Some(Codec::Http2) {
        // The client's connection speaks HTTP/1.1 whatever the upstream spoke (an `HTTP/1.0`
        // upstream reply goes out as `HTTP/1.1`, chunked when its length is unknown, as in
        // Envoy); hyper answers an HTTP/1.0 client in HTTP/1.0 by itself.
        head.version = http::Version::HTTP_11;
        if conn.closing.get() {
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        } else if conn.drain.drain_close() {
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            conn.hcm.stats.downstream_cx_drain_close.inc();
        }
    }
}

/// Envoy's local reply to a gRPC request: `200`, `application/grpc`, the reply's status as a
/// `grpc-status` and its body as a percent-encoded `grpc-message` (a JSON body without its
/// final newline), nothing else (a trailers-only response).
fn grpc_reply(
    reply: &LocalReply,
    head: &mut http::response::Parts,
    body: &[u8],
    json: bool,
    head_request: bool,
) {
    let code = if let Some(code) = reply.grpc_status {
        code
    } else if reply.details == crate::http::timeouts::Expiry::MaxDuration.details() {
        4 // DEADLINE_EXCEEDED, as Envoy's stream duration timer says.
    } else {
        crate::http::local_reply::grpc_status_of_http(head.status.as_u16())
    };
    head.status = http::StatusCode::OK;
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    head.headers.remove(header::CONTENT_LENGTH);
    if !head.headers.contains_key("grpc-status") {
        head.headers
            .insert("grpc-status", crate::http::headers::number(code.into()));
    }
    let body = match body {
        [rest @ .., b'\n'] if json => rest,
        b => b,
    };
    if !body.is_empty() && !head_request {
        let mut msg = String::new();
        for &b in body {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                msg.push(b as char);
            } else {
                msg.push_str(&format!("%{b:02X}"));
            }
        }
        if let Ok(v) = HeaderValue::from_str(&msg) {
            head.headers.insert("grpc-message", v);
        }
    }
}

fn local(mut done: Done, reply: LocalReply, request_id: Option<HeaderValue>) -> Resp {
    let (head, body) = local_parts(&mut done, &reply, request_id);
    Response::from_parts(head, Tracked::new(body, done, None))
}

/// The head and body of a local reply, counted and recorded for the access log.
fn local_parts(
    done: &mut Done,
    reply: &LocalReply,
    request_id: Option<HeaderValue>,
) -> (http::response::Parts, ProxyBody) {
    let conn = done.conn.clone();
    let started = done.started;
    // The flag and details are the stream's before a local_reply_config's mappers look.
    if let Some(info) = done.info.as_mut() {
        if let Some(f) = reply.flag {
            info.flags.set(f);
        }
        info.details = reply.details;
    }
    let (mut head, bytes, json) = match (&conn.hcm.config.local_reply, done.info.as_mut()) {
        (Some(cfg), Some(info)) => {
            let (head, body, rewrite) = reply.rewrite(cfg, info, started);
            (head, body, rewrite.content_type == "application/json")
        }
        _ => {
            let head = reply.head(done.info.as_deref());
            let (head, body) = reply.finish(head, reply.body.clone(), None);
            (head, body, false)
        }
    };
    let empty = bytes.is_empty();
    // A HEAD gets the head of the reply alone, its content-length kept.
    let mut body = ProxyBody::full(if done.head_request {
        bytes::Bytes::new()
    } else {
        bytes.clone()
    });
    if done.grpc {
        grpc_reply(reply, &mut head, &bytes, json, done.head_request);
        body = ProxyBody::full(bytes::Bytes::new());
    }
    // Over HTTP/2 an empty reply has no content-length (Envoy adds one only for a body; its
    // HTTP/1.1 codec writes `content-length: 0` itself).
    if empty && conn.codec.get() == Some(Codec::Http2) {
        head.headers.remove(header::CONTENT_LENGTH);
    }
    finish_response(
        &conn,
        &conn.hcm.config,
        &mut head,
        request_id,
        done.span.as_deref().and_then(|s| s.response_operation()),
    );
    conn.hcm.stats.response_class(head.status.as_u16());
    if let Some(info) = done.info.as_mut() {
        info.response_code = Some(head.status.as_u16());
        info.response_headers = head.headers.clone();
    }
    (head, body)
}
