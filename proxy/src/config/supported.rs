//! The fields skiff honours. Every field set in a bootstrap is checked against this table before
//! translation, so nothing is silently ignored: a field outside it is an error naming its path.
//! Well-known types (`google.protobuf.Duration`, wrappers, `Struct`) are leaves.

use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value};

use super::{proto, ConfigError};

/// Message full name → the fields of it that skiff honours.
const SUPPORTED: &[(&str, &[&str])] = &[
    (
        "envoy.config.bootstrap.v3.Bootstrap",
        &["node", "admin", "static_resources", "dynamic_resources"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.DynamicResources",
        &["lds_config", "cds_config"],
    ),
    // Only files so far; gRPC and REST sources are refused by name.
    (
        "envoy.config.core.v3.ConfigSource",
        &[
            "path",
            "path_config_source",
            "initial_fetch_timeout",
            "resource_api_version",
        ],
    ),
    (
        "envoy.config.core.v3.PathConfigSource",
        &["path", "watched_directory"],
    ),
    // Node identity is reported by /server_info; none of it changes behaviour.
    (
        "envoy.config.core.v3.Node",
        &[
            "id",
            "cluster",
            "metadata",
            "locality",
            "user_agent_name",
            "user_agent_version",
        ],
    ),
    (
        "envoy.config.core.v3.Locality",
        &["region", "zone", "sub_zone"],
    ),
    ("envoy.config.bootstrap.v3.Admin", &["address"]),
    (
        "envoy.config.bootstrap.v3.Bootstrap.StaticResources",
        &["listeners", "clusters", "secrets"],
    ),
    ("envoy.config.core.v3.Address", &["socket_address"]),
    (
        "envoy.config.core.v3.SocketAddress",
        &["protocol", "address", "port_value"],
    ),
    (
        "envoy.config.listener.v3.Listener",
        &[
            "name",
            "address",
            "stat_prefix",
            "filter_chains",
            "default_filter_chain",
            "per_connection_buffer_limit_bytes",
            "listener_filters",
            "transparent",
            "freebind",
            "use_original_dst",
            "bind_to_port",
            // Informational for a sidecar; it selects nothing here.
            "traffic_direction",
            "drain_type",
            "max_connections_to_accept_per_socket_event",
            "additional_addresses",
            "socket_options",
            "tcp_fast_open_queue_length",
            // Read by filters and access logs skiff does not have; see docs/compatibility.md.
            "metadata",
            // skiff's workers each own an SO_REUSEPORT socket; see docs/compatibility.md.
            "connection_balance_config",
            "enable_reuse_port",
            "listener_filters_timeout",
            "continue_on_listener_filters_timeout",
        ],
    ),
    (
        "envoy.config.listener.v3.AdditionalAddress",
        &["address", "socket_options"],
    ),
    (
        "envoy.config.core.v3.SocketOption",
        &[
            "description",
            "level",
            "name",
            "int_value",
            "buf_value",
            "state",
            "type",
            "ip_version",
        ],
    ),
    (
        "envoy.config.core.v3.SocketOption.SocketType",
        &["stream", "datagram"],
    ),
    ("envoy.config.core.v3.SocketOption.SocketType.Stream", &[]),
    ("envoy.config.core.v3.SocketOption.SocketType.Datagram", &[]),
    (
        "envoy.config.listener.v3.Listener.ConnectionBalanceConfig",
        &["exact_balance"],
    ),
    (
        "envoy.config.listener.v3.Listener.ConnectionBalanceConfig.ExactBalance",
        &[],
    ),
    (
        "envoy.config.listener.v3.FilterChain",
        &["filters", "name", "filter_chain_match", "transport_socket"],
    ),
    (
        "envoy.config.listener.v3.FilterChainMatch",
        &[
            "destination_port",
            "prefix_ranges",
            "server_names",
            "transport_protocol",
            "application_protocols",
            "direct_source_prefix_ranges",
            "source_type",
            "source_prefix_ranges",
            "source_ports",
        ],
    ),
    (
        "envoy.config.core.v3.CidrRange",
        &["address_prefix", "prefix_len"],
    ),
    (
        "envoy.config.listener.v3.ListenerFilter",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
        &[],
    ),
    // `rules` and `tlv_location` feed dynamic metadata, which nothing in skiff reads yet.
    (
        "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
        &[
            "allow_requests_without_proxy_protocol",
            "pass_through_tlvs",
            "disallowed_versions",
            "stat_prefix",
        ],
    ),
    (
        "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
        &[],
    ),
    // JA3/JA4 fingerprints feed nothing skiff has yet.
    (
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
        &[
            "initial_read_buffer_size",
            "max_client_hello_size",
            "close_connection_on_client_hello_parsing_errors",
        ],
    ),
    (
        "envoy.config.core.v3.ProxyProtocolPassThroughTLVs",
        &["match_type", "tlv_type"],
    ),
    (
        "envoy.extensions.filters.listener.original_src.v3.OriginalSrc",
        &["bind_port", "mark"],
    ),
    ("envoy.config.listener.v3.Filter", &["name", "typed_config"]),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        &[
            "stat_prefix",
            "cluster",
            "weighted_clusters",
            "idle_timeout",
            "access_log",
        ],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster",
        &["clusters"],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight",
        &["name", "weight"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        &[
            "codec_type",
            "stat_prefix",
            "route_config",
            "rds",
            "http_filters",
            "access_log",
            "server_name",
            "server_header_transformation",
            "generate_request_id",
            "preserve_external_request_id",
            "always_set_request_id_in_response",
            "via",
            "http2_protocol_options",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.filters.http.router.v3.Router",
        // start_child_span only matters with tracing, which is off.
        &[
            "dynamic_stats",
            "suppress_envoy_headers",
            "start_child_span",
        ],
    ),
    (
        "envoy.config.route.v3.RouteConfiguration",
        &["name", "virtual_hosts", "ignore_port_in_host_matching"],
    ),
    (
        "envoy.config.route.v3.VirtualHost",
        &["name", "domains", "routes"],
    ),
    ("envoy.config.route.v3.Route", &["name", "match", "route"]),
    (
        "envoy.config.route.v3.RouteMatch",
        &["prefix", "path", "case_sensitive", "headers"],
    ),
    (
        "envoy.config.route.v3.HeaderMatcher",
        &["name", "string_match", "present_match", "invert_match"],
    ),
    (
        "envoy.type.matcher.v3.StringMatcher",
        &["exact", "prefix", "suffix", "contains", "ignore_case"],
    ),
    ("envoy.config.route.v3.RouteAction", &["cluster", "timeout"]),
    (
        "envoy.config.accesslog.v3.AccessLog",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        &["log_format"],
    ),
    (
        "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
        &["log_format"],
    ),
    (
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        &["path", "log_format"],
    ),
    (
        "envoy.config.core.v3.SubstitutionFormatString",
        &[
            "text_format_source",
            "text_format",
            "json_format",
            "formatters",
        ],
    ),
    // Formatter extensions: which ones are known is checked in translation.
    (
        "envoy.config.core.v3.TypedExtensionConfig",
        &["name", "typed_config"],
    ),
    // Access-log formats take only inline_string; TLS takes all three (checked in translation).
    (
        "envoy.config.core.v3.DataSource",
        &["inline_string", "filename", "inline_bytes"],
    ),
    (
        "envoy.config.cluster.v3.Cluster",
        &[
            "name",
            "type",
            "connect_timeout",
            "lb_policy",
            "load_assignment",
            "typed_extension_protocol_options",
            "http2_protocol_options",
            "per_connection_buffer_limit_bytes",
            "upstream_bind_config",
            "original_dst_lb_config",
            "transport_socket",
            "eds_cluster_config",
            "dns_refresh_rate",
            "dns_jitter",
            "dns_failure_refresh_rate",
            "respect_dns_ttl",
            "dns_lookup_family",
            "dns_resolvers",
            "use_tcp_for_dns_lookups",
            "dns_resolution_config",
            "typed_dns_resolver_config",
            "wait_for_warm_on_init",
            "circuit_breakers",
            "max_requests_per_connection",
            "upstream_connection_options",
            "metadata",
            "cluster_type",
            "load_balancing_policy",
            "common_lb_config",
            "ignore_health_on_host_removal",
            "least_request_lb_config",
            "round_robin_lb_config",
        ],
    ),
    (
        "envoy.config.cluster.v3.UpstreamConnectionOptions",
        &["tcp_keepalive"],
    ),
    (
        "envoy.config.core.v3.TcpKeepalive",
        &["keepalive_probes", "keepalive_time", "keepalive_interval"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.CustomClusterType",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.clusters.dns.v3.DnsCluster",
        &[
            "dns_refresh_rate",
            "dns_failure_refresh_rate",
            "respect_dns_ttl",
            "dns_jitter",
            "typed_dns_resolver_config",
            "dns_lookup_family",
            "all_addresses_in_single_endpoint",
        ],
    ),
    (
        "envoy.extensions.clusters.dns.v3.DnsCluster.RefreshRate",
        &["base_interval", "max_interval"],
    ),
    (
        "envoy.config.cluster.v3.LoadBalancingPolicy",
        &["policies"],
    ),
    (
        "envoy.config.cluster.v3.LoadBalancingPolicy.Policy",
        &["typed_extension_config"],
    ),
    (
        "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
        &["locality_lb_config"],
    ),
    (
        "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
        &[
            "choice_count",
            "active_request_bias",
            "locality_lb_config",
            "selection_method",
            "enable_full_scan",
        ],
    ),
    (
        "envoy.extensions.load_balancing_policies.random.v3.Random",
        &["locality_lb_config"],
    ),
    // Zone-aware routing has no effect without the bootstrap's cluster_manager.local_cluster_name,
    // which skiff refuses (docs/compatibility.md).
    (
        "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig",
        &["zone_aware_lb_config", "locality_weighted_lb_config"],
    ),
    (
        "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig.LocalityWeightedLbConfig",
        &[],
    ),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig",
        &[],
    ),
    (
        "envoy.config.core.v3.Locality",
        &["region", "zone", "sub_zone"],
    ),
    (
        "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig.ZoneAwareLbConfig",
        &[
            "routing_enabled",
            "min_cluster_size",
            "fail_traffic_on_panic",
            "force_locality_direct_routing",
            "force_local_zone",
            "locality_basis",
        ],
    ),
    (
        "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig.ZoneAwareLbConfig.ForceLocalZone",
        &["min_size"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig",
        &[
            "healthy_panic_threshold",
            "zone_aware_lb_config",
            "locality_weighted_lb_config",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig.ZoneAwareLbConfig",
        &["routing_enabled", "min_cluster_size", "fail_traffic_on_panic"],
    ),
    ("envoy.type.v3.Percent", &["value"]),
    (
        "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
        &["choice_count", "active_request_bias"],
    ),
    ("envoy.config.cluster.v3.Cluster.RoundRobinLbConfig", &[]),
    (
        "envoy.config.core.v3.RuntimeDouble",
        &["default_value", "runtime_key"],
    ),
    ("envoy.config.cluster.v3.CircuitBreakers", &["thresholds"]),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
        &[
            "priority",
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
            "track_remaining",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.RefreshRate",
        &["base_interval", "max_interval"],
    ),
    (
        "envoy.config.core.v3.DnsResolutionConfig",
        &["resolvers", "dns_resolver_options"],
    ),
    (
        "envoy.config.core.v3.DnsResolverOptions",
        &["use_tcp_for_dns_lookups", "no_default_search_domain"],
    ),
    (
        "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
        &[
            "resolvers",
            "dns_resolver_options",
            "query_timeout_seconds",
            "query_tries",
            "rotate_nameservers",
            "udp_max_queries",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.EdsClusterConfig",
        &["eds_config", "service_name"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.Rds",
        &["config_source", "route_config_name"],
    ),
    (
        "envoy.config.core.v3.TransportSocket",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
        &["config", "transport_socket"],
    ),
    ("envoy.config.core.v3.ProxyProtocolConfig", &["version"]),
    (
        "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
        &["stat_prefix", "token_bucket"],
    ),
    (
        "envoy.type.v3.TokenBucket",
        &["max_tokens", "tokens_per_fill", "fill_interval"],
    ),
    (
        "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
        &[],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        &["common_tls_context", "require_client_certificate"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        &["common_tls_context", "sni"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
        &[
            "tls_params",
            "tls_certificates",
            "validation_context",
            "alpn_protocols",
            "tls_certificate_sds_secret_configs",
            "validation_context_sds_secret_config",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig",
        &["name", "sds_config"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        &["name", "tls_certificate", "validation_context"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
        &[
            "tls_minimum_protocol_version",
            "tls_maximum_protocol_version",
            "cipher_suites",
            "ecdh_curves",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
        // The files are followed for changes whether or not a directory is named.
        &["certificate_chain", "private_key", "watched_directory"],
    ),
    ("envoy.config.core.v3.WatchedDirectory", &["path"]),
    (
        "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
        &[
            "trusted_ca",
            "match_typed_subject_alt_names",
            "watched_directory",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher",
        &["san_type", "matcher"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.OriginalDstLbConfig",
        &["use_http_header", "http_header_name"],
    ),
    ("envoy.config.core.v3.BindConfig", &["source_address"]),
    (
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        &["cluster_name", "endpoints"],
    ),
    (
        "envoy.config.endpoint.v3.LocalityLbEndpoints",
        &[
            "lb_endpoints",
            "load_balancing_weight",
            "locality",
            "metadata",
            "priority",
        ],
    ),
    (
        "envoy.config.endpoint.v3.LbEndpoint",
        &["endpoint", "health_status", "load_balancing_weight", "metadata"],
    ),
    (
        "envoy.config.endpoint.v3.Endpoint",
        &["address", "hostname"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        &[
            "explicit_http_config",
            "use_downstream_protocol_config",
            "auto_config",
            "upstream_http_protocol_options",
            "common_http_protocol_options",
        ],
    ),
    // Also the HCM's `common_http_protocol_options` type: the HCM's translation refuses that
    // field itself (only clusters honour this one).
    (
        "envoy.config.core.v3.HttpProtocolOptions",
        &["max_requests_per_connection"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.AutoHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
    ),
    (
        "envoy.config.core.v3.UpstreamHttpProtocolOptions",
        &["auto_sni", "auto_san_validation"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
    ),
    ("envoy.config.core.v3.Http1ProtocolOptions", &[]),
    (
        "envoy.config.core.v3.Http2ProtocolOptions",
        &[
            "max_concurrent_streams",
            "initial_stream_window_size",
            "initial_connection_window_size",
        ],
    ),
];

/// The fields of `message` skiff honours (for the exhaustive checks' agreement test).
#[cfg(test)]
pub(crate) fn fields_of(message: &str) -> &'static [&'static str] {
    supported_fields(message)
}

fn supported_fields(message: &str) -> &'static [&'static str] {
    SUPPORTED
        .iter()
        .find(|(m, _)| *m == message)
        .map(|(_, f)| *f)
        .unwrap_or(&[])
}

/// Refuses the first set field that skiff does not honour.
pub fn check(msg: &DynamicMessage) -> Result<(), ConfigError> {
    walk(msg, "", &mut Err)
}

/// [`check`] for a message found at `path` (a resource of a discovery response).
pub fn check_at(msg: &DynamicMessage, path: &str) -> Result<(), ConfigError> {
    walk(msg, path, &mut Err)
}

/// Every set field that skiff does not honour (for reports; loading stops at the first).
pub fn unsupported(msg: &DynamicMessage) -> Vec<ConfigError> {
    let mut all = Vec::new();
    let _ = walk(msg, "", &mut |e| {
        all.push(e);
        Ok(())
    });
    all
}

/// Where a refusal goes: returning it stops the walk, `Ok` goes on.
type Sink<'a> = dyn FnMut(ConfigError) -> Result<(), ConfigError> + 'a;

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn walk(msg: &DynamicMessage, path: &str, sink: &mut Sink<'_>) -> Result<(), ConfigError> {
    let name = msg.descriptor().full_name().to_string();
    if name == "google.protobuf.Any" {
        return walk_any(msg, path, sink);
    }
    // Well-known types and metadata (opaque data for filters, whatever it holds) are leaves.
    if name.starts_with("google.protobuf.") || name == "envoy.config.core.v3.Metadata" {
        return Ok(());
    }
    let allowed = supported_fields(&name);
    for (field, value) in msg.fields() {
        let here = join(path, field.name());
        if !allowed.contains(&field.name()) {
            sink(ConfigError::unsupported(here))?;
            continue;
        }
        walk_value(value, &here, sink)?;
    }
    Ok(())
}

fn walk_value(value: &Value, path: &str, sink: &mut Sink<'_>) -> Result<(), ConfigError> {
    match value {
        Value::Message(m) => walk(m, path, sink),
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_value(item, &format!("{path}[{i}]"), sink)?;
            }
            Ok(())
        }
        Value::Map(entries) => {
            for (key, item) in entries {
                let key = match key {
                    MapKey::String(s) => format!("{path}[\"{s}\"]"),
                    other => format!("{path}[{other:?}]"),
                };
                walk_value(item, &key, sink)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn walk_any(msg: &DynamicMessage, path: &str, sink: &mut Sink<'_>) -> Result<(), ConfigError> {
    let any: envoy_types::pb::google::protobuf::Any = proto::to_typed(msg)?;
    let type_name = proto::type_name(&any.type_url);
    let Some(desc) = proto::pool().get_message_by_name(type_name) else {
        return sink(ConfigError::new(
            path,
            format!("unknown @type '{}'", any.type_url),
        ));
    };
    let inner = match DynamicMessage::decode(desc, any.value.as_slice()) {
        Ok(m) => m,
        Err(e) => {
            return sink(ConfigError::new(
                path,
                format!("cannot decode {type_name}: {e}"),
            ))
        }
    };
    walk(&inner, path, sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_yaml(yaml: &str) -> Result<(), ConfigError> {
        let msg = proto::decode_text(yaml, proto::message(proto::BOOTSTRAP)?)?;
        check(&msg)
    }

    #[test]
    fn every_table_entry_names_real_fields() {
        for (message, fields) in SUPPORTED {
            let desc = proto::message(message).expect(message);
            for f in *fields {
                assert!(
                    desc.get_field_by_name(f).is_some(),
                    "{message} has no field {f}"
                );
            }
        }
    }

    #[test]
    fn unsupported_field_is_named_with_its_path() {
        let err = check_yaml(
            "static_resources: { listeners: [ { name: a, address: { socket_address: { address: 127.0.0.1, port_value: 1 } } }, { name: b, tcp_backlog_size: 5 } ] }",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "static_resources.listeners[1].tcp_backlog_size: unsupported"
        );
    }

    #[test]
    fn unsupported_field_inside_typed_config() {
        let err = check_yaml(
            r#"static_resources: { listeners: [ { name: a, filter_chains: [ { filters: [ { name: hcm, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: x, use_remote_address: true } } ] } ] } ] }"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.use_remote_address: unsupported"
        );
    }

    #[test]
    fn unknown_field_is_reported_by_name() {
        let err = proto::decode_text(
            "static_resources: { listeners: [ { name: a, bogus_field: 1 } ] }",
            proto::message(proto::BOOTSTRAP).expect("bootstrap"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus_field"), "{err}");
        assert!(
            err.path.starts_with("static_resources.listeners[0]"),
            "{err}"
        );
    }
}
