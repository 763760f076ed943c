//! `STRICT_DNS` and `LOGICAL_DNS` clusters: the names to resolve and the resolver's settings.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::clusters::dns::v3::DnsCluster;
use envoy_types::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig;
use envoy_types::pb::google::protobuf::Duration as PbDuration;

use super::super::model::{DnsConfig, DnsLookupFamily, DnsResolverConfig, DnsTarget};
use super::super::proto::{type_name, unpack};
use super::super::ConfigError;
use super::{duration, required};

const CARES: &str = "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig";

/// The DNS settings of a `STRICT_DNS` (`logical` false) or `LOGICAL_DNS` cluster. Its fields
/// are deprecated in favour of the `envoy.clusters.dns` extension, which Envoy 1.40 still
/// builds from them.
#[allow(deprecated)]
pub(super) fn dns_config(
    c: &cluster::Cluster,
    logical: bool,
    path: &str,
) -> Result<DnsConfig, ConfigError> {
    use cluster::cluster::DnsLookupFamily as F;
    let family = match F::try_from(c.dns_lookup_family) {
        Ok(F::Auto) => DnsLookupFamily::Auto,
        Ok(F::V4Only) => DnsLookupFamily::V4Only,
        Ok(F::V6Only) => DnsLookupFamily::V6Only,
        Ok(F::V4Preferred) => DnsLookupFamily::V4Preferred,
        Ok(F::All) => DnsLookupFamily::All,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.dns_lookup_family"),
                format!("{} is not a lookup family", c.dns_lookup_family),
            ))
        }
    };
    let failure = c
        .dns_failure_refresh_rate
        .as_ref()
        .map(|r| (r.base_interval.as_ref(), r.max_interval.as_ref()));
    settings(
        c,
        logical,
        Settings {
            family,
            refresh_rate: c.dns_refresh_rate.as_ref(),
            failure,
            respect_ttl: c.respect_dns_ttl,
            jitter: c.dns_jitter.as_ref(),
            resolver: resolver(c, path)?,
            prefix: path.to_string(),
        },
        path,
    )
}

/// The `envoy.clusters.dns` extension (`cluster_type` with a `DnsCluster`): the same settings
/// in their own message; `all_addresses_in_single_endpoint` makes it LOGICAL_DNS.
pub(super) fn dns_cluster_config(
    c: &cluster::Cluster,
    d: &DnsCluster,
    path: &str,
) -> Result<DnsConfig, ConfigError> {
    use envoy_types::pb::envoy::extensions::clusters::common::dns::v3::DnsLookupFamily as F;
    let dpath = format!("{path}.cluster_type.typed_config");
    let family = match F::try_from(d.dns_lookup_family) {
        Ok(F::Auto | F::Unspecified) => DnsLookupFamily::Auto,
        Ok(F::V4Only) => DnsLookupFamily::V4Only,
        Ok(F::V6Only) => DnsLookupFamily::V6Only,
        Ok(F::V4Preferred) => DnsLookupFamily::V4Preferred,
        Ok(F::All) => DnsLookupFamily::All,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{dpath}.dns_lookup_family"),
                format!("{} is not a lookup family", d.dns_lookup_family),
            ))
        }
    };
    if d.dns_min_refresh_rate.is_some() {
        return Err(ConfigError::unsupported(format!(
            "{dpath}.dns_min_refresh_rate"
        )));
    }
    let resolver = match &d.typed_dns_resolver_config {
        Some(t) => typed_resolver(t, &format!("{dpath}.typed_dns_resolver_config"))?,
        None => DnsResolverConfig::default(),
    };
    settings(
        c,
        d.all_addresses_in_single_endpoint,
        Settings {
            family,
            refresh_rate: d.dns_refresh_rate.as_ref(),
            failure: d
                .dns_failure_refresh_rate
                .as_ref()
                .map(|r| (r.base_interval.as_ref(), r.max_interval.as_ref())),
            respect_ttl: d.respect_dns_ttl,
            jitter: d.dns_jitter.as_ref(),
            resolver,
            prefix: dpath,
        },
        path,
    )
}

/// The settings of either form, before their checks; `prefix` is where their fields are.
struct Settings<'a> {
    family: DnsLookupFamily,
    refresh_rate: Option<&'a PbDuration>,
    failure: Option<(Option<&'a PbDuration>, Option<&'a PbDuration>)>,
    respect_ttl: bool,
    jitter: Option<&'a PbDuration>,
    resolver: DnsResolverConfig,
    prefix: String,
}

fn settings(
    c: &cluster::Cluster,
    logical: bool,
    s: Settings<'_>,
    path: &str,
) -> Result<DnsConfig, ConfigError> {
    let targets = targets(c, logical, path)?;
    let pre = &s.prefix;
    let refresh_rate = match s.refresh_rate {
        Some(d) => at_least_1ms(
            duration(d, &format!("{pre}.dns_refresh_rate"))?,
            &format!("{pre}.dns_refresh_rate"),
        )?,
        None => Duration::from_secs(5),
    };
    let failure_refresh = match s.failure {
        Some((base, max)) => {
            let rpath = format!("{pre}.dns_failure_refresh_rate");
            let bpath = format!("{rpath}.base_interval");
            let base = at_least_1ms(
                duration(
                    base.ok_or_else(|| ConfigError::new(&bpath, "required"))?,
                    &bpath,
                )?,
                &bpath,
            )?;
            let max = match max {
                Some(m) => at_least_1ms(
                    duration(m, &format!("{rpath}.max_interval"))?,
                    &format!("{rpath}.max_interval"),
                )?,
                None => base.saturating_mul(10),
            };
            if max < base {
                return Err(ConfigError::new(
                    rpath,
                    "dns_failure_refresh_rate must have max_interval greater than or equal to the base_interval",
                ));
            }
            Some((base, max))
        }
        None => None,
    };
    let jitter = match s.jitter {
        Some(d) => duration(d, &format!("{pre}.dns_jitter"))?,
        None => Duration::ZERO,
    };
    Ok(DnsConfig {
        targets,
        family: s.family,
        refresh_rate,
        failure_refresh,
        respect_ttl: s.respect_ttl,
        jitter,
        resolver: s.resolver,
        wait_for_warm: c.wait_for_warm_on_init.as_ref().is_none_or(|v| v.value),
    })
}

fn at_least_1ms(d: Duration, path: &str) -> Result<Duration, ConfigError> {
    if d <= Duration::from_millis(1) {
        return Err(ConfigError::new(path, "must be greater than 1ms"));
    }
    Ok(d)
}

/// The names of `load_assignment`, one per `lb_endpoint`.
fn targets(c: &cluster::Cluster, logical: bool, path: &str) -> Result<Vec<DnsTarget>, ConfigError> {
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let Some(la) = &c.load_assignment else {
        if logical {
            return Err(ConfigError::new(
                format!("{path}.load_assignment"),
                "LOGICAL_DNS clusters must have a single host",
            ));
        }
        return Ok(Vec::new());
    };
    let lpath = format!("{path}.load_assignment");
    super::fields::cluster_load_assignment(la, &lpath)?;
    if logical && (la.endpoints.len() != 1 || la.endpoints[0].lb_endpoints.len() != 1) {
        return Err(ConfigError::new(
            lpath,
            "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint",
        ));
    }
    let mut out = Vec::new();
    for (i, locality) in la.endpoints.iter().enumerate() {
        super::fields::locality_lb_endpoints(locality, &format!("{lpath}.endpoints[{i}]"))?;
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            let epath = format!("{lpath}.endpoints[{i}].lb_endpoints[{j}]");
            super::fields::lb_endpoint(lb, &epath)?;
            let ep = match &lb.host_identifier {
                Some(HostIdentifier::Endpoint(ep)) => ep,
                _ => return Err(ConfigError::new(format!("{epath}.endpoint"), "required")),
            };
            let apath = format!("{epath}.endpoint.address");
            let sa = match &required(&ep.address, &apath)?.address {
                Some(core::address::Address::SocketAddress(sa)) => sa,
                _ => {
                    return Err(ConfigError::new(
                        apath,
                        "a DNS cluster's endpoints are socket addresses",
                    ))
                }
            };
            let spath = format!("{apath}.socket_address");
            // A listen-socket option (dual stack): a listener's only.
            if sa.ipv4_compat {
                return Err(ConfigError::unsupported(format!("{spath}.ipv4_compat")));
            }
            if sa.protocol != core::socket_address::Protocol::Tcp as i32 {
                return Err(ConfigError::new(
                    format!("{spath}.protocol"),
                    "unsupported: only TCP",
                ));
            }
            if sa.address.is_empty() {
                return Err(ConfigError::new(format!("{spath}.address"), "required"));
            }
            let port = match sa.port_specifier {
                Some(core::socket_address::PortSpecifier::PortValue(p)) if p <= 65535 => p as u16,
                Some(core::socket_address::PortSpecifier::PortValue(p)) => {
                    return Err(ConfigError::new(
                        format!("{spath}.port_value"),
                        format!("{p} is not a port"),
                    ))
                }
                _ => return Err(ConfigError::new(format!("{spath}.port_value"), "required")),
            };
            let hostname: Arc<str> = if ep.hostname.is_empty() {
                sa.address.as_str().into()
            } else {
                ep.hostname.as_str().into()
            };
            out.push(DnsTarget {
                name: sa.address.clone(),
                port,
                hostname,
                // Envoy routes to UNKNOWN, HEALTHY and DEGRADED hosts only.
                health_status: super::clusters::health_status(lb.health_status),
                healthy: matches!(lb.health_status, 0 | 1 | 5),
                degraded: lb.health_status == 5,
                excluded: lb.health_status == 3,
                weight: super::clusters::weight(lb, &epath)?,
                locality: i as u32,
                priority: if logical { 0 } else { locality.priority },
                locality_weight: super::clusters::locality_weight(
                    locality,
                    &format!("{lpath}.endpoints[{i}]"),
                )?,
                place: super::clusters::place(locality),
                socket_match: super::clusters::socket_match_labels(lb, locality),
                hash_key: super::clusters::hash_key(lb),
                check_config: super::clusters::check_config(ep, &epath)?,
                lb_metadata: super::subset::lb_metadata(lb.metadata.as_ref()),
                metadata: Arc::new(
                    lb.metadata
                        .as_ref()
                        .map(crate::metadata::Metadata::from_pb)
                        .unwrap_or_default(),
                ),
            });
        }
    }
    Ok(out)
}

/// The resolver: `typed_dns_resolver_config` first, then the deprecated
/// `dns_resolution_config`, then `dns_resolvers` and `use_tcp_for_dns_lookups` (Envoy's order).
#[allow(deprecated)]
fn resolver(c: &cluster::Cluster, path: &str) -> Result<DnsResolverConfig, ConfigError> {
    let mut r = DnsResolverConfig::default();
    if let Some(t) = &c.typed_dns_resolver_config {
        return typed_resolver(t, &format!("{path}.typed_dns_resolver_config"));
    }
    if let Some(d) = &c.dns_resolution_config {
        let dpath = format!("{path}.dns_resolution_config");
        for (i, a) in d.resolvers.iter().enumerate() {
            r.resolvers
                .push(resolver_address(a, &format!("{dpath}.resolvers[{i}]"))?);
        }
        if let Some(o) = &d.dns_resolver_options {
            r.use_tcp = o.use_tcp_for_dns_lookups;
            r.no_search_domains = o.no_default_search_domain;
        }
        return Ok(r);
    }
    for (i, a) in c.dns_resolvers.iter().enumerate() {
        r.resolvers
            .push(resolver_address(a, &format!("{path}.dns_resolvers[{i}]"))?);
    }
    r.use_tcp = c.use_tcp_for_dns_lookups;
    Ok(r)
}

/// `typed_dns_resolver_config`: c-ares's settings.
fn typed_resolver(
    t: &core::TypedExtensionConfig,
    tpath: &str,
) -> Result<DnsResolverConfig, ConfigError> {
    let mut r = DnsResolverConfig::default();
    let any = required(&t.typed_config, &format!("{tpath}.typed_config"))?;
    if type_name(&any.type_url) != CARES {
        return Err(ConfigError::new(
            format!("{tpath}.typed_config"),
            format!("unsupported DNS resolver '{}' (only {CARES})", any.type_url),
        ));
    }
    let cares: CaresDnsResolverConfig = unpack(any, &format!("{tpath}.typed_config"))?;
    let cpath = format!("{tpath}.typed_config");
    for (i, a) in cares.resolvers.iter().enumerate() {
        r.resolvers
            .push(resolver_address(a, &format!("{cpath}.resolvers[{i}]"))?);
    }
    if let Some(o) = &cares.dns_resolver_options {
        r.use_tcp = o.use_tcp_for_dns_lookups;
        r.no_search_domains = o.no_default_search_domain;
    }
    if cares.use_resolvers_as_fallback {
        return Err(ConfigError::unsupported(format!(
            "{cpath}.use_resolvers_as_fallback"
        )));
    }
    if cares.filter_unroutable_families {
        return Err(ConfigError::unsupported(format!(
            "{cpath}.filter_unroutable_families"
        )));
    }
    r.query_timeout = cares
        .query_timeout_seconds
        .as_ref()
        .map(|v| Duration::from_secs(v.value.max(1)));
    r.query_tries = cares.query_tries.as_ref().map(|v| v.value.max(1));
    r.rotate = cares.rotate_nameservers;
    Ok(r)
}

/// A name server's address; port 0 or none is DNS's 53.
fn resolver_address(a: &core::Address, path: &str) -> Result<SocketAddr, ConfigError> {
    let sa = match &a.address {
        Some(core::address::Address::SocketAddress(sa)) => sa,
        _ => return Err(ConfigError::new(path, "a DNS resolver is a socket address")),
    };
    if sa.ipv4_compat {
        return Err(ConfigError::unsupported(format!(
            "{path}.socket_address.ipv4_compat"
        )));
    }
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        ConfigError::new(
            format!("{path}.socket_address.address"),
            format!("'{}' is not an IP address", sa.address),
        )
    })?;
    let port = match sa.port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(0)) | None => 53,
        Some(core::socket_address::PortSpecifier::PortValue(p)) if p <= 65535 => p as u16,
        _ => {
            return Err(ConfigError::new(
                format!("{path}.socket_address.port_value"),
                "not a port",
            ))
        }
    };
    Ok(SocketAddr::new(ip, port))
}
