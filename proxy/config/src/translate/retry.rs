//! `RetryPolicy` on a route or a virtual host, checked as Envoy's `RetryPolicyImpl` checks it.

use envoy_types::pb::envoy::config::route::v3 as route;

use super::super::ConfigError;
use super::duration;
use crate::router::retry::{RetryOn, RetryPolicy, DEFAULT_BASE_INTERVAL};

/// The retry host predicates (Istio sets previous_hosts on every route).
const PREVIOUS_HOSTS: &str = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
const OMIT_CANARY_HOSTS: &str =
    "envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate";
const OMIT_HOST_METADATA: &str =
    "envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig";

/// The retry policy `p` at `path`.
pub(super) fn policy(p: &route::RetryPolicy, path: &str) -> Result<RetryPolicy, ConfigError> {
    let route::RetryPolicy {
        retry_on,
        num_retries,
        per_try_timeout,
        per_try_idle_timeout,
        retry_priority,
        retry_host_predicate,
        retry_options_predicates,
        host_selection_retry_max_attempts,
        retriable_status_codes,
        retry_back_off,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        refresh_cluster_on_retry,
    } = p;
    let unsupported = |f: &str| Err(ConfigError::unsupported(format!("{path}.{f}")));
    if !retry_options_predicates.is_empty() {
        return unsupported("retry_options_predicates");
    }
    if *refresh_cluster_on_retry {
        return unsupported("refresh_cluster_on_retry");
    }
    let (on, unknown) = RetryOn::parse_config(retry_on);
    if !unknown.is_empty() {
        // Envoy logs and ignores them too.
        tracing::warn!(
            path = %format!("{path}.retry_on"),
            tokens = ?unknown,
            "unknown retry_on tokens are ignored"
        );
    }
    let mut out = RetryPolicy {
        retry_on: on,
        num_retries: num_retries.as_ref().map_or(1, |v| v.value),
        ..RetryPolicy::default()
    };
    if let Some(d) = per_try_timeout {
        let d = duration(d, &format!("{path}.per_try_timeout"))?;
        out.per_try_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(d) = per_try_idle_timeout {
        let d = duration(d, &format!("{path}.per_try_idle_timeout"))?;
        out.per_try_idle_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(b) = retry_back_off {
        let bpath = format!("{path}.retry_back_off");
        let base = b
            .base_interval
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{bpath}.base_interval"), "required"))?;
        let base = duration(base, &format!("{bpath}.base_interval"))?;
        if base.as_millis() == 0 {
            return Err(ConfigError::new(
                format!("{bpath}.base_interval"),
                "must be at least 1ms",
            ));
        }
        let max = match &b.max_interval {
            Some(m) => duration(m, &format!("{bpath}.max_interval"))?,
            None => base * 10,
        };
        if max < base {
            return Err(ConfigError::new(
                format!("{bpath}.max_interval"),
                "retry_policy.max_interval must greater than or equal to the base_interval",
            ));
        }
        out.base_interval = base;
        out.max_interval = max;
    } else {
        out.base_interval = DEFAULT_BASE_INTERVAL;
        out.max_interval = DEFAULT_BASE_INTERVAL * 10;
    }
    for (i, code) in retriable_status_codes.iter().enumerate() {
        // Envoy compares the response's status with each: a code no status has never matches.
        match u16::try_from(*code) {
            Ok(c) => out.retriable_status_codes.push(c),
            Err(_) => tracing::debug!(path, i, "retriable status code out of range"),
        }
    }
    for (i, h) in retriable_headers.iter().enumerate() {
        out.retriable_headers
            .push(super::http_manager::translate_header_match(
                h,
                &format!("{path}.retriable_headers[{i}]"),
            )?);
    }
    for (i, h) in retriable_request_headers.iter().enumerate() {
        out.retriable_request_headers
            .push(super::http_manager::translate_header_match(
                h,
                &format!("{path}.retriable_request_headers[{i}]"),
            )?);
    }
    for (i, pred) in retry_host_predicate.iter().enumerate() {
        let ppath = format!("{path}.retry_host_predicate[{i}]");
        use route::retry_policy::retry_host_predicate::ConfigType;
        match &pred.config_type {
            Some(ConfigType::TypedConfig(any))
                if super::super::proto::type_name(&any.type_url) == PREVIOUS_HOSTS =>
            {
                out.previous_hosts = true;
            }
            Some(ConfigType::TypedConfig(any))
                if super::super::proto::type_name(&any.type_url) == OMIT_CANARY_HOSTS =>
            {
                out.omit_canary_hosts = true;
            }
            Some(ConfigType::TypedConfig(any))
                if super::super::proto::type_name(&any.type_url) == OMIT_HOST_METADATA =>
            {
                let c: envoy_types::pb::envoy::extensions::retry::host::omit_host_metadata::v3::OmitHostMetadataConfig =
                    super::super::proto::unpack(any, &format!("{ppath}.typed_config"))?;
                // Its `envoy.lb` values (none: no host is sent back, as in Envoy).
                out.omit_host_metadata = Some(
                    super::subset::criteria(c.metadata_match.as_ref())
                        .map(|c| c.keys)
                        .unwrap_or_default(),
                );
            }
            _ => return Err(ConfigError::unsupported(ppath)),
        }
    }
    if let Some(r) = rate_limited_retry_back_off {
        out.rate_limited = Some(rate_limited(
            r,
            &format!("{path}.rate_limited_retry_back_off"),
        )?);
    }
    if let Some(rp) = retry_priority {
        out.previous_priorities = Some(previous_priorities(rp, &format!("{path}.retry_priority"))?);
    }
    out.host_selection_max_attempts =
        u32::try_from(*host_selection_retry_max_attempts).map_err(|_| {
            ConfigError::new(
                format!("{path}.host_selection_retry_max_attempts"),
                "must be between 0 and 4294967295",
            )
        })?;
    Ok(out)
}

/// A `hedge_policy`: whether it hedges on per-try timeouts. `initial_requests` and
/// `additional_request_chance` are taken and do nothing, as in Envoy 1.40 (measured: one
/// upstream request per client request), after its checks.
pub(super) fn hedge(h: &route::HedgePolicy, path: &str) -> Result<bool, ConfigError> {
    if h.initial_requests.as_ref().is_some_and(|v| v.value < 1) {
        return Err(ConfigError::new(
            format!("{path}.initial_requests"),
            "value must be greater than or equal to 1",
        ));
    }
    Ok(h.hedge_on_per_try_timeout)
}

/// `retry_priority`: `envoy.retry_priorities.previous_priorities` (found by its config's type,
/// as Envoy finds it), its `update_frequency`.
fn previous_priorities(
    rp: &route::retry_policy::RetryPriority,
    path: &str,
) -> Result<u32, ConfigError> {
    use route::retry_policy::retry_priority::ConfigType;
    const TYPE: &str =
        "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig";
    let Some(ConfigType::TypedConfig(any)) = &rp.config_type else {
        return Err(ConfigError::new(
            path,
            format!(
                "Didn't find a registered implementation for '{}' with type URL: ''",
                rp.name
            ),
        ));
    };
    let type_name = super::super::proto::type_name(&any.type_url);
    if type_name != TYPE {
        return Err(ConfigError::new(
            path,
            format!(
                "Didn't find a registered implementation for '{}' with type URL: '{type_name}'",
                rp.name
            ),
        ));
    }
    let tpath = format!("{path}.typed_config");
    let c: envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig =
        super::super::proto::unpack(any, &tpath)?;
    if c.update_frequency <= 0 {
        // Envoy takes the configuration and then fails on the first request that uses it.
        return Err(ConfigError::new(
            format!("{tpath}.update_frequency"),
            "value must be greater than 0",
        ));
    }
    Ok(c.update_frequency as u32)
}

/// `rate_limited_retry_back_off`, with Envoy's validation.
fn rate_limited(
    r: &route::retry_policy::RateLimitedRetryBackOff,
    path: &str,
) -> Result<crate::router::retry::RateLimitedBackOff, ConfigError> {
    use crate::router::retry::{RateLimitedBackOff, ResetFormat};
    use route::retry_policy::RateLimitedRetryBackOff as R;
    let R {
        reset_headers,
        max_interval,
    } = r;
    if reset_headers.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.reset_headers"),
            "value must contain at least 1 item(s)",
        ));
    }
    let mut out = RateLimitedBackOff {
        reset_headers: Vec::with_capacity(reset_headers.len()),
        max_interval: std::time::Duration::from_secs(300),
    };
    for (i, h) in reset_headers.iter().enumerate() {
        let hpath = format!("{path}.reset_headers[{i}]");
        let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
            .map_err(|_| ConfigError::new(format!("{hpath}.name"), "not a valid header name"))?;
        let format = match route::retry_policy::ResetHeaderFormat::try_from(h.format) {
            Ok(route::retry_policy::ResetHeaderFormat::Seconds) => ResetFormat::Seconds,
            Ok(route::retry_policy::ResetHeaderFormat::UnixTimestamp) => ResetFormat::UnixTimestamp,
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{hpath}.format"),
                    "value must be one of the defined enum values",
                ))
            }
        };
        out.reset_headers.push((name, format));
    }
    if let Some(m) = max_interval {
        let d = duration(m, &format!("{path}.max_interval"))?;
        if d <= std::time::Duration::from_millis(1) {
            return Err(ConfigError::new(
                format!("{path}.max_interval"),
                "value must be greater than 0.001s",
            ));
        }
        out.max_interval = d;
    }
    Ok(out)
}

/// The `retry_policy` of a filter's own HTTP calls (an authorization service's, a JWKS
/// fetch's): [`from_core`] with Envoy's default conditions for them.
pub(super) fn own_calls(
    p: Option<&envoy_types::pb::envoy::config::core::v3::RetryPolicy>,
    path: &str,
) -> Result<Option<std::sync::Arc<RetryPolicy>>, ConfigError> {
    p.map(|r| {
        from_core(
            r,
            &format!("{path}.retry_policy"),
            "5xx,gateway-error,connect-failure,reset",
        )
        .map(std::sync::Arc::new)
    })
    .transpose()
}

/// A `config.core.v3.RetryPolicy` (what a filter's own HTTP calls take) as the route policy
/// Envoy's `convertCoreToRouteRetryPolicy` makes of it: `num_retries` 1 and a back-off of 1 s
/// (at most ten times the base) unless it says otherwise, each try limited to the back-off's
/// `max_interval`, and retried on its `retry_on` (`default_on` when it names none).
pub(super) fn from_core(
    p: &envoy_types::pb::envoy::config::core::v3::RetryPolicy,
    path: &str,
    default_on: &str,
) -> Result<RetryPolicy, ConfigError> {
    use envoy_types::pb::google::protobuf::Duration as PbDuration;
    let envoy_types::pb::envoy::config::core::v3::RetryPolicy {
        retry_back_off,
        num_retries,
        retry_on,
        retry_priority,
        retry_host_predicate,
        host_selection_retry_max_attempts,
    } = p;
    if retry_priority.is_some() {
        return Err(ConfigError::unsupported(format!("{path}.retry_priority")));
    }
    if !retry_host_predicate.is_empty() {
        return Err(ConfigError::unsupported(format!(
            "{path}.retry_host_predicate"
        )));
    }
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    let (mut base, mut max) = (1000u64, 10_000u64);
    if let Some(b) = retry_back_off {
        let bpath = format!("{path}.retry_back_off");
        let b_base = duration(
            super::required(&b.base_interval, &format!("{bpath}.base_interval"))?,
            &format!("{bpath}.base_interval"),
        )?;
        base = ms(b_base);
        max = match &b.max_interval {
            Some(m) => ms(duration(m, &format!("{bpath}.max_interval"))?),
            None => base * 10,
        };
        if max < base {
            // Envoy's ENVOY_BUG: logged, and the base made half the maximum.
            tracing::warn!(path = %bpath, "max_interval must be greater than or equal to the base_interval");
            base = (max / 2).max(1);
        }
    }
    let pb_ms = |v: u64| PbDuration {
        seconds: (v / 1000) as i64,
        nanos: ((v % 1000) * 1_000_000) as i32,
    };
    let route_policy = route::RetryPolicy {
        retry_on: if retry_on.is_empty() {
            default_on.to_string()
        } else {
            retry_on.clone()
        },
        per_try_timeout: Some(pb_ms(max)),
        num_retries: Some(
            (*num_retries).unwrap_or(envoy_types::pb::google::protobuf::UInt32Value { value: 1 }),
        ),
        retry_back_off: Some(route::retry_policy::RetryBackOff {
            base_interval: Some(pb_ms(base)),
            max_interval: Some(pb_ms(max)),
        }),
        host_selection_retry_max_attempts: *host_selection_retry_max_attempts,
        ..Default::default()
    };
    policy(&route_policy, path)
}

#[cfg(test)]
mod tests {
    use crate::load_text;

    fn with_policy(policy: &str) -> String {
        format!(
            r#"static_resources: {{ listeners: [{{ name: l, address: {{socket_address: {{address: 127.0.0.1, port_value: 15001}}}}, filter_chains: [{{filters: [{{name: h, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: h, http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}], route_config: {{virtual_hosts: [{{name: v, domains: ["*"], retry_policy: {{retry_on: 5xx}}, routes: [{{match: {{prefix: /}}, route: {{cluster: c, retry_policy: {policy}}}}}]}}]}}}}}}]}}] }}], clusters: [{{name: c, type: STATIC, load_assignment: {{cluster_name: c, endpoints: []}}}}] }}"#
        )
    }

    const ROUTE: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.retry_policy";

    #[test]
    fn policies_load_and_refusals_name_the_field() {
        let ok = r#"{retry_on: "5xx,unavailable,bogus", num_retries: 3, per_try_timeout: 0.2s, retriable_status_codes: [418], retry_back_off: {base_interval: 0.01s}, host_selection_retry_max_attempts: 5, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}], retriable_headers: [{name: x-retry}]}"#;
        load_text(&with_policy(ok)).expect("loads");
        let e = load_text(&with_policy(
            "{retry_on: 5xx, retry_back_off: {base_interval: 1s, max_interval: 0.5s}}",
        ))
        .expect_err("max below base");
        assert_eq!(
            e.to_string(),
            format!("{ROUTE}.retry_back_off.max_interval: retry_policy.max_interval must greater than or equal to the base_interval")
        );
        let e = load_text(&with_policy(
            r#"{retry_on: 5xx, retry_priority: {name: envoy.retry_priorities.previous_priorities, typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig}}}"#,
        ))
        .expect_err("priority");
        assert_eq!(
            e.to_string(),
            format!("{ROUTE}.retry_priority.typed_config.update_frequency: value must be greater than 0")
        );
        let e = load_text(&with_policy(
            r#"{retry_on: 5xx, retry_priority: {name: envoy.retry_priorities.bogus}}"#,
        ))
        .expect_err("priority");
        assert_eq!(
            e.to_string(),
            format!("{ROUTE}.retry_priority: Didn't find a registered implementation for 'envoy.retry_priorities.bogus' with type URL: ''")
        );
        load_text(&with_policy(
            r#"{retry_on: 5xx, retry_priority: {name: any.name, typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig, update_frequency: 2}}}"#,
        ))
        .expect("found by its type");
        let e = load_text(&with_policy(
            "{retry_on: 5xx, refresh_cluster_on_retry: true}",
        ))
        .expect_err("refresh");
        assert_eq!(
            e.to_string(),
            format!("{ROUTE}.refresh_cluster_on_retry: unsupported")
        );
    }
}
