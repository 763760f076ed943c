//! The HTTP connection manager: codecs, the route table, HTTP filters and access logs.

use std::collections::HashSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;

use super::super::model::*;
use super::super::proto::{type_name, unpack};
use super::super::ConfigError;
use super::{required, typed_config};
use crate::access_log::{json, Extensions, Format};
use crate::router::{Route, RouteConfig, RouteMatch, VirtualHost};

pub(super) fn translate_hcm(
    h: &hcm::HttpConnectionManager,
    path: &str,
    clusters: &HashSet<String>,
    direction: TrafficDirection,
) -> Result<HttpConnectionManager, ConfigError> {
    super::fields::http_connection_manager(h, path)?;
    // A connection manager traces egress spans on an outbound listener.
    let egress = direction == TrafficDirection::Outbound;
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
    let routes =
        match &h.route_specifier {
            Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Static(Arc::new(
                translate_routes(rc, &format!("{path}.route_config"), Some(clusters))?,
            )),
            Some(RouteSpecifier::Rds(rds)) => {
                let rpath = format!("{path}.rds");
                if rds.route_config_name.is_empty() {
                    return Err(ConfigError::new(
                        format!("{rpath}.route_config_name"),
                        "required",
                    ));
                }
                let source = required(&rds.config_source, &format!("{rpath}.config_source"))?;
                RouteSource::Rds {
                    name: rds.route_config_name.clone(),
                    source: super::config_source(source, &format!("{rpath}.config_source"))?,
                }
            }
            Some(RouteSpecifier::ScopedRoutes(s)) => {
                scoped_routes(s, &format!("{path}.scoped_routes"), clusters)?
            }
            None => return Err(ConfigError::new(format!("{path}.route_config"), "required")),
        };
    let (http_filters, router) =
        http_filter_list(&h.http_filters, &format!("{path}.http_filters"), direction)?;
    let mut access_logs = Vec::new();
    for (i, a) in h.access_log.iter().enumerate() {
        access_logs.push(translate_access_log(a, &format!("{path}.access_log[{i}]"))?);
    }
    let (scheme_to_overwrite, scheme_matches_upstream) = match &h.scheme_header_transformation {
        None => (None, false),
        Some(t) => {
            use core::scheme_header_transformation::Transformation;
            let overwrite = match &t.transformation {
                None => None,
                Some(Transformation::SchemeToOverwrite(s)) => match s.as_str() {
                    "http" => Some("http"),
                    "https" => Some("https"),
                    other => {
                        return Err(ConfigError::new(
                            format!("{path}.scheme_header_transformation.scheme_to_overwrite"),
                            format!("value must be in list [http https], not {other:?}"),
                        ))
                    }
                },
            };
            (overwrite, t.match_upstream)
        }
    };
    let local_reply = h
        .local_reply_config
        .as_ref()
        .map(|c| local_reply_config(c, &format!("{path}.local_reply_config")))
        .transpose()?
        .map(Arc::new);
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
    let http2 = match &h.http2_protocol_options {
        Some(h2) => {
            let h2path = format!("{path}.http2_protocol_options");
            let mut o = super::clusters::http2_options(h2, &h2path)?;
            if h2.max_concurrent_streams.is_none() {
                o.max_concurrent_streams = crate::model::DOWNSTREAM_MAX_CONCURRENT_STREAMS;
            }
            o
        }
        None => crate::model::Http2Options {
            max_concurrent_streams: crate::model::DOWNSTREAM_MAX_CONCURRENT_STREAMS,
            ..Default::default()
        },
    };
    let mut upgrades: Vec<(String, bool)> = Vec::new();
    let mut upgrade_filters: Vec<(String, Vec<HttpFilter>)> = Vec::new();
    for (i, u) in h.upgrade_configs.iter().enumerate() {
        let upath = format!("{path}.upgrade_configs[{i}]");
        let hcm::http_connection_manager::UpgradeConfig {
            upgrade_type,
            filters,
            enabled,
        } = u;
        let kind = upgrade_kind(upgrade_type, &format!("{upath}.upgrade_type"))?;
        // An upgrade's own filters replace the connection manager's for its requests.
        if !filters.is_empty() {
            let fpath = format!("{upath}.filters");
            let (list, upgrade_router) = http_filter_list(filters, &fpath, direction)?;
            if upgrade_router != router {
                return Err(ConfigError::new(
                    fpath,
                    "unsupported: a router configured otherwise than the connection manager's",
                ));
            }
            upgrade_filters.push((kind.clone(), list));
        }
        if upgrades.iter().any(|(t, _)| *t == kind) {
            return Err(ConfigError::new(
                upath,
                format!("Error: multiple upgrade configs with the same name: '{upgrade_type}'"),
            ));
        }
        upgrades.push((kind, enabled.as_ref().is_none_or(|v| v.value)));
    }
    use hcm::http_connection_manager::{PathWithEscapedSlashesAction as Esc, StripPortMode};
    let escaped_slashes = match Esc::try_from(h.path_with_escaped_slashes_action) {
        Ok(Esc::ImplementationSpecificDefault) | Ok(Esc::KeepUnchanged) => {
            EscapedSlashes::KeepUnchanged
        }
        Ok(Esc::RejectRequest) => EscapedSlashes::RejectRequest,
        Ok(Esc::UnescapeAndRedirect) => EscapedSlashes::UnescapeAndRedirect,
        Ok(Esc::UnescapeAndForward) => EscapedSlashes::UnescapeAndForward,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.path_with_escaped_slashes_action"),
                "unknown value",
            ))
        }
    };
    let strip_port = match (&h.strip_port_mode, h.strip_matching_host_port) {
        (Some(StripPortMode::StripAnyHostPort(true)), true) => return Err(ConfigError::new(
            path,
            "Error: Only one of `strip_matching_host_port` or `strip_any_host_port` can be set.",
        )),
        (Some(StripPortMode::StripAnyHostPort(true)), false) => StripPort::Any,
        (_, true) => StripPort::Matching,
        _ => StripPort::None,
    };
    let internal_addresses = match &h.internal_address_config {
        None => Vec::new(),
        Some(c) => {
            let ipath = format!("{path}.internal_address_config");
            if c.unix_sockets {
                return Err(ConfigError::unsupported(format!("{ipath}.unix_sockets")));
            }
            super::cidr_ranges(&c.cidr_ranges, &format!("{ipath}.cidr_ranges"))?
        }
    };
    let mut timeouts = HcmTimeouts::default();
    // A zero duration turns the timeout off, as in Envoy.
    let nonzero = |d: &Option<envoy_types::pb::google::protobuf::Duration>,
                   p: &str|
     -> Result<Option<Option<std::time::Duration>>, ConfigError> {
        d.as_ref()
            .map(|d| {
                super::duration(d, &format!("{path}.{p}")).map(|d| (!d.is_zero()).then_some(d))
            })
            .transpose()
    };
    if let Some(d) = nonzero(&h.stream_idle_timeout, "stream_idle_timeout")? {
        timeouts.stream_idle = d;
    }
    if let Some(d) = nonzero(&h.request_timeout, "request_timeout")? {
        timeouts.request = d;
    }
    if let Some(d) = nonzero(&h.request_headers_timeout, "request_headers_timeout")? {
        timeouts.request_headers = d;
    }
    if let Some(kb) = &h.max_request_headers_kb {
        // Envoy's proto validation: 1 to 8192.
        if !(1..=8192).contains(&kb.value) {
            return Err(ConfigError::new(
                format!("{path}.max_request_headers_kb"),
                "must be between 1 and 8192",
            ));
        }
        timeouts.max_request_headers_kb = kb.value;
    }
    if let Some(d) = &h.drain_timeout {
        timeouts.drain = super::duration(d, &format!("{path}.drain_timeout"))?;
    }
    if let Some(p) = &h.drain_timeout_jitter {
        if !(0.0..=100.0).contains(&p.value) {
            return Err(ConfigError::new(
                format!("{path}.drain_timeout_jitter.value"),
                "must be between 0 and 100",
            ));
        }
        timeouts.drain_jitter = timeouts.drain.mul_f64(p.value / 100.0);
    }
    if let Some(d) = nonzero(&h.delayed_close_timeout, "delayed_close_timeout")? {
        timeouts.delayed_close = d;
    }
    timeouts.http1_safe_max_duration = h.http1_safe_max_connection_duration;
    let underscores = match &h.common_http_protocol_options {
        None => Underscores::Allow,
        Some(o) => {
            let opath = format!("{path}.common_http_protocol_options");
            let core::HttpProtocolOptions {
                idle_timeout,
                max_connection_duration,
                max_connection_duration_jitter,
                max_headers_count,
                max_response_headers_kb,
                max_stream_duration,
                headers_with_underscores_action,
                max_requests_per_connection,
            } = o;
            for (name, set) in [
                (
                    "max_connection_duration_jitter",
                    max_connection_duration_jitter.is_some(),
                ),
                ("max_response_headers_kb", max_response_headers_kb.is_some()),
            ] {
                if set {
                    return Err(ConfigError::unsupported(format!("{opath}.{name}")));
                }
            }
            let opt = |d: &Option<envoy_types::pb::google::protobuf::Duration>, p: &str| {
                nonzero(d, &format!("common_http_protocol_options.{p}"))
            };
            if let Some(d) = opt(idle_timeout, "idle_timeout")? {
                timeouts.connection_idle = d;
            }
            if let Some(d) = opt(max_connection_duration, "max_connection_duration")? {
                timeouts.max_connection_duration = d;
            }
            if let Some(d) = opt(max_stream_duration, "max_stream_duration")? {
                timeouts.max_stream_duration = d;
            }
            if let Some(n) = max_headers_count {
                // Envoy's proto validation: at least 1.
                if n.value == 0 {
                    return Err(ConfigError::new(
                        format!("{opath}.max_headers_count"),
                        "must be at least 1",
                    ));
                }
                timeouts.max_headers_count = n.value;
            }
            // Zero (or unset) is no limit.
            timeouts.max_requests_per_connection = max_requests_per_connection
                .as_ref()
                .map(|v| v.value)
                .filter(|&n| n > 0);
            use core::http_protocol_options::HeadersWithUnderscoresAction as U;
            match U::try_from(*headers_with_underscores_action) {
                Ok(U::Allow) => Underscores::Allow,
                Ok(U::RejectRequest) => Underscores::Reject,
                Ok(U::DropHeader) => Underscores::Drop,
                Err(_) => {
                    return Err(ConfigError::new(
                        format!("{opath}.headers_with_underscores_action"),
                        "unknown value",
                    ))
                }
            }
        }
    };
    let http10 = match &h.http_protocol_options {
        Some(o) if o.accept_http_10 => Some(Http10 {
            default_host: match o.default_host_for_http_10.as_str() {
                "" => None,
                host => Some(http::HeaderValue::from_str(host).map_err(|_| {
                    ConfigError::new(
                        format!("{path}.http_protocol_options.default_host_for_http_10"),
                        "not a valid host",
                    )
                })?),
            },
        }),
        _ => None,
    };
    let header_case = match &h.http_protocol_options {
        Some(o) => super::header_case(o, &format!("{path}.http_protocol_options"))?,
        None => HeaderCase::Lower,
    };
    let forward_client_cert = xfcc(h, path)?;
    let tracing = tracing(h, path)?;
    let tracer = match h
        .tracing
        .as_ref()
        .and_then(|t| t.provider.as_ref().map(|p| (t, p)))
    {
        Some((t, p)) => Some(Arc::new(tracer(t, p, &format!("{path}.tracing"), egress)?)),
        None => None,
    };
    if tracer.is_some() {
        child_spans(h, path)?;
    }
    Ok(HttpConnectionManager {
        forward_client_cert,
        tracing,
        tracer,
        underscores,
        timeouts,
        http10,
        header_case,
        enable_trailers: h
            .http_protocol_options
            .as_ref()
            .is_some_and(|o| o.enable_trailers),
        allow_chunked_length: h
            .http_protocol_options
            .as_ref()
            .is_some_and(|o| o.allow_chunked_length),
        allow_absolute_url: h
            .http_protocol_options
            .as_ref()
            .and_then(|o| o.allow_absolute_url)
            .is_none_or(|v| v.value),
        ignore_http11_upgrade: h
            .http_protocol_options
            .as_ref()
            .map(|o| {
                o.ignore_http_11_upgrade
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        string_match(
                            m,
                            &format!("{path}.http_protocol_options.ignore_http_11_upgrade[{i}]"),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default(),
        proxy_100_continue: h.proxy_100_continue,
        #[allow(deprecated)]
        log_flush: super::log_flush(
            h.access_log_options.as_ref().map(|o| {
                (
                    o.access_log_flush_interval.as_ref(),
                    o.flush_access_log_on_new_request,
                    o.flush_log_on_tunnel_successfully_established,
                )
            }),
            (
                h.access_log_flush_interval.as_ref(),
                h.flush_access_log_on_new_request,
            ),
            "flush_access_log_on_new_request",
            path,
        )?,
        use_remote_address: h.use_remote_address.as_ref().is_some_and(|v| v.value),
        xff_num_trusted_hops: h.xff_num_trusted_hops,
        skip_xff_append: h.skip_xff_append,
        ip_detection: ip_detection(h, path)?,
        early_mutations: super::header_mutation::early(
            &h.early_header_mutation_extensions,
            &format!("{path}.early_header_mutation_extensions"),
        )?,
        internal_addresses,
        normalize_path: h.normalize_path.as_ref().is_some_and(|v| v.value),
        merge_slashes: h.merge_slashes,
        escaped_slashes,
        strip_port,
        strip_trailing_host_dot: h.strip_trailing_host_dot,
        append_x_forwarded_port: h.append_x_forwarded_port,
        upgrades,
        upgrade_filters,
        http2,
        stat_prefix: h.stat_prefix.clone(),
        codec,
        routes,
        http_filters,
        router,
        access_logs,
        local_reply,
        scheme_to_overwrite,
        scheme_matches_upstream,
        add_user_agent: h.add_user_agent.as_ref().is_some_and(|v| v.value),
        server_name,
        server_header,
        generate_request_id: h.generate_request_id.as_ref().is_none_or(|v| v.value),
        preserve_external_request_id: h.preserve_external_request_id,
        always_set_request_id_in_response: h.always_set_request_id_in_response,
        via,
    })
}

/// An access log `filter`, checked as Envoy checks it (its messages).
fn log_filter(
    f: &envoy_types::pb::envoy::config::accesslog::v3::AccessLogFilter,
    path: &str,
) -> Result<crate::model::LogFilter, ConfigError> {
    use crate::model::{Comparison, ComparisonOp, LogFilter};
    use al::access_log_filter::FilterSpecifier as F;
    use envoy_types::pb::envoy::config::accesslog::v3 as al;
    let comparison =
        |c: &Option<al::ComparisonFilter>, p: &str| -> Result<Comparison, ConfigError> {
            let c = required(c, &format!("{p}.comparison"))?;
            let op = match al::comparison_filter::Op::try_from(c.op) {
                Ok(al::comparison_filter::Op::Eq) => ComparisonOp::Eq,
                Ok(al::comparison_filter::Op::Ge) => ComparisonOp::Ge,
                Ok(al::comparison_filter::Op::Le) => ComparisonOp::Le,
                Ok(al::comparison_filter::Op::Ne) => ComparisonOp::Ne,
                Err(_) => {
                    return Err(ConfigError::new(
                        format!("{p}.comparison.op"),
                        "unknown value",
                    ))
                }
            };
            let v = required(&c.value, &format!("{p}.comparison.value"))?;
            Ok(Comparison {
                op,
                value: v.default_value,
                runtime_key: v.runtime_key.clone(),
            })
        };
    let list = |fs: &[al::AccessLogFilter], p: &str| -> Result<Vec<LogFilter>, ConfigError> {
        if fs.len() < 2 {
            return Err(ConfigError::new(
                format!("{p}.filters"),
                "value must contain at least 2 item(s)",
            ));
        }
        fs.iter()
            .enumerate()
            .map(|(i, f)| log_filter(f, &format!("{p}.filters[{i}]")))
            .collect()
    };
    Ok(match &f.filter_specifier {
        Some(F::StatusCodeFilter(s)) => LogFilter::StatusCode(comparison(
            &s.comparison,
            &format!("{path}.status_code_filter"),
        )?),
        Some(F::DurationFilter(d)) => LogFilter::Duration(comparison(
            &d.comparison,
            &format!("{path}.duration_filter"),
        )?),
        Some(F::ResponseFlagFilter(r)) => {
            for (i, flag) in r.flags.iter().enumerate() {
                if !crate::model::RESPONSE_FLAG_NAMES.contains(&flag.as_str()) {
                    return Err(ConfigError::new(
                        format!("{path}.response_flag_filter.flags[{i}]"),
                        format!(
                            "value must be in list {:?}",
                            crate::model::RESPONSE_FLAG_NAMES
                        ),
                    ));
                }
            }
            LogFilter::ResponseFlags(r.flags.clone())
        }
        Some(F::HeaderFilter(h)) => LogFilter::Header(translate_header_match(
            required(&h.header, &format!("{path}.header_filter.header"))?,
            &format!("{path}.header_filter.header"),
        )?),
        Some(F::AndFilter(a)) => LogFilter::And(list(&a.filters, &format!("{path}.and_filter"))?),
        Some(F::OrFilter(o)) => LogFilter::Or(list(&o.filters, &format!("{path}.or_filter"))?),
        Some(F::NotHealthCheckFilter(_)) => LogFilter::NotHealthCheck,
        Some(F::TraceableFilter(_)) => LogFilter::Traceable,
        Some(F::MetadataFilter(m)) => LogFilter::Metadata {
            matcher: m
                .matcher
                .as_ref()
                .map(|mm| {
                    super::metadata::metadata_matcher(
                        mm,
                        &format!("{path}.metadata_filter.matcher"),
                    )
                })
                .transpose()?,
            if_not_found: m.match_if_key_not_found.as_ref().is_none_or(|v| v.value),
        },
        Some(F::RuntimeFilter(r)) => {
            let rpath = format!("{path}.runtime_filter");
            if r.runtime_key.is_empty() {
                return Err(ConfigError::new(
                    format!("{rpath}.runtime_key"),
                    "value length must be at least 1 characters",
                ));
            }
            let default = match &r.percent_sampled {
                Some(p) => fraction(p, &format!("{rpath}.percent_sampled"))?,
                None => crate::runtime::Fraction {
                    numerator: 0,
                    denominator: 100,
                },
            };
            LogFilter::Runtime {
                fraction: crate::runtime::RuntimeFraction {
                    key: r.runtime_key.clone(),
                    default,
                },
                independent: r.use_independent_randomness,
            }
        }
        Some(F::GrpcStatusFilter(g)) => {
            let mut statuses = Vec::with_capacity(g.statuses.len());
            for (i, s) in g.statuses.iter().enumerate() {
                if !(0..=16).contains(s) {
                    return Err(ConfigError::new(
                        format!("{path}.grpc_status_filter.statuses[{i}]"),
                        "value must be one of the defined enum values",
                    ));
                }
                statuses.push(*s as u32);
            }
            LogFilter::GrpcStatus {
                statuses,
                exclude: g.exclude,
            }
        }
        Some(F::LogTypeFilter(t)) => {
            use envoy_types::pb::envoy::data::accesslog::v3::AccessLogType;
            let mut types = Vec::with_capacity(t.types.len());
            for (i, v) in t.types.iter().enumerate() {
                let name = AccessLogType::try_from(*v)
                    .map_err(|_| {
                        ConfigError::new(
                            format!("{path}.log_type_filter.types[{i}]"),
                            "value must be one of the defined enum values",
                        )
                    })?
                    .as_str_name();
                // The proto's names are Envoy's operator names (`DownstreamEnd`).
                types.push(name.to_string());
            }
            LogFilter::LogType {
                types,
                exclude: t.exclude,
            }
        }
        Some(F::ExtensionFilter(x)) => {
            let xpath = format!("{path}.extension_filter.typed_config");
            let Some(al::extension_filter::ConfigType::TypedConfig(any)) = &x.config_type else {
                return Err(ConfigError::new(xpath, "required"));
            };
            if type_name(&any.type_url)
                != "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
            {
                return Err(ConfigError::new(
                    xpath,
                    format!("unsupported access log filter ({})", any.type_url),
                ));
            }
            let f: envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter =
                unpack(any, &xpath)?;
            let expr = crate::cel::parse(&f.expression).map_err(|e| {
                ConfigError::new(
                    format!("{xpath}.expression"),
                    format!("failed to parse CEL expression: {e}"),
                )
            })?;
            LogFilter::Cel(Arc::new(expr))
        }
        None => return Err(ConfigError::new(path, "a filter is required")),
    })
}

pub(super) fn translate_access_log(
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
            use core::substitution_format_string::Format as F;
            use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat;
            // The deprecated forms are the same formats as `log_format` (Envoy 1.40 renders
            // `json_format` typed, as `typed_json_format`); an empty `format` is the default.
            let as_sfs = |format| core::SubstitutionFormatString {
                format: Some(format),
                ..Default::default()
            };
            #[allow(deprecated)]
            let fmt = match f.access_log_format {
                Some(AccessLogFormat::LogFormat(s)) => Some(s),
                Some(AccessLogFormat::Format(t)) if t.is_empty() => None,
                Some(AccessLogFormat::Format(t)) => {
                    Some(as_sfs(F::TextFormatSource(core::DataSource {
                        specifier: Some(core::data_source::Specifier::InlineString(t)),
                        ..Default::default()
                    })))
                }
                Some(AccessLogFormat::JsonFormat(st) | AccessLogFormat::TypedJsonFormat(st)) => {
                    Some(as_sfs(F::JsonFormat(st)))
                }
                None => None,
            };
            (AccessLogSink::File(f.path), fmt)
        }
        "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig" => (
            AccessLogSink::OpenTelemetry(Arc::new(otel_access_log(&unpack(any, &tpath)?, &tpath)?)),
            None,
        ),
        other => {
            return Err(ConfigError::new(
                tpath,
                format!("unsupported access logger '{}' ({other})", a.name),
            ))
        }
    };
    let filter = a
        .filter
        .as_ref()
        .map(|f| log_filter(f, &format!("{path}.filter")))
        .transpose()?;
    let format = match log_format {
        None => Format::envoy_default(),
        Some(sfs) => substitution_format(&sfs, &format!("{tpath}.log_format"))?,
    };
    Ok(AccessLog {
        sink,
        format: Arc::new(format),
        filter,
    })
}

/// `envoy.access_loggers.open_telemetry`'s configuration at `path`: records over OTLP gRPC.
fn otel_access_log(
    c: &envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig,
    path: &str,
) -> Result<crate::model::OtelAccessLog, ConfigError> {
    use envoy_types::pb::opentelemetry::proto::common::v1::{any_value::Value as V, AnyValue};
    #[allow(deprecated)]
    let common = c.common_config.as_ref();
    for (set, field) in [
        (c.http_service.is_some(), "http_service"),
        (!c.resource_detectors.is_empty(), "resource_detectors"),
        (
            !c.filter_state_objects_to_log.is_empty(),
            "filter_state_objects_to_log",
        ),
        (!c.custom_tags.is_empty(), "custom_tags"),
    ] {
        if set {
            return Err(ConfigError::unsupported(format!("{path}.{field}")));
        }
    }
    if let Some(cc) = common {
        for (set, field) in [
            (
                !cc.filter_state_objects_to_log.is_empty(),
                "filter_state_objects_to_log",
            ),
            (
                cc.grpc_stream_retry_policy.is_some(),
                "grpc_stream_retry_policy",
            ),
            (!cc.custom_tags.is_empty(), "custom_tags"),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!(
                    "{path}.common_config.{field}"
                )));
            }
        }
    }
    let (grpc, gpath) = match (common, &c.grpc_service) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                path,
                "only one of common_config, grpc_service or http_service may be set",
            ))
        }
        (None, Some(g)) => (g, format!("{path}.grpc_service")),
        (Some(cc), None) => match &cc.grpc_service {
            Some(g) => (g, format!("{path}.common_config.grpc_service")),
            None => {
                return Err(ConfigError::new(
                    format!("{path}.common_config.grpc_service"),
                    "required",
                ))
            }
        },
        (None, None) => {
            return Err(ConfigError::new(
                format!("{path}.grpc_service"),
                "a grpc_service is required (skiff exports over OTLP gRPC)",
            ))
        }
    };
    let (cluster, authority, metadata) = super::envoy_grpc(grpc, &gpath)?;
    let timeout = grpc
        .timeout
        .as_ref()
        .map(|d| super::duration(d, &format!("{gpath}.timeout")))
        .transpose()?
        .filter(|d| !d.is_zero());
    let log_name = match common {
        Some(cc) if c.log_name.is_empty() => cc.log_name.clone(),
        _ => c.log_name.clone(),
    };
    let flush = match (
        &c.buffer_flush_interval,
        common.and_then(|cc| cc.buffer_flush_interval.as_ref()),
    ) {
        (Some(d), _) => Some((d, format!("{path}.buffer_flush_interval"))),
        (None, Some(d)) => Some((d, format!("{path}.common_config.buffer_flush_interval"))),
        (None, None) => None,
    };
    let flush_interval = match flush {
        Some((d, at)) => {
            let d = super::duration(d, &at)?;
            if d.is_zero() {
                return Err(ConfigError::new(at, "must be greater than 0"));
            }
            d
        }
        None => std::time::Duration::from_secs(1),
    };
    let buffer_size = c
        .buffer_size_bytes
        .as_ref()
        .or(common.and_then(|cc| cc.buffer_size_bytes.as_ref()))
        .map_or(16_384, |v| v.value as usize);
    let mut ext = Extensions::default();
    for (i, f) in c.formatters.iter().enumerate() {
        let fpath = format!("{path}.formatters[{i}].typed_config");
        match f.typed_config.as_ref().map(|a| type_name(&a.type_url)) {
            Some("envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery") => {
                ext.req_without_query = true
            }
            _ => {
                return Err(ConfigError::new(
                    fpath,
                    format!("unsupported formatter extension '{}'", f.name),
                ))
            }
        }
    }
    // Envoy formats strings, and lists and key-value lists of them, only.
    fn value(
        v: &AnyValue,
        ext: Extensions,
        path: &str,
    ) -> Result<crate::model::OtelValue, ConfigError> {
        use crate::model::OtelValue;
        match &v.value {
            Some(V::StringValue(s)) => Format::parse_with(s, ext)
                .map(OtelValue::Text)
                .map_err(|e| ConfigError::new(format!("{path}.string_value"), e)),
            Some(V::ArrayValue(a)) => a
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| value(v, ext, &format!("{path}.array_value.values[{i}]")))
                .collect::<Result<_, _>>()
                .map(OtelValue::List),
            Some(V::KvlistValue(l)) => {
                list(&l.values, ext, &format!("{path}.kvlist_value")).map(OtelValue::Map)
            }
            _ => Err(ConfigError::new(
                path,
                "Only string values, nested key value lists and array values are supported in \
                 OpenTelemetry access log format.",
            )),
        }
    }
    fn list(
        l: &[envoy_types::pb::opentelemetry::proto::common::v1::KeyValue],
        ext: Extensions,
        path: &str,
    ) -> Result<Vec<(String, crate::model::OtelValue)>, ConfigError> {
        l.iter()
            .enumerate()
            .map(|(i, kv)| {
                let vpath = format!("{path}.values[{i}].value");
                match &kv.value {
                    Some(v) => Ok((kv.key.clone(), value(v, ext, &vpath)?)),
                    None => Err(ConfigError::new(vpath, "required")),
                }
            })
            .collect()
    }
    Ok(crate::model::OtelAccessLog {
        cluster,
        authority,
        metadata,
        timeout,
        log_name,
        builtin_labels: !c.disable_builtin_labels,
        resource_attributes: c
            .resource_attributes
            .as_ref()
            .map(|r| r.values.clone())
            .unwrap_or_default(),
        body: c
            .body
            .as_ref()
            .map(|b| value(b, ext, &format!("{path}.body")))
            .transpose()?,
        attributes: match &c.attributes {
            Some(a) => list(&a.values, ext, &format!("{path}.attributes"))?,
            None => Vec::new(),
        },
        flush_interval,
        buffer_size,
        stat_prefix: c.stat_prefix.clone(),
    })
}

/// A `SubstitutionFormatString`: a text format (inline) or a `json_format`, with its formatter
/// extensions.
pub(super) fn substitution_format(
    sfs: &core::SubstitutionFormatString,
    fpath: &str,
) -> Result<Format, ConfigError> {
    use core::substitution_format_string::Format as F;
    let mut ext = Extensions::default();
    for (i, f) in sfs.formatters.iter().enumerate() {
        let path = format!("{fpath}.formatters[{i}].typed_config");
        let any = f
            .typed_config
            .as_ref()
            .ok_or_else(|| ConfigError::new(&path, "required"))?;
        match type_name(&any.type_url) {
            "envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery" => {
                ext.req_without_query = true
            }
            other => {
                return Err(ConfigError::new(
                    path,
                    format!("unsupported formatter extension '{}' ({other})", f.name),
                ))
            }
        }
    }
    let text = match &sfs.format {
        #[allow(deprecated)]
        Some(F::TextFormat(t)) => t.clone(),
        // Inline (string or bytes) or from a file, read once as Envoy reads it.
        Some(F::TextFormatSource(ds)) => {
            let tpath = format!("{fpath}.text_format_source");
            let bytes = super::route_action::data_source(ds, &tpath)?;
            String::from_utf8(bytes.to_vec())
                .map_err(|_| ConfigError::new(tpath, "not valid UTF-8"))?
        }
        Some(F::JsonFormat(st)) => {
            let path = format!("{fpath}.json_format");
            if st.fields.is_empty() {
                return Err(ConfigError::new(path, "needs at least one field"));
            }
            return Ok(Format::json(json_template(st, ext, &path)?));
        }
        None => return Err(ConfigError::new(fpath, "needs text_format_source")),
    };
    Format::parse_with(&text, ext)
        .map_err(|e| ConfigError::new(format!("{fpath}.text_format_source"), e))
}

/// A connection manager's `local_reply_config`.
fn local_reply_config(
    c: &hcm::LocalReplyConfig,
    path: &str,
) -> Result<crate::model::LocalReplyConfig, ConfigError> {
    use crate::model::{LocalReplyConfig, ReplyMapper};
    let mut mappers = Vec::with_capacity(c.mappers.len());
    for (i, m) in c.mappers.iter().enumerate() {
        let mpath = format!("{path}.mappers[{i}]");
        let filter = m
            .filter
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{mpath}.filter"), "required"))?;
        let status = match &m.status_code {
            None => None,
            Some(v) if (200..600).contains(&v.value) => {
                http::StatusCode::from_u16(v.value as u16).ok()
            }
            Some(v) => {
                return Err(ConfigError::new(
                    format!("{mpath}.status_code"),
                    format!("{} is not in [200, 600)", v.value),
                ))
            }
        };
        if m.headers_to_add.len() > 1000 {
            return Err(ConfigError::new(
                format!("{mpath}.headers_to_add"),
                "at most 1000 entries",
            ));
        }
        mappers.push(ReplyMapper {
            filter: log_filter(filter, &format!("{mpath}.filter"))?,
            status,
            body: m
                .body
                .as_ref()
                .map(|ds| super::route_action::data_source(ds, &format!("{mpath}.body")))
                .transpose()?,
            body_format: m
                .body_format_override
                .as_ref()
                .map(|f| body_format(f, &format!("{mpath}.body_format_override")))
                .transpose()?,
            headers: super::route_action::header_adds(
                &m.headers_to_add,
                &format!("{mpath}.headers_to_add"),
            )?,
        });
    }
    Ok(LocalReplyConfig {
        mappers,
        body_format: c
            .body_format
            .as_ref()
            .map(|f| body_format(f, &format!("{path}.body_format")))
            .transpose()?,
    })
}

/// A local reply's body format and its content type (Envoy's: `content_type`, else JSON's or
/// plain text's).
pub(super) fn body_format(
    sfs: &core::SubstitutionFormatString,
    path: &str,
) -> Result<crate::model::BodyFormat, ConfigError> {
    Ok(crate::model::BodyFormat {
        format: Arc::new(substitution_format(sfs, path)?),
        content_type: body_content_type(sfs, path)?,
    })
}

/// The content type of a body a format writes: `content_type`, else JSON's or plain text's.
pub(super) fn body_content_type(
    sfs: &core::SubstitutionFormatString,
    path: &str,
) -> Result<http::HeaderValue, ConfigError> {
    use core::substitution_format_string::Format as F;
    if !sfs.content_type.is_empty() {
        http::HeaderValue::from_str(&sfs.content_type).map_err(|_| {
            ConfigError::new(format!("{path}.content_type"), "not a valid header value")
        })
    } else if matches!(sfs.format, Some(F::JsonFormat(_))) {
        Ok(http::HeaderValue::from_static("application/json"))
    } else {
        Ok(http::HeaderValue::from_static("text/plain"))
    }
}

/// A `json_format` object: each string a format, numbers, booleans, lists and objects kept.
fn json_template(
    st: &envoy_types::pb::google::protobuf::Struct,
    ext: Extensions,
    path: &str,
) -> Result<json::Template, ConfigError> {
    let mut fields = Vec::with_capacity(st.fields.len());
    for (k, v) in &st.fields {
        fields.push((k.clone(), json_value(v, ext, &format!("{path}.{k}"))?));
    }
    Ok(json::Template::object(fields))
}

fn json_value(
    v: &envoy_types::pb::google::protobuf::Value,
    ext: Extensions,
    path: &str,
) -> Result<json::Template, ConfigError> {
    use envoy_types::pb::google::protobuf::value::Kind;
    Ok(match &v.kind {
        Some(Kind::StringValue(s)) => {
            json::Template::string(s, ext).map_err(|e| ConfigError::new(path, e))?
        }
        Some(Kind::NumberValue(n)) => json::Template::number(*n),
        Some(Kind::BoolValue(b)) => json::Template::bool(*b),
        Some(Kind::NullValue(_)) | None => json::Template::null(),
        Some(Kind::StructValue(st)) => json_template(st, ext, path)?,
        Some(Kind::ListValue(l)) => json::Template::list(
            l.values
                .iter()
                .enumerate()
                .map(|(i, v)| json_value(v, ext, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
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

/// Whether the bootstrap names a tracer (set once by the serving process): then Envoy would
/// make spans and send their context upstream, which skiff does not, so `tracing` is refused.
static BOOTSTRAP_TRACER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Says whether the bootstrap names a tracer.
pub fn set_bootstrap_tracer(present: bool) {
    let _ = BOOTSTRAP_TRACER.set(present);
}

/// `tracing` without a tracer, and `request_id_extension` (the UUID one only).
fn tracing(
    h: &hcm::HttpConnectionManager,
    path: &str,
) -> Result<Option<TraceSampling>, ConfigError> {
    let (mut pack_trace_reason, mut use_request_id) = (true, true);
    if let Some(ext) = &h.request_id_extension {
        let tpath = format!("{path}.request_id_extension.typed_config");
        let any = required(&ext.typed_config, &tpath)?;
        let uuid: envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig =
            unpack(any, &tpath)?;
        pack_trace_reason = uuid.pack_trace_reason.is_none_or(|v| v.value);
        use_request_id = uuid
            .use_request_id_for_trace_sampling
            .is_none_or(|v| v.value);
    }
    let Some(t) = &h.tracing else {
        return Ok(None);
    };
    let tpath = format!("{path}.tracing");
    if t.provider.is_none() && BOOTSTRAP_TRACER.get().copied().unwrap_or(false) {
        return Err(ConfigError::new(
            tpath,
            "unsupported with the bootstrap's tracer: skiff runs a connection manager's own \
             `provider` only",
        ));
    }
    // A percentage, as Envoy rounds it to ten-thousandths.
    let share = |p: &Option<envoy_types::pb::envoy::r#type::v3::Percent>, field: &str| match p {
        None => Ok(10_000),
        Some(p) if (0.0..=100.0).contains(&p.value) => Ok((p.value * 100.0).round() as u32),
        Some(_) => Err(ConfigError::new(
            format!("{tpath}.{field}.value"),
            "value must be inside range [0, 100]",
        )),
    };
    Ok(Some(TraceSampling {
        client: share(&t.client_sampling, "client_sampling")?,
        random: share(&t.random_sampling, "random_sampling")?,
        overall: share(&t.overall_sampling, "overall_sampling")?,
        pack_trace_reason,
        use_request_id,
    }))
}

/// With a tracer, Envoy traces what filters do on a request's behalf: the calls of ext_authz
/// and the rate limit filter (child spans, and their context sent to the service). skiff
/// makes the connection manager's and the router's spans only, so those are refused next to a
/// tracer.
fn child_spans(h: &hcm::HttpConnectionManager, path: &str) -> Result<(), ConfigError> {
    for (i, f) in h.http_filters.iter().enumerate() {
        let Some(hcm::http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        let tpath = format!("{path}.http_filters[{i}].typed_config");
        let refused = match type_name(&any.type_url) {
            "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
            | "envoy.extensions.filters.http.ratelimit.v3.RateLimit" => Some(tpath),
            _ => None,
        };
        if let Some(at) = refused {
            return Err(ConfigError::new(
                at,
                "unsupported with a tracer: skiff traces the connection manager's own spans \
                 only (not a filter's calls or child spans)",
            ));
        }
    }
    Ok(())
}

/// `envoy.tracers.opentelemetry`'s configuration at `path`: OTLP over gRPC to a cluster.
fn open_telemetry(
    c: &envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig,
    path: &str,
) -> Result<crate::trace::OpenTelemetry, ConfigError> {
    let envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig {
        grpc_service,
        http_service,
        exporter,
        service_name,
        resource_detectors,
        sampler,
        max_cache_size,
        set_telemetry_sdk_resource_attributes,
        set_service_name_resource_attribute,
        set_instrumentation_scope,
    } = c;
    for (set, field) in [
        (http_service.is_some(), "http_service"),
        (exporter.is_some(), "exporter"),
        (!resource_detectors.is_empty(), "resource_detectors"),
        (max_cache_size.is_some(), "max_cache_size"),
    ] {
        if set {
            return Err(ConfigError::unsupported(format!("{path}.{field}")));
        }
    }
    let gpath = format!("{path}.grpc_service");
    let Some(grpc) = grpc_service else {
        return Err(ConfigError::new(
            gpath,
            "a grpc_service is required (skiff exports over OTLP gRPC)",
        ));
    };
    let (cluster, authority, metadata) = super::envoy_grpc(grpc, &gpath)?;
    Ok(crate::trace::OpenTelemetry {
        cluster,
        authority,
        metadata,
        timeout: grpc
            .timeout
            .as_ref()
            .map(|d| super::duration(d, &format!("{gpath}.timeout")))
            .transpose()?
            .filter(|d| !d.is_zero()),
        service_name: if service_name.is_empty() {
            "unknown_service:envoy".to_string()
        } else {
            service_name.clone()
        },
        set_service_name: set_service_name_resource_attribute
            .as_ref()
            .is_none_or(|v| v.value),
        set_sdk_attributes: set_telemetry_sdk_resource_attributes
            .as_ref()
            .is_none_or(|v| v.value),
        set_scope: set_instrumentation_scope.as_ref().is_none_or(|v| v.value),
        sampler: sampler
            .as_ref()
            .map(|s| otel_sampler(s, &format!("{path}.sampler")))
            .transpose()?,
    })
}

/// An OpenTelemetry tracer's `sampler` at `path`.
fn otel_sampler(
    s: &core::TypedExtensionConfig,
    path: &str,
) -> Result<crate::trace::Sampler, ConfigError> {
    use crate::trace::Sampler;
    use envoy_types::pb::envoy::extensions::tracers::opentelemetry::samplers::v3 as samplers;
    let tpath = format!("{path}.typed_config");
    let any = s
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
    Ok(match type_name(&any.type_url) {
        "envoy.extensions.tracers.opentelemetry.samplers.v3.AlwaysOnSamplerConfig" => {
            Sampler::AlwaysOn
        }
        "envoy.extensions.tracers.opentelemetry.samplers.v3.TraceIdRatioBasedSamplerConfig" => {
            let c: samplers::TraceIdRatioBasedSamplerConfig = unpack(any, &tpath)?;
            let p = c.sampling_percentage.unwrap_or_default();
            use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
            let denominator = match D::try_from(p.denominator) {
                Ok(D::Hundred) => 100,
                Ok(D::TenThousand) => 10_000,
                Ok(D::Million) => 1_000_000,
                Err(_) => {
                    return Err(ConfigError::new(
                        format!("{tpath}.sampling_percentage.denominator"),
                        "value must be one of the defined enum values",
                    ))
                }
            };
            Sampler::TraceIdRatio {
                numerator: p.numerator.min(denominator),
                denominator,
            }
        }
        "envoy.extensions.tracers.opentelemetry.samplers.v3.ParentBasedSamplerConfig" => {
            let c: samplers::ParentBasedSamplerConfig = unpack(any, &tpath)?;
            let wpath = format!("{tpath}.wrapped_sampler");
            let inner = c
                .wrapped_sampler
                .as_ref()
                .ok_or_else(|| ConfigError::new(&wpath, "required"))?;
            Sampler::ParentBased(Box::new(otel_sampler(inner, &wpath)?))
        }
        other => {
            return Err(ConfigError::new(
                tpath,
                format!("unsupported sampler '{}' ({other})", s.name),
            ))
        }
    })
}

/// `tracing.provider` at `path` (`tracing`), with what the spans carry.
fn tracer(
    t: &hcm::http_connection_manager::Tracing,
    p: &envoy_types::pb::envoy::config::trace::v3::tracing::Http,
    path: &str,
    egress: bool,
) -> Result<crate::trace::HttpTracer, ConfigError> {
    use crate::trace::{HttpTracer, Provider, Zipkin};
    use envoy_types::pb::envoy::config::trace::v3::zipkin_config::{
        CollectorEndpointVersion, TraceContextOption,
    };
    use envoy_types::pb::envoy::config::trace::v3::ZipkinConfig;
    let ppath = format!("{path}.provider");
    if t.verbose {
        return Err(ConfigError::unsupported(format!("{path}.verbose")));
    }
    let any = match &p.config_type {
        Some(
            envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType::TypedConfig(any),
        ) => any,
        None => {
            return Err(ConfigError::new(
                format!("{ppath}.typed_config"),
                "required",
            ))
        }
    };
    let tpath = format!("{ppath}.typed_config");
    let provider = match type_name(&any.type_url) {
        "envoy.config.trace.v3.ZipkinConfig" => {
            #[allow(deprecated)]
            let ZipkinConfig {
                collector_cluster,
                collector_endpoint,
                trace_id_128bit,
                shared_span_context,
                collector_endpoint_version,
                collector_hostname,
                split_spans_for_request,
                trace_context_option,
                collector_service,
                timestamp_trace_ids,
            } = unpack(any, &tpath)?;
            if collector_service.is_some() {
                return Err(ConfigError::unsupported(format!(
                    "{tpath}.collector_service"
                )));
            }
            if collector_cluster.is_empty() {
                return Err(ConfigError::new(
                    format!("{tpath}.collector_cluster"),
                    "collector_cluster must be specified",
                ));
            }
            if collector_endpoint.is_empty() {
                return Err(ConfigError::new(
                    format!("{tpath}.collector_endpoint"),
                    "collector_endpoint must be specified",
                ));
            }
            match CollectorEndpointVersion::try_from(collector_endpoint_version) {
                Ok(CollectorEndpointVersion::HttpJson) => {}
                #[allow(deprecated)]
                Ok(CollectorEndpointVersion::DeprecatedAndUnavailableDoNotUse) => {
                    return Err(ConfigError::new(
                        format!("{tpath}.collector_endpoint_version"),
                        "the default DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE is deprecated: a \
                         value must be set",
                    ))
                }
                _ => {
                    return Err(ConfigError::unsupported(format!(
                        "{tpath}.collector_endpoint_version"
                    )))
                }
            }
            if split_spans_for_request {
                return Err(ConfigError::unsupported(format!(
                    "{tpath}.split_spans_for_request"
                )));
            }
            if trace_context_option != TraceContextOption::UseB3 as i32 {
                return Err(ConfigError::unsupported(format!(
                    "{tpath}.trace_context_option"
                )));
            }
            if timestamp_trace_ids {
                return Err(ConfigError::unsupported(format!(
                    "{tpath}.timestamp_trace_ids"
                )));
            }
            Provider::Zipkin(Arc::new(Zipkin {
                hostname: if collector_hostname.is_empty() {
                    collector_cluster.clone()
                } else {
                    collector_hostname
                },
                cluster: collector_cluster,
                endpoint: collector_endpoint,
                trace_id_128bit,
                shared_span_context: shared_span_context.is_none_or(|v| v.value),
            }))
        }
        "envoy.config.trace.v3.OpenTelemetryConfig" => {
            Provider::OpenTelemetry(Arc::new(open_telemetry(&unpack(any, &tpath)?, &tpath)?))
        }
        other => {
            return Err(ConfigError::new(
                tpath,
                format!("unsupported tracer '{}' ({other})", p.name),
            ))
        }
    };
    let custom_tags = custom_tags(&t.custom_tags, path)?;
    Ok(HttpTracer {
        upstream_operation: upstream_operation(
            &t.upstream_operation,
            &format!("{path}.upstream_operation"),
        )?,
        provider,
        custom_tags,
        max_path_tag_length: t
            .max_path_tag_length
            .as_ref()
            .map_or(256, |v| v.value as usize),
        egress,
        spawn_upstream_span: t.spawn_upstream_span.as_ref().is_some_and(|v| v.value),
        operation: span_operation(&t.operation, &format!("{path}.operation"))?,
    })
}

/// A `tracing.upstream_operation` (the connection manager's or a route's): a format naming
/// each upstream request's span. Its operators read the request as it goes upstream, the
/// host and cluster it goes to, the downstream local address and the response's status;
/// others are refused (an upstream span does not see the rest of the stream's record in
/// skiff).
fn upstream_operation(op: &str, path: &str) -> Result<Option<Arc<Format>>, ConfigError> {
    use crate::access_log::{Body, Op, Piece};
    let Some(f) = span_operation(op, path)? else {
        return Ok(None);
    };
    if let Body::Text(pieces) = f.body() {
        for p in pieces {
            let Piece::Op(op, _) = p else { continue };
            let read = matches!(
                op,
                Op::Req(..)
                    | Op::ReqWithoutQuery(..)
                    | Op::Path { .. }
                    | Op::UpstreamHost
                    | Op::UpstreamHostName
                    | Op::UpstreamCluster
                    | Op::UpstreamClusterRaw
                    | Op::DownstreamLocalAddress
                    | Op::DownstreamLocalAddressWithoutPort
                    | Op::DownstreamLocalPort
                    | Op::ResponseCode
            );
            if !read {
                return Err(ConfigError::new(
                    path,
                    format!(
                        "unsupported operator in an upstream span's name ({op:?}): request \
                         headers, the path, the upstream host and cluster, the downstream \
                         local address and the response code are read"
                    ),
                ));
            }
        }
    }
    Ok(Some(f))
}

/// A `tracing.operation` (the connection manager's or a route's): a format naming the span,
/// rendered when it ends.
fn span_operation(op: &str, path: &str) -> Result<Option<Arc<Format>>, ConfigError> {
    if op.is_empty() {
        return Ok(None);
    }
    Format::parse(op)
        .map(|f| Some(Arc::new(f)))
        .map_err(|e| ConfigError::new(path, e))
}

/// `custom_tags` at `path` (`…tracing`).
fn custom_tags(
    tags: &[envoy_types::pb::envoy::r#type::tracing::v3::CustomTag],
    path: &str,
) -> Result<Vec<crate::trace::CustomTag>, ConfigError> {
    use crate::trace::CustomTag;
    let mut custom_tags = Vec::with_capacity(tags.len());
    for (i, c) in tags.iter().enumerate() {
        use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag::Type;
        let cpath = format!("{path}.custom_tags[{i}]");
        if c.tag.is_empty() {
            return Err(ConfigError::new(
                format!("{cpath}.tag"),
                "value length must be at least 1 characters",
            ));
        }
        let tag = c.tag.clone();
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        custom_tags.push(match &c.r#type {
            Some(Type::Literal(l)) => CustomTag::Fixed {
                tag,
                value: Some(l.value.clone()),
            },
            Some(Type::Environment(e)) => CustomTag::Fixed {
                tag,
                value: std::env::var(&e.name)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .or_else(|| non_empty(&e.default_value)),
            },
            Some(Type::RequestHeader(h)) => CustomTag::RequestHeader {
                tag,
                name: http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    ConfigError::new(format!("{cpath}.request_header.name"), "not a header name")
                })?,
                default: non_empty(&h.default_value),
            },
            Some(Type::Metadata(_)) => {
                return Err(ConfigError::unsupported(format!("{cpath}.metadata")))
            }
            #[allow(unreachable_patterns)]
            Some(_) => return Err(ConfigError::unsupported(cpath)),
            None => return Err(ConfigError::new(cpath, "a type is required")),
        });
    }
    Ok(custom_tags)
}

/// A route's `tracing` at `path`: its sampling (each 100% unless set, as Envoy's), its custom
/// tags and its operation.
fn route_tracing(
    t: &route::Tracing,
    path: &str,
) -> Result<crate::trace::RouteTracing, ConfigError> {
    let share = |f: &Option<envoy_types::pb::envoy::r#type::v3::FractionalPercent>,
                 field: &str|
     -> Result<(u32, u32), ConfigError> {
        match f {
            None => Ok((100, 100)),
            Some(f) => fraction(f, &format!("{path}.{field}"))
                .map(|f| (f.numerator as u32, f.denominator as u32)),
        }
    };
    Ok(crate::trace::RouteTracing {
        upstream_operation: upstream_operation(
            &t.upstream_operation,
            &format!("{path}.upstream_operation"),
        )?,
        client: share(&t.client_sampling, "client_sampling")?,
        random: share(&t.random_sampling, "random_sampling")?,
        overall: share(&t.overall_sampling, "overall_sampling")?,
        custom_tags: custom_tags(&t.custom_tags, path)?,
        operation: span_operation(&t.operation, &format!("{path}.operation"))?,
    })
}

/// An `http_filters` list at `path` (the connection manager's, or an upgrade's): the filters
/// before the router, and the router's configuration.
fn http_filter_list(
    list: &[hcm::HttpFilter],
    path: &str,
    direction: TrafficDirection,
) -> Result<(Vec<HttpFilter>, RouterConfig), ConfigError> {
    let mut router = None;
    let mut http_filters = Vec::new();
    for (i, f) in list.iter().enumerate() {
        let fpath = format!("{path}[{i}]");
        let typed = match &f.config_type {
            Some(hcm::http_filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let any = typed_config(typed, f.config_type.is_some(), &fpath)?;
        let tpath = format!("{fpath}.typed_config");
        let config = match type_name(&any.type_url) {
            "envoy.extensions.filters.http.router.v3.Router" => {
                if i + 1 != list.len() {
                    return Err(ConfigError::new(
                        fpath,
                        "the router must be the last HTTP filter",
                    ));
                }
                if f.disabled {
                    return Err(ConfigError::new(
                        format!("{fpath}.disabled"),
                        "the terminal filter cannot be disabled",
                    ));
                }
                let r: Router = unpack(any, &tpath)?;
                // Deprecated for the tracer's spawn_upstream_span, and honoured as Envoy does.
                #[allow(deprecated)]
                let start_child_span = r.start_child_span;
                router = Some(RouterConfig {
                    dynamic_stats: r.dynamic_stats.as_ref().is_none_or(|v| v.value),
                    suppress_envoy_headers: r.suppress_envoy_headers,
                    start_child_span,
                });
                None
            }
            "envoy.extensions.filters.http.compressor.v3.Compressor" => {
                Some(super::compressor::translate(&unpack(any, &tpath)?, &tpath)?)
            }
            "envoy.extensions.filters.http.decompressor.v3.Decompressor" => Some(
                super::compressor::translate_decompressor(&unpack(any, &tpath)?, &tpath)?,
            ),
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit" => {
                Some(HttpFilterConfig::LocalRateLimit(Arc::new(
                    super::ratelimit::translate(&unpack(any, &tpath)?, &tpath)?,
                )))
            }
            crate::istio::ALPN => Some(HttpFilterConfig::IstioAlpn(Arc::new(super::istio::alpn(
                &unpack(any, &tpath)?,
                &tpath,
            )?))),
            "envoy.extensions.filters.http.health_check.v3.HealthCheck" => {
                Some(HttpFilterConfig::HealthCheck(Arc::new(health_check(
                    &unpack(any, &tpath)?,
                    &tpath,
                )?)))
            }
            crate::istio::PEER_METADATA => Some(HttpFilterConfig::PeerMetadata(Arc::new(
                super::istio::peer_metadata(&unpack(any, &tpath)?, &tpath)?,
            ))),
            "envoy.extensions.filters.http.wasm.v3.Wasm" => Some(HttpFilterConfig::PeerMetadata(
                Arc::new(super::istio::null_vm_metadata_exchange(
                    &unpack(any, &tpath)?,
                    &tpath,
                    direction,
                )?),
            )),
            "envoy.extensions.filters.http.rbac.v3.RBAC" => Some(HttpFilterConfig::Rbac(Arc::new(
                super::rbac::filter(&unpack(any, &tpath)?, &tpath)?,
            ))),
            "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication" => {
                Some(HttpFilterConfig::JwtAuthn(Arc::new(super::jwt::filter(
                    &unpack(any, &tpath)?,
                    &tpath,
                )?)))
            }
            "envoy.extensions.filters.http.header_to_metadata.v3.Config" => {
                Some(HttpFilterConfig::HeaderToMetadata(Arc::new(
                    super::header_to_metadata::translate(&unpack(any, &tpath)?, &tpath, false)?,
                )))
            }
            "envoy.extensions.filters.http.fault.v3.HTTPFault" => Some(HttpFilterConfig::Fault(
                Arc::new(super::fault::translate(&unpack(any, &tpath)?, &tpath)?),
            )),
            "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz" => {
                Some(HttpFilterConfig::ExtAuthz(Arc::new(
                    super::ext_authz::filter(&unpack(any, &tpath)?, &tpath)?,
                )))
            }
            "envoy.extensions.filters.http.ratelimit.v3.RateLimit" => {
                Some(HttpFilterConfig::RateLimit(Arc::new(
                    super::ratelimit::global(&unpack(any, &tpath)?, &tpath)?,
                )))
            }
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation" => {
                Some(HttpFilterConfig::HeaderMutation(Arc::new(
                    super::header_mutation::translate(&unpack(any, &tpath)?, &tpath)?,
                )))
            }
            "envoy.extensions.filters.http.stateful_session.v3.StatefulSession" => {
                Some(HttpFilterConfig::StatefulSession(Arc::new(
                    super::stateful_session::translate(&unpack(any, &tpath)?, &tpath)?,
                )))
            }
            "envoy.extensions.filters.http.basic_auth.v3.BasicAuth" => {
                Some(HttpFilterConfig::BasicAuth(Arc::new(
                    super::basic_auth::translate(&unpack(any, &tpath)?, &tpath)?,
                )))
            }
            "envoy.extensions.filters.http.set_filter_state.v3.Config" => {
                Some(HttpFilterConfig::SetFilterState(Arc::new(
                    super::filter_state::http(&unpack(any, &tpath)?, &tpath)?,
                )))
            }
            // The CORS filter acts by the routes' policies (`typed_per_filter_config`).
            "envoy.extensions.filters.http.cors.v3.Cors" => Some(HttpFilterConfig::Cors),
            // Telemetry only (docs/compatibility.md).
            crate::istio::STATS => {
                super::istio::without_effect("istio.stats");
                None
            }
            "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig" => {
                super::istio::without_effect("envoy.filters.http.grpc_stats");
                None
            }
            other => {
                return Err(ConfigError::new(
                    tpath,
                    format!("unsupported HTTP filter '{}' ({other})", f.name),
                ))
            }
        };
        if let Some(config) = config {
            http_filters.push(HttpFilter {
                name: f.name.clone(),
                disabled: f.disabled,
                config,
            });
        }
    }
    let router =
        router.ok_or_else(|| ConfigError::new(path, "must end with envoy.filters.http.router"))?;
    Ok((http_filters, router))
}

/// `forward_client_cert_details` and `set_current_client_cert_details` (whose elements Envoy
/// writes in its own order, whatever the proto's).
fn xfcc(h: &hcm::HttpConnectionManager, path: &str) -> Result<ForwardClientCert, ConfigError> {
    use hcm::http_connection_manager::ForwardClientCertDetails as F;
    let mode = match F::try_from(h.forward_client_cert_details) {
        Ok(F::Sanitize) => XfccMode::Sanitize,
        Ok(F::ForwardOnly) => XfccMode::ForwardOnly,
        Ok(F::AppendForward) => XfccMode::AppendForward,
        Ok(F::SanitizeSet) => XfccMode::SanitizeSet,
        Ok(F::AlwaysForwardOnly) => XfccMode::AlwaysForwardOnly,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.forward_client_cert_details"),
                "unknown value",
            ))
        }
    };
    let mut details = Vec::new();
    if let Some(d) = &h.set_current_client_cert_details {
        if d.cert {
            details.push(XfccDetail::Cert);
        }
        if d.chain {
            details.push(XfccDetail::Chain);
        }
        if d.subject.as_ref().is_some_and(|v| v.value) {
            details.push(XfccDetail::Subject);
        }
        if d.uri {
            details.push(XfccDetail::Uri);
        }
        if d.dns {
            details.push(XfccDetail::Dns);
        }
    }
    Ok(ForwardClientCert { mode, details })
}

/// A route configuration. Inline ones have their clusters checked against `clusters`, as
/// Envoy's `validate_clusters` does by default for them; RDS ones (`None`) are not, and a route
/// to a cluster that does not exist answers 503 at request time.
pub(crate) fn translate_routes(
    rc: &route::RouteConfiguration,
    path: &str,
    clusters: Option<&HashSet<String>>,
) -> Result<RouteConfig, ConfigError> {
    super::fields::route_configuration(rc, path)?;
    // `validate_clusters`: by default inline tables are checked and RDS ones are not, as in
    // Envoy; `false` turns the check off (a missing cluster answers 503 at request time).
    let clusters = match (rc.validate_clusters.map(|v| v.value), clusters) {
        (Some(false), _) => None,
        (Some(true), None) => {
            return Err(ConfigError::new(
                format!("{path}.validate_clusters"),
                "unsupported: true for a route configuration from RDS",
            ))
        }
        (_, clusters) => clusters,
    };
    let table_mirrors = super::route_action::mirrors(&rc.request_mirror_policies, path, clusters)?;
    let table = super::route_action::Table::new(rc, path)?;
    let mut vhosts = Vec::new();
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let vpath = format!("{path}.virtual_hosts[{i}]");
        super::fields::virtual_host(vh, &vpath)?;
        let vhost_mirrors =
            super::route_action::mirrors(&vh.request_mirror_policies, &vpath, clusters)?;
        let default_mirrors = if vhost_mirrors.is_empty() {
            &table_mirrors
        } else {
            &vhost_mirrors
        };
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
                &table,
            )?);
        }
        let matcher = match &vh.matcher {
            Some(_) if !vh.routes.is_empty() => {
                return Err(ConfigError::new(
                    format!("{vpath}.matcher"),
                    "cannot set both matcher and routes on virtual host",
                ))
            }
            Some(m) => Some(Arc::new(route_matcher(
                m,
                &format!("{vpath}.matcher"),
                &mut routes,
                &table,
            )?)),
            None => None,
        };
        // A route without mirror policies takes its virtual host's, or else its route
        // configuration's.
        if !default_mirrors.is_empty() {
            for r in &mut routes {
                if let crate::router::Action::Forward(fw) = &mut r.action {
                    if fw.mirrors.is_empty() {
                        fw.mirrors = default_mirrors.clone();
                    }
                }
            }
        }
        use super::route_action::header_parser;
        use route::virtual_host::TlsRequirementType as Tls;
        let require_tls = match Tls::try_from(vh.require_tls) {
            Ok(Tls::None) => crate::router::RequireTls::None,
            Ok(Tls::ExternalOnly) => crate::router::RequireTls::ExternalOnly,
            Ok(Tls::All) => crate::router::RequireTls::All,
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{vpath}.require_tls"),
                    "unknown value",
                ))
            }
        };
        let retry = vh
            .retry_policy
            .as_ref()
            .map(|p| super::retry::policy(p, &format!("{vpath}.retry_policy")))
            .transpose()?
            .map(std::sync::Arc::new);
        let hedge = vh
            .hedge_policy
            .as_ref()
            .map(|h| super::retry::hedge(h, &format!("{vpath}.hedge_policy")))
            .transpose()?
            .unwrap_or(false);
        // Deprecated in the API, and still what configurations set.
        #[allow(deprecated)]
        let vh_buffer_limit = buffer_limit(
            &vh.request_body_buffer_limit,
            &vh.per_request_buffer_limit_bytes,
        );
        vhosts.push(VirtualHost {
            buffer_limit: vh_buffer_limit,
            retry,
            hedge,
            require_tls,
            attempt_count_upstream: vh.include_request_attempt_count,
            attempt_count_response: vh.include_attempt_count_in_response,
            is_timeout_retry_header: vh.include_is_timeout_retry_header,
            request_headers: header_parser(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                &vpath,
                "request",
            )?,
            response_headers: header_parser(
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
                &vpath,
                "response",
            )?,
            name: vh.name.clone(),
            metadata: Arc::new(
                vh.metadata
                    .as_ref()
                    .map(crate::metadata::Metadata::from_pb)
                    .unwrap_or_default(),
            ),
            domains: vh.domains.clone(),
            routes,
            matcher,
            per_filter: super::ratelimit::per_filter_configs(&vh.typed_per_filter_config, &vpath)?,
            cors: vhost_cors(vh, &vpath)?,
            rate_limits: super::ratelimit::policies(
                &vh.rate_limits,
                &format!("{vpath}.rate_limits"),
                super::ratelimit::Owner::Route,
            )?,
            virtual_clusters: virtual_clusters(&vh.virtual_clusters, &vpath)?,
        });
    }
    let mut table = RouteConfig {
        name: rc.name.clone(),
        virtual_hosts: vhosts,
        ignore_port: rc.ignore_port_in_host_matching,
        request_headers: Arc::default(),
        response_headers: Arc::default(),
        most_specific_wins: false,
        internal_only_headers: Vec::new(),
        vhost_header: if rc.vhost_header.is_empty()
            || rc.vhost_header.eq_ignore_ascii_case(":authority")
            || rc.vhost_header.eq_ignore_ascii_case("host")
        {
            None
        } else {
            Some(
                http::HeaderName::from_bytes(rc.vhost_header.to_ascii_lowercase().as_bytes())
                    .map_err(|_| {
                        ConfigError::new(format!("{path}.vhost_header"), "not a valid header name")
                    })?,
            )
        },
        per_filter: super::ratelimit::per_filter_configs(&rc.typed_per_filter_config, path)?,
    };
    table
        .check()
        .map_err(|e| ConfigError::new(format!("{path}.virtual_hosts"), e))?;
    use super::route_action::header_parser;
    table.request_headers = header_parser(
        &rc.request_headers_to_add,
        &rc.request_headers_to_remove,
        path,
        "request",
    )?;
    table.response_headers = header_parser(
        &rc.response_headers_to_add,
        &rc.response_headers_to_remove,
        path,
        "response",
    )?;
    table.most_specific_wins = rc.most_specific_header_mutations_wins;
    for (i, h) in rc.internal_only_headers.iter().enumerate() {
        table.internal_only_headers.push(
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                ConfigError::new(
                    format!("{path}.internal_only_headers[{i}]"),
                    "not a valid header name",
                )
            })?,
        );
    }
    Ok(table)
}

/// `envoy.filters.http.health_check`, checked as Envoy's proto validation checks it.
fn health_check(
    h: &envoy_types::pb::envoy::extensions::filters::http::health_check::v3::HealthCheck,
    path: &str,
) -> Result<crate::model::HealthCheck, ConfigError> {
    let envoy_types::pb::envoy::extensions::filters::http::health_check::v3::HealthCheck {
        pass_through_mode,
        cache_time,
        cluster_min_healthy_percentages,
        headers,
    } = h;
    let Some(pass_through) = pass_through_mode else {
        return Err(ConfigError::new(
            format!("{path}.pass_through_mode"),
            "value is required",
        ));
    };
    if cache_time.is_some() {
        return Err(ConfigError::unsupported(format!("{path}.cache_time")));
    }
    if !cluster_min_healthy_percentages.is_empty() {
        return Err(ConfigError::unsupported(format!(
            "{path}.cluster_min_healthy_percentages"
        )));
    }
    Ok(crate::model::HealthCheck {
        pass_through: pass_through.value,
        headers: headers
            .iter()
            .enumerate()
            .map(|(i, m)| translate_header_match(m, &format!("{path}.headers[{i}]")))
            .collect::<Result<_, _>>()?,
    })
}

/// A `RuntimeFractionalPercent`.
pub(super) fn runtime_fraction(
    f: &envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent,
    path: &str,
) -> Result<crate::runtime::RuntimeFraction, ConfigError> {
    let d = required(&f.default_value, &format!("{path}.default_value"))?;
    Ok(crate::runtime::RuntimeFraction {
        key: f.runtime_key.clone(),
        default: fraction(d, &format!("{path}.default_value"))?,
    })
}

/// A `FractionalPercent`.
pub(super) fn fraction(
    d: &envoy_types::pb::envoy::r#type::v3::FractionalPercent,
    path: &str,
) -> Result<crate::runtime::Fraction, ConfigError> {
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
    let denominator = match D::try_from(d.denominator) {
        Ok(D::Hundred) => 100,
        Ok(D::TenThousand) => 10_000,
        Ok(D::Million) => 1_000_000,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.denominator"),
                "unknown value",
            ))
        }
    };
    Ok(crate::runtime::Fraction {
        numerator: u64::from(d.numerator),
        denominator,
    })
}

/// A `RouteMatch` at `mpath`, and its path match as configured (before a case-insensitive
/// match lowers it).
pub(super) fn route_match(
    m: &route::RouteMatch,
    mpath: &str,
) -> Result<(RouteMatch, crate::router::PathMatch), ConfigError> {
    super::fields::route_match(m, mpath)?;
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|v| v.value);
    let path_match = match &m.path_specifier {
        Some(route::route_match::PathSpecifier::Prefix(p)) => {
            crate::router::PathMatch::Prefix(p.clone())
        }
        Some(route::route_match::PathSpecifier::Path(p)) => {
            crate::router::PathMatch::Exact(p.clone())
        }
        Some(route::route_match::PathSpecifier::PathSeparatedPrefix(p)) => {
            // The proto's own rule: no `?` or `#`, and not ending with `/`.
            if p.is_empty() || p.contains(['?', '#']) || p.ends_with('/') {
                return Err(ConfigError::new(
                    format!("{mpath}.path_separated_prefix"),
                    "must not be empty, contain '?' or '#', or end with '/'",
                ));
            }
            crate::router::PathMatch::SeparatedPrefix(p.clone())
        }
        Some(route::route_match::PathSpecifier::SafeRegex(r)) => {
            crate::router::PathMatch::Regex(regex(r, &format!("{mpath}.safe_regex"))?)
        }
        Some(route::route_match::PathSpecifier::ConnectMatcher(_)) => {
            crate::router::PathMatch::Connect
        }
        Some(route::route_match::PathSpecifier::PathMatchPolicy(p)) => {
            crate::router::PathMatch::Template(std::sync::Arc::new(path_template(
                p,
                &format!("{mpath}.path_match_policy"),
            )?))
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
    let mut query = Vec::new();
    for (i, q) in m.query_parameters.iter().enumerate() {
        query.push(query_match(q, &format!("{mpath}.query_parameters[{i}]"))?);
    }
    let metadata = m
        .dynamic_metadata
        .iter()
        .enumerate()
        .map(|(i, d)| {
            super::metadata::metadata_matcher(d, &format!("{mpath}.dynamic_metadata[{i}]"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut cookies = Vec::new();
    for (i, c) in m.cookies.iter().enumerate() {
        let cpath = format!("{mpath}.cookies[{i}]");
        if c.name.is_empty() {
            return Err(ConfigError::new(
                format!("{cpath}.name"),
                "value length must be at least 1 characters",
            ));
        }
        let sm = required(&c.string_match, &format!("{cpath}.string_match"))?;
        cookies.push(crate::router::CookieMatch {
            name: c.name.clone(),
            matcher: string_match(sm, &format!("{cpath}.string_match"))?,
            invert: c.invert_match,
        });
    }
    let filter_state = m
        .filter_state
        .iter()
        .enumerate()
        .map(|(i, f)| super::filter_state::matcher(f, &format!("{mpath}.filter_state[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let matcher = RouteMatch::new(path_match.clone(), case_sensitive, headers)
        .with_query(query)
        .with_cookies(cookies)
        .with_dynamic_metadata(metadata)
        .with_filter_state(filter_state)
        .with_grpc(m.grpc.is_some())
        .with_tls(m.tls_context.as_ref().map(|t| crate::router::TlsMatch {
            presented: t.presented.as_ref().map(|v| v.value),
            validated: t.validated.as_ref().map(|v| v.value),
        }))
        .with_runtime_fraction(
            m.runtime_fraction
                .as_ref()
                .map(|f| runtime_fraction(f, &format!("{mpath}.runtime_fraction")))
                .transpose()?,
        );
    Ok((matcher, path_match))
}

/// A virtual host's or route's limit on a request body kept for retries, mirrors and
/// redirects: `request_body_buffer_limit`, else `per_request_buffer_limit_bytes`. Either
/// replaces the connection's limit (measured on Envoy 1.40: a larger one lets a body the
/// connection's would not hold be retried), and 0 keeps nothing.
fn buffer_limit(
    request_body: &Option<envoy_types::pb::google::protobuf::UInt64Value>,
    per_request: &Option<envoy_types::pb::google::protobuf::UInt32Value>,
) -> Option<u64> {
    request_body
        .as_ref()
        .map(|v| v.value)
        .or(per_request.as_ref().map(|v| u64::from(v.value)))
}

/// `scoped_routes`, with its route configurations inline or its scopes from SRDS, checked as
/// Envoy checks it.
fn scoped_routes(
    s: &hcm::ScopedRoutes,
    path: &str,
    clusters: &HashSet<String>,
) -> Result<RouteSource, ConfigError> {
    use crate::router::scoped::{Extract, HeaderFragment};
    use hcm::scoped_routes::scope_key_builder::fragment_builder::{
        header_value_extractor::ExtractType, Type,
    };
    use hcm::scoped_routes::ConfigSpecifier;
    let min_len = |v: &str, field: String| {
        if v.is_empty() {
            Err(ConfigError::new(
                field,
                "value length must be at least 1 characters",
            ))
        } else {
            Ok(())
        }
    };
    min_len(&s.name, format!("{path}.name"))?;
    let builder = required(&s.scope_key_builder, &format!("{path}.scope_key_builder"))?;
    let bpath = format!("{path}.scope_key_builder.fragments");
    if builder.fragments.is_empty() {
        return Err(ConfigError::new(
            &bpath,
            "value must contain at least 1 item(s)",
        ));
    }
    let mut fragments = Vec::with_capacity(builder.fragments.len());
    for (i, f) in builder.fragments.iter().enumerate() {
        let fpath = format!("{bpath}[{i}]");
        let Some(Type::HeaderValueExtractor(h)) = &f.r#type else {
            return Err(ConfigError::new(
                format!("{fpath}.header_value_extractor"),
                "required",
            ));
        };
        let hpath = format!("{fpath}.header_value_extractor");
        min_len(&h.name, format!("{hpath}.name"))?;
        let header = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
            .map_err(|_| ConfigError::new(format!("{hpath}.name"), "not a valid header name"))?;
        let extract = match &h.extract_type {
            Some(ExtractType::Index(i)) => {
                if *i != 0 && h.element_separator.is_empty() {
                    return Err(ConfigError::new(
                        format!("{hpath}.index"),
                        "Index > 0 for empty string element separator.",
                    ));
                }
                Extract::Index(*i as usize)
            }
            Some(ExtractType::Element(e)) => {
                min_len(&e.separator, format!("{hpath}.element.separator"))?;
                min_len(&e.key, format!("{hpath}.element.key"))?;
                Extract::Element {
                    key: e.key.clone(),
                    separator: e.separator.clone(),
                }
            }
            None => {
                return Err(ConfigError::new(
                    &hpath,
                    "HeaderValueExtractor extract_type not set.",
                ))
            }
        };
        fragments.push(HeaderFragment {
            header,
            element_separator: h.element_separator.clone(),
            extract,
        });
    }
    let list = match &s.config_specifier {
        Some(ConfigSpecifier::ScopedRouteConfigurationsList(l)) => l,
        Some(ConfigSpecifier::ScopedRds(r)) => {
            let rpath = format!("{path}.scoped_rds");
            if !r.srds_resources_locator.is_empty() {
                return Err(ConfigError::unsupported(format!(
                    "{rpath}.srds_resources_locator"
                )));
            }
            let spath = format!("{rpath}.scoped_rds_config_source");
            let source = required(&r.scoped_rds_config_source, &spath)?;
            let dpath = format!("{path}.rds_config_source");
            let rds_source = required(&s.rds_config_source, &dpath)?;
            return Ok(RouteSource::ScopedRds(Arc::new(
                crate::router::scoped::ScopedRds {
                    name: s.name.clone(),
                    fragments: fragments.into(),
                    source: super::config_source(source, &spath)?,
                    rds_source: super::config_source(rds_source, &dpath)?,
                },
            )));
        }
        None => {
            return Err(ConfigError::new(
                format!("{path}.scoped_route_configurations_list"),
                "required",
            ))
        }
    };
    let lpath = format!("{path}.scoped_route_configurations_list.scoped_route_configurations");
    if list.scoped_route_configurations.is_empty() {
        return Err(ConfigError::new(
            &lpath,
            "value must contain at least 1 item(s)",
        ));
    }
    let mut scopes = Vec::with_capacity(list.scoped_route_configurations.len());
    for (i, c) in list.scoped_route_configurations.iter().enumerate() {
        let cpath = format!("{lpath}[{i}]");
        let fragments = scope_name_and_key(c, &cpath)?;
        if !c.route_configuration_name.is_empty() {
            return Err(ConfigError::new(
                format!("{cpath}.route_configuration_name"),
                "Fetching routes via RDS (route_configuration_name) is not supported with inline scoped routes.",
            ));
        }
        let Some(rc) = &c.route_configuration else {
            return Err(ConfigError::new(
                format!("{cpath}.route_configuration"),
                "You must specify a route_configuration with inline scoped routes.",
            ));
        };
        let table = translate_routes(rc, &format!("{cpath}.route_configuration"), Some(clusters))?;
        scopes.push((c.name.clone(), fragments, Arc::new(table)));
    }
    Ok(RouteSource::Scoped(Arc::new(
        crate::router::scoped::ScopedRoutes {
            name: s.name.clone(),
            fragments,
            scopes,
        },
    )))
}

/// A scope's name (required) and key (its `string_key` fragments, at least one), checked as
/// Envoy's validation checks them.
fn scope_name_and_key(
    c: &route::ScopedRouteConfiguration,
    path: &str,
) -> Result<Vec<String>, ConfigError> {
    if c.name.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "value length must be at least 1 characters",
        ));
    }
    let key = required(&c.key, &format!("{path}.key"))?;
    if key.fragments.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.key.fragments"),
            "value must contain at least 1 item(s)",
        ));
    }
    let mut fragments = Vec::with_capacity(key.fragments.len());
    for (j, f) in key.fragments.iter().enumerate() {
        use route::scoped_route_configuration::key::fragment::Type as K;
        match &f.r#type {
            Some(K::StringKey(k)) => fragments.push(k.clone()),
            None => {
                return Err(ConfigError::new(
                    format!("{path}.key.fragments[{j}].string_key"),
                    "required",
                ))
            }
        }
    }
    Ok(fragments)
}

/// A scope from SRDS (`ScopedRouteConfiguration`), checked as Envoy checks it: an inline
/// `route_configuration` (its clusters not checked, as RDS ones) or else a
/// `route_configuration_name`.
pub(super) fn srds_scope(
    c: &route::ScopedRouteConfiguration,
    path: &str,
) -> Result<(String, crate::router::scoped::Scope), ConfigError> {
    use crate::router::scoped::{Scope, ScopeRoute};
    let fragments = scope_name_and_key(c, path)?;
    let route = match &c.route_configuration {
        Some(rc) => {
            let rpath = format!("{path}.route_configuration");
            let config = translate_routes(rc, &rpath, None)?;
            let table = crate::router::RouteTable::new(Arc::new(config))
                .map_err(|e| ConfigError::new(format!("{rpath}.virtual_hosts"), e))?;
            ScopeRoute::Inline(Arc::new(table))
        }
        None if c.route_configuration_name.is_empty() => {
            return Err(ConfigError::new(
                format!("{path}.route_configuration_name"),
                "route_configuration_name is empty.",
            ))
        }
        None if c.on_demand => ScopeRoute::OnDemand(c.route_configuration_name.clone()),
        None => ScopeRoute::Rds(c.route_configuration_name.clone()),
    };
    Ok((
        c.name.clone(),
        Scope {
            key: fragments,
            route,
        },
    ))
}

/// A virtual host's `matcher`, whose actions are a `Route` or a `RouteList`: their routes are
/// added to `routes` and each action holds their indices. As in Envoy, their clusters are not
/// checked.
fn route_matcher(
    m: &envoy_types::pb::xds::r#type::matcher::v3::Matcher,
    path: &str,
    routes: &mut Vec<Route>,
    shared: &super::route_action::Table,
) -> Result<crate::matcher::Matcher<Vec<usize>>, ConfigError> {
    let table = std::cell::RefCell::new(std::mem::take(routes));
    let action = |c: &envoy_types::pb::xds::core::v3::TypedExtensionConfig,
                  apath: &str|
     -> Result<Vec<usize>, ConfigError> {
        let tpath = format!("{apath}.typed_config");
        let any = c
            .typed_config
            .as_ref()
            .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
        let list = match super::super::proto::type_name(&any.type_url) {
            "envoy.config.route.v3.Route" => {
                vec![(super::super::proto::unpack(any, &tpath)?, tpath.clone())]
            }
            "envoy.config.route.v3.RouteList" => {
                let l: route::RouteList = super::super::proto::unpack(any, &tpath)?;
                l.routes
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| (r, format!("{tpath}.routes[{i}]")))
                    .collect()
            }
            other => {
                return Err(ConfigError::new(
                    &tpath,
                    format!("unsupported action ({other}): a route matcher's actions are Route or RouteList"),
                ))
            }
        };
        let mut indices = Vec::with_capacity(list.len());
        for (r, rpath) in list {
            let route = translate_route(&r, &rpath, None, shared)?;
            let mut t = table.borrow_mut();
            indices.push(t.len());
            t.push(route);
        }
        Ok(indices)
    };
    let out = super::matcher::matcher(m, path, super::matcher::Domain::Route, &action);
    *routes = table.into_inner();
    out
}

fn translate_route(
    r: &route::Route,
    path: &str,
    clusters: Option<&HashSet<String>>,
    table: &super::route_action::Table,
) -> Result<Route, ConfigError> {
    super::fields::route(r, path)?;
    let m = required(&r.r#match, &format!("{path}.match"))?;
    let (matcher, path_match) = route_match(m, &format!("{path}.match"))?;
    let t = super::route_action::translate(r, path, &path_match, clusters, table)?;
    #[allow(deprecated)]
    let route_buffer_limit = buffer_limit(
        &r.request_body_buffer_limit,
        &r.per_request_buffer_limit_bytes,
    );
    Ok(Route {
        buffer_limit: route_buffer_limit,
        stat_prefix: (!r.stat_prefix.is_empty()).then(|| r.stat_prefix.as_str().into()),
        name: r.name.clone(),
        metadata: Arc::new(
            r.metadata
                .as_ref()
                .map(crate::metadata::Metadata::from_pb)
                .unwrap_or_default(),
        ),
        matcher,
        action: t.action,
        timeout: t.timeout,
        retry: t.retry,
        hedge: t.hedge,
        upgrades: t.upgrades,
        connect_terminate: t.connect_terminate,
        connect_allow_post: t.connect_allow_post,
        request_headers: super::route_action::header_parser(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            path,
            "request",
        )?,
        response_headers: super::route_action::header_parser(
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
            path,
            "response",
        )?,
        per_filter: super::ratelimit::per_filter_configs(&r.typed_per_filter_config, path)?,
        cors: route_cors(r, path)?,
        grpc_timeout: t.grpc_timeout,
        decorator: match &r.decorator {
            Some(d) if d.operation.is_empty() => {
                return Err(ConfigError::new(
                    format!("{path}.decorator.operation"),
                    "value length must be at least 1 characters",
                ))
            }
            Some(d) => Some((d.operation.clone(), d.propagate.is_none_or(|v| v.value))),
            None => None,
        },
        tracing: r
            .tracing
            .as_ref()
            .map(|t| route_tracing(t, &format!("{path}.tracing")).map(Arc::new))
            .transpose()?,
    })
}

/// A route's deprecated `route.cors`.
#[allow(deprecated)]
fn route_cors(
    r: &route::Route,
    path: &str,
) -> Result<Option<Arc<crate::model::CorsPolicy>>, ConfigError> {
    let Some(route::route::Action::Route(a)) = &r.action else {
        return Ok(None);
    };
    a.cors
        .as_ref()
        .map(|c| super::cors::legacy(c, &format!("{path}.route.cors")).map(Arc::new))
        .transpose()
}

/// A virtual host's deprecated `cors`.
#[allow(deprecated)]
fn vhost_cors(
    vh: &route::VirtualHost,
    path: &str,
) -> Result<Option<Arc<crate::model::CorsPolicy>>, ConfigError> {
    vh.cors
        .as_ref()
        .map(|c| super::cors::legacy(c, &format!("{path}.cors")).map(Arc::new))
        .transpose()
}

/// An upgrade type as the connection manager compares it (case-insensitively; `connect` is
/// CONNECT's).
pub(super) fn upgrade_kind(upgrade_type: &str, path: &str) -> Result<String, ConfigError> {
    if upgrade_type.is_empty() {
        return Err(ConfigError::new(path, "required"));
    }
    Ok(upgrade_type.to_ascii_lowercase())
}

/// A header name as Envoy's request header map reads it: the pseudo-headers it holds for every
/// request (the `Host` header is `:authority`), or a regular header.
pub(super) fn header_key(name: &str, path: &str) -> Result<HeaderKey, ConfigError> {
    let lower = name.to_ascii_lowercase();
    Ok(match lower.as_str() {
        ":method" => HeaderKey::Method,
        ":authority" | "host" => HeaderKey::Authority,
        ":path" => HeaderKey::Path,
        ":scheme" => HeaderKey::Scheme,
        n if n.starts_with(':') && n.len() > 1 => HeaderKey::OtherPseudo,
        n => HeaderKey::Header(
            http::HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| ConfigError::new(path, "not a valid header name"))?,
        ),
    })
}
/// A route's `path_match_policy`: Envoy's URI template matcher.
fn path_template(
    p: &core::TypedExtensionConfig,
    path: &str,
) -> Result<crate::router::uri_template::PathTemplate, ConfigError> {
    use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
    let tpath = format!("{path}.typed_config");
    let any = required(&p.typed_config, &tpath)?;
    match type_name(&any.type_url) {
        "envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig" => {
            let c: UriTemplateMatchConfig = unpack(any, &tpath)?;
            crate::router::uri_template::PathTemplate::parse(&c.path_template).map_err(|e| {
                ConfigError::new(
                    format!("{tpath}.path_template"),
                    format!(
                        "path_match_policy.path_template {} is invalid: {e}",
                        c.path_template
                    ),
                )
            })
        }
        other => Err(ConfigError::new(
            tpath,
            format!("unsupported path matcher '{}' ({other})", p.name),
        )),
    }
}

/// A virtual host's `virtual_clusters`.
fn virtual_clusters(
    vcs: &[route::VirtualCluster],
    vpath: &str,
) -> Result<Vec<crate::router::VirtualCluster>, ConfigError> {
    let mut out = Vec::with_capacity(vcs.len());
    for (i, vc) in vcs.iter().enumerate() {
        let path = format!("{vpath}.virtual_clusters[{i}]");
        if vc.name.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.name"),
                "must not be empty",
            ));
        }
        let headers = vc
            .headers
            .iter()
            .enumerate()
            .map(|(j, h)| translate_header_match(h, &format!("{path}.headers[{j}]")))
            .collect::<Result<_, _>>()?;
        out.push(crate::router::VirtualCluster {
            name: vc.name.as_str().into(),
            headers,
        });
    }
    Ok(out)
}

pub(super) fn translate_header_match(
    h: &route::HeaderMatcher,
    path: &str,
) -> Result<HeaderMatch, ConfigError> {
    use route::header_matcher::HeaderMatchSpecifier as S;
    #[allow(deprecated)]
    let route::HeaderMatcher {
        name,
        invert_match,
        treat_missing_header_as_empty,
        header_match_specifier,
    } = h;
    let name = header_key(name, &format!("{path}.name"))?;
    let plain = |kind| StringMatch {
        kind,
        ignore_case: false,
    };
    #[allow(deprecated)]
    let kind = match header_match_specifier {
        Some(S::PresentMatch(p)) => HeaderMatchKind::Present(*p),
        Some(S::StringMatch(sm)) => {
            HeaderMatchKind::String(string_match(sm, &format!("{path}.string_match"))?)
        }
        Some(S::ExactMatch(v)) => HeaderMatchKind::String(plain(StringMatchKind::Exact(v.clone()))),
        Some(S::PrefixMatch(v)) => {
            HeaderMatchKind::String(plain(StringMatchKind::Prefix(v.clone())))
        }
        Some(S::SuffixMatch(v)) => {
            HeaderMatchKind::String(plain(StringMatchKind::Suffix(v.clone())))
        }
        Some(S::ContainsMatch(v)) => {
            HeaderMatchKind::String(plain(StringMatchKind::Contains(v.clone())))
        }
        Some(S::SafeRegexMatch(r)) => HeaderMatchKind::String(plain(StringMatchKind::SafeRegex(
            regex(r, &format!("{path}.safe_regex_match"))?,
        ))),
        Some(S::RangeMatch(r)) => HeaderMatchKind::Range(r.start, r.end),
        // No specifier: the header must be present.
        None => HeaderMatchKind::Present(true),
    };
    Ok(HeaderMatch {
        name,
        kind,
        invert: *invert_match,
        missing_as_empty: *treat_missing_header_as_empty,
    })
}

pub(super) fn query_match(
    q: &route::QueryParameterMatcher,
    path: &str,
) -> Result<QueryMatch, ConfigError> {
    use route::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    let route::QueryParameterMatcher {
        name,
        query_parameter_match_specifier,
    } = q;
    if name.is_empty() {
        return Err(ConfigError::new(format!("{path}.name"), "required"));
    }
    let check = match query_parameter_match_specifier {
        Some(Q::StringMatch(sm)) => {
            QueryCheck::String(string_match(sm, &format!("{path}.string_match"))?)
        }
        Some(Q::PresentMatch(p)) => QueryCheck::Present(*p),
        None => QueryCheck::Present(true),
    };
    Ok(QueryMatch {
        name: name.clone(),
        check,
    })
}

/// A `RegexMatcher` (RE2 syntax, which Rust's `regex` shares for what RE2 accepts), anchored:
/// Envoy requires the whole value to match.
pub(super) fn regex(
    m: &matcher::RegexMatcher,
    path: &str,
) -> Result<crate::pattern::Regex, ConfigError> {
    if m.regex.is_empty() {
        return Err(ConfigError::new(format!("{path}.regex"), "required"));
    }
    crate::pattern::Regex::new(&format!("^(?:{})$", m.regex))
        .map_err(|e| ConfigError::new(format!("{path}.regex"), format!("invalid regex: {e}")))
}

pub(super) fn string_match(
    m: &matcher::StringMatcher,
    path: &str,
) -> Result<StringMatch, ConfigError> {
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
        Some(P::SafeRegex(r)) => {
            if m.ignore_case {
                return Err(ConfigError::new(
                    path,
                    "ignore_case has no effect for safe_regex.",
                ));
            }
            StringMatchKind::SafeRegex(regex(r, &format!("{path}.safe_regex"))?)
        }
        Some(_) => {
            return Err(ConfigError::new(
                path,
                "unsupported: only exact, prefix, suffix, contains, safe_regex",
            ))
        }
        None => return Err(ConfigError::new(path, "a match pattern is required")),
    };
    Ok(StringMatch {
        kind,
        ignore_case: m.ignore_case,
    })
}

/// `original_ip_detection_extensions`, checked as Envoy checks them.
fn ip_detection(
    h: &hcm::HttpConnectionManager,
    path: &str,
) -> Result<Vec<crate::model::IpDetection>, ConfigError> {
    use crate::model::IpDetection;
    use envoy_types::pb::envoy::extensions::http::original_ip_detection as ipd;
    if h.original_ip_detection_extensions.is_empty() {
        return Ok(Vec::new());
    }
    if h.xff_num_trusted_hops > 0 {
        return Err(ConfigError::new(
            format!("{path}.original_ip_detection_extensions"),
            "Original IP detection extensions and xff_num_trusted_hops can not be set at the same time",
        ));
    }
    let mut out = Vec::new();
    for (i, e) in h.original_ip_detection_extensions.iter().enumerate() {
        let tpath = format!("{path}.original_ip_detection_extensions[{i}].typed_config");
        let any = e
            .typed_config
            .as_ref()
            .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
        out.push(match type_name(&any.type_url) {
            "envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig" => {
                let c: ipd::custom_header::v3::CustomHeaderConfig = unpack(any, &tpath)?;
                let header =
                    http::HeaderName::from_bytes(c.header_name.to_ascii_lowercase().as_bytes())
                        .map_err(|_| {
                            ConfigError::new(
                                format!("{tpath}.header_name"),
                                "not a valid header name",
                            )
                        })?;
                let reject = match &c.reject_with_status {
                    None => None,
                    Some(s) => Some(
                        http::StatusCode::from_u16(s.code as u16)
                            .ok()
                            .filter(|_| (200..600).contains(&s.code))
                            .ok_or_else(|| {
                                ConfigError::new(
                                    format!("{tpath}.reject_with_status.code"),
                                    "not an HTTP status",
                                )
                            })?,
                    ),
                };
                IpDetection::CustomHeader {
                    header,
                    trusted: c.allow_extension_to_set_address_as_trusted,
                    reject,
                }
            }
            "envoy.extensions.http.original_ip_detection.xff.v3.XffConfig" => {
                let c: ipd::xff::v3::XffConfig = unpack(any, &tpath)?;
                let trusted_cidrs = match &c.xff_trusted_cidrs {
                    Some(t) => {
                        super::cidr_ranges(&t.cidrs, &format!("{tpath}.xff_trusted_cidrs.cidrs"))?
                    }
                    None => Vec::new(),
                };
                if !trusted_cidrs.is_empty() && c.xff_num_trusted_hops > 0 {
                    return Err(ConfigError::new(
                        &tpath,
                        "Cannot set both xff_num_trusted_hops and xff_trusted_cidrs",
                    ));
                }
                IpDetection::Xff {
                    hops: c.xff_num_trusted_hops,
                    trusted_cidrs,
                    append: c.skip_xff_append.as_ref().is_some_and(|v| !v.value),
                }
            }
            other => {
                return Err(ConfigError::new(
                    tpath,
                    format!("unsupported original IP detection extension ({other})"),
                ))
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tracer_tests {
    /// A listener whose HCM traces with `tracing` (the provider's `zipkin` fields inside).
    fn config(tracing: &str, zipkin: &str) -> String {
        format!(
            r#"static_resources: {{ listeners: [{{ name: l, address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}, filter_chains: [{{ filters: [{{ name: h, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: s, tracing: {{ {tracing} provider: {{ name: envoy.tracers.zipkin, typed_config: {{ "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, {zipkin} }} }} }}, route_config: {{ virtual_hosts: [{{ name: v, domains: ["*"], routes: [{{ match: {{prefix: /}}, route: {{cluster: c}} }}] }}] }}, http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}] }} }}] }}] }}], clusters: [{{ name: c, connect_timeout: 1s }}] }}"#
        )
    }

    #[test]
    fn zipkin_refusals_name_the_field() {
        let ok = "collector_cluster: c, collector_endpoint: /api/v2/spans, collector_endpoint_version: HTTP_JSON";
        let cases = [
            ("", "collector_cluster: c, collector_endpoint: /x", "collector_endpoint_version: the default DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE"),
            ("", "collector_endpoint: /x, collector_endpoint_version: HTTP_JSON", "collector_cluster: collector_cluster must be specified"),
            ("", "collector_cluster: c, collector_endpoint_version: HTTP_JSON", "collector_endpoint: collector_endpoint must be specified"),
            ("", "collector_cluster: c, collector_endpoint: /x, collector_endpoint_version: HTTP_PROTO", "collector_endpoint_version: unsupported"),
            ("", "collector_cluster: c, collector_endpoint: /x, collector_endpoint_version: HTTP_JSON, trace_context_option: USE_B3_WITH_W3C_PROPAGATION", "trace_context_option: unsupported"),
            ("verbose: true,", ok, "tracing.verbose: unsupported"),
            ("upstream_operation: '%NOPE%',", ok, "tracing.upstream_operation"),
            ("operation: '%NOPE%',", ok, "tracing.operation"),
            ("custom_tags: [{tag: m, metadata: {kind: {request: {}}, metadata_key: {key: k, path: [{key: a}]}}}],", ok, "custom_tags[0].metadata: unsupported"),
        ];
        for (tracing, zipkin, want) in cases {
            match crate::load_text(&config(tracing, zipkin)) {
                Ok(_) => panic!("accepted: {tracing} {zipkin}"),
                Err(e) => assert!(e.to_string().contains(want), "{zipkin}: {e}"),
            }
        }
        assert!(crate::load_text(&config("spawn_upstream_span: true,", ok)).is_ok());
        assert!(crate::load_text(&config("max_path_tag_length: 10, custom_tags: [{tag: a, literal: {value: b}}, {tag: h, request_header: {name: x-h, default_value: d}}],", ok)).is_ok());
    }

    /// A listener whose HCM traces with OpenTelemetry's `otel` fields.
    fn otel(fields: &str) -> String {
        config("", "collector_cluster: c, collector_endpoint: /x, collector_endpoint_version: HTTP_JSON")
            .replace(
                "name: envoy.tracers.zipkin, typed_config: { \"@type\": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: c, collector_endpoint: /x, collector_endpoint_version: HTTP_JSON }",
                &format!("name: envoy.tracers.opentelemetry, typed_config: {{ \"@type\": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig, {fields} }}"),
            )
    }

    #[test]
    fn opentelemetry_refusals_name_the_field() {
        let grpc = "grpc_service: {envoy_grpc: {cluster_name: c}, timeout: 0.25s}";
        let cases = [
            (
                "service_name: s",
                "grpc_service: a grpc_service is required",
            ),
            (
                "http_service: {http_uri: {uri: http://c/v1/traces, cluster: c, timeout: 1s}}",
                "typed_config.http_service",
            ),
            (
                "grpc_service: {google_grpc: {target_uri: c, stat_prefix: s}}",
                "grpc_service.google_grpc: unsupported",
            ),
        ];
        for (fields, want) in cases {
            match crate::load_text(&otel(fields)) {
                Ok(_) => panic!("accepted: {fields}"),
                Err(e) => assert!(e.to_string().contains(want), "{fields}: {e}"),
            }
        }
        let sampler = format!("{grpc}, sampler: {{name: s, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.tracers.opentelemetry.samplers.v3.ParentBasedSamplerConfig, wrapped_sampler: {{name: r, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.tracers.opentelemetry.samplers.v3.TraceIdRatioBasedSamplerConfig, sampling_percentage: {{numerator: 5, denominator: TEN_THOUSAND}}}}}}}}}}");
        assert!(crate::load_text(&otel(&sampler)).is_ok());
        let dynatrace = format!("{grpc}, sampler: {{name: d, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.tracers.opentelemetry.samplers.v3.DynatraceSamplerConfig, tenant: t}}}}");
        let e = crate::load_text(&otel(&dynatrace)).expect_err("dynatrace");
        assert!(e.to_string().contains("sampler.typed_config"), "{e}");
        let ok = format!("{grpc}, service_name: svc, set_instrumentation_scope: false");
        assert!(
            crate::load_text(&otel(&ok)).is_ok(),
            "{:?}",
            crate::load_text(&otel(&ok)).err()
        );
    }

    /// A listener whose HCM logs with `envoy.access_loggers.open_telemetry` configured by
    /// `fields`.
    fn otel_log(fields: &str) -> String {
        format!(
            r#"static_resources: {{ listeners: [{{ name: l, address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}, filter_chains: [{{ filters: [{{ name: h, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: s, access_log: [{{ name: o, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig, {fields} }} }}], route_config: {{ virtual_hosts: [{{ name: v, domains: ["*"], routes: [{{ match: {{prefix: /}}, route: {{cluster: c}} }}] }}] }}, http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}] }} }}] }}] }}], clusters: [{{ name: c, connect_timeout: 1s }}] }}"#
        )
    }

    #[test]
    fn opentelemetry_access_log_refusals_name_the_field() {
        let grpc = "grpc_service: {envoy_grpc: {cluster_name: c}}";
        let cases = [
            ("log_name: x", "grpc_service: a grpc_service is required"),
            (
                "grpc_service: {envoy_grpc: {cluster_name: c}}, common_config: {log_name: x, grpc_service: {envoy_grpc: {cluster_name: c}}}",
                "only one of common_config, grpc_service or http_service",
            ),
            (
                "grpc_service: {envoy_grpc: {cluster_name: c}}, body: {int_value: 5}",
                "body: Only string values, nested key value lists and array values",
            ),
            (
                "grpc_service: {envoy_grpc: {cluster_name: c}}, attributes: {values: [{key: k, value: {array_value: {values: [{bool_value: true}]}}}]}",
                "attributes.values[0].value.array_value.values[0]: Only string values",
            ),
            (
                "grpc_service: {envoy_grpc: {cluster_name: c}}, body: {string_value: '%NOPE%'}",
                "body.string_value",
            ),
            (
                "grpc_service: {envoy_grpc: {cluster_name: c}}, custom_tags: [{tag: t, literal: {value: v}}]",
                "custom_tags: unsupported",
            ),
            (
                "common_config: {log_name: x, grpc_service: {envoy_grpc: {cluster_name: c}}, filter_state_objects_to_log: [a]}",
                "common_config.filter_state_objects_to_log: unsupported",
            ),
            (
                "common_config: {log_name: x, grpc_service: {envoy_grpc: {cluster_name: c}}, buffer_flush_interval: 0s}",
                "common_config.buffer_flush_interval: must be greater than 0",
            ),
        ];
        for (fields, want) in cases {
            match crate::load_text(&otel_log(fields)) {
                Ok(_) => panic!("accepted: {fields}"),
                Err(e) => assert!(e.to_string().contains(want), "{fields}: {e}"),
            }
        }
        let ok = format!(
            "{grpc}, log_name: n, stat_prefix: p, disable_builtin_labels: true, buffer_size_bytes: 10, buffer_flush_interval: 2s, body: {{kvlist_value: {{values: [{{key: a, value: {{string_value: '%PROTOCOL%'}}}}]}}}}"
        );
        let loaded = crate::load_text(&otel_log(&ok));
        assert!(loaded.is_ok(), "{:?}", loaded.err());
    }
}
