//! A route's action: `route` (cluster, weighted clusters or a header naming the cluster, with
//! rewrites), `redirect` and `direct_response`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;

use super::super::ConfigError;
use super::duration;
use crate::router::{
    Action, Forward, HostRewrite, PathMatch, PathRedirect, PathRewrite, Redirect, Target,
};

/// Envoy's default `max_direct_response_body_size_bytes`.
pub(super) const MAX_DIRECT_RESPONSE_BODY: u64 = 4096;

/// What translating a route's action gives: the action, the timeout and the upgrade settings
/// (the last two only for `route`).
pub(super) struct Translated {
    pub action: Action,
    pub timeout: Option<Duration>,
    pub retry: Option<std::sync::Arc<crate::router::retry::RetryPolicy>>,
    pub hedge: Option<bool>,
    pub upgrades: Vec<(String, bool)>,
    pub connect_terminate: bool,
    pub connect_allow_post: bool,
    pub grpc_timeout: Option<crate::router::GrpcTimeout>,
}

/// What the routes of one route configuration share.
pub(super) struct Table {
    /// `max_direct_response_body_size_bytes` (default 4 KiB).
    pub max_body: u64,
    /// `cluster_specifier_plugins`, by name: what a route's `cluster_specifier_plugin` names.
    pub plugins: std::collections::HashMap<String, Arc<crate::router::ClusterSpecifier>>,
}

impl Table {
    /// Route configuration `rc`'s, at `path`. As in Envoy, the first plugin of a name is kept.
    pub(super) fn new(rc: &route::RouteConfiguration, path: &str) -> Result<Table, ConfigError> {
        let mut plugins = std::collections::HashMap::new();
        for (i, p) in rc.cluster_specifier_plugins.iter().enumerate() {
            let ppath = format!("{path}.cluster_specifier_plugins[{i}]");
            let specifier = Arc::new(cluster_specifier(p, &ppath)?);
            let name = p.extension.as_ref().map_or("", |e| e.name.as_str());
            plugins.entry(name.to_string()).or_insert(specifier);
        }
        Ok(Table {
            max_body: rc
                .max_direct_response_body_size_bytes
                .as_ref()
                .map_or(MAX_DIRECT_RESPONSE_BODY, |v| u64::from(v.value)),
            plugins,
        })
    }
}

/// The action of route `r` at `path`, whose match is `path_match`. Inline route configurations
/// have their clusters checked against `clusters`.
pub(super) fn translate(
    r: &route::Route,
    path: &str,
    path_match: &PathMatch,
    clusters: Option<&HashSet<String>>,
    table: &Table,
) -> Result<Translated, ConfigError> {
    let max_body = table.max_body;
    let local = |action| Translated {
        action,
        timeout: None,
        retry: None,
        hedge: None,
        upgrades: Vec::new(),
        connect_terminate: false,
        connect_allow_post: false,
        grpc_timeout: None,
    };
    match &r.action {
        Some(route::route::Action::Route(a)) => forward(
            a,
            &format!("{path}.route"),
            path_match,
            (clusters, table),
            &r.name,
        ),
        Some(route::route::Action::Redirect(rd)) => Ok(local(Action::Redirect(redirect(
            rd,
            &format!("{path}.redirect"),
            path_match,
        )?))),
        Some(route::route::Action::DirectResponse(d)) => {
            let dpath = format!("{path}.direct_response");
            if !(200..=599).contains(&d.status) {
                return Err(ConfigError::new(
                    format!("{dpath}.status"),
                    "must be in [200, 600)",
                ));
            }
            let status = http::StatusCode::from_u16(d.status as u16).map_err(|_| {
                ConfigError::new(format!("{dpath}.status"), "not a valid status code")
            })?;
            let body = match &d.body {
                Some(ds) => data_source(ds, &format!("{dpath}.body"))?,
                None => bytes::Bytes::new(),
            };
            if body.len() as u64 > max_body {
                return Err(ConfigError::new(
                    format!("{dpath}.body"),
                    format!(
                        "response body size is {} bytes; maximum is {max_body}",
                        body.len()
                    ),
                ));
            }
            let fpath = format!("{dpath}.body_format");
            // A text source without an operator is the body itself, whatever its bytes (Envoy
            // serves images so).
            let constant = match d.body_format.as_ref().and_then(|f| f.format.as_ref()) {
                Some(core::substitution_format_string::Format::TextFormatSource(ds)) => {
                    let bytes = data_source(ds, &format!("{fpath}.text_format_source"))?;
                    (!bytes.contains(&b'%')).then_some(bytes)
                }
                _ => None,
            };
            match (constant, &d.body_format) {
                (Some(bytes), Some(f)) => Ok(local(Action::Direct {
                    status,
                    body: bytes,
                    format: None,
                    content_type: Some(super::http_manager::body_content_type(f, &fpath)?),
                })),
                _ => {
                    let format = d
                        .body_format
                        .as_ref()
                        .map(|f| super::http_manager::body_format(f, &fpath))
                        .transpose()?
                        .map(Arc::new);
                    Ok(local(Action::Direct {
                        status,
                        body,
                        format,
                        content_type: None,
                    }))
                }
            }
        }
        Some(route::route::Action::NonForwardingAction(_)) => Ok(local(Action::NonForwarding)),
        Some(_) => Err(ConfigError::new(
            path,
            "unsupported route action: only route, redirect and direct_response",
        )),
        None => Err(ConfigError::new(
            format!("{path}.route"),
            "an action is required",
        )),
    }
}

/// A `DataSource` read once, at load: inline text or bytes, or a file.
pub(super) fn data_source(ds: &core::DataSource, path: &str) -> Result<bytes::Bytes, ConfigError> {
    use core::data_source::Specifier as S;
    Ok(match &ds.specifier {
        Some(S::InlineString(s)) => bytes::Bytes::from(s.clone()),
        Some(S::InlineBytes(b)) => bytes::Bytes::from(b.clone()),
        Some(S::Filename(f)) => std::fs::read(f).map(bytes::Bytes::from).map_err(|e| {
            ConfigError::new(format!("{path}.filename"), format!("cannot read {f}: {e}"))
        })?,
        Some(S::EnvironmentVariable(_)) => {
            return Err(ConfigError::unsupported(format!(
                "{path}.environment_variable"
            )))
        }
        None => bytes::Bytes::new(),
    })
}

fn forward(
    action: &route::RouteAction,
    apath: &str,
    path_match: &PathMatch,
    (clusters, table): (Option<&HashSet<String>>, &Table),
    route_name: &str,
) -> Result<Translated, ConfigError> {
    super::fields::route_action(action, apath)?;
    use route::route_action::ClusterSpecifier as C;
    let known = |name: &str, at: String| {
        if clusters.is_some_and(|c| !c.contains(name)) {
            return Err(ConfigError::new(at, format!("unknown cluster '{name}'")));
        }
        Ok(())
    };
    let route_criteria = super::subset::criteria(action.metadata_match.as_ref()).map(Arc::new);
    let target = match &action.cluster_specifier {
        Some(C::Cluster(c)) => {
            known(c, format!("{apath}.cluster"))?;
            Target::Cluster(c.clone())
        }
        Some(C::ClusterHeader(h)) => Target::Header(
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                ConfigError::new(format!("{apath}.cluster_header"), "not a valid header name")
            })?,
        ),
        Some(C::WeightedClusters(w)) => {
            let wpath = format!("{apath}.weighted_clusters");
            #[allow(deprecated)]
            let route::WeightedCluster {
                clusters: list,
                total_weight,
                runtime_key_prefix,
                random_value_specifier,
            } = w;
            // total_weight (deprecated): Envoy 1.40 reads the weights' sum instead and
            // ignores it (docs/compatibility.md).
            let _ = total_weight;
            use route::weighted_cluster::RandomValueSpecifier as Rv;
            let random_value = match random_value_specifier {
                None => None,
                Some(Rv::HeaderName(h)) => Some(crate::router::RandomValue::Header(
                    http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(
                        |_| {
                            ConfigError::new(
                                format!("{wpath}.header_name"),
                                "not a valid header name",
                            )
                        },
                    )?,
                )),
                Some(Rv::UseHashPolicy(b)) if b.value => {
                    Some(crate::router::RandomValue::HashPolicy)
                }
                Some(Rv::UseHashPolicy(_)) => None,
            };
            if list.is_empty() {
                return Err(ConfigError::new(
                    format!("{wpath}.clusters"),
                    "at least one cluster is required",
                ));
            }
            let mut out = Vec::new();
            let mut each = Vec::new();
            for (i, c) in list.iter().enumerate() {
                let cpath = format!("{wpath}.clusters[{i}]");
                let cluster_header = match (c.name.is_empty(), c.cluster_header.is_empty()) {
                    (true, true) => {
                        return Err(ConfigError::new(
                            cpath,
                            "At least one of name or cluster_header need to be specified",
                        ))
                    }
                    (false, false) => {
                        return Err(ConfigError::new(
                            cpath,
                            "Only one of name or cluster_header can be specified",
                        ))
                    }
                    (false, true) => {
                        known(&c.name, format!("{cpath}.name"))?;
                        None
                    }
                    (true, false) => Some(
                        http::HeaderName::from_bytes(
                            c.cluster_header.to_ascii_lowercase().as_bytes(),
                        )
                        .map_err(|_| {
                            ConfigError::new(
                                format!("{cpath}.cluster_header"),
                                "not a valid header name",
                            )
                        })?,
                    ),
                };
                out.push((
                    c.name.clone(),
                    u64::from(c.weight.as_ref().map_or(0, |w| w.value)),
                ));
                use route::weighted_cluster::cluster_weight::HostRewriteSpecifier as Hr;
                each.push(crate::router::ClusterChanges {
                    request_headers: header_parser(
                        &c.request_headers_to_add,
                        &c.request_headers_to_remove,
                        &cpath,
                        "request",
                    )?,
                    response_headers: header_parser(
                        &c.response_headers_to_add,
                        &c.response_headers_to_remove,
                        &cpath,
                        "response",
                    )?,
                    // Envoy: the cluster's criteria merged over the route's.
                    metadata_match: match super::subset::criteria(c.metadata_match.as_ref()) {
                        Some(own) => Some(Arc::new(match &route_criteria {
                            Some(r) => crate::model::MatchCriteria {
                                keys: r.merged(&own.keys),
                                fallback_list: own.fallback_list.or(r.fallback_list.clone()),
                            },
                            None => own,
                        })),
                        None => route_criteria.clone(),
                    },
                    host_rewrite: match &c.host_rewrite_specifier {
                        Some(Hr::HostRewriteLiteral(h)) => {
                            Some(http::HeaderValue::from_str(h).map_err(|_| {
                                ConfigError::new(
                                    format!("{cpath}.host_rewrite_literal"),
                                    "not a valid header value",
                                )
                            })?)
                        }
                        None => None,
                    },
                    cluster_header,
                    per_filter: super::ratelimit::per_filter_configs(
                        &c.typed_per_filter_config,
                        &cpath,
                    )?,
                });
            }
            let each = each
                .iter()
                .any(|c| {
                    !c.request_headers.is_empty()
                        || !c.response_headers.is_empty()
                        || c.host_rewrite.is_some()
                        || c.metadata_match != route_criteria
                        || c.cluster_header.is_some()
                        || !c.per_filter.is_empty()
                })
                .then_some(each);
            if out.iter().all(|(_, w)| *w == 0) {
                return Err(ConfigError::new(
                    wpath,
                    "Sum of weights in the weighted_cluster must be greater than 0.",
                ));
            }
            Target::Weighted(Box::new(crate::router::Weighted {
                clusters: out,
                each,
                runtime_key_prefix: (!runtime_key_prefix.is_empty())
                    .then(|| runtime_key_prefix.clone()),
                random_value,
            }))
        }
        Some(C::InlineClusterSpecifierPlugin(p)) => {
            let ppath = format!("{apath}.inline_cluster_specifier_plugin");
            Target::Specifier(Arc::new(cluster_specifier(p, &ppath)?))
        }
        Some(C::ClusterSpecifierPlugin(name)) => match table.plugins.get(name) {
            Some(specifier) => Target::Specifier(specifier.clone()),
            None => {
                return Err(ConfigError::new(
                    format!("{apath}.cluster_specifier_plugin"),
                    format!("Unknown cluster specifier plugin name: {name} is used in the route"),
                ))
            }
        },
        _ => return Err(ConfigError::new(format!("{apath}.cluster"), "required")),
    };
    use route::route_action::ClusterNotFoundResponseCode as Nf;
    let cluster_not_found = match Nf::try_from(action.cluster_not_found_response_code) {
        Ok(Nf::ServiceUnavailable) => http::StatusCode::SERVICE_UNAVAILABLE,
        Ok(Nf::NotFound) => http::StatusCode::NOT_FOUND,
        Ok(Nf::InternalServerError) => http::StatusCode::INTERNAL_SERVER_ERROR,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{apath}.cluster_not_found_response_code"),
                "unknown value",
            ))
        }
    };
    let path_rewrite = match &action.path_rewrite_policy {
        None => path_rewrite(
            &action.prefix_rewrite,
            action.regex_rewrite.as_ref(),
            apath,
            path_match,
        )?,
        Some(_) if !action.prefix_rewrite.is_empty() || action.regex_rewrite.is_some() => {
            return Err(ConfigError::new(
                apath,
                "Specify only one of prefix_rewrite, regex_rewrite or path_rewrite_policy",
            ))
        }
        Some(p) => Some(template_rewrite(p, apath, path_match)?),
    };
    let path_rewrite = match (path_rewrite, action.path_rewrite.as_str()) {
        (p, "") => p,
        (Some(_), _) => {
            return Err(ConfigError::new(
                apath,
                "Specify only one of prefix_rewrite, regex_rewrite or path_rewrite_policy",
            ))
        }
        (None, f) => Some(PathRewrite::Format(std::sync::Arc::new(
            crate::access_log::Format::parse(f).map_err(|e| {
                ConfigError::new(
                    format!("{apath}.path_rewrite"),
                    format!("Failed to create path rewrite formatter: {e}"),
                )
            })?,
        ))),
    };
    use route::route_action::HostRewriteSpecifier as H;
    let host_rewrite = match &action.host_rewrite_specifier {
        None => None,
        Some(H::HostRewriteLiteral(h)) => Some(HostRewrite::Literal(
            http::HeaderValue::from_str(h).map_err(|_| {
                ConfigError::new(
                    format!("{apath}.host_rewrite_literal"),
                    "not a valid header value",
                )
            })?,
        )),
        Some(H::HostRewriteHeader(h)) => Some(HostRewrite::Header(
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                ConfigError::new(
                    format!("{apath}.host_rewrite_header"),
                    "not a valid header name",
                )
            })?,
        )),
        Some(H::AutoHostRewrite(b)) => b.value.then_some(HostRewrite::Auto),
        Some(H::HostRewritePathRegex(r)) => {
            let (re, sub) = regex_substitution(r, &format!("{apath}.host_rewrite_path_regex"))?;
            Some(HostRewrite::PathRegex(Box::new((re, sub))))
        }
        Some(H::HostRewrite(f)) => Some(HostRewrite::Format(std::sync::Arc::new(
            crate::access_log::Format::parse(f).map_err(|e| {
                ConfigError::new(
                    format!("{apath}.host_rewrite"),
                    format!("Failed to create host rewrite formatter: {e}"),
                )
            })?,
        ))),
    };
    let mut upgrades: Vec<(String, bool)> = Vec::new();
    let (mut connect_terminate, mut connect_allow_post) = (false, false);
    for (i, u) in action.upgrade_configs.iter().enumerate() {
        let upath = format!("{apath}.upgrade_configs[{i}]");
        let route::route_action::UpgradeConfig {
            upgrade_type,
            enabled,
            connect_config,
        } = u;
        let kind =
            super::http_manager::upgrade_kind(upgrade_type, &format!("{upath}.upgrade_type"))?;
        // connect_config: CONNECT is terminated here (its fields are checked as the proto's).
        if connect_config.is_some() {
            if kind != "connect" {
                return Err(ConfigError::new(
                    format!("{upath}.connect_config"),
                    "only the CONNECT upgrade type takes a connect_config",
                ));
            }
            connect_terminate = true;
            connect_allow_post = connect_config.as_ref().is_some_and(|c| c.allow_post);
        }
        if upgrades.iter().any(|(t, _)| *t == kind) {
            return Err(ConfigError::new(
                upath,
                format!("Duplicate upgrade {upgrade_type}"),
            ));
        }
        upgrades.push((kind, enabled.as_ref().is_none_or(|v| v.value)));
    }
    let timeout = match &action.timeout {
        Some(d) => duration(d, &format!("{apath}.timeout"))?,
        None => Duration::from_secs(15),
    };
    Ok(Translated {
        action: Action::Forward(Forward {
            high_priority: match core::RoutingPriority::try_from(action.priority) {
                Ok(core::RoutingPriority::Default) => false,
                Ok(core::RoutingPriority::High) => true,
                Err(_) => {
                    return Err(ConfigError::new(
                        format!("{apath}.priority"),
                        "value must be one of the defined enum values",
                    ))
                }
            },
            target,
            cluster_not_found,
            path_rewrite,
            host_rewrite,
            append_x_forwarded_host: action.append_x_forwarded_host,
            rate_limits: {
                let policies = super::ratelimit::policies(
                    &action.rate_limits,
                    &format!("{apath}.rate_limits"),
                    super::ratelimit::Owner::Route,
                )?;
                let include_vh = include_vh_rate_limits(action);
                (include_vh || !policies.is_empty()).then(|| {
                    Box::new(crate::router::RouteRateLimits {
                        policies,
                        include_vh,
                    })
                })
            },
            metadata_match: route_criteria,
            internal_redirect: action
                .internal_redirect_policy
                .as_ref()
                .map(|p| {
                    internal_redirect(p, &format!("{apath}.internal_redirect_policy"), route_name)
                })
                .transpose()?
                .map(Arc::new),
            hash_policy: action
                .hash_policy
                .iter()
                .enumerate()
                .map(|(i, h)| hash_policy(h, &format!("{apath}.hash_policy[{i}]")))
                .collect::<Result<_, _>>()?,
            mirrors: action
                .request_mirror_policies
                .iter()
                .enumerate()
                .map(|(i, m)| mirror(m, &format!("{apath}.request_mirror_policies[{i}]"), &known))
                .collect::<Result<_, _>>()?,
            idle_timeout: action
                .idle_timeout
                .as_ref()
                .map(|d| super::duration(d, &format!("{apath}.idle_timeout")))
                .transpose()?,
            stream_duration: match &action.max_stream_duration {
                None => None,
                Some(m) => {
                    let mpath = format!("{apath}.max_stream_duration");
                    let d = |v: &Option<envoy_types::pb::google::protobuf::Duration>, f: &str| {
                        v.as_ref()
                            .map(|v| super::duration(v, &format!("{mpath}.{f}")))
                            .transpose()
                    };
                    Some(crate::router::StreamDuration {
                        max: d(&m.max_stream_duration, "max_stream_duration")?,
                        grpc_header_max: d(&m.grpc_timeout_header_max, "grpc_timeout_header_max")?,
                        grpc_header_offset: d(
                            &m.grpc_timeout_header_offset,
                            "grpc_timeout_header_offset",
                        )?,
                    })
                }
            },
        }),
        timeout: (!timeout.is_zero()).then_some(timeout),
        retry: action
            .retry_policy
            .as_ref()
            .map(|p| super::retry::policy(p, &format!("{apath}.retry_policy")))
            .transpose()?
            .map(std::sync::Arc::new),
        hedge: action
            .hedge_policy
            .as_ref()
            .map(|h| super::retry::hedge(h, &format!("{apath}.hedge_policy")))
            .transpose()?,
        upgrades,
        connect_terminate,
        connect_allow_post,
        grpc_timeout: grpc_timeout(action, apath)?,
    })
}

/// The deprecated `max_grpc_timeout` and `grpc_timeout_offset`.
#[allow(deprecated)]
fn grpc_timeout(
    action: &route::RouteAction,
    apath: &str,
) -> Result<Option<crate::router::GrpcTimeout>, ConfigError> {
    let Some(max) = &action.max_grpc_timeout else {
        return Ok(None);
    };
    Ok(Some(crate::router::GrpcTimeout {
        max: duration(max, &format!("{apath}.max_grpc_timeout"))?,
        offset: action
            .grpc_timeout_offset
            .as_ref()
            .map(|d| duration(d, &format!("{apath}.grpc_timeout_offset")))
            .transpose()?,
    }))
}

/// One of `hash_policy`.
/// `include_vh_rate_limits` (deprecated in favour of the filters' `vh_rate_limits`, still
/// honoured by Envoy).
#[allow(deprecated)]
fn include_vh_rate_limits(action: &route::RouteAction) -> bool {
    action
        .include_vh_rate_limits
        .as_ref()
        .is_some_and(|v| v.value)
}

pub(super) fn hash_policy(
    h: &route::route_action::HashPolicy,
    path: &str,
) -> Result<crate::router::HashPolicy, ConfigError> {
    use crate::router::HashKind;
    use route::route_action::hash_policy::PolicySpecifier as P;
    let required = |v: &str, field: &str| {
        if v.is_empty() {
            Err(ConfigError::new(format!("{path}.{field}"), "required"))
        } else {
            Ok(())
        }
    };
    let kind = match &h.policy_specifier {
        Some(P::Header(hd)) => {
            let hpath = format!("{path}.header");
            required(&hd.header_name, "header.header_name")?;
            let name = super::http_manager::header_key(
                &hd.header_name,
                &format!("{hpath}.header_name"),
            )?;
            let rewrite = hd
                .regex_rewrite
                .as_ref()
                .map(|r| regex_substitution(r, &format!("{hpath}.regex_rewrite")))
                .transpose()?;
            HashKind::Header { name, rewrite }
        }
        Some(P::Cookie(c)) => {
            required(&c.name, "cookie.name")?;
            let ttl = c
                .ttl
                .as_ref()
                .map(|d| duration(d, &format!("{path}.cookie.ttl")))
                .transpose()?;
            let attributes = c
                .attributes
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    if a.name.is_empty() {
                        return Err(ConfigError::new(
                            format!("{path}.cookie.attributes[{i}].name"),
                            "required",
                        ));
                    }
                    Ok((a.name.clone(), a.value.clone()))
                })
                .collect::<Result<_, _>>()?;
            HashKind::Cookie {
                name: c.name.clone(),
                ttl,
                path: c.path.clone(),
                attributes,
            }
        }
        Some(P::ConnectionProperties(c)) => {
            if !c.source_ip {
                // Envoy leaves such a policy out.
                return Ok(crate::router::HashPolicy {
                    kind: HashKind::Nothing,
                    terminal: h.terminal,
                });
            }
            HashKind::SourceIp
        }
        Some(P::QueryParameter(q)) => {
            required(&q.name, "query_parameter.name")?;
            HashKind::QueryParameter(q.name.clone())
        }
        Some(P::FilterState(f)) => {
            required(&f.key, "filter_state.key")?;
            HashKind::FilterState(f.key.clone())
        }
        None => {
            return Err(ConfigError::new(
                path,
                "one of header, cookie, connection_properties, query_parameter or filter_state is required",
            ))
        }
    };
    Ok(crate::router::HashPolicy {
        kind,
        terminal: h.terminal,
    })
}

/// A route's `path_rewrite_policy`: Envoy's URI template rewriter, which needs the URI template
/// matcher and only its variables.
fn template_rewrite(
    p: &core::TypedExtensionConfig,
    apath: &str,
    path_match: &PathMatch,
) -> Result<PathRewrite, ConfigError> {
    use envoy_types::pb::envoy::extensions::path::rewrite::uri_template::v3::UriTemplateRewriteConfig;
    let tpath = format!("{apath}.path_rewrite_policy.typed_config");
    let any = p
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
    if crate::proto::type_name(&any.type_url)
        != "envoy.extensions.path.rewrite.uri_template.v3.UriTemplateRewriteConfig"
    {
        return Err(ConfigError::new(
            tpath,
            format!("unsupported path rewriter '{}'", p.name),
        ));
    }
    let c: UriTemplateRewriteConfig = crate::proto::unpack(any, &tpath)?;
    let PathMatch::Template(m) = path_match else {
        return Err(ConfigError::new(
            format!("{apath}.path_rewrite_policy"),
            "unable to use envoy.path.rewrite.uri_template.uri_template_rewriter extension without envoy.path.match.uri_template.uri_template_matcher extension",
        ));
    };
    let rw = crate::router::uri_template::RewriteTemplate::parse(&c.path_template_rewrite, m)
        .map_err(|e| {
            ConfigError::new(
                format!("{tpath}.path_template_rewrite"),
                format!(
                    "path_rewrite_policy.path_template_rewrite {} is invalid: {e}",
                    c.path_template_rewrite
                ),
            )
        })?;
    Ok(PathRewrite::Template(rw))
}

/// A route's `internal_redirect_policy`, for the route named `route_name`.
fn internal_redirect(
    p: &route::InternalRedirectPolicy,
    path: &str,
    route_name: &str,
) -> Result<crate::router::InternalRedirect, ConfigError> {
    use crate::router::RedirectPredicate;
    use envoy_types::pb::envoy::extensions::internal_redirect as ir;
    let mut predicates = Vec::with_capacity(p.predicates.len());
    for (i, pred) in p.predicates.iter().enumerate() {
        let tpath = format!("{path}.predicates[{i}].typed_config");
        let any = pred
            .typed_config
            .as_ref()
            .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
        predicates.push(match super::super::proto::type_name(&any.type_url) {
            "envoy.extensions.internal_redirect.allow_listed_routes.v3.AllowListedRoutesConfig" => {
                let c: ir::allow_listed_routes::v3::AllowListedRoutesConfig =
                    super::super::proto::unpack(any, &tpath)?;
                if let Some(j) = c.allowed_route_names.iter().position(String::is_empty) {
                    return Err(ConfigError::new(
                        format!("{tpath}.allowed_route_names[{j}]"),
                        "value length must be at least 1 characters",
                    ));
                }
                RedirectPredicate::AllowListed(c.allowed_route_names)
            }
            "envoy.extensions.internal_redirect.previous_routes.v3.PreviousRoutesConfig" => {
                RedirectPredicate::PreviousRoutes
            }
            "envoy.extensions.internal_redirect.safe_cross_scheme.v3.SafeCrossSchemeConfig" => {
                RedirectPredicate::SafeCrossScheme
            }
            _ => return Err(ConfigError::unsupported(tpath)),
        });
    }
    let mut copy_headers = Vec::with_capacity(p.response_headers_to_copy.len());
    for (i, h) in p.response_headers_to_copy.iter().enumerate() {
        let at = format!("{path}.response_headers_to_copy[{i}]");
        if h.starts_with(':') || h.eq_ignore_ascii_case("host") {
            return Err(ConfigError::new(
                at,
                ":-prefixed headers or Hosts may not be specified here.",
            ));
        }
        copy_headers.push(
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map_err(|_| ConfigError::new(at, "not a valid header name"))?,
        );
    }
    if p.redirect_response_codes.len() > 5 {
        return Err(ConfigError::new(
            format!("{path}.redirect_response_codes"),
            "value must contain no more than 5 item(s)",
        ));
    }
    let mut codes: Vec<u16> = p
        .redirect_response_codes
        .iter()
        .filter(|c| matches!(c, 301 | 302 | 303 | 307 | 308))
        .map(|c| *c as u16)
        .collect();
    if p.redirect_response_codes.is_empty() {
        codes.push(302);
    }
    Ok(crate::router::InternalRedirect {
        max: p.max_internal_redirects.as_ref().map_or(1, |v| v.value),
        codes,
        cross_scheme: p.allow_cross_scheme_redirect,
        predicates,
        copy_headers,
        route_name: route_name.into(),
    })
}

/// `prefix_rewrite` or `regex_rewrite` (at most one, as Envoy requires).
fn path_rewrite(
    prefix: &str,
    regex_rewrite: Option<&matcher::RegexMatchAndSubstitute>,
    path: &str,
    path_match: &PathMatch,
) -> Result<Option<PathRewrite>, ConfigError> {
    if !prefix.is_empty() && regex_rewrite.is_some() {
        return Err(ConfigError::new(
            path,
            "Specify only one of prefix_rewrite, regex_rewrite or path_rewrite_policy",
        ));
    }
    if !prefix.is_empty() {
        if matches!(path_match, PathMatch::Regex(_)) {
            return Err(ConfigError::new(
                format!("{path}.prefix_rewrite"),
                "Cannot use prefix_rewrite with a safe_regex match",
            ));
        }
        return Ok(Some(PathRewrite::Prefix(prefix.to_string())));
    }
    match regex_rewrite {
        None => Ok(None),
        Some(r) => {
            // Unanchored: every match in the path is replaced (RE2's GlobalReplace).
            let (re, sub) = regex_substitution(r, &format!("{path}.regex_rewrite"))?;
            Ok(Some(PathRewrite::Regex(re, sub)))
        }
    }
}

/// A `RegexMatchAndSubstitute`: its pattern compiled, its substitution in Rust's syntax.
pub(super) fn regex_substitution(
    r: &matcher::RegexMatchAndSubstitute,
    path: &str,
) -> Result<(crate::pattern::Regex, String), ConfigError> {
    let pattern = r
        .pattern
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{path}.pattern"), "required"))?;
    let re = crate::pattern::Regex::new(&pattern.regex).map_err(|e| {
        ConfigError::new(
            format!("{path}.pattern.regex"),
            format!("invalid regex: {e}"),
        )
    })?;
    Ok((re, substitution(&r.substitution)))
}

/// An RE2 rewrite string (`\1` for a group, `\\` for a backslash) in Rust's syntax.
fn substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn redirect(
    r: &route::RedirectAction,
    path: &str,
    path_match: &PathMatch,
) -> Result<Redirect, ConfigError> {
    use route::redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as Code, SchemeRewriteSpecifier as S,
    };
    let scheme = match &r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::HttpsRedirect(false)) | None => None,
        Some(S::SchemeRedirect(s)) if s.is_empty() => None,
        Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
    };
    let port = match r.port_redirect {
        0 => None,
        p => Some(
            u16::try_from(p)
                .map_err(|_| ConfigError::new(format!("{path}.port_redirect"), "not a port"))?,
        ),
    };
    let path_redirect = match &r.path_rewrite_specifier {
        None => PathRedirect::Keep,
        Some(P::PathRedirect(p)) if p.is_empty() => PathRedirect::Keep,
        Some(P::PathRedirect(p)) => PathRedirect::Path(p.clone()),
        Some(P::PrefixRewrite(p)) => match path_rewrite(p, None, path, path_match)? {
            Some(rw) => PathRedirect::Rewrite(rw),
            None => PathRedirect::Keep,
        },
        Some(P::RegexRewrite(rr)) => match path_rewrite("", Some(rr), path, path_match)? {
            Some(rw) => PathRedirect::Rewrite(rw),
            None => PathRedirect::Keep,
        },
        Some(P::PathRewrite(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.path_rewrite")))
        }
    };
    let status = match Code::try_from(r.response_code) {
        Ok(Code::MovedPermanently) => http::StatusCode::MOVED_PERMANENTLY,
        Ok(Code::Found) => http::StatusCode::FOUND,
        Ok(Code::SeeOther) => http::StatusCode::SEE_OTHER,
        Ok(Code::TemporaryRedirect) => http::StatusCode::TEMPORARY_REDIRECT,
        Ok(Code::PermanentRedirect) => http::StatusCode::PERMANENT_REDIRECT,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.response_code"),
                "unknown value",
            ))
        }
    };
    Ok(Redirect {
        scheme,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        port,
        path: path_redirect,
        status,
        strip_query: r.strip_query,
    })
}

/// `*_headers_to_add` and `*_headers_to_remove` of one level (`prefix` is `request` or
/// `response`).
/// One of `request_mirror_policies`, checked as Envoy checks it (its messages).
/// The `request_mirror_policies` of a virtual host or a route configuration, for the routes
/// that have none of their own (the most specific non-empty list wins, as in Envoy).
pub(super) fn mirrors(
    list: &[route::route_action::RequestMirrorPolicy],
    path: &str,
    clusters: Option<&HashSet<String>>,
) -> Result<Vec<crate::router::Mirror>, ConfigError> {
    let known = |name: &str, at: String| {
        if clusters.is_some_and(|c| !c.contains(name)) {
            return Err(ConfigError::new(at, format!("unknown cluster '{name}'")));
        }
        Ok(())
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| mirror(m, &format!("{path}.request_mirror_policies[{i}]"), &known))
        .collect()
}

fn mirror(
    m: &route::route_action::RequestMirrorPolicy,
    path: &str,
    known: &dyn Fn(&str, String) -> Result<(), ConfigError>,
) -> Result<crate::router::Mirror, ConfigError> {
    use crate::router::{MirrorHost, MirrorTarget};
    let route::route_action::RequestMirrorPolicy {
        cluster,
        cluster_header,
        runtime_fraction,
        trace_sampled,
        disable_shadow_host_suffix_append,
        request_headers_mutations,
        host_rewrite_literal,
    } = m;
    if trace_sampled.is_some() {
        return Err(ConfigError::unsupported(format!("{path}.trace_sampled")));
    }
    if !request_headers_mutations.is_empty() {
        return Err(ConfigError::unsupported(format!(
            "{path}.request_headers_mutations"
        )));
    }
    let target = match (cluster.is_empty(), cluster_header.is_empty()) {
        (false, true) => {
            known(cluster, format!("{path}.cluster"))?;
            MirrorTarget::Cluster(cluster.clone())
        }
        (true, false) => MirrorTarget::Header(
            http::HeaderName::from_bytes(cluster_header.to_ascii_lowercase().as_bytes()).map_err(
                |_| ConfigError::new(format!("{path}.cluster_header"), "not a valid header name"),
            )?,
        ),
        (false, false) => {
            return Err(ConfigError::new(
                path,
                format!("Only one of cluster '{cluster}' or cluster_header '{cluster_header}' in request mirror policy can be specified"),
            ))
        }
        (true, true) => {
            return Err(ConfigError::new(
                path,
                "Exactly one of cluster or cluster_header in request mirror policy need to be specified",
            ))
        }
    };
    let host = if !host_rewrite_literal.is_empty() {
        MirrorHost::Literal(
            http::HeaderValue::from_str(host_rewrite_literal).map_err(|_| {
                ConfigError::new(
                    format!("{path}.host_rewrite_literal"),
                    "not a valid header value",
                )
            })?,
        )
    } else if *disable_shadow_host_suffix_append {
        MirrorHost::Same
    } else {
        MirrorHost::Suffixed
    };
    Ok(crate::router::Mirror {
        target,
        fraction: runtime_fraction
            .as_ref()
            .map(|f| super::http_manager::runtime_fraction(f, &format!("{path}.runtime_fraction")))
            .transpose()?,
        host,
    })
}

pub(super) fn header_parser(
    add: &[core::HeaderValueOption],
    remove: &[String],
    path: &str,
    prefix: &str,
) -> Result<std::sync::Arc<crate::router::HeaderParser>, ConfigError> {
    use crate::router::header_parser::HeaderParser;
    let mut parser = HeaderParser::default();
    for (i, r) in remove.iter().enumerate() {
        parser
            .remove
            .push(name(r, format!("{path}.{prefix}_headers_to_remove[{i}]"))?);
    }
    add_options(&mut parser, add, &format!("{path}.{prefix}_headers_to_add"))?;
    Ok(std::sync::Arc::new(parser))
}

/// A list of `HeaderValueOption`s alone (a filter's headers to add), at `field`.
pub(super) fn header_adds(
    add: &[core::HeaderValueOption],
    field: &str,
) -> Result<crate::router::HeaderParser, ConfigError> {
    let mut parser = crate::router::HeaderParser::default();
    add_options(&mut parser, add, field)?;
    Ok(parser)
}

/// `parser` where no stream is there to render values: one with operators is refused, naming
/// the first at `field` (its `*_headers_to_add`).
pub(super) fn fixed_values(
    parser: crate::router::HeaderParser,
    field: &str,
) -> Result<crate::router::HeaderParser, ConfigError> {
    use crate::router::header_parser::HeaderText;
    match parser
        .add
        .iter()
        .position(|(_, v, _, _)| matches!(v, HeaderText::Format(_)))
    {
        Some(i) => Err(ConfigError::new(
            format!("{field}[{i}].header.value"),
            "unsupported: substitution operators (%...%) here",
        )),
        None => Ok(parser),
    }
}

/// A header value: fixed, or a format of substitution operators (`%%` is a literal `%`).
pub(super) fn header_text(
    text: &str,
    at: &str,
) -> Result<crate::router::header_parser::HeaderText, ConfigError> {
    use crate::router::header_parser::HeaderText;
    let invalid = || ConfigError::new(at, "not a valid header value");
    if !text.replace("%%", "").contains('%') {
        return http::HeaderValue::from_str(&text.replace("%%", "%"))
            .map(HeaderText::Fixed)
            .map_err(|_| invalid());
    }
    // The literal text around the operators must be valid in a header on its own.
    if text.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(invalid());
    }
    let format = crate::access_log::Format::parse(text).map_err(|e| ConfigError::new(at, e))?;
    Ok(HeaderText::Format(std::sync::Arc::new(format)))
}

/// A header name a configuration may add or remove.
fn name(n: &str, at: String) -> Result<http::HeaderName, ConfigError> {
    if n.starts_with(':') || n.eq_ignore_ascii_case("host") {
        return Err(ConfigError::new(
            at,
            ":-prefixed or host headers may not be modified",
        ));
    }
    http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
        .map_err(|_| ConfigError::new(at, "not a valid header name"))
}

fn add_options(
    parser: &mut crate::router::HeaderParser,
    add: &[core::HeaderValueOption],
    field: &str,
) -> Result<(), ConfigError> {
    use crate::router::header_parser::AppendAction;
    use core::header_value_option::HeaderAppendAction as A;
    for (i, o) in add.iter().enumerate() {
        let opath = format!("{field}[{i}]");
        #[allow(deprecated)]
        let core::HeaderValueOption {
            header,
            append,
            append_action,
            keep_empty_value,
        } = o;
        let h = header
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{opath}.header"), "required"))?;
        let key = name(&h.key, format!("{opath}.header.key"))?;
        let raw = if h.raw_value.is_empty() {
            h.value.as_bytes().to_vec()
        } else {
            h.raw_value.clone()
        };
        let vpath = format!("{opath}.header.value");
        let value = match std::str::from_utf8(&raw) {
            Ok(text) => header_text(text, &vpath)?,
            // Bytes that are not text hold no operators.
            Err(_) => http::HeaderValue::from_bytes(&raw)
                .map(crate::router::header_parser::HeaderText::Fixed)
                .map_err(|_| ConfigError::new(vpath, "not a valid header value"))?,
        };
        let action = match (append, A::try_from(*append_action)) {
            (Some(_), Ok(a)) if a != A::AppendIfExistsOrAdd => {
                return Err(ConfigError::new(
                    opath,
                    "Both append and append_action are set and it's not allowed",
                ))
            }
            (Some(a), _) if a.value => AppendAction::AppendIfExistsOrAdd,
            (Some(_), _) => AppendAction::OverwriteIfExistsOrAdd,
            (None, Ok(A::AppendIfExistsOrAdd)) => AppendAction::AppendIfExistsOrAdd,
            (None, Ok(A::AddIfAbsent)) => AppendAction::AddIfAbsent,
            (None, Ok(A::OverwriteIfExistsOrAdd)) => AppendAction::OverwriteIfExistsOrAdd,
            (None, Ok(A::OverwriteIfExists)) => AppendAction::OverwriteIfExists,
            (None, Err(_)) => {
                return Err(ConfigError::new(
                    format!("{opath}.append_action"),
                    "unknown value",
                ))
            }
        };
        parser.add.push((key, value, action, *keep_empty_value));
    }
    Ok(())
}

/// A cluster specifier plugin: Envoy's matcher (the matching API over request headers, each
/// action a `ClusterAction`) or its Lua script. Other plugins are refused.
fn cluster_specifier(
    p: &route::ClusterSpecifierPlugin,
    path: &str,
) -> Result<crate::router::ClusterSpecifier, ConfigError> {
    use envoy_types::pb::envoy::extensions::router::cluster_specifiers::matcher::v3 as m;
    let epath = format!("{path}.extension");
    let ext = p
        .extension
        .as_ref()
        .ok_or_else(|| ConfigError::new(&epath, "required"))?;
    if ext.name.is_empty() {
        return Err(ConfigError::new(
            format!("{epath}.name"),
            "value length must be at least 1 characters",
        ));
    }
    let tpath = format!("{epath}.typed_config");
    let any = ext
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
    match super::super::proto::type_name(&any.type_url) {
        "envoy.extensions.router.cluster_specifiers.matcher.v3.MatcherClusterSpecifier" => {}
        "envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig" => {
            use envoy_types::pb::envoy::extensions::router::cluster_specifiers::lua::v3::LuaConfig;
            let c: LuaConfig = super::super::proto::unpack(any, &tpath)?;
            let spath = format!("{tpath}.source_code");
            let source = match &c.source_code {
                Some(ds) => data_source(ds, &spath)?,
                None => return Err(ConfigError::new(spath, "required")),
            };
            let source = String::from_utf8(source.to_vec())
                .map_err(|_| ConfigError::new(&spath, "not UTF-8 text"))?;
            let lua = crate::lua::LuaSpecifier::new(source, c.default_cluster.clone())
                .map_err(|e| ConfigError::new(&spath, e))?;
            return Ok(crate::router::ClusterSpecifier::Lua(lua));
        }
        _ => {
            return Err(ConfigError::new(
                tpath,
                format!("unsupported cluster specifier plugin ({})", any.type_url),
            ))
        }
    }
    let spec: m::MatcherClusterSpecifier = super::super::proto::unpack(any, &tpath)?;
    let mpath = format!("{tpath}.cluster_matcher");
    let matcher = spec
        .cluster_matcher
        .as_ref()
        .ok_or_else(|| ConfigError::new(&mpath, "required"))?;
    let action = |c: &envoy_types::pb::xds::core::v3::TypedExtensionConfig,
                  apath: &str|
     -> Result<String, ConfigError> {
        let tpath = format!("{apath}.typed_config");
        let any = c
            .typed_config
            .as_ref()
            .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
        let a: m::ClusterAction = super::super::proto::unpack(any, &tpath)?;
        if a.cluster.is_empty() {
            return Err(ConfigError::new(
                format!("{tpath}.cluster"),
                "value length must be at least 1 characters",
            ));
        }
        Ok(a.cluster)
    };
    super::matcher::matcher(matcher, &mpath, super::matcher::Domain::Cluster, &action)
        .map(crate::router::ClusterSpecifier::Matcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re2_substitutions_become_rust_ones() {
        assert_eq!(substitution(r"/v2/\1/x"), "/v2/${1}/x");
        assert_eq!(substitution(r"a\\b$c"), r"a\b$$c");
        let re = crate::pattern::Regex::new("^/a/([^/]+)").expect("regex");
        assert_eq!(
            re.replace_all("/a/b/c", substitution(r"/z/\1").as_str()),
            "/z/b/c"
        );
    }
}
