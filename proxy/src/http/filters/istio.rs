//! Istio's HTTP filters, as Istio's proxy runs them in a sidecar.
//!
//! - `istio.alpn`: marks the request with its ALPN table; once the router knows the cluster,
//!   the list for the protocol the request goes upstream in (the cluster's, or the
//!   downstream's with `use_downstream_protocol_config`; HTTP/2 first for `auto_config`)
//!   replaces the cluster's ALPN on the upstream TLS connection, which is pooled apart; none
//!   when the cluster's `istio` metadata says `alpn_override: "false"`.
//! - `istio.metadata_exchange` (peer metadata over headers): `x-envoy-peer-metadata-id` and
//!   `x-envoy-peer-metadata` are removed from requests (`downstream_discovery`) and responses
//!   (`upstream_discovery`); requests to the cluster carry this proxy's (node id, and its
//!   workload metadata as Istio encodes it: a deterministic `google.protobuf.Struct` in
//!   base64) with `upstream_propagation`, and responses with `downstream_propagation` carry
//!   them back when the request brought the peer's. Neither goes to a cluster whose `istio`
//!   metadata says `disable_mx`, nor, with `skip_external_clusters`, to `PassthroughCluster`
//!   or a cluster marked `external`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::model::{self, IstioAlpn, IstioClusterMetadata, PeerMetadata, UpstreamProtocol};
use crate::http::filter::{HeadersStatus, HttpFilter};

/// `x-envoy-peer-metadata-id`.
pub static PEER_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");
/// `x-envoy-peer-metadata`.
pub static PEER_METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");

/// The bootstrap's node, whose identity the metadata exchange sends.
static NODE: OnceLock<envoy_types::pb::envoy::config::core::v3::Node> = OnceLock::new();

/// Sets the node (once, at start-up).
pub fn set_node(node: envoy_types::pb::envoy::config::core::v3::Node) {
    let _ = NODE.set(node);
}

/// What `istio.alpn` leaves on a request for the router.
#[derive(Debug, Clone)]
pub struct AlpnChoice {
    table: Arc<IstioAlpn>,
    downstream: http::Version,
}

impl AlpnChoice {
    /// The ALPN list for a request to `cluster`, if one replaces the cluster's.
    pub fn pick(&self, cluster: &model::Cluster) -> Option<Arc<[Vec<u8>]>> {
        if cluster.istio.no_alpn_override {
            return None;
        }
        let http2 = match cluster.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 | UpstreamProtocol::Auto => true,
            UpstreamProtocol::Downstream => self.downstream == http::Version::HTTP_2,
        };
        if http2 {
            self.table.http2.clone()
        } else {
            self.table.http11.clone()
        }
    }
}

/// `istio.alpn` on one stream.
pub struct AlpnFilter {
    table: Arc<IstioAlpn>,
}

impl AlpnFilter {
    pub fn new(table: Arc<IstioAlpn>) -> Self {
        AlpnFilter { table }
    }
}

impl HttpFilter for AlpnFilter {
    fn decode_headers(&mut self, head: &mut http::request::Parts, _: bool) -> HeadersStatus {
        head.extensions.insert(AlpnChoice {
            table: self.table.clone(),
            downstream: head.version,
        });
        HeadersStatus::Continue
    }
}

/// The configured exchange and this proxy's header values.
#[derive(Debug)]
pub struct PeerFactory {
    config: Arc<PeerMetadata>,
    id: Option<HeaderValue>,
    value: Option<HeaderValue>,
}

impl PeerFactory {
    pub fn new(config: Arc<PeerMetadata>) -> Self {
        let node = NODE.get();
        let id = node.and_then(|n| HeaderValue::from_str(&n.id).ok());
        let value = node
            .map(|n| workload_metadata(n.metadata.as_ref(), &config.additional_labels))
            .and_then(|v| HeaderValue::from_str(&v).ok());
        PeerFactory { config, id, value }
    }

    pub fn filter(self: &std::rc::Rc<Self>) -> PeerFilter {
        PeerFilter {
            factory: self.clone(),
            route: Arc::new(AtomicU8::new(0)),
            peer_id: false,
            peer_value: false,
        }
    }
}

/// The router's verdict on the routed cluster, for the response: 0 none yet, 1 send, 2 skip.
const SEND: u8 = 1;
const SKIP: u8 = 2;

/// What the metadata exchange leaves on a request for the router.
#[derive(Debug, Clone)]
pub struct PeerExchange {
    upstream: Option<(bool, Option<HeaderValue>, Option<HeaderValue>)>,
    downstream_skip_external: Option<bool>,
    verdict: Arc<AtomicU8>,
}

impl PeerExchange {
    /// Adds this proxy's headers for a request routed to `cluster` (named `name`), and
    /// notes for the response whether that cluster may be told.
    pub fn routed(&self, name: &str, istio: IstioClusterMetadata, headers: &mut HeaderMap) {
        let skip = |skip_external: bool| {
            istio.disable_mx || (skip_external && (name == "PassthroughCluster" || istio.external))
        };
        if let Some(skip_external) = self.downstream_skip_external {
            let v = if skip(skip_external) { SKIP } else { SEND };
            self.verdict.store(v, Ordering::Relaxed);
        }
        if let Some((skip_external, id, value)) = &self.upstream {
            if !skip(*skip_external) {
                if let Some(id) = id {
                    headers.insert(PEER_ID.clone(), id.clone());
                }
                if let Some(value) = value {
                    headers.insert(PEER_METADATA.clone(), value.clone());
                }
            }
        }
    }
}

/// `istio.metadata_exchange` on one stream.
pub struct PeerFilter {
    factory: std::rc::Rc<PeerFactory>,
    route: Arc<AtomicU8>,
    /// The request brought the peer's id, and its metadata.
    peer_id: bool,
    peer_value: bool,
}

impl HttpFilter for PeerFilter {
    fn decode_headers(&mut self, head: &mut http::request::Parts, _: bool) -> HeadersStatus {
        let c = &self.factory.config;
        self.peer_id = head.headers.contains_key(&PEER_ID);
        self.peer_value = head.headers.contains_key(&PEER_METADATA);
        if c.downstream_headers {
            head.headers.remove(&PEER_ID);
            head.headers.remove(&PEER_METADATA);
        }
        head.extensions.insert(PeerExchange {
            upstream: c
                .upstream_propagation
                .map(|skip| (skip, self.factory.id.clone(), self.factory.value.clone())),
            downstream_skip_external: c.downstream_propagation,
            verdict: self.route.clone(),
        });
        HeadersStatus::Continue
    }

    fn encode_headers(&mut self, head: &mut http::response::Parts, _: bool) -> HeadersStatus {
        let c = &self.factory.config;
        if c.upstream_headers {
            head.headers.remove(&PEER_ID);
            head.headers.remove(&PEER_METADATA);
        }
        // Envoy's filter consults the routed cluster; a local reply before routing has none.
        if c.downstream_propagation.is_some() && self.route.load(Ordering::Relaxed) != SKIP {
            if self.peer_id {
                if let Some(id) = &self.factory.id {
                    head.headers.insert(PEER_ID.clone(), id.clone());
                }
            }
            if self.peer_value {
                if let Some(v) = &self.factory.value {
                    head.headers.insert(PEER_METADATA.clone(), v.clone());
                }
            }
        }
        HeadersStatus::Continue
    }
}

/// The node's workload metadata as Istio's proxies send it in `x-envoy-peer-metadata`: a
/// `google.protobuf.Struct` of `NAME`, `NAMESPACE`, `WORKLOAD_NAME`, `CLUSTER_ID`, `LABELS`
/// (the canonical service name and revision, `app`, `version`, and the additional labels)
/// and `OWNER` (when it names a pod, deployment, job or cron job), serialized with its keys
/// in order, in base64.
pub fn workload_metadata(
    metadata: Option<&envoy_types::pb::google::protobuf::Struct>,
    additional_labels: &[String],
) -> String {
    use envoy_types::pb::google::protobuf::value::Kind;
    use std::collections::BTreeMap;
    let text = |name: &str| -> Option<String> {
        match metadata?.fields.get(name)?.kind.as_ref()? {
            Kind::StringValue(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    };
    let mut top: BTreeMap<&str, Field> = BTreeMap::new();
    for key in ["NAME", "NAMESPACE", "WORKLOAD_NAME", "CLUSTER_ID"] {
        if let Some(v) = text(key) {
            top.insert(key, Field::Text(v));
        }
    }
    let mut labels: BTreeMap<String, Field> = BTreeMap::new();
    if let Some(Kind::StructValue(l)) = metadata
        .and_then(|m| m.fields.get("LABELS"))
        .and_then(|v| v.kind.as_ref())
    {
        let wanted = [
            "service.istio.io/canonical-name",
            "service.istio.io/canonical-revision",
            "app",
            "version",
        ];
        for (k, v) in &l.fields {
            let keep = wanted.contains(&k.as_str()) || additional_labels.contains(k);
            if let (true, Some(Kind::StringValue(s))) = (keep, v.kind.as_ref()) {
                if !s.is_empty() || additional_labels.contains(k) {
                    labels.insert(k.clone(), Field::Text(s.clone()));
                }
            }
        }
    }
    top.insert("LABELS", Field::Struct(labels));
    if let (Some(owner), Some(ns), Some(workload)) =
        (text("OWNER"), text("NAMESPACE"), text("WORKLOAD_NAME"))
    {
        let kinds = ["pod", "deployment", "job", "cronjob"];
        let known = kinds
            .iter()
            .any(|k| owner == format!("kubernetes://apis/apps/v1/namespaces/{ns}/{k}s/{workload}"));
        if known {
            top.insert("OWNER", Field::Text(owner));
        }
    }
    let top: BTreeMap<String, Field> = top.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    crate::tls::info::base64(&encode_struct(&top))
}

enum Field {
    Text(String),
    Struct(std::collections::BTreeMap<String, Field>),
}

/// A `Struct` in protobuf's binary form, entries in key order (deterministic).
fn encode_struct(fields: &std::collections::BTreeMap<String, Field>) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let mut out = Vec::new();
    for (k, v) in fields {
        // Value: string_value (3) or struct_value (5).
        let mut value = Vec::new();
        match v {
            Field::Text(s) => {
                encode_key(3, WireType::LengthDelimited, &mut value);
                encode_varint(s.len() as u64, &mut value);
                value.extend_from_slice(s.as_bytes());
            }
            Field::Struct(inner) => {
                let body = encode_struct(inner);
                encode_key(5, WireType::LengthDelimited, &mut value);
                encode_varint(body.len() as u64, &mut value);
                value.extend_from_slice(&body);
            }
        }
        // The map entry: key (1), value (2).
        let mut entry = Vec::new();
        encode_key(1, WireType::LengthDelimited, &mut entry);
        encode_varint(k.len() as u64, &mut entry);
        entry.extend_from_slice(k.as_bytes());
        encode_key(2, WireType::LengthDelimited, &mut entry);
        encode_varint(value.len() as u64, &mut entry);
        entry.extend_from_slice(&value);
        // Struct.fields (1).
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(entry.len() as u64, &mut out);
        out.extend_from_slice(&entry);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    use prost::Message;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    #[test]
    fn base64_is_the_standard_alphabet_with_padding() {
        use crate::tls::info::base64;
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn the_workload_metadata_is_the_struct_istio_sends() {
        let mut labels = Struct::default();
        for (k, v) in [
            ("app", "ratings"),
            ("version", "v1"),
            ("service.istio.io/canonical-name", "ratings"),
            ("pod-template-hash", "abc"),
            ("role", "db"),
        ] {
            labels.fields.insert(k.into(), s(v));
        }
        let mut meta = Struct::default();
        for (k, v) in [
            ("NAME", "ratings-v1-abc"),
            ("NAMESPACE", "default"),
            ("WORKLOAD_NAME", "ratings-v1"),
            ("CLUSTER_ID", "Kubernetes"),
            ("ISTIO_VERSION", "1.30.0"),
            (
                "OWNER",
                "kubernetes://apis/apps/v1/namespaces/default/deployments/ratings-v1",
            ),
        ] {
            meta.fields.insert(k.into(), s(v));
        }
        meta.fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        let encoded = workload_metadata(Some(&meta), &["role".into()]);
        let bytes = decode64(&encoded);
        let back = Struct::decode(bytes.as_slice()).expect("a Struct");
        let mut keys: Vec<&String> = back.fields.keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "CLUSTER_ID",
                "LABELS",
                "NAME",
                "NAMESPACE",
                "OWNER",
                "WORKLOAD_NAME"
            ]
        );
        let Some(Kind::StructValue(l)) = back.fields["LABELS"].kind.as_ref() else {
            panic!("LABELS is a struct")
        };
        let mut lk: Vec<&String> = l.fields.keys().collect();
        lk.sort();
        assert_eq!(
            lk,
            ["app", "role", "service.istio.io/canonical-name", "version"]
        );
        // Deterministic: the same bytes every time.
        assert_eq!(encoded, workload_metadata(Some(&meta), &["role".into()]));
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
            let n = chunk
                .iter()
                .take_while(|c| **c != b'=')
                .fold(0u32, |n, c| (n << 6) | u32::from(val(*c)));
            let pad = chunk.iter().filter(|c| **c == b'=').count();
            let n = n << (6 * pad);
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        out
    }
}
