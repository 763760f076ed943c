//! The fields skiff honours. Every field set in a bootstrap is checked against this table before
//! translation, so nothing is silently ignored: a field outside it is an error naming its path.
//! Well-known types (`google.protobuf.Duration`, wrappers, `Struct`) are leaves.

use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value};

use super::{proto, ConfigError};

/// Message full name → the fields of it that skiff honours.
const SUPPORTED: &[(&str, &[&str])] = &[
    // application_log_config, deferred_stat_options, stats_sinks, tracing,
    // stats_eviction_interval, stats_config.histogram_bucket_settings' bins,
    // cluster_manager.load_stats_config,
    // layered_runtime's
    // listed keys, cluster_manager's listed fields and the internal listener extension have no
    // effect on traffic in skiff: docs/compatibility.md.
    (
        "envoy.config.bootstrap.v3.Bootstrap",
        &[
            "node",
            "admin",
            "static_resources",
            "dynamic_resources",
            "overload_manager",
            "layered_runtime",
            "cluster_manager",
            "application_log_config",
            "deferred_stat_options",
            "stats_flush_interval",
            "stats_sinks",
            "tracing",
            "bootstrap_extensions",
            "stats_config",
            "stats_eviction_interval",
        ],
    ),
    (
        "envoy.config.metrics.v3.StatsConfig",
        &[
            "stats_tags",
            "use_all_default_tags",
            "stats_matcher",
            "histogram_bucket_settings",
        ],
    ),
    // `bins` sizes Envoy's per-thread storage only (docs/compatibility.md).
    (
        "envoy.config.metrics.v3.HistogramBucketSettings",
        &["match", "buckets", "bins"],
    ),
    (
        "envoy.config.metrics.v3.TagSpecifier",
        &["tag_name", "regex", "fixed_value"],
    ),
    (
        "envoy.config.metrics.v3.StatsMatcher",
        &["reject_all", "exclusion_list", "inclusion_list"],
    ),
    ("envoy.type.matcher.v3.ListStringMatcher", &["patterns"]),
    // The matching API (RBAC's matcher): translate/matcher.rs refuses by path the inputs,
    // matchers and tree forms it does not run.
    ("xds.type.matcher.v3.Matcher", &["matcher_list", "matcher_tree", "on_no_match"]),
    (
        "xds.type.matcher.v3.Matcher.OnMatch",
        &["matcher", "action", "keep_matching"],
    ),
    ("xds.type.matcher.v3.Matcher.MatcherList", &["matchers"]),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.FieldMatcher",
        &["predicate", "on_match"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate",
        &["single_predicate", "or_matcher", "and_matcher", "not_matcher"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate.SinglePredicate",
        &["input", "value_match", "custom_match"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate.PredicateList",
        &["predicate"],
    ),
    ("xds.core.v3.TypedExtensionConfig", &["name", "typed_config"]),
    (
        "xds.type.matcher.v3.Matcher.MatcherTree",
        &["input", "exact_match_map", "prefix_match_map", "custom_match"],
    ),
    ("xds.type.matcher.v3.Matcher.MatcherTree.MatchMap", &["map"]),
    ("xds.type.matcher.v3.IPMatcher", &["range_matchers"]),
    (
        "xds.type.matcher.v3.IPMatcher.IPRangeMatcher",
        &["ranges", "on_match", "exclusive"],
    ),
    ("xds.core.v3.CidrRange", &["address_prefix", "prefix_len"]),
    (
        "xds.type.matcher.v3.StringMatcher",
        &["exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"],
    ),
    ("xds.type.matcher.v3.RegexMatcher", &["google_re2", "regex"]),
    ("envoy.config.rbac.v3.Action", &["name", "action"]),
    (
        "envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
        &["header_name"],
    ),
    ("envoy.extensions.matching.common_inputs.network.v3.SourceIPInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.SourcePortInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.DirectSourceIPInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.ServerNameInput", &[]),
    (
        "envoy.extensions.matching.input_matchers.ip.v3.Ip",
        &["cidr_ranges", "stat_prefix"],
    ),
    (
        "envoy.config.route.v3.CookieMatcher",
        &["name", "string_match", "invert_match"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks",
        &["http_uri", "cache_duration", "async_fetch", "retry_policy"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwksAsyncFetch",
        &["fast_listener", "failed_refetch_duration"],
    ),
    ("envoy.config.core.v3.HttpUri", &["uri", "cluster", "timeout"]),
    (
        "envoy.config.overload.v3.OverloadManager",
        &[
            "refresh_interval",
            "resource_monitors",
            "actions",
            "loadshed_points",
            "buffer_factory_config",
        ],
    ),
    (
        "envoy.config.overload.v3.OverloadAction",
        &["name", "triggers", "typed_config"],
    ),
    (
        "envoy.config.overload.v3.LoadShedPoint",
        &["name", "triggers"],
    ),
    (
        "envoy.config.overload.v3.Trigger",
        &["name", "threshold", "scaled"],
    ),
    ("envoy.config.overload.v3.ThresholdTrigger", &["value"]),
    (
        "envoy.config.overload.v3.ScaledTrigger",
        &["scaling_threshold", "saturation_threshold"],
    ),
    (
        "envoy.config.overload.v3.BufferFactoryConfig",
        &["minimum_account_to_track_power_of_two"],
    ),
    (
        "envoy.config.overload.v3.ScaleTimersOverloadActionConfig",
        &["timer_scale_factors"],
    ),
    (
        "envoy.config.overload.v3.ScaleTimersOverloadActionConfig.ScaleTimer",
        &["timer", "min_timeout", "min_scale"],
    ),
    (
        "envoy.config.overload.v3.ShrinkHeapConfig",
        &["timer_interval", "max_unfreed_memory_bytes"],
    ),
    (
        "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
        &["max_heap_size_bytes", "max_heap_size_bytes_runtime"],
    ),
    (
        "envoy.extensions.resource_monitors.cgroup_memory.v3.CgroupMemoryConfig",
        &["max_memory_bytes"],
    ),
    (
        "envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig",
        &["filename"],
    ),
    (
        "envoy.config.overload.v3.ResourceMonitor",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
        &["max_active_downstream_connections"],
    ),
    ("envoy.config.bootstrap.v3.LayeredRuntime", &["layers"]),
    (
        "envoy.config.bootstrap.v3.RuntimeLayer",
        &["name", "static_layer", "admin_layer", "disk_layer", "rtds_layer"],
    ),
    ("envoy.config.bootstrap.v3.RuntimeLayer.AdminLayer", &[]),
    (
        "envoy.extensions.filters.http.health_check.v3.HealthCheck",
        &["pass_through_mode", "headers"],
    ),
    // RTDS's resource; `layer` is checked key by key when it applies.
    ("envoy.service.runtime.v3.Runtime", &["name", "layer"]),
    (
        "envoy.config.bootstrap.v3.RuntimeLayer.DiskLayer",
        &["symlink_root", "subdirectory", "append_service_cluster"],
    ),
    (
        "envoy.config.bootstrap.v3.RuntimeLayer.RtdsLayer",
        &["name", "rtds_config"],
    ),
    (
        "envoy.config.bootstrap.v3.ClusterManager",
        &[
            "local_cluster_name",
            "outlier_detection",
            "enable_deferred_cluster_creation",
            "load_stats_config",
        ],
    ),
    (
        "envoy.config.bootstrap.v3.ClusterManager.OutlierDetection",
        &["event_log_path"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.ApplicationLogConfig",
        &["log_format"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.ApplicationLogConfig.LogFormat",
        &["text_format", "json_format"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.DeferredStatOptions",
        &["enable_deferred_creation_stats"],
    ),
    (
        "envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
        &["buffer_size_kb"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.DynamicResources",
        &["lds_config", "cds_config", "ads_config"],
    ),
    // Files, ADS and gRPC sources; REST is refused by value (api_type).
    (
        "envoy.config.core.v3.ConfigSource",
        &[
            "path",
            "path_config_source",
            "ads",
            "api_config_source",
            "initial_fetch_timeout",
            "resource_api_version",
        ],
    ),
    ("envoy.config.core.v3.AggregatedConfigSource", &[]),
    (
        "envoy.config.core.v3.ApiConfigSource",
        &[
            "api_type",
            "transport_api_version",
            "grpc_services",
            "set_node_on_first_message_only",
            // REST: its server, how often it is polled and how long a request may take. On
            // gRPC sources Envoy reads neither delay nor timeout either.
            "cluster_names",
            "refresh_delay",
            "request_timeout",
            // gRPC: a token bucket for the stream's requests; REST ignores it, as Envoy's.
            "rate_limit_settings",
        ],
    ),
    (
        "envoy.config.core.v3.RateLimitSettings",
        &["max_tokens", "fill_rate"],
    ),
    (
        "envoy.config.core.v3.GrpcService",
        &["envoy_grpc", "google_grpc", "initial_metadata", "timeout"],
    ),
    // A google_grpc server reached as an envoy_grpc cluster would reach it (google_grpc.rs).
    (
        "envoy.config.core.v3.GrpcService.GoogleGrpc",
        &["target_uri", "channel_credentials", "stat_prefix"],
    ),
    (
        "envoy.config.core.v3.GrpcService.GoogleGrpc.ChannelCredentials",
        &["ssl_credentials", "local_credentials", "google_default"],
    ),
    (
        "envoy.config.core.v3.GrpcService.GoogleGrpc.SslCredentials",
        &["root_certs", "private_key", "cert_chain"],
    ),
    ("envoy.config.core.v3.GrpcService.GoogleGrpc.GoogleLocalCredentials", &[]),
    (
        "envoy.config.core.v3.GrpcService.EnvoyGrpc",
        &["cluster_name", "authority"],
    ),
    ("envoy.config.core.v3.HeaderValue", &["key", "value"]),
    // A Unix socket endpoint of a cluster that carries xDS or SDS streams.
    ("envoy.config.core.v3.Pipe", &["path"]),
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
    // profile_path: where Envoy's CPU profiler writes; skiff has no profiler.
    (
        "envoy.config.bootstrap.v3.Admin",
        &["address", "profile_path", "access_log", "access_log_path"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.StaticResources",
        &["listeners", "clusters", "secrets"],
    ),
    (
        "envoy.config.core.v3.Address",
        &["socket_address", "pipe", "envoy_internal_address"],
    ),
    (
        "envoy.config.core.v3.EnvoyInternalAddress",
        &["server_listener_name", "endpoint_id"],
    ),
    ("envoy.config.listener.v3.Listener.InternalListenerConfig", &[]),
    (
        "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
        &["passthrough_metadata", "transport_socket"],
    ),
    (
        "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport.MetadataValueSource",
        &["kind", "name"],
    ),
    (
        "envoy.type.metadata.v3.MetadataKind",
        &["request", "route", "cluster", "host"],
    ),
    ("envoy.type.metadata.v3.MetadataKind.Host", &[]),
    ("envoy.type.metadata.v3.MetadataKind.Cluster", &[]),
    ("envoy.type.metadata.v3.MetadataKind.Request", &[]),
    ("envoy.type.metadata.v3.MetadataKind.Route", &[]),
    (
        "envoy.config.core.v3.SocketAddress",
        &["protocol", "address", "port_value", "ipv4_compat"],
    ),
    (
        "envoy.config.listener.v3.Listener",
        &[
            "name",
            "address",
            "access_log",
            "stat_prefix",
            "filter_chains",
            "default_filter_chain",
            "filter_chain_matcher",
            "udp_listener_config",
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
            "ignore_global_conn_limit",
            "bypass_overload_manager",
            "internal_listener",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.TransportSocketMatch",
        &["name", "match", "transport_socket"],
    ),
    (
        "envoy.config.listener.v3.UdpListenerConfig",
        &[
            "downstream_socket_config",
            "quic_options",
            "udp_packet_packet_writer_config",
        ],
    ),
    (
        "envoy.config.core.v3.UdpSocketConfig",
        &["max_rx_datagram_size", "prefer_gro"],
    ),
    (
        "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig",
        &[
            "stat_prefix",
            "cluster",
            "matcher",
            "idle_timeout",
            "use_original_src_ip",
            "hash_policies",
            "upstream_socket_config",
            "use_per_packet_load_balancing",
            "access_log",
            "proxy_access_log",
            "session_filters",
            "tunneling_config",
            "access_log_options",
        ],
    ),
    (
        "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig.HashPolicy",
        &["source_ip", "key"],
    ),
    ("envoy.extensions.filters.udp.udp_proxy.v3.Route", &["cluster"]),
    (
        "envoy.config.listener.v3.AdditionalAddress",
        &["address", "socket_options"],
    ),
    (
        "envoy.config.core.v3.SocketOptionsOverride",
        &["socket_options"],
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
        &[
            "filters",
            "name",
            "filter_chain_match",
            "transport_socket",
            "transport_socket_connect_timeout",
        ],
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
        &["name", "typed_config", "filter_disabled"],
    ),
    (
        "envoy.config.listener.v3.ListenerFilterChainMatchPredicate",
        &[
            "or_match",
            "and_match",
            "not_match",
            "any_match",
            "destination_port_range",
        ],
    ),
    (
        "envoy.config.listener.v3.ListenerFilterChainMatchPredicate.MatchSet",
        &["rules"],
    ),
    ("envoy.type.v3.Int32Range", &["start", "end"]),
    // Without a tracer, only the sampling decision acts (on x-request-id); the rest names
    // spans that are never made (docs/compatibility.md).
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing",
        &[
            "client_sampling",
            "random_sampling",
            "overall_sampling",
            "verbose",
            "max_path_tag_length",
            "custom_tags",
            "spawn_upstream_span",
            "operation",
            "upstream_operation",
            "provider",
        ],
    ),
    ("envoy.config.trace.v3.Tracing.Http", &["name", "typed_config"]),
    (
        "envoy.extensions.tracers.opentelemetry.samplers.v3.AlwaysOnSamplerConfig",
        &[],
    ),
    (
        "envoy.extensions.tracers.opentelemetry.samplers.v3.ParentBasedSamplerConfig",
        &["wrapped_sampler"],
    ),
    (
        "envoy.extensions.tracers.opentelemetry.samplers.v3.TraceIdRatioBasedSamplerConfig",
        &["sampling_percentage"],
    ),
    (
        "envoy.config.trace.v3.OpenTelemetryConfig",
        &[
            "grpc_service",
            "http_service",
            "exporter",
            "service_name",
            "resource_detectors",
            "sampler",
            "max_cache_size",
            "set_telemetry_sdk_resource_attributes",
            "set_service_name_resource_attribute",
            "set_instrumentation_scope",
        ],
    ),
    (
        "envoy.config.trace.v3.ZipkinConfig",
        &[
            "collector_cluster",
            "collector_endpoint",
            "trace_id_128bit",
            "shared_span_context",
            "collector_endpoint_version",
            "collector_hostname",
            "split_spans_for_request",
            "trace_context_option",
            "collector_service",
            "timestamp_trace_ids",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.RequestIDExtension",
        &["typed_config"],
    ),
    (
        "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
        &["pack_trace_reason", "use_request_id_for_trace_sampling"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails",
        &["subject", "cert", "chain", "dns", "uri"],
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
    // JA3/JA4 fingerprints feed nothing skiff runs (docs/compatibility.md).
    (
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
        &[
            "initial_read_buffer_size",
            "max_client_hello_size",
            "close_connection_on_client_hello_parsing_errors",
            "enable_ja3_fingerprinting",
            "enable_ja4_fingerprinting",
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
            "tunneling_config",
            "access_log_flush_interval",
            "flush_access_log_on_connected",
            "access_log_options",
            "metadata_match",
        ],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.TunnelingConfig",
        &["hostname", "use_post", "post_path", "headers_to_add"],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster",
        &["clusters"],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight",
        &["name", "weight", "metadata_match"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        &[
            "forward_client_cert_details",
            "set_current_client_cert_details",
            "tracing",
            "request_id_extension",
            "codec_type",
            "stat_prefix",
            "route_config",
            "rds",
            "scoped_routes",
            "http_filters",
            "access_log",
            "server_name",
            "server_header_transformation",
            "http1_safe_max_connection_duration",
            "generate_request_id",
            "preserve_external_request_id",
            "always_set_request_id_in_response",
            "via",
            "http_protocol_options",
            "http2_protocol_options",
            "upgrade_configs",
            "use_remote_address",
            "xff_num_trusted_hops",
            "skip_xff_append",
            "original_ip_detection_extensions",
            "early_header_mutation_extensions",
            "internal_address_config",
            "normalize_path",
            "merge_slashes",
            "path_with_escaped_slashes_action",
            "strip_matching_host_port",
            "strip_any_host_port",
            "common_http_protocol_options",
            "stream_idle_timeout",
            "request_timeout",
            "request_headers_timeout",
            "max_request_headers_kb",
            "drain_timeout",
            "drain_timeout_jitter",
            "delayed_close_timeout",
            "local_reply_config",
            "scheme_header_transformation",
            "add_user_agent",
            "proxy_100_continue",
            "access_log_flush_interval",
            "flush_access_log_on_new_request",
            "access_log_options",
            "strip_trailing_host_dot",
            "append_x_forwarded_port",
        ],
    ),
    (
        "envoy.config.core.v3.SchemeHeaderTransformation",
        &["scheme_to_overwrite", "match_upstream"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.LocalReplyConfig",
        &["mappers", "body_format"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.ResponseMapper",
        &[
            "filter",
            "status_code",
            "body",
            "body_format_override",
            "headers_to_add",
        ],
    ),
    // The connection manager's; a cluster's are not reachable through the table.
    (
        "envoy.config.core.v3.HttpProtocolOptions",
        // The connection manager honours all of these, a cluster only
        // max_requests_per_connection; the cluster translation refuses the others by path.
        &[
            "headers_with_underscores_action",
            "max_requests_per_connection",
            "idle_timeout",
            "max_connection_duration",
            "max_stream_duration",
            "max_headers_count",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.InternalAddressConfig",
        &["cidr_ranges"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig",
        &["upgrade_type", "enabled", "filters"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        // is_optional lets Envoy skip a filter it does not know; skiff refuses those anyway.
        &["name", "typed_config", "disabled", "is_optional"],
    ),
    (
        "envoy.config.route.v3.FilterConfig",
        &["config", "is_optional", "disabled"],
    ),
    (
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        &[
            "stat_prefix",
            "status",
            "token_bucket",
            "filter_enabled",
            "filter_enforced",
            "request_headers_to_add_when_not_enforced",
            "response_headers_to_add",
            "descriptors",
            "stage",
            "local_rate_limit_per_downstream_connection",
            "enable_x_ratelimit_headers",
            "vh_rate_limits",
            "always_consume_default_token_bucket",
            "rate_limits",
            "max_dynamic_descriptors",
        ],
    ),
    ("envoy.type.v3.HttpStatus", &["code"]),
    // The global rate limit filter: the translation refuses by path what it does not run.
    (
        "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        &[
            "domain",
            "stage",
            "request_type",
            "timeout",
            "failure_mode_deny",
            "rate_limited_as_resource_exhausted",
            "rate_limit_service",
            "enable_x_ratelimit_headers",
            "disable_x_envoy_ratelimited_header",
            "rate_limited_status",
            "response_headers_to_add",
            "status_on_error",
            "stat_prefix",
            "filter_enabled",
            "filter_enforced",
            "failure_mode_deny_percent",
            "rate_limits",
            "enable_retry_after_header",
        ],
    ),
    (
        "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute",
        &["vh_rate_limits", "override_option", "rate_limits", "domain"],
    ),
    // External authorization: the translation refuses by path what it does not run.
    (
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        &[
            "grpc_service",
            "http_service",
            "transport_api_version",
            "failure_mode_allow",
            "failure_mode_allow_header_add",
            "with_request_body",
            "clear_route_cache",
            "status_on_error",
            "validate_mutations",
            "metadata_context_namespaces",
            "typed_metadata_context_namespaces",
            "route_metadata_context_namespaces",
            "route_typed_metadata_context_namespaces",
            "filter_enabled",
            "filter_enabled_metadata",
            "deny_at_disable",
            "include_peer_certificate",
            "stat_prefix",
            "bootstrap_metadata_labels_key",
            "allowed_headers",
            "disallowed_headers",
            "include_tls_session",
            "charge_cluster_response_stats",
            "encode_raw_headers",
            "decoder_header_mutation_rules",
            "enable_dynamic_metadata_ingestion",
            "filter_metadata",
            "emit_filter_state_stats",
            "max_denied_response_body_bytes",
            "enforce_response_header_limits",
            "shadow_mode",
            "emit_client_span",
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.BufferSettings",
        &["max_request_bytes", "allow_partial_message", "pack_as_bytes"],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.HttpService",
        &[
            "server_uri",
            "path_prefix",
            "path_override",
            "authorization_request",
            "authorization_response",
            "retry_policy",
        ],
    ),
    // A filter's own calls' retries (ext_authz's http_service; jwt_authn refuses its own).
    (
        "envoy.config.core.v3.RetryPolicy",
        &[
            "retry_back_off",
            "num_retries",
            "retry_on",
            "retry_priority",
            "retry_host_predicate",
            "host_selection_retry_max_attempts",
        ],
    ),
    (
        "envoy.config.core.v3.BackoffStrategy",
        &["base_interval", "max_interval"],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest",
        &["allowed_headers", "headers_to_add"],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse",
        &[
            "allowed_upstream_headers",
            "allowed_upstream_headers_to_append",
            "allowed_client_headers",
            "allowed_client_headers_on_success",
            "dynamic_metadata_from_headers",
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        &["disabled", "check_settings"],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.CheckSettings",
        &[
            "context_extensions",
            "disable_request_body_buffering",
            "with_request_body",
            "emit_client_span",
            "grpc_service",
            "http_service",
        ],
    ),
    ("envoy.type.matcher.v3.ListStringMatcher", &["patterns"]),
    // The matching API (RBAC's matcher): translate/matcher.rs refuses by path the inputs,
    // matchers and tree forms it does not run.
    ("xds.type.matcher.v3.Matcher", &["matcher_list", "matcher_tree", "on_no_match"]),
    (
        "xds.type.matcher.v3.Matcher.OnMatch",
        &["matcher", "action", "keep_matching"],
    ),
    ("xds.type.matcher.v3.Matcher.MatcherList", &["matchers"]),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.FieldMatcher",
        &["predicate", "on_match"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate",
        &["single_predicate", "or_matcher", "and_matcher", "not_matcher"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate.SinglePredicate",
        &["input", "value_match", "custom_match"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate.PredicateList",
        &["predicate"],
    ),
    ("xds.core.v3.TypedExtensionConfig", &["name", "typed_config"]),
    (
        "xds.type.matcher.v3.StringMatcher",
        &["exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"],
    ),
    ("xds.type.matcher.v3.RegexMatcher", &["google_re2", "regex"]),
    ("envoy.config.rbac.v3.Action", &["name", "action"]),
    (
        "envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
        &["header_name"],
    ),
    ("envoy.extensions.matching.common_inputs.network.v3.SourceIPInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.SourcePortInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.DirectSourceIPInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.ServerNameInput", &[]),
    (
        "envoy.extensions.matching.input_matchers.ip.v3.Ip",
        &["cidr_ranges", "stat_prefix"],
    ),
    (
        "envoy.config.route.v3.CookieMatcher",
        &["name", "string_match", "invert_match"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks",
        &["http_uri", "cache_duration", "async_fetch", "retry_policy"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwksAsyncFetch",
        &["fast_listener", "failed_refetch_duration"],
    ),
    (
        "envoy.config.ratelimit.v3.RateLimitServiceConfig",
        &["grpc_service", "transport_api_version"],
    ),
    // RBAC: the translation refuses by path what it does not run (matchers, metadata, CEL
    // conditions, filter state, custom extensions, audit logging, per-rule stats).
    (
        "envoy.extensions.filters.http.rbac.v3.RBAC",
        &[
            "rules",
            "rules_stat_prefix",
            "matcher",
            "shadow_rules",
            "shadow_matcher",
            "shadow_rules_stat_prefix",
            "track_per_rule_stats",
        ],
    ),
    ("envoy.extensions.filters.http.rbac.v3.RBACPerRoute", &["rbac"]),
    // jwt_authn: the translation refuses by path what it does not run (remote JWKS,
    // metadata, filter state rules, route cache clearing, claim paths, extract-only).
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        &[
            "providers",
            "rules",
            "filter_state_rules",
            "bypass_cors_preflight",
            "requirement_map",
            "strip_failure_response",
            "stat_prefix",
        ],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider",
        &[
            "issuer",
            "audiences",
            "subjects",
            "require_expiration",
            "max_lifetime",
            "forward",
            "from_headers",
            "from_params",
            "from_cookies",
            "forward_payload_header",
            "pad_forward_payload_header",
            "payload_in_metadata",
            "normalize_payload_in_metadata",
            "header_in_metadata",
            "failed_status_in_metadata",
            "clock_skew_seconds",
            "jwt_cache_config",
            "claim_to_headers",
            "clear_route_cache",
            "remote_jwks",
            "local_jwks",
        ],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtHeader",
        &["name", "value_prefix"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider.NormalizePayload",
        &["space_delimited_claims"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtCacheConfig",
        &["jwt_cache_size", "jwt_max_token_size"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader",
        &["header_name", "claim_name", "claim_path"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.ProviderWithAudiences",
        &["provider_name", "audiences"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement",
        &[
            "provider_name",
            "provider_and_audiences",
            "requires_any",
            "requires_all",
            "allow_missing_or_failed",
            "allow_missing",
            "extract_only_without_validation",
        ],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementOrList",
        &["requirements"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementAndList",
        &["requirements"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.RequirementRule",
        &["match", "requires", "requirement_name"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
        &["disabled", "requirement_name"],
    ),
    (
        "envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig",
        &[
            "header_name",
            "allow_extension_to_set_address_as_trusted",
            "reject_with_status",
        ],
    ),
    (
        "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
        &["mutations"],
    ),
    (
        "envoy.extensions.http.original_ip_detection.xff.v3.XffConfig",
        &["xff_num_trusted_hops", "xff_trusted_cidrs", "skip_xff_append"],
    ),
    (
        "envoy.extensions.http.original_ip_detection.xff.v3.XffTrustedCidrs",
        &["cidrs"],
    ),
    (
        "envoy.extensions.filters.network.rbac.v3.RBAC",
        &[
            "rules",
            "matcher",
            "shadow_rules",
            "shadow_matcher",
            "shadow_rules_stat_prefix",
            "stat_prefix",
            "enforcement_type",
            "delay_deny",
        ],
    ),
    (
        "envoy.config.rbac.v3.RBAC",
        &["action", "policies", "audit_logging_options"],
    ),
    (
        "envoy.config.rbac.v3.Policy",
        &["permissions", "principals", "condition", "checked_condition"],
    ),
    (
        "envoy.config.rbac.v3.Permission",
        &[
            "and_rules",
            "or_rules",
            "any",
            "header",
            "url_path",
            "destination_ip",
            "destination_port",
            "destination_port_range",
            "metadata",
            "not_rule",
            "requested_server_name",
            "matcher",
            "uri_template",
            "sourced_metadata",
        ],
    ),
    ("envoy.config.rbac.v3.Permission.Set", &["rules"]),
    (
        "envoy.config.rbac.v3.Principal",
        &[
            "and_ids",
            "or_ids",
            "any",
            "authenticated",
            "source_ip",
            "direct_remote_ip",
            "remote_ip",
            "header",
            "url_path",
            "metadata",
            "filter_state",
            "not_id",
            "sourced_metadata",
            "custom",
        ],
    ),
    ("envoy.config.rbac.v3.Principal.Set", &["ids"]),
    ("envoy.config.rbac.v3.Principal.Authenticated", &["principal_name"]),
    ("envoy.type.matcher.v3.PathMatcher", &["path"]),
    (
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        &[
            "delay",
            "abort",
            "headers",
            "downstream_nodes",
            "max_active_faults",
            "delay_percent_runtime",
            "abort_percent_runtime",
            "delay_duration_runtime",
            "abort_http_status_runtime",
            "abort_grpc_status_runtime",
            "max_active_faults_runtime",
            "disable_downstream_cluster_stats",
        ],
    ),
    (
        "envoy.extensions.filters.common.fault.v3.FaultDelay",
        &["fixed_delay", "header_delay", "percentage"],
    ),
    (
        "envoy.extensions.filters.common.fault.v3.FaultDelay.HeaderDelay",
        &[],
    ),
    (
        "envoy.extensions.filters.http.fault.v3.FaultAbort",
        &["http_status", "grpc_status", "percentage", "response_body"],
    ),
    (
        "envoy.extensions.common.ratelimit.v3.LocalRateLimitDescriptor",
        &["entries", "token_bucket", "shadow_mode"],
    ),
    (
        "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry",
        &["key", "value"],
    ),
    (
        "envoy.config.route.v3.RateLimit",
        &[
            "stage",
            "actions",
            "x_ratelimit_option",
            "hits_addend",
            "apply_on_stream_done",
            "limit",
        ],
    ),
    ("envoy.config.route.v3.RateLimit.Override", &["dynamic_metadata"]),
    (
        "envoy.config.route.v3.RateLimit.Override.DynamicMetadata",
        &["metadata_key"],
    ),
    ("envoy.config.route.v3.RateLimit.HitsAddend", &["number", "format"]),
    (
        "envoy.config.route.v3.RateLimit.Action",
        &[
            "request_headers",
            "remote_address",
            "generic_key",
            "header_value_match",
            "masked_remote_address",
            "query_parameter_value_match",
            "remote_address_match",
        ],
    ),
    (
        "envoy.config.route.v3.RateLimit.Action.RequestHeaders",
        &["header_name", "descriptor_key", "skip_if_absent"],
    ),
    ("envoy.config.route.v3.RateLimit.Action.RemoteAddress", &[]),
    (
        "envoy.config.route.v3.RateLimit.Action.GenericKey",
        &["descriptor_value", "descriptor_key", "default_value"],
    ),
    (
        "envoy.config.route.v3.RateLimit.Action.HeaderValueMatch",
        &[
            "descriptor_value",
            "descriptor_key",
            "default_value",
            "expect_match",
            "headers",
        ],
    ),
    (
        "envoy.config.route.v3.RateLimit.Action.MaskedRemoteAddress",
        &["v4_prefix_mask_len", "v6_prefix_mask_len"],
    ),
    (
        "envoy.config.route.v3.RateLimit.Action.QueryParameterValueMatch",
        &[
            "descriptor_value",
            "descriptor_key",
            "default_value",
            "expect_match",
            "query_parameters",
        ],
    ),
    (
        "envoy.config.route.v3.RateLimit.Action.RemoteAddressMatch",
        &[
            "descriptor_value",
            "descriptor_key",
            "default_value",
            "address_matcher",
        ],
    ),
    (
        "envoy.type.matcher.v3.AddressMatcher",
        &["ranges", "invert_match"],
    ),
    ("xds.core.v3.CidrRange", &["address_prefix", "prefix_len"]),
    (
        "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute",
        &["disabled", "overrides"],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.CompressorOverrides",
        &["response_direction_config"],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.ResponseDirectionOverrides",
        &["remove_accept_encoding_header"],
    ),
    (
        "envoy.extensions.filters.http.router.v3.Router",
        &[
            "dynamic_stats",
            "suppress_envoy_headers",
            "start_child_span",
        ],
    ),
    (
        "envoy.config.route.v3.RouteConfiguration",
        &[
            "name",
            "typed_per_filter_config",
            "virtual_hosts",
            "ignore_port_in_host_matching",
            "max_direct_response_body_size_bytes",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "most_specific_header_mutations_wins",
            "internal_only_headers",
            "validate_clusters",
            // Data for filters and access logs skiff does not have; see docs/compatibility.md.
            "metadata",
            "request_mirror_policies",
            "vhost_header",
            "cluster_specifier_plugins",
        ],
    ),
    (
        "envoy.config.core.v3.HeaderValueOption",
        &["header", "append", "append_action", "keep_empty_value"],
    ),
    (
        "envoy.config.core.v3.HeaderValue",
        &["key", "value", "raw_value"],
    ),
    (
        "envoy.config.route.v3.VirtualHost",
        &[
            "name",
            "typed_per_filter_config",
            "domains",
            "routes",
            "matcher",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "metadata",
            "include_request_attempt_count",
            "include_attempt_count_in_response",
            "include_is_timeout_retry_header",
            "require_tls",
            "retry_policy",
            "hedge_policy",
            "virtual_clusters",
            "rate_limits",
            "request_mirror_policies",
            "cors",
            "per_request_buffer_limit_bytes",
            "request_body_buffer_limit",
        ],
    ),
    ("envoy.config.route.v3.VirtualCluster", &["name", "headers"]),
    ("envoy.config.route.v3.RouteList", &["routes"]),
    // A route's cluster specifier: `is_optional` matters only for a plugin Envoy lacks; skiff
    // refuses any plugin but the matcher.
    (
        "envoy.config.route.v3.ClusterSpecifierPlugin",
        &["extension", "is_optional"],
    ),
    (
        "envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig",
        &["source_code", "default_cluster"],
    ),
    (
        "envoy.extensions.router.cluster_specifiers.matcher.v3.MatcherClusterSpecifier",
        &["cluster_matcher"],
    ),
    (
        "envoy.extensions.router.cluster_specifiers.matcher.v3.ClusterAction",
        &["cluster"],
    ),
    // Scoped routes with their configurations inline: `rds_config_source` and `on_demand`
    // apply only to scopes from SRDS or RDS, which skiff refuses (docs/compatibility.md).
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.ScopedRoutes",
        &[
            "name",
            "scope_key_builder",
            "rds_config_source",
            "scoped_route_configurations_list",
            "scoped_rds",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.ScopedRds",
        &["scoped_rds_config_source", "srds_resources_locator"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.ScopedRoutes.ScopeKeyBuilder",
        &["fragments"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder",
        &["header_value_extractor"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor",
        &["name", "element_separator", "index", "element"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor.KvElement",
        &["separator", "key"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.ScopedRouteConfigurationsList",
        &["scoped_route_configurations"],
    ),
    (
        "envoy.config.route.v3.ScopedRouteConfiguration",
        &[
            "on_demand",
            "name",
            "route_configuration",
            "route_configuration_name",
            "key",
        ],
    ),
    ("envoy.config.route.v3.ScopedRouteConfiguration.Key", &["fragments"]),
    (
        "envoy.config.route.v3.ScopedRouteConfiguration.Key.Fragment",
        &["string_key"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy",
        &[
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "per_try_idle_timeout",
            "retry_host_predicate",
            "host_selection_retry_max_attempts",
            "retriable_status_codes",
            "retry_back_off",
            "retriable_headers",
            "retriable_request_headers",
            "rate_limited_retry_back_off",
            "retry_priority",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.HcmAccessLogOptions",
        &[
            "access_log_flush_interval",
            "flush_access_log_on_new_request",
            "flush_log_on_tunnel_successfully_established",
        ],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.TcpAccessLogOptions",
        &["access_log_flush_interval", "flush_access_log_on_connected"],
    ),
    ("envoy.config.route.v3.NonForwardingAction", &[]),
    (
        "envoy.config.route.v3.HedgePolicy",
        &[
            "initial_requests",
            "additional_request_chance",
            "hedge_on_per_try_timeout",
        ],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryPriority",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
        &["update_frequency"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryBackOff",
        &["base_interval", "max_interval"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RateLimitedRetryBackOff",
        &["reset_headers", "max_interval"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.ResetHeader",
        &["name", "format"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryHostPredicate",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
        &[],
    ),
    (
        "envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate",
        &[],
    ),
    (
        "envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig",
        &["metadata_match"],
    ),
    (
        "envoy.config.route.v3.Route",
        &[
            "name",
            "typed_per_filter_config",
            "match",
            "route",
            "redirect",
            "direct_response",
            "non_forwarding_action",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "metadata",
            "decorator",
            "tracing",
            "stat_prefix",
            "per_request_buffer_limit_bytes",
            "request_body_buffer_limit",
        ],
    ),
    (
        "envoy.config.route.v3.Tracing",
        &[
            "client_sampling",
            "random_sampling",
            "overall_sampling",
            "custom_tags",
            "operation",
            "upstream_operation",
        ],
    ),
    (
        "envoy.config.route.v3.Decorator",
        &["operation", "propagate"],
    ),
    (
        "envoy.config.route.v3.RedirectAction",
        &[
            "https_redirect",
            "scheme_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "regex_rewrite",
            "response_code",
            "strip_query",
        ],
    ),
    (
        "envoy.config.route.v3.DirectResponseAction",
        &["status", "body", "body_format"],
    ),
    (
        "envoy.config.route.v3.WeightedCluster",
        &[
            "clusters",
            "runtime_key_prefix",
            "header_name",
            "use_hash_policy",
            "total_weight",
        ],
    ),
    (
        "envoy.config.route.v3.WeightedCluster.ClusterWeight",
        &[
            "name",
            "weight",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "host_rewrite_literal",
            "metadata_match",
            "cluster_header",
            "typed_per_filter_config",
        ],
    ),
    (
        "envoy.type.matcher.v3.RegexMatchAndSubstitute",
        &["pattern", "substitution"],
    ),
    (
        "envoy.config.route.v3.RouteMatch",
        &[
            "prefix",
            "path",
            "path_separated_prefix",
            "safe_regex",
            "case_sensitive",
            "headers",
            "query_parameters",
            "grpc",
            "runtime_fraction",
            "connect_matcher",
            "tls_context",
            "path_match_policy",
            "dynamic_metadata",
            "cookies",
            "filter_state",
        ],
    ),
    (
        "envoy.type.matcher.v3.MetadataMatcher",
        &["filter", "path", "value", "invert"],
    ),
    ("envoy.type.matcher.v3.MetadataMatcher.PathSegment", &["key"]),
    (
        "envoy.extensions.matching.common_inputs.network.v3.DynamicMetadataInput",
        &["filter", "path"],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.DynamicMetadataInput.PathSegment",
        &["key"],
    ),
    (
        "envoy.extensions.matching.input_matchers.metadata.v3.Metadata",
        &["value", "invert"],
    ),
    (
        "envoy.type.matcher.v3.ValueMatcher",
        &[
            "null_match",
            "double_match",
            "string_match",
            "bool_match",
            "present_match",
            "list_match",
            "or_match",
        ],
    ),
    ("envoy.type.matcher.v3.ValueMatcher.NullMatch", &[]),
    ("envoy.type.matcher.v3.DoubleMatcher", &["range", "exact"]),
    ("envoy.type.v3.DoubleRange", &["start", "end"]),
    ("envoy.type.matcher.v3.ListMatcher", &["one_of"]),
    ("envoy.type.matcher.v3.OrMatcher", &["value_matchers"]),
    (
        "envoy.config.route.v3.CorsPolicy",
        &[
            "allow_origin_string_match",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "max_age",
            "allow_credentials",
            "filter_enabled",
            "shadow_enabled",
            "allow_private_network_access",
            "forward_not_matching_preflights",
        ],
    ),
    (
        "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        &[
            "allow_origin_string_match",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "max_age",
            "allow_credentials",
            "filter_enabled",
            "shadow_enabled",
            "allow_private_network_access",
            "forward_not_matching_preflights",
        ],
    ),
    (
        "envoy.extensions.filters.http.header_to_metadata.v3.Config",
        &["request_rules", "response_rules", "stat_prefix"],
    ),
    (
        "envoy.extensions.filters.http.header_to_metadata.v3.Config.Rule",
        &[
            "header",
            "cookie",
            "on_header_present",
            "on_header_missing",
            "remove",
        ],
    ),
    (
        "envoy.extensions.filters.http.header_to_metadata.v3.Config.KeyValuePair",
        &[
            "metadata_namespace",
            "key",
            "value",
            "regex_value_rewrite",
            "type",
            "encode",
        ],
    ),
    (
        "envoy.config.route.v3.InternalRedirectPolicy",
        &[
            "max_internal_redirects",
            "redirect_response_codes",
            "predicates",
            "allow_cross_scheme_redirect",
            "response_headers_to_copy",
        ],
    ),
    (
        "envoy.extensions.internal_redirect.allow_listed_routes.v3.AllowListedRoutesConfig",
        &["allowed_route_names"],
    ),
    (
        "envoy.extensions.internal_redirect.previous_routes.v3.PreviousRoutesConfig",
        &[],
    ),
    (
        "envoy.extensions.internal_redirect.safe_cross_scheme.v3.SafeCrossSchemeConfig",
        &[],
    ),
    (
        "envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
        &["path_template"],
    ),
    (
        "envoy.extensions.path.rewrite.uri_template.v3.UriTemplateRewriteConfig",
        &["path_template_rewrite"],
    ),
    (
        "envoy.config.route.v3.RouteMatch.TlsContextMatchOptions",
        &["presented", "validated"],
    ),
    ("envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions", &[]),
    ("envoy.config.route.v3.RouteMatch.ConnectMatcher", &[]),
    (
        "envoy.config.route.v3.QueryParameterMatcher",
        &["name", "string_match", "present_match"],
    ),
    (
        "envoy.type.matcher.v3.RegexMatcher",
        &["google_re2", "regex"],
    ),
    ("envoy.type.matcher.v3.RegexMatcher.GoogleRE2", &[]),
    ("envoy.type.v3.Int64Range", &["start", "end"]),
    (
        "envoy.config.route.v3.HeaderMatcher",
        &[
            "name",
            "string_match",
            "present_match",
            "invert_match",
            "exact_match",
            "safe_regex_match",
            "range_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
            "treat_missing_header_as_empty",
        ],
    ),
    (
        "envoy.type.matcher.v3.StringMatcher",
        &[
            "exact",
            "prefix",
            "suffix",
            "contains",
            "safe_regex",
            "ignore_case",
        ],
    ),
    (
        "envoy.config.route.v3.RouteAction",
        &[
            "cluster",
            "cluster_header",
            "inline_cluster_specifier_plugin",
            "cluster_specifier_plugin",
            "weighted_clusters",
            "cluster_not_found_response_code",
            "timeout",
            "upgrade_configs",
            "prefix_rewrite",
            "regex_rewrite",
            "path_rewrite_policy",
            "internal_redirect_policy",
            "host_rewrite_literal",
            "host_rewrite_header",
            "auto_host_rewrite",
            "host_rewrite_path_regex",
            "host_rewrite",
            "path_rewrite",
            "append_x_forwarded_host",
            "retry_policy",
            "hedge_policy",
            "priority",
            "max_stream_duration",
            "idle_timeout",
            "request_mirror_policies",
            "hash_policy",
            "metadata_match",
            "rate_limits",
            "include_vh_rate_limits",
            "cors",
            "max_grpc_timeout",
            "grpc_timeout_offset",
        ],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy",
        &[
            "header",
            "cookie",
            "connection_properties",
            "query_parameter",
            "filter_state",
            "terminal",
        ],
    ),
    ("envoy.config.route.v3.RouteAction.HashPolicy.FilterState", &["key"]),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.Header",
        &["header_name", "regex_rewrite"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.Cookie",
        &["name", "ttl", "path", "attributes"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.CookieAttribute",
        &["name", "value"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties",
        &["source_ip"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter",
        &["name"],
    ),
    (
        "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
        &[
            "cluster",
            "cluster_header",
            "runtime_fraction",
            "disable_shadow_host_suffix_append",
            "host_rewrite_literal",
        ],
    ),
    (
        "envoy.config.route.v3.RouteAction.MaxStreamDuration",
        &[
            "max_stream_duration",
            "grpc_timeout_header_max",
            "grpc_timeout_header_offset",
        ],
    ),
    (
        "envoy.config.route.v3.RouteAction.UpgradeConfig",
        &["upgrade_type", "enabled", "connect_config"],
    ),
    // allow_post (CONNECT sent as a POST) and proxy_protocol_config are refused.
    (
        "envoy.config.route.v3.RouteAction.UpgradeConfig.ConnectConfig",
        &["allow_post"],
    ),
    // gzip's memory_level and compression_strategy tune how hard zlib works; the output decodes
    // to the same bytes (docs/compatibility.md).
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor",
        &[
            "compressor_library",
            "response_direction_config",
            "request_direction_config",
            "content_length",
            "content_type",
            "disable_on_etag_header",
            "remove_accept_encoding_header",
            "runtime_enabled",
        ],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor.ResponseDirectionConfig",
        &[
            "common_config",
            "disable_on_etag_header",
            "remove_accept_encoding_header",
            "weaken_etag_on_compress",
            "uncompressible_response_codes",
        ],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor.RequestDirectionConfig",
        &["common_config"],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor.CommonDirectionConfig",
        &["enabled", "min_content_length", "content_type"],
    ),
    // Read per stream from the runtime in force.
    (
        "envoy.config.core.v3.RuntimeFeatureFlag",
        &["default_value", "runtime_key"],
    ),
    (
        "envoy.extensions.compression.gzip.compressor.v3.Gzip",
        &[
            "memory_level",
            "compression_level",
            "compression_strategy",
            "window_bits",
            "chunk_size",
        ],
    ),
    (
        "envoy.extensions.compression.brotli.compressor.v3.Brotli",
        &[
            "quality",
            "encoder_mode",
            "window_bits",
            "input_block_bits",
            "chunk_size",
            "disable_literal_context_modeling",
        ],
    ),
    (
        "envoy.extensions.filters.http.decompressor.v3.Decompressor",
        &[
            "decompressor_library",
            "request_direction_config",
            "response_direction_config",
        ],
    ),
    (
        "envoy.extensions.filters.http.decompressor.v3.Decompressor.RequestDirectionConfig",
        &["common_config", "advertise_accept_encoding"],
    ),
    (
        "envoy.extensions.filters.http.decompressor.v3.Decompressor.ResponseDirectionConfig",
        &["common_config"],
    ),
    (
        "envoy.extensions.filters.http.decompressor.v3.Decompressor.CommonDirectionConfig",
        &["enabled", "ignore_no_transform_header"],
    ),
    (
        "envoy.extensions.compression.gzip.decompressor.v3.Gzip",
        &["window_bits", "chunk_size", "max_inflate_ratio"],
    ),
    (
        "envoy.extensions.compression.brotli.decompressor.v3.Brotli",
        // Envoy's ring buffer is its own memory strategy; the output is the same.
        &["disable_ring_buffer_reallocation", "chunk_size"],
    ),
    (
        "envoy.extensions.compression.zstd.decompressor.v3.Zstd",
        &["dictionaries", "chunk_size"],
    ),
    (
        "envoy.extensions.compression.zstd.compressor.v3.Zstd",
        &[
            "compression_level",
            "enable_checksum",
            "strategy",
            "chunk_size",
        ],
    ),
    (
        "envoy.config.accesslog.v3.AccessLog",
        &["name", "typed_config", "filter"],
    ),
    (
        "envoy.config.accesslog.v3.AccessLogFilter",
        &[
            "status_code_filter",
            "duration_filter",
            "response_flag_filter",
            "header_filter",
            "and_filter",
            "or_filter",
            "not_health_check_filter",
            "runtime_filter",
            "grpc_status_filter",
            "log_type_filter",
            "metadata_filter",
            "traceable_filter",
            "extension_filter",
        ],
    ),
    (
        "envoy.config.accesslog.v3.ExtensionFilter",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
        &["expression"],
    ),
    (
        "envoy.config.accesslog.v3.MetadataFilter",
        &["matcher", "match_if_key_not_found"],
    ),
    ("envoy.config.accesslog.v3.TraceableFilter", &[]),
    (
        "envoy.config.accesslog.v3.RuntimeFilter",
        &["runtime_key", "percent_sampled", "use_independent_randomness"],
    ),
    ("envoy.config.accesslog.v3.GrpcStatusFilter", &["statuses", "exclude"]),
    ("envoy.config.accesslog.v3.LogTypeFilter", &["types", "exclude"]),
    ("envoy.config.accesslog.v3.NotHealthCheckFilter", &[]),
    ("envoy.config.accesslog.v3.StatusCodeFilter", &["comparison"]),
    ("envoy.config.accesslog.v3.DurationFilter", &["comparison"]),
    ("envoy.config.accesslog.v3.ComparisonFilter", &["op", "value"]),
    (
        "envoy.config.core.v3.RuntimeUInt32",
        &["default_value", "runtime_key"],
    ),
    ("envoy.config.accesslog.v3.ResponseFlagFilter", &["flags"]),
    ("envoy.config.accesslog.v3.HeaderFilter", &["header"]),
    ("envoy.config.accesslog.v3.AndFilter", &["filters"]),
    ("envoy.config.accesslog.v3.OrFilter", &["filters"]),
    (
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        &["log_format"],
    ),
    (
        "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
        &["log_format"],
    ),
    // `disable_builtin_labels`, `buffer_*` and `stat_prefix` are honoured; `transport_api_version`
    // can only be V3.
    (
        "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        &[
            "common_config",
            "grpc_service",
            "http_service",
            "disable_builtin_labels",
            "resource_attributes",
            "resource_detectors",
            "body",
            "attributes",
            "stat_prefix",
            "formatters",
            "log_name",
            "buffer_flush_interval",
            "buffer_size_bytes",
            "filter_state_objects_to_log",
            "custom_tags",
        ],
    ),
    (
        "envoy.extensions.access_loggers.grpc.v3.CommonGrpcAccessLogConfig",
        &[
            "log_name",
            "grpc_service",
            "transport_api_version",
            "buffer_flush_interval",
            "buffer_size_bytes",
            "filter_state_objects_to_log",
            "grpc_stream_retry_policy",
            "custom_tags",
        ],
    ),
    ("opentelemetry.proto.common.v1.KeyValueList", &["values"]),
    ("opentelemetry.proto.common.v1.KeyValue", &["key", "value"]),
    ("opentelemetry.proto.common.v1.ArrayValue", &["values"]),
    (
        "opentelemetry.proto.common.v1.AnyValue",
        &[
            "string_value",
            "bool_value",
            "int_value",
            "double_value",
            "array_value",
            "kvlist_value",
            "bytes_value",
        ],
    ),
    // `allow_missing` and `emit_dynamic_metadata` are refused by translate/basic_auth.rs.
    (
        "envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
        &[
            "users",
            "forward_username_header",
            "authentication_header",
            "allow_missing",
            "emit_dynamic_metadata",
        ],
    ),
    (
        "envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute",
        &["users"],
    ),
    // Trailer and query parameter mutations are refused by translate/header_mutation.rs.
    (
        "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
        &["mutations", "most_specific_header_mutations_wins"],
    ),
    (
        "envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
        &["mutations"],
    ),
    (
        "envoy.extensions.filters.http.header_mutation.v3.Mutations",
        &[
            "request_mutations",
            "response_mutations",
            "query_parameter_mutations",
            "response_trailers_mutations",
            "request_trailers_mutations",
        ],
    ),
    (
        "envoy.config.common.mutation_rules.v3.HeaderMutation",
        &["append", "remove", "remove_on_match"],
    ),
    (
        "envoy.config.common.mutation_rules.v3.HeaderMutation.RemoveOnMatch",
        &["key_matcher"],
    ),
    (
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        &["path", "log_format", "format", "json_format", "typed_json_format"],
    ),
    (
        "envoy.config.core.v3.SubstitutionFormatString",
        &[
            "text_format_source",
            "text_format",
            "json_format",
            "formatters",
            // A local reply's; Envoy's access logs do not read it either.
            "content_type",
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
            "cleanup_interval",
            "preconnect_policy",
            "transport_socket_matches",
            "name",
            "alt_stat_name",
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
            "health_checks",
            "outlier_detection",
            "track_cluster_stats",
            "least_request_lb_config",
            "round_robin_lb_config",
            "ring_hash_lb_config",
            "maglev_lb_config",
            "lb_subset_config",
            // Istio's metadata exchange only (translate/istio.rs).
            "filters",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.LbSubsetConfig",
        &[
            "fallback_policy",
            "default_subset",
            "subset_selectors",
            "locality_weight_aware",
            "scale_locality_weight",
            "panic_mode_any",
            "list_as_any",
            "metadata_fallback_policy",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.LbSubsetConfig.LbSubsetSelector",
        &[
            "keys",
            "single_host_per_subset",
            "fallback_policy",
            "fallback_keys_subset",
        ],
    ),
    ("envoy.config.cluster.v3.Filter", &["name", "typed_config"]),
    (
        "envoy.config.cluster.v3.TrackClusterStats",
        &["timeout_budgets", "request_response_sizes", "per_endpoint_stats"],
    ),
    // Active health checks (translate/health_check.rs refuses what it does not run).
    (
        "envoy.config.core.v3.HealthCheck",
        &[
            "timeout",
            "interval",
            "initial_jitter",
            "interval_jitter",
            "interval_jitter_percent",
            "unhealthy_threshold",
            "healthy_threshold",
            "reuse_connection",
            "no_traffic_interval",
            "no_traffic_healthy_interval",
            "unhealthy_interval",
            "unhealthy_edge_interval",
            "healthy_edge_interval",
            "always_log_health_check_failures",
            "always_log_health_check_success",
            "event_log_path",
            "event_logger",
            "http_health_check",
            "tcp_health_check",
            "grpc_health_check",
            "tls_options",
            "transport_socket_match_criteria",
        ],
    ),
    ("envoy.config.core.v3.HealthCheck.TlsOptions", &["alpn_protocols"]),
    (
        "envoy.config.core.v3.HealthCheck.GrpcHealthCheck",
        &["service_name", "authority", "initial_metadata"],
    ),
    (
        "envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink",
        &["event_log_path"],
    ),
    (
        "envoy.config.core.v3.HealthCheck.HttpHealthCheck",
        &[
            "host",
            "path",
            "send",
            "receive",
            "response_buffer_size",
            "request_headers_to_add",
            "request_headers_to_remove",
            "expected_statuses",
            "retriable_statuses",
            "codec_client_type",
            "method",
            "service_name_matcher",
        ],
    ),
    ("envoy.config.core.v3.HealthCheck.TcpHealthCheck", &["send", "receive"]),
    ("envoy.config.core.v3.HealthCheck.Payload", &["text", "binary"]),
    // Outlier detection (translate/outlier.rs refuses monitors and degraded detection).
    (
        "envoy.config.cluster.v3.OutlierDetection",
        &[
            "consecutive_5xx",
            "interval",
            "base_ejection_time",
            "max_ejection_percent",
            "enforcing_consecutive_5xx",
            "enforcing_success_rate",
            "success_rate_minimum_hosts",
            "success_rate_request_volume",
            "success_rate_stdev_factor",
            "consecutive_gateway_failure",
            "enforcing_consecutive_gateway_failure",
            "split_external_local_origin_errors",
            "consecutive_local_origin_failure",
            "enforcing_consecutive_local_origin_failure",
            "enforcing_local_origin_success_rate",
            "failure_percentage_threshold",
            "enforcing_failure_percentage",
            "enforcing_failure_percentage_local_origin",
            "failure_percentage_minimum_hosts",
            "failure_percentage_request_volume",
            "max_ejection_time",
            "max_ejection_time_jitter",
            "successful_active_health_check_uneject_host",
            "always_eject_one_host",
            "detect_degraded_hosts",
        ],
    ),
    // Istio's extensions (istio.rs).
    (crate::istio::ALPN, &["alpn_override"]),
    (
        "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig.AlpnOverride",
        &["upstream_protocol", "alpn_override"],
    ),
    (
        crate::istio::PEER_METADATA,
        &[
            "downstream_discovery",
            "upstream_discovery",
            "downstream_propagation",
            "upstream_propagation",
            "shared_with_upstream",
            "additional_labels",
        ],
    ),
    (
        "io.istio.http.peer_metadata.Config.DiscoveryMethod",
        &["workload_discovery", "istio_headers", "baggage"],
    ),
    (
        "io.istio.http.peer_metadata.Config.PropagationMethod",
        &["istio_headers"],
    ),
    (
        "io.istio.http.peer_metadata.Config.IstioHeaders",
        &["skip_external_clusters"],
    ),
    (
        "envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
        &[
            "session_state",
            "strict",
            "stat_prefix",
            "status_on_strict_destination_not_found",
        ],
    ),
    (
        "envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute",
        &["disabled", "stateful_session"],
    ),
    (
        "envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState",
        &["cookie"],
    ),
    (
        "envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState",
        &["name"],
    ),
    ("envoy.type.http.v3.Cookie", &["name", "ttl", "path", "attributes"]),
    ("envoy.type.http.v3.CookieAttribute", &["name", "value"]),
    // Istio's null-VM metadata exchange plugin (translate/istio.rs refuses any other Wasm).
    ("envoy.extensions.filters.http.wasm.v3.Wasm", &["config"]),
    (
        "envoy.extensions.wasm.v3.PluginConfig",
        &[
            "name",
            "root_id",
            "vm_config",
            "configuration",
            "fail_open",
            "failure_policy",
        ],
    ),
    (
        "envoy.extensions.wasm.v3.VmConfig",
        &[
            "vm_id",
            "runtime",
            "code",
            "configuration",
            "allow_precompiled",
            "nack_on_code_cache_miss",
        ],
    ),
    ("envoy.config.core.v3.AsyncDataSource", &["local"]),
    (
        crate::istio::METADATA_EXCHANGE,
        &["protocol", "enable_discovery", "additional_labels"],
    ),
    (crate::istio::AUTHN, &[]),
    (
        "envoy.extensions.filters.network.set_filter_state.v3.Config",
        &["on_new_connection", "on_downstream_tls_handshake"],
    ),
    (
        "envoy.extensions.filters.http.set_filter_state.v3.Config",
        &["on_request_headers", "clear_route_cache"],
    ),
    (
        "envoy.extensions.filters.common.set_filter_state.v3.FilterStateValue",
        &[
            "object_key",
            "factory_key",
            "format_string",
            "read_only",
            "shared_with_upstream",
            "skip_if_empty",
        ],
    ),
    ("envoy.type.matcher.v3.FilterStateMatcher", &["key", "string_match"]),
    (
        "envoy.config.cluster.v3.Cluster.PreconnectPolicy",
        &["per_upstream_preconnect_ratio", "predictive_preconnect_ratio"],
    ),
    (
        "envoy.config.cluster.v3.UpstreamConnectionOptions",
        &[
            "tcp_keepalive",
            "set_local_interface_name_on_upstream_connections",
            "happy_eyeballs_config",
        ],
    ),
    (
        "envoy.config.cluster.v3.UpstreamConnectionOptions.HappyEyeballsConfig",
        &["first_address_family_version", "first_address_family_count"],
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
        &["locality_lb_config", "slow_start_config"],
    ),
    (
        "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
        &[
            "choice_count",
            "active_request_bias",
            "locality_lb_config",
            "selection_method",
            "enable_full_scan",
            "slow_start_config",
        ],
    ),
    (
        "envoy.extensions.load_balancing_policies.random.v3.Random",
        &["locality_lb_config"],
    ),
    // Refused by translate/lb.rs, with Envoy's words, unless its policy is client-side
    // weighted round robin.
    (
        "envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin",
        &[
            "enable_oob_load_report",
            "oob_reporting_period",
            "blackout_period",
            "weight_expiration_period",
            "weight_update_period",
            "error_utilization_penalty",
            "metric_names_for_computing_utilization",
            "slow_start_config",
        ],
    ),
    (
        "envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality",
        &["endpoint_picking_policy"],
    ),
    (
        "envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
        &["override_host_sources", "fallback_policy"],
    ),
    (
        "envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost.OverrideHostSource",
        &["header", "metadata"],
    ),
    ("envoy.type.metadata.v3.MetadataKey", &["key", "path"]),
    ("envoy.type.metadata.v3.MetadataKey.PathSegment", &["key"]),
    (
        "envoy.config.cluster.v3.Cluster.RingHashLbConfig",
        &["minimum_ring_size", "hash_function", "maximum_ring_size"],
    ),
    ("envoy.config.cluster.v3.Cluster.MaglevLbConfig", &["table_size"]),
    (
        "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
        &[
            "hash_function",
            "minimum_ring_size",
            "maximum_ring_size",
            "consistent_hashing_lb_config",
            "use_hostname_for_hashing",
            "hash_balance_factor",
            "locality_weighted_lb_config",
        ],
    ),
    (
        "envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
        &[
            "table_size",
            "consistent_hashing_lb_config",
            "locality_weighted_lb_config",
        ],
    ),
    (
        "envoy.extensions.load_balancing_policies.common.v3.ConsistentHashingLbConfig",
        &["use_hostname_for_hashing", "hash_balance_factor"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig.ConsistentHashingLbConfig",
        &["use_hostname_for_hashing", "hash_balance_factor"],
    ),
    (
        "envoy.extensions.load_balancing_policies.common.v3.SlowStartConfig",
        &["slow_start_window", "aggression", "min_weight_percent"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.SlowStartConfig",
        &["slow_start_window", "aggression", "min_weight_percent"],
    ),
    // Zone-aware routing takes effect with the bootstrap's cluster_manager.local_cluster_name.
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
            "consistent_hashing_lb_config",
            "zone_aware_lb_config",
            "locality_weighted_lb_config",
            "close_connections_on_host_set_change",
            "override_host_status",
            "ignore_new_hosts_until_first_hc",
            "update_merge_window",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig.ZoneAwareLbConfig",
        &["routing_enabled", "min_cluster_size", "fail_traffic_on_panic"],
    ),
    ("envoy.config.core.v3.HealthStatusSet", &["statuses"]),
    ("envoy.type.v3.Percent", &["value"]),
    (
        "envoy.config.core.v3.RuntimeFractionalPercent",
        &["default_value", "runtime_key"],
    ),
    (
        "envoy.type.v3.FractionalPercent",
        &["numerator", "denominator"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
        &["choice_count", "active_request_bias", "slow_start_config"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.RoundRobinLbConfig",
        &["slow_start_config"],
    ),
    // `runtime_key` is not read yet (least request's `active_request_bias`).
    ("envoy.config.core.v3.RuntimeDouble", &["default_value"]),
    (
        "envoy.config.cluster.v3.CircuitBreakers",
        &["thresholds", "per_host_thresholds"],
    ),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
        &[
            "priority",
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
            "track_remaining",
            "retry_budget",
            "max_connection_pools",
        ],
    ),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget",
        &["budget_percent", "min_retry_concurrency"],
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
        "envoy.extensions.filters.network.ratelimit.v3.RateLimit",
        &[
            "stat_prefix",
            "domain",
            "descriptors",
            "timeout",
            "failure_mode_deny",
            "rate_limit_service",
        ],
    ),
    // A network rate limit's descriptors: Envoy's filter reads only their entries.
    (
        "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor",
        &["entries"],
    ),
    (
        "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
        &["stat_prefix", "max_connections", "delay", "runtime_enabled"],
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
        &[
            "common_tls_context",
            "require_client_certificate",
            "disable_stateless_session_resumption",
            "disable_stateful_session_resumption",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        &[
            "common_tls_context",
            "sni",
            "auto_host_sni",
            "auto_sni_san_validation",
        ],
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
            "combined_validation_context",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext",
        &["default_validation_context", "validation_context_sds_secret_config"],
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
            "match_subject_alt_names",
            "watched_directory",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher",
        &["san_type", "matcher"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.OriginalDstLbConfig",
        &["use_http_header", "http_header_name", "upstream_port_override"],
    ),
    (
        "envoy.config.core.v3.BindConfig",
        &["source_address", "extra_source_addresses"],
    ),
    ("envoy.config.core.v3.ExtraSourceAddress", &["address"]),
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
        &[
            "address",
            "hostname",
            "health_check_config",
            "additional_addresses",
        ],
    ),
    (
        "envoy.config.endpoint.v3.Endpoint.AdditionalAddress",
        &["address"],
    ),
    (
        "envoy.config.endpoint.v3.Endpoint.HealthCheckConfig",
        &[
            "port_value",
            "hostname",
            "disable_active_health_check",
            "address",
        ],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        &[
            "explicit_http_config",
            "use_downstream_protocol_config",
            "auto_config",
            "upstream_http_protocol_options",
            "common_http_protocol_options",
            "hash_policy",
            "request_mirror_policies",
            "retry_policy",
        ],
    ),
    // Also the HCM's `common_http_protocol_options` type: the HCM's translation refuses that
    // field itself (only clusters honour this one).
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
    // accept_http_10, default_host_for_http_10 and allow_chunked_length serve only a
    // downstream (the connection manager's codec): on a cluster they do nothing in Envoy either.
    (
        "envoy.config.core.v3.Http1ProtocolOptions",
        &[
            "accept_http_10",
            "default_host_for_http_10",
            "header_key_format",
            "allow_chunked_length",
            "allow_absolute_url",
            "ignore_http_11_upgrade",
            "enable_trailers",
        ],
    ),
    (
        "envoy.config.core.v3.Http1ProtocolOptions.HeaderKeyFormat",
        &["proper_case_words", "stateful_formatter"],
    ),
    (
        "envoy.config.core.v3.Http1ProtocolOptions.HeaderKeyFormat.ProperCaseWords",
        &[],
    ),
    // forward_reason_phrase and formatter_type_on_envoy_headers are refused (not listed).
    (
        "envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig",
        &[],
    ),
    (
        "envoy.config.core.v3.Http2ProtocolOptions",
        // connection_keepalive: upstream connections and the connection manager's. The
        // flood limits, inbound and outbound, and allow_connect: the connection manager's only
        // (refused on clusters).
        // override_stream_error_on_invalid_http_message: skiff always resets only the stream
        // (true); false, Envoy's default, is the difference in tests/DIFFERENCES.md.
        &[
            "max_concurrent_streams",
            "initial_stream_window_size",
            "initial_connection_window_size",
            "connection_keepalive",
            "max_consecutive_inbound_frames_with_empty_payload",
            "max_inbound_priority_frames_per_stream",
            "max_inbound_window_update_frames_per_data_frame_sent",
            "max_outbound_frames",
            "max_outbound_control_frames",
            "allow_connect",
            "override_stream_error_on_invalid_http_message",
        ],
    ),
    (
        "envoy.config.core.v3.KeepaliveSettings",
        // connection_idle_interval: on a connection manager only, where Envoy ignores it too
        // (refused on clusters).
        &["interval", "timeout", "interval_jitter", "connection_idle_interval"],
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
    // Well-known types, metadata (opaque data for filters, whatever it holds), stats sinks
    // and the bootstrap's tracer (subsystems skiff does not run: docs/compatibility.md) are
    // leaves.
    if name.starts_with("google.protobuf.")
        || name == "envoy.config.core.v3.Metadata"
        || name == "envoy.config.metrics.v3.StatsSink"
        || name == "envoy.config.trace.v3.Tracing"
        // Telemetry filters: accepted without effect whatever they hold (compatibility.md).
        || name == crate::istio::STATS
        || name == "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
        || name == "envoy.type.tracing.v3.CustomTag"
    {
        return Ok(());
    }
    let allowed = supported_fields(&name);
    for (field, value) in msg.fields() {
        let here = join(path, field.name());
        // A field without presence set to its default is the field unset (the binary form
        // cannot even tell them apart): it changes nothing in Envoy either.
        if !field.supports_presence() && *value == field.default_value() {
            continue;
        }
        if !allowed.contains(&field.name()) {
            sink(ConfigError::unsupported(here))?;
            continue;
        }
        // A FilterConfig's `config: {}` (no type) only turns the filter on.
        if name == "envoy.config.route.v3.FilterConfig" && field.name() == "config" {
            if let Value::Message(m) = value {
                let any: envoy_types::pb::google::protobuf::Any = proto::to_typed(m)?;
                if any.type_url.is_empty() {
                    continue;
                }
            }
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
            // In key order, so the first refusal is the same on every run.
            let mut entries: Vec<_> = entries.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
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
            r#"static_resources: { listeners: [ { name: a, filter_chains: [ { filters: [ { name: hcm, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: x, stream_error_on_invalid_http_message: true } } ] } ] } ] }"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.stream_error_on_invalid_http_message: unsupported"
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
