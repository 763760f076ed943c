//! What happened to one request or connection, for access logs and stats: Envoy's StreamInfo.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::HeaderMap;
use skiff_config::filter_state::FilterState;

/// Envoy's response flags, in Envoy's order of printing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ResponseFlag {
    /// LH: local health check failed.
    FailedLocalHealthCheck = 1 << 0,
    /// UH: no healthy upstream.
    NoHealthyUpstream = 1 << 1,
    /// UT: upstream request timeout.
    UpstreamRequestTimeout = 1 << 2,
    /// LR: local reset.
    LocalReset = 1 << 3,
    /// UR: upstream remote reset.
    UpstreamRemoteReset = 1 << 4,
    /// UF: upstream connection failure.
    UpstreamConnectionFailure = 1 << 5,
    /// UC: upstream connection termination.
    UpstreamConnectionTermination = 1 << 6,
    /// UO: upstream overflow.
    UpstreamOverflow = 1 << 7,
    /// NR: no route.
    NoRouteFound = 1 << 8,
    /// DI: a fault filter delayed the request.
    DelayInjected = 1 << 9,
    /// FI: a fault filter aborted the request.
    FaultInjected = 1 << 10,
    /// RL: rate limited locally.
    RateLimited = 1 << 12,
    /// UAEX: an external authorization service denied the request (or failed).
    UnauthorizedExternalService = 1 << 15,
    /// RLSE: the rate limit service failed and the request was answered.
    RateLimitServiceError = 1 << 14,
    /// DC: downstream connection termination.
    DownstreamConnectionTermination = 1 << 13,
    /// URX: retry limit exceeded.
    UpstreamRetryLimitExceeded = 1 << 16,
    /// SI: stream idle timeout.
    StreamIdleTimeout = 1 << 17,
    /// UMSDR: the upstream stream's max_stream_duration passed.
    UpstreamMaxStreamDurationReached = 1 << 18,
    /// DPE: downstream protocol error.
    DownstreamProtocolError = 1 << 19,
    /// NC: no cluster.
    NoClusterFound = 1 << 22,
    /// UPE: upstream protocol error.
    UpstreamProtocolError = 1 << 20,
    /// OM: the overload manager ended the stream.
    OverloadManager = 1 << 24,
    /// DR: downstream remote reset.
    DownstreamRemoteReset = 1 << 26,
}

const FLAGS: &[(ResponseFlag, &str, &str)] = &[
    (
        ResponseFlag::FailedLocalHealthCheck,
        "LH",
        "FailedLocalHealthCheck",
    ),
    (ResponseFlag::NoHealthyUpstream, "UH", "NoHealthyUpstream"),
    (
        ResponseFlag::UpstreamRequestTimeout,
        "UT",
        "UpstreamRequestTimeout",
    ),
    (ResponseFlag::LocalReset, "LR", "LocalReset"),
    (
        ResponseFlag::UpstreamRemoteReset,
        "UR",
        "UpstreamRemoteReset",
    ),
    (
        ResponseFlag::UpstreamConnectionFailure,
        "UF",
        "UpstreamConnectionFailure",
    ),
    (
        ResponseFlag::UpstreamConnectionTermination,
        "UC",
        "UpstreamConnectionTermination",
    ),
    (ResponseFlag::UpstreamOverflow, "UO", "UpstreamOverflow"),
    (ResponseFlag::NoRouteFound, "NR", "NoRouteFound"),
    (ResponseFlag::DelayInjected, "DI", "DelayInjected"),
    (ResponseFlag::FaultInjected, "FI", "FaultInjected"),
    (ResponseFlag::RateLimited, "RL", "RateLimited"),
    (
        ResponseFlag::UnauthorizedExternalService,
        "UAEX",
        "UnauthorizedExternalService",
    ),
    (
        ResponseFlag::RateLimitServiceError,
        "RLSE",
        "RateLimitServiceError",
    ),
    (
        ResponseFlag::DownstreamConnectionTermination,
        "DC",
        "DownstreamConnectionTermination",
    ),
    (
        ResponseFlag::UpstreamRetryLimitExceeded,
        "URX",
        "UpstreamRetryLimitExceeded",
    ),
    (ResponseFlag::StreamIdleTimeout, "SI", "StreamIdleTimeout"),
    (
        ResponseFlag::DownstreamProtocolError,
        "DPE",
        "DownstreamProtocolError",
    ),
    (
        ResponseFlag::UpstreamProtocolError,
        "UPE",
        "UpstreamProtocolError",
    ),
    (
        ResponseFlag::UpstreamMaxStreamDurationReached,
        "UMSDR",
        "UpstreamMaxStreamDurationReached",
    ),
    (ResponseFlag::NoClusterFound, "NC", "NoClusterFound"),
    (
        ResponseFlag::OverloadManager,
        "OM",
        "OverloadManagerTerminated",
    ),
    (
        ResponseFlag::DownstreamRemoteReset,
        "DR",
        "DownstreamRemoteReset",
    ),
];

/// A set of response flags, printed in the order they were set (Envoy 1.40 keeps them in a
/// list: a retry limit found exhausted before the failure is reported prints `URX,UF`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags {
    bits: u32,
    /// The flags' bit positions plus one, 5 bits each, first set lowest.
    order: u64,
}

impl ResponseFlags {
    /// Adds a flag.
    pub fn set(&mut self, f: ResponseFlag) {
        if self.has(f) {
            return;
        }
        let n = self.bits.count_ones();
        self.bits |= f as u32;
        if n < 12 {
            self.order |= u64::from((f as u32).trailing_zeros() + 1) << (5 * n);
        }
    }
    /// Whether a flag is set.
    pub fn has(&self, f: ResponseFlag) -> bool {
        self.bits & f as u32 != 0
    }
    /// `UH,UF` style, or `-`.
    pub fn short(&self) -> String {
        self.render(|(_, s, _)| s)
    }
    /// `NoHealthyUpstream,…` style, or `-`.
    pub fn long(&self) -> String {
        self.render(|(_, _, l)| l)
    }
    fn render(
        &self,
        pick: impl Fn(&(ResponseFlag, &'static str, &'static str)) -> &'static str,
    ) -> String {
        let mut names: Vec<&str> = Vec::new();
        let mut order = self.order;
        let mut listed = 0u32;
        while order != 0 {
            let bit = 1u32 << ((order & 0x1f) as u32 - 1);
            order >>= 5;
            listed |= bit;
            if let Some(f) = FLAGS.iter().find(|f| f.0 as u32 == bit) {
                names.push(pick(f));
            }
        }
        // Past twelve flags, the rest in Envoy's table order.
        names.extend(
            FLAGS
                .iter()
                .filter(|f| self.has(f.0) && listed & f.0 as u32 == 0)
                .map(pick),
        );
        if names.is_empty() {
            "-".into()
        } else {
            names.join(",")
        }
    }
}

/// Envoy numbers every connection it makes, downstream and upstream, from one counter.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(0);

/// The id of a new connection (`%CONNECTION_ID%`, `%UPSTREAM_CONNECTION_ID%`).
pub fn next_connection_id() -> u64 {
    NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed)
}

/// What a TLS handshake established, as the access log shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2`, `TLSv1.3`.
    pub version: Option<&'static str>,
    /// The suite in OpenSSL's naming (`ECDHE-RSA-AES128-GCM-SHA256`, `TLS_AES_128_GCM_SHA256`).
    pub cipher: Option<&'static str>,
    /// The peer's certificate, if it sent one.
    pub peer: Option<CertInfo>,
    /// The certificates the client sent after its leaf (XFCC's `Chain`), DER.
    pub peer_intermediates: Vec<Vec<u8>>,
    /// The certificate this side presented.
    pub local: Option<CertInfo>,
}

/// The names of a certificate, for `%DOWNSTREAM_{PEER,LOCAL}_*%`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject, in RFC 2253 form (`CN=a,O=b`).
    pub subject: String,
    /// The issuer, in RFC 2253 form.
    pub issuer: String,
    /// URI SANs.
    pub uri_sans: Vec<String>,
    /// DNS SANs.
    pub dns_sans: Vec<String>,
    /// The serial number, lower-case hex.
    pub serial: String,
    /// `notBefore` and `notAfter`, seconds since the epoch.
    pub validity: (i64, i64),
    /// The certificate itself (DER), for its fingerprint and PEM.
    pub der: Vec<u8>,
}

/// The downstream connection a stream arrived on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Connection {
    /// `%CONNECTION_ID%`.
    pub id: u64,
    /// The directly connected peer, before a PROXY protocol header replaced it.
    pub direct_remote: Option<SocketAddr>,
    /// The SNI tls_inspector read (`%REQUESTED_SERVER_NAME%`).
    pub requested_server_name: Option<String>,
    /// When the connection terminates TLS (described only for what reads it: access logs, the
    /// client certificate forwarded).
    pub tls: Option<TlsInfo>,
    /// Whether the client presented a certificate over TLS (routes' `tls_context`).
    pub peer_certificate: bool,
    /// The listener's `metadata` (`%METADATA(LISTENER:…)%`).
    pub listener_metadata: Option<Arc<skiff_config::metadata::Metadata>>,
    /// What the network filters put in the connection's filter state (`set_filter_state`,
    /// `istio_authn`); its streams see it under their own.
    pub filter_state: FilterState,
    /// On an internal listener's connection: the dynamic metadata the connecting cluster
    /// passed through (`internal_upstream`).
    pub metadata: Option<Arc<skiff_config::metadata::Metadata>>,
}

/// The upstream connection a stream used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamConnection {
    /// `%UPSTREAM_CONNECTION_ID%`.
    pub id: u64,
    /// `%UPSTREAM_LOCAL_ADDRESS%`.
    pub local: Option<SocketAddr>,
    /// `%UPSTREAM_TLS_VERSION%`.
    pub tls_version: Option<&'static str>,
}

/// A span's trace id (its high half for a 128-bit id) and its own id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_high: Option<u64>,
    pub trace: u64,
    pub span: u64,
}

/// The record of one stream (an HTTP request) or one TCP proxy connection.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// The stream's dynamic metadata, when its filters may write some.
    pub dynamic_metadata: Option<DynamicMetadata>,
    /// `tracing` is configured and the request id says the service forced the trace
    /// (`traceable_filter`).
    pub trace_forced: bool,
    /// The stream's span's ids, when it has one.
    pub span_ids: Option<TraceIds>,
    /// The upstream host's metadata (`%UPSTREAM_METADATA%`), once one is picked.
    pub upstream_metadata: Option<Arc<skiff_config::metadata::Metadata>>,
    /// The upstream cluster's metadata (`%CLUSTER_METADATA%`), once one is picked.
    pub cluster_metadata: Option<Arc<skiff_config::metadata::Metadata>>,
    /// The route's and its virtual host's metadata (`%METADATA(ROUTE|VIRTUAL_HOST:…)%`), once
    /// the route is picked.
    pub route_metadata: Option<(
        Arc<skiff_config::metadata::Metadata>,
        Arc<skiff_config::metadata::Metadata>,
    )>,
    /// The kind of line being written before the end (`DownstreamStart`, `TcpPeriodic`, …);
    /// `None`: the end's.
    pub log_type: Option<&'static str>,
    /// Wall clock at the start.
    pub start_time: SystemTime,
    /// Monotonic clock at the start.
    pub start: Instant,
    /// `HTTP/1.1`, `HTTP/2`, or `None` for TCP.
    pub protocol: Option<&'static str>,
    /// Request headers as received (pseudo-headers in the fields below).
    pub request_headers: HeaderMap,
    /// `:method`.
    pub method: Option<http::Method>,
    /// `:path` as received.
    pub path: Option<String>,
    /// `:authority` / Host.
    pub authority: Option<String>,
    /// `:scheme`.
    pub scheme: &'static str,
    /// Response headers as sent.
    pub response_headers: HeaderMap,
    /// The status sent.
    pub response_code: Option<u16>,
    /// Response flags.
    pub flags: ResponseFlags,
    /// `%RESPONSE_CODE_DETAILS%`.
    pub details: &'static str,
    /// Body bytes received from the downstream.
    pub bytes_received: u64,
    /// Body bytes sent to the downstream.
    pub bytes_sent: u64,
    /// The upstream host chosen.
    pub upstream_host: Option<SocketAddr>,
    /// The upstream cluster chosen.
    pub upstream_cluster: Option<Arc<str>>,
    /// Its `alt_stat_name`, when it has one (`%UPSTREAM_CLUSTER%` shows it).
    pub upstream_cluster_stat: Option<Arc<str>>,
    /// The route's name.
    pub route_name: Option<Arc<str>>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// The downstream peer.
    pub downstream_remote: SocketAddr,
    /// The downstream local address (the original destination once listener filters run).
    pub downstream_local: SocketAddr,
    /// Set when the stream ends.
    pub duration_ms: Option<u64>,
    /// The downstream connection (shared by its streams).
    pub connection: Option<Arc<Connection>>,
    /// The upstream connection used, once there is one.
    pub upstream_connection: Option<UpstreamConnection>,
    /// `%UPSTREAM_PROTOCOL%`: `HTTP/1.1`, `HTTP/2`.
    pub upstream_protocol: Option<&'static str>,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: why the upstream connection could not be made.
    pub upstream_transport_failure: Option<String>,
    /// When the request's last byte was received.
    pub request_done: Option<Instant>,
    /// When the request's last byte was sent upstream (here: received, once it went upstream).
    pub request_sent: Option<Instant>,
    /// When the upstream's response headers arrived.
    pub response_started: Option<Instant>,
    /// When the response's last byte was sent downstream.
    pub response_done: Option<Instant>,
    /// `%STREAM_ID%`: the request's `x-request-id` (HTTP).
    pub stream_id: Option<String>,
    /// The size of the request headers as forwarded, pseudo-headers included, as Envoy counts
    /// its header map (`%REQUEST_HEADERS_BYTES%`).
    pub request_headers_bytes: u64,
    /// The health check filter took the request as a health check.
    pub health_check: bool,
    /// The response's trailers, when it had any.
    pub response_trailers: Option<Box<http::HeaderMap>>,
    /// The virtual cluster the router counted the request in (`%VIRTUAL_CLUSTER_NAME%`).
    pub virtual_cluster: Option<std::sync::Arc<str>>,
    /// A local reply's body while `local_reply_config` formats it (`%LOCAL_REPLY_BODY%`).
    pub local_reply_body: Option<bytes::Bytes>,
}

/// A stream's dynamic metadata and filter state: what its filters write (header_to_metadata,
/// jwt_authn, set_filter_state, …), and routes, access logs and formatters read. Shared by the
/// stream's request and response sides (request extensions, the filters, the stream's record).
#[derive(Debug, Clone, Default)]
pub struct DynamicMetadata(Arc<std::sync::Mutex<StreamState>>);

/// What [`DynamicMetadata`] holds.
#[derive(Debug, Default)]
struct StreamState {
    metadata: skiff_config::metadata::Metadata,
    filter_state: FilterState,
}

impl DynamicMetadata {
    /// Runs `f` over the metadata.
    pub fn with<R>(&self, f: impl FnOnce(&mut skiff_config::metadata::Metadata) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()).metadata)
    }

    /// Runs `f` over the metadata and the stream's own filter state at once.
    pub fn with_all<R>(
        &self,
        f: impl FnOnce(&skiff_config::metadata::Metadata, &FilterState) -> R,
    ) -> R {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&g.metadata, &g.filter_state)
    }

    /// Runs `f` over the stream's own filter state.
    pub fn with_filter_state<R>(&self, f: impl FnOnce(&mut FilterState) -> R) -> R {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .filter_state)
    }
}

/// Runs `f` over what a stream reads of filter state: its own objects (in `stream`), then its
/// connection's.
pub fn with_filter_state<R>(
    stream: Option<&DynamicMetadata>,
    connection: Option<&Connection>,
    f: impl FnOnce(skiff_config::filter_state::View<'_>) -> R,
) -> R {
    let guard = stream.map(|s| s.0.lock().unwrap_or_else(|e| e.into_inner()));
    f(skiff_config::filter_state::View {
        stream: guard.as_ref().map(|g| &g.filter_state),
        connection: connection.map(|c| &c.filter_state),
    })
}

/// [`with_filter_state`], with the stream's dynamic metadata beside it (what RBAC rules read).
pub fn with_stream_data<R>(
    stream: Option<&DynamicMetadata>,
    connection: Option<&Connection>,
    f: impl FnOnce(skiff_config::filter_state::View<'_>, Option<&skiff_config::metadata::Metadata>) -> R,
) -> R {
    let guard = stream.map(|s| s.0.lock().unwrap_or_else(|e| e.into_inner()));
    f(
        skiff_config::filter_state::View {
            stream: guard.as_ref().map(|g| &g.filter_state),
            connection: connection.map(|c| &c.filter_state),
        },
        guard.as_ref().map(|g| &g.metadata),
    )
}

impl StreamInfo {
    /// A new record for a stream starting now.
    pub fn new(downstream_remote: SocketAddr, downstream_local: SocketAddr) -> Self {
        StreamInfo {
            start_time: SystemTime::now(),
            start: Instant::now(),
            protocol: None,
            request_headers: HeaderMap::new(),
            method: None,
            path: None,
            authority: None,
            scheme: "http",
            response_headers: HeaderMap::new(),
            response_code: None,
            flags: ResponseFlags::default(),
            details: "",
            bytes_received: 0,
            bytes_sent: 0,
            upstream_host: None,
            upstream_cluster: None,
            upstream_cluster_stat: None,
            span_ids: None,
            route_name: None,
            attempts: 0,
            downstream_remote,
            downstream_local,
            duration_ms: None,
            connection: None,
            upstream_connection: None,
            upstream_protocol: None,
            upstream_transport_failure: None,
            request_done: None,
            request_sent: None,
            response_started: None,
            response_done: None,
            stream_id: None,
            request_headers_bytes: 0,
            local_reply_body: None,
            virtual_cluster: None,
            health_check: false,
            response_trailers: None,
            dynamic_metadata: None,
            trace_forced: false,
            log_type: None,
            upstream_metadata: None,
            cluster_metadata: None,
            route_metadata: None,
        }
    }

    /// Marks the end of the stream.
    pub fn finish(&mut self) {
        self.duration_ms = Some(self.start.elapsed().as_millis() as u64);
    }

    /// Milliseconds from the start to `t`.
    pub fn since_start(&self, t: Option<Instant>) -> Option<u64> {
        t.map(|t| t.saturating_duration_since(self.start).as_millis() as u64)
    }
}

/// The bytes Envoy counts for a header map: every name and value, pseudo-headers included.
pub fn headers_bytes<'a>(
    pseudo: impl IntoIterator<Item = (&'a str, &'a str)>,
    headers: &HeaderMap,
) -> u64 {
    let pseudo: usize = pseudo.into_iter().map(|(n, v)| n.len() + v.len()).sum();
    let rest: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    (pseudo + rest) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_render_in_the_order_they_were_set() {
        let mut f = ResponseFlags::default();
        assert_eq!(f.short(), "-");
        f.set(ResponseFlag::UpstreamRetryLimitExceeded);
        f.set(ResponseFlag::UpstreamConnectionFailure);
        f.set(ResponseFlag::UpstreamRetryLimitExceeded);
        assert_eq!(f.short(), "URX,UF");
        assert_eq!(
            f.long(),
            "UpstreamRetryLimitExceeded,UpstreamConnectionFailure"
        );
    }
}
