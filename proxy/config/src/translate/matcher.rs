//! `xds.type.matcher.v3.Matcher` into [`crate::matcher::Matcher`]: the inputs and matchers
//! skiff reads; any other (CEL, metadata, filter state, `keep_matching`) is refused by path.

use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3 as xds;

use super::super::proto::{type_name, unpack};
use super::super::ConfigError;
use crate::matcher::{FieldMatcher, Input, InputMatch, Matcher, OnMatch, Predicate, Tree, TreeMap};
use crate::model::StringMatch;

/// An action's translation.
pub(super) type ActionFn<'a, A> = &'a dyn Fn(&TypedExtensionConfig, &str) -> Result<A, ConfigError>;

/// What a matcher matches, which decides the inputs it may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Domain {
    /// Requests (RBAC): their headers and their connection's addresses and server name.
    Http,
    /// Connections (a listener's filter chains): their addresses, server name and protocols.
    Network,
    /// Datagrams (a UDP proxy's routes): their addresses and ports only.
    Udp,
    /// Requests as a virtual host picks their route: their headers only, as in Envoy.
    Route,
    /// Requests as a route's cluster specifier picks their cluster: their headers (Envoy's
    /// network inputs too, which skiff refuses here).
    Cluster,
}

/// A matcher whose actions `action` translates.
pub(super) fn matcher<A>(
    m: &xds::Matcher,
    path: &str,
    domain: Domain,
    action: ActionFn<'_, A>,
) -> Result<Matcher<A>, ConfigError> {
    use xds::matcher::MatcherType;
    let list = match &m.matcher_type {
        Some(MatcherType::MatcherList(l)) => {
            let mut out = Vec::new();
            for (i, f) in l.matchers.iter().enumerate() {
                let fpath = format!("{path}.matcher_list.matchers[{i}]");
                let p = f
                    .predicate
                    .as_ref()
                    .ok_or_else(|| ConfigError::new(format!("{fpath}.predicate"), "required"))?;
                let o = f
                    .on_match
                    .as_ref()
                    .ok_or_else(|| ConfigError::new(format!("{fpath}.on_match"), "required"))?;
                out.push(FieldMatcher {
                    predicate: predicate(p, &format!("{fpath}.predicate"), domain)?,
                    on_match: on_match(o, &format!("{fpath}.on_match"), domain, action)?,
                });
            }
            if out.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.matcher_list.matchers"),
                    "value must contain at least 1 item(s)",
                ));
            }
            (out, None)
        }
        Some(MatcherType::MatcherTree(t)) => (
            Vec::new(),
            Some(tree(t, &format!("{path}.matcher_tree"), domain, action)?),
        ),
        None => (Vec::new(), None),
    };
    let (list, tree) = list;
    let on_no_match = m
        .on_no_match
        .as_ref()
        .map(|o| on_match(o, &format!("{path}.on_no_match"), domain, action).map(Box::new))
        .transpose()?;
    Ok(Matcher {
        list,
        tree,
        on_no_match,
    })
}

fn tree<A>(
    t: &xds::matcher::MatcherTree,
    path: &str,
    domain: Domain,
    action: ActionFn<'_, A>,
) -> Result<Tree<A>, ConfigError> {
    use xds::matcher::matcher_tree::TreeType;
    let input = input(
        t.input
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{path}.input"), "required"))?,
        &format!("{path}.input"),
        domain,
    )?;
    let entries = |m: &xds::matcher::matcher_tree::MatchMap, field: &str| {
        let mut keys: Vec<&String> = m.map.keys().collect();
        keys.sort();
        if keys.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.{field}.map"),
                "value must contain at least 1 item(s)",
            ));
        }
        keys.into_iter()
            .map(|k| {
                let o = on_match(
                    &m.map[k],
                    &format!("{path}.{field}.map[\"{k}\"]"),
                    domain,
                    action,
                )?;
                Ok((k.clone(), o))
            })
            .collect::<Result<Vec<_>, ConfigError>>()
    };
    let map = match &t.tree_type {
        Some(TreeType::ExactMatchMap(m)) => {
            TreeMap::Exact(entries(m, "exact_match_map")?.into_iter().collect())
        }
        Some(TreeType::PrefixMatchMap(m)) => {
            let mut list = entries(m, "prefix_match_map")?;
            list.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            TreeMap::Prefix(list)
        }
        Some(TreeType::CustomMatch(c)) => TreeMap::Ip(ip_matcher(
            c,
            &format!("{path}.custom_match"),
            domain,
            action,
        )?),
        None => return Err(ConfigError::new(path, "a tree type is required")),
    };
    Ok(Tree { input, map })
}

/// An `xds.type.matcher.v3.IPMatcher`: its ranges, the longest first.
#[allow(clippy::type_complexity)]
fn ip_matcher<A>(
    c: &TypedExtensionConfig,
    path: &str,
    domain: Domain,
    action: ActionFn<'_, A>,
) -> Result<Vec<(crate::model::CidrRange, bool, OnMatch<A>)>, ConfigError> {
    let tpath = format!("{path}.typed_config");
    let any = c
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
    if type_name(&any.type_url) != "xds.type.matcher.v3.IPMatcher" {
        return Err(ConfigError::unsupported(tpath));
    }
    let m: crate::istio::IpMatcher = unpack(any, &tpath)?;
    let mut out = Vec::new();
    for (i, r) in m.range_matchers.iter().enumerate() {
        let rpath = format!("{tpath}.range_matchers[{i}]");
        let o = r
            .on_match
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{rpath}.on_match"), "required"))?;
        let ranges: Vec<envoy_types::pb::envoy::config::core::v3::CidrRange> = r
            .ranges
            .iter()
            .map(|c| envoy_types::pb::envoy::config::core::v3::CidrRange {
                address_prefix: c.address_prefix.clone(),
                prefix_len: c.prefix_len,
            })
            .collect();
        for range in super::cidr_ranges(&ranges, &format!("{rpath}.ranges"))? {
            // Each range gets its own copy of what it leads to.
            let o = on_match(o, &format!("{rpath}.on_match"), domain, action)?;
            out.push((range, r.exclusive, o));
        }
    }
    out.sort_by_key(|(r, _, _)| std::cmp::Reverse(r.prefix_len));
    Ok(out)
}

fn on_match<A>(
    o: &xds::matcher::OnMatch,
    path: &str,
    domain: Domain,
    action: ActionFn<'_, A>,
) -> Result<OnMatch<A>, ConfigError> {
    use xds::matcher::on_match::OnMatch as O;
    if o.keep_matching {
        return Err(ConfigError::unsupported(format!("{path}.keep_matching")));
    }
    match &o.on_match {
        Some(O::Action(a)) => Ok(OnMatch::Action(action(a, &format!("{path}.action"))?)),
        Some(O::Matcher(m)) => Ok(OnMatch::Matcher(Box::new(matcher(
            m,
            &format!("{path}.matcher"),
            domain,
            action,
        )?))),
        None => Err(ConfigError::new(path, "an action or a matcher is required")),
    }
}

fn predicate(
    p: &xds::matcher::matcher_list::Predicate,
    path: &str,
    domain: Domain,
) -> Result<Predicate, ConfigError> {
    use xds::matcher::matcher_list::predicate::{single_predicate, MatchType};
    let list = |l: &xds::matcher::matcher_list::predicate::PredicateList,
                field: &str|
     -> Result<Vec<Predicate>, ConfigError> {
        if l.predicate.len() < 2 {
            return Err(ConfigError::new(
                format!("{path}.{field}.predicate"),
                "value must contain at least 2 item(s)",
            ));
        }
        l.predicate
            .iter()
            .enumerate()
            .map(|(i, p)| predicate(p, &format!("{path}.{field}.predicate[{i}]"), domain))
            .collect()
    };
    Ok(match &p.match_type {
        Some(MatchType::SinglePredicate(s)) => {
            let spath = format!("{path}.single_predicate");
            let input = input(
                s.input
                    .as_ref()
                    .ok_or_else(|| ConfigError::new(format!("{spath}.input"), "required"))?,
                &format!("{spath}.input"),
                domain,
            )?;
            let m = match &s.matcher {
                Some(single_predicate::Matcher::ValueMatch(v)) => {
                    InputMatch::Value(string_match(v, &format!("{spath}.value_match"))?)
                }
                Some(single_predicate::Matcher::CustomMatch(c)) => {
                    custom(c, &format!("{spath}.custom_match"))?
                }
                None => return Err(ConfigError::new(format!("{spath}.value_match"), "required")),
            };
            Predicate::Single(input, m)
        }
        Some(MatchType::OrMatcher(l)) => Predicate::Or(list(l, "or_matcher")?),
        Some(MatchType::AndMatcher(l)) => Predicate::And(list(l, "and_matcher")?),
        Some(MatchType::NotMatcher(p)) => Predicate::Not(Box::new(predicate(
            p,
            &format!("{path}.not_matcher"),
            domain,
        )?)),
        None => return Err(ConfigError::new(path, "a predicate is required")),
    })
}

fn input(c: &TypedExtensionConfig, path: &str, domain: Domain) -> Result<Input, ConfigError> {
    let tpath = format!("{path}.typed_config");
    let any = c
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
    const NET: &str = "envoy.extensions.matching.common_inputs.network.v3.";
    let name = type_name(&any.type_url);
    if domain == Domain::Cluster && name != "envoy.type.matcher.v3.HttpRequestHeaderMatchInput" {
        return Err(ConfigError::unsupported(tpath));
    }
    if domain == Domain::Route && name != "envoy.type.matcher.v3.HttpRequestHeaderMatchInput" {
        return Err(ConfigError::new(
            tpath,
            format!(
                "Route table can only match on request headers, saw {}",
                any.type_url
            ),
        ));
    }
    Ok(match name {
        "envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
            if matches!(domain, Domain::Http | Domain::Route | Domain::Cluster) =>
        {
            let h: envoy_types::pb::envoy::r#type::matcher::v3::HttpRequestHeaderMatchInput =
                unpack(any, &tpath)?;
            Input::RequestHeader(super::http_manager::header_key(
                &h.header_name,
                &format!("{tpath}.header_name"),
            )?)
        }
        t if t.starts_with(NET) => match &t[NET.len()..] {
            "SourceIPInput" => Input::SourceIp,
            "SourcePortInput" => Input::SourcePort,
            "DirectSourceIPInput" => Input::DirectSourceIp,
            "DestinationIPInput" => Input::DestinationIp,
            "DestinationPortInput" => Input::DestinationPort,
            // A datagram has no server name.
            "ServerNameInput" if domain != Domain::Udp => Input::ServerName,
            // What listener filters detect: known when chains are picked, not to a request's
            // matcher in skiff.
            "TransportProtocolInput" if domain == Domain::Network => Input::TransportProtocol,
            "ApplicationProtocolInput" if domain == Domain::Network => Input::ApplicationProtocol,
            "SourceTypeInput" if domain == Domain::Network => Input::SourceType,
            // A request's dynamic metadata (what its filters wrote).
            "DynamicMetadataInput" if domain == Domain::Http => {
                use envoy_types::pb::envoy::extensions::matching::common_inputs::network::v3::DynamicMetadataInput;
                let m: DynamicMetadataInput = unpack(any, &tpath)?;
                if m.filter.is_empty() {
                    return Err(ConfigError::new(
                        format!("{tpath}.filter"),
                        "value length must be at least 1 characters",
                    ));
                }
                if m.path.is_empty() {
                    return Err(ConfigError::new(
                        format!("{tpath}.path"),
                        "value must contain at least 1 item(s)",
                    ));
                }
                let mut path = Vec::with_capacity(m.path.len());
                for (i, seg) in m.path.iter().enumerate() {
                    use envoy_types::pb::envoy::extensions::matching::common_inputs::network::v3::dynamic_metadata_input::path_segment::Segment;
                    match &seg.segment {
                        Some(Segment::Key(k)) if !k.is_empty() => path.push(k.clone()),
                        _ => {
                            return Err(ConfigError::new(
                                format!("{tpath}.path[{i}].key"),
                                "value length must be at least 1 characters",
                            ))
                        }
                    }
                }
                Input::DynamicMetadata {
                    filter: m.filter,
                    path,
                }
            }
            _ => return Err(ConfigError::unsupported(tpath)),
        },
        _ => return Err(ConfigError::unsupported(tpath)),
    })
}

fn custom(c: &TypedExtensionConfig, path: &str) -> Result<InputMatch, ConfigError> {
    let tpath = format!("{path}.typed_config");
    let any = c
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
    match type_name(&any.type_url) {
        "envoy.extensions.matching.input_matchers.ip.v3.Ip" => {
            let ip: envoy_types::pb::envoy::extensions::matching::input_matchers::ip::v3::Ip =
                unpack(any, &tpath)?;
            if ip.cidr_ranges.is_empty() {
                return Err(ConfigError::new(
                    format!("{tpath}.cidr_ranges"),
                    "value must contain at least 1 item(s)",
                ));
            }
            // stat_prefix names stats of the matcher's own (not kept).
            Ok(InputMatch::Ip(super::cidr_ranges(
                &ip.cidr_ranges,
                &format!("{tpath}.cidr_ranges"),
            )?))
        }
        "envoy.extensions.matching.input_matchers.metadata.v3.Metadata" => {
            use envoy_types::pb::envoy::extensions::matching::input_matchers::metadata::v3::Metadata;
            let m: Metadata = unpack(any, &tpath)?;
            let Some(v) = &m.value else {
                return Err(ConfigError::new(
                    format!("{tpath}.value"),
                    "MetadataValidationError.Value: value is required",
                ));
            };
            Ok(InputMatch::Metadata {
                value: super::metadata::value_matcher(v, &format!("{tpath}.value"))?,
                invert: m.invert,
            })
        }
        _ => Err(ConfigError::unsupported(tpath)),
    }
}

/// An `xds.type.matcher.v3.StringMatcher`, as Envoy's own.
fn string_match(m: &xds::StringMatcher, path: &str) -> Result<StringMatch, ConfigError> {
    use envoy_types::pb::envoy::r#type::matcher::v3 as envoy;
    use xds::string_matcher::MatchPattern as X;
    let pattern = match &m.match_pattern {
        Some(X::Exact(s)) => envoy::string_matcher::MatchPattern::Exact(s.clone()),
        Some(X::Prefix(s)) => envoy::string_matcher::MatchPattern::Prefix(s.clone()),
        Some(X::Suffix(s)) => envoy::string_matcher::MatchPattern::Suffix(s.clone()),
        Some(X::Contains(s)) => envoy::string_matcher::MatchPattern::Contains(s.clone()),
        Some(X::SafeRegex(r)) if r.engine_type.is_none() => {
            return Err(ConfigError::new(
                format!("{path}.safe_regex.engine_type"),
                "is required",
            ))
        }
        Some(X::SafeRegex(r)) => {
            envoy::string_matcher::MatchPattern::SafeRegex(envoy::RegexMatcher {
                regex: r.regex.clone(),
                ..Default::default()
            })
        }
        Some(X::Custom(_)) => return Err(ConfigError::unsupported(format!("{path}.custom"))),
        None => return Err(ConfigError::new(path, "a match pattern is required")),
    };
    super::http_manager::string_match(
        &envoy::StringMatcher {
            ignore_case: m.ignore_case,
            match_pattern: Some(pattern),
        },
        path,
    )
}
