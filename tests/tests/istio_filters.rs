//! Istio's HTTP filters in skiff, against an Envoy 1.40 that plays an Istio sidecar's inbound
//! side, and against recording upstreams:
//! - `istio.alpn`: skiff's upstream TLS offers `istio-http/1.1` or `istio-h2` (+ `istio`) by
//!   the protocol each request goes upstream in, so Envoy picks its HTTP chain (chosen on the
//!   ClientHello's ALPN, as Istio's virtualInbound does) instead of its TCP one; a cluster whose
//!   `istio` metadata says `alpn_override: "false"` keeps its own list and lands on TCP.
//! - `istio.metadata_exchange` (peer metadata over headers): outbound requests carry the node's
//!   id and workload metadata; inbound, the peer's headers are removed before the application
//!   and the response carries skiff's only when the request carried the peer's.
//! - `fault` and `cors` without configuration, and `istio.stats`, are accepted; `istio.stats`
//!   is counted as accepted without effect.
//!
//! Envoy 1.40 has no Istio filters, so skiff's side is checked against Istio's documented
//! behaviour; Envoy is the peer whose chain selection shows what skiff offered.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for, scratch_dir, Admin};

fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "istio CA");
    let ca = p.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://cluster.local/ns/default/sa/reviews"
            .to_string()
            .try_into()
            .expect("URI"),
    ));
    let leaf = p.signed_by(&key, &ca, &ca_key).expect("leaf");
    let paths = (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, leaf.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

/// Envoy as an Istio inbound side: an HTTP chain for Istio's HTTP ALPNs (answering with the
/// protocol it saw), a TCP chain for the rest of TLS.
fn inbound(
    admin: u16,
    port: u16,
    upstream: u16,
    (_, cert, key): &(PathBuf, PathBuf, PathBuf),
) -> String {
    let tls = |alpn: &str| {
        format!(
            r#"transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [{alpn}]
            tls_certificates: [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}]"#,
            cert.display(),
            key.display()
        )
    };
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: virtualInbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
    filter_chains:
    - filter_chain_match:
        transport_protocol: tls
        application_protocols: [istio-http/1.0, istio-http/1.1, istio-h2]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_http
          route_config:
            response_headers_to_add:
            - header: {{key: x-chain, value: "http %PROTOCOL%"}}
            virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: app}}}}]}}]
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
      {http_tls}
    - filter_chain_match: {{transport_protocol: tls}}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: inbound_tcp, cluster: app}}
      {tcp_tls}
  clusters:
  - name: app
    load_assignment:
      cluster_name: app
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#,
        http_tls = tls("h2, http/1.1"),
        tcp_tls = tls("istio-peer-exchange, h2, http/1.1"),
    )
}

/// A cluster to the inbound side over TLS with Istio's cluster ALPN.
fn mtls_cluster(name: &str, port: u16, h2: bool, no_override: bool, ca: &Path) -> String {
    let alpn = if h2 {
        "[istio-peer-exchange, istio, h2]"
    } else {
        "[istio-peer-exchange, istio]"
    };
    let protocol = if h2 {
        r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"#
    } else {
        ""
    };
    let metadata = if no_override {
        "\n    metadata: {filter_metadata: {istio: {alpn_override: \"false\"}}}"
    } else {
        "\n    metadata: {filter_metadata: {istio: {services: [{host: reviews.default.svc.cluster.local}]}}}"
    };
    format!(
        r#"
  - name: {name}
    connect_timeout: 1s{protocol}{metadata}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: {alpn}
          validation_context:
            trusted_ca: {{filename: {ca}}}
            match_subject_alt_names: [{{exact: "spiffe://cluster.local/ns/default/sa/reviews"}}]
        sni: outbound_.9080_._.reviews.default.svc.cluster.local"#,
        ca = ca.display(),
    )
}

const PEER_OUTBOUND: &str = r#"
          - name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/io.istio.http.peer_metadata.Config
              value:
                upstream_discovery: [{istio_headers: {}}, {workload_discovery: {}}]
                upstream_propagation: [{istio_headers: {}}]"#;

const PEER_INBOUND: &str = r#"
          - name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/io.istio.http.peer_metadata.Config
              value:
                downstream_discovery: [{istio_headers: {}}, {workload_discovery: {}}]
                downstream_propagation: [{istio_headers: {}}]"#;

const ISTIO_TAIL: &str = r#"
          - name: istio.alpn
            typed_config:
              "@type": type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig
              alpn_override:
              - alpn_override: [istio-http/1.0, istio, http/1.0]
              - upstream_protocol: HTTP11
                alpn_override: [istio-http/1.1, istio, http/1.1]
              - upstream_protocol: HTTP2
                alpn_override: [istio-h2, istio, h2]
          - name: envoy.filters.http.fault
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}
          - name: envoy.filters.http.cors
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}
          - name: istio.stats
            typed_config:
              "@type": type.googleapis.com/stats.PluginConfig
              disable_host_header_fallback: true
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}"#;

fn skiff(admin: u16, out: u16, inb: u16, envoy: u16, app: u16, ca: &Path) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
node:
  id: sidecar~10.1.2.3~productpage-v1-abc.default~default.svc.cluster.local
  cluster: productpage.default
  metadata:
    NAME: productpage-v1-abc
    NAMESPACE: default
    WORKLOAD_NAME: productpage-v1
    CLUSTER_ID: Kubernetes
    OWNER: kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1
    ISTIO_VERSION: "1.30.0"
    LABELS: {{app: productpage, version: v1, service.istio.io/canonical-name: productpage, pod-template-hash: abc}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {out}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound_0.0.0.0_9080
          route_config:
            virtual_hosts:
            - name: reviews
              domains: ["*"]
              routes:
              - {{match: {{prefix: /h1}}, route: {{cluster: h1}}}}
              - {{match: {{prefix: /h2}}, route: {{cluster: h2}}}}
              - {{match: {{prefix: /keep}}, route: {{cluster: keep}}}}
          http_filters:{PEER_OUTBOUND}{ISTIO_TAIL}
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {inb}}}}}
    filter_chains:
    - filters:
      - name: istio.metadata_exchange
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange
          value: {{protocol: istio-peer-exchange, enable_discovery: true}}
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_0.0.0.0_9080
          route_config:
            virtual_hosts: [{{name: inbound, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: app}}}}]}}]
          http_filters:{PEER_INBOUND}{ISTIO_TAIL}
  clusters:{h1}{h2}{keep}
  - name: app
    filters:
    - name: istio.metadata_exchange
      typed_config:
        "@type": type.googleapis.com/udpa.type.v1.TypedStruct
        type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange
        value: {{protocol: istio-peer-exchange}}
    load_assignment:
      cluster_name: app
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app}}}}}}}}}]}}]
"#,
        h1 = mtls_cluster("h1", envoy, false, false, ca),
        h2 = mtls_cluster("h2", envoy, true, false, ca),
        keep = mtls_cluster("keep", envoy, false, true, ca),
    )
}

async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> skiff_tests::Resp {
    let mut req = skiff_tests::client::get(path, "reviews.default.svc.cluster.local:9080");
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    let addr = format!("127.0.0.1:{port}");
    let once = skiff_tests::client::http1_once(&addr, req);
    tokio::time::timeout(Duration::from_secs(5), once)
        .await
        .expect("in time")
        .expect("a response")
}

fn decode64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|c| **c == b'=').count();
        let n = chunk
            .iter()
            .take_while(|c| **c != b'=')
            .fold(0u32, |n, c| (n << 6) | u32::from(val(*c)))
            << (6 * pad);
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..3 - pad]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_alpn_and_peer_metadata_as_istios_proxy() {
    run_for(Duration::from_secs(60), async {
        let dir = scratch_dir("istio-filters");
        let certs = pki(&dir);
        let app = EchoUpstream::start("app").await;
        let behind_envoy = EchoUpstream::start("reviews").await;
        let (envoy_admin, envoy_port) = (free_port(), free_port());
        let envoy = ProxyProcess::start(
            Kind::Envoy,
            &inbound(envoy_admin, envoy_port, behind_envoy.port(), &certs),
            &[],
        )
        .await;
        let (admin, out, inb) = (free_port(), free_port(), free_port());
        let s = ProxyProcess::start(
            Kind::Skiff,
            &skiff(admin, out, inb, envoy_port, app.port(), &certs.0),
            &[],
        )
        .await;

        // istio.alpn: HTTP/1.1 and HTTP/2 clusters reach Envoy's HTTP chain in their protocol;
        // the cluster that opts out offers its own list and lands on the TCP chain.
        let chain = |r: &skiff_tests::Resp| r.header("x-chain").unwrap_or("tcp").to_string();
        let h1 = get(out, "/h1", &[]).await;
        let h2 = get(out, "/h2", &[]).await;
        let keep = get(out, "/keep", &[]).await;
        assert_eq!(
            (
                h1.status,
                chain(&h1),
                h2.status,
                chain(&h2),
                keep.status,
                chain(&keep)
            ),
            (
                200,
                "http HTTP/1.1".into(),
                200,
                "http HTTP/2".into(),
                200,
                "tcp".into()
            ),
            "{}\n{}",
            s.logs_tail(20),
            envoy.logs_tail(20)
        );

        // Peer metadata, outbound: the node's id and workload metadata go upstream.
        let seen = behind_envoy.rec.requests();
        assert_eq!(seen.len(), 3, "{seen:?}");
        for r in &seen {
            assert_eq!(
                r.header("x-envoy-peer-metadata-id"),
                Some("sidecar~10.1.2.3~productpage-v1-abc.default~default.svc.cluster.local")
            );
        }
        let value = seen[0].header("x-envoy-peer-metadata").expect("metadata");
        let meta = envoy_types::pb::google::protobuf::Struct::decode(decode64(value).as_slice())
            .expect("a Struct");
        let text = |k: &str| match meta.fields.get(k).and_then(|v| v.kind.clone()) {
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => s,
            other => format!("{other:?}"),
        };
        assert_eq!(
            (
                text("NAME"),
                text("NAMESPACE"),
                text("WORKLOAD_NAME"),
                text("CLUSTER_ID")
            ),
            (
                "productpage-v1-abc".into(),
                "default".into(),
                "productpage-v1".into(),
                "Kubernetes".into()
            )
        );
        assert!(!meta.fields.contains_key("ISTIO_VERSION"));

        // Inbound: the peer's headers never reach the application; the response carries
        // skiff's identity only when the request carried the peer's.
        let with = get(
            inb,
            "/x",
            &[
                ("x-envoy-peer-metadata-id", "sidecar~10.9.9.9~ratings"),
                ("x-envoy-peer-metadata", "CgA="),
            ],
        )
        .await;
        let without = get(inb, "/y", &[]).await;
        let app_seen = app.rec.requests();
        assert_eq!(app_seen.len(), 2);
        for r in &app_seen {
            assert!(
                !r.has("x-envoy-peer-metadata-id") && !r.has("x-envoy-peer-metadata"),
                "{:?}",
                r.headers
            );
        }
        assert_eq!(
            with.header("x-envoy-peer-metadata-id"),
            Some("sidecar~10.1.2.3~productpage-v1-abc.default~default.svc.cluster.local")
        );
        assert!(with.header("x-envoy-peer-metadata").is_some());
        assert_eq!(
            (
                without.header("x-envoy-peer-metadata-id"),
                without.header("x-envoy-peer-metadata")
            ),
            (None, None)
        );

        // Accepted without effect, and counted.
        let a = Admin::new(admin);
        assert!(
            a.counter("server.accepted_without_effect.istio_stats")
                .await
                >= 2
        );
        assert!(
            a.counter("server.accepted_without_effect.istio_metadata_exchange")
                .await
                >= 2
        );
    })
    .await;
}
