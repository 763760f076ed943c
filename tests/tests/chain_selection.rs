//! Filter chain selection side by side with Envoy 1.40: one listener with proxy_protocol (optional),
//! tls_inspector and http_inspector in front of many chains, each a tcp_proxy to its own upstream.
//! The same connections — TLS from openssl and curl with SNI and ALPN, hand-made ClientHellos,
//! plaintext HTTP/1.x and h2c from curl, other loopback sources, PROXY-provided sources and
//! destinations — must reach the same chain through both proxies. Also: no_filter_chain_match.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::config::{bootstrap, cluster, tcp_proxy, to_yaml};
use skiff_tests::proxy::{start_under_test, Envoy, ProxyProcess, Skiff};
use skiff_tests::{free_port, run_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// Upstreams that record, in order, the name of each one that accepted a connection.
struct Upstreams {
    ports: Vec<(String, u16)>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Upstreams {
    async fn start(names: &[&str]) -> Upstreams {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut ports = Vec::new();
        for name in names {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            ports.push((name.to_string(), l.local_addr().expect("addr").port()));
            let (log, name) = (log.clone(), name.to_string());
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(name.clone());
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        // Read what comes, then close: clients see an abrupt end.
                        let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
                            .await;
                    });
                }
            });
        }
        Upstreams { ports, log }
    }

    fn port(&self, name: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .expect("upstream")
    }

    fn len(&self) -> usize {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The upstream that accepts the next connection after `before`, if one does soon.
    async fn next_after(&self, before: usize) -> Option<String> {
        for _ in 0..60 {
            if let Some(n) = self
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(before)
            {
                return Some(n.clone());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// The chains of one of two listeners: (name, filter_chain_match). The first sorts by server
/// name and TLS; the second, where no chain names a transport protocol, by source and
/// destination (with one, every plaintext connection would stop at the `raw_buffer` entry).
fn chains(set: usize) -> Vec<(&'static str, Value)> {
    if set == 1 {
        return vec![
            ("h2c", json!({ "application_protocols": ["h2c"] })),
            (
                "alpn_http11",
                json!({ "application_protocols": ["http/1.1"] }),
            ),
            (
                "src_10",
                json!({ "source_prefix_ranges": [{ "address_prefix": "10.0.0.0", "prefix_len": 8 }] }),
            ),
            (
                "src_10_1_port",
                json!({ "source_prefix_ranges": [{ "address_prefix": "10.1.0.0", "prefix_len": 16 }], "source_ports": [4444] }),
            ),
            ("loopback", json!({ "source_type": "SAME_IP_OR_LOOPBACK" })),
            (
                "external",
                json!({ "source_type": "EXTERNAL", "source_prefix_ranges": [{ "address_prefix": "8.0.0.0", "prefix_len": 8 }] }),
            ),
            (
                "direct_127_0_0_2",
                json!({ "direct_source_prefix_ranges": [{ "address_prefix": "127.0.0.2", "prefix_len": 32 }] }),
            ),
            ("port_8443", json!({ "destination_port": 8443 })),
            (
                "dst_192_0_2",
                json!({ "prefix_ranges": [{ "address_prefix": "192.0.2.0", "prefix_len": 24 }] }),
            ),
            ("sni_exact", json!({ "server_names": ["a.example.com"] })),
        ];
    }
    vec![
        ("sni_exact", json!({ "server_names": ["a.example.com"] })),
        ("sni_wild", json!({ "server_names": ["*.example.com"] })),
        (
            "sni_wild_longer",
            json!({ "server_names": ["*.b.example.com"] }),
        ),
        (
            "sni_exact_from_10",
            json!({ "server_names": ["x.example.com"], "source_prefix_ranges": [{ "address_prefix": "10.0.0.0", "prefix_len": 8 }] }),
        ),
        (
            "tls_h2",
            json!({ "transport_protocol": "tls", "application_protocols": ["h2"] }),
        ),
        ("tls_any", json!({ "transport_protocol": "tls" })),
        (
            "raw_http11",
            json!({ "transport_protocol": "raw_buffer", "application_protocols": ["http/1.1"] }),
        ),
        ("h2c", json!({ "application_protocols": ["h2c"] })),
        (
            "src_10",
            json!({ "source_prefix_ranges": [{ "address_prefix": "10.0.0.0", "prefix_len": 8 }] }),
        ),
        (
            "src_10_1_port",
            json!({ "source_prefix_ranges": [{ "address_prefix": "10.1.0.0", "prefix_len": 16 }], "source_ports": [4444] }),
        ),
        ("loopback", json!({ "source_type": "SAME_IP_OR_LOOPBACK" })),
        (
            "direct_127_0_0_2",
            json!({ "direct_source_prefix_ranges": [{ "address_prefix": "127.0.0.2", "prefix_len": 32 }] }),
        ),
        (
            "port_8443_tls",
            json!({ "destination_port": 8443, "transport_protocol": "tls" }),
        ),
        (
            "dst_192_0_2",
            json!({ "prefix_ranges": [{ "address_prefix": "192.0.2.0", "prefix_len": 24 }] }),
        ),
    ]
}

fn config(admin: u16, port: u16, ups: &Upstreams, set: usize) -> String {
    let proxy_protocol = true;
    let mut filter_chains = Vec::new();
    let mut clusters = Vec::new();
    for (name, m) in chains(set) {
        filter_chains.push(
            json!({ "name": name, "filter_chain_match": m, "filters": [tcp_proxy(name, name)] }),
        );
        clusters.push(cluster(name, &[ups.port(name)]));
    }
    clusters.push(cluster("default", &[ups.port("default")]));
    let mut filters = vec![
        json!({ "name": "envoy.filters.listener.tls_inspector", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }),
        json!({ "name": "envoy.filters.listener.http_inspector", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector" } }),
    ];
    if proxy_protocol {
        filters.insert(0, json!({ "name": "envoy.filters.listener.proxy_protocol", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
            "allow_requests_without_proxy_protocol": true } }));
    }
    let listener = json!({
        "name": "chains",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "listener_filters": filters,
        "listener_filters_timeout": "2s",
        "filter_chains": filter_chains,
        "default_filter_chain": { "name": "default", "filters": [tcp_proxy("default", "default")] }
    });
    to_yaml(&bootstrap(admin, vec![listener], clusters))
}

/// A TLS 1.2 ClientHello with `sni` and `alpn`.
fn client_hello(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let n = name.as_bytes();
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&((n.len() + 5) as u16).to_be_bytes());
        ext.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
        ext.extend_from_slice(n);
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        ext.extend_from_slice(&[0, 16]);
        ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
        ext.extend_from_slice(&list);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 4, 0xc0, 0x2f, 0x00, 0x9c]);
    body.extend_from_slice(&[1, 0]);
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

/// One kind of connection.
#[derive(Debug, Clone)]
enum Client {
    /// `openssl s_client` with these extra arguments.
    Openssl(&'static [&'static str]),
    /// curl with these arguments before the URL; `https` picks the scheme (host a.example.com).
    Curl(&'static [&'static str], bool),
    /// Raw bytes from a source address.
    Raw(&'static str, Vec<u8>),
}

async fn connect(client: &Client, port: u16) {
    match client {
        Client::Openssl(args) => {
            let child = tokio::process::Command::new("openssl")
                .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
                .args(*args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("openssl");
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output()).await;
        }
        Client::Curl(args, https) => {
            let url = if *https {
                format!("https://a.example.com:{port}/")
            } else {
                format!("http://127.0.0.1:{port}/")
            };
            let resolve = format!("a.example.com:{port}:127.0.0.1");
            let child = tokio::process::Command::new("curl")
                .args(["-sk", "--max-time", "3", "--resolve", &resolve])
                .args(*args)
                .arg(url)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("curl");
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output()).await;
        }
        Client::Raw(from, bytes) => {
            let sock = TcpSocket::new_v4().expect("socket");
            let src: SocketAddr = format!("{from}:0").parse().expect("source");
            sock.bind(src).expect("bind source");
            let mut s = sock
                .connect(([127, 0, 0, 1], port).into())
                .await
                .expect("connect");
            s.write_all(bytes).await.expect("write");
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
        }
    }
}

fn pp(src: &str, dst: &str, sport: u16, dport: u16, rest: &[u8]) -> Vec<u8> {
    let mut b = format!("PROXY TCP4 {src} {dst} {sport} {dport}\r\n").into_bytes();
    b.extend_from_slice(rest);
    b
}

fn cases() -> Vec<(&'static str, Client)> {
    let hello = |sni, alpn: &[&str]| client_hello(sni, alpn);
    vec![
        (
            "openssl sni exact",
            Client::Openssl(&["-servername", "a.example.com", "-alpn", "h2"]),
        ),
        (
            "openssl sni wildcard",
            Client::Openssl(&["-servername", "z.example.com"]),
        ),
        (
            "openssl sni longest wildcard",
            Client::Openssl(&["-servername", "q.b.example.com"]),
        ),
        (
            "openssl sni upper case",
            Client::Openssl(&["-servername", "A.EXAMPLE.com"]),
        ),
        (
            "openssl exact name, wrong source: no fallback",
            Client::Openssl(&["-servername", "x.example.com"]),
        ),
        (
            "openssl alpn h2",
            Client::Openssl(&["-servername", "other.org", "-alpn", "h2"]),
        ),
        (
            "openssl alpn http/1.1",
            Client::Openssl(&["-servername", "other.org", "-alpn", "http/1.1"]),
        ),
        (
            "openssl alpn order",
            Client::Openssl(&["-servername", "other.org", "-alpn", "http/1.1,h2"]),
        ),
        ("openssl no sni", Client::Openssl(&["-noservername"])),
        ("curl https", Client::Curl(&[], true)),
        ("curl http/1.1", Client::Curl(&["--http1.1"], false)),
        (
            "curl h2c prior knowledge",
            Client::Curl(&["--http2-prior-knowledge"], false),
        ),
        ("curl http/1.0", Client::Curl(&["--http1.0"], false)),
        (
            "hello split in two records",
            Client::Raw("127.0.0.1", {
                let h = hello(Some("a.example.com"), &["h2"]);
                let msg = &h[5..];
                let mut out = Vec::new();
                for part in [&msg[..20], &msg[20..]] {
                    out.extend_from_slice(&[22, 3, 1]);
                    out.extend_from_slice(&(part.len() as u16).to_be_bytes());
                    out.extend_from_slice(part);
                }
                out
            }),
        ),
        (
            "raw from 127.0.0.2",
            Client::Raw("127.0.0.2", b"hello\r\n".to_vec()),
        ),
        (
            "raw from 127.0.0.3",
            Client::Raw("127.0.0.3", b"hello\r\n".to_vec()),
        ),
        (
            "PROXY destination in 192.0.2/24",
            Client::Raw(
                "127.0.0.1",
                pp("10.1.2.3", "192.0.2.9", 4444, 80, b"hello\r\n"),
            ),
        ),
        (
            "PROXY source 10.1/16 port 4444",
            Client::Raw(
                "127.0.0.1",
                pp("10.1.2.3", "127.0.0.1", 4444, 80, b"hello\r\n"),
            ),
        ),
        (
            "PROXY source 10.1/16 other port: no fallback to 10/8",
            Client::Raw(
                "127.0.0.1",
                pp("10.1.2.3", "127.0.0.1", 5555, 80, b"hello\r\n"),
            ),
        ),
        (
            "PROXY source 10/8",
            Client::Raw(
                "127.0.0.1",
                pp("10.9.9.9", "127.0.0.1", 5555, 80, b"hello\r\n"),
            ),
        ),
        (
            "PROXY external source",
            Client::Raw(
                "127.0.0.1",
                pp("8.8.8.8", "127.0.0.1", 5555, 80, b"hello\r\n"),
            ),
        ),
        (
            "PROXY source equal to destination",
            Client::Raw(
                "127.0.0.1",
                pp("10.7.7.7", "10.7.7.7", 5555, 80, b"hello\r\n"),
            ),
        ),
        (
            "PROXY port 8443 with TLS",
            Client::Raw(
                "127.0.0.1",
                pp(
                    "1.2.3.4",
                    "127.0.0.1",
                    1000,
                    8443,
                    &hello(Some("a.example.com"), &[]),
                ),
            ),
        ),
        (
            "PROXY port 8443 plaintext: no fallback",
            Client::Raw(
                "127.0.0.1",
                pp("1.2.3.4", "127.0.0.1", 1000, 8443, b"hello\r\n"),
            ),
        ),
        (
            "PROXY source 10/8 with exact SNI",
            Client::Raw(
                "127.0.0.1",
                pp(
                    "10.9.9.9",
                    "127.0.0.1",
                    5555,
                    443,
                    &hello(Some("x.example.com"), &[]),
                ),
            ),
        ),
        (
            "hello with ALPN h2 and no SNI",
            Client::Raw("127.0.0.1", hello(None, &["h3", "h2"])),
        ),
    ]
}

#[tokio::test]
async fn same_chain_as_envoy() {
    run_for(Duration::from_secs(240), async {
        let mut names: Vec<&str> = chains(0)
            .iter()
            .chain(&chains(1))
            .map(|(n, _)| *n)
            .collect();
        names.sort();
        names.dedup();
        names.push("default");
        let ups = Upstreams::start(&names).await;
        let mut table = Vec::new();
        let mut differ = Vec::new();
        for set in [0, 1] {
            let (ea, ep, sa, sp) = (free_port(), free_port(), free_port(), free_port());
            let envoy: ProxyProcess = Envoy::start(&config(ea, ep, &ups, set), &[]).await;
            let skiff: ProxyProcess = Skiff::start(&config(sa, sp, &ups, set), &[]).await;
            for (what, client) in cases() {
                let mut picked = Vec::new();
                for port in [ep, sp] {
                    let before = ups.len();
                    connect(&client, port).await;
                    picked.push(ups.next_after(before).await);
                    // A client that retries must not count for the next case.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    ups.log
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .truncate(before + 1);
                }
                table.push(format!(
                    "listener {set}: {what:55} envoy={:?} skiff={:?}",
                    picked[0], picked[1]
                ));
                if picked[0] != picked[1] {
                    differ.push(format!("listener {set}: {what}"));
                }
            }
            drop((envoy, skiff));
        }
        println!("{}", table.join("\n"));
        assert!(
            differ.is_empty(),
            "chains differ for {differ:?}:\n{}",
            table.join("\n")
        );
    })
    .await
}

#[tokio::test]
async fn no_filter_chain_match_closes_and_counts() {
    run_for(Duration::from_secs(60), async {
        let (admin, port) = (free_port(), free_port());
        let listener = json!({
            "name": "sni",
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
            "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }],
            "filter_chains": [{ "filter_chain_match": { "server_names": ["a.example.com"] }, "filters": [tcp_proxy("a", "a")] }]
        });
        let v = bootstrap(admin, vec![listener], vec![cluster("a", &[1])]);
        let p = start_under_test(&to_yaml(&v), &[]).await;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(&client_hello(Some("c.other.org"), &[]))
            .await
            .expect("write");
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        p.admin()
            .wait_stat(
                &format!("listener.127.0.0.1_{port}.no_filter_chain_match"),
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
    })
    .await
}

/// How a connection ended, seen by a client that may have written `first` and then reads.
async fn ending(port: u16, first: &[u8]) -> &'static str {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    if !first.is_empty() {
        s.write_all(first).await.expect("write");
    }
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
        Ok(Ok(0)) => "closed",
        Ok(Ok(_)) => "data",
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset",
        Ok(Err(_)) => "error",
        Err(_) => "still open",
    }
}

#[tokio::test]
async fn a_chain_without_network_filters_closes_as_in_envoy() {
    run_for(Duration::from_secs(60), async {
        let ups = Upstreams::start(&["plain"]).await;
        let mut seen = Vec::new();
        for kind in ["envoy", "skiff"] {
            let (admin, empty, mixed) = (free_port(), free_port(), free_port());
            let only_empty = json!({
                "name": "empty",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": empty } },
                "filter_chains": [{}]
            });
            // TLS connections reach the chain without filters; plaintext ones the tcp_proxy.
            let tls_empty = json!({
                "name": "mixed",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": mixed } },
                "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }],
                "filter_chains": [
                    { "filter_chain_match": { "transport_protocol": "tls" }, "filters": [] },
                    { "filters": [tcp_proxy("plain", "plain")] }
                ]
            });
            let v = bootstrap(
                admin,
                vec![only_empty, tls_empty],
                vec![cluster("plain", &[ups.port("plain")])],
            );
            let p: ProxyProcess = if kind == "envoy" {
                Envoy::start(&to_yaml(&v), &["--concurrency", "1"]).await
            } else {
                Skiff::start(&to_yaml(&v), &["--concurrency", "1"]).await
            };
            let quiet = ending(empty, b"").await;
            let hello = ending(mixed, &client_hello(Some("x.test"), &[])).await;
            let before = ups.len();
            let plain = ending(mixed, b"plain bytes").await;
            let reached = ups.len() - before;
            let admin = p.admin();
            let mut stats = Vec::new();
            for port in [empty, mixed] {
                for stat in [
                    "downstream_cx_total",
                    "downstream_cx_destroy",
                    "network_extension_config_missing",
                    "no_filter_chain_match",
                ] {
                    let name = format!("listener.127.0.0.1_{port}.{stat}");
                    let want = if stat == "downstream_cx_total" || stat == "downstream_cx_destroy" {
                        if port == empty { 1 } else { 2 }
                    } else if stat == "network_extension_config_missing" {
                        1
                    } else {
                        0
                    };
                    // Envoy settles its counters after the close; wait for them to agree
                    // with what was sent, then record whatever they are.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(3),
                        admin.wait_stat(&name, Duration::from_secs(3), |v| v == want),
                    )
                    .await;
                    stats.push((stat, admin.counter(&name).await));
                }
            }
            seen.push((kind, quiet, hello, plain, reached, stats));
        }
        println!("{seen:#?}");
        let (e, s) = (&seen[0], &seen[1]);
        assert_eq!(
            (e.1, e.2, e.4, &e.5),
            (s.1, s.2, s.4, &s.5),
            "envoy and skiff differ: {seen:#?}"
        );
        assert_eq!((e.1, e.4), ("closed", 1), "{seen:#?}");
    })
    .await
}
