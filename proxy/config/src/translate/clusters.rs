//! Clusters: discovery type, load balancing, hosts and upstream HTTP protocol options.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;

use super::super::model::{self, *};
use super::super::proto::{type_name, unpack};
use super::super::ConfigError;
use super::{duration, required, socket_address, DEFAULT_BUFFER_LIMIT, HTTP_PROTOCOL_OPTIONS};

const DNS_CLUSTER: &str = "envoy.extensions.clusters.dns.v3.DnsCluster";

pub(super) fn translate_cluster(
    c: &cluster::Cluster,
    path: &str,
    secrets: &crate::Secrets,
) -> Result<Cluster, ConfigError> {
    super::fields::cluster(c, path)?;
    super::istio::cluster_filters(c, path)?;
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType};
    if c.name.is_empty() {
        return Err(ConfigError::new(format!("{path}.name"), "required"));
    }
    #[allow(deprecated)]
    if let Some(h2) = &c.http2_protocol_options {
        check_http2_options(h2, &format!("{path}.http2_protocol_options"))?;
    }
    let discovery = match &c.cluster_discovery_type {
        None => model::DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::Static as i32 => {
            model::DiscoveryType::Static
        }
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::OriginalDst as i32 => {
            model::DiscoveryType::OriginalDst
        }
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::Eds as i32 => {
            model::DiscoveryType::Eds
        }
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::StrictDns as i32 => {
            model::DiscoveryType::StrictDns
        }
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::LogicalDns as i32 => {
            model::DiscoveryType::LogicalDns
        }
        Some(ClusterDiscoveryType::Type(t)) => {
            let name = DiscoveryType::try_from(*t)
                .map(|t| t.as_str_name())
                .unwrap_or("unknown");
            return Err(ConfigError::new(
                format!("{path}.type"),
                format!("unsupported: {name} (only STATIC, STRICT_DNS, LOGICAL_DNS, EDS and ORIGINAL_DST)"),
            ));
        }
        Some(ClusterDiscoveryType::ClusterType(t)) => {
            let tpath = format!("{path}.cluster_type.typed_config");
            let any = required(&t.typed_config, &tpath)?;
            if type_name(&any.type_url) != DNS_CLUSTER {
                return Err(ConfigError::new(
                    tpath,
                    format!(
                        "unsupported cluster type '{}' (only {DNS_CLUSTER})",
                        any.type_url
                    ),
                ));
            }
            let d: envoy_types::pb::envoy::extensions::clusters::dns::v3::DnsCluster =
                unpack(any, &tpath)?;
            if d.all_addresses_in_single_endpoint {
                model::DiscoveryType::LogicalDns
            } else {
                model::DiscoveryType::StrictDns
            }
        }
    };
    let super::lb::Lb {
        policy: lb,
        locality_weighted,
        zone: zone_aware,
        slow_start,
        consistent_hashing,
        override_host,
        client_side_weights,
    } = super::lb::lb_policy(c, discovery, path)?;
    let subsets = super::subset::subset_config(c, &lb, path)?;
    let panic_threshold = super::lb::common_lb_config(c, path)?;
    if discovery == model::DiscoveryType::OriginalDst && c.load_assignment.is_some() {
        return Err(ConfigError::new(
            format!("{path}.load_assignment"),
            "an ORIGINAL_DST cluster takes its hosts from connections, not load_assignment",
        ));
    }
    let original_dst_port = match &c.lb_config {
        Some(cluster::cluster::LbConfig::OriginalDstLbConfig(o)) => match &o.upstream_port_override
        {
            Some(p) => Some(u16::try_from(p.value).map_err(|_| {
                ConfigError::new(
                    format!("{path}.original_dst_lb_config.upstream_port_override"),
                    "value must be less than or equal to 65535",
                )
            })?),
            None => None,
        },
        _ => None,
    };
    let original_dst_header = match &c.lb_config {
        Some(cluster::cluster::LbConfig::OriginalDstLbConfig(o)) => {
            let opath = format!("{path}.original_dst_lb_config");
            if discovery != model::DiscoveryType::OriginalDst {
                return Err(ConfigError::new(
                    opath,
                    "only an ORIGINAL_DST cluster takes original_dst_lb_config",
                ));
            }
            if o.use_http_header {
                let name = if o.http_header_name.is_empty() {
                    "x-envoy-original-dst-host"
                } else {
                    o.http_header_name.as_str()
                };
                if name.eq_ignore_ascii_case(":authority") {
                    Some(model::OriginalDstHeader::Authority)
                } else {
                    Some(model::OriginalDstHeader::Header(
                        http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                            .map_err(|_| {
                                ConfigError::new(
                                    format!("{opath}.http_header_name"),
                                    "not a header name",
                                )
                            })?,
                    ))
                }
            } else {
                None
            }
        }
        // The other policies' configs, read by `lb::lb_policy`.
        Some(_) | None => None,
    };
    let source_address = match c
        .upstream_bind_config
        .as_ref()
        .and_then(|b| b.source_address.as_ref())
    {
        Some(sa) => {
            let address = core::Address {
                address: Some(core::address::Address::SocketAddress(sa.clone())),
            };
            Some(socket_address(
                &address,
                &format!("{path}.upstream_bind_config"),
            )?)
        }
        None => None,
    };
    // `extra_source_addresses`: one of each other IP family, for destinations of that family.
    let mut extra_source_addresses = Vec::new();
    if let Some(b) = &c.upstream_bind_config {
        for (i, e) in b.extra_source_addresses.iter().enumerate() {
            let epath = format!("{path}.upstream_bind_config.extra_source_addresses[{i}]");
            let sa = required(&e.address, &format!("{epath}.address"))?;
            let address = core::Address {
                address: Some(core::address::Address::SocketAddress(sa.clone())),
            };
            let a = socket_address(&address, &format!("{epath}.address"))?;
            let family = |x: &std::net::SocketAddr| x.is_ipv4();
            if source_address.as_ref().map(family) == Some(family(&a))
                || extra_source_addresses
                    .iter()
                    .any(|x| family(x) == family(&a))
            {
                return Err(ConfigError::new(
                    epath,
                    "an extra source address must be of an IP family no other source address has",
                ));
            }
            extra_source_addresses.push(a);
        }
    }
    let connect_timeout = match &c.connect_timeout {
        Some(d) => duration(d, &format!("{path}.connect_timeout"))?,
        None => Duration::from_secs(5),
    };
    let eds = match (&c.eds_cluster_config, discovery) {
        (Some(e), model::DiscoveryType::Eds) => {
            let epath = format!("{path}.eds_cluster_config");
            let source = required(&e.eds_config, &format!("{epath}.eds_config"))?;
            Some(EdsConfig {
                service_name: if e.service_name.is_empty() {
                    c.name.clone()
                } else {
                    e.service_name.clone()
                },
                source: super::config_source(source, &format!("{epath}.eds_config"))?,
            })
        }
        (None, model::DiscoveryType::Eds) => {
            return Err(ConfigError::new(
                format!("{path}.eds_cluster_config"),
                "required for an EDS cluster",
            ))
        }
        (Some(_), _) => {
            return Err(ConfigError::new(
                format!("{path}.eds_cluster_config"),
                "only an EDS cluster takes eds_cluster_config",
            ))
        }
        (None, _) => None,
    };
    if eds.is_some() && c.load_assignment.is_some() {
        return Err(ConfigError::new(
            format!("{path}.load_assignment"),
            "an EDS cluster takes its hosts from eds_cluster_config, not load_assignment",
        ));
    }
    let is_dns = matches!(
        discovery,
        model::DiscoveryType::StrictDns | model::DiscoveryType::LogicalDns
    );
    let dns = if let Some(ClusterDiscoveryType::ClusterType(t)) = &c.cluster_discovery_type {
        let tpath = format!("{path}.cluster_type.typed_config");
        let any = required(&t.typed_config, &tpath)?;
        let d = unpack(any, &tpath)?;
        Some(super::dns::dns_cluster_config(c, &d, path)?)
    } else if is_dns {
        Some(super::dns::dns_config(
            c,
            discovery == model::DiscoveryType::LogicalDns,
            path,
        )?)
    } else {
        None
    };
    let hosts = match &c.load_assignment {
        Some(_) if is_dns => Vec::new(),
        Some(la) => load_assignment_hosts(la, &format!("{path}.load_assignment"))?,
        None => Vec::new(),
    };
    let mut protocol = UpstreamProtocol::Http1;
    let mut http2 = Http2Options::default();
    let (mut auto_sni, mut auto_san_validation) = (false, false);
    let mut auto_config_path = None;
    let mut header_case = HeaderCase::Lower;
    let mut h1_trailers = false;
    // The cluster's own (deprecated) field; the protocol options' one wins when both are set.
    #[allow(deprecated)]
    let mut max_requests_per_connection = c.max_requests_per_connection.as_ref().map(|v| v.value);
    // Envoy's default for upstream HTTP connections: an hour without requests.
    let mut pool_idle_timeout = Some(std::time::Duration::from_secs(3600));
    let mut max_response_headers = 100;
    let mut max_connection_duration = None;
    let mut max_stream_duration = None;
    let mut routing = model::ClusterRouting::default();
    #[allow(deprecated)]
    if let Some(h2) = &c.http2_protocol_options {
        protocol = UpstreamProtocol::Http2;
        http2 = cluster_http2_options(h2, &format!("{path}.http2_protocol_options"))?;
    }
    for (key, any) in &c.typed_extension_protocol_options {
        let opath = format!("{path}.typed_extension_protocol_options[\"{key}\"]");
        if type_name(&any.type_url) != HTTP_PROTOCOL_OPTIONS {
            return Err(ConfigError::new(
                opath,
                format!("unsupported protocol options '{}'", any.type_url),
            ));
        }
        let o: upstream_http::HttpProtocolOptions = unpack(any, &opath)?;
        routing = cluster_routing(&o, &opath)?;
        if let Some(common) = &o.common_http_protocol_options {
            // headers_with_underscores_action on a cluster is accepted without effect: Envoy
            // 1.40 passes it only to its server codecs, so upstream responses keep their
            // names with `_` whatever it says (docs/compatibility.md).
            let cpath = format!("{opath}.common_http_protocol_options");
            if let Some(d) = &common.idle_timeout {
                let d = duration(d, &format!("{cpath}.idle_timeout"))?;
                pool_idle_timeout = (!d.is_zero()).then_some(d);
            }
            if let Some(d) = &common.max_connection_duration {
                let d = duration(d, &format!("{cpath}.max_connection_duration"))?;
                max_connection_duration = (!d.is_zero()).then_some(d);
            }
            if let Some(d) = &common.max_stream_duration {
                let d = duration(d, &format!("{cpath}.max_stream_duration"))?;
                max_stream_duration = (!d.is_zero()).then_some(d);
            }
            if let Some(n) = &common.max_headers_count {
                if n.value < 1 {
                    return Err(ConfigError::new(
                        format!("{cpath}.max_headers_count"),
                        "value must be greater than or equal to 1",
                    ));
                }
                max_response_headers = n.value;
            }
            if let Some(m) = &common.max_requests_per_connection {
                max_requests_per_connection = Some(m.value);
            }
        }
        if let Some(u) = &o.upstream_http_protocol_options {
            auto_sni = u.auto_sni;
            auto_san_validation = u.auto_san_validation;
        }
        use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig;
        use upstream_http::http_protocol_options::UpstreamProtocolOptions as U;
        match o.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(ProtocolConfig::HttpProtocolOptions(h1)) => {
                    protocol = UpstreamProtocol::Http1;
                    (header_case, h1_trailers) = super::upstream_http1(
                        &h1,
                        &format!("{opath}.explicit_http_config.http_protocol_options"),
                    )?;
                }
                Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                    protocol = UpstreamProtocol::Http2;
                    http2 = cluster_http2_options(
                        &h2,
                        &format!("{opath}.explicit_http_config.http2_protocol_options"),
                    )?;
                }
                _ => {
                    return Err(ConfigError::new(
                        format!("{opath}.explicit_http_config"),
                        "unsupported protocol",
                    ))
                }
            },
            Some(U::AutoConfig(a)) => {
                if a.http3_protocol_options.is_some()
                    || a.alternate_protocols_cache_options.is_some()
                {
                    return Err(ConfigError::unsupported(format!("{opath}.auto_config")));
                }
                if let Some(h2) = &a.http2_protocol_options {
                    http2 = cluster_http2_options(
                        h2,
                        &format!("{opath}.auto_config.http2_protocol_options"),
                    )?;
                }
                if let Some(h1) = &a.http_protocol_options {
                    (header_case, h1_trailers) = super::upstream_http1(
                        h1,
                        &format!("{opath}.auto_config.http_protocol_options"),
                    )?;
                }
                protocol = UpstreamProtocol::Auto;
                auto_config_path = Some(format!("{opath}.auto_config"));
            }
            Some(U::UseDownstreamProtocolConfig(d)) => {
                protocol = UpstreamProtocol::Downstream;
                if let Some(h1) = &d.http_protocol_options {
                    (header_case, h1_trailers) = super::upstream_http1(
                        h1,
                        &format!("{opath}.use_downstream_protocol_config.http_protocol_options"),
                    )?;
                }
                if let Some(h2) = &d.http2_protocol_options {
                    http2 = cluster_http2_options(
                        h2,
                        &format!("{opath}.use_downstream_protocol_config.http2_protocol_options"),
                    )?;
                }
            }
            None => {}
        }
    }
    // Active health checks run on the main thread, which reaches no internal listener.
    if !c.health_checks.is_empty() && hosts.iter().any(|h| h.internal.is_some()) {
        return Err(ConfigError::new(
            format!("{path}.health_checks"),
            "unsupported with internal addresses (envoy_internal_address) among the endpoints",
        ));
    }
    let (tls, proxy_protocol, internal_upstream) = match &c.transport_socket {
        Some(ts) => super::tls::upstream_transport(
            ts,
            &format!("{path}.transport_socket"),
            auto_san_validation,
            auto_config_path.is_some(),
            secrets,
        )?,
        None => (None, None, None),
    };
    let mut socket_matches = Vec::new();
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let mpath = format!("{path}.transport_socket_matches[{i}]");
        let tpath = format!("{mpath}.transport_socket");
        let (mtls, mproxy, minternal) = match &m.transport_socket {
            Some(ts) => super::tls::upstream_transport(
                ts,
                &tpath,
                auto_san_validation,
                auto_config_path.is_some(),
                secrets,
            )?,
            None => return Err(ConfigError::new(tpath, "required")),
        };
        if minternal.is_some() {
            return Err(ConfigError::new(
                format!("{tpath}.typed_config"),
                "unsupported: internal_upstream in a transport socket match (only as the \
                 cluster's transport_socket)",
            ));
        }
        // skiff keeps the PROXY protocol per cluster: a match may wrap its socket in the
        // cluster's own (Envoy Gateway writes them so), not in another.
        if mproxy != proxy_protocol {
            return Err(ConfigError::new(
                format!("{tpath}.typed_config"),
                "unsupported: a transport socket match whose upstream_proxy_protocol differs \
                 from the cluster transport_socket's",
            ));
        }
        if auto_config_path.is_some() && mtls.is_none() {
            return Err(ConfigError::new(
                tpath,
                format!(
                    "ALPN configured for cluster {} which has a non-ALPN transport socket",
                    c.name
                ),
            ));
        }
        socket_matches.push(TransportSocketMatch {
            name: m.name.clone(),
            criteria: m
                .r#match
                .as_ref()
                .map(|s| s.fields.clone().into_iter().collect())
                .unwrap_or_default(),
            tls: mtls,
        });
    }
    if let (Some(p), None) = (&auto_config_path, &tls) {
        // Envoy's words: only a TLS transport socket can negotiate the protocol.
        return Err(ConfigError::new(
            p,
            format!(
                "ALPN configured for cluster {} which has a non-ALPN transport socket",
                c.name
            ),
        ));
    }
    Ok(Cluster {
        name: c.name.clone(),
        routing,
        alt_stat_name: (!c.alt_stat_name.is_empty()).then(|| c.alt_stat_name.clone()),
        per_endpoint_stats: c
            .track_cluster_stats
            .as_ref()
            .is_some_and(|t| t.per_endpoint_stats),
        metadata: Arc::new(
            c.metadata
                .as_ref()
                .map(crate::metadata::Metadata::from_pb)
                .unwrap_or_default(),
        ),
        discovery,
        original_dst_header,
        original_dst_port,
        extra_source_addresses,
        original_dst_cleanup: match &c.cleanup_interval {
            Some(d) => {
                let d = duration(d, &format!("{path}.cleanup_interval"))?;
                if d.is_zero() {
                    return Err(ConfigError::new(
                        format!("{path}.cleanup_interval"),
                        "value must be greater than 0s",
                    ));
                }
                d
            }
            None => Duration::from_secs(5),
        },
        source_address,
        connect_timeout,
        hosts,
        eds,
        dns,
        circuit_breakers: circuit_breakers(c, path)?,
        // 0 means no limit, as in Envoy.
        max_requests_per_connection: max_requests_per_connection.filter(|m| *m > 0),
        pool_idle_timeout,
        max_response_headers,
        max_connection_duration,
        max_stream_duration,
        tcp_keepalive: tcp_keepalive(c),
        happy_eyeballs: happy_eyeballs(c, path)?,
        close_connections_on_host_set_change: c
            .common_lb_config
            .as_ref()
            .is_some_and(|l| l.close_connections_on_host_set_change),
        override_host_status: super::lb::override_host_status(c, path)?,
        ignore_new_hosts_until_first_hc: c
            .common_lb_config
            .as_ref()
            .is_some_and(|l| l.ignore_new_hosts_until_first_hc),
        update_merge_window: match c
            .common_lb_config
            .as_ref()
            .and_then(|l| l.update_merge_window.as_ref())
        {
            Some(d) => super::duration(d, &format!("{path}.common_lb_config.update_merge_window"))?,
            None => Duration::from_secs(1),
        },
        override_host,
        client_side_weights,
        preconnect_ratio: preconnect(c, protocol, path)?,
        predictive_ratio: predictive_preconnect(c, protocol, path)?,
        lb,
        locality_weighted: locality_weighted || super::lb::common_locality_weighted(c),
        zone_aware,
        slow_start,
        consistent_hashing,
        subsets,
        health_check: super::health_check::health_checks(
            &c.health_checks,
            (&c.name, !matches!(protocol, model::UpstreamProtocol::Http1)),
            path,
        )?,
        ignore_health_on_host_removal: c.ignore_health_on_host_removal,
        outlier: super::outlier::outlier_detection(c.outlier_detection.as_ref(), path)?,
        panic_threshold,
        protocol,
        http2,
        buffer_limit: c
            .per_connection_buffer_limit_bytes
            .as_ref()
            .map_or(DEFAULT_BUFFER_LIMIT, |v| v.value as usize),
        tls,
        socket_matches,
        proxy_protocol,
        internal_upstream,
        auto_sni,
        header_case,
        h1_trailers,
        istio: super::istio::cluster_metadata(c),
    })
}

/// `circuit_breakers`: each priority's thresholds over Envoy's defaults (a priority given twice:
/// the last wins, as in Envoy).
fn circuit_breakers(c: &cluster::Cluster, path: &str) -> Result<CircuitBreakers, ConfigError> {
    let mut out = CircuitBreakers::default();
    let Some(cb) = &c.circuit_breakers else {
        return Ok(out);
    };
    let cpath = format!("{path}.circuit_breakers");
    // Per host, Envoy honours `max_connections` alone; skiff refuses the others by path.
    for (i, t) in cb.per_host_thresholds.iter().enumerate() {
        let tpath = format!("{cpath}.per_host_thresholds[{i}]");
        for (field, set) in [
            ("max_pending_requests", t.max_pending_requests.is_some()),
            ("max_requests", t.max_requests.is_some()),
            ("max_retries", t.max_retries.is_some()),
            ("retry_budget", t.retry_budget.is_some()),
            ("max_connection_pools", t.max_connection_pools.is_some()),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!("{tpath}.{field}")));
            }
        }
        if t.priority == 0 {
            out.per_host_max_connections = t.max_connections.as_ref().map(|v| u64::from(v.value));
        }
    }
    for (i, t) in cb.thresholds.iter().enumerate() {
        let tpath = format!("{cpath}.thresholds[{i}]");
        let retry_budget = match &t.retry_budget {
            Some(b) => {
                let percent = b.budget_percent.as_ref().map_or(20.0, |p| p.value);
                if !(0.0..=100.0).contains(&percent) {
                    return Err(ConfigError::new(
                        format!("{tpath}.retry_budget.budget_percent.value"),
                        "must be between 0 and 100",
                    ));
                }
                let min = b
                    .min_retry_concurrency
                    .as_ref()
                    .map_or(3, |v| u64::from(v.value));
                Some(((percent * 10_000.0).round() as u64, min))
            }
            None => None,
        };
        let d = Thresholds::default();
        let v = |w: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u64| {
            w.as_ref().map_or(d, |v| u64::from(v.value))
        };
        let th = Thresholds {
            max_connections: v(&t.max_connections, d.max_connections),
            max_pending_requests: v(&t.max_pending_requests, d.max_pending_requests),
            max_requests: v(&t.max_requests, d.max_requests),
            max_retries: v(&t.max_retries, d.max_retries),
            max_connection_pools: v(&t.max_connection_pools, d.max_connection_pools),
            track_remaining: t.track_remaining,
            retry_budget,
        };
        match core::RoutingPriority::try_from(t.priority) {
            Ok(core::RoutingPriority::Default) => out.default = th,
            Ok(core::RoutingPriority::High) => out.high = th,
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{tpath}.priority"),
                    format!("{} is not a priority", t.priority),
                ))
            }
        }
    }
    Ok(out)
}

/// `http2_protocol_options` checked (at `path`) and translated.
pub(super) fn http2_options(
    h2: &core::Http2ProtocolOptions,
    path: &str,
) -> Result<Http2Options, ConfigError> {
    check_http2_options(h2, path)?;
    let d = Http2Options::default();
    let keepalive = match &h2.connection_keepalive {
        None => None,
        Some(k) => {
            let kpath = format!("{path}.connection_keepalive");
            let core::KeepaliveSettings {
                interval,
                timeout,
                interval_jitter,
                connection_idle_interval,
            } = k;
            // connection_idle_interval acts only on client codecs (a PING ahead of a new
            // stream on a connection idle that long): cluster_http2_options refuses it, and on
            // a connection manager it does nothing, in Envoy as here.
            if let Some(d) = connection_idle_interval {
                super::duration(d, &format!("{kpath}.connection_idle_interval"))?;
            }
            let timeout = super::duration(
                super::required(timeout, &format!("{kpath}.timeout"))?,
                &format!("{kpath}.timeout"),
            )?;
            if timeout < std::time::Duration::from_millis(1) {
                return Err(ConfigError::new(
                    format!("{kpath}.timeout"),
                    "must be at least 1ms",
                ));
            }
            let interval = interval
                .as_ref()
                .map(|d| super::duration(d, &format!("{kpath}.interval")))
                .transpose()?
                .filter(|d| !d.is_zero());
            let jitter = interval_jitter.as_ref().map_or(15.0, |p| p.value);
            if !(0.0..=100.0).contains(&jitter) {
                return Err(ConfigError::new(
                    format!("{kpath}.interval_jitter"),
                    "must be between 0 and 100",
                ));
            }
            interval.map(|interval| Http2Keepalive {
                interval,
                timeout,
                jitter: jitter / 100.0,
            })
        }
    };
    Ok(Http2Options {
        max_concurrent_streams: h2
            .max_concurrent_streams
            .as_ref()
            .map_or(d.max_concurrent_streams, |v| v.value),
        initial_stream_window_size: h2.initial_stream_window_size.as_ref().map(|v| v.value),
        initial_connection_window_size: h2.initial_connection_window_size.as_ref().map(|v| v.value),
        keepalive,
        max_consecutive_empty_frames: h2
            .max_consecutive_inbound_frames_with_empty_payload
            .as_ref()
            .map_or(d.max_consecutive_empty_frames, |v| v.value),
        max_priority_frames_per_stream: h2
            .max_inbound_priority_frames_per_stream
            .as_ref()
            .map_or(d.max_priority_frames_per_stream, |v| v.value),
        max_window_update_frames_per_data_frame: h2
            .max_inbound_window_update_frames_per_data_frame_sent
            .as_ref()
            .map_or(d.max_window_update_frames_per_data_frame, |v| v.value),
        max_outbound_frames: h2
            .max_outbound_frames
            .as_ref()
            .map_or(d.max_outbound_frames, |v| v.value),
        max_outbound_control_frames: h2
            .max_outbound_control_frames
            .as_ref()
            .map_or(d.max_outbound_control_frames, |v| v.value),
        allow_connect: h2.allow_connect,
    })
}

/// A cluster's `http2_protocol_options` (at `path`).
fn cluster_http2_options(
    h2: &core::Http2ProtocolOptions,
    path: &str,
) -> Result<Http2Options, ConfigError> {
    refuse_upstream_flood_limits(h2, path)?;
    if h2
        .connection_keepalive
        .as_ref()
        .is_some_and(|k| k.connection_idle_interval.is_some())
    {
        return Err(ConfigError::new(
            format!("{path}.connection_keepalive.connection_idle_interval"),
            "unsupported on clusters: no PING is sent ahead of a new stream on an idle connection",
        ));
    }
    if h2.allow_connect {
        return Err(ConfigError::new(
            format!("{path}.allow_connect"),
            "unsupported on clusters: skiff does not send extended CONNECT upstream",
        ));
    }
    http2_options(h2, path)
}

/// The flood limits guard a connection manager's clients; skiff does not check an upstream
/// connection against them, so on a cluster they are refused.
fn refuse_upstream_flood_limits(
    h2: &core::Http2ProtocolOptions,
    path: &str,
) -> Result<(), ConfigError> {
    let fields = [
        (
            "max_consecutive_inbound_frames_with_empty_payload",
            h2.max_consecutive_inbound_frames_with_empty_payload
                .is_some(),
        ),
        (
            "max_inbound_priority_frames_per_stream",
            h2.max_inbound_priority_frames_per_stream.is_some(),
        ),
        (
            "max_inbound_window_update_frames_per_data_frame_sent",
            h2.max_inbound_window_update_frames_per_data_frame_sent
                .is_some(),
        ),
        ("max_outbound_frames", h2.max_outbound_frames.is_some()),
        (
            "max_outbound_control_frames",
            h2.max_outbound_control_frames.is_some(),
        ),
    ];
    match fields.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(ConfigError::new(
            format!("{path}.{field}"),
            "unsupported on clusters: upstream HTTP/2 connections are not checked for floods",
        )),
        None => Ok(()),
    }
}

/// Envoy's ranges: streams 1..=2^31-1, windows 65535..=2^31-1.
fn check_http2_options(h2: &core::Http2ProtocolOptions, path: &str) -> Result<(), ConfigError> {
    const MAX: u32 = 2_147_483_647;
    let checks = [
        (
            "max_concurrent_streams",
            h2.max_concurrent_streams.as_ref().map(|v| v.value),
            1,
        ),
        (
            "initial_stream_window_size",
            h2.initial_stream_window_size.as_ref().map(|v| v.value),
            65_535,
        ),
        (
            "initial_connection_window_size",
            h2.initial_connection_window_size.as_ref().map(|v| v.value),
            65_535,
        ),
    ];
    for (field, value, min) in checks {
        if let Some(v) = value {
            if !(min..=MAX).contains(&v) {
                return Err(ConfigError::new(
                    format!("{path}.{field}"),
                    format!("{v} is outside {min}..={MAX}"),
                ));
            }
        }
    }
    let at_least_one = [
        (
            "max_inbound_window_update_frames_per_data_frame_sent",
            &h2.max_inbound_window_update_frames_per_data_frame_sent,
        ),
        ("max_outbound_frames", &h2.max_outbound_frames),
        (
            "max_outbound_control_frames",
            &h2.max_outbound_control_frames,
        ),
    ];
    for (field, value) in at_least_one {
        if value.as_ref().is_some_and(|v| v.value == 0) {
            return Err(ConfigError::new(
                format!("{path}.{field}"),
                "value must be greater than or equal to 1",
            ));
        }
    }
    Ok(())
}

/// The hosts of a `ClusterLoadAssignment` (a cluster's `load_assignment`, or an EDS resource).
pub(crate) fn load_assignment_hosts(
    la: &envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
    path: &str,
) -> Result<Vec<Host>, ConfigError> {
    super::fields::cluster_load_assignment(la, path)?;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let mut hosts = Vec::new();
    for (i, locality) in la.endpoints.iter().enumerate() {
        super::fields::locality_lb_endpoints(locality, &format!("{path}.endpoints[{i}]"))?;
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            let epath = format!("{path}.endpoints[{i}].lb_endpoints[{j}]");
            super::fields::lb_endpoint(lb, &epath)?;
            let ep = match &lb.host_identifier {
                Some(HostIdentifier::Endpoint(ep)) => ep,
                _ => return Err(ConfigError::new(format!("{epath}.endpoint"), "required")),
            };
            let (address, internal) = endpoint_address(
                required(&ep.address, &format!("{epath}.endpoint.address"))?,
                &format!("{epath}.endpoint.address"),
            )?;
            // Envoy routes to UNKNOWN, HEALTHY and DEGRADED hosts only.
            let healthy = matches!(lb.health_status, 0 | 1 | 5);
            let (degraded, excluded) = (lb.health_status == 5, lb.health_status == 3);
            let hostname = (!ep.hostname.is_empty()).then(|| ep.hostname.as_str().into());
            hosts.push(Host {
                address,
                healthy,
                degraded,
                excluded,
                health_status: health_status(lb.health_status),
                hostname,
                weight: weight(lb, &epath)?,
                locality: i as u32,
                priority: locality.priority,
                locality_weight: locality_weight(locality, &format!("{path}.endpoints[{i}]"))?,
                place: place(locality),
                socket_match: socket_match_labels(lb, locality),
                hash_key: hash_key(lb),
                checks: HcFlags::default(),
                check_config: check_config(ep, &epath)?,
                lb_metadata: super::subset::lb_metadata(lb.metadata.as_ref()),
                metadata: Arc::new(
                    lb.metadata
                        .as_ref()
                        .map(crate::metadata::Metadata::from_pb)
                        .unwrap_or_default(),
                ),
                additional: additional_addresses(ep, internal.is_some(), &epath)?,
                internal,
            });
        }
    }
    Ok(hosts)
}

/// An endpoint's `health_status` as a `HealthStatus` value (an unknown number: UNKNOWN).
pub(super) fn health_status(v: i32) -> u8 {
    u8::try_from(v).ok().filter(|v| *v <= 5).unwrap_or(0)
}

/// An endpoint's `additional_addresses`: socket addresses its connections try after its
/// own (an internal listener's endpoint has none).
fn additional_addresses(
    ep: &envoy_types::pb::envoy::config::endpoint::v3::Endpoint,
    internal: bool,
    path: &str,
) -> Result<Vec<std::net::SocketAddr>, ConfigError> {
    let mut out = Vec::new();
    for (i, a) in ep.additional_addresses.iter().enumerate() {
        let apath = format!("{path}.endpoint.additional_addresses[{i}].address");
        let (address, other_internal) = endpoint_address(required(&a.address, &apath)?, &apath)?;
        if internal || other_internal.is_some() {
            return Err(ConfigError::new(
                apath,
                "additional addresses must be socket addresses, as must the endpoint's",
            ));
        }
        out.push(address);
    }
    Ok(out)
}

/// An endpoint's address: a socket address, or an internal listener's
/// (`envoy_internal_address`) with the stand-in address that identifies it.
fn endpoint_address(
    a: &core::Address,
    path: &str,
) -> Result<(std::net::SocketAddr, Option<Arc<model::InternalAddress>>), ConfigError> {
    use core::envoy_internal_address::AddressNameSpecifier;
    let Some(core::address::Address::EnvoyInternalAddress(ia)) = &a.address else {
        return Ok((socket_address(a, path)?, None));
    };
    let listener = match &ia.address_name_specifier {
        Some(AddressNameSpecifier::ServerListenerName(n)) if !n.is_empty() => n.clone(),
        _ => {
            return Err(ConfigError::new(
                format!("{path}.envoy_internal_address.server_listener_name"),
                "required",
            ))
        }
    };
    let internal = model::InternalAddress {
        listener,
        endpoint_id: ia.endpoint_id.clone(),
    };
    Ok((internal.stand_in(), Some(Arc::new(internal))))
}

/// The endpoint's `envoy.lb` metadata `hash_key`, when it is a non-empty string (Envoy
/// hashes the address otherwise).
pub(super) fn hash_key(
    lb: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint,
) -> Option<Arc<str>> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let v = lb
        .metadata
        .as_ref()?
        .filter_metadata
        .get("envoy.lb")?
        .fields
        .get("hash_key")?;
    match &v.kind {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(Arc::from(s.as_str())),
        _ => None,
    }
}

/// An endpoint's `health_check_config`.
pub(super) fn check_config(
    ep: &envoy_types::pb::envoy::config::endpoint::v3::Endpoint,
    path: &str,
) -> Result<Option<Arc<model::EndpointCheck>>, ConfigError> {
    let Some(c) = &ep.health_check_config else {
        return Ok(None);
    };
    let cpath = format!("{path}.endpoint.health_check_config");
    let port = u16::try_from(c.port_value).map_err(|_| {
        ConfigError::new(
            format!("{cpath}.port_value"),
            "value must be less than or equal to 65535",
        )
    })?;
    let address = c
        .address
        .as_ref()
        .map(|a| socket_address(a, &format!("{cpath}.address")))
        .transpose()?;
    Ok(Some(Arc::new(model::EndpointCheck {
        address,
        port,
        hostname: c.hostname.clone(),
        disabled: c.disable_active_health_check,
    })))
}

/// A locality's `region`, `zone` and `sub_zone` (all empty when it has none).
pub(super) fn place(
    l: &envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints,
) -> Arc<model::Locality> {
    Arc::new(l.locality.as_ref().map(locality_of).unwrap_or_default())
}

/// A `Locality` message as the model's.
pub(crate) fn locality_of(
    l: &envoy_types::pb::envoy::config::core::v3::Locality,
) -> model::Locality {
    model::Locality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        sub_zone: l.sub_zone.clone(),
    }
}

/// The `envoy.transport_socket_match` metadata of an endpoint and of its locality.
pub(super) fn socket_match_labels(
    lb: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint,
    locality: &envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints,
) -> SocketMatchLabels {
    let labels = |m: Option<&envoy_types::pb::envoy::config::core::v3::Metadata>| {
        m.and_then(|m| m.filter_metadata.get("envoy.transport_socket_match"))
            .map(|s| Arc::new(s.fields.clone().into_iter().collect::<Labels>()))
    };
    SocketMatchLabels {
        endpoint: labels(lb.metadata.as_ref()),
        locality: labels(locality.metadata.as_ref()),
    }
}

/// An endpoint's `load_balancing_weight` (default 1; Envoy refuses 0).
pub(super) fn weight(
    lb: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint,
    path: &str,
) -> Result<u32, ConfigError> {
    match &lb.load_balancing_weight {
        None => Ok(1),
        Some(w) if w.value >= 1 => Ok(w.value),
        Some(_) => Err(ConfigError::new(
            format!("{path}.load_balancing_weight"),
            "must be at least 1",
        )),
    }
}

/// A locality's `load_balancing_weight` (Envoy refuses 0).
pub(super) fn locality_weight(
    l: &envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints,
    path: &str,
) -> Result<Option<u32>, ConfigError> {
    match &l.load_balancing_weight {
        None => Ok(None),
        Some(w) if w.value >= 1 => Ok(Some(w.value)),
        Some(_) => Err(ConfigError::new(
            format!("{path}.load_balancing_weight"),
            "must be at least 1",
        )),
    }
}

/// `upstream_connection_options`: TCP keepalive; the other options are refused by path.
/// The protocol options' `hash_policy`, `request_mirror_policies` and `retry_policy`: what
/// requests routed to the cluster use in place of their route's. Mirror clusters are not
/// checked here (a cluster may name one defined after it); an unknown one mirrors nothing.
fn cluster_routing(
    o: &upstream_http::HttpProtocolOptions,
    path: &str,
) -> Result<model::ClusterRouting, ConfigError> {
    Ok(model::ClusterRouting {
        hash_policy: o
            .hash_policy
            .iter()
            .enumerate()
            .map(|(i, h)| super::route_action::hash_policy(h, &format!("{path}.hash_policy[{i}]")))
            .collect::<Result<_, _>>()?,
        mirrors: super::route_action::mirrors(&o.request_mirror_policies, path, None)?,
        retry: o
            .retry_policy
            .as_ref()
            .map(|p| super::retry::policy(p, &format!("{path}.retry_policy")))
            .transpose()?
            .map(Arc::new),
    })
}

/// `preconnect_policy`: the per-upstream ratio, for HTTP/1.1 pools.
fn preconnect(
    c: &cluster::Cluster,
    protocol: model::UpstreamProtocol,
    path: &str,
) -> Result<Option<f64>, ConfigError> {
    let Some(p) = &c.preconnect_policy else {
        return Ok(None);
    };
    let ppath = format!("{path}.preconnect_policy");
    let Some(ratio) = p.per_upstream_preconnect_ratio.as_ref().map(|v| v.value) else {
        return Ok(None);
    };
    if !(1.0..=3.0).contains(&ratio) {
        return Err(ConfigError::new(
            format!("{ppath}.per_upstream_preconnect_ratio"),
            "must be between 1 and 3",
        ));
    }
    // A pool that picks its protocol per host (by ALPN or the downstream's) is not
    // provisioned ahead.
    if ratio > 1.0
        && !matches!(
            protocol,
            model::UpstreamProtocol::Http1 | model::UpstreamProtocol::Http2
        )
    {
        return Err(ConfigError::new(
            format!("{ppath}.per_upstream_preconnect_ratio"),
            "unsupported: skiff preconnects HTTP/1.1 and HTTP/2 connections, not a protocol chosen per host",
        ));
    }
    Ok(Some(ratio).filter(|r| *r > 1.0))
}

/// `preconnect_policy.predictive_preconnect_ratio`: 1 to 3, as Envoy checks it; 1 (or none)
/// makes nothing ahead.
fn predictive_preconnect(
    c: &cluster::Cluster,
    protocol: model::UpstreamProtocol,
    path: &str,
) -> Result<Option<f64>, ConfigError> {
    let Some(ratio) = c
        .preconnect_policy
        .as_ref()
        .and_then(|p| p.predictive_preconnect_ratio.as_ref())
        .map(|v| v.value)
    else {
        return Ok(None);
    };
    let rpath = format!("{path}.preconnect_policy.predictive_preconnect_ratio");
    if !(1.0..=3.0).contains(&ratio) {
        return Err(ConfigError::new(rpath, "must be between 1 and 3"));
    }
    if ratio > 1.0
        && !matches!(
            protocol,
            model::UpstreamProtocol::Http1 | model::UpstreamProtocol::Http2
        )
    {
        return Err(ConfigError::new(
            rpath,
            "unsupported: skiff preconnects HTTP/1.1 and HTTP/2 connections, not a protocol chosen per host",
        ));
    }
    Ok(Some(ratio).filter(|r| *r > 1.0))
}

/// `upstream_connection_options.happy_eyeballs_config`.
fn happy_eyeballs(c: &cluster::Cluster, path: &str) -> Result<model::HappyEyeballs, ConfigError> {
    let Some(h) = c
        .upstream_connection_options
        .as_ref()
        .and_then(|o| o.happy_eyeballs_config.as_ref())
    else {
        return Ok(model::HappyEyeballs::default());
    };
    let hpath = format!("{path}.upstream_connection_options.happy_eyeballs_config");
    use cluster::upstream_connection_options::FirstAddressFamilyVersion as F;
    use model::FirstFamily;
    let first = match F::try_from(h.first_address_family_version) {
        Ok(F::Default) => FirstFamily::Default,
        Ok(F::V4) => FirstFamily::V4,
        Ok(F::V6) => FirstFamily::V6,
        Ok(F::Pipe | F::Internal) => FirstFamily::Neither,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{hpath}.first_address_family_version"),
                "unknown value",
            ))
        }
    };
    let first_count = match &h.first_address_family_count {
        Some(n) if n.value < 1 => {
            return Err(ConfigError::new(
                format!("{hpath}.first_address_family_count"),
                "value must be greater than or equal to 1",
            ))
        }
        Some(n) => n.value,
        None => 1,
    };
    Ok(model::HappyEyeballs { first, first_count })
}

fn tcp_keepalive(c: &cluster::Cluster) -> Option<TcpKeepalive> {
    let o = c.upstream_connection_options.as_ref()?;
    let cluster::UpstreamConnectionOptions {
        tcp_keepalive,
        set_local_interface_name_on_upstream_connections,
        happy_eyeballs_config,
    } = o;
    // The interface's name goes into Envoy's connection info, which nothing skiff runs reads
    // (no access log operator shows it): counted and listed in docs/compatibility.md.
    if *set_local_interface_name_on_upstream_connections {
        super::istio::without_effect("set_local_interface_name_on_upstream_connections");
    }
    // happy_eyeballs_config: [`happy_eyeballs`].
    let _ = happy_eyeballs_config;
    tcp_keepalive.as_ref().map(|k| TcpKeepalive {
        probes: k.keepalive_probes.as_ref().map(|v| v.value),
        time: k.keepalive_time.as_ref().map(|v| v.value),
        interval: k.keepalive_interval.as_ref().map(|v| v.value),
    })
}

#[cfg(test)]
mod tests {
    use crate::load_text;
    use crate::model::NetworkFilter;

    fn bootstrap(hcm_h2: &str, cluster_h2: &str) -> String {
        format!(
            r#"
static_resources:
  listeners:
  - address: {{ socket_address: {{ address: 127.0.0.1, port_value: 10000 }} }}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: p
          http2_protocol_options: {hcm_h2}
          route_config: {{ virtual_hosts: [ {{ name: a, domains: ["*"], routes: [ {{ match: {{ prefix: "/" }}, route: {{ cluster: up }} }} ] }} ] }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: up
    http2_protocol_options: {cluster_h2}
    load_assignment: {{ cluster_name: up, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 1 }} }} }} }} ] }} ] }}
"#
        )
    }

    #[test]
    fn preconnect_ratios_are_checked() {
        let with = |extra: &str, h2: bool| {
            let mut b = bootstrap("{}", "{}");
            if !h2 {
                b = b.replace(
                    "    http2_protocol_options: {}\n    load_assignment",
                    "    load_assignment",
                );
            }
            load_text(&b.replace("  - name: up\n", &format!("  - name: up\n    {extra}\n")))
                .map(|l| {
                    let c = &l.model.clusters[0];
                    c.preconnect_ratio.or(c.predictive_ratio)
                })
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            with(
                "preconnect_policy: { per_upstream_preconnect_ratio: 1.5 }",
                false
            ),
            Ok(Some(1.5))
        );
        assert_eq!(
            with(
                "preconnect_policy: { per_upstream_preconnect_ratio: 1 }",
                false
            ),
            Ok(None)
        );
        let e = with(
            "preconnect_policy: { per_upstream_preconnect_ratio: 4 }",
            false,
        )
        .expect_err("above 3");
        assert!(e.contains("per_upstream_preconnect_ratio"), "{e}");
        assert_eq!(
            with(
                "preconnect_policy: { per_upstream_preconnect_ratio: 2 }",
                true,
            ),
            Ok(Some(2.0))
        );
        assert_eq!(
            with(
                "preconnect_policy: { predictive_preconnect_ratio: 2 }",
                false,
            ),
            Ok(Some(2.0))
        );
        let e = with(
            "preconnect_policy: { predictive_preconnect_ratio: 0.5 }",
            false,
        )
        .expect_err("below 1");
        assert!(e.contains("predictive_preconnect_ratio"), "{e}");
    }

    #[test]
    fn flood_limits_serve_the_connection_manager_only() {
        let loaded = load_text(&bootstrap(
            "{max_consecutive_inbound_frames_with_empty_payload: 3, max_inbound_priority_frames_per_stream: 7, max_inbound_window_update_frames_per_data_frame_sent: 2, max_outbound_frames: 50, max_outbound_control_frames: 5, allow_connect: true, override_stream_error_on_invalid_http_message: true}",
            "{}",
        ))
        .expect("loads");
        let chain = &loaded.model.listeners[0].filter_chains[0].1;
        let Some(NetworkFilter::HttpConnectionManager(hcm)) = chain.filters.last() else {
            panic!("an HCM");
        };
        assert_eq!(
            (
                hcm.http2.max_consecutive_empty_frames,
                hcm.http2.max_priority_frames_per_stream,
                hcm.http2.max_window_update_frames_per_data_frame,
                hcm.http2.max_outbound_frames,
                hcm.http2.max_outbound_control_frames,
                hcm.http2.allow_connect,
            ),
            (3, 7, 2, 50, 5, true)
        );
        let e = load_text(&bootstrap("{}", "{max_outbound_control_frames: 5}"))
            .expect_err("refused on a cluster")
            .to_string();
        assert!(e.contains("max_outbound_control_frames"), "{e}");
        // connection_idle_interval does nothing on a connection manager, in Envoy too; a
        // cluster's is refused.
        let keepalive =
            "{connection_keepalive: {interval: 1s, timeout: 1s, connection_idle_interval: 5s}}";
        load_text(&bootstrap(keepalive, "{}")).expect("loads on the connection manager");
        let e = load_text(&bootstrap("{}", keepalive))
            .expect_err("refused on a cluster")
            .to_string();
        assert!(e.contains("connection_idle_interval"), "{e}");
        let e = load_text(&bootstrap("{}", "{allow_connect: true}"))
            .expect_err("refused on a cluster")
            .to_string();
        assert!(e.contains("allow_connect"), "{e}");
        let e = load_text(&bootstrap("{max_outbound_frames: 0}", "{}"))
            .expect_err("at least one")
            .to_string();
        assert!(e.contains("max_outbound_frames"), "{e}");
        let e = load_text(&bootstrap(
            "{}",
            "{max_inbound_priority_frames_per_stream: 7}",
        ))
        .expect_err("refused on a cluster")
        .to_string();
        assert!(
            e.starts_with(
                "static_resources.clusters[0].http2_protocol_options.max_inbound_priority_frames_per_stream"
            ),
            "{e}"
        );
        let e = load_text(&bootstrap(
            "{max_inbound_window_update_frames_per_data_frame_sent: 0}",
            "{}",
        ))
        .expect_err("0 is refused, as by Envoy")
        .to_string();
        assert!(e.contains("greater than or equal to 1"), "{e}");
    }
}
