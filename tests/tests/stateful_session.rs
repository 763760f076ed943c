//! `envoy.filters.http.stateful_session` side by side with Envoy 1.40: a session's host kept
//! in a cookie (Envoy's base64 `Cookie` message: the address and its expiry) or a header, the
//! requests of a session sent to its host, a response from another host naming that one, a
//! cookie's path, a cookie naming a host the cluster does not have (another host, or with
//! `strict` a 503), an older cookie of the bare address, and a route that turns the filter
//! off. Each side has two upstream hosts; what each case did is written with the hosts as `A`
//! and `B`, so both sides compare.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, cluster, listener, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for};

const COOKIE: &str =
    "type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState";
const HEADER: &str =
    "type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState";

fn session_filter(state: Value, strict: bool) -> Value {
    let name = if state["@type"] == COOKIE {
        "envoy.http.stateful_session.cookie"
    } else {
        "envoy.http.stateful_session.header"
    };
    json!({
        "name": "envoy.filters.http.stateful_session",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
            "session_state": { "name": name, "typed_config": state },
            "strict": strict,
        },
    })
}

fn hcm(prefix: &str, filter: Value) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": prefix,
            "route_config": { "virtual_hosts": [ { "name": "v", "domains": ["*"], "routes": [
                { "match": { "prefix": "/path/off" }, "route": { "cluster": "c" },
                  "typed_per_filter_config": { "envoy.filters.http.stateful_session": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute",
                    "disabled": true } } },
                { "match": { "prefix": "/" }, "route": { "cluster": "c" } },
            ] } ] },
            "http_filters": [ filter, { "name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } } ],
        },
    })
}

struct Side {
    _proxy: ProxyProcess,
    ports: [u16; 3],
    hosts: [EchoUpstream; 2],
}

async fn start(kind: Kind) -> Side {
    let hosts = [
        EchoUpstream::start("a").await,
        EchoUpstream::start("b").await,
    ];
    let (admin, cookie, strict, header) = (free_port(), free_port(), free_port(), free_port());
    let cookie_state = json!({ "@type": COOKIE, "cookie": {
        "name": "session", "path": "/path", "ttl": "120s",
        "attributes": [ { "name": "SameSite", "value": "Strict" } ] } });
    let v = bootstrap(
        admin,
        vec![
            listener(
                "cookie",
                "127.0.0.1",
                cookie,
                hcm("cookie", session_filter(cookie_state.clone(), false)),
            ),
            listener(
                "strict",
                "127.0.0.1",
                strict,
                hcm("strict", session_filter(cookie_state, true)),
            ),
            listener(
                "header",
                "127.0.0.1",
                header,
                hcm(
                    "header",
                    session_filter(json!({ "@type": HEADER, "name": "x-session" }), false),
                ),
            ),
        ],
        vec![cluster("c", &[hosts[0].addr.port(), hosts[1].addr.port()])],
    );
    let proxy = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
    Side {
        _proxy: proxy,
        ports: [cookie, strict, header],
        hosts,
    }
}

impl Side {
    /// `A` or `B` for one of this side's hosts, `?` for another address.
    fn letter(&self, address: &str) -> String {
        for (i, h) in self.hosts.iter().enumerate() {
            if address == h.addr.to_string() {
                return ["A", "B"][i].to_string();
            }
        }
        format!("?{address}")
    }

    fn counts(&self) -> [usize; 2] {
        [
            self.hosts[0].rec.requests().len(),
            self.hosts[1].rec.requests().len(),
        ]
    }

    /// The cookie value naming this side's host `i` (Envoy's message, without expiry), or an
    /// older cookie of the bare address.
    fn cookie_for(&self, i: usize, bare: bool) -> String {
        let address = self.hosts[i].addr.to_string();
        let bytes = if bare {
            address.into_bytes()
        } else {
            let mut m = vec![0x0a, address.len() as u8];
            m.extend_from_slice(address.as_bytes());
            m
        };
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// What one request did: the host that served it, and the session the response set.
async fn request(side: &Side, listener: usize, path: &str, extra: &[String]) -> String {
    let before = side.counts();
    let url = format!("http://127.0.0.1:{}{path}", side.ports[listener]);
    let mut args: Vec<&str> = vec!["-s"];
    for e in extra {
        args.push("-H");
        args.push(e);
    }
    args.push(&url);
    let r = curl(&args).await;
    let after = side.counts();
    let served = match (after[0] - before[0], after[1] - before[1]) {
        (1, 0) => "A",
        (0, 1) => "B",
        (0, 0) => "none",
        _ => "both",
    };
    let mut set = String::new();
    for (n, v) in &r.resp.headers {
        if n == "set-cookie" {
            // session="<base64>"; the rest as is.
            let (value, rest) = v.split_once(';').unwrap_or((v, ""));
            let b64 = value.trim_start_matches("session=").trim_matches('"');
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default();
            // Envoy's message: field 1 the address, field 2 the expiry (a varint).
            let len = bytes.get(1).copied().unwrap_or(0) as usize;
            let address =
                String::from_utf8_lossy(bytes.get(2..2 + len).unwrap_or(&[])).into_owned();
            let expiry = bytes.get(2 + len) == Some(&0x10);
            set = format!("cookie {} expiry {expiry} {rest}", side.letter(&address));
        } else if n == "x-session" {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v)
                .unwrap_or_default();
            set = format!("header {}", side.letter(&String::from_utf8_lossy(&bytes)));
        }
    }
    format!("{path}: {} served by {served}; set [{set}]", r.resp.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stick_to_their_host_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let side = start(kind).await;
            let mut got = Vec::new();
            // A first request: a cookie naming the host that answered.
            got.push(request(&side, 0, "/path/a", &[]).await);
            // The session's requests go to its host; no new cookie.
            for i in [0, 1] {
                let cookie = format!("cookie: session=\"{}\"", side.cookie_for(i, false));
                for _ in 0..3 {
                    got.push(request(&side, 0, "/path/b", std::slice::from_ref(&cookie)).await);
                }
                // An older cookie: the bare address.
                let bare = format!("cookie: session=\"{}\"", side.cookie_for(i, true));
                got.push(request(&side, 0, "/path/c", &[bare]).await);
            }
            // A host the cluster does not have: another host and a new cookie, or with
            // `strict` a 503.
            let unknown = format!(
                "cookie: session=\"{}\"",
                base64::engine::general_purpose::STANDARD.encode("127.0.0.1:1")
            );
            got.push(request(&side, 0, "/path/d", std::slice::from_ref(&unknown)).await);
            got.push(request(&side, 1, "/path/d", std::slice::from_ref(&unknown)).await);
            // Outside the cookie's path, and on a route that turns the filter off: no session.
            got.push(request(&side, 0, "/other", &[]).await);
            got.push(request(&side, 0, "/path/off", &[]).await);
            // A header session.
            let header = format!(
                "x-session: {}",
                base64::engine::general_purpose::STANDARD.encode(side.hosts[1].addr.to_string())
            );
            for _ in 0..2 {
                got.push(request(&side, 2, "/h", std::slice::from_ref(&header)).await);
            }
            seen.push(got);
        }
        // Where round robin picks (each proxy starts it where it starts it), the host that
        // served is `S`, and a cookie must name it.
        let picked = |line: &str| {
            let mut l = line.to_string();
            for x in ["A", "B"] {
                l = l.replace(
                    &format!("served by {x}; set [cookie {x} "),
                    "served by S; set [cookie S ",
                );
                l = l.replace(&format!("served by {x}; set []"), "served by S; set []");
            }
            l
        };
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            let free = ["/path/a", "/path/d: 200", "/other", "/path/off"];
            if free.iter().any(|p| e.starts_with(p)) {
                assert_eq!(picked(s), picked(e), "skiff (left), Envoy (right)");
                continue;
            }
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        assert_eq!(seen[1].len(), seen[0].len());
        let all = seen[0].join("\n");
        assert!(all.contains("/path/b: 200 served by B; set []"), "{all}");
        assert!(all.contains("/path/d: 503 served by none; set []"), "{all}");
        assert!(all.contains("/h: 200 served by B; set []"), "{all}");
        assert!(
            all.contains("expiry true  Max-Age=120; Path=/path; SameSite=Strict; HttpOnly"),
            "{all}"
        );
    })
    .await;
}

/// `common_lb_config.override_host_status`: which hosts a session may name, by their health.
/// Three hosts: `A` UNHEALTHY, `B` with no status (UNKNOWN), `C` HEALTHY; cluster `d` keeps
/// Envoy's default set, `u` lets UNHEALTHY and UNKNOWN hosts be named, `e` none. The listener
/// is strict, so a host the set refuses is a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_host_status_decides_which_hosts_a_session_may_name_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let hosts = [
                EchoUpstream::start("a").await,
                EchoUpstream::start("b").await,
                EchoUpstream::start("c").await,
            ];
            let endpoints: Vec<Value> = hosts
                .iter()
                .zip([Some("UNHEALTHY"), None, Some("HEALTHY")])
                .map(|(h, status)| {
                    let mut e = json!({ "endpoint": { "address": { "socket_address": {
                        "address": "127.0.0.1", "port_value": h.addr.port() } } } });
                    if let Some(s) = status {
                        e["health_status"] = json!(s);
                    }
                    e
                })
                .collect();
            let clusters: Vec<Value> = [
                ("d", None),
                ("u", Some(json!(["UNHEALTHY", "UNKNOWN"]))),
                ("e", Some(json!([]))),
            ]
            .into_iter()
            .map(|(name, set)| {
                let mut c = cluster(name, &[]);
                c["load_assignment"]["endpoints"] = json!([{ "lb_endpoints": endpoints }]);
                if let Some(set) = set {
                    c["common_lb_config"] = json!({ "override_host_status": { "statuses": set } });
                }
                c
            })
            .collect();
            let (admin, port) = (free_port(), free_port());
            let state = json!({ "@type": COOKIE, "cookie": { "name": "session", "path": "/" } });
            let mut h = hcm("s", session_filter(state, true));
            h["typed_config"]["route_config"]["virtual_hosts"][0]["routes"] = json!([
                "d", "u", "e"
            ]
            .iter()
            .map(|c| json!({ "match": { "prefix": format!("/{c}") }, "route": { "cluster": c } }))
            .collect::<Vec<_>>());
            let v = bootstrap(admin, vec![listener("s", "127.0.0.1", port, h)], clusters);
            let _proxy = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for c in ["d", "u", "e"] {
                for (i, letter) in ["A", "B", "C"].iter().enumerate() {
                    let before: Vec<usize> = hosts.iter().map(|h| h.rec.requests().len()).collect();
                    let cookie =
                        base64::engine::general_purpose::STANDARD.encode(hosts[i].addr.to_string());
                    let r = curl(&[
                        "-s",
                        "-H",
                        &format!("cookie: session=\"{cookie}\""),
                        &format!("http://127.0.0.1:{port}/{c}"),
                    ])
                    .await;
                    let served: Vec<&str> = hosts
                        .iter()
                        .zip(&before)
                        .zip(["A", "B", "C"])
                        .filter(|((h, b), _)| h.rec.requests().len() > **b)
                        .map(|(_, l)| l)
                        .collect();
                    got.push(format!(
                        "/{c} naming {letter}: {} served by {served:?}",
                        r.resp.status
                    ));
                }
            }
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        let all = seen[0].join("\n");
        for want in [
            "/d naming A: 503 served by []",
            "/d naming C: 200 served by [\"C\"]",
            "/u naming A: 200 served by [\"A\"]",
            "/u naming C: 503 served by []",
            "/e naming B: 503 served by []",
        ] {
            assert!(all.contains(want), "{want}\n{all}");
        }
    })
    .await;
}
