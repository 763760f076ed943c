//! `envoy.filters.network.http_connection_manager`: one downstream connection, its codec
//! (HTTP/1.1, or HTTP/2 with prior knowledge), and the streams on it.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use crate::config::model::{self, CodecType, ServerHeader};
use crate::http::body::{ProxyBody, StreamEnd, Tracked};
use http_body::Body as _;
use crate::http::filter::{self, Direction};
use crate::http::filters::router::{self, Upstream};
use crate::http::headers::{self, names};
use crate::http::local_reply::LocalReply;
use crate::stats::{Counter, Gauge, Shard};
use crate::stream_info::StreamInfo;
use crate::worker::{LocalExec, Worker};

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
    /// `downstream_cx_protocol_error`.
    pub downstream_cx_protocol_error: Counter,
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
    /// `no_route`.
    pub no_route: Counter,
    /// `no_cluster`.
    pub no_cluster: Counter,
    /// `rq_total`.
    pub rq_total: Counter,
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
        let listener_classes =
            [1, 2, 3, 4, 5].map(|k| shard.counter(&format!("{listener_prefix}downstream_rq_{k}xx")));
        HcmStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http1_active: g("downstream_cx_http1_active"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_http2_active: g("downstream_cx_http2_active"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_drain_close: c("downstream_cx_drain_close"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_rq_rx_reset: c("downstream_rq_rx_reset"),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_total: c("rq_total"),
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

/// One HCM as configured on one worker.
#[derive(Debug)]
pub struct HttpConnectionManager {
    /// The configuration.
    pub config: Arc<model::HttpConnectionManager>,
    /// This worker's stats for it.
    pub stats: HcmStats,
}

/// The downstream connection a stream belongs to.
struct Conn {
    hcm: Rc<HttpConnectionManager>,
    worker: Rc<Worker>,
    remote: SocketAddr,
    local: SocketAddr,
    /// The codec this connection turned out to speak: 0 not yet known, 1 HTTP/1.x, 2 HTTP/2.
    codec: Cell<u8>,
}

/// Serves one downstream connection until it closes or drains.
pub async fn serve(
    stream: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    hcm: Rc<HttpConnectionManager>,
    worker: Rc<Worker>,
    buffer_limit: usize,
) {
    let stats = &hcm.stats;
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    let conn = Rc::new(Conn { hcm: hcm.clone(), worker: worker.clone(), remote, local, codec: Cell::new(0) });
    let svc_conn = conn.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let conn = svc_conn.clone();
        async move { Ok::<_, Infallible>(handle(conn, req).await) }
    });
    // per_connection_buffer_limit_bytes bounds what one connection or stream may hold: the
    // HTTP/1.1 read buffer and the HTTP/2 stream window are sized from it, so a slow upstream
    // stops the client instead of growing memory here.
    let read_buf = buffer_limit.clamp(8192, 1024 * 1024);
    let (stream_window, conn_window) = model::Http2Options::default().windows(buffer_limit);
    let mut builder = auto::Builder::new(LocalExec);
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).keep_alive(true).max_buf_size(read_buf);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(2_147_483_647)
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(conn_window);
    let builder = match hcm.config.codec {
        CodecType::Auto => builder,
        CodecType::Http1 => builder.http1_only(),
        CodecType::Http2 => builder.http2_only(),
    };
    let io = TokioIo::new(stream);
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let mut drain = worker.drain_signal();
    let result = tokio::select! {
        r = served.as_mut() => r,
        _ = drain.wait() => {
            stats.downstream_cx_drain_close.inc();
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %remote, "downstream connection ended with an error");
        if is_protocol_error(&*e) {
            stats.downstream_cx_protocol_error.inc();
        }
    }
    match conn.codec.get() {
        1 => stats.downstream_cx_http1_active.dec(),
        2 => stats.downstream_cx_http2_active.dec(),
        _ => {}
    }
    stats.downstream_cx_active.dec();
    stats.downstream_cx_destroy.inc();
}

fn is_protocol_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return h.is_parse() || h.is_parse_too_large() || h.is_parse_status();
        }
        if err.downcast_ref::<h2::Error>().is_some() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// What happens when a response body ends: stats, the access log, the upstream connection.
pub struct Done {
    conn: Rc<Conn>,
    info: Option<Box<StreamInfo>>,
    /// Request body bytes read so far (counted only when access logs want them).
    received: Option<Rc<Cell<u64>>>,
    upstream: Option<Upstream>,
}

impl Unpin for Done {}

impl StreamEnd for Done {
    fn end(mut self, complete: bool, bytes: u64) {
        let stats = &self.conn.hcm.stats;
        stats.downstream_rq_active.dec();
        stats.downstream_rq_completed.inc();
        stats.listener_completed.inc();
        if !complete {
            stats.downstream_rq_rx_reset.inc();
        }
        if let Some(up) = self.upstream.take() {
            up.finish(complete);
        }
        if let Some(mut info) = self.info.take() {
            info.bytes_sent = bytes;
            info.bytes_received = self.received.as_ref().map_or(0, |c| c.get());
            info.finish();
            self.conn.worker.access_log.log(&self.conn.hcm.config.access_logs, &info);
        }
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
    if version == Version::HTTP_2 {
        stats.downstream_rq_http2_total.inc();
        if conn.codec.replace(2) == 0 {
            stats.downstream_cx_http2_total.inc();
            stats.downstream_cx_http2_active.inc();
        }
    } else {
        stats.downstream_rq_http1_total.inc();
        if conn.codec.replace(1) == 0 {
            stats.downstream_cx_http1_total.inc();
            stats.downstream_cx_http1_active.inc();
        }
    }

    let logging = !cfg.access_logs.is_empty();
    let mut info = logging.then(|| Box::new(StreamInfo::new(conn.remote, conn.local)));
    let (mut parts, body) = req.into_parts();
    if let Some(info) = info.as_mut() {
        info.protocol = Some(protocol_name(version));
        info.method = Some(parts.method.clone());
        info.path = parts.uri.path_and_query().map(|p| p.as_str().to_string());
        info.authority = authority(&parts).map(str::to_string);
    }

    if version == Version::HTTP_10 || version == Version::HTTP_09 {
        return local(&conn, info, LocalReply::UPGRADE_REQUIRED, None, None);
    }
    if version == Version::HTTP_11 {
        if parts.uri.authority().is_none() && !parts.headers.contains_key(header::HOST) {
            return local(&conn, info, LocalReply::MISSING_HOST, None, None);
        }
        // Both framings at once is how requests are smuggled past proxies; Envoy refuses it.
        if parts.headers.contains_key(header::TRANSFER_ENCODING) && parts.headers.contains_key(header::CONTENT_LENGTH) {
            return local(&conn, info, LocalReply::BAD_REQUEST, None, None);
        }
    }

    // Envoy's default request header handling.
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::strip_envoy_control_headers(&mut parts.headers);
    parts.headers.remove(header::EXPECT);
    if !parts.headers.contains_key(&names::X_FORWARDED_PROTO) {
        parts.headers.insert(names::X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if cfg.generate_request_id && !parts.headers.contains_key(&names::X_REQUEST_ID) {
        parts.headers.insert(names::X_REQUEST_ID.clone(), headers::new_request_id());
    }
    if let Some(via) = &cfg.via {
        headers::append_via(&mut parts.headers, via);
    }
    if let Some(info) = info.as_mut() {
        // Access logs see the request as the connection manager forwards it (generated
        // x-request-id included), as in Envoy.
        info.request_headers = parts.headers.clone();
    }
    let request_id = cfg
        .always_set_request_id_in_response
        .then(|| parts.headers.get(&names::X_REQUEST_ID).cloned())
        .flatten();

    let received = logging.then(|| Rc::new(Cell::new(0)));
    let body = ProxyBody::Incoming(body, received.clone());
    // The decoder filters, then the router as the terminal filter.
    let chain = filter::build(&cfg.http_filters);
    if !chain.is_empty() {
        if let Some(reply) = chain.decode_headers(&mut parts, body.is_end_stream()).await {
            return local(&conn, info, reply, request_id, received);
        }
    }
    let body = filter::wrap(&chain, body, Direction::Decode);
    let start = Instant::now();
    match router::route(&conn.worker, &cfg, parts, body, info.as_deref_mut()).await {
        Ok((resp, upstream)) => {
            let (mut head, body) = resp.into_parts();
            if !chain.is_empty() {
                if let Some(reply) = chain.encode_headers(&mut head, body.is_end_stream()).await {
                    upstream.finish(false);
                    return local(&conn, info, reply, request_id, received);
                }
            }
            let body = filter::wrap(&chain, body, Direction::Encode);
            headers::remove_hop_by_hop(&mut head.headers);
            if !cfg.router.suppress_envoy_headers {
                let ms = start.elapsed().as_millis() as u64;
                head.headers.insert(names::X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), headers::number(ms));
            }
            finish_response(&conn, &cfg, &mut head, request_id);
            let status = head.status.as_u16();
            stats.response_class(status);
            if let Some(info) = info.as_mut() {
                info.response_code = Some(status);
                info.response_headers = head.headers.clone();
            }
            let done = Done { conn: conn.clone(), info, received, upstream: Some(upstream) };
            Response::from_parts(head, Tracked::new(body, done))
        }
        Err(reply) => {
            if reply.flag == Some(crate::stream_info::ResponseFlag::NoRouteFound) {
                stats.no_route.inc();
            }
            if reply.flag == Some(crate::stream_info::ResponseFlag::NoClusterFound) {
                stats.no_cluster.inc();
            }
            local(&conn, info, reply, request_id, received)
        }
    }
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
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

fn finish_response(conn: &Conn, cfg: &model::HttpConnectionManager, head: &mut http::response::Parts, request_id: Option<HeaderValue>) {
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
    if conn.worker.draining() && conn.codec.get() != 2 {
        head.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

fn local(
    conn: &Rc<Conn>,
    mut info: Option<Box<StreamInfo>>,
    reply: LocalReply,
    request_id: Option<HeaderValue>,
    received: Option<Rc<Cell<u64>>>,
) -> Resp {
    let cfg = &conn.hcm.config;
    let (mut head, body) = reply.response().into_parts();
    finish_response(conn, cfg, &mut head, request_id);
    conn.hcm.stats.response_class(reply.status.as_u16());
    if let Some(info) = info.as_mut() {
        info.response_code = Some(reply.status.as_u16());
        if let Some(f) = reply.flag {
            info.flags.set(f);
        }
        info.details = reply.details;
        info.response_headers = head.headers.clone();
    }
    let done = Done { conn: conn.clone(), info, received, upstream: None };
    Response::from_parts(head, Tracked::new(body, done))
}
