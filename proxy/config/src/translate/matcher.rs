//! `xds.type.matcher.v3.Matcher` into [`crate::matcher::Matcher`]: the inputs and matchers
//! skiff reads; any other (CEL, metadata, filter state, `matcher_tree`, `keep_matching`) is
//! refused by path.

use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3 as xds;

use super::super::proto::{type_name, unpack};
use super::super::ConfigError;
use crate::matcher::{FieldMatcher, Input, InputMatch, Matcher, OnMatch, Predicate};
use crate::model::StringMatch;

/// An action's translation.
pub(super) type ActionFn<'a, A> = &'a dyn Fn(&TypedExtensionConfig, &str) -> Result<A, ConfigError>;

/// A matcher whose actions `action` translates.
pub(super) fn matcher<A>(
    m: &xds::Matcher,
    path: &str,
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
                    predicate: predicate(p, &format!("{fpath}.predicate"))?,
                    on_match: on_match(o, &format!("{fpath}.on_match"), action)?,
                });
            }
            if out.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.matcher_list.matchers"),
                    "value must contain at least 1 item(s)",
                ));
            }
            out
        }
        Some(MatcherType::MatcherTree(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.matcher_tree")))
        }
        None => Vec::new(),
    };
    let on_no_match = m
        .on_no_match
        .as_ref()
        .map(|o| on_match(o, &format!("{path}.on_no_match"), action).map(Box::new))
        .transpose()?;
    Ok(Matcher { list, on_no_match })
}

fn on_match<A>(
    o: &xds::matcher::OnMatch,
    path: &str,
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
            action,
        )?))),
        None => Err(ConfigError::new(path, "an action or a matcher is required")),
    }
}

fn predicate(
    p: &xds::matcher::matcher_list::Predicate,
    path: &str,
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
            .map(|(i, p)| predicate(p, &format!("{path}.{field}.predicate[{i}]")))
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
        Some(MatchType::NotMatcher(p)) => {
            Predicate::Not(Box::new(predicate(p, &format!("{path}.not_matcher"))?))
        }
        None => return Err(ConfigError::new(path, "a predicate is required")),
    })
}

fn input(c: &TypedExtensionConfig, path: &str) -> Result<Input, ConfigError> {
    let tpath = format!("{path}.typed_config");
    let any = c
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
    const NET: &str = "envoy.extensions.matching.common_inputs.network.v3.";
    Ok(match type_name(&any.type_url) {
        "envoy.type.matcher.v3.HttpRequestHeaderMatchInput" => {
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
            "ServerNameInput" => Input::ServerName,
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
