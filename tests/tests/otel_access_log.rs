//! `envoy.access_loggers.open_telemetry` side by side with Envoy 1.40: records exported over
//! OTLP gRPC (`LogsService/Export`) to `otlp-collector`, a real gRPC collector of the tests.
//!
//! Three loggers: one of Envoy Gateway's shape on the connection manager (`common_config`,
//! `resource_attributes` overriding a built-in label, a text body, attributes with a nested
//! key-value list, a list and a missing header; its gRPC service's `initial_metadata`), one with the newer fields (`grpc_service`,
//! `log_name`, `stat_prefix`, `disable_builtin_labels`, `buffer_size_bytes: 1` so that each
//! record is sent alone) behind a status filter, and one on the listener itself, for a
//! connection no filter chain takes. The connection manager traces with OpenTelemetry, so the
//! records of traced requests carry their trace and span. Compared: every record (resource,
//! body, attributes, whether it has a trace and span, the caller's trace id), the exports of
//! the unbatched logger, and the loggers' stats.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::config::{bootstrap, router, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::run_for;
use skiff_tests::upstream::EchoUpstream;

const COLLECTOR: &str = env!("CARGO_BIN_EXE_otlp-collector");

fn config(admin: u16, (port, bare): (u16, u16), backend: u16, collector: u16) -> String {
    let grpc = |cluster: &str| {
        json!({ "envoy_grpc": { "cluster_name": cluster,
        "authority": "otel-collector.example" } })
    };
    let gateway = json!({ "name": "envoy.access_loggers.open_telemetry", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        "common_config": { "log_name": "gateway_log", "transport_api_version": "V3",
            "grpc_service": {
                "envoy_grpc": { "cluster_name": "otel", "authority": "otel-collector.example" },
                "initial_metadata": [ { "key": "Authorization", "value": "Bearer my-api-key" },
                    { "key": "X-Tenant-ID", "value": "tenant-123" } ] } },
        "resource_attributes": { "values": [
            { "key": "cluster_name", "value": { "string_value": "cluster1" } },
            { "key": "extra", "value": { "string_value": "x" } } ] },
        "body": { "string_value": "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS%\n" },
        "attributes": { "values": [
            { "key": "response_code", "value": { "string_value": "%RESPONSE_CODE%" } },
            { "key": "literal", "value": { "string_value": "plain" } },
            { "key": "nested", "value": { "kvlist_value": { "values": [
                { "key": "method", "value": { "string_value": "%REQ(:METHOD)%" } } ] } } },
            { "key": "list", "value": { "array_value": { "values": [
                { "string_value": "%PROTOCOL%" }, { "string_value": "%UPSTREAM_CLUSTER%" } ] } } },
            { "key": "missing", "value": { "string_value": "%REQ(X-NOPE)%" } } ] }
    } });
    let errors = json!({ "name": "envoy.access_loggers.open_telemetry",
        "filter": { "status_code_filter": { "comparison": { "op": "GE",
            "value": { "default_value": 400, "runtime_key": "unset_key" } } } },
        "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        "grpc_service": grpc("otel"), "log_name": "errors", "stat_prefix": "errs",
        "disable_builtin_labels": true, "buffer_size_bytes": 1,
        "body": { "kvlist_value": { "values": [
            { "key": "code", "value": { "string_value": "%RESPONSE_CODE%" } },
            { "key": "details", "value": { "string_value": "%RESPONSE_CODE_DETAILS%" } } ] } }
    } });
    let bare_log = json!({ "name": "envoy.access_loggers.open_telemetry", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        "grpc_service": grpc("otel"), "log_name": "listener",
        "body": { "string_value": "%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %PROTOCOL%" }
    } });
    let hcm = json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "in",
        "access_log": [ gateway, errors ],
        "tracing": { "provider": { "name": "envoy.tracers.opentelemetry", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "grpc_service": { "envoy_grpc": { "cluster_name": "otel" } },
            "service_name": "svc" } } },
        "http_filters": [ router() ],
        "route_config": { "virtual_hosts": [ { "name": "v", "domains": ["*"], "routes": [
            { "match": { "prefix": "/missing" }, "route": { "cluster": "empty" } },
            { "match": { "prefix": "/ok" }, "route": { "cluster": "backend",
              "prefix_rewrite": "/rewritten" } },
            { "match": { "prefix": "/" }, "route": { "cluster": "backend" } }
        ] } ] }
    } });
    let listeners = vec![
        json!({ "name": "http", "traffic_direction": "INBOUND",
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
            "filter_chains": [ { "filters": [ hcm ] } ] }),
        // Only a TLS client naming `only.example` is served: a plain connection is closed
        // without a chain, and logged by the listener.
        json!({ "name": "bare",
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": bare } },
            "listener_filters": [ { "name": "envoy.filters.listener.tls_inspector",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } } ],
            "access_log": [ bare_log ],
            "filter_chains": [ { "filter_chain_match": { "server_names": ["only.example"] },
                "filters": [ { "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": "t", "cluster": "backend" } } ] } ] }),
    ];
    let cluster = |name: &str, port: Option<u16>| {
        let mut c = json!({ "name": name, "connect_timeout": "1s", "type": "STATIC" });
        if let Some(p) = port {
            c["load_assignment"] = json!({ "cluster_name": name, "endpoints": [ { "lb_endpoints": [
                { "endpoint": { "address": { "socket_address": {
                    "address": "127.0.0.1", "port_value": p } } } } ] } ] });
        }
        c
    };
    let mut otel = cluster("otel", Some(collector));
    otel["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} } } });
    let mut v = bootstrap(
        admin,
        listeners,
        vec![
            cluster("backend", Some(backend)),
            cluster("empty", None),
            otel,
        ],
    );
    v["node"] = json!({ "id": "node-1", "cluster": "front-proxy", "locality": { "zone": "z1" } });
    to_yaml(&v)
}

/// A record as both proxies must send it: its time and random ids masked.
fn normal(mut r: Value) -> Value {
    r["time"] = json!(if r["time"].as_u64().unwrap_or(0) > 0 {
        "T"
    } else {
        "none"
    });
    for k in ["trace_id", "span_id"] {
        if let Some(v) = r[k].as_str() {
            if !v.is_empty() && !v.starts_with("0af7") {
                r[k] = json!(format!("<{} hex>", v.len()));
            }
        }
    }
    r
}

#[tokio::test]
async fn open_telemetry_access_logs_side_by_side_with_envoy() {
    run_for(Duration::from_secs(120), async {
        let parent = "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let requests: Vec<(&str, Vec<&str>)> = vec![
            ("/ok", vec![]),
            ("/traced", vec![parent]),
            ("/status/404", vec![]),
            ("/missing", vec![]),
        ];
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let backend = EchoUpstream::start("backend").await;
            let collector = skiff_tests::peer::Peer::start(COLLECTOR, &["0"]).await;
            let (port, bare) = (skiff_tests::free_port(), skiff_tests::free_port());
            let yaml = config(
                skiff_tests::free_port(),
                (port, bare),
                backend.port(),
                collector.port("port"),
            );
            let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for (path, headers) in &requests {
                let url = format!("http://127.0.0.1:{port}{path}");
                let mut args = vec!["-s"];
                for h in headers {
                    args.extend(["-H", h]);
                }
                args.push(&url);
                let r = skiff_tests::client::curl(&args).await;
                got.push(format!("{path}: {}", r.resp.status));
            }
            // A plain connection the TLS-only listener closes.
            {
                use tokio::io::AsyncWriteExt;
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", bare))
                    .await
                    .expect("connect");
                let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
                let mut buf = [0u8; 64];
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::io::AsyncReadExt::read(&mut s, &mut buf),
                )
                .await;
            }
            // Four records of the gateway's logger, two of the errors' and the listener's one.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let logs = || {
                collector
                    .lines()
                    .into_iter()
                    .filter(|l| l.contains("\"event\":\"log\""))
                    .count()
            };
            while logs() < 7 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut records = Vec::new();
            let mut unbatched = 0;
            for l in collector.lines() {
                let v: Value = serde_json::from_str(&l).expect("JSON");
                match v["event"].as_str() {
                    Some("log") => {
                        if v["resource"].as_object().is_some_and(|r| r.is_empty()) {
                            unbatched += 1;
                        }
                        let mut r = normal(v);
                        r["body"] = json!(r["body"]
                            .to_string()
                            .replace(&format!(":{}", backend.port()), ":<backend>"));
                        records.push(r.to_string());
                    }
                    Some("log_export") => got.push(format!(
                        "export {} {} {} (records in one export or more)",
                        v["path"], v["authority"], v["metadata"]
                    )),
                    _ => {}
                }
            }
            got.sort();
            got.dedup();
            records.sort();
            got.push(format!("records without builtin labels: {unbatched}"));
            got.extend(records);
            // The loggers count what they wrote once the collector has answered the export:
            // a moment after it has the records.
            let written = |stats: &[(String, String)], key: &str, n: u64| {
                stats
                    .iter()
                    .any(|(k, v)| k.ends_with(key) && v.parse::<u64>().is_ok_and(|v| v >= n))
            };
            let mut stats = proxy.admin().stats_containing("access_logs.").await;
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !(written(&stats, "access_log.logs_written", 5)
                && written(&stats, "errs.logs_written", 2))
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stats = proxy.admin().stats_containing("access_logs.").await;
            }
            stats.sort();
            got.extend(stats.into_iter().map(|(k, v)| format!("{k}={v}")));
            seen.push(got);
        }
        let all = skiff_tests::diff::assert_same_lines(&seen);
        assert!(all.contains("0af7651916cd43dd8448eb211c80319c"), "{all}");
        assert!(
            all.contains("open_telemetry_access_log.errs.logs_written=2"),
            "{all}"
        );
        assert!(all.contains("filter_chain_not_found"), "{all}");
        assert!(all.contains("Bearer my-api-key"), "{all}");
    })
    .await;
}
