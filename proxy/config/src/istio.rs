//! Istio's own extensions, as istiod sends them to its sidecars. Their messages are not in
//! Envoy's descriptor set, so their descriptors are built here and added to the pool (both the
//! YAML loader and the checks of xDS resources decode through it), and their Rust forms are
//! declared for translation.
//!
//! - `istio.alpn` (HTTP): the upstream TLS ALPN per request, by the upstream HTTP protocol.
//! - `istio.metadata_exchange` (HTTP, `io.istio.http.peer_metadata.Config`): the peer
//!   metadata headers, read and removed on the way in, added on the way out.
//! - `istio.metadata_exchange` (network, `envoy.tcp.metadataexchange.config.MetadataExchange`)
//!   and `istio.stats` (`stats.PluginConfig`): accepted without effect (docs/compatibility.md).

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
    FileDescriptorProto, MessageOptions, OneofDescriptorProto,
};

/// `istio.alpn`'s configuration.
pub const ALPN: &str = "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig";
/// `istio.metadata_exchange`'s HTTP configuration.
pub const PEER_METADATA: &str = "io.istio.http.peer_metadata.Config";
/// `istio.metadata_exchange`'s network configuration.
pub const METADATA_EXCHANGE: &str = "envoy.tcp.metadataexchange.config.MetadataExchange";
/// `istio.stats`' configuration.
pub const STATS: &str = "stats.PluginConfig";
/// `istio_authn`'s configuration (an empty message).
pub const AUTHN: &str = "io.istio.network.authn.Config";

/// `io.istio.network.authn.Config`: nothing to configure.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthnConfig {}

impl prost::Name for AuthnConfig {
    const NAME: &'static str = "Config";
    const PACKAGE: &'static str = "io.istio.network.authn";
}

/// `istio.alpn`: per upstream protocol, the ALPN list to offer instead of the cluster's.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AlpnFilterConfig {
    #[prost(message, repeated, tag = "1")]
    pub alpn_override: Vec<AlpnOverride>,
}

impl prost::Name for AlpnFilterConfig {
    const NAME: &'static str = "FilterConfig";
    const PACKAGE: &'static str = "istio.envoy.config.filter.http.alpn.v2alpha1";
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AlpnOverride {
    /// 0 HTTP10, 1 HTTP11, 2 HTTP2.
    #[prost(int32, tag = "1")]
    pub upstream_protocol: i32,
    #[prost(string, repeated, tag = "2")]
    pub alpn_override: Vec<String>,
}

/// `io.istio.http.peer_metadata.Config`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerMetadataConfig {
    #[prost(message, repeated, tag = "1")]
    pub downstream_discovery: Vec<DiscoveryMethod>,
    #[prost(message, repeated, tag = "2")]
    pub upstream_discovery: Vec<DiscoveryMethod>,
    #[prost(message, repeated, tag = "3")]
    pub downstream_propagation: Vec<PropagationMethod>,
    #[prost(message, repeated, tag = "4")]
    pub upstream_propagation: Vec<PropagationMethod>,
    #[prost(bool, tag = "5")]
    pub shared_with_upstream: bool,
    #[prost(string, repeated, tag = "6")]
    pub additional_labels: Vec<String>,
}

impl prost::Name for PeerMetadataConfig {
    const NAME: &'static str = "Config";
    const PACKAGE: &'static str = "io.istio.http.peer_metadata";
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoveryMethod {
    #[prost(oneof = "Discovery", tags = "1, 2, 3")]
    pub method_specifier: Option<Discovery>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Discovery {
    #[prost(message, tag = "1")]
    Baggage(Empty),
    #[prost(message, tag = "2")]
    WorkloadDiscovery(Empty),
    #[prost(message, tag = "3")]
    IstioHeaders(IstioHeaders),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PropagationMethod {
    #[prost(oneof = "Propagation", tags = "1")]
    pub method_specifier: Option<Propagation>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Propagation {
    #[prost(message, tag = "1")]
    IstioHeaders(IstioHeaders),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioHeaders {
    #[prost(bool, tag = "1")]
    pub skip_external_clusters: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// `envoy.tcp.metadataexchange.config.MetadataExchange`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataExchange {
    #[prost(string, tag = "1")]
    pub protocol: String,
    #[prost(bool, tag = "2")]
    pub enable_discovery: bool,
    #[prost(string, repeated, tag = "3")]
    pub additional_labels: Vec<String>,
}

impl prost::Name for MetadataExchange {
    const NAME: &'static str = "MetadataExchange";
    const PACKAGE: &'static str = "envoy.tcp.metadataexchange.config";
}

fn field(name: &str, number: i32, ty: Type, type_name: Option<&str>) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(ty as i32),
        type_name: type_name.map(|t| format!(".{t}")),
        json_name: Some(json_name(name)),
        ..Default::default()
    }
}

fn repeated(mut f: FieldDescriptorProto) -> FieldDescriptorProto {
    f.label = Some(Label::Repeated as i32);
    f
}

fn in_oneof(mut f: FieldDescriptorProto, index: i32) -> FieldDescriptorProto {
    f.oneof_index = Some(index);
    f
}

fn json_name(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn message(name: &str, fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
    DescriptorProto {
        name: Some(name.into()),
        field: fields,
        ..Default::default()
    }
}

fn enumeration(name: &str, values: &[(&str, i32)]) -> EnumDescriptorProto {
    EnumDescriptorProto {
        name: Some(name.into()),
        value: values
            .iter()
            .map(|(n, v)| EnumValueDescriptorProto {
                name: Some((*n).into()),
                number: Some(*v),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn file(
    name: &str,
    package: &str,
    dependency: &[&str],
    messages: Vec<DescriptorProto>,
    enums: Vec<EnumDescriptorProto>,
) -> FileDescriptorProto {
    FileDescriptorProto {
        name: Some(name.into()),
        package: Some(package.into()),
        dependency: dependency.iter().map(|d| d.to_string()).collect(),
        message_type: messages,
        enum_type: enums,
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

/// The descriptors of Istio's extension messages, for the pool, and of the `TypedStruct`
/// wrappers when the pool `lacks` them.
pub fn descriptors(lacks: impl Fn(&str) -> bool) -> Vec<FileDescriptorProto> {
    let alpn = {
        let pkg = "istio.envoy.config.filter.http.alpn.v2alpha1";
        let mut config = message(
            "FilterConfig",
            vec![repeated(field(
                "alpn_override",
                1,
                Type::Message,
                Some(&format!("{pkg}.FilterConfig.AlpnOverride")),
            ))],
        );
        config.enum_type = vec![enumeration(
            "Protocol",
            &[("HTTP10", 0), ("HTTP11", 1), ("HTTP2", 2)],
        )];
        config.nested_type = vec![message(
            "AlpnOverride",
            vec![
                field(
                    "upstream_protocol",
                    1,
                    Type::Enum,
                    Some(&format!("{pkg}.FilterConfig.Protocol")),
                ),
                repeated(field("alpn_override", 2, Type::String, None)),
            ],
        )];
        file("skiff/istio/alpn.proto", pkg, &[], vec![config], vec![])
    };
    let peer = {
        let pkg = "io.istio.http.peer_metadata";
        let t = |n: &str| format!("{pkg}.Config.{n}");
        let mut discovery = message(
            "DiscoveryMethod",
            vec![
                in_oneof(field("baggage", 1, Type::Message, Some(&t("Baggage"))), 0),
                in_oneof(
                    field(
                        "workload_discovery",
                        2,
                        Type::Message,
                        Some(&t("WorkloadDiscovery")),
                    ),
                    0,
                ),
                in_oneof(
                    field("istio_headers", 3, Type::Message, Some(&t("IstioHeaders"))),
                    0,
                ),
            ],
        );
        discovery.oneof_decl = vec![OneofDescriptorProto {
            name: Some("method_specifier".into()),
            ..Default::default()
        }];
        let mut propagation = message(
            "PropagationMethod",
            vec![in_oneof(
                field("istio_headers", 1, Type::Message, Some(&t("IstioHeaders"))),
                0,
            )],
        );
        propagation.oneof_decl = discovery.oneof_decl.clone();
        let mut config = message(
            "Config",
            vec![
                repeated(field(
                    "downstream_discovery",
                    1,
                    Type::Message,
                    Some(&t("DiscoveryMethod")),
                )),
                repeated(field(
                    "upstream_discovery",
                    2,
                    Type::Message,
                    Some(&t("DiscoveryMethod")),
                )),
                repeated(field(
                    "downstream_propagation",
                    3,
                    Type::Message,
                    Some(&t("PropagationMethod")),
                )),
                repeated(field(
                    "upstream_propagation",
                    4,
                    Type::Message,
                    Some(&t("PropagationMethod")),
                )),
                field("shared_with_upstream", 5, Type::Bool, None),
                repeated(field("additional_labels", 6, Type::String, None)),
            ],
        );
        config.nested_type = vec![
            message("Baggage", vec![]),
            message("WorkloadDiscovery", vec![]),
            message(
                "IstioHeaders",
                vec![field("skip_external_clusters", 1, Type::Bool, None)],
            ),
            discovery,
            propagation,
        ];
        file(
            "skiff/istio/peer_metadata.proto",
            pkg,
            &[],
            vec![config],
            vec![],
        )
    };
    let mx = file(
        "skiff/istio/metadata_exchange.proto",
        "envoy.tcp.metadataexchange.config",
        &[],
        vec![message(
            "MetadataExchange",
            vec![
                field("protocol", 1, Type::String, None),
                field("enable_discovery", 2, Type::Bool, None),
                repeated(field("additional_labels", 3, Type::String, None)),
            ],
        )],
        vec![],
    );
    let stats = {
        let mut dimensions = message(
            "DimensionsEntry",
            vec![
                field("key", 1, Type::String, None),
                field("value", 2, Type::String, None),
            ],
        );
        dimensions.options = Some(MessageOptions {
            map_entry: Some(true),
            ..Default::default()
        });
        let mut metric_config = message(
            "MetricConfig",
            vec![
                repeated(field(
                    "dimensions",
                    1,
                    Type::Message,
                    Some("stats.MetricConfig.DimensionsEntry"),
                )),
                field("name", 2, Type::String, None),
                repeated(field("tags_to_remove", 3, Type::String, None)),
                field("match", 4, Type::String, None),
                field("drop", 5, Type::Bool, None),
            ],
        );
        metric_config.nested_type = vec![dimensions];
        let definition = message(
            "MetricDefinition",
            vec![
                field("name", 1, Type::String, None),
                field("value", 2, Type::String, None),
                field("type", 3, Type::Enum, Some("stats.MetricType")),
            ],
        );
        let duration = Some("google.protobuf.Duration");
        let plugin = message(
            "PluginConfig",
            vec![
                field("debug", 1, Type::Bool, None),
                field("max_peer_cache_size", 2, Type::Int32, None),
                field("stat_prefix", 3, Type::String, None),
                field("field_separator", 4, Type::String, None),
                field("value_separator", 5, Type::String, None),
                field("disable_host_header_fallback", 6, Type::Bool, None),
                field("tcp_reporting_duration", 7, Type::Message, duration),
                repeated(field(
                    "metrics",
                    8,
                    Type::Message,
                    Some("stats.MetricConfig"),
                )),
                repeated(field(
                    "definitions",
                    9,
                    Type::Message,
                    Some("stats.MetricDefinition"),
                )),
                field("reporter", 10, Type::Enum, Some("stats.Reporter")),
                field("rotation_interval", 11, Type::Message, duration),
                field("graceful_deletion_interval", 12, Type::Message, duration),
            ],
        );
        file(
            "skiff/istio/stats.proto",
            "stats",
            &["google/protobuf/duration.proto"],
            vec![metric_config, definition, plugin],
            vec![
                enumeration(
                    "MetricType",
                    &[("COUNTER", 0), ("GAUGE", 1), ("HISTOGRAM", 2)],
                ),
                enumeration("Reporter", &[("UNSPECIFIED", 0), ("SERVER_GATEWAY", 1)]),
            ],
        )
    };
    // The wrappers such extensions come in over xDS; Envoy's descriptor set lacks them.
    let typed_struct = |pkg: &str, file_name: &str| {
        file(
            file_name,
            pkg,
            &["google/protobuf/struct.proto"],
            vec![message(
                "TypedStruct",
                vec![
                    field("type_url", 1, Type::String, None),
                    field("value", 2, Type::Message, Some("google.protobuf.Struct")),
                ],
            )],
            vec![],
        )
    };
    let authn = file(
        "skiff/istio/authn.proto",
        "io.istio.network.authn",
        &[],
        vec![message("Config", vec![])],
        vec![],
    );
    let mut all = vec![alpn, peer, mx, stats, authn];
    // The matching API's IP matcher (waypoints' and Envoy's listener matchers use it), which
    // the descriptor set lacks.
    if lacks("xds.type.matcher.v3.IPMatcher") {
        let pkg = "xds.type.matcher.v3";
        let mut ip = message(
            "IPMatcher",
            vec![repeated(field(
                "range_matchers",
                1,
                Type::Message,
                Some(&format!("{pkg}.IPMatcher.IPRangeMatcher")),
            ))],
        );
        ip.nested_type = vec![message(
            "IPRangeMatcher",
            vec![
                repeated(field(
                    "ranges",
                    1,
                    Type::Message,
                    Some("xds.core.v3.CidrRange"),
                )),
                field(
                    "on_match",
                    2,
                    Type::Message,
                    Some(&format!("{pkg}.Matcher.OnMatch")),
                ),
                field("exclusive", 3, Type::Bool, None),
            ],
        )];
        all.push(file(
            "skiff/xds/type/matcher/v3/ip.proto",
            pkg,
            &[
                "xds/core/v3/cidr.proto",
                "xds/type/matcher/v3/matcher.proto",
            ],
            vec![ip],
            vec![],
        ));
    }
    for (pkg, file_name) in [
        ("xds.type.v3", "skiff/xds/type/v3/typed_struct.proto"),
        ("udpa.type.v1", "skiff/udpa/type/v1/typed_struct.proto"),
    ] {
        if lacks(&format!("{pkg}.TypedStruct")) {
            all.push(typed_struct(pkg, file_name));
        }
    }
    all
}

/// `xds.type.matcher.v3.IPMatcher`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IpMatcher {
    /// `range_matchers`.
    #[prost(message, repeated, tag = "1")]
    pub range_matchers: Vec<IpRangeMatcher>,
}

impl prost::Name for IpMatcher {
    const NAME: &'static str = "IPMatcher";
    const PACKAGE: &'static str = "xds.type.matcher.v3";
}

/// `xds.type.matcher.v3.IPMatcher.IPRangeMatcher`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IpRangeMatcher {
    /// `ranges`.
    #[prost(message, repeated, tag = "1")]
    pub ranges: Vec<envoy_types::pb::xds::core::v3::CidrRange>,
    /// `on_match`.
    #[prost(message, optional, tag = "2")]
    pub on_match: Option<envoy_types::pb::xds::r#type::matcher::v3::matcher::OnMatch>,
    /// `exclusive`.
    #[prost(bool, tag = "3")]
    pub exclusive: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn the_messages_decode_through_the_pool_as_istiod_writes_them() {
        let alpn = r#"{"@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig", "alpn_override": [{"alpn_override": ["istio-http/1.0", "istio", "http/1.0"]}, {"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"]}]}"#;
        let any = crate::proto::decode_text(
            alpn,
            crate::proto::message("google.protobuf.Any").expect("Any"),
        )
        .expect("decodes");
        let any: envoy_types::pb::google::protobuf::Any =
            crate::proto::to_typed(&any).expect("Any");
        let c = AlpnFilterConfig::decode(any.value.as_slice()).expect("prost");
        assert_eq!(c.alpn_override.len(), 2);
        assert_eq!(c.alpn_override[1].upstream_protocol, 2);
        assert_eq!(
            c.alpn_override[1].alpn_override,
            ["istio-h2", "istio", "h2"]
        );
        for name in [ALPN, PEER_METADATA, METADATA_EXCHANGE, STATS] {
            assert!(
                crate::proto::pool().get_message_by_name(name).is_some(),
                "{name}"
            );
        }
        let stats = r#"{"@type": "type.googleapis.com/stats.PluginConfig", "disable_host_header_fallback": true, "metrics": [{"dimensions": {"a": "b"}}], "tcp_reporting_duration": "5s"}"#;
        assert!(crate::proto::decode_text(
            stats,
            crate::proto::message("google.protobuf.Any").expect("Any")
        )
        .is_ok());
    }
}
