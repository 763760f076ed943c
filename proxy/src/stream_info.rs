//! What happened to one request or connection, for access logs and stats: Envoy's StreamInfo.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::HeaderMap;

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
    /// DC: downstream connection termination.
    DownstreamConnectionTermination = 1 << 13,
    /// URX: retry limit exceeded.
    UpstreamRetryLimitExceeded = 1 << 16,
    /// SI: stream idle timeout.
    StreamIdleTimeout = 1 << 17,
    /// DPE: downstream protocol error.
    DownstreamProtocolError = 1 << 19,
    /// NC: no cluster.
    NoClusterFound = 1 << 22,
    /// UPE: upstream protocol error.
    UpstreamProtocolError = 1 << 20,
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
    (ResponseFlag::NoClusterFound, "NC", "NoClusterFound"),
    (
        ResponseFlag::DownstreamRemoteReset,
        "DR",
        "DownstreamRemoteReset",
    ),
];

/// A set of response flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(u32);

impl ResponseFlags {
    /// Adds a flag.
    pub fn set(&mut self, f: ResponseFlag) {
        self.0 |= f as u32;
    }
    /// Whether a flag is set.
    pub fn has(&self, f: ResponseFlag) -> bool {
        self.0 & f as u32 != 0
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
        let names: Vec<&str> = FLAGS.iter().filter(|f| self.has(f.0)).map(pick).collect();
        if names.is_empty() {
            "-".into()
        } else {
            names.join(",")
        }
    }
}

/// The record of one stream (an HTTP request) or one TCP proxy connection.
#[derive(Debug, Clone)]
pub struct StreamInfo {
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
            route_name: None,
            attempts: 0,
            downstream_remote,
            downstream_local,
            duration_ms: None,
        }
    }

    /// Marks the end of the stream.
    pub fn finish(&mut self) {
        self.duration_ms = Some(self.start.elapsed().as_millis() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_render_in_envoy_order() {
        let mut f = ResponseFlags::default();
        assert_eq!(f.short(), "-");
        f.set(ResponseFlag::UpstreamRetryLimitExceeded);
        f.set(ResponseFlag::UpstreamConnectionFailure);
        assert_eq!(f.short(), "UF,URX");
        assert_eq!(
            f.long(),
            "UpstreamConnectionFailure,UpstreamRetryLimitExceeded"
        );
    }
}
