//! envoy.filters.listener.tls_inspector: ClientHellos from openssl and hand-split ones (several
//! records, several writes) are seen with their SNI and ALPN and passed on untouched; plaintext is
//! `raw_buffer`; an over-long hello is refused; the stats as Envoy. Runs against skiff (or Envoy
//! with `SKIFF_TESTS_PROXY=envoy`).

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::config::{bootstrap, cluster, listener, tcp_proxy, to_yaml};
use skiff_tests::proxy::{start_under_test, ProxyProcess};
use skiff_tests::upstream::{TcpMode, TcpUpstream};
use skiff_tests::{free_port, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
/// A ClientHello from `openssl s_client -servername a.example.com -alpn h2,http/1.1`.
const HELLO: &[u8] =
    include_bytes!("../../proxy/src/listener/filters/tls_inspector/testdata/openssl_sni_alpn.bin");

async fn setup(inspector: Value) -> (ProxyProcess, u16, TcpUpstream) {
    let up = TcpUpstream::start(TcpMode::Echo).await;
    let (admin, port) = (free_port(), free_port());
    let mut l = listener("tls", "127.0.0.1", port, tcp_proxy("tls_tcp", "svc"));
    let mut cfg = inspector;
    cfg["@type"] = json!(TLS_INSPECTOR);
    l["listener_filters"] =
        json!([{ "name": "envoy.filters.listener.tls_inspector", "typed_config": cfg }]);
    let v = bootstrap(admin, vec![l], vec![cluster("svc", &[up.port()])]);
    (start_under_test(&to_yaml(&v), &[]).await, port, up)
}

/// The openssl hello with a padding extension of `pad` bytes, in one record.
fn padded_hello(pad: usize) -> Vec<u8> {
    let mut body = HELLO[9..].to_vec();
    // The extensions length follows version, random, session id, suites and compression.
    let ext_len_at = {
        let sid = usize::from(body[34]);
        let suites = usize::from(u16::from_be_bytes([body[35 + sid], body[36 + sid]]));
        let comp = usize::from(body[37 + sid + suites]);
        38 + sid + suites + comp
    };
    let ext_len = usize::from(u16::from_be_bytes([body[ext_len_at], body[ext_len_at + 1]]));
    body.extend_from_slice(&[0, 21]);
    body.extend_from_slice(&(pad as u16).to_be_bytes());
    body.extend_from_slice(&vec![0; pad]);
    let new_ext = (ext_len + 4 + pad) as u16;
    body[ext_len_at..ext_len_at + 2].copy_from_slice(&new_ext.to_be_bytes());
    let mut one = vec![22, 3, 1, 0, 0, 1];
    one.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    one.extend_from_slice(&body);
    let rec_len = (one.len() - 5) as u16;
    one[3..5].copy_from_slice(&rec_len.to_be_bytes());
    one
}

/// The handshake message of a one-record hello, re-split into records of `fragment` bytes.
fn resplit(hello: &[u8], fragment: usize) -> Vec<u8> {
    let len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
    let msg = &hello[5..5 + len];
    let mut out = Vec::new();
    for chunk in msg.chunks(fragment) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

async fn stat_is(p: &ProxyProcess, name: &str, want: u64) {
    p.admin()
        .wait_stat(
            &format!("tls_inspector.{name}"),
            Duration::from_secs(5),
            |v| v == want,
        )
        .await;
}

#[tokio::test]
async fn openssl_client_hello_is_seen_and_passed_on() {
    run(async {
        let (p, port, up) = setup(json!({})).await;
        let out = tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "A.Example.com", "-alpn", "h2,http/1.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("openssl s_client");
        // The echo sends the hello back; openssl gives up on it, which ends the connection.
        let _ = tokio::time::timeout(Duration::from_secs(10), out.wait_with_output()).await;
        let rec = up.wait_finished(1, Duration::from_secs(5)).await;
        assert_eq!(
            rec[0].received.first(),
            Some(&22),
            "the hello reached the upstream"
        );
        for (name, want) in [
            ("tls_found", 1),
            ("sni_found", 1),
            ("alpn_found", 1),
            ("tls_not_found", 0),
            ("sni_not_found", 0),
        ] {
            stat_is(&p, name, want).await;
        }
    })
    .await
}

#[tokio::test]
async fn hello_split_across_records_and_writes() {
    run(async {
        let (p, port, up) = setup(json!({})).await;
        let wire = resplit(HELLO, 40);
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        for chunk in wire.chunks(33) {
            s.write_all(chunk).await.expect("write");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut back = vec![0u8; wire.len()];
        s.read_exact(&mut back).await.expect("echo");
        assert_eq!(back, wire, "every byte passed on, none taken");
        drop(s);
        up.wait_finished(1, Duration::from_secs(5)).await;
        stat_is(&p, "tls_found", 1).await;
        stat_is(&p, "sni_found", 1).await;
        stat_is(&p, "alpn_found", 1).await;
    })
    .await
}

#[tokio::test]
async fn hello_of_several_kilobytes_is_read_whole() {
    run(async {
        let (p, port, up) = setup(json!({})).await;
        let wire = resplit(&padded_hello(9000), 4000);
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(&wire).await.expect("write");
        let mut back = vec![0u8; wire.len()];
        s.read_exact(&mut back).await.expect("echo");
        assert!(back == wire);
        drop(s);
        up.wait_finished(1, Duration::from_secs(5)).await;
        stat_is(&p, "tls_found", 1).await;
        stat_is(&p, "sni_found", 1).await;
    })
    .await
}

#[tokio::test]
async fn plaintext_is_raw_buffer() {
    run(async {
        let (p, port, up) = setup(json!({})).await;
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let mut back = [0u8; 18];
        s.read_exact(&mut back).await.expect("echo");
        assert_eq!(&back, b"GET / HTTP/1.1\r\n\r\n");
        drop(s);
        up.wait_finished(1, Duration::from_secs(5)).await;
        stat_is(&p, "tls_not_found", 1).await;
        stat_is(&p, "tls_found", 0).await;
    })
    .await
}

#[tokio::test]
async fn hello_larger_than_max_client_hello_size_is_refused() {
    run(async {
        let (p, port, up) = setup(json!({ "max_client_hello_size": 1024 })).await;
        // 1 KiB of padding in the hello, in 50-byte records: more than 1 KiB on the wire.
        let one = padded_hello(1024);
        let wire = resplit(&one, 50);
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(&wire).await.expect("write");
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(r, Ok(0) | Err(_)), "closed: {r:?}");
        stat_is(&p, "client_hello_too_large", 1).await;
        assert_eq!(up.accepted(), 0);
    })
    .await
}

/// Starts `openssl s_server -www` on a free port with a fresh self-signed certificate for
/// `*.example.com`; returns the port and the process.
async fn tls_upstream(dir: &std::path::Path) -> (u16, tokio::process::Child) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() {
        let status = tokio::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=a.example.com"])
            .args([
                "-addext",
                "subjectAltName=DNS:a.example.com,DNS:*.example.com",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .expect("openssl req");
        assert!(status.success(), "certificate generation failed");
    }
    let port = free_port();
    let child = tokio::process::Command::new("openssl")
        .args(["s_server", "-www", "-quiet", "-accept", &port.to_string()])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_server");
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return (port, child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("openssl s_server did not listen on {port}");
}

/// envoy-sni.yaml's shape: TLS passes through untouched to the upstream of the chain its SNI
/// selects (exact name before the wildcard), so curl completes its handshake with the upstream.
#[tokio::test]
async fn sni_selects_the_chain_and_tls_passes_through() {
    run(async {
        let dir = skiff_tests::scratch_dir("tls-upstream");
        let (a_port, mut a) = tls_upstream(&dir).await;
        let (wild_port, mut wild) = tls_upstream(&dir).await;
        let plain = TcpUpstream::start(TcpMode::Echo).await;
        let (admin, port) = (free_port(), free_port());
        let chain = |m: Value, name: &str| json!({ "filter_chain_match": m, "filters": [tcp_proxy(name, name)] });
        let l = json!({
            "name": "sni",
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
            "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector",
                "typed_config": { "@type": TLS_INSPECTOR } }],
            "filter_chains": [
                chain(json!({ "server_names": ["a.example.com"] }), "chain_a"),
                chain(json!({ "server_names": ["*.example.com"] }), "chain_wild"),
                chain(json!({ "transport_protocol": "raw_buffer" }), "chain_plain"),
            ]
        });
        let v = bootstrap(
            admin,
            vec![l],
            vec![
                cluster("chain_a", &[a_port]),
                cluster("chain_wild", &[wild_port]),
                cluster("chain_plain", &[plain.port()]),
            ],
        );
        let p = start_under_test(&to_yaml(&v), &[]).await;
        for (host, stat) in [("a.example.com", "chain_a"), ("b.example.com", "chain_wild")] {
            let resolve = format!("{host}:{port}:127.0.0.1");
            let out = tokio::process::Command::new("curl")
                .args(["-sk", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["--resolve", &resolve, &format!("https://{host}:{port}/")])
                .output()
                .await
                .expect("curl");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{host}");
            p.admin()
                .wait_stat(
                    &format!("tcp.{stat}.downstream_cx_total"),
                    Duration::from_secs(5),
                    |v| v == 1,
                )
                .await;
        }
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"plain\r\n").await.expect("write");
        let mut back = [0u8; 7];
        s.read_exact(&mut back).await.expect("echo");
        assert_eq!(&back, b"plain\r\n");
        stat_is(&p, "sni_found", 2).await;
        stat_is(&p, "tls_not_found", 1).await;
        let _ = a.kill().await;
        let _ = wild.kill().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
}
