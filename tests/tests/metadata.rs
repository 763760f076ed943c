//! Dynamic metadata side by side with Envoy 1.40: `envoy.filters.http.header_to_metadata`
//! (request and response rules, cookies, types, base64, regex rewrites, removal, per-route
//! configuration, its stats), `%DYNAMIC_METADATA%` in text and JSON access logs, the
//! `metadata_filter` and `traceable_filter` access log filters, and route `dynamic_metadata`
//! matchers (which see no metadata a filter writes unless the route cache is cleared).

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, cluster, listener, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for};

const H2M: &str = "envoy.filters.http.header_to_metadata";

/// A request: its name, path and headers.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

fn stdout_log(format: &str, filter: Option<Value>) -> Value {
    let mut v = json!({ "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": { "text_format_source": { "inline_string": format } } } });
    if let Some(f) = filter {
        v["filter"] = f;
    }
    v
}

fn metadata_filter(matcher: Option<Value>, if_not_found: Option<bool>) -> Value {
    let mut f = json!({});
    if let Some(m) = matcher {
        f["matcher"] = m;
    }
    if let Some(b) = if_not_found {
        f["match_if_key_not_found"] = json!(b);
    }
    json!({ "metadata_filter": f })
}

fn h2m_listener(port: u16) -> Value {
    let md = |path: &str| format!("%DYNAMIC_METADATA({H2M}{path})%");
    let truncated = format!("{}:3%", md(":str").trim_end_matches('%'));
    let all = format!(
        "A %REQ(x-case)% route=%ROUTE_NAME% ALL={} STR={} NUM={} PVA={} NOKEY={} NONS=%DYNAMIC_METADATA(no.such.ns)% CUSTOM=%DYNAMIC_METADATA(custom.ns)% CUSTOMK=%DYNAMIC_METADATA(custom.ns:k)% TRUNC={} REQRM=%REQ(x-rm)% XH0=%RESP(x-h0)% ADDED=%REQ(x-added)% PATHS=%DYNAMIC_METADATA(paths)%\n",
        md(""),
        md(":str"),
        md(":num"),
        md(":pv:a"),
        md(":nope"),
        truncated,
    );
    let gold = json!({ "filter": H2M, "path": [{ "key": "str" }],
        "value": { "string_match": { "exact": "hello" } } });
    let logs = json!([
        stdout_log(&all, None),
        stdout_log("B %REQ(x-case)%\n", Some(metadata_filter(Some(gold.clone()), None))),
        stdout_log("C %REQ(x-case)%\n", Some(metadata_filter(Some(gold.clone()), Some(false)))),
        stdout_log("D %REQ(x-case)%\n", Some(metadata_filter(None, Some(false)))),
        stdout_log("E %REQ(x-case)%\n", Some(metadata_filter(None, None))),
        stdout_log("F %REQ(x-case)%\n", Some(metadata_filter(Some({
            let mut g = gold.clone();
            g["invert"] = json!(true);
            g
        }), None))),
        stdout_log("G %REQ(x-case)%\n", Some(metadata_filter(Some(json!({ "filter": H2M,
            "path": [{ "key": "num" }], "value": { "double_match": { "range": { "start": 10, "end": 20 } } } })), Some(false)))),
        { "name": "envoy.access_loggers.stdout",
          "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": { "json_format": { "j": "%REQ(x-case)%", "md": md(""), "num": md(":num"), "none": md(":nope") } } } },
    ]);
    let rules = json!([
        { "header": "x-str", "on_header_present": { "key": "str" },
          "on_header_missing": { "key": "str_missing", "value": "absent" } },
        { "header": "x-num", "on_header_present": { "key": "num", "type": "NUMBER" } },
        { "header": "x-pv", "on_header_present": { "key": "pv", "type": "PROTOBUF_VALUE", "encode": "BASE64" } },
        { "header": "x-b64", "on_header_present": { "key": "b64", "encode": "BASE64" } },
        { "header": "x-rx", "on_header_present": { "key": "rx",
            "regex_value_rewrite": { "pattern": { "regex": "^/(\\w+)/.*$" }, "substitution": "\\1" } } },
        { "header": "x-rx2", "on_header_present": { "key": "rx2",
            "regex_value_rewrite": { "pattern": { "regex": "^.*$" }, "substitution": "" } } },
        { "header": "x-rm", "on_header_present": { "key": "rm" }, "remove": true },
        { "header": "x-fixed", "on_header_present": { "key": "fixed", "value": "fixedval" } },
        { "cookie": "session", "on_header_present": { "key": "cookie_sess" },
          "on_header_missing": { "key": "cookie_missing", "value": "missing" } },
        { "header": "x-ns", "on_header_present": { "metadata_namespace": "custom.ns", "key": "k" } },
        { "header": "x-dup", "on_header_present": { "key": "dup" } },
        { "header": "x-dup", "on_header_present": { "key": "dup", "value": "second" } },
        { "header": ":path", "on_header_present": { "metadata_namespace": "paths", "key": "path",
            "regex_value_rewrite": { "pattern": { "regex": "^/(\\w+)(/.*)?$" }, "substitution": "\\1" } } },
    ]);
    let tier = |exact: &str, invert: bool| {
        json!([{ "filter": H2M, "path": [{ "key": "str" }],
            "value": { "string_match": { "exact": exact } }, "invert": invert }])
    };
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": skiff_tests::config::HCM_TYPE,
            "stat_prefix": "meta",
            "access_log": logs,
            "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [
                { "name": "perroute", "match": { "prefix": "/perroute" }, "route": { "cluster": "up" },
                  "typed_per_filter_config": { H2M: {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
                    "request_rules": [{ "header": "x-pr", "on_header_present": { "key": "pr" } }] } } },
                { "name": "dm_hello", "match": { "prefix": "/dm", "dynamic_metadata": tier("hello", false) },
                  "route": { "cluster": "up" } },
                { "name": "dm_inverted", "match": { "prefix": "/inv", "dynamic_metadata": tier("blocked", true) },
                  "route": { "cluster": "up" } },
                { "name": "default", "match": { "prefix": "/" }, "route": { "cluster": "up" },
                  "request_headers_to_add": [{ "header": { "key": "x-added", "value": "added" } }] },
            ] }] },
            "http_filters": [
                { "name": H2M, "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
                    "stat_prefix": "h2m",
                    "request_rules": rules,
                    "response_rules": [{ "header": "x-h0", "on_header_present": { "key": "up" },
                        "on_header_missing": { "key": "up_missing", "value": "none" }, "remove": true }] } },
                skiff_tests::config::router(),
            ]
        }
    })
    .pipe(|v| listener("meta", "127.0.0.1", port, v))
}

/// A listener with `tracing` and loopback internal, logging only traceable streams.
fn trace_listener(port: u16) -> Value {
    listener(
        "trace",
        "127.0.0.1",
        port,
        json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": skiff_tests::config::HCM_TYPE,
                "stat_prefix": "trace",
                "tracing": {},
                "use_remote_address": true,
                "internal_address_config": { "cidr_ranges": [{ "address_prefix": "127.0.0.0", "prefix_len": 8 }] },
                "access_log": [
                    stdout_log("T %REQ(x-case)%\n", Some(json!({ "traceable_filter": {} }))),
                    stdout_log("U %REQ(x-case)%\n", None),
                ],
                "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"],
                    "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "up" } }] }] },
                "http_filters": [skiff_tests::config::router()]
            }
        }),
    )
}

trait Pipe: Sized {
    fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
}
impl Pipe for Value {}

#[tokio::test]
async fn dynamic_metadata_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let long = "x".repeat(8191);
        let longer = "x".repeat(8192);
        let cases: Vec<Case> = vec![
            ("none", "/", vec![]),
            ("str", "/", vec![("x-str", "hello")]),
            ("empty-str", "/", vec![("x-str", "")]),
            ("fixed-empty", "/", vec![("x-fixed", "")]),
            ("joined", "/", vec![("x-str", "a"), ("x-str", "b")]),
            ("num", "/", vec![("x-num", "42")]),
            ("num-float", "/", vec![("x-num", "3.25")]),
            ("num-exp", "/", vec![("x-num", "1e3")]),
            ("num-hex", "/", vec![("x-num", "0x10")]),
            ("num-range", "/", vec![("x-num", "15")]),
            ("num-bad", "/", vec![("x-num", "12abc")]),
            ("pv-struct", "/", vec![("x-pv", "KgoKCAoBYRIDGgFi")]),
            ("pv-number", "/", vec![("x-pv", "EQAAAAAAAPg/")]),
            ("pv-bad", "/", vec![("x-pv", "!!notb64")]),
            ("b64", "/", vec![("x-b64", "aGVsbG8gd29ybGQ")]),
            ("rx", "/", vec![("x-rx", "/foo/bar")]),
            ("rx-nomatch", "/", vec![("x-rx", "nomatch")]),
            ("rx-empty", "/", vec![("x-rx2", "anything")]),
            ("rm", "/", vec![("x-rm", "gone")]),
            ("cookie", "/", vec![("cookie", "a=1; session=abc123; b=2")]),
            ("cookie-empty", "/", vec![("cookie", "session=")]),
            ("ns", "/", vec![("x-ns", "nsval")]),
            ("dup", "/", vec![("x-dup", "hv")]),
            ("long", "/", vec![("x-str", long.as_str())]),
            ("longer", "/", vec![("x-str", longer.as_str())]),
            ("response", "/headers/1", vec![("x-str", "hello")]),
            (
                "perroute",
                "/perroute/headers/1",
                vec![("x-str", "s"), ("x-pr", "prv")],
            ),
            ("dm", "/dm", vec![("x-str", "hello")]),
            ("inv-none", "/inv", vec![]),
            ("inv-blocked", "/inv", vec![("x-str", "blocked")]),
        ];
        let trace_cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
            ("t-none", vec![]),
            ("t-force", vec![("x-envoy-force-trace", "true")]),
            ("t-client", vec![("x-client-trace-id", "abc")]),
            (
                "t-forced-id",
                vec![("x-request-id", "12345678-1234-a234-8234-123456789abc")],
            ),
            (
                "t-plain-id",
                vec![("x-request-id", "12345678-1234-4234-8234-123456789abc")],
            ),
        ];
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let up = EchoUpstream::start("up").await;
            let (port, tport) = (free_port(), free_port());
            let v = bootstrap(
                free_port(),
                vec![h2m_listener(port), trace_listener(tport)],
                vec![cluster("up", &[up.port()])],
            );
            let p = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for (name, path, headers) in &cases {
                let mut args = vec!["-s".to_string()];
                args.extend(["-H".into(), format!("x-case: {name}")]);
                for (k, v) in headers {
                    args.extend(["-H".into(), format!("{k}: {v}")]);
                }
                args.push(format!("http://127.0.0.1:{port}{path}"));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let r = curl(&args).await;
                let rm = up.rec.last().has("x-rm");
                // The filter's counters after each request, to tell which request moved them.
                let counters: Vec<String> = p
                    .admin()
                    .stats_containing("http_filter_name.")
                    .await
                    .into_iter()
                    .filter(|(_, v)| v.trim() != "0")
                    .map(|(n, v)| {
                        format!("{}={}", n.trim_start_matches("http_filter_name.h2m."), v)
                    })
                    .collect();
                got.push(format!(
                    "{name}: {} x-rm upstream={rm} {}",
                    r.resp.status,
                    counters.join(" ")
                ));
                p.wait_stdout_line(Duration::from_secs(5), |l| {
                    l.starts_with(&format!("A {name} "))
                })
                .await;
            }
            for (name, headers) in &trace_cases {
                let mut args = vec!["-s".to_string(), "-o".into(), "/dev/null".into()];
                args.extend(["-H".into(), format!("x-case: {name}")]);
                for (k, v) in headers {
                    args.extend(["-H".into(), format!("{k}: {v}")]);
                }
                args.push(format!("http://127.0.0.1:{tport}/"));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                curl(&args).await;
                p.wait_stdout_line(Duration::from_secs(5), |l| l == format!("U {name}"))
                    .await;
            }
            // Lines of a stream come out together, the last logger's last.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let out = p.stdout();
            for l in out.lines() {
                let keep = ["A ", "B ", "C ", "D ", "E ", "F ", "G ", "T ", "{"];
                if keep.iter().any(|k| l.starts_with(k)) {
                    got.push(l.to_string());
                }
            }
            for (name, value) in p.admin().stats_containing("http_filter_name.").await {
                got.push(format!("{name}: {value}"));
            }
            seen.push(got);
        }
        eprintln!(
            "Envoy:\n{}\nskiff:\n{}",
            seen[0].join("\n"),
            seen[1].join("\n")
        );
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        assert_eq!(seen[0].len(), seen[1].len());
        let all = seen[0].join("\n");
        assert!(all.contains("T t-force"), "{all}");
        assert!(all.contains("route=dm_inverted"), "{all}");
    })
    .await
}

/// `%UPSTREAM_METADATA%` and `%CLUSTER_METADATA%` (and `%METADATA(UPSTREAM_HOST|CLUSTER|ROUTE|
/// VIRTUAL_HOST:…)%`) in route header values and access logs, side by side with Envoy 1.40.
#[tokio::test]
async fn upstream_and_cluster_metadata_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let up = EchoUpstream::start("up").await;
            let port = free_port();
            let mut c = cluster("up", &[up.port()]);
            c["metadata"] = json!({ "filter_metadata": { "team": { "owner": "blue", "n": 3 } } });
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] = json!({
                "filter_metadata": { "envoy.lb": { "version": "v1" },
                    "host": { "zone": "z1", "nested": { "k": "v" } } } });
            let route = json!({ "name": "r", "match": { "prefix": "/" }, "route": { "cluster": "up" },
                "metadata": { "filter_metadata": { "rt": { "tier": "gold", "w": 2 } } },
                "request_headers_to_add": [
                    { "header": { "key": "x-up", "value": "%UPSTREAM_METADATA(host:zone)%" } },
                    { "header": { "key": "x-cl", "value": "%CLUSTER_METADATA(team:owner)%" } } ],
                "response_headers_to_add": [
                    { "header": { "key": "x-up", "value": "%UPSTREAM_METADATA(host:nested)%" } },
                    { "header": { "key": "x-cl", "value": "%CLUSTER_METADATA(team)%" } } ] });
            let mut vh = skiff_tests::config::vhost("all", &["*"], vec![route]);
            vh["metadata"] = json!({ "filter_metadata": { "vh": { "name": "all" } } });
            let mut h = skiff_tests::config::hcm("md", vec![vh]);
            h["typed_config"]["access_log"] = json!([
                stdout_log("L up=%UPSTREAM_METADATA(host)% zone=%UPSTREAM_METADATA(host:zone)% lb=%METADATA(UPSTREAM_HOST:envoy.lb:version)% cl=%CLUSTER_METADATA(team)% n=%METADATA(CLUSTER:team:n)% none=%UPSTREAM_METADATA(nope)% rt=%METADATA(ROUTE:rt)% tier=%METADATA(ROUTE:rt:tier)% vh=%METADATA(VIRTUAL_HOST:vh:name)% ls=%METADATA(LISTENER:ls)%\n", None),
                { "name": "envoy.access_loggers.stdout",
                  "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": { "json_format": { "up": "%UPSTREAM_METADATA(host)%",
                        "n": "%CLUSTER_METADATA(team:n)%", "rt": "%METADATA(ROUTE:rt)%" } } } },
            ]);
            let mut l = listener("l", "127.0.0.1", port, h);
            l["metadata"] = json!({ "filter_metadata": { "ls": { "k": "lv" } } });
            let v = bootstrap(free_port(), vec![l], vec![c]);
            let p = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let r = curl(&["-s", &format!("http://127.0.0.1:{port}/x")]).await;
            let last = up.rec.last();
            let mut got = vec![format!(
                "status={} upstream x-up={:?} x-cl={:?} | client x-up={:?} x-cl={:?}",
                r.resp.status,
                last.header("x-up"),
                last.header("x-cl"),
                r.resp.header("x-up"),
                r.resp.header("x-cl"),
            )];
            p.wait_stdout_line(Duration::from_secs(5), |l| l.starts_with('{')).await;
            for l in p.stdout().lines() {
                if l.starts_with("L ") || l.starts_with('{') {
                    got.push(l.to_string());
                }
            }
            seen.push(got);
        }
        eprintln!("Envoy:\n{}\nskiff:\n{}", seen[0].join("\n"), seen[1].join("\n"));
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
    })
    .await
}

/// The stream's `envoy.lb` dynamic metadata (written by header_to_metadata) picks the subset,
/// over the route's `metadata_match`, side by side with Envoy 1.40.
#[tokio::test]
async fn subsets_from_dynamic_metadata_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let v1 = EchoUpstream::start("v1").await;
            let v2 = EchoUpstream::start("v2").await;
            let port = free_port();
            let endpoint = |port: u16, version: &str| {
                json!({ "endpoint": { "address": { "socket_address": {
                    "address": "127.0.0.1", "port_value": port } } },
                    "metadata": { "filter_metadata": { "envoy.lb": { "version": version } } } })
            };
            let c = json!({
                "name": "up", "type": "STATIC", "connect_timeout": "1s",
                "lb_subset_config": { "fallback_policy": "ANY_ENDPOINT",
                    "subset_selectors": [{ "keys": ["version"] }] },
                "load_assignment": { "cluster_name": "up", "endpoints": [{ "lb_endpoints": [
                    endpoint(v1.port(), "v1"), endpoint(v2.port(), "v2") ] }] },
            });
            let routes = vec![
                json!({ "match": { "prefix": "/pinned" }, "route": { "cluster": "up",
                    "metadata_match": { "filter_metadata": { "envoy.lb": { "version": "v1" } } } } }),
                json!({ "match": { "prefix": "/" }, "route": { "cluster": "up" } }),
            ];
            let mut h = skiff_tests::config::hcm("sub", vec![skiff_tests::config::vhost("all", &["*"], routes)]);
            h["typed_config"]["http_filters"] = json!([
                { "name": H2M, "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
                    "request_rules": [{ "header": "x-version", "on_header_present": {
                        "metadata_namespace": "envoy.lb", "key": "version" } }] } },
                skiff_tests::config::router(),
            ]);
            let v = bootstrap(free_port(), vec![listener("l", "127.0.0.1", port, h)], vec![c]);
            let _proxy = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for (path, version) in [
                ("/a", Some("v1")),
                ("/b", Some("v2")),
                ("/pinned/c", Some("v2")),
                ("/pinned/d", None),
            ] {
                let mut hits = Vec::new();
                for n in 0..4 {
                    let url = format!("http://127.0.0.1:{port}{path}/{n}");
                    let mut args = vec!["-s", "-o", "/dev/null", url.as_str()];
                    let header;
                    if let Some(v) = version {
                        header = format!("x-version: {v}");
                        args.extend(["-H", header.as_str()]);
                    }
                    curl(&args).await;
                }
                for (name, up) in [("v1", &v1), ("v2", &v2)] {
                    let n = up
                        .rec
                        .requests()
                        .iter()
                        .filter(|r| r.path.starts_with(&format!("{path}/")))
                        .count();
                    hits.push(format!("{name}={n}"));
                }
                got.push(format!("{path} {version:?}: {}", hits.join(" ")));
            }
            seen.push(got);
        }
        eprintln!("Envoy:\n{}\nskiff:\n{}", seen[0].join("\n"), seen[1].join("\n"));
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
    })
    .await
}
