//! Exhaustive field checks of the main resources: each proto struct is destructured without
//! `..`, so a field that a new version of the protos adds is a compile error here until someone
//! decides whether skiff honours it. Fields skiff honours are bound to `_` (their translation
//! reads them); every other field is refused with its path when it is set. The supported-field
//! table (`config::supported`) checks the same fields in text configurations before decoding;
//! these checks hold for resources that arrive as binary protobuf too.
//!
//! The field lists follow that table; when a field becomes honoured, move it to `_` here and add
//! it to the table.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;

use super::super::ConfigError;

/// Whether a proto field is set (not its default).
trait IsSet {
    fn is_set(&self) -> bool;
}

impl<T> IsSet for Option<T> {
    fn is_set(&self) -> bool {
        self.is_some()
    }
}

impl<T> IsSet for Vec<T> {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl<K, V> IsSet for HashMap<K, V> {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl IsSet for String {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl IsSet for bool {
    fn is_set(&self) -> bool {
        *self
    }
}

macro_rules! numbers_are_set_when_not_zero {
    ($($t:ty),*) => {$(
        impl IsSet for $t {
            fn is_set(&self) -> bool {
                *self != 0
            }
        }
    )*};
}
numbers_are_set_when_not_zero!(i32, i64, u32, u64);

fn unsupported(path: &str, field: &str) -> ConfigError {
    ConfigError::unsupported(if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    })
}

fn refuse(path: &str, field: &str, value: &impl IsSet) -> Result<(), ConfigError> {
    if value.is_set() {
        return Err(unsupported(path, field));
    }
    Ok(())
}

/// Refuses the set fields of a `Listener` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn listener(m: &listener_pb::Listener, path: &str) -> Result<(), ConfigError> {
    let listener_pb::Listener {
        name: _,
        address: _,
        additional_addresses: _,
        stat_prefix: _,
        stats_matcher,
        filter_chains: _,
        fcds_config,
        filter_chain_matcher,
        use_original_dst: _,
        default_filter_chain: _,
        per_connection_buffer_limit_bytes: _,
        per_connection_buffer_high_watermark_timeout,
        metadata: _,
        deprecated_v1,
        drain_type: _,
        listener_filters: _,
        listener_filters_timeout: _,
        continue_on_listener_filters_timeout: _,
        transparent: _,
        freebind: _,
        socket_options: _,
        tcp_fast_open_queue_length: _,
        traffic_direction: _,
        udp_listener_config,
        api_listener,
        connection_balance_config: _,
        reuse_port,
        enable_reuse_port: _,
        access_log: _,
        tcp_backlog_size,
        max_connections_to_accept_per_socket_event: _,
        bind_to_port: _,
        enable_mptcp,
        ignore_global_conn_limit: _,
        bypass_overload_manager: _,
        tcp_keepalive,
        listener_specifier,
    } = m;
    refuse(path, "stats_matcher", stats_matcher)?;
    refuse(path, "fcds_config", fcds_config)?;
    let _ = filter_chain_matcher; // translated with the chains
    refuse(
        path,
        "per_connection_buffer_high_watermark_timeout",
        per_connection_buffer_high_watermark_timeout,
    )?;
    refuse(path, "deprecated_v1", deprecated_v1)?;
    // udp_listener_config: a UDP listener's (udp::listener); translate_listener refuses it on
    // a TCP one.
    let _ = udp_listener_config;
    refuse(path, "api_listener", api_listener)?;
    refuse(path, "reuse_port", reuse_port)?;
    refuse(path, "tcp_backlog_size", tcp_backlog_size)?;
    refuse(path, "enable_mptcp", enable_mptcp)?;
    refuse(path, "tcp_keepalive", tcp_keepalive)?;
    // internal_listener: translate_listener's.
    let _ = listener_specifier;
    Ok(())
}

/// Refuses the set fields of a `FilterChain` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn filter_chain(m: &listener_pb::FilterChain, path: &str) -> Result<(), ConfigError> {
    let listener_pb::FilterChain {
        filter_chain_match: _,
        filters: _,
        use_proxy_proto,
        metadata,
        transport_socket: _,
        transport_socket_connect_timeout: _,
        name: _,
    } = m;
    refuse(path, "use_proxy_proto", use_proxy_proto)?;
    refuse(path, "metadata", metadata)?;
    Ok(())
}

/// Refuses the set fields of a `FilterChainMatch` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn filter_chain_match(
    m: &listener_pb::FilterChainMatch,
    path: &str,
) -> Result<(), ConfigError> {
    let listener_pb::FilterChainMatch {
        destination_port: _,
        prefix_ranges: _,
        address_suffix,
        suffix_len,
        direct_source_prefix_ranges: _,
        source_type: _,
        source_prefix_ranges: _,
        source_ports: _,
        server_names: _,
        transport_protocol: _,
        application_protocols: _,
    } = m;
    refuse(path, "address_suffix", address_suffix)?;
    refuse(path, "suffix_len", suffix_len)?;
    Ok(())
}

/// Refuses the set fields of a `Cluster` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn cluster(m: &cluster_pb::Cluster, path: &str) -> Result<(), ConfigError> {
    let cluster_pb::Cluster {
        transport_socket_matches: _,
        transport_socket_matcher,
        name: _,
        alt_stat_name: _,
        stats_matcher,
        eds_cluster_config: _,
        connect_timeout: _,
        per_connection_buffer_limit_bytes: _,
        per_connection_buffer_high_watermark_timeout,
        lb_policy: _,
        load_assignment: _,
        health_checks: _,
        max_requests_per_connection: _,
        circuit_breakers: _,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options: _,
        typed_extension_protocol_options: _,
        dns_refresh_rate: _,
        dns_jitter: _,
        dns_failure_refresh_rate: _,
        respect_dns_ttl: _,
        dns_lookup_family: _,
        dns_resolvers: _,
        use_tcp_for_dns_lookups: _,
        dns_resolution_config: _,
        typed_dns_resolver_config: _,
        wait_for_warm_on_init: _,
        // Translated with the cluster (translate::outlier).
        outlier_detection: _,
        cleanup_interval,
        upstream_bind_config: _,
        lb_subset_config,
        common_lb_config: _,
        transport_socket: _,
        metadata: _,
        protocol_selection,
        upstream_connection_options: _,
        close_connections_on_host_health_failure,
        // Both translated with the cluster (translate::health_check).
        ignore_health_on_host_removal: _,
        // Istio's metadata exchange only: istio::cluster_filters.
        filters: _,
        load_balancing_policy: _,
        lrs_server,
        lrs_report_endpoint_metrics,
        track_timeout_budgets,
        upstream_config,
        // Only histograms (timeout budgets, request and response sizes), which skiff does
        // not keep (docs/compatibility.md).
        track_cluster_stats: _,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
        cluster_discovery_type,
        lb_config,
    } = m;
    refuse(path, "transport_socket_matcher", transport_socket_matcher)?;
    refuse(path, "stats_matcher", stats_matcher)?;
    refuse(
        path,
        "per_connection_buffer_high_watermark_timeout",
        per_connection_buffer_high_watermark_timeout,
    )?;
    refuse(
        path,
        "upstream_http_protocol_options",
        upstream_http_protocol_options,
    )?;
    refuse(
        path,
        "common_http_protocol_options",
        common_http_protocol_options,
    )?;
    refuse(path, "http_protocol_options", http_protocol_options)?;
    // cleanup_interval: clusters::translate (ORIGINAL_DST hosts; others have none to forget).
    let _ = cleanup_interval;
    // lb_subset_config: translated in translate::subset.
    let _ = lb_subset_config;
    refuse(path, "protocol_selection", protocol_selection)?;
    refuse(
        path,
        "close_connections_on_host_health_failure",
        close_connections_on_host_health_failure,
    )?;

    refuse(path, "lrs_server", lrs_server)?;
    refuse(
        path,
        "lrs_report_endpoint_metrics",
        lrs_report_endpoint_metrics,
    )?;
    refuse(path, "track_timeout_budgets", track_timeout_budgets)?;
    refuse(path, "upstream_config", upstream_config)?;
    // preconnect_policy: clusters::preconnect.
    let _ = preconnect_policy;
    refuse(
        path,
        "connection_pool_per_downstream_connection",
        connection_pool_per_downstream_connection,
    )?;
    refuse(path, "queuing_policies", queuing_policies)?;
    // `cluster_type` (a custom cluster) is checked by translation: only the DNS one is taken.
    let _ = cluster_discovery_type;
    // lb_config: translated with the policy (translate::lb).
    let _ = lb_config;
    Ok(())
}

/// Refuses the set fields of a `ClusterLoadAssignment` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn cluster_load_assignment(
    m: &endpoint_pb::ClusterLoadAssignment,
    path: &str,
) -> Result<(), ConfigError> {
    let endpoint_pb::ClusterLoadAssignment {
        cluster_name: _,
        endpoints: _,
        named_endpoints,
        policy,
    } = m;
    refuse(path, "named_endpoints", named_endpoints)?;
    refuse(path, "policy", policy)?;
    Ok(())
}

/// Refuses the set fields of a `LocalityLbEndpoints` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn locality_lb_endpoints(
    m: &endpoint_pb::LocalityLbEndpoints,
    path: &str,
) -> Result<(), ConfigError> {
    let endpoint_pb::LocalityLbEndpoints {
        locality: _,
        metadata: _,
        lb_endpoints: _,
        load_balancing_weight: _,
        priority: _,
        proximity,
        lb_config,
    } = m;
    refuse(path, "proximity", proximity)?;
    refuse(path, "lb_config", lb_config)?;
    Ok(())
}

/// Refuses the set fields of a `LbEndpoint` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn lb_endpoint(m: &endpoint_pb::LbEndpoint, path: &str) -> Result<(), ConfigError> {
    let endpoint_pb::LbEndpoint {
        health_status: _,
        metadata: _,
        load_balancing_weight: _,
        host_identifier,
    } = m;
    match host_identifier {
        Some(endpoint_pb::lb_endpoint::HostIdentifier::EndpointName(_)) => {
            Err(unsupported(path, "endpoint_name"))
        }
        Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(e)) => {
            endpoint(e, &format!("{path}.endpoint"))
        }
        None => Ok(()),
    }
}

/// Refuses the set fields of an `Endpoint` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
pub(super) fn endpoint(m: &endpoint_pb::Endpoint, path: &str) -> Result<(), ConfigError> {
    let endpoint_pb::Endpoint {
        address: _,
        health_check_config,
        hostname: _,
        additional_addresses,
        observability_name,
    } = m;
    refuse(path, "observability_name", observability_name)?;
    // health_check_config: translated in translate::clusters.
    let _ = health_check_config;
    // additional_addresses: translated in translate::clusters.
    let _ = additional_addresses;
    Ok(())
}

/// Refuses the set fields of a `RouteConfiguration` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn route_configuration(
    m: &route_pb::RouteConfiguration,
    path: &str,
) -> Result<(), ConfigError> {
    let route_pb::RouteConfiguration {
        name: _,
        virtual_hosts: _,
        vhds,
        internal_only_headers: _,
        response_headers_to_add: _,
        response_headers_to_remove: _,
        request_headers_to_add: _,
        request_headers_to_remove: _,
        most_specific_header_mutations_wins: _,
        validate_clusters,
        max_direct_response_body_size_bytes: _,
        cluster_specifier_plugins,
        request_mirror_policies,
        ignore_port_in_host_matching: _,
        vhost_header,
        ignore_path_parameters_in_path_matching,
        typed_per_filter_config,
        metadata: _,
        route_specifiers,
    } = m;
    refuse(path, "vhds", vhds)?;
    // `validate_clusters`: read by translate_routes.
    let _ = validate_clusters;
    // cluster_specifier_plugins: route_action::Table.
    let _ = cluster_specifier_plugins;
    // request_mirror_policies: http_manager::translate_routes.
    let _ = request_mirror_policies;
    // vhost_header: http_manager::translate_routes.
    let _ = vhost_header;
    refuse(
        path,
        "ignore_path_parameters_in_path_matching",
        ignore_path_parameters_in_path_matching,
    )?;
    // typed_per_filter_config: translate::ratelimit::per_filter_configs.
    let _ = typed_per_filter_config;
    refuse(path, "route_specifiers", route_specifiers)?;
    Ok(())
}

/// Refuses the set fields of a `VirtualHost` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn virtual_host(m: &route_pb::VirtualHost, path: &str) -> Result<(), ConfigError> {
    let route_pb::VirtualHost {
        name: _,
        domains: _,
        routes: _,
        matcher,
        require_tls: _,
        virtual_clusters,
        rate_limits,
        request_headers_to_add: _,
        request_headers_to_remove: _,
        response_headers_to_add: _,
        response_headers_to_remove: _,
        cors,
        typed_per_filter_config,
        include_request_attempt_count: _,
        include_attempt_count_in_response: _,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        request_mirror_policies,
        metadata: _,
        route_specifiers,
    } = m;
    // matcher: http_manager::route_matcher.
    let _ = matcher;
    // virtual_clusters: http_manager::virtual_clusters.
    let _ = virtual_clusters;
    // rate_limits: ratelimit::policies.
    let _ = rate_limits;
    // cors (deprecated): http_manager (route_cors, vhost_cors).
    let _ = cors;
    // typed_per_filter_config: translate::ratelimit::per_filter_configs.
    let _ = typed_per_filter_config;
    // retry_policy: translated in translate::retry.
    let _ = retry_policy;
    refuse(path, "retry_policy_typed_config", retry_policy_typed_config)?;
    // hedge_policy: http_manager (retry::hedge).
    let _ = hedge_policy;
    // include_is_timeout_retry_header: http_manager (the virtual host).
    let _ = include_is_timeout_retry_header;
    // per_request_buffer_limit_bytes, request_body_buffer_limit: http_manager::buffer_limit.
    let _ = (per_request_buffer_limit_bytes, request_body_buffer_limit);
    // request_mirror_policies: http_manager::translate_routes.
    let _ = request_mirror_policies;
    refuse(path, "route_specifiers", route_specifiers)?;
    Ok(())
}

/// Refuses the set fields of a `Route` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn route(m: &route_pb::Route, path: &str) -> Result<(), ConfigError> {
    let route_pb::Route {
        name: _,
        r#match: _,
        metadata: _,
        decorator: _,
        typed_per_filter_config,
        request_headers_to_add: _,
        request_headers_to_remove: _,
        response_headers_to_add: _,
        response_headers_to_remove: _,
        tracing: _,
        per_request_buffer_limit_bytes,
        stat_prefix: _,
        request_body_buffer_limit,
        route_specifiers,
        action,
    } = m;
    // typed_per_filter_config: translate::ratelimit::per_filter_configs.
    let _ = typed_per_filter_config;
    // per_request_buffer_limit_bytes, request_body_buffer_limit: http_manager::buffer_limit.
    let _ = (per_request_buffer_limit_bytes, request_body_buffer_limit);
    refuse(path, "route_specifiers", route_specifiers)?;
    if let Some(route_pb::route::Action::FilterAction(_)) = action {
        return Err(unsupported(path, "filter_action"));
    }
    Ok(())
}

/// Refuses the set fields of a `RouteMatch` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn route_match(m: &route_pb::RouteMatch, _path: &str) -> Result<(), ConfigError> {
    let route_pb::RouteMatch {
        case_sensitive: _,
        runtime_fraction: _,
        headers: _,
        query_parameters: _,
        cookies,
        grpc: _,
        tls_context: _,
        dynamic_metadata: _,
        filter_state,
        path_specifier,
    } = m;
    // cookies: http_manager::route_match.
    let _ = cookies;
    // dynamic_metadata, filter_state: http_manager::route_match.
    let _ = filter_state;
    // path_specifier: translate_route (path_match_policy with the URI template matcher).
    let _ = path_specifier;
    Ok(())
}

/// Refuses the set fields of a `RouteAction` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn route_action(m: &route_pb::RouteAction, path: &str) -> Result<(), ConfigError> {
    let route_pb::RouteAction {
        cluster_not_found_response_code: _,
        metadata_match,
        prefix_rewrite: _,
        regex_rewrite: _,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host: _,
        timeout: _,
        idle_timeout: _,
        flush_timeout,
        early_data_policy,
        retry_policy,
        retry_policy_typed_config,
        request_mirror_policies: _,
        priority: _,
        rate_limits,
        include_vh_rate_limits,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs: _,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        cluster_specifier,
        host_rewrite_specifier,
    } = m;
    // metadata_match: translated in translate::route_action.
    let _ = metadata_match;
    // path_rewrite_policy: route_action::path_rewrite.
    let _ = path_rewrite_policy;
    // path_rewrite: route_action.
    let _ = path_rewrite;
    refuse(path, "flush_timeout", flush_timeout)?;
    refuse(path, "early_data_policy", early_data_policy)?;
    // retry_policy: translated in translate::retry.
    let _ = retry_policy;
    refuse(path, "retry_policy_typed_config", retry_policy_typed_config)?;
    // priority: route_action.
    // rate_limits, include_vh_rate_limits: route_action.
    let _ = (rate_limits, include_vh_rate_limits);
    // hash_policy: route_action::hash_policy.
    let _ = hash_policy;
    // cors (deprecated): http_manager (route_cors, vhost_cors).
    let _ = cors;
    // max_grpc_timeout, grpc_timeout_offset (deprecated): route_action::grpc_timeout.
    let _ = (max_grpc_timeout, grpc_timeout_offset);
    // internal_redirect_policy: route_action::internal_redirect.
    let _ = internal_redirect_policy;
    refuse(path, "internal_redirect_action", internal_redirect_action)?;
    refuse(path, "max_internal_redirects", max_internal_redirects)?;
    // hedge_policy: route_action (retry::hedge).
    let _ = hedge_policy;
    // max_stream_duration: route_action::stream_duration.
    let _ = max_stream_duration;
    // host_rewrite_specifier (host_rewrite included): route_action.
    let _ = host_rewrite_specifier;
    // cluster_specifier_plugin and inline_cluster_specifier_plugin: route_action::forward.
    let _ = cluster_specifier;
    Ok(())
}

/// Refuses the set fields of a `HttpConnectionManager` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn http_connection_manager(
    m: &hcm_pb::HttpConnectionManager,
    path: &str,
) -> Result<(), ConfigError> {
    let hcm_pb::HttpConnectionManager {
        codec_type: _,
        stat_prefix: _,
        http_filters: _,
        add_user_agent,
        tracing,
        common_http_protocol_options: _,
        http1_safe_max_connection_duration,
        http_protocol_options: _,
        http2_protocol_options: _,
        http3_protocol_options,
        server_name: _,
        server_header_transformation: _,
        scheme_header_transformation,
        max_request_headers_kb: _,
        stream_idle_timeout: _,
        stream_flush_timeout,
        request_timeout: _,
        request_headers_timeout: _,
        drain_timeout: _,
        drain_timeout_jitter: _,
        delayed_close_timeout: _,
        access_log: _,
        access_log_flush_interval,
        flush_access_log_on_new_request,
        access_log_options,
        use_remote_address: _,
        xff_num_trusted_hops: _,
        original_ip_detection_extensions,
        early_header_mutation_extensions,
        internal_address_config: _,
        skip_xff_append: _,
        via: _,
        generate_request_id: _,
        preserve_external_request_id: _,
        always_set_request_id_in_response: _,
        forward_client_cert_details,
        set_current_client_cert_details,
        forward_client_cert_matcher,
        proxy_100_continue: _,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        upgrade_configs: _,
        normalize_path: _,
        merge_slashes: _,
        path_with_escaped_slashes_action: _,
        request_id_extension,
        local_reply_config,
        strip_matching_host_port: _,
        stream_error_on_invalid_http_message,
        path_normalization_options,
        strip_trailing_host_dot,
        proxy_status_config,
        typed_header_validation_config,
        append_x_forwarded_port,
        append_local_overload,
        add_proxy_protocol_connection_state,
        forward_proto_config,
        route_specifier,
        strip_port_mode: _,
    } = m;
    // add_user_agent: http_manager.
    let _ = add_user_agent;
    // tracing, request_id_extension: http_manager::tracing.
    let _ = (&tracing, &request_id_extension);
    // http1_safe_max_connection_duration: http_manager (timeouts).
    let _ = http1_safe_max_connection_duration;
    refuse(path, "http3_protocol_options", http3_protocol_options)?;
    // scheme_header_transformation: http_manager.
    let _ = scheme_header_transformation;
    refuse(path, "stream_flush_timeout", stream_flush_timeout)?;
    // access_log_flush_interval, flush_access_log_on_new_request, access_log_options:
    // super::log_flush.
    let _ = (
        access_log_flush_interval,
        flush_access_log_on_new_request,
        access_log_options,
    );
    // original_ip_detection_extensions: http_manager::ip_detection.
    let _ = original_ip_detection_extensions;
    // early_header_mutation_extensions: header_mutation::early.
    let _ = early_header_mutation_extensions;
    // forward_client_cert_details, set_current_client_cert_details: http_manager::xfcc.
    let _ = (forward_client_cert_details, set_current_client_cert_details);
    refuse(
        path,
        "forward_client_cert_matcher",
        forward_client_cert_matcher,
    )?;
    refuse(
        path,
        "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
    )?;
    // local_reply_config: http_manager::local_reply_config.
    let _ = local_reply_config;
    refuse(
        path,
        "stream_error_on_invalid_http_message",
        stream_error_on_invalid_http_message,
    )?;
    refuse(
        path,
        "path_normalization_options",
        path_normalization_options,
    )?;
    // strip_trailing_host_dot, append_x_forwarded_port: http_manager.
    let _ = strip_trailing_host_dot;
    refuse(path, "proxy_status_config", proxy_status_config)?;
    refuse(
        path,
        "typed_header_validation_config",
        typed_header_validation_config,
    )?;
    let _ = append_x_forwarded_port;
    refuse(path, "append_local_overload", append_local_overload)?;
    refuse(
        path,
        "add_proxy_protocol_connection_state",
        add_proxy_protocol_connection_state,
    )?;
    refuse(path, "forward_proto_config", forward_proto_config)?;
    // route_specifier (route_config, rds, scoped_routes): http_manager::translate_hcm.
    let _ = route_specifier;
    Ok(())
}

/// Refuses the set fields of a `TcpProxy` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn tcp_proxy(m: &tcp_pb::TcpProxy, path: &str) -> Result<(), ConfigError> {
    let tcp_pb::TcpProxy {
        stat_prefix: _,
        on_demand,
        metadata_match,
        idle_timeout: _,
        downstream_idle_timeout,
        upstream_idle_timeout,
        access_log: _,
        max_connect_attempts,
        backoff_options,
        hash_policy,
        tunneling_config,
        max_downstream_connection_duration,
        max_downstream_connection_duration_jitter_percentage,
        access_log_flush_interval,
        flush_access_log_on_connected,
        access_log_options,
        proxy_protocol_tlvs,
        proxy_protocol_tlv_merge_policy,
        upstream_connect_mode,
        max_early_data_bytes,
        check_drain_close,
        cluster_specifier: _,
    } = m;
    refuse(path, "on_demand", on_demand)?;
    // metadata_match: translate_tcp_proxy.
    let _ = metadata_match;
    refuse(path, "downstream_idle_timeout", downstream_idle_timeout)?;
    refuse(path, "upstream_idle_timeout", upstream_idle_timeout)?;
    refuse(path, "max_connect_attempts", max_connect_attempts)?;
    refuse(path, "backoff_options", backoff_options)?;
    refuse(path, "hash_policy", hash_policy)?;
    // tunneling_config: translate_tcp_proxy.
    let _ = tunneling_config;
    refuse(
        path,
        "max_downstream_connection_duration",
        max_downstream_connection_duration,
    )?;
    refuse(
        path,
        "max_downstream_connection_duration_jitter_percentage",
        max_downstream_connection_duration_jitter_percentage,
    )?;
    // access_log_flush_interval, flush_access_log_on_connected, access_log_options:
    // super::log_flush.
    let _ = (
        access_log_flush_interval,
        flush_access_log_on_connected,
        access_log_options,
    );
    refuse(path, "proxy_protocol_tlvs", proxy_protocol_tlvs)?;
    refuse(
        path,
        "proxy_protocol_tlv_merge_policy",
        proxy_protocol_tlv_merge_policy,
    )?;
    refuse(path, "upstream_connect_mode", upstream_connect_mode)?;
    refuse(path, "max_early_data_bytes", max_early_data_bytes)?;
    refuse(path, "check_drain_close", check_drain_close)?;
    Ok(())
}

/// Refuses the set fields of a `DownstreamTlsContext` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn downstream_tls_context(
    m: &tls_pb::DownstreamTlsContext,
    path: &str,
) -> Result<(), ConfigError> {
    let tls_pb::DownstreamTlsContext {
        common_tls_context: _,
        require_client_certificate: _,
        require_sni,
        disable_stateful_session_resumption: _,
        session_timeout,
        ocsp_staple_policy,
        full_scan_certs_on_sni_mismatch,
        prefer_client_ciphers,
        session_ticket_keys_type,
    } = m;
    refuse(path, "require_sni", require_sni)?;
    refuse(path, "session_timeout", session_timeout)?;
    refuse(path, "ocsp_staple_policy", ocsp_staple_policy)?;
    refuse(
        path,
        "full_scan_certs_on_sni_mismatch",
        full_scan_certs_on_sni_mismatch,
    )?;
    refuse(path, "prefer_client_ciphers", prefer_client_ciphers)?;
    // disable_stateless_session_resumption is honoured (skiff issues no stateless tickets);
    // ticket keys are not.
    use tls_pb::downstream_tls_context::SessionTicketKeysType as Keys;
    match session_ticket_keys_type {
        None | Some(Keys::DisableStatelessSessionResumption(_)) => {}
        Some(Keys::SessionTicketKeys(_)) => return Err(unsupported(path, "session_ticket_keys")),
        Some(Keys::SessionTicketKeysSdsSecretConfig(_)) => {
            return Err(unsupported(path, "session_ticket_keys_sds_secret_config"))
        }
    }
    Ok(())
}

/// Refuses the set fields of a `UpstreamTlsContext` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn upstream_tls_context(
    m: &tls_pb::UpstreamTlsContext,
    path: &str,
) -> Result<(), ConfigError> {
    let tls_pb::UpstreamTlsContext {
        common_tls_context: _,
        sni: _,
        auto_host_sni,
        auto_sni_san_validation,
        allow_renegotiation,
        max_session_keys,
        enforce_rsa_key_usage,
    } = m;
    // auto_host_sni, auto_sni_san_validation: tls::upstream.
    let _ = (auto_host_sni, auto_sni_san_validation);
    refuse(path, "allow_renegotiation", allow_renegotiation)?;
    refuse(path, "max_session_keys", max_session_keys)?;
    refuse(path, "enforce_rsa_key_usage", enforce_rsa_key_usage)?;
    Ok(())
}

/// Refuses the set fields of a `CommonTlsContext` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn common_tls_context(
    m: &tls_pb::CommonTlsContext,
    path: &str,
) -> Result<(), ConfigError> {
    let tls_pb::CommonTlsContext {
        tls_params: _,
        tls_certificates: _,
        tls_certificate_sds_secret_configs: _,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols: _,
        custom_handshaker,
        key_log,
        validation_context_type,
    } = m;
    refuse(
        path,
        "tls_certificate_provider_instance",
        tls_certificate_provider_instance,
    )?;
    refuse(
        path,
        "custom_tls_certificate_selector",
        custom_tls_certificate_selector,
    )?;
    refuse(
        path,
        "tls_certificate_certificate_provider",
        tls_certificate_certificate_provider,
    )?;
    refuse(
        path,
        "tls_certificate_certificate_provider_instance",
        tls_certificate_certificate_provider_instance,
    )?;
    refuse(path, "custom_handshaker", custom_handshaker)?;
    refuse(path, "key_log", key_log)?;
    if let Some(
        tls_pb::common_tls_context::ValidationContextType::ValidationContextCertificateProvider(_),
    ) = validation_context_type
    {
        return Err(unsupported(path, "validation_context_certificate_provider"));
    }
    if let Some(tls_pb::common_tls_context::ValidationContextType::ValidationContextCertificateProviderInstance(_)) = validation_context_type {
        return Err(unsupported(path, "validation_context_certificate_provider_instance"));
    }
    Ok(())
}

/// Refuses the set fields of a `CombinedCertificateValidationContext` that skiff does not
/// honour. Exhaustive: a field added to the proto is a compile error here until someone decides
/// what it means.
#[allow(deprecated)]
pub(super) fn combined_validation_context(
    m: &tls_pb::common_tls_context::CombinedCertificateValidationContext,
    path: &str,
) -> Result<(), ConfigError> {
    let tls_pb::common_tls_context::CombinedCertificateValidationContext {
        default_validation_context: _,
        validation_context_sds_secret_config: _,
        validation_context_certificate_provider,
        validation_context_certificate_provider_instance,
    } = m;
    refuse(
        path,
        "validation_context_certificate_provider",
        validation_context_certificate_provider,
    )?;
    refuse(
        path,
        "validation_context_certificate_provider_instance",
        validation_context_certificate_provider_instance,
    )?;
    Ok(())
}

/// Refuses the set fields of a `Secret` that skiff does not honour. Exhaustive: a field
/// added to the proto is a compile error here until someone decides what it means.
#[allow(deprecated)]
pub(super) fn secret(m: &tls_pb::Secret, path: &str) -> Result<(), ConfigError> {
    let tls_pb::Secret { name: _, r#type } = m;
    if let Some(tls_pb::secret::Type::SessionTicketKeys(_)) = r#type {
        return Err(unsupported(path, "session_ticket_keys"));
    }
    if let Some(tls_pb::secret::Type::GenericSecret(_)) = r#type {
        return Err(unsupported(path, "generic_secret"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)]
    fn set_fields_skiff_does_not_honour_are_refused_with_their_path_in_binary_resources() {
        let l = listener_pb::Listener {
            name: "l".into(),
            tcp_backlog_size: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(
            listener(&l, "resources[0]").map_err(|e| e.to_string()),
            Err("resources[0].tcp_backlog_size: unsupported".to_string())
        );
        let honoured = listener_pb::Listener {
            name: "l".into(),
            freebind: Some(Default::default()),
            ..Default::default()
        };
        assert!(listener(&honoured, "r").is_ok());
        // A oneof skiff honours in part: the other members are refused by their own name.
        let r = route_pb::Route {
            action: Some(route_pb::route::Action::FilterAction(Default::default())),
            ..Default::default()
        };
        assert_eq!(
            route(&r, "").map_err(|e| e.to_string()),
            Err("filter_action: unsupported".to_string())
        );
        let tls = tls_pb::CommonTlsContext {
            validation_context_type: Some(
                tls_pb::common_tls_context::ValidationContextType::ValidationContext(
                    Default::default(),
                ),
            ),
            ..Default::default()
        };
        assert!(common_tls_context(&tls, "").is_ok(), "an honoured member");
        let tls = tls_pb::CommonTlsContext {
            validation_context_type: Some(
                tls_pb::common_tls_context::ValidationContextType::ValidationContextCertificateProviderInstance(
                    Default::default(),
                ),
            ),
            ..Default::default()
        };
        assert_eq!(
            common_tls_context(&tls, "c").map_err(|e| e.to_string()),
            Err("c.validation_context_certificate_provider_instance: unsupported".to_string())
        );
    }

    /// Every field of each checked message is set in turn: the fields the supported-field table
    /// lists must pass, every other one must be refused by name, so the two lists cannot drift.
    #[test]
    fn the_exhaustive_checks_agree_with_the_supported_field_table() {
        use prost_reflect::{DynamicMessage, Kind, Value};

        fn check<T: prost::Message + Default>(
            name: &str,
            f: fn(&T, &str) -> Result<(), ConfigError>,
        ) {
            let desc = crate::proto::message(name).expect(name);
            let honoured = crate::supported::fields_of(name);
            for field in desc.fields() {
                let mut m = DynamicMessage::new(desc.clone());
                let value = match field.kind() {
                    Kind::Message(d) => Value::Message(DynamicMessage::new(d)),
                    Kind::Enum(e) => Value::EnumNumber(
                        e.values()
                            .map(|v| v.number())
                            .find(|n| *n != 0)
                            .unwrap_or(1),
                    ),
                    Kind::Bool => Value::Bool(true),
                    Kind::String => Value::String("x".into()),
                    Kind::Bytes => Value::Bytes(bytes::Bytes::from_static(b"x")),
                    Kind::Double => Value::F64(1.0),
                    Kind::Float => Value::F32(1.0),
                    Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(1),
                    Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(1),
                    Kind::Uint32 | Kind::Fixed32 => Value::U32(1),
                    Kind::Uint64 | Kind::Fixed64 => Value::U64(1),
                };
                let value = if field.is_list() {
                    Value::List(vec![value])
                } else if field.is_map() {
                    continue;
                } else {
                    value
                };
                m.set_field(&field, value);
                let typed: T = crate::proto::to_typed(&m).expect("transcode");
                let got = f(&typed, "m");
                if honoured.contains(&field.name()) {
                    assert!(
                        got.is_ok(),
                        "{name}.{} is honoured but refused: {got:?}",
                        field.name()
                    );
                } else {
                    // A oneof none of whose members skiff honours is refused by its own name.
                    let mut want = vec![format!("m.{}: unsupported", field.name())];
                    if let Some(o) = field.containing_oneof() {
                        want.push(format!("m.{}: unsupported", o.name()));
                    }
                    let got = got.map_err(|e| e.to_string());
                    assert!(
                        got.as_ref().is_err_and(|e| want.contains(e)),
                        "{name}.{} is not in the table, yet: {got:?}",
                        field.name()
                    );
                }
            }
        }
        check("envoy.config.listener.v3.Listener", listener);
        check("envoy.config.listener.v3.FilterChain", filter_chain);
        check(
            "envoy.config.listener.v3.FilterChainMatch",
            filter_chain_match,
        );
        check("envoy.config.cluster.v3.Cluster", cluster);
        check(
            "envoy.config.endpoint.v3.ClusterLoadAssignment",
            cluster_load_assignment,
        );
        check(
            "envoy.config.endpoint.v3.LocalityLbEndpoints",
            locality_lb_endpoints,
        );
        check("envoy.config.endpoint.v3.LbEndpoint", lb_endpoint);
        check("envoy.config.endpoint.v3.Endpoint", endpoint);
        check(
            "envoy.config.route.v3.RouteConfiguration",
            route_configuration,
        );
        check("envoy.config.route.v3.VirtualHost", virtual_host);
        check("envoy.config.route.v3.Route", route);
        check("envoy.config.route.v3.RouteMatch", route_match);
        check("envoy.config.route.v3.RouteAction", route_action);
        check(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            http_connection_manager,
        );
        check(
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            tcp_proxy,
        );
        check(
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            downstream_tls_context,
        );
        check(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            upstream_tls_context,
        );
        check(
            "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
            common_tls_context,
        );
        check("envoy.extensions.transport_sockets.tls.v3.Secret", secret);
        check(
            "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext",
            combined_validation_context,
        );
    }
}
