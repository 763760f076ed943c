//! The connection manager's `local_reply_config`, side by side with Envoy 1.40: mappers chosen
//! by status, header, response flag and `and_filter`; a mapper's status, body (inline and from a
//! file), headers and body format; the configuration's own text format with a content type; a
//! JSON format; a content type a mapper sets; HEAD; gRPC replies (the rewritten status's
//! `grpc-status`, the body as `grpc-message`); a codec error's reply; and the access log's view
//! (`%RESPONSE_CODE%` rewritten, `%LOCAL_REPLY_BODY%` empty). Upstream responses are left alone.

use std::time::Duration;

use skiff_tests::client::{get, h2_request, http1_once, raw_exchange, H2Client, Resp};
use skiff_tests::proxy::{run_cli, write_config, Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, refused_port, run_for, scratch_dir};

fn config(
    admin: u16,
    port: u16,
    upstream: u16,
    refused: u16,
    log: &str,
    file: &str,
    mappers: &str,
) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: g
          access_log:
          - name: l
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{text_format_source: {{inline_string: "%REQ(:PATH)% %RESPONSE_CODE% [%LOCAL_REPLY_BODY%] %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}}}
          local_reply_config:
            mappers:
{mappers}
            - filter: {{header_filter: {{header: {{name: x-file, present_match: true}}}}}}
              status_code: 429
              body: {{filename: {file}}}
            body_format:
              text_format_source: {{inline_string: "[%LOCAL_REPLY_BODY%] %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %RESP(x-mapped)%\n"}}
              content_type: "text/x-envoy; charset=UTF-8"
          route_config:
            virtual_hosts:
            - name: a
              domains: ["*"]
              routes:
              - match: {{prefix: /direct}}
                direct_response: {{status: 200, body: {{inline_string: "direct body"}}}}
              - match: {{prefix: /teapot}}
                direct_response: {{status: 418}}
              - match: {{prefix: /refused}}
                route: {{cluster: refused}}
              - match: {{prefix: /up}}
                route: {{cluster: up}}
          http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters:
  - name: up
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]}}
  - name: refused
    connect_timeout: 1s
    load_assignment: {{cluster_name: refused, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {refused}}}}}}}}}]}}]}}
"#
    )
}

const MAPPERS: &str = r#"            - filter: {status_code_filter: {comparison: {op: EQ, value: {default_value: 404, runtime_key: lr.a}}}}
              status_code: 403
              body: {inline_string: "not here"}
              headers_to_add: [{header: {key: x-mapped, value: one}}]
              body_format_override: {text_format: "%LOCAL_REPLY_BODY% (%RESPONSE_CODE%) %REQ(x-who)%\n"}
            - filter: {header_filter: {header: {name: x-json, present_match: true}}}
              body_format_override:
                json_format: {code: "%RESPONSE_CODE%", message: "%LOCAL_REPLY_BODY%", flags: "%RESPONSE_FLAGS%", n: 7}
            - filter: {response_flag_filter: {flags: [UF]}}
              status_code: 502
            - filter: {and_filter: {filters: [{status_code_filter: {comparison: {op: GE, value: {default_value: 200, runtime_key: lr.b}}}}, {header_filter: {header: {name: x-ct, present_match: true}}}]}}
              headers_to_add: [{header: {key: content-type, value: text/custom}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]
            - filter: {status_code_filter: {comparison: {op: EQ, value: {default_value: 418, runtime_key: lr.c}}}}
              headers_to_add: [{header: {key: x-mapped, value: tea}}]
"#;

/// Path and extra request headers.
const CASES: &[(&str, &[(&str, &str)])] = &[
    ("/nowhere", &[]),
    ("/nowhere", &[("x-who", "bob")]),
    ("/direct", &[]),
    ("/teapot", &[]),
    ("/refused", &[]),
    ("/direct", &[("x-json", "1")]),
    ("/nowhere", &[("x-json", "1")]),
    ("/direct", &[("x-ct", "1")]),
    ("/refused", &[("x-ct", "1")]),
    ("/direct", &[("x-file", "1")]),
    ("/up/echo", &[("x-ct", "1")]),
];

/// What a client saw, without the date and the echo's own body (its header order differs).
fn view(r: &Resp) -> String {
    let mut headers: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| k != "date" && !k.starts_with("x-upstream"))
        // A duration in milliseconds: its presence is what both must agree on.
        .map(|(k, v)| match k.as_str() {
            "x-envoy-upstream-service-time" => format!("{k}: <ms>"),
            _ => format!("{k}: {v}"),
        })
        .collect();
    headers.sort();
    let body = if r.header("x-upstream").is_some() {
        "(echo)".to_string()
    } else {
        r.text()
    };
    format!("{} {headers:?} {body:?}", r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_are_rewritten_as_envoy_rewrites_them() {
    run_for(Duration::from_secs(90), async {
        let upstream = EchoUpstream::start("up").await;
        let refused = refused_port();
        let dir = scratch_dir("local-reply");
        let file = dir.join("body.txt");
        std::fs::write(&file, "slow down\n").expect("body file");
        let mut seen = Vec::new();
        let mut logs = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, port) = (free_port(), free_port());
            let log = dir.join(format!("{}.log", kind.name()));
            let yaml = config(
                admin,
                port,
                upstream.port(),
                refused,
                &log.display().to_string(),
                &file.display().to_string(),
                MAPPERS,
            );
            let p = ProxyProcess::start(kind, &yaml, &[]).await;
            let addr = format!("127.0.0.1:{port}");
            let mut got = Vec::new();
            for (path, extra) in CASES {
                let mut req = get(path, "lr.example.com");
                for (k, v) in *extra {
                    req.headers_mut().insert(*k, v.parse().expect("value"));
                }
                let r = http1_once(&addr, req).await.expect("HTTP/1.1 response");
                got.push(format!("h1 {path} {extra:?}: {}", view(&r)));
            }
            let mut head = get("/nowhere", "lr.example.com");
            *head.method_mut() = http::Method::HEAD;
            let r = http1_once(&addr, head).await.expect("HEAD response");
            got.push(format!("h1 HEAD /nowhere: {}", view(&r)));
            let client = H2Client::connect(&addr).await.expect("h2c");
            for (path, extra) in CASES {
                let mut req = h2_request("GET", "lr.example.com", path, &b""[..]);
                for (k, v) in *extra {
                    req.headers_mut().insert(*k, v.parse().expect("value"));
                }
                let r = client.send(req).await.expect("h2 response");
                got.push(format!("h2 {path} {extra:?}: {}", view(&r)));
            }
            for (path, extra) in [
                ("/nowhere", &[("x-who", "al")][..]),
                ("/direct", &[("x-json", "1")]),
                ("/refused", &[]),
                ("/direct", &[("x-file", "1")]),
            ] {
                let mut req = h2_request("POST", "lr.example.com", path, &b"\0\0\0\0\0"[..]);
                req.headers_mut()
                    .insert("content-type", "application/grpc".parse().expect("v"));
                for (k, v) in extra {
                    req.headers_mut().insert(*k, v.parse().expect("value"));
                }
                let r = client.send(req).await.expect("gRPC response");
                got.push(format!("grpc {path} {extra:?}: {}", view(&r)));
            }
            // A request Envoy's codec refuses gets its reply rewritten too.
            let raw = raw_exchange(
                &addr,
                b"POST /direct HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Duration::from_secs(3),
            )
            .await;
            let codec: Vec<String> = raw.responses().iter().map(view).collect();
            got.push(format!("codec error: {codec:?}"));
            drop(p);
            seen.push(got);
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            lines.sort();
            logs.push(lines);
        }
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            assert_eq!(s, e, "skiff (left), Envoy (right)");
        }
        assert_eq!(seen[1].len(), seen[0].len());
        assert_eq!(logs[1], logs[0], "access logs: skiff (left), Envoy (right)");
        // The cases show what they are meant to.
        let all = seen[0].join("\n");
        for want in [
            "403 [\"content-length: 17\", \"content-type: text/plain\"",
            "\"x-mapped: one\"] \"not here (403) bob\\n\"",
            "502 ",
            "application/json",
            "content-type: text/custom",
            "429 ",
            "grpc-message: not here (403) al%0A",
            "[Bad Request] 400 http1.content_length_and_chunked_not_allowed",
        ] {
            assert!(all.contains(want), "{want} missing from\n{all}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_local_reply_configs_are_refused_by_both() {
    run_for(Duration::from_secs(60), async {
        let bad = [
            (
                "            - filter: {status_code_filter: {comparison: {op: EQ, value: {default_value: 404, runtime_key: lr.z}}}}\n              status_code: 100\n",
                "status_code",
            ),
            ("            - status_code: 404\n", "filter"),
        ];
        for (mappers, field) in bad {
            let yaml = config(
                free_port(),
                free_port(),
                free_port(),
                free_port(),
                "/dev/null",
                "/dev/null",
                mappers,
            );
            let cfg = write_config("bad-local-reply", &yaml);
            for kind in [Kind::Envoy, Kind::under_test()] {
                let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert_ne!(out.code, Some(0), "{}: {mappers} accepted", kind.name());
                if kind != Kind::Envoy {
                    assert!(out.output().contains(field), "{}", out.output());
                }
            }
        }
    })
    .await;
}

/// A route's `direct_response` whose `body_format` writes its body: text with request and
/// response operators (the router writes it before the response exists: `%RESPONSE_CODE%` is
/// 0), JSON, a content type of its own, no `body` at all, the route's own content type, an
/// image (bytes without an operator are the body as they are); then
/// a mapper of `local_reply_config` that rewrites one of them, and HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_response_body_formats_as_envoy_writes_them() {
    fn config(admin: u16, port: u16) -> String {
        format!(
            r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: d
          route_config:
            virtual_hosts:
            - name: a
              domains: ["*"]
              routes:
              - {{match: {{prefix: /text}}, direct_response: {{status: 503, body: {{inline_string: "hi"}}, body_format: {{text_format_source: {{inline_string: "code=%RESPONSE_CODE% body=[%LOCAL_REPLY_BODY%] path=%REQ(:PATH)% h=%REQ(x-h)%\n"}}}}}}}}
              - {{match: {{prefix: /mapped}}, direct_response: {{status: 500, body: {{inline_string: "hi"}}, body_format: {{text_format_source: {{inline_string: "[%LOCAL_REPLY_BODY%]"}}}}}}}}
              - {{match: {{prefix: /json}}, direct_response: {{status: 200, body: {{inline_string: "hi"}}, body_format: {{json_format: {{code: "%RESPONSE_CODE%", body: "%LOCAL_REPLY_BODY%", method: "%REQ(:METHOD)%"}}}}}}}}
              - {{match: {{prefix: /ctype}}, direct_response: {{status: 200, body_format: {{text_format_source: {{inline_bytes: eA==}}, content_type: "text/html"}}}}}}
              - {{match: {{prefix: /nobody}}, direct_response: {{status: 200, body_format: {{text_format_source: {{inline_string: "[%LOCAL_REPLY_BODY%]"}}}}}}}}
              - {{match: {{prefix: /png}}, direct_response: {{status: 200, body_format: {{text_format_source: {{inline_bytes: iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==}}, content_type: image/png}}}}}}
              - {{match: {{prefix: /routed}}, direct_response: {{status: 200, body_format: {{text_format_source: {{inline_string: "x"}}}}}}, response_headers_to_add: [{{header: {{key: content-type, value: a/b}}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}}]}}
          local_reply_config:
            mappers:
            - filter: {{status_code_filter: {{comparison: {{op: EQ, value: {{default_value: 500, runtime_key: k}}}}}}}}
              body: {{inline_string: "mapped"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
        )
    }
    run_for(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let (admin, port) = (free_port(), free_port());
            let p = ProxyProcess::start(kind, &config(admin, port), &[]).await;
            let addr = format!("127.0.0.1:{port}");
            let mut got = Vec::new();
            for path in [
                "/text?q=1",
                "/mapped",
                "/json",
                "/ctype",
                "/nobody",
                "/routed",
                "/png",
            ] {
                let mut req = get(path, "d.example.com");
                req.headers_mut()
                    .insert("x-h", http::HeaderValue::from_static("v"));
                let r = http1_once(&addr, req).await.expect("a response");
                got.push(format!("{path}: {} {:?}", view(&r), r.body));
            }
            let head = raw_exchange(
                &addr,
                b"HEAD /text HTTP/1.1\r\nhost: d\r\nconnection: close\r\n\r\n",
                Duration::from_secs(3),
            )
            .await;
            let head = String::from_utf8_lossy(&head.data).to_lowercase();
            got.push(format!(
                "HEAD: {}",
                head.lines()
                    .filter(|l| l.starts_with("http/") || l.starts_with("content-"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
            drop(p);
            seen.push(got);
        }
        assert!(
            seen[0][0].contains("code=0 body=[hi] path=/text?q=1 h=v"),
            "{:?}",
            seen[0]
        );
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
    })
    .await;
}
