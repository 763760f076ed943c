//! How skiff reaches its xDS server through the bootstrap cluster, side by side with Envoy 1.40,
//! in the shape Envoy Gateway's bootstrap has: a `STRICT_DNS` cluster whose name a DNS server
//! of the test's own answers, mutual TLS with the client certificate and the trusted CA from
//! SDS files, HTTP/2 negotiated by ALPN (the control plane, like gRPC servers, refuses a client
//! that does not offer `h2`). Both proxies must connect, take their resources and carry
//! traffic; with a CA that did not sign the server's certificate, neither may connect.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_tests::dns::{DnsServer, Zone};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::xds::{ControlPlane, CLUSTER, LISTENER};
use skiff_tests::{free_port, run_for, scratch_dir, Admin};

const CP: &str = env!("CARGO_BIN_EXE_xds-control-plane");
const XDS_NAME: &str = "xds.skiff.test";

/// A CA and the leaves it signs, as PEM files in `dir`.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(dir: &Path, tag: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{tag} CA"));
        let ca = p.self_signed(&ca_key).expect("CA");
        std::fs::write(dir.join(format!("{tag}-ca.pem")), ca.pem()).expect("write CA");
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
        }
    }

    fn ca(&self, tag: &str) -> PathBuf {
        self.dir.join(format!("{tag}-ca.pem"))
    }

    /// A leaf for these names (an address is an IP SAN).
    fn leaf(&self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut p = rcgen::CertificateParams::new(sans).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).expect("leaf");
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k)
    }
}

/// The SDS files of the xDS cluster's TLS: the client certificate and the trusted CA, as
/// Envoy Gateway mounts them.
fn sds_files(dir: &Path, tag: &str, client: &(PathBuf, PathBuf), ca: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{tag}-xds-certificate.yaml"));
    let trust = dir.join(format!("{tag}-xds-trusted-ca.yaml"));
    std::fs::write(
        &cert,
        format!(
            r#"resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: xds_certificate
  tls_certificate:
    certificate_chain: {{filename: {}}}
    private_key: {{filename: {}}}
"#,
            client.0.display(),
            client.1.display()
        ),
    )
    .expect("write");
    std::fs::write(
        &trust,
        format!(
            r#"resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: xds_trusted_ca
  validation_context:
    trusted_ca: {{filename: {}}}
    match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: {XDS_NAME}}}}}]
"#,
            ca.display()
        ),
    )
    .expect("write");
    (cert, trust)
}

fn bootstrap(
    node: &str,
    admin: u16,
    dns: &DnsServer,
    cp_port: u16,
    (cert, trust): &(PathBuf, PathBuf),
) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
node: {{id: {node}, cluster: xds-transport}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds_cluster}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 2s}}
  cds_config: {{ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 2s}}
static_resources:
  clusters:
  - name: xds_cluster
    type: STRICT_DNS
    connect_timeout: 1s
    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
        resolvers: [{{socket_address: {{address: 127.0.0.1, port_value: {dns_port}}}}}]
        dns_resolver_options: {{no_default_search_domain: true}}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds_cluster
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {XDS_NAME}, port_value: {cp_port}}}}}}}}}]}}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {XDS_NAME}
        common_tls_context:
          tls_params: {{tls_maximum_protocol_version: TLSv1_3}}
          tls_certificate_sds_secret_configs:
          - name: xds_certificate
            sds_config: {{path_config_source: {{path: {cert}}}, resource_api_version: V3}}
          validation_context_sds_secret_config:
            name: xds_trusted_ca
            sds_config: {{path_config_source: {{path: {trust}}}, resource_api_version: V3}}
"#,
        dns_port = dns.addr.port(),
        cert = cert.display(),
        trust = trust.display(),
    )
}

/// A listener that passes connections to cluster `a`, and that cluster.
async fn serve_resources(cp: &mut ControlPlane, node: &str, port: u16, upstream: u16) {
    let listener = format!(
        r#"- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: tcp
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains: [{{filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tcp, cluster: a}}}}]}}]
"#
    );
    let cluster = format!(
        r#"- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: a
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: a
    endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#
    );
    cp.set(node, CLUSTER, "1", &cluster).await;
    cp.set(node, LISTENER, "1", &listener).await;
}

async fn probe(port: u16) -> String {
    let addr = format!("127.0.0.1:{port}");
    let once = skiff_tests::client::http1_once(&addr, skiff_tests::client::get("/", "a"));
    match tokio::time::timeout(Duration::from_secs(3), once).await {
        Ok(Ok(r)) => format!("{} {}", r.status, r.header("x-upstream").unwrap_or("-")),
        Ok(Err(e)) if e.contains("refused") => "refused".into(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timeout".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_over_mutual_tls_through_a_dns_cluster_as_envoy() {
    run_for(Duration::from_secs(90), async {
        let dir = scratch_dir("xds-transport");
        let good = Pki::new(&dir, "good");
        let other = Pki::new(&dir, "other");
        let server = good.leaf("server", &[XDS_NAME, "127.0.0.1"]);
        let client = good.leaf("client", &["proxy.skiff.test"]);
        let dns = DnsServer::start().await;
        dns.set(
            XDS_NAME,
            Zone::Addresses(vec!["127.0.0.1".parse().expect("ip")], 30),
        );
        let uds = dir.join("cp.sock");
        let (cert, key, ca) = (
            server.0.display().to_string(),
            server.1.display().to_string(),
            good.ca("good").display().to_string(),
        );
        let args = [
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ];
        let mut cp = ControlPlane::start_with(CP, 0, &uds, &args).await;
        let upstream = EchoUpstream::start("a").await;

        // Trusting the right CA: both connect, take the listener and carry traffic.
        let mut ok = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let node = format!("{}-good", kind.name());
            let (admin, port) = (free_port(), free_port());
            serve_resources(&mut cp, &node, port, upstream.port()).await;
            let files = sds_files(&dir, &node, &client, &good.ca("good"));
            let yaml = bootstrap(&node, admin, &dns, cp.port, &files);
            let p = ProxyProcess::start(kind, &yaml, &[]).await;
            let a = Admin::new(admin);
            a.wait_stat(
                "listener_manager.lds.update_success",
                Duration::from_secs(10),
                |v| v >= 1,
            )
            .await;
            let connected = a.stat("control_plane.connected_state").await;
            ok.push((kind, p, port, connected));
        }
        for (kind, p, port, connected) in &ok {
            let seen = probe(*port).await;
            assert_eq!(
                (seen.as_str(), *connected),
                ("200 a", Some(1)),
                "{kind:?} over TLS: {}",
                p.logs_tail(30)
            );
        }
        let handshakes: Vec<_> = cp
            .events()
            .into_iter()
            .filter(|e| e["event"] == "tls")
            .collect();
        assert!(handshakes.len() >= 2, "{handshakes:?}");
        for h in &handshakes {
            assert_eq!(h["sni"], XDS_NAME, "{h}");
            assert_eq!(h["alpn"], "h2", "{h}");
            assert_eq!(h["client_cert"], true, "{h}");
        }
        assert!(
            !dns.queries(XDS_NAME, "A").is_empty(),
            "the xDS cluster's name was resolved by the test's DNS server"
        );
        drop(ok);

        // Trusting a CA that did not sign the server: neither connects.
        for kind in [Kind::Envoy, Kind::Skiff] {
            let node = format!("{}-bad", kind.name());
            let admin = free_port();
            serve_resources(&mut cp, &node, free_port(), upstream.port()).await;
            let files = sds_files(&dir, &node, &client, &other.ca("other"));
            let yaml = bootstrap(&node, admin, &dns, cp.port, &files);
            let p = ProxyProcess::start(kind, &yaml, &[]).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let a = Admin::new(admin);
            assert_eq!(
                (
                    a.stat("control_plane.connected_state").await,
                    a.counter("listener_manager.lds.update_success").await
                ),
                (Some(0), 0),
                "{kind:?} with the wrong CA: {}",
                p.logs_tail(30)
            );
            let asked = cp
                .requests(&node)
                .into_iter()
                .filter(|r| r["event"] == "request")
                .count();
            assert_eq!(
                asked, 0,
                "{kind:?} sent requests over an unverified connection"
            );
        }
        // google_grpc with ssl_credentials to the server's address: gRPC checks the
        // certificate against the target (an IP SAN here) and sends the client certificate.
        let before = cp.events().iter().filter(|e| e["event"] == "tls").count();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let node = format!("{}-google", kind.name());
            let (admin, port) = (free_port(), free_port());
            serve_resources(&mut cp, &node, port, upstream.port()).await;
            let yaml = format!(
                r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
node: {{id: {node}, cluster: xds-transport}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - google_grpc:
        target_uri: "127.0.0.1:{cp_port}"
        stat_prefix: ads
        channel_credentials:
          ssl_credentials:
            root_certs: {{filename: {ca}}}
            cert_chain: {{filename: {chain}}}
            private_key: {{filename: {key}}}
  lds_config: {{ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 2s}}
  cds_config: {{ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 2s}}
"#,
                cp_port = cp.port,
                ca = good.ca("good").display(),
                chain = client.0.display(),
                key = client.1.display(),
            );
            let p = ProxyProcess::start(kind, &yaml, &[]).await;
            Admin::new(admin)
                .wait_stat(
                    "listener_manager.lds.update_success",
                    Duration::from_secs(10),
                    |v| v >= 1,
                )
                .await;
            assert_eq!(
                probe(port).await,
                "200 a",
                "{kind:?} over google_grpc: {}",
                p.logs_tail(30)
            );
        }
        let google: Vec<_> = cp
            .events()
            .into_iter()
            .filter(|e| e["event"] == "tls")
            .skip(before)
            .collect();
        assert!(google.len() >= 2, "{google:?}");
        for h in &google {
            // No SNI for an address, from either.
            assert_eq!(
                (&h["sni"], &h["alpn"], &h["client_cert"]),
                (
                    &serde_json::Value::Null,
                    &serde_json::json!("h2"),
                    &serde_json::json!(true)
                ),
                "{h}"
            );
        }

        let refused = cp
            .events()
            .into_iter()
            .filter(|e| e["event"] == "tls_error")
            .count();
        assert!(
            refused >= 2,
            "both refused the server's certificate: {refused} failed handshakes"
        );
        cp.stop().await;
    })
    .await;
}

/// `rate_limit_settings` on ADS: a bucket of 2 tokens refilled 4 times a second. A burst of
/// cluster updates makes both proxies pace their ACKs: in no stretch of time do they send more
/// requests than the bucket allows, both count `rate_limit_enforced`, and both end at the last
/// version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_settings_pace_the_requests_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let dir = scratch_dir("xds-rate-limit");
        let uds = dir.join("cp.sock");
        let mut cp = ControlPlane::start(CP, 0, &uds).await;
        let upstream = EchoUpstream::start("a").await;
        let mut sides = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let node = format!("{}-rl", kind.name());
            let admin = free_port();
            serve_resources(&mut cp, &node, free_port(), upstream.port()).await;
            let yaml = format!(
                r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
node: {{id: {node}, cluster: xds-transport}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    rate_limit_settings: {{max_tokens: 2, fill_rate: 4}}
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: {}}}}}}}}}]}}]
"#,
                uds.display()
            );
            let p = ProxyProcess::start(kind, &yaml, &[]).await;
            sides.push((kind, node, admin, p));
        }
        // A burst: six versions of the cluster, as fast as the control plane takes them.
        for v in 2..=7 {
            let cluster = format!(
                r#"- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: a
  type: STATIC
  connect_timeout: {v}s
  load_assignment:
    cluster_name: a
    endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]
"#,
                upstream.port()
            );
            for (_, node, _, _) in &sides {
                cp.set(node, CLUSTER, &v.to_string(), &cluster).await;
            }
        }
        let mut counts = Vec::new();
        for (kind, node, admin, p) in &sides {
            let a = Admin::new(*admin);
            let done = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                let acked = cp
                    .requests(node)
                    .iter()
                    .any(|r| r["type_url"] == CLUSTER && r["version"] == "7");
                if acked || tokio::time::Instant::now() > done {
                    assert!(acked, "{kind:?} never ACKed version 7: {}", p.logs_tail(20));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let times: Vec<u64> = cp
                .requests(node)
                .iter()
                .filter_map(|r| r["ms"].as_u64())
                .collect();
            // Within any stretch of d ms: at most 2 tokens + d / 250 refilled, and one more
            // for the control plane's own timing.
            for (i, a_ms) in times.iter().enumerate() {
                for (j, b_ms) in times.iter().enumerate().skip(i) {
                    let allowed = 2 + (b_ms - a_ms) / 250 + 1;
                    assert!(
                        (j - i + 1) as u64 <= allowed,
                        "{kind:?} sent {} requests in {} ms: {times:?}",
                        j - i + 1,
                        b_ms - a_ms
                    );
                }
            }
            let answered = cp
                .events()
                .iter()
                .filter(|e| e["event"] == "response" && e["node"] == node.as_str())
                .count();
            eprintln!("{kind:?}: {answered} responses, requests at {times:?} ms");
            assert!(times.len() >= 4, "{kind:?}: {times:?}");
            counts.push(times.len());
            assert!(
                a.counter("control_plane.rate_limit_enforced").await > 0,
                "{kind:?} counted no enforcement"
            );
        }
        // Waiting ACKs of a type collapse into the latest, as in Envoy (without that, skiff
        // sent 10 requests where Envoy sent 5).
        assert!(counts[1] <= counts[0] + 1, "requests (Envoy, skiff): {counts:?}");
        cp.stop().await;
    })
    .await;
}
