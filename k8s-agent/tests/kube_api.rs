//! The Kubernetes API client against the API's own responses (`tests/recorded/`, see its
//! README) served by a plain-HTTP server inside the test: a pod, a node's pod list in two
//! pages, NotFound and Forbidden, the bearer token from a file (re-read per request), and the
//! capture decisions taken from what was read.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use skiff_k8s::capture::{decide, Decision};
use skiff_k8s::kube::Client;
use skiff_k8s::netconf::{KubeConf, PluginConf};

fn recorded(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/recorded")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the server saw: (request line, authorization header).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Serves the recorded responses on 127.0.0.1 until the test ends; only requests with
/// `Bearer <token>` are answered, as the API server does.
fn serve(token: &'static str) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut auth = String::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("authorization:") {
                    auth = v.trim().to_string();
                }
            }
            let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
            log.lock()
                .expect("log")
                .push((line.trim().to_string(), auth.clone()));
            let (code, body) = if auth != format!("bearer {token}") {
                (401, br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#.to_vec())
            } else if target == "/api/v1/namespaces/bookinfo/pods/productpage-v1-6b746f74dc-9stvs" {
                (200, recorded("pod-productpage.json"))
            } else if target.starts_with("/api/v1/namespaces/bookinfo/pods/") {
                (404, recorded("status-404-not-found.json"))
            } else if target.starts_with("/api/v1/namespaces/restricted/") {
                (403, recorded("status-403-forbidden.json"))
            } else if target.starts_with("/api/v1/pods?") && target.contains("&continue=") {
                (200, recorded("podlist-node-a-page2.json"))
            } else if target.starts_with("/api/v1/pods?") {
                (200, recorded("podlist-node-a-page1.json"))
            } else {
                (404, b"{}".to_vec())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
            let mut rest = Vec::new();
            let _ = conn.shutdown(std::net::Shutdown::Write);
            let _ = conn.read_to_end(&mut rest);
        }
    });
    (addr, seen)
}

fn client(addr: SocketAddr, token: &str) -> (Client, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "skiff-kube-api-{}-{}",
        std::process::id(),
        addr.port()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token");
    let c = Client::from_conf(&KubeConf {
        api_server: Some(format!("http://{addr}")),
        token_file: Some(token_file),
        timeout_ms: Some(3000),
        ..KubeConf::default()
    })
    .expect("client");
    (c, dir)
}

#[tokio::test]
async fn a_pod_is_read_and_its_annotations_decide_its_capture() {
    let (addr, seen) = serve("t0ken");
    let (c, dir) = client(addr, "t0ken");
    let pod = c
        .pod("bookinfo", "productpage-v1-6b746f74dc-9stvs")
        .await
        .expect("pod");
    assert_eq!(pod.metadata.uid, "3c1a2f7e-8d4b-4f6a-9e1c-2b7d5a0f4c11");
    assert_eq!(pod.spec.node_name, "node-a");
    assert_eq!(pod.status.phase, "Pending");
    assert!(pod.spec.containers.iter().any(|c| c.name == "istio-proxy"));
    let Ok(Decision::Capture(cap)) = decide(&pod, &PluginConf::default()) else {
        panic!("an injected pod is captured");
    };
    let args = cap.capture_args();
    assert_eq!(args.inbound_ports, "9080");
    assert_eq!(args.outbound_cidrs, "*");
    assert_eq!(args.outbound_exclude_cidrs, "169.254.169.254/32");
    assert_eq!(args.inbound_exclude_ports, "15020,15021,15090");
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(
        seen[0],
        (
            "GET /api/v1/namespaces/bookinfo/pods/productpage-v1-6b746f74dc-9stvs HTTP/1.1"
                .to_string(),
            "bearer t0ken".to_string()
        )
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_node_s_pods_are_listed_across_pages() {
    let (addr, seen) = serve("t0ken");
    let (c, dir) = client(addr, "t0ken");
    let pods = c.pods_on_node("node-a").await.expect("list");
    let names: Vec<&str> = pods.iter().map(|p| p.metadata.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "productpage-v1-6b746f74dc-9stvs",
            "coredns-7db6d8ff4d-4xq2p",
            "curl-5d7b8c9f6-tz8mk"
        ]
    );
    let decisions: Vec<bool> = pods
        .iter()
        .map(|p| matches!(decide(p, &PluginConf::default()), Ok(Decision::Capture(_))))
        .collect();
    assert_eq!(decisions, [true, false, false], "only the injected pod");
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0]
            .0
            .starts_with("GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&limit=500 "),
        "{seen:?}"
    );
    assert!(seen[1].0.contains("&continue=eyJ2Ijoi"), "{seen:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn api_errors_say_what_happened_and_what_to_do() {
    let (addr, _) = serve("t0ken");
    let (c, dir) = client(addr, "t0ken");
    let e = c.pod("bookinfo", "gone-pod").await.expect_err("404");
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains("pods \"gone-pod\" not found"), "{e}");
    let e = c.pod("restricted", "x").await.expect_err("403");
    assert!(e.to_string().contains("Forbidden"), "{e}");
    assert!(e.to_string().contains("get/list/watch on pods"), "{e}");
    // The token file is re-read on each request: a rotated token that the server does not
    // accept gives Unauthorized with a hint.
    std::fs::write(dir.join("token"), "expired").expect("token");
    let e = c
        .pod("bookinfo", "productpage-v1-6b746f74dc-9stvs")
        .await
        .expect_err("401");
    assert!(
        e.to_string().contains("401") && e.to_string().contains("tokenFile"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_unreachable_server_is_a_transport_error_in_time() {
    // A listener that never answers: the client's time limit ends the request.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let c = Client::from_conf(&KubeConf {
        api_server: Some(format!("http://{addr}")),
        timeout_ms: Some(300),
        ..KubeConf::default()
    })
    .expect("client");
    let started = std::time::Instant::now();
    let e = c.pod("a", "b").await.expect_err("timeout");
    assert!(e.to_string().contains("no answer within"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    drop(silent);
}

/// An HTTPS API server with a certificate for 127.0.0.1 signed by itself: the client trusts
/// it through caFile, and refuses it with another CA.
#[tokio::test]
async fn https_with_the_cluster_ca_and_a_refusal_with_another() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![server.cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(server.key_pair.serialize_der().into()),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = recorded("pod-productpage.json");
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let dir = std::env::temp_dir().join(format!("skiff-kube-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (good, bad) = (dir.join("ca.crt"), dir.join("other.crt"));
    std::fs::write(&good, server.cert.pem()).expect("ca");
    std::fs::write(&bad, other.cert.pem()).expect("ca");
    let client = |ca: &PathBuf| {
        Client::from_conf(&KubeConf {
            api_server: Some(format!("https://{addr}")),
            ca_file: Some(ca.clone()),
            timeout_ms: Some(3000),
            ..KubeConf::default()
        })
        .expect("client")
    };
    let pod = client(&good)
        .pod("bookinfo", "productpage-v1-6b746f74dc-9stvs")
        .await
        .expect("pod over TLS");
    assert_eq!(pod.metadata.name, "productpage-v1-6b746f74dc-9stvs");
    let e = client(&bad)
        .pod("bookinfo", "productpage-v1-6b746f74dc-9stvs")
        .await
        .expect_err("unknown issuer");
    assert!(e.to_string().contains("TLS"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
