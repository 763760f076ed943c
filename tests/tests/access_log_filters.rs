//! Access log filters, side by side with Envoy 1.40: `not_health_check_filter` (the health
//! check filter's requests), `runtime_filter` (a share drawn from the request id),
//! `grpc_status_filter` (trailers, headers, or the HTTP status; with `exclude`),
//! `log_type_filter` and CEL `extension_filter`s. Each log's lines must be the same.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{get, http1_once};
use skiff_tests::config::{bootstrap, cluster, hcm, listener, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::H2Upstream;
use skiff_tests::{free_port, refused_port, run_for, scratch_dir};

fn log(path: &str, filter: Value) -> Value {
    json!({ "name": "f", "filter": filter, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path,
        "log_format": { "text_format_source": { "inline_string": "%REQ(:PATH)% %RESPONSE_CODE% %REQ(X-REQUEST-ID)%\n" } } } })
}

fn filters() -> Vec<(&'static str, Value)> {
    vec![
        ("not_health_check", json!({ "not_health_check_filter": {} })),
        (
            "runtime",
            json!({ "runtime_filter": { "runtime_key": "al.sample",
                "percent_sampled": { "numerator": 50, "denominator": "HUNDRED" } } }),
        ),
        (
            "grpc_unavailable_or_not_found",
            json!({ "grpc_status_filter": { "statuses": ["UNAVAILABLE", "NOT_FOUND"] } }),
        ),
        (
            "grpc_not_ok",
            json!({ "grpc_status_filter": { "statuses": ["OK"], "exclude": true } }),
        ),
        (
            "grpc_unknown",
            json!({ "grpc_status_filter": { "statuses": ["UNKNOWN"] } }),
        ),
        (
            "type_downstream_end",
            json!({ "log_type_filter": { "types": ["DownstreamEnd"] } }),
        ),
        (
            "type_not_downstream_end",
            json!({ "log_type_filter": { "types": ["DownstreamEnd"], "exclude": true } }),
        ),
        // CEL expressions: Envoy Gateway's, and the operators, functions and attributes
        // skiff reads; an error or a value that is not a bool logs nothing.
        ("cel_errors", cel("response.code >= 400")),
        ("cel_path", cel("request.url_path.contains('grpc')")),
        (
            "cel_logic",
            cel("request.path.startsWith('/id') && !(request.url_path in ['/id/a', '/id/b'])"),
        ),
        (
            "cel_arith",
            cel("response.code / 100 == 5 || size(request.path) > 18 && response.code % 2 == 0"),
        ),
        (
            "cel_cond",
            cel("(response.code < 300 ? 'ok' : 'bad') == 'bad' && request.method == 'GET'"),
        ),
        (
            "cel_headers",
            cel("'x-request-id' in request.headers && request.headers['x-request-id'].matches('^0000')"),
        ),
        ("cel_missing_key", cel("request.headers['x-nope'] == 'x' || response.code == 200")),
        ("cel_missing_or", cel("response.code == 404 || request.headers['x-nope'] == 'x'")),
        ("cel_not_bool", cel("response.code")),
        (
            "cel_connection",
            cel("source.address.startsWith('127.0.0.1:') && destination.port > 0 && connection.mtls == false && request.host == 'lf.example.com'"),
        ),
        (
            "cel_upstream",
            cel("xds.cluster_name == 'up' && upstream.port > 0 && request.protocol == 'HTTP/1.1' && response.code_details == 'via_upstream'"),
        ),
        ("cel_query", cel("request.query == '' && request.scheme == 'http'")),
    ]
}

fn cel(expression: &str) -> Value {
    json!({ "extension_filter": { "name": "envoy.access_loggers.extension_filters.cel",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
            "expression": expression } } })
}

const REQUESTS: &[(&str, Option<&str>)] = &[
    ("/healthz", None),
    ("/up/grpc-status/14", None),
    ("/up/grpc-status/0", None),
    ("/up/grpc-status/5", None),
    ("/up/grpc-status/99", None),
    ("/up/plain", None),
    ("/refused", None),
    ("/nothing", None),
    ("/id/a", Some("00000001-1111-4111-8111-111111111111")),
    ("/id/b", Some("00000063-1111-4111-8111-111111111111")),
    ("/id/c", Some("000000c8-1111-4111-8111-111111111111")),
    ("/id/d", Some("0000012d-1111-4111-8111-111111111111")),
    ("/id/e", Some("not-a-uuid")),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_filters_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let dir = scratch_dir("log-filters");
        let refused = refused_port();
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let up = H2Upstream::start("up").await;
            let port = free_port();
            let paths: Vec<String> = filters()
                .iter()
                .map(|(n, _)| dir.join(format!("{}-{n}.log", kind.name())).display().to_string())
                .collect();
            let mut m = hcm(
                "lf",
                vec![json!({ "name": "all", "domains": ["*"], "routes": [
                    { "match": { "prefix": "/up" }, "route": { "cluster": "up" } },
                    { "match": { "prefix": "/id" }, "route": { "cluster": "up" } },
                    { "match": { "prefix": "/refused" }, "route": { "cluster": "refused" } },
                    { "match": { "prefix": "/" }, "direct_response": { "status": 404 } }
                ] })],
            );
            m["typed_config"]["access_log"] = Value::Array(
                filters()
                    .into_iter()
                    .zip(&paths)
                    .map(|((_, f), p)| log(p, f))
                    .collect(),
            );
            m["typed_config"]["http_filters"] = json!([
                { "name": "envoy.filters.http.health_check", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
                    "pass_through_mode": false,
                    "headers": [{ "name": ":path", "string_match": { "exact": "/healthz" } }] } },
                { "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
            ]);
            let mut up_cluster = cluster("up", &[up.port()]);
            up_cluster["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": { "http2_protocol_options": {} } } });
            let v = bootstrap(
                free_port(),
                vec![listener("l", "127.0.0.1", port, m)],
                vec![up_cluster, cluster("refused", &[refused])],
            );
            let p = ProxyProcess::start(kind, &to_yaml(&v), &[]).await;
            for (path, id) in REQUESTS {
                let mut req = get(path, "lf.example.com");
                if let Some(id) = id {
                    req.headers_mut()
                        .insert("x-request-id", id.parse().expect("value"));
                }
                http1_once(&format!("127.0.0.1:{port}"), req)
                    .await
                    .expect("a response");
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            drop(p);
            let mut got = Vec::new();
            for ((name, _), path) in filters().iter().zip(&paths) {
                let mut lines: Vec<String> = std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .lines()
                    // Generated request ids differ; the ones sent are kept.
                    .map(|l| match l.rsplit_once(' ') {
                        Some((_, id)) if REQUESTS.iter().any(|(_, sent)| *sent == Some(id)) => {
                            l.to_string()
                        }
                        Some((head, _)) => format!("{head} (generated)"),
                        None => l.to_string(),
                    })
                    .collect();
                // The runtime filter draws requests without a UUID at random: only those with
                // one are compared.
                if *name == "runtime" {
                    lines.retain(|l| l.contains("-1111-"));
                }
                lines.sort();
                got.push(format!("{name}: {lines:#?}"));
            }
            seen.push(got);
        }
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        let all = seen[0].join("\n");
        assert!(!all.contains("not_health_check: [\n    \"/healthz"), "{all}");
        let runtime = seen[0]
            .iter()
            .find(|l| l.starts_with("runtime:"))
            .expect("the runtime log");
        // 1 % 100 and 200 % 100 are under 50; 99 is not.
        assert!(runtime.contains("/id/a 200 00000001"), "{runtime}");
        assert!(runtime.contains("/id/c 200 000000c8"), "{runtime}");
        assert!(!runtime.contains("/id/b"), "{runtime}");
        let grpc = seen[0]
            .iter()
            .find(|l| l.starts_with("grpc_unavailable_or_not_found:"))
            .expect("the gRPC log");
        assert!(grpc.contains("/up/grpc-status/14"), "{grpc}");
        assert!(grpc.contains("/refused 503"), "{grpc}");
        assert!(!grpc.contains("/up/grpc-status/0"), "{grpc}");
        let log_of = |name: &str| {
            seen[0]
                .iter()
                .find(|l| l.starts_with(&format!("{name}:")))
                .cloned()
                .expect("a log")
        };
        let errors = log_of("cel_errors");
        assert!(errors.contains("/refused 503") && errors.contains("/nothing 404"), "{errors}");
        assert!(!errors.contains("/up/plain"), "{errors}");
        assert!(log_of("cel_missing_key").contains("/up/plain 200"));
        assert!(log_of("cel_missing_or").contains("/nothing 404"));
        assert!(log_of("cel_not_bool").ends_with("[]"));
        assert!(log_of("cel_connection").contains("/up/plain 200"));
        assert!(log_of("cel_upstream").contains("/up/plain 200"));
        assert!(log_of("cel_headers").contains("/id/a 200"));
        assert!(log_of("cel_logic").contains("/id/c 200"));
    })
    .await;
}
