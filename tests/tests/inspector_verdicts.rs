//! tls_inspector and http_inspector side by side with Envoy 1.40: the same first bytes — request
//! lines of every shape the inspector decides on, ClientHellos well formed and not — move the same
//! `tls_inspector.*` and `http_inspector.*` stats, and the connections end the same way.

use std::time::Duration;

use serde_json::json;
use skiff_tests::config::{bootstrap, cluster, listener, tcp_proxy, to_yaml};
use skiff_tests::proxy::ProxyProcess;
use skiff_tests::upstream::{TcpMode, TcpUpstream};
use skiff_tests::{free_port, run_for, Envoy, Skiff};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn outcome(port: u16, bytes: &[u8]) -> (usize, &'static str) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut back = 0;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(700), s.read(&mut buf)).await {
            Ok(Ok(0)) => return (back, "closed"),
            Ok(Ok(n)) => back += n,
            Ok(Err(_)) => return (back, "reset"),
            Err(_) => return (back, "open"),
        }
    }
}

async fn inspector_stats(p: &ProxyProcess, port: u16) -> String {
    let stats = p.admin().stats().await;
    let listener = format!("listener.127.0.0.1_{port}.");
    let mut out: Vec<String> = stats
        .iter()
        .filter(|(k, v)| {
            (k.starts_with("tls_inspector.")
                || k.starts_with("http_inspector.")
                || k.starts_with(&format!("{listener}downstream_pre_cx_timeout"))
                || k.starts_with(&format!("{listener}downstream_listener_filter")))
                && v.trim().parse::<u64>().is_ok_and(|n| n != 0)
        })
        .map(|(k, v)| format!("{}={}", k.replace(&port.to_string(), "PORT"), v.trim()))
        .collect();
    out.sort();
    out.join(" ")
}

/// A ClientHello record: `version`, then `extensions` as (type, data).
fn hello(version: u16, extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 4, 0xc0, 0x2f, 0x00, 0x9c, 1, 0]);
    let mut ext = Vec::new();
    for (t, d) in extensions {
        ext.extend_from_slice(&t.to_be_bytes());
        ext.extend_from_slice(&(d.len() as u16).to_be_bytes());
        ext.extend_from_slice(d);
    }
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    rec.extend_from_slice(&msg);
    rec
}

fn sni(name: &[u8]) -> Vec<u8> {
    let mut d = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    d.push(0);
    d.extend_from_slice(&(name.len() as u16).to_be_bytes());
    d.extend_from_slice(name);
    d
}

#[tokio::test]
async fn inspector_verdicts_match_envoy() {
    run_for(Duration::from_secs(240), async {
        let alpn = vec![0, 6, 2, b'h', b'2', 2, b'h', b'3'];
        let cases: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            b"GET / HTTP/1.2\r\n\r\n".to_vec(),
            b"GET /\r\n".to_vec(),
            b"FOO  /x HTTP/1.1 \r\n\r\n".to_vec(),
            b"GET / http/1.1\r\n".to_vec(),
            b"GET / HTTP/11.1\r\n".to_vec(),
            b"G\r\n".to_vec(),
            b"GET /a b HTTP/1.1\r\n".to_vec(),
            b"\x01\x02\x03".to_vec(),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            b"PRI * HTTP/2.0\r\n".to_vec(),
            b"GET / HTTP/1.1".to_vec(),
            hello(0x0303, &[(0, sni(b"a.example.com")), (16, alpn.clone())]),
            hello(0x0303, &[(0, sni(b"A.EXAMPLE.com"))]),
            hello(0x0303, &[]),
            hello(0x0301, &[(16, vec![0, 0])]),
            hello(0x0300, &[(0, sni(b"a"))]),
            hello(0x0303, &[(43, vec![2, 3, 4]), (0, sni(b"a"))]),
            hello(0x0303, &[(43, vec![2, 3, 0])]),
            hello(0x0303, &[(0, sni(b""))]),
            hello(0x0303, &[(0, vec![0, 4, 1, 0, 1, b'a'])]),
            hello(0x0303, &[(0, sni(b"a\0b"))]),
            hello(0x0303, &[(5, vec![]), (5, vec![])]),
            hello(0x0303, &[(16, alpn.clone()), (0, sni(b"late.example.com"))]),
            hello(0x0300, &[]),
            hello(0x0400, &[(0, sni(b"a"))]),
            hello(0x0300, &[(43, vec![2, 3, 4]), (0, sni(b"a"))]),
            hello(0x0303, &[(43, vec![0]), (0, sni(b"a"))]),
            hello(0x0303, &[(0xff01, vec![1, 0]), (10, vec![0, 3, 0, 0x17, 0])]),
            hello(0x0303, &[(23, vec![0]), (16, vec![0, 3, 3, b'h', b'2'])]),
            {
                let mut h = hello(0x0303, &[]);
                h[43] = 33; // session id length past the 32 bytes allowed
                h
            },
            {
                let mut h = hello(0x0303, &[(0, sni(b"a"))]);
                h[0] = 23;
                h
            },
            vec![22, 3, 1, 0x40, 0x01, 1],
            vec![22, 3, 1, 0x41, 0x41, 1],
            vec![22, 3, 1, 0, 4, 1, 0, 0x40, 0x01],
            vec![22, 3, 1],
        ];
        let up = TcpUpstream::start(TcpMode::Echo).await;
        let build = |admin: u16, port: u16| {
            let mut tcp = tcp_proxy("insp", "svc");
            tcp["typed_config"]["idle_timeout"] = json!("5s");
            let mut l = listener("insp", "127.0.0.1", port, tcp);
            l["listener_filters_timeout"] = json!("0.3s");
            l["listener_filters"] = json!([
                { "name": "envoy.filters.listener.tls_inspector", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } },
                { "name": "envoy.filters.listener.http_inspector", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector" } }
            ]);
            to_yaml(&bootstrap(admin, vec![l], vec![cluster("svc", &[up.port()])]))
        };
        let (ea, ep, sa, sp) = (free_port(), free_port(), free_port(), free_port());
        let envoy = Envoy::start(&build(ea, ep), &[]).await;
        let skiff = Skiff::start(&build(sa, sp), &[]).await;
        let mut differ = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let (e, s) = tokio::join!(outcome(ep, case), outcome(sp, case));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (es, ss) = (
                inspector_stats(&envoy, ep).await,
                inspector_stats(&skiff, sp).await,
            );
            if e != s || es != ss {
                let show = String::from_utf8_lossy(case).escape_debug().to_string();
                differ.push(format!(
                    "case {i} {show}\n  envoy: {e:?} {es}\n  skiff: {s:?} {ss}"
                ));
            }
        }
        assert!(differ.is_empty(), "{}", differ.join("\n"));
    })
    .await
}
