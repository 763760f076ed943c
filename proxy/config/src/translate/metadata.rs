//! `MetadataMatcher` and `ValueMatcher`.

use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;

use super::http_manager::string_match;
use crate::metadata::{MetadataMatcher, ValueMatcher};
use crate::ConfigError;

/// A `MetadataKey` as (namespace, path), with its constraints checked as Envoy's validation
/// does.
pub(super) fn metadata_key(
    k: &envoy_types::pb::envoy::r#type::metadata::v3::MetadataKey,
    path: &str,
) -> Result<(String, Vec<String>), ConfigError> {
    use envoy_types::pb::envoy::r#type::metadata::v3::metadata_key::path_segment::Segment;
    if k.key.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.key"),
            "value length must be at least 1 characters",
        ));
    }
    if k.path.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.path"),
            "value must contain at least 1 item(s)",
        ));
    }
    let mut keys = Vec::with_capacity(k.path.len());
    for (i, seg) in k.path.iter().enumerate() {
        match &seg.segment {
            Some(Segment::Key(s)) if !s.is_empty() => keys.push(s.clone()),
            _ => {
                return Err(ConfigError::new(
                    format!("{path}.path[{i}].key"),
                    "value length must be at least 1 characters",
                ))
            }
        }
    }
    Ok((k.key.clone(), keys))
}

/// A `MetadataMatcher`, with its constraints checked as Envoy's validation does.
pub(super) fn metadata_matcher(
    m: &matcher::MetadataMatcher,
    path: &str,
) -> Result<MetadataMatcher, ConfigError> {
    if m.filter.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.filter"),
            "value length must be at least 1 characters",
        ));
    }
    if m.path.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.path"),
            "value must contain at least 1 item(s)",
        ));
    }
    let mut keys = Vec::with_capacity(m.path.len());
    for (i, seg) in m.path.iter().enumerate() {
        use matcher::metadata_matcher::path_segment::Segment;
        match &seg.segment {
            Some(Segment::Key(k)) if !k.is_empty() => keys.push(k.clone()),
            Some(Segment::Key(_)) => {
                return Err(ConfigError::new(
                    format!("{path}.path[{i}].key"),
                    "value length must be at least 1 characters",
                ))
            }
            None => {
                return Err(ConfigError::new(
                    format!("{path}.path[{i}]"),
                    "a key is required",
                ))
            }
        }
    }
    let value = match &m.value {
        Some(v) => value_matcher(v, &format!("{path}.value"))?,
        None => return Err(ConfigError::new(format!("{path}.value"), "required")),
    };
    Ok(MetadataMatcher {
        filter: m.filter.clone(),
        path: keys,
        value,
        invert: m.invert,
    })
}

/// A `ValueMatcher`.
pub(super) fn value_matcher(
    m: &matcher::ValueMatcher,
    path: &str,
) -> Result<ValueMatcher, ConfigError> {
    use matcher::value_matcher::MatchPattern as P;
    Ok(match &m.match_pattern {
        None => return Err(ConfigError::new(path, "a match pattern is required")),
        Some(P::NullMatch(_)) => ValueMatcher::Null,
        Some(P::DoubleMatch(d)) => {
            use matcher::double_matcher::MatchPattern as D;
            match &d.match_pattern {
                Some(D::Exact(x)) => ValueMatcher::DoubleExact(*x),
                Some(D::Range(r)) => {
                    if r.start > r.end {
                        return Err(ConfigError::new(
                            format!("{path}.double_match.range"),
                            "range start must not be greater than its end",
                        ));
                    }
                    ValueMatcher::DoubleRange(r.start, r.end)
                }
                None => {
                    return Err(ConfigError::new(
                        format!("{path}.double_match"),
                        "a match pattern is required",
                    ))
                }
            }
        }
        Some(P::StringMatch(s)) => {
            ValueMatcher::String(string_match(s, &format!("{path}.string_match"))?)
        }
        Some(P::BoolMatch(b)) => ValueMatcher::Bool(*b),
        Some(P::PresentMatch(p)) => ValueMatcher::Present(*p),
        Some(P::ListMatch(l)) => {
            use matcher::list_matcher::MatchPattern as L;
            match &l.match_pattern {
                Some(L::OneOf(v)) => ValueMatcher::ListOneOf(Box::new(value_matcher(
                    v,
                    &format!("{path}.list_match.one_of"),
                )?)),
                None => {
                    return Err(ConfigError::new(
                        format!("{path}.list_match"),
                        "a match pattern is required",
                    ))
                }
            }
        }
        Some(P::OrMatch(o)) => {
            if o.value_matchers.len() < 2 {
                return Err(ConfigError::new(
                    format!("{path}.or_match.value_matchers"),
                    "value must contain at least 2 item(s)",
                ));
            }
            ValueMatcher::Or(
                o.value_matchers
                    .iter()
                    .enumerate()
                    .map(|(i, v)| value_matcher(v, &format!("{path}.or_match.value_matchers[{i}]")))
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}
