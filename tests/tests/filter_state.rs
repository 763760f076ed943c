//! Filter state, side by side with Envoy 1.40: `envoy.filters.network.set_filter_state`
//! (`on_new_connection`, before TLS; `on_downstream_tls_handshake`), and
//! `envoy.filters.http.set_filter_state` (`on_request_headers`: values formatted from the
//! request, read-only objects kept, `skip_if_empty`, `envoy.hashable_string`); what reads them:
//! RBAC `filter_state` principals (HTTP and network), `%FILTER_STATE(key[:PLAIN]):N%` in access
//! logs (text and JSON) and in header values. Then Istio's `istio_authn` filter, which Envoy
//! 1.40 does not have: skiff with it must decide as Envoy does with the `set_filter_state`
//! that puts the same SPIFFE identities under Istio's keys.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::curl;
use skiff_tests::config::{self, router};
use skiff_tests::run_for;
use skiff_tests::side_by_side::{pair, Side, Up, HOST};

const NETWORK_SFS: &str =
    "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config";
const HTTP_SFS: &str =
    "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config";
const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const LOG: &str = "%REQ(:PATH)% %RESPONSE_CODE% user=%FILTER_STATE(user)% \
    peer=%FILTER_STATE(conn.peer:PLAIN)% sni=%FILTER_STATE(conn.sni:PLAIN):6% \
    h=%FILTER_STATE(h)% tag=%FILTER_STATE(tag)% none=%FILTER_STATE(none)% \
    early=%FILTER_STATE(early:PLAIN)% p=%FILTER_STATE(io.istio.peer_principal:PLAIN)% \
    l=%FILTER_STATE(io.istio.local_principal:PLAIN)%\n";

/// A `FilterStateValue`.
fn value(key: &str, format: &str) -> Value {
    json!({ "object_key": key, "factory_key": "envoy.string",
            "format_string": { "text_format_source": { "inline_string": format } } })
}

fn state_principal(key: &str, m: Value) -> Value {
    json!({ "filter_state": { "key": key, "string_match": m } })
}

fn with_filters(v: &mut Value, listener: usize, front: Vec<Value>) {
    let chain = &mut v["static_resources"]["listeners"][listener]["filter_chains"][0];
    let last = chain["filters"][0].clone();
    let mut all = front;
    all.push(last);
    chain["filters"] = json!(all);
}

/// One HCM: the network filter's values on new connections, the HTTP filter's on requests,
/// RBAC over them, and their values in a response header, an upstream header and the log.
fn build(admin: u16, listen: u16, upstream: u16) -> String {
    let mut v = config::simple_http(admin, listen, &[upstream]);
    let hcm = config::hcm_config(&mut v);
    let mut read_only = value("conn.peer", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%");
    read_only["read_only"] = json!(true);
    let mut skip = value("tag", "%REQ(x-tag)%");
    skip["skip_if_empty"] = json!(true);
    let mut hashable = value("h", "%REQ(:path)%");
    hashable["factory_key"] = json!("envoy.hashable_string");
    let http_values = json!([
        value("user", "%REQ(x-user)%"),
        // Read-only on the connection: the stream's value is not taken.
        value("conn.peer", "replaced"),
        skip,
        hashable,
        value("early", "u=%FILTER_STATE(user:PLAIN)% %REQ(x-user)%"),
    ]);
    let rules = json!({ "action": "ALLOW", "policies": {
        "alice": { "permissions": [ { "any": true } ],
                   "principals": [ state_principal("user", json!({ "exact": "alice" })) ] },
        "local": { "permissions": [ { "header": { "name": "x-local", "present_match": true } } ],
                   "principals": [ { "and_ids": { "ids": [
                       state_principal("conn.peer", json!({ "prefix": "127." })),
                       { "not_id": state_principal("user", json!({ "exact": "mallory" })) } ] } } ] },
        "tagged": { "permissions": [ { "any": true } ],
                    "principals": [ state_principal("tag", json!({ "safe_regex": { "regex": "t[0-9]+" } })) ] }
    } });
    hcm["http_filters"] = json!([
        { "name": "sfs", "typed_config": { "@type": HTTP_SFS, "on_request_headers": http_values,
            "clear_route_cache": true } },
        { "name": "envoy.filters.http.rbac", "typed_config": { "@type": RBAC, "rules": rules } },
        router()
    ]);
    hcm["access_log"] = json!([
        { "name": "envoy.access_loggers.stdout", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": { "text_format_source": { "inline_string": LOG } } } },
        { "name": "envoy.access_loggers.stdout", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": { "json_format": {
                "json": "%REQ(:PATH)%", "user": "%FILTER_STATE(user)%",
                "plain": "%FILTER_STATE(user:PLAIN)%", "none": "%FILTER_STATE(none)%",
                "sni": "%FILTER_STATE(conn.sni)%" } } } }
    ]);
    // Routes by filter state: a stream object (the route picked again once the filter set it)
    // and a connection object (there at the first pick).
    let first = config::route_config(&mut v)["virtual_hosts"][0]["routes"][0].clone();
    config::route_config(&mut v)["virtual_hosts"][0]["routes"] = json!([
        { "match": { "prefix": "/", "filter_state": [
              { "key": "user", "string_match": { "exact": "carol" } } ] },
          "direct_response": { "status": 200, "body": { "inline_string": "carol's route" } } },
        { "match": { "prefix": "/conn", "filter_state": [
              { "key": "conn.peer", "string_match": { "prefix": "127." } } ] },
          "direct_response": { "status": 202, "body": { "inline_string": "the connection's route" } } },
        first
    ]);
    let routes = &mut config::route_config(&mut v)["virtual_hosts"][0]["routes"][2];
    routes["response_headers_to_add"] = json!([{ "header": { "key": "x-fs",
        "value": "%FILTER_STATE(user:PLAIN)%|%FILTER_STATE(conn.peer)%|%FILTER_STATE(tag:PLAIN)%|%FILTER_STATE(none)%" } }]);
    routes["request_headers_to_add"] = json!([{ "header": { "key": "x-up",
        "value": "%FILTER_STATE(user)% %FILTER_STATE(early:PLAIN):9%" } }]);
    with_filters(
        &mut v,
        0,
        vec![
            json!({ "name": "nsfs", "typed_config": { "@type": NETWORK_SFS,
            "on_new_connection": [
                read_only,
                value("conn.sni", "sni=%REQUESTED_SERVER_NAME% san=%DOWNSTREAM_PEER_URI_SAN%"),
            ] } }),
        ],
    );
    config::to_yaml(&v)
}

/// What one proxy did with a request: status, body, the response's `x-fs`, the upstream's
/// `x-up`, and both log lines.
async fn seen(side: &Side, args: &[&str], path: &str) -> String {
    let before = side.rec.requests().len();
    let host = format!("Host: {HOST}");
    let mut all: Vec<&str> = vec!["-H", &host];
    all.extend_from_slice(args);
    let url = side.url(path);
    all.push(&url);
    let r = curl(&all).await;
    let up = side.rec.requests();
    // The value the route added, and where it went among the headers (after Envoy's own).
    let upstream = up.get(before).map(|r| {
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        (r.header("x-up").map(str::to_string), names.join(","))
    });
    let prefix = format!("{path} ");
    let line = side
        .proxy
        .wait_stdout_line(Duration::from_secs(5), |l| l.starts_with(&prefix))
        .await;
    let json_prefix = format!("{{\"json\":\"{path}\"");
    let json_line = side
        .proxy
        .wait_stdout_line(Duration::from_secs(5), |l| {
            l.replace(' ', "").starts_with(&json_prefix)
        })
        .await;
    let json_line: Value = serde_json::from_str(&json_line).unwrap_or(Value::Null);
    // The echo's body is the request as the upstream got it (its `x-up` is compared above).
    let body = match r.resp.text() {
        t if t.starts_with("GET ") => "(echo)".to_string(),
        t => t,
    };
    format!(
        "{path} {args:?}: {} {body:?} x-fs={:?} upstream={upstream:?}\n  log={line:?}\n  json={json_line}",
        r.resp.status,
        r.resp.header("x-fs"),
    )
}

#[tokio::test]
async fn set_filter_state_and_its_readers_side_by_side_with_envoy() {
    run_for(Duration::from_secs(120), async {
        let cases: &[(&[&str], &str)] = &[
            (&[], "/none"),
            (&["-H", "x-user: alice"], "/alice"),
            (&["-H", "x-user: bob"], "/bob"),
            (&["-H", "x-user: bob", "-H", "x-local: 1"], "/bob-local"),
            (&["-H", "x-user: mallory", "-H", "x-local: 1"], "/mallory"),
            (&["-H", "x-tag;"], "/empty-tag"),
            (&["-H", "x-tag: t12"], "/tagged"),
            (&["-H", "x-tag: x12"], "/bad-tag"),
            (&["-H", "x-user: a b \"c\""], "/quoted"),
            (&["-H", "x-user: carol", "-H", "x-local: 1"], "/carol"),
            (&["-H", "x-local: 1"], "/conn"),
        ];
        let (e, s) = pair(Up::H1, build).await;
        let mut failures = Vec::new();
        let mut all = Vec::new();
        for (args, path) in cases {
            let (ge, gs) = (seen(&e, args, path).await, seen(&s, args, path).await);
            if ge != gs {
                failures.push(format!("envoy {ge}\nskiff {gs}"));
            }
            all.push(ge);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        let all = all.join("\n");
        // The cases decide as they are meant to.
        for (path, status) in [
            ("/none", 403),
            ("/alice", 200),
            ("/bob", 403),
            ("/bob-local", 200),
            ("/mallory", 403),
            ("/tagged", 200),
            ("/bad-tag", 403),
            ("/carol", 200),
            ("/conn", 202),
        ] {
            assert!(all.contains(&format!("{path} [")), "{all}");
            let line = all
                .lines()
                .find(|l| l.starts_with(&format!("{path} [")))
                .unwrap_or_default();
            assert!(line.contains(&format!(": {status} ")), "{path}: {line}");
        }
    })
    .await;
}

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    other: (String, String),
}

/// A CA, a server certificate with its own SPIFFE identity, a client whose identity the rules
/// allow and one whose identity they do not.
fn pki() -> Pki {
    use skiff_tests::pki::{dns, uri, TestCa};
    let ca = TestCa::new("filter-state-pki", "filter state test CA");
    Pki {
        server: ca.leaf(
            "server",
            vec![
                dns("fs.test"),
                uri("spiffe://cluster.local/ns/default/sa/server"),
            ],
        ),
        client: ca.leaf(
            "client",
            vec![uri("spiffe://cluster.local/ns/default/sa/sleep")],
        ),
        other: ca.leaf(
            "other",
            vec![
                uri("https://not-spiffe.test/x"),
                uri("spiffe://cluster.local/ns/other/sa/other"),
            ],
        ),
        ca: ca.ca,
    }
}

/// Over mutual TLS: Istio's keys set by `istio_authn` (skiff) or by the `set_filter_state`
/// that does the same (Envoy), read by a network RBAC in front of tcp_proxy and by an HTTP
/// RBAC; a value made on the new connection sees no certificate yet, on both.
#[tokio::test]
async fn istio_authn_decides_as_envoy_with_the_same_filter_state() {
    use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, tcp_proxy, vhost};
    use skiff_tests::proxy::{Kind, ProxyProcess};
    use skiff_tests::upstream::EchoUpstream;
    run_for(Duration::from_secs(120), async {
        let p = pki();
        let tls = json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [{ "certificate_chain": { "filename": p.server.0 },
                                       "private_key": { "filename": p.server.1 } }],
                "validation_context": { "trusted_ca": { "filename": p.ca } } } } });
        let sleep = json!({ "exact": "spiffe://cluster.local/ns/default/sa/sleep" });
        // As Istio writes an AuthorizationPolicy's principal.
        let principal = json!({ "or_ids": { "ids": [
            state_principal("io.istio.peer_principal", sleep.clone()) ] } });
        let network_rules = json!({ "action": "ALLOW", "policies": { "sleep": {
            "permissions": [ { "any": true } ], "principals": [ principal ] } } });
        let http_rules = json!({ "action": "DENY", "policies": { "server-deny": {
            "permissions": [ { "url_path": { "path": { "prefix": "/deny" } } } ],
            "principals": [ state_principal("io.istio.local_principal",
                json!({ "suffix": "/sa/server" })) ] } } });
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let up = EchoUpstream::start("u1").await;
            let ports = [skiff_tests::free_port(), skiff_tests::free_port()];
            let authn = match kind {
                Kind::Envoy => json!({ "name": "authn", "typed_config": { "@type": NETWORK_SFS,
                    "on_new_connection": [ value("early", "%DOWNSTREAM_PEER_URI_SAN%") ],
                    "on_downstream_tls_handshake": [
                        value("io.istio.peer_principal", "%DOWNSTREAM_PEER_URI_SAN%"),
                        value("io.istio.local_principal", "%DOWNSTREAM_LOCAL_URI_SAN%") ] } }),
                _ => json!({ "name": "istio_authn", "typed_config": {
                    "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                    "type_url": "type.googleapis.com/io.istio.network.authn.Config" } }),
            };
            let early = json!({ "name": "early", "typed_config": { "@type": NETWORK_SFS,
                "on_new_connection": [ value("early", "%DOWNSTREAM_PEER_URI_SAN%") ] } });
            let front = |gate: Value| match kind {
                Kind::Envoy => vec![authn.clone(), gate],
                _ => vec![early.clone(), authn.clone(), gate],
            };
            let mut http = hcm(
                "mtls_http",
                vec![vhost("backend", &["*"], vec![route("/", "backend")])],
            );
            http["typed_config"]["http_filters"] = json!([
                { "name": "envoy.filters.http.rbac", "typed_config": { "@type": RBAC, "rules": http_rules } },
                router()
            ]);
            http["typed_config"]["access_log"] = json!([{ "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": { "text_format_source": { "inline_string": LOG } } } }]);
            let mut v = bootstrap(
                skiff_tests::free_port(),
                vec![
                    listener("mtls_tcp", "127.0.0.1", ports[0], tcp_proxy("mtls_tcp", "backend")),
                    listener("mtls_http", "127.0.0.1", ports[1], http),
                ],
                vec![cluster("backend", &[up.port()])],
            );
            for (i, prefix) in ["tcp.", "http."].iter().enumerate() {
                let gate = json!({ "name": "envoy.filters.network.rbac", "typed_config": {
                    "@type": NETWORK_RBAC, "stat_prefix": prefix, "rules": network_rules } });
                with_filters(&mut v, i, front(gate));
                v["static_resources"]["listeners"][i]["filter_chains"][0]["transport_socket"] =
                    tls.clone();
            }
            let proxy =
                ProxyProcess::start(kind, &config::to_yaml(&v), &["--concurrency", "1"]).await;
            let certs: [(&str, Vec<&str>); 3] = [
                ("sleep", vec!["--cert", &p.client.0, "--key", &p.client.1]),
                ("other", vec!["--cert", &p.other.0, "--key", &p.other.1]),
                ("none", vec![]),
            ];
            let mut got = Vec::new();
            for (who, cert) in &certs {
                for (name, port, path) in [
                    ("tcp", ports[0], "/tcp"),
                    ("http", ports[1], "/ok"),
                    ("http", ports[1], "/deny"),
                ] {
                    let before = up.rec.requests().len();
                    let resolve = format!("fs.test:{port}:127.0.0.1");
                    let url = format!("https://fs.test:{port}{path}-{who}");
                    let mut args = vec!["-s", "--cacert", &p.ca, "--resolve", &resolve];
                    args.extend(cert.iter().copied());
                    args.push(&url);
                    let r = curl(&args).await;
                    let mut line = String::new();
                    if name == "http" && r.resp.status != 0 {
                        let prefix = format!("{path}-{who} ");
                        line = proxy
                            .wait_stdout_line(Duration::from_secs(5), |l| l.starts_with(&prefix))
                            .await;
                    }
                    got.push(format!(
                        "{name} {who} {path}: status {} upstream={} log={line:?}",
                        r.resp.status,
                        up.rec.requests().len() > before
                    ));
                }
            }
            let mut stats = proxy.admin().stats_containing("rbac.").await;
            stats.sort();
            got.extend(stats.into_iter().map(|(k, v)| format!("{k}={v}")));
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        let all = seen[0].join("\n");
        assert!(all.contains("tcp sleep /tcp: status 200 upstream=true"), "{all}");
        assert!(all.contains("http sleep /ok: status 200"), "{all}");
        assert!(all.contains("http sleep /deny: status 403"), "{all}");
        assert!(all.contains("tcp other /tcp: status 0 upstream=false"), "{all}");
        assert!(all.contains("http none /ok: status 0 upstream=false"), "{all}");
    })
    .await;
}
