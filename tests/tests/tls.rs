//! TLS to upstreams (`UpstreamTlsContext` on a cluster's `transport_socket`): SNI, the client
//! certificate of mTLS, the server checked against the trusted CA and SAN matchers (or not at
//! all without a validation context, as in Envoy), the cluster's `ssl.*` stats, certificates
//! that follow their files, and configuration errors that name the field.
//!
//! The upstream is Python's `ssl` (OpenSSL) behind an HTTP server that answers with what it saw
//! of the TLS connection: the SNI, the client certificate's SANs, the ALPN protocol.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_tests::client::{get, http1_once};
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, to_yaml, vhost};
use skiff_tests::proxy::{run_cli, skiff_only, start_under_test, Kind, ProxyProcess};
use skiff_tests::{free_port, run, scratch_dir};

/// The upstream: `tls_server.py <port> <cert> <key> <ca> <require|optional>`.
const SERVER_PY: &str = r#"
import json, socket, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, cert, key, ca, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(ca)
ctx.verify_mode = ssl.CERT_REQUIRED if mode == "require" else ssl.CERT_OPTIONAL
ctx.set_alpn_protocols(["h2", "http/1.1"])
def on_sni(sock, name, _ctx):
    sock.skiff_sni = name
ctx.sni_callback = on_sni

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        c = self.connection
        cert = c.getpeercert() or {}
        seen = {
            "sni": getattr(c, "skiff_sni", None),
            "peer_sans": [f"{k}:{v}" for k, v in cert.get("subjectAltName", ())],
            "alpn": c.selected_alpn_protocol(),
            "version": c.version(),
        }
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        # One request per connection: every request shows a fresh handshake.
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

class Server(ThreadingHTTPServer):
    daemon_threads = True
    def get_request(self):
        s, addr = self.socket.accept()
        return ctx.wrap_socket(s, server_side=True), addr
    def handle_error(self, request, client_address):
        sys.stderr.write(f"handshake or request failed: {sys.exc_info()[1]}\n")

srv = Server(("127.0.0.1", port), Handler)
print("listening", flush=True)
srv.serve_forever()
"#;

/// A CA and the certificates it signs, written as PEM files into a directory.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = scratch_dir(tag);
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{tag} CA"));
        let ca = p.self_signed(&ca_key).expect("CA");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
        Pki { dir, ca, ca_key }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes `<name>.pem` and `<name>.key` for a leaf with these SANs (DNS names and
    /// `spiffe://` URIs); returns their paths.
    fn leaf(&self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        for s in sans {
            p.subject_alt_names.push(if s.contains("://") {
                rcgen::SanType::URI(s.to_string().try_into().expect("URI"))
            } else {
                rcgen::SanType::DnsName(s.to_string().try_into().expect("DNS name"))
            });
        }
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).expect("leaf");
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        // Written beside and renamed over, as a rotation does.
        for (path, text) in [(&c, cert.pem()), (&k, key.serialize_pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, path).expect("rename");
        }
        (c, k)
    }
}

const SERVER_SAN: &str = "spiffe://cluster.local/ns/default/sa/upstream";
const CLIENT_SAN: &str = "spiffe://cluster.local/ns/default/sa/client";

/// The TLS upstream; killed when dropped.
struct Upstream {
    port: u16,
    child: Child,
}

impl Upstream {
    fn start(pki: &Pki, cert: &(PathBuf, PathBuf), require_client_cert: bool) -> Upstream {
        let port = free_port();
        let script = pki.dir.join("tls_server.py");
        std::fs::write(&script, SERVER_PY).expect("write server");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&cert.0)
            .arg(&cert.1)
            .arg(pki.ca())
            .arg(if require_client_cert {
                "require"
            } else {
                "optional"
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the TLS upstream did not start");
            assert!(
                child.try_wait().ok().flatten().is_none(),
                "the TLS upstream exited"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Upstream { port, child }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The upstream TLS context: `sni`, a client certificate, and a validation context with the CA
/// and SAN matchers (`None`: no validation context at all).
fn upstream_tls(
    sni: Option<&str>,
    client: Option<&(PathBuf, PathBuf)>,
    validation: Option<(&Path, Vec<Value>)>,
) -> Value {
    let mut common = json!({ "alpn_protocols": ["http/1.1"] });
    if let Some((c, k)) = client {
        common["tls_certificates"] = json!([{
            "certificate_chain": { "filename": c },
            "private_key": { "filename": k },
        }]);
    }
    if let Some((ca, sans)) = validation {
        common["validation_context"] = json!({
            "trusted_ca": { "filename": ca },
            "match_typed_subject_alt_names": sans,
        });
    }
    let mut ctx = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    });
    if let Some(s) = sni {
        ctx["sni"] = json!(s);
    }
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": ctx })
}

fn uri_san(exact: &str) -> Value {
    json!({ "san_type": "URI", "matcher": { "exact": exact } })
}

/// A proxy with one HTTP listener routing everything to cluster `svc`, which has `tls`.
async fn start(up_port: u16, tls: Value) -> (ProxyProcess, u16) {
    let mut c = cluster("svc", &[up_port]);
    c["transport_socket"] = tls;
    start_cluster(c).await
}

/// A proxy with one HTTP listener routing everything to the cluster `c` (named `svc`).
async fn start_cluster(c: Value) -> (ProxyProcess, u16) {
    let (admin, port) = (free_port(), free_port());
    let v = bootstrap(
        admin,
        vec![listener(
            "http",
            "127.0.0.1",
            port,
            hcm("in", vec![vhost("all", &["*"], vec![route("/", "svc")])]),
        )],
        vec![c],
    );
    (start_under_test(&to_yaml(&v), &[]).await, port)
}

/// `typed_extension_protocol_options` with an `HttpProtocolOptions` made of `fields`.
fn http_protocol_options(fields: Value) -> Value {
    let mut o = json!({
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    });
    if let (Some(o), Some(f)) = (o.as_object_mut(), fields.as_object()) {
        o.extend(f.clone());
    }
    json!({ "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": o })
}

/// `curl` (below) on a blocking thread.
async fn curl_async(
    host: &'static str,
    port: u16,
    ca: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
) -> Result<String, String> {
    tokio::task::spawn_blocking(move || curl(host, port, &ca, client.as_ref()))
        .await
        .expect("curl thread")
}

/// One request through the proxy: its status and the upstream's JSON account of the connection.
async fn request(port: u16) -> (u16, Value) {
    let r = http1_once(&format!("127.0.0.1:{port}"), get("/", "svc.test"))
        .await
        .expect("request");
    let seen = serde_json::from_str(&r.text()).unwrap_or(Value::Null);
    (r.status, seen)
}

/// A request through a cluster with `tls` to the upstream on `up_port` gets 503: the handshake
/// failed verification, counted as `cluster.svc.ssl.<counter>` and not as a connection error
/// (as Envoy counts it).
async fn refused_with(up_port: u16, tls: Value, counter: &str) {
    let (p, port) = start(up_port, tls).await;
    let (status, _) = request(port).await;
    assert_eq!(status, 503);
    let admin = p.admin();
    admin
        .wait_stat(
            &format!("cluster.svc.ssl.{counter}"),
            Duration::from_secs(5),
            |v| v == 1,
        )
        .await;
    assert_eq!(admin.counter("cluster.svc.ssl.handshake").await, 0);
    assert_eq!(admin.counter("cluster.svc.ssl.connection_error").await, 0);
}

#[tokio::test]
async fn upstream_mtls_sends_sni_and_the_client_certificate_and_checks_the_server() {
    run(async {
        let pki = Pki::new("tls-mtls");
        let server = pki.leaf("upstream", &["upstream.test", SERVER_SAN]);
        let client = pki.leaf("client", &[CLIENT_SAN]);
        let up = Upstream::start(&pki, &server, true);
        let tls = upstream_tls(
            Some("upstream.test"),
            Some(&client),
            Some((&pki.ca(), vec![uri_san(SERVER_SAN)])),
        );
        let (p, port) = start(up.port, tls).await;
        let (status, seen) = request(port).await;
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["sni"], "upstream.test");
        assert_eq!(seen["peer_sans"], json!([format!("URI:{CLIENT_SAN}")]));
        assert_eq!(seen["alpn"], "http/1.1");
        let admin = p.admin();
        admin
            .wait_stat("cluster.svc.ssl.handshake", Duration::from_secs(5), |v| {
                v == 1
            })
            .await;
        assert_eq!(admin.counter("cluster.svc.ssl.connection_error").await, 0);
    })
    .await
}

#[tokio::test]
async fn upstream_tls_refuses_a_server_whose_san_does_not_match() {
    run(async {
        let pki = Pki::new("tls-badsan");
        let server = pki.leaf("upstream", &["upstream.test", SERVER_SAN]);
        let up = Upstream::start(&pki, &server, false);
        let tls = upstream_tls(
            Some("upstream.test"),
            None,
            Some((
                &pki.ca(),
                vec![uri_san("spiffe://cluster.local/ns/other/sa/x")],
            )),
        );
        refused_with(up.port, tls, "fail_verify_san").await;
    })
    .await
}

/// The deprecated `match_subject_alt_names` (Istio's outbound clusters send it): each matcher
/// takes a name of any kind, here the server's SPIFFE URI; one that matches none of its names
/// is refused as with the typed matchers.
#[tokio::test]
async fn upstream_tls_checks_the_deprecated_untyped_san_matchers() {
    run(async {
        let pki = Pki::new("tls-untyped-san");
        let server = pki.leaf("upstream", &["upstream.test", SERVER_SAN]);
        let up = Upstream::start(&pki, &server, false);
        let untyped = |exact: &str| {
            let mut tls = upstream_tls(Some("upstream.test"), None, Some((&pki.ca(), vec![])));
            let v = &mut tls["typed_config"]["common_tls_context"]["validation_context"];
            v.as_object_mut()
                .expect("validation context")
                .remove("match_typed_subject_alt_names");
            v["match_subject_alt_names"] = json!([{ "exact": exact }]);
            tls
        };
        let (p, port) = start(up.port, untyped(SERVER_SAN)).await;
        let (status, seen) = request(port).await;
        assert_eq!(status, 200, "{seen}");
        drop(p);
        // A DNS name matches too.
        let (p, port) = start(up.port, untyped("upstream.test")).await;
        assert_eq!(request(port).await.0, 200);
        drop(p);
        refused_with(
            up.port,
            untyped("spiffe://cluster.local/ns/other/sa/x"),
            "fail_verify_san",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn upstream_tls_refuses_a_server_of_another_ca() {
    run(async {
        let pki = Pki::new("tls-otherca");
        let other = Pki::new("tls-otherca-2");
        let server = other.leaf("upstream", &["upstream.test"]);
        let up = Upstream::start(&other, &server, false);
        let tls = upstream_tls(Some("upstream.test"), None, Some((&pki.ca(), vec![])));
        refused_with(up.port, tls, "fail_verify_error").await;
    })
    .await
}

#[tokio::test]
async fn upstream_tls_without_a_validation_context_checks_nothing_and_sends_no_sni_unasked() {
    run(async {
        let other = Pki::new("tls-novalidation");
        let server = other.leaf("upstream", &["whatever.test"]);
        let up = Upstream::start(&other, &server, false);
        let (p, port) = start(up.port, upstream_tls(None, None, None)).await;
        let (status, seen) = request(port).await;
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["sni"], Value::Null, "no sni configured: none sent");
        assert_eq!(seen["peer_sans"], json!([]));
        p.admin()
            .wait_stat("cluster.svc.ssl.handshake", Duration::from_secs(5), |v| {
                v == 1
            })
            .await;
    })
    .await
}

/// `transport_socket_matches` (Istio's auto-mTLS): each endpoint's connections take the
/// transport socket its `envoy.transport_socket_match` metadata picks: TLS to the endpoint
/// labelled `tlsMode: istio`, plain TCP to the unlabelled one (the empty match). A wrong pick
/// either way fails the request (plain bytes to the TLS server, a handshake with the plain one).
#[tokio::test]
async fn transport_socket_matches_pick_each_endpoints_socket_by_its_metadata() {
    run(async {
        let pki = Pki::new("tls-matches");
        let server = pki.leaf("upstream", &["upstream.test"]);
        let tls_up = Upstream::start(&pki, &server, false);
        let plain_up = skiff_tests::upstream::EchoUpstream::start("plain").await;
        let mut c = cluster("svc", &[tls_up.port, plain_up.addr.port()]);
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] = json!({
            "filter_metadata": { "envoy.transport_socket_match": { "tlsMode": "istio" } }
        });
        c["transport_socket_matches"] = json!([
            { "name": "tlsMode-istio", "match": { "tlsMode": "istio" },
              "transport_socket": upstream_tls(None, None, None) },
            { "name": "tlsMode-disabled", "match": {},
              "transport_socket": { "name": "envoy.transport_sockets.raw_buffer", "typed_config": {
                  "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" } } }
        ]);
        let (p, port) = start_cluster(c).await;
        // Each worker balances on its own; with 8 requests over 2 workers one of them takes
        // at least 2 in a row, so both endpoints answer.
        let mut tls_answers = 0;
        for _ in 0..8 {
            let (status, seen) = request(port).await;
            assert_eq!(status, 200, "{seen}");
            // The TLS upstream answers with what it saw of the handshake; the echo one not.
            if seen.get("peer_sans").is_some() {
                tls_answers += 1;
            }
        }
        assert!(
            (1..8).contains(&tls_answers),
            "round robin over the TLS and the plain endpoint: {tls_answers} of 8 over TLS"
        );
        // The TLS upstream closes after each answer: one handshake per answer over TLS, none
        // with the plain endpoint.
        p.admin()
            .wait_stat("cluster.svc.ssl.handshake", Duration::from_secs(5), |v| {
                v == tls_answers
            })
            .await;
    })
    .await
}

/// skiff follows certificate files (Envoy reloads static files only with SDS or a watched
/// directory): a client certificate rotated by rename is used for the next connections.
#[tokio::test]
async fn upstream_client_certificate_follows_its_files() {
    if skiff_only("upstream_client_certificate_follows_its_files") {
        return;
    }
    run(async {
        let pki = Pki::new("tls-reload");
        let server = pki.leaf("upstream", &["upstream.test", SERVER_SAN]);
        let client = pki.leaf("client", &[CLIENT_SAN]);
        let up = Upstream::start(&pki, &server, true);
        let tls = upstream_tls(
            Some("upstream.test"),
            Some(&client),
            Some((&pki.ca(), vec![])),
        );
        let (_p, port) = start(up.port, tls).await;
        let (status, seen) = request(port).await;
        assert_eq!(status, 200);
        assert_eq!(seen["peer_sans"], json!([format!("URI:{CLIENT_SAN}")]));

        let rotated = "spiffe://cluster.local/ns/default/sa/client-rotated";
        pki.leaf("client", &[rotated]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, seen) = request(port).await;
            assert_eq!(status, 200, "connections keep working during the rotation");
            if seen["peer_sans"] == json!([format!("URI:{rotated}")]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the rotated certificate was not picked up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_missing_certificate_file_is_a_configuration_error_naming_the_field() {
    run(async {
        let admin = free_port();
        let mut c = cluster("svc", &[free_port()]);
        c["transport_socket"] = upstream_tls(
            None,
            Some(&(
                PathBuf::from("/nonexistent/client.pem"),
                PathBuf::from("/nonexistent/client.key"),
            )),
            None,
        );
        let v = bootstrap(admin, vec![], vec![c]);
        let cfg = skiff_tests::proxy::write_config("tls-missing", &to_yaml(&v));
        let out = run_cli(
            Kind::under_test(),
            &["--mode", "validate", "-c", cfg.path()],
        )
        .await;
        assert_ne!(out.code, Some(0), "{}", out.output());
        if Kind::under_test() == Kind::Skiff {
            assert!(
                out.output().contains(
                    "static_resources.clusters[0].transport_socket.typed_config.common_tls_context"
                ) && out.output().contains("cannot read /nonexistent/client.pem"),
                "{}",
                out.output()
            );
        }
    })
    .await
}

/// A listener whose one filter chain terminates TLS (`tls` is its `transport_socket`) in front
/// of the HCM routing to an echo upstream.
async fn start_terminating(up_port: u16, tls: Value) -> (ProxyProcess, u16) {
    let (admin, port) = (free_port(), free_port());
    let yaml = terminating_config(admin, port, tls, cluster("svc", &[up_port]));
    (start_under_test(&yaml, &[]).await, port)
}

/// The bootstrap of [`start_terminating`], with the cluster `svc` given.
fn terminating_config(admin: u16, port: u16, tls: Value, svc: Value) -> String {
    let mut l = listener(
        "https",
        "127.0.0.1",
        port,
        hcm("in", vec![vhost("all", &["*"], vec![route("/", "svc")])]),
    );
    l["filter_chains"][0]["transport_socket"] = tls;
    to_yaml(&bootstrap(admin, vec![l], vec![svc]))
}

fn downstream_tls(certs: &[&(PathBuf, PathBuf)], client_ca: Option<(&Path, Vec<Value>)>) -> Value {
    let certs: Vec<Value> = certs
        .iter()
        .map(|(c, k)| json!({ "certificate_chain": { "filename": c }, "private_key": { "filename": k } }))
        .collect();
    let mut common = json!({ "tls_certificates": certs, "alpn_protocols": ["h2", "http/1.1"] });
    let mut ctx = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    });
    if let Some((ca, sans)) = client_ca {
        common["validation_context"] = json!({
            "trusted_ca": { "filename": ca },
            "match_typed_subject_alt_names": sans,
        });
        ctx["require_client_certificate"] = json!(true);
    }
    ctx["common_tls_context"] = common;
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": ctx })
}

/// `curl` over TLS to `host` (resolved to 127.0.0.1:`port`), trusting `ca`, with a client
/// certificate when given: the status and HTTP version it reports, or its error.
fn curl(
    host: &str,
    port: u16,
    ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
) -> Result<String, String> {
    skiff_tests::require_program("curl", "apt-get install curl");
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-S",
        "-o",
        "/dev/null",
        "-m",
        "5",
        "-w",
        "%{http_code} %{http_version}",
    ])
    .arg("--resolve")
    .arg(format!("{host}:{port}:127.0.0.1"))
    .arg("--cacert")
    .arg(ca);
    if let Some((c, k)) = client {
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    cmd.arg(format!("https://{host}:{port}/"));
    let out = cmd.output().expect("run curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn downstream_tls_picks_the_certificate_by_sni_and_negotiates_h2() {
    run(async {
        let pki = Pki::new("tls-down-sni");
        let a = pki.leaf("a", &["a.test"]);
        let b = pki.leaf("b", &["*.b.test"]);
        let up = skiff_tests::upstream::EchoUpstream::start("svc").await;
        let (p, port) = start_terminating(up.port(), downstream_tls(&[&a, &b], None)).await;
        let ca = pki.ca();
        // curl checks the certificate against the name it asked for: each succeeds only with
        // the certificate chosen for its SNI.
        let (pa, pb) = tokio::join!(
            curl_async("a.test", port, ca.clone(), None),
            curl_async("x.b.test", port, ca, None),
        );
        assert_eq!(pa, Ok("200 2".to_string()));
        assert_eq!(pb, Ok("200 2".to_string()));
        let reqs = up.rec.wait_requests(2, Duration::from_secs(5)).await;
        assert!(
            reqs.iter()
                .all(|r| r.header("x-forwarded-proto") == Some("https")),
            "the upstream sees x-forwarded-proto: https"
        );
        let admin = p.admin();
        admin
            .wait_stat(
                &format!("listener.127.0.0.1_{port}.ssl.handshake"),
                Duration::from_secs(5),
                |v| v == 2,
            )
            .await;
        assert_eq!(admin.counter("http.in.downstream_cx_ssl_total").await, 2);
        assert_eq!(
            admin
                .counter(&format!("listener.127.0.0.1_{port}.ssl.versions.TLSv1.3"))
                .await,
            2
        );
    })
    .await
}

#[tokio::test]
async fn downstream_mtls_requires_a_trusted_client_certificate_with_a_matching_san() {
    run(async {
        let pki = Pki::new("tls-down-mtls");
        let server = pki.leaf("server", &["svc.test"]);
        let good = pki.leaf("good", &[CLIENT_SAN]);
        let wrong = pki.leaf("wrong", &["spiffe://cluster.local/ns/other/sa/x"]);
        let up = skiff_tests::upstream::EchoUpstream::start("svc").await;
        let tls = downstream_tls(&[&server], Some((&pki.ca(), vec![uri_san(CLIENT_SAN)])));
        let (p, port) = start_terminating(up.port(), tls).await;
        let ca = pki.ca();
        let run_curl =
            |client: Option<(PathBuf, PathBuf)>| curl_async("svc.test", port, ca.clone(), client);
        assert_eq!(run_curl(Some(good)).await, Ok("200 2".to_string()));
        assert!(run_curl(None).await.is_err(), "no client certificate");
        assert!(
            run_curl(Some(wrong)).await.is_err(),
            "a SAN that does not match"
        );
        let admin = p.admin();
        let scope = format!("listener.127.0.0.1_{port}.ssl");
        admin
            .wait_stat(
                &format!("{scope}.fail_verify_san"),
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
        admin
            .wait_stat(
                &format!("{scope}.fail_verify_no_cert"),
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
        assert_eq!(admin.counter(&format!("{scope}.handshake")).await, 1);
        assert_eq!(
            up.rec.requests().len(),
            1,
            "only the trusted client got through"
        );
    })
    .await
}

/// `auto_sni` with `auto_san_validation`: each request's host is the SNI of the connection that
/// carries it (one pool per name), and the server's certificate must be valid for it.
#[tokio::test]
async fn auto_sni_sends_the_request_host_and_auto_san_validation_checks_it() {
    run(async {
        let pki = Pki::new("tls-autosni");
        let server = pki.leaf("upstream", &["*.svc.test"]);
        let up = Upstream::start(&pki, &server, false);
        let mut c = cluster("svc", &[up.port]);
        c["transport_socket"] = upstream_tls(None, None, Some((&pki.ca(), vec![])));
        c["typed_extension_protocol_options"] = http_protocol_options(json!({
            "explicit_http_config": { "http_protocol_options": {} },
            "upstream_http_protocol_options": { "auto_sni": true, "auto_san_validation": true }
        }));
        let (p, port) = start_cluster(c).await;
        let addr = format!("127.0.0.1:{port}");
        for host in ["a.svc.test", "b.svc.test:8080"] {
            let r = http1_once(&addr, get("/", host)).await.expect("request");
            assert_eq!(r.status, 200, "{host}: {}", r.text());
            let seen: Value = serde_json::from_str(&r.text()).expect("json");
            assert_eq!(seen["sni"], host.split(':').next().unwrap_or(host));
        }
        let r = http1_once(&addr, get("/", "other.test"))
            .await
            .expect("request");
        assert_eq!(
            r.status, 503,
            "a certificate not valid for the name is refused"
        );
        let admin = p.admin();
        admin
            .wait_stat("cluster.svc.ssl.handshake", Duration::from_secs(5), |v| {
                v == 2
            })
            .await;
        assert_eq!(admin.counter("cluster.svc.ssl.fail_verify_san").await, 1);
        assert_eq!(admin.counter("cluster.svc.ssl.fail_verify_error").await, 0);
    })
    .await
}

/// `auto_config`: the upstream's ALPN choice decides HTTP/2 or HTTP/1.1. The upstream here is a
/// second proxy terminating TLS (offering `h2` or only `http/1.1`) in front of an echo server.
#[tokio::test]
async fn auto_config_speaks_what_alpn_chose() {
    run(async {
        let pki = Pki::new("tls-autoconfig");
        let server = pki.leaf("upstream", &["upstream.test"]);
        let echo = skiff_tests::upstream::EchoUpstream::start("svc").await;
        for (offered, want_h2) in [(vec!["h2", "http/1.1"], true), (vec!["http/1.1"], false)] {
            let mut tls = downstream_tls(&[&server], None);
            tls["typed_config"]["common_tls_context"]["alpn_protocols"] = json!(offered);
            let (back, back_port) = start_terminating(echo.port(), tls).await;

            let mut c = cluster("svc", &[back_port]);
            c["transport_socket"] =
                upstream_tls(Some("upstream.test"), None, Some((&pki.ca(), vec![])));
            // No ALPN configured: auto_config offers h2 and http/1.1 itself.
            c["transport_socket"]["typed_config"]["common_tls_context"]
                .as_object_mut()
                .expect("context")
                .remove("alpn_protocols");
            c["typed_extension_protocol_options"] =
                http_protocol_options(json!({ "auto_config": {} }));
            let (front, port) = start_cluster(c).await;
            let addr = format!("127.0.0.1:{port}");
            for _ in 0..3 {
                let r = http1_once(&addr, get("/", "svc.test"))
                    .await
                    .expect("request");
                assert_eq!(r.status, 200, "{offered:?}: {}", r.text());
            }
            let (h2, h1) = (
                front
                    .admin()
                    .counter("cluster.svc.upstream_cx_http2_total")
                    .await,
                front
                    .admin()
                    .counter("cluster.svc.upstream_cx_http1_total")
                    .await,
            );
            if want_h2 {
                // One HTTP/2 connection per worker that took a request, at most.
                assert!(
                    h2 >= 1 && h1 == 0,
                    "{offered:?}: HTTP/2 only, got {h2} and {h1}"
                );
                assert_eq!(
                    back.admin()
                        .counter("http.in.downstream_cx_http2_total")
                        .await,
                    h2
                );
            } else {
                assert_eq!(h2, 0, "{offered:?}: HTTP/1.1 only");
                assert!(h1 >= 1);
                assert_eq!(
                    back.admin()
                        .counter("http.in.downstream_cx_http2_total")
                        .await,
                    0
                );
            }
        }
    })
    .await
}

#[tokio::test]
async fn auto_config_without_tls_is_refused() {
    run(async {
        let mut c = cluster("svc", &[free_port()]);
        c["typed_extension_protocol_options"] = http_protocol_options(json!({ "auto_config": {} }));
        let v = bootstrap(free_port(), vec![], vec![c]);
        let cfg = skiff_tests::proxy::write_config("tls-autoconfig-plain", &to_yaml(&v));
        let out = run_cli(
            Kind::under_test(),
            &["--mode", "validate", "-c", cfg.path()],
        )
        .await;
        assert_ne!(out.code, Some(0), "{}", out.output());
        assert!(
            out.output()
                .contains("ALPN configured for cluster svc which has a non-ALPN transport socket"),
            "{}",
            out.output()
        );
    })
    .await
}

/// `tls_params`: TLS 1.2 only with one cipher suite; the handshake's version and cipher are
/// counted under Envoy's names.
#[tokio::test]
async fn downstream_tls_params_choose_the_version_and_cipher() {
    run(async {
        let pki = Pki::new("tls-params");
        let server = pki.leaf("server", &["svc.test"]);
        let up = skiff_tests::upstream::EchoUpstream::start("svc").await;
        let mut tls = downstream_tls(&[&server], None);
        tls["typed_config"]["common_tls_context"]["tls_params"] = json!({
            "tls_maximum_protocol_version": "TLSv1_2",
            "cipher_suites": ["ECDHE-ECDSA-AES128-GCM-SHA256"],
        });
        let (p, port) = start_terminating(up.port(), tls).await;
        let ca = pki.ca();
        let got = curl_async("svc.test", port, ca, None).await;
        assert_eq!(got, Ok("200 2".to_string()));
        let admin = p.admin();
        let scope = format!("listener.127.0.0.1_{port}.ssl");
        admin
            .wait_stat(
                &format!("{scope}.versions.TLSv1.2"),
                Duration::from_secs(5),
                |v| v == 1,
            )
            .await;
        assert_eq!(
            admin
                .counter(&format!("{scope}.ciphers.ECDHE-ECDSA-AES128-GCM-SHA256"))
                .await,
            1
        );
    })
    .await
}

/// A live connection keeps working across a certificate rotation; the next connection gets
/// the new certificate (skiff follows the files; Envoy needs SDS or a watched directory).
#[tokio::test]
async fn downstream_certificate_rotation_keeps_live_connections() {
    if skiff_only("downstream_certificate_rotation_keeps_live_connections") {
        return;
    }
    run(async {
        let pki = Pki::new("tls-down-rotate");
        let server = pki.leaf("server", &["old.test"]);
        let up = skiff_tests::upstream::EchoUpstream::start("svc").await;
        let (_p, port) = start_terminating(up.port(), downstream_tls(&[&server], None)).await;
        let go = pki.dir.join("go");
        // One TLS connection: a request, then (once `go` exists) another on the same connection.
        let script = format!(
            r#"
import os, socket, ssl, time
ctx = ssl.create_default_context(cafile="{ca}")
ctx.check_hostname = False
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port})), server_hostname="old.test")
def ask():
    s.sendall(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(rest) < n:
        rest += s.recv(4096)
    return head.split(b"\r\n")[0].decode()
print(ask(), flush=True)
while not os.path.exists("{go}"):
    time.sleep(0.05)
print(ask(), flush=True)
"#,
            ca = pki.ca().display(),
            go = go.display()
        );
        let mut live = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(&script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = tokio::io::BufReader::new(live.stdout.take().expect("stdout"));
        let mut line = String::new();
        use tokio::io::AsyncBufReadExt;
        out.read_line(&mut line).await.expect("first answer");
        assert_eq!(line.trim(), "HTTP/1.1 200 OK");

        let ca = pki.ca();
        let before = curl_async("new.test", port, ca.clone(), None).await;
        assert!(before.is_err(), "the old certificate does not cover new.test");
        pki.leaf("server", &["new.test"]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = curl_async("new.test", port, ca.clone(), None).await;
            if now.is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the rotated certificate was not served: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        std::fs::write(&go, "").expect("signal");
        line.clear();
        out.read_line(&mut line).await.expect("second answer");
        assert_eq!(line.trim(), "HTTP/1.1 200 OK", "the live connection still works");
        let _ = live.wait().await;
    })
    .await
}

/// The X.509 v1 certificate and PKCS#8 RSA key inlined in Envoy's compression sandboxes
/// (envoyproxy/examples brotli, gzip, zstd; subject `CN=front-envoy`).
fn sandbox_v1_pair() -> (PathBuf, PathBuf) {
    let dir = skiff_tests::workspace_root().join("proxy/config/src/tls/testdata");
    (
        dir.join("envoy-examples-v1.crt"),
        dir.join("envoy-examples-v1.key"),
    )
}

/// Runs `openssl` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    skiff_tests::require_program("openssl", "apt-get install openssl");
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_v1_certificate_serves_and_is_served_as_in_envoy() {
    run(async {
        let pki = Pki::new("tls-v1");
        let v1 = sandbox_v1_pair();
        // The upstream serves the same v1 certificate; the cluster has no validation context,
        // so neither proxy checks it, but both must still verify its handshake signature.
        let up = Upstream::start(&pki, &v1, false);
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, port) = (free_port(), free_port());
            let mut c = cluster("svc", &[up.port]);
            c["transport_socket"] = upstream_tls(None, None, None);
            let yaml = terminating_config(admin, port, downstream_tls(&[&v1], None), c);
            let p = ProxyProcess::start(kind, &yaml, &["--concurrency", "1"]).await;
            // curl trusts the v1 certificate itself and checks its common name.
            let r = curl_async("front-envoy", port, v1.0.clone(), None).await;
            let handshakes = p
                .admin()
                .counter(&format!("listener.127.0.0.1_{port}.ssl.handshake"))
                .await;
            let upstream_handshakes = p.admin().counter("cluster.svc.ssl.handshake").await;
            seen.push((kind.name(), r, handshakes, upstream_handshakes));
        }
        assert_eq!(seen[0].1, Ok("200 2".to_string()), "{seen:?}");
        assert_eq!(
            (&seen[0].1, seen[0].2, seen[0].3),
            (&seen[1].1, seen[1].2, seen[1].3),
            "{seen:?}"
        );
    })
    .await
}

#[tokio::test]
async fn a_v1_certificate_with_another_key_is_refused_by_both() {
    run(async {
        let dir = scratch_dir("tls-v1-mismatch");
        openssl(&dir, &["genrsa", "-traditional", "-out", "other.key", "2048"]);
        let (crt, _) = sandbox_v1_pair();
        let pair = (crt, dir.join("other.key"));
        let yaml = terminating_config(
            free_port(),
            free_port(),
            downstream_tls(&[&pair], None),
            cluster("svc", &[free_port()]),
        );
        let cfg = skiff_tests::proxy::write_config("tls-v1-mismatch", &yaml);
        for kind in [Kind::Envoy, Kind::under_test()] {
            let out = run_cli(kind, &["--mode", "validate", "-c", cfg.path()]).await;
            assert_ne!(out.code, Some(0), "{}: {}", kind.name(), out.output());
            let wording = match kind {
                Kind::Envoy => "KEY_VALUES_MISMATCH",
                _ => "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificates[0]: the private key does not match the certificate",
            };
            assert!(
                out.output().contains(wording),
                "{}: {}",
                kind.name(),
                out.output()
            );
        }
    })
    .await
}

/// Whether a second `openssl s_client` connection resumes the first one's session, for TLS 1.2
/// and 1.3 (`Reused` or `New`).
fn resumption(port: u16, dir: &Path) -> String {
    skiff_tests::require_program("openssl", "apt-get install openssl");
    let mut seen = Vec::new();
    for version in ["-tls1_2", "-tls1_3"] {
        let session = dir.join(format!("session{version}.pem"));
        let _ = std::fs::remove_file(&session);
        let connect = format!("127.0.0.1:{port}");
        let mut lines = Vec::new();
        for arg in ["-sess_out", "-sess_in"] {
            // The client waits a little before it closes, so TLS 1.3 tickets sent after the
            // handshake arrive.
            let script = format!(
                "sleep 0.5 | openssl s_client -connect {connect} {version} -servername a.test {arg} {}",
                session.display()
            );
            let out = Command::new("sh")
                .args(["-c", &script])
                .output()
                .expect("run openssl");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let line = text
                .lines()
                .find(|l| l.starts_with("New,") || l.starts_with("Reused,"))
                .map_or("no session".to_string(), |l| {
                    l.split(',').next().unwrap_or("").to_string()
                });
            lines.push(line);
        }
        seen.push(format!("{version}: {}", lines.join(" then ")));
    }
    seen.join("; ")
}

#[tokio::test]
async fn session_resumption_without_stateless_tickets_as_in_envoy() {
    run(async {
        let pki = Pki::new("tls-resumption");
        let a = pki.leaf("a", &["a.test"]);
        let up = skiff_tests::upstream::EchoUpstream::start("svc").await;
        let mut outcomes = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let mut seen = Vec::new();
            // Without stateless tickets; then without the session cache too (Envoy Gateway).
            for (i, stateful) in [false, true].into_iter().enumerate() {
                let mut tls = downstream_tls(&[&a], None);
                tls["typed_config"]["disable_stateless_session_resumption"] = json!(true);
                if stateful {
                    tls["typed_config"]["disable_stateful_session_resumption"] = json!(true);
                }
                let (admin, port) = (free_port(), free_port());
                let yaml = terminating_config(admin, port, tls, cluster("svc", &[up.port()]));
                let _p = ProxyProcess::start(kind, &yaml, &[]).await;
                let dir = scratch_dir(&format!("tls-resumption-{}-{i}", kind.name()));
                let r = tokio::task::spawn_blocking(move || resumption(port, &dir))
                    .await
                    .expect("openssl");
                seen.push(format!("no stateful resumption {stateful}: {r}"));
            }
            outcomes.push(seen.join("\n"));
        }
        assert_eq!(outcomes[0], outcomes[1], "Envoy first, then skiff");
        // TLS 1.2 resumes by session id unless the cache is off; without tickets TLS 1.3
        // does not resume.
        assert!(
            outcomes[1].contains("false: -tls1_2: New then Reused"),
            "{}",
            outcomes[1]
        );
    })
    .await
}

/// The ALPN `openssl s_client` negotiated offering `offered`, or the handshake's failure.
fn negotiated_alpn(port: u16, ca: &Path, offered: &str) -> String {
    skiff_tests::require_program("openssl", "apt-get install openssl");
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "svc.test", "-alpn", offered, "-CAfile"])
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(l) = text.lines().find(|l| l.starts_with("ALPN protocol:")) {
        return l.trim().to_string();
    }
    if text.contains("No ALPN negotiated") {
        return "no ALPN".to_string();
    }
    format!("handshake failed: {}", String::from_utf8_lossy(&out.stderr))
}

/// ALPN as Envoy's server chooses it: the chain's first protocol the client offers; a client
/// offering none of them gets no protocol, and the handshake goes on (rustls alone would end
/// it). Istio's `istio-peer-exchange` is never negotiated by skiff (tests/DIFFERENCES.md).
#[tokio::test]
async fn downstream_alpn_as_envoy() {
    run(async {
        let pki = Pki::new("tls-alpn");
        let server = pki.leaf("server", &["svc.test"]);
        let up = skiff_tests::upstream::EchoUpstream::start("svc").await;
        let mut tls = downstream_tls(&[&server], None);
        tls["typed_config"]["common_tls_context"]["alpn_protocols"] =
            json!(["istio-peer-exchange", "h2", "http/1.1"]);
        let ca = pki.ca();
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let (admin, port) = (free_port(), free_port());
            let yaml = terminating_config(admin, port, tls.clone(), cluster("svc", &[up.port()]));
            let _p = ProxyProcess::start(kind, &yaml, &[]).await;
            seen.push(
                ["http/1.1,h2", "foo,bar", "istio-peer-exchange,istio"]
                    .map(|offered| negotiated_alpn(port, &ca, offered)),
            );
        }
        let (envoy, skiff) = (&seen[0], &seen[1]);
        assert_eq!(envoy[..2], skiff[..2], "Envoy (left), skiff (right)");
        assert_eq!(skiff[0], "ALPN protocol: h2");
        assert_eq!(skiff[1], "no ALPN");
        assert_eq!(envoy[2], "ALPN protocol: istio-peer-exchange");
        assert_eq!(skiff[2], "no ALPN");
    })
    .await
}

/// Active health checks over the cluster's TLS, side by side with Envoy: an mTLS upstream that
/// requires a client certificate is healthy when the checks connect with the cluster's
/// transport socket (client certificate and all), and failed when
/// `transport_socket_match_criteria` picks a plain socket for them.
#[tokio::test]
async fn health_checks_connect_over_the_clusters_tls_as_envoys() {
    run(async {
        let pki = Pki::new("tls-hc");
        let server = pki.leaf("upstream", &["upstream.test"]);
        let client = pki.leaf("client", &[CLIENT_SAN]);
        let up = Upstream::start(&pki, &server, true);
        let check = json!([ { "interval": "0.2s", "no_traffic_interval": "0.2s",
            "timeout": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
            "tls_options": { "alpn_protocols": ["http/1.1"] },
            "http_health_check": { "path": "/hc", "host": "upstream.test" } } ]);
        let ca = pki.ca();
        let mtls = upstream_tls(Some("upstream.test"), Some(&client), Some((&ca, vec![])));
        let mut svc = cluster("svc", &[up.port]);
        svc["transport_socket"] = mtls.clone();
        svc["health_checks"] = check.clone();
        let mut plain = cluster("plain", &[up.port]);
        plain["transport_socket"] = mtls;
        plain["transport_socket_matches"] = json!([
            { "name": "plain", "match": { "mode": "plain" },
              "transport_socket": { "name": "envoy.transport_sockets.raw_buffer", "typed_config": {
                  "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" } } }
        ]);
        plain["health_checks"] = check;
        plain["health_checks"][0]["transport_socket_match_criteria"] = json!({ "mode": "plain" });
        for kind in [Kind::Envoy, Kind::under_test()] {
            let who = kind.name();
            let (admin, port) = (free_port(), free_port());
            let v = bootstrap(
                admin,
                vec![listener(
                    "http",
                    "127.0.0.1",
                    port,
                    hcm("in", vec![vhost("all", &["*"], vec![route("/", "svc")])]),
                )],
                vec![svc.clone(), plain.clone()],
            );
            let p = ProxyProcess::start(kind, &to_yaml(&v), &[]).await;
            let flags = |c: &'static str| {
                let a = p.admin();
                let key = format!("{c}::127.0.0.1:{}::health_flags::", up.port);
                async move {
                    let text = a.get("/clusters").await.text();
                    text.lines()
                        .find_map(|l| l.strip_prefix(&key))
                        .unwrap_or("?")
                        .to_string()
                }
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (s, pl) = (flags("svc").await, flags("plain").await);
                if s == "healthy" && pl == "/failed_active_hc" {
                    break;
                }
                assert!(Instant::now() < deadline, "{who}: svc {s:?}, plain {pl:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (status, seen) = request(port).await;
            assert_eq!(status, 200, "{who}: {seen}");
        }
    })
    .await
}

/// `auto_host_sni` and `auto_sni_san_validation` in a cluster's `transport_socket_matches`
/// (as Envoy Gateway writes them), side by side with Envoy: the endpoint's `hostname` is the
/// SNI, and the certificate is checked against it in place of the SAN matchers (which here
/// match nothing); an endpoint whose name the certificate does not cover is refused.
#[tokio::test]
async fn auto_host_sni_sends_the_endpoint_hostname_as_envoy_does() {
    run(async {
        let pki = Pki::new("tls-autohostsni");
        let server = pki.leaf("upstream", &["*.svc.test"]);
        let up = Upstream::start(&pki, &server, false);
        let mut matched = upstream_tls(
            None,
            None,
            Some((
                &pki.ca(),
                vec![json!({ "san_type": "DNS", "matcher": { "exact": "nothing.test" } })],
            )),
        );
        matched["typed_config"]["auto_host_sni"] = json!(true);
        matched["typed_config"]["auto_sni_san_validation"] = json!(true);
        let svc = |name: &str, hostname: &str| {
            let mut c = cluster(name, &[up.port]);
            let e = &mut c["load_assignment"]["endpoints"][0]["lb_endpoints"][0];
            e["endpoint"]["hostname"] = json!(hostname);
            e["metadata"] =
                json!({ "filter_metadata": { "envoy.transport_socket_match": { "sni": "auto" } } });
            c["transport_socket"] = upstream_tls(None, None, Some((&pki.ca(), vec![])));
            c["transport_socket_matches"] =
                json!([{ "name": "auto", "match": { "sni": "auto" }, "transport_socket": matched }]);
            c
        };
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let port = free_port();
            let v = bootstrap(
                free_port(),
                vec![listener(
                    "http",
                    "127.0.0.1",
                    port,
                    hcm(
                        "in",
                        vec![vhost(
                            "all",
                            &["*"],
                            vec![route("/good", "good"), route("/bad", "bad")],
                        )],
                    ),
                )],
                vec![svc("good", "a.svc.test"), svc("bad", "b.other.test")],
            );
            let p = ProxyProcess::start(kind, &to_yaml(&v), &[]).await;
            let addr = format!("127.0.0.1:{port}");
            let mut got = Vec::new();
            for path in ["/good", "/bad"] {
                let r = http1_once(&addr, get(path, "svc.test"))
                    .await
                    .expect("request");
                let sni = serde_json::from_str::<Value>(&r.text())
                    .map(|v| v["sni"].clone())
                    .unwrap_or(Value::Null);
                got.push(format!("{path}: {} sni={sni}", r.status));
            }
            drop(p);
            seen.push(got);
        }
        let all = skiff_tests::diff::assert_same_lines(&seen);
        assert!(all.contains("/good: 200 sni=\"a.svc.test\""), "{all}");
    })
    .await
}
