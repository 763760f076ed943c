//! Bootstrap fields about running the process rather than traffic: the overload manager,
//! runtime layers, the admin access log, and the fields accepted for what they do not change
//! (docs/compatibility.md).

use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
use envoy_types::pb::envoy::config::overload::v3 as ov;
use envoy_types::pb::envoy::extensions::resource_monitors::cgroup_memory::v3::CgroupMemoryConfig;
use envoy_types::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
use envoy_types::pb::envoy::extensions::resource_monitors::fixed_heap::v3::FixedHeapConfig;
use envoy_types::pb::envoy::extensions::resource_monitors::injected_resource::v3::InjectedResourceConfig;

use super::super::model::{
    AccessLog, ActionName, LoadShedPoint, MonitorKind, Overload, OverloadAction, ResourceMonitor,
    ScaledTimer, ShedPoint, StatsConfig, TimerMinimum, Trigger, TriggerKind,
};
use super::super::proto::{type_name, unpack};
use super::super::ConfigError;
use super::{duration, translate_access_log};
use crate::runtime;
use crate::stats::{NameMatch, NameMatchKind, StatsMatcher, Tagging};

/// `overload_manager`, checked as Envoy's `OverloadManagerImpl` checks it (its messages).
pub(super) fn overload(o: Option<&ov::OverloadManager>) -> Result<Overload, ConfigError> {
    let mut out = Overload::default();
    let Some(o) = o else {
        return Ok(out);
    };
    if let Some(d) = &o.refresh_interval {
        out.refresh_interval = duration(d, "overload_manager.refresh_interval")?;
        if out.refresh_interval.is_zero() {
            return Err(ConfigError::new(
                "overload_manager.refresh_interval",
                "must be greater than 0",
            ));
        }
    }
    for (i, m) in o.resource_monitors.iter().enumerate() {
        let path = format!("overload_manager.resource_monitors[{i}]");
        if m.name.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.name"),
                "must not be empty",
            ));
        }
        let typed = match &m.config_type {
            Some(ov::resource_monitor::ConfigType::TypedConfig(any)) => any,
            None => return Err(ConfigError::new(format!("{path}.typed_config"), "required")),
        };
        let tpath = format!("{path}.typed_config");
        let kind = match type_name(&typed.type_url) {
            "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig" => {
                let c: DownstreamConnectionsConfig = unpack(typed, &tpath)?;
                if c.max_active_downstream_connections <= 0 {
                    return Err(ConfigError::new(
                        format!("{tpath}.max_active_downstream_connections"),
                        "must be greater than 0",
                    ));
                }
                // Envoy counts connections for this monitor only under its well-known name.
                if m.name != DOWNSTREAM_CONNECTIONS {
                    return Err(ConfigError::new(
                        format!("{path}.name"),
                        format!("the connection-count monitor must be named '{DOWNSTREAM_CONNECTIONS}'"),
                    ));
                }
                let max = c.max_active_downstream_connections as u64;
                out.max_downstream_connections = Some(max);
                MonitorKind::DownstreamConnections { max }
            }
            "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig" => {
                let c: FixedHeapConfig = unpack(typed, &tpath)?;
                if c.max_heap_size_bytes_runtime.is_some() {
                    return Err(ConfigError::unsupported(format!(
                        "{tpath}.max_heap_size_bytes_runtime"
                    )));
                }
                if c.max_heap_size_bytes == 0 {
                    return Err(ConfigError::new(
                        format!("{tpath}.max_heap_size_bytes"),
                        "must be greater than 0",
                    ));
                }
                MonitorKind::FixedHeap {
                    max_bytes: c.max_heap_size_bytes,
                }
            }
            "envoy.extensions.resource_monitors.cgroup_memory.v3.CgroupMemoryConfig" => {
                let c: CgroupMemoryConfig = unpack(typed, &tpath)?;
                MonitorKind::CgroupMemory {
                    max_bytes: (c.max_memory_bytes > 0).then_some(c.max_memory_bytes),
                }
            }
            "envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig" => {
                let c: InjectedResourceConfig = unpack(typed, &tpath)?;
                if c.filename.is_empty() {
                    return Err(ConfigError::new(
                        format!("{tpath}.filename"),
                        "must not be empty",
                    ));
                }
                MonitorKind::Injected {
                    path: std::path::PathBuf::from(c.filename),
                }
            }
            other => {
                return Err(ConfigError::new(
                    tpath,
                    format!("unsupported resource monitor '{other}'"),
                ))
            }
        };
        if out.monitors.iter().any(|x| x.name == m.name) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("Duplicate resource monitor {}", m.name),
            ));
        }
        out.monitors.push(ResourceMonitor {
            name: m.name.clone(),
            kind,
        });
    }
    if let Some(b) = &o.buffer_factory_config {
        let p = b.minimum_account_to_track_power_of_two;
        if !(10..=56).contains(&p) {
            return Err(ConfigError::new(
                "overload_manager.buffer_factory_config.minimum_account_to_track_power_of_two",
                format!("value must be inside range [10, 56], got {p}"),
            ));
        }
        out.minimum_account_power_of_two = Some(p);
    }
    for (i, a) in o.actions.iter().enumerate() {
        let path = format!("overload_manager.actions[{i}]");
        let Some(action) = ActionName::from_name(&a.name) else {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("Unknown Overload Manager Action {}", a.name),
            ));
        };
        if out.actions.iter().any(|x| x.action == action) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("Duplicate overload action {}", a.name),
            ));
        }
        let triggers = triggers(&out.monitors, &a.triggers, &path, || {
            format!("overload action {}", a.name)
        })?;
        let tpath = format!("{path}.typed_config");
        match (action, &a.typed_config) {
            (ActionName::ReduceTimeouts, t) => {
                let Some(t) = t else {
                    return Err(ConfigError::new(tpath, "required"));
                };
                out.timer_minimums = timer_minimums(t, &tpath)?;
            }
            (ActionName::ShrinkHeap, Some(t)) => {
                let c: ov::ShrinkHeapConfig = unpack(t, &tpath)?;
                if let Some(d) = &c.timer_interval {
                    out.shrink_heap.interval = duration(d, &format!("{tpath}.timer_interval"))?;
                }
                if let Some(v) = c.max_unfreed_memory_bytes {
                    out.shrink_heap.max_unfreed_bytes = v.value;
                }
            }
            (ActionName::ResetHighMemoryStream, _) => {
                if o.buffer_factory_config.is_none() {
                    return Err(ConfigError::new(
                        format!("{path}.name"),
                        format!(
                            "Overload action \"{}\" requires buffer_factory_config.",
                            a.name
                        ),
                    ));
                }
                if a.typed_config.is_some() {
                    return Err(ConfigError::new(
                        tpath,
                        format!(
                            "Overload action \"{}\" has an unexpected value for the typed_config field",
                            a.name
                        ),
                    ));
                }
            }
            (_, Some(_)) => {
                return Err(ConfigError::new(
                    tpath,
                    format!(
                        "Overload action \"{}\" has an unexpected value for the typed_config field",
                        a.name
                    ),
                ))
            }
            (_, None) => {}
        }
        out.actions.push(OverloadAction { action, triggers });
    }
    for (i, p) in o.loadshed_points.iter().enumerate() {
        let path = format!("overload_manager.loadshed_points[{i}]");
        let triggers = triggers(&out.monitors, &p.triggers, &path, || {
            format!("loadshed point {}", p.name)
        })?;
        if out.loadshed_points.iter().any(|x| x.name == p.name) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("Duplicate loadshed point {}", p.name),
            ));
        }
        let point = ShedPoint::QUERIED
            .into_iter()
            .find(|q| q.name() == Some(p.name.as_str()));
        let point = match point {
            Some(q) => q,
            // A filter-level point: Envoy's filters that ask it (ext_authz and the like) are
            // not in skiff, but the connection manager asks it too, and skiff does not.
            None if p.name == "envoy.load_shed_points.http_downstream_filter_check" => {
                return Err(ConfigError::unsupported(format!("{path}.name")))
            }
            None => ShedPoint::Unqueried,
        };
        out.loadshed_points.push(LoadShedPoint {
            name: p.name.clone(),
            point,
            triggers,
        });
    }
    Ok(out)
}

/// The well-known name of the connection-count monitor.
const DOWNSTREAM_CONNECTIONS: &str = "envoy.resource_monitors.global_downstream_max_connections";

/// An action's or load shed point's `triggers`.
fn triggers(
    monitors: &[ResourceMonitor],
    list: &[ov::Trigger],
    path: &str,
    owner: impl Fn() -> String,
) -> Result<Vec<Trigger>, ConfigError> {
    let mut out: Vec<Trigger> = Vec::new();
    for (j, t) in list.iter().enumerate() {
        let tpath = format!("{path}.triggers[{j}]");
        let in_unit = |v: f64, field: &str| {
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(ConfigError::new(
                    format!("{tpath}.{field}"),
                    "must be between 0 and 1",
                ))
            }
        };
        let kind = match &t.trigger_oneof {
            Some(ov::trigger::TriggerOneof::Threshold(th)) => {
                TriggerKind::Threshold(in_unit(th.value, "threshold.value")?)
            }
            Some(ov::trigger::TriggerOneof::Scaled(sc)) => {
                let scaling = in_unit(sc.scaling_threshold, "scaled.scaling_threshold")?;
                let saturation = in_unit(sc.saturation_threshold, "scaled.saturation_threshold")?;
                if scaling >= saturation {
                    return Err(ConfigError::new(
                        format!("{tpath}.scaled"),
                        "scaling_threshold must be less than saturation_threshold",
                    ));
                }
                TriggerKind::Scaled {
                    scaling,
                    saturation,
                }
            }
            None => {
                return Err(ConfigError::new(
                    tpath,
                    format!("action not set for trigger {}", t.name),
                ))
            }
        };
        if !monitors.iter().any(|m| m.name == t.name) {
            return Err(ConfigError::new(
                format!("{tpath}.name"),
                format!("Unknown trigger resource {} for {}", t.name, owner()),
            ));
        }
        if out.iter().any(|x| x.resource == t.name) {
            return Err(ConfigError::new(
                format!("{tpath}.name"),
                format!("Duplicate trigger resource for {}", owner()),
            ));
        }
        out.push(Trigger {
            resource: t.name.clone(),
            kind,
        });
    }
    Ok(out)
}

/// `reduce_timeouts`'s `ScaleTimersOverloadActionConfig`.
fn timer_minimums(
    any: &envoy_types::pb::google::protobuf::Any,
    path: &str,
) -> Result<Vec<(ScaledTimer, TimerMinimum)>, ConfigError> {
    use ov::scale_timers_overload_action_config::scale_timer::OverloadAdjust;
    use ov::scale_timers_overload_action_config::TimerType;
    let c: ov::ScaleTimersOverloadActionConfig = unpack(any, path)?;
    let mut out: Vec<(ScaledTimer, TimerMinimum)> = Vec::new();
    for (i, t) in c.timer_scale_factors.iter().enumerate() {
        let tpath = format!("{path}.timer_scale_factors[{i}]");
        let timer = match TimerType::try_from(t.timer) {
            Ok(TimerType::HttpDownstreamConnectionIdle) => ScaledTimer::ConnectionIdle,
            Ok(TimerType::HttpDownstreamStreamIdle) => ScaledTimer::StreamIdle,
            Ok(TimerType::TransportSocketConnect) => ScaledTimer::TransportSocketConnect,
            Ok(TimerType::HttpDownstreamConnectionMax) => ScaledTimer::ConnectionMax,
            Ok(TimerType::HttpDownstreamStreamFlush) => ScaledTimer::StreamFlush,
            _ => {
                return Err(ConfigError::new(
                    format!("{tpath}.timer"),
                    "must be a defined timer type other than UNSPECIFIED",
                ))
            }
        };
        let minimum = match &t.overload_adjust {
            Some(OverloadAdjust::MinTimeout(d)) => {
                TimerMinimum::Absolute(duration(d, &format!("{tpath}.min_timeout"))?)
            }
            Some(OverloadAdjust::MinScale(p)) => TimerMinimum::Scale(p.value / 100.0),
            None => {
                return Err(ConfigError::new(
                    tpath,
                    "one of min_timeout or min_scale is required",
                ))
            }
        };
        if out.iter().any(|(x, _)| *x == timer) {
            let name = TimerType::try_from(t.timer)
                .map(|t| t.as_str_name())
                .unwrap_or("?");
            return Err(ConfigError::new(
                format!("{tpath}.timer"),
                format!("Found duplicate entry for timer type {name}"),
            ));
        }
        out.push((timer, minimum));
    }
    Ok(out)
}

/// What the runtime keys skiff reads at start-up set (the last static layer wins), and the
/// layers.
#[derive(Debug, Default)]
pub(super) struct RuntimeValues {
    /// `overload.global_downstream_max_connections`.
    pub global_limit: Option<u64>,
    /// `overload.premature_reset_min_stream_lifetime_seconds`.
    pub premature_reset_min_lifetime: Option<u64>,
    /// `overload.premature_reset_total_stream_count`.
    pub premature_reset_total: Option<u64>,
    /// `layered_runtime.layers`.
    pub layers: Vec<runtime::Layer>,
}

/// `layered_runtime`, checked as Envoy's `LoaderImpl` checks it (its messages). A static
/// layer's keys go through [`runtime::check_key`]: Envoy's own keys only where skiff honours
/// them.
pub(super) fn runtime(r: Option<&bootstrap::LayeredRuntime>) -> Result<RuntimeValues, ConfigError> {
    let mut out = RuntimeValues::default();
    let Some(r) = r else {
        return Ok(out);
    };
    let mut admin = false;
    for (i, layer) in r.layers.iter().enumerate() {
        let path = format!("layered_runtime.layers[{i}]");
        if out.layers.iter().any(|l| l.name == layer.name) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("Duplicate layer name: {}", layer.name),
            ));
        }
        use bootstrap::runtime_layer::LayerSpecifier;
        let kind = match &layer.layer_specifier {
            Some(LayerSpecifier::StaticLayer(s)) => {
                let values = runtime::proto_layer(s, &format!("{path}.static_layer"), true)?;
                for (key, e) in &values {
                    let n = runtime::count(&e.raw);
                    match key.as_str() {
                        "overload.global_downstream_max_connections" => out.global_limit = n,
                        "overload.premature_reset_min_stream_lifetime_seconds" => {
                            out.premature_reset_min_lifetime = n
                        }
                        "overload.premature_reset_total_stream_count" => {
                            out.premature_reset_total = n
                        }
                        _ => {}
                    }
                }
                runtime::LayerKind::Static(values)
            }
            Some(LayerSpecifier::DiskLayer(d)) => {
                let bootstrap::runtime_layer::DiskLayer {
                    symlink_root,
                    subdirectory,
                    append_service_cluster,
                } = d;
                if symlink_root.is_empty() {
                    return Err(ConfigError::new(
                        format!("{path}.disk_layer.symlink_root"),
                        "required",
                    ));
                }
                runtime::LayerKind::Disk {
                    symlink_root: symlink_root.into(),
                    subdirectory: subdirectory.clone(),
                    append_service_cluster: *append_service_cluster,
                }
            }
            Some(LayerSpecifier::AdminLayer(_)) => {
                if admin {
                    return Err(ConfigError::new(
                        path,
                        "Too many admin layers specified in LayeredRuntime, at most one may be specified",
                    ));
                }
                admin = true;
                runtime::LayerKind::Admin
            }
            Some(LayerSpecifier::RtdsLayer(rt)) => {
                let bootstrap::runtime_layer::RtdsLayer { name, rtds_config } = rt;
                let cpath = format!("{path}.rtds_layer.rtds_config");
                let source = super::required(rtds_config, &cpath)?;
                runtime::LayerKind::Rtds {
                    resource: name.clone(),
                    source: super::config_source(source, &cpath)?,
                }
            }
            None => {
                return Err(ConfigError::new(
                    path,
                    "a layer needs one of static_layer, disk_layer, admin_layer, rtds_layer",
                ))
            }
        };
        out.layers.push(runtime::Layer {
            name: layer.name.clone(),
            kind,
        });
    }
    Ok(out)
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
    let one = |m: &envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher, p: String| {
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
    };
    let list = |l: &envoy_types::pb::envoy::r#type::matcher::v3::ListStringMatcher, path: &str| {
        l.patterns
            .iter()
            .enumerate()
            .map(|(i, m)| one(m, format!("{path}.patterns[{i}]")))
            .collect::<Result<Vec<_>, ConfigError>>()
    };
    // histogram_bucket_settings: the first whose matcher takes a histogram's name gives its
    // buckets (`bins` sizes Envoy's per-thread histograms, nothing that shows).
    let mut buckets = Vec::new();
    for (i, h) in c.histogram_bucket_settings.iter().enumerate() {
        let path = format!("stats_config.histogram_bucket_settings[{i}]");
        let Some(m) = &h.r#match else {
            return Err(ConfigError::new(format!("{path}.match"), "required"));
        };
        if h.buckets.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.buckets"),
                "needs at least one bucket",
            ));
        }
        for (j, b) in h.buckets.iter().enumerate() {
            if b.is_nan() || *b <= 0.0 || h.buckets[..j].contains(b) {
                return Err(ConfigError::new(
                    format!("{path}.buckets[{j}]"),
                    "a bucket must be above 0 and given once",
                ));
            }
        }
        let mut values = h.buckets.clone();
        values.sort_by(f64::total_cmp);
        buckets.push((one(m, format!("{path}.match"))?, values));
    }
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
        buckets: std::sync::Arc::new(crate::stats::HistogramBuckets(buckets)),
        flush_interval: None,
    })
}

/// `admin.access_log`, and the deprecated `admin.access_log_path` (a file log in Envoy's
/// default format, as Envoy 1.40 still makes of it).
pub(super) fn admin_access_logs(a: &bootstrap::Admin) -> Result<Vec<AccessLog>, ConfigError> {
    let mut logs = a
        .access_log
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let path = format!("admin.access_log[{i}]");
            let log = translate_access_log(l, &path)?;
            // The admin interface runs beside the workers, whose exporters send the records.
            if matches!(log.sink, crate::model::AccessLogSink::OpenTelemetry(_)) {
                return Err(ConfigError::unsupported(format!("{path}.typed_config")));
            }
            Ok(log)
        })
        .collect::<Result<Vec<_>, _>>()?;
    #[allow(deprecated)]
    if !a.access_log_path.is_empty() {
        logs.push(AccessLog {
            sink: crate::model::AccessLogSink::File(a.access_log_path.clone()),
            format: std::sync::Arc::new(crate::access_log::Format::envoy_default()),
            filter: None,
        });
    }
    Ok(logs)
}

/// `bootstrap_extensions`: only the internal-listener extension is known. Its buffer size in
/// bytes when it is there (default 1 MiB).
pub(super) fn extensions(
    e: &[envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig],
) -> Result<Option<usize>, ConfigError> {
    use envoy_types::pb::envoy::extensions::bootstrap::internal_listener::v3::InternalListener;
    let mut buffer = None;
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
        let il: InternalListener = unpack(any, &path)?;
        let kb = il.buffer_size_kb.map_or(1024, |v| v.value);
        if !(1..=8192).contains(&kb) {
            return Err(ConfigError::new(
                format!("{path}.buffer_size_kb"),
                "value must be inside range [1, 8192]",
            ));
        }
        buffer = Some(kb as usize * 1024);
    }
    Ok(buffer)
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
    fn histogram_buckets_and_the_flush_interval_are_checked() {
        let settings = |b: &str| {
            format!("stats_config:\n  histogram_bucket_settings:\n  - match: {{prefix: cluster.}}\n    buckets: {b}\n")
        };
        assert_eq!(verdict(&settings("[1, 10, 100]")), Ok(()));
        let e = verdict(&settings("[1, 0]")).expect_err("0 is not a bucket");
        assert!(
            e.starts_with("stats_config.histogram_bucket_settings[0].buckets[1]"),
            "{e}"
        );
        let e = verdict(&settings("[2, 2]")).expect_err("twice");
        assert!(e.contains("buckets[1]"), "{e}");
        let e = verdict(&settings("[]")).expect_err("none");
        assert!(e.contains("buckets"), "{e}");
        assert_eq!(verdict("stats_flush_interval: 1s"), Ok(()));
        let e = verdict("stats_flush_interval: 600s").expect_err("too long");
        assert!(e.starts_with("stats_flush_interval"), "{e}");
        let b = crate::load_text(&format!(
            "{}\n{}",
            "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 9901}}}",
            settings("[100, 5]")
        ))
        .expect("loads");
        assert_eq!(
            b.model.stats.buckets.of("cluster.a.upstream_rq_time"),
            &[5.0, 100.0]
        );
        assert_eq!(
            b.model.stats.buckets.of("http.a.downstream_rq_time").len(),
            19
        );
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
        let e = verdict(&layer("envoy: {made: {up: 50}}")).expect_err("unknown key");
        assert!(e.contains("static_layer.envoy.made.up"), "{e}");
        // Keys only the configuration reads are the operator's own.
        assert_eq!(verdict(&layer("routing: {traffic_shift: {a: 50}}")), Ok(()));
        let e = verdict(&layer("a: [1, 2]")).expect_err("a list");
        assert!(e.contains("Invalid runtime entry value for a"), "{e}");
        let e = verdict(
            "layered_runtime:\n  layers:\n  - name: d\n    admin_layer: {}\n  - name: d\n    admin_layer: {}\n",
        )
        .expect_err("two layers named d");
        assert!(e.contains("Duplicate layer name: d"), "{e}");
        let e = verdict(
            "layered_runtime:\n  layers:\n  - name: d\n    admin_layer: {}\n  - name: e\n    admin_layer: {}\n",
        )
        .expect_err("two admin layers");
        assert!(e.contains("Too many admin layers"), "{e}");
        assert_eq!(
            verdict(
                "layered_runtime:\n  layers:\n  - name: d\n    disk_layer: {symlink_root: /srv}\n"
            ),
            Ok(())
        );
    }

    #[test]
    fn a_static_layer_reads_as_envoys_proto_layer() {
        let l = crate::load_text("layered_runtime:\n  layers:\n  - name: s\n    static_layer: {a: {b: 1, c: 2.5}, d: true, f: {numerator: 5, denominator: TEN_THOUSAND}, g: \" 7\"}\n")
            .expect("loads");
        let crate::runtime::LayerKind::Static(v) = &l.model.runtime[0].kind else {
            panic!("static");
        };
        let v = crate::runtime::Values::merge([v]);
        assert_eq!(v.get("a.b"), Some("1"));
        assert_eq!(v.get("a.c"), Some("2.5"));
        assert_eq!(v.get("d"), Some("true"));
        assert_eq!(v.integer("g", 0), 7);
        let none = crate::runtime::Fraction {
            numerator: 0,
            denominator: 100,
        };
        assert!(v.fraction_enabled("f", none, 10_004));
        assert!(!v.fraction_enabled("f", none, 10_005));
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
        let monitor = "overload_manager:\n  resource_monitors:\n  - name: envoy.resource_monitors.global_downstream_max_connections\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig\n      max_active_downstream_connections: 10\n";
        assert_eq!(limit(&format!("{runtime}{monitor}")), Ok(Some(10)));
        assert!(limit(&runtime.replace("\"5000\"", "\"lots\"")).is_err());
    }

    const CONNECTIONS: &str = "  - name: envoy.resource_monitors.global_downstream_max_connections\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig\n      max_active_downstream_connections: 10\n";
    const HEAP: &str = "  - name: heap\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig\n      max_heap_size_bytes: 1000\n";

    fn manager(rest: &str) -> Result<crate::model::Overload, String> {
        crate::load_text(&format!(
            "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9901}}}}}}\noverload_manager:\n  refresh_interval: 0.25s\n  resource_monitors:\n{CONNECTIONS}{HEAP}{rest}"
        ))
        .map(|l| l.model.overload.clone())
        .map_err(|e| e.to_string())
    }

    #[test]
    fn monitors_actions_and_points_translate() {
        use crate::model::{ActionName, ScaledTimer, ShedPoint, TimerMinimum, TriggerKind};
        let o = manager(
            "  actions:\n  - name: envoy.overload_actions.stop_accepting_requests\n    triggers: [{name: heap, scaled: {scaling_threshold: 0.5, saturation_threshold: 0.9}}]\n  - name: envoy.overload_actions.reduce_timeouts\n    triggers: [{name: envoy.resource_monitors.global_downstream_max_connections, threshold: {value: 0.8}}]\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig\n      timer_scale_factors:\n      - {timer: HTTP_DOWNSTREAM_CONNECTION_IDLE, min_timeout: 2s}\n      - {timer: HTTP_DOWNSTREAM_STREAM_IDLE, min_scale: {value: 25}}\n  loadshed_points:\n  - name: envoy.load_shed_points.tcp_listener_accept\n    triggers: [{name: heap, threshold: {value: 0.95}}]\n  - name: envoy.load_shed_points.priority.high\n    triggers: [{name: heap, threshold: {value: 0.7}}]\n",
        )
        .expect("loads");
        assert_eq!(o.refresh_interval, std::time::Duration::from_millis(250));
        assert_eq!(o.max_downstream_connections, Some(10));
        assert_eq!(o.monitors.len(), 2);
        assert_eq!(o.actions[0].action, ActionName::StopAcceptingRequests);
        assert_eq!(
            o.actions[0].triggers[0].kind,
            TriggerKind::Scaled {
                scaling: 0.5,
                saturation: 0.9
            }
        );
        assert_eq!(
            o.timer_minimums,
            vec![
                (
                    ScaledTimer::ConnectionIdle,
                    TimerMinimum::Absolute(std::time::Duration::from_secs(2))
                ),
                (ScaledTimer::StreamIdle, TimerMinimum::Scale(0.25)),
            ]
        );
        assert_eq!(o.loadshed_points[0].point, ShedPoint::TcpListenerAccept);
        assert_eq!(o.loadshed_points[1].point, ShedPoint::Unqueried);
    }

    #[test]
    fn overload_errors_are_envoys() {
        let err = |rest: &str| manager(rest).expect_err("refused");
        let e = err("  actions:\n  - name: envoy.overload_actions.no_such\n");
        assert!(
            e.contains("Unknown Overload Manager Action envoy.overload_actions.no_such"),
            "{e}"
        );
        let e = err("  actions:\n  - name: envoy.overload_actions.shrink_heap\n  - name: envoy.overload_actions.shrink_heap\n");
        assert!(e.contains("Duplicate overload action"), "{e}");
        let e = err("  actions:\n  - name: envoy.overload_actions.shrink_heap\n    triggers: [{name: nope, threshold: {value: 0.9}}]\n");
        assert!(e.contains("Unknown trigger resource nope for overload action envoy.overload_actions.shrink_heap"), "{e}");
        let e = err("  actions:\n  - name: envoy.overload_actions.shrink_heap\n    triggers: [{name: heap, scaled: {scaling_threshold: 0.9, saturation_threshold: 0.5}}]\n");
        assert!(
            e.contains("scaling_threshold must be less than saturation_threshold"),
            "{e}"
        );
        let e = err("  actions:\n  - name: envoy.overload_actions.shrink_heap\n    triggers: [{name: heap, threshold: {value: 0.9}}, {name: heap, threshold: {value: 0.8}}]\n");
        assert!(
            e.contains("Duplicate trigger resource for overload action"),
            "{e}"
        );
        let e = err("  actions:\n  - name: envoy.overload_actions.stop_accepting_requests\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.config.overload.v3.ShrinkHeapConfig\n");
        assert!(
            e.contains("unexpected value for the typed_config field"),
            "{e}"
        );
        let e = err("  actions:\n  - name: envoy.overload_actions.reset_high_memory_stream\n");
        assert!(e.contains("requires buffer_factory_config"), "{e}");
        for p in [9, 57] {
            let e = err(&format!(
                "  buffer_factory_config: {{minimum_account_to_track_power_of_two: {p}}}\n"
            ));
            assert!(e.contains("value must be inside range [10, 56]"), "{e}");
        }
        let e = err("  loadshed_points:\n  - name: p\n    triggers: [{name: nope, threshold: {value: 0.9}}]\n");
        assert!(
            e.contains("Unknown trigger resource nope for loadshed point p"),
            "{e}"
        );
        let e = err("  actions:\n  - name: envoy.overload_actions.reduce_timeouts\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig\n      timer_scale_factors:\n      - {timer: HTTP_DOWNSTREAM_CONNECTION_IDLE, min_timeout: 2s}\n      - {timer: HTTP_DOWNSTREAM_CONNECTION_IDLE, min_timeout: 1s}\n");
        assert!(
            e.contains("Found duplicate entry for timer type HTTP_DOWNSTREAM_CONNECTION_IDLE"),
            "{e}"
        );
        let e = verdict("overload_manager:\n  resource_monitors:\n  - name: g\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig\n      max_active_downstream_connections: 10\n")
            .expect_err("the connection monitor goes by its name");
        assert!(
            e.starts_with("overload_manager.resource_monitors[0].name"),
            "{e}"
        );
    }

    #[test]
    fn the_premature_reset_runtime_keys_are_honoured() {
        let o = crate::load_text("admin: {address: {socket_address: {address: 127.0.0.1, port_value: 9901}}}\nlayered_runtime:\n  layers:\n  - name: a\n    static_layer:\n      overload.premature_reset_min_stream_lifetime_seconds: 3\n      overload.premature_reset_total_stream_count: \"100\"\n")
            .expect("loads")
            .model
            .overload
            .premature_reset;
        assert_eq!(o.min_stream_lifetime, std::time::Duration::from_secs(3));
        assert_eq!(o.total_stream_count, 100);
        assert_eq!(
            verdict("layered_runtime:\n  layers:\n  - name: a\n    static_layer: {overload.premature_reset_total_stream_count: -1}\n")
                .map_err(|e| e.contains("premature_reset_total_stream_count")),
            Err(true)
        );
    }
}
