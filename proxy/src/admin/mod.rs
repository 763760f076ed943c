//! The admin server on `admin.address`, with Envoy's endpoints and formats. It runs on the main
//! thread; mutating endpoints are POST-only, as in Envoy.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;

mod config_dump;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::cli::Options;
use crate::config::Loaded;
use crate::config_store::Snapshot;
use crate::server::Command;
use crate::stats::{self, StatValue, Store};

/// Version string reported by `/server_info`.
pub const VERSION: &str = concat!("skiff/", env!("CARGO_PKG_VERSION"));

/// What the admin endpoints read and change.
#[derive(Debug)]
pub struct AdminState {
    /// All stats.
    pub store: Arc<Store>,
    /// The bootstrap (its dump's tree holds only the node: `bootstrap_dump` keeps the whole
    /// as text).
    pub config: Arc<Loaded>,
    /// The bootstrap as `/config_dump` shows it.
    pub bootstrap_dump: Arc<crate::config_store::CompactJson>,
    /// The configuration in force.
    pub published: Arc<ArcSwap<Snapshot>>,
    /// The command line.
    pub options: Options,
    /// Worker count.
    pub concurrency: usize,
    /// Start time.
    pub started: Instant,
    /// Set by `POST /healthcheck/fail`, cleared by `/healthcheck/ok`; workers read it too.
    pub health_failed: Arc<AtomicBool>,
    /// Set once the server drains.
    pub draining: AtomicBool,
    /// Set until the first configuration is in force (Envoy's init manager).
    pub initializing: AtomicBool,
    /// Notified by `POST /quitquitquit`.
    pub quit: Notify,
    /// Requests to the main loop.
    pub commands: mpsc::UnboundedSender<Command>,
    /// The layered runtime (`/runtime`, `/runtime_modify`).
    pub runtime: Arc<std::sync::Mutex<crate::runtime::Loader>>,
}

impl AdminState {
    fn state_name(&self) -> &'static str {
        if self.draining.load(Ordering::Relaxed) || self.health_failed.load(Ordering::Relaxed) {
            "DRAINING"
        } else if self.initializing.load(Ordering::Relaxed) {
            "INITIALIZING"
        } else {
            "LIVE"
        }
    }

    /// Updates the server gauges that depend on time and state.
    pub fn refresh_server_stats(&self) {
        let main = self.store.main();
        main.gauge("server.uptime")
            .set(self.started.elapsed().as_secs() as i64);
        // Envoy's values: LIVE 0, DRAINING 1, PRE_INITIALIZING 2, INITIALIZING 3.
        main.gauge("server.state").set(match self.state_name() {
            "LIVE" => 0,
            "DRAINING" => 1,
            _ => 3,
        });
        main.gauge("server.live")
            .set(if self.state_name() == "LIVE" { 1 } else { 0 });
    }
}

/// Serves the admin endpoints until the process ends.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let logs: Arc<[crate::config::model::AccessLog]> = state
        .config
        .model
        .admin
        .as_ref()
        .map(|a| a.access_logs.clone().into())
        .unwrap_or_else(|| Arc::from(Vec::new()));
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                continue;
            }
        };
        let state = state.clone();
        let logs = logs.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let logs = logs.clone();
                async move {
                    let req = with_form(req).await;
                    if logs.is_empty() {
                        return Ok::<_, Infallible>(handle(&state, req));
                    }
                    let mut info = crate::stream_info::StreamInfo::new(remote, local);
                    info.method = Some(req.method().clone());
                    info.path = req.uri().path_and_query().map(|p| p.as_str().to_string());
                    info.authority = req
                        .headers()
                        .get(header::HOST)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    info.protocol = Some("HTTP/1.1");
                    info.request_headers = req.headers().clone();
                    let resp = handle(&state, req);
                    info.response_code = Some(resp.status().as_u16());
                    info.response_headers = resp.headers().clone();
                    info.bytes_sent = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
                    info.finish();
                    let writer = crate::access_log::Writer::default();
                    writer.log(&logs, &info);
                    writer.flush();
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=UTF-8", body)
}

fn with_type(
    status: StatusCode,
    ctype: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, max-age=0"),
    );
    h.insert(
        "x-content-type-options",
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

fn json_response(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(v).unwrap_or_default();
    with_type(StatusCode::OK, "application/json", body)
}

const ENDPOINTS: &[(&str, &str, bool)] = &[
    ("/", "Admin home page", false),
    ("/clusters", "upstream cluster status", false),
    ("/config_dump", "dump current Envoy configs", false),
    (
        "/drain_listeners",
        "drain listeners (inboundonly: only inbound ones; graceful: let connections close first)",
        true,
    ),
    (
        "/healthcheck/fail",
        "cause the server to fail health checks",
        true,
    ),
    (
        "/healthcheck/ok",
        "cause the server to pass health checks",
        true,
    ),
    ("/help", "print out list of admin commands", false),
    ("/listeners", "print listener info", false),
    ("/quitquitquit", "exit the server", true),
    ("/runtime", "print runtime values", false),
    ("/runtime_modify", "Adds or modifies runtime values as passed in query parameters. To delete a previously added key, use an empty string as the value. Note that deletion only applies to overrides added via this endpoint; values loaded from disk can be modified via override but not deleted. E.g. ?key1=value1&key2=value2...", true),
    (
        "/ready",
        "print server state, return 200 if LIVE, otherwise return 503",
        false,
    ),
    (
        "/server_info",
        "print server version/status information",
        false,
    ),
    ("/stats", "print server stats", false),
    (
        "/stats/prometheus",
        "print server stats in prometheus format",
        false,
    ),
];

fn help() -> String {
    let mut s = String::from("admin commands are:\n");
    for (path, what, _) in ENDPOINTS {
        s.push_str(&format!("  {path}: {what}\n"));
    }
    s
}

fn query(req: &Request<String>) -> BTreeMap<String, String> {
    form(req.uri().query().unwrap_or(""))
}

fn form(text: &str) -> BTreeMap<String, String> {
    text.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), percent_decode(v)),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request with its body read when it may carry form values (`/runtime_modify`), which
/// then count as query parameters.
async fn with_form(req: Request<Incoming>) -> Request<String> {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let text = if parts.uri.path() == "/runtime_modify" && parts.method == Method::POST {
        match http_body_util::Limited::new(body, 64 * 1024)
            .collect()
            .await
        {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(_) => String::new(),
        }
    } else {
        String::new()
    };
    Request::from_parts(parts, text)
}

fn handle(state: &AdminState, req: Request<String>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let Some((_, _, post_only)) = ENDPOINTS.iter().find(|(p, _, _)| *p == path) else {
        return text(StatusCode::NOT_FOUND, format!("invalid path. {}", help()));
    };
    if *post_only && req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Method {} not allowed, POST required.", req.method()),
        );
    }
    let q = query(&req);
    match path.as_str() {
        "/" | "/help" => text(StatusCode::OK, help()),
        "/ready" => {
            let s = state.state_name();
            let code = if s == "LIVE" {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(code, format!("{s}\n"))
        }
        "/healthcheck/fail" => {
            state.health_failed.store(true, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n")
        }
        "/healthcheck/ok" => {
            state.health_failed.store(false, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n")
        }
        "/quitquitquit" => {
            state.quit.notify_one();
            text(StatusCode::OK, "OK\n")
        }
        "/server_info" => json_response(&server_info(state)),
        "/stats" => stats_endpoint(state, &q),
        "/stats/prometheus" => prometheus_endpoint(state, &q),
        "/listeners" => listeners(state, &q),
        "/clusters" => clusters(state, &q),
        "/config_dump" => config_dump::respond(state, &q),
        "/runtime" => json_response(
            &state
                .runtime
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .dump(),
        ),
        "/runtime_modify" => {
            let mut changes = q.clone();
            changes.extend(form(req.body()));
            if changes.is_empty() {
                return text(
                    StatusCode::BAD_REQUEST,
                    "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n       or send the parameters as form values\nuse an empty value to remove a previously added override",
                );
            }
            let changes: Vec<(String, String)> = changes.into_iter().collect();
            let r = state
                .runtime
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .modify(&changes);
            match r {
                Ok(()) => text(StatusCode::OK, "OK\n"),
                Err(crate::runtime::ModifyError::NoAdminLayer) => {
                    text(StatusCode::SERVICE_UNAVAILABLE, "No admin layer specified")
                }
                Err(crate::runtime::ModifyError::Refused(m)) => {
                    text(StatusCode::BAD_REQUEST, format!("{m}\n"))
                }
            }
        }
        "/drain_listeners" => {
            let cmd = Command::DrainListeners {
                inbound_only: q.contains_key("inboundonly"),
                graceful: q.contains_key("graceful"),
            };
            match state.commands.send(cmd) {
                Ok(()) => text(StatusCode::OK, "OK\n"),
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, help()),
    }
}

/// `filter`: the regex stat names must match, if any.
fn stats_filter(q: &BTreeMap<String, String>) -> Result<Option<regex::Regex>, String> {
    match q.get("filter").filter(|f| !f.is_empty()) {
        Some(f) => regex::Regex::new(f)
            .map(Some)
            .map_err(|e| format!("Invalid regex: {e}\n")),
        None => Ok(None),
    }
}

/// `/stats/prometheus`, with `filter` (on the stats' names) and `usedonly` as `/stats`.
fn prometheus_endpoint(state: &AdminState, q: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    state.refresh_server_stats();
    let filter = match stats_filter(q) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let used_only = q.contains_key("usedonly");
    let keep = |name: &str| filter.as_ref().is_none_or(|r| r.is_match(name));
    let mut snap = state.store.snapshot_where(keep);
    snap.retain(|_, v| !used_only || !matches!(v, StatValue::Counter(0) | StatValue::Gauge(0)));
    let mut histograms = state.store.histograms(keep);
    histograms.retain(|_, h| !used_only || h.used());
    let model = &state.config.model.stats;
    with_type(
        StatusCode::OK,
        "text/plain; charset=UTF-8",
        stats::prometheus_tagged(&snap, &model.tagging)
            + &stats::prometheus_histograms(&histograms, &model.tagging, &model.buckets)
            + &prometheus_endpoints(&endpoint_stats(state), &keep),
    )
}

fn stats_endpoint(state: &AdminState, q: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    state.refresh_server_stats();
    let filter = match stats_filter(q) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let used_only = q.contains_key("usedonly");
    // `type`: one kind of stat only.
    let kind = match q.get("type").map(String::as_str) {
        None | Some("All") => None,
        Some(k @ ("Counters" | "Gauges" | "Histograms" | "TextReadouts")) => Some(k),
        Some(_) => return text(StatusCode::BAD_REQUEST, "invalid &type= param"),
    };
    let wants = |k: &str| kind.is_none_or(|want| want == k);
    let keep = |name: &str| filter.as_ref().is_none_or(|r| r.is_match(name));
    let snap = state.store.snapshot_where(keep);
    let texts = state.store.texts();
    let selected = snap.iter().filter(|(name, v)| {
        let k = match v {
            StatValue::Counter(_) => "Counters",
            StatValue::Gauge(_) => "Gauges",
        };
        wants(k)
            && keep(name)
            && (!used_only || !matches!(v, StatValue::Counter(0) | StatValue::Gauge(0)))
    });
    let texts = texts
        .iter()
        .filter(|(name, v)| wants("TextReadouts") && keep(name) && (!used_only || !v.is_empty()));
    let histograms = state
        .store
        .histograms(|name| wants("Histograms") && keep(name))
        .into_iter()
        .filter(|(_, h)| !used_only || h.used());
    // The hosts' stats of `per_endpoint_stats` clusters: after the rest, `usedonly` or not, as
    // Envoy lists them.
    let endpoints: Vec<(String, u64)> = endpoint_stats(state)
        .iter()
        .flat_map(|e| {
            e.values
                .iter()
                .filter(|(_, _, counter)| wants(if *counter { "Counters" } else { "Gauges" }))
                .map(|(n, v, _)| (e.name(n), *v))
                .collect::<Vec<_>>()
        })
        .filter(|(name, _)| keep(name))
        .collect();
    if q.get("format").map(String::as_str) == Some("json") {
        let mut stats: Vec<serde_json::Value> = selected
            .map(|(name, v)| match v {
                StatValue::Counter(c) => json!({"name": name, "value": c}),
                StatValue::Gauge(g) => {
                    json!({"name": name, "value": crate::stats::shown_gauge(*g)})
                }
            })
            .collect();
        stats.extend(texts.map(|(name, v)| json!({"name": name, "value": v})));
        stats.extend(
            endpoints
                .iter()
                .map(|(name, v)| json!({"name": name, "value": v})),
        );
        let computed: Vec<serde_json::Value> = histograms
            .map(|(name, h)| {
                let interval = stats::histogram::quantiles(&h.interval);
                let cumulative = stats::histogram::quantiles(&h.cumulative);
                let values: Vec<serde_json::Value> = interval
                    .iter()
                    .zip(&cumulative)
                    .map(|(i, c)| json!({"cumulative": json_number(*c), "interval": json_number(*i)}))
                    .collect();
                json!({"name": name, "values": values})
            })
            .collect();
        if !computed.is_empty() {
            let supported: Vec<serde_json::Value> = stats::histogram::QUANTILES
                .iter()
                .map(|q| json_number(q * 100.0))
                .collect();
            stats.push(json!({"histograms": {
                "supported_quantiles": supported,
                "computed_quantiles": computed,
            }}));
        }
        return json_response(&json!({ "stats": stats }));
    }
    let mut lines: BTreeMap<&str, String> = selected
        .map(|(name, v)| {
            let v = match v {
                StatValue::Counter(c) => c.to_string(),
                StatValue::Gauge(g) => crate::stats::shown_gauge(*g).to_string(),
            };
            (name.as_str(), v)
        })
        .collect();
    lines.extend(texts.map(|(name, v)| (name.as_str(), format!("{v:?}"))));
    let mut out = String::new();
    for (name, v) in lines {
        out.push_str(&format!("{name}: {v}\n"));
    }
    for (name, v) in &endpoints {
        out.push_str(&format!("{name}: {v}\n"));
    }
    // Histograms after the rest, as Envoy lists them: each quantile's interval and cumulative
    // value.
    for (name, h) in histograms {
        if !h.used() {
            out.push_str(&format!("{name}: No recorded values\n"));
            continue;
        }
        let interval = stats::histogram::quantiles(&h.interval);
        let cumulative = stats::histogram::quantiles(&h.cumulative);
        let parts: Vec<String> = stats::histogram::PERCENTS
            .iter()
            .zip(interval.iter().zip(&cumulative))
            .map(|(p, (i, c))| {
                format!(
                    "P{p}({},{})",
                    stats::histogram::show(*i),
                    stats::histogram::show(*c)
                )
            })
            .collect();
        out.push_str(&format!("{name}: {}\n", parts.join(" ")));
    }
    text(StatusCode::OK, out)
}

/// A number in the admin's JSON: whole values without a fraction, NaN as null.
fn json_number(v: f64) -> serde_json::Value {
    if v.is_nan() {
        serde_json::Value::Null
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

fn server_info(state: &AdminState) -> serde_json::Value {
    let o = &state.options;
    let uptime = format!("{}s", state.started.elapsed().as_secs());
    // The node as the bootstrap and the command line give it (metadata, locality included),
    // as Envoy shows it.
    let mut node = state
        .config
        .dump
        .bootstrap
        .get("node")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(n) = node.as_object_mut() {
        let m = &state.config.model.node;
        n.insert("id".into(), m.id.clone().into());
        n.insert("cluster".into(), m.cluster.clone().into());
        n.entry("user_agent_name").or_insert_with(|| "skiff".into());
    }
    json!({
        "version": VERSION,
        "state": state.state_name(),
        "uptime_current_epoch": uptime,
        "uptime_all_epochs": uptime,
        "hot_restart_version": "disabled",
        "command_line_options": {
            "concurrency": state.concurrency,
            "config_path": o.config_path.clone().unwrap_or_default(),
            "config_yaml": o.config_yaml.clone().unwrap_or_default(),
            "log_level": o.log_level,
            "service_cluster": o.service_cluster.clone().unwrap_or_default(),
            "service_node": o.service_node.clone().unwrap_or_default(),
            "service_zone": o.service_zone.clone().unwrap_or_default(),
            "log_format": o.log_format.clone().unwrap_or_default(),
            "base_id": o.base_id.unwrap_or_default(),
            "use_dynamic_base_id": o.use_dynamic_base_id,
            "file_flush_interval": proto_duration(o.file_flush_interval_msec),
            "drain_time": format!("{}s", o.drain_time_s),
            "parent_shutdown_time": format!("{}s", o.parent_shutdown_time_s),
            "mode": o.mode.as_str(),
            "disable_hot_restart": true,
            "restart_epoch": 0,
            "drain_strategy": match o.drain_strategy {
                crate::drain::DrainStrategy::Gradual => "Gradual",
                crate::drain::DrainStrategy::Immediate => "Immediate",
            },
            "local_address_ip_version": o.local_address_ip_version,
            "allow_unknown_static_fields": o.allow_unknown_static_fields,
            "component_log_level": o.component_log_level.clone().unwrap_or_default(),
            "skip_deprecated_logs": o.skip_deprecated_logs,
        },
        "node": node,
    })
}

/// A duration in protobuf's JSON form, as Envoy prints it: `10s`, `0.050s`.
fn proto_duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    }
}

fn listeners(state: &AdminState, q: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    let snapshot = state.published.load();
    let ls = &snapshot.listeners;
    if q.get("format").map(String::as_str) == Some("json") {
        let statuses: Vec<serde_json::Value> = ls
            .iter()
            .map(|l| {
                json!({"name": l.name, "local_address": {"socket_address": {
                    "address": l.address.ip().to_string(), "port_value": l.address.port()}}})
            })
            .collect();
        return json_response(&json!({ "listener_statuses": statuses }));
    }
    let mut out = String::new();
    for l in ls {
        out.push_str(&format!("{}::{}\n", l.name, l.address));
    }
    text(StatusCode::OK, out)
}

/// A success rate as `/clusters` prints it (`{:g}`: -1 when none).
fn rate(v: f64) -> String {
    if v < 0.0 {
        "-1".to_string()
    } else {
        format!("{v}")
    }
}

/// A host's health flags in `/clusters`, Envoy's, in its order (empty: healthy).
fn health_flags(h: &crate::config::model::Host) -> String {
    let hc = h.checks;
    [
        (hc.failed, "/failed_active_hc"),
        (hc.ejected, "/failed_outlier_check"),
        (!h.healthy && !h.excluded, "/failed_eds_health"),
        (hc.degraded, "/degraded_active_hc"),
        (h.degraded, "/degraded_eds_health"),
        (hc.removed, "/pending_dynamic_removal"),
        (hc.pending, "/pending_active_hc"),
        (hc.timeout, "/active_hc_timeout"),
        (h.excluded, "/eds_status_draining"),
        (hc.outlier_degraded, "/degraded_outlier_detection"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, f)| *f)
    .collect()
}

/// One host's stats under `track_cluster_stats.per_endpoint_stats`.
struct EndpointStats {
    /// The cluster's observability name.
    cluster: String,
    address: std::net::SocketAddr,
    /// Envoy's counters then gauges, in the order its `/stats` lists them.
    values: [(&'static str, u64, bool); 10],
}

impl EndpointStats {
    /// `cluster.<name>.endpoint.<address, ':' as '_'>.<stat>`.
    fn name(&self, stat: &str) -> String {
        format!(
            "cluster.{}.endpoint.{}.{stat}",
            self.cluster,
            self.address.to_string().replace(':', "_")
        )
    }
}

/// The hosts' stats of the clusters that ask for them, the clusters by name.
fn endpoint_stats(state: &AdminState) -> Vec<EndpointStats> {
    use std::sync::atomic::Ordering::Relaxed;
    let snapshot = state.published.load();
    let mut all: Vec<_> = snapshot
        .clusters
        .values()
        .filter(|c| c.config.per_endpoint_stats)
        .collect();
    all.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    let mut out = Vec::new();
    for c in all {
        for (h, s) in c.hosts.iter().zip(&c.host_stats) {
            out.push(EndpointStats {
                cluster: c.config.stat_name().to_string(),
                address: h.address,
                values: [
                    ("cx_connect_fail", s.cx_connect_fail.load(Relaxed), true),
                    ("cx_total", s.cx_total.load(Relaxed), true),
                    ("rq_error", s.rq_error.load(Relaxed), true),
                    ("rq_success", s.rq_success.load(Relaxed), true),
                    ("rq_timeout", s.rq_timeout.load(Relaxed), true),
                    ("rq_total", s.rq_total.load(Relaxed), true),
                    ("cx_active", s.cx_active.load(Relaxed), false),
                    ("rq_active", s.rq_active.load(Relaxed), false),
                    // skiff's hosts keep no queue of their own: requests wait in the pools.
                    ("rq_pending_active", 0, false),
                    ("healthy", u64::from(health_flags(h).is_empty()), false),
                ],
            });
        }
    }
    out
}

/// The hosts' stats in Prometheus' form, after the rest as Envoy writes them: each counter's
/// family, then each gauge's (by name), a line per host.
/// The hosts' stats of `per_endpoint_stats` clusters whose names `keep` accepts.
fn prometheus_endpoints(all: &[EndpointStats], keep: &dyn Fn(&str) -> bool) -> String {
    let mut out = String::new();
    if all.is_empty() {
        return out;
    }
    let mut families: Vec<(&str, bool)> = all[0].values.iter().map(|(n, _, c)| (*n, *c)).collect();
    families.sort_by_key(|(n, counter)| (!counter, if *counter { "" } else { *n }));
    for (family, counter) in families {
        let mut lines = String::new();
        for e in all {
            if let Some((_, v, _)) = e.values.iter().find(|(n, _, _)| *n == family) {
                if !keep(&e.name(family)) {
                    continue;
                }
                lines.push_str(&format!(
                    "envoy_cluster_endpoint_{family}{{envoy_cluster_name=\"{}\",envoy_endpoint_address=\"{}\"}} {v}\n",
                    e.cluster, e.address
                ));
            }
        }
        if !lines.is_empty() {
            out.push_str(&format!(
                "# TYPE envoy_cluster_endpoint_{family} {}\n",
                if counter { "counter" } else { "gauge" }
            ));
            out.push_str(&lines);
        }
    }
    out
}

fn clusters(state: &AdminState, q: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    use std::sync::atomic::Ordering::Relaxed;
    let json_format = q.get("format").map(String::as_str) == Some("json");
    let mut out = String::new();
    let mut statuses = Vec::new();
    let snapshot = state.published.load();
    let mut all: Vec<_> = snapshot.clusters.values().collect();
    all.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    for c in all {
        let name = &c.config.name;
        let mut hosts = Vec::new();
        let observed = c.config.stat_name();
        out.push_str(&format!("{name}::observability_name::{observed}\n"));
        if c.config.outlier.is_some() {
            let [avg, threshold, local_avg, local_threshold] = c.outlier_averages.get();
            for (k, v) in [
                ("success_rate_average", avg),
                ("success_rate_ejection_threshold", threshold),
                ("local_origin_success_rate_average", local_avg),
                (
                    "local_origin_success_rate_ejection_threshold",
                    local_threshold,
                ),
            ] {
                out.push_str(&format!("{name}::outlier::{k}::{}\n", rate(v)));
            }
        }
        let cb = &c.config.circuit_breakers;
        for (p, t, live) in [
            ("default_priority", &cb.default, &c.breakers.default),
            ("high_priority", &cb.high, &c.breakers.high),
        ] {
            for (k, v) in [
                ("max_connections", t.max_connections),
                ("max_pending_requests", t.max_pending_requests),
                ("max_requests", t.max_requests),
                // A retry budget's limit follows the requests under way.
                ("max_retries", live.retries.max()),
            ] {
                out.push_str(&format!("{name}::{p}::{k}::{v}\n"));
            }
        }
        let via_api = snapshot
            .dump
            .clusters
            .iter()
            .any(|d| !d.is_static && d.active.as_ref().is_some_and(|a| a.name == *name));
        out.push_str(&format!("{name}::added_via_api::{via_api}\n"));
        // An ORIGINAL_DST cluster's destinations in force, after its configured hosts.
        let destinations: Vec<(crate::config::model::Host, Arc<crate::upstream::HostStats>)> = c
            .destinations
            .as_ref()
            .map(|d| d.in_force(c.config.original_dst_cleanup))
            .unwrap_or_default()
            .into_iter()
            .map(|(a, d)| {
                (
                    crate::config::model::Host::destination(name, a),
                    d.stats.clone(),
                )
            })
            .collect();
        // The hosts as they are now, changes a merge window holds back from the workers
        // included (Envoy's `/clusters` reads the main thread's hosts).
        let all = c
            .pending
            .as_ref()
            .unwrap_or(&c.hosts)
            .iter()
            .zip(&c.host_stats)
            .chain(destinations.iter().map(|(h, s)| (h, s)));
        for (h, s) in all {
            let a = crate::config::model::address_text(&h.address);
            let fields = [
                ("cx_active", s.cx_active.load(Relaxed)),
                ("cx_connect_fail", s.cx_connect_fail.load(Relaxed)),
                ("cx_total", s.cx_total.load(Relaxed)),
                ("rq_active", s.rq_active.load(Relaxed)),
                ("rq_error", s.rq_error.load(Relaxed)),
                // Requests wait in skiff's pools for the cluster, never in a host's queue.
                ("rq_pending_active", 0),
                ("rq_success", s.rq_success.load(Relaxed)),
                ("rq_timeout", s.rq_timeout.load(Relaxed)),
                ("rq_total", s.rq_total.load(Relaxed)),
            ];
            for (k, v) in fields {
                out.push_str(&format!("{name}::{a}::{k}::{v}\n"));
            }
            let flags = health_flags(h);
            let health = if flags.is_empty() { "healthy" } else { &flags };
            // Client-side weighted round robin's weight, as Envoy sets the host's.
            let weight = if c.config.client_side_weights.is_some() {
                s.weight.applied()
            } else {
                h.weight
            }
            .to_string();
            let priority = h.priority.to_string();
            let (sr, local_sr) = s.outlier.success_rates();
            let (sr, local_sr) = (rate(sr), rate(local_sr));
            for (k, v) in [
                ("hostname", h.hostname.as_deref().unwrap_or("")),
                ("health_flags", health),
                ("weight", weight.as_str()),
                ("region", h.place.region.as_str()),
                ("zone", h.place.zone.as_str()),
                ("sub_zone", h.place.sub_zone.as_str()),
                (
                    "canary",
                    if h.lb_metadata.canary() {
                        "true"
                    } else {
                        "false"
                    },
                ),
                ("priority", priority.as_str()),
                ("success_rate", sr.as_str()),
                ("local_origin_success_rate", local_sr.as_str()),
            ] {
                out.push_str(&format!("{name}::{a}::{k}::{v}\n"));
            }
            let address = match &h.internal {
                Some(i) => json!({"envoy_internal_address": {
                    "server_listener_name": i.listener, "endpoint_id": i.endpoint_id}}),
                None => json!({"socket_address": {
                    "address": h.address.ip().to_string(), "port_value": h.address.port()}}),
            };
            hosts.push(json!({
                "address": address,
                "stats": fields.iter().map(|(k, v)| json!({"name": k, "value": v.to_string(), "type": "COUNTER"})).collect::<Vec<_>>(),
                "health_status": {"eds_health_status": if h.excluded { "DRAINING" } else if h.degraded { "DEGRADED" } else if h.healthy { "HEALTHY" } else { "UNHEALTHY" }},
                "weight": h.weight,
                "hostname": h.hostname.as_deref().unwrap_or(""),
            }));
        }
        statuses
            .push(json!({"name": name, "observability_name": observed, "host_statuses": hosts}));
    }
    if json_format {
        return json_response(&json!({ "cluster_statuses": statuses }));
    }
    text(StatusCode::OK, out)
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding_never_slices_inside_a_character() {
        assert_eq!(percent_decode("cluster%2Ea+b"), "cluster.a b");
        assert_eq!(percent_decode("%a\u{e9}"), "%a\u{e9}");
        assert_eq!(percent_decode("%"), "%");
    }

    #[test]
    fn durations_print_like_protobuf_json() {
        assert_eq!(super::proto_duration(10_000), "10s");
        assert_eq!(super::proto_duration(50), "0.050s");
    }
}
