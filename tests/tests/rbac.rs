//! `envoy.filters.http.rbac`, side by side with Envoy 1.40: DENY and ALLOW rules over paths,
//! headers and pseudo-headers, addresses, ports and SNI, combined with `and_rules`, `or_rules`,
//! `not_rule`, `or_ids`, `not_id`; shadow rules; `RBACPerRoute` turning the filter off for a
//! route or giving it its own rules; and over mutual TLS, `authenticated` principals by URI SAN
//! and subject. Each case compares the status, the body, whether the upstream saw the request and
//! the access log's code, flags and details; then the `rbac` stats are compared.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::curl;
use skiff_tests::config::{self, router};
use skiff_tests::run_for;
use skiff_tests::side_by_side::{pair, Side, Up, HOST};

const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const PER_ROUTE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
const LOG: &str = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n";

fn path_prefix(p: &str) -> Value {
    json!({ "url_path": { "path": { "prefix": p } } })
}

fn header_present(name: &str) -> Value {
    json!({ "header": { "name": name, "present_match": true } })
}

fn cidr(ip: &str, len: u32) -> Value {
    json!({ "address_prefix": ip, "prefix_len": len })
}

fn rbac_filter() -> Value {
    json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": RBAC,
            "rules": { "action": "DENY", "policies": {
                "admin": { "permissions": [ path_prefix("/admin") ], "principals": [ { "any": true } ] },
                "posts": {
                    "permissions": [ { "and_rules": { "rules": [
                        { "header": { "name": ":method", "string_match": { "exact": "POST" } } },
                        { "not_rule": header_present("x-allow-post") } ] } } ],
                    "principals": [ { "or_ids": { "ids": [
                        { "remote_ip": cidr("10.0.0.0", 8) }, header_present("x-evil") ] } } ]
                },
                "dest": {
                    "permissions": [ { "and_rules": { "rules": [
                        { "destination_ip": cidr("127.0.0.0", 8) },
                        { "destination_port_range": { "start": 1, "end": 65535 } },
                        { "url_path": { "path": { "exact": "/dest" } } } ] } } ],
                    "principals": [ { "direct_remote_ip": cidr("127.0.0.1", 32) } ]
                },
                "sni": {
                    "permissions": [ { "and_rules": { "rules": [
                        { "requested_server_name": { "exact": "" } }, path_prefix("/sni") ] } } ],
                    "principals": [ { "source_ip": cidr("127.0.0.1", 32) } ]
                },
                "tls-only": {
                    "permissions": [ path_prefix("/mtls") ],
                    "principals": [ { "not_id": { "authenticated": {} } } ]
                }
            } },
            "shadow_rules": { "action": "ALLOW", "policies": {
                "gets": {
                    "permissions": [ { "header": { "name": ":method", "string_match": { "exact": "GET" } } } ],
                    "principals": [ { "any": true } ]
                }
            } },
            "shadow_rules_stat_prefix": "dry_run."
        }
    })
}

fn routes() -> Value {
    json!([
        { "match": { "prefix": "/open" }, "route": { "cluster": "backend" },
          "typed_per_filter_config": { "envoy.filters.http.rbac": { "@type": PER_ROUTE } } },
        { "match": { "prefix": "/strict" }, "route": { "cluster": "backend" },
          "typed_per_filter_config": { "envoy.filters.http.rbac": { "@type": PER_ROUTE,
            "rbac": { "rules": { "action": "ALLOW", "policies": {
                "token": {
                    "permissions": [ { "or_rules": { "rules": [
                        { "header": { "name": "x-token", "string_match": { "exact": "t" } } },
                        { "url_path": { "path": { "suffix": "/public", "ignore_case": true } } } ] } } ],
                    "principals": [ { "not_id": { "remote_ip": cidr("10.0.0.0", 8) } } ]
                },
                "mtls-client": {
                    "permissions": [ { "any": true } ],
                    "principals": [ { "authenticated": { "principal_name": {
                        "exact": "spiffe://cluster.local/ns/default/sa/client" } } } ]
                }
            } } } } } },
        { "match": { "prefix": "/" }, "route": { "cluster": "backend" } }
    ])
}

/// The bootstrap: one HCM with the RBAC filter; with `tls`, its listener asks clients for a
/// certificate of the test CA.
fn build(admin: u16, listen: u16, upstream: u16, tls: Option<&Pki>) -> String {
    let mut v = config::simple_http(admin, listen, &[upstream]);
    let hcm = config::hcm_config(&mut v);
    hcm["http_filters"] = json!([rbac_filter(), router()]);
    hcm["access_log"] = json!([{ "name": "envoy.access_loggers.stdout", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        "log_format": { "text_format_source": { "inline_string": LOG } } } }]);
    config::route_config(&mut v)["virtual_hosts"][0]["routes"] = routes();
    if let Some(p) = tls {
        v["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": false,
            "common_tls_context": {
                "tls_certificates": [{ "certificate_chain": { "filename": p.server.0 },
                                       "private_key": { "filename": p.server.1 } }],
                "validation_context": { "trusted_ca": { "filename": p.ca } }
            } } });
    }
    config::to_yaml(&v)
}

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    other: (String, String),
}

/// A CA, a server certificate, a client certificate with the SPIFFE identity the rules name,
/// and one with another.
fn pki() -> Pki {
    use skiff_tests::pki::{dns, uri, TestCa};
    let ca = TestCa::new("rbac-pki", "rbac test CA");
    Pki {
        server: ca.leaf("server", vec![dns("rbac.test")]),
        client: ca.leaf(
            "client",
            vec![uri("spiffe://cluster.local/ns/default/sa/client")],
        ),
        other: ca.leaf(
            "other",
            vec![uri("spiffe://cluster.local/ns/default/sa/other")],
        ),
        ca: ca.ca,
    }
}

/// What one proxy did with a request.
async fn seen(side: &Side, curl_args: &[&str], path: &str, tls: bool) -> String {
    let before = side.rec.requests().len();
    let url = if tls {
        format!("https://rbac.test:{}{path}", side.port)
    } else {
        side.url(path)
    };
    let host = format!("Host: {HOST}");
    let resolve = format!("rbac.test:{}:127.0.0.1", side.port);
    let mut args: Vec<&str> = vec!["-H", &host, "--resolve", &resolve];
    args.extend_from_slice(curl_args);
    args.push(&url);
    let r = curl(&args).await;
    let upstream = side.rec.requests().len() > before;
    let prefix = format!("{path} ");
    let line = side
        .proxy
        .wait_stdout_line(Duration::from_secs(5), |l| l.starts_with(&prefix))
        .await;
    format!(
        "{path} {:?}: {} {:?} upstream={upstream} log={line:?}",
        curl_args,
        r.resp.status,
        skiff_tests::diff::mask_uuids(&r.resp.text())
    )
}

async fn rbac_stats(side: &Side) -> Vec<(String, String)> {
    let mut s = side.proxy.admin().stats_containing(".rbac.").await;
    s.sort();
    s
}

#[tokio::test]
async fn rbac_side_by_side_with_envoy() {
    run_for(Duration::from_secs(120), async {
        let cases: &[(&[&str], &str)] = &[
            (&[], "/"),
            (&[], "/admin/x"),
            (&[], "/admin?x"),
            (&["-X", "POST"], "/post"),
            (&["-X", "POST", "-H", "x-evil: 1"], "/post-evil"),
            (
                &["-X", "POST", "-H", "x-evil: 1", "-H", "x-allow-post: 1"],
                "/post-allowed",
            ),
            (&[], "/dest"),
            (&[], "/dest/not"),
            (&[], "/sni"),
            (&[], "/mtls"),
            (&[], "/open/admin"),
            (&["-X", "POST", "-H", "x-evil: 1"], "/open/post"),
            (&[], "/strict/a"),
            (&["-H", "x-token: t"], "/strict/b"),
            (&[], "/strict/c/PUBLIC"),
            (
                &["-H", "x-forwarded-for: 10.1.2.3", "-H", "x-token: t"],
                "/strict/d",
            ),
        ];
        let (e, s) = pair(Up::H1, |a, l, u| build(a, l, u, None)).await;
        let mut failures = Vec::new();
        for (args, path) in cases {
            let (ge, gs) = (
                seen(&e, args, path, false).await,
                seen(&s, args, path, false).await,
            );
            if ge != gs {
                failures.push(format!("envoy {ge}\nskiff {gs}"));
            }
        }
        let (se, ss) = (rbac_stats(&e).await, rbac_stats(&s).await);
        if se != ss {
            failures.push(format!("stats: envoy {se:?}\nskiff {ss:?}"));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        let all = se
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            all.contains("rbac.denied=") && !all.contains("rbac.denied=0"),
            "{all}"
        );
        assert!(all.contains("dry_run.shadow_denied="), "{all}");
    })
    .await;
}

#[tokio::test]
async fn rbac_authenticated_principals_over_mtls() {
    run_for(Duration::from_secs(120), async {
        let p = pki();
        let client = [
            "--cacert",
            &p.ca,
            "--cert",
            &p.client.0,
            "--key",
            &p.client.1,
        ];
        let other = ["--cacert", &p.ca, "--cert", &p.other.0, "--key", &p.other.1];
        let none = ["--cacert", &p.ca];
        let cases: Vec<(&[&str], &str)> = vec![
            (&client, "/mtls/a"),
            (&none, "/mtls/b"),
            (&client, "/strict/e"),
            (&other, "/strict/f"),
            (&none, "/strict/g"),
        ];
        let (e, s) = pair(Up::H1, |a, l, u| build(a, l, u, Some(&p))).await;
        let mut failures = Vec::new();
        let mut all = Vec::new();
        for (args, path) in &cases {
            let (ge, gs) = (
                seen(&e, args, path, true).await,
                seen(&s, args, path, true).await,
            );
            if ge != gs {
                failures.push(format!("envoy {ge}\nskiff {gs}"));
            }
            all.push(ge);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        let status = |path: &str| {
            all.iter()
                .find(|l| l.starts_with(&format!("{path} ")))
                .and_then(|l| l.split("]: ").nth(1))
                .and_then(|r| r.split(' ').next())
                .unwrap_or("?")
                .to_string()
        };
        // The SPIFFE identity the rule names passes; another, or none, does not; any TLS
        // connection counts as authenticated without a principal name.
        assert_eq!(status("/strict/e"), "200", "{all:#?}");
        assert_eq!(status("/strict/f"), "403", "{all:#?}");
        assert_eq!(status("/strict/g"), "403", "{all:#?}");
        assert_eq!(status("/mtls/b"), "200", "{all:#?}");
    })
    .await;
}

/// `envoy.filters.network.rbac` in front of tcp_proxy and of an HTTP connection manager: a
/// connection its rules deny is closed before anything reaches the upstream.
#[tokio::test]
async fn network_rbac_side_by_side_with_envoy() {
    use skiff_tests::config::{
        bootstrap, cluster, hcm, listener, route, tcp_proxy, to_yaml, vhost,
    };
    use skiff_tests::proxy::{Kind, ProxyProcess};
    use skiff_tests::upstream::EchoUpstream;
    run_for(Duration::from_secs(120), async {
        let network_rbac = |stat_prefix: &str, rules: Value, shadow: Option<Value>| {
            let mut typed = json!({
                "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                "stat_prefix": stat_prefix, "rules": rules });
            if let Some(s) = shadow {
                typed["shadow_rules"] = s;
                typed["shadow_rules_stat_prefix"] = json!("dry_run.");
            }
            json!({ "name": "envoy.filters.network.rbac", "typed_config": typed })
        };
        let allow_local = json!({ "action": "ALLOW", "policies": { "local": {
            "permissions": [ { "any": true } ],
            "principals": [ { "direct_remote_ip": cidr("127.0.0.1", 32) } ] } } });
        let deny_loopback = json!({ "action": "DENY", "policies": { "loopback": {
            "permissions": [ { "and_rules": { "rules": [
                { "destination_ip": cidr("127.0.0.0", 8) },
                { "not_rule": { "requested_server_name": { "exact": "x" } } } ] } } ],
            "principals": [ { "any": true } ] } } });
        let mtls_only = json!({ "action": "ALLOW", "policies": { "mtls": {
            "permissions": [ { "any": true } ],
            "principals": [ { "authenticated": {} } ] } } });
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let up = EchoUpstream::start("u1").await;
            let ports = [
                skiff_tests::free_port(),
                skiff_tests::free_port(),
                skiff_tests::free_port(),
            ];
            let with = |mut l: Value, gate: Value| {
                let f = l["filter_chains"][0]["filters"][0].clone();
                l["filter_chains"][0]["filters"] = json!([gate, f]);
                l
            };
            let http = hcm(
                "guarded",
                vec![vhost("backend", &["*"], vec![route("/", "backend")])],
            );
            let v = bootstrap(
                skiff_tests::free_port(),
                vec![
                    with(
                        listener(
                            "tcp_ok",
                            "127.0.0.1",
                            ports[0],
                            tcp_proxy("tcp_ok", "backend"),
                        ),
                        network_rbac("tcp_ok", allow_local.clone(), Some(deny_loopback.clone())),
                    ),
                    with(
                        listener(
                            "tcp_no",
                            "127.0.0.1",
                            ports[1],
                            tcp_proxy("tcp_no", "backend"),
                        ),
                        network_rbac("tcp_no.", deny_loopback.clone(), None),
                    ),
                    with(
                        listener("http_no", "127.0.0.1", ports[2], http),
                        network_rbac("http_no", mtls_only.clone(), None),
                    ),
                ],
                vec![cluster("backend", &[up.port()])],
            );
            let proxy = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for (name, port) in ["tcp_ok", "tcp_no", "http_no"].iter().zip(ports) {
                let before = up.rec.requests().len();
                let r = curl(&[
                    "-s",
                    "-H",
                    "Host: rbac.test",
                    &format!("http://127.0.0.1:{port}/{name}"),
                ])
                .await;
                got.push(format!(
                    "{name}: status {} upstream={}",
                    r.resp.status,
                    up.rec.requests().len() > before
                ));
            }
            let mut stats = proxy.admin().stats_containing("rbac.").await;
            stats.sort();
            got.extend(stats.into_iter().map(|(k, v)| format!("{k}={v}")));
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        let all = seen[0].join("\n");
        assert!(all.contains("tcp_ok: status 200 upstream=true"), "{all}");
        assert!(all.contains("tcp_no: status 0 upstream=false"), "{all}");
        assert!(all.contains("http_no: status 0 upstream=false"), "{all}");
    })
    .await;
}

/// RBAC's `matcher` form (Envoy's matching API), side by side: header inputs (pseudo-headers
/// too) with value matchers, the source address with the IP matcher, `and_matcher`,
/// `or_matcher`, `not_matcher`, a nested matcher that finds no action (the next one is tried),
/// `on_no_match`, a route's own matcher, and a `shadow_matcher`; the reply's details name the
/// action's policy, and a request no matcher names is denied.
#[tokio::test]
async fn rbac_matcher_side_by_side_with_envoy() {
    fn action(name: &str, a: &str) -> Value {
        json!({ "action": { "name": name, "typed_config": {
            "@type": "type.googleapis.com/envoy.config.rbac.v3.Action", "name": name, "action": a } } })
    }
    fn header(name: &str, m: Value) -> Value {
        json!({ "single_predicate": {
            "input": { "name": "h", "typed_config": {
                "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                "header_name": name } },
            "value_match": m } })
    }
    fn source_in(ip: &str, len: u32) -> Value {
        json!({ "single_predicate": {
            "input": { "name": "ip", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput" } },
            "custom_match": { "name": "ip", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip",
                "cidr_ranges": [cidr(ip, len)], "stat_prefix": "ip" } } } })
    }
    /// The stream's dynamic metadata under `claims` at `key`, judged by a metadata matcher.
    fn claim(key: &str, value: Value, invert: bool) -> Value {
        json!({ "single_predicate": {
            "input": { "name": "md", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DynamicMetadataInput",
                "filter": "claims", "path": [{ "key": key }] } },
            "custom_match": { "name": "m", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.matching.input_matchers.metadata.v3.Metadata",
                "value": value, "invert": invert } } } })
    }
    fn build_matcher(admin: u16, listen: u16, upstream: u16) -> String {
        let mut v = config::simple_http(admin, listen, &[upstream]);
        // A metadata input with a string matcher, and a header input with a metadata
        // matcher: neither ever matches, in Envoy as in skiff.
        let string_on_metadata = json!({ "single_predicate": {
            "input": { "name": "md", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DynamicMetadataInput",
                "filter": "claims", "path": [{ "key": "role" }] } },
            "value_match": { "exact": "ops" } } });
        let metadata_on_header = json!({ "single_predicate": {
            "input": { "name": "h", "typed_config": {
                "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                "header_name": "x-claim" } },
            "custom_match": { "name": "m", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.matching.input_matchers.metadata.v3.Metadata",
                "value": { "string_match": { "exact": "ops" } } } } } });
        let matcher = json!({
            "matcher_list": { "matchers": [
                { "predicate": string_on_metadata, "on_match": action("never-string", "DENY") },
                { "predicate": metadata_on_header, "on_match": action("never-header", "DENY") },
                { "predicate": claim("role", json!({ "string_match": { "exact": "ops" } }), false),
                  "on_match": action("claim-ops", "ALLOW") },
                { "predicate": { "and_matcher": { "predicate": [
                      header("x-md-check", json!({ "exact": "1" })),
                      claim("role", json!({ "present_match": true }), true) ] } },
                  "on_match": action("no-claim", "DENY") },
                { "predicate": header("x-role", json!({ "exact": "admin" })),
                  "on_match": action("admins", "ALLOW") },
                { "predicate": { "and_matcher": { "predicate": [
                      header("x-team", json!({ "prefix": "blue" })),
                      { "not_matcher": source_in("10.0.0.0", 8) } ] } },
                  "on_match": action("blue", "ALLOW") },
                { "predicate": { "or_matcher": { "predicate": [
                      source_in("192.168.0.0", 16),
                      header("x-evil", json!({ "exact": "1" })) ] } },
                  "on_match": action("blocked", "DENY") },
                { "predicate": header("x-nest", json!({ "safe_regex": { "google_re2": {}, "regex": ".*" } })),
                  "on_match": { "matcher": { "matcher_list": { "matchers": [
                      { "predicate": header("x-nest", json!({ "exact": "deep" })),
                        "on_match": action("deep", "ALLOW") } ] } } } },
                { "predicate": header(":path", json!({ "prefix": "/public", "ignore_case": true })),
                  "on_match": action("public", "ALLOW") },
                { "predicate": header(":method", json!({ "exact": "PUT" })),
                  "on_match": action("logged", "LOG") },
            ] },
            "on_no_match": action("default-deny", "DENY"),
        });
        let shadow = json!({
            "matcher_list": { "matchers": [
                { "predicate": header("x-shadow", json!({ "exact": "nope" })),
                  "on_match": action("shadow-no", "DENY") } ] },
        });
        let filter = json!({ "name": "envoy.filters.http.rbac", "typed_config": {
            "@type": RBAC, "matcher": matcher, "shadow_matcher": shadow,
            "shadow_rules_stat_prefix": "dry_run." } });
        // The claim the metadata matchers read, from a header.
        let claims = json!({ "name": "envoy.filters.http.header_to_metadata", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
            "request_rules": [{ "header": "x-claim", "on_header_present": {
                "metadata_namespace": "claims", "key": "role", "type": "STRING" } }] } });
        let hcm = config::hcm_config(&mut v);
        hcm["http_filters"] = json!([claims, filter, router()]);
        hcm["access_log"] = json!([{ "name": "envoy.access_loggers.stdout", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": { "text_format_source": { "inline_string": LOG } } } }]);
        config::route_config(&mut v)["virtual_hosts"][0]["routes"] = json!([
            { "match": { "prefix": "/own" }, "route": { "cluster": "backend" },
              "typed_per_filter_config": { "envoy.filters.http.rbac": { "@type": PER_ROUTE,
                "rbac": { "matcher": { "matcher_list": { "matchers": [
                    { "predicate": header("x-key", json!({ "exact": "k" })),
                      "on_match": action("keyed", "ALLOW") } ] } } } } } },
            { "match": { "prefix": "/" }, "route": { "cluster": "backend" } }
        ]);
        config::to_yaml(&v)
    }
    run_for(Duration::from_secs(120), async {
        let cases: &[(&[&str], &str)] = &[
            (&[], "/"),
            (&["-H", "x-role: admin"], "/admin"),
            (&["-H", "x-role: Admin"], "/admin-case"),
            (&["-H", "x-team: blue-1"], "/team"),
            (&["-H", "x-team: blue-1", "-H", "x-evil: 1"], "/team-evil"),
            (&["-H", "x-evil: 1", "-H", "x-role: admin"], "/evil-admin"),
            (&["-H", "x-evil: 1"], "/evil"),
            (&["-H", "x-nest: deep"], "/nest-deep"),
            (&["-H", "x-nest: shallow"], "/nest-shallow"),
            (&["-H", "x-nest: shallow"], "/PUBLIC/x"),
            (&["-X", "PUT"], "/put"),
            (
                &["-H", "x-shadow: nope", "-H", "x-role: admin"],
                "/shadowed",
            ),
            (&["-H", "x-claim: ops"], "/claim-ops"),
            (&["-H", "x-claim: dev"], "/claim-dev"),
            (&["-H", "x-md-check: 1"], "/no-claim"),
            (
                &["-H", "x-md-check: 1", "-H", "x-claim: dev"],
                "/claim-checked",
            ),
            (&[], "/own/a"),
            (&["-H", "x-key: k"], "/own/b"),
            (&["-H", "x-role: admin"], "/own/c"),
        ];
        let (e, s) = pair(Up::H1, build_matcher).await;
        let mut failures = Vec::new();
        let mut verdicts = String::new();
        for (args, path) in cases {
            let (ge, gs) = (
                seen(&e, args, path, false).await,
                seen(&s, args, path, false).await,
            );
            verdicts.push_str(&ge);
            if ge != gs {
                failures.push(format!("envoy {ge}\nskiff {gs}"));
            }
        }
        let (se, ss) = (rbac_stats(&e).await, rbac_stats(&s).await);
        if se != ss {
            failures.push(format!("stats: envoy {se:?}\nskiff {ss:?}"));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        // Each kind of verdict was there to compare.
        for want in ["[blocked]", "[default-deny]", "[no-claim]", ": 200"] {
            assert!(verdicts.contains(want), "{want} in {verdicts}");
        }
    })
    .await;
}
