//! Envoy's tracers: a span for each request the connection manager traces, its context read
//! from the request and written to the upstream request, and, when sampled, the finished span
//! reported in batches (`tracing.<tracer>.min_flush_spans` spans, or every
//! `tracing.<tracer>.flush_interval_ms`), as Envoy's drivers do.
//!
//! - Zipkin (`envoy.tracers.zipkin`): B3 context (`x-b3-*` or `b3`), spans posted as Zipkin's
//!   JSON v2 to the collector cluster.
//! - OpenTelemetry (`envoy.tracers.opentelemetry`): W3C trace context (`traceparent`,
//!   `tracestate`), spans exported over OTLP gRPC (`TraceService/Export`).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::trace::{CustomTag, HttpTracer, OpenTelemetry, Provider, Zipkin};
use crate::otlp;
use crate::stats::Counter;
use crate::stream_info::StreamInfo;
use crate::worker::Worker;

static X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
static B3: HeaderName = HeaderName::from_static("b3");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `x-envoy-decorator-operation`.
pub static DECORATOR_OPERATION: HeaderName = HeaderName::from_static("x-envoy-decorator-operation");

/// The node the spans name (`node_id`, `zone`, the service name), set once at start-up.
static NODE: std::sync::OnceLock<(String, String, String)> = std::sync::OnceLock::new();

/// Sets the node's id, cluster and zone (once, at start-up).
pub fn set_node(id: &str, cluster: &str, zone: &str) {
    let _ = NODE.set((id.to_string(), cluster.to_string(), zone.to_string()));
}

/// The node's id, cluster and zone.
pub(crate) fn node() -> &'static (String, String, String) {
    NODE.get_or_init(Default::default)
}

/// How a context travels.
#[derive(Debug, Clone)]
enum Form {
    /// B3's `x-b3-*` headers.
    B3,
    /// B3's single `b3` header (as the request brought it).
    B3Single,
    /// W3C's `traceparent`, with the `tracestate` the request brought.
    W3c(Arc<str>),
}

/// What goes upstream of a span: its context, in its tracer's form.
#[derive(Debug, Clone)]
pub struct Context {
    trace_high: Option<u64>,
    trace: u64,
    id: u64,
    parent: Option<u64>,
    sampled: bool,
    form: Form,
}

impl Context {
    fn trace_id(&self) -> String {
        match self.trace_high {
            Some(h) => format!("{h:016x}{:016x}", self.trace),
            None => format!("{:016x}", self.trace),
        }
    }

    /// Writes the context into an upstream request, as Envoy's spans inject it.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let hv = |s: String| HeaderValue::from_str(&s).ok();
        if let Form::W3c(state) = &self.form {
            let parent = format!(
                "00-{:016x}{:016x}-{:016x}-{}",
                self.trace_high.unwrap_or(0),
                self.trace,
                self.id,
                if self.sampled { "01" } else { "00" }
            );
            if let Some(v) = hv(parent) {
                headers.insert(TRACEPARENT.clone(), v);
            }
            if let Some(v) = hv(state.to_string()) {
                headers.insert(TRACESTATE.clone(), v);
            }
            return;
        }
        if matches!(self.form, Form::B3Single) {
            let mut v = format!(
                "{}-{:016x}-{}",
                self.trace_id(),
                self.id,
                if self.sampled { "1" } else { "0" }
            );
            if let Some(p) = self.parent {
                let _ = write!(v, "-{p:016x}");
            }
            if let Some(v) = hv(v) {
                headers.insert(B3.clone(), v);
            }
            return;
        }
        if let Some(v) = hv(self.trace_id()) {
            headers.insert(X_B3_TRACE_ID.clone(), v);
        }
        if let Some(v) = hv(format!("{:016x}", self.id)) {
            headers.insert(X_B3_SPAN_ID.clone(), v);
        }
        if let Some(p) = self.parent {
            if let Some(v) = hv(format!("{p:016x}")) {
                headers.insert(X_B3_PARENT_SPAN_ID.clone(), v);
            }
        }
        headers.insert(
            X_B3_SAMPLED.clone(),
            HeaderValue::from_static(if self.sampled { "1" } else { "0" }),
        );
    }
}

/// One request's span, from the request's arrival to the end of its response.
#[derive(Debug)]
pub struct Span {
    tracer: Arc<HttpTracer>,
    /// None: the request brought a malformed context, and the span is Envoy's null span (no
    /// context goes upstream, nothing is reported).
    context: Option<Context>,
    name: String,
    start: SystemTime,
    started: Instant,
    /// `custom_tags` (the connection manager's, and its route's over them): those that read
    /// the request, as they were when it arrived, and the fixed ones.
    header_tags: Vec<(String, String)>,
    fixed_tags: Vec<(String, String)>,
    /// The route's or the connection manager's `operation`, which names the span when it
    /// ends.
    operation: Option<Arc<crate::access_log::Format>>,
    /// The route's or the connection manager's `upstream_operation`, which names each
    /// upstream request's span.
    upstream_operation: Option<Arc<crate::access_log::Format>>,
    /// The route's decorator operation to return on an ingress response (Envoy's
    /// `decorated_operation_` with `propagate`).
    response_operation: Option<String>,
    /// The context came from the caller (OpenTelemetry's remote parent).
    remote_parent: bool,
}

/// A 64-bit id from hex (1 to 16 digits).
fn hex64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// A trace id: 16 or 32 hex digits.
fn trace_id(s: &str) -> Option<(Option<u64>, u64)> {
    match s.len() {
        // A zero high half is a 64-bit id (written back with 16 digits, as Envoy does).
        32 => Some((
            Some(hex64(s.get(..16)?)?).filter(|h| *h != 0),
            hex64(s.get(16..)?)?,
        )),
        1..=16 => Some((None, hex64(s)?)),
        _ => None,
    }
}

/// A trace id (its high half, if any, and its low half), a span id and a parent span id.
type Ids = ((Option<u64>, u64), u64, Option<u64>);

/// What the request says of its trace, and whether it asks to be sampled, as B3 puts it.
struct Incoming {
    ids: Option<Ids>,
    sampled: Option<bool>,
    single: bool,
}

/// `None`: the request brings a context that does not parse (Envoy then makes no span).
fn incoming(headers: &HeaderMap) -> Option<Incoming> {
    let get = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    let sampled_flag = |s: &str| match s {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    };
    if let Some(b3) = get(&B3) {
        let parts: Vec<&str> = b3.split('-').collect();
        if parts.len() == 1 {
            return Some(Incoming {
                ids: None,
                sampled: sampled_flag(parts[0]),
                single: true,
            });
        }
        let ids = (|| {
            let trace = trace_id(parts.first()?)?;
            let span = hex64(parts.get(1)?)?;
            let parent = match parts.get(3) {
                Some(p) => Some(hex64(p)?),
                None => None,
            };
            Some((trace, span, parent))
        })();
        return Some(Incoming {
            sampled: parts.get(2).and_then(|s| sampled_flag(s)),
            ids: Some(ids?),
            single: true,
        });
    }
    let sampled = get(&X_B3_SAMPLED)
        .and_then(sampled_flag)
        .or_else(|| (get(&X_B3_FLAGS) == Some("1")).then_some(true));
    let present = headers.contains_key(&X_B3_TRACE_ID) || headers.contains_key(&X_B3_SPAN_ID);
    let ids = (|| {
        let trace = trace_id(get(&X_B3_TRACE_ID)?)?;
        let span = hex64(get(&X_B3_SPAN_ID)?)?;
        let parent = match get(&X_B3_PARENT_SPAN_ID) {
            Some(p) => Some(hex64(p)?),
            None => None,
        };
        Some((trace, span, parent))
    })();
    if present && ids.is_none() {
        return None;
    }
    Some(Incoming {
        ids,
        sampled,
        single: false,
    })
}

/// A Zipkin span's context: the caller's B3 context continued (shared by a server span with
/// `shared_span_context`, else its child), or a new trace; none for a malformed one.
fn b3_context(z: &Zipkin, server: bool, headers: &HeaderMap, traced: bool) -> Option<Context> {
    let inc = incoming(headers)?;
    let sampled = inc.sampled.unwrap_or(traced);
    Some(match inc.ids {
        Some((trace, span, parent)) => {
            let (id, parent) = if server && z.shared_span_context {
                (span, parent)
            } else {
                (new_id(), Some(span))
            };
            Context {
                trace_high: trace.0,
                trace: trace.1,
                id,
                parent,
                sampled,
                form: if inc.single { Form::B3Single } else { Form::B3 },
            }
        }
        None => {
            let id = new_id();
            Context {
                trace_high: z.trace_id_128bit.then(new_id),
                trace: id,
                id,
                parent: None,
                sampled,
                form: Form::B3,
            }
        }
    })
}

/// An OpenTelemetry span's context: a child of the caller's `traceparent` (whose `tracestate`
/// goes on), or a new trace; and whether its parent is remote. None for a malformed
/// `traceparent`. A `sampler` decides instead of the caller; either way a stream the
/// connection manager does not trace is not sampled.
fn w3c_context(
    headers: &HeaderMap,
    traced: bool,
    sampler: Option<&crate::config::trace::Sampler>,
) -> Option<(Context, bool)> {
    let get = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    let state: Arc<str> = get(&TRACESTATE).unwrap_or("").into();
    let present = headers.contains_key(&TRACEPARENT);
    let parent = get(&TRACEPARENT).and_then(|p| {
        let parts: Vec<&str> = p.split('-').collect();
        let [version, trace, span, flags] = parts.as_slice() else {
            return None;
        };
        if version.len() != 2 || *version == "ff" || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        let (high, low) = (hex64(trace.get(..16)?)?, hex64(trace.get(16..)?)?);
        let span = hex64(span)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        ((high, low) != (0, 0) && span != 0).then_some((high, low, span, flags & 1 == 1))
    });
    if present && parent.is_none() {
        return None;
    }
    let (mut context, remote) = match parent {
        Some((high, low, span, sampled)) => (
            Context {
                trace_high: Some(high),
                trace: low,
                id: new_id(),
                parent: Some(span),
                sampled,
                form: Form::W3c(state),
            },
            true,
        ),
        None => (
            Context {
                trace_high: Some(new_id()),
                trace: new_id(),
                id: new_id(),
                parent: None,
                sampled: traced,
                form: Form::W3c(state),
            },
            false,
        ),
    };
    if let Some(s) = sampler {
        let parent = remote.then_some(context.sampled);
        context.sampled = s.sampled(parent, context.trace_high.unwrap_or(0));
    }
    // A stream the connection manager does not trace is not sampled, whatever the caller or
    // the sampler said (measured: a caller's `-01` goes upstream as `-00`).
    context.sampled &= traced;
    Some((context, remote))
}

/// A new random id (never zero).
fn new_id() -> u64 {
    fastrand::u64(1..)
}

impl Span {
    /// Starts the span of a request the connection manager traces (`traced`: its sampling
    /// decision). `decorator` is the route's (operation, propagate). The request loses an
    /// ingress client's `x-envoy-decorator-operation` (which names the span), and an egress
    /// request gets the decorator's.
    pub fn start(
        tracer: &Arc<HttpTracer>,
        headers: &mut HeaderMap,
        traced: bool,
        host: &str,
        (decorator, route): (
            Option<(&str, bool)>,
            Option<&crate::config::trace::RouteTracing>,
        ),
    ) -> Span {
        let (context, remote_parent) = match &tracer.provider {
            Provider::Zipkin(z) => (b3_context(z, tracer.server(), headers, traced), false),
            Provider::OpenTelemetry(o) => match w3c_context(headers, traced, o.sampler.as_ref()) {
                Some((c, remote)) => (Some(c), remote),
                None => (None, false),
            },
        };
        let mut name = match (&tracer.provider, tracer.egress) {
            (Provider::Zipkin(_), _) => host.to_string(),
            (Provider::OpenTelemetry(_), false) => "ingress".to_string(),
            (Provider::OpenTelemetry(_), true) => format!("egress {host}"),
        };
        let operation = route
            .and_then(|r| r.operation.clone())
            .or_else(|| tracer.operation.clone());
        let upstream_operation = route
            .and_then(|r| r.upstream_operation.clone())
            .or_else(|| tracer.upstream_operation.clone());
        // An operation names the span instead: decorators, and a caller's, do nothing then.
        let decorator = decorator.filter(|_| operation.is_none());
        let mut response_operation = None;
        if let Some((op, propagate)) = decorator.filter(|(op, _)| !op.is_empty()) {
            name = op.to_string();
            if propagate {
                if tracer.egress {
                    if let Ok(v) = HeaderValue::from_str(op) {
                        headers.insert(DECORATOR_OPERATION.clone(), v);
                    }
                } else {
                    response_operation = Some(op.to_string());
                }
            }
        }
        if !tracer.egress && operation.is_none() {
            // The caller's operation names this server span; the header stops here.
            if let Some(v) = headers.remove(&DECORATOR_OPERATION) {
                if let Ok(op) = v.to_str() {
                    if !op.is_empty() {
                        name = op.to_string();
                        response_operation = None;
                    }
                }
            }
        }
        // A route's tags replace the connection manager's of the same name.
        let route_tags = route.map_or(&[][..], |r| &r.custom_tags[..]);
        let tag_name = |t: &CustomTag| match t {
            CustomTag::Fixed { tag, .. } | CustomTag::RequestHeader { tag, .. } => tag.clone(),
        };
        let (mut header_tags, mut fixed_tags) = (Vec::new(), Vec::new());
        // Only a span that may be reported (its own, or under a sampler its children) needs
        // them.
        let reported = context.as_ref().is_some_and(|c| c.sampled)
            || matches!(&tracer.provider, Provider::OpenTelemetry(o) if o.sampler.is_some());
        for t in tracer
            .custom_tags
            .iter()
            .filter(|_| reported)
            .filter(|t| !route_tags.iter().any(|r| tag_name(r) == tag_name(t)))
            .chain(route_tags.iter().filter(|_| reported))
        {
            match t {
                CustomTag::RequestHeader { tag, name, default } => {
                    if let Some(v) = headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                        .or_else(|| default.clone())
                    {
                        header_tags.push((tag.clone(), v));
                    }
                }
                CustomTag::Fixed {
                    tag,
                    value: Some(v),
                } => fixed_tags.push((tag.clone(), v.clone())),
                CustomTag::Fixed { value: None, .. } => {}
            }
        }
        Span {
            tracer: tracer.clone(),
            context,
            name,
            start: SystemTime::now(),
            started: Instant::now(),
            header_tags,
            fixed_tags,
            operation,
            upstream_operation,
            response_operation,
            remote_parent,
        }
    }

    /// What goes upstream.
    pub fn context(&self) -> Option<Context> {
        self.context.clone()
    }

    /// What the router needs to give upstream requests spans of their own (none for Envoy's
    /// null span).
    pub fn spawn(&self) -> Option<Spawn> {
        let parent = self.context.clone()?;
        Some(Spawn(Arc::new(SpawnFrom {
            tracer: self.tracer.clone(),
            upstream_operation: self.upstream_operation.clone(),
            parent,
            tags: self
                .fixed_tags
                .iter()
                .chain(&self.header_tags)
                .cloned()
                .collect(),
        })))
    }

    /// The span's ids, for the access log (none for Envoy's null span).
    pub fn ids(&self) -> Option<crate::stream_info::TraceIds> {
        let c = self.context.as_ref()?;
        Some(crate::stream_info::TraceIds {
            // A W3C trace id is always 128 bits.
            trace_high: match &c.form {
                Form::W3c(_) => Some(c.trace_high.unwrap_or(0)),
                _ => c.trace_high,
            },
            trace: c.trace,
            span: c.id,
        })
    }

    /// The operation an ingress response carries (`x-envoy-decorator-operation`).
    pub fn response_operation(&self) -> Option<&str> {
        self.response_operation.as_deref()
    }

    /// Ends the span with what the stream's record says, and reports it if it is sampled.
    pub fn finish(self, info: &StreamInfo, worker: &Rc<Worker>) {
        let Some(c) = self.context.as_ref().filter(|c| c.sampled) else {
            return;
        };
        let tags = self.tags(info);
        let name = match &self.operation {
            // Rendered as Envoy's header formatter renders: a missing value is empty.
            Some(f) => crate::access_log::header_value(f, info, None, None),
            None => self.name.clone(),
        };
        Shape {
            context: c,
            name: &name,
            start: self.start,
            started: self.started,
            client: !self.tracer.server(),
            remote_parent: self.remote_parent,
        }
        .report(worker, &self.tracer.provider, &tags);
    }

    /// The span's tags, in the order Envoy sets them (the connection manager's, then the
    /// custom ones).
    fn tags(&self, info: &StreamInfo) -> Vec<(String, String)> {
        let (node_id, _, zone) = node();
        let mut tags: Vec<(String, String)> = Vec::new();
        let mut tag = |k: &str, v: String| tags.push((k.to_string(), v));
        let header = |n: &str| {
            info.request_headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        tag("component", "proxy".into());
        tag("node_id", node_id.clone());
        if !zone.is_empty() {
            tag("zone", zone.clone());
        }
        if let Some(id) = header("x-request-id") {
            tag("guid:x-request-id", id);
        }
        if let Some(id) = header("x-client-trace-id") {
            tag("guid:x-client-trace-id", id);
        }
        let path = info.path.as_deref().unwrap_or("");
        let cut = path
            .char_indices()
            .nth(self.tracer.max_path_tag_length)
            .map_or(path, |(i, _)| &path[..i]);
        tag(
            "http.url",
            format!(
                "{}://{}{cut}",
                info.scheme,
                info.authority.as_deref().unwrap_or("")
            ),
        );
        if let Some(m) = &info.method {
            tag("http.method", m.to_string());
        }
        tag(
            "downstream_cluster",
            header("x-envoy-downstream-service-cluster").unwrap_or_else(|| "-".into()),
        );
        tag(
            "user_agent",
            header("user-agent").unwrap_or_else(|| "-".into()),
        );
        if let Some(p) = info.protocol {
            tag("http.protocol", p.to_string());
        }
        tag("peer.address", info.downstream_remote.ip().to_string());
        tag("request_size", info.bytes_received.to_string());
        tag("response_size", info.bytes_sent.to_string());
        let status = info.response_code.unwrap_or(0);
        tag("http.status_code", status.to_string());
        tag("response_flags", info.flags.short());
        if let Some(c) = &info.upstream_cluster {
            tag("upstream_cluster", c.to_string());
            tag(
                "upstream_cluster.name",
                info.upstream_cluster_stat
                    .as_deref()
                    .unwrap_or(c)
                    .to_string(),
            );
        }
        if status == 0 || status >= 500 {
            tag("error", "true".into());
        }
        for (k, v) in self.fixed_tags.iter().chain(&self.header_tags) {
            tag(k, v.clone());
        }
        tags
    }
}

/// How a finished span is reported: its context, name, times and kind.
struct Shape<'a> {
    context: &'a Context,
    name: &'a str,
    start: SystemTime,
    started: Instant,
    /// A client span (Zipkin `CLIENT`, OpenTelemetry `SPAN_KIND_CLIENT`), else a server one.
    client: bool,
    /// The context came from the caller (OpenTelemetry's remote parent).
    remote_parent: bool,
}

impl Shape<'_> {
    /// Hands the span with `tags` to this worker's reporter.
    fn report(&self, worker: &Rc<Worker>, provider: &Provider, tags: &[(String, String)]) {
        let pending = match provider {
            Provider::Zipkin(z) => Pending::Zipkin(self.zipkin_json(z, tags)),
            Provider::OpenTelemetry(_) => Pending::Otlp(self.otlp(tags, SystemTime::now())),
        };
        report(worker, provider, pending);
    }

    /// The span as Zipkin's JSON v2.
    fn zipkin_json(&self, z: &Zipkin, tags: &[(String, String)]) -> String {
        use serde_json::{json, Map, Value};
        let c = self.context;
        let micros = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64)
        };
        let start = micros(self.start);
        let duration = self.started.elapsed().as_micros() as u64;
        let (_, service, _) = node();
        let mut tag_map = Map::new();
        for (k, v) in tags {
            tag_map.insert(k.clone(), Value::String(v.clone()));
        }
        let mut endpoint = Map::new();
        endpoint.insert("serviceName".into(), Value::String(service.clone()));
        match crate::http::conn_manager_utility::machine_address() {
            Some(std::net::IpAddr::V4(a)) => {
                endpoint.insert("ipv4".into(), Value::String(a.to_string()));
            }
            Some(std::net::IpAddr::V6(a)) => {
                endpoint.insert("ipv6".into(), Value::String(a.to_string()));
            }
            None => {}
        }
        endpoint.insert("port".into(), json!(0));
        let mut span = Map::new();
        span.insert("traceId".into(), Value::String(c.trace_id()));
        if let Some(p) = c.parent {
            span.insert("parentId".into(), Value::String(format!("{p:016x}")));
        }
        span.insert("id".into(), Value::String(format!("{:016x}", c.id)));
        span.insert(
            "kind".into(),
            Value::String(if self.client { "CLIENT" } else { "SERVER" }.into()),
        );
        span.insert("name".into(), Value::String(self.name.to_string()));
        span.insert("timestamp".into(), json!(start));
        span.insert("duration".into(), json!(duration));
        span.insert("localEndpoint".into(), Value::Object(endpoint));
        span.insert(
            "annotations".into(),
            json!([{ "timestamp": start + duration,
                     "value": if self.client { "cr" } else { "ss" } }]),
        );
        span.insert("tags".into(), Value::Object(tag_map));
        if !self.client && z.shared_span_context {
            span.insert("shared".into(), Value::Bool(true));
        }
        Value::Object(span).to_string()
    }

    /// The span as OpenTelemetry's: its tags as string attributes, an error status for a 5xx
    /// (and for a client span's 4xx), Envoy's flags (sampled, and whether the parent
    /// is remote).
    fn otlp(&self, tags: &[(String, String)], end: SystemTime) -> otlp::Span {
        let c = self.context;
        let nanos = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        let mut trace_id = c.trace_high.unwrap_or(0).to_be_bytes().to_vec();
        trace_id.extend_from_slice(&c.trace.to_be_bytes());
        let status_code = tags
            .iter()
            .find(|(k, _)| k == "http.status_code")
            .and_then(|(_, v)| v.parse::<u16>().ok())
            .unwrap_or(0);
        // The status follows the response's code only (measured: a failed connect's span,
        // code 0 and tagged `error`, has none).
        let error = status_code >= 500 || (self.client && status_code >= 400);
        const SAMPLED: u32 = 0x1;
        const HAS_IS_REMOTE: u32 = 0x100;
        const IS_REMOTE: u32 = 0x200;
        otlp::Span {
            trace_id,
            span_id: c.id.to_be_bytes().to_vec(),
            trace_state: match &c.form {
                Form::W3c(s) => s.to_string(),
                _ => String::new(),
            },
            parent_span_id: c
                .parent
                .map(|p| p.to_be_bytes().to_vec())
                .unwrap_or_default(),
            name: self.name.to_string(),
            kind: if self.client { 3 } else { 2 },
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(end),
            attributes: tags.iter().map(|(k, v)| otlp::attribute(k, v)).collect(),
            status: error.then(|| otlp::Status {
                message: String::new(),
                code: 2,
            }),
            flags: SAMPLED | HAS_IS_REMOTE | if self.remote_parent { IS_REMOTE } else { 0 },
        }
    }
}

/// What the router needs to give each upstream request a span of its own (the tracer's
/// `spawn_upstream_span`, the router's `start_child_span`): the tracer, the stream's span
/// context (their parent) and the custom tags the request gave. A request extension.
#[derive(Debug, Clone)]
pub struct Spawn(Arc<SpawnFrom>);

#[derive(Debug)]
struct SpawnFrom {
    tracer: Arc<HttpTracer>,
    /// The route's or the connection manager's `upstream_operation`.
    upstream_operation: Option<Arc<crate::access_log::Format>>,
    parent: Context,
    /// The stream's custom tags.
    tags: Vec<(String, String)>,
}

impl Spawn {
    /// The span of one upstream request (attempt `attempt`, from 1) to `cluster` (reported
    /// under its observability name `stat_name`) at `address`: Envoy's `router <cluster>
    /// egress`, a child of the stream's span, whose context goes upstream instead. `request`
    /// and `downstream` (the stream's remote and local addresses) are what an
    /// `upstream_operation` reads.
    #[allow(clippy::too_many_arguments)]
    pub fn child(
        &self,
        worker: &Rc<Worker>,
        cluster: &str,
        stat_name: &str,
        address: std::net::SocketAddr,
        attempt: u32,
        request: &http::request::Parts,
        downstream: (std::net::SocketAddr, std::net::SocketAddr),
    ) -> UpstreamSpan {
        // The upstream operation's view of the stream: the request as it goes upstream and
        // the host it goes to, and the response's status once known.
        let record = self.0.upstream_operation.as_ref().map(|_| {
            let mut info = crate::stream_info::StreamInfo::new(downstream.0, downstream.1);
            info.request_headers = request.headers.clone();
            info.method = Some(request.method.clone());
            info.path = request.uri.path_and_query().map(|p| p.as_str().to_string());
            info.authority = request
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| request.uri.authority().map(|a| a.as_str()))
                .map(str::to_string);
            info.upstream_host = Some(address);
            info.upstream_cluster = Some(cluster.into());
            info.upstream_cluster_stat = Some(stat_name.into());
            Box::new(info)
        });
        let p = &self.0.parent;
        // An OpenTelemetry sampler decides for the child too, its parent's decision known.
        let sampled = match &self.0.tracer.provider {
            Provider::OpenTelemetry(o) => o.sampler.as_ref().map_or(p.sampled, |s| {
                s.sampled(Some(p.sampled), p.trace_high.unwrap_or(0))
            }),
            Provider::Zipkin(_) => p.sampled,
        };
        UpstreamSpan {
            spawn: self.clone(),
            worker: worker.clone(),
            context: Context {
                id: new_id(),
                parent: Some(p.id),
                sampled,
                ..p.clone()
            },
            name: format!("router {stat_name} egress"),
            record,
            start: SystemTime::now(),
            started: Instant::now(),
            cluster: cluster.to_string(),
            stat_name: stat_name.to_string(),
            address,
            retry: (attempt > 1).then(|| attempt - 1),
            status: None,
            protocol: None,
            flag: None,
            reason: None,
            canceled: false,
        }
    }
}

/// The span of one upstream request, reported when it is dropped (its upstream request
/// ended), with what was learnt of it on the way.
#[derive(Debug)]
pub struct UpstreamSpan {
    spawn: Spawn,
    worker: Rc<Worker>,
    context: Context,
    name: String,
    /// What the `upstream_operation` renders from, when there is one.
    record: Option<Box<crate::stream_info::StreamInfo>>,
    start: SystemTime,
    started: Instant,
    cluster: String,
    stat_name: String,
    address: std::net::SocketAddr,
    /// `retry.count`: the attempts before this one.
    retry: Option<u32>,
    /// The response's status, once its head came.
    pub status: Option<u16>,
    /// The upstream protocol, once a connection was had.
    pub protocol: Option<&'static str>,
    /// Why it failed (`UF`, …), and the reset's reason (`error.reason`).
    flag: Option<crate::stream_info::ResponseFlag>,
    reason: Option<String>,
    /// The router reset it (a retry, a timeout, the client gone): `canceled`.
    pub canceled: bool,
}

impl UpstreamSpan {
    /// What goes upstream.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The request failed before a response with `flag`, for the reason its details name
    /// (`…{remote_connection_failure}` is Envoy's `remote connection failure`).
    pub fn failed(&mut self, flag: Option<crate::stream_info::ResponseFlag>, details: &str) {
        self.flag = flag;
        self.reason = details
            .split_once('{')
            .and_then(|(_, r)| r.strip_suffix('}'))
            .map(|r| r.replace('_', " "));
    }

    /// The tags, as Envoy's router finalizes an upstream span.
    fn tags(&self) -> Vec<(String, String)> {
        let mut tags: Vec<(String, String)> = Vec::new();
        let mut tag = |k: &str, v: String| tags.push((k.to_string(), v));
        if let Some(n) = self.retry {
            tag("retry.count", n.to_string());
        }
        if self.canceled {
            tag("canceled", "true".into());
        }
        if let Some(r) = &self.reason {
            tag("error.reason", r.clone());
        }
        tag("http.protocol", self.protocol.unwrap_or("-").into());
        tag("upstream_address", self.address.to_string());
        tag("peer.address", self.address.to_string());
        tag("component", "proxy".into());
        tag("upstream_cluster", self.cluster.clone());
        tag("upstream_cluster.name", self.stat_name.clone());
        let status = self.status.unwrap_or(0);
        tag("http.status_code", status.to_string());
        let mut flags = crate::stream_info::ResponseFlags::default();
        if let Some(f) = self.flag {
            flags.set(f);
        }
        tag("response_flags", flags.short());
        if status == 0 || status >= 500 || self.reason.is_some() {
            tag("error", "true".into());
        }
        for (k, v) in &self.spawn.0.tags {
            tag(k, v.clone());
        }
        tags
    }
}

impl Drop for UpstreamSpan {
    fn drop(&mut self) {
        if !self.context.sampled {
            return;
        }
        let tags = self.tags();
        let tracer = &self.spawn.0.tracer;
        // The upstream operation names the span as it ends; an empty name leaves Envoy's.
        let mut name = std::borrow::Cow::Borrowed(self.name.as_str());
        if let (Some(f), Some(info)) = (&self.spawn.0.upstream_operation, self.record.as_mut()) {
            // The stream's response code: none yet for an attempt the router gave up on.
            info.response_code = self.status.filter(|_| !self.canceled);
            let op = crate::access_log::header_value(f, info, None, None);
            if !op.is_empty() {
                name = std::borrow::Cow::Owned(op);
            }
        }
        Shape {
            context: &self.context,
            name: &name,
            start: self.start,
            started: self.started,
            client: true,
            remote_parent: false,
        }
        .report(&self.worker, &tracer.provider, &tags);
    }
}

/// A finished span waiting to be sent.
enum Pending {
    Zipkin(String),
    Otlp(otlp::Span),
}

/// A worker's reporter for one tracer configuration: the spans waiting, and its stats.
struct Reporter {
    provider: Provider,
    spans: RefCell<Vec<Pending>>,
    stats: ReporterStats,
}

/// `tracing.zipkin.*` or `tracing.opentelemetry.*`.
struct ReporterStats {
    spans_sent: Counter,
    timer_flushed: Counter,
    /// Zipkin's reports: accepted (202), answered otherwise, failed, without a cluster.
    reports_sent: Option<Counter>,
    reports_dropped: Option<Counter>,
    reports_failed: Option<Counter>,
    reports_skipped_no_cluster: Option<Counter>,
    /// OpenTelemetry's spans whose export failed.
    spans_dropped: Option<Counter>,
}

fn same(a: &Provider, b: &Provider) -> bool {
    match (a, b) {
        (Provider::Zipkin(a), Provider::Zipkin(b)) => Arc::ptr_eq(a, b),
        (Provider::OpenTelemetry(a), Provider::OpenTelemetry(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// Whether only the reporters' list holds the configuration any more.
fn orphaned(p: &Provider) -> bool {
    match p {
        Provider::Zipkin(z) => Arc::strong_count(z) <= 1,
        Provider::OpenTelemetry(o) => Arc::strong_count(o) <= 1,
    }
}

/// The runtime keys' prefix of a tracer.
fn prefix(p: &Provider) -> &'static str {
    match p {
        Provider::Zipkin(_) => "tracing.zipkin",
        Provider::OpenTelemetry(_) => "tracing.opentelemetry",
    }
}

thread_local! {
    /// This worker's reporters, by configuration object.
    static REPORTERS: RefCell<Vec<Rc<Reporter>>> = const { RefCell::new(Vec::new()) };
}

/// Hands a finished span to this worker's reporter for `provider`, which sends a batch once it
/// holds `tracing.<tracer>.min_flush_spans` (default 5).
fn report(worker: &Rc<Worker>, provider: &Provider, span: Pending) {
    let reporter = REPORTERS.with(|all| {
        let mut all = all.borrow_mut();
        // Reporters of configurations gone (only this list holds them) go too.
        all.retain(|r| !orphaned(&r.provider) || same(&r.provider, provider));
        if let Some(r) = all.iter().find(|r| same(&r.provider, provider)) {
            return r.clone();
        }
        let zipkin = matches!(provider, Provider::Zipkin(_));
        let c = |n: &str| worker.shard.counter(&format!("{}.{n}", prefix(provider)));
        let z = |n: &str| zipkin.then(|| c(n));
        let r = Rc::new(Reporter {
            provider: provider.clone(),
            spans: RefCell::new(Vec::new()),
            stats: ReporterStats {
                spans_sent: c("spans_sent"),
                timer_flushed: c("timer_flushed"),
                reports_sent: z("reports_sent"),
                reports_dropped: z("reports_dropped"),
                reports_failed: z("reports_failed"),
                reports_skipped_no_cluster: z("reports_skipped_no_cluster"),
                spans_dropped: (!zipkin).then(|| c("spans_dropped")),
            },
        });
        all.push(r.clone());
        start_timer(worker, Rc::downgrade(&r));
        r
    });
    let min = crate::runtime::snapshot()
        .integer(&format!("{}.min_flush_spans", prefix(provider)), 5)
        .max(1) as usize;
    let full = {
        let mut spans = reporter.spans.borrow_mut();
        spans.push(span);
        spans.len() >= min
    };
    if full {
        flush(worker, &reporter);
    }
}

/// Sends what waits every `tracing.<tracer>.flush_interval_ms` (default 5000), for as long as
/// the reporter lives.
fn start_timer(worker: &Rc<Worker>, reporter: Weak<Reporter>) {
    let worker = worker.clone();
    tokio::task::spawn_local(async move {
        loop {
            let key = match reporter.upgrade() {
                Some(r) => format!("{}.flush_interval_ms", prefix(&r.provider)),
                None => return,
            };
            let ms = crate::runtime::snapshot().integer(&key, 5000).max(1);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            let Some(r) = reporter.upgrade() else {
                return;
            };
            r.stats.timer_flushed.inc();
            flush(&worker, &r);
        }
    });
}

fn inc(c: &Option<Counter>) {
    if let Some(c) = c {
        c.inc();
    }
}

/// Sends the waiting spans: a Zipkin JSON list posted to the collector, or one OTLP export.
fn flush(worker: &Rc<Worker>, r: &Rc<Reporter>) {
    let spans = std::mem::take(&mut *r.spans.borrow_mut());
    if spans.is_empty() {
        return;
    }
    match &r.provider {
        Provider::Zipkin(z) => flush_zipkin(worker, r, z, spans),
        Provider::OpenTelemetry(o) => flush_otlp(worker, r, o, spans),
    }
}

fn flush_zipkin(worker: &Rc<Worker>, r: &Rc<Reporter>, z: &Zipkin, spans: Vec<Pending>) {
    let Some(cluster) = worker.clusters.get(&z.cluster) else {
        inc(&r.stats.reports_skipped_no_cluster);
        return;
    };
    let spans: Vec<String> = spans
        .into_iter()
        .filter_map(|p| match p {
            Pending::Zipkin(s) => Some(s),
            Pending::Otlp(_) => None,
        })
        .collect();
    r.stats.spans_sent.add(spans.len() as u64);
    let body = format!("[{}]", spans.join(","));
    // As Envoy's own requests go: marked internal, from this machine, with their timeout.
    let mut b = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://{}{}", z.hostname, z.endpoint))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-envoy-internal", "true");
    if let Some(ip) = crate::http::conn_manager_utility::machine_address() {
        b = b.header("x-forwarded-for", ip.to_string());
    }
    let head = b
        .header("x-envoy-expected-rq-timeout-ms", "5000")
        .body(())
        .map(|r| r.into_parts().0);
    let Ok(head) = head else {
        inc(&r.stats.reports_failed);
        return;
    };
    let worker = worker.clone();
    let r = r.clone();
    tokio::task::spawn_local(async move {
        let sent = crate::http::filters::router::own_request(
            &worker,
            &cluster,
            head,
            bytes::Bytes::from(body),
            Some(std::time::Duration::from_secs(5)),
        )
        .await;
        match sent {
            // A collector accepts with 202; anything else drops the report (Envoy's count).
            Ok((parts, _, _)) if parts.status == http::StatusCode::ACCEPTED => {
                inc(&r.stats.reports_sent)
            }
            Ok(_) => inc(&r.stats.reports_dropped),
            Err(_) => inc(&r.stats.reports_failed),
        }
    });
}

/// The resource every export names: the service, and the SDK that made the spans.
fn resource(o: &OpenTelemetry) -> otlp::Resource {
    let mut attributes = Vec::new();
    if o.set_service_name {
        attributes.push(otlp::attribute("service.name", &o.service_name));
    }
    if o.set_sdk_attributes {
        attributes.push(otlp::attribute("telemetry.sdk.language", "rust"));
        attributes.push(otlp::attribute("telemetry.sdk.name", "skiff"));
        attributes.push(otlp::attribute(
            "telemetry.sdk.version",
            env!("CARGO_PKG_VERSION"),
        ));
    }
    otlp::Resource { attributes }
}

fn flush_otlp(worker: &Rc<Worker>, r: &Rc<Reporter>, o: &Arc<OpenTelemetry>, spans: Vec<Pending>) {
    use prost::Message;
    let spans: Vec<otlp::Span> = spans
        .into_iter()
        .filter_map(|p| match p {
            Pending::Otlp(s) => Some(s),
            Pending::Zipkin(_) => None,
        })
        .collect();
    let count = spans.len() as u64;
    let Some(cluster) = worker.clusters.get(&o.cluster) else {
        inc(&r.stats.spans_dropped);
        return;
    };
    let request = otlp::ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(resource(o)),
            scope_spans: vec![otlp::ScopeSpans {
                // The scope Envoy names ("envoy"), with this proxy's version.
                scope: o.set_scope.then(|| otlp::InstrumentationScope {
                    name: "envoy".into(),
                    version: format!("skiff {}", env!("CARGO_PKG_VERSION")),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    let message = request.encode_to_vec();
    let worker = worker.clone();
    let r = r.clone();
    let o = o.clone();
    tokio::task::spawn_local(async move {
        let call = crate::http::grpc_call::unary(
            &worker,
            &cluster,
            (&o.authority, &o.metadata),
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            &message,
            None,
        );
        let done = match o.timeout {
            Some(t) => tokio::time::timeout(t, call)
                .await
                .unwrap_or_else(|_| Err("timed out".into())),
            None => call.await,
        };
        match done {
            Ok(_) => r.stats.spans_sent.add(count),
            Err(e) => {
                tracing::debug!(error = %e, "OpenTelemetry export failed");
                if let Some(d) = &r.stats.spans_dropped {
                    d.add(count);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(egress: bool, shared: bool) -> Arc<HttpTracer> {
        Arc::new(HttpTracer {
            provider: Provider::Zipkin(Arc::new(Zipkin {
                cluster: "zipkin".into(),
                endpoint: "/api/v2/spans".into(),
                hostname: "zipkin".into(),
                trace_id_128bit: false,
                shared_span_context: shared,
            })),
            custom_tags: Vec::new(),
            max_path_tag_length: 256,
            egress,
            spawn_upstream_span: false,
            operation: None,
            upstream_operation: None,
        })
    }

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn b3_context_continued_as_envoy_does() {
        let incoming = [
            ("x-b3-traceid", "0000000000000abc"),
            ("x-b3-spanid", "0000000000000def"),
            ("x-b3-parentspanid", "0000000000000111"),
            ("x-b3-sampled", "1"),
        ];
        // A server span shares the client's id.
        let mut h = headers(&incoming);
        let s = Span::start(&tracer(false, true), &mut h, false, "host", (None, None));
        let mut up = HeaderMap::new();
        s.context().expect("a context").inject(&mut up);
        assert_eq!(up["x-b3-traceid"], "0000000000000abc");
        assert_eq!(up["x-b3-spanid"], "0000000000000def");
        assert_eq!(up["x-b3-parentspanid"], "0000000000000111");
        assert_eq!(up["x-b3-sampled"], "1");
        // A client span (or without shared context) is the incoming span's child.
        for t in [tracer(true, true), tracer(false, false)] {
            let mut h = headers(&incoming);
            let s = Span::start(&t, &mut h, false, "host", (None, None));
            let mut up = HeaderMap::new();
            s.context().expect("a context").inject(&mut up);
            assert_ne!(up["x-b3-spanid"], "0000000000000def");
            assert_eq!(up["x-b3-parentspanid"], "0000000000000def");
        }
        // A new trace: the span's id is the trace's; the decision samples it.
        let mut h = headers(&[("x-b3-sampled", "0")]);
        let s = Span::start(&tracer(false, true), &mut h, true, "host", (None, None));
        let mut up = HeaderMap::new();
        s.context().expect("a context").inject(&mut up);
        assert_eq!(up["x-b3-traceid"], up["x-b3-spanid"]);
        assert_eq!(up["x-b3-sampled"], "0");
        assert!(up.get("x-b3-parentspanid").is_none());
        // B3's single header goes on as a single header.
        let mut h = headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]);
        let s = Span::start(&tracer(false, true), &mut h, false, "host", (None, None));
        let mut up = HeaderMap::new();
        s.context().expect("a context").inject(&mut up);
        assert_eq!(
            up["b3"],
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"
        );
        assert!(up.get("x-b3-traceid").is_none());
    }

    #[test]
    fn decorators_name_spans_and_travel_as_envoy_sends_them() {
        let mut h = headers(&[("x-envoy-decorator-operation", "from-client")]);
        let s = Span::start(
            &tracer(false, true),
            &mut h,
            true,
            "h",
            (Some(("op", true)), None),
        );
        assert_eq!(s.name, "from-client");
        assert!(h.get("x-envoy-decorator-operation").is_none());
        assert_eq!(s.response_operation(), None);
        let mut h = HeaderMap::new();
        let s = Span::start(
            &tracer(false, true),
            &mut h,
            true,
            "h",
            (Some(("op", true)), None),
        );
        assert_eq!(
            (s.name.as_str(), s.response_operation()),
            ("op", Some("op"))
        );
        let mut h = headers(&[("x-envoy-decorator-operation", "from-client")]);
        let s = Span::start(
            &tracer(true, true),
            &mut h,
            true,
            "h",
            (Some(("op", true)), None),
        );
        assert_eq!(s.name, "op");
        assert_eq!(h["x-envoy-decorator-operation"], "op");
        let mut h = headers(&[("x-envoy-decorator-operation", "from-client")]);
        let s = Span::start(
            &tracer(true, true),
            &mut h,
            true,
            "h",
            (Some(("op", false)), None),
        );
        assert_eq!(s.name, "op");
        assert_eq!(h["x-envoy-decorator-operation"], "from-client");
    }
}
