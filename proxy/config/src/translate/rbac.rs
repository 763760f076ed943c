//! `envoy.filters.http.rbac` and its per-route `RBACPerRoute`, checked as Envoy checks them.

use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;

use super::super::ConfigError;
use crate::rbac::{Action, Engine, HttpRbac, MatchAction, Permission, Policy, Principal, Rules};

/// The filter's configuration at `path`.
pub(super) fn filter(c: &http_rbac::Rbac, path: &str) -> Result<HttpRbac, ConfigError> {
    let http_rbac::Rbac {
        rules,
        rules_stat_prefix,
        matcher,
        shadow_rules,
        shadow_matcher,
        shadow_rules_stat_prefix,
        track_per_rule_stats,
    } = c;
    if *track_per_rule_stats {
        return Err(ConfigError::unsupported(format!(
            "{path}.track_per_rule_stats"
        )));
    }
    let engine = |rules: &Option<rbac_pb::Rbac>,
                  matcher: &Option<envoy_types::pb::xds::r#type::matcher::v3::Matcher>,
                  names: (&str, &str)|
     -> Result<Option<Engine>, ConfigError> {
        Ok(match (rules, matcher) {
            (Some(r), _) => Some(Engine::Rules(translate_rules(
                r,
                &format!("{path}.{}", names.0),
            )?)),
            (None, Some(m)) => Some(Engine::Matcher(super::matcher::matcher(
                m,
                &format!("{path}.{}", names.1),
                super::matcher::Domain::Http,
                &match_action,
            )?)),
            (None, None) => None,
        })
    };
    Ok(HttpRbac {
        rules: engine(rules, matcher, ("rules", "matcher"))?,
        shadow: engine(
            shadow_rules,
            shadow_matcher,
            ("shadow_rules", "shadow_matcher"),
        )?,
        rules_stat_prefix: rules_stat_prefix.clone(),
        shadow_stat_prefix: shadow_rules_stat_prefix.clone(),
    })
}

/// `envoy.filters.network.rbac` at `path`.
pub(super) fn network(
    c: &envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac,
    path: &str,
) -> Result<crate::rbac::NetworkRbac, ConfigError> {
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::rbac::EnforcementType;
    if c.matcher.is_some() {
        return Err(ConfigError::unsupported(format!("{path}.matcher")));
    }
    if c.shadow_matcher.is_some() {
        return Err(ConfigError::unsupported(format!("{path}.shadow_matcher")));
    }
    if c.delay_deny.is_some() {
        return Err(ConfigError::unsupported(format!("{path}.delay_deny")));
    }
    if c.stat_prefix.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.stat_prefix"),
            "value length must be at least 1 characters",
        ));
    }
    // The rules read nothing a connection's data changes (a connection has no dynamic
    // metadata in skiff: metadata matchers see none), so judging them again as data arrives
    // (CONTINUOUS) gives the first verdict again.
    if EnforcementType::try_from(c.enforcement_type).is_err() {
        return Err(ConfigError::new(
            format!("{path}.enforcement_type"),
            "value must be one of the defined enum values",
        ));
    }
    Ok(crate::rbac::NetworkRbac {
        rules: c
            .rules
            .as_ref()
            .map(|r| translate_rules(r, &format!("{path}.rules")))
            .transpose()?,
        shadow: c
            .shadow_rules
            .as_ref()
            .map(|r| translate_rules(r, &format!("{path}.shadow_rules")))
            .transpose()?,
        stat_prefix: c.stat_prefix.clone(),
        shadow_stat_prefix: c.shadow_rules_stat_prefix.clone(),
    })
}

/// `RBACPerRoute`: its own configuration, or none (the filter off for the route).
pub(super) fn per_route(
    c: &http_rbac::RbacPerRoute,
    path: &str,
) -> Result<Option<HttpRbac>, ConfigError> {
    c.rbac
        .as_ref()
        .map(|r| filter(r, &format!("{path}.rbac")))
        .transpose()
}

/// A matcher's action: `envoy.config.rbac.v3.Action`.
fn match_action(
    c: &envoy_types::pb::xds::core::v3::TypedExtensionConfig,
    path: &str,
) -> Result<MatchAction, ConfigError> {
    let tpath = format!("{path}.typed_config");
    let any = c
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
    if super::super::proto::type_name(&any.type_url) != "envoy.config.rbac.v3.Action" {
        return Err(ConfigError::new(
            &tpath,
            format!("unsupported action ({})", any.type_url),
        ));
    }
    let a: rbac_pb::Action = super::super::proto::unpack(any, &tpath)?;
    let action = match rbac_pb::rbac::Action::try_from(a.action) {
        Ok(rbac_pb::rbac::Action::Allow) => Action::Allow,
        Ok(rbac_pb::rbac::Action::Deny) => Action::Deny,
        Ok(rbac_pb::rbac::Action::Log) => Action::Log,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{tpath}.action"),
                "value must be one of the defined enum values",
            ))
        }
    };
    Ok(MatchAction {
        name: a.name,
        action,
    })
}

fn translate_rules(r: &rbac_pb::Rbac, path: &str) -> Result<Rules, ConfigError> {
    if r.audit_logging_options.is_some() {
        return Err(ConfigError::unsupported(format!(
            "{path}.audit_logging_options"
        )));
    }
    let action = match rbac_pb::rbac::Action::try_from(r.action) {
        Ok(rbac_pb::rbac::Action::Allow) => Action::Allow,
        Ok(rbac_pb::rbac::Action::Deny) => Action::Deny,
        Ok(rbac_pb::rbac::Action::Log) => Action::Log,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.action"),
                "value must be one of the defined enum values",
            ))
        }
    };
    let mut names: Vec<&String> = r.policies.keys().collect();
    names.sort();
    let mut policies = Vec::with_capacity(names.len());
    for name in names {
        let p = &r.policies[name];
        let ppath = format!("{path}.policies[\"{name}\"]");
        if p.condition.is_some() {
            return Err(ConfigError::unsupported(format!("{ppath}.condition")));
        }
        if p.checked_condition.is_some() {
            return Err(ConfigError::unsupported(format!(
                "{ppath}.checked_condition"
            )));
        }
        if p.permissions.is_empty() {
            return Err(ConfigError::new(
                format!("{ppath}.permissions"),
                "value must contain at least 1 item(s)",
            ));
        }
        if p.principals.is_empty() {
            return Err(ConfigError::new(
                format!("{ppath}.principals"),
                "value must contain at least 1 item(s)",
            ));
        }
        let permissions = p
            .permissions
            .iter()
            .enumerate()
            .map(|(i, x)| permission(x, &format!("{ppath}.permissions[{i}]")))
            .collect::<Result<_, _>>()?;
        let principals = p
            .principals
            .iter()
            .enumerate()
            .map(|(i, x)| principal(x, &format!("{ppath}.principals[{i}]")))
            .collect::<Result<_, _>>()?;
        policies.push((
            name.clone(),
            Policy {
                permissions,
                principals,
            },
        ));
    }
    Ok(Rules { action, policies })
}

fn permission(p: &rbac_pb::Permission, path: &str) -> Result<Permission, ConfigError> {
    use rbac_pb::permission::Rule as R;
    let set = |rules: &[rbac_pb::Permission], field: &str| {
        if rules.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.{field}.rules"),
                "value must contain at least 1 item(s)",
            ));
        }
        rules
            .iter()
            .enumerate()
            .map(|(i, x)| permission(x, &format!("{path}.{field}.rules[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    #[allow(deprecated)]
    Ok(match &p.rule {
        Some(R::Any(true)) => Permission::Any,
        Some(R::Any(false)) => {
            return Err(ConfigError::new(
                format!("{path}.any"),
                "value must equal true",
            ))
        }
        Some(R::AndRules(s)) => Permission::And(set(&s.rules, "and_rules")?),
        Some(R::OrRules(s)) => Permission::Or(set(&s.rules, "or_rules")?),
        Some(R::NotRule(n)) => {
            Permission::Not(Box::new(permission(n, &format!("{path}.not_rule"))?))
        }
        Some(R::Header(h)) => Permission::Header(super::http_manager::translate_header_match(
            h,
            &format!("{path}.header"),
        )?),
        Some(R::UrlPath(m)) => Permission::UrlPath(path_matcher(m, &format!("{path}.url_path"))?),
        Some(R::DestinationIp(c)) => {
            Permission::DestinationIp(one_cidr(c, &format!("{path}.destination_ip"))?)
        }
        Some(R::DestinationPort(port)) => {
            Permission::DestinationPort(u16::try_from(*port).map_err(|_| {
                ConfigError::new(
                    format!("{path}.destination_port"),
                    "value must be less than or equal to 65535",
                )
            })?)
        }
        Some(R::DestinationPortRange(r)) => {
            if r.start < 0 || r.end > 65536 || r.start > r.end {
                return Err(ConfigError::new(
                    format!("{path}.destination_port_range"),
                    format!("invalid port range [{}, {})", r.start, r.end),
                ));
            }
            Permission::DestinationPortRange(r.start as u32, r.end as u32)
        }
        Some(R::RequestedServerName(m)) => Permission::RequestedServerName(
            super::http_manager::string_match(m, &format!("{path}.requested_server_name"))?,
        ),
        Some(R::Metadata(m)) => Permission::Metadata(super::metadata::metadata_matcher(
            m,
            &format!("{path}.metadata"),
        )?),
        Some(R::SourcedMetadata(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.sourced_metadata")))
        }
        Some(R::Matcher(_)) => return Err(ConfigError::unsupported(format!("{path}.matcher"))),
        Some(R::UriTemplate(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.uri_template")))
        }
        None => return Err(ConfigError::new(path, "a rule is required")),
    })
}

fn principal(p: &rbac_pb::Principal, path: &str) -> Result<Principal, ConfigError> {
    use rbac_pb::principal::Identifier as I;
    let set = |ids: &[rbac_pb::Principal], field: &str| {
        if ids.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.{field}.ids"),
                "value must contain at least 1 item(s)",
            ));
        }
        ids.iter()
            .enumerate()
            .map(|(i, x)| principal(x, &format!("{path}.{field}.ids[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    #[allow(deprecated)]
    Ok(match &p.identifier {
        Some(I::Any(true)) => Principal::Any,
        Some(I::Any(false)) => {
            return Err(ConfigError::new(
                format!("{path}.any"),
                "value must equal true",
            ))
        }
        Some(I::AndIds(s)) => Principal::And(set(&s.ids, "and_ids")?),
        Some(I::OrIds(s)) => Principal::Or(set(&s.ids, "or_ids")?),
        Some(I::NotId(n)) => Principal::Not(Box::new(principal(n, &format!("{path}.not_id"))?)),
        Some(I::Authenticated(a)) => Principal::Authenticated(
            a.principal_name
                .as_ref()
                .map(|m| {
                    super::http_manager::string_match(
                        m,
                        &format!("{path}.authenticated.principal_name"),
                    )
                })
                .transpose()?,
        ),
        Some(I::SourceIp(c)) => Principal::SourceIp(one_cidr(c, &format!("{path}.source_ip"))?),
        Some(I::DirectRemoteIp(c)) => {
            Principal::DirectRemoteIp(one_cidr(c, &format!("{path}.direct_remote_ip"))?)
        }
        Some(I::RemoteIp(c)) => Principal::RemoteIp(one_cidr(c, &format!("{path}.remote_ip"))?),
        Some(I::Header(h)) => Principal::Header(super::http_manager::translate_header_match(
            h,
            &format!("{path}.header"),
        )?),
        Some(I::UrlPath(m)) => Principal::UrlPath(path_matcher(m, &format!("{path}.url_path"))?),
        Some(I::Metadata(m)) => Principal::Metadata(super::metadata::metadata_matcher(
            m,
            &format!("{path}.metadata"),
        )?),
        Some(I::FilterState(m)) => Principal::FilterState(super::filter_state::matcher(
            m,
            &format!("{path}.filter_state"),
        )?),
        Some(I::SourcedMetadata(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.sourced_metadata")))
        }
        Some(I::Custom(_)) => return Err(ConfigError::unsupported(format!("{path}.custom"))),
        None => return Err(ConfigError::new(path, "an identifier is required")),
    })
}

fn path_matcher(
    m: &matcher::PathMatcher,
    path: &str,
) -> Result<crate::model::StringMatch, ConfigError> {
    match &m.rule {
        Some(matcher::path_matcher::Rule::Path(s)) => {
            super::http_manager::string_match(s, &format!("{path}.path"))
        }
        None => Err(ConfigError::new(path, "a path is required")),
    }
}

fn one_cidr(
    c: &envoy_types::pb::envoy::config::core::v3::CidrRange,
    path: &str,
) -> Result<crate::model::CidrRange, ConfigError> {
    let all = super::cidr_ranges(std::slice::from_ref(c), path).map_err(|mut e| {
        e.path = e.path.replacen(&format!("{path}[0]"), path, 1);
        e
    })?;
    all.into_iter()
        .next()
        .ok_or_else(|| ConfigError::new(path, "a CIDR range is required"))
}
