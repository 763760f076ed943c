//! Envoy protos → [`model`]. Fields were already checked against the supported table; this step
//! checks values and references, with the field path in every error.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};

use super::model::{self, *};
use super::proto::{type_name, unpack};
use super::ConfigError;
use crate::access_log::Format;
use crate::router::{Route, RouteMatch, RouteTable, VirtualHost};

const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;
const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY_TYPE: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Translates a decoded bootstrap into the model.
pub fn translate(b: &bootstrap::Bootstrap) -> Result<Bootstrap, ConfigError> {
    let node = b
        .node
        .as_ref()
        .map(|n| Node {
            id: n.id.clone(),
            cluster: n.cluster.clone(),
        })
        .unwrap_or_default();
    let admin = match &b.admin {
        Some(a) => match &a.address {
            Some(addr) => Some(Admin {
                address: socket_address(addr, "admin.address")?,
            }),
            None => None,
        },
        None => None,
    };
    let empty = bootstrap::bootstrap::StaticResources::default();
    let res = b.static_resources.as_ref().unwrap_or(&empty);

    let mut clusters = Vec::new();
    let mut cluster_names = HashSet::new();
    for (i, c) in res.clusters.iter().enumerate() {
        let path = format!("static_resources.clusters[{i}]");
        let c = translate_cluster(c, &path)?;
        if !cluster_names.insert(c.name.clone()) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate cluster '{}'", c.name),
            ));
        }
        clusters.push(Arc::new(c));
    }

    let mut listeners = Vec::new();
    let mut listener_names = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, l) in res.listeners.iter().enumerate() {
        let path = format!("static_resources.listeners[{i}]");
        let l = translate_listener(l, &path, &cluster_names)?;
        if !listener_names.insert(l.name.clone()) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate listener name '{}'", l.name),
            ));
        }
        if !addresses.insert(l.address) {
            return Err(ConfigError::new(
                format!("{path}.address"),
                format!("another listener already uses {}", l.address),
            ));
        }
        listeners.push(Arc::new(l));
    }
    Ok(Bootstrap {
        node,
        admin,
        listeners,
        clusters,
    })
}

fn required<'a, T>(v: &'a Option<T>, path: &str) -> Result<&'a T, ConfigError> {
    v.as_ref().ok_or_else(|| ConfigError::new(path, "required"))
}

fn duration(d: &PbDuration, path: &str) -> Result<Duration, ConfigError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ConfigError::new(path, "must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn socket_address(a: &core::Address, path: &str) -> Result<SocketAddr, ConfigError> {
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
            return Err(ConfigError::new(
                format!("{path}.port_value"),
                format!("{p} is not a port"),
            ))
        }
        _ => return Err(ConfigError::new(format!("{path}.port_value"), "required")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Envoy's listener stat scope for an address: `127.0.0.1_10000`, `[__1]_10000`.
pub fn listener_stat_prefix(addr: &SocketAddr) -> String {
    addr.to_string().replace(':', "_")
}

fn translate_listener(
    l: &listener::Listener,
    path: &str,
    clusters: &HashSet<String>,
) -> Result<Listener, ConfigError> {
    let address = socket_address(
        required(&l.address, &format!("{path}.address"))?,
        &format!("{path}.address"),
    )?;
    if l.enable_reuse_port.as_ref().map(|v| v.value) == Some(false) {
        return Err(ConfigError::new(
            format!("{path}.enable_reuse_port"),
            "unsupported: false (each worker owns its own SO_REUSEPORT socket)",
        ));
    }
    let stat_prefix = if l.stat_prefix.is_empty() {
        listener_stat_prefix(&address)
    } else {
        l.stat_prefix.clone()
    };
    if l.filter_chains.len() > 1 {
        return Err(ConfigError::new(
            format!("{path}.filter_chains"),
            "unsupported: more than one filter chain (filter chain matching is not available yet)",
        ));
    }
    let filter_chain = match l.filter_chains.first() {
        Some(fc) => Some(Arc::new(translate_chain(
            fc,
            &format!("{path}.filter_chains[0]"),
            clusters,
        )?)),
        None => None,
    };
    let default_filter_chain = match &l.default_filter_chain {
        Some(fc) => Some(Arc::new(translate_chain(
            fc,
            &format!("{path}.default_filter_chain"),
            clusters,
        )?)),
        None => None,
    };
    let mut original_dst = false;
    let mut original_src = None;
    let mut original_src_path = String::new();
    for (i, f) in l.listener_filters.iter().enumerate() {
        let fpath = format!("{path}.listener_filters[{i}]");
        use listener::listener_filter::ConfigType;
        let typed = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let any = typed_config(typed, f.config_type.is_some(), &fpath)?;
        match type_name(&any.type_url) {
            "envoy.extensions.filters.listener.original_dst.v3.OriginalDst" => original_dst = true,
            "envoy.extensions.filters.listener.original_src.v3.OriginalSrc" => {
                let o: envoy_types::pb::envoy::extensions::filters::listener::original_src::v3::OriginalSrc =
                    unpack(any, &format!("{fpath}.typed_config"))?;
                original_src = Some(OriginalSrc {
                    bind_port: o.bind_port,
                    mark: o.mark,
                });
                original_src_path = fpath.clone();
            }
            other => {
                return Err(ConfigError::new(
                    format!("{fpath}.typed_config"),
                    format!("unsupported listener filter '{}' ({other})", f.name),
                ))
            }
        }
    }
    if original_src.is_some() {
        let chains = filter_chain.iter().chain(default_filter_chain.iter());
        let http = chains
            .flat_map(|fc| fc.filters.iter())
            .any(|f| matches!(f, NetworkFilter::HttpConnectionManager(_)));
        if http {
            return Err(ConfigError::new(
                original_src_path,
                "unsupported with http_connection_manager (only with tcp_proxy so far)",
            ));
        }
    }
    if filter_chain.is_none() && default_filter_chain.is_none() {
        return Err(ConfigError::new(
            format!("{path}.filter_chains"),
            "a listener needs at least one filter chain",
        ));
    }
    Ok(Listener {
        name: if l.name.is_empty() {
            address.to_string()
        } else {
            l.name.clone()
        },
        address,
        stat_prefix,
        filter_chain,
        default_filter_chain,
        original_dst,
        original_src,
        transparent: l.transparent.as_ref().is_some_and(|v| v.value),
        freebind: l.freebind.as_ref().is_some_and(|v| v.value),
        buffer_limit: l
            .per_connection_buffer_limit_bytes
            .as_ref()
            .map_or(DEFAULT_BUFFER_LIMIT, |v| v.value as usize),
    })
}

/// The `typed_config` of a filter whose configuration is the `typed_config | config_discovery`
/// oneof (network, listener and HTTP filters each have their own generated enum for it).
fn typed_config<'a>(
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

fn translate_chain(
    fc: &listener::FilterChain,
    path: &str,
    clusters: &HashSet<String>,
) -> Result<FilterChain, ConfigError> {
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
            )?)),
            TCP_PROXY_TYPE => NetworkFilter::TcpProxy(Arc::new(translate_tcp_proxy(
                &unpack(any, &tpath)?,
                &tpath,
            )?)),
            other => {
                return Err(ConfigError::new(
                    tpath,
                    format!("unsupported network filter '{}' ({other})", f.name),
                ))
            }
        };
        let last = i + 1 == fc.filters.len();
        if !last {
            return Err(ConfigError::new(
                fpath,
                format!(
                    "'{}' is a terminal filter and must be last in the chain",
                    f.name
                ),
            ));
        }
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.filters"),
            "a filter chain needs a terminal filter",
        ));
    }
    Ok(FilterChain {
        name: fc.name.clone(),
        filters,
    })
}

fn translate_tcp_proxy(t: &tcp::TcpProxy, path: &str) -> Result<TcpProxy, ConfigError> {
    if t.stat_prefix.is_empty() {
        return Err(ConfigError::new(format!("{path}.stat_prefix"), "required"));
    }
    let cluster = match &t.cluster_specifier {
        Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c)) => ClusterChoice::Single(c.clone()),
        Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            let mut all = Vec::new();
            for (i, c) in w.clusters.iter().enumerate() {
                if c.weight == 0 {
                    continue;
                }
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
    Ok(TcpProxy {
        stat_prefix: t.stat_prefix.clone(),
        cluster,
        idle_timeout,
        access_logs,
    })
}

fn translate_hcm(
    h: &hcm::HttpConnectionManager,
    path: &str,
    clusters: &HashSet<String>,
) -> Result<HttpConnectionManager, ConfigError> {
    use hcm::http_connection_manager::{
        CodecType as Codec, RouteSpecifier, ServerHeaderTransformation as Sht,
    };
    if h.stat_prefix.is_empty() {
        return Err(ConfigError::new(format!("{path}.stat_prefix"), "required"));
    }
    let codec = match Codec::try_from(h.codec_type) {
        Ok(Codec::Auto) => CodecType::Auto,
        Ok(Codec::Http1) => CodecType::Http1,
        Ok(Codec::Http2) => CodecType::Http2,
        _ => {
            return Err(ConfigError::new(
                format!("{path}.codec_type"),
                "unsupported: only AUTO, HTTP1, HTTP2",
            ))
        }
    };
    let routes = match &h.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => {
            translate_routes(rc, &format!("{path}.route_config"), clusters)?
        }
        Some(_) => {
            return Err(ConfigError::new(
                path,
                "unsupported: only an inline route_config",
            ))
        }
        None => return Err(ConfigError::new(format!("{path}.route_config"), "required")),
    };
    let mut router = None;
    for (i, f) in h.http_filters.iter().enumerate() {
        let fpath = format!("{path}.http_filters[{i}]");
        let typed = match &f.config_type {
            Some(hcm::http_filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let any = typed_config(typed, f.config_type.is_some(), &fpath)?;
        let tpath = format!("{fpath}.typed_config");
        match type_name(&any.type_url) {
            "envoy.extensions.filters.http.router.v3.Router" => {
                if i + 1 != h.http_filters.len() {
                    return Err(ConfigError::new(
                        fpath,
                        "the router must be the last HTTP filter",
                    ));
                }
                let r: Router = unpack(any, &tpath)?;
                router = Some(RouterConfig {
                    dynamic_stats: r.dynamic_stats.as_ref().is_none_or(|v| v.value),
                    suppress_envoy_headers: r.suppress_envoy_headers,
                });
            }
            other => {
                return Err(ConfigError::new(
                    tpath,
                    format!("unsupported HTTP filter '{}' ({other})", f.name),
                ))
            }
        }
    }
    let router = router.ok_or_else(|| {
        ConfigError::new(
            format!("{path}.http_filters"),
            "must end with envoy.filters.http.router",
        )
    })?;
    let mut access_logs = Vec::new();
    for (i, a) in h.access_log.iter().enumerate() {
        access_logs.push(translate_access_log(a, &format!("{path}.access_log[{i}]"))?);
    }
    let server_name = if h.server_name.is_empty() {
        "envoy"
    } else {
        h.server_name.as_str()
    };
    let server_name = http::HeaderValue::from_str(server_name)
        .map_err(|_| ConfigError::new(format!("{path}.server_name"), "not a valid header value"))?;
    let server_header = match Sht::try_from(h.server_header_transformation) {
        Ok(Sht::Overwrite) => ServerHeader::Overwrite,
        Ok(Sht::AppendIfAbsent) => ServerHeader::AppendIfAbsent,
        Ok(Sht::PassThrough) => ServerHeader::PassThrough,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.server_header_transformation"),
                "unknown value",
            ))
        }
    };
    let via = if h.via.is_empty() {
        None
    } else {
        Some(
            http::HeaderValue::from_str(&h.via)
                .map_err(|_| ConfigError::new(format!("{path}.via"), "not a valid header value"))?,
        )
    };
    Ok(HttpConnectionManager {
        stat_prefix: h.stat_prefix.clone(),
        codec,
        routes: Arc::new(routes),
        http_filters: Vec::new(),
        router,
        access_logs,
        server_name,
        server_header,
        generate_request_id: h.generate_request_id.as_ref().is_none_or(|v| v.value),
        preserve_external_request_id: h.preserve_external_request_id,
        always_set_request_id_in_response: h.always_set_request_id_in_response,
        via,
    })
}

fn translate_access_log(
    a: &envoy_types::pb::envoy::config::accesslog::v3::AccessLog,
    path: &str,
) -> Result<AccessLog, ConfigError> {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
    let any = match &a.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None => return Err(ConfigError::new(format!("{path}.typed_config"), "required")),
    };
    let tpath = format!("{path}.typed_config");
    let (sink, log_format) = match type_name(&any.type_url) {
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" => {
            let s: StdoutAccessLog = unpack(any, &tpath)?;
            (AccessLogSink::Stdout, stream_format(s.access_log_format))
        }
        "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => {
            let s: StderrAccessLog = unpack(any, &tpath)?;
            (
                AccessLogSink::Stderr,
                stream_format_err(s.access_log_format),
            )
        }
        "envoy.extensions.access_loggers.file.v3.FileAccessLog" => {
            let f: FileAccessLog = unpack(any, &tpath)?;
            if f.path.is_empty() {
                return Err(ConfigError::new(format!("{tpath}.path"), "required"));
            }
            use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat;
            let fmt = match f.access_log_format {
                Some(AccessLogFormat::LogFormat(s)) => Some(s),
                Some(_) => return Err(ConfigError::unsupported(format!("{tpath}.format"))),
                None => None,
            };
            (AccessLogSink::File(f.path), fmt)
        }
        other => {
            return Err(ConfigError::new(
                tpath,
                format!("unsupported access logger '{}' ({other})", a.name),
            ))
        }
    };
    let format = match log_format {
        None => Format::envoy_default(),
        Some(sfs) => {
            use core::substitution_format_string::Format as F;
            let fpath = format!("{tpath}.log_format");
            let text = match sfs.format {
                #[allow(deprecated)]
                Some(F::TextFormat(t)) => t,
                Some(F::TextFormatSource(ds)) => match ds.specifier {
                    Some(core::data_source::Specifier::InlineString(s)) => s,
                    _ => {
                        return Err(ConfigError::unsupported(format!(
                            "{fpath}.text_format_source"
                        )))
                    }
                },
                Some(_) => return Err(ConfigError::unsupported(format!("{fpath}.json_format"))),
                None => return Err(ConfigError::new(fpath, "needs text_format_source")),
            };
            Format::parse(&text)
                .map_err(|e| ConfigError::new(format!("{fpath}.text_format_source"), e))?
        }
    };
    Ok(AccessLog {
        sink,
        format: Arc::new(format),
    })
}

fn stream_format(
    f: Option<envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat>,
) -> Option<core::SubstitutionFormatString> {
    f.map(|f| match f {
        envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat::LogFormat(s) => s,
    })
}

fn stream_format_err(
    f: Option<envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stderr_access_log::AccessLogFormat>,
) -> Option<core::SubstitutionFormatString> {
    f.map(|f| match f {
        envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stderr_access_log::AccessLogFormat::LogFormat(s) => s,
    })
}

fn translate_routes(
    rc: &route::RouteConfiguration,
    path: &str,
    clusters: &HashSet<String>,
) -> Result<RouteTable, ConfigError> {
    let mut vhosts = Vec::new();
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let vpath = format!("{path}.virtual_hosts[{i}]");
        if vh.domains.is_empty() {
            return Err(ConfigError::new(
                format!("{vpath}.domains"),
                "at least one domain is required",
            ));
        }
        let mut routes = Vec::new();
        for (j, r) in vh.routes.iter().enumerate() {
            routes.push(translate_route(
                r,
                &format!("{vpath}.routes[{j}]"),
                clusters,
            )?);
        }
        vhosts.push(VirtualHost {
            name: vh.name.clone(),
            domains: vh.domains.clone(),
            routes,
        });
    }
    RouteTable::new(rc.name.clone(), vhosts, rc.ignore_port_in_host_matching)
        .map_err(|e| ConfigError::new(format!("{path}.virtual_hosts"), e))
}

fn translate_route(
    r: &route::Route,
    path: &str,
    clusters: &HashSet<String>,
) -> Result<Route, ConfigError> {
    let m = required(&r.r#match, &format!("{path}.match"))?;
    let mpath = format!("{path}.match");
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|v| v.value);
    let path_match = match &m.path_specifier {
        Some(route::route_match::PathSpecifier::Prefix(p)) => {
            crate::router::PathMatch::Prefix(p.clone())
        }
        Some(route::route_match::PathSpecifier::Path(p)) => {
            crate::router::PathMatch::Exact(p.clone())
        }
        Some(_) => {
            return Err(ConfigError::new(
                mpath,
                "unsupported path specifier: only prefix and path",
            ))
        }
        None => {
            return Err(ConfigError::new(
                mpath,
                "a path specifier (prefix or path) is required",
            ))
        }
    };
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        headers.push(translate_header_match(h, &format!("{mpath}.headers[{i}]"))?);
    }
    let action = match &r.action {
        Some(route::route::Action::Route(a)) => a,
        Some(_) => {
            return Err(ConfigError::new(
                path,
                "unsupported route action: only route",
            ))
        }
        None => {
            return Err(ConfigError::new(
                format!("{path}.route"),
                "an action is required",
            ))
        }
    };
    let apath = format!("{path}.route");
    let cluster = match &action.cluster_specifier {
        Some(route::route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
        _ => return Err(ConfigError::new(format!("{apath}.cluster"), "required")),
    };
    if !clusters.contains(&cluster) {
        return Err(ConfigError::new(
            format!("{apath}.cluster"),
            format!("unknown cluster '{cluster}'"),
        ));
    }
    let timeout = match &action.timeout {
        Some(d) => duration(d, &format!("{apath}.timeout"))?,
        None => Duration::from_secs(15),
    };
    Ok(Route {
        name: r.name.clone(),
        matcher: RouteMatch::new(path_match, case_sensitive, headers),
        cluster,
        timeout: (!timeout.is_zero()).then_some(timeout),
    })
}

fn translate_header_match(
    h: &route::HeaderMatcher,
    path: &str,
) -> Result<HeaderMatch, ConfigError> {
    use route::header_matcher::HeaderMatchSpecifier as S;
    let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
        .map_err(|_| ConfigError::new(format!("{path}.name"), "not a valid header name"))?;
    let kind = match &h.header_match_specifier {
        Some(S::PresentMatch(p)) => HeaderMatchKind::Present(*p),
        Some(S::StringMatch(sm)) => {
            HeaderMatchKind::String(string_match(sm, &format!("{path}.string_match"))?)
        }
        // No specifier: the header must be present.
        None => HeaderMatchKind::Present(true),
        Some(_) => return Err(ConfigError::unsupported(path)),
    };
    Ok(HeaderMatch {
        name,
        kind,
        invert: h.invert_match,
    })
}

fn string_match(m: &matcher::StringMatcher, path: &str) -> Result<StringMatch, ConfigError> {
    use matcher::string_matcher::MatchPattern as P;
    let norm = |s: &String| {
        if m.ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.clone()
        }
    };
    let kind = match &m.match_pattern {
        Some(P::Exact(s)) => StringMatchKind::Exact(norm(s)),
        Some(P::Prefix(s)) => StringMatchKind::Prefix(norm(s)),
        Some(P::Suffix(s)) => StringMatchKind::Suffix(norm(s)),
        Some(P::Contains(s)) => StringMatchKind::Contains(norm(s)),
        Some(_) => {
            return Err(ConfigError::new(
                path,
                "unsupported: only exact, prefix, suffix, contains",
            ))
        }
        None => return Err(ConfigError::new(path, "a match pattern is required")),
    };
    Ok(StringMatch {
        kind,
        ignore_case: m.ignore_case,
    })
}

fn translate_cluster(c: &cluster::Cluster, path: &str) -> Result<Cluster, ConfigError> {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
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
        Some(ClusterDiscoveryType::Type(t)) => {
            let name = DiscoveryType::try_from(*t)
                .map(|t| t.as_str_name())
                .unwrap_or("unknown");
            return Err(ConfigError::new(
                format!("{path}.type"),
                format!("unsupported: {name} (only STATIC and ORIGINAL_DST)"),
            ));
        }
        Some(_) => return Err(ConfigError::unsupported(format!("{path}.cluster_type"))),
    };
    // Envoy's pairing: ORIGINAL_DST clusters take CLUSTER_PROVIDED, the others a real policy.
    let lb_ok = match discovery {
        model::DiscoveryType::Static => c.lb_policy == LbPolicy::RoundRobin as i32,
        model::DiscoveryType::OriginalDst => c.lb_policy == LbPolicy::ClusterProvided as i32,
    };
    if !lb_ok {
        let name = LbPolicy::try_from(c.lb_policy)
            .map(|t| t.as_str_name())
            .unwrap_or("unknown");
        let want = match discovery {
            model::DiscoveryType::Static => "ROUND_ROBIN",
            model::DiscoveryType::OriginalDst => "CLUSTER_PROVIDED (required by ORIGINAL_DST)",
        };
        return Err(ConfigError::new(
            format!("{path}.lb_policy"),
            format!("unsupported: {name} (only {want})"),
        ));
    }
    if discovery == model::DiscoveryType::OriginalDst && c.load_assignment.is_some() {
        return Err(ConfigError::new(
            format!("{path}.load_assignment"),
            "an ORIGINAL_DST cluster takes its hosts from connections, not load_assignment",
        ));
    }
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
    let connect_timeout = match &c.connect_timeout {
        Some(d) => duration(d, &format!("{path}.connect_timeout"))?,
        None => Duration::from_secs(5),
    };
    let mut hosts = Vec::new();
    if let Some(la) = &c.load_assignment {
        for (i, locality) in la.endpoints.iter().enumerate() {
            for (j, lb) in locality.lb_endpoints.iter().enumerate() {
                let epath = format!("{path}.load_assignment.endpoints[{i}].lb_endpoints[{j}]");
                use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
                let ep = match &lb.host_identifier {
                    Some(HostIdentifier::Endpoint(ep)) => ep,
                    _ => return Err(ConfigError::new(format!("{epath}.endpoint"), "required")),
                };
                let address = socket_address(
                    required(&ep.address, &format!("{epath}.endpoint.address"))?,
                    &format!("{epath}.endpoint.address"),
                )?;
                // Envoy routes to UNKNOWN, HEALTHY and DEGRADED hosts only.
                let healthy = matches!(lb.health_status, 0 | 1 | 5);
                hosts.push(Host { address, healthy });
            }
        }
    }
    let mut protocol = UpstreamProtocol::Http1;
    let mut http2 = Http2Options::default();
    #[allow(deprecated)]
    if let Some(h2) = &c.http2_protocol_options {
        protocol = UpstreamProtocol::Http2;
        http2 = http2_options(h2);
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
        use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig;
        use upstream_http::http_protocol_options::UpstreamProtocolOptions as U;
        match o.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(ProtocolConfig::HttpProtocolOptions(_)) => protocol = UpstreamProtocol::Http1,
                Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                    check_http2_options(
                        &h2,
                        &format!("{opath}.explicit_http_config.http2_protocol_options"),
                    )?;
                    protocol = UpstreamProtocol::Http2;
                    http2 = http2_options(&h2);
                }
                _ => {
                    return Err(ConfigError::new(
                        format!("{opath}.explicit_http_config"),
                        "unsupported protocol",
                    ))
                }
            },
            Some(U::UseDownstreamProtocolConfig(d)) => {
                protocol = UpstreamProtocol::Downstream;
                if let Some(h2) = &d.http2_protocol_options {
                    check_http2_options(
                        h2,
                        &format!("{opath}.use_downstream_protocol_config.http2_protocol_options"),
                    )?;
                    http2 = http2_options(h2);
                }
            }
            Some(_) => return Err(ConfigError::unsupported(format!("{opath}.auto_config"))),
            None => {}
        }
    }
    Ok(Cluster {
        name: c.name.clone(),
        discovery,
        source_address,
        connect_timeout,
        hosts,
        protocol,
        http2,
        buffer_limit: c
            .per_connection_buffer_limit_bytes
            .as_ref()
            .map_or(DEFAULT_BUFFER_LIMIT, |v| v.value as usize),
    })
}

fn http2_options(h2: &core::Http2ProtocolOptions) -> Http2Options {
    let d = Http2Options::default();
    Http2Options {
        max_concurrent_streams: h2
            .max_concurrent_streams
            .as_ref()
            .map_or(d.max_concurrent_streams, |v| v.value),
        initial_stream_window_size: h2.initial_stream_window_size.as_ref().map(|v| v.value),
        initial_connection_window_size: h2.initial_connection_window_size.as_ref().map(|v| v.value),
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
    Ok(())
}
