//! Bootstrap fields about running the process rather than traffic: the overload manager,
//! runtime layers, the admin access log, and the fields accepted for what they do not change
//! (docs/compatibility.md).

use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
use envoy_types::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
use envoy_types::pb::google::protobuf::value::Kind;

use super::super::model::{AccessLog, Overload, StatsConfig};
use super::super::proto::{type_name, unpack};
use super::super::ConfigError;
use super::translate_access_log;
use crate::stats::{NameMatch, NameMatchKind, StatsMatcher, Tagging};

/// Whether a runtime value is one skiff can stand behind.
type ValueCheck = fn(&Kind) -> bool;

/// Runtime keys a static layer may set, each because skiff already behaves as the value asks
/// or because the key concerns something skiff does not run. Any other key is refused: a
/// runtime key can change what Envoy does to traffic.
const RUNTIME_KEYS: &[(&str, ValueCheck)] = &[
    // A deprecated listener field skiff refuses anyway.
    (
        "envoy.deprecated_features:envoy.config.listener.v3.Listener.hidden_envoy_deprecated_use_original_dst",
        |_| true,
    ),
    // How Envoy batches its own load-balancer rebuilds.
    ("envoy.reloadable_features.coalesce_lb_rebuilds_on_batch_update", |_| true),
    // The fixed-heap monitor's accounting; skiff has no heap monitor.
    ("envoy.reloadable_features.fixed_heap_use_allocated", |_| true),
    // Regex program size limits: skiff's regex engine has its own size limit.
    ("re2.max_program_size.error_level", |_| true),
    ("re2.max_program_size.warn_level", |_| true),
    // true is Envoy 1.40's default and skiff's behaviour: no address is internal unless
    // internal_address_config lists it.
    ("envoy.reloadable_features.explicit_internal_address_config", |v| {
        matches!(v, Kind::BoolValue(true))
            || matches!(v, Kind::StringValue(s) if s == "true")
    }),
    // The Google gRPC client, which skiff does not run.
    ("envoy.reloadable_features.google_grpc_disable_tls_13", |_| true),
    // The older form of the global connection limit: honoured (see `runtime`).
    ("overload.global_downstream_max_connections", |v| global_limit(v).is_some()),
    // false: a fragment in a request path is stripped rather than refused. skiff's codec
    // never sees one to refuse (tests/hostile_http1.rs); only the default `true` would differ.
    ("envoy.reloadable_features.http_reject_path_with_fragment", |v| {
        matches!(v, Kind::BoolValue(false) | Kind::StringValue(_))
    }),
];

/// `overload_manager`.
pub(super) fn overload(
    o: Option<&envoy_types::pb::envoy::config::overload::v3::OverloadManager>,
) -> Result<Overload, ConfigError> {
    let mut out = Overload::default();
    let Some(o) = o else {
        return Ok(out);
    };
    for (i, m) in o.resource_monitors.iter().enumerate() {
        let path = format!("overload_manager.resource_monitors[{i}]");
        let typed = match &m.config_type {
            Some(envoy_types::pb::envoy::config::overload::v3::resource_monitor::ConfigType::TypedConfig(any)) => any,
            None => return Err(ConfigError::new(format!("{path}.typed_config"), "required")),
        };
        let tpath = format!("{path}.typed_config");
        match type_name(&typed.type_url) {
            "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig" => {
                let c: DownstreamConnectionsConfig = unpack(typed, &tpath)?;
                if c.max_active_downstream_connections <= 0 {
                    return Err(ConfigError::new(
                        format!("{tpath}.max_active_downstream_connections"),
                        "must be greater than 0",
                    ));
                }
                out.max_downstream_connections = Some(c.max_active_downstream_connections as u64);
            }
            other => {
                return Err(ConfigError::new(
                    tpath,
                    format!("unsupported resource monitor '{other}'"),
                ))
            }
        }
    }
    Ok(out)
}

fn global_limit(v: &Kind) -> Option<u64> {
    match v {
        Kind::NumberValue(n) if *n >= 1.0 => Some(*n as u64),
        Kind::StringValue(s) => s.trim().parse().ok().filter(|n| *n >= 1),
        _ => None,
    }
}

/// `layered_runtime`: static layers with the keys skiff can stand behind, and admin layers
/// (empty until `/runtime_modify` exists). Returns the global connection limit the
/// `overload.global_downstream_max_connections` key sets, if any (the last layer wins).
pub(super) fn runtime(r: Option<&bootstrap::LayeredRuntime>) -> Result<Option<u64>, ConfigError> {
    let mut limit = None;
    let Some(r) = r else {
        return Ok(limit);
    };
    for (i, layer) in r.layers.iter().enumerate() {
        let path = format!("layered_runtime.layers[{i}]");
        use bootstrap::runtime_layer::LayerSpecifier;
        match &layer.layer_specifier {
            Some(LayerSpecifier::StaticLayer(s)) => {
                let mut flat = Vec::new();
                flatten("", s, &mut flat);
                for (key, value) in flat {
                    let known = RUNTIME_KEYS
                        .iter()
                        .find(|(k, _)| *k == key)
                        .is_some_and(|(_, ok)| ok(value));
                    if !known {
                        return Err(ConfigError::new(
                            format!("{path}.static_layer.{key}"),
                            "unsupported runtime key (or value)",
                        ));
                    }
                    if key == "overload.global_downstream_max_connections" {
                        limit = global_limit(value);
                    }
                }
            }
            Some(LayerSpecifier::AdminLayer(_)) => {}
            _ => return Err(ConfigError::unsupported(path)),
        }
    }
    Ok(limit)
}

/// A static layer's keys: nested objects join their names with dots, as Envoy reads them.
fn flatten<'a>(
    prefix: &str,
    s: &'a envoy_types::pb::google::protobuf::Struct,
    out: &mut Vec<(String, &'a Kind)>,
) {
    for (k, v) in &s.fields {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match &v.kind {
            Some(Kind::StructValue(inner)) => flatten(&key, inner, out),
            Some(kind) => out.push((key, kind)),
            None => {}
        }
    }
}

/// `stats_config`.
pub(super) fn stats(
    c: Option<&envoy_types::pb::envoy::config::metrics::v3::StatsConfig>,
) -> Result<StatsConfig, ConfigError> {
    use envoy_types::pb::envoy::config::metrics::v3::{
        stats_matcher::StatsMatcher as M, tag_specifier::TagValue,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as P;
    let Some(c) = c else {
        return Ok(StatsConfig::default());
    };
    let mut tagging = Tagging {
        defaults: c.use_all_default_tags.as_ref().is_none_or(|v| v.value),
        ..Tagging::default()
    };
    for (i, t) in c.stats_tags.iter().enumerate() {
        let path = format!("stats_config.stats_tags[{i}]");
        if t.tag_name.is_empty() {
            return Err(ConfigError::new(format!("{path}.tag_name"), "required"));
        }
        match &t.tag_value {
            Some(TagValue::Regex(r)) => {
                let re = crate::pattern::FancyRegex::new(r).map_err(|e| {
                    ConfigError::new(format!("{path}.regex"), format!("invalid regex: {e}"))
                })?;
                tagging.extractors.push((t.tag_name.clone(), re));
            }
            Some(TagValue::FixedValue(v)) => tagging.fixed.push((t.tag_name.clone(), v.clone())),
            // A default tag named without a value: Envoy's own extractor of that name, which
            // runs anyway with the defaults.
            None => {
                if !tagging.defaults {
                    return Err(ConfigError::new(
                        path,
                        "a tag without regex or fixed_value needs use_all_default_tags",
                    ));
                }
            }
        }
    }
    let list = |l: &envoy_types::pb::envoy::r#type::matcher::v3::ListStringMatcher, path: &str| {
        l.patterns
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let p = format!("{path}.patterns[{i}]");
                let kind = match &m.match_pattern {
                    Some(P::Exact(s)) => NameMatchKind::Exact(s.clone()),
                    Some(P::Prefix(s)) => NameMatchKind::Prefix(s.clone()),
                    Some(P::Suffix(s)) => NameMatchKind::Suffix(s.clone()),
                    Some(P::Contains(s)) => NameMatchKind::Contains(s.clone()),
                    Some(P::SafeRegex(r)) => NameMatchKind::Regex(
                        crate::pattern::Regex::new(&format!("^(?:{})$", r.regex)).map_err(|e| {
                            ConfigError::new(
                                format!("{p}.safe_regex.regex"),
                                format!("invalid regex: {e}"),
                            )
                        })?,
                    ),
                    _ => return Err(ConfigError::unsupported(p)),
                };
                Ok(NameMatch {
                    kind,
                    ignore_case: m.ignore_case,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()
    };
    let matcher = match c
        .stats_matcher
        .as_ref()
        .and_then(|m| m.stats_matcher.as_ref())
    {
        None => None,
        Some(M::RejectAll(false)) => None,
        Some(M::RejectAll(true)) => Some(StatsMatcher::RejectAll),
        Some(M::InclusionList(l)) => Some(StatsMatcher::Inclusion(list(
            l,
            "stats_config.stats_matcher.inclusion_list",
        )?)),
        Some(M::ExclusionList(l)) => Some(StatsMatcher::Exclusion(list(
            l,
            "stats_config.stats_matcher.exclusion_list",
        )?)),
    };
    Ok(StatsConfig {
        matcher: matcher.map(std::sync::Arc::new),
        tagging: std::sync::Arc::new(tagging),
    })
}

/// `admin.access_log`.
pub(super) fn admin_access_logs(a: &bootstrap::Admin) -> Result<Vec<AccessLog>, ConfigError> {
    a.access_log
        .iter()
        .enumerate()
        .map(|(i, l)| translate_access_log(l, &format!("admin.access_log[{i}]")))
        .collect()
}

/// `bootstrap_extensions`: the internal-listener extension only lets listeners use internal
/// addresses, which skiff refuses on listeners; nothing else is known.
pub(super) fn extensions(
    e: &[envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig],
) -> Result<(), ConfigError> {
    for (i, x) in e.iter().enumerate() {
        let path = format!("bootstrap_extensions[{i}].typed_config");
        let any = x
            .typed_config
            .as_ref()
            .ok_or_else(|| ConfigError::new(path.clone(), "required"))?;
        if type_name(&any.type_url)
            != "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
        {
            return Err(ConfigError::new(
                path,
                format!("unsupported bootstrap extension '{}'", any.type_url),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::load_text;

    fn verdict(extra: &str) -> Result<(), String> {
        let text = format!(
            "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9901}}}}}}\n{extra}"
        );
        load_text(&text).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn runtime_keys_outside_the_list_are_refused() {
        let layer = |kv: &str| {
            format!("layered_runtime:\n  layers:\n  - name: a\n    static_layer: {{{kv}}}\n")
        };
        assert_eq!(
            verdict(&layer("re2.max_program_size.error_level: 100")),
            Ok(())
        );
        assert_eq!(
            verdict(&layer(
                "envoy.reloadable_features.http_reject_path_with_fragment: false"
            )),
            Ok(())
        );
        let e = verdict(&layer(
            "envoy.reloadable_features.http_reject_path_with_fragment: true",
        ))
        .expect_err("true changes traffic");
        assert!(e.starts_with("layered_runtime.layers[0].static_layer.envoy.reloadable_features.http_reject_path_with_fragment"), "{e}");
        let e = verdict(&layer("routing: {traffic_shift: {a: 50}}")).expect_err("unknown key");
        assert!(e.contains("static_layer.routing.traffic_shift.a"), "{e}");
        let e = verdict(
            "layered_runtime:\n  layers:\n  - name: d\n    disk_layer: {symlink_root: /srv}\n",
        )
        .expect_err("disk layer");
        assert!(e.contains("disk_layer"), "{e}");
    }

    #[test]
    fn the_runtime_key_sets_the_connection_limit_unless_the_monitor_does() {
        let runtime = "layered_runtime:\n  layers:\n  - name: a\n    static_layer: {overload.global_downstream_max_connections: \"5000\"}\n";
        let limit = |extra: &str| {
            crate::load_text(&format!(
                "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9901}}}}}}\n{extra}"
            ))
            .map(|l| l.model.overload.max_downstream_connections)
            .map_err(|e| e.to_string())
        };
        assert_eq!(limit(runtime), Ok(Some(5000)));
        let monitor = "overload_manager:\n  resource_monitors:\n  - name: g\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig\n      max_active_downstream_connections: 10\n";
        assert_eq!(limit(&format!("{runtime}{monitor}")), Ok(Some(10)));
        assert!(limit(&runtime.replace("\"5000\"", "\"lots\"")).is_err());
    }

    #[test]
    fn only_the_connection_limit_monitor_and_no_actions() {
        let ok = "overload_manager:\n  resource_monitors:\n  - name: g\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig\n      max_active_downstream_connections: 10\n";
        assert_eq!(verdict(ok), Ok(()));
        let e = verdict(&format!("{ok}  actions:\n  - name: envoy.overload_actions.stop_accepting_requests\n    triggers: [{{name: g, threshold: {{value: 0.9}}}}]\n"))
            .expect_err("actions");
        assert!(e.starts_with("overload_manager.actions"), "{e}");
        let e = verdict("overload_manager:\n  resource_monitors:\n  - name: h\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig\n      max_heap_size_bytes: 1000\n")
            .expect_err("heap monitor");
        assert!(e.contains("resource_monitors[0].typed_config"), "{e}");
    }
}
