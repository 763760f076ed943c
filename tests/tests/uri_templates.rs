//! Routes' `path_match_policy` and `path_rewrite_policy` with Envoy's URI templates, side by
//! side with Envoy 1.40: which route each path takes (globs, variables, `**`, suffixes, trailing
//! slashes, queries) and the path the upstream receives after a rewrite; templates Envoy refuses
//! are refused by both.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{get, http1_once};
use skiff_tests::config::{bootstrap, cluster, hcm, listener, to_yaml};
use skiff_tests::proxy::{run_cli, write_config, Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for};

fn matcher(template: &str) -> Value {
    json!({ "name": "envoy.path.match.uri_template.uri_template_matcher", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
        "path_template": template } })
}

fn rewriter(template: &str) -> Value {
    json!({ "name": "envoy.path.rewrite.uri_template.uri_template_rewriter", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.path.rewrite.uri_template.v3.UriTemplateRewriteConfig",
        "path_template_rewrite": template } })
}

fn route(template: &str, rewrite: Option<&str>, name: &str) -> Value {
    let mut action = json!({ "cluster": "up" });
    if let Some(r) = rewrite {
        action["path_rewrite_policy"] = rewriter(r);
    }
    json!({ "name": name, "match": { "path_match_policy": matcher(template) }, "route": action,
        "response_headers_to_add": [{ "header": { "key": "x-route", "value": name } }] })
}

fn config(routes: Vec<Value>, port: u16, upstream: u16) -> String {
    let m = hcm(
        "t",
        vec![json!({ "name": "all", "domains": ["*"], "routes": routes })],
    );
    to_yaml(&bootstrap(
        free_port(),
        vec![listener("l", "127.0.0.1", port, m)],
        vec![cluster("up", &[upstream])],
    ))
}

fn routes() -> Vec<Value> {
    vec![
        route(
            "/videos/*/{id}/{format}/{rendition}/{segment=**}.ts",
            Some("/v/{id}/{rendition}/{segment}.{format}"),
            "videos",
        ),
        route("/bar/{lang}/{country}", Some("/{country}/{lang}"), "bar"),
        route("/static/{file}.css", None, "css"),
        route("/api/**", Some("/api-v2"), "api"),
        route("/deep/{rest=a/*/**}", Some("/d/{rest}"), "deep"),
        route("/slash/", None, "slash"),
        route("/star/a*b", None, "star"),
        route("/eq/{v=p=q}/*", None, "eq"),
        json!({ "match": { "prefix": "/" }, "direct_response": { "status": 200, "body": { "inline_string": "fallback" } },
            "response_headers_to_add": [{ "header": { "key": "x-route", "value": "fallback" } }] }),
    ]
}

const PATHS: &[&str] = &[
    "/videos/lib/123/hls/1080p/a/b/c.ts",
    "/videos/lib/123/hls/1080p/c.ts?token=x",
    "/videos/lib/123/hls/1080p/c.mp4",
    "/videos/lib/123/hls/c.ts",
    "/bar/en/us",
    "/bar/en/us?q=1&r=2",
    "/bar/en/us/",
    "/bar/en",
    "/bar//us",
    "/bar/e%20n/u.s",
    "/static/site.css",
    "/static/a/site.css",
    "/static/.css",
    "/api/",
    "/api/x/y/z?k=v",
    "/api",
    "/deep/a/b/c/d",
    "/deep/a/b",
    "/deep/x/b/c",
    "/slash/",
    "/slash",
    "/BAR/en/us",
    "/star/aaab",
    "/star/b",
    "/star/axb",
    "/eq/p=q/x*y",
    "/eq/p=q/a\"b",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_templates_route_and_rewrite_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let upstream = EchoUpstream::start("up").await;
            let port = free_port();
            let _p = ProxyProcess::start(kind, &config(routes(), port, upstream.port()), &[]).await;
            let mut got = Vec::new();
            for path in PATHS {
                let r = http1_once(&format!("127.0.0.1:{port}"), get(path, "t.example.com"))
                    .await
                    .expect("a response");
                got.push(format!(
                    "{path}: {} {:?}",
                    r.status,
                    r.header("x-route").unwrap_or("-")
                ));
            }
            let received: Vec<String> = upstream
                .rec
                .wait_requests(0, Duration::from_millis(200))
                .await
                .into_iter()
                .map(|r| r.path)
                .collect();
            got.push(format!("upstream received: {received:?}"));
            seen.push(got);
        }
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        let all = seen[0].join("\n");
        for want in [
            "/v/123/1080p/a/b/c.hls",
            "/us/en?q=1&r=2",
            "/api-v2?k=v",
            "/d/a/b/c/d",
        ] {
            assert!(all.contains(want), "{want} missing from\n{all}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_envoy_refuses_are_refused_by_both() {
    run_for(Duration::from_secs(90), async {
        let prefix_with_rewrite = json!({ "match": { "prefix": "/" },
            "route": { "cluster": "up", "path_rewrite_policy": rewriter("/x") } });
        let bad = [
            (vec![route("/{a}/{a}", None, "r")], "path_template"),
            (vec![route("/**/*", None, "r")], "path_template"),
            (
                vec![route("/{a}/{b}/{c}/{d}/{e}/{f}", None, "r")],
                "path_template",
            ),
            (vec![route("/a\"b", None, "r")], "path_template"),
            (
                vec![route("/{a}", Some("/{b}"), "r")],
                "path_template_rewrite",
            ),
            (
                vec![route("/{a}", Some("x/{a}"), "r")],
                "path_template_rewrite",
            ),
            (vec![prefix_with_rewrite], "path_rewrite_policy"),
        ];
        for (routes, field) in bad {
            let yaml = config(routes.clone(), free_port(), free_port());
            let cfg = write_config("bad-uri-template", &yaml);
            for kind in [Kind::Envoy, Kind::under_test()] {
                let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert_ne!(out.code, Some(0), "{}: {routes:?} accepted", kind.name());
                if kind != Kind::Envoy {
                    assert!(out.output().contains(field), "{}", out.output());
                }
            }
        }
    })
    .await;
}
