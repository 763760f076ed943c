//! haproxy in front of the proxy, sending PROXY protocol v1 (`send-proxy`) and v2
//! (`send-proxy-v2`) into an HTTP listener with the proxy_protocol listener filter: the access
//! log names the original client (a loopback address other than haproxy's own) as the downstream
//! remote address. Runs against skiff (or Envoy with `SKIFF_TESTS_PROXY=envoy`).

use std::time::Duration;

use serde_json::json;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, to_yaml, vhost};
use skiff_tests::proxy::start_under_test;
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, require_program, run, scratch_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};

const PP_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";

/// The address the client connects from; haproxy itself connects from 127.0.0.1.
const CLIENT_IP: &str = "127.0.0.5";

/// Starts haproxy in the foreground with one TCP frontend per (port, server option) pair, each
/// to `backend_port`.
async fn haproxy(frontends: &[(u16, &str)], backend_port: u16) -> Child {
    let bin = require_program("haproxy", "apt-get install haproxy (cargo xtask setup)");
    let dir = scratch_dir("haproxy");
    let mut cfg = String::from(
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n",
    );
    for (i, (port, option)) in frontends.iter().enumerate() {
        cfg.push_str(&format!(
            "frontend f{i}\n  bind 127.0.0.1:{port}\n  default_backend b{i}\n\
             backend b{i}\n  server s{i} 127.0.0.1:{backend_port} {option}\n"
        ));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).expect("write haproxy.cfg");
    let child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .kill_on_drop(true)
        .spawn()
        .expect("start haproxy");
    for (port, _) in frontends {
        let mut up = false;
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", *port)).await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "haproxy did not listen on {port}");
    }
    child
}

/// One HTTP/1.1 request from CLIENT_IP to `port`; returns the response head and body.
async fn get_from_client_ip(port: u16, path: &str) -> String {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{CLIENT_IP}:0").parse().expect("addr"))
        .expect("bind client address");
    let mut s = sock
        .connect(format!("127.0.0.1:{port}").parse().expect("addr"))
        .await
        .expect("connect to haproxy");
    let req = format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
        .await
        .expect("response in time")
        .expect("read");
    String::from_utf8_lossy(&back).into_owned()
}

#[tokio::test]
async fn haproxy_send_proxy_v1_and_v2_reach_the_access_log() {
    run(async {
        let up = EchoUpstream::start("app").await;
        let (admin, port) = (free_port(), free_port());
        let mut http = hcm("pp_http", vec![vhost("app", &["*"], vec![route("/", "app")])]);
        http["typed_config"]["access_log"] = json!([{
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": { "text_format_source": {
                    "inline_string": "HAP %REQ(:PATH)% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\n" } }
            }
        }]);
        let mut l = listener("pp", "127.0.0.1", port, http);
        l["listener_filters"] = json!([{ "name": "envoy.filters.listener.proxy_protocol",
            "typed_config": { "@type": PP_TYPE } }]);
        let v = bootstrap(admin, vec![l], vec![cluster("app", &[up.addr.port()])]);
        let p = start_under_test(&to_yaml(&v), &[]).await;
        let (v1_port, v2_port) = (free_port(), free_port());
        let mut hap = haproxy(&[(v1_port, "send-proxy"), (v2_port, "send-proxy-v2")], port).await;

        let reply = get_from_client_ip(v1_port, "/v1").await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        let reply = get_from_client_ip(v2_port, "/v2").await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        for path in ["/v1", "/v2"] {
            let line = p
                .wait_stdout_line(Duration::from_secs(15), |l| {
                    l.starts_with(&format!("HAP {path} "))
                })
                .await;
            assert_eq!(line.trim_end(), format!("HAP {path} {CLIENT_IP}"));
        }
        // haproxy's readiness probes above may add headers of their own: at least one each.
        let admin = p.admin();
        admin
            .wait_stat("proxy_proto.versions.v1.found", Duration::from_secs(5), |v| v >= 1)
            .await;
        admin
            .wait_stat("proxy_proto.versions.v2.found", Duration::from_secs(5), |v| v >= 1)
            .await;
        assert_eq!(admin.counter("downstream_cx_proxy_proto_error").await, 0);
        assert_eq!(up.rec.requests().len(), 2);
        let _ = hap.kill().await;
    })
    .await
}
