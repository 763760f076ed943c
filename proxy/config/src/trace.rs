//! Tracing: the connection manager's tracer (`tracing.provider`) and the tags it puts on its
//! spans. skiff runs Envoy's Zipkin tracer (`envoy.tracers.zipkin`: B3 context read from and
//! written to requests, spans reported as Zipkin's JSON v2 to a collector cluster) and its
//! OpenTelemetry tracer (`envoy.tracers.opentelemetry`: W3C trace context, spans exported over
//! OTLP gRPC).

use std::sync::Arc;

/// A connection manager's tracer and what its spans carry.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpTracer {
    /// `provider`.
    pub provider: Provider,
    /// `custom_tags`, in order.
    pub custom_tags: Vec<CustomTag>,
    /// `max_path_tag_length` (default 256): the path in `http.url` is cut to it.
    pub max_path_tag_length: usize,
    /// The listener's `traffic_direction` is `OUTBOUND`: the spans are `egress` (Zipkin
    /// `CLIENT`) spans, and a route's decorator goes upstream; otherwise `ingress` (`SERVER`).
    pub egress: bool,
    /// `spawn_upstream_span`: each upstream request gets a child span (`router <cluster>
    /// egress`, a client span) and the connection manager's span is a server span even on an
    /// egress listener, as Envoy makes it an independent hop.
    pub spawn_upstream_span: bool,
    /// `operation`: a format naming the span when it ends (a missing value is empty), over
    /// route decorators, which then do nothing.
    pub operation: Option<Arc<crate::access_log::Format>>,
    /// `upstream_operation`: a format naming each upstream request's span (`spawn_upstream_span`
    /// or the router's `start_child_span`) when it ends; empty leaves `router <cluster> egress`.
    pub upstream_operation: Option<Arc<crate::access_log::Format>>,
}

/// A route's `tracing`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTracing {
    /// `client_sampling`, `random_sampling`, `overall_sampling` as (numerator, denominator),
    /// over the connection manager's (100% when unset, as Envoy's).
    pub client: (u32, u32),
    pub random: (u32, u32),
    pub overall: (u32, u32),
    /// `custom_tags`, over the connection manager's of the same name.
    pub custom_tags: Vec<CustomTag>,
    /// `operation`, over the connection manager's.
    pub operation: Option<Arc<crate::access_log::Format>>,
    /// `upstream_operation`, over the connection manager's.
    pub upstream_operation: Option<Arc<crate::access_log::Format>>,
}

impl HttpTracer {
    /// Whether the connection manager's span is a server span: on an ingress listener, or
    /// with `spawn_upstream_span`.
    pub fn server(&self) -> bool {
        !self.egress || self.spawn_upstream_span
    }
}

/// The tracer.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    Zipkin(Arc<Zipkin>),
    OpenTelemetry(Arc<OpenTelemetry>),
}

/// `envoy.config.trace.v3.OpenTelemetryConfig` with a `grpc_service`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenTelemetry {
    /// `grpc_service.envoy_grpc.cluster_name`.
    pub cluster: String,
    /// `envoy_grpc.authority`, else the cluster's name.
    pub authority: String,
    /// `grpc_service.initial_metadata`: headers every export carries.
    pub metadata: crate::model::GrpcMetadata,
    /// `grpc_service.timeout`: how long an export may take (none: no limit).
    pub timeout: Option<std::time::Duration>,
    /// `service_name` (default `unknown_service:envoy`), the resource's `service.name`.
    pub service_name: String,
    /// `set_service_name_resource_attribute` (default true).
    pub set_service_name: bool,
    /// `set_telemetry_sdk_resource_attributes` (default true): `telemetry.sdk.*`.
    pub set_sdk_attributes: bool,
    /// `set_instrumentation_scope` (default true): the scope's name and version.
    pub set_scope: bool,
    /// `sampler`: decides, instead of the connection manager, which spans are sampled.
    pub sampler: Option<Sampler>,
}

/// An OpenTelemetry tracer's `sampler`.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    /// `envoy.tracers.opentelemetry.samplers.always_on`: every span.
    AlwaysOn,
    /// `envoy.tracers.opentelemetry.samplers.trace_id_ratio_based`: the spans of traces whose
    /// id's first eight bytes (read as Envoy reads them, little-endian) modulo `denominator` are
    /// below `numerator`.
    TraceIdRatio { numerator: u32, denominator: u32 },
    /// `envoy.tracers.opentelemetry.samplers.parent_based`: a caller's decision when there is
    /// a caller, else the wrapped sampler's.
    ParentBased(Box<Sampler>),
}

impl Sampler {
    /// Whether a span of the trace whose id's high half is `trace_high` is sampled, given its
    /// parent's decision if it has a parent.
    pub fn sampled(&self, parent: Option<bool>, trace_high: u64) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::TraceIdRatio {
                numerator,
                denominator,
            } => {
                let id = u64::from_le_bytes(trace_high.to_be_bytes());
                *numerator > 0 && id % u64::from(*denominator) < u64::from(*numerator)
            }
            Sampler::ParentBased(inner) => match parent {
                Some(p) => p,
                None => inner.sampled(None, trace_high),
            },
        }
    }
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
