//! `forward_client_cert_details` and `set_current_client_cert_details` side by side with Envoy
//! 1.40: the `x-forwarded-client-cert` an upstream receives, byte for byte, for every mode,
//! with and without a client certificate, with and without an incoming header, and over plain
//! text. Istio's inbound listeners use `APPEND_FORWARD` with subject, URI and DNS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for, scratch_dir};

const MODES: &[(&str, &str)] = &[
    ("SANITIZE", ""),
    ("FORWARD_ONLY", ""),
    (
        "APPEND_FORWARD",
        "set_current_client_cert_details: {subject: true, uri: true, dns: true}",
    ),
    (
        "SANITIZE_SET",
        "set_current_client_cert_details: {cert: true, chain: true, subject: true, uri: true, dns: true}",
    ),
    ("ALWAYS_FORWARD_ONLY", ""),
    ("APPEND_FORWARD", ""),
];

#[derive(Clone)]
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn pki(dir: &Path) -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "xfcc CA");
    let ca = p.self_signed(&ca_key).expect("CA");
    let leaf = |name: &str, uri: &str, dns: &str| {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec![dns.to_string()]).expect("params");
        p.subject_alt_names.push(rcgen::SanType::URI(
            uri.to_string().try_into().expect("URI"),
        ));
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "skiff tests");
        let cert = p.signed_by(&key, &ca, &ca_key).expect("leaf");
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k)
    };
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write");
    Pki {
        ca: ca_path,
        server: leaf(
            "server",
            "spiffe://cluster.local/ns/default/sa/server",
            "server.test",
        ),
        client: leaf(
            "client",
            "spiffe://cluster.local/ns/default/sa/client",
            "client.test",
        ),
    }
}

fn config(admin: u16, ports: &[u16], plain: u16, upstream: u16, pki: &Pki) -> String {
    let hcm = |mode: &str, details: &str| {
        let details = if details.is_empty() {
            String::new()
        } else {
            format!(", {details}")
        };
        format!(
            r#"{{name: hcm, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: x, forward_client_cert_details: {mode}{details}, route_config: {{virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]}}]}}, http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]}}}}"#
        )
    };
    let mut listeners = String::new();
    for (i, (mode, details)) in MODES.iter().enumerate() {
        listeners.push_str(&format!(
            r#"
  - name: l{i}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters: [{hcm}]
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
            validation_context: {{trusted_ca: {{filename: {ca}}}}}"#,
            port = ports[i],
            hcm = hcm(mode, details),
            cert = pki.server.0.display(),
            key = pki.server.1.display(),
            ca = pki.ca.display(),
        ));
    }
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{listeners}
  - name: plain
    address: {{socket_address: {{address: 127.0.0.1, port_value: {plain}}}}}
    filter_chains: [{{filters: [{plain_hcm}]}}]
  clusters:
  - name: up
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]}}
"#,
        plain_hcm = hcm(
            "APPEND_FORWARD",
            "set_current_client_cert_details: {uri: true}"
        ),
    )
}

/// curl for `path` over TLS (with or without the client certificate) or plain text.
fn curl_command(port: u16, tls: Option<(&Pki, bool)>, path: &str) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S"]);
    match tls {
        Some((pki, with_cert)) => {
            cmd.args([
                "--resolve",
                &format!("server.test:{port}:127.0.0.1"),
                "--cacert",
                &pki.ca.display().to_string(),
            ]);
            if with_cert {
                cmd.args([
                    "--cert",
                    &pki.client.0.display().to_string(),
                    "--key",
                    &pki.client.1.display().to_string(),
                ]);
            }
            cmd.arg(format!("https://server.test:{port}{path}"));
        }
        None => {
            cmd.arg(format!("http://127.0.0.1:{port}{path}"));
        }
    }
    cmd
}

/// Runs `cmd`, which must succeed; its output.
fn output(mut cmd: Command) -> String {
    let out = cmd.output().expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One request with curl: over TLS with or without the client certificate, with or without an
/// incoming header; `tag` marks it for the upstream.
fn curl(port: u16, tls: Option<(&Pki, bool)>, incoming: bool, tag: &str) {
    let mut cmd = curl_command(port, tls, "/");
    cmd.args(["-o", "/dev/null", "-H", &format!("x-tag: {tag}")]);
    if incoming {
        cmd.args([
            "-H",
            "x-forwarded-client-cert: By=spiffe://earlier;Hash=00ff",
        ]);
    }
    output(cmd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_client_cert_as_envoy() {
    skiff_tests::require_program("curl", "apt-get install curl");
    run_for(Duration::from_secs(60), async {
        let dir = scratch_dir("xfcc");
        let pki = pki(&dir);
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let upstream = EchoUpstream::start("up").await;
            let ports: Vec<u16> = MODES.iter().map(|_| free_port()).collect();
            let (admin, plain) = (free_port(), free_port());
            let p = ProxyProcess::start(
                kind,
                &config(admin, &ports, plain, upstream.port(), &pki),
                &[],
            )
            .await;
            let mut tags = Vec::new();
            for (i, port) in ports.iter().enumerate() {
                for with_cert in [true, false] {
                    for incoming in [true, false] {
                        let tag = format!("{} {i} cert={with_cert} in={incoming}", MODES[i].0);
                        let (port, pki) = (*port, &pki);
                        let t = tag.clone();
                        tokio::task::block_in_place(|| {
                            curl(port, Some((pki, with_cert)), incoming, &t)
                        });
                        tags.push(tag);
                    }
                }
            }
            for incoming in [true, false] {
                let tag = format!("plain in={incoming}");
                tokio::task::block_in_place(|| curl(plain, None, incoming, &tag));
                tags.push(tag);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let got: Vec<String> = upstream
                .rec
                .requests()
                .iter()
                .map(|r| {
                    format!(
                        "{}: {}",
                        r.header("x-tag").unwrap_or("?"),
                        r.header_all("x-forwarded-client-cert").join(" | ")
                    )
                })
                .collect();
            assert_eq!(got.len(), tags.len(), "{kind:?}: {got:#?}\n{}", p.logs_tail(20));
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left) and Envoy (right)");
        // Istio's inbound form is there.
        assert!(
            seen[0].iter().any(|l| l.starts_with("APPEND_FORWARD 2 cert=true in=true: By=spiffe://earlier;Hash=00ff,By=spiffe://cluster.local/ns/default/sa/server;Hash=")),
            "{:#?}",
            seen[0]
        );
    })
    .await;
}

/// Routes that match on the client's certificate (`tls_context`), over TLS with and without
/// one and over plain text: the route each proxy picks.
fn tls_match_config(admin: u16, tls: u16, plain: u16, pki: &Pki) -> String {
    let hcm = r#"{name: hcm, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: t, route_config: {virtual_hosts: [{name: a, domains: ["*"], routes: [
        {match: {prefix: /v, tls_context: {validated: false}}, direct_response: {status: 200, body: {inline_string: unvalidated}}},
        {match: {prefix: /, tls_context: {presented: true, validated: true}}, direct_response: {status: 200, body: {inline_string: presented}}},
        {match: {prefix: /, tls_context: {presented: false}}, direct_response: {status: 200, body: {inline_string: none}}},
        {match: {prefix: /}, direct_response: {status: 200, body: {inline_string: other}}}]}]}, http_filters: [{name: r, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]}}"#;
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: tls
    address: {{socket_address: {{address: 127.0.0.1, port_value: {tls}}}}}
    filter_chains:
    - filters: [{hcm}]
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
            validation_context: {{trusted_ca: {{filename: {ca}}}}}
  - name: plain
    address: {{socket_address: {{address: 127.0.0.1, port_value: {plain}}}}}
    filter_chains: [{{filters: [{hcm}]}}]
"#,
        cert = pki.server.0.display(),
        key = pki.server.1.display(),
        ca = pki.ca.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_the_client_certificate_as_envoy() {
    skiff_tests::require_program("curl", "apt-get install curl");
    run_for(Duration::from_secs(60), async {
        let dir = scratch_dir("tls-match");
        let pki = pki(&dir);
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let (admin, tls, plain) = (free_port(), free_port(), free_port());
            let _p =
                ProxyProcess::start(kind, &tls_match_config(admin, tls, plain, &pki), &[]).await;
            let got = tokio::task::spawn_blocking({
                let pki = pki.clone();
                move || {
                    let mut got = Vec::new();
                    for path in ["/", "/v"] {
                        got.push(output(curl_command(tls, Some((&pki, true)), path)));
                        got.push(output(curl_command(tls, Some((&pki, false)), path)));
                        got.push(output(curl_command(plain, None, path)));
                    }
                    got
                }
            })
            .await
            .expect("curl");
            seen.push(got);
        }
        assert_eq!(
            seen[0],
            [
                "presented",
                "none",
                "none",
                "presented",
                "unvalidated",
                "unvalidated"
            ],
            "envoy"
        );
        assert_eq!(seen[1], seen[0], "skiff");
    })
    .await;
}
