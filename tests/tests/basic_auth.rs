//! `envoy.filters.http.basic_auth` side by side with Envoy 1.40: htpasswd `{SHA}` users (as
//! Envoy Gateway's `inline_bytes`), `forward_username_header`, a route's `BasicAuthPerRoute`
//! users, a route that turns the filter off, and a listener reading the credentials from
//! `authentication_header`. Requests without credentials, with good and bad ones, another
//! scheme, a token without a colon, base64 without padding, a lower-case scheme and a query in
//! the URL are compared on the status, the body, `www-authenticate`, what the upstream got
//! (the forwarded user and the credentials), the access log's details, and the stats.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use skiff_tests::config::{bootstrap, cluster, file_log, listener, router, to_yaml};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::run_for;
use skiff_tests::upstream::EchoUpstream;

/// `name:{SHA}<base64 SHA-1 of password>` lines.
fn htpasswd(users: &[(&str, &str)]) -> String {
    users
        .iter()
        .map(|(u, p)| {
            let digest =
                ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, p.as_bytes());
            format!(
                "{u}:{{SHA}}{}\n",
                base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
            )
        })
        .collect()
}

fn hcm(name: &str, log: &str, auth: Value) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let per_route = json!({ "envoy.filters.http.basic_auth": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute",
        "users": { "inline_bytes": b64(&htpasswd(&[("admin", "adminpw")])) } } });
    let off = json!({ "envoy.filters.http.basic_auth": {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true } });
    json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "access_log": [ file_log(log, Some("%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\n")) ],
        "http_filters": [ { "name": "envoy.filters.http.basic_auth", "typed_config": auth }, router() ],
        "route_config": { "virtual_hosts": [ { "name": "v", "domains": ["*"], "routes": [
            { "match": { "prefix": "/admin" }, "route": { "cluster": "backend" },
              "typed_per_filter_config": per_route },
            { "match": { "prefix": "/open" }, "route": { "cluster": "backend" },
              "typed_per_filter_config": off },
            { "match": { "prefix": "/" }, "route": { "cluster": "backend" } }
        ] } ] }
    } })
}

fn config(admin: u16, ports: [u16; 2], backend: u16, logs: [&str; 2]) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let users = htpasswd(&[("user1", "pass1"), ("user2", "pass2")]);
    let auth = |extra: Value| {
        let mut v = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
            "users": { "inline_bytes": b64(&format!("# users\n{users}")) } });
        for (k, x) in extra.as_object().cloned().unwrap_or_default() {
            v[k] = x;
        }
        v
    };
    to_yaml(&bootstrap(
        admin,
        vec![
            listener(
                "plain",
                "127.0.0.1",
                ports[0],
                hcm(
                    "plain",
                    logs[0],
                    auth(json!({ "forward_username_header": "x-user" })),
                ),
            ),
            listener(
                "header",
                "127.0.0.1",
                ports[1],
                hcm(
                    "header",
                    logs[1],
                    auth(json!({ "authentication_header": "x-creds" })),
                ),
            ),
        ],
        vec![cluster("backend", &[backend])],
    ))
}

#[tokio::test]
async fn basic_auth_side_by_side_with_envoy() {
    run_for(Duration::from_secs(60), async {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let basic = |s: &str| format!("Basic {}", b64(s));
        let cases: Vec<(&str, Option<String>)> = vec![
            ("/x", None),
            ("/x", Some(basic("user1:pass1"))),
            ("/x?q=1", Some(basic("user2:pass2"))),
            ("/x", Some(basic("user1:wrong"))),
            ("/x", Some(basic("nobody:pass1"))),
            ("/x?q=1", Some("Bearer abc".into())),
            ("/x", Some("Basic".into())),
            ("/x", Some(basic("user1"))),
            ("/x", Some(format!("Basic {}", b64("user1:pass1").trim_end_matches('=')))),
            ("/x", Some(format!("basic {}", b64("user1:pass1")))),
            ("/x", Some("Basic !!!".into())),
            ("/admin", Some(basic("user1:pass1"))),
            ("/admin", Some(basic("admin:adminpw"))),
            ("/open", None),
        ];
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let backend = EchoUpstream::start("backend").await;
            let dir = skiff_tests::scratch_dir("basic-auth");
            let logs = [dir.join("plain.log"), dir.join("header.log")];
            let ports = [skiff_tests::free_port(), skiff_tests::free_port()];
            let yaml = config(
                skiff_tests::free_port(),
                ports,
                backend.port(),
                [
                    logs[0].to_str().expect("path"),
                    logs[1].to_str().expect("path"),
                ],
            );
            let proxy = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            for (port, header) in ports.iter().zip(["authorization", "x-creds"]) {
                for (path, creds) in &cases {
                    let before = backend.rec.requests().len();
                    let url = format!("http://127.0.0.1:{port}{path}");
                    let h = creds.as_ref().map(|c| format!("{header}: {c}"));
                    let mut args = vec!["-s"];
                    if let Some(h) = &h {
                        args.extend(["-H", h.as_str()]);
                    }
                    args.push(&url);
                    let r = skiff_tests::client::curl(&args).await;
                    let upstream = backend.rec.requests().get(before).map(|u| {
                        format!(
                            "x-user={:?} {header}={:?}",
                            u.header("x-user"),
                            u.header(header)
                        )
                    });
                    got.push(
                        format!(
                            "{header} {path} {creds:?}: {} {:?} www-authenticate={:?} upstream={upstream:?}",
                            r.resp.status,
                            // (The echo's body carries a random request id.)
                            if r.resp.status == 200 {
                                "echo".into()
                            } else {
                                String::from_utf8_lossy(&r.resp.body)
                            },
                            r.resp.header("www-authenticate"),
                        )
                        .replace(&port.to_string(), "<port>"),
                    );
                }
            }
            let mut stats = proxy.admin().stats_containing("basic_auth").await;
            stats.sort();
            got.extend(stats.into_iter().map(|(k, v)| format!("{k}={v}")));
            // Every request's line, once the proxy has written them out.
            let read = || -> Vec<String> {
                logs.iter()
                    .flat_map(|l| {
                        std::fs::read_to_string(l)
                            .unwrap_or_default()
                            .lines()
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    })
                    .collect()
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while read().len() < 2 * cases.len() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            got.extend(read());
            drop(proxy);
            seen.push(got);
        }
        let all = skiff_tests::diff::assert_same_lines(&seen);
        assert!(all.contains("http.plain.basic_auth.allowed"), "{all}");
        assert!(all.contains("invalid_credential_for_basic_auth"), "{all}");
        assert!(all.contains(r#"x-user=Some(\"admin\")"#), "{all}");
    })
    .await;
}
