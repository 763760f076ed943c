//! Tracers side by side with Envoy 1.40.
//!
//! Zipkin (`tracing.provider` `envoy.tracers.zipkin`): an ingress (`INBOUND`) and an egress (`OUTBOUND`) connection manager with custom
//! tags, a short `max_path_tag_length`, routes with decorators (propagated or not), a route to a
//! cluster without hosts and a direct response. Requests arrive without a trace, with B3's
//! headers (continued, shared or as a child), with B3's single header, unsampled, and with a
//! caller's `x-envoy-decorator-operation`. Compared: the response and its decorator header,
//! the B3 headers and decorator the upstream got (random ids masked), and every span the
//! collector got (Zipkin JSON v2, ids, times and request ids masked), and the tracer's stats.
//! Each proxy's spans must also carry the very ids it sent upstream.
//!
//! OpenTelemetry (`envoy.tracers.opentelemetry`, OTLP over gRPC to `otlp-collector`, a real
//! gRPC server of the tests): the same connection managers and routes, with W3C trace context
//! (`traceparent`, `tracestate`) arriving sampled, unsampled, malformed or not at all; compared:
//! what the upstream got, every exported span (resource, scope, ids masked, kind, flags,
//! attributes, status) and the stats, the connection managers' `tracing.*` included.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, listener, router, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::run_for;
use skiff_tests::upstream::EchoUpstream;

/// Which spans a listener's requests make beyond the connection manager's.
#[derive(Clone, Copy)]
enum Upstream {
    /// None.
    No,
    /// One per upstream request: the tracer's `spawn_upstream_span`.
    Spawn,
    /// One per upstream request: the router's `start_child_span`.
    Child,
}

/// A listener: its name, `traffic_direction`, the tracer's `shared_span_context`, and its
/// upstream spans.
type Spec = (&'static str, &'static str, bool, Upstream);

const PLAIN: [Spec; 3] = [
    ("in", "INBOUND", true, Upstream::No),
    ("out", "OUTBOUND", true, Upstream::No),
    ("in_unshared", "UNSPECIFIED", false, Upstream::No),
];

const SPAWNING: [Spec; 3] = [
    ("out_spawn", "OUTBOUND", true, Upstream::Spawn),
    ("in_spawn", "INBOUND", true, Upstream::Spawn),
    ("out_child", "OUTBOUND", true, Upstream::Child),
];

fn hcm(stat_prefix: &str, provider: Value, spans: Upstream) -> Value {
    let mut r = router();
    if matches!(spans, Upstream::Child) {
        r["typed_config"]["start_child_span"] = json!(true);
    }
    json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "tracing": {
            "spawn_upstream_span": matches!(spans, Upstream::Spawn),
            "max_path_tag_length": 20,
            "custom_tags": [
                { "tag": "lit", "literal": { "value": "v1" } },
                { "tag": "env", "environment": { "name": "PATH", "default_value": "dflt" } },
                { "tag": "envmissing", "environment": { "name": "SKIFF_ZIPKIN_NOPE", "default_value": "dflt" } },
                { "tag": "hdr", "request_header": { "name": "x-tag", "default_value": "none" } },
                { "tag": "hdr2", "request_header": { "name": "x-tag2" } }
            ],
            "provider": provider
        },
        "http_filters": [ r ],
        "route_config": { "virtual_hosts": [ { "name": "v", "domains": ["*"], "routes": [
            { "match": { "prefix": "/retry" }, "route": { "cluster": "backend",
              "retry_policy": { "retry_on": "5xx", "num_retries": 1 } } },
            { "match": { "prefix": "/dead" }, "route": { "cluster": "dead" } },
            { "match": { "prefix": "/dec" }, "route": { "cluster": "backend" },
              "decorator": { "operation": "my-op" } },
            { "match": { "prefix": "/nop" }, "route": { "cluster": "backend" },
              "decorator": { "operation": "quiet-op", "propagate": false } },
            { "match": { "prefix": "/fail" }, "route": { "cluster": "empty" } },
            { "match": { "prefix": "/direct" },
              "direct_response": { "status": 404, "body": { "inline_string": "nope" } } },
            { "match": { "prefix": "/" }, "route": { "cluster": "backend" } }
        ] } ] }
    } })
}

fn zipkin(shared: bool) -> Value {
    json!({ "name": "envoy.tracers.zipkin", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
        "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
        "collector_endpoint_version": "HTTP_JSON", "shared_span_context": shared } })
}

fn open_telemetry(_: bool) -> Value {
    json!({ "name": "envoy.tracers.opentelemetry", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
        "grpc_service": { "envoy_grpc": { "cluster_name": "otel" }, "timeout": "0.250s" },
        "service_name": "svc-1" } })
}

fn config(
    admin: u16,
    (specs, ports): (&[Spec], &[u16]),
    backend: u16,
    collector: u16,
    provider: fn(bool) -> Value,
) -> Value {
    let mut listeners = Vec::new();
    for (i, (name, direction, shared, spans)) in specs.iter().enumerate() {
        let mut l = listener(
            name,
            "127.0.0.1",
            ports[i],
            hcm(name, provider(*shared), *spans),
        );
        l["traffic_direction"] = json!(direction);
        listeners.push(l);
    }
    let cluster = |name: &str, port: Option<u16>| {
        let mut c = json!({ "name": name, "connect_timeout": "1s", "type": "STATIC" });
        if let Some(p) = port {
            c["load_assignment"] = json!({ "cluster_name": name, "endpoints": [ { "lb_endpoints": [
                { "endpoint": { "address": { "socket_address": {
                    "address": "127.0.0.1", "port_value": p } } } } ] } ] });
        }
        c
    };
    let mut v = bootstrap(
        admin,
        listeners,
        vec![
            {
                // Spans name a cluster by its observability name.
                let mut c = cluster("backend", Some(backend));
                c["alt_stat_name"] = json!("backend_stats");
                c
            },
            cluster("empty", None),
            // Nothing listens on port 1: every connect fails.
            cluster("dead", Some(1)),
            cluster("zipkin", Some(collector)),
            {
                let mut c = cluster("otel", Some(collector));
                c["typed_extension_protocol_options"] = json!({
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} } } });
                c
            },
        ],
    );
    v["node"] = json!({ "id": "node-1", "cluster": "front-proxy", "locality": { "zone": "z1" } });
    // One span per report, so that every span arrives while the test waits.
    v["layered_runtime"] = json!({ "layers": [ { "name": "static", "static_layer": {
        "tracing.zipkin.min_flush_spans": 1, "tracing.opentelemetry.min_flush_spans": 1 } } ] });
    v
}

/// A random 16-digit id masked, a fixed one (the test's own, all leading zeros) or a named
/// one (`<name>`) kept.
fn mask(id: &str) -> String {
    if id.starts_with("0000") || id.starts_with('<') {
        id.to_string()
    } else {
        format!("<{} hex>", id.len())
    }
}

/// A span as both proxies must report it: ids, times and the request id masked; whether its
/// id is its trace's (a new trace) kept.
fn normal(mut s: Value) -> Value {
    for k in ["timestamp", "duration"] {
        s[k] = json!("T");
    }
    if let Some(a) = s["annotations"].as_array_mut() {
        for a in a {
            a["timestamp"] = json!("T");
        }
    }
    let root = s["id"] == s["traceId"];
    for k in ["traceId", "id", "parentId"] {
        if let Some(v) = s[k].as_str().map(mask) {
            s[k] = json!(v);
        }
    }
    s["root"] = json!(root);
    if let Some(id) = s["tags"]["guid:x-request-id"].as_str() {
        let masked: String = id
            .chars()
            .enumerate()
            .map(|(i, c)| if i == 14 || c == '-' { c } else { 'h' })
            .collect();
        s["tags"]["guid:x-request-id"] = json!(masked);
    }
    s
}

/// A GET of `path` on `port` with `headers`.
async fn send(port: u16, path: &str, headers: &[String]) -> skiff_tests::client::CurlReply {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut args = vec!["-s"];
    for h in headers {
        args.push("-H");
        args.push(h);
    }
    args.push(&url);
    curl(&args).await
}

/// Asserts that Envoy's lines (first) and skiff's are the same, line by line; Envoy's, joined.
fn assert_same(seen: &[Vec<String>]) -> String {
    skiff_tests::diff::assert_same_lines(seen)
}

/// The B3 headers of a caller with trace `t` and span `s`, sampled.
fn b3(t: &str, s: &str) -> Vec<String> {
    vec![
        format!("x-b3-traceid: {t}"),
        format!("x-b3-spanid: {s}"),
        "x-b3-parentspanid: 0000000000000111".to_string(),
        "x-b3-sampled: 1".to_string(),
    ]
}

/// Each span's parent named (its name and kind) when it is one of `spans`.
fn name_parents(spans: &mut [Value]) {
    let names: Vec<(String, String)> = spans
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or("").to_string(),
                format!("{}/{}", s["name"].as_str().unwrap_or(""), s["kind"]),
            )
        })
        .collect();
    for s in spans.iter_mut() {
        let parent = s["parentId"].as_str().unwrap_or("").to_string();
        if let Some((_, n)) = names.iter().find(|(id, _)| *id == parent) {
            s["parentId"] = json!(format!("<{n}>"));
        }
    }
}

/// Sends `cases` to every listener of `specs` behind Envoy and skiff with a Zipkin tracer,
/// and returns what each saw: responses, the B3 headers every upstream request got, every
/// span (ids masked, parents named) and the tracer's stats. Each proxy's spans must carry
/// the ids it sent upstream: the connection manager's span's, or with upstream spans those of
/// its children. `spans` is how many spans each proxy should report.
async fn zipkin_side_by_side(
    specs: &[Spec],
    cases: &[(&str, Vec<String>)],
    spans: usize,
    tweak: &dyn Fn(&mut Value),
) -> Vec<Vec<String>> {
    let mut seen = Vec::new();
    for kind in [Kind::Envoy, Kind::under_test()] {
        let backend = EchoUpstream::start("backend").await;
        let collector = EchoUpstream::start("zipkin").await;
        let ports: Vec<u16> = specs.iter().map(|_| skiff_tests::free_port()).collect();
        let mut v = config(
            skiff_tests::free_port(),
            (specs, &ports),
            backend.port(),
            collector.port(),
            zipkin,
        );
        tweak(&mut v);
        let yaml = to_yaml(&v);
        let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
        let mut got = Vec::new();
        // The span ids each request (by its x-request-id) sent upstream.
        let mut sent_ids: Vec<(String, Vec<String>)> = Vec::new();
        for (spec, port) in specs.iter().zip(&ports) {
            for (path, headers) in cases {
                let before = backend.rec.requests().len();
                let r = send(*port, path, headers).await;
                let mut upstream = Vec::new();
                for u in backend.rec.requests().iter().skip(before) {
                    let b3: Vec<String> = [
                        "x-b3-traceid",
                        "x-b3-spanid",
                        "x-b3-parentspanid",
                        "x-b3-sampled",
                        "b3",
                        "x-envoy-decorator-operation",
                    ]
                    .iter()
                    .filter_map(|n| {
                        u.header(n).map(|v| {
                            let v = match *n {
                                "b3" => v.split('-').map(mask).collect::<Vec<_>>().join("-"),
                                "x-b3-sampled" | "x-envoy-decorator-operation" => v.to_string(),
                                _ => mask(v),
                            };
                            format!("{n}={v}")
                        })
                    })
                    .collect();
                    if let (Some(id), Some(span)) =
                        (u.header("x-request-id"), u.header("x-b3-spanid"))
                    {
                        match sent_ids.iter_mut().find(|(r, _)| r == id) {
                            Some((_, ids)) => ids.push(span.to_string()),
                            None => sent_ids.push((id.to_string(), vec![span.to_string()])),
                        }
                    }
                    upstream.push(b3.join(" "));
                }
                got.push(format!(
                    "{} {path} {headers:?}: {} op={:?} upstream={upstream:?}",
                    spec.0,
                    r.resp.status,
                    r.resp.header("x-envoy-decorator-operation")
                ));
            }
        }
        // Every sampled request's spans, one report each.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while collector.rec.requests().len() < spans && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reports = collector.rec.requests();
        let mut all = Vec::new();
        for report in &reports {
            assert_eq!(report.method, "POST", "{}", kind.name());
            assert_eq!(report.path, "/api/v2/spans", "{}", kind.name());
            got.push(format!(
                "report host={:?} content-type={:?} internal={:?} timeout={:?}",
                report.authority.as_deref().or(report.header("host")),
                report.header("content-type"),
                report.header("x-envoy-internal"),
                report.header("x-envoy-expected-rq-timeout-ms"),
            ));
            let list: Value = serde_json::from_slice(&report.body).expect("JSON spans");
            all.extend(list.as_array().cloned().unwrap_or_default());
        }
        // The spans carry the ids their requests went upstream with: the stream's span's, or
        // its children's.
        for s in &all {
            let Some(rid) = s["tags"]["guid:x-request-id"].as_str() else {
                continue;
            };
            let Some((_, sent)) = sent_ids.iter().find(|(r, _)| r == rid) else {
                continue;
            };
            let children: Vec<&str> = all
                .iter()
                .filter(|c| {
                    c["parentId"] == s["id"]
                        && c["traceId"] == s["traceId"]
                        && c["tags"]["guid:x-request-id"].is_null()
                })
                .filter_map(|c| c["id"].as_str())
                .collect();
            if children.is_empty() {
                // (A request id the test gives is the same on every listener.)
                let own = s["id"].as_str().unwrap_or("").to_string();
                assert!(sent.contains(&own), "{}: {sent:?} {s}", kind.name());
            } else {
                // Another listener's request may share this span's id (a caller's context
                // shared): its children are among these too.
                for id in sent {
                    assert!(children.contains(&id.as_str()), "{}: {id} {s}", kind.name());
                }
            }
        }
        name_parents(&mut all);
        let exported = all.len();
        // The listeners' ports differ between the proxies: named instead.
        let mut spans: Vec<String> = all
            .into_iter()
            .map(|s| {
                let mut s = normal(s).to_string();
                for (spec, port) in specs.iter().zip(&ports) {
                    s = s.replace(&format!(":{port}"), &format!(":<{}>", spec.0));
                }
                s.replace(&format!(":{}", backend.port()), ":<backend>")
            })
            .collect();
        spans.sort();
        got.extend(spans);
        let stats = tracing_stats(&proxy, "tracing.zipkin.", exported).await;
        got.extend(stats.into_iter().map(|(k, v)| format!("{k}={v}")));
        seen.push(got);
    }
    seen
}

#[tokio::test]
async fn zipkin_spans_and_b3_headers_side_by_side_with_envoy() {
    run_for(Duration::from_secs(120), async {
        let cases: Vec<(&str, Vec<String>)> = vec![
            (
                "/a/very/long/path/that/is/long?q=1",
                vec!["x-tag: T".into()],
            ),
            ("/dec", vec![]),
            (
                "/dec/op",
                vec!["x-envoy-decorator-operation: from-client".into()],
            ),
            (
                "/nop",
                vec!["x-envoy-decorator-operation: from-client".into()],
            ),
            ("/nop/quiet", vec![]),
            ("/fail", vec![]),
            ("/direct", vec!["x-tag2: two".into()]),
            ("/ctx", b3("0000000000000abc", "0000000000000def")),
            (
                "/ctx128",
                b3("00000000000000000000000000000abc", "0000000000000def"),
            ),
            ("/unsampled", vec!["x-b3-sampled: 0".into()]),
            (
                "/single",
                vec!["b3: 0000000000000abc-0000000000000def-1-0000000000000111".into()],
            ),
            ("/client", vec!["x-client-trace-id: 42".into()]),
            (
                "/bad",
                vec![
                    "x-b3-traceid: zz".into(),
                    "x-b3-spanid: 0000000000000def".into(),
                ],
            ),
        ];
        let seen = zipkin_side_by_side(&PLAIN, &cases, 33, &|_| {}).await;
        let all = assert_same(&seen);
        assert!(all.contains("\"kind\":\"SERVER\""), "{all}");
        assert!(all.contains("\"kind\":\"CLIENT\""), "{all}");
        assert!(all.contains("tracing.zipkin.spans_sent=33"), "{all}");
    })
    .await;
}

/// Upstream spans: the tracer's `spawn_upstream_span` on an egress and an ingress listener,
/// the router's `start_child_span` on an egress one. Requests: plain, decorated, retried
/// (503 twice: the first attempt canceled, the second counting its retry), answered 404, to a
/// cluster nothing listens for (connect failure), to no host at all (no upstream span),
/// continuing a caller's trace, unsampled.
#[tokio::test]
async fn zipkin_upstream_spans_side_by_side_with_envoy() {
    run_for(Duration::from_secs(120), async {
        let cases: Vec<(&str, Vec<String>)> = vec![
            ("/plain", vec!["x-tag: T".into()]),
            ("/dec", vec![]),
            ("/retry/status/503", vec![]),
            ("/status/404", vec![]),
            ("/dead", vec![]),
            ("/fail", vec![]),
            ("/ctx", b3("0000000000000abc", "0000000000000def")),
            ("/unsampled", vec!["x-b3-sampled: 0".into()]),
        ];
        // Per listener: seven stream spans, and seven upstream spans (for six requests, two
        // for the retried one).
        let seen = zipkin_side_by_side(&SPAWNING, &cases, 3 * (7 + 7), &|_| {}).await;
        let all = assert_same(&seen);
        assert!(all.contains("router backend_stats egress"), "{all}");
        assert!(all.contains("\"retry.count\":\"1\""), "{all}");
        assert!(all.contains("\"canceled\":\"true\""), "{all}");
        assert!(all.contains("remote connection failure"), "{all}");
        assert!(all.contains("tracing.zipkin.spans_sent=42"), "{all}");
    })
    .await;
}

const COLLECTOR: &str = env!("CARGO_BIN_EXE_otlp-collector");

/// An exported span as both proxies must export it: random ids, times, the request id and
/// the SDK's own name and version masked.
fn normal_otlp(mut s: Value) -> Value {
    for k in ["start", "end"] {
        s[k] = json!("T");
    }
    for k in ["trace_id", "span_id", "parent_span_id"] {
        if let Some(v) = s[k].as_str() {
            // The test's own ids (0af7…, b7ad…) are kept.
            let kept = v.starts_with("0af7") || v.starts_with("b7ad") || v.starts_with('<');
            if !v.is_empty() && !kept {
                s[k] = json!(format!("<{} hex>", v.len()));
            }
        }
    }
    if let Some(id) = s["attributes"]["guid:x-request-id"].as_str() {
        let masked: String = id
            .chars()
            .enumerate()
            .map(|(i, c)| if i == 14 || c == '-' { c } else { 'h' })
            .collect();
        s["attributes"]["guid:x-request-id"] = json!(masked);
    }
    if let Some(r) = s["resource"].as_object_mut() {
        for k in [
            "telemetry.sdk.language",
            "telemetry.sdk.name",
            "telemetry.sdk.version",
        ] {
            if r.contains_key(k) {
                r.insert(k.into(), json!("SDK"));
            }
        }
    }
    if s["scope"]["version"].is_string() {
        s["scope"]["version"] = json!("V");
    }
    s
}

/// Sends `cases` to every listener of `specs` behind Envoy and skiff with an OpenTelemetry
/// tracer, and returns what each saw: the trace context every upstream request got, every
/// exported span (ids masked, parents named) and the stats. `spans` is how many spans each
/// proxy should export.
/// `tweak` changes the bootstrap before it is loaded.
async fn otlp_side_by_side(
    specs: &[Spec],
    cases: &[(&str, Vec<String>)],
    spans: usize,
    tweak: &dyn Fn(&mut Value),
) -> Vec<Vec<String>> {
    let mut seen = Vec::new();
    for kind in [Kind::Envoy, Kind::under_test()] {
        let backend = EchoUpstream::start("backend").await;
        let collector = skiff_tests::peer::Peer::start(COLLECTOR, &["0"]).await;
        let ports: Vec<u16> = specs.iter().map(|_| skiff_tests::free_port()).collect();
        let mut v = config(
            skiff_tests::free_port(),
            (specs, &ports),
            backend.port(),
            collector.port("port"),
            open_telemetry,
        );
        tweak(&mut v);
        let yaml = to_yaml(&v);
        let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
        let mut got = Vec::new();
        for (spec, port) in specs.iter().zip(&ports) {
            for (path, headers) in cases {
                let before = backend.rec.requests().len();
                let r = send(*port, path, headers).await;
                let upstream: Vec<String> = backend
                    .rec
                    .requests()
                    .iter()
                    .skip(before)
                    .map(|u| {
                        let tp = u.header("traceparent").map(|v| {
                            v.split('-')
                                .map(|p| {
                                    if p.len() >= 16 && !p.starts_with("0af7") {
                                        format!("<{}>", p.len())
                                    } else {
                                        p.to_string()
                                    }
                                })
                                .collect::<Vec<_>>()
                                .join("-")
                        });
                        format!(
                            "traceparent={tp:?} tracestate={:?} op={:?}",
                            u.header("tracestate"),
                            u.header("x-envoy-decorator-operation")
                        )
                    })
                    .collect();
                got.push(format!(
                    "{} {path} {headers:?}: {} op={:?} upstream={upstream:?}",
                    spec.0,
                    r.resp.status,
                    r.resp.header("x-envoy-decorator-operation")
                ));
            }
        }
        // One export per span (min_flush_spans 1): wait for every sampled request's.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while collector
            .lines()
            .iter()
            .filter(|l| l.contains("\"event\":\"span\""))
            .count()
            < spans
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut all = Vec::new();
        for l in collector.lines() {
            let v: Value = serde_json::from_str(&l).expect("JSON");
            match v["event"].as_str() {
                Some("span") => all.push(v),
                Some("export") => got.push(format!(
                    "export {} {} {} {}",
                    v["path"], v["authority"], v["content_type"], v["spans"]
                )),
                _ => got.push(format!("collector: {v}")),
            }
        }
        let exported = all.len();
        // Parents named by their name and kind.
        let names: Vec<(String, String)> = all
            .iter()
            .map(|s| {
                (
                    s["span_id"].as_str().unwrap_or("").to_string(),
                    format!("{}/{}", s["name"].as_str().unwrap_or(""), s["kind"]),
                )
            })
            .collect();
        for s in all.iter_mut() {
            let parent = s["parent_span_id"].as_str().unwrap_or("").to_string();
            if let Some((_, n)) = names.iter().find(|(id, _)| !id.is_empty() && *id == parent) {
                s["parent_span_id"] = json!(format!("<{n}>"));
            }
        }
        let mut spans: Vec<String> = all
            .into_iter()
            .map(|s| {
                let mut s = normal_otlp(s).to_string();
                for (spec, port) in specs.iter().zip(&ports) {
                    s = s.replace(&format!(":{port}"), &format!(":<{}>", spec.0));
                }
                s.replace(&format!(":{}", backend.port()), ":<backend>")
            })
            .collect();
        spans.sort();
        got.sort();
        got.extend(spans);
        let stats = tracing_stats(&proxy, "tracing.", exported).await;
        got.extend(stats.into_iter().map(|(k, v)| format!("{k}={v}")));
        seen.push(got);
    }
    seen
}

/// The proxy's stats containing `part`, once its `spans_sent` counts the `exported` spans the
/// collector got: a proxy counts a span sent when the collector's answer arrives, a moment
/// after the collector has it.
async fn tracing_stats(proxy: &ProxyProcess, part: &str, exported: usize) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut stats = proxy.admin().stats_containing(part).await;
        stats.retain(|(k, _)| !k.ends_with("timer_flushed"));
        stats.sort();
        let sent: usize = stats
            .iter()
            .filter(|(k, _)| k.ends_with(".spans_sent"))
            .filter_map(|(_, v)| v.trim().parse::<usize>().ok())
            .sum();
        if sent >= exported || std::time::Instant::now() >= deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const TRACEPARENT: &str = "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331";

#[tokio::test]
async fn opentelemetry_spans_and_trace_context_side_by_side_with_envoy() {
    run_for(Duration::from_secs(120), async {
        let cases: Vec<(&str, Vec<String>)> = vec![
            (
                "/a/very/long/path/that/is/long?q=1",
                vec!["x-tag: T".into()],
            ),
            ("/dec", vec![]),
            (
                "/dec/op",
                vec!["x-envoy-decorator-operation: from-client".into()],
            ),
            ("/nop", vec![]),
            ("/fail", vec![]),
            ("/direct", vec![]),
            (
                "/ctx",
                vec![
                    format!("{TRACEPARENT}-01"),
                    "tracestate: congo=t61rcWkgMzE".into(),
                ],
            ),
            ("/unsampled", vec![format!("{TRACEPARENT}-00")]),
            (
                "/bad",
                vec!["traceparent: 00-zz-b7ad6b7169203331-01".into()],
            ),
            ("/client", vec!["x-client-trace-id: 42".into()]),
        ];
        // No span for an unsampled request, nor for a malformed context (Envoy's null span).
        let seen = otlp_side_by_side(&PLAIN, &cases, 24, &|_| {}).await;
        let all = assert_same(&seen);
        assert!(all.contains("\"kind\":2"), "{all}");
        assert!(all.contains("\"kind\":3"), "{all}");
        assert!(all.contains("tracing.opentelemetry.spans_sent=24"), "{all}");
    })
    .await;
}

/// Upstream spans under OpenTelemetry: the same listeners and requests as Zipkin's.
#[tokio::test]
async fn opentelemetry_upstream_spans_side_by_side_with_envoy() {
    run_for(Duration::from_secs(120), async {
        let cases: Vec<(&str, Vec<String>)> = vec![
            ("/plain", vec!["x-tag: T".into()]),
            ("/dec", vec![]),
            ("/retry/status/503", vec![]),
            ("/status/404", vec![]),
            ("/dead", vec![]),
            ("/fail", vec![]),
            (
                "/ctx",
                vec![
                    format!("{TRACEPARENT}-01"),
                    "tracestate: congo=t61rcWkgMzE".into(),
                ],
            ),
            ("/unsampled", vec![format!("{TRACEPARENT}-00")]),
        ];
        let seen = otlp_side_by_side(&SPAWNING, &cases, 3 * (7 + 7), &|_| {}).await;
        let all = assert_same(&seen);
        assert!(all.contains("router backend_stats egress"), "{all}");
        assert!(all.contains("tracing.opentelemetry.spans_sent=42"), "{all}");
    })
    .await;
}

/// `upstream_operation` names each upstream span: the connection manager's on every listener,
/// a route's over it on `/dec`; a name that renders empty leaves `router <cluster> egress`.
/// Requests: plain, decorated, retried, answered 404, to a cluster nothing listens for.
#[tokio::test]
async fn opentelemetry_upstream_operations_side_by_side_with_envoy() {
    run_for(Duration::from_secs(120), async {
        let cases: Vec<(&str, Vec<String>)> = vec![
            ("/plain", vec!["x-tag: T".into()]),
            ("/dec", vec!["x-tag: D".into()]),
            ("/retry/status/503", vec![]),
            ("/status/404", vec![]),
            ("/dead", vec![]),
            ("/nop", vec!["x-empty: yes".into()]),
        ];
        let tweak = |v: &mut Value| {
            for i in 0..SPAWNING.len() {
                let hcm = &mut v["static_resources"]["listeners"][i]["filter_chains"][0]["filters"]
                    [0]["typed_config"];
                hcm["tracing"]["upstream_operation"] =
                    json!("up %UPSTREAM_CLUSTER% %PATH(NQ:PATH)% %RESPONSE_CODE% %REQ(x-tag)%");
                let routes = &mut hcm["route_config"]["virtual_hosts"][0]["routes"];
                routes[2]["tracing"] =
                    json!({ "upstream_operation": "dec %REQ(:METHOD)% %REQ(x-tag)%" });
                // Renders empty: Envoy's own name stays.
                routes[3]["tracing"] = json!({ "upstream_operation": "%REQ(x-nothing)%" });
            }
        };
        let seen = otlp_side_by_side(&SPAWNING, &cases, 3 * (6 + 7), &tweak).await;
        let all = assert_same(&seen);
        assert!(all.contains("up backend_stats /plain 200 T"), "{all}");
        assert!(all.contains("dec GET D"), "{all}");
        assert!(all.contains("router backend_stats egress"), "{all}");
    })
    .await;
}

/// OpenTelemetry's samplers decide instead of the caller: `always_on` on a listener that
/// samples nothing itself (`random_sampling: 0`: its streams' spans stay unsampled, whatever
/// the caller and the sampler say, while their children are sampled), `parent_based` over a
/// ratio of 0 (a caller's decision stands), and a ratio of 50% judged on the caller's trace id
/// whatever the caller decided, with upstream spans so that each child is judged too. Compared: the
/// context each upstream request got (its sampled flag), every exported span and the stats.
#[tokio::test]
async fn opentelemetry_samplers_side_by_side_with_envoy() {
    run_for(Duration::from_secs(120), async {
        let sampler = |name: &str, config: Value| {
            let mut c = config;
            c["@type"] = json!(format!(
                "type.googleapis.com/envoy.extensions.tracers.opentelemetry.samplers.v3.{name}"
            ));
            json!({ "name": format!("envoy.tracers.opentelemetry.samplers.{name}"),
                "typed_config": c })
        };
        let samplers = [
            sampler("AlwaysOnSamplerConfig", json!({})),
            sampler(
                "ParentBasedSamplerConfig",
                json!({ "wrapped_sampler": sampler("TraceIdRatioBasedSamplerConfig",
                    json!({ "sampling_percentage": { "numerator": 0 } })) }),
            ),
            sampler(
                "TraceIdRatioBasedSamplerConfig",
                json!({ "sampling_percentage": { "numerator": 50 } }),
            ),
        ];
        let tweak = |v: &mut Value| {
            for (i, s) in samplers.iter().enumerate() {
                let tracing = &mut v["static_resources"]["listeners"][i]["filter_chains"][0]
                    ["filters"][0]["typed_config"]["tracing"];
                tracing["provider"]["typed_config"]["sampler"] = s.clone();
                tracing["spawn_upstream_span"] = json!(true);
                if i == 0 {
                    tracing["random_sampling"] = json!({ "value": 0 });
                }
            }
        };
        // 0af7651916cd43dd…: its first eight bytes, read little-endian, are 78 modulo 100 (not
        // sampled at 50%); 1af7…: 94; 0a00…00: 10 (sampled). (A new trace's id is random: its
        // decision under a ratio cannot be compared.)
        let ids = [
            "0af7651916cd43dd8448eb211c80319c",
            "1af7651916cd43dd8448eb211c80319c",
            "0a000000000000008448eb211c80319c",
        ];
        let mut cases: Vec<(String, Vec<String>)> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            for flag in ["01", "00"] {
                cases.push((
                    format!("/ctx{i}/{flag}"),
                    vec![format!("traceparent: 00-{id}-b7ad6b7169203331-{flag}")],
                ));
            }
        }
        let cases: Vec<(&str, Vec<String>)> =
            cases.iter().map(|(p, h)| (p.as_str(), h.clone())).collect();
        // Under always_on the stream's span is not sampled (the connection manager does not
        // trace) but its six children are; under parent_based the three sampled callers'
        // spans and their children; under the ratio the two requests of the trace it keeps.
        let seen = otlp_side_by_side(&PLAIN, &cases, 6 + 2 * 3 + 2 * 2, &tweak).await;
        let all = assert_same(&seen);
        assert!(all.contains("-01"), "{all}");
        assert!(all.contains("-00"), "{all}");
    })
    .await;
}

/// Span names from formats and the route's `tracing`: the connection manager's `operation`
/// (rendered when the span ends, a missing value empty; decorators and a caller's
/// `x-envoy-decorator-operation` then do nothing) on the ingress listener; on every listener,
/// routes whose `tracing` samples nothing, adds tags (one replacing the connection manager's of
/// the same name), names the span, or samples 30% by the request id as Envoy evaluates a
/// route's fraction (`id % 100 < 30`: the first id passes, the second does not, where a share
/// of 10,000 would judge them the other way round).
#[tokio::test]
async fn zipkin_operations_and_route_tracing_side_by_side_with_envoy() {
    run_for(Duration::from_secs(120), async {
        let tweak = |v: &mut Value| {
            for i in 0..3 {
                let hcm = &mut v["static_resources"]["listeners"][i]["filter_chains"][0]["filters"]
                    [0]["typed_config"];
                if i == 0 {
                    hcm["tracing"]["operation"] =
                        json!("op %RESPONSE_CODE% %REQ(:PATH)% [%REQ(x-missing)%] %UPSTREAM_HOST%");
                }
                let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
                    .as_array_mut()
                    .expect("routes");
                let route = |prefix: &str, tracing: Value| {
                    json!({ "match": { "prefix": prefix },
                        "route": { "cluster": "backend" }, "tracing": tracing })
                };
                for (j, r) in [
                    route("/rt0", json!({ "random_sampling": { "numerator": 0 } })),
                    route(
                        "/rtag",
                        json!({ "custom_tags": [
                            { "tag": "rtag", "literal": { "value": "rv" } },
                            { "tag": "lit", "literal": { "value": "route-v" } },
                            { "tag": "rhdr", "request_header": { "name": "x-tag" } } ] }),
                    ),
                    route("/rop", json!({ "operation": "route-op %REQ(:PATH)%" })),
                    route("/rsamp", json!({ "random_sampling": { "numerator": 30 } })),
                ]
                .into_iter()
                .enumerate()
                {
                    routes.insert(j, r);
                }
            }
        };
        let id = |hex: &str| format!("x-request-id: {hex}-0000-4000-8000-000000000000");
        let cases: Vec<(&str, Vec<String>)> = vec![
            ("/plain", vec![]),
            (
                "/dec",
                vec!["x-envoy-decorator-operation: from-client".into()],
            ),
            ("/fail", vec![]),
            ("/rt0", vec![]),
            ("/rtag", vec!["x-tag: T".into()]),
            ("/rop", vec![]),
            ("/rsamp/in", vec![id("00001392")]),
            ("/rsamp/out", vec![id("000004e2")]),
        ];
        // Per listener: all but /rt0 and the second /rsamp.
        let seen = zipkin_side_by_side(&PLAIN, &cases, 3 * 6, &tweak).await;
        let all = assert_same(&seen);
        assert!(
            all.contains("\"name\":\"op 200 /plain [] 127.0.0.1:<backend>\""),
            "{all}"
        );
        assert!(all.contains("route-op /rop"), "{all}");
        assert!(all.contains("\"rtag\":\"rv\""), "{all}");
        assert!(all.contains("tracing.zipkin.spans_sent=18"), "{all}");
    })
    .await;
}
