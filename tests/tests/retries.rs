//! Retries side by side with Envoy 1.40: an upstream that fails on command (a status the first N
//! times, a reset, a sleep past the per-try timeout, a gRPC status, a retriable header), a dead
//! cluster and a cluster whose `max_retries` breaker is closed, over HTTP/1.1 and HTTP/2
//! upstreams. Each case compares the status, the body of local replies, the attempts the
//! upstream saw, `x-envoy-attempt-count`, the access log's flags, details and attempt count;
//! then the cluster's retry stats are compared.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use skiff_tests::client::{http1_once, request};
use skiff_tests::config::{bootstrap, to_yaml, HCM_TYPE, HTTP_PROTOCOL_OPTIONS_TYPE};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::{free_port, refused_port, run_for, Resp};

/// An upstream whose answer depends on the path `/<route>/<key>/<mode>/<n>`: the first `n`
/// requests for `<route>/<key>` fail with `<mode>`, the rest get 200. It counts the requests
/// per key and echoes the request body's length and `x-envoy-attempt-count`.
struct Flaky {
    port: u16,
    seen: Arc<Mutex<HashMap<String, u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Flaky {
    async fn start(http2: bool) -> Flaky {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let seen = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, seen.clone()));
                    let io = TokioIo::new(sock);
                    if http2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        Flaky { port, seen, task }
    }

    fn seen(&self, path: &str) -> u32 {
        let key = key_of(path).0;
        self.seen
            .lock()
            .expect("lock")
            .get(&key)
            .copied()
            .unwrap_or(0)
    }
}

/// `<route>/<key>`, the mode and how many times it fails.
fn key_of(path: &str) -> (String, String, u32) {
    let p: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let key = format!("{}/{}", p.first().unwrap_or(&""), p.get(1).unwrap_or(&""));
    let mode = p.get(2).unwrap_or(&"ok").to_string();
    let n = p.get(3).and_then(|n| n.parse().ok()).unwrap_or(0);
    (key, mode, n)
}

#[derive(Debug)]
struct Reset;
impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset on command")
    }
}
impl std::error::Error for Reset {}

async fn answer(
    req: http::Request<hyper::body::Incoming>,
    seen: Arc<Mutex<HashMap<String, u32>>>,
) -> Result<http::Response<Full<Bytes>>, Reset> {
    let (key, mode, n) = key_of(req.uri().path());
    let attempt = req
        .headers()
        .get("x-envoy-attempt-count")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let timeout_retry = req
        .headers()
        .get("x-envoy-is-timeout-retry")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let count = {
        let mut m = seen.lock().expect("lock");
        let c = m.entry(key).or_default();
        *c += 1;
        *c
    };
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let mut b = http::Response::builder()
        .header("x-body-len", body.to_string())
        .header("x-seen-attempt", attempt)
        .header("x-seen-timeout-retry", timeout_retry);
    if count <= n {
        match mode.as_str() {
            "reset" => return Err(Reset),
            "sleep" => tokio::time::sleep(Duration::from_millis(1500)).await,
            "grpc" => {
                b = b
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "14");
                return Ok(b.body(Full::new(Bytes::new())).expect("response"));
            }
            "hdr" => b = b.header("x-retry-me", "now"),
            // 503 asking to come back: `retry-after: <rest>`, or `x-ratelimit-reset` at
            // <rest> seconds from now.
            m if m.starts_with("ra") => {
                return Ok(b
                    .status(503)
                    .header("retry-after", &m[2..])
                    .body(Full::new(Bytes::from_static(b"come back later")))
                    .expect("response"));
            }
            m if m.starts_with("ts") => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs();
                let at = now + m[2..].parse::<u64>().unwrap_or(0);
                return Ok(b
                    .status(503)
                    .header("x-ratelimit-reset", at.to_string())
                    .body(Full::new(Bytes::from_static(b"come back later")))
                    .expect("response"));
            }
            code => {
                let status = code.parse::<u16>().unwrap_or(500);
                return Ok(b
                    .status(status)
                    .body(Full::new(Bytes::from_static(b"failed on command")))
                    .expect("response"));
            }
        }
    }
    Ok(b.body(Full::new(Bytes::from_static(b"ok")))
        .expect("response"))
}

fn retry(on: &str, n: u32) -> Value {
    json!({ "retry_on": on, "num_retries": n, "retry_back_off": { "base_interval": "0.005s" } })
}

fn route(prefix: &str, cluster: &str, policy: Option<Value>) -> Value {
    let mut r =
        json!({ "match": { "prefix": prefix }, "route": { "cluster": cluster, "timeout": "5s" } });
    if let Some(p) = policy {
        r["route"]["retry_policy"] = p;
    }
    r
}

/// `r` with `field` set on the route.
fn with(mut r: Value, field: &str, value: Value) -> Value {
    r[field] = value;
    r
}

fn cluster(name: &str, port: u16, http2: bool, extra: Value) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": [ { "endpoint": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } } } } ] } ] }
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_PROTOCOL_OPTIONS_TYPE,
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        });
    }
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

const LOG: &str = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %RESPONSE_CODE_DETAILS%\n";

fn config(admin: u16, listen: u16, upstream: u16, dead: u16, http2: bool) -> String {
    let routes = vec![
        route("/r5xx/", "svc", Some(retry("5xx", 2))),
        route("/rgw/", "svc", Some(retry("gateway-error", 1))),
        route("/r4xx/", "svc", Some(retry("retriable-4xx", 1))),
        route(
            "/rcodes/",
            "svc",
            Some(
                json!({ "retry_on": "retriable-status-codes", "retriable_status_codes": [418],
                "retry_back_off": { "base_interval": "0.005s" } }),
            ),
        ),
        route(
            "/rhdr/",
            "svc",
            Some(json!({ "retry_on": "retriable-headers",
                "retriable_headers": [ { "name": "x-retry-me", "string_match": { "exact": "now" } } ] })),
        ),
        route("/rreset/", "svc", Some(retry("reset", 1))),
        route("/rgrpc/", "svc", Some(retry("unavailable,cancelled", 2))),
        route(
            "/rtry/",
            "svc",
            Some(
                json!({ "retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.3s",
                "retry_back_off": { "base_interval": "0.005s" } }),
            ),
        ),
        route(
            "/rreq/",
            "svc",
            Some(json!({ "retry_on": "5xx", "num_retries": 1,
                "retriable_request_headers": [ { "name": "x-may-retry" } ] })),
        ),
        route(
            "/rhosts/",
            "svc",
            Some(
                json!({ "retry_on": "5xx", "num_retries": 1, "host_selection_retry_max_attempts": 3,
                "retry_host_predicate": [ { "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate" } } ] }),
            ),
        ),
        route("/dead/", "dead", Some(retry("connect-failure", 2))),
        route("/tight/", "tight", Some(retry("5xx", 2))),
        route("/budget0/", "budget0", Some(retry("5xx", 2))),
        route("/budget/", "budget", Some(retry("5xx", 2))),
        route("/rnone/", "svc", None),
        // A route's body limit replaces the connection's (32 KiB), below or above it.
        with(
            route("/rbuf/", "svc", Some(retry("5xx", 2))),
            "per_request_buffer_limit_bytes",
            json!(100),
        ),
        with(
            route("/rbig/", "svc", Some(retry("5xx", 2))),
            "request_body_buffer_limit",
            json!(200_000),
        ),
        route(
            "/rlimit/",
            "svc",
            Some(json!({ "retry_on": "5xx", "num_retries": 1,
                "retry_back_off": { "base_interval": "0.005s" },
                "rate_limited_retry_back_off": {
                    "reset_headers": [ { "name": "retry-after" },
                        { "name": "x-ratelimit-reset", "format": "UNIX_TIMESTAMP" } ],
                    "max_interval": "2s" } })),
        ),
    ];
    let vh_routes = vec![
        route("/vhr/", "svc", Some(retry("retriable-4xx", 1))),
        // Over the virtual host's body limit; 0 keeps nothing.
        with(
            route("/vhz/", "svc", None),
            "per_request_buffer_limit_bytes",
            json!(0),
        ),
        route("/", "svc", None),
    ];
    let hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": "retries",
            "use_remote_address": true,
            "internal_address_config": { "cidr_ranges": [ { "address_prefix": "127.0.0.1", "prefix_len": 32 } ] },
            "access_log": [ { "name": "envoy.access_loggers.stdout", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": { "text_format_source": { "inline_string": LOG } } } } ],
            "route_config": { "name": "r", "virtual_hosts": [
                { "name": "vh", "domains": ["vh.example.com"], "routes": vh_routes,
                  "retry_policy": retry("5xx", 1),
                  "per_request_buffer_limit_bytes": 100_000 },
                { "name": "main", "domains": ["*"], "routes": routes,
                  "include_request_attempt_count": true,
                  "include_attempt_count_in_response": true,
                  "include_is_timeout_retry_header": true }
            ] },
            "http_filters": [ { "name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } } ]
        }
    });
    let mut listener = skiff_tests::config::listener("l", "127.0.0.1", listen, hcm);
    listener["per_connection_buffer_limit_bytes"] = json!(32768);
    to_yaml(&bootstrap(
        admin,
        vec![listener],
        vec![
            cluster("svc", upstream, http2, json!({})),
            cluster("dead", dead, http2, json!({})),
            cluster(
                "tight",
                upstream,
                http2,
                json!({ "circuit_breakers": { "thresholds": [ { "max_retries": 0 } ] } }),
            ),
            // A retry budget that allows none (0 % of the requests under way, no minimum),
            // and Envoy's default one (20 %, at least 3).
            cluster(
                "budget0",
                upstream,
                http2,
                json!({ "circuit_breakers": { "thresholds": [ { "retry_budget": {
                    "budget_percent": { "value": 0 }, "min_retry_concurrency": 0 } } ] } }),
            ),
            cluster(
                "budget",
                upstream,
                http2,
                json!({ "circuit_breakers": { "thresholds": [ { "retry_budget": {} } ] } }),
            ),
        ],
    ))
}

struct Side {
    proxy: ProxyProcess,
    listen: u16,
    up: Flaky,
}

async fn start(kind: Kind, http2: bool) -> Side {
    let up = Flaky::start(http2).await;
    let (admin, listen) = (free_port(), free_port());
    let yaml = config(admin, listen, up.port, refused_port(), http2);
    let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
    Side { proxy, listen, up }
}

/// One request: method, path, host, extra headers, body.
struct Case {
    method: &'static str,
    path: &'static str,
    host: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: usize,
}

fn get(path: &'static str) -> Case {
    Case {
        method: "GET",
        path,
        host: "retry.example.com",
        headers: vec![],
        body: 0,
    }
}

/// What one proxy did with a case.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    /// The body of a local reply (upstream bodies are the upstream's).
    body: String,
    attempts_seen_upstream: u32,
    attempt_count_header: Option<String>,
    upstream_saw_attempt: Option<String>,
    upstream_saw_timeout_retry: Option<String>,
    body_len_upstream: Option<String>,
    /// `%RESPONSE_FLAGS% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %RESPONSE_CODE_DETAILS%`.
    log: String,
}

async fn send(side: &Side, c: &Case) -> Seen {
    let mut req = request(c.method, c.path, c.host, Bytes::from(vec![b'x'; c.body]));
    for (k, v) in &c.headers {
        req.headers_mut().insert(
            http::HeaderName::from_static(k),
            http::HeaderValue::from_static(v),
        );
    }
    let r: Resp = http1_once(&format!("127.0.0.1:{}", side.listen), req)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", c.path));
    let prefix = format!("{} ", c.path);
    let line = side
        .proxy
        .wait_stdout_line(Duration::from_secs(5), |l| l.starts_with(&prefix))
        .await;
    let log = line
        .strip_prefix(&prefix)
        .unwrap_or("")
        .split_once(' ')
        .map_or("", |(_, rest)| rest)
        .to_string();
    Seen {
        status: r.status,
        body: if r.header("x-body-len").is_some() {
            String::new()
        } else {
            r.text()
        },
        attempts_seen_upstream: side.up.seen(c.path),
        attempt_count_header: r.header("x-envoy-attempt-count").map(str::to_string),
        upstream_saw_attempt: r.header("x-seen-attempt").map(str::to_string),
        upstream_saw_timeout_retry: r.header("x-seen-timeout-retry").map(str::to_string),
        body_len_upstream: r.header("x-body-len").map(str::to_string),
        log,
    }
}

const STATS: &[&str] = &[
    "upstream_rq_retry",
    "upstream_rq_retry_success",
    "upstream_rq_retry_overflow",
    "upstream_rq_retry_limit_exceeded",
    "upstream_rq_retry_backoff_exponential",
    "upstream_rq_retry_backoff_ratelimited",
    "upstream_rq_per_try_timeout",
    "retry_or_shadow_abandoned",
    "retry.upstream_rq_503",
];

async fn stats(side: &Side) -> Vec<(String, Option<u64>)> {
    let admin = side.proxy.admin();
    let mut out = Vec::new();
    for c in ["svc", "dead", "tight", "budget0", "budget"] {
        for s in STATS {
            let name = format!("cluster.{c}.{s}");
            out.push((name.clone(), admin.stat(&name).await));
        }
    }
    out
}

async fn side_by_side(http2: bool) {
    let envoy = start(Kind::Envoy, http2).await;
    let skiff = start(Kind::under_test(), http2).await;
    let mut cases = vec![
        get("/r5xx/a/503/1"),
        get("/r5xx/b/503/9"),
        get("/r5xx/c/ok/0"),
        get("/rgw/a/500/1"),
        get("/rgw/b/502/1"),
        get("/r4xx/a/409/1"),
        get("/r4xx/b/500/1"),
        get("/rcodes/a/418/1"),
        get("/rcodes/b/500/1"),
        get("/rhdr/a/hdr/1"),
        get("/rreset/a/reset/1"),
        get("/rreset/b/reset/9"),
        get("/rgrpc/a/grpc/1"),
        get("/rgrpc/b/grpc/9"),
        get("/rtry/a/sleep/1"),
        get("/rtry/b/sleep/9"),
        get("/rreq/a/503/1"),
        get("/rhosts/a/503/1"),
        get("/rnone/a/503/1"),
        get("/dead/a"),
        get("/tight/a/503/1"),
        get("/budget0/a/503/1"),
        get("/budget/a/503/1"),
        // rate_limited_retry_back_off: a wait the response asks for within max_interval (in
        // seconds, or until a time), else the exponential backoff.
        get("/rlimit/a/ra1/1"),
        get("/rlimit/b/ra5/1"),
        get("/rlimit/c/ts2/1"),
        get("/rlimit/d/rasoon/1"),
        get("/rlimit/e/ra0/1"),
    ];
    let mut c = get("/rreq/b/503/1");
    c.headers.push(("x-may-retry", "1"));
    cases.push(c);
    // The route's policy replaces its virtual host's.
    let mut c = get("/vh/a/503/1");
    c.host = "vh.example.com";
    cases.push(c);
    let mut c = get("/vhr/a/503/1");
    c.host = "vh.example.com";
    cases.push(c);
    // A body within the buffer limit is sent again; one past it ends the chance of a retry.
    let mut c = get("/r5xx/body/503/1");
    c.method = "POST";
    c.body = 1000;
    cases.push(c);
    let mut c = get("/r5xx/big/503/1");
    c.method = "POST";
    c.body = 100_000;
    cases.push(c);
    for (path, body, host) in [
        ("/rbuf/small/503/1", 50, "a.example.com"),
        ("/rbuf/over/503/1", 1000, "a.example.com"),
        ("/rbig/large/503/1", 100_000, "a.example.com"),
        ("/vhb/large/503/1", 50_000, "vh.example.com"),
        ("/vhz/tiny/503/1", 10, "vh.example.com"),
    ] {
        let mut c = get(path);
        c.method = "POST";
        c.body = body;
        c.host = host;
        cases.push(c);
    }
    // The retry headers of an internal request (the peer is in internal_address_config) count;
    // an external one's are stripped and ignored.
    let mut c = get("/rnone/h/500/2");
    c.headers = vec![("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "3")];
    cases.push(c);
    let mut c = get("/rnone/x/500/2");
    c.headers = vec![
        ("x-envoy-retry-on", "5xx"),
        ("x-envoy-max-retries", "3"),
        ("x-forwarded-for", "1.2.3.4"),
    ];
    cases.push(c);
    let mut c = get("/rnone/g/grpc/1");
    c.headers = vec![("x-envoy-retry-grpc-on", "unavailable")];
    cases.push(c);
    let mut c = get("/rnone/s/418/1");
    c.headers = vec![
        ("x-envoy-retry-on", "retriable-status-codes"),
        ("x-envoy-retriable-status-codes", "418"),
    ];
    cases.push(c);
    let mut c = get("/rnone/n/hdr/1");
    c.headers = vec![
        ("x-envoy-retry-on", "retriable-headers"),
        ("x-envoy-retriable-header-names", "x-retry-me"),
    ];
    cases.push(c);
    let mut failures = Vec::new();
    for c in &cases {
        let started = std::time::Instant::now();
        let e = send(&envoy, c).await;
        let envoy_took = started.elapsed();
        let started = std::time::Instant::now();
        let s = send(&skiff, c).await;
        let skiff_took = started.elapsed();
        if e != s {
            failures.push(format!("{}:\n  envoy {e:?}\n  skiff {s:?}", c.path));
        }
        // A retry-after of a second waits at least that long, and less than one and a half.
        if c.path.contains("/ra1/") {
            for (who, took) in [("envoy", envoy_took), ("skiff", skiff_took)] {
                if took < Duration::from_secs(1) || took > Duration::from_millis(1900) {
                    failures.push(format!("{}: {who} took {took:?}", c.path));
                }
            }
        }
    }
    let (es, ss) = (stats(&envoy).await, stats(&skiff).await);
    for (e, s) in es.iter().zip(&ss) {
        if e != s {
            failures.push(format!("{}: envoy {:?}, skiff {:?}", e.0, e.1, s.1));
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences ({}):\n{}",
        failures.len(),
        if http2 { "HTTP/2" } else { "HTTP/1.1" },
        failures.join("\n")
    );
}

#[tokio::test]
async fn retries_over_http1_upstreams_as_envoy() {
    run_for(Duration::from_secs(120), side_by_side(false)).await;
}

#[tokio::test]
async fn retries_over_http2_upstreams_as_envoy() {
    run_for(Duration::from_secs(120), side_by_side(true)).await;
}
