//! Envoy's Zipkin tracer (`envoy.tracers.zipkin`): a span for each request the connection
//! manager traces, its B3 context read from the request (`x-b3-*` or `b3`) and written to the
//! upstream request, and, when sampled, the finished span reported as Zipkin's JSON v2 to the
//! collector cluster in batches (`tracing.zipkin.min_flush_spans` spans, or every
//! `tracing.zipkin.flush_interval_ms`), as Envoy's driver does.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::trace::{CustomTag, HttpTracer, Zipkin};
use crate::stats::Counter;
use crate::stream_info::StreamInfo;
use crate::worker::Worker;

static X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
static B3: HeaderName = HeaderName::from_static("b3");
/// `x-envoy-decorator-operation`.
pub static DECORATOR_OPERATION: HeaderName = HeaderName::from_static("x-envoy-decorator-operation");

/// The node the spans name (`node_id`, `zone`, the service name), set once at start-up.
static NODE: std::sync::OnceLock<(String, String, String)> = std::sync::OnceLock::new();

/// Sets the node's id, cluster and zone (once, at start-up).
pub fn set_node(id: &str, cluster: &str, zone: &str) {
    let _ = NODE.set((id.to_string(), cluster.to_string(), zone.to_string()));
}

fn node() -> &'static (String, String, String) {
    NODE.get_or_init(Default::default)
}

/// What goes upstream of a span: its context, in the form the request brought (B3's single
/// header, or the multiple ones).
#[derive(Debug, Clone, Copy)]
pub struct Context {
    trace_high: Option<u64>,
    trace: u64,
    id: u64,
    parent: Option<u64>,
    sampled: bool,
    single: bool,
}

impl Context {
    fn trace_id(&self) -> String {
        match self.trace_high {
            Some(h) => format!("{h:016x}{:016x}", self.trace),
            None => format!("{:016x}", self.trace),
        }
    }

    /// Writes the context into an upstream request, as Envoy's Zipkin span injects it.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let hv = |s: String| HeaderValue::from_str(&s).ok();
        if self.single {
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
    context: Context,
    name: String,
    start: SystemTime,
    started: Instant,
    /// `custom_tags` that read the request, as they were when it arrived.
    header_tags: Vec<(String, String)>,
    /// The route's decorator operation to return on an ingress response (Envoy's
    /// `decorated_operation_` with `propagate`).
    response_operation: Option<String>,
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

fn incoming(headers: &HeaderMap) -> Incoming {
    let get = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    let sampled_flag = |s: &str| match s {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    };
    if let Some(b3) = get(&B3) {
        let parts: Vec<&str> = b3.split('-').collect();
        if parts.len() == 1 {
            return Incoming {
                ids: None,
                sampled: sampled_flag(parts[0]),
                single: true,
            };
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
        return Incoming {
            sampled: parts.get(2).and_then(|s| sampled_flag(s)),
            ids,
            single: true,
        };
    }
    let sampled = get(&X_B3_SAMPLED)
        .and_then(sampled_flag)
        .or_else(|| (get(&X_B3_FLAGS) == Some("1")).then_some(true));
    let ids = (|| {
        let trace = trace_id(get(&X_B3_TRACE_ID)?)?;
        let span = hex64(get(&X_B3_SPAN_ID)?)?;
        let parent = match get(&X_B3_PARENT_SPAN_ID) {
            Some(p) => Some(hex64(p)?),
            None => None,
        };
        Some((trace, span, parent))
    })();
    Incoming {
        ids,
        sampled,
        single: false,
    }
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
        decorator: Option<(&str, bool)>,
    ) -> Span {
        let z: &Zipkin = &tracer.zipkin;
        let inc = incoming(headers);
        let sampled = inc.sampled.unwrap_or(traced);
        let context = match inc.ids {
            Some((trace, span, parent)) => {
                let (id, parent) = if !tracer.egress && z.shared_span_context {
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
                    single: inc.single,
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
                    single: false,
                }
            }
        };
        let mut name = host.to_string();
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
        if !tracer.egress {
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
        let header_tags = tracer
            .custom_tags
            .iter()
            .filter_map(|t| match t {
                CustomTag::RequestHeader { tag, name, default } => headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| default.clone())
                    .map(|v| (tag.clone(), v)),
                CustomTag::Fixed { .. } => None,
            })
            .collect();
        Span {
            tracer: tracer.clone(),
            context,
            name,
            start: SystemTime::now(),
            started: Instant::now(),
            header_tags,
            response_operation,
        }
    }

    /// What goes upstream.
    pub fn context(&self) -> Context {
        self.context
    }

    /// The operation an ingress response carries (`x-envoy-decorator-operation`).
    pub fn response_operation(&self) -> Option<&str> {
        self.response_operation.as_deref()
    }

    /// Ends the span with what the stream's record says, and reports it if it is sampled.
    pub fn finish(self, info: &StreamInfo, worker: &Rc<Worker>) {
        if !self.context.sampled {
            return;
        }
        let json = self.to_json(info);
        report(worker, &self.tracer.zipkin, json);
    }

    /// The span as Zipkin's JSON v2.
    fn to_json(&self, info: &StreamInfo) -> String {
        use serde_json::{json, Map, Value};
        let micros = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64)
        };
        let start = micros(self.start);
        let duration = self.started.elapsed().as_micros() as u64;
        let (node_id, service, zone) = node();
        let mut tags = Map::new();
        let mut tag = |k: &str, v: String| {
            tags.insert(k.to_string(), Value::String(v));
        };
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
            tag(
                "upstream_cluster",
                info.upstream_cluster_stat
                    .as_deref()
                    .unwrap_or(c)
                    .to_string(),
            );
            tag("upstream_cluster.name", c.to_string());
        }
        if status == 0 || status >= 500 {
            tag("error", "true".into());
        }
        for t in &self.tracer.custom_tags {
            if let CustomTag::Fixed {
                tag: name,
                value: Some(v),
            } = t
            {
                tag(name, v.clone());
            }
        }
        for (k, v) in &self.header_tags {
            tag(k, v.clone());
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
        let c = &self.context;
        let mut span = Map::new();
        span.insert("traceId".into(), Value::String(c.trace_id()));
        if let Some(p) = c.parent {
            span.insert("parentId".into(), Value::String(format!("{p:016x}")));
        }
        span.insert("id".into(), Value::String(format!("{:016x}", c.id)));
        span.insert(
            "kind".into(),
            Value::String(
                if self.tracer.egress {
                    "CLIENT"
                } else {
                    "SERVER"
                }
                .into(),
            ),
        );
        span.insert("name".into(), Value::String(self.name.clone()));
        span.insert("timestamp".into(), json!(start));
        span.insert("duration".into(), json!(duration));
        span.insert("localEndpoint".into(), Value::Object(endpoint));
        span.insert(
            "annotations".into(),
            json!([{ "timestamp": start + duration,
                     "value": if self.tracer.egress { "cr" } else { "ss" } }]),
        );
        span.insert("tags".into(), Value::Object(tags));
        if !self.tracer.egress && self.tracer.zipkin.shared_span_context {
            span.insert("shared".into(), Value::Bool(true));
        }
        Value::Object(span).to_string()
    }
}

/// A worker's reporter for one Zipkin configuration: the spans waiting, and its stats.
struct Reporter {
    config: Arc<Zipkin>,
    spans: RefCell<Vec<String>>,
    stats: ReporterStats,
}

struct ReporterStats {
    spans_sent: Counter,
    timer_flushed: Counter,
    reports_sent: Counter,
    reports_dropped: Counter,
    reports_failed: Counter,
    reports_skipped_no_cluster: Counter,
}

thread_local! {
    /// This worker's reporters, by configuration object.
    static REPORTERS: RefCell<Vec<Rc<Reporter>>> = const { RefCell::new(Vec::new()) };
}

/// Hands a finished span to this worker's reporter for `config`, which sends a batch once it
/// holds `tracing.zipkin.min_flush_spans` (default 5).
fn report(worker: &Rc<Worker>, config: &Arc<Zipkin>, span: String) {
    let reporter = REPORTERS.with(|all| {
        let mut all = all.borrow_mut();
        // Reporters of configurations gone (only this list holds them) go too.
        all.retain(|r| Arc::strong_count(&r.config) > 1 || Arc::ptr_eq(&r.config, config));
        if let Some(r) = all.iter().find(|r| Arc::ptr_eq(&r.config, config)) {
            return r.clone();
        }
        let c = |n: &str| worker.shard.counter(&format!("tracing.zipkin.{n}"));
        let r = Rc::new(Reporter {
            config: config.clone(),
            spans: RefCell::new(Vec::new()),
            stats: ReporterStats {
                spans_sent: c("spans_sent"),
                timer_flushed: c("timer_flushed"),
                reports_sent: c("reports_sent"),
                reports_dropped: c("reports_dropped"),
                reports_failed: c("reports_failed"),
                reports_skipped_no_cluster: c("reports_skipped_no_cluster"),
            },
        });
        all.push(r.clone());
        start_timer(worker, Rc::downgrade(&r));
        r
    });
    let min = crate::runtime::snapshot()
        .integer("tracing.zipkin.min_flush_spans", 5)
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

/// Sends what waits every `tracing.zipkin.flush_interval_ms` (default 5000), for as long as
/// the reporter lives.
fn start_timer(worker: &Rc<Worker>, reporter: Weak<Reporter>) {
    let worker = worker.clone();
    tokio::task::spawn_local(async move {
        loop {
            let ms = crate::runtime::snapshot()
                .integer("tracing.zipkin.flush_interval_ms", 5000)
                .max(1);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            let Some(r) = reporter.upgrade() else {
                return;
            };
            r.stats.timer_flushed.inc();
            flush(&worker, &r);
        }
    });
}

/// Posts the waiting spans to the collector as one JSON list.
fn flush(worker: &Rc<Worker>, r: &Rc<Reporter>) {
    let spans = std::mem::take(&mut *r.spans.borrow_mut());
    if spans.is_empty() {
        return;
    }
    let z = &r.config;
    let Some(cluster) = worker.clusters.get(&z.cluster) else {
        r.stats.reports_skipped_no_cluster.inc();
        return;
    };
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
        r.stats.reports_failed.inc();
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
                r.stats.reports_sent.inc()
            }
            Ok(_) => r.stats.reports_dropped.inc(),
            Err(_) => r.stats.reports_failed.inc(),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(egress: bool, shared: bool) -> Arc<HttpTracer> {
        Arc::new(HttpTracer {
            zipkin: Arc::new(Zipkin {
                cluster: "zipkin".into(),
                endpoint: "/api/v2/spans".into(),
                hostname: "zipkin".into(),
                trace_id_128bit: false,
                shared_span_context: shared,
            }),
            custom_tags: Vec::new(),
            max_path_tag_length: 256,
            egress,
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
        let s = Span::start(&tracer(false, true), &mut h, false, "host", None);
        let mut up = HeaderMap::new();
        s.context().inject(&mut up);
        assert_eq!(up["x-b3-traceid"], "0000000000000abc");
        assert_eq!(up["x-b3-spanid"], "0000000000000def");
        assert_eq!(up["x-b3-parentspanid"], "0000000000000111");
        assert_eq!(up["x-b3-sampled"], "1");
        // A client span (or without shared context) is the incoming span's child.
        for t in [tracer(true, true), tracer(false, false)] {
            let mut h = headers(&incoming);
            let s = Span::start(&t, &mut h, false, "host", None);
            let mut up = HeaderMap::new();
            s.context().inject(&mut up);
            assert_ne!(up["x-b3-spanid"], "0000000000000def");
            assert_eq!(up["x-b3-parentspanid"], "0000000000000def");
        }
        // A new trace: the span's id is the trace's; the decision samples it.
        let mut h = headers(&[("x-b3-sampled", "0")]);
        let s = Span::start(&tracer(false, true), &mut h, true, "host", None);
        let mut up = HeaderMap::new();
        s.context().inject(&mut up);
        assert_eq!(up["x-b3-traceid"], up["x-b3-spanid"]);
        assert_eq!(up["x-b3-sampled"], "0");
        assert!(up.get("x-b3-parentspanid").is_none());
        // B3's single header goes on as a single header.
        let mut h = headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]);
        let s = Span::start(&tracer(false, true), &mut h, false, "host", None);
        let mut up = HeaderMap::new();
        s.context().inject(&mut up);
        assert_eq!(
            up["b3"],
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"
        );
        assert!(up.get("x-b3-traceid").is_none());
    }

    #[test]
    fn decorators_name_spans_and_travel_as_envoy_sends_them() {
        let mut h = headers(&[("x-envoy-decorator-operation", "from-client")]);
        let s = Span::start(&tracer(false, true), &mut h, true, "h", Some(("op", true)));
        assert_eq!(s.name, "from-client");
        assert!(h.get("x-envoy-decorator-operation").is_none());
        assert_eq!(s.response_operation(), None);
        let mut h = HeaderMap::new();
        let s = Span::start(&tracer(false, true), &mut h, true, "h", Some(("op", true)));
        assert_eq!(
            (s.name.as_str(), s.response_operation()),
            ("op", Some("op"))
        );
        let mut h = headers(&[("x-envoy-decorator-operation", "from-client")]);
        let s = Span::start(&tracer(true, true), &mut h, true, "h", Some(("op", true)));
        assert_eq!(s.name, "op");
        assert_eq!(h["x-envoy-decorator-operation"], "op");
        let mut h = headers(&[("x-envoy-decorator-operation", "from-client")]);
        let s = Span::start(&tracer(true, true), &mut h, true, "h", Some(("op", false)));
        assert_eq!(s.name, "op");
        assert_eq!(h["x-envoy-decorator-operation"], "from-client");
    }
}
