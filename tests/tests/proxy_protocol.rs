//! envoy.filters.listener.proxy_protocol and the listener filter timeout: the PROXY header's
//! source becomes the downstream remote address, only the header's bytes are taken, malformed or
//! missing headers close the connection with Envoy's stats. Runs against skiff (or Envoy with
//! `SKIFF_TESTS_PROXY=envoy`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_tests::client::read_until_close;
use skiff_tests::config::{bootstrap, cluster, listener, tcp_proxy, to_yaml};
use skiff_tests::proxy::{start_under_test, ProxyProcess};
use skiff_tests::upstream::{TcpMode, TcpUpstream};
use skiff_tests::{free_port, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PP_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";

/// `PP <remote> <local>` for every tcp_proxy connection, on stdout.
fn addr_log() -> Value {
    json!({
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": { "text_format_source": {
                "inline_string": "PP %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS%\n" } }
        }
    })
}

/// A tcp_proxy listener to an echo upstream with the proxy_protocol filter configured by `pp`.
async fn setup(pp: Value, edit: impl FnOnce(&mut Value)) -> (ProxyProcess, u16, TcpUpstream) {
    let up = TcpUpstream::start(TcpMode::Echo).await;
    let (admin, port) = (free_port(), free_port());
    let mut tcp = tcp_proxy("pp_tcp", "svc");
    tcp["typed_config"]["access_log"] = json!([addr_log()]);
    let mut l = listener("pp", "127.0.0.1", port, tcp);
    let mut pp = pp;
    pp["@type"] = json!(PP_TYPE);
    l["listener_filters"] =
        json!([{ "name": "envoy.filters.listener.proxy_protocol", "typed_config": pp }]);
    let mut v = bootstrap(admin, vec![l], vec![cluster("svc", &[up.port()])]);
    edit(&mut v);
    (start_under_test(&to_yaml(&v), &[]).await, port, up)
}

/// Sends `bytes` then `payload`, reads the echo of `payload` (if the connection stays up), then
/// half-closes and reads until the proxy closes. Returns what came back and whether the close was
/// a reset. (Envoy closes a socket whose peer half-closes while listener filters still run, so
/// the client half-closes only after the echo.)
async fn exchange(port: u16, bytes: &[u8], payload: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(bytes).await.expect("write header");
    if !payload.is_empty() {
        // The proxy may already have refused the header and reset the socket.
        if let Err(e) = s.write_all(payload).await {
            use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
            assert!(
                matches!(e.kind(), ConnectionReset | BrokenPipe),
                "write payload: {e}"
            );
            return (Vec::new(), true);
        }
    }
    let mut back = Vec::new();
    let mut buf = [0u8; 4096];
    let mut shut = payload.is_empty();
    loop {
        if !shut && back.len() >= payload.len() {
            let _ = s.shutdown().await;
            shut = true;
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) => return (back, false),
            Ok(Ok(n)) => back.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (back, e.kind() == std::io::ErrorKind::ConnectionReset),
            Err(_) if !shut => {
                let _ = s.shutdown().await;
                shut = true;
            }
            Err(_) => panic!("the proxy neither answered nor closed"),
        }
    }
}

fn v2_inet(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, tlvs: &[u8]) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.extend_from_slice(&[0x21, 0x11]);
    b.extend_from_slice(&((12 + tlvs.len()) as u16).to_be_bytes());
    b.extend_from_slice(&src);
    b.extend_from_slice(&dst);
    b.extend_from_slice(&sp.to_be_bytes());
    b.extend_from_slice(&dp.to_be_bytes());
    b.extend_from_slice(tlvs);
    b
}

#[tokio::test]
async fn v1_source_becomes_the_downstream_remote_address() {
    run(async {
        let (p, port, up) = setup(json!({}), |_| {}).await;
        let header = format!("PROXY TCP4 10.1.2.3 192.0.2.7 5555 {port}\r\n");
        let (back, reset) = exchange(port, header.as_bytes(), b"hello").await;
        assert_eq!((back.as_slice(), reset), (&b"hello"[..], false));
        let rec = up.wait_finished(1, Duration::from_secs(5)).await;
        assert_eq!(rec[0].received, b"hello", "the header is not forwarded");
        let line = p
            .wait_stdout_line(Duration::from_secs(15), |l| l.starts_with("PP "))
            .await;
        assert_eq!(
            line.trim_end(),
            format!("PP 10.1.2.3:5555 192.0.2.7:{port}")
        );
        let admin = p.admin();
        admin
            .wait_stat(
                "proxy_proto.versions.v1.found",
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
        assert_eq!(admin.counter("downstream_cx_proxy_proto_error").await, 0);
    })
    .await
}

#[tokio::test]
async fn v2_with_tlvs_and_header_split_across_writes() {
    run(async {
        let (p, port, up) = setup(json!({ "stat_prefix": "in" }), |_| {}).await;
        let header = v2_inet(
            [10, 9, 8, 7],
            [127, 0, 0, 1],
            4000,
            port,
            &[0x01, 0, 2, b'h', b'2'],
        );
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        for chunk in header.chunks(7) {
            s.write_all(chunk).await.expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s.write_all(b"payload").await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"payload");
        let rec = up.wait_finished(1, Duration::from_secs(5)).await;
        assert_eq!(rec[0].received, b"payload");
        let line = p
            .wait_stdout_line(Duration::from_secs(15), |l| l.starts_with("PP "))
            .await;
        assert_eq!(
            line.trim_end(),
            format!("PP 10.9.8.7:4000 127.0.0.1:{port}")
        );
        p.admin()
            .wait_stat(
                "proxy_proto.in.versions.v2.found",
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
    })
    .await
}

#[tokio::test]
async fn malformed_and_missing_headers_reset_with_envoys_stats() {
    run(async {
        let (p, port, up) = setup(json!({}), |_| {}).await;
        let (back, reset) = exchange(port, b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n", b"x").await;
        assert!(back.is_empty() && reset, "malformed v1: reset");
        let (back, reset) = exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"").await;
        assert!(back.is_empty() && reset, "no header: reset");
        let mut bad_v2 = v2_inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2, &[]);
        bad_v2[12] = 0x11; // version 1 in a binary header
        let (back, reset) = exchange(port, &bad_v2, b"").await;
        assert!(back.is_empty() && reset, "bad v2: reset");
        let admin = p.admin();
        admin
            .wait_stat(
                "downstream_cx_proxy_proto_error",
                Duration::from_secs(5),
                |v| v == 3,
            )
            .await;
        assert_eq!(admin.counter("proxy_proto.versions.v1.error").await, 1);
        assert_eq!(admin.counter("proxy_proto.versions.v2.error").await, 1);
        assert_eq!(admin.counter("proxy_proto.not_found_disallowed").await, 1);
        assert_eq!(
            admin
                .counter(&format!("listener.127.0.0.1_{port}.downstream_cx_total"))
                .await,
            0,
            "connections closed by a listener filter are not counted"
        );
        assert_eq!(up.accepted(), 0);
    })
    .await
}

#[tokio::test]
async fn allowed_without_header_and_disallowed_version() {
    run(async {
        let (p, port, _up) = setup(
            json!({ "allow_requests_without_proxy_protocol": true, "disallowed_versions": ["V1"] }),
            |_| {},
        )
        .await;
        let (back, _) = exchange(port, b"", b"plain bytes").await;
        assert_eq!(back, b"plain bytes");
        // With v1 disallowed, a v1 line is not a header at all: it passes as payload.
        let line = b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\r\n";
        let (back, _) = exchange(port, b"", line).await;
        assert_eq!(back, line);
        let admin = p.admin();
        admin
            .wait_stat(
                "proxy_proto.not_found_allowed",
                Duration::from_secs(5),
                |v| v == 2,
            )
            .await;
        assert_eq!(admin.counter("proxy_proto.versions.v1.found").await, 0);
        assert_eq!(admin.counter("downstream_cx_proxy_proto_error").await, 0);
    })
    .await
}

#[tokio::test]
async fn listener_filters_timeout_closes_a_stalled_socket() {
    run(async {
        let (p, port, up) = setup(json!({}), |v| {
            v["static_resources"]["listeners"][0]["listener_filters_timeout"] = json!("1s");
        })
        .await;
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"PROXY TCP4").await.expect("write");
        let started = Instant::now();
        let reply = read_until_close(&mut s, Duration::from_secs(5)).await;
        let took = started.elapsed();
        assert!(reply.closed && reply.data.is_empty());
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "closed after {took:?}"
        );
        let admin = p.admin();
        admin
            .wait_stat(
                &format!("listener.127.0.0.1_{port}.downstream_pre_cx_timeout"),
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
        assert_eq!(up.accepted(), 0);
    })
    .await
}

#[tokio::test]
async fn continue_on_listener_filters_timeout_passes_the_socket_on() {
    run(async {
        let (p, port, up) = setup(json!({}), |v| {
            let l = &mut v["static_resources"]["listeners"][0];
            l["listener_filters_timeout"] = json!("0.5s");
            l["continue_on_listener_filters_timeout"] = json!(true);
        })
        .await;
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        // Nothing sent: after the timeout the connection reaches tcp_proxy unchanged.
        tokio::time::sleep(Duration::from_millis(800)).await;
        s.write_all(b"late").await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"late");
        let rec = up.wait_finished(1, Duration::from_secs(5)).await;
        assert_eq!(rec[0].received, b"late");
        p.admin()
            .wait_stat(
                &format!("listener.127.0.0.1_{port}.downstream_pre_cx_timeout"),
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
    })
    .await
}

#[tokio::test]
async fn peer_closing_during_the_header_is_counted() {
    run(async {
        let (p, port, up) = setup(json!({}), |_| {}).await;
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"PROXY TCP4 1.2.3.4").await.expect("write");
        s.shutdown().await.expect("half-close");
        let reply = read_until_close(&mut s, Duration::from_secs(5)).await;
        assert!(reply.closed && reply.data.is_empty());
        drop(
            TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
        p.admin()
            .wait_stat(
                &format!("listener.127.0.0.1_{port}.downstream_listener_filter_remote_close"),
                Duration::from_secs(5),
                |v| v == 2,
            )
            .await;
        assert_eq!(
            p.admin().counter("downstream_cx_proxy_proto_error").await,
            0
        );
        assert_eq!(up.accepted(), 0);
    })
    .await
}

#[tokio::test]
async fn rules_are_refused_with_their_path() {
    run(async {
        let (admin, port) = (free_port(), free_port());
        let mut l = listener("pp", "127.0.0.1", port, tcp_proxy("t", "svc"));
        l["listener_filters"] = json!([{ "name": "envoy.filters.listener.proxy_protocol",
            "typed_config": { "@type": PP_TYPE, "rules": [ { "tlv_type": 1, "on_tlv_present": { "key": "k" } } ] } }]);
        let v = bootstrap(admin, vec![l], vec![cluster("svc", &[1])]);
        let cfg = skiff_tests::proxy::write_config("pp-rules", &to_yaml(&v));
        let out = skiff_tests::proxy::run_cli(
            skiff_tests::Kind::Skiff,
            &["--mode", "validate", "-c", cfg.path()],
        )
        .await;
        assert!(
            out.output().contains(
                "static_resources.listeners[0].listener_filters[0].typed_config.rules: unsupported"
            ),
            "{}",
            out.output()
        );
    })
    .await
}

/// What one connection saw: the bytes echoed back, and how it ended.
async fn outcome(port: u16, bytes: &[u8]) -> (Vec<u8>, &'static str) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut back = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(700), s.read(&mut buf)).await {
            Ok(Ok(0)) => return (back, "closed"),
            Ok(Ok(n)) => back.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (back, "reset"),
            Err(_) => return (back, "open"),
        }
    }
}

/// The proxy_proto stats and the listener's filter stats, as one line.
async fn pp_stats(p: &ProxyProcess, port: u16) -> String {
    let stats = p.admin().stats().await;
    let mut out: Vec<String> = stats
        .iter()
        .filter(|(k, v)| {
            (k.starts_with("proxy_proto.")
                || k.as_str() == "downstream_cx_proxy_proto_error"
                || k.starts_with(&format!(
                    "listener.127.0.0.1_{port}.downstream_pre_cx_timeout"
                ))
                || k.starts_with(&format!(
                    "listener.127.0.0.1_{port}.downstream_listener_filter"
                )))
                && v.trim() != "0"
        })
        .map(|(k, v)| format!("{}={}", k.replace(&port.to_string(), "PORT"), v.trim()))
        .collect();
    out.sort();
    out.join(" ")
}

/// The same headers, well formed or not, through Envoy 1.40 and skiff: the same bytes reach the
/// echo upstream, the connection ends the same way, the same stats move.
#[tokio::test]
async fn verdicts_match_envoy() {
    skiff_tests::run_for(Duration::from_secs(240), async {
        let v2 = |ver_cmd: u8, fam: u8, addr: &[u8], tlvs: &[u8]| {
            let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            b.extend_from_slice(&[ver_cmd, fam]);
            b.extend_from_slice(&((addr.len() + tlvs.len()) as u16).to_be_bytes());
            b.extend_from_slice(addr);
            b.extend_from_slice(tlvs);
            b.extend_from_slice(b"x\r\n");
            b
        };
        let inet = [10, 1, 2, 3, 127, 0, 0, 1, 0x15, 0xb3, 0, 80];
        let cases: Vec<Vec<u8>> = vec![
            b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 80\r\nx\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 ::1 1 2\r\nx\r\n".to_vec(),
            b"PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\nx\r\n".to_vec(),
            b"PROXY UNKNOWN\r\nx\r\n".to_vec(),
            b"PROXY UNKNOWN whatever\r\nx\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2 \r\nx\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\nx\r\n".to_vec(),
            b"PROXY garbage\r\n".to_vec(),
            b"GARBAGE\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n".to_vec(),
            b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n".to_vec(),
            b"PROXY TCP4 0.0.0.0 1.2.3.4 1 2\r\n".to_vec(),
            b"PROXY TCP4 224.0.0.1 1.2.3.4 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n".to_vec(),
            [
                b"PROXY UNKNOWN ".to_vec(),
                vec![b'a'; 100],
                b"\r\n".to_vec(),
            ]
            .concat(),
            [b"PROXY UNKNOWN ".to_vec(), vec![b'a'; 200]].concat(),
            b"\r\n\r\n".to_vec(),
            v2(0x21, 0x11, &inet, &[]),
            v2(0x21, 0x11, &inet, &[1, 0, 2, b'h', b'2', 0xe0, 0, 0]),
            v2(0x21, 0x12, &inet, &[]),
            v2(0x20, 0x00, &[], &[]),
            v2(0x20, 0x11, &inet, &[0xff]),
            v2(0x11, 0x11, &inet, &[]),
            v2(0x21, 0x00, &[], &[]),
            v2(0x21, 0x31, &[0; 216], &[]),
            v2(0x22, 0x11, &inet, &[]),
            v2(0x21, 0x10, &inet, &[]),
            v2(0x21, 0x11, &inet[..8], &[]),
            v2(0x21, 0x11, &inet, &[1]),
            v2(0x21, 0x11, &inet, &[1, 0, 2, b'x']),
            v2(0x21, 0x11, &[0, 0, 0, 0, 127, 0, 0, 1, 0, 1, 0, 2], &[]),
        ];
        let up = TcpUpstream::start(TcpMode::Echo).await;
        let build = |admin: u16, port: u16| {
            let mut tcp = tcp_proxy("pp_tcp", "svc");
            tcp["typed_config"]["idle_timeout"] = json!("5s");
            let mut l = listener("pp", "127.0.0.1", port, tcp);
            l["listener_filters_timeout"] = json!("0.3s");
            l["listener_filters"] = json!([{ "name": "envoy.filters.listener.proxy_protocol",
                "typed_config": { "@type": PP_TYPE } }]);
            to_yaml(&bootstrap(
                admin,
                vec![l],
                vec![cluster("svc", &[up.port()])],
            ))
        };
        let (ea, ep, sa, sp) = (free_port(), free_port(), free_port(), free_port());
        let envoy = skiff_tests::Envoy::start(&build(ea, ep), &[]).await;
        let skiff = skiff_tests::Skiff::start(&build(sa, sp), &[]).await;
        let mut differ = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let (e, s) = tokio::join!(outcome(ep, case), outcome(sp, case));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (es, ss) = (pp_stats(&envoy, ep).await, pp_stats(&skiff, sp).await);
            let show = String::from_utf8_lossy(case).escape_debug().to_string();
            if e != s || es != ss {
                differ.push(format!(
                    "case {i} {show}\n  envoy: {e:?} {es}\n  skiff: {s:?} {ss}"
                ));
            }
        }
        assert!(differ.is_empty(), "{}", differ.join("\n"));
    })
    .await
}
