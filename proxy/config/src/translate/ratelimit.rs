//! `envoy.filters.http.local_ratelimit`, `envoy.filters.http.ratelimit` (the global rate limit
//! service) and the `rate_limits` actions their descriptors come from.

use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as lrl;
use envoy_types::pb::envoy::r#type::v3 as type_pb;

use super::super::model::{
    HitsAddend, HttpLocalRateLimit, HttpRateLimit, LocalDescriptor, RateLimitAction,
    RateLimitPerRoute, RateLimitPolicy, RateLimitRequestType, TokenBucket, VhRateLimits,
};
use super::super::ConfigError;
use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3 as rl;

/// Envoy's floor for a local rate limit's `fill_interval`.
const MIN_FILL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// The filter's configuration (in the connection manager or on a route), checked as Envoy
/// checks it.
pub(super) fn translate(
    l: &lrl::LocalRateLimit,
    path: &str,
) -> Result<HttpLocalRateLimit, ConfigError> {
    let lrl::LocalRateLimit {
        stat_prefix,
        status,
        token_bucket,
        filter_enabled,
        filter_enforced,
        request_headers_to_add_when_not_enforced,
        response_headers_to_add,
        descriptors,
        stage,
        local_rate_limit_per_downstream_connection,
        local_cluster_rate_limit,
        enable_x_ratelimit_headers,
        vh_rate_limits,
        always_consume_default_token_bucket,
        rate_limited_as_resource_exhausted,
        rate_limits,
        max_dynamic_descriptors,
        enable_retry_after_header,
    } = l;
    if stat_prefix.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.stat_prefix"),
            "value length must be at least 1 characters",
        ));
    }
    if local_cluster_rate_limit.is_some() {
        return Err(ConfigError::unsupported(format!(
            "{path}.local_cluster_rate_limit"
        )));
    }
    if *rate_limited_as_resource_exhausted {
        return Err(ConfigError::unsupported(format!(
            "{path}.rate_limited_as_resource_exhausted"
        )));
    }
    if *enable_retry_after_header {
        return Err(ConfigError::unsupported(format!(
            "{path}.enable_retry_after_header"
        )));
    }
    if *stage > 10 {
        return Err(ConfigError::new(
            format!("{path}.stage"),
            "value must be less than or equal to 10",
        ));
    }
    // A status below 400 becomes 429 (Envoy's `toErrorCode`).
    let status = match status {
        None => http::StatusCode::TOO_MANY_REQUESTS,
        Some(s) => match u16::try_from(s.code)
            .ok()
            .filter(|c| (100..600).contains(c))
            .and_then(|c| http::StatusCode::from_u16(c).ok())
        {
            Some(c) if c.as_u16() >= 400 => c,
            Some(_) => http::StatusCode::TOO_MANY_REQUESTS,
            None => {
                return Err(ConfigError::new(
                    format!("{path}.status.code"),
                    "value must be one of the defined enum values",
                ))
            }
        },
    };
    let bucket = token_bucket
        .as_ref()
        .map(|b| self::bucket(b, &format!("{path}.token_bucket")))
        .transpose()?;
    let fraction =
        |f: &Option<envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent>,
         name: &str| {
            f.as_ref()
                .map(|f| super::http_manager::runtime_fraction(f, &format!("{path}.{name}")))
                .transpose()
        };
    let mut out_descriptors = Vec::new();
    for (i, d) in descriptors.iter().enumerate() {
        let dpath = format!("{path}.descriptors[{i}]");
        if d.entries.is_empty() {
            return Err(ConfigError::new(
                format!("{dpath}.entries"),
                "value must contain at least 1 item(s)",
            ));
        }
        let entries: Vec<(String, String)> = d
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        if out_descriptors
            .iter()
            .any(|o: &LocalDescriptor| o.entries == entries)
        {
            return Err(ConfigError::new(
                dpath,
                "duplicate descriptor in the local rate descriptor",
            ));
        }
        let b = super::required(&d.token_bucket, &format!("{dpath}.token_bucket"))?;
        out_descriptors.push(LocalDescriptor {
            entries,
            bucket: self::bucket(b, &format!("{dpath}.token_bucket"))?,
            shadow: d.shadow_mode,
        });
    }
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::VhRateLimitsOptions as Vh;
    let vh_rate_limits = match Vh::try_from(*vh_rate_limits) {
        Ok(Vh::Override) => VhRateLimits::Override,
        Ok(Vh::Include) => VhRateLimits::Include,
        Ok(Vh::Ignore) => VhRateLimits::Ignore,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.vh_rate_limits"),
                "unknown value",
            ))
        }
    };
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::XRateLimitHeadersRfcVersion as X;
    let x_ratelimit_headers = match X::try_from(*enable_x_ratelimit_headers) {
        Ok(X::Off) => false,
        Ok(X::DraftVersion03) => true,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.enable_x_ratelimit_headers"),
                "unknown value",
            ))
        }
    };
    use super::route_action::{fixed_values, header_adds};
    let adds = |field: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
                name: &str| {
        let at = format!("{path}.{name}");
        fixed_values(header_adds(field, &at)?, &at).map(Arc::new)
    };
    Ok(HttpLocalRateLimit {
        stat_prefix: stat_prefix.clone(),
        status,
        bucket,
        enabled: fraction(filter_enabled, "filter_enabled")?,
        enforced: fraction(filter_enforced, "filter_enforced")?,
        request_headers_not_enforced: adds(
            request_headers_to_add_when_not_enforced,
            "request_headers_to_add_when_not_enforced",
        )?,
        response_headers: adds(response_headers_to_add, "response_headers_to_add")?,
        descriptors: out_descriptors,
        rate_limits: policies(rate_limits, &format!("{path}.rate_limits"), Owner::Local)?,
        stage: *stage,
        vh_rate_limits,
        per_connection: *local_rate_limit_per_downstream_connection,
        x_ratelimit_headers,
        always_consume_default: always_consume_default_token_bucket
            .as_ref()
            .is_none_or(|v| v.value),
        max_dynamic_descriptors: max_dynamic_descriptors
            .as_ref()
            .map_or(20, |v| v.value as usize),
    })
}

/// A `TokenBucket`, checked as Envoy's local rate limiter checks it.
fn bucket(b: &type_pb::TokenBucket, path: &str) -> Result<TokenBucket, ConfigError> {
    if b.max_tokens == 0 {
        return Err(ConfigError::new(
            format!("{path}.max_tokens"),
            "value must be greater than 0",
        ));
    }
    let tokens_per_fill = b.tokens_per_fill.as_ref().map_or(1, |v| v.value);
    if tokens_per_fill == 0 {
        return Err(ConfigError::new(
            format!("{path}.tokens_per_fill"),
            "value must be greater than 0",
        ));
    }
    let d = super::required(&b.fill_interval, &format!("{path}.fill_interval"))?;
    let fill_interval = super::duration(d, &format!("{path}.fill_interval"))?;
    if fill_interval < MIN_FILL_INTERVAL {
        return Err(ConfigError::new(
            format!("{path}.fill_interval"),
            "local rate limit token bucket fill timer must be >= 50ms",
        ));
    }
    Ok(TokenBucket {
        max_tokens: b.max_tokens,
        tokens_per_fill,
        fill_interval,
    })
}

/// Whose `rate_limits` a list is, which decides what of each Envoy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// A route's or a virtual host's: Envoy 1.40 reads no `hits_addend` there (accepted
    /// and ignored, as by Envoy: docs/compatibility.md).
    Route,
    /// The global rate limit filter's own, or its `RateLimitPerRoute`'s.
    Filter,
    /// The local rate limit filter's own (or its per-route configuration's): a `limit` is
    /// refused, as Envoy refuses it there.
    Local,
}

/// A list of `RateLimit`s (a route's, a virtual host's or the filter's own).
pub(super) fn policies(
    list: &[route::RateLimit],
    path: &str,
    owner: Owner,
) -> Result<Vec<RateLimitPolicy>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, r)| policy(r, &format!("{path}[{i}]"), owner))
        .collect()
}

fn policy(r: &route::RateLimit, path: &str, owner: Owner) -> Result<RateLimitPolicy, ConfigError> {
    let route::RateLimit {
        stage,
        disable_key,
        actions,
        limit,
        hits_addend,
        apply_on_stream_done,
        x_ratelimit_option,
    } = r;
    let x_ratelimit = match route::rate_limit::XRateLimitOption::try_from(*x_ratelimit_option) {
        Ok(route::rate_limit::XRateLimitOption::Unspecified) => None,
        Ok(route::rate_limit::XRateLimitOption::Off) => Some(false),
        Ok(route::rate_limit::XRateLimitOption::DraftVersion03) => Some(true),
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.x_ratelimit_option"),
                "value must be one of the defined enum values",
            ))
        }
    };
    let stage = stage.as_ref().map_or(0, |v| v.value);
    if stage > 10 {
        return Err(ConfigError::new(
            format!("{path}.stage"),
            "value must be less than or equal to 10",
        ));
    }
    if !disable_key.is_empty() {
        return Err(ConfigError::unsupported(format!("{path}.disable_key")));
    }
    let limit = match limit {
        None => None,
        Some(_) if owner == Owner::Local => {
            return Err(ConfigError::new(
                format!("{path}.limit"),
                "'limit' field is not supported",
            ))
        }
        Some(o) => {
            use route::rate_limit::r#override::OverrideSpecifier;
            let Some(OverrideSpecifier::DynamicMetadata(d)) = &o.override_specifier else {
                return Err(ConfigError::new(
                    format!("{path}.limit.dynamic_metadata"),
                    "required",
                ));
            };
            let kpath = format!("{path}.limit.dynamic_metadata.metadata_key");
            let key = d
                .metadata_key
                .as_ref()
                .ok_or_else(|| ConfigError::new(&kpath, "required"))?;
            Some(super::metadata::metadata_key(key, &kpath)?)
        }
    };
    let hits_addend = match hits_addend {
        None => None,
        Some(h) => match (&h.number, h.format.is_empty()) {
            (Some(n), true) => Some(HitsAddend::Number(n.value)),
            (None, false) => {
                let hpath = format!("{path}.hits_addend.format");
                let f = crate::access_log::Format::parse(&h.format)
                    .map_err(|e| ConfigError::new(&hpath, e))?;
                if !matches!(f.body(), crate::access_log::Body::Text(p)
                    if matches!(&p[..], [crate::access_log::Piece::Op(..)]))
                {
                    return Err(ConfigError::new(
                        hpath,
                        "hits_addend format must contain exactly one substitution",
                    ));
                }
                Some(HitsAddend::Format(Arc::new(f)))
            }
            _ => {
                return Err(ConfigError::new(
                    format!("{path}.hits_addend"),
                    "hits_addend must contain either a format or a number",
                ))
            }
        },
    };
    let hits_addend = hits_addend.filter(|_| owner != Owner::Route);
    if actions.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.actions"),
            "value must contain at least 1 item(s)",
        ));
    }
    let mut out = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        out.push(action(a, &format!("{path}.actions[{i}]"))?);
    }
    Ok(RateLimitPolicy {
        stage,
        actions: out,
        x_ratelimit,
        hits_addend,
        on_stream_done: *apply_on_stream_done,
        limit,
    })
}

/// A descriptor value as written: `%` operators are not offered.
fn literal(v: &str, path: &str) -> Result<String, ConfigError> {
    if v.replace("%%", "").contains('%') {
        return Err(ConfigError::new(
            path,
            "unsupported: substitution operators (%...%) in descriptor values",
        ));
    }
    Ok(v.replace("%%", "%"))
}

/// A descriptor value that may name the client's address
/// (`%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`); other operators are not offered.
fn formatted(v: &str, path: &str) -> Result<super::super::model::DescriptorValue, ConfigError> {
    use super::super::model::{DescriptorValue, ValuePart};
    const REMOTE: &str = "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%";
    let mut parts = Vec::new();
    for (i, text) in v.split(REMOTE).enumerate() {
        if i > 0 {
            parts.push(ValuePart::RemoteAddress);
        }
        if !text.is_empty() {
            parts.push(ValuePart::Text(literal(text, path)?));
        }
    }
    Ok(DescriptorValue(parts))
}

fn key_or(key: &str, default: &str) -> String {
    if key.is_empty() {
        default.to_string()
    } else {
        key.to_string()
    }
}

fn action(a: &route::rate_limit::Action, path: &str) -> Result<RateLimitAction, ConfigError> {
    use route::rate_limit::action::ActionSpecifier as A;
    let value = |v: &str, default: &str, field: &str| -> Result<String, ConfigError> {
        let v = literal(v, &format!("{path}.{field}.descriptor_value"))?;
        Ok(if v.is_empty() { default.to_string() } else { v })
    };
    Ok(match &a.action_specifier {
        Some(A::SourceCluster(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.source_cluster")))
        }
        Some(A::DestinationCluster(_)) => {
            return Err(ConfigError::unsupported(format!(
                "{path}.destination_cluster"
            )))
        }
        Some(A::RequestHeaders(h)) => {
            let hpath = format!("{path}.request_headers");
            if h.header_name.is_empty() {
                return Err(ConfigError::new(format!("{hpath}.header_name"), "required"));
            }
            if h.descriptor_key.is_empty() {
                return Err(ConfigError::new(
                    format!("{hpath}.descriptor_key"),
                    "required",
                ));
            }
            RateLimitAction::RequestHeaders {
                header: super::http_manager::header_key(
                    &h.header_name,
                    &format!("{hpath}.header_name"),
                )?,
                key: h.descriptor_key.clone(),
                skip_if_absent: h.skip_if_absent,
            }
        }
        Some(A::RemoteAddress(_)) => RateLimitAction::RemoteAddress,
        Some(A::MaskedRemoteAddress(m)) => {
            let v4 = m.v4_prefix_mask_len.as_ref().map_or(32, |v| v.value);
            let v6 = m.v6_prefix_mask_len.as_ref().map_or(128, |v| v.value);
            if v4 > 32 {
                return Err(ConfigError::new(
                    format!("{path}.masked_remote_address.v4_prefix_mask_len"),
                    "value must be less than or equal to 32",
                ));
            }
            if v6 > 128 {
                return Err(ConfigError::new(
                    format!("{path}.masked_remote_address.v6_prefix_mask_len"),
                    "value must be less than or equal to 128",
                ));
            }
            RateLimitAction::MaskedRemoteAddress {
                v4: v4 as u8,
                v6: v6 as u8,
            }
        }
        Some(A::GenericKey(g)) => {
            if g.descriptor_value.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.generic_key.descriptor_value"),
                    "value length must be at least 1 characters",
                ));
            }
            RateLimitAction::GenericKey {
                key: key_or(&g.descriptor_key, "generic_key"),
                value: value(&g.descriptor_value, &g.default_value, "generic_key")?,
            }
        }
        Some(A::HeaderValueMatch(h)) => {
            let hpath = format!("{path}.header_value_match");
            if h.headers.is_empty() {
                return Err(ConfigError::new(
                    format!("{hpath}.headers"),
                    "value must contain at least 1 item(s)",
                ));
            }
            RateLimitAction::HeaderValueMatch {
                key: key_or(&h.descriptor_key, "header_match"),
                value: value(&h.descriptor_value, &h.default_value, "header_value_match")?,
                expect_match: h.expect_match.as_ref().is_none_or(|v| v.value),
                headers: h
                    .headers
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        super::http_manager::translate_header_match(
                            m,
                            &format!("{hpath}.headers[{i}]"),
                        )
                    })
                    .collect::<Result<_, _>>()?,
            }
        }
        Some(A::QueryParameterValueMatch(q)) => {
            let qpath = format!("{path}.query_parameter_value_match");
            if q.query_parameters.is_empty() {
                return Err(ConfigError::new(
                    format!("{qpath}.query_parameters"),
                    "value must contain at least 1 item(s)",
                ));
            }
            RateLimitAction::QueryValueMatch {
                key: key_or(&q.descriptor_key, "query_match"),
                value: value(
                    &q.descriptor_value,
                    &q.default_value,
                    "query_parameter_value_match",
                )?,
                expect_match: q.expect_match.as_ref().is_none_or(|v| v.value),
                params: q
                    .query_parameters
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        super::http_manager::query_match(
                            m,
                            &format!("{qpath}.query_parameters[{i}]"),
                        )
                    })
                    .collect::<Result<_, _>>()?,
            }
        }
        Some(A::RemoteAddressMatch(r)) => {
            let rpath = format!("{path}.remote_address_match");
            let m = super::required(&r.address_matcher, &format!("{rpath}.address_matcher"))?;
            RateLimitAction::RemoteAddressMatch {
                key: key_or(&r.descriptor_key, "remote_address_match"),
                value: formatted(
                    if r.descriptor_value.is_empty() {
                        &r.default_value
                    } else {
                        &r.descriptor_value
                    },
                    &format!("{rpath}.descriptor_value"),
                )?,
                ranges: super::cidr_ranges(
                    &m.ranges
                        .iter()
                        .map(|r| envoy_types::pb::envoy::config::core::v3::CidrRange {
                            address_prefix: r.address_prefix.clone(),
                            prefix_len: r.prefix_len,
                        })
                        .collect::<Vec<_>>(),
                    &format!("{rpath}.address_matcher.ranges"),
                )?,
                invert: m.invert_match,
            }
        }
        Some(A::QueryParameters(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.query_parameters")))
        }
        #[allow(deprecated)]
        Some(A::DynamicMetadata(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.dynamic_metadata")))
        }
        Some(A::Metadata(_)) => return Err(ConfigError::unsupported(format!("{path}.metadata"))),
        Some(A::Extension(_)) => return Err(ConfigError::unsupported(format!("{path}.extension"))),
        None => return Err(ConfigError::new(path, "an action is required")),
    })
}

/// A status a configuration names for a reply: below 400 (or not one) becomes `default`, as
/// Envoy's `toErrorCode`.
fn error_status(s: &Option<type_pb::HttpStatus>, default: http::StatusCode) -> http::StatusCode {
    s.as_ref()
        .and_then(|s| u16::try_from(s.code).ok())
        .filter(|c| (400..600).contains(c))
        .and_then(|c| http::StatusCode::from_u16(c).ok())
        .unwrap_or(default)
}

/// `envoy.filters.http.ratelimit`'s configuration, checked as Envoy checks it.
pub(super) fn global(r: &rl::RateLimit, path: &str) -> Result<HttpRateLimit, ConfigError> {
    let rl::RateLimit {
        domain,
        stage,
        request_type,
        timeout,
        failure_mode_deny,
        rate_limited_as_resource_exhausted,
        rate_limit_service,
        enable_x_ratelimit_headers,
        disable_x_envoy_ratelimited_header,
        rate_limited_status,
        response_headers_to_add,
        status_on_error,
        stat_prefix,
        filter_enabled,
        filter_enforced,
        failure_mode_deny_percent,
        rate_limits,
        metadata_namespace: _,
        enable_retry_after_header,
    } = r;
    if domain.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.domain"),
            "value length must be at least 1 characters",
        ));
    }
    if *stage > 10 {
        return Err(ConfigError::new(
            format!("{path}.stage"),
            "value must be less than or equal to 10",
        ));
    }
    let request_type = match request_type.as_str() {
        "" | "both" => RateLimitRequestType::Both,
        "internal" => RateLimitRequestType::Internal,
        "external" => RateLimitRequestType::External,
        _ => {
            return Err(ConfigError::new(
                format!("{path}.request_type"),
                "value must be in list [internal external both]",
            ))
        }
    };
    if *rate_limited_as_resource_exhausted {
        return Err(ConfigError::unsupported(format!(
            "{path}.rate_limited_as_resource_exhausted"
        )));
    }
    if failure_mode_deny_percent.is_some() {
        return Err(ConfigError::unsupported(format!(
            "{path}.failure_mode_deny_percent"
        )));
    }
    if *enable_retry_after_header {
        return Err(ConfigError::unsupported(format!(
            "{path}.enable_retry_after_header"
        )));
    }
    // Without a service Envoy lets every request through; skiff asks for one.
    let (cluster, authority, metadata) = service(rate_limit_service, path)?;
    let timeout = call_timeout(timeout, path)?;
    use rl::rate_limit::XRateLimitHeadersRfcVersion as X;
    let x_ratelimit_headers = match X::try_from(*enable_x_ratelimit_headers) {
        Ok(X::Off) => false,
        Ok(X::DraftVersion03) => true,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.enable_x_ratelimit_headers"),
                "unknown value",
            ))
        }
    };
    let fraction =
        |f: &Option<envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent>,
         name: &str| {
            f.as_ref()
                .map(|f| super::http_manager::runtime_fraction(f, &format!("{path}.{name}")))
                .transpose()
        };
    use super::route_action::{fixed_values, header_adds};
    let hpath = format!("{path}.response_headers_to_add");
    let response_headers = Arc::new(fixed_values(
        header_adds(response_headers_to_add, &hpath)?,
        &hpath,
    )?);
    Ok(HttpRateLimit {
        domain: domain.clone(),
        stage: *stage,
        request_type,
        timeout,
        failure_mode_deny: *failure_mode_deny,
        cluster,
        authority,
        metadata,
        x_ratelimit_headers,
        x_envoy_ratelimited: !*disable_x_envoy_ratelimited_header,
        rate_limited_status: error_status(rate_limited_status, http::StatusCode::TOO_MANY_REQUESTS),
        status_on_error: error_status(status_on_error, http::StatusCode::INTERNAL_SERVER_ERROR),
        response_headers,
        stat_prefix: stat_prefix.clone(),
        enabled: fraction(filter_enabled, "filter_enabled")?,
        enforced: fraction(filter_enforced, "filter_enforced")?,
        rate_limits: policies(rate_limits, &format!("{path}.rate_limits"), Owner::Filter)?,
    })
}

/// `rate_limit_service`: the cluster, authority and metadata of its Envoy gRPC service, V3.
fn service(
    service: &Option<envoy_types::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig>,
    path: &str,
) -> Result<(String, String, super::super::model::GrpcMetadata), ConfigError> {
    let spath = format!("{path}.rate_limit_service");
    let service = super::required(service, &spath)?;
    if service.transport_api_version
        != envoy_types::pb::envoy::config::core::v3::ApiVersion::V3 as i32
    {
        return Err(ConfigError::new(
            format!("{spath}.transport_api_version"),
            "only V3 is supported",
        ));
    }
    let gpath = format!("{spath}.grpc_service");
    let grpc = super::required(&service.grpc_service, &gpath)?;
    let found = super::envoy_grpc(grpc, &gpath)?;
    // The call's deadline is the filter's `timeout`.
    if grpc.timeout.is_some() {
        return Err(ConfigError::unsupported(format!("{gpath}.timeout")));
    }
    Ok(found)
}

/// The call's `timeout`: 20 ms unless set; 0 is none.
fn call_timeout(
    timeout: &Option<envoy_types::pb::google::protobuf::Duration>,
    path: &str,
) -> Result<Option<std::time::Duration>, ConfigError> {
    Ok(match timeout {
        None => Some(std::time::Duration::from_millis(20)),
        Some(d) => Some(super::duration(d, &format!("{path}.timeout"))?).filter(|d| !d.is_zero()),
    })
}

/// `envoy.filters.network.ratelimit`, checked as Envoy checks it.
pub(super) fn network(
    r: &envoy_types::pb::envoy::extensions::filters::network::ratelimit::v3::RateLimit,
    path: &str,
) -> Result<super::super::model::NetworkRateLimit, ConfigError> {
    let envoy_types::pb::envoy::extensions::filters::network::ratelimit::v3::RateLimit {
        stat_prefix,
        domain,
        descriptors,
        timeout,
        failure_mode_deny,
        rate_limit_service,
    } = r;
    for (name, value) in [("stat_prefix", stat_prefix), ("domain", domain)] {
        if value.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.{name}"),
                "value length must be at least 1 characters",
            ));
        }
    }
    if descriptors.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.descriptors"),
            "value must contain at least 1 item(s)",
        ));
    }
    let mut out = Vec::with_capacity(descriptors.len());
    for (i, d) in descriptors.iter().enumerate() {
        let dpath = format!("{path}.descriptors[{i}]");
        if d.entries.is_empty() {
            return Err(ConfigError::new(
                format!("{dpath}.entries"),
                "value must contain at least 1 item(s)",
            ));
        }
        let mut entries = Vec::with_capacity(d.entries.len());
        for (j, e) in d.entries.iter().enumerate() {
            let epath = format!("{dpath}.entries[{j}]");
            if e.key.is_empty() {
                return Err(ConfigError::new(
                    format!("{epath}.key"),
                    "value length must be at least 1 characters",
                ));
            }
            let value = crate::access_log::Format::parse(&e.value)
                .map_err(|why| ConfigError::new(format!("{epath}.value"), why))?;
            entries.push((e.key.clone(), value));
        }
        out.push(entries);
    }
    let (cluster, authority, metadata) = service(rate_limit_service, path)?;
    Ok(super::super::model::NetworkRateLimit {
        stat_prefix: stat_prefix.clone(),
        domain: domain.clone(),
        descriptors: out,
        timeout: call_timeout(timeout, path)?,
        failure_mode_deny: *failure_mode_deny,
        cluster,
        authority,
        metadata,
    })
}

/// `RateLimitPerRoute`.
fn global_per_route(
    r: &rl::RateLimitPerRoute,
    path: &str,
) -> Result<RateLimitPerRoute, ConfigError> {
    use rl::rate_limit_per_route::VhRateLimitsOptions as Vh;
    let rl::RateLimitPerRoute {
        vh_rate_limits,
        override_option,
        rate_limits,
        domain,
    } = r;
    let vh_rate_limits = match Vh::try_from(*vh_rate_limits) {
        Ok(Vh::Override) => VhRateLimits::Override,
        Ok(Vh::Include) => VhRateLimits::Include,
        Ok(Vh::Ignore) => VhRateLimits::Ignore,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.vh_rate_limits"),
                "value must be one of the defined enum values",
            ))
        }
    };
    // `override_option` is not implemented in Envoy (hidden from its docs): a value other
    // than the default is refused rather than ignored.
    if *override_option != 0 {
        return Err(ConfigError::unsupported(format!("{path}.override_option")));
    }
    Ok(RateLimitPerRoute {
        vh_rate_limits,
        rate_limits: policies(rate_limits, &format!("{path}.rate_limits"), Owner::Filter)?,
        domain: Some(domain.clone()).filter(|d| !d.is_empty()),
    })
}

/// `typed_per_filter_config` of a route, a virtual host or a route table: each entry checked
/// by its type, as Envoy checks it whether or not a filter of that name runs.
pub(super) fn per_filter_configs(
    map: &std::collections::HashMap<String, envoy_types::pb::google::protobuf::Any>,
    path: &str,
) -> Result<crate::router::PerFilterConfigs, ConfigError> {
    use crate::router::PerFilterConfig;
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let epath = format!("{path}.typed_per_filter_config[\"{name}\"]");
        let any = &map[name];
        let config = if super::super::proto::type_name(&any.type_url)
            == "envoy.config.route.v3.FilterConfig"
        {
            let f: route::FilterConfig = super::super::proto::unpack(any, &epath)?;
            // `is_optional` lets Envoy skip a configuration for a filter it does not have;
            // skiff refuses those configurations all the same.
            match f.config.as_ref().filter(|c| !c.type_url.is_empty()) {
                _ if f.disabled => PerFilterConfig::Disabled,
                None => PerFilterConfig::Enabled,
                Some(c) => one(c, &format!("{epath}.config"), name)?,
            }
        } else {
            one(any, &epath, name)?
        };
        out.push((name.clone(), config));
    }
    Ok(crate::router::PerFilterConfigs(out))
}

/// One per-route configuration, by its type.
fn one(
    any: &envoy_types::pb::google::protobuf::Any,
    path: &str,
    name: &str,
) -> Result<crate::router::PerFilterConfig, ConfigError> {
    use super::super::proto::{type_name, unpack};
    use crate::router::PerFilterConfig;
    Ok(match type_name(&any.type_url) {
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit" => {
            PerFilterConfig::LocalRateLimit(Arc::new(translate(&unpack(any, path)?, path)?))
        }
        "envoy.extensions.filters.http.header_to_metadata.v3.Config" => {
            PerFilterConfig::HeaderToMetadata(Arc::new(super::header_to_metadata::translate(
                &unpack(any, path)?,
                path,
                true,
            )?))
        }
        "envoy.extensions.filters.http.fault.v3.HTTPFault" => PerFilterConfig::Fault(Arc::new(
            super::fault::translate(&unpack(any, path)?, path)?,
        )),
        "envoy.extensions.filters.http.rbac.v3.RBACPerRoute" => {
            match super::rbac::per_route(&unpack(any, path)?, path)? {
                Some(c) => PerFilterConfig::Rbac(Arc::new(c)),
                None => PerFilterConfig::Disabled,
            }
        }
        "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig" => {
            PerFilterConfig::Jwt(super::jwt::per_route(&unpack(any, path)?, path)?)
        }
        "envoy.extensions.filters.http.cors.v3.CorsPolicy" => {
            PerFilterConfig::Cors(Arc::new(super::cors::policy(&unpack(any, path)?, path)?))
        }
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute" => PerFilterConfig::ExtAuthz(
            Arc::new(super::ext_authz::per_route(&unpack(any, path)?, path)?),
        ),
        "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute" => {
            PerFilterConfig::RateLimit(Arc::new(global_per_route(&unpack(any, path)?, path)?))
        }
        "envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute" => {
            PerFilterConfig::HeaderMutation(Arc::new(super::header_mutation::per_route(
                &unpack(any, path)?,
                path,
            )?))
        }
        "envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute" => {
            PerFilterConfig::BasicAuth(Arc::new(super::basic_auth::per_route(
                &unpack(any, path)?,
                path,
            )?))
        }
        "envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute" => {
            match super::stateful_session::per_route(&unpack(any, path)?, path)? {
                Some(s) => PerFilterConfig::StatefulSession(Arc::new(s)),
                None => PerFilterConfig::Disabled,
            }
        }
        "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute" => {
            PerFilterConfig::Compressor(super::compressor::per_route(&unpack(any, path)?, path)?)
        }
        other => {
            return Err(ConfigError::new(
                path,
                format!("unsupported per-route configuration for filter '{name}' ({other})"),
            ))
        }
    })
}
