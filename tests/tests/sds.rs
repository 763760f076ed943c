//! Secrets over xDS (SDS), side by side with Envoy 1.40, in the shape Istio gives its
//! sidecars: the project's control plane (`xds-control-plane`) serves each proxy an mTLS
//! listener (`DownstreamTlsContext` that requires client certificates, checked through a
//! `combined_validation_context`: the default context's SPIFFE URI SAN matcher with the trusted
//! CA of secret `ROOTCA`) and a cluster that talks mTLS to it (`UpstreamTlsContext` built the
//! same way), both with certificate `default`. The certificates' only names are SPIFFE URIs.
//! Secrets come over ADS (state of the world, and delta), over a separate SDS gRPC source
//! (`envoy_grpc`) and over one named by `google_grpc`'s `target_uri`, a pair of proxies each.
//!
//! Steps: the listener and cluster arrive before their secrets and warm; once the secrets
//! arrive traffic flows (plain client → `out` listener → the mTLS cluster → the `mtls`
//! listener → the echo upstream); a rotated `default` is served by the next handshake while a
//! connection opened before keeps working; a secret whose PEM does not parse is NACKed and
//! changes nothing; a listener added later warms until its secret's `initial_fetch_timeout`,
//! then serves with handshakes that fail until the secret comes. After each step both proxies must have answered alike and agree on the
//! probes, the warming and SDS stats and `/config_dump`'s dynamic active secrets.

use std::path::PathBuf;
use std::time::Duration;

use skiff_tests::client::{get, http1_once, Http1Client};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::xds::{ControlPlane, CLUSTER, LISTENER};
use skiff_tests::{free_port, run_for, scratch_dir};

const CP: &str = env!("CARGO_BIN_EXE_xds-control-plane");
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const SPIFFE: &str = "spiffe://cluster.local/ns/test/sa/proxy";

/// A CA and leaves it signs, whose only name is [`SPIFFE`].
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let dir = scratch_dir("sds-pki");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "sds test CA");
        let ca = p.self_signed(&ca_key).expect("CA");
        Pki { dir, ca, ca_key }
    }

    /// A leaf for [`SPIFFE`]: (certificate PEM, key PEM), also written as `<tag>.pem` and
    /// `<tag>.key` for openssl.
    fn leaf(&self, tag: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names.push(rcgen::SanType::URI(
            SPIFFE.to_string().try_into().expect("URI"),
        ));
        p.distinguished_name.push(rcgen::DnType::CommonName, tag);
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).expect("leaf");
        std::fs::write(self.dir.join(format!("{tag}.pem")), cert.pem()).expect("write");
        std::fs::write(self.dir.join(format!("{tag}.key")), key.serialize_pem()).expect("write");
        (cert.pem(), key.serialize_pem())
    }

    fn files(&self, tag: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{tag}.pem")),
            self.dir.join(format!("{tag}.key")),
        )
    }
}

/// YAML's block scalar for a PEM, indented by `indent`.
fn block(pem: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::from("|\n");
    for line in pem.lines() {
        out.push_str(&pad);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Secrets `default` (certificate and key) and `ROOTCA` (trusted CA), as Istio's agent sends them.
fn secrets(cert: &(String, String), ca: &str) -> String {
    format!(
        r#"- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: default
  tls_certificate:
    certificate_chain:
      inline_string: {chain}    private_key:
      inline_string: {key}- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: ROOTCA
  validation_context:
    trusted_ca:
      inline_string: {ca}"#,
        chain = block(&cert.0, 8),
        key = block(&cert.1, 8),
        ca = block(ca, 8),
    )
}

/// How a pair takes its secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sds {
    /// Over ADS with everything else.
    Ads,
    /// Over ADS, delta (incremental) protocol.
    Delta,
    /// From their own SDS gRPC source (as Istio's `sds-grpc`).
    Grpc,
    /// From their own source through `google_grpc` (`target_uri` the control plane's
    /// address, no channel credentials).
    Google,
}

/// The control plane's TCP port, for `google_grpc` targets.
static CP_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

struct Side {
    node: String,
    proxy: Option<ProxyProcess>,
    admin: u16,
    /// The mTLS listener.
    mtls: u16,
    /// The plain listener whose tcp_proxy goes through the mTLS cluster.
    out: u16,
    /// The TLS listener added later.
    late: u16,
}

struct Pair {
    sds: Sds,
    sides: [Side; 2],
}

fn sds_source(sds: Sds) -> String {
    match sds {
        Sds::Ads | Sds::Delta => "{ads: {}, resource_api_version: V3}".into(),
        Sds::Grpc => "{api_config_source: {api_type: GRPC, transport_api_version: V3, set_node_on_first_message_only: true, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}, resource_api_version: V3}".into(),
        Sds::Google => format!(
            "{{api_config_source: {{api_type: GRPC, transport_api_version: V3, set_node_on_first_message_only: true, grpc_services: [{{google_grpc: {{target_uri: \"127.0.0.1:{}\", stat_prefix: sds}}}}]}}, resource_api_version: V3}}",
            CP_PORT.load(std::sync::atomic::Ordering::Relaxed)
        ),
    }
}

/// Istio's common TLS context: certificate `default`, and the combined validation context
/// (SAN matcher + `ROOTCA`).
fn common_tls(sds: Sds) -> String {
    let src = sds_source(sds);
    format!(
        r#"{{tls_certificate_sds_secret_configs: [{{name: default, sds_config: {src}}}], combined_validation_context: {{default_validation_context: {{match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{SPIFFE}"}}}}]}}, validation_context_sds_secret_config: {{name: ROOTCA, sds_config: {src}}}}}}}"#
    )
}

fn listeners(side: &Side, sds: Sds) -> String {
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: mtls
  address: {{socket_address: {{address: 127.0.0.1, port_value: {mtls}}}}}
  filter_chains:
  - filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: inbound, cluster: plain}}}}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
        require_client_certificate: true
        common_tls_context: {common}
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: out
  address: {{socket_address: {{address: 127.0.0.1, port_value: {out}}}}}
  filter_chains:
  - filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: outbound, cluster: self_mtls}}}}]
"#,
        mtls = side.mtls,
        out = side.out,
        common = common_tls(sds),
    )
}

/// A TLS listener added once the proxy runs, whose certificate `late` comes from SDS with a
/// short `initial_fetch_timeout`.
fn late_listener(side: &Side, sds: Sds) -> String {
    let src = sds_source(sds).replacen(
        "resource_api_version: V3",
        "resource_api_version: V3, initial_fetch_timeout: 2s",
        1,
    );
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: late
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains:
  - filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: late, cluster: plain}}}}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
        common_tls_context: {{tls_certificate_sds_secret_configs: [{{name: late, sds_config: {src}}}]}}
"#,
        port = side.late,
    )
}

/// Secret `late`.
fn late_secret(cert: &(String, String)) -> String {
    format!(
        r#"- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: late
  tls_certificate:
    certificate_chain:
      inline_string: {chain}    private_key:
      inline_string: {key}"#,
        chain = block(&cert.0, 8),
        key = block(&cert.1, 8),
    )
}

fn plain_cluster(port: u16) -> String {
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: plain
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: plain
    endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#
    )
}

/// The cluster that talks mTLS to the side's own `mtls` listener.
fn mtls_cluster(side: &Side, sds: Sds) -> String {
    format!(
        r#"- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: self_mtls
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: self_mtls
    endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      common_tls_context: {common}
"#,
        port = side.mtls,
        common = common_tls(sds),
    )
}

fn bootstrap(node: &str, admin: u16, cp_port: u16, sds: Sds) -> String {
    let api = if sds == Sds::Delta {
        "DELTA_GRPC"
    } else {
        "GRPC"
    };
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
node: {{id: {node}, cluster: sds-test}}
dynamic_resources:
  ads_config:
    api_type: {api}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {cp_port}}}}}}}}}]}}]
"#
    )
}

const STATS: &[&str] = &[
    "listener_manager.lds.update_success",
    "listener_manager.lds.update_rejected",
    "cluster_manager.cds.update_success",
    "cluster_manager.cds.update_rejected",
    "listener_manager.total_listeners_warming",
    "listener_manager.total_listeners_active",
    "cluster_manager.warming_clusters",
    "cluster_manager.active_clusters",
    "sds.default.update_success",
    "sds.default.update_rejected",
    "sds.default.init_fetch_timeout",
    "sds.ROOTCA.update_success",
    "sds.ROOTCA.update_rejected",
    "sds.late.update_success",
    "sds.late.init_fetch_timeout",
];

impl Side {
    /// A request through `out` (and so through both mTLS ends).
    async fn probe(&self) -> String {
        let addr = format!("127.0.0.1:{}", self.out);
        let once = http1_once(&addr, get("/", "x.test"));
        match tokio::time::timeout(Duration::from_secs(3), once).await {
            Err(_) => "timeout".into(),
            Ok(Ok(r)) => format!("{} {}", r.status, r.header("x-upstream").unwrap_or("-")),
            Ok(Err(_)) => "failed".into(),
        }
    }

    async fn stats(&self) -> Vec<String> {
        let all = skiff_tests::Admin::new(self.admin).stats().await;
        STATS
            .iter()
            .map(|n| format!("{n}={}", all.get(*n).map_or("-", |v| v.as_str())))
            .collect()
    }

    /// `/config_dump`'s dynamic active and warming secrets: name and version.
    async fn secrets(&self) -> Vec<String> {
        let text = skiff_tests::Admin::new(self.admin)
            .get("/config_dump")
            .await
            .text();
        let v: serde_json::Value = serde_json::from_str(&text).expect("config_dump JSON");
        let mut out = Vec::new();
        for c in v["configs"].as_array().into_iter().flatten() {
            if !c["@type"]
                .as_str()
                .unwrap_or_default()
                .ends_with("SecretsConfigDump")
            {
                continue;
            }
            for s in c["dynamic_warming_secrets"]
                .as_array()
                .into_iter()
                .flatten()
            {
                out.push(format!(
                    "{} {} warming",
                    s["name"].as_str().unwrap_or("-"),
                    s["version_info"].as_str().unwrap_or("-"),
                ));
            }
            for s in c["dynamic_active_secrets"].as_array().into_iter().flatten() {
                let key = &s["secret"]["tls_certificate"]["private_key"];
                out.push(format!(
                    "{} {} {}",
                    s["name"].as_str().unwrap_or("-"),
                    s["version_info"].as_str().unwrap_or("-"),
                    // The private key is never shown.
                    if key.is_null() || key.to_string().contains("[redacted]") {
                        "redacted"
                    } else {
                        "SHOWN"
                    }
                ));
            }
        }
        out.sort();
        out
    }
}

/// The certificate the `mtls` listener serves to a client presenting `client` (PEM), or an
/// error when the handshake fails.
async fn served(port: u16, client: (PathBuf, PathBuf)) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(&client.0)
            .arg("-key")
            .arg(&client.1)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        let begin = text.find("-----BEGIN CERTIFICATE-----");
        let end = text.find("-----END CERTIFICATE-----");
        match (begin, end) {
            (Some(b), Some(e)) => Ok(text[b..e + "-----END CERTIFICATE-----".len()].to_string()),
            _ => Err("no certificate".into()),
        }
    })
    .await
    .expect("openssl thread")
}

fn same_cert(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.split_whitespace().collect::<String>();
    norm(a) == norm(b)
}

async fn set_all(
    cp: &mut ControlPlane,
    pairs: &[Pair],
    t: &str,
    v: &str,
    yaml: impl Fn(&Side, Sds) -> String,
) {
    for p in pairs {
        for s in &p.sides {
            cp.set(&s.node, t, v, &yaml(s, p.sds)).await;
        }
    }
}

/// Whether `node` answered the response of `t` at `v` yet.
fn answered(cp: &ControlPlane, node: &str, t: &str, v: &str) -> bool {
    let events = cp.events();
    let Some(nonce) = events
        .iter()
        .rev()
        .find(|e| {
            e["event"] == "response" && e["node"] == node && e["type_url"] == t && e["version"] == v
        })
        .and_then(|e| e["nonce"].as_str().map(str::to_string))
    else {
        return false;
    };
    events
        .iter()
        .any(|e| e["event"] == "request" && e["node"] == node && e["nonce"] == nonce.as_str())
}

/// Both proxies of each pair answered `t` at `v` alike; returns skiff's NACK messages.
async fn answers(cp: &ControlPlane, pairs: &[Pair], t: &str, v: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for p in pairs {
        let envoy = cp.answer(&p.sides[0].node, t, v).await;
        let skiff = cp.answer(&p.sides[1].node, t, v).await;
        assert_eq!(
            (skiff.error.is_some(), &skiff.version),
            (envoy.error.is_some(), &envoy.version),
            "{t} {v} ({:?}): skiff answered {skiff:?}, Envoy {envoy:?}",
            p.sds
        );
        out.push(skiff.error);
    }
    out
}

/// The same probe, stats and dumped secrets on both proxies of each pair; the probe is `want`.
async fn check(pairs: &[Pair], what: &str, want: &str) {
    check_with(pairs, what, want, true).await
}

/// [`check`]; without `dump_versions`, the dumped secrets are compared by name only.
async fn check_with(pairs: &[Pair], what: &str, want: &str, dump_versions: bool) {
    tokio::time::sleep(Duration::from_millis(400)).await;
    let names = |v: Vec<String>| -> Vec<String> {
        if dump_versions {
            v
        } else {
            v.iter()
                .map(|l| l.split(' ').next().unwrap_or_default().to_string())
                .collect()
        }
    };
    for p in pairs {
        let [envoy, skiff] = &p.sides;
        let e = (
            envoy.probe().await,
            envoy.stats().await,
            names(envoy.secrets().await),
        );
        let s = (
            skiff.probe().await,
            skiff.stats().await,
            names(skiff.secrets().await),
        );
        assert_eq!(
            s, e,
            "after '{what}' ({:?}): skiff (left) and Envoy (right) differ",
            p.sds
        );
        assert_eq!(e.0, want, "after '{what}' ({:?})", p.sds);
    }
}

fn start_side(kind: Kind, sds: Sds, cp_port: u16) -> Side {
    let node = format!("{}-{sds:?}", kind.name());
    let admin = free_port();
    let mut side = Side {
        node,
        proxy: None,
        admin,
        mtls: free_port(),
        out: free_port(),
        late: free_port(),
    };
    side.proxy = Some(ProxyProcess::spawn(
        kind,
        &bootstrap(&side.node, admin, cp_port, sds),
        &["--concurrency", "1", "--drain-time-s", "1"],
        admin,
    ));
    side
}

fn bad_default(ca: &str) -> String {
    secrets(&("not a certificate".into(), "not a key".into()), ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_shaped_mtls_over_sds_warms_rotates_and_refuses_as_envoy_does() {
    skiff_tests::require_program("openssl", "apt-get install openssl");
    run_for(Duration::from_secs(120), async {
        let up = EchoUpstream::start("UP").await;
        let pki = Pki::new();
        let ca = pki.ca.pem();
        let first = pki.leaf("first");
        let second = pki.leaf("second");
        pki.leaf("client");
        let dir = scratch_dir("sds");
        let mut cp = ControlPlane::start(CP, 0, &dir.join("xds.sock")).await;
        CP_PORT.store(cp.port, std::sync::atomic::Ordering::Relaxed);
        let mut pairs = Vec::new();
        for sds in [Sds::Ads, Sds::Delta, Sds::Grpc, Sds::Google] {
            pairs.push(Pair {
                sds,
                sides: [
                    start_side(Kind::Envoy, sds, cp.port),
                    start_side(Kind::Skiff, sds, cp.port),
                ],
            });
        }
        let up_port = up.port();

        // 1. Listeners and clusters before their secrets: accepted, and they warm.
        set_all(&mut cp, &pairs, CLUSTER, "1", |_, _| plain_cluster(up_port)).await;
        answers(&cp, &pairs, CLUSTER, "1").await;
        set_all(&mut cp, &pairs, LISTENER, "1", listeners).await;
        answers(&cp, &pairs, LISTENER, "1").await;
        set_all(&mut cp, &pairs, CLUSTER, "2", |s, sds| {
            format!("{}{}", plain_cluster(up_port), mtls_cluster(s, sds))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        check(&pairs, "listener and cluster before their secrets", "failed").await;
        // Over ADS the CDS answer is held back while a cluster warms (Envoy's cluster
        // manager pauses CDS) and goes out once the secrets are in.
        for p in &pairs {
            for s in &p.sides {
                assert!(
                    !answered(&cp, &s.node, CLUSTER, "2"),
                    "{}: answered CDS while self_mtls warms",
                    s.node
                );
            }
        }

        // 2. The secrets arrive: both warm, and traffic flows through both mTLS ends.
        set_all(&mut cp, &pairs, SECRET, "1", |_, _| secrets(&first, &ca)).await;
        answers(&cp, &pairs, SECRET, "1").await;
        answers(&cp, &pairs, CLUSTER, "2").await;
        check(&pairs, "secrets arrived", "200 UP").await;
        for p in &pairs {
            for s in &p.sides {
                let cert = served(s.mtls, pki.files("client")).await;
                assert!(
                    cert.as_ref().is_ok_and(|c| same_cert(c, &first.0)),
                    "{} serves {cert:?}",
                    s.node
                );
            }
        }

        // 3. Rotation: a connection opened before keeps working, the next handshake gets
        // the new certificate.
        let mut held = Vec::new();
        for p in &pairs {
            for s in &p.sides {
                let mut c = Http1Client::connect(&format!("127.0.0.1:{}", s.out))
                    .await
                    .expect("connect");
                let r = c.send(get("/", "x.test")).await.expect("first request");
                assert_eq!(r.status, 200, "{}", s.node);
                held.push((s.node.clone(), c));
            }
        }
        set_all(&mut cp, &pairs, SECRET, "2", |_, _| secrets(&second, &ca)).await;
        answers(&cp, &pairs, SECRET, "2").await;
        check(&pairs, "default rotated", "200 UP").await;
        for (node, c) in &mut held {
            let r = c.send(get("/", "x.test")).await;
            assert!(
                r.as_ref().is_ok_and(|r| r.status == 200),
                "{node}: the connection opened before the rotation: {r:?}"
            );
        }
        for p in &pairs {
            for s in &p.sides {
                let cert = served(s.mtls, pki.files("client")).await;
                assert!(
                    cert.as_ref().is_ok_and(|c| same_cert(c, &second.0)),
                    "{} serves {cert:?} after the rotation",
                    s.node
                );
            }
        }

        // 4. A secret that does not parse: NACKed (skiff names the field), nothing changes.
        set_all(&mut cp, &pairs, SECRET, "3", |_, _| bad_default(&ca)).await;
        let errors = answers(&cp, &pairs, SECRET, "3").await;
        for e in errors {
            let e = e.unwrap_or_default();
            assert!(
                e.contains("tls_certificate_sds_secret_configs[0] (secret 'default').tls_certificate.certificate_chain"),
                "skiff's NACK names the path: {e}"
            );
        }
        // Envoy's `/config_dump` shows the refused version as the active one while it goes on
        // serving the previous one; skiff shows the one in force (docs/compatibility.md).
        check_with(&pairs, "bad secret", "200 UP", false).await;
        for p in &pairs {
            for s in &p.sides {
                let cert = served(s.mtls, pki.files("client")).await;
                assert!(
                    cert.as_ref().is_ok_and(|c| same_cert(c, &second.0)),
                    "{} serves {cert:?} after the bad secret",
                    s.node
                );
            }
        }
        drop(held);

        // 5. A listener added while the proxy runs warms until its secret arrives ...
        set_all(&mut cp, &pairs, LISTENER, "2", |s, sds| {
            format!("{}{}", listeners(s, sds), late_listener(s, sds))
        })
        .await;
        answers(&cp, &pairs, LISTENER, "2").await;
        // (The dumps still differ by the refused `default` of step 4.)
        check_with(&pairs, "listener added before its secret", "200 UP", false).await;
        // ... or until its initial_fetch_timeout: then it serves and its handshakes fail.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        check_with(&pairs, "initial_fetch_timeout of the secret", "200 UP", false).await;
        for p in &pairs {
            for s in &p.sides {
                let cert = served(s.late, pki.files("client")).await;
                assert!(cert.is_err(), "{}: the handshake succeeded: {cert:?}", s.node);
            }
        }
        // 6. The secret comes late: the next handshake has it.
        set_all(&mut cp, &pairs, SECRET, "4", |_, _| {
            format!("{}{}", secrets(&second, &ca), late_secret(&first))
        })
        .await;
        answers(&cp, &pairs, SECRET, "4").await;
        check_with(&pairs, "late secret", "200 UP", false).await;
        for p in &pairs {
            for s in &p.sides {
                let cert = served(s.late, pki.files("client")).await;
                assert!(
                    cert.as_ref().is_ok_and(|c| same_cert(c, &first.0)),
                    "{} serves {cert:?} once its secret came",
                    s.node
                );
            }
        }
        cp.stop().await;
    })
    .await;
}
