//! `access_log_options` of the connection manager and tcp_proxy (and their older fields), side
//! by side with Envoy 1.40: the `DownstreamStart`, `DownstreamPeriodic` and `DownstreamEnd`
//! lines of a slow request, the `TcpUpstreamConnected`, `TcpPeriodic` and `TcpConnectionEnd`
//! lines of a long connection, and the configurations Envoy refuses.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, tcp_proxy, to_yaml, vhost};
use skiff_tests::proxy::{run_cli, write_config, Kind, ProxyProcess};
use skiff_tests::upstream::tcp::{TcpMode, TcpUpstream};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HTTP_LOG: &str = "%ACCESS_LOG_TYPE% %REQ(X-CASE)% code=%RESPONSE_CODE% flags=%RESPONSE_FLAGS% route=%ROUTE_NAME% cluster=%UPSTREAM_CLUSTER% up=%UPSTREAM_HOST% dur=%DURATION% rcd=%RESPONSE_CODE_DETAILS%\n";
const TCP_LOG: &str = "%ACCESS_LOG_TYPE% tcp cluster=%UPSTREAM_CLUSTER% up=%UPSTREAM_HOST% rx=%BYTES_RECEIVED% tx=%BYTES_SENT% dur=%DURATION%\n";

fn stdout(format: &str) -> Value {
    json!([{ "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": { "text_format_source": { "inline_string": format } } } }])
}

/// A line with its durations rounded to whole seconds and its ports masked.
fn normalized(line: &str, ports: &[u16]) -> String {
    let mut out = Vec::new();
    for word in line.split(' ') {
        match word.strip_prefix("dur=") {
            Some(ms) => {
                let ms: u64 = ms.parse().unwrap_or(0);
                out.push(format!("dur~{}s", (ms + 500) / 1000));
            }
            None => out.push(word.to_string()),
        }
    }
    let mut s = out.join(" ");
    for p in ports {
        s = s.replace(&p.to_string(), "PORT");
    }
    s
}

/// An upstream that answers its head at once, then a chunk of its body every 0.8 s, three in all.
async fn drip_upstream() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 1024];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                for _ in 0..3 {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    let _ = s.write_all(b"2\r\nab\r\n").await;
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_flush_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let up = EchoUpstream::start("up").await;
            let tcp_up = TcpUpstream::start(TcpMode::Echo).await;
            let (new_port, old_port, tcp_port) = (free_port(), free_port(), free_port());
            let drip = drip_upstream().await;
            let mut named = route("/", "up");
            named["name"] = json!("r_up");
            let mut dripping = route("/drip", "drip");
            dripping["name"] = json!("r_drip");
            let mut new_opts = hcm(
                "new",
                vec![vhost("all", &["*"], vec![dripping, named.clone()])],
            );
            new_opts["typed_config"]["access_log"] = stdout(HTTP_LOG);
            new_opts["typed_config"]["access_log_options"] = json!({
                "access_log_flush_interval": "1s",
                "flush_access_log_on_new_request": true,
            });
            let mut old_opts = hcm("old", vec![vhost("all", &["*"], vec![named])]);
            old_opts["typed_config"]["access_log"] = stdout(HTTP_LOG);
            old_opts["typed_config"]["access_log_flush_interval"] = json!("1s");
            let mut tcp = tcp_proxy("tcp", "tcp_up");
            tcp["typed_config"]["access_log"] = stdout(TCP_LOG);
            tcp["typed_config"]["access_log_options"] = json!({
                "access_log_flush_interval": "1s",
                "flush_access_log_on_connected": true,
            });
            // A CONNECT tunnel to the TCP upstream.
            let tunnel_port = free_port();
            let mut tunnel = hcm(
                "tunnel",
                vec![vhost(
                    "all",
                    &["*"],
                    vec![json!({ "match": { "connect_matcher": {} },
                        "route": { "cluster": "tcp_up", "upgrade_configs": [
                            { "upgrade_type": "CONNECT", "connect_config": {} } ] } })],
                )],
            );
            tunnel["typed_config"]["access_log"] = stdout(HTTP_LOG);
            tunnel["typed_config"]["upgrade_configs"] = json!([{ "upgrade_type": "CONNECT" }]);
            tunnel["typed_config"]["access_log_options"] = json!({
                "flush_log_on_tunnel_successfully_established": true,
            });
            let v = bootstrap(
                free_port(),
                vec![
                    listener("tunnel", "127.0.0.1", tunnel_port, tunnel),
                    listener("new", "127.0.0.1", new_port, new_opts),
                    listener("old", "127.0.0.1", old_port, old_opts),
                    listener("tcp", "127.0.0.1", tcp_port, tcp),
                ],
                vec![
                    cluster("up", &[up.port()]),
                    cluster("tcp_up", &[tcp_up.port()]),
                    cluster("drip", &[drip]),
                ],
            );
            let p = ProxyProcess::start(kind, &to_yaml(&v), &["--concurrency", "1"]).await;
            // A response whose body takes 2.4 s: periodic lines while it flows.
            let url = format!("http://127.0.0.1:{new_port}/drip");
            let r = curl(&["-s", "-H", "x-case: drip", &url]).await;
            assert_eq!(r.resp.status, 200);
            p.wait_stdout_line(Duration::from_secs(5), |l| {
                l.starts_with("DownstreamEnd drip ")
            })
            .await;
            for (case, port) in [("new", new_port), ("old", old_port)] {
                let url = format!("http://127.0.0.1:{port}/slow?sleep=2500");
                let r = curl(&["-s", "-H", &format!("x-case: {case}"), &url]).await;
                assert_eq!(r.resp.status, 200);
                p.wait_stdout_line(Duration::from_secs(5), |l| {
                    l.starts_with(&format!("DownstreamEnd {case} "))
                })
                .await;
            }
            let mut t = tokio::net::TcpStream::connect(("127.0.0.1", tunnel_port))
                .await
                .expect("connect");
            t.write_all(
                b"CONNECT a.test:443 HTTP/1.1\r\nhost: a.test:443\r\nx-case: tunnel\r\n\r\n",
            )
            .await
            .expect("write");
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                if t.read(&mut b).await.expect("read") == 0 {
                    break;
                }
                head.push(b[0]);
            }
            t.write_all(b"hi").await.expect("write");
            let mut two = [0u8; 2];
            t.read_exact(&mut two).await.expect("echo");
            drop(t);
            p.wait_stdout_line(Duration::from_secs(5), |l| {
                l.starts_with("DownstreamEnd tunnel ")
            })
            .await;
            // A connection held 2.5 s, with a few bytes both ways.
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", tcp_port))
                .await
                .expect("connect");
            s.write_all(b"hello").await.expect("write");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.expect("echo");
            tokio::time::sleep(Duration::from_millis(2500)).await;
            drop(s);
            p.wait_stdout_line(Duration::from_secs(5), |l| {
                l.starts_with("TcpConnectionEnd ")
            })
            .await;
            let ports = [up.port(), tcp_up.port(), drip];
            let lines: Vec<String> = p
                .stdout()
                .lines()
                .filter(|l| l.starts_with("Downstream") || l.starts_with("Tcp"))
                .map(|l| normalized(l, &ports))
                // How a terminated CONNECT's end is told differs (tests/DIFFERENCES.md).
                .map(|l| match l.strip_prefix("DownstreamEnd tunnel ") {
                    Some(rest) => format!(
                        "DownstreamEnd tunnel {}",
                        rest.split(' ')
                            .filter(|w| !w.starts_with("flags=") && !w.starts_with("rcd="))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    None => l,
                })
                .collect();
            seen.push(lines);
        }
        eprintln!(
            "Envoy:\n{}\nskiff:\n{}",
            seen[0].join("\n"),
            seen[1].join("\n")
        );
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
    })
    .await
}

#[tokio::test]
async fn refused_as_envoy_refuses() {
    run_for(Duration::from_secs(60), async {
        let cases = [
            (
                json!({ "access_log_options": { "access_log_flush_interval": "0.0005s" } }),
                "value must be greater than or equal to 1ms",
            ),
            (
                json!({ "access_log_flush_interval": "1s", "access_log_options": {} }),
                "Only one of access_log_flush_interval or access_log_options can be specified.",
            ),
            (
                json!({ "flush_access_log_on_new_request": true, "access_log_options": {} }),
                "Only one of flush_access_log_on_new_request or access_log_options can be specified.",
            ),
        ];
        for kind in [Kind::Envoy, Kind::under_test()] {
            for (extra, needle) in &cases {
                let mut h = hcm("x", vec![vhost("all", &["*"], vec![route("/", "up")])]);
                for (k, v) in extra.as_object().expect("object") {
                    h["typed_config"][k] = v.clone();
                }
                let v = bootstrap(
                    free_port(),
                    vec![listener("l", "127.0.0.1", free_port(), h)],
                    vec![cluster("up", &[free_port()])],
                );
                let cfg = write_config("validate", &to_yaml(&v));
                let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
                assert!(
                    out.code != Some(0) && out.output().contains(needle),
                    "{kind:?} {extra}: {}",
                    out.output()
                );
            }
        }
    })
    .await
}
