//! Routes' `internal_redirect_policy`, side by side with Envoy 1.40: an upstream's redirect is
//! followed inside the proxy (the request routed again to the `Location`, with
//! `x-envoy-original-url`), or passed to the client when the code, the scheme, the count or
//! the request's body does not allow it, or a predicate (`previous_routes`,
//! `allow_listed_routes`, `safe_cross_scheme`) refuses the route it leads to; with
//! `response_headers_to_copy`. The client's response, what the final upstream
//! received and the stats must be the same.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::admin::Admin;
use skiff_tests::client::{request, Http1Client};
use skiff_tests::config::{bootstrap, cluster, hcm, listener, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for};

async fn redirector(name: &str, location: &str) -> EchoUpstream {
    let mut o = EchoOptions::named(name);
    o.extra_headers = vec![("location".into(), location.into())];
    EchoUpstream::with_options(o).await
}

fn policy(extra: Value) -> Value {
    let mut p = json!({});
    if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    p
}

/// An internal redirect predicate of type `envoy.extensions.internal_redirect.<kind>`.
fn predicate(kind: &str, config: Value) -> Value {
    let mut typed = json!({ "@type": format!("type.googleapis.com/envoy.extensions.internal_redirect.{kind}") });
    if let (Some(t), Some(c)) = (typed.as_object_mut(), config.as_object()) {
        for (k, v) in c {
            t.insert(k.clone(), v.clone());
        }
    }
    json!({ "name": kind, "typed_config": typed })
}

fn routes() -> Vec<Value> {
    vec![
        json!({ "match": { "prefix": "/start" }, "route": { "cluster": "redir_a",
            "internal_redirect_policy": policy(json!({})) } }),
        json!({ "match": { "prefix": "/codes" }, "route": { "cluster": "redir_a",
            "internal_redirect_policy": policy(json!({ "redirect_response_codes": [301, 303, 307] })) } }),
        json!({ "match": { "prefix": "/cross-allowed" }, "route": { "cluster": "redir_b",
            "internal_redirect_policy": policy(json!({ "allow_cross_scheme_redirect": true })) } }),
        json!({ "match": { "prefix": "/cross" }, "route": { "cluster": "redir_b",
            "internal_redirect_policy": policy(json!({})) } }),
        json!({ "match": { "prefix": "/relative" }, "route": { "cluster": "redir_c",
            "internal_redirect_policy": policy(json!({})) } }),
        json!({ "match": { "prefix": "/loop" }, "route": { "cluster": "redir_d",
            "internal_redirect_policy": policy(json!({ "max_internal_redirects": 3 })) } }),
        json!({ "match": { "prefix": "/nofollow" }, "route": { "cluster": "redir_a" } }),
        json!({ "name": "prev", "match": { "prefix": "/prev" }, "route": { "cluster": "redir_e",
            "internal_redirect_policy": policy(json!({ "max_internal_redirects": 3,
                "predicates": [ predicate("previous_routes.v3.PreviousRoutesConfig", json!({})) ] })) } }),
        json!({ "match": { "prefix": "/allowed" }, "route": { "cluster": "redir_a",
            "internal_redirect_policy": policy(json!({ "predicates": [ predicate(
                "allow_listed_routes.v3.AllowListedRoutesConfig",
                json!({ "allowed_route_names": ["elsewhere", "target"] })) ] })) } }),
        json!({ "match": { "prefix": "/notlisted" }, "route": { "cluster": "redir_a",
            "internal_redirect_policy": policy(json!({ "predicates": [ predicate(
                "allow_listed_routes.v3.AllowListedRoutesConfig",
                json!({ "allowed_route_names": ["elsewhere"] })) ] })) } }),
        json!({ "match": { "prefix": "/safe" }, "route": { "cluster": "redir_b",
            "internal_redirect_policy": policy(json!({ "allow_cross_scheme_redirect": true,
                "predicates": [ predicate("safe_cross_scheme.v3.SafeCrossSchemeConfig", json!({})) ] })) } }),
        json!({ "match": { "prefix": "/copy" }, "route": { "cluster": "redir_f",
            "internal_redirect_policy": policy(json!({
                "response_headers_to_copy": ["x-copied", "x-absent"] })) } }),
        json!({ "name": "target", "match": { "prefix": "/target" }, "route": { "cluster": "final" },
            "response_headers_to_add": [{ "header": { "key": "x-final", "value": "reached" } }] }),
    ]
}

/// Method, path, body.
const CASES: &[(&str, &str, &str)] = &[
    ("GET", "/start/status/302", ""),
    ("GET", "/start/status/301", ""),
    ("POST", "/start/status/302", "payload"),
    ("GET", "/codes/status/303", ""),
    ("POST", "/codes/status/303", "payload"),
    ("GET", "/codes/status/307", ""),
    ("GET", "/codes/status/302", ""),
    ("GET", "/cross/status/302", ""),
    ("GET", "/cross-allowed/status/302", ""),
    ("GET", "/relative/status/302", ""),
    ("GET", "/loop/status/302", ""),
    ("GET", "/nofollow/status/302", ""),
    ("GET", "/prev/status/302", ""),
    ("GET", "/allowed/status/302", ""),
    ("GET", "/notlisted/status/302", ""),
    ("GET", "/safe/status/302", ""),
    ("GET", "/copy/status/302", ""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_redirects_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let a = redirector("redir_a", "http://redirect.example/target?x=1").await;
            let b = redirector("redir_b", "https://redirect.example/target").await;
            let c = redirector("redir_c", "/target/relative").await;
            let d = redirector("redir_d", "http://loop.example/loop/status/302").await;
            let e = redirector("redir_e", "http://loop.example/prev/status/302").await;
            let mut o = EchoOptions::named("redir_f");
            o.extra_headers = vec![
                (
                    "location".into(),
                    "http://redirect.example/target?copy".into(),
                ),
                ("x-copied".into(), "from-the-redirect".into()),
            ];
            let f = EchoUpstream::with_options(o).await;
            let fin = EchoUpstream::start("final").await;
            let (admin, port) = (free_port(), free_port());
            let m = hcm(
                "ir",
                vec![json!({ "name": "all", "domains": ["*"], "routes": routes() })],
            );
            let v = bootstrap(
                admin,
                vec![listener("l", "127.0.0.1", port, m)],
                vec![
                    cluster("redir_a", &[a.port()]),
                    cluster("redir_b", &[b.port()]),
                    cluster("redir_c", &[c.port()]),
                    cluster("redir_d", &[d.port()]),
                    cluster("redir_e", &[e.port()]),
                    cluster("redir_f", &[f.port()]),
                    cluster("final", &[fin.port()]),
                ],
            );
            let _p = ProxyProcess::start(kind, &to_yaml(&v), &[]).await;
            let mut got = Vec::new();
            for (method, path, body) in CASES {
                let mut c = Http1Client::connect(&format!("127.0.0.1:{port}"))
                    .await
                    .expect("connect");
                let r = c
                    .send(request(method, path, "ir.example.com", body.to_string()))
                    .await
                    .expect("a response");
                let mut final_seen = String::from("-");
                if r.header("x-final").is_some() {
                    let rec = fin.rec.requests();
                    if let Some(last) = rec.last() {
                        let mut headers: Vec<String> = last
                            .headers
                            .iter()
                            .filter(|(k, _)| {
                                !matches!(
                                    k.as_str(),
                                    "x-request-id" | "x-envoy-expected-rq-timeout-ms"
                                )
                            })
                            .map(|(k, v)| format!("{k}: {v}"))
                            .collect();
                        headers.sort();
                        final_seen = format!(
                            "{} {} {headers:?} body={:?}",
                            last.method,
                            last.path,
                            String::from_utf8_lossy(&last.body)
                        );
                    }
                }
                got.push(format!(
                    "{method} {path}: {} location={:?} final: {final_seen}",
                    r.status,
                    r.header("location")
                ));
            }
            let admin = Admin::new(admin);
            let mut stats: Vec<String> = admin
                .stats_containing("internal_redirect")
                .await
                .into_iter()
                .filter(|(_, v)| v != "0")
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            stats.sort();
            got.extend(stats);
            seen.push(got);
        }
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        assert_eq!(seen[1].len(), seen[0].len(), "{seen:#?}");
        let all = seen[0].join("\n");
        for want in [
            "GET /start/status/302: 200 location=None final: GET /target?x=1",
            "x-envoy-original-url: http://ir.example.com/start/status/302",
            "POST /codes/status/303: 200 location=None final: GET /target?x=1",
            "body=\"payload\"",
            "GET /loop/status/302: 302",
            "cluster.redir_d.upstream_internal_redirect_succeeded_total: 3",
            "http.ir.passthrough_internal_redirect_too_many_redirects: 1",
            "http.ir.passthrough_internal_redirect_predicate: 3",
            "cluster.redir_e.upstream_internal_redirect_succeeded_total: 1",
            "GET /allowed/status/302: 200",
            "x-copied: from-the-redirect",
        ] {
            assert!(all.contains(want), "{want} missing from\n{all}");
        }
    })
    .await;
}
