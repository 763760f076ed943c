//! Tracing: the connection manager's tracer (`tracing.provider`) and the tags it puts on its
//! spans. skiff runs Envoy's Zipkin tracer (`envoy.tracers.zipkin`): B3 context read from and
//! written to requests, spans reported as Zipkin's JSON v2 to a collector cluster.

use std::sync::Arc;

/// A connection manager's tracer and what its spans carry.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpTracer {
    /// `provider`.
    pub zipkin: Arc<Zipkin>,
    /// `custom_tags`, in order.
    pub custom_tags: Vec<CustomTag>,
    /// `max_path_tag_length` (default 256): the path in `http.url` is cut to it.
    pub max_path_tag_length: usize,
    /// The listener's `traffic_direction` is `OUTBOUND`: the spans are `egress` (Zipkin
    /// `CLIENT`) spans, and a route's decorator goes upstream; otherwise `ingress` (`SERVER`).
    pub egress: bool,
}

/// `envoy.config.trace.v3.ZipkinConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct Zipkin {
    /// `collector_cluster`.
    pub cluster: String,
    /// `collector_endpoint`: the path spans are posted to.
    pub endpoint: String,
    /// `collector_hostname`, else the cluster's name: the `host` of the posts.
    pub hostname: String,
    /// `trace_id_128bit`: new traces get 128-bit ids.
    pub trace_id_128bit: bool,
    /// `shared_span_context` (default true): a server span takes the id of the client span
    /// it continues.
    pub shared_span_context: bool,
}

/// One of `custom_tags`.
#[derive(Debug, Clone, PartialEq)]
pub enum CustomTag {
    /// `literal`, or `environment` (read when the configuration is: the variable, else its
    /// `default_value`; neither: no tag).
    Fixed { tag: String, value: Option<String> },
    /// `request_header`: its value, else `default_value`, else no tag.
    RequestHeader {
        tag: String,
        name: http::HeaderName,
        default: Option<String>,
    },
}
