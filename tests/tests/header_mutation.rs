//! `envoy.filters.http.header_mutation` side by side with Envoy 1.40: the filter's request and
//! response mutations (appends with each `append_action`, `keep_empty_value`, a formatted
//! value, `remove`, `remove_on_match`), and `HeaderMutationPerRoute` at the route, the virtual
//! host and the route configuration, in the order Envoy makes them with and without
//! `most_specific_header_mutations_wins`. Compared: the headers the upstream got and the
//! response's.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::config::{bootstrap, cluster, listener, router, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::run_for;
use skiff_tests::upstream::EchoUpstream;

fn append(key: &str, value: &str, action: Option<&str>) -> Value {
    let mut v = json!({ "append": { "header": { "key": key, "value": value } } });
    if let Some(a) = action {
        v["append"]["append_action"] = json!(a);
    }
    v
}

fn per_route(value: &str) -> Value {
    json!({ "envoy.filters.http.header_mutation": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
        "mutations": {
            "request_mutations": [ append("x-a", value, None) ],
            "response_mutations": [ append("resp-a", value, None) ] } } })
}

fn hcm(name: &str, most_specific_wins: bool) -> Value {
    let filter = json!({ "name": "envoy.filters.http.header_mutation", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
        "most_specific_header_mutations_wins": most_specific_wins,
        "mutations": {
            "request_mutations": [
                append("x-a", "filter", None),
                append("x-over", "%REQ(:PATH)%", Some("OVERWRITE_IF_EXISTS_OR_ADD")),
                append("x-absent", "added", Some("ADD_IF_ABSENT")),
                append("x-present", "not-added", Some("ADD_IF_ABSENT")),
                append("x-only-if", "overwritten", Some("OVERWRITE_IF_EXISTS")),
                append("x-missing-if", "never", Some("OVERWRITE_IF_EXISTS")),
                { "append": { "header": { "key": "x-empty" }, "keep_empty_value": true } },
                { "append": { "header": { "key": "x-empty-dropped" } } },
                { "remove": "x-drop" },
                { "remove_on_match": { "key_matcher": { "prefix": "x-secret-" } } }
            ],
            "response_mutations": [
                append("resp-a", "f1,f2", None),
                append("x-upstream", "not-added", Some("ADD_IF_ABSENT")),
                append("x-upstream", "changed", Some("OVERWRITE_IF_EXISTS")),
                append("resp-code", "%RESPONSE_CODE%", None),
                { "remove_on_match": { "key_matcher": { "exact": "content-type" } } }
            ]
        } } });
    json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "http_filters": [ filter, router() ],
        "route_config": {
            "typed_per_filter_config": per_route("table"),
            "virtual_hosts": [ { "name": "v", "domains": ["*"],
                "typed_per_filter_config": per_route("vhost"),
                "routes": [
                    { "match": { "prefix": "/route" }, "route": { "cluster": "backend" },
                      "typed_per_filter_config": per_route("route") },
                    { "match": { "prefix": "/" }, "route": { "cluster": "backend" } }
                ] } ] }
    } })
}

#[tokio::test]
async fn header_mutation_side_by_side_with_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let backend = EchoUpstream::start("backend").await;
            let ports = [skiff_tests::free_port(), skiff_tests::free_port()];
            let yaml = to_yaml(&bootstrap(
                skiff_tests::free_port(),
                vec![
                    listener("least", "127.0.0.1", ports[0], hcm("least", false)),
                    listener("most", "127.0.0.1", ports[1], hcm("most", true)),
                ],
                vec![cluster("backend", &[backend.port()])],
            ));
            let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for port in ports {
                for path in ["/route/x?q=1", "/other"] {
                    let before = backend.rec.requests().len();
                    let url = format!("http://127.0.0.1:{port}{path}");
                    let r = skiff_tests::client::curl(&[
                        "-s",
                        "-H",
                        "x-drop: 1",
                        "-H",
                        "x-secret-one: s",
                        "-H",
                        "x-over: client",
                        "-H",
                        "x-present: client",
                        "-H",
                        "x-only-if: client",
                        &url,
                    ])
                    .await;
                    let up = backend.rec.requests().get(before).map(|u| {
                        [
                            "x-a",
                            "x-over",
                            "x-absent",
                            "x-present",
                            "x-only-if",
                            "x-missing-if",
                            "x-empty",
                            "x-empty-dropped",
                            "x-drop",
                            "x-secret-one",
                        ]
                        .iter()
                        .map(|n| format!("{n}={:?}", u.header_all(n)))
                        .collect::<Vec<_>>()
                        .join(" ")
                    });
                    let resp: Vec<String> = ["resp-a", "x-upstream", "resp-code", "content-type"]
                        .iter()
                        .map(|n| {
                            let all: Vec<&str> = r
                                .resp
                                .headers
                                .iter()
                                .filter(|(k, _)| k == n)
                                .map(|(_, v)| v.as_str())
                                .collect();
                            format!("{n}={all:?}")
                        })
                        .collect();
                    got.push(format!(
                        "{} {path}: {} upstream={up:?} response={}",
                        if port == ports[0] { "least" } else { "most" },
                        r.resp.status,
                        resp.join(" ")
                    ));
                }
            }
            drop(proxy);
            seen.push(got);
        }
        let all = skiff_tests::diff::assert_same_lines(&seen);
        assert!(all.contains("route"), "{all}");
    })
    .await;
}

/// A connection manager with `early_header_mutation_extensions` (the mutations Envoy Gateway
/// writes), `use_remote_address`, and a route only a header set early matches.
fn early_hcm() -> Value {
    let early = json!({ "name": "envoy.http.early_header_mutation.header_mutation", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
        "mutations": [
            append("x-early", "1", None),
            append("x-early-2", "a", None),
            append("x-early-2", "b", None),
            append("x-forwarded-for", "9.9.9.9", None),
            append("x-over", "early", Some("OVERWRITE_IF_EXISTS_OR_ADD")),
            append("x-absent", "early", Some("ADD_IF_ABSENT")),
            { "remove": "x-request-id" },
            { "remove": "x-drop" },
            { "remove_on_match": { "key_matcher": { "prefix": "x-secret-" } } }
        ] } });
    json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "early",
        "use_remote_address": true,
        "early_header_mutation_extensions": [ early ],
        "http_filters": [ router() ],
        "route_config": { "virtual_hosts": [ { "name": "v", "domains": ["*"], "routes": [
            { "match": { "prefix": "/", "headers": [
                { "name": "x-early", "string_match": { "exact": "1" } } ] },
              "route": { "cluster": "backend" } }
        ] } ] }
    } })
}

#[tokio::test]
async fn early_header_mutations_side_by_side_with_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let backend = EchoUpstream::start("backend").await;
            let port = skiff_tests::free_port();
            let yaml = to_yaml(&bootstrap(
                skiff_tests::free_port(),
                vec![listener("early", "127.0.0.1", port, early_hcm())],
                vec![cluster("backend", &[backend.port()])],
            ));
            let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let before = backend.rec.requests().len();
            let r = skiff_tests::client::curl(&[
                "-s",
                "-H",
                "x-request-id: from-client",
                "-H",
                "x-forwarded-for: 1.1.1.1",
                "-H",
                "x-over: client",
                "-H",
                "x-absent: client",
                "-H",
                "x-drop: 1",
                "-H",
                "x-secret-a: 1",
                &format!("http://127.0.0.1:{port}/x"),
            ])
            .await;
            let up = backend.rec.requests().get(before).map(|u| {
                let id = u.header_all("x-request-id");
                format!(
                    "{} request-id from client: {}, present: {}",
                    [
                        "x-early",
                        "x-early-2",
                        "x-forwarded-for",
                        "x-over",
                        "x-absent",
                        "x-drop",
                        "x-secret-a",
                        "x-envoy-external-address",
                    ]
                    .iter()
                    .map(|n| format!("{n}={:?}", u.header_all(n)))
                    .collect::<Vec<_>>()
                    .join(" "),
                    id.contains(&"from-client"),
                    !id.is_empty()
                )
            });
            drop(proxy);
            seen.push(vec![format!("{} upstream={up:?}", r.resp.status)]);
        }
        let all = skiff_tests::diff::assert_same_lines(&seen);
        assert!(all.contains("200"), "{all}");
    })
    .await;
}
