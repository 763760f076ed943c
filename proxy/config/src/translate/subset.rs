//! Subsets: `lb_subset_config`, endpoints' `envoy.lb` metadata and routes' `metadata_match`,
//! compared as Envoy's subset load balancer compares them.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

use super::super::model::{
    LbMetadata, LbPolicy, MatchCriteria, MetaValue, SelectorFallback, SubsetConfig, SubsetFallback,
    SubsetSelector,
};
use super::super::ConfigError;

/// The filter metadata namespace subsets read.
const ENVOY_LB: &str = "envoy.lb";

/// A value's canonical text: equal texts for the values Envoy's `ValueUtil::equal` calls equal.
pub(super) fn meta_value(v: &Value) -> MetaValue {
    MetaValue(Arc::from(canonical(v)))
}

fn canonical(v: &Value) -> String {
    crate::metadata::Value::from_pb(v).canonical()
}

/// An endpoint's `envoy.lb` metadata.
pub(super) fn lb_metadata(md: Option<&Metadata>) -> Arc<LbMetadata> {
    let Some(s) = md.and_then(|m| m.filter_metadata.get(ENVOY_LB)) else {
        return Arc::default();
    };
    Arc::new(LbMetadata(
        s.fields
            .iter()
            .map(|(k, v)| {
                let items = match &v.kind {
                    Some(Kind::ListValue(l)) => l.values.iter().map(meta_value).collect(),
                    _ => Vec::new(),
                };
                (k.clone(), (meta_value(v), items))
            })
            .collect(),
    ))
}

/// A struct's fields as sorted criteria.
fn sorted(s: &Struct) -> Vec<(String, MetaValue)> {
    let m: BTreeMap<&String, MetaValue> =
        s.fields.iter().map(|(k, v)| (k, meta_value(v))).collect();
    m.into_iter().map(|(k, v)| (k.clone(), v)).collect()
}

/// A route's or weighted cluster's `metadata_match`: its `envoy.lb` criteria (the other
/// namespaces are not read, as in Envoy); `None` without them.
pub(super) fn criteria(md: Option<&Metadata>) -> Option<MatchCriteria> {
    let s = md?.filter_metadata.get(ENVOY_LB)?;
    let fallback_list = s.fields.get("fallback_list").map(|v| match &v.kind {
        // A value that is not a list is an empty list; an element that is not a struct, {}.
        Some(Kind::ListValue(l)) => l
            .values
            .iter()
            .map(|e| match &e.kind {
                Some(Kind::StructValue(s)) => sorted(s),
                _ => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
    });
    Some(MatchCriteria {
        keys: sorted(s),
        fallback_list,
    })
}

/// `lb_subset_config`, checked as Envoy checks it; `None` without selectors (then the rest is
/// ignored, as in Envoy).
pub(super) fn subset_config(
    c: &cluster::Cluster,
    policy: &LbPolicy,
    path: &str,
) -> Result<Option<Arc<SubsetConfig>>, ConfigError> {
    use cluster::cluster::lb_subset_config::lb_subset_selector::LbSubsetSelectorFallbackPolicy as Sf;
    use cluster::cluster::lb_subset_config::{
        LbSubsetFallbackPolicy as F, LbSubsetMetadataFallbackPolicy as Mf,
    };
    let Some(s) = &c.lb_subset_config else {
        return Ok(None);
    };
    let spath = format!("{path}.lb_subset_config");
    if c.load_balancing_policy.is_some() {
        return Err(ConfigError::new(
            spath,
            "cluster: load_balancing_policy cannot be combined with lb_subset_config",
        ));
    }
    if s.locality_weight_aware {
        let weighted = c.common_lb_config.as_ref().is_some_and(|l| {
            matches!(
                l.locality_config_specifier,
                Some(cluster::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
            )
        });
        if !weighted {
            return Err(ConfigError::new(
                format!("{spath}.locality_weight_aware"),
                format!("Locality weight aware subset LB requires that a locality_weighted_lb_config be set in {}", c.name),
            ));
        }
    }
    let fallback = match F::try_from(s.fallback_policy) {
        Ok(F::NoFallback) => SubsetFallback::NoFallback,
        Ok(F::AnyEndpoint) => SubsetFallback::AnyEndpoint,
        Ok(F::DefaultSubset) => SubsetFallback::DefaultSubset,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{spath}.fallback_policy"),
                "value must be one of the defined enum values",
            ))
        }
    };
    let fallback_list = match Mf::try_from(s.metadata_fallback_policy) {
        Ok(Mf::MetadataNoFallback) => false,
        Ok(Mf::FallbackList) => true,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{spath}.metadata_fallback_policy"),
                "value must be one of the defined enum values",
            ))
        }
    };
    let mut selectors = Vec::new();
    for (i, sel) in s.subset_selectors.iter().enumerate() {
        let ipath = format!("{spath}.subset_selectors[{i}]");
        let mut keys = sel.keys.clone();
        keys.sort();
        keys.dedup();
        let mut fallback_keys = sel.fallback_keys_subset.clone();
        fallback_keys.sort();
        fallback_keys.dedup();
        let policy = Sf::try_from(sel.fallback_policy).map_err(|_| {
            ConfigError::new(
                format!("{ipath}.fallback_policy"),
                "value must be one of the defined enum values",
            )
        })?;
        // Envoy's checks, in its order.
        let err = |m: &str| Err(ConfigError::new(format!("{ipath}.fallback_keys_subset"), m));
        if policy != Sf::KeysSubset && !fallback_keys.is_empty() {
            return err("fallback_keys_subset can be set only for KEYS_SUBSET fallback_policy");
        }
        if policy == Sf::KeysSubset {
            if fallback_keys.is_empty() {
                return err("fallback_keys_subset cannot be empty");
            }
            if !fallback_keys.iter().all(|k| keys.contains(k)) {
                return err("fallback_keys_subset must be a subset of selector keys");
            }
            if fallback_keys.len() == keys.len() {
                return err("fallback_keys_subset cannot be equal to keys");
            }
        }
        // A selector without keys is dropped, as Envoy drops it.
        if keys.is_empty() {
            continue;
        }
        selectors.push(SubsetSelector {
            keys,
            single_host: sel.single_host_per_subset,
            fallback: match policy {
                Sf::NotDefined => SelectorFallback::NotDefined,
                Sf::NoFallback => SelectorFallback::NoFallback,
                Sf::AnyEndpoint => SelectorFallback::AnyEndpoint,
                Sf::DefaultSubset => SelectorFallback::DefaultSubset,
                Sf::KeysSubset => SelectorFallback::KeysSubset(fallback_keys),
            },
        });
    }
    if selectors.is_empty() {
        return Ok(None);
    }
    if *policy == LbPolicy::ClusterProvided {
        return Err(ConfigError::new(
            format!("{path}.lb_policy"),
            "cluster: LB policy CLUSTER_PROVIDED cannot be combined with lb_subset_config",
        ));
    }
    Ok(Some(Arc::new(SubsetConfig {
        fallback,
        default_subset: s.default_subset.as_ref().map(sorted).unwrap_or_default(),
        selectors,
        panic_mode_any: s.panic_mode_any,
        list_as_any: s.list_as_any,
        fallback_list,
        locality_weight_aware: s.locality_weight_aware,
        scale_locality_weight: s.locality_weight_aware && s.scale_locality_weight,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }
    fn text(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.to_string())),
        }
    }

    #[test]
    fn values_compare_as_envoys() {
        assert_eq!(meta_value(&num(1.0)), meta_value(&num(1.0)));
        assert_eq!(meta_value(&num(0.0)), meta_value(&num(-0.0)));
        assert_ne!(meta_value(&num(1.0)), meta_value(&text("1")));
        assert_ne!(
            meta_value(&text("true")),
            meta_value(&Value {
                kind: Some(Kind::BoolValue(true))
            })
        );
        assert_ne!(meta_value(&text("a,b")), meta_value(&text("a")));
    }
}
