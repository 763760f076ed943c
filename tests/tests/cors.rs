//! The CORS filter (`envoy.filters.http.cors`) against Envoy 1.40: preflights answered or
//! forwarded, the headers added to responses to allowed origins, policies of the route, the
//! virtual host and the route table (each field from the most specific that sets it),
//! `filter_enabled`, `shadow_enabled`, `forward_not_matching_preflights`, `*` for methods and
//! headers, credentials, private network access, and the filter's stats.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, cluster, listener, router};
use skiff_tests::run_for;
use skiff_tests::side_by_side::{pair, Side, Up};

const POLICY: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";

fn cors(mut p: Value) -> Value {
    p["@type"] = json!(POLICY);
    json!({ "envoy.filters.http.cors": p })
}

fn route(prefix: &str, policy: Option<Value>) -> Value {
    let mut r = json!({ "match": { "prefix": prefix }, "route": { "cluster": "up" } });
    if let Some(p) = policy {
        r["typed_per_filter_config"] = cors(p);
    }
    r
}

fn off(numerator: u32) -> Value {
    json!({ "default_value": { "numerator": numerator, "denominator": "HUNDRED" } })
}

fn build(admin: u16, listen: u16, upstream: u16) -> String {
    let mut direct = json!({ "match": { "prefix": "/direct" },
        "direct_response": { "status": 200, "body": { "inline_string": "d" } } });
    direct["typed_per_filter_config"] =
        cors(json!({ "allow_origin_string_match": [{ "exact": "http://a.test" }] }));
    let routes = vec![
        route("/open", None),
        route(
            "/restricted",
            Some(
                json!({ "allow_origin_string_match": [{ "safe_regex": { "regex": ".*\\.envoyproxy\\.io" } }] }),
            ),
        ),
        route(
            "/strict",
            Some(
                json!({ "allow_origin_string_match": [{ "exact": "http://b.test" }],
                "forward_not_matching_preflights": false }),
            ),
        ),
        route("/disabled", Some(json!({ "filter_enabled": off(0) }))),
        route(
            "/shadow",
            Some(json!({ "filter_enabled": off(0), "shadow_enabled": off(100) })),
        ),
        route(
            "/wild",
            Some(
                json!({ "allow_methods": "*", "allow_headers": "*", "allow_credentials": true,
                "expose_headers": "x-a, x-b", "max_age": "600",
                "allow_private_network_access": true }),
            ),
        ),
        direct,
    ];
    let vhost = json!({ "name": "all", "domains": ["*"], "routes": routes,
        "typed_per_filter_config": cors(json!({
            "allow_origin_string_match": [{ "prefix": "http://a." }],
            "allow_methods": "GET, POST" })) });
    let hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "cors",
            "route_config": { "virtual_hosts": [vhost],
                "typed_per_filter_config": cors(json!({ "max_age": "30", "expose_headers": "x-table" })) },
            "http_filters": [
                { "name": "envoy.filters.http.cors", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors" } },
                router()
            ]
        }
    });
    bootstrap(
        admin,
        vec![listener("l", "127.0.0.1", listen, hcm)],
        vec![cluster("up", &[upstream])],
    )
    .to_string()
}

/// A request: method, path, headers.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const PREFLIGHT_A: &[(&str, &str)] = &[
    ("origin", "http://a.test"),
    ("access-control-request-method", "PUT"),
    ("access-control-request-headers", "x-one, x-two"),
    ("access-control-request-private-network", "true"),
];

const CASES: &[Case] = &[
    ("GET", "/open", &[("origin", "http://a.test")]),
    ("GET", "/open", &[("origin", "http://evil.test")]),
    ("GET", "/open", &[]),
    ("OPTIONS", "/open", PREFLIGHT_A),
    ("OPTIONS", "/open", &[("origin", "http://a.test")]),
    (
        "OPTIONS",
        "/open",
        &[
            ("origin", "http://evil.test"),
            ("access-control-request-method", "GET"),
        ],
    ),
    (
        "GET",
        "/restricted",
        &[("origin", "https://www.envoyproxy.io")],
    ),
    ("GET", "/restricted", &[("origin", "http://a.test")]),
    (
        "OPTIONS",
        "/restricted",
        &[
            ("origin", "https://www.envoyproxy.io"),
            ("access-control-request-method", "GET"),
        ],
    ),
    (
        "OPTIONS",
        "/strict",
        &[
            ("origin", "http://a.test"),
            ("access-control-request-method", "GET"),
        ],
    ),
    (
        "OPTIONS",
        "/strict",
        &[
            ("origin", "http://b.test"),
            ("access-control-request-method", "GET"),
        ],
    ),
    ("GET", "/disabled", &[("origin", "http://a.test")]),
    ("OPTIONS", "/disabled", PREFLIGHT_A),
    ("GET", "/shadow", &[("origin", "http://a.test")]),
    ("OPTIONS", "/wild", PREFLIGHT_A),
    (
        "OPTIONS",
        "/wild",
        &[
            ("origin", "http://a.test"),
            ("access-control-request-method", "DELETE"),
        ],
    ),
    ("GET", "/wild", &[("origin", "http://a.test")]),
    ("GET", "/direct", &[("origin", "http://a.test")]),
    ("OPTIONS", "/direct", PREFLIGHT_A),
];

/// What a client sees that CORS decides: the status, the CORS headers, whether the upstream
/// answered, the body's length.
async fn observe(side: &Side, (method, path, headers): &Case) -> String {
    let url = format!("http://127.0.0.1:{}{path}", side.port);
    let mut args: Vec<String> = vec!["-X".into(), method.to_string(), url];
    for (k, v) in headers.iter() {
        args.push("-H".into());
        args.push(format!("{k}: {v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = curl(&args).await.resp;
    let mut cors: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("access-control-"))
        .map(|(k, v)| format!("{}: {v}", k.to_ascii_lowercase()))
        .collect();
    cors.sort();
    format!(
        "{} upstream={} cl={:?} {cors:?}",
        r.status,
        r.header("x-upstream").is_some(),
        r.header("content-length"),
    )
}

#[tokio::test]
async fn cors_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let (e, s) = pair(Up::H1, build).await;
        let mut differ = Vec::new();
        let mut table = String::new();
        for case in CASES {
            let (oe, os) = (observe(&e, case).await, observe(&s, case).await);
            table.push_str(&format!(
                "{} {} {:?}\n  envoy {oe}\n  skiff {os}\n",
                case.0, case.1, case.2
            ));
            if oe != os {
                differ.push(format!("{} {}", case.0, case.1));
            }
        }
        eprintln!("{table}");
        assert!(differ.is_empty(), "differ: {differ:?}\n{table}");
        for stat in [
            "http.cors.cors.origin_valid",
            "http.cors.cors.origin_invalid",
        ] {
            let (ve, vs) = (
                e.proxy.admin().counter(stat).await,
                s.proxy.admin().counter(stat).await,
            );
            assert_eq!(ve, vs, "{stat}");
            assert!(vs > 0, "{stat}");
        }
    })
    .await
}

/// The deprecated `cors` of a route and of a virtual host: read when no level has a policy in
/// `typed_per_filter_config` (the route's fields first, then the virtual host's), ignored once
/// one does.
fn build_legacy(admin: u16, listen: u16, upstream: u16) -> String {
    let up = |prefix: &str, cors: Option<Value>| {
        let mut r = json!({ "match": { "prefix": prefix }, "route": { "cluster": "up" } });
        if let Some(c) = cors {
            r["route"]["cors"] = c;
        }
        r
    };
    let mut typed = up("/typed", None);
    typed["typed_per_filter_config"] =
        cors(json!({ "allow_origin_string_match": [{ "exact": "http://t.test" }] }));
    let routes = vec![
        up(
            "/route",
            Some(
                json!({ "allow_origin_string_match": [{ "exact": "http://r.test" }],
                "allow_methods": "PUT", "max_age": "5" }),
            ),
        ),
        up(
            "/off",
            Some(
                json!({ "allow_origin_string_match": [{ "exact": "http://r.test" }],
                "filter_enabled": off(0) }),
            ),
        ),
        up("/vhost", None),
        typed,
    ];
    let vhost = json!({ "name": "legacy", "domains": ["*"], "routes": routes,
        "cors": { "allow_origin_string_match": [{ "prefix": "http://v." }],
                  "allow_methods": "GET, PATCH", "expose_headers": "x-v" } });
    let hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "cors",
            "route_config": { "virtual_hosts": [vhost] },
            "http_filters": [
                { "name": "envoy.filters.http.cors", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors" } },
                router()
            ]
        }
    });
    bootstrap(
        admin,
        vec![listener("l", "127.0.0.1", listen, hcm)],
        vec![cluster("up", &[upstream])],
    )
    .to_string()
}

#[tokio::test]
async fn deprecated_cors_policies_as_envoy() {
    const PRE: &[(&str, &str)] = &[
        ("origin", "http://r.test"),
        ("access-control-request-method", "PUT"),
    ];
    const PRE_V: &[(&str, &str)] = &[
        ("origin", "http://v.test"),
        ("access-control-request-method", "PATCH"),
    ];
    let cases: &[Case] = &[
        ("GET", "/route", &[("origin", "http://r.test")]),
        ("GET", "/route", &[("origin", "http://v.test")]),
        ("OPTIONS", "/route", PRE),
        ("OPTIONS", "/route", PRE_V),
        ("GET", "/off", &[("origin", "http://r.test")]),
        ("OPTIONS", "/off", PRE),
        ("GET", "/vhost", &[("origin", "http://v.test")]),
        ("OPTIONS", "/vhost", PRE_V),
        ("GET", "/typed", &[("origin", "http://v.test")]),
        ("GET", "/typed", &[("origin", "http://t.test")]),
    ];
    run_for(Duration::from_secs(60), async {
        let (e, s) = pair(Up::H1, build_legacy).await;
        let mut differ = Vec::new();
        let mut table = String::new();
        for case in cases {
            let (oe, os) = (observe(&e, case).await, observe(&s, case).await);
            table.push_str(&format!(
                "{} {} {:?}\n  envoy {oe}\n  skiff {os}\n",
                case.0, case.1, case.2
            ));
            if oe != os {
                differ.push(format!("{} {}", case.0, case.1));
            }
        }
        assert!(differ.is_empty(), "differ: {differ:?}\n{table}");
        assert!(table.contains("access-control-allow-origin"), "{table}");
    })
    .await
}
