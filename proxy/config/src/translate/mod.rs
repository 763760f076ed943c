//! Envoy protos → [`model`]: the bootstrap, listeners and network filters here; the HTTP
//! connection manager in `http_manager`, clusters in `clusters`. Fields were already checked against the supported table; this step
//! checks values and references, with the field path in every error.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3 as connection_limit;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3 as local_ratelimit;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};

mod basic_auth;
mod clusters;
mod compressor;
mod cors;
mod dns;
mod ext_authz;
mod fault;
mod fields;
mod filter_state;
mod google_grpc;
mod header_mutation;
mod header_to_metadata;
mod health_check;
mod http_manager;
mod istio;
mod jwt;
mod lb;
mod listener_filters;
mod matcher;
mod metadata;
mod operations;
mod outlier;
mod ratelimit;
mod rbac;
mod retry;
mod route_action;
mod stateful_session;
mod subset;
mod tls;
mod udp;

use clusters::translate_cluster;
pub use http_manager::set_bootstrap_tracer;
use http_manager::{translate_access_log, translate_hcm};
pub use istio::on_accepted_without_effect;

use super::model::*;
use super::proto::{type_name, unpack};
use super::{ConfigError, Secrets};

/// Translation of single resources, as they come from dynamic sources.
pub mod resource {
    use std::collections::HashSet;

    use envoy_types::pb::envoy::config::cluster::v3 as cluster;
    use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
    use envoy_types::pb::envoy::config::listener::v3 as listener;
    use envoy_types::pb::envoy::config::route::v3 as route;

    use super::super::model::{Cluster, Host, Listener};
    use super::super::{ConfigError, Secrets};
    use crate::router::RouteConfig;

    /// A listener; inline routes must name clusters in `clusters`.
    pub fn listener(
        l: &listener::Listener,
        path: &str,
        clusters: &HashSet<String>,
        secrets: &Secrets,
    ) -> Result<Listener, ConfigError> {
        super::translate_listener(l, path, clusters, secrets)
    }

    /// A cluster.
    pub fn cluster(
        c: &cluster::Cluster,
        path: &str,
        secrets: &Secrets,
    ) -> Result<Cluster, ConfigError> {
        super::clusters::translate_cluster(c, path, secrets)
    }

    /// A route configuration from RDS (its clusters are not checked, as Envoy's default).
    pub fn route_configuration(
        rc: &route::RouteConfiguration,
        path: &str,
    ) -> Result<RouteConfig, ConfigError> {
        super::http_manager::translate_routes(rc, path, None)
    }

    /// A scope from SRDS: its name and what it is.
    pub fn scope(
        c: &route::ScopedRouteConfiguration,
        path: &str,
    ) -> Result<(String, crate::router::scoped::Scope), ConfigError> {
        super::http_manager::srds_scope(c, path)
    }

    /// The hosts of a `ClusterLoadAssignment` from EDS.
    pub fn endpoints(
        cla: &endpoint::ClusterLoadAssignment,
        path: &str,
    ) -> Result<Vec<Host>, ConfigError> {
        super::clusters::load_assignment_hosts(cla, path)
    }
}

pub(super) const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;
const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY_TYPE: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const CONNECTION_LIMIT_TYPE: &str =
    "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit";
const LOCAL_RATELIMIT_TYPE: &str =
    "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit";
pub(super) const HTTP_PROTOCOL_OPTIONS: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Translates a decoded bootstrap into the model.
pub fn translate(b: &bootstrap::Bootstrap) -> Result<Bootstrap, ConfigError> {
    let node = b
        .node
        .as_ref()
        .map(|n| Node {
            id: n.id.clone(),
            cluster: n.cluster.clone(),
            proto: n.clone(),
        })
        .unwrap_or_default();
    let admin = match &b.admin {
        Some(a) => match &a.address {
            Some(addr) => Some(Admin {
                address: socket_address(addr, "admin.address")?,
                access_logs: operations::admin_access_logs(a)?,
            }),
            None => None,
        },
        None => None,
    };
    let mut overload = operations::overload(b.overload_manager.as_ref())?;
    let mut stats = operations::stats(b.stats_config.as_ref())?;
    if let Some(d) = &b.stats_flush_interval {
        let d = duration(d, "stats_flush_interval")?;
        if d < Duration::from_millis(1) || d >= Duration::from_secs(300) {
            return Err(ConfigError::new(
                "stats_flush_interval",
                "must be at least 1ms and under 300s",
            ));
        }
        stats.flush_interval = Some(d);
    }
    // The runtime key is the older form of the limit; the resource monitor wins over it.
    let runtime = operations::runtime(b.layered_runtime.as_ref())?;
    overload.max_downstream_connections =
        overload.max_downstream_connections.or(runtime.global_limit);
    if let Some(s) = runtime.premature_reset_min_lifetime {
        overload.premature_reset.min_stream_lifetime = Duration::from_secs(s);
    }
    if let Some(n) = runtime.premature_reset_total {
        overload.premature_reset.total_stream_count = n;
    }
    let internal_listener_buffer = operations::extensions(&b.bootstrap_extensions)?;
    let empty = bootstrap::bootstrap::StaticResources::default();
    let res = b.static_resources.as_ref().unwrap_or(&empty);
    let secrets = static_secrets(&res.secrets)?;
    let dynamic = match &b.dynamic_resources {
        Some(d) => DynamicResources {
            lds: d
                .lds_config
                .as_ref()
                .map(|c| config_source(c, "dynamic_resources.lds_config"))
                .transpose()?,
            cds: d
                .cds_config
                .as_ref()
                .map(|c| config_source(c, "dynamic_resources.cds_config"))
                .transpose()?,
            ads: d
                .ads_config
                .as_ref()
                .map(|c| {
                    let path = "dynamic_resources.ads_config";
                    let g = grpc_source(c, path)?;
                    if g.rest.is_some() {
                        return Err(ConfigError::new(
                            format!("{path}.api_type"),
                            "ADS is a gRPC stream: GRPC or DELTA_GRPC",
                        ));
                    }
                    Ok(g)
                })
                .transpose()?,
        },
        None => DynamicResources::default(),
    };

    let ads_named = [
        (&dynamic.lds, "dynamic_resources.lds_config"),
        (&dynamic.cds, "dynamic_resources.cds_config"),
    ];
    for (src, p) in ads_named {
        if src.as_ref().is_some_and(|s| s.kind == SourceKind::Ads) && dynamic.ads.is_none() {
            return Err(ConfigError::new(
                format!("{p}.ads"),
                "ADS is not configured (dynamic_resources.ads_config)",
            ));
        }
    }
    let mut clusters = Vec::new();
    let mut cluster_names = HashSet::new();
    let mut xds_targets = std::collections::BTreeMap::new();
    for (i, c) in res.clusters.iter().enumerate() {
        let path = format!("static_resources.clusters[{i}]");
        let target = xds_target(c, &path)?;
        // A cluster of Unix sockets carries xDS and SDS streams only (see xds_target).
        let unix = matches!(target, Some(GrpcTarget::Unix(_)));
        if let Some(t) = target {
            xds_targets.insert(c.name.clone(), t);
        }
        let c = if unix {
            let mut c = c.clone();
            c.load_assignment = None;
            translate_cluster(&c, &path, &secrets)?
        } else {
            translate_cluster(c, &path, &secrets)?
        };
        // A DNS cluster's name is resolved when a stream through it connects.
        if let Some(t) = c.dns.as_ref().and_then(|d| d.targets.first()) {
            xds_targets
                .entry(c.name.clone())
                .or_insert_with(|| GrpcTarget::Dns(t.name.clone(), t.port));
        }
        if !cluster_names.insert(c.name.clone()) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate cluster '{}'", c.name),
            ));
        }
        clusters.push(Arc::new(c));
    }

    let grpc_named = dynamic
        .ads
        .iter()
        .map(|g| (g, "dynamic_resources.ads_config"))
        .chain(dynamic.lds.iter().filter_map(|s| match &s.kind {
            SourceKind::Grpc(g) => Some((g, "dynamic_resources.lds_config.api_config_source")),
            _ => None,
        }))
        .chain(dynamic.cds.iter().filter_map(|s| match &s.kind {
            SourceKind::Grpc(g) => Some((g, "dynamic_resources.cds_config.api_config_source")),
            _ => None,
        }));
    for (g, p) in grpc_named {
        if g.google.is_none() && !xds_targets.contains_key(&g.cluster) {
            return Err(ConfigError::new(
                format!("{p}.grpc_services[0].envoy_grpc.cluster_name"),
                format!(
                    "unknown gRPC client cluster '{}' (a static or DNS cluster with an endpoint is required)",
                    g.cluster
                ),
            ));
        }
    }
    let local_cluster = b
        .cluster_manager
        .as_ref()
        .map(|m| m.local_cluster_name.clone())
        .filter(|n| !n.is_empty());
    if let Some(name) = &local_cluster {
        if !cluster_names.contains(name) {
            return Err(ConfigError::new(
                "cluster_manager.local_cluster_name",
                format!("local cluster '{name}' must be defined"),
            ));
        }
    }
    let mut listeners = Vec::new();
    let mut udp_listeners = Vec::new();
    let mut listener_names = HashSet::new();
    let mut addresses = HashSet::new();
    let mut udp_addresses = HashSet::new();
    for (i, l) in res.listeners.iter().enumerate() {
        let path = format!("static_resources.listeners[{i}]");
        if udp::is_udp(l) {
            let u = udp::listener(l, &path)?;
            if !listener_names.insert(u.name.clone()) {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!("duplicate listener name '{}'", u.name),
                ));
            }
            if !udp_addresses.insert(u.address) {
                return Err(ConfigError::new(
                    format!("{path}.address"),
                    format!("another listener already uses {} (UDP)", u.address),
                ));
            }
            udp_listeners.push(Arc::new(u));
            continue;
        }
        let l = translate_listener(l, &path, &cluster_names, &secrets)?;
        if !listener_names.insert(l.name.clone()) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate listener name '{}'", l.name),
            ));
        }
        if l.internal && internal_listener_buffer.is_none() {
            return Err(ConfigError::new(
                format!("{path}.internal_listener"),
                format!(
                    "error adding listener named '{}': InternalListener bootstrap extension is mandatory",
                    l.name
                ),
            ));
        }
        if !l.internal && !addresses.insert(l.address) {
            return Err(ConfigError::new(
                format!("{path}.address"),
                format!("another listener already uses {}", l.address),
            ));
        }
        #[allow(deprecated)] // `tracing`: deprecated in Envoy's protos, still read by 1.40
        if b.tracing.as_ref().is_some_and(|t| t.http.is_some()) {
            let traced = l
                .filter_chains
                .iter()
                .map(|(_, c)| c)
                .chain(l.default_filter_chain.iter())
                .flat_map(|c| c.filters.iter())
                .any(|f| {
                    matches!(f, NetworkFilter::HttpConnectionManager(h)
                        if h.tracing.is_some() && h.tracer.is_none())
                });
            if traced {
                return Err(ConfigError::new(
                    format!("{path}: an HTTP connection manager's tracing"),
                    "unsupported with the bootstrap's tracer: skiff runs a connection \
                     manager's own `provider` only",
                ));
            }
        }
        listeners.push(Arc::new(l));
    }
    Ok(Bootstrap {
        node,
        admin,
        listeners,
        udp_listeners,
        clusters,
        dynamic,
        overload,
        stats,
        xds_targets,
        runtime: runtime.layers,
        local_cluster,
        outlier_event_log: b
            .cluster_manager
            .as_ref()
            .and_then(|m| m.outlier_detection.as_ref())
            .map(|o| o.event_log_path.clone())
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from),
        internal_listener_buffer,
    })
}

/// Where an xDS stream through static cluster `c` connects: its first endpoint, a TCP address
/// or a Unix socket (`pipe`). A cluster whose endpoints are all Unix sockets is accepted for
/// xDS and SDS streams (as Istio's `xds-grpc` and `sds-grpc`); traffic routed to it finds no
/// host (docs/compatibility.md).
fn xds_target(
    c: &envoy_types::pb::envoy::config::cluster::v3::Cluster,
    path: &str,
) -> Result<Option<GrpcTarget>, ConfigError> {
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let Some(la) = &c.load_assignment else {
        return Ok(None);
    };
    let mut first = None;
    let mut pipes = 0;
    let mut all = 0;
    for (i, locality) in la.endpoints.iter().enumerate() {
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            all += 1;
            let epath =
                format!("{path}.load_assignment.endpoints[{i}].lb_endpoints[{j}].endpoint.address");
            let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                continue;
            };
            let Some(a) = &ep.address else { continue };
            let t = match &a.address {
                Some(core::address::Address::Pipe(p)) => {
                    pipes += 1;
                    if p.path.is_empty() {
                        return Err(ConfigError::new(format!("{epath}.pipe.path"), "required"));
                    }
                    GrpcTarget::Unix(p.path.clone().into())
                }
                Some(core::address::Address::SocketAddress(_)) => match socket_address(a, &epath) {
                    Ok(sa) => GrpcTarget::Tcp(sa),
                    Err(_) => continue,
                },
                _ => continue,
            };
            first.get_or_insert(t);
        }
    }
    if pipes > 0 && pipes != all {
        return Err(ConfigError::new(
            format!("{path}.load_assignment"),
            "a cluster's endpoints must be all Unix sockets (pipe) or none",
        ));
    }
    Ok(first)
}

/// An `ApiConfigSource` of `api_type` GRPC or DELTA_GRPC with one `envoy_grpc` service.
pub fn grpc_source(c: &core::ApiConfigSource, path: &str) -> Result<GrpcSource, ConfigError> {
    use core::api_config_source::ApiType;
    use core::grpc_service::TargetSpecifier;
    let delta = match ApiType::try_from(c.api_type) {
        Ok(ApiType::Grpc) => false,
        Ok(ApiType::DeltaGrpc) => true,
        Ok(ApiType::Rest) => return rest_source(c, path),
        _ => {
            return Err(ConfigError::new(
                format!("{path}.api_type"),
                "unsupported: only GRPC, DELTA_GRPC and REST",
            ))
        }
    };
    if c.transport_api_version != core::ApiVersion::V3 as i32
        && c.transport_api_version != core::ApiVersion::Auto as i32
    {
        return Err(ConfigError::new(
            format!("{path}.transport_api_version"),
            "only V3 is supported",
        ));
    }
    if !c.cluster_names.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.cluster_names"),
            "gRPC sources take grpc_services, not cluster_names",
        ));
    }
    let service = match c.grpc_services.as_slice() {
        [s] => s,
        [] => {
            return Err(ConfigError::new(
                format!("{path}.grpc_services"),
                "exactly one gRPC service is required",
            ))
        }
        _ => {
            return Err(ConfigError::new(
                format!("{path}.grpc_services"),
                "only one gRPC service is supported (Envoy uses the first)",
            ))
        }
    };
    let spath = format!("{path}.grpc_services[0]");
    // A per-call deadline: xDS streams have none in skiff.
    if service.timeout.is_some() {
        return Err(ConfigError::unsupported(format!("{spath}.timeout")));
    }
    let mut google = None;
    let (cluster, authority) = match &service.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(e)) => {
            if e.cluster_name.is_empty() {
                return Err(ConfigError::new(
                    format!("{spath}.envoy_grpc.cluster_name"),
                    "required",
                ));
            }
            let authority = if e.authority.is_empty() {
                e.cluster_name.clone()
            } else {
                e.authority.clone()
            };
            (e.cluster_name.clone(), authority)
        }
        Some(TargetSpecifier::GoogleGrpc(g)) => {
            let (g, authority) = google_grpc::google_grpc(g, &format!("{spath}.google_grpc"))?;
            google = Some(Box::new(g));
            (String::new(), authority)
        }
        None => return Err(ConfigError::new(format!("{spath}.envoy_grpc"), "required")),
    };
    let initial_metadata = service
        .initial_metadata
        .iter()
        .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
        .collect();
    Ok(GrpcSource {
        delta,
        cluster,
        authority,
        node_on_first_message_only: c.set_node_on_first_message_only,
        initial_metadata,
        rest: None,
        rate_limit: xds_rate_limit(c, path)?,
        google,
    })
}

/// `rate_limit_settings`, with Envoy's defaults (100 tokens, 10 a second) and its check of
/// `fill_rate`.
fn xds_rate_limit(
    c: &core::ApiConfigSource,
    path: &str,
) -> Result<Option<crate::model::XdsRateLimit>, ConfigError> {
    let Some(r) = &c.rate_limit_settings else {
        return Ok(None);
    };
    let path = format!("{path}.rate_limit_settings");
    let max_tokens = r.max_tokens.map_or(100, |v| v.value);
    if max_tokens == 0 {
        return Err(ConfigError::new(
            format!("{path}.max_tokens"),
            "must be at least 1: an empty bucket would never let a request out",
        ));
    }
    let fill_rate = r.fill_rate.map_or(10.0, |v| v.value);
    if fill_rate.is_nan() || fill_rate <= 0.0 {
        return Err(ConfigError::new(
            format!("{path}.fill_rate"),
            "value must be greater than 0",
        ));
    }
    // Envoy takes the default for a rate it cannot use (subnormal or infinite).
    let fill_rate = if fill_rate.is_normal() {
        fill_rate
    } else {
        10.0
    };
    let year = Duration::from_secs(365 * 24 * 3600);
    let refill = Duration::try_from_secs_f64(1.0 / fill_rate).map_or(year, |d| d.min(year));
    Ok(Some(crate::model::XdsRateLimit { max_tokens, refill }))
}

/// An `ApiConfigSource` of `api_type` REST: one cluster in `cluster_names`, `refresh_delay`
/// required (Envoy's words when it is missing), `request_timeout` 1 s by default.
fn rest_source(c: &core::ApiConfigSource, path: &str) -> Result<GrpcSource, ConfigError> {
    if !c.grpc_services.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.grpc_services"),
            "must be empty for REST (the server is the cluster in cluster_names)",
        ));
    }
    let cluster = match c.cluster_names.as_slice() {
        [one] if !one.is_empty() => one.clone(),
        _ => {
            return Err(ConfigError::new(
                format!("{path}.cluster_names"),
                "exactly one cluster name is required for REST",
            ))
        }
    };
    let refresh_delay = match &c.refresh_delay {
        Some(d) => duration(d, &format!("{path}.refresh_delay"))?,
        None => {
            return Err(ConfigError::new(
                format!("{path}.refresh_delay"),
                "refresh_delay is required for REST API configuration sources",
            ))
        }
    };
    if refresh_delay.is_zero() {
        return Err(ConfigError::new(
            format!("{path}.refresh_delay"),
            "must be greater than zero",
        ));
    }
    let request_timeout = match &c.request_timeout {
        Some(d) => duration(d, &format!("{path}.request_timeout"))?,
        None => Duration::from_secs(1),
    };
    Ok(GrpcSource {
        delta: false,
        authority: cluster.clone(),
        cluster,
        node_on_first_message_only: false,
        initial_metadata: Vec::new(),
        // Envoy's REST subscriptions do not read `rate_limit_settings` either.
        rate_limit: None,
        google: None,
        rest: Some(crate::model::RestPolling {
            refresh_delay,
            request_timeout,
        }),
    })
}

/// `static_resources.secrets` by name.
pub(super) fn static_secrets(
    all: &[envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret],
) -> Result<Secrets, ConfigError> {
    let mut out = Secrets::new();
    for (i, s) in all.iter().enumerate() {
        fields::secret(s, &format!("static_resources.secrets[{i}]"))?;
        if s.name.is_empty() {
            return Err(ConfigError::new(
                format!("static_resources.secrets[{i}].name"),
                "required",
            ));
        }
        if out.insert(s.name.clone(), s.clone()).is_some() {
            return Err(ConfigError::new(
                format!("static_resources.secrets[{i}].name"),
                format!("duplicate secret '{}'", s.name),
            ));
        }
    }
    Ok(out)
}

/// A `ConfigSource`: a file (`path_config_source`, or the legacy `path`), `ads`, or an
/// `api_config_source` of gRPC.
pub fn config_source(c: &core::ConfigSource, path: &str) -> Result<ConfigSource, ConfigError> {
    use core::config_source::ConfigSourceSpecifier as Spec;
    // AUTO means V3 in Envoy 1.40.
    if c.resource_api_version != core::ApiVersion::V3 as i32
        && c.resource_api_version != core::ApiVersion::Auto as i32
    {
        return Err(ConfigError::new(
            format!("{path}.resource_api_version"),
            "only V3 resources are supported",
        ));
    }
    let initial_fetch_timeout = match &c.initial_fetch_timeout {
        Some(d) => {
            let d = duration(d, &format!("{path}.initial_fetch_timeout"))?;
            (!d.is_zero()).then_some(d)
        }
        None => Some(Duration::from_secs(15)),
    };
    #[allow(deprecated)]
    let (file, watched_directory) = match &c.config_source_specifier {
        Some(Spec::Path(p)) => (p.clone(), None),
        Some(Spec::PathConfigSource(p)) => (
            p.path.clone(),
            p.watched_directory.as_ref().map(|w| w.path.clone()),
        ),
        Some(Spec::ApiConfigSource(a)) => {
            return Ok(ConfigSource {
                kind: SourceKind::Grpc(grpc_source(a, &format!("{path}.api_config_source"))?),
                initial_fetch_timeout,
            })
        }
        Some(Spec::Ads(_)) => {
            return Ok(ConfigSource {
                kind: SourceKind::Ads,
                initial_fetch_timeout,
            })
        }
        Some(Spec::Self_(_)) => return Err(ConfigError::unsupported(format!("{path}.self"))),
        None => {
            return Err(ConfigError::new(
                path,
                "a config source is required (path_config_source, ads or api_config_source)",
            ))
        }
    };
    if file.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.path_config_source.path"),
            "required",
        ));
    }
    if watched_directory.as_deref() == Some("") {
        return Err(ConfigError::new(
            format!("{path}.path_config_source.watched_directory.path"),
            "required",
        ));
    }
    Ok(ConfigSource {
        kind: SourceKind::File {
            path: file.into(),
            watched_directory: watched_directory.map(Into::into),
        },
        initial_fetch_timeout,
    })
}

/// A cluster's `Http1ProtocolOptions`: the case of the names it writes, and `enable_trailers`.
/// `allow_chunked_length` would also take upstream responses with both framings, which skiff
/// refuses (502).
pub(super) fn upstream_http1(
    o: &core::Http1ProtocolOptions,
    path: &str,
) -> Result<(HeaderCase, bool), ConfigError> {
    if o.allow_chunked_length {
        return Err(ConfigError::unsupported(format!(
            "{path}.allow_chunked_length"
        )));
    }
    // The connection manager's (requests skiff receives), not a cluster's.
    if !o.ignore_http_11_upgrade.is_empty() {
        return Err(ConfigError::unsupported(format!(
            "{path}.ignore_http_11_upgrade"
        )));
    }
    Ok((header_case(o, path)?, o.enable_trailers))
}

/// `Http1ProtocolOptions.header_key_format`.
pub(super) fn header_case(
    o: &core::Http1ProtocolOptions,
    path: &str,
) -> Result<HeaderCase, ConfigError> {
    use core::http1_protocol_options::header_key_format::HeaderFormat;
    let Some(f) = o
        .header_key_format
        .as_ref()
        .and_then(|f| f.header_format.as_ref())
    else {
        return Ok(HeaderCase::Lower);
    };
    match f {
        HeaderFormat::ProperCaseWords(_) => Ok(HeaderCase::ProperCase),
        HeaderFormat::StatefulFormatter(ext) => {
            let tpath = format!("{path}.header_key_format.stateful_formatter.typed_config");
            let any = ext
                .typed_config
                .as_ref()
                .ok_or_else(|| ConfigError::new(tpath.clone(), "required"))?;
            match super::proto::type_name(&any.type_url) {
                "envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig" => {
                    Ok(HeaderCase::Preserve)
                }
                other => Err(ConfigError::new(
                    tpath,
                    format!("unsupported header formatter '{other}'"),
                )),
            }
        }
    }
}

pub(super) fn required<'a, T>(v: &'a Option<T>, path: &str) -> Result<&'a T, ConfigError> {
    v.as_ref().ok_or_else(|| ConfigError::new(path, "required"))
}

pub(super) fn duration(d: &PbDuration, path: &str) -> Result<Duration, ConfigError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ConfigError::new(path, "must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

pub(super) fn socket_address(a: &core::Address, path: &str) -> Result<SocketAddr, ConfigError> {
    let (addr, ipv4_compat) = bind_address(a, path)?;
    if ipv4_compat {
        return Err(ConfigError::unsupported(format!(
            "{path}.socket_address.ipv4_compat"
        )));
    }
    Ok(addr)
}

/// A listener's address, and its `ipv4_compat` (an IPv6 socket that takes IPv4 connections
/// too).
fn bind_address(a: &core::Address, path: &str) -> Result<(SocketAddr, bool), ConfigError> {
    let sa = match &a.address {
        Some(core::address::Address::SocketAddress(sa)) => sa,
        Some(_) => return Err(ConfigError::new(path, "only socket_address is supported")),
        None => return Err(ConfigError::new(path, "required")),
    };
    let path = format!("{path}.socket_address");
    if sa.protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err(ConfigError::new(
            format!("{path}.protocol"),
            "unsupported: only TCP",
        ));
    }
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        ConfigError::new(
            format!("{path}.address"),
            format!(
                "'{}' is not an IP address (hostnames need a DNS cluster type)",
                sa.address
            ),
        )
    })?;
    let port = match sa.port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(p)) if p <= 65535 => p as u16,
        Some(core::socket_address::PortSpecifier::PortValue(p)) => {
            return Err(ConfigError::invalid(
                format!("{path}.port_value"),
                format!("{p} is not a port"),
            ))
        }
        _ => return Err(ConfigError::new(format!("{path}.port_value"), "required")),
    };
    Ok((SocketAddr::new(ip, port), sa.ipv4_compat))
}

/// Envoy's listener stat scope for an address: `127.0.0.1_10000`, `[__1]_10000`.
pub fn listener_stat_prefix(addr: &SocketAddr) -> String {
    addr.to_string().replace(':', "_")
}

/// `internal_listener`: whether the listener is one, and if so that it sets nothing an
/// internal listener cannot have (Envoy's checks and words).
fn internal_listener(l: &listener::Listener, path: &str) -> Result<bool, ConfigError> {
    use listener::listener::ListenerSpecifier;
    let Some(ListenerSpecifier::InternalListener(_)) = &l.listener_specifier else {
        return Ok(false);
    };
    let adding = format!("error adding listener '{}'", l.name);
    if l.address.is_some() || !l.additional_addresses.is_empty() {
        let field = if l.address.is_some() {
            "address"
        } else {
            "additional_addresses"
        };
        return Err(ConfigError::new(
            format!("{path}.{field}"),
            format!(
                "{adding}: address should not be used when an internal listener config is provided"
            ),
        ));
    }
    let named = format!("error adding listener named '{}'", l.name);
    if !l.socket_options.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.socket_options"),
            format!("{named}: does not support socket option"),
        ));
    }
    let tcp_only = [
        ("transparent", l.transparent.is_some()),
        ("freebind", l.freebind.is_some()),
        (
            "tcp_fast_open_queue_length",
            l.tcp_fast_open_queue_length.is_some(),
        ),
        ("tcp_backlog_size", l.tcp_backlog_size.is_some()),
        ("enable_reuse_port", l.enable_reuse_port.is_some()),
        (
            "connection_balance_config",
            l.connection_balance_config.is_some(),
        ),
    ];
    if let Some((field, _)) = tcp_only.iter().find(|(_, set)| *set) {
        return Err(ConfigError::new(
            format!("{path}.{field}"),
            format!("{named}: has unsupported tcp listener feature"),
        ));
    }
    for (i, fc) in l
        .filter_chains
        .iter()
        .chain(l.default_filter_chain.iter())
        .enumerate()
    {
        if fc.transport_socket.is_some() {
            let chain = if i < l.filter_chains.len() {
                format!("filter_chains[{i}]")
            } else {
                "default_filter_chain".to_string()
            };
            return Err(ConfigError::new(
                format!("{path}.{chain}.transport_socket"),
                "unsupported on an internal listener: its connections are plain",
            ));
        }
    }
    Ok(true)
}

fn translate_listener(
    l: &listener::Listener,
    path: &str,
    clusters: &HashSet<String>,
    secrets: &Secrets,
) -> Result<Listener, ConfigError> {
    fields::listener(l, path)?;
    if l.udp_listener_config.is_some() {
        return Err(ConfigError::unsupported(format!(
            "{path}.udp_listener_config"
        )));
    }
    let direction = core::TrafficDirection::try_from(l.traffic_direction)
        .unwrap_or(core::TrafficDirection::Unspecified);
    let internal = internal_listener(l, path)?;
    // The IPv6 addresses whose sockets take IPv4 connections too (`ipv4_compat`).
    let mut dual_stack = Vec::new();
    let address = if internal {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        if let Some(core::address::Address::EnvoyInternalAddress(_)) =
            l.address.as_ref().and_then(|a| a.address.as_ref())
        {
            return Err(ConfigError::new(
                format!("{path}.address"),
                format!(
                    "error adding listener named '{}': use internal_listener field instead of address for internal listeners",
                    l.name
                ),
            ));
        }
        let (addr, compat) = bind_address(
            required(&l.address, &format!("{path}.address"))?,
            &format!("{path}.address"),
        )?;
        if compat && addr.is_ipv6() {
            dual_stack.push(addr);
        }
        addr
    };
    let mut additional_addresses = Vec::new();
    let mut address_socket_options = Vec::new();
    for (i, a) in l.additional_addresses.iter().enumerate() {
        let apath = format!("{path}.additional_addresses[{i}]");
        let (addr, compat) = bind_address(
            required(&a.address, &format!("{apath}.address"))?,
            &format!("{apath}.address"),
        )?;
        if compat && addr.is_ipv6() {
            dual_stack.push(addr);
        }
        if let Some(o) = &a.socket_options {
            let opath = format!("{apath}.socket_options.socket_options");
            address_socket_options.push((addr, socket_options(&o.socket_options, &opath, addr)?));
        }
        if addr == address || additional_addresses.contains(&addr) {
            return Err(ConfigError::new(
                format!("{apath}.address"),
                format!("{addr} is already an address of this listener"),
            ));
        }
        additional_addresses.push(addr);
    }
    if l.enable_reuse_port.as_ref().map(|v| v.value) == Some(false) {
        return Err(ConfigError::new(
            format!("{path}.enable_reuse_port"),
            "unsupported: false (each worker owns its own SO_REUSEPORT socket)",
        ));
    }
    let stat_prefix = if l.stat_prefix.is_empty() && internal {
        format!("envoy_internal_{}", l.name)
    } else if l.stat_prefix.is_empty() {
        listener_stat_prefix(&address)
    } else {
        l.stat_prefix.clone()
    };
    let mut filter_chains: Vec<(FilterChainMatch, Arc<FilterChain>)> = Vec::new();
    let empty = listener::FilterChainMatch::default();
    // With a matcher, the chains' own matches are ignored and their names must be unique.
    let by_matcher = l.filter_chain_matcher.is_some();
    for (i, fc) in l.filter_chains.iter().enumerate() {
        let fpath = format!("{path}.filter_chains[{i}]");
        if by_matcher {
            if fc.name.is_empty() {
                return Err(ConfigError::new(
                    format!("{fpath}.name"),
                    "\"name\" field is required when using a listener matcher",
                ));
            }
            if l.filter_chains[..i].iter().any(|o| o.name == fc.name) {
                return Err(ConfigError::new(
                    format!("{fpath}.name"),
                    format!("\"name\" field is duplicated with value '{}'", fc.name),
                ));
            }
            filter_chains.push((
                FilterChainMatch::default(),
                Arc::new(translate_chain(fc, &fpath, clusters, secrets, direction)?),
            ));
            continue;
        }
        let raw = fc.filter_chain_match.as_ref().unwrap_or(&empty);
        let m = chain_match(raw, &format!("{fpath}.filter_chain_match"))?;
        // Envoy compares the matches as written; equal-but-differently-written ones are caught
        // below as overlapping.
        let twin = l.filter_chains[..i]
            .iter()
            .find(|other| other.filter_chain_match.as_ref().unwrap_or(&empty) == raw);
        if let Some(other) = twin {
            return Err(ConfigError::new(
                format!("{fpath}.filter_chain_match"),
                format!(
                    "filter chain '{}' has the same matching rules defined as '{}'",
                    fc.name, other.name
                ),
            ));
        }
        filter_chains.push((
            m,
            Arc::new(translate_chain(fc, &fpath, clusters, secrets, direction)?),
        ));
    }
    let filter_chain_matcher = l
        .filter_chain_matcher
        .as_ref()
        .map(|m| {
            let names: Vec<&str> = l.filter_chains.iter().map(|c| c.name.as_str()).collect();
            matcher::matcher(
                m,
                &format!("{path}.filter_chain_matcher"),
                matcher::Domain::Network,
                &|a, apath| chain_name_action(a, apath, &names),
            )
        })
        .transpose()?;
    if !by_matcher {
        // The runtime builds the table it serves with; here only whether it builds.
        let matches: Vec<&FilterChainMatch> = filter_chains.iter().map(|(m, _)| m).collect();
        crate::filter_chain_match::ChainTable::new(&matches).map_err(|o| {
            ConfigError::new(
                format!("{path}.filter_chains[{}].filter_chain_match", o.chain),
                "multiple filter chains with overlapping matching rules are defined",
            )
        })?;
    }
    let default_filter_chain = match &l.default_filter_chain {
        Some(fc) => Some(Arc::new(translate_chain(
            fc,
            &format!("{path}.default_filter_chain"),
            clusters,
            secrets,
            direction,
        )?)),
        None => None,
    };
    let use_original_dst = l.use_original_dst.as_ref().is_some_and(|v| v.value);
    let lf = listener_filters::translate(&l.listener_filters, use_original_dst, path)?;
    let listener_filters_timeout = match &l.listener_filters_timeout {
        Some(d) => {
            let d = duration(d, &format!("{path}.listener_filters_timeout"))?;
            (!d.is_zero()).then_some(d)
        }
        None => Some(Duration::from_secs(15)),
    };
    let (original_src, original_src_path) = match lf.original_src {
        Some((o, p)) => (Some(o), p),
        None => (None, String::new()),
    };
    if original_src.is_some() {
        let chains = filter_chains
            .iter()
            .map(|c| &c.1)
            .chain(default_filter_chain.iter());
        let http = chains
            .flat_map(|fc| fc.filters.iter())
            .any(|f| matches!(f, NetworkFilter::HttpConnectionManager(_)));
        // One client connection may need several pooled upstream connections, which cannot
        // all have its port.
        if http && original_src.as_ref().is_some_and(|o| o.bind_port) {
            return Err(ConfigError::new(
                format!("{original_src_path}.typed_config.bind_port"),
                "unsupported with http_connection_manager (upstream connections come from the \
                 client's address with a port of the kernel's choosing)",
            ));
        }
    }
    if filter_chains.is_empty() && default_filter_chain.is_none() {
        return Err(ConfigError::new(
            format!("{path}.filter_chains"),
            "a listener needs at least one filter chain",
        ));
    }
    let access_logs = l
        .access_log
        .iter()
        .enumerate()
        .map(|(i, a)| translate_access_log(a, &format!("{path}.access_log[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Listener {
        metadata: Arc::new(
            l.metadata
                .as_ref()
                .map(crate::metadata::Metadata::from_pb)
                .unwrap_or_default(),
        ),
        access_logs,
        name: if l.name.is_empty() {
            address.to_string()
        } else {
            l.name.clone()
        },
        address,
        additional_addresses,
        stat_prefix,
        filter_chains,
        default_filter_chain,
        filter_chain_matcher,
        use_original_dst,
        bind_to_port: !internal && l.bind_to_port.as_ref().is_none_or(|v| v.value),
        listener_filters: lf.filters,
        listener_filters_disabled: lf.disabled,
        listener_filters_timeout,
        continue_on_listener_filters_timeout: l.continue_on_listener_filters_timeout,
        original_src,
        transparent: l.transparent.as_ref().is_some_and(|v| v.value),
        freebind: l.freebind.as_ref().is_some_and(|v| v.value),
        drain_type: match listener::listener::DrainType::try_from(l.drain_type) {
            Ok(listener::listener::DrainType::Default) => DrainType::Default,
            Ok(listener::listener::DrainType::ModifyOnly) => DrainType::ModifyOnly,
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{path}.drain_type"),
                    format!("{} is not a drain type", l.drain_type),
                ))
            }
        },
        inbound: l.traffic_direction == core::TrafficDirection::Inbound as i32,
        socket_options: socket_options(
            &l.socket_options,
            &format!("{path}.socket_options"),
            address,
        )?,
        address_socket_options,
        tcp_fast_open_queue_length: l.tcp_fast_open_queue_length.as_ref().map(|v| v.value),
        ignore_global_conn_limit: l.ignore_global_conn_limit,
        bypass_overload_manager: l.bypass_overload_manager,
        internal,
        dual_stack,
        accept_batch: match &l.max_connections_to_accept_per_socket_event {
            Some(v) if v.value == 0 => {
                return Err(ConfigError::new(
                    format!("{path}.max_connections_to_accept_per_socket_event"),
                    "value must be greater than 0",
                ))
            }
            Some(v) => Some(v.value),
            None => None,
        },
        buffer_limit: l
            .per_connection_buffer_limit_bytes
            .as_ref()
            .map_or(DEFAULT_BUFFER_LIMIT, |v| v.value as usize),
    })
}

/// `socket_options`, keeping those that apply to a TCP socket of `address`'s family.
fn socket_options(
    all: &[core::SocketOption],
    path: &str,
    address: SocketAddr,
) -> Result<Vec<SocketOption>, ConfigError> {
    use core::socket_option::{SocketIpVersion, SocketState as Pb, Value};
    let mut out = Vec::new();
    for (i, o) in all.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let stream_only_datagram = o
            .r#type
            .as_ref()
            .is_some_and(|t| t.stream.is_none() && t.datagram.is_some());
        let family = SocketIpVersion::try_from(o.ip_version)
            .map_err(|_| ConfigError::new(format!("{p}.ip_version"), "unknown IP version"))?;
        let other_family = match family {
            SocketIpVersion::Unspecified => false,
            SocketIpVersion::Ipv4 => !address.is_ipv4(),
            SocketIpVersion::Ipv6 => !address.is_ipv6(),
        };
        let (Ok(level), Ok(name)) = (i32::try_from(o.level), i32::try_from(o.name)) else {
            return Err(ConfigError::new(&p, "level and name must fit a C int"));
        };
        let value = match &o.value {
            Some(Value::IntValue(v)) => SocketOptionValue::Int(
                i32::try_from(*v)
                    .map_err(|_| ConfigError::new(format!("{p}.int_value"), "must fit a C int"))?,
            ),
            Some(Value::BufValue(b)) => SocketOptionValue::Bytes(b.clone()),
            None => {
                return Err(ConfigError::new(
                    &p,
                    "a value (int_value or buf_value) is required",
                ))
            }
        };
        let state = match Pb::try_from(o.state) {
            Ok(Pb::StatePrebind) => SocketState::PreBind,
            Ok(Pb::StateBound) => SocketState::Bound,
            Ok(Pb::StateListening) => SocketState::Listening,
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{p}.state"),
                    "unknown socket state",
                ))
            }
        };
        if !stream_only_datagram && !other_family {
            out.push(SocketOption {
                level,
                name,
                value,
                state,
            });
        }
    }
    Ok(out)
}

/// The `typed_config` of a filter whose configuration is the `typed_config | config_discovery`
/// oneof (network, listener and HTTP filters each have their own generated enum for it).
pub(super) fn typed_config<'a>(
    typed: Option<&'a Any>,
    is_set: bool,
    path: &str,
) -> Result<&'a Any, ConfigError> {
    match typed {
        Some(any) => Ok(any),
        None if is_set => Err(ConfigError::unsupported(format!("{path}.config_discovery"))),
        None => Err(ConfigError::new(format!("{path}.typed_config"), "required")),
    }
}

/// `filter_chain_match`, canonical (sorted lists, lower-case names) so equal matches compare
/// equal.
fn chain_match(
    m: &listener::FilterChainMatch,
    path: &str,
) -> Result<FilterChainMatch, ConfigError> {
    fields::filter_chain_match(m, path)?;
    let destination_port = match &m.destination_port {
        Some(p) if p.value >= 1 && p.value <= 65535 => Some(p.value as u16),
        Some(p) => {
            return Err(ConfigError::new(
                format!("{path}.destination_port"),
                format!("value must be inside range [1, 65535], got {}", p.value),
            ))
        }
        None => None,
    };
    let mut server_names = Vec::new();
    for (i, n) in m.server_names.iter().enumerate() {
        let name = n.to_ascii_lowercase();
        let wildcard = name.starts_with("*.");
        if name.is_empty() || (name.contains('*') && (!wildcard || name[1..].contains('*'))) {
            return Err(ConfigError::new(
                format!("{path}.server_names[{i}]"),
                format!("partial wildcards are not supported in \"server_names\": '{n}'"),
            ));
        }
        server_names.push(name);
    }
    server_names.sort();
    server_names.dedup();
    let mut application_protocols = m.application_protocols.clone();
    application_protocols.sort();
    application_protocols.dedup();
    use listener::filter_chain_match::ConnectionSourceType as Pb;
    let source_type = match Pb::try_from(m.source_type) {
        Ok(Pb::Any) => SourceType::Any,
        Ok(Pb::SameIpOrLoopback) => SourceType::SameIpOrLoopback,
        Ok(Pb::External) => SourceType::External,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.source_type"),
                format!("{} is not a source type", m.source_type),
            ))
        }
    };
    let mut source_ports = Vec::new();
    for (i, p) in m.source_ports.iter().enumerate() {
        match u16::try_from(*p) {
            Ok(p) if p > 0 => source_ports.push(p),
            _ => {
                return Err(ConfigError::new(
                    format!("{path}.source_ports[{i}]"),
                    format!("value must be inside range [1, 65535], got {p}"),
                ))
            }
        }
    }
    source_ports.sort();
    source_ports.dedup();
    Ok(FilterChainMatch {
        destination_port,
        prefix_ranges: cidr_ranges(&m.prefix_ranges, &format!("{path}.prefix_ranges"))?,
        server_names,
        transport_protocol: m.transport_protocol.clone(),
        application_protocols,
        direct_source_prefix_ranges: cidr_ranges(
            &m.direct_source_prefix_ranges,
            &format!("{path}.direct_source_prefix_ranges"),
        )?,
        source_type,
        source_prefix_ranges: cidr_ranges(
            &m.source_prefix_ranges,
            &format!("{path}.source_prefix_ranges"),
        )?,
        source_ports,
    })
}

/// A filter's, tracer's or logger's `grpc_service` at `path` that names a cluster
/// (`envoy_grpc`): the cluster, the authority its calls carry (`envoy_grpc.authority`, else the
/// cluster's name) and the headers they add (`initial_metadata`). Retry policies are refused;
/// the caller decides on `timeout`.
pub(super) fn envoy_grpc(
    g: &core::GrpcService,
    path: &str,
) -> Result<(String, String, crate::model::GrpcMetadata), ConfigError> {
    use core::grpc_service::TargetSpecifier;
    let e = match &g.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(e)) => e,
        Some(TargetSpecifier::GoogleGrpc(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.google_grpc")))
        }
        None => return Err(ConfigError::new(format!("{path}.envoy_grpc"), "required")),
    };
    if e.cluster_name.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.envoy_grpc.cluster_name"),
            "value length must be at least 1 characters",
        ));
    }
    for (set, field) in [
        (e.retry_policy.is_some(), "envoy_grpc.retry_policy"),
        (g.retry_policy.is_some(), "retry_policy"),
    ] {
        if set {
            return Err(ConfigError::unsupported(format!("{path}.{field}")));
        }
    }
    let authority = if e.authority.is_empty() {
        e.cluster_name.clone()
    } else {
        e.authority.clone()
    };
    let mut metadata = Vec::with_capacity(g.initial_metadata.len());
    for (i, h) in g.initial_metadata.iter().enumerate() {
        let hpath = format!("{path}.initial_metadata[{i}]");
        let name = http::HeaderName::from_bytes(h.key.as_bytes())
            .map_err(|_| ConfigError::new(format!("{hpath}.key"), "not a valid header name"))?;
        let raw = if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            h.raw_value.as_slice()
        };
        let value = http::HeaderValue::from_bytes(raw)
            .map_err(|_| ConfigError::new(format!("{hpath}.value"), "not a valid header value"))?;
        metadata.push((name, value));
    }
    Ok((e.cluster_name.clone(), authority, metadata))
}

/// A listener matcher's action: a `google.protobuf.StringValue` naming a filter chain; the
/// chain's index, or `None` when no chain has the name (the connection then has no chain).
fn chain_name_action(
    a: &envoy_types::pb::xds::core::v3::TypedExtensionConfig,
    path: &str,
    names: &[&str],
) -> Result<Option<usize>, ConfigError> {
    let tpath = format!("{path}.typed_config");
    let any = a
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
    if type_name(&any.type_url) != "google.protobuf.StringValue" {
        return Err(ConfigError::new(
            tpath,
            format!(
                "the action of a listener's matcher is a filter chain's name (google.protobuf.StringValue), not {}",
                any.type_url
            ),
        ));
    }
    let name: envoy_types::pb::google::protobuf::StringValue = unpack(any, &tpath)?;
    Ok(names.iter().position(|n| *n == name.value))
}

/// CIDR ranges with the host bits cleared, sorted and without duplicates.
pub(super) fn cidr_ranges(
    ranges: &[core::CidrRange],
    path: &str,
) -> Result<Vec<CidrRange>, ConfigError> {
    let mut out = Vec::new();
    for (i, r) in ranges.iter().enumerate() {
        let rpath = format!("{path}[{i}]");
        let address: IpAddr = r.address_prefix.parse().map_err(|_| {
            ConfigError::new(
                format!("{rpath}.address_prefix"),
                format!("malformed IP address: {}", r.address_prefix),
            )
        })?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let len = r.prefix_len.as_ref().map_or(0, |v| v.value);
        if len > max {
            return Err(ConfigError::new(
                format!("{rpath}.prefix_len"),
                format!("{len} is longer than the address ({max} bits)"),
            ));
        }
        // An IPv4-mapped IPv6 range is the IPv4 range it maps.
        let (address, len) = match address.to_canonical() {
            IpAddr::V4(a) if max == 128 => (IpAddr::V4(a), len.saturating_sub(96)),
            other => (other, len),
        };
        let address = match address {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - len.min(32)).unwrap_or(0);
                IpAddr::from((u32::from(a) & mask).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - len.min(128)).unwrap_or(0);
                IpAddr::from((u128::from(a) & mask).to_be_bytes())
            }
        };
        let prefix_len = len as u8;
        out.push(CidrRange {
            address,
            prefix_len,
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn translate_chain(
    fc: &listener::FilterChain,
    path: &str,
    clusters: &HashSet<String>,
    secrets: &Secrets,
    direction: core::TrafficDirection,
) -> Result<FilterChain, ConfigError> {
    fields::filter_chain(fc, path)?;
    let mut filters = Vec::new();
    for (i, f) in fc.filters.iter().enumerate() {
        let fpath = format!("{path}.filters[{i}]");
        let typed = match &f.config_type {
            Some(listener::filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let any = typed_config(typed, f.config_type.is_some(), &fpath)?;
        let tpath = format!("{fpath}.typed_config");
        let filter = match type_name(&any.type_url) {
            HCM_TYPE => NetworkFilter::HttpConnectionManager(Arc::new(translate_hcm(
                &unpack(any, &tpath)?,
                &tpath,
                clusters,
                direction,
            )?)),
            TCP_PROXY_TYPE => NetworkFilter::TcpProxy(Arc::new(translate_tcp_proxy(
                &unpack(any, &tpath)?,
                &tpath,
            )?)),
            LOCAL_RATELIMIT_TYPE => NetworkFilter::LocalRateLimit(Arc::new(
                translate_local_ratelimit(&unpack(any, &tpath)?, &tpath)?,
            )),
            CONNECTION_LIMIT_TYPE => NetworkFilter::ConnectionLimit(Arc::new(
                translate_connection_limit(&unpack(any, &tpath)?, &tpath)?,
            )),
            "envoy.extensions.filters.network.ratelimit.v3.RateLimit" => NetworkFilter::RateLimit(
                Arc::new(ratelimit::network(&unpack(any, &tpath)?, &tpath)?),
            ),
            "envoy.extensions.filters.network.rbac.v3.RBAC" => {
                NetworkFilter::Rbac(Arc::new(rbac::network(&unpack(any, &tpath)?, &tpath)?))
            }
            "envoy.extensions.filters.network.set_filter_state.v3.Config" => {
                NetworkFilter::SetFilterState(Arc::new(filter_state::network(
                    &unpack(any, &tpath)?,
                    &tpath,
                )?))
            }
            crate::istio::AUTHN => {
                let _: crate::istio::AuthnConfig = unpack(any, &tpath)?;
                NetworkFilter::IstioAuthn
            }
            // Istio's metadata exchange and stats: no effect in skiff (docs/compatibility.md).
            crate::istio::METADATA_EXCHANGE => {
                istio::metadata_exchange(&unpack(any, &tpath)?, &tpath)?;
                continue;
            }
            crate::istio::STATS => {
                istio::without_effect("istio.stats");
                continue;
            }
            other => {
                return Err(ConfigError::new(
                    tpath,
                    format!("unsupported network filter '{}' ({other})", f.name),
                ))
            }
        };
        let last = i + 1 == fc.filters.len();
        let terminal = !matches!(
            filter,
            NetworkFilter::LocalRateLimit(_)
                | NetworkFilter::ConnectionLimit(_)
                | NetworkFilter::RateLimit(_)
                | NetworkFilter::Rbac(_)
                | NetworkFilter::SetFilterState(_)
                | NetworkFilter::IstioAuthn
        );
        if terminal && !last {
            return Err(ConfigError::new(
                fpath,
                format!(
                    "'{}' is a terminal filter and must be last in the chain",
                    f.name
                ),
            ));
        }
        if !terminal && last {
            return Err(ConfigError::new(
                fpath,
                format!(
                    "'{}' is not a terminal filter: the chain needs tcp_proxy or \
                     http_connection_manager after it",
                    f.name
                ),
            ));
        }
        filters.push(filter);
    }
    let tls = match &fc.transport_socket {
        Some(ts) => tls::downstream(ts, &format!("{path}.transport_socket"), secrets)?,
        None => None,
    };
    let handshake_timeout = match &fc.transport_socket_connect_timeout {
        Some(d) => {
            let d = duration(d, &format!("{path}.transport_socket_connect_timeout"))?;
            (!d.is_zero()).then_some(d)
        }
        None => None,
    };
    Ok(FilterChain {
        name: fc.name.clone(),
        filters,
        tls,
        handshake_timeout,
    })
}

fn translate_connection_limit(
    c: &connection_limit::ConnectionLimit,
    path: &str,
) -> Result<ConnectionLimit, ConfigError> {
    if c.stat_prefix.is_empty() {
        return Err(ConfigError::new(format!("{path}.stat_prefix"), "required"));
    }
    let max_connections = match &c.max_connections {
        Some(v) if v.value >= 1 => v.value,
        Some(_) => {
            return Err(ConfigError::new(
                format!("{path}.max_connections"),
                "value must be greater than or equal to 1",
            ))
        }
        None => {
            return Err(ConfigError::new(
                format!("{path}.max_connections"),
                "required",
            ))
        }
    };
    let delay = c
        .delay
        .as_ref()
        .map(|d| duration(d, &format!("{path}.delay")))
        .transpose()?
        .filter(|d| d.as_millis() > 0);
    let (on, enabled) = match &c.runtime_enabled {
        None => (true, None),
        Some(f) => (
            f.default_value.as_ref().is_none_or(|v| v.value),
            compressor::enabled(Some(f), true).1,
        ),
    };
    Ok(ConnectionLimit {
        stat_prefix: c.stat_prefix.clone(),
        max_connections,
        delay,
        enabled,
        on,
    })
}

fn translate_local_ratelimit(
    l: &local_ratelimit::LocalRateLimit,
    path: &str,
) -> Result<LocalRateLimit, ConfigError> {
    if l.stat_prefix.is_empty() {
        return Err(ConfigError::new(format!("{path}.stat_prefix"), "required"));
    }
    let bpath = format!("{path}.token_bucket");
    let b = required(&l.token_bucket, &bpath)?;
    if b.max_tokens == 0 {
        return Err(ConfigError::new(
            format!("{bpath}.max_tokens"),
            "value must be greater than 0",
        ));
    }
    let tokens_per_fill = b.tokens_per_fill.as_ref().map_or(1, |v| v.value);
    if tokens_per_fill == 0 {
        return Err(ConfigError::new(
            format!("{bpath}.tokens_per_fill"),
            "value must be greater than 0",
        ));
    }
    let ipath = format!("{bpath}.fill_interval");
    let fill_interval = duration(required(&b.fill_interval, &ipath)?, &ipath)?;
    // Envoy's own floor for this filter.
    if fill_interval < Duration::from_millis(50) {
        return Err(ConfigError::new(
            ipath,
            "local rate limit token bucket fill timer must be >= 50ms",
        ));
    }
    Ok(LocalRateLimit {
        stat_prefix: l.stat_prefix.clone(),
        max_tokens: b.max_tokens,
        tokens_per_fill,
        fill_interval,
    })
}

fn translate_tcp_proxy(t: &tcp::TcpProxy, path: &str) -> Result<TcpProxy, ConfigError> {
    fields::tcp_proxy(t, path)?;
    if t.stat_prefix.is_empty() {
        return Err(ConfigError::new(format!("{path}.stat_prefix"), "required"));
    }
    let top = subset::criteria(t.metadata_match.as_ref());
    let mut criteria = Vec::new();
    let cluster = match &t.cluster_specifier {
        Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c)) => {
            criteria.push(top.clone().map(Arc::new));
            ClusterChoice::Single(c.clone())
        }
        Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            let mut all = Vec::new();
            for (i, c) in w.clusters.iter().enumerate() {
                if c.weight == 0 {
                    continue;
                }
                // Envoy: the cluster's own criteria merged over the filter's.
                criteria.push(
                    match (subset::criteria(c.metadata_match.as_ref()), &top) {
                        (Some(own), Some(t)) => Some(crate::model::MatchCriteria {
                            keys: t.merged(&own.keys),
                            fallback_list: own.fallback_list.or(t.fallback_list.clone()),
                        }),
                        (own, t) => own.or(t.clone()),
                    }
                    .map(Arc::new),
                );
                if c.name.is_empty() {
                    return Err(ConfigError::new(
                        format!("{path}.weighted_clusters.clusters[{i}].name"),
                        "required",
                    ));
                }
                all.push((c.name.clone(), c.weight));
            }
            if all.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.weighted_clusters.clusters"),
                    "needs a cluster with a weight above zero",
                ));
            }
            ClusterChoice::Weighted(all)
        }
        None => return Err(ConfigError::new(format!("{path}.cluster"), "required")),
    };
    let idle_timeout = match &t.idle_timeout {
        Some(d) => {
            let d = duration(d, &format!("{path}.idle_timeout"))?;
            (!d.is_zero()).then_some(d)
        }
        None => Some(Duration::from_secs(3600)),
    };
    let mut access_logs = Vec::new();
    for (i, a) in t.access_log.iter().enumerate() {
        access_logs.push(translate_access_log(a, &format!("{path}.access_log[{i}]"))?);
    }
    let tunneling = t
        .tunneling_config
        .as_ref()
        .map(|c| tunneling(c, &format!("{path}.tunneling_config")))
        .transpose()?
        .map(Arc::new);
    #[allow(deprecated)]
    let log_flush = log_flush(
        t.access_log_options.as_ref().map(|o| {
            (
                o.access_log_flush_interval.as_ref(),
                o.flush_access_log_on_connected,
                false,
            )
        }),
        (
            t.access_log_flush_interval.as_ref(),
            t.flush_access_log_on_connected,
        ),
        "flush_access_log_on_connected",
        path,
    )?;
    Ok(TcpProxy {
        stat_prefix: t.stat_prefix.clone(),
        cluster,
        criteria,
        idle_timeout,
        access_logs,
        tunneling,
        log_flush,
    })
}

/// `access_log_options` (`options`: its interval, its flag for the first line, and
/// `flush_log_on_tunnel_successfully_established`), or the older `access_log_flush_interval`
/// and `flag` fields (`older`), checked as Envoy checks them.
pub(super) fn log_flush(
    options: Option<(Option<&PbDuration>, bool, bool)>,
    older: (Option<&PbDuration>, bool),
    flag: &str,
    path: &str,
) -> Result<crate::model::LogFlush, ConfigError> {
    let at_least_1ms = |d: &PbDuration, at: String| {
        let d = duration(d, &at)?;
        if d < Duration::from_millis(1) {
            return Err(ConfigError::new(
                at,
                "value must be greater than or equal to 1ms",
            ));
        }
        Ok(d)
    };
    match (options, older) {
        (Some(_), (Some(_), _)) => Err(ConfigError::new(
            path,
            "Only one of access_log_flush_interval or access_log_options can be specified.",
        )),
        (Some(_), (None, true)) => Err(ConfigError::new(
            path,
            format!("Only one of {flag} or access_log_options can be specified."),
        )),
        (Some((interval, on_start, on_tunnel)), (None, false)) => Ok(crate::model::LogFlush {
            interval: interval
                .map(|d| {
                    at_least_1ms(
                        d,
                        format!("{path}.access_log_options.access_log_flush_interval"),
                    )
                })
                .transpose()?,
            on_start,
            on_tunnel,
        }),
        (None, (interval, on_start)) => Ok(crate::model::LogFlush {
            interval: interval
                .map(|d| at_least_1ms(d, format!("{path}.access_log_flush_interval")))
                .transpose()?,
            on_start,
            on_tunnel: false,
        }),
    }
}

/// tcp_proxy's `tunneling_config`, checked as Envoy checks it.
fn tunneling(
    c: &tcp::tcp_proxy::TunnelingConfig,
    path: &str,
) -> Result<crate::model::Tunneling, ConfigError> {
    if c.hostname.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.hostname"),
            "value length must be at least 1 characters",
        ));
    }
    if !c.post_path.is_empty() && !c.use_post {
        return Err(ConfigError::new(
            format!("{path}.post_path"),
            "Can't set a post path when POST method isn't used",
        ));
    }
    let hostname = crate::access_log::Format::parse(&c.hostname)
        .map_err(|e| ConfigError::new(format!("{path}.hostname"), e))?;
    Ok(crate::model::Tunneling {
        hostname: Arc::new(hostname),
        use_post: c.use_post,
        post_path: if c.post_path.is_empty() {
            "/".to_string()
        } else {
            c.post_path.clone()
        },
        headers: route_action::header_adds(&c.headers_to_add, &format!("{path}.headers_to_add"))?,
    })
}

#[cfg(test)]
mod rest_source_tests {
    use crate::load_text;

    fn verdict(cds: &str, ads: &str) -> Result<(), String> {
        let text = format!(
            r#"
dynamic_resources:
  cds_config: {cds}
{ads}static_resources:
  clusters:
  - name: xds
    load_assignment: {{ cluster_name: xds, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 1 }} }} }} }} ] }} ] }}
"#
        );
        load_text(&text).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn rest_sources_need_one_cluster_and_a_refresh_delay() {
        let rest = |more: &str| {
            format!("{{api_config_source: {{api_type: REST, transport_api_version: V3{more}}}}}")
        };
        assert_eq!(
            verdict(
                &rest(", cluster_names: [xds], refresh_delay: 1s, request_timeout: 2s"),
                ""
            ),
            Ok(())
        );
        let e = verdict(&rest(", cluster_names: [xds]"), "").expect_err("no refresh_delay");
        assert!(
            e.contains("refresh_delay is required for REST API configuration sources"),
            "{e}"
        );
        let e = verdict(&rest(", refresh_delay: 1s"), "").expect_err("no cluster");
        assert!(
            e.contains("cds_config.api_config_source.cluster_names"),
            "{e}"
        );
        let e = verdict(
            &rest(", cluster_names: [xds], refresh_delay: 1s, grpc_services: [{envoy_grpc: {cluster_name: xds}}]"),
            "",
        )
        .expect_err("gRPC services on REST");
        assert!(e.contains("grpc_services"), "{e}");
        let e = verdict(
            "{ads: {}}",
            "  ads_config: {api_type: REST, transport_api_version: V3, cluster_names: [xds], refresh_delay: 1s}\n",
        )
        .expect_err("REST ADS");
        assert!(
            e.starts_with("dynamic_resources.ads_config.api_type"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod internal_listener_tests {
    use crate::load_text;

    const EXT: &str = "bootstrap_extensions: [{name: il, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener}}]\n";

    /// An internal listener `encap` (with `extra` fields) and a cluster to it (with `ts` as its
    /// transport socket).
    fn config(ext: &str, extra: &str, ts: &str) -> String {
        format!(
            r#"{ext}static_resources:
  listeners:
  - name: encap
    internal_listener: {{}}{extra}
    filter_chains: [{{filters: [{{name: t, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}}}]}}]
  clusters:
  - name: c{ts}
    load_assignment: {{cluster_name: c, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{envoy_internal_address: {{server_listener_name: encap, endpoint_id: e1}}}}}}}}]}}]}}
"#
        )
    }

    fn verdict(ext: &str, extra: &str, ts: &str) -> Result<crate::Loaded, String> {
        load_text(&config(ext, extra, ts)).map_err(|e| e.to_string())
    }

    #[test]
    fn internal_listeners_and_addresses_load() {
        let loaded = verdict(EXT, "", "").expect("loads");
        let l = &loaded.model.listeners[0];
        assert!(l.internal && !l.bind_to_port);
        assert_eq!(l.stat_prefix, "envoy_internal_encap");
        assert_eq!(loaded.model.internal_listener_buffer, Some(1024 * 1024));
        let h = &loaded.model.clusters[0].hosts[0];
        let to = h.internal.as_ref().expect("an internal host");
        assert_eq!(to.to_string(), "envoy://encap/e1");
        assert_eq!(h.address, to.stand_in());
        assert_eq!(
            crate::model::address_text(&h.address),
            "envoy://encap/e1".to_string()
        );
        let iu = ",\n    transport_socket: {name: iu, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport, passthrough_metadata: [{kind: {host: {}}, name: a}, {kind: {cluster: {}}, name: b}], transport_socket: {name: raw, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}}}";
        let loaded = verdict(EXT, "", iu).expect("loads");
        let passthrough = &loaded.model.clusters[0]
            .internal_upstream
            .as_ref()
            .expect("internal_upstream")
            .passthrough;
        assert_eq!(passthrough.len(), 2);
    }

    #[test]
    fn what_an_internal_listener_cannot_have_is_refused_as_envoy_refuses_it() {
        let cases = [
            (
                "",
                "",
                "",
                "internal_listener: error adding listener named 'encap': InternalListener bootstrap extension is mandatory",
            ),
            (
                EXT,
                "\n    address: {socket_address: {address: 127.0.0.1, port_value: 1}}",
                "",
                "address: error adding listener 'encap': address should not be used when an internal listener config is provided",
            ),
            (
                EXT,
                "\n    socket_options: [{level: 1, name: 2, int_value: 1}]",
                "",
                "does not support socket option",
            ),
            (
                EXT,
                "\n    freebind: true",
                "",
                "freebind: error adding listener named 'encap': has unsupported tcp listener feature",
            ),
            (
                &EXT.replace("InternalListener}", "InternalListener, buffer_size_kb: 8193}"),
                "",
                "",
                "buffer_size_kb: value must be inside range [1, 8192]",
            ),
            (
                EXT,
                "",
                ",\n    transport_socket: {name: iu, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport}}",
                "transport_socket: InternalUpstreamTransportValidationError.TransportSocket: value is required",
            ),
            (
                EXT,
                "",
                ",\n    transport_socket: {name: iu, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport, transport_socket: {name: tls, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext}}}}",
                "only raw_buffer inside internal_upstream",
            ),
            (
                EXT,
                "",
                ",\n    health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}]",
                "health_checks: unsupported with internal addresses",
            ),
        ];
        for (ext, extra, ts, want) in cases {
            match verdict(ext, extra, ts) {
                Ok(_) => panic!("accepted: {extra}{ts}"),
                Err(e) => assert!(e.contains(want), "{extra}{ts}: {e}"),
            }
        }
        // A socket listener whose address is internal.
        let text = config(EXT, "", "").replace(
            "internal_listener: {}",
            "address: {envoy_internal_address: {server_listener_name: encap}}",
        );
        let e = load_text(&text).expect_err("an internal address on a listener");
        assert!(
            e.to_string()
                .contains("use internal_listener field instead of address for internal listeners"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod ipv4_compat_tests {
    #[test]
    fn ipv4_compat_makes_a_listener_dual_stack_and_is_refused_elsewhere() {
        let listener = |addr: &str| {
            format!(
                r#"static_resources: {{ listeners: [{{ name: l, address: {{socket_address: {{address: "{addr}", port_value: 1, ipv4_compat: true}}}}, filter_chains: [{{ filters: [{{ name: t, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c }} }}] }}] }}], clusters: [{{ name: c, connect_timeout: 1s }}] }}"#
            )
        };
        let loaded = crate::load_text(&listener("::")).expect("loads");
        let l = &loaded.model.listeners[0];
        assert_eq!(l.dual_stack, vec![l.address]);
        // An IPv4 socket has nothing to be compatible with.
        let loaded = crate::load_text(&listener("127.0.0.1")).expect("loads");
        assert!(loaded.model.listeners[0].dual_stack.is_empty());
        let dns = "static_resources: {clusters: [{name: d, type: STRICT_DNS, load_assignment: {cluster_name: d, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: a.test, port_value: 1, ipv4_compat: true}}}}]}]}}]}";
        let e = crate::load_text(dns).expect_err("not on a DNS cluster's endpoint");
        assert!(e.to_string().contains("socket_address.ipv4_compat"), "{e}");
        let admin =
            "admin: {address: {socket_address: {address: '::', port_value: 1, ipv4_compat: true}}}";
        let e = crate::load_text(admin).expect_err("not on the admin address");
        assert!(
            e.to_string()
                .contains("admin.address.socket_address.ipv4_compat"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod use_original_dst_tests {
    use crate::model::ListenerFilter;

    fn listener(use_original_dst: bool, filters: &str) -> String {
        format!(
            r#"static_resources: {{ listeners: [{{ name: l, address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}, use_original_dst: {use_original_dst}, listener_filters: [{filters}], filter_chains: [{{ filters: [{{ name: t, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c }} }}] }}] }}], clusters: [{{ name: c, connect_timeout: 1s }}] }}"#
        )
    }

    const DST: &str = r#"{ name: d, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst } }"#;
    const TLS: &str = r#"{ name: t, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector } }"#;

    fn filters(text: &str) -> Vec<ListenerFilter> {
        let loaded = crate::load_text(text).expect("loads");
        loaded.model.listeners[0].listener_filters.clone()
    }

    #[test]
    fn use_original_dst_appends_an_original_dst_filter_as_envoy() {
        // Istio's virtualOutbound: the flag and no filter.
        assert!(matches!(
            filters(&listener(true, ""))[..],
            [ListenerFilter::OriginalDst]
        ));
        // After the configured ones.
        assert!(matches!(
            filters(&listener(true, TLS))[..],
            [ListenerFilter::TlsInspector(_), ListenerFilter::OriginalDst]
        ));
        // One that always runs is enough.
        assert!(matches!(
            filters(&listener(true, DST))[..],
            [ListenerFilter::OriginalDst]
        ));
        assert!(filters(&listener(false, "")).is_empty());
    }
}

#[cfg(test)]
mod null_vm_wasm_tests {
    use crate::model::{HttpFilterConfig, PeerMetadata};

    fn load(direction: &str, runtime: &str, code: &str) -> Result<PeerMetadata, String> {
        let text = format!(
            r#"static_resources: {{ listeners: [{{ name: l, traffic_direction: {direction}, address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}, filter_chains: [{{ filters: [{{ name: h, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: h, route_config: {{}}, http_filters: [{{ name: istio.metadata_exchange, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm, config: {{ configuration: {{ "@type": type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange }}, vm_config: {{ runtime: {runtime}, code: {{ local: {{ inline_string: {code} }} }} }} }} }} }}, {{ name: r, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}] }} }}] }}] }}] }}"#
        );
        let loaded = crate::load_text(&text).map_err(|e| e.to_string())?;
        let chain = &loaded.model.listeners[0].filter_chains[0];
        let crate::model::NetworkFilter::HttpConnectionManager(h) = &chain.1.filters[0] else {
            panic!("an HCM");
        };
        match &h.http_filters[0].config {
            HttpFilterConfig::PeerMetadata(p) => Ok((**p).clone()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn istios_null_vm_metadata_exchange_runs_as_the_exchange_and_other_wasm_is_refused() {
        let mx = "envoy.wasm.metadata_exchange";
        let null = "envoy.wasm.runtime.null";
        let out = load("OUTBOUND", null, mx).expect("loads");
        assert!(out.downstream_headers && out.upstream_headers);
        assert_eq!(
            (out.upstream_propagation, out.downstream_propagation),
            (Some(false), None)
        );
        let inb = load("INBOUND", null, mx).expect("loads");
        assert_eq!(
            (inb.upstream_propagation, inb.downstream_propagation),
            (None, Some(false))
        );
        let both = load("UNSPECIFIED", null, mx).expect("loads");
        assert_eq!(
            (both.upstream_propagation, both.downstream_propagation),
            (Some(false), Some(false))
        );
        let e = load("OUTBOUND", "envoy.wasm.runtime.v8", mx).expect_err("a real VM");
        assert!(e.contains("typed_config.config.vm_config.runtime"), "{e}");
        let e = load("OUTBOUND", null, "envoy.wasm.stats").expect_err("another plugin");
        assert!(e.contains("typed_config.config.vm_config.code"), "{e}");
    }
}

#[cfg(test)]
mod bind_config_tests {
    #[test]
    fn extra_source_addresses_are_one_per_other_family() {
        let cluster = |extra: &str| {
            format!(
                "static_resources: {{ clusters: [{{ name: c, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, upstream_bind_config: {{ source_address: {{ address: 127.0.0.6, port_value: 0 }}, extra_source_addresses: [{extra}] }} }}] }}"
            )
        };
        let loaded = crate::load_text(&cluster("{address: {address: '::6', port_value: 0}}"))
            .expect("loads");
        let c = &loaded.model.clusters[0];
        assert_eq!(
            c.extra_source_addresses,
            vec!["[::6]:0".parse().expect("address")]
        );
        let e = crate::load_text(&cluster("{address: {address: 127.0.0.7, port_value: 0}}"))
            .expect_err("the same family twice");
        assert!(
            e.to_string()
                .contains("upstream_bind_config.extra_source_addresses[0]"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod udp_listener_access_log_tests {
    #[test]
    fn a_udp_listeners_access_log_is_checked_and_accepted() {
        let udp = |log: &str| {
            format!(
                r#"static_resources: {{ listeners: [{{ name: u, address: {{socket_address: {{protocol: UDP, address: 127.0.0.1, port_value: 1}}}}, access_log: [{log}], listener_filters: [{{ name: p, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig, stat_prefix: u, matcher: {{ on_no_match: {{ action: {{ name: r, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route, cluster: c }} }} }} }} }} }}] }}], clusters: [{{ name: c, connect_timeout: 1s }}] }}"#
            )
        };
        let ok = r#"{ name: l, typed_config: { "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: /dev/null } }"#;
        crate::load_text(&udp(ok)).expect("loads");
        let bad = r#"{ name: l, typed_config: { "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: /dev/null, log_format: { text_format: "%NOPE%" } } }"#;
        let e = crate::load_text(&udp(bad)).expect_err("a bad format");
        assert!(e.to_string().contains("listeners[0].access_log[0]"), "{e}");
    }
}
